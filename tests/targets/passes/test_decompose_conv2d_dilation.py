"""decompose_conv2d_dilation: a dilated 3x3 conv2d runs undilated on space_to_batch phases."""
from hypothesis import given, settings, strategies as st

from targets.k210.passes.decompose_conv2d_dilation import decompose_conv2d_dilation

pads = st.tuples(st.integers(0, 4), st.integers(0, 4))


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 4), depthwise=st.booleans(), h=st.integers(7, 14), w=st.integers(7, 14),
       dh=st.integers(1, 3), dw=st.integers(2, 3), ph=pads, pw=pads, acts=st.lists(st.integers(0, 6), max_size=2))
def test_random_dilated_convs_run_on_phases(kpu, c, depthwise, h, w, dh, dw, ph, pw, acts):
    g, (x,) = kpu.graph_with_inputs((1, c, h, w))
    y = kpu.conv(g, x, c if depthwise else 3, 3, groups=c if depthwise else 1, padding=(ph, pw), dilations=(dh, dw))
    g = kpu.check_rewrite(decompose_conv2d_dilation, kpu.finish(g, kpu.activate(g, y, acts)))
    assert kpu.ops(g) == ["space_to_batch", "conv2d"] + [kpu.ACTIVATIONS[i][0] for i in acts] + ["batch_to_space"]
    (conv,) = g.nodes_of("conv2d")
    assert conv.attrs["dilations"] == (1, 1) and conv.attrs["padding"] == ((1, 1), (1, 1))
    assert conv.inputs[0].shape[0] == dh * dw


def test_undilated_1x1_strided_and_5x5_convs_are_left_alone(kpu):
    for k, attrs in ((3, {}), (1, dict(dilations=(2, 2))), (3, dict(dilations=(2, 2), strides=(2, 2))),
                     (5, dict(dilations=(2, 2)))):
        g, (x,) = kpu.graph_with_inputs((1, 3, 12, 12))
        kpu.check_untouched(decompose_conv2d_dilation, kpu.finish(g, kpu.conv(g, x, 4, k, **attrs)))
