"""Ops whose result is known at import: Constant, ConstantOfShape, Shape, Size and Range.

Shape and Size read the static shape of any tensor, so the shape arithmetic exporters emit
(Shape -> Gather -> Unsqueeze -> Concat -> Reshape) folds to constants.
"""
from __future__ import annotations

import numpy as np

from compiler.importers.limits import check_elements
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
    fill = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    if fill.size != 1:
        raise NotConvertible(f"value has {fill.size} elements, ONNX wants one")
    dims = tuple(int(d) for d in ctx.data(shape, "shape").reshape(-1))
    check_elements(dims, "ConstantOfShape output")  # before np.full allocates it
    return ctx.const(graph_array(np.full(dims, fill[0], fill.dtype)))


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
    if any(a.size != 1 for a in (s, lim, d)):
        raise NotConvertible("start, limit and delta must be scalars")
    s, lim, d = (a.reshape(()) for a in (s, lim, d))
    if d == 0 or not all(np.isfinite(float(a)) for a in (s, lim, d)):
        raise NotConvertible(f"Range({float(s)}, {float(lim)}, {float(d)}) has a zero or non-finite argument")
    count = max(int(np.ceil((float(lim) - float(s)) / float(d))), 0)
    check_elements((count,), "Range output")
    return ctx.const(graph_array((s + d * np.arange(count)).astype(s.dtype)))
