"""run_to_fixpoint and rewrite: fixpoint, lint, dump, the round limit."""
import pytest

from compiler.errors import KpucError
from passes.manager import rewrite, run_to_fixpoint, used_only_by


def mul_by_one_graph(kit):
    g, (x,) = kit.graph_with_inputs((2, 3))
    one = g.const(1.0, dtype="float32", name="one")
    y = kit.op(g, "binary", kit.op(g, "binary", x, one, op="mul"), one, op="mul")
    return kit.finish(g, kit.op(g, "unary", y, op="abs"))


def drop_mul_by_one(graph):
    """A one-rule rewrite used as a pass: x * 1 -> x."""
    def rule(node):
        c = node.inputs[1]
        return node.inputs[0] if node.attrs["op"] == "mul" and c.is_constant and c.data == 1 else None
    return rewrite(graph, [("binary", rule)])


def test_rewrite_runs_rules_to_a_fixpoint(kit):
    g = kit.check_rewrite(drop_mul_by_one, mul_by_one_graph(kit))
    assert kit.ops(g) == ["unary"]


def test_rewrite_without_a_firing_rule_changes_nothing(kit):
    kit.check_untouched(lambda g: rewrite(g, [("binary", lambda n: None), ("softmax", lambda n: 1 / 0)]),
                        mul_by_one_graph(kit))


def test_run_to_fixpoint_runs_rounds_until_nothing_changes_and_dumps_each_change(kit):
    g = mul_by_one_graph(kit)
    calls, dumps = [], []

    def counting(graph):
        calls.append(len(graph.nodes))
        return False

    assert run_to_fixpoint(g, [drop_mul_by_one, counting], lint=True,
                           dump=lambda graph, stage: dumps.append((stage, kit.ops(graph)))) is True
    assert dumps == [("01_drop_mul_by_one", ["unary"])]
    assert len(calls) == 2  # one round that changed, one that did not
    assert run_to_fixpoint(g, [drop_mul_by_one, counting]) is False


def test_run_to_fixpoint_lint_names_the_pass_that_broke_the_graph(kit):
    def breaks(graph):
        graph.outputs[0].producer.attrs = {"op": "no_such_op"}
        return True

    with pytest.raises(KpucError, match="after pass breaks"):
        run_to_fixpoint(mul_by_one_graph(kit), [breaks], lint=True)


def test_run_to_fixpoint_stops_passes_that_never_settle(kit):
    with pytest.raises(KpucError, match="did not settle after 3 rounds.*always"):
        run_to_fixpoint(mul_by_one_graph(kit), [lambda g: True, _named("always")], limit=3)


def _named(name):
    def fn(graph):
        return True
    fn.__name__ = name
    return fn


def test_used_only_by_counts_graph_outputs(kit):
    g, (x,) = kit.graph_with_inputs((2,))
    y = kit.op(g, "unary", x, op="abs")
    z = g.add("unary", [y], op="neg")
    kit.finish(g, z.output)
    assert used_only_by(g, y, z)
    g.outputs.append(y)
    assert not used_only_by(g, y, z)
