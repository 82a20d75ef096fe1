"""MaxPool, AveragePool, GlobalAveragePool and GlobalMaxPool."""
from __future__ import annotations

from compiler.importers.limits import check_padded_input
from compiler.importers.onnx.context import NotConvertible, converter
from compiler.importers.onnx.conv import check_spatial_rank, drop, lift, lift_attrs, spatial_attrs


def _pool(ctx, x, op, kernel_shape, auto_pad, pads, strides, dilations, ceil_mode, **extra):
    n = check_spatial_rank(x, "pooling")
    kernel = tuple(int(k) for k in kernel_shape)
    if len(kernel) != n:
        raise NotConvertible(f"kernel_shape {kernel} does not match a {n}-D input")
    s, d, p = spatial_attrs(x.shape[2:], kernel, auto_pad, pads, strides, dilations)
    s, d, p = lift_attrs(n, s, d, p)
    kernel = kernel if n == 2 else (1,) + kernel
    check_padded_input(x.shape if n == 2 else x.shape[:2] + (1,) + x.shape[2:], p, f"pool window {kernel}")
    y = ctx.add("reduce_window2d", [lift(ctx, x)], op=op, kernel=kernel, strides=s, padding=p, dilations=d,
                ceil_mode=bool(ceil_mode), **extra)
    return drop(ctx, y, n)


@converter("MaxPool")
def max_pool(ctx, x, *, kernel_shape, auto_pad="NOTSET", ceil_mode=0, dilations=None, pads=None,
             storage_order=0, strides=None):
    """`storage_order` only orders the Indices output, which is not supported."""
    if ctx.num_outputs > 1:
        raise NotConvertible("the Indices output (argmax positions) is not supported")
    return _pool(ctx, x, "max", kernel_shape, auto_pad, pads, strides, dilations, ceil_mode)


@converter("AveragePool")
def average_pool(ctx, x, *, kernel_shape, auto_pad="NOTSET", ceil_mode=0, count_include_pad=0, dilations=None,
                 pads=None, strides=None):
    return _pool(ctx, x, "mean", kernel_shape, auto_pad, pads, strides, dilations, ceil_mode,
                 count_include_pad=bool(count_include_pad))


@converter("GlobalAveragePool", "GlobalMaxPool")
def global_pool(ctx, x):
    op = "mean" if ctx.op_type == "GlobalAveragePool" else "max"
    return ctx.add("reduce", [x], op=op, axes=tuple(range(2, x.type.rank)), keepdims=True)
