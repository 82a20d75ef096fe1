"""Lower an IR graph to a kmodel v3 (nncase v0.1 / K210 SDK `kpu.c`): layers, memory plan, file.

One function per IR op in `LOWER_V3` (nncase's emitters). Each reads the node, may absorb the nodes
nncase fused into the same layer (a bias add and a ReLU after a matmul; the pad and quantize before a
fully connected KPU layer), and emits layers: a `LayerType`, the buffers it reads and writes, and a
function from addresses to the body. Once every layer is known, `planner.plan_memory` places the
buffers (main memory with nncase v0.1's allocator, KPU RAM likewise with an offline fallback;
kmodel-v3.md §12) and the bodies are built.

    graph --prepare_v3--> graph' --LOWER_V3--> layers + schedule --plan_memory--> KModelV3 --write_v3--> bytes

Layer order is nncase's: depth-first from the graph outputs, producers before consumers in operand
order (§12). Reshapes alias their input and emit nothing. Float graphs (`--inference-type float`) use
the float CPU layers; quantized graphs (targets/k210/quantize.py) become K210Conv with K210Upload /
K210AddPadding / K210RemovePadding around it as nncase v0.1 did, plus the quantized CPU layers. v3 has
no pad or slice layer: pads before a KPU layer fold into its ring (`fold_pad_into_kpu_conv2d_q`) and
slices become a nearest resize read from an offset (or a Concatenation of byte ranges).

Exactness: every KPU layer, upload, slice, table and max pool computes the quantized executor's value
bit for bit. Where the SDK's CPU arithmetic cannot (Dequantize with a zero point: q·scale + bias against
(q − zp)·scale; quantized add), the closest form is chosen and the layer is listed in the summary's
"inexact" entry with how often and by how much it differs. Float layers sum in float32 in the SDK's
order where the executor sums in float64. compile_model lowers the graph rewritten by
targets/k210/device_semantics.py instead, whose device ops (dequantize_v3, quantize_v3, quantized_add_v3,
reduce_f32, matmul_f32, ...) say what these layers compute, so that graph and the file agree bit for bit.

Everything v3 cannot say is collected and reported at once, suggesting kmodel v4.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np

from compiler.errors import KpucError
from compiler.ir import Graph, Node, QuantParam, Value
from compiler.kernels import KERNELS
import compiler.kernels.all  # noqa: F401  (fills KERNELS)
from compiler.quantization import F32, QuantParamU8, dequantize_u8, quantize_u8, round_half_away_from_zero
from targets.k210.constraints import why_not_kpu_layer
from targets.k210.kernels import K210_KERNELS, POOL_TYPE_OF, kpu_tables
from targets.k210.kmodel_v3 import (FIXED_BODIES, V3_HEADER, V3_OUTPUT, ConcatenationBody, FullyConnectedBody,
                                    K210ConvBody, KModelV3, LayerType, V3Layer, write_v3)
from targets.k210.kpu import POOL_TYPES, KpuArgs, carry_shift
from targets.k210.kpu_layout import KPU_RAM_ROWS, KPU_ROW_BYTES, kpu_rows, row_layout
from targets.k210.planner import Buffer, Plan, Pool, Step, plan_memory

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


def lowers(*ops: str):
    """Register a function as the v3 emitter of each IR op in `ops`."""
    def register(fn):
        for op in ops:
            LOWER_V3[op] = fn
        return fn
    return register


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


# ---------------------------------------------------------------- float layers
def _activation(ctx: Lowering, node: Node, clamp) -> tuple[Node, int]:
    """Absorb a following ReLU/ReLU6 into the layer ending at `node`; returns (last node, act enum)."""
    act = 0
    if tuple(clamp) != NO_CLAMP:
        if tuple(map(float, clamp)) not in ACTIVATIONS:
            raise Unexpressible(f"clamp {clamp} is neither ReLU nor ReLU6 (the v3 float activations)")
        act = ACTIVATIONS[tuple(map(float, clamp))]
    user = sole_user(ctx.graph, node.output)
    if act == 0 and user is not None and user.op == "clamp":
        lo_hi = (float(user.attrs.get("min", -math.inf)), float(user.attrs.get("max", math.inf)))
        if lo_hi in ACTIVATIONS:
            ctx.absorb(user, node)
            return user, ACTIVATIONS[lo_hi]
    return node, act


@lowers("matmul", "matmul_f32")
def matmul(ctx: Lowering, node: Node) -> None:
    """matmul(x[1,IC], W[IC,OC]) [+ bias[OC]] [ReLU/ReLU6] -> FullyConnected (f32, kmodel-v3.md §8.11);
    matmul_f32 (device_semantics) carries its bias as operand 3."""
    a, b = node.inputs[:2]
    if not b.is_constant or b.data.ndim != 2 or a.dtype != "float32":
        raise Unexpressible("FullyConnected needs a float input and a constant 2-D weight matrix")
    ic, oc = b.shape
    if a.type.size != ic:
        raise Unexpressible(f"input {a.shape} is a batch of rows; FullyConnected multiplies one vector")
    bias, last, clamp = np.zeros(oc, np.float32), node, node.attrs.get("fused_clamp", NO_CLAMP)
    add = sole_user(ctx.graph, node.output) if node.op == "matmul" else None
    if node.op == "matmul_f32":
        bias = np.asarray(node.inputs[2].data, np.float32).reshape(oc)
    if tuple(clamp) == NO_CLAMP and add is not None and add.op == "binary" and add.attrs["op"] == "add" \
            and add.output.shape == node.output.shape:
        other = add.inputs[1] if add.inputs[0] is node.output else add.inputs[0]
        if other.is_constant and other.type.size == oc:
            bias, last, clamp = other.data.reshape(oc).astype(np.float32), add, add.attrs.get("fused_clamp", NO_CLAMP)
            ctx.absorb(add, node)
    last, act = _activation(ctx, last, clamp)
    x, y = ctx.main(a), ctx.main(last.output)
    weights = np.ascontiguousarray(b.data.T, np.float32)
    ctx.emit(node.name, LayerType.FullyConnected, [x], [y], lambda addr: FullyConnectedBody(
        0, addr(x), addr(y), act, weights, bias))


@lowers("conv2d", "conv2d_f32")
def conv2d(ctx: Lowering, node: Node) -> None:
    """A 1×1 conv of a 1×1 map is a FullyConnected (f32); v3 has no other CPU convolution."""
    x, w, b = node.inputs
    a = node.attrs
    if not (w.is_constant and b.is_constant) or x.dtype != "float32" or w.shape[2:] != (1, 1) \
            or a.get("groups", 1) != 1 or len(x.shape) != 4 or chw(x)[1:] != (1, 1) \
            or any(p != 0 for pair in a.get("padding", ((0, 0), (0, 0))) for p in pair):
        raise Unexpressible("v3 has no CPU convolution (only a 1×1 conv of a 1×1 map, as FullyConnected)")
    last, act = _activation(ctx, node, a.get("fused_clamp", NO_CLAMP))
    rx, ry = ctx.main(x), ctx.main(last.output)
    weights, bias = np.ascontiguousarray(w.data[:, :, 0, 0], np.float32), np.asarray(b.data, np.float32)
    ctx.emit(node.name, LayerType.FullyConnected, [rx], [ry], lambda addr: FullyConnectedBody(
        0, addr(rx), addr(ry), act, weights, bias))


@lowers("binary")
def binary(ctx: Lowering, node: Node) -> None:
    """add(a, b) of two same-shape computed f32 tensors -> Add (§8.1)."""
    a, b = node.inputs
    if node.attrs["op"] != "add" or a.shape != b.shape or a.is_constant or b.is_constant:
        raise Unexpressible("v3 has only the element-wise add of two computed tensors of one shape")
    if tuple(node.attrs.get("fused_clamp", NO_CLAMP)) != NO_CLAMP:
        raise Unexpressible("the v3 Add layer has no activation")
    if a.dtype != "float32":
        raise Unexpressible(f"add of {a.dtype} tensors outside the quantized form")
    ra, rb, y = ctx.main(a), ctx.main(b), ctx.main(node.output)
    ctx.emit(node.name, LayerType.Add, [ra, rb], [y], fixed(
        LayerType.Add, flags=1, main_mem_in_a_address=ra, main_mem_in_b_address=rb, main_mem_out_address=y,
        count=node.output.type.size))


def _vector_layer(type: LayerType, ctx: Lowering, node: Node, axis: int | None) -> None:
    x = node.inputs[0]
    if x.dtype != "float32":
        raise Unexpressible(f"{type.name} runs on float32, this input is {x.dtype}")
    n = vector_len(x, axis)
    rx, ry = ctx.main(x), ctx.main(node.output)
    ctx.emit(node.name, type, [rx], [ry], fixed(type, flags=1, main_mem_in_address=rx, main_mem_out_address=ry,
                                                channels=n))


@lowers("softmax", "softmax_f32")
def softmax(ctx: Lowering, node: Node) -> None:
    """softmax over a whole vector -> Softmax (§8.9)."""
    if node.attrs.get("log", False):
        raise Unexpressible("log-softmax has no v3 layer")
    _vector_layer(LayerType.Softmax, ctx, node, node.attrs["axis"])


@lowers("lp_normalize")
def lp_normalize(ctx: Lowering, node: Node) -> None:
    """x / ||x||_2 over a whole vector -> L2Normalization (§8.9: x / sqrt(max(Σx², 1e-10)))."""
    if node.attrs.get("p", 2) != 2:
        raise Unexpressible(f"L{node.attrs.get('p')} normalization (v3 has L2 only)")
    _vector_layer(LayerType.L2Normalization, ctx, node, node.attrs["axis"])


@lowers("unary")
def unary(ctx: Lowering, node: Node) -> None:
    """sigmoid -> Logistic (§8.9); the other unary functions have no v3 layer."""
    if node.attrs["op"] != "sigmoid":
        raise Unexpressible(f"unary {node.attrs['op']} has no v3 layer (only sigmoid, as Logistic)")
    _vector_layer(LayerType.Logistic, ctx, node, None)


@lowers("reduce", "reduce_f32")
def reduce(ctx: Lowering, node: Node) -> None:
    """mean over H and W of a C×H×W f32 map -> GlobalAveragePool2d (§8.3)."""
    x = node.inputs[0]
    if node.attrs["op"] != "mean" or len(x.shape) != 4 or tuple(node.attrs["axes"]) != (2, 3) or x.dtype != "float32":
        raise Unexpressible("v3 reduces only as a float global average pool (mean over H and W)")
    c, h, w = chw(x)
    rx, ry = ctx.main(x), ctx.main(node.output)
    ctx.emit(node.name, LayerType.GlobalAveragePool2d, [rx], [ry], fixed(
        LayerType.GlobalAveragePool2d, flags=1, main_mem_in_address=rx, main_mem_out_address=ry,
        kernel_size=h * w, channels=c))


def _pool_fields(node: Node) -> dict:
    """The §8.4 window fields of a reduce_window2d the SDK loop computes exactly, else Unexpressible."""
    a = node.attrs
    x, y = node.inputs[0], node.output
    (pt, pb), (pl, pr) = a.get("padding", ((0, 0), (0, 0)))
    if tuple(a.get("dilations", (1, 1))) != (1, 1) or a.get("ceil_mode", False):
        raise Unexpressible("dilated or ceil-mode pooling has no v3 layer")
    if a["op"] == "mean" and a.get("count_include_pad", False) and (pt, pb, pl, pr) != (0, 0, 0, 0):
        raise Unexpressible("the v3 average pool divides by the taps inside the map, not by the padded window")
    (c, h, w), (_, oh, ow) = chw(x), chw(y)
    (kh, kw), (sh, sw) = a["kernel"], a.get("strides", (1, 1))
    return dict(in_width=w, in_height=h, in_channels=c, out_width=ow, out_height=oh, out_channels=c,
                kernel_width=kw, kernel_height=kh, stride_width=sw, stride_height=sh, padding_width=pl,
                padding_height=pt)


@lowers("reduce_window2d", "reduce_window2d_f32")
def reduce_window2d(ctx: Lowering, node: Node) -> None:
    """mean pool (f32) -> AveragePool2d; max pool (u8) -> QuantizedMaxPool2d (§8.4, §8.5)."""
    x = node.inputs[0]
    fields = _pool_fields(node)
    op = node.attrs["op"]
    if op == "mean" and x.dtype == "float32":
        type = LayerType.AveragePool2d
        fields["act"] = 0        # the SDK ignores it (kmodel-v3.md §8.4)
    elif op == "max" and x.dtype == "uint8":
        type = LayerType.QuantizedMaxPool2d
    elif op == "max":
        raise Unexpressible("a float max pool is v3 type MaxPool2d, which the SDK cannot run (kmodel-v3.md §8.4)")
    else:
        raise Unexpressible("a quantized average pool has no v3 layer the SDK runs")
    rx, ry = ctx.main(x), ctx.main(node.output)
    ctx.emit(node.name, type, [rx], [ry], fixed(type, flags=1, main_mem_in_address=rx, main_mem_out_address=ry,
                                               **fields))


@lowers("transpose")
def transpose(ctx: Lowering, node: Node) -> None:
    """NCHW -> NHWC of a f32 map -> TensorflowFlatten (§8.12); moving only size-1 dims is a reshape."""
    x, perm = node.inputs[0], tuple(node.attrs["perm"])
    moved = [p for p in perm if x.shape[p] != 1]
    if moved == sorted(moved):             # the dims bigger than 1 keep their order: same bytes
        ctx.alias(node.output, x)
        return
    if perm != (0, 2, 3, 1) or x.dtype != "float32":
        raise Unexpressible(f"transpose {perm} (v3 has only the float NCHW -> NHWC flatten)")
    c, h, w = chw(x)
    rx, ry = ctx.main(x), ctx.main(node.output)
    ctx.emit(node.name, LayerType.TensorflowFlatten, [rx], [ry], fixed(
        LayerType.TensorflowFlatten, flags=1, main_mem_in_address=rx, main_mem_out_address=ry,
        width=w, height=h, channels=c))


@lowers("concat")
def concat(ctx: Lowering, node: Node) -> None:
    """Concatenation along an axis with only 1s before it is a sequence of memcpys (§8.10)."""
    axis, y = node.attrs["axis"], node.output
    if any(d != 1 for d in y.shape[:axis]):
        raise Unexpressible(f"concat on axis {axis} of {y.shape} is not contiguous in memory")
    type = LayerType.Concatenation if y.dtype == "float32" else LayerType.QuantizedConcatenation
    if y.dtype == "uint8" and any(x.quant != y.quant for x in node.inputs):
        raise Unexpressible("quantized concat of inputs with different quantization")
    ins, ry = [ctx.main(x) for x in node.inputs], ctx.main(y)
    sizes = [nbytes(x) for x in node.inputs]
    ctx.emit(node.name, type, ins, [ry], lambda addr: ConcatenationBody(
        1, addr(ry), [(addr(r), n) for r, n in zip(ins, sizes)]))


def _sdk_resize_index(out_len: int, in_len: int) -> np.ndarray:
    """The source index the SDK picks: min(floor(o · ((float)in / out)), in - 1), in f32 (§8.13)."""
    scale = np.float32(in_len) / np.float32(out_len)
    return np.minimum(np.floor(np.arange(out_len, dtype=np.float32) * scale), np.float32(in_len - 1)).astype(np.int64)


@lowers("resize")
def resize(ctx: Lowering, node: Node) -> None:
    """Nearest resize of H and W -> (Quantized)ResizeNearestNeighbor, when the SDK picks the same pixels."""
    x, y, a = node.inputs[0], node.output, node.attrs
    (c, h, w), (c2, oh, ow) = chw(x), chw(y)
    if a["mode"] != "nearest" or c != c2:
        raise Unexpressible("only nearest resizing of H and W has a v3 layer")
    ramp = np.arange(h * w, dtype=np.float32).reshape(1, 1, h, w)
    want = KERNELS["resize"](ramp, **{**a, "sizes": (1, 1, oh, ow)}).reshape(oh, ow).astype(np.int64)
    got = _sdk_resize_index(oh, h)[:, None] * w + _sdk_resize_index(ow, w)[None, :]
    if not np.array_equal(want, got):
        raise Unexpressible(f"the SDK's floor(o·in/out) picks other pixels than "
                            f"{a.get('coordinate_transformation_mode')}/{a.get('nearest_mode')}")
    type = LayerType.ResizeNearestNeighbor if x.dtype == "float32" else LayerType.QuantizedResizeNearestNeighbor
    rx, ry = ctx.main(x), ctx.main(y)
    ctx.emit(node.name, type, [rx], [ry], fixed(
        type, flags=0, main_mem_in_address=rx, main_mem_out_address=ry, in_width=w, in_height=h, in_channels=c,
        out_width=ow, out_height=oh, align_corners=int(a.get("coordinate_transformation_mode") == "align_corners")))


# ---------------------------------------------------------------- data movement
def _gather_ranges(x: Value, y: Value, begin, strides) -> list[tuple[int, int]] | None:
    """Byte ranges of `x` that, copied back to back, give the slice `y` (None unless W is contiguous)."""
    (c, h, w), (oc, oh, ow), item = chw(x), chw(y), np.dtype(x.dtype).itemsize
    _, c0, y0, x0 = begin
    _, sc, sy, sx = strides
    if sx != 1:
        return None
    starts = ((c0 + sc * np.arange(oc))[:, None] * h + (y0 + sy * np.arange(oh))[None, :]) * w + x0
    ranges: list[list[int]] = []
    for start in (starts.reshape(-1) * item).tolist():
        if ranges and ranges[-1][0] + ranges[-1][1] == start:
            ranges[-1][1] += ow * item
        else:
            ranges.append([start, ow * item])
    return [tuple(r) for r in ranges]


@lowers("strided_slice")
def strided_slice(ctx: Lowering, node: Node) -> None:
    """A slice with positive strides of a batch-1 map (v3 has no slice layer):
    - the (0, 0) pixel of a KPU fully connected layer's 4×4 output -> K210RemovePadding (§8.18);
    - otherwise a nearest resize reading from the slice's first element, when the SDK's floor(o·H/OH)
      steps by exactly the slice's strides (§8.13: a dense C'×H×W map whose channel pitch stays H·W);
    - otherwise, with stride 1 along W, a (Quantized)Concatenation copying one byte range per row (§8.10)."""
    x, y, a = node.inputs[0], node.output, node.attrs
    begin, strides = tuple(a["begin"]), tuple(a["strides"])
    if x.shape == y.shape:
        ctx.alias(y, x)
        return
    if len(x.shape) != 4 or x.shape[0] != 1 or begin[0] != 0 or any(t < 1 for t in strides):
        raise Unexpressible(f"slice {begin}::{strides} of {x.shape} (v3 slices batch-1 maps forward only)")
    if x.producer in ctx.fc_inputs and begin == (0, 0, 0, 0) and y.shape[2:] == (1, 1) and strides[1] == 1:
        rx, ry = ctx.main(x), ctx.main(y)
        ctx.emit(node.name, LayerType.K210RemovePadding, [rx], [ry], fixed(
            LayerType.K210RemovePadding, flags=1, main_mem_in_address=rx, main_mem_out_address=ry, channels=y.shape[1]))
        return
    (c, h, w), (oc, oh, ow), item = chw(x), chw(y), np.dtype(x.dtype).itemsize
    if strides[1] == 1 and all(np.array_equal(_sdk_resize_index(o, n), s * np.arange(o))
                               for o, n, s in ((oh, h, strides[2]), (ow, w, strides[3]))):
        skip = ((begin[1] * h + begin[2]) * w + begin[3]) * item
        base = ctx.main(x, extra_bytes=skip)     # the interpreter loads the whole claimed C'×H×W block
        rx, ry = Ref(base.buffer, base.offset + skip), ctx.main(y)
        type = LayerType.ResizeNearestNeighbor if x.dtype == "float32" else LayerType.QuantizedResizeNearestNeighbor
        ctx.emit(node.name, type, [rx], [ry], fixed(
            type, flags=0, main_mem_in_address=rx, main_mem_out_address=ry, in_width=w, in_height=h, in_channels=oc,
            out_width=ow, out_height=oh, align_corners=0))
        return
    ranges = _gather_ranges(x, y, begin, strides)
    if ranges is None:
        raise Unexpressible(f"slice with strides {strides[2:]} of {h}x{w}: no nearest resize picks those pixels")
    rx, ry = ctx.main(x), ctx.main(y)
    type = LayerType.Concatenation if x.dtype == "float32" else LayerType.QuantizedConcatenation
    ctx.emit(node.name, type, [rx], [ry], lambda addr: ConcatenationBody(
        1, addr(ry), [(addr(rx) + start, size) for start, size in ranges]))


@lowers("pad")
def pad(ctx: Lowering, node: Node) -> None:
    """Pads exist in v3 only inside a KPU layer (its ring, K210AddPadding); any other pad is an error."""
    raise Unexpressible("v3 has no pad layer; only the pads folded into a KPU layer disappear")


# ---------------------------------------------------------------- quantized CPU layers
def _u8_param(scale: float, zero_point: int) -> QuantParamU8:
    return QuantParamU8.from_ir(QuantParam(scale, zero_point))


def _near(value, k: int) -> np.ndarray:
    """float32 values within k ulps of `value`, nearest first."""
    v = F32(value)
    steps = np.array([0] + [s * i for i in range(1, k + 1) for s in (1, -1)], np.int64)
    bits = np.array([v], F32).view(np.int32).astype(np.int64) + steps * (1 if v >= 0 else -1)
    return bits.astype(np.int32).view(F32)


def quantize_params(scale: float, zero_point: int) -> tuple[float, float, int]:
    """(scale, bias) of a v3 Quantize for the IR's quantize_u8, and how many boundary samples disagree.

    The SDK computes roundf((x − bias)·(1.0f/scale)); the IR roundf(x·S + zp). The scale is the float32
    whose reciprocal is S exactly, so with zp = 0 (bias 0) both are the same product. With zp ≠ 0 the
    two formulas round differently near the half-way points: the bias is picked among nearby floats to
    agree at every float32 within 16 ulps of each of the 256 rounding boundaries."""
    q = _u8_param(scale, zero_point)
    s_u8 = F32(q.scale)
    sc = next((c for c in _near(F32(1) / s_u8, 64) if F32(1) / c == s_u8), F32(1) / s_u8)
    if zero_point == 0:
        return float(sc), 0.0, 0 if F32(1) / sc == s_u8 else -1
    edges = (np.arange(256) + 0.5 - zero_point) / np.float64(s_u8)
    xs = np.concatenate([_near(e, 16) for e in edges])
    want = quantize_u8(xs, q)
    inv = F32(1) / sc
    best = None
    for b in _near(F32(-zero_point * np.float64(sc)), 8):
        with np.errstate(all="ignore"):
            got = np.clip(round_half_away_from_zero((xs - b) * inv), 0, 255)
        bad = int((got != want).sum())
        if best is None or bad < best[1]:
            best = (float(b), bad)
    return float(sc), best[0], best[1]


def dequantize_params(scale: float, zero_point: int) -> tuple[float, float, int, float]:
    """(scale, bias) of a v3 Dequantize (SDK: q·scale + bias) for the IR's (q − zp)·d, d = 1/(1/scale) in
    float32; also how many of the 256 codes still differ and by how much at most. Exact when zp = 0; else
    the best pair near (d, −zp·d) over all 256 codes (an exact pair rarely exists)."""
    q = _u8_param(scale, zero_point)
    codes = np.arange(256)
    want = dequantize_u8(codes, q)
    d = F32(1) / F32(q.scale)
    if zero_point == 0:
        return float(d), 0.0, 0, 0.0
    best = None
    for sc in _near(d, 4):
        for b in _near(F32(-zero_point * np.float64(sc)), 4):
            got = codes.astype(F32) * sc + b
            bad, err = int((got != want).sum()), float(np.abs(got.astype(np.float64) - want).max())
            if best is None or (bad, err) < best[2:]:
                best = (float(sc), float(b), bad, err)
    return best


@lowers("quantize_u8")
def quantize(ctx: Lowering, node: Node) -> None:
    """f32 -> u8 -> Quantize (§8.6); the input's quantize is the kmodel's input contract instead."""
    x, y = node.inputs[0], node.output
    sc, bias, bad = quantize_params(node.attrs["scale"], node.attrs["zero_point"])
    if bad:
        ctx.inexact.append(f"Quantize '{node.name}': {bad if bad > 0 else 'some'} float32 inputs next to a rounding "
                           f"boundary get another code than quantize_u8 (zero point {node.attrs['zero_point']})")
    _emit_quantize(ctx, node.name, ctx.main(x), ctx.main(y), y.type.size, sc, bias)


@lowers("quantize_v3")
def quantize_v3(ctx: Lowering, node: Node) -> None:
    """The SDK's own Quantize (device_semantics): its (scale, bias) are the layer's."""
    _emit_quantize(ctx, node.name, ctx.main(node.inputs[0]), ctx.main(node.output), node.output.type.size,
                   node.attrs["scale"], node.attrs["bias"])


def _emit_quantize(ctx: Lowering, name: str, rx: Ref, ry: Ref, count: int, sc: float, bias: float) -> None:
    ctx.emit(name, LayerType.Quantize, [rx], [ry], fixed(
        LayerType.Quantize, flags=0, main_mem_in_address=rx, mem_out_address=ry, count=count, scale=sc, bias=bias))


@lowers("dequantize_u8")
def dequantize(ctx: Lowering, node: Node) -> None:
    """u8 -> f32 -> Dequantize (§8.7): exact when the zero point is 0, else the nearest (scale, bias), or for
    small tensors Dequantize(1, −zp) + a diagonal FullyConnected, which is exact."""
    x, y = node.inputs[0], node.output
    sc, bias, bad, err = dequantize_params(node.attrs["scale"], node.attrs["zero_point"])
    n = y.type.size
    if bad and n <= EXACT_DEQUANTIZE_MAX:
        # Dequantize(1, −zp) gives q − zp exactly; a diagonal FullyConnected multiplies each by d once
        # (the other products are zeros, which add exactly): the IR's (q − zp)·d, bit for bit.
        d = F32(1) / F32(_u8_param(node.attrs["scale"], node.attrs["zero_point"]).scale)
        rx, mid, ry = ctx.main(x), ctx.scratch(f"{node.name}@centred", 4 * n), ctx.main(y)
        ctx.emit(node.name, LayerType.Dequantize, [rx], [mid], fixed(
            LayerType.Dequantize, flags=1, main_mem_in_address=rx, main_mem_out_address=mid, count=n,
            scale=1.0, bias=-float(node.attrs["zero_point"])))
        weights, zeros = np.diag(np.full(n, d, F32)), np.zeros(n, F32)
        ctx.emit(f"{node.name}/scale", LayerType.FullyConnected, [mid], [ry], lambda addr: FullyConnectedBody(
            0, addr(mid), addr(ry), 0, weights, zeros))
        return
    if bad:
        zp = node.attrs["zero_point"]
        ctx.inexact.append(f"Dequantize '{node.name}': {bad} of 256 codes differ from dequantize_u8 by up to "
                           f"{err:.3g} (the SDK computes q·scale + bias, the IR (q − {zp})·scale)")
    rx, ry = ctx.main(x), ctx.main(y)
    ctx.emit(node.name, LayerType.Dequantize, [rx], [ry], fixed(
        LayerType.Dequantize, flags=1, main_mem_in_address=rx, main_mem_out_address=ry, count=y.type.size,
        scale=sc, bias=bias))


@lowers("dequantize_v3")
def dequantize_v3(ctx: Lowering, node: Node) -> None:
    """The SDK's own Dequantize (device_semantics): q·scale + bias with the node's (scale, bias)."""
    rx, ry = ctx.main(node.inputs[0]), ctx.main(node.output)
    ctx.emit(node.name, LayerType.Dequantize, [rx], [ry], fixed(
        LayerType.Dequantize, flags=1, main_mem_in_address=rx, main_mem_out_address=ry, count=node.output.type.size,
        scale=node.attrs["scale"], bias=node.attrs["bias"]))


def _table_layer(ctx: Lowering, node: Node, table: np.ndarray) -> None:
    x, y = node.inputs[0], node.output
    rx, ry = ctx.main(x), ctx.main(y)
    ctx.emit(node.name, LayerType.Requantize, [rx], [ry], fixed(
        LayerType.Requantize, flags=1, main_mem_in_address=rx, main_mem_out_address=ry, count=y.type.size,
        table=np.asarray(table, np.uint8).tobytes()))


@lowers("requantize_u8")
def requantize(ctx: Lowering, node: Node) -> None:
    """u8 -> u8 through new quantization -> Requantize with the kernel's own 256-entry table (§8.8)."""
    _table_layer(ctx, node, K210_KERNELS["requantize_u8"](np.arange(256, dtype=np.uint8), **node.attrs))


@lowers("table_lookup1d")
def table_lookup1d(ctx: Lowering, node: Node) -> None:
    """table[x] is what Requantize computes (§8.8), whatever function the table holds."""
    table = node.inputs[1]
    if not table.is_constant:
        raise Unexpressible("the lookup table is computed at run time")
    _table_layer(ctx, node, table.data)


def _sdk_quantized_add(a, b, p: dict) -> np.ndarray:
    """kpu.c's QuantizedAdd on int64 arrays (kmodel-v3.md §8.2)."""
    va = (a + p["in_a_offset"]) * p["in_a_mul"]
    vb = (b + p["in_b_offset"]) * p["in_b_mul"]
    if p["in_a_shift"] == p["in_b_shift"]:
        v = (va + vb) >> p["in_a_shift"]
    else:
        v = (va >> p["in_a_shift"]) + (vb >> p["in_b_shift"])
    return np.clip(carry_shift(v * p["out_mul"], p["out_shift"]) + p["out_offset"], 0, 255)


def _float_add(ga, gb, qa: QuantParam, qb: QuantParam, qy: QuantParam) -> tuple[np.ndarray, list]:
    """Codes of the SDK's Dequantize, Dequantize, Add, Quantize on int64 code arrays, and those params."""
    da, db = (dequantize_params(q.scale, q.zero_point)[:2] for q in (qa, qb))
    sc, bias, _ = quantize_params(qy.scale, qy.zero_point)
    total = (ga.astype(F32) * F32(da[0]) + F32(da[1])) + (gb.astype(F32) * F32(db[0]) + F32(db[1]))
    with np.errstate(all="ignore"):
        codes = np.clip(round_half_away_from_zero((total - F32(bias)) * (F32(1) / F32(sc))), 0, 255)
    return codes.astype(np.int64), [da, db, (sc, bias)]


def sdk_add_form(node: Node) -> tuple[str, object, int, int] | None:
    """How v3 adds two same-shape u8 maps (a quantized_binary add), None if it cannot: (form, params,
    mismatches of that form, mismatches of QuantizedAdd) over the 65536 input pairs against the IR kernel.
    form "QuantizedAdd": params are the SDK layer's fields; "float" (Dequantize ×2 + Add + Quantize): params
    are [(scale, bias) of each Dequantize, (scale, bias) of the Quantize]. The float form is taken when it
    disagrees less often: QuantizedAdd shifts the operand sum down (floor) where the IR rounds each operand,
    and the SDK's carry shift rounds negative values one step too far (kpu.md §5.6)."""
    a, b = node.inputs
    at, y = node.attrs, node.output
    if at["op"] != "add" or a.shape != b.shape or a.is_constant or b.is_constant:
        return None
    p = {"in_a_offset": at["input_a_offset"], "in_a_mul": at["input_a_mul"], "in_a_shift": at["input_a_shift"],
         "in_b_offset": at["input_b_offset"], "in_b_mul": at["input_b_mul"], "in_b_shift": at["input_b_shift"],
         "out_offset": at["output_offset"], "out_mul": at["output_mul"], "out_shift": at["output_shift"]}
    ga, gb = (g.reshape(-1).astype(np.int64) for g in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
    want = K210_KERNELS["quantized_binary"](ga.astype(np.uint8), gb.astype(np.uint8), **at).astype(np.int64)
    bad_int = int((_sdk_quantized_add(ga, gb, p) != want).sum())
    if a.quant and b.quant and y.quant:
        float_codes, float_params = _float_add(ga, gb, a.quant, b.quant, y.quant)
        bad_float = int((float_codes != want).sum())
        if bad_float < bad_int:
            return "float", float_params, bad_float, bad_int
    return "QuantizedAdd", p, bad_int, bad_int


@lowers("quantized_binary")
def quantized_binary(ctx: Lowering, node: Node) -> None:
    """u8 add of two same-shape maps: QuantizedAdd (§8.2), or Dequantize ×2 + Add + Quantize, whichever
    agrees with the IR kernel on more of the 65536 input pairs (sdk_add_form, checked exhaustively); the
    float path typically disagrees 20× less often."""
    a, b = node.inputs
    y = node.output
    form = sdk_add_form(node)
    if form is None:
        raise Unexpressible(f"quantized {node.attrs['op']} of {a.shape} and {b.shape} (v3 has the add of two "
                            "same-shape maps)")
    kind, params, bad, bad_int = form
    n, ra, rb, ry = y.type.size, ctx.main(a), ctx.main(b), ctx.main(y)
    if kind == "float":
        da, db, (sc, bias) = params
        fa, fb, total = (ctx.scratch(f"{node.name}@{k}", 4 * n) for k in ("a", "b", "sum"))
        for r, f, (sc_in, b_in), k in ((ra, fa, da, "a"), (rb, fb, db, "b")):
            ctx.emit(f"{node.name}/dequantize_{k}", LayerType.Dequantize, [r], [f], fixed(
                LayerType.Dequantize, flags=1, main_mem_in_address=r, main_mem_out_address=f, count=n,
                scale=sc_in, bias=b_in))
        ctx.emit(f"{node.name}/add", LayerType.Add, [fa, fb], [total], fixed(
            LayerType.Add, flags=1, main_mem_in_a_address=fa, main_mem_in_b_address=fb, main_mem_out_address=total,
            count=n))
        _emit_quantize(ctx, node.name, total, ry, n, sc, bias)
    else:
        _emit_quantized_add(ctx, node.name, ra, rb, ry, n, params)
    if bad:
        form_name = "Dequantize+Add+Quantize" if kind == "float" else "QuantizedAdd"
        ctx.inexact.append(f"quantized add '{node.name}' as {form_name}: {bad} of 65536 input pairs give another "
                           f"code than quantized_binary (QuantizedAdd: {bad_int})")


@lowers("quantized_add_v3")
def quantized_add_v3(ctx: Lowering, node: Node) -> None:
    """The SDK's own QuantizedAdd (device_semantics): the node's fields are the layer's."""
    a, b = node.inputs
    _emit_quantized_add(ctx, node.name, ctx.main(a), ctx.main(b), ctx.main(node.output), node.output.type.size,
                        node.attrs)


def _emit_quantized_add(ctx: Lowering, name: str, ra: Ref, rb: Ref, ry: Ref, n: int, params: dict) -> None:
    ctx.emit(name, LayerType.QuantizedAdd, [ra, rb], [ry], fixed(
        LayerType.QuantizedAdd, flags=1, main_mem_in_a_address=ra, main_mem_in_b_address=rb,
        main_mem_out_address=ry, count=n, **params))


# ---------------------------------------------------------------- KPU layers
WEIGHT_LOAD_LIMIT = {True: 30 * 1024, False: 60 * 1024}      # bytes per weight load (kpu.md §7.8)


def kpu_args(in_shape, out_channels: int, kernel: int, *, depthwise: bool, pool_type: int, pad_value: int,
             arg_x: int, shr_x: int, arg_w: int, shr_w: int, arg_add: int, src_row: int, dst_row: int,
             eight_bit: bool = True) -> KpuArgs:
    """The 12 argument words of one KPU layer as nncase v0.1 fills them (kpu.md §3, §7.8).

    The three parameter addresses, int_en and send_data_out stay 0: the SDK fills them at run time."""
    c, h, w = in_shape
    _, f, s = POOL_TYPES[pool_type]
    oh, ow = h // s, w // s
    g_in, g_out = row_layout(w), row_layout(ow)
    weight_bytes = 1 if eight_bit else 2
    if depthwise:
        per_load, para_size, loads = c, c * kernel * kernel * weight_bytes, 1
    else:
        one_channel = kernel * kernel * c * weight_bytes
        per_load = min(out_channels, WEIGHT_LOAD_LIMIT[eight_bit] // one_channel)
        para_size, loads = one_channel * per_load, -(-out_channels // per_load)
    return KpuArgs(
        depth_wise_layer=int(depthwise), image_src_addr=src_row, image_dst_addr=dst_row,
        i_ch_num=c - 1, o_ch_num=out_channels - 1, o_ch_num_coef=per_load - 1,
        i_row_wid=w - 1, i_col_high=h - 1, o_row_wid=ow - 1, o_col_high=oh - 1,
        kernel_type=int(kernel == 3), pool_type=pool_type, load_para=1, dma_burst_size=15, pad_value=pad_value,
        load_coor=1, load_time=loads - 1, para_size=para_size,
        channel_switch_addr=g_in.row_len * h, row_switch_addr=g_in.row_len, coef_group=g_in.groups, load_act=1,
        wb_channel_switch_addr=g_out.row_len * oh, wb_row_switch_addr=g_out.row_len, wb_group=g_out.groups,
        shr_w=shr_w, shr_x=shr_x, arg_w=arg_w, arg_x=arg_x, arg_add=arg_add,
        channel_byte_num=ow * oh - 1, dma_total_byte=ow * oh * out_channels - 1)


@lowers("kpu_conv2d_q")
def kpu_conv2d_q(ctx: Lowering, node: Node) -> None:
    """One KPU layer -> K210Conv (§8.16), preceded by what puts its input into KPU RAM as nncase did:
    nothing (the model input, or another K210Conv's output), K210Upload from main memory (§8.19), or
    Quantize + K210AddPadding for a fully connected layer on a 4×4 map (§8.17, §11). The output also goes
    to main memory (flags = 1) when anything but a K210Conv reads it."""
    x, w, bn, act = node.inputs
    a, y = node.attrs, node.output
    if x.shape[0] != 1:
        raise Unexpressible(f"a batch of {x.shape[0]} maps (a v3 K210Conv runs one)")
    if not all(v.is_constant for v in (w, bn, act)):
        raise Unexpressible("KPU weights and tables must be constants")
    kx = _kpu_input(ctx, node)
    ky = ctx.kpu(y)
    to_main = y in ctx.graph.outputs or any(u.op != "kpu_conv2d_q" for u in y.user_nodes())
    my = ctx.main(y) if to_main else None
    table_bn, table_act = kpu_tables(bn.data, act.data)
    weights = np.ascontiguousarray(w.data, np.uint8)
    in_shape, out_c, k = chw(x), w.shape[0], w.shape[-1]
    fields = {f: int(a.get(f, 0)) for f in ("pad_value", "arg_x", "shr_x", "arg_w", "shr_w", "arg_add")}
    pool_type = POOL_TYPE_OF[a.get("pool", "bypass")]

    def make(addr):
        args = kpu_args(in_shape, out_c, k, depthwise=bool(a.get("depthwise", False)), pool_type=pool_type,
                        src_row=addr(kx), dst_row=addr(ky), eight_bit=ctx.eight_bit, **fields)
        return K210ConvBody(int(to_main), addr(my) if to_main else 0, args, weights, table_bn, table_act)
    ctx.emit(node.name, LayerType.K210Conv, [kx], [my, ky] if to_main else [ky], make)


def _kpu_input(ctx: Lowering, node: Node) -> Ref:
    """The KPU RAM copy of a K210Conv's input, emitting the layers that fill it."""
    x = node.inputs[0]
    if node in ctx.fc_inputs:
        src, quantize_node = ctx.fc_inputs[node]
        c = x.shape[1]
        if quantize_node is not None:
            qa = quantize_node.attrs
            sc, bias, bad = (qa["scale"], qa["bias"], 0) if quantize_node.op == "quantize_v3" else \
                quantize_params(qa["scale"], qa["zero_point"])
            if bad:
                ctx.inexact.append(f"Quantize '{quantize_node.name}': float32 inputs next to a rounding boundary "
                                   f"can get another code (zero point {quantize_node.attrs['zero_point']})")
            codes = ctx.scratch(f"{quantize_node.name}@1x1", c)
            _emit_quantize(ctx, quantize_node.name, ctx.main(src), codes, c, sc, bias)
        else:
            codes = ctx.main(src)
        kx = ctx.kpu(x)
        ctx.emit(f"{node.name}/add_padding", LayerType.K210AddPadding, [codes], [kx], fixed(
            LayerType.K210AddPadding, flags=0, main_mem_in_address=codes, kpu_mem_out_address=kx, channels=c))
        return kx
    if x is ctx.model_input or x.producer.op == "kpu_conv2d_q" or x in ctx.kpu_refs:
        return ctx.kpu(x)
    c, h, w = chw(x)
    rx, kx = ctx.main(x), ctx.kpu(x)
    ctx.emit(f"{node.name}/upload", LayerType.K210Upload, [rx], [kx], fixed(
        LayerType.K210Upload, flags=0, main_mem_in_address=rx, kpu_mem_out_address=kx, width=w, height=h, channels=c))
    return kx


def _claim_inputs(ctx: Lowering) -> None:
    """Before emitting: the nodes a K210Conv absorbs (nncase v0.1's patterns, §11).

    - quantize_u8 of the graph input read only by KPU layers: the kmodel takes the uint8 codes (the SDK
      loads layer 0's input straight into KPU RAM, §10);
    - pad [1,C,1,1] -> [1,C,4,4] (after or before its quantize_u8) feeding a 1×1 bypass layer whose
      every reader keeps pixel (0, 0): K210AddPadding writes only that pixel, and the layer's pixel (0, 0)
      depends on nothing else."""
    g = ctx.graph
    x = g.inputs[0]
    users = x.user_nodes()
    if x.dtype == "uint8" and users and all(u.op == "kpu_conv2d_q" for u in users):
        ctx.model_input = x
    elif len(users) == 1 and users[0].op == "quantize_u8" and x not in g.outputs:
        q = users[0]
        if q.output.user_nodes() and all(u.op == "kpu_conv2d_q" for u in q.output.user_nodes()) \
                and q.output not in g.outputs:
            ctx.model_input = q.output
            ctx.absorb(q, q.output.user_nodes()[0])
    for conv in g.nodes_of("kpu_conv2d_q"):
        if (m := _fc_input(g, conv)) is not None:
            pad_node, quantize_node = m
            ctx.fc_inputs[conv] = (pad_node.inputs[0], quantize_node)
            for n in (pad_node, quantize_node):
                if n is not None:
                    ctx.absorb(n, conv)


def _fc_input(g: Graph, conv: Node) -> tuple[Node, Node | None] | None:
    """(pad, quantize or None) if `conv` is a fully connected layer on a padded 1×1 map (see _claim_inputs)."""
    x, w = conv.inputs[0], conv.inputs[1]
    if w.shape[-1] != 1 or conv.attrs.get("pool", "bypass") != "bypass" or len(x.shape) != 4 \
            or x.shape[0] != 1 or x.shape[2:] != (4, 4) or sole_user(g, x) is not conv:
        return None
    quantize_node, p = None, x.producer
    if p.op in ("quantize_u8", "quantize_v3"):
        quantize_node, p = p, p.inputs[0].producer
        if sole_user(g, p.output) is not quantize_node:
            return None
    if p.op != "pad" or p.inputs[0].shape[2:] != (1, 1) or tuple(map(tuple, p.attrs["pads"][2:])) != ((0, 3), (0, 3)) \
            or any(tuple(q) != (0, 0) for q in p.attrs["pads"][:2]):
        return None
    readers = conv.output.user_nodes()
    if not readers or conv.output in g.outputs or any(
            r.op != "strided_slice" or tuple(r.attrs["begin"]) != (0, 0, 0, 0) or r.output.shape[2:] != (1, 1)
            or tuple(r.attrs["strides"])[1] != 1 for r in readers):
        return None
    return p, quantize_node


# ---------------------------------------------------------------- preparation: pads into the KPU ring
SELECTIONS = {"bypass": (1, 0, 0), "left_top_2_s2": (2, 0, 0), "right_top_2_s2": (2, 0, 1), "left_top_4_s4": (4, 0, 0)}


def fold_pad_into_kpu_conv2d_q(graph: Graph) -> bool:
    """A zero-point pad before a KPU layer, kept in part by a slice after it, becomes a slice of the
    layer run on the unpadded map.

    pad(x, p) [-> quantize_u8] -> kpu_conv2d_q(pool = selection) -> strided_slice
        ==>   [quantize_u8 ->] kpu_conv2d_q(x, pool = bypass) -> strided_slice(composite)
    Why: v3 has no pad layer and the SDK loads layer 0's input unpadded. The KPU's ring reads pad_value
    outside the map, which is what the pad wrote, so the padded layer's output row r is the unpadded
    layer's row r − p_top wherever the slice looks (it must stay inside the map). The selection pools
    (left/right top) are index maps too, so the slice absorbs them.
    Exact on the quantized executor (tests). Order: before lowering; the slice is then lowered as a
    nearest resize.
    """
    changed = False
    for sl in graph.nodes_of("strided_slice"):
        m = _match_padded_layer(graph, sl)
        if m is None:
            continue
        conv, quantize_node, pad_node, begin, end, strides = m
        src = pad_node.inputs[0]
        if quantize_node is not None:
            src = _copy_node(graph, quantize_node, [src], before=sl).output
        new = _copy_node(graph, conv, [src, *conv.inputs[1:]], before=sl, pool="bypass")
        cut = _copy_node(graph, sl, [new.output], before=sl, begin=begin, end=end, strides=strides)
        graph.replace_all_uses(sl.output, cut.output)
        changed = True
    return changed | graph.eliminate_dead_code() if changed else False


def _match_padded_layer(graph: Graph, sl: Node):
    conv = sl.inputs[0].producer
    if conv.op != "kpu_conv2d_q" or sole_user(graph, conv.output) is not sl \
            or conv.attrs.get("pool", "bypass") not in SELECTIONS:
        return None
    quantize_node, p = None, conv.inputs[0].producer
    if p.op == "quantize_u8" and sole_user(graph, p.output) is conv:
        quantize_node, p = p, p.inputs[0].producer
    if p.op != "pad" or sole_user(graph, p.output) is not (quantize_node or conv):
        return None
    pads, a = p.attrs["pads"], p.attrs
    if a.get("mode", "constant") != "constant" or len(pads) != 4 or any(tuple(q) != (0, 0) for q in pads[:2]) \
            or any(q < 0 for pair in pads[2:] for q in pair):
        return None
    code = a.get("value", 0.0)
    if quantize_node is not None:
        code = K210_KERNELS["quantize_u8"](np.float32(code), scale=quantize_node.attrs["scale"],
                                           zero_point=quantize_node.attrs["zero_point"])
    if int(code) != conv.attrs.get("pad_value", 0):
        return None
    s, dy, dx = SELECTIONS[conv.attrs.get("pool", "bypass")]
    begin, end, strides = (list(sl.attrs[k]) for k in ("begin", "end", "strides"))
    if begin[0] != 0 or strides[0] != 1 or strides[2] < 1 or strides[3] < 1:
        return None
    h, w = p.inputs[0].shape[2:]
    if why_not_kpu_layer(p.inputs[0].shape, conv.output.shape[1], conv.inputs[1].shape[-1],
                         depthwise=conv.attrs.get("depthwise", False)) is not None:
        return None        # the unpadded map is too small for the KPU (a fully connected layer's 1×1)
    out_h, out_w = sl.output.shape[2:]
    for axis, size, offset, pad_before, n in ((2, h, dy, pads[2][0], out_h), (3, w, dx, pads[3][0], out_w)):
        first = begin[axis] * s + offset - pad_before
        step = strides[axis] * s
        last = first + step * (n - 1)
        if first < 0 or last > size - 1:
            return None
        begin[axis], end[axis], strides[axis] = first, last + 1, step
    return conv, quantize_node, p, tuple(begin), tuple(end), tuple(strides)


def _copy_node(graph: Graph, node: Node, inputs, *, before: Node, **changes) -> Node:
    """`node` again with new inputs and some attrs changed, keeping its quantization and meta."""
    new = graph.add(node.op, inputs, name=node.name, before=before, **{**node.attrs, **changes})
    new.meta.update(node.meta)
    for old_v, new_v in zip(node.outputs, new.outputs):
        new_v.quant = old_v.quant
    return new


def prepare_v3(graph: Graph) -> Graph:
    """A copy of `graph` rewritten into the forms v3 layers express (the source graph is untouched)."""
    g = graph.clone()
    while fold_pad_into_kpu_conv2d_q(g):
        pass
    return g


# ---------------------------------------------------------------- driver
def schedule(graph: Graph) -> list[Node]:
    """nncase's layer order: depth-first from the outputs, producers first, in operand order (§12)."""
    order, seen = [], set()
    for out in graph.outputs:
        stack = [(out.producer, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0 and id(node) in seen:
                continue
            if i < len(node.inputs):
                stack.append((node, i + 1))
                if id(node.inputs[i].producer) not in seen:
                    stack.append((node.inputs[i].producer, 0))
                continue
            if id(node) not in seen:
                seen.add(id(node))
                order.append(node)
    return order


@dataclass
class LoweredV3:
    """A lowering's results: the model, the memory plan, and what the CLI reports."""
    model: KModelV3
    plan: Plan
    graph: Graph               # the prepared graph the layers were emitted from
    layer_names: list[str]     # the node each layer comes from, in layer order
    input: dict
    inexact: list[str]


def lower_v3_detailed(graph: Graph) -> LoweredV3:
    """`lower_v3` with the memory plan, the prepared graph the layers come from, and the layer names."""
    if len(graph.inputs) != 1:
        raise KpucError(f"a kmodel v3 has exactly one input, this graph has {len(graph.inputs)}; "
                        "try --kmodel-version 4")
    graph = prepare_v3(graph)
    ctx, problems = Lowering(graph), []
    _claim_inputs(ctx)
    for node in schedule(graph):
        if node in ctx.absorbed:
            continue
        fn = LOWER_V3.get(node.op)
        try:
            if fn is None:
                raise Unexpressible(f"no kmodel v3 layer for IR op '{node.op}'")
            fn(ctx, node)
        except Unexpressible as e:
            problems.append(f"{node.op} '{node.name}' ({e})")
    for v in graph.outputs:
        if v.producer.op in ("input", "constant"):
            problems.append(f"output '{v.name}' is a graph {v.producer.op}, not computed by any layer")
    if problems:
        raise KpucError(f"kmodel v3 cannot express {len(problems)} op(s): " + "; ".join(problems)
                        + ". Try --kmodel-version 4")
    x = _check_first_layer(ctx)
    outputs = [ctx.main(v) for v in graph.outputs]
    plan = plan_memory(ctx.steps, ctx.buffers.values(), [MAIN, KPU], keep=[r.buffer for r in outputs])

    def addr(ref: Ref) -> int:
        return plan.offset(ref.buffer) + ref.offset

    layers = [V3Layer(e.type, e.make(addr)) for e in ctx.layers]
    kpu_plan, main_plan = plan.pools.get("kpu"), plan.pools.get("main")
    header = V3_HEADER.make(
        version=3, flags=int(ctx.eight_bit), arch=0, layers_length=len(layers),
        max_start_address=kpu_plan.lowest if kpu_plan and kpu_plan.lowest is not None else KPU_RAM_ROWS,
        main_mem_usage=main_plan.used if main_plan else 0, output_count=len(outputs))
    out_table = [V3_OUTPUT.make(address=addr(r), size=nbytes(v)) for r, v in zip(outputs, graph.outputs)]
    model = KModelV3(header, out_table, layers, tail_padding=True)
    entry = {"shape": list(x.shape), "dtype": x.dtype, "memory": "kpu" if x in ctx.kpu_refs else "main"}
    if x is not graph.inputs[0]:      # the kmodel takes the codes of the graph input's quantize_u8
        q = x.producer.attrs
        entry["quant"] = {"scale": q["scale"], "zero_point": q["zero_point"]}
    return LoweredV3(model, plan, graph, [e.name for e in ctx.layers], entry, ctx.inexact)


def _check_first_layer(ctx: Lowering) -> Value:
    """The SDK starts a v3 model only at a K210Conv or a FullyConnected reading the input (§10).
    Returns the value the kmodel's input is."""
    if not ctx.layers:
        raise KpucError("the graph has no layer to run; kmodel v3 needs at least one")
    first, x = ctx.layers[0], ctx.model_input or ctx.graph.inputs[0]
    ok_type = first.type in (LayerType.K210Conv, LayerType.FullyConnected)
    refs = [r.buffer for r in (ctx.main_refs.get(x), ctx.kpu_refs.get(x)) if r is not None]
    reads_input = any(b in ctx.steps[0].reads for b in refs)
    if not (ok_type and reads_input):
        raise KpucError(f"the first layer is {first.type.name} '{first.name}'"
                        f"{'' if reads_input else ' not reading the input'}; the K210 SDK starts a v3 model only at a "
                        "K210Conv or a FullyConnected that reads the input. Try --kmodel-version 4")
    if len(refs) > 1:
        raise KpucError("the input feeds both a K210Conv and a CPU layer; the SDK only fills layer 0's copy of it "
                        "(kmodel-v3.md §15). Try --kmodel-version 4")
    return x


def lower_v3(graph: Graph) -> KModelV3:
    """The kmodel v3 for a float or quantized graph; raises KpucError naming every op v3 cannot express."""
    return lower_v3_detailed(graph).model


def compile_v3(graph: Graph) -> tuple[bytes, dict]:
    """The kmodel v3 file and a summary for the CLI (layers on KPU and CPU, memory, size)."""
    low = lower_v3_detailed(graph)
    data = write_v3(low.model)
    types = Counter(l.type.name for l in low.model.layers)
    kpu_layers = types.get("K210Conv", 0)
    kpu = low.plan.pools.get("kpu")
    header = low.model.header
    summary = {
        "kmodel_version": 3,
        "layers": len(low.model.layers),
        "kpu_layers": kpu_layers,
        "cpu_layers": len(low.model.layers) - kpu_layers,
        "layer_types": dict(sorted(types.items())),
        "kpu_ram_peak_bytes": (kpu.live_peak if kpu else 0) * KPU_ROW_BYTES,
        "main_memory_bytes": header.main_mem_usage,
        "file_bytes": len(data),
        "input": low.input,
        "outputs": [{"address": o.address, "size": o.size} for o in low.model.outputs],
    }
    if kpu and kpu.peak_step:
        summary["kpu_ram_peak_layer"] = kpu.peak_step
    if low.inexact:
        summary["inexact"] = low.inexact
    return data, summary
