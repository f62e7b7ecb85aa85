"""Sections of a checkpoint-study report (``checkpoint_study(out=...)`` / ``mechtrunc pythia checkpoints``).
Everything comes from the study's table: no model is loaded."""

from __future__ import annotations

import pandas as pd

from mechtrunc.report.context import Context
from mechtrunc.report.page import Section, esc, html_table, note
from mechtrunc.report.truncation import competitor_of
from mechtrunc.results import P_ANSWER, metric_columns

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
                intro=f"P(answer), P({esc(comp)}) and their logit difference at each training step (log axis; step 0 "
                      "is drawn at the left edge), full model (solid) and truncated (dashed)"
                      + (f": <code>{esc(str(r.study.get('truncation')))}</code>" if r.study.get("truncation") else "")
                      + ". Dotted vertical line: the step from which P(answer) stays above the competitor's probability.")
    xs, zero_at = _x(df["step"].tolist())
    df = df.assign(_x=xs)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["probabilities", f"logit(answer) - logit({comp})"],
                        horizontal_spacing=0.09)
    ld = f"logit_diff_{comp}"
    for variant, sub in df.groupby("variant", sort=False):
        sub = sub.sort_values("step")
        dash = DASH.get(variant, "dot")
        common = dict(mode="lines+markers", marker=dict(size=5), customdata=sub["step"])
        fig.add_trace(go.Scatter(x=sub["_x"], y=sub[P_ANSWER], name=f"P(answer), {variant}",
                                 line=dict(color=COLORS["answer"], dash=dash),
                                 hovertemplate="step %{customdata}<br>P(answer) %{y:.4f}<extra>" + variant + "</extra>",
                                 **common), row=1, col=1)
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


def table_section(ctx: Context) -> Section:
    df = ctx.result.table
    s = Section("table", "Table", intro="Every (step, variant) row of the study.")
    return s.add(html_table(df))


SECTIONS = [curves_section, table_section]
