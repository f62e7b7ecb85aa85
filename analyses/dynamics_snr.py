"""Gradient signal-to-noise ratio of each memory of the minimal model at initialisation (every
memory zero), over independent batches: versus sequence length T, batch size, alpha and
vocabulary size; plus W_KQ's SNR once W_OV copies (``state="copy_ov"``); each with the
directional SNR (along the memory's direction) and the full-gradient SNR.  Writes dynamics_snr.csv,
dynamics_snr.png and dynamics_snr_intervals.csv (the base point, 64 batches, 95% bootstrap
intervals over the batches).

    python analyses/dynamics_snr.py --out runs/analyses
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--n-batches", type=int, default=16, help="independent batches per point (default 16)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: these models are small, one thread is fastest)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    base = mt.dynamics.MinimalConfig(seq_len=64, batch_size=32)
    n = args.n_batches
    parts = {
        "seq_len": mt.dynamics.snr_sweep(base, seq_len=(16, 32, 64, 128), n_batches=n),
        "seq_len (W_OV copies)": mt.dynamics.snr_sweep(base, seq_len=(16, 32, 64, 128), n_batches=n, state="copy_ov"),
        "batch_size": mt.dynamics.snr_sweep(base, seq_len=(64,), batch_size=(8, 32, 128), n_batches=n),
        "alpha": mt.dynamics.snr_sweep(base, seq_len=(64,), alpha=(0.1, 0.3, 0.5, 0.7, 0.9), n_batches=n),
        "vocab": mt.dynamics.snr_sweep(base, seq_len=(64,), vocab_size=(16, 32, 64, 128), n_batches=n),
    }
    table = pd.concat([df.assign(sweep=k) for k, df in parts.items()], ignore_index=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "dynamics_snr.csv", index=False)
    # the base point with 64 batches and bootstrap intervals over them (directional and full SNR)
    model = mt.dynamics.MinimalModel(base)
    task = mt.RecallTask(base.recall_config())
    ci = mt.dynamics.gradient_snr(model, task, base.batch_size, n_batches=64, seed=0, n_boot=1000)
    ci.to_csv(out / "dynamics_snr_intervals.csv", index=False)

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    colors = {"W_F": "C3", "W_OV": "C0", "W_KQ": "C1"}
    panels = [("seq_len", "seq_len", "T (sequence length)"), ("batch_size", "batch_size", "batch size"),
              ("alpha", "alpha", "alpha"), ("vocab", "vocab", "vocabulary (random Markov chain)")]
    for ax, (sweep, col, xlabel) in zip(axes, panels):
        d = table[table["sweep"] == sweep]
        for mem in ("W_F", "W_OV"):
            dm = d[d["memory"] == mem]
            ax.plot(dm[col], dm["snr"], "o-", color=colors[mem], label=f"{mem} at init")
        if sweep == "seq_len":
            dk = table[(table["sweep"] == "seq_len (W_OV copies)") & (table["memory"] == "W_KQ")]
            ax.plot(dk[col], dk["snr"], "s--", color=colors["W_KQ"], label="W_KQ once W_OV copies")
        if col != "alpha":
            ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel); ax.set_ylabel("SNR = mean / std over batches")
        ax.axhline(0, color="k", lw=0.5)
        ax.legend(fontsize=7)
    fig.suptitle("gradient signal-to-noise along each memory's direction (minimal model; base: T 64, batch 32, "
                 "alpha 0.5, Shakespeare 65 tokens)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "dynamics_snr.png", dpi=120)
    show = table[["sweep", "memory", "seq_len", "batch_size", "alpha", "vocab", "mean", "std", "snr"]]
    print(show[show["memory"] != "W_KQ"].round(4).to_string(index=False))
    print(show[(show["memory"] == "W_KQ") & (show["sweep"] == "seq_len (W_OV copies)")].round(4).to_string(index=False))
    print(ci[["memory", "snr", "snr_low", "snr_high", "full_snr", "full_snr_low", "full_snr_high"]].round(3)
          .to_string(index=False))
    print(f"wrote {out / 'dynamics_snr.png'} and {out / 'dynamics_snr_intervals.csv'} in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
