"""Generated blocks of the docs pages (``docs/results.md``, ``docs/lm.md``, ``docs/causal.md``, ``docs/theory.md``): each block is rendered from one CSV in ``docs/data``
that a committed analysis script wrote, between ``<!-- BEGIN generated:NAME -->`` and
``<!-- END generated:NAME -->`` markers.  ``python analyses/make_results.py`` regenerates every
CSV and block; ``tests/test_docs_results.py`` fails when a block and its CSV disagree (and, in the
slow suite, when the CSV and the current code disagree: exactly where this machine's fingerprint
equals the one ``docs/data/provenance.json`` records for the CSV, by the bands of
:mod:`mechtrunc.core.reference` elsewhere)."""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import pandas as pd

from mechtrunc.core.reference import machine_fingerprint
from mechtrunc.core.results import read_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results.md"
DATA = ROOT / "docs" / "data"
#: which machine and kernels wrote each CSV of docs/data (written by the scripts, never by hand)
PROVENANCE = DATA / "provenance.json"


def read_provenance() -> dict:
    """``{csv name: {"script", "date", "fingerprint"}}`` of docs/data (empty when none recorded)."""
    return json.loads(PROVENANCE.read_text())["files"] if PROVENANCE.exists() else {}


def provenance_of(csv: str) -> dict | None:
    """The record of docs/data's ``csv`` (None: written before records were kept)."""
    return read_provenance().get(csv)


def record_provenance(script: str, paths) -> None:
    """Record that ``script`` just wrote ``paths`` (files in docs/data; others are ignored) on
    this machine: its :func:`mechtrunc.core.reference.machine_fingerprint` and the date."""
    names = sorted({Path(p).name for p in paths if Path(p).resolve().parent == DATA.resolve()})
    if not names:
        return
    files = read_provenance()
    record = {"script": script, "date": datetime.date.today().isoformat(), "fingerprint": machine_fingerprint()}
    files.update({name: record for name in names})
    PROVENANCE.write_text(json.dumps({"files": dict(sorted(files.items()))}, indent=1) + "\n")


def record_written(script: str, since: float) -> list[str]:
    """Record every CSV of docs/data modified since the time ``since`` (seconds, as
    ``time.time()``) as written by ``script``; returns their names."""
    paths = [p for p in DATA.glob("*.csv") if p.stat().st_mtime >= since]
    record_provenance(script, paths)
    return sorted(p.name for p in paths)


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def table(header, rows) -> str:
    return "\n".join([_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)])


def render_seeds(df: pd.DataFrame) -> str:
    """variant x (accuracy, P(noise), P(correct)), one ``a / b / c`` cell per metric over seeds."""
    seeds = sorted(df["seed"].unique())
    rows = []
    for variant in dict.fromkeys(df["variant"]):
        sub = df[df["variant"] == variant].set_index("seed").loc[seeds]
        rows.append([variant, *(" / ".join(f"{v:.3f}" for v in sub[m]) for m in ("accuracy", "p_noise", "p_answer"))])
    label = " / ".join(str(s) for s in seeds)
    return table(["variant", f"accuracy (seeds {label})", "P(noise)", "P(correct)"], rows)


def render_metrics(df: pd.DataFrame, columns: dict[str, str]) -> str:
    """One row per ``variant``; ``columns`` maps CSV column -> header, values to 3 decimals."""
    rows = [[r["variant"], *(f"{r[c]:.3f}" for c in columns)] for _, r in df.iterrows()]
    return table(["variant", *columns.values()], rows)


def render_attribution(df: pd.DataFrame) -> str:
    rows = [[r["component"], f"{r['clean']:+.2f}", f"{r['intervened']:+.2f}", f"{r['change']:+.2f}"]
            for _, r in df.iterrows()]
    return table(["component", "clean", "FFN L1 removed", "change"], rows)


_METRICS = {"accuracy": "accuracy", "p_noise": "P(noise)", "p_answer": "P(correct)"}

#: paper-notes' reference numbers (the authors' model code, paper configuration, about 1,200
#: iterations on an H200): variant -> (accuracy, P(noise), P(correct))
PAPER_REFERENCE = {
    "full model": ("0.53", "0.50", "0.50"),
    "FFN L1 removed": ("0.992", "0.0005", "0.98"),
    "mlp.W_in L1 keep 0.1": ("0.999", "0.02", "0.97"),
    "mlp.W_in L1 keep 0.2": ("1.00", "0.08", "0.92"),
    "mlp.W_out L1 keep 0.1": ("0.02", "0.73", "0.28"),
    "FFN L0 removed": ("0.02", "0.75", "0.24"),
    "attn.W_V L1 keep 0.1": ("0.03", "0.73", "0.27"),
}


def render_paper(_df=None) -> str:
    """The paper preset's truncation table at 1250 and 5000 iterations next to the reference."""
    at = {step: read_table(DATA / f"paper_h100_{step}_truncation.csv").set_index("variant") for step in (1250, 5000)}
    rows = []
    for variant, ref in PAPER_REFERENCE.items():
        cells = [" / ".join(f"{at[s].loc[variant, m]:.3f}" for m in _METRICS) for s in (1250, 5000)]
        rows.append([variant, *cells, " / ".join(ref)])
    return table(["variant", "step 1250: accuracy / P(noise) / P(correct)", "step 5000", "reference (about 1,200 steps)"],
                 rows)

def render_heldout(df: pd.DataFrame) -> str:
    rows = []
    for seed, g in df.groupby("split_seed", sort=True):
        g = g.set_index("part")
        sel, ev = g.loc["select"], g.loc["eval"]
        what = "full model (nothing beats it)" if bool(sel["baseline"]) else f"{sel['matrix']} L{int(sel['layer'])} keep {sel['keep']:g}"
        cell = lambda r: f"{r['full']:.3f} -> {r['truncated']:.3f} ({r['change']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}])"
        rows.append([int(seed), what, cell(sel), cell(ev), f"{int(sel['n_sequences'])} / {int(ev['n_sequences'])}"])
    return table(["split seed", "chosen on the select half", "P(correct), select half (in-sample)",
                  "P(correct), eval half (held out)", "sequences select / eval"], rows)


def render_compose(df: pd.DataFrame) -> str:
    rows = []
    for _, r in df[df["accepted"].astype(bool) & (df["step"] > 0)].iterrows():
        ci = lambda v, lo, hi: f"{r[v]:+.3f} [{r[lo]:+.3f}, {r[hi]:+.3f}]"
        rows.append([r["metric"], int(r["step"]), r["intervention"].replace("truncate ", ""), f"{r['select_gain']:+.3f}",
                     ci("eval_change", "eval_ci_low", "eval_ci_high"), ci("eval_step_gain", "eval_step_low", "eval_step_high"),
                     f"{r['collateral_increase']:+.3f}", int(r["candidates"])])
    return table(["metric", "step", "added truncation (0-based layer)", "gain on the select half",
                  "change vs full model, eval half [95% CI]", "this step's gain, eval half [95% CI]",
                  "training-distribution loss change (nats)", "candidates"], rows)


def render_bands(df: pd.DataFrame) -> str:
    """The bands of :data:`mechtrunc.core.reference.CPU_PRESET_BANDS` beside this page's seeds."""
    from mechtrunc.core.reference import CPU_PRESET_BANDS

    seeds = sorted(df["seed"].unique())
    rows = []
    for (variant, metric), (lo, hi) in CPU_PRESET_BANDS.items():
        values = df[df["variant"] == variant].set_index("seed").loc[seeds, metric]
        rows.append([variant, _METRICS[metric], f"{lo:.2f} - {hi:.2f}", " / ".join(f"{v:.3f}" for v in values)])
    return table(["variant", "metric", "band (seeds 0 / 1 / 2, every machine measured)", f"this page (seeds {' / '.join(map(str, seeds))})"], rows)


#: block name -> (CSV in docs/data, renderer)
BLOCKS = {
    "cpu-bands": ("cpu_seeds_truncation.csv", render_bands),
    "cpu-compose": ("cpu_compose.csv", render_compose),
    "cpu-heldout": ("cpu_heldout.csv", render_heldout),
    "cpu-seeds": ("cpu_seeds_truncation.csv", render_seeds),
    "cpu-truncation": ("cpu_truncation.csv", lambda df: render_metrics(df, _METRICS)),
    "cpu-noise-components": ("cpu_noise_components.csv", lambda df: render_metrics(df, {
        "accuracy": "accuracy", "p_noise": "P(noise)", "p_answer": "P(correct)",
        "train_distribution_loss": "loss on the training distribution"})),
    "cpu-attribution": ("cpu_attribution.csv", render_attribution),
    "paper-h100": ("paper_h100_5000_truncation.csv", render_paper),
}


# ---------------------------------------------------------------- docs/lm.md (analyses/lm_study.py)
LM = ROOT / "docs" / "lm.md"


def _step(v) -> str:
    return "never" if pd.isna(v) else f"{int(v):,}"


def render_lm_timing(df: pd.DataFrame) -> str:
    def cpu(r):
        ok = not pd.isna(r.get("cpu_seconds_this_run")) and r.get("resumed_from", 0) == 0
        return f"{r['cpu_seconds_this_run']:.0f}" if ok else "not recorded"
    rows = [[r["run"], f"{int(r['parameters']):,}", f"{int(r['steps']):,}", f"{r['seconds']:.0f}", cpu(r),
             f"{r['tokens_per_second']:,.0f}", f"{r['peak_rss_mb']:.0f}" if not pd.isna(r.get("peak_rss_mb")) else "-"]
            for _, r in df.iterrows()]
    return table(["run", "parameters", "steps", "wall s", "CPU s", "tokens/s (wall)", "peak RSS MB"], rows)


def render_lm_order(df: pd.DataFrame) -> str:
    rows = [[r["run"], _step(r["step_the"]), _step(r["step_fact_beats_the"]), _step(r["step_ioi_beats_the"]),
             _step(r["step_io_beats_s"]), _step(r["step_competition"]), f"{r['final_loss']:.3f}"]
            for _, r in df.iterrows()]
    return table(["run", "\" the\" learned after \" to\"", "factual answer beats \" the\"", "IOI: IO beats \" the\"",
                  "IO-vs-S accuracy >= 0.75", "strongest IO/\" the\" competition", "final training loss"],
                 rows)


def _change(sub: pd.DataFrame, metric: str) -> str:
    r = sub[sub["metric"] == metric]
    if r.empty:
        return "-"
    r = r.iloc[0]
    return f"{r['full']:.3f} -> {r['intervened']:.3f} ({r['change']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}])"


def render_lm_best(df: pd.DataFrame) -> str:
    rows = []
    for (run, when, task), sub in df.groupby(["run", "checkpoint", "task"], sort=False):
        r = sub.iloc[0]
        chosen = "none beats the full model" if r["baseline"] else f"L{int(r['layer'])} {r['matrix']} keep {r['keep']:g}"
        rows.append([run, f"{when} ({int(r['step']):,})", task, chosen, f"{r['loss_increase']:+.3f}",
                     _change(sub, "p_answer"), _change(sub, "p_the"), _change(sub, "logit_diff_the")])
    return table(["run", "checkpoint", "task", "chosen on the select prompts", "corpus loss change",
                  "P(answer) on eval prompts", "P(\" the\")", "logit(answer) - logit(\" the\")"], rows)


def render_lm_where(df: pd.DataFrame) -> str:
    rows = [[r["run"], int(r["layer"]), f"{r['p_the_full']:.3f} -> {r['p_the_mlp_removed']:.3f}",
             f"{r['mlp_dla_io_minus_the']:+.2f}", f"#{int(r['top_component'])}: {r['top_component_push']:+.2f}"]
            for _, r in df.iterrows()]
    return table(["run", "layer", "P(\" the\") after \" to\": full -> this MLP removed",
                  "MLP's direct attribution to logit(IO) - logit(\" the\")", "top \" the\" component of W_out: push"],
                 rows)


def render_lm_attribution(df: pd.DataFrame) -> str:
    sub = df[(df["competitor"] == "the") & (df["kind"] != "total")].head(8)
    total = df[(df["competitor"] == "the") & (df["kind"] == "total")]
    rows = [[r["component"], f"{r['clean']:+.2f}", f"{r['intervened']:+.2f}", f"{r['change']:+.2f}"]
            for _, r in pd.concat([sub, total]).iterrows()]
    return table(["component", "clean", "truncated", "change"], rows)


def render_lm_heldout_names(df: pd.DataFrame) -> str:
    rows = [[r["split"], f"{r['p_answer']:.2g}", f"{r['p_subject']:.2g}", f"{r['p_the']:.3f}", f"{r['acc_vs_subject']:.3f}"]
            for _, r in df.iterrows()]
    return table(["split", "P(IO)", "P(S)", "P(\" the\")", "IO-vs-S accuracy"], rows)


#: block name -> (CSV in docs/data, renderer) of docs/lm.md
LM_BLOCKS = {
    "lm-order": ("lm_summary.csv", render_lm_order),
    "lm-timing": ("lm_summary.csv", render_lm_timing),
    "lm-best": ("lm_best_truncation.csv", render_lm_best),
    "lm-where": ("lm_where_the.csv", render_lm_where),
    "lm-attribution": ("lm_attribution.csv", render_lm_attribution),
    "lm-heldout-names": ("lm_heldout_names.csv", render_lm_heldout_names),
}


# ------------------------------------------- docs/lm.md, "When truncation helps" (analyses/lm_dose.py)
_ARM_LABELS = {"alpha0.1": "alpha 0.1", "alpha0.3": "alpha 0.3", "alpha0.6": "alpha 0.6",
               "overweighted": "over-weighted (true share 0)", "english": "real English (true share 0)"}


def _pm(est, lo, hi, fmt: str = "+.3f") -> str:
    return _ci(est, lo, hi, fmt)


def render_lm_dose(df: pd.DataFrame) -> str:
    rows = []
    for _, r in df.iterrows():
        rows.append([_ARM_LABELS.get(r["arm"], r["arm"]), r["task"], int(r["n_seeds"]), f"{r['accuracy']:.2f}",
                     f"{r['p_answer']:.3f}", f"{r['p_the']:.3f}", f"{r['p_other']:.3f}", f"{r['acc_vs_other']:.2f}",
                     f"{r['overweighting']:+.3f}", _pm(r["gain"], r["gain_low"], r["gain_high"], "+.4f"),
                     str(r["per_seed"]).replace(" ", " / "), r["choices"]])
    return table(["arm", "prompts", "seeds", "accuracy", "P(answer)", "P(\" the\")", "P(other city)",
                  "answer beats other city", "over-weighting: P(\" the\") - true share",
                  "held-out gain in P(answer): mean [95% bootstrap CI over seeds]", "per seed", "chosen truncation per seed"], rows)


def render_lm_dose_runs(df: pd.DataFrame) -> str:
    rows = []
    for _, r in df.iterrows():
        when = f"{r['checkpoint']} ({int(r['step']):,})"
        if r["choice"] == "none":
            rows.append([r["run"], when, r["task"], "none beats the full model", "", f"{r['p_answer_full']:.3f}", "+0", "", ""])
            continue
        cell = lambda m: _pm(r[m], r[f"{m}_low"], r[f"{m}_high"])  # noqa: E731
        rows.append([r["run"], when, r["task"], r["choice"], f"{r['loss_increase']:+.3f}", f"{r['p_answer_full']:.3f}",
                     cell("p_answer"), cell("p_the"), cell("p_other")])
    return table(["run", "checkpoint", "prompts", "chosen on select prompts", "corpus loss change", "P(answer), full model",
                  "change of P(answer) on eval prompts [95% CI]", "P(\" the\")", "P(other city)"], rows)


def render_lm_dose_ledger(df: pd.DataFrame) -> str:
    rows = []
    for run, g in df.groupby("run", sort=False):
        g = g.sort_values("step")
        early = g[g["step"] >= 64].iloc[0] if (g["step"] >= 64).any() else g.iloc[0]
        for r in ([early, g.iloc[-1]] if early["step"] != g.iloc[-1]["step"] else [g.iloc[-1]]):
            rows.append([run, f"{int(r['step']):,}", f"{r['margin']:+.2f}", f"{r['p_the']:.3f}", f"{r['p_answer']:.3f}",
                         f"{r['mlp_most_the']} ({r['mlp_most_the_value']:+.2f})",
                         f"{r['attn_most_answer']} ({r['attn_most_answer_value']:+.2f})",
                         f"{r['head_most_answer']} ({r['head_most_answer_value']:+.2f})",
                         f"L{int(r['mlp_removal_layer'])} ({r['mlp_removal_p_the_change']:+.3f})"])
    return table(["run", "step", "margin logit(answer) - logit(\" the\")", "P(\" the\")", "P(answer)",
                  "MLP pushing \" the\" most (its direct part of the margin)", "attention layer pushing the answer most",
                  "head pushing the answer most", "MLP whose removal changes P(\" the\") most (change)"], rows)


def _tokens(x) -> str:
    return "not reached" if pd.isna(x) else f"{float(x) / 1e6:.2f}M"


def render_lm_ioi(df: pd.DataFrame) -> str:
    rows = []
    for _, r in df.iterrows():
        cell = lambda m: _pm(r[f"gain_{m}"], r[f"gain_{m}_low"], r[f"gain_{m}_high"])  # noqa: E731
        rows.append([f"{r['share']:g}", int(r["n_seeds"]), f"{r['acc_vs_subject']:.2f}", f"{r['p_answer']:.3f}",
                     f"{r['p_subject']:.4f}", f"{r['p_the']:.3f}", f"{r['overweighting']:+.3f}", cell("p_answer"),
                     str(r["gain_p_answer_per_seed"]).replace(" ", " / "), cell("p_subject"), cell("p_the"),
                     r["choices"]])
    return table(["\" the\" share of IOI sentences", "seeds", "IO-vs-S accuracy", "P(IO)", "P(S)", "P(\" the\")",
                  "over-weighting: P(\" the\") - share", "held-out change of P(IO): mean [95% CI over seeds]",
                  "per seed", "P(S)", "P(\" the\")", "chosen truncation per seed"], rows)


def render_lm_ioi_runs(df: pd.DataFrame) -> str:
    rows = []
    for _, r in df.iterrows():
        cell = lambda m: _pm(r[f"gain_{m}"], r[f"gain_{m}_low"], r[f"gain_{m}_high"])  # noqa: E731
        rows.append([r["run"], _tokens(r["reached_tokens"]), f"{r['acc_vs_subject']:.2f}", f"{r['p_answer']:.3f}",
                     f"{r['p_subject']:.4f}", f"{r['p_the']:.3f}", r["choice"], f"{r['loss_increase']:+.3f}",
                     cell("p_answer"), cell("p_subject"), cell("p_the"), cell("acc_vs_subject"),
                     f"{-r['gain_p_answer'] / r['gain_p_the']:.2f}" if r["gain_p_the"] < 0 else "-"])
    return table(["run", "tokens to IO-vs-S 0.8", "IO-vs-S accuracy", "P(IO)", "P(S)", "P(\" the\")",
                  "chosen on select prompts", "corpus loss change", "change of P(IO) on eval prompts [95% CI]",
                  "P(S)", "P(\" the\")", "IO-vs-S accuracy", "P(IO) gained per unit of P(\" the\") removed"], rows)


#: block name -> (CSV in docs/data, renderer) of docs/lm.md's IOI dose-response (analyses/lm_ioi.py)
IOI_BLOCKS = {"lm-ioi": ("lm_ioi_shares.csv", render_lm_ioi), "lm-ioi-runs": ("lm_ioi_runs.csv", render_lm_ioi_runs)}


#: block name -> (CSV in docs/data, renderer) of docs/lm.md's dose-response section
DOSE_BLOCKS = {
    "lm-dose": ("lm_dose_arms.csv", render_lm_dose),
    "lm-dose-runs": ("lm_dose_best.csv", render_lm_dose_runs),
    "lm-dose-ledger": ("lm_dose_ledger.csv", render_lm_dose_ledger),
}


# ------------------------------------------- docs/lm.md, "Real English text" (analyses/english_text.py)
def render_english_books(df: pd.DataFrame) -> str:
    rows = [[r["book"], f"{r['paragraphs']:,}", f"{r['words']:,}", f"{r['pythia_tokens']:,}",
             f"{r['heldout_words']:,} ({r['heldout_words'] / r['words']:.1%})"] for _, r in df.iterrows()]
    rows.append(["all", f"{df['paragraphs'].sum():,}", f"{df['words'].sum():,}", f"{df['pythia_tokens'].sum():,}",
                 f"{df['heldout_words'].sum():,} ({df['heldout_words'].sum() / df['words'].sum():.1%})"])
    return table(["book", "paragraphs", "words", "Pythia tokens", "held out (words)"], rows)


def render_english_the(df: pd.DataFrame) -> str:
    rows = [[f'"{r["context"]}"', f"{r['p_the']:.3f}", f"{int(r['count']):,}", f'"{r["top_next"]}" ({r["p_top_next"]:.3f})']
            for _, r in df.iterrows()]
    return table(["after", "P(\" the\")", "occurrences", "most frequent next token"], rows)


def render_english_mix(df: pd.DataFrame) -> str:
    rows = [[f"{r['english']:g}", f"{r['p_the_after_to']:.3f}", f"{r['p_the_after_in']:.3f}", f"{r['p_the_after_of']:.3f}",
             f"{int(r['tokens']):,}"] for _, r in df.iterrows()]
    return table(["english", "P(\" the\") after \" to\"", "after \" in\"", "after \" of\"", "tokens"], rows)


def render_english_vocab(df: pd.DataFrame) -> str:
    rows = [[f"{int(r['english_vocab']):,}", f"{int(r['vocab_size']):,}", f"{r['missing_share']:.1%}",
             f"{r['tokens_per_pythia_token']:.2f}", f"{r['unembed_flop_share']:.0%}"] for _, r in df.iterrows()]
    return table(["english_vocab", "vocabulary", "Pythia tokens missing (held-out text)", "tokens per Pythia token",
                  "unembedding FLOPs"], rows)


#: block name -> (CSV in docs/data, renderer) of docs/lm.md's "Real English text"
ENGLISH_BLOCKS = {
    "lm-english-books": ("lm_english_books.csv", render_english_books),
    "lm-english-the": ("lm_english_the.csv", render_english_the),
    "lm-english-mix": ("lm_english_mix.csv", render_english_mix),
    "lm-english-vocab": ("lm_english_vocab.csv", render_english_vocab),
}


# ------------------------------------------- docs/causal.md (analyses/causal_toy.py, lens_toy.py)
CAUSAL = ROOT / "docs" / "causal.md"
_ROLES = ("trigger1", "after1", "end", "all")


def _effect_cell(r) -> str:
    """``effect [low, high]`` (the 95% bootstrap interval), two decimals."""
    return f"{r['effect']:.2f} [{r['effect_low']:.2f}, {r['effect_high']:.2f}]"


def render_patching(df: pd.DataFrame) -> str:
    rows = []
    for (direction, site, layer, head), g in df.groupby(["direction", "site", "layer", "head"], sort=False,
                                                        dropna=False):
        g = g.set_index("position")
        what = f"L{layer} head {int(head)}" if site == "z" else f"L{layer} {site}"
        rows.append([direction, what, *(_effect_cell(g.loc[r]) for r in _ROLES)])
    return table(["direction", "activation", "first trigger", "after it", "repeated trigger (read)",
                  "all positions"], rows) + "\n\nEach cell: the normalised effect [its 95% bootstrap interval over the 256 sequences, 1000 resamples]."


def _receiver(label: str) -> str:
    """The library's receiver label (``L1H0.k``, ``L0.mlp``) in words; layers stay 0-based."""
    m = re.fullmatch(r"L(\d+)H(\d+)\.([qkv])", label)
    if m:
        return f"L{m.group(1)} head {m.group(2)} {m.group(3)}"
    m = re.fullmatch(r"L(\d+)\.mlp", label)
    return f"L{m.group(1)} FFN input" if m else label


def render_path_patching(df: pd.DataFrame) -> str:
    rows = [[r["direction"], f"L{r['sender_layer']} head {r['sender_head']}", _receiver(r["receiver"]),
             f"{r['value']:+.3f}", _effect_cell(r)] for _, r in df.iterrows()]
    return table(["direction", "sender", "receiver", "logit(answer) - logit(noise)", "effect [95% CI]"], rows)


def render_lens_generic(df: pd.DataFrame) -> str:
    return table(["token", "id", "share of the noisy training targets"],
                 [[repr(r["token_str"]), int(r["token"]), f"{r['frequency']:.3f}"] for _, r in df.iterrows()])


def render_lens_components(df: pd.DataFrame) -> str:
    best = df.sort_values("generic_score", ascending=False).groupby(["matrix", "layer"], sort=False).head(1)
    rows = []
    for _, r in best.iterrows():
        head = "" if pd.isna(r["head"]) else f" head {int(r['head'])}"
        rows.append([f"`{r['matrix']}`{head}", int(r["layer"]), int(r["component"]),
                     f"{r['singular_value']:.3f}", f"{r['generic_score']:.3f}", f"{r['generic_z']:.2f}",
                     int(r["generic_rank"]), f"{r['activation_score']:+.2f}"])
    return table(["matrix", "layer", "component", "singular value", "generic score", "z", "rank of the generic token",
                  "activation score"], rows)


def render_logit_lens(df: pd.DataFrame) -> str:
    last = int(df["layer"].max())
    rows = []
    for label, g in df[df["layer"] == last].groupby("label", sort=False):
        g = g.set_index("site")
        cell = lambda s: f"{g.loc[s, 'p_answer']:.3f} / {g.loc[s, 'p_noise']:.3f}"
        rows.append([label, cell("resid_pre"), cell("resid_mid"), cell("resid_post"),
                     f"{g.loc['resid_mid', 'accuracy']:.3f}", f"{g.loc['resid_post', 'accuracy']:.3f}"])
    return table(["run", f"L{last} resid_pre P(answer) / P(noise)", f"L{last} resid_mid (after attention)",
                  f"L{last} resid_post (the output)", "accuracy at resid_mid", "accuracy at the output"], rows)


#: block name -> (CSV in docs/data, renderer) of docs/causal.md
CAUSAL_BLOCKS = {
    "cpu-patching": ("cpu_patching.csv", render_patching),
    "cpu-path-patching": ("cpu_path_patching.csv", render_path_patching),
    "cpu-lens-generic": ("cpu_lens_generic.csv", render_lens_generic),
    "cpu-lens-components": ("cpu_lens_components.csv", render_lens_components),
    "cpu-logit-lens": ("cpu_logit_lens.csv", render_logit_lens),
}


# ------------------------------- docs/results.md, SVD sensitivity (analyses/svd_sensitivity.py)
_SVD_MODELS = {"toy": ("toy (cpu preset)", "logit_diff_noise"), "pythia": ("random Pythia-70m shape", "logit_diff_the"),
               "lm": ("our LM (small, seed 0)", "logit_diff_the")}


def render_svd_sensitivity(_df=None) -> str:
    """Per model and truncation: the LASER setting's distances from the float64 exact truncation
    and the metrics, exact -> LASER."""
    rows = []
    for model, (label, ld) in _SVD_MODELS.items():
        df = read_table(DATA / f"svd_sensitivity_{model}.csv")
        df = df[~df["baseline"].astype(bool)]
        for (layer, matrix, keep), g in df.groupby(["layer", "matrix", "keep"], sort=False):
            g = g.set_index("svd")
            e, l = g.loc["exact"], g.loc["laser"]
            arrow = lambda c, f: f"{e[c]:{f}} -> {l[c]:{f}}"
            rows.append([label, f"L{int(layer)} {matrix.split('.')[1]} keep {keep:g}", int(l["rank"]),
                         f"{e['weight_distance']:.0e}", f"{l['weight_distance']:.3f}", f"{l['excess_error']:+.3f}",
                         f"{l['subspace_rms_sin']:.3f}", arrow("p_answer", ".3g"), arrow(ld, ".3f"),
                         arrow("accuracy", ".3f")])
    return table(["model", "truncation", "rank", "exact: distance", "LASER: distance", "LASER: excess error",
                  "LASER: subspace RMS sin", "P(answer) exact -> LASER", "logit diff exact -> LASER",
                  "accuracy exact -> LASER"], rows)


def render_svd_best(df: pd.DataFrame) -> str:
    rows = []
    for _, r in df.iterrows():
        label, _ = _SVD_MODELS[r["model"]]
        rows.append([label, r["svd"], f"L{int(r['layer'])} {r['matrix'].split('.')[1]} keep {r['keep']:g}",
                     r["metric"], f"{r['value']:.3f}", f"{r['baseline_value']:.3f}", "yes" if r["same_as_exact"] else "**no**"])
    return table(["model", "SVD", "best configuration", "metric", "value", "full model", "same as exact"], rows)


#: block name -> (CSV in docs/data, renderer) of docs/results.md's SVD sensitivity section
SVD_BLOCKS = {
    "svd-sensitivity": ("svd_sensitivity_toy.csv", render_svd_sensitivity),
    "svd-sensitivity-best": ("svd_sensitivity_best.csv", render_svd_best),
}


THEORY = ROOT / "docs" / "theory.md"

def _steps(values) -> str:
    """Per-seed steps, ``never`` for NaN, joined by ' / '."""
    return " / ".join("never" if pd.isna(v) else f"{int(v)}" for v in values)


def render_theory_noff_where(df: pd.DataFrame) -> str:
    rows = [[int(r["seed"]), int(r["top_noise_component"]), f"{r['sigma_over_median']:.2f}", f"{r['noise_share']:.2f}",
             f"{r['top1_noise_share']:.2f} ({r['top1_sigma_over_median']:.2f}x)",
             f"{r['ov_trigger_noise']:.2f} / {r['ov_copy_mean']:.2f}",
             f"{r['init_share']:.2f} ({r['init_share_token_rows']:.2f})",
             "yes" if r["init_top_is_trigger_noise"] else "no"] for _, r in df.iterrows()]
    return table(["seed", "W_OV component with the largest noise push (0 = top; chosen on the selection batch)", "its sigma / median sigma",
                  "its share of attention's noise push", "component 0: share (sigma / median)",
                  "end: trigger->noise entry / mean copy entry", "init: trigger->noise share of the mean W_OV gradient's squared norm (of its e(v) rows)",
                  "init: largest entry is trigger->noise"], rows)


def render_theory_noff_truncation(df: pd.DataFrame) -> str:
    rows = []
    for variant, g in df.groupby("variant", sort=False):
        cell = lambda c: f"{g[c].mean():.3f} [{g[c].min():.3f}, {g[c].max():.3f}]"
        rows.append([variant, cell("accuracy"), cell("p_noise"), cell("p_answer")])
    n = df["seed"].nunique()
    return table(["no-FF model (end of training)", f"accuracy: mean [min, max] over {n} seeds", "P(noise)", "P(correct)"], rows)


_RANK_STEPS = (50, 100, 150, 200, 250, 300, 350, 400, 500, 600, 800, 1000)


def render_theory_noff_rank(df: pd.DataFrame) -> str:
    """Per seed of the no-FF runs: the index of W_OV's noise component (0 = top) at chosen
    evaluations, and the last evaluation at which it is the top one."""
    h = df[df["variant"] == "no FF"]
    steps = [s for s in _RANK_STEPS if s in set(h["step"])]
    rows = []
    for seed, g in h.groupby("seed", sort=True):
        idx = g.set_index("step")["ov_noise_component"]
        top = idx[idx == 0].index
        rows.append([int(seed), *(f"{int(idx[s])}" for s in steps), f"{int(top.max())}" if len(top) else "never"])
    return table(["seed", *(f"step {s}" for s in steps), "last evaluation at which it is component 0"], rows)


_REMOVAL_METRICS = {"accuracy": "accuracy", "p_noise": "P(noise)", "p_answer": "P(correct)"}


def render_theory_noff_removal(df: pd.DataFrame) -> str:
    rows = []
    for _, r in df.iterrows():
        n = int(r["n_seeds"])
        rows.append([_REMOVAL_METRICS[r["metric"]], _ci(r["full"], r["full_low"], r["full_high"]),
                     _ci(r["removed"], r["removed_low"], r["removed_high"]),
                     _ci(r["change"], r["change_low"], r["change_high"], "+.3f"),
                     f"{int(r['n_up'])} / {int(r['n_down'])} of {n}",
                     " / ".join(f"{float(a):.3f} -> {float(b):.3f}" for a, b in zip(str(r["per_seed_full"]).split(), str(r["per_seed_removed"]).split()))])
    seeds = str(df["seeds"].iloc[0]).replace(" ", ", ")
    return table(["metric (held-out test set)", "full no-FF model: mean [95% CI]", "noise component removed",
                  "change, paired by seed [95% CI]", "seeds where it rose / fell",
                  f"per seed ({seeds}): full -> removed"], rows)


def render_theory_noff_speedup(df: pd.DataFrame) -> str:
    rows = [[r["event"], f"{r['with_ff_mean']:.0f} [{r['with_ff_low']:.0f}, {r['with_ff_high']:.0f}] ({r['with_ff_values']})",
             f"{r['no_ff_mean']:.0f} [{r['no_ff_low']:.0f}, {r['no_ff_high']:.0f}] ({r['no_ff_values']})",
             int(r["no_ff_censored"]), f"{r['ratio']:.1f} [{r['ratio_low']:.1f}, {r['ratio_high']:.1f}]"]
            for _, r in df.iterrows()]
    return table(["event", "steps with the parallel FF: mean [95% CI] (per seed)", "steps without an FF: mean [95% CI] (per seed)",
                  "seeds without the event by the end (counted at the run's length)", "ratio no FF / FF [95% CI]"], rows)


_PAPER_STEPS = (0, 20, 50, 100, 200, 400, 1000)


def render_theory_noff_paper(df: pd.DataFrame) -> str:
    rows = []
    for variant, g in df.groupby("variant", sort=False):
        g = g[g["step"].isin(_PAPER_STEPS)].groupby("step")
        m = g[["ov_trigger_noise", "ov_copy_mean", "attn_noise_push", "ff_noise_push", "induction_score"]].mean()
        for step, r in m.iterrows():
            rows.append([variant, int(step), f"{r['ov_trigger_noise']:.2f}", f"{r['ov_copy_mean']:.2f}",
                         f"{r['attn_noise_push']:+.2f}", f"{r['ff_noise_push']:+.2f}", f"{r['induction_score']:.2f}"])
    n = df["seed"].nunique()
    return table(["model", "step", f"W_OV trigger->noise entry (mean of {n} seeds)", "W_OV mean copy entry",
                  "attention's push on the noise margin", "FF's push", "induction score"], rows)


def render_theory_signal(df: pd.DataFrame) -> str:
    rows = []
    for variant, g in df.groupby("variant", sort=False):
        factors = " / ".join(f"{f:.3g}, {o:.3g}" for f, o in zip(g["ff_lr_scale"], g["ov_lr_scale"]))
        rows.append([variant, factors, _steps(g["step_ff_alone_noise"]),
                     _steps(g["step_full_noise"]), _steps(g["step_induction"]), _steps(g["step_icl"]),
                     f"{g['final_ff_noise_push'].mean():+.2f} / {g['final_attn_noise_push'].mean():+.2f}"])
    seeds = " / ".join(str(s) for s in dict.fromkeys(df["seed"]))
    return table(["variant", "lr factor FF, OV (per seed)", f"FF alone P(noise) >= alpha/2 (seeds {seeds})", "full model P(noise) >= alpha/2",
                  "induction score >= 0.5", "FF-removed accuracy >= 0.5", f"end (step {int(df['steps'].iloc[0])}): noise push FF / attention"], rows)


def render_theory_scaling(df: pd.DataFrame, what: str) -> str:
    rows = []
    for _, r in df.iterrows():
        v = r["value"]
        v = f"{v:g}" if isinstance(v, float) else v
        f, o = r[f"ff_{what}"], r[f"ov_{what}"]
        rows.append([r["sweep"], v, f"{f:.4f}", f"{r[f'ff_{what}_closed']:.4f}", f"{o:.5f}", f"{r[f'ov_{what}_closed']:.5f}",
                     f"{f / o:.1f}"])
    name = {"mean": "mean signal", "std": "std of the signal"}[what]
    cf = {"mean": "alpha (1 - 1/V)", "std": "sqrt(p(1-p) E[1/n])"}[what]
    return table(["sweep", "value", f"FF {name} (measured)", f"FF closed form {cf}", f"OV {name} (measured)",
                  "OV per-batch closed form over 400 batches", "FF / OV"], rows)


def render_theory_assumptions_events(df: pd.DataFrame) -> str:
    label = {"default": "default (full P(noise) >= alpha/2; FF-removed accuracy >= 0.5)",
             "probability": "probability (full P(noise) >= alpha/2; full P(correct) >= (1-alpha)/2)",
             "argmax": "argmax (attention removed: argmax noise on half the items; FF removed: accuracy >= 0.5)"}
    rows = []
    for c, text in label.items():
        for variant, g in df.groupby("variant", sort=False):
            rows.append([text, variant, _steps(g[f"{c}_ff"]), _steps(g[f"{c}_attn"]),
                         f"{int(g[f'{c}_ff_first'].astype(bool).sum())} of {len(g)}"])
    seeds = " / ".join(str(s) for s in dict.fromkeys(df["seed"]))
    return table(["criterion", "FF wiring", f"FF's event (seeds {seeds})", "attention's event", "FF first"], rows)


def render_theory_assumptions_final(df: pd.DataFrame) -> str:
    rows = []
    for variant, g in df.groupby("variant", sort=False):
        j = lambda c, f=".3f": " / ".join(f"{v:{f}}" for v in g[c])
        rows.append([variant, _steps(g["step_induction"]), j("final_full_p_noise"), j("final_noisy_p_noise"),
                     j("final_ff_removed_accuracy"), j("final_induction"), j("final_ff_noise_push", "+.2f"),
                     j("final_attn_noise_push", "+.2f")])
    steps = int(df["steps"].iloc[0])
    return table(["FF wiring", "induction score >= 0.5 at step", f"step {steps}: full P(noise), clean test",
                  "full P(noise), noisy held-out", "FF-removed accuracy", "induction score", "FF's noise push",
                  "attention's noise push"], rows)


#: block name -> (CSV in docs/data, renderer) of docs/theory.md's minimal-model sections
THEORY_MINIMAL_BLOCKS: dict = {
    "theory-noff-where": ("theory_noff_where.csv", render_theory_noff_where),
    "theory-noff-truncation": ("theory_noff_truncation.csv", render_theory_noff_truncation),
    "theory-noff-rank": ("theory_noff_history.csv", render_theory_noff_rank),
    "theory-noff-removal": ("theory_noff_removal.csv", render_theory_noff_removal),
    "theory-noff-speedup": ("theory_noff_speedup.csv", render_theory_noff_speedup),
    "theory-noff-paper": ("theory_noff_history.csv", render_theory_noff_paper),
    "theory-signal-order": ("theory_signal_summary.csv", render_theory_signal),
    "theory-scaling-mean": ("theory_scaling.csv", lambda df: render_theory_scaling(df, "mean")),
    "theory-scaling-std": ("theory_scaling.csv", lambda df: render_theory_scaling(df, "std")),
    "theory-assumptions-events": ("theory_assumptions_summary.csv", render_theory_assumptions_events),
    "theory-assumptions-final": ("theory_assumptions_summary.csv", render_theory_assumptions_final),
}


def _ci(est, lo, hi, fmt: str = ".3f") -> str:
    """``est [lo, hi]`` (just ``est`` without an interval; "not reached" for NaN)."""
    if pd.isna(est):
        return "n/a"
    if pd.isna(lo) or pd.isna(hi):
        return f"{est:{fmt}}"
    return f"{est:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


_TOY_VARIANTS = {"full": "with FFNs", "attn_only": "attention only", "no_last_ffn": "FFN L1 removed"}
_TOY_TERMS = {"embed": "token embedding", "pos_embed": "positional embedding", "attn.0": "attention L0",
              "attn.1": "attention L1", "mlp.0": "FFN L0", "mlp.1": "FFN L1"}


def render_toy_where(df: pd.DataFrame) -> str:
    """Per (variant, residual term): noise push, its share, correct push, mean [95% interval] over seeds."""
    rows = []
    for (variant, term), g in df.groupby(["variant", "term"], sort=False):
        g = g.set_index("quantity")
        cell = lambda q, fmt="+.2f": _ci(g.loc[q, "estimate"], g.loc[q, "lo"], g.loc[q, "hi"], fmt)
        rows.append([_TOY_VARIANTS[variant], _TOY_TERMS[term], cell("noise push"), cell("share of noise push", ".2f"),
                     cell("correct push")])
    return table(["model", "residual term", "noise push", "share of the noise push", "correct push"], rows)


def render_toy_where_components(df: pd.DataFrame) -> str:
    rows = []
    for _, r in df.iterrows():
        c = lambda col, fmt=".2f": _ci(r[col], r[f"{col}_lo"], r[f"{col}_hi"], fmt)
        rows.append([_TOY_VARIANTS[r["variant"]], f"L{int(r['layer'])} {r['matrix'][5:]}", r["noise_component"],
                     c("noise_sv_over_median"), c("noise_share"), c("noise_total", "+.2f"), c("noise_kept"), c("correct_kept")])
    return table(["model", "matrix", "top noise component (per seed)", "its sigma / median sigma",
                  "its share of the matrix's noise push", "matrix's noise push", "noise push kept at keep 0.1",
                  "correct push kept at keep 0.1"], rows)


def render_toy_interventions(df: pd.DataFrame) -> str:
    rows = []
    for (variant, iv), g in df.groupby(["variant", "intervention"], sort=False):
        g = g.set_index("metric")
        cells = []
        for m in ("accuracy", "p_noise", "p_answer"):
            r = g.loc[m]
            cells.append(_ci(r["estimate"], r["lo"], r["hi"]))
            cells.append("" if iv == "none" else _ci(r["change"], r["change_lo"], r["change_hi"], "+.3f"))
        rows.append([_TOY_VARIANTS[variant], iv, *cells])
    return table(["model", "edit", "accuracy", "change", "P(noise)", "change", "P(correct)", "change"], rows)


_TOY_EVENTS = {"induction_0.5": "induction score >= 0.5", "icl_accuracy_0.5": "in-context accuracy >= 0.5",
               "p_noise_half_alpha": "P(noise) >= alpha / 2"}


def render_toy_speed(df: pd.DataFrame) -> str:
    rows = []
    for (variant, event, basis), g in df.groupby(["variant", "event", "basis"], sort=False):
        g = g.set_index("quantity")
        c = lambda q, fmt=".0f": _ci(g.loc[q, "estimate"], g.loc[q, "lo"], g.loc[q, "hi"], fmt)
        first = g.iloc[0]
        rows.append([_TOY_EVENTS[event], _TOY_VARIANTS[variant], first["per_seed_a"], first["per_seed_b"],
                     f"{basis} (n = {int(first['n'])})", c("a"), c("b"), c("a - b", "+.0f"), c("a / b", ".2f")])
    return table(["event (first evaluation)", "model A", "step in A, per seed", "step with FFNs (B), per seed",
                  "seeds used", "mean A", "mean B", "A - B", "A / B"], rows)


_TOY_GRAD = {"noise_entry_fraction": "share of the squared norm of dOV in the trigger -> noise entry",
             "noise_push_rate": "noise push rate of dOV", "ov_grad_norm": "Frobenius norm of dOV"}


def render_toy_gradient(df: pd.DataFrame) -> str:
    rows = []
    for (variant, step), g in df.groupby(["variant", "step"], sort=False):
        g = g.set_index("quantity")
        rows.append([_TOY_VARIANTS[variant], int(step),
                     *(_ci(g.loc[q, "estimate"], g.loc[q, "lo"], g.loc[q, "hi"], ".2f" if q != "noise_push_rate" else "+.2f")
                       for q in _TOY_GRAD)])
    return table(["model", "step", *_TOY_GRAD.values()], rows)


def render_toy_early(df: pd.DataFrame) -> str:
    quantities = list(dict.fromkeys(df["quantity"]))
    rows = []
    for (variant, step), g in df.groupby(["variant", "step"], sort=False):
        g = g.set_index("quantity")
        rows.append([_TOY_VARIANTS[variant], int(step),
                     *(_ci(g.loc[q, "estimate"], g.loc[q, "lo"], g.loc[q, "hi"], ".2f" if "share" in q else "+.2f")
                       for q in quantities)])
    return table(["model", "step", *quantities], rows)


#: block name -> (CSV in docs/data, renderer) of docs/theory.md's toy attention-only section
THEORY_TOY_BLOCKS: dict = {
    "theory-toy-where": ("theory_toy_where.csv", render_toy_where),
    "theory-toy-where-components": ("theory_toy_where_components.csv", render_toy_where_components),
    "theory-toy-interventions": ("theory_toy_interventions.csv", render_toy_interventions),
    "theory-toy-speed": ("theory_toy_speed.csv", render_toy_speed),
    "theory-toy-early": ("theory_toy_early.csv", render_toy_early),
    "theory-toy-ov-gradient": ("theory_toy_ov_gradient.csv", render_toy_gradient),
}

README = ROOT / "README.md"


def render_readme_toy(df: pd.DataFrame) -> str:
    """The FFN-removal effect on the demo's model with its paired interval (``cpu_ffn_removed.csv``)."""
    rows = []
    for _, r in df[df["metric"].isin(list(_METRICS))].iterrows():
        rows.append([_METRICS[r["metric"]], f"{r['full']:.3f}", f"{r['intervened']:.3f}",
                     f"{r['change']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"])
    n, level = int(df["n_sequences"].iloc[0]), float(df["level"].iloc[0])
    return table(["toy model, `cpu` preset, seed 0", "full model", "FFN L1 removed (the paper's layer-2 FFN)",
                  f"change [{level:.0%} CI, {n} test sequences]"], rows)


#: the language-model runs of the README's order-of-learning table
_README_LM_RUNS = ("default-L4-s0", "default-L4-s1", "default-L4-s2")


def render_readme_lm(df: pd.DataFrame) -> str:
    """Order of learning of docs/lm.md's three 3,000-step seeds (``lm_summary.csv``)."""
    runs = df.set_index("run").loc[list(_README_LM_RUNS)]
    cell = lambda col: " / ".join(_step(v) for v in runs[col])
    rows = [["\" the\" after \" to\" learned", cell("step_the")],
            ["factual answer (a city stated in the story) beats \" the\"", cell("step_fact_beats_the")],
            ["IOI: the indirect object beats \" the\"", cell("step_ioi_beats_the")]]
    steps = int(runs["steps"].iloc[0])
    return table([f"language model (4 layers, {steps:,} steps)", "step (seeds 0 / 1 / 2)"], rows)


#: block name -> (CSV in docs/data, renderer) of README.md's headline tables
README_TOY_BLOCKS = {"readme-toy": ("cpu_ffn_removed.csv", render_readme_toy)}
README_LM_BLOCKS = {"readme-lm": ("lm_summary.csv", render_readme_lm)}


# ------------------------------------- docs/causal.md, attribution patching (analyses/circuits_toy.py)
def render_circuits_agreement(df: pd.DataFrame) -> str:
    rows = [[r["comparison"], r["method"], int(r["passes"]), int(r["n"]), f"{r['spearman']:.3f}",
             f"{r['top_k']:.2f} (top {int(r['k'])})", f"{r['max_abs_diff']:.3f}"] for _, r in df.iterrows()]
    return table(["against", "method", "passes per batch", "rows", "rank correlation", "top-k overlap",
                  "largest difference from exact"], rows)


def render_circuits_convergence(df: pd.DataFrame) -> str:
    wide = df.pivot(index="steps", columns="method", values="max_abs_diff")
    gap = float(df["gap"].iloc[0])
    rows = [[int(k), f"{wide.loc[k, 'ig-activations']:.2e}", f"{wide.loc[k, 'ig-inputs']:.2e}"] for k in wide.index]
    return table(["steps", "ig-activations: largest difference from exact", "ig-inputs"], rows) + \
        f"\n\nOver the {int(df['n'].iloc[0])} whole-site rows (position `all` of `resid_pre`, `attn_out`, `mlp_out`, both " \
        f"directions); the clean - corrupted gap is {gap:.3f}."


def render_circuits_faithfulness(df: pd.DataFrame) -> str:
    sizes = list(dict.fromkeys(df["n_edges"]))
    cell = lambda r: f"{r['recovered']:.2f} [{r['recovered_low']:.2f}, {r['recovered_high']:.2f}]"
    rows = []
    for ablation, g in df.groupby("ablation", sort=False):
        g = g.set_index("n_edges")
        rows.append([ablation, *(cell(g.loc[n]) for n in sizes)])
    return table(["ablation outside the circuit", *(f"top {n}" for n in sizes)], rows) + \
        f"\n\nEach cell: the fraction of the clean - corrupted gap recovered [its 95% paired bootstrap interval " \
        f"over the sequences]; {int(df['total_edges'].iloc[0])} edges in all."


def render_circuits_tl(df: pd.DataFrame) -> str:
    e = lambda v: "-" if pd.isna(v) else f"{v:.1e}"
    rows = [[r["model"], e(r["node_max_abs_diff"]), e(r["edge_max_abs_diff"]), f"{r['largest_score']:.3f}",
             e(r["logit_lens_max_abs_diff"]), e(r["dla_max_abs_diff"])] for _, r in df.iterrows()]
    return table(["tiny random bridge", "node scores: largest difference", "edge scores", "largest edge score",
                  "logit lens (P(answer), loss, logit difference)", "direct logit attribution (per head)"], rows)


#: block name -> (CSV in docs/data, renderer) of docs/causal.md's attribution-patching section
CIRCUITS_BLOCKS = {
    "cpu-circuits-agreement": ("cpu_circuits_agreement.csv", render_circuits_agreement),
    "cpu-circuits-convergence": ("cpu_circuits_convergence.csv", render_circuits_convergence),
    "cpu-circuits-faithfulness": ("cpu_circuits_faithfulness.csv", render_circuits_faithfulness),
    "circuits-transformer-lens": ("circuits_transformer_lens.csv", render_circuits_tl),
}


# ----------------------- docs/causal.md, circuits across training (analyses/circuits_training.py)
_MODEL_NAMES = {"toy": "toy (cpu preset)", "lm": "our LM (4 layers, d 128, alpha 0.1, seed 0)"}


def _maybe_step(v) -> str:
    return "never" if pd.isna(v) else str(int(v))


def render_circuits_training_overtaking(df: pd.DataFrame) -> str:
    rows = [[_MODEL_NAMES.get(r["model"], r["model"]), int(r["pairs"]), f"{r['metric']}", int(r["checkpoints"]),
             f"{_maybe_step(r['step'])} [{_maybe_step(r['low'])}, {_maybe_step(r['high'])}]",
             f"{100 * r['never']:.0f}%", f"{r['top_node_last']} ({r['top_node_change']:+.2f})"]
            for _, r in df.iterrows()]
    return table(["model", "prompt pairs", "metric", "checkpoints", "attention overtakes the MLPs' push at step "
                  "[95% interval]", "resamples never overtaking", "largest node at the last step (its change)"], rows)


def render_circuits_training_evidence(df: pd.DataFrame) -> str:
    rows = [[_MODEL_NAMES.get(r["model"], r["model"]), int(r["step"]), f"{r['attention']:+.3f}",
             f"{r['mlp_push']:+.3f}", f"{r['margin']:+.3f}", "yes" if str(r["ahead"]) == "True" else "no"]
            for _, r in df.iterrows()]
    return table(["model", "step", "attention's evidence", "MLPs' generic push", "margin", "attention ahead"], rows)


def render_circuits_training_circuit(df: pd.DataFrame) -> str:
    rows = []
    for (model, step), g in df.groupby(["model", "step"], sort=False):
        edges = ", ".join(f"{r['sender']} -> {r['receiver']} {r['change']:+.2f}" for _, r in g.iterrows())
        rows.append([_MODEL_NAMES.get(model, model), int(step), edges])
    return table(["model", "step", "top edges by estimated change of the metric"], rows)


#: block name -> (CSV in docs/data, renderer) of docs/causal.md's "Circuits across training"
CIRCUITS_TRAINING_BLOCKS = {
    "circuits-training-overtaking": ("circuits_training_overtaking.csv", render_circuits_training_overtaking),
    "circuits-training-evidence": ("circuits_training_evidence.csv", render_circuits_training_evidence),
    "circuits-training-circuit": ("circuits_training_circuit.csv", render_circuits_training_circuit),
}


#: every registry of generated blocks: (blocks, page, the script that regenerates them)
REGISTRIES = [
    (README_TOY_BLOCKS, README, "make_results.py"),
    (README_LM_BLOCKS, README, "lm_study.py"),
    (BLOCKS, RESULTS, "make_results.py"),
    (LM_BLOCKS, LM, "lm_study.py"),
    (DOSE_BLOCKS, LM, "lm_dose.py"),
    (IOI_BLOCKS, LM, "lm_ioi.py"),
    (ENGLISH_BLOCKS, LM, "english_text.py"),
    (CAUSAL_BLOCKS, CAUSAL, "make_results.py"),
    (CIRCUITS_BLOCKS, CAUSAL, "circuits_toy.py"),
    (CIRCUITS_TRAINING_BLOCKS, CAUSAL, "circuits_training.py"),
    (SVD_BLOCKS, RESULTS, "svd_sensitivity.py"),
    (THEORY_MINIMAL_BLOCKS, THEORY, "dynamics_theory.py"),
    (THEORY_TOY_BLOCKS, THEORY, "dynamics_toy_attention.py"),
]


def _registry(name: str) -> tuple[dict, Path, str]:
    for blocks, page, script in REGISTRIES:
        if name in blocks:
            return blocks, page, script
    raise KeyError(f"no generated block {name!r}")


def all_blocks() -> list[str]:
    return [name for blocks, _, _ in REGISTRIES for name in blocks]


def doc_of(name: str) -> Path:
    return _registry(name)[1]


def script_of(name: str) -> str:
    """The committed script (in ``analyses/``) that regenerates block ``name``."""
    return _registry(name)[2]


def render(name: str) -> str:
    blocks, _, _ = _registry(name)
    csv, fn = blocks[name]
    return fn(read_table(DATA / csv))


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"<!-- BEGIN generated:{re.escape(name)} -->\n(.*?)\n?<!-- END generated:{re.escape(name)} -->", re.S)


def read_block(name: str, doc: Path | None = None) -> str | None:
    m = _pattern(name).search((doc or doc_of(name)).read_text())
    return None if m is None else m.group(1)


def write_block(name: str, doc: Path | None = None) -> None:
    """Replace block ``name`` of ``doc`` (default: the page it belongs to) by its rendering from
    the CSV (the block must exist)."""
    doc = doc or doc_of(name)
    text = doc.read_text()
    if not _pattern(name).search(text):
        raise ValueError(f"{doc} has no generated block {name!r}")
    block = f"<!-- BEGIN generated:{name} -->\n{render(name)}\n<!-- END generated:{name} -->"
    doc.write_text(_pattern(name).sub(lambda m: block, text))
