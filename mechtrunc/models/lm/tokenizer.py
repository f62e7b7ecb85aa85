"""The language model's tokenizer: Pythia's own GPT-NeoX BPE restricted to the corpus' words.

Why not a byte-level BPE trained on the corpus?  Three reasons.  (1) The held-out evaluation names
never occur in the training stream, so a BPE trained on it would split them into pieces, while
``mt.ioi_prompts`` needs every name to be one token; here every lexicon word (held-out names
included) keeps Pythia's segmentation, which is one token per name.  (2) Text is segmented exactly
as Pythia segments it, so prompts, competitors (" the") and answers mean the same tokens as in the
Pythia studies.  (3) It needs no training and is fully deterministic: the vocabulary depends only
on the lexicon (:mod:`mechtrunc.models.lm.lexicon`), not on a seed or a corpus sample.

How: encode every string the corpus can emit with the full tokenizer, keep the tokens used, the
BPE merges that build them (the closure of their derivation trees), Pythia's byte tokens (so other
text still encodes, byte by byte when needed; Pythia itself lacks a few rare bytes) and the specials ``<|endoftext|>`` (id 0, BOS/EOS/UNK
as in Pythia) and ``<|padding|>`` (id 1).  Ids are renumbered densely (1,306 tokens instead
of 50,277), so the unembedding stays small.  BPE applies the lowest-ranked available merge at each
step; removing merges that a string never uses cannot change its segmentation, and
:func:`build_tokenizer_json` checks that anyway.  The tokenizer is written into every checkpoint
directory, so ``AutoTokenizer.from_pretrained(DIR)`` and ``mt.hf.load_model(DIR)`` work as for
any saved model.

With real English in the training stream (``CorpusConfig.english > 0``, :mod:`mechtrunc.models.lm.english`)
the vocabulary must also cover that text reasonably: :func:`run_tokenizer` adds the
``english_vocab`` Pythia tokens most frequent in the English training text (and the merges that
build them) after the restricted vocabulary, so every lexicon word keeps its one token and its id,
frequent English words are one token each as in Pythia, and rarer ones fall back to pieces or
bytes.  docs/lm.md ("Real English text") gives the vocabulary sizes and fall-back rates.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources

from mechtrunc.models.lm import lexicon

__all__ = ["lexicon_strings", "build_tokenizer_json", "lm_tokenizer", "english_token_counts", "english_extra_tokens",
           "run_tokenizer"]

SPECIALS = ("<|endoftext|>", "<|padding|>")


def lexicon_strings() -> list[str]:
    """Every string the corpus and its evaluation prompts are made of: each template split at its
    placeholders, and each slot word with its leading space."""
    import re

    out: list[str] = []
    templates = [t for pair in lexicon.GENERIC_TO for t in pair]
    templates += [*lexicon.GENERIC_IN, *lexicon.GENERIC_OF, *lexicon.IOI, *lexicon.FACTS, *lexicon.FILLER]
    templates += [t for pair in lexicon.RECALL for t in pair]
    templates += [t.replace(" {A}.", " the {R}.") for t in lexicon.IOI]
    for t in templates:
        out += [p for p in re.split(r" \{[A-Z]\}", " " + t) if p]
    out += [" " + w for w in lexicon.NAMES]
    for words in lexicon.SLOTS.values():
        out += [" " + w for w in words]
    return list(dict.fromkeys(out))


def _pythia_spec() -> dict:
    # the file behind mechtrunc.models.hf.PYTHIA_TOKENIZER_JSON, read without importing torch
    return json.loads(resources.files("mechtrunc.data").joinpath("gpt_neox_20b_tokenizer.json").read_text())


def build_tokenizer_json(strings: Iterable[str] | None = None, extra_tokens: Iterable[str] = ()) -> str:
    """The restricted tokenizer as ``tokenizer.json`` text (see the module docstring);
    ``strings`` default to :func:`lexicon_strings`.  ``extra_tokens`` (Pythia vocabulary entries,
    byte-level form such as ``"Ġthe"``) are kept too, with the merges that build them; their new
    tokens get ids after every token of ``strings``, so the ids of the restricted tokenizer
    stay the same (:func:`run_tokenizer`)."""
    from tokenizers import Tokenizer
    from tokenizers.pre_tokenizers import ByteLevel

    strings = lexicon_strings() if strings is None else list(strings)
    spec = _pythia_spec()
    full = Tokenizer.from_str(json.dumps(spec))
    model = spec["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    producers: dict[str, list[tuple[str, str]]] = {}
    for a, b in merges:
        producers.setdefault(a + b, []).append((a, b))

    old_vocab = model["vocab"]
    unknown = [t for t in extra_tokens if t not in old_vocab]
    if unknown:
        raise ValueError(f"extra_tokens {unknown[:5]} are not in Pythia's vocabulary")

    def closure(keep: set[str], todo: list[str]) -> set[str]:
        while todo:
            tok = todo.pop()
            if tok in keep:
                continue
            keep.add(tok)
            for a, b in producers.get(tok, ()):
                todo += [a, b]
        return keep

    base = closure({c for c in ByteLevel.alphabet() if c in old_vocab} | set(SPECIALS),
                   [tok for s in strings for tok in full.encode(s, add_special_tokens=False).tokens])
    keep = closure(set(base), list(extra_tokens))
    by_id = lambda t: old_vocab[t]  # noqa: E731
    ordered = (list(SPECIALS) + sorted((t for t in base if t not in SPECIALS), key=by_id)
               + sorted(keep - base, key=by_id))
    model["vocab"] = {t: i for i, t in enumerate(ordered)}
    model["merges"] = [f"{a} {b}" for a, b in merges if a in keep and b in keep and a + b in keep]
    spec["added_tokens"] = [dict(t, id=SPECIALS.index(t["content"])) for t in spec["added_tokens"]
                            if t["content"] in SPECIALS]
    text = json.dumps(spec, ensure_ascii=False)
    small = Tokenizer.from_str(text)
    for s in strings:
        want, got = full.encode(s).tokens, small.encode(s).tokens
        if want != got:  # pragma: no cover - guarded by the argument in the module docstring
            raise RuntimeError(f"restricted tokenizer segments {s!r} as {got}, Pythia as {want}")
    return text


@lru_cache(maxsize=1)
def _cached_json() -> str:
    return build_tokenizer_json()


def _fast(text: str):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(text),
        bos_token=SPECIALS[0], eos_token=SPECIALS[0], unk_token=SPECIALS[0], pad_token=SPECIALS[1],
    )
    tok.name_or_path = "mechtrunc-lm"
    return tok


def lm_tokenizer():
    """A fresh ``PreTrainedTokenizerFast`` of the restricted tokenizer (BOS = EOS = UNK =
    ``<|endoftext|>``, PAD = ``<|padding|>``): the tokenizer of every run without English text
    (:func:`run_tokenizer`)."""
    return _fast(_cached_json())


def english_token_counts(paragraphs: Iterable[str]) -> Counter:
    """How often each Pythia token (byte-level form, e.g. ``"Ġthe"``) occurs in ``paragraphs``
    tokenized as the training stream holds them (:func:`mechtrunc.models.lm.english.stream_text`)."""
    from tokenizers import Tokenizer

    from mechtrunc.models.lm.english import stream_text

    full = Tokenizer.from_str(json.dumps(_pythia_spec()))
    counts: Counter = Counter()
    for enc in full.encode_batch([stream_text(p) for p in paragraphs], add_special_tokens=False):
        counts.update(enc.tokens)
    return counts


def english_extra_tokens(counts: Counter, n: int) -> list[str]:
    """The ``n`` Pythia tokens of ``counts`` that the restricted tokenizer lacks, most frequent
    first (ties: lower Pythia id first): deterministic in the text."""
    have = set(json.loads(_cached_json())["model"]["vocab"])
    ids = _pythia_spec()["model"]["vocab"]
    ranked = sorted((t for t in counts if t not in have), key=lambda t: (-counts[t], ids[t]))
    return ranked[:n]


@lru_cache(maxsize=8)
def _english_json(english_dir: str, digest: str, n: int) -> str:
    from mechtrunc.models.lm.english import english_split, read_english

    train, _ = english_split(read_english(english_dir, digest))
    counts = english_token_counts(p for paras in train.values() for p in paras)
    return build_tokenizer_json(extra_tokens=english_extra_tokens(counts, n))


def run_tokenizer(corpus_config=None):
    """The tokenizer of a run, a function of its corpus config (a
    :class:`~mechtrunc.models.lm.corpus.CorpusConfig`; None: the default): :func:`lm_tokenizer` when the
    config mixes in no English text (``english == 0``: every default config, same ids as ever);
    otherwise the restricted tokenizer extended with the ``english_vocab`` Pythia tokens most
    frequent in the training part of its English text (:func:`english_extra_tokens`, with the
    merges that build them; the text is the one of checksum ``english_sha256`` in
    ``english_dir``).  Every lexicon word stays one token with the same id; rarer English words
    fall back to sub-word pieces or bytes.  Training, the prompts and the study of a run all
    build its tokenizer here."""
    if corpus_config is None or not getattr(corpus_config, "english", 0):
        return lm_tokenizer()
    from mechtrunc.models.lm.english import resolve_english_dir

    where = resolve_english_dir(corpus_config.english_dir, corpus_config.english_sha256)
    return _fast(_english_json(str(where), corpus_config.english_sha256, int(corpus_config.english_vocab)))
