"""All task metrics, in one place (pure maths on logits; running a model to get them is
:mod:`mechtrunc.evaluation`'s job).

Given the logits at each read item of a :class:`~mechtrunc.prompts.PromptSet`:

- ``accuracy``: the answer is the top-1 token (the paper's toy metric);
- ``p_answer``: mean probability of the answer;
- ``p_{name}``: mean probability of each competitor (``p_noise``, ``p_the``, ``p_subject``);
- ``acc_vs_{name}``: fraction of items whose answer logit beats that competitor's;
- ``logit_diff_{name}``: mean logit(answer) - logit(competitor);
- ``loss``: mean cross-entropy of the answer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from mechtrunc.prompts import PromptSet

__all__ = ["metrics_from_logits", "item_metrics", "masked_cross_entropy"]


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
