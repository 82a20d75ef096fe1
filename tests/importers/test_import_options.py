"""Dynamic dims, --input-shape pins and --output-tensors cuts on generated TFLite and ONNX models, with
LiteRT and onnxruntime as the oracles (issue 12, importer capabilities 1, 2 and 6)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_tflite_ops import SAME, Op, T, build, litert, opts, rand

from compiler.errors import UnsupportedOps
from compiler.executor import run_graph
from compiler.importers import import_model, summarize_model
from compiler.importers.options import BadInputShape, UnknownTensor, UnpinnedInputs, parse_input_shape

RNG = np.random.default_rng(7)




def kpuc(path, feeds: list[np.ndarray], **options) -> list[np.ndarray]:
    """kpuc's float executor on NHWC feeds, outputs back in NHWC."""
    graph = import_model(path, **options)
    got = run_graph(graph, *[x.transpose(0, 3, 1, 2) if x.ndim == 4 else x for x in feeds])
    return [g.transpose(0, 2, 3, 1) if g.ndim == 4 else g for g in got]


def assert_all_close(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ TFLite dynamic dims
def ssd_head(hw_signature=(4, 6)) -> bytes:
    """A TF2-style head with a dynamic batch: conv -> reshape [1, -1, 2] (x2) -> concat on axis 1. The
    reshaped tensors keep placeholder 1s in `shape`, as TF2 writes them."""
    h, w = (d if d > 0 else 1 for d in hw_signature)
    sig4 = (-1, *hw_signature, 3)
    tensors = [T("x", (1, h, w, 3), signature=sig4),
               T("w1", (4, 3, 3, 3), data=rand(4, 3, 3, 3)), T("b1", (4,), data=rand(4)),
               T("w2", (2, 1, 1, 3), data=rand(2, 1, 1, 3)), T("b2", (2,), data=rand(2)),
               T("c1", (1, h, w, 4), signature=(-1, *hw_signature, 4)),
               T("c2", (1, h, w, 2), signature=(-1, *hw_signature, 2)),
               T("shape", (3,), "int32", np.array([1, -1, 2], np.int32)),
               T("r1", (1, 1, 2), signature=(-1, -1, 2)), T("r2", (1, 1, 2), signature=(-1, -1, 2)),
               T("boxes", (1, 1, 2), signature=(-1, -1, 2))]
    conv = opts("Conv2DOptions", Padding=SAME, StrideH=1, StrideW=1)
    ops = [Op("CONV_2D", ["x", "w1", "b1"], ["c1"], conv), Op("CONV_2D", ["x", "w2", "b2"], ["c2"], conv),
           Op("RESHAPE", ["c1", "shape"], ["r1"]), Op("RESHAPE", ["c2", "shape"], ["r2"]),
           Op("CONCATENATION", ["r1", "r2"], ["boxes"], opts("ConcatenationOptions", Axis=1))]
    return build(tensors, ops, ["x"], ["boxes"])


def test_tflite_dynamic_batch_uses_the_signature_and_matches_litert(tmp_path):
    model = ssd_head()
    path = tmp_path / "head.tflite"
    path.write_bytes(model)
    x = RNG.standard_normal((1, 4, 6, 3)).astype(np.float32)
    got = kpuc(path, [x])
    assert got[0].shape == (1, 4 * 6 * 2 + 4 * 6, 2)          # not the (1, 1, 2) the file's `shape` says
    assert_all_close(got, litert(model, [x]))
    summary = summarize_model(path)
    assert summary.inputs[0][1] == (-1, 4, 6, 3) and summary.outputs[0][1] == (-1, -1, 2)


def test_tflite_dynamic_spatial_dims_need_a_pin_and_follow_it(tmp_path):
    model = ssd_head(hw_signature=(-1, -1))
    path = tmp_path / "head.tflite"
    path.write_bytes(model)
    with pytest.raises(UnpinnedInputs, match=r"'x' \[\?,\?,\?,3\]: dim 1, dim 2; pin them with --input-shape x=1,N,N,3"):
        import_model(path)
    with pytest.raises(UnpinnedInputs):
        summarize_model(path)
    x = RNG.standard_normal((1, 5, 7, 3)).astype(np.float32)
    got = kpuc(path, [x], input_shapes=[("x", (1, 5, 7, 3))])
    assert got[0].shape == (1, 5 * 7 * 3, 2)
    assert_all_close(got, litert(model, [x]))


def test_pins_that_do_not_fit_are_one_line_errors(tmp_path):
    path = tmp_path / "head.tflite"
    path.write_bytes(ssd_head(hw_signature=(-1, -1)))
    with pytest.raises(BadInputShape, match=r"x=1,5,7,4 does not fit the input's declared shape \[\?,\?,\?,3\]"):
        import_model(path, input_shapes=[("x", (1, 5, 7, 4))])
    with pytest.raises(BadInputShape, match=r"names 'y', which the model has no input of; its inputs: 'x'"):
        import_model(path, input_shapes=[("y", (1, 5, 7, 3))])
    assert parse_input_shape("in:0=1,3,240,320") == ("in:0", (1, 3, 240, 320))
    for bad in ("x", "x=", "=1,2", "x=1,,2", "x=1,0", "x=a,b"):
        with pytest.raises(BadInputShape):
            parse_input_shape(bad)


# ------------------------------------------------------------------ ONNX symbolic dims
def fcn(inputs=(("x", ["N", 3, "H", "W"]),)) -> onnx.ModelProto:
    """A fully convolutional net: conv 3x3 pad 1 -> relu (and an add of the second input, if any)."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    if len(inputs) > 1:
        nodes.append(helper.make_node("Add", ["y", "z"], ["y2"]))
    out = "y2" if len(inputs) > 1 else "y"
    graph = helper.make_graph(
        nodes, "fcn", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(RNG.standard_normal(4).astype(np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_onnx_symbolic_dims_are_listed_then_pinned(tmp_path):
    path = tmp_path / "fcn.onnx"
    onnx.save(fcn((("x", ["N", 3, "H", "W"]), ("z", [1, 4, "H", "W"]))), str(path))
    with pytest.raises(UnpinnedInputs) as info:
        import_model(path)
    message = str(info.value)
    assert "\n" not in message
    assert "'x' [N,3,H,W]: dim 2 (H), dim 3 (W)" in message and "'z' [1,4,H,W]: dim 2 (H), dim 3 (W)" in message
    assert "--input-shape x=1,3,N,N --input-shape z=1,4,N,N" in message
    pins = [("x", (1, 3, 10, 12)), ("z", (1, 4, 10, 12))]
    graph = import_model(path, input_shapes=pins)
    feeds = {n: RNG.standard_normal(s).astype(np.float32) for n, s in pins}
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = run_graph(graph, *feeds.values())
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)


def test_onnx_dynamic_batch_alone_defaults_to_one(tmp_path):
    path = tmp_path / "fcn.onnx"
    onnx.save(fcn((("x", ["N", 3, 8, 8]),)), str(path))
    assert import_model(path).inputs[0].shape == (1, 3, 8, 8)
    assert import_model(path, input_shapes=[("x", (1, 3, 8, 8))]).inputs[0].shape == (1, 3, 8, 8)


# ------------------------------------------------------------------ cutting the graph
def detector() -> onnx.ModelProto:
    """Conv head -> boxes and sigmoid scores -> NonMaxSuppression (post-processing kpuc does not import)."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["feat"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["feat", "box_shape"], ["boxes"]),
             helper.make_node("Reshape", ["feat", "score_shape"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["scores"]),
             helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou"], ["selected"])]
    graph = helper.make_graph(
        nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, None)],
        [numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
         numpy_helper.from_array(RNG.standard_normal(4).astype(np.float32), "b"),
         numpy_helper.from_array(np.array([1, 16, 4], np.int64), "box_shape"),
         numpy_helper.from_array(np.array([1, 4, 16], np.int64), "score_shape"),
         numpy_helper.from_array(np.array([5], np.int64), "max_out"),
         numpy_helper.from_array(np.array([0.5], np.float32), "iou")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_onnx_post_processing_is_suggested_and_cut_off(tmp_path):
    model = detector()
    path = tmp_path / "det.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UnsupportedOps, match="NonMaxSuppression"):
        import_model(path)
    summary = summarize_model(path)
    assert [p.op_type for p in summary.unsupported] == ["NonMaxSuppression"]
    assert summary.cut_suggestion == ("boxes", "scores")
    graph = import_model(path, output_tensors=summary.cut_suggestion)
    assert [v.name for v in graph.outputs] == ["boxes", "scores"]
    # the oracle: onnxruntime on the whole model, with the cut tensors added as outputs
    model.graph.output.extend([helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("boxes", "scores")])
    x = RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["boxes", "scores"], {"x": x})
    for g, w in zip(run_graph(graph, x), want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    cut = summarize_model(path, output_tensors=("scores",))
    assert cut.unsupported == [] and [o[0] for o in cut.outputs] == ["scores"]
    assert cut.op_histogram == {"Conv": 1, "Reshape": 1, "Sigmoid": 1}


def test_unknown_output_tensor_names_a_few_real_ones(tmp_path):
    path = tmp_path / "det.onnx"
    onnx.save(detector(), str(path))
    with pytest.raises(UnknownTensor, match=r"no tensor 'score'; tensors it has include 'scores'"):
        import_model(path, output_tensors=("score",))
    tpath = tmp_path / "head.tflite"
    tpath.write_bytes(ssd_head())
    with pytest.raises(UnknownTensor, match=r"no tensor 'r3'; tensors it has include 'r2', 'r1'"):
        import_model(tpath, output_tensors=("r3",))


def test_tflite_detection_post_process_is_suggested_and_cut_off(tmp_path):
    """SSD-style: the custom TFLite_Detection_PostProcess op is the only blocker; cutting at its inputs
    leaves a model that matches LiteRT on the same ops (LiteRT's own post-process needs options we skip)."""
    head = [T("x", (1, 4, 4, 3)), T("w1", (4, 3, 3, 3), data=rand(4, 3, 3, 3)), T("b1", (4,), data=rand(4)),
            T("c1", (1, 4, 4, 4)), T("shape", (3,), "int32", np.array([1, 16, 4], np.int32)),
            T("box", (1, 16, 4)), T("cls", (1, 16, 4))]
    head_ops = [Op("CONV_2D", ["x", "w1", "b1"], ["c1"], opts("Conv2DOptions", Padding=SAME, StrideH=1, StrideW=1)),
                Op("RESHAPE", ["c1", "shape"], ["box"]), Op("LOGISTIC", ["box"], ["cls"])]
    post = [T("anchors", (16, 4), data=rand(16, 4)), T("d_boxes", (1, 5, 4)), T("d_classes", (1, 5)),
            T("d_scores", (1, 5)), T("d_count", (1,))]
    post_op = Op("CUSTOM:TFLite_Detection_PostProcess", ["box", "cls", "anchors"],
                 ["d_boxes", "d_classes", "d_scores", "d_count"])
    path = tmp_path / "ssd.tflite"
    path.write_bytes(build(head + post, head_ops + [post_op], ["x"], ["d_boxes", "d_classes", "d_scores", "d_count"]))
    summary = summarize_model(path)
    assert [p.op_type for p in summary.unsupported] == ["TFLite_Detection_PostProcess"]
    assert summary.cut_suggestion == ("box", "cls")
    x = RNG.standard_normal((1, 4, 4, 3)).astype(np.float32)
    got = kpuc(path, [x], output_tensors=summary.cut_suggestion)
    assert_all_close(got, litert(build(head, head_ops, ["x"], ["box", "cls"]), [x]))


def test_no_suggestion_when_other_ops_block_too(tmp_path):
    model = detector()
    model.graph.node.insert(1, helper.make_node("Hardmax", ["feat"], ["odd"]))
    model.graph.output.append(helper.make_tensor_value_info("odd", TensorProto.FLOAT, None))
    path = tmp_path / "det.onnx"
    onnx.save(model, str(path))
    summary = summarize_model(path)
    assert {p.op_type for p in summary.unsupported} == {"NonMaxSuppression", "Hardmax"}
    assert summary.cut_suggestion == ()
