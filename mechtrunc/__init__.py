"""mechtrunc: FFN truncation and attribution studies on the paper's toy model and on
TransformerLens bridges (Pythia and friends).  See docs/api.md for the public API."""

from mechtrunc.adapters import MATRICES, SITES, adapt
from mechtrunc.interventions import (
    Ablate, Compose, Intervention, ProjectOut, RemoveComponents, Truncate, intervene, rank_for_keep,
)
from mechtrunc.metrics import evaluate, metrics_from_logits
from mechtrunc.prompts import PromptSet
from mechtrunc.runner import item_logits, run_items
from mechtrunc.tasks import RecallConfig, RecallTask
from mechtrunc.toy_model import ToyConfig, ToyTransformer

__version__ = "0.1.0"
