"""A language model of our own: a small GPT-NeoX trained offline on a generated English corpus
with Pythia's checkpoint schedule.  See docs/lm.md.

Modules: :mod:`~mechtrunc.models.lm.lexicon` (words and templates), :mod:`~mechtrunc.models.lm.corpus` (the
seeded generator), :mod:`~mechtrunc.models.lm.english` (real English text: Austen and Moby-Dick, fetched
with checksums; :mod:`~mechtrunc.models.lm.rdata` reads the R data it comes in),
:mod:`~mechtrunc.models.lm.tokenizer` (Pythia's BPE restricted to the corpus),
:mod:`~mechtrunc.models.lm.prompts` (held-out IOI and factual prompt sets), :mod:`~mechtrunc.models.lm.train`
(model, training, checkpoints).  Its presets are light constants in :mod:`mechtrunc._choices`
(``CORPUS_PRESETS``, ``LM_PRESETS``), which the command line reads without importing this package.
"""

from mechtrunc.models.lm.corpus import Corpus, CorpusChunk, CorpusConfig, corpus_preset, corpus_stats
from mechtrunc.models.lm.prompts import (
    lm_binding_prompts, lm_fact_prompts, lm_generic_prompts, lm_ioi_prompts, lm_recall_prompts, lm_task_prompts,
    prompt_records, run_prompts,
)
from mechtrunc.models.lm.english import fetch_english, read_english
from mechtrunc.models.lm.tokenizer import build_tokenizer_json, lm_tokenizer, run_tokenizer
from mechtrunc.models.lm.train import LMConfig, build_model, checkpoint_steps, lm_preset, train_lm

__all__ = [
    "CorpusConfig", "Corpus", "CorpusChunk", "corpus_preset", "corpus_stats", "lm_tokenizer", "run_tokenizer", "build_tokenizer_json",
    "fetch_english", "read_english",
    "lm_ioi_prompts", "lm_fact_prompts", "lm_generic_prompts", "lm_recall_prompts", "lm_binding_prompts", "lm_task_prompts", "run_prompts", "prompt_records", "LMConfig", "lm_preset", "train_lm", "checkpoint_steps",
    "build_model",
]
