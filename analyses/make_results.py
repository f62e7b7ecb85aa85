"""Regenerate every toy number of ``docs/results.md`` from the current code: trains the ``cpu``
preset at seeds 0, 1, 2 (``runs/cpu-seed{S}``; seed 0 is the configuration ``make demo`` trains),
runs the toy analyses on the seed-0 model (truncation, noise components, attribution, lenses,
patching), writes their CSVs to ``docs/data`` and figures to ``docs/figures``, records this
machine's fingerprint for each CSV in ``docs/data/provenance.json`` (the numbers' last digits
depend on the CPU and torch's kernels), and rewrites the generated blocks of ``docs/results.md``
and ``docs/causal.md``.  About 4 minutes on 2 cores (most of it training).

    python analyses/make_results.py
"""

from __future__ import annotations

import _common  # noqa: F401  (first: it pins the reference kernels before torch loads)
import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402

import mechtrunc as mt  # noqa: E402
from mechtrunc.models.toy_training import toy_change_intervals  # noqa: E402
import _docs  # noqa: E402
import causal_toy  # noqa: E402
import lens_toy  # noqa: E402
import toy_attribution  # noqa: E402
import toy_heldout  # noqa: E402
import toy_noise_components  # noqa: E402
import toy_seeds_table  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs", help="where the trained runs live (default runs)")
    args = p.parse_args()
    runs = Path(args.runs)
    started = time.time()
    seeds = pd.concat([toy_seeds_table.run_seed(s, runs) for s in (0, 1, 2)], ignore_index=True)
    seeds.to_csv(_docs.DATA / "cpu_seeds_truncation.csv", index=False)

    model, cfg, task = mt.load_run(runs / "cpu-seed0")
    test = task.test_set(cfg.test_size, seed=cfg.seed + 10_000)
    mt.toy_truncation_table(model, test.to_prompts(), keeps=(0, 0.1, 0.2, 0.5, 1)).to_csv(
        _docs.DATA / "cpu_truncation.csv", index=False)
    ranking, table = toy_noise_components.compute(model, cfg, task, test)
    table.to_csv(_docs.DATA / "cpu_noise_components.csv", index=False)
    toy_attribution.compute(model, cfg, task, test).to_csv(_docs.DATA / "cpu_attribution.csv", index=False)
    toy_change_intervals(model, test.to_prompts()).assign(
        n_sequences=int(test.to_prompts().rows.unique().numel())).to_csv(_docs.DATA / "cpu_ffn_removed.csv", index=False)

    toy_heldout.compute(model, test).to_csv(_docs.DATA / "cpu_heldout.csv", index=False)
    figures = _docs.ROOT / "docs" / "figures"
    lens_toy.write(model, cfg, task, test, _docs.DATA, figures)
    causal_toy.write(model, cfg, task, _docs.DATA, figures)

    written = _docs.record_written("make_results.py", since=started)
    print(f"recorded this machine's fingerprint for {len(written)} CSVs in {_docs.PROVENANCE}")
    blocks = list(_docs.BLOCKS) + list(_docs.CAUSAL_BLOCKS) + list(_docs.README_TOY_BLOCKS)
    for name in blocks:
        _docs.write_block(name)
        print(f"--- {name}\n{_docs.render(name)}\n")
    print(f"rewrote {len(blocks)} blocks of {_docs.RESULTS}, {_docs.CAUSAL} and {_docs.README}")


if __name__ == "__main__":
    main()
