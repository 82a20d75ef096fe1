"""Running passes: a group to a fixpoint (nncase's pass of transforms), and local rule lists (tinygrad).

A pass is a function `(graph, **kw) -> bool` that mutates the graph in place and says whether it
changed anything. A rule is `(op, fn)`: `fn(node)` returns the Value that replaces the node's output,
or None when it does not apply. Rules never delete nodes; `eliminate_dead_code` sweeps after them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from compiler.errors import KpucError
from compiler.ir import Graph, Node, Value

Pass = Callable[..., bool]
Rule = tuple[str, Callable[[Node], "Value | None"]]


def run_to_fixpoint(graph: Graph, passes: Iterable[Pass], *, limit: int = 32, lint: bool = False,
                    dump: Callable[[Graph, str], None] | None = None) -> bool:
    """Run `passes` in order, again and again, until a whole round changes nothing.

    `lint` validates the graph after every pass that changed it (tests, `-v`); `dump(graph, stage)`
    sees the graph after each such pass, with stage `<step>_<pass name>` (`--dump-ir`).
    Raises KpucError if the group still changes the graph after `limit` rounds: two rewrites undo
    each other, which is a bug in the passes, not in the model.
    """
    passes, step, changed_any = list(passes), 0, False
    for _ in range(limit):
        changed_now = []
        for p in passes:
            if p(graph):
                step += 1
                changed_now.append(p.__name__)
                if lint:
                    try:
                        graph.validate()
                    except KpucError as e:
                        raise KpucError(f"after pass {p.__name__}: {e}") from e
                if dump is not None:
                    dump(graph, f"{step:02d}_{p.__name__}")
        if not changed_now:
            return changed_any
        changed_any = True
    raise KpucError(f"passes did not settle after {limit} rounds; the last round changed: "
                    + ", ".join(changed_now))


def rewrite(graph: Graph, rules: Iterable[Rule], *, limit: int = 64) -> bool:
    """Apply `(op, fn)` rules to every node, in graph order, until none fires; then sweep dead nodes.

    Rules are indexed by op, so a node is only offered to the rules of its own op, in list order.
    A rule may add nodes (before the node it rewrites) and return one of their outputs, or return an
    existing value; the node's consumers and the graph outputs move over to it. A rule that returns
    None must not have added anything (match first, then build), or the sweep would never settle.
    """
    by_op: dict[str, list] = {}
    for op, fn in rules:
        by_op.setdefault(op, []).append(fn)
    changed = False
    for _ in range(limit):
        fired = False
        for node in graph.nodes_of(*by_op):
            if len(node.outputs) != 1 or not is_used(graph, node.output):
                continue  # already replaced in this sweep, or dead
            for fn in by_op[node.op]:
                new = fn(node)
                if new is not None and new is not node.output:
                    graph.replace_all_uses(node.output, new)
                    fired = True
                    break
        # Sweep now, so the next round's rules see true user counts.
        fired |= graph.eliminate_dead_code()
        if not fired:
            return changed
        changed = True
    raise KpucError(f"rewrite rules did not settle after {limit} sweeps")


def is_used(graph: Graph, value: Value) -> bool:
    """Whether a node reads `value` or the graph returns it."""
    return bool(value.users) or value in graph.outputs


def used_only_by(graph: Graph, value: Value, node: Node) -> bool:
    """Whether `node` is the one consumer of `value` (the graph does not return it): safe to fuse away."""
    return value.user_nodes() == [node] and value not in graph.outputs
