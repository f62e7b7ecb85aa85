"""Direct logit attribution of the answer-minus-competitor logit difference.

The final residual stream at a read position is a sum of parts: token embedding, positional
embedding (when the model has one), each head's output ``z_h @ W_O[h]``, each attention
output bias ``b_O``, each MLP output, and ``other`` (whatever a hook edit added to the residual
stream outside those parts; zero without such edits).  The final LayerNorm is taken into account
exactly: with ``scale`` read from ``ln_final.hook_scale`` during the same run, a part ``c``
contributes ``((c - mean(c)) / scale * w_ln) . (W_U[:, answer] - W_U[:, competitor])`` (no
centring for RMSNorm, no LayerNorm at all on the toy), and the LayerNorm bias together with the
unembedding bias form the ``bias`` part.  The parts add up to the model's logit difference.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from mechtrunc.core.adapters import adapt
from mechtrunc.core.interventions import Intervention, intervene
from mechtrunc.core.prompts import PromptSet
from mechtrunc.core.runner import run_items

__all__ = ["attribute", "attribute_items", "attribute_change", "COMPONENT_KINDS"]

COMPONENT_KINDS = ("embed", "pos_embed", "head", "attn_bias", "mlp", "other", "bias", "total")


def _parts(adapter, acts: dict[str, Tensor]) -> list[tuple[str, str, int | None, int | None, Tensor]]:
    """(component, kind, layer, head, vector [item, d_model]) for every residual-stream part."""
    parts = []
    embed = acts[adapter.hook_name("resid_pre", 0)]
    if adapter.has_pos_embed():
        pos = acts[adapter.hook_name("pos_embed")]
        parts.append(("pos_embed", "pos_embed", None, None, pos))
        embed = embed - pos
    parts.append(("embed", "embed", None, None, embed))
    for layer in range(adapter.n_layers):
        z = acts[adapter.hook_name("z", layer)]  # [item, head, d_head]
        W_O = adapter.head_W_O(layer).float()
        heads = torch.einsum("ihe,hed->ihd", z, W_O)
        for h in range(adapter.n_heads):
            parts.append((f"L{layer}H{h}", "head", layer, h, heads[:, h]))
        b_O = adapter.attn_out_bias(layer)
        if b_O is not None:
            parts.append((f"L{layer}.attn_bias", "attn_bias", layer, None, b_O.float().expand_as(embed)))
        if adapter.has_mlp(layer):
            parts.append((f"L{layer}.mlp", "mlp", layer, None, acts[adapter.hook_name("mlp_out", layer)]))
    final = acts[adapter.hook_name("resid_post", adapter.n_layers - 1)]
    other = final - sum(p[-1] for p in parts)
    parts.append(("other", "other", None, None, other))
    return parts


def _capture(model, prompts: PromptSet, interventions, batch_size: int):
    """One run with the interventions active: ``(adapter, logits, parts, W_U, b_U, ln, scale)``,
    the residual-stream parts of :func:`_parts` and the weights that read them out."""
    adapter = adapt(model)
    L = adapter.n_layers
    capture = [adapter.hook_name("resid_pre", 0), adapter.hook_name("resid_post", L - 1)]
    if adapter.has_pos_embed():
        capture.append(adapter.hook_name("pos_embed"))
    for layer in range(L):
        capture.append(adapter.hook_name("z", layer))
        if adapter.has_mlp(layer):
            capture.append(adapter.hook_name("mlp_out", layer))
    ln = adapter.final_ln()
    if ln is not None:
        capture.append(adapter.hook_name("final_scale"))
    with intervene(model, *interventions):  # weights read below must be the intervened ones
        logits, acts = run_items(model, prompts, capture=tuple(capture), batch_size=batch_size)
        parts = _parts(adapter, acts)
        W_U = adapter.W_U().float()
        b_U = adapter.b_U()
    scale = acts[adapter.hook_name("final_scale")].reshape(-1, 1) if ln is not None else None
    return adapter, logits, parts, W_U, b_U, ln, scale


def _item_contributions(adapter, prompts: PromptSet, j: int, parts, W_U, b_U, ln, scale) -> list[tuple]:
    """Per part, then ``bias`` and ``total``: ``(component, kind, layer, head, [item] tensor)``,
    each item's direct contribution to ``logit(answer) - logit(competitor j)``."""
    answer = prompts.answer.to(W_U.device)
    comp = prompts.competitors[:, j].to(W_U.device)
    du = (W_U[:, answer] - W_U[:, comp]).T  # [item, d_model]
    bias = torch.zeros(len(prompts), device=W_U.device)
    if b_U is not None:
        bias = bias + (b_U[answer] - b_U[comp]).float()
    if ln is not None:
        w_ln, b_ln = ln
        du_ln = du * w_ln.float()
        centre = not adapter.ln_is_rms
        if b_ln is not None:
            bias = bias + (du * b_ln.float()).sum(-1)
        contrib = lambda v: (((v - v.mean(-1, keepdim=True)) if centre else v) / scale * du_ln).sum(-1)
    else:
        contrib = lambda v: (v * du).sum(-1)
    out, total = [], torch.zeros(len(prompts), device=W_U.device)
    for name, kind, layer, head, vec in parts:
        c = contrib(vec)
        total = total + c
        out.append((name, kind, layer, head, c))
    out.append(("bias", "bias", None, None, bias))
    out.append(("total", "total", None, None, total + bias))
    return out


def attribute(
    model, prompts: PromptSet, *interventions: Intervention, batch_size: int = 64
) -> pd.DataFrame:
    """Mean direct logit attribution of ``logit(answer) - logit(competitor)`` over the items,
    for each competitor of the prompt set, with the interventions active.

    Returns a long DataFrame with columns ``component, kind, layer, head, competitor,
    attribution``; the ``total`` row of each competitor is the sum of its parts and equals the
    model's mean logit difference (``df.attrs["logit_diff"][competitor]``).
    """
    adapter, logits, parts, W_U, b_U, ln, scale = _capture(model, prompts, interventions, batch_size)
    answer = prompts.answer.to(W_U.device)
    rows, logit_diff = [], {}
    for j, comp_name in enumerate(prompts.competitor_names):
        for name, kind, layer, head, c in _item_contributions(adapter, prompts, j, parts, W_U, b_U, ln, scale):
            rows.append((name, kind, layer, head, comp_name, c.mean().item()))
        comp = prompts.competitors[:, j].to(W_U.device)
        la = logits.gather(1, answer[:, None].to(logits.device)).squeeze(1)
        lc = logits.gather(1, comp[:, None].to(logits.device)).squeeze(1)
        logit_diff[comp_name] = (la - lc).mean().item()
    df = pd.DataFrame(rows, columns=["component", "kind", "layer", "head", "competitor", "attribution"])
    df["layer"] = df["layer"].astype("Int64")
    df["head"] = df["head"].astype("Int64")
    df.attrs["logit_diff"] = logit_diff
    return df


def attribute_items(
    model, prompts: PromptSet, competitor: str, *interventions: Intervention, batch_size: int = 64
) -> pd.DataFrame:
    """:func:`attribute` item by item, for one competitor: one row per (component, item) with
    columns ``component, kind, layer, head, item, sequence, attribution`` (``sequence``: the
    item's prompt sequence, for bootstrap intervals that resample whole prompts).  The mean over
    items of a component's rows is its :func:`attribute` value."""
    if competitor not in prompts.competitor_names:
        raise ValueError(f"unknown competitor {competitor!r}; this prompt set's: {', '.join(prompts.competitor_names)}")
    adapter, _, parts, W_U, b_U, ln, scale = _capture(model, prompts, interventions, batch_size)
    j = list(prompts.competitor_names).index(competitor)
    contribs = _item_contributions(adapter, prompts, j, parts, W_U, b_U, ln, scale)
    n = len(prompts)
    seq = prompts.rows.cpu().numpy()
    frames = [pd.DataFrame({"component": name, "kind": kind, "layer": layer, "head": head, "item": range(n),
                            "sequence": seq, "attribution": c.detach().double().cpu().numpy()})
              for name, kind, layer, head, c in contribs]
    df = pd.concat(frames, ignore_index=True)
    df["layer"] = df["layer"].astype("Int64")
    df["head"] = df["head"].astype("Int64")
    return df


def attribute_change(
    model, prompts: PromptSet, *interventions: Intervention, batch_size: int = 64
) -> pd.DataFrame:
    """Per component, the attribution on the clean run, on the intervened run, and the change
    (``intervened - clean``); the ``total`` rows hold the change of the model's logit difference.
    Sorted within each competitor by the size of the change."""
    clean = attribute(model, prompts, batch_size=batch_size)
    inter = attribute(model, prompts, *interventions, batch_size=batch_size)
    keys = ["component", "kind", "layer", "head", "competitor"]
    df = clean.rename(columns={"attribution": "clean"}).merge(
        inter.rename(columns={"attribution": "intervened"}), on=keys, how="outer"
    )
    df[["clean", "intervened"]] = df[["clean", "intervened"]].fillna(0.0)
    df["change"] = df["intervened"] - df["clean"]
    df = df.assign(_abs=df["change"].abs(), _tot=df["kind"].eq("total"))
    df = df.sort_values(["competitor", "_tot", "_abs"], ascending=[True, True, False]).drop(columns=["_abs", "_tot"])
    df.attrs["logit_diff"] = {"clean": clean.attrs["logit_diff"], "intervened": inter.attrs["logit_diff"]}
    df.attrs["interventions"] = [iv.label for iv in interventions]
    return df.reset_index(drop=True)
