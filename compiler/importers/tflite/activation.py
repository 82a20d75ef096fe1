"""Activations and normalizations: clamps, leaky/parametric ReLU, sigmoid-like unaries, softmax, L2 norm."""
from __future__ import annotations

from compiler.importers.tflite.context import TFLiteContext, converter, option
from compiler.importers.tflite.reader import OpInfo

CLAMPS = {"RELU": (0.0, float("inf")), "RELU6": (0.0, 6.0), "RELU_N1_TO_1": (-1.0, 1.0), "RELU_0_TO_1": (0.0, 1.0)}
UNARY = {"LOGISTIC": "sigmoid", "TANH": "tanh", "HARD_SWISH": "hard_swish"}
L2_NORM_EPSILON = 1e-6  # tflite reference_ops::L2Normalization divides by max(norm, 1e-6)


@converter(*CLAMPS)
def clamp(ctx: TFLiteContext, op: OpInfo):
    lo, hi = CLAMPS[op.op_type]
    ctx.set_output(op, 0, ctx.emit(op, "clamp", [ctx.input(op, 0)], min=lo, max=hi))


@converter(*UNARY)
def unary_activation(ctx: TFLiteContext, op: OpInfo):
    ctx.set_output(op, 0, ctx.emit(op, "unary", [ctx.input(op, 0)], op=UNARY[op.op_type]))


@converter("LEAKY_RELU")
def leaky_relu(ctx: TFLiteContext, op: OpInfo):
    alpha = float(option(op, "Alpha", 0.0))
    ctx.set_output(op, 0, ctx.emit(op, "leaky_relu", [ctx.input(op, 0)], alpha=alpha))


@converter("PRELU")
def prelu(ctx: TFLiteContext, op: OpInfo):
    ctx.set_output(op, 0, ctx.emit(op, "prelu", [ctx.input(op, 0), ctx.input(op, 1)]))


@converter("SOFTMAX", "LOG_SOFTMAX")
def softmax(ctx: TFLiteContext, op: OpInfo):
    x, name = ctx.input(op, 0), ctx.name(op)
    beta = float(option(op, "Beta", 1.0))  # softmax(beta * x); LOG_SOFTMAX has no beta
    if beta != 1.0:
        x = ctx.add("binary", [x, ctx.const(beta, name=f"{name}/beta", dtype="float32")], name=f"{name}/scaled",
                    op="mul")
    y = ctx.emit(op, "softmax", [x], axis=x.type.rank - 1, log=op.op_type == "LOG_SOFTMAX")
    ctx.set_output(op, 0, y)


@converter("L2_NORMALIZATION")
def l2_normalization(ctx: TFLiteContext, op: OpInfo):
    x = ctx.input(op, 0)
    y = ctx.emit(op, "lp_normalize", [x], axis=x.type.rank - 1, p=2, epsilon=L2_NORM_EPSILON)
    ctx.set_output(op, 0, y)
