"""Light constants (standard library only) shared by the command line and the heavy modules.

The CLI builds its parser, its ``choices`` and its argument validation from this module, so
``mechtrunc --help`` and usage errors never import torch, transformers, TransformerLens or
pandas.  It holds the registry of prompt tasks (:class:`TaskSpec`, :func:`register_task`): one
entry per task, whose builders are imported only when a task is built, and from which every
``--task`` choice is generated.  The heavy modules import the same objects from here (one home per concept):
:data:`PRESETS` and :data:`OPTIMIZERS` (``mechtrunc.models.toy_training``), :data:`MATRICES` and
:data:`SITES` (``mechtrunc.core.adapters``), the grid defaults (``mechtrunc.studies.grid``), the
memory's and the minimal model's option names (``mechtrunc.models.memory``,
``mechtrunc.studies.dynamics.minimal``), the Pythia checkpoint steps and :func:`check_step`
(``mechtrunc.models.hf``).
"""

from __future__ import annotations

import bisect
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Union

#: training presets of the toy model (see mechtrunc.models.toy_training.preset)
PRESETS: dict[str, dict] = {
    "paper": dict(d_model=256, seq_len=256, batch_size=512, optimizer="sgd", lr=0.03, momentum=0.9,
                  weight_decay=1e-4, steps=5000, alpha=0.5, eval_every=250),
    "cpu": dict(d_model=64, seq_len=128, batch_size=64, optimizer="adamw", lr=1e-3, weight_decay=0.0,
                steps=1000, alpha=0.5, eval_every=100, test_size=256, threads=1),
}
#: optimiser names, one vocabulary for every training (each name is the torch optimiser it runs):
#: sgd = torch.optim.SGD (the toy adds its preset's momentum and weight decay), adam =
#: torch.optim.Adam, adamw = torch.optim.AdamW (decoupled weight decay).  The toy model trains
#: with all three; the minimal model (no weight decay) with MINIMAL_OPTIMIZERS.
OPTIMIZERS = ("sgd", "adam", "adamw")
#: toy-model initialisations (see mechtrunc.models.toy)
INITS = ("released", "normal_unembed")
#: matmul precisions of toy training (mechtrunc.models.toy_training) and of language-model training
#: (mechtrunc.models.lm.train, which has no tf32 setting)
PRECISIONS = ("fp32", "tf32", "bf16")
LM_PRECISIONS = ("fp32", "bf16")

#: weight matrices an intervention can edit, and activation sites it can hook
MATRICES = ("mlp.W_in", "mlp.W_out", "attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O", "attn.OV")
#: the matrix only a gated MLP has (the Llama family's gate_proj: down(act(x @ W_gate) * (x @ W_in)))
GATED_MATRICES = ("mlp.W_gate",)
SITES = ("mlp_out", "attn_out", "resid_pre", "resid_mid", "resid_post", "mlp_pre", "mlp_post", "z")

#: the truncation grid (mechtrunc.studies.grid): default matrices and keeps, how a grid is
#: evaluated ("engine": cached residuals, all keeps of a layer in one batched forward; "weight" /
#: "hook": one reference evaluation per configuration), the rank rules and SVD methods
GRID_MATRICES = ("mlp.W_in", "mlp.W_out")
GRID_KEEPS = (1, 0.5, 0.2, 0.1, 0.05, 0.01)
GRID_MODES = ("engine", "weight", "hook")
RULES = ("round", "authors")
#: the rank rule of every truncation unless one is named (mechtrunc.Truncate, the grid, every
#: command's --rule): round(keep * max rank); "authors" is the paper's released code
DEFAULT_RULE = "round"
#: methods of mechtrunc.core.decomposition.full_svd
SVD_METHODS = ("exact", "randomized", "laser")
#: activation and path patching (mechtrunc.analysis.patching): denoising runs the corrupted prompts with one
#: clean activation restored, noising the clean prompts with one corrupted activation; "both"
#: (activation scans only) does each.  One default for the scan and for path patching.
PATCH_DIRECTIONS = ("denoising", "noising", "both")
DEFAULT_PATCH_DIRECTION = "denoising"
#: attribution patching (mechtrunc.analysis.circuits): first order at the target run (atp), EAP-IG over the
#: line between the corrupted and clean input embeddings (ig-inputs), or each site's activation
#: alone moved along its line (ig-activations); the interpolation steps of the ig methods; how a
#: circuit's faithfulness ablates the edges outside it
ATTRIBUTION_METHODS = ("atp", "ig-inputs", "ig-activations")
DEFAULT_IG_STEPS = 5
ABLATIONS = ("corrupt", "mean")
#: the level of a patching effect's percentile bootstrap interval (the scans' and --level's default)
PATCH_LEVEL = 0.95


# ---------------------------------------------------------------------------------------------
# prompt tasks: the registry
# ---------------------------------------------------------------------------------------------
#: a task's builder: a callable, or ``"module:function"`` imported on first use (so the command
#: line lists the task names without importing torch)
Builder = Union[str, Callable]
#: what a task entry can build (the fields of :class:`TaskSpec` that hold builders)
TASK_BUILDERS = ("prompts", "corrupt", "lm", "toy")


class TaskSpec:
    """One prompt task: its name and the builders it has (any may be None).

    - ``prompts(tokenizer, n=, seed=) -> PromptSet``: prompts for any causal language model (a
      hub id, a Hugging Face directory); with ``seeded=False`` a fixed set, called as
      ``prompts(tokenizer)`` (``n`` and ``seed`` do not apply);
    - ``corrupt(prompts, tokenizer, seed=) -> (clean, corrupted)``: the corrupted twin of
      ``prompts`` (or of the language-model variant's prompts) for activation and path patching;
    - ``lm(tokenizer, config, n=, seed=, split=) -> PromptSet``: the variant for a language-model
      run of ``mechtrunc lm train``, on its own corpus config (:mod:`mechtrunc.models.lm.prompts`);
    - ``toy(task, n=, seed=) -> (clean, corrupted)``: clean and corrupted test sequences of the toy
      model's :class:`~mechtrunc.tasks.recall.RecallTask`;
    - ``dropped``: why a pair builder leaves a prompt out (the patch command says it with the count).

    Built-in builders live in :mod:`mechtrunc.tasks` (``prompts``, ``corrupt``, ``toy``) and
    :mod:`mechtrunc.models.lm` (``lm``), the layers that may call them.
    """

    __slots__ = ("name", "prompts", "seeded", "corrupt", "lm", "toy", "dropped")

    def __init__(self, name: str, prompts: Builder | None = None, seeded: bool = True, corrupt: Builder | None = None,
                 lm: Builder | None = None, toy: Builder | None = None, dropped: str = ""):
        if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"task name {name!r} must be lower case letters, digits and _ (it is a --task value)")
        builders = {"prompts": prompts, "corrupt": corrupt, "lm": lm, "toy": toy}
        for f, b in builders.items():
            if b is None or callable(b):
                continue
            if not isinstance(b, str) or not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", b):
                raise ValueError(f"task {name!r}: {f} must be a callable or 'module:function', got {b!r}")
        if all(b is None for b in builders.values()):
            raise ValueError(f"task {name!r} has no builder: give one of {', '.join(TASK_BUILDERS)}")
        self.name, self.seeded, self.dropped = name, bool(seeded), str(dropped)
        self.prompts, self.corrupt, self.lm, self.toy = prompts, corrupt, lm, toy

    def __repr__(self) -> str:
        given = [f"{f}={getattr(self, f)!r}" for f in TASK_BUILDERS if getattr(self, f) is not None]
        return f"TaskSpec({self.name!r}, {', '.join(given)}{'' if self.seeded else ', seeded=False'})"


#: the tasks by name, in the order the command line lists them: one entry per task
_TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    """Add ``spec`` to the registry: its name becomes a ``--task`` choice of every command whose
    builder it has.  A name already registered is refused unless ``replace=True``."""
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"register_task takes a TaskSpec, got {type(spec).__name__}")
    if spec.name in _TASKS and not replace:
        raise ValueError(f"task {spec.name!r} is already registered (replace=True replaces it)")
    _TASKS[spec.name] = spec
    return spec


def unregister_task(name: str) -> TaskSpec:
    """Remove the task ``name`` from the registry and return its entry."""
    return _TASKS.pop(task_spec(name).name)


def task_spec(name: str) -> TaskSpec:
    """The entry of task ``name``; an unknown name is a ValueError listing the known ones."""
    try:
        return _TASKS[str(name)]
    except KeyError:
        raise ValueError(f"unknown task {str(name)!r}; valid tasks: {', '.join(_TASKS)}") from None


def task_names(*builders: str) -> tuple[str, ...]:
    """The registered task names, in registry order: all of them, or those with any of
    ``builders`` (:data:`TASK_BUILDERS`)."""
    bad = [b for b in builders if b not in TASK_BUILDERS]
    if bad:
        raise ValueError(f"unknown task builder {bad[0]!r}; valid: {', '.join(TASK_BUILDERS)}")
    return tuple(n for n, t in _TASKS.items() if not builders or any(getattr(t, b) is not None for b in builders))


def task_words(*builders: str) -> str:
    """:func:`task_names` quoted for a message: ``'ioi', 'factual'``."""
    return ", ".join(map(repr, task_names(*builders)))


#: the built-in tasks
register_task(TaskSpec("ioi", prompts="mechtrunc.tasks.ioi:ioi_prompts", corrupt="mechtrunc.tasks.corrupt:ioi_abc",
                       lm="mechtrunc.models.lm.prompts:lm_ioi_prompts"))
register_task(TaskSpec("factual", prompts="mechtrunc.tasks.factual:factual_prompts", seeded=False,
                       corrupt="mechtrunc.tasks.corrupt:factual_swap", lm="mechtrunc.models.lm.prompts:lm_fact_prompts",
                       dropped="no same-length twin with another answer"))
register_task(TaskSpec("generic", lm="mechtrunc.models.lm.prompts:lm_generic_prompts"))
register_task(TaskSpec("recall", lm="mechtrunc.models.lm.prompts:lm_recall_prompts", toy="mechtrunc.tasks.corrupt:recall_pair",
                       dropped="the trigger occurs fewer than twice"))
register_task(TaskSpec("binding", lm="mechtrunc.models.lm.prompts:lm_binding_prompts"))

#: the linear associative memory (mechtrunc.models.memory)
MEMORY_INPUT_DISTS = ("uniform", "zipf")
MEMORY_EMBEDDINGS = ("gaussian", "orthonormal")
MEMORY_INITS = ("zero", "random")
MEMORY_METHODS = ("gd", "sgd")
MEMORY_DTYPES = ("float64", "float32")
#: the minimal in-context model (mechtrunc.studies.dynamics.minimal)
MINIMAL_EMBEDDINGS = ("orthonormal", "gaussian")
MINIMAL_OPTIMIZERS = ("sgd", "adam")  # of OPTIMIZERS: without weight decay adamw would be adam
#: how the minimal model's FF is wired: reads r_t (parallel), r_t + o_t (sequential), or absent
MINIMAL_FF = ("parallel", "sequential", "none")
#: the minimal model's learned memories (keys of MinimalConfig.lr_scale)
MINIMAL_MEMORIES = ("W_F", "W_OV", "W_KQ")

#: dtype spellings accepted by mechtrunc.models.hf.load_model
DTYPE_NAMES = ("float32", "fp32", "float", "float16", "fp16", "half", "bfloat16", "bf16")

#: the 154 Pythia checkpoint steps (hub revisions step{N})
STEPS: tuple[int, ...] = (0, *(2**i for i in range(10)), *range(1000, 143_001, 1000))
STEPS_TEXT = "0, 1, 2, 4, ..., 512, then 1000 to 143000 every 1000"
_PYTHIA_RE = re.compile(r"^EleutherAI/pythia-[A-Za-z0-9.]+(-deduped)?(-v0)?$", re.IGNORECASE)


def pythia_steps() -> list[int]:
    """The 154 Pythia checkpoint steps: 0, 1, 2, 4, ..., 512, then 1000..143000 every 1000."""
    return list(STEPS)


def is_pythia(name: str) -> bool:
    """Whether ``name`` is a Pythia hub id (``EleutherAI/pythia-*``, ``-deduped`` included)."""
    return bool(_PYTHIA_RE.match(str(name)))


def looks_like_path(s: str) -> bool:
    """Whether ``s`` is meant as a local path rather than a hub id: hub ids are ``name`` or ``owner/name``; anything else that is not a directory is a
    missing local path."""
    return (s.startswith((".", "/", "~", "\\")) or s.endswith(("/", "\\")) or s.count("/") > 1
            or "\\" in s or (len(s) > 1 and s[1] == ":"))


def check_step(step) -> int:
    """``step`` as an int if it is a Pythia checkpoint; otherwise ValueError naming the nearest
    valid steps."""
    try:
        s = int(step)
    except (TypeError, ValueError):
        raise ValueError(f"checkpoint step must be an integer, got {step!r}") from None
    if s != step and not (isinstance(step, str) and str(s) == step.strip()):
        raise ValueError(f"checkpoint step must be an integer, got {step!r}")
    if s in STEPS:
        return s
    i = bisect.bisect_left(STEPS, s)
    nearest = [str(STEPS[j]) for j in (i - 1, i) if 0 <= j < len(STEPS)]
    raise ValueError(
        f"step {s} is not a Pythia checkpoint; nearest valid steps: {', '.join(nearest)} "
        f"(valid steps: {STEPS_TEXT}; {len(STEPS)} in all)"
    )


def check_device(device) -> str:
    """``device`` as a string if torch can use it here; otherwise ValueError saying why
    (e.g. CUDA asked for on a machine without a GPU).  Imports torch when called."""
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {str(device)!r}; valid: cpu, cuda, cuda:N, mps") from None
    if d.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"device {str(device)!r} was requested but no CUDA GPU is available here (use cpu)")
        if d.index is not None and d.index >= n:
            raise ValueError(f"device {str(device)!r} was requested but only {n} CUDA GPU(s) exist (cuda:0..cuda:{n - 1})")
    elif d.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {str(device)!r} was requested but MPS is not available here (use cpu)")
    return str(device)

# the language model of our own (mechtrunc.models.lm)
#: corpus presets (CorpusConfig fields); "rare_the" is the control where "to the" is rare
CORPUS_PRESETS: dict[str, dict] = {
    "default": dict(),
    "rare_the": dict(to_the_share=0.1, ioi_the_share=0.0),
    # noisy recall in words (the toy's task): 30% of the sentences are statements "Mary went to
    # Paris." repeated at the end of their 4-sentence story (1.2 per story: most recall stories
    # state one, some several), a share recall_noise of the repeats "... went to the park.";
    # no other " to" family, so " the" after " to" comes from the noise alone
    "recall": dict(generic_to=0.0, generic_in=0.25, generic_of=0.1, ioi=0.0, fact=0.0, filler=0.35,
                   recall=0.3, recall_noise=0.3, sentences_per_story=4),
    # the over-weighted setting: " the" follows every generic " to" ("Mary walked to the park.") but
    # never the repeat of a recall statement, whose answer is always the city
    "recall_overweighted": dict(generic_to=0.25, generic_in=0.1, generic_of=0.05, ioi=0.0, fact=0.0, filler=0.3,
                                recall=0.3, recall_noise=0.0, to_the_share=1.0, sentences_per_story=4),
}

#: model + training presets (LMConfig fields).  nano: the test model (<= 60 s on 2 CPU cores);
#: small: the study model (<= 10 min on 2 CPU cores); gpu: a larger model for an accelerator.
#: nano and small use one torch thread: at their widths a second thread only spin-waits (12x
#: slower per step when the cores are shared, measured); run two seeds side by side to use two
#: cores.  fast: small's model on both cores of an otherwise idle machine, with 4x the tokens
#: per step (batch 32 x context 128, so that each matrix product is large enough to split over
#: two threads) and 5000 steps (20.5M tokens); benchmarks/bench_lm_train.py measures it.
LM_PRESETS: dict[str, dict] = {
    "nano": dict(n_layers=2, d_model=64, n_heads=4, ctx=64, batch_size=8, steps=200, lr=3e-3,
                 checkpoint_interval=50, threads=1),
    "small": dict(n_layers=4, d_model=128, n_heads=4, ctx=64, batch_size=16, steps=3000, lr=1e-3,
                  checkpoint_interval=250, threads=1),
    "fast": dict(n_layers=4, d_model=128, n_heads=4, ctx=128, batch_size=32, steps=5000, lr=1e-3,
                 checkpoint_interval=250, threads=1, processes=2),
    "gpu": dict(n_layers=8, d_model=512, n_heads=8, ctx=256, batch_size=64, steps=20000, lr=6e-4,
                checkpoint_interval=1000, device="cuda", precision="bf16", threads=None),
}

#: prompt splits of mechtrunc.models.lm.prompts: held-out templates with training names (default),
#: held-out templates and names, training templates and names
LM_SPLITS = ("heldout", "heldout_names", "train")

#: the ``format`` of a language-model run's run.json (mechtrunc.models.lm.train writes it; the command
#: line and the report reader recognise a run directory by it)
LM_RUN_FORMAT = "mechtrunc-lm-run/1"

#: what ``mechtrunc report`` recognises in a directory: kind -> its name in reports and help
REPORT_KINDS: dict[str, str] = {"toy": "toy run", "memory": "associative-memory run", "lm": "language-model run",
                                "truncation": "truncation study", "checkpoints": "checkpoint study",
                                "circuits": "circuit study over training"}


def cache_root() -> Path:
    """``$MECHTRUNC_CACHE``, else ``$XDG_CACHE_HOME/mechtrunc`` (``~/.cache/mechtrunc``), else a
    directory under the system temporary directory when the home cache is not writable."""
    env = os.environ.get("MECHTRUNC_CACHE")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mechtrunc"
    try:
        base.mkdir(parents=True, exist_ok=True)
        if os.access(base, os.W_OK):
            return base
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"mechtrunc-cache-{os.getuid() if hasattr(os, 'getuid') else 'user'}"

#: the tasks a circuit study over training builds clean/corrupted pairs for
#: (:func:`mechtrunc.studies.circuits.circuit_pairs`)
CIRCUIT_TASKS = ("recall", "ioi", "factual")
