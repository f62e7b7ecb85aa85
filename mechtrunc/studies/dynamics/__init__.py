"""Why the feed-forward layer learns the generic association first: training dynamics of two
systems, measured the same way.

- :mod:`mechtrunc.studies.dynamics.minimal`: the minimal in-context model (attention and feed-forward
  associative memories over fixed embeddings), its gradient signals and their closed forms,
  gradient signal-to-noise ratios, and its training loop;
- :mod:`mechtrunc.studies.dynamics.toy`: the toy Transformer's dynamics (induction score, where the
  noise-carrying singular components of the FFN L1 sit) as a training callback;
- :mod:`mechtrunc.studies.dynamics.measures`: the induction score and the order of learning, shared by both.

Everything returns tidy pandas DataFrames.
"""

from mechtrunc.studies.dynamics.minimal import (
    EMBEDDINGS, FF_WIRINGS, MinimalAdapter, MinimalConfig, MinimalModel, MinimalResult, OVNoiseRecorder,
    copy_directions, equal_signal_lr_scale, ff_signal_closed_form, ff_signal_std_at_init, gradient_signals,
    gradient_snr, ov_batch_gradient, ov_entry_matrix, ov_gradient_share, ov_noise_component, ov_noise_components,
    ov_signal_closed_form, signal_closed_forms, snr_sweep, train_minimal,
)
from mechtrunc.studies.dynamics.measures import (
    EVENT_CRITERIA, SELECTION_SEED_OFFSET, first_for_good, first_step, induction_score, learning_events,
    order_of_learning, selection_set,
)
from mechtrunc.studies.dynamics.toy import (
    ATTENTION_MATRICES, SnapshotRecorder, ToyDynamicsRecorder, attention_component_attributions,
    component_attributions, noise_component_summary, ov_gradient_noise, paired_seed_intervals,
    residual_attributions, seed_interval, train_toy_with_dynamics,
)

__all__ = [
    "MinimalConfig", "MinimalModel", "MinimalAdapter", "copy_directions", "gradient_signals",
    "gradient_snr", "snr_sweep", "ff_signal_closed_form", "train_minimal", "MinimalResult",
    "first_step", "first_for_good", "order_of_learning", "induction_score", "ToyDynamicsRecorder",
    "component_attributions", "noise_component_summary", "train_toy_with_dynamics", "EMBEDDINGS",
    "FF_WIRINGS", "EVENT_CRITERIA", "learning_events", "ov_signal_closed_form", "ov_entry_matrix",
    "ov_gradient_share", "ov_noise_components", "equal_signal_lr_scale", "ov_batch_gradient",
    "ff_signal_std_at_init", "signal_closed_forms",
    "attention_component_attributions", "residual_attributions", "SnapshotRecorder", "seed_interval",
    "paired_seed_intervals", "ATTENTION_MATRICES", "ov_gradient_noise", "ov_noise_component",
    "OVNoiseRecorder", "selection_set", "SELECTION_SEED_OFFSET",
]
