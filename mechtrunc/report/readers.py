"""Recognise and read a result directory: a toy run, a truncation study or a checkpoint study.

Reports read results through this module and never recompute a study.  A study's files are
read by the module that owns its directory (:mod:`mechtrunc.studies.truncation_files`,
:mod:`mechtrunc.studies.checkpoint_files`, :mod:`mechtrunc.studies.lm_files`; a language-model
run's own files: :mod:`mechtrunc.models.lm_run`), which also writes them; this module
recognises the kind of a directory and wraps what they read in objects that render a summary.

- toy run (``mechtrunc toy train`` / ``make demo``): ``config.json`` with a ``train`` entry,
  ``model.safetensors``, ``history.csv``.
- truncation study (``truncation_study(out=...)``, ``mechtrunc pythia truncate``):
  ``study.json`` (``kind: truncation``), ``truncation.parquet`` or ``truncation.csv``, optional
  ``best.json`` and ``attribution_change.csv``.
- checkpoint study: ``study.json`` (``kind: checkpoints``), ``checkpoints.parquet`` or
  ``checkpoints.csv``.
- circuit study over training (``circuit_study(out=...)``, ``mechtrunc circuits checkpoints``):
  ``study.json`` (``kind: circuits``), ``nodes``, ``edges`` and ``ledger.parquet`` or its shards.
- associative-memory run (``mechtrunc memory train``): ``config.json`` with a ``memory`` entry,
  ``model.safetensors``, ``history.csv``, optional ``spectra.csv``.
- language-model run (``mechtrunc lm train --out RUN``): ``run.json`` (``format:
  mechtrunc-lm-run/1``), ``history.csv``, ``summary.json`` (when finished), ``step{N}/``
  checkpoints and, once ``mechtrunc lm study RUN`` has run, the study's tables in ``RUN/study/``
  (:func:`mechtrunc.studies.lm.study_run`).

An interrupted study (``rows.jsonl`` or per-checkpoint Parquet shards, no final table) is read
from its finished rows and marked ``incomplete``; one with no finished row at all raises
:class:`NotAResultError`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from mechtrunc.core.results import upgrade_columns

__all__ = ["NotAResultError", "ToyRun", "MemoryResult", "TruncationResults", "CheckpointResults", "LMRun",
           "CircuitResults", "read_result", "KINDS", "LM_STUDY_TABLES"]

KINDS = ("toy", "memory", "truncation", "checkpoints", "lm", "circuits")


def __getattr__(name):
    if name == "MemoryRun":  # renamed: mechtrunc.models.memory.MemoryRun is the run training returns
        import warnings

        warnings.warn("mechtrunc.report.readers.MemoryRun is now MemoryResult (mechtrunc.models.memory.MemoryRun is "
                      "the in-memory run training returns); the old name goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return MemoryResult
    if name == "LM_STUDY_TABLES":  # the tables of a language-model run's study: name -> file
        from mechtrunc.studies.lm_files import TABLES

        return TABLES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def _html_summary(title: str, lines: list[str], df=None, max_rows: int = 12) -> str:
    from mechtrunc.report.page import fragment, html_table

    items = fragment("").join(fragment("<li>{}</li>", x) for x in lines)
    table = html_table(df, max_rows=max_rows) if df is not None else fragment("")
    return fragment("<div><b>{}</b><ul>{}</ul>{}</div>", title, items, table)


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

    def _steps_summary(self, title: str) -> str:
        """The notebook summary of a study over training steps: directory, model, steps, whether
        it is complete, and its table (``self.table``)."""
        lines = [f"directory: {self.directory}", f"model: {model_source(self)}",
                 f"steps: {', '.join(str(s) for s in sorted(set(self.table['step'].tolist())))}"]
        if self.incomplete:
            lines.append(f"INCOMPLETE: {self.incomplete}")
        return _html_summary(title, lines, self.table)


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
        from mechtrunc.models.toy_training import load_run

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
class MemoryResult(_Result):
    """An associative-memory run directory (``mechtrunc memory train --out DIR``)."""

    directory: Path
    config: dict  # config.json: memory, train, seconds
    history: object  # DataFrame
    spectra: object  # DataFrame or None
    kind: str = "memory"
    incomplete: str | None = None

    def load(self):
        from mechtrunc.models.memory import LinearMemory

        return LinearMemory.load(self.directory)

    def _repr_html_(self) -> str:
        m = self.config.get("memory", {})
        lines = [f"directory: {self.directory}",
                 f"N {m.get('n_inputs')}, V {m.get('n_outputs')}, d {m.get('d')}, alpha {m.get('alpha')}"]
        return _html_summary("mechtrunc associative-memory run", lines, self.history)


@dataclass
class LMRun(_Result):
    """A language-model run directory (``mechtrunc lm train --out RUN``) and, when
    ``mechtrunc lm study RUN`` has run, its study tables (``RUN/study/``, read, never recomputed)."""

    directory: Path
    run: dict  # run.json: format, config (LMConfig.to_dict())
    history: object  # DataFrame (history.csv: step, loss, lr, tokens) or None
    summary: dict | None  # summary.json; None while training has not finished
    steps: list  # checkpoint steps on disk (step{N}/ with a config.json), ascending
    study: dict | None = None  # RUN/study/study.json (the study's settings); None: no study
    tables: dict = field(default_factory=dict)  # study tables present: LM_STUDY_TABLES name -> DataFrame
    kind: str = "lm"
    incomplete: str | None = None

    @property
    def config(self) -> dict:
        return self.run.get("config", {})

    def _repr_html_(self) -> str:
        c = self.config
        lines = [f"directory: {self.directory}",
                 f"{c.get('n_layers')} layers, d_model {c.get('d_model')}, {c.get('steps')} steps, seed {c.get('seed')}",
                 f"checkpoints: {', '.join(str(s) for s in self.steps)}",
                 "study: " + (f"{len(self.tables)} tables in study/" if self.study else "none (mechtrunc lm study RUN)")]
        if self.incomplete:
            lines.append(f"INCOMPLETE: {self.incomplete}")
        return _html_summary("mechtrunc language-model run", lines, self.tables.get("curves"))


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
    #: the per-item side table (items.parquet: one row per configuration and item) or None
    items: object = None
    #: heldout.csv (``pythia truncate --heldout``: the held-out choice, with collateral) or None
    heldout: object = None

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
    items: object = None  # per-item side table (items.parquet or the finished steps' item shards), or None

    def _repr_html_(self) -> str:
        return self._steps_summary("mechtrunc checkpoint study")


@dataclass
class CircuitResults(_StudyResult):
    """A circuit study over training (:func:`mechtrunc.studies.circuits.circuit_study`): node
    scores, top edges and the margin ledger per step."""

    directory: Path
    nodes: object
    edges: object
    ledger: object
    study: dict
    kind: str = "circuits"
    incomplete: str | None = None

    @property
    def table(self):
        return self.nodes

    def _repr_html_(self) -> str:
        return self._steps_summary("mechtrunc circuit study over training")


def _read_circuits(d: Path, study: dict) -> CircuitResults:
    from mechtrunc.studies.circuits import circuit_study_finished, read_circuit_study

    try:
        tables = read_circuit_study(d)
    except ValueError as err:
        raise NotAResultError(f"{err}; rerun the study with the same output directory to resume it") from None
    incomplete = None
    if not circuit_study_finished(d):
        incomplete = (f"the study was interrupted: {tables.nodes['step'].nunique()} finished checkpoints read from its "
                      "shards, no final tables; rerun the study with the same output directory")
    return CircuitResults(d, tables.nodes, tables.edges, tables.ledger, study, incomplete=incomplete)


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
def _owned(read):
    """What a study directory's owner reads, its ValueErrors as :class:`NotAResultError`."""
    try:
        return read()
    except NotAResultError:
        raise
    except ValueError as e:
        raise NotAResultError(str(e)) from None


def _read_truncation(d: Path, study: dict) -> TruncationResults:
    from mechtrunc.studies.truncation_files import TruncationDirectory

    return TruncationResults(d, study=study, **_owned(TruncationDirectory(d).read))


def _read_checkpoints(d: Path, study: dict) -> CheckpointResults:
    from mechtrunc.studies.checkpoint_files import CheckpointStudyDirectory

    return CheckpointResults(d, study=study, **_owned(CheckpointStudyDirectory(d).read))


def _read_memory(d: Path, cfg: dict) -> MemoryResult:
    import pandas as pd

    for name in ("model.safetensors", "history.csv"):
        if not (d / name).is_file():
            raise NotAResultError(f"{str(d)!r} holds a memory configuration but no {name}")
    try:
        hist = upgrade_columns(pd.read_csv(d / "history.csv"))
        spectra = pd.read_csv(d / "spectra.csv") if (d / "spectra.csv").is_file() else None
    except Exception as e:
        raise NotAResultError(f"{str(d)!r}: its history.csv or spectra.csv could not be read ({e})") from None
    return MemoryResult(d, cfg, hist, spectra)


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


def _read_lm(d: Path, run: dict) -> LMRun:
    from mechtrunc.models.lm_run import LMRunDirectory

    files = LMRunDirectory(d)
    steps = files.steps()
    if not steps:
        raise NotAResultError(
            f"{str(d)!r} holds a language-model run that has not saved a single checkpoint yet; rerun "
            f"`mechtrunc lm train --out {d}` with the same options to resume it")
    history, summary = _owned(files.read_history), _owned(files.read_summary)
    total = run["config"].get("steps")
    incomplete = None
    if summary is None:
        incomplete = (f"training has not finished: the last checkpoint is step {steps[-1]} of {total}; rerun "
                      f"`mechtrunc lm train --out {d}` with the same options to resume it")
    from mechtrunc.studies.lm_files import LMStudyDirectory

    study, tables = _owned(LMStudyDirectory(d).read)
    return LMRun(d, run, history, summary, steps, study, tables, incomplete=incomplete)


def detect(path: str | os.PathLike) -> str:
    """The kind of result at ``path`` (``"toy"``, ``"memory"``, ``"truncation"``, ``"checkpoints"``, ``"lm"``) without
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
    from mechtrunc.models.lm_run import LMRunDirectory, RunFormatError, is_run_dir

    if is_run_dir(d):
        try:
            return "lm", LMRunDirectory(d).read_run()
        except RunFormatError:  # another tool's run.json: not a language-model run
            pass
        except ValueError as e:
            raise NotAResultError(str(e)) from None
    from mechtrunc.studies.checkpoint_files import CheckpointStudyDirectory
    from mechtrunc.studies.truncation_files import TruncationDirectory

    settings = TruncationDirectory(d).settings_path  # every study's settings file
    if settings.is_file():
        study = _read_json(settings)
        kind = study.get("kind")
        if kind in ("truncation", "checkpoints", "circuits"):
            return kind, study
        if kind is None and is_run_dir(d.parent):
            raise NotAResultError(f"{str(d)!r} is the study folder of a language-model run; give the run directory "
                                  f"itself: mechtrunc report {d.parent}")
        raise NotAResultError(f"{str(settings)!r} has an unknown study kind {kind!r}; "
                              "known kinds: truncation, checkpoints, circuits")
    if TruncationDirectory(d).has_table():
        return "truncation", {}
    if CheckpointStudyDirectory(d).has_table():
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
        "`mechtrunc memory train`), a language-model run (run.json + step{N}/, from `mechtrunc lm train`), a "
        "truncation study (study.json + truncation.csv) or a checkpoint study (study.json + checkpoints.csv)")


def read_result(path: str | os.PathLike):
    """Read the result directory at ``path``: a :class:`ToyRun`, :class:`MemoryResult`, :class:`LMRun`,
    :class:`TruncationResults` or :class:`CheckpointResults` (each renders a summary in Jupyter;
    :func:`mechtrunc.report.build_report` turns it into a report)."""
    d = _check_dir(path)
    kind, meta = _detect(d)
    if kind == "toy":
        return _read_toy(d, meta)
    if kind == "memory":
        return _read_memory(d, meta)
    if kind == "lm":
        return _read_lm(d, meta)
    if kind == "truncation":
        return _read_truncation(d, meta)
    if kind == "circuits":
        return _read_circuits(d, meta)
    return _read_checkpoints(d, meta)
