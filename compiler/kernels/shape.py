"""Data-movement kernels: reshape, transpose, concat, split, slices, pad, gather, space/depth/batch."""
from __future__ import annotations

import numpy as np

from compiler.kernels import kernel


@kernel("reshape")
def reshape(x, *, shape):
    """x with a new static shape (row-major order kept)."""
    return np.reshape(x, shape)


@kernel("transpose")
def transpose(x, *, perm):
    """Output axis i is input axis perm[i]."""
    return np.transpose(x, perm)


@kernel("concat")
def concat(*xs, axis):
    """Join the inputs along `axis`."""
    return np.concatenate(xs, axis=axis)


@kernel("split")
def split(x, *, axis, sizes):
    """Consecutive pieces of the given `sizes` along `axis`, as a tuple."""
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


@kernel("strided_slice")
def strided_slice(x, *, begin, end, strides):
    """x[begin:end:stride] per axis, where an end of -1 means past index 0 (for a negative stride).

    Indices are normalized (0 <= begin < dim, -1 <= end <= dim), so the elements taken are exactly
    range(begin, end, stride), and a positive stride with end -1 takes nothing.
    """
    index = tuple(slice(b, None if e < 0 and s < 0 else max(e, 0), s) for b, e, s in zip(begin, end, strides))
    return x[index]


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "symmetric": "symmetric"}


@kernel("pad")
def pad(x, *, pads, mode="constant", value=0.0):
    """ONNX Pad with per-axis (before, after) amounts; negative amounts crop (applied first).

    reflect mirrors without repeating the edge (numpy 'reflect'), symmetric repeats it, edge
    replicates it.
    """
    crop = tuple(slice(max(-p0, 0), d - max(-p1, 0)) for d, (p0, p1) in zip(x.shape, pads))
    x = x[crop]
    grow = [(max(p0, 0), max(p1, 0)) for p0, p1 in pads]
    if mode == "constant":
        return np.pad(x, grow, mode="constant", constant_values=value)
    return np.pad(x, grow, mode=_PAD_MODES[mode])


@kernel("gather")
def gather(x, indices, *, axis):
    """numpy.take along `axis`; negative indices count from the end."""
    return np.take(x, np.asarray(indices, np.int64), axis=axis)


@kernel("space_to_depth")
def space_to_depth(x, *, block):
    """ONNX SpaceToDepth: output channel (by*block + bx)*C + c takes pixel (y*block+by, x*block+bx)."""
    n, c, h, w = x.shape
    t = x.reshape(n, c, h // block, block, w // block, block).transpose(0, 3, 5, 1, 2, 4)
    return t.reshape(n, c * block * block, h // block, w // block)


@kernel("depth_to_space")
def depth_to_space(x, *, block, mode="DCR"):
    """ONNX DepthToSpace: DCR reads channels as (by, bx, c), CRD as (c, by, bx)."""
    n, c, h, w = x.shape
    oc = c // (block * block)
    if mode == "DCR":
        t = x.reshape(n, block, block, oc, h, w).transpose(0, 3, 4, 1, 5, 2)
    elif mode == "CRD":
        t = x.reshape(n, oc, block, block, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        raise ValueError(f"unknown depth_to_space mode {mode}")
    return t.reshape(n, oc, h * block, w * block)


@kernel("space_to_batch")
def space_to_batch(x, *, block, pads):
    """TF SpaceToBatchND on NCHW: zero-pad, then batch (by*bw + bx)*N + n takes pixels (y*bh+by, x*bw+bx)."""
    (bh, bw), ((pt, pb), (pl, pr)) = block, pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    n, c, h, w = xp.shape
    t = xp.reshape(n, c, h // bh, bh, w // bw, bw).transpose(3, 5, 0, 1, 2, 4)
    return t.reshape(bh * bw * n, c, h // bh, w // bw)


@kernel("batch_to_space")
def batch_to_space(x, *, block, crops):
    """TF BatchToSpaceND on NCHW, the inverse of space_to_batch, then crop."""
    (bh, bw), ((ct, cb), (cl, cr)) = block, crops
    bn, c, h, w = x.shape
    n = bn // (bh * bw)
    t = x.reshape(bh, bw, n, c, h, w).transpose(2, 3, 4, 0, 5, 1).reshape(n, c, h * bh, w * bw)
    return t[:, :, ct:h * bh - cb, cl:w * bw - cr]


@kernel("gather_nd")
def gather_nd(x, indices, *, batch_dims=0):
    """ONNX GatherND: after `batch_dims` shared leading dims, the last axis of `indices` addresses x's next
    dims (negative indices count from the end)."""
    x, idx = np.asarray(x), np.asarray(indices, np.int64)
    b, k = batch_dims, idx.shape[-1]
    batch = int(np.prod(x.shape[:b], dtype=np.int64))
    xb = x.reshape((batch,) + x.shape[b:])
    ib = idx.reshape(batch, -1, k)
    ib = np.where(ib < 0, ib + np.array(x.shape[b:b + k]), ib)
    out = xb[(np.arange(batch)[:, None],) + tuple(ib[..., j] for j in range(k))]
    return out.reshape(idx.shape[:-1] + x.shape[b + k:])


@kernel("arg_reduce")
def arg_reduce(x, *, op, axis, keepdims=True, select_last_index=False):
    """Index of the largest (op max) or smallest (min) value along `axis`, the first one of ties unless
    select_last_index; int32."""
    x = np.asarray(x)
    pick = np.argmax if op == "max" else np.argmin
    if select_last_index:
        i = x.shape[axis] - 1 - pick(np.flip(x, axis=axis), axis=axis, keepdims=keepdims)
    else:
        i = pick(x, axis=axis, keepdims=keepdims)
    return np.asarray(i, np.int32)
