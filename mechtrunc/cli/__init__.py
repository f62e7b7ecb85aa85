"""The ``mechtrunc`` command line.

Every subcommand has ``--help``.  A user mistake (bad option value, missing or corrupt model
directory, unknown preset...) prints ``mechtrunc: error: ...`` and exits with status 2, never a
traceback.  A reader that closes the pipe early (``mechtrunc lm corpus | head``) ends the command
quietly with status 141, as a Unix tool killed by SIGPIPE.  Long runs write their progress to
their output directory; rerunning the same command resumes.  Progress shows as a live bar on a terminal and as a few lines elsewhere (a
file, a pipe, CI; :mod:`mechtrunc._progress`).  Every command accepts ``--no-progress``
(declared once, by :func:`build_parser`), which silences every progress bar and line: ours,
tqdm's and transformers'/huggingface_hub's "Loading weights" / download bars; so does the
environment variable ``MECHTRUNC_PROGRESS=0``.

The package has one module per command group, each with ``add_commands(sub)``:
:mod:`~mechtrunc.cli.toy` (``demo``, ``toy train|eval``), :mod:`~mechtrunc.cli.pythia`
(``pythia truncate|checkpoints``), :mod:`~mechtrunc.cli.memory` (``memory train|spectrum|dynamics``), :mod:`~mechtrunc.cli.lm` (``lm corpus|english|prompts|train|study``),
:mod:`~mechtrunc.cli.patch` (``patch scan|path|attribute``), :mod:`~mechtrunc.cli.lens` (``lens vocab|logit``),
:mod:`~mechtrunc.cli.circuits` (``circuits checkpoints``) and :mod:`~mechtrunc.cli.report` (``report``);
:mod:`~mechtrunc.cli.checks` holds the argument
checkers and :class:`UsageError`.  The CLI must answer ``--help`` and usage errors in well under
0.5 s (``benchmarks/bench_cli_startup.py``, ``tests/test_cli_startup.py``), so every group module
follows one pattern:

1. Module top: standard library, ``mechtrunc._choices``, ``mechtrunc._progress`` (standard
   library only) and ``mechtrunc.cli.checks`` only.  Never
   import torch, transformers, transformer_lens, pandas, matplotlib or another ``mechtrunc``
   module there (``import mechtrunc`` itself is lazy and cheap).  Choices and defaults that
   belong to heavy modules (presets, matrices, grid keeps, sites, dtypes, checkpoint steps) are
   read from ``mechtrunc._choices``, which the heavy modules read too.
2. Validate values in argparse: ``type=`` a checker of :mod:`mechtrunc.cli.checks` or
   ``choices=``; argparse then reports a bad value before anything heavy is imported.  Checks
   that involve two options go at the top of the command function, before its first heavy
   import, raising :class:`UsageError`.  Everything else is checked once, by the value object
   the command builds (``Grid``, ``Truncate``, the configs).  A model or run argument goes
   through the shared checkers: ``model_arg`` / ``resolve_model`` (a run directory, its
   ``--step``, a checkpoint or ``save_pretrained`` directory, or a hub id) and ``run_dir_arg``.
3. Import heavy modules inside the command function (``def cmd_x(args): from mechtrunc.x import y``).
4. A command function returns an exit status; it raises ``UsageError`` / ``ValueError`` /
   ``FileNotFoundError`` for user mistakes (``main`` prints them and exits 2).
5. Long loops take ``progress=not args.no_progress``; ``main`` also runs the whole command
   inside :func:`mechtrunc._progress.silenced` when ``--no-progress`` is given (or
   ``MECHTRUNC_PROGRESS`` is off), which silences every bar, third-party ones included.
"""

from __future__ import annotations

import argparse
import os
import sys

from mechtrunc import _progress
from mechtrunc.cli.checks import UsageError

__all__ = ["main", "build_parser", "UsageError"]


def build_parser() -> argparse.ArgumentParser:
    from mechtrunc.cli import circuits, lens, lm, memory, patch, pythia, report, toy

    parser = argparse.ArgumentParser(
        prog="mechtrunc",
        description="FFN truncation and attribution studies: the paper's toy model and Pythia.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for group in (toy, pythia, memory, lm, patch, circuits, lens, report):
        group.add_commands(sub)
    _add_no_progress(parser)
    return parser


def _add_no_progress(parser: argparse.ArgumentParser) -> None:
    """``--no-progress`` on every command: the one place it is declared (a command without a
    long loop accepts it too, so that it can be given to any command)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in {id(p): p for p in action.choices.values()}.values():
                _add_no_progress(child)
            return
    parser.add_argument("--no-progress", action="store_true",
                        help=f"no progress bars or progress lines (as {_progress.ENV}=0 does)")


#: exit status of a command whose reader closed the pipe (``mechtrunc lm corpus | head``): what a
#: shell reports for a Unix tool killed by SIGPIPE (128 + 13)
EXIT_BROKEN_PIPE = 141


def _stdout_to_devnull() -> None:
    """After a broken pipe: point stdout at /dev/null so that the interpreter's final flush of
    the unwritten rest raises nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a file descriptor (e.g. redirected in tests)
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        quiet = args.no_progress or not _progress.progress_enabled()  # a bad MECHTRUNC_PROGRESS: exit 2 now
        with _progress.silenced(quiet):
            code = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed pipe is reported here, not at interpreter exit
            return code
    except BrokenPipeError:
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE
    except (UsageError, ValueError, FileNotFoundError) as err:
        print(f"mechtrunc: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mechtrunc: interrupted; finished work is saved, rerun the same command to resume", file=sys.stderr)
        return 130
