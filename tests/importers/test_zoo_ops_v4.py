"""Ops the real-model zoo needed in kmodel v4 (issue 12), each on a small TFLite model built here: LiteRT's
reference kernels are the oracle for the float result, and the v4 kmodel kpuc writes runs in
../shared/oracle's v4run (tests/conftest.py checks every *.kmodel under tmp_path there, bit for bit
against kpuc's interpreter)."""
from __future__ import annotations

import numpy as np
import pytest
from test_tflite_ops import litert, opts, single

from compiler.pipeline import CompileOptions, compile_model
from targets import get_target
from targets.k210.kmodel import read_kmodel, run_kmodel


def compile_v4(model: bytes, tmp_path, target: str = "cpu", **kw) -> bytes:
    """The model compiled to a v4 kmodel, written under tmp_path (so conftest runs it in v4run too)."""
    path = tmp_path / "model.tflite"
    path.write_bytes(model)
    opts_ = CompileOptions(target=target, kmodel_version=4, inference_type="float", **kw)
    data = compile_model(path, opts_, get_target(target)).kmodel
    (tmp_path / "model.kmodel").write_bytes(data)
    return data


def nhwc(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def run_kmodel_nhwc(data: bytes, x_nhwc: np.ndarray, out_shape) -> np.ndarray:
    got = run_kmodel(read_kmodel(data), [np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))])[0]
    n, h, w, c = out_shape
    return got.reshape(n, c, h, w).transpose(0, 2, 3, 1)


# ---------------------------------------------------------------- bilinear resize with half-pixel centres
@pytest.mark.parametrize("in_hw, out_hw", [((4, 5), (8, 10)), ((3, 4), (6, 4)), ((4, 3), (4, 9)), ((2, 3), (6, 6))])
def test_half_pixel_bilinear_upscale_runs_in_v4(in_hw, out_hw, tmp_path):
    """TFLite RESIZE_BILINEAR(half_pixel_centers) by whole factors, which v0.2's resize_image cannot sample
    directly (§8.11): the v4 file (an edge row, a 2f-finer resize_image, a stride-2 slice per axis)
    against LiteRT."""
    in_shape, out_shape = (1, *in_hw, 3), (1, *out_hw, 3)
    model = single("RESIZE_BILINEAR", [in_shape], out_shape,
                   opts("ResizeBilinearOptions", AlignCorners=False, HalfPixelCenters=True),
                   consts=[np.array(out_hw, np.int32)])
    x = np.random.default_rng(1).standard_normal(in_shape).astype(np.float32)
    (want,) = litert(model, [x])
    data = compile_v4(model, tmp_path)
    np.testing.assert_allclose(run_kmodel_nhwc(data, x, out_shape), want, rtol=1e-5, atol=1e-6)
    ops = [n.body.op_name for n in read_kmodel(data).model.nodes]
    assert "resize_image" in ops


def test_half_pixel_by_an_odd_ratio_still_refused(tmp_path):
    """4 -> 7 rows has no whole factor: kmodel v4 cannot express it, and says which resize."""
    from compiler.errors import KpucError
    model = single("RESIZE_BILINEAR", [(1, 4, 4, 2)], (1, 7, 4, 2),
                   opts("ResizeBilinearOptions", AlignCorners=False, HalfPixelCenters=True),
                   consts=[np.array([7, 4], np.int32)])
    with pytest.raises(KpucError, match="half_pixel"):
        compile_v4(model, tmp_path)


# ---------------------------------------------------------------- ShuffleNet v2's 5-D channel shuffle (gather)
def test_gather_halves_of_a_5d_channel_shuffle_run_in_v4(tmp_path):
    """FastestDet / Yolo-FastestV2 split a shuffled 5-D tensor with Gather(axis 0, index 0 / 1); v4 shapes are
    4-D at most, so each half is a view of the contiguous run. The v4 file against onnxruntime."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    c, h, w = 8, 5, 6
    nodes = [helper.make_node("Reshape", ["x", "s1"], ["r1"]),
             helper.make_node("Transpose", ["r1"], ["t"], perm=[1, 0, 2]),
             helper.make_node("Reshape", ["t", "s2"], ["r2"]),
             helper.make_node("Gather", ["r2", "i0"], ["a"], axis=0),
             helper.make_node("Gather", ["r2", "i1"], ["b"], axis=0),
             helper.make_node("Neg", ["b"], ["nb"]),
             helper.make_node("Concat", ["nb", "a"], ["y"], axis=1)]
    inits = [helper.make_tensor("s1", TensorProto.INT64, [3], [c // 2, 2, h * w]),
             helper.make_tensor("s2", TensorProto.INT64, [5], [2, 1, c // 2, h, w]),
             helper.make_tensor("i0", TensorProto.INT64, [], [0]),
             helper.make_tensor("i1", TensorProto.INT64, [], [1])]
    graph = helper.make_graph(nodes, "shuffle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, h, w])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = tmp_path / "shuffle.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(2).standard_normal((1, c, h, w)).astype(np.float32)
    (want,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    opts_ = CompileOptions(target="cpu", kmodel_version=4, inference_type="float")
    data = compile_model(path, opts_, get_target("cpu")).kmodel
    (tmp_path / "shuffle.kmodel").write_bytes(data)
    (got,) = run_kmodel(read_kmodel(data), [x])
    np.testing.assert_array_equal(got.reshape(want.shape), want)


# ---------------------------------------------------------------- a KPU layer writing a map over 64 Ki pixels
def test_kpu_layer_with_a_320x240_output_in_main_memory(tmp_path):
    """channel_byte_num is a 16-bit field (W_out·H_out − 1) that the v4 runtime never reads; a 320x240 KPU
    output (MTCNN P-Net's first layer on a camera frame) is written like ncc's bitfield, not refused. The
    uint8 file against onnxruntime (a few quantization steps) and, through conftest, v4run."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    rng = np.random.default_rng(3)
    w = rng.uniform(-0.5, 0.5, (4, 1, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 240, 320])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 240, 320])],
                              [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
    path = tmp_path / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    samples = [[rng.uniform(0, 1, (1, 1, 240, 320)).astype(np.float32)] for _ in range(2)]
    result = compile_model(path, CompileOptions(kmodel_version=4, input_type="float"), get_target("k210"),
                           samples=samples)
    (tmp_path / "big.kmodel").write_bytes(result.kmodel)
    model = read_kmodel(result.kmodel)
    layers = [n.body for n in model.model.nodes if n.body.op_name == "kpu_conv2d"]
    assert layers and layers[0].layer.channel_byte_num == (320 * 240 - 1) & 0xFFFF
    x = samples[0][0]
    (want,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    (got,) = run_kmodel(model, [x])
    assert np.abs(got.reshape(want.shape) - want).max() < 0.05


# ---------------------------------------------------------------- a classifier too big to keep in float
def _classifier(path, ic: int, oc: int, rng) -> None:
    import onnx
    from onnx import TensorProto, helper
    w = (rng.standard_normal((oc, ic, 1, 1)) / np.sqrt(ic)).astype(np.float32)
    b = (0.1 * rng.standard_normal(oc)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w", "b"], ["y"])], "cls",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, ic, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, oc, 1, 1])],
                              [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel()),
                               helper.make_tensor("b", TensorProto.FLOAT, b.shape, b)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


@pytest.mark.parametrize("ic, oc, float_kept", [(128, 1000, True), (640, 1000, False), (1280, 1000, False)])
def test_small_output_stays_float_unless_its_weights_crowd_main_memory(ic, oc, float_kept, tmp_path):
    """ncc keeps a layer with fewer than 1024 outputs in float (MobileNet's logits); kpuc follows it unless
    the float weights pass 2 MiB (640x1000 floats: 2.56 MB), which would take most of the K210's main
    memory (coral MobileNet v1 0.75's 768x1001 logits; with 1280 inputs, MobileNet v2's, the layer stays on
    the CPU, quantized). The file size tells which; the output against onnxruntime either way."""
    import onnxruntime as ort
    rng = np.random.default_rng(4)
    path = tmp_path / "cls.onnx"
    _classifier(path, ic, oc, rng)
    samples = [[rng.uniform(0, 1, (1, ic, 1, 1)).astype(np.float32)] for _ in range(3)]
    # ncc's rule alone (--no-auto-precision): kpuc's default flow quantizes such logits to free the bytes
    result = compile_model(path, CompileOptions(kmodel_version=4, input_type="float", auto_precision=False),
                           get_target("k210"), samples=samples)
    (tmp_path / "cls.kmodel").write_bytes(result.kmodel)
    assert (len(result.kmodel) > 4 * ic * oc) == float_kept
    x = samples[0][0]
    (want,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    (got,) = run_kmodel(read_kmodel(result.kmodel), [x])
    peak = np.abs(want).max()
    assert np.abs(got.reshape(want.shape) - want).max() < (1e-5 if float_kept else 0.05) * peak


# ---------------------------------------------------------------- ResNet-50 (onnx light: constant weights)
def _onnx(path, nodes, x_shape, y_shape, inits) -> None:
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))],
                              [helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.ravel()) for n, a in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def _compiled_vs_onnxruntime(path, x_shape, tmp_path, rng):
    import onnxruntime as ort
    samples = [[rng.uniform(0, 1, x_shape).astype(np.float32)] for _ in range(2)]
    result = compile_model(path, CompileOptions(kmodel_version=4, input_type="float"), get_target("k210"),
                           samples=samples)
    (tmp_path / "m.kmodel").write_bytes(result.kmodel)
    x = samples[0][0]
    (want,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    (got,) = run_kmodel(read_kmodel(result.kmodel), [x])
    return got.reshape(want.shape), want, result


def test_add_of_maps_1e14_wide_stays_float(tmp_path):
    """A quantized add rescales each operand by a 16-bit fixed-point mul and the sum by a 32-bit one; with
    maps ~1e14 wide (ResNet-50 with constant weights) the muls round to 0 or do not fit, so the add stays
    float instead of giving zeros or stopping the compile. The v4 file against onnxruntime."""
    from onnx import helper
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"]), helper.make_node("Conv", ["x", "wb"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    path = tmp_path / "wide.onnx"
    shape = (1, 4, 16, 16)
    _onnx(path, nodes, shape, shape, {"wa": (rng.uniform(0.5, 1, (4, 4, 1, 1)) * 1e14).astype(np.float32),
                                      "wb": (rng.uniform(0.5, 1, (4, 4, 1, 1)) * 1e12).astype(np.float32)})
    got, want, result = _compiled_vs_onnxruntime(path, shape, tmp_path, rng)
    assert "quantized_binary" not in {n.op for n in result.graph.nodes}
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_conv_needing_more_than_64_weight_loads_runs_on_the_kpu_in_two_pieces(tmp_path):
    """A 3x3 conv 512 -> 512 needs 86 KPU weight loads of 30 KiB; load_time holds 64 at most (it used to stop
    the compile at the field's width, then ran on the CPU): split_wide_conv2d makes it two KPU layers of
    256 outputs (43 loads each) and a concat."""
    from onnx import helper

    from targets.k210.constraints import why_not_kpu_layer
    assert "86 loads" in why_not_kpu_layer((1, 512, 4, 4), 512, 3)
    assert why_not_kpu_layer((1, 512, 4, 4), 384, 3) is None     # 64 loads
    rng = np.random.default_rng(6)
    w = (rng.standard_normal((512, 512, 3, 3)) / 48).astype(np.float32)
    path = tmp_path / "loads.onnx"
    _onnx(path, [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], (1, 512, 4, 4), (1, 512, 4, 4),
          {"w": w})
    got, want, result = _compiled_vs_onnxruntime(path, (1, 512, 4, 4), tmp_path, rng)
    assert [n.op for n in result.graph.nodes if n.op in ("kpu_conv2d_q", "concat")] == ["kpu_conv2d_q"] * 2 + ["concat"]
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


# ---------------------------------------------------------------- ARG_MAX / ARG_MIN / GATHER_ND (import + infer)
@pytest.mark.parametrize("code, axis, ties", [("ARG_MAX", 3, False), ("ARG_MIN", 1, False), ("ARG_MAX", -1, True)])
def test_tflite_arg_reduce_matches_litert(code, axis, ties, tmp_path):
    """DeepLab v3's and MoveNet's ARG_MAX: imported and run by `kpuc infer` (v4 has no such op); ties
    (uint8 logits have them) pick the first index, as LiteRT."""
    from compiler.executor import run_graph
    from compiler.importers import import_model
    shape = (1, 5, 6, 7)
    out = tuple(d for i, d in enumerate(shape) if i != axis % 4)
    opt = "ArgMaxOptions" if code == "ARG_MAX" else "ArgMinOptions"
    model = single(code, [shape], out, opts(opt, OutputType=4), consts=[np.array([axis], np.int32)], out_dtype="int64")
    rng = np.random.default_rng(7)
    x = (rng.integers(0, 3, shape) if ties else rng.standard_normal(shape)).astype(np.float32)
    (want,) = litert(model, [x])
    path = tmp_path / "arg.tflite"
    path.write_bytes(model)
    (got,) = run_graph(import_model(path), x.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(got, want)


def test_tflite_gather_nd_matches_litert(tmp_path):
    from compiler.executor import run_graph
    from compiler.importers import import_model
    idx = np.array([[0, 2, 1], [0, 4, 5], [0, 3, 0]], np.int32)
    model = single("GATHER_ND", [(1, 5, 6, 3)], (3, 3), consts=[idx])
    x = np.random.default_rng(8).standard_normal((1, 5, 6, 3)).astype(np.float32)
    (want,) = litert(model, [x])
    path = tmp_path / "gnd.tflite"
    path.write_bytes(model)
    (got,) = run_graph(import_model(path), x.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("op, attrs", [("ArgMax", dict(axis=1, keepdims=1)), ("ArgMin", dict(axis=-1, keepdims=0)),
                                       ("ArgMax", dict(axis=2, keepdims=1, select_last_index=1))])
def test_onnx_arg_reduce_matches_onnxruntime(op, attrs, tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from compiler.executor import run_graph
    from compiler.importers import import_model
    shape = (2, 4, 5)
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], **attrs)], "arg",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, None)])
    path = tmp_path / "arg.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    x = np.random.default_rng(9).integers(0, 3, shape).astype(np.float32)
    (want,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    (got,) = run_graph(import_model(path), x)
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------- an int8 fake-quant of a float input
def test_int8_requantize_of_the_input_runs_in_v4(tmp_path):
    """coral's TF2 MobileNet v2 PTQ starts with QUANTIZE(int8, zero point -1) of its uint8 input, a
    requantization kpuc keeps as quantize -> dequantize; v4 holds no int8 tensor, so the codes live as
    uint8 + 128 between the two. Against LiteRT on all 256 input codes."""
    from test_tflite_ops import Op, T, build
    shape = (1, 16, 16, 1)
    tensors = [T("x", shape, "uint8", scale=(0.0081,), zero_point=(120,)),
               T("q", shape, "int8", scale=(1 / 127.5,), zero_point=(-1,)), T("y", shape)]
    model = build(tensors, [Op("QUANTIZE", ["x"], ["q"]), Op("DEQUANTIZE", ["q"], ["y"])], ["x"], ["y"])
    x = np.arange(256, dtype=np.uint8).reshape(shape)
    (want,) = litert(model, [x])
    data = compile_v4(model, tmp_path)
    assert "quantize" in [n.body.op_name for n in read_kmodel(data).model.nodes]
    real = ((x.astype(np.float32) - 120) * np.float32(0.0081)).astype(np.float32)  # kpuc's float input
    np.testing.assert_allclose(run_kmodel_nhwc(data, real, shape), want, rtol=0, atol=1e-6)


def test_half_pixel_upscale_between_kpu_layers(tmp_path):
    """The BlazePalm / selfie pattern on the K210 target: uint8 KPU conv -> float half-pixel x2 upscale ->
    KPU conv. The file runs in v4run as in kpuc (conftest); against LiteRT within quantization error."""
    from test_tflite_ops import SAME, Op, T, build, rand
    tensors = [T("x", (1, 8, 8, 4)), T("w1", (8, 3, 3, 4), data=rand(8, 3, 3, 4) * 0.3), T("b1", (8,), data=rand(8)),
               T("c1", (1, 8, 8, 8)), T("size", (2,), "int32", np.array([16, 16], np.int32)), T("up", (1, 16, 16, 8)),
               T("w2", (4, 1, 1, 8), data=rand(4, 1, 1, 8) * 0.3), T("b2", (4,), data=rand(4)), T("y", (1, 16, 16, 4))]
    conv = ("Conv2DOptions", {"Padding": SAME, "StrideW": 1, "StrideH": 1, "FusedActivationFunction": 1})
    model = build(tensors, [Op("CONV_2D", ["x", "w1", "b1"], ["c1"], conv),
                            Op("RESIZE_BILINEAR", ["c1", "size"], ["up"],
                               opts("ResizeBilinearOptions", AlignCorners=False, HalfPixelCenters=True)),
                            Op("CONV_2D", ["up", "w2", "b2"], ["y"], conv)], ["x"], ["y"])
    rng = np.random.default_rng(11)
    x = rng.uniform(-1, 1, (1, 8, 8, 4)).astype(np.float32)
    (want,) = litert(model, [x])
    path = tmp_path / "up.tflite"
    path.write_bytes(model)
    samples = [[rng.uniform(-1, 1, (1, 4, 8, 8)).astype(np.float32)] for _ in range(3)] + [[x.transpose(0, 3, 1, 2)]]
    result = compile_model(path, CompileOptions(kmodel_version=4, input_type="float"), get_target("k210"),
                           samples=samples)
    (tmp_path / "up.kmodel").write_bytes(result.kmodel)
    ops = [n.body.op_name for n in read_kmodel(result.kmodel).model.nodes]
    assert "resize_image" in ops and ops.count("kpu_conv2d") == 2
    got = run_kmodel_nhwc(result.kmodel, x, want.shape)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


# ---------------------------------------------------------------- wide uint8 weights of a uint8 model
def _uint8_depthwise(weights_in_uint8: bool) -> bytes:
    """uint8 in -> depthwise 3x3 SAME ReLU6 whose weights span 0.34·255 = 87 (coral MobileNet v2's first
    depthwise) -> uint8 out; or the same with the weights given as float32."""
    from test_tflite_ops import RELU6, SAME, Op, T, build
    rng = np.random.default_rng(12)
    s_w, z_w = 0.3437, 165
    w = rng.integers(0, 256, (1, 3, 3, 8)).astype(np.uint8)
    w[0, 0, 0, 0], w[0, 0, 1, 0] = 0, 255                          # the whole 8-bit range
    s_x, s_y = 0.0002, 0.0235
    b = rng.integers(-500, 500, 8).astype(np.int32)
    if weights_in_uint8:
        wt = T("w", w.shape, "uint8", w, scale=(s_w,), zero_point=(z_w,))
        bt = T("b", (8,), "int32", b, scale=(s_x * s_w,), zero_point=(0,))
        x = T("x", (1, 16, 16, 8), "uint8", scale=(s_x,), zero_point=(128,))
        y = T("y", (1, 16, 16, 8), "uint8", scale=(s_y,), zero_point=(0,))
    else:
        wt = T("w", w.shape, data=((w.astype(np.float32) - z_w) * s_w))
        bt = T("b", (8,), data=(b * s_x * s_w).astype(np.float32))
        x, y = T("x", (1, 16, 16, 8)), T("y", (1, 16, 16, 8))
    return build([x, wt, bt, y], [Op("DEPTHWISE_CONV_2D", ["x", "w", "b"], ["y"], opts(
        "DepthwiseConv2DOptions", Padding=SAME, StrideH=1, StrideW=1, DepthMultiplier=1,
        FusedActivationFunction=RELU6))], ["x"], ["y"])


@pytest.mark.parametrize("weights_in_uint8", [True, False])
def test_wide_weights_go_to_the_kpu_when_the_model_stores_them_in_uint8(weights_in_uint8, tmp_path):
    """nncase keeps a conv whose weights span more than 64 in float; a uint8 model's own per-tensor weights
    are already on that coarse grid, so they go to the KPU (coral MobileNet v2's first depthwise: 3.2 MB
    of float maps otherwise). Float weights of the same span stay float. Against LiteRT."""
    model = _uint8_depthwise(weights_in_uint8)
    rng = np.random.default_rng(13)
    path = tmp_path / "dw.tflite"
    path.write_bytes(model)
    real = rng.uniform(-0.025, 0.025, (1, 8, 16, 16)).astype(np.float32)
    samples = [[rng.uniform(-0.025, 0.025, (1, 8, 16, 16)).astype(np.float32)] for _ in range(3)] + [[real]]
    result = compile_model(path, CompileOptions(kmodel_version=4, input_type="float"), get_target("k210"),
                           samples=samples)
    (tmp_path / "dw.kmodel").write_bytes(result.kmodel)
    ops = [n.body.op_name for n in read_kmodel(result.kmodel).model.nodes]
    assert ("kpu_conv2d" in ops) == weights_in_uint8
    x = real.transpose(0, 2, 3, 1)
    if weights_in_uint8:
        codes = np.clip(np.round(x / 0.0002) + 128, 0, 255)
        (want,) = litert(model, [codes.astype(np.uint8)])
        want = want.astype(np.float32) * 0.0235
        x = ((codes - 128) * 0.0002).astype(np.float32)
    else:
        (want,) = litert(model, [x])
    assert ((want > 0) & (want < 5.9)).mean() > 0.3                  # mostly between the ReLU6 clamps
    got = run_kmodel_nhwc(result.kmodel, x, want.shape)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_uint8_input_cast_to_float_runs_in_v4(tmp_path):
    """MoveNet's first op, CAST of its uint8 picture to float32: a v4 DEQUANTIZE with step 1 and zero
    point 0 (the v0.2 runtime has no cast op), exact against LiteRT on every code."""
    model = single("CAST", [(1, 16, 16, 1)], (1, 16, 16, 1), in_dtype="uint8")
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    (want,) = litert(model, [x])
    data = compile_v4(model, tmp_path)
    np.testing.assert_array_equal(run_kmodel_nhwc(data, x, (1, 16, 16, 1)), want)
    assert [n.body.op_name for n in read_kmodel(data).model.nodes if n.body.op_name == "dequantize"]
