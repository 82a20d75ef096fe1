"""fold_space_to_batch_into_conv2d: TF's space_to_batch -> conv2d -> batch_to_space becomes one dilated conv2d."""
from hypothesis import given, settings, strategies as st

from passes.fold_space_to_batch_into_conv2d import fold_space_to_batch_into_conv2d


def atrous(kit, *, hw=(7, 8), block=(2, 2), k=3, pads=None, crops=None, padding=((0, 0), (0, 0)), groups=1,
           **attrs):
    """TF's lowering of a SAME dilated conv (pads and crops as tf.nn.atrous_conv2d computes them by default)."""
    g, (x,) = kit.graph_with_inputs((1, 4) + hw)
    if pads is None:
        total = [b * (k - 1) for b in block]
        base = [(t // 2, t - t // 2) for t in total]
        extra = [(-(s + t0 + t1)) % b for s, (t0, t1), b in zip(hw, base, block)]
        pads = tuple((t0, t1 + e) for (t0, t1), e in zip(base, extra))
        crops = tuple((0, e) for e in extra)
    s2b = kit.op(g, "space_to_batch", x, block=block, pads=pads, name="s2b")
    y = kit.conv(g, s2b, 4 if groups > 1 else 5, k, groups=groups, padding=padding, **attrs)
    return g, s2b, kit.op(g, "batch_to_space", y, block=block, crops=crops, name="b2s")


def test_tf_same_atrous_conv_becomes_one_dilated_conv(kit):
    g, _, y = atrous(kit, fused_clamp=(0.0, 6.0))
    g = kit.check_rewrite(fold_space_to_batch_into_conv2d, kit.finish(g, y))
    assert kit.ops(g) == ["conv2d"]
    conv = g.nodes_of("conv2d")[0]
    assert conv.attrs["dilations"] == (2, 2) and conv.attrs["padding"] == ((2, 2), (2, 2))
    assert conv.attrs["fused_clamp"] == (0.0, 6.0) and g.outputs[0].shape == (1, 5, 7, 8)


@settings(max_examples=40, deadline=None)
@given(hw=st.tuples(st.integers(3, 9), st.integers(3, 9)), block=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       k=st.sampled_from([1, 2, 3]), q=st.integers(0, 1), depthwise=st.booleans(), data=st.data())
def test_random_chains_fold_to_the_same_function(kit, hw, block, k, q, depthwise, data):
    """Any pads, phase-conv padding and crops that leave a non-negative dilated padding fold exactly."""
    pads = tuple((data.draw(st.integers(0, 3)), 0) for _ in range(2))
    pads = tuple((p0, (-(s + p0)) % b + b * data.draw(st.integers(0, 1))) for s, (p0, _), b in zip(hw, pads, block))
    phase = [(s + p0 + p1) // b + 2 * q - k + 1 for s, (p0, p1), b in zip(hw, pads, block)]
    if min(phase) < 1:
        return
    crops = tuple((data.draw(st.integers(0, min(2, n * b - 1))), 0) for n, b in zip(phase, block))
    g, _, y = atrous(kit, hw=hw, block=block, k=k, pads=pads, crops=crops, padding=((q, q), (q, q)),
                     groups=4 if depthwise else 1)
    g = kit.finish(g, y)
    before = kit.clone(g)
    if fold_space_to_batch_into_conv2d(g):
        g.validate()
        kit.assert_same_function(before, g, kit.random_feeds(g))
        assert kit.ops(g) == ["conv2d"]


def test_a_space_to_batch_with_a_second_user_is_left_alone(kit):
    g, s2b, y = atrous(kit)
    kit.check_untouched(fold_space_to_batch_into_conv2d, kit.finish(g, y, s2b))


def test_a_strided_phase_conv_is_left_alone(kit):
    g, (x,) = kit.graph_with_inputs((1, 4, 8, 8))
    s2b = kit.op(g, "space_to_batch", x, block=(2, 2), pads=((2, 2), (2, 2)))
    y = kit.conv(g, s2b, 4, 3, strides=(2, 2), padding=((1, 1), (1, 1)))
    kit.check_untouched(fold_space_to_batch_into_conv2d,
                        kit.finish(g, kit.op(g, "batch_to_space", y, block=(2, 2), crops=((0, 0), (0, 0)))))
