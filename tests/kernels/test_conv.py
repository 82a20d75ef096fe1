"""conv2d, conv2d_transpose and matmul against onnxruntime, over hypothesis-drawn geometries."""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from numpy.testing import assert_allclose

import compiler.kernels.all  # noqa: F401
from compiler.ir import TensorType
from compiler.kernels import KERNELS
from compiler.ops import infer_types

TOL = dict(rtol=1e-4, atol=1e-5)


def run(ir_op, *args, **attrs):
    out = KERNELS[ir_op](*args, **attrs)
    assert [TensorType(out.shape, out.dtype)] == infer_types(ir_op, [TensorType(a.shape, a.dtype) for a in args], attrs)
    return out


def onnx_pads(padding):
    (pt, pb), (pl, pr) = padding
    return [pt, pl, pb, pr]


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = 1 if draw(st.booleans()) else draw(st.integers(1, 3))
    og = draw(st.integers(1, 3))
    n = draw(st.integers(1, 2))
    k = [draw(st.integers(1, 4)) for _ in range(2)]
    s = [draw(st.integers(1, 3)) for _ in range(2)]
    d = [draw(st.integers(1, 2)) for _ in range(2)]
    p = [(draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2)]
    hw = [draw(st.integers(max(1, d[i] * (k[i] - 1) + 1 - sum(p[i])), 10)) for i in range(2)]
    return dict(n=n, c=cg * groups, o=og * groups, groups=groups, k=k, hw=hw,
                attrs=dict(strides=tuple(s), padding=tuple(p), dilations=tuple(d), groups=groups))


@settings(max_examples=50, deadline=None)
@given(case=conv_cases(), seed=st.integers(0, 2**16))
def test_conv2d(case, seed, ort):
    rng = np.random.default_rng(seed)
    a = case["attrs"]
    x = rng.standard_normal((case["n"], case["c"], *case["hw"])).astype(np.float32)
    w = rng.standard_normal((case["o"], case["c"] // case["groups"], *case["k"])).astype(np.float32)
    b = rng.standard_normal(case["o"]).astype(np.float32)
    got = run("conv2d", x, w, b, **a)
    want = ort("Conv", [x, w, b], strides=a["strides"], pads=onnx_pads(a["padding"]), dilations=a["dilations"],
               group=a["groups"])[0]
    assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_conv2d(multiplier, ort):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 8, 15, 13)).astype(np.float32)
    w = rng.standard_normal((8 * multiplier, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8 * multiplier).astype(np.float32)
    attrs = dict(strides=(2, 1), padding=((1, 1), (0, 2)), groups=8)
    got = run("conv2d", x, w, b, **attrs)
    want = ort("Conv", [x, w, b], strides=(2, 1), pads=[1, 0, 1, 2], group=8)[0]
    assert_allclose(got, want, **TOL)


def test_conv2d_wide_accumulation_and_negative_padding(ort):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 64, 9, 9)).astype(np.float32)
    w = rng.standard_normal((16, 64, 3, 3)).astype(np.float32)
    b = np.zeros(16, np.float32)
    assert_allclose(run("conv2d", x, w, b, padding=((1, 1), (1, 1))), ort("Conv", [x, w, b], pads=[1, 1, 1, 1])[0],
                    **TOL)
    # A negative padding crops the input first.
    got = run("conv2d", x, w, b, padding=((-1, 0), (0, -2)))
    assert_allclose(got, ort("Conv", [x[:, :, 1:, :-2], w, b])[0], **TOL)


@st.composite
def conv_transpose_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg, og = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k = [draw(st.integers(1, 4)) for _ in range(2)]
    s = [draw(st.integers(1, 3)) for _ in range(2)]
    d = [draw(st.integers(1, 2)) for _ in range(2)]
    hw = [draw(st.integers(1, 6)) for _ in range(2)]
    p = [(draw(st.integers(0, d[i] * (k[i] - 1))), draw(st.integers(0, d[i] * (k[i] - 1)))) for i in range(2)]
    op = [draw(st.integers(0, s[i] - 1)) for i in range(2)]
    for i in range(2):
        assume((hw[i] - 1) * s[i] + d[i] * (k[i] - 1) + 1 + op[i] - sum(p[i]) >= 1)
    return dict(n=draw(st.integers(1, 2)), c=cg * groups, og=og, groups=groups, k=k, hw=hw,
                attrs=dict(strides=tuple(s), padding=tuple(p), dilations=tuple(d), groups=groups,
                           output_padding=tuple(op)))


@settings(max_examples=50, deadline=None)
@given(case=conv_transpose_cases(), seed=st.integers(0, 2**16))
def test_conv2d_transpose(case, seed, ort):
    rng = np.random.default_rng(seed)
    a = case["attrs"]
    x = rng.standard_normal((case["n"], case["c"], *case["hw"])).astype(np.float32)
    w = rng.standard_normal((case["c"], case["og"], *case["k"])).astype(np.float32)
    b = rng.standard_normal(case["og"] * case["groups"]).astype(np.float32)
    got = run("conv2d_transpose", x, w, b, **a)
    want = ort("ConvTranspose", [x, w, b], strides=a["strides"], pads=onnx_pads(a["padding"]),
               dilations=a["dilations"], group=a["groups"], output_padding=a["output_padding"])[0]
    assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("sa,sb", [((4, 6), (6, 3)), ((2, 1, 4, 6), (3, 6, 5)), ((6,), (6, 2)), ((3, 4, 6), (6,)),
                                   ((1, 64), (64, 10))])
def test_matmul(sa, sb, ort):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(sa).astype(np.float32), rng.standard_normal(sb).astype(np.float32)
    got = run("matmul", a, b)
    assert_allclose(got, ort("MatMul", [a, b])[0], **TOL)
    assert_allclose(got, np.matmul(a.astype(np.float64), b), rtol=1e-6, atol=1e-6)


def test_integer_conv2d_is_exact():
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 128, (1, 4, 6, 6)).astype(np.int32)
    w = rng.integers(-128, 128, (2, 4, 3, 3)).astype(np.int32)
    b = rng.integers(-1000, 1000, 2).astype(np.int32)
    got = run("conv2d", x, w, b)
    want = np.zeros((1, 2, 4, 4), np.int64)
    for i in range(3):
        for j in range(3):
            want += np.einsum("nchw,oc->nohw", x[:, :, i:i + 4, j:j + 4].astype(np.int64), w[:, :, i, j])
    np.testing.assert_array_equal(got, want + b[:, None, None])
