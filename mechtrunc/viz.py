"""Figures and circuit visualisations that work offline.

- :func:`attention_html`: a circuitsvis attention-head view written as a self-contained HTML
  file (the bundled JavaScript is inlined, so it renders from ``file://`` with no network).
- :func:`plot_history`: the toy training curves (accuracy and P(noise), full model vs FFN removed).
- :func:`plot_attribution`: a bar chart of an :func:`~mechtrunc.attribution.attribute_change` table.
- :func:`truncation_heatmap`: a truncation study's metric, layers x keeps, one panel per matrix.
- :func:`checkpoint_plot`: a checkpoint study's metrics against the training step.
- :func:`learning_curves_plot`: :func:`mechtrunc.studies.lm.learning_curves` of several runs,
  one panel per prompt set, one colour per metric, one line per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from mechtrunc.adapters import adapt

__all__ = ["attention_html", "plot_history", "plot_attribution", "truncation_heatmap", "checkpoint_plot",
           "learning_curves_plot", "logit_lens_plot"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@torch.no_grad()
def attention_html(model, tokens, layer: int, path: str | Path, str_tokens: list[str] | None = None) -> Path:
    """Write the attention patterns of every head of ``layer`` on one sequence (``tokens``:
    [pos] or [1, pos]) to a self-contained HTML file; returns the path."""
    import circuitsvis

    adapter = adapt(model)
    adapter.check_layer(layer)
    toks = torch.as_tensor(tokens).reshape(1, -1).to(adapter.device)
    store = {}
    with adapter.hooked(f"blocks.{layer}.attn.hook_pattern", lambda p: store.__setitem__("p", p.detach())):
        adapter.forward(toks)
    pattern = store["p"][0].float().cpu()  # [head, q, k]
    if str_tokens is None:
        tok = getattr(adapter.model, "tokenizer", None)
        str_tokens = ([tok.decode([t]) for t in toks[0].tolist()] if tok is not None
                      else [str(t) for t in toks[0].tolist()])
    if len(str_tokens) != pattern.shape[-1]:
        raise ValueError(f"{len(str_tokens)} token labels for a sequence of {pattern.shape[-1]} tokens")
    rendered = circuitsvis.attention.attention_heads(attention=pattern, tokens=list(str_tokens))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>layer {layer} attention</title>"
                    f"</head><body>\n{rendered.local_src}\n</body></html>\n")
    return path


def plot_history(history: pd.DataFrame, path: str | Path) -> Path:
    """Training curves of a toy run: clean accuracy and P(noise), full vs last FFN removed."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for variant, style in (("full", "-"), ("ffn2_removed", "--")):
        if f"{variant}_accuracy" not in history:
            continue
        axes[0].plot(history["step"], history[f"{variant}_accuracy"], style, label=variant)
        axes[1].plot(history["step"], history[f"{variant}_p_noise"], style, label=variant)
    axes[0].set(xlabel="step", ylabel="clean accuracy", ylim=(0, 1.02), title="accuracy at repeated triggers")
    axes[1].set(xlabel="step", ylabel="P(noise token)", ylim=(0, 1.02), title="probability of the noise token")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def plot_attribution(change: pd.DataFrame, path: str | Path, competitor: str | None = None, top: int = 20) -> Path:
    """Horizontal bars of the clean and intervened attribution of the largest changes."""
    plt = _pyplot()
    df = change[change["kind"] != "total"]
    if competitor is not None:
        df = df[df["competitor"] == competitor]
    else:
        df = df[df["competitor"] == df["competitor"].iloc[0]]
    df = df.reindex(df["change"].abs().sort_values(ascending=False).index).head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(df) + 1.5))
    y = range(len(df))
    ax.barh([i + 0.2 for i in y], df["clean"], height=0.4, label="clean")
    ax.barh([i - 0.2 for i in y], df["intervened"], height=0.4, label="intervened")
    ax.set_yticks(list(y), df["component"])
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("direct logit attribution (answer - competitor)")
    ax.legend()
    return _save(plt, fig, path)


# ----------------------------------------------------------------------------------------
# study figures (Agg canvas directly: no display, pyplot untouched)
# ----------------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def truncation_heatmap(
    df: pd.DataFrame, metric: str, path, higher_is_better: bool = True, title: str | None = None,
) -> Path:
    """One panel per matrix, layers (rows) by keep fractions (columns, largest first), each cell
    annotated with ``metric``; colours diverge around the baseline value (blue = better).
    Saved as PNG at ``path`` (the Agg canvas is used directly: no display, pyplot untouched)."""
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm

    from mechtrunc.results import check_metric

    check_metric(df, metric)
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
    df: pd.DataFrame, path, metrics: Sequence[str] = ("p_answer", "p_the"), title: str | None = None,
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


def logit_lens_plot(
    df: pd.DataFrame, path, metrics: Sequence[str] | None = None, title: str | None = None,
) -> Path:
    """A :func:`mechtrunc.lens.logit_lens` / :func:`~mechtrunc.lens.logit_lens_compare` table
    along the residual stream (x: ``L{layer} {site}`` in depth order): one colour per metric
    (default ``p_answer`` and every competitor's ``p_{name}``, e.g. P(noise), P(' the')), one
    line style per ``label`` (solid = the first, e.g. the full model).  Saved as PNG."""
    for col in ("layer", "site", "depth"):
        if col not in df.columns:
            raise ValueError(f"a logit-lens table needs a {col!r} column; columns: {', '.join(map(str, df.columns))}")
    if metrics is None:
        metrics = ["p_answer"] + [c for c in df.columns if c.startswith("p_") and c != "p_answer"]
    missing = [m for m in metrics if m not in df.columns]
    if missing:
        raise ValueError(f"unknown metric(s) {missing}; metrics in this table: "
                         f"{', '.join(c for c in df.columns if c not in ('label', 'layer', 'site', 'depth'))}")
    df = df if "label" in df.columns else df.assign(label="model")
    fig = _figure(7.5, 4)
    ax = fig.subplots()
    styles = ["-", "--", ":", "-."]
    for j, (label, sub) in enumerate(df.groupby("label", sort=False)):
        sub = sub.sort_values("depth")
        for i, m in enumerate(metrics):
            ax.plot(sub["depth"], sub[m], styles[j % len(styles)], color=f"C{i}", marker="o", markersize=3,
                    label=f"{m} ({label})")
    ticks = df.drop_duplicates("depth").sort_values("depth")
    ax.set_xticks(ticks["depth"], [f"L{l} {s.replace('resid_', '')}" for l, s in zip(ticks["layer"], ticks["site"])],
                  rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("probability (logit lens)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def learning_curves_plot(
    curves: pd.DataFrame, path, panels: dict[str, Sequence[str] | dict[str, str]],
    rows: dict[str, Sequence[str]] | None = None,
) -> Path:
    """Learning curves of several runs (a tidy table with ``run, step, prompts`` and metric
    columns): one panel per entry of ``panels`` (``prompts -> metrics``, or ``prompts ->
    {metric: legend label}``), one colour per metric, one line per run; ``rows`` (``row title ->
    runs``) stacks groups of runs as rows of panels (default: one row of every run).  Symlog
    step axis.  Saved as PNG."""
    for col in ("run", "step", "prompts"):
        if col not in curves.columns:
            raise ValueError(f"curves need a {col!r} column; columns: {', '.join(map(str, curves.columns))}")
    rows = rows if rows is not None else {"": list(dict.fromkeys(curves["run"]))}
    panels = {k: dict(v) if isinstance(v, dict) else {m: m for m in v} for k, v in panels.items()}
    fig = _figure(4.2 * len(panels), 3.2 * len(rows))
    axes = fig.subplots(len(rows), len(panels), squeeze=False)
    for r, (row_title, runs) in enumerate(rows.items()):
        for c, (prompts, metrics) in enumerate(panels.items()):
            ax = axes[r][c]
            sub = curves[(curves["prompts"] == prompts) & curves["run"].isin(list(runs))]
            if sub.empty:
                raise ValueError(f"no curves for prompts {prompts!r} and runs {list(runs)}")
            for i, (m, label) in enumerate(metrics.items()):
                for k, (_, one) in enumerate(sub.groupby("run", sort=False)):
                    one = one.sort_values("step")
                    ax.plot(one["step"], one[m], color=f"C{i}", lw=1.2, alpha=0.85, label=label if k == 0 else None)
            ax.set_xscale("symlog", linthresh=1)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("training step")
            ax.set_title(f"{row_title}: {prompts}" if row_title else prompts, fontsize=10)
            ax.legend(fontsize=7, loc="upper left")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
