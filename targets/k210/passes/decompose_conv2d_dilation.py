"""Run a dilated 3x3 conv2d as an undilated one on space_to_batch phases (TensorFlow's atrous trick).

conv2d(x; dilation d, padding P) -> act*
    ==>   space_to_batch(x; block d, pads P + round up) -> conv2d(padding 1) -> act*
          -> batch_to_space(block d, crops (d, rest))
With the input padded by P, output pixel q*d + r reads padded pixels (q + i)*d + r: an undilated
valid conv on phase r. space_to_batch puts the d*d phases in the batch; the KPU's "same" conv on a
phase gives that valid conv shifted by one pixel, so batch_to_space crops d pixels before.
Constraint: the KPU has no dilation, only 1x1 and 3x3 stride-1 filters (kpu.md §10); ncc does the
same rewrite, hence kpu_upload with batches > 1 (kmodel-v4.md §12).
Order: after decompose_conv2d_stride, before insert_pad_crop_for_kpu_conv2d (small phases get padded).
"""
from __future__ import annotations

from compiler.ir import Graph, Node
from targets.k210.constraints import why_not_kpu
from targets.k210.passes.common import activation_chain, chain_end, derive, pad_spatial, rebuild_chain, source_name


def _match(graph: Graph, conv: Node) -> list | None:
    a = conv.attrs
    if (conv.inputs[1].shape[-1] == 1 or tuple(a["dilations"]) == (1, 1)
            or tuple(a["strides"]) != (1, 1) or why_not_kpu(conv) is not None):
        return None
    return activation_chain(graph, conv.output)[0]


def _rewrite(graph: Graph, conv: Node, chain: list) -> None:
    x, w, b = conv.inputs
    last = chain_end(conv.output, chain).producer
    d = tuple(conv.attrs["dilations"])
    padding = conv.attrs["padding"]
    pads, crops = [], []
    for size, (pt, pb), dd, out in zip(x.shape[2:], padding, d, last.output.shape[2:]):
        extra = -(size + pt + pb) % dd
        phase = (size + pt + pb + extra) // dd
        pads.append((pt, pb + extra))
        crops.append((dd, dd * phase - dd - out))
    name = source_name(conv)
    # space_to_batch only pads: a negative padding (from a transposed conv) crops the input first
    x = pad_spatial(graph, x, tuple((min(a, 0), min(b, 0)) for a, b in pads), name=f"{name}_crop", before=last)
    pads = tuple((max(a, 0), max(b, 0)) for a, b in pads)
    s2b = graph.add("space_to_batch", [x], name=f"{name}_s2b", before=last, block=d, pads=pads)
    attrs = {**conv.attrs, "padding": ((1, 1), (1, 1)), "dilations": (1, 1)}
    one = derive(graph, conv, "conv2d", [s2b.output, w, b], before=last, **attrs)
    one.meta["kpu_rewrites"] += ("decompose_conv2d_dilation",)
    y = rebuild_chain(graph, one.output, chain, before=last)
    out = graph.add("batch_to_space", [y], name=f"{name}_b2s", before=last, block=d, crops=tuple(crops))
    graph.replace_all_uses(last.output, out.output)


def decompose_conv2d_dilation(graph: Graph, **_) -> bool:
    """Rewrite every KPU-placeable dilated 3x3 conv2d through space_to_batch / batch_to_space."""
    matches = [(conv, chain) for conv in graph.nodes_of("conv2d") if (chain := _match(graph, conv)) is not None]
    for conv, chain in matches:
        _rewrite(graph, conv, chain)
    if matches:
        graph.eliminate_dead_code()
    return bool(matches)
