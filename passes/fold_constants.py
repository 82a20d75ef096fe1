"""Evaluate every node whose inputs are all constants, once, at compile time.

op(const a, const b, ...) -> const(op(a, b, ...))        (every output of a multi-output op)
Why: importers leave weight arithmetic in the graph (a TFLite weight computed by a transpose, ONNX
Shape/Gather chains, dequantized fp16 weights, the scaled weights other passes build); the KPU and
the later passes want plain constant weights. The kernels are the executor's, so the folded value is
bit-identical to what running the graph would give.
Order: first in GENERIC, so the other passes see constants; it runs again in every round.
"""
from __future__ import annotations

import numpy as np

import compiler.kernels.all  # noqa: F401  (fills KERNELS)
from compiler.ir import Graph, Node
from compiler.kernels import KERNELS
from passes.manager import is_used


def fold_constants(graph: Graph) -> bool:
    """Replace each node with constant inputs (and a kernel) by constant nodes holding its results."""
    changed = False
    for node in list(graph.nodes):  # in order, so a chain of constant ops folds in one sweep
        if _match(graph, node):
            _rewrite(graph, node)
            changed = True
    return changed | graph.eliminate_dead_code()


def _match(graph: Graph, node: Node) -> bool:
    return (node.op not in ("input", "constant") and node.op in KERNELS and bool(node.inputs)
            and all(v.is_constant for v in node.inputs) and any(is_used(graph, v) for v in node.outputs))


def _rewrite(graph: Graph, node: Node) -> None:
    results = KERNELS[node.op](*(v.data for v in node.inputs), **node.attrs)
    results = results if isinstance(results, tuple) else (results,)
    for v, r in zip(node.outputs, results, strict=True):
        folded = graph.const(np.asarray(r, dtype=v.dtype).reshape(v.shape), name=v.name, quant=v.quant,
                             before=node)
        graph.replace_all_uses(v, folded)
