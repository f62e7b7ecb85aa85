"""All task metrics, in one place (pure maths on logits; running a model to get them is
:mod:`mechtrunc.analysis.evaluation`'s job).

Given the logits at each read item of a :class:`~mechtrunc.core.prompts.PromptSet`:

- ``accuracy``: the answer is the top-1 token (the paper's toy metric);
- ``p_answer``: mean probability of the answer;
- ``p_{name}``: mean probability of each competitor (``p_noise``, ``p_the``, ``p_subject``);
- ``acc_vs_{name}``: fraction of items whose answer logit beats that competitor's;
- ``logit_diff_{name}``: mean logit(answer) - logit(competitor);
- ``loss``: mean cross-entropy of the answer.

:func:`bootstrap_ci` gives a percentile interval of a mean over items (resampling the items), for
a metric or for a paired difference of two runs on the same items; :func:`bootstrap_intervals`
gives many at once (a grid's configurations, the same resampled items for every row).  They are
built from the pieces every bootstrap of the package uses (patching's effects, the gradient SNR
over batches, the intervals over training seeds): :func:`check_bootstrap` (the one input check),
:func:`bootstrap_draws` (the seeded resamples), :func:`resample_counts` and
:func:`percentile_interval`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from mechtrunc._checks import check_choice
from mechtrunc._scalars import as_int, as_real
from mechtrunc.core.prompts import PromptSet

__all__ = ["metrics_from_logits", "item_metrics", "metric_names", "check_prompt_metric", "masked_cross_entropy", "bootstrap_ci", "bootstrap_means",
           "bootstrap_intervals", "check_bootstrap", "bootstrap_draws", "resample_counts", "percentile_interval"]


def item_metrics(logits: Float[Tensor, "item vocab"], prompts: PromptSet) -> dict[str, Tensor]:
    """Per-item values ``[item]`` of every metric (see module docstring) except ``n_items``:
    :func:`metrics_from_logits` is their mean.  Useful to score a prompt set in chunks."""
    if logits.shape[0] != len(prompts):
        raise ValueError(f"{logits.shape[0]} logit rows for {len(prompts)} items")
    logits = logits.float()
    answer = prompts.answer.to(logits.device)
    comps = prompts.competitors.to(logits.device)
    logp = logits.log_softmax(-1)
    la = logits.gather(1, answer[:, None]).squeeze(1)
    lpa = logp.gather(1, answer[:, None]).squeeze(1)
    out = {
        "accuracy": (logits.argmax(-1) == answer).float(),
        "p_answer": lpa.exp(),
        "loss": -lpa,
    }
    for j, name in enumerate(prompts.competitor_names):
        lc = logits.gather(1, comps[:, j : j + 1]).squeeze(1)
        out[f"p_{name}"] = logp.gather(1, comps[:, j : j + 1]).squeeze(1).exp()
        out[f"acc_vs_{name}"] = (la > lc).float()
        out[f"logit_diff_{name}"] = la - lc
    return out


def metric_names(prompts: PromptSet) -> list[str]:
    """Every metric ``prompts`` can be scored by: ``accuracy``, ``p_answer``, ``loss`` and, per
    competitor name (``the``, ``noise``, ``c0``...), ``p_``, ``acc_vs_`` and ``logit_diff_``."""
    return ["accuracy", "p_answer", "loss"] + [f"{k}_{c}" for c in prompts.competitor_names
                                               for k in ("p", "acc_vs", "logit_diff")]


def check_prompt_metric(prompts: PromptSet, metric: str) -> str:
    """``metric`` if ``prompts`` can be scored by it (:func:`metric_names`); otherwise ValueError
    naming it, the prompt set's competitors and the valid metrics.  Studies call it before
    anything runs, so a metric of another prompt set (``logit_diff_the`` on prompts whose
    competitors are ``c0``, ``c1``) fails at once, not after the grid."""
    names = metric_names(prompts)
    if metric not in names:
        raise ValueError(f"unknown metric {metric!r} for these prompts (competitors: "
                         f"{', '.join(prompts.competitor_names)}); valid: {', '.join(names)}")
    return metric


def metrics_from_logits(
    logits: Float[Tensor, "item vocab"], prompts: PromptSet, weights: Float[Tensor, "item"] | None = None
) -> dict[str, float]:
    """The metric dictionary (see module docstring) for logits at the prompt set's items.
    ``weights`` (one non-negative number per item, normalised here) turns every mean into a
    weighted mean, e.g. the input distribution p(x) of :mod:`mechtrunc.models.memory`."""
    if logits.shape[0] != len(prompts):
        raise ValueError(f"{logits.shape[0]} logit rows for {len(prompts)} items")
    if len(prompts) == 0:
        raise ValueError("the prompt set has no items to score")
    per_item = item_metrics(logits, prompts)
    if weights is None:
        mean = lambda t: t.mean().item()
    else:
        w = torch.as_tensor(weights, device=logits.device).reshape(-1).float()
        if w.shape[0] != len(prompts) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"weights must be {len(prompts)} non-negative numbers with a positive sum")
        w = w / w.sum()
        mean = lambda t: (t * w).sum().item()
    return {"n_items": float(len(prompts)), **{k: mean(v) for k, v in per_item.items()}}


def masked_cross_entropy(
    logits: Float[Tensor, "batch pos vocab"], targets: Tensor, mask: Tensor
) -> Tensor:
    """Mean cross-entropy over the positions where ``mask`` is true (the training loss)."""
    return F.cross_entropy(logits[mask].float(), targets[mask])


def check_bootstrap(n_boot, level, *, allow_zero: bool = False) -> tuple[int, float]:
    """The one input check of every bootstrap in mechtrunc: ``n_boot`` an integer >= 1 (>= 0
    with ``allow_zero``, where 0 means no intervals) and ``level`` in (0, 1).  Returns them as
    ``(int, float)``."""
    try:
        n = as_int(n_boot, "n_boot")
    except (TypeError, ValueError):
        n = None
    if n is None or n < (0 if allow_zero else 1):
        what = "a non-negative integer (0: no intervals)" if allow_zero else "a positive integer"
        raise ValueError(f"n_boot must be {what}, got {n_boot!r}")
    try:
        lv = as_real(level, "level")
    except (TypeError, ValueError):
        lv = math.nan
    if not 0.0 < lv < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return n, lv


def bootstrap_draws(n: int, n_boot: int, seed: int = 0, *, stream: str = "torch") -> Tensor:
    """The resamples of every bootstrap: ``[n_boot, n]`` indices into ``n`` items (or clusters,
    seeds, batches), drawn with replacement, seeded by ``seed``.  ``stream="torch"`` (every
    interval over items, clusters or batches) draws from ``torch.Generator().manual_seed(seed)``;
    ``stream="numpy"`` (the intervals over training seeds, :func:`mechtrunc.studies.dynamics.seed_interval`)
    from ``numpy.random.default_rng(seed)``, the stream their published numbers were drawn from."""
    if check_choice("stream", stream, ("torch", "numpy")) == "torch":
        return torch.randint(0, n, (n_boot, n), generator=torch.Generator().manual_seed(int(seed)))
    import numpy as np

    return torch.from_numpy(np.random.default_rng(seed).integers(0, n, size=(n_boot, n)))


def resample_counts(idx: Tensor) -> Float[Tensor, "n_boot n"]:
    """How many times each of the ``n`` items enters each resample of ``idx`` (:func:`bootstrap_draws`),
    as float64 ``[n_boot, n]``: a resample's sum of a quantity is ``counts @ values``."""
    return torch.zeros(idx.shape, dtype=torch.double).scatter_add_(1, idx, torch.ones(idx.shape, dtype=torch.double))


def percentile_interval(samples: Tensor, level: float, *, skip_nan: bool = False) -> tuple[Tensor, Tensor]:
    """The percentile interval ``(low, high)`` at ``level`` of bootstrap statistics ``samples``
    (over the last dimension; a resample whose statistic is NaN is left out with ``skip_nan``,
    all NaN gives NaN)."""
    a = (1.0 - level) / 2
    q = torch.tensor([a, 1.0 - a], dtype=torch.double)
    q = (torch.nanquantile if skip_nan else torch.quantile)(samples.double(), q, dim=-1)
    return q[0], q[1]


def bootstrap_means(
    values: Float[Tensor, "k item"], n_boot: int = 2000, seed: int = 0, clusters: Tensor | None = None
) -> Float[Tensor, "k n_boot"]:
    """The means of ``n_boot`` bootstrap resamples of the items, for each of ``k`` rows of
    ``values`` (float64, CPU).  Every row is resampled with the *same* items (draw ``b`` takes
    item ``i`` as many times in every row), so rows holding two runs on the same items, or
    their difference, are paired.  The draws (:func:`bootstrap_draws`) are seeded by ``seed``
    and do not depend on ``k``: one matrix of resample counts ``[n_boot, item]`` times
    ``values``, so a whole grid's intervals cost one matrix product.

    ``clusters`` (one id per item, e.g. the item's sequence): resample clusters instead of
    items (all items of a drawn cluster enter together; the mean is over the drawn items), for
    items that are not independent (the toy task reads many items per sequence).  With one item
    per cluster, in item order, it draws exactly what the item bootstrap draws."""
    v = torch.as_tensor(values).double().cpu()
    if v.ndim == 1:
        v = v[None]
    if v.ndim != 2 or v.shape[1] == 0:
        raise ValueError(f"bootstrap needs [k, item] values with at least one item, got shape {tuple(v.shape)}")
    n_boot, _ = check_bootstrap(n_boot, 0.5)
    n = v.shape[1]
    size = None
    if clusters is not None:
        c = torch.as_tensor(clusters).reshape(-1).cpu()
        if c.shape[0] != n:
            raise ValueError(f"clusters must give one id per item ({n}), got {c.shape[0]}")
        _, code = torch.unique(c, return_inverse=True)
        n_c = int(code.max()) + 1
        member = torch.zeros(n, n_c, dtype=torch.double)
        member[torch.arange(n), code] = 1.0
        v, size, n = v @ member, member.sum(0), n_c  # per-cluster sums and sizes
    counts = resample_counts(bootstrap_draws(n, n_boot, seed))
    if size is None:
        return v @ counts.T / n
    return (v @ counts.T) / (counts @ size)[None]


def bootstrap_intervals(
    values: Float[Tensor, "k item"], n_boot: int = 2000, level: float = 0.95, seed: int = 0,
    clusters: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Percentile bootstrap intervals ``(low [k], high [k])`` of the mean of each row of
    ``values`` (the rows resampled together, by item or by ``clusters``, see
    :func:`bootstrap_means`); for paired differences pass ``after - before`` row by row."""
    n_boot, level = check_bootstrap(n_boot, level)
    return percentile_interval(bootstrap_means(values, n_boot=n_boot, seed=seed, clusters=clusters), level)


def bootstrap_ci(
    values: Float[Tensor, "item"], n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one number per item; for a paired
    difference pass ``after - before`` on the same items): ``n_boot`` resamples of the items
    with replacement, seeded by ``seed``.  Returns ``(low, high)``; the interval of one row of
    :func:`bootstrap_intervals`."""
    v = torch.as_tensor(values).reshape(-1).double().cpu()
    if v.numel() == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    lo, hi = bootstrap_intervals(v[None], n_boot=n_boot, level=level, seed=seed)
    return float(lo[0]), float(hi[0])
