"""Ops that only move data: Reshape, Flatten, Squeeze, Unsqueeze, Transpose, Expand, Tile,
SpaceToDepth and DepthToSpace. Every target shape must be a constant (or fold to one)."""
from __future__ import annotations

import math

import numpy as np

from compiler.importers.limits import check_elements
from compiler.importers.onnx.context import NotConvertible, converter, normalize_axis


@converter("Reshape", since=5)
def reshape(ctx, x, shape, *, allowzero=0):
    """0 copies the input's dimension (unless allowzero) and one -1 takes what is left."""
    target = [int(d) for d in ctx.data(shape, "shape").reshape(-1)]
    if any(d < -1 for d in target) or (not allowzero and len(target) > x.type.rank and 0 in target[x.type.rank:]):
        raise NotConvertible(f"shape {target} is not a valid Reshape target for {x.shape}")
    if not allowzero:
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    if target.count(-1) > 1:
        raise NotConvertible(f"shape {target} has more than one -1")
    if -1 in target:
        known = math.prod(d for d in target if d != -1)
        if known == 0 or x.type.size % known:
            raise NotConvertible(f"cannot reshape {x.shape} to {target}")
        target[target.index(-1)] = x.type.size // known
    if math.prod(target) != x.type.size:
        raise NotConvertible(f"cannot reshape {x.shape} to {target}")
    return ctx.reshape(x, target)


@converter("Flatten")
def flatten(ctx, x, *, axis=1):
    rank = x.type.rank
    if not -rank <= axis <= rank:
        raise NotConvertible(f"axis {axis} is out of range for rank {rank}")
    axis = axis + rank if axis < 0 else axis
    return ctx.reshape(x, (math.prod(x.shape[:axis]), math.prod(x.shape[axis:])))


def _squeeze(ctx, x, axes):
    if axes is None:
        keep = [d for d in x.shape if d != 1]
    else:
        drop = [normalize_axis(a, x.type.rank) for a in axes]
        if any(x.shape[a] != 1 for a in drop):
            raise NotConvertible(f"cannot squeeze axes {tuple(drop)} of shape {x.shape}")
        keep = [d for i, d in enumerate(x.shape) if i not in drop]
    return ctx.reshape(x, keep)


@converter("Squeeze")
def squeeze_v1(ctx, x, *, axes=None):
    return _squeeze(ctx, x, axes)


@converter("Squeeze", since=13)
def squeeze_v13(ctx, x, axes=None):
    return _squeeze(ctx, x, ctx.data(axes, "axes"))


def _unsqueeze(ctx, x, axes):
    rank = x.type.rank + len(axes)
    ones = sorted(normalize_axis(a, rank) for a in axes)
    if len(dict.fromkeys(ones)) != len(ones):
        raise NotConvertible(f"axes {tuple(axes)} repeat an axis")
    dims = iter(x.shape)
    return ctx.reshape(x, [1 if i in ones else next(dims) for i in range(rank)])


@converter("Unsqueeze")
def unsqueeze_v1(ctx, x, *, axes):
    return _unsqueeze(ctx, x, axes)


@converter("Unsqueeze", since=13)
def unsqueeze_v13(ctx, x, axes):
    return _unsqueeze(ctx, x, [int(a) for a in ctx.data(axes, "axes").reshape(-1)])


@converter("Transpose")
def transpose(ctx, x, *, perm=None):
    perm = tuple(int(p) for p in perm) if perm is not None else tuple(reversed(range(x.type.rank)))
    return x if perm == tuple(range(x.type.rank)) else ctx.add("transpose", [x], perm=perm)


@converter("Expand", since=8)
def expand(ctx, x, shape):
    """Broadcast to `shape` as x * ones(shape) (numpy broadcasting both ways, as ONNX Expand)."""
    target = tuple(int(d) for d in ctx.data(shape, "shape").reshape(-1))
    try:
        out = np.broadcast_shapes(x.shape, target)
    except ValueError as e:
        raise NotConvertible(f"cannot expand {x.shape} to {target}") from e
    if out == x.shape:
        return x
    check_elements(out, "Expand output")
    return ctx.binary("mul", x, ctx.const(np.ones(out, dtype=x.dtype)))


MAX_TILE = 4096  # copies per axis; a K210 model never needs more, a hostile one asks for millions


@converter("Tile", since=6)
def tile(ctx, x, repeats):
    """Concatenate copies along each repeated axis."""
    reps = [int(r) for r in ctx.data(repeats, "repeats").reshape(-1)]
    if len(reps) != x.type.rank or any(r < 1 for r in reps):
        raise NotConvertible(f"repeats {reps} for shape {x.shape}")
    check_elements([d * r for d, r in zip(x.shape, reps)], "Tile output")  # before r copies are listed
    if max(reps, default=1) > MAX_TILE:
        raise NotConvertible(f"repeats {reps}: kpuc tiles by concatenating copies, at most {MAX_TILE} per axis")
    for axis, r in enumerate(reps):
        if r > 1:
            x = ctx.add("concat", [x] * r, axis=axis)
    return x


def _blocks(ctx, x, perm, out_shape, tmp_shape):
    """reshape -> transpose -> reshape: the general form of the space/depth moves."""
    return ctx.reshape(ctx.add("transpose", [ctx.reshape(x, tmp_shape)], perm=perm), out_shape)


@converter("SpaceToDepth")
def space_to_depth(ctx, x, *, blocksize, mode="DCR"):
    """DCR (the only mode before opset 28) is the IR op; CRD is spelled out (ONNX reference)."""
    if x.type.rank != 4:
        raise NotConvertible(f"SpaceToDepth of a rank-{x.type.rank} tensor")
    if mode == "DCR":
        return ctx.add("space_to_depth", [x], block=int(blocksize))
    if mode != "CRD":
        raise NotConvertible(f"mode={mode!r}")
    b, c, h, w = x.shape
    bs = int(blocksize)
    return _blocks(ctx, x, (0, 1, 3, 5, 2, 4), (b, c * bs * bs, h // bs, w // bs), (b, c, h // bs, bs, w // bs, bs))


@converter("DepthToSpace")
def depth_to_space(ctx, x, *, blocksize, mode="DCR"):
    if x.type.rank != 4:
        raise NotConvertible(f"DepthToSpace of a rank-{x.type.rank} tensor")
    if mode not in ("DCR", "CRD"):
        raise NotConvertible(f"mode={mode!r}")
    return ctx.add("depth_to_space", [x], block=int(blocksize), mode=mode)
