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
composed :class:`~mechtrunc.Truncate` values of a result table.  :class:`ComposeRequest` holds a
search's inputs, checked once before any evaluation.  The model's weights are restored
bit for bit when the search ends (also when it raises).
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

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

__all__ = ["compose_search", "ComposeRequest", "as_interventions", "COMPOSE_COLUMNS", "COMPOSE_KEEPS"]

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


def _finite_nonnegative(name: str, value) -> float:
    v = as_real(value, name)
    if not (v >= 0.0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    return v


@dataclass(frozen=True)
class ComposeRequest:
    """The inputs of :func:`compose_search`, checked once (as :class:`~mechtrunc.studies.grid.Grid`
    checks a grid's): everything a search can tell before it evaluates fails here, naming the bad
    value: prompts that are not PromptSets or have no items, an empty ``keeps``, a bad grid value,
    ``max_steps`` below 1, a negative or non-finite ``min_gain``, ``tol`` or ``budget``, a
    ``budget`` without ``collateral``, a ``metric`` that is not a metric column's name, a
    ``batch_size`` below 1, a ``collateral`` that is neither a callable nor a PromptSet with items.
    The grid's values are checked against a model by ``grid.resolve(model)``; the metric's
    presence among the prompts' metrics when the search evaluates them.

    Derived (not arguments): ``grid`` (the grid of every step: exact SVD, engine mode),
    ``collateral_of`` (``model -> float``, or None without ``collateral``); properties
    :attr:`threshold` and :attr:`sign`."""

    select_prompts: PromptSet
    eval_prompts: PromptSet
    layers: Iterable[int] | None = None
    matrices: Sequence[str] | str = ("mlp.W_in", "mlp.W_out")
    keeps: Sequence[float] | float = COMPOSE_KEEPS
    metric: str = "p_answer"
    max_steps: int = 3
    min_gain: float = 0.0
    collateral: Callable | PromptSet | None = None
    budget: float | None = None
    rule: str = "round"
    batch_size: int = 256
    tol: float = 1e-5
    grid: Grid = field(init=False, default=None)
    collateral_of: Callable | None = field(init=False, default=None)

    def __post_init__(self):  # every value is checked here, once; the search trusts a ComposeRequest
        def put(name, value):
            object.__setattr__(self, name, value)

        select_prompts, eval_prompts, keeps = self.select_prompts, self.eval_prompts, self.keeps
        if not isinstance(select_prompts, PromptSet) or not isinstance(eval_prompts, PromptSet):
            bad = select_prompts if not isinstance(select_prompts, PromptSet) else eval_prompts
            raise TypeError(f"select_prompts and eval_prompts must be PromptSets, got {type(bad).__name__}")
        for name, ps in (("select_prompts", select_prompts), ("eval_prompts", eval_prompts)):
            if len(ps) == 0:
                raise ValueError(f"{name} has no items to score")
        if not isinstance(keeps, str) and hasattr(keeps, "__len__") and len(keeps) == 0:
            raise ValueError(f"keeps is empty ({keeps!r}): give at least one fraction in [0, 1]")
        put("grid", Grid(layers=self.layers, matrices=self.matrices, keeps=keeps, rule=self.rule, svd="exact",
                         mode="engine"))
        max_steps = as_int(self.max_steps, "max_steps")
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps!r}")
        put("max_steps", max_steps)
        put("min_gain", _finite_nonnegative("min_gain", self.min_gain))
        put("tol", _finite_nonnegative("tol", self.tol))
        if not isinstance(self.metric, str) or self.metric == N_ITEMS:
            raise ValueError(f"metric must be the name of a metric column, got {self.metric!r}")
        if self.budget is not None:
            budget = as_real(self.budget, "budget")
            if self.collateral is None:
                raise ValueError(f"budget={budget!r} needs a collateral metric (collateral=None)")
            put("budget", _finite_nonnegative("budget", budget))
        batch_size = as_int(self.batch_size, "batch_size")
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        put("batch_size", batch_size)
        put("collateral_of", _collateral_fn(self.collateral, batch_size))

    @property
    def threshold(self) -> float:
        """The gain a step must exceed: ``max(min_gain, tol)``."""
        return max(self.min_gain, self.tol)

    @property
    def sign(self) -> float:
        """1 when a higher ``metric`` is better, -1 when lower is (``loss``)."""
        return 1.0 if self.metric not in LOWER_IS_BETTER else -1.0


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
    request = ComposeRequest(select_prompts, eval_prompts, layers=layers, matrices=matrices, keeps=keeps,
                             metric=metric, max_steps=max_steps, min_gain=min_gain, collateral=collateral,
                             budget=budget, rule=rule, batch_size=batch_size, tol=tol)
    rows, chosen = _Search(model, adapter, request, SVDCache(svd_cache)).run()
    df = pd.DataFrame(rows, columns=list(COMPOSE_COLUMNS))
    df.attrs["interventions"] = tuple(chosen)
    df.attrs["rule"] = rule
    return df


class _StepGrid(NamedTuple):
    """One step's grid on the selection prompts, the composition so far applied: the baseline's
    metrics, the candidates in table order (GridResults) with their metric values, and the cost."""

    base: dict
    picks: list
    values: list[float]
    n_cands: int  # configurations in the grid, identities excluded
    rows_eval: int  # (prompt, configuration) rows the engine scored, baseline included


class _Search:
    """One greedy search of a checked :class:`ComposeRequest` on ``model``: :meth:`run` builds
    the table's rows step by step; the model's weights are left as they were."""

    def __init__(self, model, adapter, request: ComposeRequest, cache: SVDCache):
        self.model, self.adapter, self.req, self.cache = model, adapter, request, cache
        self.layers, self.matrices, self.keeps = request.grid.resolve(model)
        self.base_coll = float("nan")

    def heldout(self, ivs) -> float:
        """The held-out report: ``mt.evaluate`` of the composition ``ivs`` on the evaluation prompts."""
        metric = self.req.metric
        row = evaluate(self.model, self.req.eval_prompts, *ivs, batch_size=self.req.batch_size)
        if metric not in row.columns:
            valid = [c for c in row.columns if c not in ("variant", N_ITEMS)]
            raise ValueError(f"unknown metric {metric!r}; metrics of these prompts: {', '.join(valid)}")
        return float(row[metric].iloc[0])

    def collateral(self, ivs) -> float:
        """The collateral metric with the composition ``ivs`` applied (NaN without one)."""
        if self.req.collateral_of is None:
            return float("nan")
        with intervene(self.model, *ivs):
            return self.req.collateral_of(self.model)

    def open_pairs(self, chosen) -> list[tuple[int, str]]:
        """The (layer, matrix) pairs of the grid whose stored matrix no truncation in ``chosen`` rewrites."""
        done = {_param(self.adapter, t.layer, t.matrix) for t in chosen}
        return [(l, m) for l in self.layers for m in self.matrices if _param(self.adapter, l, m) not in done]

    def evaluate_candidates(self, pairs, chosen) -> _StepGrid:
        """Candidate evaluation: one engine grid over every keep of ``pairs`` on the selection
        prompts, with ``chosen`` applied."""
        req, metric = self.req, self.req.metric
        cands = [Truncate(m, layer=l, keep=k, rule=req.rule, svd="exact", mode="weight")
                 for l, m in pairs for k in self.keeps]
        with intervene(self.model, *chosen):
            results = list(run_grid(self.model, req.select_prompts, cands, batch_size=req.batch_size,
                                    svd_cache=self.cache))
        base = results[0].metrics
        if metric not in base or metric == N_ITEMS:
            valid = [k for k in base if k != N_ITEMS]
            raise ValueError(f"unknown metric {metric!r}; metrics of these prompts: {', '.join(valid)}")
        by_key = {(r.layer, r.matrix, keep_key(r.keep)): r for r in results[1:]}
        n_cands = sum(not r.identity for r in results[1:])
        picks = [by_key[(l, m, keep_key(k))] for l, m in pairs for k in self.keeps]  # table order
        return _StepGrid(base, picks, [float(r.metrics[metric]) for r in picks], n_cands,
                         len(req.select_prompts) * (n_cands + 1))

    def accept(self, step: int, grid: _StepGrid, chosen, current: float) -> tuple[int | None, float | None, list]:
        """Acceptance within the collateral budget: ``(index of the accepted candidate or None,
        its collateral if measured, the refused rows)``; the rule of every held-out choice
        (:func:`mechtrunc.analysis.selection.best_within_budget`), better candidates over the
        budget are refused rows."""
        req, colls = self.req, {}

        def collateral_of_candidate(i: int) -> float:
            colls[i] = self.collateral([*chosen, grid.picks[i].truncation])
            return colls[i]

        i, refused = best_within_budget([req.sign * v for v in grid.values],
                                        collateral_of_candidate if req.budget is not None else None, req.budget,
                                        base_score=req.sign * current, base_collateral=self.base_coll,
                                        min_gain=req.threshold)
        refused_rows = [_row(step, False, f"collateral budget: +{inc:.4g} > {req.budget:g}", grid.picks[j],
                             Compose((*chosen, grid.picks[j].truncation)).label, req.metric, grid.values[j],
                             (grid.values[j] - current) * req.sign, float("nan"), colls[j], inc, grid.n_cands,
                             0, 0, 0.0)
                        for j, inc in refused]
        return i, colls.get(i), refused_rows

    def run(self) -> tuple[list[dict], list[Truncate]]:
        """The table's rows (step 0: the full model) and the accepted truncations."""
        req, cache = self.req, self.cache
        t0 = time.perf_counter()
        base_eval = self.heldout(())
        self.base_coll = self.collateral(())
        base_seconds, t0, n0 = time.perf_counter() - t0, time.perf_counter(), cache.n_computed
        rows: list[dict] = []
        chosen: list[Truncate] = []
        current = None  # the selection value of the composition so far
        for step in itertools.count(1):
            pairs = self.open_pairs(chosen)
            if not pairs:
                stop = "every matrix truncated"
                break
            grid = self.evaluate_candidates(pairs, chosen)
            if current is None:
                current = float(grid.base[req.metric])
                rows.append(_row(0, True, "", None, "full", req.metric, current, float("nan"), base_eval,
                                 self.base_coll, 0.0 if req.collateral_of else float("nan"), 0,
                                 len(req.eval_prompts), 0, base_seconds))
            i, coll, refused_rows = self.accept(step, grid, chosen, current)
            rows.extend(refused_rows)
            if i is None:
                stop = (f"no gain above {req.threshold:g}" if not refused_rows else
                        f"no gain above {req.threshold:g} within the collateral budget {req.budget:g}")
                if refused_rows:  # the step's cost goes on its last row
                    rows[-1].update(rows_evaluated=grid.rows_eval, decompositions=cache.n_computed - n0,
                                    seconds=time.perf_counter() - t0)
                break
            pick, gain = grid.picks[i], (grid.values[i] - current) * req.sign
            chosen = [*chosen, pick.truncation]
            coll = coll if coll is not None else self.collateral(chosen)
            current = grid.values[i]
            rows.append(_row(step, True, "", pick, Compose(tuple(chosen)).label, req.metric, current, gain,
                             self.heldout(chosen), coll, coll - self.base_coll, grid.n_cands,
                             grid.rows_eval + len(req.eval_prompts), cache.n_computed - n0,
                             time.perf_counter() - t0))
            t0, n0 = time.perf_counter(), cache.n_computed
            if len(chosen) >= req.max_steps:
                stop = f"max_steps={req.max_steps}"
                break
        rows[-1]["stop"] = stop if rows[-1]["stop"] == "" else f"{rows[-1]['stop']}; {stop}"
        return rows, chosen


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
