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

With `round_weights`, each layer's uint8 weights are first re-rounded against the layer's actual
(quantized-upstream) inputs (targets/k210/weight_rounding.py, GPTQ) on nncase's unchanged grid, then the
layer is bias-corrected. norm_add stays inside its signed 32-bit field.

Only calibration samples are used. Deterministic (graph order, float64 sums, round half away from zero).
Measured on MobileNet v1 0.25/128 (bench/bench_mobilenet_ptq.py): correcting the mean over all pixels
beats correcting it over the pixels inside the ReLU6 window only; correcting the float logits conv the
same way overfits the 10 calibration images and is not done.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from compiler.calibration import Calibrator
from compiler.executor import Executor
from compiler.ir import Graph, Node, Value
from compiler.kernels import KERNELS
from compiler.kernels.conv import conv2d
from compiler.parallel import parallel_map
from targets.k210.kernels import POOL_TYPE_OF, QUANTIZED_KERNELS, kpu_tables
from targets.k210.kpu import SELECT_POOLS, activate, batch_norm, conv_acc, pool as kpu_stage_pool
from targets.k210.ops import apply_steps, kpu_pool, split_activation
from targets.k210.quantize import act_in_scale, equalize_weights
from targets.k210.weight_rounding import GptqFactor, gptq_factor, gptq_round_factored, gram


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


@dataclass
class ConvMeans:
    """The float reference of bias correction: per kpu_conv2d (by output value name), the per-channel
    float64 sum and the pixel count of its conv output (before any activation) over the calibration data."""
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, y: np.ndarray) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + y.astype(np.float64).sum(axis=(0, 2, 3))
        self.counts[name] = self.counts.get(name, 0) + y.size // y.shape[1]


class ConvMeanCalibrator(Calibrator):
    """compiler.calibration's Calibrator that also fills a ConvMeans from the conv outputs it computes
    anyway (first pass only), so bias correction needs no float run of its own."""

    def __init__(self, graph: Graph, kernels: Mapping = KERNELS, *, means: ConvMeans, **kwargs):
        super().__init__(graph, kernels, **kwargs)
        self.means = means

    def run_stages(self, node: Node, args):
        if node.op != "kpu_conv2d":
            return super().run_stages(node, args)
        a = node.attrs
        y = float_conv(args[0], args[1], args[2], a["depthwise"])
        if self.stage == "range":
            self.means.add(node.output.name, y)
        return kpu_stages_from_conv(y, a["activation"], a["pool"])


def kpu_stages_from_conv(y: np.ndarray, activation: tuple, pool: str) -> tuple[tuple, dict[str, np.ndarray]]:
    """The K210 calibration stages of a kpu_conv2d (targets/k210/ops.py kpu_conv2d_stages and
    _calibration_stages, same functions, same order) from its conv output `y`."""
    n_clamps = len(activation) - len(split_activation(activation)[1])
    y = apply_steps(y, activation[:n_clamps])
    z = apply_steps(y, activation[n_clamps:])
    return (kpu_pool(z, pool),), {"conv": y, "": z}


def conv_means(graph: Graph, samples: Iterable) -> ConvMeans:
    """The ConvMeans of a float graph over `samples`, for callers that calibrated without them."""
    means = ConvMeans()
    runner = ConvMeanCalibrator(graph, means=means)
    for s in samples:
        runner.run(_feeds(s, graph))
    return means


def bn_scale(float_node: Node, q_node: Node) -> float:
    """s_act_in of a quantized KPU layer: real conv output · s_act_in = BN output (norm_add units); it
    depends only on the layer's input, weight and conv-output quantizations."""
    kq = q_node.meta["kpu_quant"]
    return act_in_scale(kq["input"], kq["weights"], kq["conv"])


def kpu_bn_output(x: np.ndarray, w: np.ndarray, bn: np.ndarray, act: np.ndarray, attrs: dict) -> np.ndarray:
    """int64 [N, OC, H, W]: a kpu_conv2d_q's batch-norm output (before the activation table and pool)."""
    table, _ = kpu_tables(bn, act)
    args = {k: attrs[k] for k in ("pad_value", "arg_x", "shr_x", "arg_w", "shr_w", "arg_add")}
    return batch_norm(conv_acc(x, w, depthwise=attrs["depthwise"], **args), table, channel_axis=1)


def kpu_finish(bn_out: np.ndarray, act: np.ndarray, pool: str) -> np.ndarray:
    """The rest of kpu_conv2d_q from its batch-norm output [N, C, H, W]: activation table, then pool (uint8
    NCHW); targets/k210/kpu.kpu_conv2d's own stage functions, so the layer stays bit-exact."""
    return _pooled(_activated(bn_out, act), pool)


def _activated(bn_out: np.ndarray, act: np.ndarray, chunk_values: int = 1 << 18) -> np.ndarray:
    """The activation table on [N, C, H, W], a few samples at a time (its int64 temporaries stay small),
    the chunks spread over compiler.parallel's threads."""
    _, table = kpu_tables(np.zeros((0, 3), np.int64), act)
    step = max(1, chunk_values // max(1, bn_out[0].size))
    if step >= len(bn_out):
        return activate(bn_out, table)
    out = np.empty(bn_out.shape, np.uint8)

    def chunk(i):
        out[i:i + step] = activate(bn_out[i:i + step], table)
    parallel_map(chunk, range(0, len(bn_out), step))
    return out


def _pooled(y: np.ndarray, pool: str) -> np.ndarray:
    """A KPU pool on every channel of every sample of [N, C, H, W] (the pool works channel by channel)."""
    n, c, h, w = y.shape
    out = kpu_stage_pool(y.reshape(n * c, h, w), POOL_TYPE_OF[pool])
    return out.reshape(n, c, *out.shape[1:])


def _set_const(v: Value, data: np.ndarray) -> None:
    arr = np.array(data)
    arr.flags.writeable = False
    v.data = arr


def correct_biases(float_graph: Graph, quant_graph: Graph, samples: Iterable, *, round_weights: bool = False,
                   bias: bool = True, kernels: Mapping = QUANTIZED_KERNELS,
                   means: ConvMeans | None = None) -> dict[str, np.ndarray]:
    """Correct the norm_add (`bias`) and/or re-round the weight codes (`round_weights`) of every
    kpu_conv2d_q of `quant_graph` (made by quantize_k210 from `float_graph`) in place, layer after layer,
    on the calibration `samples`; returns {float value name: int64 norm_add shift per channel}.
    `means`: the float graph's ConvMeans on these samples (a ConvMeanCalibrator's), else measured here."""
    samples = list(samples)
    means = conv_means(float_graph, samples) if means is None else means
    feeds = [_feeds(s, float_graph) for s in samples]
    float_nodes = {n.output.name: n for n in float_graph.nodes if n.op == "kpu_conv2d"}

    # The quantized graph in lockstep over all samples, so layer L is corrected before L+1 runs.
    g = quant_graph
    ex = Executor(g, kernels)
    envs = [{v: np.asarray(f[v.name]).reshape(v.shape).astype(v.dtype, copy=False) for v in g.inputs} for f in feeds]
    shifts: dict[str, np.ndarray] = {}
    factors: dict[tuple, GptqFactor] = {}   # per (layer input, zero point, kernel, depthwise): shared by its readers
    keep = set(g.outputs)
    for i, node in enumerate(g.nodes):
        if node.op == "input":
            continue
        name = node.meta.get("float_value")
        if node.op == "kpu_conv2d_q" and name in float_nodes and name in means.sums:
            if round_weights and not node.meta["kpu_quant"].get("source_weights"):   # the model's codes stay
                _round_weights(node, float_nodes[name], envs, factors)
            target = (means.sums[name] * bn_scale(float_nodes[name], node), means.counts[name]) if bias else None
            shift = _run_corrected(node, envs, target)
            if bias:
                shifts[name] = shift
        else:
            for env in envs:
                results = ex.run_node(node, [env[v] for v in node.inputs])
                for v, r in zip(node.outputs, results, strict=True):
                    env[v] = r
        _free(envs, node, i, ex, keep)
        factors = {key: f for key, f in factors.items() if ex._last_use.get(key[0], -1) > i}   # x is read later
    return shifts


def _round_weights(node: Node, float_node: Node, envs: list[dict], factors: dict) -> None:
    """GPTQ-round the weight codes of kpu_conv2d_q `node` against its actual inputs in `envs`."""
    x, w = node.inputs[:2]
    kq, depthwise = node.meta["kpu_quant"], node.attrs["depthwise"]
    key = (x, kq["input"].zero_point, w.shape[-1], depthwise)
    if key not in factors:
        xs = np.concatenate([env[x].astype(np.int16) - np.int16(kq["input"].zero_point) for env in envs])
        factors[key] = gptq_factor(gram(xs, w.shape[-1], depthwise), overwrite=True)
        del xs
    w_eq = equalize_weights(float_node.inputs[1].data)[0]
    codes = gptq_round_factored(w_eq.reshape(w_eq.shape[0], -1), factors[key], kq["weights"])
    _set_const(w, codes.reshape(w_eq.shape))


def _run_corrected(node: Node, envs: list[dict], target: tuple[np.ndarray, int] | None,
                   budget_bytes: int = 32 << 20, chunk_values: int = 1 << 18) -> np.ndarray | None:
    """Run kpu_conv2d_q `node` on every env; with `target` (the float conv output's per-channel sum in BN
    units, its pixel count) first shift its norm_add so the batch-norm output's mean over all samples meets
    the float mean. Returns the shift per channel (None without a target).
    All samples run as one batch; output channels are independent (their own BN row, activation and
    pool), so a big layer runs a group of channels at a time, its int64 batch-norm outputs for all samples
    within about `budget_bytes`, its conv a few samples at a time (about `chunk_values` input taps, the
    chunks on compiler.parallel's threads: integer sums, the same in any order). A select pool (stride-2
    emulation) keeps one pixel in four: it is taken before the activation, which works pixel by pixel."""
    x, w, bn, act = node.inputs
    a = node.attrs
    xs = np.concatenate([env[x] for env in envs])            # [N, IC, H, W] codes
    n, ic, h, wd = xs.shape
    oc, k = w.shape[0], w.shape[-1]
    select_first = a["pool"] in SELECT_POOLS
    held = int(np.prod(node.output.shape[2:])) if select_first else h * wd     # BN values kept per channel
    step = max(1, budget_bytes // (8 * n * held))
    # the conv a few samples at a time: small maps share one call, big ones stay within the CPU's cache
    sample_step = max(1, chunk_values // ((min(step, oc) if a["depthwise"] else ic) * k * k * h * wd))
    new_bn = np.array(bn.data, np.int64)
    outs, shifts = [], []
    for c0 in range(0, oc, step):
        group = slice(c0, min(c0 + step, oc))
        w_g, bn_g = w.data[group], new_bn[group]
        held_shape = node.output.shape[2:] if select_first else (h, wd)
        bn_out = np.empty((n, group.stop - group.start, *held_shape), np.int64)

        def batch_norm_part(s0, w_g=w_g, bn_g=bn_g, group=group, bn_out=bn_out):
            """The BN outputs of samples s0.. into bn_out (kept pixels only); their exact per-channel sum."""
            part = kpu_bn_output(xs[s0:s0 + sample_step, group] if a["depthwise"] else xs[s0:s0 + sample_step],
                                 w_g, bn_g, act.data, a)
            total = part.sum(axis=(0, 2, 3), dtype=np.int64)
            bn_out[s0:s0 + len(part)] = _pooled(part, a["pool"]) if select_first else part
            return total
        total = sum(parallel_map(batch_norm_part, range(0, n, sample_step)))      # int64: exact in any order
        if target is not None:
            diff = (np.asarray(total, np.float64) - target[0][group]) / target[1]
            shift = (np.sign(diff) * np.floor(np.abs(diff) + 0.5)).astype(np.int64)
            shifts.append(shift)
            new_add = np.clip(bn_g[:, 2] - shift, -(1 << 31), (1 << 31) - 1)
            delta = (new_add - bn_g[:, 2])[:, None, None]   # (acc·mul >> shift) + add: add moves it exactly
            new_bn[group, 2] = new_add
            bn_out += delta
        y = _activated(bn_out, act.data)
        del bn_out
        outs.append(y if select_first else _pooled(y, a["pool"]))
    if target is not None:
        _set_const(bn, new_bn)
    out = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)
    ends = np.cumsum([len(env[x]) for env in envs])          # a sample may hold a batch of maps
    for env, end in zip(envs, ends):
        env[w], env[bn] = w.data, bn.data
        env[node.output] = out[end - len(env[x]):end]
    return np.concatenate(shifts) if target is not None else None


def _free(envs, node: Node, i: int, ex: Executor, keep) -> None:
    """Drop the values whose last reader was node i (compiler.executor.Executor's rule)."""
    for env in envs:
        for v in dict.fromkeys(node.inputs):
            if ex._last_use.get(v) == i and v not in keep:
                del env[v]


__all__ = ["correct_biases", "kpu_finish", "kpu_bn_output", "bn_scale", "float_conv", "ConvMeans",
           "ConvMeanCalibrator", "conv_means", "kpu_stages_from_conv"]
