"""resize against onnx.reference (and onnxruntime for tf_half_pixel_for_nn, which the reference lacks)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import compiler.kernels.all  # noqa: F401
from compiler.ir import TensorType
from compiler.kernels import KERNELS
from compiler.ops import infer_types

TOL = dict(rtol=1e-4, atol=1e-5)
REFERENCE_MODES = ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel"]
NEAREST_MODES = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]


def run(x, **attrs):
    out = KERNELS["resize"](x, **attrs)
    assert [TensorType(out.shape, out.dtype)] == infer_types("resize", [TensorType(x.shape, x.dtype)], attrs)
    return out


@st.composite
def resize_cases(draw):
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    sizes = (shape[0], draw(st.sampled_from([shape[1], shape[1], 2 * shape[1]])),
             draw(st.integers(1, 15)), draw(st.integers(1, 15)))
    return shape, sizes


@settings(max_examples=50, deadline=None)
@given(case=resize_cases(), mode=st.sampled_from(["nearest", "linear"]), ctm=st.sampled_from(REFERENCE_MODES),
       nearest_mode=st.sampled_from(NEAREST_MODES), seed=st.integers(0, 2**16))
def test_resize_matches_onnx_reference(case, mode, ctm, nearest_mode, seed, onnx_ref):
    shape, sizes = case
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    got = run(x, sizes=sizes, mode=mode, coordinate_transformation_mode=ctm, nearest_mode=nearest_mode)
    want = onnx_ref("Resize", [x, None, None, np.array(sizes, np.int64)], mode=mode,
                    coordinate_transformation_mode=ctm, nearest_mode=nearest_mode)[0]
    assert_allclose(got, want, **TOL)


@pytest.mark.parametrize("nearest_mode", NEAREST_MODES)
@pytest.mark.parametrize("sizes", [(1, 2, 8, 10), (1, 2, 2, 3), (1, 2, 12, 5), (1, 2, 3, 16)])
def test_resize_tf_half_pixel_for_nn(nearest_mode, sizes, ort):
    x = np.random.default_rng(1).standard_normal((1, 2, 4, 5)).astype(np.float32)
    got = run(x, sizes=sizes, mode="nearest", coordinate_transformation_mode="tf_half_pixel_for_nn",
              nearest_mode=nearest_mode)
    want = ort("Resize", [x, None, None, np.array(sizes, np.int64)], opset=13, mode="nearest",
               coordinate_transformation_mode="tf_half_pixel_for_nn", nearest_mode=nearest_mode)[0]
    assert_array_equal(got, want)


@pytest.mark.parametrize("ctm", REFERENCE_MODES)
def test_resize_linear_matches_onnxruntime(ctm, ort):
    x = np.random.default_rng(2).standard_normal((1, 3, 5, 6)).astype(np.float32)
    for sizes in [(1, 3, 10, 12), (1, 3, 3, 4), (1, 3, 7, 13)]:
        got = run(x, sizes=sizes, mode="linear", coordinate_transformation_mode=ctm)
        want = ort("Resize", [x, None, None, np.array(sizes, np.int64)], mode="linear",
                   coordinate_transformation_mode=ctm)[0]
        assert_allclose(got, want, **TOL)


def test_resize_uint8_linear_rounds(onnx_ref):
    x = np.random.default_rng(3).integers(0, 256, (1, 1, 4, 4)).astype(np.uint8)
    attrs = dict(sizes=(1, 1, 7, 9), mode="linear", coordinate_transformation_mode="align_corners")
    got = run(x, **attrs)
    want = onnx_ref("Resize", [x, None, None, np.array(attrs["sizes"], np.int64)], mode="linear",
                    coordinate_transformation_mode="align_corners")[0]
    assert_array_equal(got, want)


def test_resize_nearest_2x_is_repeat():
    x = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
    got = run(x, sizes=(1, 1, 4, 6), mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    assert_array_equal(got, x.repeat(2, axis=2).repeat(2, axis=3))
