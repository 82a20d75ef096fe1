"""Fold an inference batch norm into the weights and bias of the conv2d that feeds it.

batch_norm(conv2d(x, w, b), scale, bias, mean, var)   ->   conv2d(x, w * k, (b - mean) * k + bias)
                                                           with k = scale / sqrt(var + epsilon) per channel
Why: a batch norm is a per-output-channel affine map, which a convolution absorbs exactly; the KPU
has a batch-norm stage of its own, but only one per layer and in fixed point, so the float model
keeps one op where the source had two. The conv is updated in place (its output type does not
change) and keeps its name, so reports trace the layer back to the source conv.
Only self-contained matches: the conv's output feeds nothing but the batch norm, all parameters are
constants and the conv has no fused clamp yet.
Order: after fold_transposes (which removes the transposes between them in TFLite graphs) and
before fuse_clamp and batch_norm_to_mul_add.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from compiler.ir import Graph, Node
from passes.manager import used_only_by


class Match(NamedTuple):
    conv: Node
    bn: Node


def fold_batch_norm_into_conv2d(graph: Graph) -> bool:
    """Fold each batch_norm whose input is a conv2d used only by it into that conv's weights and bias."""
    matches = [m for bn in graph.nodes_of("batch_norm") if (m := _match(graph, bn))]
    for m in matches:
        _rewrite(graph, m)
    return bool(matches) | graph.eliminate_dead_code()


def _match(graph: Graph, bn: Node) -> Match | None:
    conv = bn.inputs[0].producer
    if conv.op != "conv2d" or not used_only_by(graph, conv.output, bn):
        return None
    if conv.attrs["fused_clamp"] != (-np.inf, np.inf):
        return None
    if not all(v.is_constant for v in conv.inputs[1:] + bn.inputs[1:]):
        return None
    return Match(conv, bn)


def _rewrite(graph: Graph, m: Match) -> None:
    x, w, b = m.conv.inputs
    scale, bias, mean, var = (v.data.astype(np.float64) for v in m.bn.inputs[1:])
    k = scale / np.sqrt(var + m.bn.attrs["epsilon"])
    w_folded = (w.data.astype(np.float64) * k[:, None, None, None]).astype(w.dtype)
    b_folded = ((b.data.astype(np.float64) - mean) * k + bias).astype(b.dtype)
    m.conv.inputs = [x, graph.const(w_folded, name=f"{w.name}/bn_folded", before=m.conv),
                     graph.const(b_folded, name=f"{b.name}/bn_folded", before=m.conv)]
    m.conv.output.quant = m.bn.output.quant
    graph.replace_all_uses(m.bn.output, m.conv.output)
