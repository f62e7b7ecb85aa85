"""The directory of a language-model run (``mechtrunc lm train --out RUN``): every file's name,
its writer and its reader.

This is the one module that knows a run's files: :func:`mechtrunc.models.lm.train.train_lm`
writes them through :class:`LMRunDirectory`, and the study, the prompts of a run, the report and
the command line read and recognise them through it.  It imports the standard library only (and
pandas inside :meth:`LMRunDirectory.read_history`), so the command line checks a run directory
before anything heavy is imported.

- ``run.json``: ``{"format": LM_RUN_FORMAT, "config": LMConfig.to_dict()}``, written first;
- ``step{N}/``: one ``save_pretrained`` checkpoint (model and tokenizer) per step of the
  schedule, each written atomically (``step{N}.tmp/`` renamed);
- ``state.pt``: weights, optimiser and history at the last checkpoint (written atomically; a
  rerun resumes there);
- ``history.csv``: step, loss, lr, tokens of every update (rewritten at every checkpoint);
- ``summary.json``: the training summary, written last: a run is finished when it holds the
  checkpoint of its last step and this file.
- ``study/``: the study's tables (:mod:`mechtrunc.studies.lm_files`).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

from mechtrunc._choices import LM_RUN_FORMAT
from mechtrunc.core.results import read_json_object

__all__ = ["LMRunDirectory", "RunFormatError", "RUN_FILE", "HISTORY_FILE", "SUMMARY_FILE", "STATE_FILE",
           "HISTORY_COLUMNS", "step_name", "step_of", "checkpoint_dirs", "is_run_dir", "run_dir"]

#: the run's settings: ``{"format": LM_RUN_FORMAT, "config": ...}``
RUN_FILE = "run.json"
#: one row per update
HISTORY_FILE = "history.csv"
#: the training summary, written when training has finished
SUMMARY_FILE = "summary.json"
#: the state a rerun resumes from
STATE_FILE = "state.pt"
#: the columns of ``history.csv``
HISTORY_COLUMNS = ("step", "loss", "lr", "tokens")

_STEP = re.compile(r"step(\d+)")


class RunFormatError(ValueError):
    """``run.json`` is there but holds another format (not a run of ``mechtrunc lm train``)."""


def step_name(step: int) -> str:
    """The name of the checkpoint directory of ``step`` (``step200``), as Pythia names its revisions."""
    return f"step{int(step)}"


def step_of(name: str) -> int | None:
    """The step a checkpoint directory's name stands for (``"step200"`` -> 200), or None."""
    m = _STEP.fullmatch(name)
    return int(m.group(1)) if m else None


def checkpoint_dirs(directory, with_model: bool = False) -> dict[int, Path]:
    """The ``step{N}/`` subdirectories of ``directory`` (a run or any directory of checkpoints) by
    step, ascending; ``with_model``: only those holding a saved model (``config.json``)."""
    found = ((step_of(p.name), p) for p in Path(directory).iterdir())
    return dict(sorted((s, p) for s, p in found if s is not None and p.is_dir()
                       and (not with_model or (p / "config.json").is_file())))


def is_run_dir(path) -> bool:
    """Whether ``path`` is a run directory (holds ``run.json``; its format is checked by
    :meth:`LMRunDirectory.read_run`)."""
    return (Path(path) / RUN_FILE).is_file()


def run_dir(path) -> Path | None:
    """The run directory that ``path`` is or is a checkpoint of (``RUN/step{N}``); None for
    anything else."""
    p = Path(path)
    if is_run_dir(p):
        return p
    if step_of(p.name) is not None and is_run_dir(p.parent):
        return p.parent
    return None


def _atomic_file(final: Path, write: Callable[[Path], None]) -> None:
    tmp = final.with_suffix(".tmp")
    write(tmp)
    os.replace(tmp, final)


class LMRunDirectory:
    """The files of the language-model run in ``directory``."""

    def __init__(self, directory):
        self.dir = Path(directory)

    @property
    def run_path(self) -> Path:
        return self.dir / RUN_FILE

    @property
    def history_path(self) -> Path:
        return self.dir / HISTORY_FILE

    @property
    def summary_path(self) -> Path:
        return self.dir / SUMMARY_FILE

    @property
    def state_path(self) -> Path:
        return self.dir / STATE_FILE

    def step_path(self, step: int) -> Path:
        """The checkpoint directory of ``step`` (``RUN/step{N}``)."""
        return self.dir / step_name(step)

    # -- readers ---------------------------------------------------------------------------
    def is_run(self) -> bool:
        return is_run_dir(self.dir)

    def steps(self) -> list[int]:
        """The steps of the checkpoints on disk that hold a model, ascending."""
        return list(checkpoint_dirs(self.dir, with_model=True))

    def read_run(self) -> dict:
        """``run.json`` (``format`` and ``config``).  ValueError saying what is wrong: no run here
        (or this is one checkpoint of a run), unreadable JSON, another format
        (:class:`RunFormatError`) or no ``config`` entry."""
        d, path = self.dir, self.run_path
        if not path.is_file():
            if run_dir(d) is not None:
                raise ValueError(f"{d} is one checkpoint of the run {d.parent}: give the run directory ({d.parent})")
            raise ValueError(f"{d} is not a mechtrunc lm run directory (no {RUN_FILE}); train one with "
                             "`mechtrunc lm train --preset small --out DIR`")
        try:
            run = json.loads(path.read_text())
            fmt = run.get("format")
        except (OSError, ValueError, AttributeError) as e:
            raise ValueError(f"{path} is not readable JSON of a run ({e}); the run directory looks corrupt") from None
        if fmt != LM_RUN_FORMAT:
            raise RunFormatError(f"{path} has format {fmt!r}, not {LM_RUN_FORMAT!r}: not a mechtrunc lm run directory")
        if not isinstance(run.get("config"), dict):
            raise ValueError(f"{path} has no 'config' entry; the run directory looks corrupt")
        return run

    def read_config(self) -> dict:
        """The run's configuration (``LMConfig.to_dict()``) from ``run.json``."""
        return self.read_run()["config"]

    def read_history(self):
        """``history.csv`` as a DataFrame (step, loss, lr, tokens; empty when the file is), None
        when there is none.  ValueError naming the file when it cannot be read."""
        import pandas as pd

        if not self.history_path.is_file():
            return None
        try:
            return pd.read_csv(self.history_path)
        except pd.errors.EmptyDataError:
            return pd.DataFrame()
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{str(self.history_path)!r} could not be read ({e})") from None

    def read_summary(self) -> dict | None:
        """``summary.json`` (None while training has not finished).  ValueError naming the file
        when it cannot be read."""
        if not self.summary_path.is_file():
            return None
        return read_json_object(self.summary_path, "run")

    def finished(self, steps: int) -> bool:
        """Whether the run has finished training ``steps`` steps: it holds that step's checkpoint
        and the summary."""
        return self.step_path(steps).is_dir() and self.summary_path.is_file()

    def check_finished(self, steps: int) -> None:
        """ValueError unless :meth:`finished`, saying how to resume."""
        if not self.finished(steps):
            raise ValueError(f"{self.dir} has not finished training (no {step_name(steps)}/); rerun "
                             "`mechtrunc lm train` on it to resume, then study it")

    # -- writers ---------------------------------------------------------------------------
    def write_run(self, config: dict) -> None:
        """``run.json`` of the run ``config`` (``LMConfig.to_dict()``)."""
        self.run_path.write_text(json.dumps({"format": LM_RUN_FORMAT, "config": config}, indent=1))

    def write_checkpoint(self, step: int, write: Callable[[Path], None]) -> None:
        """The checkpoint of ``step``: ``write(directory)`` fills a temporary directory, renamed to
        ``step{N}/`` when complete (an interrupted save leaves no half checkpoint)."""
        final = self.step_path(step)
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)

    def write_state(self, write: Callable[[Path], None]) -> None:
        """``state.pt``, atomically: ``write(path)`` saves to a temporary file, renamed when complete."""
        _atomic_file(self.state_path, write)

    def write_history(self, rows) -> None:
        """``history.csv``: one row (step, loss, lr, tokens) per update."""
        with open(self.history_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(HISTORY_COLUMNS)
            w.writerows(rows)

    def write_summary(self, summary: dict) -> None:
        """``summary.json``, written when training has finished."""
        self.summary_path.write_text(json.dumps(summary, indent=1))
