"""fold_batch_norm_into_conv2d: conv2d -> batch_norm becomes one conv2d with scaled weights and bias."""
from hypothesis import given, settings, strategies as st

from passes.fold_batch_norm_into_conv2d import fold_batch_norm_into_conv2d


def conv_bn(kit, *, in_c=3, out_c=4, k=3, groups=1, strides=(1, 1), epsilon=1e-5, hw=6, seed=0):
    g, (x,) = kit.graph_with_inputs((1, in_c, hw, hw))
    y = kit.conv(g, x, out_c, k, groups=groups, strides=strides, padding=((k // 2,) * 2,) * 2, seed=seed)
    return g, y, kit.op(g, "batch_norm", y, *kit.bn_params(g, out_c, seed + 2), epsilon=epsilon, name="bn")


def test_conv_then_batch_norm_becomes_one_conv(kit):
    g, _, bn = conv_bn(kit)
    g = kit.check_rewrite(fold_batch_norm_into_conv2d, kit.finish(g, kit.op(g, "clamp", bn, min=0.0)))
    assert kit.ops(g) == ["conv2d", "clamp"]
    assert g.nodes_of("conv2d")[0].name == "conv"  # the conv keeps its (source) name


@settings(max_examples=30, deadline=None)
@given(c=st.integers(1, 4), mult=st.integers(1, 3), depthwise=st.booleans(), k=st.sampled_from([1, 3]),
       stride=st.integers(1, 2), epsilon=st.sampled_from([1e-5, 1e-3, 0.1]), seed=st.integers(0, 2**16))
def test_random_convs_and_batch_norms_fold(kit, c, mult, depthwise, k, stride, epsilon, seed):
    g, _, bn = conv_bn(kit, in_c=c, out_c=c * mult, k=k, groups=c if depthwise else 1, strides=(stride, stride),
                       epsilon=epsilon, seed=seed)
    g = kit.check_rewrite(fold_batch_norm_into_conv2d, kit.finish(g, bn))
    assert kit.ops(g) == ["conv2d"]


def test_a_conv_whose_output_is_also_used_elsewhere_is_left_alone(kit):
    g, y, bn = conv_bn(kit)
    kit.check_untouched(fold_batch_norm_into_conv2d, kit.finish(g, bn, y))


def test_a_batch_norm_with_run_time_statistics_is_left_alone(kit):
    g, (x, mean) = kit.graph_with_inputs((1, 3, 4, 4), (4,))
    y = kit.conv(g, x, 4)
    params = kit.bn_params(g, 4, run_time={"mean": mean})
    bn = kit.op(g, "batch_norm", y, *params, epsilon=1e-5)
    kit.check_untouched(fold_batch_norm_into_conv2d, kit.finish(g, bn))


def test_a_conv_with_a_fused_clamp_is_left_alone(kit):
    g, (x,) = kit.graph_with_inputs((1, 3, 4, 4))
    y = kit.conv(g, x, 4, fused_clamp=(0.0, 6.0))
    bn = kit.op(g, "batch_norm", y, *kit.bn_params(g, 4), epsilon=1e-5)
    kit.check_untouched(fold_batch_norm_into_conv2d, kit.finish(g, bn))
