"""The summary of a truncation study: its heatmap, its best configuration and that
configuration's attribution change (:func:`summarise_study`).  The report of a study is
:func:`mechtrunc.write_report`, which reads these files back."""

from __future__ import annotations

import os
import warnings

import pandas as pd

from mechtrunc.analysis.attribution import attribute_change
from mechtrunc.core.metrics import check_prompt_metric
from mechtrunc.core.prompts import PromptSet
from mechtrunc.core.results import find_row, is_metric
from mechtrunc.studies.grid import as_truncate, best_configuration
from mechtrunc.studies.truncation_files import TruncationDirectory, TruncationSummary

__all__ = ["summarise_study"]


def summarise_study(
    model,
    prompts: PromptSet,
    df: pd.DataFrame,
    metric: str = "logit_diff_the",
    out_dir: str | os.PathLike = "report",
    higher_is_better: bool = True,
    batch_size: int = 32,
    items: pd.DataFrame | None = None,
    n_boot: int | None = None,
) -> TruncationSummary:
    """The summary of a :func:`truncation_study` table: the heatmap of ``metric``, the best
    configuration with the full and truncated metrics, its :func:`mechtrunc.attribute_change`
    table per component, i.e. per layer and head, MLP, embedding and bias, and the same summed
    per layer and kind.  Written into ``out_dir`` (``heatmap_<metric>.png``, ``best.json``,
    ``attribution_change.csv``, ``attribution_change_by_layer.csv``: see
    :mod:`~mechtrunc.studies.truncation_files`) and returned as a
    :class:`~mechtrunc.studies.truncation_files.TruncationSummary` (``best``: the content of
    ``best.json``; ``attribution``, ``attribution_by_layer``; ``paths`` by name).

    ``items`` (the study's per-item side table, :func:`mechtrunc.studies.read_items`): ``best``
    also holds ``intervals``: per metric, the best configuration's ``change`` against the full
    model and its paired bootstrap interval ``ci_low, ci_high``
    (:func:`mechtrunc.analysis.selection.table_change_intervals`), with ``n_boot``, ``level``, ``seed``,
    ``n_items`` (in-sample: see held-out selection for an unbiased estimate)."""
    check_prompt_metric(prompts, metric)
    directory = TruncationDirectory(out_dir)
    directory.out.mkdir(parents=True, exist_ok=True)
    heatmap = _heatmap(df, metric, directory.heatmap_path(metric), higher_is_better=higher_is_better)
    best = best_configuration(df, metric, higher_is_better)
    iv = as_truncate(best)
    is_base = df["baseline"].astype(bool)
    pick = lambda r: {k: (None if pd.isna(v) else float(v)) for k, v in r.items() if is_metric(k)}
    base_row = df[is_base].iloc[0].to_dict() if is_base.any() else {}
    match = find_row(df, best)
    summary = {"best": best, "intervention": iv.label, "full": pick(base_row),
               "truncated": pick(match.to_dict()) if match is not None else None}
    if items is not None and match is not None:
        from mechtrunc.analysis.selection import DEFAULT_N_BOOT, table_change_intervals

        i = list(df.index).index(match.name)
        per, attrs = {}, None
        for m in [c for c in df.columns if is_metric(c) and c in items.columns]:
            t = table_change_intervals(df, items, m, DEFAULT_N_BOOT if n_boot is None else n_boot)
            if t is not None:
                per[m] = {k: float(t[k].iloc[i]) for k in ("change", "ci_low", "ci_high")}
                attrs = t.attrs
        if attrs is not None:
            summary["intervals"] = {"metrics": per, **attrs}
    change = attribute_change(model, prompts, iv, batch_size=batch_size)
    by_layer = (change[change["kind"] != "total"]
                .groupby(["competitor", "kind", "layer"], dropna=False)[["clean", "intervened", "change"]]
                .sum().reset_index())
    # storage: everything above, in one place
    paths = directory.write_summary(summary, change, by_layer, heatmap)
    return TruncationSummary(summary, change, by_layer, paths)


def study_report(*args, **kwargs) -> TruncationSummary:
    """Deprecated name of :func:`summarise_study` (it writes a study's summary files and returns
    them; it is not a report); it goes in the next release."""
    warnings.warn("mechtrunc.studies.study_report is now summarise_study (same arguments, same result); "
                  "the old name goes in the next release", DeprecationWarning, stacklevel=2)
    return summarise_study(*args, **kwargs)


def _heatmap(*args, **kwargs):
    from mechtrunc.analysis.viz import truncation_heatmap

    return truncation_heatmap(*args, **kwargs)
