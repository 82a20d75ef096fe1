"""Integer kernels of the quantized IR ops (compiler/ops.py, "Quantized ops"), bit-exact with nncase v0.2's
runtime and software KPU; `QuantizedExecutor` runs a graph made by `quantize_k210` with them.

Every kernel is numpy in, numpy out (no Node), registered in K210_KERNELS; the rounding helpers come from
compiler/quantization.py and the KPU layer from targets/k210/kpu.py, so the kmodel interpreters and these
kernels share one definition of each number.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from compiler.executor import Executor
from compiler.ir import Graph, QuantParam
from compiler.kernels import KERNELS
from compiler.kernels.conv import conv2d
from compiler.quantization import QuantParamU8, c_div, dequantize_u8, mul_and_carry_shift, quantize_u8
from targets.k210.kpu import POOL_TYPES, ActTable, BatchNorm, kpu_conv2d

K210_KERNELS: dict[str, Callable] = {}
POOL_TYPE_OF = {name: code for code, (name, _, _) in POOL_TYPES.items()}


def k210_kernel(*ops: str):
    """Register `fn` as the integer kernel of each op in `ops`."""
    def register(fn):
        for op in ops:
            K210_KERNELS[op] = fn
        return fn
    return register


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


QUANTIZED_KERNELS: Mapping[str, Callable] = {**KERNELS, **K210_KERNELS}


class QuantizedExecutor(Executor):
    """Runs a quantized graph: the float kernels plus K210_KERNELS. Outputs are whatever the graph returns
    (quantize_k210 ends every output with a dequantize_u8, so they are float32)."""

    def __init__(self, graph: Graph, kernels: Mapping = QUANTIZED_KERNELS):
        super().__init__(graph, kernels)
