"""Fold TensorFlow's dilated-conv lowering back into one dilated conv2d.

batch_to_space(conv2d(space_to_batch(x; block d, pads P), stride 1, dilation 1, padding q); crops C)
    ->  conv2d(x, dilation d, padding (P_top + q_top*d - C_top, ...))
Why: TF (and TFLite) write an atrous conv as SPACE_TO_BATCH_ND -> CONV_2D/DEPTHWISE -> BATCH_TO_SPACE_ND.
Each batch of the middle conv is one phase of the padded input; its tap t of output r reads padded
pixel (r + t - q_top)*d + phase, so the whole is output pixel y reading x[y + t*d - pad_top] with
pad_top = P_top + q_top*d - C_top: a dilated conv. The padding that pads the phases reads zeros where
the dilated conv does, so the two agree everywhere. One conv instead of three ops, and the K210 target
then chooses its own way to run the dilation (targets/k210/passes/decompose_conv2d_dilation.py).
Conditions: a stride-1, undilated conv; non-negative resulting padding; self-contained (the
space_to_batch and conv results feed nothing else).
Order: after fold_transposes (TFLite's NHWC transposes sit between the three ops until then).
"""
from __future__ import annotations

from typing import NamedTuple

from compiler.ir import Graph, Node
from passes.manager import used_only_by


class Match(NamedTuple):
    s2b: Node
    conv: Node
    b2s: Node
    padding: tuple[tuple[int, int], tuple[int, int]]   # the dilated conv's padding


def fold_space_to_batch_into_conv2d(graph: Graph) -> bool:
    """Replace each space_to_batch -> conv2d -> batch_to_space chain by one dilated conv2d."""
    matches = [m for n in graph.nodes_of("batch_to_space") if (m := _match(graph, n))]
    for m in matches:
        _rewrite(graph, m)
    return bool(matches) | graph.eliminate_dead_code()


def _match(graph: Graph, b2s: Node) -> Match | None:
    conv = b2s.inputs[0].producer
    if conv.op != "conv2d" or not used_only_by(graph, conv.output, b2s):
        return None
    s2b = conv.inputs[0].producer
    if s2b.op != "space_to_batch" or not used_only_by(graph, s2b.output, conv):
        return None
    block = tuple(s2b.attrs["block"])
    if tuple(b2s.attrs["block"]) != block or tuple(conv.attrs["strides"]) != (1, 1) \
            or tuple(conv.attrs["dilations"]) != (1, 1):
        return None
    x, k = s2b.inputs[0], conv.inputs[1].shape[2:]
    padding = []
    for axis in range(2):
        d, (pt, _), (qt, _), (ct, _) = block[axis], s2b.attrs["pads"][axis], conv.attrs["padding"][axis], \
            b2s.attrs["crops"][axis]
        before = pt + qt * d - ct
        after = b2s.output.shape[2 + axis] - x.shape[2 + axis] - before + d * (k[axis] - 1)
        padding.append((before, after))
    if min(min(p) for p in padding) < 0:
        return None
    return Match(s2b, conv, b2s, tuple(padding))


def _rewrite(graph: Graph, m: Match) -> None:
    attrs = {**m.conv.attrs, "dilations": tuple(m.s2b.attrs["block"]), "padding": m.padding}
    conv = graph.add("conv2d", [m.s2b.inputs[0], *m.conv.inputs[1:]], name=f"{m.conv.name}_dilated", before=m.b2s,
                     **attrs)
    conv.output.quant = m.b2s.output.quant
    graph.replace_all_uses(m.b2s.output, conv.output)
