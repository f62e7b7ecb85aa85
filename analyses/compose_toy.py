"""Greedy composition search on the trained toy model (cpu preset): the truncations are
chosen on half of the clean test sequences and reported on the other half; the collateral
metric is the loss on the training distribution (a separate draw of noisy sequences, targets as
sampled); each step's change on the evaluation half carries a paired 95% bootstrap interval.  One search per metric (P(answer)
and the logit difference against the noise token), every keep of the paper's toy table but 1,
both FFN matrices of both layers.  Writes cpu_compose.csv (one row per step and metric).

    python analyses/compose_toy.py --model runs/demo --out docs/data
"""

from __future__ import annotations

import _common  # noqa: F401  (first: sets the reference CPU kernels before torch loads)

from pathlib import Path

import pandas as pd
import torch

from _common import load_toy, toy_parser
import mechtrunc as mt
from mechtrunc.core.metrics import bootstrap_intervals, item_metrics
from mechtrunc.studies.compose import as_interventions, compose_search

METRICS = ("p_answer", "logit_diff_noise")
KEEPS = (0.0, 0.01, 0.05, 0.1, 0.2, 0.5)


def main() -> None:
    p = toy_parser(__doc__)
    p.add_argument("--max-steps", type=int, default=3)
    p.add_argument("--budget", type=float, default=None, help="collateral budget (nats of loss); default none")
    args = p.parse_args()
    model, cfg, task, test = load_toy(args)
    prompts = test.to_prompts()
    half = prompts.n_sequences // 2
    select, evaluation = prompts.subset_sequences(slice(0, half)), prompts.subset_sequences(slice(half, None))
    # the collateral: the loss on the training distribution (noisy sequences, targets as sampled)
    reference = task.sample(cfg.test_size, seed=cfg.seed + 20_000).to_prompts(clean=False)
    full_items = item_metrics(mt.item_logits(model, evaluation), evaluation)
    frames = []
    for metric in METRICS:
        df = compose_search(model, select, evaluation, keeps=KEEPS, metric=metric, max_steps=args.max_steps,
                            collateral=reference, budget=args.budget, rule="round")
        # the change of the composition so far on the evaluation half, with a paired 95% bootstrap
        # interval (1000 resamples of the sequences: a toy sequence holds many items)
        chosen = as_interventions(df)
        # and the step's own gain over the previous step's composition, with its paired interval
        ci, prev = [], full_items[metric].double()
        for _, r in df.iterrows():
            k = int(r["step"]) if bool(r["accepted"]) else None
            if k is None or k == 0:
                ci.append((float("nan"),) * 6)
                continue
            after = item_metrics(mt.item_logits(model, evaluation, *chosen[:k]), evaluation)[metric].double()
            rows = torch.stack([after - full_items[metric].double(), after - prev])
            lo, hi = bootstrap_intervals(rows, n_boot=1000, clusters=evaluation.rows)
            ci.append((float(rows[0].mean()), float(lo[0]), float(hi[0]), float(rows[1].mean()), float(lo[1]),
                       float(hi[1])))
            prev = after
        df[["eval_change", "eval_ci_low", "eval_ci_high", "eval_step_gain", "eval_step_low", "eval_step_high"]] = \
            pd.DataFrame(ci, index=df.index)
        frames.append(df.assign(n_select=len(select), n_eval=len(evaluation)))
    table = pd.concat(frames, ignore_index=True)
    cols = ["metric", "step", "accepted", "stop", "intervention", "select_value", "select_gain", "eval_value",
            "eval_change", "eval_ci_low", "eval_ci_high", "eval_step_gain", "eval_step_low", "eval_step_high",
            "collateral_increase", "candidates", "rows_evaluated", "seconds"]
    _common.save_table(table, Path(args.out) / "cpu_compose.csv", columns=cols)


if __name__ == "__main__":
    main()
