"""Real English text for the language model: Jane Austen's six novels and Moby-Dick, fetched by
one command with checksums (``mechtrunc lm english --out DIR``, :func:`fetch_english`).

Where the text comes from. The novels are public domain (Project Gutenberg texts); the R packages
``janeaustenr`` (Julia Silge) and ``tokenizers`` (its ``mobydick`` dataset) ship them,
MIT-licensed packaging, and Debian packages both (``r-cran-janeaustenr`` 1.0.0-1,
``r-cran-tokenizers`` 0.3.0-1). :func:`fetch_english` downloads the two pinned ``.deb`` files from
Debian's package pool (:data:`MIRRORS`: ``deb.debian.org``, then ``snapshot.debian.org``) with
``urllib`` (no ``apt``, no root, any host; plain HTTP as ``apt`` uses, the pinned checksum is the
integrity check), or takes them from a directory that already holds them (``debs=``), and refuses
any file whose SHA-256 is not the pinned one (:data:`DEBS`). It reads the ``.deb`` (an ``ar``
archive holding ``data.tar.xz``) in Python, decodes the packages' R lazy-load databases
(``data/Rdata.rdx``/``.rdb``) with :mod:`mechtrunc.models.lm.rdata`, and writes one UTF-8 text file per
book.

The text files.  ``DIR/<book>.txt`` holds one paragraph per line: the books' hard-wrapped lines
joined with single spaces, blank lines as paragraph breaks, whitespace runs collapsed, the
underscores of Gutenberg's italics removed (``_her_`` -> ``her``) and, for Moby-Dick, the
Gutenberg header and licence cut off (the text runs from the title to the last line of the
epilogue).  ``DIR/manifest.json`` records every file's SHA-256, paragraph and word counts, the
source package and the combined :data:`ENGLISH_SHA256` (the SHA-256 of the lines ``"<file>
<sha256>\\n"`` in file order, :func:`text_digest`), which a corpus config records
(:attr:`mechtrunc.models.lm.corpus.CorpusConfig.english_sha256`).  Every written file is checked
against :data:`BOOKS`' pinned digests, so the text is the same on every machine; a rerun on a
complete directory verifies it and downloads nothing.

:func:`read_english` returns the paragraphs of a directory after verifying its checksum; the
training stream (:mod:`mechtrunc.models.lm.corpus`) and the extended tokenizer
(:func:`mechtrunc.models.lm.tokenizer.run_tokenizer`) read the text with it.  ``mechtrunc/data/english/``
holds a small excerpt in the same format (the opening chapters of Pride and Prejudice, as the
parser produces them, :data:`EXCERPT_SHA256`) for the tests: they never use the network.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["BOOKS", "DEBS", "MIRRORS", "ENGLISH_SHA256", "EXCERPT_SHA256", "HELDOUT_SHARE", "fetch_english",
           "read_english", "english_digest", "english_split", "stream_text", "write_excerpt", "default_english_dir",
           "excerpt_dir", "text_digest", "resolve_english_dir"]

MANIFEST = "manifest.json"
FORMAT = "mechtrunc-english-1"
#: the last share of each book's paragraphs (by words) that training never sees (evaluation text)
HELDOUT_SHARE = 0.05


@dataclass(frozen=True)
class Deb:
    package: str
    file: str
    sha256: str
    data: str  # the lazy-load database inside the package, without suffix


#: the pinned Debian packages (SHA-256 of the .deb files)
DEBS: dict[str, Deb] = {
    "r-cran-janeaustenr": Deb("r-cran-janeaustenr", "r-cran-janeaustenr_1.0.0-1_all.deb",
                              "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
                              "usr/lib/R/site-library/janeaustenr/data/Rdata"),
    "r-cran-tokenizers": Deb("r-cran-tokenizers", "r-cran-tokenizers_0.3.0-1_amd64.deb",
                             "6312f013ebfde5650235bfd7ba5c44d9e4cf9f2da9855337c9483fe778f0d8c7",
                             "usr/lib/R/site-library/tokenizers/data/Rdata"),
}
#: where the .deb files are downloaded from, tried in order ({package}, {file} filled in)
MIRRORS: tuple[str, ...] = (
    "http://deb.debian.org/debian/pool/main/r/{package}/{file}",
    "https://snapshot.debian.org/archive/debian/20250520T000000Z/pool/main/r/{package}/{file}",
)
#: book -> (package, R dataset, SHA-256 of DIR/<book>.txt)
BOOKS: dict[str, tuple[str, str, str]] = {
    "sensesensibility": ("r-cran-janeaustenr", "sensesensibility",
        "6603fb40144b8ff912a51546d892ec6eebb339933cb6b6fd9eca2177de49a44e"),
    "prideprejudice": ("r-cran-janeaustenr", "prideprejudice",
        "dc3ddc8bb89ec0336fc0607d8aafa100c5d08979cd2940243d401e0e4f8ec1e1"),
    "mansfieldpark": ("r-cran-janeaustenr", "mansfieldpark",
        "6fca6c1db750cf01e0b18f7ac100bcde9008b8d3854d8975f5821d4d15953a29"),
    "emma": ("r-cran-janeaustenr", "emma",
            "23d89f99fcf85d18448b3a21d4c34b30964cff82096ee58b8dddb0897decd65a"),
    "northangerabbey": ("r-cran-janeaustenr", "northangerabbey",
        "1429610acb1fbbbae9ef1dd28c93f69c40037ca708af5a7e99ab90cbdca9a545"),
    "persuasion": ("r-cran-janeaustenr", "persuasion",
                  "f38b37ad6e7e3ea633c7c624530d80afd06aa54ee74450c2bdd5fd60239e52f1"),
    "mobydick": ("r-cran-tokenizers", "mobydick",
                "1c1a9b56a12fc72667e68fb3e790b340ee1b952c809254a95476fb8016e2b759"),
}
#: the combined digest of the seven books (:func:`text_digest`)
ENGLISH_SHA256 = "16365e81da666f1f8481c293207d19141ce0f6f1502d25a32bb9dca41d2767d0"
#: the combined digest of the excerpt in mechtrunc/data/english/
EXCERPT_SHA256 = "df8575899c8fca8477438d9563d7bb4e6abfc4470f82129aeec6fb787d0f3bd7"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def text_digest(file_digests: dict[str, str]) -> str:
    """The combined SHA-256 of a text directory: of the lines ``"<file> <sha256>\\n"`` in the
    given (file) order."""
    return _sha256("".join(f"{name} {digest}\n" for name, digest in file_digests.items()).encode())


def default_english_dir() -> Path:
    """Where :func:`fetch_english` writes by default: ``english/`` in mechtrunc's cache
    (``$MECHTRUNC_CACHE``, else ``$XDG_CACHE_HOME/mechtrunc``, i.e. ``~/.cache/mechtrunc``)."""
    from mechtrunc._choices import cache_root

    return cache_root() / "english"


def excerpt_dir() -> Path:
    """The directory of the packaged excerpt (``mechtrunc/data/english``, :data:`EXCERPT_SHA256`)."""
    return Path(str(resources.files("mechtrunc.data").joinpath("english")))


def resolve_english_dir(english_dir, digest: str) -> Path:
    """The text directory a corpus config means: ``english_dir`` when given; else the packaged
    excerpt for :data:`EXCERPT_SHA256`, else :func:`default_english_dir`."""
    if english_dir is not None:
        return Path(english_dir).expanduser()
    return excerpt_dir() if digest == EXCERPT_SHA256 else default_english_dir()


# ---------------------------------------------------------------------------------------------
# .deb -> R data -> paragraphs
# ---------------------------------------------------------------------------------------------
def _ar_members(data: bytes) -> dict[str, bytes]:
    """The members of an ``ar`` archive (a .deb)."""
    if data[:8] != b"!<arch>\n":
        raise ValueError("not an ar archive (a .deb starts with '!<arch>')")
    out, at = {}, 8
    while at + 60 <= len(data):
        head = data[at:at + 60]
        name, size = head[:16].decode().strip().rstrip("/"), int(head[48:58].decode().strip())
        out[name] = data[at + 60:at + 60 + size]
        at += 60 + size + (size % 2)
    return out


def _deb_files(deb: bytes, wanted: tuple[str, ...]) -> dict[str, bytes]:
    """The files ``wanted`` (paths inside the package) of a .deb's data archive."""
    members = _ar_members(deb)
    data = next((v for k, v in members.items() if k.startswith("data.tar")), None)
    if data is None:
        raise ValueError(f"the .deb has no data.tar member (members: {sorted(members)})")
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for m in tar.getmembers():
            name = m.name[2:] if m.name.startswith("./") else m.name
            if name in wanted and m.isfile():
                out[name] = tar.extractfile(m).read()
    missing = [w for w in wanted if w not in out]
    if missing:
        raise ValueError(f"the .deb lacks {missing}")
    return out


def _paragraphs(lines: list[str]) -> list[str]:
    """Hard-wrapped lines -> paragraphs (blank lines separate them; italics underscores dropped)."""
    out, cur = [], []
    for line in [*lines, ""]:
        line = line.replace("_", "").strip()
        if line:
            cur.append(line)
        elif cur:
            out.append(re.sub(r"\s+", " ", " ".join(cur)))
            cur = []
    return out


def _gutenberg_body(text: str) -> list[str]:
    """Moby-Dick's lines from its title to the end of the epilogue (no Gutenberg header/licence)."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n")
    start = text.index("\n", text.index("*** START OF THIS PROJECT GUTENBERG EBOOK"))
    start = text.index("MOBY DICK; OR THE WHALE", start)
    end = text.index("End of Project Gutenberg's", start)
    return text[start:end].split("\n")


def _book_lines(value) -> list[str]:
    """An R character vector (possibly named) as Python strings."""
    from mechtrunc.models.lm.rdata import RObject

    v = value.value if isinstance(value, RObject) else value
    if not isinstance(v, list) or not all(isinstance(x, str) or x is None for x in v):
        raise ValueError("the R dataset is not a character vector")
    return [x or "" for x in v]


def _extract(deb: Deb, blob: bytes) -> dict[str, list[str]]:
    """book -> paragraphs of one verified .deb."""
    from mechtrunc.models.lm.rdata import read_lazyload

    files = _deb_files(blob, (deb.data + ".rdx", deb.data + ".rdb"))
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            Path(tmp, Path(name).name).write_bytes(data)
        values = read_lazyload(Path(tmp, "Rdata.rdx"))
    out = {}
    for book, (package, dataset, _) in BOOKS.items():
        if package != deb.package:
            continue
        lines = _book_lines(values[dataset])
        if book == "mobydick":
            lines = _gutenberg_body("".join(lines))
        out[book] = _paragraphs(lines)
    return out


# ---------------------------------------------------------------------------------------------
# fetching
# ---------------------------------------------------------------------------------------------
def _download(url: str) -> bytes:
    """The bytes at ``url`` (one attempt; :func:`fetch_english` tries the next mirror on failure)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 - pinned https/http pool URLs
        return r.read()


def _get_deb(deb: Deb, debs) -> bytes:
    """The verified bytes of ``deb``: from the directory ``debs`` if given, else downloaded."""
    if debs is not None:
        path = Path(debs).expanduser() / deb.file
        if not path.is_file():
            raise ValueError(f"{path} does not exist; the directory given as debs must hold {deb.file} "
                             f"(Debian's {deb.package}), or leave debs unset to download it")
        blob, where = path.read_bytes(), str(path)
        tried = []
    else:
        blob, where, tried = None, None, []
        for mirror in MIRRORS:
            url = mirror.format(package=deb.package, file=deb.file)
            try:
                blob, where = _download(url), url
                break
            except OSError as e:
                tried.append(f"{url}: {e}")
        if blob is None:
            raise ValueError(f"could not download {deb.file}: " + "; ".join(tried)
                             + " (give a directory holding the .deb files as debs / --debs)")
    got = _sha256(blob)
    if got != deb.sha256:
        raise ValueError(f"{where} has SHA-256 {got}, not the pinned {deb.sha256} of {deb.file}; refusing it "
                         "(nothing was written)")
    return blob


def _manifest(paragraphs: dict[str, list[str]], texts: dict[str, bytes]) -> dict:
    digests = {f"{book}.txt": _sha256(texts[book]) for book in paragraphs}
    return {
        "format": FORMAT, "digest": text_digest(digests), "heldout_share": HELDOUT_SHARE,
        "licence": "public-domain texts (Project Gutenberg); packaging MIT (R packages janeaustenr, tokenizers)",
        "books": {book: {"file": f"{book}.txt", "sha256": digests[f"{book}.txt"], "paragraphs": len(paras),
                         "words": sum(len(p.split()) for p in paras), "package": BOOKS[book][0],
                         "deb": DEBS[BOOKS[book][0]].file, "deb_sha256": DEBS[BOOKS[book][0]].sha256}
                  for book, paras in paragraphs.items()},
    }


def _check_written(out: Path) -> dict | None:
    """The manifest of a complete, verified text directory; None when ``out`` is new or empty."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return None
    if not out.is_dir():
        raise ValueError(f"{out} is a file; give a directory for the English text")
    if not (out / MANIFEST).is_file():
        raise ValueError(f"{out} is not empty and holds no {MANIFEST}; give a new or empty directory "
                         "(nothing was overwritten)")
    manifest = _read_manifest(out)
    pinned = {f"{b}.txt": BOOKS[b][2] for b in BOOKS}
    have = {b["file"]: b["sha256"] for b in manifest["books"].values()}
    if have != pinned:
        raise ValueError(f"{out} holds another text set (digest {manifest.get('digest')}, not {ENGLISH_SHA256}); "
                         "give a new or empty directory (nothing was overwritten)")
    _verify(out, manifest)
    return manifest


def fetch_english(out=None, debs=None) -> dict:
    """Fetch the English text into ``out`` (default :func:`default_english_dir`) and return its
    manifest (see the module docstring) with ``out`` and ``already_there`` added.

    The two pinned Debian packages are downloaded from :data:`MIRRORS` (``urllib``, tried in
    order), or read from the directory ``debs`` when given, and refused unless their SHA-256 is
    the pinned one; the books are decoded from the packages' R data and written as
    ``<book>.txt``, each checked against its pinned SHA-256, then ``manifest.json``.  A directory
    that already holds the verified text is returned as it is (nothing downloaded or written);
    a non-empty directory without this text, or with files that fail their checksums, raises
    ``ValueError`` and is left untouched."""
    out = default_english_dir() if out is None else Path(out).expanduser()
    done = _check_written(out)
    if done is not None:
        return {**done, "out": str(out), "already_there": True}
    paragraphs: dict[str, list[str]] = {}
    for deb in DEBS.values():
        paragraphs.update(_extract(deb, _get_deb(deb, debs)))
    paragraphs = {book: paragraphs[book] for book in BOOKS}
    texts = {book: ("\n".join(p) + "\n").encode("utf-8") for book, p in paragraphs.items()}
    for book, data in texts.items():
        if _sha256(data) != BOOKS[book][2]:
            raise ValueError(f"the text of {book} extracted from {BOOKS[book][0]} has SHA-256 {_sha256(data)}, not the "
                             f"pinned {BOOKS[book][2]}; this version of mechtrunc extracts it differently (nothing "
                             "was written)")
    return {**_write(out, paragraphs, texts), "out": str(out), "already_there": False}


def _write(out: Path, paragraphs: dict[str, list[str]], texts: dict[str, bytes]) -> dict:
    manifest = _manifest(paragraphs, texts)
    out.mkdir(parents=True, exist_ok=True)
    for book, data in texts.items():
        tmp = out / f".{book}.txt.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, out / f"{book}.txt")
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


#: the excerpt of mechtrunc/data/english: Pride and Prejudice up to this paragraph (chapters 1-5)
EXCERPT_UNTIL = "Chapter 6"


def write_excerpt(out, source=None) -> dict:
    """Write the test excerpt (Pride and Prejudice, chapters 1-5, as :func:`fetch_english` writes
    it) from the fetched text in ``source`` (default :func:`default_english_dir`) into the new
    directory ``out``; returns its manifest (digest :data:`EXCERPT_SHA256`).  How
    ``mechtrunc/data/english`` was made."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; give a new directory")
    paras = read_english(default_english_dir() if source is None else source, ENGLISH_SHA256)["prideprejudice"]
    book = {"prideprejudice": paras[:paras.index(EXCERPT_UNTIL)]}
    return _write(out, book, {"prideprejudice": ("\n".join(book["prideprejudice"]) + "\n").encode("utf-8")})


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path / MANIFEST} is not a readable manifest ({e}); fetch the text again with "
                         "`mechtrunc lm english --out DIR`") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path / MANIFEST} has format {manifest.get('format')!r}, not {FORMAT!r}")
    return manifest


def _verify(path: Path, manifest: dict) -> dict[str, bytes]:
    texts = {}
    for book, entry in manifest["books"].items():
        f = path / entry["file"]
        if not f.is_file():
            raise ValueError(f"{f} is missing; fetch the text again with `mechtrunc lm english --out {path}` "
                             "into a new directory")
        texts[book] = f.read_bytes()
        got = _sha256(texts[book])
        if got != entry["sha256"]:
            raise ValueError(f"{f} has SHA-256 {got}, not {entry['sha256']} of its manifest: the file was changed; "
                             "fetch the text again into a new directory")
    digest = text_digest({e["file"]: e["sha256"] for e in manifest["books"].values()})
    if digest != manifest.get("digest"):
        raise ValueError(f"{path / MANIFEST}: its digest {manifest.get('digest')} is not that of its files ({digest})")
    return texts


def english_digest(path) -> str:
    """The combined digest a text directory's manifest records (the files are verified when the
    text is read, :func:`read_english`)."""
    path = Path(path).expanduser()
    if not (path / MANIFEST).is_file():
        raise ValueError(f"{path} holds no English text ({MANIFEST} missing); fetch it with "
                         f"`mechtrunc lm english --out {path}`")
    return str(_read_manifest(path).get("digest"))


def read_english(path, digest: str | None = None) -> dict[str, list[str]]:
    """``{book: paragraphs}`` of a text directory (:func:`fetch_english`'s output or the excerpt)
    after checking every file against its manifest and, when given, the manifest's combined
    digest against ``digest`` (a corpus config's ``english_sha256``)."""
    path = Path(path).expanduser()
    if not (path / MANIFEST).is_file():
        command = "mechtrunc lm english" + ("" if path == default_english_dir() else f" --out {path}")
        raise ValueError(f"{path} holds no English text ({MANIFEST} missing); fetch it with `{command}`")
    manifest = _read_manifest(path)
    if digest is not None and manifest.get("digest") != digest:
        raise ValueError(f"the English text in {path} has digest {manifest.get('digest')}, but the config asks for "
                         f"{digest}; point english_dir at the directory holding that text")
    texts = _verify(path, manifest)
    return {book: data.decode("utf-8").splitlines() for book, data in texts.items()}


def stream_text(paragraph: str) -> str:
    """A paragraph as the training stream holds it: with a leading space, as every sentence of a
    story (paragraphs follow each other without a separator, like a story's sentences)."""
    return " " + paragraph


def english_split(paragraphs: dict[str, list[str]], heldout_share: float = HELDOUT_SHARE
                  ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """``(training, held_out)`` paragraphs of each book: held out are the paragraphs from the
    first one at which ``1 - heldout_share`` of the book's words have been passed (at least one
    paragraph each side).  Training never sees the held-out part; the collateral loss
    (:func:`mechtrunc.studies.lm.corpus_tokens`) reads it."""
    train, held = {}, {}
    for book, paras in paragraphs.items():
        if len(paras) < 2:
            raise ValueError(f"{book} has {len(paras)} paragraph(s); the split needs at least 2")
        words = [len(p.split()) for p in paras]
        total, cum, cut = sum(words), 0, len(paras) - 1
        for i, w in enumerate(words):
            if cum >= (1 - heldout_share) * total:
                cut = i
                break
            cum += w
        cut = min(max(cut, 1), len(paras) - 1)
        train[book], held[book] = paras[:cut], paras[cut:]
    return train, held
