"""The field checkers of the value objects (``Grid``, ``TrainConfig``, ``MemoryConfig``,
``MemoryTrainConfig``, ``MinimalConfig``): one style for every configuration.

Each checker takes the field's name and value, returns the value as a plain Python number or
string (any integer / real scalar type is accepted, see :mod:`mechtrunc._scalars`) and raises a
``ValueError`` naming the field, the bad value and the valid range::

    steps must be an integer >= 1, got 0
    alpha must be a number in [0, 1], got 1.5
    lr must be a number > 0, got 0.0
    unknown optimizer 'adam'; valid: sgd, adamw

A value object checks its fields once, in ``__post_init__``; code that takes the object does
not check them again.
"""

from __future__ import annotations

import math
from dataclasses import fields

from mechtrunc._scalars import as_int, as_real

__all__ = ["check_int", "check_real", "check_fraction", "check_choice", "check_preset", "config_from_dict",
           "config_changes", "check_resume"]


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in ``low..high`` (either bound optional)."""
    v = as_int(value, name)
    if (low is not None and v < low) or (high is not None and v > high):
        if high is None:
            valid = f">= {low}"
        elif low is None:
            valid = f"<= {high}"
        else:
            valid = f"in {low}..{high}"
        raise ValueError(f"{name} must be an integer {valid}, got {value!r}")
    return v


def check_real(name: str, value, low: float | None = None, *, above: bool = False) -> float:
    """``value`` as a finite float, ``>= low`` (``> low`` with ``above=True``) when ``low`` is
    given."""
    v = as_real(value, name)
    bad_low = low is not None and (v <= low if above else v < low)
    if not math.isfinite(v) or bad_low:
        valid = "a finite number" if low is None else f"a number {'>' if above else '>='} {low:g}"
        raise ValueError(f"{name} must be {valid}, got {value!r}")
    return v


def check_fraction(name: str, value) -> float:
    """``value`` as a float in [0, 1]."""
    v = as_real(value, name)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return v


def check_choice(name: str, value, valid, *, label: str = "valid", quote: bool = False, extra: str = "") -> str:
    """``value`` if it is one of ``valid`` (a string); otherwise ``unknown <name> <value!r>;
    <label>: <v1>, <v2>...<extra>``: ``label`` names the list (``"valid sites"``), ``quote``
    shows its values as reprs (``'exact', 'randomized'``), ``extra`` follows it (``" (or a
    torch.dtype)"``)."""
    if not isinstance(value, str) or value not in valid:
        shown = ", ".join(repr(v) if quote else str(v) for v in valid)
        raise ValueError(f"unknown {name} {value!r}; {label}: {shown}{extra}")
    return value


def check_preset(name: str, table: dict, what: str) -> dict:
    """A copy of the preset ``name`` of ``table``, or ValueError naming the valid ones."""
    if name not in table:
        raise ValueError(f"unknown {what} preset {name!r}; valid presets: {', '.join(table)}")
    return dict(table[name])


def config_from_dict(cls, data: dict, tuples: tuple[str, ...] = ()):
    """``cls(**data)`` for a config dataclass (e.g. read back from JSON), naming unknown fields and
    the valid ones; list values of the fields ``tuples`` become tuples (JSON has no tuples)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; valid: {', '.join(sorted(known))}")
    return cls(**{k: tuple(v) if k in tuples and v is not None else v for k, v in data.items()})


_ABSENT = "<absent>"


def _flat(d: dict, prefix: str = "") -> dict:
    """``d`` with nested dicts flattened to dotted names (``corpus.seed``); tuples as lists."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def config_changes(stored: dict, requested: dict, ignore: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Every field whose value differs between a run's stored configuration and a requested one,
    as ``{name: (stored, requested)}`` in field order; nested dicts are compared field by field
    under dotted names (``corpus.seed``), a field missing on one side shows as ``'<absent>'``, and
    the fields ``ignore`` are left out."""
    a, b = _flat(stored), _flat(requested)
    names = [*a, *(k for k in b if k not in a)]
    return {k: (a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in names
            if k not in ignore and a.get(k, _ABSENT) != b.get(k, _ABSENT)}


def _show(v) -> str:
    return v if v is _ABSENT else repr(v)


def check_resume(where, stored: dict, requested: dict, *, ignore: tuple[str, ...] = (), extend: bool = False,
                 extension_refused=None) -> int | None:
    """The one check before a training run continues in a directory that already holds a run:
    ``stored`` is the configuration found at ``where``, ``requested`` the one asked for (both as
    dicts; fields ``ignore`` may differ, e.g. the thread count).

    Returns ``None`` when the configurations agree (resume, or a finished run), and the stored
    number of steps when ``extend`` is true and only ``steps`` grows (the caller trains the run on
    to ``requested["steps"]``).  ``extension_refused(old_steps, new_steps)``, if given, returns why
    such an extension would not continue the same run (a learning-rate schedule over ``steps``),
    or ``None``.  Anything else raises a ``ValueError`` naming every differing field with both
    values, e.g. ``runs/demo holds a different run (steps: 1000 there, 50 asked; seed: 0 there, 1
    asked); nothing was changed: use a new --out directory``."""
    changes = config_changes(stored, requested, ignore)
    if not changes:
        return None
    shown = "; ".join(f"{k}: {_show(a)} there, {_show(b)} asked" for k, (a, b) in changes.items())
    head = f"{where} holds a different run ({shown}); nothing was changed"
    old, new = changes.get("steps", (None, None))
    only_longer = set(changes) == {"steps"} and isinstance(old, int) and isinstance(new, int) and new > old
    if only_longer:
        why = extension_refused(old, new) if extension_refused is not None else None
        if why is not None:
            raise ValueError(f"{head}: it cannot be extended to {new} steps, because {why}; train {new} steps "
                             "in a new --out directory")
        if extend:
            return old
        raise ValueError(f"{head}: add --extend (extend=True) to train this run on from step {old} to {new}, "
                         "or use a new --out directory")
    if extend and set(changes) == {"steps"}:
        raise ValueError(f"{head}: --extend only lengthens a run; a shorter run is another run: use a new "
                         "--out directory")
    raise ValueError(f"{head}: use a new --out directory" + (" (--extend changes steps only)" if extend else ""))
