"""Turn a conv2d with the KPU's exact geometry, its activations and a fitting pool into one kpu_conv2d.

conv2d(x, w, b; stride 1, ring padding, fused_clamp) -> act* -> [reduce_window2d]
    ==>   kpu_conv2d(x, w, b; depthwise, pool, activation=(fused clamp, act*))
Constraint: a KPU layer is a stride-1 "same" 1x1/3x3 conv (one ring of pad_value for 3x3), groups 1
or depthwise, followed by a per-layer activation table and a pool type (kpu.md §1, §5, §6, §10;
kmodel-v4.md §10.3, §10.5). The activation steps are any element-wise functions the 16-segment table
can follow (constraints.activation_step); a pool is fused when its geometry is a KPU pool type, the
layer is not depthwise and the pooled map stays >= 4x4.
Convs that can never be placed get `meta["why_not_kpu"]`; convs the other legalization passes can still
reshape (strides, padding, dilation, small maps) are left to them.
Order: after decompose_conv2d_stride, decompose_conv2d_dilation and insert_pad_crop_for_kpu_conv2d.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from compiler.ir import Graph, Node
from targets.k210.constraints import kpu_padding, why_not_kpu, why_not_kpu_layer
from targets.k210.passes.common import activation_chain, chain_end, derive, pool_after


class Match(NamedTuple):
    conv: Node
    steps: tuple
    last: Node        # the node whose output the kpu_conv2d replaces
    pool: str


def _is_kpu_shaped(conv: Node) -> bool:
    a = conv.attrs
    x, w, _ = conv.inputs
    k, p = w.shape[-1], kpu_padding(w.shape[-1])
    return (tuple(a["strides"]) == (1, 1)
            and (tuple(a["dilations"]) == (1, 1) or k == 1)
            and tuple(map(tuple, a["padding"])) == ((p, p), (p, p))
            and why_not_kpu_layer(x.shape, w.shape[0], k, depthwise=a["groups"] != 1) is None)


def _match(graph: Graph, conv: Node) -> Match | None:
    if why_not_kpu(conv) is not None or not _is_kpu_shaped(conv):
        return None
    x, w, _ = conv.inputs
    lo, hi = conv.attrs["fused_clamp"]
    fused = (("clamp", float(lo), float(hi)),) if (lo, hi) != (-math.inf, math.inf) else ()
    chain, steps = activation_chain(graph, conv.output)
    depthwise = conv.attrs["groups"] != 1
    last = chain_end(conv.output, chain).producer
    pooled = pool_after(graph, last.output, x.shape, w.shape[0], w.shape[-1], depthwise)
    if pooled:
        return Match(conv, fused + steps, pooled[0], pooled[1])
    return Match(conv, fused + steps, last, "bypass")


def _rewrite(graph: Graph, m: Match) -> None:
    x, w, b = m.conv.inputs
    kpu = derive(graph, m.conv, "kpu_conv2d", [x, w, b], suffix="_kpu", before=m.last,
                 depthwise=m.conv.attrs["groups"] != 1, pool=m.pool, activation=m.steps)
    if m.last is not m.conv:
        kpu.meta["output_source"] = m.last.name     # the node whose output the layer's is (its model grid)
    graph.replace_all_uses(m.last.output, kpu.output)


def conv2d_to_kpu_conv2d(graph: Graph, **_) -> bool:
    """Replace every KPU-shaped conv2d (+ activations + pool) by a kpu_conv2d; note why the rest stay."""
    matches = []
    for conv in graph.nodes_of("conv2d"):
        if (m := _match(graph, conv)) is not None:
            matches.append(m)
        elif (reason := why_not_kpu(conv)) is not None:
            conv.meta["why_not_kpu"] = reason
    for m in matches:
        _rewrite(graph, m)
    if matches:
        graph.eliminate_dead_code()
    return bool(matches)
