"""Training dynamics of the two-layer toy Transformer (cpu preset): when the FFN L1 picks up
the noise association (P(noise) of the full vs the FFN-removed model), when the induction head
forms (attention L1 on the token after the trigger's earlier occurrences, clean test
sequences), and where the noise-carrying singular components of L1 W_in / W_out sit in
their spectra over training (W and W - W_init).  Trains with
``mt.dynamics.train_toy_with_dynamics`` and writes
dynamics_toy_history.csv, dynamics_toy_spectra.csv, dynamics_toy_summary.csv,
dynamics_toy.png and dynamics_toy_spectra.png.

"Noise-carrying": a component's direct contribution to logit(noise) - mean logit of the other
tokens at repeated triggers of the clean test set (``mt.dynamics.component_attributions``).

    python analyses/dynamics_toy.py --out runs/analyses
    python analyses/dynamics_toy.py --out docs/figures --replot   # redraw the figures from the CSVs
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

import torch

import mechtrunc as mt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/analyses", help="output directory")
    p.add_argument("--steps", type=int, default=1000, help="training steps of the cpu preset (default 1000)")
    p.add_argument("--eval-every", type=int, default=50, help="evaluation / snapshot interval (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: these models are small, one thread is fastest)")
    p.add_argument("--replot", action="store_true",
                   help="only redraw the two figures from the CSVs already in --out (no training)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cfg = mt.preset("cpu", steps=args.steps, eval_every=args.eval_every, seed=args.seed)
    out = Path(args.out)
    if args.replot:
        from mechtrunc.core.results import read_table

        order = plot(read_table(out / "dynamics_toy_history.csv"), read_table(out / "dynamics_toy_spectra.csv"), cfg, out)
        print(f"redrew {out / 'dynamics_toy.png'} and {out / 'dynamics_toy_spectra.png'} ({json.dumps(order)})")
        return
    res, spectra = mt.dynamics.train_toy_with_dynamics(cfg)
    out.mkdir(parents=True, exist_ok=True)
    h = res.history
    h.to_csv(out / "dynamics_toy_history.csv", index=False)
    spectra.to_csv(out / "dynamics_toy_spectra.csv", index=False)
    summary = mt.dynamics.noise_component_summary(spectra, keep=0.1, d_model=cfg.d_model)
    summary.to_csv(out / "dynamics_toy_summary.csv", index=False)
    order = plot(h, spectra, cfg, out)
    induction = mt.dynamics.first_step(h, "induction_score", 0.5)

    print(json.dumps({**order, "step_induction_0.5": induction}))
    print(h[["step", "full_p_noise", "last_ffn_removed_p_noise", "last_ffn_removed_accuracy", "induction_score",
             "win_noise_component", "wout_noise_component"]].round(3).to_string(index=False))
    print(summary.round(3).to_string(index=False))
    print(f"wrote {out / 'dynamics_toy.png'}, {out / 'dynamics_toy_spectra.png'} in {time.perf_counter() - t0:.1f} s")


def plot(h: pd.DataFrame, spectra: pd.DataFrame, cfg, out: Path) -> dict:
    """The two figures of a run's history and spectra (layers 0-based); returns the order of learning."""
    order = mt.dynamics.order_of_learning(h, cfg.alpha, icl_column="last_ffn_removed_accuracy")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot(h["step"], h["full_p_noise"], color="C3", label="full: P(noise)")
    ax.plot(h["step"], h["full_p_answer"], color="C2", label="full: P(correct)")
    ax.plot(h["step"], h["last_ffn_removed_p_noise"], color="C3", ls="--", label="FFN L1 removed: P(noise)")
    ax.plot(h["step"], h["last_ffn_removed_accuracy"], color="C0", label="FFN L1 removed: accuracy")
    ax.plot(h["step"], h["induction_score"], color="C7", ls=":", label="attention L1 on token after trigger")
    for s, c, name in ((order["step_noise"], "C3", "P(noise) >= alpha/2"), (order["step_icl"], "C0", "FFN-removed acc >= 0.5")):
        if s == s:
            ax.axvline(s, color=c, lw=0.8, alpha=0.6)
            ax.text(s, 1.02, f"{name}\nstep {s:g}", color=c, fontsize=7, ha="center", va="bottom")
    ax.set_ylim(0, 1.15); ax.set_xlabel("step"); ax.legend(fontsize=7, loc="center right")
    ax.set_title(f"toy Transformer, cpu preset (alpha {cfg.alpha}), clean test", fontsize=9, pad=22)
    fig.tight_layout()
    fig.savefig(out / "dynamics_toy.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for (i, m), (j, which) in [((i, m), (j, w)) for i, m in enumerate(("mlp.W_in", "mlp.W_out"))
                                for j, w in enumerate(("W", "W - W_init"))]:
        ax = axes[i, j]
        d = spectra[(spectra["matrix"] == m) & (spectra["which"] == which)]
        wide = d.pivot(index="step", columns="component", values="singular_value")
        for c in wide.columns:
            # dark: the components LASER keeps at keep 0.1 (int(0.1 d_model)); light: the rest
            ax.plot(wide.index, wide[c], color="0.75" if c >= int(0.1 * cfg.d_model) else "0.3", lw=0.6)
        top = d.loc[d.groupby("step")["noise_attr"].idxmax()]
        sc = ax.scatter(top["step"], top["singular_value"], c=top["noise_attr"] / d.groupby("step")["noise_attr"].sum().values,
                        cmap="Reds", vmin=0, vmax=1, s=18, zorder=3, edgecolor="k", lw=0.3)
        for st, comp, sv in zip(top["step"].iloc[::4], top["component"].iloc[::4], top["singular_value"].iloc[::4]):
            ax.annotate(str(int(comp)), (st, sv), fontsize=6, xytext=(2, 3), textcoords="offset points")
        ax.set_title(f"L1 {m} ({which}); dot: top noise component", fontsize=8)
        ax.set_yscale("log")
        if i == 1:
            ax.set_xlabel("step")
    fig.colorbar(sc, ax=axes, shrink=0.6, label="dot's share of the total noise attribution")
    fig.savefig(out / "dynamics_toy_spectra.png", dpi=120)
    plt.close(fig)
    return order


if __name__ == "__main__":
    main()
