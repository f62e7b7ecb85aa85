"""The LASER grid engine: many truncations of one model, near the cost of the work that cannot
be avoided.  A planner over :func:`mechtrunc.core.adapters.adapt`: every model operation it runs
comes from the model's adapter (its :class:`~mechtrunc.core.stacks.Stack`, matrices and
decompositions), so it knows no architecture itself.

:func:`run_grid` yields, for a baseline and then each :class:`~mechtrunc.Truncate`, the metric
dictionary ``mechtrunc.evaluate(model, prompts, truncate)`` gives (equal within 1e-5 in float32),
as soon as the truncation's layer is finished, so a study can store each row as it comes.  Each
row says which ``path`` computed it:

- ``"fast"`` (a matrix in ``adapt(model).fast_matrices``: ``mlp.W_in``, ``mlp.W_out``,
  ``attn.W_V``, ``attn.W_O``, ``attn.OV`` on the toy model, GPT-NeoX, GPT-2, GPT-J and the Llama
  family, with ``mlp.W_gate`` on its gated MLP; ``W`` on the linear memory):

  - **Start at the truncated layer.** Truncating a matrix of layer ``l`` leaves everything
    before it unchanged: the engine walks the clean model layer by layer, keeps the clean
    residual stream of the current layer for all prompts, and runs each truncation from there.
  - **Low-rank output without a dense write-back.** Layer ``l`` is split at the matrix
    (:meth:`~mechtrunc.core.stacks.Stack.split`): its clean input ``x`` is computed once, and the
    truncated output ``x @ W_r + b`` for every rank from one basis of ``W``'s smaller side
    (:class:`~mechtrunc.core.interventions.TruncatedProduct`, the product hook-mode truncation uses);
    only the rest of layer ``l`` runs per truncation (for ``W_out``: one addition; ``W_O``: the
    attention output; ``W_V``: the clean attention pattern times the truncated values).
    ``attn.OV`` is a new ``W_O`` per head (:func:`~mechtrunc.core.interventions.ov_W_O`).
  - **All truncations of a layer in one batched forward** through the remaining layers, and
    **logits only where the prompt set reads them** (the last layer's attention output, MLP and
    the unembedding run at the read positions only).
  - **One decomposition per matrix**, cached on disk under ``svd_cache`` keyed by a SHA-1 of
    the weight (:class:`mechtrunc.core.decomposition.SVDCache`).

- ``"reference"`` (anything else an adapter supports: ``attn.W_Q``/``attn.W_K``, models without
  a stack): one hook-mode evaluation per truncation (weight mode on a model without hook
  points), with the same numbers.

Measured in ``benchmarks/bench_sweep_engine.py`` (see docs/benchmarks.md).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
from torch import Tensor

from mechtrunc._progress import progress_bar
from mechtrunc._scalars import as_int
from mechtrunc.core.adapters import adapt
from mechtrunc.core.decomposition import SVDCache
from mechtrunc.core.interventions import Truncate, TruncatedProduct, ov_basis, ov_W_O
from mechtrunc.core.metrics import item_metrics, metrics_from_logits
from mechtrunc.core.prompts import PromptSet
from mechtrunc.core.runner import check_prompts, item_logits

__all__ = ["run_grid", "GridResult", "PATHS"]

#: how a row was computed
PATHS = ("fast", "reference")


@dataclass
class GridResult:
    """One evaluated truncation (``baseline`` true: the unmodified model, ``truncation``,
    ``layer``, ``keep``, ``rank``, ``max_rank`` None, ``matrix`` ``"none"``).  ``identity``: the
    rank is the full rank, so the metrics are the baseline's.  ``path``: ``"fast"`` or
    ``"reference"`` (see the module docstring)."""

    truncation: Truncate | None
    layer: int | None
    matrix: str
    keep: float | None
    rank: int | None
    max_rank: int | None
    identity: bool
    metrics: dict
    path: str
    baseline: bool = False
    #: with ``run_grid(..., items=True)``: the per-item values ``{metric: [item] tensor}`` whose
    #: means are ``metrics`` (no extra forward pass); None otherwise
    items: dict | None = None


@dataclass
class _Plan:
    truncation: Truncate
    rank: int
    max_rank: int
    fast: bool

    def result(self, metrics: dict, path: str, items: dict | None = None) -> GridResult:
        t = self.truncation
        return GridResult(t, t.layer, t.matrix, t.keep, self.rank, self.max_rank, self.rank == self.max_rank,
                          metrics, path, items=items)


def _plan(adapter, truncations) -> list[_Plan]:
    if isinstance(truncations, (str, bytes, Truncate)) or not hasattr(truncations, "__iter__"):
        raise ValueError(f"truncations must be an iterable of mechtrunc.Truncate values, got {truncations!r}")
    plans, seen = [], set()
    for t in truncations:
        if not isinstance(t, Truncate):
            raise TypeError(f"the grid engine evaluates mechtrunc.Truncate values, got {type(t).__name__}: {t!r}")
        if isinstance(t.keep, tuple) or isinstance(t.rank, tuple):  # Truncate keeps per-row values as tuples
            raise ValueError(f"the grid engine needs one keep or rank per truncation, got {t.label!r}")
        if t.svd != "exact":
            raise ValueError(f"the grid engine computes exact decompositions; give svd='exact' (not {t.svd!r})")
        key = (t.layer, t.matrix, t.keep, t.rank, t.rule)
        if key in seen:
            continue
        seen.add(key)
        adapter.check_layer(t.layer)
        max_rank = adapter.matrix(t.matrix, t.layer).max_rank
        plans.append(_Plan(t, t.ranks(adapter, max_rank)[0], max_rank, t.matrix in adapter.fast_matrices))
    return plans


def run_grid(
    model,
    prompts: PromptSet,
    truncations: Iterable[Truncate],
    *,
    batch_size: int = 256,
    svd_cache: str | os.PathLike | SVDCache | None = None,
    svd_method: str = "gram",
    progress: bool = False,
    baseline: bool = True,
    items: bool = False,
) -> Iterator[GridResult]:
    """Evaluate every :class:`~mechtrunc.Truncate` of ``truncations`` (one keep or rank each,
    ``svd="exact"``) on ``prompts``; yield a :class:`GridResult` per truncation (the baseline
    first when ``baseline``), grouped by layer in increasing order, each as soon as its layer is
    finished (truncations on the reference path come last, one at a time).  Each distinct
    truncation is yielded once.  Bad input raises before anything runs.

    Args:
        model: any model mechtrunc adapts (see :func:`mechtrunc.core.adapters.adapt`).
        batch_size: rows (prompt x truncation) per forward pass.
        svd_cache: a directory for the decompositions (keyed by the weight's SHA-1), or an
            :class:`~mechtrunc.core.decomposition.SVDCache` (its method then wins over
            ``svd_method``); None: nothing kept.
        svd_method: see :func:`mechtrunc.core.decomposition.truncation_basis` (``"gram"`` default).
        progress: show progress over the truncations (a bar on a terminal, a few lines elsewhere).
        items: also give each result's per-item values (``GridResult.items``, CPU tensors, one
            value per item of ``prompts``), the values the means are taken over: for paired
            bootstrap intervals at no extra forward pass (:mod:`mechtrunc.analysis.selection`).
    """
    adapter = adapt(model)
    batch_size = as_int(batch_size, "batch_size")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    cache = svd_cache if isinstance(svd_cache, SVDCache) else SVDCache(svd_cache, svd_method)
    if not isinstance(prompts, PromptSet):
        raise TypeError(f"prompts must be a PromptSet, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("the prompt set has no items to score")
    check_prompts(adapter, prompts)
    plans = _plan(adapter, truncations)
    return _run(adapter, prompts, plans, batch_size, cache, progress, baseline, bool(items))


def _run(adapter, prompts, plans, batch_size, cache, progress, want_baseline, items=False):
    bar = progress_bar(len(plans) + int(want_baseline), "grid", "config", enabled=progress)
    tick = lambda: bar.update(1)  # noqa: E731
    try:
        fast = [p for p in plans if p.fast]
        slow = [p for p in plans if not p.fast]
        if adapter.stack is not None and (fast or want_baseline):
            yield from _run_fast(adapter, prompts, fast, batch_size, cache, tick, want_baseline, items)
            want_baseline = False
        if slow or want_baseline:
            yield from _run_reference(adapter, prompts, slow, batch_size, tick, want_baseline, items)
    finally:
        bar.close()


def _baseline(metrics: dict, path: str, items: dict | None = None) -> GridResult:
    return GridResult(None, None, "none", None, None, None, False, metrics, path, baseline=True, items=items)


def _cpu(per_item: dict[str, Tensor] | None) -> dict | None:
    return None if per_item is None else {k: v.detach().cpu() for k, v in per_item.items()}


def _run_reference(adapter, prompts, plans, batch_size, tick, want_baseline, items=False):
    """One evaluation per truncation (hook mode; weight mode on a model without hook points)."""
    mode = "hook" if adapter.has_hooks else "weight"

    def score(*ivs):
        logits = item_logits(adapter, prompts, *ivs, batch_size=batch_size)
        per_item = _cpu(item_metrics(logits, prompts)) if items else None
        return metrics_from_logits(logits, prompts), per_item

    base, base_items = score()
    if want_baseline:
        yield _baseline(base, "reference", base_items)
        tick()
    for p in sorted(plans, key=lambda p: p.truncation.layer):
        if p.rank == p.max_rank:
            metrics, per_item = dict(base), base_items
        else:
            metrics, per_item = score(dataclasses.replace(p.truncation, mode=mode))
        yield p.result(metrics, "reference", per_item)
        tick()


def _reduce(per_item: dict[str, Tensor], n: int) -> dict:
    return {"n_items": float(n), **{k: v.mean().item() for k, v in per_item.items()}}


class _Products:
    """The truncated outputs of one matrix of one layer at every rank its plans need."""

    def __init__(self, adapter, cache, layer: int, matrix: str, ranks: list[int], max_rank: int, dev, dtype):
        site = adapter.matrix(matrix, layer)
        self.per_head = site.heads is not None
        self.bias = None if site.bias is None else site.bias.to(dev, dtype)
        need = max([r for r in ranks if r < max_rank], default=0)
        if self.per_head:  # each head's W_V W_O: a new W_O per rank
            W_O, Vh = ov_basis(adapter, layer)
            self.W_O = {r: ov_W_O(W_O, Vh, torch.arange(max_rank) < r).reshape(-1, W_O.shape[-1]).to(dev, dtype)
                        for r in set(ranks) if r < max_rank}
            return
        W = site.get()
        left = W.shape[0] <= W.shape[1]
        Q = adapter.basis(site, need, cache)[0] if need > 0 else W.new_zeros(min(W.shape), 0)
        self.tp = TruncatedProduct(Q.to(dev, dtype), left, W.to(dev, dtype), self.bias)

    def coefficients(self, x: Tensor) -> Tensor:
        return x if self.per_head else self.tp.coefficients(x)

    def output(self, coef: Tensor, rank: int) -> Tensor:
        if self.per_head:
            out = coef @ self.W_O[rank]
            return out + self.bias if self.bias is not None else out
        return self.tp.output(coef, rank)


@torch.no_grad()
def _run_fast(adapter, prompts, plans, batch_size, cache, tick, want_baseline, items=False):
    stack = adapter.stack
    dev = adapter.device
    dtype = next(adapter.model.parameters()).dtype
    tokens = prompts.tokens.to(dev)
    n_seq, n_items = tokens.shape[0], len(prompts)
    rows_all, pos_all = prompts.rows.to(dev), prompts.pos.to(dev)
    last = stack.n_layers - 1

    def chunks(size):
        for s in range(0, n_seq, size):
            idx = ((rows_all >= s) & (rows_all < s + size)).nonzero().squeeze(1)
            yield s, min(s + size, n_seq), idx

    def run_from(l_next: int, resid: Tensor, rows: Tensor, pos: Tensor) -> Tensor:
        """Run layers l_next.. on ``resid`` [b, p, d]; logits at (rows, pos)."""
        for l in range(l_next, last):
            resid = stack.layer(l, resid)
        out = stack.last_layer_at(resid, rows, pos) if l_next <= last else resid[rows, pos]
        return stack.unembed(out).float()

    ans, comp = prompts.answer.to(dev), prompts.competitors.to(dev)
    dummy = torch.zeros(1, 1, dtype=torch.long)

    def sub_prompts(idx):
        """The items ``idx`` as a PromptSet carrying what the metrics read (answers, competitors)."""
        z = torch.zeros(len(idx), dtype=torch.long)
        return PromptSet(tokens=dummy, rows=z, pos=z, answer=ans[idx], competitors=comp[idx],
                         competitor_names=prompts.competitor_names)

    def store(acc: dict, logits: Tensor, idx: Tensor):
        for k, v in item_metrics(logits, sub_prompts(idx)).items():
            acc.setdefault(k, torch.empty(n_items, device=logits.device))[idx] = v

    seq_chunk = max(1, min(n_seq, batch_size))
    base_items: dict[str, Tensor] = {}
    for s, e, idx in chunks(seq_chunk):
        store(base_items, run_from(0, stack.embed(tokens[s:e]), rows_all[idx] - s, pos_all[idx]), idx)
    base = _reduce(base_items, n_items)
    base_items = _cpu(base_items) if items else None
    if want_baseline:
        yield _baseline(base, "fast", base_items)
        tick()

    by_layer: dict[int, list[_Plan]] = {}
    for p in plans:
        by_layer.setdefault(p.truncation.layer, []).append(p)
    resid_all, cur = None, 0  # the clean residual before layer `cur`, all sequences
    for l in sorted(by_layer):
        if resid_all is None:
            resid_all = torch.cat([stack.embed(tokens[s:e]) for s, e, _ in chunks(seq_chunk)])
        while cur < l:
            resid_all = torch.cat([stack.layer(cur, resid_all[s:e]) for s, e, _ in chunks(seq_chunk)])
            cur += 1
        run = [p for p in by_layer[l] if p.rank < p.max_rank]
        per_matrix: dict[str, list[_Plan]] = {}
        for p in run:
            per_matrix.setdefault(p.truncation.matrix, []).append(p)
        products = {m: _Products(adapter, cache, l, m, [p.rank for p in ps], ps[0].max_rank, dev, dtype)
                    for m, ps in per_matrix.items()}
        order = [p for ps in per_matrix.values() for p in ps]
        acc: list[dict] = [{} for _ in order]
        if order:
            for s, e, idx in chunks(max(1, batch_size // len(order))):
                outs, memo = [], {}  # the layer's clean parts, shared by its matrices' splits
                for m, ps in per_matrix.items():
                    x, rest = stack.split(l, m, resid_all[s:e], memo)
                    coef = products[m].coefficients(x)
                    outs.extend(rest(products[m].output(coef, p.rank)) for p in ps)
                    del x, rest, coef
                n_rep, b = len(outs), e - s
                rows_c, pos_c = rows_all[idx] - s, pos_all[idx]
                rep_rows = torch.cat([rows_c + j * b for j in range(n_rep)])
                lg = run_from(l + 1, torch.cat(outs), rep_rows, pos_c.repeat(n_rep))
                del outs, memo
                for j in range(n_rep):
                    store(acc[j], lg[j * len(idx):(j + 1) * len(idx)], idx)
                del lg
        done = {id(p): (_reduce(a, n_items), _cpu(a) if items else None) for p, a in zip(order, acc)}
        for p in by_layer[l]:
            metrics, per_item = done.get(id(p), (dict(base), base_items))
            yield p.result(metrics, "fast", per_item)
            tick()
