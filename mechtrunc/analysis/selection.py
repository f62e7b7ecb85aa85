"""Held-out selection of a truncation, with paired bootstrap intervals.

Choosing the best of many configurations on a prompt set and reporting its gain on the same
prompts is biased upward: on a grid where no configuration changes anything, the maximum of the
noisy means is still above the full model's.  Here a configuration is chosen on one part of the
prompts (*select*) and reported on the other (*eval*), with intervals that cost no extra forward
pass.

- :func:`split_prompts` / :func:`split_sequences`: a seeded split of the sequences into a select
  and an eval part, **grouped**: sequences sharing a group value stay on one side.  Default
  groups: the IOI template (``meta["template"]``) when the prompt set has one, else each
  sequence is its own group (so the items of one sequence, e.g. the toy's repeated triggers,
  stay together).  Default fraction: half the sequences select (:data:`DEFAULT_SELECT`).
- :func:`item_table`: per-item metric values of the baseline and every truncation (one row per
  configuration and item), from one :func:`mechtrunc.core.engine.run_grid` pass (``items=True``):
  the per-item values the engine's means are taken over.
- :func:`change_intervals`: per metric, the change of an intervention on the same items with a
  paired percentile bootstrap interval (the same resampled items for both runs; the difference
  has its own interval).  :func:`mechtrunc.core.metrics.bootstrap_intervals` does a whole grid in one
  matrix product.
- :func:`choose_configuration`: the best configuration of a per-configuration table, within a
  collateral budget (e.g. at most :data:`DEFAULT_BUDGET` = 0.1 nats more loss on reference
  text); the baseline when nothing beats the full model.
- :func:`heldout_choice` (model-free, on an item table) and :func:`heldout_selection` (a model,
  prompts and truncations): choose on the select part, report the choice on both parts with the
  paired intervals of its change against the full model.  Default metric: ``p_answer``
  (:data:`HELDOUT_METRIC`): flattening the output brings it down to ``1 / vocabulary``, while
  a logit difference or the loss against a competitor can be "improved" that way.
- :func:`best_within_budget`: the one rule of every choice under a collateral budget (here and
  in :func:`mechtrunc.studies.compose_search`): the best candidate by the metric among those
  whose collateral rises by at most the budget, the baseline when none beats it.

**What protects the model is the collateral budget, not the metric.**  ``p_answer`` alone does
not: an edit can raise P(answer) on the task's prompts while it breaks the model on other text
(e.g. one that suppresses a frequent competitor such as " the" everywhere, which raises the
task's answer and the loss on ordinary text together).  Give a ``collateral`` (e.g. the loss on
reference text, :func:`text_prompts`) and a ``budget`` whenever the model must stay usable: the
choice is then the best configuration *within* the budget, and a selection without a
collateral says so.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from mechtrunc.core.metrics import bootstrap_intervals
from mechtrunc.core.prompts import PromptSet
from mechtrunc.core.results import LOWER_IS_BETTER, P_ANSWER

__all__ = [
    "DEFAULT_SELECT", "DEFAULT_BUDGET", "DEFAULT_N_BOOT", "HELDOUT_METRIC", "ITEM_COLUMNS", "PARTS",
    "sequence_groups", "split_sequences", "split_prompts", "item_table", "change_intervals",
    "best_within_budget", "choose_configuration", "heldout_choice", "table_change_intervals", "heldout_selection",
    "next_token_prompts", "text_prompts",
]

#: the fraction of sequences (by group) in the select part
DEFAULT_SELECT = 0.5
#: the default collateral budget: at most this increase of the collateral (nats of loss)
DEFAULT_BUDGET = 0.1
#: bootstrap resamples of the intervals
DEFAULT_N_BOOT = 1000
#: the metric a held-out selection maximises by default: P(answer) cannot be raised by
#: flattening the output (but can by an edit that breaks the model elsewhere: give a collateral)
HELDOUT_METRIC = P_ANSWER
#: the descriptor columns of an :func:`item_table` (then one column per metric)
ITEM_COLUMNS = ("config", "baseline", "layer", "matrix", "keep", "rank", "max_rank", "identity", "intervention",
                "path", "item", "sequence")
#: the parts of a held-out selection, in report order
PARTS = ("select", "eval")


# --- the split -------------------------------------------------------------------------------


def sequence_groups(prompts: PromptSet, groups=None) -> tuple[list, str]:
    """``(one group label per sequence, what the groups are)``.  ``groups``: None (the IOI
    template ``meta["template"]`` when present, else one group per sequence), ``"sequence"``
    (one group per sequence), a ``meta`` key holding one value per sequence, or a list of one
    label per sequence."""
    n = prompts.n_sequences
    if groups is None:
        groups = "template" if _per_sequence(prompts.meta.get("template"), n) else "sequence"
    if isinstance(groups, str):
        if groups == "sequence":
            return list(range(n)), "sequence"
        if groups not in prompts.meta:
            have = [k for k, v in prompts.meta.items() if _per_sequence(v, n)]
            raise ValueError(f"group key {groups!r} is not in the prompt set's meta; per-sequence keys there: "
                             f"{', '.join(map(repr, have)) or 'none'} (or 'sequence': one group per sequence)")
        labels = prompts.meta[groups]
        if not _per_sequence(labels, n):
            raise ValueError(f"meta[{groups!r}] must hold one value per sequence ({n}), got "
                             f"{len(labels) if hasattr(labels, '__len__') else type(labels).__name__}")
        return list(labels), groups
    labels = groups.tolist() if hasattr(groups, "tolist") else list(groups)
    if len(labels) != n:
        raise ValueError(f"groups must give one label per sequence ({n}), got {len(labels)}")
    return labels, "given"


def _per_sequence(value, n: int) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == n


def split_sequences(prompts: PromptSet, select: float = DEFAULT_SELECT, seed: int = 0,
                    groups=None) -> tuple[Tensor, Tensor]:
    """``(select_sequences, eval_sequences)``: sorted sequence indices of the two parts.  The
    groups (see :func:`sequence_groups`) are shuffled with ``seed`` and the first ones go to the
    select part, as many as bring it closest to ``select`` of the sequences (at least one group
    on each side).  Disjoint, covering every sequence, and seeded."""
    if isinstance(select, bool) or not isinstance(select, (int, float, np.floating)) or not 0.0 < float(select) < 1.0:
        raise ValueError(f"select must be a fraction in (0, 1) (the select part's share of the sequences), "
                         f"got {select!r}")
    labels, name = sequence_groups(prompts, groups)
    keys = {}
    for lab in labels:
        keys.setdefault(lab, len(keys))
    code = np.array([keys[lab] for lab in labels], dtype=np.int64)
    n_groups = len(keys)
    if n_groups < 2:
        raise ValueError(f"cannot split {prompts.n_sequences} sequence(s) in {n_groups} group(s) by {name!r}: "
                         "a side would be left empty; give more sequences or other groups")
    sizes = np.bincount(code, minlength=n_groups)
    order = np.random.default_rng(int(seed)).permutation(n_groups)
    cum = np.cumsum(sizes[order])[:-1]  # select takes the first k groups, 1 <= k <= n_groups - 1
    k = int(np.argmin(np.abs(cum - float(select) * len(labels)))) + 1
    in_select = np.isin(code, order[:k])
    return (torch.from_numpy(np.flatnonzero(in_select)), torch.from_numpy(np.flatnonzero(~in_select)))


def split_prompts(prompts: PromptSet, select: float = DEFAULT_SELECT, seed: int = 0,
                  groups=None) -> tuple[PromptSet, PromptSet]:
    """``(select_part, eval_part)`` of ``prompts`` (see :func:`split_sequences`: seeded,
    grouped by the IOI template by default, disjoint, every sequence in one part).  Each part's
    ``meta["split"]`` records ``part, select, seed, groups`` and its sequence indices in
    ``prompts``."""
    if not isinstance(prompts, PromptSet):
        raise TypeError(f"prompts must be a PromptSet, got {type(prompts).__name__}")
    sel, ev = split_sequences(prompts, select, seed, groups)
    name = sequence_groups(prompts, groups)[1]
    parts = []
    for part, idx in zip(PARTS, (sel, ev)):
        ps = prompts.subset_sequences(idx)
        ps.meta["split"] = {"part": part, "select": float(select), "seed": int(seed), "groups": name,
                            "sequences": idx.tolist()}
        parts.append(ps)
    return parts[0], parts[1]


def next_token_prompts(tokens: Tensor) -> PromptSet:
    """Every next-token prediction of ``tokens [seq, pos]`` as items (position ``p`` reads
    token ``p + 1``; no competitors): the collateral of a held-out selection, whose mean
    ``loss`` is the language-modelling loss on that text."""
    tokens = torch.as_tensor(tokens).long()
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [seq, pos] with at least 2 positions, got shape {tuple(tokens.shape)}")
    n_seq, n_pos = tokens.shape
    rows = torch.arange(n_seq).repeat_interleave(n_pos - 1)
    pos = torch.arange(n_pos - 1).repeat(n_seq)
    return PromptSet(tokens=tokens, rows=rows, pos=pos, answer=tokens[rows, pos + 1],
                     competitors=torch.zeros(len(rows), 0, dtype=torch.long), competitor_names=())


def text_prompts(text: str, tokenizer, ctx: int = 64, max_windows: int = 64) -> PromptSet:
    """:func:`next_token_prompts` of ``text`` tokenized with ``tokenizer`` and cut into at most
    ``max_windows`` windows of ``ctx`` tokens (reference text for a collateral loss)."""
    ids = tokenizer(text)["input_ids"]
    n = min(max_windows, len(ids) // ctx)
    if n < 1:
        raise ValueError(f"the reference text has {len(ids)} tokens: fewer than one window of {ctx}")
    return next_token_prompts(torch.tensor(ids[: n * ctx]).reshape(n, ctx))


# --- per-item values -------------------------------------------------------------------------


def item_table(model, prompts: PromptSet, truncations: Iterable, metrics: Sequence[str] | None = None,
               batch_size: int = 256, svd_cache: str | os.PathLike | None = None, progress: bool = False):
    """Per-item values of the full model and every truncation (``mechtrunc.Truncate`` with
    one keep or rank each, ``svd="exact"``) on ``prompts``: a DataFrame with one row per
    (configuration, item) and columns :data:`ITEM_COLUMNS` (``config`` 0 is the baseline; the
    others in the order the grid engine yields them; ``sequence`` is the item's sequence) then
    ``metrics`` (default: every per-item metric of :func:`mechtrunc.core.metrics.item_metrics`).
    One :func:`mechtrunc.core.engine.run_grid` pass: the means of a configuration's rows are its
    row of :func:`mechtrunc.studies.truncation_study`."""
    import pandas as pd

    from mechtrunc.core.engine import run_grid

    frames = []
    n = len(prompts)
    item = np.arange(n)
    seq = prompts.rows.cpu().numpy()
    for cid, r in enumerate(run_grid(model, prompts, list(truncations), batch_size=batch_size, svd_cache=svd_cache,
                                     progress=progress, items=True)):
        names = list(r.items) if metrics is None else list(metrics)
        missing = [m for m in names if m not in r.items]
        if missing:
            raise ValueError(f"unknown per-item metric(s) {', '.join(map(repr, missing))}; "
                             f"valid: {', '.join(r.items)}")
        frame = {"config": cid, "baseline": r.baseline, "layer": r.layer, "matrix": r.matrix, "keep": r.keep,
                 "rank": r.rank, "max_rank": r.max_rank, "identity": r.identity,
                 "intervention": "full" if r.baseline else r.truncation.label, "path": r.path,
                 "item": item, "sequence": seq}
        frame.update({m: r.items[m].double().numpy() for m in names})
        frames.append(pd.DataFrame(frame))
    df = pd.concat(frames, ignore_index=True)
    for col in ("layer", "rank", "max_rank"):
        df[col] = df[col].astype("Int64")
    df["keep"] = df["keep"].astype("float64")
    return df


def _matrix(items, metric: str) -> tuple[np.ndarray, "object"]:
    """``(values [config, item], configs)``: one row per configuration of an item table, the
    configurations' descriptor rows (a DataFrame indexed by ``config``)."""
    if metric not in items.columns or metric in ITEM_COLUMNS:
        raise ValueError(f"unknown metric {metric!r}; metrics in this item table: "
                         f"{', '.join(c for c in items.columns if c not in ITEM_COLUMNS)}")
    wide = items.pivot(index="config", columns="item", values=metric).sort_index()
    if wide.isna().to_numpy().any():
        raise ValueError("the item table does not hold every item for every configuration")
    desc = [c for c in ITEM_COLUMNS if c in items.columns and c not in ("item", "sequence")]
    configs = items.drop_duplicates("config").set_index("config")[[c for c in desc if c != "config"]].sort_index()
    return wide.to_numpy(dtype=np.float64), configs


# --- intervals and the choice ----------------------------------------------------------------


def change_intervals(before: Mapping[str, Tensor], after: Mapping[str, Tensor], metrics: Sequence[str],
                     n_boot: int = DEFAULT_N_BOOT, level: float = 0.95, seed: int = 0, clusters=None):
    """Per metric of ``metrics``: the mean of the per-item values ``before`` (``full``) and
    ``after`` (``intervened``) on the same items, the ``change`` and its paired percentile
    bootstrap interval (``ci_low``, ``ci_high``: the same resampled items for both), with
    ``n_items``, ``n_boot`` and ``level``.  ``clusters`` (one id per item, e.g. the prompts'
    ``rows``): resample whole clusters (all items of a sequence together) instead of items."""
    import pandas as pd

    unknown = [m for m in metrics if m not in before or m not in after]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; metrics of these prompts: {', '.join(before)}")
    if not metrics:
        return pd.DataFrame(columns=["metric", "full", "intervened", "change", "ci_low", "ci_high", "n_items",
                                     "n_boot", "level"])
    b = torch.stack([torch.as_tensor(before[m]).reshape(-1).cpu() for m in metrics])
    a = torch.stack([torch.as_tensor(after[m]).reshape(-1).cpu() for m in metrics])
    diff = (a - b).double()  # the difference in the values' own precision, as bootstrap_ci(after - before)
    lo, hi = bootstrap_intervals(diff, n_boot=n_boot, level=level, seed=seed,
                                 clusters=None if clusters is None else torch.as_tensor(clusters).reshape(-1).cpu())
    return pd.DataFrame({"metric": list(metrics), "full": b.double().mean(1).numpy(),
                         "intervened": a.double().mean(1).numpy(), "change": diff.mean(1).numpy(),
                         "ci_low": lo.numpy(), "ci_high": hi.numpy(),
                         "n_items": b.shape[1], "n_boot": n_boot, "level": level})


def table_change_intervals(table, items, metric: str, n_boot: int = DEFAULT_N_BOOT, level: float = 0.95,
                           seed: int = 0):
    """Per row of a truncation-study ``table``: the change of ``metric`` against the full model
    on the same items and its paired percentile bootstrap interval, from the study's per-item
    side table ``items`` (:func:`mechtrunc.studies.read_items`; rows matched by baseline /
    layer, matrix, keep).  Whole sequences are resampled (the item bootstrap when each sequence
    has one item), the same draws for every row (one matrix product for the grid), ``n_boot``
    resamples, seeded.  A DataFrame aligned with ``table`` (``change, ci_low, ci_high``; NaN for
    a row without items) with ``attrs`` ``n_boot, level, seed, n_items, n_sequences``; None when
    the side table lacks the baseline or an item."""
    import pandas as pd

    from mechtrunc.core.results import keep_key

    key = lambda r: ("baseline",) if bool(r["baseline"]) else (int(r["layer"]), str(r["matrix"]), keep_key(r["keep"]))
    configs = items.drop_duplicates("config").set_index("config")
    by_key = {key(r): c for c, r in configs.iterrows()}
    wide = items.pivot(index="config", columns="item", values=metric).sort_index()
    if ("baseline",) not in by_key or wide.isna().to_numpy().any():
        return None
    seq = items[items["config"] == wide.index[0]].sort_values("item")["sequence"].to_numpy()
    vals = wide.to_numpy(dtype=np.float64)
    pos = {c: i for i, c in enumerate(wide.index)}
    diff = vals - vals[pos[by_key[("baseline",)]]][None]
    lo, hi = bootstrap_intervals(torch.from_numpy(diff), n_boot=n_boot, level=level, seed=seed,
                                 clusters=torch.from_numpy(np.array(seq, dtype=np.int64)))
    change, low, high = [], [], []
    for r in table.to_dict("records"):
        c = by_key.get(key(r))
        i = None if c is None else pos[c]
        change.append(float("nan") if i is None else float(diff[i].mean()))
        low.append(float("nan") if i is None else float(lo[i]))
        high.append(float("nan") if i is None else float(hi[i]))
    out = pd.DataFrame({"change": change, "ci_low": low, "ci_high": high}, index=table.index)
    out.attrs.update({"n_boot": int(n_boot), "level": float(level), "seed": int(seed), "n_items": int(vals.shape[1]),
                      "n_sequences": int(len(np.unique(seq)))})
    return out


def best_within_budget(scores, collateral=None, budget: float | None = None, *, base_score: float,
                       base_collateral: float | None = None, min_gain: float = 0.0) -> tuple[int | None, list]:
    """The one rule of a choice under a collateral budget: among candidates that beat
    ``base_score`` by more than ``min_gain`` (higher is better: negate the scores of a
    lower-is-better metric), the best by score whose collateral (lower is better) rises by at
    most ``budget`` over ``base_collateral``; a NaN score or collateral never qualifies.

    ``scores``: one per candidate.  ``collateral``: None (no budget), a sequence of one value
    per candidate, or a callable ``i -> value`` called only on the candidates visited: they are
    visited best first (ties: the first in order) until one fits, so a costly collateral is
    measured only as far as needed and the answer is the same as with every value known.
    ``budget`` None: no budget (the best candidate that gains).

    Returns ``(index or None, refused)``: the chosen candidate (None: none gains within the
    budget, keep the baseline) and ``[(index, collateral_increase), ...]`` of the better
    candidates refused by the budget, best first."""
    if budget is not None and collateral is None:
        raise ValueError("a collateral budget needs a collateral to measure it on")
    score = np.asarray(scores, dtype=np.float64).reshape(-1)
    value = collateral if collateral is None or callable(collateral) else \
        np.asarray(collateral, dtype=np.float64).reshape(-1).__getitem__
    refused = []
    for i in np.argsort(-score, kind="stable"):
        i = int(i)
        if not score[i] - float(base_score) > float(min_gain):  # NaN scores sort last and stop here too
            break
        if budget is None:
            return i, refused
        increase = float(value(i)) - float(base_collateral)
        if increase <= float(budget):  # False for NaN
            return i, refused
        refused.append((i, increase))
    return None, refused


def choose_configuration(table, metric: str = HELDOUT_METRIC, higher_is_better: bool | None = None,
                         collateral: str | None = None, budget: float | None = None) -> dict:
    """The best row of a per-configuration table (one ``baseline`` row and configuration rows,
    e.g. a :func:`mechtrunc.studies.truncation_study` table) by ``metric``, among the
    non-identity configurations whose ``collateral`` column (lower is better, e.g. the loss on
    reference text) rises by at most ``budget`` over the baseline's (None: no budget); the
    baseline row when none beats the full model.  Ties go to the first row.  Returns the row as
    a dict plus ``gain`` (its metric's improvement over the baseline, >= 0) and
    ``collateral_increase`` (NaN without a collateral)."""
    if metric not in table.columns:
        raise ValueError(f"unknown metric {metric!r}; columns: {', '.join(map(str, table.columns))}")
    if collateral is not None and collateral not in table.columns:
        raise ValueError(f"unknown collateral column {collateral!r}; columns: {', '.join(map(str, table.columns))}")
    if budget is not None and collateral is None:
        raise ValueError("a collateral budget needs a collateral to measure it on")
    higher = metric not in LOWER_IS_BETTER if higher_is_better is None else bool(higher_is_better)
    is_base = table["baseline"].astype(bool)
    if is_base.sum() != 1:
        raise ValueError(f"the table must hold one baseline row, it holds {int(is_base.sum())}")
    base = table[is_base].iloc[0]
    ident = table["identity"].astype(bool) if "identity" in table.columns else False
    cand = table[~is_base & ~ident & table[metric].notna()]
    sign = 1.0 if higher else -1.0
    within = budget is not None and collateral is not None
    pick, _ = best_within_budget((cand[metric] * sign).to_numpy(), cand[collateral].to_numpy() if within else None,
                                 budget if within else None, base_score=sign * float(base[metric]),
                                 base_collateral=float(base[collateral]) if within else None)
    best = base if pick is None else cand.iloc[pick]
    return best.to_dict() | {
        "gain": float(sign * (best[metric] - base[metric])),
        "collateral_increase": float(best[collateral] - base[collateral]) if collateral is not None else float("nan"),
    }


def heldout_choice(items, metric: str = HELDOUT_METRIC, select_sequences=None, *, select: float = DEFAULT_SELECT,
                   seed: int = 0, higher_is_better: bool | None = None, collateral: Mapping | None = None,
                   budget: float | None = None, n_boot: int = DEFAULT_N_BOOT, level: float = 0.95,
                   boot_seed: int | None = None):
    """Held-out selection on an :func:`item_table` (model-free): choose the configuration with
    the best mean ``metric`` on the select part's items (within ``budget`` of ``collateral``,
    ``{config: value}``, lower is better; default budget :data:`DEFAULT_BUDGET` when a
    collateral is given), then report it on both parts.

    ``select_sequences``: the select part's sequence ids (the ``sequence`` column); None: a
    seeded split of the sequences (one group each) with ``select`` of them, seed ``seed``.

    Returns a DataFrame, one row per part (:data:`PARTS`: ``select`` is in-sample, biased
    upward; ``eval`` is the held-out estimate), with the chosen configuration's descriptors,
    ``metric``, ``full`` and ``truncated`` means, ``change`` (truncated - full) and its paired
    bootstrap interval ``ci_low``, ``ci_high`` over that part's items only (``n_boot``
    resamples of the part's sequences, all items of a sequence together: the item bootstrap
    when each sequence has one item; ``level``; seeded by ``boot_seed``, default ``seed``), ``n_items``,
    ``n_sequences`` and the collateral's ``collateral_full``, ``collateral_truncated``,
    ``collateral_change`` and ``budget``.  ``attrs``: ``metric, n_boot, level, seed,
    n_configurations, chosen`` (the chosen row of the select part's table)."""
    import pandas as pd

    values, configs = _matrix(items, metric)
    seq_of_item = items[items["config"] == configs.index[0]].sort_values("item")["sequence"].to_numpy()
    if select_sequences is None:
        n_seq = int(seq_of_item.max()) + 1
        fake = PromptSet(tokens=torch.zeros(n_seq, 1, dtype=torch.long), rows=torch.arange(n_seq),
                         pos=torch.zeros(n_seq, dtype=torch.long), answer=torch.zeros(n_seq, dtype=torch.long),
                         competitors=torch.zeros(n_seq, 1, dtype=torch.long))
        select_sequences = split_sequences(fake, select, seed)[0].numpy()
    in_sel = np.isin(seq_of_item, np.asarray(select_sequences))
    if in_sel.all() or not in_sel.any():
        raise ValueError(f"the select part holds {int(in_sel.sum())} of {len(in_sel)} items: a side is empty")
    if configs["baseline"].astype(bool).sum() != 1:
        raise ValueError("the item table must hold exactly one baseline configuration")
    if collateral is not None and budget is None:
        budget = DEFAULT_BUDGET
    if budget is not None and collateral is None:
        raise ValueError("a collateral budget needs a collateral (a value per configuration) to measure it on")
    table = configs.copy()
    table[metric] = values[:, in_sel].mean(1)
    coll_name = None
    if collateral is not None:
        missing = [c for c in table.index if c not in collateral]
        if missing:
            raise ValueError(f"collateral lacks configuration(s) {missing[:5]}")
        coll_name = "collateral"
        table[coll_name] = [float(collateral[c]) for c in table.index]
    chosen = choose_configuration(table.reset_index(), metric, higher_is_better, coll_name, budget)
    cid = int(chosen["config"])
    base_id = int(configs.index[configs["baseline"].astype(bool)][0])
    row_of = {c: i for i, c in enumerate(configs.index)}
    boot_seed = seed if boot_seed is None else boot_seed
    rows = []
    for part, mask in zip(PARTS, (in_sel, ~in_sel)):
        full, trunc = values[row_of[base_id], mask], values[row_of[cid], mask]
        lo, hi = bootstrap_intervals(torch.from_numpy(trunc - full)[None], n_boot=n_boot, level=level, seed=boot_seed,
                                     clusters=torch.from_numpy(seq_of_item[mask]))
        desc = {k: chosen[k] for k in configs.columns}
        rows.append({"part": part, "config": cid, **desc, "metric": metric, "full": float(full.mean()),
                     "truncated": float(trunc.mean()), "change": float((trunc - full).mean()),
                     "ci_low": float(lo[0]), "ci_high": float(hi[0]), "level": level, "n_boot": n_boot,
                     "n_items": int(mask.sum()), "n_sequences": int(len(np.unique(seq_of_item[mask]))),
                     "collateral_full": float(collateral[base_id]) if collateral is not None else float("nan"),
                     "collateral_truncated": float(collateral[cid]) if collateral is not None else float("nan"),
                     "collateral_change": chosen["collateral_increase"],
                     "budget": float("nan") if budget is None else float(budget)})
    out = pd.DataFrame(rows)
    out.attrs.update({"metric": metric, "n_boot": n_boot, "level": level, "seed": seed,
                      "n_configurations": int((~configs["baseline"].astype(bool)).sum()), "chosen": chosen})
    return out


def heldout_selection(model, prompts: PromptSet, truncations: Iterable, metric: str = HELDOUT_METRIC,
                      select: float = DEFAULT_SELECT, seed: int = 0, collateral: PromptSet | Callable | None = None,
                      budget: float | None = None, n_boot: int = DEFAULT_N_BOOT, *, groups=None,
                      level: float = 0.95, higher_is_better: bool | None = None, batch_size: int = 256,
                      svd_cache: str | os.PathLike | None = None, progress: bool = False):
    """Choose a truncation on the select part of ``prompts`` and report it on the eval part.

    Splits the sequences with :func:`split_sequences` (``select``, ``seed``, ``groups``: by
    default the IOI template when there is one), runs the baseline and every truncation once on
    all prompts (:func:`item_table`: the intervals need no extra forward pass), picks the best
    mean ``metric`` on the select part (default ``p_answer``) among the configurations whose
    ``collateral`` rises by at most ``budget`` (default :data:`DEFAULT_BUDGET` = 0.1 when a
    collateral is given; without a collateral nothing bounds what the choice costs elsewhere,
    see the module docstring), and returns
    :func:`heldout_choice`'s table: the choice's ``change`` against the full model on the
    ``select`` (in-sample) and ``eval`` (held-out) parts, each with a paired bootstrap interval
    over that part's items (``n_boot`` resamples, ``level``).

    ``collateral``: a :class:`~mechtrunc.core.prompts.PromptSet` (its mean ``loss`` per configuration,
    e.g. next-token items of reference text; one more engine pass) or a callable
    ``f(truncate_or_None) -> float`` (lower is better; None is the full model; called once per
    configuration, e.g. ``lambda iv: corpus_loss(model, tokens, *([iv] if iv else []))``).
    ``attrs`` also hold ``groups`` and ``seconds_bootstrap`` (time spent choosing and
    bootstrapping, the rest is the forward passes)."""
    import time

    if not isinstance(prompts, PromptSet):
        raise TypeError(f"prompts must be a PromptSet, got {type(prompts).__name__}")
    truncations = list(truncations)
    sel_seq, _ = split_sequences(prompts, select, seed, groups)  # bad split values raise before any forward
    if budget is not None and collateral is None:
        raise ValueError("a collateral budget needs a collateral (a PromptSet or a callable) to measure it on")
    items = item_table(model, prompts, truncations, metrics=[metric], batch_size=batch_size, svd_cache=svd_cache,
                       progress=progress)
    coll = None
    if collateral is not None:
        configs = items.drop_duplicates("config").set_index("config")
        if isinstance(collateral, PromptSet):
            c_items = item_table(model, collateral, truncations, metrics=["loss"], batch_size=batch_size,
                                 svd_cache=svd_cache)
            means = c_items.groupby("config")["loss"].mean()
            coll = {int(c): float(means[c]) for c in configs.index}
        elif callable(collateral):
            by_label = {t.label: t for t in truncations}
            coll = {int(c): float(collateral(None if r["baseline"] else by_label[r["intervention"]]))
                    for c, r in configs.iterrows()}
        else:
            raise TypeError(f"collateral must be a PromptSet or a callable, got {type(collateral).__name__}")
    t0 = time.perf_counter()
    out = heldout_choice(items, metric, sel_seq.numpy(), seed=seed, higher_is_better=higher_is_better,
                         collateral=coll, budget=budget, n_boot=n_boot, level=level)
    out.attrs["seconds_bootstrap"] = time.perf_counter() - t0
    out.attrs["groups"] = sequence_groups(prompts, groups)[1]
    out.attrs["select"] = float(select)
    return out
