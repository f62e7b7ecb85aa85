"""The language model's tokenizer: Pythia's own GPT-NeoX BPE restricted to the corpus' words.

Why not a byte-level BPE trained on the corpus?  Three reasons.  (1) The held-out evaluation names
never occur in the training stream, so a BPE trained on it would split them into pieces, while
``mt.ioi_prompts`` needs every name to be one token; here every lexicon word (held-out names
included) keeps Pythia's segmentation, which is one token per name.  (2) Text is segmented exactly
as Pythia segments it, so prompts, competitors (" the") and answers mean the same tokens as in the
Pythia studies.  (3) It needs no training and is fully deterministic: the vocabulary depends only
on the lexicon (:mod:`mechtrunc.lm.lexicon`), not on a seed or a corpus sample.

How: encode every string the corpus can emit with the full tokenizer, keep the tokens used, the
BPE merges that build them (the closure of their derivation trees), Pythia's byte tokens (so other
text still encodes, byte by byte when needed; Pythia itself lacks a few rare bytes) and the specials ``<|endoftext|>`` (id 0, BOS/EOS/UNK
as in Pythia) and ``<|padding|>`` (id 1).  Ids are renumbered densely (about 700 tokens instead
of 50,277), so the unembedding stays small.  BPE applies the lowest-ranked available merge at each
step; removing merges that a string never uses cannot change its segmentation, and
:func:`build_tokenizer_json` checks that anyway.  The tokenizer is written into every checkpoint
directory, so ``AutoTokenizer.from_pretrained(DIR)`` and ``mt.pythia.load_model(DIR)`` work as for
any saved model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources

from mechtrunc.lm import lexicon

__all__ = ["lexicon_strings", "build_tokenizer_json", "lm_tokenizer"]

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


def build_tokenizer_json(strings: Iterable[str] | None = None) -> str:
    """The restricted tokenizer as ``tokenizer.json`` text (see the module docstring);
    ``strings`` default to :func:`lexicon_strings`."""
    from tokenizers import Tokenizer
    from tokenizers.pre_tokenizers import ByteLevel

    strings = lexicon_strings() if strings is None else list(strings)
    # the file behind mechtrunc.pythia.PYTHIA_TOKENIZER_JSON, read without importing torch
    spec = json.loads(resources.files("mechtrunc.data").joinpath("gpt_neox_20b_tokenizer.json").read_text())
    full = Tokenizer.from_str(json.dumps(spec))
    model = spec["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    producers: dict[str, list[tuple[str, str]]] = {}
    for a, b in merges:
        producers.setdefault(a + b, []).append((a, b))

    old_vocab = model["vocab"]
    keep = {c for c in ByteLevel.alphabet() if c in old_vocab} | set(SPECIALS)
    todo = [tok for s in strings for tok in full.encode(s, add_special_tokens=False).tokens]
    while todo:
        tok = todo.pop()
        if tok in keep:
            continue
        keep.add(tok)
        for a, b in producers.get(tok, ()):
            todo += [a, b]
    ordered = list(SPECIALS) + sorted((t for t in keep if t not in SPECIALS), key=lambda t: old_vocab[t])
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


def lm_tokenizer():
    """A fresh ``PreTrainedTokenizerFast`` of the restricted tokenizer (BOS = EOS = UNK =
    ``<|endoftext|>``, PAD = ``<|padding|>``)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_cached_json()),
        bos_token=SPECIALS[0], eos_token=SPECIALS[0], unk_token=SPECIALS[0], pad_token=SPECIALS[1],
    )
    tok.name_or_path = "mechtrunc-lm"
    return tok
