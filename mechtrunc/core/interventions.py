"""Interventions: small, composable, reversible edits of a model.

An intervention is a *value* (a frozen dataclass) that says what to change; it is bound to a
model only while applied::

    with mt.intervene(model, mt.Truncate("mlp.W_in", layer=1, keep=0.1)):
        row = mt.evaluate(model, prompts)

    sweep = [mt.Truncate("mlp.W_out", layer=l, keep=k) for l in range(6) for k in (0.5, 0.1)]

Weight edits save the touched parameter and copy it back, bit for bit, when the block ends
(also when it raises); hooks are removed.  Several interventions can be active at once, and
``a + b`` composes two.  The same objects work on the toy model and on any TransformerBridge.

Rank rule for ``keep`` (a fraction of the maximum rank ``r = min(d_in, d_out)``):
``rule="round"`` (default) keeps ``round(keep * r)`` components (halves round up) and at least
one when ``keep > 0``; ``rule="authors"`` keeps ``int(keep * d_model)`` as the paper's released
code does (capped at ``r``) for the weight matrices, and ``int(keep * d_head)`` for ``attn.OV``.
The released code only truncates matrices whose maximum rank is ``d_model``, so its rule is
"a fraction of the maximum rank, rounded down"; each head's ``W_V W_O`` has rank at most
``d_head``, so the same fraction of *its* maximum rank is ``int(keep * d_head)``.  Scaling by
``d_model`` instead would cap every ``keep >= d_head / d_model`` at the full rank (an identity
edit: ``keep=0.1`` would change nothing on Pythia-1.4B, where ``d_head / d_model = 1/16``).
``keep = 0`` removes the matrix under both rules.

The low-rank products behind ``Truncate`` (:class:`TruncatedProduct`, and :func:`ov_basis` /
:func:`ov_W_O` for ``attn.OV``) are public because the grid engine (:mod:`mechtrunc.core.engine`)
evaluates truncations with the very same code.  (Over 400 lines: one concept, the intervention
values and the products they apply, kept together so each edit is written once.)

Layers, heads, ranks and keeps may be any integer/real scalar type (NumPy scalars, 0-d tensors,
items of ``np.arange``/``np.linspace``); ``bool`` is rejected (see :mod:`mechtrunc._scalars`).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from mechtrunc._checks import check_choice
from mechtrunc._choices import DEFAULT_RULE, RULES
from mechtrunc._scalars import as_int, as_int_list, as_real, as_real_list, is_scalar
from mechtrunc.core.adapters import GATED_MATRICES, MATRICES, MEMORY_MATRICES, SITES, MatrixSite, ModelAdapter, adapt

__all__ = [
    "Intervention", "Compose", "Ablate", "Truncate", "RemoveComponents", "ProjectOut", "Patch",
    "intervene", "batch_rows", "current_rows", "record_activations", "rank_for_keep", "TruncatedProduct", "ov_basis", "ov_W_O",
]


class Intervention:
    """Base class. Subclasses implement :meth:`_apply`, a generator that edits the model,
    yields, and undoes the edit in a ``finally`` block."""

    def apply(self, model) -> contextlib.AbstractContextManager:
        """A context manager applying this intervention to ``model``."""
        return contextlib.contextmanager(self._apply)(adapt(model))

    def _apply(self, adapter: ModelAdapter) -> Iterator[None]:  # pragma: no cover - abstract
        yield

    def __add__(self, other: "Intervention") -> "Compose":
        if not isinstance(other, Intervention):
            return NotImplemented  # Python raises TypeError naming both types
        return Compose((*_flatten(self), *_flatten(other)))

    @property
    def label(self) -> str:
        return repr(self)

    def describe(self) -> dict:
        """Flat description for result tables."""
        return {"intervention": self.label}


def _flatten(iv: Intervention) -> tuple[Intervention, ...]:
    return iv.items if isinstance(iv, Compose) else (iv,)


@dataclass(frozen=True)
class Compose(Intervention):
    """Several interventions applied together (in order, undone in reverse)."""

    items: tuple[Intervention, ...] = ()

    def __post_init__(self):
        for iv in self.items:
            if not isinstance(iv, Intervention):
                raise TypeError(f"expected Intervention objects, got {type(iv).__name__}")

    def _apply(self, adapter):
        with contextlib.ExitStack() as stack:
            for iv in self.items:
                stack.enter_context(iv.apply(adapter))
            yield

    @property
    def label(self) -> str:
        return " + ".join(iv.label for iv in self.items) or "none"


@contextlib.contextmanager
def intervene(model, *interventions: Intervention):
    """Apply any number of interventions to ``model`` for the duration of a ``with`` block."""
    for iv in interventions:
        if not isinstance(iv, Intervention):
            raise TypeError(f"expected Intervention objects, got {type(iv).__name__}")
    with Compose(tuple(interventions)).apply(model):
        yield model


#: (sequence indices of the batch being run, number of sequences of the whole prompt set), set by
#: the runner around each forward pass; a :class:`Patch` reads it to pair rows with its source
_BATCH_ROWS: contextvars.ContextVar = contextvars.ContextVar("mechtrunc_batch_rows", default=None)


@contextlib.contextmanager
def batch_rows(rows: Tensor, n_sequences: int):
    """Declare, for the forward passes inside the block, that the batch holds sequences ``rows``
    of a prompt set of ``n_sequences`` sequences (what :func:`mechtrunc.core.runner.run_items` does
    for every chunk), so that a :class:`Patch` takes row ``i`` of its source for sequence ``i``."""
    token = _BATCH_ROWS.set((torch.as_tensor(rows).long(), int(n_sequences)))
    try:
        yield
    finally:
        _BATCH_ROWS.reset(token)


def current_rows(batch: int, n_sequences: int) -> Tensor:
    """The sequence indices (into a prompt set of ``n_sequences``) of the ``batch`` rows a hook
    sees now: those :func:`batch_rows` declared, else ``0..batch-1`` when the batch is the whole
    set.  ValueError when the run and the paired set differ in size."""
    ctx = _BATCH_ROWS.get()
    n_run = ctx[1] if ctx is not None else batch
    if n_run != n_sequences:
        raise ValueError(f"the run has {n_run} sequences but the paired source has {n_sequences}: "
                         "paired prompt sets need the same number of sequences")
    return ctx[0] if ctx is not None else torch.arange(batch)


@torch.no_grad()
def record_activations(model, tokens: Tensor, names, batch_size: int = 64) -> dict[str, Tensor]:
    """Full activations ``[seq, pos, ...]`` at the hooks ``names`` for ``tokens``, run in chunks
    of ``batch_size`` sequences (declared with :func:`batch_rows`, so that active row-paired
    interventions apply), with whatever interventions are active."""
    adapter = adapt(model)
    parts: dict[str, list[Tensor]] = {n: [] for n in names}
    with contextlib.ExitStack() as stack:
        for n in names:
            stack.enter_context(_hooked(adapter, n, lambda a, n=n: parts[n].append(a.detach().clone()) or None))
        for start in range(0, tokens.shape[0], batch_size):
            chunk = tokens[start:start + batch_size]
            with batch_rows(torch.arange(start, start + chunk.shape[0]), tokens.shape[0]):
                adapter.forward(chunk.to(adapter.device))
    return {n: torch.cat(v) for n, v in parts.items()}


def _hooked(adapter: ModelAdapter, name: str, fn):
    return adapter.hooked(name, fn)


@contextlib.contextmanager
def _edited(site: MatrixSite, new_W: Tensor):
    saved = site.param.detach().clone()
    try:
        site.set(new_W)
        yield
    finally:
        with torch.no_grad():
            site.param.copy_(saved)


# ----------------------------------------------------------------------------------------
# ablation
# ----------------------------------------------------------------------------------------
_ABLATE_COMPONENTS = ("mlp", "attn", "head")
_ABLATE_METHODS = ("zero", "mean", "resample")


@dataclass(frozen=True)
class Ablate(Intervention):
    """Ablate an MLP (``component="mlp"``), an attention layer (``"attn"``) or one head
    (``"head"``, with ``head=``) by replacing its output with zero, its mean over a reference
    set (``method="mean"``, mean over every sequence and position of ``reference``) or the
    activation of a randomly chosen reference sequence at the same position (``"resample"``,
    seeded).  ``reference`` is a PromptSet or a token tensor."""

    component: str
    layer: int
    head: int | None = None
    method: str = "zero"
    reference: object = field(default=None, compare=False, repr=False)
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "layer", as_int(self.layer, "layer"))
        if self.head is not None:
            object.__setattr__(self, "head", as_int(self.head, "head"))
        object.__setattr__(self, "seed", as_int(self.seed, "seed"))
        check_choice("component", self.component, _ABLATE_COMPONENTS)
        check_choice("ablation method", self.method, _ABLATE_METHODS)
        if (self.component == "head") != (self.head is not None):
            raise ValueError("give head= exactly when component='head'")
        if self.method != "zero" and self.reference is None:
            raise ValueError(f"method={self.method!r} needs reference= (a PromptSet or tokens)")

    @property
    def label(self) -> str:
        what = f"L{self.layer}H{self.head}" if self.component == "head" else f"L{self.layer}.{self.component}"
        return f"ablate {what} ({self.method})"

    def describe(self):
        return {"intervention": self.label, "kind": "ablate", "component": self.component,
                "layer": self.layer, "head": self.head, "method": self.method}

    def _apply(self, adapter):
        adapter.check_layer(self.layer)
        if self.head is not None:
            adapter.check_head(self.head)
        site = {"mlp": "mlp_out", "attn": "attn_out", "head": "z"}[self.component]
        name = adapter.site_hook(site, self.layer)
        sel = (lambda a: a[:, :, self.head]) if self.head is not None else (lambda a: a)
        ref = None
        if self.method != "zero":
            tokens = getattr(self.reference, "tokens", self.reference)
            # one forward over every reference sequence
            ref = sel(record_activations(adapter, tokens, [name], batch_size=max(1, tokens.shape[0]))[name])
            if self.method == "mean":
                ref = ref.reshape(-1, *ref.shape[2:]).mean(0)

        def fn(act):
            act = act.clone()
            target = sel(act)
            if self.method == "zero":
                target.zero_()
            elif self.method == "mean":
                target.copy_(ref.to(target.dtype).expand_as(target))
            else:
                b, p = target.shape[:2]
                if p > ref.shape[1]:
                    raise ValueError(f"resample reference has {ref.shape[1]} positions, run has {p}")
                g = torch.Generator().manual_seed(self.seed)
                idx = torch.randint(0, ref.shape[0], (b,), generator=g).to(ref.device)
                target.copy_(ref[idx, :p].to(target.dtype))
            return act

        with _hooked(adapter, name, fn):
            yield


# ----------------------------------------------------------------------------------------
# low-rank edits: truncation and removal of singular components
# ----------------------------------------------------------------------------------------
#: an intervention's ``mode``: how it edits the model ("weight": the edited weight is written in;
#: "hook": the matrix's output is edited at its hook); a grid's ``mode`` names its evaluator
_MODES = ("weight", "hook")


def rank_for_keep(keep: float, max_rank: int, d_model: int | None = None, rule: str = DEFAULT_RULE) -> int:
    """Number of singular components kept for a fraction ``keep`` (see the module docstring)."""
    keep = as_real(keep, "keep")
    max_rank = as_int(max_rank, "max_rank")
    d_model = None if d_model is None else as_int(d_model, "d_model")
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"keep must be in [0, 1], got {keep!r}")
    check_choice("rank rule", rule, RULES)
    if rule == "round":
        k = math.floor(keep * max_rank + 0.5)
        return max(k, 1) if keep > 0 else 0
    return min(int(keep * (d_model if d_model is not None else max_rank)), max_rank)  # "authors"


@dataclass(frozen=True)
class TruncatedProduct:
    """``x @ W_r + b`` for every rank ``r`` up to ``Q.shape[1]``, from one top singular basis of
    ``W``'s smaller side (``W`` as ``[d_in, d_out]``, used as ``x @ W``): ``left`` (``d_in <=
    d_out``): ``Q = U_k`` and ``x @ W_r = (x @ Q_r)(Q_r^T W)``; right: ``Q = V_k`` and
    ``x @ W_r = (x @ W) Q_r Q_r^T``.  :meth:`coefficients` is computed once and :meth:`output`
    once per rank, which is how hook-mode truncation and the grid engine evaluate a truncated
    matrix without a dense write-back.  ``W`` may be None for the right form when the
    coefficients are taken from the clean output (:meth:`coefficients_from_output`)."""

    Q: Tensor
    left: bool = False
    W: Tensor | None = None
    bias: Tensor | None = None
    B: Tensor | None = field(default=None, init=False, repr=False, compare=False)  # Q^T W (left form)

    def __post_init__(self):
        if self.left:
            object.__setattr__(self, "B", self.Q.T.to(self.W.dtype) @ self.W)

    def coefficients(self, x: Tensor) -> Tensor:
        """``x @ Q`` (left) or ``(x @ W) @ Q`` (right), ``[..., k]``."""
        Q = self.Q.to(x.dtype)
        return x @ Q if self.left else (x @ self.W.to(x.dtype)) @ Q

    def coefficients_from_output(self, out: Tensor) -> Tensor:
        """Right form from the clean output ``out = x @ W + b``: ``(out - b) @ Q``."""
        if self.left:
            raise ValueError("coefficients_from_output needs the right form (left=False)")
        return (out - self.bias if self.bias is not None else out) @ self.Q.to(out.dtype)

    def output(self, coef: Tensor, rank: int | None = None, mask: Tensor | None = None) -> Tensor:
        """``x @ W_r + b`` from :meth:`coefficients`: the first ``rank`` components (default
        all), or those selected by ``mask`` (``[k]``, or ``[batch, k]`` per batch row)."""
        r = coef.shape[-1] if rank is None else rank
        coef, Q = coef[..., :r], self.Q[:, :r].to(coef.dtype)
        if mask is not None:
            m = mask[..., :r].to(coef.dtype)
            coef = coef * (m[:, None, :] if m.ndim == 2 and coef.ndim == 3 else m)
        out = coef @ (self.B[:r].to(coef.dtype) if self.left else Q.T)
        return out + self.bias.to(out.dtype) if self.bias is not None else out


def _project_out_hook(site: MatrixSite, basis: Float[Tensor, "d_out r"], mask: Tensor | None):
    """Hook computing ``x @ W_k + b`` from the clean output ``x @ W + b``, ``W_k`` keeping the
    components in ``basis`` (per batch row when ``mask`` is [batch, r])."""

    def fn(out):
        flat = out.reshape(*out.shape[:2], -1) if out.ndim == 4 else out
        if mask is not None and mask.shape[0] != flat.shape[0]:
            raise ValueError(f"per-row ranks were given for {mask.shape[0]} rows but the batch has {flat.shape[0]}")
        tp = TruncatedProduct(basis.to(flat.dtype), bias=site.bias)
        return tp.output(tp.coefficients_from_output(flat), mask=mask).reshape(out.shape)

    return fn


def ov_basis(adapter: ModelAdapter, layer: int) -> tuple[Tensor, Tensor]:
    """``(W_O [head, d_head, d], Vh [head, d_head, d])``: each head's output matrix and the right
    singular vectors of its ``W_V[h] @ W_O[h]`` (float32), what ``attn.OV`` truncation keeps."""
    h, dh, d = adapter.n_heads, adapter.d_head, adapter.d_model
    W_V = adapter.matrix("attn.W_V", layer).get().reshape(d, h, dh).permute(1, 0, 2).float()
    W_O = adapter.matrix("attn.W_O", layer).get().reshape(h, dh, d).float()
    _, _, Vh = torch.linalg.svd(W_V @ W_O, full_matrices=False)  # [h, dh, d]
    return W_O, Vh[:, :dh]


def ov_W_O(W_O: Tensor, Vh: Tensor, mask: Tensor) -> Tensor:
    """The output matrix ``W_O[h] V_k V_k^T`` per head (``[head, d_head, d]``) that makes each
    head's ``W_V W_O`` keep the components ``mask`` (``[d_head]``) of its SVD."""
    Vk = Vh[:, mask.to(Vh.device)].transpose(1, 2)  # [h, d, k]
    return W_O @ (Vk @ Vk.transpose(1, 2))


@dataclass(frozen=True)
class _SVDEdit(Intervention):
    """Shared machinery: keep a set of singular components of a matrix (weight or hook mode).
    Subclasses define ``_keep_masks(adapter, max_rank)``: a [r] or [batch, r] boolean mask of
    the kept components, in order of descending singular value."""

    matrix: str
    layer: int

    def _validate_common(self) -> None:
        """Checks shared by the subclasses, run when the intervention is built."""
        object.__setattr__(self, "layer", as_int(self.layer, "layer"))
        if self.matrix not in MEMORY_MATRICES + GATED_MATRICES:
            check_choice("matrix", self.matrix, MATRICES, label="valid matrices",
                         extra=f" (and {', '.join(GATED_MATRICES)} in a gated MLP, "
                               f"{', '.join(MEMORY_MATRICES)} on a mechtrunc.models.memory.LinearMemory)")
        check_choice("mode", self.mode, _MODES)

    def _apply(self, adapter):
        adapter.check_layer(self.layer)
        site = adapter.matrix(self.matrix, self.layer)
        if site.heads is not None:
            yield from self._apply_heads(adapter, site)
            return
        mask = self._keep_masks(adapter, site.max_rank)
        if mask.ndim == 1 and bool(mask.all()):
            yield  # nothing removed: identity, weights untouched
            return
        n_needed = int(mask.nonzero()[:, -1].max()) + 1 if bool(mask.any()) else 0
        U, S, Vh = adapter.svd(site, self.svd, rank=n_needed)
        if n_needed > S.shape[0]:
            raise ValueError(f"randomized SVD returned {S.shape[0]} components, {n_needed} needed")
        mask = mask[..., : S.shape[0]].to(S.device)
        if self.mode == "weight":
            if mask.ndim != 1:
                raise ValueError("per-row ranks need mode='hook'")
            W_new = (U * (S * mask)) @ Vh
            with _edited(site, W_new.to(site.param.dtype)):
                yield
        else:
            if mask.ndim == 1:
                fn = _project_out_hook(site, Vh[mask].T, None)
            else:
                r = int(mask.any(0).nonzero().max()) + 1 if bool(mask.any()) else 1
                fn = _project_out_hook(site, Vh[:r].T, mask[:, :r])
            with _hooked(adapter, site.out_hook, fn):
                yield

    def _apply_heads(self, adapter, site: MatrixSite):
        """A per-head product site (``attn.OV``): per head, keep components of W_OV = W_V[h] @
        W_O[h].  Weight mode rewrites W_O[h] <- W_O[h] V_k V_k^T (so W_V W_O' is the truncated
        product); hook mode applies the equivalent map z_h <- z_h A_h at ``site.out_hook``
        (``attn.hook_z``)."""
        mask = self._keep_masks(adapter, site.max_rank)
        if mask.ndim != 1:
            raise ValueError(f"per-row ranks are not supported for {site.name}")
        if bool(mask.all()):
            yield
            return
        W_O, Vh = ov_basis(adapter, self.layer)
        new_O = ov_W_O(W_O, Vh, mask)
        if self.mode == "weight":
            edited = adapter.matrix(site.edits, self.layer)
            with _edited(edited, new_O.reshape(-1, W_O.shape[-1]).to(edited.param.dtype)):
                yield
        else:
            A = new_O @ torch.linalg.pinv(W_O)  # [h, dh, dh], A_h W_O[h] = W_O[h] P_h
            fn = lambda z: torch.einsum("bphe,hef->bphf", z, A.to(z.dtype))
            with _hooked(adapter, site.out_hook, fn):
                yield


@dataclass(frozen=True)
class Truncate(_SVDEdit):
    """Low-rank truncation (LASER) of a weight matrix: keep its top singular components.

    Give ``keep`` (fraction of the maximum rank, rounding by ``rule``) or ``rank`` (an integer).
    ``mode``: how the model is edited: ``"weight"`` writes the truncated weight in, ``"hook"``
    projects the matrix's output at its hook (the same numbers for a single edit).  ``keep`` or
    ``rank`` may be a sequence, one value per batch row, with ``mode="hook"``: the forward pass
    then evaluates a different rank for each row.  ``svd="randomized"`` uses
    ``torch.svd_lowrank`` (for large matrices); ``svd="laser"`` is the LASER paper's own call
    (``torch.svd_lowrank(q=rank, niter=2)``, seeded; with ``rule="authors"`` the paper's
    truncation exactly, :func:`mechtrunc.core.decomposition.full_svd`), weight mode only (its rank-``r``
    weight is not a projection of ``W``'s output).  ``matrix="attn.OV"`` truncates each head's
    ``W_V @ W_O`` product.
    """

    matrix: str = "mlp.W_out"
    layer: int = 0
    keep: float | Sequence[float] | None = None
    rank: int | Sequence[int] | None = None
    rule: str = DEFAULT_RULE
    svd: str = "exact"
    mode: str = "weight"

    def __post_init__(self):
        self._validate_common()
        if (self.keep is None) == (self.rank is None):
            raise ValueError("give exactly one of keep= (fraction) or rank= (integer)")
        check_choice("rank rule", self.rule, RULES)
        # one value (any int/real scalar type) or one per batch row (list, array, tensor)
        if self.keep is not None:
            keeps = as_real_list(self.keep, "keep")
            object.__setattr__(self, "keep", keeps[0] if is_scalar(self.keep) else tuple(keeps))
            for v in keeps:
                if not 0.0 <= v <= 1.0:
                    raise ValueError(f"keep must be in [0, 1], got {v!r}")
        else:
            try:
                ranks = as_int_list(self.rank, "rank")
            except ValueError as e:
                if "boolean" in str(e):
                    raise
                raise ValueError(f"rank must be a non-negative integer, got {self.rank!r}") from None
            object.__setattr__(self, "rank", ranks[0] if is_scalar(self.rank) else tuple(ranks))
            for v in ranks:
                if v < 0:
                    raise ValueError(f"rank must be a non-negative integer, got {v!r}")
        if self.svd == "laser" and self.mode != "weight":
            raise ValueError("svd='laser' writes LASER's approximate weight back: give mode='weight' "
                             "(hook mode projects the exact output, which differs)")

    @property
    def label(self) -> str:
        amount = f"keep={self.keep}" if self.keep is not None else f"rank={self.rank}"
        return f"truncate L{self.layer}.{self.matrix} {amount}"

    def describe(self):
        return {"intervention": self.label, "kind": "truncate", "matrix": self.matrix,
                "layer": self.layer, "keep": self.keep if not _is_seq(self.keep) else None,
                "rank": self.rank if not _is_seq(self.rank) else None}

    def ranks(self, adapter, max_rank: int) -> list[int]:
        if self.rank is not None:
            ranks = [int(r) for r in _as_list(self.rank)]
            for r in ranks:
                if r > max_rank:
                    raise ValueError(
                        f"rank {r} is above the maximum rank {max_rank} of L{self.layer}.{self.matrix} "
                        f"(valid: 0..{max_rank})"
                    )
            return ranks
        # rule="authors": int(keep * d) with d = the maximum rank the released code assumes:
        # d_model for weight matrices, a per-head product's own (d_head for a head's W_V W_O;
        # see the module docstring)
        d_model = adapter.d_model
        if self.rule == "authors":
            site = adapter.matrix(self.matrix, self.layer)
            d_model = site.max_rank if site.heads is not None else d_model
        return [rank_for_keep(float(k), max_rank, d_model, self.rule) for k in _as_list(self.keep)]

    def _keep_masks(self, adapter, max_rank):
        ranks = torch.tensor(self.ranks(adapter, max_rank))
        mask = torch.arange(max_rank)[None, :] < ranks[:, None]
        return mask if _is_seq(self.keep if self.keep is not None else self.rank) else mask[0]


@dataclass(frozen=True)
class RemoveComponents(_SVDEdit):
    """Remove chosen singular components (0 = largest singular value) of a weight matrix."""

    matrix: str = "mlp.W_out"
    layer: int = 0
    indices: tuple[int, ...] = ()
    svd: str = "exact"
    mode: str = "weight"

    def __post_init__(self):
        self._validate_common()
        object.__setattr__(self, "indices", tuple(as_int_list(self.indices, "indices")))
        if self.svd in ("randomized", "laser"):
            raise ValueError("RemoveComponents needs svd='exact' (arbitrary indices need the full spectrum)")

    @property
    def label(self) -> str:
        shown = ",".join(map(str, self.indices[:8])) + ("..." if len(self.indices) > 8 else "")
        return f"remove L{self.layer}.{self.matrix} components [{shown}]"

    def describe(self):
        return {"intervention": self.label, "kind": "remove", "matrix": self.matrix,
                "layer": self.layer, "n_removed": len(self.indices)}

    def _keep_masks(self, adapter, max_rank):
        mask = torch.ones(max_rank, dtype=torch.bool)
        for i in self.indices:
            if not 0 <= i < max_rank:
                raise ValueError(
                    f"component index {i} is out of range for L{self.layer}.{self.matrix}: valid 0..{max_rank - 1}"
                )
            mask[i] = False
        return mask


# ----------------------------------------------------------------------------------------
# projection of directions out of an activation
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProjectOut(Intervention):
    """Remove the span of ``directions`` ([n, d] or [d]) from a site's output with a hook:
    ``x <- x - (x Q) Q^T`` with ``Q`` an orthonormal basis of the directions.
    Sites: ``mlp_out``, ``attn_out``, ``resid_pre``, ``resid_mid`` (sequential blocks), ``resid_post`` (width d_model) and
    ``mlp_pre``, ``mlp_post`` (width d_mlp)."""

    site: str = "mlp_out"
    layer: int = 0
    directions: Tensor | None = field(default=None, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "layer", as_int(self.layer, "layer"))
        check_choice("site", self.site, tuple(s for s in SITES if s != "z"), label="valid sites")
        if self.directions is None:
            raise ValueError("ProjectOut needs directions= (a [n, d] tensor)")

    @property
    def label(self) -> str:
        d = torch.as_tensor(self.directions)
        n = 1 if d.ndim == 1 else d.shape[0]
        return f"project out {n} dir(s) from L{self.layer}.{self.site}"

    def describe(self):
        return {"intervention": self.label, "kind": "project_out", "site": self.site, "layer": self.layer}

    def _apply(self, adapter):
        name = adapter.site_hook(self.site, self.layer)
        D = torch.as_tensor(self.directions).detach().float().to(adapter.device)
        D = D.unsqueeze(0) if D.ndim == 1 else D
        if self.site in ("mlp_out", "attn_out", "resid_pre", "resid_mid", "resid_post"):
            width = adapter.d_model
        else:  # mlp_pre / mlp_post: the MLP's hidden width
            width = adapter.d_mlp
        if D.ndim != 2 or D.shape[1] != width:
            raise ValueError(
                f"directions must have shape [n, {width}] for site {self.site!r}, got {tuple(D.shape)}"
            )
        Q, _ = torch.linalg.qr(D.T)  # [d, n] orthonormal
        fn = lambda x: x - (x @ Q.to(x.dtype)) @ Q.T.to(x.dtype)
        with _hooked(adapter, name, fn):
            yield


# ----------------------------------------------------------------------------------------
# activation patching from a paired source run
# ----------------------------------------------------------------------------------------
def _positions(value, name: str):
    """None, a tuple of ints (same positions in every row) or a [seq] / [seq, m] long tensor
    (per-row positions)."""
    if value is None:
        return None
    if isinstance(value, Tensor) and value.ndim >= 1:
        if value.dtype.is_floating_point or value.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer positions, got a {value.dtype} tensor")
        if value.ndim > 2:
            raise ValueError(f"{name} must be [seq] or [seq, m] per-row positions, got shape {tuple(value.shape)}")
        if value.numel() and int(value.min()) < 0:
            raise ValueError(f"{name} holds a negative position ({int(value.min())}); positions count from 0")
        return value.detach().long().cpu()
    out = tuple(as_int_list(value, name))
    for p in out:
        if p < 0:
            raise ValueError(f"{name} holds a negative position ({p}); positions count from 0")
    if not out:
        raise ValueError(f"{name} is empty; give at least one position (or None for all)")
    return out


@dataclass(frozen=True)
class Patch(Intervention):
    """Activation patching: replace the activation at a site by its value on a **paired** source
    prompt set (sequence ``i`` of the run takes row ``i`` of the source).

    ``site`` is one of :data:`SITES` (``z`` is per head: give ``head=`` to patch one head, or
    leave it None for all heads); ``positions`` is None (every position), a position or a list of
    positions (the same in every row), or a ``[seq]`` / ``[seq, m]`` integer tensor of per-row
    positions (row ``i`` patches ``positions[i]``: e.g. the position of each prompt's subject).
    ``source_positions`` maps them to the source's positions (same form; default: the same
    positions, which needs source and run of the same length when ``positions`` is None).
    ``source`` is a :class:`~mechtrunc.core.prompts.PromptSet` or a token tensor ``[seq, pos]``.

    The source activations are recorded when the patch is applied, on the model as it is then
    (interventions applied before this one in a composition are active), in chunks of
    ``batch_size`` sequences as :func:`mechtrunc.core.runner.run_items` runs the prompts, so that a
    patch whose source is the run's own prompts is the identity, bit for bit.  Inside
    :func:`~mechtrunc.evaluate`, :func:`~mechtrunc.sweep`, :func:`~mechtrunc.attribute` the runner
    tells the patch which rows each batch holds (:func:`batch_rows`); a bare forward pass must
    run all the source's sequences at once."""

    site: str = "resid_pre"
    layer: int = 0
    source: object = field(default=None, compare=False, repr=False)
    head: int | None = None
    positions: object = field(default=None, compare=False)
    source_positions: object = field(default=None, compare=False, repr=False)
    batch_size: int = 64

    def __post_init__(self):
        object.__setattr__(self, "layer", as_int(self.layer, "layer"))
        check_choice("site", self.site, SITES, label="valid sites")
        if self.head is not None:
            object.__setattr__(self, "head", as_int(self.head, "head"))
            if self.site != "z":
                raise ValueError(f"site {self.site!r} has no heads: give head= only with site='z'")
        if self.source is None:
            raise ValueError("Patch needs source= (the paired PromptSet or a [seq, pos] token tensor)")
        tokens = getattr(self.source, "tokens", self.source)
        if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype.is_floating_point:
            raise ValueError(f"source must be a PromptSet or a [seq, pos] integer token tensor, got {type(self.source).__name__}")
        object.__setattr__(self, "positions", _positions(self.positions, "positions"))
        object.__setattr__(self, "source_positions", _positions(self.source_positions, "source_positions"))
        bs = as_int(self.batch_size, "batch_size")
        if bs < 1:
            raise ValueError(f"batch_size must be >= 1, got {bs}")
        object.__setattr__(self, "batch_size", bs)
        self._check_position_shapes()

    def _check_position_shapes(self) -> None:
        p, q = self.positions, self.source_positions
        n_src, len_src = getattr(self.source, "tokens", self.source).shape
        for name, v in (("positions", p), ("source_positions", q)):
            if isinstance(v, Tensor) and v.shape[0] != n_src:
                raise ValueError(f"{name} gives per-row positions for {v.shape[0]} rows but the source has "
                                 f"{n_src} sequences")
        if q is not None:
            if p is None:
                raise ValueError("source_positions needs positions= (the run's positions they map to)")
            width = lambda v: (v.shape[1] if v.ndim == 2 else 1) if isinstance(v, Tensor) else len(v)
            if width(p) != width(q):
                raise ValueError(f"positions and source_positions must pair up: {width(p)} position(s) vs {width(q)}")
        src_pos = q if q is not None else p
        if src_pos is not None:
            top = int(src_pos.max()) if isinstance(src_pos, Tensor) else max(src_pos)
            if top >= len_src:
                raise ValueError(f"position {top} is outside the source prompts (length {len_src}; valid 0..{len_src - 1})")

    @property
    def label(self) -> str:
        what = f"L{self.layer}H{self.head}.z" if self.head is not None else f"L{self.layer}.{self.site}"
        if self.positions is None:
            where = ""
        elif isinstance(self.positions, Tensor):
            where = " @per-row"
        else:
            where = " @" + ",".join(map(str, self.positions[:6])) + ("..." if len(self.positions) > 6 else "")
        return f"patch {what}{where}"

    def describe(self):
        pos = None if self.positions is None or isinstance(self.positions, Tensor) else ",".join(map(str, self.positions))
        return {"intervention": self.label, "kind": "patch", "site": self.site, "layer": self.layer,
                "head": self.head, "position": pos}

    def _apply(self, adapter):
        adapter.check_layer(self.layer)
        if self.head is not None:
            adapter.check_head(self.head)
        name = adapter.site_hook(self.site, self.layer)
        tokens = getattr(self.source, "tokens", self.source)
        src = record_activations(adapter, tokens, [name], batch_size=self.batch_size)[name]
        n_src = src.shape[0]
        p, q = self.positions, self.source_positions
        q = q if q is not None else p

        def fn(act):
            rows = current_rows(act.shape[0], n_src)
            b, length = act.shape[:2]
            if p is None and length != src.shape[1]:
                raise ValueError(f"the run's prompts are {length} tokens long but the source's are {src.shape[1]}: "
                                 "give positions= and source_positions= to pair positions of prompts of different lengths")
            if p is not None:
                top = int(p.max()) if isinstance(p, Tensor) else max(p)
                if top >= length:
                    raise ValueError(f"position {top} is outside the prompts (length {length}; valid 0..{length - 1})")
            act = act.clone()
            s = src[rows.to(src.device)].to(act.dtype)
            sel_t = (lambda a: a[:, :, self.head]) if self.head is not None else (lambda a: a)
            target, source = sel_t(act), sel_t(s)
            if p is None:
                target.copy_(source)
            elif isinstance(p, Tensor) or isinstance(q, Tensor):
                r = torch.arange(b)
                pt = p[rows] if isinstance(p, Tensor) else torch.tensor(p).expand(b, -1)
                qt = q[rows] if isinstance(q, Tensor) else torch.tensor(q).expand(b, -1)
                pt, qt = pt.reshape(b, -1), qt.reshape(b, -1)
                target[r[:, None], pt] = source[r[:, None], qt]
            else:
                target[:, list(p)] = source[:, list(q)]
            return act

        with _hooked(adapter, name, fn):
            yield


def _is_seq(v) -> bool:
    return v is not None and not isinstance(v, (int, float)) and not (isinstance(v, Tensor) and v.ndim == 0)


def _as_list(v) -> list:
    if v is None:
        return []
    if isinstance(v, Tensor):
        return v.flatten().tolist()
    return list(v) if _is_seq(v) else [v]
