"""One public name, one meaning: no two modules of the package define the same public top-level
name (a function, a class or a constant) for different things.

The scan reads every module's top level (``def``, ``class``, ``NAME = ...``; imports are not
definitions, so a re-export by import is never counted).  A name defined in more than one module
must be in :data:`SAME_ROLE`, which says why each module's definition means the same thing;
the list must match the package exactly, so a stale entry fails too.  Names renamed so that each
means one thing still work for one release, with a DeprecationWarning.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mechtrunc"

_REPORT_KINDS = ("checkpoints", "circuits", "lm", "memory", "toy", "truncation")
_CLI = ("circuits", "lens", "lm", "memory", "patch", "pythia", "report", "toy")
_OWNERS = ("mechtrunc.studies.checkpoint_files", "mechtrunc.studies.truncation_files")

#: name -> the modules that define it, each in the same role (the reason is the comment)
SAME_ROLE: dict[str, frozenset[str]] = {
    # the section builders of a report kind, in that kind's list; mechtrunc.report.SECTIONS maps
    # each kind to a copy of that list (register_section adds to it)
    "SECTIONS": frozenset({"mechtrunc.report", *(f"mechtrunc.report.{k}" for k in _REPORT_KINDS)}),
    "attribution_section": frozenset({"mechtrunc.report.toy", "mechtrunc.report.truncation"}),
    "best_section": frozenset({"mechtrunc.report.lm", "mechtrunc.report.truncation"}),
    "config_section": frozenset({"mechtrunc.report.lm", "mechtrunc.report.memory", "mechtrunc.report.toy"}),
    "curves_section": frozenset({"mechtrunc.report.checkpoints", "mechtrunc.report.lm"}),
    "heatmap_section": frozenset({"mechtrunc.report.circuits", "mechtrunc.report.truncation"}),
    "ledger_section": frozenset({"mechtrunc.report.circuits", "mechtrunc.report.lm"}),
    "training_section": frozenset({"mechtrunc.report.lm", "mechtrunc.report.memory", "mechtrunc.report.toy"}),
    "truncation_section": frozenset({"mechtrunc.report.memory", "mechtrunc.report.toy"}),
    # a command group's parser builder and the handler of its `train` subcommand
    "add_commands": frozenset(f"mechtrunc.cli.{m}" for m in _CLI),
    "cmd_train": frozenset({"mechtrunc.cli.lm", "mechtrunc.cli.memory"}),
    "cmd_checkpoints": frozenset({"mechtrunc.cli.circuits", "mechtrunc.cli.pythia"}),
    # the owner of a study directory: its table's file name and its settings file's reader
    "TABLE": frozenset(_OWNERS),
    "study_settings": frozenset(_OWNERS),
}


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _public_definitions(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if not n.startswith("_")}


def definitions() -> dict[str, set[str]]:
    """Public top-level name -> the modules of the package that define it."""
    where = defaultdict(set)
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in _public_definitions(ast.parse(path.read_text(), filename=str(path))):
            where[name].add(_module(path))
    return where


def test_the_scan_sees_definitions_not_imports():
    tree = ast.parse("from x import a\nimport b\ndef c(): pass\nclass D: pass\nE = 1\nF: int = 2\n_g = 3\n"
                     "if True:\n    h = 4\n")
    assert _public_definitions(tree) == {"c", "D", "E", "F"}
    assert len(definitions()) > 300  # the package's public names (about 630), not an empty scan


def test_each_public_name_means_one_thing():
    shared = {name: frozenset(mods) for name, mods in definitions().items() if len(mods) > 1}
    unexplained = {n: sorted(m) for n, m in shared.items() if SAME_ROLE.get(n) != m}
    stale = sorted(n for n in SAME_ROLE if n not in shared)
    assert not unexplained, ("public names defined in several modules: give each meaning its own name, or add "
                             f"the name to SAME_ROLE with why it means the same thing: {unexplained}")
    assert not stale, f"SAME_ROLE names defined in one module or none (drop them): {stale}"


def test_memory_run_is_the_trained_run_and_memory_result_the_read_directory():
    import mechtrunc as mt
    from mechtrunc.models.memory import MemoryRun
    from mechtrunc.report import readers

    assert mt.memory.MemoryRun is MemoryRun and hasattr(MemoryRun, "save")
    assert readers.MemoryResult is not MemoryRun and readers.MemoryResult.__module__ == readers.__name__
    assert "MemoryResult" in readers.__all__ and "MemoryRun" not in readers.__all__


@pytest.mark.parametrize("module, old, new", [
    ("mechtrunc.report.readers", "MemoryRun", "MemoryResult"),
    ("mechtrunc.cli.checks", "checkpoint_steps", "checkpoint_dirs"),
    ("mechtrunc.cli.checks", "run_dir", "run_dir_arg"),
])
def test_renamed_attributes_warn_and_are_the_new_ones(module, old, new):
    import importlib

    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=rf"{old} is now {new}"):
        assert getattr(mod, old) is getattr(mod, new)
    with pytest.raises(AttributeError, match="no_such_name"):
        mod.no_such_name


def test_renamed_functions_warn_and_give_the_same_result(monkeypatch):
    """``study_report`` and ``truncation_table`` call their new names with the same arguments."""
    import mechtrunc as mt
    from mechtrunc import studies
    from mechtrunc.models import toy_training as training
    from mechtrunc.studies import summary

    assert mt.toy_truncation_table is training.toy_truncation_table  # before the patch below
    assert "summarise_study" in studies.__all__ and "study_report" not in studies.__all__
    calls = []
    monkeypatch.setattr(summary, "summarise_study", lambda *a, **k: calls.append(("summary", a, k)) or "S")
    monkeypatch.setattr(training, "toy_truncation_table", lambda *a, **k: calls.append(("table", a, k)) or "T")
    with pytest.warns(DeprecationWarning, match="study_report is now summarise_study"):
        assert studies.study_report(1, 2, metric="m") == "S"
    with pytest.warns(DeprecationWarning, match="truncation_table is now toy_truncation_table"):
        assert mt.truncation_table(3, keeps=(0.5,)) == "T"
    assert calls == [("summary", (1, 2), {"metric": "m"}), ("table", (3,), {"keeps": (0.5,)})]


def test_the_docs_define_mode_and_path_once_with_the_codes_values():
    """docs/api.md, "Conventions": the intervention ``mode``, the grid ``mode`` and a row's
    ``path``, each defined by one line that lists the values the code accepts or writes."""
    import re

    from mechtrunc._choices import GRID_MODES
    from mechtrunc.core.engine import PATHS
    from mechtrunc.core.interventions import _MODES  # the values Truncate(mode=...) accepts

    text = (ROOT / "docs" / "api.md").read_text()
    pattern = r"\n  - (`mode` of an intervention|grid `mode`|`path`) (.*?)(?=\n  - |\n- |\n\n)"
    found = re.findall(pattern, text, re.S)
    assert sorted(t for t, _ in found) == ["`mode` of an intervention", "`path`", "grid `mode`"]  # once each
    terms = dict(found)
    for term, values in (("`mode` of an intervention", _MODES), ("grid `mode`", GRID_MODES),
                         ("`path`", (*PATHS, "identity"))):
        assert all(f'`"{v}"`' in terms[term] for v in values), (term, values)
