"""kmodel v4 emitters for float math: elementwise, convolutions, matmul, pooling, reductions (kmodel-v4.md
§8, §9, §12).

One function per IR op (nncase's codegen/ops/neutral); each reads its operands' buffers, asks for its
output buffer and appends body dataclasses of kmodel_v4.py. Where the runtime has no op for an IR op the
emitter says how it decomposes (softmax as ncc's importers do, unaries the runtime lacks as NNIL
programs). What the v0.2 runtime cannot express raises a KpucError naming the node.
"""
from __future__ import annotations

import math
import struct

import numpy as np

from compiler.errors import KpucError
from compiler.ir import Node, Value
from compiler.quantization import QuantParamU8, dequantize_u8, quantize_u8
from targets.k210 import kmodel_v4 as k4
from targets.k210.lower_v4_core import Buffer, Lowering, emitter, shape4, value_range
from targets.k210.lower_v4_shape import emit_slice, pad_body
from targets.k210.ops import KPU_POOLS

F32 = np.float32
BINARY_CODES = {"add": 0, "sub": 1, "mul": 2, "div": 3, "min": 4, "max": 5}        # binary_op_t (§4.3)
REDUCE_CODES = {"mean": 0, "min": 1, "max": 2, "sum": 3}                          # reduce_op_t
UNARY_CODES = {"abs": 0, "ceil": 1, "cos": 2, "exp": 3, "floor": 4, "log": 5, "neg": 6, "rsqrt": 7,
               "sin": 8, "square": 9}                                              # unary_op_t
FULL = (-math.inf, math.inf)
MATMUL_RUNTIME_TRANSPOSE_MAX = 4096   # bytes of a constant matmul B still transposed at run time, ncc's way


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


# ---------------------------------------------------------------- NNIL programs (§9)
class Nnil:
    """A tiny assembler: `Nnil().x().c(1.0).op("add").ret()`; `x` is the element (lda_0)."""
    UNARY = {"abs": 0x20, "ceil": 0x21, "cos": 0x22, "exp": 0x23, "floor": 0x24, "log": 0x25, "neg": 0x26,
             "rsqrt": 0x27, "sin": 0x28, "square": 0x29}
    BINARY = {"add": 0x40, "sub": 0x41, "mul": 0x42, "div": 0x43, "min": 0x44, "max": 0x45}

    def __init__(self):
        self.code = bytearray()

    def x(self) -> Nnil:
        self.code.append(0x03)
        return self

    def c(self, value: float) -> Nnil:
        self.code += b"\x06" + struct.pack("<f", value)   # ldc_r4 (ncc never uses the short forms)
        return self

    def op(self, *names: str) -> Nnil:
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
    op, clamp = node.attrs["op"], node.attrs["fused_clamp"]
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


def emit_activation(ctx: Lowering, step: tuple, src: Buffer, out: Buffer, what: str) -> None:
    """One element-wise activation, a kpu_conv2d `activation` step ("clamp", lo, hi), ("leaky_relu", α),
    ("unary", op) or ("hard_sigmoid", α, β): the runtime's `unary` where it has the function, else an
    NNIL program."""
    kind, *p = step
    if kind == "unary" and p[0] in UNARY_CODES:
        return ctx.emit(k4.Unary(src, out, UNARY_CODES[p[0]]))
    if kind == "unary" and p[0] in NNIL_UNARY:
        program = NNIL_UNARY[p[0]]()
    elif kind == "unary":
        raise KpucError(f"{what}: the v0.2 runtime cannot compute unary '{p[0]}' (neither `unary` nor NNIL)")
    elif kind == "clamp":
        program = clamp_program(Nnil().x(), *p).ret()
    elif kind == "leaky_relu":        # max(x, αx) for α <= 1, min(x, αx) above
        program = Nnil().x().x().c(p[0]).op("mul", "max" if p[0] <= 1 else "min").ret()
    elif kind == "hard_sigmoid":      # clamp(αx + β, 0, 1)
        program = clamp_program(Nnil().x().c(p[0]).op("mul").c(p[1]).op("add"), 0.0, 1.0).ret()
    else:
        raise KpucError(f"{what}: kmodel v4 has no float form of the activation '{kind}' (it runs quantized)")
    emit_nnil(ctx, program, src, out)


@emitter("unary", "clamp", "leaky_relu", "hard_sigmoid")
def activation(ctx: Lowering, node: Node) -> None:
    """Element-wise functions (fuse_clamp folds most clamps into their producer)."""
    x, a = node.inputs[0], node.attrs
    _need_float(node, x)
    step = {"unary": lambda: ("unary", a["op"]),
            "clamp": lambda: ("clamp", a["min"], a["max"]),
            "leaky_relu": lambda: ("leaky_relu", a["alpha"]),
            "hard_sigmoid": lambda: ("hard_sigmoid", a["alpha"], a["beta"])}[node.op]()
    emit_activation(ctx, step, ctx.buffer(x), ctx.output(node.output), node.name)


@emitter("exp_f32")
def exp_f32(ctx: Lowering, node: Node) -> None:
    """The runtime's unary exp (device_semantics names it so the executor computes expf as the file does)."""
    _need_float(node, node.inputs[0])
    ctx.emit(k4.Unary(ctx.buffer(node.inputs[0]), ctx.output(node.output), UNARY_CODES["exp"]))


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
@emitter("conv2d", "conv2d_f32")
def conv2d(ctx: Lowering, node: Node) -> None:
    x, w, b = node.inputs
    _need_float(node, x)
    if not (w.is_constant and b.is_constant):
        raise KpucError(f"{node.name}: conv2d weights and bias must be constants (they go into the body, §8.3)")
    a = node.attrs
    (ph, pw), (sh, sw), (dh, dw) = a["padding"], a["strides"], a["dilations"]
    oc, _, kh, kw = w.shape
    ctx.emit(k4.Conv2D(ctx.buffer(x), ctx.output(node.output), shape4(x.shape), a["groups"], oc,
                       k4.Padding(*ph), k4.Padding(*pw), kh, kw, sh, sw, dh, dw,
                       value_range(a["fused_clamp"]), w.data.astype(F32).reshape(-1),
                       b.data.astype(F32).reshape(-1)))


@emitter("kpu_conv2d")
def kpu_conv2d(ctx: Lowering, node: Node) -> None:
    """A float KPU layer (legalized, not quantized: `--inference-type float`) on the CPU: a conv2d with
    the KPU's ring padding and its leading clamps fused, one node per further activation step, then the
    pool as a strided_slice (left/right_top) or a reduce_window2d over the valid taps (the KPU's float
    meaning, targets/k210/ops.py)."""
    x, w, b = node.inputs
    _need_float(node, x)
    a, out = node.attrs, node.output
    k, c = w.shape[-1], x.shape[1]
    steps, (lo, hi) = list(a["activation"]), FULL
    while steps and steps[0][0] == "clamp":
        lo, hi = max(lo, steps[0][1]), min(hi, steps[0][2])
        steps.pop(0)
    pool = a["pool"]
    full = (x.shape[0], w.shape[0]) + x.shape[2:]
    last = not steps and pool == "bypass"
    y = ctx.output(out) if last else ctx.temp("conv", full)
    ctx.emit(k4.Conv2D(ctx.buffer(x), y, shape4(x.shape), c if a["depthwise"] else 1, w.shape[0],
                       k4.Padding(k // 2, k // 2), k4.Padding(k // 2, k // 2), k, k, 1, 1, 1, 1,
                       value_range((lo, hi)), w.data.astype(F32).reshape(-1), b.data.astype(F32).reshape(-1)))
    for i, step in enumerate(steps):
        last = i == len(steps) - 1 and pool == "bypass"
        z = ctx.output(out) if last else ctx.temp(f"act{i}", full)
        emit_activation(ctx, tuple(step), y, z, node.name)
        y = z
    if pool == "bypass":
        return
    f, st = KPU_POOLS[pool]
    n, oc, oh, ow = out.shape
    if pool in ("left_top_2_s2", "left_top_4_s4", "right_top_2_s2"):
        dx = int(pool == "right_top_2_s2")
        emit_slice(ctx, y, full, (0, 0, 0, dx), (n, oc, (oh - 1) * st + 1, dx + (ow - 1) * st + 1), (1, 1, st, st),
                   ctx.output(out))
        return
    tail = k4.Padding(0, 1 if st == 1 else 0)
    ctx.emit(k4.ReduceWindow2D(y, ctx.output(out), REDUCE_CODES["max" if pool.startswith("max") else "mean"],
                               shape4(full), tail, tail, f, f, st, st, 1, 1,
                               -k4.FLT_MAX if pool.startswith("max") else 0.0, value_range(FULL)))


@emitter("conv2d_transpose")
def conv2d_transpose(ctx: Lowering, node: Node) -> None:
    """Weights IOHW -> the body's [O][I/g] per group. The v0.2 kernel never adds its bias (§8.20), so a
    non-zero bias becomes a binary add that also carries the clamp."""
    x, w, b = node.inputs
    _need_float(node, x)
    if not (w.is_constant and b.is_constant):
        raise KpucError(f"{node.name}: conv2d_transpose weights and bias must be constants")
    a = node.attrs
    g = a["groups"]
    (ph, pw), (sh, sw), (dh, dw) = a["padding"], a["strides"], a["dilations"]
    ci, og, kh, kw = w.shape
    weights = w.data.astype(F32).reshape(g, ci // g, og, kh, kw).transpose(0, 2, 1, 3, 4).reshape(-1)
    clamp, out = a["fused_clamp"], node.output
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
    if len(users) != 1 or out in ctx.graph.outputs or node.attrs["fused_clamp"] != FULL:
        return None
    add = users[0]
    if add.op != "binary" or add.attrs["op"] != "add" or len(out.users) != 1:
        return None
    other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    n = out.shape[-1]
    if not other.is_constant or other.data.size != n or other.shape[-1:] != (n,) or add.output.shape != out.shape:
        return None
    return add, other.data.astype(F32).reshape(-1)


@emitter("matmul", "matmul_f32")
def matmul(ctx: Lowering, node: Node) -> None:
    """A[.., K] · B[K, N] (+ a fused bias add and clamp). A small constant B is stored as ncc's importer
    leaves it, [N, K] (TFLite FullyConnected), and transposed into main memory at run time, as in the
    iris golden file (§16.3); a larger one is read from the constants as [K, N] directly (§8.5 allows a
    mem_const B), so its copy costs no main memory. matmul_f32 (device_semantics) carries its bias as
    operand 3, the add already folded."""
    a, b = node.inputs[:2]
    _need_float(node, a, b)
    if b.type.rank != 2 or a.type.rank < 1:
        raise KpucError(f"{node.name}: the runtime's matmul is [M,K]·[K,N], not {a.shape}·{b.shape}")
    k, n = b.shape
    rows = _elems(a.shape[:-1])
    clamp, out, bias = node.attrs["fused_clamp"], node.output, np.zeros(n, F32)
    fused = _bias_add(ctx, node) if node.op == "matmul" else None
    if node.op == "matmul_f32":
        bias = np.asarray(node.inputs[2].data, F32).reshape(n)
    if fused:
        add, bias = fused
        ctx.absorbed.add(add)
        clamp, out = add.attrs["fused_clamp"], add.output
    if b.is_constant and b.data.size * 4 <= MATMUL_RUNTIME_TRANSPOSE_MAX:
        source = ctx.const(b.data.astype(F32).T, f"{b.name}/source")
        b_buf = ctx.temp("b", (k, n))
        ctx.emit(k4.Transpose(source, b_buf, shape4((n, k)), (0, 1, 3, 2)))
    elif b.is_constant:
        b_buf = ctx.const(b.data.astype(F32), b.name)
    else:
        b_buf = ctx.buffer(b)
    ctx.emit(k4.MatMul(ctx.buffer(a), b_buf, ctx.output(out), rows, k, n, value_range(clamp), bias))


# ---------------------------------------------------------------- pooling and reductions
@emitter("reduce_window2d", "reduce_window2d_f32")
def reduce_window2d(ctx: Lowering, node: Node) -> None:
    """Padding taps are skipped by the runtime (§8.9): max pools agree with any padding, mean pools
    when they count real pixels only; count_include_pad pads explicitly first. ceil_mode grows the
    trailing padding until the runtime's output size matches."""
    x = node.inputs[0]
    if x.dtype == "uint8" and node.attrs["op"] == "max":
        return _max_pool_on_codes(ctx, node)
    _need_float(node, x)
    _float_pool(ctx, node, ctx.buffer(x), ctx.output(node.output))


def _float_pool(ctx: Lowering, node: Node, src: Buffer, out: Buffer) -> None:
    x, a = node.inputs[0], node.attrs
    (kh, kw), (sh, sw), (dh, dw) = a["kernel"], a["strides"], a["dilations"]
    pads = [list(p) for p in a["padding"]]
    in_shape = shape4(x.shape)
    if a["op"] == "mean" and a["count_include_pad"] and any(p for pair in pads for p in pair):
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
    ctx.emit(k4.ReduceWindow2D(src, out, REDUCE_CODES[a["op"]], in_shape, k4.Padding(*pads[0]),
                               k4.Padding(*pads[1]), kh, kw, sh, sw, dh, dw, init, value_range(FULL)))


def _max_pool_on_codes(ctx: Lowering, node: Node) -> None:
    """A max pool of uint8 codes: the runtime pools float32 only, so dequantize, pool, quantize back with
    the same parameters. Exact: max commutes with the increasing dequantization, and every code comes
    back from its own real value (checked for all 256 codes with the runtime's formulas)."""
    x = node.inputs[0]
    if x.quant is None or x.quant.axis is not None:
        raise KpucError(f"{node.name}: a uint8 max pool needs its input's per-tensor quantization")
    q = QuantParamU8.from_ir(x.quant)
    codes = np.arange(256)
    if not np.array_equal(quantize_u8(dequantize_u8(codes, q), q), codes):
        raise KpucError(f"{node.name}: the codes of %{x.name} do not survive a float round trip")
    param = k4.QuantParam(q.zero_point, q.scale)
    real_in, real_out = ctx.temp("real_in", x.shape), ctx.temp("real_out", node.output.shape)
    ctx.emit(k4.Dequantize(ctx.buffer(x), real_in, param))
    _float_pool(ctx, node, real_in, real_out)
    ctx.emit(k4.Quantize(real_out, ctx.output(node.output), param))


def emit_reduce(ctx: Lowering, op: str, src: Buffer, in_shape, axes, out: Buffer) -> None:
    """reduce (§8.8): out_shape is the keep-dims shape; sum/mean start at 0, min at FLT_MAX, max at -FLT_MAX."""
    keep = tuple(1 if i in axes else d for i, d in enumerate(in_shape))
    init = {"mean": 0.0, "sum": 0.0, "min": k4.FLT_MAX, "max": -k4.FLT_MAX}[op]
    ctx.emit(k4.Reduce(src, out, REDUCE_CODES[op], shape4(in_shape), shape4(keep), init))


@emitter("reduce", "reduce_f32")
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
    if node.attrs["log"]:
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
    if node.attrs["p"] != 2:
        raise KpucError(f"{node.name}: only the L2 norm is lowered")
    axis, shape = node.attrs["axis"], x.shape
    keep = tuple(1 if i == axis else d for i, d in enumerate(shape))
    sq, total, norm = ctx.temp("square", shape), ctx.temp("sum", keep), ctx.temp("norm", keep)
    ctx.emit(k4.Unary(ctx.buffer(x), sq, UNARY_CODES["square"]))
    emit_reduce(ctx, "sum", sq, shape, (axis,), total)
    emit_nnil(ctx, clamp_program(Nnil().c(1.0).x().op("rsqrt", "div"), node.attrs["epsilon"], math.inf).ret(),
              total, norm)
    emit_binary(ctx, "div", ctx.buffer(x), shape, norm, keep, ctx.output(node.output), shape)
