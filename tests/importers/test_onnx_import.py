"""ONNX importer on hand-built models: onnxruntime is the oracle for the numbers; the rest checks
problem reporting (every unsupported op at once), external data confinement, malformed files,
constant folding of shape chains and the names users see."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.errors import KpucError, MalformedModel, UnsupportedOps
from compiler.executor import run_graph
from compiler.importers import import_model, summarize_model

OPSET, IR_VERSION = 13, 8  # what the installed onnxruntime accepts for every op used here
RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, initializers=(), opset=OPSET):
    """A model from (name, shape) inputs/outputs and {name: array} initializers."""
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in dict(initializers).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)


def _save(model, tmp_path, name="model.onnx"):
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def check_against_onnxruntime(model, tmp_path, rtol=1e-4, atol=1e-5):
    """Import, run on seeded random inputs and compare every output with onnxruntime. Returns the graph."""
    path = _save(model, tmp_path)
    graph = import_model(path)
    feeds = {vi.name: RNG.standard_normal([d.dim_value for d in vi.type.tensor_type.shape.dim]).astype(np.float32)
             for vi in model.graph.input}
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = run_graph(graph, *[feeds[v.name] for v in graph.inputs])
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    return graph


# ------------------------------------------------------------------ numbers against onnxruntime
def test_small_cnn(tmp_path):
    c = 8
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["conv1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn1"], epsilon=1e-3),
        helper.make_node("Relu", ["bn1"], ["relu1"]),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool1", "w2"], ["conv2"], strides=[2, 2], auto_pad="SAME_UPPER", group=2),
        helper.make_node("Flatten", ["conv2"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    inits = {"w1": RNG.standard_normal((c, 3, 3, 3)).astype(np.float32) * 0.3,
             "b1": RNG.standard_normal(c).astype(np.float32),
             "bn_s": RNG.uniform(0.5, 1.5, c).astype(np.float32), "bn_b": RNG.standard_normal(c).astype(np.float32),
             "bn_m": RNG.standard_normal(c).astype(np.float32), "bn_v": RNG.uniform(0.5, 2, c).astype(np.float32),
             "w2": RNG.standard_normal((c, c // 2, 3, 3)).astype(np.float32) * 0.3,
             "fc_w": RNG.standard_normal((10, c * 4 * 4)).astype(np.float32) * 0.1,
             "fc_b": RNG.standard_normal(10).astype(np.float32)}
    graph = check_against_onnxruntime(_model(nodes, [("x", [1, 3, 16, 16])], [("probs", [1, 10])], inits), tmp_path)
    ops = [n.op for n in graph.nodes if n.op not in ("input", "constant")]
    assert ops == ["conv2d", "batch_norm", "clamp", "reduce_window2d", "conv2d", "reshape", "matmul", "binary",
                   "softmax"]
    # Nodes are named after the ONNX tensors they compute; the transposed FC weight folded to a constant.
    assert [n.name for n in graph.nodes if n.op == "conv2d"] == ["conv1", "conv2"]
    assert graph.outputs[0].name == "probs" and [v.name for v in graph.inputs] == ["x"]


@pytest.mark.parametrize("trans_a, trans_b, alpha, beta, c_shape", [
    (0, 0, 1.0, 1.0, (4,)), (1, 0, 0.5, 2.0, (3, 4)), (0, 1, 1.0, 0.0, (1, 4)), (1, 1, -2.0, 0.25, (3, 1))])
def test_gemm(tmp_path, trans_a, trans_b, alpha, beta, c_shape):
    a_shape, b_shape = (5, 3) if trans_a else (3, 5), (4, 5) if trans_b else (5, 4)
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)
    inits = {"b": RNG.standard_normal(b_shape).astype(np.float32), "c": RNG.standard_normal(c_shape).astype(np.float32)}
    check_against_onnxruntime(_model([node], [("a", list(a_shape))], [("y", [3, 4])], inits), tmp_path)


def test_gemm_with_computed_operands(tmp_path):
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=1, transB=1, alpha=0.5, beta=3.0)
    model = _model([node], [("a", [5, 3]), ("b", [4, 5]), ("c", [4])], [("y", [3, 4])])
    check_against_onnxruntime(model, tmp_path)


@pytest.mark.parametrize("attrs, scales, sizes", [
    ({"mode": "linear"}, [1, 1, 2, 2], None),
    ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, None, [1, 2, 7, 9]),
    ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, [1, 1, 3, 2], None),
    ({"mode": "nearest"}, None, [1, 2, 3, 11]),
    ({"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, [1, 1, 0.5, 0.5], None),
])
def test_resize(tmp_path, attrs, scales, sizes):
    inputs = ["x", "", "scales" if scales else "", "sizes" if sizes else ""]
    inits = {"scales": np.array(scales, np.float32)} if scales else {"sizes": np.array(sizes, np.int64)}
    node = helper.make_node("Resize", inputs, ["y"], **attrs)
    out = sizes or [int(d * s) for d, s in zip([1, 2, 6, 8], scales)]
    graph = check_against_onnxruntime(_model([node], [("x", [1, 2, 6, 8])], [("y", out)], inits), tmp_path)
    assert [n.op for n in graph.nodes if n.op not in ("input", "constant")] == ["resize"]


def test_resize_with_a_fractional_scale_is_reported(tmp_path):
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")
    model = _model([node], [("x", [1, 1, 5, 5])], [("y", None)], {"scales": np.array([1, 1, 0.5, 0.5], np.float32)})
    with pytest.raises(UnsupportedOps, match="whole output sizes"):
        import_model(_save(model, tmp_path))


@pytest.mark.parametrize("mode, scales", [("nearest", [1, 1, 2, 3]), ("linear", [1, 1, 2, 2])])
def test_upsample_opset_9(tmp_path, mode, scales):
    node = helper.make_node("Upsample", ["x", "scales"], ["y"], mode=mode)
    out = [int(d * s) for d, s in zip([1, 2, 3, 4], scales)]
    model = _model([node], [("x", [1, 2, 3, 4])], [("y", out)], {"scales": np.array(scales, np.float32)}, opset=9)
    check_against_onnxruntime(model, tmp_path)


def test_clip_bounds_as_attributes_and_as_computed_inputs(tmp_path):
    old = _model([helper.make_node("Clip", ["x"], ["y"], min=-0.5, max=0.25)], [("x", [3, 4])], [("y", [3, 4])],
                 opset=10)
    check_against_onnxruntime(old, tmp_path)
    new = _model([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], [("x", [3, 4]), ("lo", []), ("hi", [])],
                 [("y", [3, 4])])
    check_against_onnxruntime(new, tmp_path)


def test_softmax_before_opset_13_flattens_to_2d(tmp_path):
    node = helper.make_node("Softmax", ["x"], ["y"], axis=1)
    check_against_onnxruntime(_model([node], [("x", [2, 3, 4, 5])], [("y", [2, 3, 4, 5])], opset=11), tmp_path)


@pytest.mark.parametrize("output_shape, auto_pad", [
    ([3, 28], "NOTSET"), ([2, 25], "NOTSET"), ([2, 24], "SAME_UPPER"), ([2, 26], "SAME_LOWER")])
def test_conv_1d_and_conv_transpose_with_output_shape(tmp_path, output_shape, auto_pad):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[2, 1], dilations=[2]),
             helper.make_node("Unsqueeze", ["c", "axes"], ["c4"]),
             helper.make_node("ConvTranspose", ["c4", "wt"], ["y"], strides=[2, 3], output_shape=output_shape,
                              auto_pad=auto_pad)]
    inits = {"w": RNG.standard_normal((4, 3, 3)).astype(np.float32), "axes": np.array([2], np.int64),
             "wt": RNG.standard_normal((4, 2, 2, 3)).astype(np.float32)}
    check_against_onnxruntime(_model(nodes, [("x", [1, 3, 10])], [("y", None)], inits), tmp_path)


def test_activations_pads_and_slices(tmp_path):
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"),
             helper.make_node("Slice", ["p", "starts", "ends", "axes", "steps"], ["s"]),
             helper.make_node("HardSwish", ["s"], ["h"]),
             helper.make_node("Clip", ["h", "lo", ""], ["c"]),
             helper.make_node("PRelu", ["c", "slope"], ["pr"]),
             helper.make_node("Split", ["pr", "split"], ["a", "b"], axis=1),
             helper.make_node("Mul", ["a", "b"], ["m"]),
             helper.make_node("ReduceMean", ["m"], ["y"], axes=[2, 3], keepdims=0)]
    inits = {"pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), "starts": np.array([-1, 1], np.int64),
             "ends": np.array([-1000, 100], np.int64), "axes": np.array([3, 2], np.int64),
             "steps": np.array([-2, 2], np.int64), "lo": np.array(-0.2, np.float32),
             "slope": RNG.uniform(0, 0.3, (4, 1, 1)).astype(np.float32), "split": np.array([2, 2], np.int64)}
    check_against_onnxruntime(_model(nodes, [("x", [1, 4, 7, 6])], [("y", None)], inits, opset=14), tmp_path)


@pytest.mark.parametrize("attrs", [{}, {"bias": 0.3, "lambd": 0.7}, {"bias": -1.0, "lambd": 0.0}])
def test_shrink(tmp_path, attrs):
    """The worked example of docs/architecture.md: a converter, an op definition and a kernel."""
    nodes = [helper.make_node("Shrink", ["x"], ["y"], **attrs)]
    check_against_onnxruntime(_model(nodes, [("x", [1, 3, 5, 5])], [("y", [1, 3, 5, 5])]), tmp_path)


def test_static_shape_chain_folds_to_constants(tmp_path):
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape: only the reshape is left."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
             helper.make_node("Unsqueeze", ["batch", "axes"], ["batch1"]),
             helper.make_node("Concat", ["batch1", "minus_one"], ["target"], axis=0),
             helper.make_node("Cast", ["target"], ["target64"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["x", "target64"], ["y"])]
    inits = {"zero": np.array(0, np.int64), "axes": np.array([0], np.int64), "minus_one": np.array([-1], np.int64)}
    graph = check_against_onnxruntime(_model(nodes, [("x", [2, 3, 4])], [("y", [2, 12])], inits), tmp_path)
    assert [(n.op, n.name) for n in graph.nodes if n.op != "input"] == [("reshape", "y")]


def test_dynamic_batch_is_read_as_one(tmp_path):
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [("x", ["N", 3])], [("y", ["N", 3])])
    graph = import_model(_save(model, tmp_path))
    assert graph.inputs[0].shape == (1, 3)


# ------------------------------------------------------------------ problems, collected
def test_every_unsupported_op_is_reported(tmp_path):
    """Three unsupported ops, each fed by the previous one, plus an attribute we reject: four problems."""
    nodes = [helper.make_node("TopK", ["x", "k"], ["values", "indices"]),
             helper.make_node("NonMaxSuppression", ["values", "values"], ["selected"]),
             helper.make_node("MadeUpOp", ["selected"], ["made_up"]),
             helper.make_node("Relu", ["made_up"], ["relu"]),  # supported: no report of its own
             helper.make_node("Conv", ["x4", "w"], ["conv"], kernel_shape=[1, 1], made_up_attr=3),
             helper.make_node("Add", ["relu", "conv"], ["y"])]
    model = _model(nodes, [("x", [1, 1, 5]), ("x4", [1, 1, 2, 2])], [("y", None)],
                   {"k": np.array([2], np.int64), "w": np.ones((1, 1, 1, 1), np.float32)})
    path = _save(model, tmp_path)
    with pytest.raises(UnsupportedOps) as e:
        import_model(path)
    assert [(p.op_type, p.node) for p in e.value.problems] == [
        ("TopK", "values"), ("NonMaxSuppression", "selected"), ("MadeUpOp", "made_up"), ("Conv", "conv")]
    assert "made_up_attr=3" in e.value.problems[3].reason
    summary = summarize_model(path)  # reports the same without raising
    assert [p.op_type for p in summary.unsupported] == ["TopK", "NonMaxSuppression", "MadeUpOp", "Conv"]
    assert list(summary.op_histogram) == sorted(summary.op_histogram)
    assert summary.op_histogram["Relu"] == 1 and summary.parameters == 2
    assert summary.format == "onnx" and [i[0] for i in summary.inputs] == ["x", "x4"]


def test_loop_is_reported_with_its_subgraph_left_alone(tmp_path):
    body = helper.make_graph([helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
                             [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                              helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
                             [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])])
    nodes = [helper.make_node("Loop", ["trip", "cond"], [], body=body),
             helper.make_node("Relu", ["x"], ["y"])]
    model = _model(nodes, [("x", [2])], [("y", [2])])
    model.graph.initializer.extend([numpy_helper.from_array(np.array(3, np.int64), "trip"),
                                    numpy_helper.from_array(np.array(True), "cond")])
    with pytest.raises(UnsupportedOps) as e:
        import_model(_save(model, tmp_path))
    assert [p.op_type for p in e.value.problems] == ["Loop"]


def test_old_opsets_are_refused(tmp_path):
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [("x", [2])], [("y", [2])], opset=6)
    with pytest.raises(KpucError, match="opset 6"):
        import_model(_save(model, tmp_path))


# ------------------------------------------------------------------ external data
def _external_model(tmp_path, location):
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value=location)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", [1, 2])], [("y", [1, 3])])
    model.graph.initializer.append(w)
    return model


def test_external_data_inside_the_folder_is_read(tmp_path):
    (tmp_path / "weights.bin").write_bytes(np.arange(6, dtype=np.float32).tobytes())
    graph = import_model(_save(_external_model(tmp_path, "weights.bin"), tmp_path))
    (y,) = run_graph(graph, np.array([[1, 1]], np.float32))
    np.testing.assert_array_equal(y, [[3, 5, 7]])


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin", "/etc/passwd"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(np.zeros(6, np.float32).tobytes())
    path = _save(_external_model(folder, location), folder)
    with pytest.raises(KpucError, match="outside the model's folder"):
        import_model(path)


# ------------------------------------------------------------------ malformed files
@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_malformed_files(tmp_path, damage):
    good = _model([helper.make_node("Relu", ["x"], ["y"])], [("x", [2])], [("y", [2])],
                  {"unused": np.zeros(64, np.float32)}).SerializeToString()
    data = {"truncate": good[:len(good) // 2], "empty": b"", "garbage": b"this is not a protobuf \xff\xfe" * 4}[damage]
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    with pytest.raises(MalformedModel, match="bad.onnx"):
        import_model(path)
    with pytest.raises(MalformedModel, match="bad.onnx"):
        summarize_model(path)
