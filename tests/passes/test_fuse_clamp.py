"""fuse_clamp: clamps fuse into their producer's fused_clamp; consecutive clamps merge."""
import math

import pytest
from hypothesis import given, settings, strategies as st

from passes.fuse_clamp import fuse_clamp

INF = math.inf


def producer(kit, g, kind, x):
    if kind == "conv2d":
        return kit.conv(g, x, 4, padding=((1, 1), (1, 1)))
    if kind == "conv2d_transpose":
        w, b = kit.const(g, (3, 2, 3, 3), 3, scale=0.3), kit.const(g, (2,), 4)
        return kit.op(g, "conv2d_transpose", x, w, b, strides=(2, 2), name="deconv")
    if kind == "matmul":
        return kit.op(g, "matmul", x, kit.const(g, (5, 2), 5), name="mm")
    return kit.op(g, "binary", x, kit.const(g, (5,), 6), op="add", name="add")


@pytest.mark.parametrize("kind", ["conv2d", "conv2d_transpose", "matmul", "binary"])
@pytest.mark.parametrize("bounds", [(0.0, INF), (0.0, 6.0), (-1.0, 1.0)])
def test_a_clamp_fuses_into_its_producer(kit, kind, bounds):
    g, (x,) = kit.graph_with_inputs((1, 3, 4, 5))
    y = producer(kit, g, kind, x)
    g = kit.check_rewrite(fuse_clamp, kit.finish(g, kit.op(g, "clamp", y, min=bounds[0], max=bounds[1])))
    (node,) = g.nodes_of(kind)
    assert kit.ops(g) == [kind] and node.attrs["fused_clamp"] == bounds and g.outputs == [node.output]


def test_a_clamp_intersects_an_existing_fused_clamp(kit):
    g, (x,) = kit.graph_with_inputs((1, 3, 4, 4))
    y = kit.conv(g, x, 2, fused_clamp=(0.0, INF))
    g = kit.check_rewrite(fuse_clamp, kit.finish(g, kit.op(g, "clamp", y, min=-1.0, max=6.0)))
    assert g.nodes_of("conv2d")[0].attrs["fused_clamp"] == (0.0, 6.0)


def test_consecutive_clamps_merge(kit):
    g, (x,) = kit.graph_with_inputs((3, 4))
    y = kit.op(g, "clamp", kit.op(g, "clamp", x, min=0.0), max=6.0)
    g = kit.check_rewrite(fuse_clamp, kit.finish(g, y))
    (c,) = g.nodes_of("clamp")
    assert (c.attrs["min"], c.attrs["max"]) == (0.0, 6.0)


bound = st.one_of(st.just(-INF), st.just(INF), st.floats(-2, 2).map(lambda v: round(v, 1)))


@settings(max_examples=30, deadline=None)
@given(first=st.tuples(bound, bound), then=st.tuples(bound, bound), into_conv=st.booleans())
def test_random_clamp_pairs_compose_exactly(kit, first, then, into_conv):
    g, (x,) = kit.graph_with_inputs((1, 2, 3, 3))
    if into_conv:
        y = kit.conv(g, x, 2, k=1, fused_clamp=first)
    else:
        y = kit.op(g, "clamp", x, min=first[0], max=first[1])
    g = kit.check_rewrite(fuse_clamp, kit.finish(g, kit.op(g, "clamp", y, min=then[0], max=then[1])),
                          seeds=range(3))
    assert len(g.nodes_of("clamp")) == (0 if into_conv else 1)


def test_a_producer_with_a_second_user_is_left_alone(kit):
    g, (x,) = kit.graph_with_inputs((1, 3, 4, 4))
    y = kit.conv(g, x, 2)
    kit.check_untouched(fuse_clamp, kit.finish(g, kit.op(g, "clamp", y, min=0.0), kit.op(g, "unary", y, op="abs")))


def test_a_producer_that_is_a_graph_output_is_left_alone(kit):
    g, (x,) = kit.graph_with_inputs((1, 3, 4, 4))
    y = kit.conv(g, x, 2)
    kit.check_untouched(fuse_clamp, kit.finish(g, kit.op(g, "clamp", y, min=0.0), y))


def test_clamps_of_integers_and_other_producers_are_left_alone(kit):
    g, (x,) = kit.graph_with_inputs((2, 3))
    i = kit.op(g, "cast", x, dtype="int32")
    y = kit.op(g, "clamp", kit.op(g, "binary", i, i, op="add"), min=0.0, max=6.0)
    z = kit.op(g, "clamp", kit.op(g, "unary", x, op="abs"), max=1.0)
    kit.check_untouched(fuse_clamp, kit.finish(g, y, z))
