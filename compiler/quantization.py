"""Quantization arithmetic shared by the quantizer, the integer kernels and the kmodel interpreters.

Everything here is a pure function whose name says how it rounds, written once (STYLE.md §5). The
formulas are nncase v0.2.0-beta4's (kmodel-v4.md §11, src/evaluator/quantizer.cpp), computed in float32
where nncase computes in `float`, so the same calibration ranges give the same integers.

Two conventions for a uint8 quantization meet here:
- the IR's `QuantParam(scale, zero_point)`: real = (q - zero_point) * scale, `scale` = the real step;
- nncase's `quant_param_t`, here `QuantParamU8(zero_point, scale)`: q = round(real * scale + zero_point),
  `scale` = levels per real unit, a float32 (what a kmodel stores).
`QuantParamU8.to_ir()` stores 1/scale in float64 and `QuantParamU8.from_ir()` recovers the float32 exactly
(1/(1/s) in float64 is within 2^-52 of s, and s is a float32).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from compiler.errors import KpucError
from compiler.ir import QuantParam

F32 = np.float32
FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)   # the smallest *positive* normal float, nncase's start for max


# ------------------------------------------------------------------ rounding
def round_half_even(x):
    """Round to nearest, ties to even (numpy rint; onnx QuantizeLinear; RISC-V fcvt rne)."""
    return np.rint(x)


def round_half_away_from_zero(x):
    """C `roundf` / `std::round`: ties away from zero, exact in the input's own precision."""
    x = np.asarray(x)
    t = np.trunc(x)
    return np.where(np.abs(x - t) >= 0.5, t + np.sign(x), t)   # x - trunc(x) is exact


def roundf_int(x: float) -> int:
    """`(int)roundf(x)` of one float32 value."""
    return int(round_half_away_from_zero(F32(x)))


def c_div(a, b):
    """C integer division (truncates toward zero); a zero divisor gives 0 instead of trapping."""
    a, b = np.broadcast_arrays(np.asarray(a, np.int64), np.asarray(b, np.int64))
    safe = np.where(b == 0, 1, b)
    q = np.abs(a) // np.abs(safe)
    return np.where(b == 0, 0, np.where((a < 0) ^ (safe < 0), -q, q))


def mul_and_carry_shift(v, mul: int, shift: int) -> np.ndarray:
    """nncase's runtime `mul_and_carry_shift` (beta4): t = v·mul in int64, t = (t + 2^(s-1)) >> s
    (round half up), result = the low 32 bits as int32. `shift` is the i32 field read as uint8."""
    t = np.asarray(v, np.int64) * np.int64(mul)
    s = int(shift) & 0xFF
    if s >= 63:
        t = np.zeros_like(t)           # |v·mul| < 2^62 <= 2^(s-1): the rounded quotient is 0
    elif s > 0:
        t = (t + (np.int64(1) << np.int64(s - 1))) >> np.int64(s)
    return t.astype(np.int32)          # two's complement wrap of the low 32 bits, as the C cast does


# ------------------------------------------------------------------ ranges
Range = tuple[float, float]


def get_range(data) -> Range:
    """nncase `quantizer::get_range`: float32 min/max over the finite values, starting from
    (FLT_MAX, FLT_MIN) -- so an all-negative tensor gets max = FLT_MIN (fixup_range later makes it 0)."""
    a = np.asarray(data, np.float32).reshape(-1)
    if a.size:
        lo, hi = float(a.min()), float(a.max())
        if np.isfinite(lo) and np.isfinite(hi):     # no NaN or inf anywhere: no need to filter (a copy)
            return min(FLT_MAX, lo), max(FLT_MIN, hi)
    a = a[np.isfinite(a)]
    lo = min(FLT_MAX, float(a.min())) if a.size else FLT_MAX
    hi = max(FLT_MIN, float(a.max())) if a.size else FLT_MIN
    return lo, hi


def union_range(a: Range, b: Range) -> Range:
    """The smallest range holding both (nncase `union_range`, used across calibration samples)."""
    return min(a[0], b[0]), max(a[1], b[1])


def fixup_range(r: Range, limit: float | None = 1e3) -> Range:
    """nncase `fixup_range` in float32: clamp to [-limit, limit] (1000; None: no clamp), widen to at least
    0.01 (0.1 if empty), then make the range contain 0 (kmodel-v4.md §11)."""
    lo, hi = F32(r[0]), F32(r[1])
    if limit is not None and lo < -limit:
        lo = F32(-limit)
    if limit is not None and hi > limit:
        hi = F32(limit)
    width = F32(hi - lo)
    if width == 0:
        width = F32(0.1)
    elif width < F32(0.01):
        width = F32(0.01)
    hi = F32(lo + width)
    if hi < 0:
        hi = F32(0)
    if lo > 0:
        lo = F32(0)
    return float(lo), float(hi)


class QuantParamU8(NamedTuple):
    """nncase's quant_param_t: q = clamp(round(x·scale + zero_point), 0, 255); scale in levels per unit."""
    zero_point: int
    scale: float   # a float32 value

    def to_ir(self) -> QuantParam:
        """The IR's QuantParam (real step = 1 / scale, float64)."""
        return QuantParam(scale=1.0 / float(self.scale), zero_point=int(self.zero_point))

    @classmethod
    def from_ir(cls, q: QuantParam) -> QuantParamU8:
        """Back from the IR's QuantParam; exact for a QuantParam made by `to_ir`."""
        return cls(int(q.zero_point), float(F32(1.0 / q.scale)))


def get_quant_param(r: Range, bits: int = 8, limit: float | None = 1e3) -> QuantParamU8:
    """nncase `get_quant_param`: fixup_range (clamping to ±`limit`), scale = (2^bits - 1) / (max - min) in
    float32, zero_point = round(-min · scale) (half away from zero), so real 0 is exactly representable."""
    lo, hi = fixup_range(r, limit)
    scale = F32(F32((1 << bits) - 1) / F32(F32(hi) - F32(lo)))
    zero_point = roundf_int(F32(-F32(lo) * scale))
    return QuantParamU8(zero_point, float(scale))


def ir_quant_param(r: Range) -> QuantParam:
    """The IR QuantParam of a calibrated range (get_quant_param, then to_ir)."""
    return get_quant_param(r).to_ir()


# ------------------------------------------------------------------ fixed-point multipliers
class FixedMul(NamedTuple):
    """value ≈ mul · 2^-shift; `mul` is the float32 nncase keeps, `rounded` the stored integer."""
    mul: float
    shift: int

    @property
    def rounded(self) -> int:
        """nncase `rounded_mul()`: (int32)roundf(mul)."""
        return roundf_int(self.mul)


def fixed_mul(value: float, max_bits: int, max_shift: int, signed: bool = True) -> FixedMul:
    """nncase `quantizer::get_fixed_mul` in float32: with value = m·2^e (frexp, 0.5 <= |m| < 1),
    shift = min(max_shift, bits - e) and mul = m·2^(shift + e), bits = max_bits - 1 if signed.
    (nncase's two branches, |value| > 1 and |value| <= 1, reduce to this one formula.)

    Raises KpucError where nncase would only assert: a value too large for the field (shift < 0).
    One deviation: if rounding would carry |mul| up to 2^bits (which no longer fits the signed field),
    the shift is lowered by one; nncase would write the overflowing integer."""
    v = F32(value)
    if v == 0:
        return FixedMul(0.0, 0)
    if not np.isfinite(v):
        raise KpucError(f"fixed_mul of {value}")
    bits = max_bits - 1 if signed else max_bits
    m, e = np.frexp(v)
    shift = min(int(max_shift), bits - int(e))
    if shift < 0:
        raise KpucError(f"fixed_mul: {value} does not fit {max_bits} bits")
    mul = F32(np.ldexp(np.float64(m), shift + int(e)))
    if abs(roundf_int(mul)) >= 1 << bits and shift > 0:
        shift -= 1
        mul = F32(np.ldexp(np.float64(m), shift + int(e)))
    return FixedMul(float(mul), shift)


def fixed_mul_array(values, max_bits: int, max_shift: int, signed: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
    """fixed_mul of every value at once: (int64 rounded muls, int64 shifts), element for element the same
    float32 steps; None where fixed_mul would raise for any of them (the caller's loop names which)."""
    v = np.asarray(values, F32)
    if not np.isfinite(v).all():
        return None
    bits = max_bits - 1 if signed else max_bits
    m, e = np.frexp(v)
    m, e = m.astype(np.float64), e.astype(np.int64)
    zero = v == 0
    shift = np.where(zero, 0, np.minimum(int(max_shift), bits - e))
    if (shift < 0).any():
        return None
    rounded = round_half_away_from_zero(np.ldexp(m, shift + e).astype(F32))
    shift = shift - ((np.abs(rounded) >= 1 << bits) & (shift > 0))
    rounded = round_half_away_from_zero(np.ldexp(m, shift + e).astype(F32))
    return rounded.astype(np.int64), shift


# ------------------------------------------------------------------ quantize / dequantize (kmodel runtime)
def quantize_u8(x, q: QuantParamU8) -> np.ndarray:
    """nncase's quantize (host build, kmodel-v4.md §8.7), also its weight quantizer:
    (int32)roundf(x·scale + zero_point) in float32, clamped to 0..255. NaN gives 0 (x86 INT_MIN)."""
    with np.errstate(all="ignore"):
        t = round_half_away_from_zero(np.asarray(x, F32) * F32(q.scale) + F32(q.zero_point))
        t = np.where(np.isfinite(t), t, -2.0 ** 31)
    return np.clip(t, 0, 255).astype(np.uint8)


def dequantize_u8(q_arr, q: QuantParamU8) -> np.ndarray:
    """nncase's dequantize (host build, §8.4): (float)(q - zero_point) · (1/scale), 1/scale in float32."""
    d = (np.asarray(q_arr).astype(np.int64) - q.zero_point).astype(F32)
    return d * (F32(1) / F32(q.scale))


# ------------------------------------------------------------------ CPU quantized ops (nncase neutral transforms)
def quantize_weights_u8(w) -> tuple[QuantParamU8, np.ndarray]:
    """One zero point and scale for a whole weight tensor (nncase quantized_conv2d: no equalisation)."""
    wq = get_quant_param(fixup_range(get_range(w)))
    return wq, quantize_u8(w, wq)


def weights_span(w) -> float:
    """max - min of the fixed-up weight range: what --weights-quantize-threshold compares against."""
    lo, hi = fixup_range(get_range(w))
    return float(F32(F32(hi) - F32(lo)))


def quantized_conv2d_params(bias, iq: QuantParamU8, wq: QuantParamU8, yq: QuantParamU8,
                            max_shift: int = 255) -> tuple[np.ndarray, dict]:
    """(int32 bias, attrs) of a quantized conv2d / matmul (nncase quantized_conv2d.cpp, kmodel-v4.md §8.16):
    bias_q = roundf(bias · sa), sa = s_in · s_w; (output_mul, output_shift) = fixed_mul(s_out / sa, 32,
    max_shift) (255 for conv2d, 32 for matmul); offsets are minus the operands' zero points."""
    sa = F32(F32(iq.scale) * F32(wq.scale))
    bias_q = round_half_away_from_zero(np.asarray(bias, F32) * sa).astype(np.int32)
    out = fixed_mul(F32(F32(yq.scale) / sa), 32, max_shift, True)
    return bias_q, {"output_mul": out.rounded, "output_shift": out.shift, "output_offset": yq.zero_point}


def quantized_binary_params(op: str, qa: QuantParamU8, qb: QuantParamU8, qy: QuantParamU8,
                            unit_exponent: int = 0) -> dict:
    """Attrs of a quantized binary (nncase quantized_binary.cpp, §8.18): add/sub/min/max rescale a by b's
    scale and b by a's (16-bit muls), mul keeps both, div rescales a only; the result is scaled by
    fixed_mul(s_out / sa, 32, 32). `unit_exponent` k (add/sub/min/max): both operand muls 2^k larger and
    the output's 2^k smaller, a finer common unit for the operands' rounding (0: nncase's own)."""
    one = FixedMul(1.0, 0)
    if op in ("add", "sub", "min", "max"):
        unit = F32(2.0 ** unit_exponent)
        sa = F32(F32(F32(qa.scale) * F32(qb.scale)) * unit)
        fa = fixed_mul(F32(F32(qb.scale) * unit), 16, 16, True)
        fb = fixed_mul(F32(F32(qa.scale) * unit), 16, 16, True)
    elif op == "mul":
        sa, fa, fb = F32(F32(qa.scale) * F32(qb.scale)), one, one
    elif op == "div":
        sa, fa, fb = F32(qa.scale), fixed_mul(qb.scale, 16, 16, True), one
    else:
        raise KpucError(f"no quantized binary {op}")
    fy = fixed_mul(F32(F32(qy.scale) / sa), 32, 32, True)
    return {"op": op, "input_a_offset": -qa.zero_point, "input_a_mul": fa.rounded, "input_a_shift": fa.shift,
            "input_b_offset": -qb.zero_point, "input_b_mul": fb.rounded, "input_b_shift": fb.shift,
            "output_mul": fy.rounded, "output_shift": fy.shift, "output_offset": qy.zero_point}


def sample_codes(q: QuantParamU8, count: int) -> np.ndarray:
    """nncase's sample points over a quantized range: x_min + i·(x_max - x_min)/(count - 1) in float32,
    x_min/x_max the reals of codes 0 and 255."""
    x_min = F32(F32(0 - q.zero_point) / F32(q.scale))
    x_max = F32(F32(255 - q.zero_point) / F32(q.scale))
    step = F32(F32(x_max - x_min) / F32(count - 1))
    return F32(x_min) + np.arange(count, dtype=F32) * step


def lookup_table(fn, iq: QuantParamU8, yq: QuantParamU8) -> np.ndarray:
    """The 256-byte table of an elementwise float function between two quantizations (nncase
    fused_unary_to_lookup1d: fn at 256 float32 samples of the input range, quantized like a quantize op)."""
    with np.errstate(all="ignore"):
        ys = np.asarray(fn(sample_codes(iq, 256)), F32)
    return quantize_u8(ys, yq)


__all__ = ["F32", "Range", "QuantParamU8", "FixedMul", "round_half_even", "round_half_away_from_zero",
           "roundf_int", "c_div", "mul_and_carry_shift", "get_range", "union_range", "fixup_range",
           "get_quant_param", "ir_quant_param", "fixed_mul", "fixed_mul_array", "quantize_u8", "dequantize_u8", "quantize_weights_u8",
           "weights_span", "quantized_conv2d_params", "quantized_binary_params", "sample_codes", "lookup_table"]
