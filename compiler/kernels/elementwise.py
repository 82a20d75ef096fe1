"""Elementwise kernels: unary and binary math, activations, batch norm, quantize/dequantize, cast.

Transcendental functions are evaluated in float64 and cast back to the input dtype, so float32
results are correctly rounded up to one ulp and independent of the platform's float32 libm.
"""
from __future__ import annotations

import math

import numpy as np

from compiler.kernels import kernel


def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to about 1e-15 absolute, without scipy.

    |x| < 2.5: the all-positive series erf(x) = 2/sqrt(pi) exp(-x^2) sum_n (2x^2)^n x / (2n+1)!!,
    which has no cancellation; |x| >= 2.5: the continued fraction of erfc (Abramowitz-Stegun 7.1.14),
    evaluated backwards. erf(6) is 1 to double precision, so larger |x| is clamped.
    """
    x = _f64(x)
    ax = np.minimum(np.abs(x), 6.0)
    out = np.empty_like(ax)
    small = ax < 2.5
    s = ax[small]
    s2 = s * s
    term, total = s.copy(), s.copy()
    for n in range(45):
        term *= 2 * s2 / (2 * n + 3)
        total += term
    out[small] = 2 / math.sqrt(math.pi) * np.exp(-s2) * total
    big = ax[~small]
    frac = big.copy()
    for k in range(40, 0, -1):
        frac = big + (k / 2) / frac
    out[~small] = 1 - np.exp(-big * big) / (math.sqrt(math.pi) * frac)
    return np.copysign(out, x)


def _hard_swish(x):
    return x * np.clip(x + 3, 0, 6) / 6


def _rsqrt(x):
    return 1 / np.sqrt(_f64(x))


def _sigmoid(x):
    # exp(-log(1 + exp(-x))) never overflows, unlike 1 / (1 + exp(-x)) for very negative x.
    return np.exp(-np.logaddexp(0, -_f64(x)))


def _softplus(x):
    return np.logaddexp(0, _f64(x))  # log(1 + exp(x)) without overflow


UNARY = {
    "abs": np.abs, "ceil": np.ceil, "floor": np.floor, "neg": np.negative, "sign": np.sign,
    "round": np.rint,  # round half to even, as ONNX Round and TFLite ROUND
    "square": np.square,
    "cos": lambda x: np.cos(_f64(x)), "sin": lambda x: np.sin(_f64(x)), "exp": lambda x: np.exp(_f64(x)),
    "log": lambda x: np.log(_f64(x)), "sqrt": lambda x: np.sqrt(_f64(x)), "tanh": lambda x: np.tanh(_f64(x)),
    "reciprocal": lambda x: 1 / _f64(x), "rsqrt": _rsqrt, "sigmoid": _sigmoid, "softplus": _softplus,
    "erf": _erf, "hard_swish": lambda x: _hard_swish(_f64(x)),
}


@kernel("unary")
def unary(x, *, op):
    """One of ops.UNARY_OPS applied elementwise; the result keeps x's dtype."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.asarray(UNARY[op](x)).astype(x.dtype, copy=False)


def _div(a, b):
    if np.issubdtype(np.result_type(a, b), np.integer):
        # ONNX Div and TFLite DIV truncate integer quotients toward zero; a - fmod(a, b) is an exact
        # multiple of b, so the floor division below is exact.
        return (a - np.fmod(a, b)) // b
    return np.true_divide(a, b)


BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": _div,
    "min": np.minimum, "max": np.maximum, "pow": lambda a, b: np.power(_f64(a), _f64(b)),
    "squared_difference": lambda a, b: np.square(np.subtract(a, b)),
}


@kernel("binary")
def binary(a, b, *, op, fused_clamp=(-math.inf, math.inf)):
    """One of ops.BINARY_OPS with numpy broadcasting, then fused_clamp; the result has a's dtype."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = np.asarray(BINARY[op](a, b))
    if fused_clamp != (-math.inf, math.inf):
        out = np.clip(out, *fused_clamp)
    return out.astype(a.dtype, copy=False)


@kernel("clamp")
def clamp(x, *, min=-math.inf, max=math.inf):
    """min(max(x, min), max): Relu, Relu6 and Clip."""
    return np.minimum(np.maximum(x, min), max).astype(x.dtype, copy=False)


@kernel("leaky_relu")
def leaky_relu(x, *, alpha):
    """x where x >= 0, alpha * x elsewhere."""
    return np.where(x >= 0, x, x * alpha).astype(x.dtype, copy=False)


@kernel("prelu")
def prelu(x, slope):
    """x where x >= 0, slope * x elsewhere (slope broadcasts against x)."""
    return np.where(x >= 0, x, x * slope).astype(x.dtype, copy=False)


@kernel("hard_sigmoid")
def hard_sigmoid(x, *, alpha, beta):
    """max(0, min(1, alpha * x + beta))."""
    return np.clip(alpha * _f64(x) + beta, 0, 1).astype(x.dtype)


@kernel("shrink")
def shrink(x, *, bias, lambd):
    """ONNX Shrink: x - bias above lambd, x + bias below -lambd, 0 between."""
    v = _f64(x)
    return np.where(v > lambd, v - bias, np.where(v < -lambd, v + bias, 0.0)).astype(x.dtype)


def _per_channel(p: np.ndarray, rank: int, axis: int = 1) -> np.ndarray:
    """A 1-D per-channel parameter reshaped to broadcast along `axis` of a rank-`rank` tensor."""
    shape = [1] * rank
    shape[axis] = -1
    return np.reshape(p, shape)


@kernel("batch_norm")
def batch_norm(x, scale, bias, mean, var, *, epsilon):
    """(x - mean) / sqrt(var + epsilon) * scale + bias, per channel (axis 1)."""
    r = x.ndim
    inv = _per_channel(_f64(scale) / np.sqrt(_f64(var) + epsilon), r)
    return ((x - _per_channel(_f64(mean), r)) * inv + _per_channel(_f64(bias), r)).astype(x.dtype)


def _quant_param(v, rank: int, axis: int | None, dtype) -> np.ndarray:
    """A scalar scale/zero point, or a per-axis tuple reshaped to broadcast along `axis`."""
    a = np.asarray(v, dtype=dtype)
    if axis is None or a.ndim == 0:
        return a
    return _per_channel(a, rank, axis % rank)


@kernel("quantize")
def quantize(x, *, scale, zero_point, dtype="uint8", axis=None):
    """round_half_even(x / scale) + zero_point, saturated to `dtype` (ONNX QuantizeLinear).

    The division is done in float32 like onnxruntime, so ties round the same way.
    """
    s = _quant_param(scale, x.ndim, axis, np.float32)
    zp = _quant_param(zero_point, x.ndim, axis, np.float64)
    q = np.rint(np.asarray(x, np.float32) / s).astype(np.float64) + zp
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)


@kernel("dequantize")
def dequantize(x, *, scale, zero_point, axis=None):
    """(x - zero_point) * scale in float32, per axis when `axis` is set (ONNX DequantizeLinear)."""
    s = _quant_param(scale, x.ndim, axis, np.float32)
    zp = _quant_param(zero_point, x.ndim, axis, np.int64)
    return (x.astype(np.int64) - zp).astype(np.float32) * s


@kernel("cast")
def cast(x, *, dtype):
    """numpy astype: float to integer truncates toward zero."""
    return x.astype(dtype)
