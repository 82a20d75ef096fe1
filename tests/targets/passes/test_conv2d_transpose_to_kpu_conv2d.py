"""conv2d_transpose_to_kpu_conv2d: zero insertion + a stride-1 conv2d with the flipped kernel."""
from hypothesis import assume, given, settings, strategies as st

from targets.k210.legalize import legalize_k210
from targets.k210.passes.conv2d_transpose_to_kpu_conv2d import conv2d_transpose_to_kpu_conv2d


def transpose_conv(kpu, g, x, out_c, k, *, groups=1, **attrs):
    in_c = x.shape[1]
    w = kpu.const(g, (in_c, out_c // groups, k, k), 0, scale=1 / k)
    return kpu.op(g, "conv2d_transpose", x, w, kpu.const(g, (out_c,), 1), groups=groups, **attrs)


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 4), depthwise=st.booleans(), k=st.sampled_from([1, 3]), h=st.integers(2, 7),
       w=st.integers(2, 7), s=st.integers(1, 3), d=st.integers(1, 2), data=st.data())
def test_random_transposed_convs_become_convs_then_kpu_layers(kpu, c, depthwise, k, h, w, s, d, data):
    pad = st.integers(0, d * (k - 1))
    padding = tuple((data.draw(pad), data.draw(pad)) for _ in range(2))
    output_padding = tuple(data.draw(st.integers(0, max(s, d) - 1)) for _ in range(2))
    assume(all((size - 1) * s + d * (k - 1) + 1 + op - sum(p) >= 1
               for size, op, p in zip((h, w), output_padding, padding)))
    g, (x,) = kpu.graph_with_inputs((1, c, h, w))
    y = transpose_conv(kpu, g, x, c if depthwise else 3, k, groups=c if depthwise else 1, strides=(s, s),
                       padding=padding, dilations=(d, d), output_padding=output_padding)
    g = kpu.check_rewrite(conv2d_transpose_to_kpu_conv2d, kpu.finish(g, kpu.op(g, "clamp", y, min=0.0)))
    assert "conv2d_transpose" not in kpu.ops(g) and "conv2d" in kpu.ops(g)
    before = kpu.clone(g)
    legalize_k210(g, lint=True)
    kpu.assert_same_function(before, g, kpu.random_feeds(g))
    assert "conv2d" not in kpu.ops(g) and len(g.nodes_of("kpu_conv2d")) == 1


def test_a_stride_2_upsampling_layer(kpu):
    g, (x,) = kpu.graph_with_inputs((1, 4, 5, 5))
    y = transpose_conv(kpu, g, x, 2, 3, strides=(2, 2), padding=((1, 1), (1, 1)), output_padding=(1, 1))
    g = kpu.check_rewrite(conv2d_transpose_to_kpu_conv2d, kpu.finish(g, y))
    # zero insertion one axis at a time, every tensor at most 4-D (kmodel v4 shapes are 4-D)
    assert kpu.ops(g) == ["reshape", "pad", "reshape"] * 2 + ["conv2d"]
    assert all(len(n.output.shape) <= 4 for n in g.nodes)
    assert g.nodes_of("conv2d")[0].inputs[0].shape == (1, 4, 10, 10)


def test_a_4x4_kernel_stays_on_the_cpu_with_a_reason(kpu):
    g, (x,) = kpu.graph_with_inputs((1, 4, 5, 5))
    g = kpu.finish(g, transpose_conv(kpu, g, x, 2, 4, strides=(2, 2), padding=((1, 1), (1, 1))))
    kpu.check_untouched(conv2d_transpose_to_kpu_conv2d, g)
    assert "4x4" in g.nodes_of("conv2d_transpose")[0].meta["why_not_kpu"]
