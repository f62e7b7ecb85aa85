"""Sections of a truncation-study report (``truncation_study(out=...)`` / ``mechtrunc pythia truncate``).

Table sections read the study's files only.  The example sections (attribution change, attention
patterns, top-5 next tokens) load the model and run a few prompts; without a loadable model they
are replaced by a note saying why."""

from __future__ import annotations

import math

import pandas as pd
import torch

from mechtrunc.report.context import Context, token_strings, visible_token
from mechtrunc.report.page import CircuitsView, Section, fragment, html_table, note, render
from mechtrunc.core.results import LOWER_IS_BETTER, P_ANSWER, default_metric, find_row, metric_columns
from mechtrunc.studies.truncation_files import ATTRIBUTION_FILE, BEST_FILE

__all__ = ["SECTIONS", "choose_metric"]

def choose_metric(result) -> str:
    best = result.best or {}
    m = (best.get("best") or {}).get("metric")
    cols = metric_columns(result.table)
    if m in cols:
        return m
    try:
        return default_metric(cols)
    except ValueError:
        return cols[0]


def competitor_of(metric: str, cols) -> str | None:
    comps = [c[len("p_"):] for c in cols if c.startswith("p_") and c != P_ANSWER]
    if metric.startswith("logit_diff_") or metric.startswith("acc_vs_"):
        name = metric.split("_", 2)[-1]
        if name in comps:
            return name
    return "the" if "the" in comps else (comps[0] if comps else None)


def change_intervals_of(result, metric: str, n_boot: int | None = None, level: float = 0.95, seed: int = 0):
    """:func:`mechtrunc.analysis.selection.table_change_intervals` of ``result``'s table and per-item side
    table (``items.parquet``), cached on ``result``; None without a side table or the metric."""
    from mechtrunc.analysis.selection import DEFAULT_N_BOOT, table_change_intervals

    items = getattr(result, "items", None)
    if items is None or metric not in getattr(items, "columns", ()):
        return None
    n_boot = DEFAULT_N_BOOT if n_boot is None else n_boot
    cache = result.__dict__.setdefault("_intervals", {})
    if (metric, n_boot, level, seed) not in cache:
        cache[(metric, n_boot, level, seed)] = table_change_intervals(result.table, items, metric, n_boot, level, seed)
    return cache[(metric, n_boot, level, seed)]


def _interval_note(iv, metric: str) -> str:
    a = iv.attrs
    return fragment('<p class="small">Change of {metric} against the full model with its {level}% paired bootstrap '
                    'interval [ci_low, ci_high] (the same resampled items for both; {n_boot} resamples of the '
                    '{n_sequences} sequences, {n_items} items; seed {seed}), from the study\'s per-item table '
                    'items.parquet. In-sample: the best of many configurations is biased upward (see the held-out '
                    'choice).</p>', metric=metric, level=round(100 * a["level"]), n_boot=a["n_boot"],
                    n_sequences=a["n_sequences"], n_items=a["n_items"], seed=a["seed"])


def study_section(ctx: Context) -> Section:
    r = ctx.result
    df = r.table
    grid = df[~df["baseline"]]
    s = Section("study", "Study", intro="Settings and size of the truncation grid (read from study.json and the table).")
    rows = {"configurations": len(grid), "layers": ", ".join(str(int(v)) for v in sorted(grid["layer"].dropna().unique())),
            "matrices": ", ".join(dict.fromkeys(grid["matrix"])),
            "keeps": ", ".join(f"{k:g}" for k in sorted({float(k) for k in grid["keep"].dropna()}, reverse=True)),
            "items per evaluation": r.study.get("n_items", df.get("n_items", pd.Series([None])).iloc[0]),
            "evaluation time (s, sum)": round(float(df["seconds"].sum()), 2) if "seconds" in df else None}
    s.add(html_table(pd.DataFrame({"": list(rows), "value": [str(v) for v in rows.values()]})))
    return s


def heatmap_section(ctx: Context) -> Section:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    r = ctx.result
    df = r.table
    metric = choose_metric(r)
    cols = metric_columns(df)
    grid = df[~df["baseline"]]
    base = df[df["baseline"]]
    matrices = list(dict.fromkeys(grid["matrix"]))
    layers = sorted(int(v) for v in grid["layer"].dropna().unique())
    keeps = sorted({float(k) for k in grid["keep"].dropna()}, reverse=True)
    s = Section("heatmaps", "Truncation heatmaps",
                intro="One heatmap per matrix: layers (rows) by the kept fraction of the rank (columns). Colour: the "
                      "metric chosen in the menu, centred on the full model's value (blue = better than the full "
                      "model, red = worse; for <i>loss</i> lower is better). Hover a cell for every metric.")
    fig = make_subplots(rows=1, cols=len(matrices), subplot_titles=matrices, shared_yaxes=True,
                        horizontal_spacing=0.06)

    def z_for(m, metric):
        sub = grid[grid["matrix"] == m]
        t = sub.pivot_table(index="layer", columns="keep", values=metric, aggfunc="first")
        return t.reindex(index=layers, columns=keeps).to_numpy(dtype=float)

    def custom_for(m):
        sub = grid[grid["matrix"] == m].set_index(["layer", "keep"])
        out = []
        for layer in layers:
            row = []
            for k in keeps:
                try:
                    rec = sub.loc[(layer, k)]
                    if isinstance(rec, pd.DataFrame):
                        rec = rec.iloc[0]
                    row.append([_num(rec.get("rank"))] + [_num(rec[c]) for c in cols])
                except KeyError:
                    row.append([None] * (len(cols) + 1))
            out.append(row)
        return out

    hover = "layer %{y}, keep %{x}<br>rank %{customdata[0]}<br>" + "<br>".join(
        f"{c}: %{{customdata[{i + 1}]:.4g}}" for i, c in enumerate(cols)) + "<extra>%{fullData.name}</extra>"
    ranges = {}
    for c in cols:
        vals = grid[c].astype(float).to_numpy()
        b = float(base[c].iloc[0]) if len(base) else float("nan")
        lo, hi = _nanmin(list(vals) + [b]), _nanmax(list(vals) + [b])
        if not math.isnan(b):  # symmetric around the full model so white = no change
            half = max(abs(hi - b), abs(b - lo), 1e-9)
            lo, hi = b - half, b + half
        ranges[c] = (lo, hi, b)
    scale = lambda c: "RdBu_r" if c in LOWER_IS_BETTER else "RdBu"
    xlabels = [f"{k:g}" for k in keeps]
    for j, m in enumerate(matrices, 1):
        lo, hi, b = ranges[metric]
        z = z_for(m, metric)
        fig.add_trace(go.Heatmap(
            z=z, x=xlabels, y=[str(x) for x in layers], customdata=custom_for(m), hovertemplate=hover, name=m,
            colorscale=scale(metric), zmin=lo, zmax=hi, showscale=j == len(matrices),
            text=[[("" if math.isnan(v) else f"{v:.2f}") for v in row] for row in z],
            texttemplate="%{text}" if len(layers) * len(keeps) <= 200 else None, textfont=dict(size=10),
            colorbar=dict(title=dict(text=metric, side="right"), len=0.9)), row=1, col=j)
        fig.update_xaxes(title_text="keep (fraction of rank)", type="category", row=1, col=j)
    fig.update_yaxes(title_text="layer", type="category", autorange="reversed", row=1, col=1)
    buttons = []
    for c in cols:
        lo, hi, b = ranges[c]
        zs = [z_for(m, c) for m in matrices]
        buttons.append(dict(label=c, method="restyle", args=[{
            "z": zs, "zmin": [lo] * len(matrices), "zmax": [hi] * len(matrices),
            "colorscale": [scale(c)] * len(matrices),
            "text": [[[("" if math.isnan(v) else f"{v:.2f}") for v in row] for row in z] for z in zs],
            "colorbar.title.text": [c] * len(matrices)}]))
    fig.update_layout(
        height=max(300, 120 + 26 * len(layers)), margin=dict(l=60, r=30, t=70, b=50),
        updatemenus=[dict(buttons=buttons, active=cols.index(metric), x=0, xanchor="left", y=1.22, yanchor="top",
                          showactive=True)])
    b = ranges[metric][2]
    s.add(fig)
    if not math.isnan(b):
        s.add(fragment('<p class="small">Full model: {} = {:.4g}. Keep 1 is the identity (the full model).</p>',
                       metric, b))
    shown = df.drop(columns=[c for c in ("rule", "svd", "mode", "intervention") if c in df.columns])
    iv = change_intervals_of(r, metric)
    if iv is not None:
        at = list(shown.columns).index(metric) + 1
        for j, (name, col) in enumerate(((f"change {metric}", "change"), ("ci_low", "ci_low"), ("ci_high", "ci_high"))):
            shown.insert(at + j, name, iv[col].to_numpy())
    s.add("<h3>Table</h3>")
    if iv is not None:
        s.add(_interval_note(iv, metric))
    s.add(html_table(shown, highlight=[i for i, v in enumerate(df["baseline"]) if v]))
    return s


def _num(v):
    try:
        if v is None or pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return float(v) if isinstance(v, float) else (int(v) if hasattr(v, "__int__") else v)


def _nanmin(xs):
    xs = [x for x in xs if not math.isnan(x)]
    return min(xs) if xs else 0.0


def _nanmax(xs):
    xs = [x for x in xs if not math.isnan(x)]
    return max(xs) if xs else 1.0


def best_config(result) -> dict | None:
    """The best configuration: ``best.json`` when the study wrote one, else the table's best by
    the chosen metric (:func:`mechtrunc.studies.best_configuration`)."""
    if result.best and result.best.get("best"):
        return result.best["best"]
    from mechtrunc.studies import best_configuration

    metric = choose_metric(result)
    try:
        return best_configuration(result.table, metric, higher_is_better=metric not in LOWER_IS_BETTER)
    except ValueError:
        return None


def best_section(ctx: Context) -> Section:
    r = ctx.result
    df = r.table
    s = Section("best", "Best configuration vs the full model")
    best = best_config(r)
    if best is None:
        return s.add(note("No truncation row has a value for the chosen metric yet.", "warning"))
    row = find_row(df, best)
    base = df[df["baseline"]]
    s.intro = fragment("Best by <b>{metric}</b>: layer {layer} <code>{matrix}</code> keep {keep:g} (rank {rank}); "
                       "source: {source}.", metric=best["metric"], layer=best["layer"], matrix=best["matrix"],
                       keep=best["keep"], rank=best.get("rank"), source=BEST_FILE if r.best else "the table")
    cols = metric_columns(df)
    tab = pd.DataFrame({"metric": cols,
                        "full model": [float(base[c].iloc[0]) if len(base) else None for c in cols],
                        "best truncation": [float(row[c]) if row is not None else None for c in cols]})
    tab["change"] = tab["best truncation"] - tab["full model"]
    note_iv = None
    if row is not None:
        pos = list(df.index).index(row.name) if row.name in df.index else None
        low, high = [], []
        for c in cols:
            iv = change_intervals_of(r, c)
            ok = iv is not None and pos is not None
            low.append(float(iv["ci_low"].iloc[pos]) if ok else float("nan"))
            high.append(float(iv["ci_high"].iloc[pos]) if ok else float("nan"))
            note_iv = note_iv if note_iv is not None or not ok else iv
        if note_iv is not None:
            tab["ci_low"], tab["ci_high"] = low, high
    s.add(html_table(tab, highlight=[cols.index(best["metric"])] if best["metric"] in cols else []))
    if note_iv is not None:
        s.add(_interval_note(note_iv, "each metric"))
    else:
        s.add('<p class="small">No per-item table (items.parquet) in this study: no intervals. Rerun the study '
              'with this version to add one (finished rows are recomputed once for their items).</p>')
    h = getattr(r, "heldout", None)
    if h is not None and len(h):
        keep = [c for c in ("part", "intervention", "metric", "full", "truncated", "change", "ci_low", "ci_high",
                            "n_items", "n_boot", "collateral_full", "collateral_truncated", "collateral_change",
                            "budget") if c in h.columns and not h[c].isna().all()]
        s.add("<h3>Held-out choice (heldout.csv)</h3>",
              '<p class="small">Chosen on the select part of the prompts, reported on both parts (eval: held out) '
              'with paired bootstrap intervals of the change; collateral: the loss on reference text.</p>',
              html_table(h[keep]))
    return s


def _attribution(ctx: Context):
    """The attribution change under the best configuration: the study's file, else computed."""
    r = ctx.result
    if r.attribution is not None and {"component", "kind", "layer", "head", "change"} <= set(r.attribution.columns):
        return r.attribution, ATTRIBUTION_FILE
    model, prompts = ctx.model_and_prompts()
    if model is None:
        return None, None
    import mechtrunc as mt
    from mechtrunc.studies import as_truncate

    best = best_config(r)
    return mt.attribute_change(model, prompts, as_truncate(best)), "computed now on the study's prompts"


def attribution_section(ctx: Context) -> Section:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    s = Section("attribution", "Attribution change under the best configuration",
                intro="Direct logit attribution of logit(answer) - logit(competitor) per layer and head (and per MLP), "
                      "truncated minus full model, averaged over the prompts. Blue: the component pushes the answer "
                      "more after the truncation.")
    best = best_config(ctx.result)
    if best is None:
        return s.add(note("No best configuration.", "warning"))
    ch, source = _attribution(ctx)
    if ch is None:
        return s.add(note(fragment("Not computed: {}", ctx.model_missing or 'no model'), "warning"))
    comp = competitor_of(best["metric"], [f"p_{c}" for c in ch["competitor"].unique()])
    ch = ch[ch["competitor"] == comp] if comp in set(ch["competitor"]) else ch[ch["competitor"] == ch["competitor"].iloc[0]]
    comp = ch["competitor"].iloc[0]
    heads = ch[ch["kind"] == "head"].copy()
    heads["layer"] = heads["layer"].astype(int)
    heads["head"] = heads["head"].astype(int)
    L = int(heads["layer"].max()) + 1 if len(heads) else 0
    H = int(heads["head"].max()) + 1 if len(heads) else 0
    z = [[None] * H for _ in range(L)]
    for _, rr in heads.iterrows():
        z[rr["layer"]][rr["head"]] = float(rr["change"])
    mlp = ch[ch["kind"] == "mlp"].copy()
    # the heads' own scale: an MLP change (often much larger) would wash the heads out
    lim = max([abs(v) for row in z for v in row if v is not None] + [1e-9])
    fig = make_subplots(rows=1, cols=2, column_widths=[0.7, 0.3], horizontal_spacing=0.12,
                        subplot_titles=["heads: change", "MLP per layer: clean vs truncated"])
    fig.add_trace(go.Heatmap(z=z, x=[str(h) for h in range(H)], y=[str(l) for l in range(L)], colorscale="RdBu",
                             zmid=0, zmin=-lim, zmax=lim, colorbar=dict(title=dict(text="change"), x=0.62, len=0.9),
                             hovertemplate="L%{y}H%{x}<br>change %{z:.4f}<extra></extra>"), row=1, col=1)
    fig.update_xaxes(title_text="head", type="category", row=1, col=1)
    fig.update_yaxes(title_text="layer", type="category", autorange="reversed", row=1, col=1)
    if len(mlp):
        mlp = mlp.sort_values("layer")
        y = [str(int(v)) for v in mlp["layer"]]
        fig.add_trace(go.Bar(y=y, x=mlp["clean"], orientation="h", name="full model", marker_color="#1f5fa8",
                             hovertemplate="L%{y} MLP clean %{x:.4f}<extra></extra>"), row=1, col=2)
        fig.add_trace(go.Bar(y=y, x=mlp["intervened"], orientation="h", name="truncated", marker_color="#d9622b",
                             hovertemplate="L%{y} MLP truncated %{x:.4f}<extra></extra>"), row=1, col=2)
        fig.update_yaxes(type="category", autorange="reversed", title_text="layer", row=1, col=2)
        fig.update_xaxes(title_text="attribution", row=1, col=2)
    fig.update_layout(height=max(320, 140 + 24 * L), margin=dict(l=60, r=20, t=70, b=50), barmode="group",
                      legend=dict(orientation="h", x=1.0, xanchor="right", y=1.12, yanchor="bottom"))
    s.add(fragment('<p class="small">Competitor: <b>{}</b>; source: {}.</p>', str(comp), source), fig)
    top = ch[ch["kind"] != "total"].reindex(ch[ch["kind"] != "total"]["change"].abs().sort_values(ascending=False).index)
    s.add("<h3>Largest changes</h3>", html_table(top[["component", "kind", "layer", "head", "clean", "intervened", "change"]].head(15)))
    ctx.top_heads = [(int(a), int(b)) for a, b in heads.reindex(heads["change"].abs().sort_values(ascending=False).index)[["layer", "head"]].head(3).to_numpy()]
    return s


def _example_items(prompts, n: int) -> list[int]:
    seen, items = set(), []
    for i in range(len(prompts)):
        r = int(prompts.rows[i])
        if r not in seen:
            seen.add(r)
            items.append(i)
        if len(items) == n:
            break
    return items


def examples_section(ctx: Context) -> Section:
    s = Section("examples", "Example prompts: attention of the most-changed heads, top-5 next tokens",
                intro="For a few prompts: the attention patterns of the heads whose attribution changes most, full "
                      "model and under the best truncation (a truncated MLP only changes the attention of later "
                      "layers), and the five most likely next tokens before and after, with their probabilities "
                      "(<span class='answer'>answer</span>, <span class='the'>competitor</span> highlighted).")
    best = best_config(ctx.result)
    model, prompts = ctx.model_and_prompts()
    if best is None or model is None:
        return s.add(note(fragment("Not computed: {}", ctx.model_missing or 'no best configuration'), "warning"))
    import mechtrunc as mt
    from mechtrunc.core.adapters import adapt
    from mechtrunc.studies import as_truncate

    iv = as_truncate(best)
    heads = getattr(ctx, "top_heads", None)
    a = adapt(model)
    if not heads:
        heads = [(a.n_layers - 1, h) for h in range(min(3, a.n_heads))]
    comp_names = list(prompts.competitor_names)
    comp_j = comp_names.index("the") if "the" in comp_names else 0
    s.add(fragment('<p class="small">Best truncation: <code>{}</code>; heads shown: {}.</p>', iv.label,
                   ", ".join(f"L{l}H{h}" for l, h in heads)))
    for n, i in enumerate(_example_items(prompts, ctx.examples), 1):
        row, pos = int(prompts.rows[i]), int(prompts.pos[i])
        toks = prompts.tokens[row, : pos + 1].reshape(1, -1).to(a.device)
        labels = token_strings(model, toks[0].tolist())
        pats, logits = {}, {}
        for variant, ivs in (("full", ()), ("truncated", (iv,))):
            store = {}
            layers = sorted({l for l, _ in heads})
            with mt.intervene(model, *ivs), torch.no_grad():
                from contextlib import ExitStack

                with ExitStack() as stack:
                    for l in layers:
                        name = a.hook_name("pattern", l)
                        stack.enter_context(a.hooked(name, lambda p, l=l: store.__setitem__(l, p.detach())))
                    out = a.forward(toks)
            logits[variant] = out[0, pos].float().cpu()
            pats[variant] = {f"L{l}H{h}": store[l][0, h].float().cpu() for l, h in heads}
        att, names = [], []
        for l, h in heads:
            for variant in ("full", "truncated"):
                att.append(pats[variant][f"L{l}H{h}"])
                names.append(f"L{l}H{h} {variant}")
        answer = int(prompts.answer[i])
        compet = int(prompts.competitors[i, comp_j])
        text = (prompts.texts[row] if prompts.texts is not None and row < len(prompts.texts) else
                "".join(labels))
        s.add(fragment("<h3>Prompt {n}: <span class='tok'>{text}</span></h3><p class='small'>answer <span "
                       "class='tok answer'>{answer}</span>, competitor ({name}) <span class='tok the'>{competitor}</span>"
                       "</p>", n=n, text=text, answer=token_strings(model, [answer])[0], name=comp_names[comp_j],
                       competitor=token_strings(model, [compet])[0]))
        s.add(_top5_html(model, logits, answer, compet))
        s.add(CircuitsView("AttentionHeads", {"attention": torch.stack(att), "tokens": labels,
                                              "attentionHeadNames": names, "maskUpperTri": True},
                           caption="attention, full vs truncated", height=360))
    return s


def _top5_html(model, logits: dict, answer: int, compet: int, k: int = 5) -> str:
    tables = []
    for variant, lg in logits.items():
        p = lg.softmax(-1)
        top = p.topk(k)
        ids = top.indices.tolist()
        rows = [{"cls": "answer" if t == answer else ("the" if t == compet else ""), "name": None,
                 "token": token_strings(model, [t])[0], "p": pv} for t, pv in zip(ids, top.values.tolist())]
        rows += [{"cls": cls, "name": name, "token": token_strings(model, [t])[0], "p": p[t].item(),
                  "rank": int((p > p[t]).sum()) + 1}
                 for t, cls, name in ((answer, "answer", "answer"), (compet, "the", "competitor")) if t not in ids]
        tables.append({"variant": variant, "rows": rows})
    return render("top_tokens.html.j2", tables=tables, k=k)


SECTIONS = [study_section, heatmap_section, best_section, attribution_section, examples_section]
