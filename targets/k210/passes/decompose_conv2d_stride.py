"""Split a strided conv2d into the stride-1 conv the KPU computes and a strided_slice.

conv2d(x; strides s, padding P) -> act*   ==>   conv2d(x; stride 1, padding P) -> act* -> strided_slice(0::s)
Output pixel i of the strided conv is pixel i*s of the stride-1 conv with the same padding, and
element-wise activations commute with the slice, so they stay next to the conv for fusion.
Constraint: the KPU only convolves with stride 1; it does stride 2 (and 4) by keeping one pixel of
each 2x2 (4x4) window, pool types left_top_2_s2 / right_top_2_s2 / left_top_4_s4 (kpu.md §6.3,
kmodel-v4.md §12). fuse_kpu_pool later turns the slice into such a pool when it can; any other
stride stays a strided_slice on the CPU. Only convs the KPU can take (constraints.why_not_kpu) are
split: a CPU conv does strides natively and would only do s*s times the work.
Order: first of the K210 legalization passes; insert_pad_crop_for_kpu_conv2d then fixes the padding.
"""
from __future__ import annotations

from compiler.ir import Graph, Node
from targets.k210.constraints import why_not_kpu
from targets.k210.passes.common import activation_chain, chain_end, derive, rebuild_chain, source_name


def _match(graph: Graph, conv: Node) -> list | None:
    if tuple(conv.attrs["strides"]) == (1, 1) or why_not_kpu(conv) is not None:
        return None
    return activation_chain(graph, conv.output)[0]


def _rewrite(graph: Graph, conv: Node, chain: list) -> None:
    last = chain_end(conv.output, chain).producer
    strided = last.output.shape
    one = derive(graph, conv, "conv2d", list(conv.inputs), before=last, **{**conv.attrs, "strides": (1, 1)})
    one.meta["kpu_rewrites"] += ("decompose_conv2d_stride",)
    y = rebuild_chain(graph, one.output, chain, before=last)
    sh, sw = conv.attrs["strides"]
    n, c, oh, ow = strided
    out = graph.add("strided_slice", [y], name=f"{source_name(conv)}_stride", before=last, begin=(0, 0, 0, 0),
                    end=(n, c, (oh - 1) * sh + 1, (ow - 1) * sw + 1), strides=(1, 1, sh, sw))
    graph.replace_all_uses(last.output, out.output)


def decompose_conv2d_stride(graph: Graph, **_) -> bool:
    """Rewrite every KPU-placeable strided conv2d as a stride-1 conv2d followed by a strided slice."""
    matches = [(conv, chain) for conv in graph.nodes_of("conv2d") if (chain := _match(graph, conv)) is not None]
    for conv, chain in matches:
        _rewrite(graph, conv, chain)
    if matches:
        graph.eliminate_dead_code()
    return bool(matches)
