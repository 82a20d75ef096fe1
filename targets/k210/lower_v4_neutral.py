"""kmodel v4 emitters for the neutral ops: float math and data movement (kmodel-v4.md §8, §9, §12).

One function per IR op (nncase's codegen/ops/neutral); each reads its operands' buffers, asks for its
output buffer and appends body dataclasses of kmodel_v4.py. Where the runtime has no op for an IR op the
emitter says how it decomposes (softmax as ncc's importers do, transcendental unaries as NNIL programs,
space/batch moves as one 4-D transpose). What the v0.2 runtime cannot express raises a KpucError naming
the node.
"""
from __future__ import annotations

import math
import struct

import numpy as np

from compiler.errors import KpucError
from compiler.ir import Node, Value
from compiler.kernels.resize import _nearest_index, _source_coord
from targets.k210 import kmodel_v4 as k4
from targets.k210.lower_v4 import Buffer, Lowering, emitter, shape4, value_range

F32 = np.float32
BINARY_CODES = {"add": 0, "sub": 1, "mul": 2, "div": 3, "min": 4, "max": 5}        # binary_op_t (§4.3)
REDUCE_CODES = {"mean": 0, "min": 1, "max": 2, "sum": 3}                          # reduce_op_t
UNARY_CODES = {"abs": 0, "ceil": 1, "cos": 2, "exp": 3, "floor": 4, "log": 5, "neg": 6, "rsqrt": 7,
               "sin": 8, "square": 9}                                              # unary_op_t
FULL = (-math.inf, math.inf)


def _need_float(node: Node, *values: Value) -> None:
    for v in values or (node.output,):
        if v.dtype != "float32":
            raise KpucError(f"{node.name}: the v0.2 runtime's {node.op} is float32 only, %{v.name} is {v.dtype}")


def _elems(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


# ---------------------------------------------------------------- helpers other emitters share
def emit_binary(ctx: Lowering, op: str, a: Buffer, a_shape, b: Buffer, b_shape, out: Buffer, out_shape,
                clamp=FULL) -> None:
    """float32 a op b with the runtime's broadcast (size-1 dims only, §8.1) and a fused clamp."""
    ctx.emit(k4.Binary(a, b, out, BINARY_CODES[op], shape4(a_shape), shape4(b_shape), shape4(out_shape),
                       value_range(clamp)))


def emit_nnil(ctx: Lowering, program: bytes, x: Buffer, out: Buffer) -> None:
    """nnil_unary_method (§8.21, §9): the program runs once per float32 element."""
    ctx.emit(k4.NnilUnaryMethod(x, out, program))


def copy_to_main(ctx: Lowering, src: Buffer, shape, name: str) -> Buffer:
    """A main-memory copy of `src`: memory_copy moves whole 4-byte words only (§8.10), so a u8 tensor of
    another size is copied by a pad with no padding."""
    out = Buffer(name, k4.MEM_MAIN, src.datatype, src.size)
    ctx.emit(_copy_body(src, out, shape))
    return out


def pad_body(src: Buffer, dst: Buffer, in_shape, pads, value: float | int = 0) -> k4.Pad:
    """pad (§8.6) of a tensor of `in_shape` by (before, after) per dim (left-padded to 4-D). The value is
    written as the element type's bytes (ncc always wrote {0, 0}, which is what a 0 gives)."""
    pads = ((0, 0),) * (4 - len(pads)) + tuple(tuple(p) for p in pads)
    if src.datatype == k4.DT_FLOAT32:
        storage = struct.pack("<f", value)
    else:
        storage = bytes([int(value)]) + bytes(3)
    return k4.Pad(src, dst, shape4(in_shape), tuple(k4.Padding(*p) for p in pads),
                  k4.Scalar(src.datatype if value else 0, storage))


def _copy_body(src: Buffer, dst: Buffer, shape):
    """memory_copy moves whole 4-byte words (§8.10); other sizes are copied by a pad of nothing."""
    if src.size % 4 == 0:
        return k4.MemoryCopy(src, dst)
    return pad_body(src, dst, shape, ((0, 0),) * len(shape))


# ---------------------------------------------------------------- NNIL programs (§9)
class Nnil:
    """A tiny assembler: `Nnil().x().c(1.0).op("add").ret()`; `x` is the element (lda_0)."""
    UNARY = {"abs": 0x20, "ceil": 0x21, "cos": 0x22, "exp": 0x23, "floor": 0x24, "log": 0x25, "neg": 0x26,
             "rsqrt": 0x27, "sin": 0x28, "square": 0x29}
    BINARY = {"add": 0x40, "sub": 0x41, "mul": 0x42, "div": 0x43, "min": 0x44, "max": 0x45}

    def __init__(self):
        self.code = bytearray()

    def x(self) -> "Nnil":
        self.code.append(0x03)
        return self

    def c(self, value: float) -> "Nnil":
        self.code += b"\x06" + struct.pack("<f", value)   # ldc_r4 (ncc never uses the short forms)
        return self

    def op(self, *names: str) -> "Nnil":
        for name in names:
            self.code.append(self.UNARY.get(name) or self.BINARY[name])
        return self

    def ret(self) -> bytes:
        return bytes(self.code + b"\xa0")


def clamp_program(p: Nnil, lo: float, hi: float) -> Nnil:
    if lo > -math.inf:
        p.c(lo).op("max")
    if hi < math.inf:
        p.c(hi).op("min")
    return p


# x -> NNIL program for the unary ops the runtime's `unary` lacks
NNIL_UNARY = {
    "sigmoid": lambda: Nnil().c(1.0).x().op("neg", "exp").c(1.0).op("add", "div").ret(),        # 1/(1+e^-x)
    "tanh": lambda: Nnil().c(2.0).x().c(-2.0).op("mul", "exp").c(1.0).op("add", "div").c(1.0).op("sub").ret(),
    "sqrt": lambda: Nnil().c(1.0).x().op("rsqrt", "div").ret(),                                  # 1/rsqrt(x)
    "reciprocal": lambda: Nnil().c(1.0).x().op("div").ret(),
    # max(x, 0) + log(1 + e^-|x|): no overflow for large x
    "softplus": lambda: Nnil().x().c(0.0).op("max").c(1.0).x().op("abs", "neg", "exp", "add", "log", "add").ret(),
    "hard_swish": lambda: clamp_program(Nnil().x().x().c(3.0).op("add"), 0.0, 6.0).op("mul").c(6.0).op("div").ret(),
}


# ---------------------------------------------------------------- elementwise
@emitter("binary")
def binary(ctx: Lowering, node: Node) -> None:
    a, b = node.inputs
    _need_float(node, a, b)
    op, clamp = node.attrs["op"], node.attrs.get("fused_clamp", FULL)
    out = node.output
    if op in BINARY_CODES:
        emit_binary(ctx, op, ctx.buffer(a), a.shape, ctx.buffer(b), b.shape, ctx.output(out), out.shape, clamp)
    elif op == "squared_difference":                       # (a - b)·(a - b)
        t = ctx.temp("diff", out.shape)
        emit_binary(ctx, "sub", ctx.buffer(a), a.shape, ctx.buffer(b), b.shape, t, out.shape)
        emit_binary(ctx, "mul", t, out.shape, t, out.shape, ctx.output(out), out.shape, clamp)
    elif op == "pow" and b.is_constant and np.all(b.data == 2) and out.shape == a.shape:   # a^2 = a·a
        emit_binary(ctx, "mul", ctx.buffer(a), a.shape, ctx.buffer(a), a.shape, ctx.output(out), out.shape, clamp)
    elif op == "pow":                                      # a^b = exp(b·log a), for a > 0 (and a = 0, b > 0)
        la, t = ctx.temp("log", a.shape), ctx.temp("mul", out.shape)
        ctx.emit(k4.Unary(ctx.buffer(a), la, UNARY_CODES["log"]))
        emit_binary(ctx, "mul", ctx.buffer(b), b.shape, la, a.shape, t, out.shape)
        if clamp == FULL:
            ctx.emit(k4.Unary(t, ctx.output(out), UNARY_CODES["exp"]))
        else:
            emit_nnil(ctx, clamp_program(Nnil().x().op("exp"), *clamp).ret(), t, ctx.output(out))
    else:
        raise KpucError(f"{node.name}: the v0.2 runtime has no binary '{op}'")


@emitter("unary")
def unary(ctx: Lowering, node: Node) -> None:
    x = node.inputs[0]
    _need_float(node, x)
    op = node.attrs["op"]
    if op in UNARY_CODES:
        ctx.emit(k4.Unary(ctx.buffer(x), ctx.output(node.output), UNARY_CODES[op]))
    elif op in NNIL_UNARY:
        emit_nnil(ctx, NNIL_UNARY[op](), ctx.buffer(x), ctx.output(node.output))
    else:
        raise KpucError(f"{node.name}: the v0.2 runtime cannot compute unary '{op}' (neither `unary` nor NNIL)")


@emitter("clamp", "leaky_relu", "hard_sigmoid")
def activation(ctx: Lowering, node: Node) -> None:
    """Standalone activations (fuse_clamp folds most into their producer) as NNIL programs."""
    _need_float(node, node.inputs[0])
    a = node.attrs
    if node.op == "clamp":
        program = clamp_program(Nnil().x(), a.get("min", -math.inf), a.get("max", math.inf)).ret()
    elif node.op == "leaky_relu":     # max(x, αx) for α <= 1, min(x, αx) above
        program = Nnil().x().x().c(a["alpha"]).op("mul", "max" if a["alpha"] <= 1 else "min").ret()
    else:                             # clamp(αx + β, 0, 1)
        program = clamp_program(Nnil().x().c(a["alpha"]).op("mul").c(a["beta"]).op("add"), 0.0, 1.0).ret()
    emit_nnil(ctx, program, ctx.buffer(node.inputs[0]), ctx.output(node.output))


@emitter("prelu")
def prelu(ctx: Lowering, node: Node) -> None:
    """max(x, 0) + slope·min(x, 0): four binaries on a zero constant."""
    x, slope = node.inputs
    _need_float(node, x, slope)
    shape = node.output.shape
    zero = ctx.const(np.zeros(1, F32), f"{node.name}/zero")
    neg, scaled, pos = ctx.temp("neg", shape), ctx.temp("scaled", shape), ctx.temp("pos", shape)
    emit_binary(ctx, "min", ctx.buffer(x), x.shape, zero, (1,), neg, shape)
    emit_binary(ctx, "mul", neg, shape, ctx.buffer(slope), slope.shape, scaled, shape)
    emit_binary(ctx, "max", ctx.buffer(x), x.shape, zero, (1,), pos, shape)
    emit_binary(ctx, "add", pos, shape, scaled, shape, ctx.output(node.output), shape)


# ---------------------------------------------------------------- convolutions and matmul
@emitter("conv2d")
def conv2d(ctx: Lowering, node: Node) -> None:
    x, w, b = node.inputs
    _need_float(node, x)
    if not (w.is_constant and b.is_constant):
        raise KpucError(f"{node.name}: conv2d weights and bias must be constants (they go into the body, §8.3)")
    a = node.attrs
    (ph, pw), (sh, sw), (dh, dw) = a.get("padding", ((0, 0), (0, 0))), a.get("strides", (1, 1)), a.get("dilations", (1, 1))
    oc, _, kh, kw = w.shape
    ctx.emit(k4.Conv2D(ctx.buffer(x), ctx.output(node.output), shape4(x.shape), a.get("groups", 1), oc,
                       k4.Padding(*ph), k4.Padding(*pw), kh, kw, sh, sw, dh, dw,
                       value_range(a.get("fused_clamp", FULL)), w.data.astype(F32).reshape(-1),
                       b.data.astype(F32).reshape(-1)))


@emitter("conv2d_transpose")
def conv2d_transpose(ctx: Lowering, node: Node) -> None:
    """Weights IOHW -> the body's [O][I/g] per group. The v0.2 kernel never adds its bias (§8.20), so a
    non-zero bias becomes a binary add that also carries the clamp."""
    x, w, b = node.inputs
    _need_float(node, x)
    if not (w.is_constant and b.is_constant):
        raise KpucError(f"{node.name}: conv2d_transpose weights and bias must be constants")
    a = node.attrs
    g = a.get("groups", 1)
    (ph, pw), (sh, sw), (dh, dw) = a.get("padding", ((0, 0), (0, 0))), a.get("strides", (1, 1)), a.get("dilations", (1, 1))
    ci, og, kh, kw = w.shape
    weights = w.data.astype(F32).reshape(g, ci // g, og, kh, kw).transpose(0, 2, 1, 3, 4).reshape(-1)
    clamp, out = a.get("fused_clamp", FULL), node.output
    has_bias = bool(np.any(b.data != 0))
    conv_out = ctx.temp("conv", out.shape) if has_bias else ctx.output(out)
    ctx.emit(k4.Conv2DTranspose(ctx.buffer(x), conv_out, shape4(x.shape), shape4(out.shape), g,
                                k4.Padding(*ph), k4.Padding(*pw), kh, kw, sh, sw, dh, dw,
                                value_range(FULL if has_bias else clamp), weights, b.data.astype(F32).reshape(-1)))
    if has_bias:
        bias = ctx.const(b.data.astype(F32).reshape(1, -1, 1, 1), f"{node.name}/bias")
        emit_binary(ctx, "add", conv_out, out.shape, bias, (1, og * g, 1, 1), ctx.output(out), out.shape, clamp)


def _bias_add(ctx: Lowering, node: Node) -> tuple[Node, np.ndarray] | None:
    """The `add` of a constant [N] vector that alone reads a matmul's output (ncc fuses it as the bias)."""
    out = node.output
    users = out.user_nodes()
    if len(users) != 1 or out in ctx.graph.outputs or node.attrs.get("fused_clamp", FULL) != FULL:
        return None
    add = users[0]
    if add.op != "binary" or add.attrs["op"] != "add" or len(out.users) != 1:
        return None
    other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    n = out.shape[-1]
    if not other.is_constant or other.data.size != n or other.shape[-1:] != (n,) or add.output.shape != out.shape:
        return None
    return add, other.data.astype(F32).reshape(-1)


@emitter("matmul")
def matmul(ctx: Lowering, node: Node) -> None:
    """A[.., K] · B[K, N] (+ a fused bias add and clamp). A constant B is stored as ncc's importer leaves
    it, [N, K] (TFLite FullyConnected), and transposed at run time, as in the iris golden file (§16.3)."""
    a, b = node.inputs
    _need_float(node, a, b)
    if b.type.rank != 2 or a.type.rank < 1:
        raise KpucError(f"{node.name}: the runtime's matmul is [M,K]·[K,N], not {a.shape}·{b.shape}")
    k, n = b.shape
    rows = _elems(a.shape[:-1])
    clamp, out, bias = node.attrs.get("fused_clamp", FULL), node.output, np.zeros(n, F32)
    fused = _bias_add(ctx, node)
    if fused:
        add, bias = fused
        ctx.absorbed.add(add)
        clamp, out = add.attrs.get("fused_clamp", FULL), add.output
    if b.is_constant:
        source = ctx.const(b.data.astype(F32).T, f"{b.name}/source")
        b_buf = ctx.temp("b", (k, n))
        ctx.emit(k4.Transpose(source, b_buf, shape4((n, k)), (0, 1, 3, 2)))
    else:
        b_buf = ctx.buffer(b)
    ctx.emit(k4.MatMul(ctx.buffer(a), b_buf, ctx.output(out), rows, k, n, value_range(clamp), bias))


# ---------------------------------------------------------------- pooling and reductions
@emitter("reduce_window2d")
def reduce_window2d(ctx: Lowering, node: Node) -> None:
    """Padding taps are skipped by the runtime (§8.9): max pools agree with any padding, mean pools
    when they count real pixels only; count_include_pad pads explicitly first. ceil_mode grows the
    trailing padding until the runtime's output size matches."""
    x = node.inputs[0]
    _need_float(node, x)
    a = node.attrs
    (kh, kw), (sh, sw), (dh, dw) = a["kernel"], a.get("strides", (1, 1)), a.get("dilations", (1, 1))
    pads = [list(p) for p in a.get("padding", ((0, 0), (0, 0)))]
    src, in_shape = ctx.buffer(x), shape4(x.shape)
    if a["op"] == "mean" and a.get("count_include_pad", False) and any(p for pair in pads for p in pair):
        padded = shape4(in_shape[:2] + (in_shape[2] + sum(pads[0]), in_shape[3] + sum(pads[1])))
        t = ctx.temp("padded", padded)
        ctx.emit(pad_body(src, t, in_shape, ((0, 0), (0, 0), pads[0], pads[1])))
        src, in_shape, pads = t, padded, [[0, 0], [0, 0]]
    out_h, out_w = node.output.shape[-2:]
    for axis, size, k, s, d, want in ((0, in_shape[2], kh, sh, dh, out_h), (1, in_shape[3], kw, sw, dw, out_w)):
        while k4.windowed_size(size, k, s, d, k4.Padding(*pads[axis])) < want:
            pads[axis][1] += 1
        if k4.windowed_size(size, k, s, d, k4.Padding(*pads[axis])) != want:
            raise KpucError(f"{node.name}: no runtime padding gives the pool's output size {want}")
    init = 0.0 if a["op"] == "mean" else -k4.FLT_MAX
    ctx.emit(k4.ReduceWindow2D(src, ctx.output(node.output), REDUCE_CODES[a["op"]], in_shape,
                               k4.Padding(*pads[0]), k4.Padding(*pads[1]), kh, kw, sh, sw, dh, dw, init,
                               value_range(FULL)))


def emit_reduce(ctx: Lowering, op: str, src: Buffer, in_shape, axes, out: Buffer) -> None:
    """reduce (§8.8): out_shape is the keep-dims shape; sum/mean start at 0, min at FLT_MAX, max at -FLT_MAX."""
    keep = tuple(1 if i in axes else d for i, d in enumerate(in_shape))
    init = {"mean": 0.0, "sum": 0.0, "min": k4.FLT_MAX, "max": -k4.FLT_MAX}[op]
    ctx.emit(k4.Reduce(src, out, REDUCE_CODES[op], shape4(in_shape), shape4(keep), init))


@emitter("reduce")
def reduce(ctx: Lowering, node: Node) -> None:
    x = node.inputs[0]
    _need_float(node, x)
    op, axes = node.attrs["op"], tuple(node.attrs["axes"])
    if op in REDUCE_CODES:
        emit_reduce(ctx, op, ctx.buffer(x), x.shape, axes, ctx.output(node.output))
    elif op == "sum_square":
        sq = ctx.temp("square", x.shape)
        ctx.emit(k4.Unary(ctx.buffer(x), sq, UNARY_CODES["square"]))
        emit_reduce(ctx, "sum", sq, x.shape, axes, ctx.output(node.output))
    else:
        raise KpucError(f"{node.name}: the v0.2 runtime's reduce has mean, min, max and sum, not '{op}'")


@emitter("softmax")
def softmax(ctx: Lowering, node: Node) -> None:
    """As ncc's importers decompose it (§12): reduce max -> sub -> exp -> reduce sum -> div (log: -> log
    -> sub). The runtime's own softmax op (0x0B) was never emitted by ncc (§7, §17.9). ncc's multiply by
    beta is left out: beta is 1 here."""
    x = node.inputs[0]
    _need_float(node, x)
    axis, shape = node.attrs["axis"], x.shape
    keep = tuple(1 if i == axis else d for i, d in enumerate(shape))
    m, z, e, s = (ctx.temp(t, sh) for t, sh in (("max", keep), ("sub", shape), ("exp", shape), ("sum", keep)))
    emit_reduce(ctx, "max", ctx.buffer(x), shape, (axis,), m)
    emit_binary(ctx, "sub", ctx.buffer(x), shape, m, keep, z, shape)
    ctx.emit(k4.Unary(z, e, UNARY_CODES["exp"]))
    emit_reduce(ctx, "sum", e, shape, (axis,), s)
    if node.attrs.get("log", False):
        lg = ctx.temp("log", keep)
        ctx.emit(k4.Unary(s, lg, UNARY_CODES["log"]))
        emit_binary(ctx, "sub", z, shape, lg, keep, ctx.output(node.output), shape)
    else:
        emit_binary(ctx, "div", e, shape, s, keep, ctx.output(node.output), shape)


@emitter("lp_normalize")
def lp_normalize(ctx: Lowering, node: Node) -> None:
    """x / max(sqrt(Σx²), ε) (p = 2 only)."""
    x = node.inputs[0]
    _need_float(node, x)
    if node.attrs.get("p", 2) != 2:
        raise KpucError(f"{node.name}: only the L2 norm is lowered")
    axis, shape = node.attrs["axis"], x.shape
    keep = tuple(1 if i == axis else d for i, d in enumerate(shape))
    sq, total, norm = ctx.temp("square", shape), ctx.temp("sum", keep), ctx.temp("norm", keep)
    ctx.emit(k4.Unary(ctx.buffer(x), sq, UNARY_CODES["square"]))
    emit_reduce(ctx, "sum", sq, shape, (axis,), total)
    emit_nnil(ctx, clamp_program(Nnil().c(1.0).x().op("rsqrt", "div"), node.attrs.get("epsilon", 0.0), math.inf).ret(),
              total, norm)
    emit_binary(ctx, "div", ctx.buffer(x), shape, norm, keep, ctx.output(node.output), shape)


# ---------------------------------------------------------------- data movement
@emitter("reshape")
def reshape(ctx: Lowering, node: Node) -> None:
    """Same bytes, another shape: a view, no node (ncc emitted a memory_copy, §16.2)."""
    x = node.inputs[0]
    src = ctx.buffer(x)
    ctx.main[node.output] = ctx.view(node.output.name, src, 0, src.size)


@emitter("cast")
def cast(ctx: Lowering, node: Node) -> None:
    if node.attrs["dtype"] != node.inputs[0].dtype:
        raise KpucError(f"{node.name}: the v0.2 runtime has no cast from {node.inputs[0].dtype} to {node.attrs['dtype']}")
    reshape(ctx, node)


@emitter("transpose")
def transpose(ctx: Lowering, node: Node) -> None:
    x = node.inputs[0]
    e = 4 - x.type.rank
    perm = tuple(range(e)) + tuple(p + e for p in node.attrs["perm"])
    ctx.emit(k4.Transpose(ctx.buffer(x), ctx.output(node.output), shape4(x.shape), perm))


def emit_slice(ctx: Lowering, src: Buffer, in_shape, begin, end, strides, out: Buffer) -> None:
    """strided_slice (§8.14): normalized begin/end, leading dims [0, 1) step 1, masks 0."""
    e = 4 - len(in_shape)
    ctx.emit(k4.StridedSlice(src, out, shape4(in_shape), (0,) * e + tuple(begin), (1,) * e + tuple(end),
                             (1,) * e + tuple(strides), 0, 0, 0, 0, 0))


def contiguous_part(shape, axis: int, begin: int, length: int, itemsize: int) -> tuple[int, int] | None:
    """(byte offset, byte size) when taking [begin, begin+length) along `axis` is one contiguous run."""
    if _elems(shape[:axis]) != 1:
        return None
    inner = _elems(shape[axis + 1:]) * itemsize
    return begin * inner, length * inner


@emitter("strided_slice")
def strided_slice(ctx: Lowering, node: Node) -> None:
    x = node.inputs[0]
    a = node.attrs
    emit_slice(ctx, ctx.buffer(x), x.shape, a["begin"], a["end"], a["strides"], ctx.output(node.output))


@emitter("split")
def split(ctx: Lowering, node: Node) -> None:
    """Views when each piece is a contiguous run of the input, else one strided_slice per piece."""
    x = node.inputs[0]
    axis, src, start = node.attrs["axis"], ctx.buffer(x), 0
    itemsize = src.size // max(x.type.size, 1)
    for v, size in zip(node.outputs, node.attrs["sizes"]):
        part = contiguous_part(x.shape, axis, start, size, itemsize)
        if part is not None:
            ctx.main[v] = ctx.view(v.name, src, *part)
        else:
            begin = tuple(start if i == axis else 0 for i in range(x.type.rank))
            end = tuple(start + size if i == axis else d for i, d in enumerate(x.shape))
            emit_slice(ctx, src, x.shape, begin, end, (1,) * x.type.rank, ctx.output(v))
        start += size


def plan_inplace_concats(ctx: Lowering) -> None:
    """Decide, before lowering, which concat inputs are written straight into their slot of the output.

    A concat whose axis has nothing but 1s before it (outer_size 1) is its inputs' bytes back to back, so
    each input can be a view of the output: its producer writes there and the concat costs no copy and
    no second buffer. A value qualifies when an emitter will create it (not a constant or model input),
    it is not already promised to another concat, and it is the first of its occurrences; through a
    reshape that alone reads a value the promise moves to that value (a reshape is a view). Concats are
    visited last to first so that a concat feeding another is itself a slot of the outer one.
    """
    for node in reversed(ctx.graph.nodes_of("concat")):
        out, axis = node.output, node.attrs["axis"]
        if _elems(out.shape[:axis]) != 1 or out.dtype not in ("float32", "uint8"):
            continue
        buf = ctx.presets.get(out) or ctx.new_buffer(out.name, out.shape, out.dtype)
        ctx.presets[out] = buf
        itemsize, offset = buf.size // max(out.type.size, 1), 0
        for v in node.inputs:
            size = v.type.size * itemsize
            while v.producer.op == "reshape":
                src = v.producer.inputs[0]
                if len(src.users) != 1 or src in ctx.graph.outputs or src in ctx.presets:
                    break
                v = src
            if v.producer.op not in ("input", "constant") and v not in ctx.presets:
                ctx.presets[v] = ctx.view(v.name, buf, offset, size)
            offset += size


@emitter("concat")
def concat(ctx: Lowering, node: Node) -> None:
    """Byte concatenation (§8.2): inner_size in bytes, outer_size over the dims before the axis. When
    `plan_inplace_concats` gave the inputs views of the output, only the inputs that did not land in
    their slot are copied there."""
    out = node.output
    axis = node.attrs["axis"]
    buf = ctx.output(out)
    itemsize = buf.size // max(out.type.size, 1)
    inputs = tuple(ctx.buffer(v) for v in node.inputs)
    if _elems(out.shape[:axis]) == 1:
        offset = 0
        for v, src in zip(node.inputs, inputs):
            slot = ctx.view(f"{out.name}[{offset}]", buf, offset, src.size)
            if (src.root, src.root_offset) != (slot.root, slot.root_offset):
                ctx.emit(_copy_body(src, slot, v.shape))
            offset += src.size
        return
    ctx.emit(k4.Concat(buf, itemsize * _elems(out.shape[axis + 1:]), _elems(out.shape[:axis]), len(inputs), inputs,
                       np.array([v.shape[axis] for v in node.inputs], np.int32)))


@emitter("pad")
def pad(ctx: Lowering, node: Node) -> None:
    """Constant pads and crops (negative amounts, §8.6); the pad value is written (ncc always wrote 0)."""
    x = node.inputs[0]
    a = node.attrs
    if a.get("mode", "constant") != "constant":
        raise KpucError(f"{node.name}: the runtime pads with a constant only, not '{a['mode']}'")
    ctx.emit(pad_body(ctx.buffer(x), ctx.output(node.output), x.shape, a["pads"], a.get("value", 0.0)))


def _runtime_coords(in_len: int, out_len: int, align_corners: bool) -> np.ndarray:
    """resize_image's source coordinate of every output index (§8.11): o·scale in float32."""
    scale = F32(in_len) / F32(out_len)
    if align_corners and out_len > 1:
        scale = F32(in_len - 1) / F32(out_len - 1)
    return np.arange(out_len, dtype=F32) * scale


def _resize_mode(a: dict, in_hw, out_hw) -> tuple[int, bool] | None:
    """(mode, align_corners) of a resize_image that picks exactly the IR resize's source pixels (nearest)
    or coordinates (bilinear, within float32 rounding), or None. Decided by comparing the index / coordinate
    arrays, so e.g. TFLite's half-pixel nearest upscale by an integer factor qualifies."""
    ctm = a.get("coordinate_transformation_mode", "half_pixel")
    ok = {}
    for align in (False, True):
        same = True
        for n, o in zip(in_hw, out_hw):
            ir = _source_coord(ctm, o, n)
            rt = _runtime_coords(n, o, align)
            if a["mode"] == "nearest":
                ir_idx = np.clip(_nearest_index(ir, a.get("nearest_mode", "round_prefer_floor")), 0, n - 1)
                same &= bool(np.array_equal(ir_idx, np.minimum(np.floor(rt).astype(np.int64), n - 1)))
            else:
                same &= bool(np.allclose(np.clip(ir, 0, n - 1), np.clip(rt, 0, n - 1), rtol=0, atol=1e-5))
        ok[align] = same
    if a["mode"] == "nearest" and ok[False]:
        return 1, False                       # the runtime's nearest ignores align_corners
    if a["mode"] == "linear" and (ok[False] or ok[True]):
        return 0, not ok[False]
    return None


@emitter("resize")
def resize(ctx: Lowering, node: Node) -> None:
    """resize_image (§8.11): nearest = floor(o·in/out), bilinear without half-pixel centres (plain or
    align_corners); H and W only."""
    x = node.inputs[0]
    a, sizes = node.attrs, tuple(node.attrs["sizes"])
    if x.type.rank != 4 or sizes[:2] != x.shape[:2]:
        raise KpucError(f"{node.name}: resize_image scales H and W of a 4-D tensor only")
    mode = _resize_mode(a, x.shape[2:], sizes[2:])
    if mode is None:
        raise KpucError(f"{node.name}: resize_image cannot sample like a {a['mode']} resize with "
                        f"{a.get('coordinate_transformation_mode', 'half_pixel')} coordinates "
                        f"({x.shape[2]}x{x.shape[3]} -> {sizes[2]}x{sizes[3]})")
    ctx.emit(k4.ResizeImage(ctx.buffer(x), ctx.output(node.output), shape4(x.shape), sizes[2], sizes[3], *mode))


@emitter("space_to_batch")
def space_to_batch(ctx: Lowering, node: Node) -> None:
    """pad, then one 4-D transpose: [N·C·H', bh, W', bw] -> [bh, bw, N·C·H', W'] (= [bh·bw·N, C, H', W'])."""
    x = node.inputs[0]
    (bh, bw), ((pt, pb), (pl, pr)) = node.attrs["block"], node.attrs["pads"]
    src = ctx.buffer(x)
    n, c, h, w = x.shape
    if pt or pb or pl or pr:
        padded = ctx.temp("padded", (n, c, h + pt + pb, w + pl + pr), x.dtype)
        ctx.emit(pad_body(src, padded, x.shape, ((0, 0), (0, 0), (pt, pb), (pl, pr))))
        src, h, w = padded, h + pt + pb, w + pl + pr
    ctx.emit(k4.Transpose(src, ctx.output(node.output), (n * c * (h // bh), bh, w // bw, bw), (1, 3, 0, 2)))


@emitter("batch_to_space")
def batch_to_space(ctx: Lowering, node: Node) -> None:
    """One 4-D transpose [bh, bw, N·C·H, W] -> [N·C·H, bh, W, bw] (= [N, C, H·bh, W·bw]), then the crop."""
    x = node.inputs[0]
    (bh, bw), ((ct, cb), (cl, cr)) = node.attrs["block"], node.attrs["crops"]
    bn, c, h, w = x.shape
    n = bn // (bh * bw)
    full = (n, c, h * bh, w * bw)
    cropped = bool(ct or cb or cl or cr)
    dst = ctx.temp("uncropped", full, x.dtype) if cropped else ctx.output(node.output)
    ctx.emit(k4.Transpose(ctx.buffer(x), dst, (bh, bw, n * c * h, w), (2, 0, 3, 1)))
    if cropped:
        emit_slice(ctx, dst, full, (0, 0, ct, cl), (n, c, h * bh - cb, w * bw - cr), (1, 1, 1, 1),
                   ctx.output(node.output))


@emitter("space_to_depth")
def space_to_depth(ctx: Lowering, node: Node) -> None:
    """N = 1: [C·H', b, W', b] -> [b, b, C·H', W'] (= [1, b·b·C, H', W'], channel (by·b + bx)·C + c)."""
    x = node.inputs[0]
    n, c, h, w = x.shape
    b = node.attrs["block"]
    if n != 1:
        raise KpucError(f"{node.name}: space_to_depth is lowered for batch 1 only")
    ctx.emit(k4.Transpose(ctx.buffer(x), ctx.output(node.output), (c * (h // b), b, w // b, b), (1, 3, 0, 2)))


@emitter("depth_to_space")
def depth_to_space(ctx: Lowering, node: Node) -> None:
    """N = 1, DCR: [b, b, C·H, W] -> [C·H, b, W, b] (= [1, C, H·b, W·b])."""
    x = node.inputs[0]
    n, c, h, w = x.shape
    b = node.attrs["block"]
    if n != 1 or node.attrs.get("mode", "DCR") != "DCR":
        raise KpucError(f"{node.name}: depth_to_space is lowered for batch 1, DCR only")
    ctx.emit(k4.Transpose(ctx.buffer(x), ctx.output(node.output), (b, b, (c // (b * b)) * h, w), (2, 0, 3, 1)))


@emitter("gather")
def gather(ctx: Lowering, node: Node) -> None:
    """Constant indices in arithmetic progression: a strided_slice."""
    x, idx = node.inputs
    axis = node.attrs["axis"]
    if not idx.is_constant or idx.data.ndim > 1:
        raise KpucError(f"{node.name}: gather needs constant 0-/1-D indices")
    i = np.asarray(idx.data, np.int64).reshape(-1) % x.shape[axis]
    step = int(i[1] - i[0]) if i.size > 1 else 1
    if step == 0 or np.any(np.diff(i) != step):
        raise KpucError(f"{node.name}: gather indices {i.tolist()} are not an arithmetic progression")
    begin = tuple(int(i[0]) if d == axis else 0 for d in range(x.type.rank))
    end = tuple((int(i[-1]) + (1 if step > 0 else -1)) if d == axis else s for d, s in enumerate(x.shape))
    end = tuple(-1 if d == axis and e < 0 else e for d, e in enumerate(end))
    emit_slice(ctx, ctx.buffer(x), x.shape, begin, end, tuple(step if d == axis else 1 for d in range(x.type.rank)),
               ctx.output(node.output))
