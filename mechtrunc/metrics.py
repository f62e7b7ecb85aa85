"""All task metrics, in one place (pure maths on logits; running a model to get them is
:mod:`mechtrunc.evaluation`'s job).

Given the logits at each read item of a :class:`~mechtrunc.prompts.PromptSet`:

- ``accuracy``: the answer is the top-1 token (the paper's toy metric);
- ``p_answer``: mean probability of the answer;
- ``p_{name}``: mean probability of each competitor (``p_noise``, ``p_the``, ``p_subject``);
- ``acc_vs_{name}``: fraction of items whose answer logit beats that competitor's;
- ``logit_diff_{name}``: mean logit(answer) - logit(competitor);
- ``loss``: mean cross-entropy of the answer.

:func:`bootstrap_ci` gives a percentile interval of a mean over items (resampling the items), for
a metric or for a paired difference of two runs on the same items.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from mechtrunc.prompts import PromptSet

__all__ = ["metrics_from_logits", "item_metrics", "masked_cross_entropy", "bootstrap_ci"]


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


def metrics_from_logits(
    logits: Float[Tensor, "item vocab"], prompts: PromptSet, weights: Float[Tensor, "item"] | None = None
) -> dict[str, float]:
    """The metric dictionary (see module docstring) for logits at the prompt set's items.
    ``weights`` (one non-negative number per item, normalised here) turns every mean into a
    weighted mean, e.g. the input distribution p(x) of :mod:`mechtrunc.memory`."""
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


def bootstrap_ci(
    values: Float[Tensor, "item"], n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one number per item; for a paired
    difference pass ``after - before`` on the same items): ``n_boot`` resamples of the items
    with replacement, seeded by ``seed``.  Returns ``(low, high)``."""
    v = torch.as_tensor(values).reshape(-1).double().cpu()
    if v.numel() == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(0, v.numel(), (n_boot, v.numel()), generator=gen)
    means = v[idx].mean(1)
    a = (1.0 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([a, 1.0 - a], dtype=torch.double)).tolist()
    return float(lo), float(hi)
