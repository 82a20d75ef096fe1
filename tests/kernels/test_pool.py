"""reduce_window2d, reduce, softmax and lp_normalize against onnxruntime."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import compiler.kernels.all  # noqa: F401
from compiler.ir import TensorType
from compiler.kernels import KERNELS
from compiler.ops import REDUCE_OPS, infer_types

TOL = dict(rtol=1e-4, atol=1e-5)


def run(ir_op, *args, **attrs):
    out = KERNELS[ir_op](*args, **attrs)
    assert [TensorType(out.shape, out.dtype)] == infer_types(ir_op, [TensorType(a.shape, a.dtype) for a in args], attrs)
    return out


@st.composite
def pool_cases(draw):
    k = [draw(st.integers(1, 4)) for _ in range(2)]
    s = [draw(st.integers(1, 3)) for _ in range(2)]
    d = [draw(st.integers(1, 2)) for _ in range(2)]
    p = [(draw(st.integers(0, k[i] - 1)), draw(st.integers(0, k[i] - 1))) for i in range(2)]  # ONNX: pad < kernel
    hw = [draw(st.integers(max(1, d[i] * (k[i] - 1) + 1 - sum(p[i])), 11)) for i in range(2)]
    return dict(shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), *hw),
                attrs=dict(kernel=tuple(k), strides=tuple(s), padding=tuple(p), dilations=tuple(d),
                           ceil_mode=draw(st.booleans())))


def onnx_pool_attrs(a):
    (pt, pb), (pl, pr) = a["padding"]
    return dict(kernel_shape=a["kernel"], strides=a["strides"], pads=[pt, pl, pb, pr], dilations=a["dilations"],
                ceil_mode=int(a["ceil_mode"]))


@settings(max_examples=50, deadline=None)
@given(case=pool_cases(), seed=st.integers(0, 2**16))
def test_max_pool(case, seed, ort):
    x = np.random.default_rng(seed).standard_normal(case["shape"]).astype(np.float32)
    got = run("reduce_window2d", x, op="max", **case["attrs"])
    assert_array_equal(got, ort("MaxPool", [x], opset=12, **onnx_pool_attrs(case["attrs"]))[0])


@settings(max_examples=50, deadline=None)
@given(case=pool_cases(), include_pad=st.booleans(), seed=st.integers(0, 2**16))
def test_average_pool(case, include_pad, seed, ort):
    x = np.random.default_rng(seed).standard_normal(case["shape"]).astype(np.float32)
    got = run("reduce_window2d", x, op="mean", count_include_pad=include_pad, **case["attrs"])
    want = ort("AveragePool", [x], opset=19, count_include_pad=int(include_pad), **onnx_pool_attrs(case["attrs"]))[0]
    assert_allclose(got, want, **TOL)


def test_average_pool_ceil_mode_divisors(ort):
    # 6 rows, kernel 3, stride 2, pad 1 each side, ceil_mode: 4 windows over padded rows [0..2], [2..4],
    # [4..6], [6..8], but the padded extent ends at row 7, so with count_include_pad the last window
    # divides by 2 (rows 6, 7), not 3; without it, by the one real row (6).
    x = np.ones((1, 1, 6, 6), np.float32)
    attrs = dict(kernel=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), ceil_mode=True)
    assert_allclose(run("reduce_window2d", x, op="mean", **attrs), np.ones((1, 1, 4, 4)))
    got = run("reduce_window2d", x, op="mean", count_include_pad=True, **attrs)
    assert_allclose(got[0, 0, :, 1], [2 / 3, 1, 1, 1 / 2])
    want = ort("AveragePool", [x], opset=19, count_include_pad=1, kernel_shape=(3, 3), strides=(2, 2),
               pads=[1, 1, 1, 1], ceil_mode=1)[0]
    assert_allclose(got, want, **TOL)


def test_max_pool_uint8():
    x = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4)
    got = run("reduce_window2d", x, op="max", kernel=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    assert_array_equal(got[0, 0], [[5, 7], [13, 15]])


ONNX_REDUCE = {"mean": "ReduceMean", "max": "ReduceMax", "min": "ReduceMin", "sum": "ReduceSum",
               "prod": "ReduceProd", "l1": "ReduceL1", "l2": "ReduceL2", "sum_square": "ReduceSumSquare",
               "log_sum_exp": "ReduceLogSumExp"}


@pytest.mark.parametrize("op", REDUCE_OPS)
@pytest.mark.parametrize("axes,keepdims", [((1,), True), ((2, 3), True), ((0, 2), False), ((0, 1, 2, 3), False)])
def test_reduce(op, axes, keepdims, ort):
    x = np.random.default_rng(5).uniform(-2, 2, (2, 3, 4, 5)).astype(np.float32)
    if op == "prod":
        x = np.random.default_rng(5).uniform(0.8, 1.25, x.shape).astype(np.float32) * np.sign(x)
    got = run("reduce", x, op=op, axes=axes, keepdims=keepdims)
    want = ort(ONNX_REDUCE[op], [x, np.array(axes, np.int64)], keepdims=int(keepdims))[0]
    assert_allclose(got, want, **TOL)


def test_log_sum_exp_is_stable():
    x = np.array([[1000.0, 1000.0], [-np.inf, -np.inf], [-1000.0, 0.0]], np.float32)
    got = run("reduce", x, op="log_sum_exp", axes=(1,), keepdims=False)
    assert_allclose(got, [1000 + np.log(2), -np.inf, 0.0], rtol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 3])
@pytest.mark.parametrize("log", [False, True])
def test_softmax(axis, log, ort):
    x = np.random.default_rng(6).uniform(-5, 5, (2, 3, 4, 5)).astype(np.float32)
    x[0, 0, 0, 0] = 80.0  # exp would overflow float32 without the max subtracted
    got = run("softmax", x, axis=axis, log=log)
    assert_allclose(got, ort("LogSoftmax" if log else "Softmax", [x], opset=13, axis=axis)[0], **TOL)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("axis", [1, 3])
def test_lp_normalize(p, axis, ort):
    x = np.random.default_rng(7).uniform(-2, 2, (2, 3, 4, 5)).astype(np.float32)
    got = run("lp_normalize", x, axis=axis, p=p)
    assert_allclose(got, ort("LpNormalization", [x], axis=axis, p=p)[0], **TOL)


def test_lp_normalize_zero_and_epsilon():
    x = np.array([[0.0, 0.0], [3.0, 4.0], [1e-4, 0.0]], np.float32)
    assert_allclose(run("lp_normalize", x, axis=1), [[0, 0], [0.6, 0.8], [1, 0]])
    assert_allclose(run("lp_normalize", x, axis=1, epsilon=1e-2), [[0, 0], [0.6, 0.8], [1e-2, 0]])


@pytest.mark.parametrize("op,value", [("max", -np.inf), ("min", np.inf), ("sum", 0.0), ("prod", 1.0),
                                      ("log_sum_exp", -np.inf), ("l2", 0.0)])
def test_reduce_empty_set(op, value, ort):
    x = np.zeros((2, 0, 4), np.float32)
    got = run("reduce", x, op=op, axes=(1,), keepdims=True)
    assert got.shape == (2, 1, 4)
    assert_array_equal(got, np.full((2, 1, 4), value, np.float32))
    if op != "l2":
        assert_array_equal(got, ort(ONNX_REDUCE[op], [x, np.array([1], np.int64)], keepdims=1)[0])
