"""Recognise LeakyReLU written as a max (or min) of x and a scaled x.

max(x, x * alpha)   -> leaky_relu(x, alpha)      0 <= alpha <= 1   (either operand order)
min(x, x * alpha)   -> leaky_relu(x, alpha)      alpha >= 1
Why: TensorFlow's tf.nn.leaky_relu before TF 1.13, Keras exports through tf2onnx and some converters
emit the two-op form; the KPU applies LeakyReLU for free in its activation table, so the KPU
legalization needs to see it as one op.
alpha must be one scalar (a constant whose elements are all equal) that does not broadcast x to a
larger shape. Only self-contained matches: the product feeds nothing but the max/min.
Order: before fuse_clamp in GENERIC (a clamp fused into the max or the mul hides the pattern) and
before the KPU legalization.
"""
from __future__ import annotations

import math

import numpy as np

from compiler.ir import Graph, Node, Value
from passes.manager import rewrite, used_only_by

NO_CLAMP = (-math.inf, math.inf)


def fuse_leaky_relu(graph: Graph) -> bool:
    """Replace max(x, alpha*x) / min(x, alpha*x) by leaky_relu(x, alpha)."""
    def binary(node: Node) -> Value | None:
        if node.attrs["op"] not in ("max", "min") or _fused(node):
            return None
        if not np.issubdtype(node.output.dtype, np.floating):
            return None
        for x, product in (node.inputs, node.inputs[::-1]):
            alpha = _scale_of(graph, product, x, node)
            if alpha is None:
                continue
            if (node.attrs["op"] == "max" and 0 <= alpha <= 1) or (node.attrs["op"] == "min" and alpha >= 1):
                out = graph.add("leaky_relu", [x], name=node.name, before=node, alpha=alpha).output
                out.quant = node.output.quant
                return out
        return None

    return rewrite(graph, [("binary", binary)])


def _fused(node: Node) -> bool:
    return tuple(node.attrs["fused_clamp"]) != NO_CLAMP


def _scale_of(graph: Graph, product: Value, x: Value, user: Node) -> float | None:
    """alpha when `product` is x * alpha (a scalar constant) feeding only `user`, else None."""
    mul = product.producer
    if mul.op != "binary" or mul.attrs["op"] != "mul" or _fused(mul) or not used_only_by(graph, product, user):
        return None
    if product.shape != x.shape:
        return None
    for a, c in (mul.inputs, mul.inputs[::-1]):
        if a is x and c.is_constant and c.data.size >= 1 and np.all(c.data == c.data.flat[0]):
            return float(c.data.flat[0])
    return None
