"""kmodel v4 interpreter: convolutions, matmul and the KPU ops (kmodel-v4.md §8, §10)."""
from __future__ import annotations

import numpy as np

from compiler.quantization import mul_and_carry_shift
from targets.k210 import kmodel_v4 as k4
from targets.k210.interpreter_v4_base import (
    F32,
    Memory,
    clamp,
    input_tensor,
    kpu_read,
    kpu_write,
    op,
    out_hw,
    tap_slices,
    window_taps,
)
from targets.k210.kpu import run_kpu_layer


# ---------------------------------------------------------------- convolutions and matmul
def _conv_f32(x: np.ndarray, w: np.ndarray, bias: np.ndarray, b, groups: int, taps_first: bool) -> np.ndarray:
    """Float conv, NCHW, grouped OIHW weights; per output: bias, then += x·w over the valid taps in
    (ic, ky, kx) order (neutral conv2d) or (ky, kx, ic) order (`taps_first`, cpu_conv2d). Padding taps
    are skipped, not multiplied by zero."""
    n, c, h, wd = x.shape
    oc, gic = w.shape[0], c // groups
    goc = oc // groups
    oh, ow = out_hw((h, wd), b)
    xg = x.reshape(n, groups, gic, h, wd)
    wg = w.reshape(groups, goc, gic, b.filter_h, b.filter_w)
    acc = np.empty((n, groups, goc, oh, ow), F32)
    acc[...] = bias.reshape(1, groups, goc, 1, 1)
    taps = list(window_taps((h, wd), (oh, ow), b))
    order = [(t, ic) for t in taps for ic in range(gic)] if taps_first else \
        [(t, ic) for ic in range(gic) for t in taps]
    for (ky, kx, oys, oxs, iys, ixs), ic in order:
        acc[..., oys, oxs] += xg[:, :, None, ic, iys, ixs] * wg[None, :, :, ic, ky, kx, None, None]
    return clamp(acc.reshape(n, oc, oh, ow), b.fused_activation)


def _conv_int(x: np.ndarray, w: np.ndarray, bias: np.ndarray, b, groups: int, x_add: int, w_add: int):
    """Quantized conv: i32 bias + Σ (x + x_add)·(w + w_add) over the valid taps, then
    mul_and_carry_shift + output_offset, clamped to u8. The tap sums run in float64 BLAS: exact, every
    partial sum is an integer below 2^53."""
    n, c, h, wd = x.shape
    oc, gic = w.shape[0], c // groups
    goc = oc // groups
    oh, ow = out_hw((h, wd), b)
    xg = (x.astype(np.float64) + x_add).reshape(n, groups, gic, h, wd)
    wg = (w.astype(np.float64) + w_add).reshape(groups, goc, gic, b.filter_h, b.filter_w)
    acc = np.zeros((n, groups, goc, oh, ow), np.float64)
    for ky, kx, oys, oxs, iys, ixs in window_taps((h, wd), (oh, ow), b):
        xt = xg[:, :, :, iys, ixs]
        prod = np.matmul(wg[None, :, :, :, ky, kx], xt.reshape(*xt.shape[:3], -1))
        acc[..., oys, oxs] += prod.reshape(n, groups, goc, *xt.shape[-2:])
    acc = acc.astype(np.int64).reshape(n, oc, oh, ow) + bias.astype(np.int64)[None, :, None, None]
    y = mul_and_carry_shift(acc.astype(np.int32), b.output_mul, b.output_shift).astype(np.int64)
    return np.clip(y + b.output_offset, 0, 255).astype(np.uint8)


@op(k4.Conv2D)
def conv2d(b: k4.Conv2D, mem: Memory):
    """float32 grouped conv, NCHW."""
    w = b.weights.reshape(b.out_channels, b.in_shape[1] // b.groups, b.filter_h, b.filter_w)
    mem.put(b.output, _conv_f32(input_tensor(mem, b, F32, b.in_shape), w, b.bias, b, b.groups, taps_first=False))


@op(k4.QuantizedConv2D)
def quantized_conv2d(b: k4.QuantizedConv2D, mem: Memory):
    """u8 grouped conv, NCHW, offsets added."""
    w = b.weights.reshape(b.out_channels, b.in_shape[1] // b.groups, b.filter_h, b.filter_w)
    x = input_tensor(mem, b, np.uint8, b.in_shape)
    mem.put(b.output, _conv_int(x, w, b.bias, b, b.groups, b.input_offset, b.filter_offset))


def _nhwc(fn, b, mem: Memory, dtype):
    """Run an NCHW conv core on an NHWC body (cpu_* ops) and store the result NHWC."""
    x = input_tensor(mem, b, dtype, b.in_shape).transpose(0, 3, 1, 2)
    mem.put(b.output, np.ascontiguousarray(fn(np.ascontiguousarray(x)).transpose(0, 2, 3, 1)))


@op(k4.CpuConv2D)
def cpu_conv2d(b: k4.CpuConv2D, mem: Memory):
    """float32 conv, NHWC; per output the taps run ky, kx, ic."""
    w = b.weights.reshape(b.out_channels, b.filter_h, b.filter_w, b.in_shape[3]).transpose(0, 3, 1, 2)
    _nhwc(lambda x: _conv_f32(x, w, b.bias, b, 1, taps_first=True), b, mem, F32)


@op(k4.CpuDepthwiseConv2D)
def cpu_depthwise_conv2d(b: k4.CpuDepthwiseConv2D, mem: Memory):
    """float32 depthwise conv, NHWC."""
    c = b.in_shape[3]
    w = b.weights.reshape(c, 1, b.filter_h, b.filter_w)
    _nhwc(lambda x: _conv_f32(x, w, b.bias, b, c, taps_first=True), b, mem, F32)


@op(k4.CpuQuantizedConv2D)
def cpu_quantized_conv2d(b: k4.CpuQuantizedConv2D, mem: Memory):
    """u8 conv, NHWC; the offsets are *subtracted* here (cpu_kernels.h), unlike quantized_conv2d."""
    w = b.weights.reshape(b.out_channels, b.filter_h, b.filter_w, b.in_shape[3]).transpose(0, 3, 1, 2)
    _nhwc(lambda x: _conv_int(x, w, b.bias, b, 1, -b.input_offset, -b.filter_offset), b, mem, np.uint8)


@op(k4.CpuQuantizedDepthwiseConv2D)
def cpu_quantized_depthwise_conv2d(b: k4.CpuQuantizedDepthwiseConv2D, mem: Memory):
    """u8 depthwise conv, NHWC; offsets subtracted."""
    c = b.in_shape[3]
    w = b.weights.reshape(c, 1, b.filter_h, b.filter_w)
    _nhwc(lambda x: _conv_int(x, w, b.bias, b, c, -b.input_offset, -b.filter_offset), b, mem, np.uint8)


@op(k4.Conv2DTranspose)
def conv2d_transpose(b: k4.Conv2DTranspose, mem: Memory):
    """Scatter form: out[oc][iy·s − pad + ky·d][...] += x·w. Per output element the kernel adds in
    (ic, iy, ix) order, i.e. for a fixed ic in descending (ky, kx); bias is read but never added (§8.20)."""
    n, c, h, w = b.in_shape
    oc, oh, ow = b.out_shape[1:]
    gic, goc = c // b.groups, oc // b.groups
    x = input_tensor(mem, b, F32, b.in_shape).reshape(n, b.groups, gic, h, w)
    wt = b.weights.reshape(b.groups, goc, gic, b.filter_h, b.filter_w)
    out = np.zeros((n, b.groups, goc, oh, ow), F32)
    for ic in range(gic):
        for ky in reversed(range(b.filter_h)):
            ys = tap_slices(oh, h, ky, b.stride_h, b.dilation_h, b.padding_h.before)
            for kx in reversed(range(b.filter_w)):
                xs = tap_slices(ow, w, kx, b.stride_w, b.dilation_w, b.padding_w.before)
                if ys and xs:
                    out[..., ys[1], xs[1]] += x[:, :, None, ic, ys[0], xs[0]] * wt[None, :, :, ic, ky, kx, None, None]
    out = out.reshape(n, oc, oh, ow)
    if tuple(b.fused_activation) != tuple(k4.FULL_RANGE):
        out = clamp(out, b.fused_activation)
    mem.put(b.output, out)


@op(k4.MatMul)
def matmul(b: k4.MatMul, mem: Memory):
    """float32 matmul + bias, fused clamp."""
    a = mem.get(b.input_a, F32, shape=(b.a_rows, b.a_cols), count=b.a_rows * b.a_cols)
    m = mem.get(b.input_b, F32, shape=(b.a_cols, b.b_cols), count=b.a_cols * b.b_cols)
    acc = np.empty((b.a_rows, b.b_cols), F32)
    acc[...] = b.bias[None, :]
    for i in range(b.a_cols):  # f32 accumulation from the bias in increasing i, like the kernel
        acc += a[:, i:i + 1] * m[i:i + 1, :]
    mem.put(b.output, clamp(acc, b.fused_activation))


@op(k4.QuantizedMatMul)
def quantized_matmul(b: k4.QuantizedMatMul, mem: Memory):
    """u8 matmul: i32 bias + Σ (a + a_off)(b + b_off), rescaled and clamped."""
    a = mem.get(b.input_a, np.uint8, shape=(b.a_rows, b.a_cols), count=b.a_rows * b.a_cols).astype(np.int64)
    m = mem.get(b.input_b, np.uint8, shape=(b.a_cols, b.b_cols), count=b.a_cols * b.b_cols).astype(np.int64)
    acc = (a + b.input_a_offset) @ (m + b.input_b_offset) + b.bias.astype(np.int64)[None, :]
    y = mul_and_carry_shift(acc.astype(np.int32), b.output_mul, b.output_shift).astype(np.int64)
    mem.put(b.output, np.clip(y + b.output_offset, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------- KPU (kmodel-v4.md §10)
@op(k4.KpuUpload)
def kpu_upload(b: k4.KpuUpload, mem: Memory):
    """Dense NCHW u8 from main memory into KPU RAM layout."""
    kpu_write(mem, b.output.start, input_tensor(mem, b, np.uint8, b.in_shape))


@op(k4.KpuConv2D)
def kpu_conv2d(b: k4.KpuConv2D, mem: Memory):
    """The simulator path: download the input map, run the layer per batch (targets/k210/kpu.py), store
    the result into KPU RAM at image_dst_addr and, when present, densely into main_mem_output."""
    args = b.layer
    x = kpu_read(mem, 64 * args.image_src_addr, b.in_shape)
    out = np.stack([run_kpu_layer(args, x[i], b.weights, b.batch_norm, b.activation) for i in range(b.batches)])
    kpu_write(mem, 64 * args.image_dst_addr, out)
    if b.main_mem_output.size:
        mem.put(b.main_mem_output, out)  # all N·C·H·W bytes, as the simulator's std::copy does
