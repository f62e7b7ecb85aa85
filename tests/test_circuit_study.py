"""Circuits across training (mechtrunc.studies.circuits): the study's shards, columns and resume
rule, the overtaking step on constructed ledgers, the toy's kept checkpoints, the recall
corruption of a language model's prompts, and the benchmark's pass counting."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mechtrunc.studies.circuits import (
    CIRCUIT_EDGE_COLUMNS, CIRCUIT_LEDGER_COLUMNS, CIRCUIT_NODE_COLUMNS, ToyCheckpoints, circuit_pairs, circuit_study,
    evidence_by_step, overtaking_step, read_circuit_study,
)

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def toy_ckpts(tmp_path_factory):
    """A tiny toy run trained 40 steps with its model kept every 20 steps."""
    from mechtrunc.models.toy_training import KeepCheckpoints, preset, train

    out = tmp_path_factory.mktemp("toy") / "run"
    cfg = preset("cpu", d_model=32, seq_len=32, steps=40, eval_every=20, test_size=16, batch_size=16, seed=0)
    train(cfg, out_dir=out, progress=False, callback=KeepCheckpoints(out / "checkpoints", cfg))
    return out / "checkpoints"


def test_keep_checkpoints_writes_loadable_runs(toy_ckpts):
    from mechtrunc.models.toy_training import load_run

    loader = ToyCheckpoints(toy_ckpts)
    assert loader.steps() == [20, 40]
    assert ToyCheckpoints.looks_like(toy_ckpts)
    final, _, _ = load_run(toy_ckpts.parent)
    last = loader(40)
    for (k, a), (_, b) in zip(final.state_dict().items(), last.state_dict().items()):
        assert torch.equal(a, b), k  # the last kept checkpoint is the final model


def test_study_resumes_without_recomputing_finished_steps(toy_ckpts, tmp_path):
    clean, corrupted = circuit_pairs(toy_ckpts, n=6)
    loader = ToyCheckpoints(toy_ckpts)
    loaded = []

    def load(step):
        loaded.append(step)
        return loader(step)

    out = tmp_path / "study"
    kw = dict(out=out, n_edges=5, n_boot=20, progress=False)
    first = circuit_study(load, [20], clean, corrupted, **kw)
    shard = out / "shards" / "step20.parquet"
    stamp = shard.stat().st_mtime_ns
    both = circuit_study(load, [20, 40], clean, corrupted, **kw)
    assert loaded == [20, 40]  # step 20 was not loaded again
    assert shard.stat().st_mtime_ns == stamp  # nor rewritten
    pd.testing.assert_frame_equal(both.nodes[both.nodes["step"] == 20].reset_index(drop=True), first.nodes)
    again = circuit_study(load, [20, 40], clean, corrupted, **kw)
    assert loaded == [20, 40]
    pd.testing.assert_frame_equal(again.ledger, both.ledger)
    # a step missing one of its three shards is not finished: recomputed
    (out / "ledger_shards" / "step40.parquet").unlink()
    circuit_study(load, [20, 40], clean, corrupted, **kw)
    assert loaded == [20, 40, 40]
    with pytest.raises(ValueError, match="different settings"):
        circuit_study(load, [20], clean, corrupted, **{**kw, "n_edges": 6})


@pytest.fixture(scope="module")
def toy_study(toy_ckpts, tmp_path_factory):
    out = tmp_path_factory.mktemp("circuits") / "s"
    clean, corrupted = circuit_pairs(toy_ckpts, n=6)
    t = circuit_study(toy_ckpts, [20, 40], clean, corrupted, out=out, n_edges=4, n_boot=20, progress=False)
    return out, clean, t


def test_shard_columns_and_ledger_sums(toy_ckpts, toy_study):
    from mechtrunc.analysis.attribution import attribute

    out, clean, t = toy_study
    assert tuple(t.nodes.columns) == CIRCUIT_NODE_COLUMNS
    assert tuple(t.edges.columns) == CIRCUIT_EDGE_COLUMNS
    assert tuple(t.ledger.columns) == CIRCUIT_LEDGER_COLUMNS
    for got, stored in zip(t, read_circuit_study(out)):
        pd.testing.assert_frame_equal(got, stored)
    # every head's z and every MLP, position all, at each step
    assert sorted(t.nodes["site"].unique()) == ["mlp_out", "z"] and set(t.nodes["position"]) == {"all"}
    assert t.nodes.groupby("step").size().tolist() == [2 + 2, 2 + 2]  # toy: 2 layers x (1 head + 1 MLP)
    assert t.edges.groupby("step")["rank"].apply(list).tolist() == [[1, 2, 3, 4]] * 2
    # the ledger's parts add up to its total item by item, and its means are attribute()'s
    led = t.ledger[t.ledger["step"] == 40]
    parts = led[led["kind"] != "total"].groupby("item")["attribution"].sum()
    total = led[led["kind"] == "total"].set_index("item")["attribution"]
    np.testing.assert_allclose(parts.to_numpy(), total.to_numpy(), atol=1e-4)
    full = attribute(ToyCheckpoints(toy_ckpts)(40), clean)
    dla = full[full["competitor"] == "noise"].set_index("component")["attribution"]
    means = led.groupby("component")["attribution"].mean()
    np.testing.assert_allclose(means.reindex(dla.index).to_numpy(), dla.to_numpy(), atol=1e-5)
    assert float(means["total"]) == pytest.approx(full.attrs["logit_diff"]["noise"], abs=1e-4)


def test_report_of_a_circuit_study(toy_study, tmp_path):
    from mechtrunc.report import build_report, read_result
    from mechtrunc.report.readers import detect

    out, _, t = toy_study
    assert detect(out) == "circuits"
    result = read_result(out)
    assert result.incomplete is None and result.nodes.equals(t.nodes)
    rep = build_report(result, progress=False)
    html = rep.html()
    assert [s.id for s in rep.sections] == ["circuit-ledger", "circuit-heatmap", "circuit-steps"]
    ot = overtaking_step(t.ledger)
    assert ("never overtakes for good" in html) == (ot["step"] is None)
    assert "<h3>step 20</h3>" in html and "<h3>step 40</h3>" in html
    # an interrupted study (no merged tables) is read from its shards and marked incomplete
    part = tmp_path / "part"
    (part / "shards").mkdir(parents=True)
    for sub in ("shards", "edge_shards", "ledger_shards"):
        (part / sub).mkdir(exist_ok=True)
        (part / sub / "step20.parquet").write_bytes((out / sub / "step20.parquet").read_bytes())
    (part / "study.json").write_bytes((out / "study.json").read_bytes())
    r = read_result(part)
    assert r.incomplete and set(r.nodes["step"]) == {20}


def _ledger(attn: dict[int, list[float]], mlp: dict[int, list[float]]) -> pd.DataFrame:
    """A constructed ledger: per step, each item's head and MLP contributions (one item per sequence)."""
    rows = []
    for step in attn:
        for i, (a, m) in enumerate(zip(attn[step], mlp[step])):
            for comp, kind, v in (("L0H0", "head", a), ("L0.mlp", "mlp", m), ("total", "total", a + m)):
                rows.append({"step": step, "component": comp, "kind": kind, "layer": 0, "head": 0, "item": i,
                             "sequence": i, "attribution": v})
    return pd.DataFrame(rows)


def test_overtaking_step_on_a_constructed_ledger():
    # attention ahead at step 10, behind again at 20, ahead for good from 30 on: the step is 30
    attn = {0: [0.0] * 4, 10: [2.0] * 4, 20: [0.5] * 4, 30: [3.0] * 4, 40: [4.0] * 4}
    mlp = {0: [-1.0] * 4, 10: [-1.0] * 4, 20: [-1.0] * 4, 30: [-1.0] * 4, 40: [-1.0] * 4}
    led = _ledger(attn, mlp)
    ev = evidence_by_step(led)
    assert ev["attention"].tolist() == [0.0, 2.0, 0.5, 3.0, 4.0]
    assert ev["mlp_push"].tolist() == [1.0] * 5
    assert ev["ahead"].tolist() == [False, True, False, True, True]
    assert ev["margin"].tolist() == [-1.0, 1.0, -0.5, 2.0, 3.0]
    ot = overtaking_step(led, n_boot=200)
    assert (ot["step"], ot["low"], ot["high"], ot["never"]) == (30, 30, 30, 0.0)  # every prompt agrees
    # one prompt of four far ahead at step 20: the resamples that draw it often are ahead from 20
    attn[20] = [12.0, 0.0, 0.0, 0.0]  # mean 3 > 1: ahead at 20 on the full set
    ot = overtaking_step(_ledger(attn, mlp), n_boot=400, seed=1)
    assert ot["step"] == 10 and ot["low"] == 10 and ot["high"] == 30  # without it, not ahead at 20
    # never ahead at the last step
    attn[40] = [0.0] * 4
    ot = overtaking_step(_ledger(attn, mlp), n_boot=100)
    assert ot["step"] is None and ot["never"] == 1.0 and ot["low"] is None and ot["high"] is None


def test_overtaking_step_needs_the_same_items_at_every_step():
    led = _ledger({0: [1.0, 1.0], 10: [1.0, 1.0]}, {0: [0.0, 0.0], 10: [0.0, 0.0]})
    led = led[~((led["step"] == 10) & (led["item"] == 1))]
    with pytest.raises(ValueError, match="the same prompts must be scored at every step"):
        overtaking_step(led)
    with pytest.raises(ValueError, match="not a circuit study's ledger"):
        evidence_by_step(led.drop(columns="sequence"))


def test_city_swap_replaces_the_stated_city():
    from mechtrunc.core.prompts import PromptSet
    from mechtrunc.tasks.corrupt import city_swap

    tokens = torch.tensor([[1, 7, 2, 1, 3], [1, 5, 2, 1, 3], [1, 4, 2, 1, 3]])
    answer, other = torch.tensor([7, 5, 9]), torch.tensor([8, 6, 8])
    ps = PromptSet(tokens, torch.arange(3), torch.full((3,), 4), answer,
                   torch.stack([torch.full((3,), 2), other], 1), ("the", "other"))
    clean, corrupted = city_swap(ps)
    assert clean.n_sequences == 2 and clean.meta["dropped"] == 1  # the third prompt never states 9
    assert corrupted.tokens.tolist() == [[1, 8, 2, 1, 3], [1, 6, 2, 1, 3]]
    assert torch.equal(corrupted.answer, clean.answer) and clean.meta["role_pos"] == [(1, 4), (1, 4)]
    with pytest.raises(ValueError, match="'other' competitor"):
        city_swap(PromptSet(tokens, torch.arange(3), torch.full((3,), 4), answer, answer[:, None], ("noise",)))


@pytest.fixture(scope="module")
def bench():
    script = ROOT / "benchmarks" / "bench_attribution.py"
    before = sys.modules.pop("_common", None)
    sys.path.insert(0, str(script.parent))
    try:
        spec = importlib.util.spec_from_file_location("bench_attribution", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(script.parent))
        sys.modules.pop("_common", None)
        if before is not None:
            sys.modules["_common"] = before


def test_benchmark_counts_the_passes_of_each_method(bench, tmp_path):
    from mechtrunc.analysis.circuits import attribution_scan
    from mechtrunc.analysis.patching import patching_scan

    hf, bridge = bench.build(layers=2, vocab=64, seed=0, tmp=tmp_path)
    clean, corrupted = bench.prompts(4, 5, 64, seed=0)
    common = dict(sites=("z", "mlp_out"), positions={}, n_boot=10)
    counts = {}
    for name, kw in (("atp", dict(method="atp")), ("ig3", dict(method="ig-inputs", steps=3))):
        for bs in (4, 2):  # one batch, then two: passes per batch do not change
            with bench.count_passes(bench.final_norm(hf)) as c:
                attribution_scan(bridge, clean, corrupted, batch_size=bs, **common, **kw)
            counts[name, bs] = (c["forward"] * bs // 4, c["backward"] * bs // 4)
    assert counts["atp", 4] == counts["atp", 2] == (2, 1)  # clean forward + corrupted forward+backward
    assert counts["ig3", 4] == counts["ig3", 2] == (5, 3)  # two endpoint forwards + k forward+backwards
    with bench.count_passes(bench.final_norm(hf)) as c:
        df = patching_scan(bridge, clean, corrupted, batch_size=4, **common)
    assert c["backward"] == 0 and c["forward"] == df.attrs["forwards"]
    fwd, fwd_bwd = bench.floor_runs(hf, clean)
    with bench.count_passes(bench.final_norm(hf)) as c:
        fwd()
        fwd_bwd()
    assert (c["forward"], c["backward"]) == (2, 1)


def test_units_travel_to_workers(toy_ckpts, toy_study):
    """A unit pickles (Ray tasks and SLURM jobs receive it so) and, unpickled, sees its finished shards."""
    import pickle

    from mechtrunc.studies.circuits import CircuitUnit

    out, clean, _ = toy_study
    unit = CircuitUnit(step=20, loader=ToyCheckpoints(toy_ckpts), clean=clean, corrupted=clean, out=str(out))
    back = pickle.loads(pickle.dumps(unit))
    assert back.done() and back() is None and back.load().cfg == ToyCheckpoints(toy_ckpts)(20).cfg


@pytest.mark.slow
def test_submitit_local_executor_same_tables(toy_ckpts, toy_study, tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from helpers import WORKER_PYTHONPATH
    from mechtrunc.studies import SlurmExecutor

    _, clean, local = toy_study
    corrupted = circuit_pairs(toy_ckpts, n=6)[1]
    ex = SlurmExecutor(cluster="local", units_per_task=1, array_parallelism=2, time_min=10, cpus_per_task=1)
    monkeypatch.setenv("PYTHONPATH", WORKER_PYTHONPATH)  # submitit's local jobs inherit the environment
    t = circuit_study(toy_ckpts, [20, 40], clean, corrupted, out=tmp_path / "slurm", n_edges=4, n_boot=20,
                      progress=False, executor=ex)
    # the same tables; float sums in a worker process with its own thread count may differ in
    # the last bits (measured: 3.6e-8 where the in-process value is exactly 0), so within 1e-6
    for a, b in zip(t, local):
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-6, atol=1e-6)


def test_command_line_from_toy_training_to_the_study(tmp_path, capsys):
    from mechtrunc.cli import main

    run = tmp_path / "run"
    assert main(["toy", "train", "--out", str(run), "--keep-checkpoints", "--d-model", "16", "--seq-len", "16",
                 "--steps", "10", "--eval-every", "5", "--batch-size", "8", "--no-progress"]) == 0
    assert ToyCheckpoints(run / "checkpoints").steps() == [5, 10]
    capsys.readouterr()
    out = tmp_path / "study"
    assert main(["circuits", "checkpoints", str(run), "--out", str(out), "--n", "4", "--edges", "3",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "2 checkpoints, metric logit_diff_noise" in text and f"mechtrunc report {out}" in text
    t = read_circuit_study(out)
    assert sorted(t.nodes["step"].unique()) == [5, 10] and t.edges.groupby("step").size().tolist() == [3, 3]
    # a rerun with the same options loads nothing and prints the same table
    assert main(["circuits", "checkpoints", str(run), "--out", str(out), "--n", "4", "--edges", "3",
                 "--no-progress"]) == 0
    assert capsys.readouterr().out == text
