"""Bit fields of the KPU's 64-bit words, each word described once by a `(field, lsb, width)` table.

- `pack_bits` / `unpack_bits` (scalars) and `pack_bits_array` / `unpack_bits_array` (numpy u64 arrays):
  bit fields of a 64-bit word, driven by one `(field, lsb, width)` table per word (kpu.md §3, §4).
The byte-level codec (Record, Reader, Writer, align_up) lives in records.py and is re-exported here for the
callers that import it from bits.
"""
from __future__ import annotations

import numpy as np

from compiler.errors import MalformedModel
from targets.k210.records import Reader, Record, Writer, align_up  # noqa: F401  (re-exported)

BitTable = tuple[tuple[str, int, int], ...]


def sign_extend(value: int, width: int) -> int:
    """Read the low `width` bits of `value` as two's complement."""
    value &= (1 << width) - 1
    return value - (1 << width) if value >> (width - 1) else value


def unpack_bits(table: BitTable, word: int, signed=()) -> dict[str, int]:
    """Fields of one 64-bit word; the fields named in `signed` are two's complement."""
    out = {}
    for name, lsb, width in table:
        v = (word >> lsb) & ((1 << width) - 1)
        out[name] = sign_extend(v, width) if name in signed else v
    return out


def pack_bits(table: BitTable, values, signed=()) -> int:
    """One 64-bit word from a mapping (or object) of field values; each value must fit its width."""
    get = values.__getitem__ if isinstance(values, dict) else lambda n: getattr(values, n)
    word = 0
    for name, lsb, width in table:
        v = int(get(name))
        lo, hi = (-(1 << (width - 1)), 1 << (width - 1)) if name in signed else (0, 1 << width)
        if not lo <= v < hi:
            raise MalformedModel(f"field {name} = {v} does not fit {'s' if name in signed else 'u'}{width}")
        word |= (v & ((1 << width) - 1)) << lsb
    return word


def unpack_bits_array(table: BitTable, words: np.ndarray, signed=()) -> dict[str, np.ndarray]:
    """Vectorized `unpack_bits` over a u64 array; every field comes back as int64."""
    words = np.asarray(words, np.uint64)
    out = {}
    for name, lsb, width in table:
        v = ((words >> np.uint64(lsb)) & np.uint64((1 << width) - 1)).astype(np.int64)
        if name in signed:
            v = np.where(v >> (width - 1) != 0, v - (1 << width), v)
        out[name] = v
    return out


def pack_bits_array(table: BitTable, values: dict, signed=()) -> np.ndarray:
    """Vectorized `pack_bits`: a u64 array from a dict of equally long integer arrays."""
    n = len(next(iter(values.values())))
    words = np.zeros(n, np.uint64)
    for name, lsb, width in table:
        v = np.asarray(values[name], np.int64)
        lo, hi = (-(1 << (width - 1)), 1 << (width - 1)) if name in signed else (0, 1 << width)
        if v.size and (v.min() < lo or v.max() >= hi):
            raise MalformedModel(f"field {name} does not fit {'s' if name in signed else 'u'}{width}")
        words |= (v.astype(np.uint64) & np.uint64((1 << width) - 1)) << np.uint64(lsb)
    return words
