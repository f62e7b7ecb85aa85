"""Figures and circuit visualisations that work offline.

- :func:`attention_html`: a circuitsvis attention-head view written as a self-contained HTML
  file (the bundled JavaScript is inlined, so it renders from ``file://`` with no network).
- :func:`plot_history`: the toy training curves (accuracy and P(noise), full model vs FFN removed).
- :func:`plot_attribution`: a bar chart of an :func:`~mechtrunc.analysis.attribution.attribute_change` table.
- :func:`truncation_heatmap`: a truncation study's metric, layers x keeps, one panel per matrix.
- :func:`checkpoint_plot`: a checkpoint study's metrics against the training step.
- :func:`learning_curves_plot`: :func:`mechtrunc.studies.lm.learning_curves` of several runs,
  one panel per prompt set, one colour per metric, one line per run.
- :func:`patching_heatmap`: a :func:`mechtrunc.analysis.patching.patching_scan` table, per direction a
  layer x position panel per site and a layer x head panel for ``z`` (1 = clean, 0 = corrupted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from mechtrunc.core.adapters import adapt
from mechtrunc.core.results import LAST_FFN_REMOVED

__all__ = ["attention_html", "plot_history", "plot_attribution", "truncation_heatmap", "checkpoint_plot",
           "learning_curves_plot", "logit_lens_plot", "patching_heatmap"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _write_png(fig, path) -> Path:
    """Save ``fig`` at ``path`` (parents created), 120 dpi; the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _save(plt, fig, path) -> Path:
    fig.tight_layout()
    path = _write_png(fig, path)
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
    with adapter.hooked(adapter.hook_name("pattern", layer), lambda p: store.__setitem__("p", p.detach())):
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
    for variant, style in (("full", "-"), (LAST_FFN_REMOVED, "--")):
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

    from mechtrunc.core.results import check_metric

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
    return _write_png(fig, path)


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
    return _write_png(fig, path)


def logit_lens_plot(
    df: pd.DataFrame, path, metrics: Sequence[str] | None = None, title: str | None = None,
) -> Path:
    """A :func:`mechtrunc.analysis.lens.logit_lens` / :func:`~mechtrunc.analysis.lens.logit_lens_compare` table
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
    ax.legend(fontsize=7, handlelength=4, loc="upper left")  # long handles: the dashes show
    if title:
        ax.set_title(title)
    return _write_png(fig, path)


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
    return _write_png(fig, path)


def _patch_positions(df: pd.DataFrame) -> list[str]:
    """Position groups in reading order: ``all`` first, then the roles (or absolute positions,
    numerically) in the order the scan wrote them."""
    seen = [str(p) for p in dict.fromkeys(df["position"])]
    rest = [p for p in seen if p != "all"]
    if rest and all(p.lstrip("-").isdigit() for p in rest):
        rest = sorted(rest, key=int)
    return (["all"] if "all" in seen else []) + rest


def patching_heatmap(
    df: pd.DataFrame, path=None, *, directions: Sequence[str] | None = None, sites: Sequence[str] | None = None,
    annotate: bool | None = None, max_annotated: int = 80, limit: float | None = None, title: str | None = None,
):
    """Heatmaps of a :func:`mechtrunc.analysis.patching.patching_scan` table's normalised ``effect``:
    one row of panels per direction (denoising first), one panel per site: layers (rows) by
    position group (columns: ``all``, then the roles) for ``resid_pre``, ``attn_out``, ``mlp_out``...,
    layers by heads for ``z`` (its ``all`` positions).  Diverging colours centred at 0 (= the
    corrupted run's metric, white) with 1 (= the clean run's) marked on the colour bar; the colour
    range is ``[-limit, limit]`` (default: the largest ``|effect|``, at least 1 and at most 2;
    larger values saturate, their annotation still tells them).  Cells are annotated with the
    effect when ``annotate`` (default: when every panel has at most ``max_annotated`` cells).
    NaN effects (clean and corrupted runs score alike) are grey.

    Returns the matplotlib Figure (Agg canvas, pyplot untouched); with ``path`` it is also saved
    there as PNG."""
    directions, sites = _patching_selection(df, directions, sites)
    panels = [[_patching_grid(df[(df["direction"] == d) & (df["site"] == s)], s) for s in sites] for d in directions]
    limit = _patching_limit(df, limit)
    n_cells = max(p[0].size for row in panels for p in row)
    if annotate is None:
        annotate = n_cells <= max_annotated
    fig = _draw_patching(panels, directions, sites, limit, annotate)
    fig.suptitle(_patching_title(df, title), fontsize=10)
    if path is not None:
        _write_png(fig, path)
    return fig


# data shaping: which panels, each panel's layers x columns array, the colour range, the title
def _patching_selection(df: pd.DataFrame, directions, sites) -> tuple[list[str], list[str]]:
    """The directions (denoising first) and sites (``z`` last) of a patching table to draw,
    checked against the table."""
    need = ("direction", "site", "layer", "head", "position", "effect")
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"not a patching_scan table: missing column(s) {', '.join(missing)}; "
                         f"columns: {', '.join(map(str, df.columns))}")
    if df.empty:
        raise ValueError("the patching table has no rows to plot")
    order = {"denoising": 0, "noising": 1}
    have = sorted(dict.fromkeys(df["direction"]), key=lambda d: order.get(d, 2))
    directions = have if directions is None else list(directions)
    bad = [d for d in directions if d not in have]
    if bad:
        raise ValueError(f"direction(s) {bad} not in the table; it holds: {', '.join(have)}")
    site_have = list(dict.fromkeys(df["site"]))
    sites = site_have if sites is None else list(sites)
    bad = [s for s in sites if s not in site_have]
    if bad:
        raise ValueError(f"site(s) {bad} not in the table; it holds: {', '.join(site_have)}")
    return directions, [s for s in sites if s != "z"] + (["z"] if "z" in sites else [])  # heads last


def _patching_grid(sub: pd.DataFrame, site: str):
    """One panel's ``(effects [layers, columns], layers, column labels, column title)``: layers
    by heads for ``z`` (its ``all`` positions when present), layers by position groups otherwise."""
    layers = sorted(int(v) for v in sub["layer"].unique())
    if site == "z":
        sub = sub[sub["position"].astype(str) == "all"] if (sub["position"].astype(str) == "all").any() else sub
        cols = sorted(int(h) for h in sub["head"].dropna().unique())
        table = sub.assign(_c=sub["head"].astype(int)).pivot_table(index="layer", columns="_c", values="effect",
                                                                   aggfunc="first", dropna=False)
        xlabels, xtitle = [str(c) for c in cols], "head (all positions)"
    else:
        cols = _patch_positions(sub)
        table = sub.assign(_c=sub["position"].astype(str)).pivot_table(index="layer", columns="_c", values="effect",
                                                                       aggfunc="first", dropna=False)
        xlabels, xtitle = cols, "position"
    data = table.reindex(index=layers, columns=cols).to_numpy(dtype=float)
    return data, layers, xlabels, xtitle


def _patching_limit(df: pd.DataFrame, limit: float | None) -> float:
    """The colour range's half-width: ``limit``, or the largest ``|effect|`` clipped to [1, 2]."""
    import numpy as np

    vals = df["effect"].astype(float).to_numpy()
    finite = vals[np.isfinite(vals)]
    if limit is None:
        limit = min(2.0, max(1.0, float(np.abs(finite).max()) if finite.size else 1.0))
    if not limit > 0:
        raise ValueError(f"limit must be > 0, got {limit}")
    return limit


def _patching_title(df: pd.DataFrame, title: str | None) -> str:
    metric = df["metric"].iloc[0] if "metric" in df.columns else None
    sup = title or (f"activation patching, {metric}" if metric is not None else "activation patching")
    if "clean" in df.columns and "corrupted" in df.columns:
        sup += f" (clean {float(df['clean'].iloc[0]):.3g}, corrupted {float(df['corrupted'].iloc[0]):.3g})"
    return sup


# drawing
def _draw_patching(panels, directions: list[str], sites: list[str], limit: float, annotate: bool):
    """The figure: one row of panels per direction, one column per site, and the colour bar."""
    import matplotlib
    from matplotlib.colors import TwoSlopeNorm

    norm = TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="#bdbdbd")
    widths = [max(2, len(p[2])) for p in panels[0]]
    n_layers = max(len(p[1]) for row in panels for p in row)
    fig = _figure(min(24.0, 1.6 + 0.62 * sum(widths) + 0.5 * len(sites)),
                  min(30.0, len(directions) * (1.3 + 0.34 * n_layers) + 0.9))
    axes = fig.subplots(len(directions), len(sites), squeeze=False, gridspec_kw={"width_ratios": widths})
    fs = max(5, min(9, int(140 / max(max(widths) * 2.2, n_layers * 1.2, 1))))
    im = None
    for r, d in enumerate(directions):
        for c, s in enumerate(sites):
            ax = axes[r][c]
            im = _draw_patching_panel(ax, panels[r][c], cmap, norm, limit, annotate, fs)
            if r == len(directions) - 1:
                ax.set_xlabel(panels[r][c][3], fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{d}\nlayer", fontsize=9)
            ax.set_title(f"{d}: {s}", fontsize=9)
    _patching_colorbar(fig, im, axes, limit)
    return fig


def _draw_patching_panel(ax, panel, cmap, norm, limit: float, annotate: bool, fs: int):
    """One panel's image, its cells' annotations (when ``annotate``) and its tick labels; the image."""
    import numpy as np

    data, layers, xlabels, _ = panel
    im = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    if annotate:
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                v = data[i, j]
                if np.isnan(v):
                    continue
                dark = abs(v) > 0.6 * limit
                text = f"{v:.2f}"
                ax.text(j, i, "0.00" if text == "-0.00" else text, ha="center", va="center", fontsize=fs,
                        color="white" if dark else "#1d2330")
    ax.set_xticks(range(len(xlabels)), xlabels, rotation=45 if max(map(len, xlabels)) > 4 else 0,
                  ha="right" if max(map(len, xlabels)) > 4 else "center", fontsize=8)
    ax.set_yticks(range(len(layers)), [str(x) for x in layers], fontsize=8)
    return im


def _patching_colorbar(fig, im, axes, limit: float) -> None:
    """The colour bar: 0 = corrupted, 1 = clean (marked), the range's ends."""
    cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.9, pad=0.02)
    ticks = sorted({-limit, 0.0, limit} | ({-1.0, 1.0} if limit >= 1 else set()))
    if 1 <= limit < 1.25:  # the range's ends would overprint -1 and 1
        ticks = [-1.0, 0.0, 1.0]
    cb.set_ticks(ticks, labels=["1 = clean" if t == 1 else "0 = corrupted" if t == 0 else f"{t:.3g}" for t in ticks])
    cb.ax.axhline(1.0, color="black", lw=1.5)
    cb.ax.axhline(0.0, color="#555", lw=0.8, ls=":")
    cb.set_label("effect (normalised patching)")
