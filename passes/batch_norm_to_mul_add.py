"""Turn a batch norm that no conv absorbed into a multiply and an add by per-channel constants.

batch_norm(x, scale, bias, mean, var)   ->   x * k + (bias - mean * k)     k = scale / sqrt(var + epsilon)
Why: with constant statistics a batch norm is a per-channel affine map; as binary ops it needs no
kernel of its own on the target, and the multiply and add can be fused or folded like any other.
Only batch norms with constant parameters are rewritten.
Order: after fold_batch_norm_into_conv2d (in the same group, listed after it), which handles the
batch norms that follow a conv exactly and without extra ops.
"""
from __future__ import annotations

import numpy as np

from compiler.ir import Graph, Node


def batch_norm_to_mul_add(graph: Graph) -> bool:
    """Rewrite each batch_norm with constant parameters as mul + add by per-channel constants."""
    matches = [bn for bn in graph.nodes_of("batch_norm") if all(v.is_constant for v in bn.inputs[1:])]
    for bn in matches:
        _rewrite(graph, bn)
    return bool(matches) | graph.eliminate_dead_code()


def _rewrite(graph: Graph, bn: Node) -> None:
    x = bn.inputs[0]
    scale, bias, mean, var = (v.data.astype(np.float64) for v in bn.inputs[1:])
    k = scale / np.sqrt(var + bn.attrs["epsilon"])
    per_channel = (-1,) + (1,) * (x.type.rank - 2)  # broadcasts along axis 1
    shift = bias - mean * k
    k_c = graph.const(k.reshape(per_channel).astype(x.dtype), name=f"{bn.name}/scale", before=bn)
    shift_c = graph.const(shift.reshape(per_channel).astype(x.dtype), name=f"{bn.name}/shift", before=bn)
    scaled = graph.add("binary", [x, k_c], name=f"{bn.name}/mul", before=bn, op="mul").output
    out = graph.add("binary", [scaled, shift_c], name=f"{bn.name}/add", before=bn, op="add").output
    out.quant = bn.output.quant
    graph.replace_all_uses(bn.output, out)
