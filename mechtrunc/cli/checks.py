"""The argument checkers of the command line (argparse ``type=`` callables) and
:class:`UsageError`.  Standard library only: a bad value is reported before anything heavy is
imported."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

__all__ = ["UsageError", "fraction", "int_at_least", "positive_int", "nonneg_int", "positive_float",
           "nonneg_float", "device", "choice", "model_kind", "last_checkpoint"]


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
    (anything :func:`mechtrunc.pythia.load_model` reads: a hub id or a Hugging Face directory)."""
    d = Path(model)
    if d.is_dir() and (d / "run.json").is_file():
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
    steps = sorted((int(m.group(1)), p) for p in Path(run).iterdir()
                   if (m := re.fullmatch(r"step(\d+)", p.name)) and p.is_dir())
    if not steps:
        raise UsageError(f"{run} is a language-model run without checkpoints (no step*/ directory): train it first")
    return steps[-1][1]
