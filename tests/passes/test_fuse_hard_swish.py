"""fuse_hard_swish: x * clamp(x + 3, 0, 6) / 6 (Paddle2ONNX's HardSwish) becomes one hard_swish."""
import numpy as np
import pytest

from passes.fuse_hard_swish import fuse_hard_swish


def spelled_out(kit, *, last="div", x_first=True, three=3.0, clamp=(0.0, 6.0), shape=(1, 3, 4, 4)):
    """x -> (x + 3 clamped to [0, 6]) -> x * that -> / 6 (or * 1/6)."""
    g, (x,) = kit.graph_with_inputs(shape)
    shifted = kit.op(g, "binary", x, g.const(np.float32(three)), op="add", fused_clamp=clamp, name="shifted")
    product = kit.op(g, "binary", *((x, shifted) if x_first else (shifted, x)), op="mul", name="product")
    k = g.const(np.float32(6.0 if last == "div" else 1 / 6))
    return g, shifted, product, kit.op(g, "binary", product, k, op=last, name="hs")


@pytest.mark.parametrize("x_first", [True, False])
@pytest.mark.parametrize("last", ["div", "mul"])
def test_the_four_op_form_becomes_hard_swish(kit, x_first, last):
    g, _, _, y = spelled_out(kit, last=last, x_first=x_first)
    x = g.inputs[0]
    g = kit.check_rewrite(fuse_hard_swish, kit.finish(g, y))
    (node,) = g.nodes_of("unary")
    assert kit.ops(g) == ["unary"] and node.attrs["op"] == "hard_swish" and node.inputs[0] is x


def test_matches_onnx_hardswish():
    """The fused op computes what onnxruntime's HardSwish computes."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from compiler.executor import run_graph
    from compiler.ir import Graph, TensorType
    node = helper.make_node("HardSwish", ["x"], ["y"])
    vi = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [64]) for n in "xy"]
    model = helper.make_model(helper.make_graph([node], "hs", vi[:1], vi[1:]),
                              opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
    xs = np.linspace(-5, 5, 64, dtype=np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": xs})[0]
    g = Graph()
    x = g.input("x", TensorType((64,)))
    shifted = g.add("binary", [x, g.const(np.float32(3.0))], op="add", fused_clamp=(0.0, 6.0)).output
    prod = g.add("binary", [x, shifted], op="mul").output
    g.outputs = [g.add("binary", [prod, g.const(np.float32(6.0))], op="div").output]
    assert fuse_hard_swish(g)
    np.testing.assert_allclose(run_graph(g, xs)[0], want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kw", [dict(three=2.0), dict(clamp=(0.0, 5.0)), dict(clamp=(-np.inf, np.inf))])
def test_other_shifts_and_clamps_are_left_alone(kit, kw):
    g, _, _, y = spelled_out(kit, **kw)
    kit.check_untouched(fuse_hard_swish, kit.finish(g, y))


def test_a_sum_or_product_with_a_second_user_is_left_alone(kit):
    g, shifted, _, y = spelled_out(kit)
    kit.check_untouched(fuse_hard_swish, kit.finish(g, y, shifted))
    g, _, product, y = spelled_out(kit)
    kit.check_untouched(fuse_hard_swish, kit.finish(g, y, product))
