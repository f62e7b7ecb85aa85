"""A linear associative memory trained on a noisy map: the smallest model of a feed-forward layer
that stores a generic ("distributional") association next to the input-specific ones.

Model (Bietti et al. 2023's memory viewpoint; Chen, Bruna, Bietti 2024, the toy memory)::

    logits(x) = U W e_x        e_x = W_E[x]  (input embedding, [N, d])
                               U   = W_U.T   (output embeddings, [V, d]; W_U is [d, V])
                               W   [d, d]    (the learned memory)

Data: ``x ~ p(x)`` (uniform or Zipf), the target is ``y*(x)`` (a fixed random map onto the
outputs other than the noise token) with probability ``1 - alpha`` and the single shared noise
token with probability ``alpha``.  Clean evaluation uses ``y*(x)``.

Training minimises the *population* loss (exact expectation over ``x`` and over the noisy target,
no sampling) by full-batch gradient descent (``method="gd"``), or the sampled cross-entropy by
minibatch SGD (``method="sgd"``, seeded).  :func:`train_memory` returns a tidy history
(``step, p_answer, p_noise, accuracy, loss``) and the singular value decomposition of ``W`` and of
``W - W_init`` at chosen steps (:func:`spectrum`): per component, its singular value, its alignment
with the noise output direction and with the correct associations, and its contribution to the
mean noise and correct logits.

The memory works with the shared intervention layer: ``mt.Truncate("W", keep=0.1)`` and
``mt.RemoveComponents("W", indices=[i])`` act on ``W`` (layer 0), and :meth:`LinearMemory.prompts`
gives the clean prompt set for ``mt.evaluate`` / ``mt.sweep``.

Defaults are float64 so that tests can compare with closed forms.  The matrices are tiny: run
with ``torch.set_num_threads(1)`` (the CLI and the analysis scripts do); on a busy machine two
OpenMP threads made 200 GD steps of the default memory take 42 s instead of 0.9 s.

The module is over 400 lines because it holds one system whole, as the toy model's file does:
its configurations, the model with its adapter and engine stack, exact population training,
spectra, and the saved run.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from mechtrunc._checks import check_choice, check_fraction, check_int, check_real, check_resume, config_from_dict
from mechtrunc._choices import MEMORY_DTYPES, MEMORY_EMBEDDINGS, MEMORY_INITS, MEMORY_INPUT_DISTS, MEMORY_METHODS
from mechtrunc._progress import progress_bar
from mechtrunc._scalars import as_int_list
from mechtrunc.core.adapters import MEMORY_MATRICES, MatrixSite, ModelAdapter
from mechtrunc.core.interventions import Intervention, intervene
from mechtrunc.core.metrics import metrics_from_logits
from mechtrunc.core.prompts import PromptSet
from mechtrunc.core.results import read_table
from mechtrunc.core.stacks import Stack

__all__ = [
    "MemoryConfig", "MemoryTrainConfig", "LinearMemory", "MemoryAdapter", "MemoryRun", "INPUT_DISTS", "EMBEDDINGS",
    "INITS", "METHODS", "population_loss", "closed_form_gradient_at_zero", "train_memory",
    "spectrum", "noise_component", "spectrum_summary", "clean_metrics", "load_memory_run", "finished_memory_run",
]

INPUT_DISTS, EMBEDDINGS, INITS = MEMORY_INPUT_DISTS, MEMORY_EMBEDDINGS, MEMORY_INITS
METHODS, DTYPES = MEMORY_METHODS, MEMORY_DTYPES


@dataclass
class MemoryConfig:
    """The memory and its data.  ``n_inputs`` = N, ``n_outputs`` = V, ``d`` the width."""

    n_inputs: int = 64
    n_outputs: int = 64
    d: int = 128
    alpha: float = 0.3  # probability of the noise token
    noise_token: int = 0  # index of the noise token among the outputs
    target_seed: int = 0  # seed of the random map y*(x)
    input_dist: str = "uniform"  # "uniform" or "zipf"
    zipf_exponent: float = 1.0  # p(x) proportional to (x + 1) ** -zipf_exponent
    embeddings: str = "gaussian"  # "gaussian" (entries N(0, 1/d)) or "orthonormal" (needs N, V <= d)
    init: str = "zero"  # "zero" or "random" (entries N(0, init_scale^2 / d))
    init_scale: float = 1.0
    learn_embeddings: bool = False
    seed: int = 0  # seed of the embeddings and the initial W
    dtype: str = "float64"

    def __post_init__(self) -> None:
        self.n_inputs = check_int("n_inputs (N)", self.n_inputs, 2)
        self.n_outputs = check_int("n_outputs (V)", self.n_outputs, 2)
        self.d = check_int("d", self.d, 1)
        self.alpha = check_fraction("alpha", self.alpha)
        self.noise_token = check_int("noise_token", self.noise_token, 0, self.n_outputs - 1)
        self.target_seed, self.seed = check_int("target_seed", self.target_seed), check_int("seed", self.seed)
        check_choice("input distribution", self.input_dist, INPUT_DISTS)
        check_choice("embeddings", self.embeddings, EMBEDDINGS)
        check_choice("init", self.init, INITS)
        check_choice("dtype", self.dtype, DTYPES)
        self.zipf_exponent = check_real("zipf_exponent", self.zipf_exponent, 0)
        self.init_scale = check_real("init_scale", self.init_scale, 0)
        if self.embeddings == "orthonormal" and (self.n_inputs > self.d or self.n_outputs > self.d):
            raise ValueError(
                f"embeddings='orthonormal' needs n_inputs <= d and n_outputs <= d, got N={self.n_inputs}, "
                f"V={self.n_outputs}, d={self.d}; use embeddings='gaussian' or a larger d"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def from_dict(cls, data: dict) -> "MemoryConfig":
        return config_from_dict(cls, data)

    @classmethod
    def load(cls, path: str | Path) -> "MemoryConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class MemoryTrainConfig:
    """How to train: ``method="gd"`` (full batch, population loss) or ``"sgd"`` (minibatches of
    ``batch_size`` sampled pairs, seeded by ``seed``), plain steps of size ``lr``.  The history
    is logged every ``log_every`` steps (and at step 0 and the last step); spectra at
    ``spectrum_steps``."""

    method: str = "gd"
    steps: int = 2000
    lr: float = 10.0
    batch_size: int = 256
    seed: int = 0
    log_every: int = 10
    spectrum_steps: list[int] = field(default_factory=lambda: [0, 10, 100, 1000, 2000])

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        self.steps = check_int("steps", self.steps, 0)
        self.batch_size = check_int("batch_size", self.batch_size, 1)
        self.log_every = check_int("log_every", self.log_every, 1)
        self.seed = check_int("seed", self.seed)
        self.lr = check_real("lr", self.lr, 0, above=True)
        steps = as_int_list(self.spectrum_steps, "spectrum step")
        for s in steps:
            if not 0 <= s <= self.steps:
                raise ValueError(f"spectrum step {s} is outside 0..{self.steps}")
        self.spectrum_steps = sorted(set(steps))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MemoryTrainConfig":
        return config_from_dict(cls, data)


def _orthonormal_rows(n: int, d: int, gen: torch.Generator, dtype) -> Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))[None, :]  # a Haar-random orthogonal matrix
    return q[:, :n].T.contiguous().to(dtype)


class MemoryStack(Stack):
    """The memory as a one-layer stack for the grid engine: the embedding ``e_x``, one "layer"
    whose output is ``W e_x`` (no residual connection), the unembedding."""

    n_layers, n_heads, d_head = 1, 0, 0
    matrices = MEMORY_MATRICES

    def __init__(self, model: "LinearMemory"):
        self.model = model

    def embed(self, tokens):
        return self.model.W_E[tokens]

    def layer(self, l, resid):
        return resid @ self.model.W.T

    def split(self, l, name, resid, memo=None):
        return resid, lambda y: y

    def last_layer_at(self, resid, rows, pos):
        return self.layer(0, resid[rows, pos])

    def unembed(self, x):
        return x @ self.model.W_U


class MemoryAdapter(ModelAdapter):
    """The linear associative memory (:class:`LinearMemory`) as a one-layer model: its matrix
    ``"W"`` (layer 0; seen as ``x @ W.T``, the memory's output ``W e_x`` is hook
    ``hook_mem_out``) and the site ``"mlp_out"`` (the memory plays the FFN's role).  Inputs
    (``d_vocab_in`` = N) and outputs (``d_vocab`` = V) are different vocabularies."""

    kind = "memory"
    sites = ("mlp_out",)
    matrices = MEMORY_MATRICES

    def __init__(self, model):
        super().__init__(model)
        c = model.cfg
        self.n_layers, self.n_heads, self.d_model, self.d_head = 1, 0, c.d, c.d
        self.d_vocab, self.d_vocab_in = c.n_outputs, c.n_inputs

    def _build_stack(self):
        return MemoryStack(self.model)

    def site_hook(self, site: str, layer: int) -> str:
        self.check_layer(layer)
        if site != "mlp_out":
            raise ValueError(f"site {site!r} does not exist on the linear memory; valid: 'mlp_out' (its output W e_x)")
        return "hook_mem_out"

    def hook_point(self, name: str):
        try:
            return self.model.hook_dict[name]
        except KeyError:
            raise ValueError(
                f"the linear memory has no hook point {name!r} (its hooks: hook_embed, hook_mem_out); "
                "Transformer-only tools such as mt.attribute do not apply to it"
            ) from None

    def matrix(self, name: str, layer: int) -> MatrixSite:
        if name not in MEMORY_MATRICES:
            raise ValueError(f"unknown matrix {name!r} for the linear memory; valid: {', '.join(MEMORY_MATRICES)}")
        self.check_layer(layer)
        return self._matrix(name, layer)

    def _matrix(self, name, layer):
        return MatrixSite(layer, name, self.model.W, lambda t: t.T, lambda W: W.T, None, "hook_mem_out")

    def W_U(self):
        return self.model.W_U.detach()

    def has_pos_embed(self) -> bool:
        return False


class LinearMemory(HookedRootModule):
    """``logits = U W e_x`` with TransformerLens-style names: ``W_E [N, d]``, ``W [d, d]``,
    ``W_U [d, V]`` (``U = W_U.T``); hook points ``hook_embed`` (``e_x``) and ``hook_mem_out``
    (``W e_x``).  ``forward`` takes input ids of any shape ``[...]`` and returns ``[..., V]``.
    The data (``p(x)``, ``y*(x)``, the noise token) is kept as buffers."""

    mechtrunc_adapter = MemoryAdapter

    def __init__(self, cfg: MemoryConfig | None = None, **overrides):
        super().__init__()
        cfg = cfg or MemoryConfig(**overrides)
        self.cfg = cfg
        N, V, d, dt = cfg.n_inputs, cfg.n_outputs, cfg.d, cfg.torch_dtype
        gen = torch.Generator().manual_seed(cfg.seed)
        if cfg.embeddings == "orthonormal":
            E, U = _orthonormal_rows(N, d, gen, dt), _orthonormal_rows(V, d, gen, dt)
        else:
            E = (torch.randn(N, d, generator=gen, dtype=torch.float64) / math.sqrt(d)).to(dt)
            U = (torch.randn(V, d, generator=gen, dtype=torch.float64) / math.sqrt(d)).to(dt)
        if cfg.init == "random":
            W0 = (torch.randn(d, d, generator=gen, dtype=torch.float64) * cfg.init_scale / math.sqrt(d)).to(dt)
        else:
            W0 = torch.zeros(d, d, dtype=dt)
        self.W_E = nn.Parameter(E, requires_grad=cfg.learn_embeddings)
        self.W_U = nn.Parameter(U.T.contiguous(), requires_grad=cfg.learn_embeddings)
        self.W = nn.Parameter(W0.clone())
        self.register_buffer("W_init", W0.clone())
        tgen = torch.Generator().manual_seed(cfg.target_seed)
        others = torch.tensor([y for y in range(V) if y != cfg.noise_token])
        self.register_buffer("targets", others[torch.randint(0, V - 1, (N,), generator=tgen)])
        if cfg.input_dist == "zipf":
            w = (torch.arange(1, N + 1, dtype=torch.float64)) ** (-float(cfg.zipf_exponent))
        else:
            w = torch.ones(N, dtype=torch.float64)
        self.register_buffer("p_x", (w / w.sum()).to(dt))
        self.hook_embed, self.hook_mem_out = HookPoint(), HookPoint()
        self.setup()

    # --- the model -------------------------------------------------------------------------
    def forward(self, tokens: Int[Tensor, "..."]) -> Float[Tensor, "... V"]:
        tokens = torch.as_tensor(tokens)
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.n_inputs):
            raise ValueError(f"input ids must be in 0..{self.cfg.n_inputs - 1}, got ids in "
                             f"{int(tokens.min())}..{int(tokens.max())}")
        e = self.hook_embed(self.W_E[tokens.to(self.W_E.device)])
        h = self.hook_mem_out(e @ self.W.T)
        return h @ self.W_U

    def all_logits(self) -> Float[Tensor, "N V"]:
        """Logits of every input, ``[N, V]``."""
        return self(torch.arange(self.cfg.n_inputs))

    @property
    def U(self) -> Float[Tensor, "V d"]:
        return self.W_U.T

    @property
    def noise_token(self) -> int:
        return self.cfg.noise_token

    # --- data ------------------------------------------------------------------------------
    def target_distribution(self) -> Float[Tensor, "N V"]:
        """``q(y | x)``: ``1 - alpha`` on ``y*(x)``, ``alpha`` on the noise token."""
        N, V, a = self.cfg.n_inputs, self.cfg.n_outputs, self.cfg.alpha
        q = torch.zeros(N, V, dtype=self.p_x.dtype, device=self.p_x.device)
        q[torch.arange(N), self.targets] = 1 - a
        q[:, self.cfg.noise_token] += a
        return q

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` training pairs ``(x, y)`` drawn from the noisy data distribution."""
        x = torch.multinomial(self.p_x.double().cpu(), n, replacement=True, generator=generator)
        noisy = torch.rand(n, generator=generator, dtype=torch.float64) < self.cfg.alpha
        y = torch.where(noisy, torch.full_like(x, self.cfg.noise_token), self.targets.cpu()[x])
        return x.to(self.W.device), y.to(self.W.device)

    def prompts(self) -> PromptSet:
        """The clean evaluation set: every input once, answer ``y*(x)``, competitor ``noise``.
        ``mt.evaluate`` averages uniformly over inputs; :func:`clean_metrics` weights by p(x)."""
        N = self.cfg.n_inputs
        x = torch.arange(N)
        return PromptSet(tokens=x[:, None], rows=x, pos=torch.zeros(N, dtype=torch.long),
                         answer=self.targets.cpu(), competitors=torch.full((N, 1), self.cfg.noise_token),
                         competitor_names=("noise",))

    # --- persistence -----------------------------------------------------------------------
    def save(self, directory: str | Path, extra: dict | None = None) -> Path:
        """``model.safetensors`` + ``config.json`` (plus ``extra`` metadata)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, directory / "model.safetensors")
        (directory / "config.json").write_text(json.dumps({"memory": self.cfg.to_dict(), **(extra or {})}, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "LinearMemory":
        from safetensors.torch import load_file

        directory = Path(directory)
        for path in (directory / "config.json", directory / "model.safetensors"):
            if not path.is_file():
                raise ValueError(f"{str(directory)!r} is not a memory run directory: {path.name} is missing")
        try:
            model = cls(MemoryConfig.from_dict(json.loads((directory / "config.json").read_text())["memory"]))
            model.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
        except Exception as err:
            raise ValueError(f"corrupt memory run directory {str(directory)!r}: {err}") from err
        return model


# ------------------------------------------------------------------------------------------
# losses, gradients, metrics
# ------------------------------------------------------------------------------------------
def population_loss(model: LinearMemory) -> Tensor:
    """Exact expected cross-entropy ``sum_x p(x) sum_y q(y|x) (-log softmax(U W e_x)_y)``."""
    return _expected_ce(model, model.all_logits(), model.target_distribution())


def _expected_ce(model: LinearMemory, logits: Tensor, q: Tensor) -> Tensor:
    return -(model.p_x[:, None] * q * logits.log_softmax(-1)).sum()


def closed_form_gradient_at_zero(model: LinearMemory) -> Float[Tensor, "d d"]:
    """``dL/dW`` at ``W = 0``: ``-sum_x p(x) [(1-alpha) u_{y*(x)} + alpha u_noise - mean_y u_y] e_x^T``
    (at ``W = 0`` every output is equally likely, so the softmax term is the mean output)."""
    U, E, a = model.U.detach(), model.W_E.detach(), model.cfg.alpha
    c = (1 - a) * U[model.targets] + a * U[model.cfg.noise_token] - U.mean(0)  # [N, d]
    return -(model.p_x[:, None] * c).T @ E


def _metrics(model: LinearMemory, logits: Tensor, prompts: PromptSet) -> dict[str, float]:
    m = metrics_from_logits(logits, prompts, weights=model.p_x)
    return {"p_answer": m["p_answer"], "p_noise": m["p_noise"], "accuracy": m["accuracy"],
            "clean_loss": m["loss"]}


@torch.no_grad()
def clean_metrics(model: LinearMemory, *interventions: Intervention) -> dict[str, float]:
    """p(x)-weighted clean metrics (``p_answer``, ``p_noise``, ``accuracy``, ``clean_loss``)
    and the population ``loss``, with interventions active (they are applied through the shared
    intervention layer, e.g. ``mt.Truncate("W", keep=0.1)``)."""
    prompts = model.prompts()
    with intervene(model, *interventions):
        logits = model.all_logits()
        out = _metrics(model, logits, prompts)
        out["loss"] = float(population_loss(model))
    return out


# ------------------------------------------------------------------------------------------
# spectra
# ------------------------------------------------------------------------------------------
@torch.no_grad()
def spectrum(model: LinearMemory, W: Tensor | None = None) -> pd.DataFrame:
    """SVD ``W = sum_i s_i a_i b_i^T`` of ``W`` (default: the model's) with, per component:

    - ``singular_value`` ``s_i`` (``component`` 0 is the largest);
    - ``align_noise``: ``|cos(a_i, u_noise - u_mean)|``, alignment with the noise output direction;
    - ``align_noise_assoc``: ``|<a_i b_i^T, n e^T>|`` with ``n``, ``e`` the unit noise output
      direction and the unit mean input ``sum_x p(x) e_x``: alignment with the rank-one noise
      association that the gradient at ``W = 0`` writes;
    - ``align_correct``: Frobenius norm of the projection of ``a_i b_i^T`` onto the span of the
      correct associations ``(u_{y*(x)} - u_mean) e_x^T`` (1 = entirely made of them);
    - ``noise_logit``, ``correct_logit``: the component's contribution to the p(x)-mean of the
      centred noise logit ``(u_noise - u_mean)^T W e_x`` and correct logit
      ``(u_{y*(x)} - u_mean)^T W e_x`` (they add up over components to the full model's).
    """
    W = (model.W if W is None else W).detach().double()
    U, E, p = model.U.detach().double(), model.W_E.detach().double(), model.p_x.double()
    A, S, Bh = torch.linalg.svd(W)
    B = Bh.T
    u_mean = U.mean(0)
    n_out = U[model.cfg.noise_token] - u_mean
    C = U[model.targets] - u_mean  # [N, d]
    e_bar = p @ E
    n_hat, e_hat = n_out / n_out.norm(), e_bar / e_bar.norm().clamp_min(1e-300)
    an, be = n_hat @ A, e_hat @ B  # [r]
    proj_out = A.T @ n_out  # [r]
    noise_logit = S * proj_out * (B.T @ e_bar)
    ca, eb = C @ A, E @ B  # [N, r]
    correct_logit = S * (p[:, None] * ca * eb).sum(0)
    G = (C @ C.T) * (E @ E.T)  # Gram matrix of the correct associations
    g = ca * eb  # [N, r] inner products <a_i b_i^T, c_x e_x^T>
    evals, evecs = torch.linalg.eigh(G)
    keep = evals > evals.max() * 1e-10
    coef = (evecs[:, keep].T @ g) / evals[keep].sqrt()[:, None]
    align_correct = coef.pow(2).sum(0).clamp(max=1.0).sqrt()
    r = S.shape[0]
    return pd.DataFrame({
        "component": range(r), "singular_value": S.numpy(), "align_noise": an.abs().numpy(),
        "align_noise_assoc": (an * be).abs().numpy(), "align_correct": align_correct.numpy(),
        "noise_logit": noise_logit.numpy(), "correct_logit": correct_logit.numpy(),
    })


def noise_component(spec: pd.DataFrame, by: str = "align_noise") -> int:
    """The index of the component most aligned with the noise (``by``: ``align_noise``,
    ``align_noise_assoc`` or ``noise_logit``)."""
    check_choice("criterion", by, ("align_noise", "align_noise_assoc", "noise_logit"), quote=True)
    return int(spec.loc[spec[by].idxmax(), "component"])


def spectrum_summary(spectra: pd.DataFrame) -> pd.DataFrame:
    """One row per (step, matrix) of a spectra table: where the noise association sits.

    ``noise_index`` (0 = top) of the component most aligned with the noise output direction, its
    ``noise_align``, ``noise_sv``, ``top_sv`` (largest singular value), ``gap`` (its singular value
    over the next one below), ``bulk_sv`` (median singular value), ``noise_logit_share`` (its
    share of the mean noise logit) and ``location``: ``zero`` for a zero matrix, ``spread`` when no component has alignment
    >= 0.5, ``top spike`` (index 0 with gap >= 1.5), ``top`` (index 0), else ``bulk``;
    ``n_nonzero`` counts singular values above ``1e-9`` times the largest."""
    rows = []
    keys = [k for k in ("step", "matrix") if k in spectra.columns]
    groups = spectra.groupby(keys, sort=False) if keys else [((), spectra)]
    for key, g in groups:
        g = g.sort_values("component")
        i = noise_component(g)
        sv = g["singular_value"].to_numpy()
        row = g.iloc[i]
        total = g["noise_logit"].sum()
        gap = sv[i] / sv[i + 1] if i + 1 < len(sv) and sv[i + 1] > 0 else float("inf")
        if sv[0] == 0:
            loc = "zero"
        elif row["align_noise"] < 0.5:
            loc = "spread"
        elif i == 0:
            loc = "top spike" if gap >= 1.5 else "top"
        else:
            loc = "bulk"
        rows.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))),
                     "noise_index": i, "noise_align": float(row["align_noise"]),
                     "noise_align_assoc": float(row["align_noise_assoc"]),
                     "noise_sv": float(sv[i]), "top_sv": float(sv[0]), "gap": float(gap),
                     "bulk_sv": float(pd.Series(sv).median()), "n_nonzero": int((sv > 1e-9 * sv[0]).sum()),
                     "noise_logit_share": float(row["noise_logit"] / total) if total != 0 else float("nan"),
                     "location": loc})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------
@dataclass
class MemoryRun:
    """What :func:`train_memory` returns: the trained model, its configs, the history
    (``step, p_answer, p_noise, accuracy, clean_loss, loss``) and the spectra (``step, matrix``
    in ``{"W", "W - W_init"}``, then :func:`spectrum`'s columns)."""

    model: LinearMemory
    config: MemoryConfig
    train_config: MemoryTrainConfig
    history: pd.DataFrame
    spectra: pd.DataFrame
    seconds: float

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        self.model.save(directory, extra={"train": self.train_config.to_dict(), "seconds": self.seconds})
        self.history.to_csv(directory / "history.csv", index=False)
        self.spectra.to_csv(directory / "spectra.csv", index=False)
        return directory


def load_memory_run(directory: str | Path) -> MemoryRun:
    """A run written by :meth:`MemoryRun.save` (``ValueError`` when missing or corrupt)."""
    directory = Path(directory)
    model = LinearMemory.load(directory)
    meta = json.loads((directory / "config.json").read_text())
    for name in ("history.csv", "spectra.csv"):
        if not (directory / name).is_file():
            raise ValueError(f"{str(directory)!r} is not a memory run directory: {name} is missing")
    return MemoryRun(model, model.cfg, MemoryTrainConfig.from_dict(meta.get("train", {})),
                     read_table(directory / "history.csv"), read_table(directory / "spectra.csv"),
                     float(meta.get("seconds", float("nan"))))


def finished_memory_run(directory: str | Path, cfg: MemoryConfig, train_cfg: MemoryTrainConfig) -> MemoryRun | None:
    """What an output directory holds before a run of ``(cfg, train_cfg)`` is saved there:
    ``None`` when it is missing or empty (train and save); the stored run when it holds a run of
    exactly these configurations (finished: nothing to train or write).  A run is never resumed
    or overwritten (training takes seconds): a directory holding a run of another configuration
    raises a ``ValueError`` naming every differing field with both values (``train.steps: 1000
    there, 2000 asked``), one holding anything else raises too."""
    d = Path(directory)
    if not d.exists() or (d.is_dir() and not any(d.iterdir())):
        return None
    try:
        meta = json.loads((d / "config.json").read_text())
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict) or not {"memory", "train"} <= set(meta):
        raise ValueError(f"{d} exists and holds no memory run (a config.json with its memory and train "
                         "configurations); nothing was changed: use an empty or new --out directory")
    check_resume(d, {"memory": meta["memory"], "train": meta["train"]},
                 {"memory": cfg.to_dict(), "train": train_cfg.to_dict()})
    return load_memory_run(d)


def _spectra_at(model: LinearMemory, step: int) -> pd.DataFrame:
    W = model.W.detach()
    parts = [spectrum(model, W).assign(step=step, matrix="W"),
             spectrum(model, W - model.W_init).assign(step=step, matrix="W - W_init")]
    return pd.concat(parts, ignore_index=True)


def train_memory(
    cfg: MemoryConfig | LinearMemory, train_cfg: MemoryTrainConfig | None = None, *, progress: bool = False,
    **overrides,
) -> MemoryRun:
    """Train a memory (built from ``cfg``, or the given model in place).  ``overrides`` are
    :class:`MemoryTrainConfig` fields; ``progress`` shows progress over the steps.
    Deterministic: the same configs give the same run."""
    model = cfg if isinstance(cfg, LinearMemory) else LinearMemory(cfg)
    tc = train_cfg or MemoryTrainConfig()
    if overrides:
        tc = MemoryTrainConfig.from_dict({**tc.to_dict(), **overrides})
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(tc.seed)
    prompts = model.prompts()
    log_steps = set(range(0, tc.steps + 1, tc.log_every)) | {tc.steps}
    spec_steps = set(tc.spectrum_steps)
    history, spectra = [], []
    t0 = time.perf_counter()
    q = model.target_distribution()
    x_all = torch.arange(model.cfg.n_inputs, device=model.W.device)
    bar = progress_bar(tc.steps, "memory", "step", enabled=progress)
    for step in range(tc.steps + 1):
        gd = tc.method == "gd" and step < tc.steps
        logits = loss = None
        if gd:  # one forward pass serves the gradient and the history
            logits = model(x_all)
            loss = _expected_ce(model, logits, q)
        if step in log_steps:
            with torch.no_grad():
                lg = logits.detach() if logits is not None else model(x_all)
                row = {"step": step, **_metrics(model, lg, prompts)}
                row["loss"] = float(loss.detach()) if loss is not None else float(_expected_ce(model, lg, q))
            history.append(row)
        if step in spec_steps:
            spectra.append(_spectra_at(model, step))
        if step == tc.steps:
            break
        if not gd:  # SGD: a fresh seeded minibatch of noisy pairs
            x, y = model.sample(tc.batch_size, gen)
            loss = nn.functional.cross_entropy(model(x), y)
        if not bool(torch.isfinite(loss)):
            raise ValueError(f"training diverged at step {step} (loss {float(loss.detach())}): lower lr (now {tc.lr})")
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(tc.lr * g)
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t0
    spec = pd.concat(spectra, ignore_index=True) if spectra else pd.DataFrame()
    if len(spec):
        spec = spec[["step", "matrix"] + [c for c in spec.columns if c not in ("step", "matrix")]]
    cfg_out = model.cfg
    return MemoryRun(model, cfg_out, tc, pd.DataFrame(history), spec, seconds)
