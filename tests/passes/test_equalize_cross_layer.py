"""equalize_cross_layer: conv -> (ReLU) -> conv pairs rescaled per channel by their activations, same function."""
import math

import numpy as np
import pytest

from passes.equalize_cross_layer import channel_max, equalizable_pairs, equalize_cross_layer

RELU = (0.0, math.inf)


def stack(kit, *, clamp=RELU, depthwise_second=False, spread=True):
    """x -> conv 6 (fused clamp) -> conv (dense 4, or depthwise 6) -> output; with `spread` conv1's output
    channels span 1e-2 .. 1e1 (a tensor one uint8 grid serves badly)."""
    g, (x,) = kit.graph_with_inputs((1, 3, 8, 8))
    y = kit.conv(g, x, 6, 3, padding=((1, 1), (1, 1)), name="c1", fused_clamp=clamp)
    if spread:
        c1 = y.producer
        gain = np.logspace(-2, 1, 6).astype(np.float32)
        c1.inputs = [x, g.const(c1.inputs[1].data * gain[:, None, None, None], name="c1.w2", before=c1),
                     g.const(c1.inputs[2].data * gain, name="c1.b2", before=c1)]
    z = (kit.conv(g, y, 6, 3, groups=6, padding=((1, 1), (1, 1)), name="c2", seed=3) if depthwise_second
         else kit.conv(g, y, 4, 1, name="c2", seed=3))
    return kit.finish(g, z)


def samples(graph, n=4):
    rng = np.random.default_rng(7)
    return [[rng.standard_normal(v.shape).astype(np.float32) for v in graph.inputs] for _ in range(n)]


@pytest.mark.parametrize("clamp", [RELU, (-math.inf, math.inf)])
@pytest.mark.parametrize("depthwise_second", [False, True])
def test_a_pair_keeps_its_function_and_evens_out_its_activation_channels(kit, clamp, depthwise_second):
    g = stack(kit, clamp=clamp, depthwise_second=depthwise_second)
    before, data = kit.clone(g), samples(g)
    spread_before = channel_max(before, data, {"c1"})["c1"]
    assert equalize_cross_layer(g, data) is True
    g.validate()
    for seed in (0, 1):
        kit.assert_same_function(before, g, kit.random_feeds(g, seed),
                                 lambda got, want: np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4))
    spread_after = channel_max(g, data, {"c1"})["c1"]
    ratio = lambda m: m.max() / m.min()        # noqa: E731
    assert ratio(spread_after) < ratio(spread_before) ** 0.8   # α = 0.25 moves a quarter of the log-spread ...
    assert ratio(spread_after) > 1.0                           # ... onto conv2's weights, not all of it


@pytest.mark.parametrize("depthwise_second", [False, True])
def test_a_relu6_pair_keeps_its_function_wherever_calibration_reached(kit, depthwise_second):
    # ReLU6 is not homogeneous: clamp(y, 0, 6) / s_i is clamp(y / s_i, 0, 6 / s_i), one top per channel.
    # The pass gives the rescaled conv one common top T instead, with T * s_i between channel i's largest
    # calibration value and 6: the same function on the calibration data, and every channel still <= 6.
    g = stack(kit, clamp=(0.0, 6.0), depthwise_second=depthwise_second)
    before, data = kit.clone(g), samples(g)
    calibrated = channel_max(before, data, {"c1"})["c1"]
    assert 0 < calibrated.min() and calibrated.max() == 6.0    # channels from far below the clamp up to it
    assert equalize_cross_layer(g, data) is True
    g.validate()
    lo, top = g.node("c1").attrs["fused_clamp"]
    assert lo == 0.0 and top != 6.0
    s = before.node("c1").inputs[2].data / g.node("c1").inputs[2].data      # each channel's scale (bias ratio)
    assert np.all(top * s >= calibrated * (1 - 1e-6)) and np.all(top * s <= 6.0 * (1 + 1e-6))
    for feeds in data:
        kit.assert_same_function(before, g, feeds,
                                 lambda got, want: np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4))
    ratio = lambda m: m.max() / m.min()        # noqa: E731
    assert ratio(channel_max(g, data, {"c1"})["c1"]) < ratio(calibrated) ** 0.8


def test_pairs_it_cannot_rescale_are_left_alone(kit):
    clamped = stack(kit, clamp=(-1.0, 1.0))                      # a clamp below zero moves with no scale
    assert equalizable_pairs(clamped) == []
    assert equalize_cross_layer(clamped, samples(clamped)) is False
    also_output = stack(kit)
    also_output.outputs = [*also_output.outputs, also_output.node("c1").output]
    assert equalizable_pairs(also_output) == []
    g, (x,) = kit.graph_with_inputs((1, 3, 8, 8))
    y = kit.conv(g, x, 4, 1, name="c1", fused_clamp=RELU)
    two_readers = kit.finish(g, kit.conv(g, y, 2, 1, name="a", seed=2), kit.conv(g, y, 2, 1, name="b", seed=3))
    assert equalizable_pairs(two_readers) == []


def test_a_dead_channel_keeps_scale_one(kit):
    g = stack(kit, spread=False)
    c1 = g.node("c1")
    w = np.array(c1.inputs[1].data)
    w[2] = 0
    b = np.array(c1.inputs[2].data)
    b[2] = -1.0                                                     # ReLU(-1) = 0 everywhere: a dead channel
    c1.inputs = [c1.inputs[0], g.const(w, name="w0", before=c1), g.const(b, name="b0", before=c1)]
    before = kit.clone(g)
    equalize_cross_layer(g, samples(g))
    np.testing.assert_array_equal(g.node("c1").inputs[1].data[2], 0)
    assert np.all(np.isfinite(g.node("c2").inputs[1].data))
    kit.assert_same_function(before, g, kit.random_feeds(g, 0),
                             lambda got, want: np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4))
