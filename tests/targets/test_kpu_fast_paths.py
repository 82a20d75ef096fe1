"""The compile's fast forms of the KPU arithmetic give the very numbers of the plain ones: conv_acc on a batch
and on quantizer-made (centred) layers against kpuc's scalar reference written from the spec, the float32
steps of piecewise regression against numpy's own float32 arithmetic, and kpu_batch_norm's array form
against its per-channel loop."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from compiler.quantization import F32, fixed_mul, fixed_mul_array
from targets.k210.kpu import ActTable, BatchNorm, activate, conv_acc, kpu_conv2d, kpu_conv2d_reference
from targets.k210.quantize import _f32, _f32_div, _slope_gap
from targets.k210.weight_rounding import depthwise_gram


@st.composite
def quantizer_layers(draw):
    """A KPU layer as the quantizer makes it: shifts 0, pad_value = input zero point = -arg_w,
    arg_x = -weight zero point, arg_add = k²·izp·wzp."""
    depthwise = draw(st.booleans())
    k = draw(st.sampled_from([1, 3]))
    ic = draw(st.integers(1, 5))
    oc = ic if depthwise else draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.integers(0, 256, (ic, h, w), dtype=np.uint8)
    wts = rng.integers(0, 256, (oc, 1 if depthwise else ic, k, k)).astype(np.uint8)
    izp, wzp = draw(st.integers(0, 255)), draw(st.integers(0, 255))
    bn = BatchNorm(rng.integers(-(1 << 11), 1 << 11, oc), rng.integers(-(1 << 19), 1 << 19, oc),
                   rng.integers(0, 16, oc))
    act = ActTable(np.array([-(1 << 35)] + sorted(rng.integers(-(1 << 20), 1 << 20, 15).tolist())),
                   rng.integers(-(1 << 15), 1 << 15, 16), rng.integers(0, 25, 16), rng.integers(0, 256, 16))
    kw = dict(depthwise=depthwise, pad_value=izp, arg_x=-wzp, shr_x=0, arg_w=-izp, shr_w=0, arg_add=k * k * izp * wzp)
    return x, wts, bn, act, kw


@settings(max_examples=200, deadline=None)
@given(quantizer_layers())
def test_centred_conv_of_quantizer_layers_equals_the_scalar_reference(layer):
    x, w, bn, act, kw = layer
    np.testing.assert_array_equal(kpu_conv2d(x, w, bn, act, **kw), kpu_conv2d_reference(x, w, bn, act, **kw))


@settings(max_examples=100, deadline=None)
@given(quantizer_layers(), st.booleans())
def test_conv_acc_on_a_batch_is_conv_acc_of_each_sample(layer, centred):
    x, w, _, _, kw = layer
    kw = {k: v for k, v in kw.items() if k != "pool_type"}
    if not centred:
        kw["arg_add"] += 1          # the general path
    rng = np.random.default_rng(int(x.sum()))
    batch = np.stack([x] + [rng.integers(0, 256, x.shape, dtype=np.uint8) for _ in range(3)])
    want = np.stack([conv_acc(xi, w, **kw) for xi in batch])
    np.testing.assert_array_equal(conv_acc(batch, w, **kw), want)


def test_activate_with_many_segments_equals_the_scalar_reference():
    rng = np.random.default_rng(3)
    act = ActTable(np.array([-(1 << 35)] + list(range(-7000, 8000, 1000))), rng.integers(-(1 << 15), 1 << 15, 16),
                   np.full(16, 12), rng.integers(0, 256, 16))
    bn = BatchNorm(np.ones(2, np.int64), np.zeros(2, np.int64), np.zeros(2, np.int64))
    x = rng.integers(0, 256, (2, 5, 7), dtype=np.uint8)
    w = rng.integers(0, 256, (2, 1, 3, 3), dtype=np.uint8)
    kw = dict(depthwise=True, pad_value=0, arg_x=-128, shr_x=0, arg_w=0, shr_w=0, arg_add=0)
    acc = conv_acc(x, w, **kw)
    assert len(np.unique(np.searchsorted(act.x_start, acc))) > 8      # the values span many segments
    np.testing.assert_array_equal(kpu_conv2d(x, w, bn, act, **kw), kpu_conv2d_reference(x, w, bn, act, **kw))
    np.testing.assert_array_equal(activate(acc[None], act)[0], kpu_conv2d(x, w, bn, act, **kw))


FLOAT32_EDGES = [0.0, -0.0, 1.0, -1.0, 3.4028235e38, -3.4028235e38, 1.4e-45, 1.1754944e-38, np.inf, -np.inf, np.nan]


def float32_values(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = np.concatenate([rng.standard_normal(n) * 10.0 ** rng.integers(-40, 39, n), FLOAT32_EDGES])
    with np.errstate(all="ignore"):
        return v.astype(F32)


def same_bits(a: float, b) -> bool:
    return np.float32(a).tobytes() == np.float32(b).tobytes() or (math.isnan(a) and np.isnan(b))


def test_float32_steps_of_piecewise_regression_are_numpys_float32():
    a, b = float32_values(3000, 1), float32_values(3000, 2)[::-1]
    with np.errstate(all="ignore"):
        for op, f in [(np.add, lambda u, v: _f32(u + v)), (np.subtract, lambda u, v: _f32(u - v)),
                      (np.multiply, lambda u, v: _f32(u * v)), (np.divide, _f32_div)]:
            want = op(a, b)
            got = [f(float(u), float(v)) for u, v in zip(a, b)]
            assert all(same_bits(g, w) for g, w in zip(got, want)), op.__name__
        gaps = np.abs(a - b)
    for u, v, want in zip(a, b, gaps):
        got = _slope_gap(float(u), float(v))
        assert got == math.inf if np.isnan(want) else same_bits(got, want)


def test_fixed_mul_array_is_fixed_mul_of_each_value():
    v = float32_values(4000, 3)
    v = v[np.isfinite(v)]
    for max_bits, max_shift in [(22, 15), (16, 20), (22, 255)]:
        fits = [x for x in v if x == 0 or max_shift >= 0 and min(max_shift, max_bits - 1 - np.frexp(x)[1]) >= 0]
        got = fixed_mul_array(np.array(fits, F32), max_bits, max_shift)
        want = [fixed_mul(x, max_bits, max_shift) for x in fits]
        assert got is not None
        assert got[0].tolist() == [m.rounded for m in want]
        assert got[1].tolist() == [m.shift for m in want]
    assert fixed_mul_array(np.array([1.0, np.inf], F32), 22, 15) is None
    assert fixed_mul_array(np.array([1.0, 3e38], F32), 22, 15) is None


def _depthwise_gram_by_pixel(x: np.ndarray, k: int) -> np.ndarray:
    """Σ over samples and pixels of the outer product of each channel's k×k patch (zero padding), int64."""
    n, c, h, w = x.shape
    p = k // 2
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (p, p), (p, p)))
    cols = np.stack([xp[i, :, y:y + k, z:z + k] for i in range(n) for y in range(h) for z in range(w)])
    v = cols.reshape(len(cols), c, k * k)
    return np.einsum("mcd,mce->cde", v, v)


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (2, 3, 1, 4), (2, 3, 4, 1), (1, 2, 1, 1), (2, 5, 2, 2), (4, 7, 9, 3)])
@pytest.mark.parametrize("peak", [255, 4000])       # float32 correlation images, then float64 ones
def test_depthwise_gram_from_correlation_images_is_the_patch_product(shape, peak):
    x = np.random.default_rng(sum(shape) + peak).integers(-peak, peak + 1, shape).astype(np.int16)
    want = _depthwise_gram_by_pixel(x, 3)
    for chunk in (1, 1 << 30):
        got = depthwise_gram(x, 3, chunk_bytes=chunk)
        assert np.array_equal(got, want)


def _two_layers(batch: int):
    from compiler.ir import Graph, TensorType
    rng = np.random.default_rng(4)
    g = Graph()
    x = g.input("x", TensorType((batch, 4, 6, 6)))
    y = g.add("kpu_conv2d", [x, g.const(rng.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.3, name="w1"),
                             g.const(np.full(4, 0.1, np.float32), name="b1")], name="l1", activation=(),
              depthwise=False, pool="bypass").output
    g.outputs = [g.add("kpu_conv2d", [y, g.const(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), name="w2"),
                                      g.const(np.zeros(4, np.float32), name="b2")], name="l2", activation=(),
                       depthwise=True, pool="left_top_2_s2").output]
    return g


def test_bias_correction_of_samples_holding_a_batch_of_maps():
    """A sample may hold several maps (a dilated conv becomes a batch of 4): correcting 3 samples of 2 maps
    must be correcting the 6 maps one by one; the second layer sees the first one's per-map outputs."""
    from compiler.calibration import calibrate
    from targets.k210.bias_correction import correct_biases
    from targets.k210.quantize import quantize_k210
    maps = np.random.default_rng(5).uniform(0, 1, (6, 4, 6, 6)).astype(np.float32)
    shifts = []
    for batch in (2, 1):
        g = _two_layers(batch)
        samples = [maps[i:i + batch] for i in range(0, 6, batch)]
        q = quantize_k210(g, calibrate(g, samples, input_mean=0.0, input_std=1.0))
        shifts.append(correct_biases(g, q, samples, round_weights=True))
    assert shifts[0].keys() == shifts[1].keys() and len(shifts[0]) == 2
    for name in shifts[0]:
        np.testing.assert_array_equal(shifts[0][name], shifts[1][name])
