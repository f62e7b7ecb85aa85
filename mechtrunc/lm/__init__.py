"""A language model of our own: a small GPT-NeoX trained offline on a generated English corpus
with Pythia's checkpoint schedule.  See docs/lm.md.

Modules: :mod:`~mechtrunc.lm.lexicon` (words and templates), :mod:`~mechtrunc.lm.corpus` (the
seeded generator), :mod:`~mechtrunc.lm.english` (real English text: Austen and Moby-Dick, fetched
with checksums; :mod:`~mechtrunc.lm.rdata` reads the R data it comes in),
:mod:`~mechtrunc.lm.tokenizer` (Pythia's BPE restricted to the corpus),
:mod:`~mechtrunc.lm.prompts` (held-out IOI and factual prompt sets), :mod:`~mechtrunc.lm.train`
(model, training, checkpoints).  Its presets are light constants in :mod:`mechtrunc._choices`
(``CORPUS_PRESETS``, ``LM_PRESETS``), which the command line reads without importing this package.
"""

from mechtrunc.lm.corpus import Corpus, CorpusChunk, CorpusConfig, corpus_preset, corpus_stats
from mechtrunc.lm.prompts import (
    lm_binding_prompts, lm_fact_prompts, lm_generic_prompts, lm_ioi_prompts, lm_recall_prompts, lm_task_prompts,
    prompt_records, run_prompts,
)
from mechtrunc.lm.english import fetch_english, read_english
from mechtrunc.lm.tokenizer import build_tokenizer_json, lm_tokenizer, run_tokenizer
from mechtrunc.lm.train import LMConfig, build_model, checkpoint_steps, lm_preset, train_lm

__all__ = [
    "CorpusConfig", "Corpus", "CorpusChunk", "corpus_preset", "corpus_stats", "lm_tokenizer", "run_tokenizer", "build_tokenizer_json",
    "fetch_english", "read_english",
    "lm_ioi_prompts", "lm_fact_prompts", "lm_generic_prompts", "lm_recall_prompts", "lm_binding_prompts", "lm_task_prompts", "run_prompts", "prompt_records", "LMConfig", "lm_preset", "train_lm", "checkpoint_steps",
    "build_model",
]
