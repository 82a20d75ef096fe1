"""kmodel v4 (nncase v0.2.x) reader, writer and describer.

Layout (spec kmodel-v4.md §2): header, input ranges, input shapes, output ranges, constants blob,
node headers (opcode, body_size), then the node bodies back to back, each zero-padded to a multiple
of 8 bytes of absolute file offset. Every body is one dataclass whose fields, in declaration
order, are the serialization order; each field carries its codec, so `read_v4` and `write_v4` are
derived from the same description (STYLE §5 "Binary writers mirror readers").

Round trip: `write_v4(read_v4(b)) == b` for every real v4 file. What makes that hold:
- header `reserved0` is garbage in real files (never initialised by nncase): kept on read and written
  back; a model built from scratch carries 0.
- nncase seeks instead of writing the last body's padding, so real files may end up to 7 bytes
  before `bodies_start + Σ body_size` (sdk_mask_detect.v4: 4 bytes). `KModelV4.tail_missing`
  records that and the writer drops the same bytes; a new model writes its full padding (0).
- body padding and the KPU table gaps are zero in every real file and are regenerated, not kept.
- kpu_conv2d tables are written 256-aligned as beta1+ does; alpha-era files (8-aligned batch-norm
  tables, spec §15) therefore do not round-trip byte for byte.

The vocabulary and codecs are in kmodel_v4_records.py, the bodies in kmodel_v4_ops.py (neutral ops) and
kmodel_v4_k210.py (cpu_* and KPU ops); this module re-exports them, so `k4.Conv2D` etc. keep working.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from compiler.errors import MalformedModel
from targets.k210.kmodel_v4_k210 import *  # noqa: F401,F403  (re-exported: the cpu_* and KPU bodies)
from targets.k210.kmodel_v4_k210 import CpuReduceWindow2D, KpuConv2D, KpuUpload
from targets.k210.kmodel_v4_ops import *  # noqa: F401,F403  (re-exported: the neutral bodies)
from targets.k210.kmodel_v4_ops import (
    Conv2D,
    MatMul,
    Pad,
    QuantizedConv2D,
    QuantizedMatMul,
    ReduceWindow2D,
    ResizeImage,
    StridedSlice,
    Transpose,
)
from targets.k210.kmodel_v4_records import *  # noqa: F401,F403  (re-exported: constants, records, codecs)
from targets.k210.kmodel_v4_records import (
    BODIES,
    DT_FLOAT32,
    DT_UINT8,
    HEADER,
    IDENTIFIER,
    MEM_CONST,
    MEM_KPU,
    MEM_MAIN,
    MEMORY_NAMES,
    NODE_HEADER,
    OPCODE_NAMES,
    RANGE,
    SHAPE,
    VERSION,
    MemoryRange,
    Padding,
)
from targets.k210.kpu import POOL_TYPES
from targets.k210.kpu_layout import KPU_RAM_BYTES, kpu_rows
from targets.k210.records import ListOf, Reader, Writer, read_fields, write_fields

read_body = read_fields    # decode one node body at r.pos (kept name)
write_body = write_fields  # encode one node body at w.pos (kept name)


# ---------------------------------------------------------------- the model (§2, §3)
@dataclass(eq=False)
class RawBody:
    """The bytes of a body whose opcode this reader does not know (kept so the file still round-trips)."""
    opcode: int
    data: bytes
    op_name = "unknown"

    def write(self, w: Writer):
        w.write(self.data)


@dataclass(eq=False)
class Node:
    """One node: its runtime_opcode and its decoded body (section 7 / 8)."""
    opcode: int
    body: Any
    raw: bytes = b""  # the body's bytes as read (empty for nodes built in memory)

    @property
    def name(self) -> str:
        return OPCODE_NAMES.get(self.opcode, f"unknown_0x{self.opcode:x}")


@dataclass(eq=False)
class KModelV4:
    """A whole kmodel v4 file; the header's counts and sizes are derived from the lists on write."""
    inputs: list[MemoryRange]
    input_shapes: list[tuple]
    outputs: list[MemoryRange]
    constants: bytes
    main_mem: int
    nodes: list[Node]
    target: int = 1  # nncase v0.2 always writes 1 (K210), also for -t cpu
    flags: int = 0
    reserved0: int = 0  # uninitialised garbage in nncase's files; kept for the round trip
    tail_missing: int = 0  # bytes of the last body's padding that the file omits (nncase seeks, see module doc)

    def bodies_start(self) -> int:
        """File offset of the first node body."""
        return 40 + 16 * (2 * len(self.inputs) + len(self.outputs)) + len(self.constants) + 8 * len(self.nodes)


def read_v4(data: bytes) -> KModelV4:
    """Parse a kmodel v4 file (kmodel-v4.md §2-§10)."""
    data = bytes(data)
    r = Reader(data)
    h = HEADER.read(r)
    if h.identifier != IDENTIFIER or h.version != VERSION:
        raise MalformedModel(f"not a kmodel v4: identifier 0x{h.identifier:08x}, version {h.version} "
                             f"(want 0x{IDENTIFIER:08x} 'LDMK', version 4)")
    if h.target not in (0, 1):
        raise MalformedModel(f"kmodel v4: model target {h.target} (the runtime accepts 0 = CPU, 1 = K210)")
    inputs = list(ListOf(RANGE, lambda h: h.inputs).read(r, h))
    input_shapes = list(ListOf(SHAPE, lambda h: h.inputs).read(r, h))
    outputs = list(ListOf(RANGE, lambda h: h.outputs).read(r, h))
    constants = r.read(h.constants)
    headers = ListOf(NODE_HEADER, lambda h: h.nodes).read(r, h)
    nodes, pos = [], r.pos
    for i, (opcode, body_size) in enumerate((nh.opcode, nh.body_size) for nh in headers):
        end = pos + body_size
        if end > len(data) + 7 * (i == h.nodes - 1):  # only the last body may lack (up to 7 bytes of) padding
            raise MalformedModel(f"kmodel v4: node {i} ({OPCODE_NAMES.get(opcode, hex(opcode))}) body of "
                                 f"{body_size} bytes at offset {pos} does not fit the {len(data)}-byte file")
        r.pos, name = pos, OPCODE_NAMES.get(opcode, hex(opcode))
        cls = BODIES.get(opcode)
        try:
            b = read_body(cls, r, min(end, len(data))) if cls else RawBody(opcode, r.read(min(end, len(data)) - pos))
        except MalformedModel as e:
            raise MalformedModel(f"kmodel v4: node {i} ({name}): {e}") from None
        if r.pos > end:
            raise MalformedModel(f"kmodel v4: node {i} ({name}) needs {r.pos - pos} bytes, "
                                 f"its body_size is {body_size}")
        nodes.append(Node(opcode, b, data[pos:min(end, len(data))]))
        pos = end
    return KModelV4(inputs, input_shapes, outputs, constants, h.main_mem, nodes, h.target, h.flags, h.reserved0,
                    tail_missing=max(0, pos - len(data)))


def write_v4(model: KModelV4) -> bytes:
    """Serialize a model; the mirror of read_v4 (see the module doc for the round-trip rules)."""
    start = model.bodies_start()
    w = Writer()
    w.write(bytes(start))  # header and tables are written once the body sizes are known
    sizes = []
    for n in model.nodes:
        at = w.pos
        write_body(n.body, w)
        w.align(8)
        sizes.append(w.pos - at)
    head = Writer()
    HEADER.write(head, HEADER.make(identifier=IDENTIFIER, version=VERSION, flags=model.flags, target=model.target,
                                   constants=len(model.constants), main_mem=model.main_mem, nodes=len(model.nodes),
                                   inputs=len(model.inputs), outputs=len(model.outputs), reserved0=model.reserved0))
    for rng in model.inputs:
        RANGE.write(head, rng)
    for shape in model.input_shapes:
        SHAPE.write(head, tuple(shape))
    for rng in model.outputs:
        RANGE.write(head, rng)
    head.write(model.constants)
    for n, size in zip(model.nodes, sizes):
        NODE_HEADER.write(head, NODE_HEADER.make(opcode=n.opcode, body_size=size))
    assert head.pos == start
    w.buf[:start] = head.buf
    out = w.getvalue()
    return out[:len(out) - model.tail_missing] if model.tail_missing else out


# ---------------------------------------------------------------- inspect
def kpu_bytes(shape) -> int:
    """Bytes an NCHW u8 map occupies in KPU RAM (§10.1)."""
    n, c, h, w = shape
    return n * 64 * kpu_rows(c, h, w)


def windowed_size(size: int, filt: int, stride: int, dilation: int, pad: Padding) -> int:
    """Output extent of a window op (kernels/kernel_utils.h get_windowed_output_size, C division)."""
    return (size + pad.before + pad.after - ((filt - 1) * dilation + 1) + stride) // stride


def node_ranges(b) -> tuple[list[MemoryRange], list[MemoryRange]]:
    """(inputs, outputs) memory ranges a node reads and writes."""
    if isinstance(b, KpuConv2D):
        src = MemoryRange(MEM_KPU, DT_UINT8, 64 * b.layer.image_src_addr, kpu_bytes(b.in_shape))
        dst = MemoryRange(MEM_KPU, DT_UINT8, 64 * b.layer.image_dst_addr, kpu_bytes(b.out_shape))
        return [src], [dst] + ([b.main_mem_output] if b.main_mem_output.size else [])
    if isinstance(b, RawBody):
        return [], []
    ins, outs = [], []
    for f in fields(b):
        v = getattr(b, f.name)
        if f.name == "inputs":
            ins += list(v)
        elif isinstance(v, MemoryRange):
            (outs if f.name == "output" else ins).append(v)
    return ins, outs


def node_shapes(b) -> tuple[tuple | None, tuple | None]:
    """(input shape, output shape) where the body states or implies them (NCHW; cpu_* ops NHWC)."""
    if isinstance(b, (MatMul, QuantizedMatMul)):
        return (b.a_rows, b.a_cols), (b.a_rows, b.b_cols)
    in_shape = getattr(b, "in_shape", None) or getattr(b, "in_a_shape", None)
    out_shape = getattr(b, "out_shape", None)
    if out_shape is not None or in_shape is None:
        return in_shape, out_shape
    n, c, h, w = in_shape
    if isinstance(b, (Conv2D, QuantizedConv2D, ReduceWindow2D)):
        oh = windowed_size(h, b.filter_h, b.stride_h, b.dilation_h, b.padding_h)
        ow = windowed_size(w, b.filter_w, b.stride_w, b.dilation_w, b.padding_w)
        if isinstance(b, CpuReduceWindow2D):  # NHWC
            oh = windowed_size(c, b.filter_h, b.stride_h, b.dilation_h, b.padding_h)
            ow = windowed_size(h, b.filter_w, b.stride_w, b.dilation_w, b.padding_w)
            return in_shape, (n, oh, ow, w)
        return in_shape, (n, getattr(b, "out_channels", c), oh, ow)
    if isinstance(b, Pad):
        return in_shape, tuple(s + p.before + p.after for s, p in zip(in_shape, b.paddings))
    if isinstance(b, Transpose):
        return in_shape, tuple(in_shape[p] for p in b.perm)
    if isinstance(b, ResizeImage):
        return in_shape, (n, c, b.out_h, b.out_w)
    if isinstance(b, StridedSlice):
        return in_shape, tuple(len(range(s, e, st)) for s, e, st in zip(b.begin, b.end, b.strides))
    if isinstance(b, KpuUpload):
        return in_shape, in_shape
    return in_shape, None


def _range_dict(r: MemoryRange) -> dict:
    return {"memory": MEMORY_NAMES.get(r.memory_type, str(r.memory_type)),
            "dtype": {DT_FLOAT32: "float32", DT_UINT8: "uint8"}.get(r.datatype, str(r.datatype)),
            "start": r.start, "size": r.size}


def describe_v4(model: KModelV4) -> dict:
    """Everything `kpuc inspect` shows: header, inputs/outputs, one row per node, the memory map."""
    rows, used = [], {MEM_CONST: 0, MEM_MAIN: 0, MEM_KPU: 0}
    everything = [*model.inputs, *model.outputs]
    for i, n in enumerate(model.nodes):
        ins, outs = node_ranges(n.body)
        in_shape, out_shape = node_shapes(n.body)
        row = {"index": i, "opcode": n.opcode, "op": n.name, "inputs": [_range_dict(r) for r in ins],
               "outputs": [_range_dict(r) for r in outs],
               "in_shape": list(in_shape) if in_shape else None, "out_shape": list(out_shape) if out_shape else None}
        if isinstance(n.body, KpuConv2D):
            row["kpu"] = {"filter": n.body.layer.kernel, "depthwise": n.body.layer.depthwise,
                          "pool": POOL_TYPES.get(n.body.layer.pool_type, ("?",))[0],
                          "weights_bytes": int(n.body.weights.size)}
        rows.append(row)
        everything += ins + outs
    for r in everything:
        if r.memory_type in used:
            used[r.memory_type] = max(used[r.memory_type], r.start + r.size)
    return {
        "format": "kmodel", "version": VERSION,
        "header": {"flags": model.flags, "target": model.target, "constants": len(model.constants),
                   "main_mem": model.main_mem, "nodes": len(model.nodes), "inputs": len(model.inputs),
                   "outputs": len(model.outputs), "reserved0": model.reserved0},
        "inputs": [{**_range_dict(r), "shape": list(s)} for r, s in zip(model.inputs, model.input_shapes)],
        "outputs": [_range_dict(r) for r in model.outputs],
        "nodes": rows,
        "ops": {name: sum(n.name == name for n in model.nodes) for name in dict.fromkeys(n.name for n in model.nodes)},
        "memory": {"const": {"size": len(model.constants), "used": used[MEM_CONST]},
                   "main": {"size": model.main_mem, "used": used[MEM_MAIN]},
                   "kpu": {"size": KPU_RAM_BYTES, "used": used[MEM_KPU]}},
    }

