"""A model's layer stack as the few operations the grid engine needs, on raw weights (no hooks).

:class:`Stack` is what the engine calls; :class:`TransformerStack` is a pre-LayerNorm
Transformer written once in terms of per-architecture primitives (embedding, the two LayerNorms
or RMSNorms, the query/key/value projection with its positional rotation, the output
projection, the MLP's two matrices (three when gated) and activation, the unembedding), from
which it derives those calls:

- :meth:`Stack.layer`: run layer ``l`` on a residual stream ``[b, p, d]``;
- :meth:`Stack.split`: layer ``l`` seen from one of its matrices: the matrix's clean input ``x``
  (``[..., d_in]``) and ``rest(y)``, the layer's output when the matrix's output is ``y``
  (``x @ W + b`` for the clean weight; a truncated one for the engine);
- :meth:`Stack.last_layer_at` and :meth:`Stack.unembed`: the last layer and the unembedding
  at the read positions only.

Architectures here: GPT-NeoX (:class:`NeoXStack`; Pythia; parallel or sequential residual),
GPT-2 (:class:`GPT2Stack`), GPT-J (:class:`GPTJStack`) and the Llama family (:class:`LlamaStack`;
Llama and Qwen2: RMSNorm, a gated MLP, grouped key-value heads), on the Hugging Face modules
(under a ``TransformerBridge`` or bare).  :data:`HF_ARCHITECTURES` lists the Hugging Face model
classes they cover; :func:`hf_architecture` refuses any other with an error naming it, so no
model runs on another architecture's assumptions.  Adding an architecture is one stack class
here (its primitives, :attr:`TransformerStack.gated`, :meth:`TransformerStack.supports`) and its
entry in :data:`HF_ARCHITECTURES`, plus a test (``tests/test_gated.py`` is the Llama family's).
The toy model's stack lives with the toy model, the linear memory's with the memory.
:meth:`mechtrunc.core.adapters.ModelAdapter.stack` gives a model's stack.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mechtrunc._choices import GATED_MATRICES

__all__ = ["Stack", "TransformerStack", "NeoXStack", "GPT2Stack", "GPTJStack", "LlamaStack", "hf_stack",
           "hf_architecture", "HF_ARCHITECTURES", "STACK_MATRICES"]

#: matrices whose truncation :meth:`Stack.split` expresses (``attn.OV`` through ``attn.W_O``)
STACK_MATRICES = ("mlp.W_in", "mlp.W_out", "attn.W_V", "attn.W_O", "attn.OV")


class Stack(ABC):
    """What the grid engine runs on a model: embed, a layer, a layer split at one of its
    matrices, the last layer at the read positions and the unembedding.  Transformers derive
    these from primitives (:class:`TransformerStack`); a model that is no Transformer (the linear
    memory) implements them directly."""

    n_layers: int
    #: matrices :meth:`split` handles on this architecture
    matrices: tuple[str, ...] = STACK_MATRICES

    @abstractmethod
    def embed(self, tokens: Tensor) -> Tensor:
        """The residual stream ``[b, p, d]`` before the first layer."""

    @abstractmethod
    def layer(self, l: int, resid: Tensor) -> Tensor:
        """Layer ``l``'s output on the residual stream ``resid``."""

    @abstractmethod
    def split(self, l: int, name: str, resid: Tensor, memo: dict | None = None
              ) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """``(x, rest)``: the clean input of matrix ``name`` at layer ``l`` and the layer's output
        as a function of that matrix's output."""

    @abstractmethod
    def last_layer_at(self, resid: Tensor, rows: Tensor, pos: Tensor) -> Tensor:
        """The last layer's output ``[item, d]`` at the read positions only."""

    @abstractmethod
    def unembed(self, x: Tensor) -> Tensor:
        """Logits from final residuals ``[..., d]`` (final LayerNorm included)."""


class TransformerStack(Stack):
    """Pre-LayerNorm Transformer layers from per-architecture primitives (see module docstring).
    ``parallel``: attention and MLP read the same residual (GPT-NeoX's parallel residual, GPT-J)."""

    n_heads: int
    d_head: int
    parallel: bool = False
    #: the MLP is gated: ``mlp_out(act(mlp_gate(x)) * mlp_in(x))`` (else ``mlp_out(act(mlp_in(x)))``)
    gated: bool = False

    @staticmethod
    def supports(cfg) -> bool:
        """Whether this stack computes a model with Hugging Face config ``cfg`` exactly."""
        return True

    @staticmethod
    def n_kv_heads(cfg) -> int | None:
        """Key-value heads of a model with Hugging Face config ``cfg`` when fewer than its query
        heads (grouped key-value attention), else None."""
        return None

    # --- primitives ----------------------------------------------------------------------
    @abstractmethod
    def ln1(self, l: int, x: Tensor) -> Tensor:
        """The attention's input LayerNorm of layer ``l``."""

    @abstractmethod
    def ln2(self, l: int, x: Tensor) -> Tensor:
        """The MLP's input LayerNorm of layer ``l``."""

    @abstractmethod
    def qkv(self, l: int, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``q, k, v`` as ``[b, head, p, d_head]`` (``q``, ``k`` after any positional rotation)."""

    def scale(self, l: int) -> float:
        return self.d_head ** -0.5

    @abstractmethod
    def o_proj(self, l: int, z: Tensor) -> Tensor:
        """The attention output from ``z`` (heads flattened, ``[..., head * d_head]``)."""

    @abstractmethod
    def mlp_in(self, l: int, x: Tensor) -> Tensor:
        """``x @ W_in + b_in`` of layer ``l``'s MLP."""

    @abstractmethod
    def act(self, l: int, x: Tensor) -> Tensor:
        """The MLP's activation function."""

    @abstractmethod
    def mlp_out(self, l: int, h: Tensor) -> Tensor:
        """``h @ W_out + b_out`` of layer ``l``'s MLP."""

    def mlp_gate(self, l: int, x: Tensor) -> Tensor:
        """``x @ W_gate + b_gate`` of a gated MLP."""
        raise ValueError(f"{type(self).__name__} has no gated MLP (mlp.W_gate exists only in the Llama family)")

    def has_mlp(self, l: int) -> bool:
        return True

    @property
    def matrices(self) -> tuple[str, ...]:
        """Matrices :meth:`split` handles on this architecture."""
        return STACK_MATRICES + (GATED_MATRICES if self.gated else ())

    # --- derived ---------------------------------------------------------------------------
    def hidden(self, l: int, x: Tensor, up: Tensor | None = None, gate: Tensor | None = None) -> Tensor:
        """The MLP's hidden activation (``W_out``'s input) from its input ``x``; ``up`` / ``gate``:
        the outputs of ``W_in`` / ``W_gate`` to use instead of the clean ones."""
        up = self.mlp_in(l, x) if up is None else up
        if not self.gated:
            return self.act(l, up)
        return self.act(l, self.mlp_gate(l, x) if gate is None else gate) * up

    def mlp(self, l: int, x: Tensor) -> Tensor:
        return self.mlp_out(l, self.hidden(l, x))

    def attend(self, l: int, q: Tensor, k: Tensor, v: Tensor, items=None) -> Tensor:
        """Causal attention: ``z`` ``[b, p, head * d_head]``, or ``[item, head * d_head]`` at the
        ``items = (rows, pos)`` queries only."""
        b, h, p, dh = q.shape
        if items is None:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale(l))
            return z.transpose(1, 2).reshape(b, p, h * dh)
        rows, pos = items
        qi = q[rows, :, pos].unsqueeze(2)  # [n, h, 1, dh]
        mask = (torch.arange(p, device=q.device)[None, :] <= pos[:, None])[:, None, None, :]
        z = F.scaled_dot_product_attention(qi, k[rows], v[rows], attn_mask=mask, scale=self.scale(l))
        return z.reshape(len(rows), h * dh)

    def pattern(self, l: int, q: Tensor, k: Tensor) -> Tensor:
        """Causal attention pattern ``[b, head, p, p]``."""
        p = q.shape[2]
        scores = (q @ k.transpose(-1, -2)) * self.scale(l)
        causal = torch.ones(p, p, dtype=torch.bool, device=q.device).tril()
        return scores.masked_fill(~causal, float("-inf")).softmax(-1)

    def _finish(self, l: int, resid: Tensor, attn: Tensor, mlp_out: Tensor | None = None) -> Tensor:
        """The layer's output given its attention output (``mlp_out``: the MLP's output when it
        does not depend on ``attn``, i.e. a parallel layer)."""
        base = resid + attn
        if not self.has_mlp(l):
            return base
        if mlp_out is None:
            mlp_out = self.mlp(l, self.ln2(l, resid if self.parallel else base))
        return base + mlp_out

    def layer(self, l: int, resid: Tensor) -> Tensor:
        q, k, v = self.qkv(l, self.ln1(l, resid))
        return self._finish(l, resid, self.o_proj(l, self.attend(l, q, k, v)))

    def split(self, l: int, name: str, resid: Tensor, memo: dict | None = None
              ) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """``(x, rest)``: the clean input ``x`` of matrix ``name`` at layer ``l`` and ``rest(y)``,
        the layer's output ``[b, p, d]`` when that matrix outputs ``y`` (bias included) instead
        of ``x @ W + b``.  ``attn.OV`` is split at ``attn.W_O`` (its truncation is a new W_O).
        ``memo``: a dict shared by splits of the same layer and residual (computed once)."""
        if name not in self.matrices:
            raise ValueError(f"matrix {name!r} has no split on this stack; valid: {', '.join(self.matrices)}")
        memo = {} if memo is None else memo

        def once(key, fn):
            if key not in memo:
                memo[key] = fn()
            return memo[key]

        x1 = once("x1", lambda: self.ln1(l, resid))
        q, k, v = once("qkv", lambda: self.qkv(l, x1))
        z = (lambda: once("z", lambda: self.attend(l, q, k, v)))
        if name.startswith("mlp."):
            base = once("base", lambda: resid + self.o_proj(l, z()))
            m = once("m", lambda: self.ln2(l, resid if self.parallel else base))
            if name == "mlp.W_in":
                return m, lambda y: base + self.mlp_out(l, self.hidden(l, m, up=y))
            if name in GATED_MATRICES:
                return m, lambda y: base + self.mlp_out(l, self.hidden(l, m, gate=y))
            return self.hidden(l, m), lambda y: base + y
        mo = once("mo", lambda: self.mlp(l, self.ln2(l, resid))) if self.parallel and self.has_mlp(l) else None
        if name == "attn.W_V":
            pat = self.pattern(l, q, k)
            b, h, p, dh = v.shape

            def rest(y):
                zy = (pat @ y.view(b, p, h, dh).transpose(1, 2)).transpose(1, 2).reshape(b, p, h * dh)
                return self._finish(l, resid, self.o_proj(l, zy), mo)

            return x1, rest
        return z(), lambda y: self._finish(l, resid, y, mo)  # attn.W_O, attn.OV

    def last_layer_at(self, resid: Tensor, rows: Tensor, pos: Tensor) -> Tensor:
        """The last layer's output ``[item, d]`` at the read positions only."""
        l = self.n_layers - 1
        q, k, v = self.qkv(l, self.ln1(l, resid))
        a = self.o_proj(l, self.attend(l, q, k, v, items=(rows, pos)))
        return self._finish(l, resid[rows, pos], a)


def _raw(m):
    """The Hugging Face module under a TransformerLens bridge wrapper (or the module itself)."""
    while hasattr(m, "original_component") and m.original_component is not None and m.original_component is not m:
        m = m.original_component
    return m


def _ln(m, x: Tensor) -> Tensor:
    return F.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)


class _HFStack(TransformerStack):
    """Shared by the Hugging Face stacks: LayerNorms, MLP and unembedding on raw modules."""

    layers: list[dict]
    final_ln: object
    lm_head: object

    def _norm(self, m, x: Tensor) -> Tensor:
        """A normalisation module's output (LayerNorm here; :class:`LlamaStack`: RMSNorm)."""
        return _ln(m, x)

    def ln1(self, l, x):
        return self._norm(self.layers[l]["ln1"], x)

    def ln2(self, l, x):
        return self._norm(self.layers[l]["ln2"], x)

    def _linear(self, m, x):
        if isinstance(m, torch.nn.Linear):
            return F.linear(x, m.weight, m.bias)
        return torch.addmm(m.bias, x.reshape(-1, x.shape[-1]), m.weight).view(*x.shape[:-1], -1)  # Conv1D

    def o_proj(self, l, z):
        return self._linear(self.layers[l]["o"], z)

    def mlp_in(self, l, x):
        return self._linear(self.layers[l]["in"], x)

    def act(self, l, x):
        return self.layers[l]["act"](x)

    def mlp_out(self, l, h):
        return self._linear(self.layers[l]["out"], h)

    def unembed(self, x):
        return F.linear(self._norm(self.final_ln, x), self.lm_head.weight, getattr(self.lm_head, "bias", None))

    def _heads(self, t: Tensor) -> Tensor:
        b, p, _ = t.shape
        return t.view(b, p, self.n_heads, self.d_head).transpose(1, 2)


class NeoXStack(_HFStack):
    """GPT-NeoX (Pythia): fused query-key-value, partial rotary, parallel or sequential residual."""

    def __init__(self, hf):
        from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

        self._rope = apply_rotary_pos_emb
        core, cfg = _raw(hf.gpt_neox), hf.config
        self.parallel = bool(cfg.use_parallel_residual)
        self.n_layers, self.n_heads = cfg.num_hidden_layers, cfg.num_attention_heads
        self.d_head = cfg.hidden_size // self.n_heads
        self.embed_in, self.rotary = _raw(core.embed_in), _raw(core.rotary_emb)
        self.final_ln = _raw(core.final_layer_norm)
        self.lm_head = _raw(hf.get_output_embeddings())
        self.layers = []
        for layer in core.layers:
            layer = _raw(layer)
            att, mlp = _raw(layer.attention), _raw(layer.mlp)
            self.layers.append({"ln1": _raw(layer.input_layernorm), "ln2": _raw(layer.post_attention_layernorm),
                                "qkv": _raw(att.query_key_value), "o": _raw(att.dense),
                                "in": _raw(mlp.dense_h_to_4h), "out": _raw(mlp.dense_4h_to_h), "act": _raw(mlp.act)})
        self._rot: dict = {}

    def embed(self, tokens):
        return F.embedding(tokens, self.embed_in.weight)

    def qkv(self, l, x):
        b, p, _ = x.shape
        m = self.layers[l]["qkv"]
        q, k, v = F.linear(x, m.weight, m.bias).view(b, p, self.n_heads, 3 * self.d_head).transpose(1, 2).chunk(3, -1)
        key = (p, x.dtype, x.device)
        if key not in self._rot:
            self._rot[key] = self.rotary(x[:1, :p], torch.arange(p, device=x.device)[None])
        q, k = self._rope(q, k, *self._rot[key])
        return q, k, v


class GPT2Stack(_HFStack):
    """GPT-2: learned positions, sequential residual, Conv1D weights."""

    @staticmethod
    def supports(cfg) -> bool:
        """Attention scaled by 1/sqrt(d_head) only (the layer-index scaling is not written here)."""
        return not getattr(cfg, "scale_attn_by_inverse_layer_idx", False) and getattr(cfg, "scale_attn_weights", True)

    def __init__(self, hf):
        cfg = hf.config
        core = _raw(hf.transformer)
        self.n_layers, self.n_heads = cfg.n_layer, cfg.n_head
        self.d_head = cfg.n_embd // self.n_heads
        self.wte, self.wpe = _raw(core.wte), _raw(core.wpe)
        self.final_ln, self.lm_head = _raw(core.ln_f), _raw(hf.get_output_embeddings())
        self.layers = []
        for block in core.h:
            block = _raw(block)
            att, mlp = _raw(block.attn), _raw(block.mlp)
            self.layers.append({"ln1": _raw(block.ln_1), "ln2": _raw(block.ln_2), "qkv": _raw(att.c_attn),
                                "o": _raw(att.c_proj), "in": _raw(mlp.c_fc), "out": _raw(mlp.c_proj),
                                "act": _raw(mlp.act)})

    def embed(self, tokens):
        return F.embedding(tokens, self.wte.weight) + self.wpe.weight[: tokens.shape[1]]

    def qkv(self, l, x):
        q, k, v = self._linear(self.layers[l]["qkv"], x).split(self.n_heads * self.d_head, dim=-1)
        return self._heads(q), self._heads(k), self._heads(v)


class GPTJStack(_HFStack):
    """GPT-J: one LayerNorm read by both attention and MLP (parallel), interleaved rotary on
    the first ``rotary_dim`` dimensions of each head, biased unembedding."""

    parallel = True

    def __init__(self, hf):
        from transformers.models.gptj.modeling_gptj import apply_rotary_pos_emb

        self._rope = apply_rotary_pos_emb
        cfg, core = hf.config, _raw(hf.transformer)
        self.n_layers, self.n_heads = cfg.n_layer, cfg.n_head
        self.d_head = cfg.n_embd // self.n_heads
        self.rotary_dim = cfg.rotary_dim
        self.wte, self.rotary = _raw(core.wte), _raw(core.rotary_emb)
        self.final_ln, self.lm_head = _raw(core.ln_f), _raw(hf.get_output_embeddings())
        self.layers = []
        for block in core.h:
            block = _raw(block)
            att, mlp = _raw(block.attn), _raw(block.mlp)
            self.layers.append({"ln1": _raw(block.ln_1), "ln2": _raw(block.ln_1), "q": _raw(att.q_proj),
                                "k": _raw(att.k_proj), "v": _raw(att.v_proj), "o": _raw(att.out_proj),
                                "in": _raw(mlp.fc_in), "out": _raw(mlp.fc_out), "act": _raw(mlp.act)})

    def embed(self, tokens):
        return F.embedding(tokens, self.wte.weight)

    def _rotate(self, t: Tensor, sin: Tensor, cos: Tensor) -> Tensor:  # t: [b, p, h, dh]
        if self.rotary_dim is None:
            return self._rope(t, sin, cos)
        r = self.rotary_dim
        return torch.cat([self._rope(t[..., :r], sin, cos), t[..., r:]], dim=-1)

    def qkv(self, l, x):
        b, p, _ = x.shape
        L = self.layers[l]
        q, k, v = (self._linear(L[n], x).view(b, p, self.n_heads, self.d_head) for n in ("q", "k", "v"))
        sin, cos = self.rotary(x, torch.arange(p, device=x.device)[None])
        q, k = self._rotate(q, sin, cos), self._rotate(k, sin, cos)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


class LlamaStack(_HFStack):
    """The Llama family (Llama, Qwen2): RMSNorm, a gated MLP ``down(act(gate(x)) * up(x))``,
    separate query/key/value/output projections (biases where the config has them), rotary on
    whole heads, sequential residual, grouped key-value heads (repeated over their query heads)."""

    gated = True

    @staticmethod
    def supports(cfg) -> bool:
        """Full causal attention in every layer (no sliding window)."""
        return all(t == "full_attention" for t in (getattr(cfg, "layer_types", None) or ())) \
            and not getattr(cfg, "use_sliding_window", False)

    @staticmethod
    def n_kv_heads(cfg) -> int | None:
        kv = getattr(cfg, "num_key_value_heads", None)
        return kv if kv is not None and kv < cfg.num_attention_heads else None

    def __init__(self, hf):
        self._rope = sys.modules[type(_raw(hf)).__module__].apply_rotary_pos_emb  # Llama's and Qwen2's own
        cfg, core = hf.config, _raw(hf.model)
        self.n_layers, self.n_heads = cfg.num_hidden_layers, cfg.num_attention_heads
        self.d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.n_kv = self.n_kv_heads(cfg) or self.n_heads
        self.embed_tokens, self.rotary = _raw(core.embed_tokens), _raw(core.rotary_emb)
        self.final_ln, self.lm_head = _raw(core.norm), _raw(hf.get_output_embeddings())
        self.layers = []
        for layer in core.layers:
            layer = _raw(layer)
            att, mlp = _raw(layer.self_attn), _raw(layer.mlp)
            self.layers.append({"ln1": _raw(layer.input_layernorm), "ln2": _raw(layer.post_attention_layernorm),
                                "q": _raw(att.q_proj), "k": _raw(att.k_proj), "v": _raw(att.v_proj),
                                "o": _raw(att.o_proj), "gate": _raw(mlp.gate_proj), "in": _raw(mlp.up_proj),
                                "out": _raw(mlp.down_proj), "act": _raw(mlp.act_fn)})
        self._rot: dict = {}

    @property
    def matrices(self) -> tuple[str, ...]:
        """Without ``attn.W_V``/``attn.OV`` under grouped key-value heads (a value head is shared)."""
        own = super().matrices
        return own if self.n_kv == self.n_heads else tuple(m for m in own if m not in ("attn.W_V", "attn.OV"))

    def _norm(self, m, x):  # RMSNorm as Hugging Face computes it (in float32)
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + m.variance_epsilon)
        return m.weight * h.to(x.dtype)

    def embed(self, tokens):
        return F.embedding(tokens, self.embed_tokens.weight)

    def mlp_gate(self, l, x):
        return self._linear(self.layers[l]["gate"], x)

    def qkv(self, l, x):
        b, p, _ = x.shape
        L = self.layers[l]
        q, k, v = (self._linear(L[n], x).view(b, p, -1, self.d_head).transpose(1, 2) for n in ("q", "k", "v"))
        key = (p, x.dtype, x.device)
        if key not in self._rot:
            self._rot[key] = self.rotary(x[:1, :p], torch.arange(p, device=x.device)[None])
        q, k = self._rope(q, k, *self._rot[key])
        if self.n_kv != self.n_heads:  # each key-value head serves n_heads / n_kv query heads
            g = self.n_heads // self.n_kv
            k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        return q, k, v


#: the Hugging Face model classes mechtrunc knows, and the stack that writes each
HF_ARCHITECTURES: dict[str, type[TransformerStack]] = {
    "GPTNeoXForCausalLM": NeoXStack, "GPT2LMHeadModel": GPT2Stack, "GPTJForCausalLM": GPTJStack,
    "LlamaForCausalLM": LlamaStack, "Qwen2ForCausalLM": LlamaStack,
}


def hf_architecture(hf) -> type[TransformerStack]:
    """The stack class of a Hugging Face causal LM (under a bridge wrapper or bare); an
    architecture mechtrunc does not know raises a ValueError naming it and the known ones."""
    name = type(_raw(hf)).__name__
    cls = HF_ARCHITECTURES.get(name)
    if cls is None:
        raise ValueError(f"mechtrunc does not know the architecture {name!r}, so it does not run it (its "
                         f"matrices, hooks and layers would be read with another architecture's layout); "
                         f"known architectures: {', '.join(HF_ARCHITECTURES)}")
    return cls


def hf_stack(hf) -> Stack | None:
    """The stack of a Hugging Face causal LM of a known architecture (see :func:`hf_architecture`,
    which refuses the others), or None for a variant its stack does not write (the grid engine
    then takes the reference path)."""
    hf = _raw(hf)
    cls = hf_architecture(hf)
    return cls(hf) if cls.supports(hf.config) else None
