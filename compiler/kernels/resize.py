"""Resize: ONNX Resize (opset 11-19) with explicit output sizes, nearest or linear, separable per axis.

Each axis whose size changes is resized on its own (as onnx.reference does): output index y maps to
a source coordinate by coordinate_transformation_mode, computed in float64 with scale = out / in.
Nearest picks one neighbour by nearest_mode; linear blends floor(c) and floor(c)+1 with the source
coordinate clamped to [0, in - 1]. Axes whose size does not change are left alone.
"""
from __future__ import annotations

import numpy as np

from compiler.kernels import kernel


def _source_coord(mode: str, out_len: int, in_len: int) -> np.ndarray:
    """Source coordinate of every output index along one axis."""
    y = np.arange(out_len, dtype=np.float64)
    scale = out_len / in_len
    if mode == "half_pixel":
        return (y + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (y + 0.5) / scale - 0.5 if out_len > 1 else np.full(out_len, -0.5)
    if mode == "asymmetric":
        return y / scale
    if mode == "align_corners":
        return y * (in_len - 1) / (out_len - 1) if out_len > 1 else np.zeros(out_len)
    if mode == "tf_half_pixel_for_nn":
        return (y + 0.5) / scale
    raise ValueError(f"unknown coordinate_transformation_mode {mode}")


def _nearest_index(c: np.ndarray, nearest_mode: str) -> np.ndarray:
    """Index chosen for source coordinate c: ties (.5) broken as nearest_mode says."""
    lo = np.floor(c)
    frac = c - lo
    if nearest_mode == "round_prefer_floor":
        up = frac > 0.5
    elif nearest_mode == "round_prefer_ceil":
        up = frac >= 0.5
    elif nearest_mode == "floor":
        up = np.zeros_like(c, dtype=bool)
    elif nearest_mode == "ceil":
        up = frac > 0
    else:
        raise ValueError(f"unknown nearest_mode {nearest_mode}")
    return (lo + up).astype(np.int64)


def _resize_axis(x: np.ndarray, axis: int, out_len: int, mode: str, ctm: str, nearest_mode: str) -> np.ndarray:
    in_len = x.shape[axis]
    c = _source_coord(ctm, out_len, in_len)
    if mode == "nearest":
        return np.take(x, np.clip(_nearest_index(c, nearest_mode), 0, in_len - 1), axis=axis)
    if mode != "linear":
        raise ValueError(f"unknown resize mode {mode}")
    c = np.clip(c, 0, in_len - 1)
    lo = np.floor(c).astype(np.int64)
    hi = np.minimum(lo + 1, in_len - 1)
    shape = [1] * x.ndim
    shape[axis] = out_len
    t = (c - lo).reshape(shape)
    return np.take(x, lo, axis=axis) * (1 - t) + np.take(x, hi, axis=axis) * t


@kernel("resize")
def resize(x, *, sizes, mode, coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_floor"):
    """ONNX Resize to `sizes` (full rank) with mode nearest|linear; integer results are rounded."""
    out = x.astype(np.float64) if mode == "linear" else x
    for axis, n in enumerate(sizes):
        if n != out.shape[axis]:
            out = _resize_axis(out, axis, n, mode, coordinate_transformation_mode, nearest_mode)
    if mode == "linear" and np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)  # round half to even and saturate, as onnx.reference
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(x.dtype)
