"""Two CPU ops the K210 quantizer keeps float in the default flow (targets/k210/quantize.py):

- a CPU conv (here a 5x5 depthwise: the KPU has 1x1 and 3x3 only) whose output channels would keep few levels
  of its one per-tensor weight grid;
- the mul of a map by a squeeze-excite gate (a sigmoid of a pooled vector).

A small generated squeeze-excite block is compiled; the v4 file is compared with onnxruntime, and every
kmodel written under tmp_path also runs in ../shared/oracle (tests/conftest.py)."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from compiler.pipeline import CompileOptions, compile_model, prepare_model
from targets import get_target
from targets.k210.kernels import QuantizedExecutor
from targets.k210.kmodel import read_kmodel, run_kmodel

C, SIZE = 8, 16
UNEVEN = [1, .02, .05, 1, .03, .5, .01, .2]      # depthwise channel scales: 0.01 keeps ~2 of 255 levels


def se_block(path, channel_scales=UNEVEN):
    """x -> 1x1 conv + ReLU -> 5x5 depthwise conv + ReLU = f -> f * sigmoid(conv(relu(conv(mean(f))))) -> 1x1 conv."""
    rng = np.random.default_rng(0)

    def init(name, shape, scale):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)
    wd = rng.standard_normal((C, 1, 5, 5)) * 0.3 * np.asarray(channel_scales).reshape(C, 1, 1, 1)
    inits = [init("w0", (C, 3, 1, 1), 0.5), init("b0", (C,), 0.1), numpy_helper.from_array(wd.astype(np.float32), "wd"),
             init("bd", (C,), 0.05), init("w1", (4, C, 1, 1), 0.5), init("b1", (4,), 0.1),
             init("w2", (C, 4, 1, 1), 0.5), init("b2", (C,), 0.1), init("w3", (4, C, 1, 1), 0.4), init("b3", (4,), 0.1)]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="expand"),
             helper.make_node("Relu", ["c0"], ["r0"], name="r0"),
             helper.make_node("Conv", ["r0", "wd", "bd"], ["d"], name="dw", group=C, pads=[2, 2, 2, 2]),
             helper.make_node("Relu", ["d"], ["f"], name="f"),
             helper.make_node("GlobalAveragePool", ["f"], ["m"], name="squeeze"),
             helper.make_node("Conv", ["m", "w1", "b1"], ["e1"], name="fc1"),
             helper.make_node("Relu", ["e1"], ["e1r"], name="fc1_relu"),
             helper.make_node("Conv", ["e1r", "w2", "b2"], ["e2"], name="fc2"),
             helper.make_node("Sigmoid", ["e2"], ["gate"], name="gate"),
             helper.make_node("Mul", ["f", "gate"], ["g"], name="excite"),
             helper.make_node("Conv", ["g", "w3", "b3"], ["y"], name="project")]
    graph = helper.make_graph(nodes, "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, SIZE, SIZE])],
                              initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def images(n: int, seed: int) -> list[np.ndarray]:
    return [np.random.default_rng(seed + i).uniform(-1, 1, (1, 3, SIZE, SIZE)).astype(np.float32) for i in range(n)]


def cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def onnxruntime_outputs(model, xs) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return [sess.run(None, {"x": x})[0] for x in xs]


OPTS = CompileOptions(input_type="float")


def quantized(model):
    return prepare_model(model, OPTS, get_target("k210"), samples=images(8, seed=1)).quantized


def producer_of(graph, float_value: str):
    return next(n for n in graph.nodes if n.meta.get("float_value") == float_value and n.op != "dequantize_u8")


def test_a_depthwise_conv_with_narrow_channels_stays_float(tmp_path):
    q = quantized(se_block(tmp_path / "se.onnx"))
    assert producer_of(q, "d").op == "conv2d"                      # the 5x5 depthwise (+ ReLU) in float


def test_a_depthwise_conv_with_even_channels_is_quantized(tmp_path):
    q = quantized(se_block(tmp_path / "se.onnx", channel_scales=[1] * C))
    assert producer_of(q, "d").op == "quantized_conv2d"


def test_the_gate_multiplies_in_float(tmp_path):
    q = quantized(se_block(tmp_path / "se.onnx"))
    excite = producer_of(q, "g")
    assert excite.op == "binary" and excite.attrs["op"] == "mul"
    assert all(v.dtype == "float32" for v in excite.inputs)


def test_the_v4_file_agrees_with_onnxruntime(tmp_path):
    """(kmodel v3 has neither a CPU conv nor a mul, uint8 or float: such a block does not lower to v3 at all.)"""
    model = se_block(tmp_path / "se.onnx")
    judged = images(4, seed=20)
    compiled = compile_model(model, OPTS, get_target("k210"), samples=images(8, seed=1))
    (tmp_path / "se_v4.kmodel").write_bytes(compiled.kmodel)
    k = read_kmodel(compiled.kmodel)
    device = QuantizedExecutor(compiled.graph)
    for x, want in zip(judged, onnxruntime_outputs(model, judged)):
        (got,) = run_kmodel(k, [x])
        assert cosine(got, want) > 0.99
        np.testing.assert_allclose(got.reshape(want.shape), device.run([x])[compiled.graph.outputs[0].name],
                                   rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
