"""Measurements shared by the two systems: the induction score of a head, the first step a
history column crosses a threshold (and the first step from which a condition holds for good,
which the language-model study and the circuit study also use), and the order of learning of the
feed-forward (generic) and in-context associations.  Used by the minimal model (:mod:`mechtrunc.studies.dynamics.minimal`) and the
toy Transformer (:mod:`mechtrunc.studies.dynamics.toy`)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from mechtrunc._checks import check_choice, check_int
from mechtrunc.core.adapters import adapt
from mechtrunc.tasks.recall import RecallBatch, RecallTask

__all__ = ["first_step", "first_for_good", "order_of_learning", "learning_events", "EVENT_CRITERIA", "induction_score",
           "SELECTION_SEED_OFFSET", "selection_set"]

#: the selection batch's seed is the run's seed plus this (the clean test set's is seed + 10000)
SELECTION_SEED_OFFSET = 20_000

#: the criteria of :func:`learning_events`
EVENT_CRITERIA = ("default", "probability", "argmax")


# ----------------------------------------------------------------------------------------
# order of learning
# ----------------------------------------------------------------------------------------
def first_step(history: pd.DataFrame, column: str, threshold: float, step_column: str = "step") -> float:
    """The first ``step`` at which ``history[column] >= threshold`` (NaN if never)."""
    if column not in history.columns:
        raise ValueError(f"history has no column {column!r}; columns: {', '.join(map(str, history.columns))}")
    hit = history.loc[history[column] >= threshold, step_column]
    return float(hit.iloc[0]) if len(hit) else float("nan")


def first_for_good(steps, holds, never: float = math.nan):
    """The first of ``steps`` from which ``holds`` is true at every later step: ``steps``
    ascending (1-D), ``holds [..., step]`` booleans (one row, or e.g. one row per bootstrap
    draw).  Returns a float for one row, else a float array of the leading shape; ``never``
    (NaN, or e.g. ``inf`` to rank the draws) where ``holds`` is false at the last step."""
    steps, holds = np.asarray(steps), np.asarray(holds, dtype=bool)
    if steps.ndim != 1 or holds.ndim < 1 or holds.shape[-1] != len(steps):
        raise ValueError(f"holds must end in one entry per step ({len(np.atleast_1d(steps))} steps), "
                         f"got shape {holds.shape}")
    if not len(steps):
        first = np.full(holds.shape[:-1], float(never))
    else:
        later_bad = np.flip(np.cumsum(np.flip(~holds, -1), -1), -1)  # false entries at or after each step
        ok = later_bad == 0
        first = np.where(ok.any(-1), steps[np.argmax(ok, -1)].astype(float), float(never))
    return float(first) if first.ndim == 0 else first


def order_of_learning(
    history: pd.DataFrame, alpha: float, noise_column: str = "full_p_noise",
    icl_column: str = "ff_removed_accuracy", icl_threshold: float = 0.5,
) -> dict:
    """``step_noise``: first step where P(noise) of the full model reaches ``alpha / 2``;
    ``step_icl``: first step where the in-context answer (the model with its FF removed) reaches
    accuracy ``icl_threshold``; ``ff_first``: ``step_noise < step_icl`` (a run that never
    learns the in-context answer counts as FF-first if it learned the noise).  For the toy
    Transformer pass ``icl_column="last_ffn_removed_accuracy"``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    h = history.sort_values("step")
    s_noise = first_step(h, noise_column, alpha / 2)
    s_icl = first_step(h, icl_column, icl_threshold)
    ff_first = (not math.isnan(s_noise)) and (math.isnan(s_icl) or s_noise < s_icl)
    return {"step_noise": s_noise, "step_icl": s_icl, "ff_first": bool(ff_first),
            "noise_threshold": alpha / 2, "icl_threshold": icl_threshold}


def learning_events(history: pd.DataFrame, alpha: float, criterion: str = "default") -> dict:
    """The step at which the FF's generic association (``step_ff``) and attention's in-context
    answer (``step_attn``) are learned, under one of three criteria (columns of
    :func:`mechtrunc.studies.dynamics.train_minimal`'s history, clean test sequences):

    - ``"default"``: today's pair (:func:`order_of_learning`): full-model P(noise) >= alpha/2,
      FF-removed argmax accuracy >= 0.5 (a probability for one, an argmax for the other);
    - ``"probability"``: the full model's probability of each target type reaches half its
      asymptote (the Bayes-optimal prediction of the training distribution given a clean
      context: P(noise) = alpha, P(correct) = 1 - alpha): P(noise) >= alpha/2 and
      P(correct) >= (1 - alpha)/2;
    - ``"argmax"``: each memory alone, its target type is the argmax on half the items:
      attention removed, argmax = noise on >= 0.5 of the items; FF removed, accuracy >= 0.5.

    ``ff_first``: ``step_ff < step_attn`` (or the FF's event happened and attention's never)."""
    check_choice("criterion", criterion, EVENT_CRITERIA)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    h = history.sort_values("step")
    col_ff, thr_ff, col_attn, thr_attn = {
        "default": ("full_p_noise", alpha / 2, "ff_removed_accuracy", 0.5),
        "probability": ("full_p_noise", alpha / 2, "full_p_answer", (1 - alpha) / 2),
        "argmax": ("attn_removed_argmax_noise", 0.5, "ff_removed_accuracy", 0.5),
    }[criterion]
    s_ff, s_attn = first_step(h, col_ff, thr_ff), first_step(h, col_attn, thr_attn)
    ff_first = (not math.isnan(s_ff)) and (math.isnan(s_attn) or s_ff < s_attn)
    return {"criterion": criterion, "step_ff": s_ff, "step_attn": s_attn, "ff_first": bool(ff_first),
            "ff_column": col_ff, "ff_threshold": thr_ff, "attn_column": col_attn, "attn_threshold": thr_attn}


# ----------------------------------------------------------------------------------------
# choosing a component on data the evaluation does not see
# ----------------------------------------------------------------------------------------
def selection_set(task: RecallTask, n: int, seed: int) -> RecallBatch:
    """The clean batch on which a component to edit is *chosen* (e.g. the most noise-carrying
    singular component before ``mt.RemoveComponents``), so that the edit is then evaluated on
    sequences that did not choose it: ``task.test_set(n, seed=seed + SELECTION_SEED_OFFSET)``,
    ``seed`` being the run's seed (its clean test set is ``seed + 10000``, training batches come
    from ``seed`` itself).  Used by the minimal model and the toy Transformer alike."""
    n = check_int("n (selection sequences)", n, 1)
    return task.test_set(n, seed=check_int("seed", seed) + SELECTION_SEED_OFFSET)


def _after_trigger_mask(batch: RecallBatch) -> Tensor:
    """[b, p] true at positions whose previous token is one of the sequence's triggers."""
    trig = (batch.inputs.unsqueeze(-1) == batch.triggers.unsqueeze(1)).any(-1)
    return F.pad(trig[:, :-1], (1, 0), value=False)


@torch.no_grad()
def induction_score(model, batch: RecallBatch, layer: int) -> float:
    """Mean attention mass, at every repeated trigger (count >= 2) of ``batch``, that the head(s)
    of ``layer`` put on the positions right after the trigger's earlier occurrences (where the
    answer sits in a clean sequence).  Averaged over heads.  About ``(count - 1) / t`` for a
    uniform pattern, 1 for a perfect induction head."""
    adapter = adapt(model)
    store = {}
    with adapter.hooked(adapter.hook_name("pattern", layer), lambda p: store.__setitem__("p", p.detach())):
        adapter.forward(batch.inputs.to(adapter.device))
    pat = store["p"]
    if pat.ndim == 3:
        pat = pat.unsqueeze(1)  # [b, head, q, k]
    after = _after_trigger_mask(batch).to(pat.device)  # key positions right after a trigger
    # the earlier occurrence must be of the same trigger as the query
    prev_tok = F.pad(batch.inputs[:, :-1], (1, 0), value=-1).to(pat.device)
    rows, pos = batch.loss_mask.nonzero(as_tuple=True)
    q_tok = batch.inputs[rows, pos].to(pat.device)
    keys = (prev_tok[rows] == q_tok[:, None]) & after[rows]  # [item, p]
    mass = (pat[rows.to(pat.device), :, pos.to(pat.device), :] * keys[:, None, :]).sum(-1)  # [item, head]
    return float(mass.mean())
