"""The import contract (docs/api.md, "Layers"): no cycles, no upward imports, no private names
across modules, no module reaching its own package's facade.

The layer order and the other contracts are declared once, for import-linter, in
``pyproject.toml`` (``[tool.importlinter]``); this file runs ``lint-imports`` on it, shows that
the same configuration rejects an upward import added to a copy of the package, and checks what
import-linter cannot see: names imported through a package's ``__init__`` and private names.
Nothing here names a module of the package except through that configuration.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
grimp = pytest.importorskip("grimp")  # import-linter's graph builder (the test extra installs both)
pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mechtrunc"
PYPROJECT = ROOT / "pyproject.toml"
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def _config() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]


def _root_layers() -> list[list[str]]:
    """The layers of the package's own contract, top first, each a list of module tails."""
    (contract,) = [c for c in _config()["contracts"] if c["type"] == "layers" and c.get("containers") == [PACKAGE]]
    return [[t.strip().strip("()") for t in re.split(r"[|:]", layer)] for layer in contract["layers"]]


def _lint(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with this repository's configuration on the package found under ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", LINT, str(PYPROJECT), "--no-cache", "--no-logo"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def _graph():
    return grimp.build_graph(PACKAGE, cache_dir=None)


def test_the_import_contract_holds():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"Contracts: (\d+) kept, 0 broken", r.stdout), r.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The same configuration on a copy of the package whose lowest module imports the top one
    (inside a function: import-linter sees function-level imports too) fails, naming the import."""
    layers = _root_layers()
    low, top = layers[-1][0], layers[0][0]
    copy = tmp_path / "src"
    shutil.copytree(ROOT / PACKAGE, copy / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    low_file = copy / PACKAGE / f"{low}.py"
    if not low_file.is_file():
        low_file = copy / PACKAGE / low / "__init__.py"
    low_file.write_text(low_file.read_text() + f"\n\ndef _upward():\n    import {PACKAGE}.{top}  # noqa: F401\n")
    r = _lint(copy)
    assert r.returncode != 0
    assert f"{PACKAGE}.{low} -> {PACKAGE}.{top}" in r.stdout, r.stdout + r.stderr


def test_no_module_imports_its_own_package_facade():
    """A package's ``__init__`` re-exports for users; modules inside the package import from the
    defining module instead (an import of the facade hides what they depend on, and makes a
    cycle with it); a package's ``__main__`` (``python -m``) is its entry point and may.  The root facade ``mechtrunc`` is reachable only from the layers above
    everything it re-exports (import-linter does not see through ``mt.<name>``)."""
    graph = _graph()
    bad = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if module.startswith(imported + ".") and imported != PACKAGE and not module.endswith(".__main__"):
                bad.append(f"{module} -> {imported}")
    assert not bad, "modules importing their own package's __init__: " + ", ".join(bad)

    facade = importlib.import_module(PACKAGE)
    exposed = {m.split(".")[1] for m in [*facade._EXPORTS.values(), *facade._SUBMODULES.values()]}
    position = {t: i for i, layer in enumerate(_root_layers()) for t in layer}
    too_low = []
    for module in sorted(graph.find_modules_that_directly_import(PACKAGE)):
        tail = module.split(".")[1]
        below = [e for e in exposed if e != tail and position.get(e, -1) <= position.get(tail, -1)]
        if below:
            too_low.append(f"{module} (the facade exposes {', '.join(sorted(below))}, not below it)")
    assert not too_low, "modules too low to import the root facade: " + "; ".join(too_low)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_exists(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _private_imports(rel: Path, source: str) -> list[str]:
    """``from mechtrunc.x import _y`` and ``x._y`` (``x`` bound to another module of the package)
    in the source of the file ``rel`` (relative to the repository); private modules
    (``_scalars``) are not private names."""
    rel = rel.with_suffix("")
    parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
    me, package = ".".join(parts), parts if rel.name == "__init__" else parts[:-1]
    tree = ast.parse(source, filename=str(rel))
    modules: dict[str, str] = {}  # local name -> module of the package it is bound to
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            source = ".".join(base + ([node.module] if node.module else []))
            if source.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:
                if _module_exists(f"{source}.{alias.name}"):
                    modules[alias.asname or alias.name] = f"{source}.{alias.name}"
                elif _is_private(alias.name) and source != me:
                    found.append(f"{rel}.py:{node.lineno}: from {source} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    modules[alias.asname or PACKAGE] = alias.name if alias.asname else PACKAGE
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            chain, value = [], node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in modules:
                target = ".".join([modules[value.id], *reversed(chain)])
                if _module_exists(target) and target != me and not _module_exists(f"{target}.{node.attr}"):
                    found.append(f"{rel}.py:{node.lineno}: {target}.{node.attr}")
    return found


def test_the_private_name_scan_sees_both_forms():
    source = ("from mechtrunc.studies.store import _secret\nfrom .page import _x\nfrom . import page\n"
              "import mechtrunc.models.hf as p\nimport mechtrunc\n"
              "page._y; p._z; mechtrunc.models.hf._w; mechtrunc._scalars.as_int; p.__name__\n")
    found = [f.split(": ", 1)[1] for f in _private_imports(Path(PACKAGE, "report", "probe.py"), source)]
    assert found == ["from mechtrunc.studies.store import _secret", "from mechtrunc.report.page import _x",
                     "mechtrunc.report.page._y", "mechtrunc.models.hf._z", "mechtrunc.models.hf._w"], found


def test_no_module_imports_a_private_name_from_another_module():
    found = [f for path in sorted((ROOT / PACKAGE).rglob("*.py"))
             for f in _private_imports(path.relative_to(ROOT), path.read_text())]
    assert not found, "private names used outside their module:\n" + "\n".join(found)


def test_each_top_level_name_lives_where_the_facade_says():
    """``mt.<name>`` is the object its home module defines (one name, one thing, one home)."""
    facade = importlib.import_module(PACKAGE)
    wrong = []
    for name, home in sorted(facade._EXPORTS.items()):
        obj = getattr(importlib.import_module(home), name)
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and not (
                obj.__module__ == home or obj.__module__.startswith(home + ".")):
            wrong.append(f"{name}: the facade says {home}, defined in {obj.__module__}")
        assert getattr(facade, name) is obj
    assert not wrong, "; ".join(wrong)


def test_the_layer_tables_of_the_docs_are_generated_from_the_contract():
    """docs/api.md's "Layers" tables are what tools/api_layers.py renders from pyproject.toml and
    mechtrunc/_moved.py, and every floor of the contract is a row."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import api_layers
    finally:
        sys.path.remove(str(ROOT / "tools"))
    text = (ROOT / "docs" / "api.md").read_text()
    for name, render in api_layers.BLOCKS.items():
        assert api_layers.read_block(name, text) == render(), f"run python tools/api_layers.py ({name})"
    rows = api_layers.render_layers().splitlines()[2:]
    assert len(rows) == sum(len(layer) for layer in _root_layers())
    assert [r.split(" | ")[1].strip("`/") for r in rows] == [t for layer in _root_layers() for t in layer]


def test_old_module_paths_import_the_moved_module_with_a_warning():
    """Every old path of mechtrunc/_moved.py gives the module of its new path itself (a moved
    package's submodules too), with a DeprecationWarning naming the new path; mt.pythia is mt.hf."""
    from mechtrunc import _moved

    assert _moved.new_name("mechtrunc.lm.train") == "mechtrunc.models.lm.train"
    assert _moved.new_name("mechtrunc.studies.lm") is None and _moved.new_name("numpy.lm") is None
    code = (
        "import importlib, json, sys, warnings\n"
        "import mechtrunc as mt\n"
        "from mechtrunc._moved import MOVED\n"
        "out = {}\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    out['mt.pythia'] = [mt.pythia is mt.hf, [str(x.message) for x in w]]\n"
        "for old, new in [*MOVED.items(), ('mechtrunc.lm.train', 'mechtrunc.models.lm.train')]:\n"
        "    with warnings.catch_warnings(record=True) as w:\n"
        "        warnings.simplefilter('always')\n"
        "        mod = importlib.import_module(old)\n"
        "    out[old] = [mod is importlib.import_module(new), mod.__name__, mod.__spec__.name,\n"
        "                [str(x.message) for x in w if issubclass(x.category, DeprecationWarning)]]\n"
        "print(json.dumps(out))\n")
    import json

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out.pop("mt.pythia") == [True, ["mt.pythia is now mt.hf (the old name goes in the next release)"]]
    new_of = {**_moved.MOVED, "mechtrunc.lm.train": "mechtrunc.models.lm.train"}
    for old, (same, name, spec, warned) in out.items():
        assert same and name == spec == new_of[old], old
        assert any(f"module {old} moved to {new_of[old]}" in m for m in warned), (old, warned)


def test_the_package_imports_no_old_module_path():
    from mechtrunc import _moved

    graph = _graph()
    old = [m for m in graph.modules if _moved.new_name(m) is not None]
    assert not old, f"modules found under old paths: {old}"
    pattern = re.compile(r"(?<![\w.])(" + "|".join(re.escape(k) for k in _moved.MOVED) + r")(?![\w])")
    found = [f"{p.relative_to(ROOT)}: {m}" for p in (ROOT / PACKAGE).rglob("*.py") if p.name != "_moved.py"
             for m in pattern.findall(p.read_text())]
    assert not found, found
