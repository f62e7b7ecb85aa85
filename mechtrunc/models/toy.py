"""The paper's toy Transformer, readable in one file (nanoGPT style) and hookable the
TransformerLens way.

Released configuration (Chen, Bruna, Bietti): 2 layers, d_model 256, one head per layer with
d_head = d_model, no LayerNorm, residual connections, causal attention scaled by 1/sqrt(d_head),
W_Q fixed to the identity, trained W_K, W_V, W_O, no biases, frozen random token embedding,
unembedding and absolute positional embedding, ReLU FFN with hidden size 4 d_model per layer.

Weights carry TransformerLens names and shapes (``W_E [vocab, d]``, ``W_pos``, ``W_U [d, vocab]``,
``attn.W_Q/W_K/W_V [heads, d, d_head]``, ``attn.W_O [heads, d_head, d]``, ``mlp.W_in [d, d_mlp]``,
``mlp.W_out [d_mlp, d]``) and hook points carry TransformerLens names (``hook_embed``,
``blocks.{l}.hook_resid_pre``, ``blocks.{l}.attn.hook_pattern``, ``blocks.{l}.attn.hook_z``,
``blocks.{l}.hook_attn_out``, ``blocks.{l}.mlp.hook_pre``, ``blocks.{l}.hook_mlp_out``, ...), so
``run_with_hooks``/``run_with_cache`` and every mechtrunc intervention work on it exactly as on a
``TransformerBridge``.

Initialisation (``init="released"``, the default) is the released code's, parameter by parameter:

==================  =====================================  ======================================
weight              released code                          here
==================  =====================================  ======================================
``W_E``             ``nn.Embedding``: N(0, 1), frozen       N(0, 1), frozen
``W_pos``           ``torch.randn``: N(0, 1), frozen        N(0, 1), frozen
``W_U``             ``nn.Linear(d, vocab)``: U(+-1/sqrt(d)),  U(+-1/sqrt(d)) (std 1/sqrt(3 d)), frozen
                    frozen
``attn.W_Q``        identity, fixed                         identity, fixed
``attn.W_K/W_V``    ``nn.Linear(d, d)``: U(+-1/sqrt(d))     U(+-1/sqrt(d_model))
``attn.W_O``        ``nn.Linear(d, d)``: U(+-1/sqrt(d))     U(+-1/sqrt(n_heads d_head))
``mlp.W_in``        ``nn.Linear(d, 4d)``: U(+-1/sqrt(d))    U(+-1/sqrt(d_model))
``mlp.W_out``       ``nn.Linear(4d, d)``: U(+-1/sqrt(4d))   U(+-1/sqrt(d_mlp))
==================  =====================================  ======================================

``init="normal_unembed"`` keeps everything above but draws ``W_U`` from N(0, 1/d), mechtrunc's
default before 0.2: an unembedding sqrt(3) = 1.7x larger, which makes the logits sharper and the
FFN L1's noise association easier to truncate away (see ``docs/results.md``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from mechtrunc._checks import check_choice
from mechtrunc._choices import INITS
from mechtrunc.core.adapters import MatrixSite, ModelAdapter
from mechtrunc.core.stacks import TransformerStack

__all__ = ["ToyConfig", "ToyTransformer", "ToyAdapter", "FFN_KINDS", "INITS"]

FFN_KINDS = ("relu", "linear", "none")


@dataclass
class ToyConfig:
    n_layers: int = 2
    d_model: int = 256
    n_heads: int = 1
    d_head: int | None = None  # default d_model // n_heads
    d_mlp: int | None = None  # default 4 * d_model
    d_vocab: int = 65
    n_ctx: int = 256
    ffn: list[str] | str = "relu"  # one kind for all layers, or one per layer
    identity_query: bool = True
    freeze_embed: bool = True
    freeze_unembed: bool = True
    freeze_pos: bool = True
    init: str = "released"  # "released" (the authors' code) or "normal_unembed" (W_U ~ N(0, 1/d))
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "d_vocab", "n_ctx"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
            self.d_head = self.d_model // self.n_heads
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        kinds = [self.ffn] * self.n_layers if isinstance(self.ffn, str) else list(self.ffn)
        if len(kinds) != self.n_layers:
            raise ValueError(f"ffn lists {len(kinds)} kinds for {self.n_layers} layers")
        for kind in kinds:
            check_choice("ffn kind", kind, FFN_KINDS)
        self.ffn = kinds
        check_choice("init", self.init, INITS)
        if self.identity_query and self.n_heads * self.d_head != self.d_model:
            raise ValueError("identity_query needs n_heads * d_head == d_model")

    @property
    def attn_only(self) -> bool:
        return all(k == "none" for k in self.ffn)

    def to_dict(self) -> dict:
        return asdict(self)


class Attention(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        h, d, dh = cfg.n_heads, cfg.d_model, cfg.d_head
        bound = 1 / math.sqrt(d)  # nn.Linear's default init range
        init = lambda *s: nn.Parameter(torch.empty(*s).uniform_(-bound, bound))
        if cfg.identity_query:
            self.W_Q = nn.Parameter(torch.eye(d).reshape(d, h, dh).permute(1, 0, 2).contiguous(), requires_grad=False)
        else:
            self.W_Q = init(h, d, dh)
        self.W_K = init(h, d, dh)
        self.W_V = init(h, d, dh)
        self.W_O = nn.Parameter(torch.empty(h, dh, d).uniform_(-1 / math.sqrt(h * dh), 1 / math.sqrt(h * dh)))
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_scores, self.hook_pattern, self.hook_z = HookPoint(), HookPoint(), HookPoint()
        self.scale = 1 / math.sqrt(dh)

    def forward(self, x: Float[Tensor, "b p d"]) -> Float[Tensor, "b p d"]:
        b, p, d = x.shape
        h, dh = self.W_Q.shape[0], self.W_Q.shape[2]
        # plain matmuls on [d, h * d_head] views (cheaper than einsum at small sizes)
        proj = lambda W: (x @ W.permute(1, 0, 2).reshape(d, h * dh)).view(b, p, h, dh)
        q = self.hook_q(proj(self.W_Q))
        k = self.hook_k(proj(self.W_K))
        v = self.hook_v(proj(self.W_V))
        if self.hook_attn_scores._forward_hooks or self.hook_pattern._forward_hooks:
            # explicit path: scores and pattern are materialised so hooks can read or edit them
            scores = torch.einsum("bqhe,bkhe->bhqk", q, k) * self.scale
            causal = torch.ones(p, p, dtype=torch.bool, device=x.device).tril()
            scores = self.hook_attn_scores(scores.masked_fill(~causal, float("-inf")))
            pattern = self.hook_pattern(scores.softmax(-1))
            z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
        else:  # fused kernel, same maths, used when nothing watches the pattern
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=self.scale
            ).transpose(1, 2)
        z = self.hook_z(z)
        return z.reshape(b, p, h * dh) @ self.W_O.reshape(h * dh, d)


class MLP(nn.Module):
    def __init__(self, cfg: ToyConfig, kind: str):
        super().__init__()
        d, m = cfg.d_model, cfg.d_mlp
        self.kind = kind
        self.W_in = nn.Parameter(torch.empty(d, m).uniform_(-1 / math.sqrt(d), 1 / math.sqrt(d)))
        self.W_out = nn.Parameter(torch.empty(m, d).uniform_(-1 / math.sqrt(m), 1 / math.sqrt(m)))
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: Float[Tensor, "b p d"]) -> Float[Tensor, "b p d"]:
        pre = self.hook_pre(x @ self.W_in)
        post = self.hook_post(F.relu(pre) if self.kind == "relu" else pre)
        return post @ self.W_out


class Block(nn.Module):
    def __init__(self, cfg: ToyConfig, ffn_kind: str):
        super().__init__()
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg, ffn_kind) if ffn_kind != "none" else None
        self.hook_resid_pre, self.hook_attn_out = HookPoint(), HookPoint()
        self.hook_resid_mid, self.hook_mlp_out = HookPoint(), HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: Float[Tensor, "b p d"]) -> Float[Tensor, "b p d"]:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(x)))
        if self.mlp is not None:
            x = x + self.hook_mlp_out(self.mlp(x))
        return self.hook_resid_post(x)


class ToyStack(TransformerStack):
    """The toy model's layers for the grid engine: no LayerNorm, sequential residual, no biases."""

    def __init__(self, model: "ToyTransformer"):
        self.model, c = model, model.cfg
        self.n_layers, self.n_heads, self.d_head = c.n_layers, c.n_heads, c.d_head

    def embed(self, tokens):
        p = tokens.shape[1]
        if p > self.model.cfg.n_ctx:
            raise ValueError(f"sequence length {p} exceeds n_ctx {self.model.cfg.n_ctx}")
        return self.model.W_E[tokens] + self.model.W_pos[:p]

    def ln1(self, l, x):
        return x

    ln2 = ln1

    def has_mlp(self, l):
        return self.model.blocks[l].mlp is not None

    def qkv(self, l, x):
        att, (b, p, d) = self.model.blocks[l].attn, x.shape
        proj = lambda W: (x @ W.permute(1, 0, 2).reshape(d, -1)).view(b, p, self.n_heads, self.d_head).transpose(1, 2)
        return proj(att.W_Q), proj(att.W_K), proj(att.W_V)

    def o_proj(self, l, z):
        return z @ self.model.blocks[l].attn.W_O.reshape(self.n_heads * self.d_head, -1)

    def mlp_in(self, l, x):
        return x @ self.model.blocks[l].mlp.W_in

    def act(self, l, x):
        return F.relu(x) if self.model.blocks[l].mlp.kind == "relu" else x

    def mlp_out(self, l, h):
        return h @ self.model.blocks[l].mlp.W_out

    def unembed(self, x):
        return x @ self.model.W_U


class ToyAdapter(ModelAdapter):
    """The toy model for mechtrunc's interventions, attribution and grid engine."""

    kind = "toy"

    def __init__(self, model: "ToyTransformer"):
        super().__init__(model)
        c = model.cfg
        self.n_layers, self.n_heads, self.d_model, self.d_head, self.d_vocab = (
            c.n_layers, c.n_heads, c.d_model, c.d_head, c.d_vocab)

    def _build_stack(self):
        return ToyStack(self.model)

    def has_mlp(self, layer: int) -> bool:
        return self.model.blocks[layer].mlp is not None

    residual_readers = ("q", "k", "v", "mlp")

    def _residual_reader(self, reader, layer):
        # no LayerNorm: each reader's hook is its projection of the residual stream
        if reader == "mlp":
            return self.hook_name("mlp_pre", layer), self.matrix("mlp.W_in", layer).get().detach()
        return self.hook_name(reader, layer), self.matrix(f"attn.W_{reader.upper()}", layer).get().detach()

    def _matrix(self, name, layer):
        block, h, d, dh = self.model.blocks[layer], self.n_heads, self.d_model, self.d_head
        hook = self.out_hook(name, layer)
        if name.startswith("mlp."):
            return MatrixSite(layer, name, getattr(block.mlp, name[4:]), lambda t: t, lambda W: W, None, hook)
        p = getattr(block.attn, name[5:])
        if name == "attn.W_O":
            return MatrixSite(layer, name, p, lambda t: t.reshape(h * dh, d), lambda W: W.reshape(h, dh, d), None, hook)
        to = lambda t: t.permute(1, 0, 2).reshape(d, h * dh)  # [head, d, d_head] <-> [d, head * d_head]
        back = lambda W: W.reshape(d, h, dh).permute(1, 0, 2)
        return MatrixSite(layer, name, p, to, back, None, hook)

    def W_U(self):
        return self.model.W_U.detach()


class ToyTransformer(HookedRootModule):
    """Two-layer (by default) attention + FFN model of the paper, with TransformerLens hooks."""

    mechtrunc_adapter = ToyAdapter

    def __init__(self, cfg: ToyConfig | None = None, **overrides):
        super().__init__()
        cfg = cfg or ToyConfig(**overrides)
        self.cfg = cfg
        gen = torch.Generator().manual_seed(cfg.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            d = cfg.d_model
            self.W_E = nn.Parameter(torch.randn(cfg.d_vocab, d, generator=gen), requires_grad=not cfg.freeze_embed)
            self.W_pos = nn.Parameter(torch.randn(cfg.n_ctx, d, generator=gen), requires_grad=not cfg.freeze_pos)
            if cfg.init == "released":  # nn.Linear(d, vocab, bias=False) default: U(-1/sqrt(d), 1/sqrt(d))
                W_U = torch.empty(d, cfg.d_vocab).uniform_(-1 / math.sqrt(d), 1 / math.sqrt(d), generator=gen)
            else:  # "normal_unembed"
                W_U = torch.randn(d, cfg.d_vocab, generator=gen) / math.sqrt(d)
            self.W_U = nn.Parameter(W_U, requires_grad=not cfg.freeze_unembed)
            self.blocks = nn.ModuleList(Block(cfg, kind) for kind in cfg.ffn)
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self.setup()

    def forward(self, tokens: Int[Tensor, "b p"]) -> Float[Tensor, "b p vocab"]:
        p = tokens.shape[1]
        if p > self.cfg.n_ctx:
            raise ValueError(f"sequence length {p} exceeds n_ctx {self.cfg.n_ctx}")
        pos = self.W_pos[:p].unsqueeze(0).expand(tokens.shape[0], -1, -1)  # [b, p, d] as in TransformerLens
        x = self.hook_embed(self.W_E[tokens]) + self.hook_pos_embed(pos)
        for block in self.blocks:
            x = block(x)
        return x @ self.W_U

    # --- persistence: safetensors weights + JSON config -------------------------------------
    def save(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write ``model.safetensors`` and ``config.json`` (plus ``extra`` metadata) to a directory."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, directory / "model.safetensors")
        meta = {"model": self.cfg.to_dict(), **(extra or {})}
        (directory / "config.json").write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> "ToyTransformer":
        """Load a model written by :meth:`save`; a missing or corrupt directory raises ``ValueError``."""
        from safetensors.torch import load_file

        directory = Path(directory)
        cfg_path, w_path = directory / "config.json", directory / "model.safetensors"
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"{directory} is not a directory (expected a model directory written by `mechtrunc toy train`)")
        if not directory.is_dir():
            raise ValueError(f"model directory {directory} does not exist")
        for path in (cfg_path, w_path):
            if not path.is_file():
                raise ValueError(f"{str(directory)!r} is not a mechtrunc model directory: {path.name} is missing")
        try:
            meta = json.loads(cfg_path.read_text())
            model = cls(ToyConfig(**meta["model"]))
            state = load_file(str(w_path))
            model.load_state_dict(state, strict=True)
        except Exception as err:  # any parse, shape or key failure means a corrupt directory
            raise ValueError(f"corrupt model directory {str(directory)!r}: {err}") from err
        return model.to(device)
