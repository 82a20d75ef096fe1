"""The `kpuc` command line. ncc's conventions where ncc had them.

Every failure is one line on stderr and exit status 2 (bad input, unsupported ops, usage); the
traceback only with -v. An unexpected internal error exits 3. Output files are written through an
anonymous file (O_TMPFILE) linked into place and renamed, so a failure, SIGTERM/SIGINT or even
SIGKILL never leaves a half-written file and never damages an existing one.
"""
from __future__ import annotations

import json
import math
import os
import sys
import traceback
import warnings
from pathlib import Path

# kpuc's matrix products are many and mid-sized (one per KPU layer, an im2col, a GPTQ Gram matrix): OpenBLAS's
# worker threads spin between them longer than they save (yolo20 infer: 45 ms of CPU with one thread, 320 ms
# with two; compile/check pin one thread through compiler/blas.py too). Set before numpy loads; the user's own
# OPENBLAS_NUM_THREADS wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import click  # noqa: E402
import numpy as np  # noqa: E402

from compiler.errors import DoesNotFit, KpucError, UnsupportedOps, printable
from compiler.output import remove_temp_files_on_signals, write_atomic
from compiler.progress import progress_enabled

VERBOSE = {"on": False}
MODEL = {"path": None}  # the model the running command reads, named by errors that do not name it
MAX_SPLIT_ACTIVATIONS = 1024  # more KPU layers than any model that fits the K210 has


class FiniteFloat(click.ParamType):
    """A float that is a number (no nan/inf), optionally not zero."""
    name = "float"

    def __init__(self, nonzero: bool = False, positive: bool = False):
        self.nonzero, self.positive = nonzero, positive

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.nonzero and x == 0:
            self.fail("must not be 0", param, ctx)
        if self.positive and x <= 0:
            self.fail(f"{value!r} must be above 0", param, ctx)
        return x


def _model_arg(f):
    """MODEL: a file path (a directory is refused; a missing file by the command, naming it)."""
    def remember(ctx, param, value):
        MODEL["path"] = value
        return value
    return click.argument("model", type=click.Path(dir_okay=False), callback=remember)(f)


def _import_options(f):
    """--input-shape NAME=D0,D1,... (repeatable) and --output-tensors NAME,... (compiler/importers/options.py)."""
    def shapes(ctx, param, value):
        from compiler.importers.options import parse_input_shape
        try:
            return tuple(parse_input_shape(v) for v in value)
        except KpucError as e:
            raise click.BadParameter(str(e)) from e

    def names(ctx, param, value):
        from compiler.importers.options import parse_output_tensors
        try:
            return parse_output_tensors(value) if value else ()
        except KpucError as e:
            raise click.BadParameter(str(e)) from e
    f = click.option("--output-tensors", callback=names, metavar="NAME,...",
                     help="Cut the graph at these tensors (they become the outputs), e.g. before detection "
                          "post-processing the host runs.")(f)
    return click.option("--input-shape", multiple=True, callback=shapes, metavar="NAME=D0,D1,...",
                        help="Pin the dynamic dims of input NAME (the file's own layout); repeatable.")(f)


def _verbose_option(f):
    def set_verbose(ctx, param, value):
        VERBOSE["on"] = VERBOSE["on"] or value
        return value
    return click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=set_verbose,
                        is_eager=True, help="Show tracebacks and the IR between stages.")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@_verbose_option
@click.version_option(package_name="kpuc", prog_name="kpuc")
@click.option("--max-elements", type=click.IntRange(min=1), metavar="N",
              help="Largest tensor (elements) an importer may create; default 2^26 or $KPUC_MAX_ELEMENTS.")
def cli(max_elements):
    """kpuc: compile TFLite and ONNX models for the Kendryte K210 KPU."""
    if max_elements:
        from compiler.importers.limits import ENV
        os.environ[ENV] = str(max_elements)


def write_ir_dump(graph, folder: str | None, stage: str) -> None:
    """Write the graph as Graphviz text to FOLDER/<stage>.dot (and text to -v's stderr)."""
    if VERBOSE["on"]:
        click.echo(f"--- IR after {stage} ---\n{graph}", err=True)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(folder) / f"ir_{stage}.dot", graph.to_dot().encode())


# ---------------------------------------------------------------- info
@cli.command()
@_model_arg
@click.option("-i", "--input-format", type=click.Choice(["tflite", "onnx"]), help="Guessed from the extension.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--dump-ir", type=click.Path(file_okay=False), help="Write the imported graph as Graphviz .dot.")
@_import_options
@_verbose_option
def info(model, input_format, as_json, dump_ir, input_shape, output_tensors):
    """Inputs, outputs, op histogram, parameter count and unsupported ops of MODEL."""
    from compiler.importers import import_model, summarize_model
    summary = summarize_model(model, input_format, input_shapes=input_shape, output_tensors=output_tensors)
    graph = None
    if not summary.unsupported:
        graph = import_model(model, input_format, input_shapes=input_shape, output_tensors=output_tensors)
        write_ir_dump(graph, dump_ir, "import")
    if as_json:
        doc = {
            "model": str(model), "format": summary.format,
            "inputs": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in summary.inputs],
            "outputs": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in summary.outputs],
            "ir_inputs": [{"name": v.name, "shape": list(v.shape), "dtype": v.dtype} for v in graph.inputs] if graph else None,
            "ir_outputs": [{"name": v.name, "shape": list(v.shape), "dtype": v.dtype} for v in graph.outputs] if graph else None,
            "ops": summary.op_histogram, "parameters": summary.parameters,
            "unsupported": [{"op": p.op_type, "node": p.node, "reason": p.reason} for p in summary.unsupported],
            "suggested_output_tensors": list(summary.cut_suggestion) or None,
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(f"model: {model} ({summary.format})")
        for title, rows, ir_values in (("inputs", summary.inputs, graph.inputs if graph else []),
                                       ("outputs", summary.outputs, graph.outputs if graph else [])):
            click.echo(f"{title}:")
            for k, (name, shape, dtype) in enumerate(rows):
                ir = f"   (kpuc: {list(ir_values[k].shape)} NCHW)" if k < len(ir_values) and \
                    len(ir_values[k].shape) == 4 and tuple(ir_values[k].shape) != tuple(shape) else ""
                click.echo(f"  {name:24} {dtype:8} {list(shape)}{ir}")
        total = sum(summary.op_histogram.values())
        click.echo(f"ops: {total} in {len(summary.op_histogram)} types")
        for op, n in summary.op_histogram.items():
            click.echo(f"  {op:24} {n}")
        click.echo(f"parameters: {summary.parameters:,}")
        if graph:
            click.echo(f"kpuc IR: {sum(n.op not in ('input', 'constant') for n in graph.nodes)} ops")
        click.echo("unsupported: " + ("none" if not summary.unsupported else str(len(summary.unsupported))))
        for p in summary.unsupported:
            click.echo(f"  {p.op_type:24} {p.node}: {p.reason}")
        if summary.cut_suggestion:
            click.echo("suggestion: only post-processing the host runs anyway blocks the model; cut before it with "
                       f"--output-tensors {','.join(summary.cut_suggestion)}")
    if summary.unsupported:
        raise UnsupportedOps(summary.unsupported)


class FirmwareBudget(click.ParamType):
    """--firmware: c-sdk, maixpy-mini, maixpy-full or a number of bytes."""
    name = "c-sdk|maixpy-mini|maixpy-full|BYTES"

    def convert(self, value, param, ctx):
        from targets.k210.check import firmware_budget
        try:
            firmware_budget(str(value))
        except KpucError as e:
            self.fail(str(e), param, ctx)
        return str(value)


def firmware_bytes(firmware: str) -> int:
    from targets.k210.check import firmware_budget
    return firmware_budget(firmware)[1]


# ---------------------------------------------------------------- compile
@cli.command("compile")
@_model_arg
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("-i", "--input-format", type=click.Choice(["tflite", "onnx"]), help="Guessed from the extension.")
@click.option("-o", "--output-format", type=click.Choice(["kmodel"]), default="kmodel", show_default=True)
@click.option("-t", "--target", type=click.Choice(["k210", "cpu"]), default="k210", show_default=True,
              help="k210: KPU + CPU layers; cpu: no KPU.")
@click.option("--kmodel-version", type=click.Choice(["3", "4"]), default="4", show_default=True,
              help="3: nncase v0.1 format (KPU-only SDK loader, faster); 4: nncase v0.2 format (more ops).")
@click.option("--dataset", type=click.Path(), help="Calibration data (a file or folder); needed for uint8.")
@click.option("--dataset-format", type=click.Choice(["image", "raw"]), default="image", show_default=True)
@click.option("--inference-type", type=click.Choice(["uint8", "float"]), default="uint8", show_default=True)
@click.option("--input-type", type=click.Choice(["default", "float", "uint8"]), default="default", show_default=True,
              help="Type the host feeds (v4); default: uint8 when the model quantizes its input first.")
@click.option("--input-mean", type=FiniteFloat(), help="Image preprocessing (x - mean) / std; forces the input range.")
@click.option("--input-std", type=FiniteFloat(nonzero=True))
@click.option("--calibrate-method", type=click.Choice(["no_clip", "l2", "mse"]), default="no_clip", show_default=True,
              help="no_clip: min/max; l2: ncc v0.2's L2-optimal clipping; mse: kpuc's MSE-optimal clipping.")
@click.option("--weights-quantize-threshold", type=FiniteFloat(positive=True), default=64.0, show_default=True,
              help="Convs/matmuls whose weight range exceeds this stay float.")
@click.option("--output-quantize-threshold", type=click.IntRange(min=0),
              help="Ops with fewer output elements than this stay float.  [default: 1024; 0 for a "
                   "pre-quantized model, whose own int8 grids are its function]")
@click.option("--no-quantized-binary", is_flag=True, help="Keep binary ops in float.")
@click.option("--no-bias-correction", is_flag=True,
              help="Skip kpuc's per-channel bias correction of KPU layers (nncase's numbers exactly).")
@click.option("--no-weight-rounding", is_flag=True,
              help="Round KPU weights to nearest instead of kpuc's data-aware rounding (nncase's numbers).")
@click.option("--split-activations", type=click.IntRange(0, MAX_SPLIT_ACTIVATIONS), default=0, show_default=True, metavar="N",
              help="Carry the first N KPU layers' outputs as two uint8 copies half a step apart (about 9-bit "
                   "activations where 8-bit noise hurts most; costs KPU RAM and weights; changes ncc's layer shapes).")
@click.option("--equalize-layers", is_flag=True,
              help="Rescale conv -> (ReLU) -> conv pairs channel by channel so narrow activation channels use more of "
                   "the uint8 grid (cross-layer equalization scaled by calibration activations; off by default).")
@click.option("--no-auto-precision", is_flag=True,
              help="Skip kpuc's default per-layer choices (quantized logits, split leading layers, float output "
                   "concats of mixed scales): ncc's layer shapes.")
@click.option("--target-cosine", type=click.FloatRange(0, 1, min_open=True), metavar="C",
              help="Choose per-layer precision (split / float / calibration method / quantize, float residual adds) "
                   "until the worst output cosine on held-out calibration samples reaches C; prints the per-layer "
                   "table.")
@click.option("--max-file-size", type=click.IntRange(min=1), metavar="BYTES",
              help="--target-cosine budget for the kmodel file (default: twice the plain compile's).")
@click.option("--max-main-ram", type=click.IntRange(min=1), metavar="BYTES", help="--target-cosine budget.")
@click.option("--max-kpu-ram", type=click.IntRange(min=1), metavar="BYTES", help="--target-cosine budget.")
@click.option("--firmware", type=FirmwareBudget(), default="c-sdk", show_default=True,
              help="Main-memory budget the kmodel must fit (as kpuc check): c-sdk 6 MiB, maixpy-mini 3.5 MiB, "
                   "maixpy-full 2 MiB, or bytes.")
@click.option("--allow-over-budget", is_flag=True, help="Write the kmodel even when it does not fit --firmware.")
@click.option("--dump-ir", type=click.Path(file_okay=False), help="Write the IR after each stage as Graphviz .dot.")
@_import_options
@_verbose_option
def compile_(model, output, input_format, output_format, target, kmodel_version, dataset, dataset_format,
             inference_type, input_type, input_mean, input_std, calibrate_method, weights_quantize_threshold,
             output_quantize_threshold, no_quantized_binary, no_bias_correction, no_weight_rounding, split_activations,
             equalize_layers, no_auto_precision, target_cosine, max_file_size, max_main_ram, max_kpu_ram, firmware,
             allow_over_budget, dump_ir, input_shape, output_tensors):
    """Compile MODEL (.tflite or .onnx) into a kmodel file OUTPUT for the K210."""
    from compiler.pipeline import CompileOptions, compile_model
    from targets import get_target
    folder = Path(output).parent
    if not folder.is_dir():  # before minutes of calibration, not after
        raise KpucError(f"{output}: the output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise KpucError(f"{output}: the output folder {folder} is not writable")
    opts = CompileOptions(input_format=input_format, target=target, kmodel_version=int(kmodel_version),
                          inference_type=inference_type, input_type=input_type, dataset=dataset, dataset_format=dataset_format,
                          input_mean=input_mean, input_std=input_std, calibrate_method=calibrate_method,
                          weights_quantize_threshold=weights_quantize_threshold,
                          output_quantize_threshold=output_quantize_threshold,
                          quantized_binary=not no_quantized_binary, bias_correction=not no_bias_correction,
                          weight_rounding=not no_weight_rounding, split_activations=split_activations,
                          equalize_layers=equalize_layers, auto_precision=not no_auto_precision, target_cosine=target_cosine,
                          max_file_size=max_file_size, max_main_ram=max_main_ram, max_kpu_ram=max_kpu_ram,
                          firmware_bytes=None if allow_over_budget else firmware_bytes(firmware),
                          lint=VERBOSE["on"], input_shapes=input_shape, output_tensors=output_tensors)
    dump = (lambda graph, stage: write_ir_dump(graph, dump_ir, stage)) if dump_ir or VERBOSE["on"] else None
    result = compile_model(model, opts, get_target(target), dump=dump)
    from targets.k210.check import budget_problem
    if not allow_over_budget and (problem := budget_problem(int(kmodel_version), result.kmodel, result.summary, firmware)):
        raise DoesNotFit(f"{output}: {problem}; not written (--allow-over-budget writes it anyway)")
    write_atomic(Path(output), result.kmodel)
    if result.plan_search is not None and (VERBOSE["on"] or progress_enabled()):   # compiler/progress.py's rule
        from targets.k210.plan_search import format_plan_search
        click.echo(format_plan_search(result.plan_search), err=True)
    click.echo(compile_summary(output, int(kmodel_version), result))


def compile_summary(output, version: int, result) -> str:
    """One line: where it went, layers on KPU vs CPU, KPU RAM peak, main memory, file size."""
    s = result.summary
    unit = "layers" if version == 3 else "nodes"
    return (f"{output}: kmodel v{version}, {s['kpu_ops']} {unit} on the KPU, {s['cpu_ops']} on the CPU; "
            f"KPU RAM peak {s['kpu_ram_peak']:,} B of 2 MiB; main memory {s['main_memory']:,} B; "
            f"file {len(result.kmodel):,} B")


# ---------------------------------------------------------------- check
@cli.command()
@_model_arg
@click.option("-i", "--input-format", type=click.Choice(["tflite", "onnx"]), help="Guessed from the extension.")
@click.option("--kmodel-version", type=click.Choice(["3", "4", "both"]), default="both", show_default=True)
@click.option("--dataset", type=click.Path(), help="Calibration data; adds the per-layer quantization sensitivity.")
@click.option("--dataset-format", type=click.Choice(["image", "raw"]), default="image", show_default=True)
@click.option("--input-mean", type=FiniteFloat(), help="Image preprocessing (x - mean) / std, as for compile.")
@click.option("--input-std", type=FiniteFloat(nonzero=True))
@click.option("--weights-quantize-threshold", type=FiniteFloat(positive=True), default=64.0, show_default=True)
@click.option("--output-quantize-threshold", type=click.IntRange(min=0),
              help="As compile's.  [default: 1024; 0 for a pre-quantized model]")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--firmware", type=FirmwareBudget(), default="c-sdk", show_default=True,
              help="Main-memory budget: c-sdk 6 MiB, maixpy-mini 3.5 MiB, maixpy-full 2 MiB, or bytes.")
@_import_options
@_verbose_option
def check(model, input_format, kmodel_version, dataset, dataset_format, input_mean, input_std,
          weights_quantize_threshold, output_quantize_threshold, fmt, firmware, input_shape, output_tensors):
    """Will MODEL run on the K210? Placement of every op, KPU RAM, main memory, v3/v4, all problems.

    Exit status: 0 it fits (at least one requested kmodel version), 1 it does not fit or has
    unsupported ops, 2 bad input or usage."""
    import os

    from targets.k210.check import CheckOptions, check_model, format_text
    versions = (3, 4) if kmodel_version == "both" else (int(kmodel_version),)
    opts = CheckOptions(input_format=input_format, versions=versions, dataset=dataset, dataset_format=dataset_format,
                        input_mean=input_mean, input_std=input_std, firmware=firmware,
                        weights_quantize_threshold=weights_quantize_threshold,
                        output_quantize_threshold=output_quantize_threshold, input_shapes=input_shape,
                        output_tensors=output_tensors)
    doc = check_model(model, opts).doc
    if fmt == "json":
        click.echo(json.dumps(doc, indent=2))
    else:
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        click.echo(format_text(doc, color=color), color=color)
    return doc["exit_code"]


# ---------------------------------------------------------------- infer
def is_kmodel(path: str, input_format: str | None) -> bool:
    """A .kmodel (or any file that is not .tflite/.onnx when -i is absent) is run as a kmodel."""
    return not input_format and Path(path).suffix.lower() not in (".tflite", ".onnx")


class GraphRunner:
    """Runs a .tflite/.onnx model with the float reference executor; a pre-quantized model's values
    are kept on its own grids (compiler/model_quant.py)."""

    def __init__(self, model, input_format, dump_ir, import_options: dict):
        from compiler.executor import Executor
        from compiler.importers import import_model
        from compiler.model_quant import GridExecutor, is_prequantized
        self.graph = import_model(model, input_format, **import_options)
        write_ir_dump(self.graph, dump_ir, "import")
        self.executor = (GridExecutor if is_prequantized(self.graph) else Executor)(self.graph)

    def __call__(self, feeds: dict):
        out = self.executor.run(feeds)
        return [out[v.name] for v in self.graph.outputs]


class KModelRunner:
    """Runs a kmodel v3/v4 file with kpuc's interpreter (bit-exact KPU simulator)."""

    def __init__(self, model):
        from targets.k210.kmodel import kmodel_inputs, read_kmodel
        self.kmodel = read_kmodel(Path(model).read_bytes())
        inputs = kmodel_inputs(self.kmodel)
        if len(inputs) != 1:
            raise KpucError(f"{model}: infer feeds one input, the kmodel has {len(inputs)}")
        (self.input_shape, self.input_dtype), = inputs

    def __call__(self, x):
        from targets.k210.kmodel import run_kmodel
        return run_kmodel(self.kmodel, [x])


@cli.command()
@_model_arg
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--dataset", required=True, type=click.Path(), help="A file or a folder (recursive) of inputs.")
@click.option("--dataset-format", type=click.Choice(["image", "raw"]), default="image", show_default=True)
@click.option("--input-mean", type=FiniteFloat(), default=0.0, show_default=True, help="Float image inputs: (x - mean) / std.")
@click.option("--input-std", type=FiniteFloat(nonzero=True), default=1.0, show_default=True)
@click.option("-i", "--input-format", type=click.Choice(["tflite", "onnx"]), help="Guessed from the extension.")
@click.option("--dump-ir", type=click.Path(file_okay=False), help="Write the graph as Graphviz .dot.")
@_import_options
@_verbose_option
def infer(model, outdir, dataset, dataset_format, input_mean, input_std, input_format, dump_ir, input_shape,
          output_tensors):
    """Run MODEL (.tflite, .onnx or .kmodel) on every file of --dataset.

    Writes OUTDIR/<sample>.out<i>.bin: raw float32, NCHW, one file per output."""
    from compiler.datasets import count_samples, iter_dataset, iter_feeds, list_files
    from compiler.progress import progress
    if not Path(model).is_file():
        raise KpucError(f"{model}: no such model file")
    if is_kmodel(model, input_format) and (input_shape or output_tensors):
        raise KpucError(f"{model}: --input-shape and --output-tensors apply to .tflite/.onnx models, not kmodels")
    run = KModelRunner(model) if is_kmodel(model, input_format) else \
        GraphRunner(model, input_format, dump_ir, dict(input_shapes=input_shape, output_tensors=output_tensors))
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(run, GraphRunner):  # one entry per graph input (compiler/datasets.py)
        samples = ((s.stem, s.feeds) for s in iter_feeds(dataset, run.graph.inputs, format=dataset_format,
                                                         mean=input_mean, std=input_std))
        total = count_samples(dataset, run.graph.inputs)
    else:
        samples = ((s.stem, s.data) for s in iter_dataset(dataset, run.input_shape, format=dataset_format,
                                                          dtype=run.input_dtype, mean=input_mean, std=input_std))
        total = len(list_files(dataset))
    count = n_out = 0
    for stem, data in progress(samples, total=total, label="infer"):
        results = run(data)
        target = out / stem
        target.parent.mkdir(parents=True, exist_ok=True)
        for i, r in enumerate(results):
            write_atomic(target.with_name(f"{target.name}.out{i}.bin"), np.ascontiguousarray(r, dtype="<f4").tobytes())
        count, n_out = count + 1, len(results)
    click.echo(f"{count} sample(s), {n_out} output(s) each -> {out}", err=True)


# ---------------------------------------------------------------- inspect
def _range(r: dict) -> str:
    mem = r.get("memory", r.get("mem", "?"))
    start = r.get("start", r.get("address", 0))
    shape = r.get("shape")
    return f"{mem}@{start}+{r.get('size', 0)}" + (f" {r.get('dtype', '')}{list(shape)}" if shape else "")


@cli.command()
@_model_arg
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@_verbose_option
def inspect(model, as_json):
    """Version, header fields, layer table and memory map of a kmodel v3/v4 file."""
    from targets.k210.kmodel import describe_kmodel, read_kmodel
    path = Path(model)
    if not path.is_file():
        raise KpucError(f"{model}: no such file")
    try:
        doc = describe_kmodel(read_kmodel(path.read_bytes()))
    except KpucError as e:
        raise type(e)(f"{model}: {e}") from e
    if as_json:
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    layers = doc.get("layers", doc.get("nodes", []))
    click.echo(f"{model}: kmodel v{doc['version']}, {len(layers)} {'layers' if doc['version'] == 3 else 'nodes'}")
    click.echo("header: " + ", ".join(f"{k}={v}" for k, v in doc["header"].items()))
    for key in ("inputs", "outputs"):
        if key in doc:
            click.echo(f"{key}: " + "; ".join(_range(r) if "size" in r else str(r) for r in doc[key]))
    click.echo(f"{'#':>4}  {'type':28} inputs -> outputs")
    for row in layers:
        kind = row.get("type", row.get("op"))
        ins = ", ".join(_range(r) for r in row.get("inputs", []))
        outs = ", ".join(_range(r) for r in row.get("outputs", []))
        extra = f"  kpu {row['kpu']}" if "kpu" in row else ""
        click.echo(f"{row['index']:>4}  {kind:28} {ins} -> {outs}{extra}")
    click.echo("memory: " + ", ".join(f"{k}={v}" for k, v in doc.get("memory", {}).items()))


def error_line(e: BaseException) -> str:
    """The one stderr line for a bad-input error: escapes what cannot print, joins what spans lines.
    (The importers name the model file; `kpuc check` reports the same text without the prefix.)"""
    text = str(e).strip() or type(e).__name__
    return "kpuc: error: " + " ".join(printable(line) for line in text.splitlines())


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI; bad input is one line and exit 2, a kpuc bug exit 3."""
    argv = sys.argv[1:] if argv is None else argv
    verbose = lambda: VERBOSE["on"] or "-v" in argv or "--verbose" in argv  # noqa: E731
    MODEL["path"] = None
    remove_temp_files_on_signals()
    if not verbose():   # numpy's overflow/divide warnings are not a user's business: one line or none
        warnings.simplefilter("ignore", RuntimeWarning)
    try:
        rv = cli.main(args=argv, prog_name="kpuc", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:  # usage: one line, not click's Usage block
        MODEL["path"] = None
        click.echo(error_line(e.format_message() if hasattr(e, "format_message") else e), err=True)
        sys.exit(2)
    except click.Abort:
        click.echo("kpuc: aborted", err=True)
        sys.exit(130)
    except UnsupportedOps as e:
        if verbose():
            traceback.print_exc()
            click.echo(f"kpuc: error: {printable(e.full)}", err=True)
        else:
            click.echo(error_line(e), err=True)
        sys.exit(2)
    except KpucError as e:
        if verbose():
            traceback.print_exc()
        click.echo(error_line(e), err=True)
        sys.exit(2)
    except MemoryError as e:  # a model too large for this machine, not a bug
        if verbose():
            traceback.print_exc()
        click.echo(error_line(f"{MODEL['path'] or 'kpuc'}: out of memory ({printable(str(e))[:120]}); "
                              "the model is too large for this machine"), err=True)
        sys.exit(2)
    except (OSError, RecursionError) as e:  # unreadable files, full disks, absurdly deep graphs
        if verbose():
            traceback.print_exc()
        click.echo(error_line(f"{type(e).__name__}: {e}" if isinstance(e, RecursionError) else e), err=True)
        sys.exit(2)
    except Exception as e:  # a bug in kpuc, not in the input
        if verbose():
            traceback.print_exc()
        tb = traceback.extract_tb(e.__traceback__)
        site = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        click.echo(f"kpuc: internal error: {type(e).__name__}{site}: {printable(str(e))[:300]} "
                   "(run with -v for the traceback)", err=True)
        sys.exit(3)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
