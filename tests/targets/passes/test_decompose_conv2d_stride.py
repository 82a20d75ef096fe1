"""decompose_conv2d_stride: a strided conv2d becomes a stride-1 conv2d, its activations, a strided slice."""
from hypothesis import assume, given, settings, strategies as st

from targets.k210.passes.decompose_conv2d_stride import decompose_conv2d_stride

pads = st.tuples(st.integers(0, 2), st.integers(0, 2))


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 4), depthwise=st.booleans(), k=st.sampled_from([1, 3]), h=st.integers(4, 16),
       w=st.integers(4, 16), sh=st.integers(1, 4), sw=st.integers(1, 4), ph=pads, pw=pads,
       dilation=st.integers(1, 2), acts=st.lists(st.integers(0, 6), max_size=2))
def test_random_strided_convs_split_into_conv_and_slice(kpu, c, depthwise, k, h, w, sh, sw, ph, pw, dilation, acts):
    if (sh, sw) == (1, 1):
        sh = 2
    assume(min(h + sum(ph), w + sum(pw)) >= dilation * (k - 1) + 1)
    g, (x,) = kpu.graph_with_inputs((1, c, h, w))
    y = kpu.conv(g, x, c if depthwise else 3, k, groups=c if depthwise else 1, strides=(sh, sw), padding=(ph, pw),
                 dilations=(dilation, dilation))
    g = kpu.check_rewrite(decompose_conv2d_stride, kpu.finish(g, kpu.activate(g, y, acts)))
    assert kpu.ops(g) == ["conv2d"] + [kpu.ACTIVATIONS[i][0] for i in acts] + ["strided_slice"]
    assert g.nodes_of("conv2d")[0].attrs["strides"] == (1, 1)
    assert g.nodes_of("strided_slice")[0].attrs["strides"] == (1, 1, sh, sw)


def test_tensorflow_same_stride_2(kpu):
    g, (x,) = kpu.graph_with_inputs((1, 3, 8, 8))
    y = kpu.conv(g, x, 4, strides=(2, 2), padding=((0, 1), (0, 1)), fused_clamp=(0.0, 6.0))
    g = kpu.check_rewrite(decompose_conv2d_stride, kpu.finish(g, y))
    (sl,) = g.nodes_of("strided_slice")
    assert sl.attrs == dict(begin=(0, 0, 0, 0), end=(1, 4, 7, 7), strides=(1, 1, 2, 2))
    assert g.nodes_of("conv2d")[0].attrs["fused_clamp"] == (0.0, 6.0)


def test_stride_1_and_cpu_only_convs_are_left_alone(kpu):
    for k, attrs in ((3, dict(padding=((1, 1), (1, 1)))), (5, dict(strides=(2, 2))),
                     (3, dict(strides=(2, 2), groups=2))):
        g, (x,) = kpu.graph_with_inputs((1, 4, 8, 8))
        groups = attrs.pop("groups", 1)
        kpu.check_untouched(decompose_conv2d_stride, kpu.finish(g, kpu.conv(g, x, 4, k, groups=groups, **attrs)))
