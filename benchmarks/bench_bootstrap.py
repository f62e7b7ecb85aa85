"""Cost of held-out selection with paired bootstrap intervals against a plain truncation study.

On a random Pythia-shaped GPT-NeoX (default the 70m shape: 6 layers, d 512, vocabulary 50304)
booted as a TransformerLens bridge, with IOI prompts (Pythia's tokenizer, shipped in the
package), the whole grid (every layer x ``mlp.W_in``/``mlp.W_out`` x 6 keeps):

- ``study``: ``truncation_study(model, prompts, ...)`` (the grid engine, means only);
- ``heldout``: ``mechtrunc.analysis.selection.heldout_selection(model, prompts, truncations,
  n_boot=1000)``: one engine pass that also keeps the per-item values, the template-grouped
  split, the choice on the select part and the paired bootstrap intervals of both parts;
- ``bootstrap``: the part of ``heldout`` after the forward passes (the choice and the
  intervals, ``attrs["seconds_bootstrap"]``), and, for reference, the paired intervals of
  *every* configuration of the grid at once (``bootstrap_intervals`` on ``[configs, items]``).

Target: ``heldout`` within 1.10x ``study`` (the intervals add at most 10%).

    python benchmarks/bench_bootstrap.py --threads 1
    python benchmarks/bench_bootstrap.py --n-layers 2 --n 100 --repeats 2 --warmup 0   # quick
    python benchmarks/bench_bootstrap.py --device cuda --shape 160m --n 400
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import base_parser, machine_line, median, print_table, result, setup, timed

TARGET = 1.10
KEEPS = (1.0, 0.5, 0.2, 0.1, 0.05, 0.01)
MATRICES = ("mlp.W_in", "mlp.W_out")


def main() -> None:
    p = base_parser(__doc__, default_threads=1, repeats=3, warmup=1)
    p.add_argument("--shape", default="70m", help="Pythia size of the random model")
    p.add_argument("--n-layers", type=int, default=None, help="override the shape's number of layers")
    p.add_argument("--n", type=int, default=200, help="IOI prompts")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    args = p.parse_args()
    device = setup(args)
    import mechtrunc as mt
    from mechtrunc.core.metrics import bootstrap_intervals
    from mechtrunc.models.hf import load_model, tokenizer_dir
    from mechtrunc.analysis.selection import heldout_selection, item_table
    from mechtrunc.studies import truncation_study
    from mechtrunc.models.testing import build_random_pythia

    with tempfile.TemporaryDirectory() as tmp:
        path = build_random_pythia(args.shape, tokenizer_dir=tokenizer_dir(cache_dir=Path(tmp) / "tok"),
                                   out_dir=Path(tmp) / "model", seed=args.seed, n_layers=args.n_layers)
        model = load_model(path, device=str(device), local_files_only=True)
        prompts = mt.ioi_prompts(model.tokenizer, n=args.n, seed=args.seed)
        n_layers = model.cfg.n_layers
        truncs = [mt.Truncate(m, layer=l, keep=k) for l in range(n_layers) for m in MATRICES for k in KEEPS]
        study = lambda: truncation_study(model, prompts, matrices=MATRICES, keeps=KEEPS, progress=False)
        held = {}
        heldout = lambda: held.__setitem__("df", heldout_selection(model, prompts, truncs, n_boot=args.n_boot,
                                                                   seed=args.seed))
        for _ in range(args.warmup):
            study()
            heldout()
        t_study, t_held, t_boot, t_grid_boot = [], [], [], []
        items = item_table(model, prompts, truncs, metrics=["p_answer"])
        wide = torch.tensor(items.pivot(index="config", columns="item", values="p_answer").to_numpy())
        for _ in range(args.repeats):
            t_study.append(timed(study, device))
            t_held.append(timed(heldout, device))
            t_boot.append(held["df"].attrs["seconds_bootstrap"])
            t0 = time.perf_counter()
            bootstrap_intervals(wide[1:] - wide[:1], n_boot=args.n_boot, seed=args.seed)
            t_grid_boot.append(time.perf_counter() - t0)
    df = held["df"]
    print(machine_line(device))
    print(f"random pythia-{args.shape} ({n_layers} layers), {len(prompts)} IOI prompts, {len(truncs)} configurations "
          f"({len(MATRICES)} matrices x {len(KEEPS)} keeps x {n_layers} layers), n_boot {args.n_boot}, "
          f"split groups {df.attrs['groups']!r}, repeats {args.repeats} (median)")
    s = median(t_study)
    print_table(["run", "seconds", "ratio to the study"], [
        ["study: truncation_study (means only)", f"{s:.3f}", "1.000"],
        ["heldout: heldout_selection (items, split, choice, intervals)", f"{median(t_held):.3f}",
         f"{median(t_held) / s:.3f}"],
        ["  of which choice + paired intervals of both parts", f"{median(t_boot):.4f}", f"{median(t_boot) / s:.4f}"],
        [f"paired intervals of all {len(truncs)} configurations at once", f"{median(t_grid_boot):.4f}",
         f"{median(t_grid_boot) / s:.4f}"],
    ])
    print(df[["part", "intervention", "full", "truncated", "change", "ci_low", "ci_high", "n_items"]].to_string())
    ratio = median(t_held) / s
    result("bootstrap", ratio, f"<={TARGET}", ratio <= TARGET, args.check)


if __name__ == "__main__":
    sys.exit(main())
