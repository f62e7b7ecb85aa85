"""All task metrics, in one place.

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

from mechtrunc.interventions import Intervention
from mechtrunc.prompts import PromptSet
from mechtrunc.runner import item_logits

__all__ = ["metrics_from_logits", "item_metrics", "evaluate", "sweep", "masked_cross_entropy"]


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


def evaluate(
    model, prompts: PromptSet, *interventions: Intervention, batch_size: int = 64, label: str | None = None,
    weights: Tensor | None = None,
) -> pd.DataFrame:
    """One-row DataFrame of metrics on ``prompts`` with the interventions active (``weights``:
    optional per-item weights, see :func:`metrics_from_logits`)."""
    import pandas as pd  # (here, not at the top: the grid engine and the CLI's startup avoid it)

    logits = item_logits(model, prompts, *interventions, batch_size=batch_size)
    row = metrics_from_logits(logits, prompts, weights=weights)
    name = label if label is not None else (" + ".join(iv.label for iv in interventions) or "full")
    return pd.DataFrame([{"variant": name, **row}])


def sweep(
    model, prompts: PromptSet, interventions, batch_size: int = 64, progress: bool = False
) -> pd.DataFrame:
    """Evaluate each entry of ``interventions`` (an Intervention, or a list/tuple of them applied
    together; ``None`` or ``()`` is the unmodified model): one row each, with the entry's
    :meth:`~mechtrunc.interventions.Intervention.describe` columns (kind, layer, matrix, keep...)
    next to the metrics.  For resumable LASER grids on large models see
    :func:`mechtrunc.studies.truncation_study`."""
    import pandas as pd

    entries = list(interventions)
    if progress:
        from tqdm.auto import tqdm

        entries = tqdm(entries, desc="sweep", unit="config")
    rows = []
    for entry in entries:
        ivs = () if entry is None else (tuple(entry) if isinstance(entry, (list, tuple)) else (entry,))
        row = evaluate(model, prompts, *ivs, batch_size=batch_size)
        desc = ivs[0].describe() if len(ivs) == 1 else {"intervention": row["variant"].iloc[0]}
        rows.append(row.assign(**{k: [v] for k, v in desc.items() if k != "intervention"}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def masked_cross_entropy(
    logits: Float[Tensor, "batch pos vocab"], targets: Tensor, mask: Tensor
) -> Tensor:
    """Mean cross-entropy over the positions where ``mask`` is true (the training loss)."""
    return F.cross_entropy(logits[mask].float(), targets[mask])
