"""Equalize the channels a depthwise KPU conv reads: scale each channel of its input up to the tensor's
range where it is made, and that channel's depthwise weights down by as much.

A = kpu_conv2d(x, W1, b1) {no activation or ReLU}, read only by B = kpu_conv2d(A, W2, b2) {depthwise}
  ==>  A' = kpu_conv2d(x, s·W1, s·b1) -> B' = kpu_conv2d(A', W2/s, b2)       s[c] = min(R / r[c], MAX_SCALE)
r[c] is channel c's largest |value| of A on the calibration samples, R the largest over channels; a channel
within MIN_SCALE of R keeps s = 1.
Why: A's output is one uint8 tensor on one grid. An expansion conv's channels differ widely (MediaPipe's
selfie segmenter: 72 channels up to 70, most within 1-3 grid steps of 0.27 of zero), so most of what the
depthwise conv reads of them is rounding noise. ReLU and identity commute with a positive per-channel scale
(so does a KPU pool), and both layers already quantize per output channel: the KPU batch norm absorbs s in
A (whose weights are equalized per channel anyway), and B's channel c weights are equalized per channel
too, so W2/s gives the same codes. Nothing is spent. A ReLU6 clamp does not commute, so MobileNet-style
blocks are left alone. Cross-layer equalization into a dense conv would cost that conv's weight precision,
and scaling a residual block (both branches and the add) measured worse on the selfie mask: not done.
Order: after legalize_k210 (the KPU layers are known), before calibration. Float-equivalent up to the
rounding of the scaled weights.
"""
from __future__ import annotations

import numpy as np

from compiler.ir import Graph, Node, Value
from targets.k210.ops import split_activation
from targets.k210.passes.common import sole_user

MAX_SCALE = 64.0     # a channel this much narrower than the widest is scaled by MAX_SCALE only (near-dead channels)
MIN_SCALE = 1.25     # a channel within this of the widest already uses most of the grid: left as it is


def _homogeneous(node: Node) -> bool:
    """Whether the KPU conv's activation commutes with a positive scale (none, or a ReLU)."""
    (lo, hi), steps = split_activation(node.attrs["activation"])
    return not steps and hi == np.inf and lo in (0.0, -np.inf)


def _own_constants(node: Node) -> bool:
    return all(v.is_constant and len(v.users) == 1 for v in node.inputs[1:])


def equalizable(graph: Graph) -> list[tuple[Node, Node]]:
    """The (A, B) pairs of the rewrite, in graph order (once: an equalized A is not measured again)."""
    pairs = []
    for a in graph.nodes_of("kpu_conv2d"):
        b = sole_user(graph, a.output)
        if (b is not None and b.op == "kpu_conv2d" and b.attrs["depthwise"] and b.inputs[0] is a.output
                and "equalized" not in a.meta and _homogeneous(a) and _own_constants(a) and _own_constants(b)):
            pairs.append((a, b))
    return pairs


def equalize_kpu_depthwise_inputs(graph: Graph, *, channel_max: dict[str, np.ndarray]) -> bool:
    """Rescale every pair whose A output has per-channel maxima in `channel_max` (by value name)."""
    changed = False
    for a, b in equalizable(graph):
        r = channel_max.get(a.output.name)
        if r is None or not (np.asarray(r) > 0).any():
            continue
        r = np.asarray(r, np.float64)
        s = np.minimum(r.max() / np.where(r > 0, r, r.max()), MAX_SCALE)
        s = np.where(s < MIN_SCALE, 1.0, s)
        if np.all(s == 1.0):
            continue
        _scale(a.inputs[1], s)
        _scale(a.inputs[2], s)
        _scale(b.inputs[1], 1 / s)
        a.meta["equalized"] = f"output channels scaled by up to {s.max():.3g} for depthwise '{b.name}'"
        changed = True
    return changed


def _scale(v: Value, s: np.ndarray) -> None:
    """Multiply a constant along its first (output channel) axis."""
    v.data = (v.data * s.reshape((-1,) + (1,) * (v.data.ndim - 1))).astype(v.data.dtype)
