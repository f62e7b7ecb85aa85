"""The LASER truncation grid on one model: every (layer, matrix, keep) evaluated on a prompt set.

- :class:`Grid`: what to sweep (layers, matrices, keeps, rank rule, SVD method) and its
  ``mode``, the evaluator (``"engine"``, ``"weight"``, ``"hook"``; docs/api.md, "Conventions").
- :func:`evaluate_grid`: **the** grid evaluation on one model (baseline + every configuration),
  as row dicts, on the grid engine (:mod:`mechtrunc.core.engine`) by default or one reference
  evaluation per configuration.  Both :func:`truncation_study` and every unit of
  :func:`mechtrunc.studies.checkpoint_study` call it, and nothing else evaluates a grid.
- :func:`truncation_study`: :func:`evaluate_grid` resumed from and stored into the study's
  directory (:class:`~mechtrunc.studies.truncation_files.TruncationDirectory`, the one module that
  knows its files), then the final table.
- :func:`best_configuration`, :func:`as_truncate`: the best non-baseline row, and the
  :class:`~mechtrunc.Truncate` that reproduces it.  :func:`heldout_configuration`: its
  held-out sibling (chosen on part of the prompts, reported on the rest with paired bootstrap
  intervals: :func:`mechtrunc.analysis.selection.heldout_selection`); given a study's per-item side table
  (:func:`read_items`) it chooses on the stored values, without evaluating the grid again.
- :class:`ItemStore`, :func:`read_items` (from :mod:`~mechtrunc.studies.truncation_files`): the
  per-item side table of a truncation study (the values each row's means are taken over, from the
  same forward passes).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import pandas as pd

from mechtrunc._checks import check_choice
from mechtrunc._choices import DEFAULT_RULE, GRID_KEEPS, GRID_MATRICES, GRID_MODES, RULES, SVD_METHODS
from mechtrunc._progress import progress_bar
from mechtrunc._scalars import as_int, as_real_list
from mechtrunc.core.adapters import GATED_MATRICES, MATRICES, adapt
from mechtrunc.core.interventions import Truncate
from mechtrunc.analysis.evaluation import evaluate
from mechtrunc.core.metrics import check_prompt_metric
from mechtrunc.core.prompts import PromptSet
from mechtrunc.core.results import (
    baseline_row, check_metric, configuration_row, is_metric, keep_key, tidy_truncation,
)
from mechtrunc.studies.store import ITEMS_FILE, RowStore, metric_values
from mechtrunc.studies.truncation_files import (
    ItemStore, TruncationDirectory, TruncationRows, read_items, row_key, study_settings,
)

__all__ = ["Grid", "evaluate_grid", "truncation_study", "best_configuration", "as_truncate",
           "heldout_configuration", "ItemStore", "read_items", "ITEMS_FILE"]



def _evaluate_items(model, prompts: PromptSet, ivs, batch_size: int, items: bool) -> tuple[dict, dict | None]:
    """``evaluate``'s metrics and (``items``) the per-item values they are the mean of, from one
    forward."""
    label = {} if ivs else {"label": "full"}
    if not items:
        return metric_values(evaluate(model, prompts, *ivs, batch_size=batch_size, **label)), None
    row, per_item = evaluate(model, prompts, *ivs, batch_size=batch_size, items=True, **label)
    return metric_values(row), per_item


def _resolve(adapter, grid: "Grid") -> tuple[list[int], list[str], list[float]]:
    """``grid``'s values against the model behind ``adapter``: the layers exist (all of them
    when ``grid.layers`` is None), every matrix exists at every layer; duplicates dropped.  The
    values themselves were checked when ``grid`` was built."""
    layers = list(range(adapter.n_layers)) if grid.layers is None else [adapter.check_layer(v) for v in grid.layers]
    for m in grid.matrices:
        for layer in layers:
            adapter.matrix(m, layer)  # raises for a missing MLP
    return _dedupe(layers), _dedupe(grid.matrices), _dedupe(grid.keeps, keep_key)


def _as_seq(values, name):
    from mechtrunc._scalars import is_scalar

    if is_scalar(values):
        return [values]
    if hasattr(values, "ndim") and hasattr(values, "tolist"):
        return list(values.reshape(-1)) if values.ndim <= 1 else _bad_shape(values, name)
    return list(values)


def _bad_shape(values, name):
    raise ValueError(f"{name} must be 1-dimensional, got shape {tuple(values.shape)}")


def _dedupe(xs, key=lambda x: x) -> list:
    seen, out = set(), []
    for x in xs:
        if key(x) not in seen:
            seen.add(key(x))
            out.append(x)
    return out


def _max_rank(adapter, matrix: str, layer: int) -> int:
    return adapter.matrix(matrix, layer).max_rank


@dataclass(frozen=True)
class Grid:
    """A truncation grid: every ``Truncate(matrix, layer, keep, rule, svd)`` for ``layer`` in
    ``layers`` (None: all), ``matrix`` in ``matrices``, ``keep`` in ``keeps``, evaluated by
    ``mode`` (the grid mode: ``"engine"``, or one evaluation per configuration with that
    intervention mode, ``"weight"`` or ``"hook"``; :attr:`truncate_mode` is the intervention mode
    that reproduces a row).  Values are checked against a model by :meth:`resolve`; the rule /
    svd / mode names are checked here."""

    layers: tuple[int, ...] | None = None
    matrices: tuple[str, ...] = GRID_MATRICES
    keeps: tuple[float, ...] = GRID_KEEPS
    rule: str = DEFAULT_RULE
    svd: str = SVD_METHODS[0]
    mode: str = GRID_MODES[0]

    def __post_init__(self):  # every value is checked here, once; evaluation code trusts a Grid
        if self.layers is not None:
            layers = tuple(as_int(v, "layer") for v in _as_seq(self.layers, "layers"))
            if not layers:
                raise ValueError("layers is empty: give at least one layer (or None for all)")
            object.__setattr__(self, "layers", layers)
        m = (self.matrices,) if isinstance(self.matrices, str) else tuple(self.matrices)
        if not m:
            raise ValueError(f"matrices is empty: give at least one of {', '.join(MATRICES)}")
        for name in m:
            check_choice("matrix", name, MATRICES + GATED_MATRICES, label="valid matrices",
                         extra=f" ({', '.join(GATED_MATRICES)} in a gated MLP)")
        object.__setattr__(self, "matrices", m)
        keeps = tuple(as_real_list(self.keeps, "keep"))
        if not keeps:
            raise ValueError("keeps is empty: give at least one fraction in [0, 1]")
        for k in keeps:
            if not 0.0 <= k <= 1.0:
                raise ValueError(f"keep must be in [0, 1], got {k!r}")
        object.__setattr__(self, "keeps", keeps)
        check_choice("mode", self.mode, GRID_MODES, label="valid modes")
        check_choice("rank rule", self.rule, RULES)
        check_choice("svd method", self.svd, SVD_METHODS, quote=True)
        if self.mode == "engine" and self.svd != "exact":
            raise ValueError(f"mode 'engine' computes exact decompositions; give svd='exact' (not {self.svd!r}) "
                             "or mode='weight' / 'hook'")

    @property
    def truncate_mode(self) -> str:
        """The :class:`~mechtrunc.Truncate` mode that reproduces one configuration (the engine's
        rows equal hook mode's, which equals weight mode's)."""
        return _truncate_mode(self.mode)

    def resolve(self, model) -> tuple[list[int], list[str], list[float]]:
        """The grid's (layers, matrices, keeps) checked against ``model`` (ValueError naming
        a bad value and the valid range), duplicates dropped."""
        return _resolve(adapt(model), self)

    def to_dict(self) -> dict:
        return {"layers": None if self.layers is None else list(self.layers), "matrices": list(self.matrices),
                "keeps": list(self.keeps), "rule": self.rule, "svd": self.svd, "mode": self.mode}


def evaluate_grid(
    model,
    prompts: PromptSet,
    grid: Grid,
    batch_size: int = 32,
    store: RowStore | TruncationRows | None = None,
    progress: bool = False,
    svd_cache: str | os.PathLike | None = None,
    items: ItemStore | None = None,
) -> list[dict]:
    """Evaluate the unmodified model and every configuration of ``grid`` on ``prompts``.

    THE grid evaluation (one model): every study funnels through this call.  Returns row dicts,
    the baseline first, then one per (layer, matrix, keep) in grid order, with the columns of
    :func:`truncation_study`.  ``store`` (optional: a :class:`~mechtrunc.studies.store.RowStore`,
    or the :class:`~mechtrunc.studies.truncation_files.TruncationRows` of a study directory)
    supplies rows already computed and receives each new one as soon as it is finished; it is
    the only storage this function touches.  Identity configurations (kept rank = maximum rank)
    reuse the baseline.

    ``grid.mode == "engine"`` computes the rows with :func:`mechtrunc.core.engine.run_grid`
    (the same numbers as one ``evaluate`` per configuration, within 1e-5 in float32; rows arrive
    a layer at a time, ``seconds`` is the time since the previous row; forwards of up to
    ``max(batch_size, 256)`` (prompt, configuration) rows); ``svd_cache`` is a directory of its
    decompositions keyed by the weights' hash, so a rerun or a second grid on the same
    checkpoint computes none.

    ``items`` (an :class:`ItemStore`): also keep every computed row's per-item values (from the
    same forward passes: ``run_grid(..., items=True)`` or the logits ``evaluate`` averages); a
    stored row whose items are missing there is recomputed.
    """
    adapter = adapt(model)
    layers, matrices, keeps = grid.resolve(model)
    rule, svd = grid.rule, grid.svd
    sink = store if isinstance(store, TruncationRows) else TruncationRows(store, items)
    common = {"rule": rule, "svd": svd, "mode": grid.mode}

    configs = []
    for layer in layers:
        for m in matrices:
            max_rank = _max_rank(adapter, m, layer)
            for keep in keeps:
                iv = Truncate(m, layer=layer, keep=keep, rule=rule, svd=svd, mode=grid.truncate_mode)
                configs.append((layer, m, keep, iv, iv.ranks(adapter, max_rank)[0], max_rank))
    seq = prompts.rows.cpu().numpy() if sink.keeps_items else None
    todo = [g for g in configs if not sink.done((g[0], g[1], keep_key(g[2]))) and g[4] != g[5]]
    need_base = not sink.done(("baseline",))
    bar = progress_bar(len(todo) + int(need_base), "truncation", "eval", enabled=progress)

    if grid.mode == "engine" and (need_base or todo):  # rows arrive a layer at a time; stored as they come
        from mechtrunc.core.engine import run_grid

        labels = {(g[0], g[1], keep_key(g[2])): (g[2], g[3].label) for g in todo}
        t0 = time.perf_counter()
        for r in run_grid(model, prompts, [g[3] for g in todo], batch_size=max(batch_size, 256),
                          svd_cache=svd_cache, baseline=need_base, items=sink.keeps_items):
            seconds, t0 = time.perf_counter() - t0, time.perf_counter()
            if r.baseline:
                row = baseline_row(r.metrics, **common, seconds=seconds, path=r.path)
            else:
                keep, label = labels[(r.layer, r.matrix, keep_key(r.keep))]
                row = configuration_row(r.layer, r.matrix, keep, r.rank, r.max_rank, r.metrics, **common,
                                        intervention=label, seconds=seconds, path=r.path)
            sink.add(row, r.items, seq)
            bar.update(1)
        need_base = False

    if need_base:
        t0 = time.perf_counter()
        metrics, per_item = _evaluate_items(model, prompts, (), batch_size, sink.keeps_items)
        sink.add(baseline_row(metrics, **common, seconds=time.perf_counter() - t0), per_item, seq)
        bar.update(1)
    base = sink.get(("baseline",))
    base_metrics = {k: v for k, v in base.items() if is_metric(k)}

    rows = [base]
    for layer, m, keep, iv, rank, max_rank in configs:
        key = (layer, m, keep_key(keep))
        row = sink.get(key) if (rank == max_rank or sink.done(key)) else None
        if row is None:
            per_item = None
            if rank == max_rank:  # the identity: reuse the baseline evaluation
                metrics, seconds = base_metrics, 0.0
            else:
                bar.set_postfix_str(iv.label, refresh=False)
                t0 = time.perf_counter()
                metrics, per_item = _evaluate_items(model, prompts, (iv,), batch_size, sink.keeps_items)
                seconds = time.perf_counter() - t0
                bar.update(1)
            row = configuration_row(layer, m, keep, rank, max_rank, metrics, **common, intervention=iv.label,
                                    seconds=seconds)
            sink.add(row, per_item, seq)
        rows.append(row)
    bar.close()
    return rows


def truncation_study(
    model,
    prompts: PromptSet,
    layers: Iterable[int] | None = None,
    matrices: Sequence[str] | str = GRID_MATRICES,
    keeps: Sequence[float] | float = GRID_KEEPS,
    rule: str = DEFAULT_RULE,
    svd: str = "exact",
    batch_size: int = 32,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    mode: str = "engine",
    info: dict | None = None,
    svd_cache: str | os.PathLike | None = None,
    return_items: bool = False,
    metric: str | None = None,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluate every ``Truncate(matrix, layer, keep)`` of the grid on ``prompts``.

    Returns a tidy DataFrame, one row per (layer, matrix, keep) in the requested order, after
    one ``baseline`` row (the unmodified model; ``layer``/``keep``/``rank`` empty, ``matrix``
    ``"none"``).  Columns: ``baseline, layer, matrix, keep, rank, max_rank, identity, rule,
    svd, mode, intervention`` then every metric of :func:`mechtrunc.core.metrics.metrics_from_logits`
    (``n_items, accuracy, p_answer, loss, p_<comp>, acc_vs_<comp>, logit_diff_<comp>``) and
    ``seconds``.  A configuration that keeps the full rank (``keep=1``) is the identity: its row
    reuses the baseline evaluation (``identity`` true) instead of recomputing it.

    Args:
        layers: layers to truncate (default all); out of range -> ValueError.
        matrices: names from :data:`mechtrunc.MATRICES` (``attn.OV`` included); unknown ->
            ValueError.
        keeps: fractions of the maximum rank in [0, 1] (rounded by ``rule``, see
            :func:`mechtrunc.rank_for_keep`); 0 removes the matrix.
        rule, svd: passed to :class:`mechtrunc.Truncate`.
        mode: ``"engine"`` (default): :mod:`mechtrunc.core.engine` (see :func:`evaluate_grid`),
            the same table as one reference evaluation per configuration, faster; ``"weight"``
            rewrites the weight as LASER does, ``"hook"`` projects the matrix's output (one SVD per
            matrix across keeps), one evaluation per configuration each.
        out: a directory (its files: :mod:`~mechtrunc.studies.truncation_files`); finished rows
            are appended to ``out/rows.jsonl`` and a rerun with the same settings skips them; at
            the end ``out/truncation.csv`` and ``out/truncation.parquet`` hold the returned table.
        progress: show progress (a bar on a terminal, a few lines elsewhere).
        info: extra entries for ``study.json``'s ``info`` (not compared on resume), e.g. the
            ``task``, ``n`` and ``seed`` the prompts were built from, so ``mechtrunc report`` can
            rebuild them.
        svd_cache: ``mode="engine"``: the directory of cached decompositions (default
            ``out/svd_cache`` when ``out`` is given).
        return_items: also return the per-item side table: ``(table, items)``.
        metric: the metric the table will be judged by (:func:`~mechtrunc.studies.summarise_study`,
            :func:`heldout_configuration`), if known: checked against the prompts' competitors
            (:func:`mechtrunc.core.metrics.check_prompt_metric`) before anything runs.

    Per-item values: the same forward passes also give each row's per-item metric values (the
    values its means are taken over; no extra forward pass).  They are kept as one shard per
    finished configuration in ``out/item_shards/`` (written before the row, so a resumed study
    recomputes a row whose items are missing and never holds an item twice; see
    :class:`ItemStore`), and at the end ``out/items.parquet`` holds the side table of the
    returned table (:meth:`ItemStore.table`: ``config`` = row index, one row per
    (configuration, item); read it with :func:`read_items`).  It feeds paired bootstrap
    intervals of a change (:mod:`mechtrunc.analysis.selection`) and :func:`heldout_configuration`
    without a second pass.
    """
    grid = Grid(layers=layers, matrices=matrices, keeps=keeps, rule=rule, svd=svd, mode=mode)
    grid.resolve(model)  # every bad value raises before anything is written
    if len(prompts) == 0:
        raise ValueError("the prompt set has no items to score")
    if metric is not None:
        check_prompt_metric(prompts, metric)
    # storage: the directory's settings checked, its finished rows read
    directory = TruncationDirectory(out)
    finished = directory.open(study_settings(model, prompts, grid, info))
    if svd_cache is None and directory.out is not None and mode == "engine":
        svd_cache = os.fspath(directory.svd_cache)
    # evaluation: every row not finished yet, each handed to the directory as it is finished
    rows = evaluate_grid(model, prompts, grid, batch_size=batch_size, store=finished, progress=progress,
                         svd_cache=svd_cache)
    df = tidy_truncation(pd.DataFrame(rows))
    items = finished.items.table(df)
    # storage: the final tables
    directory.write_results(df, items)
    return (df, items) if return_items else df


def best_configuration(df: pd.DataFrame, metric: str = "logit_diff_the", higher_is_better: bool = True) -> dict:
    """The best non-baseline row of a :func:`truncation_study` table by ``metric``, chosen and
    valued on the same prompts (in-sample: biased upward over a large grid; see
    :func:`heldout_configuration` for a choice reported on held-out prompts).

    Returns ``{"layer", "matrix", "keep", "rank", "metric", "value", "baseline_value",
    "improvement", "rule", "svd", "mode"}`` (``improvement`` > 0 means better than the
    unmodified model; ties go to the first row in table order)."""
    check_metric(df, metric)
    is_base = df["baseline"].astype(bool) if "baseline" in df.columns else pd.Series(False, index=df.index)
    cand = df[~is_base & df[metric].notna()]
    if cand.empty:
        raise ValueError(f"the table has no non-baseline rows with a value for {metric!r}")
    idx = cand[metric].idxmax() if higher_is_better else cand[metric].idxmin()
    row = cand.loc[idx]
    base = df.loc[is_base, metric]
    base_value = float(base.iloc[0]) if len(base) else None
    value = float(row[metric])
    return {
        "layer": int(row["layer"]), "matrix": str(row["matrix"]), "keep": float(row["keep"]),
        "rank": int(row["rank"]) if "rank" in row and not pd.isna(row["rank"]) else None,
        "metric": metric, "value": value, "baseline_value": base_value,
        "improvement": None if base_value is None else (value - base_value) * (1 if higher_is_better else -1),
        "rule": str(row.get("rule", "round")), "svd": str(row.get("svd", "exact")), "mode": str(row.get("mode", "weight")),
    }


def as_truncate(config: dict) -> Truncate:
    """The :class:`~mechtrunc.Truncate` of a configuration dict (e.g. from
    :func:`best_configuration`)."""
    missing = [k for k in ("layer", "matrix", "keep") if k not in config]
    if missing:
        raise ValueError(f"configuration {config!r} lacks {', '.join(missing)}")
    return Truncate(config["matrix"], layer=int(config["layer"]), keep=float(config["keep"]),
                    rule=config.get("rule", "round"), svd=config.get("svd", "exact"),
                    mode=_truncate_mode(config.get("mode", "weight")))


def _truncate_mode(grid_mode: str) -> str:
    """The intervention mode (``Truncate(mode=...)``) that reproduces a row of a grid evaluated
    in grid mode ``grid_mode`` (docs/api.md, "Conventions")."""
    return "hook" if grid_mode == "engine" else grid_mode



def heldout_configuration(model, prompts: PromptSet, grid: Grid | None = None, metric: str = "p_answer",
                          select: float = 0.5, seed: int = 0, collateral=None, budget: float | None = None,
                          n_boot: int = 1000, items: pd.DataFrame | None = None,
                          out: str | os.PathLike | None = None, **kwargs) -> dict:
    """:func:`best_configuration`'s held-out sibling: the grid's configurations (``grid``,
    default ``Grid()``, rule and layers checked against the model; exact SVD) chosen on the
    select part of ``prompts`` and reported on the eval part
    (:func:`mechtrunc.analysis.selection.heldout_selection`; ``kwargs`` go to it).  Returns
    ``{"layer", "matrix", "keep", "rank", "metric", "baseline" (nothing beat the full model),
    "select": {...}, "eval": {...}, "n_boot", "level", "groups", "table"}`` where each part holds
    ``full, truncated, change, ci_low, ci_high, n_items, collateral_change`` and ``table`` is the
    DataFrame.

    ``items``: a per-item side table of ``prompts`` (:func:`read_items` of a
    :func:`truncation_study` run with this grid, or its ``return_items``): the choice is made on
    the stored values, with no forward pass on ``prompts`` (a collateral prompt set still takes
    one pass on its own prompts).  The same result as without it.

    ``out``: the study's directory: the table is also written there (``heldout.csv``,
    :mod:`~mechtrunc.studies.truncation_files`) and ``"path"`` names it."""
    from mechtrunc.analysis.selection import heldout_selection

    check_prompt_metric(prompts, metric)
    grid = Grid() if grid is None else grid
    if grid.svd != "exact":
        raise ValueError(f"held-out selection runs on the grid engine: give svd='exact' (not {grid.svd!r})")
    layers, matrices, keeps = grid.resolve(model)
    truncs = [Truncate(m, layer=l, keep=k, rule=grid.rule) for l in layers for m in matrices for k in keeps]
    if items is None:
        df = heldout_selection(model, prompts, truncs, metric=metric, select=select, seed=seed,
                               collateral=collateral, budget=budget, n_boot=n_boot, **kwargs)
    else:
        df = _heldout_from_items(model, prompts, truncs, items, metric=metric, select=select, seed=seed,
                                 collateral=collateral, budget=budget, n_boot=n_boot, **kwargs)
    path = TruncationDirectory(out).write_heldout(df)  # storage: the choice's table
    rows = df.set_index("part")
    first = rows.iloc[0]
    base = bool(first["baseline"])
    part = lambda r: {k: (None if pd.isna(r[k]) else float(r[k])) for k in
                      ("full", "truncated", "change", "ci_low", "ci_high", "collateral_full", "collateral_truncated",
                       "collateral_change", "budget")} | {"n_items": int(r["n_items"])}
    return {"layer": None if base else int(first["layer"]), "matrix": str(first["matrix"]),
            "keep": None if base else float(first["keep"]), "rank": None if base else int(first["rank"]),
            "rule": grid.rule, "svd": "exact", "mode": "engine", "metric": metric, "baseline": base,
            "select": part(rows.loc["select"]), "eval": part(rows.loc["eval"]), "n_boot": int(df.attrs["n_boot"]),
            "level": float(df.attrs["level"]), "groups": df.attrs["groups"], "table": df,
            **({} if path is None else {"path": path})}


def _heldout_from_items(model, prompts: PromptSet, truncs: list, items: pd.DataFrame, metric: str, select: float,
                        seed: int, collateral, budget, n_boot: int, *, groups=None, level: float = 0.95,
                        higher_is_better: bool | None = None, batch_size: int = 256, svd_cache=None,
                        progress: bool = False) -> pd.DataFrame:
    """:func:`mechtrunc.analysis.selection.heldout_selection` on a stored side table: the grid's
    configurations (and the baseline) picked out of ``items``, no forward pass on ``prompts``."""
    from mechtrunc.analysis.selection import heldout_choice, item_table, sequence_groups, split_sequences

    if not isinstance(prompts, PromptSet):
        raise TypeError(f"prompts must be a PromptSet, got {type(prompts).__name__}")
    n = len(prompts)
    seq = prompts.rows.cpu().numpy()
    sel_seq, _ = split_sequences(prompts, select, seed, groups)
    if budget is not None and collateral is None:
        raise ValueError("a collateral budget needs a collateral (a PromptSet or a callable) to measure it on")
    configs = items.drop_duplicates("config").set_index("config")
    by_key = {row_key(r): int(c) for c, r in configs.iterrows()}
    want = [("baseline",)] + [(t.layer, t.matrix, keep_key(t.keep)) for t in truncs]
    missing = [k for k in want if k not in by_key]
    if missing:
        raise ValueError(f"the item table lacks {len(missing)} configuration(s) of the grid, e.g. {missing[0]}")
    keep_ids = sorted({by_key[k] for k in want})
    sub = items[items["config"].isin(keep_ids)]
    for cid in keep_ids:
        rows = sub[sub["config"] == cid]
        if len(rows) != n or not (rows.sort_values("item")["sequence"].to_numpy() == seq).all():
            raise ValueError("the item table does not belong to these prompts (its items or sequences differ)")
    coll = None
    if collateral is not None:
        trunc_of = {(t.layer, t.matrix, keep_key(t.keep)): t for t in truncs}
        if isinstance(collateral, PromptSet):
            c_items = item_table(model, collateral, truncs, metrics=["loss"], batch_size=batch_size,
                                 svd_cache=svd_cache)
            c_conf = c_items.drop_duplicates("config").set_index("config")
            means = c_items.groupby("config")["loss"].mean()
            by_c = {row_key(r): float(means[c]) for c, r in c_conf.iterrows()}
            coll = {by_key[k]: by_c[k] for k in want}
        elif callable(collateral):
            coll = {by_key[k]: float(collateral(None if k == ("baseline",) else trunc_of[k])) for k in want}
        else:
            raise TypeError(f"collateral must be a PromptSet or a callable, got {type(collateral).__name__}")
    out = heldout_choice(sub, metric, sel_seq.numpy(), seed=seed, higher_is_better=higher_is_better,
                         collateral=coll, budget=budget, n_boot=n_boot, level=level)
    out.attrs["groups"] = sequence_groups(prompts, groups)[1]
    out.attrs["select"] = float(select)
    return out


#: names of an earlier release -> the one name each now has (importable from here too)
_DEPRECATED = {"DEFAULT_KEEPS": "GRID_KEEPS", "DEFAULT_MATRICES": "GRID_MATRICES", "MODES": "GRID_MODES"}


def __getattr__(name: str):
    if name in _DEPRECATED:
        import warnings

        warnings.warn(f"mechtrunc.studies.grid.{name} is deprecated; use {_DEPRECATED[name]} (same value)",
                      DeprecationWarning, stacklevel=2)
        return globals()[_DEPRECATED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
