"""The K210 target: it owns its pipeline after the generic passes (nncase v0.2's `cli/targets/k210/target.cpp`).

    float graph --mark_small_outputs_float, keep_output_sigmoid_float--> --legalization (to a fixpoint)-->
                legalized float graph
                --calibrate--> --quantize_k210 (+ bias correction, weight rounding)--> quantized graph
                --AFTER_QUANTIZATION[version]--> device graph --LOWER[version]--> kmodel bytes

`compiler/pipeline.py` drives these steps through the methods below without knowing the target. The
name "cpu" is the same target without the KPU (kmodel v4 neutral ops only), as ncc's `-t cpu`.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

from compiler.calibration import Calibrator, broadcast_ranges, calibrate
from compiler.errors import DoesNotFit, KpucError, printable
from compiler.ir import Graph
from compiler.model_quant import with_model_ranges
from compiler.pipeline import output_threshold
from passes.equalize_cross_layer import equalize_cross_layer
from targets.k210 import ops  # noqa: F401  (registers the K210 ops in the op table)
from targets.k210.bias_correction import ConvMeanCalibrator, ConvMeans, correct_biases
from targets.k210.device_semantics import to_v3_semantics, to_v4_semantics
from targets.k210.legalize import LEGALIZE_K210, legalize_k210
from targets.k210.lower_v3 import compile_v3
from targets.k210.lower_v4 import compile_v4
from targets.k210.ops import conv_key
from targets.k210.passes.keep_output_sigmoid_float import keep_output_sigmoid_float
from targets.k210.passes.mark_small_outputs_float import mark_small_outputs_float
from targets.k210.passes.split_wide_conv2d import one_range_per_split
from targets.k210.precision import (
    apply_keep_choices,
    default_plan,
    keep_mixed_concats_float,
    layers_with,
    normalize_plan,
    pick_for,
    widen_quantized,
)
from targets.k210.quantize import quantize_k210

Dump = Callable[[Graph, str], None] | None

# Post-quantization rewrites per kmodel version, in order: each takes the quantized graph and returns a copy in
# the arithmetic of that version's runtime, so the quantized executor computes what the file computes.
AFTER_QUANTIZATION = {3: [to_v3_semantics], 4: [to_v4_semantics]}


class K210:
    """The K210 with its KPU (`name="k210"`) or its CPU alone (`name="cpu"`)."""

    versions = (3, 4)
    legalization = LEGALIZE_K210

    def __init__(self, name: str = "k210"):
        self.name, self.kpu = name, name == "k210"

    def legalize(self, graph: Graph, *, lint: bool = False, dump: Dump = None) -> Graph:
        """The float graph placed for the KPU, in place: LEGALIZATION to a fixpoint (nothing for the cpu target)."""
        if self.kpu:
            legalize_k210(graph, lint=lint, dump=dump)
            graph.validate()
        return graph

    def prepare_for_quantization(self, graph: Graph, opts, samples: list, *, dump: Dump = None) -> Graph:
        """The legalized float graph to calibrate and quantize. `graph` is legalized in place; with
        --split-activations a split copy is legalized too and returned, so `graph` keeps the model's own
        function and layer shapes (the accuracy report compares against it). --equalize-layers rescales
        `graph` first (float-equivalent wherever calibration reached)."""
        if opts.equalize_layers:
            equalize_cross_layer(graph, samples)
        plan = self._keep_float(graph, opts, opts.layer_plan)
        work = graph
        splits = layers_with(plan, "split")
        if self.kpu and (opts.split_activations > 0 or splits):
            from targets.k210.split_activations import split_activations, splittable_layers
            work = graph.clone()
            if missing := sorted(set(splits) - set(splittable_layers(work))):
                raise KpucError(f"layer plan: layer '{printable(missing[0])}' cannot be split (a KPU conv read "
                                "only by KPU convs, at most half the KPU's channels)")
            split_activations(work, _ranges_to_split(work, opts, samples, splits), opts.split_activations, splits)
            _stage(dump, work, "split_activations")
        for g in [graph] if work is graph else [graph, work]:
            self.legalize(g, lint=opts.lint, dump=dump)
        if self.kpu:
            _stage(dump, work, "legalize_k210")
        return work

    def quantize(self, graph: Graph, opts, samples: list, *, dump: Dump = None) -> Graph:
        """The uint8 graph of a legalized float graph: calibration, quantize_k210, then kpuc's bias correction
        and data-aware weight rounding of the KPU layers."""
        correcting = self.kpu and (opts.bias_correction or opts.weight_rounding)
        means = ConvMeans() if correcting else None     # bias correction's float reference, from the same pass
        calibrator = partial(ConvMeanCalibrator, means=means) if correcting else Calibrator
        quantized = quantize_k210(graph, _calibrated(graph, opts, samples, calibrator),
                                  weights_quantize_threshold=opts.weights_quantize_threshold,
                                  output_quantize_threshold=opts.output_quantize_threshold,
                                  quantized_binary=opts.quantized_binary,
                                  # a pre-quantized model's reference adds exactly on its own grids
                                  own_grids=bool(opts.model_ranges))
        if correcting:
            correct_biases(graph, quantized, samples, round_weights=opts.weight_rounding, bias=opts.bias_correction,
                           means=means)
        _stage(dump, quantized, "quantize")
        return quantized

    @staticmethod
    def _keep_float(graph: Graph, opts, layer_plan) -> tuple:
        """Mark what stays float (small outputs, an output sigmoid, the plan's float choices), in place; the
        plan normalized."""
        mark_small_outputs_float(graph, output_threshold(opts, graph))
        keep_output_sigmoid_float(graph)
        plan = normalize_plan(layer_plan)
        apply_keep_choices(graph, plan)
        return plan

    def splittable(self, graph: Graph, opts, layer_plan) -> set[str]:
        """The layers a plan adding to `layer_plan` may split (`graph`, a float graph, is marked in place): a
        float choice can leave a conv read by a CPU op, which then cannot take a split pair."""
        from targets.k210.split_activations import splittable_layers
        self._keep_float(graph, opts, layer_plan)
        return set(splittable_layers(graph)) if self.kpu else set()

    def default_plan(self, graph: Graph, opts) -> tuple:
        """The layer plan of a compile without one (targets/k210/precision.py default_plan); marks the
        small outputs float first, as prepare_for_quantization will."""
        if not self.kpu or opts.split_activations or opts.inference_type != "uint8" or opts.model_ranges:
            return ()        # explicit splits, no KPU, or a pre-quantized model's own ranges: nothing to add
        mark_small_outputs_float(graph, output_threshold(opts, graph))
        return default_plan(graph)

    def search_plan(self, graph: Graph, opts, samples: list):
        """--target-cosine: the layer plan chosen on held-out samples (targets/k210/plan_search.py); `graph`
        is the float graph after the generic passes and is not modified."""
        if not self.kpu:
            raise KpucError("--target-cosine chooses KPU layer precision: it needs --target k210")
        from targets.k210.plan_search import search_plan
        return search_plan(self, graph, opts, samples)

    def device_graph(self, graph: Graph, version: int) -> Graph:
        """A copy of a prepared graph in the arithmetic of the kmodel version's runtime: the graph to lower."""
        for rewrite in AFTER_QUANTIZATION[version]:
            graph = rewrite(graph)
        return graph

    def lower(self, graph: Graph, opts) -> tuple[bytes, dict]:
        """The kmodel bytes and summary of a device graph; raises CannotLower listing every blocker."""
        refuse_tensors_no_k210_can_hold(graph)   # a float compile gets here without calibrating
        if opts.kmodel_version == 3:
            return compile_v3(graph)
        return compile_v4(graph, target=self.name, input_type=opts.input_type)


# The K210 has 8 MiB of SRAM in all (6 MiB main + 2 MiB KPU): a tensor with more values than that cannot be held
# even as uint8, so such a model is refused before calibration spends minutes running it.
K210_SRAM_BYTES = 8 * 1024 * 1024


def refuse_tensors_no_k210_can_hold(graph: Graph) -> None:
    """Raise for the first computed tensor that is empty (the runtimes have no zero extents) or has more
    values than the chip's SRAM has bytes (DoesNotFit)."""
    for node in graph.nodes:
        for v in node.outputs:
            if v.is_constant:
                continue
            where = f"tensor '{printable(v.name)}' of {node.op} '{printable(node.name)}'"
            if v.type.size == 0:
                raise KpucError(f"{where} is empty (shape {v.shape}): the K210 runtimes cannot hold an empty tensor")
            if v.type.size > K210_SRAM_BYTES:
                raise DoesNotFit(f"{where} holds {v.type.size:,} values: more than the K210's {K210_SRAM_BYTES:,} "
                                 "bytes of SRAM can hold even as uint8", step=node.name)


def _calibrated(graph: Graph, opts, samples: list, calibrator=Calibrator) -> dict:
    refuse_tensors_no_k210_can_hold(graph)
    plan = normalize_plan(opts.layer_plan)
    ranges = calibrate(graph, samples, method=opts.calibrate_method, input_mean=opts.input_mean,
                       input_std=opts.input_std, calibrator=calibrator,
                       pick_for=pick_for(graph, plan))
    if opts.model_ranges:  # a pre-quantized model compiled without --dataset: its own ranges win
        ranges = with_model_ranges(graph, ranges, dict(opts.model_ranges), conv_key)
        broadcast_ranges(graph, ranges)
    if widen_quantized(graph, plan, ranges):
        broadcast_ranges(graph, ranges)
    one_range_per_split(graph, ranges, dict(opts.model_ranges), conv_key)
    if opts.auto_precision:
        keep_mixed_concats_float(graph, ranges)
    return ranges


def _ranges_to_split(graph: Graph, opts, samples: list, splits: list[str]) -> dict:
    """Calibrated ranges of the unsplit graph for split_activations, which reads only its split layers'
    output ranges. A value's range depends only on what is upstream of it (broadcast_ranges works forwards),
    so with named splits alone only the part of the graph computing them runs (MobileNet's default plan
    splits its first 10 layers of 28); --split-activations N counts eligible layers over the whole graph."""
    if opts.split_activations:
        return _calibrated(graph, opts, samples)
    refuse_tensors_no_k210_can_hold(graph)   # the whole model's tensors, as a whole-graph calibration refuses them
    upstream = graph.clone()
    upstream.outputs = [upstream.node(name).output for name in splits]
    upstream.eliminate_dead_code()
    return _calibrated(upstream, opts, samples)


def _stage(dump: Dump, graph: Graph, name: str) -> None:
    if dump:
        dump(graph, name)
