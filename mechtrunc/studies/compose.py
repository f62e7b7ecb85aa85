"""Greedy composition search: several LASER truncations applied together.

LASER's composed reductions truncate several (layer, matrix) pairs at once, and the effects of
two truncations interact, so the best single truncations of a one-at-a-time grid are not the
best pair.  :func:`compose_search` builds a composition greedily:

- step 1 runs the grid (:func:`mechtrunc.core.engine.run_grid`) on the *selection* prompts and takes
  its best configuration (the same choice as :func:`~mechtrunc.studies.grid.best_configuration`
  of a :func:`~mechtrunc.studies.grid.truncation_study` table with the same metric);
- step k applies the truncations already chosen (weight mode, reversibly, with
  :func:`mechtrunc.intervene`; the engine reads the model's current weights) and runs one grid
  over the (layer, matrix) pairs not truncated yet, and takes its best configuration;
- with the optional collateral metric (e.g. the loss on reference text) and its ``budget``, a
  step takes the best candidate *within* the budget: the candidates that improve the selection
  metric are tried best first, and each one whose composition would raise the collateral more
  than ``budget`` above the full model's value is refused (and shown as a refused row), until
  one fits (:func:`mechtrunc.analysis.selection.best_within_budget`, the rule of every held-out choice,
  so a step picks what :func:`mechtrunc.analysis.selection.choose_configuration` would pick on the step's
  grid with every candidate's collateral known);
- the search stops when no candidate (within the budget) improves the selection metric by more
  than ``min_gain``, after ``max_steps`` accepted steps, or when every pair is truncated.

Each accepted composition is reported on separate *evaluation* prompts (``mt.evaluate`` with the
composed truncations), never the ones that chose it.  :func:`as_interventions` returns the
composed :class:`~mechtrunc.Truncate` values of a result table.  The model's weights are restored
bit for bit when the search ends (also when it raises).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence

import pandas as pd

from mechtrunc._scalars import as_int, as_real
from mechtrunc.core.adapters import adapt
from mechtrunc.core.decomposition import SVDCache
from mechtrunc.core.engine import run_grid
from mechtrunc.analysis.evaluation import evaluate
from mechtrunc.core.interventions import Compose, Truncate, intervene
from mechtrunc.core.prompts import PromptSet
from mechtrunc.core.results import LOWER_IS_BETTER, N_ITEMS, keep_key
from mechtrunc.analysis.selection import best_within_budget
from mechtrunc.studies.grid import Grid

__all__ = ["compose_search", "as_interventions", "COMPOSE_COLUMNS", "COMPOSE_KEEPS"]

#: default keeps of a composition search (keep=1, the identity, is never worth a step)
COMPOSE_KEEPS = (0.5, 0.2, 0.1, 0.05, 0.01)

#: the columns of a :func:`compose_search` table, in order
COMPOSE_COLUMNS = (
    "step", "accepted", "stop", "layer", "matrix", "keep", "rank", "max_rank", "intervention", "composed",
    "metric", "select_value", "select_gain", "eval_value", "collateral", "collateral_increase",
    "candidates", "rows_evaluated", "decompositions", "seconds",
)


def _param(adapter, layer: int, matrix: str) -> tuple[int, str]:
    """The stored matrix a truncation of ``matrix`` rewrites (``attn.OV`` rewrites ``attn.W_O``)."""
    return layer, adapter.matrix(matrix, layer).edits


def _collateral_fn(collateral, batch_size: int) -> Callable | None:
    if collateral is None:
        return None
    if isinstance(collateral, PromptSet):
        if len(collateral) == 0:
            raise ValueError("the collateral prompt set has no items to score")
        return lambda model: float(evaluate(model, collateral, batch_size=batch_size)["loss"].iloc[0])
    if callable(collateral):
        return lambda model: float(collateral(model))
    raise TypeError(f"collateral must be None, a callable model -> float or a PromptSet (its loss is used), "
                    f"got {type(collateral).__name__}")


def compose_search(
    model,
    select_prompts: PromptSet,
    eval_prompts: PromptSet,
    layers: Iterable[int] | None = None,
    matrices: Sequence[str] | str = ("mlp.W_in", "mlp.W_out"),
    keeps: Sequence[float] | float = COMPOSE_KEEPS,
    metric: str = "p_answer",
    max_steps: int = 3,
    min_gain: float = 0.0,
    collateral=None,
    budget: float | None = None,
    rule: str = "round",
    batch_size: int = 256,
    svd_cache: str | os.PathLike | None = None,
    tol: float = 1e-5,
) -> pd.DataFrame:
    """Greedy search for a composition of truncations (see the module docstring).

    Args:
        select_prompts: the prompts that choose each step (the grid runs on them).
        eval_prompts: the prompts each accepted composition is reported on.
        layers, matrices, keeps, rule: the grid of each step, as in
            :func:`~mechtrunc.studies.grid.truncation_study` (exact SVD); a (layer, matrix) pair
            already truncated is left out of later steps (``attn.OV`` and ``attn.W_O`` of one
            layer count as one matrix: both rewrite ``W_O``).
        metric: the metric to improve (``loss``: lower is better; any other: higher).
        max_steps: at most this many truncations (>= 1).
        min_gain: a step must improve the selection metric by more than this (>= 0).
        tol: and by more than this numerical tolerance (the engine's rows match ``mt.evaluate``
            to about 1e-5 in float32), so a step that changes nothing (the ``W_out`` of an MLP
            whose ``W_in`` was removed: a gain of 2e-6 on the toy model) is not taken.
        collateral: None, a callable ``model -> float`` (lower is better, e.g. the loss on
            reference text; called with the composition applied) or a PromptSet whose ``loss``
            metric is used.
        budget: with ``collateral``: refuse every candidate whose collateral value would exceed
            the full model's by more than ``budget``, and take the best candidate within it.
        batch_size: rows per forward pass of the engine and of ``evaluate``.
        svd_cache: a directory of decompositions for the engine (see
            :func:`mechtrunc.core.engine.run_grid`); one cache object is shared by all steps either
            way, and ``decompositions`` counts those computed per step.

    Returns:
        A DataFrame with :data:`COMPOSE_COLUMNS`: a ``step`` 0 row for the full model, then one
        row per step: the chosen truncation (``layer, matrix, keep, rank, max_rank``, its
        ``intervention`` label), the ``composed`` label of every truncation accepted so far,
        ``select_value`` (the grid's value of the composition on the selection prompts) and
        ``select_gain`` over the previous step, ``eval_value`` (``mt.evaluate`` of the
        composition on ``eval_prompts``), ``collateral`` and its increase over the full model,
        and the step's cost: ``candidates`` (configurations in its grid, identities excluded),
        ``rows_evaluated`` ((prompt, configuration) rows the engine scored, baseline included,
        plus the evaluation prompts), ``decompositions`` (SVDs computed) and ``seconds``.  A row
        with ``accepted`` false is a candidate refused by the budget (before its step's accepted
        row, better than it; ``stop`` says "collateral budget: +increase > budget"; its
        ``eval_value`` is NaN and the step's cost columns are on the step's last row).  ``stop``
        also says why the search ended, on the last row.  ``df.attrs["interventions"]`` holds the accepted
        composition (also :func:`as_interventions`).
    """
    adapter = adapt(model)  # a model mechtrunc cannot adapt raises here, before any work
    if not isinstance(select_prompts, PromptSet) or not isinstance(eval_prompts, PromptSet):
        bad = select_prompts if not isinstance(select_prompts, PromptSet) else eval_prompts
        raise TypeError(f"select_prompts and eval_prompts must be PromptSets, got {type(bad).__name__}")
    for name, ps in (("select_prompts", select_prompts), ("eval_prompts", eval_prompts)):
        if len(ps) == 0:
            raise ValueError(f"{name} has no items to score")
    if not isinstance(keeps, str) and hasattr(keeps, "__len__") and len(keeps) == 0:
        raise ValueError(f"keeps is empty ({keeps!r}): give at least one fraction in [0, 1]")
    grid = Grid(layers=layers, matrices=matrices, keeps=keeps, rule=rule, svd="exact", mode="engine")
    layers_, matrices_, keeps_ = grid.resolve(model)
    max_steps = as_int(max_steps, "max_steps")
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps!r}")
    min_gain = as_real(min_gain, "min_gain")
    if not (min_gain >= 0.0 and math.isfinite(min_gain)):
        raise ValueError(f"min_gain must be a finite number >= 0, got {min_gain!r}")
    tol = as_real(tol, "tol")
    if not (tol >= 0.0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    threshold = max(min_gain, tol)
    if not isinstance(metric, str) or metric == N_ITEMS:
        raise ValueError(f"metric must be the name of a metric column, got {metric!r}")
    if budget is not None:
        budget = as_real(budget, "budget")
        if collateral is None:
            raise ValueError(f"budget={budget!r} needs a collateral metric (collateral=None)")
        if not (budget >= 0.0 and math.isfinite(budget)):
            raise ValueError(f"budget must be a finite number >= 0, got {budget!r}")
    batch_size = as_int(batch_size, "batch_size")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    collateral_of = _collateral_fn(collateral, batch_size)
    higher = metric not in LOWER_IS_BETTER
    sign = 1.0 if higher else -1.0
    cache = SVDCache(svd_cache)

    def eval_value(ivs) -> float:
        row = evaluate(model, eval_prompts, *ivs, batch_size=batch_size)
        if metric not in row.columns:
            valid = [c for c in row.columns if c not in ("variant", N_ITEMS)]
            raise ValueError(f"unknown metric {metric!r}; metrics of these prompts: {', '.join(valid)}")
        return float(row[metric].iloc[0])

    def collateral_value(ivs) -> float:
        if collateral_of is None:
            return float("nan")
        with intervene(model, *ivs):
            return collateral_of(model)

    rows: list[dict] = []
    chosen: list[Truncate] = []
    t0 = time.perf_counter()
    base_select = None  # filled by the first grid's baseline row
    base_eval = eval_value(())
    base_coll = collateral_value(())
    base_seconds, t0, n0 = time.perf_counter() - t0, time.perf_counter(), cache.n_computed
    current = None
    stop = ""
    step = 0
    while True:
        step += 1
        done = {_param(adapter, t.layer, t.matrix) for t in chosen}
        pairs = [(l, m) for l in layers_ for m in matrices_ if _param(adapter, l, m) not in done]
        if not pairs:
            stop = "every matrix truncated"
            break
        cands = [Truncate(m, layer=l, keep=k, rule=rule, svd="exact", mode="weight")
                 for l, m in pairs for k in keeps_]
        with intervene(model, *chosen):
            results = list(run_grid(model, select_prompts, cands, batch_size=batch_size, svd_cache=cache))
        base = results[0].metrics
        if metric not in base or metric == N_ITEMS:
            valid = [k for k in base if k != N_ITEMS]
            raise ValueError(f"unknown metric {metric!r}; metrics of these prompts: {', '.join(valid)}")
        if base_select is None:
            base_select = current = float(base[metric])
            rows.append(_row(0, True, "", None, "full", metric, current, float("nan"), base_eval, base_coll,
                             0.0 if collateral_of else float("nan"), 0, len(eval_prompts), 0, base_seconds))
        by_key = {(r.layer, r.matrix, keep_key(r.keep)): r for r in results[1:]}
        n_cands = sum(not r.identity for r in results[1:])
        rows_eval = len(select_prompts) * (n_cands + 1)
        picks = [by_key[(l, m, keep_key(k))] for l, m in pairs for k in keeps_]  # table order
        values = [float(r.metrics[metric]) for r in picks]
        colls: dict[int, float] = {}

        def collateral_of_candidate(i: int) -> float:
            colls[i] = collateral_value([*chosen, picks[i].truncation])
            return colls[i]

        # the best candidate within the budget: the rule of every held-out choice
        # (mechtrunc.analysis.selection.best_within_budget); better candidates over it are refused rows
        i, refused = best_within_budget([sign * v for v in values],
                                        collateral_of_candidate if budget is not None else None, budget,
                                        base_score=sign * current, base_collateral=base_coll, min_gain=threshold)
        for j, inc in refused:
            rows.append(_row(step, False, f"collateral budget: +{inc:.4g} > {budget:g}", picks[j],
                             Compose((*chosen, picks[j].truncation)).label, metric, values[j],
                             (values[j] - current) * sign, float("nan"), colls[j], inc, n_cands, 0, 0, 0.0))
        if i is None:
            stop = (f"no gain above {threshold:g}" if not refused else
                    f"no gain above {threshold:g} within the collateral budget {budget:g}")
            if refused:  # the step's cost goes on its last row
                rows[-1].update(rows_evaluated=rows_eval, decompositions=cache.n_computed - n0,
                                seconds=time.perf_counter() - t0)
            break
        pick = picks[i]
        gain = (values[i] - current) * sign
        chosen = [*chosen, pick.truncation]
        coll = colls[i] if i in colls else collateral_value(chosen)
        coll_inc = coll - base_coll
        current = values[i]
        ev = eval_value(chosen)
        rows.append(_row(step, True, "", pick, Compose(tuple(chosen)).label, metric, current, gain, ev,
                         coll, coll_inc, n_cands, rows_eval + len(eval_prompts), cache.n_computed - n0,
                         time.perf_counter() - t0))
        t0, n0 = time.perf_counter(), cache.n_computed
        if len(chosen) >= max_steps:
            stop = f"max_steps={max_steps}"
            break
    if stop:
        rows[-1]["stop"] = stop if rows[-1]["stop"] == "" else f"{rows[-1]['stop']}; {stop}"
    df = pd.DataFrame(rows, columns=list(COMPOSE_COLUMNS))
    df.attrs["interventions"] = tuple(chosen)
    df.attrs["rule"] = rule
    return df


def _row(step, accepted, stop, pick, composed, metric, select_value, gain, eval_value, coll, coll_inc,
         candidates, rows_evaluated, decompositions, seconds) -> dict:
    """One row of the table; ``pick``: the step's GridResult (None: the full model)."""
    if pick is None:
        layer, matrix, keep_, rank, max_rank, label = None, "none", None, None, None, "full"
    else:
        layer, matrix, keep_, rank, max_rank = pick.layer, pick.matrix, float(pick.keep), pick.rank, pick.max_rank
        label = pick.truncation.label
    return {"step": step, "accepted": accepted, "stop": stop, "layer": layer, "matrix": matrix, "keep": keep_,
            "rank": rank, "max_rank": max_rank, "intervention": label, "composed": composed, "metric": metric,
            "select_value": select_value, "select_gain": gain, "eval_value": eval_value, "collateral": coll,
            "collateral_increase": coll_inc, "candidates": candidates, "rows_evaluated": rows_evaluated,
            "decompositions": decompositions, "seconds": seconds}


def as_interventions(df: pd.DataFrame, rule: str | None = None) -> tuple[Truncate, ...]:
    """The composed :class:`~mechtrunc.Truncate` values (weight mode) of a :func:`compose_search`
    table: its accepted steps, in order (``df.attrs["interventions"]`` when present)."""
    if "interventions" in df.attrs:
        return tuple(df.attrs["interventions"])
    missing = [c for c in ("step", "accepted", "layer", "matrix", "keep") if c not in df.columns]
    if missing:
        raise ValueError(f"not a compose_search table: it lacks {', '.join(missing)}")
    rule = rule if rule is not None else df.attrs.get("rule", "round")
    steps = df[df["accepted"].astype(bool) & (df["step"] > 0)].sort_values("step")
    return tuple(Truncate(str(r["matrix"]), layer=int(r["layer"]), keep=float(r["keep"]), rule=rule,
                          svd="exact", mode="weight") for _, r in steps.iterrows())
