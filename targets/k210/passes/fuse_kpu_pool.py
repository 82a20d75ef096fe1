"""Fuse the pooling or down-sampling after a kpu_conv2d into its pool type.

kpu_conv2d(pool=bypass) -> reduce_window2d(max|mean 2x2/2, 4x4/4, TF SAME 2x2/1)
    ==>   kpu_conv2d(pool=max_2_s2 | mean_2_s2 | max_4_s4 | mean_4_s4 | max_2_s1 | mean_2_s1)
kpu_conv2d(pool=bypass) -> strided_slice(H, W: begin b, stride s in {2, 4})
    ==>   [pad(x; shift)] -> kpu_conv2d(pool=left_top_2_s2 | right_top_2_s2 | left_top_4_s4) -> [crop]
The KPU keeps pixel (s*y, s*x) (left_top) or (2y, 2x+1) (right_top) of each window. A slice that
starts at an odd row (TF SAME stride 2: rows 1, 3, ...) gets one zero row padded on top, so the rows
it keeps become even, and the extra pooled row is cropped (nncase's fuse_fake_kpu_conv2d_strided_slice);
an odd column uses right_top. Zero rows read exactly like the KPU's ring, so the conv is unchanged.
Constraint: pool types and their geometry (kpu.md §6, kmodel-v4.md §10.5 step 4): H_out = H div s,
no pooling on depthwise layers, the pooled map >= 4x4 and the input map within 256x512 (HxW).
Order: after conv2d_to_kpu_conv2d (which fuses a pool that directly follows a conv itself).
"""
from __future__ import annotations

from typing import NamedTuple

from compiler.ir import Graph, Node
from targets.k210.constraints import MIN_OUT_H, MIN_OUT_W, why_not_kpu_layer
from targets.k210.passes.common import Slice, crop_spatial, derive, pad_spatial, pool_after, sole_user, source_name


class Match(NamedTuple):
    conv: Node
    last: Node            # reduce_window2d or strided_slice replaced by the fused layer
    pool: str
    pads: tuple = ((0, 0), (0, 0))      # zeros added to the KPU input (down-sampling only)
    crops: tuple = ((0, 0), (0, 0))     # pooled pixels dropped after it


def _downsample(conv: Node, sl: Node) -> Match | None:
    """The pool type, input shift and crop that make the KPU keep exactly the pixels `sl` keeps."""
    x, w, _ = conv.inputs
    s = Slice.of(sl)
    if s is None or not s.is_spatial(conv.output.shape) or s.stride[2] != s.stride[3] or s.stride[2] not in (2, 4):
        return None
    stride = s.stride[2]
    (bh, bw), (oh, ow) = s.begin[2:], s.length[2:]
    dx = 1 if stride == 2 and bw % 2 else 0
    pool = {(2, 0): "left_top_2_s2", (2, 1): "right_top_2_s2", (4, 0): "left_top_4_s4"}[stride, dx]
    pads, crops = [], []
    for size, b, dd, o, least in zip(x.shape[2:], (bh, bw), (0, dx), (oh, ow), (MIN_OUT_H, MIN_OUT_W)):
        shift = -(b - dd) % stride               # zeros before, so the first kept pixel lands on the grid
        first = (b - dd + shift) // stride       # pooled pixel holding it
        keep = max(first + o, least)             # pooled pixels the KPU must produce
        after = max(stride * keep - (size + shift), 0)
        pooled = (size + shift + after) // stride
        pads.append((shift, after))
        crops.append((first, pooled - first - o))
    in_shape = x.shape[:2] + tuple(size + sum(p) for size, p in zip(x.shape[2:], pads))
    if why_not_kpu_layer(in_shape, w.shape[0], w.shape[-1], pool=pool) is not None:
        return None
    return Match(conv, sl, pool, tuple(pads), tuple(crops))


def _match(graph: Graph, conv: Node) -> Match | None:
    a = conv.attrs
    if a["pool"] != "bypass" or a["depthwise"]:
        return None
    x, w, _ = conv.inputs
    pooled = pool_after(graph, conv.output, x.shape, w.shape[0], w.shape[-1], False)
    if pooled:
        return Match(conv, pooled[0], pooled[1])
    user = sole_user(graph, conv.output)
    return _downsample(conv, user) if user is not None and user.op == "strided_slice" else None


def _rewrite(graph: Graph, m: Match) -> None:
    x, w, b = m.conv.inputs
    name = source_name(m.conv)
    xp = pad_spatial(graph, x, m.pads, name=f"{name}_pad", before=m.last)
    kpu = derive(graph, m.conv, "kpu_conv2d", [xp, w, b], suffix="_kpu", before=m.last, **{**m.conv.attrs, "pool": m.pool})
    out = crop_spatial(graph, kpu.output, m.crops, name=f"{name}_crop", before=m.last)
    graph.replace_all_uses(m.last.output, out)


def fuse_kpu_pool(graph: Graph, **_) -> bool:
    """Fuse a following KPU-shaped pool or stride-2/4 slice into each bypass kpu_conv2d."""
    matches = [m for conv in graph.nodes_of("kpu_conv2d") if (m := _match(graph, conv))]
    for m in matches:
        _rewrite(graph, m)
    if matches:
        graph.eliminate_dead_code()
    return bool(matches)

