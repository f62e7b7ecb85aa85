"""``--no-progress`` silences every progress bar (ours, tqdm's, transformers'); without it each
long step shows its bar (loading a local model shows none: mechtrunc.pythia.load_model turns
transformers' "Loading weights" bar off while it reads from disk).  Checked on the stderr of CLI runs on a tiny local
Pythia-shaped model and a tiny toy training run: in this process (libraries already imported)
and in a fresh process (libraries imported after the flag took effect)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mechtrunc.cli import main
from mechtrunc.testing import build_random_pythia

BAR_MARKS = ("it/s", "s/it", "%|", "Loading weights", "\r")


@pytest.fixture(scope="module")
def tiny_pythia(pythia_tokenizer_dir, tmp_path_factory):
    return build_random_pythia({"hidden_size": 32, "num_attention_heads": 4}, tokenizer_dir=pythia_tokenizer_dir,
                               out_dir=tmp_path_factory.mktemp("tiny_pythia"), n_layers=1, seed=0)


@pytest.fixture
def bars_allowed(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)


def _truncate_args(model, out):
    return ["pythia", "truncate", "--model", str(model), "--n", "4", "--layers", "0", "--matrices", "mlp.W_out",
            "--keeps", "0.5", "--batch-size", "4", "--out", str(out)]


def test_pythia_truncate_bars_and_no_progress(tiny_pythia, tmp_path, capfd, bars_allowed):
    assert main(_truncate_args(tiny_pythia, tmp_path / "loud")) == 0
    loud = capfd.readouterr().err
    assert "Loading weights" not in loud  # transformers' bar is off while a local model is read
    assert "truncation" in loud and "%|" in loud  # the grid's bar (the SVDs are computed inside it)
    assert main([*_truncate_args(tiny_pythia, tmp_path / "quiet"), "--no-progress"]) == 0
    quiet = capfd.readouterr().err
    assert not any(mark in quiet for mark in BAR_MARKS), quiet


@pytest.mark.slow
def test_pythia_truncate_no_progress_fresh_process(tiny_pythia, tmp_path):
    """A fresh process: transformers is imported after --no-progress took effect."""
    env = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    proc = subprocess.run([sys.executable, "-m", "mechtrunc.cli", *_truncate_args(tiny_pythia, tmp_path / "q2"),
                           "--no-progress"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert not any(mark in proc.stderr for mark in BAR_MARKS), proc.stderr


def test_toy_train_bar_and_no_progress(tmp_path, capfd, bars_allowed):
    args = ["toy", "train", "--d-model", "16", "--seq-len", "16", "--steps", "4", "--eval-every", "4",
            "--batch-size", "4"]
    assert main([*args, "--out", str(tmp_path / "loud")]) == 0
    loud = capfd.readouterr().err
    assert "train" in loud and "%|" in loud
    assert main([*args, "--out", str(tmp_path / "quiet"), "--no-progress"]) == 0
    quiet = capfd.readouterr().err
    assert not any(mark in quiet for mark in BAR_MARKS), quiet


def test_in_process_no_progress_restores_the_bars(bars_allowed):
    """``main`` switches third-party bars off only for the command it runs."""
    import transformers.utils.logging as tf_logging
    from huggingface_hub.utils import are_progress_bars_disabled

    from mechtrunc.cli import progress_bars

    assert tf_logging.is_progress_bar_enabled()
    with progress_bars(False):
        assert not tf_logging.is_progress_bar_enabled() and are_progress_bars_disabled()
        assert os.environ["TQDM_DISABLE"] == "1"
    assert tf_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
    assert "TQDM_DISABLE" not in os.environ
