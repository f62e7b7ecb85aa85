"""Result storage for studies: fingerprints, the resumable row store, Parquet shards, the final
tables (CSV + Parquet), and :class:`StudyDirectory`, what every study directory shares: its
settings (``study.json``), its resume log (``rows.jsonl``) and its per-item side table
(``item_shards/``, ``items.parquet``).  Each kind of study has one module that owns the rest of
its directory (every file name, its writer and its reader):
:mod:`~mechtrunc.studies.truncation_files`, :mod:`~mechtrunc.studies.checkpoint_files` and
:mod:`~mechtrunc.studies.lm_files`; nothing else names a study's files.

Every file that marks work as finished is written atomically (a temporary file in the same
directory, flushed, then ``os.replace``), so a kill at any moment leaves either the old state or
the new one, never half a shard.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from mechtrunc.core.adapters import adapt
from mechtrunc.core.prompts import PromptSet

__all__ = [
    "prompts_fingerprint", "model_fingerprint", "check_meta", "atomic_write_text", "RowStore", "ShardStore",
    "write_tables", "read_tables", "metric_values", "StudyDirectory", "SETTINGS_FILE", "ITEMS_FILE",
]

#: a study's settings: what its rows depend on (compared on resume) and an ``info`` entry (not compared)
SETTINGS_FILE = "study.json"
#: a study's resume log: one finished row per line
ROWS_FILE = "rows.jsonl"
#: the per-item side table of a finished study, and the shards it is gathered from
ITEMS_FILE = "items.parquet"
ITEM_SHARDS = "item_shards"


def prompts_fingerprint(prompts: PromptSet) -> str:
    """A 16-hex-digit hash of every tensor of ``prompts`` and its competitor names (two prompt
    sets with the same fingerprint score identically)."""
    h = hashlib.sha1()
    for t in (prompts.tokens, prompts.rows, prompts.pos, prompts.answer, prompts.competitors):
        t = t.detach().to("cpu", torch.long).contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    h.update("|".join(prompts.competitor_names).encode())
    return h.hexdigest()[:16]


def model_fingerprint(model) -> dict:
    """Sizes and a hash of a few exact weight values (tells checkpoints apart; a model moved
    to another directory keeps its fingerprint)."""
    a = adapt(model)
    h = hashlib.sha1()
    slices = [a.W_U()]
    for layer in (0, a.n_layers - 1):
        name = "mlp.W_in" if a.has_mlp(layer) else "attn.W_V"
        slices.append(a.matrix(name, layer).get())
    for W in slices:
        piece = W[:16, :16].detach().to("cpu", torch.float32).contiguous()
        h.update(piece.numpy().tobytes())
    return {
        "n_layers": a.n_layers, "d_model": a.d_model, "n_heads": a.n_heads, "d_vocab": a.d_vocab,
        "weights": h.hexdigest()[:16],
    }



def check_meta(out, meta: dict) -> None:
    """Compare ``meta`` with the settings file ``out/study.json`` (except its ``info`` entry):
    ValueError naming every difference when they disagree; write it when there is none.  Call
    only after every argument has been validated, so a mistaken command leaves no settings file
    behind."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / SETTINGS_FILE
    if meta_path.exists():
        try:
            old = json.loads(meta_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{meta_path} is corrupt (a half-written study?): {err}; delete {out} "
                             "or use a new output directory") from None
        diff = {k: (old.get(k), v) for k, v in meta.items() if k != "info" and old.get(k) != v}
        if diff:
            detail = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
            raise ValueError(
                f"{str(out)!r} holds a study with different settings ({detail}); "
                "use a new output directory or delete the old one"
            )
    else:
        atomic_write_text(meta_path, json.dumps(meta, indent=2))


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file + fsync + ``os.replace``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_parquet(df: pd.DataFrame, path) -> None:
    """Write ``df`` to the Parquet file ``path`` atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_rows(path) -> tuple[list[dict], list[str], list[int]]:
    """The rows of a resume log (``rows.jsonl``): ``(rows, their lines, the numbers of the
    unreadable lines)``; a line cut by an interruption is skipped.  No file: nothing."""
    path = Path(path)
    rows, good, bad = [], [], []
    if not path.is_file():
        return rows, good, bad
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            bad.append(n)
            continue
        good.append(line)
    return rows, good, bad


class RowStore:
    """A study's resume log (one finished row per line, appended and fsynced as each row is
    finished), or rows in memory when ``path`` is None.  Opening it drops the lines an
    interruption cut for good (their rows are recomputed)."""

    def __init__(self, path, key_fn: Callable[[dict], tuple]):
        self.key_fn = key_fn
        self.rows: dict[tuple, dict] = {}
        self.path = None if path is None else Path(path)
        if self.path is None or not self.path.exists():
            return
        text = self.path.read_text()
        rows, good, bad = read_rows(self.path)
        for row in rows:
            self.rows[key_fn(row)] = row
        for n in bad:
            warnings.warn(f"{self.path}:{n}: skipping an unreadable (partly written?) line; "
                          "that row will be recomputed", stacklevel=3)
        if bad or (text and not text.endswith("\n")):  # drop the broken lines for good
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in good))
            tmp.replace(self.path)

    def get(self, key):
        return self.rows.get(key)

    def add(self, row: dict) -> None:
        self.rows[self.key_fn(row)] = row
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())


class ShardStore:
    """One Parquet file per finished unit of work: ``<directory>/<name>.parquet``.

    :meth:`write` is atomic and idempotent: the table goes to a uniquely named temporary file in
    the same directory, which then replaces the shard with ``os.replace``.  Two workers that
    finish the same unit (a retried task whose first attempt was not dead after all) both write
    the same rows, and the last replace wins, so every unit appears exactly once.  A shard that
    cannot be read (a foreign or damaged file) is reported as missing and recomputed."""

    def __init__(self, directory):
        self.dir = Path(directory)

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.parquet"

    def done(self, name: str) -> bool:
        return self.path(name).is_file()

    def write(self, name: str, df: pd.DataFrame) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.path(name)
        tmp = self.dir / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            df.to_parquet(tmp, index=False)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def read(self, name: str) -> pd.DataFrame | None:
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            return pd.read_parquet(path)
        except Exception as e:  # noqa: BLE001 - a damaged shard is recomputed, not fatal
            warnings.warn(f"{path}: unreadable shard ({type(e).__name__}: {e}); it will be recomputed", stacklevel=2)
            path.unlink(missing_ok=True)
            return None

    def clean_temporaries(self) -> int:
        """Remove temporary files left by killed writers; returns how many."""
        n = 0
        if self.dir.is_dir():
            for p in self.dir.glob(".*.tmp"):
                p.unlink(missing_ok=True)
                n += 1
        return n


def write_tables(df: pd.DataFrame, out, stem: str) -> None:
    """``out/<stem>.csv`` and ``out/<stem>.parquet``, each written atomically."""
    if out is None:
        return
    out = Path(out)
    for suffix, write in ((".csv", lambda p: df.to_csv(p, index=False)),
                          (".parquet", lambda p: df.to_parquet(p, index=False))):
        path = out / f"{stem}{suffix}"
        tmp = out / f".{stem}{suffix}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            write(tmp)
            os.replace(tmp, path)
        except ImportError as e:  # pyarrow missing
            warnings.warn(f"{path.name} was not written (install pyarrow): {e}", stacklevel=3)
        finally:
            tmp.unlink(missing_ok=True)


def read_tables(out, stem: str):
    """The table :func:`write_tables` wrote: ``out/<stem>.parquet`` when pyarrow can read it, else
    ``out/<stem>.csv``; None when neither exists.  A Parquet file that cannot be read (pyarrow
    missing, a damaged file) falls back to the CSV; ValueError naming the file when neither reads."""
    out = Path(out)
    pq, csv = out / f"{stem}.parquet", out / f"{stem}.csv"
    if pq.is_file():
        try:
            return pd.read_parquet(pq)
        except Exception as e:  # noqa: BLE001 - pyarrow missing or a partly written file: the CSV
            if not csv.is_file():
                raise ValueError(f"{str(pq)!r} could not be read ({e})") from None
    if csv.is_file():
        try:
            return pd.read_csv(csv)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{str(csv)!r} could not be read ({e})") from None
    return None


def has_tables(out, stem: str) -> bool:
    """Whether :func:`write_tables` left ``out/<stem>.csv`` or ``out/<stem>.parquet``."""
    return any((Path(out) / f"{stem}{suffix}").is_file() for suffix in (".csv", ".parquet"))


class StudyDirectory:
    """What every study directory shares: its settings (:data:`SETTINGS_FILE`, checked on resume
    by :func:`check_meta`), its resume log (:data:`ROWS_FILE`) and its per-item side table
    (:data:`ITEM_SHARDS` while it runs, :data:`ITEMS_FILE` at the end).  ``out`` None: a study
    kept in memory (every writer does nothing, every path is None)."""

    def __init__(self, out):
        self.out = None if out is None else Path(out)

    def _path(self, name: str) -> Path | None:
        return None if self.out is None else self.out / name

    @property
    def settings_path(self) -> Path | None:
        return self._path(SETTINGS_FILE)

    @property
    def rows_path(self) -> Path | None:
        return self._path(ROWS_FILE)

    @property
    def items_path(self) -> Path | None:
        return self._path(ITEMS_FILE)

    @property
    def item_shards_dir(self) -> Path | None:
        return self._path(ITEM_SHARDS)

    def has_settings(self) -> bool:
        return self.out is not None and self.settings_path.is_file()

    def check_settings(self, meta: dict) -> None:
        """:func:`check_meta` of this directory (nothing in memory)."""
        if self.out is not None:
            check_meta(self.out, meta)

    def write_items(self, items: pd.DataFrame) -> Path | None:
        """The finished study's per-item side table, written atomically."""
        if self.out is None:
            return None
        atomic_write_parquet(items, self.items_path)
        return self.items_path

    def read_items(self) -> pd.DataFrame | None:
        """The finished study's per-item side table; None when there is none."""
        return pd.read_parquet(self.items_path) if self.out is not None and self.items_path.is_file() else None


def metric_values(df_row: pd.DataFrame) -> dict:
    """The metrics of a one-row ``evaluate`` table as ``{name: float}`` (its label dropped)."""
    row = df_row.iloc[0].to_dict()
    row.pop("variant", None)
    return {k: float(v) for k, v in row.items()}

