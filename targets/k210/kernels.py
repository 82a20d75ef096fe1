"""Integer kernels of the quantized IR ops (targets/k210/ops.py), bit-exact with nncase v0.2's
runtime and software KPU; `QuantizedExecutor` runs a graph made by `quantize_k210` with them. Also the
device ops (targets/k210/ops.py; made by targets/k210/device_semantics.py), which run the kmodel
interpreters' own layer code, so QuantizedExecutor(Compiled.graph) computes what the file computes.

Every kernel is numpy in, numpy out (no Node), registered in K210_KERNELS; the rounding helpers come from
compiler/quantization.py and the KPU layer from targets/k210/kpu.py, so the kmodel interpreters and these
kernels share one definition of each number.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import SimpleNamespace

import numpy as np

from compiler.errors import KpucError
from compiler.executor import Executor
from compiler.ir import Graph, QuantParam
from compiler.kernels import KERNELS
from compiler.kernels.conv import conv2d
from compiler.quantization import QuantParamU8, c_div, dequantize_u8, mul_and_carry_shift, quantize_u8
from compiler.registry import registrar
from targets.k210 import interpreter_v3 as iv3, interpreter_v4 as iv4, kmodel_v4 as k4
from targets.k210.kmodel_v3 import FIXED_BODIES, FullyConnectedBody, LayerType
from targets.k210.kpu import POOL_TYPES, ActTable, BatchNorm, kpu_conv2d
from targets.k210.libm import expf
from targets.k210.lower_v4_core import shape4, value_range

K210_KERNELS: dict[str, Callable] = {}
POOL_TYPE_OF = {name: code for code, (name, _, _) in POOL_TYPES.items()}


k210_kernel = registrar(K210_KERNELS)   # @k210_kernel(*ops): the integer kernel of each op in `ops`


def _param(scale: float, zero_point: int) -> QuantParamU8:
    return QuantParamU8.from_ir(QuantParam(scale, zero_point))


@k210_kernel("quantize_u8")
def quantize(x, *, scale, zero_point):
    """float32 -> uint8 as nncase's runtime quantize (kmodel-v4.md §8.7, host build)."""
    return quantize_u8(x, _param(scale, zero_point))


@k210_kernel("dequantize_u8")
def dequantize(x, *, scale, zero_point):
    """uint8 -> float32 as nncase's runtime dequantize (§8.4, host build)."""
    return dequantize_u8(x, _param(scale, zero_point))


@k210_kernel("requantize_u8")
def requantize(x, *, in_scale, in_zero_point, scale, zero_point):
    """uint8 -> uint8 through float32: quantize(dequantize(x)), evaluated once per code (a 256-entry table)."""
    table = quantize_u8(dequantize_u8(np.arange(256), _param(in_scale, in_zero_point)), _param(scale, zero_point))
    return table[x]


@k210_kernel("table_lookup1d")
def table_lookup1d(x, table):
    """out = table[x] (§8.19)."""
    return np.asarray(table, np.uint8)[x]


def kpu_tables(bn: np.ndarray, act: np.ndarray) -> tuple[BatchNorm, ActTable]:
    """The int64 [OC,3] / [16,4] constants of kpu_conv2d_q as targets/k210/kpu.py's table records."""
    bn, act = np.asarray(bn, np.int64), np.asarray(act, np.int64)
    return (BatchNorm(norm_mul=bn[:, 0], norm_add=bn[:, 2], norm_shift=bn[:, 1]),
            ActTable(x_start=act[:, 0], y_mul=act[:, 1], shift_number=act[:, 2], y_add=act[:, 3]))


@k210_kernel("kpu_conv2d_q")
def kpu_conv2d_q(x, w, bn, act, *, depthwise=False, pool="bypass", pad_value=0, arg_x=0, shr_x=0, arg_w=0,
                 shr_w=0, arg_add=0):
    """One KPU layer per batch with targets/k210/kpu.py's bit-exact kpu_conv2d (kmodel-v4.md §10.5)."""
    batch_norm, table = kpu_tables(bn, act)
    return np.stack([kpu_conv2d(xi, w, batch_norm, table, depthwise=depthwise, pad_value=pad_value, arg_x=arg_x,
                                shr_x=shr_x, arg_w=arg_w, shr_w=shr_w, arg_add=arg_add, pool_type=POOL_TYPE_OF[pool])
                     for xi in x])


def _requantize_acc(acc: np.ndarray, output_mul: int, output_shift: int, output_offset: int) -> np.ndarray:
    """clamp(mul_and_carry_shift(acc as i32) + output_offset, 0, 255) -> uint8."""
    y = mul_and_carry_shift(acc.astype(np.int32), output_mul, output_shift).astype(np.int64) + output_offset
    return np.clip(y, 0, 255).astype(np.uint8)


@k210_kernel("quantized_conv2d")
def quantized_conv2d(x, w, b, *, strides=(1, 1), padding=((0, 0), (0, 0)), dilations=(1, 1), groups=1,
                     input_offset=0, filter_offset=0, output_mul=1, output_shift=0, output_offset=0):
    """u8 conv (§8.16): padding taps are skipped, i.e. the offset input is padded with 0. The tap sums run
    in float64 BLAS and are exact (integers below 2^53)."""
    xs = x.astype(np.float64) + input_offset
    ws = w.astype(np.float64) + filter_offset
    acc = conv2d(xs, ws, np.asarray(b, np.float64), strides=strides, padding=padding, dilations=dilations,
                 groups=groups).astype(np.int64)
    return _requantize_acc(acc, output_mul, output_shift, output_offset)


@k210_kernel("quantized_matmul")
def quantized_matmul(a, b, bias, *, input_a_offset=0, input_b_offset=0, output_mul=1, output_shift=0,
                     output_offset=0):
    """u8 (M,K) @ (K,N) (§8.17): acc = bias + Σ (a + a_off)(b + b_off), rescaled and clamped."""
    acc = (a.astype(np.int64) + input_a_offset) @ (b.astype(np.int64) + input_b_offset)
    return _requantize_acc(acc + np.asarray(bias, np.int64)[None, :], output_mul, output_shift, output_offset)


QUANTIZED_BINARY_OPS = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: c_div(a + c_div(b, 2), b), "min": np.minimum, "max": np.maximum,
}


@k210_kernel("quantized_binary")
def quantized_binary(a, b, *, op, input_a_offset=0, input_a_mul=1, input_a_shift=0, input_b_offset=0,
                     input_b_mul=1, input_b_shift=0, output_mul=1, output_shift=0, output_offset=0):
    """u8 binary (§8.18): each operand is offset and rescaled by mul_and_carry_shift, combined in i32
    (div rounds: (a + b/2) / b in C division), then rescaled, offset and clamped."""
    x = mul_and_carry_shift(a.astype(np.int64) + input_a_offset, input_a_mul, input_a_shift).astype(np.int64)
    y = mul_and_carry_shift(b.astype(np.int64) + input_b_offset, input_b_mul, input_b_shift).astype(np.int64)
    r = QUANTIZED_BINARY_OPS[op](x, y)
    return _requantize_acc(np.asarray(r), output_mul, output_shift, output_offset)


# ---------------------------------------------------------------- device ops (targets/k210/ops.py)
# A kmodel runtime's own arithmetic where it differs from the ops above (targets/k210/device_semantics.py
# makes these ops right before lowering). Each kernel builds the layer body the lowering emits and runs the
# interpreter's own layer function (interpreter_v3.RUN_V3, interpreter_v4.OPS) on a scratch memory holding
# only its operands: one implementation for `kpuc infer` and the quantized executor.
V3_ACTIVATIONS = {(0.0, math.inf): 1, (0.0, 6.0): 2}        # the SDK's float act enum (relu, relu6)
NO_CLAMP = (-math.inf, math.inf)


def _run_v3(type: LayerType, operands: list[np.ndarray], out_dtype, out_count: int, body) -> np.ndarray:
    """Run one SDK layer: `operands` back to back (8-aligned) in a fresh main memory, the output after them;
    `body(operand addresses, output address)` makes the layer body."""
    addrs, end = [], 0
    for a in operands:
        addrs.append(end)
        end += -(-a.nbytes // 8) * 8
    m = iv3.Machine(SimpleNamespace(header=SimpleNamespace(main_mem_usage=end + out_count * np.dtype(out_dtype).itemsize)))
    for a, addr in zip(operands, addrs):
        m.store(addr, np.ascontiguousarray(a))
    iv3.RUN_V3[type](m, body(addrs, end))
    return m.load(end, out_dtype, out_count)


def _fixed_v3(type: LayerType, operands, out_dtype, out_count: int, **fields) -> np.ndarray:
    """A fixed-body SDK layer reading its operands at main_mem_in(_a/_b)_address, writing main_mem_out_address."""
    def body(addrs, out):
        names = ["main_mem_in_address"] if len(addrs) == 1 else ["main_mem_in_a_address", "main_mem_in_b_address"]
        out_name = "mem_out_address" if type == LayerType.Quantize else "main_mem_out_address"
        return FIXED_BODIES[type].make(**dict(zip(names, addrs)), **{out_name: out}, **fields)
    return _run_v3(type, operands, out_dtype, out_count, body)


def _v4_range(start: int, a_or_count, dtype=np.float32) -> k4.MemoryRange:
    n = a_or_count.size if isinstance(a_or_count, np.ndarray) else int(a_or_count)
    return k4.MemoryRange(k4.MEM_MAIN, k4.DT_FLOAT32 if np.dtype(dtype) == np.float32 else k4.DT_UINT8, start,
                          n * np.dtype(dtype).itemsize)


def _run_v4(operands: list[np.ndarray], out_count: int, body, out_dtype=np.float32) -> np.ndarray:
    """Run one nncase v0.2 runtime op: `operands` in main memory (8-aligned), the output after them;
    `body(operand ranges, output range)` makes the op body."""
    ranges, end = [], 0
    for a in operands:
        ranges.append(_v4_range(end, a, a.dtype))
        end += -(-a.nbytes // 8) * 8
    out = _v4_range(end, out_count, out_dtype)
    mem = iv4.Memory(SimpleNamespace(constants=b"", main_mem=end + out.size))
    for a, r in zip(operands, ranges):
        mem.put(r, np.ascontiguousarray(a))
    b = body(ranges, out)
    iv4.OPS[b.opcode](b, mem)
    return mem.get(out)


def _v3_act(clamp) -> tuple[int, tuple | None]:
    """(SDK act enum, clamp still to apply): ReLU and ReLU6 are the layer's own activations."""
    clamp = tuple(map(float, clamp))
    if clamp == NO_CLAMP:
        return 0, None
    return (V3_ACTIVATIONS[clamp], None) if clamp in V3_ACTIVATIONS else (0, clamp)


def _clamped(y: np.ndarray, rest) -> np.ndarray:
    return y if rest is None else np.minimum(np.maximum(y, np.float32(rest[0])), np.float32(rest[1])).astype(np.float32)


@k210_kernel("dequantize_v3")
def dequantize_v3(x, *, scale, bias):
    """The SDK's Dequantize: float32(q)·scale + bias in float32."""
    y = _fixed_v3(LayerType.Dequantize, [np.asarray(x, np.uint8).reshape(-1)], np.float32, x.size, flags=1,
                  count=x.size, scale=scale, bias=bias)
    return y.reshape(x.shape)


@k210_kernel("quantize_v3")
def quantize_v3(x, *, scale, bias):
    """The SDK's Quantize: clamp(roundf((x − bias)·(1.0f/scale)), 0, 255)."""
    y = _fixed_v3(LayerType.Quantize, [np.asarray(x, np.float32).reshape(-1)], np.uint8, x.size, flags=0,
                  count=x.size, scale=scale, bias=bias)
    return y.reshape(x.shape)


@k210_kernel("quantized_add_v3")
def quantized_add_v3(a, b, **params):
    """The SDK's QuantizedAdd (integer, the operand sum shifted down, carry-shift rescale)."""
    ops = [np.asarray(v, np.uint8).reshape(-1) for v in (a, b)]
    return _fixed_v3(LayerType.QuantizedAdd, ops, np.uint8, a.size, flags=1, count=a.size,
                     **params).reshape(a.shape)


def _batches(x: np.ndarray, what: str):
    if x.ndim != 4:
        raise KpucError(f"the v3 {what} layer works on N×C×H×W maps, not {x.shape}")
    return x


@k210_kernel("reduce_f32")
def reduce_f32(x, *, op, axes, keepdims=True, kmodel):
    """v3: GlobalAveragePool2d per map (mean over H and W only); v4: the runtime's reduce."""
    x = np.asarray(x, np.float32)
    axes = tuple(axes)
    keep = tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    out_shape = keep if keepdims else tuple(d for i, d in enumerate(x.shape) if i not in axes)
    if kmodel == 3:
        if op != "mean" or axes != (2, 3):
            raise KpucError(f"v3 reduces only as a global average pool (mean over H and W), not {op} over {axes}")
        n, c, h, w = _batches(x, "GlobalAveragePool2d").shape
        y = np.stack([_fixed_v3(LayerType.GlobalAveragePool2d, [xi.reshape(-1)], np.float32, c, flags=1,
                                kernel_size=h * w, channels=c) for xi in x])
        return y.reshape(out_shape)
    codes = {"mean": 0, "min": 1, "max": 2, "sum": 3}
    init = {"mean": 0.0, "sum": 0.0, "min": k4.FLT_MAX, "max": -k4.FLT_MAX}[op]
    y = _run_v4([x.reshape(-1)], int(np.prod(keep)), lambda r, o: k4.Reduce(
        r[0], o, codes[op], shape4(x.shape), shape4(keep), init))
    return y.reshape(out_shape)


@k210_kernel("reduce_window2d_f32")
def reduce_window2d_f32(x, *, op, kernel, strides=(1, 1), padding=((0, 0), (0, 0)), dilations=(1, 1),
                        ceil_mode=False, count_include_pad=False, kmodel):
    """v3: AveragePool2d (mean over the taps inside the map); v4: the runtime's reduce_window2d, with the
    lowering's explicit zero padding for count_include_pad and its trailing padding for ceil_mode."""
    from compiler.ops import conv_out
    x = np.asarray(x, np.float32)
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilations
    oh, ow = (conv_out(size, k, s, d, p, ceil_mode) for size, k, s, d, p in
              zip((h, w), kernel, strides, dilations, padding))
    if kmodel == 3:
        (pt, pb), (pl, pr) = padding
        if op != "mean" or (dh, dw) != (1, 1) or ceil_mode or (count_include_pad and (pt, pb, pl, pr) != (0, 0, 0, 0)):
            raise KpucError("the v3 AveragePool2d is an undilated mean over the taps inside the map")
        fields = dict(in_width=w, in_height=h, in_channels=c, out_width=ow, out_height=oh, out_channels=c,
                      kernel_width=kw, kernel_height=kh, stride_width=sw, stride_height=sh, padding_width=pl,
                      padding_height=pt, act=0)
        return np.stack([_fixed_v3(LayerType.AveragePool2d, [xi.reshape(-1)], np.float32, c * oh * ow, flags=1,
                                   **fields).reshape(c, oh, ow) for xi in x])
    pads = [list(p) for p in padding]
    if op == "mean" and count_include_pad and any(p for pair in pads for p in pair):
        x = np.pad(x, ((0, 0), (0, 0), tuple(pads[0]), tuple(pads[1])))
        pads = [[0, 0], [0, 0]]
    in_shape = shape4(x.shape)
    for axis, size, k, s, d, want in ((0, in_shape[2], kh, sh, dh, oh), (1, in_shape[3], kw, sw, dw, ow)):
        while k4.windowed_size(size, k, s, d, k4.Padding(*pads[axis])) < want:
            pads[axis][1] += 1
    codes = {"mean": 0, "max": 2}
    init = 0.0 if op == "mean" else -k4.FLT_MAX
    y = _run_v4([x.reshape(-1)], n * c * oh * ow, lambda r, o: k4.ReduceWindow2D(
        r[0], o, codes[op], in_shape, k4.Padding(*pads[0]), k4.Padding(*pads[1]), kh, kw, sh, sw, dh, dw, init,
        value_range(NO_CLAMP)))
    return y.reshape(n, c, oh, ow)


def _fully_connected_v3(x: np.ndarray, weights: np.ndarray, bias: np.ndarray, clamp) -> np.ndarray:
    """The SDK's FullyConnected per row of x [rows, IC]: Σ x·w in IC order from 0, + bias, act."""
    act, rest = _v3_act(clamp)
    weights, bias = np.ascontiguousarray(weights, np.float32), np.asarray(bias, np.float32)
    oc = weights.shape[0]
    rows = [_run_v3(LayerType.FullyConnected, [row], np.float32, oc,
                    lambda addrs, out: FullyConnectedBody(0, addrs[0], out, act, weights, bias))
            for row in np.asarray(x, np.float32)]
    return _clamped(np.stack(rows), rest)


@k210_kernel("matmul_f32")
def matmul_f32(a, b, bias, *, fused_clamp=NO_CLAMP, kmodel):
    """v3: FullyConnected per row (Σ a·b in K order from 0, then + bias); v4: the runtime's matmul (bias,
    then + a·b in K order)."""
    a = np.asarray(a, np.float32)
    k, n = b.shape
    rows = a.reshape(-1, k)
    if kmodel == 3:
        y = _fully_connected_v3(rows, np.asarray(b, np.float32).T, bias, fused_clamp)
    else:
        y = _run_v4([rows.reshape(-1), np.asarray(b, np.float32).reshape(-1)], rows.shape[0] * n, lambda r, o: k4.MatMul(
            r[0], r[1], o, rows.shape[0], k, n, value_range(fused_clamp), np.asarray(bias, np.float32)))
    return y.reshape(a.shape[:-1] + (n,))


@k210_kernel("conv2d_f32")
def conv2d_f32(x, w, b, *, strides=(1, 1), padding=((0, 0), (0, 0)), dilations=(1, 1), groups=1,
               fused_clamp=NO_CLAMP, kmodel):
    """v3: a 1×1 conv of a 1×1 map as FullyConnected; v4: the runtime's conv2d (bias, then + x·w over
    (ic, ky, kx), padding taps skipped)."""
    from compiler.ops import conv_out
    x = np.asarray(x, np.float32)
    n, c, h, wd = x.shape
    oc, _, kh, kw = w.shape
    if kmodel == 3:
        if (h, wd, kh, kw, groups) != (1, 1, 1, 1, 1) or any(p for pair in padding for p in pair):
            raise KpucError("v3 convolves on the CPU only as FullyConnected: a 1×1 conv of a 1×1 map")
        return _fully_connected_v3(x.reshape(n, c), np.asarray(w, np.float32)[:, :, 0, 0], b,
                                   fused_clamp).reshape(n, oc, 1, 1)
    (ph, pw), (sh, sw), (dh, dw) = padding, strides, dilations
    oh, ow = conv_out(h, kh, sh, dh, ph), conv_out(wd, kw, sw, dw, pw)
    y = _run_v4([x.reshape(-1)], n * oc * oh * ow, lambda r, o: k4.Conv2D(
        r[0], o, shape4(x.shape), groups, oc, k4.Padding(*ph), k4.Padding(*pw), kh, kw, sh, sw, dh, dw,
        value_range(fused_clamp), np.asarray(w, np.float32).reshape(-1), np.asarray(b, np.float32).reshape(-1)))
    return y.reshape(n, oc, oh, ow)


@k210_kernel("exp_f32")
def exp_f32(x, *, kmodel):
    """v4: the runtime's `unary exp`, expf from the C library (the interpreter's own function)."""
    return expf(np.asarray(x, np.float32))


@k210_kernel("softmax_f32")
def softmax_f32(x, *, axis, kmodel=3):
    """v3: the SDK's Softmax on each vector along `axis`."""
    if kmodel != 3:
        raise KpucError("softmax_f32 is the v3 Softmax layer; v4 decomposes softmax (device_semantics)")
    x = np.asarray(x, np.float32)
    moved = np.moveaxis(x, axis, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    y = np.stack([_fixed_v3(LayerType.Softmax, [row], np.float32, row.size, flags=1, channels=row.size)
                  for row in rows])
    return np.moveaxis(y.reshape(moved.shape), -1, axis)


QUANTIZED_KERNELS: Mapping[str, Callable] = {**KERNELS, **K210_KERNELS}


class QuantizedExecutor(Executor):
    """Runs a quantized graph: the float kernels plus K210_KERNELS. Outputs are whatever the graph returns
    (quantize_k210 ends every output with a dequantize_u8, so they are float32)."""

    def __init__(self, graph: Graph, kernels: Mapping = QUANTIZED_KERNELS):
        super().__init__(graph, kernels)
