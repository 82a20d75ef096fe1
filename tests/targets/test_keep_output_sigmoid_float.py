"""keep_output_sigmoid_float: an output's final sigmoid runs in float, so small probabilities survive.

A small generated detector head (conv + ReLU, then a 1x1 conv to one logit map far below 0, a sigmoid and
a reshape, as YuNet's objectness outputs) gives probabilities of about 1e-4: uint8 over [0, 1] (step 1/255)
would make them all zero. The compiled files (v3 and v4) are compared with onnxruntime; every kmodel
written under tmp_path also runs in ../shared/oracle (tests/conftest.py)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.executor import Executor
from compiler.pipeline import CompileOptions, compile_model, prepare_float, prepare_model
from targets import get_target
from targets.k210.kernels import QuantizedExecutor
from targets.k210.kmodel import read_kmodel, run_kmodel
from targets.k210.passes.keep_output_sigmoid_float import keep_output_sigmoid_float

SIZE = 16


def head(path, *, tail: str = "reshape", logit_bias: float = -11.0):
    """x -> 3x3 conv 8 + ReLU -> 1x1 conv 1 (bias `logit_bias`) -> Sigmoid -> `tail` -> y.
    tail: "reshape" (to [1, H*W, 1], YuNet's layout), "none", or "mul" (a gate inside a network: not an output map)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.4).astype(np.float32), "w0"),
             numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "b0"),
             numpy_helper.from_array((rng.standard_normal((1, 8, 1, 1)) * 0.5).astype(np.float32), "w1"),
             numpy_helper.from_array(np.array([logit_bias], np.float32), "b1"),
             numpy_helper.from_array(np.array([1, SIZE * SIZE, 1], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="c0", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r0"], name="r0"),
             helper.make_node("Conv", ["r0", "w1", "b1"], ["logits"], name="logits"),
             helper.make_node("Sigmoid", ["logits"], ["p" if tail != "none" else "y"], name="prob")]
    out_shape = [1, 1, SIZE, SIZE]
    if tail == "reshape":
        nodes.append(helper.make_node("Reshape", ["p", "shape"], ["y"], name="flat"))
        out_shape = [1, SIZE * SIZE, 1]
    elif tail == "mul":
        inits.append(numpy_helper.from_array(np.float32(2.0), "two"))
        nodes.append(helper.make_node("Mul", ["p", "two"], ["y"], name="gate"))
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def images(n: int, seed: int) -> list[np.ndarray]:
    """Smooth random images in [-1, 1]."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, 1, 3, SIZE + 4, SIZE + 4))
    a = sum(a[..., i:i + SIZE, j:j + SIZE] for i in range(5) for j in range(5)) / 5
    return [np.tanh(x).astype(np.float32) for x in a]


def onnxruntime_outputs(model, xs) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return [sess.run(None, {"x": x})[0] for x in xs]


def cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def sigmoids(graph):
    return [n for n in graph.nodes if n.op == "unary" and n.attrs["op"] == "sigmoid"]


OPTS = CompileOptions(input_type="float")


# ------------------------------------------------------------------ the pass
@pytest.mark.parametrize("tail", ["reshape", "none"])
def test_marks_a_sigmoid_that_only_reaches_an_output(tmp_path, tail):
    graph = prepare_float(head(tmp_path / "h.onnx", tail=tail), OPTS).float_graph
    before = str(graph)
    feeds = images(2, seed=3)
    want = [Executor(graph).run([x]) for x in feeds]
    assert keep_output_sigmoid_float(graph)
    assert [n.name for n in sigmoids(graph) if "stay_float" in n.meta] == ["p" if tail != "none" else "y"]
    assert str(graph) == before                                          # a mark only: same nodes, same function
    for x, w in zip(feeds, want):
        got = Executor(graph).run([x])
        assert all(np.array_equal(got[k], w[k]) for k in w)
    assert not keep_output_sigmoid_float(graph)                          # idempotent


def test_leaves_a_sigmoid_whose_result_is_computed_on(tmp_path):
    graph = prepare_float(head(tmp_path / "h.onnx", tail="mul"), OPTS).float_graph
    assert not keep_output_sigmoid_float(graph)
    assert not any("stay_float" in n.meta for n in graph.nodes)


# ------------------------------------------------------------------ what it buys, in the files
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return head(tmp_path_factory.mktemp("m") / "head.onnx")


def test_the_quantized_graph_computes_the_sigmoid_in_float(model):
    q = prepare_model(model, OPTS, get_target("k210"), samples=images(12, seed=1)).quantized
    (prob,) = sigmoids(q)
    assert prob.inputs[0].producer.op == "dequantize_u8"                 # fed by the uint8 logits
    assert not q.nodes_of("table_lookup1d")
    assert q.nodes_of("kpu_conv2d_q")                                     # the convs stay on the KPU


def test_small_probabilities_survive_in_the_v4_file(model, tmp_path):
    judged = images(6, seed=7)
    want = onnxruntime_outputs(model, judged)
    assert max(float(w.max()) for w in want) < 0.5 / 255                  # all zero on a uint8 [0, 1] grid
    data = compile_model(model, OPTS, get_target("k210"), samples=images(12, seed=1)).kmodel
    (tmp_path / "head_v4.kmodel").write_bytes(data)
    k = read_kmodel(data)
    for x, w in zip(judged, want):
        (got,) = run_kmodel(k, [x])
        assert cosine(got, w) > 0.98


def test_small_probabilities_survive_in_the_v3_file(model, tmp_path):
    judged = images(6, seed=7)
    want = onnxruntime_outputs(model, judged)
    compiled = compile_model(model, CompileOptions(kmodel_version=3), get_target("k210"), samples=images(12, seed=1))
    (tmp_path / "head_v3.kmodel").write_bytes(compiled.kmodel)
    device = QuantizedExecutor(compiled.graph)                            # the v3 arithmetic the file runs
    for x, w in zip(judged, want):
        got = device.run([x])[compiled.graph.outputs[0].name]
        assert cosine(got, w) > 0.98
