"""targets/k210/split_activations.py: a KPU layer's output as two uint8 copies half a step apart."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from compiler.calibration import calibrate
from compiler.executor import Executor
from compiler.quantization import get_quant_param
from graph_kit import clone, conv, finish, graph_with_inputs, random_feeds
from targets.k210.kernels import QuantizedExecutor
from targets.k210.legalize import legalize_k210
from targets.k210.quantize import quantize_k210
from targets.k210.split_activations import split_activations


def chain(channels: int, depthwise_next: bool, clamp: tuple | None, size: int = 8, seed: int = 0):
    """x -> conv3x3 (C channels, optional fused clamp) -> depthwise or dense 3x3 -> 1x1 conv."""
    g, (x,) = graph_with_inputs((1, 3, size, size))
    pad = ((1, 1), (1, 1))
    attrs = {"fused_clamp": clamp} if clamp else {}
    y = conv(g, x, channels, 3, padding=pad, seed=seed, name="first", **attrs)
    z = conv(g, y, channels, 3, groups=channels if depthwise_next else 1, padding=pad, seed=seed + 2, name="second")
    return finish(g, conv(g, z, 4, 1, seed=seed + 4, name="third"))


def feeds(graph, n=3):
    return [random_feeds(graph, seed) for seed in range(n)]


@settings(max_examples=25, deadline=None)
@given(channels=st.integers(1, 6), depthwise=st.booleans(), seed=st.integers(0, 1000))
def test_without_a_clamp_the_split_keeps_the_float_function(channels, depthwise, seed):
    """No clamp: the copies are y - s/4 and y + s/4 exactly, so the readers' half weights add up to y."""
    g = chain(channels, depthwise, None, seed=seed)
    before = clone(g)
    assert split_activations(g, calibrate(g, feeds(g), label=""), 1) == ["first"]
    assert g.node("first_split").output.shape[1] == 2 * channels
    assert g.node("second").attrs.get("groups", 1) == 1        # a depthwise reader becomes dense
    for f in feeds(g, 2):
        want, got = Executor(before).run(f), Executor(g).run(f)
        np.testing.assert_allclose(got["third"], want["third"], rtol=1e-5, atol=1e-5)


def test_with_relu6_the_split_differs_only_near_the_clamp_bounds():
    """Within s/4 of 0 or 6 the pair averages to y ± up to s/8; elsewhere it is y."""
    g = chain(4, True, (0.0, 6.0))
    ranges = calibrate(g, feeds(g), label="")
    step = 1 / get_quant_param(ranges["first"]).scale
    split = clone(g)
    split_activations(split, ranges, 1)
    for f in feeds(g, 2):
        y = Executor(g).run(f, keep_all=True)["first"]
        pair = Executor(split).run(f, keep_all=True)["first_split"]
        mean = (pair[:, :4] + pair[:, 4:]) / 2
        np.testing.assert_allclose(mean, y, atol=step / 8 + 1e-6)
        inside = (y > step / 4) & (y < 6 - step / 4)
        np.testing.assert_allclose(mean[inside], y[inside], atol=1e-5)


@pytest.mark.parametrize("depthwise", [True, False])
def test_the_kpu_rounds_the_copies_a_half_step_apart(depthwise):
    """The mechanism on kpuc's KPU kernels: both copies round one internal value v (in output
    codes), at v - 1/4 and v + 1/4, so B - A is 0 or 1, and 1 for about half the unclamped pixels (the
    ones whose v lies in the upper half of its step): (A + B)/2 is v on a grid of half steps. The offsets
    live in norm_add, which is in units finer than the output step, so the integer pipeline keeps them."""
    g = chain(6, depthwise, (0.0, 6.0), size=16)
    samples = [f[0] for f in feeds(g, 6)]
    split_activations(g, calibrate(g, samples, label=""), 1)
    legalize_k210(g)
    q = quantize_k210(g, calibrate(g, samples, label=""))
    layer, = [n for n in q.nodes_of("kpu_conv2d_q") if n.meta["float_value"].startswith("first_")]   # split: first_kpu
    codes = np.concatenate([QuantizedExecutor(q).run([x], keep_all=True)[layer.output.name] for x in samples])
    a, b = codes[:, :6].astype(int), codes[:, 6:].astype(int)
    assert set(np.unique(b - a)) <= {0, 1}
    inside = (a > 0) & (b < 255)
    assert inside.sum() > 1000
    assert 0.4 < (b - a)[inside].mean() < 0.6


def test_only_conv_readers_and_the_first_n_layers_are_split():
    g, (x,) = graph_with_inputs((1, 3, 8, 8))
    pad = ((1, 1), (1, 1))
    a = conv(g, x, 4, 3, padding=pad, name="a", fused_clamp=(0.0, 6.0))
    b = conv(g, a, 4, 3, padding=pad, name="b", fused_clamp=(0.0, 6.0))
    c = conv(g, b, 4, 3, padding=pad, name="c", fused_clamp=(0.0, 6.0))
    out = g.add("binary", [c, b], name="sum", op="add").output                # b is also read by an add: not split
    finish(g, out)
    ranges = calibrate(g, feeds(g), label="")
    assert split_activations(clone(g), ranges, 0) == []
    assert split_activations(clone(g), ranges, 5) == ["a"]          # c feeds the add; b is read by the add
