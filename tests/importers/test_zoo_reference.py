"""bench/zoo/reference.py's fixed-up copies of zoo models LiteRT refuses: each changes only what LiteRT
cannot read, checked on a small model built here (LiteRT runs the copy like the equivalent builtin model)."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from test_int8_parity import R, _int8, _litert, kpuc_codes, steps
from test_tflite_mediapipe import C_SAME, C_VALID, tconv_bias
from test_tflite_ops import SAME, Op, T, build, opts

from shared_data import ROOT

sys.path.insert(0, str(ROOT / "bench" / "zoo"))
from reference import single_axis_fixed, transpose_conv_bias_as_builtin  # noqa: E402


def test_zoo_reference_fixes_a_bias_quantized_dimension_and_nothing_else(tmp_path):
    """tfmicro_person_detect_int8: its depthwise biases say quantized_dimension 3 (rank 1); LiteRT refuses
    the file, bench/zoo/reference.py measures a copy with 0 there, and kpuc matches that copy exactly."""
    w = _int8((1, 3, 3, 8))
    ws = R.uniform(0.01, 0.03, 8)
    tensors = [T("x", (1, 12, 12, 8), "int8", scale=(0.05,), zero_point=(-5,)),
               T("w", w.shape, "int8", w, scale=tuple(ws), zero_point=(0,) * 8, axis=3),
               T("b", (8,), "int32", R.integers(-300, 300, 8).astype(np.int32), scale=tuple(0.05 * ws),
                 zero_point=(0,) * 8, axis=3),
               T("y", (1, 12, 12, 8), "int8", scale=(0.0733,), zero_point=(3,))]
    ops = [Op("DEPTHWISE_CONV_2D", ["x", "w", "b"], ["y"], opts("DepthwiseConv2DOptions", Padding=SAME, StrideH=1,
                                                                StrideW=1, DepthMultiplier=1))]
    model = build(tensors, ops, ["x"], ["y"])
    x = _int8((1, 12, 12, 8))
    with pytest.raises(ValueError, match="quantized_dimension"):
        _litert(model, [x])
    fixed = single_axis_fixed(model)
    assert len(fixed) == len(model) and sum(a != b for a, b in zip(fixed, model)) == 1   # one byte: 3 -> 0
    assert steps(tmp_path, fixed, [x]) == 0
    assert np.array_equal(kpuc_codes(tmp_path, model, [x])[0], kpuc_codes(tmp_path, fixed, [x])[0])



@pytest.mark.parametrize("padding, stride, in_hw, k", [(C_SAME, 2, (4, 5), 3), (C_VALID, 3, (3, 4), 2)])
def test_zoo_reference_runs_convolution_2d_transpose_bias_as_builtin_transpose_conv(padding, stride, in_hw, k):
    """mp_selfie_segmentation: MediaPipe's custom op becomes LiteRT's TRANSPOSE_CONV with the op's own
    output shape; the copy computes exactly what the hand-built builtin layer does."""
    custom, builtin = tconv_bias(padding, stride, in_hw, k)
    x = np.random.default_rng(0).standard_normal((1, *in_hw, 3)).astype(np.float32)
    with pytest.raises(RuntimeError, match="Convolution2DTransposeBias"):
        _litert(custom, [x])
    (got,), (want,) = _litert(transpose_conv_bias_as_builtin(custom), [x]), _litert(builtin, [x])
    np.testing.assert_array_equal(got, want)
