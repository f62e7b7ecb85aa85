"""The toy headline under held-out selection: the FFN L1 truncation (W_in or W_out,
keeps 0 = removed, 0.01, 0.05, 0.1, 0.2, 0.5) is chosen by P(correct) on half of the 256 clean
test sequences and reported on the other half, with 95% paired bootstrap intervals of the change
against the full model (2000 resamples of the sequences), for three split seeds.  Writes
cpu_heldout.csv to --out.

    python analyses/toy_heldout.py --model runs/demo --out docs/data
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from _common import load_toy, save_table, toy_parser  # first: it pins the reference kernels
import mechtrunc as mt

KEEPS = (0.0, 0.01, 0.05, 0.1, 0.2, 0.5)
SEEDS = (0, 1, 2)


def compute(model, test) -> pd.DataFrame:
    prompts = test.to_prompts()
    grid = [mt.Truncate(m, layer=1, keep=k) for m in ("mlp.W_in", "mlp.W_out") for k in KEEPS]
    tables = []
    for seed in SEEDS:
        t = mt.selection.heldout_selection(model, prompts, grid, metric="p_answer", seed=seed, n_boot=2000)
        tables.append(t.assign(split_seed=seed))
    return pd.concat(tables, ignore_index=True)


def main() -> None:
    p = toy_parser(__doc__)
    args = p.parse_args()
    model, _, _, test = load_toy(args)
    df = compute(model, test)
    save_table(df, Path(args.out) / "cpu_heldout.csv")


if __name__ == "__main__":
    main()
