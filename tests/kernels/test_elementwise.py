"""Elementwise kernels against onnxruntime (and math.erf / hand-worked cases)."""
import math

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import compiler.kernels.all  # noqa: F401
from compiler.ir import TensorType
from compiler.kernels import KERNELS
from compiler.ops import BINARY_OPS, UNARY_OPS, infer_types

TOL = dict(rtol=1e-4, atol=1e-5)
rng = np.random.default_rng(0)


def rand(*shape, lo=-3.0, hi=3.0):
    return rng.uniform(lo, hi, shape).astype(np.float32)


def run(ir_op, *args, **attrs):
    out = KERNELS[ir_op](*args, **attrs)
    # The kernel must produce exactly the dtype and shape the shape rule promises.
    want = infer_types(ir_op, [TensorType(np.shape(a), np.asarray(a).dtype) for a in args], attrs)
    got = out if isinstance(out, tuple) else (out,)
    assert [TensorType(o.shape, o.dtype) for o in got] == want
    return out


ONNX_UNARY = {
    "abs": "Abs", "ceil": "Ceil", "cos": "Cos", "exp": "Exp", "floor": "Floor", "log": "Log", "neg": "Neg",
    "round": "Round", "sin": "Sin", "sqrt": "Sqrt", "sigmoid": "Sigmoid", "tanh": "Tanh",
    "hard_swish": "HardSwish", "reciprocal": "Reciprocal", "erf": "Erf", "softplus": "Softplus", "sign": "Sign",
}


@pytest.mark.parametrize("op", UNARY_OPS)
def test_unary(op, ort):
    x = rand(2, 3, 5, 7)
    x.flat[:8] = [0.5, 1.5, 2.5, -0.5, -2.5, 0.0, -3.0, 3.0]  # rounding ties, hard_swish knees
    if op in ("log", "sqrt", "rsqrt"):
        x = np.abs(x) + np.float32(0.01)
    got = run("unary", x, op=op)
    if op == "rsqrt":
        want = 1 / np.sqrt(x.astype(np.float64))
    elif op == "square":
        want = x.astype(np.float64) ** 2
    else:
        want = ort(ONNX_UNARY[op], [x])[0]
    assert_allclose(got, want, **TOL)


def test_unary_extremes_are_finite():
    x = np.array([-1000, -100, -20, 0, 20, 100, 1000], np.float32)
    with np.errstate(over="ignore"):
        want = (1 / (1 + np.exp(-x.astype(np.float64)))).astype(np.float32)  # float32 denormals included
    assert_allclose(run("unary", x, op="sigmoid"), want, rtol=1e-6, atol=0)
    assert_allclose(run("unary", x, op="softplus"), [0, 3.7835059e-44, 2.0611537e-9, math.log(2), 20, 100, 1000],
                    rtol=1e-6)


def test_erf_is_accurate_in_float64():
    x = np.concatenate([np.linspace(-7, 7, 20001), [0.0, 1e-300, -1e-10, 2.5, -2.5, np.inf, -np.inf]])
    want = np.array([math.erf(v) for v in x])
    assert_allclose(run("unary", x, op="erf"), want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("op", BINARY_OPS)
def test_binary_broadcast(op, ort):
    a, b = rand(2, 3, 4, 5), rand(3, 1, 5)
    if op == "pow":
        a = np.abs(a) + np.float32(0.1)
    if op == "div":
        b = np.where(np.abs(b) < 0.1, np.float32(0.5), b)
    got = run("binary", a, b, op=op)
    if op == "squared_difference":
        want = (a.astype(np.float64) - b) ** 2
    else:
        want = ort(op.capitalize(), [a, b])[0]
    assert_allclose(got, want, **TOL)


def test_integer_div_truncates_toward_zero(ort):
    a = np.array([7, -7, 7, -7, 6, -6, 0, 1], np.int32)
    b = np.array([2, 2, -2, -2, 3, 4, 5, -3], np.int32)
    got = run("binary", a, b, op="div")
    assert_array_equal(got, [3, -3, -3, 3, 2, -1, 0, 0])
    assert_array_equal(got, ort("Div", [a, b])[0])


@pytest.mark.parametrize("lo,hi", [(0.0, math.inf), (0.0, 6.0), (-1.5, 0.25), (-math.inf, 1.0)])
def test_clamp(lo, hi, ort):
    x = rand(1, 4, 6, 6, lo=-8, hi=8)
    want = ort("Clip", [x, np.float32(lo), np.float32(hi)])[0]
    assert_array_equal(run("clamp", x, min=lo, max=hi), want)


def test_clamp_defaults_keep_integer_dtype():
    x = np.array([0, 7, 255], np.uint8)
    assert_array_equal(run("clamp", x), x)
    assert run("clamp", x, max=6).dtype == np.uint8


def test_leaky_relu_prelu_hard_sigmoid(ort):
    x = rand(2, 3, 4, 5)
    assert_allclose(run("leaky_relu", x, alpha=0.1), ort("LeakyRelu", [x], alpha=0.1)[0], **TOL)
    slope = rand(3, 1, 1)
    assert_allclose(run("prelu", x, slope), ort("PRelu", [x, slope])[0], **TOL)
    assert_allclose(run("hard_sigmoid", x, alpha=0.2, beta=0.5),
                    ort("HardSigmoid", [x], alpha=0.2, beta=0.5)[0], **TOL)


def test_batch_norm(ort):
    x = rand(2, 4, 5, 6)
    scale, bias, mean = rand(4), rand(4), rand(4)
    var = rand(4, lo=0.1, hi=2)
    got = run("batch_norm", x, scale, bias, mean, var, epsilon=1e-3)
    assert_allclose(got, ort("BatchNormalization", [x, scale, bias, mean, var], epsilon=1e-3)[0], **TOL)


@pytest.mark.parametrize("dtype,zero_point", [("uint8", 128), ("uint8", 3), ("int8", 0), ("int8", -5)])
def test_quantize(dtype, zero_point, ort):
    scale = 0.05
    x = rand(2, 3, 7, 5, lo=-10, hi=10)
    x.flat[:6] = np.array([0.025, 0.075, -0.025, -0.075, 0.125, 2.5 * scale], np.float32)  # ties
    got = run("quantize", x, scale=scale, zero_point=zero_point, dtype=dtype)
    want = ort("QuantizeLinear", [x, np.float32(scale), np.array(zero_point, dtype)], opset=13)[0]
    assert_array_equal(got, want)


def test_quantize_per_axis_and_int32_saturation(ort):
    x = rand(4, 3, 2, 2, lo=-4, hi=4)
    scale, zp = (0.02, 0.03, 0.05, 0.1), (0, 10, -10, 3)
    got = run("quantize", x, scale=scale, zero_point=zp, dtype="int8", axis=0)
    want = ort("QuantizeLinear", [x, np.array(scale, np.float32), np.array(zp, np.int8)], opset=13, axis=0)[0]
    assert_array_equal(got, want)
    big = np.array([3e9, -3e9, 2.5, -2.5, 3.5], np.float32)
    assert_array_equal(run("quantize", big, scale=1.0, zero_point=0, dtype="int32"),
                       [2**31 - 1, -2**31, 2, -2, 4])


def test_dequantize(ort):
    q = rng.integers(0, 256, (2, 3, 4, 4)).astype(np.uint8)
    got = run("dequantize", q, scale=0.037, zero_point=117)
    want = ort("DequantizeLinear", [q, np.float32(0.037), np.uint8(117)], opset=13)[0]
    assert_allclose(got, want, rtol=1e-6, atol=0)
    w = rng.integers(-128, 128, (3, 2, 3, 3)).astype(np.int8)
    scale, zp = (0.1, 0.02, 0.5), (0, 0, 0)
    got = run("dequantize", w, scale=scale, zero_point=zp, axis=0)
    want = ort("DequantizeLinear", [w, np.array(scale, np.float32), np.array(zp, np.int8)], opset=13, axis=0)[0]
    assert_allclose(got, want, rtol=1e-6, atol=0)
    acc = np.array([-2**31, 0, 123456789], np.int32)
    assert_allclose(run("dequantize", acc, scale=0.5, zero_point=0), [-2.0**30, 0, 61728394.5], rtol=1e-7)


def test_cast(ort):
    x = np.array([-2.7, -0.5, 0.0, 0.5, 2.7, 100.9], np.float32)
    assert_array_equal(run("cast", x, dtype="int32"), ort("Cast", [x], to=6)[0])
    assert run("cast", x, dtype="int32").dtype == np.int32
    assert_array_equal(run("cast", np.array([1, 200], np.uint8), dtype="float32"), [1.0, 200.0])
