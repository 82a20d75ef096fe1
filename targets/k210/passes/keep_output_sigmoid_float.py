"""Keep an output's final sigmoid in float on the CPU, fed by its (uint8) logits dequantized.

sigmoid(x) -> [reshape / transpose / concat ...] -> output   ==>   the same nodes, sigmoid meta["stay_float"] = why
Why: a probability map quantized to uint8 over [0, 1] has a step of 1/255, so a map of small probabilities
(a face score on a photo without faces, a mask without people: 1e-3 and below) comes out all zero, and
its detections and thresholds are lost. Computed in float from the logits' uint8 grid, each probability
keeps about the same *relative* error (sigmoid(x) ~ e^x for small values), at the cost of one float CPU
op over the map (both runtimes have it: kmodel v3 Logistic, v4 a unary NNIL program). The layout ops after
it follow their input and stay float too (quantize_k210's data_op), so the map reaches the output unrounded.
Order: before legalize_k210 (a sigmoid right after a KPU conv is then left out of its activation table).
"""
from __future__ import annotations

from compiler.ir import Graph, Node
from targets.k210.passes.common import reaches_only_outputs

REASON = "an output's probabilities: in float, so small ones keep their relative precision"


def is_sigmoid(node: Node) -> bool:
    return node.op == "unary" and node.attrs["op"] == "sigmoid"


def keep_output_sigmoid_float(graph: Graph) -> bool:
    """Mark every sigmoid whose result only reaches the graph's outputs (through layout ops) stay_float."""
    matches = [n for n in graph.nodes if is_sigmoid(n) and "stay_float" not in n.meta
               and reaches_only_outputs(graph, n.output)]
    for node in matches:
        node.meta["stay_float"] = REASON
    return bool(matches)
