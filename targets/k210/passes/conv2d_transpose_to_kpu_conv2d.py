"""Run a transposed convolution as a stride-1 conv2d over a zero-inserted input, ready for the KPU.

conv2d_transpose(x, w[I,O/g,k,k]; strides s, padding P, dilations d, output_padding op)
    ==>   per axis, at most 4-D (kmodel v4 shapes are 4-D): reshape(x, [N,C*H,W,1]) -> pad(0, s-1)
          -> reshape([N,C,H,W*s]); reshape([N*C,H,1,W*s]) -> pad(0, s-1) -> reshape([N,C,H*s,W*s])
          -> conv2d(w' = flip(w)^T [O,I/g,k,k]; padding d*(k-1) - P (+op, - the s-1 trailing zeros),
                    dilations d, groups g, fused_clamp)
A transposed conv scatters x[y] to rows y*s + i*d; gathering instead, output row j reads the
zero-inserted input at j - d*(k-1) + P + i*d with tap k-1-i, which is a plain conv with the flipped
kernel. The conv2d is then legalized like any other (padding -> pad/crop, dilation ->
space_to_batch, becoming a kpu_conv2d); a negative padding crops.
Constraint: the KPU only convolves (kpu.md §1), 1x1 or 3x3, stride 1; the zero insertion stays on the
CPU as layout ops (reshape/pad), which later passes may lower to memory copies.
Order: before the conv2d legalization passes; only rewrites what constraints.why_not_kpu accepts.
"""
from __future__ import annotations

import numpy as np

from compiler.ir import Graph, Node
from targets.k210.constraints import transpose_as_conv, why_not_kpu
from targets.k210.passes.common import derive


def _match(graph: Graph, node: Node) -> bool:
    return why_not_kpu(node) is None


def _flipped_weights(w: np.ndarray, groups: int) -> np.ndarray:
    """IOHW (I, O/g, kh, kw) -> OIHW (O, I/g, kh, kw), spatially flipped."""
    ci, og, kh, kw = w.shape
    cg = ci // groups
    oihw = w.reshape(groups, cg, og, kh, kw).transpose(0, 2, 1, 3, 4).reshape(groups * og, cg, kh, kw)
    return np.ascontiguousarray(oihw[..., ::-1, ::-1]).astype(np.float32)


def _rewrite(graph: Graph, node: Node) -> None:
    x, w, b = node.inputs
    n, c, h, wd = x.shape
    sh, sw = node.attrs["strides"]
    _, _, attrs = transpose_as_conv(x.type, w.shape, node.attrs)
    name = node.name
    z = x
    if sw != 1:  # s-1 zeros after every column
        z = graph.add("reshape", [z], name=f"{name}_spread_w", before=node, shape=(n, c * h, wd, 1)).output
        z = graph.add("pad", [z], name=f"{name}_zeros_w", before=node, mode="constant", value=0.0,
                      pads=((0, 0), (0, 0), (0, 0), (0, sw - 1))).output
        z = graph.add("reshape", [z], name=f"{name}_dilated_w", before=node, shape=(n, c, h, wd * sw)).output
    if sh != 1:  # s-1 zero rows after every row
        z = graph.add("reshape", [z], name=f"{name}_spread_h", before=node, shape=(n * c, h, 1, wd * sw)).output
        z = graph.add("pad", [z], name=f"{name}_zeros_h", before=node, mode="constant", value=0.0,
                      pads=((0, 0), (0, 0), (0, sh - 1), (0, 0))).output
        z = graph.add("reshape", [z], name=f"{name}_dilated_h", before=node, shape=(n, c, h * sh, wd * sw)).output
    wf = graph.const(_flipped_weights(w.data, attrs["groups"]), name=f"{name}_w", before=node)
    extra = {"fused_clamp": node.attrs["fused_clamp"]} if "fused_clamp" in node.attrs else {}
    conv = derive(graph, node, "conv2d", [z, wf, b], before=node, strides=(1, 1), **attrs, **extra)
    conv.meta["kpu_rewrites"] += ("conv2d_transpose_to_kpu_conv2d",)
    graph.replace_all_uses(node.output, conv.output)


def conv2d_transpose_to_kpu_conv2d(graph: Graph, **_) -> bool:
    """Rewrite every KPU-placeable conv2d_transpose as zero insertion + a stride-1 conv2d."""
    matches = [node for node in graph.nodes_of("conv2d_transpose") if _match(graph, node)]
    for node in graph.nodes_of("conv2d_transpose"):
        if (reason := why_not_kpu(node)) is not None:
            node.meta["why_not_kpu"] = reason
    for node in matches:
        _rewrite(graph, node)
    if matches:
        graph.eliminate_dead_code()
    return bool(matches)
