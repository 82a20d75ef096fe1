"""Run one zoo model in its own framework (LiteRT or onnxruntime) on seeded random inputs.

    python bench/zoo/reference.py NAME OUT.npz [--calibration N]

Runs as a child of sweep.py, so a runtime that crashes or hangs cannot stop the sweep. Writes an .npz
with the parity sample (`in<i>`), the framework's outputs (`out<i>`, as the framework returns them),
N calibration samples (`cal<k>_in<i>`) and `meta` (JSON: input/output names, dtypes, quantization).
Inputs are uniform in the manifest's `input.range` for float inputs; a quantized (int8/uint8) input
gets uniform codes over its whole range.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fetch import load_manifest, model_path  # noqa: E402

SEED = 20240612


def _random(shape, dtype: str, value_range, rng: np.random.Generator) -> np.ndarray:
    if dtype in ("int8", "uint8", "int16"):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    low, high = value_range
    return rng.uniform(low, high, size=shape).astype(dtype)


def single_axis_fixed(model: bytes) -> bytes:
    """A copy whose rank-1 per-channel tensors (biases) say quantized_dimension 0, the only axis they
    have. TFLite Micro's converter wrote 3 (the weights' axis) into tfmicro_person_detect_int8's biases;
    TFLite Micro ignores it, LiteRT refuses the model. Nothing else changes: a rank-1 tensor's scales can
    only run along axis 0."""
    import tflite
    data = bytearray(model)
    graph = tflite.Model.GetRootAsModel(data, 0)
    for s in range(graph.SubgraphsLength()):
        sub = graph.Subgraphs(s)
        for i in range(sub.TensorsLength()):
            t, q = sub.Tensors(i), sub.Tensors(i).Quantization()
            if q is None or t.ShapeLength() != 1 or q.QuantizedDimension() == 0:
                continue
            field = q._tab.Offset(16)           # QuantizationParameters.quantized_dimension
            data[q._tab.Pos + field:q._tab.Pos + field + 4] = (0).to_bytes(4, "little")
    return bytes(data)


def transpose_conv_bias_as_builtin(model: bytes) -> bytes:
    """A copy with MediaPipe's custom Convolution2DTransposeBias (input, OHWI weights, bias; options a
    C struct int32 padding 1 SAME / 2 VALID, stride_w, stride_h) rewritten as LiteRT's builtin
    TRANSPOSE_CONV (output shape, weights, input, bias) with the custom op's own output tensor shape, so
    LiteRT's reference kernels can run the selfie segmentation models."""
    import struct

    import flatbuffers
    from ai_edge_litert import schema_py_generated as S
    m = S.ModelT.InitFromObj(S.Model.GetRootAs(model, 0))
    custom = [i for i, c in enumerate(m.operatorCodes)
              if c.builtinCode == S.BuiltinOperator.CUSTOM and c.customCode == b"Convolution2DTransposeBias"]
    if not custom:
        return model
    code = S.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = S.BuiltinOperator.TRANSPOSE_CONV, 67, 3
    m.operatorCodes.append(code)
    for sub in m.subgraphs:
        for op in sub.operators:
            if op.opcodeIndex not in custom:
                continue
            padding, stride_w, stride_h = struct.unpack_from("<3i", bytes(op.customOptions))
            shape = S.BufferT()
            shape.data = np.asarray(sub.tensors[op.outputs[0]].shape, "<i4").view(np.uint8)
            m.buffers.append(shape)
            t = S.TensorT()
            t.shape, t.type, t.buffer, t.name = [4], S.TensorType.INT32, len(m.buffers) - 1, b"output_shape"
            sub.tensors.append(t)
            options = S.TransposeConvOptionsT()
            options.padding = {1: S.Padding.SAME, 2: S.Padding.VALID}[padding]
            options.strideW, options.strideH = stride_w, stride_h
            op.opcodeIndex = len(m.operatorCodes) - 1
            op.inputs = [len(sub.tensors) - 1, op.inputs[1], op.inputs[0], op.inputs[2]]
            op.builtinOptionsType, op.builtinOptions, op.customOptions = S.BuiltinOptions.TransposeConvOptions, options, None
    b = flatbuffers.Builder(len(model) + 1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _interpreter(path: Path, keep_all: bool = False, kernels: str = "reference"):
    """LiteRT's interpreter of the model; `keep_all`: every tensor readable after invoke (inner outputs).
    `kernels`: "reference" (BUILTIN_REF, TFLite's reference kernels: what the issue's parity figures are
    measured against), "default" (what `Interpreter(path)` gives a user: optimized builtins and XNNPACK) or
    "builtin" (the optimized builtins alone, without XNNPACK: LiteRT's other production kernel set)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    model = path.read_bytes()
    kw = {"experimental_preserve_all_tensors": True} if keep_all else {}
    if kernels == "reference":
        kw["experimental_op_resolver_type"] = OpResolverType.BUILTIN_REF
    elif kernels == "builtin":
        kw["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES

    def make(content: bytes):
        interp = Interpreter(model_content=content, **kw)
        interp.allocate_tensors()       # a custom op fails here, not when the file is read
        return interp
    try:
        return make(model)
    except (RuntimeError, ValueError) as e:
        if "quantized_dimension" in str(e):
            return make(single_axis_fixed(model))
        if "Convolution2DTransposeBias" in str(e):
            return make(transpose_conv_bias_as_builtin(model))
        if kernels == "reference":
            return _interpreter(path, keep_all, "default")
        raise


def integer_weights(path: Path) -> bool:
    """Whether a TFLite model's convs or fully-connected layers take integer (pre-quantized) weights."""
    interp = _interpreter(path, kernels="default")
    dtypes = {t["index"]: np.dtype(t["dtype"]) for t in interp.get_tensor_details()}
    return any(len(op["inputs"]) > 1 and dtypes.get(int(op["inputs"][1])) in (np.int8, np.uint8)
               for op in interp._get_ops_details()
               if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"))


def _tflite_session(path: Path, shapes: dict, output_tensors: list[str] | None = None, kernels: str = "reference"):
    """(meta, run) of a TFLite model; `output_tensors` names inner tensors to return instead of the outputs;
    `kernels` as _interpreter's."""
    interp = _interpreter(path, keep_all=bool(output_tensors), kernels=kernels)
    for d in interp.get_input_details():
        if d["name"] in shapes:
            interp.resize_tensor_input(d["index"], shapes[d["name"]])
    interp.allocate_tensors()
    ins = interp.get_input_details()
    if output_tensors:
        by_name = {t["name"]: t for t in interp.get_tensor_details()}
        outs = [by_name[n] for n in output_tensors]
    else:
        outs = interp.get_output_details()

    def quant(d):
        scale, zero_point = d["quantization"]
        return [float(scale), int(zero_point)] if scale else None

    meta = dict(layout="nhwc",
                inputs=[dict(name=d["name"], shape=[int(s) for s in d["shape"]], dtype=np.dtype(d["dtype"]).name,
                             quant=quant(d)) for d in ins],
                outputs=[dict(name=d["name"], dtype=np.dtype(d["dtype"]).name, quant=quant(d)) for d in outs])

    def run(arrays):
        for d, a in zip(ins, arrays):
            interp.set_tensor(d["index"], a)
        interp.invoke()
        return [interp.get_tensor(d["index"]) for d in outs]
    return meta, run


def _onnx_session(path: Path, shapes: dict):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    dtypes = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8",
              "tensor(int64)": "int64", "tensor(int32)": "int32"}

    def static(i):
        if i.name in shapes:
            return list(shapes[i.name])
        dims = [d if isinstance(d, int) and d > 0 else None for d in i.shape]
        if any(d is None for d in dims[1:]):
            raise SystemExit(f"input {i.name} has symbolic dims {i.shape}: give input_shapes in the manifest")
        return [1 if d is None else d for d in dims]
    meta = dict(layout="nchw",
                inputs=[dict(name=i.name, shape=static(i), dtype=dtypes.get(i.type, i.type), quant=None)
                        for i in sess.get_inputs()],
                outputs=[dict(name=o.name, dtype=dtypes.get(o.type, o.type), quant=None) for o in sess.get_outputs()])

    def run(arrays):
        return sess.run(None, {i["name"]: a for i, a in zip(meta["inputs"], arrays)})
    return meta, run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("out", type=Path)
    ap.add_argument("--calibration", type=int, default=3)
    args = ap.parse_args(argv)
    entry = next(e for e in load_manifest() if e["name"] == args.name)
    path = model_path(entry)
    shapes = entry.get("input_shapes", {})
    meta, run = (_tflite_session if entry["format"] == "tflite" else _onnx_session)(path, shapes)
    value_range = entry["input"]["range"]
    rng = np.random.default_rng(SEED)
    sample = [_random(i["shape"], i["dtype"], value_range, rng) for i in meta["inputs"]]
    arrays = {f"in{k}": a for k, a in enumerate(sample)}
    arrays.update({f"out{k}": np.asarray(o) for k, o in enumerate(run(sample))})
    for c in range(args.calibration):
        for k, i in enumerate(meta["inputs"]):
            arrays[f"cal{c}_in{k}"] = _random(i["shape"], i["dtype"], value_range, rng)
    np.savez(args.out, meta=np.array(json.dumps(meta)), **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
