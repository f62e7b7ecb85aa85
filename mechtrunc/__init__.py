"""mechtrunc: FFN truncation and attribution studies on the paper's toy model and on
TransformerLens bridges (Pythia and friends).  See docs/api.md for the public API.

Importing ``mechtrunc`` is cheap: the public names below are resolved on first use
(PEP 562 module ``__getattr__``), so ``import mechtrunc.cli`` and ``mechtrunc --help`` never
import torch, transformers, TransformerLens or pandas.  ``import mechtrunc as mt; mt.Truncate``,
``from mechtrunc import Truncate`` and the submodules (``mt.hf``, ``mt.studies``...) work.

This is the package's only lazy re-export: every name here is the object its home module
defines (tests/test_layers.py checks it), and modules of the package import from that home,
never from here (docs/api.md, "Layers").
"""

from __future__ import annotations

import importlib

from mechtrunc import _moved

_moved.install()  # the module paths of the old flat layout keep importing, with a DeprecationWarning

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["MATRICES", "SITES", "adapt"], "mechtrunc.core.adapters"),
    **dict.fromkeys(["Ablate", "Compose", "Intervention", "Patch", "ProjectOut", "RemoveComponents", "Truncate",
                     "intervene", "rank_for_keep"], "mechtrunc.core.interventions"),
    **dict.fromkeys(["attribute", "attribute_change"], "mechtrunc.analysis.attribution"),
    **dict.fromkeys(["rank_components", "token_directions", "token_ids"], "mechtrunc.analysis.directions"),
    **dict.fromkeys(["evaluate", "sweep"], "mechtrunc.analysis.evaluation"),
    **dict.fromkeys(["generic_components_by_step", "generic_tokens", "logit_lens", "logit_lens_compare",
                     "rank_generic_components", "vocab_lens"], "mechtrunc.analysis.lens"),
    "metrics_from_logits": "mechtrunc.core.metrics",
    "PromptSet": "mechtrunc.core.prompts",
    **dict.fromkeys(["item_logits", "run_items"], "mechtrunc.core.runner"),
    **dict.fromkeys(["RecallConfig", "RecallTask", "factual_prompts", "ioi_prompts", "load_prompts", "ioi_abc",
                     "factual_swap", "recall_pair"], "mechtrunc.tasks"),
    **dict.fromkeys(["patching_scan", "path_patch", "path_patching_scan"], "mechtrunc.analysis.patching"),
    **dict.fromkeys(["attribution_scan", "circuit_faithfulness", "edge_attribution", "top_edges"],
                    "mechtrunc.analysis.circuits"),
    **dict.fromkeys(["ToyConfig", "ToyTransformer"], "mechtrunc.models.toy"),
    **dict.fromkeys(["PRESETS", "TrainConfig", "evaluate_toy", "load_run", "preset", "train",
                     "toy_truncation_table", "truncation_table", "truncation_variants"], "mechtrunc.models.toy_training"),
    **dict.fromkeys(["LinearMemory", "MemoryConfig", "MemoryTrainConfig", "train_memory"], "mechtrunc.models.memory"),
    **dict.fromkeys(["attention_html", "plot_attribution", "plot_history"], "mechtrunc.analysis.viz"),
    **dict.fromkeys(["build_report", "write_report"], "mechtrunc.report"),
}
#: submodules reachable as attributes (``mt.hf.load_model``, ``mt.studies...``) -> their module
_SUBMODULES: dict[str, str] = {
    "dynamics": "mechtrunc.studies.dynamics", "hf": "mechtrunc.models.hf", "lm": "mechtrunc.models.lm",
    "memory": "mechtrunc.models.memory", "report": "mechtrunc.report",
    "selection": "mechtrunc.analysis.selection", "studies": "mechtrunc.studies", "testing": "mechtrunc.models.testing",
    "viz": "mechtrunc.analysis.viz",
}

#: old names of submodules -> their current name (they keep working, with a DeprecationWarning)
_RENAMED = {"pythia": "hf"}

__all__ = [*_EXPORTS, *_SUBMODULES, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(_SUBMODULES[name])
    elif name in _RENAMED:
        import warnings

        warnings.warn(f"mt.{name} is now mt.{_RENAMED[name]} (the old name goes in the next release)",
                      DeprecationWarning, stacklevel=2)
        return __getattr__(_RENAMED[name])
    else:
        raise AttributeError(f"module 'mechtrunc' has no attribute {name!r}")
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
