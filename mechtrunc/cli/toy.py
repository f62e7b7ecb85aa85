"""``mechtrunc demo`` and ``mechtrunc toy train|eval``: the paper's two-layer toy Transformer
(:mod:`mechtrunc.models.toy_training`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mechtrunc import _choices
from mechtrunc.cli.checks import (
    choice, device, fraction, int_at_least, nonneg_int, positive_float, positive_int, run_dir_arg,
)
from mechtrunc.core.results import LAST_FFN_REMOVED, VARIANT_METRICS

__all__ = ["add_commands", "format_table", "format_band_table"]


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="cpu", type=choice(_choices.PRESETS, "preset"),
                   help=f"training preset: {', '.join(_choices.PRESETS)} (default cpu)")
    p.add_argument("--alpha", type=fraction, help="noise probability after a trigger, in [0, 1]")
    p.add_argument("--k", type=positive_int, help="number of triggers")
    p.add_argument("--seq-len", type=int_at_least(2), help="sequence length T (>= 2)")
    p.add_argument("--d-model", type=positive_int, help="model width")
    p.add_argument("--steps", type=positive_int, help="training iterations")
    p.add_argument("--batch-size", type=positive_int, help="sequences per step")
    p.add_argument("--lr", type=positive_float, help="learning rate")
    p.add_argument("--optimizer", type=choice(_choices.OPTIMIZERS, "optimizer"),
                   help=f"{', '.join(_choices.OPTIMIZERS)} (torch.optim.SGD with the preset's momentum, Adam, AdamW; "
                        "default: the preset's)")
    p.add_argument("--eval-every", type=positive_int, help="evaluate every N steps")
    p.add_argument("--seed", type=nonneg_int, help="random seed (model, data)")
    p.add_argument("--init", choices=_choices.INITS,
                   help="toy-model initialisation: released (the authors' code, default) or normal_unembed (W_U ~ N(0, 1/d))")
    p.add_argument("--device", type=device, help="torch device, e.g. cpu or cuda")
    p.add_argument("--precision", choices=_choices.PRECISIONS, help="matmul precision (GPU)")


def _train_config(args):
    from mechtrunc.models.toy_training import preset

    return preset(
        args.preset, alpha=args.alpha, k=args.k, seq_len=args.seq_len, d_model=args.d_model,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        eval_every=args.eval_every, seed=args.seed, device=args.device, precision=args.precision,
        init=args.init,
    )


def format_table(final: dict) -> str:
    """``{variant: {accuracy, p_noise, p_answer}}`` (:data:`~mechtrunc.core.results.VARIANT_METRICS`) as
    a text table, one line per variant."""
    lines = [f"{'variant':<18}{'accuracy':>10}{'P(noise)':>10}{'P(answer)':>12}"]
    for name, m in final.items():
        lines.append(f"{name:<18}{m['accuracy']:>10.3f}{m['p_noise']:>10.3f}{m['p_answer']:>12.3f}")
    return "\n".join(lines)


def format_band_table(final: dict) -> str:
    """``final`` (as :func:`format_table`) with, under each variant, the band over seeds that
    :data:`mechtrunc.core.reference.CPU_PRESET_BANDS` states for it (``-`` where none), and a last line
    naming every number outside its band."""
    from mechtrunc.core.reference import band, in_band

    lines = [f"{'variant':<18}{'accuracy':>12}{'P(noise)':>12}{'P(answer)':>12}"]
    outside = []
    for name, m in final.items():
        lines.append(f"{name:<18}" + "".join(f"{m[k]:>12.3f}" for k in VARIANT_METRICS))
        cells = []
        for k in VARIANT_METRICS:
            b = band(name, k)
            cells.append("-" if b is None else f"{b[0]:.2f}-{b[1]:.2f}")
            if in_band(m[k], name, k) is False:
                outside.append(f"{name} {k} {m[k]:.3f} (band {b[0]:.2f}-{b[1]:.2f})")
        lines.append(f"{'  band':<18}" + "".join(f"{c:>12}" for c in cells))
    lines.append("outside its band: " + "; ".join(outside) if outside else "every number is inside its band")
    return "\n".join(lines)


def cmd_toy_train(args) -> int:
    from mechtrunc.models.toy_training import KeepCheckpoints, train

    cfg = _train_config(args)
    keep = KeepCheckpoints(Path(args.out) / "checkpoints", cfg) if args.keep_checkpoints else None
    result = train(cfg, out_dir=args.out, progress=not args.no_progress, extend=args.extend, callback=keep)
    if result.already_finished:
        print(f"already finished: {args.out} holds the finished {cfg.preset} preset run ({cfg.steps} steps); "
              "nothing was trained or written (train it on with --steps N --extend)")
    else:
        done = (f"steps {result.resumed_from + 1}..{cfg.steps} (resumed at step {result.resumed_from})"
                if result.resumed_from else f"{cfg.steps} steps")
        print(f"trained {cfg.preset} preset for {done} in {result.seconds:.1f} s -> {args.out}")
    print(format_table(result.final))
    return 0


def cmd_toy_eval(args) -> int:
    from mechtrunc.models.toy_training import evaluate_toy, load_run, toy_change_intervals

    model, cfg, task = load_run(args.dir, device=args.device)
    prompts = task.test_set(cfg.test_size, seed=cfg.seed + 10_000).to_prompts()
    final = evaluate_toy(model, prompts)
    iv = toy_change_intervals(model, prompts) if LAST_FFN_REMOVED in final else None
    if args.json:
        out = {k: {m: v[m] for m in VARIANT_METRICS} for k, v in final.items()}
        if iv is not None:
            out["change"] = {r["metric"]: {"change": r["change"], "ci_low": r["ci_low"], "ci_high": r["ci_high"]}
                             for _, r in iv.iterrows() if r["metric"] in VARIANT_METRICS}
            out["intervals"] = {"level": float(iv["level"].iloc[0]), "n_boot": int(iv["n_boot"].iloc[0]),
                                "resampled": "test sequences", "n_sequences": int(prompts.rows.unique().numel())}
        print(json.dumps(out))
    else:
        print(format_table(final))
        if iv is not None:
            cells = ", ".join(f"{r['metric']} {r['change']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
                              for _, r in iv.iterrows() if r["metric"] in VARIANT_METRICS)
            print(f"change with the last FFN (L1) removed: {cells} (95% paired bootstrap over the "
                  f"{int(prompts.rows.unique().numel())} test sequences, {int(iv['n_boot'].iloc[0])} resamples)")
    return 0


def cmd_demo(args) -> int:
    from mechtrunc.models.toy_training import preset, train

    cfg = preset("cpu", seed=args.seed)
    print(f"The toy model on noisy in-context recall (cpu preset: d={cfg.d_model}, T={cfg.seq_len}, "
          f"alpha={cfg.alpha}, {cfg.steps} steps) in {args.out}:")
    result = train(cfg, out_dir=args.out, progress=not args.no_progress)
    from mechtrunc.core.reference import machine_fingerprint

    steps = len(result.history) and int(result.history['step'].iloc[-1])
    if result.already_finished:
        print(f"Already trained: {args.out} holds the finished run ({steps} steps); evaluating it.")
    fp = machine_fingerprint()
    print(f"\nClean test set, {steps} steps" + ("" if result.already_finished else f", {result.seconds:.0f} s")
          + f", on this machine ({fp['cpu_model']}, torch {fp['torch']}, {fp['cpu_capability']} kernels):")
    print(format_band_table(result.final))
    print("Band: what seeds 0, 1, 2 of the cpu preset give on every machine measured (docs/results.md, "
          "\"Numbers across machines\"); the exact digits depend on the CPU and torch's kernels.")
    full, cut = result.final["full"], result.final[LAST_FFN_REMOVED]
    print(f"\nRemoving the last FFN (L1) moves accuracy {full['accuracy']:.2f} -> {cut['accuracy']:.2f} "
          f"and P(noise) {full['p_noise']:.2f} -> {cut['p_noise']:.2f}: the FFN stores the generic "
          f"noise association that competes with in-context recall.")
    print(f"Model and history saved in {args.out}; try `mechtrunc toy eval {args.out}`.")
    from mechtrunc.report import write_report

    rep = write_report(args.out, progress=not args.no_progress, command=f"mechtrunc demo --out {args.out} --seed {args.seed}")
    print(f"Report: {rep.path.resolve()}")
    return 0


def add_commands(sub) -> None:
    """Add ``demo`` and the ``toy`` group to the top-level subparsers ``sub``."""
    demo = sub.add_parser("demo", help="train the cpu-preset toy model and print the before/after table",
                          description="Train the toy model (cpu preset, 2 to 4 minutes on 2 cores) and show "
                                      "that removing the last FFN (L1, 0-based) fixes in-context recall: its "
                                      "numbers beside the bands over seeds that hold on any machine "
                                      "(mechtrunc.core.reference), then the run's HTML report.")
    demo.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    demo.add_argument("--seed", type=nonneg_int, default=0, help="random seed")
    demo.set_defaults(func=cmd_demo)

    toy = sub.add_parser("toy", help="the paper's toy model: train, evaluate",
                         description="Train and evaluate the two-layer toy Transformer.")
    toy_sub = toy.add_subparsers(dest="toy_command", metavar="SUBCOMMAND")
    toy_sub.required = True
    tr = toy_sub.add_parser("train", help="train a toy model", description="Train the toy model on noisy "
                            "in-context recall; rerunning with the same --out resumes, a finished run is left as it is, "
                            "a different configuration is refused, --extend trains a run on to more --steps.")
    tr.add_argument("--out", required=True, help="output directory (model, history.csv, checkpoint)")
    _add_train_options(tr)
    tr.add_argument("--extend", action="store_true",
                    help="train the run in --out on to a larger --steps (any other change of configuration is "
                         "refused; a finished run is left as it is without this)")
    tr.add_argument("--keep-checkpoints", action="store_true",
                    help="also save the model at every evaluation to OUT/checkpoints/step{N}/ (for `mechtrunc circuits "
                         "checkpoints OUT/checkpoints`)")
    tr.set_defaults(func=cmd_toy_train)
    ev = toy_sub.add_parser("eval", help="evaluate a trained toy model",
                            description="Clean-test metrics of the full model and with its last FFN (L1) removed.")
    ev.add_argument("dir", type=run_dir_arg("toy", "the --out directory of `mechtrunc toy train` or `mechtrunc demo`"),
                    help="directory written by `mechtrunc toy train`")
    ev.add_argument("--json", action="store_true", help='print {"full": {...}, "last_ffn_removed": {...}} as JSON')
    ev.add_argument("--device", type=device, default="cpu", help="torch device")
    ev.set_defaults(func=cmd_toy_eval)
