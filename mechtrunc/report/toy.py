"""Sections of a toy-run report (a directory written by ``mechtrunc toy train`` or ``make demo``)."""

from __future__ import annotations

import pandas as pd
import torch

from mechtrunc.report.context import Context, visible_token
from mechtrunc.report.page import CircuitsView, Section, fragment, html_table, note
from mechtrunc.core.results import LAST_FFN_REMOVED
from mechtrunc.analysis.selection import change_intervals

__all__ = ["SECTIONS"]

#: bootstrap resamples of the intervals in the truncation section
N_BOOT = 1000

FULL, CUT = "#1f5fa8", "#d9622b"
LABELS = {"full": "full model", LAST_FFN_REMOVED: "last FFN removed"}


def _last_layer(ctx: Context) -> int:
    return int(ctx.result.config["model"].get("n_layers", 2)) - 1


def config_section(ctx: Context) -> Section:
    r = ctx.result
    rows = [("train", k, v) for k, v in r.config.get("train", {}).items()]
    rows += [("model", k, v) for k, v in r.config.get("model", {}).items()]
    rows += [("task", k, v) for k, v in r.config.get("task", {}).items()]
    df = pd.DataFrame(rows, columns=["group", "option", "value"]).astype({"value": str})
    s = Section("config", "Configuration", intro="Training, model and task options saved with the run (config.json).")
    s.add('<div class="flex">' + "".join(html_table(df[df["group"] == g].drop(columns="group"), max_rows=60, scroll=False)
                                          for g in ("train", "model", "task")) + "</div>")
    final = r.config.get("final")
    if final:
        f = pd.DataFrame(final).T.reset_index(names="variant")
        f["variant"] = f["variant"].map(lambda v: LABELS.get(v, v))
        s.add("<h3>Final clean-test metrics</h3>", html_table(f))
    return s


def training_section(ctx: Context) -> Section | None:
    h = ctx.result.history
    s = Section("training", "Training curves",
                intro="Clean test set evaluated during training: accuracy at repeated triggers, probability of the "
                      "noise token and of the correct token, for the full model (solid) and the model without its "
                      "last FFN (dashed; layer 1, 0-based).")
    if h is None or h.empty:
        return s.add(note("history.csv is missing: no training curves.", "warning"))
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    panels = [("accuracy", "accuracy"), ("p_noise", "P(noise)"), ("p_answer", "P(answer)")]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in panels], horizontal_spacing=0.07)
    for j, (metric, _) in enumerate(panels, 1):
        for variant, color, dash in (("full", FULL, "solid"), (LAST_FFN_REMOVED, CUT, "dash")):
            col = f"{variant}_{metric}"
            if col not in h:
                continue
            fig.add_trace(go.Scatter(x=h["step"], y=h[col], mode="lines+markers", name=LABELS[variant],
                                     line=dict(color=color, dash=dash), marker=dict(size=4),
                                     legendgroup=variant, showlegend=j == 1,
                                     hovertemplate=f"step %{{x}}<br>{metric} %{{y:.3f}}<extra>{LABELS[variant]}</extra>"),
                          row=1, col=j)
        fig.update_yaxes(range=[-0.02, 1.02], row=1, col=j)
        fig.update_xaxes(title_text="training step", row=1, col=j)
    fig.update_layout(height=340, margin=dict(l=40, r=20, t=40, b=40), legend=dict(orientation="h", y=-0.25))
    return s.add(fig)


def _truncation_grid(model, prompts, last: int) -> pd.DataFrame:
    import mechtrunc as mt

    keeps = (0.5, 0.2, 0.1, 0.05)
    entries = [None, mt.Ablate("mlp", layer=last)]
    for layer in range(last + 1):
        for m in ("mlp.W_in", "mlp.W_out", "attn.W_V"):
            if m.startswith("mlp") and not mt.adapt(model).has_mlp(layer):
                continue
            entries += [mt.Truncate(m, layer=layer, keep=k) for k in keeps]
    df, items = mt.sweep(model, prompts, entries, return_items=True)
    df.insert(0, "intervention", df.pop("variant"))
    if "layer" in df:
        df["layer"] = df["layer"].astype("Int64")
    keep_cols = [c for c in ("intervention", "layer", "matrix", "keep", "accuracy", "p_answer", "p_noise",
                             "logit_diff_noise", "loss") if c in df.columns]
    df = df[keep_cols].copy()
    # the change of each metric against the full model, with its paired interval over the test
    # sequences (all repeated triggers of a sequence resampled together)
    for m in ("accuracy", "p_noise"):
        cells = [""]
        for it in items[1:]:
            r = change_intervals(items[0], it, [m], n_boot=N_BOOT, clusters=prompts.rows).iloc[0]
            cells.append(f"{r['change']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]")
        df[f"change of {m} [95% CI]"] = cells
    return df


def truncation_section(ctx: Context) -> Section | None:
    model, prompts = ctx.model_and_prompts()
    s = Section("truncation", "Truncation of the trained model",
                intro="LASER (keep a fraction of the singular components) of both FFN matrices and of W_V in each "
                      "layer, evaluated on the clean test set with <code>mt.sweep</code>; the first rows are the full "
                      "model and FFN L1 removed. Layers are 0-based: the paper's layer 2 is layer 1. "
                      f"The change columns give each configuration's change against the full model with its 95% "
                      f"paired bootstrap interval ({N_BOOT} resamples of the test sequences, all repeated triggers of "
                      "a sequence together, seeded). The configurations are not chosen here: nothing is selected on "
                      "these sequences, so no held-out split is needed.")
    if model is None:
        return s.add(note(fragment("Not computed: {}", ctx.model_missing or 'no model'), "warning"))
    import plotly.graph_objects as go

    df = _truncation_grid(model, prompts, _last_layer(ctx))
    base = float(df["accuracy"].iloc[0])
    fig = go.Figure()
    grid = df.dropna(subset=["keep"]) if "keep" in df else df.iloc[0:0]
    palette = ["#1f5fa8", "#d9622b", "#2e8b57", "#7b4ea3", "#b8860b", "#c23b6e"]
    for i, ((layer, m), sub) in enumerate(grid.groupby(["layer", "matrix"], sort=False)):
        fig.add_trace(go.Scatter(x=sub["keep"], y=sub["accuracy"], mode="lines+markers",
                                 name=f"layer {int(layer)} {m}", line=dict(color=palette[i % len(palette)],
                                                                       dash="solid" if int(layer) == _last_layer(ctx) else "dot"),
                                 customdata=sub[["p_noise", "p_answer"]].to_numpy(),
                                 hovertemplate="keep %{x}<br>accuracy %{y:.3f}<br>P(noise) %{customdata[0]:.3f}"
                                               "<br>P(answer) %{customdata[1]:.3f}<extra>%{fullData.name}</extra>"))
    fig.add_hline(y=base, line=dict(color="#555", dash="dash"), annotation_text=f"full model {base:.2f}",
                  annotation_position="top right")
    ks = sorted({float(k) for k in grid["keep"]}, reverse=True)
    fig.update_xaxes(type="log", title_text="keep (fraction of the rank, log scale)", autorange="reversed",
                     tickvals=ks, ticktext=[f"{k:g}" for k in ks])
    fig.update_yaxes(title_text="clean accuracy", range=[-0.02, 1.02])
    fig.update_layout(height=360, margin=dict(l=50, r=20, t=20, b=40))
    return s.add(fig, html_table(df, highlight=[0, 1]))


def components_section(ctx: Context) -> Section | None:
    model, prompts = ctx.model_and_prompts()
    last = _last_layer(ctx)
    s = Section("components", "Singular components carrying the noise association",
                intro=f"Singular components of layer {last}'s <code>mlp.W_out</code> ranked by how much they push the "
                      "noise token's logit on the clean test items (<code>mt.rank_components</code>: mean coefficient "
                      "of the FFN output on the component times its alignment with the noise direction). Removing the "
                      "top components (<code>mt.RemoveComponents</code>) shows whether they carry the association.")
    if model is None:
        return s.add(note(fragment("Not computed: {}", ctx.model_missing or 'no model'), "warning"))
    import mechtrunc as mt
    import plotly.graph_objects as go

    noise = int(prompts.competitors[0, 0])
    ranked = mt.rank_components(model, last, [noise], prompts=prompts)
    top = ranked.head(20)
    fig = go.Figure(go.Bar(x=[f"#{c}" for c in top["component"]], y=top["activation_score"],
                           marker_color=[CUT if v > 0 else FULL for v in top["activation_score"]],
                           customdata=top[["singular_value", "mean_coef"]].to_numpy(),
                           hovertemplate="component %{x}<br>logit push %{y:.3f}<br>singular value %{customdata[0]:.3f}"
                                         "<br>mean coefficient %{customdata[1]:.3f}<extra></extra>"))
    fig.update_layout(height=320, margin=dict(l=50, r=20, t=20, b=60),
                      xaxis_title="component (0 = largest singular value), top 20 by noise push",
                      yaxis_title="mean push on logit(noise)")
    rows = [mt.evaluate(model, prompts, label="full")]
    for k in (1, 3):
        idx = ranked["component"].head(k).tolist()
        rows.append(mt.evaluate(model, prompts, mt.RemoveComponents("mlp.W_out", layer=last, indices=idx),
                                label=f"remove top {k} {idx}"))
    rows.append(mt.evaluate(model, prompts, mt.Ablate("mlp", layer=last), label=f"FFN L{last} removed"))
    eff = pd.concat(rows, ignore_index=True)[["variant", "accuracy", "p_answer", "p_noise", "logit_diff_noise"]]
    return s.add(fig, html_table(ranked.head(10)), "<h3>Removing the top components</h3>", html_table(eff))


def attribution_section(ctx: Context) -> Section | None:
    model, prompts = ctx.model_and_prompts()
    last = _last_layer(ctx)
    s = Section("attribution", "Attribution of logit(correct) - logit(noise)",
                intro="Direct logit attribution per component (<code>mt.attribute_change</code>), clean model vs "
                      f"layer {last}'s FFN removed; averaged over the clean test items. The parts add up to the "
                      "model's logit difference (row <i>total</i>).")
    if model is None:
        return s.add(note(fragment("Not computed: {}", ctx.model_missing or 'no model'), "warning"))
    import mechtrunc as mt
    import plotly.graph_objects as go

    ch = mt.attribute_change(model, prompts, mt.Ablate("mlp", layer=last))
    parts = ch[ch["kind"] != "total"].copy()
    # residual-stream order: embeddings, then each layer's heads and MLP, then biases
    rank = {"embed": 0, "pos_embed": 1, "head": 2, "attn_bias": 3, "mlp": 4, "bias": 5, "other": 6}
    parts = parts.assign(_l=parts["layer"].fillna(-1).astype(float), _k=parts["kind"].map(rank))
    parts.loc[parts["kind"].isin(["bias", "other"]), "_l"] = 1e9
    parts = parts.sort_values(["_l", "_k", "head"], na_position="first").drop(columns=["_l", "_k"])
    fig = go.Figure([
        go.Bar(x=parts["component"], y=parts["clean"], name="full model", marker_color=FULL,
               hovertemplate="%{x}<br>clean %{y:.3f}<extra></extra>"),
        go.Bar(x=parts["component"], y=parts["intervened"], name=f"FFN L{last} removed", marker_color=CUT,
               hovertemplate="%{x}<br>FFN removed %{y:.3f}<extra></extra>"),
    ])
    fig.update_layout(barmode="group", height=340, margin=dict(l=50, r=20, t=20, b=40),
                      yaxis_title="attribution to logit(correct) - logit(noise)", legend=dict(orientation="h", y=1.1))
    return s.add(fig, html_table(ch[["component", "kind", "layer", "head", "clean", "intervened", "change"]]))


def _example_sequence(ctx: Context, max_len: int = 64):
    """A clean test sequence, cut to ``max_len`` tokens, with at least two repeated-trigger items."""
    _, cfg, task = ctx.result.load()
    batch = task.test_set(min(cfg.test_size, 64), seed=cfg.seed + 10_000)
    for i in range(batch.inputs.shape[0]):
        if int((batch.counts[i, :max_len] >= 2).sum()) >= 2:
            break
    n = min(max_len, batch.inputs.shape[1])
    return task, batch, i, n


def attention_section(ctx: Context) -> Section | None:
    model = ctx.model()
    s = Section("attention", "Attention patterns on a clean test sequence",
                intro="Every head of both layers (circuitsvis; hover a cell for its value). Trigger tokens are marked "
                      "▸ (repeated occurrences, where the answer is read, ▸▸); whitespace shows as ␣ and ⏎. Layer 0 "
                      "attends to the previous token; layer 1 attends from the trigger to the token that followed its "
                      "earlier occurrence.")
    if model is None:
        return s.add(note(fragment("Not computed: {}", ctx.model_missing or 'no model'), "warning"))
    from mechtrunc.core.adapters import adapt

    task, batch, i, n = _example_sequence(ctx)
    toks = batch.inputs[i, :n]
    labels = _labels(task, batch, i, n)
    a = adapt(model)
    store = {}
    hooks = [a.hook_name("pattern", l) for l in range(a.n_layers)]
    with torch.no_grad():
        from contextlib import ExitStack

        with ExitStack() as stack:
            for name in hooks:
                stack.enter_context(a.hooked(name, lambda p, name=name: store.__setitem__(name, p.detach())))
            a.forward(toks.reshape(1, -1).to(a.device))
    for layer, name in enumerate(hooks):
        pat = store[name][0].float().cpu()
        names = [f"L{layer}H{h}" for h in range(pat.shape[0])]
        s.add(CircuitsView("AttentionHeads", {"attention": pat, "tokens": labels, "attentionHeadNames": names,
                                              "maskUpperTri": True},
                           caption=f"<b>layer {layer}</b> ({len(names)} head{'s' if len(names) > 1 else ''})",
                           height=420))
    return s


def _labels(task, batch, i, n) -> list[str]:
    itos = task.itos
    out = []
    for p in range(n):
        ch = visible_token(itos[int(batch.inputs[i, p])])
        c = int(batch.counts[i, p])
        out.append(("▸▸" if c >= 2 else "▸" if c == 1 else "") + ch)
    return out


def token_probability_section(ctx: Context) -> Section | None:
    model = ctx.model()
    last = _last_layer(ctx)
    s = Section("token-probs", "Probability of the correct next token, clean vs FFN removed",
                intro="On the same sequence: the probability the model gives to the correct next token at every "
                      "position (after a trigger: the token that followed its first occurrence, i.e. the in-context "
                      f"answer; elsewhere: the actual next character). Full model, then layer {last}'s FFN removed. "
                      "Darker = higher probability. The chart below marks the repeated triggers.")
    if model is None:
        return s.add(note(fragment("Not computed: {}", ctx.model_missing or 'no model'), "warning"))
    import mechtrunc as mt
    import plotly.graph_objects as go

    task, batch, i, n = _example_sequence(ctx)
    toks = batch.inputs[i:i + 1, :n]
    target = batch.clean_targets()[i, :n]
    with torch.no_grad():
        clean = model(toks).softmax(-1)[0]
        with mt.intervene(model, mt.Ablate("mlp", layer=last)):
            cut = model(toks).softmax(-1)[0]
    p_clean = clean.gather(1, target[:, None]).squeeze(1)
    p_cut = cut.gather(1, target[:, None]).squeeze(1)
    labels = _labels(task, batch, i, n)
    for title, vals in (("full model", p_clean), (f"FFN L{last} removed", p_cut)):
        s.add(CircuitsView("ColoredTokens", {"tokens": labels, "values": vals, "minValue": 0.0, "maxValue": 1.0},
                           caption=f"<b>{title}</b>: P(correct next token)", height=40))
    rep = (batch.counts[i, :n] >= 2).nonzero().squeeze(1).tolist()
    x = list(range(n))
    fig = go.Figure([
        go.Scatter(x=x, y=p_clean.tolist(), mode="lines", name="full model", line=dict(color=FULL),
                   customdata=labels, hovertemplate="pos %{x} %{customdata}<br>P %{y:.3f}<extra>full</extra>"),
        go.Scatter(x=x, y=p_cut.tolist(), mode="lines", name=f"FFN L{last} removed", line=dict(color=CUT, dash="dash"),
                   customdata=labels, hovertemplate="pos %{x} %{customdata}<br>P %{y:.3f}<extra>FFN removed</extra>"),
        go.Scatter(x=rep, y=[p_clean[j].item() for j in rep], mode="markers", name="repeated trigger (full)",
                   marker=dict(color=FULL, size=10, symbol="star")),
        go.Scatter(x=rep, y=[p_cut[j].item() for j in rep], mode="markers", name="repeated trigger (FFN removed)",
                   marker=dict(color=CUT, size=10, symbol="star")),
    ])
    fig.update_layout(height=300, margin=dict(l=50, r=20, t=20, b=40), xaxis_title="position",
                      yaxis=dict(title="P(correct next token)", range=[-0.02, 1.02]), legend=dict(orientation="h", y=1.15))
    noise = task.config.noise_id
    p_noise = [(clean[j, noise].item(), cut[j, noise].item()) for j in rep]
    tab = pd.DataFrame({"position": rep, "token": [labels[j] for j in rep],
                        "correct": [visible_token(task.itos[int(target[j])]) for j in rep],
                        "P(answer) full": [p_clean[j].item() for j in rep],
                        "P(answer) FFN removed": [p_cut[j].item() for j in rep],
                        "P(noise) full": [a for a, _ in p_noise], "P(noise) FFN removed": [b for _, b in p_noise]})
    return s.add(fig, "<h3>At the repeated triggers</h3>", html_table(tab))


# ----------------------------------------------------------------------------------------
# causal localisation: activation patching, logit lens, generic components
# ----------------------------------------------------------------------------------------
#: pairs of the patching scan (recall_pair's n; the CLI's --n) and its sites
CAUSAL_PAIRS = 64
CAUSAL_SITES = ("resid_pre", "attn_out", "mlp_out", "z")
_DIRECTION_ORDER = ("denoising", "noising")


def causal_scan(ctx: Context) -> pd.DataFrame:
    """The section's patching scan: ``mt.patching_scan`` on the run's model and
    ``mt.recall_pair(task, n=CAUSAL_PAIRS)``, direction ``both`` (what ``mechtrunc patch scan RUN
    --direction both --n 64`` computes)."""
    import mechtrunc as mt

    _, _, task = ctx.result.load()
    clean, corrupted = mt.recall_pair(task, n=CAUSAL_PAIRS)
    df = mt.patching_scan(ctx.model(), clean, corrupted, sites=CAUSAL_SITES, direction="both")
    df.attrs.update(pairs=clean.n_sequences, dropped=int(clean.meta.get("dropped", 0) or 0))
    return df


def _patching_figure(df: pd.DataFrame):
    """Plotly heatmaps of a patching scan: one row per direction, one column per site (layer x
    position group; z: layer x head at position ``all``), colours centred at 0, 1 marked.  When
    the clean - corrupted gap is not resolved (``attrs["normalised"]`` false: the effects are
    undefined) the cells are the raw change (:func:`mechtrunc.analysis.patching.raw_change`) instead."""
    import math

    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from mechtrunc.analysis.patching import raw_change

    normalised = df.attrs.get("normalised", True)
    shown = "effect" if normalised else "change"
    if not normalised:
        df = df.assign(change=raw_change(df))

    directions = [d for d in _DIRECTION_ORDER if (df["direction"] == d).any()]
    sites = [s for s in CAUSAL_SITES if (df["site"] == s).any()]
    positions = ["all"] + [p for p in dict.fromkeys(df["position"].astype(str)) if p != "all"]
    layers = sorted(int(v) for v in df["layer"].unique())
    heads = sorted(int(h) for h in df["head"].dropna().unique())
    vals = [abs(float(v)) for v in df[shown] if not math.isnan(float(v))]
    if normalised:
        lim = min(2.0, max([1.0] + vals))
        ticks = [-lim, -1.0, 0.0, 1.0, lim] if lim > 1.25 else [-1.0, 0.0, 1.0]
        tick_text = {0.0: "0 = corrupted", 1.0: "1 = clean"}
    else:  # raw changes: their own scale, 0 = no change from the run patched into
        lim = max(vals + [1e-9])
        ticks, tick_text = [-lim, 0.0, lim], {0.0: "0 = no change"}
    widths = [max(2, len(heads)) if s == "z" else len(positions) for s in sites]
    fig = make_subplots(rows=len(directions), cols=len(sites), column_widths=[w / sum(widths) for w in widths],
                        horizontal_spacing=0.05, vertical_spacing=0.22 if len(directions) > 1 else 0.1,
                        subplot_titles=[f"{d}: {s}" + (" per head" if s == "z" else "") for d in directions
                                        for s in sites])
    small = len(layers) * max(widths) <= 80
    for r, d in enumerate(directions, 1):
        for c, s in enumerate(sites, 1):
            sub = df[(df["direction"] == d) & (df["site"] == s)]
            if s == "z":
                sub = sub[sub["position"].astype(str) == "all"]
                cols, key = heads, sub["head"].astype(int)
                xl = [f"H{h}" for h in heads]
            else:
                cols, key = positions, sub["position"].astype(str)
                xl = positions
            t = sub.assign(_c=key).pivot_table(index="layer", columns="_c", values=shown, aggfunc="first",
                                               dropna=False).reindex(index=layers, columns=cols)
            v = sub.assign(_c=key).pivot_table(index="layer", columns="_c", values="value", aggfunc="first",
                                               dropna=False).reindex(index=layers, columns=cols)
            z = [[None if math.isnan(x) else float(x) for x in row] for row in t.to_numpy(dtype=float)]
            text = [["" if x is None else f"{x:.2f}".replace("-0.00", "0.00") for x in row] for row in z]
            fig.add_trace(go.Heatmap(
                z=z, x=xl, y=[f"L{l}" for l in layers], customdata=v.to_numpy(dtype=float), colorscale="RdBu",
                zmid=0, zmin=-lim, zmax=lim, showscale=(r, c) == (1, len(sites)), name=f"{d} {s}",
                text=text, texttemplate="%{text}" if small else None, textfont=dict(size=11),
                hovertemplate=f"{d}, {s}<br>%{{y}} %{{x}}<br>{shown} %{{z:.4f}}<br>{df.attrs.get('metric', 'metric')} "
                              "%{customdata:.4f}<extra></extra>",
                colorbar=dict(title=dict(text=shown, side="right"), len=0.9, tickvals=ticks,
                              ticktext=[tick_text.get(t, f"{t:.3g}") for t in ticks])), row=r, col=c)
            last_row = r == len(directions)
            fig.update_xaxes(type="category", row=r, col=c,
                             title_text=("head (all positions)" if s == "z" else "position") if last_row else None)
            fig.update_yaxes(type="category", autorange="reversed", row=r, col=c,
                             title_text=f"{d}: layer" if c == 1 else None)
    fig.update_layout(height=max(320, 60 + len(directions) * (110 + 34 * len(layers))),
                      margin=dict(l=60, r=30, t=50, b=50))
    return fig


def _largest_effects(df: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The patches that move the metric most (:func:`mechtrunc.analysis.patching.largest_moves`, as
    ``mechtrunc patch scan`` prints them): the effect, or the raw change when the gap is not
    resolved."""
    from mechtrunc.analysis.patching import largest_moves

    shown = "effect" if df.attrs.get("normalised", True) else "change"
    top = largest_moves(df, n)
    return top[["direction", "site", "layer", "head", "position", "value", shown]].reset_index(drop=True)


def _lens_runs(last: int) -> dict:
    """The logit-lens runs, labelled as ``mechtrunc lens logit RUN --truncate mlp.W_in:L:0.1
    --remove-ffn L`` labels them."""
    import mechtrunc as mt

    return {"full model": [],
            f"mlp.W_in L{last} keep 0.1": [mt.Truncate("mlp.W_in", layer=last, keep=0.1)],
            f"FFN L{last} removed": [mt.Ablate("mlp", layer=last)]}


def _lens_figure(lens: pd.DataFrame):
    import plotly.graph_objects as go

    colors = {"p_answer": FULL, "p_noise": CUT}
    dashes = ["solid", "dash", "dot", "dashdot"]
    ticks = lens.drop_duplicates("depth").sort_values("depth")
    xt = [f"L{l} {s.replace('resid_', '')}" for l, s in zip(ticks["layer"], ticks["site"])]
    fig = go.Figure()
    for j, (label, sub) in enumerate(lens.groupby("label", sort=False)):
        sub = sub.sort_values("depth")
        for m, name in (("p_answer", "P(answer)"), ("p_noise", "P(noise)")):
            fig.add_trace(go.Scatter(x=sub["depth"], y=sub[m], mode="lines+markers", name=f"{name}, {label}",
                                     line=dict(color=colors[m], dash=dashes[j % len(dashes)]), marker=dict(size=5),
                                     hovertemplate=f"%{{y:.3f}}<extra>{name}, {label}</extra>"))
    fig.update_xaxes(tickvals=list(ticks["depth"]), ticktext=xt, title_text="residual stream (layer, site)")
    fig.update_yaxes(title_text="probability (logit lens)", range=[-0.02, 1.02])
    fig.update_layout(height=360, margin=dict(l=50, r=20, t=20, b=50), hovermode="x unified",
                      legend=dict(orientation="v", x=1.02, y=1))
    return fig


def causal_section(ctx: Context) -> Section | None:
    model = ctx.model()
    last = _last_layer(ctx)
    run = str(ctx.result.directory)
    s = Section("causal", "Causal localisation",
                intro="Activation patching between the clean recall items and their corruption (the trigger's first "
                      f"occurrence replaced; <code>mt.recall_pair(task, n={CAUSAL_PAIRS})</code>), scored with "
                      "logit(answer) - logit(noise): <i>denoising</i> runs the corrupted prompts and restores one "
                      "clean activation, <i>noising</i> runs the clean prompts and breaks one with the corrupted "
                      "run's (<code>mt.patching_scan</code>, sites resid_pre, attn_out, mlp_out per position group "
                      "and z per head). Then the logit lens along the residual stream and the <code>mlp.W_out</code> "
                      "components that promote the generic token found in the training data. Layers are 0-based.")
    if model is None:
        return s.add(note(fragment("Not computed: {}", ctx.model_missing or 'no model'), "warning"))
    import mechtrunc as mt

    df = causal_scan(ctx)
    s.add(fragment('<p class="small"><b>Effect: 1 = the clean run\'s metric, 0 = the corrupted run\'s.</b> Same '
                   'numbers: <code>mechtrunc patch scan {run} --direction both --n {pairs}</code>, '
                   '<code>mechtrunc lens logit {run} --truncate mlp.W_in:{last}:0.1 --remove-ffn {last}</code>, '
                   '<code>mechtrunc lens vocab {run} --matrix mlp.W_out --top 5</code>.</p>',
                   run=run, pairs=CAUSAL_PAIRS, last=last))
    a = df.attrs
    left = f", {a['dropped']} left out: trigger seen fewer than twice" if a["dropped"] else ""
    s.add(fragment('<p class="small">{pairs} pairs{left}; {metric}: clean {clean:.4g}, corrupted {corrupted:.4g} '
                   '({n} patches in {forwards} forward passes).</p>', pairs=a["pairs"], left=left, metric=a["metric"],
                   clean=a["clean"], corrupted=a["corrupted"], n=len(df), forwards=a["forwards"]))
    if not a["normalised"]:
        ci = f" [{a['gap_low']:+.4f}, {a['gap_high']:+.4f}]" if a["gap_low"] == a["gap_low"] else ""
        s.add(note(fragment("The clean - corrupted gap of {metric} is {gap:+.4f}{ci} ({level}% bootstrap over the "
                            "pairs), not resolved from zero: the model does not yet tell the clean items from the "
                            "corrupted ones, so normalised effects are undefined. The heatmaps and the table show the "
                            "raw change instead (value minus the run patched into: the corrupted run when denoising, "
                            "the clean run when noising).", metric=a["metric"], gap=a["gap"], ci=ci,
                            level=round(100 * a["level"])), "warning"))
        rank = ('<p class="small">Patches ranked by the size of their raw change (the normalised effect is '
                "undefined here).</p>")
    else:
        rank = ('<p class="small">Denoising patches ranked by how far they restore (effect towards 1), noising '
                "patches by how far they break (effect towards 0).</p>")
    s.add(_patching_figure(df), "<h3>Largest effects</h3>", rank, html_table(_largest_effects(df)))
    # logit lens on the clean test set (the CLI's prompts), full vs truncated vs FFN removed
    prompts = ctx.prompts()
    lens = mt.logit_lens_compare(model, prompts, _lens_runs(last))
    s.add("<h3>Logit lens</h3>",
          f'<p class="small">P(answer) (blue) and P(noise) (orange) read off the residual stream on the clean test '
          f"set; solid: full model, dashed: LASER on layer {last}'s <code>mlp.W_in</code> (keep 0.1), dotted: "
          f"layer {last}'s FFN removed. At L{last} post the lens is the model's output.</p>", _lens_figure(lens))
    # components of every layer's W_out that promote the most frequent training target
    _, cfg, task = ctx.result.load()
    noisy = task.sample(cfg.test_size, seed=cfg.seed + 20_000).to_prompts(clean=False)
    generic = mt.generic_tokens(noisy, k=1)
    tok = int(generic["token"].iloc[0])
    ranked = mt.rank_generic_components(model, "mlp.W_out", None, generic, prompts=prompts, itos=task.itos)
    ranked = ranked.sort_values("generic_score", ascending=False, kind="stable").head(5)
    noise = "" if tok != task.config.noise_id else " (the noise token, not told to the lens)"
    s.add("<h3>Top generic components</h3>",
          fragment('<p class="small">Generic token: <span class="tok">{token}</span>, the most frequent noisy '
                   "training target ({frequency:.1%}){noise}. Components of every layer's <code>mlp.W_out</code> by "
                   "<code>generic_score</code> (<code>mt.rank_generic_components</code>: weights only); "
                   "<code>activation_score</code>: their mean push on the clean test items.</p>",
                   token=visible_token(task.itos[tok]), frequency=float(generic["frequency"].iloc[0]), noise=noise),
          html_table(ranked[["layer", "component", "singular_value", "generic_score", "generic_z", "generic_rank",
                             "top_str", "mean_coef", "activation_score"]]))
    return s


SECTIONS = [config_section, training_section, truncation_section, components_section, attribution_section,
            causal_section, attention_section, token_probability_section]
