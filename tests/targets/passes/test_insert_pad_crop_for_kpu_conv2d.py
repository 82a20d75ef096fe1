"""insert_pad_crop_for_kpu_conv2d: any stride-1 padding or small map becomes pad + ring conv + crop."""
from hypothesis import assume, given, settings, strategies as st

from targets.k210.passes.insert_pad_crop_for_kpu_conv2d import insert_pad_crop_for_kpu_conv2d

pads = st.tuples(st.integers(0, 3), st.integers(0, 3))


def _ring(conv):
    p = conv.inputs[1].shape[-1] // 2
    return conv.attrs["padding"] == ((p, p), (p, p)) and min(conv.inputs[0].shape[2:]) >= 4


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 4), depthwise=st.booleans(), k=st.sampled_from([1, 3]), h=st.integers(1, 11),
       w=st.integers(1, 11), ph=pads, pw=pads, acts=st.lists(st.integers(0, 6), max_size=2))
def test_random_paddings_and_sizes_get_the_kpu_ring(kpu, c, depthwise, k, h, w, ph, pw, acts):
    p = k // 2
    assume(not ((ph, pw) == ((p, p), (p, p)) and min(h, w) >= 4) and h + sum(ph) >= k and w + sum(pw) >= k)
    g, (x,) = kpu.graph_with_inputs((1, c, h, w))
    y = kpu.conv(g, x, c if depthwise else 3, k, groups=c if depthwise else 1, padding=(ph, pw))
    g = kpu.check_rewrite(insert_pad_crop_for_kpu_conv2d, kpu.finish(g, kpu.activate(g, y, acts)))
    (conv,) = g.nodes_of("conv2d")
    assert _ring(conv)
    # the activations stay right behind the conv, for conv2d_to_kpu_conv2d to absorb
    assert kpu.ops(g)[kpu.ops(g).index("conv2d") + 1:][:len(acts)] == [kpu.ACTIVATIONS[i][0] for i in acts]


def test_tensorflow_same_stride_2_crop_folds_into_the_stride_slice(kpu):
    g, (x,) = kpu.graph_with_inputs((1, 3, 8, 8))
    y = kpu.op(g, "clamp", kpu.conv(g, x, 4, padding=((0, 1), (0, 1))), min=0.0, max=6.0)
    y = kpu.op(g, "strided_slice", y, begin=(0, 0, 0, 0), end=(1, 4, 7, 7), strides=(1, 1, 2, 2))
    g = kpu.check_rewrite(insert_pad_crop_for_kpu_conv2d, kpu.finish(g, y))
    assert kpu.ops(g) == ["conv2d", "clamp", "strided_slice"]
    (sl,) = g.nodes_of("strided_slice")
    assert sl.attrs["begin"] == (0, 0, 1, 1) and sl.attrs["strides"] == (1, 1, 2, 2)


def test_a_1x1_map_is_padded_to_4x4_and_cropped(kpu):
    g, (x,) = kpu.graph_with_inputs((1, 16, 1, 1))
    g = kpu.check_rewrite(insert_pad_crop_for_kpu_conv2d, kpu.finish(g, kpu.conv(g, x, 10, 1)))
    assert kpu.ops(g) == ["pad", "conv2d", "strided_slice"]
    assert g.nodes_of("conv2d")[0].inputs[0].shape == (1, 16, 4, 4)


def test_a_conv_with_the_ring_already_is_left_alone(kpu):
    g, (x,) = kpu.graph_with_inputs((1, 3, 6, 6))
    kpu.check_untouched(insert_pad_crop_for_kpu_conv2d, kpu.finish(g, kpu.conv(g, x, 4, padding=((1, 1), (1, 1)))))


def test_strided_and_unplaceable_convs_are_left_alone(kpu):
    for k, attrs in ((3, dict(strides=(2, 2))), (5, dict(padding=((1, 1), (1, 1)))),
                     (3, dict(padding=((300, 0), (1, 1))))):
        g, (x,) = kpu.graph_with_inputs((1, 3, 6, 6))
        kpu.check_untouched(insert_pad_crop_for_kpu_conv2d, kpu.finish(g, kpu.conv(g, x, 4, k, **attrs)))
