"""compiler/quantization.py: nncase's numeric helpers (kmodel-v4.md §11) on hand-worked cases, their
properties, and the CPU quantized kernels (targets/k210/kernels.py) against float arithmetic."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numpy.testing import assert_array_equal

from compiler.errors import KpucError
from compiler.kernels.conv import conv2d, matmul
from compiler.kernels.elementwise import unary
from compiler.quantization import (
    F32,
    FixedMul,
    QuantParamU8,
    c_div,
    dequantize_u8,
    fixed_mul,
    fixup_range,
    get_quant_param,
    get_range,
    lookup_table,
    mul_and_carry_shift,
    quantize_u8,
    quantize_weights_u8,
    quantized_binary_params,
    quantized_conv2d_params,
    round_half_away_from_zero,
    roundf_int,
)
from targets.k210.kernels import (
    dequantize,
    quantize,
    quantized_binary,
    quantized_conv2d,
    quantized_matmul,
    requantize,
    table_lookup1d,
)

FLT_MIN = float(np.finfo(np.float32).tiny)


# ------------------------------------------------------------------ rounding
def test_round_half_away_from_zero_is_c_roundf():
    x = np.array([0.5, -0.5, 1.5, 2.5, -2.5, 0.49999997, -0.49999997, 8388609.0, 3.0], np.float32)
    assert_array_equal(round_half_away_from_zero(x), [1, -1, 2, 3, -3, 0, 0, 8388609, 3])
    assert round_half_away_from_zero(x).dtype == np.float32
    assert roundf_int(127.5) == 128 and roundf_int(-127.5) == -128


def test_mul_and_carry_shift_rounds_half_up_and_wraps():
    assert_array_equal(mul_and_carry_shift(np.array([5, -5, 6, -6, 7]), 1, 1), [3, -2, 3, -3, 4])
    assert mul_and_carry_shift(np.array([123]), 7, 0)[0] == 861          # shift 0: the plain product
    assert mul_and_carry_shift(np.array([1 << 30]), 4, 0)[0] == 0        # low 32 bits of 2^32
    assert mul_and_carry_shift(np.array([-(1 << 30)]), 3, 256 + 2)[0] == -805306368   # shift read as uint8
    assert mul_and_carry_shift(np.array([2 ** 31 - 1]), 2 ** 31 - 1, 63)[0] == 0


def test_c_div_truncates_toward_zero():
    assert_array_equal(c_div([7, -7, 7, -7, 5], [2, 2, -2, -2, 0]), [3, -3, -3, 3, 0])


# ------------------------------------------------------------------ ranges and quant params (§11)
def test_get_range_starts_max_at_flt_min():
    assert get_range(np.array([-3.0, -2.0], np.float32)) == (-3.0, FLT_MIN)
    assert get_range(np.array([np.nan, 1.0, np.inf, -2.0], np.float32)) == (-2.0, 1.0)


@pytest.mark.parametrize("r, want", [
    ((5.0, 5.0), (0.0, float(F32(5.1)))),                # empty range: width 0.1, then min forced to 0
    ((-3.0, -2.0), (-3.0, 0.0)),                          # max forced to 0
    ((-3.0, FLT_MIN), (-3.0, float(F32(-3.0) + F32(3.0)))),
    ((0.0, 0.001), (0.0, float(F32(0.01)))),              # widened to 0.01
    ((-5000.0, 7000.0), (-1000.0, 1000.0)),               # clamped to ±1000
    ((-1.0, 1.0), (-1.0, 1.0)),
])
def test_fixup_range(r, want):
    assert fixup_range(r) == want


@pytest.mark.parametrize("r, zero_point, scale", [
    ((-1.0, 1.0), 128, 127.5),        # round(127.5) = 128: half away from zero
    ((0.0, 6.0), 0, 42.5),            # ReLU6
    ((-0.5, 0.5), 128, 255.0),        # --input-mean 0.5 --input-std 1: ulffd's pad_value 128
    ((-6.0, 0.0), 255, 42.5),
    ((2.0, 2.0), 0, float(F32(255) / F32(2.1))),
])
def test_get_quant_param(r, zero_point, scale):
    assert get_quant_param(r) == QuantParamU8(zero_point, scale)


@given(st.floats(1e-3, 1e5), st.integers(0, 255))
def test_ir_quant_param_round_trips_exactly(scale, zero_point):
    q = QuantParamU8(zero_point, float(F32(scale)))
    assert QuantParamU8.from_ir(q.to_ir()) == q


@settings(max_examples=60)
@given(st.floats(-100, 100), st.floats(0.01, 200), st.integers(0, 40))
def test_quantize_dequantize_error_is_at_most_half_a_step(lo, width, seed):
    lo, hi = float(F32(lo)), float(F32(lo + width))
    q = get_quant_param((lo, hi))
    lo_r, hi_r = fixup_range((lo, hi))
    x = np.random.default_rng(seed).uniform(lo_r, hi_r, 200).astype(np.float32)
    err = np.abs(dequantize_u8(quantize_u8(x, q), q).astype(np.float64) - x)
    step = 1 / q.scale
    # half a step, plus float32 rounding of x·scale + zp and of (q - zp)·(1/scale)
    assert err.max() <= step / 2 + 1e-6 * max(abs(lo_r), abs(hi_r)) + 1e-7
    assert dequantize_u8(quantize_u8(np.float32(0), q), q) == 0       # real 0 is exact


# ------------------------------------------------------------------ fixed_mul (§11)
@pytest.mark.parametrize("value, bits, max_shift, mul, shift", [
    (1 / 1024, 16, 20, 1024.0, 20),     # the identity activation segment (kpu.md §7.6)
    (3.0, 22, 15, 98304.0, 15),         # 0.75·2^2 -> shift min(15, 21-2)
    (100.0, 22, 15, 100.0 * 2 ** 14, 14),   # e = 7: shift 21 - 7 = 14 < 15
    (0.0, 22, 15, 0.0, 0),
    (0.75, 32, 32, 0.75 * 2 ** 31, 31),  # e = 0: shift = bits - 0 = 31
])
def test_fixed_mul_hand_cases(value, bits, max_shift, mul, shift):
    assert fixed_mul(value, bits, max_shift, True) == FixedMul(mul, shift)


def test_fixed_mul_leaky_alpha_rounds_to_102():
    m = fixed_mul(0.1 / 1024, 16, 20, True)      # kpu.md §7.7: alpha 0.1 -> y_mul 102, shift 20
    assert (m.rounded, m.shift) == (102, 20)


def test_fixed_mul_reproduces_a_real_quantized_binary_multiplier():
    # RFB-320's add (kmodel-v4.md §8.18): output mul 268988160 with shift 32 is a fixed point of
    # fixed_mul(., 32, 32); and 16-bit input muls of that size come with shift 10.
    m = fixed_mul(268988160 / 2 ** 32, 32, 32, True)
    assert (m.rounded, m.shift) == (268988160, 32)
    assert fixed_mul(24139 / 2 ** 10, 16, 16, True) == FixedMul(24139.0, 10)


def test_fixed_mul_rejects_values_too_large_for_the_field():
    with pytest.raises(KpucError):
        fixed_mul(2.0 ** 22, 22, 15, True)


@given(st.floats(1e-6, 1e4), st.sampled_from([(16, 20), (22, 15), (22, 255), (32, 32)]))
def test_fixed_mul_approximates_value(value, field):
    bits, max_shift = field
    value = float(F32(value))
    m = fixed_mul(value, bits, max_shift, True)
    assert 0 <= m.shift <= max_shift and abs(m.rounded) < 2 ** (bits - 1)
    assert abs(m.mul * 2.0 ** -m.shift - value) <= 1e-6 * value        # the float mul is value, rescaled
    assert abs(m.rounded * 2.0 ** -m.shift - value) <= 0.5 * 2.0 ** -m.shift * 1.0001


# ------------------------------------------------------------------ CPU quantized kernels
def _q(x, r=None):
    q = get_quant_param(r or get_range(x))
    return q, quantize_u8(x, q)


def _deq(y, q):
    return dequantize_u8(y, q).astype(np.float64)


def _ir(q):
    ir = q.to_ir()
    return {"scale": ir.scale, "zero_point": ir.zero_point}


def test_quantize_and_dequantize_kernels_use_the_ir_step_convention():
    q = get_quant_param((-1.0, 1.0))
    x = np.linspace(-1, 1, 101, dtype=np.float32)
    assert_array_equal(quantize(x, **_ir(q)), quantize_u8(x, q))
    codes = np.arange(256, dtype=np.uint8)
    assert_array_equal(dequantize(codes, **_ir(q)), dequantize_u8(codes, q))


def test_requantize_is_dequantize_then_quantize():
    a, b = get_quant_param((-1.0, 3.0)), get_quant_param((0.0, 2.0))
    codes = np.arange(256, dtype=np.uint8)
    want = quantize_u8(dequantize_u8(codes, a), b)
    got = requantize(codes, in_scale=a.to_ir().scale, in_zero_point=a.zero_point, **_ir(b))
    assert_array_equal(got, want)


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "min", "max"])
def test_quantized_binary_matches_float_within_a_few_steps(op):
    rng = np.random.default_rng(1)
    a = rng.uniform(-2, 3, (2, 3, 8, 8)).astype(np.float32)
    b = rng.uniform(0.5, 2, (1, 3, 1, 8)).astype(np.float32)
    want = {"add": a + b, "sub": a - b, "mul": a * b, "div": a / b, "min": np.minimum(a, b),
            "max": np.maximum(a, b)}[op]
    qa, a_q = _q(a)
    qb, b_q = _q(b)
    qy = get_quant_param(get_range(want))
    got = _deq(quantized_binary(a_q, b_q, **quantized_binary_params(op, qa, qb, qy)), qy)
    steps = np.abs(got - want) * qy.scale
    # operand rounding (half a step each, scaled by the op) + output rounding; div also loses
    # precision in its integer division (nncase's (a' + b'/2) / b' on small integers)
    limit = {"mul": 4, "div": 6}.get(op, 2)
    assert steps.max() <= limit, steps.max()


def test_quantized_conv2d_matches_float_within_a_few_steps():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 2, (1, 4, 9, 9)).astype(np.float32)
    w = (rng.standard_normal((6, 2, 3, 3)) * 0.3).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    attrs = {"strides": (2, 1), "padding": ((1, 1), (0, 1)), "dilations": (1, 1), "groups": 2}
    want = conv2d(x, w, b, **attrs).astype(np.float64)
    iq, x_q = _q(x)
    wq, w_q = quantize_weights_u8(w)
    yq = get_quant_param(get_range(want))
    bias_q, out = quantized_conv2d_params(b, iq, wq, yq)
    got = _deq(quantized_conv2d(x_q, w_q, bias_q, input_offset=-iq.zero_point, filter_offset=-wq.zero_point,
                                **attrs, **out), yq)
    assert (np.abs(got - want) * yq.scale).max() <= 3


def test_quantized_conv2d_skips_padding_taps():
    # with x = its zero point everywhere but the padding, the offset input is 0 and so is the sum
    x_q = np.full((1, 1, 3, 3), 7, np.uint8)
    w_q = np.full((1, 1, 3, 3), 200, np.uint8)
    out = quantized_conv2d(x_q, w_q, np.array([0], np.int32), padding=((1, 1), (1, 1)), input_offset=-7,
                           filter_offset=-100, output_mul=1, output_shift=0, output_offset=50)
    assert_array_equal(out, np.full((1, 1, 3, 3), 50, np.uint8))


def test_quantized_matmul_matches_float_within_a_few_steps():
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 4, (5, 32)).astype(np.float32)
    b = (rng.standard_normal((32, 7)) * 0.2).astype(np.float32)
    want = matmul(a, b).astype(np.float64)
    qa, a_q = _q(a)
    qb, b_q = _q(b)
    qy = get_quant_param(get_range(want))
    bias_q, out = quantized_conv2d_params(np.zeros(7, np.float32), qa, qb, qy, max_shift=32)
    got = _deq(quantized_matmul(a_q, b_q, bias_q, input_a_offset=-qa.zero_point, input_b_offset=-qb.zero_point,
                                **out), qy)
    assert (np.abs(got - want) * qy.scale).max() <= 3


def test_lookup_table_follows_the_function():
    iq, yq = get_quant_param((-6.0, 6.0)), get_quant_param((0.0, 1.0))
    table = lookup_table(lambda v: unary(v, op="sigmoid"), iq, yq)
    codes = np.arange(256, dtype=np.uint8)
    x = _deq(codes, iq)
    got = _deq(table_lookup1d(codes, table), yq)
    assert (np.abs(got - 1 / (1 + np.exp(-x))) * yq.scale).max() <= 1.0
    assert np.all(np.diff(table.astype(int)) >= 0)        # monotone function, monotone table



def test_quantized_add_takes_the_common_unit_closest_to_exact_rounding():
    """nncase rounds each operand of a quantized add to whole units of 1/(s_a·s_b); kpuc picks a finer unit
    when the runtime's own arithmetic (the quantized_binary kernel) then rounds more of the 65536 code pairs
    like the exact real sum (MobileNet v2's residual adds: 3-8% of values one code off LiteRT before)."""
    from compiler.quantization import QuantParamU8, quantized_binary_params
    from targets.k210.kernels import QUANTIZED_KERNELS
    from targets.k210.quantize import closest_binary_params
    qa, qb, qy = QuantParamU8(120, 3.4567), QuantParamU8(130, 5.1234), QuantParamU8(128, 2.2)
    ga, gb = (g.reshape(-1) for g in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
    real = (ga - 120) / np.float64(np.float32(3.4567)) + (gb - 130) / np.float64(np.float32(5.1234))
    exact = np.clip(np.floor(real * np.float64(np.float32(2.2)) + 128.5), 0, 255)
    kernel = QUANTIZED_KERNELS["quantized_binary"]

    def off(attrs):
        return int((kernel(ga.astype(np.uint8), gb.astype(np.uint8), **attrs) != exact).sum())
    nncase, chosen = quantized_binary_params("add", qa, qb, qy), closest_binary_params("add", qa, qb, qy)
    assert chosen["input_a_mul"] * 2.0 ** -chosen["input_a_shift"] > nncase["input_a_mul"] * 2.0 ** -nncase["input_a_shift"]
    assert off(chosen) * 10 < off(nncase), (off(chosen), off(nncase))
