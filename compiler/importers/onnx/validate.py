"""Structural checks of an ONNX model before any converter runs.

A damaged or hostile file must fail here with one MalformedModel naming what is wrong, not later
as a stray TypeError inside a converter or a MemoryError inside numpy. `onnx.checker` is not used
as a gate: it refuses models real exporters write and kpuc reads fine (missing value_info, old
ir_versions); the checks below are the ones kpuc's converters rely on.
"""
from __future__ import annotations

import math
from pathlib import Path

import onnx

from compiler.errors import KpucError, MalformedModel, printable
from compiler.importers.limits import check_elements

MIN_OPSET = 7
MAX_OPSET = onnx.defs.onnx_opset_version()  # the newest opset the installed onnx package knows
DEFAULT_DOMAINS = ("", "ai.onnx")
KNOWN_DTYPES = frozenset(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}

A = onnx.AttributeProto
# The attribute kinds converters rely on; a file giving another kind is refused for that node.
ATTR_KINDS = {
    **dict.fromkeys(("kernel_shape", "strides", "dilations", "pads", "perm", "output_padding",
                     "output_shape", "axes", "split", "starts", "ends"), A.INTS),
    **dict.fromkeys(("axis", "group", "keepdims", "ceil_mode", "count_include_pad", "transA", "transB", "blocksize",
                     "allowzero", "storage_order", "noop_with_empty_axes", "to", "exclude_outside",
                     "antialias", "num_outputs", "training_mode", "block_size", "output_dtype", "stash_type",
                     "saturate", "spatial", "p", "select_last_index"), A.INT),
    **dict.fromkeys(("alpha", "beta", "gamma", "epsilon", "momentum", "ratio", "cubic_coeff_a",
                     "extrapolation_value", "value_float", "min", "max"), A.FLOAT),
    "scales": A.FLOATS,
    **dict.fromkeys(("mode", "auto_pad", "coordinate_transformation_mode", "nearest_mode",
                     "keep_aspect_ratio_policy", "approximate", "round_mode"), A.STRING),
}
# Attributes that must be at least 1 (a 0 stride or dilation divides by zero further down).
AT_LEAST_ONE = ("kernel_shape", "strides", "dilations", "group", "blocksize")
NON_NEGATIVE = ("pads", "output_padding")
SPATIAL_OPS = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool")
INFINITY_OK = ("min", "max")  # Clip-6 bounds default to +-FLT_MAX; inf is a plausible spelling


def opset_of(model: onnx.ModelProto) -> int:
    """The default-domain opset, refused outside [MIN_OPSET, MAX_OPSET]."""
    versions = [o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS]
    opset = max(versions) if versions else 1 if model.ir_version < 3 else 0
    if opset < MIN_OPSET:
        raise KpucError(f"the model uses ONNX opset {opset}; kpuc reads opset {MIN_OPSET} and later "
                        "(upgrade it with onnx.version_converter)")
    if opset > MAX_OPSET:
        raise KpucError(f"the model uses ONNX opset {opset}; kpuc reads opsets {MIN_OPSET} to {MAX_OPSET} "
                        "(is the file damaged, or newer than the installed onnx package?)")
    return opset


def validate_graph(model: onnx.ModelProto, path: Path) -> None:
    """Names are text, every tensor has one producer, dtypes and shapes are sane; else MalformedModel."""
    g = model.graph
    where = f"{path}"
    _text(where, "graph", [g.name])
    for o in model.opset_import:
        _text(where, "opset domain", [o.domain])
    inits = []
    for t in g.initializer:
        _text(where, "initializer name", [t.name])
        inits.append(t.name)
    inputs = [vi.name for vi in g.input]
    outputs = [vi.name for vi in g.output]
    _text(where, "graph input name", inputs)
    _text(where, "graph output name", outputs)
    _unique(where, "initializer", inits)
    _unique(where, "graph input", inputs)
    _unique(where, "graph output", outputs)
    produced = set(inits) | set(inputs)
    for k, node in enumerate(g.node):
        _text(where, f"node {k}", [node.op_type, node.domain, node.name, *node.input, *node.output])
        _text(where, f"node {k}", [a.name for a in node.attribute])
        who = f"node '{printable(node.name or next((o for o in node.output if o), node.op_type))}' ({node.op_type})"
        for o in node.output:
            if not o:
                continue
            if o in produced:
                raise MalformedModel(f"{where}: {who} writes tensor '{printable(o)}', which "
                                     f"{'a graph input or initializer' if o in inits or o in inputs else 'another node'} "
                                     "already defines (every tensor has exactly one producer)")
            produced.add(o)
    for t in g.initializer:
        check_tensor(t, f"initializer '{printable(t.name)}'")
    for vi in list(g.input) + list(g.output):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.elem_type not in KNOWN_DTYPES:
            raise MalformedModel(f"{where}: '{printable(vi.name)}' has element type {tt.elem_type}, "
                                 "which is not an ONNX data type")


def check_tensor(t: onnx.TensorProto, what: str) -> None:
    """A tensor's data type is known and its dims are non-negative and within the element limit."""
    if t.data_type not in KNOWN_DTYPES:
        raise MalformedModel(f"{what} has data type {t.data_type}, which is not an ONNX data type")
    if any(d < 0 for d in t.dims):
        raise MalformedModel(f"{what} has a negative dimension {list(t.dims)}")
    check_elements(t.dims, what)


def check_external(t: onnx.TensorProto, target: Path) -> None:
    """External data: offset and length are integers that stay inside the data file."""
    info = {e.key: e.value for e in t.external_data}
    try:
        offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
    except ValueError:
        raise MalformedModel(f"tensor '{printable(t.name)}': external data offset/length "
                             f"{info.get('offset')!r}/{info.get('length')!r} are not integers") from None
    size = target.stat().st_size
    if offset < 0 or offset > size or length < -1 or (length >= 0 and offset + length > size):
        raise MalformedModel(f"tensor '{printable(t.name)}': external data offset {offset}, length {length} "
                             f"lies outside {target.name} ({size} bytes)")


def check_attribute(op_type: str, a: onnx.AttributeProto) -> str | None:
    """Why attribute `a` cannot be used (wrong kind, non-finite, out of range), or None."""
    if a.type in (A.GRAPH, A.GRAPHS, A.TYPE_PROTO, A.TYPE_PROTOS, A.SPARSE_TENSORS, A.UNDEFINED):
        kind = A.AttributeType.Name(a.type) if a.type in A.AttributeType.values() else a.type
        return f"attribute {a.name} is of kind {kind}, which kpuc does not read"
    want = ATTR_KINDS.get(a.name)
    if want is not None and a.type != want:
        return f"attribute {a.name} is {A.AttributeType.Name(a.type)}, ONNX defines it as {A.AttributeType.Name(want)}"
    if a.type == A.FLOAT and not math.isfinite(a.f) and not (a.name in INFINITY_OK and not math.isnan(a.f)):
        return f"attribute {a.name}={a.f} is not a finite number"
    if a.type == A.FLOATS and not all(math.isfinite(f) for f in a.floats):
        return f"attribute {a.name}={list(a.floats)[:8]} holds a non-finite number"
    values = list(a.ints) if a.type == A.INTS else [a.i] if a.type == A.INT else []
    if a.name in ("to", "output_dtype") and a.type == A.INT and a.i and a.i not in KNOWN_DTYPES:
        return f"attribute {a.name}={a.i} is not an ONNX data type"
    if a.name in AT_LEAST_ONE and any(v < 1 for v in values):
        return f"attribute {a.name}={values} must be at least 1"
    if a.name in NON_NEGATIVE and op_type in SPATIAL_OPS and any(v < 0 for v in values):
        return f"attribute {a.name}={values} must not be negative"
    if a.name in ATTR_KINDS and a.name not in ("starts", "ends") and any(abs(v) > 1 << 31 for v in values):
        return f"attribute {a.name}={values[:8]} is out of range"
    return None


def _text(where: str, what: str, strings) -> None:
    """protobuf hands invalid UTF-8 in a string field back as bytes: refuse it here."""
    for s in strings:
        if isinstance(s, bytes):
            raise MalformedModel(f"{where}: {what} holds a name that is not UTF-8 text: {printable(s)}")


def _unique(where: str, what: str, names: list[str]) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise MalformedModel(f"{where}: {what} '{printable(n)}' is declared twice")
        seen.add(n)
