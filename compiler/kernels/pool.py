"""Pooling and reduction kernels: reduce_window2d, reduce, softmax, lp_normalize."""
from __future__ import annotations

import numpy as np

from compiler.kernels import kernel
from compiler.kernels.conv import pad_spatial, tap
from compiler.ops import conv_out


def _window_count(size: int, k: int, s: int, d: int, pad, out: int, include_pad: bool) -> np.ndarray:
    """Per output position along one axis, how many of the k taps a mean divides by.

    Real elements only, or with count_include_pad every tap inside the explicitly padded extent:
    the rows ceil_mode adds past the bottom padding never count (ONNX, PyTorch avg_pool).
    """
    lo, hi = (0, size + pad[0] + pad[1]) if include_pad else (pad[0], pad[0] + size)
    pos = np.arange(out)[:, None] * s + np.arange(k)[None, :] * d
    return ((pos >= lo) & (pos < hi)).sum(axis=1)


@kernel("reduce_window2d")
def reduce_window2d(x, *, op, kernel, strides=(1, 1), padding=((0, 0), (0, 0)), dilations=(1, 1),
                    ceil_mode=False, count_include_pad=False):
    """ONNX MaxPool / AveragePool on NCHW with explicit padding, dilations and ceil_mode."""
    h, w = x.shape[-2:]
    out_hw = tuple(conv_out(size, k, s, d, p, ceil_mode)
                   for size, k, s, d, p in zip((h, w), kernel, strides, dilations, padding))
    # ceil_mode may need windows that run past the bottom/right padding: pad further (never counted).
    extra = [max(0, (o - 1) * s + d * (k - 1) + 1 - (size + p[0] + p[1]))
             for o, s, d, k, size, p in zip(out_hw, strides, dilations, kernel, (h, w), padding)]
    grown = tuple((p[0], p[1] + e) for p, e in zip(padding, extra))
    taps = [(i, j) for i in range(kernel[0]) for j in range(kernel[1])]
    if op == "max":
        # Padding is the dtype's lowest value, as onnxruntime and TFLite start their running max there
        # (a window that sees only padding yields it rather than -inf).
        fill = (np.finfo if np.issubdtype(x.dtype, np.floating) else np.iinfo)(x.dtype).min
        xp = pad_spatial(x, grown, fill)
        out = tap(xp, 0, 0, strides, dilations, out_hw).copy()
        for i, j in taps[1:]:
            np.maximum(out, tap(xp, i, j, strides, dilations, out_hw), out=out)
        return out
    if op != "mean":
        raise ValueError(f"unknown pool op {op}")
    xp = pad_spatial(x.astype(np.float64), grown)
    total = np.zeros(x.shape[:-2] + out_hw)
    for i, j in taps:
        total += tap(xp, i, j, strides, dilations, out_hw)
    count_h, count_w = (_window_count(size, k, s, d, p, o, count_include_pad)
                        for size, k, s, d, p, o in zip((h, w), kernel, strides, dilations, padding, out_hw))
    count = np.maximum(count_h[:, None] * count_w[None, :], 1)  # a window wholly in padding gives 0
    return (total / count).astype(x.dtype)


def _log_sum_exp(x, axis, keepdims):
    m = np.max(x, axis=axis, keepdims=True, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0)  # all -inf (or an inf) slices: let exp/log give the limit
    out = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


def _lowest(dtype):
    return -np.inf if np.issubdtype(dtype, np.floating) else np.iinfo(dtype).min


def _highest(dtype):
    return np.inf if np.issubdtype(dtype, np.floating) else np.iinfo(dtype).max


REDUCE = {
    # max/min of an empty set are -inf/+inf (ONNX), not a numpy error.
    "max": lambda x, axis, keepdims: np.max(x, axis=axis, keepdims=keepdims, initial=_lowest(x.dtype)),
    "min": lambda x, axis, keepdims: np.min(x, axis=axis, keepdims=keepdims, initial=_highest(x.dtype)),
    "mean": np.mean, "sum": np.sum, "prod": np.prod,
    "l1": lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims),
    "l2": lambda x, axis, keepdims: np.sqrt(np.sum(x * x, axis=axis, keepdims=keepdims)),
    "sum_square": lambda x, axis, keepdims: np.sum(x * x, axis=axis, keepdims=keepdims),
    "log_sum_exp": _log_sum_exp,
}


@kernel("reduce")
def reduce(x, *, op, axes, keepdims=True):
    """ONNX Reduce* over `axes`: mean max min sum prod l1 l2 sum_square log_sum_exp."""
    xf = x if op in ("max", "min") else x.astype(np.float64)
    with np.errstate(divide="ignore", over="ignore"):
        return np.asarray(REDUCE[op](xf, axis=tuple(axes), keepdims=keepdims)).astype(x.dtype)


@kernel("softmax")
def softmax(x, *, axis=-1, log=False):
    """Softmax (or log-softmax) along `axis`, with the max subtracted first."""
    z = x.astype(np.float64)
    z = z - np.max(z, axis=axis, keepdims=True)
    lse = np.log(np.sum(np.exp(z), axis=axis, keepdims=True))
    return (z - lse if log else np.exp(z - lse)).astype(x.dtype)


@kernel("lp_normalize")
def lp_normalize(x, *, axis, p=2, epsilon=0.0):
    """x / max(norm_p(x), epsilon) along `axis`; 0 where the norm is 0."""
    xf = x.astype(np.float64)
    norm = np.sum(np.abs(xf) ** p, axis=axis, keepdims=True) ** (1.0 / p)
    if epsilon > 0:
        norm = np.maximum(norm, epsilon)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norm == 0, 0.0, xf / norm).astype(x.dtype)
