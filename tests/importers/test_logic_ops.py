"""Comparison, logical, selection and floor-division ops (issue 12, capabilities 4 and 5) on generated
TFLite and ONNX models, against LiteRT and onnxruntime; folded when constant; named by `kpuc check` as
host-only on the K210."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_tflite_ops import Op, T, build, opts, single

from compiler.executor import run_graph
from compiler.importers import import_model

X4 = (1, 5, 7, 3)
ONNX_TYPES = {"float32": TensorProto.FLOAT, "int32": TensorProto.INT32, "int64": TensorProto.INT64,
              "bool": TensorProto.BOOL}


def feed(shape, dtype, rng):
    """Small integers (as floats too), so equal and less-or-equal meet ties; no zero divisors."""
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    a = rng.integers(-4, 5, shape)
    a[a == 0] = 3
    return (a * (0.5 if dtype == "float32" else 1)).astype(dtype)


def assert_same(got, want):
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    if got.dtype == bool or got.dtype.kind == "i":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ TFLite
def litert_vs_kpuc(model: bytes, tmp_path, seed=0):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    it = Interpreter(model_content=model, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    rng = np.random.default_rng(seed)
    feeds = [feed(tuple(d["shape"]), np.dtype(d["dtype"]).name, rng) for d in it.get_input_details()]
    for d, x in zip(it.get_input_details(), feeds):
        it.set_tensor(d["index"], x)
    it.invoke()
    want = [it.get_tensor(d["index"]) for d in it.get_output_details()]
    path = tmp_path / "m.tflite"
    path.write_bytes(model)
    graph = import_model(path)
    got = run_graph(graph, *[x.transpose(0, 3, 1, 2) if x.ndim == 4 else x for x in feeds])
    got = [g.transpose(0, 2, 3, 1) if g.ndim == 4 else g for g in got]
    for g, w in zip(got, want, strict=True):
        assert_same(g, w)
    return graph


TFLITE = {
    **{op: single(op, [X4, (7, 3)], X4, out_dtype="bool") for op in
       ["EQUAL", "NOT_EQUAL", "LESS", "LESS_EQUAL", "GREATER", "GREATER_EQUAL"]},
    "EQUAL-int32": single("EQUAL", [(4, 3), (3,)], (4, 3), in_dtype="int32", out_dtype="bool"),
    **{op: single(op, [X4, (1, 7, 1)], X4, in_dtype="bool", out_dtype="bool") for op in ["LOGICAL_AND", "LOGICAL_OR"]},
    "LOGICAL_NOT": single("LOGICAL_NOT", [X4], X4, in_dtype="bool", out_dtype="bool"),
    "FLOOR_DIV": single("FLOOR_DIV", [X4, (3,)], X4),
    "FLOOR_DIV-int32": single("FLOOR_DIV", [(4, 3), (4, 3)], (4, 3), in_dtype="int32", out_dtype="int32"),
    "FLOOR_MOD": single("FLOOR_MOD", [X4, X4], X4),
    "FLOOR_MOD-int32": single("FLOOR_MOD", [(4, 3), (3,)], (4, 3), in_dtype="int32", out_dtype="int32"),
}


@pytest.mark.parametrize("case", sorted(TFLITE))
def test_tflite_op_matches_litert(case, tmp_path):
    litert_vs_kpuc(TFLITE[case], tmp_path)


@pytest.mark.parametrize("op, cond_shape", [("SELECT_V2", (1, 7, 1)), ("SELECT", X4), ("SELECT", (2,))])
def test_tflite_greater_then_select_matches_litert(op, cond_shape, tmp_path):
    """A score threshold: GREATER on float tensors picks between two others (SELECT v1 takes a row mask)."""
    shape = (2, 4, 3) if cond_shape == (2,) else X4
    tensors = [T("s", cond_shape), T("t", cond_shape), T("x", shape), T("y", shape), T("c", cond_shape, "bool"),
               T("out", shape)]
    ops = [Op("GREATER", ["s", "t"], ["c"]), Op(op, ["c", "x", "y"], ["out"])]
    graph = litert_vs_kpuc(build(tensors, ops, ["s", "t", "x", "y"], ["out"]), tmp_path)
    assert [n.op for n in graph.nodes if n.op not in ("input", "constant", "transpose", "reshape")] == ["compare", "where"]


def test_tflite_float_floor_div_is_div_then_floor(tmp_path):
    graph = litert_vs_kpuc(TFLITE["FLOOR_DIV"], tmp_path)
    assert [n.op for n in graph.nodes if n.op not in ("input", "constant", "transpose")] == ["binary", "unary"]


def test_tflite_constant_comparisons_fold(tmp_path):
    a, b = np.array([1, 2, 3], np.float32), np.array([2, 2, 2], np.float32)
    tensors = [T("x", (3,)), T("a", (3,), data=a), T("b", (3,), data=b), T("c", (3,), "bool"),
               T("zero", (3,), data=np.zeros(3, np.float32)), T("sel", (3,)), T("y", (3,))]
    ops = [Op("LESS_EQUAL", ["a", "b"], ["c"]), Op("SELECT_V2", ["c", "a", "zero"], ["sel"]),
           Op("ADD", ["x", "sel"], ["y"], opts("AddOptions"))]
    graph = litert_vs_kpuc(build(tensors, ops, ["x"], ["y"]), tmp_path)
    assert [n.op for n in graph.nodes if n.op not in ("input", "constant")] == ["binary"]


# ------------------------------------------------------------------ ONNX
def onnx_vs_kpuc(node, inputs, output_dtype, tmp_path, opset=13, initializers=()):
    """One node; inputs are (name, shape, dtype); compared with onnxruntime on seeded small integers.
    A bool input is made in the model as `<name>_f > 0` from a float input (graph inputs are not bool)."""
    masks = [helper.make_node("Greater", [f"{n}_f", "zero"], [n]) for n, _, d in inputs if d == "bool"]
    initializers = {**dict(initializers), **({"zero": np.array(0, np.float32)} if masks else {})}
    inputs = [(f"{n}_f", s, "float32") if d == "bool" else (n, s, d) for n, s, d in inputs]
    graph = helper.make_graph(
        [*masks, node], "g", [helper.make_tensor_value_info(n, ONNX_TYPES[d], s) for n, s, d in inputs],
        [helper.make_tensor_value_info(node.output[0], ONNX_TYPES[output_dtype], None)],
        [numpy_helper.from_array(a, n) for n, a in dict(initializers).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    rng = np.random.default_rng(1)
    feeds = {n: feed(s, d, rng) for n, s, d in inputs}
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    graph = import_model(path)
    got = run_graph(graph, *feeds.values())[0]
    assert_same(got, want.astype("int32") if want.dtype == np.int64 else want)
    return graph


@pytest.mark.parametrize("op", ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"])
def test_onnx_comparison_matches_onnxruntime(op, tmp_path):
    onnx_vs_kpuc(helper.make_node(op, ["a", "b"], ["y"]), [("a", [2, 3, 4], "float32"), ("b", [3, 1], "float32")],
                 "bool", tmp_path)


@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
def test_onnx_logical_matches_onnxruntime(op, tmp_path):
    onnx_vs_kpuc(helper.make_node(op, ["a", "b"], ["y"]), [("a", [2, 3, 4], "bool"), ("b", [4], "bool")], "bool", tmp_path)


def test_onnx_not_and_where_match_onnxruntime(tmp_path):
    onnx_vs_kpuc(helper.make_node("Not", ["a"], ["y"]), [("a", [2, 3], "bool")], "bool", tmp_path)
    onnx_vs_kpuc(helper.make_node("Where", ["c", "x", "y"], ["z"]),
                 [("c", [3, 1], "bool"), ("x", [2, 3, 4], "float32"), ("y", [4], "float32")], "float32", tmp_path)


@pytest.mark.parametrize("dtype, fmod", [("int32", 0), ("int32", 1), ("float32", 1)])
def test_onnx_mod_matches_onnxruntime(dtype, fmod, tmp_path):
    onnx_vs_kpuc(helper.make_node("Mod", ["a", "b"], ["y"], fmod=fmod), [("a", [2, 3, 4], dtype), ("b", [4], dtype)],
                 dtype, tmp_path)


def test_onnx_constant_condition_folds(tmp_path):
    init = {"k": np.array([1, 5, 3], np.float32), "t": np.array(2, np.float32), "zero": np.zeros(3, np.float32)}
    nodes = [helper.make_node("Greater", ["k", "t"], ["mask"]), helper.make_node("Where", ["mask", "k", "zero"], ["kept"]),
             helper.make_node("Mul", ["x", "kept"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(a, n) for n, a in init.items()])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    g = import_model(path)
    assert [n.op for n in g.nodes if n.op not in ("input", "constant")] == ["binary"]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(run_graph(g, x)[0], want)


# ------------------------------------------------------------------ the K210 verdict
def test_check_names_every_comparison_as_host_only(tmp_path):
    """Conv -> Less/Where (a threshold): the conv fits, `kpuc check` lists both selection ops at once."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["f"], pads=[1, 1, 1, 1]),
             helper.make_node("Less", ["f", "t"], ["m"]), helper.make_node("Where", ["m", "zero", "f"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(a, n) for n, a in {
                                  "w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                                  "b": np.zeros(4, np.float32), "t": np.array(0.5, np.float32),
                                  "zero": np.array(0, np.float32)}.items()])
    path = tmp_path / "thr.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    from targets.k210.check import CheckOptions, check_model
    doc = check_model(path, CheckOptions(versions=(4,))).doc
    assert doc["verdict"] == "does_not_fit" and doc["unsupported"] == []
    blockers = doc["versions"][0]["blockers"]
    assert sorted(b["op"] for b in blockers) == ["compare", "where"]
    assert all("no comparison or selection op" in b["reason"] for b in blockers)
