"""The argument checkers of the command line (argparse ``type=`` callables) and
:class:`UsageError`.  Standard library only: a bad value is reported before anything heavy is
imported (:mod:`mechtrunc.models.lm_run`, which recognises a language-model run and its
``step{N}/`` checkpoints, is standard library only too)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from mechtrunc._choices import looks_like_path
from mechtrunc.models.lm_run import checkpoint_dirs, is_run_dir, step_of

__all__ = ["UsageError", "fraction", "int_at_least", "positive_int", "nonneg_int", "positive_float",
           "nonneg_float", "level", "device", "choice", "model_kind", "last_checkpoint",
           "checkpoint_dirs", "resolve_model", "model_arg", "run_dir_arg"]


def __getattr__(name):
    # renamed: mechtrunc.models.lm.train.checkpoint_steps is a run's schedule of steps, and
    # mechtrunc.models.lm.prompts.run_dir finds the run directory of a path
    new = {"checkpoint_steps": "checkpoint_dirs", "run_dir": "run_dir_arg"}.get(name)
    if new is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import warnings

    warnings.warn(f"mechtrunc.cli.checks.{name} is now {new}; the old name goes in the next release",
                  DeprecationWarning, stacklevel=2)
    return globals()[new]


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


def _real(text: str, what: str, ok) -> float:
    value = _number(text, float, what)
    if not (ok(value) and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def level(text: str) -> float:
    """A confidence level: a number strictly between 0 and 1."""
    value = _number(text, float, "a confidence level in (0, 1)")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a confidence level in (0, 1), got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _real(text, "a positive number", lambda v: v > 0.0)


def nonneg_float(text: str) -> float:
    """A finite number >= 0."""
    return _real(text, "a non-negative number", lambda v: v >= 0.0)


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


def model_kind(model: str) -> str:
    """What a MODEL argument names, from its files alone: ``"toy"`` (a toy run or saved toy
    model), ``"memory"`` (a linear-memory run), ``"lm"`` (a `mechtrunc lm train` run) or ``"hf"``
    (anything :func:`mechtrunc.models.hf.load_model` reads: a hub id or a Hugging Face directory)."""
    d = Path(model)
    if d.is_dir() and is_run_dir(d):
        return "lm"
    if d.is_dir() and (d / "config.json").is_file():
        try:
            cfg = json.loads((d / "config.json").read_text())
        except (OSError, ValueError):
            raise UsageError(f"{model}: config.json is corrupt or unreadable") from None
        if isinstance(cfg, dict) and "memory" in cfg:
            return "memory"
        if isinstance(cfg, dict) and "model" in cfg and "model_type" not in cfg:
            return "toy"
    if d.exists() and not d.is_dir():
        raise UsageError(f"{model} is a file, not a model directory")
    return "hf"


def last_checkpoint(run: Path) -> Path:
    """The last ``step{N}`` checkpoint directory of a language-model run."""
    steps = checkpoint_dirs(run)
    if not steps:
        raise UsageError(f"{run} is a language-model run without checkpoints (no step*/ directory): train it first")
    return steps[max(steps)]


def _first_few(steps) -> str:
    steps = list(steps)
    return ", ".join(map(str, steps[:12])) + (f" ... ({len(steps)} in all)" if len(steps) > 12 else "")


_KIND_NAMES = {"toy": "toy run", "memory": "linear-memory run", "lm": "language-model run"}


def resolve_model(model: str, step: int | None = None) -> tuple[str, str, int | None]:
    """What a command loads for ``MODEL [--step N]``: the one resolver of every command that loads
    a model by name (``pythia truncate``, ``lens``, ``patch``), checked with the standard library
    only, before any heavy import.  Returns ``(kind, source, step)``: ``kind`` as
    :func:`model_kind`, ``source`` and ``step`` for :func:`mechtrunc.models.hf.load_model` (or the
    run directory itself for a toy or linear-memory run, which take no ``--step``):

    - a language-model run (``mechtrunc lm train --out RUN``) or any directory of ``step{N}/``
      checkpoints: ``RUN/step{N}`` with ``--step N`` (UsageError naming the steps it holds when it
      has no such step), else its last checkpoint;
    - one checkpoint or ``save_pretrained`` directory (``RUN/step200``): itself; ``--step``, if
      given, must be that checkpoint's step; kind ``"lm"`` when it is a checkpoint of a
      language-model run (its ``run.json`` is ``Path(source).parent / "run.json"``, as for a run);
    - a path that does not exist (``./x``, ``a/b/c``, or ``runs/x`` where ``runs/`` exists
      here): UsageError;
    - anything else is a hub id, with ``step`` (revision ``step{N}``; Pythia steps are checked by
      :func:`mechtrunc._choices.check_step`)."""
    kind = model_kind(model)
    if kind in ("toy", "memory"):
        if step is not None:
            raise UsageError(f"--step applies to language-model runs, checkpoint directories and hub ids; "
                             f"{model} is a {_KIND_NAMES[kind]} (one model, no checkpoints)")
        return kind, model, None
    path = Path(model).expanduser()
    if path.is_dir():
        steps = checkpoint_dirs(path)
        if (path / "config.json").is_file() and not steps:  # one checkpoint
            own = step_of(path.name)
            if step is not None and own != step:
                if own is None:
                    raise UsageError(f"{model} is a single saved model, not step {step}: --step applies to a run "
                                     "directory, a directory of step{N}/ checkpoints or a hub id")
                siblings = checkpoint_dirs(path.parent)
                raise UsageError(f"{model} is the checkpoint of step {own}, not step {step}: give the run "
                                 f"directory with --step ({path.parent} --step {step}"
                                 + ("" if step in siblings else f"; its steps: {_first_few(siblings)}") + ")")
            if own is not None and model_kind(str(path.parent)) == "lm":
                kind = "lm"
            return kind, str(path), None
        if not steps:
            what = "a language-model run without checkpoints (no step*/ directory): train it first" \
                if kind == "lm" else \
                "not a model directory: it holds no config.json (a save_pretrained model) and no step*/ checkpoints"
            raise UsageError(f"{model} is {what}")
        if step is None:
            return kind, str(steps[max(steps)]), None
        if step not in steps:
            raise UsageError(f"{model} holds no checkpoint of step {step}; its steps: {_first_few(steps)}")
        return kind, str(steps[step]), None
    parent = path.parent
    if looks_like_path(model) or (str(parent) not in ("", ".") and parent.is_dir()):
        held = sorted(p.name for p in parent.iterdir()) if parent.is_dir() else None
        raise UsageError(f"no such model directory: {model!r}"
                         + ("" if held is None else f" ({parent}/ holds: {_first_few(held) or 'nothing'})"))
    return kind, model, step


def model_arg(text: str) -> str:
    """An argparse type for MODEL: a hub id or an existing run, checkpoint or model directory
    (:func:`resolve_model` without ``--step``; a path template with ``{step}`` passes)."""
    if "{step}" not in text:
        try:
            resolve_model(text)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return text


def run_dir_arg(kind: str | None, hint: str):
    """An argparse type: an existing directory; with ``kind``, not recognisably a run of another
    kind (:func:`model_kind`; what cannot be told from the files is left to the loader)."""

    def check(text: str) -> str:
        path = Path(text).expanduser()
        if not path.exists():
            raise argparse.ArgumentTypeError(f"{'model directory' if kind else 'directory'} {text} does not exist; "
                                             f"give {hint}")
        if not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is not a directory; give {hint}")
        if kind is not None:
            try:
                found = model_kind(text)
            except UsageError:
                return text  # e.g. a corrupt config.json: the loader says what is wrong
            if found != kind and found in _KIND_NAMES:
                raise argparse.ArgumentTypeError(f"{text} is a {_KIND_NAMES[found]}, not a {_KIND_NAMES[kind]}; "
                                                 f"give {hint}")
        return text

    check.__name__ = f"{kind or 'run'}_directory"
    return check
