"""One binary codec for the kmodel v3 and v4 readers and writers (STYLE "Binary writers mirror readers").

Each layout is described once and both directions derive from that description:
- `Reader` / `Writer`: cursors over a whole file. Positions are absolute file offsets, so `align(n)` means
  what the kmodel specs mean by alignment (kmodel-v3.md §1, kmodel-v4.md §2: always the absolute offset).
- `Struct(fmt, load, dump)`: a fixed little-endian struct and the conversion to and from its Python value
  (a scalar, a shape tuple, ...). `Record(name, fmt, fields)`: a Struct with named fields, decoded into a
  frozen dataclass (or into `cls`, e.g. a NamedTuple) and packed back from any object with those attributes.
- `Array`, `ListOf`, `Rest`: variable-size fields whose length follows from the fields read before them.
- `codec_field(codec)` + `read_fields` / `write_fields`: a dataclass whose fields carry their codecs is read
  and written field by field in declaration order (v4 node bodies).
Every codec has `read(r, ctx) -> value` and `write(w, value, ctx)`; `ctx` is what the layout depends on
(the fields read so far for a body field, the file header for a v3 body).
Every length is checked against the bytes left in the file before anything is allocated: a damaged count
raises MalformedModel instead of asking numpy for gigabytes.
"""
from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from compiler.errors import MalformedModel


def align_up(value: int, n: int) -> int:
    """The smallest multiple of `n` that is >= `value`."""
    return -(-value // n) * n


class Reader:
    """A read cursor over a whole file; positions and alignment are absolute file offsets."""

    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def need(self, n: int, what: str = "") -> None:
        """Raise unless `n` more bytes exist at the cursor (checked before anything is allocated)."""
        if n < 0 or self.pos < 0 or self.pos + n > len(self.data):
            what = f"{what}: " if what else ""
            raise MalformedModel(f"{what}truncated file: need {n} bytes at offset {self.pos}, "
                                 f"the file has {len(self.data)}")

    def read(self, n: int) -> bytes:
        """The next `n` bytes (a short read past the end is an error)."""
        self.need(n)
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
        if count < 0:
            raise MalformedModel(f"negative element count {count} at offset {self.pos}")
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


# ---------------------------------------------------------------- fixed-size codecs
class Struct:
    """A fixed struct: `Struct("<4i", tuple, tuple)`; `load(tuple) -> value` and `dump(value) -> tuple`."""

    def __init__(self, fmt: str, load: Callable[[tuple], Any] = lambda t: t[0],
                 dump: Callable[[Any], tuple] = lambda v: (v,)):
        self.struct, self.load, self.dump = struct.Struct(fmt), load, dump

    @property
    def size(self) -> int:
        return self.struct.size

    def unpack(self, buf, offset: int = 0):
        """Decode the value at `offset` of `buf`."""
        if offset < 0 or offset + self.size > len(buf):
            raise MalformedModel(f"{self._name()}: needs {self.size} bytes at offset {offset}, "
                                 f"the file has {len(buf)}")
        return self.load(self.struct.unpack_from(buf, offset))

    def pack(self, value) -> bytes:
        return self.struct.pack(*self.dump(value))

    def read(self, r: Reader, ctx=None):
        """Decode the value at the reader's position and move past it."""
        value = self.unpack(r.data, r.pos)
        r.pos += self.size
        return value

    def write(self, w: Writer, value, ctx=None) -> None:
        w.write(self.pack(value))

    def _name(self) -> str:
        return f"struct {self.struct.format}"


class Record(Struct):
    """A fixed record with named fields: `Record("Add", "<5I", "flags a b out count")`.

    unpack -> a frozen dataclass named `name` (or `cls(*values)` when given, e.g. a NamedTuple);
    pack <- any object with those attribute names. The generated dataclass has `write(w, ctx)`, so a v3
    fixed body writes itself like the variable ones."""

    def __init__(self, name: str, fmt: str, fields: str, cls: type | None = None):
        self.name, self.fields = name, tuple(fields.split())
        if len(struct.unpack(fmt, bytes(struct.calcsize(fmt)))) != len(self.fields):
            raise ValueError(f"record {name}: format {fmt!r} does not match {len(self.fields)} fields")
        self._type = cls
        super().__init__(fmt, lambda t: self.type(*t), lambda v: tuple(getattr(v, f) for f in self.fields))

    @property
    def type(self) -> type:
        """The record's class, made on first use: a file uses a few of the many layer kinds, and making a
        dataclass costs about a millisecond of start-up each."""
        if self._type is None:
            record = self

            def write(value, w: Writer, ctx=None) -> None:
                w.write(record.pack(value))

            self._type = dataclasses.make_dataclass(self.name, self.fields, frozen=True, namespace={"write": write})
        return self._type

    def make(self, **values):
        """Build a record; missing fields default to 0."""
        return self.type(**{f: values.pop(f, 0) for f in self.fields}, **values)

    def _name(self) -> str:
        return self.name


# ---------------------------------------------------------------- variable-size codecs
Count = Callable[[Any], int]


def _count(count: Count, ctx, what: str) -> int:
    try:
        n = int(count(ctx))
    except ZeroDivisionError:
        raise MalformedModel(f"{what}: its element count divides by a zero field") from None
    if n < 0:
        raise MalformedModel(f"{what}: negative element count {n}")
    return n


class Array:
    """`count(ctx)` little-endian items of `dtype` as a numpy array."""

    def __init__(self, dtype: str, count: Count):
        self.dtype, self.count = dtype, count

    def read(self, r: Reader, ctx=None) -> np.ndarray:
        return r.array(self.dtype, _count(self.count, ctx, f"array of {self.dtype}"))

    def write(self, w: Writer, value, ctx=None) -> None:
        w.array(value, self.dtype)


class ListOf:
    """`count(ctx)` values of one fixed codec, as a tuple."""

    def __init__(self, codec: Struct, count: Count):
        self.codec, self.count = codec, count

    def read(self, r: Reader, ctx=None) -> tuple:
        n = _count(self.count, ctx, f"list of {self.codec._name()}")
        r.need(n * self.codec.size, f"{n} x {self.codec._name()}")
        return tuple(self.codec.read(r) for _ in range(n))

    def write(self, w: Writer, value, ctx=None) -> None:
        for v in value:
            self.codec.write(w, v)


class Rest:
    """All remaining bytes of the body, padding included; `ctx["_body_end"]` marks the body's end."""

    def read(self, r: Reader, ctx) -> bytes:
        return r.read(max(0, ctx["_body_end"] - r.pos))

    def write(self, w: Writer, value: bytes, ctx=None) -> None:
        w.write(bytes(value))


# ---------------------------------------------------------------- dataclasses whose fields carry codecs
def codec_field(codec) -> Any:
    """A dataclass field serialized by `codec` (declaration order is file order)."""
    return dataclasses.field(metadata={"codec": codec})


def read_fields(cls, r: Reader, body_end: int):
    """Decode a codec-field dataclass at r.pos; a class with its own `read(r, ctx)` decodes itself."""
    done = {"_body_end": body_end}
    if hasattr(cls, "read"):
        return cls.read(r, done)
    for f in dataclasses.fields(cls):
        done[f.name] = f.metadata["codec"].read(r, done)
    del done["_body_end"]
    return cls(**done)


def write_fields(obj, w: Writer) -> None:
    """The mirror of read_fields: encode `obj` at w.pos (padding is the caller's job)."""
    if hasattr(obj, "write"):
        return obj.write(w)
    for f in dataclasses.fields(obj):
        f.metadata["codec"].write(w, getattr(obj, f.name))
