"""The minimal model (mechtrunc.studies.dynamics.minimal): the FF wiring options against their
closed-form gradients, the options that separate the size of the gradient signal from its
noise (per-memory learning rates, a large batch for W_OV's gradient, noise injected along D_F),
the same-criterion event detector, W_OV's components and entries, and the closed forms of the
scaling tables against measurements.  Float64, tiny models: fast."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

import mechtrunc as mt
from mechtrunc.studies.dynamics import (
    MinimalConfig, MinimalModel, copy_directions, equal_signal_lr_scale, ff_signal_std_at_init, gradient_snr,
    learning_events, ov_batch_gradient, ov_entry_matrix, ov_gradient_share, ov_noise_components,
    ov_signal_closed_form, signal_closed_forms, train_minimal,
)
from mechtrunc.studies.dynamics.minimal import _optimizer
from mechtrunc.core.metrics import masked_cross_entropy
from mechtrunc.tasks.recall import RecallTask

from helpers import tiny_minimal_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


_tiny = tiny_minimal_config


def _residual(model, inputs):
    prev = torch.nn.functional.pad(model.W_prev[inputs[:, :-1]], (0, 0, 1, 0))
    return model.W_E[inputs] + prev


def _closed_ov_at_zero(model, batch):
    """-grad W_OV at W = 0: mean_i rbar_i^T (e_y - 1/V) W_U^T (uniform attention and softmax)."""
    r = _residual(model, batch.inputs)
    rows, pos = batch.loss_mask.nonzero(as_tuple=True)
    y = batch.targets[rows, pos]
    V = model.d_vocab
    err = torch.nn.functional.one_hot(y, V).double() - 1.0 / V
    run_mean = r.cumsum(1) / torch.arange(1, r.shape[1] + 1, dtype=torch.float64)[None, :, None]
    return (run_mean[rows, pos].T @ (err @ model.W_U.T)) / len(y)


# ------------------------------------------------------------------------------------------
# FF wiring
# ------------------------------------------------------------------------------------------
def test_default_wiring_is_parallel_and_the_options_are_validated():
    assert MinimalConfig().ff == "parallel"
    with pytest.raises(ValueError, match=r"unknown ff 'serial'; valid: parallel, sequential, none"):
        MinimalConfig(ff="serial")
    with pytest.raises(ValueError, match=r"unknown lr_scale memory 'W_Q'; valid: W_F, W_OV, W_KQ"):
        MinimalConfig(lr_scale={"W_Q": 2.0})
    with pytest.raises(ValueError, match=r"lr_scale\['W_F'\] must be a number > 0"):
        MinimalConfig(lr_scale={"W_F": 0})
    with pytest.raises(ValueError, match="ff_grad_noise must be a number >= 0"):
        MinimalConfig(ff_grad_noise=-1)
    with pytest.raises(ValueError, match="ov_gradient_batch must be an integer >= 0"):
        MinimalConfig(ov_gradient_batch=-5)
    with pytest.raises(ValueError, match="ff='none' has no FF to train"):
        MinimalConfig(ff="none", ff_grad_noise=1.0)


def test_no_ff_keeps_W_F_exactly_zero_and_its_ov_gradient_is_the_closed_form():
    cfg = _tiny(ff="none", steps=12, eval_every=6, lr=5.0)
    model, task = MinimalModel(cfg), RecallTask(cfg.recall_config())
    batch = task.sample(8, seed=4)
    assert torch.allclose(ov_batch_gradient(model, batch), -_closed_ov_at_zero(model, batch), atol=1e-12)
    res = train_minimal(cfg)
    b = res.model.blocks[0]
    assert float(b.mlp.W_F.detach().abs().max()) == 0.0  # not trained
    assert float(b.attn.W_OV.detach().abs().max()) > 0.0  # attention did train
    # removing the (empty) FF changes nothing
    assert (res.history["full_p_noise"] == res.history["ff_removed_p_noise"]).all()


def test_sequential_ff_reads_r_plus_attention_output():
    cfg_p, cfg_s = _tiny(alpha=0.4), _tiny(alpha=0.4, ff="sequential")
    mp, ms = MinimalModel(cfg_p), MinimalModel(cfg_s)
    task = RecallTask(cfg_p.recall_config())
    batch = task.sample(8, seed=5)

    def grads(model):
        loss = masked_cross_entropy(model(batch.inputs), batch.targets, batch.loss_mask)
        b = model.blocks[0]
        return torch.autograd.grad(loss, [b.mlp.W_F, b.attn.W_OV])

    # at W = 0 the attention output is 0: the two wirings have the same gradients
    for gp, gs in zip(grads(mp), grads(ms)):
        assert torch.allclose(gp, gs, atol=1e-14)
    # with W_OV, W_F != 0: -grad W_F = mean_i x_i^T (e_y - softmax_i) W_U^T with x = r + o (sequential)
    g = torch.Generator().manual_seed(0)
    W_OV, W_F = torch.randn(16, 16, generator=g, dtype=torch.float64), torch.randn(16, 16, generator=g, dtype=torch.float64) * 0.3
    for m in (mp, ms):
        with torch.no_grad():
            m.blocks[0].attn.W_OV.copy_(W_OV)
            m.blocks[0].mlp.W_F.copy_(W_F)
    r = _residual(ms, batch.inputs)
    o = (r.cumsum(1) / torch.arange(1, r.shape[1] + 1, dtype=torch.float64)[None, :, None]) @ W_OV  # W_KQ = 0
    rows, pos = batch.loss_mask.nonzero(as_tuple=True)
    y = batch.targets[rows, pos]
    V = ms.d_vocab
    for model, x, f in ((ms, r + o, (r + o) @ W_F), (mp, r, r @ W_F)):
        probs = ((o + f) @ model.W_U)[rows, pos].softmax(-1)
        err = torch.nn.functional.one_hot(y, V).double() - probs
        closed = -(x[rows, pos].T @ (err @ model.W_U.T)) / len(y)
        assert torch.allclose(grads(model)[0], closed, atol=1e-7)  # the loss is taken in float32
    assert not torch.allclose(grads(ms)[0], grads(mp)[0], atol=1e-6)  # once W_OV != 0 they differ


# ------------------------------------------------------------------------------------------
# separating the signal's size from its noise
# ------------------------------------------------------------------------------------------
def test_equal_signal_learning_rates_equalise_the_first_steps_mean_movement():
    cfg = _tiny(alpha=0.5)
    scale = equal_signal_lr_scale(cfg, n_batches=12, seed=3)
    assert set(scale) == {"W_F"} and 0 < scale["W_F"] < 1  # the FF's mean signal is the larger
    cfg_eq = _tiny(alpha=0.5, lr_scale=scale)
    task = RecallTask(cfg.recall_config())
    gen = torch.Generator().manual_seed(1_000_003 * 3 + 17)  # gradient_snr's batches at seed 3
    moves = {"W_F": 0.0, "W_OV": 0.0}
    for _ in range(12):  # one optimizer step from zero per batch, through the training optimizer
        batch = task.sample(cfg.batch_size, generator=gen)
        model = MinimalModel(cfg_eq)
        D = copy_directions(model, task)
        opt = _optimizer(cfg_eq, model)
        masked_cross_entropy(model(batch.inputs), batch.targets, batch.loss_mask).backward()
        opt.step()
        b = model.blocks[0]
        moves["W_F"] += float((b.mlp.W_F.detach() * D["W_F"]).sum()) / 12
        moves["W_OV"] += float((b.attn.W_OV.detach() * D["W_OV"]).sum()) / 12
    assert moves["W_F"] == pytest.approx(moves["W_OV"], rel=1e-10)
    assert moves["W_OV"] > 0
    up = equal_signal_lr_scale(cfg, n_batches=12, seed=3, scale="W_OV")
    assert up["W_OV"] == pytest.approx(1 / scale["W_F"], rel=1e-12)


def test_population_ov_gradient_is_the_closed_form_on_its_own_batch():
    """ov_gradient_batch: the first step moves W_OV by lr times the closed-form gradient of the
    large batch drawn for it (not the training batch's)."""
    cfg = _tiny(ov_gradient_batch=256, steps=1, eval_every=1, lr=2.0)
    res = train_minimal(cfg)
    model0, task = MinimalModel(cfg), RecallTask(cfg.recall_config())
    big = task.sample(256, generator=torch.Generator().manual_seed(cfg.seed + 60_000))
    expected = 2.0 * _closed_ov_at_zero(model0, big)
    assert torch.allclose(res.model.blocks[0].attn.W_OV.detach(), expected, atol=1e-12)
    # and the large batch's signal is its closed form, near the numerical expectation
    sig = float((expected / 2.0 * copy_directions(model0, task)["W_OV"]).sum())
    assert sig == pytest.approx(ov_signal_closed_form(big, model0.d_vocab), abs=1e-12)
    cf = signal_closed_forms(cfg, n_batches=200)
    assert abs(sig - cf["ov_mean"]) < 4 * cf["ov_std"] * math.sqrt(cfg.batch_size / 256)


def test_injected_ff_noise_is_along_D_F_with_the_requested_std():
    k = 3.0
    base, noisy = _tiny(steps=1, eval_every=1, lr=1.0), _tiny(steps=1, eval_every=1, lr=1.0, ff_grad_noise=k)
    s = ff_signal_std_at_init(noisy)
    model, task = MinimalModel(base), RecallTask(base.recall_config())
    assert s == pytest.approx(float(gradient_snr(model, task, 8, 32, seed=40_000).set_index("memory").loc["W_F", "std"]))
    diff = train_minimal(noisy).model.blocks[0].mlp.W_F.detach() - train_minimal(base).model.blocks[0].mlp.W_F.detach()
    xi = float(torch.randn((), generator=torch.Generator().manual_seed(noisy.seed + 50_000), dtype=torch.float64))
    D = copy_directions(model, task)["W_F"]
    assert torch.allclose(diff, k * s * xi * D, atol=1e-12)  # one draw, along D_F only, scaled by k * s
    # the draws are standard normal: over many steps the added signal has std k * s
    g = torch.Generator().manual_seed(noisy.seed + 50_000)
    draws = torch.stack([torch.randn((), generator=g, dtype=torch.float64) for _ in range(4000)])
    assert float((k * s * draws).std()) == pytest.approx(k * s, rel=0.05)


# ------------------------------------------------------------------------------------------
# events under one criterion; W_OV's entries and components
# ------------------------------------------------------------------------------------------
def test_learning_events_under_each_criterion():
    h = pd.DataFrame({"step": [0, 10, 20, 30, 40],
                      "full_p_noise": [0.01, 0.3, 0.5, 0.5, 0.5],
                      "attn_removed_p_noise": [0.01, 0.2, 0.3, 0.6, 0.7],
                      "attn_removed_argmax_noise": [0.0, 0.2, 0.4, 1.0, 1.0],
                      "ff_removed_accuracy": [0.0, 0.1, 0.6, 0.9, 1.0],
                      "full_p_answer": [0.0, 0.05, 0.2, 0.3, 0.55]})
    d = learning_events(h, 0.5)
    assert (d["step_ff"], d["step_attn"], d["ff_first"]) == (10.0, 20.0, True)
    p = learning_events(h, 0.5, "probability")
    assert (p["step_ff"], p["step_attn"], p["ff_first"]) == (10.0, 30.0, True)  # thresholds 0.25, 0.25
    p = learning_events(h, 0.2, "probability")  # thresholds 0.1 and 0.4
    assert (p["step_ff"], p["step_attn"]) == (10.0, 40.0)
    a = learning_events(h, 0.5, "argmax")
    assert (a["step_ff"], a["step_attn"], a["ff_first"]) == (30.0, 20.0, False)
    assert math.isnan(learning_events(h.assign(full_p_answer=0.1), 0.5, "probability")["step_attn"])
    with pytest.raises(ValueError, match="unknown criterion 'median'; valid: default, probability, argmax"):
        learning_events(h, 0.5, "median")


def test_ov_entries_gradient_share_and_components():
    cfg = _tiny(alpha=0.5, ff="none")
    model, task = MinimalModel(cfg), RecallTask(cfg.recall_config())
    V, noise = model.d_vocab, task.config.noise_id
    trig = int(task.fixed_triggers[0])
    # the entry matrix reads W in the embeddings' basis
    W = torch.zeros(16, 16, dtype=torch.float64)
    W += 2.5 * model.W_E[trig][:, None] * model.W_U[:, noise][None, :]
    M = ov_entry_matrix(model, W)
    assert M[trig, noise] == pytest.approx(2.5) and float(M.abs().sum()) == pytest.approx(2.5)
    # at init the mean gradient's trigger->noise share is entry^2 / ||G||^2 of that mean gradient
    sh = ov_gradient_share(model, task, batch_size=8, n_batches=6, seed=1)
    gen = torch.Generator().manual_seed(1_000_003 * 1 + 29)
    G = sum(_closed_ov_at_zero(model, task.sample(8, generator=gen)) for _ in range(6)) / 6
    assert sh["entry"] == pytest.approx(float(ov_entry_matrix(model, G)[trig, noise]), rel=1e-6)  # float32 loss
    assert sh["share"] == pytest.approx(float(ov_entry_matrix(model, G)[trig, noise]) ** 2 / float(G.pow(2).sum()), rel=1e-5)
    # components of a trained W_OV add up to attention's push on the noise margin
    res = train_minimal(_tiny(alpha=0.5, ff="none", steps=20, eval_every=20, lr=5.0))
    test = task.test_set(16, seed=cfg.seed + 10_000).to_prompts()
    comp = ov_noise_components(res.model, test)
    logits = mt.item_logits(res.model, test, batch_size=16).double()  # no FF: all from attention
    margin = logits[:, noise] - (logits.sum(-1) - logits[:, noise]) / (V - 1)
    assert comp["noise_push"].sum() == pytest.approx(float(margin.mean()), abs=1e-6)
    assert comp["noise_share"].sum() == pytest.approx(1.0)
    assert (comp["sigma"].diff().dropna() <= 1e-12).all()


# ------------------------------------------------------------------------------------------
# the scaling tables' closed forms
# ------------------------------------------------------------------------------------------
def test_closed_forms_of_the_signals_match_measurements():
    cfg = _tiny(alpha=0.3, seq_len=32)
    model, task = MinimalModel(cfg), RecallTask(cfg.recall_config())
    n = 160
    df = gradient_snr(model, task, 8, n, seed=2).set_index("memory")
    cf = signal_closed_forms(cfg, n_batches=1000, seed=5)
    for mem, key in (("W_F", "ff"), ("W_OV", "ov")):
        se = df.loc[mem, "std"] / math.sqrt(n)
        assert abs(df.loc[mem, "mean"] - cf[f"{key}_mean"]) < 4 * se, mem
        # the std of an std estimate from n samples is about std / sqrt(2 (n - 1))
        assert df.loc[mem, "std"] == pytest.approx(cf[f"{key}_std"], rel=4 / math.sqrt(2 * (n - 1)) + 0.05), mem
    # the measured OV mean is exactly the mean of the per-batch closed form over the same batches
    gen = torch.Generator().manual_seed(1_000_003 * 2 + 17)
    ov = [ov_signal_closed_form(task.sample(8, generator=gen), model.d_vocab) for _ in range(n)]
    assert df.loc["W_OV", "mean"] == pytest.approx(sum(ov) / n, abs=1e-9)


def test_theory_script_assumptions_part(tmp_path):
    """analyses/dynamics_theory.py (the numbers of docs/theory.md 2.8), a short run into tmp_path:
    both wirings at both learning rates, the events under the three criteria."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "analyses" / "dynamics_theory.py"), "--only", "assumptions",
                          "--signal-seeds", "0", "--assumption-steps", "20", "--data", str(tmp_path),
                          "--figures", str(tmp_path)], capture_output=True, text=True, cwd=root,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    S = pd.read_csv(tmp_path / "theory_assumptions_summary.csv")
    assert list(S["variant"]) == ["parallel, lr 2.5", "sequential, lr 2.5", "parallel, lr 1", "sequential, lr 1"]
    for c in ("default", "probability", "argmax"):
        assert {f"{c}_ff", f"{c}_attn", f"{c}_ff_first"} <= set(S.columns)
    assert (S["default_ff"] == 10).all()  # the FF's P(noise) >= alpha/2 at the first evaluation
    assert (tmp_path / "theory_assumptions.png").exists()


# ------------------------------------------------------------------------------------------
# the noise component of W_OV: chosen on a selection batch, tracked over training
# ------------------------------------------------------------------------------------------
def test_selection_set_is_a_separate_seeded_batch():
    task = RecallTask(_tiny().recall_config())
    sel = mt.dynamics.selection_set(task, 16, seed=3)
    assert torch.equal(sel.inputs, task.test_set(16, seed=3 + mt.dynamics.SELECTION_SEED_OFFSET).inputs)
    assert not torch.equal(sel.inputs, task.test_set(16, seed=3 + 10_000).inputs)  # not the clean test set
    with pytest.raises(ValueError, match=r"n \(selection sequences\) must be an integer >= 1, got 0"):
        mt.dynamics.selection_set(task, 0, seed=3)


def test_ov_noise_recorder_tracks_the_component_and_changes_nothing_else():
    cfg = _tiny(alpha=0.5, ff="none", steps=30, eval_every=10, lr=5.0)
    task = RecallTask(cfg.recall_config())
    select = mt.dynamics.selection_set(task, 16, cfg.seed).to_prompts()
    plain = train_minimal(cfg)
    rec = train_minimal(cfg, callback=mt.dynamics.OVNoiseRecorder(select))
    shared = [c for c in plain.history.columns if c != "seconds"]
    pd.testing.assert_frame_equal(rec.history[shared], plain.history[shared])  # the recorder trains nothing
    h = rec.history.set_index("step")
    assert math.isnan(h.loc[0, "ov_noise_component"])  # W_OV = 0: no component yet
    comp = ov_noise_components(rec.model, select)
    idx = mt.dynamics.ov_noise_component(comp)
    assert idx == int(comp["noise_push"].idxmax()) and h.loc[30, "ov_noise_component"] == idx
    assert h.loc[30, "ov_noise_share"] == pytest.approx(float(comp.loc[idx, "noise_share"]))
    assert h.loc[30, "ov_top_sigma_over_median"] == pytest.approx(float(comp.loc[0, "sigma_over_median"]))
    assert mt.dynamics.ov_noise_component(comp.assign(sigma=0.0)) is None


def test_theory_script_noff_part_chooses_the_component_off_the_test_set(tmp_path):
    """analyses/dynamics_theory.py --only noff (docs/theory.md 2.5), a short run: W_OV's noise
    component is chosen on the selection batch at every evaluation, the removal is evaluated on
    the held-out test set, and its effect is summarised over seeds with paired intervals."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "analyses" / "dynamics_theory.py"), "--only", "noff",
                          "--seeds", "0", "1", "--noff-steps", "50", "--ff-steps", "20", "--jobs", "1",
                          "--data", str(tmp_path), "--figures", str(tmp_path)], capture_output=True, text=True,
                         cwd=root, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    H = pd.read_csv(tmp_path / "theory_noff_history.csv")
    W = pd.read_csv(tmp_path / "theory_noff_where.csv").set_index("seed")
    T = pd.read_csv(tmp_path / "theory_noff_truncation.csv")
    R = pd.read_csv(tmp_path / "theory_noff_removal.csv").set_index("metric")
    noff = H[H["variant"] == "no FF"]
    assert noff[noff["step"] > 0]["ov_noise_component"].notna().all()
    # seed 0 again, in-process: the component is the selection batch's, the numbers the test set's
    cfg = MinimalConfig(ff="none", steps=50, eval_every=50, seed=0)
    model = train_minimal(cfg).model
    task = RecallTask(cfg.recall_config())
    select = mt.dynamics.selection_set(task, 256, 0).to_prompts()
    test = task.test_set(256, seed=10_000).to_prompts()
    comp_sel, comp_test = ov_noise_components(model, select), ov_noise_components(model, test)
    top = mt.dynamics.ov_noise_component(comp_sel)
    assert W.loc[0, "top_noise_component"] == top == noff[(noff["seed"] == 0) & (noff["step"] == 50)]["ov_noise_component"].item()
    # its share is the selection batch's, not the test set's
    assert W.loc[0, "noise_share"] == pytest.approx(float(comp_sel.loc[top, "noise_share"]), abs=1e-6)
    assert abs(float(comp_sel.loc[top, "noise_share"]) - float(comp_test.loc[top, "noise_share"])) > 1e-5
    cut = mt.evaluate(model, test, mt.RemoveComponents("attn.W_O", layer=0, indices=(top,))).iloc[0]
    row = T[(T["seed"] == 0) & (T["variant"] == "W_OV noise component removed")].iloc[0]
    assert row["accuracy"] == pytest.approx(float(cut["accuracy"]), abs=1e-6)
    assert row["p_noise"] == pytest.approx(float(cut["p_noise"]), abs=1e-6)
    # the summary over seeds: paired change = mean(removed) - mean(full), seeds counted
    full = T[T["variant"] == "full model"].set_index("seed")
    gone = T[T["variant"] == "W_OV noise component removed"].set_index("seed")
    for m in ("accuracy", "p_noise", "p_answer"):
        assert R.loc[m, "change"] == pytest.approx(gone[m].mean() - full[m].mean())
        assert R.loc[m, "change_low"] <= R.loc[m, "change"] <= R.loc[m, "change_high"]
        assert R.loc[m, "n_up"] == int((gone[m] > full[m]).sum()) and R.loc[m, "n_seeds"] == 2
    assert str(R.loc["accuracy", "seeds"]) == "0 1"
    assert (tmp_path / "theory_noff.png").exists()
