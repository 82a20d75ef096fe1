"""Recognise hard-swish written out as x * relu6(x + 3) / 6.

(x * clamp(x + 3, 0, 6)) / 6   ->   hard_swish(x)       also * (1/6), either operand order of the muls
Why: Paddle2ONNX (opset < 14) and other exporters spell HardSwish as four ops; quantized, the product
x * relu6(x + 3) spans 6x the output's range and is rounded on that coarse grid, while hard_swish is one
256-entry table (or a step of the KPU activation table).
Only self-contained matches: the sum and the product feed nothing else.
Order: after fuse_clamp (the clamp is then the add's fused_clamp).
"""
from __future__ import annotations

import math

import numpy as np

from compiler.ir import Graph, Node, Value
from passes.manager import rewrite, used_only_by

NO_CLAMP = (-math.inf, math.inf)


def _scalar(v: Value, want: float) -> bool:
    return v.is_constant and v.data.size >= 1 and bool(np.allclose(v.data, want, rtol=1e-6, atol=0))


def _binary(v: Value, op: str) -> Node | None:
    n = v.producer
    return n if n is not None and n.op == "binary" and n.attrs["op"] == op else None


def fuse_hard_swish(graph: Graph) -> bool:
    """Replace (x * clamp(x + 3, 0, 6)) / 6 by hard_swish(x)."""
    def binary(node: Node) -> Value | None:
        a = node.attrs
        if tuple(a["fused_clamp"]) != NO_CLAMP or a["op"] not in ("div", "mul"):
            return None
        pairs = [node.inputs] if a["op"] == "div" else [node.inputs, node.inputs[::-1]]
        for product, k in pairs:
            if not _scalar(k, 6.0 if a["op"] == "div" else 1 / 6) or (mul := _binary(product, "mul")) is None:
                continue
            if tuple(mul.attrs["fused_clamp"]) != NO_CLAMP or not used_only_by(graph, product, node):
                continue
            for x, shifted in (mul.inputs, mul.inputs[::-1]):
                add = _binary(shifted, "add")
                if (add is None or tuple(add.attrs["fused_clamp"]) != (0.0, 6.0) or not used_only_by(graph, shifted, mul)
                        or x.shape != node.output.shape):
                    continue
                if any(i is x for i in add.inputs) and any(_scalar(i, 3.0) for i in add.inputs if i is not x):
                    return graph.add("unary", [x], name=node.name, before=node, op="hard_swish").output
        return None

    return rewrite(graph, [("binary", binary)])
