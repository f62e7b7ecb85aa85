"""The linear associative memory (mechtrunc.models.memory): closed forms, the population optimum, the
spectral location of the noise association and its removal with the shared interventions."""

from __future__ import annotations

import json
import pandas as pd
import pytest
import torch

import mechtrunc as mt
from mechtrunc.models.memory import (
    LinearMemory, MemoryConfig, MemoryTrainConfig, clean_metrics, closed_form_gradient_at_zero,
    load_memory_run, noise_component, population_loss, spectrum, spectrum_summary, train_memory,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("kw", [
    dict(n_inputs=12, n_outputs=7, d=9, alpha=0.3),
    dict(n_inputs=10, n_outputs=6, d=16, alpha=0.7, embeddings="orthonormal", input_dist="zipf", zipf_exponent=1.3, noise_token=4),
    dict(n_inputs=5, n_outputs=3, d=4, alpha=0.0, learn_embeddings=True),
])
def test_gradient_at_zero_matches_closed_form(kw):
    model = LinearMemory(MemoryConfig(**kw))
    assert model.W.dtype == torch.float64 and float(model.W.detach().abs().max()) == 0.0
    (grad,) = torch.autograd.grad(population_loss(model), [model.W])
    # the closed form, written out input by input
    U, E, a, n = model.U.detach(), model.W_E.detach(), model.cfg.alpha, model.cfg.noise_token
    expected = torch.zeros_like(grad)
    for x in range(model.cfg.n_inputs):
        y = int(model.targets[x])
        assert y != n
        c = (1 - a) * U[y] + a * U[n] - U.mean(0)
        expected -= model.p_x[x] * torch.outer(c, E[x])
    assert (grad - expected).abs().max() < 1e-6 * max(1.0, float(expected.abs().max()))
    assert float(expected.abs().max()) > 1e-3  # not trivially zero
    assert torch.allclose(closed_form_gradient_at_zero(model), expected, atol=1e-12)


def test_population_loss_is_the_exact_expectation():
    model = LinearMemory(MemoryConfig(n_inputs=6, n_outputs=5, d=8, init="random", input_dist="zipf"))
    logp = model.all_logits().log_softmax(-1).detach()
    expected = sum(float(model.p_x[x]) * ((1 - model.cfg.alpha) * -logp[x, model.targets[x]] + model.cfg.alpha * -logp[x, 0])
                   for x in range(6))
    assert float(population_loss(model).detach()) == pytest.approx(float(expected), abs=1e-12)
    assert float(model.p_x.sum()) == pytest.approx(1.0) and float(model.p_x[0]) > float(model.p_x[-1])


def test_long_full_batch_training_reaches_the_population_optimum():
    cfg = MemoryConfig(n_inputs=8, n_outputs=8, d=16, alpha=0.3, embeddings="orthonormal")
    run = train_memory(cfg, steps=1500, lr=32.0, log_every=500, spectrum_steps=[])
    P = run.model.all_logits().softmax(-1).detach()
    x = torch.arange(8)
    assert (P[:, 0] - 0.3).abs().max() < 0.02  # P(noise | x) -> alpha for every x
    assert (P[x, run.model.targets] - 0.7).abs().max() < 0.02  # P(y*(x) | x) -> 1 - alpha
    first, last = run.history.iloc[0], run.history.iloc[-1]
    assert first["p_noise"] == pytest.approx(1 / 8) and last["p_noise"] == pytest.approx(0.3, abs=0.02)
    assert list(run.history.columns) == ["step", "p_answer", "p_noise", "accuracy", "clean_loss", "loss"]
    assert run.history["loss"].is_monotonic_decreasing


@pytest.fixture(scope="module")
def trained():
    cfg = MemoryConfig(n_inputs=32, n_outputs=32, d=64, alpha=0.3, seed=1, target_seed=2)
    return train_memory(cfg, steps=300, lr=32.0, log_every=100, spectrum_steps=[0, 10, 300])


def test_removing_the_noise_component_fixes_clean_predictions(trained):
    model = trained.model
    spec = spectrum(model)
    i = noise_component(spec)
    assert i == 0 and spec.loc[0, "align_noise"] > 0.9  # measured: 0.98, the top singular component
    before = clean_metrics(model)
    W_before = model.W.detach().clone()
    removed = clean_metrics(model, mt.RemoveComponents("W", indices=[i]))
    laser = clean_metrics(model, mt.Truncate("W", keep=0.1))
    assert torch.equal(model.W, W_before)  # undone bit for bit
    # measured once: P(noise) 0.283 -> 0.0013, P(correct) 0.693 -> 0.943 (margins 0.02)
    assert before["p_noise"] == pytest.approx(0.283, abs=0.02) and before["p_answer"] == pytest.approx(0.693, abs=0.02)
    assert before["p_noise"] - removed["p_noise"] > 0.26
    assert removed["p_answer"] - before["p_answer"] > 0.23
    # LASER keeps the top components, so it keeps the noise and drops correct associations:
    # measured P(noise) 0.283 -> 0.706, P(correct) 0.693 -> 0.209
    assert laser["p_noise"] - before["p_noise"] > 0.38 and before["p_answer"] - laser["p_answer"] > 0.43
    # the same through mt.evaluate (uniform p(x), so the same means)
    row = mt.evaluate(model, model.prompts(), mt.RemoveComponents("W", indices=[i])).iloc[0]
    assert row["p_noise"] == pytest.approx(removed["p_noise"], abs=1e-6)
    assert row["p_answer"] == pytest.approx(removed["p_answer"], abs=1e-6)


def test_interventions_edit_W_itself(trained):
    model = trained.model
    W = model.W.detach()
    A, S, Bh = torch.linalg.svd(W)
    x = torch.arange(5)
    manual = model.W_E[x].detach() @ (W - S[2] * torch.outer(A[:, 2], Bh[2])).T @ model.W_U.detach()
    for mode in ("weight", "hook"):
        with mt.intervene(model, mt.RemoveComponents("W", indices=[2], mode=mode)):
            got = model(x).detach()
        assert (got - manual).abs().max() < 1e-9, mode
    rank3 = (A[:, :3] * S[:3]) @ Bh[:3]
    with mt.intervene(model, mt.Truncate("W", rank=3)):
        assert (model.W.detach() - rank3).abs().max() < 1e-10
    with mt.intervene(model, mt.Truncate("W", keep=1.0)):
        assert torch.equal(model.W, W)


def test_spectrum_contributions_add_up(trained):
    model = trained.model
    spec = spectrum(model)
    U, E, p = model.U.detach(), model.W_E.detach(), model.p_x
    u_mean = U.mean(0)
    h = E @ model.W.detach().T  # [N, d]
    noise_logit = float(p @ (h @ (U[0] - u_mean)))
    correct_logit = float((p * ((U[model.targets] - u_mean) * h).sum(1)).sum())
    assert spec["noise_logit"].sum() == pytest.approx(noise_logit, rel=1e-9)
    assert spec["correct_logit"].sum() == pytest.approx(correct_logit, rel=1e-9)
    assert spec["singular_value"].is_monotonic_decreasing
    assert ((spec["align_correct"] >= 0) & (spec["align_correct"] <= 1)).all()
    # the noise component carries (almost) no correct association, the next ones mostly do
    assert spec.loc[0, "align_correct"] < 0.2 and spec.loc[1:5, "align_correct"].mean() > 0.4


def test_spectra_table_and_summary(trained):
    spectra = trained.spectra
    assert set(spectra["matrix"]) == {"W", "W - W_init"} and sorted(set(spectra["step"])) == [0, 10, 300]
    assert len(spectra) == 3 * 2 * 64
    summary = spectrum_summary(spectra)
    at = summary.set_index(["step", "matrix"])
    assert at.loc[(0, "W"), "location"] == "zero"
    assert at.loc[(300, "W"), "location"] == "top spike" and at.loc[(300, "W"), "noise_index"] == 0
    assert at.loc[(300, "W"), "gap"] > 2.0


def test_random_init_noise_spike_stands_out_in_the_update():
    """A large random W_init hides the early noise association inside its bulk; W - W_init shows it."""
    cfg = MemoryConfig(n_inputs=64, n_outputs=64, d=128, init="random", init_scale=30.0)
    run = train_memory(cfg, steps=10, lr=64.0, log_every=10, spectrum_steps=[10])
    at = spectrum_summary(run.spectra).set_index("matrix")
    assert at.loc["W", "location"] in ("spread", "bulk") and at.loc["W", "noise_align"] < 0.5
    assert at.loc["W - W_init", "noise_index"] == 0 and at.loc["W - W_init", "noise_align"] > 0.85  # measured 0.90


def test_seeds_reproduce():
    cfg = MemoryConfig(n_inputs=10, n_outputs=6, d=8, init="random", init_scale=0.5)
    for method in ("gd", "sgd"):
        a = train_memory(cfg, steps=20, lr=5.0, method=method, batch_size=16, log_every=5, spectrum_steps=[20])
        b = train_memory(cfg, steps=20, lr=5.0, method=method, batch_size=16, log_every=5, spectrum_steps=[20])
        pd.testing.assert_frame_equal(a.history, b.history)
        assert torch.equal(a.model.W, b.model.W)
    c = train_memory(cfg, steps=20, lr=5.0, method="sgd", batch_size=16, seed=1, log_every=5, spectrum_steps=[])
    assert not torch.equal(a.model.W, c.model.W)
    assert not torch.equal(LinearMemory(cfg).targets, LinearMemory(MemoryConfig(**{**cfg.to_dict(), "target_seed": 1})).targets)
    assert not torch.equal(LinearMemory(cfg).W_E, LinearMemory(MemoryConfig(**{**cfg.to_dict(), "seed": 1})).W_E)


def test_learned_embeddings_train_too():
    cfg = MemoryConfig(n_inputs=8, n_outputs=6, d=8, alpha=0.2, learn_embeddings=True, init="random", init_scale=0.5)
    model = LinearMemory(cfg)
    E0, U0 = model.W_E.detach().clone(), model.W_U.detach().clone()
    with pytest.raises(ValueError, match="training diverged at step .* lower lr"):
        train_memory(LinearMemory(cfg), steps=200, lr=8.0, spectrum_steps=[])
    run = train_memory(model, steps=200, lr=1.0, log_every=200, spectrum_steps=[200])
    assert not torch.equal(model.W_E, E0) and not torch.equal(model.W_U, U0)
    assert run.history["loss"].iloc[-1] < run.history["loss"].iloc[0] - 0.5
    frozen = LinearMemory(MemoryConfig(n_inputs=8, n_outputs=6, d=8))
    assert not frozen.W_E.requires_grad and not frozen.W_U.requires_grad and frozen.W.requires_grad


def test_sgd_samples_the_noisy_distribution():
    model = LinearMemory(MemoryConfig(n_inputs=4, n_outputs=5, d=4, alpha=0.25, input_dist="zipf"))
    x, y = model.sample(20000, torch.Generator().manual_seed(0))
    assert float((y == 0).double().mean()) == pytest.approx(0.25, abs=0.01)
    assert float((x == 0).double().mean()) == pytest.approx(float(model.p_x[0]), abs=0.01)
    clean = y != 0
    assert torch.equal(y[clean], model.targets[x[clean]])


def test_config_json_round_trip_and_run_save_load(tmp_path):
    cfg = MemoryConfig(n_inputs=6, n_outputs=4, d=8, alpha=0.2, input_dist="zipf", init="random")
    assert MemoryConfig.load(cfg.save(tmp_path / "c.json")) == cfg
    run = train_memory(cfg, steps=4, lr=1.0, log_every=2, spectrum_steps=[4])
    loaded = load_memory_run(run.save(tmp_path / "run"))
    assert torch.equal(loaded.model.W, run.model.W) and loaded.config == cfg
    assert loaded.train_config == run.train_config
    pd.testing.assert_frame_equal(loaded.history, run.history)
    with pytest.raises(ValueError, match="unknown MemoryConfig fields"):
        MemoryConfig.from_dict({"n_inputs": 4, "width": 3})
    with pytest.raises(ValueError, match="not a memory run directory"):
        load_memory_run(tmp_path / "nowhere")


@pytest.mark.parametrize("kw, match", [
    (dict(alpha=1.5), "alpha must be a number in \\[0, 1\\], got 1.5"),
    (dict(alpha=-0.1), "got -0.1"),
    (dict(n_inputs=1), "n_inputs \\(N\\) must be an integer >= 2, got 1"),
    (dict(d=0), "d must be an integer >= 1, got 0"),
    (dict(init="gauss"), "unknown init 'gauss'; valid: zero, random"),
    (dict(input_dist="pareto"), "unknown input distribution 'pareto'; valid: uniform, zipf"),
    (dict(embeddings="sphere"), "unknown embeddings 'sphere'"),
    (dict(embeddings="orthonormal", n_inputs=20, d=16), "needs n_inputs <= d and n_outputs <= d, got N=20, V=64, d=16"),
    (dict(noise_token=64), "noise_token must be an integer in 0..63, got 64"),
    (dict(n_inputs=2.5), "n_inputs \\(N\\) must be an integer"),
    (dict(init_scale=float("inf")), "init_scale must be a number >= 0, got inf"),
])
def test_bad_config_names_the_value(kw, match):
    with pytest.raises(ValueError, match=match):
        MemoryConfig(**kw)


def test_bad_training_and_intervention_input(trained):
    with pytest.raises(ValueError, match="unknown method 'adam'"):
        MemoryTrainConfig(method="adam")
    with pytest.raises(ValueError, match="spectrum step 50 is outside 0..10"):
        MemoryTrainConfig(steps=10, spectrum_steps=[50])
    with pytest.raises(ValueError, match="lr must be a number > 0, got 0"):
        MemoryTrainConfig(lr=0)
    with pytest.raises(ValueError, match="log_every must be an integer >= 1, got 0"):
        MemoryTrainConfig(log_every=0)
    with pytest.raises(ValueError, match="unknown matrix 'mlp.W_in' for the linear memory; valid: W"):
        clean_metrics(trained.model, mt.Truncate("mlp.W_in", layer=0, keep=0.5))
    with pytest.raises(ValueError, match="input ids must be in 0..31"):
        trained.model(torch.tensor([32]))


def test_project_out_and_transformer_only_tools(trained):
    model = trained.model
    i = noise_component(spectrum(model))
    A = torch.linalg.svd(model.W.detach())[0]
    # projecting the noise component's output direction out of W e_x == removing that component
    a = clean_metrics(model, mt.ProjectOut("mlp_out", 0, A[:, i]))
    b = clean_metrics(model, mt.RemoveComponents("W", indices=[i]))
    assert a["p_noise"] == pytest.approx(b["p_noise"], abs=1e-6) and a["p_answer"] == pytest.approx(b["p_answer"], abs=1e-6)
    with pytest.raises(ValueError, match="site 'resid_pre' does not exist on the linear memory"):
        clean_metrics(model, mt.ProjectOut("resid_pre", 0, A[:, i]))
    with pytest.raises(ValueError, match="Transformer-only tools such as mt.attribute do not apply"):
        mt.attribute(model, model.prompts())


def test_memory_matrix_is_refused_on_the_toy(random_toy):
    with pytest.raises(ValueError, match="exists only on a mechtrunc.models.memory.LinearMemory"):
        with mt.intervene(random_toy, mt.Truncate("W", keep=0.5)):
            pass


def test_weighted_metrics():
    from mechtrunc.core.metrics import metrics_from_logits

    model = LinearMemory(MemoryConfig(n_inputs=3, n_outputs=3, d=4, init="random", init_scale=3.0))
    logits = model.all_logits().detach()
    P = logits.softmax(-1)
    w = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    m = metrics_from_logits(logits, model.prompts(), weights=w * 10)
    assert m["p_noise"] == pytest.approx(float(w @ P[:, 0]), abs=1e-6)
    assert m["p_answer"] == pytest.approx(float(w @ P[torch.arange(3), model.targets]), abs=1e-6)
    plain = metrics_from_logits(logits, model.prompts())
    assert plain["p_noise"] == pytest.approx(float(P[:, 0].mean()), abs=1e-6)
    with pytest.raises(ValueError, match="weights must be 3 non-negative numbers"):
        metrics_from_logits(logits, model.prompts(), weights=torch.tensor([1.0, -1.0, 1.0]))


def _cli(capsys, *args):
    from mechtrunc.cli import main

    try:
        code = main(["memory", *args])
    except SystemExit as exc:  # argparse errors and --help
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("cmd", [[], ["train"], ["spectrum"]])
def test_cli_help(cmd, capsys):
    code, out, _ = _cli(capsys, *cmd, "--help")
    assert code == 0 and "usage: mechtrunc memory" in out


def test_cli_memory_train_and_spectrum(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = _cli(capsys, "train", "--out", str(out), "--n-inputs", "16", "--n-outputs", "16", "--d", "32",
                             "--steps", "100", "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["final"]["p_noise"] == pytest.approx(0.3, abs=0.03)
    assert summary["spectrum"]["W"]["noise_index"] == 0
    assert (out / "history.csv").is_file() and (out / "spectra.csv").is_file()
    code, stdout, err = _cli(capsys, "spectrum", str(out), "--json")
    assert code == 0, err
    spec = json.loads(stdout)
    assert spec["noise_index"] == 0 and spec["remove_noise"]["p_noise"] < 0.01
    assert spec["laser"]["p_noise"] > spec["full"]["p_noise"] + 0.1
    code, stdout, _ = _cli(capsys, "spectrum", str(out))
    assert code == 0 and "noise component #0" in stdout


@pytest.mark.parametrize("args, message", [
    (["train", "--out", "x", "--alpha", "1.5"], "argument --alpha: expected a number in [0, 1], got '1.5'"),
    (["train", "--out", "x", "--n-inputs", "1"], "argument --n-inputs: expected an integer >= 2, got '1'"),
    (["train", "--out", "x", "--d", "0"], "argument --d: expected a positive integer, got '0'"),
    (["train", "--out", "x", "--method", "adam"], "unknown method 'adam'; valid methods: gd, sgd"),
    (["train", "--out", "x", "--threads", "0"], "argument --threads: expected a positive integer, got '0'"),
    (["train", "--out", "x", "--init", "gauss"], "unknown init 'gauss'"),
    (["train", "--out", "x", "--input-dist", "pareto"], "unknown input distribution 'pareto'"),
    (["train", "--out", "x", "--steps", "5", "--spectrum-steps", "9"], "spectrum step 9 is outside 0..5"),
    (["spectrum", "/nonexistent/run"], "model directory /nonexistent/run does not exist"),
    (["spectrum", "/tmp", "--keep", "abc"], "argument --keep: expected a number in [0, 1], got 'abc'"),
])
def test_cli_bad_input_exits_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli(capsys, *args)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_truncation_curves_script(tmp_path):
    """The figure script runs on the public API and its numbers match the documented check."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "analyses" / "memory_truncation_curves.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "memory_truncation_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    t = pd.read_csv(tmp_path / "memory_truncation_curves.csv").set_index(["case", "variant"])
    base = "alpha 0.3, 1000 steps"
    assert t.loc[(base, "LASER rank 1"), "p_noise"] > 0.95  # documented: 0.992
    assert t.loc[(base, "remove noise component #0"), "p_answer"] > 0.99  # documented: 0.995
    assert t.loc[(base, "LASER rank 128"), "p_noise"] == pytest.approx(0.298, abs=0.005)


def test_spectrum_training_script_gives_the_documented_order_of_learning(tmp_path):
    """analyses/memory_spectrum_training.py (docs/theory.md, figure 1) reproduces its committed
    CSV, and the order of learning it documents holds: from W = 0 at alpha 0.3 the most
    noise-aligned component is component 0 from the first step on; from a random W_init it starts
    inside the bulk and climbs to component 0; at alpha 0.05 it starts at the bottom."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "analyses" / "memory_spectrum_training.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fresh = pd.read_csv(tmp_path / "memory_spectrum_training.csv")
    doc = pd.read_csv(root / "docs" / "memory" / "memory_spectrum_training.csv")
    keys = ["run", "matrix", "step", "component"]
    both = fresh.merge(doc, on=keys, suffixes=("", "_doc"))
    assert len(both) == len(doc) == len(fresh)
    for col in ("singular_value", "align_noise_assoc"):
        assert (both[col] - both[f"{col}_doc"]).abs().max() < 1e-3, col
    w = fresh[fresh["matrix"] == "W"]
    top = w.loc[w.groupby(["run", "step"])["align_noise_assoc"].idxmax()].set_index(["run", "step"])["component"]
    zero = top["alpha 0.3, W_init = 0"]
    assert (zero[zero.index >= 1] == 0).all()
    rand = top["alpha 0.3, random W_init (scale 30)"]
    assert rand.loc[1] >= 3 and rand.iloc[-1] == 0
    low = top["alpha 0.05, W_init = 0"]
    assert low.loc[1] >= 16 and low.iloc[-1] == 0
