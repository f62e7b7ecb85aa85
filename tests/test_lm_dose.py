"""The noisy-recall dose-response of docs/lm.md ("When truncation helps"), reduced: two noise
shares, one seed, a 2-layer d 64 model, 300 steps (``analyses/lm_dose.py --smoke``).  The
directions asserted were measured once with this configuration (numbers in the comments) and hold
with a margin."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]


@pytest.fixture(scope="module")
def dose(tmp_path_factory):
    sys.path.insert(0, str(ROOT / "analyses"))
    try:
        import lm_dose
    finally:
        sys.path.remove(str(ROOT / "analyses"))
    return lm_dose.smoke(tmp_path_factory.mktemp("dose"))


def test_the_generic_association_follows_the_noise_share(dose):
    runs = dose["runs"].set_index("arm")
    low, high = runs.loc["alpha0.1"], runs.loc["alpha0.6"]
    # measured: P(" the") at the recall repeat 0.048 (alpha 0.1) and 0.460 (alpha 0.6); no truncation beat
    # the full model on the select prompts in either run (300 steps: the model does not copy the city yet)
    assert high["recall_p_the"] - low["recall_p_the"] > 0.2
    assert abs(low["recall_p_the"] - 0.1) < 0.1 and abs(high["recall_p_the"] - 0.6) < 0.2


def test_every_table_of_the_dose_response_is_there(dose):
    arms = dose["arms"]
    assert set(arms["arm"]) == {"alpha0.1", "alpha0.6"} and set(arms["task"]) == {"recall", "binding"}
    assert (arms["n_seeds"] == 1).all() and arms["gain_low"].isna().all()  # one seed: no interval over seeds
    ledger = dose["ledger"]
    assert set(ledger["run"]) == {"alpha0.1-s0", "alpha0.6-s0"}
    assert ledger.groupby("run")["step"].max().eq(300).all()
    assert set(ledger["mlp_removal_layer"]) <= {0, 1}
    for task in ("recall", "binding"):
        for _, r in dose["runs"].iterrows():
            assert r[f"{task}_gain_p_answer_low"] <= r[f"{task}_gain_p_answer"] <= r[f"{task}_gain_p_answer_high"]


def test_the_association_sits_in_the_first_mlp_and_grows_with_alpha(dose):
    final = dose["ledger"].sort_values("step").groupby("run").tail(1).set_index("run")
    # measured at step 300: removing layer 0's MLP changes P(" the") by -0.039 (alpha 0.1), -0.432 (alpha 0.6)
    assert final.loc["alpha0.6-s0", "mlp_removal_layer"] == 0
    assert final.loc["alpha0.6-s0", "mlp_removal_p_the_change"] < -0.25
    assert abs(final.loc["alpha0.1-s0", "mlp_removal_p_the_change"]) < 0.15
