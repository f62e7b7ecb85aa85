"""Recognise and read a result directory: a toy run, a truncation study or a checkpoint study.

This module is the only place that knows the files each result leaves behind; reports read
results through it and never recompute a study.

- toy run (``mechtrunc toy train`` / ``make demo``): ``config.json`` with a ``train`` entry,
  ``model.safetensors``, ``history.csv``.
- truncation study (``truncation_study(out=...)``, ``mechtrunc pythia truncate``):
  ``study.json`` (``kind: truncation``), ``truncation.parquet`` or ``truncation.csv``, optional
  ``best.json`` and ``attribution_change.csv``.
- checkpoint study: ``study.json`` (``kind: checkpoints``), ``checkpoints.parquet`` or
  ``checkpoints.csv``.

An interrupted study (``rows.jsonl`` or per-checkpoint Parquet shards, no final table) is read
from its finished rows and marked ``incomplete``; one with no finished row at all raises
:class:`NotAResultError`.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from mechtrunc.results import upgrade_columns, upgrade_record

__all__ = ["NotAResultError", "ToyRun", "TruncationResults", "CheckpointResults", "read_result", "KINDS"]

KINDS = ("toy", "truncation", "checkpoints")


class NotAResultError(ValueError):
    """The path is not a result directory mechtrunc can report on."""


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise NotAResultError(f"{str(path)!r} is not readable JSON ({e}); the result directory looks corrupt") from None
    if not isinstance(data, dict):
        raise NotAResultError(f"{str(path)!r} does not hold a JSON object")
    return data


def _read_table(directory: Path, stem: str):
    """``stem.parquet`` (when pyarrow can read it) or ``stem.csv``; None when neither exists."""
    import pandas as pd

    pq, csv = directory / f"{stem}.parquet", directory / f"{stem}.csv"
    if pq.is_file():
        try:
            return upgrade_columns(pd.read_parquet(pq))
        except Exception as e:  # pyarrow missing or a partly written file: fall back to the CSV
            if not csv.is_file():
                raise NotAResultError(f"{str(pq)!r} could not be read ({e})") from None
    if csv.is_file():
        try:
            return upgrade_columns(pd.read_csv(csv))
        except Exception as e:
            raise NotAResultError(f"{str(csv)!r} could not be read ({e})") from None
    return None


def _read_rows_jsonl(path: Path) -> list[dict]:
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(upgrade_record(json.loads(line)))
        except json.JSONDecodeError:  # a line cut by the interruption
            continue
    return rows


def _html_summary(title: str, lines: list[str], df=None, max_rows: int = 12) -> str:
    from mechtrunc.report.page import esc, html_table

    items = "".join(f"<li>{esc(x)}</li>" for x in lines)
    table = html_table(df, max_rows=max_rows) if df is not None else ""
    return f"<div><b>{esc(title)}</b><ul>{items}</ul>{table}</div>"


class _Result:
    """What every result object shares: the directory it was read from.  Its report is
    ``mt.write_report(result.directory)`` (or ``build_report(result)``): this module sits below the
    report builders and never calls them."""

    directory: Path


class _StudyResult(_Result):
    study: dict

    @property
    def info(self) -> dict:
        """``study.json``'s ``info`` entry (model name, revision, task...)."""
        return self.study.get("info", {}) or {}


@dataclass
class ToyRun(_Result):
    """A trained toy run directory."""

    directory: Path
    config: dict  # config.json: model, train, task, final
    history: object  # DataFrame or None
    kind: str = "toy"
    incomplete: str | None = None

    @property
    def train(self) -> dict:
        return self.config.get("train", {})

    def load(self, device: str = "cpu"):
        from mechtrunc.training import load_run

        return load_run(self.directory, device=device)

    def _repr_html_(self) -> str:
        t = self.train
        lines = [f"directory: {self.directory}",
                 f"preset {t.get('preset')}, d_model {t.get('d_model')}, T {t.get('seq_len')}, "
                 f"alpha {t.get('alpha')}, {t.get('steps')} steps, seed {t.get('seed')}"]
        import pandas as pd

        final = self.config.get("final")
        df = pd.DataFrame(final).T.reset_index(names="variant") if final else None
        return _html_summary("mechtrunc toy run", lines, df)


@dataclass
class MemoryRun(_Result):
    """An associative-memory run directory (``mechtrunc memory train --out DIR``)."""

    directory: Path
    config: dict  # config.json: memory, train, seconds
    history: object  # DataFrame
    spectra: object  # DataFrame or None
    kind: str = "memory"
    incomplete: str | None = None

    def load(self):
        from mechtrunc.memory import LinearMemory

        return LinearMemory.load(self.directory)

    def _repr_html_(self) -> str:
        m = self.config.get("memory", {})
        lines = [f"directory: {self.directory}",
                 f"N {m.get('n_inputs')}, V {m.get('n_outputs')}, d {m.get('d')}, alpha {m.get('alpha')}"]
        return _html_summary("mechtrunc associative-memory run", lines, self.history)


@dataclass
class TruncationResults(_StudyResult):
    """A truncation study directory: the table (one row per layer x matrix x keep, plus the
    baseline row), ``study.json`` and, when written, ``best.json`` and the attribution change."""

    directory: Path
    table: object  # DataFrame
    study: dict
    best: dict | None = None
    attribution: object = None  # DataFrame (attribution_change.csv) or None
    kind: str = "truncation"
    incomplete: str | None = None

    def _repr_html_(self) -> str:
        lines = [f"directory: {self.directory}", f"model: {model_source(self)}",
                 f"{int((~self.table['baseline'].astype(bool)).sum())} configurations on "
                 f"{self.study.get('n_items', '?')} prompts"]
        if self.incomplete:
            lines.append(f"INCOMPLETE: {self.incomplete}")
        return _html_summary("mechtrunc truncation study", lines, self.table)


@dataclass
class CheckpointResults(_StudyResult):
    """A checkpoint study directory: one row per (step, variant)."""

    directory: Path
    table: object
    study: dict
    kind: str = "checkpoints"
    incomplete: str | None = None

    def _repr_html_(self) -> str:
        lines = [f"directory: {self.directory}", f"model: {model_source(self)}",
                 f"steps: {', '.join(str(s) for s in sorted(set(self.table['step'].tolist())))}"]
        if self.incomplete:
            lines.append(f"INCOMPLETE: {self.incomplete}")
        return _html_summary("mechtrunc checkpoint study", lines, self.table)


def model_source(result) -> str | None:
    """The model id or directory a study was run on, as recorded in ``study.json``."""
    info = result.info
    meta = result.study
    for key in ("model_path", "model_dir", "model_id", "model", "source", "model_name"):
        for d in (info, meta):
            v = d.get(key)
            if isinstance(v, str) and v and v != "callable" and "<" not in v:  # not a function's qualname
                return v
    return None


def model_revision(result) -> str | None:
    for d in (result.info, result.study):
        for key in ("revision", "step"):
            v = d.get(key)
            if v is not None:
                return str(v) if key == "revision" else f"step{v}"
    return None


# ----------------------------------------------------------------------------------------
def _clean_truncation_rows(rows: list[dict]):
    import pandas as pd

    df = pd.DataFrame(rows)
    if "baseline" not in df.columns:
        df["baseline"] = False
    df["baseline"] = df["baseline"].fillna(False).astype(bool)
    for col in ("layer", "rank", "max_rank"):
        if col in df.columns:
            df[col] = pd.array([None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
                                for v in df[col]], dtype="Int64")
    if "keep" in df.columns:
        df["keep"] = df["keep"].astype("float64")
    # rows.jsonl may hold a row twice (appended again by a resumed run): keep the last
    key = [c for c in ("baseline", "layer", "matrix", "keep") if c in df.columns]
    return df.drop_duplicates(subset=key, keep="last").reset_index(drop=True)


def _read_truncation(d: Path, study: dict) -> TruncationResults:
    table = _read_table(d, "truncation")
    incomplete = None
    if table is None:
        rows = _read_rows_jsonl(d / "rows.jsonl")
        if not rows:
            raise NotAResultError(
                f"{str(d)!r} holds a truncation study that has not finished a single row yet (no truncation.csv, "
                "no rows in rows.jsonl); rerun the study with the same output directory to resume it")
        table = _clean_truncation_rows(rows)
        incomplete = (f"the study was interrupted: {len(table)} finished rows read from rows.jsonl, no final "
                      "truncation.csv; rerun the study with the same output directory to finish it")
    if "baseline" not in table.columns:
        raise NotAResultError(f"{str(d)!r}: the truncation table has no 'baseline' column; is it a mechtrunc study?")
    table["baseline"] = table["baseline"].astype(bool)
    best = _read_json(d / "best.json") if (d / "best.json").is_file() else None
    attribution = None
    if (d / "attribution_change.csv").is_file():
        import pandas as pd

        try:
            attribution = pd.read_csv(d / "attribution_change.csv")
        except Exception as e:
            warnings.warn(f"attribution_change.csv could not be read ({e}); it will be recomputed if possible")
    return TruncationResults(d, table, study, best, attribution, incomplete=incomplete)


def _read_shards(d: Path):
    """Per-checkpoint Parquet shards of an unfinished checkpoint study (any ``*.parquet`` below
    the directory other than the merged table), concatenated."""
    import pandas as pd

    frames = []
    for p in sorted(d.rglob("*.parquet")):
        if p.parent == d and p.name == "checkpoints.parquet":
            continue
        try:
            f = pd.read_parquet(p)
        except Exception:  # a shard cut by the interruption
            continue
        if {"step", "variant"} <= set(f.columns):
            frames.append(f)
    return pd.concat(frames, ignore_index=True) if frames else None


def _read_checkpoints(d: Path, study: dict) -> CheckpointResults:
    import pandas as pd

    table = _read_table(d, "checkpoints")
    incomplete = None
    if table is None:
        rows = _read_rows_jsonl(d / "rows.jsonl")
        table = pd.DataFrame(rows) if rows else _read_shards(d)
        if table is None or table.empty:
            raise NotAResultError(
                f"{str(d)!r} holds a checkpoint study that has not finished a single checkpoint yet (no "
                "checkpoints.csv, no finished rows); rerun the study with the same output directory to resume it")
        table = table.drop_duplicates(subset=["step", "variant"], keep="last")
        incomplete = (f"the study was interrupted: {table['step'].nunique()} finished checkpoints read from its "
                      "partial results, no final checkpoints.csv; rerun the study with the same output directory")
    missing = {"step", "variant"} - set(table.columns)
    if missing:
        raise NotAResultError(f"{str(d)!r}: the checkpoint table lacks column(s) {sorted(missing)}")
    table["step"] = table["step"].astype("int64")
    return CheckpointResults(d, table.sort_values(["step", "variant"], kind="stable").reset_index(drop=True),
                             study, incomplete=incomplete)


def _read_memory(d: Path, cfg: dict) -> MemoryRun:
    import pandas as pd

    for name in ("model.safetensors", "history.csv"):
        if not (d / name).is_file():
            raise NotAResultError(f"{str(d)!r} holds a memory configuration but no {name}")
    try:
        hist = upgrade_columns(pd.read_csv(d / "history.csv"))
        spectra = pd.read_csv(d / "spectra.csv") if (d / "spectra.csv").is_file() else None
    except Exception as e:
        raise NotAResultError(f"{str(d)!r}: its history.csv or spectra.csv could not be read ({e})") from None
    return MemoryRun(d, cfg, hist, spectra)


def _read_toy(d: Path, cfg: dict) -> ToyRun:
    import pandas as pd

    if not (d / "model.safetensors").is_file():
        raise NotAResultError(f"{str(d)!r} holds a toy configuration but no model.safetensors")
    hist = None
    if (d / "history.csv").is_file():
        try:
            hist = upgrade_columns(pd.read_csv(d / "history.csv"))
        except Exception as e:
            raise NotAResultError(f"{str(d / 'history.csv')!r} could not be read ({e})") from None
    return ToyRun(d, cfg, hist)


def detect(path: str | os.PathLike) -> str:
    """The kind of result at ``path`` (``"toy"``, ``"memory"``, ``"truncation"``, ``"checkpoints"``) without
    reading its tables; raises :class:`NotAResultError` with what was expected."""
    return _detect(_check_dir(path))[0]


def _check_dir(path) -> Path:
    d = Path(path).expanduser()
    if not d.exists():
        raise NotAResultError(f"{str(path)!r} does not exist; give a toy run or study output directory")
    if not d.is_dir():
        raise NotAResultError(
            f"{str(path)!r} is a file, not a directory; give the directory that holds the run or study "
            "(for example runs/demo, or the --out directory of `mechtrunc pythia truncate`)")
    return d


def _detect(d: Path) -> tuple[str, dict]:
    if (d / "study.json").is_file():
        study = _read_json(d / "study.json")
        kind = study.get("kind")
        if kind in ("truncation", "checkpoints"):
            return kind, study
        raise NotAResultError(f"{str(d / 'study.json')!r} has an unknown study kind {kind!r}; "
                              "known kinds: truncation, checkpoints")
    if (d / "truncation.csv").is_file() or (d / "truncation.parquet").is_file():
        return "truncation", {}
    if (d / "checkpoints.csv").is_file() or (d / "checkpoints.parquet").is_file():
        return "checkpoints", {}
    if (d / "config.json").is_file():
        cfg = _read_json(d / "config.json")
        if "train" in cfg and "model" in cfg:
            return "toy", cfg
        if "memory" in cfg:
            return "memory", cfg
    if (d / "checkpoint.pt").is_file():
        raise NotAResultError(
            f"{str(d)!r} holds an unfinished toy training run (checkpoint.pt but no saved model); rerun "
            f"`mechtrunc toy train --out {d}` with the same options to finish it")
    listing = sorted(p.name for p in d.iterdir())[:8]
    raise NotAResultError(
        f"{str(d)!r} holds none of the known results (found: {', '.join(listing) or 'nothing'}); expected a toy "
        "run (config.json + model.safetensors + history.csv), an associative-memory run (the same, from "
        "`mechtrunc memory train`), a truncation study (study.json + truncation.csv) or "
        "a checkpoint study (study.json + checkpoints.csv)")


def read_result(path: str | os.PathLike):
    """Read the result directory at ``path``: a :class:`ToyRun`, :class:`TruncationResults` or
    :class:`CheckpointResults` (each renders a summary in Jupyter; :func:`mechtrunc.report.build_report`
    turns it into a report)."""
    d = _check_dir(path)
    kind, meta = _detect(d)
    if kind == "toy":
        return _read_toy(d, meta)
    if kind == "memory":
        return _read_memory(d, meta)
    if kind == "truncation":
        return _read_truncation(d, meta)
    return _read_checkpoints(d, meta)
