"""The directory of a truncation study: every file's name, its writer and its reader.

This is the one module that knows the files of a truncation study (:func:`~mechtrunc.studies.grid.truncation_study`,
:func:`~mechtrunc.studies.summary.summarise_study`, :func:`~mechtrunc.studies.grid.heldout_configuration`,
``mechtrunc pythia truncate``); the studies evaluate and hand their results to
:class:`TruncationDirectory`, and the report reads them back with :meth:`TruncationDirectory.read`.

- the settings, ``study.json``, the resume log ``rows.jsonl`` and the per-item side table
  (``item_shards/<configuration>.parquet`` while the study runs, ``items.parquet`` at the end):
  the layout every study shares (:class:`~mechtrunc.studies.store.StudyDirectory`);
- ``truncation.csv`` / ``truncation.parquet``: the table;
- ``svd_cache/``: the engine's cached decompositions;
- ``heatmap_<metric>.png``, ``best.json``, ``attribution_change.csv``,
  ``attribution_change_by_layer.csv``: the summary of :func:`~mechtrunc.studies.summary.summarise_study`;
- ``heldout.csv``: the held-out choice (``heldout_configuration(..., out=)``, ``pythia truncate --heldout``).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mechtrunc.core.results import keep_key, read_json_object, tidy_truncation, upgrade_columns, upgrade_record
from mechtrunc.studies.store import (
    RowStore, ShardStore, StudyDirectory, has_tables, model_fingerprint, prompts_fingerprint, read_rows, read_tables,
    write_tables,
)

__all__ = ["TruncationDirectory", "TruncationSummary", "study_settings", "TruncationRows", "ItemStore", "read_items",
           "row_key", "BEST_FILE", "ATTRIBUTION_FILE", "HELDOUT_FILE"]

#: the table (``.csv`` and ``.parquet``)
TABLE = "truncation"
#: the engine's cached decompositions
SVD_CACHE = "svd_cache"
#: the best configuration, its metrics and their intervals (:func:`~mechtrunc.studies.summarise_study`)
BEST_FILE = "best.json"
#: the best configuration's attribution change, per component and summed per layer and kind
ATTRIBUTION_FILE = "attribution_change.csv"
ATTRIBUTION_BY_LAYER_FILE = "attribution_change_by_layer.csv"
#: the held-out choice (:func:`~mechtrunc.studies.heldout_configuration`'s table)
HELDOUT_FILE = "heldout.csv"


def row_key(row) -> tuple:
    """A truncation row's key in the resume log and the item shards: ``("baseline",)`` or
    ``(layer, matrix, keep)``."""
    if bool(row.get("baseline")):
        return ("baseline",)
    return (int(row["layer"]), str(row["matrix"]), keep_key(row["keep"]))


def study_settings(model, prompts, grid, info: dict | None = None) -> dict:
    """The content of a truncation study's ``study.json``: what its rows depend on (the model's
    and the prompts' fingerprints, the number of items, the grid's rule, SVD method and mode;
    compared on resume) and an ``info`` entry (model name, revision and ``info``; not compared)."""
    cfg = getattr(model, "cfg", None)
    return {"kind": "truncation", "model": model_fingerprint(model), "prompts": prompts_fingerprint(prompts),
            "n_items": len(prompts), "rule": grid.rule, "svd": grid.svd, "mode": grid.mode,
            "info": {"model_name": str(getattr(cfg, "model_name", type(model).__name__)),
                     "revision": getattr(cfg, "revision", None), **(info or {})}}


# ----------------------------------------------------------------------------------------
# what a study returns and the report renders
# ----------------------------------------------------------------------------------------
@dataclass
class TruncationSummary:
    """What :func:`~mechtrunc.studies.summarise_study` returns: ``best`` (the content of
    ``best.json``: ``best``, ``intervention``, ``full``, ``truncated`` and, with per-item values,
    ``intervals``), the ``attribution`` change per component and ``attribution_by_layer``, and
    the ``paths`` written (``heatmap``, ``best``, ``attribution``, ``attribution_by_layer``)."""

    best: dict
    attribution: pd.DataFrame
    attribution_by_layer: pd.DataFrame
    paths: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------
# the per-item side table
# ----------------------------------------------------------------------------------------
class ItemStore:
    """The per-item values of a truncation study's rows, one shard per finished configuration
    (``out/item_shards/<key>.parquet``, written atomically by :class:`ShardStore` *before* the
    row is appended to the resume log), or in memory when ``out`` is None.

    A row counts as finished only when its items are stored too: a row without items (a crash
    between the two writes, or a directory written before the side table existed) is
    recomputed, and its shard replaced, so every (configuration, item) is stored exactly once.
    Each shard holds ``item, sequence`` and every per-item metric
    (:func:`mechtrunc.core.metrics.item_metrics`)."""

    def __init__(self, out=None, clean: bool = True):
        """``clean``: remove temporaries left by an interrupted writer (False: only read, e.g.
        a report on a study that may still be running)."""
        self.mem: dict[tuple, pd.DataFrame] = {}
        self.shards = None
        if out is not None:
            self.shards = ShardStore(StudyDirectory(out).item_shards_dir)
            if clean:
                self.shards.clean_temporaries()

    @staticmethod
    def name(key: tuple) -> str:
        if key == ("baseline",):
            return "baseline"
        layer, matrix, keep = key
        return f"L{int(layer)}_{matrix}_k{keep!r}"

    def has(self, key: tuple) -> bool:
        return key in self.mem or (self.shards is not None and self.shards.done(self.name(key)))

    def add(self, key: tuple, items: dict, sequence) -> None:
        import numpy as np

        frame = pd.DataFrame({"item": np.arange(len(sequence)), "sequence": np.asarray(sequence),
                              **{m: _to_numpy(v) for m, v in items.items()}})
        if self.shards is not None:
            self.shards.write(self.name(key), frame)
        else:
            self.mem[key] = frame

    def get(self, key: tuple) -> pd.DataFrame | None:
        if key in self.mem:
            return self.mem[key]
        return None if self.shards is None else self.shards.read(self.name(key))

    def table(self, df: pd.DataFrame) -> pd.DataFrame:
        """The side table of a study table ``df``: one row per (configuration, item), columns
        :data:`mechtrunc.analysis.selection.ITEM_COLUMNS` (``config`` is the row's index in ``df``, 0 the
        baseline; an identity configuration holds the baseline's values) then the metrics."""
        from mechtrunc.analysis.selection import ITEM_COLUMNS

        base = self.get(("baseline",))
        frames = []
        for cid, row in enumerate(df.to_dict("records")):
            key = row_key(row)
            frame = self.get(key)
            if frame is None and (row.get("identity") or row.get("baseline")):
                frame = base
            if frame is None:
                raise ValueError(f"no per-item values stored for {row.get('intervention') or key}")
            desc = {c: row.get(c) for c in ITEM_COLUMNS if c not in ("item", "sequence")}
            desc["config"] = cid
            if row.get("baseline"):
                desc["intervention"] = "full"
            frames.append(frame.assign(**{c: [v] * len(frame) for c, v in desc.items()}))
        out = pd.concat(frames, ignore_index=True)
        metrics = [c for c in out.columns if c not in ITEM_COLUMNS]
        out = out[[c for c in ITEM_COLUMNS] + metrics]
        for col in ("layer", "rank", "max_rank"):
            out[col] = pd.array([None if v is None or pd.isna(v) else int(v) for v in out[col]], dtype="Int64")
        out["keep"] = out["keep"].astype("float64")
        out["baseline"] = out["baseline"].fillna(False).astype(bool)
        out["identity"] = out["identity"].fillna(False).astype(bool)
        return out


def _to_numpy(v):
    return v.detach().double().cpu().numpy() if hasattr(v, "detach") else v


class TruncationRows:
    """The finished rows of a truncation grid and their per-item values, as the evaluation sees
    them: :meth:`done`, :meth:`get` and :meth:`add` (the items first, then the row: a row
    without its items is not finished).  Behind it: a :class:`RowStore` (the resume log, or
    memory) and an optional :class:`ItemStore`."""

    def __init__(self, rows: RowStore | None = None, items: ItemStore | None = None):
        self.rows = rows if rows is not None else RowStore(None, row_key)
        self.items = items

    @property
    def keeps_items(self) -> bool:
        return self.items is not None

    def get(self, key: tuple) -> dict | None:
        return self.rows.get(key)

    def done(self, key: tuple) -> bool:
        return self.rows.get(key) is not None and (self.items is None or self.items.has(key))

    def add(self, row: dict, per_item: dict | None = None, sequence=None) -> None:
        if self.items is not None and per_item is not None:
            self.items.add(row_key(row), per_item, sequence)
        self.rows.add(row)


# ----------------------------------------------------------------------------------------
# the directory
# ----------------------------------------------------------------------------------------
class TruncationDirectory(StudyDirectory):
    """The files of one truncation study directory (``out`` None: a study kept in memory; every
    writer then does nothing).  Writers: :meth:`open` (settings and resume), :meth:`write_results`,
    :meth:`write_summary`, :meth:`write_heldout`; readers: :meth:`read`, :meth:`read_items`,
    :meth:`read_best`."""

    @property
    def svd_cache(self) -> Path | None:
        return self._path(SVD_CACHE)

    @property
    def best_path(self) -> Path | None:
        return self._path(BEST_FILE)

    @property
    def heldout_path(self) -> Path | None:
        return self._path(HELDOUT_FILE)

    def heatmap_path(self, metric: str) -> Path | None:
        return self._path(f"heatmap_{metric}.png")

    def has_table(self) -> bool:
        return self.out is not None and has_tables(self.out, TABLE)

    # -- writers ---------------------------------------------------------------------------
    def open(self, meta: dict) -> TruncationRows:
        """The finished rows to resume from: checks ``meta`` against the saved settings (writes
        them on a first run), reads the resume log, removes temporaries left in the item shards."""
        self.check_settings(meta)
        return TruncationRows(RowStore(self.rows_path, row_key), ItemStore(self.out))

    def write_results(self, table: pd.DataFrame, items: pd.DataFrame) -> None:
        """The finished study: ``items.parquet``, then ``truncation.csv`` and ``truncation.parquet``."""
        if self.out is None:
            return
        self.write_items(items)
        write_tables(table, self.out, TABLE)

    def write_summary(self, best: dict, attribution: pd.DataFrame, attribution_by_layer: pd.DataFrame,
                      heatmap: Path) -> dict[str, Path]:
        """``best.json`` and the attribution tables (the heatmap was drawn at :meth:`heatmap_path`);
        returns the paths by name."""
        self.out.mkdir(parents=True, exist_ok=True)
        paths = {"heatmap": Path(heatmap), "best": self.best_path, "attribution": self._path(ATTRIBUTION_FILE),
                 "attribution_by_layer": self._path(ATTRIBUTION_BY_LAYER_FILE)}
        paths["best"].write_text(json.dumps(best, indent=2))
        attribution.to_csv(paths["attribution"], index=False)
        attribution_by_layer.to_csv(paths["attribution_by_layer"], index=False)
        return paths

    def write_heldout(self, table: pd.DataFrame) -> Path | None:
        """The held-out choice's table (``heldout.csv``)."""
        if self.out is None:
            return None
        self.out.mkdir(parents=True, exist_ok=True)
        table.to_csv(self.heldout_path, index=False)
        return self.heldout_path

    # -- readers ---------------------------------------------------------------------------
    def read_items(self) -> pd.DataFrame:
        """The per-item side table of the finished study (see :meth:`ItemStore.table`);
        FileNotFoundError when there is none."""
        items = super().read_items()
        if items is None:
            raise FileNotFoundError(f"{self.items_path}: no per-item side table (an unfinished study, or one written "
                                    "before the side table existed); rerun the study with the same output directory")
        return items

    def read_best(self) -> dict:
        """The content of ``best.json``; ValueError when the study has none."""
        if not self.best_path.is_file():
            raise ValueError(f"{str(self.best_path)!r} does not exist: run `mechtrunc pythia truncate --out {self.out}` "
                             "first")
        return read_json_object(self.best_path)

    def read(self) -> dict:
        """The study as it is on disk: ``table`` (the final table, or the finished rows of an
        interrupted study), ``incomplete`` (why the table is partial, else None) and, None when
        not written: ``best`` (the content of ``best.json``), ``attribution`` (the attribution
        change), ``items`` (the per-item side table) and ``heldout`` (the held-out choice).
        ValueError when there is no finished row at all, or a file cannot be read."""
        d = self.out
        table = read_tables(d, TABLE)
        incomplete = None
        if table is None:
            rows = [upgrade_record(r) for r in read_rows(self.rows_path)[0]]
            if not rows:
                raise ValueError(
                    f"{str(d)!r} holds a truncation study that has not finished a single row yet (no "
                    f"{TABLE}.csv, no rows in {self.rows_path.name}); rerun the study with the same output directory "
                    "to resume it")
            table = _finished_rows(rows)
            incomplete = (f"the study was interrupted: {len(table)} finished rows read from {self.rows_path.name}, "
                          f"no final {TABLE}.csv; rerun the study with the same output directory to finish it")
        else:
            table = upgrade_columns(table)
        if "baseline" not in table.columns:
            raise ValueError(f"{str(d)!r}: the truncation table has no 'baseline' column; is it a mechtrunc study?")
        table["baseline"] = table["baseline"].astype(bool)
        best = None
        if self.best_path.is_file():
            best = read_json_object(self.best_path)
        attribution = _read_optional_csv(self._path(ATTRIBUTION_FILE),
                                         "it will be recomputed if possible")
        items = None
        if incomplete is None and self.items_path.is_file():
            try:
                items = pd.read_parquet(self.items_path)
            except Exception as e:  # noqa: BLE001 - the report then shows no intervals
                warnings.warn(f"{self.items_path.name} could not be read ({e}); the report shows no intervals")
        elif incomplete is not None and self.item_shards_dir.is_dir():
            # an interrupted study: every finished row's items were written before the row itself
            try:  # read only: the study may still be running, its writer's temporaries stay
                items = ItemStore(d, clean=False).table(table)
            except Exception as e:  # noqa: BLE001 - the report then shows no intervals
                warnings.warn(f"the finished rows' per-item values could not be read ({e}); the report shows no "
                              "intervals")
        heldout = _read_optional_csv(self.heldout_path, None)
        return {"table": table, "incomplete": incomplete, "best": best, "attribution": attribution, "items": items,
                "heldout": heldout}


def _finished_rows(rows: list[dict]) -> pd.DataFrame:
    """The finished rows of a resume log as a table (a row appended again by a resumed run: the
    last one kept), in the types of :func:`~mechtrunc.core.results.tidy_truncation`."""
    by_key = {}
    for row in rows:
        by_key.pop(row_key(row), None)  # the last one, at its place
        by_key[row_key(row)] = row
    return tidy_truncation(pd.DataFrame(list(by_key.values())))


def _read_optional_csv(path: Path, consequence: str | None):
    """``path`` read when it exists; a warning (and None) when it cannot be read."""
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"{path.name} could not be read ({e})" + (f"; {consequence}" if consequence else ""))
        return None


def read_items(out: str | os.PathLike) -> pd.DataFrame:
    """The per-item side table a finished :func:`~mechtrunc.studies.truncation_study` wrote to
    ``out/items.parquet`` (see :meth:`ItemStore.table`); FileNotFoundError when there is none (an
    unfinished study, or one written before the side table existed: rerun it with the same ``out``)."""
    return TruncationDirectory(out).read_items()
