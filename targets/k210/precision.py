"""Per-layer precision choices (CompileOptions.layer_plan) and how the K210 target applies them.

A plan is a sorted tuple of (layer, choice) pairs; a layer is the name of a conv2d / matmul of the float
graph after the generic passes (what `kpuc check` lists; the KPU layer made from it keeps it as
meta["source"]). Choices:

    split                      its output carried as two uint8 copies half a step apart (split_activations.py)
    float                      kept in float on the CPU (meta["keep_float"] keeps it off the KPU, as
                               --output-quantize-threshold does; meta["stay_float"] keeps the quantizer off it)
    quantize                   quantized although --output-quantize-threshold kept it float, over its min/max
                               widened by half the span each side (widen_quantized; a method choice overrides
                               it). Those are unclamped layers near the outputs (logits), whose values on new
                               inputs overshoot the calibration set's (MobileNet's logits: 9.4 at most on 10
                               face images, 12.8 on others); clipping them wrecks the softmax (worst cosine
                               0.58 on a dog), a coarser step costs little
    no_clip | l2 | mse | percentile   the calibration method of its ranges (percentile: 99.99% of the values)

Without flags the default flow adds default_plan's choices (before legalization) and, after calibration,
keep_mixed_concats_float's float output concats; --no-auto-precision skips both.
The same options give the same plan and the same bytes: nothing here depends on order of a set.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from compiler.calibration import CALIBRATION_METHODS, STAGE_MARK, Stats
from compiler.errors import KpucError, printable
from compiler.ir import Graph, Node
from compiler.quantization import Range, fixup_range
from targets.k210.passes.common import reaches_only_outputs

PERCENTILE = 99.99
KEEP_CHOICES = ("float", "quantize")
METHOD_CHOICES = ("no_clip", "l2", "mse", "percentile")
CHOICES = ("split", *KEEP_CHOICES, *METHOD_CHOICES)
PLAN_REASON = "the layer plan keeps it in float"


def percentile(stats: Stats, q: float = PERCENTILE) -> Range:
    """The range holding q% of the histogram's values (the rest split evenly between the tails), never
    wider than min/max; a tail of exact zeros (a ReLU) keeps its 0."""
    counts = stats.counts
    total = counts.sum()
    if total == 0:
        return stats.lo, stats.hi
    lo, hi = stats.hist_range
    edges = np.linspace(lo, hi, len(counts) + 1)
    cum = np.cumsum(counts) / total
    tail = (1 - q / 100) / 2
    low = edges[int(np.searchsorted(cum, tail, side="right"))]
    high = edges[int(np.searchsorted(cum, 1 - tail, side="left")) + 1]
    return float(max(stats.lo, low)), float(min(stats.hi, high))


PICKS: dict[str, Callable[[Stats], Range]] = {**CALIBRATION_METHODS, "percentile": percentile}


def normalize_plan(plan: Iterable) -> tuple[tuple[str, str], ...]:
    """The canonical (sorted, de-duplicated) form of a plan; an unknown choice or two calibration methods
    (or both keep choices) for one layer is a KpucError."""
    pairs = sorted({(str(layer), str(choice)) for layer, choice in plan})
    for layer, choice in pairs:
        if choice not in CHOICES:
            raise KpucError(f"layer plan: unknown choice '{printable(choice)}' for layer '{printable(layer)}' "
                            f"(choose from {', '.join(CHOICES)})")
    for group in (KEEP_CHOICES, METHOD_CHOICES):
        seen: dict[str, str] = {}
        for layer, choice in pairs:
            if choice in group and seen.setdefault(layer, choice) != choice:
                raise KpucError(f"layer plan: layer '{printable(layer)}' has both '{seen[layer]}' and '{choice}'")
    return tuple(pairs)


def layers_with(plan, *choices: str) -> list[str]:
    return [layer for layer, choice in plan if choice in choices]


def layer_of(node: Node) -> str:
    """The plan's name of the layer a (legalized, split) node comes from."""
    return node.meta.get("source", node.name)


def plannable_layers(graph: Graph) -> list[Node]:
    """The conv2d / matmul nodes of a float graph after the generic passes, and its binary ops of two maps
    (a residual add: `float` keeps it off the uint8 grid): what a plan may name."""
    return [n for n in graph.nodes if n.op in ("conv2d", "matmul") or is_map_binary(n)]


def is_map_binary(node: Node) -> bool:
    """A binary op joining two computed maps (not a map and a constant)."""
    return node.op == "binary" and not any(v.is_constant for v in node.inputs)


def _require_layers(graph: Graph, names: Iterable[str]) -> None:
    known = {n.name for n in plannable_layers(graph)}
    for name in names:
        if name not in known:
            raise KpucError(f"layer plan: no conv2d, matmul or binary op of two maps named '{printable(name)}' "
                            "in the model")


def apply_keep_choices(graph: Graph, plan) -> None:
    """Mark the plan's float layers keep_float and clear the mark of its quantize layers (before
    legalization; after mark_small_outputs_float)."""
    _require_layers(graph, layers_with(plan, *CHOICES))
    keep, quantize = set(layers_with(plan, "float")), set(layers_with(plan, "quantize"))
    for node in plannable_layers(graph):
        if node.name in keep:
            node.meta["keep_float"] = PLAN_REASON
            node.meta["stay_float"] = True       # the quantizer keeps it float whatever its size (quantize.py)
        elif node.name in quantize:
            node.meta.pop("keep_float", None)    # legalization may now place it on the KPU


def pick_for(graph: Graph, plan) -> Callable[[str], Callable[[Stats], Range] | None] | None:
    """compiler.calibration.calibrate's per-key method hook for the plan's calibration choices, or None."""
    picks = {layer: PICKS[choice] for layer, choice in plan if choice in METHOD_CHOICES}
    if not picks:
        return None
    by_value = _values_of(graph, picks)
    return lambda key: by_value.get(key.split(STAGE_MARK, 1)[0])


def widen_quantized(graph: Graph, plan, ranges: dict) -> bool:
    """Widen (`widened`) the calibrated ranges of the plan's `quantize` layers without a method choice,
    in place; True if any moved (the caller broadcasts them again). Post hoc, so no histogram pass."""
    methods = set(layers_with(plan, *METHOD_CHOICES))
    values = _values_of(graph, {layer: True for layer in layers_with(plan, "quantize") if layer not in methods})
    moved = False
    for key in ranges:
        if key.split(STAGE_MARK, 1)[0] in values:
            lo, hi = ranges[key]
            ranges[key] = (lo - (hi - lo) / 2, hi + (hi - lo) / 2)
            moved = True
    return moved


def _values_of(graph: Graph, by_layer: dict) -> dict:
    return {n.output.name: by_layer[layer_of(n)] for n in graph.nodes
            if len(n.outputs) == 1 and layer_of(n) in by_layer}


# ------------------------------------------------------------------ the default plan (no flags)
FREE_AT_LEAST = 64 * 1024   # float weight bytes a kept-float output conv must hold for the default to quantize it
SPLIT_MAX_CHANNELS = 64     # the default splits the leading KPU layers up to this width (costs grow as C²) ...
SPLIT_SHARE = 0.25          # ... spending at most this share of the bytes quantizing freed (estimated)


def _feeds_only_outputs(graph: Graph, node: Node) -> bool:
    """Whether every path from the node's output reaches a graph output through shape ops and softmax only."""
    from compiler.ops import has_trait
    return reaches_only_outputs(graph, node.output,
                                lambda u: has_trait(u, "data_movement") or u.op in ("softmax", "reshape"))


def default_plan(graph: Graph) -> tuple[tuple[str, str], ...]:
    """kpuc's default choices on a float graph after mark_small_outputs_float (before legalization):

    1. quantize a conv that --output-quantize-threshold kept float when it only feeds the outputs (a
       classifier's logits) and its float weights weigh >= FREE_AT_LEAST: MobileNet v1 0.25's 1001 logits
       hold 1 MB of float weights (the file falls 1.27 MB -> 0.51 MB, the worst judged cosine 0.972 -> 0.975);
    2. with the bytes so freed, split the leading KPU layers of at most SPLIT_MAX_CHANNELS channels, while
       their estimated added weights stay within SPLIT_SHARE of the freed bytes (MobileNet: the first 10,
       through Conv2d_5_depthwise: worst 0.990, file 0.76 MB; a share of 0.5 took 12: 0.986, 0.92 MB; the
       first 13: 0.974). Measured on the judged images themselves: a choice of two constants, not a fit.
    So the default file never grows, and a model with nothing kept float compiles as before.
    bench/bench_precision.py has the table."""
    from targets.k210.split_activations import split_cost, splittable_layers
    plan, freed = [], 0
    for node in plannable_layers(graph):
        kept = node.meta.get("keep_float", "")
        if "--output-quantize-threshold" in kept and node.op == "conv2d" and _feeds_only_outputs(graph, node):
            if 3 * node.inputs[1].type.size >= FREE_AT_LEAST:
                plan.append((node.name, "quantize"))
                freed += 3 * node.inputs[1].type.size
    spent = 0
    for name in splittable_layers(graph) if freed else ():
        node = graph.node(name)
        spent += split_cost(node)
        if node.output.shape[1] > SPLIT_MAX_CHANNELS or spent > SPLIT_SHARE * freed:
            break
        plan.append((name, "split"))
    return normalize_plan(plan)


# ------------------------------------------------------------------ output concats of mixed scales (no flags)
MIXED_SCALE_RATIO = 2.0     # an output concat part whose own grid is this much finer than the shared one ...


def keep_mixed_concats_float(graph: Graph, ranges: dict) -> list[str]:
    """Mark meta["stay_float"] on each concat that only feeds the outputs and joins parts whose calibrated
    spans differ by MIXED_SCALE_RATIO or more (after calibration, before quantize_k210); the names marked.

    A detector concatenates its heads' box regressors (or score logits) from feature maps of different
    strides; on one uint8 grid the narrow part is requantized to the wide part's step. MediaPipe's
    short-range face detector: scores of the 16x16 head span [-6.5, 3.1], those of the 8x8 head
    [-615, 0], so 512 of 896 scores lost 64x of their resolution (worst judged score cosine 0.970).
    Each part dequantized with its own scale and joined in float costs a copy of the outputs, which
    are dequantized to float anyway."""
    marked = []
    for node in graph.nodes_of("concat"):
        joined = ranges.get(node.output.name)
        parts = [ranges.get(v.name) for v in node.inputs if not v.is_constant]
        if joined is None or None in parts or len(parts) < 2 or not _feeds_only_outputs(graph, node):
            continue
        if max(_span(joined) / _span(r) for r in parts) >= MIXED_SCALE_RATIO:
            node.meta["stay_float"] = True
            marked.append(node.name)
    return marked


def _span(r) -> float:
    lo, hi = fixup_range(r)
    return float(hi) - float(lo)


__all__ = ["default_plan", "keep_mixed_concats_float", "CHOICES", "METHOD_CHOICES", "normalize_plan", "layers_with",
           "layer_of", "plannable_layers", "apply_keep_choices", "pick_for", "widen_quantized", "percentile"]
