"""Fold a constant per-channel scale or shift right after a conv2d into its weights and bias.

conv2d(x, w, b) * s   ->   conv2d(x, w * s, b * s)        s a scalar or one value per output channel
conv2d(x, w, b) + c   ->   conv2d(x, w, b + c)            (either operand order)
Why: Paddle2ONNX writes PP-LCNet's learnable affine blocks (and unfused batch norms) as a Mul and an Add
after each conv; quantized, each is one more uint8 rounding of the whole map, and the KPU's per-channel
batch-norm stage would have absorbed them for free.
Only self-contained matches: the conv's output feeds nothing but the mul/add, weights and bias are
constants and the conv has no fused clamp yet.
Order: with fold_batch_norm_into_conv2d, before fuse_clamp.
"""
from __future__ import annotations

import numpy as np

from compiler.ir import Graph, Node, Value
from passes.manager import rewrite, used_only_by

NO_CLAMP = (-np.inf, np.inf)


def _per_channel(c: Value, channels: int) -> np.ndarray | None:
    """The constant as one float64 per output channel, if it broadcasts as a scalar or over axis 1."""
    d = np.asarray(c.data, np.float64)
    if d.size == 1:
        return np.full(channels, float(d.flat[0]))
    squeezed = d.reshape(-1)
    if d.size == channels and d.ndim >= 3 and d.shape[-2:] == (1, 1) and (d.ndim == 3 or d.shape[0] == 1):
        return squeezed
    return None


def fold_scale_shift_into_conv2d(graph: Graph) -> bool:
    """Fold each mul/add by a per-channel constant into the conv2d that alone feeds it."""
    def binary(node: Node) -> Value | None:
        if node.attrs["op"] not in ("mul", "add") or tuple(node.attrs["fused_clamp"]) != NO_CLAMP:
            return None
        for v, c in (node.inputs, node.inputs[::-1]):
            conv = v.producer
            if (not c.is_constant or conv is None or conv.op != "conv2d" or v.shape != node.output.shape
                    or tuple(conv.attrs["fused_clamp"]) != NO_CLAMP or not used_only_by(graph, v, node)
                    or not all(i.is_constant for i in conv.inputs[1:])):
                continue
            k = _per_channel(c, v.shape[1])
            if k is None:
                continue
            x, w, b = conv.inputs
            wd, bd = w.data.astype(np.float64), b.data.astype(np.float64)
            if node.attrs["op"] == "mul":
                wd, bd = wd * k[:, None, None, None], bd * k
            else:
                bd = bd + k
            # in place, as fold_batch_norm_into_conv2d: the conv keeps its source name (its output feeds only `node`)
            conv.inputs = [x, graph.const(wd.astype(w.dtype), name=f"{w.name}/{node.name}", before=conv),
                           graph.const(bd.astype(b.dtype), name=f"{b.name}/{node.name}", before=conv)]
            conv.output.quant = node.output.quant
            return conv.output
        return None

    return rewrite(graph, [("binary", binary)])
