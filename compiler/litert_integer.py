"""LiteRT's integer arithmetic for quantized (int8/uint8) kernels, for `GridExecutor` (model_quant.py).

Which rounding each kernel uses was measured against ai-edge-litert's reference kernels (BUILTIN_REF,
LiteRT 2.x) on small generated models (tests/importers/test_int8_parity.py): FULLY_CONNECTED uses the
single rounding of TFLITE_SINGLE_ROUNDING; CONV_2D, DEPTHWISE_CONV_2D, ADD, MUL, MEAN and LEAKY_RELU
still use gemmlowp's double rounding. The facts of each kernel (shift 20 in ADD, 1/N folded into MEAN's
multiplier, HARD_SWISH's 16-bit fixed point, int8 RESIZE_BILINEAR's 10-bit coordinates) follow
tensorflow/lite/kernels/internal/reference.

Values are (code - zero point) as int64 arrays; every function returns the output's (code - zero point),
not yet saturated to the output's code range.
"""
from __future__ import annotations

import numpy as np


def quantize_multiplier(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TFLite QuantizeMultiplier: m = q * 2^(shift - 31), q a Q31 integer in [2^30, 2^31) (0 for m = 0);
    a shift above 30 saturates (the single-rounding multiply cannot shift further)."""
    frac, shift = np.frexp(np.asarray(m, np.float64))
    q = np.floor(frac * 2.0 ** 31 + 0.5).astype(np.int64)       # std::round of a positive value
    carry = q == 1 << 31
    q, shift = np.where(carry, q // 2, q), np.where(carry, shift + 1, shift)
    tiny, huge = shift < -31, shift > 30
    q = np.where(tiny, 0, np.where(huge, (1 << 31) - 1, q))
    return q, np.where(tiny, 0, np.where(huge, 30, shift)).astype(np.int64)


def multiply_by_quantized_multiplier(x: np.ndarray, q: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """TFLite MultiplyByQuantizedMultiplier with TFLITE_SINGLE_ROUNDING (LiteRT's default build):
    (x * q + 2^(30 - shift)) >> (31 - shift), one rounding, ties toward +inf."""
    total = 31 - np.asarray(shift, np.int64)
    return (np.asarray(x, np.int64) * q + (np.int64(1) << (total - 1))) >> total


def multiply_by_quantized_multiplier_double(x: np.ndarray, q: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The gemmlowp double rounding: a rounding doubling high multiply by q, then a rounding (half away
    from zero) right shift; differs from the single rounding on 0.1-0.5% of values."""
    x = np.asarray(x, np.int64) << np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    ab = x * q
    nudged = ab + np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    high = np.where(nudged >= 0, nudged >> 31, -((-nudged) >> 31))          # C division: toward zero
    return rounding_divide_by_pot(high, right)


def rounding_divide_by_pot(x: np.ndarray, exponent) -> np.ndarray:
    """gemmlowp's RoundingDivideByPOT: x / 2^exponent, ties away from zero."""
    x = np.asarray(x, np.int64)
    mask = (np.int64(1) << exponent) - 1
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + ((x & mask) > threshold)


def _requantize(x, m) -> np.ndarray:
    return multiply_by_quantized_multiplier_double(x, *quantize_multiplier(m))


def add(a: np.ndarray, b: np.ndarray, s_a: float, s_b: float, s_out: float) -> np.ndarray:
    """ADD: each input shifted left 20 bits and rescaled to twice the larger input scale, summed, then
    rescaled to the output, each a fixed-point multiply."""
    s_a, s_b, s_out = np.float64(s_a), np.float64(s_b), np.float64(s_out)
    twice_max, left = 2 * max(s_a, s_b), 20
    total = (_requantize(np.asarray(a, np.int64) << left, s_a / twice_max)
             + _requantize(np.asarray(b, np.int64) << left, s_b / twice_max))
    return _requantize(total, twice_max / ((1 << left) * s_out))


def mul(a: np.ndarray, b: np.ndarray, s_a: float, s_b: float, s_out: float) -> np.ndarray:
    """MUL: the product times s_a * s_b / s_out (double), one fixed-point multiply."""
    return _requantize(np.asarray(a, np.int64) * b, np.float64(s_a) * np.float64(s_b) / np.float64(s_out))


def leaky_relu(x: np.ndarray, s_in: float, s_out: float, alpha: float) -> np.ndarray:
    """LEAKY_RELU: x times s_in / s_out, or s_in * alpha / s_out below zero (float32 arithmetic)."""
    s_in, s_out = np.float32(s_in), np.float32(s_out)
    x = np.asarray(x, np.int64)
    return np.where(x >= 0, _requantize(x, np.float64(s_in / s_out)),
                    _requantize(x, np.float64(s_in * np.float32(alpha) / s_out)))


def mean(total: np.ndarray, count: int, s_in: float, s_out: float) -> np.ndarray:
    """MEAN of `count` values whose sum is `total`: s_in / s_out with 1/count folded into the multiplier
    ((q << k) // count, k = floor(log2 count) capped at 32 and at 31 + shift), one fixed-point multiply;
    a mean of 23/49 step becomes 1, where the rounded mean gives 0."""
    q, shift = quantize_multiplier(np.float64(s_in) / np.float64(s_out))
    k = min(count.bit_length() - 1, 32, 31 + int(shift))
    return multiply_by_quantized_multiplier_double(total, (np.int64(q) << k) // count, shift - k)


def average_pool(total_codes: np.ndarray, count: np.ndarray) -> np.ndarray:
    """AVERAGE_POOL_2D: the sum of the window's *raw codes* (zero point included) over its valid count,
    rounded half away from zero by integer division; returns raw codes."""
    total, count = np.asarray(total_codes, np.int64), np.asarray(count, np.int64)
    return np.sign(total) * ((np.abs(total) + count // 2) // count)


def hard_swish(x: np.ndarray, s_in: float, s_out: float) -> np.ndarray:
    """HARD_SWISH in 16-bit fixed point: x on a 2^7 finer grid, rescaled to the output grid (rounding
    high multiply) and, separately, from [-3, 3] to [0, 1] (the 'relu-ish' factor, shifted left or
    right by the input scale), the two multiplied with a truncating high multiply, then shifted."""
    hires = np.float32(1 / 128) * np.float32(s_in)                       # the kernel's float32 scales
    out_mul, out_exp = _int16_multiplier(hires / np.float32(s_out))
    relu_mul, relu_exp = _int16_multiplier(hires / np.float32(3 / 32768))
    value = np.asarray(x, np.int64) * 128
    on_output = _rounding_high_mul16(value, out_mul)
    relu = value
    if relu_exp > 0:
        relu = np.clip(relu << (relu_exp - 1), -32768, 32767)
    relu = _rounding_high_mul16(relu, relu_mul)
    if relu_exp > 0:
        relu = np.clip(relu << 1, -32768, 32767)
    elif relu_exp < 0:
        relu = rounding_divide_by_pot(relu, -relu_exp)
    relu = (relu + (1 << 15)) >> 1                                          # [-1, 1] -> [0, 1]
    product = relu * on_output
    product = np.sign(product) * (np.abs(product) >> 15)                   # truncating high multiply
    return rounding_divide_by_pot(product, -out_exp)


def _int16_multiplier(m: np.float32) -> tuple[int, int]:
    """QuantizeMultiplier of a float32 multiplier, its Q31 part rounded to Q15 (saturating at 32767)."""
    q, shift = quantize_multiplier(np.float64(m))
    q = int(q)
    return (32767 if q >= 2**31 - 1 - (1 << 15) else (q + (1 << 15)) >> 16), int(shift)


def _rounding_high_mul16(a: np.ndarray, b: int) -> np.ndarray:
    """gemmlowp's SaturatingRoundingDoublingHighMul on int16: (a * b + 2^14) / 2^15, toward zero."""
    ab = np.asarray(a, np.int64) * b
    nudged = ab + np.where(ab >= 0, 1 << 14, 1 - (1 << 14))
    high = np.sign(nudged) * (np.abs(nudged) >> 15)
    return np.where((a == -32768) & (b == -32768), 32767, high)


def resize_bilinear(codes: np.ndarray, sizes, coordinate_mode: str) -> np.ndarray:
    """int8 RESIZE_BILINEAR on raw codes (input and output share one grid): every source coordinate in
    1/1024 steps (the scale itself rounded to 1/1024), the four neighbours weighted by products of 10-bit
    fractions (2^20 in all, summed exactly), then divided by 2^20 rounding half away from zero (not the
    single rounding's ties toward +inf: measured). The exact float weights round differently on ~5% of
    the outputs (movenet's FPN upsampling)."""
    out = np.asarray(codes, np.int64)
    for axis, n in enumerate(sizes):
        if n != out.shape[axis]:
            out = _resize_axis_10(out, axis, int(n), coordinate_mode)
    return np.sign(out) * ((np.abs(out) + (1 << 19)) >> 20)


def _resize_axis_10(x: np.ndarray, axis: int, out_len: int, coordinate_mode: str) -> np.ndarray:
    """One axis of the interpolation, weights in 1/1024 (the result is 2^10 times larger)."""
    in_len = x.shape[axis]
    if coordinate_mode == "align_corners" and out_len > 1:
        scale = (((in_len - 1) << 10) + (out_len - 1) // 2) // (out_len - 1)
    else:
        scale = ((in_len << 10) + out_len // 2) // out_len
    scaled = np.arange(out_len, dtype=np.int64) * scale
    if coordinate_mode == "half_pixel":
        scaled += scale // 2 - (1 << 9)
    elif coordinate_mode not in ("asymmetric", "align_corners"):
        raise ValueError(f"RESIZE_BILINEAR has no coordinate mode {coordinate_mode}")
    lower = np.minimum(np.maximum(np.fix(scaled / 1024).astype(np.int64), 0), in_len - 1)   # C division
    upper = np.minimum(np.fix((scaled + 1023) / 1024).astype(np.int64), in_len - 1)
    shape = [1] * x.ndim
    shape[axis] = out_len
    frac = (scaled - (lower << 10)).reshape(shape)   # negative left of the first centre: still sums to 1024
    return np.take(x, lower, axis=axis) * ((1 << 10) - frac) + np.take(x, upper, axis=axis) * frac


def resize_bilinear_uint8(codes: np.ndarray, sizes, coordinate_mode: str) -> np.ndarray:
    """uint8 RESIZE_BILINEAR on raw codes: LiteRT's float template in float32, the four weighted
    neighbours summed in the kernel's order, then rounded half away from zero (measured: truncating was
    1 step off on 40% of the outputs, the float64 interpolation on up to 15%). The last two axes are the
    image's (NCHW)."""
    x = np.asarray(codes, np.float32)
    (ly, uy, fy), (lx, ux, fx) = (_float_coords(x.shape[a], int(sizes[a]), coordinate_mode, x.ndim, a)
                                  for a in (x.ndim - 2, x.ndim - 1))
    one = np.float32(1)
    rows = [x[..., ly, :], x[..., uy, :]]
    total = rows[0][..., lx] * (one - fy) * (one - fx)
    total = total + rows[1][..., lx] * fy * (one - fx)
    total = total + rows[0][..., ux] * (one - fy) * fx
    total = total + rows[1][..., ux] * fy * fx
    whole = np.floor(total)
    return (whole + (total - whole >= 0.5)).astype(np.int64)       # TfLiteRound: half away from zero


def _float_coords(in_len: int, out_len: int, coordinate_mode: str, ndim: int, axis: int):
    """float32 source coordinates along one axis: lower and upper neighbour, and the fraction
    (coordinate - lower), shaped to broadcast along `axis`."""
    num, den = (in_len - 1, out_len - 1) if coordinate_mode == "align_corners" and out_len > 1 else (in_len, out_len)
    scale = np.float32(num) / np.float32(den)
    y = np.arange(out_len, dtype=np.float32)
    scaled = (y + np.float32(0.5)) * scale - np.float32(0.5) if coordinate_mode == "half_pixel" else y * scale
    lower = np.maximum(np.floor(scaled), 0).astype(np.int64)
    upper = np.minimum(np.ceil(scaled).astype(np.int64), in_len - 1)
    shape = [1] * ndim
    shape[axis] = out_len
    return lower, upper, (scaled - lower.astype(np.float32)).reshape(shape)
