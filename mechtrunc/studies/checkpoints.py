"""Checkpoint studies: the same evaluation at many training checkpoints, one independent unit
per checkpoint, each finished unit stored atomically as its own Parquet shard.

A unit (:class:`CheckpointUnit`) loads one checkpoint, builds the prompts with its tokenizer,
evaluates either the full model and one truncation (``truncation=``) or the full model and a
whole :class:`~mechtrunc.studies.grid.Grid` (``grid=``, through
:func:`~mechtrunc.studies.grid.evaluate_grid`), and writes ``OUT/shards/step{N}.parquet``
(temporary file + ``os.replace``; the directory's files:
:mod:`~mechtrunc.studies.checkpoint_files`).  A rerun skips the steps whose shard exists; the final
table is the merge of the shards, in step order.  Because a shard is written in one atomic step and
rewriting it with the same rows is harmless, a kill at any moment (or a retried task) can
neither lose nor duplicate rows.  Units run on an executor (:mod:`mechtrunc.studies.executors`):
in process (default), on Ray, or on SLURM through submitit.

The module is over 400 lines because the unit, its checkpoint sources (a local directory
template, the hub with its offline cache) and the study that plans, runs and merges the units
share one shard format and one resume rule; split apart they would pass both around.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from mechtrunc._choices import task_names, task_spec, task_words
from mechtrunc._scalars import as_int, as_int_list
from mechtrunc.core.interventions import Compose, Intervention
from mechtrunc.analysis.evaluation import evaluate
from mechtrunc.core.prompts import PromptSet
from mechtrunc.models.lm_run import checkpoint_dirs
from mechtrunc.core.results import CHECKPOINT_COLUMNS, SECONDS, check_metric, tidy_truncation, variant_row
from mechtrunc.studies.checkpoint_files import CheckpointStudyDirectory, read_checkpoint_items, study_settings
from mechtrunc.studies.grid import Grid, ItemStore, as_truncate, evaluate_grid
from mechtrunc.studies.store import metric_values, prompts_fingerprint

__all__ = ["checkpoint_study", "CheckpointRequest", "evaluate_loaded", "best_by_step", "heldout_by_step", "step_intervals", "read_checkpoint_items",
           "CheckpointUnit", "CheckpointDirectory", "HubCheckpoints"]


# ----------------------------------------------------------------------------------------
# where checkpoints come from (picklable, so units travel to Ray and SLURM workers)
# ----------------------------------------------------------------------------------------
class HubCheckpoints:
    """``step -> model``: :func:`mechtrunc.models.hf.load_model` of a hub id at revision ``step{N}``
    (from the local Hugging Face cache when it holds it)."""

    def __init__(self, name: str, **load_kwargs):
        self.name, self.load_kwargs = str(name), dict(load_kwargs)

    def __call__(self, step: int):
        from mechtrunc.models.hf import load_model

        return load_model(self.name, step=step, **self.load_kwargs)

    def __repr__(self):
        return f"HubCheckpoints({self.name!r})"


class CheckpointDirectory:
    """``step -> model`` for checkpoints saved on disk with ``save_pretrained``: either a
    directory holding ``step{N}/`` subdirectories (``runs/neox`` -> ``runs/neox/step1000``) or a
    path template with ``{step}`` (``/data/pythia-160m-step{step}``).  :meth:`steps` lists the
    steps present; :meth:`check` raises ValueError for missing ones before anything runs."""

    def __init__(self, path, **load_kwargs):
        self.path = str(path)
        self.load_kwargs = dict(load_kwargs)
        self.template = self.path if "{step}" in self.path else os.path.join(self.path, "step{step}")

    @staticmethod
    def looks_like(path) -> bool:
        """Whether ``path`` names a checkpoint directory or template (rather than a hub id)."""
        p = str(path)
        return "{step}" in p or Path(p).expanduser().is_dir()

    def dir(self, step: int) -> Path:
        return Path(self.template.format(step=step)).expanduser()

    def steps(self) -> list[int]:
        if "{step}" not in self.path:  # a directory of step{N}/ checkpoints, named as a run names them
            parent = Path(self.path).expanduser()
            return list(checkpoint_dirs(parent, with_model=True)) if parent.is_dir() else []
        pattern = re.compile("^" + re.escape(Path(self.template).name).replace(r"\{step\}", r"(\d+)") + "$")
        parent = Path(self.template).expanduser().parent
        if not parent.is_dir():
            return []
        found = []
        for p in parent.iterdir():
            m = pattern.match(p.name)
            if m and (p / "config.json").is_file():
                found.append(int(m.group(1)))
        return sorted(found)

    def check(self, steps: Iterable[int]) -> None:
        missing = [s for s in steps if not (self.dir(s) / "config.json").is_file()]
        if missing:
            have = self.steps()
            shown = ", ".join(map(str, have[:20])) + (" ..." if len(have) > 20 else "") if have else "none"
            where = self.template.replace("{step}", "{N}")
            if not have and "{step}" not in self.path and (Path(self.path).expanduser() / "config.json").is_file():
                raise ValueError(
                    f"{self.path!r} is a single saved model, not a directory of checkpoints: give a directory "
                    f"with step{{N}}/ subdirectories or a path template with {{step}}"
                )
            raise ValueError(
                f"no saved model for step(s) {', '.join(map(str, missing))} at {where!r} "
                f"(each checkpoint is a save_pretrained directory with config.json); steps found: {shown}"
            )

    def __call__(self, step: int):
        from mechtrunc.models.hf import load_model

        return load_model(self.dir(step), **self.load_kwargs)

    def __repr__(self):
        return f"CheckpointDirectory({self.template!r})"


@dataclass(frozen=True)
class _Prompts:
    """``tokenizer -> PromptSet``: a fixed PromptSet, a task for ``prompts_for_task`` (with
    ``n`` and ``seed``), or a user callable."""

    source: object
    n: int = 200
    seed: int = 0

    def __call__(self, tokenizer) -> PromptSet:
        if isinstance(self.source, PromptSet):
            return self.source
        if isinstance(self.source, (str, os.PathLike)):
            from mechtrunc.tasks.registry import prompts_for_task

            return prompts_for_task(self.source, tokenizer, n=self.n, seed=self.seed)
        return self.source(tokenizer)


def evaluate_loaded(load: Callable[[], object], evaluate: Callable[[object], object]):
    """``evaluate(load())``, the model freed afterwards (also on error): one checkpoint unit's run."""
    from mechtrunc.models.hf import free_model

    model = load()
    try:
        return evaluate(model)
    finally:
        free_model(model)
        del model


# ----------------------------------------------------------------------------------------
# the unit of work
# ----------------------------------------------------------------------------------------
@dataclass
class CheckpointUnit:
    """Everything one checkpoint needs: picklable, so it runs in this process, a Ray worker or
    a SLURM job alike.  ``unit()`` = ``unit.evaluate(unit.load())`` (the model is freed after),
    skipped when its shard already exists."""

    step: int
    loader: Callable[[int], object]
    prompts: _Prompts
    variants: tuple = ()  # ((name, Intervention | None), ...) when grid is None
    grid: Grid | None = None
    batch_size: int = 32
    out: str | None = None
    gpus: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"step{self.step}"

    @property
    def directory(self) -> CheckpointStudyDirectory:
        return CheckpointStudyDirectory(self.out)

    def done(self) -> bool:
        return self.directory.step_done(self.step)

    def load(self):
        return self.loader(self.step)

    def evaluate(self, model) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Evaluate the loaded checkpoint: ``(table, items)``, its rows and their per-item
        values (from the same forward passes).  With ``out`` both are written atomically, the
        items first (``out/item_shards/step{N}.parquet``, then ``out/shards/step{N}.parquet``)."""
        self.directory.mark_running(self.step)
        prompts = self.prompts(getattr(model, "tokenizer", None))
        seq = prompts.rows.cpu().numpy()
        if self.grid is not None:
            store = ItemStore(None)
            rows = evaluate_grid(model, prompts, self.grid, batch_size=self.batch_size, items=store)  # THE grid call
            df = tidy_truncation(pd.DataFrame(rows))
            items = store.table(df)
            df.insert(0, "step", self.step)
        else:
            rows, frames = [], []
            for cid, (variant, iv) in enumerate(self.variants):
                t0 = time.perf_counter()
                ivs = () if iv is None else (iv,)
                row, per_item = evaluate(model, prompts, *ivs, batch_size=self.batch_size, label=variant, items=True)
                rows.append(variant_row(self.step, variant, iv.label if iv else "full", metric_values(row),
                                        seconds=time.perf_counter() - t0))
                frames.append(pd.DataFrame({"config": cid, "variant": variant, "baseline": iv is None,
                                            "intervention": iv.label if iv else "full",
                                            "item": range(len(seq)), "sequence": seq,
                                            **{m: v.double().numpy() for m, v in per_item.items()}}))
            df = pd.DataFrame(rows)
            items = pd.concat(frames, ignore_index=True)
        df["step"] = df["step"].astype("int64")
        items.insert(0, "step", self.step)
        items["step"] = items["step"].astype("int64")
        self.directory.write_step(self.step, df, items)  # storage: the items first, then the rows
        return df, items

    def __call__(self) -> tuple[pd.DataFrame, pd.DataFrame] | None:
        if self.done():
            return None  # finished by an earlier run or an earlier attempt of this task
        self.directory.mark_running(self.step)
        return evaluate_loaded(self.load, self.evaluate)


# ----------------------------------------------------------------------------------------
# the study
# ----------------------------------------------------------------------------------------
def _as_intervention(truncation) -> Intervention | None:
    if truncation is None or isinstance(truncation, Intervention):
        return truncation
    if isinstance(truncation, dict):
        return as_truncate(truncation)
    if isinstance(truncation, (list, tuple)):
        items = [_as_intervention(t) for t in truncation]
        return Compose(tuple(i for i in items if i is not None))
    raise TypeError(f"truncation must be an Intervention, a configuration dict or None, got {type(truncation).__name__}")


def _as_grid(grid) -> Grid | None:
    if grid is None or grid is False:
        return None
    if grid is True:
        return Grid()
    if isinstance(grid, Grid):
        return grid
    if isinstance(grid, dict):
        unknown = set(grid) - {"layers", "matrices", "keeps", "rule", "svd", "mode"}
        if unknown:
            raise ValueError(f"unknown grid option(s) {sorted(unknown)}; valid: layers, matrices, keeps, rule, svd, mode")
        return Grid(**grid)
    raise TypeError(f"grid must be a Grid, a dict of Grid options, True (the default grid) or None, got {grid!r}")


def _n_layers_hint(loader, steps) -> int | None:
    """The number of layers, when it is known without loading a model (a Pythia id, or the
    config.json of a checkpoint directory); None otherwise."""
    from mechtrunc.models import hf

    try:
        if isinstance(loader, CheckpointDirectory):
            cfg = json.loads((loader.dir(steps[0]) / "config.json").read_text())
            n = cfg.get("num_hidden_layers", cfg.get("n_layer"))
            return int(n) if n is not None else None
        if isinstance(loader, HubCheckpoints) and hf.is_pythia(loader.name):
            return hf.pythia_size(loader.name).n_layers
    except (OSError, ValueError, KeyError):
        return None
    return None


def _check_layers(n_layers: int | None, iv, grid) -> None:
    if n_layers is None:
        return
    layers = list(grid.layers or ()) if grid is not None else []
    items = iv.items if isinstance(iv, Compose) else ((iv,) if iv is not None else ())
    layers += [getattr(i, "layer") for i in items if getattr(i, "layer", None) is not None]
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer} is out of range: valid layers are 0..{n_layers - 1}")


def best_by_step(df: pd.DataFrame, metric: str = "logit_diff_the", higher_is_better: bool = True) -> pd.DataFrame:
    """From a grid checkpoint table (``checkpoint_study(..., grid=...)``): per step, the full
    model (``variant="full"``) and the best configuration by ``metric`` (``variant="best"``,
    with its ``layer, matrix, keep, rank``), in step order; plots with :func:`checkpoint_plot`."""
    if "baseline" not in df.columns or "step" not in df.columns:
        raise ValueError("best_by_step needs a grid checkpoint table (columns step and baseline)")
    check_metric(df, metric)
    rows = []
    for step, sub in df.groupby("step", sort=True):
        base = sub[sub["baseline"].astype(bool)]
        cand = sub[~sub["baseline"].astype(bool) & sub[metric].notna()]
        if len(base):
            rows.append({**base.iloc[0].to_dict(), "variant": "full"})
        if len(cand):
            idx = cand[metric].idxmax() if higher_is_better else cand[metric].idxmin()
            rows.append({**cand.loc[idx].to_dict(), "variant": "best"})
    out = pd.DataFrame(rows)
    front = ["step", "variant", "intervention", "layer", "matrix", "keep", "rank"]
    return out[front + [c for c in out.columns if c not in front]].reset_index(drop=True)


def step_intervals(items: pd.DataFrame, metric: str = "p_answer", n_boot: int = 1000, level: float = 0.95,
                   seed: int = 0, out: str | os.PathLike | None = None) -> pd.DataFrame:
    """Per (step, configuration) of a checkpoint study's per-item side table
    (:func:`read_checkpoint_items`): the mean of ``metric`` with its percentile bootstrap
    interval (``low, high``) and its change against the same step's full model with the paired
    interval (``change, ci_low, ci_high``: the same resampled prompts for both).  Whole
    sequences are resampled (all items of a sequence together), ``n_boot`` resamples, the same
    draws at every step (seeded).  Columns: ``step, config`` (and ``variant`` / ``intervention``
    when the table has them), ``value, low, high, change, ci_low, ci_high, n_items, n_boot,
    level``.  ``out``: the study's directory, where the table is also written (``intervals.csv``,
    :mod:`~mechtrunc.studies.checkpoint_files`)."""
    import numpy as np
    import torch

    from mechtrunc.core.metrics import bootstrap_intervals

    if metric not in items.columns:
        raise ValueError(f"unknown metric {metric!r}; columns: {', '.join(map(str, items.columns))}")
    rows = []
    for step, sub in items.groupby("step", sort=True):
        wide = sub.pivot(index="config", columns="item", values=metric).sort_index()
        desc = sub.drop_duplicates("config").set_index("config").sort_index()
        base = desc.index[desc["baseline"].astype(bool)]
        if len(base) != 1:
            raise ValueError(f"step {step}: the item table must hold one full-model (baseline) configuration")
        seq = torch.tensor(sub[sub["config"] == wide.index[0]].sort_values("item")["sequence"].to_numpy()
                           .astype(np.int64))
        vals = torch.tensor(wide.to_numpy(dtype=np.float64))
        diff = vals - vals[list(wide.index).index(base[0])][None]
        lo, hi = bootstrap_intervals(vals, n_boot=n_boot, level=level, seed=seed, clusters=seq)
        dlo, dhi = bootstrap_intervals(diff, n_boot=n_boot, level=level, seed=seed, clusters=seq)
        for i, cid in enumerate(wide.index):
            d = desc.loc[cid]
            rows.append({"step": int(step), "config": int(cid),
                         **{c: d[c] for c in ("variant", "intervention") if c in desc.columns},
                         "value": float(vals[i].mean()), "low": float(lo[i]), "high": float(hi[i]),
                         "change": float(diff[i].mean()), "ci_low": float(dlo[i]), "ci_high": float(dhi[i]),
                         "n_items": int(vals.shape[1]), "n_boot": int(n_boot), "level": float(level)})
    table = pd.DataFrame(rows)
    CheckpointStudyDirectory(out).write_intervals(table)
    return table


def heldout_by_step(items: pd.DataFrame, metric: str = "p_answer", select: float = 0.5, seed: int = 0,
                    higher_is_better: bool | None = None, n_boot: int = 1000, level: float = 0.95,
                    out: str | os.PathLike | None = None) -> pd.DataFrame:
    """:func:`best_by_step`'s held-out sibling, from a grid checkpoint study's per-item side
    table (``checkpoint_study(..., return_items=True)`` or :func:`read_checkpoint_items`):
    at each step the configuration with the best mean ``metric`` on the *select* part of the
    prompts (one seeded split of the sequences, ``select`` of them, the same at every step),
    reported on both parts with the paired bootstrap interval of its change against the full
    model (:func:`mechtrunc.analysis.selection.heldout_choice`; ``eval`` is the held-out estimate,
    ``select`` is in-sample and biased upward).  No model is run.  One row per (step, part), in
    step order, with :func:`~mechtrunc.analysis.selection.heldout_choice`'s columns (``layer, matrix,
    keep, rank, baseline`` of the choice, ``full, truncated, change, ci_low, ci_high, n_items``...).
    ``out``: the study's directory, where the table is also written (``heldout_by_step.csv``,
    :mod:`~mechtrunc.studies.checkpoint_files`)."""
    import numpy as np

    from mechtrunc.analysis.selection import heldout_choice

    if not {"baseline", "step", "layer"} <= set(items.columns):
        raise ValueError("heldout_by_step needs a grid checkpoint study's item table (columns step, baseline, layer)")
    if metric not in items.columns:
        raise ValueError(f"unknown metric {metric!r}; columns: {', '.join(map(str, items.columns))}")
    frames = []
    select_sequences = None
    for step, sub in items.groupby("step", sort=True):
        if select_sequences is None:  # one split for every step: the same prompts choose throughout
            seqs = np.unique(sub["sequence"].to_numpy())
            if len(seqs) < 2:
                raise ValueError(f"held-out selection needs at least 2 prompts (sequences), step {step} has {len(seqs)}")
            n_sel = min(len(seqs) - 1, max(1, int(round(select * len(seqs)))))
            select_sequences = np.sort(np.random.default_rng(seed).permutation(seqs)[:n_sel])
        h = heldout_choice(sub.drop(columns="step"), metric, select_sequences, seed=seed,
                           higher_is_better=higher_is_better, n_boot=n_boot, level=level)
        frames.append(h.assign(step=int(step)))
    table = pd.concat(frames, ignore_index=True)
    front = ["step", "part", "baseline", "layer", "matrix", "keep", "rank", "metric", "full", "truncated", "change",
             "ci_low", "ci_high"]
    table = table[[c for c in front if c in table.columns] + [c for c in table.columns if c not in front]]
    table.attrs.update({"metric": metric, "select": float(select), "seed": int(seed), "n_boot": int(n_boot),
                        "level": float(level), "select_sequences": [int(v) for v in select_sequences]})
    CheckpointStudyDirectory(out).write_heldout_by_step(table)
    return table


def gpus_for(load_kwargs: dict) -> float:
    """GPUs one unit needs from its load options (``n_devices``, a ``device_map`` or a CUDA device)."""
    device = str(load_kwargs.get("device") or "cpu")
    n = load_kwargs.get("n_devices")
    if n is not None:
        return float(n)
    if load_kwargs.get("device_map") is not None or device.startswith("cuda"):
        return 1.0
    return 0.0


@dataclass(frozen=True)
class CheckpointRequest:
    """The inputs of :func:`checkpoint_study`, checked once (as :class:`Grid` checks a grid's):
    the model source, the steps, the prompts and one truncation or a grid.  Everything a study
    can tell before loading a model fails here, naming the bad value: ``truncation`` with
    ``grid``, an empty or negative step, a step that is not a Pythia checkpoint (Pythia ids), a
    missing checkpoint directory or step, a bad dtype, load options with a callable, an unknown
    task, a ``batch_size`` or ``n_prompts`` below 1.

    Derived (not arguments): ``intervention`` and ``grid`` (the truncation or grid as objects),
    ``steps`` as a tuple of ints in order without duplicates, ``loader`` (``step -> model``),
    ``source`` and ``prompt_desc`` (what ``study.json`` records), ``prompt_set`` (the prompts of
    each checkpoint)."""

    load: Callable[[int], object] | str | os.PathLike
    steps: Iterable[int]
    prompts: Callable[[object], PromptSet] | PromptSet | str
    truncation: Intervention | dict | None = None
    grid: Grid | dict | bool | None = None
    batch_size: int = 32
    n_prompts: int = 200
    prompt_seed: int = 0
    load_kwargs: dict = field(default_factory=dict)
    intervention: Intervention | None = field(init=False, default=None)
    loader: Callable[[int], object] = field(init=False, default=None)
    source: str = field(init=False, default="")
    prompt_desc: str = field(init=False, default="")
    prompt_set: _Prompts = field(init=False, default=None)

    def __post_init__(self):
        from mechtrunc.models import hf

        def put(name, value):
            object.__setattr__(self, name, value)

        put("intervention", _as_intervention(self.truncation))
        put("grid", _as_grid(self.grid))
        if self.grid is not None and self.intervention is not None:
            raise ValueError("give truncation= (one configuration) or grid= (a whole grid), not both")
        steps = list(dict.fromkeys(as_int_list(self.steps, "step")))
        if not steps:
            raise ValueError("steps is empty: give at least one training step")
        for s in steps:
            if s < 0:
                raise ValueError(f"step must be >= 0, got {s}")
        n_prompts, prompt_seed = as_int(self.n_prompts, "n_prompts"), as_int(self.prompt_seed, "prompt_seed")
        if n_prompts < 1:
            raise ValueError(f"n_prompts must be >= 1, got {n_prompts}")
        batch_size = as_int(self.batch_size, "batch_size")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        put("n_prompts", n_prompts)
        put("prompt_seed", prompt_seed)
        put("batch_size", batch_size)

        load, load_kwargs = self.load, dict(self.load_kwargs)
        if isinstance(load, (str, os.PathLike)):
            name = str(load)
            hf.check_dtype(load_kwargs.get("dtype"))  # a bad dtype fails before any work
            if CheckpointDirectory.looks_like(name):
                loader = CheckpointDirectory(name, **load_kwargs)
                loader.check(steps)
                source = loader.template
            elif hf.looks_like_path(name):
                raise ValueError(
                    f"no such checkpoint directory: {name!r} (give a directory with step{{N}}/ subdirectories, "
                    "a path template with {step}, or a hub id)"
                )
            else:
                if hf.is_pythia(name):
                    steps = [hf.check_step(s) for s in steps]
                loader = HubCheckpoints(name, **load_kwargs)
                source = name
        elif callable(load):
            if load_kwargs:
                raise TypeError(f"load options {sorted(load_kwargs)} only apply when a model name is given")
            loader = load
            source = "callable"
        else:
            raise TypeError("load_fn_or_name must be a model name, a checkpoint directory or a callable step -> model")
        put("steps", tuple(steps))
        put("loader", loader)
        put("source", source)

        prompts = self.prompts
        if isinstance(prompts, PromptSet):
            prompt_desc = prompts_fingerprint(prompts)
        elif isinstance(prompts, (str, os.PathLike)):
            task = str(prompts)
            if task not in task_names("prompts") and not Path(task).is_file():
                raise ValueError(f"unknown task {task!r}: give {task_words('prompts')} or the path of a CSV/JSONL prompt "
                                 "file")
            seeded = task in task_names("prompts") and task_spec(task).seeded
            prompt_desc = task + (f" n={n_prompts} seed={prompt_seed}" if seeded else "")
        elif callable(prompts):
            prompt_desc = "callable"
        else:
            raise TypeError("prompts_fn must be a callable tokenizer -> PromptSet, a PromptSet or a task name")
        put("prompt_desc", prompt_desc)
        put("prompt_set", _Prompts(prompts, n_prompts, prompt_seed))


def checkpoint_study(
    load_fn_or_name: Callable[[int], object] | str | os.PathLike,
    steps: Iterable[int],
    prompts_fn: Callable[[object], PromptSet] | PromptSet | str,
    truncation: Intervention | dict | None = None,
    batch_size: int = 32,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    *,
    grid: Grid | dict | bool | None = None,
    n_prompts: int = 200,
    prompt_seed: int = 0,
    executor=None,
    return_items: bool = False,
    **load_kwargs,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluate every training step: the full model and one truncation, or a whole grid.

    Args:
        load_fn_or_name: ``step -> model`` (a TransformerBridge; must be picklable for Ray and
            SLURM, e.g. a module-level function), a hub id (revision ``step{N}``, through
            :func:`mechtrunc.models.hf.load_model`; steps are checked up front for Pythia ids), or
            a local directory of checkpoints: ``DIR`` holding ``step{N}/`` subdirectories, or a
            path template with ``{step}``, each a ``save_pretrained`` model (missing steps raise
            ValueError before anything runs).  ``load_kwargs`` (``device``, ``dtype``,
            ``n_devices``...) go to ``load_model``.
        steps: training steps (any integer types; duplicates dropped; the table is in this order).
        prompts_fn: ``tokenizer -> PromptSet``, a fixed PromptSet, or a task for
            :func:`mechtrunc.tasks.prompts_for_task` (``"ioi"``, ``"factual"``, a CSV/JSONL
            path) built with ``n_prompts`` and ``prompt_seed``.
        truncation: an Intervention or a :func:`best_configuration` dict: rows ``full`` and
            ``truncated`` per step.  Not with ``grid``.
        grid: a :class:`Grid` (or dict of its options, or True for the default MLP grid): every
            (layer, matrix, keep) at every step, through :func:`evaluate_grid`.
        out: a directory.  Each finished step is written atomically to
            ``out/shards/step{N}.parquet``; a rerun skips finished steps without loading them; at
            the end ``out/checkpoints.csv`` and ``out/checkpoints.parquet`` hold the merged table
            and ``out/study.json`` the settings (a rerun with other settings raises ValueError).
            Needed by the Ray and SLURM executors (results come back through the shards).
            The per-item values go to ``out/item_shards/step{N}.parquet`` (written before the
            step's shard: a step counts as finished only with both) and, at the end, to
            ``out/items.parquet``.
        executor: ``None``/``"local"`` (in process, prefetching the next checkpoint while the
            current one is evaluated), ``"ray"``, ``"slurm"`` or an executor object from
            :mod:`mechtrunc.studies.executors` (``RayExecutor(address=...)``,
            ``SlurmExecutor(partition=...)``...).

    Returns:
        With ``truncation`` (or neither): ``step, variant ("full"/"truncated"), intervention``,
        the metrics and ``seconds``, one row per step and variant.  With ``grid``: ``step`` then
        the columns of :func:`truncation_study` (a baseline row and one row per configuration,
        per step).  Rows in step order.  With ``return_items``: ``(table, items)``, the
        per-item side table (:func:`read_checkpoint_items`: every row's values on every prompt,
        from the same forward passes), which feeds paired bootstrap intervals of each step's
        change and :func:`heldout_by_step`.
    """
    from mechtrunc.studies.executors import resolve_executor

    req = CheckpointRequest(load_fn_or_name, steps, prompts_fn, truncation, grid, batch_size, n_prompts, prompt_seed,
                            load_kwargs)
    iv, the_grid, steps, batch_size = req.intervention, req.grid, list(req.steps), req.batch_size
    loader, source, prompt_desc, prompts = req.loader, req.source, req.prompt_desc, req.prompt_set
    _check_layers(_n_layers_hint(loader, steps), iv, the_grid)
    ex = resolve_executor(executor)  # bad executor names fail before study.json is written
    if out is None and getattr(ex, "needs_out", False):
        raise ValueError(f"the {ex.name} executor needs out= (results come back as shard files)")

    variants = (("full", None),) + ((("truncated", iv),) if iv is not None else ())
    directory = CheckpointStudyDirectory(out)
    directory.open(study_settings(iv, the_grid, source, prompt_desc, loader, steps))  # storage: settings checked
    units = [CheckpointUnit(step=s, loader=loader, prompts=prompts, variants=variants if the_grid is None else (),
                            grid=the_grid, batch_size=batch_size, out=None if out is None else str(out),
                            gpus=gpus_for(load_kwargs))
             for s in steps]
    todo = [u for u in units if not u.done()]
    results = dict(zip((u.step for u in todo), ex.map(todo, progress=progress))) if todo else {}

    parts, item_parts = [], []
    for s in steps:
        # with out=, the tables are the merge of the shards (the same on a first run and a rerun)
        if directory.out is not None:
            df, items = directory.read_step(s)
        else:
            df, items = results.get(s) or (None, None)
        if df is None or items is None:
            raise RuntimeError(f"step {s} produced no result (its shard is missing); rerun to compute it")
        parts.append(df)
        item_parts.append(items)
    table = pd.concat(parts, ignore_index=True)
    items = pd.concat(item_parts, ignore_index=True)
    if the_grid is None:
        cols = [*CHECKPOINT_COLUMNS, "intervention"]
        table = table[cols + [c for c in table.columns if c not in cols and c != SECONDS] + [SECONDS]]
    table = table.reset_index(drop=True)
    directory.write_results(table, items)  # storage: the merged tables
    return (table, items) if return_items else table
