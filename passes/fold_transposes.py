"""Cancel, merge and drop transposes, moving them down through elementwise ops so that pairs meet.

transpose(x, identity)                  -> x
transpose(transpose(x, p), q)           -> transpose(x, p[q])         (x itself when p[q] is identity)
f(transpose(x, p))                      -> transpose(f(x), p)         f unary, clamp, leaky_relu, cast…
binary(transpose(x, p), c)              -> transpose(binary(x, c'), p)   c' = c expanded, transposed by p^-1
binary(transpose(x, p), transpose(y, p))-> transpose(binary(x, y), p)
concat(transpose(x_i, p), axis=a)       -> transpose(concat(x_i, axis=p[a]), p)
pad, strided_slice, softmax, reduce of transpose(x, p) -> the op on x, axes mapped through p, then p
Why: the TFLite importer wraps every spatial op in NHWC->NCHW and NCHW->NHWC transposes and leaves
elementwise ops in NHWC between them; the KPU has no transpose, so they must all cancel. A transpose
is moved only when it has no other consumer (and is no graph output), so no rule ever adds a
transpose and they only move towards the outputs: the rules terminate.
Order: early in GENERIC, before the passes that fuse across the cancelled pairs (fold_reshapes,
fold_batch_norm_into_conv2d, fold_pad_into_conv2d, fuse_clamp).
"""
from __future__ import annotations

import numpy as np

from compiler.ir import Graph, Node, QuantParam, Value
from compiler.ops import OPS, has_trait, ops_with
from passes.manager import rewrite, used_only_by

# The layout-agnostic ops of the op table, by what their attrs say about axes (compiler/ops.py).
LAYOUT_AGNOSTIC = ops_with("layout_agnostic")
# No attr names an axis: each element alone (one operand) or numpy broadcasting (more operands).
ELEMENTWISE = tuple(op for op in LAYOUT_AGNOSTIC if not OPS[op].axis_attrs and len(OPS[op].operands) == 1)
BROADCASTING = tuple(op for op in LAYOUT_AGNOSTIC if not OPS[op].axis_attrs and len(OPS[op].operands) > 1)
# Ops whose attrs hold one entry per axis.
PER_AXIS_ATTRS = {op: tuple(k for k, kind in OPS[op].axis_attrs.items() if kind == "per_axis")
                  for op in LAYOUT_AGNOSTIC if "per_axis" in OPS[op].axis_attrs.values()}
# Ops with one `axis` attr (several inputs: all must be transposed alike) or sorted `axes` (reduce).
ALONG_AXIS = tuple(op for op in LAYOUT_AGNOSTIC if tuple(OPS[op].axis_attrs.values()) == ("axis",))
ALONG_AXES = tuple(op for op in LAYOUT_AGNOSTIC if tuple(OPS[op].axis_attrs.values()) == ("axes",))


def fold_transposes(graph: Graph) -> bool:
    """Drop identity transposes, merge chains, and sink transposes through elementwise and axis ops."""
    def transposed(v: Value, user: Node) -> Node | None:
        """The transpose producing `v` when `user` is its one consumer."""
        t = v.producer
        return t if t.op == "transpose" and used_only_by(graph, v, user) else None

    def sink(node: Node, inputs: list[Value], perm, **attrs) -> Value:
        """node's op on untransposed `inputs`, then transpose(perm): the value that replaces node's output."""
        out = node.output
        moved = graph.add(node.op, inputs, name=node.name, before=node, **{**node.attrs, **attrs}).output
        moved.quant = _permute_quant(out.quant, _inverse(perm))
        result = graph.add("transpose", [moved], name=f"{node.name}/transpose", before=node, perm=perm).output
        result.quant = out.quant
        return result

    def untranspose(c: Value, perm, anchor: Node) -> Value:
        """The constant that broadcasts against x as `c` does against transpose(x, perm)."""
        # c broadcasts against T(x) as c with leading 1s; T^-1 of that broadcasts against x.
        extra = len(perm) - c.type.rank
        data = np.transpose(c.data.reshape((1,) * extra + c.shape), _inverse(perm))
        return graph.const(data, name=c.name, before=anchor, quant=_permute_quant(c.quant, _inverse(perm), extra))

    def transpose(node: Node) -> Value | None:
        x, perm = node.inputs[0], tuple(node.attrs["perm"])
        if perm == tuple(range(len(perm))):
            return x                                                  # transpose(x, id) -> x
        if x.producer.op == "transpose":                              # transpose(transpose(x, p), q)
            inner = x.producer
            merged = tuple(inner.attrs["perm"][i] for i in perm)
            if merged == tuple(range(len(merged))):
                return inner.inputs[0]
            return graph.add("transpose", [inner.inputs[0]], name=node.name, before=node, perm=merged).output
        return None

    def elementwise(node: Node) -> Value | None:
        if not has_trait(node, "layout_agnostic"):
            return None                                               # e.g. a per-channel quantize
        t = transposed(node.inputs[0], node)
        return sink(node, [t.inputs[0]], t.attrs["perm"]) if t else None  # f(T(x)) -> T(f(x))

    def binary(node: Node) -> Value | None:
        ts = [transposed(v, node) for v in node.inputs]
        perms = list(dict.fromkeys(tuple(t.attrs["perm"]) for t in ts if t))
        if len(perms) != 1:
            return None
        perm = perms[0]
        if not all(t or (v.is_constant and v.type.rank <= len(perm)) for v, t in zip(node.inputs, ts)):
            return None
        inputs = [t.inputs[0] if t else untranspose(v, perm, node) for v, t in zip(node.inputs, ts)]
        return sink(node, inputs, perm)

    def concat(node: Node) -> Value | None:
        ts = [transposed(v, node) for v in node.inputs]
        if not all(ts) or any(tuple(t.attrs["perm"]) != tuple(ts[0].attrs["perm"]) for t in ts):
            return None
        perm = tuple(ts[0].attrs["perm"])
        return sink(node, [t.inputs[0] for t in ts], perm, axis=perm[node.attrs["axis"]])

    def along_axis(node: Node) -> Value | None:
        t = transposed(node.inputs[0], node)
        if not t:
            return None
        perm = tuple(t.attrs["perm"])
        return sink(node, [t.inputs[0]], perm, axis=perm[node.attrs["axis"]])

    def per_axis(node: Node) -> Value | None:
        t = transposed(node.inputs[0], node)
        if not t:
            return None
        perm = tuple(t.attrs["perm"])
        # x's axis j is T(x)'s axis perm^-1[j]; so are its pads / slice bounds.
        moved = {k: tuple(node.attrs[k][i] for i in _inverse(perm)) for k in PER_AXIS_ATTRS[node.op]}
        return sink(node, [t.inputs[0]], perm, **moved)

    def reduce(node: Node) -> Value | None:
        t = transposed(node.inputs[0], node)
        if not t:
            return None
        perm, axes = tuple(t.attrs["perm"]), node.attrs["axes"]
        new_axes = tuple(sorted(perm[a] for a in axes))
        if node.attrs["keepdims"]:
            return sink(node, [t.inputs[0]], perm, axes=new_axes)
        # The kept axes of x, in x's order, must be put in T(x)'s order.
        kept = [perm[i] for i in range(len(perm)) if i not in axes]
        order = sorted(kept)
        return sink(node, [t.inputs[0]], tuple(order.index(k) for k in kept), axes=new_axes)

    rules = [("transpose", transpose)]
    rules += [(op, binary) for op in BROADCASTING]
    rules += [(op, concat if OPS[op].variadic else along_axis) for op in ALONG_AXIS]
    rules += [(op, reduce) for op in ALONG_AXES]
    rules += [(op, per_axis) for op in PER_AXIS_ATTRS]
    rules += [(op, elementwise) for op in ELEMENTWISE]
    return rewrite(graph, rules)


def _inverse(perm) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argsort(perm))


def _permute_quant(q: QuantParam | None, perm, shift: int = 0) -> QuantParam | None:
    """Quant params after prepending `shift` 1s and transpose(perm): a per-channel axis moves with its dim."""
    if q is None or q.axis is None:
        return q
    return QuantParam(q.scale, q.zero_point, list(perm).index(q.axis + shift))
