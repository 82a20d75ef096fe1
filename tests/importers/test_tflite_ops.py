"""One small TFLite model per op and option, built here with the tflite flatbuffer builders, checked
against LiteRT's reference kernels; plus unsupported-op reporting on built and patched models."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
from tflite.BuiltinOptions import BuiltinOptions
from tflite.utils import BUILTIN_OPCODE2NAME

from compiler.errors import UnsupportedOps
from compiler.executor import run_graph
from compiler.importers import import_model, summarize_model
from shared_data import MOBILENET, needs

TYPES = {"float32": 0, "float16": 1, "int32": 2, "uint8": 3, "int64": 4, "bool": 6, "int8": 9}
CODES = {name: code for code, name in BUILTIN_OPCODE2NAME.items()}
RELU, RELU_N1_TO_1, RELU6, TANH = 1, 2, 3, 4
SAME, VALID = 0, 1


# ------------------------------------------------------------------ a tiny .tflite writer
@dataclass
class T:
    """A tensor: activations have no data; constants carry it (in `dtype`)."""
    name: str
    shape: tuple
    dtype: str = "float32"
    data: np.ndarray | None = None
    scale: tuple = ()
    zero_point: tuple = ()
    axis: int = 0
    signature: tuple | None = None   # shape_signature (-1 = dynamic dim)
    # (traversal_order, block_map, [(format 0 DENSE | 1 SPARSE_CSR, dense_size, segments, indices)]);
    # `data` then holds only the stored values
    sparsity: tuple | None = None


@dataclass
class Op:
    code: str                        # builtin name, or "CUSTOM:<code>"
    inputs: list
    outputs: list
    options: tuple | None = None     # ("Conv2DOptions", {"Padding": 0, ...}); list values become vectors
    extra: dict = field(default_factory=dict)


def _mod(name):
    return importlib.import_module(f"tflite.{name}")


def _offsets(b, offs):
    b.StartVector(4, len(offs), 4)
    for o in reversed(offs):
        b.PrependUOffsetTRelative(o)
    return b.EndVector()


def _bytes(b, raw: bytes):
    b.StartVector(1, len(raw), 16)
    b.head -= len(raw)
    b.Bytes[b.head:b.head + len(raw)] = raw
    return b.EndVector()


def _table(b, name, fields):
    mod = _mod(name)
    vectors = {k: b.CreateNumpyVector(np.asarray(v, np.int32)) for k, v in fields.items() if isinstance(v, list)}
    getattr(mod, f"{name}Start")(b)
    for k, v in fields.items():
        getattr(mod, f"{name}Add{k}")(b, vectors.get(k, v))
    return getattr(mod, f"{name}End")(b)


def _int_vector(b, values):
    mod = _mod("Int32Vector")
    vec = b.CreateNumpyVector(np.asarray(values, np.int32))
    mod.Int32VectorStart(b)
    mod.Int32VectorAddValues(b, vec)
    return mod.Int32VectorEnd(b)


def _sparsity(b, order, block_map, dims):
    D, S = _mod("DimensionMetadata"), _mod("SparsityParameters")
    metas = []
    for fmt, size, segments, indices in dims:
        seg = _int_vector(b, segments) if fmt else None
        idx = _int_vector(b, indices) if fmt else None
        D.DimensionMetadataStart(b)
        D.DimensionMetadataAddFormat(b, fmt)
        D.DimensionMetadataAddDenseSize(b, size)
        if fmt:
            D.DimensionMetadataAddArraySegmentsType(b, 1)
            D.DimensionMetadataAddArraySegments(b, seg)
            D.DimensionMetadataAddArrayIndicesType(b, 1)
            D.DimensionMetadataAddArrayIndices(b, idx)
        metas.append(D.DimensionMetadataEnd(b))
    order_vec = b.CreateNumpyVector(np.asarray(order, np.int32))
    block_vec = b.CreateNumpyVector(np.asarray(block_map, np.int32)) if block_map else None
    meta_vec = _offsets(b, metas)
    S.SparsityParametersStart(b)
    S.SparsityParametersAddTraversalOrder(b, order_vec)
    if block_vec is not None:
        S.SparsityParametersAddBlockMap(b, block_vec)
    S.SparsityParametersAddDimMetadata(b, meta_vec)
    return S.SparsityParametersEnd(b)


def build(tensors: list[T], ops: list[Op], inputs: list[str], outputs: list[str]) -> bytes:
    """Serialize a one-subgraph TFLite model; ops refer to tensors by name ('' = optional input)."""
    b = flatbuffers.Builder(1024)
    index = {t.name: i for i, t in enumerate(tensors)}
    B = _mod("Buffer")
    buffers = []
    B.BufferStart(b)
    buffers.append(B.BufferEnd(b))
    tensor_buffer = []
    for t in tensors:
        if t.data is None:
            tensor_buffer.append(0)
            continue
        data = _bytes(b, np.ascontiguousarray(t.data, dtype=t.dtype).tobytes())
        B.BufferStart(b)
        B.BufferAddData(b, data)
        tensor_buffer.append(len(buffers))
        buffers.append(B.BufferEnd(b))
    Tn, Q = _mod("Tensor"), _mod("QuantizationParameters")
    toffs = []
    for t, buf in zip(tensors, tensor_buffer):
        name, shape = b.CreateString(t.name), b.CreateNumpyVector(np.asarray(t.shape, np.int32))
        signature = b.CreateNumpyVector(np.asarray(t.signature, np.int32)) if t.signature else None
        sparsity = _sparsity(b, *t.sparsity) if t.sparsity else None
        quant = None
        if t.scale:
            scale = b.CreateNumpyVector(np.asarray(t.scale, np.float32))
            zp = b.CreateNumpyVector(np.asarray(t.zero_point, np.int64))
            Q.QuantizationParametersStart(b)
            Q.QuantizationParametersAddScale(b, scale)
            Q.QuantizationParametersAddZeroPoint(b, zp)
            Q.QuantizationParametersAddQuantizedDimension(b, t.axis)
            quant = Q.QuantizationParametersEnd(b)
        Tn.TensorStart(b)
        Tn.TensorAddShape(b, shape)
        if signature is not None:
            Tn.TensorAddShapeSignature(b, signature)
        if sparsity is not None:
            Tn.TensorAddSparsity(b, sparsity)
        Tn.TensorAddType(b, TYPES[t.dtype])
        Tn.TensorAddBuffer(b, buf)
        Tn.TensorAddName(b, name)
        if quant is not None:
            Tn.TensorAddQuantization(b, quant)
        toffs.append(Tn.TensorEnd(b))
    codes = list(dict.fromkeys(op.code for op in ops))
    O, OC = _mod("Operator"), _mod("OperatorCode")
    ooffs = []
    for op in ops:
        opts = _table(b, *op.options) if op.options else None
        custom = _bytes(b, op.extra["custom_options"]) if "custom_options" in op.extra else None
        ins = b.CreateNumpyVector(np.asarray([index[n] if n else -1 for n in op.inputs], np.int32))
        outs = b.CreateNumpyVector(np.asarray([index[n] for n in op.outputs], np.int32))
        O.OperatorStart(b)
        O.OperatorAddOpcodeIndex(b, codes.index(op.code))
        O.OperatorAddInputs(b, ins)
        O.OperatorAddOutputs(b, outs)
        if custom is not None:
            O.OperatorAddCustomOptions(b, custom)
        if opts is not None:
            O.OperatorAddBuiltinOptionsType(b, getattr(BuiltinOptions, op.options[0]))
            O.OperatorAddBuiltinOptions(b, opts)
        ooffs.append(O.OperatorEnd(b))
    coffs = []
    for code in codes:
        custom = b.CreateString(code.split(":", 1)[1]) if code.startswith("CUSTOM:") else None
        n = CODES["CUSTOM"] if custom else CODES[code]
        OC.OperatorCodeStart(b)
        OC.OperatorCodeAddDeprecatedBuiltinCode(b, min(n, 127))
        OC.OperatorCodeAddBuiltinCode(b, n)
        OC.OperatorCodeAddVersion(b, 1)
        if custom:
            OC.OperatorCodeAddCustomCode(b, custom)
        coffs.append(OC.OperatorCodeEnd(b))
    S, M = _mod("SubGraph"), _mod("Model")
    tvec, ovec = _offsets(b, toffs), _offsets(b, ooffs)
    ivec = b.CreateNumpyVector(np.asarray([index[n] for n in inputs], np.int32))
    outvec = b.CreateNumpyVector(np.asarray([index[n] for n in outputs], np.int32))
    sgname = b.CreateString("main")
    S.SubGraphStart(b)
    S.SubGraphAddTensors(b, tvec)
    S.SubGraphAddInputs(b, ivec)
    S.SubGraphAddOutputs(b, outvec)
    S.SubGraphAddOperators(b, ovec)
    S.SubGraphAddName(b, sgname)
    sg = S.SubGraphEnd(b)
    sgvec, cvec, bvec = _offsets(b, [sg]), _offsets(b, coffs), _offsets(b, buffers)
    desc = b.CreateString("kpuc test model")
    M.ModelStart(b)
    M.ModelAddVersion(b, 3)
    M.ModelAddOperatorCodes(b, cvec)
    M.ModelAddSubgraphs(b, sgvec)
    M.ModelAddDescription(b, desc)
    M.ModelAddBuffers(b, bvec)
    b.Finish(M.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def single(code, in_shapes, out_shape, options=None, consts=(), out_dtype="float32", in_dtype="float32",
           n_out=1, out_shapes=None, order=None) -> bytes:
    """A model of one op: activation inputs x0, x1… then constant inputs (None = left out), outputs y0…

    `order` permutes that operand list into the op's own input order."""
    tensors = [T(f"x{i}", s, in_dtype) for i, s in enumerate(in_shapes)]
    names = [t.name for t in tensors]
    for i, c in enumerate(consts):
        if c is None:
            names.append("")
            continue
        c = np.asarray(c)
        tensors.append(T(f"c{i}", c.shape, c.dtype.name, c))
        names.append(f"c{i}")
    names = [names[i] for i in order] if order else names
    out_shapes = out_shapes or [out_shape] * n_out
    outs = [T(f"y{i}", s, out_dtype) for i, s in enumerate(out_shapes)]
    return build(tensors + outs, [Op(code, names, [o.name for o in outs], options)],
                 [t.name for t in tensors[:len(in_shapes)]], [o.name for o in outs])


# ------------------------------------------------------------------ the oracle
def litert(model: Path | bytes, feeds: list[np.ndarray], kernels: str = "reference") -> list[np.ndarray]:
    """LiteRT's reference kernels (BUILTIN_REF; `kernels="default"`: what Interpreter(path) runs, XNNPACK)
    on `feeds`, in the file's own layout; dynamic inputs are resized to the feeds' shapes first. The one
    LiteRT runner of the importer tests."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    kw = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    if kernels == "reference":
        kw["experimental_op_resolver_type"] = OpResolverType.BUILTIN_REF
    it = Interpreter(**kw)
    for d, x in zip(it.get_input_details(), feeds, strict=True):
        if tuple(d["shape"]) != tuple(np.shape(x)):
            it.resize_tensor_input(d["index"], np.shape(x))
    it.allocate_tensors()
    for d, x in zip(it.get_input_details(), feeds):
        it.set_tensor(d["index"], x)
    it.invoke()
    return [it.get_tensor(d["index"]) for d in it.get_output_details()]


def run_both(model: bytes, tmp_path, seed=0, positive=False, resolver="BUILTIN_REF"):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    it = Interpreter(model_content=model, experimental_op_resolver_type=getattr(OpResolverType, resolver))
    it.allocate_tensors()
    rng = np.random.default_rng(seed)
    feeds = []
    for d in it.get_input_details():
        a = rng.standard_normal(tuple(d["shape"])).astype(d["dtype"])
        feeds.append(np.abs(a) + 0.1 if positive else a)
        it.set_tensor(d["index"], feeds[-1])
    it.invoke()
    expected = [it.get_tensor(d["index"]) for d in it.get_output_details()]
    path = tmp_path / "model.tflite"
    path.write_bytes(model)
    graph = import_model(path)
    got = run_graph(graph, *[a.transpose(0, 3, 1, 2) if a.ndim == 4 else a for a in feeds])
    return graph, [g.transpose(0, 2, 3, 1) if g.ndim == 4 else g for g in got], expected


def check(model: bytes, tmp_path, tol=1e-5, **kw):
    graph, got, expected = run_both(model, tmp_path, **kw)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=tol, atol=tol)
    return graph


def opts(name, **fields):
    return (name, fields)


W = np.random.default_rng(42)


def rand(*shape, dtype="float32"):
    return W.standard_normal(shape).astype(dtype)


X4 = (1, 5, 7, 3)
CASES = {
    # unary and activations
    **{op: (single(op, [X4], X4), {}) for op in
       ["COS", "EXP", "FLOOR", "NEG", "SIN", "SQUARE", "TANH", "HARD_SWISH", "LOGISTIC", "ABS",
        "RELU", "RELU6", "RELU_N1_TO_1"]},
    **{op: (single(op, [X4], X4), {"positive": True}) for op in ["LOG", "RSQRT", "SQRT"]},
    **{op: (single(op, [X4], X4), {"resolver": "BUILTIN"}) for op in ["CEIL", "ROUND"]},  # not in BUILTIN_REF
    **{op: (single(op, [X4], X4), {}) for op in ["SIGN", "RELU_0_TO_1"]},
    "CAST": (single("CAST", [X4], X4, opts("CastOptions", InDataType=0, OutDataType=2), out_dtype="int32"), {}),
    "LEAKY_RELU": (single("LEAKY_RELU", [X4], X4, opts("LeakyReluOptions", Alpha=0.2)), {}),
    "PRELU": (single("PRELU", [X4], X4, consts=[rand(1, 1, 3)]), {}),
    "SOFTMAX-beta": (single("SOFTMAX", [(2, 7)], (2, 7), opts("SoftmaxOptions", Beta=0.5)), {}),
    "LOG_SOFTMAX": (single("LOG_SOFTMAX", [(2, 7)], (2, 7), opts("LogSoftmaxOptions")), {}),
    "L2_NORMALIZATION": (single("L2_NORMALIZATION", [X4], X4, opts("L2NormOptions")), {}),
    # binary with broadcasting and fused activations
    "DIV-relu6": (single("DIV", [X4, (7, 3)], X4, opts("DivOptions", FusedActivationFunction=RELU6)),
                  {"positive": True}),
    "SUB-relu": (single("SUB", [X4, (1, 1, 3)], X4, opts("SubOptions", FusedActivationFunction=RELU)), {}),
    "MUL-relu_n1": (single("MUL", [X4, X4], X4, opts("MulOptions", FusedActivationFunction=RELU_N1_TO_1)), {}),
    "ADD-const": (single("ADD", [X4], X4, opts("AddOptions", FusedActivationFunction=RELU), consts=[rand(3)]), {}),
    "MAXIMUM": (single("MAXIMUM", [X4, (1, 7, 1)], X4), {}),
    "MINIMUM": (single("MINIMUM", [X4], X4, consts=[np.float32(0.25)]), {}),
    "POW": (single("POW", [X4, X4], X4), {"positive": True}),
    "SQUARED_DIFFERENCE": (single("SQUARED_DIFFERENCE", [X4, (3,)], X4), {}),
    # convolutions
    "CONV_2D-same-s2-relu6": (single("CONV_2D", [(1, 9, 8, 3)], (1, 5, 4, 4), opts(
        "Conv2DOptions", Padding=SAME, StrideH=2, StrideW=2, FusedActivationFunction=RELU6),
        consts=[rand(4, 3, 3, 3), rand(4)]), {}),
    "CONV_2D-valid-dilated": (single("CONV_2D", [(1, 9, 8, 3)], (1, 5, 4, 2), opts(
        "Conv2DOptions", Padding=VALID, StrideH=1, StrideW=2, DilationHFactor=2, DilationWFactor=1,
        FusedActivationFunction=RELU_N1_TO_1), consts=[rand(2, 3, 2, 3), rand(2)]), {}),
    "CONV_2D-same-dilated": (single("CONV_2D", [(1, 8, 8, 2)], (1, 8, 8, 3), opts(
        "Conv2DOptions", Padding=SAME, StrideH=1, StrideW=1, DilationHFactor=2, DilationWFactor=3),
        consts=[rand(3, 3, 3, 2), rand(3)]), {}),
    "DEPTHWISE_CONV_2D-mult2-same-s2": (single("DEPTHWISE_CONV_2D", [(1, 7, 8, 3)], (1, 4, 4, 6), opts(
        "DepthwiseConv2DOptions", Padding=SAME, StrideH=2, StrideW=2, DepthMultiplier=2,
        FusedActivationFunction=RELU6), consts=[rand(1, 3, 3, 6), rand(6)]), {}),
    "FULLY_CONNECTED-keepdims-nobias": (single("FULLY_CONNECTED", [(2, 3, 4)], (2, 3, 5), opts(
        "FullyConnectedOptions", KeepNumDims=True), consts=[rand(5, 4), None]), {}),
    "FULLY_CONNECTED-flatten-relu": (single("FULLY_CONNECTED", [(2, 2, 2, 3)], (2, 5), opts(
        "FullyConnectedOptions", FusedActivationFunction=RELU), consts=[rand(5, 12), rand(5)]), {}),
    "BATCH_MATMUL-adj": (single("BATCH_MATMUL", [(2, 4, 3), (1, 5, 4)], (2, 3, 5), opts(
        "BatchMatMulOptions", AdjX=True, AdjY=True)), {}),
    "BATCH_MATMUL-const": (single("BATCH_MATMUL", [(2, 3, 4)], (2, 3, 5), opts("BatchMatMulOptions"),
                                  consts=[rand(4, 5)]), {}),
    # pooling and reductions
    "MAX_POOL_2D-same-s2": (single("MAX_POOL_2D", [(1, 7, 8, 3)], (1, 4, 4, 3), opts(
        "Pool2DOptions", Padding=SAME, StrideH=2, StrideW=2, FilterHeight=3, FilterWidth=3)), {}),
    "AVERAGE_POOL_2D-same-relu": (single("AVERAGE_POOL_2D", [(1, 7, 8, 3)], (1, 3, 4, 3), opts(
        "Pool2DOptions", Padding=SAME, StrideH=3, StrideW=2, FilterHeight=3, FilterWidth=2,
        FusedActivationFunction=RELU)), {}),
    "MEAN-neg-axes": (single("MEAN", [X4], (1, 5, 1, 1), opts("ReducerOptions", KeepDims=True),
                             consts=[np.array([-1, 2], np.int32)]), {}),
    "SUM": (single("SUM", [X4], (1, 7), opts("ReducerOptions", KeepDims=False),
                   consts=[np.array([1, 3], np.int32)]), {}),
    "REDUCE_MAX": (single("REDUCE_MAX", [X4], (1, 5, 7), opts("ReducerOptions"), consts=[np.array([3], np.int32)]), {}),
    "REDUCE_MIN": (single("REDUCE_MIN", [X4], (1, 1, 1, 3), opts("ReducerOptions", KeepDims=True),
                          consts=[np.array([1, 2], np.int32)]), {}),
    "REDUCE_PROD": (single("REDUCE_PROD", [X4], (1, 5, 3), opts("ReducerOptions"),
                           consts=[np.array([2], np.int32)]), {}),
    # shape and data movement
    "RESHAPE": (single("RESHAPE", [X4], (5, 21), consts=[np.array([5, -1], np.int32)]), {}),
    "RESHAPE-options": (single("RESHAPE", [X4], (1, 35, 3), opts("ReshapeOptions", NewShape=[1, 35, 3])), {}),
    "SQUEEZE": (single("SQUEEZE", [(1, 5, 1, 3)], (5, 3), opts("SqueezeOptions")), {}),
    "SQUEEZE-dims": (single("SQUEEZE", [(1, 5, 1, 3)], (1, 5, 3), opts("SqueezeOptions", SqueezeDims=[-2])), {}),
    "EXPAND_DIMS": (single("EXPAND_DIMS", [(5, 3)], (5, 1, 3), consts=[np.array([-2], np.int32)]), {}),
    "TRANSPOSE": (single("TRANSPOSE", [X4], (7, 1, 3, 5), consts=[np.array([2, 0, 3, 1], np.int32)]), {}),
    "CONCATENATION": (single("CONCATENATION", [X4, (1, 5, 7, 2)], (1, 5, 7, 5), opts(
        "ConcatenationOptions", Axis=-1)), {}),  # LiteRT rejects a fused activation on CONCATENATION
    "PACK": (single("PACK", [(5, 3), (5, 3)], (5, 2, 3), opts("PackOptions", ValuesCount=2, Axis=1)), {}),
    "UNPACK": (single("UNPACK", [(2, 5, 3)], None, opts("UnpackOptions", Num=3, Axis=-1), n_out=3,
                      out_shapes=[(2, 5)] * 3), {}),
    "SPLIT": (single("SPLIT", [(2, 6, 3)], None, opts("SplitOptions", NumSplits=3), n_out=3,
                     out_shapes=[(2, 2, 3)] * 3, consts=[np.array(1, np.int32)], order=[1, 0]), {}),
    "SPLIT_V": (single("SPLIT_V", [(2, 6, 3)], None, opts("SplitVOptions", NumSplits=3), n_out=3,
                       out_shapes=[(2, 1, 3), (2, 3, 3), (2, 2, 3)],
                       consts=[np.array([1, -1, 2], np.int32), np.array([-2], np.int32)]), {}),
    "SLICE": (single("SLICE", [X4], (1, 3, 4, 3), consts=[np.array([0, 1, 2, 0], np.int32),
                                                          np.array([-1, 3, 4, -1], np.int32)]), {}),
    "STRIDED_SLICE-shrink-newaxis": (single("STRIDED_SLICE", [X4], (1, 5, 3, 2), opts(
        "StridedSliceOptions", ShrinkAxisMask=0b1, NewAxisMask=0b10, BeginMask=0b1000, EndMask=0b100),
        consts=[np.array([0, 0, 0, 0, 1], np.int32), np.array([1, 0, 5, 7, 3], np.int32),
                np.array([1, 1, 1, 3, 1], np.int32)]), {}),
    "STRIDED_SLICE-negative-stride": (single("STRIDED_SLICE", [X4], (1, 2, 3, 3), opts(
        "StridedSliceOptions", BeginMask=0b1001, EndMask=0b1001),
        consts=[np.array([0, -1, 5, 0], np.int32), np.array([1, 0, -10, 3], np.int32),
                np.array([1, -2, -2, 1], np.int32)]), {}),
    "STRIDED_SLICE-ellipsis": (single("STRIDED_SLICE", [X4], (1, 5, 7, 1), opts(
        "StridedSliceOptions", EllipsisMask=0b1),
        consts=[np.array([0, 1], np.int32), np.array([0, 2], np.int32), np.array([1, 1], np.int32)]), {}),
    "GATHER": (single("GATHER", [X4], (1, 5, 4, 3), opts("GatherOptions", Axis=-2),
                      consts=[np.array([6, 0, 2, 2], np.int32)]), {}),
    "GATHER-2d-indices": (single("GATHER", [(6, 3)], (2, 2, 3), opts("GatherOptions", Axis=0),
                                 consts=[np.array([[5, 0], [1, 1]], np.int32)]), {}),
    "PAD": (single("PAD", [X4], (1, 6, 10, 3), consts=[np.array([[0, 0], [1, 0], [2, 1], [0, 0]], np.int32)]), {}),
    "PADV2": (single("PADV2", [X4], (1, 6, 10, 4), consts=[np.array([[0, 0], [1, 0], [2, 1], [1, 0]], np.int32),
                                                           np.array([-2.5], np.float32)]), {}),
    "MIRROR_PAD-reflect": (single("MIRROR_PAD", [X4], (1, 9, 10, 3), opts("MirrorPadOptions", Mode=0),
                                  consts=[np.array([[0, 0], [2, 2], [1, 2], [0, 0]], np.int32)]), {}),
    "MIRROR_PAD-symmetric": (single("MIRROR_PAD", [X4], (1, 9, 10, 3), opts("MirrorPadOptions", Mode=1),
                                    consts=[np.array([[0, 0], [2, 2], [1, 2], [0, 0]], np.int32)]), {}),
    "SPACE_TO_BATCH_ND": (single("SPACE_TO_BATCH_ND", [(2, 5, 7, 3)], (12, 3, 3, 3), opts("SpaceToBatchNDOptions"),
                                 consts=[np.array([2, 3], np.int32), np.array([[1, 0], [0, 2]], np.int32)]), {}),
    "BATCH_TO_SPACE_ND": (single("BATCH_TO_SPACE_ND", [(12, 3, 3, 3)], (2, 5, 7, 3), opts("BatchToSpaceNDOptions"),
                                 consts=[np.array([2, 3], np.int32), np.array([[1, 0], [0, 2]], np.int32)]), {}),
    "DEPTH_TO_SPACE": (single("DEPTH_TO_SPACE", [(1, 2, 3, 8)], (1, 4, 6, 2), opts("DepthToSpaceOptions", BlockSize=2)),
                       {}),
    "SPACE_TO_DEPTH": (single("SPACE_TO_DEPTH", [(1, 4, 6, 2)], (1, 2, 3, 8), opts("SpaceToDepthOptions", BlockSize=2)),
                       {}),
    # resize: every TF coordinate rule, up and down, odd ratios
    **{f"RESIZE_{kind}-{flags}-{h}x{w}": (single(f"RESIZE_{kind}", [(1, 5, 7, 2)], (1, h, w, 2), opts(
        "ResizeBilinearOptions" if kind == "BILINEAR" else "ResizeNearestNeighborOptions",
        AlignCorners=flags == "align", HalfPixelCenters=flags == "half"), consts=[np.array([h, w], np.int32)]), {})
       for kind in ("BILINEAR", "NEAREST_NEIGHBOR") for flags in ("default", "align", "half")
       for h, w in ((8, 11), (3, 4))},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_litert(case, tmp_path):
    model, kw = CASES[case]
    check(model, tmp_path, **kw)


def test_fused_tanh_appends_tanh(tmp_path):
    """The schema's fused TANH becomes unary tanh. LiteRT's conv/add kernels ignore it (their
    CalculateActivationRange treats TANH like NONE), so this is checked on the graph, not the oracle."""
    tensors = [T("x", X4), T("w", (2, 3, 3, 3), data=rand(2, 3, 3, 3)), T("b", (2,), data=rand(2)),
               T("y", (1, 5, 7, 2)), T("z", (1, 5, 7, 2))]
    ops = [Op("CONV_2D", ["x", "w", "b"], ["y"], opts("Conv2DOptions", Padding=SAME, StrideH=1, StrideW=1,
                                                      FusedActivationFunction=TANH)),
           Op("ADD", ["y", "y"], ["z"], opts("AddOptions", FusedActivationFunction=TANH))]
    path = tmp_path / "tanh.tflite"
    path.write_bytes(build(tensors, ops, ["x"], ["z"]))
    graph = import_model(path)
    assert [(n.name, n.attrs) for n in graph.nodes_of("unary")] == [("y", {"op": "tanh"}), ("z", {"op": "tanh"})]
    assert graph.node("y/conv2d").op == "conv2d" and graph.node("z/binary").op == "binary"


def test_transpose_conv_with_bias_and_activation(tmp_path):
    tensors = [T("out_shape", (4,), "int32", np.array([1, 9, 11, 2], np.int32)),
               T("w", (2, 3, 3, 3), data=rand(2, 3, 3, 3)), T("x", (1, 5, 6, 3)), T("b", (2,), data=rand(2)),
               T("y", (1, 9, 11, 2))]
    model = build(tensors, [Op("TRANSPOSE_CONV", ["out_shape", "w", "x", "b"], ["y"], opts(
        "TransposeConvOptions", Padding=SAME, StrideH=2, StrideW=2, FusedActivationFunction=RELU6))], ["x"], ["y"])
    check(model, tmp_path)


def _tconv(padding, stride, in_hw, out_hw):
    tensors = [T("out_shape", (4,), "int32", np.array([1, *out_hw, 2], np.int32)),
               T("w", (2, 3, 3, 3), data=rand(2, 3, 3, 3)), T("x", (1, *in_hw, 3)), T("y", (1, *out_hw, 2))]
    return build(tensors, [Op("TRANSPOSE_CONV", ["out_shape", "w", "x"], ["y"], opts(
        "TransposeConvOptions", Padding=padding, StrideH=stride, StrideW=stride))], ["x"], ["y"])


@pytest.mark.parametrize("padding,stride,in_hw,out_hw", [(SAME, 2, (4, 5), (8, 10)), (SAME, 2, (4, 5), (7, 9)),
                                                         (VALID, 2, (4, 5), (9, 11)), (VALID, 2, (4, 5), (10, 12)),
                                                         (SAME, 1, (4, 5), (4, 5)), (VALID, 1, (4, 5), (6, 7)),
                                                         (VALID, 3, (4, 3), (12, 10)), (SAME, 3, (4, 3), (11, 8))])
def test_transpose_conv_output_shapes(padding, stride, in_hw, out_hw, tmp_path):
    check(_tconv(padding, stride, in_hw, out_hw), tmp_path)


def test_static_shape_chain_folds_to_constants(tmp_path):
    """SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE: the reshape target is known at import time."""
    tensors = [T("x", (2, 3, 4)), T("shape", (3,), "int32"), T("b", (1,), "int32", np.array([0], np.int32)),
               T("e", (1,), "int32", np.array([1], np.int32)), T("s", (1,), "int32", np.array([1], np.int32)),
               T("batch", (), "int32"), T("minus1", (), "int32", np.array(-1, np.int32)),
               T("target", (2,), "int32"), T("y", (2, 12))]
    ops = [Op("SHAPE", ["x"], ["shape"], opts("ShapeOptions", OutType=2)),
           Op("STRIDED_SLICE", ["shape", "b", "e", "s"], ["batch"], opts("StridedSliceOptions", ShrinkAxisMask=1)),
           Op("PACK", ["batch", "minus1"], ["target"], opts("PackOptions", ValuesCount=2, Axis=0)),
           Op("RESHAPE", ["x", "target"], ["y"])]
    graph = check(build(tensors, ops, ["x"], ["y"]), tmp_path)
    assert [n.op for n in graph.nodes if n.op not in ("input", "constant")] == ["reshape"]


def test_dequantize_fp16_and_int8_constants_fold(tmp_path):
    w16 = rand(3, 2, 2, 2).astype("float16")
    w8 = np.array([[-3, 7, 127], [0, -128, 5]], np.int8)
    tensors = [T("x", (1, 4, 4, 2)), T("w16", (3, 2, 2, 2), "float16", w16), T("w", (3, 2, 2, 2)),
               T("b", (3,), data=rand(3)),
               T("y", (1, 3, 3, 3)), T("f", (2, 3)), T("m8", (2, 3), "int8", w8, scale=(0.05,), zero_point=(0,)),
               T("m", (2, 3)), T("z", (2, 3))]
    ops = [Op("DEQUANTIZE", ["w16"], ["w"]), Op("CONV_2D", ["x", "w", "b"], ["y"], opts(
        "Conv2DOptions", Padding=VALID, StrideH=1, StrideW=1)),
        Op("DEQUANTIZE", ["m8"], ["m"]), Op("ADD", ["f", "m"], ["z"], opts("AddOptions"))]
    graph = check(build(tensors, ops, ["x", "f"], ["y", "z"]), tmp_path)
    assert all(v.dtype == "float32" for n in graph.nodes for v in n.outputs)
    assert not graph.nodes_of("dequantize")


def test_quantize_between_float_activations_keeps_params(tmp_path):
    tensors = [T("x", (1, 4, 4, 2)), T("q", (1, 4, 4, 2), "uint8", scale=(0.02,), zero_point=(128,)),
               T("r", (1, 4, 4, 2), "int8", scale=(0.04,), zero_point=(-3,)), T("y", (1, 4, 4, 2))]
    ops = [Op("QUANTIZE", ["x"], ["q"]), Op("QUANTIZE", ["q"], ["r"]), Op("DEQUANTIZE", ["r"], ["y"])]
    graph, got, expected = run_both(build(tensors, ops, ["x"], ["y"]), tmp_path)
    # The float graph skips the first rounding to the uint8 grid and TFLite's integer requantization
    # rounds its own way: equal within half a uint8 step plus one int8 step.
    np.testing.assert_allclose(got[0], expected[0], atol=0.01 + 0.04 + 1e-6)
    assert graph.nodes_of("quantize") and graph.nodes_of("dequantize")
    assert graph.inputs[0].quant.scale == pytest.approx(0.02)
    assert any(v.quant is not None and v.quant.zero_point == -3 for n in graph.nodes for v in n.outputs)


def test_per_channel_int8_conv_keeps_axis(tmp_path):
    scales = (0.01, 0.02, 0.03)
    w = np.arange(-27, 27, dtype=np.int8).reshape(3, 3, 3, 2)
    tensors = [T("x", (1, 5, 5, 2), "int8", scale=(0.1,), zero_point=(2,)),
               T("w", (3, 3, 3, 2), "int8", w, scale=scales, zero_point=(0, 0, 0), axis=0),
               T("b", (3,), "int32", np.array([10, -20, 30], np.int32), scale=tuple(0.1 * s for s in scales),
                 zero_point=(0, 0, 0)),
               T("y", (1, 3, 3, 3), "int8", scale=(0.5,), zero_point=(-1,))]
    path = tmp_path / "pc.tflite"
    path.write_bytes(build(tensors, [Op("CONV_2D", ["x", "w", "b"], ["y"], opts(
        "Conv2DOptions", Padding=VALID, StrideH=1, StrideW=1))], ["x"], ["y"]))
    graph = import_model(path)
    conv = graph.nodes_of("conv2d")[0]
    wv = conv.inputs[1]
    assert wv.shape == (3, 2, 3, 3) and wv.quant.axis == 0 and wv.quant.scale == pytest.approx(scales)
    np.testing.assert_allclose(wv.data, w.transpose(0, 3, 1, 2) * np.array(scales, np.float32)[:, None, None, None],
                               rtol=1e-6)
    np.testing.assert_allclose(conv.inputs[2].data, [0.01, -0.04, 0.09], rtol=1e-5)
    assert graph.inputs[0].quant.zero_point == 2 and graph.outputs[0].quant.zero_point == -1


# ------------------------------------------------------------------ unsupported ops
def test_unsupported_ops_are_all_reported(tmp_path):
    tensors = [T("x", (1, 4, 4, 2)), T("t1", (1, 4, 4, 2)), T("t2", (1, 4, 4, 2)),
               T("axis", (1,), "int32", np.array([1], np.int32)), T("t3", (1, 4, 4, 2)), T("t4", (1, 4, 4, 2)),
               T("w", (3, 8), data=rand(3, 8)), T("y", (4, 3))]
    ops = [Op("ELU", ["x"], ["t1"]), Op("ADD", ["t1", "x"], ["t2"], opts("AddOptions")),
           Op("REVERSE_V2", ["t2", "axis"], ["t3"]), Op("CUSTOM:MyOp", ["t3"], ["t4"]),
           Op("FULLY_CONNECTED", ["t4", "w", ""], ["y"], opts("FullyConnectedOptions", WeightsFormat=1))]
    path = tmp_path / "bad.tflite"
    path.write_bytes(build(tensors, ops, ["x"], ["y"]))
    with pytest.raises(UnsupportedOps) as info:
        import_model(path)
    problems = [(p.op_type, p.node) for p in info.value.problems]
    assert problems == [("ELU", "t1"), ("REVERSE_V2", "t3"), ("MyOp", "t4"), ("FULLY_CONNECTED", "y")]
    assert "custom" in info.value.problems[2].reason and "weights format" in info.value.problems[3].reason
    summary = summarize_model(path)
    assert [(p.op_type, p.node) for p in summary.unsupported] == problems
    assert summary.op_histogram == {"ADD": 1, "ELU": 1, "FULLY_CONNECTED": 1, "MyOp": 1, "REVERSE_V2": 1}


def _patch_opcode(data: bytearray, model, index: int, code: int) -> None:
    """Overwrite the builtin code of operator_codes[index] in place (both the old int8 and new int32 field)."""
    oc = model.OperatorCodes(index)
    deprecated, builtin = oc._tab.Offset(4), oc._tab.Offset(10)
    assert deprecated, "the deprecated_builtin_code field must be stored to patch it"
    data[oc._tab.Pos + deprecated] = code
    if builtin:
        data[oc._tab.Pos + builtin:oc._tab.Pos + builtin + 4] = code.to_bytes(4, "little")


@needs(MOBILENET)
def test_unsupported_ops_in_patched_mobilenet(tmp_path):
    import tflite
    data = bytearray(MOBILENET.read_bytes())
    model = tflite.Model.GetRootAsModel(bytes(data), 0)
    names = [BUILTIN_OPCODE2NAME[max(model.OperatorCodes(i).DeprecatedBuiltinCode(),
                                     model.OperatorCodes(i).BuiltinCode())]
             for i in range(model.OperatorCodesLength())]
    _patch_opcode(data, model, names.index("RESHAPE"), CODES["NON_MAX_SUPPRESSION_V5"])
    _patch_opcode(data, model, names.index("SOFTMAX"), CODES["TOPK_V2"])
    path = tmp_path / "patched.tflite"
    path.write_bytes(bytes(data))
    with pytest.raises(UnsupportedOps) as info:
        import_model(path)
    assert [(p.op_type, p.node) for p in info.value.problems] == [
        ("NON_MAX_SUPPRESSION_V5", "MobilenetV1/Logits/SpatialSqueeze"),
        ("TOPK_V2", "MobilenetV1/Predictions/Reshape_1")]
    assert len(summarize_model(path).unsupported) == 2
