"""Real English text for the language model: the R data reader, the checksummed fetch, the
extended tokenizer and the mixing of English passages into the training stream.  Never uses the
network: the fetch is tested on a .deb built here, the rest on the packaged excerpt."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from mechtrunc.models.lm import english as E
from mechtrunc.models.lm.corpus import Corpus, CorpusConfig
from mechtrunc.models.lm.rdata import RDataError, RObject, read_lazyload, read_rds, unserialize

DATA = Path(__file__).parent / "data" / "janeaustenr"
EXCERPT = dict(english_sha256=E.EXCERPT_SHA256)


# ------------------------------------------------------------------ R serialization, written by hand
def _i(*v):
    return struct.pack(f">{len(v)}i", *v)


def _chars(s: str | None, latin1: bool = False) -> bytes:
    if s is None:
        return _i(9, -1)
    raw = s.encode("latin-1" if latin1 else "utf-8")
    return _i(9 | ((1 << 2 if latin1 else 1 << 3) << 12), len(raw)) + raw


def _strs(values) -> bytes:
    return _i(16, len(values)) + b"".join(_chars(v) for v in values)


def _names(names, first_symbol=True) -> bytes:
    """An attribute pairlist holding ``names``: the symbol written in full, or as reference 1."""
    sym = _i(1) + _chars("names") if first_symbol else _i(255 | (1 << 8))
    return _i(2 | (1 << 10)) + sym + _strs(names) + _i(254)


def _serialize(body: bytes) -> bytes:
    return b"X\n" + _i(2, 0x040201, 0x020300) + body


def _lazyload(objects: dict[str, bytes]) -> tuple[bytes, bytes]:
    """(.rdx, .rdb) of a lazy-load database holding the serialized ``objects``."""
    rdb, offsets = b"", []
    for body in objects.values():
        data = _serialize(body)
        entry = struct.pack(">I", len(data)) + zlib.compress(data)
        offsets.append((len(rdb), len(entry)))
        rdb += entry
    variables = (_i(19 | (1 << 9), len(objects)) + b"".join(_i(13, 2, *o) for o in offsets)
                 + _names(list(objects)))
    index = (_i(19 | (1 << 9), 3) + variables + _i(19, 0) + _i(10, 1, 1)
             + _names(["variables", "references", "compressed"], first_symbol=False))
    return gzip.compress(_serialize(index)), rdb


def test_unserialize_reads_vectors_na_encodings_and_attributes():
    body = (_i(19 | (1 << 9), 5) + _i(16, 3) + _chars("caf\u00e9", latin1=True) + _chars(None) + _chars("\u00e9t\u00e9")
            + _i(13, 3, 1, -(2**31), 7) + _i(14, 2) + struct.pack(">2d", 0.5, -2.0) + _i(10, 2, 1, 0)
            + _i(24, 3) + b"abc" + _names(["s", "i", "d", "l", "r"]))
    got = unserialize(_serialize(body))
    assert isinstance(got, RObject) and got.attributes["names"] == ["s", "i", "d", "l", "r"]
    assert got["s"] == ["caf\u00e9", None, "\u00e9t\u00e9"] and got["i"] == [1, None, 7]
    assert got["d"] == [0.5, -2.0] and got["l"] == [True, False] and got["r"] == b"abc"
    with pytest.raises(RDataError, match="not an R XDR serialization"):
        unserialize(b"A\n" + body)
    with pytest.raises(RDataError, match="truncated R serialization"):
        unserialize(_serialize(body)[:-9])
    with pytest.raises(RDataError, match=r"R object type 4 .* \(environments, closures"):
        unserialize(_serialize(_i(4)))


def test_unserialize_expands_the_altrep_forms_r_writes():
    def altrep(cls: str, state: bytes) -> bytes:
        info = _i(2) + _i(1) + _chars(cls) + _i(2) + _i(1) + _chars("base") + _i(2) + _i(13, 1, 13) + _i(254)
        return _i(238) + info + state + _i(254)

    seq = altrep("compact_intseq", _i(14, 3) + struct.pack(">3d", 4, 10, 2))
    assert unserialize(_serialize(seq)) == [10, 12, 14, 16]
    wrapped = altrep("wrap_string", _i(19, 2) + _strs(["a", None]) + _i(13, 2, 0, 1))
    assert unserialize(_serialize(wrapped)) == ["a", None]
    with pytest.raises(RDataError, match="ALTREP class 'mmap_real' is not one this reader expands"):
        unserialize(_serialize(altrep("mmap_real", _i(254))))


def test_lazyload_of_r_written_files():
    # the index of janeaustenr's data, as R wrote it: offsets and lengths of the six novels in Rdata.rdb
    index = read_rds(DATA / "Rdata.rdx")
    variables = index["variables"]
    assert variables.attributes["names"] == ["emma", "mansfieldpark", "northangerabbey", "persuasion",
                                             "prideprejudice", "sensesensibility"]
    assert variables.value[4] == [1063742, 271037] and index["compressed"] == [True]
    # a data frame (Meta/Rd.rds): compact row names c(NA, -8)
    frame = read_rds(DATA / "Rd.rds")
    assert frame.attributes["class"] == ["data.frame"] and frame.attributes["row.names"] == [None, -8]
    assert frame["Name"][:2] == ["austen_books", "emma"]
    # a whole lazy-load database written by R: the help pages (lists, attributes, references)
    pages = read_lazyload(DATA / "janeaustenr.rdx")
    assert list(pages) == ["austen_books", "emma", "janeaustenr-package", "mansfieldpark", "northangerabbey",
                           "persuasion", "prideprejudice", "sensesensibility"]
    title = pages["prideprejudice"][0]
    assert title.attributes["Rd_tag"] == ["\\title"]
    assert title.value[0].value == ['The text of Jane Austen\'s novel "Pride and Prejudice"']


def test_lazyload_written_here_round_trips(tmp_path):
    rdx, rdb = _lazyload({"a": _strs(["x", None, "y"]), "b": _strs(["\u00e9"])})
    (tmp_path / "Rdata.rdx").write_bytes(rdx)
    (tmp_path / "Rdata.rdb").write_bytes(rdb)
    assert read_lazyload(tmp_path / "Rdata.rdx") == {"a": ["x", None, "y"], "b": ["\u00e9"]}
    (tmp_path / "Rdata.rdb").write_bytes(rdb[:-3])
    with pytest.raises((RDataError, zlib.error)):
        read_lazyload(tmp_path / "Rdata.rdx")


# ------------------------------------------------------------------ fetch, on a .deb built here
LINES = ["PRIDE AND PREJUDICE", "", "Chapter 1", "", "It is a truth universally", "  _acknowledged_, that a man.",
         "", "", "Mr. Bennet replied that he", "had not."]
PARAGRAPHS = ["PRIDE AND PREJUDICE", "Chapter 1", "It is a truth universally acknowledged, that a man.",
              "Mr. Bennet replied that he had not."]


def _ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, data in members.items():
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    return out


def _fake_deb() -> bytes:
    rdx, rdb = _lazyload({"prideprejudice": _strs(LINES)})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, data in (("Rdata.rdx", rdx), ("Rdata.rdb", rdb)):
            info = tarfile.TarInfo(f"./usr/lib/R/site-library/janeaustenr/data/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return _ar({"debian-binary": b"2.0\n", "control.tar.xz": b"", "data.tar.xz": buf.getvalue()})


@pytest.fixture
def fake_debian(monkeypatch):
    """The fetch pinned to one .deb built here (its SHA-256 and its book's); downloads counted."""
    deb = _fake_deb()
    text = ("\n".join(PARAGRAPHS) + "\n").encode()
    pinned = E.Deb("r-cran-janeaustenr", "fake_all.deb", hashlib.sha256(deb).hexdigest(),
                   "usr/lib/R/site-library/janeaustenr/data/Rdata")
    monkeypatch.setattr(E, "DEBS", {"r-cran-janeaustenr": pinned})
    monkeypatch.setattr(E, "BOOKS", {"prideprejudice": ("r-cran-janeaustenr", "prideprejudice",
                                                        hashlib.sha256(text).hexdigest())})
    urls = []

    def download(url):
        urls.append(url)
        if "deb.debian.org" in url:
            raise OSError("no network in the tests")
        return deb

    monkeypatch.setattr(E, "_download", download)
    return {"deb": deb, "urls": urls}


def test_fetch_writes_verified_text_and_a_rerun_downloads_nothing(fake_debian, tmp_path):
    out = tmp_path / "english"
    manifest = E.fetch_english(out)
    assert fake_debian["urls"] == [m.format(package="r-cran-janeaustenr", file="fake_all.deb") for m in E.MIRRORS]
    assert manifest["already_there"] is False and manifest["books"]["prideprejudice"]["words"] == 21
    assert (out / "prideprejudice.txt").read_text().splitlines() == PARAGRAPHS
    assert E.read_english(out, manifest["digest"]) == {"prideprejudice": PARAGRAPHS}
    again = E.fetch_english(out)
    assert again["already_there"] is True and len(fake_debian["urls"]) == 2  # verified, not downloaded
    (out / "prideprejudice.txt").write_text("changed\n")
    with pytest.raises(ValueError, match="has SHA-256 .* not .* of its manifest: the file was changed"):
        E.fetch_english(out)
    with pytest.raises(ValueError, match="has SHA-256"):
        E.read_english(out)


def test_fetch_refuses_a_deb_with_another_checksum_and_writes_nothing(fake_debian, monkeypatch, tmp_path):
    monkeypatch.setattr(E, "_download", lambda url: fake_debian["deb"][:-1] + b"x")
    with pytest.raises(ValueError, match=r"has SHA-256 [0-9a-f]{64}, not the pinned .* refusing it \(nothing was written\)"):
        E.fetch_english(tmp_path / "english")
    assert not (tmp_path / "english").exists()
    # the same from a directory of .deb files, and a missing one
    debs = tmp_path / "debs"
    debs.mkdir()
    with pytest.raises(ValueError, match="does not exist; the directory given as debs must hold fake_all.deb"):
        E.fetch_english(tmp_path / "english", debs=debs)
    (debs / "fake_all.deb").write_bytes(fake_debian["deb"])
    assert E.fetch_english(tmp_path / "english", debs=debs)["books"]["prideprejudice"]["paragraphs"] == 4
    # a text whose extraction no longer gives the pinned digest is refused too
    monkeypatch.setattr(E, "BOOKS", {"prideprejudice": ("r-cran-janeaustenr", "prideprejudice", "0" * 64)})
    with pytest.raises(ValueError, match="extracted from r-cran-janeaustenr has SHA-256 .* not the pinned 0000"):
        E.fetch_english(tmp_path / "other", debs=debs)


def test_fetch_leaves_other_directories_alone(fake_debian, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and holds no manifest.json"):
        E.fetch_english(tmp_path)
    with pytest.raises(ValueError, match="is a file"):
        E.fetch_english(tmp_path / "notes.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_moby_dick_loses_its_gutenberg_header_and_licence():
    raw = ("\ufeffThe Project Gutenberg EBook of Moby Dick\r\n*** START OF THIS PROJECT GUTENBERG EBOOK MOBY DICK; OR "
           "THE WHALE ***\r\nProduced by X\r\n\r\nMOBY DICK; OR THE WHALE\r\n\r\nCall me\r\nIshmael.\r\n\r\nEnd of "
           "Project Gutenberg's Moby Dick\r\n*** END ***\r\nlicence")
    assert E._paragraphs(E._gutenberg_body(raw)) == ["MOBY DICK; OR THE WHALE", "Call me Ishmael."]


# ------------------------------------------------------------------ the excerpt and the split
def test_excerpt_is_pride_and_prejudice_chapters_1_to_5():
    books = E.read_english(E.excerpt_dir(), E.EXCERPT_SHA256)
    paras = books["prideprejudice"]
    assert list(books) == ["prideprejudice"] and len(paras) == 127
    assert sum(len(p.split()) for p in paras) == 5350
    assert paras[3].startswith("It is a truth universally acknowledged, that a single man in possession")
    assert "_" not in "".join(paras) and "Chapter 5" in paras and "Chapter 6" not in paras
    with pytest.raises(ValueError, match="but the config asks for 1111"):
        E.read_english(E.excerpt_dir(), "1" * 64)
    assert E.resolve_english_dir(None, E.EXCERPT_SHA256) == E.excerpt_dir()
    assert E.resolve_english_dir(None, E.ENGLISH_SHA256) == E.default_english_dir()


def test_split_holds_out_the_last_five_percent_of_each_book():
    books = E.read_english(E.excerpt_dir())
    train, held = E.english_split(books)
    words = lambda ps: sum(len(p.split()) for p in ps)  # noqa: E731
    share = words(held["prideprejudice"]) / words(books["prideprejudice"])
    assert 0.03 < share <= 0.06
    assert train["prideprejudice"] + held["prideprejudice"] == books["prideprejudice"]
    with pytest.raises(ValueError, match="needs at least 2"):
        E.english_split({"x": ["one"]})


# ------------------------------------------------------------------ tokenizer
def test_default_configs_keep_todays_tokenizer():
    from mechtrunc.models.lm.tokenizer import lm_tokenizer, run_tokenizer

    base = lm_tokenizer()
    assert len(base) == 1306
    assert run_tokenizer(CorpusConfig()).get_vocab() == base.get_vocab() == run_tokenizer(None).get_vocab()
    assert hashlib.sha256(base.backend_tokenizer.to_str().encode()).hexdigest() == hashlib.sha256(
        run_tokenizer(CorpusConfig(seed=4)).backend_tokenizer.to_str().encode()).hexdigest()


def test_english_tokenizer_keeps_every_lexicon_id_and_adds_frequent_words():
    import mechtrunc as mt
    from mechtrunc.models.lm import lexicon
    from mechtrunc.models.lm.tokenizer import english_extra_tokens, english_token_counts, lm_tokenizer, run_tokenizer

    base, ext = lm_tokenizer(), run_tokenizer(CorpusConfig(english=0.3, **EXCERPT))
    assert len(ext) == 2171  # 1,306 + the 512 most frequent missing Pythia tokens of the excerpt + their merges
    vocab = ext.get_vocab()
    assert all(vocab[t] == i for t, i in base.get_vocab().items())  # same ids, new tokens after them
    for words in (lexicon.NAMES, *lexicon.SLOTS.values()):
        for w in words:
            assert ext.encode(" " + w) == base.encode(" " + w) and len(ext.encode(" " + w)) == 1, w
    text = " Mr. Bennet replied that he had not. Mary walked to the park."
    pythia = mt.hf.tokenizer()
    assert ext.convert_ids_to_tokens(ext.encode(text)) == pythia.convert_ids_to_tokens(pythia.encode(text))
    assert len(base.encode(text)) > len(ext.encode(text))
    train, _ = E.english_split(E.read_english(E.excerpt_dir()))
    counts = english_token_counts(train["prideprejudice"])
    extra = english_extra_tokens(counts, 4)
    assert extra == english_extra_tokens(counts, 8)[:4] and all(t not in base.get_vocab() for t in extra)
    assert counts[extra[0]] >= counts[extra[1]] >= counts[extra[3]]
    assert len(run_tokenizer(CorpusConfig(english=0.3, english_vocab=0, **EXCERPT))) == 1306


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("kwargs, match", [
    (dict(english=1.5), r"english must be in \[0, 1\]"),
    (dict(english=-0.1), "english must be a finite number >= 0"),
    (dict(english_vocab=100), "english_vocab=100 given but english=0"),
    (dict(english_dir="/x"), "english_dir='/x' given but english=0"),
    (dict(english=0.2, english_sha256="abc"), "english_sha256 must be a SHA-256 as 64 lowercase hex digits"),
    (dict(english=0.2, english_vocab=-1), "english_vocab"),
])
def test_bad_english_configs_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CorpusConfig(**kwargs)


def test_english_fields_round_trip_and_stay_out_of_configs_without_english():
    assert "english" not in CorpusConfig().to_dict() and set(CorpusConfig().to_dict()) == set(
        CorpusConfig.from_dict(CorpusConfig().to_dict()).to_dict())
    cfg = CorpusConfig(english=0.25, english_vocab=256, **EXCERPT)
    d = cfg.to_dict()
    assert d["english"] == 0.25 and d["english_sha256"] == E.EXCERPT_SHA256 and d["english_dir"] is None
    assert CorpusConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert CorpusConfig(english=0.1).english_sha256 == E.ENGLISH_SHA256  # the seven books by default
    assert CorpusConfig(english=0.1, english_dir="texts").english_dir == str(Path.cwd() / "texts")  # absolute


# ------------------------------------------------------------------ mixing
def test_default_stream_is_byte_identical_to_before():
    from mechtrunc.studies.lm import corpus_tokens

    base = Corpus(CorpusConfig())
    digest = lambda a: hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()  # noqa: E731
    # the digests of the generator before English existed
    assert digest(base.batch(3, 4, 16)) == "6dcffde34da403e1eab2e5c9296662cf53d575b2533e3cec43fdb62e04c3fdd9"
    assert digest(base.stories(20, part=2).tokens) == "a8828623e498f265819bfa8d6a4382f2253ed3e3c42d45ab987eaa6d47cf5a82"
    tokens = corpus_tokens(CorpusConfig(), n_windows=8)
    assert digest(tokens.numpy()) == "b0dbb642af3e95aef128c3664d4a68380880122f54071eb610e0d2cc96b41ec0"
    assert tokens.equal(corpus_tokens(CorpusConfig(), n_windows=8, text="stories"))


def _spans(tokens: np.ndarray, eot: int) -> list[tuple[int, int]]:
    starts = np.flatnonzero(tokens == eot)
    return list(zip(starts + 1, np.append(starts[1:], len(tokens))))


def _contains(haystack: np.ndarray, needle: np.ndarray) -> bool:
    hits = np.flatnonzero(haystack[: len(haystack) - len(needle) + 1] == needle[0])
    return any(np.array_equal(haystack[h:h + len(needle)], needle) for h in hits)


def test_mixing_replaces_the_configured_share_of_stories_with_training_passages():
    base = Corpus(CorpusConfig(seed=2))
    mixed = Corpus(CorpusConfig(seed=2, english=0.3, **EXCERPT))
    train_ids = mixed._english[0].ids
    eot = mixed.eot
    english_tokens = total = 0
    for step in range(120):
        a, b = mixed.batch(step, 8, 64).ravel(), base.batch(step, 8, 64).ravel()
        assert np.array_equal(a == eot, b == eot)  # story boundaries kept, other stories untouched
        for s, e in _spans(b, eot):
            if e <= s or np.array_equal(a[s:e], b[s:e]):
                continue
            english_tokens += e - s  # a replaced story: its passage comes from the training text
            assert _contains(train_ids, a[s:e])
        total += len(a)
    assert 0.27 < english_tokens / total < 0.33
    assert np.array_equal(mixed.batch(5, 8, 64), Corpus(CorpusConfig(seed=2, english=0.3, **EXCERPT)).batch(5, 8, 64))
    assert not np.array_equal(mixed.batch(5, 8, 64), mixed.batch(6, 8, 64))


def test_heldout_windows_never_appear_in_training_and_heldout_names_never_do():
    from mechtrunc.studies.lm import corpus_tokens

    cfg = CorpusConfig(english=0.5, **EXCERPT)
    corpus = Corpus(cfg)
    windows = corpus.english_windows(6, 32)
    assert windows.shape == (6, 32) and (windows[:, 0] == corpus.eot).all()
    train_ids, held_ids = corpus._english[0].ids, corpus._english[1].ids
    for w in windows:
        assert _contains(held_ids, w[1:]) and not _contains(train_ids, w[1:17])
    mixed = corpus_tokens(cfg, n_windows=10, ctx=32).numpy()
    assert mixed.shape == (10, 32)
    assert np.array_equal(mixed[5:], corpus.english_windows(5, 32))  # round(0.5 x 10) English windows last
    assert np.array_equal(mixed[:5], corpus_tokens(CorpusConfig(), n_windows=5, ctx=32).numpy())
    assert np.array_equal(corpus_tokens(cfg, n_windows=4, ctx=32, text="english").numpy(), corpus.english_windows(4, 32))
    with pytest.raises(ValueError, match="text='english' needs a corpus config with english > 0"):
        corpus_tokens(CorpusConfig(), text="english")
    with pytest.raises(ValueError, match="text must be one of"):
        corpus_tokens(cfg, text="prose")
    # "Jane" is frequent in the excerpt; held out, it never reaches the training stream
    jane = corpus.tokenizer.encode(" Jane")[0]
    held_jane = Corpus(CorpusConfig(english=0.9, heldout_names=("Jane",), **EXCERPT))
    seen = [int((Corpus(CorpusConfig(english=0.9, **EXCERPT)).batch(s, 8, 64) == jane).sum()) for s in range(20)]
    assert sum(seen) >= 10
    assert all(int((held_jane.batch(s, 8, 64) == jane).sum()) == 0 for s in range(20))


def test_a_corpus_with_english_needs_its_run_tokenizer():
    from mechtrunc.models.lm.tokenizer import lm_tokenizer

    with pytest.raises(ValueError, match=r"needs its run's tokenizer .*2171 tokens\); the one given has 1306"):
        Corpus(CorpusConfig(english=0.3, **EXCERPT), lm_tokenizer())


def test_nano_trains_on_a_mixed_stream(tmp_path):
    import torch

    import mechtrunc as mt
    from mechtrunc.models.lm.prompts import run_prompts
    from mechtrunc.models.lm.tokenizer import lm_tokenizer
    from mechtrunc.models.lm.train import lm_preset, train_lm

    cfg = lm_preset("nano", steps=2, checkpoint_interval=1, corpus=CorpusConfig(english=0.5, **EXCERPT))
    summary = train_lm(cfg, tmp_path / "run", progress=False)
    assert summary["vocab_size"] == 2171 and np.isfinite(summary["final_loss"])
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["corpus"]["english"] == 0.5
    model = mt.hf.load_model(tmp_path / "run" / "step2")
    assert model.cfg.d_vocab == 2171
    ioi = run_prompts(tmp_path / "run", n=8)  # the run's own tokenizer: lexicon ids as without English
    assert ioi.tokens.equal(run_prompts(tmp_path / "run", n=8, tokenizer=lm_tokenizer()).tokens)
    with torch.no_grad():
        assert torch.isfinite(model(ioi.tokens)).all()
    # the text's directory is where it is, not what it is: a resume may name another
    moved = lm_preset("nano", steps=2, checkpoint_interval=1,
                      corpus=CorpusConfig(english=0.5, english_dir=str(E.excerpt_dir()), **EXCERPT))
    assert train_lm(moved, tmp_path / "run", progress=False)["already_finished"] is True


# ------------------------------------------------------------------ command line
def test_cli_english_fetches_once_and_train_records_the_texts_checksum(fake_debian, tmp_path, capsys):
    import mechtrunc.cli as cli

    debs = tmp_path / "debs"
    debs.mkdir()
    (debs / "fake_all.deb").write_bytes(fake_debian["deb"])
    out = tmp_path / "english"
    assert cli.main(["lm", "english", "--out", str(out), "--debs", str(debs), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["already_there"] is False and manifest["out"] == str(out) and fake_debian["urls"] == []
    assert cli.main(["lm", "english", "--out", str(out)]) == 0
    assert "1 books, 21 words: already there, verified in" in capsys.readouterr().out
    (out / "prideprejudice.txt").write_text("changed\n")
    assert cli.main(["lm", "english", "--out", str(out)]) == 2
    assert "the file was changed" in capsys.readouterr().err
    run = tmp_path / "run"
    argv = ["lm", "train", "--preset", "nano", "--out", str(run), "--steps", "1", "--english", "0.4",
            "--english-dir", str(E.excerpt_dir()), "--english-vocab", "64", "--json", "--no-progress"]
    assert cli.main(argv) == 0
    corpus = json.loads((run / "run.json").read_text())["config"]["corpus"]
    assert (corpus["english"], corpus["english_vocab"], corpus["english_sha256"]) == (0.4, 64, E.EXCERPT_SHA256)
    from mechtrunc.models.lm.tokenizer import run_tokenizer

    vocab = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["vocab_size"]
    assert vocab == len(run_tokenizer(CorpusConfig.from_dict(corpus))) and 1306 < vocab < 2171
