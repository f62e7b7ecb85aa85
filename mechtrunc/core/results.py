"""The one schema of result tables: column names, which columns are metrics, the keep key, the
row builders, the default metric, and reading old result files.

Every study table (``truncation_study``, ``checkpoint_study``), every report and every figure
reads its column names from here.  Standard library at module top (pandas is imported inside the
functions that need it), so anything may import this module, the command line included.

- Descriptor columns of a truncation table: :data:`CONFIG_COLUMNS` (``baseline, layer, matrix,
  keep, rank, max_rank, identity, rule, svd, mode, intervention``; ``mode`` is the grid mode:
  which evaluator computed the table), then the metrics, then :data:`PATH` (the route that
  computed the row) and :data:`SECONDS`.  A checkpoint study adds :data:`CHECKPOINT_COLUMNS`
  (``step, variant``).  Every other column is a metric (:func:`is_metric`).
- :data:`P_ANSWER` (``p_answer``) is the probability of the right answer everywhere: toy,
  memory, dynamics, Pythia and reports.  The toy's last-FFN-removed variant was ``ffn2_removed``
  in files written before layers were 0-based (now ``last_ffn_removed``); :func:`upgrade_columns`
  / :func:`read_table` read those under the current name.
- :func:`keep_key`: the one way two keep fractions are compared (rounded to 12 decimals).
- :func:`baseline_row`, :func:`configuration_row`: the rows of a truncation table.
- :func:`default_metric`: the metric a table is judged by when none is named.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable, Mapping

__all__ = [
    "read_json_object",
    "CONFIG_COLUMNS", "CHECKPOINT_COLUMNS", "SECONDS", "P_ANSWER", "NON_METRIC", "LEGACY_COLUMNS",
    "DEFAULT_METRICS", "is_metric", "metric_columns", "check_metric", "keep_key", "same_keep", "find_row",
    "baseline_row", "configuration_row", "variant_row", "tidy_truncation", "default_metric", "upgrade_columns",
    "read_table", "upgrade_name", "upgrade_record", "PATH", "N_ITEMS", "LOWER_IS_BETTER",
    "VARIANT_METRICS", "PATCHING_COLUMNS", "LAST_FFN_REMOVED",
]

#: descriptor columns of a truncation-study row, in table order (the metrics follow them)
CONFIG_COLUMNS = ("baseline", "layer", "matrix", "keep", "rank", "max_rank", "identity", "rule", "svd", "mode",
                  "intervention")
#: the last column of a study row: seconds spent computing it
SECONDS = "seconds"
#: columns a checkpoint study adds in front: the training step and (full/truncated/best) variant
CHECKPOINT_COLUMNS = ("step", "variant")
#: which route computed a truncation row: "fast" (the grid engine's low-rank route), "reference" (one
#: full evaluation with the intervention applied), "identity" (full rank: the baseline's metrics)
PATH = "path"
#: every column that is not a metric
NON_METRIC = frozenset(CONFIG_COLUMNS + CHECKPOINT_COLUMNS + (SECONDS, PATH))
#: the probability of the right answer (the name in every table of every system)
P_ANSWER = "p_answer"
#: the columns of a patching scan (mechtrunc.analysis.patching): one row per patched activation
PATCHING_COLUMNS = ("direction", "site", "layer", "head", "position", "metric", "value", "clean", "corrupted",
                    "effect", "effect_low", "effect_high")
#: the metrics shown for each variant of a trained toy model, memory or minimal model
VARIANT_METRICS = ("accuracy", "p_noise", P_ANSWER)
#: the number of scored items: a metric column, but not one to judge a configuration by
N_ITEMS = "n_items"

#: the toy's variant with its last layer's FFN removed (``mechtrunc.models.toy_training.evaluate_toy``; history
#: columns ``last_ffn_removed_accuracy``...)
LAST_FFN_REMOVED = "last_ffn_removed"
#: old column names -> current ones (files written before the rename; ``ffn2_removed`` numbered the
#: layer 1-based)
LEGACY_COLUMNS: dict[str, str] = {"ffn2_removed": LAST_FFN_REMOVED}
# old names inside longer column names: ``ffn2_removed_accuracy`` (the toy's history)
_LEGACY_RE = re.compile(r"(?<![A-Za-z0-9])(" + "|".join(map(re.escape, LEGACY_COLUMNS)) + r")(?![A-Za-z0-9])")

#: metrics a table is judged by when none is named, in order of preference: the logit
#: difference against the generic competitor (Pythia tasks: " the"; the toy task: the noise
#: token), then P(answer), then accuracy
DEFAULT_METRICS = ("logit_diff_the", "logit_diff_noise", P_ANSWER, "accuracy")
#: metrics where lower is better
LOWER_IS_BETTER = frozenset({"loss"})


def is_metric(column: str) -> bool:
    """Whether ``column`` of a study table holds a measurement (not a descriptor or timing)."""
    return column not in NON_METRIC


def metric_columns(df) -> list[str]:
    """The numeric metric columns of a table that a configuration can be judged by
    (``n_items`` excluded), in table order."""
    import pandas as pd

    return [c for c in df.columns if is_metric(c) and c != N_ITEMS and pd.api.types.is_numeric_dtype(df[c])]


def check_metric(df, metric: str) -> str:
    """``metric`` if it is a metric column of ``df``; otherwise ValueError listing the valid ones."""
    if metric not in df.columns or not is_metric(metric):
        raise ValueError(f"unknown metric {metric!r}; metrics in this table: {', '.join(metric_columns(df))}")
    return metric


def default_metric(columns: Iterable[str]) -> str:
    """The first of :data:`DEFAULT_METRICS` among ``columns`` (a table's columns); ValueError
    when none is there."""
    cols = list(columns)
    for m in DEFAULT_METRICS:
        if m in cols:
            return m
    raise ValueError(f"the table has none of the default metrics {', '.join(DEFAULT_METRICS)}; "
                     f"name one of its columns: {', '.join(c for c in cols if is_metric(c))}")


def keep_key(keep) -> float:
    """The key two keep fractions are compared by (equal keys: the same configuration)."""
    return round(float(keep), 12)


def same_keep(values, keep):
    """Element-wise ``keep_key(values) == keep_key(keep)`` for a pandas Series of keeps."""
    return values.astype(float).round(12) == keep_key(keep)


def find_row(df, config: Mapping):
    """The non-baseline row of a truncation table with ``config``'s layer, matrix and keep
    (a pandas Series), or None."""
    base = df["baseline"].astype(bool)
    m = df[~base & (df["layer"] == config["layer"]) & (df["matrix"] == config["matrix"])
           & same_keep(df["keep"], config["keep"])]
    return m.iloc[0] if len(m) else None


def baseline_row(metrics: Mapping, *, rule: str, svd: str, mode: str, seconds: float,
                 path: str = "reference") -> dict:
    """The row of the unmodified model in a truncation table."""
    return {"baseline": True, "layer": None, "matrix": "none", "keep": None, "rank": None, "max_rank": None,
            "identity": False, "rule": rule, "svd": svd, "mode": mode, "intervention": "full",
            **metrics, PATH: path, SECONDS: seconds}


def configuration_row(layer: int, matrix: str, keep: float, rank: int, max_rank: int, metrics: Mapping, *,
                      rule: str, svd: str, mode: str, intervention: str, seconds: float,
                      path: str = "reference") -> dict:
    """The row of one (layer, matrix, keep) configuration in a truncation table; ``identity`` is
    true when the kept rank is the full rank (its ``path`` is then ``"identity"``)."""
    identity = rank == max_rank
    return {"baseline": False, "layer": layer, "matrix": matrix, "keep": keep, "rank": rank, "max_rank": max_rank,
            "identity": identity, "rule": rule, "svd": svd, "mode": mode, "intervention": intervention,
            **metrics, PATH: "identity" if identity else path, SECONDS: seconds}


def variant_row(step: int, variant: str, intervention: str, metrics: Mapping, *, seconds: float) -> dict:
    """The row of one (step, variant) in a checkpoint study without a grid (variants ``full``
    and ``truncated``)."""
    return {"step": step, "variant": variant, "intervention": intervention, **metrics, SECONDS: seconds}


def tidy_truncation(df):
    """A truncation table with its column types (nullable ints, float keep, bool flags) and
    order: the descriptor columns, the metrics (and anything else), then ``seconds``."""
    import math

    import pandas as pd

    df = df.copy()
    for col in ("layer", "rank", "max_rank"):
        df[col] = pd.array([None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
                            for v in df[col]], dtype="Int64")
    df["keep"] = df["keep"].astype("float64")
    df["baseline"] = df["baseline"].astype(bool)
    df["identity"] = df["identity"].astype(bool)
    rest = [c for c in df.columns if c not in CONFIG_COLUMNS and c not in (PATH, SECONDS)]
    tail = [PATH, SECONDS] if PATH in df.columns else [SECONDS]
    return df[list(CONFIG_COLUMNS) + rest + tail].reset_index(drop=True)


def upgrade_name(column: str) -> str:
    """``column`` under its current name (``ffn2_removed`` -> ``last_ffn_removed``,
    ``ffn2_removed_accuracy`` -> ``last_ffn_removed_accuracy``)."""
    return _LEGACY_RE.sub(lambda m: LEGACY_COLUMNS[m.group(1)], column)


def upgrade_columns(df):
    """``df`` with old column names replaced by the current ones (a copy when any changed; a
    column whose new name is already present is dropped in favour of the present one)."""
    renames = {c: upgrade_name(c) for c in df.columns if isinstance(c, str) and upgrade_name(c) != c}
    if not renames:
        return df
    clash = [old for old, new in renames.items() if new in df.columns]
    return df.drop(columns=clash).rename(columns={o: n for o, n in renames.items() if o not in clash})


def upgrade_record(row: Mapping) -> dict:
    """A row dict (e.g. a line of ``rows.jsonl``) with old keys under their current names."""
    out = {}
    for k, v in row.items():
        new = upgrade_name(k) if isinstance(k, str) else k
        if new != k and new in row:
            continue
        out[new] = v
    return out


def read_table(path: str | os.PathLike):
    """A result table from a ``.csv``, ``.parquet`` or ``.jsonl`` (one row object per line) file,
    with old column names under the current ones (see :data:`LEGACY_COLUMNS`)."""
    import json

    import pandas as pd

    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".csv":
        df = pd.read_csv(path)
    elif ext == ".parquet":
        df = pd.read_parquet(path)
    elif ext == ".jsonl":
        with open(path, encoding="utf-8") as f:
            df = pd.DataFrame([json.loads(line) for line in f if line.strip()])
    else:
        raise ValueError(f"{path!r}: unknown table extension {ext!r}; valid: '.csv', '.parquet', '.jsonl'")
    return upgrade_columns(df)


def read_json_object(path, directory: str = "result") -> dict:
    """The JSON object in the file ``path`` of a ``directory`` directory ("result", "run").
    ValueError naming the file when it cannot be read or holds something else (the directory
    "looks corrupt")."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{str(path)!r} is not readable JSON ({e}); the {directory} directory looks corrupt") from None
    if not isinstance(value, dict):
        raise ValueError(f"{str(path)!r} does not hold a JSON object")
    return value
