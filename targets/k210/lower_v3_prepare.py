"""kmodel v3 preparation: the rewrites applied to a copy of the graph before lowering, folding pads into
the KPU ring (lower_v3.py has the overview)."""
from __future__ import annotations

import numpy as np

from compiler.ir import Graph, Node
from targets.k210.constraints import why_not_kpu_layer
from targets.k210.kernels import K210_KERNELS
from targets.k210.lower_v3_core import sole_user

# ---------------------------------------------------------------- preparation: pads into the KPU ring
SELECTIONS = {"bypass": (1, 0, 0), "left_top_2_s2": (2, 0, 0), "right_top_2_s2": (2, 0, 1), "left_top_4_s4": (4, 0, 0)}


def fold_pad_into_kpu_conv2d_q(graph: Graph) -> bool:
    """A zero-point pad before a KPU layer, kept in part by a slice after it, becomes a slice of the
    layer run on the unpadded map.

    pad(x, p) [-> quantize_u8] -> kpu_conv2d_q(pool = selection) -> strided_slice
        ==>   [quantize_u8 ->] kpu_conv2d_q(x, pool = bypass) -> strided_slice(composite)
    Why: v3 has no pad layer and the SDK loads layer 0's input unpadded. The KPU's ring reads pad_value
    outside the map, which is what the pad wrote, so the padded layer's output row r is the unpadded
    layer's row r − p_top wherever the slice looks (it must stay inside the map). The selection pools
    (left/right top) are index maps too, so the slice absorbs them.
    Exact on the quantized executor (tests). Order: before lowering; the slice is then lowered as a
    nearest resize.
    """
    changed = False
    for sl in graph.nodes_of("strided_slice"):
        m = _match_padded_layer(graph, sl)
        if m is None:
            continue
        conv, quantize_node, pad_node, begin, end, strides = m
        src = pad_node.inputs[0]
        if quantize_node is not None:
            src = _copy_node(graph, quantize_node, [src], before=sl).output
        new = _copy_node(graph, conv, [src, *conv.inputs[1:]], before=sl, pool="bypass")
        cut = _copy_node(graph, sl, [new.output], before=sl, begin=begin, end=end, strides=strides)
        graph.replace_all_uses(sl.output, cut.output)
        changed = True
    return changed | graph.eliminate_dead_code() if changed else False


def _match_padded_layer(graph: Graph, sl: Node):
    conv = sl.inputs[0].producer
    if conv.op != "kpu_conv2d_q" or sole_user(graph, conv.output) is not sl \
            or conv.attrs["pool"] not in SELECTIONS:
        return None
    quantize_node, p = None, conv.inputs[0].producer
    if p.op == "quantize_u8" and sole_user(graph, p.output) is conv:
        quantize_node, p = p, p.inputs[0].producer
    if p.op != "pad" or sole_user(graph, p.output) is not (quantize_node or conv):
        return None
    pads, a = p.attrs["pads"], p.attrs
    if a["mode"] != "constant" or len(pads) != 4 or any(tuple(q) != (0, 0) for q in pads[:2]) \
            or any(q < 0 for pair in pads[2:] for q in pair):
        return None
    code = a["value"]
    if quantize_node is not None:
        code = K210_KERNELS["quantize_u8"](np.float32(code), scale=quantize_node.attrs["scale"],
                                           zero_point=quantize_node.attrs["zero_point"])
    if int(code) != conv.attrs["pad_value"]:
        return None
    s, dy, dx = SELECTIONS[conv.attrs["pool"]]
    begin, end, strides = (list(sl.attrs[k]) for k in ("begin", "end", "strides"))
    if begin[0] != 0 or strides[0] != 1 or strides[2] < 1 or strides[3] < 1:
        return None
    h, w = p.inputs[0].shape[2:]
    if why_not_kpu_layer(p.inputs[0].shape, conv.output.shape[1], conv.inputs[1].shape[-1],
                         depthwise=conv.attrs["depthwise"]) is not None:
        return None        # the unpadded map is too small for the KPU (a fully connected layer's 1×1)
    out_h, out_w = sl.output.shape[2:]
    for axis, size, offset, pad_before, n in ((2, h, dy, pads[2][0], out_h), (3, w, dx, pads[3][0], out_w)):
        first = begin[axis] * s + offset - pad_before
        step = strides[axis] * s
        last = first + step * (n - 1)
        if first < 0 or last > size - 1:
            return None
        begin[axis], end[axis], strides[axis] = first, last + 1, step
    return conv, quantize_node, p, tuple(begin), tuple(end), tuple(strides)


def _copy_node(graph: Graph, node: Node, inputs, *, before: Node, **changes) -> Node:
    """`node` again with new inputs and some attrs changed, keeping its quantization and meta."""
    new = graph.add(node.op, inputs, name=node.name, before=before, **{**node.attrs, **changes})
    new.meta.update(node.meta)
    for old_v, new_v in zip(node.outputs, new.outputs):
        new_v.quant = old_v.quant
    return new


def prepare_v3(graph: Graph) -> Graph:
    """A copy of `graph` rewritten into the forms v3 layers express (the source graph is untouched)."""
    g = graph.clone()
    while fold_pad_into_kpu_conv2d_q(g):
        pass
    return g
