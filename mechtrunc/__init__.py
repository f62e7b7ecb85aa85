"""mechtrunc: FFN truncation and attribution studies on the paper's toy model and on
TransformerLens bridges (Pythia and friends).  See docs/api.md for the public API.

Importing ``mechtrunc`` is cheap: the public names below are resolved on first use
(PEP 562 module ``__getattr__``), so ``import mechtrunc.cli`` and ``mechtrunc --help`` never
import torch, transformers, TransformerLens or pandas.  ``import mechtrunc as mt; mt.Truncate``,
``from mechtrunc import Truncate`` and the submodules (``mt.pythia``, ``mt.studies``...) work.

This is the package's only lazy re-export: every name here is the object its home module
defines (tests/test_layers.py checks it), and modules of the package import from that home,
never from here (docs/api.md, "Layers").
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["MATRICES", "SITES", "adapt"], "mechtrunc.adapters"),
    **dict.fromkeys(["Ablate", "Compose", "Intervention", "Patch", "ProjectOut", "RemoveComponents", "Truncate",
                     "intervene", "rank_for_keep"], "mechtrunc.interventions"),
    **dict.fromkeys(["attribute", "attribute_change"], "mechtrunc.attribution"),
    **dict.fromkeys(["rank_components", "token_directions", "token_ids"], "mechtrunc.directions"),
    **dict.fromkeys(["evaluate", "sweep"], "mechtrunc.evaluation"),
    **dict.fromkeys(["generic_components_by_step", "generic_tokens", "logit_lens", "logit_lens_compare",
                     "rank_generic_components", "vocab_lens"], "mechtrunc.lens"),
    "metrics_from_logits": "mechtrunc.metrics",
    "PromptSet": "mechtrunc.prompts",
    **dict.fromkeys(["item_logits", "run_items"], "mechtrunc.runner"),
    **dict.fromkeys(["RecallConfig", "RecallTask", "factual_prompts", "ioi_prompts", "load_prompts", "ioi_abc",
                     "factual_swap", "recall_pair"], "mechtrunc.tasks"),
    **dict.fromkeys(["patching_scan", "path_patch", "path_patching_scan"], "mechtrunc.patching"),
    **dict.fromkeys(["attribution_scan", "circuit_faithfulness", "edge_attribution", "top_edges"],
                    "mechtrunc.circuits"),
    **dict.fromkeys(["ToyConfig", "ToyTransformer"], "mechtrunc.toy_model"),
    **dict.fromkeys(["PRESETS", "TrainConfig", "evaluate_toy", "load_run", "preset", "train",
                     "toy_truncation_table", "truncation_table", "truncation_variants"], "mechtrunc.training"),
    **dict.fromkeys(["LinearMemory", "MemoryConfig", "MemoryTrainConfig", "train_memory"], "mechtrunc.memory"),
    **dict.fromkeys(["attention_html", "plot_attribution", "plot_history"], "mechtrunc.viz"),
    **dict.fromkeys(["build_report", "write_report"], "mechtrunc.report"),
}
#: submodules reachable as attributes (``mt.pythia.load_model``, ``mt.studies...``)
_SUBMODULES = ("dynamics", "lm", "memory", "pythia", "report", "selection", "studies", "testing", "viz")

__all__ = [*_EXPORTS, *_SUBMODULES, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"mechtrunc.{name}")
    else:
        raise AttributeError(f"module 'mechtrunc' has no attribute {name!r}")
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
