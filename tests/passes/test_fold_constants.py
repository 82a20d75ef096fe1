"""fold_constants: nodes with only constant inputs become constants."""
import numpy as np
from numpy.testing import assert_array_equal

from passes.fold_constants import fold_constants


def test_a_chain_of_constant_ops_folds_into_one_constant(kit):
    g, (x,) = kit.graph_with_inputs((1, 3, 4, 4))
    w_hwio = kit.const(g, (3, 3, 3, 2), name="w_hwio")
    w = kit.op(g, "transpose", w_hwio, perm=(3, 2, 0, 1), name="w")                 # computed weight layout
    b = kit.op(g, "binary", kit.const(g, (2,), 1), g.const(np.float32(2)), op="mul")  # and a computed bias
    kit.finish(g, kit.op(g, "conv2d", x, w, b, padding=((1, 1), (1, 1))))
    kit.check_rewrite(fold_constants, g)
    assert kit.ops(g) == ["conv2d"]
    conv = g.nodes_of("conv2d")[0]
    assert_array_equal(conv.inputs[1].data, np.transpose(w_hwio.data, (3, 2, 0, 1)))
    assert conv.inputs[1].name.startswith("w")  # named after the value it replaces


def test_every_output_of_a_multi_output_op_folds(kit):
    g, (x,) = kit.graph_with_inputs((4,))
    parts = g.add("split", [kit.const(g, (4,))], axis=0, sizes=(1, 3)).outputs
    kit.finish(g, kit.op(g, "binary", x, kit.op(g, "concat", parts[1], parts[0], axis=0), op="add"))
    kit.check_rewrite(fold_constants, g)
    assert kit.ops(g) == ["binary"]


def test_a_node_with_a_run_time_input_is_left_alone(kit):
    g, (x,) = kit.graph_with_inputs((2, 3))
    kit.finish(g, kit.op(g, "binary", x, kit.const(g, (2, 3)), op="add"))
    kit.check_untouched(fold_constants, g)


def test_a_constant_graph_output_folds(kit):
    g, (x,) = kit.graph_with_inputs((2,))
    c = kit.op(g, "unary", kit.const(g, (2,)), op="abs")
    kit.finish(g, kit.op(g, "unary", x, op="neg"), c)
    kit.check_rewrite(fold_constants, g)
    assert kit.ops(g) == ["unary"] and g.outputs[1].is_constant
