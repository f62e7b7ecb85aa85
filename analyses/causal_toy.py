"""Activation and path patching on the toy model (the cpu preset): where the in-context answer is
carried, between the clean test sequences and their corruption with the trigger's first
occurrence replaced (``mt.recall_pair``).  Writes to --data: cpu_patching.csv (every site x
layer x head x role, both directions), cpu_path_patching.csv (the previous-token head's paths
into the induction head's query, key, value and into both FFNs; both heads' paths into the
logits and the FFN L1); to --figures: cpu_patching.png.

    python analyses/causal_toy.py --model runs/demo
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from _common import load_toy, toy_parser  # first: it pins the reference kernels
import mechtrunc as mt

#: (receiver, senders) of the path-patching table
PATHS = (("logits", None), (("q", 1, 0), [(0, 0)]), (("k", 1, 0), [(0, 0)]), (("v", 1, 0), [(0, 0)]),
         (("mlp", 0), [(0, 0)]), (("mlp", 1), None))


def compute(model, cfg, task, n: int = 256) -> dict[str, pd.DataFrame]:
    clean, corrupted = mt.recall_pair(task, n=n, seed=cfg.seed + 10_000)
    scan = mt.patching_scan(model, clean, corrupted, direction="both")
    paths = pd.concat([mt.path_patching_scan(model, clean, corrupted, rec, senders=senders, direction=d)
                       for rec, senders in PATHS for d in ("noising", "denoising")], ignore_index=True)
    scan.attrs["n_pairs"] = clean.n_sequences
    return {"scan": scan, "paths": paths}


def write(model, cfg, task, data: Path, figures: Path) -> dict[str, pd.DataFrame]:
    """Compute and write the CSVs and the figure (also called by make_results.py)."""
    out = compute(model, cfg, task)
    data.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    out["scan"].to_csv(data / "cpu_patching.csv", index=False)
    out["paths"].to_csv(data / "cpu_path_patching.csv", index=False)
    mt.viz.patching_heatmap(out["scan"], figures / "cpu_patching.png",
                            title="activation patching, cpu-preset toy model (first trigger replaced)")
    return out


def main() -> None:
    args = toy_parser(__doc__, docs_outputs=True).parse_args()
    model, cfg, task, _ = load_toy(args)
    data, figures = Path(args.data), Path(args.figures)
    out = write(model, cfg, task, data, figures)
    s = out["scan"]
    print(f"{s.attrs['n_pairs']} pairs; {s.attrs['metric']}: clean {s.attrs['clean']:.3f}, corrupted "
          f"{s.attrs['corrupted']:.3f}; {len(s)} patches in {s.attrs['forwards']} forward passes")
    print(s.pivot_table(index=["direction", "site", "layer"], columns="position", values="effect",
                        dropna=False).round(3).to_string())
    print(out["paths"].round(3).to_string(index=False))
    print(f"wrote {data / 'cpu_patching.csv'}, {data / 'cpu_path_patching.csv'} and {figures / 'cpu_patching.png'}")


if __name__ == "__main__":
    main()
