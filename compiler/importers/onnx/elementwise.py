"""Elementwise ONNX ops: arithmetic, unary math, variadic Max/Min/Sum/Mean, Identity and Cast."""
from __future__ import annotations

import onnx

from compiler.importers.onnx.context import RUNTIME_DTYPES, NotConvertible, converter, graph_array, numpy_dtype

BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow"}
UNARY = {"Abs": "abs", "Ceil": "ceil", "Cos": "cos", "Exp": "exp", "Floor": "floor", "Log": "log",
         "Neg": "neg", "Sin": "sin", "Sqrt": "sqrt", "Reciprocal": "reciprocal", "Sign": "sign",
         "Erf": "erf", "Round": "round", "Sigmoid": "sigmoid", "Tanh": "tanh", "Softplus": "softplus"}


@converter(*BINARY)
def binary(ctx, a, b):
    """Add, Sub, Mul, Div, Pow with numpy broadcasting (opset 7 dropped the broadcast attribute)."""
    return ctx.binary(BINARY[ctx.op_type], a, b)


@converter(*UNARY)
def unary(ctx, x):
    return ctx.unary(UNARY[ctx.op_type], x)


@converter("Max", "Min", "Sum", "Mean")
def variadic(ctx, first, *rest):
    """A left fold of binary ops; Mean divides the sum by the number of inputs."""
    op = {"Max": "max", "Min": "min", "Sum": "add", "Mean": "add"}[ctx.op_type]
    out = first
    for x in rest:
        out = ctx.binary(op, out, x)
    if ctx.op_type == "Mean" and rest:
        out = ctx.binary("div", out, ctx.scalar(len(rest) + 1, like=out))
    return out


@converter("Identity")
def identity(ctx, x):
    return x


@converter("Cast", since=6)
def cast(ctx, x, *, to, saturate=1, round_mode="up"):
    """Constants cast exactly (then floats are kept as float32); tensors only to the device dtypes.

    `saturate` and `round_mode` only concern float8 targets, which are rejected.
    """
    dtype = numpy_dtype(to, "Cast to")
    if x.is_constant and dtype in ("float32", "float16", "float64", "int64", "int32", "int16", "int8",
                                   "uint8", "uint16", "uint32", "uint64", "bool"):
        return ctx.const(graph_array(x.data.astype(dtype)))
    if dtype not in RUNTIME_DTYPES or dtype in ("float16", "bfloat16"):
        raise NotConvertible(f"Cast to {onnx.TensorProto.DataType.Name(to)} is not supported "
                             "(tensors are float32, uint8 or int32 on the device)")
    target = RUNTIME_DTYPES[dtype]
    return x if target == x.dtype else ctx.add("cast", [x], dtype=target)
