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
where to look.  The attention and FF branches read the same ``r_t`` in parallel (the FF does not
see the attention output), the simplest form of "both write to the same logits".

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
from mechtrunc._choices import MINIMAL_EMBEDDINGS, MINIMAL_OPTIMIZERS
from mechtrunc.adapters import MatrixSite, ModelAdapter, adapt
from mechtrunc.interventions import Ablate, intervene
from mechtrunc.metrics import masked_cross_entropy, metrics_from_logits
from mechtrunc.prompts import PromptSet
from mechtrunc.runner import item_logits, run_items
from mechtrunc.tasks.recall import RecallBatch, RecallConfig, RecallTask
from mechtrunc.dynamics.measures import induction_score, order_of_learning

__all__ = [
    "MinimalConfig", "MinimalModel", "MinimalAdapter", "copy_directions", "gradient_signals",
    "gradient_snr", "snr_sweep", "ff_signal_closed_form", "train_minimal", "MinimalResult", "EMBEDDINGS",
]

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
    # training
    optimizer: str = "sgd"
    lr: float = 2.5
    batch_size: int = 32
    steps: int = 300
    eval_every: int = 10
    test_size: int = 64
    snr_batches: int = 0  # > 0: gradient SNR over this many fresh batches at every evaluation
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("embeddings", self.embeddings, EMBEDDINGS)
        check_choice("dtype", self.dtype, tuple(_DTYPES))
        check_choice("optimizer", self.optimizer, MINIMAL_OPTIMIZERS)
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
    def __init__(self, d: int, dtype: torch.dtype):
        super().__init__()
        self.attn, self.mlp = _Attention(d, dtype), _FF(d, dtype)
        self.hook_resid_pre, self.hook_attn_out = HookPoint(), HookPoint()
        self.hook_mlp_out, self.hook_resid_post = HookPoint(), HookPoint()

    def forward(self, r):
        r = self.hook_resid_pre(r)
        # parallel branches: the FF reads r_t, not the attention output
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
        self.blocks = nn.ModuleList([_Block(d, dt)])
        self.hook_embed, self.hook_prev_embed = HookPoint(), HookPoint()
        self.d_vocab = V
        self.setup()

    def forward(self, tokens: Int[Tensor, "b p"]) -> Float[Tensor, "b p vocab"]:
        prev = F.pad(self.W_prev[tokens[:, :-1]], (0, 0, 1, 0))  # position 0 has no previous token
        r = self.hook_embed(self.W_E[tokens]) + self.hook_prev_embed(prev)
        # only the two memories write to the logits (no direct path from r_t)
        return (self.blocks[0](r) - r) @ self.W_U

    @property
    def mechtrunc_adapter(self):  # read by mechtrunc.adapters.adapt
        return MinimalAdapter


class MinimalAdapter(ModelAdapter):
    """Adapter of :class:`MinimalModel` for the shared interventions: one layer (0), one head.
    Matrices: ``mlp.W_out`` is the FF memory ``W_F`` (it writes to ``blocks.0.hook_mlp_out``),
    ``attn.W_O`` is the output-value memory ``W_OV`` (``blocks.0.hook_attn_out``).  ``W_KQ`` is
    a bilinear form, not a map into the residual stream, and is not exposed."""

    kind = "minimal"

    def __init__(self, model: MinimalModel):
        super().__init__(model)
        self.n_layers, self.n_heads = 1, 1
        self.d_model = self.d_head = model.cfg.d_model
        self.d_vocab = model.d_vocab

    def _matrix(self, name: str, layer: int) -> MatrixSite:
        block = self.model.blocks[layer]
        ident = lambda t: t
        if name == "mlp.W_out":
            return MatrixSite(layer, name, block.mlp.W_F, ident, ident, None, f"blocks.{layer}.hook_mlp_out")
        if name == "attn.W_O":
            return MatrixSite(layer, name, block.attn.W_OV, ident, ident, None, f"blocks.{layer}.hook_attn_out")
        raise ValueError(f"the minimal model has matrices 'mlp.W_out' (W_F) and 'attn.W_O' (W_OV), not {name!r}")

    def W_U(self) -> Tensor:
        return self.model.W_U.detach()

    def has_pos_embed(self) -> bool:
        return False


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
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
        raise ValueError(f"n_boot must be a non-negative integer, got {n_boot!r}")
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
    boot = torch.Generator().manual_seed(seed) if n_boot else None
    idx = torch.randint(0, n_batches, (n_boot, n_batches), generator=boot) if n_boot else None
    a = (1 - level) / 2
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
            counts = torch.zeros(n_boot, n_batches, dtype=torch.float64).scatter_add_(
                1, idx, torch.ones(n_boot, n_batches, dtype=torch.float64))
            M = counts @ G / n_batches  # resampled mean gradients
            sq = counts @ (G * G).sum(1)  # sum of squared norms over the resample
            var = (sq - n_batches * (M * M).sum(1)) / (n_batches - 1)
            full_b = torch.where(var > 0, M.norm(dim=1) / var.clamp_min(1e-300).sqrt(),
                                 torch.full_like(var, float("nan")))
            for key, vals in (("snr", snr_b), ("full_snr", full_b)):
                ok = vals[~torch.isnan(vals)]
                lo, hi = (torch.quantile(ok.double(), torch.tensor([a, 1 - a], dtype=torch.float64)).tolist()
                          if ok.numel() else (float("nan"), float("nan")))
                row[f"{key}_low"], row[f"{key}_high"] = lo, hi
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
                    elif state != "init":
                        raise ValueError(f"unknown state {state!r}; valid: 'init', 'copy_ov'")
                    bs = int(B) if B is not None else cfg.batch_size
                    df = gradient_snr(model, task, bs, n_batches=n_batches, seed=seed)
                    rows.append(df.assign(seq_len=cfg.seq_len, alpha=cfg.alpha, vocab=cfg.recall_config().d_vocab,
                                          d_model=cfg.d_model, state=state))
    return pd.concat(rows, ignore_index=True)


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


def _evaluate_minimal(model: MinimalModel, prompts: PromptSet, clean: RecallBatch,
                      noisy: PromptSet | None = None) -> dict[str, float]:
    row = {}
    for name, ivs in (("full", ()), ("ff_removed", (Ablate("mlp", layer=0),)), ("attn_removed", (Ablate("attn", layer=0),))):
        m = metrics_from_logits(item_logits(model, prompts, *ivs, batch_size=len(prompts.tokens)), prompts)
        row.update({f"{name}_accuracy": m["accuracy"], f"{name}_p_noise": m["p_noise"],
                    f"{name}_p_answer": m["p_answer"]})
    row["induction_score"] = induction_score(model, clean, layer=0)
    if noisy is not None:  # the training distribution: P(noise) should approach alpha there
        m = metrics_from_logits(item_logits(model, noisy, batch_size=len(noisy.tokens)), noisy)
        row["noisy_p_noise"] = m["p_noise"]
    return row


def train_minimal(cfg: MinimalConfig | None = None, progress: bool = False) -> MinimalResult:
    """Train the minimal model on noisy recall (SGD, or Adam, on the three memories from zero).

    History (one row per evaluation, ``step`` 0 = initialisation): clean-test ``full_*``,
    ``ff_removed_*`` (FF output zeroed with ``mt.Ablate("mlp", layer=0)``) and ``attn_removed_*``
    metrics (``accuracy``, ``p_noise``, ``p_answer``), ``noisy_p_noise`` (the full model's
    P(noise) on held-out sequences of the training distribution), ``induction_score``, the gradient
    signals of the step's training batch (``signal_W_F`` ...) and, with ``snr_batches``, the SNR
    over that many fresh batches (``snr_W_F`` ...).  Seeded: the same config gives the same
    history."""
    cfg = cfg or MinimalConfig()
    torch.manual_seed(cfg.seed)
    task = RecallTask(cfg.recall_config())
    model = MinimalModel(cfg)
    clean = task.test_set(cfg.test_size, seed=cfg.seed + 10_000)
    prompts = clean.to_prompts()
    noisy = task.sample(cfg.test_size, seed=cfg.seed + 30_000).to_prompts(clean=False)
    D = copy_directions(model, task)
    params = list(_params(model).values())
    opt = (torch.optim.SGD(params, lr=cfg.lr) if cfg.optimizer == "sgd" else torch.optim.Adam(params, lr=cfg.lr))
    gen = torch.Generator().manual_seed(cfg.seed)
    rows: list[dict] = []
    t0 = time.perf_counter()

    def record(step: int, sig: dict) -> None:
        model.eval()
        with torch.no_grad():
            row = {"step": step, **_evaluate_minimal(model, prompts, clean, noisy)}
        row.update({k: v for k, v in sig.items()})
        if cfg.snr_batches:
            snr = gradient_snr(model, task, cfg.batch_size, cfg.snr_batches, seed=cfg.seed + 7919 * (step + 1))
            for r in snr.itertuples():
                row[f"snr_{r.memory}"] = r.snr
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)

    sig0 = gradient_signals(model, task.sample(cfg.batch_size, seed=cfg.seed + 20_000), D)
    record(0, sig0)
    for step in range(1, cfg.steps + 1):
        batch = task.sample(cfg.batch_size, generator=gen)
        logits = model(batch.inputs)
        loss = masked_cross_entropy(logits, batch.targets, batch.loss_mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sig = {"loss": float(loss.detach())}
        for name, p in _params(model).items():
            sig[f"signal_{name}"] = float(-(p.grad * D[name]).sum())
            sig[f"gradnorm_{name}"] = float(p.grad.norm())
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            record(step, sig)
    model.eval()
    history = pd.DataFrame(rows)
    return MinimalResult(model=model, history=history, config=cfg, seconds=time.perf_counter() - t0,
                         order=order_of_learning(history, cfg.alpha))
