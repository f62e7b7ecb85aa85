"""Result storage for studies: fingerprints, the resumable row store of a truncation study
(``rows.jsonl`` + ``study.json``), the per-checkpoint Parquet shards of a checkpoint study, and
the final tables (CSV + Parquet).

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

from mechtrunc.adapters import adapt
from mechtrunc.prompts import PromptSet

__all__ = [
    "prompts_fingerprint", "model_fingerprint", "check_meta", "atomic_write_text", "RowStore", "ShardStore",
    "write_tables", "metric_values",
]


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
    """Compare ``meta`` with ``out/study.json`` (except its ``info`` entry): ValueError naming
    every difference when they disagree; write it when there is none.  Call only after every
    argument has been validated, so a mistaken command leaves no ``study.json`` behind."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "study.json"
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


class RowStore:
    """``rows.jsonl`` (one finished row per line) plus ``study.json`` (what rows depend on;
    its ``info`` entry is informational and not compared)."""

    def __init__(self, out, meta: dict, key_fn: Callable[[dict], tuple]):
        self.key_fn = key_fn
        self.rows: dict[tuple, dict] = {}
        self.path = None
        if out is None:
            return
        out = Path(out)
        check_meta(out, meta)
        self.path = out / "rows.jsonl"
        if self.path.exists():
            text = self.path.read_text()
            good, bad = [], 0
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    bad += 1
                    warnings.warn(f"{self.path}:{n}: skipping an unreadable (partly written?) line; "
                                  "that row will be recomputed", stacklevel=3)
                    continue
                good.append(line)
                self.rows[key_fn(row)] = row
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
    """One Parquet file per finished unit of work: ``DIR/shards/<name>.parquet``.

    :meth:`write` is atomic and idempotent: the table goes to a uniquely named temporary file in
    the same directory, which then replaces the shard with ``os.replace``.  Two workers that
    finish the same unit (a retried task whose first attempt was not dead after all) both write
    the same rows, and the last replace wins, so every unit appears exactly once.  A shard that
    cannot be read (a foreign or damaged file) is reported as missing and recomputed."""

    def __init__(self, out):
        self.dir = Path(out) / "shards"

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


def metric_values(df_row: pd.DataFrame) -> dict:
    """The metrics of a one-row ``evaluate`` table as ``{name: float}`` (its label dropped)."""
    row = df_row.iloc[0].to_dict()
    row.pop("variant", None)
    return {k: float(v) for k, v in row.items()}

