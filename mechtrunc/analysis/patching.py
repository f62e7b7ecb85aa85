"""Causal localisation by patching between a clean and a corrupted prompt set.

- :func:`patching_scan`: activation patching of every (site, layer, head, position group) at
  once, *denoising* (run the corrupted prompts, restore one activation from the clean run) and
  *noising* (run the clean prompts, break one activation with the corrupted run's).  The clean
  and corrupted activations are recorded once; each forward pass then runs many patches, one
  per copy of the prompts stacked in the batch.  One tidy row per patch with the metric and its
  normalised effect ``(value - corrupted) / (clean - corrupted)``: 0 = the corrupted run's
  value, 1 = the clean run's, in both directions.

**When the effect is undefined.**  Normalising divides by the gap ``clean - corrupted``.  When the
gap is not resolved, i.e. its paired bootstrap interval (the same resamples as the effects')
contains zero, or it is exactly zero, a patch's normalised effect says nothing (on a gap of 0.003
a value 0.01 off the corrupted run reads as an effect of 3, with an interval spanning tens):
``effect``, ``effect_low`` and ``effect_high`` are then NaN, ``attrs["normalised"]`` is False, and
the raw values (``value`` against ``clean`` and ``corrupted``) are what to read.  ``attrs`` always
hold the gap and its interval (``gap``, ``gap_low``, ``gap_high``; NaN bounds with ``n_boot=0``,
when only an exact zero makes the effect undefined).
- :func:`path_patch` / :func:`path_patching_scan`: path patching (Wang et al. 2022) restricted to
  the edges this research needs: a sender head's output reaching (a) the logits directly, (b) a
  later layer's MLP input, (c) a later head's query, key or value input, with everything else
  frozen at the target run.  The sender's change of output ``delta = (z_src - z_tgt)[h] @ W_O[h]``
  is added to the receiver's input only (the final residual for the logits; the residual the
  MLP reads; the residual the attention reads, then only the receiver head's q/k/v is replaced),
  and the receiver's new output flows on through the rest of the model.

The position groups of a scan are the roles of a pair built by :mod:`mechtrunc.tasks.corrupt`
(IOI ``io``, ``s1``, ``s2``, ``end``; toy ``trigger1``, ``after1``, ``end``...), or every
absolute position when the prompts carry no roles, plus ``all`` (every position at once).
Patches are :class:`mechtrunc.core.interventions.Patch` values under the hood of the same hooks;
``Patch`` itself works in any evaluation, sweep, attribution or study.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterable

import pandas as pd
import torch
from torch import Tensor

from mechtrunc._checks import check_choice
from mechtrunc._choices import DEFAULT_PATCH_DIRECTION, PATCH_DIRECTIONS, PATCH_LEVEL, SITES
from mechtrunc._progress import progress_bar
from mechtrunc._scalars import as_int
from mechtrunc.core.adapters import ModelAdapter, adapt
from mechtrunc.core.interventions import Intervention, current_rows, intervene, record_activations
from mechtrunc.core.metrics import bootstrap_means, check_bootstrap, check_prompt_metric, item_metrics, percentile_interval
from mechtrunc.core.prompts import PromptSet
from mechtrunc.core.results import PATCHING_COLUMNS
from mechtrunc.core.runner import check_prompts, item_logits

__all__ = ["patching_scan", "path_patch", "path_patching_scan", "raw_change", "largest_moves", "DIRECTIONS",
           "RECEIVERS"]

#: scan directions: run the corrupted prompts and restore (denoising), run the clean ones and break
#: (noising), or both; the default of every scan, path patching included, is DEFAULT_PATCH_DIRECTION
DIRECTIONS = PATCH_DIRECTIONS
#: receivers of a path: the logits, a layer's MLP input, a head's query/key/value input
RECEIVERS = ("logits", "mlp", "q", "k", "v")


def _paired(clean: PromptSet, corrupted) -> PromptSet:
    """``corrupted`` as a prompt set reading the clean items (it may be given as tokens)."""
    if not isinstance(clean, PromptSet):
        raise TypeError(f"clean must be a PromptSet, got {type(clean).__name__}")
    tokens = getattr(corrupted, "tokens", corrupted)
    if not isinstance(tokens, Tensor) or tokens.ndim != 2:
        raise TypeError(f"corrupted must be a PromptSet or a [seq, pos] token tensor, got {type(corrupted).__name__}")
    if tuple(tokens.shape) != tuple(clean.tokens.shape):
        raise ValueError(
            f"unpaired prompt sets: clean is {clean.n_sequences} x {clean.tokens.shape[1]} tokens, corrupted is "
            f"{tokens.shape[0]} x {tokens.shape[1]}; patching needs the same number of sequences of the same length "
            "(mechtrunc.tasks.corrupt builds such pairs)")
    return PromptSet(tokens, clean.rows, clean.pos, clean.answer, clean.competitors, clean.competitor_names,
                     getattr(corrupted, "texts", None), dict(getattr(corrupted, "meta", {}) or {}))


def _metric(prompts: PromptSet, metric: str | None) -> str:
    if metric is None:
        return f"logit_diff_{prompts.competitor_names[0]}"
    return check_prompt_metric(prompts, metric)


def _groups(clean: PromptSet, positions) -> list[tuple[str, Tensor | None]]:
    """Position groups: (label, [seq, 1] per-row positions, or None for every position)."""
    n, length = clean.tokens.shape
    if positions is None:
        roles = clean.role_positions()
        positions = roles if roles else list(range(length))
    out: list[tuple[str, Tensor | None]] = [("all", None)]
    items = positions.items() if isinstance(positions, dict) else ((str(p), p) for p in positions)
    for label, p in items:
        if isinstance(p, Tensor) and p.ndim >= 1:
            t = p.detach().long().reshape(n, -1) if p.numel() % max(n, 1) == 0 and p.shape[0] == n else None
            if t is None:
                raise ValueError(f"position group {label!r} must give one position per sequence ({n}), "
                                 f"got shape {tuple(p.shape)}")
        else:
            t = torch.full((n, 1), as_int(p, "position"), dtype=torch.long)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= length):
            bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
            raise ValueError(f"position {bad} of group {label!r} is outside the prompts (valid 0..{length - 1})")
        out.append((str(label), t))
    return out


@dataclass
class _Spec:
    site: str
    layer: int
    head: int | None
    group: str
    pos: Tensor | None  # [seq, m] or None (all positions)
    hook: str = ""
    values: Tensor | None = None  # the metric per item, filled by _run_patches


def _plan(adapter: ModelAdapter, sites, layers, groups) -> tuple[list[_Spec], list[str]]:
    specs, skipped = [], []
    for site in sites:
        for layer in layers:
            try:
                hook = adapter.site_hook(site, layer)
            except ValueError as e:  # no MLP at this layer / no resid_mid in a parallel block
                skipped.append(f"L{layer}.{site}: {e}")
                continue
            for head in (range(adapter.n_heads) if site == "z" else (None,)):
                for label, pos in groups:
                    specs.append(_Spec(site, layer, head, label, pos, hook))
    return specs, skipped


@torch.no_grad()
def _run_patches(adapter, read: PromptSet, target: Tensor, source: dict[str, Tensor], specs: list[_Spec],
                 metric: str, batch_size: int, progress: bool) -> dict:
    """Fill ``spec.values`` with the metric per item; many specs per forward pass."""
    n = read.n_sequences
    c = min(n, batch_size)
    k = max(1, batch_size // c)
    current: dict[str, list] = {}
    state: dict = {}

    def make_hook(name):
        def fn(act):
            jobs = current.get(name)
            if not jobs:
                return None
            act = act.clone()
            seq, cc = state["seq"], state["cc"]
            src = source[name][seq]
            ar = torch.arange(cc)[:, None]
            for r, spec in jobs:
                tgt = act[r * cc:(r + 1) * cc]
                s = src
                if spec.head is not None:
                    tgt, s = tgt[:, :, spec.head], s[:, :, spec.head]
                if spec.pos is None:
                    tgt.copy_(s.to(tgt.dtype))
                else:
                    p = spec.pos[seq]
                    tgt[ar, p] = s[ar, p].to(tgt.dtype)
            return act
        return fn

    names = sorted({s.hook for s in specs})
    groups = [specs[i:i + k] for i in range(0, len(specs), k)]
    bar = progress_bar(len(groups) * ((n + c - 1) // c), "patching", "forward", enabled=progress)
    forwards = rows = 0
    for spec in specs:
        spec.values = torch.empty(len(read), dtype=torch.float64)
    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(adapter.hooked(name, make_hook(name)))
        for start, (items, chunk) in zip(range(0, n, c), read.batches(c)):
            cc = chunk.n_sequences
            state.update(seq=torch.arange(start, start + cc), cc=cc)
            tokens = target[start:start + cc].to(adapter.device)
            for group in groups:
                current.clear()
                for r, spec in enumerate(group):
                    current.setdefault(spec.hook, []).append((r, spec))
                logits = adapter.forward(tokens.repeat(len(group), 1))
                forwards += 1
                rows += cc * len(group)
                for r, spec in enumerate(group):
                    lg = logits[r * cc + chunk.rows.to(logits.device), chunk.pos.to(logits.device)]
                    spec.values[items.cpu()] = item_metrics(lg, chunk)[metric].double().cpu()
                bar.update(1)
    bar.close()
    return {"forwards": forwards, "rows": rows}


def patching_scan(
    model, clean: PromptSet, corrupted, *, sites: Iterable[str] = ("resid_pre", "attn_out", "mlp_out", "z"),
    metric: str | None = None, direction: str = DEFAULT_PATCH_DIRECTION, positions=None,
    layers: Iterable[int] | None = None,
    batch_size: int = 64, progress: bool = False, n_boot: int = 1000, level: float = PATCH_LEVEL, seed: int = 0,
) -> pd.DataFrame:
    """Activation patching of every (site, layer, head, position group) between a paired clean
    and corrupted prompt set.

    Args:
        clean: the clean prompts (their read items and answers score every run).
        corrupted: the paired corrupted prompts (same shape), a PromptSet or a token tensor.
        sites: any of :data:`mechtrunc.SITES`; ``z`` is scanned per head.
        metric: a per-item metric of :mod:`mechtrunc.core.metrics` (default ``logit_diff_`` of the
            first competitor).
        direction: ``"denoising"`` (corrupted run, one clean activation), ``"noising"`` (clean
            run, one corrupted activation) or ``"both"``.
        positions: position groups: None (the pair's roles, else every position), a list of
            positions, or ``{label: position or [seq] per-row positions}``; ``all`` (every
            position at once) is always scanned too.
        layers: the layers to scan (default all).
        batch_size: rows per forward pass (copies of the prompts x patches).
        n_boot, level, seed: the percentile bootstrap interval of each effect (``effect_low``,
            ``effect_high``): the prompts' sequences resampled, the clean, corrupted and patched
            runs together, no extra forward pass (``n_boot=0``: none).

    Returns:
        A DataFrame with :data:`mechtrunc.core.results.PATCHING_COLUMNS` (``direction, site, layer,
        head, position, metric, value, clean, corrupted, effect, effect_low, effect_high``);
        ``attrs`` hold the clean and corrupted values, ``forwards`` (forward passes run, the two
        recording runs included), ``rows``, ``skipped`` (sites that do not exist at a layer, with
        the reason), ``n_boot``, ``level``, and ``gap``, ``gap_low``, ``gap_high``,
        ``normalised``: the clean - corrupted gap with its paired interval, and whether it is
        resolved (its interval excludes zero); when it is not, every ``effect`` and its interval
        are NaN (undefined: see the module docstring) and ``value`` is what to read.
    """
    adapter = adapt(model)
    corrupted = _paired(clean, corrupted)
    metric = _metric(clean, metric)
    check_choice("direction", direction, DIRECTIONS)
    sites = list(sites)
    for s in sites:
        check_choice("site", s, SITES, label="valid sites")
    layers = list(range(adapter.n_layers)) if layers is None else [adapter.check_layer(x) for x in layers]
    n_boot, level = check_bootstrap(n_boot, level, allow_zero=True)
    bs = as_int(batch_size, "batch_size")
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {bs}")
    check_prompts(adapter, clean)
    check_prompts(adapter, corrupted)
    groups = _groups(clean, positions)
    specs_template, skipped = _plan(adapter, sites, layers, groups)
    names = sorted({s.hook for s in specs_template})
    cache = {"clean": record_activations(adapter, clean.tokens, names, batch_size=bs),
             "corrupted": record_activations(adapter, corrupted.tokens, names, batch_size=bs)}
    base_items = _base_items(adapter, clean, corrupted, metric, bs)
    base = _baseline(base_items, clean, n_boot, level, seed)
    # the two recordings and the two baselines, in chunks of bs sequences
    rows, forwards, n_rows = [], 4 * -(-clean.n_sequences // bs), 0
    for d in (("denoising", "noising") if direction == "both" else (direction,)):
        target, source = (corrupted, cache["clean"]) if d == "denoising" else (clean, cache["corrupted"])
        specs = [_Spec(s.site, s.layer, s.head, s.group, s.pos, s.hook) for s in specs_template]
        count = _run_patches(adapter, clean, target.tokens, source, specs, metric, bs, progress)
        forwards, n_rows = forwards + count["forwards"], n_rows + count["rows"]
        low, high = _effect_intervals(base_items, [s.values for s in specs], clean, n_boot, level, seed, base)
        for s, lo, hi in zip(specs, low, high):
            v = float(s.values.mean())
            rows.append((d, s.site, s.layer, s.head, s.group, metric, v, base["clean"], base["corrupted"],
                         _effect(v, base), lo, hi))
    df = pd.DataFrame(rows, columns=list(PATCHING_COLUMNS))
    df["head"] = df["head"].astype("Int64")
    df.attrs.update(clean=base["clean"], corrupted=base["corrupted"], metric=metric, forwards=forwards,
                    rows=n_rows, skipped=skipped, n_boot=n_boot, level=level, **_gap_attrs(base))
    return df


def _base_items(adapter, clean: PromptSet, corrupted: PromptSet, metric: str, batch_size: int) -> dict[str, Tensor]:
    """The metric per item on the clean and on the corrupted run."""
    return {"clean": item_metrics(item_logits(adapter, clean, batch_size=batch_size), clean)[metric].double().cpu(),
            "corrupted": item_metrics(item_logits(adapter, corrupted, batch_size=batch_size), clean)[metric]
            .double().cpu()}


def _baseline(base_items: dict, read: PromptSet, n_boot: int, level: float, seed: int) -> dict:
    """The clean and corrupted means, the gap ``clean - corrupted`` with its paired percentile
    bootstrap interval (the resamples of :func:`_effect_intervals`: whole sequences, ``seed``), and
    whether it is resolved enough to normalise by: nonzero, and its interval excludes zero."""
    base = {k: float(v.mean()) for k, v in base_items.items()}
    gap = base["clean"] - base["corrupted"]
    low = high = float("nan")
    if n_boot:
        means = bootstrap_means(torch.stack([base_items["clean"], base_items["corrupted"]]), n_boot=n_boot, seed=seed,
                                clusters=read.rows.cpu())
        lo, hi = percentile_interval(means[0] - means[1], level)
        low, high = float(lo), float(hi)
    resolved = gap != 0 and not (low <= 0.0 <= high)  # NaN bounds (no bootstrap): only an exact zero fails
    return {**base, "gap": gap, "gap_low": low, "gap_high": high, "normalised": bool(resolved)}


def _gap_attrs(base: dict) -> dict:
    return {k: base[k] for k in ("gap", "gap_low", "gap_high", "normalised")}


def _effect(value: float, base: dict) -> float:
    """``(value - corrupted) / (clean - corrupted)``; NaN when the gap is not resolved."""
    if not base["normalised"]:
        return float("nan")
    return (value - base["corrupted"]) / (base["clean"] - base["corrupted"])


def _effect_intervals(base_items: dict, values: list[Tensor], read: PromptSet, n_boot: int, level: float,
                      seed: int, base: dict) -> tuple[list[float], list[float]]:
    """Percentile bootstrap intervals of each normalised effect: the clean, corrupted and patched
    runs resampled together (whole sequences, :func:`mechtrunc.core.metrics.bootstrap_means`), the
    effect recomputed on every resample.  NaN without ``n_boot`` or when the gap is not resolved
    (``base["normalised"]``, :func:`_baseline`)."""
    if not n_boot or not values or not base["normalised"]:
        return [float("nan")] * len(values), [float("nan")] * len(values)
    rows = torch.stack([base_items["clean"], base_items["corrupted"], *values])
    means = bootstrap_means(rows, n_boot=n_boot, seed=seed, clusters=read.rows.cpu())
    effects = (means[2:] - means[1]) / (means[0] - means[1])
    low, high = percentile_interval(effects, level, skip_nan=True)
    return low.tolist(), high.tolist()


def raw_change(df: pd.DataFrame) -> pd.Series:
    """Each patch's raw change of the metric: its ``value`` minus the value of the run it was
    patched into (the corrupted run when denoising, the clean run when noising).  Defined
    whatever the gap; what to read when the normalised effect is not (``attrs["normalised"]``)."""
    return df["value"] - df["corrupted"].where(df["direction"] == "denoising", df["clean"])


def largest_moves(df: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The ``n`` patches of a scan that move the metric most: with a resolved gap by the
    normalised effect (denoising towards 1: restores; noising towards 0: breaks), else by the
    size of the :func:`raw_change`, whose column ``change`` is then added.  Ties keep table
    order.  What ``mechtrunc patch scan`` prints and the report's table shows."""
    if df.attrs.get("normalised", True):
        moved = df["effect"].where(df["direction"] == "denoising", 1 - df["effect"])
        out = df
    else:
        out = df.assign(change=raw_change(df))
        moved = out["change"].abs()
    top = out.assign(_moved=moved).sort_values("_moved", ascending=False, kind="stable").head(n)
    return top.drop(columns="_moved")


# ----------------------------------------------------------------------------------------
# path patching
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _SetAt(Intervention):
    """Internal: add ``values`` to (or set them at) hook ``name``, per sequence row of the run
    (``[seq, pos, ...]``, the run's rows taken from :func:`current_rows`), on one head or all."""

    name: str = ""
    values: Tensor | None = field(default=None, compare=False, repr=False)
    add: bool = True
    head: int | None = None

    def _apply(self, adapter):
        v = self.values

        def fn(act):
            rows = current_rows(act.shape[0], v.shape[0])
            s = v[rows.to(v.device)].to(act.dtype)
            act = act.clone()
            tgt = act[:, :, self.head] if self.head is not None else act
            src = s[:, :, self.head] if self.head is not None else s
            if self.add:
                tgt.add_(src)
            else:
                tgt.copy_(src)
            return act

        with adapter.hooked(self.name, fn):
            yield


def _parse_sender(adapter, sender) -> tuple[int, int]:
    if not (isinstance(sender, (tuple, list)) and len(sender) == 2):
        raise ValueError(f"sender must be a (layer, head) pair, got {sender!r}")
    return adapter.check_layer(sender[0]), adapter.check_head(sender[1])


def _parse_receiver(adapter, receiver, sender_layer: int) -> tuple:
    if receiver == "logits":
        return ("logits",)
    kind = receiver[0] if isinstance(receiver, (tuple, list)) and receiver else receiver
    if kind not in RECEIVERS or kind == "logits":
        raise ValueError(f"unknown receiver {receiver!r}; valid: 'logits', ('mlp', layer), "
                         "('q' | 'k' | 'v', layer, head)")
    want = 2 if kind == "mlp" else 3
    if len(receiver) != want:
        raise ValueError(f"receiver {receiver!r} must be ('mlp', layer)" if kind == "mlp"
                         else f"receiver {receiver!r} must be ({kind!r}, layer, head)")
    layer = adapter.check_layer(receiver[1])
    if kind == "mlp":
        if not adapter.has_mlp(layer):
            raise ValueError(f"layer {layer} has no MLP, so it cannot receive a path")
        first = sender_layer + (1 if adapter.mlp_input_site(layer) == "resid_pre" else 0)
    else:
        first = sender_layer + 1
    if layer < first:
        raise ValueError(f"receiver layer {layer} does not read the output of a layer-{sender_layer} head "
                         f"(valid receiver layers: {first}..{adapter.n_layers - 1})")
    return (kind, layer) if kind == "mlp" else (kind, layer, adapter.check_head(receiver[2]))


def _sender_delta(adapter, z_src: Tensor, z_tgt: Tensor, layer: int, head: int) -> Tensor:
    W_O = adapter.head_W_O(layer).float()[head]  # [d_head, d_model]
    return (z_src[:, :, head].float() - z_tgt[:, :, head].float()) @ W_O


@torch.no_grad()
def _path_value(adapter, read: PromptSet, target: PromptSet, delta: Tensor, rec: tuple, metric: str,
                batch_size: int) -> Tensor:
    """The metric per item of ``read`` with the path patched."""
    if rec[0] == "logits":
        name = adapter.hook_name("resid_post", adapter.n_layers - 1)
        ivs = (_SetAt(name=name, values=delta, add=True),)
    elif rec[0] == "mlp":
        layer = rec[1]
        where = adapter.site_hook(adapter.mlp_input_site(layer), layer)
        out_name = adapter.site_hook("mlp_out", layer)
        with intervene(adapter, _SetAt(name=where, values=delta, add=True)):
            new = record_activations(adapter, target.tokens, [out_name], batch_size=batch_size)[out_name]
        ivs = (_SetAt(name=out_name, values=new, add=False),)
    else:
        kind, layer, head = rec
        where = adapter.site_hook("resid_pre", layer)
        qkv = adapter.hook_name(kind, layer)
        with intervene(adapter, _SetAt(name=where, values=delta, add=True)):
            new = record_activations(adapter, target.tokens, [qkv], batch_size=batch_size)[qkv]
        ivs = (_SetAt(name=qkv, values=new, add=False, head=head),)
    logits = item_logits(adapter, target, *ivs, batch_size=batch_size)
    return item_metrics(logits, read)[metric].double().cpu()


def path_patching_scan(
    model, clean: PromptSet, corrupted, receiver="logits", *, senders: Iterable[tuple[int, int]] | None = None,
    metric: str | None = None, direction: str = DEFAULT_PATCH_DIRECTION, batch_size: int = 64, n_boot: int = 1000,
    level: float = PATCH_LEVEL, seed: int = 0,
) -> pd.DataFrame:
    """Path patching from each sender head (default: every head of every layer that can reach
    ``receiver``) to ``receiver`` (``"logits"``, ``("mlp", layer)`` or ``("q"|"k"|"v", layer,
    head)``).  ``direction="denoising"`` (default, as :func:`patching_scan`): the corrupted run,
    with the sender's clean output reaching only the receiver; ``"noising"`` (Wang et al.'s
    path patching): the clean run, with the sender's corrupted output.  Columns: ``direction,
    sender_layer, sender_head, receiver, metric, value, clean, corrupted, effect`` (0 = corrupted,
    1 = clean) and the effect's bootstrap interval ``effect_low, effect_high``; ``attrs`` as :func:`patching_scan`'s (the gap, its
    interval and ``normalised``: effects are NaN when the gap is not resolved)."""
    adapter = adapt(model)
    corrupted = _paired(clean, corrupted)
    metric = _metric(clean, metric)
    if direction not in ("denoising", "noising"):
        raise ValueError(f"unknown direction {direction!r} for path patching; valid: denoising, noising")
    n_boot, level = check_bootstrap(n_boot, level, allow_zero=True)
    bs = as_int(batch_size, "batch_size")
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {bs}")
    if senders is None:
        top = adapter.n_layers if receiver == "logits" else _receiver_layer(receiver)
        senders = [(l, h) for l in range(adapter.n_layers) for h in range(adapter.n_heads)]
        senders = [s for s in senders if _reaches(adapter, s, receiver, top)]
        if not senders:
            raise ValueError(f"no head's output reaches receiver {receiver!r}: a receiver in layer {top} reads "
                             "heads of earlier layers only (give a receiver in a later layer)")
    senders = [_parse_sender(adapter, s) for s in senders]
    recs = {s: _parse_receiver(adapter, receiver, s[0]) for s in senders}
    check_prompts(adapter, clean)
    check_prompts(adapter, corrupted)
    target, source = (clean, corrupted) if direction == "noising" else (corrupted, clean)
    names = sorted({adapter.site_hook("z", layer) for layer, _ in senders})
    z_tgt = record_activations(adapter, target.tokens, names, batch_size=bs)
    z_src = record_activations(adapter, source.tokens, names, batch_size=bs)
    base_items = _base_items(adapter, clean, corrupted, metric, bs)
    base = _baseline(base_items, clean, n_boot, level, seed)
    values = []
    for layer, head in senders:
        name = adapter.site_hook("z", layer)
        delta = _sender_delta(adapter, z_src[name], z_tgt[name], layer, head)
        values.append(_path_value(adapter, clean, target, delta, recs[(layer, head)], metric, bs))
    low, high = _effect_intervals(base_items, values, clean, n_boot, level, seed, base)
    rows = []
    for (layer, head), vals, lo, hi in zip(senders, values, low, high):
        v = float(vals.mean())
        rows.append((direction, layer, head, _receiver_label(recs[(layer, head)]), metric, v, base["clean"],
                     base["corrupted"], _effect(v, base), lo, hi))
    df = pd.DataFrame(rows, columns=["direction", "sender_layer", "sender_head", "receiver", "metric", "value",
                                     "clean", "corrupted", "effect", "effect_low", "effect_high"])
    df.attrs.update(clean=base["clean"], corrupted=base["corrupted"], metric=metric, n_boot=n_boot, level=level,
                    **_gap_attrs(base))
    return df


def path_patch(model, clean: PromptSet, corrupted, sender: tuple[int, int], receiver="logits", *,
               metric: str | None = None, direction: str = DEFAULT_PATCH_DIRECTION, batch_size: int = 64,
               n_boot: int = 1000, level: float = PATCH_LEVEL, seed: int = 0) -> dict:
    """One path (see :func:`path_patching_scan`, the same arguments): ``{"value", "clean",
    "corrupted", "effect", "effect_low", "effect_high"}``."""
    row = path_patching_scan(model, clean, corrupted, receiver, senders=[sender], metric=metric,
                             direction=direction, batch_size=batch_size, n_boot=n_boot, level=level,
                             seed=seed).iloc[0]
    return {k: float(row[k]) for k in ("value", "clean", "corrupted", "effect", "effect_low", "effect_high")}


def _receiver_layer(receiver) -> int:
    if not isinstance(receiver, (tuple, list)) or len(receiver) < 2:
        raise ValueError(f"unknown receiver {receiver!r}; valid: 'logits', ('mlp', layer), "
                         "('q' | 'k' | 'v', layer, head)")
    return as_int(receiver[1], "receiver layer")


def _reaches(adapter, sender, receiver, top: int) -> bool:
    if receiver == "logits":
        return True
    if receiver[0] == "mlp":
        return sender[0] < top or (sender[0] == top and adapter.mlp_input_site(top) == "resid_mid")
    return sender[0] < top


def _receiver_label(rec: tuple) -> str:
    if rec[0] == "logits":
        return "logits"
    if rec[0] == "mlp":
        return f"L{rec[1]}.mlp"
    return f"L{rec[1]}H{rec[2]}.{rec[0]}"


# ----------------------------------------------------------------------------------------
# the pieces the gradient estimates of these scans (mechtrunc.analysis.circuits) share with them
# ----------------------------------------------------------------------------------------
#: ``corrupted`` (a PromptSet or tokens) as a prompt set reading the clean items; ValueError when unpaired
paired_prompts = _paired
#: the metric of a scan: the given one checked against the prompts, default ``logit_diff_`` of the first competitor
scan_metric = _metric
#: the position groups of a scan: ``[(label, [seq, m] positions or None for every position)]``
position_groups = _groups
#: the (site, layer, head, group) rows of a scan and the sites skipped (absent at a layer)
plan_rows = _plan
#: the clean and corrupted means, the gap with its paired interval and whether it is resolved
baseline = _baseline
#: the gap attributes of a scan table
gap_attrs = _gap_attrs
#: ``(value - corrupted) / (clean - corrupted)``; NaN when the gap is not resolved
normalised_effect = _effect
#: the percentile bootstrap intervals of normalised effects (clean, corrupted and patched runs resampled together)
effect_intervals = _effect_intervals
