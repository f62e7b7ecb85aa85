"""Sections of an associative-memory run report (a directory written by ``mechtrunc memory
train`` or :meth:`mechtrunc.models.memory.MemoryRun.save`): the configuration, P(noise) / P(answer)
over training, the singular values of W (and W - W_init) over training with the noise-aligned
component highlighted, and LASER against removing that one component on the trained memory."""

from __future__ import annotations

import pandas as pd

from mechtrunc.report.context import Context
from mechtrunc.report.page import Section, html_table, note

__all__ = ["SECTIONS"]

NOISE, OTHER = "#d9622b", "#9aa5b1"


def config_section(ctx: Context) -> Section:
    r = ctx.result
    rows = [("memory", k, v) for k, v in r.config.get("memory", {}).items()]
    rows += [("train", k, v) for k, v in r.config.get("train", {}).items()]
    df = pd.DataFrame(rows, columns=["group", "option", "value"]).astype({"value": str})
    s = Section("config", "Configuration", intro="Memory and training options saved with the run (config.json).")
    return s.add('<div class="flex">' + "".join(
        html_table(df[df["group"] == g].drop(columns="group"), max_rows=60, scroll=False) for g in ("memory", "train"))
        + "</div>")


def training_section(ctx: Context) -> Section:
    import plotly.graph_objects as go

    h = ctx.result.history
    s = Section("training", "Training curves",
                intro="Clean (noise-free) targets, weighted by p(x): probability of the correct association and of "
                      "the noise token. The population optimum is P(answer) = 1 - alpha, P(noise) = alpha.")
    fig = go.Figure()
    for col, name, color in (("p_answer", "P(answer)", "#1f5fa8"), ("p_noise", "P(noise)", NOISE)):
        if col in h:
            fig.add_trace(go.Scatter(x=h["step"], y=h[col], mode="lines", name=name, line=dict(color=color),
                                     hovertemplate=f"step %{{x}}<br>{name} %{{y:.3f}}<extra></extra>"))
    alpha = ctx.result.config.get("memory", {}).get("alpha")
    if alpha is not None:
        fig.add_hline(y=float(alpha), line=dict(dash="dot", color=NOISE), annotation_text=f"alpha = {alpha}")
    fig.update_layout(height=340, margin=dict(l=50, r=20, t=30, b=40), xaxis_title="training step",
                      yaxis=dict(range=[-0.02, 1.02]), legend=dict(orientation="h", y=-0.2))
    return s.add(fig)


def spectrum_section(ctx: Context) -> Section:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    sp = ctx.result.spectra
    s = Section("spectrum", "Singular values over training",
                intro="Every singular value of W (left) and of W - W_init (right) at the logged steps; the component "
                      "most aligned with the noise output direction (u_noise - mean u) is drawn in orange, with its "
                      "alignment on hover. Where it sits (a spike above the rest, or inside the bulk) decides what "
                      "LASER's 'keep the top components' does to the noise.")
    if sp is None or sp.empty:
        return s.add(note("spectra.csv is missing or empty.", "warning"))
    mats = [m for m in ("W", "W - W_init") if m in set(sp["matrix"])]
    fig = make_subplots(rows=1, cols=len(mats), subplot_titles=mats, horizontal_spacing=0.08)
    for j, m in enumerate(mats, 1):
        d = sp[sp["matrix"] == m]
        noise_idx = d.loc[d.groupby("step")["align_noise"].idxmax()]
        rest = d.drop(index=noise_idx.index)
        fig.add_trace(go.Scatter(x=rest["step"], y=rest["singular_value"], mode="markers", name="other components",
                                 marker=dict(size=4, color=OTHER), showlegend=j == 1,
                                 hovertemplate="step %{x}<br>sigma %{y:.3g}<extra></extra>"), row=1, col=j)
        fig.add_trace(go.Scatter(x=noise_idx["step"], y=noise_idx["singular_value"], mode="lines+markers",
                                 name="noise-aligned component", marker=dict(size=7, color=NOISE),
                                 line=dict(color=NOISE), showlegend=j == 1,
                                 customdata=noise_idx[["component", "align_noise"]].to_numpy(),
                                 hovertemplate="step %{x}<br>sigma %{y:.3g}<br>component %{customdata[0]}"
                                               "<br>alignment %{customdata[1]:.2f}<extra></extra>"), row=1, col=j)
        fig.update_xaxes(title_text="training step", row=1, col=j)
    fig.update_layout(height=360, margin=dict(l=50, r=20, t=40, b=40), legend=dict(orientation="h", y=-0.25))
    last = sp[sp["step"] == sp["step"].max()]
    rows = []
    for m in mats:
        d = last[last["matrix"] == m].sort_values("component")
        i = int(d.loc[d["align_noise"].idxmax(), "component"])
        sv = d["singular_value"].to_numpy()
        rows.append({"matrix": m, "step": int(d["step"].iloc[0]), "noise component (0 = largest)": i,
                     "its alignment": float(d["align_noise"].max()), "its singular value": float(sv[i]),
                     "largest other singular value": float(max((v for k, v in enumerate(sv) if k != i), default=0))})
    return s.add(fig, "<h3>At the last logged step</h3>", html_table(pd.DataFrame(rows)))


def truncation_section(ctx: Context) -> Section:
    s = Section("truncation", "LASER vs removing the noise component",
                intro="The trained memory under the shared interventions: mt.Truncate('W', keep) keeps the top "
                      "singular components (LASER); mt.RemoveComponents('W', [i]) removes only the component most "
                      "aligned with the noise. Clean metrics weighted by p(x). These are exact expectations over "
                      "the memory's whole data distribution (every input, weighted by its probability), not estimates "
                      "from sampled prompts, so they carry no sampling uncertainty and no interval is shown.")
    model = ctx.model()
    if model is None:
        return s.add(note(f"Not computed: {ctx.model_missing}", "warning"))
    import mechtrunc as mt
    from mechtrunc.models import memory

    i = memory.noise_component(memory.spectrum(model))
    variants = {"trained memory": (), f"remove component {i} (noise-aligned)": (mt.RemoveComponents("W", indices=[i]),)}
    for keep in (0.5, 0.2, 0.1, 0.05):
        variants[f"LASER keep {keep}"] = (mt.Truncate("W", keep=keep),)
    rows = [{"variant": name, **memory.clean_metrics(model, *ivs)} for name, ivs in variants.items()]
    return s.add(html_table(pd.DataFrame(rows)))


SECTIONS = [config_section, training_section, spectrum_section, truncation_section]
