"""How much the SVD behind a truncation matters: the LASER paper truncates with
``torch.svd_lowrank(q=rank, niter=2)`` (``svd="laser"``, :func:`mechtrunc.core.decomposition.full_svd`),
an approximation of the exact rank-``r`` truncation this package computes by default.

- :func:`svd_sensitivity`: per truncation (layer, matrix, keep) and SVD method, how far the weight
  the method writes back is from the exact truncation computed in float64 (relative Frobenius
  distance, excess approximation error, principal angles of the kept singular vectors, error of
  the kept singular values), and the metrics with that weight next to the exact method's.
- :func:`best_by_method`: :func:`~mechtrunc.studies.grid.best_configuration` of that table per
  method, and whether each method picks the configuration the exact SVD picks.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Iterable, Sequence

import pandas as pd
import torch
from torch import Tensor

from mechtrunc._checks import check_choice
from mechtrunc._choices import SVD_METHODS
from mechtrunc.core.adapters import adapt
from mechtrunc.analysis.evaluation import evaluate
from mechtrunc.core.interventions import Truncate, intervene
from mechtrunc.core.prompts import PromptSet
from mechtrunc.core.results import (
    LOWER_IS_BETTER, P_ANSWER, baseline_row, configuration_row, default_metric, keep_key, tidy_truncation,
)
from mechtrunc.studies.grid import best_configuration
from mechtrunc.studies.store import metric_values

__all__ = ["svd_sensitivity", "best_by_method", "REFERENCES", "DISTANCE_COLUMNS", "weight_distances"]

#: precisions of the reference (the exact SVD the distances are measured from)
REFERENCES = ("float64", "float32")
#: relative size below which a singular value or residual is float32 noise
_NOISE = 1e-5
#: the distance columns of :func:`svd_sensitivity` (see :func:`weight_distances`)
DISTANCE_COLUMNS = ("weight_distance", "excess_error", "subspace_sin", "subspace_rms_sin", "singular_value_error")


def _top_subspaces(W: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
    """Orthonormal bases of the top-``r`` left and right singular subspaces of ``W`` (float64)
    and its top ``r`` singular values, from a Gram eigendecomposition of the smaller side (the
    other side by QR)."""
    W = W.double()
    left = W.shape[0] <= W.shape[1]
    G = W @ W.T if left else W.T @ W
    evals, evecs = torch.linalg.eigh(G)
    S = evals.flip(0)[:r].clamp_min(0).sqrt()
    Q = evecs.flip(1)[:, :r]
    other, _ = torch.linalg.qr(W.T @ Q if left else W @ Q)
    return (Q, other, S) if left else (other, Q, S)


def _sines(A: Tensor, B: Tensor) -> tuple[float, float]:
    """Sines of the principal angles between the spans of the orthonormal ``A`` and ``B`` (same
    number of columns): (the largest, their root mean square)."""
    if A.shape[1] == 0:
        return 0.0, 0.0
    s = torch.linalg.svdvals(B - A @ (A.T @ B)).clamp(max=1.0)
    return float(s.max()), float(s.square().mean().sqrt())


def weight_distances(W: Tensor, W_trunc: Tensor, rank: int, reference: str = "float64",
                     svd: tuple[Tensor, Tensor, Tensor] | None = None) -> dict[str, float]:
    """How far ``W_trunc`` (a rank-``rank`` truncation of ``W``, both ``[d_in, d_out]``) is from
    the exact rank-``rank`` truncation ``W_r`` of ``W`` computed by ``torch.linalg.svd`` in
    ``reference`` precision:

    - ``weight_distance``: ``||W_trunc - W_r||_F / ||W_r||_F``;
    - ``excess_error``: ``||W - W_trunc||_F / ||W - W_r||_F - 1`` (how much worse an
      approximation of ``W`` it is than the best rank-``rank`` one; NaN when ``W`` has rank
      ``<= rank``, i.e. ``||W - W_r||_F <= 1e-5 ||W||_F``, float32 noise);
    - ``subspace_sin``: the sine of the largest principal angle between the top-``rank`` singular
      subspaces of ``W_trunc`` and ``W_r`` (the larger of the left and right sides; only the
      components whose exact singular value exceeds ``1e-5 s_1``, the others being arbitrary; 0: the same
      kept directions, 1: at least one kept direction orthogonal to the exact ones), and
      ``subspace_rms_sin`` the root mean square of those sines (0 to 1: how much of the kept
      subspace moved);
    - ``singular_value_error``: ``||S(W_trunc)_:r - S_:r||_2 / ||S_:r||_2``.

    ``svd``: ``torch.linalg.svd(W.to(reference dtype), full_matrices=False)`` when already
    computed (it does not depend on ``rank``).
    """
    check_choice("reference", reference, REFERENCES)
    dtype = torch.float64 if reference == "float64" else torch.float32
    U, S, Vh = svd if svd is not None else torch.linalg.svd(W.to(dtype), full_matrices=False)
    U, S, Vh = U.double(), S.double(), Vh.double()
    r = int(rank)
    W64, Wt = W.double(), W_trunc.double()
    W_r = (U[:, :r] * S[:r]) @ Vh[:r]
    ref_norm = float(torch.linalg.norm(W_r))
    tail = float(torch.linalg.norm(W64 - W_r))
    exact_rank = tail <= _NOISE * float(torch.linalg.norm(W64))
    out = {"weight_distance": float(torch.linalg.norm(Wt - W_r)) / ref_norm if ref_norm > 0 else float(torch.linalg.norm(Wt)),
           "excess_error": float("nan") if exact_rank else float(torch.linalg.norm(W64 - Wt)) / tail - 1}
    Um, Vm, Sm = _top_subspaces(Wt, r)
    k = int((S[:r] > _NOISE * S[0]).sum()) if r else 0  # directions of zero singular value are arbitrary
    (lmax, lrms), (rmax, rrms) = _sines(U[:, :k], Um[:, :k]), _sines(Vh[:k].T, Vm[:, :k])
    out["subspace_sin"], out["subspace_rms_sin"] = max(lmax, rmax), max(lrms, rrms)
    s_norm = float(torch.linalg.norm(S[:r]))
    out["singular_value_error"] = float(torch.linalg.norm(Sm - S[:r])) / s_norm if s_norm > 0 else 0.0
    return out


def _as_truncate(t, rule: str) -> Truncate:
    if isinstance(t, Truncate):
        iv = t
    elif isinstance(t, dict):
        iv = Truncate(t["matrix"], layer=t["layer"], keep=t.get("keep"), rank=t.get("rank"), rule=t.get("rule", rule))
    else:
        try:
            layer, matrix, keep = t
        except (TypeError, ValueError):
            raise ValueError(f"a truncation is a Truncate, a dict or a (layer, matrix, keep) tuple, got {t!r}") from None
        iv = Truncate(matrix, layer=layer, keep=keep, rule=rule)
    if isinstance(iv.keep, tuple) or isinstance(iv.rank, tuple):
        raise ValueError(f"{iv.label}: per-row keeps/ranks are not a single truncated weight; give one value")
    return iv


def svd_sensitivity(
    model,
    prompts: PromptSet,
    truncations: Iterable,
    methods: Sequence[str] = ("exact", "laser"),
    reference: str = "float64",
    rule: str = "round",
    batch_size: int = 64,
) -> pd.DataFrame:
    """For every truncation and SVD method: how far the truncated weight is from the exact
    truncation in ``reference`` precision, and what the truncation does to the metrics.

    Args:
        truncations: :class:`~mechtrunc.Truncate` objects (their ``svd`` and ``mode`` are
            replaced), ``(layer, matrix, keep)`` tuples or ``{"layer", "matrix", "keep"|"rank"}``
            dicts (these with rank rule ``rule``).
        methods: names from :data:`mechtrunc.core.decomposition.SVD_METHODS`; must contain
            ``"exact"``, the method the metric changes are measured from.  Every method is
            applied as LASER applies it: the truncated weight written back (``mode="weight"``).
        reference: ``"float64"`` (default) or ``"float32"``: precision of the exact SVD the
            distances are measured from.

    Returns a tidy DataFrame: a ``baseline`` row (the unmodified model), then one row per
    (truncation, method) in the given order, with the columns of a truncation table (``svd`` is
    the method), :data:`DISTANCE_COLUMNS` (see :func:`weight_distances`), every metric of
    :func:`mechtrunc.evaluate` and, per metric among ``p_answer``, ``accuracy`` and
    ``logit_diff_*``, ``delta_<metric>``: the method's value minus the exact method's.
    ``svd="laser"`` and ``"randomized"`` are seeded, so two runs give the same table.
    """
    methods = list(dict.fromkeys(methods))
    for m in methods:
        check_choice("svd method", m, SVD_METHODS, quote=True)
    if "exact" not in methods:
        raise ValueError(f"methods {methods!r} must contain 'exact' (the metric changes are measured from it)")
    check_choice("reference", reference, REFERENCES)
    if len(prompts) == 0:
        raise ValueError("the prompt set has no items to score")
    ivs = [_as_truncate(t, rule) for t in truncations]
    if not ivs:
        raise ValueError("truncations is empty: give at least one (layer, matrix, keep)")
    adapter = adapt(model)
    for iv in ivs:
        site = adapter.matrix(iv.matrix, iv.layer)
        if site.heads is not None:
            raise ValueError(f"{iv.matrix} truncates each head's product with an exact SVD whatever svd= says; "
                             "give a weight matrix (mlp.W_in, mlp.W_out, attn.W_Q...)")
    dtype = torch.float64 if reference == "float64" else torch.float32

    t0 = time.perf_counter()
    base = metric_values(evaluate(model, prompts, batch_size=batch_size, label="full"))
    rows = [{**baseline_row(base, rule=rule, svd="none", mode="weight", seconds=time.perf_counter() - t0),
             **{c: 0.0 for c in DISTANCE_COLUMNS}}]
    weights, refs, ranks = {}, {}, []
    for iv in ivs:
        adapter.check_layer(iv.layer)
        site = adapter.matrix(iv.matrix, iv.layer)
        key = (iv.layer, iv.matrix)
        if key not in weights:  # the reference SVD does not depend on the rank: once per matrix
            weights[key] = site.get().clone()
            refs[key] = torch.linalg.svd(weights[key].to(dtype), full_matrices=False)
        ranks.append((iv.ranks(adapter, site.max_rank)[0], site.max_rank))
    # method by method, so the adapter's decomposition of a matrix (cached while its weight is
    # unchanged, one method at a time) serves every keep of that matrix
    found: dict[tuple[int, str], dict] = {}
    for m in methods:
        for i, iv in enumerate(ivs):
            t0 = time.perf_counter()
            ivm = dataclasses.replace(iv, svd=m, mode="weight")
            rank, max_rank = ranks[i]
            key = (iv.layer, iv.matrix)
            with intervene(model, ivm):
                W_m = adapter.matrix(iv.matrix, iv.layer).get().clone()
                metrics = metric_values(evaluate(model, prompts, batch_size=batch_size, label=ivm.label))
            dist = weight_distances(weights[key], W_m, rank, reference, svd=refs[key])
            row = configuration_row(iv.layer, iv.matrix, iv.keep if iv.keep is not None else rank / max_rank,
                                    rank, max_rank, metrics, rule=iv.rule, svd=m, mode="weight",
                                    intervention=ivm.label, seconds=time.perf_counter() - t0)
            found[(i, m)] = {**row, **dist}
    for i in range(len(ivs)):
        exact = found[(i, "exact")]
        for m in methods:
            row = found[(i, m)]
            for k in [c for c in exact if c in (P_ANSWER, "accuracy") or c.startswith("logit_diff_")]:
                row[f"delta_{k}"] = row[k] - exact[k]
            rows.append(row)
    df = tidy_truncation(pd.DataFrame(rows))
    front = [c for c in df.columns if c not in DISTANCE_COLUMNS and not c.startswith("delta_")]
    order = front[:front.index("intervention") + 1] + list(DISTANCE_COLUMNS) + \
        [c for c in df.columns if c.startswith("delta_")] + front[front.index("intervention") + 1:]
    return df[order]


def best_by_method(table: pd.DataFrame, metric: str | None = None, higher_is_better: bool | None = None) -> pd.DataFrame:
    """:func:`~mechtrunc.studies.grid.best_configuration` of an :func:`svd_sensitivity` table
    for each method (the grid it covers, the baseline row shared): one row per method with
    ``svd, layer, matrix, keep, rank, metric, value, baseline_value, improvement`` and
    ``same_as_exact`` (the method picks the configuration the exact SVD picks).  ``metric``
    defaults to the table's :func:`~mechtrunc.core.results.default_metric`; ``higher_is_better`` to
    false only for ``loss``."""
    metric = metric or default_metric(table.columns)
    hib = metric not in LOWER_IS_BETTER if higher_is_better is None else higher_is_better
    is_base = table["baseline"].astype(bool)
    methods = list(dict.fromkeys(table.loc[~is_base, "svd"]))
    out = []
    for m in methods:
        best = best_configuration(table[is_base | (table["svd"] == m)], metric, higher_is_better=hib)
        out.append({k: best[k] for k in ("svd", "layer", "matrix", "keep", "rank", "metric", "value",
                                          "baseline_value", "improvement")})
    df = pd.DataFrame(out)
    key = lambda r: (r["layer"], r["matrix"], keep_key(r["keep"]))
    exact = df[df["svd"] == "exact"]
    ref = key(exact.iloc[0]) if len(exact) else None
    df["same_as_exact"] = [ref is not None and key(r) == ref for _, r in df.iterrows()]
    return df
