"""Order of learning in the minimal in-context model (mechtrunc.studies.dynamics): P(noise) and
P(correct) of the full model, accuracy and P(correct) of the model with its FF removed (the
in-context answer), the induction score, and the gradient signal of each memory along training.
Writes dynamics_minimal_history.csv and dynamics_minimal.png.

    python analyses/dynamics_minimal.py --out runs/analyses
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import torch

import mechtrunc as mt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/analyses", help="output directory")
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p.add_argument("--alpha", type=float, default=0.5, help="noise probability (default 0.5)")
    p.add_argument("--seq-len", type=int, default=64, help="sequence length (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: these models are small, one thread is fastest)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cfg = mt.dynamics.MinimalConfig(alpha=args.alpha, seq_len=args.seq_len, steps=args.steps, lr=2.5,
                                    eval_every=10, seed=args.seed)
    res = mt.dynamics.train_minimal(cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    h = res.history
    h.to_csv(out / "dynamics_minimal_history.csv", index=False)
    o = res.order

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(h["step"], h["full_p_noise"], color="C3", label="full model: P(noise)")
    ax1.plot(h["step"], h["noisy_p_noise"], color="C3", ls=":", label="full model: P(noise), noisy (training) sequences")
    ax1.plot(h["step"], h["full_p_answer"], color="C2", label="full model: P(correct)")
    ax1.plot(h["step"], h["ff_removed_accuracy"], color="C0", label="FF removed: accuracy (in-context)")
    ax1.plot(h["step"], h["ff_removed_p_answer"], color="C0", ls="--", label="FF removed: P(correct)")
    ax1.plot(h["step"], h["induction_score"], color="C7", ls=":", label="attention on token after trigger")
    for s, c, name in ((o["step_noise"], "C3", "P(noise) >= alpha/2"), (o["step_icl"], "C0", "in-context acc >= 0.5")):
        if s == s:
            ax1.axvline(s, color=c, lw=0.8, alpha=0.6)
            ax1.text(s, 1.02, f"{name}\nstep {s:g}", color=c, fontsize=7, ha="center", va="bottom")
    ax1.set_xlabel("step"); ax1.set_ylim(0, 1.15); ax1.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, 0.92))
    ax1.set_title(f"minimal model, clean test (alpha={cfg.alpha}, T={cfg.seq_len})", fontsize=9, pad=22)
    steps = h["step"][1:]
    for name, c in (("W_F", "C3"), ("W_OV", "C0"), ("W_KQ", "C1")):
        ax2.plot(steps, h[f"signal_{name}"][1:], color=c, lw=1, label=f"signal {name} (step batch)")
    ax2.axhline(0, color="k", lw=0.5)
    ax2.set_yscale("symlog", linthresh=1e-2)
    ax2.set_xlabel("step"); ax2.set_ylabel("-<grad, D> (unit direction)")
    ax2.set_title("gradient signal along each memory's direction", fontsize=9)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "dynamics_minimal.png", dpi=120)
    print(json.dumps(o))
    print(h[["step", "full_p_noise", "noisy_p_noise", "full_p_answer", "ff_removed_accuracy", "ff_removed_p_answer",
             "induction_score"]].iloc[::5].round(3).to_string(index=False))
    print(f"wrote {out / 'dynamics_minimal.png'} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
