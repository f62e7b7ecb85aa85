"""mechtrunc: FFN truncation and attribution studies on the paper's toy model and on
TransformerLens bridges (Pythia and friends).  See docs/api.md for the public API."""

from mechtrunc.adapters import MATRICES, SITES, adapt
from mechtrunc.interventions import (
    Ablate, Compose, Intervention, ProjectOut, RemoveComponents, Truncate, intervene, rank_for_keep,
)
from mechtrunc.attribution import attribute, attribute_change
from mechtrunc.directions import rank_components, token_directions, token_ids
from mechtrunc.metrics import evaluate, metrics_from_logits, sweep
from mechtrunc.prompts import PromptSet
from mechtrunc.runner import item_logits, run_items
from mechtrunc.tasks import RecallConfig, RecallTask, factual_prompts, ioi_prompts, load_prompts
from mechtrunc.toy_model import ToyConfig, ToyTransformer
from mechtrunc.training import PRESETS, TrainConfig, evaluate_toy, load_run, preset, train
from mechtrunc.viz import attention_html, plot_attribution, plot_history

from mechtrunc import dynamics, pythia, studies  # noqa: E402  (submodules: mt.pythia.load_model, mt.studies, mt.dynamics...)

__version__ = "0.1.0"
