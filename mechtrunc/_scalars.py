"""One place that turns user-given layers, heads, ranks and keep fractions into Python numbers.

Every integer or real scalar type is accepted: Python ``int``/``float``, NumPy scalars
(``np.int64(1)``, ``np.float32(0.5)``, items of ``np.arange``/``np.linspace``), 0-d NumPy arrays
and 0-d torch tensors (``torch.tensor(3)``).  ``bool`` (Python, NumPy or a boolean tensor) is
rejected: ``True`` as a layer is almost always a bug.  Sequences (lists, tuples, 1-d arrays and
tensors) are converted element by element.  Errors are ``ValueError`` naming the argument, the
bad value and what would be valid.
"""

from __future__ import annotations

import numbers
import operator

__all__ = ["as_int", "as_real", "as_int_list", "as_real_list", "is_scalar"]


def _unwrap(value):
    """A 0-d tensor / array becomes its Python item; anything else is returned unchanged."""
    if hasattr(value, "ndim") and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def _is_bool(value) -> bool:
    if isinstance(value, bool):
        return True
    dtype = getattr(value, "dtype", None)
    return dtype is not None and str(dtype).rsplit(".", 1)[-1] in ("bool", "bool_")


def _show(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def is_scalar(value) -> bool:
    """Whether ``value`` is a number (Python, NumPy or 0-d tensor/array), bools included."""
    if getattr(value, "ndim", None) == 0:
        return True
    return isinstance(value, numbers.Number)


def as_int(value, name: str = "value") -> int:
    """``value`` as a Python ``int``; reals must be whole numbers (``2.0`` is fine, ``2.5`` not)."""
    if _is_bool(value):
        raise ValueError(f"{name} must be an integer, got the boolean {value!r}")
    v = _unwrap(value)
    if isinstance(v, numbers.Integral):
        return int(v)
    try:
        return operator.index(v)  # any other integer type that supports __index__
    except TypeError:
        pass
    if isinstance(v, numbers.Real):
        f = float(v)
        if f.is_integer():
            return int(f)
        raise ValueError(f"{name} must be an integer, got {_show(value)}")
    raise ValueError(f"{name} must be an integer (int, NumPy or 0-d torch integer), got {_show(value)}")


def as_real(value, name: str = "value") -> float:
    """``value`` as a Python ``float`` (any integer or real scalar type, not bool, not NaN)."""
    if _is_bool(value):
        raise ValueError(f"{name} must be a number, got the boolean {value!r}")
    v = _unwrap(value)
    if isinstance(v, numbers.Real):
        f = float(v)
        if f != f:
            raise ValueError(f"{name} must be a number, got NaN")
        return f
    raise ValueError(f"{name} must be a real number (int, float, NumPy or 0-d torch scalar), got {_show(value)}")


def _elements(values, name: str) -> list:
    if is_scalar(values):
        return [values]
    if isinstance(values, (str, bytes)) or values is None:
        raise ValueError(f"{name} must be a number or a sequence of numbers, got {values!r}")
    if hasattr(values, "ndim") and hasattr(values, "tolist") and not _is_bool(values):
        if values.ndim != 1:
            raise ValueError(f"{name} must be 1-dimensional, got shape {tuple(values.shape)}")
        return list(values.tolist())
    try:
        return list(values)
    except TypeError:
        raise ValueError(f"{name} must be a number or a sequence of numbers, got {_show(values)}") from None


def as_int_list(values, name: str = "value") -> list[int]:
    """A scalar or a sequence (list, tuple, range, 1-d array or tensor) as a list of ints."""
    if _is_bool(values) and getattr(values, "ndim", 0) != 0:
        raise ValueError(f"{name} must hold integers, got a boolean array")
    return [as_int(v, name) for v in _elements(values, name)]


def as_real_list(values, name: str = "value") -> list[float]:
    """A scalar or a sequence (list, tuple, 1-d array or tensor) as a list of floats."""
    if _is_bool(values) and getattr(values, "ndim", 0) != 0:
        raise ValueError(f"{name} must hold numbers, got a boolean array")
    return [as_real(v, name) for v in _elements(values, name)]
