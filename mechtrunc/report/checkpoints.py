"""Sections of a checkpoint-study report (``checkpoint_study(out=...)`` / ``mechtrunc pythia checkpoints``).
Everything comes from the study's table: no model is loaded."""

from __future__ import annotations

import pandas as pd

from mechtrunc.report.context import Context
from mechtrunc.report.page import Section, fragment, html_table, note
from mechtrunc.report.truncation import competitor_of
from mechtrunc.core.results import P_ANSWER, metric_columns

__all__ = ["SECTIONS", "crossover_steps"]

COLORS = {"answer": "#1f5fa8", "competitor": "#d9622b", "diff": "#2e8b57"}
DASH = {"full": "solid", "truncated": "dash"}


def _competitor(df) -> str:
    comp = competitor_of("", metric_columns(df))
    if comp is None:
        raise ValueError("the checkpoint table has no competitor column p_<name>")
    return comp


def crossover_steps(df, competitor: str) -> pd.DataFrame:
    """Per variant, the first step at which P(answer) exceeds P(competitor) (and stays above at
    the final step or not), from a checkpoint-study table."""
    rows = []
    for variant, sub in df.groupby("variant", sort=False):
        sub = sub.sort_values("step")
        above = sub[P_ANSWER] > sub[f"p_{competitor}"]
        first = sub.loc[above, "step"]
        # the step from which the answer stays above until the last checkpoint
        below = sub.loc[~above, "step"]
        later = sub.loc[above & (sub["step"] > (below.max() if len(below) else -1)), "step"]
        rows.append({"variant": variant,
                     "first step with P(answer) > P(" + competitor + ")": int(first.iloc[0]) if len(first) else None,
                     "stays above from step": int(later.iloc[0]) if len(later) else None,
                     "steps evaluated": len(sub)})
    return pd.DataFrame(rows)


def _x(steps):
    """Log axis positions: step 0 drawn at half the smallest positive step (labelled 0)."""
    pos = sorted(s for s in set(steps) if s > 0)
    zero_at = (pos[0] / 2) if pos else 0.5
    return [s if s > 0 else zero_at for s in steps], zero_at


def curves_section(ctx: Context) -> Section:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    r = ctx.result
    df = r.table
    comp = _competitor(df)
    s = Section("curves", "Answer vs competitor over training",
                intro=fragment("P(answer), P({}) and their logit difference at each training step (log axis; step 0 "
                               "is drawn at the left edge), full model (solid) and truncated (dashed)", comp)
                      + (fragment(": <code>{}</code>", str(r.study.get("truncation"))) if r.study.get("truncation") else "")
                      + ". Dotted vertical line: the step from which P(answer) stays above the competitor's probability."
                      + (" Error bars on P(answer): 95% bootstrap intervals over the prompts."
                         if _intervals(ctx, P_ANSWER) is not None else ""))
    xs, zero_at = _x(df["step"].tolist())
    df = df.assign(_x=xs)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["probabilities", f"logit(answer) - logit({comp})"],
                        horizontal_spacing=0.09)
    ld = f"logit_diff_{comp}"
    iv = _intervals(ctx, P_ANSWER)
    for variant, sub in df.groupby("variant", sort=False):
        sub = sub.sort_values("step")
        dash = DASH.get(variant, "dot")
        common = dict(mode="lines+markers", marker=dict(size=5), customdata=sub["step"])
        bars = {}
        if iv is not None:  # 95% bootstrap interval of P(answer) at each step, as error bars
            b = iv[iv["variant"] == variant].set_index("step").reindex(sub["step"])
            if b["value"].notna().all():
                bars = dict(error_y=dict(type="data", symmetric=False, array=(b["high"] - b["value"]).tolist(),
                                         arrayminus=(b["value"] - b["low"]).tolist(), thickness=1, width=3))
        fig.add_trace(go.Scatter(x=sub["_x"], y=sub[P_ANSWER], name=f"P(answer), {variant}",
                                 line=dict(color=COLORS["answer"], dash=dash),
                                 hovertemplate="step %{customdata}<br>P(answer) %{y:.4f}<extra>" + variant + "</extra>",
                                 **bars, **common), row=1, col=1)
        fig.add_trace(go.Scatter(x=sub["_x"], y=sub[f"p_{comp}"], name=f"P({comp}), {variant}",
                                 line=dict(color=COLORS["competitor"], dash=dash),
                                 hovertemplate="step %{customdata}<br>P(" + comp + ") %{y:.4f}<extra>" + variant + "</extra>",
                                 **common), row=1, col=1)
        if ld in sub:
            fig.add_trace(go.Scatter(x=sub["_x"], y=sub[ld], name=f"logit difference, {variant}",
                                     line=dict(color=COLORS["diff"], dash=dash),
                                     hovertemplate="step %{customdata}<br>logit diff %{y:.3f}<extra>" + variant + "</extra>",
                                     **common), row=1, col=2)
    cross = crossover_steps(r.table, comp)
    for _, c in cross.iterrows():  # where the answer overtakes the competitor for good
        step = c["stays above from step"]
        if step is None or pd.isna(step):
            continue
        x = step if step > 0 else zero_at
        for col in (1, 2):
            fig.add_vline(x=x, line=dict(color="#777", dash="dot", width=1), row=1, col=col)
    fig.add_hline(y=0, line=dict(color="#999", width=1), row=1, col=2)
    steps = sorted(set(r.table["step"].tolist()))
    tickvals = [s if s > 0 else zero_at for s in steps]
    if len(steps) > 12:  # thin the labels so they never overlap
        keep = set(range(0, len(steps), max(1, len(steps) // 10))) | {len(steps) - 1}
        tickvals = [t for i, t in enumerate(tickvals) if i in keep]
        steps = [st for i, st in enumerate(steps) if i in keep]
    for col in (1, 2):
        fig.update_xaxes(type="log", tickvals=tickvals, ticktext=[str(st) for st in steps], title_text="training step",
                         row=1, col=col)
    fig.update_yaxes(title_text="probability", row=1, col=1)
    fig.update_yaxes(title_text="logit difference", row=1, col=2)
    fig.update_layout(height=380, margin=dict(l=60, r=20, t=40, b=50), legend=dict(orientation="h", y=-0.22))
    s.add(fig, "<h3>First step where the answer overtakes the competitor</h3>", html_table(cross))
    return s


def _intervals(ctx: Context, metric: str):
    """:func:`mechtrunc.studies.step_intervals` of the study's per-item values (cached on the
    context), or None when the study kept none (a directory written before they existed)."""
    from mechtrunc.studies import step_intervals

    items = getattr(ctx.result, "items", None)
    if items is None or metric not in items.columns or "variant" not in items.columns:
        return None
    cache = ctx.__dict__.setdefault("_step_intervals", {})
    if metric not in cache:
        cache[metric] = step_intervals(items, metric)
    return cache[metric]


def intervals_section(ctx: Context) -> Section | None:
    """Per step and variant: P(answer) and P(competitor) with their bootstrap intervals, and the
    truncation's change against the full model with its paired interval."""
    df = ctx.result.table
    comp = _competitor(df)
    metrics = [P_ANSWER, f"p_{comp}"]
    ivs = {m: _intervals(ctx, m) for m in metrics}
    if any(v is None for v in ivs.values()):
        return None
    first = ivs[P_ANSWER].iloc[0]
    s = Section("intervals", "Uncertainty at each step",
                intro=f"Means over the {int(first['n_items'])} scored items with 95% percentile bootstrap intervals "
                      f"({int(first['n_boot'])} resamples of the prompt sequences, all items of a sequence together, "
                      "seeded, the same at every step); the change "
                      "against the full model is paired: the same resampled prompts for both, so its interval is "
                      "that of the difference, narrower than the two intervals side by side.")
    rows = []
    for _, r in ivs[P_ANSWER].iterrows():
        c = ivs[f"p_{comp}"]
        c = c[(c["step"] == r["step"]) & (c["config"] == r["config"])].iloc[0]
        row = {"step": int(r["step"]), "variant": r["variant"],
               "P(answer) [95% interval]": f"{r['value']:.4f} [{r['low']:.4f}, {r['high']:.4f}]",
               f"P({comp}) [95% interval]": f"{c['value']:.4f} [{c['low']:.4f}, {c['high']:.4f}]"}
        if not bool(r["config"] == 0):
            row["change of P(answer) [paired]"] = f"{r['change']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"
            row[f"change of P({comp}) [paired]"] = f"{c['change']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]"
        rows.append(row)
    return s.add(html_table(pd.DataFrame(rows).fillna("")))


def table_section(ctx: Context) -> Section:
    df = ctx.result.table
    s = Section("table", "Table", intro="Every (step, variant) row of the study.")
    return s.add(html_table(df))


SECTIONS = [curves_section, intervals_section, table_section]
