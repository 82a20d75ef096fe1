"""equalize_kpu_depthwise_inputs: the channels an expansion KPU conv hands to a depthwise KPU conv are scaled to
one range, the depthwise weights down by as much; the float function is unchanged (executor before/after)."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.calibration import channel_absmax
from compiler.pipeline import CompileOptions, compile_model, prepare_model
from targets import get_target
from targets.k210.kernels import QuantizedExecutor
from targets.k210.kmodel import read_kmodel, run_kmodel
from targets.k210.passes.equalize_kpu_depthwise_inputs import MIN_SCALE, equalizable, equalize_kpu_depthwise_inputs

RELU = (("clamp", 0.0, float("inf")),)
SAMPLES = [np.random.default_rng(s).standard_normal((1, 4, 8, 8)).astype(np.float32) for s in range(3)]


def expansion_block(kpu, activation=RELU, second_user=False, depthwise=True):
    """x -> 1x1 kpu conv to 6 channels (5 of them 10-50x narrower than the first) -> 3x3 kpu conv -> y."""
    g, (x,) = kpu.graph_with_inputs((1, 4, 8, 8))
    a = kpu.kpu_conv(g, x, 6, 1, name="expand", activation=activation)
    w, b = a.producer.inputs[1:]
    w.data = w.data * np.array([1, .03, .05, .02, .04, .1], np.float32).reshape(6, 1, 1, 1)
    b.data = b.data * np.float32(0.01)
    y = kpu.kpu_conv(g, a, 6, 3, depthwise=depthwise, name="dw", seed=5, activation=RELU)
    outs = [y, kpu.op(g, "unary", a, op="abs")] if second_user else [y]
    return kpu.finish(g, *outs)


def equalize(graph):
    """The pass as the K210 target runs it: channel maxima measured on samples first."""
    names = [a.name for a, _ in equalizable(graph)]
    return equalize_kpu_depthwise_inputs(graph, channel_max=channel_absmax(graph, SAMPLES, names))


@pytest.mark.parametrize("activation", [RELU, ()])
def test_expansion_channels_share_one_range_and_the_function_stays(kpu, activation):
    g = kpu.check_rewrite(equalize, expansion_block(kpu, activation))
    r = channel_absmax(g, SAMPLES, ["expand"])["expand"]
    assert r.max() / r.min() < MIN_SCALE                 # before: 10-50x apart
    assert "equalized" in g.node("expand").meta


@pytest.mark.parametrize("case", ["relu6", "second_user", "dense"])
def test_near_misses_are_left_alone(kpu, case):
    g = expansion_block(kpu, activation=(("clamp", 0.0, 6.0),) if case == "relu6" else RELU,
                        second_user=case == "second_user", depthwise=case != "dense")
    kpu.check_untouched(equalize, g)


def expansion_onnx(path):
    """x -> 1x1 conv 3->12 + ReLU (channels 1x..50x apart) -> 3x3 depthwise + ReLU -> 1x1 conv 12->4 -> y."""
    rng = np.random.default_rng(0)
    scales = np.geomspace(1, 0.02, 12).reshape(12, 1, 1, 1)
    arrays = {"w0": rng.standard_normal((12, 3, 1, 1)) * scales, "b0": rng.standard_normal(12) * 0.1 * scales.ravel(),
              "wd": rng.standard_normal((12, 1, 3, 3)) * 0.3, "bd": rng.standard_normal(12) * 0.01,
              "w1": rng.standard_normal((4, 12, 1, 1)) * 0.3, "b1": rng.standard_normal(4) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="expand"),
             helper.make_node("Relu", ["c0"], ["r0"], name="r0"),
             helper.make_node("Conv", ["r0", "wd", "bd"], ["d"], name="dw", group=12, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["d"], ["r1"], name="r1"),
             helper.make_node("Conv", ["r1", "w1", "b1"], ["y"], name="project")]
    graph = helper.make_graph(nodes, "expansion", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
                              initializer=[numpy_helper.from_array(a.astype(np.float32), k) for k, a in arrays.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


@pytest.mark.parametrize("version", [4, 3])
def test_the_compiled_files_agree_with_onnxruntime(tmp_path, version):
    """The default flow equalizes the block; both kmodel versions still compute the ONNX model (every kmodel
    written under tmp_path also runs in ../shared/oracle: tests/conftest.py)."""
    model = expansion_onnx(tmp_path / "e.onnx")
    rng = np.random.default_rng(9)
    calibration = [rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32) for _ in range(8)]
    judged = [rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32) for _ in range(4)]
    opts = CompileOptions(kmodel_version=version, input_type="float" if version == 4 else "default")
    legalized = prepare_model(model, opts, get_target("k210"), samples=calibration).legalized
    assert any("equalized" in n.meta for n in legalized.nodes)
    compiled = compile_model(model, opts, get_target("k210"), samples=calibration)
    (tmp_path / f"e_v{version}.kmodel").write_bytes(compiled.kmodel)
    k, device = read_kmodel(compiled.kmodel), QuantizedExecutor(compiled.graph)   # v3: the arithmetic the file runs
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for x in judged:
        want = sess.run(None, {"x": x})[0]
        got = run_kmodel(k, [x])[0] if version == 4 else device.run([x])[compiled.graph.outputs[0].name]
        got = np.ravel(got).astype(np.float64)
        assert got @ want.ravel() / (np.linalg.norm(got) * np.linalg.norm(want)) > 0.99
