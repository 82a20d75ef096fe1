"""Run a fully connected layer (matmul with a constant B) as a 1x1 KPU conv on a padded 4x4 map.

matmul(A[M,K], B[K,N]; fused_clamp) [-> add(bias[N])] -> act*
    ==>   reshape(A, [M,K,1,1]) -> pad to [M,K,4,4] -> kpu_conv2d(w=B^T[N,K,1,1], b=bias, activation)
          -> strided_slice([M,N,1,1]) -> reshape([M,N])
Each row of A becomes one batch of a K-channel map; pixel (0, 0) of the 1x1 conv is the dot product and
the other 15 pixels (zeros in, bias out) are cropped. A following add of a constant [N] vector becomes
the conv bias (before any clamp, so only when the matmul itself has no fused_clamp).
Constraint: the KPU's maps are at least 4x4 and it has no matrix product, but a 1x1 conv over K <= 1024
channels to N <= 1024 outputs is one (kmodel-v4.md §10.3, §12: "matmul -> 1x1 KPU conv when possible",
nncase's matmul_to_fake_kpu_conv2d).
Order: any time in the K210 legalization group; fuse_kpu_pool leaves the 1x1 layer alone (bypass crop).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from compiler.ir import Graph, Node, Value
from targets.k210.constraints import MIN_IN_H, MIN_IN_W, why_not_kpu
from targets.k210.passes.common import activation_chain, chain_end, crop_spatial, derive, pad_spatial, sole_user


class Match(NamedTuple):
    matmul: Node
    bias: np.ndarray
    steps: tuple
    last: Node


def _bias_of(graph: Graph, mm: Node) -> tuple[np.ndarray, Node] | None:
    """A following `add` of a constant that broadcasts as an [N] vector, and the add node."""
    add = sole_user(graph, mm.output)
    if add is None or add.op != "binary" or add.attrs["op"] != "add" or add.output.shape != mm.output.shape:
        return None
    other: Value = add.inputs[1] if add.inputs[0] is mm.output else add.inputs[0]
    n = mm.output.shape[1]
    if other is mm.output or not other.is_constant or other.shape not in ((), (1,), (n,), (1, 1), (1, n)):
        return None
    return np.broadcast_to(other.data.reshape(-1), (n,)).astype(np.float32), add


def _clamp_step(node: Node) -> tuple:
    lo, hi = node.attrs["fused_clamp"]
    return (("clamp", float(lo), float(hi)),) if (lo, hi) != (-math.inf, math.inf) else ()


def _match(graph: Graph, mm: Node) -> Match | None:
    if why_not_kpu(mm) is not None:
        return None
    bias, last, steps = np.zeros(mm.output.shape[1], np.float32), mm, _clamp_step(mm)
    if not steps and (found := _bias_of(graph, mm)) is not None:
        bias, last = found
        steps = _clamp_step(last)
    chain, more = activation_chain(graph, last.output)
    return Match(mm, bias, steps + more, chain_end(last.output, chain).producer)


def _rewrite(graph: Graph, m: Match) -> None:
    a, b = m.matmul.inputs
    (rows, k), n = a.shape, b.shape[1]
    name = m.matmul.name
    at = m.last
    w = graph.const(np.ascontiguousarray(b.data.T).reshape(n, k, 1, 1).astype(np.float32), name=f"{name}_w", before=at)
    bias = graph.const(m.bias, name=f"{name}_b", before=at)
    x = graph.add("reshape", [a], name=f"{name}_nchw", before=at, shape=(rows, k, 1, 1)).output
    x = pad_spatial(graph, x, ((0, MIN_IN_H - 1), (0, MIN_IN_W - 1)), name=f"{name}_pad", before=at)
    y = derive(graph, m.matmul, "kpu_conv2d", [x, w, bias], suffix="_kpu", before=at, depthwise=False,
               pool="bypass", activation=m.steps).output
    y.producer.meta["kpu_rewrites"] += ("matmul_to_kpu_conv2d",)
    y = crop_spatial(graph, y, ((0, MIN_IN_H - 1), (0, MIN_IN_W - 1)), name=f"{name}_crop", before=at)
    out = graph.add("reshape", [y], name=f"{name}_flat", before=at, shape=(rows, n)).output
    graph.replace_all_uses(m.last.output, out)


def matmul_to_kpu_conv2d(graph: Graph, **_) -> bool:
    """Replace every (M,K)@(K,N) matmul with a constant B (+ bias, activations) by a 1x1 kpu_conv2d."""
    matches = [m for mm in graph.nodes_of("matmul") if (m := _match(graph, mm))]
    for mm in graph.nodes_of("matmul"):
        if (reason := why_not_kpu(mm)) is not None:
            mm.meta["why_not_kpu"] = reason
    for m in matches:
        _rewrite(graph, m)
    if matches:
        graph.eliminate_dead_code()
    return bool(matches)
