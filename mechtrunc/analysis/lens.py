"""Lenses: what a weight component or a residual-stream site says in the vocabulary.

- :func:`vocab_lens`: for each singular component of a matrix, the tokens its *output
  direction* promotes (top-k) and suppresses (bottom-k) through the unembedding.
- :func:`generic_tokens`: the most frequent tokens of reference data (the candidates for a
  "generic" association such as the toy's noise token or " the").
- :func:`rank_generic_components`: every component ranked by how much it promotes given generic
  tokens; :func:`generic_components_by_step` runs it over training checkpoints.
- :func:`logit_lens`: the final LayerNorm and the unembedding applied to the residual stream at
  every layer's ``resid_pre``, ``resid_mid`` and ``resid_post``, scored with the prompt set's
  metrics, under any interventions; :func:`logit_lens_compare` puts several runs in one table.

**Reading a component through the unembedding.**  A matrix is ``out = x @ W`` with
``W = U diag(S) Vh`` (:meth:`mechtrunc.core.adapters.ModelAdapter.svd`).  Component ``i`` writes
``o_i = Vh[i]`` per unit of its coefficient; an input along ``U[:, i]`` of unit norm gives the
coefficient ``S[i]``.  Its *logit push* on token ``t`` is ``S[i] * (o_i . r_t)`` where ``r_t`` is
the readout direction of token ``t``: ``W_U[:, t]`` minus the vocabulary's mean column, times the
final LayerNorm's weight (as :func:`mechtrunc.analysis.directions.token_directions`); on LayerNorm (not
RMSNorm) models ``o_i`` is first centred over ``d_model``, since the LayerNorm removes the mean
(as :mod:`mechtrunc.analysis.attribution` does).  The LayerNorm's scale depends on the input and divides
every component alike, so pushes are reported before it: their order within a component and
between components of one run does not depend on it.  Centring over the vocabulary makes the
pushes of one component sum to zero over tokens: they say which tokens gain *relative to the
average token*, which is what a softmax sees.

The matrices: ``mlp.W_out`` (``o_i = Vh[i]``), ``attn.W_O`` per head (the SVD of the head's
``W_O[h] [d_head, d_model]``), ``attn.OV`` per head (the SVD of ``W_V[h] @ W_O[h]``; its right
singular vectors are what ``attn.OV`` truncation keeps, :func:`mechtrunc.core.interventions.ov_basis`),
the linear memory's ``W`` (``o_i`` its left singular vector in output space) and ``mlp.W_in``.
``W_in``'s components live in the MLP's hidden space: component ``i`` writes the hidden
direction ``Vh[i]`` (``d_mlp``); the lens reads it through the MLP's ``W_out``, ``o_i = Vh[i] @
W_out`` (not normalised), i.e. what the component would write to the residual stream if the
activation function passed it through unchanged.  The nonlinearity is ignored, so this reading
is a linear approximation: it is exact for the sign-preserving part of a ReLU/GELU only where the
hidden units it uses are active.

**The sign.**  A singular vector's sign is arbitrary.  Without prompts each component is
oriented so that its largest-magnitude push is positive (the ``top`` side is then the side the
component pushes hardest); with ``prompts`` it is oriented by the sign of the mean coefficient
of the observed output on ``o_i`` at the read items (``mean_coef``; for ``W_in`` the
coefficient of the post-activation hidden vector, what ``W_out`` reads, on ``Vh[i]``: the
pre-activation's sign would say nothing about what a ReLU lets through), so ``top`` is what the
component actually promotes on that data.  Both ends are always reported (``side`` = ``top`` / ``bottom``).

**Generic tokens from data** (:func:`generic_tokens`): for a token tensor or text, the unigram
frequency of all tokens (on English text this finds " the", "." and ","); for a
:class:`~mechtrunc.core.prompts.PromptSet`, the frequency of the *answers* at the read items, i.e.
of the targets the model is trained or scored on there (or, with ``count="tokens"``, of every
real token of its prompts).  Special tokens (padding, end of text: the tokenizer's special ids)
and padded positions are masked out before counting, so they can never be generic.  Pass the
noisy training items (the toy's ``RecallBatch.to_prompts(clean=False)``, the memory's sampled
targets): the noise token is then the most frequent answer (a fraction ``alpha`` of all
targets), while among all tokens of a toy sequence it is rare (only after repeated triggers) and
loses to the space character.

**resid_mid.**  Where the model has ``blocks.{l}.hook_resid_mid`` (toy, GPT-2) it is read there;
a parallel block (GPT-NeoX, GPT-J) has none and the lens uses ``resid_pre + attn_out``, the
residual stream with the attention output added and the MLP output not yet (on a sequential
block that is exactly ``resid_mid``).  ``df.attrs["resid_mid"]`` says which was used.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor

from mechtrunc._checks import check_choice
from mechtrunc._scalars import as_int
from mechtrunc.core.adapters import ModelAdapter, adapt
from mechtrunc.core.interventions import Intervention
from mechtrunc.core.metrics import metrics_from_logits
from mechtrunc.core.prompts import PromptSet, special_ids
from mechtrunc.core.runner import run_items

__all__ = ["LENS_MATRICES", "HEAD_MATRICES", "LENS_SITES", "vocab_lens", "generic_tokens", "rank_generic_components",
           "generic_components_by_step", "logit_lens", "logit_lens_compare", "component_directions"]

#: matrices the vocabulary lens reads (``W``: the linear memory's matrix)
LENS_MATRICES = ("mlp.W_in", "mlp.W_out", "attn.W_O", "attn.OV", "W")
#: residual-stream sites of the logit lens, in order within a layer
LENS_SITES = ("resid_pre", "resid_mid", "resid_post")
#: the lens matrices read one head at a time (each head's ``W_O[h]`` and ``W_V[h] W_O[h]``)
HEAD_MATRICES = ("attn.W_O", "attn.OV")


# ----------------------------------------------------------------------------- validation
def _check_k(k) -> int:
    k = as_int(k, "k")
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return k


def _check_matrix(adapter: ModelAdapter, matrix) -> str:
    if matrix not in LENS_MATRICES:
        raise ValueError(f"unknown matrix {matrix!r} for the vocabulary lens; valid matrices: {', '.join(LENS_MATRICES)}")
    if matrix not in adapter.matrices:
        if matrix == "W":
            raise ValueError(f"matrix 'W' exists only on a mechtrunc.models.memory.LinearMemory, not on a {adapter.kind} model")
        raise ValueError(f"matrix {matrix!r} does not exist on this {adapter.kind} model; its matrices: "
                         f"{', '.join(m for m in adapter.matrices if m in LENS_MATRICES)}")
    return matrix


def _layers(adapter: ModelAdapter, matrix: str, layer) -> list[int]:
    if layer is None:
        return [l for l in range(adapter.n_layers) if not matrix.startswith("mlp.") or adapter.has_mlp(l)]
    layer = adapter.check_layer(layer)
    if matrix.startswith("mlp.") and not adapter.has_mlp(layer):
        raise ValueError(f"layer {layer} has no MLP, so matrix {matrix!r} does not exist")
    return [layer]


def _heads(adapter: ModelAdapter, matrix: str, head) -> list[int | None]:
    if matrix not in HEAD_MATRICES:
        if head is not None:
            raise ValueError(f"matrix {matrix!r} has no heads: head={head!r} applies only to "
                             f"{' and '.join(HEAD_MATRICES)}; leave head out")
        return [None]
    if head is None:
        return list(range(adapter.n_heads))
    return [adapter.check_head(head)]


# ----------------------------------------------------------------------------- the readout
def _readout(adapter: ModelAdapter) -> tuple[Tensor, bool]:
    """``(R [d_model, vocab], centre)``: token readout directions (centred over the vocabulary,
    times the final LayerNorm's weight) and whether directions are centred over ``d_model``."""
    W_U = adapter.W_U().float()
    R = W_U - W_U.mean(1, keepdim=True)
    ln = adapter.final_ln()
    centre = False
    if ln is not None:
        R = R * ln[0].float().to(R.device)[:, None]
        centre = not adapter.ln_is_rms
    return R, centre


def component_directions(model, matrix: str, layer: int, head: int | None = None) -> dict:
    """The singular components of one matrix (one head for ``attn.W_O`` / ``attn.OV``) as the
    vocabulary lens reads them: ``{"S": [r], "out": [r, d_model]`` (``o_i``, per unit
    coefficient), ``"coef_basis": [r, d]`` (the basis the observed output is projected on to
    get each component's coefficient), ``"hook"``: the hook whose output is projected, and
    ``"head"``}.  See the module docstring for the reading of each matrix."""
    adapter = adapt(model)
    _check_matrix(adapter, matrix)
    (layer,) = _layers(adapter, matrix, layer)
    if matrix in HEAD_MATRICES and head is None:
        raise ValueError(f"matrix {matrix!r} is read one head at a time: give head=0..{adapter.n_heads - 1}")
    (head,) = _heads(adapter, matrix, head)
    if matrix in ("mlp.W_out", "W"):
        site = adapter.matrix(matrix, layer)
        _, S, Vh = adapter.svd(site)
        return {"S": S.float(), "out": Vh.float(), "coef_basis": Vh.float(), "hook": site.out_hook,
                "bias": site.bias, "head": None}
    if matrix == "mlp.W_in":
        site = adapter.matrix("mlp.W_in", layer)
        _, S, Vh = adapter.svd(site)
        W_out = adapter.matrix("mlp.W_out", layer).get().float()
        # observed coefficient: the post-activation hidden vector (what W_out reads) on Vh[i]
        return {"S": S.float(), "out": Vh.float() @ W_out, "coef_basis": Vh.float(),
                "hook": adapter.site_hook("mlp_post", layer), "bias": None, "head": None}
    h, dh, d = adapter.n_heads, adapter.d_head, adapter.d_model
    W_O = adapter.matrix("attn.W_O", layer).get().reshape(h, dh, d)[head].float()
    if matrix == "attn.W_O":
        _, S, Vh = torch.linalg.svd(W_O, full_matrices=False)
    else:
        W_V = adapter.matrix("attn.W_V", layer).get().reshape(d, h, dh)[:, head].float()
        _, S, Vh = torch.linalg.svd(W_V @ W_O, full_matrices=False)
        S, Vh = S[:dh], Vh[:dh]
    return {"S": S, "out": Vh, "coef_basis": Vh, "hook": adapter.hook_name("z", layer), "W_O_head": W_O,
            "bias": None, "head": head}


def _pushes(parts: dict, R: Tensor, centre: bool) -> Tensor:
    """``[r, vocab]``: each component's logit push per unit coefficient (``o_i . r_t``)."""
    out = parts["out"].to(R.device)
    if centre:
        out = out - out.mean(-1, keepdim=True)
    return out @ R


def _mean_coefs(model, parts: dict, prompts: PromptSet, batch_size: int, seen: dict) -> Tensor:
    """``[item, r]``: the coefficient of the observed output on each component at the read items
    (``seen``: activations already captured in this call, by hook name)."""
    hook = parts["hook"]
    if hook not in seen:
        seen[hook] = run_items(model, prompts, capture=(hook,), batch_size=batch_size)[1][hook]
    out = seen[hook]
    if parts["head"] is not None:  # z [item, head, d_head] -> this head's output z_h @ W_O[h]
        out = out[:, parts["head"]] @ parts["W_O_head"].to(out.device)
    elif parts["bias"] is not None:
        out = out - parts["bias"].float().to(out.device)
    return out @ parts["coef_basis"].to(out.device).T


def _check_components(components, r: int) -> list[int]:
    if components is None:
        return list(range(r))
    items = [components] if not isinstance(components, (list, tuple, range, Tensor)) else list(components)
    out = []
    for c in items:
        c = as_int(c, "component")
        if not 0 <= c < r:
            raise ValueError(f"component {c} is out of range: this matrix has components 0..{r - 1}")
        out.append(c)
    return out


def _decoder(adapter: ModelAdapter, itos: Sequence[str] | None):
    if itos is not None:
        itos = list(itos)
        return lambda t: itos[t] if t < len(itos) else f"#{t}"
    tok = getattr(adapter.model, "tokenizer", None)
    if tok is not None:
        return lambda t: tok.decode([t])
    return lambda t: f"#{t}"


def _targets(adapter, matrix, layer, head):
    return [(l, h) for l in _layers(adapter, matrix, layer) for h in _heads(adapter, matrix, head)]


# ----------------------------------------------------------------------------- vocabulary lens
@torch.no_grad()
def vocab_lens(
    model, matrix: str, layer: int | None = None, k: int = 10, head: int | None = None, components=None,
    prompts: PromptSet | None = None, itos: Sequence[str] | None = None, batch_size: int = 64,
) -> pd.DataFrame:
    """The tokens each singular component of ``matrix`` at ``layer`` promotes (``side="top"``,
    the ``k`` largest pushes) and suppresses (``side="bottom"``, the ``k`` smallest) through the
    unembedding.  ``head``: one head of ``attn.W_O`` / ``attn.OV`` (default: every head);
    ``components``: component indices (0 = largest singular value; default all); ``layer=None``:
    every layer (the memory's ``W`` is layer 0); ``prompts``: orient each component by the sign
    of its mean observed coefficient (else by its largest-magnitude push; module docstring);
    ``itos``: token strings by id (the toy's ``task.itos``; default the model's tokenizer).

    One row per (layer, head, component, side, rank): ``matrix, layer, head, component,
    singular_value, sign, mean_coef, side, rank`` (1 = the strongest), ``token``, ``token_str``
    and ``push`` (``sign * S[i] * (o_i . r_t)``: the logit push relative to the average token of
    a unit input along the component, before the final LayerNorm's scale).
    """
    adapter = adapt(model)
    _check_matrix(adapter, matrix)
    k = _check_k(k)
    k = min(k, adapter.d_vocab)
    R, centre = _readout(adapter)
    decode = _decoder(adapter, itos)
    rows, seen = [], {}
    for l, h in _targets(adapter, matrix, layer, head):
        parts = component_directions(adapter, matrix, l, h)
        S = parts["S"].to(R.device)
        comps = _check_components(components, S.shape[0])
        push = _pushes(parts, R, centre) * S[:, None]  # [r, vocab]
        coef = _mean_coefs(model, parts, prompts, batch_size, seen).mean(0).to(R.device) if prompts is not None else None
        for i in comps:
            p = push[i]
            if coef is not None:
                sign = 1.0 if float(coef[i]) >= 0 else -1.0
            else:
                sign = 1.0 if float(p[p.abs().argmax()]) >= 0 else -1.0
            p = p * sign
            for side, descending in (("top", True), ("bottom", False)):
                vals, ids = p.sort(descending=descending)
                for rank, (t, v) in enumerate(zip(ids[:k].tolist(), vals[:k].tolist()), start=1):
                    rows.append((matrix, l, h, i, float(S[i]), sign, float(coef[i]) if coef is not None else float("nan"),
                                 side, rank, t, decode(t), v))
    df = pd.DataFrame(rows, columns=["matrix", "layer", "head", "component", "singular_value", "sign", "mean_coef",
                                     "side", "rank", "token", "token_str", "push"])
    df["head"] = df["head"].astype("Int64")
    df.attrs["sign_from"] = "activations" if prompts is not None else "weights"
    return df


# ----------------------------------------------------------------------------- generic tokens
def generic_tokens(data, k: int = 5, tokenizer=None, exclude: Iterable[int] = (), *,
                   count: str = "answers") -> pd.DataFrame:
    """The ``k`` most frequent tokens of reference data: a token tensor (any shape; all tokens),
    a text (tokenized with ``tokenizer``; all tokens), a list of texts, or a
    :class:`~mechtrunc.core.prompts.PromptSet`: with ``count="answers"`` (default) its answers at the
    read items (pass the training targets, e.g. the toy's noisy ``to_prompts(clean=False)``; see
    the module docstring), with ``count="tokens"`` every real token of its prompts (each
    sequence's positions up to its last read item: the right padding after it never counts).

    Special tokens never count, by construction: the tokenizer's special ids (``all_special_ids``:
    padding, end of text, BOS, UNK, added specials) and ``exclude`` (more ids, e.g. a toy's
    padding) are masked out before counting, so they are neither returned nor part of the
    frequencies' total.  Columns ``token, count, frequency`` (``token_str`` too when a tokenizer
    is given), most frequent first; ties by smaller id."""
    k = _check_k(k)
    if count not in ("answers", "tokens"):
        raise ValueError(f"count must be 'answers' or 'tokens' (what of a PromptSet is counted), got {count!r}")
    if isinstance(data, PromptSet):
        if count == "answers":
            ids = data.answer.reshape(-1)
        else:  # every position up to the sequence's last read item: the prompt, never its padding
            last = torch.full((data.n_sequences,), -1, dtype=torch.long).scatter_reduce(
                0, data.rows.long(), data.pos.long(), reduce="amax")
            real = torch.arange(data.tokens.shape[1])[None, :] <= last[:, None]
            ids = data.tokens[real]
    elif isinstance(data, str) or (isinstance(data, (list, tuple)) and data and all(isinstance(x, str) for x in data)):
        if tokenizer is None:
            raise ValueError("generic_tokens got text but no tokenizer: pass tokenizer= (e.g. model.tokenizer)")
        texts = [data] if isinstance(data, str) else list(data)
        ids = torch.tensor([t for text in texts for t in tokenizer.encode(text, add_special_tokens=False)], dtype=torch.long)
    elif isinstance(data, Tensor) or isinstance(data, (list, tuple)):
        ids = torch.as_tensor(data).reshape(-1)
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise TypeError(f"generic_tokens needs integer token ids, got a {ids.dtype} tensor")
    else:
        raise TypeError(f"generic_tokens takes a token tensor, a text, a list of texts or a PromptSet, "
                        f"got {type(data).__name__}")
    if ids.numel() == 0:
        raise ValueError("generic_tokens got no tokens")
    masked = sorted(special_ids(tokenizer) | {int(t) for t in exclude})
    ids = ids.cpu().long()
    ids = ids[~torch.isin(ids, torch.tensor(masked, dtype=torch.long))]
    if ids.numel() == 0:
        raise ValueError(f"generic_tokens got only special or excluded tokens (ids {masked})")
    counts = Counter(ids.tolist())
    total = sum(counts.values())
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    df = pd.DataFrame({"token": [t for t, _ in top], "count": [c for _, c in top],
                       "frequency": [c / total for _, c in top]})
    if tokenizer is not None:
        df.insert(1, "token_str", [tokenizer.decode([t]) for t in df["token"]])
    return df


def _generic_ids(adapter: ModelAdapter, generic) -> list[int]:
    if isinstance(generic, pd.DataFrame):
        generic = generic["token"].tolist()
    items = [generic] if isinstance(generic, (int, str)) else list(generic)
    if not items:
        raise ValueError("no generic tokens given")
    return [adapter.token_id(t) for t in items]


@torch.no_grad()
def rank_generic_components(
    model, matrix: str, layer: int | None, generic, head: int | None = None, prompts: PromptSet | None = None,
    itos: Sequence[str] | None = None, batch_size: int = 64,
) -> pd.DataFrame:
    """Every singular component of ``matrix`` (at ``layer``, or every layer when None; every
    head of ``attn.W_O`` / ``attn.OV`` unless ``head``), ranked by how much it promotes the
    ``generic`` tokens (ids, single-token strings, or :func:`generic_tokens`' table).

    Columns: ``matrix, layer, head, component, singular_value``, ``generic_score`` =
    ``S[i] * |sum_t o_i . r_t|`` over the generic tokens (weights only, sign-free, as
    :func:`mechtrunc.analysis.directions.rank_components`' ``weight_score``), ``generic_z`` (the generic
    tokens' mean push over the standard deviation of the component's pushes over the
    vocabulary, on the side that promotes them), ``generic_rank`` (the best vocabulary rank of
    a generic token on that side: 1 = the component's most promoted token), ``top_token`` /
    ``top_str`` (that side's most promoted token) and, with ``prompts``, ``mean_coef`` and
    ``activation_score`` (mean over items of ``coef_i * sum_t o_i . r_t``, signed: positive
    promotes the generic tokens on that data).  Sorted by ``activation_score`` with prompts,
    else by ``generic_score``, best first.
    """
    adapter = adapt(model)
    _check_matrix(adapter, matrix)
    ids = _generic_ids(adapter, generic)
    R, centre = _readout(adapter)
    decode = _decoder(adapter, itos)
    idx = torch.tensor(ids, device=R.device)
    frames, seen = [], {}
    for l, h in _targets(adapter, matrix, layer, head):
        parts = component_directions(adapter, matrix, l, h)
        S = parts["S"].to(R.device)
        unit = _pushes(parts, R, centre)  # [r, vocab], per unit coefficient
        g = unit[:, idx].sum(1)  # [r]
        orient = torch.where(g >= 0, 1.0, -1.0)
        oriented = unit * orient[:, None]
        gen_vals = oriented[:, idx]  # [r, n_generic]
        best = gen_vals.max(1).values
        rank = (oriented > best[:, None]).sum(1) + 1
        std = oriented.std(1).clamp_min(1e-30)
        top = oriented.argmax(1)
        df = pd.DataFrame({
            "matrix": matrix, "layer": l, "head": h, "component": range(S.shape[0]),
            "singular_value": S.cpu().numpy(), "generic_score": (S * g.abs()).cpu().numpy(),
            "generic_z": (gen_vals.mean(1) / std).cpu().numpy(), "generic_rank": rank.cpu().numpy(),
            "top_token": top.cpu().numpy(), "top_str": [decode(int(t)) for t in top.tolist()],
        })
        if prompts is not None:
            coef = _mean_coefs(model, parts, prompts, batch_size, seen).to(R.device)
            df["mean_coef"] = coef.mean(0).cpu().numpy()
            df["activation_score"] = (coef * g).mean(0).cpu().numpy()
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out["head"] = out["head"].astype("Int64")
    sort_by = "activation_score" if prompts is not None else "generic_score"
    out = out.sort_values(sort_by, ascending=False, kind="stable").reset_index(drop=True)
    out.attrs["generic"] = ids
    return out


def generic_components_by_step(
    checkpoints: Iterable[tuple[int, object]], matrix: str, generic, layer: int | None = None,
    head: int | None = None, itos: Sequence[str] | None = None,
) -> pd.DataFrame:
    """When does a component promoting the generic tokens appear?  ``checkpoints``: ``(step,
    model)`` pairs (a generator may load each model lazily, e.g. with
    :func:`mechtrunc.models.hf.load_model`; each is dropped before the next is read).  For each
    step, the best row of :func:`rank_generic_components` (weights only) per layer: columns
    ``step`` and that function's columns.  Sorted by step, then layer."""
    rows = []
    for step, model in checkpoints:
        ranked = rank_generic_components(model, matrix, layer, generic, head=head, itos=itos)
        best = ranked.sort_values("generic_score", ascending=False, kind="stable").groupby("layer", sort=True).head(1)
        rows.append(best.assign(step=as_int(step, "step")))
        del model
    if not rows:
        raise ValueError("no checkpoints given")
    df = pd.concat(rows, ignore_index=True)
    cols = ["step"] + [c for c in df.columns if c != "step"]
    return df[cols].sort_values(["step", "layer"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- logit lens
def _check_sites(sites) -> tuple[str, ...]:
    sites = (sites,) if isinstance(sites, str) else tuple(sites)
    if not sites:
        raise ValueError(f"no sites given; valid sites: {', '.join(LENS_SITES)}")
    for s in sites:
        check_choice("logit-lens site", s, LENS_SITES, label="valid sites")
    return tuple(s for s in LENS_SITES if s in sites)  # residual-stream order


@torch.no_grad()
def logit_lens(
    model, prompts: PromptSet, *interventions: Intervention, sites=LENS_SITES, batch_size: int = 64,
    label: str | None = None,
) -> pd.DataFrame:
    """The logit lens: at every layer and site (``resid_pre``, ``resid_mid``, ``resid_post``),
    the residual stream at the read items put through the model's final LayerNorm (with its own
    scale, computed from that residual) and unembedding, scored like the model's logits
    (:func:`mechtrunc.core.metrics.metrics_from_logits`: ``accuracy, p_answer, loss`` and per
    competitor ``p_{name}, acc_vs_{name}, logit_diff_{name}``), with the interventions active.

    One row per (layer, site), in residual-stream order: ``label`` (when given), ``layer``,
    ``site``, ``depth`` (0, 1, 2... along the stream) and the metrics.  At the last layer's
    ``resid_post`` the lens is the model's own output.  ``df.attrs["resid_mid"]`` says how
    ``resid_mid`` was read (module docstring); ``df.attrs["model"]`` holds the model's own metrics.
    """
    adapter = adapt(model)
    sites = _check_sites(sites)
    stack = adapter.stack
    if stack is None or not adapter.has_hooks or not {"resid_pre", "attn_out", "resid_post"} <= set(adapter.sites):
        raise ValueError(f"the logit lens needs a Transformer with hook points and a layer stack "
                         f"(toy model or TransformerBridge), not a {adapter.kind} model")
    L = adapter.n_layers
    hook = adapter.hook_name
    native_mid = all(adapter.has_hook(hook("resid_mid", l)) for l in range(L))
    capture = []
    for l in range(L):
        capture += [hook("resid_pre", l), hook("resid_post", l)]
        if "resid_mid" in sites:
            capture += [hook("resid_mid", l)] if native_mid else [hook("attn_out", l)]
    logits, acts = run_items(model, prompts, *interventions, capture=tuple(capture), batch_size=batch_size)
    dtype = next(adapter.model.parameters()).dtype
    rows, depth = [], 0
    for l in range(L):
        for site in sites:
            if site == "resid_mid":
                resid = acts[hook("resid_mid", l)] if native_mid else \
                    acts[hook("resid_pre", l)] + acts[hook("attn_out", l)]
            else:
                resid = acts[hook(site, l)]
            lens_logits = torch.cat([stack.unembed(chunk.to(dtype)).float()
                                     for chunk in resid.split(max(1, batch_size))]) if len(resid) else resid
            m = metrics_from_logits(lens_logits, prompts)
            rows.append({"layer": l, "site": site, "depth": depth, **m})
            depth += 1
    df = pd.DataFrame(rows)
    if label is not None:
        df.insert(0, "label", label)
    df.attrs["resid_mid"] = "hook_resid_mid" if native_mid else "resid_pre + attn_out"
    df.attrs["model"] = metrics_from_logits(logits, prompts)
    return df


def logit_lens_compare(
    model, prompts: PromptSet, interventions_by_label: Mapping[str, Sequence[Intervention] | Intervention],
    sites=LENS_SITES, batch_size: int = 64,
) -> pd.DataFrame:
    """:func:`logit_lens` once per entry of ``{label: intervention or list of them}`` (an empty
    list is the full model), concatenated: columns ``label, layer, site, depth`` and metrics."""
    if not interventions_by_label:
        raise ValueError("logit_lens_compare needs at least one {label: interventions} entry")
    frames = []
    for label, ivs in interventions_by_label.items():
        ivs = [ivs] if isinstance(ivs, Intervention) else list(ivs)
        frames.append(logit_lens(model, prompts, *ivs, sites=sites, batch_size=batch_size, label=str(label)))
    df = pd.concat(frames, ignore_index=True)
    df.attrs["resid_mid"] = frames[0].attrs["resid_mid"]
    df.attrs["model"] = {f.iloc[0]["label"]: f.attrs["model"] for f in frames}
    return df
