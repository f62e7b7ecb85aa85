"""Old module paths, kept importable for one release with a :class:`DeprecationWarning`.

The package's modules live in folders that show its layers (docs/api.md, "Layers"):
``core`` (the model door, interventions, running prompts, metrics, the grid engine),
``analysis`` and ``tasks``, ``models``, ``studies``, ``report``, ``cli``.  Before that layout
they sat side by side at the top (``mechtrunc.interventions``, ``mechtrunc.toy_model``...).
:data:`MOVED` maps every old path to its new home; :class:`MovedFinder`, installed by
``mechtrunc/__init__.py``, answers ``import mechtrunc.<old path>`` (and its submodules:
``mechtrunc.lm.train``) with the module itself, under its new name, after one warning per old
path.  The alias is the same module object, so ``mechtrunc.toy_model.ToyTransformer is
mechtrunc.models.toy.ToyTransformer`` and pickles written before the move load.

Nothing in the package imports an old path (tests/test_layers.py checks it); the public
``mt.*`` names never changed and do not warn.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old module path -> new module path (submodules of a moved package follow their package)
MOVED: dict[str, str] = {
    "mechtrunc.results": "mechtrunc.core.results",
    "mechtrunc.reference": "mechtrunc.core.reference",
    "mechtrunc.prompts": "mechtrunc.core.prompts",
    "mechtrunc.metrics": "mechtrunc.core.metrics",
    "mechtrunc.stacks": "mechtrunc.core.stacks",
    "mechtrunc.decomposition": "mechtrunc.core.decomposition",
    "mechtrunc.adapters": "mechtrunc.core.adapters",
    "mechtrunc.interventions": "mechtrunc.core.interventions",
    "mechtrunc.runner": "mechtrunc.core.runner",
    "mechtrunc.engine": "mechtrunc.core.engine",
    "mechtrunc.evaluation": "mechtrunc.analysis.evaluation",
    "mechtrunc.attribution": "mechtrunc.analysis.attribution",
    "mechtrunc.directions": "mechtrunc.analysis.directions",
    "mechtrunc.patching": "mechtrunc.analysis.patching",
    "mechtrunc.lens": "mechtrunc.analysis.lens",
    "mechtrunc.selection": "mechtrunc.analysis.selection",
    "mechtrunc.circuits": "mechtrunc.analysis.circuits",
    "mechtrunc.viz": "mechtrunc.analysis.viz",
    "mechtrunc.toy_model": "mechtrunc.models.toy",
    "mechtrunc.training": "mechtrunc.models.toy_training",
    "mechtrunc.memory": "mechtrunc.models.memory",
    "mechtrunc.pythia": "mechtrunc.models.hf",
    "mechtrunc.lm": "mechtrunc.models.lm",
    "mechtrunc.testing": "mechtrunc.models.testing",
    "mechtrunc.dynamics": "mechtrunc.studies.dynamics",
}


def new_name(old: str) -> str | None:
    """The current path of module ``old`` (``mechtrunc.lm.train`` -> ``mechtrunc.models.lm.train``),
    or None when ``old`` did not move."""
    head, _, tail = old.partition(".")
    if head != "mechtrunc":
        return None
    parts = old.split(".")
    for i in range(len(parts), 1, -1):
        new = MOVED.get(".".join(parts[:i]))
        if new is not None:
            return ".".join([new, *parts[i:]])
    return None


class _AliasLoader(importlib.abc.Loader):
    """Loads an old path as the module of its new path (the same object, its own spec kept)."""

    def __init__(self, new: str):
        self.new = new
        self._spec = None

    def create_module(self, spec):
        warnings.warn(f"module {spec.name} moved to {self.new}; import it from there (the old path goes in the "
                      "next release)", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(self.new)
        self._spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self._spec  # the import system set the alias' spec; keep the module's own


class MovedFinder(importlib.abc.MetaPathFinder):
    """Answers imports of :data:`MOVED`'s old paths; first on ``sys.meta_path``, so that a moved
    package's submodule is never loaded twice under two names."""

    def find_spec(self, fullname, path=None, target=None):
        new = new_name(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


def install() -> None:
    """Put one :class:`MovedFinder` first on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(f, MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedFinder())
