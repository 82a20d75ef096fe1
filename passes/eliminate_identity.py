"""Remove nodes that return their input unchanged.

reshape(x, x.shape)                        -> x
strided_slice(x, 0, dims, 1)               -> x
pad(x, all zeros)                          -> x
concat(x)                                  -> x
x + 0, 0 + x, x - 0, x * 1, 1 * x, x / 1   -> x     (the constant does not broadcast x larger)
clamp(x, -inf, inf)                        -> x
cast(x, x.dtype)                           -> x
Why: importers translate ONNX Identity-like idioms (Flatten of a flat tensor, Slice to the end,
Pad by 0, Concat of one input, Dropout's scale 1, Clip without bounds) one op each; every such
node is a CPU op and a buffer for nothing, and it hides patterns from the fusing passes.
A binary op with a fused_clamp is not an identity.
Order: early in GENERIC (after fold_constants), so the fusing passes see producer and consumer
adjacent.
"""
from __future__ import annotations

import math

import numpy as np

from compiler.ir import Graph, Node, Value
from passes.manager import rewrite

NO_CLAMP = (-math.inf, math.inf)
# (op, slot of x, the constant's value): x op c or c op x that gives x.
NEUTRAL = {("add", 0): 0, ("add", 1): 0, ("sub", 0): 0, ("mul", 0): 1, ("mul", 1): 1, ("div", 0): 1}


def eliminate_identity(graph: Graph) -> bool:
    """Replace identity-like nodes by their input."""
    return rewrite(graph, RULES)


def _same_type(node: Node, x: Value) -> Value | None:
    return x if node.output.type == x.type else None


def _reshape(node: Node) -> Value | None:
    return _same_type(node, node.inputs[0])                          # reshape(x, x.shape) -> x


def _strided_slice(node: Node) -> Value | None:
    x, a = node.inputs[0], node.attrs                                # x[0:dims:1] -> x
    whole = all(b == 0 and e == d and s == 1 for b, e, s, d in zip(a["begin"], a["end"], a["strides"], x.shape))
    return x if whole else None


def _pad(node: Node) -> Value | None:
    return node.inputs[0] if all(tuple(p) == (0, 0) for p in node.attrs["pads"]) else None  # pad(x, 0) -> x


def _concat(node: Node) -> Value | None:
    return node.inputs[0] if len(node.inputs) == 1 else None        # concat(x) -> x


def _binary(node: Node) -> Value | None:
    if tuple(node.attrs["fused_clamp"]) != NO_CLAMP:
        return None
    for slot, x in enumerate(node.inputs):                           # x + 0, x * 1, x / 1 … -> x
        c = node.inputs[1 - slot]
        neutral = NEUTRAL.get((node.attrs["op"], slot))
        if neutral is not None and c.is_constant and np.all(c.data == neutral) and node.output.type == x.type:
            return x
    return None


def _clamp(node: Node) -> Value | None:
    bounds = (node.attrs["min"], node.attrs["max"])
    return node.inputs[0] if bounds == NO_CLAMP else None           # clamp(x, -inf, inf) -> x


def _cast(node: Node) -> Value | None:
    return _same_type(node, node.inputs[0])                          # cast(x, x.dtype) -> x


RULES = [("reshape", _reshape), ("strided_slice", _strided_slice), ("pad", _pad), ("concat", _concat),
         ("binary", _binary), ("clamp", _clamp), ("cast", _cast)]
