"""The op vocabulary of the IR: one entry per op with its operands, attributes and shape rule.

Names follow nncase where one exists, so the specs and the code can be searched with the same words.
All layouts are NCHW; weights of conv2d are OIHW (O, I/groups, kH, kW) and of conv2d_transpose
IOHW (I, O/groups, kH, kW) as in ONNX. Padding attributes are tuples of (before, after) pairs.
`fused_clamp=(lo, hi)` on conv2d, conv2d_transpose, matmul and binary clamps the result (after the
bias) to [lo, hi]; passes/fuse_clamp.py sets it.
The kernels in `compiler.kernels` implement exactly these semantics (the executor is the spec).

op                operands                  attrs (defaults)
--------------------------------------------------------------------------------------------------
input / constant  -                         -                 (made by Graph.input / Graph.const)
unary             x                         op: abs ceil cos exp floor log neg round rsqrt sin
                                            sqrt square sigmoid tanh hard_swish reciprocal erf
                                            softplus sign
binary            a, b (numpy broadcast)    op: add sub mul div min max pow squared_difference,
                                            fused_clamp=(-inf,inf)
clamp             x                         min=-inf, max=inf                 (Relu, Relu6, Clip)
leaky_relu        x                         alpha
prelu             x, slope (broadcast)      -
hard_sigmoid      x                         alpha, beta       max(0, min(1, alpha*x + beta))
conv2d            x, w, b                   strides=(1,1), padding=((0,0),(0,0)), dilations=(1,1),
                                            groups=1, fused_clamp=(-inf,inf)
                                            b always present (zeros if absent)
conv2d_transpose  x, w, b                   strides, padding, dilations, groups, output_padding=(0,0),
                                            fused_clamp=(-inf,inf)
                                            out = (in-1)*s + d*(k-1) + 1 + output_padding - pad_total
matmul            a, b                      fused_clamp=(-inf,inf)   numpy.matmul semantics
batch_norm        x, scale, bias, mean, var epsilon           per-channel (axis 1)
reduce_window2d   x                         op: max|mean, kernel, strides=(1,1),
                                            padding=((0,0),(0,0)), dilations=(1,1), ceil_mode=False,
                                            count_include_pad=False  (mean only)
reduce            x                         op: mean max min sum prod l1 l2 sum_square log_sum_exp,
                                            axes (normalized, sorted), keepdims=True
softmax           x                         axis=-1 (normalized), log=False
lp_normalize      x                         axis (normalized), p=2, epsilon=0.0
                                            x / max(norm_p(x), epsilon) along axis; 0 where norm==0
reshape           x                         shape (static, no -1)
transpose         x                         perm
concat            *xs                       axis (normalized)
split             x                         axis, sizes       one output per size
strided_slice     x                         begin, end, strides (full rank, normalized: 0 <= begin
                                            < dim; end in [-1, dim], -1 = before index 0 for a
                                            negative stride)
pad               x                         pads (per-dim (before, after), may be negative = crop),
                                            mode: constant|reflect|edge|symmetric, value=0.0
resize            x                         sizes (full rank), mode: nearest|linear,
                                            coordinate_transformation_mode=half_pixel
                                            (half_pixel asymmetric align_corners pytorch_half_pixel
                                            tf_half_pixel_for_nn), nearest_mode=round_prefer_floor
                                            (round_prefer_floor round_prefer_ceil floor ceil)
space_to_depth    x                         block
depth_to_space    x                         block, mode=DCR|CRD
space_to_batch    x                         block=(bh,bw), pads=((t,b),(l,r))   TF semantics on NCHW
batch_to_space    x                         block=(bh,bw), crops=((t,b),(l,r))
gather            x, indices                axis              numpy.take
quantize          x                         scale, zero_point, dtype=uint8, axis=None  round half to even
dequantize        x                         scale, zero_point, axis=None
cast              x                         dtype
kpu_conv2d        x, w, b                   depthwise=False, pool=bypass, activation=()
                                            float K210 KPU layer: conv2d 1x1/3x3, stride 1, one ring of
                                            0 for 3x3 (groups=C when depthwise, w (C,1,k,k)), then the
                                            `activation` steps in order (("clamp",lo,hi),
                                            ("leaky_relu",a), ("unary",op), ("hard_sigmoid",a,b)), then
                                            `pool` (KPU_POOLS): out H div stride; max pools ignore taps
                                            outside the map, mean pools clamp them to the edge and divide
                                            by filter^2; left/right_top keep in[s*y][s*x (+1)]

Quantized ops (targets/k210/quantize.py makes them, targets/k210/kernels.py runs them bit-exactly as
nncase v0.2's runtime; formulas in compiler/quantization.py). Every `scale` attr is the IR's real step
(real = (q - zero_point) * scale); the runtime multiplies by float32(1/scale), nncase's quant_param_t.
quantize_u8       x: f32                    scale, zero_point    clamp(roundf(x*(1/scale) + zp), 0, 255)
                                                                  (kmodel-v4.md §8.7 host build) -> uint8
dequantize_u8     x: u8                     scale, zero_point    (x - zp) * (1/(1/scale)) in float32 (§8.4)
requantize_u8     x: u8                     in_scale, in_zero_point, scale, zero_point
                                                                  quantize_u8(dequantize_u8(x)); a 256-entry
                                                                  function, so a table_lookup1d in a kmodel
table_lookup1d    x: u8, table: u8[256]     -                    table[x]                            (§8.19)
kpu_conv2d_q      x: u8, w: u8 (OIHW, depthwise (C,1,k,k)), bn: int64[OC,3] (norm_mul, norm_shift,
                  norm_add), act: int64[16,4] (x_start, y_mul, shift_number, y_add)
                                            depthwise, pool, pad_value, arg_x, shr_x, arg_w, shr_w, arg_add
                                            one KPU layer, targets/k210/kpu.py's kpu_conv2d per batch
                                            (kmodel-v4.md §10.5) -> uint8 [N, OC, H div s, W div s]
quantized_conv2d  x: u8, w: u8 OIHW, b: i32[O]  strides, padding, dilations, groups, input_offset,
                                            filter_offset, output_mul, output_shift, output_offset
                                            acc = b + sum over valid taps (x + input_offset)(w + filter_offset),
                                            clamp(mul_and_carry_shift(acc) + output_offset) (§8.16) -> uint8
quantized_matmul  a: u8[M,K], b: u8[K,N], bias: i32[N]   input_a_offset, input_b_offset, output_mul,
                                            output_shift, output_offset                   (§8.17) -> uint8
quantized_binary  a: u8, b: u8 (broadcast)  op: add sub mul div min max, input_a_offset, input_a_mul,
                                            input_a_shift, input_b_offset, input_b_mul, input_b_shift,
                                            output_mul, output_shift, output_offset       (§8.18) -> uint8

Device ops (targets/k210/device_semantics.py makes them right before lowering, where a kmodel runtime's
arithmetic differs from the ops above; targets/k210/kernels.py runs each through the interpreter's own
layer code, so the quantized executor computes what the file computes, bit for bit). `kmodel` is 3 (K210
SDK kpu.c, targets/k210/interpreter_v3.py) or 4 (nncase v0.2 runtime, interpreter_v4.py).
dequantize_v3     x: u8                     scale, bias          float32(x)·scale + bias in float32 (v3 Dequantize)
quantize_v3       x: f32                    scale, bias          clamp(roundf((x − bias)·(1.0f/scale)), 0, 255)
                                                                  (v3 Quantize) -> uint8
quantized_add_v3  a: u8, b: u8 (same shape) in_a_offset, in_a_mul, in_a_shift, in_b_offset, in_b_mul,
                                            in_b_shift, out_offset, out_mul, out_shift  (v3 QuantizedAdd) -> uint8
reduce_f32        x: f32                    op, axes, keepdims=True, kmodel   float32 sums in the runtime's order:
                                            v3 GlobalAveragePool2d (mean over H, W: Σ in order / (float)(H·W));
                                            v4 reduce (mean sum min max from the init value in NCHW order; mean
                                            multiplies by (float)out_count / (float)in_count)
reduce_window2d_f32 x: f32                  as reduce_window2d, kmodel       v3 AveragePool2d, v4 reduce_window2d
matmul_f32        a: f32 [.., K], b: f32 [K, N], bias: f32 [N]   fused_clamp=(-inf,inf), kmodel
                                            v3 FullyConnected per row (Σ a·b in K order from 0, + bias);
                                            v4 matmul (bias + a·b in K order)
conv2d_f32        x, w, b                   as conv2d, kmodel   v3 FullyConnected (1×1 conv of a 1×1 map);
                                            v4 conv2d (bias + x·w over (ic, ky, kx))
softmax_f32       x: f32                    axis, kmodel=3       v3 Softmax per vector (max seeded with FLT_MIN,
                                            float32 exp, Σ in order)
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from compiler.errors import KpucError
from compiler.ir import TensorType

UNARY_OPS = ("abs ceil cos exp floor log neg round rsqrt sin sqrt square sigmoid tanh hard_swish "
             "reciprocal erf softplus sign").split()
BINARY_OPS = "add sub mul div min max pow squared_difference".split()
REDUCE_OPS = "mean max min sum prod l1 l2 sum_square log_sum_exp".split()

SHAPE_RULES: dict[str, Callable] = {}


def rule(*ops: str):
    """Register one shape rule `(types, attrs, consts) -> list[TensorType]` for `ops`."""
    def register(fn):
        for op in ops:
            SHAPE_RULES[op] = fn
        return fn
    return register


def infer_types(op: str, types: list[TensorType], attrs: dict, consts=None) -> list[TensorType]:
    """Output types of `op` applied to inputs of `types`; raises KpucError on a mismatch."""
    if op not in SHAPE_RULES:
        raise KpucError(f"unknown IR op '{op}'")
    try:
        out = SHAPE_RULES[op](types, attrs)
    except (KpucError, ValueError, IndexError, KeyError, TypeError, AssertionError) as e:
        shapes = ", ".join(str(t) for t in types)
        raise KpucError(f"{op}({shapes}): {e or type(e).__name__}") from e
    return out if isinstance(out, list) else [out]


def broadcast(*shapes) -> tuple[int, ...]:
    return tuple(np.broadcast_shapes(*shapes))


def need(cond, msg):
    if not cond:
        raise KpucError(msg)


# ------------------------------------------------------------------ elementwise
@rule("unary")
def _unary(t, a):
    need(a["op"] in UNARY_OPS, f"unknown unary op {a['op']}")
    return t[0]


@rule("clamp", "leaky_relu", "hard_sigmoid")
def _same(t, a):
    return t[0]


@rule("binary")
def _binary(t, a):
    need(a["op"] in BINARY_OPS, f"unknown binary op {a['op']}")
    return TensorType(broadcast(t[0].shape, t[1].shape), t[0].dtype)


@rule("prelu")
def _prelu(t, a):
    return TensorType(broadcast(t[0].shape, t[1].shape), t[0].dtype)


@rule("batch_norm")
def _batch_norm(t, a):
    c = t[0].shape[1]
    need(all(p.shape == (c,) for p in t[1:5]), f"batch_norm parameters must have shape ({c},)")
    return t[0]


@rule("quantize")
def _quantize(t, a):
    return TensorType(t[0].shape, a.get("dtype", "uint8"))


@rule("dequantize")
def _dequantize(t, a):
    return TensorType(t[0].shape, "float32")


@rule("cast")
def _cast(t, a):
    return TensorType(t[0].shape, a["dtype"])


# ------------------------------------------------------------------ convolution and pooling
def conv_out(size, k, s, d, pad, ceil_mode=False) -> int:
    """Output length of a sliding window: floor (or ceil) of (size + pads - d*(k-1) - 1) / s + 1."""
    span = size + pad[0] + pad[1] - d * (k - 1) - 1
    n = (math.ceil(span / s) if ceil_mode else span // s) + 1
    if ceil_mode and (n - 1) * s >= size + pad[0]:
        n -= 1  # the last window must start inside the input or its left padding (ONNX, PyTorch)
    need(n >= 1, f"window of {k} (dilation {d}) does not fit an input of {size} with padding {pad}")
    return n


@rule("conv2d")
def _conv2d(t, a):
    x, w, b = t
    n, c, h, wd = x.shape
    o, ig, kh, kw = w.shape
    g = a.get("groups", 1)
    need(c == ig * g, f"input has {c} channels, weights expect {ig}x{g} groups")
    need(b.shape == (o,), f"bias shape {b.shape} != ({o},)")
    s, d, p = a.get("strides", (1, 1)), a.get("dilations", (1, 1)), a.get("padding", ((0, 0), (0, 0)))
    return TensorType((n, o, conv_out(h, kh, s[0], d[0], p[0]), conv_out(wd, kw, s[1], d[1], p[1])), x.dtype)


@rule("conv2d_transpose")
def _conv2d_transpose(t, a):
    x, w, b = t
    n, c, h, wd = x.shape
    ci, og, kh, kw = w.shape
    g = a.get("groups", 1)
    need(c == ci, f"input has {c} channels, weights expect {ci}")
    need(b.shape == (og * g,), f"bias shape {b.shape} != ({og * g},)")
    s, d = a.get("strides", (1, 1)), a.get("dilations", (1, 1))
    p, op = a.get("padding", ((0, 0), (0, 0))), a.get("output_padding", (0, 0))
    oh = (h - 1) * s[0] + d[0] * (kh - 1) + 1 + op[0] - p[0][0] - p[0][1]
    ow = (wd - 1) * s[1] + d[1] * (kw - 1) + 1 + op[1] - p[1][0] - p[1][1]
    need(oh >= 1 and ow >= 1, f"output would be {oh}x{ow}")
    return TensorType((n, og * g, oh, ow), x.dtype)


@rule("reduce_window2d")
def _reduce_window2d(t, a):
    n, c, h, w = t[0].shape
    need(a["op"] in ("max", "mean"), f"unknown pool op {a['op']}")
    k, s = a["kernel"], a.get("strides", (1, 1))
    d, p, cm = a.get("dilations", (1, 1)), a.get("padding", ((0, 0), (0, 0))), a.get("ceil_mode", False)
    return TensorType((n, c, conv_out(h, k[0], s[0], d[0], p[0], cm), conv_out(w, k[1], s[1], d[1], p[1], cm)),
                      t[0].dtype)


# pool name -> (filter, stride) of the KPU's pool types (kpu.md §6, kmodel-v4.md §10.5 step 4).
KPU_POOLS = {
    "bypass": (1, 1), "max_2_s2": (2, 2), "mean_2_s2": (2, 2), "max_4_s4": (4, 4), "mean_4_s4": (4, 4),
    "left_top_2_s2": (2, 2), "right_top_2_s2": (2, 2), "left_top_4_s4": (4, 4), "max_2_s1": (2, 1),
    "mean_2_s1": (2, 1),
}
KPU_ACTIVATIONS = ("clamp", "leaky_relu", "unary", "hard_sigmoid")


@rule("kpu_conv2d")
def _kpu_conv2d(t, a):
    x, w, b = t
    n, c, h, wd = x.shape
    o, ig, kh, kw = w.shape
    need(kh == kw and kh in (1, 3), f"the KPU filter is 1x1 or 3x3, not {kh}x{kw}")
    need(ig == (1 if a.get("depthwise", False) else c), f"weights {w.shape} do not fit {c} input channels")
    need(not a.get("depthwise", False) or o == c, f"a depthwise KPU conv keeps its {c} channels, not {o}")
    need(b.shape == (o,), f"bias shape {b.shape} != ({o},)")
    need(a.get("pool", "bypass") in KPU_POOLS, f"unknown KPU pool type {a.get('pool')}")
    need(all(step[0] in KPU_ACTIVATIONS for step in a.get("activation", ())),
         f"unknown activation step in {a.get('activation')}")
    s = KPU_POOLS[a.get("pool", "bypass")][1]
    need(h // s >= 1 and wd // s >= 1, f"pool {a.get('pool')} leaves nothing of {h}x{wd}")
    return TensorType((n, o, h // s, wd // s), x.dtype)


@rule("matmul")
def _matmul(t, a):
    sa, sb = t[0].shape, t[1].shape
    need(len(sa) >= 1 and len(sb) >= 1, "matmul of a scalar")
    a2 = sa if len(sa) > 1 else (1,) + sa
    b2 = sb if len(sb) > 1 else sb + (1,)
    need(a2[-1] == b2[-2], f"inner dimensions differ: {sa} @ {sb}")
    out = broadcast(a2[:-2], b2[:-2]) + (a2[-2], b2[-1])
    if len(sa) == 1:
        out = out[:-2] + out[-1:]
    if len(sb) == 1:
        out = out[:-1]
    return TensorType(out, t[0].dtype)


# ------------------------------------------------------------------ reductions
@rule("reduce")
def _reduce(t, a):
    need(a["op"] in REDUCE_OPS, f"unknown reduce op {a['op']}")
    shape, axes = t[0].shape, a["axes"]
    need(all(0 <= ax < len(shape) for ax in axes), f"axes {axes} not normalized for rank {len(shape)}")
    if a.get("keepdims", True):
        return TensorType(tuple(1 if i in axes else d for i, d in enumerate(shape)), t[0].dtype)
    return TensorType(tuple(d for i, d in enumerate(shape) if i not in axes), t[0].dtype)


@rule("softmax", "lp_normalize")
def _along_axis(t, a):
    need(0 <= a["axis"] < t[0].rank, f"axis {a['axis']} not normalized for rank {t[0].rank}")
    return t[0]


# ------------------------------------------------------------------ data movement
@rule("reshape")
def _reshape(t, a):
    shape = tuple(a["shape"])
    need(all(d >= 0 for d in shape) and math.prod(shape) == t[0].size,
         f"cannot reshape {t[0].shape} to {shape}")
    return TensorType(shape, t[0].dtype)


@rule("transpose")
def _transpose(t, a):
    perm = a["perm"]
    need(sorted(perm) == list(range(t[0].rank)), f"perm {perm} does not fit rank {t[0].rank}")
    return TensorType(tuple(t[0].shape[p] for p in perm), t[0].dtype)


@rule("concat")
def _concat(t, a):
    ax = a["axis"]
    first = t[0].shape
    need(0 <= ax < len(first), f"axis {ax} not normalized")
    for x in t[1:]:
        need(len(x.shape) == len(first) and all(d == e for i, (d, e) in enumerate(zip(x.shape, first)) if i != ax),
             f"cannot concat {[x.shape for x in t]} on axis {ax}")
    return TensorType(first[:ax] + (sum(x.shape[ax] for x in t),) + first[ax + 1:], t[0].dtype)


@rule("split")
def _split(t, a):
    ax, sizes, shape = a["axis"], a["sizes"], t[0].shape
    need(sum(sizes) == shape[ax], f"split sizes {sizes} do not add up to {shape[ax]}")
    return [TensorType(shape[:ax] + (s,) + shape[ax + 1:], t[0].dtype) for s in sizes]


def slice_len(begin, end, stride) -> int:
    # With normalized indices, range() is exact: end -1 runs a negative stride down to index 0
    # inclusive (every |stride|-th element, not begin + 1 of them) and takes nothing for a positive one.
    return len(range(begin, max(end, -1), stride))


@rule("strided_slice")
def _strided_slice(t, a):
    b, e, s = a["begin"], a["end"], a["strides"]
    need(len(b) == len(e) == len(s) == t[0].rank, "begin/end/strides must cover every dimension")
    return TensorType(tuple(slice_len(*x) for x in zip(b, e, s)), t[0].dtype)


@rule("pad")
def _pad(t, a):
    pads = a["pads"]
    need(len(pads) == t[0].rank, f"pads {pads} do not match rank {t[0].rank}")
    shape = tuple(d + p0 + p1 for d, (p0, p1) in zip(t[0].shape, pads))
    need(all(d >= 0 for d in shape), f"pads {pads} crop more than {t[0].shape}")
    return TensorType(shape, t[0].dtype)


@rule("resize")
def _resize(t, a):
    need(a["mode"] in ("nearest", "linear"), f"resize mode {a['mode']}")
    need(len(a["sizes"]) == t[0].rank, "resize sizes must cover every dimension")
    return TensorType(tuple(a["sizes"]), t[0].dtype)


@rule("space_to_depth")
def _space_to_depth(t, a):
    n, c, h, w = t[0].shape
    b = a["block"]
    need(h % b == 0 and w % b == 0, f"{h}x{w} not divisible by block {b}")
    return TensorType((n, c * b * b, h // b, w // b), t[0].dtype)


@rule("depth_to_space")
def _depth_to_space(t, a):
    n, c, h, w = t[0].shape
    b = a["block"]
    need(c % (b * b) == 0, f"{c} channels not divisible by block {b}^2")
    return TensorType((n, c // (b * b), h * b, w * b), t[0].dtype)


@rule("space_to_batch")
def _space_to_batch(t, a):
    n, c, h, w = t[0].shape
    (bh, bw), ((pt, pb), (pl, pr)) = a["block"], a["pads"]
    need((h + pt + pb) % bh == 0 and (w + pl + pr) % bw == 0, "padded size not divisible by block")
    return TensorType((n * bh * bw, c, (h + pt + pb) // bh, (w + pl + pr) // bw), t[0].dtype)


@rule("batch_to_space")
def _batch_to_space(t, a):
    n, c, h, w = t[0].shape
    (bh, bw), ((ct, cb), (cl, cr)) = a["block"], a["crops"]
    need(n % (bh * bw) == 0, f"batch {n} not divisible by block {bh}x{bw}")
    return TensorType((n // (bh * bw), c, h * bh - ct - cb, w * bw - cl - cr), t[0].dtype)


@rule("gather")
def _gather(t, a):
    ax = a["axis"]
    shape = t[0].shape
    return TensorType(shape[:ax] + t[1].shape + shape[ax + 1:], t[0].dtype)


# ------------------------------------------------------------------ quantized (uint8) ops
def _u8(*types):
    need(all(t.dtype == "uint8" for t in types), f"expects uint8 operands, got {[t.dtype for t in types]}")


@rule("quantize_u8")
def _quantize_u8(t, a):
    need(t[0].dtype == "float32", f"quantize_u8 of {t[0].dtype}")
    return TensorType(t[0].shape, "uint8")


@rule("dequantize_u8")
def _dequantize_u8(t, a):
    _u8(t[0])
    return TensorType(t[0].shape, "float32")


@rule("requantize_u8")
def _requantize_u8(t, a):
    _u8(t[0])
    return t[0]


@rule("table_lookup1d")
def _table_lookup1d(t, a):
    _u8(*t)
    need(t[1].shape == (256,), f"table shape {t[1].shape} != (256,)")
    return t[0]


@rule("kpu_conv2d_q")
def _kpu_conv2d_q(t, a):
    x, w, bn, act = t
    _u8(x, w)
    need(bn.shape == (w.shape[0], 3), f"batch-norm table {bn.shape} != ({w.shape[0]}, 3)")
    need(act.shape == (16, 4), f"activation table {act.shape} != (16, 4)")
    return _kpu_conv2d([x, w, TensorType((w.shape[0],))], a)


@rule("quantized_conv2d")
def _quantized_conv2d(t, a):
    _u8(t[0], t[1])
    return _conv2d(t, a)


@rule("quantized_matmul")
def _quantized_matmul(t, a):
    x, w, bias = t
    _u8(x, w)
    need(len(x.shape) == 2 and len(w.shape) == 2 and x.shape[1] == w.shape[0],
         f"quantized_matmul is (M,K) @ (K,N), got {x.shape} @ {w.shape}")
    need(bias.shape == (w.shape[1],), f"bias shape {bias.shape} != ({w.shape[1]},)")
    return TensorType((x.shape[0], w.shape[1]), "uint8")


@rule("quantized_binary")
def _quantized_binary(t, a):
    _u8(*t)
    need(a["op"] in ("add", "sub", "mul", "div", "min", "max"), f"no quantized binary {a['op']}")
    return TensorType(broadcast(t[0].shape, t[1].shape), "uint8")


# ------------------------------------------------------------------ device ops (a kmodel runtime's arithmetic)
def _kmodel(a):
    need(a.get("kmodel") in (3, 4), f"kmodel must be 3 or 4, not {a.get('kmodel')}")


def _f32(*types):
    need(all(t.dtype == "float32" for t in types), f"expects float32 operands, got {[t.dtype for t in types]}")


@rule("dequantize_v3")
def _dequantize_v3(t, a):
    _u8(t[0])
    return TensorType(t[0].shape, "float32")


@rule("quantize_v3")
def _quantize_v3(t, a):
    _f32(t[0])
    return TensorType(t[0].shape, "uint8")


@rule("quantized_add_v3")
def _quantized_add_v3(t, a):
    _u8(*t)
    need(t[0].shape == t[1].shape, f"QuantizedAdd adds two maps of one shape, not {t[0].shape} and {t[1].shape}")
    return t[0]


@rule("reduce_f32")
def _reduce_f32(t, a):
    _kmodel(a)
    _f32(t[0])
    need(a["op"] in ("mean", "sum", "min", "max"), f"the runtimes reduce with mean sum min max, not {a['op']}")
    return _reduce(t, a)


@rule("reduce_window2d_f32")
def _reduce_window2d_f32(t, a):
    _kmodel(a)
    _f32(t[0])
    return _reduce_window2d(t, a)


@rule("matmul_f32")
def _matmul_f32(t, a):
    _kmodel(a)
    x, w, bias = t
    _f32(*t)
    need(len(x.shape) >= 1 and len(w.shape) == 2 and x.shape[-1] == w.shape[0],
         f"matmul_f32 is [.., K] @ [K, N], got {x.shape} @ {w.shape}")
    need(bias.shape == (w.shape[1],), f"bias shape {bias.shape} != ({w.shape[1]},)")
    return TensorType(x.shape[:-1] + (w.shape[1],), "float32")


@rule("conv2d_f32")
def _conv2d_f32(t, a):
    _kmodel(a)
    _f32(*t)
    return _conv2d(t, a)


@rule("softmax_f32")
def _softmax_f32(t, a):
    _kmodel(a)
    _f32(t[0])
    return _along_axis(t, a)
