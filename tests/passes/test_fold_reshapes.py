"""fold_reshapes: reshape chains merge, identity reshapes go, size-1-only transposes become reshapes."""
from passes.fold_reshapes import fold_reshapes


def test_a_reshape_chain_merges_into_one(kit):
    g, (x,) = kit.graph_with_inputs((2, 3, 4))
    y = kit.op(g, "reshape", kit.op(g, "reshape", x, shape=(6, 4)), shape=(2, 12))
    g = kit.check_rewrite(fold_reshapes, kit.finish(g, kit.op(g, "unary", y, op="abs")))
    (r,) = g.nodes_of("reshape")
    assert r.inputs[0] is x and r.attrs["shape"] == (2, 12)


def test_a_chain_back_to_the_input_shape_goes(kit):
    g, (x,) = kit.graph_with_inputs((2, 3, 4))
    y = kit.op(g, "reshape", kit.op(g, "reshape", x, shape=(24,)), shape=(2, 3, 4))
    g = kit.check_rewrite(fold_reshapes, kit.finish(g, kit.op(g, "unary", y, op="abs")))
    assert kit.ops(g) == ["unary"]


def test_an_identity_reshape_goes(kit):
    g, (x,) = kit.graph_with_inputs((2, 3))
    g = kit.check_rewrite(fold_reshapes, kit.finish(g, kit.op(g, "unary", kit.op(g, "reshape", x, shape=(2, 3)),
                                                              op="abs")))
    assert kit.ops(g) == ["unary"]


def test_a_transpose_of_size_1_dims_becomes_a_reshape_and_merges(kit):
    # The TFLite tail of MobileNet: conv [1,C,1,1] -> T(NHWC) -> reshape [1,C].
    g, (x,) = kit.graph_with_inputs((1, 5, 1, 1))
    y = kit.op(g, "reshape", kit.op(g, "transpose", x, perm=(0, 2, 3, 1)), shape=(1, 5))
    g = kit.check_rewrite(fold_reshapes, kit.finish(g, kit.op(g, "softmax", y, axis=1)))
    assert kit.ops(g) == ["reshape", "softmax"]


def test_a_transpose_that_moves_data_stays(kit):
    g, (x,) = kit.graph_with_inputs((1, 5, 1, 3))
    kit.check_untouched(fold_reshapes, kit.finish(g, kit.op(g, "transpose", x, perm=(0, 2, 3, 1))))


def test_a_reshape_of_a_graph_input_stays(kit):
    g, (x,) = kit.graph_with_inputs((2, 3))
    kit.check_untouched(fold_reshapes, kit.finish(g, kit.op(g, "reshape", x, shape=(3, 2))))
