"""analyses/lm_ioi.py, the IOI dose-response of docs/lm.md: the run configurations, the learning
curve's "tokens to 0.8" and the per-run and per-share rows, on constructed tables (the runs
themselves take minutes each; their numbers are the committed docs/data/lm_ioi_*.csv, checked
against the page by tests/test_docs_results.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lm_ioi():
    sys.path.insert(0, str(ROOT / "analyses"))
    try:
        import lm_ioi
    finally:
        sys.path.remove(str(ROOT / "analyses"))
    return lm_ioi


def test_runs_vary_only_the_generic_share_and_the_seed(lm_ioi):
    configs = {(share, seed): lm_ioi.run_config(share, seed) for share, seed in lm_ioi.RUNS}
    assert len(configs) == len(lm_ioi.SHARES) * len(lm_ioi.SEEDS) == 9
    for (share, seed), c in configs.items():
        assert c.corpus.ioi_the_share == share and c.seed == c.corpus.seed == seed
        assert (c.corpus.ioi, c.corpus.fact, c.ctx, c.batch_size, c.steps) == (0.8, 0.0, 128, 16, 1500)
    assert lm_ioi.run_name(0.25, 1) == "ioi-the0.25-s1"
    assert [seed for _, seed in lm_ioi.RUNS[:3]] == [0, 0, 0]  # every share's first seed trains first


def _curves(acc):
    steps = [0, 64, 128, 256, 512][: len(acc)]
    return pd.DataFrame({"step": steps, "prompts": "ioi/eval", "acc_vs_subject": acc, "p_answer": 0.5,
                         "p_subject": 0.1, "p_the": 0.3})


def test_tokens_to_target_count_only_a_lasting_crossing(lm_ioi):
    config = lm_ioi.run_config(0.25, 0)
    per_step = config.batch_size * config.ctx
    # crosses at 128, falls back at 256, crosses again for good at 512
    assert lm_ioi.ioi_curve(_curves([0.5, 0.6, 0.85, 0.7, 0.9]), config)["reached_tokens"].iloc[0] == 512 * per_step
    assert lm_ioi.ioi_curve(_curves([0.5, 0.8, 0.9]), config)["reached_tokens"].iloc[0] == 64 * per_step
    assert np.isnan(lm_ioi.ioi_curve(_curves([0.5, 0.9, 0.6]), config)["reached_tokens"].iloc[0])


def _best(gain):
    return pd.DataFrame({"metric": list(lm_ioi_changes()), "change": gain, "ci_low": np.array(gain) - 0.01,
                         "ci_high": np.array(gain) + 0.01, "layer": 0, "matrix": "mlp.W_in", "keep": 0.1,
                         "loss_increase": 0.05})


def lm_ioi_changes():
    return ("p_answer", "p_subject", "p_the", "acc_vs_subject")


def test_rows_and_the_interval_over_seeds(lm_ioi):
    assert lm_ioi.CHANGES == lm_ioi_changes()
    config = lm_ioi.run_config(0.5, 0)
    rows = []
    for seed, gain in ((0, [0.06, 0.0, -0.09, 0.0]), (1, [0.02, 0.001, -0.03, 0.0])):
        curve = lm_ioi.ioi_curve(_curves([0.5, 0.9, 1.0]), config).assign(run=f"r{seed}", share=0.5, seed=seed)
        rows.append(lm_ioi.run_rows(curve, _best(gain)))
    none = lm_ioi.run_rows(lm_ioi.ioi_curve(_curves([0.5, 0.9, 1.0]), config).assign(run="r2", share=0.5, seed=2),
                           pd.DataFrame())
    assert rows[0]["choice"] == "L0 mlp.W_in keep 0.1" and rows[0]["overweighting"] == pytest.approx(0.3 - 0.5)
    assert none["choice"] == "none" and none["gain_p_answer"] == 0.0  # nothing chosen: no change
    shares = lm_ioi.over_seeds(pd.DataFrame(rows + [none]))
    r = shares.iloc[0]
    assert r["n_seeds"] == 3 and r["gain_p_answer"] == pytest.approx(0.08 / 3)
    assert r["gain_p_answer_low"] <= r["gain_p_answer"] <= r["gain_p_answer_high"]
    assert r["gain_p_answer_per_seed"] == "+0.060 +0.020 +0.000"
