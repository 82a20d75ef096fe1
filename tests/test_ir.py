"""The IR's own invariants: use-def links, naming, dead code, validation, networkx view."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from compiler.errors import KpucError
from compiler.ir import Graph, TensorType


def small_graph():
    g = Graph()
    x = g.input("x", TensorType((1, 3, 8, 8)))
    w = g.const(np.ones((4, 3, 3, 3), np.float32), name="w")
    b = g.const(np.zeros(4, np.float32), name="b")
    conv = g.add("conv2d", [x, w, b], name="conv", padding=((1, 1), (1, 1)))
    add = g.add("binary", [conv.output, conv.output], op="add", name="add")
    g.outputs = [add.output]
    return g, x, conv, add


def test_types_are_inferred_and_add_x_x_keeps_two_edges():
    g, x, conv, add = small_graph()
    assert conv.output.shape == (1, 4, 8, 8)
    assert add.output.type == TensorType((1, 4, 8, 8), "float32")
    assert conv.output.users == [(add, 0), (add, 1)]
    assert g.nx().number_of_edges(conv.name, add.name) == 2
    g.validate()


def test_assigning_inputs_relinks_users():
    g, x, conv, add = small_graph()
    relu = g.add("clamp", [conv.output], min=0.0, max=float("inf"), before=add)
    add.inputs = [relu.output, conv.output]
    assert conv.output.users == [(relu, 0), (add, 1)]
    assert relu.output.users == [(add, 0)]
    g.validate()


def test_unique_names_and_insertion_point():
    g, x, conv, add = small_graph()
    with g.inserting_before(add):
        a = g.add("unary", [conv.output], op="abs", name="conv")
    assert a.name == "conv_1"
    assert g.nodes.index(a) == g.nodes.index(add) - 1


def test_replace_all_uses_erase_and_dead_code():
    g, x, conv, add = small_graph()
    neg = g.add("unary", [conv.output], op="neg", before=add)
    g.replace_all_uses(conv.output, neg.output)
    assert add.inputs == (neg.output, neg.output)
    with pytest.raises(KpucError):
        g.erase(neg)
    dangling = g.add("unary", [x], op="exp")
    assert g.eliminate_dead_code()
    assert dangling not in g.nodes and conv in g.nodes
    assert not g.eliminate_dead_code()
    g.validate()


def test_validate_catches_shape_mismatch_and_cycles():
    g, x, conv, add = small_graph()
    add.outputs[0].type = TensorType((1, 4, 9, 9))
    with pytest.raises(KpucError, match="has types"):
        g.validate()
    g, x, conv, add = small_graph()
    g.nodes.remove(add)
    g.nodes.insert(g.nodes.index(conv), add)  # add now precedes its operand
    with pytest.raises(KpucError, match="defined later"):
        g.validate()
    g.toposort()
    g.validate()


def test_bad_shapes_raise_kpuc_error_naming_the_op():
    g = Graph()
    a = g.input("a", TensorType((2, 3)))
    b = g.input("b", TensorType((4, 5)))
    with pytest.raises(KpucError, match="matmul"):
        g.add("matmul", [a, b])


def test_multi_output_split_and_printing():
    g = Graph()
    x = g.input("x", TensorType((1, 6, 4, 4)))
    s = g.add("split", [x], axis=1, sizes=(2, 4), name="s")
    g.outputs = list(s.outputs)
    assert [v.shape for v in s.outputs] == [(1, 2, 4, 4), (1, 4, 4, 4)]
    text = str(g)
    assert "%s:0: float32[1,2,4,4], %s:1: float32[1,4,4,4] = split(%x) {axis=1, sizes=(2,4)}" in text
    assert g.to_dot().startswith("digraph")


def test_constants_are_read_only():
    g = Graph()
    c = g.const(np.arange(4, dtype=np.float32))
    with pytest.raises(ValueError):
        c.data[0] = 1


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 20), k=st.sampled_from([1, 2, 3, 5]), s=st.integers(1, 3), p=st.integers(0, 2))
def test_conv_shape_rule_matches_the_formula(h, k, s, p):
    g = Graph()
    x = g.input("x", TensorType((1, 2, h, h)))
    w = g.const(np.zeros((3, 2, k, k), np.float32))
    b = g.const(np.zeros(3, np.float32))
    if h + 2 * p < k:
        with pytest.raises(KpucError):
            g.add("conv2d", [x, w, b], strides=(s, s), padding=((p, p), (p, p)))
        return
    conv = g.add("conv2d", [x, w, b], strides=(s, s), padding=((p, p), (p, p)))
    assert conv.output.shape[2] == (h + 2 * p - k) // s + 1


def test_clone_is_independent_and_keeps_names_quant_and_meta():
    from compiler.ir import QuantParam
    g, x, conv, add = small_graph()
    conv.meta["why_not_kpu"] = "test"
    conv.output.quant = QuantParam(0.5, 3)
    c = g.clone()
    c.validate()
    assert str(c) == str(g)
    cc = c.node("conv")
    assert cc is not conv and cc.meta == {"why_not_kpu": "test"} and cc.output.quant == QuantParam(0.5, 3)
    c.node("add").attrs["op"] = "mul"
    assert add.attrs["op"] == "add"
