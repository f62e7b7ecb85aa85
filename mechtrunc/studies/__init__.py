"""Studies: the LASER truncation grid, composed truncations, checkpoint studies and circuits
across training on language models (Pythia and friends, our own), and the training dynamics of
the toy and the minimal model (:mod:`~mechtrunc.studies.dynamics`).

Modules:

- :mod:`~mechtrunc.studies.store`: fingerprints, the resumable row store, atomic Parquet shards,
  the final CSV/Parquet tables, and what every study directory shares (settings, resume log,
  per-item side table).
- :mod:`~mechtrunc.studies.truncation_files`, :mod:`~mechtrunc.studies.checkpoint_files`,
  :mod:`~mechtrunc.studies.lm_files`: the one module per kind of study that knows its directory
  (every file's name, its writer and its reader); the studies evaluate, then hand their results
  to it, and the report reads them back through it.
- :mod:`~mechtrunc.studies.grid`: :class:`Grid`, :func:`evaluate_grid` (the one grid evaluation
  on one model), :func:`truncation_study`, :func:`best_configuration`, :func:`as_truncate`,
  :func:`heldout_configuration` (chosen on part of the prompts, reported on the rest).
- :mod:`~mechtrunc.studies.compose`: :func:`compose_search` (greedy search for a composition of
  truncations, chosen on selection prompts, reported on evaluation prompts), :func:`as_interventions`.
- :mod:`~mechtrunc.studies.checkpoints`: :func:`checkpoint_study`, one unit per checkpoint
  (full model + one truncation, or full model + a whole grid), each written as its own shard.
- :mod:`~mechtrunc.studies.circuits`: :func:`circuit_study`, node and edge attribution and the
  answer-vs-generic margin ledger at every checkpoint, :func:`overtaking_step`.
- :mod:`~mechtrunc.studies.executors`: where units run: :class:`LocalExecutor` (default,
  prefetching), :class:`RayExecutor`, :class:`SlurmExecutor` (submitit).
- :mod:`~mechtrunc.studies.summary`: :func:`summarise_study` (heatmap, best configuration and its
  attribution change).  Prompt sets by task name: :func:`mechtrunc.tasks.prompts_for_task`.
- :mod:`~mechtrunc.studies.lm`: the study of a run of our own language model at its checkpoints.
- :mod:`~mechtrunc.studies.dynamics`: why the feed-forward layer learns the generic association
  first (the minimal model, the toy's training dynamics, the measures both share); ``mt.dynamics``.

Figures live in :mod:`mechtrunc.analysis.viz` (``truncation_heatmap``, ``checkpoint_plot``), prompt sets
by task name in :mod:`mechtrunc.tasks` and model builders in :mod:`mechtrunc.models.testing`; this
package re-exports none of them (it sits below the report and the command line, above them).
"""

from __future__ import annotations

from mechtrunc.studies.checkpoints import (
    CheckpointDirectory, HubCheckpoints, best_by_step, checkpoint_study, heldout_by_step, read_checkpoint_items,
    step_intervals,
)
from mechtrunc.studies.circuits import circuit_study, evidence_by_step, overtaking_step, read_circuit_study
from mechtrunc.studies.compose import as_interventions, compose_search
from mechtrunc.studies.executors import LocalExecutor, RayExecutor, SlurmExecutor
from mechtrunc.studies.grid import (
    Grid, ItemStore, as_truncate, best_configuration, evaluate_grid, heldout_configuration, read_items,
    truncation_study,
)
from mechtrunc.studies.summary import study_report, summarise_study  # study_report: deprecated name

__all__ = [
    "truncation_study", "best_configuration", "heldout_configuration", "as_truncate", "checkpoint_study",
    "summarise_study",
    "Grid", "evaluate_grid", "CheckpointDirectory", "HubCheckpoints", "LocalExecutor",
    "RayExecutor", "SlurmExecutor", "compose_search", "as_interventions",
    "read_items", "ItemStore", "best_by_step", "heldout_by_step", "step_intervals", "read_checkpoint_items",
    "circuit_study", "evidence_by_step", "overtaking_step", "read_circuit_study",
]
