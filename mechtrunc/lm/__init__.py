"""A language model of our own: a small GPT-NeoX trained offline on a generated English corpus
with Pythia's checkpoint schedule (issue 15).  See docs/lm.md.

Modules: :mod:`~mechtrunc.lm.lexicon` (words and templates), :mod:`~mechtrunc.lm.corpus` (the
seeded generator), :mod:`~mechtrunc.lm.tokenizer` (Pythia's BPE restricted to the corpus),
:mod:`~mechtrunc.lm.prompts` (held-out IOI and factual prompt sets), :mod:`~mechtrunc.lm.train`
(model, training, checkpoints), :mod:`~mechtrunc.lm.presets` (light constants).  Public names are
resolved on first use, so importing this package is cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["CorpusConfig", "Corpus", "CorpusChunk", "corpus_preset", "corpus_stats"], "mechtrunc.lm.corpus"),
    **dict.fromkeys(["lm_tokenizer", "build_tokenizer_json"], "mechtrunc.lm.tokenizer"),
    **dict.fromkeys(["lm_ioi_prompts", "lm_fact_prompts", "prompt_records"], "mechtrunc.lm.prompts"),
    **dict.fromkeys(["LMConfig", "lm_preset", "train_lm", "checkpoint_steps", "build_model"], "mechtrunc.lm.train"),
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mechtrunc.lm' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
