"""The LASER grid engine: every (layer, matrix, keep) truncation of one model, near the cost of
the work that cannot be avoided.

:func:`evaluate_grid` yields, for a baseline and then each configuration, the metric dictionary
that ``mechtrunc.metrics.evaluate(model, prompts, Truncate(matrix, layer=layer, keep=keep))``
gives (equal to ~1e-5 in float32), as soon as the configuration's layer is finished, so a study
can store each row as it comes (resumable).  What it does instead of one full evaluation per
configuration (each measured in ``benchmarks/bench_sweep_engine.py``, see docs/benchmarks.md):

- **Start at the truncated layer.** Truncating layer ``l``'s MLP leaves everything before it
  unchanged: the engine walks the clean model layer by layer, keeps the clean residual stream of
  the current layer for all prompts, and runs each configuration from there.  In layer ``l``
  itself only the MLP output changes (GPT-NeoX's parallel attention reads the same residual; in
  sequential blocks the attention runs before the MLP anyway), and it changes by a low-rank
  correction (below), so layer ``l`` costs almost nothing.
- **Low-rank MLP without a dense write-back.** With ``Q`` the top-``r`` singular basis of the
  *smaller* side of ``W`` (``x @ W``, shape ``[d_in, d_out]``): ``x @ W_k = (x @ Q_k)(Q_k^T W)``
  when ``d_in <= d_out`` (``mlp.W_in``) and ``x @ W_k = (x @ W) Q_k Q_k^T`` otherwise
  (``mlp.W_out``, ``x @ W`` is the clean MLP output), exactly the truncated product.
- **All keeps (and both matrices) of a layer in one batched forward** through the remaining
  layers, and **logits only where the prompt set reads them**: the last layer runs its queries,
  attention output and MLP only at the read positions, and the unembedding (which dominates
  small models) only there too.
- **One decomposition per matrix per checkpoint**, by the method ``svd_method`` (``"gram"``:
  eigendecomposition of the smaller Gram matrix in float64, the default; ``"gesdd"``, ``"gesvd"``,
  ``"gesvdj"``: ``torch.linalg.svd`` drivers), cached on disk under ``svd_cache`` keyed by a
  SHA-1 of the weight's bytes, so a rerun or a second grid on the same weights pays nothing and
  any change of the weight invalidates the entry.

Fast paths: GPT-NeoX (``TransformerBridge`` over ``GPTNeoXForCausalLM``, or that Hugging Face
model itself) and the toy model, for ``mlp.W_in``/``mlp.W_out``.  Anything else a mechtrunc
adapter supports (GPT-2 bridges, attention matrices) runs the reference evaluation per
configuration (hook mode, one SVD per matrix), with the same results.
"""

from __future__ import annotations

import hashlib
import math
import operator
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from mechtrunc.interventions import rank_for_keep
from mechtrunc.metrics import item_metrics
from mechtrunc.prompts import PromptSet

__all__ = ["evaluate_grid", "GridResult", "SVDCache", "truncation_basis", "SVD_METHODS", "FAST_MATRICES"]

#: decomposition methods of :func:`truncation_basis`
SVD_METHODS = ("gram", "gram32", "gesdd", "gesvd", "gesvdj", "gesvda")
#: matrices with a fast path
FAST_MATRICES = ("mlp.W_in", "mlp.W_out")
_RULES = ("round", "authors")


@dataclass
class GridResult:
    """One evaluated configuration (``baseline`` true: the unmodified model, ``layer``/``keep``/
    ``rank``/``max_rank`` None, ``matrix`` ``"none"``).  ``identity``: the rank is the full rank,
    so the metrics are the baseline's."""

    layer: int | None
    matrix: str
    keep: float | None
    rank: int | None
    max_rank: int | None
    identity: bool
    metrics: dict
    baseline: bool = False


# ----------------------------------------------------------------------------------------
# decompositions
# ----------------------------------------------------------------------------------------
def truncation_basis(W: Tensor, rank: int, method: str = "gram") -> tuple[Tensor, Tensor]:
    """Top-``rank`` singular basis of the smaller side of ``W`` (``[d_in, d_out]``, used as
    ``x @ W``) and the singular values: ``(Q [min(d_in, d_out), rank], S [rank])``, float32,
    ``Q`` the left singular vectors when ``d_in <= d_out``, else the right ones.  The rank-``k``
    truncation is ``Q_k Q_k^T W`` (left) or ``W Q_k Q_k^T`` (right).

    Methods: ``"gram"`` eigendecomposition of the smaller Gram matrix ``W W^T`` (or ``W^T W``)
    in float64 (default; on the 2-core CPU about 3x faster than float32 LAPACK gesdd at
    768 x 3072 and more accurate, see docs/benchmarks.md); ``"gram32"`` the same Gram matrix
    solved in float32 (faster on GPUs; its truncation error is printed by
    ``benchmarks/bench_sweep_engine.py``); ``"gesdd"`` ``torch.linalg.svd`` (LAPACK gesdd on
    CPU, cuSOLVER's default on CUDA); ``"gesvd"``, ``"gesvdj"``, ``"gesvda"`` cuSOLVER drivers."""
    if method not in SVD_METHODS:
        raise ValueError(f"unknown svd_method {method!r}; valid: {', '.join(SVD_METHODS)}")
    d_in, d_out = W.shape
    s = min(d_in, d_out)
    if not 0 <= rank <= s:
        raise ValueError(f"rank {rank} is outside 0..{s}")
    left = d_in <= d_out
    if method in ("gram", "gram32"):
        W64 = W.double()
        G = W64 @ W64.T if left else W64.T @ W64
        if method == "gram32":  # float64 Gram matrix, float32 eigensolver (faster on GPUs)
            G = G.float()
        evals, evecs = torch.linalg.eigh(G)  # ascending
        S = evals.flip(0)[:rank].clamp_min(0).sqrt()
        Q = evecs.flip(1)[:, :rank]
        return Q.float().contiguous(), S.float()
    if W.device.type == "cpu":
        if method != "gesdd":
            raise ValueError(f"svd_method {method!r} needs a CUDA device (cuSOLVER); on CPU use 'gram' or 'gesdd'")
        U, S, Vh = torch.linalg.svd(W.float(), full_matrices=False)  # LAPACK gesdd
    else:
        U, S, Vh = torch.linalg.svd(W.float(), full_matrices=False, driver=None if method == "gesdd" else method)
    Q = U[:, :rank] if left else Vh[:rank].T
    return Q.contiguous(), S[:rank]


def _weight_key(W: Tensor, method: str) -> str:
    h = hashlib.sha1()
    t = W.detach().contiguous().cpu()
    h.update(f"{tuple(t.shape)}|{t.dtype}|{method}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())
    return h.hexdigest()


class SVDCache:
    """Decompositions per matrix, kept in a directory as ``{sha1 of weight and method}.pt``
    files (``directory=None``: nothing kept).  ``n_computed``/``n_loaded`` count decompositions
    computed and read from disk."""

    def __init__(self, directory=None, method: str = "gram"):
        if method not in SVD_METHODS:
            raise ValueError(f"unknown svd_method {method!r}; valid: {', '.join(SVD_METHODS)}")
        self.dir = Path(directory) if directory is not None else None
        self.method = method
        self.n_computed = 0
        self.n_loaded = 0

    def get(self, W: Tensor, rank: int) -> tuple[Tensor, Tensor]:
        path = None
        if self.dir is not None:
            path = self.dir / f"{_weight_key(W, self.method)}.pt"
            if path.is_file():
                try:
                    hit = torch.load(path, map_location=W.device, weights_only=True)
                    if int(hit["rank"]) >= rank:
                        self.n_loaded += 1
                        return hit["Q"][:, :rank], hit["S"][:rank]
                except Exception:  # a damaged file: recompute and overwrite
                    pass
        Q, S = truncation_basis(W, rank, self.method)
        self.n_computed += 1
        if path is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save({"Q": Q.cpu(), "S": S.cpu(), "rank": rank}, tmp)
            os.replace(tmp, path)
        return Q, S


# ----------------------------------------------------------------------------------------
# model stacks: the few operations the engine needs, on raw weights (no hooks)
# ----------------------------------------------------------------------------------------
class _Stack:
    n_layers: int
    d_vocab: int
    parallel: bool

    def embed(self, tokens: Tensor) -> Tensor: ...
    def attn(self, l: int, x: Tensor, items=None) -> Tensor: ...
    def ln1(self, l: int, x: Tensor) -> Tensor: ...
    def ln2(self, l: int, x: Tensor) -> Tensor: ...
    def mlp_W(self, l: int, name: str) -> tuple[Tensor, Tensor | None]: ...
    def act(self, l: int, x: Tensor) -> Tensor: ...
    def unembed(self, x: Tensor) -> Tensor: ...
    def has_mlp(self, l: int) -> bool:
        return True

    def mlp(self, l: int, x: Tensor) -> Tensor:
        W_in, b_in = self.mlp_W(l, "mlp.W_in")
        W_out, b_out = self.mlp_W(l, "mlp.W_out")
        h = self.act(l, _lin(x, W_in, b_in))
        return _lin(h, W_out, b_out)

    def pre_mlp(self, l: int, resid: Tensor) -> tuple[Tensor, Tensor]:
        """``(base, mlp_in)``: the layer's output without its MLP, and the MLP's input."""
        a = self.attn(l, self.ln1(l, resid))
        base = resid + a
        return base, self.ln2(l, resid if self.parallel else base)

    def layer(self, l: int, resid: Tensor) -> Tensor:
        if not self.has_mlp(l):
            return resid + self.attn(l, self.ln1(l, resid))
        base, m = self.pre_mlp(l, resid)
        return base + self.mlp(l, m)

    def last_layer_items(self, resid: Tensor, rows: Tensor, pos: Tensor) -> Tensor:
        """The last layer's output ``[item, d]`` at the read positions only."""
        l = self.n_layers - 1
        a = self.attn(l, self.ln1(l, resid), items=(rows, pos))
        r = resid[rows, pos]
        base = r + a
        if not self.has_mlp(l):
            return base
        return base + self.mlp(l, self.ln2(l, r if self.parallel else base))


def _lin(x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
    """``x @ W + b`` with ``W`` stored as ``[d_out, d_in]`` (nn.Linear layout)."""
    return F.linear(x, W, b)


def _raw(m):
    """The Hugging Face module under a TransformerLens bridge wrapper (or the module itself)."""
    while hasattr(m, "original_component") and m.original_component is not None and m.original_component is not m:
        m = m.original_component
    return m


class _NeoXStack(_Stack):
    def __init__(self, hf):
        from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

        self._rope = apply_rotary_pos_emb
        core = _raw(hf.gpt_neox)
        cfg = hf.config
        self.parallel = bool(cfg.use_parallel_residual)
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.d_model = cfg.hidden_size
        self.d_head = self.d_model // self.n_heads
        self.embed_in = _raw(core.embed_in)
        self.rotary = _raw(core.rotary_emb)
        self.final_ln = _raw(core.final_layer_norm)
        self.embed_out = _raw(hf.get_output_embeddings())  # lm_head (transformers 5) or embed_out (4.x)
        self.d_vocab = self.embed_out.weight.shape[0]
        self.layers = []
        for layer in core.layers:
            layer = _raw(layer)
            att, mlp = _raw(layer.attention), _raw(layer.mlp)
            self.layers.append({
                "ln1": _raw(layer.input_layernorm), "ln2": _raw(layer.post_attention_layernorm),
                "qkv": _raw(att.query_key_value), "dense": _raw(att.dense),
                "in": _raw(mlp.dense_h_to_4h), "out": _raw(mlp.dense_4h_to_h), "act": _raw(mlp.act),
            })
        self._rot: dict = {}

    @property
    def param(self) -> Tensor:
        return self.embed_out.weight

    def embed(self, tokens):
        return F.embedding(tokens, self.embed_in.weight)

    def _ln(self, m, x):
        return F.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)

    def ln1(self, l, x):
        return self._ln(self.layers[l]["ln1"], x)

    def ln2(self, l, x):
        return self._ln(self.layers[l]["ln2"], x)

    def _cos_sin(self, p: int, like: Tensor):
        key = (p, like.dtype, like.device)
        if key not in self._rot:
            pos_ids = torch.arange(p, device=like.device)[None]
            cos, sin = self.rotary(like[:1, :p], pos_ids)
            self._rot[key] = (cos, sin)
        return self._rot[key]

    def attn(self, l, x, items=None):
        L = self.layers[l]
        b, p, _ = x.shape
        h, dh = self.n_heads, self.d_head
        qkv = _lin(x, L["qkv"].weight, L["qkv"].bias).view(b, p, h, 3 * dh).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        cos, sin = self._cos_sin(p, x)
        q, k = self._rope(q, k, cos, sin)
        if items is None:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=dh ** -0.5)
            z = z.transpose(1, 2).reshape(b, p, h * dh)
        else:
            rows, pos = items
            qi = q[rows, :, pos].unsqueeze(2)  # [n, h, 1, dh]
            mask = (torch.arange(p, device=x.device)[None, :] <= pos[:, None])[:, None, None, :]
            z = F.scaled_dot_product_attention(qi, k[rows], v[rows], attn_mask=mask, scale=dh ** -0.5)
            z = z.reshape(len(rows), h * dh)
        return _lin(z, L["dense"].weight, L["dense"].bias)

    def mlp_W(self, l, name):
        m = self.layers[l]["in" if name == "mlp.W_in" else "out"]
        return m.weight, m.bias

    def act(self, l, x):
        return self.layers[l]["act"](x)

    def unembed(self, x):
        return F.linear(self._ln(self.final_ln, x), self.embed_out.weight)


class _ToyStack(_Stack):
    parallel = False

    def __init__(self, model):
        self.model = model
        self.n_layers = model.cfg.n_layers
        self.d_vocab = model.cfg.d_vocab
        self.kinds = model.cfg.ffn

    @property
    def param(self) -> Tensor:
        return self.model.W_U

    def has_mlp(self, l):
        return self.model.blocks[l].mlp is not None

    def embed(self, tokens):
        p = tokens.shape[1]
        if p > self.model.cfg.n_ctx:
            raise ValueError(f"sequence length {p} exceeds n_ctx {self.model.cfg.n_ctx}")
        return self.model.W_E[tokens] + self.model.W_pos[:p]

    def ln1(self, l, x):
        return x

    ln2 = ln1

    def attn(self, l, x, items=None):
        out = self.model.blocks[l].attn(x)
        return out if items is None else out[items[0], items[1]]

    def mlp_W(self, l, name):
        mlp = self.model.blocks[l].mlp
        return (mlp.W_in if name == "mlp.W_in" else mlp.W_out).T, None

    def act(self, l, x):
        return F.relu(x) if self.kinds[l] == "relu" else x

    def unembed(self, x):
        return x @ self.model.W_U


def _stack_for(model) -> _Stack | None:
    if type(model).__name__ == "ToyTransformer":  # (no import: toy_model needs transformer_lens)
        from mechtrunc.toy_model import ToyTransformer

        if isinstance(model, ToyTransformer):
            return _ToyStack(model)
    hf = getattr(model, "original_model", model)
    if type(hf).__name__ == "GPTNeoXForCausalLM":
        return _NeoXStack(hf)
    return None


# ----------------------------------------------------------------------------------------
# the grid
# ----------------------------------------------------------------------------------------
def _as_layer(v, n_layers: int) -> int:
    if isinstance(v, bool):
        raise ValueError(f"layer {v!r} is not an integer")
    try:
        i = operator.index(v)
    except TypeError:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"layer {v!r} is not an integer") from None
        if not f.is_integer():
            raise ValueError(f"layer {v!r} is not an integer") from None
        i = int(f)
    if not 0 <= i < n_layers:
        raise ValueError(f"layer {v!r} is out of range: valid layers are 0..{n_layers - 1}")
    return int(i)


def _as_keep(v) -> float:
    if isinstance(v, bool):
        raise ValueError(f"keep {v!r} is not a number in [0, 1]")
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"keep {v!r} is not a number in [0, 1]") from None
    if not 0.0 <= f <= 1.0 or math.isnan(f):
        raise ValueError(f"keep must be in [0, 1], got {v!r}")
    return f


def _parse_configs(configs, n_layers: int) -> list[tuple[int, str, float]]:
    if isinstance(configs, (str, bytes)) or not hasattr(configs, "__iter__"):
        raise ValueError(f"configs must be an iterable of (layer, matrix, keep) triples, got {configs!r}")
    out, seen = [], set()
    for c in configs:
        try:
            layer, matrix, keep = c
        except (TypeError, ValueError):
            raise ValueError(f"each configuration must be a (layer, matrix, keep) triple, got {c!r}") from None
        cfg = (_as_layer(layer, n_layers), matrix, _as_keep(keep))
        if not isinstance(matrix, str):
            raise ValueError(f"matrix {matrix!r} is not a name; valid: {', '.join(FAST_MATRICES)}")
        key = (cfg[0], cfg[1], round(cfg[2], 12))
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def evaluate_grid(
    model,
    prompts: PromptSet,
    configs: Iterable[tuple[int, str, float]],
    *,
    rule: str = "round",
    batch_size: int = 256,
    svd_cache: str | os.PathLike | None = None,
    svd_method: str = "gram",
    progress: bool = False,
    baseline: bool = True,
) -> Iterator[GridResult]:
    """Evaluate ``Truncate(matrix, layer=layer, keep=keep, rule=rule)`` for every
    ``(layer, matrix, keep)`` of ``configs`` on ``prompts``; yield a :class:`GridResult` per
    configuration (the baseline first when ``baseline``), grouped by layer in increasing
    order, each as soon as its layer is finished (configurations without a fast path come
    last, one at a time).  Each distinct configuration is yielded once.

    Args:
        model: a ``TransformerBridge`` over a GPT-NeoX, a ``GPTNeoXForCausalLM``, the toy model
            (fast paths), or any other model mechtrunc adapts (reference path).
        batch_size: rows (prompt x configuration) per forward pass.
        svd_cache: a directory for the decompositions (keyed by the weight's SHA-1), or an
            :class:`SVDCache` (its method then wins over ``svd_method``); None: nothing kept.
        svd_method: see :func:`truncation_basis` (``"gram"`` default).
        progress: a tqdm bar over configurations.
    """
    if rule not in _RULES:
        raise ValueError(f"unknown rank rule {rule!r}; valid: {', '.join(_RULES)}")
    if svd_method not in SVD_METHODS:
        raise ValueError(f"unknown svd_method {svd_method!r}; valid: {', '.join(SVD_METHODS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) and not hasattr(batch_size, "__index__"):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch_size = operator.index(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(prompts, PromptSet):
        raise TypeError(f"prompts must be a PromptSet, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("the prompt set has no items to score")
    stack = _stack_for(model)
    if stack is None:
        from mechtrunc.adapters import adapt

        n_layers = adapt(model).n_layers
    else:
        n_layers = stack.n_layers
    grid = _parse_configs(configs, n_layers)
    d_vocab = stack.d_vocab if stack is not None else adapt(model).d_vocab
    for name, t in (("tokens", prompts.tokens), ("answer", prompts.answer), ("competitors", prompts.competitors)):
        if t.numel() and int(t.max()) >= d_vocab:
            raise ValueError(
                f"{name} holds token id {int(t.max())}, outside the model's vocabulary (valid ids 0..{d_vocab - 1})")
    slow = [c for c in grid if stack is None or c[1] not in FAST_MATRICES]
    if stack is None or slow:
        from mechtrunc.adapters import MATRICES

        for _, m, _ in grid:
            if m not in MATRICES:
                raise ValueError(f"unknown matrix {m!r}; valid matrices: {', '.join(MATRICES)}")
    if stack is not None:
        for l, m, _ in grid:
            if m in FAST_MATRICES and not stack.has_mlp(l):
                raise ValueError(f"layer {l} has no MLP, so matrix {m!r} does not exist")
    return _run(model, stack, prompts, grid, rule, batch_size, svd_cache, svd_method, progress, baseline)


def _run(model, stack, prompts, grid, rule, batch_size, svd_cache, svd_method, progress, want_baseline):
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(grid) + int(want_baseline), desc="grid", unit="config", dynamic_ncols=True)
    try:
        fast = [c for c in grid if stack is not None and c[1] in FAST_MATRICES]
        slow = [c for c in grid if c not in fast]
        if fast or stack is not None and want_baseline:
            yield from _run_fast(model, stack, prompts, fast, rule, batch_size, svd_cache, svd_method, bar,
                                 want_baseline)
            want_baseline = False
        if slow or want_baseline:
            yield from _run_reference(model, prompts, slow, rule, batch_size, bar, want_baseline)
    finally:
        if bar is not None:
            bar.close()


def _reduce(per_item: dict[str, Tensor], n: int) -> dict:
    return {"n_items": float(n), **{k: v.mean().item() for k, v in per_item.items()}}


def _run_reference(model, prompts, grid, rule, batch_size, bar, want_baseline):
    """Any adapted model and matrix: one hook-mode evaluation per configuration."""
    from mechtrunc.adapters import adapt
    from mechtrunc.interventions import Truncate
    from mechtrunc.metrics import metrics_from_logits
    from mechtrunc.runner import item_logits

    adapter = adapt(model)
    base = metrics_from_logits(item_logits(model, prompts, batch_size=batch_size), prompts)
    if want_baseline:
        yield GridResult(None, "none", None, None, None, False, base, baseline=True)
        if bar is not None:
            bar.update(1)
    for l, m, keep in sorted(grid, key=lambda c: c[0]):
        iv = Truncate(m, layer=l, keep=keep, rule=rule, mode="hook")
        max_rank = adapter.d_head if m == "attn.OV" else adapter.matrix(m, l).max_rank
        rank = iv.ranks(adapter, max_rank)[0]
        if rank == max_rank:
            metrics = dict(base)
        else:
            metrics = metrics_from_logits(item_logits(model, prompts, iv, batch_size=batch_size), prompts)
        yield GridResult(l, m, keep, rank, max_rank, rank == max_rank, metrics)
        if bar is not None:
            bar.update(1)


@torch.no_grad()
def _run_fast(model, stack, prompts, grid, rule, batch_size, svd_cache, svd_method, bar, want_baseline):
    dev = stack.param.device
    dtype = stack.param.dtype
    tokens = prompts.tokens.to(dev)
    n_seq, n_items = tokens.shape[0], len(prompts)
    rows_all, pos_all = prompts.rows.to(dev), prompts.pos.to(dev)
    # items of each sequence chunk, computed once
    seq_chunk = max(1, min(n_seq, batch_size))

    def chunks(size):
        for s in range(0, n_seq, size):
            sel = (rows_all >= s) & (rows_all < s + size)
            idx = sel.nonzero().squeeze(1)
            yield s, min(s + size, n_seq), idx

    def run_from(l_next: int, resid: Tensor, rows: Tensor, pos: Tensor) -> Tensor:
        """Run layers l_next.. on ``resid`` [b, p, d]; logits at (rows, pos)."""
        last = stack.n_layers - 1
        for l in range(l_next, last):
            resid = stack.layer(l, resid)
        if l_next <= last:
            out = stack.last_layer_items(resid, rows, pos)
        else:
            out = resid[rows, pos]
        return stack.unembed(out).float()

    ans_dev, comp_dev = prompts.answer.to(dev), prompts.competitors.to(dev)
    dummy = torch.zeros(1, 1, dtype=torch.long)

    def sub_prompts(idx):
        """The items ``idx`` as a PromptSet carrying what the metrics read (answers, competitors)."""
        z = torch.zeros(len(idx), dtype=torch.long)
        return PromptSet(tokens=dummy, rows=z, pos=z, answer=ans_dev[idx], competitors=comp_dev[idx],
                         competitor_names=prompts.competitor_names)

    # baseline: one clean pass
    base_items: dict[str, Tensor] = {}
    for s, e, idx in chunks(seq_chunk):
        resid = stack.embed(tokens[s:e])
        lg = run_from(0, resid, rows_all[idx] - s, pos_all[idx])
        for k, v in item_metrics(lg, sub_prompts(idx)).items():
            base_items.setdefault(k, torch.empty(n_items, device=lg.device))[idx] = v
    base = _reduce(base_items, n_items)
    if want_baseline:
        yield GridResult(None, "none", None, None, None, False, base, baseline=True)
        if bar is not None:
            bar.update(1)

    cache = svd_cache if isinstance(svd_cache, SVDCache) else SVDCache(svd_cache, svd_method)
    by_layer: dict[int, list] = {}
    for c in grid:
        by_layer.setdefault(c[0], []).append(c)
    if not by_layer:
        return
    d_model = stack.embed(tokens[:1, :1]).shape[-1]

    resid_all = None  # clean residual before layer `cur`, all sequences
    cur = 0
    for l in sorted(by_layer):
        # advance the clean residual to layer l
        if resid_all is None:
            resid_all = stack.embed(tokens)
        while cur < l:
            resid_all = torch.cat([stack.layer(cur, resid_all[s:e]) for s, e, _ in chunks(seq_chunk)])
            cur += 1
        # plan this layer's configurations
        plans, results = [], []
        per_matrix: dict[str, list] = {}
        for c in by_layer[l]:
            per_matrix.setdefault(c[1], []).append(c)
        bases = {}
        for m, cs in per_matrix.items():
            W, bias = stack.mlp_W(l, m)  # Linear layout [d_out, d_in]
            d_out, d_in = W.shape
            max_rank = min(d_in, d_out)
            ranks = [rank_for_keep(k, max_rank, d_model, rule) for _, _, k in cs]
            need = max([r for r in ranks if r < max_rank], default=0)
            left = d_in <= d_out
            Q = B = None
            if need > 0:
                Q, _S = cache.get(W.T, need)  # basis of the smaller side of x @ W
                Q = Q.to(dev, dtype)
                # left: x @ W_k = (x Q_k) @ (Q_k^T W), with Q^T W = (W_lin Q)^T kept as [d_out, need]
                B = W @ Q if left else None
            bases[m] = (Q, B, left, bias, d_out)
            for c, r in zip(cs, ranks):
                if r == max_rank:
                    results.append((c, r, max_rank, None))
                else:
                    plans.append((c, r, max_rank))
                    results.append((c, r, max_rank, len(plans) - 1))
        acc = [dict() for _ in plans]
        if plans:
            n_rep = len(plans)
            seqs = max(1, batch_size // n_rep)
            W_in, b_in = stack.mlp_W(l, "mlp.W_in")
            W_out, b_out = stack.mlp_W(l, "mlp.W_out")

            def truncated(m, x_or_clean, r):
                """Output of matrix m truncated to rank r: from its input (left) or its clean
                bias-free output (right)."""
                Q, B, left, bias, d_out = bases[m]
                if r == 0:  # the matrix removed (also when no configuration needs a basis)
                    out = torch.zeros((*lead_shape, d_out), device=dev, dtype=dtype)
                    return out + bias if bias is not None else out
                coef = coefs[m]
                if left:
                    return _lin(coef[..., :r], B[:, :r], bias)
                out = coef[..., :r] @ Q[:, :r].T
                return out + bias if bias is not None else out

            for s, e, idx in chunks(seqs):
                base_res, m_in = stack.pre_mlp(l, resid_all[s:e])
                lead_shape = m_in.shape[:-1]
                post = None
                coefs = {}
                if "mlp.W_in" in bases:
                    Q, B, left, _, _ = bases["mlp.W_in"]
                    if Q is not None:
                        coefs["mlp.W_in"] = m_in @ Q if left else _lin(m_in, W_in, None) @ Q
                if "mlp.W_out" in bases:
                    Q, B, left, _, _ = bases["mlp.W_out"]
                    if Q is not None:
                        post = stack.act(l, _lin(m_in, W_in, b_in))
                        coefs["mlp.W_out"] = post @ Q if left else _lin(post, W_out, None) @ Q
                        del post
                outs = []
                for (lay, m, keep), r, _mr in plans:
                    if m == "mlp.W_in":
                        out = _lin(stack.act(l, truncated(m, m_in, r)), W_out, b_out)
                    else:
                        out = truncated(m, None, r)
                    outs.append(base_res + out)
                    del out
                stacked = torch.cat(outs)  # [n_rep * b, p, d]
                del outs, coefs, base_res, m_in
                b = e - s
                rows_c, pos_c = rows_all[idx] - s, pos_all[idx]
                rep_rows = torch.cat([rows_c + j * b for j in range(n_rep)])
                rep_pos = pos_c.repeat(n_rep)
                lg = run_from(l + 1, stacked, rep_rows, rep_pos)
                del stacked
                sp = sub_prompts(idx)
                for j in range(n_rep):
                    part = lg[j * len(idx):(j + 1) * len(idx)]
                    for k, v in item_metrics(part, sp).items():
                        acc[j].setdefault(k, torch.empty(n_items, device=lg.device))[idx] = v
                del lg
        for (lay, m, keep), r, max_rank, j in results:
            metrics = dict(base) if j is None else _reduce(acc[j], n_items)
            yield GridResult(lay, m, keep, r, max_rank, j is None, metrics)
            if bar is not None:
                bar.update(1)
