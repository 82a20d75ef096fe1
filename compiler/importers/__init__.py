"""Model importers: a TFLite or ONNX file becomes an IR Graph (NCHW, float32 before PTQ).

`import_model(path)` returns the Graph or raises one `UnsupportedOps` listing *every* op or
attribute it could not translate (op type, node name, reason), or `MalformedModel`.
`summarize_model(path)` reads what the file itself says (inputs, outputs, op histogram, parameter
count) and the same list of unsupported ops, without failing on them: `kpuc info` prints it.
Both take the user's `input_shapes` (pins for dynamic dims) and `output_tensors` (where to cut the graph);
compiler/importers/options.py says what they mean.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from compiler.errors import KpucError, MalformedModel, UnsupportedOps
from compiler.importers.common import SourceSummary, checked_graph  # noqa: F401  (re-exported)
from compiler.importers.options import ImportOptions
from compiler.ir import Graph

FORMATS = {".tflite": "tflite", ".onnx": "onnx"}


def guess_format(path: str | Path, format: str | None = None) -> str:
    """The input format: given, or from the extension."""
    if format:
        if format not in FORMATS.values():
            raise KpucError(f"unknown input format '{format}' (expected one of: {', '.join(FORMATS.values())})")
        return format
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise KpucError(f"{path}: cannot tell the model format from the extension; pass -i tflite|onnx")
    return fmt


def _module(fmt: str):
    if fmt == "tflite":
        from compiler.importers import tflite as mod
    else:
        from compiler.importers import onnx as mod
    return mod


def import_model(path: str | Path, format: str | None = None, *, input_shapes=(), output_tensors=()) -> Graph:
    """Translate a model file into a validated IR graph (input dims pinned, cut at `output_tensors`)."""
    path = Path(path)
    if not path.is_file():
        raise KpucError(f"{path}: no such model file")
    with naming_the_file(path):
        options = ImportOptions(tuple(input_shapes), tuple(output_tensors))
        graph = _module(guess_format(path, format)).import_model(path, options)
        if not graph.inputs:  # compile, check and infer all feed input 0
            raise MalformedModel("the model has no inputs (every declared input is a constant initializer, "
                                 "or none is declared); kpuc compiles models that take an input")
        return graph


def summarize_model(path: str | Path, format: str | None = None, *, input_shapes=(),
                    output_tensors=()) -> SourceSummary:
    """The file's own inputs, outputs and op histogram, plus everything we cannot translate."""
    path = Path(path)
    if not path.is_file():
        raise KpucError(f"{path}: no such model file")
    with naming_the_file(path):
        options = ImportOptions(tuple(input_shapes), tuple(output_tensors))
        return _module(guess_format(path, format)).summarize_model(path, options)


@contextmanager
def naming_the_file(path: Path):
    """Prefix the model's path to an importer error that does not name it (UnsupportedOps lists
    nodes and keeps its own text: `kpuc check` reports it per op)."""
    try:
        yield
    except UnsupportedOps:
        raise
    except KpucError as e:
        if str(path) in str(e):
            raise
        raise type(e)(f"{path}: {e}") from e
