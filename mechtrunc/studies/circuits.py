"""Circuits across training: at every checkpoint, the node scores
(:func:`mechtrunc.analysis.circuits.attribution_scan`), the top edge scores
(:func:`mechtrunc.analysis.circuits.edge_attribution`) and the ledger of the answer-vs-generic margin
(each head's, attention bias', MLP's and the embedding's direct contribution to
``logit(answer) - logit(generic)`` per prompt: :func:`mechtrunc.analysis.attribution.attribute_items`),
one resumable unit per checkpoint, run by the executors of checkpoint studies (local, Ray,
SLURM; :mod:`mechtrunc.studies.executors`).

A unit (:class:`CircuitUnit`) loads one checkpoint and writes three Parquet shards atomically:
``OUT/edge_shards/step{N}.parquet`` and ``OUT/ledger_shards/step{N}.parquet`` first, then
``OUT/shards/step{N}.parquet`` (the nodes), which marks the step finished; a rerun skips the
finished steps without loading them (:attr:`CircuitUnit.done`).  At the end
``OUT/nodes.{csv,parquet}``, ``OUT/edges.{csv,parquet}`` and ``OUT/ledger.parquet`` hold the
merged tables in step order and ``OUT/study.json`` the settings (``kind: circuits``; a rerun
with other settings raises ValueError).  ``mechtrunc report OUT`` draws them
(:mod:`mechtrunc.report.circuits`).

:func:`evidence_by_step` and :func:`overtaking_step` read the ledger: attention's evidence for
the answer (the heads' and attention biases' summed contribution) against the MLPs' generic push
(minus their summed contribution), and the first step from which the evidence stays above the
push, with a percentile interval from resampling the prompts (the same prompts at every step;
:func:`mechtrunc.core.metrics.bootstrap_means`).  Toy checkpoints are kept by training with
:class:`mechtrunc.models.toy_training.KeepCheckpoints` and loaded by :class:`ToyCheckpoints`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import numpy as np
import pandas as pd

from mechtrunc._choices import ATTRIBUTION_METHODS, CIRCUIT_TASKS, DEFAULT_IG_STEPS, PATCH_LEVEL
from mechtrunc._scalars import as_int, as_int_list
from mechtrunc.core.prompts import PromptSet
from mechtrunc.core.results import PATCHING_COLUMNS
from mechtrunc.studies.checkpoint_files import SHARDS
from mechtrunc.studies.checkpoints import CheckpointDirectory, evaluate_loaded, gpus_for
from mechtrunc.studies.store import (
    ShardStore, atomic_write_parquet, check_meta, prompts_fingerprint, write_tables,
)

__all__ = ["circuit_study", "circuit_pairs", "CIRCUIT_TASKS", "CircuitUnit", "CircuitTables", "ToyCheckpoints", "read_circuit_study",
           "evidence_by_step", "overtaking_step", "CIRCUIT_NODE_COLUMNS", "CIRCUIT_EDGE_COLUMNS",
           "CIRCUIT_LEDGER_COLUMNS", "CIRCUIT_SITES"]

#: node sites scored at every checkpoint by default: every head and every MLP
CIRCUIT_SITES = ("z", "mlp_out")
#: a node shard: the step, then :data:`mechtrunc.core.results.PATCHING_COLUMNS`
CIRCUIT_NODE_COLUMNS = ("step", *PATCHING_COLUMNS)
#: an edge shard: the step, the edge's rank at that step (1: largest estimated change), then the
#: columns of :func:`mechtrunc.analysis.circuits.edge_attribution`
CIRCUIT_EDGE_COLUMNS = ("step", "rank", "direction", "sender", "sender_layer", "sender_head", "receiver",
                        "receiver_layer", "receiver_head", "position", "metric", "value", "clean", "corrupted",
                        "effect", "effect_low", "effect_high")
#: a ledger shard: one row per (step, component, item) (:func:`mechtrunc.analysis.attribution.attribute_items`)
CIRCUIT_LEDGER_COLUMNS = ("step", "component", "kind", "layer", "head", "item", "sequence", "attribution")

_EDGE_DIR, _LEDGER_DIR = "edge_shards", "ledger_shards"
#: ledger kinds that make up attention's evidence / the MLPs' push
ATTENTION_KINDS, MLP_KINDS = ("head", "attn_bias"), ("mlp",)


def _store(out, sub: str | None = None) -> ShardStore:
    """The shards of ``sub`` (None: the node shards, ``shards/``)."""
    return ShardStore(Path(out) / (sub or SHARDS))


class ToyCheckpoints(CheckpointDirectory):
    """``step -> toy model`` for the checkpoints :class:`mechtrunc.models.toy_training.KeepCheckpoints`
    writes (``RUN/checkpoints/step{N}/``, each a toy run directory); ``steps()`` and
    ``check()`` as :class:`~mechtrunc.studies.checkpoints.CheckpointDirectory`'s."""

    @staticmethod
    def looks_like(path) -> bool:
        """Whether ``path`` holds toy checkpoints (a ``step{N}/`` whose ``config.json`` has the toy's
        ``model`` and ``train`` entries)."""
        import json

        p = Path(str(path)).expanduser()
        for d in (p.glob("step*") if p.is_dir() else ()):
            try:
                meta = json.loads((d / "config.json").read_text())
            except (OSError, ValueError):
                continue
            return isinstance(meta, dict) and "train" in meta and "model" in meta
        return False

    def __call__(self, step: int):
        from mechtrunc.models.toy_training import load_run

        return load_run(self.dir(step), **self.load_kwargs)[0]

    def __repr__(self):
        return f"ToyCheckpoints({self.template!r})"


class CircuitTables(NamedTuple):
    """What :func:`circuit_study` returns: three tables in step order."""

    nodes: pd.DataFrame  # CIRCUIT_NODE_COLUMNS
    edges: pd.DataFrame  # CIRCUIT_EDGE_COLUMNS
    ledger: pd.DataFrame  # CIRCUIT_LEDGER_COLUMNS


@dataclass
class CircuitUnit:
    """One checkpoint's node scores, top edges and margin ledger: picklable, so it runs in this
    process, a Ray worker or a SLURM job alike (the executors' unit interface: ``load()``,
    ``evaluate(model)``, ``step``, ``name``, ``gpus``, ``out``; ``unit()`` skips a finished step)."""

    step: int
    loader: Callable[[int], object]
    clean: PromptSet
    corrupted: PromptSet
    options: dict = field(default_factory=dict)  # attribution options, see circuit_study
    out: str | None = None
    gpus: float = 0.0

    @property
    def name(self) -> str:
        return f"step{self.step}"

    def done(self) -> bool:
        """Finished: all three shards exist (the node shard is written last, after the edge and ledger
        shards; a step missing any of them is recomputed)."""
        return self.out is not None and all(_store(self.out, d).done(self.name) for d in (None, _EDGE_DIR, _LEDGER_DIR))

    def load(self):
        return self.loader(self.step)

    def evaluate(self, model) -> CircuitTables:
        from mechtrunc.analysis.attribution import attribute_items
        from mechtrunc.analysis.circuits import attribution_scan, edge_attribution, top_edges

        o = self.options
        common = dict(metric=o["metric"], direction=o["direction"], positions=[], method=o["method"],
                      steps=o["ig_steps"], batch_size=o["batch_size"], n_boot=o["n_boot"], level=o["level"],
                      seed=o["seed"])
        nodes = attribution_scan(model, self.clean, self.corrupted, sites=o["sites"], **common)
        nodes.insert(0, "step", self.step)
        edges = edge_attribution(model, self.clean, self.corrupted, **common)
        keep = top_edges(edges, len(edges) if o["n_edges"] is None else min(o["n_edges"], len(edges)))
        rank = {e: i + 1 for i, e in enumerate(keep)}
        edges = edges[edges["direction"] == edges["direction"].iloc[0]]
        edges = edges.assign(rank=[rank.get(e) for e in zip(edges["sender"], edges["receiver"])])
        edges = edges.dropna(subset=["rank"]).sort_values("rank", kind="stable")
        edges = edges.assign(step=self.step, rank=edges["rank"].astype("int64"))[list(CIRCUIT_EDGE_COLUMNS)]
        ledger = attribute_items(model, self.clean, o["generic"], batch_size=o["batch_size"])
        ledger.insert(0, "step", self.step)
        for df in (nodes, edges, ledger):
            df["step"] = df["step"].astype("int64")
        edges = edges.reset_index(drop=True)
        if self.out is not None:  # the nodes last: a step without its edges and ledger is not done
            _store(self.out, _EDGE_DIR).write(self.name, edges)
            _store(self.out, _LEDGER_DIR).write(self.name, ledger)
            _store(self.out).write(self.name, nodes)
        return CircuitTables(nodes, edges, ledger)

    def __call__(self) -> CircuitTables | None:
        if self.done():
            return None  # finished by an earlier run or an earlier attempt of this task
        return evaluate_loaded(self.load, self.evaluate)


def _loader(source, load_kwargs: dict, steps: list[int]):
    """``(loader, description)`` of a checkpoint source: a callable, a directory of toy
    checkpoints (:class:`ToyCheckpoints`) or of ``save_pretrained`` ones (``step{N}/``, a
    language-model run), or a hub id (revision ``step{N}``)."""
    from mechtrunc.models import hf
    from mechtrunc.studies.checkpoints import HubCheckpoints

    if callable(source) and not isinstance(source, (str, os.PathLike)):
        if load_kwargs:
            raise TypeError(f"load options {sorted(load_kwargs)} only apply when a checkpoint directory or name is given")
        return source, "callable"
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError("checkpoints must be a directory of checkpoints, a hub id or a callable step -> model")
    name = str(source)
    if ToyCheckpoints.looks_like(name):
        loader = ToyCheckpoints(name, **load_kwargs)
    elif CheckpointDirectory.looks_like(name):
        loader = CheckpointDirectory(name, **{"local_files_only": True, **load_kwargs})
    elif hf.looks_like_path(name):
        raise ValueError(f"no such checkpoint directory: {name!r} (give a directory with step{{N}}/ subdirectories: "
                         "a language-model run, a toy run's checkpoints/, or a hub id)")
    else:
        if hf.is_pythia(name):
            steps[:] = [hf.check_step(s) for s in steps]
        return HubCheckpoints(name, **load_kwargs), name
    loader.check(steps)
    return loader, loader.template


def circuit_pairs(checkpoints, task: str | None = None, n: int = 64, seed: int = 0) -> tuple[PromptSet, PromptSet]:
    """The clean and corrupted prompts of a circuit study over ``checkpoints`` (as
    :func:`circuit_study` takes them), the same at every step:

    - toy checkpoints (a toy run's ``checkpoints/``): task ``recall``,
      :func:`mechtrunc.tasks.corrupt.recall_pair` on the run's test-set seeds (``10000 + seed``);
    - a language-model run: its own held-out prompts (:func:`mechtrunc.models.lm.prompts.run_prompts`;
      default task: its first studied one, ``recall`` on a noisy-recall corpus), corrupted by
      :func:`~mechtrunc.tasks.corrupt.city_swap` (recall), ``ioi_abc`` (ioi) or ``factual_swap``;
    - a hub id: ``ioi`` (default) or ``factual`` prompts under its tokenizer."""
    from mechtrunc.tasks.corrupt import city_swap, factual_swap, ioi_abc

    if task is not None and task not in CIRCUIT_TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(CIRCUIT_TASKS)}")
    n, seed = as_int(n, "n"), as_int(seed, "seed")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    source = str(checkpoints)
    if ToyCheckpoints.looks_like(source):
        if task not in (None, "recall"):
            raise ValueError(f"task {task!r} does not fit toy checkpoints: the toy model is studied on task recall")
        from mechtrunc.tasks.corrupt import recall_pair
        from mechtrunc.models.toy_training import load_run

        first = ToyCheckpoints(source).steps()[0]
        return recall_pair(load_run(ToyCheckpoints(source).dir(first))[2], n=n, seed=10_000 + seed)
    from mechtrunc.models.lm.prompts import run_corpus, run_prompts
    from mechtrunc.models.lm_run import run_dir
    from mechtrunc.studies.lm import study_tasks

    run = run_dir(source)
    if run is not None:
        task = task or study_tasks(run_corpus(run))[0]
        if task == "recall":
            return city_swap(run_prompts(run, "recall", n=n, seed=seed))
        from mechtrunc.models.lm.tokenizer import run_tokenizer

        tok = run_tokenizer(run_corpus(run))
        prompts = run_prompts(run, task, n=n, seed=seed, tokenizer=tok)
    else:
        if task == "recall":
            raise ValueError("task recall needs toy checkpoints or a language-model run")
        from transformers import AutoTokenizer

        from mechtrunc.tasks.registry import prompts_for_task

        task = task or "ioi"
        tok = AutoTokenizer.from_pretrained(source)
        prompts = prompts_for_task(task, tok, n=n, seed=seed)
    return (ioi_abc if task == "ioi" else factual_swap)(prompts, tok, seed=seed)


def circuit_study(
    checkpoints, steps: Iterable[int], clean: PromptSet, corrupted: PromptSet, *, out: str | os.PathLike | None = None,
    metric: str | None = None, method: str = "atp", ig_steps: int = DEFAULT_IG_STEPS, direction: str = "denoising",
    sites: Iterable[str] = CIRCUIT_SITES, n_edges: int | None = 50, generic: str | None = None, batch_size: int = 32,
    n_boot: int = 200, level: float = PATCH_LEVEL, seed: int = 0, executor=None, progress: bool = True,
    **load_kwargs,
) -> CircuitTables:
    """Circuits at every training step: node and edge attribution and the margin ledger.

    Args:
        checkpoints: ``step -> model`` (picklable for Ray and SLURM), a directory of checkpoints
            (a language-model run's ``step{N}/``; a toy run's ``checkpoints/`` written by
            :class:`mechtrunc.models.toy_training.KeepCheckpoints`) or a hub id (revision ``step{N}``);
            ``load_kwargs`` go to the loader.  Missing steps raise ValueError before anything runs.
        steps: training steps (duplicates dropped; the tables are in this order).
        clean, corrupted: the prompt pairs (the same at every step), as
            :func:`mechtrunc.analysis.circuits.attribution_scan`'s.
        metric, method, direction: as :func:`~mechtrunc.analysis.circuits.attribution_scan`'s (``method``
            ``atp`` or ``ig-inputs``, for nodes and edges alike; ``direction`` denoising or
            noising); ``ig_steps``: EAP-IG's interpolation steps.
        sites: node sites (default every head's ``z`` and every ``mlp_out``), position ``all``.
        n_edges: the top edges kept per step (by the size of their estimated change; None: all).
        generic: the competitor whose margin the ledger splits (default the prompts' first:
            ``the`` on a language model's recall prompts, ``noise`` on the toy's).
        out: a directory (needed by the Ray and SLURM executors): each finished step's shards,
            resumed on a rerun, and the merged tables (see the module docstring).
        n_boot, level, seed: the bootstrap of each score's effect interval.
        executor: as :func:`mechtrunc.studies.checkpoint_study`'s.

    Returns:
        :class:`CircuitTables` ``(nodes, edges, ledger)``.
    """
    from mechtrunc.studies.executors import resolve_executor

    steps = list(dict.fromkeys(as_int_list(steps, "step")))
    if not steps:
        raise ValueError("steps is empty: give at least one training step")
    for s in steps:
        if s < 0:
            raise ValueError(f"step must be >= 0, got {s}")
    if method not in ("atp", "ig-inputs"):
        raise ValueError(f"method must be atp or ig-inputs for a circuit study (nodes and edges alike), got {method!r}; "
                         f"valid methods of attribution_scan alone: {', '.join(ATTRIBUTION_METHODS)}")
    if direction not in ("denoising", "noising"):
        raise ValueError(f"direction must be denoising or noising (the edges take one), got {direction!r}")
    if n_edges is not None:
        n_edges = as_int(n_edges, "n_edges")
        if n_edges < 1:
            raise ValueError(f"n_edges must be >= 1 (or None for every edge), got {n_edges}")
    for name, ps in (("clean", clean), ("corrupted", corrupted)):
        if not isinstance(ps, PromptSet):
            raise TypeError(f"{name} must be a PromptSet, got {type(ps).__name__}")
    generic = clean.competitor_names[0] if generic is None else str(generic)
    if generic not in clean.competitor_names:
        raise ValueError(f"unknown generic competitor {generic!r}; the prompts' competitors: "
                         f"{', '.join(clean.competitor_names)}")
    sites = tuple(sites)
    loader, source = _loader(checkpoints, load_kwargs, steps)
    ex = resolve_executor(executor)
    if out is None and getattr(ex, "needs_out", False):
        raise ValueError(f"the {ex.name} executor needs out= (results come back as shard files)")
    options = {"metric": metric, "method": method, "ig_steps": as_int(ig_steps, "ig_steps"), "direction": direction,
               "sites": sites, "n_edges": n_edges, "generic": generic, "batch_size": as_int(batch_size, "batch_size"),
               "n_boot": n_boot, "level": level, "seed": as_int(seed, "seed")}
    if out is not None:
        meta = {"kind": "circuits", "source": source, "clean": prompts_fingerprint(clean),
                "corrupted": prompts_fingerprint(corrupted), **{k: list(v) if isinstance(v, tuple) else v
                                                                for k, v in options.items()},
                "info": {"steps": steps, "competitors": list(clean.competitor_names),
                         "n_items": len(clean), "n_sequences": clean.n_sequences}}
        check_meta(out, meta)
        for sub in (None, _EDGE_DIR, _LEDGER_DIR):
            _store(out, sub).clean_temporaries()
    units = [CircuitUnit(step=s, loader=loader, clean=clean, corrupted=corrupted, options=options,
                         out=None if out is None else str(out), gpus=gpus_for(load_kwargs)) for s in steps]
    todo = [u for u in units if not u.done()]
    results = dict(zip((u.step for u in todo), ex.map(todo, progress=progress))) if todo else {}
    parts: dict[str, list[pd.DataFrame]] = {"nodes": [], "edges": [], "ledger": []}
    for s in steps:
        if out is not None:  # the merge of the shards: the same on a first run and a rerun
            got = [_store(out, sub).read(f"step{s}") for sub in (None, _EDGE_DIR, _LEDGER_DIR)]
        else:
            got = list(results.get(s) or (None, None, None))
        if any(g is None for g in got):
            raise RuntimeError(f"step {s} produced no result (a shard is missing); rerun to compute it")
        for key, g in zip(parts, got):
            parts[key].append(g)
    tables = CircuitTables(*(pd.concat(v, ignore_index=True) for v in parts.values()))
    if out is not None:
        write_tables(tables.nodes, out, "nodes")
        write_tables(tables.edges, out, "edges")
        atomic_write_parquet(tables.ledger, Path(out) / "ledger.parquet")
    return tables


#: the merged tables a finished circuit study leaves in its directory
_FINAL_FILES = ("nodes.parquet", "edges.parquet", "ledger.parquet")


def circuit_study_finished(out: str | os.PathLike) -> bool:
    """Whether the circuit study in ``out`` finished (its merged tables are written)."""
    return all((Path(out) / f).is_file() for f in _FINAL_FILES)


def read_circuit_study(out: str | os.PathLike) -> CircuitTables:
    """The tables of a circuit study's directory: the merged files when it finished, else the
    merge of its finished steps' shards (a step counts with all three)."""
    out = Path(out)
    if circuit_study_finished(out):
        return CircuitTables(*(pd.read_parquet(out / f"{k}.parquet") for k in ("nodes", "edges", "ledger")))
    store = _store(out)
    names = sorted((p.stem for p in store.dir.glob("step*.parquet")), key=lambda n: int(n[4:])) \
        if store.dir.is_dir() else []
    parts = [[], [], []]
    for n in names:
        got = [_store(out, sub).read(n) for sub in (None, _EDGE_DIR, _LEDGER_DIR)]
        if all(g is not None for g in got):
            for lst, g in zip(parts, got):
                lst.append(g)
    if not parts[0]:
        raise ValueError(f"{str(out)!r} holds no finished step of a circuit study (no nodes.parquet, no shards/)")
    return CircuitTables(*(pd.concat(p, ignore_index=True) for p in parts))


# ----------------------------------------------------------------------------------------
# attention's evidence against the MLPs' generic push
# ----------------------------------------------------------------------------------------
def _evidence_items(ledger: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(steps, attention [step, item], push [step, item], sequence [item])`` of a ledger."""
    missing = set(CIRCUIT_LEDGER_COLUMNS) - set(ledger.columns)
    if missing:
        raise ValueError(f"not a circuit study's ledger: columns {sorted(missing)} are missing")
    if ledger.empty:
        raise ValueError("the ledger is empty")
    steps = np.sort(ledger["step"].unique())

    def wide(kinds, sign):
        sub = ledger[ledger["kind"].isin(kinds)]
        return sign * sub.pivot_table(index="step", columns="item", values="attribution", aggfunc="sum") \
            .reindex(index=steps).fillna(0.0)

    attn, push = wide(ATTENTION_KINDS, 1.0), wide(MLP_KINDS, -1.0)
    counts = ledger.groupby("step")["item"].nunique()
    if counts.nunique() != 1:
        raise ValueError(f"the ledger's steps hold different numbers of items ({dict(counts)}): the same prompts must be "
                         "scored at every step")
    items = attn.columns.union(push.columns)
    attn, push = attn.reindex(columns=items, fill_value=0.0), push.reindex(columns=items, fill_value=0.0)
    seq = ledger[ledger["step"] == steps[0]].drop_duplicates("item").set_index("item")["sequence"].reindex(items)
    return steps, attn.to_numpy(np.float64, copy=True), push.to_numpy(np.float64, copy=True), seq.to_numpy(np.int64, copy=True)


def evidence_by_step(ledger: pd.DataFrame) -> pd.DataFrame:
    """Per step of a circuit study's ledger: ``attention`` (mean over items of the heads' and
    attention biases' summed direct contribution to ``logit(answer) - logit(generic)``: their
    evidence for the answer), ``mlp_push`` (minus the MLPs' summed contribution: their push
    towards the generic token), ``margin`` (the model's mean margin, the ledger's ``total``) and
    ``ahead`` (attention > mlp_push)."""
    steps, attn, push, _ = _evidence_items(ledger)
    total = ledger[ledger["kind"] == "total"].groupby("step")["attribution"].mean().reindex(steps)
    out = pd.DataFrame({"step": steps.astype("int64"), "attention": attn.mean(1), "mlp_push": push.mean(1),
                        "margin": total.to_numpy()})
    out["ahead"] = out["attention"] > out["mlp_push"]
    return out


def overtaking_step(ledger: pd.DataFrame, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """The step from which attention's evidence for the answer stays above the MLPs' generic
    push (:func:`evidence_by_step`) at every later step, with a percentile interval over the
    prompts: ``n_boot`` resamples of the prompt sequences (all items of a sequence together, the
    same resampled prompts at every step, :func:`mechtrunc.core.metrics.bootstrap_means`), the step
    recomputed on each.  Returns ``step`` (None: not ahead at the last step), ``low``, ``high``
    (None where more than ``(1 - level) / 2`` of the resamples are never ahead for good),
    ``never`` (the fraction of resamples never ahead for good), ``n_items``, ``n_sequences``,
    ``n_boot``, ``level``."""
    import torch

    from mechtrunc.core.metrics import bootstrap_means
    from mechtrunc.studies.dynamics.measures import first_for_good

    steps, attn, push, seq = _evidence_items(ledger)
    point = first_for_good(steps, attn.mean(1) > push.mean(1), never=math.inf)
    diff = torch.from_numpy(attn - push)  # [step, item]: ahead where the mean is > 0
    means = bootstrap_means(diff, n_boot=n_boot, seed=seed, clusters=torch.from_numpy(seq)).numpy()  # [step, draw]
    draws = first_for_good(steps, (means > 0).T, never=math.inf)
    a = (1.0 - level) / 2
    lo, hi = np.quantile(draws, a, method="lower"), np.quantile(draws, 1 - a, method="higher")
    as_step = lambda v: None if math.isinf(v) else int(v)  # noqa: E731
    return {"step": as_step(point), "low": as_step(lo), "high": as_step(hi), "never": float(np.isinf(draws).mean()),
            "n_items": int(attn.shape[1]), "n_sequences": int(len(np.unique(seq))), "n_boot": int(n_boot),
            "level": float(level)}
