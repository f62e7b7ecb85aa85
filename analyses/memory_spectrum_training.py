"""Singular values of the linear memory's W over training, the noise-aligned component
highlighted, with P(noise) and P(correct) on clean inputs over the same steps.

Three runs of full-batch gradient descent (lr = N) around the base configuration (N = V = 64,
d = 128, Gaussian embeddings): alpha = 0.3 from W = 0; alpha = 0.05 from W = 0 (the noise
association starts at the bottom of the spectrum, below the correct associations); alpha = 0.3 from a random W_init of
scale 30, shown for W and for W - W_init.  Writes memory_spectrum_training.png and
memory_spectrum_training.csv (the spectra: step, run, matrix, component, singular value,
alignments, see mechtrunc.models.memory.spectrum; the top 16 components and the noise-aligned one).

    python analyses/memory_spectrum_training.py --out docs/memory
"""

from __future__ import annotations

import numpy as np
import pandas as pd

import mechtrunc as mt
from _memory import BASE, Timer, parser, setup

STEPS = 1000
SPEC_STEPS = sorted({0, *np.unique(np.geomspace(1, STEPS, 28).round().astype(int)).tolist()})
RUNS = {
    "alpha 0.3, W_init = 0": dict(BASE),
    "alpha 0.05, W_init = 0": dict(BASE, alpha=0.05),
    "alpha 0.3, random W_init (scale 30)": dict(BASE, init="random", init_scale=30.0),
}
N_SHOWN = 16


def main() -> None:
    args = parser(__doc__).parse_args()
    out = setup(args)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with Timer() as timer:
        spectra, histories = [], []
        for name, kw in RUNS.items():
            cfg = mt.MemoryConfig(**kw)
            run = mt.train_memory(cfg, steps=STEPS, lr=float(cfg.n_inputs), log_every=1, spectrum_steps=SPEC_STEPS)
            spectra.append(run.spectra.assign(run=name))
            histories.append(run.history.assign(run=name))
        spectra, history = pd.concat(spectra, ignore_index=True), pd.concat(histories, ignore_index=True)
        noise_rows = spectra.groupby(["run", "step", "matrix"])["align_noise"].idxmax()
        small = spectra[(spectra["component"] < N_SHOWN) | spectra.index.isin(noise_rows)]
        small.to_csv(out / "memory_spectrum_training.csv", index=False, float_format="%.6g")
        panels = [(name, "W") for name in RUNS] + [(list(RUNS)[-1], "W - W_init")]
        fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7.2), sharex=True,
                                 gridspec_kw={"height_ratios": [2.2, 1]}, layout="constrained")
        for j, (name, matrix) in enumerate(panels):
            ax = axes[0, j]
            s = spectra[(spectra["run"] == name) & (spectra["matrix"] == matrix) & (spectra["step"] > 0)]
            wide = s.pivot(index="step", columns="component", values="singular_value")
            for c in range(N_SHOWN):
                ax.plot(wide.index, wide[c], color="0.6", lw=0.8, label="singular values (top 16)" if c == 0 else None)
            best = s.loc[s.groupby("step")["align_noise"].idxmax()]
            sc = ax.scatter(best["step"], best["singular_value"], c=best["align_noise"], cmap="Reds", vmin=0, vmax=1,
                            edgecolor="k", lw=0.4, s=28, zorder=3, label="most noise-aligned component")
            changes = best[best["component"].ne(best["component"].shift())]  # label where the index changes
            for _, r in changes.head(4).iterrows():
                ax.annotate(f"#{int(r['component'])}", (r["step"], r["singular_value"]), textcoords="offset points",
                            xytext=(-4, 7), fontsize=8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{name}\n{matrix}", fontsize=9)
            ax.tick_params(labelbottom=True)
            if j == 0:
                ax.set_ylabel("singular value")
                ax.legend(fontsize=7, loc="lower right")
            ax.text(0.02, 0.98, "#k: index of the most\nnoise-aligned component", transform=ax.transAxes,
                    fontsize=7, va="top", color="0.3") if j == 1 else None
            h = history[history["run"] == name]
            ax2 = axes[1, j]
            ax2.plot(h["step"].clip(lower=1), h["p_noise"], color="tab:red", label="P(noise)")
            ax2.plot(h["step"].clip(lower=1), h["p_answer"], color="tab:blue", label="P(correct)")
            ax2.axhline(RUNS[name]["alpha"], color="tab:red", ls=":", lw=0.8)
            ax2.set_xlabel("GD step (lr = N)")
            ax2.set_ylim(0, 1)
            if j == 0:
                ax2.set_ylabel("clean inputs")
                ax2.legend(fontsize=7)
        fig.colorbar(sc, ax=axes[0, -1], shrink=0.9, label="alignment of #k with the noise direction")
        fig.suptitle("Linear associative memory (N = V = 64, d = 128): where the noise association sits in W's spectrum",
                     fontsize=10)
        path = out / "memory_spectrum_training.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
    for name in RUNS:
        s = mt.memory.spectrum_summary(spectra[spectra["run"] == name].drop(columns="run"))
        s = s[s["step"].isin([1, 10, 31, 100, 1000])]
        print(name)
        print(s[["step", "matrix", "noise_index", "noise_align", "noise_sv", "top_sv", "gap", "location"]].round(3).to_string(index=False))
    print(f"\nwrote {path} in {timer.seconds:.1f} s")


if __name__ == "__main__":
    main()
