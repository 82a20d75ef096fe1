"""compiler/calibration.py: ranges over a dataset (no_clip, l2 against a brute-force copy of nncase's
loop, mse against a brute-force loop), forced input ranges, broadcast through shape-only ops, the two stages of a
kpu_conv2d."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from compiler.calibration import BROADCAST_OPS, CALIBRATION_METHODS, Calibrator, Stats, calibrate, input_range, l2, mse
from compiler.ir import Graph, TensorType
from compiler.progress import progress
from compiler.quantization import F32, fixup_range
from targets.k210.ops import conv_key, kpu_conv2d, kpu_conv2d_stages, split_activation


def small_graph() -> Graph:
    """x -> clamp -> reshape -> pad -> strided_slice, and x -> concat(x, clamp)."""
    g = Graph()
    x = g.input("x", TensorType((1, 2, 4, 4)))
    c = g.add("clamp", [x], name="relu", min=0.0, max=math.inf).output
    r = g.add("reshape", [c], name="flat", shape=(1, 32)).output
    p = g.add("pad", [c], name="pad", pads=((0, 0), (0, 0), (1, 1), (1, 1)), mode="constant", value=0.0).output
    s = g.add("strided_slice", [p], name="slice", begin=(0, 0, 0, 0), end=(1, 2, 6, 6), strides=(1, 1, 2, 2)).output
    m = g.add("unary", [x], name="neg", op="neg").output
    cat = g.add("concat", [m, c], name="cat", axis=1).output
    g.outputs = [r, s, cat]
    return g


def samples(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.uniform(-3, 2, (1, 2, 4, 4)).astype(np.float32) * (k + 1) for k in range(n)]


def test_no_clip_is_the_union_of_per_sample_ranges():
    data = samples()
    ranges = calibrate(small_graph(), data)
    assert ranges["x"] == (min(float(d.min()) for d in data), max(float(d.max()) for d in data))
    assert ranges["relu"] == (0.0, max(float(d.max()) for d in data))
    assert ranges["neg"] == (-max(float(d.max()) for d in data), -min(float(d.min()) for d in data))


def test_ranges_broadcast_through_shape_ops_and_concat_takes_the_union():
    g = small_graph()
    ranges = calibrate(g, samples())
    assert ranges["flat"] == ranges["pad"] == ranges["slice"] == ranges["relu"]
    assert ranges["cat"] == (min(ranges["neg"][0], ranges["relu"][0]), max(ranges["neg"][1], ranges["relu"][1]))
    assert g.node("pad").meta["range"] == ranges["relu"]
    assert {"reshape", "pad", "strided_slice", "reduce_window2d", "resize", "transpose"} <= set(BROADCAST_OPS)


def test_explicit_mean_std_forces_the_input_range():
    g = small_graph()
    ranges = calibrate(g, samples(), input_mean=0.5, input_std=0.5)
    assert ranges["x"] == (-1.0, 1.0)
    assert input_range(0.5, 1.0) == (-0.5, 0.5)
    assert calibrate(small_graph(), samples(), input_std=0.25)["x"] == (0.0, 4.0)


def test_calibration_is_silent_without_a_terminal(capsys):
    calibrate(small_graph(), samples(2))
    assert capsys.readouterr().err == ""
    out = io.StringIO()
    assert list(progress([1, 2], stream=out)) == [1, 2] and out.getvalue() == ""


def test_unknown_method_is_refused():
    with pytest.raises(Exception, match="unknown calibration method"):
        calibrate(small_graph(), samples(1), method="kld")
    assert set(CALIBRATION_METHODS) == {"no_clip", "l2", "mse"}


# ------------------------------------------------------------------ kpu_conv2d stages
def kpu_graph(activation, pool="bypass", depthwise=False) -> Graph:
    rng = np.random.default_rng(5)
    g = Graph()
    x = g.input("x", TensorType((1, 3, 8, 8)))
    w = g.const((rng.standard_normal((3, 1 if depthwise else 3, 3, 3)) * 0.5).astype(np.float32), name="w")
    b = g.const(rng.standard_normal(3).astype(np.float32), name="b")
    g.outputs = [g.add("kpu_conv2d", [x, w, b], name="layer", depthwise=depthwise, pool=pool,
                       activation=activation).output]
    return g


def test_split_activation_takes_the_leading_clamps():
    assert split_activation((("clamp", 0.0, 6.0), ("clamp", -1.0, 4.0), ("unary", "sigmoid"), ("clamp", 0, 1))) \
        == ((0.0, 4.0), (("unary", "sigmoid"), ("clamp", 0, 1)))
    assert split_activation(()) == ((-math.inf, math.inf), ())


@pytest.mark.parametrize("activation, pool", [
    ((("clamp", 0.0, 6.0),), "max_2_s2"), ((("leaky_relu", 0.1),), "bypass"),
    ((("clamp", -1.0, math.inf), ("unary", "sigmoid")), "mean_2_s2"), ((), "left_top_2_s2")])
def test_kpu_conv2d_is_recorded_before_its_activation_and_before_its_pool(activation, pool):
    g = kpu_graph(activation, pool)
    data = [np.random.default_rng(k).uniform(-2, 2, (1, 3, 8, 8)).astype(np.float32) for k in range(3)]
    ranges = calibrate(g, data)
    w, b = (g.node(n).output.data for n in ("w", "b"))
    attrs = g.node("layer").attrs
    stages = [kpu_conv2d_stages(d, w, b, **attrs) for d in data]
    conv = (min(float(y.min()) for y, _, _ in stages), max(float(y.max()) for y, _, _ in stages))
    act = (min(float(z.min()) for _, z, _ in stages), max(float(z.max()) for _, z, _ in stages))
    assert ranges[conv_key("layer")] == conv and g.node("layer").meta["conv_range"] == conv
    assert ranges["layer"] == act and g.node("layer").meta["range"] == act
    if not activation:
        assert conv == act


def test_kpu_conv2d_stages_end_with_the_float_kernel():
    g = kpu_graph((("clamp", 0.0, 6.0), ("leaky_relu", 0.2)), "max_2_s1")
    x = np.random.default_rng(9).standard_normal((1, 3, 8, 8)).astype(np.float32)
    w, b = (g.node(n).output.data for n in ("w", "b"))
    y, z, out = kpu_conv2d_stages(x, w, b, **g.node("layer").attrs)
    np.testing.assert_array_equal(out, kpu_conv2d(x, w, b, **g.node("layer").attrs))
    assert y.min() >= 0 and y.max() <= 6


# ------------------------------------------------------------------ l2 (nncase histogram::finish)
def l2_brute_force(counts, lo, hi, levels):
    """nncase's loop, literally (float64)."""
    bins = len(counts)
    interval = float(F32(F32(F32(hi) - F32(lo)) / F32(bins)))
    zero = int(np.clip(F32((F32(0) - F32(lo)) / F32(interval)), 0, bins - 1))
    best, pair = math.inf, None
    for lower in range(zero + 1):
        upper = bins
        while upper >= lower + levels and upper >= zero:
            dmin, dmax = lower * interval + lo, upper * interval + lo
            q_int = (dmax - dmin) / (levels - 1)
            loss = 0.0
            for i, p in enumerate(counts):
                v = lo + interval * i
                idx = min(max(math.floor((v - dmin) / q_int + 0.5) if v >= dmin else -1, 0), levels - 1)
                loss += (v - (dmin + q_int * idx)) ** 2 * p
            if loss < best * (1 - 1e-12):
                best, pair = loss, (lower, upper)
            upper -= 1
    return pair


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.floats(-4.0, 0.0), st.floats(0.5, 4.0))
def test_l2_picks_the_pair_nncase_picks(seed, lo, hi):
    bins, levels = 48, 8
    rng = np.random.default_rng(seed)
    stats = Stats(lo=lo, hi=hi)
    stats.start_histogram(bins)
    stats.record_histogram(np.concatenate([rng.normal(0, 0.3 * hi, 500), rng.uniform(lo, hi, 20)]).astype(np.float32))
    r_lo, r_hi = stats.hist_range
    want = l2_brute_force(stats.counts, r_lo, r_hi, levels)
    interval = float(F32(F32(F32(r_hi) - F32(r_lo)) / F32(bins)))
    got = l2(stats, levels=levels)
    got_pair = (round((got[0] - r_lo) / interval), round((got[1] - r_lo) / interval))
    if got_pair != want:   # a float tie: both pairs must then cost the same
        def cost(pair):
            return l2_cost(stats.counts, r_lo, interval, pair, levels)
        assert math.isclose(cost(got_pair), cost(want), rel_tol=1e-9)


def l2_cost(counts, lo, interval, pair, levels):
    dmin, dmax = pair[0] * interval + lo, pair[1] * interval + lo
    q_int = (dmax - dmin) / (levels - 1)
    v = lo + interval * np.arange(len(counts))
    idx = np.clip(np.where(v >= dmin, np.floor((v - dmin) / q_int + 0.5), -1), 0, levels - 1)
    return float(((v - (dmin + q_int * idx)) ** 2 * counts).sum())


def test_l2_clips_rare_outliers_and_keeps_zero():
    rng = np.random.default_rng(0)
    data = np.concatenate([rng.normal(0, 1, 2_000_000), [60.0, -40.0]]).astype(np.float32)
    g = Graph()
    x = g.input("x", TensorType(data.shape))
    g.outputs = [g.add("unary", [x], name="y", op="neg").output]
    no_clip = calibrate(g, [data])["y"]
    clipped = calibrate(g, [data], method="l2")["y"]
    assert no_clip == (-60.0, 40.0)
    assert -20 < clipped[0] < -3 and 3 < clipped[1] < 20
    assert clipped[0] <= 0 <= clipped[1]


# ------------------------------------------------------------------ mse
def mse_cost(stats, lower, upper, levels):
    """The loss `mse` minimises, edge by edge: clipping error at bin centres + uniform rounding noise."""
    bins = len(stats.counts)
    lo = float(F32(stats.hist_range[0]))
    interval = float(F32(F32(F32(stats.hist_range[1]) - F32(stats.hist_range[0])) / F32(bins)))
    a, b = lo + lower * interval, lo + upper * interval
    step = (b - a) / (levels - 1)
    loss, inside = 0.0, -stats.zeros
    for i, n in enumerate(stats.counts):
        c = lo + (i + 0.5) * interval
        if i < lower:
            loss += n * (c - a) ** 2
        elif i >= upper:
            loss += n * (c - b) ** 2
        else:
            inside += n
    return loss + max(inside, 0.0) * step ** 2 / 12


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.floats(-4.0, 0.0), st.floats(0.5, 4.0))
def test_mse_picks_the_cheapest_pair_of_edges(seed, lo, hi):
    bins, levels = 40, 8
    rng = np.random.default_rng(seed)
    stats = Stats(lo=lo, hi=hi)
    stats.start_histogram(bins)
    stats.record_histogram(np.concatenate([rng.normal(0, 0.3 * hi, 500), rng.uniform(lo, hi, 20),
                                           np.zeros(50)]).astype(np.float32))
    r_lo, r_hi = stats.hist_range
    interval = float(F32(F32(F32(r_hi) - F32(r_lo)) / F32(bins)))
    zero = int(np.clip(np.floor(-r_lo / interval + 0.5), 0, bins))
    lowers = range(zero + 1) if r_lo < 0 else [0]
    best = min(mse_cost(stats, a, b, levels) for a in lowers for b in range(max(zero, 1), bins + 1) if b > a)
    got = mse(stats, levels=levels)
    pair = (round((got[0] - r_lo) / interval), round((got[1] - r_lo) / interval))
    assert math.isclose(mse_cost(stats, *pair, levels), best, rel_tol=1e-9, abs_tol=1e-12)


def test_mse_clips_rare_outliers_keeps_zero_and_a_saturated_top():
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.input("x", TensorType((2_000_002,)))
    g.outputs = [g.add("unary", [x], name="y", op="neg").output]
    data = np.concatenate([rng.normal(0, 1, 2_000_000), [60.0, -40.0]]).astype(np.float32)
    clipped = calibrate(g, [data], method="mse")["y"]
    assert -20 < clipped[0] < -3 and 3 < clipped[1] < 20 and clipped[0] <= 0 <= clipped[1]
    assert calibrate(g, [data], method="mse")["y"] == clipped                       # deterministic
    # a ReLU6 output: zeros, a rare tail clipped; a heavy saturated top at 6 kept
    relu = -np.clip(rng.exponential(0.3, 2_000_002), 0, 6).astype(np.float32)        # y = -x
    lo, hi = calibrate(g, [relu], method="mse")["y"]
    assert lo == 0.0 and 1.0 < hi < 4.0 < float(-relu.min())
    saturated = -np.clip(rng.normal(3, 3, 2_000_002), 0, 6).astype(np.float32)
    lo, hi = calibrate(g, [saturated], method="mse")["y"]
    assert lo == 0.0 and hi > 5.9


def test_histogram_uses_the_fixed_up_range():
    s = Stats()
    s.record_range(np.array([2.0, 3.0], np.float32))
    s.start_histogram(2048)
    assert s.hist_range == fixup_range((2.0, 3.0)) == (0.0, 3.0)
    s.record_histogram(np.array([0.0, 1.5, 3.0, 99.0, np.nan], np.float32))
    assert s.counts.sum() == 4 and s.counts[0] == 1 and s.counts[-1] == 2 and s.counts[1024] == 1


def test_calibrator_records_every_float_value_but_not_constants():
    g = small_graph()
    cal = Calibrator(g)
    cal.run(samples(1))
    assert set(cal.stats) == {"x", "relu", "flat", "pad", "slice", "neg", "cat"}
