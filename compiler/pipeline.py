"""The compilation pipeline, run top to bottom (nncase's target pipeline):

    file --importer--> IR --GENERIC--> float graph --target.prepare_for_quantization--> legalized
         --target.quantize--> quantized --target.device_graph--> device graph --target.lower--> kmodel bytes

GENERIC holds the target-independent rewrites, in the order one round runs them; the group is run
until a whole round changes nothing. Everything after it belongs to a `Target` object the caller passes
(cli.py: `targets.get_target(name)`); this module never imports `targets/`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from compiler.blas import blas_threads
from compiler.errors import KpucError
from compiler.ir import Graph
from passes.batch_norm_to_mul_add import batch_norm_to_mul_add
from passes.eliminate_identity import eliminate_identity
from passes.fold_batch_norm_into_conv2d import fold_batch_norm_into_conv2d
from passes.fold_constants import fold_constants
from passes.fold_pad_into_conv2d import fold_pad_into_conv2d
from passes.fold_reshapes import fold_reshapes
from passes.fold_scale_shift_into_conv2d import fold_scale_shift_into_conv2d
from passes.fold_space_to_batch_into_conv2d import fold_space_to_batch_into_conv2d
from passes.fold_transposes import fold_transposes
from passes.fuse_clamp import fuse_clamp
from passes.fuse_hard_swish import fuse_hard_swish
from passes.fuse_leaky_relu import fuse_leaky_relu
from passes.manager import run_to_fixpoint

Dump = Callable[[Graph, str], None] | None

GENERIC = [
    fold_constants,               # weights computed at run time become constants the others can read
    eliminate_identity,           # no-op nodes out of the way of the fusions
    fold_transposes,              # TFLite NHWC<->NCHW pairs cancel; producer and consumer become adjacent
    fold_reshapes,                # squeeze/flatten chains and size-1 transposes become one reshape or none
    fold_space_to_batch_into_conv2d,  # TF's atrous lowering back into one dilated conv, once transposes are gone
    fuse_leaky_relu,              # max(x, a*x) -> leaky_relu before anything fuses the max or the mul
    fold_batch_norm_into_conv2d,  # before fuse_clamp: a batch norm cannot fold through a fused clamp
    batch_norm_to_mul_add,        # only the batch norms no conv absorbed
    fold_pad_into_conv2d,         # after fold_transposes: a TFLite PAD sits between NHWC transposes
    fold_scale_shift_into_conv2d,  # Paddle's affine blocks (conv -> mul -> add) into the conv
    fuse_clamp,                   # ReLU/ReLU6 into the producer once it is settled
    fuse_hard_swish,              # after fuse_clamp: x * relu6(x + 3) / 6 is then three binaries
]


def optimize_generic(graph: Graph, *, lint: bool = False, dump: Dump = None) -> Graph:
    """Run GENERIC to a fixpoint, sweep dead nodes and validate; returns the same (mutated) graph."""
    run_to_fixpoint(graph, GENERIC, lint=lint, dump=dump)
    graph.eliminate_dead_code()
    graph.validate()
    return graph


# ---------------------------------------------------------------- the whole compile
class Target(Protocol):
    """What a target does after the generic passes (targets/k210/target.py is one)."""
    name: str
    versions: tuple[int, ...]

    def prepare_for_quantization(self, graph: Graph, opts: CompileOptions, samples: list, *,
                                 dump: Dump = None) -> Graph: ...
    def quantize(self, graph: Graph, opts: CompileOptions, samples: list, *, dump: Dump = None) -> Graph: ...
    def device_graph(self, graph: Graph, version: int) -> Graph: ...
    def lower(self, graph: Graph, opts: CompileOptions) -> tuple[bytes, dict]: ...


@dataclass(frozen=True)
class CompileOptions:
    """ncc v0.2's compile flags (kmodel-v4.md §13), with kpuc's --kmodel-version."""
    input_format: str | None = None
    target: str = "k210"                 # k210 (KPU + CPU) or cpu (no KPU)
    kmodel_version: int = 4
    inference_type: str = "uint8"        # uint8 (quantize) or float
    input_type: str = "default"          # ncc's --input-type: default, float or uint8 (v4)
    dataset: str | None = None
    dataset_format: str = "image"
    input_mean: float | None = None      # given -> the input range is forced, as ncc does
    input_std: float | None = None
    calibrate_method: str = "no_clip"
    weights_quantize_threshold: float = 64.0
    output_quantize_threshold: int | None = None     # None: output_threshold's default
    quantized_binary: bool = True
    bias_correction: bool = True         # kpuc: per-channel KPU norm_add correction on the calibration data
    weight_rounding: bool = True         # kpuc: data-aware (GPTQ) rounding of the KPU weight codes
    split_activations: int = 0           # kpuc: first N KPU layers' outputs as two offset uint8 copies (~9 bits)
    equalize_layers: bool = False        # kpuc: cross-layer equalization scaled by activations (passes/equalize_cross_layer.py)
    layer_plan: tuple = ()               # kpuc: ((layer, choice), ...) per-layer precision (targets/k210/precision.py)
    auto_precision: bool = True          # kpuc: no layer_plan given -> the target's default plan (+ float mixed-scale output concats)
    target_cosine: float | None = None   # kpuc: choose a layer plan until the held-out worst cosine reaches it
    max_file_size: int | None = None     # budgets of that search (bytes)
    max_main_ram: int | None = None
    max_kpu_ram: int | None = None
    firmware_bytes: int | None = None    # main memory the kmodel must fit, working + file (--firmware): the search keeps to it
    model_ranges: tuple = ()             # ((node name, (min, max)), ...): a pre-quantized model's own ranges
    lint: bool = False
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()   # --input-shape pins (compiler/importers/options.py)
    output_tensors: tuple[str, ...] = ()                        # --output-tensors: cut the graph there


@dataclass
class Prepared:
    """The stages of a model before lowering."""
    generic: Graph                        # after the generic passes (a snapshot: later stages do not touch it)
    float_graph: Graph                    # the float model; legalized in place when quantized
    legalized: Graph | None = None        # the float graph the target calibrated and quantized (legalized)
    quantized: Graph | None = None        # None for --inference-type float
    plan_search: object | None = None     # what --target-cosine chose and measured (the target's record)
    layer_plan: tuple = ()                # the per-layer plan the quantization used (given, default or searched)

    @property
    def final(self) -> Graph:
        """The graph to lower: quantized, or the float graph for --inference-type float."""
        return self.quantized if self.quantized is not None else self.float_graph


@dataclass
class Compiled:
    kmodel: bytes
    summary: dict
    float_graph: Graph
    graph: Graph                          # what was lowered: the device graph of the prepared one
    plan_search: object | None = None     # Prepared.plan_search


def compile_model(path, opts: CompileOptions, target: Target, *, dump: Dump = None,
                  samples: list | None = None) -> Compiled:
    """File -> importer -> generic passes -> the target's legalization, calibration, quantization,
    post-quantization rewrites and lowering -> kmodel bytes."""
    if opts.kmodel_version not in target.versions:
        raise KpucError(f"--kmodel-version {opts.kmodel_version}: kpuc writes kmodel "
                        + " or ".join(f"v{v}" for v in target.versions))
    with blas_threads(1):
        prepared = prepare_model(path, opts, target, dump=dump, samples=samples)
        graph = target.device_graph(prepared.final, opts.kmodel_version)
        stage(dump, graph, f"v{opts.kmodel_version}_semantics")
        data, summary = target.lower(graph, opts)
    return Compiled(data, summary, prepared.float_graph, graph, prepared.plan_search)


def prepare_model(path, opts: CompileOptions, target: Target, *, dump: Dump = None,
                  samples: list | None = None) -> Prepared:
    """Everything before the per-version steps: import, generic passes and, for uint8, the target's
    legalization, calibration and quantization. `samples` (input arrays) calibrate instead of
    opts.dataset (`kpuc check` without --dataset)."""
    with blas_threads(1):    # compiler/blas.py: spinning BLAS workers cost more than they give here
        prepared = prepare_float(path, opts, dump=dump)
        if opts.inference_type == "uint8":
            quantize(prepared, opts, target, dump=dump, samples=samples)
    return prepared


def prepare_float(path, opts: CompileOptions, *, dump: Dump = None) -> Prepared:
    """Import and run the generic passes: the float stages of a Prepared record."""
    from compiler.importers import import_model
    if opts.inference_type not in ("uint8", "float"):
        raise KpucError(f"unknown inference type '{opts.inference_type}' (uint8 or float)")
    graph = import_model(path, opts.input_format, input_shapes=opts.input_shapes, output_tensors=opts.output_tensors)
    stage(dump, graph, "import")
    optimize_generic(graph, lint=opts.lint, dump=dump)
    stage(dump, graph, "generic")
    return Prepared(generic=graph.clone(), float_graph=graph)


def output_threshold(opts: CompileOptions, graph: Graph) -> int:
    """--output-quantize-threshold, else its default: ncc's 1024 (an op with fewer outputs stays float) for a
    float model, 0 for a pre-quantized one, whose small tail ops (average pool, logits, softmax) compute on
    the model's own int8 grids: kept float they left tiny_resnet8_int8's judged worst cosine against LiteRT
    at 0.977, quantized it is 0.990."""
    from compiler.model_quant import is_prequantized
    if opts.output_quantize_threshold is not None:
        return opts.output_quantize_threshold
    return 0 if is_prequantized(graph) else 1024


def quantize(prepared: Prepared, opts: CompileOptions, target: Target, *, dump: Dump = None,
             samples: list | None = None) -> Graph:
    """Fill `prepared.legalized` and `prepared.quantized`: the target legalizes the float graph (in place),
    calibrates on the dataset (or `samples`) and quantizes to uint8. Returns the quantized graph."""
    from compiler.datasets import load_feeds
    from compiler.model_quant import is_prequantized, model_ranges, probe_samples
    graph = prepared.float_graph
    if is_prequantized(graph):
        # A pre-quantized model brings its own ranges and integer weights (source_kpu_weights): the K210
        # grids are the model's own, so the kmodel follows the model's integer arithmetic, and correcting
        # toward the float graph would pull it away (zoo, 28 judged photos against LiteRT: coral MobileNet
        # v2 quant worst cosine 0.15 with recalibrated ranges and re-rounded weights, 0.93 with its own,
        # 0.955 without bias correction). Equalization would rescale channels of tensors whose grids the
        # model gives (coral MobileNet v1 0.5 quant: 0.989 -> 0.0002). A dataset only measures what the model
        # gives no scale for; without one, smooth random probe images do.
        source = model_ranges(graph)
        if not opts.dataset and samples is None:
            samples = probe_samples(graph, source)
        opts = replace(opts, model_ranges=tuple(sorted(source.items())), weight_rounding=False,
                       bias_correction=False, equalize_layers=False)
    elif not opts.dataset and samples is None:
        raise KpucError("--inference-type uint8 needs a calibration --dataset (or use --inference-type float)")
    opts = replace(opts, output_quantize_threshold=output_threshold(opts, graph))
    if samples is None:
        mean = 0.0 if opts.input_mean is None else opts.input_mean
        std = 1.0 if opts.input_std is None else opts.input_std
        samples = load_feeds(opts.dataset, graph.inputs, format=opts.dataset_format, mean=mean, std=std)
    if opts.target_cosine is None and not opts.layer_plan and opts.auto_precision and hasattr(target, "default_plan"):
        opts = replace(opts, layer_plan=target.default_plan(graph, opts))
    if opts.target_cosine is not None:    # the target chooses per-layer precision on held-out samples first
        if not hasattr(target, "search_plan"):
            raise KpucError(f"--target-cosine: target {target.name} has no per-layer precision choices")
        prepared.plan_search = target.search_plan(graph, opts, samples)
        opts = replace(opts, layer_plan=prepared.plan_search.plan)
    prepared.layer_plan = tuple(opts.layer_plan)
    prepared.legalized = target.prepare_for_quantization(graph, opts, samples, dump=dump)
    prepared.quantized = target.quantize(prepared.legalized, opts, samples, dump=dump)
    return prepared.quantized


def stage(dump, graph: Graph, name: str) -> None:
    if dump:
        dump(graph, name)
