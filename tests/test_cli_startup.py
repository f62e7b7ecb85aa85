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
]


def _probe(usage_errors):
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(usage_errors), json.dumps(HEAVY)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def test_import_cli_is_light():
    code = f"import sys, mechtrunc, mechtrunc.cli, mechtrunc.cli.toy, mechtrunc.cli.pythia, mechtrunc.cli.memory, mechtrunc.cli.report, mechtrunc.results; print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))"
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

    assert {"Truncate", "intervene", "ToyTransformer", "PRESETS", "pythia", "studies"} <= set(mt.__all__)
    assert set(mt.__all__) <= set(dir(mt))
    for name in mt.__all__:
        assert getattr(mt, name) is not None
    assert mt.Truncate.__module__ == "mechtrunc.interventions"
    assert callable(mt.pythia.load_model) and callable(mt.studies.truncation_study)
    from mechtrunc import Truncate, preset  # noqa: F401  (from-import goes through __getattr__ too)

    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        mt.nope  # noqa: B018
