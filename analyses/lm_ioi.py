"""IOI that the model learns, and the paper's claim on it as a dose-response (docs/lm.md, "When
truncation helps", "IOI that the model learns").

The default corpus' IOI sentences make up about a sixth of its stories, and no run of it tells the
indirect object from the subject.  Here 80% of the sentences are IOI (:data:`IOI_DENSE`: the generic
"to" and "in" sentences and filler share the rest, no facts), on the ``small`` model (4 layers,
d 128) at context 128, batch 16 and peak learning rate 3e-3 for 1,500 steps (3.1M tokens; the
recall runs' settings, :mod:`lm_dose`).  The generic association's weight is the corpus'
``ioi_the_share``: the share of IOI sentences that end "... gave a drink to the teacher." instead
of naming the indirect object, so " the" is the true continuation of an IOI prompt with that
probability.  Arms (:data:`SHARES`) x :data:`SEEDS`.

Each run is measured at every checkpoint on held-out IOI templates (IO-vs-S accuracy, P(IO),
P(S), P(" the"): :func:`mechtrunc.studies.lm.learning_curves`), and studied like the recall runs
(:func:`mechtrunc.studies.lm.study_run`, cached in ``RUN/study/``: the truncation chosen on select
prompts within a 0.1-nat corpus-loss budget, its change of P(IO), P(S), P(" the") reported on eval
prompts with a paired bootstrap interval).  :func:`ioi_curve` gives the tokens at which IO-vs-S
accuracy first reaches 0.8.  Interrupted runs and studies resume where they stopped.

    python analyses/lm_ioi.py --lane 0/2 & python analyses/lm_ioi.py --lane 1/2   # train on two cores
    python analyses/lm_ioi.py                                                      # study + tables
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

import _docs
import mechtrunc as mt
from lm_study import lane
from mechtrunc.models.lm import corpus_preset, lm_preset, run_tokenizer, train_lm
from mechtrunc.studies import lm as S

ROOT = Path(__file__).resolve().parents[1]

#: 80% IOI sentences; the default corpus' generic "to"/"in" sentences and filler share the rest
IOI_DENSE = dict(generic_to=0.05, generic_in=0.05, generic_of=0.0, ioi=0.8, fact=0.0, filler=0.1)
#: the generic association's weight: the share of IOI sentences ending "to the ROLE"
SHARES = (0.1, 0.25, 0.5)
SEEDS = (0, 1, 2)
STEPS = 1500
BATCH = 16
LR = 3e-3
#: (share, seed) of every run in training order: every share's seed 0 first
RUNS = [(share, seed) for seed in SEEDS for share in SHARES]
N_PROMPTS = 200
LOSS_BUDGET = 0.1
TARGET = 0.8


def run_name(share: float, seed: int) -> str:
    return f"ioi-the{share:g}-s{seed}"


def run_config(share: float, seed: int):
    return lm_preset("small", ctx=128, batch_size=BATCH, steps=STEPS, seed=seed, lr=LR,
                     corpus=corpus_preset("default", seed=seed, ioi_the_share=share, **IOI_DENSE))


def ioi_curve(curves: pd.DataFrame, config) -> pd.DataFrame:
    """The held-out IOI prompts at every checkpoint: tokens seen, IO-vs-S accuracy, P(IO), P(S),
    P(" the"), and ``reached_tokens``, the tokens of the first checkpoint from which IO-vs-S
    accuracy stays at or above :data:`TARGET` (NaN if none)."""
    ioi = curves[curves["prompts"] == "ioi/eval"].sort_values("step")
    df = pd.DataFrame({"step": ioi["step"].astype(int),
                       "tokens": (ioi["step"] * config.batch_size * config.ctx).astype(int),
                       "acc_vs_subject": ioi["acc_vs_subject"], "p_answer": ioi["p_answer"],
                       "p_subject": ioi["p_subject"], "p_the": ioi["p_the"]})
    ok = (df["acc_vs_subject"] >= TARGET).to_numpy()
    stays = [i for i in range(len(ok)) if ok[i:].all()]
    return df.assign(reached_tokens=float(df["tokens"].iloc[stays[0]]) if stays else float("nan"))


def study(runs: Path, share: float, seed: int) -> dict[str, pd.DataFrame]:
    """Train (or resume) and study one run; its IOI curve and its IOI best-truncation rows."""
    run = runs / run_name(share, seed)
    train_lm(run_config(share, seed), run, progress=False)
    tables = S.study_run(run, n_prompts=N_PROMPTS, loss_budget=LOSS_BUDGET, competition=False)
    curve = ioi_curve(tables["curves"], run_config(share, seed)).assign(run=run.name, share=share, seed=seed)
    best = tables["best"]
    best = best[(best["task"] == "ioi") & (best["checkpoint"] == "final")] if not best.empty else best
    return {"curve": curve, "best": best}


CHANGES = ("p_answer", "p_subject", "p_the", "acc_vs_subject")


def run_rows(curve: pd.DataFrame, best: pd.DataFrame) -> dict:
    """One row per run: its final checkpoint's IOI metrics, the over-weighting (P(" the") minus
    the corpus share), the tokens to IO-vs-S accuracy 0.8, and the truncation chosen on the IOI
    select prompts with its held-out change of :data:`CHANGES` (0 and choice "none" when no
    truncation beat the full model)."""
    last = curve.iloc[-1]
    row = {"run": last["run"], "share": float(last["share"]), "seed": int(last["seed"]), "step": int(last["step"]),
           **{m: float(last[m]) for m in ("acc_vs_subject", "p_answer", "p_subject", "p_the")},
           "overweighting": float(last["p_the"]) - float(last["share"]), "reached_tokens": float(last["reached_tokens"])}
    if best.empty:
        return row | {"choice": "none", "loss_increase": 0.0} | {
            f"gain_{m}{end}": 0.0 for m in CHANGES for end in ("", "_low", "_high")}
    first = best.iloc[0]
    row |= {"choice": f"L{int(first['layer'])} {first['matrix']} keep {float(first['keep']):g}",
            "loss_increase": float(first["loss_increase"])}
    for metric in CHANGES:
        m = best[best["metric"] == metric].iloc[0]
        row |= {f"gain_{metric}": float(m["change"]), f"gain_{metric}_low": float(m["ci_low"]),
                f"gain_{metric}_high": float(m["ci_high"])}
    return row


def over_seeds(runs: pd.DataFrame) -> pd.DataFrame:
    """Per share: the mean over seeds of the final metrics and of each held-out change, with the
    95% percentile bootstrap interval over seeds (:func:`mechtrunc.studies.dynamics.seed_interval`)."""
    rows = []
    for share, g in runs.groupby("share"):
        row = {"share": share, "n_seeds": len(g), **{m: g[m].mean() for m in
                                                      ("acc_vs_subject", "p_answer", "p_subject", "p_the", "overweighting")},
               "choices": " / ".join(g["choice"])}
        for metric in CHANGES:
            iv = mt.dynamics.seed_interval(g[f"gain_{metric}"].to_numpy(float))
            row |= {f"gain_{metric}": iv["mean"], f"gain_{metric}_low": iv["lo"], f"gain_{metric}_high": iv["hi"],
                    f"gain_{metric}_per_seed": " ".join(f"{v:+.3f}" for v in g[f"gain_{metric}"])}
        rows.append(row)
    return pd.DataFrame(rows)


def figure(curves: pd.DataFrame, runs: pd.DataFrame, path: Path) -> Path:
    """Left: IO-vs-S accuracy against training tokens, every run.  Middle: the held-out change of
    P(IO), P(S) and P(" the") under each run's chosen truncation against the corpus share, with
    the mean change of P(IO) over seeds and its 95% interval over seeds (:func:`over_seeds`).
    Right: the change of P(IO) against the run's measured over-weighting, P(" the") after the
    prompt minus the share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    colors = {share: f"C{i}" for i, share in enumerate(SHARES)}
    for (share, seed), g in curves.groupby(["share", "seed"], sort=True):
        g = g[g["tokens"] > 0]
        axes[0].plot(g["tokens"], g["acc_vs_subject"], "o-", ms=3, color=colors.get(share, "k"), alpha=0.8,
                     label=f'" the" share {share:g}' if seed == min(SEEDS) else None)
    axes[0].axhline(TARGET, color="grey", lw=0.8, ls="--")
    axes[0].axhline(0.5, color="grey", lw=0.8)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("training tokens")
    axes[0].set_ylabel("IO-vs-S accuracy (held-out templates)")
    for j, (metric, what) in enumerate((("p_answer", "P(IO)"), ("p_subject", "P(S)"), ("p_the", 'P(" the")'))):
        x = runs["share"].to_numpy(float) + 0.008 * (j - 1)
        axes[1].errorbar(x, runs[f"gain_{metric}"],
                         yerr=[runs[f"gain_{metric}"] - runs[f"gain_{metric}_low"],
                               runs[f"gain_{metric}_high"] - runs[f"gain_{metric}"]],
                         fmt="os^"[j], color=f"C{j + 3}", capsize=2, ls="none", label=f"{what} (each run, 95% CI over prompts)")
    shares = over_seeds(runs)
    axes[1].errorbar(shares["share"].to_numpy(float) - 0.025, shares["gain_p_answer"],
                     yerr=[shares["gain_p_answer"] - shares["gain_p_answer_low"],
                           shares["gain_p_answer_high"] - shares["gain_p_answer"]],
                     fmt="D", color="k", capsize=3, ls="-", lw=1, label="P(IO): mean over seeds, 95% CI over seeds")
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[1].set_xlabel('corpus share of IOI sentences ending "to the ROLE"')
    axes[1].set_ylabel("held-out change under the chosen truncation")
    for share, g in runs.groupby("share", sort=True):
        axes[2].errorbar(g["overweighting"], g["gain_p_answer"],
                         yerr=[g["gain_p_answer"] - g["gain_p_answer_low"], g["gain_p_answer_high"] - g["gain_p_answer"]],
                         fmt="o", color=colors.get(share, "k"), capsize=2, ls="none", label=f'" the" share {share:g}')
    axes[2].axhline(0, color="grey", lw=0.8)
    axes[2].axvline(0, color="grey", lw=0.8)
    axes[2].set_xlabel('over-weighting: model P(" the" | IOI prompt) minus its share')
    axes[2].set_ylabel("held-out change of P(IO) (95% CI over prompts)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle("IOI-dense corpus (80% IOI sentences), small model, 1,500 steps x 2,048 tokens")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "lm-ioi", help="where the runs live")
    p.add_argument("--lane", default=None, type=lane,
                   help="K/N (0 <= K < N): only train runs K, K+N, K+2N, ... (no tables written)")
    p.add_argument("--finished-only", action="store_true", help="study only the runs that finished training")
    args = p.parse_args(argv)
    if args.lane is not None:
        k, n = args.lane
        for share, seed in RUNS[k::n]:
            train_lm(run_config(share, seed), args.runs / run_name(share, seed), progress=False)
        return 0
    specs = RUNS
    if args.finished_only:
        specs = [(a, s) for a, s in RUNS if (args.runs / run_name(a, s) / "summary.json").is_file()]
        missing = [run_name(a, s) for a, s in RUNS if (a, s) not in specs]
        print(f"studying {len(specs)} finished runs; not trained yet: {', '.join(missing) or 'none'}", flush=True)
    per_run = [study(args.runs, share, seed) for share, seed in specs]
    curves = pd.concat([t["curve"] for t in per_run], ignore_index=True)
    runs = pd.DataFrame([run_rows(t["curve"], t["best"]) for t in per_run])
    shares = over_seeds(runs)
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(runs.round(4).to_string(index=False))
    written = {"lm_ioi_curve.csv": curves, "lm_ioi_runs.csv": runs, "lm_ioi_shares.csv": shares}
    for name, df in written.items():
        df.to_csv(_docs.DATA / name, index=False)
    figure(curves, runs, ROOT / "docs" / "figures" / "lm_ioi.png")
    _docs.record_provenance("lm_ioi.py", [_docs.DATA / name for name in written])
    for name in _docs.IOI_BLOCKS:
        _docs.write_block(name)
        print(f"--- {name}\n{_docs.render(name)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
