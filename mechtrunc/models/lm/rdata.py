"""A small reader of R's serialization format and lazy-load databases, enough for the data of
R packages (:mod:`mechtrunc.models.lm.english` reads Jane Austen's novels and Moby-Dick with it).

An installed R package keeps its datasets in ``data/Rdata.rdx`` and ``data/Rdata.rdb``, a
*lazy-load database*: the ``.rdx`` is an RDS file (gzip- or zlib-compressed serialization) of a
list whose ``variables`` element maps each dataset's name to an ``(offset, length)`` pair; the
``.rdb`` is the concatenation of the entries, each a 4-byte big-endian uncompressed length then
the compressed serialization of one object (zlib when ``compressed`` is 1; with ``compressed``
2 or 3 a type byte follows the length: ``Z`` zlib, ``2`` bzip2, ``X`` xz, ``0`` stored).

:func:`unserialize` decodes R's XDR serialization (format versions 2 and 3, written by
``saveRDS``/``serialize``): logical, integer, double, complex, character and raw vectors, lists,
pairlists, symbols, attributes (names, class, levels, ``row.names``: data frames and factors come
back as :class:`RObject` with their attributes), references, the few special values and the
ALTREP forms R writes for compact integer sequences and wrapped vectors.  Strings are decoded
from their recorded encoding (UTF-8, latin-1, ASCII; native strings as UTF-8); ``NA`` is None.
Environments, closures and bytecode are not needed for data and raise :class:`RDataError`.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RDataError", "RObject", "RSymbol", "unserialize", "read_rds", "read_lazyload"]

NA_INTEGER = -(2**31)


class RDataError(ValueError):
    """Bytes that are not an R serialization this reader understands."""


@dataclass
class RObject:
    """An R value with attributes: ``value`` is the Python form of its data (a list for vectors
    and lists), ``attributes`` a dict (``names``, ``class``, ``levels``, ``row.names``...)."""

    value: object
    attributes: dict = field(default_factory=dict)

    def __getitem__(self, name: str | int):
        """The element ``name`` of a named list (a data frame's column), or element ``i``."""
        if isinstance(name, int):
            return self.value[name]
        names = self.attributes.get("names")
        if names is None or name not in names:
            raise KeyError(f"no element {name!r}; names: {names}")
        return self.value[names.index(name)]


@dataclass(frozen=True)
class RSymbol:
    name: str


# SEXP types and the special values of serialize.c
_NIL, _SYM, _LIST, _CLO, _ENV, _PROM, _LANG = 0, 1, 2, 3, 4, 5, 6
_CHAR, _LGL, _INT, _REAL, _CPLX, _STR, _DOT, _VEC, _EXPR, _RAW, _S4 = 9, 10, 13, 14, 15, 16, 17, 19, 20, 24, 25
_ALTREP, _ATTRLIST, _ATTRLANG, _BASEENV, _EMPTYENV = 238, 239, 240, 241, 242
_MISSINGARG, _BASENS, _GLOBALENV, _UNBOUND, _NILVALUE, _REF = 251, 250, 253, 252, 254, 255
_PERSIST, _PACKAGE, _NAMESPACE = 247, 248, 249
_PAIRLISTS = (_LIST, _LANG, _CLO, _PROM, _DOT, _ATTRLIST, _ATTRLANG)
_IS_OBJECT, _HAS_ATTR, _HAS_TAG = 1 << 8, 1 << 9, 1 << 10
_LATIN1, _UTF8, _ASCII, _BYTES = 1 << 2, 1 << 3, 1 << 6, 1 << 1


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.at, self.refs = data, 0, []

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise RDataError(f"truncated R serialization: need {n} bytes at offset {self.at}, have {len(self.data) - self.at}")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # a long vector: two 32-bit halves
            hi, lo = struct.unpack(">II", self.take(8))
            n = (hi << 32) + lo
        if n < 0:
            raise RDataError(f"negative vector length {n}")
        return n

    def attributes(self, flags: int) -> dict:
        if not flags & _HAS_ATTR:
            return {}
        pairs = self.item()
        if not isinstance(pairs, _Pairs):
            raise RDataError("attributes are not a pairlist")
        return _named(pairs)

    def chars(self, flags: int) -> str | None:
        n = self.int()
        if n == -1:
            return None
        raw = self.take(n)
        if (flags >> 12) & (_LATIN1 | _BYTES):  # latin-1, or raw bytes kept one character each
            return raw.decode("latin-1")
        return raw.decode("utf-8")  # UTF-8, ASCII, or native (read as UTF-8, the usual locale)

    def item(self):
        flags = self.int()
        kind = flags & 0xFF
        if kind in (_NILVALUE, _NIL):
            return None
        if kind == _REF:
            i = (flags >> 8) or self.int()
            if not 1 <= i <= len(self.refs):
                raise RDataError(f"reference {i} to an object not read yet ({len(self.refs)} so far)")
            return self.refs[i - 1]
        if kind in (_GLOBALENV, _BASEENV, _EMPTYENV, _BASENS, _UNBOUND, _MISSINGARG):
            return RSymbol({_GLOBALENV: "<globalenv>", _BASEENV: "<baseenv>", _EMPTYENV: "<emptyenv>",
                            _BASENS: "<basenamespace>", _UNBOUND: "<unbound>", _MISSINGARG: "<missing>"}[kind])
        if kind in (_PERSIST, _PACKAGE, _NAMESPACE):  # a reference by name (a lazy-load key, an environment)
            if self.int() != 0:
                raise RDataError(f"names of a persistent reference at offset {self.at - 4} are not a plain string vector")
            names = [self.item() for _ in range(self.int())]
            sym = RSymbol(f"<{ {_PERSIST: 'persistent', _PACKAGE: 'package', _NAMESPACE: 'namespace'}[kind]}:"
                          f"{':'.join(str(x) for x in names)}>")
            self.refs.append(sym)
            return sym
        if kind == _SYM:
            sym = RSymbol(self.item())
            self.refs.append(sym)
            return sym
        if kind in _PAIRLISTS:
            return self.pairlist(flags)
        if kind == _CHAR:
            return self.chars(flags)
        if kind == _ALTREP:
            return self.altrep()
        readers = {
            _LGL: lambda n: [None if v == NA_INTEGER else bool(v) for v in struct.unpack(f">{n}i", self.take(4 * n))],
            _INT: lambda n: [None if v == NA_INTEGER else v for v in struct.unpack(f">{n}i", self.take(4 * n))],
            _REAL: lambda n: list(struct.unpack(f">{n}d", self.take(8 * n))),
            _CPLX: lambda n: [complex(*p) for p in zip(*[iter(struct.unpack(f">{2 * n}d", self.take(16 * n)))] * 2)],
            _STR: lambda n: [self.item() for _ in range(n)],
            _VEC: lambda n: [self.item() for _ in range(n)],
            _EXPR: lambda n: [self.item() for _ in range(n)],
            _RAW: lambda n: self.take(n),
        }
        if kind not in readers:
            raise RDataError(f"R object type {kind} (flags {flags:#x}) at offset {self.at - 4} is not data this reader "
                             "handles (environments, closures, bytecode, S4 objects)")
        value = readers[kind](self.length())
        attrs = self.attributes(flags)
        return RObject(value, attrs) if attrs else value

    def pairlist(self, flags: int) -> "_Pairs":
        items = []
        attrs = {}
        while True:
            kind = flags & 0xFF
            if kind not in _PAIRLISTS:
                raise RDataError(f"a pairlist ends in type {kind}, not NULL")
            if flags & _HAS_ATTR:
                attrs = self.attributes(flags)
            tag = self.item() if flags & _HAS_TAG else None
            items.append((tag, self.item()))
            flags = self.int()  # the CDR, read iteratively (long pairlists stay flat)
            if flags & 0xFF in (_NILVALUE, _NIL):
                return _Pairs(items, attrs)
            if flags & 0xFF not in _PAIRLISTS:
                self.at -= 4
                items.append((None, self.item()))
                return _Pairs(items, attrs)

    def altrep(self):
        info, state, attr = self.item(), self.item(), self.item()
        cls = info.items[0][1].name if isinstance(info, _Pairs) and info.items else None
        if cls == "compact_intseq":
            n, start, step = (int(v) for v in state)
            value = list(range(start, start + n * step, step))
        elif cls == "compact_realseq":
            n, start, step = state
            value = [start + i * step for i in range(int(n))]
        elif cls in ("wrap_integer", "wrap_real", "wrap_string", "wrap_logical", "wrap_complex", "wrap_raw", "wrap_list"):
            value = state[0] if isinstance(state, list) else state.value[0]
            value = value.value if isinstance(value, RObject) else value
        elif cls == "deferred_string":
            arg = state.items[0][1] if isinstance(state, _Pairs) else state
            arg = arg.value if isinstance(arg, RObject) else arg
            value = [None if v is None else (format(v, ".15g") if isinstance(v, float) else str(v)) for v in arg]
        else:
            raise RDataError(f"ALTREP class {cls!r} is not one this reader expands")
        attrs = _named(attr) if isinstance(attr, _Pairs) else {}
        return RObject(value, attrs) if attrs else value


@dataclass
class _Pairs:
    """A pairlist: (tag, value) items (attributes, argument lists)."""

    items: list
    attributes: dict = field(default_factory=dict)


def _named(pairs: _Pairs) -> dict:
    return {(k.name if isinstance(k, RSymbol) else str(k)): v for k, v in pairs.items}


def unserialize(data: bytes):
    """The Python form of one R XDR serialization (``X\\n`` header, format 2 or 3)."""
    r = _Reader(bytes(data))
    head = r.take(2)
    if head != b"X\n":
        raise RDataError(f"not an R XDR serialization (header {head!r}; ASCII and native binary formats are not read)")
    version = r.int()
    r.int(), r.int()  # writer's R version, minimal reader version
    if version == 3:
        r.take(r.int())  # the writer's native encoding
    elif version != 2:
        raise RDataError(f"R serialization format version {version} (this reader knows 2 and 3)")
    value = r.item()
    return value.items if isinstance(value, _Pairs) else value


def _decompress(data: bytes) -> bytes:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:3] == b"BZh":
        return bz2.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    if data[:2] == b"X\n":
        return data
    return zlib.decompress(data)


def read_rds(path):
    """The object of an RDS file (``saveRDS``: gzip, bzip2, xz or uncompressed)."""
    return unserialize(_decompress(Path(path).read_bytes()))


def _entry(blob: bytes, compressed: int) -> bytes:
    size = struct.unpack(">I", blob[:4])[0]
    if compressed in (2, 3):
        kind, body = blob[4:5], blob[5:]
        out = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes}
        if kind not in out:
            raise RDataError(f"lazy-load entry compressed with unknown type {kind!r}")
        data = out[kind](body)
    else:
        data = zlib.decompress(blob[4:])
    if len(data) != size:
        raise RDataError(f"lazy-load entry: {len(data)} bytes after decompression, its header says {size}")
    return data


def read_lazyload(rdx, rdb=None) -> dict:
    """Every variable of a lazy-load database: ``{name: value}`` (``rdb`` defaults to ``rdx``
    with the suffix ``.rdb``; values as :func:`unserialize` gives them)."""
    rdx = Path(rdx)
    rdb = rdx.with_suffix(".rdb") if rdb is None else Path(rdb)
    index = read_rds(rdx)
    if not isinstance(index, RObject) or "variables" not in (index.attributes.get("names") or []):
        raise RDataError(f"{rdx} is not a lazy-load index (an R list with 'variables')")
    variables = index["variables"]
    names = variables.attributes.get("names", []) if isinstance(variables, RObject) else []
    compressed = index["compressed"] if "compressed" in index.attributes["names"] else [True]
    compressed = int(compressed[0]) if isinstance(compressed, list) else int(compressed)
    data = rdb.read_bytes()
    out = {}
    for name, (offset, length) in zip(names, variables.value):
        out[name] = unserialize(_entry(data[int(offset):int(offset) + int(length)], compressed))
    return out
