"""The toy truncation table of the ``cpu`` preset at several seeds (rank rule ``authors``, 256
clean test sequences), to compare with the released model.  Trains each seed
into ``RUNS/cpu-seed{S}`` (resumable; an existing run is reused) and writes
``cpu_seeds_truncation.csv``.

    python analyses/toy_seeds_table.py --seeds 0 1 2 --out docs/data
"""

from __future__ import annotations

import _common  # first: it pins the reference kernels before torch loads
import argparse
from pathlib import Path

import pandas as pd

import mechtrunc as mt


def seed_table(model, cfg, task, seed: int) -> pd.DataFrame:
    """The six-row table (keep 0.1) of one trained cpu-preset model."""
    prompts = task.test_set(cfg.test_size, seed=cfg.seed + 10_000).to_prompts()
    table = mt.toy_truncation_table(model, prompts, rule="authors", keeps=(0.1,))
    table = table[table["variant"] != "attn.W_O L1 keep 0.1"]
    return table.assign(seed=seed)[["seed", "variant", "accuracy", "p_noise", "p_answer"]]


def run_seed(seed: int, runs: Path) -> pd.DataFrame:
    out = runs / f"cpu-seed{seed}"
    if not (out / "model.safetensors").exists():
        mt.train(mt.preset("cpu", seed=seed), out_dir=out, progress=False)
    return seed_table(*mt.load_run(out), seed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", default="runs", help="where the trained runs live (default runs)")
    p.add_argument("--out", default="runs/analyses", help="output directory for the CSV")
    args = p.parse_args()
    table = pd.concat([run_seed(s, Path(args.runs)) for s in args.seeds], ignore_index=True)
    _common.save_table(table, Path(args.out) / "cpu_seeds_truncation.csv", digits=3)


if __name__ == "__main__":
    main()
