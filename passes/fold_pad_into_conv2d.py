"""Fold an explicit spatial pad into the padding of the conv2d or max pool that consumes it.

conv2d(pad(x, p, value=0), padding=q)                         -> conv2d(x, padding=p+q)
reduce_window2d(pad(x, p, value=-inf), op=max, padding=q)     -> reduce_window2d(x, op=max, padding=p+q)
Why: TF "SAME" padding with stride 2 and PyTorch's F.pad export as a separate Pad; the KPU pads
inside the layer (a one-pixel ring, KPU spec) and legalize_kpu_conv2d must see the conv's real
padding. Conditions: constant mode, non-negative amounts on H and W only (a crop does not commute
with padding), a zero pad value for conv2d; for a max pool a value of -inf (or the dtype's lowest,
the value the kernel pads with) and every pooling window seeing at least one real element, so no
window's result depends on what it pads with (and no ceil_mode, whose extra windows depend on where
the padding came from). Mean pools are never folded: their divisor counts an explicit pad as data
but not their own padding (count_include_pad=False).
Only self-contained matches: the pad feeds nothing but the conv or pool.
Order: after fold_transposes (TFLite PAD sits in NHWC between the transposes), before the KPU
legalization.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from compiler.ir import Graph, Node
from compiler.ops import conv_out
from passes.manager import used_only_by


class Match(NamedTuple):
    pad: Node
    consumer: Node
    padding: tuple[tuple[int, int], tuple[int, int]]  # the consumer's new padding


def fold_pad_into_conv2d(graph: Graph) -> bool:
    """Merge each foldable pad into the padding of its conv2d or max reduce_window2d consumer."""
    matches = [m for n in graph.nodes_of("conv2d", "reduce_window2d") if (m := _match(graph, n))]
    for m in matches:
        _rewrite(m)
    return bool(matches) | graph.eliminate_dead_code()


def _match(graph: Graph, node: Node) -> Match | None:
    pad = node.inputs[0].producer
    if pad.op != "pad" or not used_only_by(graph, pad.output, node):
        return None
    if pad.attrs["mode"] != "constant":
        return None
    pads = tuple(tuple(p) for p in pad.attrs["pads"])
    if len(pads) != 4 or pads[:2] != ((0, 0), (0, 0)) or min(min(p) for p in pads) < 0:
        return None
    old = node.attrs["padding"]
    if min(min(p) for p in old) < 0:
        return None
    padding = tuple((a + c, b + d) for (a, b), (c, d) in zip(pads[2:], old))
    value = pad.attrs["value"]
    if node.op == "conv2d":
        return Match(pad, node, padding) if value == 0 else None
    if node.attrs["op"] != "max" or node.attrs["ceil_mode"]:
        return None
    if not np.issubdtype(pad.output.dtype, np.floating):
        return None
    if value != -np.inf and value > np.finfo(pad.output.dtype).min:
        return None
    x = pad.inputs[0]
    a = node.attrs
    sizes, strides, dilations = x.shape[2:], a["strides"], a["dilations"]
    if all(_every_window_sees_data(*args) for args in zip(sizes, a["kernel"], strides, dilations, padding)):
        return Match(pad, node, padding)
    return None


def _every_window_sees_data(size: int, k: int, s: int, d: int, pad) -> bool:
    """Whether each window along one axis has a tap on a real element (not only on padding)."""
    out = conv_out(size, k, s, d, pad)
    taps = np.arange(out)[:, None] * s + np.arange(k)[None, :] * d
    return bool(((taps >= pad[0]) & (taps < pad[0] + size)).any(axis=1).all())


def _rewrite(m: Match) -> None:
    m.consumer.inputs = [m.pad.inputs[0], *m.consumer.inputs[1:]]
    m.consumer.attrs = {**m.consumer.attrs, "padding": m.padding}
