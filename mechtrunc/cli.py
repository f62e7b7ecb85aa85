"""The ``mechtrunc`` command line.

Every subcommand has ``--help``.  A user mistake (bad option value, missing or corrupt model
directory, unknown preset...) prints ``mechtrunc: error: ...`` and exits with status 2, never a
traceback.  Long runs write their progress to their output directory; rerunning the same
command resumes.  ``--no-progress`` silences every progress bar (ours, tqdm's and
transformers'/huggingface_hub's "Loading weights" / download bars).

Pattern for every subcommand module (``cli.py``, ``cli_pythia.py``, ``cli_*.py``); the CLI must
answer ``--help`` and usage errors in well under 0.5 s (``benchmarks/bench_cli_startup.py``,
``tests/test_cli_startup.py``):

1. Module top: standard library and ``mechtrunc._choices`` / ``mechtrunc.cli`` only.  Never import
   torch, transformers, transformer_lens, pandas, matplotlib or another ``mechtrunc`` module
   there (``import mechtrunc`` itself is lazy and cheap).  Choices that come from heavy modules
   (presets, matrices, sites, dtypes, checkpoint steps) are read from ``mechtrunc._choices``.
2. Validate values in argparse: ``type=`` one of the checkers below (``positive_int``,
   ``nonneg_int``, ``fraction``, ``positive_float``, ``device``, ``int_at_least(n)``...) or
   ``choices=``; argparse then reports a bad value before anything heavy is imported.
   Checks that involve two options go at the top of the command function, before its first
   heavy import, raising :class:`UsageError`.
3. Import heavy modules inside the command function (``def cmd_x(args): from mechtrunc.x import y``).
4. A command function returns an exit status; it raises ``UsageError`` / ``ValueError`` /
   ``FileNotFoundError`` for user mistakes (``main`` prints them and exits 2).
5. Long loops take ``progress=not args.no_progress``; ``main`` also switches off third-party
   bars for the whole command when ``--no-progress`` is given.
6. Wire the module in :func:`build_parser` with one line: ``cli_x.add_commands(sub)``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from contextlib import contextmanager

from mechtrunc import _choices

__all__ = ["main", "build_parser"]


class UsageError(ValueError):
    """A mistake in what the user asked for (exit status 2)."""


def _number(text: str, kind, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    value = _number(text, float, "a number in [0, 1]")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def int_at_least(low: int, what: str | None = None):
    """An argparse type: an integer >= ``low``."""
    what = what or f"an integer >= {low}"

    def check(text: str) -> int:
        value = _number(text, int, what)
        if value < low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    check.__name__ = f"int_at_least_{low}"
    return check


positive_int = int_at_least(1, "a positive integer")
nonneg_int = int_at_least(0, "a non-negative integer")


def positive_float(text: str) -> float:
    value = _number(text, float, "a positive number")
    if not (value > 0.0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?|mps|xpu(:\d+)?)$")


def device(text: str) -> str:
    """A torch device name (cpu, cuda, cuda:N, mps); whether it exists is checked when used."""
    if not _DEVICE_RE.match(text):
        raise argparse.ArgumentTypeError(f"expected a torch device (cpu, cuda, cuda:N or mps), got {text!r}")
    return text


def choice(options, what: str, plural: str | None = None):
    """An argparse type: one of ``options`` (the message lists them)."""
    options = tuple(options)
    plural = plural or what + "s"

    def check(text: str) -> str:
        if text not in options:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; valid {plural}: {', '.join(options)}")
        return text

    check.__name__ = what.replace(" ", "_")
    return check


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
    p.add_argument("--optimizer", choices=_choices.OPTIMIZERS, help="optimiser")
    p.add_argument("--eval-every", type=positive_int, help="evaluate every N steps")
    p.add_argument("--seed", type=nonneg_int, help="random seed (model, data)")
    p.add_argument("--init", choices=_choices.INITS,
                   help="toy-model initialisation: released (the authors' code, default) or normal_unembed (W_U ~ N(0, 1/d))")
    p.add_argument("--device", type=device, help="torch device, e.g. cpu or cuda")
    p.add_argument("--precision", choices=_choices.PRECISIONS, help="matmul precision (GPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _train_config(args):
    from mechtrunc.training import preset

    return preset(
        args.preset, alpha=args.alpha, k=args.k, seq_len=args.seq_len, d_model=args.d_model,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        eval_every=args.eval_every, seed=args.seed, device=args.device, precision=args.precision,
        init=args.init,
    )


def _format_table(final: dict) -> str:
    lines = [f"{'variant':<14}{'accuracy':>10}{'P(noise)':>10}{'P(correct)':>12}"]
    for name, m in final.items():
        lines.append(f"{name:<14}{m['accuracy']:>10.3f}{m['p_noise']:>10.3f}{m['p_answer']:>12.3f}")
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
        print(json.dumps({k: {m: v[m] for m in ("accuracy", "p_noise", "p_answer")} for k, v in final.items()}))
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
    from mechtrunc.report import report

    rep = report(args.out, progress=not args.no_progress, command=f"mechtrunc demo --out {args.out} --seed {args.seed}")
    print(f"Report: {rep.path.resolve()}")
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
    demo.add_argument("--seed", type=nonneg_int, default=0, help="random seed")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
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
    ev.add_argument("--device", type=device, default="cpu", help="torch device")
    ev.set_defaults(func=cmd_toy_eval)

    from mechtrunc import cli_pythia, cli_report

    cli_pythia.add_commands(sub)
    from mechtrunc import cli_memory

    from mechtrunc import cli_dynamics

    cli_dynamics.add_parser(cli_memory.add_commands(sub))  # memory train | spectrum | dynamics
    cli_report.add_commands(sub)
    return parser


@contextmanager
def progress_bars(enabled: bool):
    """Within the block, with ``enabled=False``: no tqdm bar anywhere (``TQDM_DISABLE``), no
    huggingface_hub download bar and no transformers "Loading weights" bar.  Restored after."""
    if enabled:
        yield
        return
    saved = {k: os.environ.get(k) for k in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    os.environ.update(TQDM_DISABLE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    # modules imported before the block read the environment at their import: switch them off
    # too (and back on afterwards); modules first imported inside the block read the variables
    switched = []
    for module, off, on in (("huggingface_hub.utils", "disable_progress_bars", "enable_progress_bars"),
                            ("transformers.utils.logging", "disable_progress_bar", "enable_progress_bar")):
        mod = sys.modules.get(module)
        if mod is not None and saved["HF_HUB_DISABLE_PROGRESS_BARS"] is None:
            getattr(mod, off)()
            switched.append(getattr(mod, on))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        for on in switched:
            on()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with progress_bars(not getattr(args, "no_progress", False)):
            return int(args.func(args) or 0)
    except (UsageError, ValueError, FileNotFoundError) as err:
        print(f"mechtrunc: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mechtrunc: interrupted; finished work is saved, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
