"""Fuse a clamp (ReLU, ReLU6, Clip) into the conv2d, conv2d_transpose, matmul or binary that feeds it.

clamp(conv2d(x, w, b), lo, hi)             -> conv2d(x, w, b, fused_clamp=(lo, hi))
clamp(op(..., fused_clamp=c), lo, hi)      -> op(..., fused_clamp=c then (lo, hi))
clamp(clamp(x, lo1, hi1), lo2, hi2)        -> clamp(x, clamp(lo1, lo2, hi2), clamp(hi1, lo2, hi2))
Why: the KPU applies its activation at the end of every layer (conv -> batch norm -> activation ->
pool, KPU spec), and nncase's fuse_clamp does the same on the float graph; a standalone clamp would
be a CPU op. The producer is updated in place and keeps its name (its output type is unchanged).
Only self-contained matches: the producer's output feeds nothing but the clamp. Clamps of integer
tensors are left alone. LeakyReLU is not fused here: the KPU legalization folds it into the
layer's activation table.
Order: last in GENERIC, after fold_batch_norm_into_conv2d (a batch norm cannot be folded through a
fused clamp) and fold_transposes (which removes the transposes between a conv and its activation).
"""
from __future__ import annotations

import math

import numpy as np

from compiler.ir import Graph, Node, Value
from passes.manager import rewrite, used_only_by

PRODUCERS = ("conv2d", "conv2d_transpose", "matmul", "binary")
NO_CLAMP = (-math.inf, math.inf)


def fuse_clamp(graph: Graph) -> bool:
    """Fuse clamps into their producers' fused_clamp and merge consecutive clamps."""
    def clamp(node: Node) -> Value | None:
        x = node.inputs[0]
        bounds = (node.attrs["min"], node.attrs["max"])
        if not np.issubdtype(x.dtype, np.floating):
            return None
        producer = x.producer
        if producer.op == "clamp":                                   # clamp(clamp(x)) -> clamp(x)
            inner = (producer.attrs["min"], producer.attrs["max"])
            lo, hi = _compose(inner, bounds)
            out = graph.add("clamp", [producer.inputs[0]], name=node.name, before=node, min=lo, max=hi).output
            out.quant = node.output.quant
            return out
        if producer.op in PRODUCERS and used_only_by(graph, x, node):  # clamp(op(...)) -> op(..., fused_clamp)
            fused = _compose(producer.attrs["fused_clamp"], bounds)
            producer.attrs = {**producer.attrs, "fused_clamp": fused}
            x.quant = node.output.quant or x.quant
            return x
        return None

    return rewrite(graph, [("clamp", clamp)])


def _compose(first: tuple[float, float], then: tuple[float, float]) -> tuple[float, float]:
    """(lo, hi) of the single clamp equal to clamping to `first` and then to `then`."""
    lo2, hi2 = then
    return tuple(float(min(max(v, lo2), hi2)) for v in first)
