"""A small CNN graph run by the Executor with these kernels, against the same network in onnxruntime."""
import numpy as np
import onnxruntime
from numpy.testing import assert_allclose
from onnx import helper, numpy_helper

from compiler.executor import Executor, run_graph
from compiler.ir import Graph, TensorType

TOL = dict(rtol=1e-4, atol=1e-5)


def weights():
    rng = np.random.default_rng(0)
    return dict(w=rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3,
                b=rng.standard_normal(4).astype(np.float32),
                fc=rng.standard_normal((64, 10)).astype(np.float32) * 0.2)


def kpuc_graph(p) -> Graph:
    g = Graph()
    x = g.input("x", TensorType((1, 3, 8, 8)))
    conv = g.add("conv2d", [x, g.const(p["w"], name="w"), g.const(p["b"], name="b")], name="conv",
                 padding=((1, 1), (1, 1)))
    relu6 = g.add("clamp", [conv.output], name="relu6", min=0.0, max=6.0)
    halves = g.add("split", [relu6.output], name="halves", axis=1, sizes=(2, 2))
    pooled = g.add("concat", list(halves.outputs), name="joined", axis=1)
    pool = g.add("reduce_window2d", [pooled.output], name="pool", op="max", kernel=(2, 2), strides=(2, 2))
    flat = g.add("reshape", [pool.output], name="flat", shape=(1, 64))
    fc = g.add("matmul", [flat.output, g.const(p["fc"], name="fc")], name="logits")
    prob = g.add("softmax", [fc.output], name="prob", axis=1)
    g.outputs = [prob.output]
    g.validate()
    return g


def onnx_session(p) -> onnxruntime.InferenceSession:
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["conv", "lo", "hi"], ["relu6"]),
        helper.make_node("MaxPool", ["relu6"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["pool", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["prob"], axis=1),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in
             [("w", p["w"]), ("b", p["b"]), ("fc", p["fc"]), ("lo", np.float32(0)), ("hi", np.float32(6)),
              ("shape", np.array([1, 64], np.int64))]]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", 1, (1, 3, 8, 8))],
                              [helper.make_tensor_value_info(n, 1, None) for n in ("prob", "conv")], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_executor_matches_onnxruntime_and_keeps_intermediates():
    p = weights()
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    g = kpuc_graph(p)
    want_prob, want_conv = onnx_session(p).run(None, {"x": x})

    out = Executor(g).run({"x": x})
    assert list(out) == ["prob"]
    assert_allclose(out["prob"], want_prob, **TOL)

    every = Executor(g).run({"x": x}, keep_all=True)
    assert {"x", "conv", "relu6", "halves:0", "halves:1", "joined", "pool", "flat", "logits", "prob"} <= set(every)
    assert_allclose(every["conv"], want_conv, **TOL)
    assert every["halves:0"].shape == (1, 2, 8, 8) and every["pool"].shape == (1, 4, 4, 4)
    for v in (n.output for n in g.nodes if len(n.outputs) == 1):
        assert every[v.name].shape == v.shape and every[v.name].dtype == v.dtype

    assert_allclose(run_graph(g, x)[0], want_prob, **TOL)
