"""fuse_kpu_pool: a pool or stride-2/4 slice after a bypass kpu_conv2d becomes its KPU pool type."""
from hypothesis import assume, given, settings, strategies as st

from targets.k210.passes.fuse_kpu_pool import fuse_kpu_pool


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 4), o=st.integers(1, 4), k=st.sampled_from([1, 3]), h=st.integers(4, 20),
       w=st.integers(4, 20), pool=st.integers(0, 5))
def test_random_pools_fuse(kpu, c, o, k, h, w, pool):
    attrs, name, stride = kpu.POOLS[pool]
    assume(min(h, w) // stride >= 4)
    g, (x,) = kpu.graph_with_inputs((1, c, h, w))
    y = kpu.kpu_conv(g, x, o, k, activation=(("clamp", 0.0, 6.0),))
    g = kpu.check_rewrite(fuse_kpu_pool, kpu.finish(g, kpu.op(g, "reduce_window2d", y, **attrs)))
    assert kpu.ops(g) == ["kpu_conv2d"] and g.nodes_of("kpu_conv2d")[0].attrs["pool"] == name


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 4), k=st.sampled_from([1, 3]), h=st.integers(4, 20), w=st.integers(4, 20),
       stride=st.sampled_from([2, 4]), data=st.data())
def test_random_stride_slices_become_left_or_right_top_pools(kpu, c, k, h, w, stride, data):
    bh, bw = data.draw(st.integers(0, min(h - 1, 5))), data.draw(st.integers(0, min(w - 1, 5)))
    oh = data.draw(st.integers(1, (h - 1 - bh) // stride + 1))
    ow = data.draw(st.integers(1, (w - 1 - bw) // stride + 1))
    g, (x,) = kpu.graph_with_inputs((1, c, h, w))
    y = kpu.kpu_conv(g, x, 3, k, activation=(("leaky_relu", 0.1),))
    y = kpu.op(g, "strided_slice", y, begin=(0, 0, bh, bw),
               end=(1, 3, bh + (oh - 1) * stride + 1, bw + (ow - 1) * stride + 1), strides=(1, 1, stride, stride))
    g = kpu.check_rewrite(fuse_kpu_pool, kpu.finish(g, y))
    (layer,) = g.nodes_of("kpu_conv2d")
    assert layer.attrs["pool"] in ("left_top_2_s2", "right_top_2_s2", "left_top_4_s4")
    assert all(n.attrs["strides"] == (1, 1, 1, 1) for n in g.nodes_of("strided_slice"))


def test_tensorflow_same_stride_2_rows_and_columns_1_3_5(kpu):
    g, (x,) = kpu.graph_with_inputs((1, 3, 8, 8))
    y = kpu.kpu_conv(g, x, 4)
    y = kpu.op(g, "strided_slice", y, begin=(0, 0, 1, 1), end=(1, 4, 8, 8), strides=(1, 1, 2, 2))
    g = kpu.check_rewrite(fuse_kpu_pool, kpu.finish(g, y))
    assert kpu.ops(g) == ["pad", "kpu_conv2d", "strided_slice"]
    assert g.nodes_of("pad")[0].attrs["pads"][2:] == ((1, 1), (0, 0))        # one zero row on top (and to even)
    assert g.nodes_of("kpu_conv2d")[0].attrs["pool"] == "right_top_2_s2"     # odd columns
    assert g.nodes_of("strided_slice")[0].attrs["begin"] == (0, 0, 1, 0)     # the extra pooled row goes


def test_an_even_slice_is_a_plain_left_top_pool(kpu):
    g, (x,) = kpu.graph_with_inputs((1, 3, 8, 8))
    y = kpu.op(g, "strided_slice", kpu.kpu_conv(g, x, 4), begin=(0, 0, 0, 0), end=(1, 4, 7, 7), strides=(1, 1, 2, 2))
    g = kpu.check_rewrite(fuse_kpu_pool, kpu.finish(g, y))
    assert kpu.ops(g) == ["kpu_conv2d"] and g.nodes_of("kpu_conv2d")[0].attrs["pool"] == "left_top_2_s2"


def test_near_misses_are_left_alone(kpu):
    cases = [
        (dict(depthwise=True), "reduce_window2d", dict(op="max", kernel=(2, 2), strides=(2, 2))),
        ({}, "reduce_window2d", dict(op="max", kernel=(3, 3), strides=(2, 2))),
        ({}, "reduce_window2d", dict(op="mean", kernel=(2, 2), strides=(1, 1), padding=((0, 1), (0, 1)),
                                     count_include_pad=True)),
        ({}, "reduce_window2d", dict(op="max", kernel=(2, 2), strides=(2, 2), padding=((1, 1), (1, 1)))),
        ({}, "strided_slice", dict(begin=(0, 0, 0, 0), end=(1, 4, 7, 7), strides=(1, 1, 3, 3))),
        ({}, "strided_slice", dict(begin=(0, 0, 0, 0), end=(1, 4, 7, 7), strides=(1, 1, 2, 1))),
        (dict(depthwise=True), "strided_slice", dict(begin=(0, 0, 0, 0), end=(1, 4, 7, 7), strides=(1, 1, 2, 2))),
        (dict(pool="max_2_s1"), "strided_slice", dict(begin=(0, 0, 0, 0), end=(1, 4, 7, 7), strides=(1, 1, 2, 2))),
    ]
    for conv_attrs, op, attrs in cases:
        g, (x,) = kpu.graph_with_inputs((1, 4, 8, 8))
        kpu.check_untouched(fuse_kpu_pool, kpu.finish(g, kpu.op(g, op, kpu.kpu_conv(g, x, 4, **conv_attrs), **attrs)))


def test_a_pool_whose_input_is_also_returned_is_left_alone(kpu):
    g, (x,) = kpu.graph_with_inputs((1, 4, 8, 8))
    y = kpu.kpu_conv(g, x, 4)
    kpu.check_untouched(fuse_kpu_pool, kpu.finish(g, kpu.op(g, "reduce_window2d", y, op="max", kernel=(2, 2),
                                                                strides=(2, 2)), y))


def test_a_pool_that_would_leave_less_than_4x4_is_left_alone(kpu):
    g, (x,) = kpu.graph_with_inputs((1, 4, 6, 6))
    y = kpu.kpu_conv(g, x, 4)
    kpu.check_untouched(fuse_kpu_pool, kpu.finish(g, kpu.op(g, "reduce_window2d", y, op="max", kernel=(2, 2),
                                                                strides=(2, 2))))
