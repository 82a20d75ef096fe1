"""Convolutions and FullyConnected: NHWC ops wrapped in transposes, weights transposed once in numpy.

CONV_2D weights are OHWI -> OIHW (grouped when the input has a multiple of I channels);
DEPTHWISE_CONV_2D weights 1HW(C*m) -> (C*m)1HW with groups = C (output channel c*m + j reads input c);
TRANSPOSE_CONV weights OHWI -> IOHW, with the padding TFLite derives from the requested output shape;
FULLY_CONNECTED is reshape to (-1, in) + matmul with the transposed weights + bias.
MediaPipe's custom Convolution2DTransposeBias is TRANSPOSE_CONV (input, OHWI weights, bias) whose output
size follows from its custom options, a TfLiteTransposeConvParams struct: int32 padding (1 SAME, 2 VALID),
int32 stride_width, int32 stride_height; SAME gives in * stride, VALID (in - 1) * stride + k.
"""
from __future__ import annotations

import struct

import numpy as np

from compiler.errors import KpucError
from compiler.importers.tflite.context import TFLiteContext, converter, option
from compiler.importers.tflite.reader import OpInfo
from compiler.ir import Value

SAME, VALID = 0, 1


def tf_padding(mode: int, in_hw, k_hw, strides, dilations=(1, 1)) -> tuple[tuple[int, int], ...]:
    """TF SAME/VALID as explicit ((top, bottom), (left, right)); SAME puts the odd pixel after."""
    if mode == VALID:
        return ((0, 0), (0, 0))
    if mode != SAME:
        raise KpucError(f"unknown padding mode {mode}")
    pads = []
    for size, k, s, d in zip(in_hw, k_hw, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def bias(ctx: TFLiteContext, op: OpInfo, k: int, channels: int, name: str) -> Value:
    """Input `k` as the bias, or zeros: the IR conv always takes one."""
    if ctx.has_input(op, k):
        return ctx.input(op, k)
    return ctx.const(np.zeros(channels, np.float32), name=f"{name}/bias")


def _window(op: OpInfo) -> tuple[tuple[int, int], tuple[int, int]]:
    strides = (option(op, "StrideH", 1), option(op, "StrideW", 1))
    dilations = (option(op, "DilationHFactor", 1), option(op, "DilationWFactor", 1))
    return strides, dilations


@converter("CONV_2D")
def conv_2d(ctx: TFLiteContext, op: OpInfo):
    x, w, name = ctx.nchw(op, 0), ctx.weight(op, 1, (0, 3, 1, 2)), ctx.name(op)
    out_c, in_per_group, kh, kw = w.shape
    channels = x.shape[1]
    if channels % in_per_group or out_c % (channels // in_per_group):
        raise KpucError(f"{channels} input channels do not fit weights {w.shape} (OIHW)")
    strides, dilations = _window(op)
    y = ctx.emit(op, "conv2d", [x, w, bias(ctx, op, 2, out_c, name)], strides=strides, dilations=dilations,
                 padding=tf_padding(option(op, "Padding"), x.shape[2:], (kh, kw), strides, dilations),
                 groups=channels // in_per_group)
    ctx.set_output(op, 0, y, nchw=True)


@converter("DEPTHWISE_CONV_2D")
def depthwise_conv_2d(ctx: TFLiteContext, op: OpInfo):
    x, w, name = ctx.nchw(op, 0), ctx.weight(op, 1, (3, 0, 1, 2)), ctx.name(op)
    out_c, one, kh, kw = w.shape
    channels = x.shape[1]
    if one != 1 or out_c % channels:
        raise KpucError(f"depthwise weights {w.shape} (after 1HWC -> C1HW) do not fit {channels} channels")
    strides, dilations = _window(op)
    y = ctx.emit(op, "conv2d", [x, w, bias(ctx, op, 2, out_c, name)], strides=strides, dilations=dilations,
                 padding=tf_padding(option(op, "Padding"), x.shape[2:], (kh, kw), strides, dilations),
                 groups=channels)
    ctx.set_output(op, 0, y, nchw=True)


def transpose_conv_padding(mode: int, in_size: int, out_size: int, k: int, s: int) -> tuple[tuple[int, int], int]:
    """(pad_before, pad_after), output_padding giving exactly `out_size` (tflite ComputePaddingHeightWidth).

    TFLite pads as the forward conv from `out_size` would, then keeps `out_size` pixels of the full
    (in-1)*s + k result starting at pad_before; a shortfall at the end becomes output_padding.
    """
    conv_out = (out_size + s - 1) // s if mode == SAME else (out_size + s - k) // s
    before = max((conv_out - 1) * s + k - out_size, 0) // 2
    after = (in_size - 1) * s + k - out_size - before
    return (before, max(after, 0)), max(-after, 0)


@converter("TRANSPOSE_CONV")
def transpose_conv(ctx: TFLiteContext, op: OpInfo):
    out_shape = [int(d) for d in ctx.array(op, 0)]  # NHWC
    w, x, name = ctx.weight(op, 1, (3, 0, 1, 2)), ctx.nchw(op, 2), ctx.name(op)
    _, out_c, kh, kw = w.shape
    if len(out_shape) != 4 or out_shape[3] != out_c:
        raise KpucError(f"output_shape {out_shape} does not fit weights {w.shape} (IOHW)")
    strides, mode = (option(op, "StrideH", 1), option(op, "StrideW", 1)), option(op, "Padding")
    if mode not in (SAME, VALID):
        raise KpucError(f"unknown padding mode {mode}")
    (ph, oph), (pw, opw) = (transpose_conv_padding(mode, x.shape[2 + i], out_shape[1 + i], (kh, kw)[i], strides[i])
                            for i in range(2))
    y = ctx.emit(op, "conv2d_transpose", [x, w, bias(ctx, op, 3, out_c, name)], strides=strides,
                 padding=(ph, pw), output_padding=(oph, opw))
    ctx.set_output(op, 0, y, nchw=True)


# TfLitePadding (the C enum in custom options) -> the schema's Padding
C_PADDING = {1: SAME, 2: VALID}


@converter("Convolution2DTransposeBias")
def convolution_2d_transpose_bias(ctx: TFLiteContext, op: OpInfo):
    if len(op.custom_options) < 12:
        raise KpucError(f"custom options of {len(op.custom_options)} bytes; 12 (padding, stride_w, stride_h) expected")
    padding, stride_w, stride_h = struct.unpack_from("<3i", op.custom_options)
    if padding not in C_PADDING or stride_w < 1 or stride_h < 1:
        raise KpucError(f"custom options padding={padding} strides=({stride_h}, {stride_w}) are not valid")
    mode, strides = C_PADDING[padding], (stride_h, stride_w)
    w, x, name = ctx.weight(op, 1, (3, 0, 1, 2)), ctx.nchw(op, 0), ctx.name(op)
    _, out_c, kh, kw = w.shape
    out_hw = [x.shape[2 + i] * strides[i] if mode == SAME else (x.shape[2 + i] - 1) * strides[i] + (kh, kw)[i]
              for i in range(2)]
    (ph, oph), (pw, opw) = (transpose_conv_padding(mode, x.shape[2 + i], out_hw[i], (kh, kw)[i], strides[i])
                            for i in range(2))
    y = ctx.add("conv2d_transpose", [x, w, bias(ctx, op, 2, out_c, name)], name=name, strides=strides,
                padding=(ph, pw), output_padding=(oph, opw))
    ctx.set_output(op, 0, y, nchw=True)


@converter("FULLY_CONNECTED")
def fully_connected(ctx: TFLiteContext, op: OpInfo):
    if option(op, "WeightsFormat") != 0:
        raise KpucError("only the DEFAULT weights format is supported (not shuffled int8)")
    x, w, out = ctx.input(op, 0), ctx.weight(op, 1, (1, 0)), ctx.name(op)
    in_features, out_features = w.shape
    if x.type.size % in_features:
        raise KpucError(f"input {x.shape} cannot be flattened to rows of {in_features}")
    keep = option(op, "KeepNumDims", False) and x.type.rank != 2
    flat = x
    if x.type.rank != 2 or x.shape[1] != in_features:
        flat = ctx.add("reshape", [x], name=f"{out}/flatten", shape=(x.type.size // in_features, in_features))
    name = f"{out}/fc" if keep else out
    if ctx.has_input(op, 2):
        y = ctx.add("matmul", [flat, w], name=f"{name}/matmul")
        y = ctx.emit(op, "binary", [y, ctx.input(op, 2)], name=name, op="add")
    else:
        y = ctx.emit(op, "matmul", [flat, w], name=name)
    if keep:
        y = ctx.add("reshape", [y], name=out, shape=x.shape[:-1] + (out_features,))
    ctx.set_output(op, 0, y)


@converter("BATCH_MATMUL")
def batch_matmul(ctx: TFLiteContext, op: OpInfo):
    a, b, name = ctx.input(op, 0), ctx.input(op, 1), ctx.name(op)
    operands = []
    for k, (v, adjoint) in enumerate(((a, option(op, "AdjX", False)), (b, option(op, "AdjY", False)))):
        if adjoint:  # the adjoint of a real matrix is its transpose over the last two dims
            perm = tuple(range(v.type.rank - 2)) + (v.type.rank - 1, v.type.rank - 2)
            v = ctx.add("transpose", [v], name=f"{name}/adj{k}", perm=perm)
        operands.append(v)
    ctx.set_output(op, 0, ctx.emit(op, "matmul", operands))
