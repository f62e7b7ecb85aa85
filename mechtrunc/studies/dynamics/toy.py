"""Training dynamics of the toy Transformer.

:class:`ToyDynamicsRecorder` is a ``callback`` for
:func:`mechtrunc.models.toy_training.train` that logs, at every evaluation, the induction score of the
L1 head, and the singular spectra of the L1 ``W_in`` / ``W_out`` (and ``W - W_init``)
with each component's contribution to the noise and to the correct logit at repeated triggers.

For the model without feed-forward layers: :func:`attention_component_attributions`
(the same per-component noise / correct push for an attention layer's ``W_V``, ``W_O`` and each
head's ``W_V W_O``), :func:`residual_attributions` (each residual-stream term's direct push),
:class:`SnapshotRecorder` (weights at every evaluation, for analyses after training) and the
seed-level bootstrap intervals :func:`seed_interval` / :func:`paired_seed_intervals`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from mechtrunc._checks import check_choice
from mechtrunc.core.adapters import adapt
from mechtrunc.core.metrics import bootstrap_draws, check_bootstrap
from mechtrunc.core.runner import run_items
from mechtrunc.studies.dynamics.measures import induction_score
from mechtrunc.tasks.recall import RecallBatch, RecallTask

__all__ = ["component_attributions", "noise_component_summary", "ToyDynamicsRecorder",
           "train_toy_with_dynamics", "attention_component_attributions", "residual_attributions",
           "SnapshotRecorder", "seed_interval", "paired_seed_intervals", "ATTENTION_MATRICES",
           "ov_gradient_noise"]

#: the attention matrices :func:`attention_component_attributions` decomposes
ATTENTION_MATRICES = ("attn.W_V", "attn.W_O", "attn.OV")


def _svd(W: Tensor):
    return torch.linalg.svd(W.double(), full_matrices=False)


@torch.no_grad()
def component_attributions(model, batch: RecallBatch, layer: int = 1, init=None) -> pd.DataFrame:
    """Per singular component of the toy Transformer's ``mlp.W_in`` and ``mlp.W_out`` at
    ``layer`` (and of ``W - W_init`` when ``init`` is given, a model with the initial
    weights), its singular value and its direct contribution, mean over the repeated triggers
    of ``batch`` (a clean test batch), to

    - ``noise_attr``: logit(noise) - mean logit of the other tokens,
    - ``correct_attr``: logit(correct answer) - mean logit of the other tokens.

    ``W_out`` components are exact (the FFN output is ``sum_i`` of them).  ``W_in`` components
    go through the ReLU with its on/off pattern held at the observed one (first order); the
    sum over components equals the FFN's direct contribution exactly.  For ``W - W_init``
    the components decompose the learned part's contribution.  Tidy: one row per
    (matrix, which, component)."""
    adapter = adapt(model)
    prompts = batch.to_prompts()
    mlp = model.blocks[layer].mlp
    hooks = (adapter.hook_name("resid_mid", layer), adapter.hook_name("mlp_pre", layer))
    _, acts = run_items(model, prompts, capture=hooks, batch_size=len(prompts.tokens))
    x, pre = acts[hooks[0]].double(), acts[hooks[1]].double()
    mask = (pre > 0).double() if mlp.kind == "relu" else torch.ones_like(pre)
    h = pre * mask
    W_U = adapter.W_U().double()
    noise = batch.noise_id
    V = W_U.shape[1]
    # readout of "logit(tok) - mean logit of the other tokens": W_U[:, tok] - (sum_{v != tok} W_U[:, v]) / (V - 1)
    tot = W_U.sum(1)
    g_noise = W_U[:, noise] * (1 + 1 / (V - 1)) - tot / (V - 1)  # [d]
    g_corr = (W_U[:, prompts.answer] * (1 + 1 / (V - 1)) - tot[:, None] / (V - 1)).T  # [item, d]
    W_out = mlp.W_out.detach().double()
    rows = []
    mats = {"mlp.W_in": mlp.W_in.detach().double(), "mlp.W_out": W_out}
    for mname, W in mats.items():
        variants = {"W": W}
        if init is not None:
            variants["W - W_init"] = W - getattr(init.blocks[layer].mlp, mname[4:]).detach().double()
        for which, M in variants.items():
            U, S, Vh = _svd(M)
            if mname == "mlp.W_in":
                coef = (x @ U) * S  # [item, r]
                a_noise = ((mask * (W_out @ g_noise)) @ Vh.T)  # [item, r]
                a_corr = ((mask * (g_corr @ W_out.T)) @ Vh.T)
            else:
                coef = (h @ U) * S
                a_noise = (Vh @ g_noise).expand_as(coef)
                a_corr = g_corr @ Vh.T
            na, ca = (coef * a_noise).mean(0), (coef * a_corr).mean(0)
            for i in range(S.shape[0]):
                rows.append({"matrix": mname, "which": which, "component": i, "singular_value": float(S[i]),
                             "noise_attr": float(na[i]), "correct_attr": float(ca[i])})
    return pd.DataFrame(rows)


def noise_component_summary(comp: pd.DataFrame, keep: float = 0.1, d_model: int | None = None) -> pd.DataFrame:
    """From :func:`component_attributions` (or :func:`attention_component_attributions`), per
    (matrix, which) and whichever of ``variant, seed, step, layer, head`` are columns: where the
    noise-carrying component sits (``noise_component``: index of the largest ``noise_attr``,
    0 = largest singular value; its ``noise_sv``, ``noise_sv_over_median`` and
    ``noise_share`` of the total noise attribution) and what LASER keeping the top
    ``int(keep * d_model)`` components keeps (``noise_kept``, ``correct_kept``: fractions of
    the total noise / correct attribution in the kept components; first order for W_in)."""
    keys = [c for c in ("variant", "seed", "step", "layer", "head", "matrix", "which") if c in comp.columns]
    out = []
    for key, g in comp.groupby(keys, sort=True):
        g = g.sort_values("component")
        r = len(g)
        n_keep = int(keep * (d_model if d_model is not None else r))
        tot_n, tot_c = g["noise_attr"].sum(), g["correct_attr"].sum()
        top = g.loc[g["noise_attr"].idxmax()]
        out.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))),
                    "noise_component": int(top["component"]), "noise_sv": float(top["singular_value"]),
                    "noise_sv_over_median": float(top["singular_value"] / g["singular_value"].median()),
                    "top_sv": float(g["singular_value"].iloc[0]),
                    "noise_share": float(top["noise_attr"] / tot_n) if tot_n else float("nan"),
                    "noise_total": float(tot_n), "correct_total": float(tot_c), "n_keep": n_keep,
                    "noise_kept": float(g["noise_attr"].iloc[:n_keep].sum() / tot_n) if tot_n else float("nan"),
                    "correct_kept": float(g["correct_attr"].iloc[:n_keep].sum() / tot_c) if tot_c else float("nan")})
    return pd.DataFrame(out)


class ToyDynamicsRecorder:
    """A ``callback`` for :func:`mechtrunc.models.toy_training.train`: at every evaluation it adds
    ``induction_score`` (layer ``layer``'s head on the clean test batch) and the position of the
    noise-carrying components of ``mlp.W_in`` / ``mlp.W_out`` (``win_noise_component``,
    ``wout_noise_component``) to the history row, and keeps the full per-component table in
    :attr:`components` (one DataFrame per evaluation; :meth:`spectra` concatenates them).

    ``init``: a model with the initial weights (``ToyTransformer(cfg.model_config())`` rebuilds
    them exactly), for the ``W - W_init`` spectra."""

    def __init__(self, batch: RecallBatch, layer: int = 1, init=None):
        self.batch, self.layer, self.init = batch, layer, init
        self.components: list[pd.DataFrame] = []

    def __call__(self, step: int, model) -> dict:
        comp = component_attributions(model, self.batch, self.layer, self.init).assign(step=step)
        self.components.append(comp)
        summ = noise_component_summary(comp[comp["which"] == "W"], d_model=model.cfg.d_model).set_index("matrix")
        return {"induction_score": induction_score(model, self.batch, self.layer),
                "win_noise_component": int(summ.loc["mlp.W_in", "noise_component"]),
                "wout_noise_component": int(summ.loc["mlp.W_out", "noise_component"])}

    def spectra(self) -> pd.DataFrame:
        return pd.concat(self.components, ignore_index=True) if self.components else pd.DataFrame()


def train_toy_with_dynamics(cfg, out_dir=None, progress: bool = False, layer: int = 1):
    """Train the toy Transformer (``mechtrunc.models.toy_training.train``) with a
    :class:`ToyDynamicsRecorder` on its clean test set.  Returns ``(TrainResult, spectra)``:
    the history gains ``induction_score``, ``win_noise_component``, ``wout_noise_component``;
    ``spectra`` is the per-component table at every evaluation (``step`` column)."""
    from mechtrunc.models.toy import ToyTransformer
    from mechtrunc.models.toy_training import train

    task = RecallTask(cfg.recall_config())
    test = task.test_set(cfg.test_size, seed=cfg.seed + 10_000)  # the same test set as train()
    rec = ToyDynamicsRecorder(test, layer=layer, init=ToyTransformer(cfg.model_config()))
    result = train(cfg, out_dir=out_dir, progress=progress, callback=rec)
    return result, rec.spectra()


# ----------------------------------------------------------------------------------------
# attention without a feed-forward layer
# ----------------------------------------------------------------------------------------
def _readouts(W_U: Tensor, noise: int, answers: Tensor) -> tuple[Tensor, Tensor]:
    """Readout directions of "logit(tok) - mean logit of the other tokens": ``g_noise [d]`` and
    ``g_corr [item, d]`` (one per item's correct answer)."""
    V = W_U.shape[1]
    tot = W_U.sum(1)
    g_noise = W_U[:, noise] * (1 + 1 / (V - 1)) - tot / (V - 1)
    g_corr = (W_U[:, answers] * (1 + 1 / (V - 1)) - tot[:, None] / (V - 1)).T
    return g_noise, g_corr


def _capture(model, batch: RecallBatch, names: tuple[str, ...]) -> dict[str, Tensor]:
    """Full-sequence activations of the hooks ``names`` on ``batch.inputs`` (float64)."""
    adapter = adapt(model)
    store: dict[str, Tensor] = {}
    import contextlib

    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(adapter.hooked(name, lambda out, name=name: store.__setitem__(name, out.detach())))
        adapter.forward(batch.inputs.to(adapter.device))
    return {k: v.double() for k, v in store.items()}


@torch.no_grad()
def attention_component_attributions(
    model, batch: RecallBatch, layer: int = 1, init=None, matrices: tuple[str, ...] = ATTENTION_MATRICES,
) -> pd.DataFrame:
    """Per singular component of an attention layer's ``attn.W_V`` (``[d, d_head]`` per head),
    ``attn.W_O`` (``[d_head, d]``) and ``attn.OV`` (each head's ``W_V W_O``, ``[d, d]``), its
    singular value and its direct contribution, mean over the repeated triggers of ``batch``
    (a clean test batch), to ``noise_attr`` (logit(noise) - mean logit of the other tokens) and
    ``correct_attr`` (logit(correct answer) - mean of the others), as
    :func:`component_attributions` does for the FFN.

    The head's output at a query is ``xbar W_V W_O`` with ``xbar = sum_k A[q, k] x_k`` (the
    observed attention pattern ``A``, which does not depend on ``W_V`` / ``W_O``), so the
    components of each matrix add up *exactly* to the head's direct contribution.  ``init``
    (a model with the initial weights) adds ``which = "W - W_init"`` rows (for ``attn.OV``:
    ``W_V W_O - W_V0 W_O0``; for ``W_V`` / ``W_O``: the learned part of that factor, the other
    factor at its current value).  Tidy: one row per (layer, head, matrix, which, component)."""
    for m in matrices:
        check_choice("attention matrix", m, ATTENTION_MATRICES)
    n_layers = len(model.blocks)
    if not 0 <= int(layer) < n_layers:
        raise ValueError(f"layer {layer!r} is out of range; valid: 0..{n_layers - 1}")
    adapter = adapt(model)
    att = model.blocks[layer].attn
    names = (adapter.hook_name("resid_pre", layer), adapter.hook_name("pattern", layer))
    acts = _capture(model, batch, names)
    rows_, pos = batch.loss_mask.nonzero(as_tuple=True)
    x, pat = acts[names[0]], acts[names[1]]
    if pat.ndim == 3:
        pat = pat.unsqueeze(1)
    xbar = torch.einsum("ihk,ikd->ihd", pat[rows_, :, pos, :], x[rows_])  # [item, head, d]
    answers = batch.clean_targets()[rows_, pos]
    g_noise, g_corr = _readouts(adapter.W_U().double(), batch.noise_id, answers)
    weights = {"W": (att.W_V.detach().double(), att.W_O.detach().double())}
    if init is not None:
        ia = init.blocks[layer].attn
        weights["W - W_init"] = (ia.W_V.detach().double(), ia.W_O.detach().double())
    W_V, W_O = weights["W"]
    out = []
    for h in range(W_V.shape[0]):
        xb = xbar[:, h]  # [item, d]
        for mname in matrices:
            for which in weights:
                if which == "W":
                    M = {"attn.W_V": W_V[h], "attn.W_O": W_O[h], "attn.OV": W_V[h] @ W_O[h]}[mname]
                else:
                    V0, O0 = weights[which]
                    M = {"attn.W_V": W_V[h] - V0[h], "attn.W_O": W_O[h] - O0[h],
                         "attn.OV": W_V[h] @ W_O[h] - V0[h] @ O0[h]}[mname]
                U, S, Vh = _svd(M)
                if mname == "attn.W_V":  # xb W_V W_O = sum_i (xb . u_i) s_i (v_i W_O)
                    coef, right = (xb @ U) * S, Vh @ W_O[h]
                elif mname == "attn.W_O":  # z W_O = sum_i (z . u_i) s_i v_i, z = xb W_V
                    coef, right = ((xb @ W_V[h]) @ U) * S, Vh
                else:  # xb OV = sum_i (xb . u_i) s_i v_i
                    coef, right = (xb @ U) * S, Vh
                na = (coef * (right @ g_noise)).mean(0)
                ca = (coef * (g_corr @ right.T)).mean(0)
                for i in range(S.shape[0]):
                    out.append({"layer": int(layer), "head": h, "matrix": mname, "which": which, "component": i,
                                "singular_value": float(S[i]), "noise_attr": float(na[i]), "correct_attr": float(ca[i])})
    return pd.DataFrame(out)


@torch.no_grad()
def residual_attributions(model, batch: RecallBatch) -> pd.DataFrame:
    """The direct push of every term of the final residual stream (token embedding, positional
    embedding, each layer's attention and FFN output) on logit(noise) - mean of the other logits
    (``noise_attr``) and on logit(correct) - mean of the others (``correct_attr``), mean over the
    repeated triggers of ``batch``.  The terms add up exactly to the model's own logit
    differences (no LayerNorm in the toy model).  One row per ``term``
    (``embed``, ``pos_embed``, ``attn.{l}``, ``mlp.{l}``)."""
    adapter = adapt(model)
    names = {"embed": adapter.hook_name("embed"), "pos_embed": adapter.hook_name("pos_embed")}
    for l in range(adapter.n_layers):
        names[f"attn.{l}"] = adapter.hook_name("attn_out", l)
        if adapter.has_mlp(l):
            names[f"mlp.{l}"] = adapter.hook_name("mlp_out", l)
    acts = _capture(model, batch, tuple(names.values()))
    rows_, pos = batch.loss_mask.nonzero(as_tuple=True)
    answers = batch.clean_targets()[rows_, pos]
    g_noise, g_corr = _readouts(adapter.W_U().double(), batch.noise_id, answers)
    out = []
    for term, hook in names.items():
        a = acts[hook]
        a = a[rows_, pos] if a.shape[0] == batch.inputs.shape[0] else a[0, pos]  # pos embed may be [1, p, d]
        out.append({"term": term, "noise_attr": float((a @ g_noise).mean()),
                    "correct_attr": float((a * g_corr).sum(-1).mean())})
    return pd.DataFrame(out)


class SnapshotRecorder:
    """A ``callback`` for :func:`mechtrunc.models.toy_training.train` that adds ``induction_score`` (layer
    ``layer``'s head on ``batch``) to every history row and keeps a copy of the trainable weights
    at every evaluation in :attr:`snapshots` (step -> state dict), so that any measurement can be
    made after training (:meth:`model_at`)."""

    def __init__(self, batch: RecallBatch, layer: int = 1):
        self.batch, self.layer = batch, layer
        self.snapshots: dict[int, dict[str, Tensor]] = {}

    def __call__(self, step: int, model) -> dict:
        self.snapshots[int(step)] = {k: v.detach().cpu().clone() for k, v in model.named_parameters() if v.requires_grad}
        return {"induction_score": induction_score(model, self.batch, self.layer)}

    @staticmethod
    def model_at(init_model, snapshot: dict[str, Tensor]):
        """A copy of ``init_model`` (the run's initial model: frozen weights are never trained)
        with the trainable weights of ``snapshot``."""
        import copy

        m = copy.deepcopy(init_model)
        missing = set(snapshot) - {k for k, _ in m.named_parameters()}
        if missing:
            raise ValueError(f"snapshot has weights the model lacks: {sorted(missing)}")
        m.load_state_dict(snapshot, strict=False)
        return m.eval()


def seed_interval(values: Float[np.ndarray, " seed"], n_boot: int = 10_000, level: float = 0.95,
                  seed: int = 0) -> dict:
    """Mean over seeds (replicates) of ``values`` and its percentile bootstrap interval
    (seeds resampled with replacement, :func:`mechtrunc.core.metrics.bootstrap_draws`' numpy stream):
    ``{"n", "mean", "lo", "hi"}``.  NaN values (a run that never crossed a threshold) are an
    error: censoring must be handled by the caller."""
    n_boot, level = check_bootstrap(n_boot, level)
    v = np.asarray(values, dtype=float)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values must be a non-empty 1-d array, got shape {v.shape}")
    if np.isnan(v).any():
        raise ValueError("values contain NaN (a threshold never crossed?): handle censored runs first")
    means = v[bootstrap_draws(v.size, n_boot, seed, stream="numpy").numpy()].mean(1)
    a = (1 - level) / 2  # numpy's quantile, as the published intervals (torch's differs in the last bit at times)
    return {"n": int(v.size), "mean": float(v.mean()), "lo": float(np.quantile(means, a)),
            "hi": float(np.quantile(means, 1 - a))}


def paired_seed_intervals(a: Float[np.ndarray, " seed"], b: Float[np.ndarray, " seed"], n_boot: int = 10_000,
                          level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Means of ``a`` and ``b`` (one value per seed, paired by seed), their difference
    ``mean(a) - mean(b)`` and ratio ``mean(a) / mean(b)``, each with a percentile bootstrap
    interval from the same resamples of the seeds (as :func:`seed_interval`'s).  One row per
    ``quantity`` (``a``, ``b``, ``a - b``, ``a / b``) with ``estimate, lo, hi, n``."""
    n_boot, level = check_bootstrap(n_boot, level)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"a and b must be 1-d arrays of the same non-zero length, got {a.shape} and {b.shape}")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("a or b contains NaN (a threshold never crossed?): handle censored runs first")
    idx = bootstrap_draws(a.size, n_boot, seed, stream="numpy").numpy()
    ma, mb = a[idx].mean(1), b[idx].mean(1)
    q = (1 - level) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        boots = {"a": ma, "b": mb, "a - b": ma - mb, "a / b": ma / mb}
        est = {"a": a.mean(), "b": b.mean(), "a - b": a.mean() - b.mean(),
               "a / b": a.mean() / b.mean() if b.mean() != 0 else math.nan}
    return pd.DataFrame([{"quantity": k, "estimate": float(est[k]), "lo": float(np.nanquantile(v, q)),
                          "hi": float(np.nanquantile(v, 1 - q)), "n": int(a.size)} for k, v in boots.items()])


def ov_gradient_noise(model, batch: RecallBatch, layer: int = 1) -> dict:
    """How much the loss gradient on ``batch`` (a training batch: noisy targets) moves attention
    layer ``layer``'s ``OV = W_V W_O`` (one head) toward the trigger -> noise association.

    The first-order change of ``OV`` under a gradient step is ``dOV = -(G_V W_O + W_V G_O)``
    (``G``: the loss gradients of ``W_V``, ``W_O``).  With ``u`` the unit mean head input at the
    repeated triggers (``xbar = sum_k A[q, k] x_k``, the direction the head reads there) and ``v``
    the unit readout of logit(noise) - mean of the others:

    - ``noise_entry_fraction``: ``(u^T dOV v)^2 / ||dOV||_F^2``, the share of the OV gradient's
      squared norm in that single "trigger -> noise" entry (1 = the gradient is only that entry);
    - ``noise_push_rate``: ``mean_q xbar_q dOV g_noise``, the first-order change of the head's
      noise push per unit learning rate (positive: the step adds noise to the head);
    - ``ov_grad_norm``: ``||dOV||_F``; ``loss``: the batch loss."""
    if model.cfg.n_heads != 1:
        raise ValueError(f"ov_gradient_noise needs one head per layer, got n_heads {model.cfg.n_heads}")
    from mechtrunc.core.metrics import masked_cross_entropy

    att = model.blocks[layer].attn
    store: dict[str, Tensor] = {}
    adapter = adapt(model)
    names = (adapter.hook_name("resid_pre", layer), adapter.hook_name("pattern", layer))
    was_training = model.training
    model.eval()
    params = [att.W_V, att.W_O]
    try:
        with torch.enable_grad():
            import contextlib

            with contextlib.ExitStack() as stack:
                for name in names:
                    stack.enter_context(adapter.hooked(name, lambda out, name=name: store.__setitem__(name, out.detach())))
                logits = model(batch.inputs)
            loss = masked_cross_entropy(logits, batch.targets, batch.loss_mask)
            G_V, G_O = torch.autograd.grad(loss, params)
    finally:
        model.train(was_training)
    W_V, W_O = att.W_V.detach()[0].double(), att.W_O.detach()[0].double()
    dOV = -(G_V[0].double() @ W_O + W_V @ G_O[0].double())
    rows, pos = batch.loss_mask.nonzero(as_tuple=True)
    pat = store[names[1]]
    pat = (pat.unsqueeze(1) if pat.ndim == 3 else pat)[rows, 0, pos].double()
    xbar = torch.einsum("ik,ikd->id", pat, store[names[0]][rows].double())
    g_noise, _ = _readouts(adapter.W_U().double(), batch.noise_id, batch.clean_targets()[rows, pos])
    u, v = xbar.mean(0) / xbar.mean(0).norm(), g_noise / g_noise.norm()
    norm2 = float((dOV ** 2).sum())
    return {"loss": float(loss.detach()), "ov_grad_norm": norm2 ** 0.5,
            "noise_entry_fraction": float((u @ dOV @ v) ** 2) / norm2 if norm2 else float("nan"),
            "noise_push_rate": float(((xbar @ dOV) @ g_noise).mean())}
