"""Carry a KPU layer's output as two uint8 copies half a step apart: about 9-bit activations on 8-bit hardware.

A KPU layer writes uint8 codes, so its output carries the rounding noise of a 256-level grid of step s.
Rounding the same value twice, once a quarter step low and once a quarter step high,

    A = round(y/s - 1/4),   B = round(y/s + 1/4),   (A + B)/2 = y/s rounded to the nearest half step

gives a grid of step s/2 (the ends 0 and 255 stay exact). The KPU can do this: the producer conv gets its
output channels twice, with the bias lowered / raised by s/4 (the same uint8 quantization then rounds
them a quarter step apart), and every consumer conv reads both copies with half its weights each. A
depthwise consumer has to add two channels, so it becomes a dense conv with a block-diagonal weight
(its zeros are exact in the KPU's weight codes). On the calibration data this is 9-bit quantization of
that tensor; MobileNet v1 0.25/128 loses most of its accuracy in its first layers' 8-bit outputs
(bench/bench_mobilenet_ptq.py), so splitting the first few layers buys most of a bit where it matters.

The float function is kept exactly where the producer's clamp is inactive (A/2 + B/2 = y); within s/4 of
a clamp bound the pair differs from y by at most s/8, well under the step the tensor is quantized to.
Costs: the split tensor takes twice the KPU RAM, and a depthwise consumer of C channels holds 2C·C
weights instead of C (so the first, narrow layers are the cheap ones to split).

Runs on the float graph after the generic passes and before KPU legalization; s comes from a calibration
of that graph (compiler.quantization.get_quant_param of the producer's range), and the graph must be
calibrated again after the split. Off by default (`--split-activations N`): it changes the layer shapes
ncc would produce.
"""
from __future__ import annotations

import numpy as np

from compiler.ir import Graph, Node
from compiler.quantization import get_quant_param
from targets.k210.constraints import MAX_CHANNELS, why_not_kpu


def _depthwise(node: Node) -> bool:
    return node.attrs["groups"] != 1


def _splittable(graph: Graph, node: Node) -> bool:
    """A KPU-bound conv (its activation, if any, is a fused clamp: a leaky ReLU is still its own node here,
    which is not a conv, so it is not split) whose every reader is a KPU-bound conv reading it as its data
    input, with room for twice the channels."""
    if node.op != "conv2d" or why_not_kpu(node) or node.output in graph.outputs:
        return False
    users = node.output.user_nodes()
    channels = node.output.shape[1]
    return (bool(users) and 2 * channels <= MAX_CHANNELS
            and all(u.op == "conv2d" and u.inputs[0] is node.output and not why_not_kpu(u) for u in users))


def _copied(node: Node, out_copies: int, in_copies: int) -> tuple[np.ndarray, dict]:
    """(weights, attrs) of conv `node` with its output channels repeated `out_copies` times and its input
    channels `in_copies` times, each input copy weighted 1/in_copies (the copies are averaged). A depthwise
    conv becomes dense: output o reads input i when they are copies of the same channel."""
    w = node.inputs[1].data
    if not _depthwise(node):
        return np.tile(w / in_copies, (out_copies, in_copies, 1, 1)).astype(np.float32), dict(node.attrs)
    c = w.shape[0]
    o, i = np.arange(c * out_copies)[:, None], np.arange(c * in_copies)[None, :]
    dense = np.where((o % c == i % c)[:, :, None, None], w[o % c, 0] / in_copies, 0)
    return dense.astype(np.float32), {**node.attrs, "groups": 1}


def split_layer(graph: Graph, node: Node, step: float) -> Node:
    """Replace conv `node` (C output channels) by one with 2C outputs, copy A biased by -step/4 and copy
    B by +step/4, and make its readers average the copies. Returns the new producer."""
    x, w, b = node.inputs
    weights, attrs = _copied(node, 2, 1)
    quarter = np.float32(step / 4)
    bias = np.concatenate([b.data - quarter, b.data + quarter]).astype(np.float32)
    split = graph.add("conv2d", [x, graph.const(weights, name=f"{w.name}_split", before=node),
                                 graph.const(bias, name=f"{b.name}_split", before=node)],
                      name=f"{node.name}_split", before=node, **attrs)
    split.meta.update({k: v for k, v in node.meta.items() if k != "range"})
    split.meta["split_from"] = node.output.name
    split.meta["source"] = node.meta.get("source", node.name)   # still the same layer for a layer plan
    for user in node.output.user_nodes():
        weights, user.attrs = _copied(user, 1, 2)
        user.inputs = [split.output, graph.const(weights, name=f"{user.inputs[1].name}_split", before=user),
                       *user.inputs[2:]]
    graph.erase(node)
    return split


def split_cost(node: Node) -> int:
    """Weight elements a split of conv `node` adds: its own weights once more, each reader's once more (a
    depthwise reader becomes dense: 2C·C instead of C per tap)."""
    cost = node.inputs[1].type.size
    for user in node.output.user_nodes():
        w = user.inputs[1]
        cost += (2 * w.shape[0] - 1) * w.type.size if _depthwise(user) else w.type.size
    return int(cost)


def splittable_layers(graph: Graph) -> list[str]:
    """Names of the convs split_activations can split, in graph order."""
    return [n.name for n in graph.nodes_of("conv2d") if _splittable(graph, n)]


def split_activations(graph: Graph, ranges: dict, count: int = 0, layers=()) -> list[str]:
    """Split the first `count` eligible conv outputs (graph order) and the eligible convs named in `layers`;
    `ranges` are calibrated ranges of `graph` by value name. Returns the names of the layers split (their
    outputs before the split)."""
    done: list[str] = []
    named, eligible = set(layers), 0
    for node in list(graph.nodes):
        if node.op != "conv2d" or node.output.name not in ranges or not _splittable(graph, node):
            continue
        eligible += 1
        if eligible > count and node.name not in named:
            continue
        step = 1.0 / get_quant_param(ranges[node.output.name]).scale
        done.append(node.output.name)
        split_layer(graph, node, step)
    graph.eliminate_dead_code()
    graph.validate()
    return done


__all__ = ["split_activations", "split_layer", "splittable_layers", "split_cost"]
