"""**The minimal in-context model** (:class:`MinimalModel`), in the associative-memory viewpoint of
"Birth of a Transformer" (Bietti et al. 2023).  With token embeddings ``e(v)`` (rows of ``W_E``),
fixed previous-token embeddings ``p(v)`` (rows of ``W_prev``) and output embeddings ``u(v)``
(columns of ``W_U``), the residual stream at position ``t`` of a sequence ``z`` is::

    r_t      = e(z_t) + p(z_{t-1})                     (p(z_{-1}) = 0)
    a_{t,s}  = softmax_{s <= t}( r_t W_KQ r_s^T )        key-query associative memory
    o_t      = sum_s a_{t,s} r_s W_OV                    output-value associative memory
    f_t      = r_t W_F                                   feed-forward associative memory
    logits_t = (o_t + f_t) W_U

Fixed (not trained): ``W_E``, ``W_prev``, ``W_U``.  ``W_prev`` *is* the first layer: in a trained
Transformer, layer 1 learns a previous-token head whose output is a remapped embedding of the
previous token; fixing it isolates the question of interest (which of the second layer's memories
picks up which association) from the question of how the previous-token head forms.  ``W_U`` is
fixed as in the paper's toy model (and Bietti et al.), so that every learned matrix is a memory
``sum_i out_i in_i^T`` between fixed embeddings.  Learned, from zero: ``W_KQ``, ``W_OV`` and
``W_F``.  At zero the attention is uniform and every memory is empty, so the first gradient step
is the pure "signal" of each memory; ``W_KQ``'s gradient is exactly zero there (the attention
output is zero whatever the scores), so attention must first grow ``W_OV`` and only then learns
where to look.  By default (``ff="parallel"``) the attention and FF branches read the same
``r_t`` (the FF does not see the attention output), the simplest form of "both write to the same
logits"; ``ff="sequential"`` makes the FF read ``r_t + o_t`` as in a Transformer block
(``f_t = (r_t + o_t) W_F``), ``ff="none"`` removes it (``W_F`` stays 0, not trained).

Options that separate the size of the gradient signal from its noise (all off by
default): ``lr_scale`` (per-memory learning-rate factors, see :func:`equal_signal_lr_scale`),
``ov_gradient_batch`` (``W_OV``'s gradient from a large fresh batch every step) and
``ff_grad_noise`` (Gaussian noise along ``D_F`` added to ``W_F``'s gradient).

Embeddings are exactly orthonormal by default (``embeddings="orthonormal"``, needs
``d_model >= 2 * vocab``), which makes the closed forms exact; ``"gaussian"`` draws them
N(0, 1/d) (nearly orthonormal).

The directions that implement each association (unit Frobenius norm):

- ``D_F  ~ sum_{q in triggers} e(q) u(noise)^T``: FF maps a trigger to the noise token;
- ``D_OV ~ sum_v e(v) u(v)^T``: attention's value-output memory copies the attended token;
- ``D_KQ ~ sum_{q in triggers} e(q) p(q)^T``: a trigger query attends to the position whose
  previous token is that trigger, i.e. the token right after its earlier occurrence.

The *gradient signal* of a memory on a batch is ``-<grad_W L, D_W>`` (the first-order decrease
of the loss per unit step along ``D_W``); its mean over independent batches divided by its
standard deviation is the signal-to-noise ratio (:func:`gradient_snr`).  With orthonormal
embeddings and ``W_F = 0`` the FF signal of a batch is exactly (noise fraction of its
loss positions) - 1/V, times ``sqrt(k_triggers)`` normalisation (:func:`ff_signal_closed_form`).

The module is over 400 lines because it holds one system whole: the model, its adapter, the
gradient signals with their closed forms, and its training loop.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable, Literal

import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from mechtrunc._checks import check_choice, check_int, check_real
from mechtrunc._choices import MINIMAL_EMBEDDINGS, MINIMAL_FF, MINIMAL_MEMORIES, MINIMAL_OPTIMIZERS, OPTIMIZERS
from mechtrunc._progress import progress_bar
from mechtrunc.core.adapters import MatrixSite, ModelAdapter, adapt
from mechtrunc.core.interventions import Ablate, intervene
from mechtrunc.core.metrics import (
    bootstrap_draws, check_bootstrap, masked_cross_entropy, metrics_from_logits, percentile_interval, resample_counts,
)
from mechtrunc.core.prompts import PromptSet
from mechtrunc.core.runner import item_logits, run_items
from mechtrunc.tasks.recall import RecallBatch, RecallConfig, RecallTask
from mechtrunc.studies.dynamics.measures import induction_score, order_of_learning

__all__ = [
    "MinimalConfig", "MinimalModel", "MinimalAdapter", "copy_directions", "gradient_signals",
    "gradient_snr", "snr_sweep", "ff_signal_closed_form", "train_minimal", "MinimalResult", "EMBEDDINGS",
    "ov_signal_closed_form", "ov_entry_matrix", "ov_gradient_share", "ov_noise_components",
    "ov_noise_component", "OVNoiseRecorder", "equal_signal_lr_scale", "ov_batch_gradient", "signal_closed_forms",
    "ff_signal_std_at_init", "FF_WIRINGS",
]
FF_WIRINGS = MINIMAL_FF

EMBEDDINGS = MINIMAL_EMBEDDINGS
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class MinimalConfig:
    """Task, model and training options of the minimal model (saved as JSON via ``asdict``)."""

    # task (mechtrunc.tasks.RecallConfig)
    alpha: float = 0.5
    k: int = 1
    seq_len: int = 64
    fixed_triggers: bool = True
    bigrams: str = "shakespeare"
    vocab_size: int = 65  # only with bigrams="random"
    # model
    d_model: int = 160
    embeddings: str = "orthonormal"
    dtype: str = "float32"
    #: "parallel": the FF reads r_t; "sequential": it reads r_t + o_t (the attention output);
    #: "none": no FF (W_F stays exactly 0, it is not trained)
    ff: str = "parallel"
    # training
    optimizer: str = "sgd"
    lr: float = 2.5
    batch_size: int = 32
    steps: int = 300
    eval_every: int = 10
    test_size: int = 64
    snr_batches: int = 0  # > 0: gradient SNR over this many fresh batches at every evaluation
    seed: int = 0
    # separating the size of the gradient signal from its noise (defaults: off)
    #: per-memory learning-rate factors, e.g. {"W_F": 0.02}: memory W steps with lr * lr_scale[W]
    lr_scale: dict = field(default_factory=dict)
    #: > 0: W_OV's gradient at every step comes from this many fresh sequences (drawn only for it),
    #: not from the training batch: a near-population gradient for attention's first memory
    ov_gradient_batch: int = 0
    #: k > 0: add k * s * xi * D_F to W_F's gradient at every step (xi ~ N(0, 1), s = the natural
    #: std of the FF signal along D_F at initialisation, measured on 32 batches): the FF's SNR
    #: along its association falls by sqrt(1 + k^2), no other direction changes
    ff_grad_noise: float = 0.0

    def __post_init__(self) -> None:
        check_choice("embeddings", self.embeddings, EMBEDDINGS)
        check_choice("dtype", self.dtype, tuple(_DTYPES))
        if self.optimizer in OPTIMIZERS and self.optimizer not in MINIMAL_OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r} is not one the minimal model trains with (it has no "
                             f"weight decay); valid: {', '.join(MINIMAL_OPTIMIZERS)}")
        check_choice("optimizer", self.optimizer, MINIMAL_OPTIMIZERS)
        check_choice("ff", self.ff, MINIMAL_FF)
        if not isinstance(self.lr_scale, dict):
            raise ValueError(f"lr_scale must be a dict memory -> factor (memories: {', '.join(MINIMAL_MEMORIES)}), "
                             f"got {self.lr_scale!r}")
        scale = {}
        for name, v in self.lr_scale.items():
            check_choice("lr_scale memory", name, MINIMAL_MEMORIES)
            scale[name] = check_real(f"lr_scale[{name!r}]", v, 0, above=True)
        self.lr_scale = scale
        self.ov_gradient_batch = check_int("ov_gradient_batch", self.ov_gradient_batch, 0)
        self.ff_grad_noise = check_real("ff_grad_noise", self.ff_grad_noise, 0)
        if self.ff == "none" and (self.ff_grad_noise > 0 or "W_F" in self.lr_scale):
            raise ValueError("ff='none' has no FF to train: drop ff_grad_noise and lr_scale['W_F']")
        for name in ("d_model", "batch_size", "steps", "eval_every", "test_size"):
            setattr(self, name, check_int(name, getattr(self, name), 1))
        self.seed = check_int("seed", self.seed)
        self.snr_batches = check_int("snr_batches", self.snr_batches, 0)
        if self.snr_batches == 1:
            raise ValueError(f"snr_batches must be 0 (off) or an integer >= 2, got {self.snr_batches!r}")
        self.lr = check_real("lr", self.lr, 0, above=True)
        rc = self.recall_config()  # validates alpha, k, seq_len, vocabulary
        if self.embeddings == "orthonormal" and self.d_model < 2 * rc.d_vocab:
            raise ValueError(
                f"orthonormal embeddings need d_model >= 2 * vocabulary = {2 * rc.d_vocab}, got "
                f"d_model={self.d_model}; raise d_model or use embeddings='gaussian'"
            )

    def recall_config(self) -> RecallConfig:
        return RecallConfig(alpha=self.alpha, k=self.k, seq_len=self.seq_len, fixed_triggers=self.fixed_triggers,
                            bigrams=self.bigrams, vocab_size=self.vocab_size)

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------
class _Attention(nn.Module):
    def __init__(self, d: int, dtype: torch.dtype):
        super().__init__()
        self.W_KQ = nn.Parameter(torch.zeros(d, d, dtype=dtype))
        self.W_OV = nn.Parameter(torch.zeros(d, d, dtype=dtype))
        self.hook_attn_scores, self.hook_pattern, self.hook_z = HookPoint(), HookPoint(), HookPoint()

    def forward(self, r: Float[Tensor, "b p d"]) -> Float[Tensor, "b p d"]:
        p = r.shape[1]
        scores = (r @ self.W_KQ) @ r.transpose(1, 2)  # [b, q, k]
        causal = torch.ones(p, p, dtype=torch.bool, device=r.device).tril()
        scores = self.hook_attn_scores(scores.masked_fill(~causal, float("-inf")))
        pattern = self.hook_pattern(scores.softmax(-1))
        z = self.hook_z((pattern @ r).unsqueeze(2))  # [b, p, head=1, d]: the attended residual
        return z.squeeze(2) @ self.W_OV


class _FF(nn.Module):
    def __init__(self, d: int, dtype: torch.dtype):
        super().__init__()
        self.W_F = nn.Parameter(torch.zeros(d, d, dtype=dtype))

    def forward(self, r: Float[Tensor, "b p d"]) -> Float[Tensor, "b p d"]:
        return r @ self.W_F


class _Block(nn.Module):
    def __init__(self, d: int, dtype: torch.dtype, ff: str = "parallel"):
        super().__init__()
        self.attn, self.mlp = _Attention(d, dtype), _FF(d, dtype)
        self.ff = ff
        self.hook_resid_pre, self.hook_attn_out = HookPoint(), HookPoint()
        self.hook_mlp_out, self.hook_resid_post = HookPoint(), HookPoint()
        self.hook_resid_mid = HookPoint()

    def forward(self, r):
        r = self.hook_resid_pre(r)
        if self.ff == "sequential":  # the FF reads r_t + o_t (resid_mid), as in a Transformer block
            mid = self.hook_resid_mid(r + self.hook_attn_out(self.attn(r)))
            return self.hook_resid_post(mid + self.hook_mlp_out(self.mlp(mid)))
        # parallel branches: the FF reads r_t, not the attention output (ff="none": W_F stays 0)
        return self.hook_resid_post(r + self.hook_attn_out(self.attn(r)) + self.hook_mlp_out(self.mlp(r)))


class MinimalModel(HookedRootModule):
    """The minimal in-context model (see the module docstring).  Learned: ``blocks[0].attn.W_KQ``,
    ``blocks[0].attn.W_OV``, ``blocks[0].mlp.W_F`` (all start at zero).  Fixed buffers: ``W_E``,
    ``W_prev``, ``W_U``.  Hooks carry TransformerLens names (``hook_embed``, ``hook_prev_embed``,
    ``blocks.0.hook_resid_pre``, ``blocks.0.attn.hook_pattern``, ``blocks.0.hook_attn_out``,
    ``blocks.0.hook_mlp_out``, ...), so ``mt.Ablate("mlp", layer=0)`` removes the FF and
    ``mt.Truncate("mlp.W_out", layer=0, ...)`` truncates ``W_F`` (see :class:`MinimalAdapter`).

    The residual ``r_t`` is the sum of the current and previous token embeddings, the logits are
    ``o_t + f_t`` read through ``W_U``: there is no direct path from ``r_t`` to the logits (it
    would be a fixed, untrained bigram-like bias that neither memory controls).
    """

    def __init__(self, cfg: MinimalConfig | None = None, **overrides):
        super().__init__()
        cfg = cfg or MinimalConfig(**overrides)
        self.cfg = cfg
        rc = cfg.recall_config()
        V, d, dt = rc.d_vocab, cfg.d_model, cfg.torch_dtype
        g = torch.Generator().manual_seed(cfg.seed)
        if cfg.embeddings == "orthonormal":
            Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
            Q2, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
            W_E, W_prev = Q[:, :V].T, Q[:, V : 2 * V].T
            # outputs: their own orthonormal basis (W_U's columns are orthonormal)
            W_U = Q2[:, :V]
        else:
            W_E = torch.randn(V, d, generator=g, dtype=torch.float64) / math.sqrt(d)
            W_prev = torch.randn(V, d, generator=g, dtype=torch.float64) / math.sqrt(d)
            W_U = torch.randn(d, V, generator=g, dtype=torch.float64) / math.sqrt(d)
        self.register_buffer("W_E", W_E.to(dt).contiguous())
        self.register_buffer("W_prev", W_prev.to(dt).contiguous())
        self.register_buffer("W_U", W_U.to(dt).contiguous())
        self.blocks = nn.ModuleList([_Block(d, dt, cfg.ff)])
        self.hook_embed, self.hook_prev_embed = HookPoint(), HookPoint()
        self.d_vocab = V
        self.setup()

    def forward(self, tokens: Int[Tensor, "b p"]) -> Float[Tensor, "b p vocab"]:
        prev = F.pad(self.W_prev[tokens[:, :-1]], (0, 0, 1, 0))  # position 0 has no previous token
        r = self.hook_embed(self.W_E[tokens]) + self.hook_prev_embed(prev)
        # only the two memories write to the logits (no direct path from r_t)
        return (self.blocks[0](r) - r) @ self.W_U

    @property
    def mechtrunc_adapter(self):  # read by mechtrunc.core.adapters.adapt
        return MinimalAdapter


class MinimalAdapter(ModelAdapter):
    """Adapter of :class:`MinimalModel` for the shared interventions: one layer (0), one head.
    Matrices: ``mlp.W_out`` is the FF memory ``W_F`` (it writes to ``blocks.0.hook_mlp_out``),
    ``attn.W_O`` is the output-value memory ``W_OV`` (``blocks.0.hook_attn_out``).  ``W_KQ`` is
    a bilinear form, not a map into the residual stream, and is not exposed."""

    kind = "minimal"
    matrices = ("mlp.W_out", "attn.W_O")

    def __init__(self, model: MinimalModel):
        super().__init__(model)
        self.n_layers, self.n_heads = 1, 1
        self.d_model = self.d_head = model.cfg.d_model
        self.d_vocab = model.d_vocab

    def _matrix(self, name: str, layer: int) -> MatrixSite:
        block = self.model.blocks[layer]
        ident = lambda t: t
        if name == "mlp.W_out":
            return MatrixSite(layer, name, block.mlp.W_F, ident, ident, None, self.out_hook(name, layer))
        if name == "attn.W_O":
            return MatrixSite(layer, name, block.attn.W_OV, ident, ident, None, self.out_hook(name, layer))
        raise ValueError(f"the minimal model has matrices 'mlp.W_out' (W_F) and 'attn.W_O' (W_OV), not {name!r}")

    def W_U(self) -> Tensor:
        return self.model.W_U.detach()

    def has_pos_embed(self) -> bool:
        return False

    def mlp_input_site(self, layer: int) -> str:
        """The FF reads ``r_t`` (``resid_pre``) in parallel blocks, ``r_t + o_t`` in sequential ones."""
        return "resid_mid" if self.model.cfg.ff == "sequential" else "resid_pre"

    # the attention has no query/key/value projection to read through: the FF is the one reader
    residual_readers = ("mlp",)
    # the logits read only the two memories' outputs (no direct path from the embeddings): its
    # edges are head -> FF and each memory -> logits
    embed_writes_residual = False

    def _residual_reader(self, reader, layer):
        # the FF is x @ W_F, seen at its output
        return self.hook_name("mlp_out", layer), self.matrix("mlp.W_out", layer).get().detach()


def _trigger_ids(model: MinimalModel, task: RecallTask) -> Tensor:
    if task.config.fixed_triggers:
        return task.fixed_triggers.cpu()
    return torch.tensor([v for v in range(model.d_vocab) if v != task.config.noise_id])


def copy_directions(model: MinimalModel, task: RecallTask) -> dict[str, Float[Tensor, "d d"]]:
    """Unit-Frobenius-norm directions ``{"W_F": D_F, "W_OV": D_OV, "W_KQ": D_KQ}`` that implement
    the noise association, the copy of the attended token, and attention to the token after the
    trigger's earlier occurrence (see the module docstring)."""
    trig = _trigger_ids(model, task).to(model.W_E.device)
    E, P, U = model.W_E, model.W_prev, model.W_U
    noise = task.config.noise_id
    D = {
        "W_F": E[trig].sum(0)[:, None] * U[:, noise][None, :],
        "W_OV": E.T @ U.T,  # sum_v e(v) u(v)^T
        "W_KQ": E[trig].T @ P[trig],  # sum_q e(q) p(q)^T
    }
    return {k: v / v.norm() for k, v in D.items()}


def _params(model: MinimalModel) -> dict[str, nn.Parameter]:
    b = model.blocks[0]
    return {"W_F": b.mlp.W_F, "W_OV": b.attn.W_OV, "W_KQ": b.attn.W_KQ}


def _batch_gradients(model: MinimalModel, batch: RecallBatch) -> tuple[float, dict[str, Tensor]]:
    """The training loss of one batch and its gradient for each learned memory (``.grad`` untouched)."""
    params = _params(model)
    device = model.W_E.device
    if not bool(batch.loss_mask.any()):
        raise ValueError("the batch has no repeated trigger (no loss position); use longer sequences or a larger batch")
    logits = model(batch.inputs.to(device))
    loss = masked_cross_entropy(logits, batch.targets.to(device), batch.loss_mask.to(device))
    grads = torch.autograd.grad(loss, list(params.values()))
    return float(loss.detach()), dict(zip(params, grads))


def gradient_signals(model: MinimalModel, batch: RecallBatch, directions: dict[str, Tensor]) -> dict[str, float]:
    """One batch's gradient signals: for each learned memory ``W``, ``signal_W = -<grad L, D_W>``
    (``D_W`` of unit norm, so this is the loss decrease per unit step along ``D_W``) and
    ``gradnorm_W = ||grad L||_F``; ``L`` is the training loss (mean cross-entropy at repeated
    triggers, noisy targets).  Leaves the model's ``.grad`` untouched."""
    loss, grads = _batch_gradients(model, batch)
    out = {"loss": loss}
    for name, g in grads.items():
        out[f"signal_{name}"] = float(-(g * directions[name]).sum())
        out[f"gradnorm_{name}"] = float(g.norm())
    return out


def ff_signal_closed_form(batch: RecallBatch, n_triggers: int, vocab: int) -> float:
    """The FF gradient signal at ``W = 0`` with orthonormal embeddings, in closed form: at zero
    the softmax is uniform, so ``-grad_{W_F} L = mean_items r_i (e_{y_i} - 1/V)^T W_U^T`` and its
    projection on ``D_F`` is ``(noise fraction of the batch's loss targets - 1/V) / sqrt(K)`` when
    the trigger occurrences are among ``K`` trigger embeddings (``r_i . e(q) = 1`` for the
    trigger at item ``i``)."""
    y = batch.targets[batch.loss_mask]
    return float(((y == batch.noise_id).double().mean() - 1.0 / vocab) / math.sqrt(n_triggers))


def _full_snr(G: Tensor) -> float:
    """``||mean g|| / sqrt(sum ||g - mean g||^2 / (n - 1))`` over the rows of ``G [n, ...]``."""
    m = G.mean(0)
    var = float(((G - m) ** 2).sum()) / (G.shape[0] - 1)
    return float(m.norm()) / math.sqrt(var) if var > 0 else float("nan")


def gradient_snr(
    model: MinimalModel, task: RecallTask, batch_size: int, n_batches: int = 16, seed: int = 0,
    n_boot: int = 0, level: float = 0.95,
) -> pd.DataFrame:
    """Gradient signals of ``n_batches`` independent batches (seeds ``seed .. seed + n - 1`` mixed
    by a fixed stream): one row per memory with ``mean``, ``std`` (unbiased), ``snr = mean/std``
    (along the memory's direction ``D_W``), ``full_snr`` (the whole gradient's:
    ``||E g|| / sqrt(E ||g - E g||^2)``, unbiased), ``mean_gradnorm`` and ``n_batches``.  With
    ``n_boot > 0``, percentile bootstrap intervals over the batches (seeded, ``level``):
    ``snr_low, snr_high, full_snr_low, full_snr_high`` and ``n_boot``."""
    if n_batches < 2:
        raise ValueError(f"n_batches must be >= 2 to estimate a standard deviation, got {n_batches}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_boot, level = check_bootstrap(n_boot, level, allow_zero=True)
    D = copy_directions(model, task)
    g = torch.Generator().manual_seed(1_000_003 * seed + 17)
    signals: dict[str, list[float]] = {name: [] for name in D}
    norms: dict[str, list[float]] = {name: [] for name in D}
    full: dict[str, list[Tensor]] = {name: [] for name in D}
    for _ in range(n_batches):
        _, grads = _batch_gradients(model, task.sample(batch_size, generator=g))
        for name, gr in grads.items():
            signals[name].append(float(-(gr * D[name]).sum()))
            norms[name].append(float(gr.norm()))
            full[name].append(gr.detach().double().flatten())
    idx = bootstrap_draws(n_batches, n_boot, seed) if n_boot else None
    out = []
    for name in ("W_F", "W_OV", "W_KQ"):
        s = pd.Series(signals[name])
        std = float(s.std(ddof=1))
        G = torch.stack(full[name])
        row = {"memory": name, "mean": float(s.mean()), "std": std,
               "snr": float(s.mean()) / std if std > 0 else float("nan"), "full_snr": _full_snr(G),
               "mean_gradnorm": float(pd.Series(norms[name]).mean()), "n_batches": n_batches,
               "batch_size": batch_size}
        if n_boot:
            sig = torch.tensor(signals[name], dtype=torch.float64)[idx]  # [n_boot, n_batches]
            sd = sig.std(1, unbiased=True)
            snr_b = torch.where(sd > 0, sig.mean(1) / sd, torch.full_like(sd, float("nan")))
            # every resample's full SNR at once: counts [n_boot, n] of each batch in the resample
            counts = resample_counts(idx)
            M = counts @ G / n_batches  # resampled mean gradients
            sq = counts @ (G * G).sum(1)  # sum of squared norms over the resample
            var = (sq - n_batches * (M * M).sum(1)) / (n_batches - 1)
            full_b = torch.where(var > 0, M.norm(dim=1) / var.clamp_min(1e-300).sqrt(),
                                 torch.full_like(var, float("nan")))
            for key, vals in (("snr", snr_b), ("full_snr", full_b)):
                lo, hi = percentile_interval(vals, level, skip_nan=True)  # a resample with no spread is left out
                row[f"{key}_low"], row[f"{key}_high"] = float(lo), float(hi)
            row["n_boot"] = n_boot
        out.append(row)
    return pd.DataFrame(out)


def snr_sweep(
    base: MinimalConfig | None = None, seq_len=(32, 64, 128, 256), alpha=(None,), batch_size=(None,),
    vocab_size=(None,), n_batches: int = 16, seed: int = 0, state: Literal["init", "copy_ov"] = "init",
) -> pd.DataFrame:
    """Gradient SNR at initialisation (``state="init"``: every memory zero) over a grid of
    sequence length, alpha, batch size and vocabulary size (``None`` = ``base``'s value; a
    vocabulary size switches to a random Markov chain of that size).  ``state="copy_ov"`` sets
    ``W_OV`` to the unit copy direction first, so ``W_KQ`` has a non-zero signal (attention's
    second stage).  Tidy: one row per (grid point, memory)."""
    check_choice("state", state, ("init", "copy_ov"), quote=True)
    base = base or MinimalConfig()
    rows = []
    for T in seq_len:
        for a in alpha:
            for B in batch_size:
                for Vs in vocab_size:
                    over = {"seq_len": T if T is not None else base.seq_len}
                    if a is not None:
                        over["alpha"] = a
                    if Vs is not None:
                        over.update(bigrams="random", vocab_size=int(Vs))
                        if base.embeddings == "orthonormal":
                            over["d_model"] = max(base.d_model, 2 * int(Vs))
                    cfg = MinimalConfig(**{**asdict(base), **over})
                    model = MinimalModel(cfg)
                    task = RecallTask(cfg.recall_config())
                    if state == "copy_ov":
                        with torch.no_grad():
                            model.blocks[0].attn.W_OV.copy_(copy_directions(model, task)["W_OV"])
                    bs = int(B) if B is not None else cfg.batch_size
                    df = gradient_snr(model, task, bs, n_batches=n_batches, seed=seed)
                    rows.append(df.assign(seq_len=cfg.seq_len, alpha=cfg.alpha, vocab=cfg.recall_config().d_vocab,
                                          d_model=cfg.d_model, state=state))
    return pd.concat(rows, ignore_index=True)


def ov_signal_closed_form(batch: RecallBatch, vocab: int) -> float:
    """The OV gradient signal at ``W = 0`` with orthonormal embeddings, in closed form: under
    uniform attention ``-grad_{W_OV} L = mean_i rbar_i^T (e_{y_i} - 1/V) W_U^T`` and its
    projection on ``D_OV = sum_v e(v) u(v)^T / sqrt(V)`` is the mean over loss items of
    (fraction of the tokens ``z_s, s <= t`` equal to the target ``y`` - 1/V) / sqrt(V).  Needs
    only the tokens (cheap to average over many batches: the expectation numerically)."""
    rows, pos = batch.loss_mask.nonzero(as_tuple=True)
    y = batch.targets[rows, pos]
    seen = batch.inputs[rows] == y[:, None]  # [item, p]
    upto = torch.arange(batch.inputs.shape[1])[None, :] <= pos[:, None]
    frac = (seen & upto).double().sum(1) / (pos + 1).double()
    return float((frac - 1.0 / vocab).mean() / math.sqrt(vocab))


def ov_entry_matrix(model: MinimalModel, W: Tensor | None = None) -> Float[Tensor, "two_vocab vocab"]:
    """``W_OV`` (or ``W``) in the embeddings' basis: rows ``e(v)`` (first ``V``) then ``p(v)``,
    columns ``u(w)``: entry ``[v, w]`` is ``e(v) W u(w)``; ``[trigger, noise]`` is the
    trigger->noise entry, the diagonal of the first ``V`` rows the copy entries."""
    W = model.blocks[0].attn.W_OV if W is None else W
    B = torch.cat([model.W_E, model.W_prev]).to(W.dtype)
    return (B @ W.detach() @ model.W_U.to(W.dtype)).detach()


def ov_gradient_share(
    model: MinimalModel, task: RecallTask, batch_size: int, n_batches: int = 64, seed: int = 0,
) -> dict[str, float]:
    """The mean ``W_OV`` gradient over ``n_batches`` independent batches, in the embeddings'
    basis: ``entry`` = its (negated) trigger->noise entry, ``share`` = that entry's square over the
    mean gradient's squared Frobenius norm, ``share_of_token_rows`` = over the squared norm of
    its token-embedding rows ``e(v)`` only (the rows ``p(v)`` left out), ``copy_share`` = the
    copy diagonal's share,
    ``top_entry_is_trigger_noise`` (bool)."""
    g = torch.Generator().manual_seed(1_000_003 * seed + 29)
    G = None
    for _ in range(n_batches):
        gr = _batch_gradients(model, task.sample(batch_size, generator=g))[1]["W_OV"].double()
        G = gr if G is None else G + gr
    G = -G / n_batches
    M = ov_entry_matrix(model, G)
    trig = _trigger_ids(model, task)
    noise = task.config.noise_id
    total = float(G.pow(2).sum())
    entry = M[trig, noise]
    V = model.d_vocab
    top = int(M.abs().argmax())
    return {"entry": float(entry.mean()), "share": float(entry.pow(2).sum()) / total,
            "share_of_token_rows": float(entry.pow(2).sum()) / float(M[:V].pow(2).sum()),
            "copy_share": float(M[:V].diagonal().pow(2).sum()) / total,
            "top_entry_is_trigger_noise": bool(top // V in trig.tolist() and top % V == noise), "n_batches": n_batches}


@torch.no_grad()
def ov_noise_components(model: MinimalModel, prompts: PromptSet) -> pd.DataFrame:
    """Per singular component ``i`` of ``W_OV = sum_i s_i a_i b_i^T`` (0 = largest): ``sigma``,
    ``sigma_over_median`` (median of the top ``V`` singular values: ``W_OV``'s output lies in
    the ``V``-dimensional span of ``W_U``, so it has rank <= V), and its direct push at the
    prompts' items (attended residual ``z`` times ``s_i a_i b_i^T W_U``) on logit(noise) minus
    the mean other logit (``noise_push``, ``noise_share`` of the total) and on logit(answer)
    minus the mean other logit (``answer_push``).  Components sum exactly to the attention's
    contribution."""
    adapter = adapt(model)
    store = {}
    with adapter.hooked(adapter.hook_name("z", 0), lambda z: store.__setitem__("z", z.detach())):
        adapter.forward(prompts.tokens.to(adapter.device))
    z = store["z"][:, :, 0][prompts.rows, prompts.pos].double()  # [item, d]
    W = model.blocks[0].attn.W_OV.detach().double()
    U, S, Vh = torch.linalg.svd(W)
    WU = model.W_U.double()
    V = model.d_vocab
    noise = int(prompts.competitors[0, 0])

    def margin(cols: Tensor, target: Tensor) -> Tensor:  # [item, comp]: logit(target) - mean others
        L = cols  # [item, comp, V]
        tgt = L.gather(2, target[:, None, None].expand(-1, L.shape[1], 1)).squeeze(2)
        return tgt - (L.sum(2) - tgt) / (V - 1)

    coef = (z @ U) * S  # [item, comp]
    logits = coef[:, :, None] * (Vh @ WU)[None]  # [item, comp, V]
    n_push = margin(logits, torch.full((z.shape[0],), noise)).mean(0)
    a_push = margin(logits, prompts.answer.long()).mean(0)
    med = float(S[:V].median())
    return pd.DataFrame({"component": range(len(S)), "sigma": S.numpy(), "sigma_over_median": (S / med).numpy(),
                         "noise_push": n_push.numpy(), "noise_share": (n_push / n_push.sum()).numpy(),
                         "answer_push": a_push.numpy()})


def ov_noise_component(comp: pd.DataFrame) -> int | None:
    """The noise component of :func:`ov_noise_components`' table: the index (0 = largest singular
    value) of the component with the largest (signed) ``noise_push``; ``None`` while ``W_OV`` is
    exactly 0 (no component exists)."""
    if not (comp["sigma"] > 0).any():
        return None
    return int(comp.loc[comp["noise_push"].idxmax(), "component"])


class OVNoiseRecorder:
    """A ``callback`` for :func:`train_minimal`: at every evaluation it finds ``W_OV``'s noise
    component on ``prompts`` (:func:`ov_noise_component`; pass a selection batch,
    :func:`mechtrunc.studies.dynamics.selection_set`, to keep it off the test set) and adds to the
    history row ``ov_noise_component`` (its index, 0 = the top component; NaN while ``W_OV = 0``),
    ``ov_noise_share`` and ``ov_noise_sigma_over_median`` (its share of attention's noise push,
    its singular value over the median), ``ov_top_noise_share`` and ``ov_top_sigma_over_median``
    (the same for component 0) and ``ov_noise_total`` (attention's noise push on ``prompts``)."""

    def __init__(self, prompts: PromptSet):
        self.prompts = prompts

    def __call__(self, step: int, model: MinimalModel) -> dict:
        comp = ov_noise_components(model, self.prompts)
        idx = ov_noise_component(comp)
        nan = float("nan")
        pick = (lambda col: nan) if idx is None else (lambda col: float(comp.loc[idx, col]))
        top = (lambda col: nan) if idx is None else (lambda col: float(comp.loc[0, col]))
        return {"ov_noise_component": nan if idx is None else float(idx), "ov_noise_share": pick("noise_share"),
                "ov_noise_sigma_over_median": pick("sigma_over_median"), "ov_top_noise_share": top("noise_share"),
                "ov_top_sigma_over_median": top("sigma_over_median"),
                "ov_noise_total": float(comp["noise_push"].sum())}


def signal_closed_forms(cfg: MinimalConfig, n_batches: int = 2000, batch_size: int | None = None,
                        seed: int = 0) -> dict[str, float]:
    """The mean and std of the FF and OV signals at initialisation from their closed forms
    (orthonormal embeddings): ``ff_mean = alpha (1 - 1/V) / sqrt(K)`` (E[noise fraction] =
    alpha + (1 - alpha)/V, the answer being uniform); ``ff_std = sqrt(p (1 - p) E[1/n]) / sqrt(K)``,
    the binomial std of a fraction of ``n`` independent items with ``p = alpha + (1 - alpha)/V``
    (``E[1/n]`` over ``n_batches`` sampled batches, ``n`` = loss items per batch); ``ov_mean``,
    ``ov_std``: mean and std over ``n_batches`` sampled batches of :func:`ov_signal_closed_form`
    (no closed form of its expectation: it depends on the chain's token frequencies; this is
    its expectation computed numerically, from tokens only).  ``K`` = number of triggers."""
    task = RecallTask(cfg.recall_config())
    rc = task.config
    V = rc.d_vocab
    K = len(task.fixed_triggers) if rc.fixed_triggers else V - 1
    bs = batch_size or cfg.batch_size
    g = torch.Generator().manual_seed(1_000_003 * seed + 31)
    inv_n, ov = [], []
    for _ in range(n_batches):
        b = task.sample(bs, generator=g)
        inv_n.append(1.0 / int(b.loss_mask.sum()))
        ov.append(ov_signal_closed_form(b, V))
    p = rc.alpha + (1 - rc.alpha) / V
    ov_t = torch.tensor(ov, dtype=torch.float64)
    return {"ff_mean": rc.alpha * (1 - 1 / V) / math.sqrt(K),
            "ff_std": math.sqrt(p * (1 - p) * sum(inv_n) / n_batches) / math.sqrt(K),
            "ov_mean": float(ov_t.mean()), "ov_std": float(ov_t.std()), "n_batches": n_batches}


def equal_signal_lr_scale(
    cfg: MinimalConfig, n_batches: int = 64, scale: Literal["W_F", "W_OV"] = "W_F", seed: int = 0,
) -> dict[str, float]:
    """Per-memory learning-rate factors (``MinimalConfig.lr_scale``) that make the first SGD
    step's mean movement along ``D_F`` and ``D_OV`` equal: the two mean signals at
    initialisation are measured on ``n_batches`` batches (``gradient_snr``) and ``scale`` gets
    the factor ``mean(other) / mean(scale)`` (``"W_F"``: the FF slowed down; ``"W_OV"``:
    attention's value memory sped up)."""
    check_choice("scale", scale, ("W_F", "W_OV"), quote=True)
    model, task = MinimalModel(cfg), RecallTask(cfg.recall_config())
    m = gradient_snr(model, task, cfg.batch_size, n_batches, seed=seed).set_index("memory")["mean"]
    other = "W_OV" if scale == "W_F" else "W_F"
    return {scale: float(m[other] / m[scale])}


# ----------------------------------------------------------------------------------------
# training the minimal model
# ----------------------------------------------------------------------------------------
@dataclass
class MinimalResult:
    model: MinimalModel
    history: pd.DataFrame
    config: MinimalConfig
    seconds: float
    order: dict = field(default_factory=dict)


def _noise_margin(logits: Tensor, noise: int) -> Tensor:
    """Per item: logit(noise) - mean logit of the other tokens."""
    others = (logits.sum(-1) - logits[:, noise]) / (logits.shape[-1] - 1)
    return logits[:, noise] - others


def _evaluate_minimal(model: MinimalModel, prompts: PromptSet, clean: RecallBatch,
                      noisy: PromptSet | None = None) -> dict[str, float]:
    row, margin = {}, {}
    noise = clean.noise_id
    for name, ivs in (("full", ()), ("ff_removed", (Ablate("mlp", layer=0),)), ("attn_removed", (Ablate("attn", layer=0),))):
        logits = item_logits(model, prompts, *ivs, batch_size=len(prompts.tokens))
        m = metrics_from_logits(logits, prompts)
        row.update({f"{name}_accuracy": m["accuracy"], f"{name}_p_noise": m["p_noise"],
                    f"{name}_p_answer": m["p_answer"]})
        row[f"{name}_argmax_noise"] = float((logits.argmax(-1) == noise).double().mean())
        margin[name] = _noise_margin(logits.double(), noise)
    # each branch's push on logit(noise) - mean other logit at the clean test's repeated triggers
    # (exact for the parallel FF; sequential: the total effect of removing the branch)
    row["attn_noise_push"] = float((margin["full"] - margin["attn_removed"]).mean())
    row["ff_noise_push"] = float((margin["full"] - margin["ff_removed"]).mean())
    row["induction_score"] = induction_score(model, clean, layer=0)
    if noisy is not None:  # the training distribution: P(noise) should approach alpha there
        m = metrics_from_logits(item_logits(model, noisy, batch_size=len(noisy.tokens)), noisy)
        row["noisy_p_noise"] = m["p_noise"]
    return row


def _optimizer(cfg: MinimalConfig, model: MinimalModel) -> torch.optim.Optimizer:
    """SGD or Adam on the learned memories (``ff="none"``: W_F is not trained), with
    ``lr * lr_scale[W]`` per memory when ``lr_scale`` is given."""
    params = _params(model)
    if cfg.ff == "none":
        params.pop("W_F")
    make = torch.optim.SGD if cfg.optimizer == "sgd" else torch.optim.Adam
    if not cfg.lr_scale:
        return make(list(params.values()), lr=cfg.lr)
    return make([{"params": [p], "lr": cfg.lr * cfg.lr_scale.get(n, 1.0)} for n, p in params.items()], lr=cfg.lr)


def ov_batch_gradient(model: MinimalModel, batch: RecallBatch) -> Float[Tensor, "d d"]:
    """The gradient of the training loss on ``batch`` for ``W_OV`` only (``ov_gradient_batch``
    draws a large fresh batch for it at every step)."""
    return _batch_gradients(model, batch)[1]["W_OV"]


def ff_signal_std_at_init(cfg: MinimalConfig, n_batches: int = 32) -> float:
    """The natural std of the FF signal along ``D_F`` at initialisation (``n_batches`` batches of
    ``cfg.batch_size``, seeded by ``cfg.seed``): the scale of ``ff_grad_noise``."""
    model, task = MinimalModel(cfg), RecallTask(cfg.recall_config())
    df = gradient_snr(model, task, cfg.batch_size, n_batches, seed=cfg.seed + 40_000).set_index("memory")
    return float(df.loc["W_F", "std"])


def train_minimal(cfg: MinimalConfig | None = None, progress: bool = False, callback=None) -> MinimalResult:
    """Train the minimal model on noisy recall (SGD, or Adam, on the three memories from zero).

    History (one row per evaluation, ``step`` 0 = initialisation): clean-test ``full_*``,
    ``ff_removed_*`` (FF output zeroed with ``mt.Ablate("mlp", layer=0)``) and ``attn_removed_*``
    metrics (``accuracy``, ``p_noise``, ``p_answer``, ``argmax_noise``: the fraction of items
    whose argmax is the noise token), ``attn_noise_push`` / ``ff_noise_push`` (each branch's
    push on logit(noise) minus the mean other logit), ``ov_trigger_noise`` / ``ov_copy_mean``
    (W_OV's trigger->noise entry and mean copy entry, :func:`ov_entry_matrix`),
    ``noisy_p_noise`` (the full model's P(noise) on held-out sequences of the training
    distribution), ``induction_score``, the gradient signals of the step's training batch
    (``signal_W_F`` ...: of the gradient actually applied, i.e. after ``ov_gradient_batch`` /
    ``ff_grad_noise``) and, with ``snr_batches``, the SNR over that many fresh batches
    (``snr_W_F`` ...).  ``callback(step, model) -> dict`` (e.g. :class:`OVNoiseRecorder`), called
    at every evaluation, adds its entries to the row (it must not train the model; it does not
    change the other columns).  ``ff="none"``: W_F is not trained and stays exactly 0.  Seeded:
    the same config gives the same history.  ``progress`` shows progress over the steps."""
    cfg = cfg or MinimalConfig()
    torch.manual_seed(cfg.seed)
    task = RecallTask(cfg.recall_config())
    model = MinimalModel(cfg)
    clean = task.test_set(cfg.test_size, seed=cfg.seed + 10_000)
    prompts = clean.to_prompts()
    noisy = task.sample(cfg.test_size, seed=cfg.seed + 30_000).to_prompts(clean=False)
    D = copy_directions(model, task)
    trig = _trigger_ids(model, task)
    opt = _optimizer(cfg, model)
    gen = torch.Generator().manual_seed(cfg.seed)
    gen_ov = torch.Generator().manual_seed(cfg.seed + 60_000) if cfg.ov_gradient_batch else None
    gen_noise = torch.Generator().manual_seed(cfg.seed + 50_000) if cfg.ff_grad_noise else None
    noise_scale = cfg.ff_grad_noise * ff_signal_std_at_init(cfg) if cfg.ff_grad_noise else 0.0
    rows: list[dict] = []
    t0 = time.perf_counter()

    def record(step: int, sig: dict) -> None:
        model.eval()
        with torch.no_grad():
            row = {"step": step, **_evaluate_minimal(model, prompts, clean, noisy)}
            M = ov_entry_matrix(model)
            V = model.d_vocab
            row["ov_trigger_noise"] = float(M[trig, task.config.noise_id].mean())
            row["ov_copy_mean"] = float(M[:V].diagonal().mean())
            if callback is not None:
                row.update(callback(step, model))
        row.update({k: v for k, v in sig.items()})
        if cfg.snr_batches:
            snr = gradient_snr(model, task, cfg.batch_size, cfg.snr_batches, seed=cfg.seed + 7919 * (step + 1))
            for r in snr.itertuples():
                row[f"snr_{r.memory}"] = r.snr
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)

    sig0 = gradient_signals(model, task.sample(cfg.batch_size, seed=cfg.seed + 20_000), D)
    record(0, sig0)
    params = _params(model)
    bar = progress_bar(cfg.steps, "minimal", "step", enabled=progress)
    for step in range(1, cfg.steps + 1):
        batch = task.sample(cfg.batch_size, generator=gen)
        logits = model(batch.inputs)
        loss = masked_cross_entropy(logits, batch.targets, batch.loss_mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.ov_gradient_batch:
            params["W_OV"].grad = ov_batch_gradient(model, task.sample(cfg.ov_gradient_batch, generator=gen_ov))
        if cfg.ff_grad_noise:
            xi = torch.randn((), generator=gen_noise, dtype=torch.float64)
            params["W_F"].grad.add_(D["W_F"], alpha=-float(noise_scale * xi))  # signal = -<g, D>: +s xi
        sig = {"loss": float(loss.detach())}
        for name, p in params.items():
            sig[f"signal_{name}"] = float(-(p.grad * D[name]).sum())
            sig[f"gradnorm_{name}"] = float(p.grad.norm())
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            record(step, sig)
        bar.update(1)
    bar.close()
    model.eval()
    history = pd.DataFrame(rows)
    return MinimalResult(model=model, history=history, config=cfg, seconds=time.perf_counter() - t0,
                         order=order_of_learning(history, cfg.alpha))
