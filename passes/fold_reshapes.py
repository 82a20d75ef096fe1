"""Merge reshape chains, drop reshapes that change nothing, and turn data-free transposes into reshapes.

reshape(reshape(x, s1), s2)   -> reshape(x, s2)
reshape(x, x.shape)           -> x
transpose(x, p)               -> reshape(x, p(x.shape))   when p only moves dimensions of size 1
Why: importers express squeeze/unsqueeze/flatten as reshapes and the TFLite importer wraps a 1x1
spatial result in NHWC transposes ([1,C,1,1] -> [1,1,1,C]); none of these move data in row-major
order, and a reshape chain collapses to one node (or none) the KPU passes can ignore.
Order: after fold_transposes (a transpose pair should cancel before either half becomes a reshape;
both orders reach the same graph), before the KPU legalization.
"""
from __future__ import annotations

from compiler.ir import Graph, Node, Value
from passes.manager import rewrite


def fold_reshapes(graph: Graph) -> bool:
    """Collapse reshape chains and identity reshapes; rewrite size-1-only transposes as reshapes."""
    def reshape(node: Node) -> Value | None:
        x = node.inputs[0]
        if x.shape == node.output.shape:
            return x                                                      # reshape(x, x.shape) -> x
        if x.producer.op == "reshape":                                    # reshape(reshape(x)) -> reshape(x)
            source = x.producer.inputs[0]
            if source.shape == node.output.shape:
                return source
            out = graph.add("reshape", [source], name=node.name, before=node, shape=node.output.shape).output
            out.quant = node.output.quant
            return out
        return None

    def transpose(node: Node) -> Value | None:
        x, perm = node.inputs[0], node.attrs["perm"]
        moved = [p for p in perm if x.shape[p] != 1]
        if moved != sorted(moved):
            return None
        # Row-major order of the elements is unchanged: only size-1 dimensions move.
        out = graph.add("reshape", [x], name=node.name, before=node, shape=node.output.shape).output
        out.quant = node.output.quant
        return out

    return rewrite(graph, [("reshape", reshape), ("transpose", transpose)])
