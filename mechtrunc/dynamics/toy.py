"""Training dynamics of the toy Transformer.

:class:`ToyDynamicsRecorder` is a ``callback`` for
:func:`mechtrunc.training.train` that logs, at every evaluation, the induction score of the
layer-2 head, and the singular spectra of the layer-2 ``W_in`` / ``W_out`` (and ``W - W_init``)
with each component's contribution to the noise and to the correct logit at repeated triggers.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from mechtrunc.adapters import adapt
from mechtrunc.runner import run_items
from mechtrunc.dynamics.measures import induction_score
from mechtrunc.tasks.recall import RecallBatch, RecallTask

__all__ = ["component_attributions", "noise_component_summary", "ToyDynamicsRecorder",
           "train_toy_with_dynamics"]


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
    hooks = (f"blocks.{layer}.hook_resid_mid", f"blocks.{layer}.mlp.hook_pre")
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
    """From :func:`component_attributions`, per (matrix, which[, step]): where the
    noise-carrying component sits (``noise_component``: index of the largest ``noise_attr``,
    0 = largest singular value; its ``noise_sv``, ``noise_sv_over_median`` and
    ``noise_share`` of the total noise attribution) and what LASER keeping the top
    ``int(keep * d_model)`` components keeps (``noise_kept``, ``correct_kept``: fractions of
    the total noise / correct attribution in the kept components; first order for W_in)."""
    keys = [c for c in ("step", "matrix", "which") if c in comp.columns]
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
    """A ``callback`` for :func:`mechtrunc.training.train`: at every evaluation it adds
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
    """Train the toy Transformer (``mechtrunc.training.train``) with a
    :class:`ToyDynamicsRecorder` on its clean test set.  Returns ``(TrainResult, spectra)``:
    the history gains ``induction_score``, ``win_noise_component``, ``wout_noise_component``;
    ``spectra`` is the per-component table at every evaluation (``step`` column)."""
    from mechtrunc.toy_model import ToyTransformer
    from mechtrunc.training import train

    task = RecallTask(cfg.recall_config())
    test = task.test_set(cfg.test_size, seed=cfg.seed + 10_000)  # the same test set as train()
    rec = ToyDynamicsRecorder(test, layer=layer, init=ToyTransformer(cfg.model_config()))
    result = train(cfg, out_dir=out_dir, progress=progress, callback=rec)
    return result, rec.spectra()
