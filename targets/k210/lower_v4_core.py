"""What every kmodel v4 emitter shares: the LOWER_V4 table, buffers and steps, the lowering context.

The driver (placement, order, assembly) is targets/k210/lower_v4.py; the emitters live in the family
files lower_v4_math.py, lower_v4_shape.py and lower_v4_quant.py and import only this module.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from compiler.errors import KpucError
from compiler.ir import Graph, Node, Value
from compiler.registry import registrar
from targets.k210 import kmodel_v4 as k4

TARGETS = ("k210", "cpu")
INPUT_TYPES = ("default", "uint8", "float")
DATATYPES = {"float32": k4.DT_FLOAT32, "uint8": k4.DT_UINT8}
POOL_ALIGN = {k4.MEM_CONST: 8, k4.MEM_MAIN: 8, k4.MEM_KPU: 64}  # §6.1 allocation units
KPU_OPCODES = frozenset({k4.KpuUpload.opcode, k4.KpuConv2D.opcode})

Emitter = Callable[["Lowering", Node], None]
LOWER_V4: dict[str, Emitter] = {}


emitter = registrar(LOWER_V4)   # @emitter(*ops): lowers IR nodes of `ops` (one function may serve several)


# ---------------------------------------------------------------- buffers and steps
@dataclass(eq=False)
class Buffer:
    """One tensor's bytes in a pool; a view (`base` set) shares its base's memory at `offset`."""
    name: str
    pool: int                        # k4.MEM_CONST / MEM_MAIN / MEM_KPU
    datatype: int                    # k4.DT_FLOAT32 / DT_UINT8
    size: int                        # exact bytes (§4.1); KPU maps: kpu_bytes(shape)
    data: bytes | None = None        # constants only
    base: Buffer | None = None
    offset: int = 0
    start: int | None = None         # placement, roots only

    @property
    def root(self) -> Buffer:
        return self if self.base is None else self.base.root

    @property
    def root_offset(self) -> int:
        return self.offset + (self.base.root_offset if self.base is not None else 0)

    def range(self) -> k4.MemoryRange:
        root = self.root
        if root.start is None:
            raise KpucError(f"buffer {self.name} was never placed")
        return k4.MemoryRange(self.pool, self.datatype, root.start + self.root_offset, self.size)


@dataclass(eq=False)
class Step:
    """One kmodel node to be: its body (with Buffer placeholders) and the buffers it reads and writes."""
    body: Any
    reads: tuple[Buffer, ...]
    writes: tuple[Buffer, ...]
    finish: Callable[[Any], Any] | None = None   # body -> body once buffers are placed (KPU addresses)
    source: str = ""                             # IR node name, for error messages and describe


def _resolve(value):
    if isinstance(value, Buffer):
        return value.range()
    if isinstance(value, tuple) and value and all(isinstance(v, Buffer) for v in value):
        return tuple(v.range() for v in value)
    return value


def resolve_body(body):
    """The body with every Buffer placeholder (and tuple of them) replaced by its MemoryRange."""
    return dataclasses.replace(body, **{f.name: _resolve(getattr(body, f.name)) for f in dataclasses.fields(body)
                                        if isinstance(getattr(body, f.name), (Buffer, tuple))})


def _body_buffers(body) -> tuple[list[Buffer], list[Buffer]]:
    """(reads, writes) by field name: `output` is written, every other range field read (node_ranges)."""
    reads, writes = [], []
    for f in dataclasses.fields(body):
        v = getattr(body, f.name)
        for b in (v if isinstance(v, tuple) else (v,)):
            if isinstance(b, Buffer):
                (writes if f.name == "output" else reads).append(b)
    return reads, writes


# ---------------------------------------------------------------- the lowering context
class Lowering:
    """State while lowering one graph: value -> buffer maps, the constants and the emitted steps."""

    def __init__(self, graph: Graph, target: str, input_type: str = "default"):
        if target not in TARGETS:
            raise KpucError(f"unknown target '{target}' (expected one of: {', '.join(TARGETS)})")
        if input_type not in INPUT_TYPES:
            raise KpucError(f"unknown input type '{input_type}' (expected one of: {', '.join(INPUT_TYPES)})")
        self.graph, self.target, self.input_type = graph, target, input_type
        self.inputs: dict[Value, Buffer] = {}  # model input -> the buffer the host writes
        self.steps: list[Step] = []
        self.main: dict[Value, Buffer] = {}    # value -> buffer in main memory (or const / a view)
        self.kpu: dict[Value, Buffer] = {}     # value -> its map in KPU RAM
        self.presets: dict[Value, Buffer] = {}  # outputs an earlier decision placed (in-place concat)
        self.absorbed: set[Node] = set()        # nodes another emitter already lowered (fused bias add)
        self.subsample: dict[Node, tuple] = {}  # KPU layer -> (full map it reads, pool replacing a slice)
        self.subsampled_by: dict[Node, Value] = {}  # slices folded into the pools of their readers
        self.node: Node | None = None

    # -------- buffers
    def new_buffer(self, name: str, shape, dtype: str, pool: int = k4.MEM_MAIN) -> Buffer:
        dt = self.datatype(dtype, name)
        if pool == k4.MEM_KPU:
            size = k4.kpu_bytes(shape4(shape))
        else:
            size = int(np.prod(shape, dtype=np.int64)) * k4.DTYPES[dt].itemsize
        return Buffer(name, pool, dt, size)

    def datatype(self, dtype: str, what: str = "") -> int:
        if dtype not in DATATYPES:
            raise KpucError(f"{what or (self.node and self.node.name)}: kmodel v4 holds float32 and uint8 "
                            f"tensors only, not {dtype}")
        return DATATYPES[dtype]

    def const(self, array: np.ndarray, name: str) -> Buffer:
        """A new constant in the blob (float32 stays float32, uint8 stays uint8)."""
        arr = np.ascontiguousarray(array)
        dt = self.datatype(arr.dtype.name, name)
        data = arr.astype(k4.DTYPES[dt]).tobytes()
        return Buffer(name, k4.MEM_CONST, dt, len(data), data=data)

    def buffer(self, v: Value) -> Buffer:
        """Where value `v` lives in main memory (constants: in the blob), for a CPU op to read."""
        if v in self.main:
            return self.main[v]
        if v.is_constant:
            self.main[v] = self.const(v.data, v.name)
            return self.main[v]
        if v in self.kpu:
            raise KpucError(f"{self.node.name}: %{v.name} lives in KPU RAM only (no main-memory copy was made)")
        raise KpucError(f"{self.node.name}: %{v.name} has not been lowered yet")

    def output(self, v: Value, pool: int = k4.MEM_MAIN) -> Buffer:
        """The buffer an emitter writes value `v` into (created here unless a decision preset it)."""
        if pool == k4.MEM_MAIN and v in self.presets:
            buf = self.presets.pop(v)
        else:
            buf = self.new_buffer(v.name, v.shape, v.dtype, pool)
        (self.kpu if pool == k4.MEM_KPU else self.main)[v] = buf
        return buf

    def temp(self, name: str, shape, dtype: str = "float32", pool: int = k4.MEM_MAIN) -> Buffer:
        """A buffer for an intermediate result that no IR value names."""
        return self.new_buffer(f"{self.node.name}/{name}", shape, dtype, pool)

    def view(self, name: str, base: Buffer, offset: int, size: int) -> Buffer:
        """`size` bytes of `base` from byte `offset` (same pool and datatype)."""
        return Buffer(name, base.pool, base.datatype, size, base=base, offset=offset)

    # -------- steps
    def emit(self, body, *, reads=None, writes=None, finish=None) -> None:
        """Append one kmodel node; reads/writes default to the body's range fields (`output` is written)."""
        if self.target == "cpu" and body.opcode in KPU_OPCODES:
            raise KpucError(f"{self.node.name}: {body.op_name} needs the KPU, but the target is cpu")
        r, w = _body_buffers(body)
        self.steps.append(Step(body, tuple(r if reads is None else reads), tuple(w if writes is None else writes),
                               finish, self.node.name if self.node else ""))


def shape4(shape) -> tuple[int, int, int, int]:
    """A runtime_shape_t: the shape left-padded with 1s to 4-D (§1); leading 1s beyond 4-D are dropped."""
    shape = tuple(int(d) for d in shape)
    while len(shape) > 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) > 4:
        raise KpucError(f"kmodel v4 shapes are at most 4-D, not {shape}")
    return (1,) * (4 - len(shape)) + shape


def value_range(clamp) -> k4.ValueRange:
    """A fused clamp (lo, hi) as value_range<float>: infinities become ∓FLT_MAX (§4.2)."""
    lo, hi = clamp if clamp is not None else (-math.inf, math.inf)
    return k4.ValueRange(max(float(lo), -k4.FLT_MAX), min(float(hi), k4.FLT_MAX))


