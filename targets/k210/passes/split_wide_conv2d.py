"""Split a dense conv2d that writes more channels than one KPU layer holds into KPU-sized convs and a concat.

conv2d(x, w[O], b[O]) -> y   ==>   concat(conv2d(x, w[0:o1], b[0:o1]), ..., conv2d(x, w[oₖ:O], b[oₖ:O]), axis=1)
Constraint: a KPU layer writes 1..1024 channels, and its input and output maps share the 2 MiB KPU RAM
(kpu.md §1, §7). MobileNet v2's last 1x1 conv writes 1280 channels and ran on the CPU; a conv whose
output map alone overflows the KPU RAM fits in slices too. Each piece is the same conv on a slice of the
output channels, so the float function is unchanged; a per-channel weight quantization (a pre-quantized
model's) is sliced with the weights, and every piece keeps the whole output's range (meta["range_of"]),
so the concat of their uint8 codes is exact. Only a conv that no other pass can place and that the
fewest equal pieces make placeable is split; a conv kept float (keep_float) is left alone.
Order: first of the K210 legalization passes, so the stride / padding passes then place each piece.
"""
from __future__ import annotations

import math

from compiler.ir import Graph, Node, QuantParam
from compiler.model_quant import only_clamps
from targets.k210.constraints import MAX_CHANNELS, why_not_kpu, why_not_kpu_conv
from targets.k210.passes.common import derive, source_name

MAX_PIECES = 8


def _pieces(conv: Node) -> int | None:
    """How many equal output-channel slices make `conv` placeable on the KPU, or None."""
    x, w, b = conv.inputs
    a = conv.attrs
    if a["groups"] != 1 or conv.meta.get("keep_float") or not (w.is_constant and b.is_constant):
        return None
    if why_not_kpu(conv) is None:
        return None
    for count in range(max(2, math.ceil(w.shape[0] / MAX_CHANNELS)), MAX_PIECES + 1):
        shape = (math.ceil(w.shape[0] / count),) + tuple(w.shape[1:])
        if why_not_kpu_conv(x.type, shape, groups=1, strides=a["strides"], padding=a["padding"],
                            dilations=a["dilations"]) is None:
            return count
    return None


def _sliced(q: QuantParam | None, lo: int, hi: int) -> QuantParam | None:
    """A per-output-channel quantization's slice (a per-tensor one as it is)."""
    if q is None or q.axis is None:
        return q
    scale, zero = tuple(q.scale), q.zero_point
    return QuantParam(scale=scale[lo:hi], zero_point=zero[lo:hi] if isinstance(zero, tuple) else zero, axis=q.axis)


def _rewrite(graph: Graph, conv: Node, count: int) -> None:
    x, w, b = conv.inputs
    total = w.shape[0]
    bounds = [(total * i // count, total * (i + 1) // count) for i in range(count)]
    outs = []
    for i, (lo, hi) in enumerate(bounds):
        wi = graph.const(w.data[lo:hi], name=f"{w.name}_{i}", quant=_sliced(w.quant, lo, hi), before=conv)
        bi = graph.const(b.data[lo:hi], name=f"{b.name}_{i}", quant=_sliced(b.quant, lo, hi), before=conv)
        piece = derive(graph, conv, "conv2d", [x, wi, bi], suffix=f"_part{i}", before=conv, **conv.attrs)
        piece.meta["kpu_rewrites"] += ("split_wide_conv2d",)
        piece.meta["range_of"] = conv.name
        outs.append(piece.output)
    cat = graph.add("concat", outs, name=f"{source_name(conv)}_concat", before=conv, axis=1)
    cat.meta.update(source=source_name(conv), range_of=conv.name)
    if conv.output in graph.outputs:   # a model output keeps its name (kpuc infer, reports, the plan search)
        conv.name, cat.name = cat.name, conv.name
        conv.output.name, cat.output.name = cat.output.name, conv.output.name
    graph.replace_all_uses(conv.output, cat.output)


def split_wide_conv2d(graph: Graph, **_) -> bool:
    """Split every dense conv2d that fits the KPU only in output-channel slices."""
    matches = [(conv, count) for conv in graph.nodes_of("conv2d") if (count := _pieces(conv))]
    for conv, count in matches:
        _rewrite(graph, conv, count)
    if matches:
        graph.eliminate_dead_code()
    return bool(matches)


def one_range_per_split(graph: Graph, ranges: dict, model_ranges: dict, conv_key) -> None:
    """After calibration: every piece of a split conv (legalized, calibrated `graph`) gets the range of the
    whole output, the model's own when it has one, else the union the concat measured, so the pieces
    share one uint8 grid and the concat copies codes. `conv_key(name)` names a KPU layer's conv stage,
    which is the layer's output when its activation is only clamps."""
    for cat in graph.nodes_of("concat"):
        whole = cat.meta.get("range_of")
        if whole is None or cat.output.name not in ranges:
            continue
        r = model_ranges.get(whole, ranges[cat.output.name])
        ranges[cat.output.name] = r
        for v in cat.inputs:
            ranges[v.name] = r
            node = v.producer
            if node.op == "kpu_conv2d" and only_clamps(node):
                ranges[conv_key(v.name)] = r
