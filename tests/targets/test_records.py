"""The shared binary codec (targets/k210/records.py): each layout described once, both directions derived."""
import dataclasses
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given, strategies as st

from compiler.errors import MalformedModel
from targets.k210.records import (
    Array,
    ListOf,
    Reader,
    Record,
    Rest,
    Struct,
    Writer,
    align_up,
    codec_field,
    read_fields,
    write_fields,
)

PAIR = Record("Pair", "<Ii", "start delta")


class Span(NamedTuple):
    lo: int
    hi: int


SPAN = Record("Span", "<2H", "lo hi", Span)


@dataclasses.dataclass(eq=False)
class Demo:
    """A variable body: a count, that many pairs, a float array sized by the count, then the rest."""
    count: int = codec_field(Struct("<I"))
    pairs: tuple = codec_field(ListOf(PAIR, lambda v: v["count"]))
    span: Span = codec_field(SPAN)
    values: np.ndarray = codec_field(Array("<f4", lambda v: 2 * v["count"]))
    tail: bytes = codec_field(Rest())


@given(st.integers(0, 2**32 - 1), st.integers(-2**31, 2**31 - 1))
def test_record_round_trip(start, delta):
    rec = PAIR.make(start=start, delta=delta)
    assert PAIR.unpack(PAIR.pack(rec)) == rec
    assert dataclasses.replace(rec, delta=0).start == start      # a frozen dataclass by default


def test_record_into_a_named_tuple_and_make_defaults():
    assert SPAN.unpack(b"\x01\x00\x02\x00") == Span(1, 2)
    assert PAIR.make(start=3) == PAIR.type(3, 0)
    with pytest.raises(ValueError, match="does not match"):
        Record("Bad", "<3I", "a b")


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(-2**31, 2**31 - 1)), max_size=5),
       st.integers(0, 65535), st.integers(0, 65535), st.binary(max_size=12))
def test_codec_fields_read_what_they_write(pairs, lo, hi, tail):
    n = len(pairs)
    demo = Demo(n, tuple(PAIR.make(start=s, delta=d) for s, d in pairs), Span(lo, hi),
                np.arange(2 * n, dtype=np.float32), tail)
    w = Writer()
    write_fields(demo, w)
    back = read_fields(Demo, Reader(w.getvalue()), body_end=w.pos)
    assert (back.count, back.pairs, back.span, back.tail) == (demo.count, demo.pairs, demo.span, demo.tail)
    np.testing.assert_array_equal(back.values, demo.values)


def test_counts_are_checked_against_the_file_before_allocating():
    w = Writer()
    write_fields(Demo(0, (), Span(0, 0), np.zeros(0, np.float32), b""), w)
    data = bytearray(w.getvalue())
    data[:4] = (0x7FFFFFFF).to_bytes(4, "little")            # two billion pairs in a 12-byte body
    with pytest.raises(MalformedModel, match="truncated file: need 17179869176 bytes"):
        read_fields(Demo, Reader(bytes(data)), body_end=len(data))
    with pytest.raises(MalformedModel, match="negative element count"):
        Array("<f4", lambda v: -1).read(Reader(b""), {})
    with pytest.raises(MalformedModel, match="divides by a zero field"):
        Array("<f4", lambda v: 4 // v["groups"]).read(Reader(b""), {"groups": 0})
    with pytest.raises(MalformedModel, match="Pair: needs 8 bytes at offset 4"):
        PAIR.unpack(bytes(10), 4)


def test_alignment_is_absolute():
    w = Writer()
    w.write(b"\x01" * 5)
    w.align(8)
    assert w.getvalue() == b"\x01" * 5 + bytes(3)
    r = Reader(w.getvalue(), 3)
    assert r.align(4) == b"\x01" and r.pos == 4
    assert [align_up(v, 8) for v in (0, 1, 8, 9)] == [0, 8, 8, 16]
    with pytest.raises(MalformedModel, match="points backwards"):
        r.skip_to(2)
