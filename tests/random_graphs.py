"""Seeded random ONNX models shaped like the models people run on the K210, for the oracle property test
(tests/targets/test_oracle_property.py).

`random_model(seed)` grows a chain from one input 1xCxHxW (or a flat 1xN for an MLP) with onnx.helper: a
first conv, then a few of conv 1x1/3x3 (stride 1/2, depthwise, with or without bias), activations (ReLU,
ReLU6 as Clip, LeakyReLU, sigmoid, tanh), pools (max, average, global average), add/mul with a constant,
two branches joined by add, mul or concat, nearest/bilinear resize, pad, transpose, reduce mean, softmax,
and maybe a flatten/reshape + Gemm/MatMul head; float models also get C library functions (exp, log, sin,
cos, sqrt ...). A share of the models (V3_STYLE) keep to what kmodel v3 can hold: KPU conv blocks with
their activation and 2x2 pool, joins, nearest upsampling, then a global average pool or a dense head.
Every op's output shape is worked out here, so the model carries its output's shape.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

V3_STYLE = 0.7         # share of models shaped like v3 models (the others mostly fail to lower to v3)
OPSET = 14


@dataclass
class Builder:
    """An ONNX graph grown one op at a time; `shape` is the current tensor's (without the batch axis)."""
    rng: np.random.Generator
    shape: tuple[int, ...]
    name: str = "x"
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)

    def __post_init__(self):
        self.input_shape = self.shape

    def fresh(self, prefix: str) -> str:
        return f"{prefix}{len(self.nodes) + len(self.inits)}"

    def const(self, array, dtype=np.float32) -> str:
        name = self.fresh("c")
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype), name))
        return name

    def add(self, op: str, inputs: list[str], shape: tuple[int, ...], **attrs) -> str:
        out = self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        self.name, self.shape = out, shape
        return out

    def weights(self, *shape) -> np.ndarray:
        fan_in = int(np.prod(shape[1:]))
        return self.rng.standard_normal(shape).astype(np.float32) / np.sqrt(fan_in)


# ---------------------------------------------------------------- the ops (each returns False if it does not apply)
def conv(b: Builder) -> bool:
    c, h, w = b.shape
    k = int(b.rng.choice([1, 3]))
    stride = int(b.rng.choice([1, 1, 2])) if min(h, w) >= 4 else 1
    depthwise = b.rng.random() < 0.3 and c > 1
    out_c = c if depthwise else int(b.rng.integers(1, 17))
    pad = int(k == 3 and (b.rng.random() < 0.8 or min(h, w) < 3))
    inputs = [b.name, b.const(b.weights(out_c, 1 if depthwise else c, k, k))]
    if b.rng.random() < 0.7:
        inputs.append(b.const(b.rng.standard_normal(out_c) * 0.1))
    oh, ow = ((s + 2 * pad - k) // stride + 1 for s in (h, w))
    b.add("Conv", inputs, (out_c, oh, ow), kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4,
          group=c if depthwise else 1)
    return True


def activation(b: Builder) -> bool:
    kind = b.rng.choice(["Relu", "Relu6", "LeakyRelu", "Sigmoid", "Tanh"])
    if kind == "Relu6":
        b.add("Clip", [b.name, b.const(0.0), b.const(6.0)], b.shape)
    elif kind == "LeakyRelu":
        b.add("LeakyRelu", [b.name], b.shape, alpha=float(b.rng.choice([0.1, 0.2])))
    else:
        b.add(str(kind), [b.name], b.shape)
    return True


def pool(b: Builder) -> bool:
    c, h, w = b.shape
    kind = b.rng.choice(["MaxPool", "AveragePool", "GlobalAveragePool"])
    if kind == "GlobalAveragePool":
        b.add("GlobalAveragePool", [b.name], (c, 1, 1))
        return True
    if min(h, w) < 2:
        return False
    k, stride, pad = [(2, 2, 0), (3, 1, 1), (3, 2, 1)][int(b.rng.integers(3))]
    oh, ow = ((s + 2 * pad - k) // stride + 1 for s in (h, w))
    b.add(str(kind), [b.name], (c, oh, ow), kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4)
    return True


def with_constant(b: Builder) -> bool:
    c = b.shape[0]
    op = str(b.rng.choice(["Add", "Mul"]))
    value = b.rng.standard_normal((c, 1, 1) if b.rng.random() < 0.6 else ()).astype(np.float32)
    b.add(op, [b.name, b.const(value if op == "Add" else value * 0.5 + 1)], b.shape)
    return True


def branch(b: Builder) -> bool:
    """y = f(x) beside x, then x + y, x * y or concat(x, y) over channels."""
    x, (c, h, w) = b.name, b.shape
    if b.rng.random() < 0.5:
        activation(b)
    else:
        pad = int(min(h, w) >= 3)
        k = 3 if pad else 1
        b.add("Conv", [x, b.const(b.weights(c, c, k, k)), b.const(b.rng.standard_normal(c) * 0.1)], (c, h, w),
              kernel_shape=[k, k], pads=[pad] * 4)
    op = str(b.rng.choice(["Add", "Mul", "Concat"]))
    if op == "Concat":
        b.add("Concat", [x, b.name], (2 * c, h, w), axis=1)
    else:
        b.add(op, [x, b.name], (c, h, w))
    return True


def resize(b: Builder) -> bool:
    c, h, w = b.shape
    if max(h, w) > 16:
        return False
    mode = str(b.rng.choice(["nearest", "linear"]))
    coord = "asymmetric" if mode == "nearest" else str(b.rng.choice(["asymmetric", "align_corners"]))
    scales = b.const(np.array([1, 1, 2, 2], np.float32))
    b.add("Resize", [b.name, "", scales], (c, 2 * h, 2 * w), mode=mode, coordinate_transformation_mode=coord,
          nearest_mode="floor")
    return True


def pad(b: Builder) -> bool:
    c, h, w = b.shape
    top, bottom, left, right = (int(v) for v in b.rng.integers(0, 3, 4))
    pads = b.const([0, 0, top, left, 0, 0, bottom, right], np.int64)
    b.add("Pad", [b.name, pads], (c, h + top + bottom, w + left + right), mode="constant")
    return True


def transpose(b: Builder) -> bool:
    c, h, w = b.shape
    perm = [(0, 1, 3, 2), (0, 2, 3, 1), (0, 3, 1, 2)][int(b.rng.integers(3))]
    full = (1, c, h, w)
    b.add("Transpose", [b.name], tuple(full[p] for p in perm[1:]), perm=list(perm))
    return True


def reduce_mean(b: Builder) -> bool:
    c, h, w = b.shape
    if b.rng.random() < 0.5:
        b.add("ReduceMean", [b.name], (c, 1, 1), axes=[2, 3], keepdims=1)
    else:
        b.add("ReduceMean", [b.name], (1, h, w), axes=[1], keepdims=1)
    return True


def softmax(b: Builder) -> bool:
    b.add("Softmax", [b.name], b.shape, axis=1)
    return True


def unary(b: Builder) -> bool:
    """A C library function (float models: the runtime calls logf, sinf ... on the CPU)."""
    op = str(b.rng.choice(["Exp", "Log", "Sin", "Cos", "Sqrt", "Abs", "Neg", "Floor", "Ceil"]))
    if op in ("Log", "Sqrt"):
        b.add("Abs", [b.name], b.shape)
    b.add(op, [b.name], b.shape)
    return True


def other_activation(b: Builder) -> bool:
    """The rarer activations: hard sigmoid, PReLU, ELU, softplus, hard swish."""
    op = str(b.rng.choice(["HardSigmoid", "PRelu", "Elu", "Softplus", "HardSwish"]))
    if op == "PRelu":
        b.add("PRelu", [b.name, b.const(b.rng.uniform(0, 0.3, (b.shape[0], 1, 1)))], b.shape)
    else:
        b.add(op, [b.name], b.shape)
    return True


def other_reduce(b: Builder) -> bool:
    """Reductions over channels or H and W (max, min, sum) and the L2 norm over channels."""
    c, h, w = b.shape
    if b.rng.random() < 0.25:
        b.add("LpNormalization", [b.name], b.shape, axis=1, p=2)
        return True
    op = str(b.rng.choice(["ReduceMax", "ReduceMin", "ReduceSum"]))
    axes = [1] if b.rng.random() < 0.5 else [2, 3]
    shape = (1, h, w) if axes == [1] else (c, 1, 1)
    if op == "ReduceSum":   # from opset 13 its axes are an input
        b.add(op, [b.name, b.const(axes, np.int64)], shape, keepdims=1)
    else:
        b.add(op, [b.name], shape, axes=axes, keepdims=1)
    return True


def sub_div(b: Builder) -> bool:
    """x - c, x / c (c a constant away from 0) or c - x."""
    c = b.rng.uniform(0.5, 2, (b.shape[0], 1, 1)) * b.rng.choice([-1, 1])
    kind = int(b.rng.integers(3))
    inputs = [b.const(c), b.name] if kind == 2 else [b.name, b.const(c)]
    b.add("Div" if kind == 1 else "Sub", inputs, b.shape)
    return True


def transposed_conv(b: Builder) -> bool:
    """A 2x2 stride-2 ConvTranspose (the usual learned upsampling)."""
    c, h, w = b.shape
    if max(h, w) > 16:
        return False
    out_c = int(b.rng.integers(1, 9))
    b.add("ConvTranspose", [b.name, b.const(b.weights(c, out_c, 2, 2))], (out_c, 2 * h, 2 * w), kernel_shape=[2, 2],
          strides=[2, 2])
    return True


SPATIAL = [conv, conv, conv, activation, activation, pool, with_constant, branch, resize, pad, transpose,
           other_activation, other_reduce, sub_div, transposed_conv,
           reduce_mean, softmax]


def head(b: Builder) -> None:
    """Flatten (or reshape) + Gemm (or MatMul), then maybe an activation or a softmax."""
    n = int(np.prod(b.shape))
    units = int(b.rng.integers(1, 11))
    if b.rng.random() < 0.5:
        b.add("Flatten", [b.name], (n,), axis=1)
        b.add("Gemm", [b.name, b.const(b.weights(units, n)), b.const(b.rng.standard_normal(units) * 0.1)],
              (units,), transB=1)
    else:
        b.add("Reshape", [b.name, b.const([1, n], np.int64)], (n,))
        b.add("MatMul", [b.name, b.const(b.weights(units, n).T)], (units,))
    tail = str(b.rng.choice(["none", "Relu", "Softmax", "Sigmoid", "LpNormalization"]))
    if tail in ("Softmax", "LpNormalization"):
        b.add(tail, [b.name], b.shape, axis=1)
    elif tail != "none":
        b.add(tail, [b.name], b.shape)


def kpu_block(b: Builder) -> bool:
    """What a v3 file can hold: a KPU conv (even sizes for stride 2), its activation and 2x2 pool."""
    c, h, w = b.shape
    if min(h, w) < 4:
        return False
    k = int(b.rng.choice([1, 3]))
    stride = 2 if h % 2 == 0 and w % 2 == 0 and b.rng.random() < 0.25 else 1
    depthwise = b.rng.random() < 0.25 and c > 1
    out_c = c if depthwise else int(b.rng.integers(1, 17))
    pad = k // 2
    inputs = [b.name, b.const(b.weights(out_c, 1 if depthwise else c, k, k))]
    if b.rng.random() < 0.7:
        inputs.append(b.const(b.rng.standard_normal(out_c) * 0.1))
    b.add("Conv", inputs, (out_c, h // stride, w // stride), kernel_shape=[k, k], strides=[stride, stride],
          pads=[pad] * 4, group=c if depthwise else 1)
    if b.rng.random() < 0.7:
        activation(b)
    c, h, w = b.shape
    if h % 2 == 0 and w % 2 == 0 and min(h, w) >= 8 and b.rng.random() < 0.3:
        b.add(str(b.rng.choice(["MaxPool", "AveragePool"])), [b.name], (c, h // 2, w // 2), kernel_shape=[2, 2],
              strides=[2, 2])
    return True


def kpu_join(b: Builder) -> bool:
    """Two KPU branches of one input joined: add (v3 QuantizedAdd) or concat over channels."""
    x, (c, h, w) = b.name, b.shape
    if min(h, w) < 4:
        return False
    b.add("Conv", [x, b.const(b.weights(c, c, 3, 3)), b.const(b.rng.standard_normal(c) * 0.1)], (c, h, w),
          kernel_shape=[3, 3], pads=[1] * 4)
    if b.rng.random() < 0.5:
        b.add("Relu", [b.name], b.shape)
    if b.rng.random() < 0.5:
        b.add("Add", [x, b.name], (c, h, w))
    else:
        b.add("Concat", [x, b.name], (2 * c, h, w), axis=1)
    return True


def nearest_upsample(b: Builder) -> bool:
    c, h, w = b.shape
    if max(h, w) > 16:
        return False
    b.add("Resize", [b.name, "", b.const([1, 1, 2, 2])], (c, 2 * h, 2 * w), mode="nearest",
          coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    return True


def v3_style(b: Builder) -> None:
    """A uint8 model shaped like the v3 models of the K210 SDK: KPU blocks, then GAP or a dense head."""
    kpu_block(b)
    ops = [kpu_block, kpu_block, kpu_block, kpu_join, nearest_upsample, pool]
    for _ in range(int(b.rng.integers(0, 4))):
        ops[int(b.rng.integers(len(ops)))](b)
    end = b.rng.random()
    if end < 0.3:
        b.add("GlobalAveragePool", [b.name], (b.shape[0], 1, 1))
    elif end < 0.6:
        head(b)


def random_model(seed: int) -> tuple[onnx.ModelProto, str]:
    """A seeded random ONNX model and its inference type ("uint8" or "float")."""
    rng = np.random.default_rng(seed)
    if rng.random() < V3_STYLE:
        b = Builder(rng, (int(rng.integers(1, 9)), 2 * int(rng.integers(2, 9)), 2 * int(rng.integers(2, 9))))
        v3_style(b)
        return _model(b, seed), "uint8"
    inference = "float" if rng.random() < 0.6 else "uint8"
    if rng.random() < 0.15:   # an MLP on a flat input (iris-like: v3 starts it at a FullyConnected)
        b = Builder(rng, (int(rng.integers(2, 17)),))
        for _ in range(int(rng.integers(1, 3))):
            units = int(rng.integers(2, 17))
            b.add("Gemm", [b.name, b.const(b.weights(units, b.shape[0])), b.const(rng.standard_normal(units) * 0.1)],
                  (units,), transB=1)
            if rng.random() < 0.6:
                activation(b)
        if rng.random() < 0.5:
            softmax(b)
    else:
        b = Builder(rng, (int(rng.integers(1, 9)), int(rng.integers(4, 17)), int(rng.integers(4, 17))))
        conv(b)   # real K210 models start with a conv (and v3 has to: layer 0 is a K210Conv)
        ops = SPATIAL + ([unary] * 4 if inference == "float" else [])
        for _ in range(int(rng.integers(0, 5))):
            while not ops[int(rng.integers(len(ops)))](b):
                pass
        if rng.random() < 0.3:
            head(b)
    return _model(b, seed), inference


def _model(b: Builder, seed: int) -> onnx.ModelProto:
    graph = helper.make_graph(b.nodes, f"random{seed}",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *b.input_shape])],
                              [helper.make_tensor_value_info(b.name, TensorProto.FLOAT, [1, *b.shape])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model
