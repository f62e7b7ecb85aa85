"""``mechtrunc report DIR [--out FILE]``: one self-contained HTML report of a toy run, an
associative-memory run, a language-model run, a truncation study or a checkpoint study
(:data:`mechtrunc._choices.REPORT_KINDS`; heavy imports stay inside the command)."""

from __future__ import annotations

import shlex
import sys

from mechtrunc._choices import REPORT_KINDS
from mechtrunc.cli.checks import device, nonneg_int, run_dir_arg

__all__ = ["add_commands", "cmd_report"]


def cmd_report(args) -> int:
    import time

    from mechtrunc.report import write_report

    t0 = time.perf_counter()
    argv = ["mechtrunc", "report", args.dir]
    for flag, value in (("--out", args.out), ("--model", args.model), ("--task", args.task)):
        if value is not None:
            argv += [flag, str(value)]
    if args.examples != 3:
        argv += ["--examples", str(args.examples)]
    command = " ".join(shlex.quote(a) for a in argv)
    rep = write_report(args.dir, args.out, model=args.model, task=args.task, examples=args.examples,
                 device=args.device, progress=not args.no_progress, command=command)
    size = rep.path.stat().st_size
    print(f"{rep.kind} report ({len(rep.sections)} sections, {size / 1e6:.1f} MB, "
          f"{time.perf_counter() - t0:.0f} s) -> {rep.path}")
    if "model-based sections" in rep.meta:
        print(f"note: {rep.meta['model-based sections']}", file=sys.stderr)
    return 0


def _kinds() -> str:
    """``a toy run, ..., or a checkpoint study``: every kind of directory a report is written for."""
    names = [f"{'an' if n[0] in 'aeiou' else 'a'} {n}" for n in REPORT_KINDS.values()]
    return ", ".join(names[:-1]) + " or " + names[-1]


def add_commands(sub) -> None:
    p = sub.add_parser(
        "report", help="write an offline HTML report of a run or a study directory",
        description=f"Recognise what DIR holds ({_kinds()}) and write one "
                    "self-contained HTML file (interactive charts, attention views; opens from disk with no "
                    "network). A study is read from its files, never recomputed; only a few example prompts are "
                    "run again, when the model can be loaded.")
    p.add_argument("dir", type=run_dir_arg(None, "a run or study directory (e.g. runs/demo)"),
                   help="the run or study directory (e.g. runs/demo)")
    p.add_argument("--out", default=None, help="HTML file to write (default DIR/report.html)")
    p.add_argument("--model", default=None,
                   help="studies: the model (hub id or directory) when study.json does not record a loadable one")
    p.add_argument("--task", default=None,
                   help="studies: the prompts of the example sections: ioi, factual or a CSV/JSONL file")
    p.add_argument("--examples", type=nonneg_int, default=3, help="example prompts in a truncation report (default 3)")
    p.add_argument("--device", type=device, default="cpu", help="torch device for the example sections (default cpu)")
    p.set_defaults(func=cmd_report)
