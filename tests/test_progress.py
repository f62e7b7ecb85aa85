"""Progress output (:mod:`mechtrunc._progress`): a live bar on a terminal, a few plain lines
elsewhere (at most one per tenth of the total or per 30 s, and a final one), nothing with
``MECHTRUNC_PROGRESS=0`` or ``--no-progress`` (which every command accepts), and never the
Hugging Face libraries' bars on a load from disk or a save.  Checked on the line reporter with a
fake clock, on the bar factory, and on the stderr of CLI runs (in this process and in a fresh one
whose output goes to a pipe, as in a log or CI)."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys

import pytest

from mechtrunc import _progress
from mechtrunc._progress import LineReporter, NullBar, progress_bar, silenced, third_party_bars_off
from mechtrunc.cli import build_parser, main
from mechtrunc.models.testing import build_random_pythia

BAR_MARKS = ("it/s", "s/it", "%|", "Loading weights", "Writing model shards", "\r")
CLEAN_ENV = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", _progress.ENV)


@pytest.fixture(scope="module")
def tiny_pythia(pythia_tokenizer_dir, tmp_path_factory):
    return build_random_pythia({"hidden_size": 32, "num_attention_heads": 4}, tokenizer_dir=pythia_tokenizer_dir,
                               out_dir=tmp_path_factory.mktemp("tiny_pythia"), n_layers=1, seed=0)


@pytest.fixture
def bars_allowed(monkeypatch):
    for name in CLEAN_ENV:
        monkeypatch.delenv(name, raising=False)


def _run(argv, **env) -> tuple[int, str, str]:
    """``python -m mechtrunc.cli ARGV`` in a fresh process, stdout and stderr to pipes; both read
    as bytes (text mode would turn every \\r into a newline)."""
    proc = subprocess.run([sys.executable, "-m", "mechtrunc.cli", *argv], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=_fresh_env(**env), timeout=600)
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def _fresh_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# ------------------------------------------------------------------ the line reporter
def test_line_reporter_prints_at_most_one_line_per_tenth():
    out, clock = io.StringIO(), FakeClock()
    bar = LineReporter(1000, "train", "step", file=out, clock=clock)
    for _ in range(1000):
        clock.t += 0.01
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # 100, 200, ..., 900 and the final line
    assert lines[0].startswith("train: 100/1000 steps (10%), 1.0 s")
    assert lines[-1].startswith("train: 1000/1000 steps (100%), 10.0 s")
    assert "\r" not in out.getvalue()
    bar.close()  # closing twice prints nothing more
    assert len(out.getvalue().splitlines()) == 10


def test_line_reporter_prints_a_line_every_30_seconds_of_slow_progress():
    out, clock = io.StringIO(), FakeClock()
    bar = LineReporter(10**6, "grid", "config", file=out, clock=clock)  # never a tenth in this run
    bar.set_postfix(loss="2.31")
    for _ in range(100):  # one update per second for 100 s
        clock.t += 1.0
        bar.update(1)
    lines = out.getvalue().splitlines()
    assert [line.split(", ")[1] for line in lines] == ["30.0 s", "60.0 s", "90.0 s"]
    assert lines[0] == "grid: 30/1000000 configs (0%), 30.0 s, loss=2.31"
    bar.close()
    assert out.getvalue().splitlines()[-1] == "grid: 100/1000000 configs (0%), 100.0 s, stopped, loss=2.31"


def test_line_reporter_resumed_run_and_unknown_total():
    out, clock = io.StringIO(), FakeClock()
    bar = LineReporter(100, "train", "step", initial=95, file=out, clock=clock)
    for _ in range(5):
        bar.update(1)
    bar.close()
    assert out.getvalue().splitlines() == ["train: 100/100 steps (100%), 0.0 s"]
    out = io.StringIO()
    bar = LineReporter(None, "load", file=out, clock=clock)
    for _ in range(50):
        clock.t += 1.0
        bar.update(1)
    bar.close()
    assert out.getvalue().splitlines() == ["load: 30 its, 30.0 s", "load: 50 its, 50.0 s"]


# ------------------------------------------------------------------ the bar factory and the switches
def test_progress_bar_kinds(bars_allowed):
    from tqdm import tqdm

    assert isinstance(progress_bar(10, "x", file=io.StringIO()), LineReporter)  # a file, a pipe: lines
    live = progress_bar(10, "x", file=FakeTerminal())
    assert isinstance(live, tqdm)  # a terminal: the live bar
    live.close()
    assert type(progress_bar(10, "x", enabled=False, file=FakeTerminal())) is NullBar
    assert type(progress_bar(0, "x", file=io.StringIO())) is NullBar
    with silenced():
        assert type(progress_bar(10, "x", file=FakeTerminal())) is NullBar
        with silenced():  # nested
            pass
        assert type(progress_bar(10, "x", file=FakeTerminal())) is NullBar
    assert isinstance(progress_bar(10, "x", file=io.StringIO()), LineReporter)


@pytest.mark.parametrize("value", ["0", "false", "No", " OFF "])
def test_env_off_silences_every_bar(monkeypatch, value):
    monkeypatch.setenv(_progress.ENV, value)
    assert not _progress.progress_enabled()
    assert type(progress_bar(10, "x", file=FakeTerminal())) is NullBar
    assert type(progress_bar(10, "x", file=io.StringIO())) is NullBar


@pytest.mark.parametrize("value", ["", "1", "true", "Yes", "on"])
def test_env_on_values(monkeypatch, value):
    monkeypatch.setenv(_progress.ENV, value)
    assert _progress.progress_enabled()
    assert isinstance(progress_bar(10, "x", file=io.StringIO()), LineReporter)


def test_env_bad_value_is_an_error_naming_it(monkeypatch, capsys):
    monkeypatch.setenv(_progress.ENV, "maybe")
    with pytest.raises(ValueError, match=r"MECHTRUNC_PROGRESS='maybe' is not valid: use one of 1, true, yes, on "
                                         r"\(progress shown\) or 0, false, no, off \(silent\)"):
        progress_bar(10, "x")
    # the CLI: exit 2 with that line, before the command runs
    assert main(["memory", "dynamics", "--steps", "1", "--json"]) == 2
    err = capsys.readouterr()
    assert err.out == "" and err.err.startswith("mechtrunc: error: MECHTRUNC_PROGRESS='maybe' is not valid")


def test_silenced_switches_third_party_bars_off_and_restores_them(bars_allowed):
    """``main`` switches third-party bars off only for the command it runs."""
    import transformers.utils.logging as tf_logging
    from huggingface_hub.utils import are_progress_bars_disabled

    assert tf_logging.is_progress_bar_enabled()
    with silenced():
        assert not tf_logging.is_progress_bar_enabled() and are_progress_bars_disabled()
        assert os.environ["TQDM_DISABLE"] == "1"
        with third_party_bars_off():  # a load inside the block leaves them off
            pass
        assert not tf_logging.is_progress_bar_enabled()
    assert tf_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
    assert "TQDM_DISABLE" not in os.environ
    with silenced(False):
        assert tf_logging.is_progress_bar_enabled()


# ------------------------------------------------------------------ every command
def _leaves(parser, path=()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield " ".join(path), parser
        return
    for name, child in subs[0].choices.items():
        yield from _leaves(child, (*path, name))


def test_every_command_accepts_no_progress():
    commands = dict(_leaves(build_parser()))
    # the commands with a long loop are all there (the parser is enumerated, not listed here)
    assert {"demo", "toy train", "toy eval", "memory train", "memory spectrum", "memory dynamics", "lm train",
            "lm study", "pythia truncate", "pythia checkpoints", "patch scan", "patch path", "report"} <= set(commands)
    lacking = [name for name, p in commands.items() if "--no-progress" not in p._option_string_actions]
    assert lacking == []
    for name, p in commands.items():
        assert "MECHTRUNC_PROGRESS=0" in p.format_help().replace("\n", " "), name


# ------------------------------------------------------------------ CLI runs
def _truncate_args(model, out):
    return ["pythia", "truncate", "--model", str(model), "--n", "4", "--layers", "0", "--matrices", "mlp.W_out",
            "--keeps", "0.5", "--batch-size", "4", "--out", str(out)]


def test_pythia_truncate_lines_and_no_progress(tiny_pythia, tmp_path, capfd, bars_allowed):
    assert main(_truncate_args(tiny_pythia, tmp_path / "loud")) == 0
    loud = capfd.readouterr().err
    assert not any(mark in loud for mark in BAR_MARKS), loud  # not a terminal: lines, no local-load bar
    assert "truncation: 2/2 evals (100%)" in loud  # the grid's final line (the SVDs are computed inside it)
    assert main([*_truncate_args(tiny_pythia, tmp_path / "quiet"), "--no-progress"]) == 0
    assert capfd.readouterr().err == ""


@pytest.mark.slow
def test_pythia_truncate_no_progress_fresh_process(tiny_pythia, tmp_path):
    """A fresh process: transformers is imported after --no-progress took effect."""
    rc, out, err = _run([*_truncate_args(tiny_pythia, tmp_path / "q2"), "--no-progress"])
    assert rc == 0, err
    assert err == ""


TOY = ["toy", "train", "--d-model", "16", "--seq-len", "16", "--steps", "300", "--eval-every", "100",
       "--batch-size", "4"]


def test_toy_train_to_a_pipe_prints_a_few_lines(tmp_path):
    """stdout and stderr to a pipe (a log, CI): no bar frames, at most one line per tenth."""
    rc, out, err = _run([*TOY, "--out", str(tmp_path / "run")])
    assert rc == 0, err
    assert "\r" not in out + err
    lines = err.splitlines()
    assert 1 <= len(lines) <= 11 and all(line.startswith("train: ") for line in lines), err
    assert lines[-1].startswith("train: 300/300 steps (100%)") and "acc=" in lines[-1]
    rc, quiet_out, quiet_err = _run([*TOY, "--out", str(tmp_path / "quiet")], MECHTRUNC_PROGRESS="0")
    assert rc == 0 and quiet_err == "", quiet_err
    assert quiet_out.splitlines()[1:] == out.splitlines()[1:]  # the same run, the same table


def test_toy_train_no_progress_and_env_in_process(tmp_path, capfd, bars_allowed, monkeypatch):
    args = ["toy", "train", "--d-model", "16", "--seq-len", "16", "--steps", "4", "--eval-every", "4",
            "--batch-size", "4"]
    assert main([*args, "--out", str(tmp_path / "loud")]) == 0
    assert capfd.readouterr().err.splitlines()[-1].startswith("train: 4/4 steps (100%)")
    assert main([*args, "--out", str(tmp_path / "quiet"), "--no-progress"]) == 0
    assert capfd.readouterr().err == ""
    assert main(["toy", "eval", str(tmp_path / "quiet"), "--json", "--no-progress"]) == 0
    assert capfd.readouterr().err == ""
    monkeypatch.setenv(_progress.ENV, "0")
    assert main([*args, "--out", str(tmp_path / "quiet_env")]) == 0
    assert capfd.readouterr().err == ""


def test_memory_commands_show_progress_and_take_no_progress(tmp_path, capfd, bars_allowed):
    assert main(["memory", "train", "--out", str(tmp_path / "m"), "--steps", "50", "--json"]) == 0
    assert capfd.readouterr().err.splitlines()[-1].startswith("memory: 50/50 steps (100%)")
    assert main(["memory", "dynamics", "--steps", "20", "--eval-every", "10", "--json"]) == 0
    assert capfd.readouterr().err.splitlines()[-1].startswith("minimal: 20/20 steps (100%)")
    for argv in (["memory", "train", "--out", str(tmp_path / "q"), "--steps", "50", "--json"],
                 ["memory", "spectrum", str(tmp_path / "m"), "--json"],
                 ["memory", "dynamics", "--steps", "20", "--eval-every", "10", "--json"]):
        assert main([*argv, "--no-progress"]) == 0
        assert capfd.readouterr().err == ""


def test_lm_train_log_has_no_transformers_shard_bars(tmp_path):
    """Each checkpoint is a save_pretrained: transformers' "Writing model shards" bar stays off
    (one line of ours per tenth instead)."""
    rc, out, err = _run(["lm", "train", "--preset", "nano", "--steps", "8", "--out", str(tmp_path / "nano")])
    assert rc == 0, err
    assert not any(mark in out + err for mark in BAR_MARKS), err
    lines = err.splitlines()
    assert lines and all(line.startswith("lm train: ") for line in lines) and len(lines) <= 11, err
