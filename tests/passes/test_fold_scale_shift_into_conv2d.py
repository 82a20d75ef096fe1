"""fold_scale_shift_into_conv2d: conv2d -> mul/add by a per-channel constant becomes one conv2d."""
import numpy as np
import pytest

from passes.fold_scale_shift_into_conv2d import fold_scale_shift_into_conv2d


def conv_affine(kit, *, scale_shape=(1,), shift_shape=(1,), const_first=False, groups=1):
    """x -> conv2d 4 -> * s -> + c (Paddle's learnable affine block after a conv)."""
    g, (x,) = kit.graph_with_inputs((1, 4, 6, 6))
    y = kit.conv(g, x, 4, 3, groups=groups, padding=((1, 1), (1, 1)))
    s, c = kit.const(g, scale_shape, 5, name="s"), kit.const(g, shift_shape, 6, name="c")
    m = kit.op(g, "binary", *((s, y) if const_first else (y, s)), op="mul", name="scale")
    return g, y, kit.op(g, "binary", *((c, m) if const_first else (m, c)), op="add", name="shift")


@pytest.mark.parametrize("const_first", [False, True])
@pytest.mark.parametrize("shape", [(1,), (), (4, 1, 1), (1, 4, 1, 1)])
def test_a_scale_and_a_shift_after_a_conv_fold_into_it(kit, const_first, shape):
    g, _, out = conv_affine(kit, scale_shape=shape, shift_shape=shape, const_first=const_first)
    g = kit.check_rewrite(fold_scale_shift_into_conv2d, kit.finish(g, kit.op(g, "clamp", out, min=0.0)))
    assert kit.ops(g) == ["conv2d", "clamp"]
    assert g.nodes_of("conv2d")[0].name == "conv"             # the conv keeps its (source) name


def test_a_depthwise_conv_folds_too(kit):
    g, _, out = conv_affine(kit, groups=4, scale_shape=(4, 1, 1))
    g = kit.check_rewrite(fold_scale_shift_into_conv2d, kit.finish(g, out))
    assert kit.ops(g) == ["conv2d"]


def test_a_conv_whose_output_is_also_used_elsewhere_is_left_alone(kit):
    g, y, out = conv_affine(kit)
    kit.check_untouched(fold_scale_shift_into_conv2d, kit.finish(g, out, y))


def test_constants_that_are_not_per_channel_or_a_clamped_conv_are_left_alone(kit):
    g, (x,) = kit.graph_with_inputs((1, 4, 6, 6))
    spatial = kit.op(g, "binary", kit.conv(g, x, 4, 1, name="a"), kit.const(g, (1, 1, 6), 1), op="mul")
    clamped = kit.conv(g, x, 4, 1, name="b", fused_clamp=(0.0, 6.0))
    after_clamp = kit.op(g, "binary", clamped, kit.const(g, (1,), 2), op="mul")
    sub = kit.op(g, "binary", kit.conv(g, x, 4, 1, name="c"), kit.const(g, (1,), 3), op="sub")
    kit.check_untouched(fold_scale_shift_into_conv2d, kit.finish(g, spatial, after_clamp, sub))


def test_run_time_weights_are_left_alone(kit):
    g, (x, w) = kit.graph_with_inputs((1, 2, 4, 4), (2, 2, 1, 1))
    y = g.add("conv2d", [x, w, g.const(np.zeros(2, np.float32))]).output
    kit.check_untouched(fold_scale_shift_into_conv2d, kit.finish(g, kit.op(g, "binary", y, kit.const(g, (1,), 1),
                                                                           op="mul")))
