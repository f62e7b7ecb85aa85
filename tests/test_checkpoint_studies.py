"""Checkpoint studies: shards, resume after crashes and kills, checkpoint directories, the
offline step-only hub cache, and the `pythia checkpoints` CLI.

Checkpoints: the tiny recall-trained GPT-NeoX saved at steps 0, 1, 2, 4, 8, 16 (conftest).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import WORKER_PYTHONPATH, SlowLoader

from mechtrunc.cli import main
from mechtrunc.studies import CheckpointDirectory, Grid, LocalExecutor, checkpoint_study
from mechtrunc.studies.checkpoints import best_by_step, heldout_by_step, read_checkpoint_items
from mechtrunc.models.testing import build_random_pythia, fake_hub_cache, word_level_tokenizer_dir

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[1]
GRID = Grid(keeps=(1, 0.5, 0.1, 0))


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    cols = [c for c in a.columns if c != "seconds"]
    pd.testing.assert_frame_equal(a[cols].reset_index(drop=True), b[cols].reset_index(drop=True))


@pytest.fixture(scope="module")
def reference(recall_checkpoints, tmp_path_factory):
    """The grid study over the six checkpoints, local executor, with out=."""
    ckdir, steps, prompts = recall_checkpoints
    out = tmp_path_factory.mktemp("ref")
    df = checkpoint_study(ckdir, steps, prompts, grid=GRID, out=out, progress=False)
    return df, out


def test_grid_units_write_one_shard_per_checkpoint(recall_checkpoints, reference):
    ckdir, steps, prompts = recall_checkpoints
    df, out = reference
    # one baseline + 2 matrices x 4 keeps per step, in step order
    assert df["step"].tolist() == [s for s in steps for _ in range(9)]
    assert df.groupby("step")["baseline"].sum().tolist() == [1] * 6
    assert sorted(p.name for p in (out / "shards").iterdir()) == sorted(f"step{s}.parquet" for s in steps)
    assert not (out / "running").exists()
    merged = pd.concat([pd.read_parquet(out / "shards" / f"step{s}.parquet") for s in steps], ignore_index=True)
    _same(df, merged)
    _same(df, pd.read_parquet(out / "checkpoints.parquet"))
    assert len(pd.read_csv(out / "checkpoints.csv")) == len(df)
    meta = json.loads((out / "study.json").read_text())
    assert meta["kind"] == "checkpoints" and meta["grid"]["keeps"] == [1.0, 0.5, 0.1, 0.0]
    # training changes the model: accuracy moves between step 0 and step 16
    base = df[df.baseline].set_index("step")
    assert base.loc[0, "loss"] != base.loc[16, "loss"]
    # keep=0 of W_out removes the MLP's contribution, keep=1 is the identity (baseline metrics)
    ident = df[(df.matrix == "mlp.W_in") & (df.keep == 1)].set_index("step")
    assert (ident["loss"] == base["loss"]).all() and ident["identity"].all()
    # a rerun computes nothing and returns the same table
    again = checkpoint_study(ckdir, steps, prompts, grid=GRID, out=out, progress=False,
                             executor=_NoRun())
    _same(df, again)


def test_grid_items_feed_intervals_and_heldout_choice_per_step(recall_checkpoints, reference, tmp_path):
    """Every (step, configuration, prompt) value is kept, exactly once, from the same forwards;
    a step whose item shard is missing is recomputed; ``heldout_by_step`` chooses on the select
    prompts and reports the choice on the others."""
    ckdir, steps, prompts = recall_checkpoints
    df, out = reference
    items = read_checkpoint_items(out)
    assert len(items) == len(df) * len(prompts)
    assert not items.duplicated(["step", "config", "item"]).any()
    # each row's metric is the mean of its items (config = the row's index within its step)
    for step, sub in df.groupby("step"):
        means = items[items.step == step].groupby("config")["p_answer"].mean().to_numpy()
        np.testing.assert_allclose(means, sub["p_answer"].to_numpy(), atol=1e-6)
    # a step without its item shard is not finished: only that checkpoint is loaded again
    work = tmp_path / "copy"
    import shutil

    shutil.copytree(out, work)
    (work / "item_shards" / "step4.parquet").unlink()
    (work / "items.parquet").unlink()
    runs = _Records()
    again, again_items = checkpoint_study(ckdir, steps, prompts, grid=GRID, out=work, progress=False,
                                          return_items=True, executor=runs)
    assert runs.steps == [4]
    _same(again, df)
    pd.testing.assert_frame_equal(again_items.reset_index(drop=True), items.reset_index(drop=True))

    h = heldout_by_step(items, "p_answer", select=0.5, seed=3, n_boot=200)
    assert h[["step", "part"]].values.tolist() == [[s, p] for s in steps for p in ("select", "eval")]
    chosen_sequences = h.attrs["select_sequences"]
    assert len(chosen_sequences) == 16  # half of the 32 sequences, the same at every step
    for step in steps:
        sub = items[items.step == step]
        rows = h[h.step == step].set_index("part")
        wide = sub.pivot(index="config", columns="item", values="p_answer")
        seq = sub[sub.config == 0].sort_values("item")["sequence"].to_numpy()
        on_sel = np.isin(seq, chosen_sequences)
        base = int(sub[sub.baseline].config.iloc[0])
        cid = int(rows.loc["select", "config"])
        assert int(rows.loc["eval", "config"]) == cid
        for part, mask in (("select", on_sel), ("eval", ~on_sel)):
            assert rows.loc[part, "n_items"] == mask.sum() and rows.loc[part, "n_sequences"] == 16
            assert rows.loc[part, "truncated"] == pytest.approx(wide.loc[cid].to_numpy()[mask].mean(), abs=1e-12)
            assert rows.loc[part, "full"] == pytest.approx(wide.loc[base].to_numpy()[mask].mean(), abs=1e-12)
            assert rows.loc[part, "ci_low"] <= rows.loc[part, "change"] <= rows.loc[part, "ci_high"]
        # nothing beats the choice on the select part (non-identity candidates, or the baseline)
        cand = sub[~sub.baseline & ~sub.identity].config.unique()
        best_sel = max([wide.loc[base].to_numpy()[on_sel].mean()]
                       + [wide.loc[c].to_numpy()[on_sel].mean() for c in cand])
        assert rows.loc["select", "truncated"] == pytest.approx(best_sel, abs=1e-12)
    with pytest.raises(ValueError, match="unknown metric 'p_nothing'"):
        heldout_by_step(items, "p_nothing")
    # in-sample best_by_step still works on the table
    assert set(best_by_step(df, "p_answer")["variant"]) == {"full", "best"}


class _Records(LocalExecutor):
    """The local executor, recording which checkpoints it was given."""

    def map(self, units, progress=True):
        self.steps = [u.step for u in units]
        return super().map(units, progress)


class _NoRun:
    def map(self, units, progress=True):
        raise AssertionError(f"nothing should run, got {[u.step for u in units]}")


class _Loads:
    """A CheckpointDirectory that records the steps it loads and can fail at one step."""

    def __init__(self, directory, fail_at=None):
        self.inner, self.fail_at, self.steps, self.threads = CheckpointDirectory(directory), fail_at, [], []

    def __call__(self, step):
        if step == self.fail_at:
            raise RuntimeError(f"simulated crash at step {step}")
        self.steps.append(step)
        self.threads.append(threading.current_thread().name)
        return self.inner(step)


def test_crash_between_shards_loses_and_duplicates_nothing(recall_checkpoints, reference, tmp_path):
    ckdir, steps, prompts = recall_checkpoints
    out = tmp_path / "crash"
    crashing = _Loads(ckdir, fail_at=4)
    with pytest.raises(RuntimeError, match="simulated crash at step 4"):
        checkpoint_study(crashing, steps, prompts, grid=GRID, out=out, progress=False,
                         executor=LocalExecutor(prefetch=False))
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["step0.parquet", "step1.parquet", "step2.parquet"]
    resumed = _Loads(ckdir)
    df = checkpoint_study(resumed, steps, prompts, grid=GRID, out=out, progress=False)
    assert resumed.steps == [4, 8, 16]  # finished checkpoints are not even loaded
    _same(df, reference[0])
    # prefetching: every checkpoint after the first is loaded on the background thread
    assert resumed.threads[0] == "MainThread" or resumed.threads[0].startswith("mechtrunc-prefetch")
    assert all(t.startswith("mechtrunc-prefetch") for t in resumed.threads[1:])


_KILL_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from mechtrunc.studies import checkpoint_study, Grid, CheckpointDirectory
from helpers import SlowLoader
from mechtrunc.tasks.recall import RecallConfig, RecallTask
prompts = RecallTask(RecallConfig(alpha=0.5, seq_len=32)).test_set(32).to_prompts()
checkpoint_study(SlowLoader(CheckpointDirectory(sys.argv[1]), 0.5), [0, 1, 2, 4, 8, 16], prompts,
                 grid=Grid(keeps=(1, 0.5, 0.1, 0)), out=sys.argv[2], progress=False)
"""


def test_killed_process_resumes_with_every_row_once(recall_checkpoints, reference, tmp_path):
    ckdir, steps, prompts = recall_checkpoints
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": WORKER_PYTHONPATH, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(ckdir), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            shards = list((out / "shards").glob("step*.parquet")) if (out / "shards").is_dir() else []
            if len(shards) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the study finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    n_done = len(list((out / "shards").glob("step*.parquet")))
    assert 2 <= n_done < 6
    df = checkpoint_study(SlowLoader(CheckpointDirectory(ckdir), 0), steps, prompts, grid=GRID, out=out, progress=False)
    _same(df, reference[0])
    assert not list((out / "shards").glob(".*.tmp"))  # temporaries of the killed writer are gone
    assert len(list((out / "shards").glob("step*.parquet"))) == 6


def test_truncation_units_template_and_local_checks(recall_checkpoints, tmp_path):
    import mechtrunc as mt

    ckdir, steps, prompts = recall_checkpoints
    iv = mt.Truncate("mlp.W_out", layer=0, keep=0.1)
    df = checkpoint_study(str(ckdir / "step{step}"), steps[:3], prompts, iv, out=tmp_path / "t", progress=False)
    assert df[["step", "variant"]].values.tolist() == [[s, v] for s in steps[:3] for v in ("full", "truncated")]
    assert (df[df.variant == "full"]["loss"].values != df[df.variant == "truncated"]["loss"].values).all()
    # per-item values of both variants at every step: their means are the table's metrics
    items = read_checkpoint_items(tmp_path / "t")
    assert len(items) == 3 * 2 * len(prompts)
    means = items.groupby(["step", "variant"])[["p_answer", "loss"]].mean()
    for _, r in df.iterrows():
        for m in ("p_answer", "loss"):
            assert means.loc[(r["step"], r["variant"]), m] == pytest.approx(r[m], abs=1e-6)
    # bad layers and missing steps fail before anything is written
    with pytest.raises(ValueError, match=r"layer 3 is out of range: valid layers are 0..0"):
        checkpoint_study(ckdir, steps, prompts, mt.Truncate("mlp.W_out", layer=3, keep=0.1), out=tmp_path / "a")
    with pytest.raises(ValueError, match=r"no saved model for step\(s\) 3 .*steps found: 0, 1, 2, 4, 8, 16"):
        checkpoint_study(ckdir, [0, 3], prompts, out=tmp_path / "b")
    with pytest.raises(ValueError, match="single saved model"):
        checkpoint_study(ckdir / "step0", [0], prompts, out=tmp_path / "c")
    with pytest.raises(ValueError, match="unknown executor 'dask'"):
        checkpoint_study(ckdir, [0], prompts, out=tmp_path / "d", executor="dask")
    with pytest.raises(ValueError, match="not both"):
        checkpoint_study(ckdir, [0], prompts, iv, grid=GRID, out=tmp_path / "e")
    assert not any((tmp_path / x).exists() for x in "abcde")


# ----------------------------------------------------------------------------------------
# the CLI on a directory of checkpoints
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recall_prompt_file(tmp_path_factory):
    """Prompts in the recall tokenizer's vocabulary (word-level over single characters)."""
    path = tmp_path_factory.mktemp("prompts") / "p.csv"
    path.write_text("prompt,answer,competitors\na b c a,b, c\nd e f d,e, f\nb c d b,c, d\n")
    return path


def test_cli_checkpoints_directory_and_template(recall_checkpoints, recall_prompt_file, tmp_path, capsys):
    ckdir, steps, _ = recall_checkpoints
    out = tmp_path / "cli"
    rc = main(["pythia", "checkpoints", "--model", str(ckdir), "--steps", "0", "16", "--task", str(recall_prompt_file),
               "--layer", "0", "--matrix", "mlp.W_in", "--keep", "0.5", "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    df = pd.read_csv(out / "checkpoints.csv")
    assert df[["step", "variant"]].values.tolist() == [[0, "full"], [0, "truncated"], [16, "full"], [16, "truncated"]]
    assert df["n_items"].tolist() == [3.0] * 4
    assert (out / "checkpoints.png").read_bytes()[:4] == b"\x89PNG"
    iv = pd.read_csv(out / "intervals.csv")  # every step and variant with its interval
    assert iv[["step", "config"]].values.tolist() == [[0, 0], [0, 1], [16, 0], [16, 1]]
    assert ((iv["low"] <= iv["value"]) & (iv["value"] <= iv["high"])).all()
    np.testing.assert_allclose(iv["value"], df["p_answer"], atol=1e-6)
    assert "change against the full model" in capsys.readouterr().out
    out2 = tmp_path / "cli_grid"
    rc = main(["pythia", "checkpoints", "--model", str(ckdir / "step{step}"), "--steps", "0", "16", "--task",
               str(recall_prompt_file), "--grid", "--keeps", "1", "0", "--out", str(out2), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert len(pd.read_csv(out2 / "checkpoints.csv")) == 2 * (1 + 2 * 2)
    h = pd.read_csv(out2 / "heldout_by_step.csv")  # chosen on 2 of the 3 prompts, reported on the third
    assert h[["step", "part"]].values.tolist() == [[0, "select"], [0, "eval"], [16, "select"], [16, "eval"]]
    assert h["n_sequences"].tolist() == [2, 1, 2, 1]
    assert "held-out choice by p_answer per step" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--steps", "0", "3"], r"no saved model for step\(s\) 3"),
    (["--steps", "0", "--layer", "1"], "layer 1 is out of range"),
    (["--steps", "0", "--slurm-partition", "gpu"], "only apply with --executor slurm"),
    (["--steps", "0", "--ray-address", "auto"], "only applies with --executor ray"),
    (["--steps", "0", "--executor", "slurm"], "needs SLURM"),
    (["--steps", "0", "--keeps", "0.5"], "only apply with --grid"),
])
def test_cli_checkpoints_bad_arguments_exit_2_without_writing(recall_checkpoints, tmp_path, capsys, extra, message):
    import re

    ckdir, _, _ = recall_checkpoints
    out = tmp_path / "bad"
    rc = main(["pythia", "checkpoints", "--model", str(ckdir), "--task", "factual", "--out", str(out),
               "--no-progress", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(message, err), err
    assert "Traceback" not in err
    assert not (out / "study.json").exists()


@pytest.mark.parametrize("argv", [["--slurm-time", "0"], ["--n", "0"], ["--slurm-gpus", "-1"],
                                  ["--grid", "--keeps", "1.5"]])
def test_cli_checkpoints_bad_numbers_are_usage_errors(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["pythia", "checkpoints", "--model", "x", "--steps", "0", "--out", str(tmp_path), *argv])
    assert e.value.code == 2


def test_cli_checkpoints_n_and_seed_reach_the_prompts(pythia_tokenizer_dir, tmp_path, capsys):
    """`--n` and `--seed` build the IOI prompts (they were ignored: 200 prompts, seed 0)."""
    shape = {"size": "14m", "hidden_size": 32, "num_attention_heads": 4}
    for step in (0, 1000):
        build_random_pythia(shape, tokenizer_dir=pythia_tokenizer_dir, out_dir=tmp_path / "ck" / f"step{step}",
                            seed=step, n_layers=1)
    tables = {}
    for seed in (3, 4):
        out = tmp_path / f"out{seed}"
        rc = main(["pythia", "checkpoints", "--model", str(tmp_path / "ck"), "--steps", "0", "1000", "--task", "ioi",
                   "--n", "7", "--seed", str(seed), "--out", str(out), "--no-progress"])
        assert rc == 0, capsys.readouterr().err
        tables[seed] = pd.read_csv(out / "checkpoints.csv")
        assert json.loads((out / "study.json").read_text())["prompts"] == f"ioi n=7 seed={seed}"
    assert tables[3]["n_items"].tolist() == [7.0, 7.0]
    assert (tables[3]["logit_diff_the"] != tables[4]["logit_diff_the"]).all()


# ----------------------------------------------------------------------------------------
# a Hugging Face cache holding only step{N} revisions, offline
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def step_only_hub(tmp_path_factory):
    """models--EleutherAI--pythia-14m with refs/step0 and refs/step1000 only (no main); the
    tokenizer has a BOS token, so the bridge reloads it by name while booting."""
    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp("hub")
    tok_dir = word_level_tokenizer_dir(tmp / "tok", [f"w{i}" for i in range(127)] + ["<unk>"], unk_token="<unk>",
                                       special_token="<unk>")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    tok.bos_token = "<unk>"
    tok.save_pretrained(tok_dir)
    shape = {"size": "14m", "hidden_size": 32, "num_attention_heads": 4}
    revs = {f"step{s}": build_random_pythia(shape, tokenizer_dir=tok_dir, out_dir=tmp / f"s{s}", seed=s, n_layers=1)
            for s in (0, 1000)}
    repo = fake_hub_cache(tmp / "cache", "EleutherAI/pythia-14m", revs)
    assert sorted(p.name for p in (repo / "refs").iterdir()) == ["step0", "step1000"]
    prompts = tmp / "p.csv"
    prompts.write_text("prompt,answer,competitors\nw1 w2 w3,w4,w5\nw6 w7 w8,w9,w10\n")
    return tmp / "cache", prompts


_LOAD_SCRIPT = """
import contextlib, io, json, sys
from mechtrunc.models.hf import load_model, ModelNotAvailableError
from mechtrunc.cli import main
m = load_model("EleutherAI/pythia-14m", step=1000)
ids = m.tokenizer("w1 w2")["input_ids"]
try:
    load_model("EleutherAI/pythia-14m", step=2000)
    missing = "loaded"
except ModelNotAvailableError as e:
    missing = str(e)
cli = {}
for name, steps in (("ok", ["0", "1000"]), ("missing", ["0", "2000"])):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["pythia", "checkpoints", "--model", "EleutherAI/pythia-14m", "--task", sys.argv[1],
                   "--no-progress", "--steps", *steps, "--out", sys.argv[2] + "/" + name])
    cli[name] = [rc, err.getvalue()]
print(json.dumps({"revision": m.cfg.revision, "step": m.cfg.checkpoint_value, "ids": ids,
                  "name": m.tokenizer.name_or_path, "missing": missing, "cli": cli}))
"""


def test_step_only_hub_cache_offline(step_only_hub, tmp_path):
    """load_model(id, step=N) and `pythia checkpoints` with HF_HUB_OFFLINE=1 and a cache that
    holds only step{N} revisions (no main): they work, and a missing revision is the clear
    error (exit 2, no traceback).  One subprocess, because the cache location is read when
    huggingface_hub is imported."""
    cache, prompts = step_only_hub
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "home"), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, str(prompts), str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["revision"] == "step1000" and got["step"] == 1000
    assert got["ids"] == [127, 1, 2]  # BOS (<unk>, id 127) added by the bridge, then w1 w2
    assert got["name"] == "EleutherAI/pythia-14m"
    assert "step2000" in got["missing"] and "huggingface-cli download EleutherAI/pythia-14m --revision step2000" in got["missing"]

    rc, err = got["cli"]["ok"]
    assert rc == 0, err[-3000:]
    df = pd.read_csv(tmp_path / "ok" / "checkpoints.csv")
    assert df["step"].tolist() == [0, 1000] and df["n_items"].tolist() == [2.0, 2.0]
    assert df.loc[0, "loss"] != df.loc[1, "loss"]
    rc, err = got["cli"]["missing"]
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err and "mechtrunc: error: model 'EleutherAI/pythia-14m' at revision 'step2000'" in err


@pytest.mark.slow
def test_projection_script_runs_at_tiny_shape(tmp_path):
    """benchmarks/project_checkpoint_study.py end to end on CPU (the GPU run uses --shape 1.4b)."""
    out = tmp_path / "proj.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "project_checkpoint_study.py"), "--shape", "tiny",
                        "--threads", "1", "--checkpoints", "2", "--prompts", "16", "--keeps", "1", "0.5", "--json",
                        str(out)], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["configurations"] == 2 * 2 * 2 and got["evaluated_configurations"] == 4
    assert len(got["measured"]) == 2 and all(m["grid_s"] > 0 and m["load_s"] > 0 for m in got["measured"])
    proj = got["projection_s"]
    startup = got["assumptions"]["ray_startup_s"]
    assert proj["one_gpu_prefetch"] <= proj["one_gpu_no_prefetch"]
    assert proj["ray_8_gpus"] - startup < proj["one_gpu_no_prefetch"] / 7  # 20 rounds instead of 154 checkpoints
    assert got["validation"]["checkpoints"] == 2 and "projected 154-checkpoint study" in r.stdout


def test_checkpoint_request_checks_the_inputs_once(tmp_path):
    """checkpoint_study's inputs are one value object (as Grid is a grid): normalised once, every
    bad value named before anything runs."""
    from mechtrunc import Truncate
    from mechtrunc.studies.checkpoints import CheckpointRequest

    def load(step):
        raise AssertionError("nothing is loaded by the checks")

    r = CheckpointRequest(load, np.array([4, 0, 4, 2]), "ioi", {"layer": 1, "matrix": "mlp.W_out", "keep": 0.1},
                          batch_size=np.int64(8), n_prompts=50.0, prompt_seed=3)
    assert r.steps == (4, 0, 2) and r.batch_size == 8 and r.n_prompts == 50 and r.prompt_seed == 3
    assert r.intervention == Truncate("mlp.W_out", layer=1, keep=0.1) and r.grid is None
    assert (r.loader, r.source, r.prompt_desc) == (load, "callable", "ioi n=50 seed=3")
    g = CheckpointRequest(load, [0], "factual", grid={"layers": [0], "keeps": [0.5]})
    assert g.grid == Grid(layers=(0,), keeps=(0.5,)) and g.intervention is None and g.prompt_desc == "factual"
    for kwargs, message in [
        (dict(steps=[]), "steps is empty"),
        (dict(steps=[0, -1]), "step must be >= 0, got -1"),
        (dict(batch_size=0), "batch_size must be >= 1, got 0"),
        (dict(n_prompts=0), "n_prompts must be >= 1, got 0"),
        (dict(prompts=str(tmp_path / "none.csv")), r"unknown task .*none\.csv.*: give 'ioi', 'factual'"),
        (dict(truncation=Truncate("mlp.W_out", layer=0, keep=0.5), grid=True), "not both"),
        (dict(load=str(tmp_path / "no-such-dir")), "no such checkpoint directory"),
    ]:
        args = {"load": load, "steps": [0], "prompts": "ioi", **kwargs}
        with pytest.raises(ValueError, match=message):
            CheckpointRequest(**args)
    with pytest.raises(TypeError, match=r"load options \['dtype'\] only apply when a model name is given"):
        CheckpointRequest(load, [0], "ioi", load_kwargs={"dtype": "float32"})
    with pytest.raises(TypeError, match="prompts_fn must be"):
        CheckpointRequest(load, [0], 42)
