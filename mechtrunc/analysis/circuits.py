"""Gradient-based circuit discovery: attribution patching of nodes and edges, EAP-IG, and the
faithfulness of a circuit, on the same clean/corrupted :class:`~mechtrunc.core.prompts.PromptSet`
pairs as :func:`mechtrunc.analysis.patching.patching_scan`.

- :func:`attribution_scan`: **node attribution patching** (AtP; Nanda 2023): the first-order
  estimate of every row :func:`~mechtrunc.analysis.patching.patching_scan` computes, with its columns
  (``PATCHING_COLUMNS``) and meanings.  Denoising estimates the corrupted run with one clean
  activation restored, ``(a_clean - a_corrupted) . d metric / d a`` taken on the corrupted run;
  noising the clean run with one corrupted activation, ``(a_corrupted - a_clean) . d metric / d a``
  on the clean run.  ``value`` is the run patched into plus the estimate, so
  :func:`~mechtrunc.analysis.patching.raw_change` is the estimate itself and ``effect`` is normalised as
  the scan's.  Cost: one forward and one forward+backward pass per prompt batch and direction
  (``both``: two forward+backward passes, each run serving as source and target).
- :func:`edge_attribution`: **edge attribution patching** (EAP; Syed et al. 2023): each writer
  (the token embedding, every head's output ``z_h W_O[h]``, every MLP) into each reader that
  follows it in the residual stream (a head's query, key or value input, an MLP's input, the
  logits), ``(w_clean - w_corrupted) . d metric / d (reader input)`` at the same position.
- ``method="ig-inputs"``: **EAP-IG** (Hanna et al. 2024) on the inputs: the gradient is averaged
  over ``steps`` runs whose input embeddings lie on the straight line from the corrupted to the
  clean prompts (midpoints ``(j + 1/2) / steps``); ``steps + 2`` passes (the two endpoint runs
  record the activations).  ``method="ig-activations"`` (nodes only): for each hooked site of a
  layer, its activation alone is moved along the line between the target and the source run
  (everything upstream at the target run), ``steps`` passes per site and direction; for a site
  patched as a whole (position ``all`` of ``resid_pre``, ``attn_out``, ``mlp_out``...) this is
  the integral whose limit is the exact patch, so it converges to
  :func:`~mechtrunc.analysis.patching.patching_scan`'s value as ``steps`` grows.
- :func:`circuit_faithfulness`: a circuit, the top-``n`` edges of an :func:`edge_attribution`
  table by the size of their score, evaluated exactly by running the clean prompts with every
  edge outside it ablated (each reader's input rebuilt with the out-of-circuit writers replaced
  by the corrupted run's value, or their mean over the corrupted prompts): the fraction of the
  clean - corrupted gap it recovers, with a paired bootstrap interval over prompts, for each
  ``n`` (the faithfulness curve).

Every function works under active interventions (``with mt.intervene(model, mt.Truncate(...)):``,
or ``interventions=``): the scores are then those of the edited model, so the difference of two
tables says which nodes or edges a truncation or projection changes.

Models: nodes on every model with hooks (the toy, the minimal and memory models where they have
the site, TransformerBridges: our own language model and Pythia); edges on the toy (whose blocks
have no LayerNorm, so a reader's input gradient is the gradient of its projection pulled back
through the weight), the minimal model (head -> MLP and -> logits; its attention has no query /
key / value projection) and bridges whose attention TransformerLens splits per head (GPT-NeoX /
Pythia, GPT-2: their split query/key/value and MLP-input hooks, switched on for the run and
restored; GPT-J's bridge has none, a ValueError says so).  On bridges the numbers equal TransformerLens'
``attribution_patch`` (its node and edge scores are the denoising ``raw_change`` per position,
averaged over pairs; tests/test_circuits.py), which mechtrunc does not call: it scores one pair
at a time, has no position groups, noising direction, EAP-IG, bootstrap or non-bridge models.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Sequence

import pandas as pd
import torch
from torch import Tensor

from mechtrunc._choices import (
    ABLATIONS, ATTRIBUTION_METHODS, DEFAULT_IG_STEPS, DEFAULT_PATCH_DIRECTION, PATCH_DIRECTIONS, PATCH_LEVEL, SITES,
)
from mechtrunc._progress import progress_bar
from mechtrunc._scalars import as_int
from mechtrunc.core.adapters import ModelAdapter, adapt
from mechtrunc.core.interventions import Intervention, batch_rows, intervene
from mechtrunc.core.metrics import check_bootstrap, item_metrics
from mechtrunc.analysis.patching import (
    baseline, effect_intervals, gap_attrs, normalised_effect, paired_prompts, plan_rows,
    position_groups, raw_change, scan_metric,
)
from mechtrunc.core.prompts import PromptSet
from mechtrunc.core.results import PATCHING_COLUMNS
from mechtrunc.core.runner import check_prompts

__all__ = ["attribution_scan", "edge_attribution", "circuit_faithfulness", "top_edges", "agreement", "EDGE_COLUMNS",
           "FAITHFULNESS_COLUMNS"]

#: one row per (direction, sender, receiver, position group) of :func:`edge_attribution`
EDGE_COLUMNS = ("direction", "sender", "sender_layer", "sender_head", "receiver", "receiver_layer", "receiver_head",
                "position", "metric", "value", "clean", "corrupted", "effect", "effect_low", "effect_high")
#: one row per circuit size of :func:`circuit_faithfulness`
FAITHFULNESS_COLUMNS = ("n_edges", "total_edges", "ablation", "metric", "value", "clean", "corrupted", "recovered",
                        "recovered_low", "recovered_high")

#: metrics whose gradient is zero almost everywhere (a step function of the logits)
_FLAT_METRICS = ("accuracy", "acc_vs_")


def _input_hooks(adapter: ModelAdapter) -> list[str]:
    """The hooks holding the model's input embeddings (what EAP-IG on inputs interpolates)."""
    names = [adapter.hook_name("embed")]
    if adapter.has_pos_embed():
        names.append(adapter.hook_name("pos_embed"))
    if adapter.has_hook(adapter.hook_name("prev_embed")):
        names.append(adapter.hook_name("prev_embed"))
    return names


# ----------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------
def _check_common(adapter, clean, corrupted, metric, direction, method, steps, batch_size, n_boot, level,
                  interventions, directions=PATCH_DIRECTIONS):
    if not adapter.has_hooks:
        raise ValueError(f"attribution patching needs hook points, which a {adapter.kind} model lacks: boot a "
                         "TransformerBridge over it (mechtrunc.models.hf.load_model)")
    corrupted = paired_prompts(clean, corrupted)
    metric = scan_metric(clean, metric)
    if metric.startswith(_FLAT_METRICS):
        raise ValueError(f"metric {metric!r} is a step function of the logits (its gradient is zero): attribution "
                         "patching needs a smooth metric such as logit_diff_*, p_answer, p_* or loss")
    if direction not in directions:
        raise ValueError(f"unknown direction {direction!r}; valid: {', '.join(directions)}")
    if method not in ATTRIBUTION_METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(ATTRIBUTION_METHODS)}")
    steps = as_int(steps, "steps")
    if steps < 1:
        raise ValueError(f"steps must be >= 1 (interpolation steps of EAP-IG), got {steps}")
    check_bootstrap(n_boot, level, allow_zero=True)
    bs = as_int(batch_size, "batch_size")
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {bs}")
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise TypeError(f"interventions must be Intervention objects, got {type(iv).__name__}")
    check_prompts(adapter, clean)
    check_prompts(adapter, corrupted)
    return corrupted, metric, steps, bs


def _masks(groups, n: int, length: int) -> list[tuple[str, Tensor]]:
    """Each position group as a [seq, pos] 0/1 mask (float64)."""
    out = []
    for label, pos in groups:
        m = torch.zeros(n, length, dtype=torch.float64)
        if pos is None:
            m[:] = 1.0
        else:
            m.scatter_(1, pos, 1.0)
        out.append((label, m))
    return out


# ----------------------------------------------------------------------------------------
# the passes: activations and the metric's gradients at hooks, per prompt batch
# ----------------------------------------------------------------------------------------
@dataclass
class _Pass:
    items: Tensor  # the metric per read item [item] (float64, CPU)
    acts: dict[str, Tensor]  # [seq, pos, ...] (float32, CPU)
    grads: dict[str, Tensor]  # d sum(metric over items) / d act, [seq, pos, ...]


def _run(adapter, tokens: Tensor, read: PromptSet, metric: str, batch_size: int, *, record=(), grad=(),
         edit=None) -> _Pass:
    """One pass over the prompts in chunks: the metric per item of ``read``, the activations of
    ``record`` and the gradient of the summed item metric at ``grad`` (a backward only when
    ``grad`` names a hook).  ``edit``: ``{hook: fn(act, seq_index) -> new act}`` applied first."""
    edit = edit or {}
    names = sorted(set(record) | set(grad) | set(edit))
    n = read.n_sequences
    items = torch.empty(len(read), dtype=torch.float64)
    acts = {k: [] for k in record}
    grads = {k: [] for k in grad}
    for start, (idx, chunk) in zip(range(0, n, batch_size), read.batches(batch_size)):
        cc = chunk.n_sequences
        seq = torch.arange(start, start + cc)
        live: dict[str, Tensor] = {}

        def make(name):
            def fn(act):
                x = edit[name](act, seq) if name in edit else act
                if name in edit and grad and not x.requires_grad:  # an input: the graph starts here
                    x = x.detach().requires_grad_(True)
                if name in grad:
                    x = x.clone() if x.requires_grad else x.detach().clone().requires_grad_(True)
                    live[name] = x
                if name in record:
                    acts[name].append(x.detach().float().cpu())
                return x if (name in grad or name in edit) else None
            return fn

        with contextlib.ExitStack() as stack, torch.set_grad_enabled(bool(grad)):
            stack.enter_context(batch_rows(seq, n))
            for name in names:
                stack.enter_context(adapter.hooked(name, make(name)))
            logits = adapter.forward(tokens[start:start + cc].to(adapter.device))
            dev = logits.device
            vals = item_metrics(logits[chunk.rows.to(dev), chunk.pos.to(dev)], chunk)[metric]
            if grad:
                missing = [k for k in grad if k not in live]
                if missing:
                    raise ValueError(f"hook {missing[0]!r} did not fire on this model, so its gradient is unknown")
                got = torch.autograd.grad(vals.sum(), [live[k] for k in grad], allow_unused=True)
                for k, g in zip(grad, got):
                    grads[k].append((torch.zeros_like(live[k]) if g is None else g).detach().float().cpu())
        items[idx.cpu()] = vals.detach().double().cpu()
    return _Pass(items, {k: torch.cat(v) for k, v in acts.items()}, {k: torch.cat(v) for k, v in grads.items()})


def _interp(values_from: dict, values_to: dict, alpha: float):
    """Edits moving each hook's activation to ``from + alpha (to - from)`` (per sequence)."""
    def make(name):
        a, b = values_from[name], values_to[name]
        return lambda act, seq: (a[seq] + alpha * (b[seq] - a[seq])).to(act.device, act.dtype)
    return {name: make(name) for name in values_from}


def _midpoints(steps: int) -> list[float]:
    return [(j + 0.5) / steps for j in range(steps)]


def _gradients(adapter, clean, corrupted, metric, bs, record, grad, direction, method, steps):
    """The endpoint runs and the gradients each direction's estimate uses.

    Returns ``(clean_pass, corrupted_pass, {direction: grads}, passes)``: ``atp`` takes each
    direction's gradient at its target run; ``ig-inputs`` averages it over the input line (the
    noising estimate is the denoising one negated: the same line, walked back)."""
    dirs = ("denoising", "noising") if direction == "both" else (direction,)
    grads: dict[str, dict[str, Tensor]] = {}
    if method == "atp":
        gc = grad if "noising" in dirs else ()
        gk = grad if "denoising" in dirs else ()
        pc = _run(adapter, clean.tokens, clean, metric, bs, record=record, grad=gc)
        pk = _run(adapter, corrupted.tokens, clean, metric, bs, record=record, grad=gk)
        if "denoising" in dirs:
            grads["denoising"] = pk.grads
        if "noising" in dirs:
            grads["noising"] = pc.grads
        return pc, pk, grads, 2
    inputs = _input_hooks(adapter)
    pc = _run(adapter, clean.tokens, clean, metric, bs, record=list(record) + inputs)
    pk = _run(adapter, corrupted.tokens, clean, metric, bs, record=list(record) + inputs)
    src, tgt = {k: pk.acts[k] for k in inputs}, {k: pc.acts[k] for k in inputs}
    total = None
    for alpha in _midpoints(steps):
        p = _run(adapter, corrupted.tokens, clean, metric, bs, grad=grad, edit=_interp(src, tgt, alpha))
        total = p.grads if total is None else {k: total[k] + p.grads[k] for k in total}
    mean = {k: v / steps for k, v in total.items()}
    for d in dirs:
        grads[d] = mean
    return pc, pk, grads, steps + 2


# ----------------------------------------------------------------------------------------
# nodes
# ----------------------------------------------------------------------------------------
def attribution_scan(
    model, clean: PromptSet, corrupted, *, sites: Iterable[str] = ("resid_pre", "attn_out", "mlp_out", "z"),
    metric: str | None = None, direction: str = DEFAULT_PATCH_DIRECTION, positions=None,
    layers: Iterable[int] | None = None, method: str = "atp", steps: int = DEFAULT_IG_STEPS,
    batch_size: int = 64, progress: bool = False, n_boot: int = 1000, level: float = PATCH_LEVEL, seed: int = 0,
    interventions: Sequence[Intervention] = (),
) -> pd.DataFrame:
    """Attribution patching of every (site, layer, head, position group): the gradient estimate
    of each row of :func:`mechtrunc.analysis.patching.patching_scan` called with the same arguments.

    Args:
        model, clean, corrupted, sites, metric, direction, positions, layers, batch_size,
            n_boot, level, seed: as :func:`~mechtrunc.analysis.patching.patching_scan` (the metric must
            be smooth: not ``accuracy`` or ``acc_vs_*``, whose gradient is zero).
        method: ``"atp"`` (first order at the target run), ``"ig-inputs"`` (EAP-IG, the
            gradient averaged over ``steps`` points of the line between the corrupted and the
            clean input embeddings) or ``"ig-activations"`` (each hooked site alone moved along
            the line between the target and the source run; see the module docstring).
        steps: interpolation steps of the ``ig-*`` methods (ignored by ``atp``).
        progress: a progress bar over the ``ig-activations`` sites.
        interventions: applied during every run (as an active ``mt.intervene`` block is).

    Returns:
        A DataFrame with :data:`mechtrunc.core.results.PATCHING_COLUMNS`: ``value`` is the run
        patched into (the corrupted run when denoising, the clean run when noising) plus the
        estimate, ``effect`` its normalised effect with its paired bootstrap interval (NaN when
        the gap is not resolved, as the scan's).  ``attrs`` as the scan's (``clean``,
        ``corrupted``, ``metric``, ``skipped``, ``n_boot``, ``level``, the gap) plus
        ``method``, ``steps`` and ``passes``: forward(+backward) passes per prompt batch.
    """
    adapter = adapt(model)
    corrupted, metric, steps, bs = _check_common(adapter, clean, corrupted, metric, direction, method, steps,
                                                 batch_size, n_boot, level, interventions)
    sites = list(sites)
    for s in sites:
        if s not in SITES:
            raise ValueError(f"unknown site {s!r}; valid sites: {', '.join(SITES)}")
    layers = list(range(adapter.n_layers)) if layers is None else [adapter.check_layer(x) for x in layers]
    n, length = clean.tokens.shape
    groups = position_groups(clean, positions)
    masks = dict(_masks(groups, n, length))
    specs, skipped = plan_rows(adapter, sites, layers, groups)
    names = sorted({s.hook for s in specs})
    dirs = ("denoising", "noising") if direction == "both" else (direction,)
    with intervene(adapter, *interventions):
        if method == "ig-activations":
            pc = _run(adapter, clean.tokens, clean, metric, bs, record=names)
            pk = _run(adapter, corrupted.tokens, clean, metric, bs, record=names)
            grads = {d: {} for d in dirs}
            bar = progress_bar(len(names) * len(dirs) * steps, "EAP-IG", "pass", enabled=progress)
            for d in dirs:
                tgt, src, toks = (pk, pc, corrupted.tokens) if d == "denoising" else (pc, pk, clean.tokens)
                for name in names:
                    total = 0
                    for alpha in _midpoints(steps):
                        edit = _interp({name: tgt.acts[name]}, {name: src.acts[name]}, alpha)
                        total = total + _run(adapter, toks, clean, metric, bs, grad=[name], edit=edit).grads[name]
                        bar.update(1)
                    grads[d][name] = total / steps
            bar.close()
            passes = 2 + len(dirs) * len(names) * steps
        else:
            pc, pk, grads, passes = _gradients(adapter, clean, corrupted, metric, bs, names, names, direction,
                                               method, steps)
    base_items = {"clean": pc.items, "corrupted": pk.items}
    base = baseline(base_items, clean, n_boot, level, seed)
    rows_of_item = clean.rows.cpu()
    per_seq = torch.bincount(rows_of_item, minlength=n).double().clamp_min(1)
    out = []
    for d in dirs:
        sign_src, sign_tgt = (pc, pk) if d == "denoising" else (pk, pc)
        target = base_items["corrupted" if d == "denoising" else "clean"]
        contrib = {}
        for name in names:
            delta = sign_src.acts[name].double() - sign_tgt.acts[name].double()
            contrib[name] = (delta * grads[d][name].double()).sum(-1)  # [seq, pos] or [seq, pos, head]
        values = []
        for s in specs:
            c = contrib[s.hook]
            if s.head is not None:
                c = c[:, :, s.head]
            per_s = (c * masks[s.group]).sum(1)  # [seq]
            values.append(target + (per_s / per_seq)[rows_of_item])
        low, high = effect_intervals(base_items, values, clean, n_boot, level, seed, base)
        for s, vals, lo, hi in zip(specs, values, low, high):
            v = float(vals.mean())
            out.append((d, s.site, s.layer, s.head, s.group, metric, v, base["clean"], base["corrupted"],
                        normalised_effect(v, base), lo, hi))
    df = pd.DataFrame(out, columns=list(PATCHING_COLUMNS))
    df["head"] = df["head"].astype("Int64")
    df.attrs.update(clean=base["clean"], corrupted=base["corrupted"], metric=metric, skipped=skipped, n_boot=n_boot,
                    level=level, method=method, steps=steps if method != "atp" else 1, passes=passes,
                    **gap_attrs(base))
    return df


def agreement(estimate: pd.DataFrame, exact: pd.DataFrame, k: int = 10) -> dict:
    """How an :func:`attribution_scan` table agrees with the exact
    :func:`~mechtrunc.analysis.patching.patching_scan` of the same rows, on their raw changes of the
    metric (:func:`~mechtrunc.analysis.patching.raw_change`, defined whatever the gap): ``n`` rows
    compared, ``spearman`` (rank correlation), ``top_k`` (the fraction of the estimate's ``k``
    largest changes in size that are among the exact scan's ``k`` largest, rows tied with its
    ``k``-th included: whole-residual patches often tie) and ``max_abs_diff``.  Rows are paired on
    ``direction, site, layer, head, position``."""
    keys = ["direction", "site", "layer", "head", "position"]
    k = as_int(k, "k")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    m = raw_change(exact).rename("exact").to_frame().join(exact[keys]).merge(
        raw_change(estimate).rename("estimate").to_frame().join(estimate[keys]), on=keys)
    if m.empty:
        raise ValueError("the two tables share no (direction, site, layer, head, position) row")
    kk = min(k, len(m))
    size = m["exact"].abs()
    kth = size.sort_values(ascending=False).iloc[kk - 1]
    exact_top = set(m.index[size >= kth - 1e-6 * max(float(size.max()), 1e-12)])
    est_top = set(m["estimate"].abs().sort_values(ascending=False, kind="stable").index[:kk])
    return {"n": len(m), "spearman": float(m["exact"].rank().corr(m["estimate"].rank())),
            "top_k": len(est_top & exact_top) / kk, "k": kk,
            "max_abs_diff": float((m["exact"] - m["estimate"]).abs().max())}


# ----------------------------------------------------------------------------------------
# edges
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Writer:
    label: str
    layer: int | None
    head: int | None
    hook: str
    kind: str  # embed | head | mlp


@dataclass(frozen=True, eq=False)
class _Reader:
    label: str
    kind: str  # q | k | v | mlp | logits
    layer: int | None
    head: int | None
    hook: str
    weight: Tensor | None  # the input -> hook map [d_model, d_out] when the hook is past it (no LayerNorm)


def _edge_graph(adapter: ModelAdapter) -> tuple[list[_Writer], list[_Reader]]:
    """Writers and readers of the residual stream on this model (the capabilities its adapter
    declares: :attr:`~mechtrunc.core.adapters.ModelAdapter.residual_readers`,
    :meth:`~mechtrunc.core.adapters.ModelAdapter.residual_reader`, ``embed_writes_residual``)."""
    L = adapter.n_layers
    if not adapter.residual_readers:
        raise ValueError(f"edge attribution needs a model with a residual stream of heads and MLPs (a toy model, "
                         f"the minimal model or a TransformerBridge), not a {adapter.kind} model")
    writers = []
    if adapter.embed_writes_residual:
        writers.append(_Writer("embed", None, None, adapter.hook_name("embed"), "embed"))
    readers: list[_Reader] = []
    for l in range(L):
        for h in range(adapter.n_heads):
            writers.append(_Writer(f"L{l}H{h}", l, h, adapter.hook_name("z", l), "head"))
        if adapter.has_mlp(l):
            writers.append(_Writer(f"L{l}.mlp", l, None, adapter.hook_name("mlp_out", l), "mlp"))
        for part in adapter.residual_readers:  # q, k, v (per head), mlp
            if part == "mlp" and not adapter.has_mlp(l):
                continue
            hook, W = adapter.residual_reader(part, l)
            if part == "mlp":
                readers.append(_Reader(f"L{l}.mlp", "mlp", l, None, hook, None if W is None else W.float().cpu()))
                continue
            if W is not None:
                W = W.reshape(adapter.d_model, adapter.n_heads, adapter.d_head)
            for h in range(adapter.n_heads):
                readers.append(_Reader(f"L{l}H{h}.{part}", part, l, h, hook,
                                       None if W is None else W[:, h].float().cpu()))
    readers.append(_Reader("logits", "logits", None, None, adapter.hook_name("resid_post", L - 1), None))
    return writers, readers


def _feeds(adapter, w: _Writer, r: _Reader) -> bool:
    if r.kind == "logits" or w.kind == "embed":
        return True
    if r.kind == "mlp" and w.kind == "head" and w.layer == r.layer:
        return adapter.mlp_input_site(r.layer) == "resid_mid"
    return w.layer < r.layer


@contextlib.contextmanager
def _reader_hooks(adapter: ModelAdapter):
    """The readers' hooks live for the block: a bridge's split query/key/value-input and
    MLP-input hooks switched on (:meth:`~mechtrunc.core.adapters.ModelAdapter.split_inputs`)."""
    with contextlib.ExitStack() as stack:
        if adapter.has_split_inputs:
            try:
                stack.enter_context(adapter.split_inputs())
            except ValueError as e:
                raise ValueError(f"edge attribution reads each head's query/key/value input and each MLP's "
                                 f"input: {e}") from None
        yield


def _head_W_O(adapter, writers: list[_Writer]) -> dict[int, Tensor]:
    """``W_O`` per layer [head, d_head, d_model] (float32), read now: inside an intervention
    block it is the edited weight."""
    return {w.layer: adapter.head_W_O(w.layer).detach().float() for w in writers if w.kind == "head"}


def _writer_values(w: _Writer, acts: dict[str, Tensor], W_O: dict[int, Tensor]) -> Tensor:
    """A writer's contribution to the residual stream [seq, pos, d_model] from its hook's
    activation: a head's ``z_h W_O[h]``, the embedding's or an MLP's output itself."""
    a = acts[w.hook]
    if w.kind == "head":
        return a[:, :, w.head].float() @ W_O[w.layer][w.head].to(a.device)
    return a.float()


def _reader_grad(r: _Reader, grads: dict[str, Tensor]) -> Tensor:
    """d metric / d (the reader's input) [seq, pos, d_model]."""
    g = grads[r.hook]
    if r.head is not None:
        g = g[:, :, r.head]
    return g if r.weight is None else g @ r.weight.T


def edge_attribution(
    model, clean: PromptSet, corrupted, *, metric: str | None = None, direction: str = DEFAULT_PATCH_DIRECTION,
    positions=None, method: str = "atp", steps: int = DEFAULT_IG_STEPS, batch_size: int = 64,
    n_boot: int = 1000, level: float = PATCH_LEVEL, seed: int = 0, interventions: Sequence[Intervention] = (),
) -> pd.DataFrame:
    """Edge attribution patching (``method="atp"``) or EAP-IG on the inputs (``"ig-inputs"``):
    every writer -> reader edge of the residual stream (see the module docstring), per position
    group (``positions`` as :func:`~mechtrunc.analysis.patching.patching_scan`'s; ``all`` sums over
    positions).  The estimate of an edge is the change of the metric when only that writer's
    share of the reader's input is moved from the target run to the source run (denoising: from
    corrupted to clean), to first order.  Columns :data:`EDGE_COLUMNS`: ``sender`` (``embed``,
    ``L0H1``, ``L0.mlp``), ``receiver`` (``L1H2.q``, ``L1.mlp``, ``logits``; as
    :func:`~mechtrunc.analysis.patching.path_patching_scan`'s), their layers and heads, and the value /
    effect columns of :func:`attribution_scan`.  Summed over its receivers, a sender's estimate
    is its node estimate (the ``z``, ``mlp_out`` rows of :func:`attribution_scan`)."""
    adapter = adapt(model)
    if method == "ig-activations":
        raise ValueError("edge attribution supports method 'atp' and 'ig-inputs' (interpolating activations is "
                         "per node; use attribution_scan for 'ig-activations')")
    corrupted, metric, steps, bs = _check_common(adapter, clean, corrupted, metric, direction, method, steps,
                                                 batch_size, n_boot, level, interventions)
    n, length = clean.tokens.shape
    masks = _masks(position_groups(clean, positions), n, length)
    dirs = ("denoising", "noising") if direction == "both" else (direction,)
    deltas, reader_grads = {}, {}
    with intervene(adapter, *interventions):  # the graph's weights are the edited ones
        writers, readers = _edge_graph(adapter)
        record = sorted({w.hook for w in writers})
        grad = sorted({r.hook for r in readers})
        with _reader_hooks(adapter):
            pc, pk, grads, passes = _gradients(adapter, clean, corrupted, metric, bs, record, grad, direction,
                                               method, steps)
        W_O = {k: v.cpu() for k, v in _head_W_O(adapter, writers).items()}
        for d in dirs:
            src, tgt = (pc, pk) if d == "denoising" else (pk, pc)
            deltas[d] = torch.stack([_writer_values(w, src.acts, W_O) - _writer_values(w, tgt.acts, W_O)
                                     for w in writers], 2).double()  # [seq, pos, writer, d]
            reader_grads[d] = torch.stack([_reader_grad(r, grads[d]) for r in readers], 2).double()
    base_items = {"clean": pc.items, "corrupted": pk.items}
    base = baseline(base_items, clean, n_boot, level, seed)
    rows_of_item = clean.rows.cpu()
    per_seq = torch.bincount(rows_of_item, minlength=n).double().clamp_min(1)
    valid = torch.tensor([[_feeds(adapter, w, r) for r in readers] for w in writers])
    pairs = valid.nonzero().tolist()
    out = []
    for d in dirs:
        target = base_items["corrupted" if d == "denoising" else "clean"]
        for label, mask in masks:
            score = torch.einsum("spwd,sprd,sp->swr", deltas[d], reader_grads[d], mask)  # [seq, writer, reader]
            values = [target + (score[:, i, j] / per_seq)[rows_of_item] for i, j in pairs]
            low, high = effect_intervals(base_items, values, clean, n_boot, level, seed, base)
            for (i, j), vals, lo, hi in zip(pairs, values, low, high):
                w, r, v = writers[i], readers[j], float(vals.mean())
                out.append((d, w.label, w.layer, w.head, r.label, r.layer, r.head, label, metric, v, base["clean"],
                            base["corrupted"], normalised_effect(v, base), lo, hi))
    df = pd.DataFrame(out, columns=list(EDGE_COLUMNS))
    for c in ("sender_layer", "sender_head", "receiver_layer", "receiver_head"):
        df[c] = df[c].astype("Int64")
    df.attrs.update(clean=base["clean"], corrupted=base["corrupted"], metric=metric, n_boot=n_boot, level=level,
                    method=method, steps=steps if method != "atp" else 1, passes=passes, n_edges=len(pairs),
                    **gap_attrs(base))
    return df


def top_edges(edges: pd.DataFrame, n: int) -> list[tuple[str, str]]:
    """The ``n`` (sender, receiver) pairs of an :func:`edge_attribution` table with the largest
    estimated change of the metric in size (position ``all``, the table's first direction;
    ties keep table order)."""
    n = as_int(n, "n")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rows = _circuit_rows(edges)
    change = (rows["value"] - rows["corrupted"].where(rows["direction"] == "denoising", rows["clean"])).abs()
    top = rows.assign(_s=change).sort_values("_s", ascending=False, kind="stable").head(n)
    return list(zip(top["sender"], top["receiver"]))


def _circuit_rows(edges: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(edges, pd.DataFrame) or not set(EDGE_COLUMNS) <= set(edges.columns):
        raise TypeError("edges must be a table of mechtrunc.analysis.circuits.edge_attribution")
    rows = edges[edges["position"] == "all"]
    if rows.empty:
        raise ValueError("the edge table has no 'all' position rows to rank a circuit by")
    return rows[rows["direction"] == rows["direction"].iloc[0]]


# ----------------------------------------------------------------------------------------
# faithfulness
# ----------------------------------------------------------------------------------------
def _default_sizes(total: int) -> list[int]:
    sizes, k = {0, total}, 1
    while k < total:
        sizes.add(k)
        k *= 2
    return sorted(sizes)


def circuit_faithfulness(
    model, clean: PromptSet, corrupted, edges: pd.DataFrame, *, sizes: Iterable[int] | None = None,
    ablation: str = "corrupt", metric: str | None = None, batch_size: int = 64, n_boot: int = 1000,
    level: float = PATCH_LEVEL, seed: int = 0, interventions: Sequence[Intervention] = (),
) -> pd.DataFrame:
    """The faithfulness curve of the circuits ranked by an :func:`edge_attribution` table: for
    each size ``n`` in ``sizes`` (default 0, 1, 2, 4, ... and every edge), the clean prompts run
    with every edge outside the top-``n`` (:func:`top_edges`) ablated: at each reader, the
    out-of-circuit writers' outputs replaced by the corrupted run's (``ablation="corrupt"``) or
    by their mean over the corrupted prompts per position (``"mean"``), every reader's input
    rebuilt exactly (the residual stream is a sum; on bridges its readers' split hooks).
    ``recovered`` is ``(value - corrupted) / (clean - corrupted)`` (1: the clean run, 0: the
    corrupted run; with ``corrupt`` ablation 0 edges give 0 and all edges 1), with its paired
    percentile bootstrap interval over the prompts' sequences (NaN when the gap is not
    resolved).  Columns :data:`FAITHFULNESS_COLUMNS`; one forward pass per size."""
    adapter = adapt(model)
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; valid: {', '.join(ABLATIONS)}")
    rows = _circuit_rows(edges)
    corrupted, metric, _, bs = _check_common(adapter, clean, corrupted, metric or edges.attrs.get("metric"),
                                             "denoising", "atp", 1, batch_size, n_boot, level, interventions)
    values = []
    with intervene(adapter, *interventions):  # the graph's weights are the edited ones
        writers, readers = _edge_graph(adapter)
        wl, rl = {w.label: w for w in writers}, {r.label: r for r in readers}
        graph = [(w.label, r.label) for w in writers for r in readers if _feeds(adapter, w, r)]
        known = set(graph)
        unknown = [(s, r) for s, r in zip(rows["sender"], rows["receiver"]) if (s, r) not in known]
        if unknown:
            raise ValueError(f"edge {unknown[0]} of the table is not an edge of this model (a table of another "
                             "model?)")
        total = len(graph)
        sizes = _default_sizes(total) if sizes is None else [as_int(s, "size") for s in sizes]
        for s in sizes:
            if not 0 <= s <= total:
                raise ValueError(f"circuit size {s} is out of range: valid sizes are 0..{total} (the model's edges)")
        ranked = top_edges(edges, total)
        record = sorted({w.hook for w in writers})
        W_O = _head_W_O(adapter, writers)
        with _reader_hooks(adapter):
            pc = _run(adapter, clean.tokens, clean, metric, bs)
            pk = _run(adapter, corrupted.tokens, clean, metric, bs, record=record)
            repl = {w.label: _writer_values(w, pk.acts, {k: v.cpu() for k, v in W_O.items()}) for w in writers}
            if ablation == "mean":
                repl = {k: v.mean(0, keepdim=True).expand_as(v) for k, v in repl.items()}
            for s in sizes:
                kept = set(ranked[:s])
                excluded: dict[str, list[_Writer]] = {}
                for w_label, r_label in graph:
                    if (w_label, r_label) not in kept:
                        excluded.setdefault(r_label, []).append(wl[w_label])
                values.append(_ablated(adapter, clean, metric, bs, writers, excluded, rl, repl, W_O))
    base_items = {"clean": pc.items, "corrupted": pk.items}
    base = baseline(base_items, clean, n_boot, level, seed)
    low, high = effect_intervals(base_items, values, clean, n_boot, level, seed, base)
    out = []
    for s, vals, lo, hi in zip(sizes, values, low, high):
        v = float(vals.mean())
        out.append((s, total, ablation, metric, v, base["clean"], base["corrupted"], normalised_effect(v, base), lo,
                    hi))
    df = pd.DataFrame(out, columns=list(FAITHFULNESS_COLUMNS))
    df.attrs.update(clean=base["clean"], corrupted=base["corrupted"], metric=metric, n_boot=n_boot, level=level,
                    ablation=ablation, **gap_attrs(base))
    return df


@torch.no_grad()
def _ablated(adapter, clean: PromptSet, metric: str, bs: int, writers: list[_Writer],
             excluded: dict[str, list[_Writer]], readers: dict[str, _Reader], repl: dict[str, Tensor],
             W_O: dict[int, Tensor]) -> Tensor:
    """The metric per item of the clean prompts with the ``excluded`` writers of each reader
    replaced by ``repl`` in that reader's input."""
    by_hook: dict[str, list[_Writer]] = {}
    for w in writers:
        by_hook.setdefault(w.hook, []).append(w)
    live: dict[str, Tensor] = {}
    state: dict = {}

    def rebuild(hook):
        mine = [r for r in readers.values() if r.hook == hook and excluded.get(r.label)]

        def fn(act):
            seq = state["seq"]
            act = act.clone()
            for r in mine:
                diff = sum(live[w.label] - repl[w.label][seq].to(act.device) for w in excluded[r.label])
                if r.weight is not None:
                    diff = diff @ r.weight.to(act.device)
                if r.head is not None:
                    act[:, :, r.head] -= diff.to(act.dtype)
                else:
                    act -= diff.to(act.dtype)
            return act
        return fn

    def capture(hook):
        def fn(act):
            for w in by_hook[hook]:
                live[w.label] = _writer_values(w, {hook: act}, W_O)
            return None
        return fn

    items = torch.empty(len(clean), dtype=torch.float64)
    n = clean.n_sequences
    reader_hooks = sorted({readers[label].hook for label in excluded if excluded[label]})
    for start, (idx, chunk) in zip(range(0, n, bs), clean.batches(bs)):
        seq = torch.arange(start, start + chunk.n_sequences)
        state["seq"] = seq
        with contextlib.ExitStack() as stack:
            stack.enter_context(batch_rows(seq, n))
            # a hook that both writes and reads (the minimal model's mlp_out) rebuilds first
            for hook in reader_hooks:
                stack.enter_context(adapter.hooked(hook, rebuild(hook)))
            for hook in by_hook:
                stack.enter_context(adapter.hooked(hook, capture(hook)))
            logits = adapter.forward(clean.tokens[start:start + chunk.n_sequences].to(adapter.device))
        dev = logits.device
        items[idx.cpu()] = item_metrics(logits[chunk.rows.to(dev), chunk.pos.to(dev)], chunk)[metric].double().cpu()
    return items
