"""The language-model study (mechtrunc.studies.lm) on the nano run."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import mechtrunc as mt
from mechtrunc.models.lm import CorpusConfig, lm_tokenizer
from mechtrunc.core.metrics import bootstrap_ci
from mechtrunc.studies import lm as S

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tok():
    return lm_tokenizer()


@pytest.fixture(scope="module")
def prompts(tok):
    return S.lm_study_prompts(tok, n=24)


@pytest.fixture(scope="module")
def final(nano_run):
    return mt.hf.load_model(nano_run[0] / "step200", local_files_only=True)


def test_select_and_eval_prompts_differ_and_use_training_names(prompts, tok):
    assert sorted(prompts) == sorted(f"{t}/{d}" for t in S.STUDY_TASKS for d in ("select", "eval"))
    held = set(CorpusConfig().heldout_names)
    for task in S.STUDY_TASKS:
        sel, ev = prompts[f"{task}/select"], prompts[f"{task}/eval"]
        assert sel.texts != ev.texts and len(sel) == len(ev) == 24
        assert not any(w in held for t in sel.texts + ev.texts for w in t.replace(",", "").split())
    assert all(" showed a " in t or " threw a " in t for t in prompts["ioi/eval"].texts)  # held-out templates


def test_learning_curves_and_the_order_of_learning_on_nano(nano_run, prompts):
    run, summary = nano_run
    assert S.run_steps(run) == summary["checkpoints"]
    curves = S.learning_curves(run, prompts, steps=[0, 16, 64, 200])
    assert len(curves) == 4 * len(prompts) and set(curves["prompts"]) == set(prompts)
    gen = curves[curves["prompts"] == "generic/eval"].set_index("step")["p_answer"]
    # at initialisation P(" the") is about 1/1306; nano has learned it after "to" by step 200
    assert gen.loc[0] < 0.01 and gen.loc[200] > 0.3
    steps = S.learning_steps(curves, the_threshold=0.35)
    assert steps["step_the"] in (64.0, 200.0) and steps["the_first"]
    assert math.isnan(steps["step_io_beats_s"])  # nano never learns IOI


def test_learning_steps_rules_on_a_made_up_history():
    rows = []
    for step, (gen, ioi_a, ioi_t, ioi_s, fa, ft) in {
        0: (0.0, 0.0, 0.0, 0.4, 0.0, 0.0), 10: (0.5, 0.1, 0.5, 0.5, 0.2, 0.1),
        20: (0.6, 0.3, 0.3, 0.8, 0.1, 0.2), 30: (0.6, 0.2, 0.25, 0.9, 0.3, 0.2), 40: (0.6, 0.5, 0.2, 0.9, 0.4, 0.1),
    }.items():
        rows += [{"step": step, "prompts": "generic/eval", "p_answer": gen},
                 {"step": step, "prompts": "ioi/eval", "p_answer": ioi_a, "p_the": ioi_t, "acc_vs_subject": ioi_s},
                 {"step": step, "prompts": "factual/eval", "p_answer": fa, "p_the": ft}]
    got = S.learning_steps(pd.DataFrame(rows), the_threshold=0.35)
    # IOI: answer > the at 20 (0.3 = 0.3 is not >), 40 only -> for good from 40; IO-vs-S >= .75 from 20
    assert got == {"step_the": 10.0, "step_ioi_beats_the": 40.0, "step_io_beats_s": 20.0,
                   "step_fact_beats_the": 30.0, "step_competition": 20.0, "the_first": True}
    with pytest.raises(ValueError, match=r"no rows for prompts ioi/select or recall/select"):
        S.learning_steps(pd.DataFrame(rows), 0.35, draw="select")


def test_grid_rows_carry_the_corpus_loss_of_their_configuration(final, prompts):
    tokens = S.corpus_tokens(CorpusConfig(), n_windows=8, ctx=64)
    assert tokens.shape == (8, 64) and torch.equal(tokens, S.corpus_tokens(CorpusConfig(), n_windows=8, ctx=64))
    some = {k: prompts[k] for k in ("ioi/select", "ioi/eval")}
    grid = S.truncation_grid(final, some, tokens, keeps=(0.0, 0.5, 1.0))
    assert len(grid) == 2 * (1 + 2 * 2 * 3)
    base = grid[grid["baseline"]]
    assert np.allclose(base["corpus_loss"], S.corpus_loss(final, tokens), atol=1e-6)
    assert np.allclose(grid.loc[grid["identity"], "corpus_loss"], base["corpus_loss"].iloc[0])
    row = grid[(grid["layer"] == 0) & (grid["matrix"] == "mlp.W_out") & (grid["keep"] == 0.0)].iloc[0]
    removed = S.corpus_loss(final, tokens, mt.Truncate("mlp.W_out", layer=0, keep=0.0))
    assert row["corpus_loss"] == pytest.approx(removed, abs=1e-5) and removed > base["corpus_loss"].iloc[0] + 0.05
    # the metrics of a row are those of evaluate() with that truncation
    ev = mt.evaluate(final, some["ioi/select"], mt.Truncate("mlp.W_out", layer=0, keep=0.0)).iloc[0]
    assert row["p_the"] == pytest.approx(ev["p_the"], abs=1e-5)

    best = S.choose_truncation(grid, "ioi", max_loss_increase=None)
    sel = grid[grid["prompts"] == "ioi/select"]
    assert best["p_answer"] == sel["p_answer"].max() or best["baseline"]
    within = S.choose_truncation(grid, "ioi", max_loss_increase=0.0)
    assert within["loss_increase"] <= 1e-9
    with pytest.raises(ValueError, match=r"no factual/select rows"):
        S.choose_truncation(grid, "factual")


def test_paired_change_is_the_mean_difference_with_an_interval(final, prompts):
    iv = mt.Truncate("mlp.W_out", layer=1, keep=0.0)
    ch = S.paired_change(final, prompts["ioi/eval"], iv).set_index("metric")
    ev_full = mt.evaluate(final, prompts["ioi/eval"]).iloc[0]
    ev_iv = mt.evaluate(final, prompts["ioi/eval"], iv).iloc[0]
    for m in ("p_answer", "p_the", "logit_diff_the"):
        assert ch.loc[m, "full"] == pytest.approx(ev_full[m], abs=1e-6)
        assert ch.loc[m, "change"] == pytest.approx(ev_iv[m] - ev_full[m], abs=1e-5)
        assert ch.loc[m, "ci_low"] <= ch.loc[m, "change"] <= ch.loc[m, "ci_high"]
    with pytest.raises(ValueError, match=r"unknown metric 'p_noise'"):
        S.paired_change(final, prompts["ioi/eval"], iv, metrics=("p_noise",))


def test_bootstrap_ci_is_seeded_and_shrinks_with_more_items():
    v = torch.arange(10.0)
    assert bootstrap_ci(v, seed=1) == bootstrap_ci(v, seed=1)
    lo, hi = bootstrap_ci(v)
    assert lo < 4.5 < hi and hi - lo < 4.0
    lo2, hi2 = bootstrap_ci(v.repeat(100))
    assert hi2 - lo2 < (hi - lo) / 5
    assert bootstrap_ci(torch.full((5,), 2.0)) == (2.0, 2.0)
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\), got 1.5"):
        bootstrap_ci(v, level=1.5)
    with pytest.raises(ValueError, match=r"at least one value"):
        bootstrap_ci(torch.zeros(0))


def test_where_the_lives_removes_each_mlp_in_turn(final, prompts):
    df = S.where_the_lives(final, prompts["generic/eval"], prompts["ioi/eval"])
    assert list(df["layer"]) == [0, 1]
    full = mt.evaluate(final, prompts["generic/eval"]).iloc[0]["p_answer"]
    assert np.allclose(df["p_the_full"], full)
    gone = mt.evaluate(final, prompts["generic/eval"], mt.Truncate("mlp.W_out", layer=0, keep=0.0)).iloc[0]
    assert df.loc[0, "p_the_mlp_removed"] == pytest.approx(gone["p_answer"], abs=1e-6)
    assert np.allclose(df["p_the_drop"], df["p_the_full"] - df["p_the_mlp_removed"])
    attr = mt.attribute(final, prompts["ioi/eval"])
    mlp1 = attr[(attr["component"] == "L1.mlp") & (attr["competitor"] == "the")]["attribution"].iloc[0]
    assert df.loc[1, "mlp_dla_io_minus_the"] == pytest.approx(mlp1, abs=1e-6)


def test_learning_curves_plot_writes_a_png(tmp_path):
    curves = pd.DataFrame([{"run": r, "step": s, "prompts": "ioi/eval", "p_answer": s / 10, "p_the": 0.5}
                           for r in ("a", "b") for s in (0, 1, 4, 10)])
    path = mt.viz.learning_curves_plot(curves, tmp_path / "c.png", {"ioi/eval": {"p_answer": "P(IO)", "p_the": "P(the)"}},
                                       rows={"first": ["a"], "second": ["b"]})
    assert path.stat().st_size > 5000
    with pytest.raises(ValueError, match=r"no curves for prompts 'factual/eval'"):
        mt.viz.learning_curves_plot(curves, tmp_path / "d.png", {"factual/eval": ["p_answer"]})


def test_end_to_end_the_headline_directions_on_the_nano_run(nano_run, tmp_path):
    """The whole study (``study_run``) on the nano model trained in this suite shows the
    headline directions of docs/lm.md's 3,000-step runs: " the" after " to" is learned first and
    IOI never; layer 0's MLP holds the association and the last MLP opposes it; the chosen IOI
    truncation removes " the" mass without giving the answer any.  Margins measured once on
    this run (24 prompts, each opening with <|endoftext|>): step_the 32; P(" the") after " to"
    0.611, drop 0.584 when layer 0's MLP is removed, -0.290 (a rise) for layer 1's; layer 0's
    direct attribution -3.16; chosen IOI edit: P(" the") -0.092, P(IO) +0.0005.  (A study-model
    variant that trains ``small`` for 256 steps was dropped to keep the suite under 15 minutes; it
    measured the same signs.)"""
    import shutil

    run = tmp_path / "nano"
    shutil.copytree(nano_run[0], run)
    t = S.study_run(run, n_prompts=24)
    steps = t["summary"].iloc[0]
    assert steps["step_the"] <= 64 and steps["the_first"] and math.isnan(steps["step_io_beats_s"])
    where = t["where"].set_index("layer")
    assert where["p_the_full"].iloc[0] > 0.45
    assert where.loc[0, "p_the_drop"] > 0.3 and where.loc[0, "mlp_dla_io_minus_the"] < -1.0
    assert where.loc[1, "p_the_drop"] < -0.1
    best = t["best"]
    ioi = best[(best["checkpoint"] == "final") & (best["task"] == "ioi")].set_index("metric")
    assert ioi.loc["p_the", "change"] < -0.05 and ioi.loc["p_answer", "change"] < 0.005
    assert (ioi["ci_low"] <= ioi["change"]).all() and (ioi["change"] <= ioi["ci_high"]).all()
    # a rerun reads the cached tables
    again = S.study_run(run, n_prompts=24)
    pd.testing.assert_frame_equal(again["best"], t["best"], check_dtype=False)
    with pytest.raises(ValueError, match=r"holds a study with other settings \(n_prompts: 24 there, 30 here\)"):
        S.study_run(run, n_prompts=30)
    # a study cached on prompts of the earlier format (no <|endoftext|> first) is refused, not mixed in
    settings = json.loads((run / "study" / "study.json").read_text())
    assert settings.pop("prompt_format") == "story"
    (run / "study" / "study.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=r"holds a study on prompts of another format \(prompt_format: None there, "
                                         r"'story' here\).*delete it and study the run again"):
        S.study_run(run, n_prompts=24)
