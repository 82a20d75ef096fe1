"""kmodel v3 emitters of the float CPU layers and of data movement: FullyConnected, Add, Softmax, pools,
flatten, concat, resize and slices (lower_v3.py has the overview)."""
from __future__ import annotations

import numpy as np

import compiler.kernels.all  # noqa: F401  (fills KERNELS)
from compiler.ir import Node, Value
from compiler.kernels import KERNELS
from targets.k210.kmodel_v3 import ConcatenationBody, FullyConnectedBody, LayerType
from targets.k210.lower_v3_core import (
    ACTIVATIONS,
    NO_CLAMP,
    Lowering,
    Ref,
    Unexpressible,
    chw,
    fixed,
    lowers,
    nbytes,
    sole_user,
    vector_len,
)


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
        lo_hi = (float(user.attrs["min"]), float(user.attrs["max"]))
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
    bias, last, clamp = np.zeros(oc, np.float32), node, node.attrs["fused_clamp"]
    add = sole_user(ctx.graph, node.output) if node.op == "matmul" else None
    if node.op == "matmul_f32":
        bias = np.asarray(node.inputs[2].data, np.float32).reshape(oc)
    if tuple(clamp) == NO_CLAMP and add is not None and add.op == "binary" and add.attrs["op"] == "add" \
            and add.output.shape == node.output.shape:
        other = add.inputs[1] if add.inputs[0] is node.output else add.inputs[0]
        if other.is_constant and other.type.size == oc:
            bias, last, clamp = other.data.reshape(oc).astype(np.float32), add, add.attrs["fused_clamp"]
            ctx.absorb(add, node)
    last, act = _activation(ctx, last, clamp)
    x, y = ctx.main(a), ctx.main(last.output)
    weights = np.ascontiguousarray(b.data.T, np.float32)
    ctx.emit(node.name, LayerType.FullyConnected, [x], [y], lambda addr: FullyConnectedBody(
        0, addr(x), addr(y), act, weights, bias))


@lowers("quantized_conv2d", "quantized_matmul")
def quantized_cpu_layer(ctx: Lowering, node: Node) -> None:
    """v3 has no uint8 CPU conv or matmul: say what it has (a pre-quantized model's small convs and matmuls
    are quantized by default, where a float model's stay float)."""
    raise Unexpressible("v3 has no uint8 CPU convolution or matrix product (only a float 1×1 conv of a 1×1 map "
                        "or a float matmul, as FullyConnected)")


@lowers("conv2d", "conv2d_f32")
def conv2d(ctx: Lowering, node: Node) -> None:
    """A 1×1 conv of a 1×1 map is a FullyConnected (f32); v3 has no other CPU convolution."""
    x, w, b = node.inputs
    a = node.attrs
    if not (w.is_constant and b.is_constant) or x.dtype != "float32" or w.shape[2:] != (1, 1) \
            or a["groups"] != 1 or len(x.shape) != 4 or chw(x)[1:] != (1, 1) \
            or any(p != 0 for pair in a["padding"] for p in pair):
        raise Unexpressible("v3 has no CPU convolution (only a 1×1 conv of a 1×1 map, as FullyConnected)")
    last, act = _activation(ctx, node, a["fused_clamp"])
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
    if tuple(node.attrs["fused_clamp"]) != NO_CLAMP:
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
    if node.op == "softmax" and node.attrs["log"]:
        raise Unexpressible("log-softmax has no v3 layer")
    _vector_layer(LayerType.Softmax, ctx, node, node.attrs["axis"])


@lowers("lp_normalize")
def lp_normalize(ctx: Lowering, node: Node) -> None:
    """x / ||x||_2 over a whole vector -> L2Normalization (§8.9: x / sqrt(max(Σx², 1e-10)))."""
    if node.attrs["p"] != 2:
        raise Unexpressible(f"L{node.attrs['p']} normalization (v3 has L2 only)")
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
    (pt, pb), (pl, pr) = a["padding"]
    if tuple(a["dilations"]) != (1, 1) or a["ceil_mode"]:
        raise Unexpressible("dilated or ceil-mode pooling has no v3 layer")
    if a["op"] == "mean" and a["count_include_pad"] and (pt, pb, pl, pr) != (0, 0, 0, 0):
        raise Unexpressible("the v3 average pool divides by the taps inside the map, not by the padded window")
    (c, h, w), (_, oh, ow) = chw(x), chw(y)
    (kh, kw), (sh, sw) = a["kernel"], a["strides"]
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
                            f"{a['coordinate_transformation_mode']}/{a['nearest_mode']}")
    type = LayerType.ResizeNearestNeighbor if x.dtype == "float32" else LayerType.QuantizedResizeNearestNeighbor
    rx, ry = ctx.main(x), ctx.main(y)
    ctx.emit(node.name, type, [rx], [ry], fixed(
        type, flags=0, main_mem_in_address=rx, main_mem_out_address=ry, in_width=w, in_height=h, in_channels=c,
        out_width=ow, out_height=oh, align_corners=int(a["coordinate_transformation_mode"] == "align_corners")))


# ---------------------------------------------------------------- data movement
def _gather_ranges(x: Value, y: Value, begin, strides) -> list[tuple[int, int]] | None:
    """Byte ranges of `x` that, copied back to back, give the slice `y` (None unless W is contiguous)."""
    (_, h, w), (oc, oh, ow), item = chw(x), chw(y), np.dtype(x.dtype).itemsize
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
    (_, h, w), (oc, oh, ow), item = chw(x), chw(y), np.dtype(x.dtype).itemsize
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
