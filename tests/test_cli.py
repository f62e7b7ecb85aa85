"""The command line: --help everywhere, exit status 2 and no traceback on user mistakes,
`toy eval --json`."""

import json
import subprocess
import sys

import pytest

from mechtrunc.cli import main

SUBCOMMANDS = [[], ["demo"], ["toy"], ["toy", "train"], ["toy", "eval"], ["pythia"], ["pythia", "truncate"],
               ["pythia", "checkpoints"], ["memory"], ["memory", "train"], ["memory", "spectrum"],
               ["memory", "dynamics"], ["lm"], ["lm", "study"], ["report"]]


@pytest.mark.parametrize("cmd", SUBCOMMANDS, ids=lambda c: " ".join(c) or "top")
def test_help_everywhere(cmd, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*cmd, "--help"])
    assert exit_info.value.code == 0
    assert "usage: mechtrunc" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["toy", "train", "--out", "X", "--alpha", "1.5"], "alpha"),
    (["toy", "train", "--out", "X", "--k", "70"], "k must be between 1 and 64"),
    (["toy", "train", "--out", "X", "--seq-len", "1"], "--seq-len: expected an integer >= 2"),
    (["toy", "train", "--out", "X", "--preset", "huge"], "unknown preset 'huge'; valid presets: paper, cpu"),
    (["toy", "eval", "/nonexistent/dir"], "does not exist"),
    (["pythia", "truncate", "--model", "EleutherAI/pythia-70m", "--step", "1500", "--out", "X"], "nearest valid steps: 1000, 2000"),
    (["nope"], "invalid choice"),
])
def test_bad_usage_exits_2_without_traceback(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_corrupt_model_dir(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{not json")
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    assert main(["toy", "eval", str(tmp_path)]) == 2
    assert "corrupt model directory" in capsys.readouterr().err


def test_train_then_eval_json(tmp_path):
    out = tmp_path / "run"
    args = ["toy", "train", "--out", str(out), "--d-model", "16", "--seq-len", "32", "--steps", "20",
            "--eval-every", "10", "--batch-size", "8", "--no-progress"]
    assert main(args) == 0
    assert (out / "history.csv").read_text().count("\n") == 3  # header + 2 evaluations
    proc = subprocess.run([sys.executable, "-m", "mechtrunc.cli", "toy", "eval", str(out), "--json"],
                          capture_output=True, text=True, check=True)
    data = json.loads(proc.stdout)
    assert set(data) == {"full", "last_ffn_removed", "change", "intervals"}
    for name in ("full", "last_ffn_removed"):
        assert set(data[name]) == {"accuracy", "p_noise", "p_answer"}
        assert all(0.0 <= v <= 1.0 for v in data[name].values())
    # the change has its paired interval, and it is the difference of the two rows
    assert set(data["change"]) == {"accuracy", "p_noise", "p_answer"}
    for m, c in data["change"].items():
        assert c["change"] == pytest.approx(data["last_ffn_removed"][m] - data["full"][m], abs=1e-6)
        assert c["ci_low"] <= c["change"] <= c["ci_high"]
    assert data["intervals"]["n_boot"] == 1000 and data["intervals"]["level"] == 0.95


def test_toy_train_never_changes_a_finished_or_different_run(tmp_path, capsys):
    from helpers import dir_snapshot

    out = tmp_path / "run"
    args = ["toy", "train", "--out", str(out), "--d-model", "16", "--seq-len", "32", "--eval-every", "10",
            "--batch-size", "8", "--no-progress"]
    assert main([*args, "--steps", "20"]) == 0
    assert "trained cpu preset for 20 steps in" in capsys.readouterr().out
    before = dir_snapshot(out)
    # rerunning the same command: says so, exit 0, writes nothing
    assert main([*args, "--steps", "20"]) == 0
    assert capsys.readouterr().out.startswith(f"already finished: {out} holds the finished cpu preset run (20 steps); "
                                              "nothing was trained or written")
    assert dir_snapshot(out) == before
    # another --steps, --seed or both: exit 2 naming each field with both values, nothing written
    for extra, named in ((["--steps", "5"], "steps: 20 there, 5 asked"),
                         (["--steps", "40"], "steps: 20 there, 40 asked); nothing was changed: add --extend"),
                         (["--steps", "20", "--seed", "1"], "seed: 0 there, 1 asked"),
                         (["--steps", "5", "--seed", "1", "--extend"], "steps: 20 there, 5 asked; seed: 0 there, 1 asked"),
                         (["--steps", "5", "--extend"], "--extend only lengthens a run")):
        assert main([*args, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert f"{out} holds a different run (" in err and named in err and "Traceback" not in err, (extra, err)
        assert dir_snapshot(out) == before, extra
    # --extend trains on, and reports the steps it ran
    assert main([*args, "--steps", "30", "--extend"]) == 0
    assert "trained cpu preset for steps 21..30 (resumed at step 20) in" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 30
    assert (out / "history.csv").read_text().count("\n") == 4  # header + steps 10, 20, 30


@pytest.fixture(scope="module")
def tiny_pythia(pythia_tokenizer_dir, tmp_path_factory):
    from mechtrunc.models.testing import build_random_pythia

    return build_random_pythia({"hidden_size": 32, "num_attention_heads": 4}, tokenizer_dir=pythia_tokenizer_dir,
                               out_dir=tmp_path_factory.mktemp("tiny_pythia"), n_layers=2, seed=0)


def test_pythia_truncate_runs_the_engine_by_default(tiny_pythia, tmp_path, capsys):
    import pandas as pd

    common = ["pythia", "truncate", "--model", str(tiny_pythia), "--n", "6", "--keeps", "1", "0.5", "0.1",
              "--batch-size", "4", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "default")]) == 0
    engine = pd.read_csv(tmp_path / "default" / "truncation.csv")
    assert len(engine) == 1 + 2 * 2 * 3 and set(engine["mode"]) == {"engine"}
    # the engine says which path computed each configuration: its low-rank fast path, not the fallback
    assert set(engine.loc[~engine["baseline"] & ~engine["identity"], "path"]) == {"fast"}
    # the reference (hook mode, one evaluation per configuration) gives the same numbers
    assert main([*common, "--mode", "hook", "--out", str(tmp_path / "hook")]) == 0
    hook = pd.read_csv(tmp_path / "hook" / "truncation.csv")
    assert set(hook["mode"]) == {"hook"}
    assert set(hook.loc[~hook["baseline"] & ~hook["identity"], "path"]) == {"reference"}
    for col in ("p_answer", "logit_diff_the", "loss"):
        assert engine[col].to_numpy() == pytest.approx(hook[col].to_numpy(), abs=1e-5), col
    assert "best by logit_diff_the" in capsys.readouterr().out


def test_command_groups_import_no_package_init_and_nothing_heavy_at_top():
    """No cycle between the dispatcher and the groups: a group module imports the checkers
    module, never ``mechtrunc.cli`` itself; at module top only light modules."""
    import ast
    from pathlib import Path

    import mechtrunc.cli as cli

    # mechtrunc.models.lm_run: the owner of a language-model run directory, standard library only
    light = {"mechtrunc", "mechtrunc._choices", "mechtrunc.core.results", "mechtrunc.models.lm_run", "mechtrunc.cli.checks",
             "mechtrunc.cli.toy"}
    for path in sorted(Path(cli.__file__).parent.glob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                assert "mechtrunc.cli" != node.module or all(n.endswith((".checks", ".toy")) for n in names[1:]), \
                    f"{path.name} imports the cli package itself"
        for node in tree.body:  # module top
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mechtrunc"):
                assert node.module in light, f"{path.name} imports {node.module} at module top"


def test_demo_twice_says_the_model_is_trained_and_goes_on_to_the_report(tmp_path, monkeypatch, capsys):
    """`make demo` run twice: the second run trains nothing, leaves the run's files as they are
    and still prints the table and writes the report; another --seed is refused naming it (the
    cpu preset is shrunk here so the test takes seconds)."""
    import mechtrunc.models.toy_training as training
    from helpers import dir_snapshot

    real = training.preset
    monkeypatch.setattr(training, "preset", lambda name, **kw: real(
        name, **{**kw, "d_model": 16, "seq_len": 32, "steps": 20, "eval_every": 10, "batch_size": 8, "test_size": 16}))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    first = capsys.readouterr().out
    assert "Already trained" not in first
    run_files = ("checkpoint.pt", "model.safetensors", "config.json", "history.csv")
    before = {k: v for k, v in dir_snapshot(out).items() if k in run_files}
    assert len(before) == 4
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    second = capsys.readouterr().out
    assert f"Already trained: {out} holds the finished run (20 steps); evaluating it." in second
    table = lambda text: text[text.index("variant"):text.index("Removing")]
    assert table(second) == table(first)
    assert second.strip().splitlines()[-1] == f"Report: {(out / 'report.html').resolve()}"
    assert {k: v for k, v in dir_snapshot(out).items() if k in run_files} == before
    assert main(["demo", "--out", str(out), "--seed", "1", "--no-progress"]) == 2
    assert f"{out} holds a different run (seed: 0 there, 1 asked)" in capsys.readouterr().err
    assert {k: v for k, v in dir_snapshot(out).items() if k in run_files} == before


@pytest.mark.parametrize("command, args, other, named", [
    (["memory", "train"], ["--n-inputs", "8", "--n-outputs", "8", "--d", "16", "--steps", "20"],
     ["--steps", "30", "--alpha", "0.2"],
     "(memory.alpha: 0.3 there, 0.2 asked; train.steps: 20 there, 30 asked; train.spectrum_steps: [0, 10, 20] "
     "there, [0, 10, 30] asked); nothing was changed: use a new --out directory"),
    (["memory", "dynamics"], ["--vocab-size", "8", "--d-model", "16", "--seq-len", "24", "--batch-size", "8",
                              "--steps", "4", "--eval-every", "2", "--snr-batches", "3"],
     ["--steps", "6", "--seed", "2"],
     "(steps: 4 there, 6 asked; seed: 0 there, 2 asked); nothing was changed: use a new --out directory"),
])
def test_memory_runs_are_never_overwritten(tmp_path, capsys, command, args, other, named):
    """`memory train` and `memory dynamics` do not resume (a run takes seconds), so a rerun into
    the same --out says it is finished and writes nothing, and another configuration is refused."""
    from helpers import dir_snapshot

    out = tmp_path / "run"
    assert main([*command, *args, "--out", str(out)]) == 0
    first = capsys.readouterr().out
    before = dir_snapshot(out)
    assert main([*command, *args, "--out", str(out)]) == 0
    again = capsys.readouterr().out
    assert again.startswith(f"already finished: {out} holds the ") and "nothing was trained or written" in again
    assert again.splitlines()[1:] == first.splitlines()[1:]  # the same numbers, read back
    assert dir_snapshot(out) == before
    assert main([*command, *args, *other, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} holds a different run {named}" in err and "Traceback" not in err, err
    assert dir_snapshot(out) == before
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("mine")
    assert main([*command, *args, "--out", str(tmp_path / "notes")]) == 2
    assert "holds no" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["mine.txt"]


def test_closed_pipe_ends_quietly_as_unix_tools_do():
    """``mechtrunc lm corpus | head -c 10``: the reader closes the pipe after 10 bytes; the command
    stops with SIGPIPE's shell status 141 and writes no traceback (the text, 70 KB, overflows the
    pipe buffer, so the write after the close must fail)."""
    proc = subprocess.Popen([sys.executable, "-m", "mechtrunc.cli", "lm", "corpus", "--stories", "400"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert len(head) == 10
    assert err == ""


def _action(command: str, dest: str):
    """The argparse action of ``dest`` in ``mechtrunc COMMAND``."""
    import argparse

    from mechtrunc.cli import build_parser

    parser = build_parser()
    for word in command.split():
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return next(a for a in parser._actions if a.dest == dest and a.help != argparse.SUPPRESS)


def test_the_same_thing_has_the_same_flag_and_the_librarys_default():
    """One name per thing across the command line, and defaults read from the library: the
    corpus seed is --corpus-seed in every lm command (--seed of lm train is the initialisation),
    the rank rule's default is Truncate's, the patching direction's and interval level's are the
    library functions', and the optimiser names are one vocabulary."""
    import inspect

    import mechtrunc as mt
    from mechtrunc import _choices

    for command in ("lm corpus", "lm prompts", "lm train"):
        assert _action(command, "corpus_seed").option_strings == ["--corpus-seed"], command
    assert _action("lm train", "seed").option_strings == ["--seed"]
    rule = inspect.signature(mt.Truncate).parameters["rule"].default
    assert rule == mt.studies.Grid().rule == inspect.signature(mt.rank_for_keep).parameters["rule"].default
    for command in ("lens logit", "pythia truncate", "pythia checkpoints"):
        assert _action(command, "rule").default == rule, command
    for command, function in (("patch scan", mt.patching_scan), ("patch path", mt.path_patching_scan),
                              ("patch path", mt.path_patch), ("patch attribute", mt.attribution_scan)):
        params = inspect.signature(function).parameters
        assert _action(command, "direction").default == params["direction"].default, (command, function)
        assert _action(command, "level").default == params["level"].default, (command, function)
        assert "seed" in params
    toy = _action("toy train", "optimizer").type
    minimal = _action("memory dynamics", "optimizer").type
    assert [o for o in _choices.OPTIMIZERS if _accepts(toy, o)] == ["sgd", "adam", "adamw"]
    assert [o for o in _choices.OPTIMIZERS if _accepts(minimal, o)] == ["sgd", "adam"]


def _accepts(check, value) -> bool:
    import argparse

    try:
        check(value)
        return True
    except argparse.ArgumentTypeError:
        return False


def test_lm_corpus_old_seed_flag_still_reads_the_corpus_seed_with_a_warning(capsys):
    from mechtrunc.cli import build_parser

    args = build_parser().parse_args(["lm", "corpus", "--seed", "3"])
    assert args.corpus_seed == 3
    assert "deprecated; the corpus seed is --corpus-seed" in capsys.readouterr().err
    assert build_parser().parse_args(["lm", "corpus", "--corpus-seed", "4"]).corpus_seed == 4


def test_each_optimiser_name_is_the_torch_optimiser_the_toy_trains_with(monkeypatch, tmp_path):
    import torch

    import mechtrunc as mt

    made = []
    for name in ("SGD", "Adam", "AdamW"):
        cls = getattr(torch.optim, name)
        monkeypatch.setattr(torch.optim, name, type(name, (cls,), {"__init__": lambda self, *a, _n=name, _c=cls, **k: (
            made.append(_n), _c.__init__(self, *a, **k))[1]}))
    for optimizer in ("sgd", "adam", "adamw"):
        cfg = mt.preset("cpu", optimizer=optimizer, d_model=16, seq_len=16, steps=1, eval_every=1, batch_size=2,
                        test_size=4)
        mt.train(cfg, progress=False)
    assert made == ["SGD", "Adam", "AdamW"]
    with pytest.raises(ValueError, match="'adamw' is not one the minimal model trains with .*valid: sgd, adam"):
        mt.dynamics.MinimalConfig(optimizer="adamw")
