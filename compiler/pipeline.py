"""The compilation pipeline: pass groups as data, run top to bottom (nncase's target pipeline).

GENERIC holds the target-independent rewrites, in the order one round runs them; the group is run
until a whole round changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from compiler.errors import KpucError
from compiler.ir import Graph
from passes.batch_norm_to_mul_add import batch_norm_to_mul_add
from passes.eliminate_identity import eliminate_identity
from passes.fold_batch_norm_into_conv2d import fold_batch_norm_into_conv2d
from passes.fold_constants import fold_constants
from passes.fold_pad_into_conv2d import fold_pad_into_conv2d
from passes.fold_reshapes import fold_reshapes
from passes.fold_transposes import fold_transposes
from passes.fuse_clamp import fuse_clamp
from passes.fuse_leaky_relu import fuse_leaky_relu
from passes.manager import run_to_fixpoint
from targets.k210 import legalize as k210

GENERIC = [
    fold_constants,               # weights computed at run time become constants the others can read
    eliminate_identity,           # no-op nodes out of the way of the fusions
    fold_transposes,              # TFLite NHWC<->NCHW pairs cancel; producer and consumer become adjacent
    fold_reshapes,                # squeeze/flatten chains and size-1 transposes become one reshape or none
    fuse_leaky_relu,              # max(x, a*x) -> leaky_relu before anything fuses the max or the mul
    fold_batch_norm_into_conv2d,  # before fuse_clamp: a batch norm cannot fold through a fused clamp
    batch_norm_to_mul_add,        # only the batch norms no conv absorbed
    fold_pad_into_conv2d,         # after fold_transposes: a TFLite PAD sits between NHWC transposes
    fuse_clamp,                   # last: ReLU/ReLU6 into the producer once it is settled
]


def optimize_generic(graph: Graph, *, lint: bool = False,
                     dump: Callable[[Graph, str], None] | None = None) -> Graph:
    """Run GENERIC to a fixpoint, sweep dead nodes and validate; returns the same (mutated) graph."""
    run_to_fixpoint(graph, GENERIC, lint=lint, dump=dump)
    graph.eliminate_dead_code()
    graph.validate()
    return graph


# K210 KPU legalization, in float; the target owns the order (targets/k210/legalize.py).
LEGALIZE_K210 = k210.LEGALIZE_K210


def legalize_k210(graph: Graph, *, lint: bool = False, dump: Callable[[Graph, str], None] | None = None) -> Graph:
    """Run LEGALIZE_K210 to a fixpoint after GENERIC; CPU fallbacks get meta["why_not_kpu"]. Returns the graph."""
    k210.legalize_k210(graph, lint=lint, dump=dump)
    graph.validate()
    return graph


# ---------------------------------------------------------------- the whole compile
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
    output_quantize_threshold: int = 1024
    quantized_binary: bool = True
    bias_correction: bool = True         # kpuc: per-channel KPU norm_add correction on the calibration data
    weight_rounding: bool = True         # kpuc: data-aware (GPTQ) rounding of the KPU weight codes
    split_activations: int = 0           # kpuc: first N KPU layers' outputs as two offset uint8 copies (~9 bits)
    lint: bool = False


@dataclass
class Compiled:
    kmodel: bytes
    summary: dict
    float_graph: Graph
    graph: Graph                          # what was lowered (quantized unless --inference-type float)


def compile_model(path, opts: CompileOptions, *, dump: Callable[[Graph, str], None] | None = None,
                  samples: list | None = None) -> Compiled:
    """File -> importer -> generic passes -> (K210 legalization, calibration, quantization) -> kmodel bytes."""
    if opts.kmodel_version not in (3, 4):
        raise KpucError(f"--kmodel-version {opts.kmodel_version}: kpuc writes kmodel v3 or v4")
    float_graph, graph = prepare_model(path, opts, dump=dump, samples=samples)
    graph = device_graph(graph, opts)
    stage(dump, graph, f"v{opts.kmodel_version}_semantics")
    data, summary = lower_model(graph, opts)
    return Compiled(data, summary, float_graph, graph)


def device_graph(graph: Graph, opts: CompileOptions) -> Graph:
    """A copy of a prepared graph in the arithmetic of the kmodel's runtime (targets/k210/device_semantics.py):
    what the file computes, bit for bit, under QuantizedExecutor; the graph to lower."""
    from targets.k210.device_semantics import to_device_semantics
    return to_device_semantics(graph, opts.kmodel_version)


def prepare_model(path, opts: CompileOptions, *, dump: Callable[[Graph, str], None] | None = None,
                  samples: list | None = None) -> tuple[Graph, Graph]:
    """Everything before lowering, the same for v3 and v4: (float graph, graph to lower). `samples`
    (input arrays) calibrate instead of opts.dataset (`kpuc check` without --dataset)."""
    from compiler.importers import import_model
    if opts.target not in ("k210", "cpu"):
        raise KpucError(f"unknown target '{opts.target}' (k210 or cpu)")
    if opts.inference_type not in ("uint8", "float"):
        raise KpucError(f"unknown inference type '{opts.inference_type}' (uint8 or float)")
    graph = import_model(path, opts.input_format)
    stage(dump, graph, "import")
    optimize_generic(graph, lint=opts.lint, dump=dump)
    stage(dump, graph, "generic")
    float_graph = graph
    if opts.inference_type == "uint8":
        graph = quantize(graph, opts, dump=dump, samples=samples)
    return float_graph, graph


def lower_model(graph: Graph, opts: CompileOptions) -> tuple[bytes, dict]:
    """The kmodel (opts.kmodel_version) bytes and summary of a prepared graph; does not change the graph."""
    if opts.kmodel_version == 3:
        from targets.k210.lower_v3 import compile_v3
        return compile_v3(graph)
    from targets.k210.lower_v4 import compile_v4
    return compile_v4(graph, target=opts.target, input_type=opts.input_type)


def quantize(graph: Graph, opts: CompileOptions, *, dump=None, samples: list | None = None) -> Graph:
    """Legalize for the KPU (k210 target), calibrate on the dataset (or `samples`) and quantize to uint8."""
    from compiler.calibration import calibrate
    from compiler.datasets import iter_dataset
    from targets.k210.quantize import quantize_k210
    if not opts.dataset and samples is None:
        raise KpucError("--inference-type uint8 needs a calibration --dataset (or use --inference-type float)")
    if len(graph.inputs) != 1:
        raise KpucError(f"calibration feeds one input; the model has {len(graph.inputs)}")
    mark_small_outputs_float(graph, opts.output_quantize_threshold)
    x = graph.inputs[0]
    mean = 0.0 if opts.input_mean is None else opts.input_mean
    std = 1.0 if opts.input_std is None else opts.input_std
    if samples is None:
        samples = [s.data for s in iter_dataset(opts.dataset, x.shape, format=opts.dataset_format, mean=mean, std=std)]

    def calibrated(g: Graph) -> dict:
        return calibrate(g, samples, method=opts.calibrate_method, input_mean=opts.input_mean,
                         input_std=opts.input_std)

    # `graph` stays the float model (legalized in place); with --split-activations a copy is split and
    # quantized instead, so the float graph keeps the model's own function and layer shapes.
    work = graph
    if opts.target == "k210" and opts.split_activations > 0:
        from targets.k210.split_activations import split_activations
        work = graph.clone()
        split_activations(work, calibrated(work), opts.split_activations)
        stage(dump, work, "split_activations")
    if opts.target == "k210":
        for g in [graph] if work is graph else [graph, work]:
            legalize_k210(g, lint=opts.lint, dump=dump)
        stage(dump, work, "legalize_k210")
    ranges = calibrated(work)
    quantized = quantize_k210(work, ranges, weights_quantize_threshold=opts.weights_quantize_threshold,
                              output_quantize_threshold=opts.output_quantize_threshold,
                              quantized_binary=opts.quantized_binary)
    if opts.target == "k210" and (opts.bias_correction or opts.weight_rounding):
        from targets.k210.bias_correction import correct_biases   # targets/k210/bias_correction.py
        correct_biases(work, quantized, samples, round_weights=opts.weight_rounding, bias=opts.bias_correction)
    stage(dump, quantized, "quantize")
    return quantized


def mark_small_outputs_float(graph: Graph, threshold: int) -> None:
    """ncc's --output-quantize-threshold, applied where ncc applied it, before KPU legalization.

    ncc moves a matmul to the KPU only when its weights have at least `threshold` elements
    (matmul_to_fake_kpu_conv2d), and it never placed a conv on a map smaller than the KPU's 4x4, so
    such a conv stayed a CPU conv2d, kept float below the threshold (add_quant_checkpoints). kpuc can
    pad small maps to 4x4, but a classifier's last layer (MobileNet's 1001 logits on a 1x1 map) is the
    most quantization-sensitive layer of a network, so it follows ncc here."""
    from targets.k210.constraints import MIN_IN_H, MIN_IN_W
    for node in graph.nodes_of("conv2d", "matmul"):
        if node.op == "matmul":
            w = node.inputs[1]
            small = w.is_constant and w.type.size < threshold
            what = f"weights have {w.type.size} elements"
        else:
            h, w = node.inputs[0].shape[-2:]
            small = (h < MIN_IN_H or w < MIN_IN_W) and node.output.type.size < threshold
            what = f"a {w}x{h} map with {node.output.type.size} output elements"
        if small:
            node.meta["keep_float"] = f"{what}, fewer than --output-quantize-threshold {threshold}: kept in float"


def stage(dump, graph: Graph, name: str) -> None:
    if dump:
        dump(graph, name)
