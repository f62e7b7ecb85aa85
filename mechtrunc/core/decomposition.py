"""The one decomposition service: singular value decompositions of weight matrices, for the
interventions (:class:`~mechtrunc.Truncate`, :class:`~mechtrunc.RemoveComponents`) and the grid
engine (:mod:`mechtrunc.core.engine`), with an optional on-disk cache keyed by the weight's hash.

- :func:`full_svd`: ``U, S, Vh`` (``W = U diag(S) Vh``), exact (LAPACK / cuSOLVER), randomized,
  or ``"laser"``: the LASER paper's own call (``torch.svd_lowrank(q=rank, niter=2)``), seeded.
- :func:`truncation_basis`: the top-``rank`` singular basis of the *smaller* side of ``W``
  only (what a truncation needs), by a float64 Gram eigendecomposition or an SVD driver.
- :class:`SVDCache`: :func:`truncation_basis` results kept in a directory as
  ``{sha1 of the weight and method}.pt`` files, so a rerun on the same weights computes nothing
  and any change of a weight invalidates its entry.

:meth:`mechtrunc.core.adapters.ModelAdapter.svd` and :meth:`~mechtrunc.core.adapters.ModelAdapter.basis`
are the per-model entry points (they know which parameter a matrix name means).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor

from mechtrunc._checks import check_choice
from mechtrunc._choices import SVD_METHODS

__all__ = ["SVD_METHODS", "BASIS_METHODS", "LASER_NITER", "SVD_SEED", "full_svd", "truncation_basis", "SVDCache", "weight_key"]

#: the LASER paper's setting of ``torch.svd_lowrank`` (pratyushasharma/laser,
#: ``laser/matrix_utils.py: do_low_rank``): ``q`` = the kept rank (no oversampling), ``niter=2``
LASER_NITER = 2
#: the seed of the randomized methods (``torch.manual_seed`` in a forked RNG: runs repeat, and
#: the caller's random state is untouched)
SVD_SEED = 0
#: methods of :func:`truncation_basis`
BASIS_METHODS = ("gram", "gram32", "gesdd", "gesvd", "gesvdj", "gesvda")


def full_svd(W: Tensor, method: str = "exact", rank: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``U, S, Vh`` of ``W`` (``[d_in, d_out]``, used as ``x @ W``) in float32 (float64 weights
    keep float64).

    - ``"exact"``: ``torch.linalg.svd``, every component.
    - ``"randomized"``: ``torch.svd_lowrank(q=rank + 10, niter=4)`` (seeded): the top
      ``rank + 10`` components, accurate enough to stand in for ``"exact"``.
    - ``"laser"``: exactly the LASER paper's truncation (``do_low_rank`` in the authors' code):
      ``torch.svd_lowrank(q=rank, niter=2)`` in float32 on the matrix in ``nn.Linear`` layout
      (``[d_out, d_in]``, the parameter the authors pass), seeded with :data:`SVD_SEED`; ``rank``
      components, an approximation of the top ``rank`` whose error grows as the spectrum flattens.
      ``U diag(S) Vh`` is the weight LASER writes back.
    """
    check_choice("svd method", method, SVD_METHODS, quote=True)
    Wf = W if W.dtype == torch.float64 else W.float()
    if method == "exact":
        return torch.linalg.svd(Wf, full_matrices=False)
    if method == "laser":
        Wf = W.float()  # the authors cast to float32 whatever the weight's dtype
        q, niter = min(min(Wf.shape), rank if rank is not None else 1), LASER_NITER
        if q == 0:  # nothing kept (svd_lowrank needs q >= 1)
            m, n = Wf.shape
            return Wf.new_zeros(m, 0), Wf.new_zeros(0), Wf.new_zeros(0, n)
    else:
        q, niter = min(min(Wf.shape), (rank or 1) + 10), 4
    with torch.random.fork_rng(devices=[Wf.device] if Wf.is_cuda else []):
        torch.manual_seed(SVD_SEED)
        if method == "laser":  # nn.Linear layout: W^T = U' S V'^T, so W = V' S U'^T
            U_, S, V_ = torch.svd_lowrank(Wf.T.contiguous(), q=q, niter=niter)
            return V_, S, U_.T
        U, S, V = torch.svd_lowrank(Wf, q=q, niter=niter)
    return U, S, V.T


def truncation_basis(W: Tensor, rank: int, method: str = "gram") -> tuple[Tensor, Tensor]:
    """Top-``rank`` singular basis of the smaller side of ``W`` (``[d_in, d_out]``, used as
    ``x @ W``) and the singular values: ``(Q [min(d_in, d_out), rank], S [rank])``, float32,
    ``Q`` the left singular vectors when ``d_in <= d_out``, else the right ones.  The rank-``k``
    truncation is ``Q_k Q_k^T W`` (left) or ``W Q_k Q_k^T`` (right).

    Methods: ``"gram"`` eigendecomposition of the smaller Gram matrix ``W W^T`` (or ``W^T W``)
    in float64 (default; on the 2-core CPU about 3x faster than float32 LAPACK gesdd at
    768 x 3072 and more accurate, see docs/benchmarks.md); ``"gram32"`` the same Gram matrix
    solved in float32 (faster on GPUs); ``"gesdd"`` ``torch.linalg.svd`` (LAPACK gesdd on CPU,
    cuSOLVER's default on CUDA); ``"gesvd"``, ``"gesvdj"``, ``"gesvda"`` cuSOLVER drivers."""
    check_choice("svd_method", method, BASIS_METHODS)
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


def weight_key(W: Tensor, method: str) -> str:
    """SHA-1 of a weight's shape, dtype and bytes, and a method name."""
    h = hashlib.sha1()
    t = W.detach().contiguous().cpu()
    h.update(f"{tuple(t.shape)}|{t.dtype}|{method}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())
    return h.hexdigest()


class SVDCache:
    """:func:`truncation_basis` results per matrix, kept in a directory as ``{sha1 of weight and
    method}.pt`` files (``directory=None``: nothing kept).  ``n_computed``/``n_loaded`` count
    decompositions computed and read from disk."""

    def __init__(self, directory=None, method: str = "gram"):
        check_choice("svd_method", method, BASIS_METHODS)
        self.dir = Path(directory) if directory is not None else None
        self.method = method
        self.n_computed = 0
        self.n_loaded = 0

    def get(self, W: Tensor, rank: int) -> tuple[Tensor, Tensor]:
        """``(Q, S)`` of :func:`truncation_basis` for ``x @ W`` (``W`` as ``[d_in, d_out]``)."""
        path = None
        if self.dir is not None:
            path = self.dir / f"{weight_key(W, self.method)}.pt"
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
