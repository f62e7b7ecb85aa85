"""Progress reporting: the one home of every progress bar mechtrunc shows.

- :func:`progress_bar` is what every long loop uses.  On a terminal (or in a notebook) it is a
  live tqdm bar.  Off a terminal (a file, a pipe, CI) it is a :class:`LineReporter`: at most one
  line per tenth of the total or per :data:`LINE_SECONDS` seconds, whichever comes first, and a
  final line when the loop ends, so a log holds a few lines instead of bar frames.  It returns a
  silent bar (same methods, no output) when the caller passes ``enabled=False``, when the
  environment variable ``MECHTRUNC_PROGRESS`` is false (``0``, ``false``, ``no``, ``off``) or
  inside :func:`silenced`.
- :func:`silenced` switches every bar off for a block: ours, any other tqdm bar
  (``TQDM_DISABLE``), huggingface_hub's download bars and transformers' "Loading weights" /
  "Writing model shards" bars.  The command line runs each command inside it when
  ``--no-progress`` is given or ``MECHTRUNC_PROGRESS`` is false.
- :func:`third_party_bars_off` switches transformers' and huggingface_hub's bars off for a block;
  the library wraps every load from disk and every save in it (a local load or a save is quick,
  and a checkpoint study or a training run does many of them).  Downloads keep their bars.

Standard library only at import (tqdm is imported when a bar is drawn on a terminal,
transformers and huggingface_hub only when already imported by the caller).
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from contextlib import contextmanager

__all__ = [
    "ENV", "ON_VALUES", "OFF_VALUES", "LINE_SECONDS", "progress_enabled", "progress_bar", "silenced",
    "third_party_bars_off", "LineReporter", "NullBar",
]

ENV = "MECHTRUNC_PROGRESS"
ON_VALUES = ("1", "true", "yes", "on")
OFF_VALUES = ("0", "false", "no", "off")
LINE_SECONDS = 30.0  # off a terminal: a line at least this often while the loop runs
LINE_FRACTION = 0.1  # ... and at most one line per this fraction of the total

_LOCK = threading.RLock()
_SILENCED = [0]  # depth of silenced() blocks
_THIRD_PARTY = [0, []]  # [blocks open, the functions that switch back on what the first one switched off]


def progress_enabled() -> bool:
    """Whether ``MECHTRUNC_PROGRESS`` allows progress output (unset or empty: yes).  A value
    that is neither on (1, true, yes, on) nor off (0, false, no, off) is a ValueError."""
    raw = os.environ.get(ENV)
    value = (raw or "").strip().lower()
    if value in ("",) + ON_VALUES:
        return True
    if value in OFF_VALUES:
        return False
    raise ValueError(f"{ENV}={raw!r} is not valid: use one of {', '.join(ON_VALUES)} (progress shown) "
                     f"or {', '.join(OFF_VALUES)} (silent)")


class NullBar:
    """A bar that shows nothing (the same methods as the others)."""

    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LineReporter(NullBar):
    """Progress as plain lines, for a stream that is not a terminal.

    ``desc: 300/1000 steps (30%), 12.4 s, loss=2.31``: a line when the count has grown by a tenth
    of the total since the last line, or when :data:`LINE_SECONDS` have passed since it (checked
    at each update), and a final line at :meth:`close` (unless the last line already said it
    all).  Without a total only the time rule applies.  ``clock`` (seconds) is for tests."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", initial: int = 0, file=None,
                 clock=time.monotonic, seconds: float = LINE_SECONDS, fraction: float = LINE_FRACTION):
        self.total = total if total else None
        self.desc, self.unit, self.file = desc, unit, file
        self.n = self._shown = initial
        self._clock = clock
        self._t0 = self._last = clock()
        self._seconds = seconds
        self._step = max(1, math.ceil(self.total * fraction)) if self.total else None
        self._postfix = ""
        self._printed = self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total is not None and self.n >= self.total:
            return  # the final line says it
        now = self._clock()
        if (self._step is not None and self.n - self._shown >= self._step) or now - self._last >= self._seconds:
            self._line(now)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self._postfix = " ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self._postfix = str(s)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.n != self._shown or not self._printed:
            self._line(self._clock(), final=True)

    def _line(self, now: float, final: bool = False) -> None:
        count = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total is not None else ""
        elapsed = now - self._t0
        unit = self.unit if self.n == 1 else self.unit + "s"
        text = f"{self.desc}: {count} {unit}{pct}, {elapsed:.1f} s"
        if final and self.total is not None and self.n < self.total:
            text += ", stopped"
        if self._postfix:
            text += f", {self._postfix}"
        stream = self.file if self.file is not None else sys.stderr
        print(text, file=stream, flush=True)
        self._shown, self._last, self._printed = self.n, now, True


def _in_notebook() -> bool:
    ipython = sys.modules.get("IPython")
    try:
        shell = ipython.get_ipython() if ipython is not None else None
    except Exception:  # noqa: BLE001 - any IPython oddity: not a notebook
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(total: int | None, desc: str, unit: str = "it", *, enabled: bool = True, initial: int = 0,
                 file=None):
    """A progress bar over ``total`` units (``update(n)``, ``set_postfix(**kw)``,
    ``set_postfix_str(s)``, ``close()``; also a context manager): a tqdm bar on a terminal or
    in a notebook, a :class:`LineReporter` elsewhere, a :class:`NullBar` when ``enabled`` is
    false, ``MECHTRUNC_PROGRESS`` is off, inside :func:`silenced` or when ``total`` is 0.
    ``file``: the stream (default ``sys.stderr``)."""
    if not enabled or total == 0 or _SILENCED[0] or not progress_enabled():
        return NullBar()
    stream = file if file is not None else sys.stderr
    if _is_terminal(stream) or (file is None and _in_notebook()):
        from tqdm.auto import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=stream)
    return LineReporter(total, desc, unit, initial=initial, file=file)


@contextmanager
def third_party_bars_off():
    """transformers' and huggingface_hub's progress bars off within the block (for a load from
    disk or a save), then back to what they were.  Counted and thread-safe: overlapping blocks (a
    prefetching executor) restore the setting once, after the last one.  Only libraries already
    imported are touched (one imported inside the block reads ``HF_HUB_DISABLE_PROGRESS_BARS``
    and transformers' own setting at its import)."""
    with _LOCK:
        if _THIRD_PARTY[0] == 0:
            _THIRD_PARTY[1] = _switch_off_third_party()
        _THIRD_PARTY[0] += 1
    try:
        yield
    finally:
        with _LOCK:
            _THIRD_PARTY[0] -= 1
            if _THIRD_PARTY[0] == 0:
                for on in _THIRD_PARTY[1]:
                    on()
                _THIRD_PARTY[1] = []


def _switch_off_third_party() -> list:
    """Switch off the bars of the Hugging Face libraries already imported; the functions that
    switch back on what was on."""
    back = []
    tf = sys.modules.get("transformers.utils.logging")
    if tf is None and "transformers" in sys.modules:
        from transformers.utils import logging as tf
    if tf is not None and tf.is_progress_bar_enabled():
        tf.disable_progress_bar()
        back.append(tf.enable_progress_bar)
    hub = sys.modules.get("huggingface_hub.utils")
    if hub is not None and not hub.are_progress_bars_disabled():
        hub.disable_progress_bars()
        back.append(hub.enable_progress_bars)
    return back


@contextmanager
def silenced(enabled: bool = True):
    """Within the block (when ``enabled``; a no-op otherwise): no progress output at all, ours
    (:func:`progress_bar` gives silent bars), any other tqdm bar (``TQDM_DISABLE``), and
    huggingface_hub's and transformers' bars, including those of libraries first imported
    inside the block (``HF_HUB_DISABLE_PROGRESS_BARS``).  Everything is restored after."""
    if not enabled:
        yield
        return
    names = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")
    with _LOCK:
        _SILENCED[0] += 1
        saved = {k: os.environ.get(k) for k in names} if _SILENCED[0] == 1 else None
        if saved is not None:
            os.environ.update({k: "1" for k in names})
    try:
        with third_party_bars_off():
            yield
    finally:
        with _LOCK:
            _SILENCED[0] -= 1
            if saved is not None:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
