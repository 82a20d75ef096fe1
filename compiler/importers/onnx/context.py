"""The ONNX converter table and the context every converter receives.

A converter is a small function registered by `@converter("OpType")`, keyed by the exact ONNX op
name. It takes the context, the node's inputs positionally (IR Values; None for an omitted optional
input) and the node's attributes as keywords with the ONNX spec's defaults, so an attribute it does
not know fails loudly (`check_call`) and is reported as unsupported. Where semantics changed between
opsets the function carries a suffix (`clip_v11`) and `since=11`; `lookup` takes the newest version
that is not above the model's opset (ONNX reference evaluator, `_op_list.py`).

Converters translate; they do not optimize. `OnnxContext.add` folds a node whose inputs are all
constant by running its kernel, so Shape -> Gather -> Concat -> Reshape chains become constants.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import onnx

import compiler.kernels.all  # noqa: F401  (fills KERNELS, used for folding)
from compiler.errors import KpucError
from compiler.importers.limits import check_elements
from compiler.ir import Graph, Value
from compiler.kernels import KERNELS
from compiler.ops import infer_types
from compiler.registry import registrar

CONVERTERS: dict[str, list[tuple[int, Callable]]] = {}


class NotConvertible(KpucError):
    """This node cannot be translated: an attribute value, a dynamic input, a dtype."""


def _add_version(table: dict, op: str, fn: Callable, since: int = 1) -> None:
    versions = table.setdefault(op, [])
    versions.append((since, fn))
    versions.sort(key=lambda sv: sv[0])


converter = registrar(CONVERTERS, _add_version)   # @converter(*op_types, since=1): from opset `since` on


def lookup(op_type: str, opset: int) -> Callable | None:
    """The newest converter of `op_type` that is not above `opset`, or None."""
    fits = [fn for since, fn in CONVERTERS.get(op_type, []) if since <= opset]
    return fits[-1] if fits else None


def check_call(fn: Callable, inputs: list, attrs: dict) -> None:
    """Raise NotConvertible if `fn` cannot take these inputs and attributes, naming the culprit.

    An input written as "" arrives as None: fine for an optional input, refused for a required one."""
    params = inspect.signature(fn).parameters
    kinds = {p.kind for p in params.values()}
    unknown = sorted(k for k in attrs if k not in params or params[k].kind != inspect.Parameter.KEYWORD_ONLY)
    if unknown:
        raise NotConvertible(", ".join(f"attribute {k}={_short(attrs[k])}" for k in unknown) + " is not supported")
    positional = [p for p in params.values() if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD][1:]
    n_inputs = len(inputs)
    if inspect.Parameter.VAR_POSITIONAL not in kinds and n_inputs > len(positional):
        raise NotConvertible(f"{n_inputs} inputs given, at most {len(positional)} are supported")
    missing = [p.name for p in positional[n_inputs:] if p.default is inspect.Parameter.empty]
    missing += [p.name for p, v in zip(positional, inputs) if v is None and p.default is inspect.Parameter.empty]
    if inspect.Parameter.VAR_POSITIONAL in kinds and any(v is None for v in inputs[len(positional):]):
        missing.append(f"input {next(k for k, v in enumerate(inputs) if k >= len(positional) and v is None)}")
    missing += [k for k, p in params.items()
                if p.kind == inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty and k not in attrs]
    if missing:
        raise NotConvertible(f"required input or attribute missing: {', '.join(missing)}")


def _short(v) -> str:
    s = repr(v.tolist() if isinstance(v, np.ndarray) else v)
    return s if len(s) <= 40 else s[:37] + "..."


# Tensors that run on the device are float32, uint8 or int32 (STYLE 5). Wider or narrower floats
# are computed in float32; int64 index and shape tensors in int32.
RUNTIME_DTYPES = {"float32": "float32", "float16": "float32", "float64": "float32", "bfloat16": "float32",
                  "uint8": "uint8", "int32": "int32", "int64": "int32", "bool": "bool"}


def numpy_dtype(code: int, what: str) -> str:
    """The numpy dtype name of an ONNX TensorProto type code; an unknown or unrepresentable code is a model error."""
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(code)).name
    except (KeyError, TypeError, ValueError):
        known = code in onnx.TensorProto.DataType.values()
        name = onnx.TensorProto.DataType.Name(code) if known else f"unknown type code {code}"
        raise NotConvertible(f"{what}: {name} is not a supported tensor type") from None


def graph_array(arr) -> np.ndarray:
    """A constant as the graph keeps it: floats in float32, everything else unchanged."""
    arr = np.asarray(arr)
    if arr.dtype.kind == "f" or arr.dtype.name == "bfloat16":
        return arr.astype(np.float32)
    return arr


class OnnxContext:
    """What a converter sees: the graph being built, the model's opset and the current node."""

    def __init__(self, graph: Graph, opset: int):
        self.graph, self.opset = graph, opset
        self.op_type = ""     # ONNX op of the node being converted
        self.name = ""        # base for the names of the IR nodes it becomes
        self.num_outputs = 1  # how many outputs the ONNX node declares

    def add(self, op: str, inputs, /, **attrs) -> Value | tuple[Value, ...]:
        """Add an IR node (or, when every input is constant, the constant it computes)."""
        inputs = list(inputs)
        label = attrs.get("op") if isinstance(attrs.get("op"), str) else op
        if inputs and all(v.is_constant for v in inputs) and op in KERNELS:
            return self._fold(op, inputs, attrs, label)
        node = self.graph.add(op, inputs, name=f"{self.name}_{label}", **attrs)
        for v in node.outputs:
            check_elements(v.shape, f"{op} output")
        return node.output if len(node.outputs) == 1 else node.outputs

    def _fold(self, op, inputs, attrs, label):
        types = infer_types(op, [v.type for v in inputs], attrs, [v.data for v in inputs])
        for t in types:  # before the kernel allocates it
            check_elements(t.shape, f"folded {op}")
        try:
            with np.errstate(all="ignore"):
                out = KERNELS[op](*[v.data for v in inputs], **attrs)
        except (ValueError, TypeError, IndexError, ArithmeticError) as e:
            raise KpucError(f"folding {op} of constants failed: {type(e).__name__}: {e}") from e
        outs = out if isinstance(out, tuple) else (out,)
        values = []
        for arr, t in zip(outs, types, strict=True):
            arr = np.asarray(arr).astype(t.dtype, copy=False)
            if arr.shape != t.shape:
                raise KpucError(f"folding {op} gave shape {arr.shape}, its shape rule says {t.shape}")
            values.append(self.graph.const(arr, name=f"{self.name}_{label}"))
        return values[0] if len(values) == 1 else tuple(values)

    def const(self, array, dtype=None) -> Value:
        """A new constant named after the current node."""
        array = np.asarray(array, dtype=dtype)
        check_elements(array.shape, "constant")
        return self.graph.const(array, name=f"{self.name}_const")

    def scalar(self, value, like: Value) -> Value:
        """A 0-d constant with `like`'s dtype, for elementwise arithmetic."""
        return self.const(np.asarray(value, dtype=like.dtype))

    def data(self, v: Value | None, what: str) -> np.ndarray | None:
        """The array of a constant input (None if omitted); a computed input cannot be used here."""
        if v is None:
            return None
        if not v.is_constant:
            raise NotConvertible(f"{what} '{v.name}' must be a constant: kpuc needs static shapes and parameters")
        return v.data

    # Shorthands used across the family files.
    def unary(self, op: str, x: Value) -> Value:
        return self.add("unary", [x], op=op)

    def binary(self, op: str, a: Value, b: Value) -> Value:
        return self.add("binary", [a, b], op=op)

    def reshape(self, x: Value, shape) -> Value:
        shape = tuple(int(d) for d in shape)
        return x if shape == x.shape else self.add("reshape", [x], shape=shape)


def normalize_axis(axis: int, rank: int, what: str = "axis") -> int:
    """A possibly negative ONNX axis as an index in [0, rank)."""
    if np.ndim(axis) != 0:  # an axes input of the wrong rank hands rows here
        if np.size(axis) != 1:
            raise NotConvertible(f"{what} {np.asarray(axis).tolist()} is not one integer")
        axis = np.asarray(axis).reshape(())
    axis = int(axis)
    if not -rank <= axis < rank:
        raise NotConvertible(f"{what} {axis} is out of range for rank {rank}")
    return axis % rank
