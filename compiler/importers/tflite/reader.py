"""Read a .tflite flatbuffer into plain records, so conversion never touches raw offsets.

Everything the importer needs is read eagerly here, inside one try block: a truncated or corrupt
file then fails as one `MalformedModel` naming the path instead of as a stray IndexError later.
Builtin options stay flatbuffer tables (they are read field by field by the converters).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tflite
from tflite.BuiltinOptions import BuiltinOptions
from tflite.utils import BUILTIN_OPCODE2NAME

from compiler.errors import KpucError, MalformedModel, printable
from compiler.importers.limits import check_elements
from compiler.importers.tflite.sparsity import densify
from compiler.ir import QuantParam

# tflite.TensorType -> numpy dtype name
DTYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16",
          9: "int8", 10: "float64", 12: "uint64", 15: "uint32", 16: "uint16"}
# union tag -> options class (Conv2DOptions, ...), looked up by the enum member's name
OPTION_CLASSES = {tag: getattr(tflite, name) for name, tag in vars(BuiltinOptions).items()
                  if not name.startswith("_") and name != "NONE" and hasattr(tflite, name)}


@dataclass
class TensorInfo:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: str                        # the file's element type (numpy name; "string" etc. verbatim)
    quant: QuantParam | None          # None when the tensor carries no scale
    data: np.ndarray | None = None    # constant contents in the file's dtype and shape
    buffer: int = 0
    sparse: bool = False
    # shape_signature: -1 marks a dynamic dim (TF2 exports), whose entry in `shape` is a placeholder 1
    signature: tuple[int, ...] | None = None

    @property
    def declared(self) -> tuple[int, ...]:
        """The shape with -1 for every dynamic dim."""
        return self.signature if self.signature is not None else self.shape

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether a computed shape agrees with the file: equal, or equal in every static dim."""
        if self.signature is None:
            return tuple(shape) == self.shape
        return len(shape) == len(self.signature) and all(d < 0 or d == e for d, e in zip(self.signature, shape))


@dataclass
class OpInfo:
    index: int
    op_type: str                      # builtin name ("CONV_2D"), or the custom code for CUSTOM ops
    custom: bool
    inputs: tuple[int, ...]           # tensor indices, -1 = optional input left out
    outputs: tuple[int, ...]
    options: object | None            # the builtin options table (Conv2DOptions, ...) or None
    custom_options: bytes = b""       # a custom op's own option bytes (their layout is the op's)


@dataclass
class ModelData:
    path: Path
    tensors: list[TensorInfo]
    ops: list[OpInfo]
    inputs: list[int]
    outputs: list[int]
    subgraphs: int = 1
    description: str = field(default="")


def read_model(path: str | Path) -> ModelData:
    """Parse the file at `path`, or raise MalformedModel naming it."""
    path = Path(path)
    buf = path.read_bytes()
    if len(buf) < 8:
        raise MalformedModel(f"{path}: not a TFLite model ({len(buf)} bytes is too short for a flatbuffer)")
    if buf[4:8] != b"TFL3":
        raise MalformedModel(f"{path}: not a TFLite model (file identifier {bytes(buf[4:8])!r}, expected b'TFL3')")
    try:
        return _parse(path, buf)
    except KpucError:
        raise
    except Exception as e:  # the generated readers fail with whatever struct/numpy raises on bad offsets
        raise MalformedModel(f"{path}: corrupt or truncated TFLite flatbuffer ({type(e).__name__}: {e})") from e


def _parse(path: Path, buf: bytes) -> ModelData:
    model = tflite.Model.GetRootAsModel(buf, 0)
    if model.SubgraphsLength() < 1:
        raise MalformedModel(f"{path}: the model has no subgraph")
    sg = model.Subgraphs(0)
    buffers = [_buffer_bytes(model.Buffers(i), buf) for i in range(model.BuffersLength())]
    tensors = [_tensor(sg.Tensors(i), i, buffers, path) for i in range(sg.TensorsLength())]
    codes = [_opcode(model.OperatorCodes(i)) for i in range(model.OperatorCodesLength())]
    ops = []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        name, custom = codes[op.OpcodeIndex()]
        ins = tuple(int(t) for t in _ints(op.InputsAsNumpy()))
        outs = tuple(int(t) for t in _ints(op.OutputsAsNumpy()))
        if any(t >= len(tensors) for t in ins + outs) or any(t < -1 for t in ins) or any(t < 0 for t in outs):
            raise MalformedModel(f"{path}: operator {i} ({name}) refers to a tensor that does not exist")
        raw = op.CustomOptionsAsNumpy() if custom else None
        ops.append(OpInfo(i, name, custom, ins, outs, _options(op),
                          raw.tobytes() if isinstance(raw, np.ndarray) else b""))
    inputs = [int(t) for t in _ints(sg.InputsAsNumpy())]
    outputs = [int(t) for t in _ints(sg.OutputsAsNumpy())]
    if any(not 0 <= t < len(tensors) for t in inputs + outputs):
        raise MalformedModel(f"{path}: a subgraph input or output refers to a tensor that does not exist")
    return ModelData(path, tensors, ops, inputs, outputs, model.SubgraphsLength(),
                     (model.Description() or b"").decode("utf-8", "replace"))


def _ints(a) -> np.ndarray:
    """The generated `...AsNumpy()` readers return the int 0 for an absent vector."""
    return a if isinstance(a, np.ndarray) else np.zeros(0, np.int32)


def _buffer_bytes(b, buf: bytes) -> bytes | None:
    if b is None:
        return None
    if b.Offset() > 1:  # models over 2 GB keep buffers after the flatbuffer, addressed from the file start
        start, size = b.Offset(), b.Size()
        if start + size > len(buf):
            raise MalformedModel("a buffer lies past the end of the file")
        return buf[start:start + size]
    data = b.DataAsNumpy()
    return data.tobytes() if isinstance(data, np.ndarray) and data.size else None


def _opcode(oc) -> tuple[str, bool]:
    # Codes above 127 live only in builtin_code, older ones only in deprecated_builtin_code.
    code = max(oc.DeprecatedBuiltinCode(), oc.BuiltinCode())
    if code == 32:  # CUSTOM
        return (oc.CustomCode() or b"CUSTOM").decode("utf-8", "replace"), True
    return BUILTIN_OPCODE2NAME.get(code, f"BUILTIN_{code}"), False


def _tensor(t, index: int, buffers: list, path: Path) -> TensorInfo:
    name = printable((t.Name() or f"tensor_{index}".encode()).decode("utf-8", "replace"))
    shape = tuple(int(d) for d in _ints(t.ShapeAsNumpy()))
    if any(d < 0 for d in shape):
        raise MalformedModel(f"{path}: tensor '{name}' has a negative dimension {list(shape)}")
    check_elements(shape, f"tensor '{name}'")
    dtype = DTYPES.get(t.Type(), f"tflite_type_{t.Type()}")
    info = TensorInfo(index, name, shape, dtype, _quant(t.Quantization()), buffer=t.Buffer(),
                      sparse=t.Sparsity() is not None, signature=_signature(t, shape))
    raw = buffers[t.Buffer()] if t.Buffer() < len(buffers) else None
    if raw is not None and dtype in DTYPES.values() and info.sparse:
        info.data = densify(np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype),
                            t.Sparsity(), shape, name)
        info.sparse = False
    elif raw is not None and dtype in DTYPES.values():
        count = int(np.prod(shape, dtype=np.int64))
        itemsize = np.dtype(dtype).itemsize
        if len(raw) != count * itemsize:
            raise MalformedModel(f"{path}: tensor '{name}' {shape} {dtype} needs {count * itemsize} bytes, "
                                 f"its buffer has {len(raw)}")
        info.data = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"), count=count).astype(dtype).reshape(shape)
        if info.data.dtype.kind == "f" and np.isnan(info.data).any():  # never exported; a damaged file
            raise MalformedModel(f"{path}: tensor '{name}' holds NaN values")
    q = info.quant
    if q is not None and not np.all(np.isfinite(np.asarray(q.scale, np.float64))):
        raise MalformedModel(f"{path}: tensor '{name}' has a non-finite quantization scale {q.scale}")
    if q is not None and q.axis is not None and q.axis >= len(shape):
        # TFLite Micro's int8 depthwise biases are 1-D but copy the weights' quantized_dimension (3)
        if len(shape) != 1 or shape[0] != len(q.scale):
            raise MalformedModel(f"{path}: tensor '{name}' {list(shape)} is quantized along axis {q.axis}")
        info.quant = QuantParam(q.scale, q.zero_point, 0)
    return info


def _signature(t, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """shape_signature when it marks dynamic dims (-1) of a tensor of the same rank, else None."""
    sig = tuple(int(d) for d in _ints(t.ShapeSignatureAsNumpy()))
    if len(sig) != len(shape) or -1 not in sig:
        return None
    return sig


def _quant(q) -> QuantParam | None:
    if q is None or q.ScaleLength() == 0:
        return None
    scale = [float(s) for s in q.ScaleAsNumpy()]
    zero_point = [int(z) for z in _ints(q.ZeroPointAsNumpy())] or [0]
    if len(scale) == 1:
        return QuantParam(scale[0], zero_point[0])
    if len(zero_point) == 1:
        zero_point = zero_point * len(scale)
    return QuantParam(tuple(scale), tuple(zero_point), int(q.QuantizedDimension()))


def _options(op):
    cls = OPTION_CLASSES.get(op.BuiltinOptionsType())
    table = op.BuiltinOptions()
    if cls is None or table is None:
        return None
    opts = cls()
    opts.Init(table.Bytes, table.Pos)
    return opts
