"""The ``mechtrunc`` command line.

Every subcommand has ``--help``.  A user mistake (bad option value, missing or corrupt model
directory, unknown preset...) prints ``mechtrunc: error: ...`` and exits with status 2, never a
traceback.  Long runs write their progress to their output directory; rerunning the same
command resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


class UsageError(ValueError):
    """A mistake in what the user asked for (exit status 2)."""


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from mechtrunc.training import PRESETS

    p.add_argument("--preset", default="cpu", help=f"training preset: {', '.join(PRESETS)} (default cpu)")
    p.add_argument("--alpha", type=_fraction, help="noise probability after a trigger, in [0, 1]")
    p.add_argument("--k", type=_positive_int, help="number of triggers")
    p.add_argument("--seq-len", type=int, help="sequence length T (>= 2)")
    p.add_argument("--d-model", type=_positive_int, help="model width")
    p.add_argument("--steps", type=_positive_int, help="training iterations")
    p.add_argument("--batch-size", type=_positive_int, help="sequences per step")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], help="optimiser")
    p.add_argument("--eval-every", type=_positive_int, help="evaluate every N steps")
    p.add_argument("--seed", type=int, help="random seed (model, data)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda")
    p.add_argument("--precision", choices=["fp32", "tf32", "bf16"], help="matmul precision (GPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _train_config(args):
    from mechtrunc.training import preset

    return preset(
        args.preset, alpha=args.alpha, k=args.k, seq_len=args.seq_len, d_model=args.d_model,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        eval_every=args.eval_every, seed=args.seed, device=args.device, precision=args.precision,
    )


def _format_table(final: dict) -> str:
    lines = [f"{'variant':<14}{'accuracy':>10}{'P(noise)':>10}{'P(correct)':>12}"]
    for name, m in final.items():
        lines.append(f"{name:<14}{m['accuracy']:>10.3f}{m['p_noise']:>10.3f}{m['p_correct']:>12.3f}")
    return "\n".join(lines)


def cmd_toy_train(args) -> int:
    from mechtrunc.training import train

    cfg = _train_config(args)
    result = train(cfg, out_dir=args.out, progress=not args.no_progress)
    print(f"trained {cfg.preset} preset for {cfg.steps} steps in {result.seconds:.1f} s -> {args.out}")
    print(_format_table(result.final))
    return 0


def cmd_toy_eval(args) -> int:
    from mechtrunc.training import evaluate_toy, load_run

    model, cfg, task = load_run(args.dir, device=args.device)
    prompts = task.test_set(cfg.test_size, seed=cfg.seed + 10_000).to_prompts()
    final = evaluate_toy(model, prompts)
    if args.json:
        print(json.dumps({k: {m: v[m] for m in ("accuracy", "p_noise", "p_correct")} for k, v in final.items()}))
    else:
        print(_format_table(final))
    return 0


def cmd_demo(args) -> int:
    from mechtrunc.training import preset, train

    cfg = preset("cpu", seed=args.seed)
    print(f"Training the toy model on noisy in-context recall (cpu preset: d={cfg.d_model}, "
          f"T={cfg.seq_len}, alpha={cfg.alpha}, {cfg.steps} steps)...")
    result = train(cfg, out_dir=args.out, progress=not args.no_progress)
    print(f"\nClean test set, {len(result.history) and int(result.history['step'].iloc[-1])} steps, "
          f"{result.seconds:.0f} s:")
    print(_format_table(result.final))
    full, cut = result.final["full"], result.final["ffn2_removed"]
    print(f"\nRemoving the layer-2 FFN moves accuracy {full['accuracy']:.2f} -> {cut['accuracy']:.2f} "
          f"and P(noise) {full['p_noise']:.2f} -> {cut['p_noise']:.2f}: the FFN stores the generic "
          f"noise association that competes with in-context recall.")
    print(f"Model and history saved in {args.out}; try `mechtrunc toy eval {args.out}`.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mechtrunc",
        description="FFN truncation and attribution studies: the paper's toy model and Pythia.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    demo = sub.add_parser("demo", help="train the cpu-preset toy model and print the before/after table",
                          description="Train the toy model (cpu preset, about 75 s on 2 cores) and show "
                                      "that removing the layer-2 FFN fixes in-context recall.")
    demo.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=cmd_demo)

    toy = sub.add_parser("toy", help="the paper's toy model: train, evaluate",
                         description="Train and evaluate the two-layer toy Transformer.")
    toy_sub = toy.add_subparsers(dest="toy_command", metavar="SUBCOMMAND")
    toy_sub.required = True
    tr = toy_sub.add_parser("train", help="train a toy model", description="Train the toy model on noisy "
                            "in-context recall; rerunning with the same --out resumes.")
    tr.add_argument("--out", required=True, help="output directory (model, history.csv, checkpoint)")
    _add_train_options(tr)
    tr.set_defaults(func=cmd_toy_train)
    ev = toy_sub.add_parser("eval", help="evaluate a trained toy model",
                            description="Clean-test metrics of the full model and with the layer-2 FFN removed.")
    ev.add_argument("dir", help="directory written by `mechtrunc toy train`")
    ev.add_argument("--json", action="store_true", help='print {"full": {...}, "ffn2_removed": {...}} as JSON')
    ev.add_argument("--device", default="cpu", help="torch device")
    ev.set_defaults(func=cmd_toy_eval)

    from mechtrunc import cli_pythia

    cli_pythia.add_commands(sub)

    # the associative-memory group (issue 7); `dynamics` lives in cli_dynamics
    from mechtrunc import cli_dynamics

    memory = sub.add_parser("memory", help="associative-memory models: training dynamics",
                            description="Associative-memory models of the FFN / attention split.")
    memory_sub = memory.add_subparsers(dest="memory_command", metavar="SUBCOMMAND")
    memory_sub.required = True
    cli_dynamics.add_parser(memory_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UsageError, ValueError, FileNotFoundError) as err:
        print(f"mechtrunc: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mechtrunc: interrupted; finished work is saved, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
