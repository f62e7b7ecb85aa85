"""The one bootstrap (mechtrunc.core.metrics): one input check, one source of resamples, one percentile
interval, shared by the item, cluster, batch (gradient SNR) and seed intervals."""

import numpy as np
import pytest
import torch

from mechtrunc.core.metrics import (
    bootstrap_draws, bootstrap_intervals, bootstrap_means, check_bootstrap, percentile_interval, resample_counts,
)


@pytest.mark.parametrize("call, message", [
    (lambda: check_bootstrap(0, 0.95), "n_boot must be a positive integer, got 0"),
    (lambda: check_bootstrap(2.5, 0.95), "n_boot must be a positive integer, got 2.5"),
    (lambda: check_bootstrap(True, 0.95), "n_boot must be a positive integer, got True"),
    (lambda: check_bootstrap(-1, 0.95, allow_zero=True), r"n_boot must be a non-negative integer \(0: no intervals\), got -1"),
    (lambda: check_bootstrap(10, 1.0), r"level must be in \(0, 1\), got 1.0"),
    (lambda: check_bootstrap(10, "high"), r"level must be in \(0, 1\), got 'high'"),
    (lambda: bootstrap_draws(3, 10, stream="python"), "unknown stream 'python'; valid: torch, numpy"),
])
def test_one_check_for_every_bootstrap(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_check_returns_plain_numbers():
    assert check_bootstrap(np.int64(100), np.float32(0.5)) == (100, 0.5)
    assert check_bootstrap(0, 0.9, allow_zero=True) == (0, 0.9)


def test_draws_are_the_seeded_streams():
    assert torch.equal(bootstrap_draws(7, 50, seed=3),
                       torch.randint(0, 7, (50, 7), generator=torch.Generator().manual_seed(3)))
    assert np.array_equal(bootstrap_draws(5, 40, seed=2, stream="numpy").numpy(),
                          np.random.default_rng(2).integers(0, 5, size=(40, 5)))
    idx = bootstrap_draws(6, 30, seed=1)
    counts = resample_counts(idx)
    assert counts.shape == (30, 6) and counts.dtype == torch.float64 and (counts.sum(1) == 6).all()
    assert torch.equal(counts[4], torch.bincount(idx[4], minlength=6).double())


def test_means_and_intervals_are_built_from_the_shared_pieces():
    v = torch.randn(3, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    counts = resample_counts(bootstrap_draws(11, 200, seed=5))
    means = bootstrap_means(v, n_boot=200, seed=5)
    assert torch.equal(means, v @ counts.T / 11)
    lo, hi = bootstrap_intervals(v, n_boot=200, level=0.9, seed=5)
    a = (1 - 0.9) / 2
    q = torch.quantile(means, torch.tensor([a, 1 - a], dtype=torch.float64), dim=1)
    assert torch.equal(lo, q[0]) and torch.equal(hi, q[1]) and (lo < v.mean(1)).all() and (v.mean(1) < hi).all()


def test_percentile_interval_can_leave_out_nan_resamples():
    s = torch.tensor([1.0, float("nan"), 3.0, 2.0, float("nan"), 4.0], dtype=torch.float64)
    lo, hi = percentile_interval(s, 0.5, skip_nan=True)
    ok = torch.quantile(torch.tensor([1.0, 3.0, 2.0, 4.0], dtype=torch.float64),
                        torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert (float(lo), float(hi)) == (float(ok[0]), float(ok[1])) == (1.75, 3.25)
    assert torch.isnan(percentile_interval(s, 0.5)[0])  # without skip_nan a NaN resample poisons the interval
    assert torch.isnan(percentile_interval(torch.full((4,), float("nan")), 0.9, skip_nan=True)[0])


def test_seed_intervals_draw_from_the_numpy_stream():
    from mechtrunc.studies.dynamics import paired_seed_intervals, seed_interval

    v, w = np.array([3.0, 5.0, 4.0, 9.0]), np.array([1.0, 2.0, 2.0, 4.0])
    idx = np.random.default_rng(0).integers(0, 4, size=(500, 4))
    means = v[idx].mean(1)
    assert seed_interval(v, n_boot=500) == {"n": 4, "mean": 5.25, "lo": float(np.quantile(means, 0.025)),
                                            "hi": float(np.quantile(means, 0.975))}
    d = paired_seed_intervals(v, w, n_boot=500).set_index("quantity")
    diff = v[idx].mean(1) - w[idx].mean(1)
    assert d.loc["a - b", "estimate"] == 3.0
    assert (d.loc["a - b", "lo"], d.loc["a - b", "hi"]) == (np.nanquantile(diff, 0.025), np.nanquantile(diff, 0.975))
    with pytest.raises(ValueError, match="n_boot must be a positive integer, got 0"):
        seed_interval(v, n_boot=0)
