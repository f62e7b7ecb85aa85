"""The minimal model (docs/theory.md sections 2.5-2.8): attention without an FF, the
size of the gradient signal against its noise, how the signals scale, and the FF's wiring.

Parts (``--only``; default all), each writes docs/data/theory_<part>_*.csv, one figure
docs/figures/theory_<part>.png and rewrites its generated blocks in docs/theory.md:

- ``noff``: no FF (``ff="none"``) against the parallel FF, several seeds: where the noise goes
  (W_OV's trigger->noise entry, its singular components; the index of W_OV's noise component at
  every evaluation), LASER / removal of that component on W_OV (the component chosen on a
  selection batch, ``mt.dynamics.selection_set``, the edits evaluated on held-out test sequences),
  steps to induction score 0.5 and to FF-removed accuracy 0.5 with bootstrap intervals over
  seeds, and the W_OV gradient's trigger->noise share at initialisation;
- ``signal``: equal mean signals (per-memory learning rates), Adam, a near-population W_OV
  gradient, noise injected along D_F: order of learning for each, several seeds;
- ``scaling``: mean and std of the FF and OV signals at initialisation against T, alpha, batch
  size and V, next to their closed forms;
- ``assumptions``: parallel against sequential FF, events under the default and under one same
  criterion.

    python analyses/dynamics_theory.py                 # everything (several minutes)
    python analyses/dynamics_theory.py --only scaling  # one part
    python analyses/dynamics_theory.py --replot        # redraw theory_noff.png from docs/data (no training)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import torch

import mechtrunc as mt
from mechtrunc.studies.dynamics import (
    MinimalConfig, OVNoiseRecorder, equal_signal_lr_scale, first_step, learning_events, ov_gradient_share,
    paired_seed_intervals, selection_set, signal_closed_forms, snr_sweep, train_minimal,
)
from mechtrunc.core.metrics import metrics_from_logits
from mechtrunc.core.runner import item_logits
from mechtrunc.tasks.recall import RecallTask

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _docs  # noqa: E402

PARTS = ("noff", "signal", "scaling", "assumptions")
RNG_BOOT = 2000


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _map(fn, jobs: list[tuple], args) -> list:
    """``[fn(*job) for job in jobs]``, in order, on ``args.jobs`` processes (each run is seeded
    by its own config, so the results do not depend on how many)."""
    if args.jobs <= 1 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("fork"), initializer=_init_worker,
                             initargs=(args.threads,)) as pool:
        return list(pool.map(fn, *zip(*jobs)))


def _events(h: pd.DataFrame, alpha: float) -> dict:
    out = {"step_ff_alone_noise": first_step(h, "attn_removed_p_noise", alpha / 2),
           "step_full_noise": first_step(h, "full_p_noise", alpha / 2),
           "step_icl": first_step(h, "ff_removed_accuracy", 0.5),
           "step_induction": first_step(h, "induction_score", 0.5)}
    last = h.iloc[-1]
    out.update(final_ff_noise_push=last["ff_noise_push"], final_attn_noise_push=last["attn_noise_push"],
               final_ov_trigger_noise=last["ov_trigger_noise"], final_ov_copy_mean=last["ov_copy_mean"],
               final_full_p_noise=last["full_p_noise"], final_noisy_p_noise=last["noisy_p_noise"],
               final_ff_removed_accuracy=last["ff_removed_accuracy"], final_induction=last["induction_score"])
    return out


# ----------------------------------------------------------------------------------------------
# part noff: attention without an FF
# ----------------------------------------------------------------------------------------------
#: clean sequences per seed of part noff: the held-out test set (seed + 10000) on which the edits
#: are evaluated, and the selection batch (``mt.dynamics.selection_set``) on which W_OV's noise
#: component is chosen, at every evaluation and for the removal
N_NOFF = 256


def _noff_run(seed: int, variant: str, steps: int, every: int):
    """One run of part noff: (history, summary row, where row or None, truncation rows)."""
    trunc, where = [], None
    cfg = MinimalConfig(ff="none" if variant == "no FF" else "parallel", steps=steps, eval_every=every, seed=seed)
    task = RecallTask(cfg.recall_config())
    recorder = OVNoiseRecorder(selection_set(task, N_NOFF, seed).to_prompts()) if variant == "no FF" else None
    res = train_minimal(cfg, callback=recorder)
    h = res.history.assign(variant=variant, seed=seed)
    summ = {"variant": variant, "seed": seed, "steps": steps, **_events(res.history, cfg.alpha)}
    print(variant, seed, f"{res.seconds:.1f}s", summ["step_induction"], summ["step_icl"], flush=True)
    if variant == "no FF":
        prompts = task.test_set(N_NOFF, seed=seed + 10_000).to_prompts()  # held out: only evaluates
        last = res.history.iloc[-1]
        top = int(last["ov_noise_component"])  # chosen on the selection batch, not on ``prompts``
        init = ov_gradient_share(mt.dynamics.MinimalModel(cfg), task, cfg.batch_size, 64, seed=seed)
        where = ({"seed": seed, "top_noise_component": top, "sigma_over_median": last["ov_noise_sigma_over_median"],
                  "noise_share": last["ov_noise_share"], "top1_noise_share": last["ov_top_noise_share"],
                  "top1_sigma_over_median": last["ov_top_sigma_over_median"],
                  "ov_trigger_noise": last["ov_trigger_noise"], "ov_copy_mean": last["ov_copy_mean"],
                  "init_share": init["share"], "init_share_token_rows": init["share_of_token_rows"],
                  "init_copy_share": init["copy_share"], "init_top_is_trigger_noise": init["top_entry_is_trigger_noise"]})
        ivs = {"full model": (), "W_OV keep 0.1 (rank 16)": (mt.Truncate("attn.W_O", layer=0, keep=0.1),),
               "W_OV keep 0.5 (rank 80 > rank of W_OV)": (mt.Truncate("attn.W_O", layer=0, keep=0.5),),
               "W_OV rank 1": (mt.Truncate("attn.W_O", layer=0, rank=1),),
               "W_OV noise component removed": (mt.RemoveComponents("attn.W_O", layer=0, indices=(top,)),)}
        for name, iv in ivs.items():
            m = metrics_from_logits(item_logits(res.model, prompts, *iv, batch_size=N_NOFF), prompts)
            trunc.append({"seed": seed, "variant": name, "accuracy": m["accuracy"], "p_noise": m["p_noise"],
                          "p_answer": m["p_answer"]})
    return h, summ, where, trunc


REMOVED = "W_OV noise component removed"


def removal(T: pd.DataFrame) -> pd.DataFrame:
    """Removing W_OV's noise component (chosen on the selection batch) against the full no-FF
    model, on the held-out test set: per metric the means over seeds, the paired change with its
    percentile bootstrap interval over seeds (``mt.dynamics.paired_seed_intervals``) and in how
    many seeds the metric went up / down."""
    full = T[T.variant == "full model"].set_index("seed")
    cut = T[T.variant == REMOVED].set_index("seed").loc[full.index]
    rows = []
    for metric in ("accuracy", "p_noise", "p_answer"):
        a, b = cut[metric].to_numpy(), full[metric].to_numpy()
        iv = paired_seed_intervals(a, b, n_boot=RNG_BOOT).set_index("quantity")
        rows.append({"metric": metric, "full": b.mean(), "full_low": iv.loc["b", "lo"], "full_high": iv.loc["b", "hi"],
                     "removed": a.mean(), "removed_low": iv.loc["a", "lo"], "removed_high": iv.loc["a", "hi"],
                     "change": iv.loc["a - b", "estimate"], "change_low": iv.loc["a - b", "lo"],
                     "change_high": iv.loc["a - b", "hi"], "n_up": int((a > b).sum()), "n_down": int((a < b).sum()),
                     "n_seeds": len(a), "seeds": " ".join(str(int(s)) for s in full.index),
                     "per_seed_full": " ".join(f"{v:.3f}" for v in b), "per_seed_removed": " ".join(f"{v:.3f}" for v in a),
                     "n_boot": RNG_BOOT})
    return pd.DataFrame(rows)


def speedup(S: pd.DataFrame, noff_steps: int, ff_steps: int) -> pd.DataFrame:
    """Steps to induction score 0.5 (and FF-removed accuracy 0.5) with / without the FF: means
    over seeds with percentile bootstrap intervals and the ratio's, seeds resampled jointly
    (``mt.dynamics.paired_seed_intervals``); a run without the event counts at its length
    (``noff_steps`` without the FF, ``ff_steps`` with it)."""
    rows = []
    for col, label in (("step_induction", "induction score >= 0.5"), ("step_icl", "FF-removed accuracy >= 0.5")):
        a = S[S.variant == "no FF"].set_index("seed")[col]
        b = S[S.variant == "parallel FF"].set_index("seed")[col]
        a_f, b_f = a.fillna(noff_steps), b.fillna(ff_steps)  # censored at the run's length: a lower bound
        iv = paired_seed_intervals(a_f.loc[b.index].to_numpy(), b_f.to_numpy(), n_boot=RNG_BOOT).set_index("quantity")
        rows.append({"event": label, "with_ff_mean": b_f.mean(), "with_ff_low": iv.loc["b", "lo"],
                     "with_ff_high": iv.loc["b", "hi"], "with_ff_values": " ".join("never" if v != v else f"{v:g}" for v in b),
                     "no_ff_mean": a_f.mean(), "no_ff_low": iv.loc["a", "lo"], "no_ff_high": iv.loc["a", "hi"],
                     "no_ff_values": " ".join("never" if v != v else f"{v:g}" for v in a),
                     "no_ff_censored": int(a.isna().sum()), "ratio": a_f.mean() / b_f.mean(),
                     "ratio_low": iv.loc["a / b", "lo"], "ratio_high": iv.loc["a / b", "hi"], "n_seeds": len(b),
                     "no_ff_steps": noff_steps})
    return pd.DataFrame(rows)


def part_noff(args) -> None:
    jobs = [(seed, variant, steps, every) for seed in args.seeds
            for variant, steps, every in (("no FF", args.noff_steps, 50), ("parallel FF", args.ff_steps, 20))]
    out = _map(_noff_run, jobs, args)
    H = pd.concat([o[0] for o in out])
    S = pd.DataFrame([o[1] for o in out])
    W = pd.DataFrame([o[2] for o in out if o[2] is not None])
    T = pd.DataFrame([r for o in out for r in o[3]])
    H.to_csv(args.data / "theory_noff_history.csv", index=False)
    S.to_csv(args.data / "theory_noff_summary.csv", index=False)
    T.to_csv(args.data / "theory_noff_truncation.csv", index=False)
    W.to_csv(args.data / "theory_noff_where.csv", index=False)
    speedup(S, args.noff_steps, args.ff_steps).to_csv(args.data / "theory_noff_speedup.csv", index=False)
    removal(T).to_csv(args.data / "theory_noff_removal.csv", index=False)
    noff_figure(H, args.seeds, args.figures)


def noff_figure(H: pd.DataFrame, seeds: list[int], figures: Path) -> None:
    """docs/figures/theory_noff.png from part noff's history (``theory_noff_history.csv``)."""
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    for (variant, seed), h in H.groupby(["variant", "seed"]):
        c = "C0" if variant == "no FF" else "C3"
        lab = variant if seed == seeds[0] else None
        axes[0].plot(h.step, h.induction_score, color=c, lw=1, label=lab)
        axes[1].plot(h.step, h.ov_trigger_noise, color=c, lw=1, label=f"{variant}: trigger->noise" if lab else None)
        axes[1].plot(h.step, h.ov_copy_mean, color=c, lw=1, ls="--", label=f"{variant}: mean copy entry" if lab else None)
        axes[2].plot(h.step, h.attn_noise_push, color=c, lw=1, label=f"{variant}: attention" if lab else None)
        if variant != "no FF":
            axes[2].plot(h.step, h.ff_noise_push, color="C1", lw=1, ls=":", label="parallel FF: FF" if lab else None)
        else:
            axes[3].plot(h.step, h.ov_noise_component, lw=1, marker=".", label=f"seed {seed}")
    axes[0].axhline(0.5, color="k", lw=0.5)
    axes[0].set_title("induction score (attention on the token after the trigger)", fontsize=9)
    axes[1].set_title("W_OV entries e(v) W_OV u(w)", fontsize=9)
    axes[2].set_title("push on logit(noise) - mean other logit, clean test", fontsize=9)
    axes[3].set_title("no FF: index of W_OV's noise component (0 = top), selection batch", fontsize=9)
    axes[3].yaxis.set_major_locator(MaxNLocator(integer=True))  # an index: whole numbers only
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.suptitle(f"minimal model without an FF vs with the parallel FF (T 64, alpha 0.5, batch 32, seeds {seeds})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(figures / "theory_noff.png", dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# part signal: size against noise
# ----------------------------------------------------------------------------------------------
def signal_variants(seed: int) -> dict[str, dict]:
    base = MinimalConfig(seed=seed)
    return {
        "SGD lr 2.5 (baseline)": {},
        "equal mean signals: FF lr x mean(OV)/mean(FF)": {"lr_scale": equal_signal_lr_scale(base, 64, "W_F", seed=seed)},
        "equal mean signals: OV lr x mean(FF)/mean(OV)": {"lr_scale": equal_signal_lr_scale(base, 64, "W_OV", seed=seed)},
        "Adam lr 1e-3": {"optimizer": "adam", "lr": 1e-3},
        "W_OV gradient from 512 fresh sequences": {"ov_gradient_batch": 512},
        "noise along D_F, k = 3": {"ff_grad_noise": 3.0},
        "noise along D_F, k = 10": {"ff_grad_noise": 10.0},
    }


def _signal_run(seed: int, name: str, over: dict, steps: int):
    cfg = MinimalConfig(steps=steps, eval_every=10, seed=seed, **over)
    res = train_minimal(cfg)
    summ = {"variant": name, "seed": seed, "ff_lr_scale": cfg.lr_scale.get("W_F", 1.0),
            "ov_lr_scale": cfg.lr_scale.get("W_OV", 1.0), **_events(res.history, cfg.alpha), "seconds": res.seconds}
    print(name, seed, f"{res.seconds:.1f}s", {k: summ[k] for k in ("step_ff_alone_noise", "step_full_noise",
                                                                     "step_icl", "step_induction")}, flush=True)
    return res.history.assign(variant=name, seed=seed), summ


def part_signal(args) -> None:
    jobs = [(seed, name, over, args.signal_steps) for seed in args.signal_seeds
            for name, over in signal_variants(seed).items()]
    first = sorted(range(len(jobs)), key=lambda i: "ov_gradient_batch" not in jobs[i][2])  # slowest first
    out = [None] * len(jobs)
    for i, r in zip(first, _map(_signal_run, [jobs[i] for i in first], args)):
        out[i] = r  # back in (seed, variant) order
    H, S = pd.concat([o[0] for o in out]), pd.DataFrame([o[1] for o in out])
    H.to_csv(args.data / "theory_signal_history.csv", index=False)
    S.assign(steps=args.signal_steps).to_csv(args.data / "theory_signal_summary.csv", index=False)
    names = list(dict.fromkeys(S.variant))
    fig, axes = plt.subplots(2, 4, figsize=(17, 6.5), sharex=True)
    for ax, name in zip(axes.flat, names):
        for seed, h in H[H.variant == name].groupby("seed"):
            lab = seed == args.signal_seeds[0]
            ax.plot(h.step, h.attn_removed_p_noise, color="C3", lw=1, label="FF alone: P(noise)" if lab else None)
            ax.plot(h.step, h.full_p_noise, color="C3", lw=1, ls=":", label="full: P(noise)" if lab else None)
            ax.plot(h.step, h.ff_removed_accuracy, color="C0", lw=1, label="FF removed: accuracy" if lab else None)
            ax.plot(h.step, h.induction_score, color="C7", lw=1, ls="--", label="induction score" if lab else None)
        ax.set_title(name, fontsize=8)
        ax.set_ylim(0, 1.02)
    axes[0, 0].legend(fontsize=7)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.suptitle(f"signal size vs noise: clean-test curves, seeds {args.signal_seeds}", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.figures / "theory_signal.png", dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# part scaling
# ----------------------------------------------------------------------------------------------
def part_scaling(args) -> None:
    base = MinimalConfig()
    grids = {"T": dict(seq_len=(16, 32, 64, 128)), "alpha": dict(seq_len=(None,), alpha=(0.1, 0.3, 0.5, 0.7, 0.9)),
             "batch": dict(seq_len=(None,), batch_size=(8, 32, 128)),
             "V (random chain)": dict(seq_len=(None,), vocab_size=(16, 32, 64))}
    rows = []
    for sweep, grid in grids.items():
        df = snr_sweep(base, n_batches=args.scaling_batches, seed=0, **grid)
        for key, g in df.groupby(["seq_len", "alpha", "batch_size", "vocab"], sort=False):
            T, a, B, V = key
            over = {"seq_len": int(T), "alpha": float(a)}
            if sweep.startswith("V"):
                over.update(bigrams="random", vocab_size=int(V), d_model=max(160, 2 * int(V)))
            cfg = MinimalConfig(**over)
            cf = signal_closed_forms(cfg, n_batches=args.closed_batches, batch_size=int(B), seed=1)
            g = g.set_index("memory")
            value = {"T": T, "alpha": a, "batch": B, "V (random chain)": V}[sweep]
            rows.append({"sweep": sweep, "value": value, "seq_len": T, "alpha": a, "batch_size": B, "vocab": V,
                         "ff_mean": g.loc["W_F", "mean"], "ff_std": g.loc["W_F", "std"], "ff_mean_closed": cf["ff_mean"],
                         "ff_std_closed": cf["ff_std"], "ov_mean": g.loc["W_OV", "mean"], "ov_std": g.loc["W_OV", "std"],
                         "ov_mean_closed": cf["ov_mean"], "ov_std_closed": cf["ov_std"], "n_batches": args.scaling_batches,
                         "closed_batches": args.closed_batches})
            print(sweep, value, flush=True)
    D = pd.DataFrame(rows)
    D.to_csv(args.data / "theory_scaling.csv", index=False)
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.5))
    for ax, (sweep, g) in zip(axes, D.groupby("sweep", sort=False)):
        x = g["value"].astype(float)
        ax.errorbar(x, g.ff_mean, yerr=g.ff_std, color="C3", marker="o", label="FF: mean +- std (measured)", capsize=2)
        ax.plot(x, g.ff_mean_closed, color="C3", ls=":", label="FF closed form")
        ax.errorbar(x, g.ov_mean, yerr=g.ov_std, color="C0", marker="o", label="OV: mean +- std (measured)", capsize=2)
        ax.plot(x, g.ov_mean_closed, color="C0", ls=":", label="OV per-batch closed form, averaged")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.minorticks_off()
        ax.set_xticks(list(x))
        ax.set_xticklabels([f"{v:g}" for v in x])
        ax.set_xlabel(sweep)
    axes[0].set_ylabel("signal at initialisation")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(args.figures / "theory_scaling.png", dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# part assumptions: parallel or sequential FF, one criterion
# ----------------------------------------------------------------------------------------------
def _assumption_run(seed: int, ff: str, lr: float, steps: int):
    cfg = MinimalConfig(ff=ff, lr=lr, steps=steps, eval_every=10, seed=seed)
    res = train_minimal(cfg)
    ff = f"{ff}, lr {lr:g}"
    ev = {c: learning_events(res.history, cfg.alpha, c) for c in ("default", "probability", "argmax")}
    row = {"variant": ff, "seed": seed, **_events(res.history, cfg.alpha)}
    for c, e in ev.items():
        row[f"{c}_ff"], row[f"{c}_attn"], row[f"{c}_ff_first"] = e["step_ff"], e["step_attn"], e["ff_first"]
    print(ff, seed, f"{res.seconds:.1f}s", {c: (e["step_ff"], e["step_attn"]) for c, e in ev.items()}, flush=True)
    return res.history.assign(variant=ff, seed=seed), row


def part_assumptions(args) -> None:
    jobs = [(seed, ff, lr, args.assumption_steps) for seed in args.signal_seeds
            for ff, lr in (("parallel", 2.5), ("sequential", 2.5), ("parallel", 1.0), ("sequential", 1.0))]
    out = _map(_assumption_run, jobs, args)
    H, S = pd.concat([o[0] for o in out]), pd.DataFrame([o[1] for o in out])
    H.to_csv(args.data / "theory_assumptions_history.csv", index=False)
    S.assign(steps=args.assumption_steps).to_csv(args.data / "theory_assumptions_summary.csv", index=False)
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharey=True, sharex=True)
    for ax, ff in zip(axes.flat, dict.fromkeys(H.variant)):
        for seed, h in H[H.variant == ff].groupby("seed"):
            lab = seed == args.signal_seeds[0]
            ax.plot(h.step, h.full_p_noise, color="C3", lw=1, label="full: P(noise), clean test" if lab else None)
            ax.plot(h.step, h.noisy_p_noise, color="C3", lw=1, ls=":", label="full: P(noise), noisy held-out" if lab else None)
            ax.plot(h.step, h.full_p_answer, color="C2", lw=1, label="full: P(correct)" if lab else None)
            ax.plot(h.step, h.ff_removed_accuracy, color="C0", lw=1, label="FF removed: accuracy" if lab else None)
            ax.plot(h.step, h.induction_score, color="C7", lw=1, ls="--", label="induction score" if lab else None)
        ax.set_title(f"{ff} FF", fontsize=9)
        ax.set_xlabel("step")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.figures / "theory_assumptions.png", dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="docs/data", type=Path)
    p.add_argument("--figures", default="docs/figures", type=Path)
    p.add_argument("--only", choices=PARTS, action="append", help="run only this part (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="seeds of part noff")
    p.add_argument("--noff-steps", type=int, default=1000, help="steps of the runs without an FF")
    p.add_argument("--ff-steps", type=int, default=400, help="steps of part noff's runs with the parallel FF")
    p.add_argument("--signal-seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of parts signal, assumptions")
    p.add_argument("--signal-steps", type=int, default=300)
    p.add_argument("--assumption-steps", type=int, default=600)
    p.add_argument("--scaling-batches", type=int, default=64)
    p.add_argument("--closed-batches", type=int, default=400)
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/theory.md's blocks")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--jobs", type=int, default=2, help="training runs in parallel processes (default 2: the "
                                                      "project's 2-core machine; results do not depend on it)")
    p.add_argument("--replot", action="store_true",
                   help="redraw part noff's figure from --data's theory_noff_history.csv (no training)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.data.mkdir(parents=True, exist_ok=True)
    args.figures.mkdir(parents=True, exist_ok=True)
    if args.replot:
        H = pd.read_csv(args.data / "theory_noff_history.csv")
        noff_figure(H, sorted(H["seed"].unique().tolist()), args.figures)
        return
    for part in args.only or PARTS:
        t0 = time.perf_counter()
        globals()[f"part_{part}"](args)
        print(f"part {part}: {time.perf_counter() - t0:.1f} s wall", flush=True)
        if not args.no_docs and args.data.resolve() == _docs.DATA.resolve():
            for name in _docs.THEORY_MINIMAL_BLOCKS:
                if name.startswith(f"theory-{part}") and _docs.read_block(name) is not None:
                    _docs.write_block(name)


if __name__ == "__main__":
    main()
