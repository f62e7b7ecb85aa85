"""Direction finders: which residual-stream directions carry a generic association.

- :func:`token_directions`: the residual-stream direction that raises a token's logit relative
  to the average token (its unembedding column minus the vocabulary mean, seen through the
  final LayerNorm's weight on bridges).
- :func:`rank_components`: the singular components of a layer's ``mlp.W_out`` (or
  ``attn.W_O``), ranked by how strongly each promotes given generic tokens through the
  unembedding, from the weights alone and, given prompts, from the FFN outputs observed there.
  Feed the top indices to :class:`~mechtrunc.core.interventions.RemoveComponents`.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from mechtrunc.core.adapters import adapt
from mechtrunc.core.prompts import PromptSet
from mechtrunc.core.runner import run_items

__all__ = ["token_ids", "token_directions", "rank_components"]


def token_ids(model, tokens: Sequence[int | str] | int | str) -> list[int]:
    """Token ids from ids or strings (each string must be exactly one token of the model's
    tokenizer, e.g. ``" the"``)."""
    adapter = adapt(model)
    items = [tokens] if isinstance(tokens, (int, str)) else list(tokens)
    return [adapter.token_id(t) for t in items]


def token_directions(model, tokens, center: bool = True) -> Float[Tensor, "n d_model"]:
    """One residual-stream direction per token: ``W_U[:, t]`` (minus the mean unembedding
    column when ``center``), multiplied by the final LayerNorm weight when the model has one."""
    adapter = adapt(model)
    ids = token_ids(model, tokens)
    W_U = adapter.W_U().float()
    dirs = W_U[:, ids].T
    if center:
        dirs = dirs - W_U.mean(1)
    ln = adapter.final_ln()
    if ln is not None:
        dirs = dirs * ln[0].float()
    return dirs


@torch.no_grad()
def rank_components(
    model, layer: int, tokens, matrix: str = "mlp.W_out", prompts: PromptSet | None = None,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Rank the singular components of ``matrix`` at ``layer`` by how much they promote the
    given tokens (summed over tokens).

    Columns: ``component`` (index, 0 = largest singular value), ``singular_value``,
    ``weight_score`` = ``s_i * |v_i . d|`` (direction-only: the sign of a component's
    coefficient is unknown without data) and, with ``prompts``, ``mean_coef`` (mean coefficient
    of the observed output on ``v_i`` at the read items) and ``activation_score`` (mean logit
    push ``coef_i * (v_i . d)``, signed: positive promotes the tokens).  Sorted by
    ``activation_score`` when prompts are given, else by ``weight_score``.
    """
    if matrix not in ("mlp.W_out", "attn.W_O"):
        raise ValueError(f"rank_components needs a matrix writing to the residual stream: 'mlp.W_out' or 'attn.W_O', got {matrix!r}")
    adapter = adapt(model)
    site = adapter.matrix(matrix, layer)
    _, S, Vh = adapter.svd(site)
    d = token_directions(model, tokens).sum(0).to(Vh.device)  # [d_model]
    align = Vh @ d  # [r]
    df = pd.DataFrame({
        "component": range(S.shape[0]),
        "singular_value": S.cpu().numpy(),
        "alignment": align.cpu().numpy(),
        "weight_score": (S * align.abs()).cpu().numpy(),
    })
    sort_by = "weight_score"
    if prompts is not None:
        hook = site.out_hook
        _, acts = run_items(model, prompts, capture=(hook,), batch_size=batch_size)
        out = acts[hook]
        if site.bias is not None:
            out = out - site.bias.float()
        # on LayerNorm models the final scale is positive and shared by all components of an
        # item, so it does not change their order
        coef = out @ Vh.T  # [item, r]
        df["mean_coef"] = coef.mean(0).cpu().numpy()
        df["activation_score"] = (coef * align).mean(0).cpu().numpy()
        sort_by = "activation_score"
    df.attrs["tokens"] = token_ids(model, tokens)
    return df.sort_values(sort_by, ascending=False).reset_index(drop=True)
