"""The directory of a language-model run's study (``RUN/study/``): every file's name, its writer
and its reader.

This is the one module that knows the study's files (:func:`~mechtrunc.studies.lm.study_run`,
``mechtrunc lm study``); the study computes each table and hands it to
:meth:`LMStudyDirectory.table`, which caches it, and the report reads them back with
:meth:`LMStudyDirectory.read`.

- ``study.json``: the study's settings (a rerun with others is refused);
- one CSV per table (:data:`TABLES`), each written atomically as soon as it is finished, so an
  interrupted study loses no finished table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import pandas as pd

from mechtrunc.core.results import read_json_object
from mechtrunc.studies.store import SETTINGS_FILE

__all__ = ["LMStudyDirectory", "TABLES", "STUDY_DIR", "cached_table"]

#: the study's folder inside the run directory
STUDY_DIR = "study"

#: the study's tables: name -> file.  The competition checkpoint's grid and choices exist only when
#: that checkpoint is not the final one, the choices of a task only when the run is studied on it
#: (:func:`mechtrunc.studies.lm.study_tasks`: ioi and factual on the default corpus, recall and
#: binding on a noisy-recall one)
TABLES = {
    "curves": "curves.csv", "grid_final": "grid_final.csv", "attribution": "attribution.csv", "where": "where_the.csv",
    "grid_competition": "grid_competition.csv", "ledger": "ledger.csv",
    **{f"best_{when}_{task}": f"best_{when}_{task}.csv" for when in ("final", "competition")
       for task in ("ioi", "factual", "recall", "binding")},
}


def cached_table(path: Path, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """The table cached at ``path`` (a CSV), or ``compute()`` written there atomically first: how
    every table of a study is kept, so an interrupted study loses no finished table."""
    if path.is_file():
        return _read_csv(path)
    df = compute()
    tmp = path.with_suffix(".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return df


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:  # an empty table (e.g. no truncation to attribute)
        return pd.DataFrame()


class LMStudyDirectory:
    """The study folder of the language-model run ``run`` (``RUN/study/``)."""

    def __init__(self, run):
        self.run = Path(run)
        self.dir = self.run / STUDY_DIR

    @property
    def settings_path(self) -> Path:
        return self.dir / SETTINGS_FILE

    def path(self, name: str) -> Path:
        """The file of the table ``name`` (a key of :data:`TABLES`)."""
        if name not in TABLES:
            raise ValueError(f"unknown study table {name!r}; valid: {', '.join(TABLES)}")
        return self.dir / TABLES[name]

    # -- writers ---------------------------------------------------------------------------
    def check_settings(self, settings: dict, format_key: str | None = None) -> None:
        """Create the folder; refuse a cached study with other ``settings`` (ValueError naming
        each difference; ``format_key``: the setting whose mismatch means prompts of another
        format); record them."""
        self.dir.mkdir(exist_ok=True)
        have = self.settings_path
        if have.is_file() and (old := json.loads(have.read_text())) != settings:
            diff = ", ".join(f"{k}: {old.get(k)!r} there, {v!r} here" for k, v in settings.items() if old.get(k) != v)
            if format_key is not None and old.get(format_key) != settings.get(format_key):
                raise ValueError(f"{self.dir} holds a study on prompts of another format ({diff}): the study's prompts "
                                 "open with <|endoftext|> as the training stories do; delete it and study the run again")
            raise ValueError(f"{self.dir} holds a study with other settings ({diff}); delete it or use those settings")
        have.write_text(json.dumps(settings))

    def table(self, name: str, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        """The table ``name``: read when cached, else ``compute()`` and cached (:func:`cached_table`)."""
        return cached_table(self.path(name), compute)

    # -- readers ---------------------------------------------------------------------------
    def read(self) -> tuple[dict | None, dict[str, pd.DataFrame]]:
        """``(settings, tables)``: the study's settings (None: no study) and every table present
        (name -> DataFrame; an empty file is an empty table).  ValueError naming a file that
        cannot be read."""
        if not self.settings_path.is_file():
            return None, {}
        settings = read_json_object(self.settings_path)
        tables = {}
        for name in TABLES:
            path = self.path(name)
            if path.is_file():
                try:
                    tables[name] = _read_csv(path)
                except Exception as e:  # noqa: BLE001
                    raise ValueError(f"{str(path)!r} could not be read ({e})") from None
        return settings, tables
