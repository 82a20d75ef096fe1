"""Binary helpers for the kmodel readers and writers, so that each layout is described once.

- `Record`: a fixed little-endian record (a `struct` format plus field names) that unpacks into a frozen
  dataclass and packs it back.
- `Reader` / `Writer`: a cursor over a whole file. Positions are absolute file offsets, so `align(n)` means
  what the kmodel specs mean by alignment (kmodel-v3.md §1: always the absolute offset).
- `pack_bits` / `unpack_bits` (scalars) and `pack_bits_array` / `unpack_bits_array` (numpy u64 arrays):
  bit fields of a 64-bit word, driven by one `(field, lsb, width)` table per word (kpu.md §3, §4).
"""
from __future__ import annotations

import dataclasses
import struct

import numpy as np

from compiler.errors import MalformedModel

BitTable = tuple[tuple[str, int, int], ...]


class Record:
    """A fixed record: `Record("Add", "<5I", "flags a b out count")`; unpack -> frozen dataclass, pack <- it."""

    def __init__(self, name: str, fmt: str, fields: str):
        self.struct = struct.Struct(fmt)
        self.fields = tuple(fields.split())
        if len(self.struct.unpack(bytes(self.struct.size))) != len(self.fields):
            raise ValueError(f"record {name}: format {fmt!r} does not match {len(self.fields)} fields")
        record = self

        def write(body, w: "Writer", header=None) -> None:
            w.write(record.pack(body))

        self.type = dataclasses.make_dataclass(name, self.fields, frozen=True, namespace={"write": write})

    @property
    def size(self) -> int:
        return self.struct.size

    def unpack(self, buf, offset: int = 0):
        """Decode the record at `offset` of `buf`."""
        if offset + self.size > len(buf):
            raise MalformedModel(f"{self.type.__name__}: needs {self.size} bytes at offset {offset}, "
                                 f"the file has {len(buf)}")
        return self.type(*self.struct.unpack_from(buf, offset))

    def pack(self, rec) -> bytes:
        """Encode a record (the dataclass, or any object with the same attribute names)."""
        return self.struct.pack(*(getattr(rec, f) for f in self.fields))

    def read(self, r: "Reader", header=None):
        """Decode the record at the reader's position and move past it."""
        rec = self.unpack(r.data, r.pos)
        r.pos += self.size
        return rec

    def make(self, **values):
        """Build a record; missing fields default to 0."""
        return self.type(**{f: values.pop(f, 0) for f in self.fields}, **values)


class Reader:
    """A read cursor over a whole file; positions and alignment are absolute file offsets."""

    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def read(self, n: int) -> bytes:
        """The next `n` bytes (a short read past the end is an error)."""
        if n < 0 or self.pos + n > len(self.data):
            raise MalformedModel(f"truncated file: need {n} bytes at offset {self.pos}, the file has {len(self.data)}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return bytes(out)

    def skip_to(self, pos: int) -> bytes:
        """Move forward to `pos`, returning the skipped bytes (padding, which should be zero)."""
        if pos < self.pos:
            raise MalformedModel(f"offset {pos} points backwards (reader at {self.pos})")
        return self.read(pos - self.pos)

    def align(self, n: int) -> bytes:
        """Skip to the next multiple of `n`; returns the skipped bytes."""
        return self.skip_to(align_up(self.pos, n))

    def array(self, dtype, count: int) -> np.ndarray:
        """`count` little-endian items of `dtype`, copied out of the file."""
        dt = np.dtype(dtype).newbyteorder("<")
        return np.frombuffer(self.read(dt.itemsize * count), dt).astype(dt.newbyteorder("="))

    def u32(self) -> int:
        return struct.unpack("<I", self.read(4))[0]


class Writer:
    """An in-memory write cursor; `align(n)` pads with zeros to an absolute multiple of `n`."""

    def __init__(self):
        self.buf = bytearray()

    @property
    def pos(self) -> int:
        return len(self.buf)

    def write(self, data) -> None:
        self.buf += data

    def array(self, arr: np.ndarray, dtype) -> None:
        """Write `arr` as little-endian `dtype`."""
        self.buf += np.ascontiguousarray(arr, np.dtype(dtype).newbyteorder("<")).tobytes()

    def align(self, n: int) -> None:
        self.buf += bytes(align_up(self.pos, n) - self.pos)

    def getvalue(self) -> bytes:
        return bytes(self.buf)


def align_up(value: int, n: int) -> int:
    """The smallest multiple of `n` that is >= `value`."""
    return -(-value // n) * n


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
