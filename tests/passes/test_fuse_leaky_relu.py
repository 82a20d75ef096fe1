"""fuse_leaky_relu: max(x, alpha*x) and min(x, alpha*x) become leaky_relu."""
import numpy as np
import pytest

from passes.fuse_leaky_relu import fuse_leaky_relu


def leaky_pattern(kit, *, op="max", alpha=0.1, x_first=True, const_first=False, shape=(2, 3, 4)):
    g, (x,) = kit.graph_with_inputs(shape)
    c = g.const(np.full((), alpha, np.float32), name="alpha")
    product = kit.op(g, "binary", *((c, x) if const_first else (x, c)), op="mul", name="scaled")
    y = kit.op(g, "binary", *((x, product) if x_first else (product, x)), op=op, name="leaky")
    return g, x, product, y


@pytest.mark.parametrize("x_first", [True, False])
@pytest.mark.parametrize("const_first", [True, False])
@pytest.mark.parametrize("op, alpha", [("max", 0.1), ("max", 0.0), ("max", 1.0), ("min", 2.5)])
def test_max_or_min_of_x_and_scaled_x_becomes_leaky_relu(kit, x_first, const_first, op, alpha):
    g, x, _, y = leaky_pattern(kit, op=op, alpha=alpha, x_first=x_first, const_first=const_first)
    g = kit.check_rewrite(fuse_leaky_relu, kit.finish(g, y))
    (node,) = g.nodes_of("leaky_relu")
    assert kit.ops(g) == ["leaky_relu"] and node.inputs[0] is x and node.attrs["alpha"] == pytest.approx(alpha)


def test_a_per_channel_constant_of_equal_values_counts_as_alpha(kit):
    g, (x,) = kit.graph_with_inputs((1, 3, 2, 2))
    product = kit.op(g, "binary", x, g.const(np.full((3, 1, 1), 0.2, np.float32)), op="mul")
    g = kit.check_rewrite(fuse_leaky_relu, kit.finish(g, kit.op(g, "binary", x, product, op="max")))
    assert kit.ops(g) == ["leaky_relu"]


@pytest.mark.parametrize("op, alpha", [("max", 1.5), ("max", -0.5), ("min", 0.5)])
def test_slopes_that_are_not_a_leaky_relu_are_left_alone(kit, op, alpha):
    g, _, _, y = leaky_pattern(kit, op=op, alpha=alpha)
    kit.check_untouched(fuse_leaky_relu, kit.finish(g, y))


def test_a_product_with_a_second_user_is_left_alone(kit):
    g, _, product, y = leaky_pattern(kit)
    kit.check_untouched(fuse_leaky_relu, kit.finish(g, y, product))


def test_a_product_that_broadcasts_x_larger_or_varies_is_left_alone(kit):
    g, (x,) = kit.graph_with_inputs((1, 3))
    wide = kit.op(g, "binary", x, g.const(np.full((2, 3), 0.1, np.float32)), op="mul")
    varied = kit.op(g, "binary", x, g.const(np.array([0.1, 0.2, 0.1], np.float32)), op="mul")
    kit.check_untouched(fuse_leaky_relu, kit.finish(g, kit.op(g, "binary", x, wide, op="max"),
                                                    kit.op(g, "binary", x, varied, op="max")))
