"""Data movement in the file's own layout: reshape family, transpose, concat/pack, split, slices, gather.

Shape operands (RESHAPE's shape, TRANSPOSE's perm, slice bounds) must be constant; SHAPE itself folds
to a constant, and an op whose inputs are all constant is folded by the read loop, so static
SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE chains end as constants.
"""
from __future__ import annotations

import math

import numpy as np

from compiler.errors import KpucError
from compiler.importers.tflite.context import TFLiteContext, converter, ir_dtype, option
from compiler.importers.tflite.reader import OpInfo


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise KpucError(f"axis {axis} out of range for rank {rank}")
    return axis % rank


def _reshape(ctx: TFLiteContext, op: OpInfo, shape) -> None:
    x = ctx.input(op, 0)
    ctx.set_output(op, 0, ctx.add("reshape", [x], name=ctx.name(op), shape=tuple(int(d) for d in shape)))


def resolve_shape(shape, size: int) -> tuple[int, ...]:
    """A TF target shape with at most one -1 resolved against `size` elements."""
    shape = [int(d) for d in shape]
    if shape.count(-1) > 1 or any(d < -1 for d in shape):
        raise KpucError(f"invalid target shape {shape}")
    if -1 in shape:
        known = math.prod(d for d in shape if d != -1)
        if known == 0 or size % known:
            raise KpucError(f"cannot reshape {size} elements to {shape}")
        shape[shape.index(-1)] = size // known
    return tuple(shape)


@converter("RESHAPE")
def reshape(ctx: TFLiteContext, op: OpInfo):
    x = ctx.input(op, 0)
    if ctx.has_input(op, 1) and ctx.input(op, 1).is_constant:
        shape = ctx.array(op, 1).reshape(-1)
    elif op.options is not None and op.options.NewShapeLength() > 0:
        shape = op.options.NewShapeAsNumpy()
    else:  # the shape is computed at run time; the file still records the static result
        shape = ctx.tensor(op.outputs[0]).declared
    _reshape(ctx, op, resolve_shape(shape, x.type.size))


@converter("SQUEEZE")
def squeeze(ctx: TFLiteContext, op: OpInfo):
    shape = ctx.input(op, 0).shape
    dims = [int(d) for d in op.options.SqueezeDimsAsNumpy()] if op.options is not None and \
        op.options.SqueezeDimsLength() else [i for i, d in enumerate(shape) if d == 1]
    dims = [_axis(d, len(shape)) for d in dims]
    if any(shape[d] != 1 for d in dims):
        raise KpucError(f"cannot squeeze dims {dims} of {shape}")
    _reshape(ctx, op, [d for i, d in enumerate(shape) if i not in dims])


@converter("EXPAND_DIMS")
def expand_dims(ctx: TFLiteContext, op: OpInfo):
    shape = list(ctx.input(op, 0).shape)
    axis = _axis(int(ctx.array(op, 1).reshape(-1)[0]), len(shape) + 1)
    _reshape(ctx, op, shape[:axis] + [1] + shape[axis:])


@converter("TRANSPOSE")
def transpose(ctx: TFLiteContext, op: OpInfo):
    perm = tuple(int(p) for p in ctx.array(op, 1).reshape(-1))
    ctx.set_output(op, 0, ctx.add("transpose", [ctx.input(op, 0)], name=ctx.name(op), perm=perm))


@converter("CONCATENATION")
def concatenation(ctx: TFLiteContext, op: OpInfo):
    xs = [ctx.input(op, k) for k in range(len(op.inputs))]
    axis = _axis(option(op, "Axis"), xs[0].type.rank)
    y = ctx.emit(op, "concat", xs, axis=axis)
    ctx.set_output(op, 0, y)


@converter("PACK")
def pack(ctx: TFLiteContext, op: OpInfo):
    xs, name = [ctx.input(op, k) for k in range(len(op.inputs))], ctx.name(op)
    axis = _axis(option(op, "Axis"), xs[0].type.rank + 1)
    parts = [ctx.add("reshape", [x], name=f"{name}/expand{k}", shape=x.shape[:axis] + (1,) + x.shape[axis:])
             for k, x in enumerate(xs)]
    ctx.set_output(op, 0, ctx.add("concat", parts, name=name, axis=axis))


@converter("UNPACK")
def unpack(ctx: TFLiteContext, op: OpInfo):
    x, name = ctx.input(op, 0), ctx.name(op)
    axis = _axis(option(op, "Axis"), x.type.rank)
    parts = ctx.graph.add("split", [x], name=f"{name}/split", axis=axis, sizes=(1,) * x.shape[axis]).outputs
    for k, part in enumerate(parts):
        shape = part.shape[:axis] + part.shape[axis + 1:]
        ctx.set_output(op, k, ctx.add("reshape", [part], name=ctx.name(op, k), shape=shape))


def _split(ctx: TFLiteContext, op: OpInfo, k: int, axis: int, sizes) -> None:
    x = ctx.input(op, k)
    axis = _axis(axis, x.type.rank)
    sizes = list(resolve_shape(sizes, x.shape[axis]))
    node = ctx.graph.add("split", [x], name=ctx.name(op), axis=axis, sizes=tuple(sizes))
    for i, v in enumerate(node.outputs):
        ctx.set_output(op, i, v)


@converter("SPLIT")
def split(ctx: TFLiteContext, op: OpInfo):
    axis, x = int(ctx.array(op, 0).reshape(-1)[0]), ctx.input(op, 1)
    n = option(op, "NumSplits", len(op.outputs))
    dim = x.shape[_axis(axis, x.type.rank)]
    if n < 1 or dim % n:
        raise KpucError(f"cannot split {dim} into {n} equal parts")
    _split(ctx, op, 1, axis, [dim // n] * n)


@converter("SPLIT_V")
def split_v(ctx: TFLiteContext, op: OpInfo):
    _split(ctx, op, 0, int(ctx.array(op, 2).reshape(-1)[0]), ctx.array(op, 1).reshape(-1))


def _slice(ctx: TFLiteContext, op: OpInfo, index: list) -> None:
    """Apply a numpy-style index (slices, ints, None, one Ellipsis) as strided_slice (+ reshape)."""
    x, name = ctx.input(op, 0), ctx.name(op)
    if index.count(Ellipsis) > 1:
        raise KpucError("only one ellipsis is allowed")
    if Ellipsis not in index:
        index = index + [Ellipsis]
    real = sum(1 for i in index if i is not None and i is not Ellipsis)
    if real > x.type.rank:
        raise KpucError(f"{real} indices for a tensor of rank {x.type.rank}")
    at = index.index(Ellipsis)
    index = index[:at] + [slice(None)] * (x.type.rank - real) + index[at + 1:]
    begin, end, strides, shape = [], [], [], []
    dims = iter(x.shape)
    for i in index:
        if i is None:
            shape.append(1)
            continue
        dim = next(dims)
        if isinstance(i, slice):
            b, e, s = i.indices(dim)
            n = len(range(b, e, s))
            shape.append(n)
        else:
            if not -dim <= i < dim:
                raise KpucError(f"index {i} out of range for a dimension of {dim}")
            b, e, s, n = i % dim, i % dim + 1, 1, 1
        if n == 0:
            raise KpucError(f"the slice of {x.shape} is empty")
        begin.append(b)
        end.append(e)
        strides.append(s)
    sliced_shape = tuple(len(range(b, e, s)) for b, e, s in zip(begin, end, strides))
    needs_reshape = sliced_shape != tuple(shape)
    y = ctx.add("strided_slice", [x], name=f"{name}/slice" if needs_reshape else name,
                begin=tuple(begin), end=tuple(end), strides=tuple(strides))
    if needs_reshape:
        y = ctx.add("reshape", [y], name=name, shape=tuple(shape))
    ctx.set_output(op, 0, y)


@converter("SLICE")
def slice_(ctx: TFLiteContext, op: OpInfo):
    begin, size = ctx.array(op, 1).reshape(-1), ctx.array(op, 2).reshape(-1)
    _slice(ctx, op, [slice(int(b), None if s == -1 else int(b + s)) for b, s in zip(begin, size)])


@converter("STRIDED_SLICE")
def strided_slice(ctx: TFLiteContext, op: OpInfo):
    begin, end, strides = (ctx.array(op, k).reshape(-1) for k in (1, 2, 3))
    bm, em, ellipsis, new_axis, shrink = (option(op, f) for f in
                                          ("BeginMask", "EndMask", "EllipsisMask", "NewAxisMask", "ShrinkAxisMask"))
    offset = bool(option(op, "Offset", False))  # end is relative to begin
    index = []
    for i, (b, e, s) in enumerate(zip(begin.tolist(), end.tolist(), strides.tolist())):
        bit = 1 << i
        if ellipsis & bit:
            index.append(Ellipsis)
        elif new_axis & bit:
            index.append(None)
        elif shrink & bit:
            index.append(0 if bm & bit else b)
        else:
            if s == 0:
                raise KpucError("strided_slice stride 0")
            index.append(slice(None if bm & bit else b, None if em & bit else (b + e if offset else e), s))
    _slice(ctx, op, index)


@converter("GATHER")
def gather(ctx: TFLiteContext, op: OpInfo):
    x, indices = ctx.input(op, 0), ctx.input(op, 1)
    if option(op, "BatchDims") != 0:
        raise KpucError("GATHER with batch_dims != 0")
    y = ctx.add("gather", [x, indices], name=ctx.name(op), axis=_axis(option(op, "Axis"), x.type.rank))
    ctx.set_output(op, 0, y)


@converter("GATHER_ND")
def gather_nd(ctx: TFLiteContext, op: OpInfo):
    x, indices = ctx.input(op, 0), ctx.input(op, 1)
    y = ctx.add("gather_nd", [x, indices], name=ctx.name(op))
    ctx.set_output(op, 0, y)


@converter("SHAPE")
def shape(ctx: TFLiteContext, op: OpInfo):
    t = ctx.tensor(op.outputs[0])
    ctx.set_output(op, 0, ctx.const(np.array(ctx.input(op, 0).shape, dtype=ir_dtype(t)).reshape(t.shape),
                                    name=t.name))


@converter("DENSIFY")
def densify(ctx: TFLiteContext, op: OpInfo):
    """The reader already made the sparse constant dense (compiler/importers/tflite/sparsity.py)."""
    x = ctx.input(op, 0)
    if not x.is_constant:
        raise KpucError(f"DENSIFY of '{x.name}', which is not a constant")
    ctx.alias(op, 0, x)


@converter("CAST")
def cast(ctx: TFLiteContext, op: OpInfo):
    dtype = ir_dtype(ctx.tensor(op.outputs[0]))
    ctx.set_output(op, 0, ctx.add("cast", [ctx.input(op, 0)], name=ctx.name(op), dtype=dtype))
