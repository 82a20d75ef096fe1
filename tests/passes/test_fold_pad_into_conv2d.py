"""fold_pad_into_conv2d: a zero pad (or -inf before a max pool) merges into the consumer's padding."""
import math

import pytest
from hypothesis import given, settings, strategies as st

from passes.fold_pad_into_conv2d import fold_pad_into_conv2d

NO_PAD = ((0, 0), (0, 0))


def pad_then(kit, consumer, *, hw=(6, 7), pads=((1, 2), (0, 1)), value=0.0, mode="constant", **attrs):
    g, (x,) = kit.graph_with_inputs((1, 3) + hw)
    padded = kit.op(g, "pad", x, pads=((0, 0), (0, 0)) + tuple(pads), mode=mode, value=value, name="pad")
    if consumer == "conv2d":
        y = kit.conv(g, padded, 4, **attrs)
    else:
        y = kit.op(g, "reduce_window2d", padded, name="pool", **{"kernel": (3, 3), **attrs})
    return g, padded, y


def test_a_zero_pad_folds_into_the_conv(kit):
    g, _, y = pad_then(kit, "conv2d", padding=((1, 1), (1, 1)))
    g = kit.check_rewrite(fold_pad_into_conv2d, kit.finish(g, y))
    assert kit.ops(g) == ["conv2d"] and g.nodes_of("conv2d")[0].attrs["padding"] == ((2, 3), (1, 2))


@settings(max_examples=30, deadline=None)
@given(pads=st.tuples(*[st.tuples(st.integers(0, 2), st.integers(0, 2))] * 2),
       padding=st.tuples(*[st.tuples(st.integers(0, 1), st.integers(0, 1))] * 2),
       k=st.sampled_from([1, 2, 3]), stride=st.integers(1, 2), dilation=st.integers(1, 2), depthwise=st.booleans())
def test_random_pads_fold_into_random_convs(kit, pads, padding, k, stride, dilation, depthwise):
    g, (x,) = kit.graph_with_inputs((1, 2, 5, 6))
    padded = kit.op(g, "pad", x, pads=((0, 0), (0, 0)) + pads)
    y = kit.conv(g, padded, 4 if depthwise else 3, k, groups=2 if depthwise else 1, padding=padding,
                 strides=(stride, stride), dilations=(dilation, dilation))
    g = kit.check_rewrite(fold_pad_into_conv2d, kit.finish(g, y))
    assert kit.ops(g) == ["conv2d"]


@pytest.mark.parametrize("value", [-math.inf, -3.4028234663852886e38])
def test_a_minus_inf_pad_folds_into_a_max_pool(kit, value):
    g, _, y = pad_then(kit, "reduce_window2d", value=value, op="max", strides=(2, 2))
    g = kit.check_rewrite(fold_pad_into_conv2d, kit.finish(g, y))
    assert kit.ops(g) == ["reduce_window2d"]


@settings(max_examples=30, deadline=None)
@given(pads=st.tuples(*[st.tuples(st.integers(0, 3), st.integers(0, 3))] * 2),
       k=st.integers(1, 3), stride=st.integers(1, 3), padding=st.integers(0, 1))
def test_random_pads_before_max_pools_fold_only_when_every_window_sees_data(kit, pads, k, stride, padding):
    g, (x,) = kit.graph_with_inputs((1, 2, 4, 5))
    padded = kit.op(g, "pad", x, pads=((0, 0), (0, 0)) + pads, value=-math.inf)
    y = kit.op(g, "reduce_window2d", padded, op="max", kernel=(k, k), strides=(stride, stride),
               padding=((padding, padding),) * 2)
    g = kit.finish(g, y)
    before = kit.clone(g)
    if fold_pad_into_conv2d(g):
        g.validate()
        kit.assert_same_function(before, g, kit.random_feeds(g))
        assert kit.ops(g) == ["reduce_window2d"] and fold_pad_into_conv2d(g) is False
    else:
        assert max(max(p) for p in pads) + padding >= k  # some window could see only padding


@pytest.mark.parametrize("consumer, pad_kw, attrs", [
    ("conv2d", dict(value=1.0), {}),                                     # not a zero pad
    ("conv2d", dict(mode="reflect"), {}),
    ("conv2d", dict(pads=((-1, 0), (0, 0))), {}),                        # a crop
    ("reduce_window2d", dict(value=-math.inf), dict(op="mean")),         # mean pools never fold
    ("reduce_window2d", dict(value=0.0), dict(op="max")),                # 0 is not -inf for a max
    ("reduce_window2d", dict(value=-math.inf), dict(op="max", ceil_mode=True, strides=(2, 2))),
    ("reduce_window2d", dict(value=-math.inf, pads=((3, 0), (0, 0))), dict(op="max", strides=(3, 3))),
])
def test_near_misses_are_left_alone(kit, consumer, pad_kw, attrs):
    g, _, y = pad_then(kit, consumer, **pad_kw, **attrs)
    kit.check_untouched(fold_pad_into_conv2d, kit.finish(g, y))


def test_a_pad_on_the_channels_is_left_alone(kit):
    g, (x,) = kit.graph_with_inputs((1, 3, 4, 4))
    y = kit.conv(g, kit.op(g, "pad", x, pads=((0, 0), (1, 0), (1, 1), (1, 1))), 2)
    kit.check_untouched(fold_pad_into_conv2d, kit.finish(g, y))


def test_a_pad_with_a_second_user_is_left_alone(kit):
    g, padded, y = pad_then(kit, "conv2d")
    kit.check_untouched(fold_pad_into_conv2d, kit.finish(g, y, padded))
