"""The toy Transformer without its feed-forward layers, cpu preset.

Trains, per seed, three variants of the two-layer toy Transformer with
``mt.dynamics.SnapshotRecorder`` (induction score of the L1 head and the trainable weights at
every evaluation):

- ``full``: both FFNs (the cpu preset itself);
- ``attn_only``: no FFN at all (``ffn="none"``), the clean answer to "where does the noise go
  when there is no FFN";
- ``no_last_ffn``: only the last FFN (layer 1, 0-based; the one that holds the noise in ``full``) removed.

Then measures, from the snapshots: each residual term's direct push on logit(noise) - mean of
the other logits at repeated triggers (``mt.dynamics.residual_attributions``), where the noise
sits in each attention layer's ``W_V`` / ``W_O`` / ``OV`` spectra
(``mt.dynamics.attention_component_attributions``), what LASER and removing the noise
component do to recall in the no-FFN models, and how much sooner the induction head forms with
the FFNs, with bootstrap intervals over seeds (``mt.dynamics.seed_interval`` /
``paired_seed_intervals``).  Finished runs are cached under ``--runs`` (an interrupted
invocation loses no finished run).  Writes ``docs/data/theory_toy_*.csv``,
``docs/figures/theory_toy_*.png`` and the generated blocks of ``docs/theory.md``.

    python analyses/dynamics_toy_attention.py                 # 5 seeds x 3 variants
    # one seed, two variants, outside docs/ (no intervals):
    python analyses/dynamics_toy_attention.py --seeds 1 --variants full attn_only --runs /tmp/cheap --data /tmp/cheap --figures /tmp/cheap --doc ''
"""

from __future__ import annotations

import _common  # noqa: F401  (first: it pins the reference kernels before torch loads)
import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import mechtrunc as mt  # noqa: E402
from mechtrunc.tasks.recall import RecallTask  # noqa: E402
from mechtrunc.models.toy import ToyTransformer  # noqa: E402

#: variant -> FFN kind per layer
VARIANTS = {"full": ["relu", "relu"], "attn_only": ["none", "none"], "no_last_ffn": ["relu", "none"]}
#: a configuration small enough for the tests (seconds)
TINY = dict(d_model=16, seq_len=32, batch_size=16, test_size=32)


def config(variant: str, seed: int, args) -> mt.TrainConfig:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    extra = TINY if args.tiny else {}
    return mt.preset("cpu", steps=args.steps, eval_every=args.eval_every, seed=seed, ffn=VARIANTS[variant],
                     threads=args.threads, **extra)


def run_dir(variant: str, seed: int, args) -> Path:
    tag = f"steps{args.steps}_every{args.eval_every}" + ("_tiny" if args.tiny else "")
    return Path(args.runs) / "theory_toy" / tag / f"{variant}_seed{seed}"


def train_or_load(variant: str, seed: int, args) -> dict:
    """One run: history (with ``induction_score``), snapshots, config, initial model and test
    batch; trained once and cached in :func:`run_dir` (``done`` written last)."""
    cfg = config(variant, seed, args)
    d = run_dir(variant, seed, args)
    task = RecallTask(cfg.recall_config())
    test = task.test_set(cfg.test_size, seed=cfg.seed + 10_000)  # the test set of mt.train
    init = ToyTransformer(cfg.model_config()).eval()
    if not (d / "done").exists():
        t0 = time.perf_counter()
        rec = mt.dynamics.SnapshotRecorder(test, layer=cfg.n_layers - 1)
        res = mt.train(cfg, progress=False, callback=rec)
        d.mkdir(parents=True, exist_ok=True)
        res.history.to_csv(d / "history.csv", index=False)
        torch.save(rec.snapshots, d / "snapshots.pt")
        (d / "done").write_text(json.dumps({"seconds": time.perf_counter() - t0}))
        print(f"trained {variant} seed {seed} in {time.perf_counter() - t0:.0f} s", flush=True)
    history = pd.read_csv(d / "history.csv")
    snaps = torch.load(d / "snapshots.pt", weights_only=True)
    return {"variant": variant, "seed": seed, "cfg": cfg, "history": history, "snapshots": snaps,
            "init": init, "test": test, "seconds": json.loads((d / "done").read_text())["seconds"]}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="docs/data", help="directory for the CSV files")
    p.add_argument("--figures", default="docs/figures", help="directory for the PNG files")
    p.add_argument("--doc", default="docs/theory.md", help="page whose generated blocks are rewritten ('' = none)")
    p.add_argument("--runs", default="runs", help="cache of finished training runs (default runs/)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="default: all three (full, attn_only, no_last_ffn)")
    p.add_argument("--steps", type=int, default=1000, help="training steps (default 1000, the cpu preset)")
    p.add_argument("--eval-every", type=int, default=25, help="evaluation / snapshot interval (default 25)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--tiny", action="store_true", help="a tiny model (d 16, T 32) for tests")
    p.add_argument("--train-only", action="store_true", help="only train (fill the cache) and stop")
    return p


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    runs = [train_or_load(v, s, args) for v in args.variants for s in args.seeds]
    if args.train_only:
        print(f"trained/loaded {len(runs)} runs in {time.perf_counter() - t0:.0f} s")
        return
    analyse(runs, args)
    print(f"done in {time.perf_counter() - t0:.0f} s")


#: evaluations shown in the "early" table (those that exist in a run are used)
EARLY_STEPS = (25, 50, 75, 100, 150, 200, 300, 500, 1000)
#: steps at which the L1 OV gradient is measured (0 = initialisation)
GRADIENT_STEPS = (0, 25, 50, 100, 200, 500, 1000)
KEEPS = (0.1, 0.5)
TERMS = {"embed": "token embedding", "pos_embed": "positional embedding", "attn.0": "attention L0",
         "attn.1": "attention L1", "mlp.0": "FFN L0", "mlp.1": "FFN L1"}
MATRICES = ("attn.W_V", "attn.W_O", "attn.OV")


def measure_snapshots(run) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Residual pushes, attention-component summaries (every snapshot) and the full attention
    component table at the last snapshot, for one run."""
    pushes, summaries, last = [], [], None
    n_layers = run["cfg"].n_layers
    d_head = run["init"].cfg.d_head
    steps = sorted(run["snapshots"])
    for step in steps:
        model = mt.dynamics.SnapshotRecorder.model_at(run["init"], run["snapshots"][step])
        pushes.append(mt.dynamics.residual_attributions(model, run["test"]).assign(step=step))
        if not (step in EARLY_STEPS or step % 100 == 0 or step == steps[-1]):
            continue  # spectra at the early steps and every 100 steps (they cost more)
        comp = pd.concat([mt.dynamics.attention_component_attributions(model, run["test"], layer, init=run["init"])
                          for layer in range(n_layers)], ignore_index=True).assign(step=step)
        summaries.append(mt.dynamics.noise_component_summary(comp, keep=0.1, d_model=d_head))
        if step == steps[-1]:
            last = comp
    tag = {"variant": run["variant"], "seed": run["seed"]}
    return (pd.concat(pushes, ignore_index=True).assign(**tag), pd.concat(summaries, ignore_index=True).assign(**tag),
            last.assign(**tag))


def interval_row(values, **keys) -> dict:
    v = np.asarray(values, dtype=float)
    n_nan = int(np.isnan(v).sum())
    if n_nan or v.size == 0:
        return {**keys, "n": v.size, "n_missing": n_nan, "estimate": float("nan"), "lo": float("nan"), "hi": float("nan")}
    ci = mt.dynamics.seed_interval(v) if v.size > 1 else {"mean": float(v[0]), "lo": float("nan"), "hi": float("nan")}
    return {**keys, "n": v.size, "n_missing": 0, "estimate": ci["mean"], "lo": ci["lo"], "hi": ci["hi"]}


def where_table(push: pd.DataFrame, summ: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """At the last step: each residual term's noise push (mean over seeds, interval) and its
    share of the total; and per (variant, layer, matrix) of W where the noise component sits."""
    last = push[push["step"] == push.groupby(["variant", "seed"])["step"].transform("max")]
    rows = []
    for (variant, term), g in last.groupby(["variant", "term"], sort=False):
        tot = last[last["variant"] == variant].groupby("seed")["noise_attr"].sum()
        g = g.set_index("seed")
        rows.append(interval_row(g["noise_attr"], variant=variant, term=term, quantity="noise push"))
        rows.append(interval_row(g["noise_attr"] / tot.loc[g.index], variant=variant, term=term, quantity="share of noise push"))
        rows.append(interval_row(g["correct_attr"], variant=variant, term=term, quantity="correct push"))
    where = pd.DataFrame(rows)
    s = summ[(summ["which"] == "W") & (summ["step"] == summ.groupby(["variant", "seed"])["step"].transform("max"))]
    rows = []
    for (variant, layer, matrix), g in s.groupby(["variant", "layer", "matrix"], sort=True):
        g = g.sort_values("seed")
        row = {"variant": variant, "layer": int(layer), "matrix": matrix,
               "noise_component": "/".join(str(int(c)) for c in g["noise_component"])}
        for col in ("noise_sv_over_median", "noise_share", "noise_total", "noise_kept", "correct_kept"):
            r = interval_row(g[col])
            row.update({col: r["estimate"], f"{col}_lo": r["lo"], f"{col}_hi": r["hi"]})
        rows.append(row)
    return where, pd.DataFrame(rows)


def intervention_table(runs, variant: str) -> pd.DataFrame:
    """LASER (keep 0.1, 0.5; the authors' rank rule) and removal of the noise-carrying singular
    component of each attention layer's W_V / W_O / OV, on the final models of ``variant``.
    The removed component is chosen on a separate batch (`mt.dynamics.selection_set`: seed + 20000),
    not the test set."""
    per = []
    for run in (r for r in runs if r["variant"] == variant):
        model = mt.dynamics.SnapshotRecorder.model_at(run["init"], run["snapshots"][max(run["snapshots"])])
        cfg = run["cfg"]
        prompts = run["test"].to_prompts()
        select = mt.dynamics.selection_set(RecallTask(cfg.recall_config()), cfg.test_size, cfg.seed)
        ivs = {"none": []}
        for layer in range(cfg.n_layers):
            comp = mt.dynamics.attention_component_attributions(model, select, layer)
            for m in MATRICES:
                for keep in KEEPS:
                    ivs[f"{m} L{layer} keep {keep:g}"] = [mt.Truncate(m, layer=layer, keep=keep, rule="authors")]
                c = comp[comp["matrix"] == m]
                idx = int(c.loc[c["noise_attr"].idxmax(), "component"])
                ivs[f"{m} L{layer} remove noise component"] = [mt.RemoveComponents(m, layer=layer, indices=(idx,))]
        for name, iv in ivs.items():
            row = mt.evaluate(model, prompts, *iv, label=name).iloc[0]
            per.append({"variant": variant, "seed": run["seed"], "intervention": name,
                        **{k: float(row[k]) for k in ("accuracy", "p_noise", "p_answer")}})
    per = pd.DataFrame(per)
    rows = []
    base = per[per["intervention"] == "none"].set_index("seed")
    for name, g in per.groupby("intervention", sort=False):
        g = g.set_index("seed").loc[base.index]
        for metric in ("accuracy", "p_noise", "p_answer"):
            r = interval_row(g[metric])
            row = {"variant": variant, "intervention": name, "metric": metric, "estimate": r["estimate"],
                   "lo": r["lo"], "hi": r["hi"], "n": r["n"]}
            if name != "none" and len(g) > 1:
                d = mt.dynamics.paired_seed_intervals(g[metric].to_numpy(), base[metric].to_numpy()).set_index("quantity")
                row.update({"change": d.loc["a - b", "estimate"], "change_lo": d.loc["a - b", "lo"],
                            "change_hi": d.loc["a - b", "hi"]})
            else:
                row.update({"change": float(g[metric].mean() - base[metric].mean()), "change_lo": float("nan"),
                            "change_hi": float("nan")})
            rows.append(row)
    return per, pd.DataFrame(rows)


#: per variant: the accuracy column of the in-context answer (the FFN-removed model where the
#: FFN L1 exists, else the model itself)
ICL_COLUMN = {"full": "last_ffn_removed_accuracy", "attn_only": "full_accuracy", "no_last_ffn": "full_accuracy"}


def _steps_str(x) -> str:
    return "/".join("never" if np.isnan(v) else f"{v:g}" for v in x)


def speed_table(runs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Steps to induction score 0.5, to in-context accuracy 0.5 and to P(noise) >= alpha / 2,
    per run; and per variant != full the paired (by seed) comparison with ``full``: means, the
    difference and the ratio of the means with bootstrap intervals over seeds, on two bases:
    ``complete`` (seeds where both runs crossed the threshold) and ``never = horizon`` (a run
    that never crossed counts as its last step: a lower bound on its step)."""
    per = []
    for run in runs:
        h, alpha = run["history"], run["cfg"].alpha
        per.append({"variant": run["variant"], "seed": run["seed"], "horizon": int(h["step"].max()),
                    "induction_0.5": mt.dynamics.first_step(h, "induction_score", 0.5),
                    "icl_accuracy_0.5": mt.dynamics.first_step(h, ICL_COLUMN[run["variant"]], 0.5),
                    "p_noise_half_alpha": mt.dynamics.first_step(h, "full_p_noise", alpha / 2)})
    per = pd.DataFrame(per)
    rows = []
    if "full" not in set(per["variant"]):
        return per, pd.DataFrame(rows)
    base = per[per["variant"] == "full"].set_index("seed")
    for variant in [v for v in dict.fromkeys(per["variant"]) if v != "full"]:
        g = per[per["variant"] == variant].set_index("seed")
        seeds = sorted(set(g.index) & set(base.index))
        for event in ("induction_0.5", "icl_accuracy_0.5", "p_noise_half_alpha"):
            a, b = g.loc[seeds, event].to_numpy(), base.loc[seeds, event].to_numpy()
            info = {"variant": variant, "event": event, "per_seed_a": _steps_str(a), "per_seed_b": _steps_str(b),
                    "never_a": int(np.isnan(a).sum()), "never_b": int(np.isnan(b).sum())}
            ok = ~(np.isnan(a) | np.isnan(b))
            bases = {"complete": (a[ok], b[ok])}
            if not ok.all():
                bases["never = horizon"] = (np.where(np.isnan(a), g.loc[seeds, "horizon"], a),
                                            np.where(np.isnan(b), base.loc[seeds, "horizon"], b))
            for basis, (x, y) in bases.items():
                if len(x) >= 2:
                    d = mt.dynamics.paired_seed_intervals(x, y)
                else:
                    d = pd.DataFrame([{"quantity": q, "estimate": e, "lo": np.nan, "hi": np.nan} for q, e in
                                      (("a", x.mean() if len(x) else np.nan), ("b", y.mean() if len(y) else np.nan),
                                       ("a - b", (x - y).mean() if len(x) else np.nan),
                                       ("a / b", x.mean() / y.mean() if len(x) else np.nan))])
                for _, r in d.iterrows():
                    rows.append({**info, "basis": basis, "n": len(x), "quantity": r["quantity"],
                                 "estimate": r["estimate"], "lo": r["lo"], "hi": r["hi"]})
    return per, pd.DataFrame(rows)


def gradient_table(runs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The L1 OV gradient on a fixed training batch (256 sequences, noisy targets) at
    initialisation and at :data:`GRADIENT_STEPS` (``mt.dynamics.ov_gradient_noise``), per run;
    and mean [interval] over seeds per (variant, step, quantity)."""
    per = []
    for run in runs:
        cfg = run["cfg"]
        probe = RecallTask(cfg.recall_config()).sample(256, seed=cfg.seed + 30_000)
        have = sorted(run["snapshots"])
        steps = [0] + [s for s in GRADIENT_STEPS if s in have] + ([have[-1]] if have[-1] not in GRADIENT_STEPS else [])
        for step in steps:
            model = run["init"] if step == 0 else mt.dynamics.SnapshotRecorder.model_at(run["init"], run["snapshots"][step])
            g = mt.dynamics.ov_gradient_noise(model, probe, layer=cfg.n_layers - 1)
            per.append({"variant": run["variant"], "seed": run["seed"], "step": step, **g})
    per = pd.DataFrame(per)
    rows = []
    for (variant, step), g in per.groupby(["variant", "step"], sort=False):
        for q in ("noise_entry_fraction", "noise_push_rate", "ov_grad_norm"):
            rows.append(interval_row(g.sort_values("seed")[q], variant=variant, step=int(step), quantity=q))
    return per, pd.DataFrame(rows)


@torch.no_grad()
def attention_targets(runs) -> pd.DataFrame:
    """Where each head looks from the repeated triggers of the clean test set at the last step:
    attention mass on earlier occurrences of the same token (the query itself included), on
    the positions right after them (the induction score), on the query itself, on the
    previous position.  One row per (variant, seed, layer)."""
    import torch.nn.functional as F

    rows = []
    for run in runs:
        model = mt.dynamics.SnapshotRecorder.model_at(run["init"], run["snapshots"][max(run["snapshots"])])
        b = run["test"]
        _, cache = model.run_with_cache(b.inputs)
        r, p = b.loss_mask.nonzero(as_tuple=True)
        same = (b.inputs[r] == b.inputs[r, p][:, None]).float()
        masks = {"same_token": same, "after_same_token": F.pad(same[:, :-1], (1, 0)),
                 "self": F.one_hot(p, b.inputs.shape[1]).float(), "previous": F.one_hot(p - 1, b.inputs.shape[1]).float()}
        for layer in range(run["cfg"].n_layers):
            pat = cache[mt.adapt(model).hook_name("pattern", layer)][r, 0, p]
            rows.append({"variant": run["variant"], "seed": run["seed"], "layer": layer,
                         **{k: float((pat * m).sum(1).mean()) for k, m in masks.items()}})
    return pd.DataFrame(rows)


def early_table(push: pd.DataFrame, summ: pd.DataFrame) -> pd.DataFrame:
    """With vs without the FFNs, at early evaluations: the L1 head's direct noise push, its
    share of the model's, the model's, and the push of the learned part of the head's OV
    (OV - OV_init, under the current attention pattern)."""
    rows = []
    ov = summ[(summ["matrix"] == "attn.OV") & (summ["layer"] == summ["layer"].max())]
    for variant in dict.fromkeys(push["variant"]):
        have = sorted(set(summ.loc[summ["variant"] == variant, "step"]))
        steps = [s for s in EARLY_STEPS if s in have] or have  # (all steps for short runs)
        for step in steps:
            p = push[(push["variant"] == variant) & (push["step"] == step)]
            last_attn = f"attn.{summ['layer'].max()}"
            tot = p.groupby("seed")["noise_attr"].sum()
            a = p[p["term"] == last_attn].set_index("seed")["noise_attr"]
            o = ov[(ov["variant"] == variant) & (ov["step"] == step) & (ov["which"] == "W - W_init")].set_index("seed")
            last = summ["layer"].max()
            for quantity, vals in ((f"attention L{last} noise push", a),
                                   (f"attention L{last} share of noise push", a / tot.loc[a.index]),
                                   ("model noise push", tot),
                                   (f"attn.OV L{last} - OV_init noise push", o["noise_total"])):
                rows.append(interval_row(vals.sort_index(), variant=variant, step=step, quantity=quantity))
    return pd.DataFrame(rows)


def run_d_head(runs) -> int:
    return int(runs[0]["init"].cfg.d_head)


def figures(runs, push: pd.DataFrame, last_comp: pd.DataFrame, fig_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"full": "C0", "attn_only": "C3", "no_last_ffn": "C2"}
    labels = {"full": "with FFNs (cpu preset)", "attn_only": "attention only", "no_last_ffn": "FFN L1 removed"}
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.2))
    ax = axes[0]
    for run in runs:
        h = run["history"]
        ax.plot(h["step"], h["induction_score"], color=colors[run["variant"]], lw=0.9, alpha=0.8,
                label=labels[run["variant"]] if run["seed"] == min(r["seed"] for r in runs) else None)
    ax.axhline(0.5, color="0.5", lw=0.6, ls=":")
    ax.set_xlabel("step"); ax.set_ylabel("induction score (L1 head)"); ax.legend(fontsize=7)
    ax.set_title("induction head formation (one line per seed)", fontsize=9)
    ax = axes[1]
    for run in runs:
        h = run["history"]
        ax.plot(h["step"], h["full_p_noise"], color=colors[run["variant"]], lw=0.9, alpha=0.8)
        ax.plot(h["step"], h[ICL_COLUMN[run["variant"]]], color=colors[run["variant"]], lw=0.9, ls="--", alpha=0.8)
    ax.set_xlabel("step"); ax.set_ylim(0, 1)
    ax.set_title("solid: P(noise) of the model; dashed: in-context accuracy\n(FFN-removed for 'with FFNs')", fontsize=9)
    ax = axes[2]
    m = push.groupby(["variant", "step", "term"])["noise_attr"].mean().reset_index()
    styles = {"embed": ":", "pos_embed": (0, (1, 3)), "attn.0": "--", "attn.1": "-", "mlp.0": "-.", "mlp.1": (0, (5, 1, 1, 1))}
    for (variant, term), g in m.groupby(["variant", "term"]):
        if term == "pos_embed" or (term == "embed" and variant != "full"):  # (embeddings are frozen: the same in all)
            continue
        ax.plot(g["step"], g["noise_attr"], color=colors[variant], ls=styles[term], lw=1.1,
                label=f"{labels[variant]}: {TERMS[term]}")
    ax.set_xlabel("step"); ax.set_ylabel("direct push on logit(noise) - mean other")
    ax.set_title("where the noise push comes from (mean over seeds)", fontsize=9)
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    out = [fig_dir / "theory_toy_dynamics.png"]
    fig.savefig(out[0], dpi=110)
    plt.close(fig)

    c = last_comp[(last_comp["variant"] == "attn_only") & (last_comp["which"] == "W") & (last_comp["matrix"] == "attn.OV")]
    if len(c):
        seeds, layers = sorted(c["seed"].unique()), sorted(c["layer"].unique())
        fig, axes = plt.subplots(len(layers), len(seeds), figsize=(3.3 * len(seeds), 3.0 * len(layers)), squeeze=False)
        for i, layer in enumerate(layers):
            for j, seed in enumerate(seeds):
                ax = axes[i, j]
                g = c[(c["layer"] == layer) & (c["seed"] == seed)].sort_values("component")
                g = g[g["component"] < 40]
                ax.bar(g["component"], g["noise_attr"], color="C3", width=0.8)
                ax2 = ax.twinx()
                ax2.plot(g["component"], g["singular_value"], color="0.3", lw=1)
                ax2.tick_params(labelsize=7)
                ax.tick_params(labelsize=7)
                ax.axvline(int(0.1 * run_d_head(runs)) - 0.5, color="C0", ls=":", lw=0.8)
                ax.set_title(f"seed {seed}: L{layer} OV", fontsize=8)
                if j == 0:
                    ax.set_ylabel("noise push (bars)", fontsize=8)
                if j == len(seeds) - 1:
                    ax2.set_ylabel("singular value (line)", fontsize=8)
                if i == len(layers) - 1:
                    ax.set_xlabel("component (0 = largest)", fontsize=8)
        fig.suptitle("attention-only models, final step: each OV component's noise push (first 40 components; "
                     "dotted: LASER keep 0.1)", fontsize=9)
        fig.tight_layout()
        out.append(fig_dir / "theory_toy_spectra.png")
        fig.savefig(out[-1], dpi=110)
        plt.close(fig)
    return out


def analyse(runs, args) -> None:
    data, fig_dir = Path(args.data), Path(args.figures)
    data.mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    measured = [measure_snapshots(r) for r in runs]
    push = pd.concat([m[0] for m in measured], ignore_index=True)
    summ = pd.concat([m[1] for m in measured], ignore_index=True)
    last_comp = pd.concat([m[2] for m in measured], ignore_index=True)
    print(f"measured {sum(len(r['snapshots']) for r in runs)} snapshots in {time.perf_counter() - t0:.0f} s", flush=True)
    hist = pd.concat([r["history"].assign(variant=r["variant"], seed=r["seed"]) for r in runs], ignore_index=True)
    hist.to_csv(data / "theory_toy_history.csv", index=False)
    push.to_csv(data / "theory_toy_push.csv", index=False)
    summ.to_csv(data / "theory_toy_components.csv", index=False)
    where, where_comp = where_table(push, summ)
    where.to_csv(data / "theory_toy_where.csv", index=False)
    where_comp.to_csv(data / "theory_toy_where_components.csv", index=False)
    inter_per, inter = [], []
    for variant in [v for v in ("attn_only", "no_last_ffn") if v in args.variants]:
        p, t = intervention_table(runs, variant)
        inter_per.append(p); inter.append(t)
    if inter:
        pd.concat(inter_per).to_csv(data / "theory_toy_interventions_per_seed.csv", index=False)
        pd.concat(inter).to_csv(data / "theory_toy_interventions.csv", index=False)
    speed_per, speed = speed_table(runs)
    speed_per.to_csv(data / "theory_toy_speed_per_seed.csv", index=False)
    speed.to_csv(data / "theory_toy_speed.csv", index=False)
    early = early_table(push, summ)
    early.to_csv(data / "theory_toy_early.csv", index=False)
    targets = attention_targets(runs)
    targets.to_csv(data / "theory_toy_attention_targets.csv", index=False)
    grad_per, grad = gradient_table(runs)
    grad_per.to_csv(data / "theory_toy_ov_gradient_per_seed.csv", index=False)
    grad.to_csv(data / "theory_toy_ov_gradient.csv", index=False)
    paths = figures(runs, push, last_comp, fig_dir)
    if args.doc:
        import _docs

        for name, (csv, _) in _docs.THEORY_TOY_BLOCKS.items():
            if (data / csv).exists() and Path(args.doc).resolve() == _docs.THEORY.resolve() and data.resolve() == _docs.DATA.resolve():
                _docs.write_block(name)
    print(json.dumps({"seconds_training": {f"{r['variant']}_seed{r['seed']}": round(r["seconds"], 1) for r in runs}}))
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_rows", 200):
        print(where.round(3).to_string(index=False))
        print(where_comp.round(3).to_string(index=False))
        if inter:
            print(pd.concat(inter).round(3).to_string(index=False))
        print(speed_per.to_string(index=False))
        print(speed.round(3).to_string(index=False))
        print(early.round(3).to_string(index=False))
        print(grad.round(3).to_string(index=False))
        print(targets.round(3).to_string(index=False))
    print("wrote", ", ".join(map(str, paths)))


if __name__ == "__main__":
    main()
