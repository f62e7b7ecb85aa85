"""Training the toy model: presets, determinism, resumption from a checkpoint (bit-identical to an
uninterrupted run), configuration checks, and one slow end-to-end run of the ``cpu`` preset."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

import mechtrunc as mt
from helpers import dir_snapshot
from mechtrunc.models.toy_training import (
    PRESETS, TrainConfig, evaluate_toy, load_run, preset, train, trigger_margin,
)


pytestmark = pytest.mark.usefixtures("single_thread")


def _tiny(**kw) -> TrainConfig:
    args = dict(d_model=16, seq_len=32, batch_size=16, steps=12, eval_every=6, test_size=16, lr=3e-3, seed=0)
    args.update(kw)
    return preset("cpu", **args)


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _history_wo_time(h: pd.DataFrame) -> pd.DataFrame:
    return h.drop(columns=["seconds"]).reset_index(drop=True)


# ------------------------------------------------------------------------------------------
# presets and configuration
# ------------------------------------------------------------------------------------------
def test_presets():
    assert set(PRESETS) == {"paper", "cpu"}
    p = preset("paper")
    assert (p.d_model, p.seq_len, p.batch_size, p.optimizer, p.lr, p.momentum, p.weight_decay, p.steps,
            p.alpha, p.k, p.noise_token, p.n_layers, p.ffn) == (256, 256, 512, "sgd", 0.03, 0.9, 1e-4, 5000,
                                                                0.5, 1, 2, 2, "relu")
    assert p.preset == "paper"
    c = preset("cpu")
    assert (c.d_model, c.seq_len, c.batch_size, c.optimizer, c.lr, c.steps, c.alpha) == (
        64, 128, 64, "adamw", 1e-3, 1000, 0.5)
    assert c.preset == "cpu"
    # overrides; None values are ignored
    o = preset("cpu", steps=7, lr=None)
    assert o.steps == 7 and o.lr == 1e-3
    mc = o.model_config()
    assert (mc.d_model, mc.n_ctx, mc.d_vocab, mc.n_layers) == (64, 128, 65, 2)
    assert preset("cpu", noise_token="extra").model_config().d_vocab == 66
    rc = o.recall_config()
    assert (rc.alpha, rc.k, rc.seq_len, rc.noise_id) == (0.5, 1, 128, 2)


def test_unknown_preset_names_valid_ones():
    with pytest.raises(ValueError, match=r"unknown preset 'nope'; valid presets: paper, cpu"):
        preset("nope")


def test_unknown_override():
    with pytest.raises(ValueError, match=r"unknown training option 'learning_rate'"):
        preset("cpu", learning_rate=0.1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(optimizer="rmsprop"), r"unknown optimizer 'rmsprop'; valid: sgd, adam, adamw"),
        (dict(precision="fp16"), r"unknown precision 'fp16'; valid: fp32, tf32, bf16"),
        (dict(steps=0), r"steps must be an integer >= 1, got 0"),
        (dict(steps=2.5), r"steps must be an integer, got 2\.5"),
        (dict(batch_size=0), r"batch_size must be an integer >= 1, got 0"),
        (dict(eval_every=0), r"eval_every must be an integer >= 1, got 0"),
        (dict(lr=0.0), r"lr must be a number > 0, got 0\.0"),
        (dict(momentum=-1), r"momentum must be a number >= 0, got -1"),
        (dict(alpha=1.5), r"alpha must be in \[0, 1\], got 1\.5"),
        (dict(k=99), r"k must be between 1 and 64 .*got 99"),
        (dict(seq_len=1), r"seq_len must be >= 2, got 1"),
        (dict(noise_token=70), r"noise_token .*got 70"),
        (dict(ffn="gelu"), r"unknown ffn kind 'gelu'"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_cuda_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # runs on GPU machines too
    with pytest.raises(ValueError, match=r"device 'cuda' was requested but no CUDA GPU is available"):
        train(_tiny(device="cuda"), progress=False)


# ------------------------------------------------------------------------------------------
# determinism and what a run returns
# ------------------------------------------------------------------------------------------
def test_short_run_is_deterministic():
    cfg = _tiny()
    a, b = train(cfg, progress=False), train(cfg, progress=False)
    assert _state_equal(a.model, b.model)
    pd.testing.assert_frame_equal(_history_wo_time(a.history), _history_wo_time(b.history))
    assert a.final == b.final
    other = train(_tiny(seed=1), progress=False)
    assert not torch.equal(other.model.blocks[0].mlp.W_in, a.model.blocks[0].mlp.W_in)
    assert not torch.equal(other.model.W_E, a.model.W_E)


def test_history_and_final_metrics():
    cfg = _tiny(steps=10, eval_every=4)
    r = train(cfg, progress=False)
    h = r.history
    assert h["step"].tolist() == [4, 8, 10]  # every eval_every steps and at the end
    cols = {"step", "train_loss", "trigger_margin", "seconds"} | {
        f"{v}_{m}" for v in ("full", "last_ffn_removed") for m in ("accuracy", "p_noise", "p_answer", "logit_diff_noise")}
    assert set(h.columns) == cols
    assert (h["train_loss"] > 0).all() and (h["train_loss"] < 10).all()
    assert h["seconds"].is_monotonic_increasing
    assert r.config is cfg and r.seconds > 0
    assert set(r.final) == {"full", "last_ffn_removed"}
    # the last history row is the final evaluation
    for variant in ("full", "last_ffn_removed"):
        for m in ("accuracy", "p_noise", "p_answer", "logit_diff_noise"):
            assert h.iloc[-1][f"{variant}_{m}"] == pytest.approx(r.final[variant][m], abs=1e-7)
            assert 0 <= r.final[variant]["accuracy"] <= 1
    # final metrics agree with an independent evaluation on the same clean test set
    task = mt.RecallTask(cfg.recall_config())
    prompts = task.test_set(cfg.test_size, seed=cfg.seed + 10_000).to_prompts()
    again = evaluate_toy(r.model, prompts)
    assert again.keys() == r.final.keys()
    for variant in again:
        assert again[variant] == pytest.approx(r.final[variant], abs=1e-6)
    full = mt.evaluate(r.model, prompts).iloc[0]
    assert full["accuracy"] == pytest.approx(r.final["full"]["accuracy"])
    assert full["p_noise"] == pytest.approx(r.final["full"]["p_noise"], abs=1e-6)
    removed = mt.evaluate(r.model, prompts, mt.Ablate("mlp", layer=1)).iloc[0]
    assert removed["p_noise"] == pytest.approx(r.final["last_ffn_removed"]["p_noise"], abs=1e-6)
    assert removed["p_answer"] == pytest.approx(r.final["last_ffn_removed"]["p_answer"], abs=1e-6)
    # the trigger margin is the noise logit minus the best other logit through FFN L1
    assert h.iloc[-1]["trigger_margin"] == pytest.approx(
        trigger_margin(r.model, task.fixed_triggers, 2), abs=1e-6)


def test_frozen_parameters_do_not_move():
    cfg = _tiny()
    r = train(cfg, progress=False)
    init = mt.ToyTransformer(cfg.model_config())
    for name in ("W_E", "W_pos", "W_U", "blocks.0.attn.W_Q", "blocks.1.attn.W_Q"):
        assert torch.equal(r.model.state_dict()[name], init.state_dict()[name]), name
    for name in ("blocks.0.attn.W_K", "blocks.1.mlp.W_out"):
        assert not torch.equal(r.model.state_dict()[name], init.state_dict()[name]), name


def test_short_run_learns_the_noise_association():
    """The FFN picks up the trigger -> noise association first: after 60 steps P(noise) on the
    clean test set is far above chance (1/65) and the training loss has fallen below ln(65)."""
    r = train(_tiny(steps=60, eval_every=30, batch_size=32, test_size=32), progress=False)
    assert r.final["full"]["p_noise"] > 0.15
    assert r.history["train_loss"].iloc[-1] < math.log(65) - 0.4
    assert r.history["train_loss"].iloc[-1] < r.history["train_loss"].iloc[0]


def test_sgd_and_ffn_variants():
    r = train(_tiny(optimizer="sgd", lr=0.03, steps=4, eval_every=4), progress=False)
    assert torch.isfinite(torch.tensor(r.history["train_loss"].tolist())).all()
    none = train(_tiny(ffn="none", steps=4, eval_every=4), progress=False)
    assert set(none.final) == {"full"}
    assert all(b.mlp is None for b in none.model.blocks)
    assert math.isnan(none.history.iloc[-1]["trigger_margin"])
    assert "last_ffn_removed_accuracy" not in none.history.columns


def test_trigger_margin_manual():
    m = mt.ToyTransformer(mt.ToyConfig(d_model=16, n_ctx=8, seed=1))
    trig = torch.tensor([1, 5])
    with torch.no_grad():
        logits = m.blocks[1].mlp(m.W_E[trig]) @ m.W_U
    noise = logits[:, 2]
    others = logits.clone()
    others[:, 2] = -float("inf")
    want = (noise - others.max(-1).values).mean().item()
    assert trigger_margin(m, trig, 2) == pytest.approx(want, abs=1e-6)
    with torch.no_grad():
        l0 = m.blocks[0].mlp(m.W_E[trig]) @ m.W_U
    o0 = l0.clone()
    o0[:, 2] = -float("inf")
    assert trigger_margin(m, trig, 2, layer=0) == pytest.approx((l0[:, 2] - o0.max(-1).values).mean().item(), abs=1e-6)


def test_progress_bar_run(capsys):
    r = train(_tiny(steps=2, eval_every=1), progress=True)
    assert r.history["step"].tolist() == [1, 2]


# ------------------------------------------------------------------------------------------
# output directory and resumption
# ------------------------------------------------------------------------------------------
def test_out_dir_files_and_load_run(tmp_path):
    cfg = _tiny()
    r = train(cfg, out_dir=tmp_path / "run", progress=False)
    d = tmp_path / "run"
    for name in ("checkpoint.pt", "model.safetensors", "config.json", "history.csv"):
        assert (d / name).is_file(), name
    meta = json.loads((d / "config.json").read_text())
    assert meta["train"]["d_model"] == 16 and meta["task"]["alpha"] == 0.5
    assert meta["final"]["full"]["accuracy"] == pytest.approx(r.final["full"]["accuracy"])
    model, cfg2, task = load_run(d)
    assert _state_equal(model, r.model)
    assert cfg2 == cfg
    assert task.config == cfg.recall_config()
    hist = pd.read_csv(d / "history.csv")
    assert hist["step"].tolist() == r.history["step"].tolist()
    assert hist["train_loss"].tolist() == pytest.approx(r.history["train_loss"].tolist())
    # a model directory without training configuration
    model.save(tmp_path / "bare")
    with pytest.raises(ValueError, match=r"holds a model but no training configuration"):
        load_run(tmp_path / "bare")


def test_resume_equals_uninterrupted_run(tmp_path):
    n = 6
    cfg = _tiny(steps=2 * n, eval_every=3)
    full = train(cfg, progress=False)  # uninterrupted, no output directory

    def interrupt(step, model):
        if step == n:
            raise KeyboardInterrupt
        return {}

    with pytest.raises(KeyboardInterrupt):
        train(cfg, out_dir=tmp_path / "run", progress=False, callback=interrupt)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == n - 3  # the last evaluation
    resumed = train(cfg, out_dir=tmp_path / "run", progress=False)
    assert resumed.resumed_from == n - 3 and not resumed.already_finished
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 2 * n
    assert _state_equal(resumed.model, full.model)
    pd.testing.assert_frame_equal(_history_wo_time(resumed.history), _history_wo_time(full.history))
    assert resumed.final == full.final


def test_extend_equals_a_run_trained_straight_to_more_steps(tmp_path):
    """The learning rate is constant and batches depend on the step alone: a finished run of n
    steps extended to 2n has the weights of a 2n-step run; its history gains the row of step n."""
    n = 7
    straight = train(_tiny(steps=2 * n, eval_every=3), progress=False)
    first = train(_tiny(steps=n, eval_every=3), out_dir=tmp_path, progress=False)
    assert first.history["step"].tolist() == [3, 6, 7] and not _state_equal(first.model, straight.model)
    with pytest.raises(ValueError, match=r"steps: 7 there, 14 asked\); nothing was changed: add --extend"):
        train(_tiny(steps=2 * n, eval_every=3), out_dir=tmp_path, progress=False)
    extended = train(_tiny(steps=2 * n, eval_every=3), out_dir=tmp_path, progress=False, extend=True)
    assert extended.resumed_from == n and not extended.already_finished
    assert _state_equal(extended.model, straight.model)
    assert extended.final == straight.final
    assert extended.history["step"].tolist() == [3, 6, 7, 9, 12, 14]
    same = lambda h: _history_wo_time(h[h["step"] != 9])  # step 9's loss averages steps 8-9 here, 7-9 there
    pd.testing.assert_frame_equal(same(extended.history[extended.history["step"] != 7]), same(straight.history))
    assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 2 * n
    # SGD with momentum: the momentum buffers are part of the checkpoint
    sgd = dict(optimizer="sgd", lr=0.05, momentum=0.9, eval_every=4)
    full = train(_tiny(steps=8, **sgd), progress=False)
    train(_tiny(steps=4, **sgd), out_dir=tmp_path / "sgd", progress=False)
    assert _state_equal(train(_tiny(steps=8, **sgd), out_dir=tmp_path / "sgd", progress=False, extend=True).model,
                        full.model)


def test_finished_run_is_returned_as_it_is_writing_nothing(tmp_path):
    cfg = _tiny(steps=6, eval_every=3)
    first = train(cfg, out_dir=tmp_path, progress=False)
    before = dir_snapshot(tmp_path)
    for extend in (False, True):  # --extend to the same steps: nothing to extend
        again = train(cfg, out_dir=tmp_path, progress=False, extend=extend)
        assert again.already_finished and again.seconds == 0.0 and again.resumed_from == 6
        assert _state_equal(again.model, first.model) and again.final == first.final
        pd.testing.assert_frame_equal(again.history, first.history)
        assert dir_snapshot(tmp_path) == before


@pytest.mark.parametrize("change, named", [
    (dict(steps=3), "steps: 6 there, 3 asked"),
    (dict(lr=1e-2), "lr: 0.003 there, 0.01 asked"),
    (dict(seed=1), "seed: 0 there, 1 asked"),
    (dict(alpha=0.3), "alpha: 0.5 there, 0.3 asked"),
    (dict(d_model=32, optimizer="sgd"), "d_model: 16 there, 32 asked; optimizer: 'adamw' there, 'sgd' asked"),
    (dict(steps=12, seed=2), "steps: 6 there, 12 asked; seed: 0 there, 2 asked"),
])
@pytest.mark.parametrize("extend", [False, True])
def test_a_different_config_is_refused_naming_each_field(tmp_path, change, named, extend):
    train(_tiny(steps=6, eval_every=3), out_dir=tmp_path, progress=False)
    before = dir_snapshot(tmp_path)
    with pytest.raises(ValueError, match=rf"holds a different run \({named}\); nothing was changed: .*use a new --out "
                                         r"directory"):
        train(_tiny(**{"steps": 6, "eval_every": 3, **change}), out_dir=tmp_path, progress=False, extend=extend)
    assert dir_snapshot(tmp_path) == before  # config.json, weights, checkpoint, history untouched


def test_a_model_directory_without_checkpoint_is_not_overwritten(tmp_path):
    r = train(_tiny(steps=3, eval_every=3), out_dir=tmp_path, progress=False)
    (tmp_path / "checkpoint.pt").unlink()  # e.g. another command's model directory
    before = dir_snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"holds config\.json, model\.safetensors, history\.csv but no training "
                                         r"checkpoint \(checkpoint\.pt\).*nothing was changed"):
        train(_tiny(steps=3, eval_every=3), out_dir=tmp_path, progress=False)
    assert dir_snapshot(tmp_path) == before
    r.model.save(tmp_path / "memo")  # another model's files (config.json, model.safetensors)
    with pytest.raises(ValueError, match=r"holds config\.json, model\.safetensors but no training checkpoint"):
        train(_tiny(steps=3, eval_every=3), out_dir=tmp_path / "memo", progress=False)


# The end-to-end cpu-preset run (the demo's claim, three seeds, docs numbers) is in
# tests/test_docs_results.py.
