"""Empirical bias correction of the KPU layers of a quantized graph (Nagel et al. 2019, "Data-free
quantization through weight equalization and bias correction", §4.2, its empirical variant).

8-bit weights (and the 8-bit activations feeding a layer) shift the *mean* of a layer's pre-activation
output per channel: E[W̃x̃] != E[Wx]. The shift is small per layer but it is systematic, so it adds up
through a deep network (a depthwise 3x3 layer has only 9 taps per channel to average its rounding error
over). For every kpu_conv2d_q, in graph order, on the calibration samples:

  shift[c] = mean over samples and pixels of  BN_q[c] - s_act_in · conv_f[c]

where BN_q is the KPU batch-norm output of the quantized layer run on the quantized upstream (already
corrected: the layers are corrected one after another, so each one also absorbs the mean error its
inputs bring), conv_f the float conv output (before any activation) of the float graph on the same
sample, and s_act_in the layer's BN-output scale (targets/k210/quantize.kpu_batch_norm). The shift, in
norm_add units, is subtracted from norm_add: only integer field *values* change, the graph stays a
bit-exact KPU graph.

Only calibration samples are used. Deterministic (graph order, float64 sums, round half away from zero).
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from compiler.calibration import split_activation
from compiler.executor import Executor
from compiler.ir import Graph, Node, Value
from compiler.kernels import KERNELS
from compiler.kernels.conv import conv2d
from compiler.quantization import F32, QuantParamU8
from targets.k210.kernels import QUANTIZED_KERNELS
from targets.k210.kpu import conv_acc, batch_norm
from targets.k210.kernels import kpu_tables
from targets.k210.quantize import equalize_weights, kpu_batch_norm, quantize_kpu_weights
from targets.k210.weight_rounding import round_kpu_weights


def _feeds(sample, graph: Graph) -> dict[str, np.ndarray]:
    data = getattr(sample, "data", sample)
    if isinstance(data, Mapping):
        return dict(data)
    data = data if isinstance(data, (list, tuple)) else [data]
    return {v.name: a for v, a in zip(graph.inputs, data, strict=True)}


def float_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, depthwise: bool) -> np.ndarray:
    """A kpu_conv2d's conv output before its activation chain (float32, NCHW)."""
    p = w.shape[-1] // 2
    return conv2d(x, w, b, padding=((p, p), (p, p)), groups=x.shape[1] if depthwise else 1)


class _ConvMeans(Executor):
    """The float graph, recording per kpu_conv2d the per-channel sum and count of its conv output."""

    def __init__(self, graph: Graph, kernels: Mapping = KERNELS):
        super().__init__(graph, kernels)
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self.maps: dict[str, list[np.ndarray]] = {}
        self.keep_maps = False

    def run_node(self, node: Node, args):
        out = super().run_node(node, args)
        if node.op == "kpu_conv2d":
            y = np.asarray(float_conv(args[0], args[1], args[2], node.attrs.get("depthwise", False)), np.float64)
        elif _float_conv_correctable(node):
            y = np.asarray(out[0], np.float64)
        else:
            return out
        name = node.output.name
        self.sums[name] = self.sums.get(name, 0.0) + y.sum(axis=(0, 2, 3))
        self.counts[name] = self.counts.get(name, 0) + y.size // y.shape[1]
        if self.keep_maps:
            self.maps.setdefault(name, []).append(y.astype(np.float32))
        return out


def _float_conv_correctable(node: Node) -> bool:
    """A float conv2d on the CPU (e.g. logits kept float) with a constant bias and no fused clamp."""
    clamp = node.attrs.get("fused_clamp", (-np.inf, np.inf))
    return (node.op == "conv2d" and len(node.inputs) == 3 and node.inputs[2].is_constant
            and clamp[0] == -np.inf and clamp[1] == np.inf and len(node.output.shape) == 4)


def bn_scale(float_node: Node, q_node: Node) -> float:
    """s_act_in of a quantized KPU layer: real conv output · s_act_in = BN output (norm_add units)."""
    _, w, b = float_node.inputs
    kq = q_node.meta["kpu_quant"]
    _, scales, _ = quantize_kpu_weights(w.data)
    return kpu_batch_norm(b.data, scales, kq["input"], kq["weights"], kq["conv"])[1]


def kpu_bn_output(x: np.ndarray, w: np.ndarray, bn: np.ndarray, act: np.ndarray, attrs: dict) -> np.ndarray:
    """int64 [N, OC, H, W]: a kpu_conv2d_q's batch-norm output (before the activation table and pool)."""
    table, _ = kpu_tables(bn, act)
    args = {k: attrs.get(k, 0) for k in ("pad_value", "arg_x", "shr_x", "arg_w", "shr_w", "arg_add")}
    return np.stack([batch_norm(conv_acc(xi, w, depthwise=attrs.get("depthwise", False), **args), table)
                     for xi in x])


def _set_const(v: Value, data: np.ndarray) -> None:
    arr = np.array(data)
    arr.flags.writeable = False
    v.data = arr


def correct_biases(float_graph: Graph, quant_graph: Graph, samples: Iterable, *,
                   kernels: Mapping = QUANTIZED_KERNELS, correct_float_convs: bool = False, region: str = "all", round_weights: bool = False) -> dict[str, np.ndarray]:
    """Correct the norm_add of every kpu_conv2d_q of `quant_graph` (made by quantize_k210 from
    `float_graph`) in place, layer after layer; returns {float value name: int64 shift per channel}."""
    samples = list(samples)
    feeds = [_feeds(s, float_graph) for s in samples]
    ref = _ConvMeans(float_graph)
    ref.keep_maps = region != "all"
    for f in feeds:
        ref.run(f)
    float_nodes = {n.output.name: n for n in float_graph.nodes if n.op == "kpu_conv2d"}

    # The quantized graph in lockstep over all samples, so layer L is corrected before L+1 runs.
    ex = Executor(quant_graph, kernels)
    g = quant_graph
    envs: list[dict[Value, np.ndarray]] = []
    for f in feeds:
        env = {}
        for v in g.inputs:
            env[v] = np.asarray(f[v.name]).reshape(v.shape).astype(v.dtype, copy=False)
        envs.append(env)
    shifts: dict[str, np.ndarray] = {}
    keep = set(g.outputs)
    for i, node in enumerate(g.nodes):
        if node.op == "input":
            continue
        name = node.meta.get("float_value")
        if node.op == "kpu_conv2d_q" and name in float_nodes and name in ref.sums:
            x, w, bn, act = node.inputs
            if round_weights:
                kq = node.meta["kpu_quant"]
                xs = np.concatenate([env[x].astype(np.float64) - kq["input"].zero_point for env in envs])
                w_eq = equalize_weights(float_nodes[name].inputs[1].data)[0]
                _set_const(w, round_kpu_weights(w_eq, kq["weights"], xs, depthwise=node.attrs.get("depthwise", False)))
                for env in envs:
                    env[w] = w.data
            s_bn = bn_scale(float_nodes[name], node)
            if region == "all":
                total = 0.0
                for env in envs:
                    total = total + kpu_bn_output(env[x], w.data, bn.data, act.data, node.attrs).sum(axis=(0, 2, 3))
                q_mean = np.asarray(total, np.float64) / ref.counts[name]    # same pixels, same samples
                diff = q_mean - ref.sums[name] / ref.counts[name] * s_bn
            else:
                lo, hi = split_activation(float_nodes[name].attrs.get("activation", ()))[0]
                err, cnt = 0.0, 0.0
                for env, fmap in zip(envs, ref.maps[name]):
                    qb = kpu_bn_output(env[x], w.data, bn.data, act.data, node.attrs).astype(np.float64)
                    fb = fmap.astype(np.float64) * s_bn
                    m = ((fmap > lo) & (fmap < hi)) if region == "active" else ((qb / s_bn > lo) | (fmap > lo))
                    err = err + ((qb - fb) * m).sum(axis=(0, 2, 3))
                    cnt = cnt + m.sum(axis=(0, 2, 3))
                diff = np.where(cnt > 0, err / np.maximum(cnt, 1), 0.0)
            shift = np.sign(diff) * np.floor(np.abs(diff) + 0.5)
            shift = shift.astype(np.int64)
            new_bn = np.array(bn.data, np.int64)
            new_bn[:, 2] -= shift
            _set_const(bn, new_bn)
            for env in envs:
                env[bn] = bn.data
            shifts[name] = shift
        elif (correct_float_convs and node.op == "conv2d" and _float_conv_correctable(node) and name in ref.sums):
            x, w, b = node.inputs
            total = 0.0
            for env in envs:
                total = total + np.asarray(ex.run_node(node, [env[v] for v in node.inputs])[0], np.float64).sum(axis=(0, 2, 3))
            shift = (total - ref.sums[name]) / ref.counts[name]
            _set_const(b, (np.asarray(b.data, np.float64) - shift).astype(b.dtype))
            for env in envs:
                env[b] = b.data
            shifts[name] = shift
        for env in envs:
            results = ex.run_node(node, [env[v] for v in node.inputs])
            for v, r in zip(node.outputs, results, strict=True):
                env[v] = r
            for v in dict.fromkeys(node.inputs):
                if ex._last_use.get(v) == i and v not in keep:
                    del env[v]
    return shifts


__all__ = ["correct_biases", "kpu_bn_output", "bn_scale", "float_conv"]
