"""The language-model study of issue 15 (docs/lm.md, section "The study"), end to end.

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
import json
import sys
from pathlib import Path

import pandas as pd

import _docs
import mechtrunc as mt
from mechtrunc.lm import corpus_preset, lm_preset, lm_tokenizer, train_lm
from mechtrunc.studies import lm as S

#: (corpus preset, layers, seed, steps): three seeds of the study model, the "rare the" control,
#: depths 2 and 8, and the study model trained three times longer (9,000 steps)
RUNS = [("default", 4, 0, 3000), ("default", 4, 1, 3000), ("default", 4, 2, 3000), ("rare_the", 4, 0, 3000),
        ("default", 2, 0, 3000), ("default", 8, 0, 3000), ("default", 4, 0, 9000)]
N_PROMPTS = 200
KEEPS = (0.0, 0.05, 0.1, 0.2, 0.5)
#: the loss budget of the chosen truncation: at most this rise of the held-out corpus loss (nats)
LOSS_BUDGET = 0.1


def run_name(corpus: str, layers: int, seed: int, steps: int) -> str:
    return f"{corpus}-L{layers}-s{seed}" + (f"-{steps}steps" if steps != 3000 else "")


def run_config(corpus: str, layers: int, seed: int, steps: int):
    return lm_preset("small", n_layers=layers, seed=seed, steps=steps, corpus=corpus_preset(corpus, seed=seed))


def _cached(path: Path, compute) -> pd.DataFrame:
    if path.is_file():
        return pd.read_csv(path)
    df = compute()
    tmp = path.with_suffix(".tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(path)
    return df


def study_run(runs: Path, spec) -> dict[str, pd.DataFrame]:
    """Every table of one run (computed once, then read from ``NAME/study/``)."""
    corpus, layers, seed, n_steps = spec
    cfg = run_config(*spec)
    run = runs / run_name(*spec)
    train_lm(cfg, run, progress=False)
    out = run / "study"
    out.mkdir(exist_ok=True)
    tok = lm_tokenizer()
    prompts = S.lm_study_prompts(tok, cfg.corpus, n=N_PROMPTS, seed=0)
    curves = _cached(out / "curves.csv", lambda: S.learning_curves(run, prompts))
    steps = S.learning_steps(curves, the_threshold=cfg.corpus.to_the_share / 2)
    tokens = S.corpus_tokens(cfg.corpus, ctx=cfg.ctx)
    tables = {"curves": curves}
    best_rows, grids = [], []
    for when, step in (("final", cfg.steps), ("competition", int(steps["step_competition"]))):
        model = mt.pythia.load_model(run / f"step{step}", local_files_only=True)
        grid = _cached(out / f"grid_{when}.csv", lambda: S.truncation_grid(model, prompts, tokens, keeps=KEEPS))
        grids.append(grid.assign(checkpoint=when, step=step))
        for task in ("ioi", "factual"):
            row = S.choose_truncation(grid, task, max_loss_increase=LOSS_BUDGET)
            chosen = {k: row[k] for k in ("baseline", "layer", "matrix", "keep", "select_gain", "loss_increase")}
            change = (_cached(out / f"best_{when}_{task}.csv", lambda: S.paired_change(
                model, prompts[f"{task}/eval"], mt.studies.as_truncate(row)))
                      if not row["baseline"] else pd.DataFrame())
            best_rows.append(change.assign(checkpoint=when, step=step, task=task, **chosen))
            if when == "final" and task == "ioi":
                tables["attribution"] = _cached(out / "attribution.csv", lambda: mt.attribute_change(
                    model, prompts["ioi/eval"], mt.studies.as_truncate(row)) if not row["baseline"] else pd.DataFrame())
        if when == "final":
            tables["where"] = _cached(out / "where_the.csv",
                                      lambda: S.where_the_lives(model, prompts["generic/eval"], prompts["ioi/eval"]))
    tables["grid"] = pd.concat(grids, ignore_index=True)
    tables["best"] = pd.concat(best_rows, ignore_index=True)
    summary = {"run": run_name(*spec), "corpus": corpus, "layers": layers, "seed": seed, "steps": n_steps, **steps,
               **{k: v for k, v in json.loads((run / "summary.json").read_text()).items()
                  if k in ("seconds", "tokens_per_second", "final_loss", "parameters")}}
    tables["summary"] = pd.DataFrame([summary])
    return tables


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/lm", help="where the runs live (default runs/lm)")
    p.add_argument("--lane", default=None, help="K/N: only train runs K, K+N, K+2N, ... (no tables written)")
    args = p.parse_args(argv)
    runs = Path(args.runs)
    if args.lane is not None:
        k, n = (int(x) for x in args.lane.split("/"))
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
    per_run["default-L4-s0"]["attribution"].to_csv(_docs.DATA / "lm_attribution_default_L4_s0.csv", index=False)
    print(cat("summary").to_string())


if __name__ == "__main__":
    sys.exit(main())
