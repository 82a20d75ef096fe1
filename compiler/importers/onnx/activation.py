"""Activations, Softmax, Dropout and LpNormalization.

Activations without an IR op of their own are written with the elementwise ops, following the
formula in the ONNX spec (Elu, Selu, Celu, Softsign, Mish, Swish, Gelu, ThresholdedRelu).
"""
from __future__ import annotations

import math

import numpy as np

from compiler.importers.onnx.context import NotConvertible, converter, normalize_axis

FLT_MAX = 3.4028234663852886e38


@converter("Relu")
def relu(ctx, x):
    return ctx.add("clamp", [x], min=0.0, max=math.inf)


@converter("LeakyRelu")
def leaky_relu(ctx, x, *, alpha=0.01):
    return ctx.add("leaky_relu", [x], alpha=float(alpha))


@converter("PRelu")
def prelu(ctx, x, slope):
    return ctx.add("prelu", [x, slope])


@converter("HardSigmoid")
def hard_sigmoid(ctx, x, *, alpha=0.2, beta=0.5):
    return ctx.add("hard_sigmoid", [x], alpha=float(alpha), beta=float(beta))


@converter("Shrink")
def shrink(ctx, x, *, bias=0.0, lambd=0.5):
    return ctx.add("shrink", [x], bias=float(bias), lambd=float(lambd))


@converter("HardSwish")
def hard_swish(ctx, x):
    return ctx.unary("hard_swish", x)


def _exp_minus_one_below_zero(ctx, x, alpha, inner_scale=1.0):
    """alpha * (exp(min(x, 0) * inner_scale) - 1): the negative branch of Elu, Selu and Celu."""
    neg = ctx.add("clamp", [x], min=-math.inf, max=0.0)
    if inner_scale != 1.0:
        neg = ctx.binary("mul", neg, ctx.scalar(inner_scale, like=x))
    e = ctx.binary("sub", ctx.unary("exp", neg), ctx.scalar(1.0, like=x))
    return ctx.binary("mul", e, ctx.scalar(alpha, like=x))


@converter("Elu")
def elu(ctx, x, *, alpha=1.0):
    """max(0, x) + alpha * (exp(min(0, x)) - 1)."""
    return ctx.binary("add", relu(ctx, x), _exp_minus_one_below_zero(ctx, x, alpha))


@converter("Selu")
def selu(ctx, x, *, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    """gamma * (max(0, x) + alpha * (exp(min(0, x)) - 1))."""
    return ctx.binary("mul", elu(ctx, x, alpha=alpha), ctx.scalar(gamma, like=x))


@converter("Celu")
def celu(ctx, x, *, alpha=1.0):
    """max(0, x) + alpha * (exp(min(0, x) / alpha) - 1)."""
    return ctx.binary("add", relu(ctx, x), _exp_minus_one_below_zero(ctx, x, alpha, 1.0 / alpha))


@converter("Softsign")
def softsign(ctx, x):
    """x / (1 + |x|)."""
    return ctx.binary("div", x, ctx.binary("add", ctx.unary("abs", x), ctx.scalar(1.0, like=x)))


@converter("Mish")
def mish(ctx, x):
    """x * tanh(softplus(x))."""
    return ctx.binary("mul", x, ctx.unary("tanh", ctx.unary("softplus", x)))


@converter("Swish")
def swish(ctx, x, *, alpha=1.0):
    """x * sigmoid(alpha * x)."""
    ax = x if alpha == 1.0 else ctx.binary("mul", x, ctx.scalar(alpha, like=x))
    return ctx.binary("mul", x, ctx.unary("sigmoid", ax))


@converter("Gelu")
def gelu(ctx, x, *, approximate="none"):
    """0.5 x (1 + erf(x / sqrt 2)), or with approximate=tanh 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    if approximate == "none":
        inner = ctx.unary("erf", ctx.binary("mul", x, ctx.scalar(1 / math.sqrt(2), like=x)))
    elif approximate == "tanh":
        cube = ctx.binary("mul", ctx.binary("mul", x, x), x)
        poly = ctx.binary("add", x, ctx.binary("mul", cube, ctx.scalar(0.044715, like=x)))
        inner = ctx.unary("tanh", ctx.binary("mul", poly, ctx.scalar(math.sqrt(2 / math.pi), like=x)))
    else:
        raise NotConvertible(f"approximate={approximate!r} (none and tanh are supported)")
    half_x = ctx.binary("mul", x, ctx.scalar(0.5, like=x))
    return ctx.binary("mul", half_x, ctx.binary("add", inner, ctx.scalar(1.0, like=x)))


@converter("ThresholdedRelu")
def thresholded_relu(ctx, x, *, alpha=1.0):
    """x where x > alpha, else 0: x * max(sign(x - alpha), 0) keeps x exactly."""
    step = ctx.add("clamp", [ctx.unary("sign", ctx.binary("sub", x, ctx.scalar(alpha, like=x)))],
                   min=0.0, max=math.inf)
    return ctx.binary("mul", x, step)


@converter("Clip", since=6)
def clip_v6(ctx, x, *, min=-FLT_MAX, max=FLT_MAX):
    return ctx.add("clamp", [x], min=float(min), max=float(max))


@converter("Clip", since=11)
def clip_v11(ctx, x, min=None, max=None):
    """Bounds are inputs from opset 11 on; a missing bound is +-inf, a computed one a binary max/min."""
    out, bounds = x, {"min": -math.inf, "max": math.inf}
    for key, bound in (("min", min), ("max", max)):
        if bound is None:
            continue
        if bound.is_constant and bound.data.size == 1:
            bounds[key] = float(bound.data.reshape(()))
        else:
            out = ctx.binary("max" if key == "min" else "min", out, bound)
    if bounds == {"min": -math.inf, "max": math.inf}:
        return out
    return ctx.add("clamp", [out], **bounds)


def _softmax(ctx, x, axis, log, coerce_2d):
    """Softmax along `axis`; before opset 13 the input is flattened to 2-D at `axis` first."""
    axis = normalize_axis(axis, x.type.rank)
    if not coerce_2d or axis == x.type.rank - 1:
        return ctx.add("softmax", [x], axis=axis, log=log)
    flat = ctx.reshape(x, (int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))))
    return ctx.reshape(ctx.add("softmax", [flat], axis=1, log=log), x.shape)


@converter("Softmax")
def softmax_v1(ctx, x, *, axis=1):
    return _softmax(ctx, x, axis, False, coerce_2d=True)


@converter("Softmax", since=13)
def softmax_v13(ctx, x, *, axis=-1):
    return _softmax(ctx, x, axis, False, coerce_2d=False)


@converter("LogSoftmax")
def log_softmax_v1(ctx, x, *, axis=1):
    return _softmax(ctx, x, axis, True, coerce_2d=True)


@converter("LogSoftmax", since=13)
def log_softmax_v13(ctx, x, *, axis=-1):
    return _softmax(ctx, x, axis, True, coerce_2d=False)


def _dropout_outputs(ctx, x):
    """Inference Dropout: the input, and (if asked for) an all-true mask."""
    if ctx.num_outputs < 2:
        return x
    mask_dtype = bool if ctx.opset >= 10 else x.dtype
    return x, ctx.const(np.ones(x.shape, dtype=mask_dtype))


@converter("Dropout", since=7)
def dropout_v7(ctx, x, *, ratio=0.5):
    return _dropout_outputs(ctx, x)


@converter("Dropout", since=12)
def dropout_v12(ctx, x, ratio=None, training_mode=None, *, seed=None):
    training = ctx.data(training_mode, "training_mode")
    rate = ctx.data(ratio, "ratio")
    if training is not None and bool(training) and (rate is None or float(rate) != 0.0):
        raise NotConvertible("Dropout in training mode is random; only inference is supported")
    return _dropout_outputs(ctx, x)


@converter("LpNormalization")
def lp_normalization(ctx, x, *, axis=-1, p=2):
    if p not in (1, 2):
        raise NotConvertible(f"p={p} (1 and 2 are supported)")
    return ctx.add("lp_normalize", [x], axis=normalize_axis(axis, x.type.rank), p=int(p), epsilon=0.0)
