"""One view of a model: the only door to an architecture.

:func:`adapt` gives the :class:`ModelAdapter` of a model, which answers every question the rest
of mechtrunc asks about it: sizes, hook names (TransformerLens' legacy names), the weight
matrices as plain ``x @ W`` matrices that can be read and written in place, biases, the
unembedding and the final LayerNorm, the decompositions of its matrices (:meth:`ModelAdapter.svd`,
:meth:`ModelAdapter.basis`, through :mod:`mechtrunc.core.decomposition`), and its layer stack as the
few operations the grid engine needs (:attr:`ModelAdapter.stack`, a :class:`mechtrunc.core.stacks.Stack`).

Built in: a TransformerLens ``TransformerBridge`` of an architecture mechtrunc knows
(:class:`BridgeAdapter`; GPT-NeoX/Pythia, GPT-2, GPT-J and the Llama family, Llama and Qwen2, as
:data:`mechtrunc.core.stacks.HF_ARCHITECTURES` lists: any other is refused with an error naming it)
and a bare Hugging Face ``GPTNeoXForCausalLM``
(:class:`HFNeoXAdapter`, no hook points).  Any other model class joins through a
``mechtrunc_adapter`` class attribute naming its :class:`ModelAdapter` subclass: the toy model
(:class:`mechtrunc.models.toy.ToyAdapter`), the linear memory
(:class:`mechtrunc.models.memory.MemoryAdapter`) and the minimal model do, so this module imports none
of them.

On bridges the weights are the raw Hugging Face parameters (no LayerNorm folding): truncating
them is what LASER does.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch
from jaxtyping import Float
from torch import Tensor, nn

from mechtrunc._choices import GATED_MATRICES, MATRICES, SITES
from mechtrunc._scalars import as_int
from mechtrunc.core.decomposition import SVDCache, full_svd
from mechtrunc.core.stacks import Stack, hf_architecture, hf_stack

__all__ = ["MATRICES", "GATED_MATRICES", "MEMORY_MATRICES", "SITES", "ModelAdapter", "MatrixSite", "BridgeAdapter",
           "HFNeoXAdapter", "adapt"]

# MATRICES (matrices an intervention can edit, in TransformerLens names) and SITES (activation
# sites, hook outputs, an intervention can edit) live in mechtrunc._choices, which the CLI reads.
#: the matrix of a :class:`mechtrunc.models.memory.LinearMemory` (layer 0)
MEMORY_MATRICES = ("W",)

_SITE_HOOK = {
    "mlp_out": "blocks.{l}.hook_mlp_out",
    "attn_out": "blocks.{l}.hook_attn_out",
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "resid_post": "blocks.{l}.hook_resid_post",
    "mlp_pre": "blocks.{l}.mlp.hook_pre",
    "mlp_post": "blocks.{l}.mlp.hook_post",
    "z": "blocks.{l}.attn.hook_z",
}
#: TransformerLens' names of the other hooks :meth:`ModelAdapter.hook_name` knows: a layer's ...
_LAYER_HOOK = {
    **_SITE_HOOK,
    "q": "blocks.{l}.attn.hook_q",
    "k": "blocks.{l}.attn.hook_k",
    "v": "blocks.{l}.attn.hook_v",
    "attn_scores": "blocks.{l}.attn.hook_attn_scores",
    "pattern": "blocks.{l}.attn.hook_pattern",
    # a bridge's split inputs (live inside BridgeAdapter.split_inputs): each head's query, key and
    # value input and the MLP's input, the residual stream as each reader sees it
    "q_input": "blocks.{l}.attn.hook_q_input",
    "k_input": "blocks.{l}.attn.hook_k_input",
    "v_input": "blocks.{l}.attn.hook_v_input",
    "mlp_in": "blocks.{l}.hook_mlp_in",
}
#: ... and the model's own (no layer)
_MODEL_HOOK = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "final_scale": "ln_final.hook_scale",  # the final LayerNorm's scale
    "prev_embed": "hook_prev_embed",  # the minimal model's previous-token embedding
}
#: per-head products seen as matrix sites: ``name -> (the two factors)``; an edit rewrites the second
_HEAD_PRODUCTS = {"attn.OV": ("attn.W_V", "attn.W_O")}
_MATRIX_OUT_HOOK = {
    "mlp.W_in": "blocks.{l}.mlp.hook_pre",
    "mlp.W_out": "blocks.{l}.hook_mlp_out",
    "attn.W_Q": "blocks.{l}.attn.hook_q",
    "attn.W_K": "blocks.{l}.attn.hook_k",
    "attn.W_V": "blocks.{l}.attn.hook_v",
    "attn.W_O": "blocks.{l}.hook_attn_out",
}
#: a gated MLP's own output hooks: ``mlp.hook_pre`` is the gate's output there, not W_in's
_GATED_OUT_HOOK = {
    "mlp.W_in": "blocks.{l}.mlp.hook_pre_linear",
    "mlp.W_gate": "blocks.{l}.mlp.hook_pre",
}


@dataclass
class MatrixSite:
    """A weight matrix seen as ``out = x @ W + bias`` with ``W`` of shape ``[d_in, d_out]``.

    ``param`` is the stored parameter (any layout); ``to_full``/``from_full`` convert between
    that layout and ``W``.  ``out_hook`` names the hook whose output is ``x @ W + bias`` (heads
    split in its last two dimensions for Q, K, V).
    """

    layer: int
    name: str
    param: Tensor
    to_full: Callable[[Tensor], Tensor]
    from_full: Callable[[Tensor], Tensor]
    bias: Tensor | None
    out_hook: str
    #: a per-head product (``attn.OV``): the number of heads, ``get()`` being ``[head, d_in,
    #: d_out]`` and ``out_hook`` the hook a hook-mode edit rewrites (``attn.hook_z``); None: one matrix
    heads: int | None = None
    #: the maximum rank when it is not ``min(d_in, d_out)`` (a head's ``W_V W_O``: ``d_head``)
    rank_bound: int | None = None
    #: the stored matrix whose parameter (``param``) an edit of this site rewrites
    #: (``attn.OV``: ``attn.W_O``); defaults to ``name``
    edits: str | None = None

    def __post_init__(self):
        if self.edits is None:
            self.edits = self.name

    def get(self) -> Float[Tensor, "d_in d_out"]:
        return self.to_full(self.param.detach())

    def set(self, W: Float[Tensor, "d_in d_out"]) -> None:
        with torch.no_grad():
            self.param.copy_(self.from_full(W.to(self.param.dtype)))

    @property
    def max_rank(self) -> int:
        if self.rank_bound is not None:
            return self.rank_bound
        return min(self.get().shape)


class ModelAdapter(ABC):
    """Common interface; see :class:`BridgeAdapter` (and the module docstring for the others)."""

    model: nn.Module
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    kind: str

    #: whether the model has TransformerLens hook points (hook-mode interventions, attribution)
    has_hooks = True
    #: whether the MLP is gated (``down(act(x @ W_gate) * (x @ W_in))``: matrix ``mlp.W_gate`` exists)
    gated_mlp = False

    def __init__(self, model: nn.Module):
        self.model = model
        self._svd_cache: dict = {}
        self._stack: Stack | None = None
        self._stack_built = False

    # --- the layer stack (the grid engine's view) -----------------------------------------
    def _build_stack(self) -> Stack | None:
        """The model's :class:`~mechtrunc.core.stacks.Stack`, or None (no engine fast path)."""
        return None

    @property
    def stack(self) -> Stack | None:
        """The layer stack the grid engine runs (built once), or None for a model without one."""
        if not self._stack_built:
            self._stack, self._stack_built = self._build_stack(), True
        return self._stack

    @property
    def fast_matrices(self) -> tuple[str, ...]:
        """Matrices whose truncations the grid engine computes from cached clean activations."""
        return self.stack.matrices if self.stack is not None else ()

    # --- names ---------------------------------------------------------------------------
    def check_layer(self, layer: int) -> int:
        """``layer`` as a Python int (any integer scalar type, not bool) if it is in range."""
        layer = as_int(layer, "layer")
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer {layer!r} is out of range: valid layers are 0..{self.n_layers - 1}")
        return layer

    def check_head(self, head: int) -> int:
        """``head`` as a Python int (any integer scalar type, not bool) if it is in range."""
        head = as_int(head, "head")
        if not 0 <= head < self.n_heads:
            raise ValueError(f"head {head!r} is out of range: valid heads are 0..{self.n_heads - 1}")
        return head

    def token_id(self, token: int | str) -> int:
        """A token id from an id or a string that is exactly one token of the model's tokenizer
        (e.g. ``" the"``), checked against the vocabulary."""
        if isinstance(token, str):
            tok = getattr(self.model, "tokenizer", None)
            if tok is None:
                raise ValueError(f"token {token!r} given as text but the model has no tokenizer; pass token ids")
            ids = tok.encode(token, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(f"{token!r} is not a single token for this tokenizer (it is {len(ids)} tokens: {ids})")
            token = ids[0]
        t = as_int(token, "token")
        if not 0 <= t < self.d_vocab:
            raise ValueError(f"token id {t} is out of range: valid ids are 0..{self.d_vocab - 1}")
        return t

    def site_hook(self, site: str, layer: int) -> str:
        if site not in _SITE_HOOK:
            raise ValueError(f"unknown site {site!r}; valid sites: {', '.join(SITES)}")
        layer = self.check_layer(layer)
        if site in ("mlp_out", "mlp_pre", "mlp_post") and not self.has_mlp(layer):
            raise ValueError(f"layer {layer} has no MLP, so site {site!r} does not exist")
        if site == "resid_mid" and self.mlp_input_site(layer) != "resid_mid":
            raise ValueError("this model runs attention and MLP in parallel, so site 'resid_mid' does not exist "
                             "(its MLP reads resid_pre)")
        return _SITE_HOOK[site].format(l=layer)

    def mlp_input_site(self, layer: int) -> str:
        """The residual site layer ``layer``'s MLP reads (before its LayerNorm): ``"resid_mid"``
        in a sequential block, ``"resid_pre"`` where attention and MLP run in parallel."""
        return "resid_mid"

    def hook_point(self, name: str):
        try:
            return self.model.hook_dict[name]
        except KeyError:
            raise ValueError(f"model has no hook point {name!r}") from None

    def has_mlp(self, layer: int) -> bool:
        return True

    @contextlib.contextmanager
    def hooked(self, name: str, fn: Callable[[Tensor], Tensor | None]):
        """Run ``fn(activation)`` at hook ``name`` inside the block; a returned tensor replaces
        the activation.  Uses TransformerLens' ``add_hook`` (so bridges hand over activations
        in their documented shapes, e.g. ``hook_z`` as [batch, pos, head, d_head]) and
        registers the hook as permanent so ``run_with_hooks``' final ``reset_hooks`` leaves
        it in place; it is removed when the block ends."""
        hp = self.hook_point(name)
        handle = hp.add_hook(lambda act, hook: fn(act), dir="fwd", is_permanent=True)
        try:
            yield
        finally:
            handle.hook.remove()
            if handle in hp.fwd_hooks:
                hp.fwd_hooks.remove(handle)

    # --- what the floors above ask: hook names, sizes, capabilities ---------------------------
    def hook_name(self, name: str, layer: int | None = None) -> str:
        """The hook point of ``name`` (TransformerLens' legacy names): with a ``layer``, one of
        that layer's: the activation sites (:data:`SITES`: ``resid_pre``, ``attn_out``,
        ``mlp_out``, ``z``...) and ``q``, ``k``, ``v``, ``attn_scores``, ``pattern``, a bridge's
        split inputs ``q_input``, ``k_input``, ``v_input``, ``mlp_in`` (:meth:`split_inputs`);
        without, one of the model's: ``embed``, ``pos_embed``, ``final_scale`` (the final
        LayerNorm's scale), ``prev_embed`` (the minimal model's previous-token embedding).  Only the name: whether the model has that hook is :meth:`has_hook`'s question
        (:meth:`site_hook` checks an intervention's site)."""
        if layer is None:
            if name not in _MODEL_HOOK:
                hint = " (give layer= for a layer's hook)" if name in _LAYER_HOOK else ""
                raise ValueError(f"unknown model hook {name!r}; valid: {', '.join(_MODEL_HOOK)}{hint}")
            return _MODEL_HOOK[name]
        if name not in _LAYER_HOOK:
            hint = " (leave layer out for the model's own hooks)" if name in _MODEL_HOOK else ""
            raise ValueError(f"unknown layer hook {name!r}; valid: {', '.join(_LAYER_HOOK)}{hint}")
        return _LAYER_HOOK[name].format(l=self.check_layer(layer))

    def has_hook(self, name: str) -> bool:
        """Whether the model has the hook point ``name`` (a name from :meth:`hook_name`)."""
        return self.has_hooks and name in getattr(self.model, "hook_dict", {})

    #: the activation sites (:data:`SITES`) the model has: those an intervention may edit
    sites: tuple[str, ...] = SITES
    #: the matrices (:data:`MATRICES` names, or the memory's ``W``) the model has
    matrices: tuple[str, ...] = MATRICES

    @property
    def n_ctx(self) -> int | None:
        """The longest sequence the model takes, or None where the model sets no limit."""
        n = getattr(getattr(self.model, "cfg", None), "n_ctx", None)
        return n if isinstance(n, int) else None

    @property
    def d_mlp(self) -> int:
        """The width of the MLP's hidden layer (read from the configuration: no weight is built)."""
        n = getattr(getattr(self.model, "cfg", None), "d_mlp", None)
        if not isinstance(n, int):
            raise ValueError(f"this {self.kind} model has no MLP hidden layer of known width")
        return n

    # --- the residual stream as a graph of writers and readers (edge attribution) -----------
    #: the readers of the residual stream in each layer, in order: ``"q"``, ``"k"``, ``"v"`` (each
    #: head's query, key and value input), ``"mlp"`` (the MLP's input, where the layer has one);
    #: empty where the model is not a residual stream of heads and MLPs with readers it can name
    residual_readers: tuple[str, ...] = ()
    #: whether the token embedding (hook ``embed``) is a writer of the residual stream (an edge
    #: sender) that every reader and the logits read
    embed_writes_residual = True
    #: whether the readers' hooks (:meth:`residual_reader`) are split-input hooks that fire only
    #: inside :meth:`split_inputs`
    has_split_inputs = False

    def residual_reader(self, reader: str, layer: int) -> tuple[str, Tensor | None]:
        """Where ``reader`` (one of :attr:`residual_readers`) of layer ``layer`` reads the residual
        stream: the hook whose gradient is taken and the matrix ``[d_model, d_out]`` that maps the
        residual stream linearly onto that hook's activation (for ``q``, ``k``, ``v``: ``d_out =
        n_heads * d_head``, the hook splitting heads in its last two dimensions), or None where
        the hook holds the reader's input itself.  The matrix is read now: inside an intervention
        block it is the edited one."""
        if not self.residual_readers:
            raise ValueError(f"this {self.kind} model is not a residual stream of heads and MLPs whose readers "
                             "mechtrunc knows")
        if reader not in self.residual_readers:
            raise ValueError(f"unknown reader {reader!r}; valid: {', '.join(self.residual_readers)}")
        layer = self.check_layer(layer)
        if reader == "mlp" and not self.has_mlp(layer):
            raise ValueError(f"layer {layer} has no MLP, so reader 'mlp' does not exist")
        return self._residual_reader(reader, layer)

    def _residual_reader(self, reader: str, layer: int) -> tuple[str, Tensor | None]:
        """:meth:`residual_reader` of a validated reader and layer (an adapter that declares
        :attr:`residual_readers` says here how each reads the residual stream)."""
        raise ValueError(f"this {self.kind} model declares the residual readers {self.residual_readers} but not "
                         f"how {reader!r} reads the residual stream")

    @contextlib.contextmanager
    def split_inputs(self):
        """Inside the block the model's split-input hooks (``q_input``, ``k_input``, ``v_input``,
        ``mlp_in`` of :meth:`hook_name`) fire; its flags are restored after.  Where
        :attr:`has_split_inputs` is false the model has none: a ValueError says so."""
        raise ValueError(f"this {self.kind} model has no split query/key/value-input and MLP-input hooks")
        yield  # pragma: no cover  (a generator: the context manager protocol)

    # --- weights -------------------------------------------------------------------------
    def matrix(self, name: str, layer: int) -> MatrixSite:
        if name in MEMORY_MATRICES:
            raise ValueError(f"matrix {name!r} exists only on a mechtrunc.models.memory.LinearMemory, not on a {self.kind} model")
        if name in GATED_MATRICES and not self.gated_mlp:
            raise ValueError(f"matrix {name!r} exists only in a gated MLP (the Llama family); this {self.kind} "
                             f"model's MLP is not gated")
        if name not in MATRICES + GATED_MATRICES:
            valid = ", ".join(MATRICES + (GATED_MATRICES if self.gated_mlp else ()))
            raise ValueError(f"unknown matrix {name!r}; valid matrices: {valid}")
        layer = self.check_layer(layer)
        if name.startswith("mlp.") and not self.has_mlp(layer):
            raise ValueError(f"layer {layer} has no MLP, so matrix {name!r} does not exist")
        if name in _HEAD_PRODUCTS:
            return self._head_product(name, layer)
        return self._matrix(name, layer)

    def out_hook(self, name: str, layer: int) -> str:
        """The hook whose output is matrix ``name``'s output ``x @ W + b`` (TransformerLens names)."""
        return _MATRIX_OUT_HOOK[name].format(l=layer)

    def check_kv(self, name: str) -> None:
        """Refuse a matrix whose layout assumes one key-value head per query head on a model
        with grouped key-value heads (none here; see :meth:`BridgeAdapter.check_kv`)."""

    @abstractmethod
    def _matrix(self, name: str, layer: int) -> MatrixSite:
        """The site of a validated matrix name and layer."""

    def _head_product(self, name: str, layer: int) -> MatrixSite:
        """``attn.OV``: each head's ``W_V[h] @ W_O[h]`` (``[head, d_model, d_model]``, maximum
        rank ``d_head``) as a site whose edits rewrite ``W_O`` and whose hook-mode edits act on
        ``attn.hook_z``; it cannot be written as a whole (:meth:`MatrixSite.set` refuses)."""
        self.check_kv(name)
        first, second = _HEAD_PRODUCTS[name]
        v, o = self._matrix(first, layer), self._matrix(second, layer)
        h, dh, d = self.n_heads, self.d_head, self.d_model

        def product(_):
            W_V = v.get().reshape(d, h, dh).permute(1, 0, 2)  # [head, d, d_head]
            return W_V @ o.get().reshape(h, dh, d)

        def refuse(_):
            raise ValueError(f"{name} is the product {first} @ {second} of each head, not a stored matrix: "
                             f"an edit of it rewrites {second}")

        return MatrixSite(layer, name, o.param, product, refuse, o.bias, self.hook_name("z", layer),
                          heads=h, rank_bound=dh, edits=second)

    def svd(self, site: MatrixSite, method: str = "exact", rank: int | None = None):
        """``U, S, Vh`` of a matrix (``W = U diag(S) Vh``), cached while the weight is unchanged.

        The cache entry keeps a copy of the weight and is used only when the current weight is
        equal to it: version counters miss edits made through ``.data`` (and a restored weight
        bumps the version although its values are back), so they are not a safe key."""
        W = site.get()
        key = (site.name, site.layer, method, rank if method != "exact" else None)
        hit = self._svd_cache.get(key)
        if hit is not None:
            W_seen, *usv = hit
            if W_seen.shape == W.shape and W_seen.dtype == W.dtype and W_seen.device == W.device \
                    and torch.equal(W_seen, W):
                return tuple(usv)
        U, S, Vh = full_svd(W, method, rank)
        self._svd_cache = {k: v for k, v in self._svd_cache.items() if k[:2] != key[:2]}
        self._svd_cache[key] = (W.clone(), U, S, Vh)
        return U, S, Vh

    def basis(self, site: MatrixSite, rank: int, cache: SVDCache | None = None) -> tuple[Tensor, Tensor]:
        """Top-``rank`` singular basis of the smaller side of a matrix and its singular values
        (:func:`mechtrunc.core.decomposition.truncation_basis`), through ``cache`` (an
        :class:`~mechtrunc.core.decomposition.SVDCache`: on disk, keyed by the weight's hash)."""
        return (cache if cache is not None else SVDCache()).get(site.get(), rank)

    def head_W_O(self, layer: int) -> Float[Tensor, "head d_head d_model"]:
        W = self.matrix("attn.W_O", layer).get()
        return W.reshape(self.n_heads, self.d_head, self.d_model)

    def attn_out_bias(self, layer: int) -> Tensor | None:
        return self.matrix("attn.W_O", layer).bias

    # --- unembedding ---------------------------------------------------------------------
    @abstractmethod
    def W_U(self) -> Float[Tensor, "d_model vocab"]:
        """The unembedding matrix."""

    def b_U(self) -> Tensor | None:
        return None

    def final_ln(self) -> tuple[Tensor, Tensor | None] | None:
        """``(weight, bias)`` of the final LayerNorm, or None when the model has none."""
        return None

    ln_is_rms = False

    def has_pos_embed(self) -> bool:
        return "hook_pos_embed" in self.model.hook_dict

    def forward(self, tokens: Tensor) -> Tensor:
        out = self.model(tokens)
        return out if isinstance(out, Tensor) else out.logits

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


class BridgeAdapter(ModelAdapter):
    kind = "bridge"
    _LINEARS = {"mlp.W_in": ("mlp", "in"), "mlp.W_out": ("mlp", "out"), "attn.W_Q": ("attn", "q"),
                "attn.W_K": ("attn", "k"), "attn.W_V": ("attn", "v"), "attn.W_O": ("attn", "o"),
                "mlp.W_gate": ("mlp", "gate")}

    def __init__(self, model):
        super().__init__(model)
        c = model.cfg
        self.n_layers, self.n_heads, self.d_model, self.d_head, self.d_vocab = (
            c.n_layers, c.n_heads, c.d_model, c.d_head, c.d_vocab)
        # the architecture's stack class: an architecture mechtrunc does not know is refused here
        self.architecture = hf_architecture(model.original_model)
        self.gated_mlp = self.architecture.gated
        self.n_kv_heads = self.architecture.n_kv_heads(model.original_model.config)

    def out_hook(self, name: str, layer: int) -> str:
        if self.gated_mlp and name in _GATED_OUT_HOOK:
            return _GATED_OUT_HOOK[name].format(l=layer)
        return super().out_hook(name, layer)

    def check_kv(self, name: str) -> None:
        """Refuse the matrices whose layout assumes one key-value head per query head
        (``attn.W_K``, ``attn.W_V``, ``attn.OV``) on a model with grouped key-value heads."""
        if self.n_kv_heads is not None and name in ("attn.W_K", "attn.W_V", "attn.OV"):
            raise ValueError(f"matrix {name!r} is not supported on a model with grouped key-value heads "
                             f"({self.n_kv_heads} key-value heads for {self.n_heads} query heads); the other "
                             f"matrices are")

    def mlp_input_site(self, layer: int) -> str:
        return "resid_pre" if getattr(self.model.cfg, "parallel_attn_mlp", False) else "resid_mid"

    residual_readers = ("q", "k", "v", "mlp")
    has_split_inputs = True

    def _residual_reader(self, reader, layer):
        # a LayerNorm stands between the residual stream and each projection: read the split inputs
        return self.hook_name("mlp_in" if reader == "mlp" else f"{reader}_input", layer), None

    @contextlib.contextmanager
    def split_inputs(self):
        """Switch on TransformerLens' split query/key/value-input and MLP-input hooks (and off
        its combined attention input, which excludes them), restoring the flags after.  A bridge
        whose attention does not split its inputs per head (GPT-J) is refused with a ValueError."""
        m, cfg = self.model, self.model.cfg
        changed = []
        try:
            if getattr(cfg, "use_attn_in", False):
                m.set_use_attn_in(False)
                changed.append((m.set_use_attn_in, True))
            for flag, setter in (("use_split_qkv_input", m.set_use_split_qkv_input),
                                 ("use_hook_mlp_in", m.set_use_hook_mlp_in)):
                if not getattr(cfg, flag):
                    try:
                        setter(True)
                    except NotImplementedError as e:
                        raise ValueError(f"this bridge's attention does not expose each head's query/key/value "
                                         f"input and each MLP's input ({flag}: {e})") from None
                    changed.append((setter, False))
            yield
        finally:
            for setter, value in reversed(changed):
                setter(value)

    def _matrix(self, name, layer):
        self.check_kv(name)
        part, attr = self._LINEARS[name]
        linear = getattr(getattr(self.model.blocks[layer], part), attr).original_component
        hook = self.out_hook(name, layer)
        if isinstance(linear, nn.Linear):  # weight [out, in]
            to, back = (lambda t: t.T), (lambda W: W.T)
        else:  # transformers' Conv1D (GPT-2): weight [in, out], used as x @ W
            to, back = (lambda t: t), (lambda W: W)
        bias = linear.bias.detach() if getattr(linear, "bias", None) is not None else None
        return MatrixSite(layer, name, linear.weight, to, back, bias, hook)

    def _build_stack(self):
        return hf_stack(self.model.original_model)

    def W_U(self):
        return self.model.unembed.original_component.weight.detach().T

    def has_pos_embed(self) -> bool:
        # rotary models list a hook_pos_embed alias that never fires
        return self.model.cfg.positional_embedding_type == "standard" and super().has_pos_embed()

    def b_U(self):
        b = getattr(self.model.unembed.original_component, "bias", None)
        return None if b is None else b.detach()

    def final_ln(self):
        ln = self.model.ln_final.original_component
        w = getattr(ln, "weight", None)
        return (w.detach() if w is not None else torch.ones(self.d_model, device=self.device),
                ln.bias.detach() if getattr(ln, "bias", None) is not None else None)

    @property
    def ln_is_rms(self) -> bool:
        return bool(getattr(self.model.cfg, "uses_rms_norm", False)) or self.model.cfg.normalization_type in ("RMS", "RMSPre")


class HFNeoXAdapter(ModelAdapter):
    """A bare Hugging Face ``GPTNeoXForCausalLM`` (no TransformerLens bridge): weights and the
    engine's stack, but no hook points (hook-mode interventions need a bridge).  Query, key and
    value are views of the fused ``query_key_value`` weight."""

    kind = "hf"
    has_hooks = False
    _LINEARS = {"mlp.W_in": ("mlp", "dense_h_to_4h"), "mlp.W_out": ("mlp", "dense_4h_to_h"),
                "attn.W_O": ("attention", "dense")}

    def __init__(self, model):
        super().__init__(model)
        c = model.config
        self.n_layers, self.n_heads, self.d_model = c.num_hidden_layers, c.num_attention_heads, c.hidden_size
        self.d_head, self.d_vocab = self.d_model // self.n_heads, model.get_output_embeddings().weight.shape[0]

    def _build_stack(self):
        return hf_stack(self.model)

    @property
    def d_mlp(self) -> int:
        return self.model.config.intermediate_size

    def hook_point(self, name: str):
        raise ValueError(f"a bare Hugging Face model has no hook point {name!r}: boot a TransformerBridge over it "
                         "(mechtrunc.models.hf.load_model) for hook-mode interventions")

    def _matrix(self, name, layer):
        block = self.model.gpt_neox.layers[layer]
        hook = self.out_hook(name, layer)
        if name in self._LINEARS:
            part, attr = self._LINEARS[name]
            lin = getattr(getattr(block, part), attr)
            return MatrixSite(layer, name, lin.weight, lambda t: t.T, lambda W: W.T, lin.bias.detach(), hook)
        qkv, h, dh, d = block.attention.query_key_value, self.n_heads, self.d_head, self.d_model
        j = "QKV".index(name[-1])  # the fused weight is [head, (q, k, v), d_head] x d
        to = lambda t: t.view(h, 3, dh, d)[:, j].reshape(h * dh, d).T

        def back(W, p=qkv.weight):
            full = p.detach().clone()
            full.view(h, 3, dh, d)[:, j] = W.T.reshape(h, dh, d)
            return full

        return MatrixSite(layer, name, qkv.weight, to, back, qkv.bias.detach().view(h, 3, dh)[:, j].reshape(-1), hook)

    def W_U(self):
        return self.model.get_output_embeddings().weight.detach().T

    def final_ln(self):
        ln = self.model.gpt_neox.final_layer_norm
        return ln.weight.detach(), ln.bias.detach()

    def has_pos_embed(self) -> bool:
        return False


_ATTR = "_mechtrunc_adapter"


def adapt(model: nn.Module | ModelAdapter) -> ModelAdapter:
    """The adapter of a model, created once and kept on the model itself (so it is freed with
    the model): a ``TransformerBridge``, a bare ``GPTNeoXForCausalLM``, or any model class
    exposing a ``mechtrunc_adapter`` attribute, the :class:`ModelAdapter` subclass to build for
    it (the toy model, the linear memory and the minimal model do)."""
    if isinstance(model, ModelAdapter):
        return model
    hit = model.__dict__.get(_ATTR)
    if hit is not None:
        return hit
    own = getattr(type(model), "mechtrunc_adapter", None)  # a model class may name its adapter class
    if own is not None:
        adapter: ModelAdapter = model.mechtrunc_adapter(model)
    elif type(model).__name__ == "TransformerBridge" or hasattr(model, "adapter") and hasattr(model, "blocks"):
        adapter = BridgeAdapter(model)
    elif type(model).__name__ == "GPTNeoXForCausalLM":
        adapter = HFNeoXAdapter(model)
    else:
        raise TypeError(
            f"mechtrunc supports transformer_lens.TransformerBridge models, a Hugging Face GPTNeoXForCausalLM and "
            f"model classes with a mechtrunc_adapter attribute (ToyTransformer, LinearMemory, MinimalModel), "
            f"got {type(model).__name__}"
        )
    model.__dict__[_ATTR] = adapter  # a plain attribute: not a submodule, not in state_dict
    return adapter
