"""The TFLite importer's context and converter table: what every converter family file imports.

The read loop is in compiler/importers/tflite/__init__.py; the converters live in the family files.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compiler.errors import KpucError
from compiler.importers.tflite.reader import ModelData, OpInfo, TensorInfo
from compiler.ir import Graph, QuantParam, TensorType, Value
from compiler.registry import registrar

CONVERTERS: dict[str, Callable] = {}
TO_NCHW, TO_NHWC = (0, 3, 1, 2), (0, 2, 3, 1)
QUANTIZED_DTYPES = ("uint8", "int8", "int16", "int32")
KNOWN_DTYPES = ("float32", "float16", "float64", "uint8", "int8", "int16", "int32", "int64", "bool")
# tflite.ActivationFunctionType -> (IR op, attrs); SIGN_BIT (5) has no IR form
FUSED_ACTIVATIONS = {1: ("clamp", {"min": 0.0, "max": float("inf")}),   # RELU
                     2: ("clamp", {"min": -1.0, "max": 1.0}),            # RELU_N1_TO_1
                     3: ("clamp", {"min": 0.0, "max": 6.0}),             # RELU6
                     4: ("unary", {"op": "tanh"})}                       # TANH


converter = registrar(CONVERTERS)   # @converter(*op_types): fn(ctx, op) converts those TFLite builtin ops


def option(op: OpInfo, field: str, default=0):
    """A builtin option of `op` (e.g. "FusedActivationFunction"), or `default` when the table is absent."""
    return getattr(op.options, field)() if op.options is not None and hasattr(op.options, field) else default


def permute_quant(q: QuantParam | None, perm) -> QuantParam | None:
    """The quant params of a tensor after transpose(perm): a per-channel axis moves with its dim."""
    if q is None or q.axis is None:
        return q
    return QuantParam(q.scale, q.zero_point, list(perm).index(q.axis))


def dequantize(data: np.ndarray, q: QuantParam) -> np.ndarray:
    """real = (q - zero_point) * scale, per-channel along `q.axis`."""
    scale, zero_point = np.asarray(q.scale, np.float64), np.asarray(q.zero_point, np.float64)
    if q.axis is not None:
        shape = [1] * data.ndim
        shape[q.axis] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return ((data.astype(np.float64) - zero_point) * scale).astype(np.float32)


def ir_dtype(t: TensorInfo) -> str:
    """The IR element type of a tensor: quantized and half tensors become float32."""
    if t.dtype in ("float16", "float64") or (t.quant is not None and t.dtype in QUANTIZED_DTYPES):
        return "float32"
    if t.dtype == "int64":
        return "int32"
    return t.dtype


def _intersect(a: dict, b: dict) -> dict:
    """The clamp that applies clamp `a` and then clamp `b`: clamp(clamp(x, a), b) = clamp(x, b(a.min), b(a.max))."""
    lo2, hi2 = b.get("min", -np.inf), b.get("max", np.inf)
    lo, hi = (float(min(max(v, lo2), hi2)) for v in (a["min"], a["max"]))
    return {"min": lo, "max": hi}


class TFLiteContext:
    """What a converter sees: the model's tensors, the graph being built and the tensor bindings."""

    def __init__(self, model: ModelData):
        self.model, self.graph = model, Graph()
        self.values: dict[int, Value] = {}
        self._nchw: dict[Value, Value] = {}
        self._weights: dict[tuple[int, tuple[int, ...]], Value] = {}

    # ------------------------------------------------------------ reading the model
    def tensor(self, index: int) -> TensorInfo:
        return self.model.tensors[index]

    def name(self, op: OpInfo, k: int = 0) -> str:
        """The name of output `k` of `op`: the name its IR node gets."""
        return self.tensor(op.outputs[k]).name

    def has_input(self, op: OpInfo, k: int) -> bool:
        return k < len(op.inputs) and op.inputs[k] >= 0

    def value(self, index: int) -> Value:
        """The Value bound to a tensor; constants are materialized (dequantized) on first use."""
        if index in self.values:
            return self.values[index]
        t = self.tensor(index)
        if t.sparse:
            raise KpucError(f"tensor '{t.name}' is sparse, which is not supported")
        if t.dtype not in KNOWN_DTYPES:
            raise KpucError(f"tensor '{t.name}' has element type {t.dtype}, which kpuc does not read")
        if t.data is None:
            raise KpucError(f"tensor '{t.name}' is read before any op computes it")
        v = self.graph.const(self._const_data(t), name=t.name, quant=t.quant)
        self.values[index] = v
        return v

    @staticmethod
    def _const_data(t: TensorInfo) -> np.ndarray:
        """A constant tensor's contents in IR terms: quantized and half data become float32."""
        data = t.data
        if t.quant is not None and t.dtype in QUANTIZED_DTYPES:
            data = dequantize(data, t.quant)
        return data.astype(ir_dtype(t))

    def weight(self, op: OpInfo, k: int, perm: tuple[int, ...]) -> Value:
        """Input `k` transposed by `perm` into IR weight layout: once, in numpy, when it is constant."""
        index, t = op.inputs[k], self.tensor(op.inputs[k])
        if (index, perm) in self._weights:
            return self._weights[index, perm]
        v = self.values.get(index)
        if v is None and t.data is not None and not t.sparse:
            data, quant = self._const_data(t), t.quant
        elif v is not None and v.is_constant:
            data, quant = v.data, v.quant
        else:  # weights computed at run time: transpose in the graph
            w = self.input(op, k)
            out = self.add("transpose", [w], name=f"{t.name}/weight_layout", perm=perm)
            out.quant = permute_quant(w.quant, perm)
            return out
        w = self.const(np.transpose(data, perm), name=t.name, quant=permute_quant(quant, perm))
        self._weights[index, perm] = w
        return w

    def input(self, op: OpInfo, k: int) -> Value:
        if not self.has_input(op, k):
            raise KpucError(f"{op.op_type} '{self.name(op)}' has no input {k}")
        return self.value(op.inputs[k])

    def array(self, op: OpInfo, k: int) -> np.ndarray:
        """The static contents of input `k` (shape, axes, paddings…); raises if it is computed at run time."""
        v = self.input(op, k)
        if not v.is_constant:
            raise KpucError(f"input {k} ('{v.name}') must be a constant tensor")
        return np.asarray(v.data)

    def nchw(self, op: OpInfo, k: int) -> Value:
        """Input `k` (a 4-D NHWC tensor) transposed to NCHW for an IR spatial op."""
        v = self.input(op, k)
        if v.type.rank != 4:
            raise KpucError(f"input {k} ('{v.name}') has rank {v.type.rank}, a 4-D NHWC tensor is needed")
        if v not in self._nchw:
            t = self.tensor(op.inputs[k])
            out = self.add("transpose", [v], name=f"{t.name}_nchw", perm=TO_NCHW)
            out.quant = permute_quant(v.quant, TO_NCHW)
            self._nchw[v] = out
        return self._nchw[v]

    # ------------------------------------------------------------ building
    def add(self, ir_op: str, inputs, *, name: str, **attrs) -> Value:
        return self.graph.add(ir_op, inputs, name=name, **attrs).output

    def const(self, data, *, name: str, dtype=None, quant: QuantParam | None = None) -> Value:
        return self.graph.const(data, name=name, dtype=dtype, quant=quant)

    def emit(self, source: OpInfo, ir_op: str, inputs, /, *, name: str | None = None, **attrs) -> Value:
        """Add `ir_op` computing output 0 of `source`, then its epilogue (fused activation, saturation)."""
        name = name or self.name(source)
        steps = self.epilogue(source)
        if ir_op == "clamp" and steps and steps[0][0] == "clamp":
            attrs = _intersect(attrs, steps.pop(0)[1])
        y = self.add(ir_op, inputs, name=f"{name}/{ir_op}" if steps else name, **attrs)
        for i, (step_op, step_attrs) in enumerate(steps):
            y = self.add(step_op, [y], name=name if i == len(steps) - 1 else f"{name}/{step_op}", **step_attrs)
        return y

    def epilogue(self, op: OpInfo) -> list[tuple[str, dict]]:
        """What follows an arithmetic op: its fused activation, then the clamp to the range its
        quantized output can represent (a uint8 model's ReLU6 often exists only as that range)."""
        act = option(op, "FusedActivationFunction")
        if act and act not in FUSED_ACTIVATIONS:
            raise KpucError(f"fused activation {act} is not supported (NONE, RELU, RELU_N1_TO_1, RELU6, TANH are)")
        steps = [FUSED_ACTIVATIONS[act]] if act else []
        t = self.tensor(op.outputs[0])
        if t.quant is not None and t.quant.axis is None and t.dtype in ("uint8", "int8", "int16"):
            info = np.iinfo(t.dtype)
            rng = {"min": float((info.min - t.quant.zero_point) * t.quant.scale),
                   "max": float((info.max - t.quant.zero_point) * t.quant.scale)}
            if steps and steps[-1][0] == "clamp":
                steps[-1] = ("clamp", _intersect(steps[-1][1], rng))
            else:
                steps.append(("clamp", rng))
        return steps

    def set_output(self, op: OpInfo, k: int, v: Value, *, nchw: bool = False) -> Value:
        """Bind output `k` of `op` to `v`; an NCHW result is transposed back to the tensor's NHWC."""
        t = self.tensor(op.outputs[k])
        if nchw:
            v.quant = v.quant or permute_quant(t.quant, TO_NCHW)
            v = self.add("transpose", [v], name=f"{t.name}_nhwc", perm=TO_NHWC)
        if t.quant is not None:
            v.quant = t.quant
        self.values[op.outputs[k]] = v
        return v

    def alias(self, op: OpInfo, k: int, v: Value) -> None:
        """Bind output `k` to an existing Value (an identity such as DEQUANTIZE of a float)."""
        self.values[op.outputs[k]] = v

    def placeholder(self, index: int) -> Value:
        """A stand-in for the output of an op that failed, so that later ops still convert."""
        t = self.tensor(index)
        dtype = ir_dtype(t) if t.dtype in KNOWN_DTYPES else "float32"
        v = self.graph.input(f"{t.name}_unsupported", TensorType(t.shape, dtype))
        self.graph.inputs.remove(v)
        v.producer.meta["placeholder"] = True
        self.values[index] = v
        return v
