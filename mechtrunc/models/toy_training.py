"""Training the toy model on noisy in-context recall, with an evaluation history.

Presets:

- ``paper``: the authors' released run (d 256, T 256, batch 512, SGD lr 0.03, momentum 0.9,
  weight decay 1e-4, 5000 iterations, alpha 0.5, k 1).  Meant for a GPU.
- ``cpu``: a small configuration that shows the same effect on 2 CPU cores in about two
  minutes (see ``docs/results.md`` for the measured numbers and why these sizes).

Training is resumable: with an output directory, a checkpoint (model, optimiser, step,
history) is written at every evaluation, and ``train`` on the same directory continues from it.
Batches are a pure function of ``(seed, step)``, so a resumed run sees the same data as an
uninterrupted one.  A directory holding a run of another configuration is refused, naming every
differing field; ``train`` on a finished run writes nothing and returns it
(``already_finished``); ``extend=True`` trains a run on to a larger ``steps`` (the learning rate
is constant, so an extended run has the weights of one trained straight to the larger count).
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from mechtrunc._checks import check_choice, check_int, check_real, check_resume
from mechtrunc._choices import OPTIMIZERS, PRECISIONS, PRESETS, check_device
from mechtrunc._progress import progress_bar
from mechtrunc.core.interventions import Ablate, Intervention, Truncate
from mechtrunc.analysis.evaluation import evaluate
from mechtrunc.core.metrics import masked_cross_entropy, metrics_from_logits
from mechtrunc.core.prompts import PromptSet
from mechtrunc.core.results import LAST_FFN_REMOVED, upgrade_record
from mechtrunc.core.runner import item_logits
from mechtrunc.tasks.recall import RecallConfig, RecallTask
from mechtrunc.models.toy import ToyConfig, ToyTransformer

__all__ = ["TrainConfig", "PRESETS", "train", "evaluate_toy", "trigger_margin", "TrainResult",
           "truncation_variants", "toy_truncation_table", "KeepCheckpoints"]



@dataclass
class TrainConfig:
    # task
    alpha: float = 0.5
    k: int = 1
    seq_len: int = 256
    fixed_triggers: bool = True
    noise_token: int | str = 2
    # model
    d_model: int = 256
    n_layers: int = 2
    ffn: str = "relu"
    init: str = "released"  # see mechtrunc.models.toy.INITS
    # optimisation
    steps: int = 5000
    batch_size: int = 512
    optimizer: str = "sgd"
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # bookkeeping
    eval_every: int = 100
    test_size: int = 512
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"  # fp32 | tf32 | bf16 (autocast, GPU)
    threads: int | None = None  # CPU intra-op threads while training (None: torch's default)
    preset: str = "custom"

    def __post_init__(self):
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("precision", self.precision, PRECISIONS)
        for name in ("steps", "batch_size", "eval_every", "test_size") + (("threads",) if self.threads is not None else ()):
            setattr(self, name, check_int(name, getattr(self, name), 1))
        self.seed = check_int("seed", self.seed)
        self.lr = check_real("lr", self.lr, 0, above=True)
        self.momentum = check_real("momentum", self.momentum, 0)
        self.weight_decay = check_real("weight_decay", self.weight_decay, 0)
        self.recall_config()  # validates alpha, k, seq_len, noise token
        self.model_config()

    def recall_config(self) -> RecallConfig:
        noise = self.noise_token if self.noise_token == "extra" else int(self.noise_token)
        return RecallConfig(alpha=self.alpha, k=self.k, seq_len=self.seq_len,
                            fixed_triggers=self.fixed_triggers, noise_token=noise)

    def model_config(self) -> ToyConfig:
        return ToyConfig(n_layers=self.n_layers, d_model=self.d_model, d_vocab=self.recall_config().d_vocab,
                         n_ctx=self.seq_len, ffn=self.ffn, init=self.init, seed=self.seed)


def preset(name: str, **overrides) -> TrainConfig:
    """The named preset with overrides (``None`` values are ignored)."""
    check_choice("preset", name, PRESETS, label="valid presets")
    valid = {f.name for f in fields(TrainConfig)}
    for key in overrides:
        if key not in valid:
            raise ValueError(f"unknown training option {key!r}")
    args = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}, "preset": name}
    return TrainConfig(**args)


@torch.no_grad()
def trigger_margin(model: ToyTransformer, triggers: Tensor, noise_id: int, layer: int | None = None) -> float:
    """Noise logit minus the best other logit when each trigger's embedding is sent through
    one FFN (the last layer's by default) and the unembedding; mean over triggers."""
    layer = model.cfg.n_layers - 1 if layer is None else layer
    mlp = model.blocks[layer].mlp
    if mlp is None:
        return float("nan")
    logits = mlp(model.W_E[triggers.to(model.W_E.device)]) @ model.W_U  # [k, vocab]
    noise = logits[:, noise_id].clone()
    logits[:, noise_id] = float("-inf")
    return (noise - logits.max(-1).values).mean().item()


def evaluate_toy(model: ToyTransformer, prompts: PromptSet, batch_size: int = 128) -> dict[str, dict[str, float]]:
    """Clean-test metrics of the full model and with the last layer's FFN removed (output
    zeroed by a hook): ``{"full": {...}, "last_ffn_removed": {...}}`` with ``accuracy``,
    ``p_noise``, ``p_answer`` and ``logit_diff_noise``."""
    out = {}
    last = model.cfg.n_layers - 1
    variants = {"full": ()}
    if model.blocks[last].mlp is not None:
        variants[LAST_FFN_REMOVED] = (Ablate("mlp", layer=last),)
    for name, ivs in variants.items():
        m = metrics_from_logits(item_logits(model, prompts, *ivs, batch_size=batch_size), prompts)
        out[name] = {"accuracy": m["accuracy"], "p_noise": m["p_noise"], "p_answer": m["p_answer"],
                     "logit_diff_noise": m["logit_diff_noise"]}
    return out


def toy_change_intervals(model: ToyTransformer, prompts: PromptSet, n_boot: int = 1000, level: float = 0.95,
                         seed: int = 0, batch_size: int = 128) -> pd.DataFrame:
    """The change of ``accuracy``, ``p_noise``, ``p_answer`` and ``logit_diff_noise`` when the
    last layer's FFN is removed, against the full model on the same clean test items, with the
    paired percentile bootstrap interval over the test sequences (all repeated triggers of a
    sequence resampled together; ``n_boot`` resamples, seeded): one row per metric, columns of
    :func:`mechtrunc.analysis.selection.change_intervals`."""
    from mechtrunc.analysis.selection import change_intervals

    last = model.cfg.n_layers - 1
    if model.blocks[last].mlp is None:
        raise ValueError(f"the model's last layer ({last}) has no FFN to remove")
    _, full = evaluate(model, prompts, batch_size=batch_size, items=True, label="full")
    _, cut = evaluate(model, prompts, Ablate("mlp", layer=last), batch_size=batch_size, items=True)
    return change_intervals(full, cut, ["accuracy", "p_noise", "p_answer", "logit_diff_noise"], n_boot=n_boot,
                            level=level, seed=seed, clusters=prompts.rows)


def truncation_variants(
    rule: str = "authors", keeps: tuple[float, ...] = (0.1,), n_layers: int = 2
) -> dict[str, list[Intervention]]:
    """The paper's toy truncation table as named intervention lists: the full model, the last
    layer's FFN ``W_in`` and ``W_out`` truncated to each keep, that FFN removed, the previous
    layer's FFN removed, and the last layer's attention ``W_V`` and ``W_O`` at keep 0.1.

    ``rule="authors"`` keeps ``int(keep * d_model)`` singular values, as the released code does.
    Names use 0-based layers, as the command line does: ``mlp.W_in L1 keep 0.1``, ``FFN L1 removed``
    (the paper's layer-2 FFN in its two-layer model is layer 1 here)."""
    last = n_layers - 1
    out: dict[str, list[Intervention]] = {"full model": []}
    for matrix in ("mlp.W_in", "mlp.W_out"):
        for keep in keeps:
            out[f"{matrix} L{last} keep {keep:g}"] = [Truncate(matrix, layer=last, keep=keep, rule=rule)]
    out[f"FFN L{last} removed"] = [Ablate("mlp", layer=last)]
    if last > 0:
        out[f"FFN L{last - 1} removed"] = [Ablate("mlp", layer=last - 1)]
    for matrix in ("attn.W_V", "attn.W_O"):
        out[f"{matrix} L{last} keep 0.1"] = [Truncate(matrix, layer=last, keep=0.1, rule=rule)]
    return out


def toy_truncation_table(
    model: ToyTransformer, prompts: PromptSet, rule: str = "authors", keeps: tuple[float, ...] = (0.1,)
) -> pd.DataFrame:
    """The paper's toy truncation table: :func:`truncation_variants` evaluated on ``prompts``,
    one row per variant with ``variant, accuracy, p_noise, p_answer, logit_diff_noise`` (the toy
    task's noise competitor).  A study's table on any model is
    :func:`mechtrunc.studies.truncation_study`."""
    variants = truncation_variants(rule, keeps, model.cfg.n_layers)
    rows = [evaluate(model, prompts, *ivs, label=name) for name, ivs in variants.items()]
    return pd.concat(rows, ignore_index=True)[["variant", "accuracy", "p_noise", "p_answer", "logit_diff_noise"]]


def truncation_table(*args, **kwargs) -> pd.DataFrame:
    """Deprecated name of :func:`toy_truncation_table`; it goes in the next release."""
    import warnings

    warnings.warn("mechtrunc.truncation_table is now toy_truncation_table (the paper's toy table; same "
                  "arguments, same result); the old name goes in the next release", DeprecationWarning, stacklevel=2)
    return toy_truncation_table(*args, **kwargs)


@dataclass
class TrainResult:
    """``seconds``: the training time of this call (0 when nothing was trained);
    ``resumed_from``: the steps already done when it started; ``already_finished``: the run was
    finished before the call, which returned it without training or writing."""

    model: ToyTransformer
    history: pd.DataFrame
    config: TrainConfig
    seconds: float
    final: dict = field(default_factory=dict)
    resumed_from: int = 0
    already_finished: bool = False


#: training steps whose batches are generated together
GEN_CHUNK = 8

#: options that may differ when a run is resumed: where and on how many threads it runs
#: (``steps`` changes only with ``extend=True``)
_RESUMABLE_CHANGES = ("device", "threads")


class KeepCheckpoints:
    """A ``callback`` for :func:`train` that keeps the model of every evaluation: at each one it
    writes ``directory/step{N}/`` (``model.safetensors`` + ``config.json`` with the training
    configuration ``cfg``, a run directory :func:`load_run` reads), adding no history column.
    ``mechtrunc toy train --keep-checkpoints`` writes them to ``OUT/checkpoints/``; the circuit
    study over training reads them (:class:`mechtrunc.studies.circuits.ToyCheckpoints`)."""

    def __init__(self, directory: str | Path, cfg: TrainConfig):
        self.directory, self.cfg = Path(directory), cfg

    def __call__(self, step: int, model: ToyTransformer) -> dict:
        model.save(self.directory / f"step{int(step)}",
                   extra={"train": asdict(self.cfg), "task": self.cfg.recall_config().to_dict()})
        return {}


def batch_seed(seed: int, step: int) -> int:
    """The data seed of a training step (or chunk): batches are a pure function of it."""
    return (seed * 1_000_003 + step) % (2**63 - 1)


def train(
    cfg: TrainConfig, out_dir: str | Path | None = None, progress: bool = True,
    callback: Callable[[int, ToyTransformer], dict] | None = None, extend: bool = False,
) -> TrainResult:
    """Train the toy model; evaluate every ``eval_every`` steps; save to ``out_dir``.

    An ``out_dir`` holding a checkpoint resumes it when the configurations agree (``device`` and
    ``threads`` may differ); any other difference raises a ``ValueError`` naming each field with
    both values, and nothing is written.  A finished run (checkpoint at ``cfg.steps`` and its
    ``config.json``) is returned as it is, with ``already_finished=True``, writing nothing.  With
    ``extend=True`` a run (finished or not) whose configuration differs only by a smaller
    ``steps`` is trained on to ``cfg.steps``: the learning rate does not depend on ``steps`` and
    batches depend on the step alone, so the weights equal those of a run trained straight to
    ``cfg.steps`` (the history gains a row at the old final step when ``eval_every`` does not
    divide it, and the next row's ``train_loss`` averages the steps after it).

    ``callback(step, model)``, if given, is called at every evaluation (model in eval mode,
    under ``torch.no_grad``) and returns extra history columns for that row (e.g.
    :class:`mechtrunc.studies.dynamics.ToyDynamicsRecorder`); it does not change the other columns.
    Its time counts in the next rows' ``seconds``.

    With ``cfg.threads`` set (the ``cpu`` preset uses 1), torch runs on that many CPU threads
    during the call, so the numbers do not depend on how many cores the machine has (the same
    seed gives the same numbers everywhere; ``threads=None`` uses torch's default, about 1.7x
    faster on 2 cores, with numbers that can differ in the last digits)."""
    if cfg.threads is None:
        return _train(cfg, out_dir, progress, callback, extend)
    before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, out_dir, progress, callback, extend)
    finally:
        torch.set_num_threads(before)


def _train(cfg: TrainConfig, out_dir: str | Path | None, progress: bool, callback, extend: bool) -> TrainResult:
    device = torch.device(check_device(cfg.device))
    torch.manual_seed(cfg.seed)
    if cfg.precision == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    task = RecallTask(cfg.recall_config(), device=device)
    test = task.test_set(cfg.test_size, seed=cfg.seed + 10_000)
    test_prompts = test.to_prompts()
    model = ToyTransformer(cfg.model_config()).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    start_step, rows = 0, []
    ckpt_path = Path(out_dir) / "checkpoint.pt" if out_dir is not None else None
    if ckpt_path is not None and not ckpt_path.exists():
        theirs = [n for n in ("config.json", "model.safetensors", "history.csv") if (Path(out_dir) / n).exists()]
        if theirs:
            raise ValueError(f"{out_dir} holds {', '.join(theirs)} but no training checkpoint (checkpoint.pt): not a "
                             "run this command can resume; nothing was changed: use a new --out directory")
    if ckpt_path is not None and ckpt_path.exists():
        try:
            ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
            ckpt["config"], ckpt["step"]  # noqa: B018 - the keys a checkpoint must have
        except Exception as err:  # truncated file, not a checkpoint, ...
            raise ValueError(f"{ckpt_path} is corrupt or unreadable ({type(err).__name__}: {err}); delete it to "
                             "start over, or use a new --out directory") from err
        check_resume(str(out_dir), ckpt["config"], asdict(cfg), ignore=_RESUMABLE_CHANGES, extend=extend)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start_step, rows = ckpt["step"], [upgrade_record(r) for r in ckpt["history"]]
        meta_path = Path(out_dir) / "config.json"
        if start_step == cfg.steps and meta_path.is_file():  # finished: return it, write nothing
            model.eval()
            final = json.loads(meta_path.read_text()).get("final") or evaluate_toy(model, test_prompts)
            return TrainResult(model=model, history=pd.DataFrame(rows), config=cfg, seconds=0.0, final=final,
                               resumed_from=start_step, already_finished=True)

    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext())
    t0 = time.perf_counter()
    bar = progress_bar(cfg.steps, "train", "step", enabled=progress, initial=start_step)
    running = torch.zeros((), device=device)  # summed on device: no host sync per step
    n_running = 0
    chunk_id, chunk = -1, None
    for step in range(start_step + 1, cfg.steps + 1):
        # data for GEN_CHUNK steps is drawn at once (fewer small kernels on a GPU); each chunk is
        # a pure function of (seed, chunk index), so a resumed run sees the same batches
        if (step - 1) // GEN_CHUNK != chunk_id:
            chunk_id = (step - 1) // GEN_CHUNK
            chunk = task.sample(cfg.batch_size * GEN_CHUNK, seed=batch_seed(cfg.seed, chunk_id))
        i = (step - 1) % GEN_CHUNK
        batch = chunk.select(slice(i * cfg.batch_size, (i + 1) * cfg.batch_size))
        with autocast:
            logits = model(batch.inputs)
        loss = masked_cross_entropy(logits, batch.targets, batch.loss_mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += loss.detach()
        n_running += 1
        bar.update(1)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            ev = evaluate_toy(model, test_prompts)
            row = {"step": step, "train_loss": running.item() / max(n_running, 1)}
            for variant, m in ev.items():
                row.update({f"{variant}_{k}": v for k, v in m.items()})
            row["trigger_margin"] = trigger_margin(model, task.fixed_triggers, task.config.noise_id)
            row["seconds"] = time.perf_counter() - t0
            if callback is not None:
                with torch.no_grad():
                    row.update(callback(step, model))
            rows.append(row)
            running, n_running = torch.zeros((), device=device), 0
            model.train()
            bar.set_postfix(acc=f"{row['full_accuracy']:.2f}", noise=f"{row['full_p_noise']:.2f}")
            if ckpt_path is not None:
                ckpt_path.parent.mkdir(parents=True, exist_ok=True)
                tmp = ckpt_path.with_suffix(".tmp")
                torch.save({"config": asdict(cfg), "model": model.state_dict(), "optimizer": opt.state_dict(),
                            "step": step, "history": rows}, tmp)
                tmp.replace(ckpt_path)
    bar.close()
    model.eval()
    seconds = time.perf_counter() - t0
    history = pd.DataFrame(rows)
    final = evaluate_toy(model, test_prompts)
    if out_dir is not None:
        model.save(out_dir, extra={"train": asdict(cfg), "task": task.config.to_dict(), "final": final})
        history.to_csv(Path(out_dir) / "history.csv", index=False)
    return TrainResult(model=model, history=history, config=cfg, seconds=seconds, final=final, resumed_from=start_step)


def load_run(directory: str | Path, device: str = "cpu") -> tuple[ToyTransformer, TrainConfig, RecallTask]:
    """Model, training configuration and task of a directory written by :func:`train`."""
    model = ToyTransformer.load(directory, device=check_device(device))
    meta = json.loads((Path(directory) / "config.json").read_text())
    if "train" not in meta:
        raise ValueError(f"{str(directory)!r} holds a model but no training configuration")
    cfg = TrainConfig(**{**meta["train"], "device": device})
    return model, cfg, RecallTask(cfg.recall_config(), device=device)
