"""Damaged and hostile ONNX models built with onnx.helper: each crash class the fuzzer found must
end in one KpucError (MalformedModel, UnsupportedOps or TooLarge) naming what is wrong, fast."""
from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.errors import KpucError, MalformedModel, UnsupportedOps
from compiler.importers import import_model, summarize_model
from compiler.importers.limits import DEFAULT_MAX_ELEMENTS, ENV, TooLarge, max_elements

F = TensorProto.FLOAT


def _save(tmp_path, nodes, inputs, outputs, inits=(), opset=13, name="m.onnx"):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
                          [helper.make_tensor_value_info(n, F, None) for n in outputs],
                          [numpy_helper.from_array(np.asarray(a), n) for n, a in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    path = tmp_path / name
    path.write_bytes(m.SerializeToString())
    return path


def _proto(path) -> onnx.ModelProto:
    return onnx.ModelProto.FromString(path.read_bytes())


def _rewrite(path, m):
    path.write_bytes(m.SerializeToString())
    return path


def _fails(path, match, kind=KpucError):
    with pytest.raises(kind, match=match):
        import_model(path)


def test_a_sane_model_still_imports(tmp_path):
    path = _save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 4])], ["y"])
    assert [v.shape for v in import_model(path).outputs] == [(1, 4)]


@pytest.mark.parametrize("opset,match", [(99, "opsets 7 to"), (6, "opset 7 and later")])
def test_opsets_outside_the_known_range_are_refused(tmp_path, opset, match):
    path = _save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [("x", [4])], ["y"], opset=opset)
    _fails(path, match)


def test_two_producers_of_one_tensor(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Sigmoid", ["x"], ["y"])]
    _fails(_save(tmp_path, nodes, [("x", [4])], ["y"]), "exactly one producer", MalformedModel)


def test_node_overwriting_a_graph_input(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["x"])]
    _fails(_save(tmp_path, nodes, [("x", [4])], ["x"]), "one producer", MalformedModel)


def test_duplicate_graph_inputs_and_outputs(tmp_path):
    path = _save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [("x", [4])], ["y"])
    m = _proto(path)
    m.graph.output.append(m.graph.output[0])
    _fails(_rewrite(path, m), "graph output 'y' is declared twice", MalformedModel)
    m = _proto(_save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [("x", [4])], ["y"]))
    m.graph.input.append(m.graph.input[0])
    _fails(_rewrite(path, m), "graph input 'x' is declared twice", MalformedModel)


def test_non_utf8_op_type_is_refused_in_import_and_summary(tmp_path):
    path = _save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [("x", [4])], ["y"])
    raw = path.read_bytes().replace(b"Relu", b"Rel\xff")
    path.write_bytes(raw)
    _fails(path, "not UTF-8", MalformedModel)
    with pytest.raises(MalformedModel):
        summarize_model(path)


def test_unknown_initializer_dtype(tmp_path):
    path = _save(tmp_path, [helper.make_node("Add", ["x", "c"], ["y"])], [("x", [2])], ["y"],
                 [("c", np.ones(2, np.float32))])
    m = _proto(path)
    m.graph.initializer[0].data_type = 99
    _fails(_rewrite(path, m), "data type 99", MalformedModel)


def test_unknown_input_dtype(tmp_path):
    path = _save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [("x", [4])], ["y"])
    m = _proto(path)
    m.graph.input[0].type.tensor_type.elem_type = 33
    _fails(_rewrite(path, m), "element type 33", MalformedModel)


@pytest.mark.parametrize("attr,value,match", [
    ("strides", [0, 1], "strides=.*at least 1"),
    ("dilations", [1, 0], "dilations=.*at least 1"),
    ("kernel_shape", [0, 3], "kernel_shape=.*at least 1"),
    ("group", 0, "group=.*at least 1"),
    ("pads", [-1, 0, 0, 0], "must not be negative"),
])
def test_conv_attributes_out_of_range(tmp_path, attr, value, match):
    kw = {"kernel_shape": [3, 3], attr: value}
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], **kw)]
    path = _save(tmp_path, nodes, [("x", [1, 1, 8, 8])], ["y"], [("w", np.ones((1, 1, 3, 3), np.float32))])
    _fails(path, match, UnsupportedOps)


def test_graph_where_a_list_is_expected(tmp_path):
    path = _save(tmp_path, [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2])], [("x", [1, 1, 4, 4])], ["y"])
    m = _proto(path)
    a = m.graph.node[0].attribute[0]
    a.type = onnx.AttributeProto.GRAPH
    a.g.name = "sub"
    _fails(_rewrite(path, m), "kernel_shape is of kind GRAPH", UnsupportedOps)


def test_undefined_attribute_kind(tmp_path):
    path = _save(tmp_path, [helper.make_node("Softmax", ["x"], ["y"], axis=1)], [("x", [1, 4])], ["y"])
    m = _proto(path)
    m.graph.node[0].attribute[0].type = onnx.AttributeProto.UNDEFINED
    _fails(_rewrite(path, m), "attribute axis", UnsupportedOps)


def test_slice_v1_int64_max_ends_still_import(tmp_path):
    nodes = [helper.make_node("Slice", ["x"], ["y"], starts=[1], ends=[2**63 - 1], axes=[1])]
    path = _save(tmp_path, nodes, [("x", [1, 4])], ["y"], opset=9)
    assert import_model(path).outputs[0].shape == (1, 3)


def test_split_sizes_of_rank_two_and_axis_given_as_a_list(tmp_path):
    nodes = [helper.make_node("Split", ["x", "s"], ["a", "b"], axis=1)]
    path = _save(tmp_path, nodes, [("x", [1, 4])], ["a", "b"], [("s", np.array([[2], [2]], np.int64))])
    assert [v.shape for v in import_model(path).outputs] == [(1, 2), (1, 2)]
    m = _proto(path)
    a = m.graph.node[0].attribute[0]
    a.type, a.ints[:] = onnx.AttributeProto.INTS, [1, 1]
    _fails(_rewrite(path, m), "attribute axis is INTS", UnsupportedOps)


def test_cast_to_an_unknown_data_type(tmp_path):
    nodes = [helper.make_node("Cast", ["x"], ["y"], to=16777216)]
    _fails(_save(tmp_path, nodes, [("x", [4])], ["y"]), "to=16777216 is not an ONNX data type", UnsupportedOps)


@pytest.mark.parametrize("code,name", [(0, "UNDEFINED"), (8, "STRING")])
def test_cast_to_a_type_with_no_array_form(tmp_path, code, name):
    """UNDEFINED is in the enum but has no numpy type: the fuzzer found it once as an internal error."""
    nodes = [helper.make_node("Cast", ["x"], ["y"], to=code)]
    _fails(_save(tmp_path, nodes, [("x", [4])], ["y"]), name, UnsupportedOps)


def test_axes_and_scales_of_the_wrong_rank(tmp_path):
    nodes = [helper.make_node("Squeeze", ["x", "a"], ["y"])]
    path = _save(tmp_path, nodes, [("x", [1, 4, 1])], ["y"], [("a", np.array([[0, 2], [0, 2]], np.int64))])
    _fails(path, "is not one integer", UnsupportedOps)
    nodes = [helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest")]
    path = _save(tmp_path, nodes, [("x", [1, 1, 2, 2])], ["y"], [("s", np.array([[1, 1], [2, 2]], np.float32))])
    assert import_model(path).outputs[0].shape == (1, 1, 4, 4)


def test_nan_float_attribute(tmp_path):
    nodes = [helper.make_node("LeakyRelu", ["x"], ["y"], alpha=float("nan"))]
    _fails(_save(tmp_path, nodes, [("x", [4])], ["y"]), "alpha=nan is not a finite number", UnsupportedOps)


def test_nan_resize_scales(tmp_path):
    nodes = [helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest")]
    path = _save(tmp_path, nodes, [("x", [1, 1, 2, 2])], ["y"], [("s", np.array([1, 1, np.inf, 2], np.float32))])
    _fails(path, "not a positive finite number", UnsupportedOps)


def test_nan_weights(tmp_path):
    nodes = [helper.make_node("Add", ["x", "c"], ["y"])]
    path = _save(tmp_path, nodes, [("x", [2])], ["y"], [("c", np.array([1, np.nan], np.float32))])
    _fails(path, "NaN", MalformedModel)


@pytest.mark.parametrize("op,inputs", [("Conv", ["", "w"]), ("Add", ["x", ""]), ("Concat", ["x", ""]),
                                       ("Reshape", ["x", ""]), ("Gemm", ["", "w"])])
def test_required_input_written_as_empty_string(tmp_path, op, inputs):
    attrs = {"axis": 0} if op == "Concat" else {}
    nodes = [helper.make_node(op, inputs, ["y"], **attrs)]
    path = _save(tmp_path, nodes, [("x", [1, 1, 4, 4])], ["y"], [("w", np.ones((1, 1, 1, 1), np.float32))])
    _fails(path, "required input or attribute missing", UnsupportedOps)


def test_external_data_outside_its_file(tmp_path):
    (tmp_path / "w.bin").write_bytes(bytes(16))
    path = _save(tmp_path, [helper.make_node("Add", ["x", "c"], ["y"])], [("x", [4])], ["y"],
                 [("c", np.ones(4, np.float32))])
    for offset, length in (("-4", "16"), ("0", "1000000"), ("12", "16"), ("x", "16")):
        m = _proto(path)
        t = m.graph.initializer[0]
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        for k, v in (("location", "w.bin"), ("offset", offset), ("length", length)):
            e = t.external_data.add()
            e.key, e.value = k, v
        _fails(_rewrite(path, m), "external data", MalformedModel)


def test_external_data_path_traversal_still_refused(tmp_path):
    path = _save(tmp_path, [helper.make_node("Add", ["x", "c"], ["y"])], [("x", [4])], ["y"],
                 [("c", np.ones(4, np.float32))])
    m = _proto(path)
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", "../../etc/passwd"
    _fails(_rewrite(path, m), "outside the model's folder")


# ------------------------------------------------------------------ the element limit
def test_limit_default_and_environment(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert max_elements() == DEFAULT_MAX_ELEMENTS == 1 << 26
    monkeypatch.setenv(ENV, "123")
    assert max_elements() == 123
    monkeypatch.setenv(ENV, "lots")
    with pytest.raises(KpucError, match="not an integer"):
        max_elements()


def test_huge_input_is_refused_before_anything_is_built(tmp_path):
    path = _save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], [("x", [1, 1000, 1000, 1000])], ["y"])
    _fails(path, "input 'x'.*1,000,000,000 elements", TooLarge)


@pytest.mark.parametrize("node,inits", [
    (helper.make_node("Tile", ["x", "r"], ["y"]), [("r", np.array([1, 16777216 * 4], np.int64))]),
    (helper.make_node("Expand", ["x", "s"], ["y"]), [("s", np.array([100000, 100000, 4], np.int64))]),
])
def test_bombs_fail_fast_naming_the_node(tmp_path, node, inits):
    path = _save(tmp_path, [node], [("x", [1, 4])], ["y"], inits)
    start = time.monotonic()
    _fails(path, "node 'y'.*over kpuc's limit", TooLarge)
    assert time.monotonic() - start < 5


def test_tile_by_millions_under_the_limit_is_refused_fast(tmp_path):
    path = _save(tmp_path, [helper.make_node("Tile", ["x", "r"], ["y"])], [("x", [1, 1])], ["y"],
                 [("r", np.array([1, 16777216], np.int64))])
    start = time.monotonic()
    _fails(path, "at most 4096 per axis", UnsupportedOps)
    assert time.monotonic() - start < 5


def test_constant_of_shape_and_range_bombs(tmp_path):
    path = _save(tmp_path, [helper.make_node("ConstantOfShape", ["s"], ["z"]), helper.make_node("Add", ["x", "z"], ["y"])],
                 [("x", [1])], ["y"], [("s", np.array([100000, 100000], np.int64))])
    _fails(path, "ConstantOfShape output", TooLarge)
    path = _save(tmp_path, [helper.make_node("Range", ["a", "b", "c"], ["y"])], [], ["y"],
                 [("a", np.array(0.0, np.float32)), ("b", np.array(1e12, np.float32)), ("c", np.array(1.0, np.float32))])
    _fails(path, "Range output", TooLarge)


def test_limit_can_be_raised(tmp_path, monkeypatch):
    path = _save(tmp_path, [helper.make_node("Tile", ["x", "r"], ["y"])], [("x", [1, 4])], ["y"],
                 [("r", np.array([1, 8], np.int64))])
    monkeypatch.setenv(ENV, "16")
    _fails(path, "limit of 16", TooLarge)
    monkeypatch.setenv(ENV, "64")
    assert import_model(path).outputs[0].shape == (1, 32)


def test_huge_initializer_dims_without_data(tmp_path):
    path = _save(tmp_path, [helper.make_node("Add", ["x", "c"], ["y"])], [("x", [2])], ["y"],
                 [("c", np.ones(2, np.float32))])
    m = _proto(path)
    m.graph.initializer[0].dims[:] = [1 << 20, 1 << 20]
    _fails(_rewrite(path, m), "over kpuc's limit", TooLarge)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
def test_a_pool_window_of_millions_is_refused_before_padding(tmp_path, op):
    """A fuzzed TFLite AVERAGE_POOL_2D filter width of 67,108,866 (SAME padding to match) made the kernel pad
    a 4x8 map to ~540M values: 1.9 GB and minutes. The padded input is checked against the element limit."""
    nodes = [helper.make_node(op, ["x"], ["y"], kernel_shape=[2, 1 << 26], strides=[2, 2], auto_pad="SAME_UPPER")]
    _fails(_save(tmp_path, nodes, [("x", [1, 2, 4, 8])], ["y"]), "padded input.*over kpuc's limit")
