"""The command line answers at once: importing ``mechtrunc.cli``, every ``--help`` and usage
errors never import torch, transformers, TransformerLens or pandas (checked in a fresh process,
on ``sys.modules``: a behavioural check, not a timing; ``benchmarks/bench_cli_startup.py`` times
it).  And ``import mechtrunc`` is lazy but complete."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

HEAVY = ("torch", "transformers", "transformer_lens", "pandas", "matplotlib", "numpy", "circuitsvis")

PROBE = textwrap.dedent("""
    import argparse, contextlib, io, json, sys
    import mechtrunc.cli as cli

    def walk(parser, path, out):
        out.append(path)
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, path + [name], out)
        return out

    paths = walk(cli.build_parser(), [], [])
    codes = {}
    for argv in [p + ["--help"] for p in paths] + json.loads(sys.argv[1]):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                code = cli.main(argv)
            except SystemExit as e:
                code = e.code
        codes[" ".join(argv)] = code
    heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[2])))
    print(json.dumps({"codes": codes, "heavy": heavy, "n_paths": len(paths)}))
""")

USAGE_ERRORS = [
    ["toy", "train", "--bogus-flag"],
    ["toy", "train", "--out", "X", "--alpha", "1.5"],
    ["toy", "train", "--out", "X", "--steps", "0"],
    ["toy", "eval", "X", "--device", "gpu0"],
    ["pythia", "truncate", "--model", "EleutherAI/pythia-70m", "--step", "1500", "--out", "X"],
    ["pythia", "truncate", "--model", "m", "--task", "no_such_file.csv", "--out", "X"],
    ["pythia", "truncate", "--model", "m", "--matrices", "mlp.W_up", "--out", "X"],
    ["pythia", "checkpoints", "--model", "m", "--steps", "-1", "--out", "X"],
    ["lm", "study", "no_such_run_dir"],
    ["lm", "study", "X", "--n", "0"],
    ["nope"],
    # a mistyped path is reported before torch is imported, as a bad flag value is
    ["pythia", "truncate", "--model", "./no/such/model", "--out", "X"],
    ["pythia", "checkpoints", "--model", "./no/such/run", "--steps", "0", "--out", "X"],
    ["toy", "eval", "no_such_run_dir"],
    ["memory", "spectrum", "no_such_run_dir"],
    ["lens", "vocab", "./no_such_run_dir"],
    ["lens", "logit", "./no_such_run_dir"],
    ["patch", "scan", "./no_such_run_dir"],
    ["patch", "path", "./no_such_run_dir"],
    ["report", "no_such_run_dir"],
]


def _probe(usage_errors):
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(usage_errors), json.dumps(HEAVY)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def test_import_cli_is_light():
    code = f"import sys, mechtrunc, mechtrunc.cli, mechtrunc.cli.toy, mechtrunc.cli.pythia, mechtrunc.cli.memory, mechtrunc.cli.report, mechtrunc.core.results; print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_and_usage_errors_import_nothing_heavy():
    result = _probe(USAGE_ERRORS)
    assert result["n_paths"] >= 8  # mechtrunc, demo, toy, toy train, toy eval, pythia, ...
    helps = {k: v for k, v in result["codes"].items() if k.endswith("--help")}
    assert len(helps) == result["n_paths"] and set(helps.values()) == {0}
    errors = {k: v for k, v in result["codes"].items() if not k.endswith("--help")}
    assert errors == {" ".join(a): 2 for a in USAGE_ERRORS}
    assert result["heavy"] == []


def test_lazy_package_keeps_its_public_names():
    import mechtrunc as mt

    assert {"Truncate", "intervene", "ToyTransformer", "PRESETS", "hf", "studies"} <= set(mt.__all__)
    assert set(mt.__all__) <= set(dir(mt))
    for name in mt.__all__:
        assert getattr(mt, name) is not None
    assert mt.Truncate.__module__ == "mechtrunc.core.interventions"
    assert callable(mt.hf.load_model) and callable(mt.studies.truncation_study)
    from mechtrunc import Truncate, preset  # noqa: F401  (from-import goes through __getattr__ too)

    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        mt.nope  # noqa: B018


def test_a_run_directory_and_its_steps_are_checked_before_anything_heavy(tmp_path):
    """The shared model resolver (mechtrunc.cli.checks.resolve_model) reads a language-model run
    directory from its files: a step it does not hold, a step directory given another --step and
    a mistyped run name are refused, naming what is there, with nothing heavy imported."""
    run = tmp_path / "runs" / "nano"
    for step in (0, 50, 200):
        (run / f"step{step}").mkdir(parents=True)
        (run / f"step{step}" / "config.json").write_text('{"model_type": "gpt_neox"}')
    (run / "run.json").write_text('{"format": "mechtrunc-lm-run/1"}')
    cases = {
        f"pythia truncate --model {run} --step 100 --out X": f"{run} holds no checkpoint of step 100; its steps: 0, 50, 200",
        f"lens vocab {run} --step 100": "holds no checkpoint of step 100",
        f"patch scan {run} --step 100": "holds no checkpoint of step 100",
        f"pythia truncate --model {run}/step200 --step 50 --out X":
            f"is the checkpoint of step 200, not step 50: give the run directory with --step ({run} --step 50)",
        f"pythia truncate --model {tmp_path}/runs/nan --out X": "no such model directory",
        f"lm study {run}/step200": f"is one checkpoint of the run {run}: give the run directory",
    }
    argvs = [c.split() for c in cases]
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import contextlib, io, json, sys
        import mechtrunc.cli as cli
        out = {}
        for argv in json.loads(sys.argv[1]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    code = cli.main(argv)
                except SystemExit as e:
                    code = e.code
            out[" ".join(argv)] = [code, err.getvalue()]
        heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[2])))
        print(json.dumps({"out": out, "heavy": heavy}))
    """), json.dumps(argvs), json.dumps(HEAVY)], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)
    assert result["heavy"] == []
    for given, message in cases.items():
        code, err = result["out"][given]
        assert code == 2 and message in err and "Traceback" not in err, (given, err)


def test_the_resolver_maps_a_run_its_steps_and_a_step_directory_to_one_checkpoint(tmp_path):
    from mechtrunc.cli.checks import resolve_model

    run = tmp_path / "nano"
    for step in (0, 50, 200):
        (run / f"step{step}").mkdir(parents=True)
        (run / f"step{step}" / "config.json").write_text('{"model_type": "gpt_neox"}')
    (run / "run.json").write_text('{"format": "mechtrunc-lm-run/1"}')
    assert resolve_model(str(run)) == ("lm", str(run / "step200"), None)
    assert resolve_model(str(run), 50) == ("lm", str(run / "step50"), None)
    assert resolve_model(str(run / "step50")) == ("lm", str(run / "step50"), None)  # a checkpoint of the run
    assert resolve_model(str(run / "step50"), 50) == ("lm", str(run / "step50"), None)
    assert resolve_model("EleutherAI/pythia-70m", 1000) == ("hf", "EleutherAI/pythia-70m", 1000)
