"""Running a model on a prompt set and scoring it: :func:`evaluate` (one row) and :func:`sweep`
(one row per intervention; plain truncations go through the grid engine,
:func:`mechtrunc.core.engine.run_grid`).  The metric maths itself is :mod:`mechtrunc.core.metrics`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from mechtrunc._progress import progress_bar
from mechtrunc.core.adapters import adapt
from mechtrunc.core.interventions import Intervention, Truncate
from mechtrunc.core.metrics import metrics_from_logits
from mechtrunc.core.prompts import PromptSet
from mechtrunc.core.runner import item_logits

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["evaluate", "sweep"]


def evaluate(
    model, prompts: PromptSet, *interventions: Intervention, batch_size: int = 64, label: str | None = None,
    weights: Tensor | None = None, items: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, dict[str, Tensor]]:
    """One-row DataFrame of metrics on ``prompts`` with the interventions active (``weights``:
    optional per-item weights, see :func:`mechtrunc.core.metrics.metrics_from_logits`).  ``items``:
    also return the per-item values ``{metric: [item] tensor}`` of the same forward pass
    (:func:`mechtrunc.core.metrics.item_metrics`), as ``(row, items)``."""
    import pandas as pd  # (here, not at the top: the grid engine and the CLI's startup avoid it)

    logits = item_logits(model, prompts, *interventions, batch_size=batch_size)
    row = metrics_from_logits(logits, prompts, weights=weights)
    name = label if label is not None else (" + ".join(iv.label for iv in interventions) or "full")
    out = pd.DataFrame([{"variant": name, **row}])
    if items:
        from mechtrunc.core.metrics import item_metrics

        return out, {k: v.detach().cpu() for k, v in item_metrics(logits, prompts).items()}
    return out


def _entries(interventions) -> list[tuple[Intervention, ...]]:
    return [() if e is None else (tuple(e) if isinstance(e, (list, tuple)) else (e,)) for e in interventions]


def _engine_rows(model, prompts: PromptSet, entries, batch_size: int, progress: bool) -> tuple | None:
    """``(metrics by key, key)`` from the grid engine when every entry is one plain
    :class:`~mechtrunc.Truncate` (one keep or rank, exact SVD) of a matrix with a fast path;
    else None (the per-entry path runs)."""
    if not entries:
        return None
    fast = adapt(model).fast_matrices
    for ivs in entries:
        if len(ivs) != 1 or type(ivs[0]) is not Truncate:
            return None
        t = ivs[0]
        if t.matrix not in fast or t.svd != "exact" or isinstance(t.keep, tuple) or isinstance(t.rank, tuple):
            return None
    from mechtrunc.core.engine import run_grid

    key = lambda t: (t.layer, t.matrix, t.keep, t.rank, t.rule)
    return {key(r.truncation): r.metrics
            for r in run_grid(model, prompts, [e[0] for e in entries], batch_size=max(batch_size, 256),
                              progress=progress, baseline=False)}, key


def sweep(
    model, prompts: PromptSet, interventions, batch_size: int = 64, progress: bool = False,
    return_items: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, list[dict]]:
    """Evaluate each entry of ``interventions`` (an Intervention, or a list/tuple of them applied
    together; ``None`` or ``()`` is the unmodified model): one row each, with the entry's
    :meth:`~mechtrunc.core.interventions.Intervention.describe` columns (kind, layer, matrix, keep...)
    next to the metrics.  When every entry is a single plain :class:`~mechtrunc.Truncate` of a
    matrix the grid engine has a fast path for (``adapt(model).fast_matrices``), the rows come
    from :func:`mechtrunc.core.engine.run_grid` (the same numbers within 1e-5, much faster).  For
    resumable LASER grids on large models see :func:`mechtrunc.studies.truncation_study`.

    ``return_items``: also return each entry's per-item values (``{metric: tensor [item]}``, the
    values its row averages, from the same forward pass; one :func:`evaluate` per entry), e.g.
    for :func:`mechtrunc.analysis.selection.change_intervals`: ``(table, [items of entry 0, ...])``."""
    import pandas as pd

    entries = _entries(interventions)
    engine = None if return_items else _engine_rows(model, prompts, entries, batch_size, progress)
    per_item = []
    if engine is not None:
        table, key = engine
        rows = [pd.DataFrame([{"variant": e[0].label, **table[key(e[0])]}]) for e in entries]
    else:
        rows = []
        with progress_bar(len(entries), "sweep", "config", enabled=progress) as bar:
            for ivs in entries:
                if return_items:
                    row, items = evaluate(model, prompts, *ivs, batch_size=batch_size, items=True)
                    per_item.append(items)
                else:
                    row = evaluate(model, prompts, *ivs, batch_size=batch_size)
                rows.append(row)
                bar.update(1)
    out = []
    for ivs, row in zip(entries, rows):
        desc = ivs[0].describe() if len(ivs) == 1 else {"intervention": row["variant"].iloc[0]}
        out.append(row.assign(**{k: [v] for k, v in desc.items() if k != "intervention"}))
    table = pd.concat(out, ignore_index=True) if out else pd.DataFrame()
    return (table, per_item) if return_items else table
