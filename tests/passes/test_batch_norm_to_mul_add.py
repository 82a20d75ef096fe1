"""batch_norm_to_mul_add: a standalone batch norm becomes x * k + c by per-channel constants."""
import pytest

from passes.batch_norm_to_mul_add import batch_norm_to_mul_add


@pytest.mark.parametrize("shape", [(2, 4, 3, 5), (3, 4)])
def test_a_batch_norm_becomes_mul_and_add(kit, shape):
    g, (x,) = kit.graph_with_inputs(shape)
    y = kit.op(g, "batch_norm", kit.op(g, "unary", x, op="abs"), *kit.bn_params(g, 4), epsilon=1e-3)
    g = kit.check_rewrite(batch_norm_to_mul_add, kit.finish(g, y))
    assert kit.ops(g) == ["unary", "binary", "binary"]
    assert [n.attrs["op"] for n in g.nodes_of("binary")] == ["mul", "add"]


def test_a_batch_norm_with_run_time_parameters_is_left_alone(kit):
    g, (x, scale) = kit.graph_with_inputs((1, 4, 2, 2), (4,))
    params = kit.bn_params(g, 4, run_time={"scale": scale})
    kit.check_untouched(batch_norm_to_mul_add, kit.finish(g, kit.op(g, "batch_norm", x, *params, epsilon=1e-5)))
