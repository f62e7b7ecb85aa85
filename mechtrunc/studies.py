"""Studies on language models (Pythia and friends): the LASER truncation grid, the checkpoint
sweep, and a report tying the best truncation to attribution.

- :func:`truncation_study`: every (layer, matrix, keep) truncation evaluated on a prompt set,
  as a tidy DataFrame with a baseline row; resumable (one JSON line per finished row).
- :func:`best_configuration`, :func:`as_truncate`: the best non-baseline row of a study, and
  the :class:`~mechtrunc.Truncate` that reproduces it.
- :func:`truncation_heatmap`, :func:`checkpoint_plot`: figures (PNG, no display needed).
- :func:`checkpoint_study`: the full model and one truncation evaluated over training
  checkpoints, one model in memory at a time; resumable.
- :func:`study_report`: heatmap, best configuration and its attribution change, in one folder.
- :func:`prompts_for_task`: ``"ioi"``, ``"factual"`` or a CSV/JSONL path to a PromptSet.
- :func:`train_neox_recall`: a small Hugging Face GPT-NeoX trained on the noisy in-context
  recall task and saved with ``save_pretrained`` (the toy phenomenon on a Pythia architecture).

Resumable outputs: with ``out=DIR`` each finished row is appended to ``DIR/rows.jsonl`` as soon
as it is computed and ``DIR/study.json`` records what the rows depend on (model fingerprint,
prompt fingerprint, rank rule...).  Rerunning with the same arguments recomputes only the rows
that are missing; rerunning with different ones raises ValueError instead of mixing results.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pandas as pd
import torch

from mechtrunc.adapters import MATRICES, adapt
from mechtrunc.attribution import attribute_change
from mechtrunc.interventions import Compose, Intervention, Truncate
from mechtrunc.metrics import evaluate
from mechtrunc.prompts import PromptSet

__all__ = [
    "truncation_study", "best_configuration", "as_truncate", "truncation_heatmap", "checkpoint_study",
    "checkpoint_plot", "study_report", "prompts_for_task", "train_neox_recall", "recall_tokenizer_dir",
]

_KEY_COLS = ("layer", "matrix", "keep")


# ----------------------------------------------------------------------------------------
# fingerprints and the resumable row store
# ----------------------------------------------------------------------------------------
def _prompts_fingerprint(prompts: PromptSet) -> str:
    h = hashlib.sha1()
    for t in (prompts.tokens, prompts.rows, prompts.pos, prompts.answer, prompts.competitors):
        t = t.detach().to("cpu", torch.long).contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    h.update("|".join(prompts.competitor_names).encode())
    return h.hexdigest()[:16]


def _model_fingerprint(model) -> dict:
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


class _RowStore:
    """``rows.jsonl`` (one finished row per line) plus ``study.json`` (what rows depend on;
    its ``info`` entry is informational and not compared)."""

    def __init__(self, out, meta: dict, key_fn: Callable[[dict], tuple]):
        self.key_fn = key_fn
        self.rows: dict[tuple, dict] = {}
        self.path = None
        if out is None:
            return
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "rows.jsonl"
        meta_path = out / "study.json"
        if meta_path.exists():
            old = json.loads(meta_path.read_text())
            diff = {k: (old.get(k), v) for k, v in meta.items() if k != "info" and old.get(k) != v}
            if diff:
                detail = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
                raise ValueError(
                    f"{str(out)!r} holds a study with different settings ({detail}); "
                    "use a new output directory or delete the old one"
                )
        else:
            meta_path.write_text(json.dumps(meta, indent=2))
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


def _write_tables(df: pd.DataFrame, out, stem: str) -> None:
    if out is None:
        return
    out = Path(out)
    df.to_csv(out / f"{stem}.csv", index=False)
    try:
        df.to_parquet(out / f"{stem}.parquet", index=False)
    except ImportError as e:  # pyarrow missing
        warnings.warn(f"{stem}.parquet was not written (install pyarrow): {e}", stacklevel=3)


def _progress(total: int, desc: str, enabled: bool, initial: int = 0):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="eval", dynamic_ncols=True)


def _metrics(df_row: pd.DataFrame) -> dict:
    row = df_row.iloc[0].to_dict()
    row.pop("variant", None)
    return {k: float(v) for k, v in row.items()}


# ----------------------------------------------------------------------------------------
# the truncation grid
# ----------------------------------------------------------------------------------------
def _keep_key(keep: float) -> float:
    return round(float(keep), 12)


def _study_key(row: dict) -> tuple:
    if row.get("baseline"):
        return ("baseline",)
    return (int(row["layer"]), str(row["matrix"]), _keep_key(row["keep"]))


def _validate_grid(adapter, layers, matrices, keeps):
    layers = list(range(adapter.n_layers)) if layers is None else list(layers)
    if not layers:
        raise ValueError("layers is empty: give at least one layer (or None for all)")
    checked_layers = []
    for layer in layers:
        try:
            as_int = int(layer)
        except (TypeError, ValueError):
            raise ValueError(f"layer {layer!r} is not an integer") from None
        if as_int != layer or isinstance(layer, bool):
            raise ValueError(f"layer {layer!r} is not an integer")
        checked_layers.append(adapter.check_layer(as_int))
    matrices = [matrices] if isinstance(matrices, str) else list(matrices)
    if not matrices:
        raise ValueError(f"matrices is empty: give at least one of {', '.join(MATRICES)}")
    for m in matrices:
        if m not in MATRICES:
            raise ValueError(f"unknown matrix {m!r}; valid matrices: {', '.join(MATRICES)}")
        if m != "attn.OV":
            for layer in checked_layers:
                adapter.matrix(m, layer)  # raises for a missing MLP
    keeps = [keeps] if isinstance(keeps, (int, float)) else list(keeps)
    if not keeps:
        raise ValueError("keeps is empty: give at least one fraction in [0, 1]")
    checked_keeps = []
    for k in keeps:
        try:
            kf = float(k)
        except (TypeError, ValueError):
            raise ValueError(f"keep {k!r} is not a number in [0, 1]") from None
        if not 0.0 <= kf <= 1.0:
            raise ValueError(f"keep must be in [0, 1], got {k!r}")
        checked_keeps.append(kf)
    return _dedupe(checked_layers), _dedupe(matrices), _dedupe(checked_keeps, _keep_key)


def _dedupe(xs, key=lambda x: x) -> list:
    seen, out = set(), []
    for x in xs:
        if key(x) not in seen:
            seen.add(key(x))
            out.append(x)
    return out


def _max_rank(adapter, matrix: str, layer: int) -> int:
    return adapter.d_head if matrix == "attn.OV" else adapter.matrix(matrix, layer).max_rank


def truncation_study(
    model,
    prompts: PromptSet,
    layers: Iterable[int] | None = None,
    matrices: Sequence[str] | str = ("mlp.W_in", "mlp.W_out"),
    keeps: Sequence[float] | float = (1, 0.5, 0.2, 0.1, 0.05, 0.01),
    rule: str = "round",
    svd: str = "exact",
    batch_size: int = 32,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    mode: str = "weight",
    svd_cache: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Evaluate every ``Truncate(matrix, layer, keep)`` of the grid on ``prompts``.

    Returns a tidy DataFrame, one row per (layer, matrix, keep) in the requested order, after
    one ``baseline`` row (the unmodified model; ``layer``/``keep``/``rank`` empty, ``matrix``
    ``"none"``).  Columns: ``baseline, layer, matrix, keep, rank, max_rank, identity, rule,
    svd, mode, intervention`` then every metric of :func:`mechtrunc.metrics.metrics_from_logits`
    (``n_items, accuracy, p_answer, loss, p_<comp>, acc_vs_<comp>, logit_diff_<comp>``) and
    ``seconds``.  A configuration that keeps the full rank (``keep=1``) is the identity: its row
    reuses the baseline evaluation (``identity`` true) instead of recomputing it.

    Args:
        layers: layers to truncate (default all); out of range -> ValueError.
        matrices: names from :data:`mechtrunc.MATRICES` (``attn.OV`` included); unknown ->
            ValueError.
        keeps: fractions of the maximum rank in [0, 1] (rounded by ``rule``, see
            :func:`mechtrunc.rank_for_keep`); 0 removes the matrix.
        rule, svd, mode: passed to :class:`mechtrunc.Truncate` (``mode="hook"`` reuses one SVD
            per matrix across keeps; ``"weight"``, the default, rewrites the weight as LASER does;
            ``"engine"`` runs :func:`mechtrunc._grid_engine.evaluate_grid`: the same numbers (to
            ~1e-6 in float32) from cached clean residuals, all keeps of a layer in one batched
            forward of up to ``max(batch_size, 256)`` (prompt, configuration) rows, logits only
            at the read positions; its rows arrive a layer at a time and ``seconds`` is the
            time since the previous row; ``svd="exact"`` only).
        svd_cache: ``mode="engine"``: a directory of decompositions keyed by the weights' hash
            (default ``out/svd_cache`` when ``out`` is given), so reruns and other grids on the
            same checkpoint skip them.
        out: a directory; finished rows are appended to ``out/rows.jsonl`` and a rerun with the
            same settings skips them; at the end ``out/truncation.csv`` and
            ``out/truncation.parquet`` hold the returned table.
        progress: show a tqdm bar.
    """
    adapter = adapt(model)
    layers, matrices, keeps = _validate_grid(adapter, layers, matrices, keeps)
    Truncate(matrices[0], layer=layers[0], keep=keeps[0], rule=rule, svd=svd,
             mode="hook" if mode == "engine" else mode)  # validates rule
    if svd not in ("exact", "randomized"):
        raise ValueError(f"unknown svd method {svd!r}; valid: 'exact', 'randomized'")
    if mode not in ("weight", "hook", "engine"):
        raise ValueError(f"unknown mode {mode!r}; valid: 'weight', 'hook', 'engine'")
    if mode == "engine" and svd != "exact":
        raise ValueError(f"mode='engine' computes exact decompositions; give svd='exact', not {svd!r}")
    if len(prompts) == 0:
        raise ValueError("the prompt set has no items to score")
    cfg = getattr(model, "cfg", None)
    meta = {"kind": "truncation", "model": _model_fingerprint(model), "prompts": _prompts_fingerprint(prompts),
            "n_items": len(prompts), "rule": rule, "svd": svd, "mode": mode,
            "info": {"model_name": str(getattr(cfg, "model_name", type(model).__name__)),
                     "revision": getattr(cfg, "revision", None)}}
    store = _RowStore(out, meta, _study_key)
    common = {"rule": rule, "svd": svd, "mode": mode}

    grid = []
    for layer in layers:
        for m in matrices:
            max_rank = _max_rank(adapter, m, layer)
            for keep in keeps:
                iv = Truncate(m, layer=layer, keep=keep, rule=rule, svd=svd, mode="hook" if mode == "engine" else mode)
                grid.append((layer, m, keep, iv, iv.ranks(adapter, max_rank)[0], max_rank))
    todo = [g for g in grid if store.get((g[0], g[1], _keep_key(g[2]))) is None and g[4] != g[5]]
    need_base = store.get(("baseline",)) is None
    bar = _progress(len(todo) + int(need_base), "truncation", progress)

    if mode == "engine" and (need_base or todo):  # rows arrive a layer at a time; stored as they come
        from mechtrunc._grid_engine import evaluate_grid

        labels = {(g[0], g[1], _keep_key(g[2])): (g[2], g[3].label) for g in todo}
        cache_dir = svd_cache if svd_cache is not None else (Path(out) / "svd_cache" if out is not None else None)
        t0 = time.perf_counter()
        for r in evaluate_grid(model, prompts, [(g[0], g[1], g[2]) for g in todo], rule=rule,
                               batch_size=max(batch_size, 256), svd_cache=cache_dir, baseline=need_base):
            seconds, t0 = time.perf_counter() - t0, time.perf_counter()
            if r.baseline:
                desc = {"baseline": True, "layer": None, "matrix": "none", "keep": None, "rank": None,
                        "max_rank": None, "identity": False, **common, "intervention": "full"}
            else:
                keep, label = labels[(r.layer, r.matrix, _keep_key(r.keep))]
                desc = {"baseline": False, "layer": r.layer, "matrix": r.matrix, "keep": keep, "rank": r.rank,
                        "max_rank": r.max_rank, "identity": False, **common, "intervention": label}
            store.add({**desc, **r.metrics, "seconds": seconds})
            if bar is not None:
                bar.update(1)
        need_base = False

    if need_base:
        t0 = time.perf_counter()
        metrics = _metrics(evaluate(model, prompts, batch_size=batch_size, label="full"))
        store.add({"baseline": True, "layer": None, "matrix": "none", "keep": None, "rank": None,
                   "max_rank": None, "identity": False, **common, "intervention": "full", **metrics,
                   "seconds": time.perf_counter() - t0})
        if bar is not None:
            bar.update(1)
    base = store.get(("baseline",))
    base_metrics = {k: v for k, v in base.items() if k not in _NON_METRIC}

    rows = [base]
    for layer, m, keep, iv, rank, max_rank in grid:
        key = (layer, m, _keep_key(keep))
        row = store.get(key)
        if row is None:
            desc = {"baseline": False, "layer": layer, "matrix": m, "keep": keep, "rank": rank,
                    "max_rank": max_rank, "identity": rank == max_rank, **common, "intervention": iv.label}
            if rank == max_rank:  # the identity: reuse the baseline evaluation
                row = {**desc, **base_metrics, "seconds": 0.0}
            else:
                if bar is not None:
                    bar.set_postfix_str(iv.label, refresh=False)
                t0 = time.perf_counter()
                metrics = _metrics(evaluate(model, prompts, iv, batch_size=batch_size))
                row = {**desc, **metrics, "seconds": time.perf_counter() - t0}
                if bar is not None:
                    bar.update(1)
            store.add(row)
        rows.append(row)
    if bar is not None:
        bar.close()

    df = _tidy(pd.DataFrame(rows))
    _write_tables(df, out, "truncation")
    return df


_NON_METRIC = {"baseline", "layer", "matrix", "keep", "rank", "max_rank", "identity", "rule", "svd", "mode",
               "intervention", "seconds"}


def _tidy(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for col in ("layer", "rank", "max_rank"):
        df[col] = pd.array([None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
                            for v in df[col]], dtype="Int64")
    df["keep"] = df["keep"].astype("float64")
    df["baseline"] = df["baseline"].astype(bool)
    df["identity"] = df["identity"].astype(bool)
    front = ["baseline", "layer", "matrix", "keep", "rank", "max_rank", "identity", "rule", "svd", "mode",
             "intervention"]
    rest = [c for c in df.columns if c not in front and c != "seconds"]
    return df[front + rest + ["seconds"]].reset_index(drop=True)


def best_configuration(df: pd.DataFrame, metric: str = "logit_diff_the", higher_is_better: bool = True) -> dict:
    """The best non-baseline row of a :func:`truncation_study` table by ``metric``.

    Returns ``{"layer", "matrix", "keep", "rank", "metric", "value", "baseline_value",
    "improvement", "rule", "svd", "mode"}`` (``improvement`` > 0 means better than the
    unmodified model; ties go to the first row in table order)."""
    if metric not in df.columns or metric in _NON_METRIC:
        valid = [c for c in df.columns if c not in _NON_METRIC]
        raise ValueError(f"unknown metric {metric!r}; metrics in this table: {', '.join(valid)}")
    is_base = df["baseline"].astype(bool) if "baseline" in df.columns else pd.Series(False, index=df.index)
    cand = df[~is_base & df[metric].notna()]
    if cand.empty:
        raise ValueError(f"the table has no non-baseline rows with a value for {metric!r}")
    idx = cand[metric].idxmax() if higher_is_better else cand[metric].idxmin()
    row = cand.loc[idx]
    base = df.loc[is_base, metric]
    base_value = float(base.iloc[0]) if len(base) else None
    value = float(row[metric])
    return {
        "layer": int(row["layer"]), "matrix": str(row["matrix"]), "keep": float(row["keep"]),
        "rank": int(row["rank"]) if "rank" in row and not pd.isna(row["rank"]) else None,
        "metric": metric, "value": value, "baseline_value": base_value,
        "improvement": None if base_value is None else (value - base_value) * (1 if higher_is_better else -1),
        "rule": str(row.get("rule", "round")), "svd": str(row.get("svd", "exact")), "mode": str(row.get("mode", "weight")),
    }


def as_truncate(config: dict) -> Truncate:
    """The :class:`~mechtrunc.Truncate` of a configuration dict (e.g. from
    :func:`best_configuration`)."""
    missing = [k for k in ("layer", "matrix", "keep") if k not in config]
    if missing:
        raise ValueError(f"configuration {config!r} lacks {', '.join(missing)}")
    return Truncate(config["matrix"], layer=int(config["layer"]), keep=float(config["keep"]),
                    rule=config.get("rule", "round"), svd=config.get("svd", "exact"),
                    mode=config.get("mode", "weight"))


# ----------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def truncation_heatmap(
    df: pd.DataFrame, metric: str, path: str | os.PathLike, higher_is_better: bool = True, title: str | None = None,
) -> Path:
    """One panel per matrix, layers (rows) by keep fractions (columns, largest first), each cell
    annotated with ``metric``; colours diverge around the baseline value (blue = better).
    Saved as PNG at ``path`` (the Agg canvas is used directly: no display, pyplot untouched)."""
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    if metric not in df.columns or metric in _NON_METRIC:
        valid = [c for c in df.columns if c not in _NON_METRIC]
        raise ValueError(f"unknown metric {metric!r}; metrics in this table: {', '.join(valid)}")
    is_base = df["baseline"].astype(bool)
    grid = df[~is_base]
    if grid.empty:
        raise ValueError("the table has no truncation rows to plot")
    base = float(df.loc[is_base, metric].iloc[0]) if is_base.any() else None
    matrices = list(dict.fromkeys(grid["matrix"]))
    layers = sorted(int(v) for v in grid["layer"].unique())
    keeps = sorted({float(k) for k in grid["keep"]}, reverse=True)
    vals = grid[metric].astype(float)
    vmin, vmax = float(np.nanmin(vals)), float(np.nanmax(vals))
    if base is not None:
        vmin, vmax = min(vmin, base), max(vmax, base)
    if vmin == vmax:
        vmin, vmax = vmin - 1e-6, vmax + 1e-6
    center = base if base is not None and vmin < base < vmax else None
    norm = TwoSlopeNorm(vcenter=center, vmin=vmin, vmax=vmax) if center is not None else None
    cmap = "RdBu" if higher_is_better else "RdBu_r"
    fs = max(5, min(9, int(120 / max(len(layers) * 1.0, len(keeps) * 1.5, 1))))
    fig = _figure(1.2 + 0.75 * len(keeps) * len(matrices), 1.2 + 0.32 * len(layers) + 0.6)
    axes = fig.subplots(1, len(matrices), squeeze=False)[0]
    im = None
    for ax, m in zip(axes, matrices):
        sub = grid[grid["matrix"] == m]
        table = sub.pivot_table(index="layer", columns="keep", values=metric, aggfunc="first")
        table = table.reindex(index=layers, columns=keeps)
        data = table.to_numpy(dtype=float)
        im = ax.imshow(data, aspect="auto", cmap=cmap, norm=norm,
                       vmin=None if norm is not None else vmin, vmax=None if norm is not None else vmax)
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                if not np.isnan(data[i, j]):
                    ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=fs)
        ax.set_xticks(range(len(keeps)), [f"{k:g}" for k in keeps])
        ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
        ax.set_xlabel("keep (fraction of rank)")
        ax.set_ylabel("layer")
        ax.set_title(m)
    if im is not None:
        fig.colorbar(im, ax=list(axes), shrink=0.9, label=metric)
    sup = title or metric
    if base is not None:
        sup += f" (full model: {base:.3g})"
    fig.suptitle(sup)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def checkpoint_plot(
    df: pd.DataFrame, path: str | os.PathLike, metrics: Sequence[str] = ("p_answer", "p_the"), title: str | None = None,
) -> Path:
    """Metrics of a :func:`checkpoint_study` table against the training step (symlog axis):
    one colour per metric, solid = full model, dashed = truncated.  Saved as PNG."""
    missing = [m for m in metrics if m not in df.columns]
    if missing:
        valid = [c for c in df.columns if c not in ("step", "variant", "intervention", "seconds")]
        raise ValueError(f"unknown metric(s) {missing}; metrics in this table: {', '.join(valid)}")
    fig = _figure(7, 4)
    ax = fig.subplots()
    styles = {"full": "-", "truncated": "--"}
    for i, m in enumerate(metrics):
        for variant, sub in df.groupby("variant", sort=False):
            sub = sub.sort_values("step")
            ax.plot(sub["step"], sub[m], styles.get(variant, ":"), color=f"C{i}", marker="o", markersize=3,
                    label=f"{m} ({variant})")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("training step")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


# ----------------------------------------------------------------------------------------
# prompts
# ----------------------------------------------------------------------------------------
def prompts_for_task(task: str | os.PathLike, tokenizer, n: int = 200, seed: int = 0) -> PromptSet:
    """``"ioi"`` (``n`` prompts from ``seed``), ``"factual"`` (the built-in facts) or the path
    of a CSV/JSONL prompt file (see :mod:`mechtrunc.tasks.files`)."""
    if str(task) == "ioi":
        from mechtrunc.tasks.ioi import ioi_prompts

        return ioi_prompts(tokenizer, n=n, seed=seed)
    if str(task) == "factual":
        from mechtrunc.tasks.factual import factual_prompts

        return factual_prompts(tokenizer)
    if not Path(task).is_file():
        raise ValueError(f"unknown task {str(task)!r}: give 'ioi', 'factual' or the path of a CSV/JSONL prompt file")
    from mechtrunc.tasks.files import load_prompts

    return load_prompts(task, tokenizer)


# ----------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------
def _as_intervention(truncation) -> Intervention | None:
    if truncation is None or isinstance(truncation, Intervention):
        return truncation
    if isinstance(truncation, dict):
        return as_truncate(truncation)
    if isinstance(truncation, (list, tuple)):
        items = [_as_intervention(t) for t in truncation]
        return Compose(tuple(i for i in items if i is not None))
    raise TypeError(f"truncation must be an Intervention, a configuration dict or None, got {type(truncation).__name__}")


def checkpoint_study(
    load_fn_or_name: Callable[[int], object] | str,
    steps: Iterable[int],
    prompts_fn: Callable[[object], PromptSet] | PromptSet | str,
    truncation: Intervention | dict | None = None,
    batch_size: int = 32,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    **load_kwargs,
) -> pd.DataFrame:
    """Evaluate the full model, and the model with ``truncation``, at each training step.

    Args:
        load_fn_or_name: ``step -> model`` (a TransformerBridge), or a hub id / name for
            :func:`mechtrunc.pythia.load_model` (``load_kwargs`` such as ``dtype``, ``device``,
            ``device_map`` go to it).  Steps are validated up front for Pythia ids.
        steps: training steps, evaluated in the given order (duplicates dropped).
        prompts_fn: ``tokenizer -> PromptSet`` (called with each model's tokenizer), a fixed
            PromptSet, or a task for :func:`prompts_for_task` (``"ioi"``, ``"factual"``, a path).
        truncation: an Intervention (typically the best configuration at the final step), a
            configuration dict from :func:`best_configuration`, or None (full model only).
        out: a directory; one JSON line per finished (step, variant) in ``out/rows.jsonl``; a
            rerun skips finished steps without loading them; at the end ``out/checkpoints.csv``
            and ``out/checkpoints.parquet``.

    Returns:
        A tidy DataFrame with ``step, variant ("full"/"truncated"), intervention`` and every
        metric column, in step order.  One model is in memory at a time: each is freed before
        the next is loaded.
    """
    from mechtrunc import pythia

    iv = _as_intervention(truncation)
    steps = list(dict.fromkeys(int(s) for s in steps))
    if not steps:
        raise ValueError("steps is empty: give at least one training step")
    if isinstance(load_fn_or_name, (str, os.PathLike)):
        name = str(load_fn_or_name)
        if pythia.is_pythia(name):
            for s in steps:
                pythia.check_step(s)
        load_fn = lambda s: pythia.load_model(name, step=s, **load_kwargs)
        source = name
    elif callable(load_fn_or_name):
        if load_kwargs:
            raise TypeError(f"load options {sorted(load_kwargs)} only apply when a model name is given")
        load_fn = load_fn_or_name
        source = getattr(load_fn_or_name, "__qualname__", type(load_fn_or_name).__name__)
    else:
        raise TypeError("load_fn_or_name must be a model name or a callable step -> model")
    if isinstance(prompts_fn, PromptSet):
        fixed = prompts_fn
        make_prompts = lambda tok: fixed
        prompt_desc = _prompts_fingerprint(fixed)
    elif isinstance(prompts_fn, (str, os.PathLike)):
        task = prompts_fn
        make_prompts = lambda tok: prompts_for_task(task, tok)
        prompt_desc = str(task)
    elif callable(prompts_fn):
        make_prompts = prompts_fn
        prompt_desc = getattr(prompts_fn, "__qualname__", type(prompts_fn).__name__)
    else:
        raise TypeError("prompts_fn must be a callable tokenizer -> PromptSet, a PromptSet or a task name")

    variants = [("full", ())] + ([("truncated", (iv,))] if iv is not None else [])
    # callables are described (info), not compared: a rerun from another script may name them differently
    meta = {"kind": "checkpoints", "truncation": iv.label if iv is not None else None,
            "source": source if isinstance(load_fn_or_name, (str, os.PathLike)) else "callable",
            "prompts": prompt_desc if not callable(prompts_fn) or isinstance(prompts_fn, PromptSet) else "callable",
            "info": {"source": source, "prompts": prompt_desc}}
    store = _RowStore(out, meta, lambda r: (int(r["step"]), str(r["variant"])))
    todo = [s for s in steps if any(store.get((s, v)) is None for v, _ in variants)]
    bar = _progress(len(steps), "checkpoints", progress, initial=len(steps) - len(todo))
    if bar is not None:
        bar.unit = "step"
    for step in todo:
        if bar is not None:
            bar.set_postfix_str(f"step {step}", refresh=True)
        model = load_fn(step)
        try:
            prompts = make_prompts(getattr(model, "tokenizer", None))
            for variant, ivs in variants:
                if store.get((step, variant)) is not None:
                    continue
                t0 = time.perf_counter()
                metrics = _metrics(evaluate(model, prompts, *ivs, batch_size=batch_size, label=variant))
                store.add({"step": step, "variant": variant,
                           "intervention": ivs[0].label if ivs else "full", **metrics,
                           "seconds": time.perf_counter() - t0})
        finally:
            pythia.free_model(model)  # collects garbage and empties the CUDA cache
            del model
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    rows = [store.get((s, v)) for s in steps for v, _ in variants]
    df = pd.DataFrame(rows)
    df["step"] = df["step"].astype("int64")
    cols = ["step", "variant", "intervention"] + [c for c in df.columns if c not in ("step", "variant", "intervention", "seconds")] + ["seconds"]
    df = df[cols].reset_index(drop=True)
    _write_tables(df, out, "checkpoints")
    return df


# ----------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------
def study_report(
    model,
    prompts: PromptSet,
    df: pd.DataFrame,
    metric: str = "logit_diff_the",
    out_dir: str | os.PathLike = "report",
    higher_is_better: bool = True,
    batch_size: int = 32,
) -> dict[str, Path]:
    """Write, for a :func:`truncation_study` table: the heatmap of ``metric``
    (``heatmap_<metric>.png``), the best configuration with the full and truncated metrics
    (``best.json``), its :func:`mechtrunc.attribute_change` table per component, i.e. per
    layer and head, MLP, embedding and bias (``attribution_change.csv``) and the same summed
    per layer and kind (``attribution_change_by_layer.csv``).  Returns the paths by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    paths["heatmap"] = truncation_heatmap(df, metric, out / f"heatmap_{metric}.png", higher_is_better=higher_is_better)
    best = best_configuration(df, metric, higher_is_better)
    iv = as_truncate(best)
    is_base = df["baseline"].astype(bool)
    pick = lambda r: {k: (None if pd.isna(v) else float(v)) for k, v in r.items() if k not in _NON_METRIC}
    base_row = df[is_base].iloc[0].to_dict() if is_base.any() else {}
    match = df[~is_base & (df["layer"] == best["layer"]) & (df["matrix"] == best["matrix"])
               & (df["keep"].astype(float).round(12) == round(best["keep"], 12))]
    summary = {"best": best, "intervention": iv.label, "full": pick(base_row),
               "truncated": pick(match.iloc[0].to_dict()) if len(match) else None}
    paths["best"] = out / "best.json"
    paths["best"].write_text(json.dumps(summary, indent=2))
    change = attribute_change(model, prompts, iv, batch_size=batch_size)
    paths["attribution"] = out / "attribution_change.csv"
    change.to_csv(paths["attribution"], index=False)
    by_layer = (change[change["kind"] != "total"]
                .groupby(["competitor", "kind", "layer"], dropna=False)[["clean", "intervened", "change"]]
                .sum().reset_index())
    paths["attribution_by_layer"] = out / "attribution_change_by_layer.csv"
    by_layer.to_csv(paths["attribution_by_layer"], index=False)
    return paths


# ----------------------------------------------------------------------------------------
# the toy phenomenon on a Hugging Face GPT-NeoX
# ----------------------------------------------------------------------------------------
def recall_tokenizer_dir(out_dir: str | os.PathLike, itos: Sequence[str] | None = None) -> Path:
    """Save a word-level tokenizer whose tokens are the recall task's characters (token id =
    index in ``itos``, default the 65 tiny-Shakespeare characters) with ``save_pretrained``.
    It exists so a recall-trained Hugging Face model directory carries a tokenizer (the bridge
    needs one); prompts are built from token ids, not text."""
    from mechtrunc.pythia import word_level_tokenizer_dir

    if itos is None:
        from mechtrunc.tasks.recall import char_stats

        itos = char_stats().itos
    tokens: list[str] = []
    for i, ch in enumerate(itos):  # whitespace characters and repeats get a <c{i}> name
        tokens.append(ch if ch not in tokens and ch.strip() else f"<c{i}>")
    return word_level_tokenizer_dir(out_dir, tokens)


def train_neox_recall(
    out_dir: str | os.PathLike | None = None,
    *,
    task_config=None,
    n_layers: int = 2,
    d_model: int = 128,
    n_heads: int = 4,
    steps: int = 600,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    callback: Callable[[int, object], None] | None = None,
    **config_overrides,
):
    """Train a small Pythia-style Hugging Face ``GPTNeoXForCausalLM`` (parallel attention and
    MLP, rotary on 25% of each head's dimensions, LayerNorm, untied unembedding, ``d_mlp = 4 d``)
    on noisy in-context recall with the paper's masked loss (cross-entropy at trigger positions
    seen for the second time or later), AdamW, batches a pure function of ``(seed, step)``.
    The defaults (d_model 128, T = 64, batch 64, lr 1e-3, 600 steps) show the paper's effect:
    removing the last MLP takes clean accuracy from about 0.5 to about 1.0 (see docs/pythia.md).

    With ``out_dir`` the model and a word-level tokenizer over the task's characters are saved
    with ``save_pretrained`` (loadable with :func:`mechtrunc.pythia.load_model`).
    ``callback(step, model)`` is called after each step (e.g. to evaluate now and then; the
    model is in training mode, dropout is zero).  Extra keyword arguments override the
    ``GPTNeoXConfig``.

    Returns ``(hf_model, task, history)`` with ``history`` a list of ``(step, loss)``.
    """
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from mechtrunc.metrics import masked_cross_entropy
    from mechtrunc.tasks.recall import RecallConfig, RecallTask
    from mechtrunc.training import batch_seed

    cfg_task = task_config or RecallConfig(alpha=0.5, seq_len=64)
    task = RecallTask(cfg_task, device=device)
    args = dict(vocab_size=cfg_task.d_vocab, hidden_size=d_model, num_hidden_layers=n_layers,
                num_attention_heads=n_heads, intermediate_size=4 * d_model, rotary_pct=0.25,
                max_position_embeddings=max(cfg_task.seq_len, 64), use_parallel_residual=True,
                tie_word_embeddings=False, attention_dropout=0.0, hidden_dropout=0.0,
                bos_token_id=0, eos_token_id=0, pad_token_id=0)
    args.update(config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**args)).to(device)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    history = []
    bar = _progress(steps, "train", progress)
    for step in range(1, steps + 1):
        batch = task.sample(batch_size, seed=batch_seed(seed, step))
        logits = model(batch.inputs).logits
        loss = masked_cross_entropy(logits, batch.targets, batch.loss_mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append((step, float(loss.detach())))
        if callback is not None:
            callback(step, model)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    model.eval()
    if out_dir is not None:
        out = Path(out_dir)
        model.save_pretrained(out)
        recall_tokenizer_dir(out, task.itos)
    return model, task, history
