"""Truncation curves of the linear memory: clean P(noise) and P(correct) against the number of
singular components LASER keeps (mt.Truncate("W", rank=k), through mt.sweep), next to removing
only the noise-aligned component (mt.RemoveComponents).

Three trained memories around the base configuration (N = V = 64, d = 128, Gaussian embeddings,
full-batch GD with lr = N): alpha = 0.3 after 1000 steps (noise = top spike); alpha = 0.05 after
10 steps (the noise component is near the bottom of the spectrum); alpha = 0.3 from a random
W_init of scale 30 after 1000 steps (LASER also keeps random directions).  Writes
memory_truncation_curves.png and memory_truncation_curves.csv.

    python analyses/memory_truncation_curves.py --out docs/memory
"""

from __future__ import annotations

import pandas as pd

import mechtrunc as mt
from _memory import BASE, Timer, parser, setup

CASES = {
    "alpha 0.3, 1000 steps": (dict(BASE), 1000),
    "alpha 0.05, 10 steps": (dict(BASE, alpha=0.05), 10),
    "alpha 0.3, random W_init (30), 1000 steps": (dict(BASE, init="random", init_scale=30.0), 1000),
}
RANKS = [0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128]


def main() -> None:
    args = parser(__doc__).parse_args()
    out = setup(args)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with Timer() as timer:
        rows = []
        for name, (kw, steps) in CASES.items():
            cfg = mt.MemoryConfig(**kw)
            run = mt.train_memory(cfg, steps=steps, lr=float(cfg.n_inputs), log_every=steps, spectrum_steps=[])
            model = run.model
            i = mt.memory.noise_component(mt.memory.spectrum(model))
            prompts = model.prompts()  # uniform p(x): mt.evaluate's means are the p(x)-weighted ones
            table = mt.sweep(model, prompts, [mt.Truncate("W", rank=k) for k in RANKS]
                             + [mt.RemoveComponents("W", indices=[i]), mt.RemoveComponents("W", indices=[0])])
            table["case"], table["noise_index"] = name, i
            table["variant"] = [f"LASER rank {k}" for k in RANKS] + [f"remove noise component #{i}", "remove component #0"]
            rows.append(table)
        df = pd.concat(rows, ignore_index=True)
        df.to_csv(out / "memory_truncation_curves.csv", index=False)
        fig, axes = plt.subplots(1, len(CASES), figsize=(4.6 * len(CASES), 4.3), layout="constrained")
        for ax, name in zip(axes, CASES):
            t = df[df["case"] == name]
            laser = t[t["kind"] == "truncate"].copy()
            x = laser["rank"].clip(lower=0.5)
            ax.plot(x, laser["p_noise"], "o-", color="tab:red", ms=3, label="LASER: P(noise)")
            ax.plot(x, laser["p_answer"], "o-", color="tab:blue", ms=3, label="LASER: P(correct)")
            rem = t[t["variant"].str.startswith("remove noise")].iloc[0]
            ax.axhline(rem["p_noise"], color="tab:red", ls="--", lw=1, label="remove the noise-aligned component: P(noise)")
            ax.axhline(rem["p_answer"], color="tab:blue", ls="--", lw=1, label="remove the noise-aligned component: P(correct)")
            ax.set_xscale("log")
            ax.set_xticks([0.5, 1, 4, 16, 64, 128], ["0", "1", "4", "16", "64", "128"])
            ax.set_xlabel("components kept by LASER (rank of W, of 128)")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{name} (noise-aligned: #{int(rem['noise_index'])})", fontsize=9)
        axes[0].set_ylabel("clean inputs (mean over x)")
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize=8)
        fig.suptitle("Linear memory: LASER (keep the top components) vs removing the noise-aligned component", fontsize=10)
        path = out / "memory_truncation_curves.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
    pd.set_option("display.width", 200)
    print(df[["case", "variant", "p_noise", "p_answer", "accuracy"]].round(3).to_string(index=False))
    print(f"\nwrote {path} in {timer.seconds:.1f} s")


if __name__ == "__main__":
    main()
