"""Give a stride-1 conv2d the KPU's ring padding: explicit zero pad before, crop (strided_slice) after.

conv2d(x; padding P) -> act*   ==>   pad(x, max(P - p, 0) [+ zeros up to 4x4]) -> conv2d(padding p) -> act*
                                      -> strided_slice(crop max(p - P, 0) [+ the zeros' rows])
where p is the KPU's ring (0 for 1x1, 1 for 3x3). Covers valid padding, TensorFlow's asymmetric SAME
(stride-2 on even sizes: (0, 1)), padding wider than the ring, and maps below 4x4 (1x1 maps from
global pooling, FC-like 1x1 convs). If the conv (after its activations) feeds exactly one
strided_slice, the crop is folded into that slice, so a stride-2 slice stays one node that
fuse_kpu_pool can turn into a left_top/right_top pool.
Constraint: the KPU convolves "same" with a one-pixel ring of pad_value (kpu.md §5.1) and needs a
4x4..256x512 (HxW) input map (kmodel-v4.md §10.3); explicit zeros read exactly like the ring.
Order: after decompose_conv2d_stride and decompose_conv2d_dilation, before conv2d_to_kpu_conv2d.
"""
from __future__ import annotations

from typing import NamedTuple

from compiler.ir import Graph, Node
from targets.k210.constraints import MIN_IN_H, MIN_IN_W, kpu_geometry, kpu_padding, why_not_kpu
from targets.k210.passes.common import (
    Slice,
    activation_chain,
    chain_end,
    crop_spatial,
    derive,
    pad_spatial,
    rebuild_chain,
    sole_user,
    source_name,
)


class Match(NamedTuple):
    conv: Node
    chain: list
    geometry: tuple   # per axis (pad_before, pad_after, crop_before, crop_after)
    slice: Node | None


def _match(graph: Graph, conv: Node) -> Match | None:
    a = conv.attrs
    x, w, _ = conv.inputs
    k = w.shape[-1]
    if (why_not_kpu(conv) is not None or tuple(a["strides"]) != (1, 1)
            or (k > 1 and tuple(a["dilations"]) != (1, 1))):
        return None
    padding = a["padding"]
    geometry = tuple(kpu_geometry(size, k, tuple(pad), least)
                     for size, pad, least in zip(x.shape[2:], padding, (MIN_IN_H, MIN_IN_W)))
    if geometry == ((0, 0, 0, 0), (0, 0, 0, 0)):
        return None
    chain, _ = activation_chain(graph, conv.output)
    user = sole_user(graph, chain_end(conv.output, chain))
    slice_node = user if user is not None and Slice.of(user) is not None else None
    return Match(conv, chain, geometry, slice_node)


def _rewrite(graph: Graph, m: Match) -> None:
    x, w, b = m.conv.inputs
    k = w.shape[-1]
    p = kpu_padding(k)
    last = m.slice or chain_end(m.conv.output, m.chain).producer
    name = source_name(m.conv)
    xp = pad_spatial(graph, x, tuple(g[:2] for g in m.geometry), name=f"{name}_pad", before=last)
    attrs = {**m.conv.attrs, "padding": ((p, p), (p, p)), "strides": (1, 1), "dilations": (1, 1)}
    conv = derive(graph, m.conv, "conv2d", [xp, w, b], before=last, **attrs)
    conv.meta["kpu_rewrites"] += ("insert_pad_crop_for_kpu_conv2d",)
    y = rebuild_chain(graph, conv.output, m.chain, before=last)
    crops = tuple(g[2:] for g in m.geometry)
    if m.slice is None:
        out = crop_spatial(graph, y, crops, name=f"{name}_crop", before=last)
        graph.replace_all_uses(last.output, out)
        return
    n, c, h, wd = y.shape
    crop = Slice((0, 0, crops[0][0], crops[1][0]), (1, 1, 1, 1),
                 (n, c, h - sum(crops[0]), wd - sum(crops[1])))
    out = graph.add("strided_slice", [y], name=m.slice.name, before=last,
                    **crop.then(Slice.of(m.slice)).attrs()).output
    graph.replace_all_uses(m.slice.output, out)


def insert_pad_crop_for_kpu_conv2d(graph: Graph, **_) -> bool:
    """Rewrite every placeable stride-1 conv2d whose padding or size is not the KPU's into pad + conv + crop."""
    matches = [m for conv in graph.nodes_of("conv2d") if (m := _match(graph, conv))]
    for m in matches:
        _rewrite(graph, m)
    if matches:
        graph.eliminate_dead_code()
    return bool(matches)
