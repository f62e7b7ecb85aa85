"""Sections of a language-model run report (``mechtrunc lm train --out RUN``): the configuration,
the training loss, the checkpoints and, once ``mechtrunc lm study RUN`` has written its tables
to ``RUN/study/``, the study (:func:`mechtrunc.studies.lm.study_run`): learning curves on the
eval prompts, the order of learning, the truncation grid, the chosen truncations, where the
" the" association lives and the margin ledger across checkpoints.

The prompt sets follow the run's corpus (:func:`mechtrunc.studies.lm.study_tasks`): IOI, factual
and generic prompts on the default corpus, recall and binding (and generic, when the corpus has
generic "to" sentences) on a noisy-recall one.

Everything comes from the run's files; the study is never recomputed (the order of learning and
the chosen configurations are the study's own pure-pandas rules applied to its tables:
:func:`~mechtrunc.studies.lm.learning_steps`, :func:`~mechtrunc.studies.lm.choose_truncation`).
Without ``RUN/study/`` the page says how to make it."""

from __future__ import annotations

import math

import pandas as pd

from mechtrunc.models.lm_run import step_name
from mechtrunc.report.context import Context
from mechtrunc.report.page import Section, fragment, html_table, note

__all__ = ["SECTIONS", "study_steps", "chosen_truncations", "run_tasks", "prompt_names", "ledger_summary"]

ANSWER, THE, SUBJECT, LOSS = "#1f5fa8", "#d9622b", "#2e8b57", "#6b4fa0"
OTHER = SUBJECT  # the other candidate the context offers (IOI's subject, recall's other city)
#: the order-of-learning steps of :func:`mechtrunc.studies.lm.learning_steps`, in the order shown
#: (``{the}``, ``{rule}``, ``{where}``, ``{main}``: the run's " the" context, threshold rule and
#: main task, :func:`_wording`)
STEP_LABELS = {
    "step_the": "{the} learned: P(' the') on the {where} prompts reaches {rule}",
    "step_fact_beats_the": "factual answer beats ' the' (mean P(answer) > mean P(' the')) at every later checkpoint",
    "step_ioi_beats_the": "IOI answer (the indirect object) beats ' the' at every later checkpoint",
    "step_io_beats_s": "IO beats the subject (accuracy >= 0.75) at every later checkpoint",
    "step_recall_beats_the": "recall answer (the stated city) beats ' the' (mean P(answer) > mean P(' the')) at every "
                             "later checkpoint",
    "step_binding": "binding: the queried name's city beats the other stated city (accuracy >= 0.75) at every later "
                    "checkpoint",
    "step_competition": "{main} compete most evenly: max of min({answer}, P(' the')) from step_the on",
}
#: the task an order-of-learning step is about (the others apply to every run)
STEP_TASK = {"step_fact_beats_the": "factual", "step_ioi_beats_the": "ioi", "step_io_beats_s": "ioi",
             "step_recall_beats_the": "recall", "step_binding": "binding"}
#: per study task: the curves panel's title and traces (column, label, colour), the task's part of
#: the curves' intro, its answer's label, its other in-context candidate (column, label; None), and
#: the order-of-learning step drawn on its panel
TASK_INFO = {
    "ioi": dict(title="IOI (held-out templates)", answer="P(IO)", second=("p_subject", "P(S)"),
                traces=[("p_answer", "P(IO)", ANSWER), ("p_subject", "P(S)", SUBJECT), ("p_the", "P(' the')", THE)],
                about="IOI: P(IO) (the answer), P(S) (the subject) and P(' the')", mark="step_ioi_beats_the"),
    "factual": dict(title="factual recall", answer="P(answer)", second=None,
                    traces=[("p_answer", "P(answer)", ANSWER), ("p_the", "P(' the')", THE)],
                    about="factual recall: P(answer) and P(' the')", mark="step_fact_beats_the"),
    "generic": dict(title="generic ' to' prompts", answer="P(' the')", second=None,
                    traces=[("p_answer", "P(' the') after ' to'", THE)],
                    about="generic prompts ending in ' to': P(' the') (their answer)", mark=None),
    "recall": dict(title="recall (one city stated)", answer="P(city)", second=("p_other", "P(absent city)"),
                   traces=[("p_answer", "P(city)", ANSWER), ("p_other", "P(absent city)", "#8c8c8c"),
                           ("p_the", "P(' the')", THE)],
                   about="recall (\"Mary went to Paris.\" stated, the story's repeat cut after \"went to\"): P(city) "
                         "(the answer), P(absent city) (a city not in the context: the floor of copying) and P(' the')",
                   mark="step_recall_beats_the"),
    "binding": dict(title="binding (several cities stated)", answer="P(city)",
                    second=("p_other", "P(other stated city)"),
                    traces=[("p_answer", "P(city)", ANSWER), ("p_other", "P(other stated city)", OTHER),
                            ("p_the", "P(' the')", THE)],
                    about="binding (several statements, one queried): P(city) (the queried name's), P(other stated "
                          "city) (telling them apart needs the name bound to its city) and P(' the')",
                    mark="step_binding"),
}
#: the metrics of a chosen truncation in its table and bars (``p_other`` where the prompts have it)
BEST_METRICS = (("p_answer", "P(answer)"), ("p_the", "P(' the')"), ("p_other", "P(other city)"))
#: the tasks whose truncation grid is drawn as heatmaps (the in-context tasks with a second candidate)
HEATMAP_TASKS = ("ioi", "recall", "binding")


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------
def _study_command(r) -> str:
    n = (r.study or {}).get("n_prompts")
    return f"mechtrunc lm study {r.directory}" + (f" --n {n}" if n not in (None, 200) else "")


def _missing(r, table: str) -> str:
    from mechtrunc.studies.lm_files import TABLES

    return note(fragment("<code>study/{}</code> is missing: the study was interrupted before writing it. Rerun "
                         "<code>{}</code> to finish it (finished tables are kept).", TABLES[table], _study_command(r)),
                "warning")


def _corpus(r):
    """The run's :class:`~mechtrunc.models.lm.corpus.CorpusConfig` (run.json)."""
    from mechtrunc.models.lm.corpus import CorpusConfig

    return CorpusConfig.from_dict(dict(r.config.get("corpus") or {}))


def run_tasks(r) -> tuple[str, ...]:
    """The prompt sets the run is studied on (:func:`mechtrunc.studies.lm.study_tasks` of its corpus)."""
    from mechtrunc.studies.lm import study_tasks

    return study_tasks(_corpus(r))


def prompt_names(r) -> str:
    """The run's prompt sets in words: "IOI, factual and generic ' to'" on the default corpus."""
    words = {"ioi": "IOI", "generic": "generic ' to'"}
    names = [words.get(t, t) for t in run_tasks(r)]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


def _answer_tasks(r) -> tuple[str, ...]:
    from mechtrunc.studies.lm import answer_tasks

    return answer_tasks(run_tasks(r))


def _the_threshold(r) -> float:
    """The study's threshold of step_the (:func:`mechtrunc.studies.lm.the_threshold` of the run's corpus)."""
    from mechtrunc.studies.lm import the_threshold

    return the_threshold(_corpus(r))


def _wording(r) -> dict:
    """How the run's study measures " the": ``the`` / ``after`` (the context: after " to" on generic
    prompts, else after "went to" on the recall prompts), ``where`` (those prompts), ``rule`` (the
    threshold's rule and value), ``main`` / ``answer`` (the main task's answer and ' the', the
    answer's label), ``task`` (the main task)."""
    tasks = run_tasks(r)
    generic = "generic" in tasks
    main = _answer_tasks(r)[0]
    thr = _the_threshold(r)
    after = "' to'" if generic else "'went to'"
    return {"the": f"' the' after {after}", "after": after,
            "where": "generic" if generic else "recall",
            "rule": f"{'to_the_share' if generic else 'recall_noise'} / 2 = {thr:g}",
            "main": "IO and ' the'" if main == "ioi" else f"the {main} answer and ' the'",
            "answer": "P(IO)" if main == "ioi" else "P(answer)", "task": main}


def study_steps(r) -> dict | None:
    """The order of learning of a run's study (:func:`mechtrunc.studies.lm.learning_steps` on
    ``study/curves.csv``, the threshold of :func:`mechtrunc.studies.lm.the_threshold` of the run's
    corpus); None without curves."""
    curves = r.tables.get("curves")
    if curves is None or curves.empty:
        return None
    from mechtrunc.studies.lm import learning_steps

    return learning_steps(curves, the_threshold=_the_threshold(r))


def _grids(r) -> dict:
    """``{"final": (step, grid), "competition": (step, grid)}`` for the grids the study wrote."""
    out = {}
    steps = study_steps(r)
    for when in ("final", "competition"):
        g = r.tables.get(f"grid_{when}")
        if g is None or g.empty:
            continue
        step = int(r.config.get("steps")) if when == "final" else (
            int(steps["step_competition"]) if steps else None)
        out[when] = (step, g)
    return out


def chosen_truncations(r) -> list[dict]:
    """Per grid checkpoint and task: the study's choice (:func:`~mechtrunc.studies.lm.choose_truncation`
    on the select prompts within the study's loss budget, as :func:`~mechtrunc.studies.lm.study_run`
    makes it) and its change on the eval prompts (``change``: the rows of ``study/best_*.csv``,
    None when that file is missing, empty when the full model was kept)."""
    from mechtrunc.studies.lm import choose_truncation

    budget = (r.study or {}).get("loss_budget", 0.1)
    out = []
    for when, (step, grid) in _grids(r).items():
        for task in _answer_tasks(r):
            if not (grid["prompts"] == f"{task}/select").any():
                continue
            row = choose_truncation(grid, task, max_loss_increase=budget)
            out.append({"checkpoint": when, "step": step, "task": task, "baseline": bool(row["baseline"]),
                        "layer": None if row["baseline"] else int(row["layer"]),
                        "matrix": None if row["baseline"] else row["matrix"],
                        "keep": None if row["baseline"] else float(row["keep"]),
                        "select_gain": float(row["select_gain"]), "loss_increase": float(row["loss_increase"]),
                        "change": r.tables.get(f"best_{when}_{task}")})
    return out


def _log_x(steps):
    """Log-axis positions: step 0 drawn at half the smallest positive step (labelled 0)."""
    pos = sorted(s for s in set(steps) if s > 0)
    zero_at = pos[0] / 2 if pos else 0.5
    return [s if s > 0 else zero_at for s in steps], zero_at


def _log_ticks(steps):
    """Tick positions and labels of a log step axis (:func:`_log_x`), thinned so they never
    overlap: >= 2.5x apart (>= 1.4x with at most 12 steps), the final step always."""
    tickvals, ticktext = _log_x(steps)[0], [str(st) for st in steps]
    apart, near = (2.5, 1.5) if len(steps) > 12 else (1.4, 1.4)
    keep, last = [], None
    for i, x in enumerate(tickvals):
        if last is None or x >= apart * last:
            keep.append(i)
            last = x
    if keep and keep[-1] != len(steps) - 1:  # the final step always, in place of a too-close neighbour
        if tickvals[-1] < near * tickvals[keep[-1]] and len(keep) > 1:
            keep.pop()
        keep.append(len(steps) - 1)
    return [tickvals[i] for i in keep], [ticktext[i] for i in keep]


def _other_city(task: str) -> bool:
    """Whether ``task``'s prompts have a city besides the answer (competitor ``other``: recall, binding)."""
    return (TASK_INFO[task]["second"] or (None,))[0] == "p_other"


def _fmt_step(v, last) -> str:
    return f"not by step {last}" if v is None or (isinstance(v, float) and math.isnan(v)) else str(int(v))


# ----------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------
def config_section(ctx: Context) -> Section:
    r = ctx.result
    cfg = dict(r.config)
    corpus = dict(cfg.pop("corpus", {}) or {})
    for key in ("heldout_names", "train_names"):
        v = corpus.get(key)
        if isinstance(v, list):
            corpus[key] = f"{len(v)} names: " + ", ".join(v[:6]) + (", ..." if len(v) > 6 else "")
    model = pd.DataFrame({"option": list(cfg), "value": [str(v) for v in cfg.values()]})
    corp = pd.DataFrame({"option": list(corpus), "value": [str(v) for v in corpus.values()]})
    s = Section("config", "Configuration",
                intro="Model and training options (LMConfig) and corpus options (CorpusConfig) saved with the run "
                      "(run.json), and the training summary (summary.json).")
    parts = [fragment("<div><h3>Model and training</h3>{}</div>", html_table(model, max_rows=60, scroll=False)),
             fragment("<div><h3>Corpus</h3>{}</div>", html_table(corp, max_rows=60, scroll=False))]
    if r.summary is not None:
        keys = ("parameters", "vocab_size", "steps", "final_loss", "seconds", "tokens_per_second", "resumed_from",
                "peak_rss_mb")
        summ = pd.DataFrame({"": [k for k in keys if k in r.summary], "value": [str(r.summary[k]) for k in keys
                                                                                if k in r.summary]})
        parts.append(fragment("<div><h3>Training summary</h3>{}</div>", html_table(summ, scroll=False)))
    s.add('<div class="flex">' + "".join(parts) + "</div>")
    if r.summary is None:
        s.add(note(fragment("{}", r.incomplete or "summary.json is missing"), "warning"))
    return s


def training_section(ctx: Context) -> Section:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    r = ctx.result
    h = r.history
    s = Section("training", "Training loss",
                intro="Next-token cross-entropy of each training batch (history.csv; fresh generated stories every "
                      "step) and the learning rate (right axis: linear warm-up, cosine decay). Dots: the saved "
                      "checkpoints.")
    if h is None or h.empty or "loss" not in h:
        return s.add(note("history.csv is missing or empty.", "warning"))
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=h["step"], y=h["loss"], mode="lines", name="training loss", line=dict(color=ANSWER),
                             hovertemplate="step %{x}<br>loss %{y:.4f}<extra></extra>"), secondary_y=False)
    at = h[h["step"].isin(r.steps)]
    fig.add_trace(go.Scatter(x=at["step"], y=at["loss"], mode="markers", name="checkpoint",
                             marker=dict(color=THE, size=7),
                             hovertemplate="checkpoint step%{x}<br>loss %{y:.4f}<extra></extra>"), secondary_y=False)
    if "lr" in h:
        fig.add_trace(go.Scatter(x=h["step"], y=h["lr"], mode="lines", name="learning rate",
                                 line=dict(color="#9aa5b1", dash="dot"),
                                 hovertemplate="step %{x}<br>lr %{y:.3g}<extra></extra>"), secondary_y=True)
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text="loss (nats per token)", secondary_y=False)
    fig.update_yaxes(title_text="learning rate", secondary_y=True, showgrid=False, tickformat=".2g", rangemode="tozero")
    fig.update_layout(height=340, margin=dict(l=60, r=60, t=30, b=40), legend=dict(orientation="h", y=-0.2))
    return s.add(fig)


def checkpoints_section(ctx: Context) -> Section:
    r = ctx.result
    h = r.history if r.history is not None and not r.history.empty else None
    rows = []
    for step in r.steps:
        rec = {"step": step, "directory": f"{step_name(step)}/"}
        if h is not None:
            hit = h[h["step"] == step]
            rec["tokens seen"] = int(hit["tokens"].iloc[0]) if len(hit) and "tokens" in hit else (0 if step == 0 else None)
            rec["training loss at this step"] = float(hit["loss"].iloc[0]) if len(hit) else None
            rec["learning rate"] = float(hit["lr"].iloc[0]) if len(hit) and "lr" in hit else None
        rows.append(rec)
    s = Section("checkpoints", "Checkpoints",
                intro=fragment("{n} checkpoints at Pythia's schedule (save_pretrained directories with the "
                               "tokenizer): load one with <code>mt.hf.load_model(RUN / 'step{{N}}')</code>, or study "
                               "them all with <code>mechtrunc pythia checkpoints --model {run}</code>.",
                               n=len(r.steps), run=str(r.directory)))
    return s.add(html_table(pd.DataFrame(rows), scroll=False))


# ----------------------------------------------------------------------------------------
# the study (RUN/study/)
# ----------------------------------------------------------------------------------------
def study_missing_section(ctx: Context) -> Section | None:
    r = ctx.result
    if r.study is not None:
        return None
    why = ("it can be made once training has finished" if r.incomplete else "this run has not been studied yet")
    return Section("study", "Study").add(note(fragment(
        "<b>No study yet:</b> <code>{run}/study/</code> does not exist ({why}). Run "
        "<code>mechtrunc lm study {run}</code> (learning curves of every checkpoint, the order of "
        "learning, the truncation grid with its corpus loss, the chosen truncations and where the ' the' "
        "association lives; <code>--n</code> sets the prompts per set, 200 by default), then write this report "
        "again: the study's sections appear here.", run=str(r.directory), why=why), "info"))


def curves_section(ctx: Context) -> Section | None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    r = ctx.result
    if r.study is None:
        return None
    thr, words, tasks = _the_threshold(r), _wording(r), run_tasks(r)
    listed = "; ".join(TASK_INFO[t]["about"] for t in tasks)
    # the threshold of step_the: on the generic panel (P(' the') is its answer) or the recall panel's P(' the')
    thr_task, thr_col = ("generic", "p_answer") if "generic" in tasks else ("recall", "p_the")
    thr_text = f", with the threshold {words['rule']}" if thr > 0 else ""
    s = Section("curves", "Learning curves",
                intro=fragment("Every checkpoint on the held-out <i>eval</i> prompts (study/curves.csv; step 0 drawn "
                               "at the left edge of the log axis). {}{}. Dotted vertical lines: the "
                               "order-of-learning steps (next section).", listed, thr_text))
    curves = r.tables.get("curves")
    if curves is None:
        return s.add(_missing(r, "curves"))
    fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=[TASK_INFO[t]["title"] for t in tasks],
                        horizontal_spacing=0.06, shared_yaxes=True)
    steps = sorted(set(curves["step"].astype(int)))
    _, zero_at = _log_x(steps)
    for j, task in enumerate(tasks, 1):
        title = TASK_INFO[task]["title"]
        sub = curves[curves["prompts"] == f"{task}/eval"].sort_values("step")
        xs, _ = _log_x(sub["step"].astype(int).tolist())
        for col, label, color in TASK_INFO[task]["traces"]:
            if col not in sub or sub[col].isna().all():
                continue
            fig.add_trace(go.Scatter(x=xs, y=sub[col], customdata=sub["step"], mode="lines+markers", name=label,
                                     legendgroup=label, showlegend=label not in {t.name for t in fig.data},
                                     marker=dict(size=5, color=color), line=dict(color=color),
                                     hovertemplate="step %{customdata}<br>" + label + " %{y:.4f}<extra>" + title
                                                   + "</extra>"), row=1, col=j)
    if thr > 0 and thr_task in tasks:
        fig.add_hline(y=thr, line=dict(dash="dot", color=THE, width=1), row=1, col=tasks.index(thr_task) + 1,
                      annotation_text=words["rule"], annotation_position="top left")
    marks = study_steps(r) or {}
    lines = [("step_the", range(1, len(tasks) + 1))] + [(TASK_INFO[t]["mark"], (j,)) for j, t in enumerate(tasks, 1)
                                                        if TASK_INFO[t]["mark"]]
    for key, cols in lines:
        v = marks.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        for col in cols:
            fig.add_vline(x=v if v > 0 else zero_at, line=dict(color="#777", dash="dot", width=1), row=1, col=col)
    tickvals, ticktext = _log_ticks(steps)
    for col in range(1, len(tasks) + 1):
        fig.update_xaxes(type="log", tickvals=tickvals, ticktext=ticktext, title_text="training step", row=1, col=col)
    fig.update_yaxes(title_text="mean probability", range=[-0.02, 1.02], row=1, col=1)
    fig.update_layout(height=380, margin=dict(l=60, r=20, t=40, b=50), legend=dict(orientation="h", y=-0.25))
    return s.add(fig)


def order_section(ctx: Context) -> Section | None:
    r = ctx.result
    if r.study is None:
        return None
    words, tasks = _wording(r), set(run_tasks(r))
    s = Section("order", "Order of learning",
                intro=fragment("From the learning curves on the eval prompts, with the study's own rules "
                               "(<code>mechtrunc.studies.lm.learning_steps</code>, threshold {}).", words["rule"]))
    steps = study_steps(r)
    if steps is None:
        return s.add(_missing(r, "curves"))
    last = int(r.tables["curves"]["step"].max())
    df = pd.DataFrame([{"step": key, "checkpoint": _fmt_step(steps.get(key), last), "meaning": label.format(**words)}
                       for key, label in STEP_LABELS.items() if key not in STEP_TASK or STEP_TASK[key] in tasks])
    main = words["task"]
    answer = "the IOI answer" if main == "ioi" else f"the {main} answer"
    the, beat = steps["step_the"], steps[f"step_{main}_beats_the"]
    if steps["the_first"]:
        verdict = (f"{words['the']} was learned (step {_fmt_step(the, last)}) before {answer} beat ' the' "
                   f"({_fmt_step(beat, last)}): the paper's order.")
    elif _the_threshold(r) == 0:
        verdict = (f"The corpus never continues 'went to' with ' the' ({words['rule']}): step_the is not defined; "
                   f"{answer} beat ' the' at step {_fmt_step(beat, last)}.")
    elif isinstance(the, float) and math.isnan(the):
        verdict = f"{words['the']} never reached the threshold by step {last}."
    else:
        verdict = (f"{answer[0].upper() + answer[1:]} beat ' the' (step {_fmt_step(beat, last)}) no later than "
                   f"{words['the']} was learned (step {_fmt_step(the, last)}).")
    return s.add(html_table(df, scroll=False), note(fragment("{}", verdict), "info"))


def _grid_figure(grid, title: str, task: str = "ioi"):
    """Heatmaps of ``task``'s eval prompts in a truncation grid: P(answer), P(' the'), P(other
    city) where the prompts have it, and the corpus-loss increase, per layer x keep and matrix."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    info = TASK_INFO[task]
    ev = grid[grid["prompts"] == f"{task}/eval"]
    base = ev[ev["baseline"].astype(bool)]
    cells = ev[~ev["baseline"].astype(bool) & ~ev["identity"].astype(bool)]
    matrices = list(dict.fromkeys(cells["matrix"]))
    layers = sorted(int(v) for v in cells["layer"].dropna().unique())
    keeps = sorted({float(k) for k in cells["keep"].dropna()}, reverse=True)
    b = base.iloc[0] if len(base) else None
    second_col, second = info["second"] or (None, None)
    rows = [("p_answer", info["answer"]), ("p_the", "P(' the')")]
    if _other_city(task) and second_col in cells:
        rows.append((second_col, second))
    rows.append(("loss_increase", "corpus loss increase (nats)"))
    cells = cells.assign(loss_increase=cells["corpus_loss"] - (b["corpus_loss"] if b is not None else float("nan")))
    fig = make_subplots(rows=len(rows), cols=len(matrices), shared_xaxes=True, vertical_spacing=0.09,
                        horizontal_spacing=0.12, subplot_titles=[f"{label}: {m}" for _, label in rows for m in matrices])
    hover = (f"layer %{{y}}, keep %{{x}}<br>rank %{{customdata[0]}}<br>{info['answer']} %{{customdata[1]:.4f}}<br>"
             "P(' the') %{customdata[2]:.4f}<br>"
             + (f"{second} %{{customdata[3]:.4f}}<br>" if second else "")
             + "corpus loss %{customdata[4]:.4f} (%{customdata[5]:+.4f})<extra>%{fullData.name}</extra>")
    for i, (col, label) in enumerate(rows, 1):
        vals = cells[col].astype(float)
        if col == "loss_increase":
            lo, hi, scale = 0.0, max(float(vals.max()), 1e-9), "Reds"
        else:
            center = float(b[col]) if b is not None else float(vals.mean())
            half = max(abs(float(vals.max()) - center), abs(center - float(vals.min())), 1e-9)
            lo, hi, scale = center - half, center + half, "RdBu"
        for j, m in enumerate(matrices, 1):
            sub = cells[cells["matrix"] == m].set_index(["layer", "keep"])
            z, text, custom = [], [], []
            for layer in layers:
                zr, tr, cr = [], [], []
                for k in keeps:
                    try:
                        rec = sub.loc[(layer, k)]
                        rec = rec.iloc[0] if isinstance(rec, pd.DataFrame) else rec
                    except KeyError:
                        zr.append(None)
                        tr.append("")
                        cr.append([None] * 6)
                        continue
                    v = float(rec[col])
                    zr.append(v)
                    tr.append(f"{v:+.2f}" if col == "loss_increase" else f"{v:.3g}")
                    cr.append([_num(rec.get("rank")), _num(rec["p_answer"]), _num(rec["p_the"]),
                               _num(rec.get(second_col)) if second_col else None, _num(rec["corpus_loss"]),
                               _num(rec["loss_increase"])])
                z.append(zr)
                text.append(tr)
                custom.append(cr)
            fig.add_trace(go.Heatmap(
                z=z, x=[f"{k:g}" for k in keeps], y=[str(x) for x in layers], text=text, texttemplate="%{text}",
                textfont=dict(size=10), customdata=custom, hovertemplate=hover, name=m, colorscale=scale, zmin=lo,
                zmax=hi, showscale=j == len(matrices),
                colorbar=dict(title=dict(text=label, side="right"), len=0.9 / len(rows), thickness=12,
                              y=1 - (i - 0.5) / len(rows), yanchor="middle")), row=i, col=j)
            fig.update_yaxes(title_text="layer" if j == 1 else None, type="category", autorange="reversed",
                             row=i, col=j)
            fig.update_xaxes(type="category", title_text="keep (fraction of rank)" if i == len(rows) else None,
                             row=i, col=j)
    fig.update_layout(title=dict(text=title, font=dict(size=14)), height=170 + len(rows) * (60 + 32 * len(layers)),
                      margin=dict(l=60, r=30, t=80, b=50))
    return fig, b


def _num(v):
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def grid_section(ctx: Context) -> Section | None:
    r = ctx.result
    if r.study is None:
        return None
    tasks = [t for t in run_tasks(r) if t in HEATMAP_TASKS]
    names = " and ".join("IOI" if t == "ioi" else t for t in tasks)
    cities = any(_other_city(t) for t in tasks)
    shown = TASK_INFO[tasks[0]]["answer"] + (", P(' the') and P(other city)" if cities else " and P(' the')")
    other = (" P(other city): a city absent from the context (recall), the other stated city (binding)." if cities
             else "")
    s = Section("grid", "Truncation grid",
                intro=fragment("LASER on each layer's <code>mlp.W_in</code> and <code>mlp.W_out</code> at the study's "
                               "keeps, on the held-out {names} <i>eval</i> prompts (study/grid_final.csv): mean {shown} "
                               "coloured around the full model's value (blue: higher, red: lower), and the rise of the "
                               "loss on held-out corpus text (the collateral cost). Hover a cell for every number.{other}",
                               names=names, shown=shown, other=other))
    grids = _grids(r)
    if "final" not in grids:
        return s.add(_missing(r, "grid_final"))
    for when, (step, grid) in grids.items():
        for task in tasks:
            info = TASK_INFO[task]
            if not (grid["prompts"] == f"{task}/eval").any():
                continue
            fig, b = _grid_figure(grid, f"{when} checkpoint (step {step})" + ("" if task == "ioi" else f": {task}"),
                                  task)
            s.add(fig)
            if b is not None:
                second = f", {info['second'][1]} {b['p_other']:.4f}" if _other_city(task) and "p_other" in b else ""
                s.add(fragment('<p class="small">Full model at step {step}: {answer} {p:.4f}, P(\' the\') {the:.4f}'
                               '{second}, corpus loss {loss:.4f} nats.</p>', step=step, answer=info["answer"],
                               p=b["p_answer"], the=b["p_the"], second=second, loss=b["corpus_loss"]))
            ev = grid[grid["prompts"] == f"{task}/eval"]
            cols = [c for c in ("baseline", "layer", "matrix", "keep", "rank", "p_answer", "p_the", "p_subject",
                                "acc_vs_subject", "p_other", "acc_vs_other", "logit_diff_the", "corpus_loss")
                    if c in ev]
            s.add(fragment("<details><summary>Table: {} checkpoint, {}/eval</summary>{}</details>", when, task,
                           html_table(ev[cols], highlight=[i for i, v in enumerate(ev["baseline"].astype(bool)) if v])))
    return s


def _ci(m: pd.Series) -> str:
    return f"{m['change']:+.4f} [{m['ci_low']:+.4f}, {m['ci_high']:+.4f}]"


def best_section(ctx: Context) -> Section | None:
    import plotly.graph_objects as go

    r = ctx.result
    if r.study is None:
        return None
    budget = (r.study or {}).get("loss_budget", 0.1)
    s = Section("best", "Chosen truncations",
                intro=f"Per task, the configuration with the highest P(answer) on the <i>select</i> prompts whose "
                      f"corpus loss rises by at most {budget:g} nats (<code>choose_truncation</code>), reported on the "
                      "<i>eval</i> prompts (other prompts, study/best_*.csv): mean of the full and the truncated "
                      "model, and the change with its 95% bootstrap interval over the prompts."
                      + (" P(other city): a city absent from the context (recall), the other stated city (binding)."
                         if any(_other_city(t) for t in _answer_tasks(r)) else ""))
    chosen = chosen_truncations(r)
    if not chosen:
        return s.add(_missing(r, "grid_final"))
    rows, bars, missing = [], [], []
    for c in chosen:
        config = ("none (no truncation beats the full model)" if c["baseline"]
                  else f"layer {c['layer']} {c['matrix']} keep {c['keep']:g}")
        rec = {"checkpoint": f"{c['checkpoint']} (step {c['step']})", "task": c["task"], "truncation": config,
               "select gain in P(answer)": c["select_gain"], "corpus loss increase": c["loss_increase"]}
        ch = c["change"]
        if ch is None:
            missing.append(f"best_{c['checkpoint']}_{c['task']}")
        elif not ch.empty:
            by = ch.set_index("metric")
            for metric, label in BEST_METRICS:
                if metric in by.index:
                    m = by.loc[metric]
                    rec[f"{label} full"] = float(m["full"])
                    rec[f"{label} truncated"] = float(m["intervened"])
                    rec[f"{label} change [95% CI]"] = _ci(m)
                    bars.append((f"{c['checkpoint']} {c['task']}", label, m))
        rows.append(rec)
    s.add(html_table(pd.DataFrame(rows), scroll=False))
    for table in missing:
        s.add(_missing(r, table))
    if bars:
        fig = go.Figure()
        for (_, label), color in zip(BEST_METRICS, (ANSWER, THE, OTHER)):
            sel = [(x, m) for x, lab, m in bars if lab == label]
            if not sel:
                continue
            fig.add_trace(go.Bar(
                x=[x for x, _ in sel], y=[float(m["change"]) for _, m in sel], name=f"change of {label}",
                marker_color=color,
                error_y=dict(type="data", symmetric=False, array=[float(m["ci_high"] - m["change"]) for _, m in sel],
                             arrayminus=[float(m["change"] - m["ci_low"]) for _, m in sel]),
                hovertemplate="%{x}<br>change %{y:+.4f}<extra>" + label + "</extra>"))
        fig.add_hline(y=0, line=dict(color="#999", width=1))
        fig.update_layout(barmode="group", height=320, margin=dict(l=60, r=20, t=30, b=40),
                          yaxis_title="change on the eval prompts", legend=dict(orientation="h", y=-0.2))
        s.add(fig)
    frames = [c["change"].assign(checkpoint=c["checkpoint"], task=c["task"]) for c in chosen
              if c["change"] is not None and not c["change"].empty]
    if frames:
        df = pd.concat(frames, ignore_index=True)
        cols = ["checkpoint", "task", "intervention"] + [c for c in ("metric", "full", "intervened", "change", "ci_low",
                                                                     "ci_high", "n_items") if c in df]
        s.add("<h3>Every metric of the chosen truncations (eval prompts)</h3>", html_table(df[cols], scroll=False))
    att = r.tables.get("attribution")
    if att is None:
        s.add(_missing(r, "attribution"))
    elif not att.empty:
        top = att.reindex(att["change"].abs().sort_values(ascending=False).index).head(12)
        main = _answer_tasks(r)[0]
        s.add(fragment("<h3>Attribution change of the {task} choice (final checkpoint)</h3>"
                       '<p class="small">Direct logit attribution to logit({answer}) - logit(competitor) per component, '
                       "full vs truncated, on the eval prompts (study/attribution.csv, "
                       "<code>mt.attribute_change</code>): the 12 largest changes.</p>",
                       task="IOI" if main == "ioi" else main, answer="IO" if main == "ioi" else "answer"),
              html_table(top, scroll=False))
    return s


def where_section(ctx: Context) -> Section | None:
    r = ctx.result
    if r.study is None:
        return None
    words = _wording(r)
    main = words["task"]
    on = ("the generic eval prompts" if words["where"] == "generic" else "the recall eval prompts (P(' the') is a "
          "competitor there)")
    dla_on = "IOI prompts" if main == "ioi" else f"the {main} eval prompts"
    answer = "IO" if main == "ioi" else "answer"
    s = Section("where", "Where the ' the' association lives",
                intro=fragment("Final checkpoint, per layer (study/where_the.csv): P(' the') after {after} on {on} "
                               "with that layer's MLP output removed (<code>mlp.W_out</code> keep 0) and its drop from "
                               "the full model; the MLP's mean direct logit attribution to logit({answer}) - logit(' the') "
                               "on {dla_on} (negative: it pushes ' the'); and the singular component of its "
                               "<code>W_out</code> that pushes ' the' most (<code>mt.rank_components</code>).",
                               after=words["after"], on=on, answer=answer, dla_on=dla_on))
    where = r.tables.get("where")
    if where is None:
        return s.add(_missing(r, "where"))
    names = {"p_the_full": "P(' the') full", "p_the_mlp_removed": "P(' the') MLP removed",
             "p_the_drop": "drop", "mlp_dla_io_minus_the": f"MLP DLA to {answer} - ' the'",
             "top_component": "top ' the' component", "top_component_push": "its push"}
    s.add(html_table(where.rename(columns=names), scroll=False))
    if len(where) and "p_the_drop" in where:
        top = where.loc[where["p_the_drop"].idxmax()]
        s.add(note(fragment("Removing layer {layer}'s MLP lowers P(' the') after {after} most: {full:.3f} -> "
                            "{cut:.3f}.", layer=int(top["layer"]), after=words["after"], full=top["p_the_full"],
                            cut=top["p_the_mlp_removed"]), "info"))
    return s


#: line colours of the ledger's layers (MLP solid, attention dashed, heads thin)
LAYER_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def ledger_summary(ledger: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint of a margin ledger (``study/ledger.csv``,
    :func:`mechtrunc.studies.lm.checkpoint_ledger`): the full model's mean P(answer), P(' the') and
    margin logit(answer) - logit(' the'); the MLP whose removal changes P(' the') most (largest
    absolute change; ``mlp_removed_p_the`` rows), that change and the change of P(answer) with it;
    and the MLP whose direct contribution to the margin is lowest (the one that pushes ' the'
    hardest) with that contribution."""
    rows = []
    for step, g in ledger.groupby("step", sort=True):
        def value(kind, layer=None):
            sel = g[g["kind"] == kind]
            if layer is not None:
                sel = sel[sel["layer"] == layer]
            return float(sel["value"].iloc[0]) if len(sel) else float("nan")

        rec = {"step": int(step), "P(answer)": value("full_p_answer"), "P(' the')": value("full_p_the"),
               "margin": value("total")}
        removed = g[g["kind"] == "mlp_removed_p_the"]
        if len(removed):
            top = removed.loc[removed["value"].abs().idxmax()]
            layer = int(top["layer"])
            rec.update({"MLP removal moving P(' the') most": f"L{layer}.mlp",
                        "its change of P(' the')": float(top["value"]),
                        "its change of P(answer)": value("mlp_removed_p_answer", layer)})
        mlps = g[g["kind"] == "mlp"]
        if len(mlps):
            low = mlps.loc[mlps["value"].idxmin()]
            rec.update({"MLP pushing ' the' most (direct)": f"L{int(low['layer'])}.mlp",
                        "its direct contribution": float(low["value"])})
        rows.append(rec)
    return pd.DataFrame(rows)


def ledger_section(ctx: Context) -> Section | None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    r = ctx.result
    if r.study is None:
        return None
    main = _answer_tasks(r)[0]
    answer = "IO" if main == "ioi" else "answer"
    s = Section("ledger", "Margin ledger across checkpoints",
                intro=fragment("Every checkpoint on the {task} <i>eval</i> prompts "
                               "(study/ledger.csv, <code>mechtrunc.studies.lm.checkpoint_ledger</code>): the mean "
                               "margin logit({answer}) - logit(' the') split into each component's direct contribution "
                               "(<code>mt.attribute</code>; above zero: it favours the answer, below: ' the'). Left: "
                               "each layer's MLP (solid) and attention (dashed: its heads and output bias), the "
                               "embeddings and the total (the model's margin); right: each head (the three that move the "
                               "final margin most named, hover for the others). The table gives, per checkpoint, the MLP "
                               "whose removal (<code>mlp.W_out</code> keep 0) changes P(' the') most and what it does to "
                               "P(answer), beside the MLP whose direct contribution pushes ' the' hardest.",
                               task="IOI" if main == "ioi" else main, answer=answer))
    ledger = r.tables.get("ledger")
    if ledger is None:
        return s.add(note(
            fragment("<code>study/ledger.csv</code> is missing: the study predates the margin ledger or was "
                     "interrupted before writing it. Rerun <code>{}</code> to add it (finished tables are kept).",
                     _study_command(r)), "warning"))
    if ledger.empty:
        return s.add(note("<code>study/ledger.csv</code> is empty.", "warning"))
    steps = sorted(set(ledger["step"].astype(int)))
    tickvals, ticktext = _log_ticks(steps)
    fig = make_subplots(rows=1, cols=2, subplot_titles=["MLPs, attention layers, embeddings, total",
                                                        "heads (their own scale)"], horizontal_spacing=0.08)

    def line(sub, name, col, **style):
        sub = sub.sort_values("step")
        fig.add_trace(go.Scatter(x=_log_x(sub["step"].astype(int).tolist())[0], y=sub["value"],
                                 customdata=sub["step"], mode="lines+markers", name=name,
                                 hovertemplate="step %{customdata}<br>" + name + " %{y:+.4f}<extra></extra>",
                                 **style), row=1, col=col)

    layers = sorted(int(v) for v in ledger.loc[ledger["kind"].isin(["mlp", "attn"]), "layer"].dropna().unique())
    for layer in layers:
        color = LAYER_COLORS[layer % len(LAYER_COLORS)]
        for kind, dash in (("mlp", "solid"), ("attn", "dash")):
            sub = ledger[(ledger["kind"] == kind) & (ledger["layer"] == layer)]
            if len(sub):
                line(sub, f"L{layer}.{kind}", 1, line=dict(color=color, dash=dash), marker=dict(size=4, color=color))
        heads = ledger[(ledger["kind"] == "head") & (ledger["layer"] == layer)]
        for component, sub in heads.groupby("component", sort=True):
            line(sub, str(component), 2, line=dict(color=color, width=1), marker=dict(size=3, color=color),
                 showlegend=False)
    last = ledger[(ledger["kind"] == "head") & (ledger["step"] == steps[-1])]
    top = last.reindex(last["value"].abs().sort_values(ascending=False).index).head(3).sort_values("value")
    for shift, rec in zip((-11, 0, 11) if len(top) == 3 else (-6, 6) if len(top) == 2 else (0,), top.itertuples()):
        # the three heads that move the final margin most, named at their line's end (log axis: log10 x),
        # nudged apart so that close ones stay legible
        fig.add_annotation(x=math.log10(_log_x(steps)[0][-1]), y=rec.value, text=str(rec.component), showarrow=False,
                           xanchor="left", xshift=4, yshift=shift, font=dict(size=10), row=1, col=2)
    for kind, name, style in (("embed", "embeddings", dict(color="#9aa5b1", dash="dot")),
                              ("total", "total (the margin)", dict(color="#222", width=3))):
        sub = ledger[ledger["kind"] == kind]
        if len(sub):
            line(sub, name, 1, line=style, marker=dict(size=4, color=style["color"]))
    for col in (1, 2):
        fig.add_hline(y=0, line=dict(color="#999", width=1), row=1, col=col)
        fig.update_xaxes(type="log", tickvals=tickvals, ticktext=ticktext, title_text="training step", row=1, col=col)
    fig.update_yaxes(title_text=f"direct contribution to logit({answer}) - logit(' the')", row=1, col=1)
    fig.update_layout(height=420, margin=dict(l=70, r=50, t=40, b=50), legend=dict(orientation="h", y=-0.22))
    s.add(fig)
    s.add("<h3>Per checkpoint: which MLP moves P(' the')</h3>", html_table(ledger_summary(ledger), scroll=False))
    kinds = ["embed", "attn", "head", "mlp", "total"]
    table = ledger[ledger["kind"].isin(kinds)]
    order = (table[["component", "kind", "layer"]].drop_duplicates("component")
             .assign(k=lambda d: d["kind"].map(kinds.index),  # embeddings first, per layer attn, heads, MLP, total last
                     at=lambda d: d["layer"].fillna(d["kind"].map({"embed": -1.0, "total": math.inf})))
             .sort_values(["at", "k"]))
    wide = table.pivot_table(index="component", columns="step", values="value", aggfunc="first")
    wide = wide.reindex(order["component"])
    wide.columns = [f"step {int(c)}" for c in wide.columns]
    s.add(fragment("<details><summary>Table: every component's direct contribution per checkpoint</summary>{}"
                   "</details>", html_table(wide.reset_index(), max_rows=400)))
    return s


SECTIONS = [config_section, training_section, checkpoints_section, study_missing_section, curves_section,
            order_section, grid_section, best_section, where_section, ledger_section]
