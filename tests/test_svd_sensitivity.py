"""SVD sensitivity: ``svd="laser"`` is the LASER paper's ``torch.svd_lowrank(q=rank,
niter=2)``, seeded; :func:`mechtrunc.studies.svd_sensitivity.svd_sensitivity` measures every
method against the exact truncation computed in float64."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import mechtrunc as mt
from mechtrunc.core.decomposition import full_svd
from mechtrunc.studies.svd_sensitivity import DISTANCE_COLUMNS, best_by_method, svd_sensitivity, weight_distances

pytestmark = pytest.mark.usefixtures("single_thread")

D, D_MLP = 32, 128  # the toy's layer-1 mlp.W_in is [D, D_MLP]


def _matrix(spectrum: torch.Tensor, m: int = D, n: int = D_MLP, seed: int = 0) -> torch.Tensor:
    """``U diag(spectrum) V^T`` ([m, n], float32) with random orthonormal U, V."""
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, m, generator=g, dtype=torch.float64))
    return ((U * spectrum) @ V.T).float()


I = torch.arange(1, D + 1, dtype=torch.float64)
SLOW = I ** -0.5  # a slowly decaying spectrum: s_i = i^(-1/2)
RANK6 = torch.where(I <= 6, I ** -0.5, torch.zeros_like(I))  # exact rank 6


def _truncated(W: torch.Tensor, method: str, rank: int) -> torch.Tensor:
    U, S, Vh = full_svd(W, method, rank=rank)
    return (U[:, :rank] * S[:rank]) @ Vh[:rank]


def test_laser_method_is_the_papers_svd_lowrank_call():
    """``full_svd(W, "laser", rank)`` is ``torch.svd_lowrank(q=rank, niter=2)`` on the nn.Linear
    layout ``W^T`` after ``torch.manual_seed(0)``, and leaves the caller's random state alone."""
    W = _matrix(SLOW)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    U, S, Vh = full_svd(W, "laser", rank=5)
    assert torch.equal(torch.rand(3), before)  # forked RNG
    torch.manual_seed(0)
    u, s, v = torch.svd_lowrank(W.T.contiguous(), q=5, niter=2)
    assert S.shape == (5,) and torch.equal(S, s) and torch.equal(U, v) and torch.equal(Vh, u.T)
    assert full_svd(W, "laser", rank=0)[1].shape == (0,)


def test_distances_are_measured_against_float64_exact_svd():
    W = _matrix(SLOW)
    for r in (1, 6, 16):
        d = weight_distances(W, _truncated(W, "exact", r), r)
        assert all(d[c] < 1e-5 for c in ("weight_distance", "subspace_rms_sin", "singular_value_error")), (r, d)
        assert abs(d["excess_error"]) < 1e-5, (r, d)
    # the reference is float64: a perturbation of 1e-4 (relative) is seen at its size
    W_r = _truncated(W.double(), "exact", 6)
    bump = 1e-4 * torch.linalg.norm(W_r) * torch.nn.functional.normalize(torch.randn_like(W_r).flatten(), dim=0).view_as(W_r)
    assert weight_distances(W, W_r + bump, 6)["weight_distance"] == pytest.approx(1e-4, rel=1e-6)


def test_laser_setting_is_far_from_exact_on_a_slowly_decaying_spectrum():
    """32 x 128, s_i = i^(-1/2), rank 6, measured (torch 2.x, CPU): weight_distance 0.351,
    subspace_rms_sin 0.393, excess_error 0.018 (asserted with a margin of about 2x), while
    torch.svd_lowrank with oversampling (the package's "randomized": q = rank + 10, niter = 4)
    is within 1e-2."""
    W = _matrix(SLOW)
    d = weight_distances(W, _truncated(W, "laser", 6), 6)
    assert d["weight_distance"] > 0.2 and d["subspace_rms_sin"] > 0.2 and d["excess_error"] > 0.005, d
    assert weight_distances(W, _truncated(W, "randomized", 6), 6)["weight_distance"] < 1e-2


def test_laser_setting_is_exact_on_an_exactly_low_rank_matrix():
    W = _matrix(RANK6)
    d = weight_distances(W, _truncated(W, "laser", 6), 6)
    assert d["weight_distance"] < 1e-5 and d["subspace_sin"] < 1e-3 and d["singular_value_error"] < 1e-5, d
    assert pd.isna(d["excess_error"])  # W has rank 6: there is no tail to compare with


@pytest.fixture(scope="module")
def toy():
    """A random toy model (its own, not conftest's) whose layer-1 W_in has the slow spectrum,
    and 64 recall test prompts."""
    cfg = mt.preset("cpu", d_model=D, seq_len=32, seed=0)
    torch.manual_seed(0)
    model = mt.ToyTransformer(cfg.model_config()).eval()
    mt.adapt(model).matrix("mlp.W_in", 1).set(_matrix(SLOW))
    prompts = mt.RecallTask(cfg.recall_config()).test_set(64, seed=10_000).to_prompts()
    return model, prompts


TRUNCATIONS = [(1, "mlp.W_in", 0.2), (1, "mlp.W_out", 0.1), mt.Truncate("mlp.W_in", layer=0, rank=3)]


def test_svd_sensitivity_table(toy):
    model, prompts = toy
    W_before = mt.adapt(model).matrix("mlp.W_in", 1).get().clone()
    df = svd_sensitivity(model, prompts, TRUNCATIONS, methods=("exact", "laser", "randomized"), rule="authors")
    assert torch.equal(mt.adapt(model).matrix("mlp.W_in", 1).get(), W_before)  # edits undone
    assert len(df) == 1 + 3 * 3 and bool(df["baseline"].iloc[0])
    rows = df[~df["baseline"]]
    assert list(rows["svd"]) == ["exact", "laser", "randomized"] * 3
    assert list(rows["rank"]) == [6] * 3 + [3] * 3 + [3] * 3  # authors: int(0.2 * 32), int(0.1 * 32)
    for c in (*DISTANCE_COLUMNS, "p_answer", "accuracy", "logit_diff_noise", "delta_p_answer", "delta_accuracy",
              "delta_logit_diff_noise"):
        assert c in df.columns, c
    exact = rows[rows["svd"] == "exact"]
    assert (exact["weight_distance"] < 1e-5).all() and (exact["delta_p_answer"] == 0).all()
    laser = rows[rows["svd"] == "laser"]
    assert laser["weight_distance"].iloc[0] > 0.2  # the slow spectrum of layer 1's W_in
    # the metric columns are those of evaluating the same Truncate in weight mode
    one = mt.evaluate(model, prompts, mt.Truncate("mlp.W_in", layer=1, keep=0.2, rule="authors", svd="laser"))
    assert laser["p_answer"].iloc[0] == pytest.approx(float(one["p_answer"].iloc[0]), abs=1e-7)
    assert laser["delta_p_answer"].iloc[0] == pytest.approx(one["p_answer"].iloc[0] - exact["p_answer"].iloc[0], abs=1e-7)

    best = best_by_method(df, "p_answer")
    assert list(best["svd"]) == ["exact", "laser", "randomized"] and best["same_as_exact"].iloc[0]
    for _, b in best.iterrows():
        sub = rows[rows["svd"] == b["svd"]]
        assert b["value"] == pytest.approx(sub["p_answer"].max())


def test_svd_sensitivity_is_seeded(toy):
    model, prompts = toy
    a = svd_sensitivity(model, prompts, TRUNCATIONS[:2]).drop(columns="seconds")
    b = svd_sensitivity(model, prompts, TRUNCATIONS[:2]).drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)
    assert (a.loc[a["svd"] == "laser", "weight_distance"] > 0.05).all()


def test_bad_inputs(toy):
    model, prompts = toy
    with pytest.raises(ValueError, match="must contain 'exact'"):
        svd_sensitivity(model, prompts, TRUNCATIONS, methods=("laser",))
    with pytest.raises(ValueError, match=r"unknown svd method 'lazer'"):
        svd_sensitivity(model, prompts, TRUNCATIONS, methods=("exact", "lazer"))
    with pytest.raises(ValueError, match=r"unknown reference 'float16'"):
        svd_sensitivity(model, prompts, TRUNCATIONS, reference="float16")
    with pytest.raises(ValueError, match="attn.OV"):
        svd_sensitivity(model, prompts, [(1, "attn.OV", 0.5)])
    with pytest.raises(ValueError, match=r"svd='laser' .* mode='weight'"):
        mt.Truncate("mlp.W_in", layer=0, keep=0.5, svd="laser", mode="hook")
    with pytest.raises(ValueError, match="RemoveComponents needs svd='exact'"):
        mt.RemoveComponents("mlp.W_in", layer=0, indices=(1,), svd="laser")
