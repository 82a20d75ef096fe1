"""Lower an IR graph to a kmodel v3 (nncase v0.1 / K210 SDK `kpu.c`): layers, memory plan, file.

One function per IR op in `LOWER_V3` (nncase's emitters). Each reads the node, may absorb the nodes
that nncase fused into the same layer (a bias add and a ReLU after a matmul), and emits layers: a
`LayerType`, the buffers it reads and writes, and a function from addresses to the layer body. Once
every layer is known, `planner.plan_memory` places the buffers (main memory with nncase v0.1's
allocator, KPU RAM likewise with an offline fallback; kmodel-v3.md §12) and the bodies are built.

Layer order is nncase's: depth-first from the graph outputs, producers before consumers in operand
order (kmodel-v3.md §12). Reshapes alias their input and emit nothing. Everything v3 cannot say is
collected and reported at once, suggesting kmodel v4.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import numpy as np

from compiler.errors import KpucError
from compiler.ir import Graph, Node, Value
from compiler.kernels import KERNELS
import compiler.kernels.all  # noqa: F401  (fills KERNELS)
from targets.k210.kmodel_v3 import (FIXED_BODIES, V3_HEADER, V3_OUTPUT, ConcatenationBody, FullyConnectedBody,
                                    KModelV3, LayerType, V3Layer, write_v3)
from targets.k210.kpu import POOL_TYPES, KpuArgs
from targets.k210.kpu_layout import KPU_RAM_ROWS, KPU_ROW_BYTES, kpu_rows, row_layout
from targets.k210.planner import Buffer, Plan, Pool, Step, plan_memory

MAIN = Pool("main", None, 8, "bytes", "nncase_main", "main memory")         # kmodel-v3.md §9.1
KPU = Pool("kpu", KPU_RAM_ROWS, 1, "rows", "nncase_kpu", "KPU RAM")         # kmodel-v3.md §9.2
ACTIVATIONS = {(0.0, math.inf): 1, (0.0, 6.0): 2}                            # SDK float act enum (§8)
NO_CLAMP = (-math.inf, math.inf)


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
            b = self.buffers[self.main_refs[v].buffer]
            self.buffers[b.name] = Buffer(b.name, b.pool, max(b.size, nbytes(v) + self.main_refs[v].offset + extra_bytes))
        return self.main_refs[v]

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
    """(C, H, W) of a batch-1 NCHW map (lower ranks are read as trailing dims of 1)."""
    shape = v.shape
    if len(shape) == 4 and shape[0] != 1 or len(shape) > 4:
        raise Unexpressible(f"{v.name} has shape {shape}; kmodel v3 layers take batch-1 C×H×W maps")
    shape = tuple(shape[1:] if len(shape) == 4 else shape[-3:] if len(shape) >= 3 else ())
    return (*(1,) * (3 - len(shape)), *shape) if len(shape) < 3 else shape


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


@lowers("matmul")
def matmul(ctx: Lowering, node: Node) -> None:
    """matmul(x[1,IC], W[IC,OC]) [+ bias[OC]] [ReLU/ReLU6] -> FullyConnected (f32, kmodel-v3.md §8.11)."""
    a, b = node.inputs
    if not b.is_constant or b.data.ndim != 2 or a.dtype != "float32":
        raise Unexpressible("FullyConnected needs a float input and a constant 2-D weight matrix")
    ic, oc = b.shape
    if a.type.size != ic:
        raise Unexpressible(f"input {a.shape} is a batch of rows; FullyConnected multiplies one vector")
    bias, last, clamp = np.zeros(oc, np.float32), node, node.attrs.get("fused_clamp", NO_CLAMP)
    add = sole_user(ctx.graph, node.output)
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


@lowers("softmax")
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


@lowers("reduce")
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


@lowers("reduce_window2d")
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
    if [d for d in (x.shape[p] for p in perm) if d != 1] == [d for d in x.shape if d != 1] and \
            [p for p in perm if x.shape[p] != 1] == sorted(p for p in perm if x.shape[p] != 1):
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
    if y.dtype == "uint8" and len({x.producer.output.quant for x in node.inputs} | {y.quant}) > 1:
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
    """A lowering's results: the model, the memory plan and the layer names (for reports)."""
    model: KModelV3
    plan: Plan
    layer_names: list[str]
    input_type: tuple
    kpu_rows_used: int


def _lower(graph: Graph) -> LoweredV3:
    if len(graph.inputs) != 1:
        raise KpucError(f"a kmodel v3 has exactly one input, this graph has {len(graph.inputs)}; "
                        "try --kmodel-version 4")
    ctx, problems = Lowering(graph), []
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
    _check_first_layer(ctx)
    outputs = [ctx.main(v) for v in graph.outputs]
    plan = plan_memory(ctx.steps, ctx.buffers.values(), [MAIN, KPU], keep=[r.buffer for r in outputs])

    def addr(ref: Ref) -> int:
        return plan.offset(ref.buffer) + ref.offset

    layers = [V3Layer(e.type, e.make(addr)) for e in ctx.layers]
    kpu_plan, main_plan = plan.pools.get("kpu"), plan.pools.get("main")
    kpu_used = kpu_plan.used if kpu_plan and kpu_plan.lowest is not None else 0
    header = V3_HEADER.make(
        version=3, flags=int(ctx.eight_bit), arch=0, layers_length=len(layers),
        max_start_address=kpu_plan.lowest if kpu_plan and kpu_plan.lowest is not None else KPU_RAM_ROWS,
        main_mem_usage=main_plan.used if main_plan else 0, output_count=len(outputs))
    out_table = [V3_OUTPUT.make(address=addr(r), size=nbytes(v)) for r, v in zip(outputs, graph.outputs)]
    model = KModelV3(header, out_table, layers, tail_padding=True)
    x = graph.inputs[0]
    return LoweredV3(model, plan, [e.name for e in ctx.layers], (x.shape, x.dtype), kpu_used)


def _check_first_layer(ctx: Lowering) -> None:
    """The SDK starts a v3 model only at a K210Conv or a FullyConnected reading the input (§10)."""
    if not ctx.layers:
        raise KpucError("the graph has no layer to run; kmodel v3 needs at least one")
    first, x = ctx.layers[0], ctx.graph.inputs[0]
    ok_type = first.type in (LayerType.K210Conv, LayerType.FullyConnected)
    reads_input = any(r in ctx.steps[0].reads for r in (ctx.main_refs.get(x, Ref("")).buffer,
                                                        ctx.kpu_refs.get(x, Ref("")).buffer))
    if not (ok_type and reads_input):
        raise KpucError(f"the first layer is {first.type.name} '{first.name}'"
                        f"{'' if reads_input else ' not reading the input'}; the K210 SDK starts a v3 model only at a "
                        "K210Conv or a FullyConnected that reads the input. Try --kmodel-version 4")
    if x in ctx.main_refs and x in ctx.kpu_refs:
        raise KpucError("the input feeds both a K210Conv and a CPU layer; the SDK only fills layer 0's copy of it "
                        "(kmodel-v3.md §15). Try --kmodel-version 4")


def lower_v3(graph: Graph) -> KModelV3:
    """The kmodel v3 for a float or quantized graph; raises KpucError naming every op v3 cannot express."""
    return _lower(graph).model


def compile_v3(graph: Graph) -> tuple[bytes, dict]:
    """The kmodel v3 file and a summary for the CLI (layers on KPU and CPU, memory, size)."""
    low = _lower(graph)
    data = write_v3(low.model)
    types = Counter(l.type.name for l in low.model.layers)
    kpu_layers = types.get("K210Conv", 0)
    summary = {
        "kmodel_version": 3,
        "layers": len(low.model.layers),
        "kpu_layers": kpu_layers,
        "cpu_layers": len(low.model.layers) - kpu_layers,
        "layer_types": dict(sorted(types.items())),
        "kpu_ram_peak_bytes": low.kpu_rows_used * KPU_ROW_BYTES,
        "main_memory_bytes": low.model.header.main_mem_usage,
        "file_bytes": len(data),
        "input": {"shape": list(low.input_type[0]), "dtype": low.input_type[1]},
        "outputs": [{"address": o.address, "size": o.size} for o in low.model.outputs],
    }
    return data, summary
