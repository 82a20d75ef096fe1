"""eliminate_identity: nodes that return their input unchanged are removed."""
import math

import numpy as np
import pytest

from passes.eliminate_identity import eliminate_identity

SHAPE = (2, 3, 4)


def identity_node(kit, g, x, kind):
    zeros, ones = g.const(np.zeros((3, 1), np.float32)), g.const(np.float32(1))
    return {
        "reshape": lambda: kit.op(g, "reshape", x, shape=SHAPE),
        "strided_slice": lambda: kit.op(g, "strided_slice", x, begin=(0, 0, 0), end=SHAPE, strides=(1, 1, 1)),
        "pad": lambda: kit.op(g, "pad", x, pads=((0, 0),) * 3, mode="reflect"),
        "concat": lambda: kit.op(g, "concat", x, axis=1),
        "x+0": lambda: kit.op(g, "binary", x, zeros, op="add"),
        "0+x": lambda: kit.op(g, "binary", zeros, x, op="add"),
        "x-0": lambda: kit.op(g, "binary", x, zeros, op="sub"),
        "x*1": lambda: kit.op(g, "binary", x, ones, op="mul"),
        "1*x": lambda: kit.op(g, "binary", ones, x, op="mul"),
        "x/1": lambda: kit.op(g, "binary", x, ones, op="div"),
        "clamp": lambda: kit.op(g, "clamp", x, min=-math.inf, max=math.inf),
        "cast": lambda: kit.op(g, "cast", x, dtype="float32"),
    }[kind]()


@pytest.mark.parametrize("kind", ["reshape", "strided_slice", "pad", "concat", "x+0", "0+x", "x-0", "x*1", "1*x",
                                  "x/1", "clamp", "cast"])
def test_an_identity_node_goes(kit, kind):
    g, (x,) = kit.graph_with_inputs(SHAPE)
    y = kit.op(g, "unary", identity_node(kit, g, kit.op(g, "unary", x, op="abs"), kind), op="neg")
    g = kit.check_rewrite(eliminate_identity, kit.finish(g, y))
    assert kit.ops(g) == ["unary", "unary"]


def test_an_identity_graph_output_is_replaced_by_its_input(kit):
    g, (x,) = kit.graph_with_inputs(SHAPE)
    a = kit.op(g, "unary", x, op="abs")
    g = kit.check_rewrite(eliminate_identity, kit.finish(g, kit.op(g, "clamp", a)))
    assert g.outputs == [a]


@pytest.mark.parametrize("build", [
    lambda kit, g, x: kit.op(g, "binary", x, g.const(np.zeros((5, 1, 1, 1), np.float32)), op="add"),  # broadcasts
    lambda kit, g, x: kit.op(g, "binary", g.const(np.float32(0)), x, op="sub"),                        # 0 - x
    lambda kit, g, x: kit.op(g, "binary", g.const(np.float32(1)), x, op="div"),                        # 1 / x
    lambda kit, g, x: kit.op(g, "binary", x, g.const(np.float32(1)), op="mul", fused_clamp=(0.0, 1.0)),
    lambda kit, g, x: kit.op(g, "binary", x, g.const(np.array([1, 2, 1, 1], np.float32)), op="mul"),
    lambda kit, g, x: kit.op(g, "strided_slice", x, begin=(0, 0, 0), end=(2, 3, 4), strides=(1, 1, 2)),
    lambda kit, g, x: kit.op(g, "pad", x, pads=((0, 0), (0, 1), (0, 0))),
    lambda kit, g, x: kit.op(g, "clamp", x, min=-math.inf, max=1e38),
    lambda kit, g, x: kit.op(g, "cast", x, dtype="int32"),
])
def test_near_identities_are_left_alone(kit, build):
    g, (x,) = kit.graph_with_inputs(SHAPE)
    kit.check_untouched(eliminate_identity, kit.finish(g, build(kit, g, kit.op(g, "unary", x, op="abs"))))
