"""Ops whose result is known at import: Constant, ConstantOfShape, Shape, Size and Range.

Shape and Size read the static shape of any tensor, so the shape arithmetic exporters emit
(Shape -> Gather -> Unsqueeze -> Concat -> Reshape) folds to constants.
"""
from __future__ import annotations

import numpy as np

from compiler.importers.onnx.context import NotConvertible, converter, graph_array


@converter("Constant")
def constant(ctx, *, value=None, value_float=None, value_floats=None, value_int=None, value_ints=None,
             value_string=None, value_strings=None, sparse_value=None):
    if value is not None:
        return ctx.const(graph_array(value))
    if value_float is not None or value_floats is not None:
        return ctx.const(np.asarray(value_float if value_floats is None else value_floats, dtype=np.float32))
    if value_int is not None or value_ints is not None:
        return ctx.const(np.asarray(value_int if value_ints is None else value_ints, dtype=np.int64))
    raise NotConvertible("string and sparse constants are not supported")


@converter("ConstantOfShape", since=9)
def constant_of_shape(ctx, shape, *, value=None):
    fill = np.zeros(1, np.float32) if value is None else value.reshape(-1)
    return ctx.const(graph_array(np.full(tuple(int(d) for d in ctx.data(shape, "shape")), fill[0], fill.dtype)))


@converter("Shape")
def shape(ctx, x, *, start=0, end=None):
    """The static shape; `start` and `end` (opset 15) slice it like Python."""
    return ctx.const(np.asarray(x.shape[start:end], dtype=np.int64))


@converter("Size")
def size(ctx, x):
    return ctx.const(np.asarray(x.type.size, dtype=np.int64))


@converter("Range", since=11)
def range_(ctx, start, limit, delta, *, stash_type=1):
    s, lim, d = (ctx.data(v, what) for v, what in ((start, "start"), (limit, "limit"), (delta, "delta")))
    if d == 0:
        raise NotConvertible("delta 0")
    count = max(int(np.ceil((lim - s) / d)), 0)
    return ctx.const(graph_array((s + d * np.arange(count)).astype(s.dtype)))
