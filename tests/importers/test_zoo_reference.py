"""bench/zoo/reference.py's fixed-up copies of zoo models LiteRT refuses: each changes only what LiteRT
cannot read, checked on a small model built here (LiteRT runs the copy like the equivalent builtin model)."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from test_int8_parity import R, _int8, kpuc_codes, steps
from test_tflite_mediapipe import C_SAME, C_VALID, tconv_bias
from test_tflite_ops import SAME, Op, T, build, litert, opts

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
        litert(model, [x])
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
        litert(custom, [x])
    (got,), (want,) = litert(transpose_conv_bias_as_builtin(custom), [x]), litert(builtin, [x])
    np.testing.assert_array_equal(got, want)


def test_zoo_float_parity_counts_error_beyond_the_frameworks_sigmoid_approximation(tmp_path):
    """ppocrv4_det's last op is a Sigmoid whose outputs on a random input are all near 0: onnxruntime's
    approximation is ~1e-7 off the exact value, 3.6e-4 of such an output's peak, while kpuc is within
    float32 rounding; sweep.compare counts the error beyond FRAMEWORK_ATOL."""
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from sweep import FRAMEWORK_ATOL, compare

    from compiler.executor import run_graph
    from compiler.importers import import_model
    n = 20000
    graph = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])])
    path = tmp_path / "sigmoid.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    x = np.random.default_rng(3).uniform(-30, -8, (1, n)).astype(np.float32)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = run_graph(import_model(path), x)[0]
    exact = 1 / (1 + np.exp(-x.astype(np.float64)))
    ort_off, kpuc_off = np.abs(want - exact).max(), np.abs(got - exact).max()
    assert kpuc_off < ort_off / 10 and ort_off < FRAMEWORK_ATOL
    assert np.abs(got - want).max() / want.max() > 1e-4          # the raw relative error fails...
    (tmp_path / "out").mkdir()
    got.astype(np.float32).tofile(tmp_path / "out" / "sample.out0.bin")
    meta = dict(layout="nchw", outputs=[dict(name="y", quant=None)])
    assert compare(tmp_path / "out", {"out0": want}, meta, "model")["rel"] <= 1e-4   # ...on ORT's error alone
