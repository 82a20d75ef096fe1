"""Cutting and joining: Slice, Split, Concat, Pad and Gather."""
from __future__ import annotations

import numpy as np

from compiler.importers.onnx.context import NotConvertible, converter, normalize_axis


@converter("Concat", since=4)
def concat(ctx, *xs, axis):
    if len(xs) == 1:
        return xs[0]
    return ctx.add("concat", list(xs), axis=normalize_axis(axis, xs[0].type.rank))


def _split(ctx, x, axis, split, num_outputs=None):
    axis = normalize_axis(axis, x.type.rank)
    dim = x.shape[axis]
    if split is not None and len(split):
        sizes = tuple(int(s) for s in np.asarray(split).reshape(-1))
    elif num_outputs:  # opset 18: equal chunks of ceil(dim / n), the last one smaller
        chunk = -(-dim // num_outputs)
        sizes = tuple(min(chunk, dim - i * chunk) for i in range(num_outputs))
    else:
        n = ctx.num_outputs
        if dim % n:
            raise NotConvertible(f"cannot split {dim} into {n} equal parts")
        sizes = (dim // n,) * n
    if sum(sizes) != dim or any(s < 0 for s in sizes):
        raise NotConvertible(f"split sizes {sizes} do not add up to {dim}")
    out = ctx.add("split", [x], axis=axis, sizes=sizes)
    return out if isinstance(out, tuple) else (out,)


@converter("Split", since=2)
def split_v2(ctx, x, *, axis=0, split=None):
    return _split(ctx, x, axis, split)


@converter("Split", since=13)
def split_v13(ctx, x, split=None, *, axis=0):
    return _split(ctx, x, axis, ctx.data(split, "split"))


@converter("Split", since=18)
def split_v18(ctx, x, split=None, *, axis=0, num_outputs=None):
    return _split(ctx, x, axis, ctx.data(split, "split"), num_outputs)


def _slice(ctx, x, starts, ends, axes, steps):
    """numpy slicing per axis (which is ONNX's clamping), as full-rank normalized strided_slice attrs."""
    rank = x.type.rank
    axes = range(len(starts)) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise NotConvertible("starts, ends, axes and steps differ in length")
    begin, end, strides = [0] * rank, list(x.shape), [1] * rank
    for a, st, en, sp in zip(axes, starts, ends, steps):
        a, sp = normalize_axis(a, rank), int(sp)
        if sp == 0:
            raise NotConvertible(f"step 0 on axis {a}")
        kept = range(x.shape[a])[slice(int(st), int(en), sp)]
        if not kept:
            begin[a], end[a], strides[a] = 0, 0, 1
        else:  # tight bounds: end is one step short of the last kept index, -1 when that is before 0
            begin[a], end[a], strides[a] = kept[0], kept[-1] + (1 if sp > 0 else -1), sp
    if begin == [0] * rank and end == list(x.shape) and strides == [1] * rank:
        return x
    return ctx.add("strided_slice", [x], begin=tuple(begin), end=tuple(end), strides=tuple(strides))


@converter("Slice")
def slice_v1(ctx, x, *, starts, ends, axes=None):
    return _slice(ctx, x, starts, ends, axes, None)


@converter("Slice", since=10)
def slice_v10(ctx, x, starts, ends, axes=None, steps=None):
    data = [ctx.data(v, what) for v, what in ((starts, "starts"), (ends, "ends"), (axes, "axes"), (steps, "steps"))]
    return _slice(ctx, x, *[d.reshape(-1).tolist() if d is not None else None for d in data])


def _pad(ctx, x, pads, mode, value, axes=None):
    rank = x.type.rank
    axes = list(range(rank)) if axes is None else [normalize_axis(a, rank) for a in axes]
    pads = [int(p) for p in pads]
    if len(pads) != 2 * len(axes):
        raise NotConvertible(f"{len(pads)} pads for {len(axes)} axes")
    if mode not in ("constant", "reflect", "edge"):
        raise NotConvertible(f"mode={mode!r} (constant, reflect and edge are supported)")
    pairs = [(0, 0)] * rank
    for i, a in enumerate(axes):
        pairs[a] = (pads[i], pads[i + len(axes)])
    if all(p == (0, 0) for p in pairs):
        return x
    return ctx.add("pad", [x], pads=tuple(pairs), mode=mode, value=float(value))


@converter("Pad", since=2)
def pad_v2(ctx, x, *, pads, mode="constant", value=0.0):
    return _pad(ctx, x, pads, mode, value)


@converter("Pad", since=11)
def pad_v11(ctx, x, pads, constant_value=None, axes=None, *, mode="constant"):
    """`axes` is an input from opset 18 on."""
    value = ctx.data(constant_value, "constant_value")
    axes = ctx.data(axes, "axes")
    return _pad(ctx, x, ctx.data(pads, "pads").reshape(-1), mode,
                0.0 if value is None or not value.size else value.reshape(-1)[0],
                None if axes is None else axes.reshape(-1).tolist())


@converter("Gather")
def gather(ctx, x, indices, *, axis=0):
    """numpy.take; constant indices are made non-negative int32 at import."""
    axis = normalize_axis(axis, x.type.rank)
    if indices.is_constant and not x.is_constant:
        idx = indices.data.astype(np.int64)
        dim = x.shape[axis]
        if np.any((idx < -dim) | (idx >= dim)):
            raise NotConvertible(f"indices out of range for an axis of {dim}")
        indices = ctx.const(np.where(idx < 0, idx + dim, idx).astype(np.int32))
    return ctx.add("gather", [x, indices], axis=axis)


@converter("GatherND")
def gather_nd(ctx, x, indices, *, batch_dims=0):
    return ctx.add("gather_nd", [x, indices], batch_dims=int(batch_dims))
