"""ONNX importer: a .onnx model (opsets 7 and up) becomes a float32 NCHW IR graph.

ONNX is NCHW like the IR, so converters map ops one to one or into a few IR ops (Gemm becomes
transpose + matmul + mul + add). Values keep the ONNX tensor names: initializers and graph inputs
are named as in the file, and the IR node that computes an ONNX tensor is renamed to that tensor's
name once its converter returns (helpers inside it are `<name>_<op>`).

Reading. Initializers become constants (float16/float64 narrowed to float32); external data is read
only from files inside the model's own folder. The graph's inputs are the ONNX inputs that no
initializer covers; a dynamic batch dimension is read as 1, any other dynamic dimension must be pinned
with --input-shape (compiler/importers/options.py), and one error lists every dim left unpinned.
`--output-tensors` cuts the node list before conversion (`cut_model`).
Nodes whose inputs are all constant fold at import (`OnnxContext.add`), so static shape chains
(Shape -> Gather -> Concat -> Reshape) leave only constants behind, which dead-code elimination drops.

Unsupported ops are collected: a node whose op has no converter, or whose converter rejects an
attribute, an input or a dtype, is recorded as `Unsupported(op type, node name, reason)`; nodes
reading its outputs are still checked for a converter. `import_model` raises one `UnsupportedOps`
with all of them; `summarize_model` returns them.

Bad files: `validate.py` checks the structure before any converter runs (opset range, one producer
per tensor, unique names, UTF-8, data types, attribute kinds and ranges) and every tensor the
importer creates is held to the element limit (`limits.py`) before it is allocated.

Opsets: converters follow the spec from opset 7 on; later opsets up to the installed onnx package's
newest were checked for our ops (opset 22 and later only widened their type lists, or added
attributes whose non-default values the converters reject).
"""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from compiler.errors import KpucError, MalformedModel, Unsupported, printable
from compiler.importers.common import SourceSummary, checked_graph
from compiler.importers.limits import TooLarge, check_elements

# Family files register their converters on import.
from compiler.importers.onnx import (  # noqa: F401,E402
    activation,
    constant,
    conv,
    elementwise,
    logic,
    pool,
    quant,
    reduce,
    resize,
    shape as shape_converters,  # noqa: F401,E402
    slicing,
)
from compiler.importers.onnx.context import (
    CONVERTERS,
    RUNTIME_DTYPES,
    NotConvertible,
    OnnxContext,
    check_call,
    graph_array,
    lookup,
)
from compiler.importers.onnx.validate import (  # noqa: F401
    DEFAULT_DOMAINS,
    MIN_OPSET,
    check_attribute,
    check_external,
    check_tensor,
    opset_of,
    validate_graph,
)
from compiler.importers.options import (
    NO_OPTIONS,
    BadInputShape,
    ImportOptions,
    SourceOp,
    UnpinnedInputs,
    check_pins_known,
    cut_suggestion,
    ops_to_keep,
    pinned_shape,
    raise_unpinned,
    unknown_tensor,
)
from compiler.ir import Graph, TensorType, Value


def import_model(path: str | Path, options: ImportOptions = NO_OPTIONS) -> Graph:
    """Translate an ONNX file into a validated IR graph, or raise UnsupportedOps listing every problem."""
    path = Path(path)
    return checked_graph(*_convert(cut_model(_load(path), options.output_tensors), path.parent, options))


def summarize_model(path: str | Path, options: ImportOptions = NO_OPTIONS) -> SourceSummary:
    """The file's inputs, outputs, op histogram and parameter count (after the cut), plus every
    unsupported op and, when only post-processing blocks the model, the cut that leaves it out."""
    path = Path(path)
    model = cut_model(_load(path), options.output_tensors)
    g = model.graph
    inits = {t.name for t in g.initializer}
    ops = Counter(n.op_type if n.domain in DEFAULT_DOMAINS else f"{n.domain}.{n.op_type}" for n in g.node)
    try:
        _, problems = _convert(model, path.parent, options)
    except (MalformedModel, UnpinnedInputs, BadInputShape):
        raise
    except KpucError as e:  # an opset or external-data location we refuse: the whole model is the problem
        problems = [Unsupported("model", path.name, str(e))]
    return SourceSummary(
        format="onnx",
        inputs=[_declared(vi) for vi in g.input if vi.name not in inits],
        outputs=[_declared(vi) for vi in g.output],
        op_histogram=dict(sorted(ops.items())),
        parameters=sum(math.prod(t.dims) for t in g.initializer),
        unsupported=problems,
        cut_suggestion=cut_suggestion(_source_ops(g), problems, inits))


def _source_ops(g: onnx.GraphProto) -> list[SourceOp]:
    """The nodes as the cut sees them, named as their problems name them."""
    return [SourceOp(n.op_type, n.name or next((o for o in n.output if o), n.op_type), tuple(n.input),
                     tuple(n.output)) for n in g.node]


def cut_model(model: onnx.ModelProto, output_tensors: tuple[str, ...]) -> onnx.ModelProto:
    """The model (changed in place) with `output_tensors` as its outputs and only the nodes they need."""
    if not output_tensors:
        return model
    g = model.graph
    known = [vi.name for vi in g.input] + [o for n in g.node for o in n.output if o]
    for name in output_tensors:
        if name not in known:
            raise unknown_tensor(name, known)
    keep = ops_to_keep(_source_ops(g), output_tensors)
    nodes = [g.node[k] for k in keep]
    infos = {vi.name: vi for vi in [*g.value_info, *g.output, *g.input]}
    outputs = [infos.get(n) or onnx.helper.make_empty_tensor_value_info(n) for n in output_tensors]
    outputs = [onnx.ValueInfoProto.FromString(vi.SerializeToString()) for vi in outputs]
    del g.node[:]
    g.node.extend(nodes)
    del g.output[:]
    g.output.extend(outputs)
    return model


def supported_ops() -> list[str]:
    """Every ONNX op type that has a converter, sorted."""
    return sorted(CONVERTERS)


# ------------------------------------------------------------------ reading the file
def _load(path: Path) -> onnx.ModelProto:
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError) as e:
        raise MalformedModel(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    if model.ir_version <= 0 or not model.HasField("graph"):
        raise MalformedModel(f"{path}: not an ONNX model (no ir_version or no graph); is the file empty or truncated?")
    if not model.graph.output:
        raise MalformedModel(f"{path}: the graph declares no outputs")
    validate_graph(model, path)
    return model


def tensor_array(t: onnx.TensorProto, model_dir: Path) -> np.ndarray:
    """The contents of an initializer or tensor attribute, reading external data from `model_dir` only."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        location = {e.key: e.value for e in t.external_data}.get("location", "")
        root = model_dir.resolve()
        target = (root / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(root):
            raise KpucError(f"tensor '{t.name}': external data location '{location}' is outside the "
                            f"model's folder {model_dir}; kpuc reads external data only from there")
        if not target.is_file():
            raise MalformedModel(f"tensor '{t.name}': external data file {target} does not exist")
        check_external(t, target)
        t = onnx.TensorProto.FromString(t.SerializeToString())
        onnx.external_data_helper.load_external_data_for_tensor(t, str(root))
    check_tensor(t, f"tensor '{printable(t.name)}'")
    try:
        arr = numpy_helper.to_array(t)
    except (ValueError, TypeError, KeyError) as e:
        raise MalformedModel(f"tensor '{printable(t.name)}' cannot be read: {type(e).__name__}: {e}") from e
    if arr.dtype.kind == "f" and np.isnan(arr).any():  # no exporter writes NaN weights; a damaged file does
        raise MalformedModel(f"tensor '{printable(t.name)}' holds NaN values")
    return arr


def _declared(vi: onnx.ValueInfoProto) -> tuple[str, tuple[int, ...], str]:
    """(name, shape with -1 for dynamic dims, dtype) as the file declares them."""
    tt = vi.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
    except (KeyError, TypeError, ValueError):
        known = vi.type.HasField("tensor_type") and tt.elem_type in onnx.TensorProto.DataType.values()
        dtype = onnx.TensorProto.DataType.Name(tt.elem_type).lower() if known else "?"
    return vi.name, shape, dtype


def _input_shapes(g: onnx.GraphProto, inits: set[str], options: ImportOptions) -> dict[str, tuple[int, ...]]:
    """Input name -> its shape with the pins applied; raises one error for every dynamic dim left."""
    inputs = [vi for vi in g.input if vi.name not in inits]
    check_pins_known(options, [vi.name for vi in inputs])
    shapes, missing = {}, {}
    for vi in inputs:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
            continue                                  # _input_type reports it
        declared = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        labels = tuple(printable(d.dim_param) for d in tt.shape.dim)
        shapes[vi.name], unpinned = pinned_shape(vi.name, declared, options, labels)
        if unpinned:
            missing[vi.name] = (declared, labels, unpinned)
    raise_unpinned(missing)
    return shapes


def _input_type(vi: onnx.ValueInfoProto, shape: tuple[int, ...] | None) -> TensorType:
    """The IR type of a graph input of (pinned) `shape`; raises NotConvertible for what the device cannot take."""
    if not vi.type.HasField("tensor_type"):
        raise NotConvertible("only tensor inputs are supported")
    if shape is None:
        raise NotConvertible("the input has no declared shape")
    check_elements(shape, f"input '{printable(vi.name)}'")
    _, _, dtype = _declared(vi)
    if dtype not in RUNTIME_DTYPES:
        raise NotConvertible(f"input dtype {dtype} is not supported (float, uint8, int32 and int64 are)")
    return TensorType(tuple(shape), RUNTIME_DTYPES[dtype])


# ------------------------------------------------------------------ the read loop
def _convert(model: onnx.ModelProto, model_dir: Path,
             options: ImportOptions = NO_OPTIONS) -> tuple[Graph, list[Unsupported]]:
    """Build the graph; returns it with the list of problems (the graph is incomplete if any)."""
    g = model.graph
    shapes = _input_shapes(g, {t.name for t in g.initializer}, options)
    graph = Graph()
    ctx = OnnxContext(graph, opset_of(model))
    values: dict[str, Value | None] = {}  # ONNX tensor name -> Value; None: its producer failed
    problems: list[Unsupported] = []
    for t in g.initializer:
        values[t.name] = graph.const(graph_array(tensor_array(t, model_dir)), name=t.name)
    for vi in g.input:
        if vi.name in values:
            continue
        try:
            values[vi.name] = graph.input(vi.name, _input_type(vi, shapes.get(vi.name)))
        except NotConvertible as e:
            problems.append(Unsupported("input", vi.name, str(e)))
            values[vi.name] = None
    for node in g.node:
        name = next((o for o in node.output if o), node.name or node.op_type)
        try:
            inputs = [values[i] if i else None for i in node.input]
        except KeyError as e:
            raise MalformedModel(f"node '{node.name or name}' ({node.op_type}) reads tensor {e}, "
                                 "which nothing defined before it") from e
        problem = _convert_node(ctx, node, name, inputs, values, model_dir)
        if problem:
            problems.append(problem)
            values.update({o: None for o in node.output if o})
    outputs = []
    for vi in g.output:
        if vi.name not in values:
            raise MalformedModel(f"graph output '{vi.name}' is not computed by any node")
        outputs.append(values[vi.name])
    if not problems:
        graph.outputs = outputs
    return graph, problems


def _convert_node(ctx: OnnxContext, node: onnx.NodeProto, name: str, inputs: list, values: dict,
                  model_dir: Path) -> Unsupported | None:
    """Convert one node, binding its outputs in `values`; returns the problem if it cannot be.

    IR nodes are named after the ONNX output (`name`); problems name the ONNX node as tools like
    Netron show it: its own name, or its first output when it has none.
    """
    who = node.name or name
    domain = node.domain if node.domain not in DEFAULT_DOMAINS else ""
    fn = lookup(node.op_type, ctx.opset) if not domain else None
    if fn is None:
        why = (f"ops of domain '{domain}' are not supported" if domain else
               f"no converter for ONNX opset {ctx.opset}" if node.op_type in CONVERTERS else "no converter")
        return Unsupported(node.op_type, who, why)
    if any(v is None for i, v in zip(node.input, inputs) if i):
        values.update({o: None for o in node.output if o})
        return None  # an input comes from a node we could not convert; that one is already reported
    ctx.op_type, ctx.name, ctx.num_outputs = node.op_type, name, len(node.output)
    start = len(ctx.graph.nodes)
    try:
        bad = next(filter(None, (check_attribute(node.op_type, a) for a in node.attribute)), None)
        if bad:
            raise NotConvertible(bad)
        attrs = {a.name: _attribute(a, model_dir) for a in node.attribute}
        check_call(fn, inputs, attrs)
        result = fn(ctx, *inputs, **attrs)
    except TooLarge as e:
        raise TooLarge(f"node '{printable(who)}' ({node.op_type}): {e}") from e
    except KpucError as e:
        _rollback(ctx.graph, start)
        return Unsupported(node.op_type, who, str(e))
    results = result if isinstance(result, (tuple, list)) else (result,)
    wanted = [(k, o) for k, o in enumerate(node.output) if o]
    missing = [f"'{o}'" for k, o in wanted if k >= len(results) or results[k] is None]
    if missing:
        _rollback(ctx.graph, start)
        return Unsupported(node.op_type, who, f"output {', '.join(missing)} is not supported")
    new = ctx.graph.nodes[start:]
    for k, o in wanted:
        values[o] = results[k]
        _adopt_name(ctx.graph, results[k], o, new)
    return None


def _rollback(graph: Graph, start: int) -> None:
    """Drop the helpers a failed converter made (nothing outside them uses them yet)."""
    for n in reversed(graph.nodes[start:]):
        n.inputs = ()
    del graph.nodes[start:]


def _adopt_name(graph: Graph, v: Value, onnx_name: str, new_nodes: list) -> None:
    """Give the IR node (and value) just made for an ONNX tensor that tensor's name."""
    node = v.producer
    if not any(n is node for n in new_nodes) or v.name == onnx_name:
        return
    if len(node.outputs) == 1:
        node.name = v.name = graph.unique_name(onnx_name)
    else:
        v.name = graph.unique_name(onnx_name)


def _attribute(a: onnx.AttributeProto, model_dir: Path):
    """An attribute as a Python value: str, int, float, tuple, or numpy array for a tensor."""
    if a.type == onnx.AttributeProto.TENSOR:
        return tensor_array(a.t, model_dir)
    if a.type == onnx.AttributeProto.TENSORS:
        return tuple(tensor_array(t, model_dir) for t in a.tensors)
    if a.type == onnx.AttributeProto.SPARSE_TENSOR:
        return a.sparse_tensor
    v = onnx.helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, list):
        return tuple(x.decode("utf-8", "replace") if isinstance(x, bytes) else x for x in v)
    return v
