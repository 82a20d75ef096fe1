"""The K210's ops in the IR op table (compiler/ops.py), its float KPU layer and its calibration stages.

Importing `targets.k210` registers them; target-neutral code never names them.

op                operands                  attrs (defaults)
--------------------------------------------------------------------------------------------------
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
exp_f32           x: f32                    kmodel            the runtime's expf (glibc's, targets/k210/libm.py): v4 unary exp
softmax_f32       x: f32                    axis, kmodel=3 (only)     v3 Softmax per vector (max seeded with FLT_MIN,
                                            float32 exp, Σ in order)

The float KPU kernel: kpu_conv2d = conv (1x1/3x3, stride 1, "same") -> activation -> pool.

This is the float meaning of a legalized KPU layer (kmodel-v4.md §10.5 with the integer steps
replaced by real arithmetic), so a legalized graph still runs, calibrates and is compared with the
source model before anything is quantized.

Pools in float (kpu.md §6, kmodel-v4.md §10.5 step 4): the output is H div stride × W div stride.
A max pool counts taps outside the map as 0 *in u8*, which is the bottom of the output range, so in
float such a tap never wins: the max is over the taps inside the map. A mean pool clamps the
coordinates into the map (edge replication) and divides by filter² (no integer truncation in float).
Only max_2_s1 and mean_2_s1 ever reach outside the map.
"""
from __future__ import annotations

import numpy as np

from compiler.calibration import CALIBRATION_STAGES, stage_key
from compiler.kernels import KERNELS, kernel
from compiler.kernels.conv import conv2d
from compiler.ops import CONV_ATTRS, NO_CLAMP, OPS, POOL_ATTRS, REQUIRED, broadcast, define, need, ops_with
from compiler.types import TensorType

# pool name -> (filter, stride) of the KPU's pool types (kpu.md §6, kmodel-v4.md §10.5 step 4).
KPU_POOLS = {
    "bypass": (1, 1), "max_2_s2": (2, 2), "mean_2_s2": (2, 2), "max_4_s4": (4, 4), "mean_4_s4": (4, 4),
    "left_top_2_s2": (2, 2), "right_top_2_s2": (2, 2), "left_top_4_s4": (4, 4), "max_2_s1": (2, 1),
    "mean_2_s1": (2, 1),
}
# The KPU's activation is a piecewise-linear table of one scalar function, so every table-lookup op of
# one operand can be a step: ("clamp", lo, hi) is the op's attrs in definition order.
KPU_ACTIVATIONS = tuple(op for op in ops_with("table_lookup") if OPS[op].operands == ("x",))


def _step(op: str):
    names = tuple(OPS[op].attrs)
    return lambda y, *params: KERNELS[op](y, **dict(zip(names, params)))


# activation step name -> the float kernel applying it with the step's parameters
ACTIVATION_STEPS = {op: _step(op) for op in KPU_ACTIVATIONS}
KPU_ARGS = ("pad_value", "arg_x", "shr_x", "arg_w", "shr_w", "arg_add")
OUTPUT_ARGS = dict(output_mul=1, output_shift=0, output_offset=0)

# Ops quantize_k210 leaves in float on purpose (the CPU runs them in float32); every other op of the
# table has a uint8 rule there or is a device op (tests/test_op_table.py checks this).
STAYS_FLOAT = frozenset({"batch_norm", "conv2d_transpose", "reduce", "softmax", "lp_normalize", "split", "gather",
                         "quantize", "dequantize", "cast", "space_to_batch", "arg_reduce", "gather_nd",
                         *"compare logical logical_not where floor_div mod".split()})
# Ops that neither kmodel runtime can run, and why: they stay on the host (`kpuc check` gives the reason).
NO_COMPARISON = "nncase v0.2's runtime (kmodel v4) and kmodel v3 have no comparison or selection op; run it on the host"
HOST_ONLY = {"compare": NO_COMPARISON, "logical": NO_COMPARISON, "logical_not": NO_COMPARISON, "where": NO_COMPARISON,
             "mod": "nncase v0.2's runtime has no floor-modulo op; run it on the host",
             "floor_div": "nncase v0.2's runtime has no integer floor division; run it on the host",
             "arg_reduce": "nncase v0.2's runtime has no arg-max/arg-min (nor integer tensors); run it on the host",
             "gather_nd": "nncase v0.2's runtime has no gather by run-time indices; run it on the host"}


# ------------------------------------------------------------------ the float KPU layer
@define("kpu_conv2d", "x w b", attrs=dict(depthwise=False, pool="bypass", activation=()))
def _kpu_conv2d(t, a):
    x, w, b = t
    n, c, h, wd = x.shape
    o, ig, kh, kw = w.shape
    need(kh == kw and kh in (1, 3), f"the KPU filter is 1x1 or 3x3, not {kh}x{kw}")
    need(ig == (1 if a["depthwise"] else c), f"weights {w.shape} do not fit {c} input channels")
    need(not a["depthwise"] or o == c, f"a depthwise KPU conv keeps its {c} channels, not {o}")
    need(b.shape == (o,), f"bias shape {b.shape} != ({o},)")
    need(a["pool"] in KPU_POOLS, f"unknown KPU pool type {a['pool']}")
    need(all(step[0] in KPU_ACTIVATIONS for step in a["activation"]),
         f"unknown activation step in {a['activation']}")
    s = KPU_POOLS[a["pool"]][1]
    need(h // s >= 1 and wd // s >= 1, f"pool {a['pool']} leaves nothing of {h}x{wd}")
    return TensorType((n, o, h // s, wd // s), x.dtype)


def kpu_pool(y: np.ndarray, pool: str) -> np.ndarray:
    """A KPU pool type on the float N×C×H×W map `y` (semantics in the module docstring)."""
    f, s = KPU_POOLS[pool]
    h, w = y.shape[-2:]
    oh, ow = h // s, w // s
    if pool == "bypass":
        return y
    if pool in ("left_top_2_s2", "left_top_4_s4", "right_top_2_s2"):
        dx = 1 if pool == "right_top_2_s2" else 0
        return y[..., 0:oh * s:s, dx:dx + ow * s:s]
    rows = np.minimum(np.arange(oh)[:, None] * s + np.arange(f)[None, :], h - 1)   # (oh, f), edge-clamped
    cols = np.minimum(np.arange(ow)[:, None] * s + np.arange(f)[None, :], w - 1)
    taps = [y[..., rows[:, i][:, None], cols[:, j][None, :]] for i in range(f) for j in range(f)]
    if pool.startswith("max"):
        # A clamped coordinate repeats a tap that is inside the window anyway, so max over valid taps.
        return np.maximum.reduce(taps)
    return (np.sum(np.asarray(taps, np.float64), axis=0) / (f * f)).astype(y.dtype)


@kernel("kpu_conv2d")
def kpu_conv2d(x, w, b, *, depthwise=False, pool="bypass", activation=()):
    """One float KPU layer: "same" stride-1 conv (zero ring for 3x3), the activation steps, the pool."""
    k = w.shape[-1]
    p = k // 2
    y = conv2d(x, w, b, padding=((p, p), (p, p)), groups=x.shape[1] if depthwise else 1)
    for name, *params in activation:
        y = ACTIVATION_STEPS[name](y, *params)
    return kpu_pool(y, pool)


# ------------------------------------------------------------------ calibration stages of kpu_conv2d
def conv_key(value_name: str) -> str:
    """Range key of a kpu_conv2d's conv output (after its leading clamps, before the other steps)."""
    return stage_key(value_name, "conv")


def split_activation(steps) -> tuple[tuple[float, float], tuple]:
    """(clamp interval of the leading clamp steps, remaining steps): nncase's fused clamp vs fused unary."""
    lo, hi, k = -np.inf, np.inf, 0
    while k < len(steps) and steps[k][0] == "clamp":
        lo, hi = max(lo, float(steps[k][1])), min(hi, float(steps[k][2]))
        k += 1
    return (lo, hi), tuple(steps[k:])


def apply_steps(y: np.ndarray, steps) -> np.ndarray:
    """The activation steps in order, with the float KPU kernel's own step functions."""
    for name, *params in steps:
        y = ACTIVATION_STEPS[name](y, *params)
    return y


def kpu_conv2d_stages(x, w, b, *, depthwise=False, pool="bypass", activation=()):
    """(conv after leading clamps, activation output before the pool, layer output); the last equals
    the float kernel kpu_conv2d above exactly (same functions, same order)."""
    p = w.shape[-1] // 2
    y = conv2d(x, w, b, padding=((p, p), (p, p)), groups=x.shape[1] if depthwise else 1)
    n_clamps = len(activation) - len(split_activation(activation)[1])
    y = apply_steps(y, activation[:n_clamps])
    z = apply_steps(y, activation[n_clamps:])
    return y, z, kpu_pool(z, pool)


def _calibration_stages(args, attrs):
    """The KPU quantizer needs two ranges (kmodel-v4.md §10.6): the conv output after the leading clamp
    steps (nncase's conv output with its fused clamp) and the activation output *before* the pool (the
    pool runs on uint8 codes, so the pooled map shares the activation's quantization)."""
    y, z, out = kpu_conv2d_stages(*args, **attrs)
    return (out,), {"conv": y, "": z}


CALIBRATION_STAGES["kpu_conv2d"] = _calibration_stages


# ------------------------------------------------------------------ quantized (uint8) ops
def _u8(*types):
    need(all(t.dtype == "uint8" for t in types), f"expects uint8 operands, got {[t.dtype for t in types]}")


@define("quantize_u8", "x", attrs=dict(scale=REQUIRED, zero_point=REQUIRED), traits={"device"})
def _quantize_u8(t, a):
    need(t[0].dtype == "float32", f"quantize_u8 of {t[0].dtype}")
    return TensorType(t[0].shape, "uint8")


@define("dequantize_u8", "x", attrs=dict(scale=REQUIRED, zero_point=REQUIRED), traits={"device"})
def _dequantize_u8(t, a):
    _u8(t[0])
    return TensorType(t[0].shape, "float32")


@define("requantize_u8", "x", attrs=dict.fromkeys(("in_scale", "in_zero_point", "scale", "zero_point"), REQUIRED),
        traits={"device"})
def _requantize_u8(t, a):
    _u8(t[0])
    return t[0]


@define("table_lookup1d", "x table", traits={"device"})
def _table_lookup1d(t, a):
    _u8(*t)
    need(t[1].shape == (256,), f"table shape {t[1].shape} != (256,)")
    return t[0]


@define("kpu_conv2d_q", "x w bn act", attrs=dict(depthwise=False, pool="bypass", **dict.fromkeys(KPU_ARGS, 0)), traits={"device"})
def _kpu_conv2d_q(t, a):
    x, w, bn, act = t
    _u8(x, w)
    need(bn.shape == (w.shape[0], 3), f"batch-norm table {bn.shape} != ({w.shape[0]}, 3)")
    need(act.shape == (16, 4), f"activation table {act.shape} != (16, 4)")
    return _kpu_conv2d([x, w, TensorType((w.shape[0],))], {**a, "activation": ()})   # the table does the steps


@define("quantized_conv2d", "x w b", attrs=CONV_ATTRS | dict(input_offset=0, filter_offset=0) | OUTPUT_ARGS, traits={"device"})
def _quantized_conv2d(t, a):
    _u8(t[0], t[1])
    return OPS["conv2d"].shape(t, a)


@define("quantized_matmul", "a b bias", attrs=dict(input_a_offset=0, input_b_offset=0) | OUTPUT_ARGS, traits={"device"})
def _quantized_matmul(t, a):
    x, w, bias = t
    _u8(x, w)
    need(len(x.shape) == 2 and len(w.shape) == 2 and x.shape[1] == w.shape[0],
         f"quantized_matmul is (M,K) @ (K,N), got {x.shape} @ {w.shape}")
    need(bias.shape == (w.shape[1],), f"bias shape {bias.shape} != ({w.shape[1]},)")
    return TensorType((x.shape[0], w.shape[1]), "uint8")


@define("quantized_binary", "a b", attrs=dict(op=REQUIRED, input_a_offset=0, input_a_mul=1, input_a_shift=0,
                                               input_b_offset=0, input_b_mul=1, input_b_shift=0) | OUTPUT_ARGS, traits={"device"})
def _quantized_binary(t, a):
    _u8(*t)
    need(a["op"] in ("add", "sub", "mul", "div", "min", "max"), f"no quantized binary {a['op']}")
    return TensorType(broadcast(t[0].shape, t[1].shape), "uint8")


# ------------------------------------------------------------------ device ops (a kmodel runtime's arithmetic)
def _kmodel(a):
    need(a["kmodel"] in (3, 4), f"kmodel must be 3 or 4, not {a['kmodel']}")


def _f32(*types):
    need(all(t.dtype == "float32" for t in types), f"expects float32 operands, got {[t.dtype for t in types]}")


@define("dequantize_v3", "x", attrs=dict(scale=REQUIRED, bias=REQUIRED), traits={"device"})
def _dequantize_v3(t, a):
    _u8(t[0])
    return TensorType(t[0].shape, "float32")


@define("quantize_v3", "x", attrs=dict(scale=REQUIRED, bias=REQUIRED), traits={"device"})
def _quantize_v3(t, a):
    _f32(t[0])
    return TensorType(t[0].shape, "uint8")


@define("quantized_add_v3", "a b", attrs=dict.fromkeys(("in_a_offset", "in_a_mul", "in_a_shift", "in_b_offset", "in_b_mul",
                                                   "in_b_shift", "out_offset", "out_mul", "out_shift"), REQUIRED), traits={"device"})
def _quantized_add_v3(t, a):
    _u8(*t)
    need(t[0].shape == t[1].shape, f"QuantizedAdd adds two maps of one shape, not {t[0].shape} and {t[1].shape}")
    return t[0]


@define("reduce_f32", "x", attrs=dict(op=REQUIRED, axes=REQUIRED, keepdims=True, kmodel=REQUIRED), traits={"device"})
def _reduce_f32(t, a):
    _kmodel(a)
    _f32(t[0])
    need(a["op"] in ("mean", "sum", "min", "max"), f"the runtimes reduce with mean sum min max, not {a['op']}")
    return OPS["reduce"].shape(t, a)


@define("reduce_window2d_f32", "x", attrs=POOL_ATTRS | dict(kmodel=REQUIRED), traits={"device"})
def _reduce_window2d_f32(t, a):
    _kmodel(a)
    _f32(t[0])
    return OPS["reduce_window2d"].shape(t, a)


@define("matmul_f32", "a b bias", attrs=dict(fused_clamp=NO_CLAMP, kmodel=REQUIRED), traits={"device"})
def _matmul_f32(t, a):
    _kmodel(a)
    x, w, bias = t
    _f32(*t)
    need(len(x.shape) >= 1 and len(w.shape) == 2 and x.shape[-1] == w.shape[0],
         f"matmul_f32 is [.., K] @ [K, N], got {x.shape} @ {w.shape}")
    need(bias.shape == (w.shape[1],), f"bias shape {bias.shape} != ({w.shape[1]},)")
    return TensorType(x.shape[:-1] + (w.shape[1],), "float32")


@define("conv2d_f32", "x w b", attrs=CONV_ATTRS | dict(fused_clamp=NO_CLAMP, kmodel=REQUIRED), traits={"device"})
def _conv2d_f32(t, a):
    _kmodel(a)
    _f32(*t)
    return OPS["conv2d"].shape(t, a)


@define("exp_f32", "x", attrs=dict(kmodel=REQUIRED), traits={"device"})
def _exp_f32(t, a):
    _kmodel(a)
    _f32(t[0])
    return t[0]


@define("softmax_f32", "x", attrs=dict(axis=REQUIRED, kmodel=REQUIRED), traits={"device"})
def _softmax_f32(t, a):
    _kmodel(a)
    _f32(t[0])
    return OPS["softmax"].shape(t, a)
