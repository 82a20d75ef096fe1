"""fold_transposes: pairs cancel, chains merge, identities go, transposes sink through elementwise ops."""
import numpy as np
from hypothesis import given, settings, strategies as st

from passes.fold_transposes import fold_transposes

NHWC, NCHW = (0, 2, 3, 1), (0, 3, 1, 2)


def nhwc_sandwich(kit, middle):
    """input -> conv -> T(NHWC) -> middle(g, v) -> T(NCHW) -> conv: the TFLite importer's shape."""
    g, (x,) = kit.graph_with_inputs((1, 3, 6, 6))
    y = kit.op(g, "transpose", kit.conv(g, x, 4, name="conv1"), perm=NHWC)
    y = kit.op(g, "transpose", middle(g, y), perm=NCHW)
    return kit.finish(g, kit.conv(g, y, 2, k=1, name="conv2", seed=5))


def test_a_pair_cancels(kit):
    g = kit.check_rewrite(fold_transposes, nhwc_sandwich(kit, lambda g, v: v))
    assert kit.ops(g) == ["conv2d", "conv2d"]


def test_transposes_at_the_graph_input_cancel(kit):
    g, (x,) = kit.graph_with_inputs((1, 3, 4, 5))
    y = kit.op(g, "transpose", kit.op(g, "transpose", x, perm=NHWC), perm=NCHW)
    g = kit.check_rewrite(fold_transposes, kit.finish(g, kit.conv(g, y, 2)))
    assert kit.ops(g) == ["conv2d"] and g.nodes_of("conv2d")[0].inputs[0] is x


def test_a_tflite_residual_block_loses_every_transpose(kit):
    # As the TFLite importer builds it: NHWC tensors between convs, the residual add in NHWC.
    g, (x,) = kit.graph_with_inputs((1, 4, 5, 5))
    a = kit.op(g, "transpose", kit.conv(g, x, 4, padding=((1, 1), (1, 1)), name="conv1"), perm=NHWC)
    b = kit.op(g, "transpose", kit.conv(g, kit.op(g, "transpose", a, perm=NCHW), 4, k=1, name="conv2", seed=3),
               perm=NHWC)
    s = kit.op(g, "clamp", kit.op(g, "binary", a, b, op="add"), min=0.0, max=6.0)
    g = kit.check_rewrite(fold_transposes, kit.finish(g, kit.conv(g, kit.op(g, "transpose", s, perm=NCHW), 2)))
    assert kit.ops(g) == ["conv2d", "conv2d", "binary", "clamp", "conv2d"]


def test_a_chain_merges_into_one_transpose(kit):
    g, (x,) = kit.graph_with_inputs((2, 3, 4, 5))
    y = kit.op(g, "transpose", kit.op(g, "transpose", x, perm=(1, 0, 2, 3)), perm=(0, 2, 1, 3))
    g = kit.check_rewrite(fold_transposes, kit.finish(g, y))
    (t,) = g.nodes_of("transpose")
    assert t.attrs["perm"] == (1, 2, 0, 3) and t.inputs[0] is x


def test_an_identity_transpose_goes(kit):
    g, (x,) = kit.graph_with_inputs((2, 3))
    g = kit.check_rewrite(fold_transposes, kit.finish(g, kit.op(g, "unary", kit.op(g, "transpose", x, perm=(0, 1)),
                                                                op="abs")))
    assert kit.ops(g) == ["unary"]


def test_transposes_sink_through_activations_and_constant_operands(kit):
    def middle(g, v):
        v = kit.op(g, "clamp", v, min=0.0, max=6.0)
        v = kit.op(g, "unary", v, op="tanh")
        v = kit.op(g, "leaky_relu", v, alpha=0.1)
        v = kit.op(g, "binary", v, kit.const(g, (4,), 7), op="add")           # per-channel in NHWC: last axis
        v = kit.op(g, "binary", kit.const(g, (4, 1, 1), 8), v, op="sub")      # constant first, rank 3
        return kit.op(g, "binary", v, g.const(np.float32(2)), op="mul")       # scalar
    g = kit.check_rewrite(fold_transposes, nhwc_sandwich(kit, middle))
    assert "transpose" not in kit.ops(g)


def test_transposes_sink_through_binary_of_two_transposed_operands_and_concat(kit):
    g, (x, y) = kit.graph_with_inputs((1, 3, 4, 5), (1, 3, 4, 5))
    a, b = (kit.op(g, "transpose", v, perm=NHWC) for v in (x, y))
    s = kit.op(g, "binary", a, b, op="max")
    c = kit.op(g, "concat", s, kit.op(g, "transpose", kit.conv(g, x, 2, k=1), perm=NHWC), axis=3)
    g = kit.check_rewrite(fold_transposes, kit.finish(g, kit.op(g, "transpose", c, perm=NCHW)))
    assert "transpose" not in kit.ops(g)
    assert g.nodes_of("concat")[0].attrs["axis"] == 1


def test_transposes_sink_through_pad_slice_reduce_and_softmax(kit):
    def middle(g, v):
        v = kit.op(g, "pad", v, pads=((0, 0), (1, 2), (0, 1), (0, 0)))
        v = kit.op(g, "strided_slice", v, begin=(0, 1, 0, 0), end=(1, 9, 7, 4), strides=(1, 2, 1, 1))
        v = kit.op(g, "softmax", v, axis=3)
        return kit.op(g, "reduce", v, op="max", axes=(1,), keepdims=True)
    g = kit.check_rewrite(fold_transposes, nhwc_sandwich(kit, middle))
    assert "transpose" not in kit.ops(g)
    assert g.nodes_of("pad")[0].attrs["pads"] == ((0, 0), (0, 0), (1, 2), (0, 1))


def test_a_transpose_sinks_through_a_reduce_that_drops_axes(kit):
    g, (x,) = kit.graph_with_inputs((2, 3, 4, 5))
    y = kit.op(g, "reduce", kit.op(g, "transpose", x, perm=NHWC), op="mean", axes=(1, 2), keepdims=False)
    g = kit.check_rewrite(fold_transposes, kit.finish(g, y))
    assert kit.ops(g) == ["reduce"] and g.nodes_of("reduce")[0].attrs["axes"] == (2, 3)


def test_a_transpose_with_a_second_user_does_not_move(kit):
    g, (x,) = kit.graph_with_inputs((1, 3, 4, 5))
    t = kit.op(g, "transpose", x, perm=NHWC)
    y = kit.op(g, "transpose", kit.op(g, "clamp", t, min=0.0), perm=NCHW)
    kit.check_untouched(fold_transposes, kit.finish(g, y, kit.op(g, "unary", t, op="abs")))


def test_a_transposed_graph_output_does_not_move(kit):
    g, (x,) = kit.graph_with_inputs((1, 3, 4, 5))
    t = kit.op(g, "transpose", x, perm=NHWC)
    kit.check_untouched(fold_transposes, kit.finish(g, kit.op(g, "clamp", t, min=0.0), t))


def test_binary_with_an_untransposed_run_time_operand_is_left_alone(kit):
    g, (x, y) = kit.graph_with_inputs((1, 3, 4, 5), (4,))
    z = kit.op(g, "binary", kit.op(g, "transpose", x, perm=(0, 1, 3, 2)), y, op="add")
    kit.check_untouched(fold_transposes, kit.finish(g, z))


ELEMENTWISE = [
    lambda kit, g, v, rank, seed: kit.op(g, "clamp", v, min=-0.5, max=1.0),
    lambda kit, g, v, rank, seed: kit.op(g, "unary", v, op="abs"),
    lambda kit, g, v, rank, seed: kit.op(g, "leaky_relu", v, alpha=0.2),
    lambda kit, g, v, rank, seed: kit.op(g, "binary", v, kit.const(g, v.shape[rank - 1:], seed), op="mul"),
    lambda kit, g, v, rank, seed: kit.op(g, "binary", kit.const(g, (1,) + v.shape[2:], seed), v, op="sub"),
]


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_random_transpose_chains_through_elementwise_ops_cancel(kit, data):
    rank = data.draw(st.integers(2, 4), label="rank")
    shape = tuple(data.draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank), label="shape"))
    perm = tuple(data.draw(st.permutations(range(rank)), label="perm"))
    steps = data.draw(st.lists(st.integers(0, len(ELEMENTWISE) - 1), max_size=4), label="ops")
    g, (x,) = kit.graph_with_inputs(shape)
    v = kit.op(g, "transpose", x, perm=perm)
    for i, k in enumerate(steps):
        v = ELEMENTWISE[k](kit, g, v, rank, seed=i)
    v = kit.op(g, "transpose", v, perm=tuple(int(i) for i in np.argsort(perm)))
    kit.finish(g, kit.op(g, "unary", v, op="neg"))
    g = kit.check_rewrite(fold_transposes, g)
    assert "transpose" not in kit.ops(g)
