"""Sections of a circuit-study report (``circuit_study(out=...)`` /
``mechtrunc circuits checkpoints``): the node scores over training as a heatmap, the top edges
(the circuit) at chosen steps, and the margin ledger's attention evidence against the MLPs'
generic push with the step where the evidence overtakes the push.  Everything comes from the
study's tables: no model is loaded."""

from __future__ import annotations

import pandas as pd

from mechtrunc.report.context import Context
from mechtrunc.report.page import Section, fragment, html_table, note

__all__ = ["SECTIONS", "node_label", "chosen_steps"]

#: edges shown per chosen step
TOP_SHOWN = 12


def node_label(row) -> str:
    """``L1H2`` for a head's ``z``, ``L1.mlp`` for an MLP, ``L1.<site>`` otherwise."""
    if row["site"] == "z" and not pd.isna(row["head"]):
        return f"L{int(row['layer'])}H{int(row['head'])}"
    return f"L{int(row['layer'])}." + ("mlp" if row["site"] == "mlp_out" else str(row["site"]))


def chosen_steps(steps, k: int = 3) -> list[int]:
    """``k`` steps spread over the study (first, last and evenly between), ascending."""
    steps = sorted(set(int(s) for s in steps))
    if len(steps) <= k:
        return steps
    idx = sorted({round(i * (len(steps) - 1) / (k - 1)) for i in range(k)})
    return [steps[i] for i in idx]


def _change(df: pd.DataFrame) -> pd.Series:
    from mechtrunc.analysis.patching import raw_change

    return raw_change(df)


def heatmap_section(ctx: Context) -> Section:
    import plotly.graph_objects as go

    r = ctx.result
    nodes = r.nodes[r.nodes["position"] == "all"]
    nodes = nodes.assign(node=nodes.apply(node_label, axis=1), change=_change(nodes))
    wide = nodes.pivot_table(index="node", columns="step", values="change", aggfunc="first")
    order = nodes.drop_duplicates("node").sort_values(["layer", "site", "head"], kind="stable")["node"]
    wide = wide.reindex(index=list(order))
    metric = r.nodes["metric"].iloc[0]
    method = r.study.get("method", "atp")
    s = Section("circuit-heatmap", "Node scores over training",
                intro=f"Each head's and MLP's estimated change of {metric} when its activation is moved from the "
                      f"corrupted run to the clean one ({r.study.get('direction', 'denoising')}, all "
                      f"positions; {method}{'' if method == 'atp' else ', ' + str(r.study.get('ig_steps')) + ' steps'}"
                      "), at every checkpoint (columns, equally spaced). Red raises the metric, blue lowers it.")
    zmax = float(wide.abs().max().max() or 1.0)
    fig = go.Figure(go.Heatmap(z=wide.to_numpy(), x=[str(c) for c in wide.columns], y=list(wide.index),
                               colorscale="RdBu", reversescale=True, zmin=-zmax, zmax=zmax,
                               colorbar=dict(title="change"),
                               hovertemplate="step %{x}<br>%{y}<br>change %{z:.4f}<extra></extra>"))
    fig.update_xaxes(type="category", title_text="training step")
    fig.update_yaxes(autorange="reversed", title_text="node")
    fig.update_layout(height=max(320, 16 * len(wide) + 120), margin=dict(l=80, r=20, t=30, b=50))
    return s.add(fig)


def circuit_section(ctx: Context) -> Section:
    r = ctx.result
    edges = r.edges
    steps = chosen_steps(edges["step"])
    s = Section("circuit-steps", "The circuit at chosen steps",
                intro=f"The edges with the largest estimated change of the metric (at most {TOP_SHOWN}) at "
                      f"{', '.join(map(str, steps))} (first, middle and last checkpoint; the study keeps the top "
                      f"{r.study.get('n_edges') or 'every'} edges per step). change: the first-order change of "
                      "the metric when only that sender's share of the receiver's input is patched.")
    for step in steps:
        sub = edges[edges["step"] == step].sort_values("rank").head(TOP_SHOWN)
        sub = sub.assign(change=_change(sub))[["rank", "sender", "receiver", "change", "effect"]]
        sub = sub.dropna(axis=1, how="all")  # effect is NaN where the clean-corrupt gap is not resolved
        s.add(f"<h3>step {step}</h3>", html_table(sub.reset_index(drop=True)))
    return s


def ledger_section(ctx: Context) -> Section:
    import plotly.graph_objects as go

    from mechtrunc.studies.circuits import evidence_by_step, overtaking_step

    r = ctx.result
    generic = r.study.get("generic", "generic")
    ev = evidence_by_step(r.ledger)
    ot = overtaking_step(r.ledger)
    s = Section("circuit-ledger", "Attention's evidence against the MLPs' generic push",
                intro=f"The margin logit(answer) - logit({generic}) split into direct contributions "
                      "(direct logit attribution through the final layer norm): attention's evidence for the answer "
                      "(every head and attention bias) and the MLPs' push towards the generic token (minus their "
                      "summed contribution), mean over the prompts at every checkpoint.")
    fig = go.Figure()
    x = [str(v) for v in ev["step"]]
    fig.add_trace(go.Scatter(x=x, y=ev["attention"], name="attention's evidence", mode="lines+markers",
                             line=dict(color="#1f5fa8")))
    fig.add_trace(go.Scatter(x=x, y=ev["mlp_push"], name="MLPs' generic push", mode="lines+markers",
                             line=dict(color="#d9622b")))
    fig.add_trace(go.Scatter(x=x, y=ev["margin"], name="margin (model)", mode="lines+markers",
                             line=dict(color="#2e8b57", dash="dot")))
    if ot["step"] is not None:
        fig.add_vline(x=x.index(str(ot["step"])), line=dict(color="#777", dash="dot", width=1))
    fig.update_xaxes(type="category", title_text="training step")
    fig.update_yaxes(title_text="logit contribution")
    fig.update_layout(height=360, margin=dict(l=60, r=20, t=30, b=50), legend=dict(orientation="h", y=-0.25))
    lvl = int(round(100 * ot["level"]))
    if ot["step"] is None:
        text = "Attention's evidence is not above the MLPs' push at the last checkpoint: it never overtakes for good."
    else:
        bound = lambda v: "never" if v is None else str(v)  # noqa: E731
        text = fragment("Attention's evidence overtakes the MLPs' generic push for good at step <b>{step}</b> "
                        "({lvl}% interval over the prompts: {low} to {high}; {n_boot} resamples of the {n_seq} prompt "
                        "sequences, the same at every step; {never:.0f}% of them never overtake).",
                        step=ot["step"], lvl=lvl, low=bound(ot["low"]), high=bound(ot["high"]), n_boot=ot["n_boot"],
                        n_seq=ot["n_sequences"], never=100 * ot["never"])
    return s.add(note(text), fig, html_table(ev))


SECTIONS = [ledger_section, heatmap_section, circuit_section]
