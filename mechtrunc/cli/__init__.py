"""The ``mechtrunc`` command line.

Every subcommand has ``--help``.  A user mistake (bad option value, missing or corrupt model
directory, unknown preset...) prints ``mechtrunc: error: ...`` and exits with status 2, never a
traceback.  A reader that closes the pipe early (``mechtrunc lm corpus | head``) ends the command
quietly with status 141, as a Unix tool killed by SIGPIPE.  Long runs write their progress to their output directory; rerunning the same
command resumes.  ``--no-progress`` silences every progress bar (ours, tqdm's and
transformers'/huggingface_hub's "Loading weights" / download bars).

The package has one module per command group, each with ``add_commands(sub)``:
:mod:`~mechtrunc.cli.toy` (``demo``, ``toy train|eval``), :mod:`~mechtrunc.cli.pythia`
(``pythia truncate|checkpoints``), :mod:`~mechtrunc.cli.memory` (``memory train|spectrum|dynamics``), :mod:`~mechtrunc.cli.lm` (``lm corpus|prompts|train|study``),
:mod:`~mechtrunc.cli.patch` (``patch scan|path``), :mod:`~mechtrunc.cli.lens` (``lens vocab|logit``)
and :mod:`~mechtrunc.cli.report` (``report``); :mod:`~mechtrunc.cli.checks` holds the argument
checkers and :class:`UsageError`.  The CLI must answer ``--help`` and usage errors in well under
0.5 s (``benchmarks/bench_cli_startup.py``, ``tests/test_cli_startup.py``), so every group module
follows one pattern:

1. Module top: standard library, ``mechtrunc._choices`` and ``mechtrunc.cli.checks`` only.  Never
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
   ``--step``, a checkpoint or ``save_pretrained`` directory, or a hub id) and ``run_dir``.
3. Import heavy modules inside the command function (``def cmd_x(args): from mechtrunc.x import y``).
4. A command function returns an exit status; it raises ``UsageError`` / ``ValueError`` /
   ``FileNotFoundError`` for user mistakes (``main`` prints them and exits 2).
5. Long loops take ``progress=not args.no_progress``; ``main`` also switches off third-party
   bars for the whole command when ``--no-progress`` is given.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager

from mechtrunc.cli.checks import UsageError

__all__ = ["main", "build_parser", "progress_bars", "UsageError"]


def build_parser() -> argparse.ArgumentParser:
    from mechtrunc.cli import lens, lm, memory, patch, pythia, report, toy

    parser = argparse.ArgumentParser(
        prog="mechtrunc",
        description="FFN truncation and attribution studies: the paper's toy model and Pythia.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for group in (toy, pythia, memory, lm, patch, lens, report):
        group.add_commands(sub)
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
        with progress_bars(not getattr(args, "no_progress", False)):
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
