"""Helpers the K210 legalization passes share: activation chains, spatial pads and crops, slice algebra.

Not a pass. Matching helpers return nodes; building helpers add nodes before an anchor and return
the new Value; nobody deletes anything (the passes rewire and `eliminate_dead_code` sweeps).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from compiler.ir import Graph, Node, Value
from compiler.ops import has_trait
from passes.manager import used_only_by
from targets.k210.constraints import activation_step, kpu_pool_type, why_not_kpu_layer

Pads2 = tuple[tuple[int, int], tuple[int, int]]


def source_name(node: Node) -> str:
    """The source node a rewritten conv descends from (meta["source"]), so names stay short and traceable."""
    return node.meta.get("source", node.name)


def derive(graph: Graph, old: Node, op: str, inputs, *, suffix: str = "", before: Node, **attrs) -> Node:
    """Add the node that replaces `old`, named after its source node (`conv1` -> `conv1_kpu`)."""
    node = graph.add(op, inputs, name=source_name(old) + suffix, before=before, **attrs)
    node.meta["source"] = source_name(old)
    node.meta["kpu_rewrites"] = old.meta.get("kpu_rewrites", ())  # which passes reshaped it (kpuc check)
    return node


def sole_user(graph: Graph, value: Value) -> Node | None:
    """The one node reading `value`, if the graph does not also return it (a match may swallow it)."""
    users = value.user_nodes()
    return users[0] if len(users) == 1 and used_only_by(graph, value, users[0]) else None


def activation_chain(graph: Graph, value: Value) -> tuple[list[Node], tuple]:
    """The element-wise activations applied to `value` one after another, each the sole user of the last.

    Returns the nodes and their KPU activation steps; the last node's output is the chain's result.
    A node marked stay_float (keep_output_sigmoid_float) ends the chain: it runs in float after the layer.
    """
    nodes, steps = [], []
    while ((user := sole_user(graph, value)) is not None and "stay_float" not in user.meta
           and (step := activation_step(user)) is not None):
        nodes.append(user)
        steps.append(step)
        value = user.output
    return nodes, tuple(steps)


def chain_end(value: Value, chain: list[Node]) -> Value:
    """The value a chain produces (`value` itself for an empty chain)."""
    return chain[-1].output if chain else value


def rebuild_chain(graph: Graph, value: Value, chain: list[Node], before: Node) -> Value:
    """Re-create the activation nodes of `chain` on top of `value` (element-wise ops commute with
    pads, crops and batch/space moves, so a pass can move a layout op behind them)."""
    for n in chain:
        value = graph.add(n.op, [value], name=n.name, before=before, **n.attrs).output
    return value


def is_zero_pad(node: Node) -> bool:
    """A constant-0 pad of the two spatial axes only, padding (never cropping)."""
    a = node.attrs
    return (node.op == "pad" and a["mode"] == "constant" and a["value"] == 0.0
            and len(a["pads"]) == 4 and tuple(a["pads"][0]) == (0, 0) and tuple(a["pads"][1]) == (0, 0)
            and all(p >= 0 for pair in a["pads"][2:] for p in pair))


def pad_spatial(graph: Graph, value: Value, pads: Pads2, *, name: str, before: Node) -> Value:
    """`value` with zeros added around H and W (negative amounts crop); merges into a zero pad that
    only feeds this one, so a conv never sits behind two CPU pads."""
    if all(p == 0 for pair in pads for p in pair):
        return value
    src = value.producer
    if is_zero_pad(src) and all(p >= 0 for pair in pads for p in pair) and len(value.user_nodes()) == 1 \
            and value not in graph.outputs:
        old = src.attrs["pads"][2:]
        pads = tuple((a + c, b + d) for (a, b), (c, d) in zip(old, pads))
        value = src.inputs[0]
    return graph.add("pad", [value], name=name, before=before,
                     pads=((0, 0), (0, 0)) + tuple(tuple(p) for p in pads), mode="constant", value=0.0).output


def crop_spatial(graph: Graph, value: Value, crops: Pads2, *, name: str, before: Node, strides=(1, 1)) -> Value:
    """A strided_slice dropping crops[axis] = (before, after) pixels of H and W, keeping every
    stride-th of the rest (`value` itself when there is nothing to do)."""
    n, c, h, w = value.shape
    if strides == (1, 1) and all(p == 0 for pair in crops for p in pair):
        return value
    begin = (0, 0, crops[0][0], crops[1][0])
    end = (n, c, h - crops[0][1], w - crops[1][1])
    return graph.add("strided_slice", [value], name=name, before=before, begin=begin, end=end,
                     strides=(1, 1) + tuple(strides)).output


class Slice(NamedTuple):
    """A positive-stride strided_slice as (begin, stride, length) per axis."""
    begin: tuple[int, ...]
    stride: tuple[int, ...]
    length: tuple[int, ...]

    @classmethod
    def of(cls, node: Node) -> Slice | None:
        """The slice a strided_slice node takes, or None (another op, or a negative stride)."""
        a = node.attrs
        if node.op != "strided_slice" or any(s < 1 for s in a["strides"]):
            return None
        return cls(tuple(a["begin"]), tuple(a["strides"]), node.output.shape)

    def then(self, outer: Slice) -> Slice:
        """This slice followed by `outer`: element k of the result is x[b + (b2 + k*s2)*s]."""
        return Slice(tuple(b + b2 * s for b, b2, s in zip(self.begin, outer.begin, self.stride)),
                     tuple(s * s2 for s, s2 in zip(self.stride, outer.stride)), outer.length)

    def attrs(self) -> dict:
        """strided_slice attributes (begin, end, strides) taking this slice."""
        end = tuple(b + (n - 1) * s + 1 if n else b for b, s, n in zip(self.begin, self.stride, self.length))
        return {"begin": self.begin, "end": end, "strides": self.stride}

    def is_spatial(self, shape) -> bool:
        """Whether N and C are kept whole."""
        return self.begin[:2] == (0, 0) and self.stride[:2] == (1, 1) and self.length[:2] == tuple(shape[:2])


def pool_after(graph: Graph, value: Value, in_shape, out_channels: int, kernel: int,
               depthwise: bool) -> tuple[Node, str] | None:
    """A reduce_window2d that alone reads `value` and that the KPU layer can do as its pool type."""
    user = sole_user(graph, value)
    if user is None or user.op != "reduce_window2d" or (pool := kpu_pool_type(user)) is None:
        return None
    if why_not_kpu_layer(in_shape, out_channels, kernel, depthwise=depthwise, pool=pool) is not None:
        return None
    return user, pool

def moves_data(node: Node) -> bool:
    return has_trait(node, "data_movement")


def reaches_only_outputs(graph: Graph, value: Value, through: Callable[[Node], bool] = moves_data) -> bool:
    """Whether every path from `value` ends at a graph output, through nodes `through` accepts only (by
    default layout ops: the value reaches the outputs as it is)."""
    frontier, outputs = [value], set(graph.outputs)
    while frontier:
        v = frontier.pop()
        users = v.user_nodes()
        if not users and v not in outputs:
            return False
        for u in users:
            if not through(u):
                return False
            frontier.extend(u.outputs)
    return True
