"""Regenerate every toy number of ``docs/results.md`` from the current code: trains the ``cpu``
preset at seeds 0, 1, 2 (``runs/cpu-seed{S}``; seed 0 is exactly what ``make demo`` trains),
runs the toy analyses on the seed-0 model, writes their CSVs to ``docs/data`` and rewrites the
generated blocks of ``docs/results.md``.  About 4 minutes on 2 cores (most of it training).

    python analyses/make_results.py
"""

from __future__ import annotations

import os
import platform

# The reference kernels (docs/reproducibility.md): torch's AVX2 kernels on every x86-64 CPU, so
# that these numbers come out the same on AVX2 and AVX-512 machines; set before torch loads.
if platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402

import mechtrunc as mt  # noqa: E402
import _docs  # noqa: E402
import toy_attribution  # noqa: E402
import toy_noise_components  # noqa: E402
import toy_seeds_table  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs", help="where the trained runs live (default runs)")
    args = p.parse_args()
    runs = Path(args.runs)
    seeds = pd.concat([toy_seeds_table.run_seed(s, runs) for s in (0, 1, 2)], ignore_index=True)
    seeds.to_csv(_docs.DATA / "cpu_seeds_truncation.csv", index=False)

    model, cfg, task = mt.load_run(runs / "cpu-seed0")
    test = task.test_set(cfg.test_size, seed=cfg.seed + 10_000)
    mt.truncation_table(model, test.to_prompts(), keeps=(0, 0.1, 0.2, 0.5, 1)).to_csv(
        _docs.DATA / "cpu_truncation.csv", index=False)
    ranking, table = toy_noise_components.compute(model, cfg, task, test)
    table.to_csv(_docs.DATA / "cpu_noise_components.csv", index=False)
    toy_attribution.compute(model, cfg, task, test).to_csv(_docs.DATA / "cpu_attribution.csv", index=False)

    for name in _docs.BLOCKS:
        _docs.write_block(name)
        print(f"--- {name}\n{_docs.render(name)}\n")
    print(f"rewrote {len(_docs.BLOCKS)} blocks of {_docs.RESULTS}")


if __name__ == "__main__":
    main()
