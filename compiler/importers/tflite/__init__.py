"""TFLite importer: a .tflite flatbuffer becomes a float32 NCHW IR graph.

Layout. Every TFLite tensor is bound to an IR Value in the tensor's own (NHWC) layout. 4-D spatial
ops (conv, pool, resize, space/depth moves) read `ctx.nchw(op, k)`, which wraps the operand in
transpose(0,3,1,2), run the NCHW IR op and bind its result through transpose(0,2,3,1); elementwise
and shape ops work in the file's layout directly. 4-D graph inputs and outputs are NCHW, joined to
the NHWC world by one transpose each. A later pass (`fold_transpose`) cancels the pairs; converters
translate and never optimize (nncase v0.2 importer, STYLE.md section 5).

Names. The node that computes a tensor's contents in NCHW (or its only layout) is named exactly like
the TFLite tensor; its NHWC view is `<name>_nhwc`, an NCHW view of an NHWC tensor `<name>_nchw`, and
helpers inside one op `<name>/<what>` (a fused activation's input is `<name>/conv2d`).

Arithmetic converters go through `ctx.emit`, which appends the op's epilogue: its fused activation
(RELU, RELU6, RELU_N1_TO_1 as clamp; TANH as unary tanh) and, for a uint8/int8 output, the clamp to
the range that output can represent. Quantized models rely on that range: uint8 MobileNet has no
fused ReLU6, only outputs in [0, 6].

Quantized models import as float graphs: constant weights are dequantized to float32 once, and every
Value whose TFLite tensor has a scale keeps it as `quant` (per-channel with the axis in IR layout).

Dynamic dims (`shape_signature` -1, placeholder 1s in `shape`): inputs take their pinned shape
(compiler/importers/options.py; a dynamic batch is 1) and every other tensor the shape its converter
computes, which must agree with the file in every static dim. `--output-tensors` cuts the op list
before conversion (`cut_model`), so ops past the cut are neither converted nor reported.

Unsupported ops are collected: an op without converter, or whose converter raises, is recorded as
`Unsupported(op type, first output tensor name, reason)` and its outputs become placeholders of the
file's shapes, so later ops still convert and report their own problems. `import_model` raises one
`UnsupportedOps` with all of them; `summarize_model` returns them.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from compiler.errors import KpucError, Unsupported
from compiler.importers.common import SourceSummary, checked_graph
from compiler.importers.options import (
    NO_OPTIONS,
    ImportOptions,
    SourceOp,
    check_pins_known,
    cut_suggestion,
    ops_to_keep,
    pinned_shape,
    raise_unpinned,
    unknown_tensor,
)
from compiler.importers.tflite import activation, conv, elementwise, logic, pool, quant, reduce, resize, shape, spatial  # noqa: F401
from compiler.importers.tflite.context import (
    CONVERTERS,
    KNOWN_DTYPES,
    TO_NCHW,
    TO_NHWC,
    TFLiteContext,
    ir_dtype,
    permute_quant,
)
from compiler.importers.tflite.reader import ModelData, OpInfo, read_model
from compiler.ir import Graph, Node, TensorType, Value


# ------------------------------------------------------------------ the read loop
def input_shapes(model: ModelData, options: ImportOptions) -> dict[int, tuple[int, ...]]:
    """Tensor index -> the (NHWC) shape each graph input gets; raises for dynamic dims left unpinned."""
    check_pins_known(options, [model.tensors[i].name for i in model.inputs])
    shapes, missing = {}, {}
    for index in model.inputs:
        t = model.tensors[index]
        shapes[index], unpinned = pinned_shape(t.name, t.declared, options)
        if unpinned:
            missing[t.name] = (t.declared, (), unpinned)
    raise_unpinned(missing)
    return shapes


def _declare_inputs(ctx: TFLiteContext, shapes: dict[int, tuple[int, ...]], problems: list[Unsupported]) -> None:
    for index in ctx.model.inputs:
        t, dims = ctx.tensor(index), shapes[index]
        if t.dtype not in KNOWN_DTYPES:
            problems.append(Unsupported("input", t.name, f"graph input of type {t.dtype}"))
            ctx.placeholder(index)
            continue
        if len(dims) == 4:
            v = ctx.graph.input(t.name, TensorType([dims[p] for p in TO_NCHW], ir_dtype(t)),
                                quant=permute_quant(t.quant, TO_NCHW))
            nhwc = ctx.add("transpose", [v], name=f"{t.name}_nhwc", perm=TO_NHWC)
            nhwc.quant = t.quant
            ctx.values[index] = nhwc
        else:
            v = ctx.values[index] = ctx.graph.input(t.name, TensorType(dims, ir_dtype(t)), quant=t.quant)
        if v.quant is not None and t.dtype in ("uint8", "int8", "int16"):
            # the codes the file's input holds: a uint8 input of an int8 model (QUANTIZE to int8 first) is
            # saturated to 0..255, not to the model's -128..127 (kpuc infer's GridExecutor reads this)
            info = np.iinfo(t.dtype)
            v.producer.meta["code_range"] = (int(info.min), int(info.max))


def _declare_outputs(ctx: TFLiteContext) -> None:
    outs = []
    for index in ctx.model.outputs:
        v, t = ctx.value(index), ctx.tensor(index)
        if v.type.rank == 4:
            v2 = ctx.add("transpose", [v], name=f"{t.name}_nchw", perm=TO_NCHW)
            v2.quant = permute_quant(v.quant, TO_NCHW)
            v = v2
        outs.append(v)
    ctx.graph.outputs = outs


def _convert_op(ctx: TFLiteContext, op: OpInfo) -> str | None:
    """Run the converter of `op`; returns why it failed, or None."""
    fn = CONVERTERS.get(op.op_type)
    if op.custom and fn is None:
        return "custom operator (not a TFLite builtin)"
    if fn is None:
        return f"no converter for TFLite op {op.op_type}"
    first = len(ctx.graph.nodes)
    try:
        fn(ctx, op)
        for k, index in enumerate(op.outputs):
            t = ctx.tensor(index)
            if index not in ctx.values:
                raise KpucError(f"the converter left output {k} ('{t.name}') unbound")
            if not t.fits(ctx.values[index].shape):
                raise KpucError(f"output '{t.name}' would have shape {ctx.values[index].shape}, "
                                f"the model says {t.declared}")
    except Exception as e:  # a converter bug must not hide the other ops' problems either
        for index in op.outputs:
            ctx.values.pop(index, None)
        return str(e) if isinstance(e, KpucError) else f"{type(e).__name__}: {e}"
    _fold_constants(ctx, op, ctx.graph.nodes[first:])
    return None


def _fold_constants(ctx: TFLiteContext, op: OpInfo, new_nodes: list[Node]) -> None:
    """Evaluate an op whose inputs are all constants (SHAPE → STRIDED_SLICE → PACK → RESHAPE chains)."""
    given = [i for i in op.inputs if i >= 0]
    constant = [ctx.values[i].is_constant if i in ctx.values else ctx.tensor(i).data is not None for i in given]
    if not given or not new_nodes or not all(constant):
        return
    import compiler.kernels.all  # noqa: F401  (fills KERNELS)
    from compiler.kernels import KERNELS
    env: dict[Value, np.ndarray] = {}
    for node in new_nodes:
        if node.op == "constant":
            env[node.output] = node.output.data
            continue
        fn = KERNELS.get(node.op)
        args = [env.get(v, v.data) for v in node.inputs]
        if fn is None or any(a is None for a in args):
            return
        try:
            out = fn(*args, **node.attrs)
        except Exception:
            return  # left to run at execution time, where the failure names the node
        for v, a in zip(node.outputs, out if isinstance(out, tuple) else (out,)):
            env[v] = np.asarray(a, dtype=v.dtype)
    for index in op.outputs:
        v = ctx.values[index]
        if v in env and not v.is_constant:
            ctx.values[index] = ctx.const(env[v], name=ctx.tensor(index).name, quant=v.quant)


def convert(model: ModelData, options: ImportOptions = NO_OPTIONS) -> tuple[Graph, list[Unsupported]]:
    """Translate every op of the main subgraph; returns the (unvalidated) graph and all problems."""
    ctx, problems = TFLiteContext(model), []
    _declare_inputs(ctx, input_shapes(model, options), problems)
    for op in model.ops:
        reason = _convert_op(ctx, op)
        if reason is not None:
            node = ctx.tensor(op.outputs[0]).name if op.outputs else f"op_{op.index}"
            problems.append(Unsupported(op.op_type, node, reason))
            for index in op.outputs:
                ctx.placeholder(index)
    try:
        _declare_outputs(ctx)
    except KpucError as e:
        problems.append(Unsupported("output", "", str(e)))
    return ctx.graph, problems


def import_model(path: str | Path, options: ImportOptions = NO_OPTIONS) -> Graph:
    """Read a .tflite file into a validated float32 NCHW graph, or raise UnsupportedOps / MalformedModel."""
    return checked_graph(*convert(cut_model(read_model(path), options.output_tensors), options))


def summarize_model(path: str | Path, options: ImportOptions = NO_OPTIONS) -> SourceSummary:
    """Inputs, outputs and op histogram as the file gives them (after the cut), plus every op we cannot
    translate and, when only post-processing blocks the model, the cut that leaves it out."""
    model = cut_model(read_model(path), options.output_tensors)
    io = [(model.tensors[i].name, model.tensors[i].declared, model.tensors[i].dtype) for i in model.inputs]
    outs = [(model.tensors[i].name, model.tensors[i].declared, model.tensors[i].dtype) for i in model.outputs]
    histogram = Counter(op.op_type for op in model.ops)
    buffers = {t.buffer: t.data.size for t in model.tensors if t.data is not None}
    _, problems = convert(model, options)
    constants = {t.name for t in model.tensors if t.data is not None}
    return SourceSummary("tflite", io, outs, dict(sorted(histogram.items())), int(sum(buffers.values())), problems,
                         cut_suggestion(_source_ops(model), problems, constants))


def _source_ops(model: ModelData) -> list[SourceOp]:
    """The ops as the cut sees them: named like their problems (first output, or op_<index>)."""
    name = lambda i: model.tensors[i].name if i >= 0 else ""  # noqa: E731
    return [SourceOp(op.op_type, name(op.outputs[0]) if op.outputs else f"op_{op.index}",
                     tuple(name(i) for i in op.inputs), tuple(name(i) for i in op.outputs)) for op in model.ops]


def cut_model(model: ModelData, output_tensors: tuple[str, ...]) -> ModelData:
    """The model with `output_tensors` as its outputs and only the ops they depend on."""
    if not output_tensors:
        return model
    index = {}
    for i in [*model.inputs, *(i for op in model.ops for i in op.outputs)]:
        index.setdefault(model.tensors[i].name, i)
    for name in output_tensors:
        if name not in index:
            raise unknown_tensor(name, index)
    keep = ops_to_keep(_source_ops(model), output_tensors)
    return replace(model, ops=[model.ops[k] for k in keep], outputs=[index[n] for n in output_tensors])


# Family files register their converters on import (they need `converter` and TFLiteContext above).
