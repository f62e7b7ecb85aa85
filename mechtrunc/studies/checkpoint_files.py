"""The directory of a checkpoint study: every file's name, its writer and its reader.

This is the one module that knows the files of a checkpoint study
(:func:`~mechtrunc.studies.checkpoints.checkpoint_study`, ``mechtrunc pythia checkpoints``); the
study evaluates and hands its results to :class:`CheckpointStudyDirectory`, and the report reads
them back with :meth:`CheckpointStudyDirectory.read`.

- the settings, ``study.json``, and the per-item side table (``item_shards/step{N}.parquet`` per
  finished step, ``items.parquet`` at the end): the layout every study shares
  (:class:`~mechtrunc.studies.store.StudyDirectory`);
- ``shards/step{N}.parquet``: one finished step's rows; ``running/step{N}.json``: who is
  evaluating step N (removed when its shard is written);
- ``checkpoints.csv`` / ``checkpoints.parquet``: the merged table;
- ``checkpoints.png``, ``intervals.csv``, ``heldout_by_step.csv``: the figure, the per-step
  intervals and the held-out choice per step; ``slurm/``: the SLURM executor's folder.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path

import pandas as pd

from mechtrunc.core.results import upgrade_columns, upgrade_record
from mechtrunc.studies.store import (
    ShardStore, StudyDirectory, atomic_write_text, has_tables, read_rows, read_tables, write_tables,
)

__all__ = ["CheckpointStudyDirectory", "read_checkpoint_items", "study_settings"]

#: the merged table (``.csv`` and ``.parquet``)
TABLE = "checkpoints"
#: one Parquet shard of rows per finished step
SHARDS = "shards"
#: ``step{N}.json`` markers of the steps being evaluated
RUNNING = "running"
#: the metrics against the step
FIGURE = "checkpoints.png"
#: per step, the held-out choice of a grid study (:func:`~mechtrunc.studies.checkpoints.heldout_by_step`)
HELDOUT_BY_STEP_FILE = "heldout_by_step.csv"
#: per step and variant, the intervals of a study without a grid (:func:`~mechtrunc.studies.checkpoints.step_intervals`)
INTERVALS_FILE = "intervals.csv"
#: the SLURM executor's job scripts, pickles and logs
SLURM = "slurm"


def study_settings(truncation, grid, source: str, prompts: str, loader, steps) -> dict:
    """The content of a checkpoint study's ``study.json``: what its rows depend on (the
    truncation's label, the grid's settings, the checkpoints' source and the prompts'
    description; compared on resume) and an ``info`` entry (the loader and the steps; not
    compared: callables are described, and a rerun from another script may name them differently)."""
    return {"kind": "checkpoints", "truncation": truncation.label if truncation is not None else None,
            "grid": grid.to_dict() if grid is not None else None, "source": source, "prompts": prompts,
            "info": {"source": getattr(loader, "__qualname__", repr(loader)), "steps": steps}}


class CheckpointStudyDirectory(StudyDirectory):
    """The files of one checkpoint study directory (``out`` None: a study kept in memory; every
    writer then does nothing).  Writers: :meth:`open`, :meth:`mark_running`, :meth:`write_step`,
    :meth:`write_results`, :meth:`write_heldout_by_step`, :meth:`write_intervals`; readers:
    :meth:`step_done`, :meth:`read_step`, :meth:`read_items`, :meth:`read`."""

    @property
    def shards(self) -> ShardStore:
        return ShardStore(self._path(SHARDS))

    @property
    def item_shards(self) -> ShardStore:
        return ShardStore(self.item_shards_dir)

    @property
    def figure_path(self) -> Path | None:
        return self._path(FIGURE)

    @property
    def slurm_dir(self) -> Path | None:
        return self._path(SLURM)

    @property
    def heldout_by_step_path(self) -> Path | None:
        return self._path(HELDOUT_BY_STEP_FILE)

    @property
    def intervals_path(self) -> Path | None:
        return self._path(INTERVALS_FILE)

    def has_table(self) -> bool:
        return self.out is not None and has_tables(self.out, TABLE)

    @staticmethod
    def step_name(step: int) -> str:
        return f"step{int(step)}"

    # -- writers ---------------------------------------------------------------------------
    def open(self, meta: dict) -> None:
        """Check ``meta`` against the saved settings (write them on a first run) and remove the
        temporaries a killed writer left among the shards."""
        if self.out is None:
            return
        self.check_settings(meta)
        self.shards.clean_temporaries()

    def mark_running(self, step: int) -> Path | None:
        """``running/step{N}.json`` (pid, host, start time) while this process holds the step:
        shows who is on which checkpoint; removed by :meth:`write_step`."""
        if self.out is None:
            return None
        marker = self._path(RUNNING) / f"{self.step_name(step)}.json"
        if not marker.is_file() or json.loads(marker.read_text() or "{}").get("pid") != os.getpid():
            marker.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(marker, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                  "started": time.time()}))
        return marker

    def write_step(self, step: int, table: pd.DataFrame, items: pd.DataFrame) -> None:
        """One finished step, each file atomically: its items first (a step without them is not
        finished), then its rows; its running marker removed."""
        if self.out is None:
            return
        name = self.step_name(step)
        self.item_shards.write(name, items)
        self.shards.write(name, table)
        (self._path(RUNNING) / f"{name}.json").unlink(missing_ok=True)

    def write_results(self, table: pd.DataFrame, items: pd.DataFrame) -> None:
        """The finished study: ``checkpoints.csv`` and ``.parquet``, ``items.parquet``; the empty
        ``running/`` folder removed."""
        if self.out is None:
            return
        write_tables(table, self.out, TABLE)
        self.write_items(items)
        running = self._path(RUNNING)
        if running.is_dir() and not any(running.iterdir()):
            running.rmdir()

    def write_heldout_by_step(self, table: pd.DataFrame) -> Path | None:
        if self.out is None:
            return None
        table.to_csv(self.heldout_by_step_path, index=False)
        return self.heldout_by_step_path

    def write_intervals(self, table: pd.DataFrame) -> Path | None:
        if self.out is None:
            return None
        table.to_csv(self.intervals_path, index=False)
        return self.intervals_path

    # -- readers ---------------------------------------------------------------------------
    def step_done(self, step: int) -> bool:
        """Whether ``step`` is finished: its row shard and its per-item shard (a directory written
        before the side table existed, or a crash between the two writes, recomputes the step)."""
        name = self.step_name(step)
        return self.out is not None and self.shards.done(name) and self.item_shards.done(name)

    def read_step(self, step: int) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
        """A finished step's ``(rows, items)`` (None for a missing or unreadable shard)."""
        name = self.step_name(step)
        return self.shards.read(name), self.item_shards.read(name)

    def read_items(self) -> pd.DataFrame:
        """The per-item side table: ``items.parquet`` when the study finished, else the merge of
        the finished steps' item shards (see :func:`read_checkpoint_items`)."""
        items = super().read_items()
        if items is not None:
            return items
        store = self.item_shards
        names = sorted(p.stem for p in store.dir.glob("step*.parquet")) if store.dir.is_dir() else []
        frames = [f for f in (store.read(n) for n in names) if f is not None]
        if not frames:
            raise ValueError(f"{str(self.out)!r} holds no per-item values (no {self.items_path.name}, no "
                             f"{self.item_shards_dir.name}/); rerun the checkpoint study with the same output "
                             "directory to compute them")
        return pd.concat(frames, ignore_index=True).sort_values(["step", "config", "item"], kind="stable",
                                                                ignore_index=True)

    def _finished_steps(self) -> pd.DataFrame | None:
        """The rows of an unfinished study: its resume log when it has one, else every row shard
        (any ``*.parquet`` below the directory other than the merged table and per-item shards)."""
        rows = read_rows(self.rows_path)[0]
        if rows:
            return pd.DataFrame([upgrade_record(r) for r in rows])
        frames = []
        for p in sorted(self.out.rglob("*.parquet")):
            if p.parent == self.out and p.name == f"{TABLE}.parquet":
                continue
            try:
                f = pd.read_parquet(p)
            except Exception:  # noqa: BLE001 - a shard cut by the interruption
                continue
            if {"step", "variant"} <= set(f.columns) and "item" not in f.columns:  # not a per-item shard
                frames.append(f)
        return pd.concat(frames, ignore_index=True) if frames else None

    def read(self) -> dict:
        """The study as it is on disk: ``table`` (the merged table, or the finished steps of an
        interrupted study, in step order), ``incomplete`` (why the table is partial, else None)
        and ``items`` (the per-item values of those steps, or None).  ValueError when no step has
        finished, or a table cannot be read."""
        d = self.out
        table = read_tables(d, TABLE)
        incomplete = None
        if table is None:
            table = self._finished_steps()
            if table is None or table.empty:
                raise ValueError(
                    f"{str(d)!r} holds a checkpoint study that has not finished a single checkpoint yet (no "
                    f"{TABLE}.csv, no finished rows); rerun the study with the same output directory to resume it")
            table = table.drop_duplicates(subset=["step", "variant"], keep="last")
            incomplete = (f"the study was interrupted: {table['step'].nunique()} finished checkpoints read from its "
                          f"partial results, no final {TABLE}.csv; rerun the study with the same output directory")
        else:
            table = upgrade_columns(table)
        missing = {"step", "variant"} - set(table.columns)
        if missing:
            raise ValueError(f"{str(d)!r}: the checkpoint table lacks column(s) {sorted(missing)}")
        table["step"] = table["step"].astype("int64")
        items = None
        if self.items_path.is_file() or self.item_shards_dir.is_dir():  # finished, or the finished steps so far
            try:
                items = self.read_items()
                items = items[items["step"].isin(set(table["step"]))]
            except Exception as e:  # noqa: BLE001 - the report then shows no intervals
                warnings.warn(f"the per-item values could not be read ({e}); the report shows no intervals")
                items = None
        return {"table": table.sort_values(["step", "variant"], kind="stable").reset_index(drop=True),
                "incomplete": incomplete, "items": items}


def read_checkpoint_items(out: str | os.PathLike) -> pd.DataFrame:
    """The per-item side table of a checkpoint study's directory: ``out/items.parquet`` when
    the study finished, else the merge of the finished steps' ``out/item_shards/``.  One row per
    (step, configuration, item): ``step``, the configuration's descriptors (``config`` = its
    row within the step; with ``grid=`` the columns of
    :func:`mechtrunc.studies.read_items`, else ``variant``), ``item, sequence`` and every
    per-item metric (:func:`mechtrunc.core.metrics.item_metrics`)."""
    return CheckpointStudyDirectory(out).read_items()
