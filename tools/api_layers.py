"""The layer tables of docs/api.md ("Layers"), generated from the import contract.

The order of the package's floors is declared once, in ``pyproject.toml`` (``[tool.importlinter]``,
the contract ``lint-imports`` keeps).  This script renders from it, without importing the package:

- ``api-layers``: one row per layer of the root contract, top first: its modules (a folder's
  modules in the order of the folder's own contract, ``>`` between its layers, ``|`` between
  independent modules of one layer) and what it holds (the first sentence of the docstring of
  the folder's ``__init__`` or of the module);
- ``api-moved``: the old module paths that still import, with a DeprecationWarning
  (``mechtrunc/_moved.py``'s ``MOVED``).

Each table sits in docs/api.md between ``<!-- BEGIN generated:NAME -->`` and
``<!-- END generated:NAME -->``; ``tests/test_layers.py`` fails when a table differs from its rendering.

    python tools/api_layers.py           # rewrite the tables in docs/api.md
    python tools/api_layers.py --check   # exit 1 if docs/api.md differs
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mechtrunc"
API = ROOT / "docs" / "api.md"


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def layer_contract(container: str) -> list[list[str]] | None:
    """The layers (top first, each a list of module tails) of the ``layers`` contract over
    ``container``, or None when it has none."""
    for c in _contracts():
        if c["type"] == "layers" and c.get("containers") == [container]:
            return [[t.strip().strip("()") for t in re.split(r"[|:]", layer)] for layer in c["layers"]]
    return None


def _source(dotted: str) -> Path:
    path = ROOT.joinpath(*dotted.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def summary(dotted: str) -> str:
    """The first sentence of the docstring of module or package ``dotted`` (one line)."""
    path = _source(dotted)
    if not path.is_file():
        return ""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    text = " ".join(doc.split("\n\n")[0].split())
    m = re.match(r"(.+?\.)(\s|$)", text)
    text = (m.group(1) if m else text).rstrip(".") + "."
    return re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text.replace("``", "`"))


def _modules(package: str) -> str:
    """A folder's modules, in its own contract's order where it has one."""
    layers = layer_contract(package)
    if layers is None:
        folder = _source(package).parent
        names = sorted(p.stem if p.is_file() else p.name for p in folder.iterdir()
                       if (p.suffix == ".py" and p.stem != "__init__" and not p.stem.startswith("_")
                           and p.stem != "__main__") or (p.is_dir() and (p / "__init__.py").is_file()))
        return ", ".join(f"`{n}`" for n in names)
    return " > ".join(" \\| ".join(f"`{m}`" for m in layer) for layer in layers)


def render_layers() -> str:
    rows = ["| floor (1 = top) | package or module | its modules (`>`: imports from the right, `\\|`: independent) | what it holds |",
            "|---|---|---|---|"]
    for rank, layer in enumerate(layer_contract(PACKAGE), start=1):
        for tail in layer:
            dotted = f"{PACKAGE}.{tail}"
            path = ROOT.joinpath(*dotted.split("."))
            is_code_package = (path / "__init__.py").is_file() and tail != "data"
            name = f"`{tail}/`" if path.is_dir() else f"`{tail}`"
            rows.append(f"| {rank} | {name} | {_modules(dotted) if is_code_package else ''} | {summary(dotted)} |")
    return "\n".join(rows)


def render_moved() -> str:
    tree = ast.parse((ROOT / PACKAGE / "_moved.py").read_text())
    moved = next(ast.literal_eval(n.value) for n in tree.body
                 if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", "") == "MOVED")
    rows = ["| old path | new path |", "|---|---|"]
    rows += [f"| `{old}` | `{new}` |" for old, new in moved.items()]
    return "\n".join(rows)


BLOCKS = {"api-layers": render_layers, "api-moved": render_moved}


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- BEGIN generated:{name} -->\n)(.*?)(\n?<!-- END generated:{name} -->)", re.S)


def read_block(name: str, text: str | None = None) -> str | None:
    m = _pattern(name).search(API.read_text() if text is None else text)
    return None if m is None else m.group(2)


def updated(text: str) -> str:
    """``text`` (docs/api.md) with every block re-rendered; a missing block is an error."""
    for name, render in BLOCKS.items():
        if not _pattern(name).search(text):
            raise ValueError(f"{API} has no block {name!r} (<!-- BEGIN generated:{name} --> ... END)")
        text = _pattern(name).sub(lambda m, r=render: m.group(1) + r() + "\n" + m.group(3).lstrip("\n"), text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/api.md's tables differ from the contract")
    args = p.parse_args(argv)
    text = API.read_text()
    new = updated(text)
    if args.check:
        if new != text:
            print(f"{API.relative_to(ROOT)}: the layer tables differ from pyproject.toml; run python tools/api_layers.py")
            return 1
        return 0
    if new != text:
        API.write_text(new)
        print(f"rewrote the tables of {API.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
