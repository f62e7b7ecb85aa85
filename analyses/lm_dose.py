"""When truncation helps: the noisy-recall dose-response of docs/lm.md ("When truncation helps"),
end to end.

The corpus' ``recall`` family is the toy's task in words: "Mary went to Paris." is stated and
repeated at the end of the story, and with probability ``alpha`` (``recall_noise``) the repeat says
"Mary went to the park." instead.  " the" after "went to" is the generic association, the city the
in-context answer.  Arms (:data:`ARMS`): the noise share ``alpha`` at three levels, each over
:data:`SEEDS`; the *over-weighted* corpus (``recall_overweighted``: " the" follows every generic
" to" but never a recall repeat, so the true share of " the" at the repeat is 0); and real English
text as the source of the generic statistics.

Every run trains the ``small`` model (4 layers, d 128) at context 128, batch 16 and peak learning
rate 3e-3 for 1,500 steps (:func:`run_config`: a 128-token window holds several whole recall
stories, statement and repeat; 2,048 tokens per step; at the preset's 1e-3 a pilot run had not
started copying by step 750, at 3e-3 it copied the city on 63% of the prompts there), is
studied with :func:`mechtrunc.studies.lm.study_run` (cached in ``RUN/study/``: learning curves at
every checkpoint, the truncation grid at the final checkpoint, the best
truncation chosen on select prompts within a 0.1-nat corpus-loss budget and reported on eval
prompts with a paired bootstrap interval, the margin ledger at every checkpoint), and summarised
into ``docs/data/lm_dose_*.csv``, ``docs/figures/lm_dose_response.png`` and the generated blocks
of docs/lm.md.  Interrupted runs and studies resume where they stopped.

    python analyses/lm_dose.py --lane 0/2 & python analyses/lm_dose.py --lane 1/2   # train on two cores
    python analyses/lm_dose.py                                                       # study + tables
    python analyses/lm_dose.py --smoke --runs /tmp/dose                              # a reduced version
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import _docs
import mechtrunc as mt
from lm_study import lane
from mechtrunc.models.lm import corpus_preset, lm_preset, train_lm
from mechtrunc.studies import lm as S

ROOT = Path(__file__).resolve().parents[1]

#: arm -> (corpus preset, corpus overrides, the true share of " the" at the recall repeat)
ARMS: dict[str, tuple[str, dict, float]] = {
    "alpha0.1": ("recall", {"recall_noise": 0.1}, 0.1),
    "alpha0.3": ("recall", {"recall_noise": 0.3}, 0.3),
    "alpha0.6": ("recall", {"recall_noise": 0.6}, 0.6),
    "overweighted": ("recall_overweighted", {}, 0.0),
    # real English as the source of the generic statistics: 30% of the stories are passages of the
    # seven public-domain books (`mechtrunc lm english`), no noise at the repeat
    "english": ("recall", {"recall_noise": 0.0, "english": 0.3}, 0.0),
}
SEEDS = (0, 1, 2)
STEPS = 1500
LR = 3e-3
#: (arm, seed) of every run, in training order: the dose-response arms over SEEDS, one seed of the
#: over-weighted and English arms
RUNS = [(arm, seed) for seed in SEEDS for arm in ("alpha0.1", "alpha0.6", "alpha0.3")] + [
    ("overweighted", 0), ("english", 0)]
N_PROMPTS = 200
LOSS_BUDGET = 0.1
#: the reduced dose-response of the slow test (--smoke): two alphas, one seed, a 2-layer d 64
#: model (batch 8), few steps
SMOKE = dict(runs=[("alpha0.1", 0), ("alpha0.6", 0)], steps=300, n_prompts=48, keeps=(0.0, 0.1),
             model=dict(n_layers=2, d_model=64, batch_size=8))


def run_name(arm: str, seed: int) -> str:
    return f"{arm}-s{seed}"


def run_config(arm: str, seed: int, steps: int = STEPS, **model):
    """The ``small`` preset at context 128, batch 16, learning rate :data:`LR` (a window holds
    several whole recall stories) on the arm's corpus, seeded by ``seed``; ``model`` overrides
    (the smoke version's smaller model)."""
    corpus, overrides, _ = ARMS[arm]
    return lm_preset("small", **{**dict(ctx=128, batch_size=16, steps=steps, seed=seed, lr=LR), **model},
                     corpus=corpus_preset(corpus, seed=seed, **overrides))


def study(runs: Path, arm: str, seed: int, steps: int = STEPS, n_prompts: int = N_PROMPTS,
          keeps=S.STUDY_KEEPS, model: dict | None = None) -> dict[str, pd.DataFrame]:
    run = runs / run_name(arm, seed)
    train_lm(run_config(arm, seed, steps, **(model or {})), run, progress=False)
    tables = S.study_run(run, n_prompts=n_prompts, keeps=keeps, loss_budget=LOSS_BUDGET, competition=False)
    return {k: v.assign(run=run.name, arm=arm, seed=seed) if not v.empty else v for k, v in tables.items()}


# ------------------------------------------------------------------ summaries
def _final(curves: pd.DataFrame, prompts: str) -> pd.Series:
    sub = curves[curves["prompts"] == prompts]
    return sub[sub["step"] == sub["step"].max()].iloc[0]


def run_rows(tables: dict[str, pd.DataFrame]) -> dict:
    """One row per run: the final checkpoint's recall and binding metrics, the over-weighting
    (model P(" the") at the recall repeat minus its true share), and per task the chosen
    truncation's held-out change of P(answer), P(" the") and P(other) with its interval."""
    curves, best = tables["curves"], tables["best"]
    arm, seed = curves["arm"].iloc[0], int(curves["seed"].iloc[0])
    share = ARMS[arm][2]
    row = {"run": curves["run"].iloc[0], "arm": arm, "seed": seed, "alpha": share,
           "step": int(curves["step"].max())}
    for task in ("recall", "binding"):
        f = _final(curves, f"{task}/eval")
        row |= {f"{task}_{m}": float(f[m]) for m in ("accuracy", "p_answer", "p_the", "p_other", "acc_vs_other")}
    row["overweighting"] = row["recall_p_the"] - share
    final = best[best["checkpoint"] == "final"] if "checkpoint" in best else best.iloc[0:0]
    for task in ("recall", "binding"):
        sub = final[final["task"] == task]
        if sub.empty:  # no truncation beat the full model on the select prompts: nothing chosen, a gain of 0
            row |= {f"{task}_choice": "none", f"{task}_loss_increase": 0.0}
            row |= {f"{task}_gain_{m}{end}": 0.0 for m in ("p_answer", "p_the", "p_other", "acc_vs_other")
                    for end in ("", "_low", "_high")}
            continue
        first = sub.iloc[0]
        row[f"{task}_choice"] = f"L{int(first['layer'])} {first['matrix']} keep {float(first['keep']):g}"
        row[f"{task}_loss_increase"] = float(first["loss_increase"])
        for metric in ("p_answer", "p_the", "p_other", "acc_vs_other"):
            m = sub[sub["metric"] == metric].iloc[0]
            row |= {f"{task}_gain_{metric}": float(m["change"]), f"{task}_gain_{metric}_low": float(m["ci_low"]),
                    f"{task}_gain_{metric}_high": float(m["ci_high"])}
    return row


def best_rows(best: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run, grid checkpoint and task: the configuration chosen on the select prompts
    and its held-out change of P(answer), P(" the"), P(other city) with paired intervals (the
    final checkpoint of every run; the competition checkpoint where a study has one).  Runs
    where nothing was chosen at the final checkpoint appear with ``choice`` "none"."""
    rows = []
    for (run, checkpoint, step, task), g in best.groupby(["run", "checkpoint", "step", "task"], sort=False):
        first = g.iloc[0]
        row = {"run": run, "checkpoint": checkpoint, "step": int(step), "task": task,
               "choice": f"L{int(first['layer'])} {first['matrix']} keep {float(first['keep']):g}",
               "loss_increase": float(first["loss_increase"])}
        for metric in ("p_answer", "p_the", "p_other", "accuracy"):
            m = g[g["metric"] == metric].iloc[0]
            row |= {f"{metric}_full": float(m["full"]), metric: float(m["change"]),
                    f"{metric}_low": float(m["ci_low"]), f"{metric}_high": float(m["ci_high"])}
        rows.append(row)
    have = {(r["run"], r["task"]) for r in rows if r["checkpoint"] == "final"}
    for _, r in runs.iterrows():
        for task in ("recall", "binding"):
            if (r["run"], task) not in have:
                rows.append({"run": r["run"], "checkpoint": "final", "step": int(r["step"]), "task": task,
                             "choice": "none", "loss_increase": 0.0, "p_answer_full": r[f"{task}_p_answer"]})
    order = {name: i for i, name in enumerate(runs["run"])}
    return (pd.DataFrame(rows).sort_values(["run", "checkpoint", "task"], key=lambda c: c.map(order) if c.name == "run"
                                            else c.map({"final": 0, "competition": 1, "recall": 0, "binding": 1}))
            .reset_index(drop=True))


def over_seeds(runs: pd.DataFrame) -> pd.DataFrame:
    """Per arm and task: the mean held-out gain of P(answer) over seeds with its 95% percentile
    bootstrap interval over seeds (:func:`mechtrunc.studies.dynamics.seed_interval`; with 3 seeds it is
    close to [min, max]; a single seed: no interval), the per-seed gains, the mean over-weighting."""
    from mechtrunc.studies.dynamics import seed_interval

    rows = []
    for arm, g in runs.groupby("arm", sort=False):
        for task in ("recall", "binding"):
            v = g[f"{task}_gain_p_answer"].to_numpy(float)
            n = len(v)
            ci = seed_interval(v) if n > 1 else {"lo": float("nan"), "hi": float("nan")}
            rows.append({"arm": arm, "alpha": float(g["alpha"].iloc[0]), "task": task, "n_seeds": n,
                         "gain": v.mean(), "gain_low": ci["lo"], "gain_high": ci["hi"],
                         "per_seed": " ".join(f"{x:+.4f}" for x in v),
                         "p_answer": g[f"{task}_p_answer"].mean(), "p_the": g[f"{task}_p_the"].mean(),
                         "p_other": g[f"{task}_p_other"].mean(), "accuracy": g[f"{task}_accuracy"].mean(),
                         "acc_vs_other": g[f"{task}_acc_vs_other"].mean(),
                         "overweighting": g["overweighting"].mean(),
                         "choices": " / ".join(g[f"{task}_choice"])})
    return pd.DataFrame(rows)


def ledger_rows(ledger: pd.DataFrame) -> pd.DataFrame:
    """Per run and checkpoint: the margin, the largest MLP / attention-layer / head contributions
    and the layer whose MLP removal changes P(" the") most (and the change)."""
    rows = []
    for (run, step), g in ledger.groupby(["run", "step"], sort=False):
        val = lambda kind: g[g["kind"] == kind]  # noqa: E731
        removal = val("mlp_removed_p_the")
        top = removal.iloc[int(np.argmax(removal["value"].abs().to_numpy()))]
        row = {"run": run, "arm": g["arm"].iloc[0], "step": int(step),
               "margin": float(val("total")["value"].iloc[0]),
               "p_the": float(val("full_p_the")["value"].iloc[0]), "p_answer": float(val("full_p_answer")["value"].iloc[0]),
               "mlp_removal_layer": int(top["layer"]), "mlp_removal_p_the_change": float(top["value"])}
        for kind in ("mlp", "attn", "head"):
            sub = val(kind)
            low = sub.iloc[int(np.argmin(sub["value"].to_numpy()))]
            high = sub.iloc[int(np.argmax(sub["value"].to_numpy()))]
            row |= {f"{kind}_most_the": low["component"], f"{kind}_most_the_value": float(low["value"]),
                    f"{kind}_most_answer": high["component"], f"{kind}_most_answer_value": float(high["value"])}
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ figure
_ROW_TITLES = {"alpha0.1": "alpha 0.1", "alpha0.3": "alpha 0.3", "alpha0.6": "alpha 0.6",
               "overweighted": "over-weighted", "english": "real English"}


def figure(per_arm: pd.DataFrame, runs: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, task in enumerate(("recall", "binding")):
        mark = {"recall": "o", "binding": "s"}[task]
        arms = per_arm[(per_arm["task"] == task) & per_arm["arm"].str.startswith("alpha")].sort_values("alpha")
        for ax, x_of in ((axes[0], "alpha"), (axes[1], "overweighting")):
            x = arms[x_of].to_numpy(float)
            yerr = np.nan_to_num([arms["gain"] - arms["gain_low"], arms["gain_high"] - arms["gain"]])
            ax.errorbar(x + (0.006 * i if x_of == "alpha" else 0), arms["gain"], yerr=yerr,
                        fmt=mark + ("-" if x_of == "alpha" else ""), color=f"C{i}", capsize=3,
                        label=f"{task}: mean over seeds, 95% CI (faint: each seed)")
            one = runs[runs["arm"].str.startswith("alpha")]
            ax.scatter(one["alpha" if x_of == "alpha" else "overweighting"], one[f"{task}_gain_p_answer"],
                       color=f"C{i}", alpha=0.35, s=14, marker=mark)
            for arm, marker, what in (("overweighted", "*", "over-weighted corpus"), ("english", "D", "real English")):
                one = runs[runs["arm"] == arm]
                if len(one):
                    ax.scatter(one["alpha" if x_of == "alpha" else "overweighting"], one[f"{task}_gain_p_answer"],
                               color=f"C{i}", marker=marker, s=70 if marker == "*" else 30, edgecolor="k",
                               label=f"{task}: {what} (true share 0)")
    axes[0].set_xlabel('noise share alpha = true P(" the") at the repeat')
    axes[0].set_xlim(-0.05, 0.7)
    axes[1].set_xlabel('over-weighting: model P(" the") - true share, at the repeat')
    for ax in axes:
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_ylabel("held-out gain in P(answer)\n(best truncation, eval prompts)")
        ax.legend(fontsize=7)
    fig.suptitle("Does truncating an MLP move probability to the in-context answer? (4 layers, d 128)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------ main
def summarise(per_run: dict[str, dict[str, pd.DataFrame]]) -> dict[str, pd.DataFrame]:
    """The dose-response tables of the studied runs."""
    runs = pd.DataFrame([run_rows(t) for t in per_run.values()])
    ledger = pd.concat([t["ledger"] for t in per_run.values()], ignore_index=True)
    chosen = [t["best"] for t in per_run.values() if not t["best"].empty]
    best = (pd.concat(chosen, ignore_index=True) if chosen  # no truncation chosen anywhere: none to tabulate
            else pd.DataFrame(columns=["run", "checkpoint", "step", "task", "metric"]))
    return {"runs": runs, "arms": over_seeds(runs), "ledger": ledger_rows(ledger), "best": best_rows(best, runs),
            "curves": pd.concat([t["curves"] for t in per_run.values()], ignore_index=True)}


def smoke(runs: Path) -> dict[str, pd.DataFrame]:
    """The reduced dose-response (:data:`SMOKE`) trained and studied under ``runs``: what the slow
    test runs."""
    per_run = {run_name(a, s): study(runs, a, s, SMOKE["steps"], SMOKE["n_prompts"], SMOKE["keeps"], SMOKE["model"])
               for a, s in SMOKE["runs"]}
    return summarise(per_run)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/lm-dose", help="where the runs live (default runs/lm-dose)")
    p.add_argument("--lane", default=None, type=lane,
                   help="K/N (0 <= K < N): only train runs K, K+N, K+2N, ... (no tables written)")
    p.add_argument("--only", nargs="+", default=None, metavar="RUN",
                   help="study and tabulate only these runs (names as ARM-sSEED, e.g. alpha0.3-s1); the others are "
                        "named as left out; without it, every run is trained and studied")
    p.add_argument("--smoke", action="store_true",
                   help="the reduced dose-response (2 alphas, 1 seed, 300 steps); prints, writes no docs")
    args = p.parse_args(argv)
    runs = Path(args.runs)
    if args.smoke:
        out = smoke(runs)
        with pd.option_context("display.width", 250, "display.max_columns", 30):
            print(out["runs"].round(4).T.to_string())
        return 0
    if args.lane is not None:
        k, n = args.lane
        for arm, seed in RUNS[k::n]:
            print(train_lm(run_config(arm, seed), runs / run_name(arm, seed), progress=False), flush=True)
        return 0
    specs = RUNS
    if args.only is not None:
        names = {run_name(a, s): (a, s) for a, s in RUNS}
        bad = [x for x in args.only if x not in names]
        if bad:
            p.error(f"--only: unknown runs {bad}; valid: {', '.join(names)}")
        specs = [names[x] for x in names if x in args.only]
        print(f"tabulating {len(specs)} runs; left out: {', '.join(x for x in names if x not in args.only) or 'none'}",
              flush=True)
    per_run = {run_name(a, s): study(runs, a, s) for a, s in specs}
    out = summarise(per_run)
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(out["arms"].round(4).to_string(index=False))
    out["runs"].to_csv(_docs.DATA / "lm_dose_runs.csv", index=False)
    out["best"].to_csv(_docs.DATA / "lm_dose_best.csv", index=False)
    out["arms"].to_csv(_docs.DATA / "lm_dose_arms.csv", index=False)
    out["ledger"].to_csv(_docs.DATA / "lm_dose_ledger.csv", index=False)
    out["curves"].to_csv(_docs.DATA / "lm_dose_curves.csv", index=False)
    figure(out["arms"], out["runs"], ROOT / "docs" / "figures" / "lm_dose_response.png")
    mt.viz.learning_curves_plot(
        out["curves"], ROOT / "docs" / "figures" / "lm_dose_curves.png",
        {"recall/eval": {"p_answer": "P(answer)", "p_the": 'P(" the")', "p_other": "P(absent city)"},
         "binding/eval": {"p_answer": "P(answer)", "p_the": 'P(" the")', "p_other": "P(other stated city)"}},
        rows={_ROW_TITLES[arm]: sorted(g["run"].unique()) for arm, g in out["runs"].groupby("arm", sort=False)})
    written = [_docs.DATA / f"lm_{x}.csv" for x in ("dose_runs", "dose_best", "dose_arms", "dose_ledger", "dose_curves")]
    _docs.record_provenance("lm_dose.py", [p for p in written if p.is_file()])
    for name, (csv, _) in _docs.DOSE_BLOCKS.items():
        if not (_docs.DATA / csv).is_file():
            print(f"--- {name}: no {csv} (its runs are not trained)")
            continue
        _docs.write_block(name)
        print(f"--- {name}\n{_docs.render(name)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
