"""kmodel v3 lowering, shared parts: the memory pools, the `Lowering` state (buffers, layers, where each IR
value lives), shape helpers and the `LOWER_V3` table the op modules fill (lower_v3.py has the overview)."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from compiler.ir import Graph, Node, Value
from compiler.registry import registrar
from targets.k210.kmodel_v3 import FIXED_BODIES, LayerType
from targets.k210.kpu_layout import KPU_RAM_ROWS, kpu_rows
from targets.k210.planner import Buffer, Pool, Step

# Main memory: the K210's 6 MiB of general SRAM bound the working buffer (the KPU's 2 MiB are separate).
MAIN = Pool("main", 6 * 1024 * 1024, 8, "bytes", "nncase_main", "main memory")   # kmodel-v3.md §9.1
KPU = Pool("kpu", KPU_RAM_ROWS, 1, "rows", "nncase_kpu", "KPU RAM")         # kmodel-v3.md §9.2
ACTIVATIONS = {(0.0, math.inf): 1, (0.0, 6.0): 2}                            # SDK float act enum (§8)
NO_CLAMP = (-math.inf, math.inf)
# A Dequantize with a zero point cannot round like the IR's (q − zp)·d; up to this many elements an
# exact two-layer form costs 4·n² bytes of weights (dequantize below).
EXACT_DEQUANTIZE_MAX = 32


class Unexpressible(Exception):
    """This node (or pattern) has no kmodel v3 form; the message says why."""


class Ref(NamedTuple):
    """A place in a buffer: main memory (offset in bytes) or KPU RAM (offset in rows)."""
    buffer: str
    offset: int = 0


@dataclass
class Emitted:
    name: str
    type: LayerType
    make: Callable[[Callable[[Ref], int]], object]      # address of a Ref -> layer body


@dataclass
class Lowering:
    """State of one lowering: the schedule, the buffers and where each IR value lives."""
    graph: Graph
    steps: list[Step] = field(default_factory=list)
    layers: list[Emitted] = field(default_factory=list)
    buffers: dict[str, Buffer] = field(default_factory=dict)
    main_refs: dict[Value, Ref] = field(default_factory=dict)
    kpu_refs: dict[Value, Ref] = field(default_factory=dict)
    absorbed: dict[Node, Node] = field(default_factory=dict)     # absorbed node -> the node that took it
    fc_inputs: dict[Node, tuple[Value, Node | None]] = field(default_factory=dict)   # see _claim_inputs
    model_input: Value | None = None      # the value the kmodel's input is (the graph input or its quantize)
    inexact: list[str] = field(default_factory=list)     # layers that only approximate their IR op
    eight_bit: bool = True

    # ---- buffers
    def _buffer(self, name: str, pool: str, size: int) -> Ref:
        self.buffers[name] = Buffer(name, pool, size)
        return Ref(name)

    def main(self, v: Value, extra_bytes: int = 0) -> Ref:
        """The main-memory copy of `v` (dense C×H×W, f32 or u8), created on first request."""
        if v not in self.main_refs:
            self.main_refs[v] = self._buffer(v.name, "main", nbytes(v) + extra_bytes)
        elif extra_bytes:
            ref = self.main_refs[v]
            b = self.buffers[ref.buffer]
            self.buffers[b.name] = Buffer(b.name, b.pool, max(b.size, nbytes(v) + ref.offset + extra_bytes))
        return self.main_refs[v]

    def scratch(self, name: str, size_bytes: int) -> Ref:
        """A main-memory buffer that is no IR value (the C codes K210AddPadding reads)."""
        return self._buffer(name, "main", size_bytes)

    def kpu(self, v: Value) -> Ref:
        """The KPU RAM copy of `v` (a u8 N=1 map in the KPU row layout)."""
        if v not in self.kpu_refs:
            c, h, w = chw(v)
            self.kpu_refs[v] = self._buffer(v.name + "@kpu", "kpu", kpu_rows(c, h, w))
        return self.kpu_refs[v]

    def alias(self, out: Value, src: Value) -> None:
        """`out` is `src` reinterpreted (a reshape): same bytes, no layer."""
        self.main_refs[out] = self.main(src)

    def absorb(self, node: Node, into: Node) -> None:
        self.absorbed[node] = into

    # ---- layers
    def emit(self, name: str, type: LayerType, reads: list[Ref], writes: list[Ref], make) -> None:
        self.steps.append(Step(name, tuple(r.buffer for r in reads), tuple(r.buffer for r in writes)))
        self.layers.append(Emitted(name, type, make))


def nbytes(v: Value) -> int:
    return v.type.size * np.dtype(v.dtype).itemsize


def chw(v: Value) -> tuple[int, int, int]:
    """(C, H, W) of a batch-1 NCHW map; lower ranks are read with leading 1s."""
    shape = v.shape
    if len(shape) > 4 or len(shape) == 4 and shape[0] != 1:
        raise Unexpressible(f"{v.name} has shape {shape}; kmodel v3 layers take batch-1 C×H×W maps")
    return shape[1:] if len(shape) == 4 else (1,) * (3 - len(shape)) + shape


def vector_len(v: Value, axis: int | None = None) -> int:
    """Element count of a value that is one vector (every dim but `axis` is 1)."""
    others = [d for i, d in enumerate(v.shape) if i != axis] if axis is not None else []
    if any(d != 1 for d in others):
        raise Unexpressible(f"{v.name} {v.shape}: the v3 layer works on one vector, not along axis {axis} of a batch")
    return v.type.size


def sole_user(graph: Graph, v: Value) -> Node | None:
    users = v.user_nodes()
    return users[0] if len(users) == 1 and v not in graph.outputs else None


# ---------------------------------------------------------------- the table
LOWER_V3: dict[str, Callable[[Lowering, Node], None]] = {}


lowers = registrar(LOWER_V3)   # @lowers(*ops): the v3 emitter of each IR op in `ops`


def fixed(type: LayerType, **fields):
    """A fixed-size body maker: fields may be Refs (resolved to addresses) or plain values."""
    record = FIXED_BODIES[type]

    def make(addr):
        return record.make(**{k: addr(v) if isinstance(v, Ref) else v for k, v in fields.items()})
    return make


@lowers("input", "constant")
def _nothing(ctx: Lowering, node: Node) -> None:
    """Inputs live where their first consumer reads them; constants live inside layer bodies."""


@lowers("reshape")
def reshape(ctx: Lowering, node: Node) -> None:
    ctx.alias(node.output, node.inputs[0])
