"""The language-model study (docs/lm.md, section "The study"), end to end.

Trains (or resumes) every run of :data:`RUNS` with the ``small`` preset into ``RUNS_DIR/NAME``
(``NAME = CORPUS-L{layers}-s{seed}``; the seed sets both the initialisation and the corpus
stream), measures each run with :mod:`mechtrunc.studies.lm` (cached per run in
``RUNS_DIR/NAME/study/``, so an interrupted study loses no finished run), writes the tables of
``docs/data/lm_*.csv``, the figures ``docs/figures/lm_*.png`` and the generated blocks of
``docs/lm.md``.  Training is the cost: about 15 minutes of one core per 4-layer run; run two
copies with ``--lane 0/2`` and ``--lane 1/2`` to use two cores, then once without ``--lane``.

    python analyses/lm_study.py                 # everything (trains what is missing)
    python analyses/lm_study.py --lane 0/2      # only train every other run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

import _docs
import mechtrunc as mt
from mechtrunc.models.lm import corpus_preset, lm_preset, train_lm
from mechtrunc.studies import lm as S

ROOT = Path(__file__).resolve().parents[1]

#: (corpus preset, layers, seed, steps): three seeds of the study model, the "rare the" control,
#: depths 2 and 8, and the study model trained three times longer (9,000 steps)
RUNS = [("default", 4, 0, 3000), ("default", 4, 1, 3000), ("default", 4, 2, 3000), ("rare_the", 4, 0, 3000),
        ("default", 2, 0, 3000), ("default", 8, 0, 3000), ("default", 4, 0, 9000)]
N_PROMPTS = 200
#: the loss budget of the chosen truncation: at most this rise of the held-out corpus loss (nats)
LOSS_BUDGET = 0.1


def run_name(corpus: str, layers: int, seed: int, steps: int) -> str:
    return f"{corpus}-L{layers}-s{seed}" + (f"-{steps}steps" if steps != 3000 else "")


def run_config(corpus: str, layers: int, seed: int, steps: int):
    return lm_preset("small", n_layers=layers, seed=seed, steps=steps, corpus=corpus_preset(corpus, seed=seed))


def study_run(runs: Path, spec) -> dict[str, pd.DataFrame]:
    """Train (or resume) one run, then measure it (cached in ``NAME/study/``)."""
    run = runs / run_name(*spec)
    train_lm(run_config(*spec), run, progress=False)
    tables = S.study_run(run, n_prompts=N_PROMPTS, keeps=S.STUDY_KEEPS, loss_budget=LOSS_BUDGET)
    tables["summary"] = tables["summary"].assign(corpus=spec[0])
    return tables


def lane(text: str) -> tuple[int, int]:
    """``--lane K/N`` of the language-model analyses (train every N-th run from the K-th)."""
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--lane must be K/N with integers, e.g. 0/2; got {text!r}") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"--lane K/N needs 0 <= K < N, got {text!r}")
    return k, n


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/lm", help="where the runs live (default runs/lm)")
    p.add_argument("--lane", default=None, type=lane,
                   help="K/N (0 <= K < N): only train runs K, K+N, K+2N, ... (no tables written)")
    args = p.parse_args(argv)
    runs = Path(args.runs)
    if args.lane is not None:
        k, n = args.lane
        for spec in RUNS[k::n]:
            print(train_lm(run_config(*spec), runs / run_name(*spec), progress=False), flush=True)
        return
    per_run = {run_name(*spec): study_run(runs, spec) for spec in RUNS}
    cat = lambda key: pd.concat([t[key].assign(run=name) for name, t in per_run.items() if not t[key].empty],
                                ignore_index=True)
    cat("summary").to_csv(_docs.DATA / "lm_summary.csv", index=False)
    cat("curves").to_csv(_docs.DATA / "lm_curves.csv", index=False)
    cat("best").to_csv(_docs.DATA / "lm_best_truncation.csv", index=False)
    cat("where").to_csv(_docs.DATA / "lm_where_the.csv", index=False)
    cat("grid").to_csv(_docs.DATA / "lm_grid.csv", index=False)
    per_run[run_name(*RUNS[-1])]["attribution"].to_csv(_docs.DATA / "lm_attribution.csv", index=False)
    heldout_names_probe(runs / run_name(*RUNS[-1])).to_csv(_docs.DATA / "lm_heldout_names.csv", index=False)
    figures(cat("curves"), cat("grid"))
    for name in [*_docs.LM_BLOCKS, *_docs.README_LM_BLOCKS]:
        _docs.write_block(name)
        print(f"--- {name}\n{_docs.render(name)}\n")


def heldout_names_probe(run: Path) -> pd.DataFrame:
    """IOI at the run's final checkpoint with training names and with held-out names (the model
    never saw the latter as targets): why the study's prompts do not hold names out."""
    from mechtrunc.models.lm import lm_ioi_prompts, lm_tokenizer

    steps = S.run_steps(run)
    model = mt.hf.load_model(run / f"step{steps[-1]}", local_files_only=True)
    tok = lm_tokenizer()
    rows = []
    for split in ("heldout", "heldout_names"):
        r = mt.evaluate(model, lm_ioi_prompts(tok, n=N_PROMPTS, seed=1, split=split)).iloc[0]
        rows.append({"run": run.name, "step": steps[-1], "split": split,
                     **{k: float(r[k]) for k in ("p_answer", "p_subject", "p_the", "acc_vs_subject")}})
    return pd.DataFrame(rows)


def figures(curves: pd.DataFrame, grid: pd.DataFrame) -> None:
    fig = ROOT / "docs" / "figures"
    rows = {"4 layers, seeds 0-2": ["default-L4-s0", "default-L4-s1", "default-L4-s2"],
            "4 layers, 9,000 steps": ["default-L4-s0-9000steps"], 'control: rare " the"': ["rare_the-L4-s0"],
            "2 layers": ["default-L2-s0"], "8 layers": ["default-L8-s0"]}
    panels = {"ioi/eval": {"p_answer": "P(IO)", "p_subject": "P(S)", "p_the": 'P(" the")'},
              "factual/eval": {"p_answer": "P(answer)", "p_the": 'P(" the")'},
              "generic/eval": {"p_answer": 'P(" the") after " to"', "p_name": "P(a name)"}}
    mt.viz.learning_curves_plot(curves, fig / "lm_learning_curves.png", panels, rows=rows)
    final = grid[(grid["run"] == "default-L4-s0-9000steps") & (grid["checkpoint"] == "final")
                 & (grid["prompts"] == "ioi/eval")]
    for metric in ("p_answer", "p_the"):
        mt.viz.truncation_heatmap(final, metric, fig / f"lm_truncation_{metric}.png", higher_is_better=metric != "p_the",
                                  title=f"{metric} on held-out IOI prompts, 4 layers, 9,000 steps")


if __name__ == "__main__":
    sys.exit(main())
