"""The toy Transformer without its FFNs: attention-component noise
attributions, residual-stream pushes, weight snapshots, seed-level intervals, and the analysis
script end to end on a tiny configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import mechtrunc as mt
from mechtrunc.studies.dynamics import (
    SnapshotRecorder, attention_component_attributions, noise_component_summary, paired_seed_intervals,
    residual_attributions, seed_interval,
)
from mechtrunc.tasks.recall import RecallTask
from mechtrunc.models.toy import ToyConfig, ToyTransformer

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(d_model=16, seq_len=32, batch_size=16, test_size=32)


@pytest.fixture(scope="module")
def attn_only_run():
    """A tiny attention-only model trained 60 steps with a SnapshotRecorder (about a second)."""
    cfg = mt.preset("cpu", steps=60, eval_every=20, ffn="none", **TINY)
    task = RecallTask(cfg.recall_config())
    test = task.test_set(cfg.test_size, seed=cfg.seed + 10_000)
    rec = SnapshotRecorder(test, layer=1)
    res = mt.train(cfg, progress=False, callback=rec)
    return res, rec, test, cfg


def _f64(model):
    import copy

    return copy.deepcopy(model).double()


def _head_push(model, batch, layer):
    r = residual_attributions(model, batch).set_index("term")
    return r.loc[f"attn.{layer}", "noise_attr"], r.loc[f"attn.{layer}", "correct_attr"]


def test_no_ffn_model_has_no_ffn_weights_or_hooks(attn_only_run):
    res, _, _, cfg = attn_only_run
    model = res.model
    assert model.cfg.attn_only and cfg.model_config().ffn == ["none", "none"]
    assert not [n for n, _ in model.named_parameters() if "mlp" in n]
    assert not [n for n in model.hook_dict if "mlp." in n]  # no FFN-internal hook points
    _, cache = model.run_with_cache(attn_only_run[2].inputs[:2])
    assert not [n for n in cache.keys() if "mlp" in n]  # and no FFN hook fires (hook_mlp_out stays silent)
    assert all(b.mlp is None for b in model.blocks)
    assert "last_ffn_removed_accuracy" not in res.history.columns  # nothing to remove
    assert "induction_score" in res.history.columns
    # the variant without the last FFN keeps FFN L0
    m2 = ToyTransformer(ToyConfig(d_model=16, n_ctx=32, ffn=["relu", "none"]))
    assert m2.blocks[0].mlp is not None and m2.blocks[1].mlp is None


@pytest.mark.parametrize("layer", [0, 1])
def test_attention_components_add_up_to_the_head_push(attn_only_run, layer):
    """W_V, W_O and OV components each decompose the head's direct contribution exactly
    (the attention pattern does not depend on W_V, W_O)."""
    res, _, test, _ = attn_only_run
    model = _f64(res.model)  # float64 forward: the identity is exact up to float64 rounding
    comp = attention_component_attributions(model, test, layer)
    noise, correct = _head_push(model, test, layer)
    assert abs(noise) > 1e-3  # a non-trivial check
    for m in ("attn.W_V", "attn.W_O", "attn.OV"):
        g = comp[(comp["matrix"] == m) & (comp["which"] == "W")]
        assert len(g) == 16 and (g["singular_value"].diff().dropna() <= 1e-12).all()
        assert g["noise_attr"].sum() == pytest.approx(noise, abs=1e-9)
        assert g["correct_attr"].sum() == pytest.approx(correct, abs=1e-9)


def test_learned_part_of_ov_decomposes_the_change_of_the_push(attn_only_run):
    """OV - OV_init components add up to the head's push minus the push the initial OV would
    give under the same (current) attention pattern."""
    res, _, test, cfg = attn_only_run
    init = ToyTransformer(cfg.model_config()).eval().double()
    model = _f64(res.model)
    comp = attention_component_attributions(model, test, 1, init=init)
    learned = comp[(comp["matrix"] == "attn.OV") & (comp["which"] == "W - W_init")]["noise_attr"].sum()
    mixed = _f64(res.model)  # current W_K (same pattern), initial W_V, W_O
    mixed.blocks[1].attn.W_V.data.copy_(init.blocks[1].attn.W_V)
    mixed.blocks[1].attn.W_O.data.copy_(init.blocks[1].attn.W_O)
    now, _ = _head_push(model, test, 1)
    before, _ = _head_push(mixed, test, 1)
    assert learned == pytest.approx(now - before, abs=1e-9)


def test_residual_terms_add_up_to_the_logit_difference(attn_only_run):
    res, _, test, _ = attn_only_run
    r = residual_attributions(res.model, test)
    assert list(r["term"]) == ["embed", "pos_embed", "attn.0", "attn.1"]
    with torch.no_grad():
        logits = res.model(test.inputs).double()
    rows, pos = test.loss_mask.nonzero(as_tuple=True)
    lg = logits[rows, pos]
    V = lg.shape[1]
    others = lambda tok: (lg.sum(1) - lg.gather(1, tok[:, None])[:, 0]) / (V - 1)
    noise = torch.full_like(rows, test.noise_id)
    answer = test.clean_targets()[rows, pos]
    assert r["noise_attr"].sum() == pytest.approx(float((lg[:, test.noise_id] - others(noise)).mean()), abs=1e-4)
    assert r["correct_attr"].sum() == pytest.approx(float((lg.gather(1, answer[:, None])[:, 0] - others(answer)).mean()),
                                                    abs=1e-4)


def _planted(seed: int = 0):
    """A tiny attention-only model whose L1 OV = W_V W_O has a planted component that maps
    the head's mean input at repeated triggers (``xbar``, attention-weighted residual) to the
    noise readout, on top of a small random OV."""
    cfg = mt.preset("cpu", steps=1, ffn="none", **TINY)
    task = RecallTask(cfg.recall_config())
    batch = task.test_set(32, seed=3)
    model = ToyTransformer(cfg.model_config()).eval()
    att = model.blocks[1].attn
    W_U = model.W_U.detach().double()
    V = W_U.shape[1]
    g = W_U[:, batch.noise_id] * (1 + 1 / (V - 1)) - W_U.sum(1) / (V - 1)
    _, cache = model.run_with_cache(batch.inputs)
    rows, pos = batch.loss_mask.nonzero(as_tuple=True)
    pat = cache["blocks.1.attn.hook_pattern"][rows, 0, pos].double()  # [item, key]
    xbar = torch.einsum("ik,ikd->d", pat, cache["blocks.1.hook_resid_pre"][rows].double())
    u, v = xbar / xbar.norm(), g / g.norm()
    torch.manual_seed(seed)
    with torch.no_grad():
        att.W_V.copy_(torch.eye(16)[None])
        att.W_O.copy_((0.01 * torch.randn(16, 16) + 50.0 * torch.outer(u, v).float())[None])
    return model, batch


@pytest.mark.parametrize("matrix", ["attn.OV", "attn.W_O"])
def test_removing_the_planted_noise_component_removes_exactly_its_push(matrix):
    model, batch = _planted()
    comp = attention_component_attributions(model, batch, 1)
    c = comp[(comp["matrix"] == matrix) & (comp["which"] == "W")].set_index("component")
    top = int(c["noise_attr"].idxmax())
    assert top == 0  # the planted spike is the largest singular value and carries the push
    assert c.loc[0, "noise_attr"] / c["noise_attr"].sum() > 0.99
    summ = noise_component_summary(comp[comp["which"] == "W"], d_model=16).set_index("matrix")
    assert summ.loc[matrix, "noise_component"] == 0 and summ.loc[matrix, "noise_sv_over_median"] > 100
    before, _ = _head_push(model, batch, 1)
    with mt.intervene(model, mt.RemoveComponents(matrix, layer=1, indices=(top,))):
        after, _ = _head_push(model, batch, 1)
    assert before - after == pytest.approx(c.loc[top, "noise_attr"], rel=1e-4, abs=1e-5)
    assert abs(after) < 0.01 * abs(before)


def test_snapshots_rebuild_the_model(attn_only_run):
    res, rec, test, cfg = attn_only_run
    assert sorted(rec.snapshots) == [20, 40, 60]
    init = ToyTransformer(cfg.model_config())
    m = SnapshotRecorder.model_at(init, rec.snapshots[60])
    with torch.no_grad():
        assert torch.equal(m(test.inputs), res.model(test.inputs))
    assert not torch.equal(init.blocks[1].attn.W_V, m.blocks[1].attn.W_V)  # init untouched
    with pytest.raises(ValueError, match="lacks"):
        SnapshotRecorder.model_at(init, {"blocks.0.mlp.W_in": torch.zeros(16, 64)})


def test_seed_intervals_on_synthetic_values():
    c = seed_interval([3.0, 3.0, 3.0])
    assert (c["mean"], c["lo"], c["hi"]) == (3.0, 3.0, 3.0)
    v = np.array([100.0, 150.0, 200.0, 400.0])
    c = seed_interval(v, n_boot=20_000)
    assert c["mean"] == pytest.approx(212.5) and 100 <= c["lo"] < 212.5 < c["hi"] <= 400
    # the percentile interval of a mean of 2 values, each resample mean in {a, (a+b)/2, b}
    c = seed_interval([0.0, 1.0], n_boot=20_000, level=0.9)
    assert (c["lo"], c["hi"]) == (0.0, 1.0)
    d = paired_seed_intervals(2 * v, v).set_index("quantity")
    assert d.loc["a / b", "estimate"] == pytest.approx(2.0)
    assert d.loc["a / b", "lo"] == pytest.approx(2.0) and d.loc["a / b", "hi"] == pytest.approx(2.0)
    assert d.loc["a - b", "estimate"] == pytest.approx(212.5)
    assert d.loc["a", "lo"] == pytest.approx(2 * d.loc["b", "lo"])  # the same resamples for all
    d = paired_seed_intervals(v + 50, v).set_index("quantity")  # constant paired shift: no spread
    assert (d.loc["a - b", "lo"], d.loc["a - b", "hi"]) == (50.0, 50.0)
    for bad, match in (([1.0, np.nan], "NaN"), ([], "non-empty")):
        with pytest.raises(ValueError, match=match):
            seed_interval(bad)
    with pytest.raises(ValueError, match="level"):
        seed_interval([1.0, 2.0], level=1.5)
    with pytest.raises(ValueError, match="same"):
        paired_seed_intervals([1.0, 2.0], [1.0])


def test_bad_inputs_name_the_valid_values(attn_only_run):
    res, _, test, _ = attn_only_run
    with pytest.raises(ValueError, match="attn.W_Q.*valid: attn.W_V, attn.W_O, attn.OV"):
        attention_component_attributions(res.model, test, 1, matrices=("attn.W_Q",))
    with pytest.raises(ValueError, match="layer 2.*valid: 0..1"):
        attention_component_attributions(res.model, test, 2)


def test_script_end_to_end_on_a_tiny_config(tmp_path):
    script = Path(__file__).resolve().parents[1] / "analyses" / "dynamics_toy_attention.py"
    cmd = [sys.executable, str(script), "--tiny", "--steps", "40", "--eval-every", "20", "--seeds", "0", "1",
           "--variants", "full", "attn_only", "--runs", str(tmp_path / "runs"), "--data", str(tmp_path / "data"),
           "--figures", str(tmp_path / "fig"), "--doc", ""]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("trained ") == 4
    data = tmp_path / "data"
    hist = pd.read_csv(data / "theory_toy_history.csv")
    assert set(hist["variant"]) == {"full", "attn_only"} and sorted(set(hist["step"])) == [20, 40]
    push = pd.read_csv(data / "theory_toy_push.csv")
    assert set(push.loc[push["variant"] == "attn_only", "term"]) == {"embed", "pos_embed", "attn.0", "attn.1"}
    inter = pd.read_csv(data / "theory_toy_interventions.csv")
    assert {"none", "attn.OV L1 keep 0.1", "attn.W_V L1 remove noise component"} <= set(inter["intervention"])
    speed = pd.read_csv(data / "theory_toy_speed.csv")
    assert set(speed["event"]) == {"induction_0.5", "icl_accuracy_0.5", "p_noise_half_alpha"}
    targets = pd.read_csv(data / "theory_toy_attention_targets.csv")
    assert ((targets["after_same_token"] <= 1 + 1e-6) & (targets["self"] <= targets["same_token"] + 1e-6)).all()
    for name in ("theory_toy_where.csv", "theory_toy_where_components.csv", "theory_toy_early.csv",
                 "theory_toy_ov_gradient.csv"):
        assert len(pd.read_csv(data / name)) > 0
    for png in ("theory_toy_dynamics.png", "theory_toy_spectra.png"):
        assert (tmp_path / "fig" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # resumable: a second invocation trains nothing
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "trained " not in again.stdout


def test_ov_gradient_push_rate_is_the_first_order_change_of_the_head_push(attn_only_run):
    """A small step -eps * (G_V, G_O) on L1 W_V, W_O changes the head's noise push (on the
    same sequences, pattern unchanged) by eps * noise_push_rate to first order."""
    from mechtrunc.core.metrics import masked_cross_entropy

    res, _, test, cfg = attn_only_run
    batch = RecallTask(cfg.recall_config()).sample(32, seed=7)
    model = _f64(res.model)
    g = mt.dynamics.ov_gradient_noise(model, batch, layer=1)
    assert 0.0 <= g["noise_entry_fraction"] <= 1.0 and g["ov_grad_norm"] > 0
    att = model.blocks[1].attn
    loss = masked_cross_entropy(model(batch.inputs), batch.targets, batch.loss_mask)
    G_V, G_O = torch.autograd.grad(loss, [att.W_V, att.W_O])
    assert g["loss"] == pytest.approx(float(loss.detach()), rel=1e-9)
    push = lambda m: mt.dynamics.residual_attributions(m, batch).set_index("term").loc["attn.1", "noise_attr"]
    before, eps = push(model), 1e-5
    with torch.no_grad():
        att.W_V -= eps * G_V
        att.W_O -= eps * G_O
    assert (push(model) - before) / eps == pytest.approx(g["noise_push_rate"], rel=1e-3, abs=1e-6)
    with pytest.raises(ValueError, match="one head"):
        mt.dynamics.ov_gradient_noise(ToyTransformer(ToyConfig(d_model=16, n_ctx=32, n_heads=2, identity_query=False,
                                                               ffn="none")), batch)
