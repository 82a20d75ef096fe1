"""Conv, ConvTranspose, MatMul, Gemm and BatchNormalization, plus the padding helpers pools share.

IR conv and pool ops are 2-D (NCHW); a 1-D op (N, C, W) runs as 2-D on (N, C, 1, W) between two
reshapes. 3-D convolutions and pools are reported unsupported.
"""
from __future__ import annotations

import math

import numpy as np

from compiler.importers.onnx.context import NotConvertible, converter


def spatial_attrs(in_sizes, kernel, auto_pad="NOTSET", pads=None, strides=None, dilations=None):
    """(strides, dilations, padding pairs) per spatial axis, with auto_pad made explicit.

    SAME_UPPER / SAME_LOWER pad so that out = ceil(in / stride); the odd pixel goes after
    (UPPER) or before (LOWER) the input, as in the ONNX spec.
    """
    n = len(kernel)
    strides = tuple(int(s) for s in (strides or (1,) * n))
    dilations = tuple(int(d) for d in (dilations or (1,) * n))
    if len(strides) != n or len(dilations) != n:
        raise NotConvertible(f"strides {strides} / dilations {dilations} do not match a {n}-D kernel")
    if auto_pad in ("NOTSET", ""):
        pads = tuple(int(p) for p in (pads or (0,) * (2 * n)))
        if len(pads) != 2 * n:
            raise NotConvertible(f"pads {pads} do not match a {n}-D kernel")
        padding = tuple((pads[i], pads[i + n]) for i in range(n))
    elif auto_pad == "VALID":
        padding = ((0, 0),) * n
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        padding = []
        for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            padding.append((small, big) if auto_pad == "SAME_UPPER" else (big, small))
        padding = tuple(padding)
    else:
        raise NotConvertible(f"auto_pad={auto_pad!r}")
    return strides, dilations, padding


def check_spatial_rank(x, what: str) -> int:
    """The number of spatial axes of x (1 or 2), or NotConvertible."""
    n = x.type.rank - 2
    if n not in (1, 2):
        raise NotConvertible(f"{n}-D {what} is not supported (1-D and 2-D are)")
    return n


def lift(ctx, x):
    """(N, C, W) -> (N, C, 1, W), so a 1-D op runs as 2-D; 4-D x passes through."""
    return ctx.reshape(x, x.shape[:2] + (1,) + x.shape[2:]) if x.type.rank == 3 else x


def lift_attrs(n, strides, dilations, padding):
    """The H-axis entries (stride 1, dilation 1, no padding) prefixed to 1-D attributes."""
    if n == 2:
        return strides, dilations, padding
    return (1,) + strides, (1,) + dilations, ((0, 0),) + padding


def drop(ctx, y, n):
    """Undo `lift`: (N, C, 1, W) -> (N, C, W)."""
    return ctx.reshape(y, y.shape[:2] + y.shape[3:]) if n == 1 else y


@converter("Conv")
def conv(ctx, x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None,
         strides=None):
    n = check_spatial_rank(x, "convolution")
    kernel = w.shape[2:]
    if kernel_shape is not None and tuple(kernel_shape) != kernel:
        raise NotConvertible(f"kernel_shape {tuple(kernel_shape)} differs from the weights' {kernel}")
    s, d, p = spatial_attrs(x.shape[2:], kernel, auto_pad, pads, strides, dilations)
    if b is None:
        b = ctx.const(np.zeros(w.shape[0], dtype=x.dtype))
    s, d, p = lift_attrs(n, s, d, p)
    y = ctx.add("conv2d", [lift(ctx, x), lift(ctx, w), b], strides=s, padding=p, dilations=d, groups=int(group))
    return drop(ctx, y, n)


def _transpose_padding(in_sizes, kernel, s, d, output_padding, output_shape, auto_pad, pads):
    """(padding pairs, output_padding) of a ConvTranspose, following the ONNX reference.

    With output_shape (or SAME auto_pad, whose output_shape is in * stride) the total padding is
    whatever makes the output that size: the odd pixel goes first unless SAME_UPPER. A negative
    padding at the end (a larger output than the taps reach) is extra output_padding.
    """
    n = len(kernel)
    if output_shape is None and auto_pad in ("NOTSET", "", "VALID"):
        pads = pads if auto_pad != "VALID" and pads else (0,) * (2 * n)
        return tuple((int(pads[i]), int(pads[i + n])) for i in range(n)), output_padding
    if output_shape is None:
        output_shape = tuple(size * st for size, st in zip(in_sizes, s))
    output_shape = tuple(output_shape)[-n:]
    padding, extra = [], []
    for size, k, st, dl, op, out in zip(in_sizes, kernel, s, d, output_padding, output_shape):
        total = st * (size - 1) + op + (k - 1) * dl + 1 - out
        small, big = total // 2, total - total // 2
        before, after = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        if before < 0:
            raise NotConvertible(f"output_shape {output_shape} needs output before the first tap")
        padding.append((before, max(after, 0)))
        extra.append(op + max(-after, 0))
    return tuple(padding), tuple(extra)


@converter("ConvTranspose")
def conv_transpose(ctx, x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                   output_padding=None, output_shape=None, pads=None, strides=None):
    n = check_spatial_rank(x, "transposed convolution")
    kernel = w.shape[2:]
    if kernel_shape is not None and tuple(kernel_shape) != kernel:
        raise NotConvertible(f"kernel_shape {tuple(kernel_shape)} differs from the weights' {kernel}")
    s, d, _ = spatial_attrs(x.shape[2:], kernel, "VALID", None, strides, dilations)
    output_padding = tuple(int(v) for v in (output_padding or (0,) * n))
    p, op = _transpose_padding(x.shape[2:], kernel, s, d, output_padding, output_shape, auto_pad, pads)
    if b is None:
        b = ctx.const(np.zeros(w.shape[1] * group, dtype=x.dtype))
    s, d, p = lift_attrs(n, s, d, p)
    op = op if n == 2 else (0,) + op
    y = ctx.add("conv2d_transpose", [lift(ctx, x), lift(ctx, w), b], strides=s, padding=p, dilations=d,
                groups=int(group), output_padding=op)
    return drop(ctx, y, n)


@converter("MatMul")
def matmul(ctx, a, b):
    return ctx.add("matmul", [a, b])


@converter("Gemm")
def gemm(ctx, a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    """alpha * A' @ B' + beta * C: transpose + matmul + mul + add (constant parts fold)."""
    if transA:
        a = ctx.add("transpose", [a], perm=(1, 0))
    if transB:
        b = ctx.add("transpose", [b], perm=(1, 0))
    y = ctx.add("matmul", [a, b])
    if alpha != 1.0:
        y = ctx.binary("mul", y, ctx.scalar(alpha, like=y))
    if c is not None and beta != 0.0:
        if beta != 1.0:
            c = ctx.binary("mul", c, ctx.scalar(beta, like=c))
        y = ctx.binary("add", y, c)
    return y


@converter("BatchNormalization", since=7)
def batch_normalization(ctx, x, scale, b, mean, var, *, epsilon=1e-5, momentum=0.9, spatial=1, training_mode=0):
    """Inference batch norm; `spatial` exists in opsets 7-8 only, `training_mode` from 14 on."""
    if training_mode:
        raise NotConvertible("training_mode=1 (batch statistics) is not supported; export for inference")
    if not spatial:
        raise NotConvertible("spatial=0 (per-element statistics) is not supported")
    return ctx.add("batch_norm", [x, scale, b, mean, var], epsilon=float(epsilon))
