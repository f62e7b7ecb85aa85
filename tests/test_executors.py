"""Checkpoint studies on Ray and on submitit give the local executor's table.

Six checkpoints of the tiny recall-trained GPT-NeoX (conftest).  Ray: one embedded local
cluster for the module (2 CPUs, so 2 workers), and one worker is killed with SIGKILL by its PID
while it holds a checkpoint: Ray retries the task and every checkpoint appears exactly once.
submitit: the SLURM code path on submitit's LocalExecutor (2 array elements of 3 checkpoints).
Both are slow to start (a Ray cluster and fresh worker processes importing torch), hence slow.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pandas as pd
import pytest

from helpers import WORKER_PYTHONPATH, SlowLoader
from mechtrunc.studies import CheckpointDirectory, Grid, RayExecutor, SlurmExecutor, checkpoint_study

GRID = Grid(keeps=(1, 0.5, 0.1, 0))
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    cols = [c for c in a.columns if c != "seconds"]
    pd.testing.assert_frame_equal(a[cols].reset_index(drop=True), b[cols].reset_index(drop=True))


@pytest.fixture(scope="module")
def local_table(recall_checkpoints):
    ckdir, steps, prompts = recall_checkpoints
    return checkpoint_study(SlowLoader(CheckpointDirectory(ckdir), 0), steps, prompts, grid=GRID, progress=False)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")  # the test extra installs it; see pyproject.toml
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": WORKER_PYTHONPATH, "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def test_ray_two_workers_one_killed_mid_task(ray_cluster, recall_checkpoints, local_table, tmp_path):
    ckdir, steps, prompts = recall_checkpoints
    out = tmp_path / "ray"
    result, killed = {}, []

    def run():
        try:
            result["df"] = checkpoint_study(SlowLoader(CheckpointDirectory(ckdir), 1.5), steps, prompts, grid=GRID,
                                            out=out, progress=False, executor=RayExecutor(max_retries=3))
        except BaseException as e:  # noqa: BLE001 - reported below
            result["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 240
    while time.time() < deadline and not killed and thread.is_alive():
        for marker in (out / "running").glob("step*.json") if (out / "running").is_dir() else []:
            try:
                pid = json.loads(marker.read_text())["pid"]
            except (OSError, ValueError, KeyError):
                continue
            if pid != os.getpid():
                os.kill(pid, signal.SIGKILL)  # a Ray worker holding a checkpoint
                killed.append((marker.stem, pid))
                break
        time.sleep(0.05)
    thread.join(300)
    assert killed, "no worker was seen holding a checkpoint"
    assert "error" not in result, result.get("error")
    df = result["df"]
    _same(df, local_table)
    assert df.groupby("step").size().tolist() == [9] * 6  # every checkpoint exactly once
    assert sorted(p.name for p in (out / "shards").glob("step*.parquet")) == sorted(f"step{s}.parquet" for s in steps)


def test_submitit_local_executor_same_table(recall_checkpoints, local_table, tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    ckdir, steps, prompts = recall_checkpoints
    out = tmp_path / "slurm"
    ex = SlurmExecutor(cluster="local", units_per_task=3, array_parallelism=2, time_min=10, cpus_per_task=1)
    monkeypatch.setenv("PYTHONPATH", WORKER_PYTHONPATH)  # submitit's local jobs inherit the environment
    df = checkpoint_study(SlowLoader(CheckpointDirectory(ckdir), 0), steps, prompts, grid=GRID, out=out,
                          progress=False, executor=ex)
    _same(df, local_table)
    assert (out / "slurm").is_dir()  # submitit's job folder: scripts, pickles, logs
    assert len(list((out / "shards").glob("step*.parquet"))) == 6
