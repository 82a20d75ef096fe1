"""Lowering to kmodel v3: nncase's iris file byte for byte, float layers against the executor, KPU words
against nncase's real files, and one error naming everything v3 cannot express."""
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose

from compiler.errors import KpucError
from compiler.executor import run_graph
from compiler.importers import import_model
from compiler.ir import Graph, TensorType
from compiler.pipeline import optimize_generic
from targets.k210.interpreter_v3 import run_v3
from targets.k210.kmodel_v3 import LayerType, read_v3, write_v3
from targets.k210.lower_v3 import compile_v3, kpu_args, lower_v3

GOLDEN = Path("/work/shared/golden")
IRIS = GOLDEN / "iris-v3"
REAL_V3 = [GOLDEN / "yolo20-v3/yolo.kmodel", Path("/work/shared/kmodels/maixpy_mnist.v3.kmodel"),
           Path("/work/shared/kmodels/maixpy_facedetect.v3.kmodel")]


def iris_cases():
    """(input, nncase's expected output) pairs of the golden set."""
    return [(np.fromfile(p, np.float32).reshape(1, 4),
             np.fromfile(IRIS / "expected" / (p.stem.removeprefix("iris_") + ".out0.bin"), np.float32))
            for p in sorted((IRIS / "inputs").glob("*.f32"))]


# ---- iris: nncase's own file --------------------------------------------------------------------------------

@pytest.mark.parametrize("optimize", [True, False], ids=["optimized", "as-imported"])
def test_iris_is_nncase_s_file_plus_the_tail_padding(optimize):
    graph = import_model(IRIS / "iris.tflite")
    if optimize:
        optimize_generic(graph)
    ours, golden = write_v3(lower_v3(graph)), (IRIS / "iris.kmodel").read_bytes()
    assert ours[:len(golden)] == golden
    assert len(ours) == 440 and ours[len(golden):] == bytes(4)    # nncase forgot the last 4 padding bytes


def test_iris_runs_like_the_float_executor():
    graph = optimize_generic(import_model(IRIS / "iris.tflite"))
    data, summary = compile_v3(graph)
    model = read_v3(data)
    for x, expected in iris_cases():
        got, want = run_v3(model, [x])[0], run_graph(graph, x)[0].reshape(-1)
        np.testing.assert_array_equal(got, expected)              # nncase's outputs, bit for bit
        # The SDK sums in float32 in order, the executor in float64: |diff| <= 1e-6 of the output's scale
        # (iris: at most 3.3e-6 absolute on outputs up to 27, where one float32 ulp is 1.9e-6).
        assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    assert summary == {
        "kmodel_version": 3, "layers": 2, "kpu_layers": 0, "cpu_layers": 2, "layer_types": {"FullyConnected": 2},
        "kpu_ram_peak_bytes": 0, "main_memory_bytes": 56, "file_bytes": 440,
        "input": {"shape": [1, 4], "dtype": "float32"}, "outputs": [{"address": 0, "size": 12}]}
    assert compile_v3(optimize_generic(import_model(IRIS / "iris.tflite")))[0] == data     # deterministic


# ---- float layers -------------------------------------------------------------------------------------------

def _float_graph() -> Graph:
    """FC first (the SDK's entry), then every float CPU layer v3 has, with three outputs."""
    rng = np.random.default_rng(0)
    g = Graph()
    x = g.input("x", TensorType((1, 16)))
    h = g.add("matmul", [x, g.const(rng.normal(size=(16, 64)).astype(np.float32))]).output
    h = g.add("binary", [h, g.const(rng.normal(size=64).astype(np.float32))], op="add").output
    h = g.add("clamp", [h], min=0.0, max=6.0).output                                      # FC + ReLU6
    m = g.add("reshape", [h], shape=(1, 4, 4, 4)).output
    p = g.add("reduce_window2d", [m], op="mean", kernel=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1))).output
    r = g.add("resize", [p], sizes=(1, 4, 4, 4), mode="nearest", coordinate_transformation_mode="asymmetric",
              nearest_mode="floor").output
    t = g.add("transpose", [r], perm=(0, 2, 3, 1)).output                                  # TensorflowFlatten
    t = g.add("reshape", [t], shape=(1, 64)).output
    s = g.add("binary", [t, h], op="add").output
    gap = g.add("reduce", [m], op="mean", axes=(2, 3), keepdims=True).output
    gap = g.add("reshape", [gap], shape=(1, 4)).output
    cat = g.add("concat", [s, gap], axis=1).output
    y1 = g.add("softmax", [cat], axis=1).output
    y2 = g.add("unary", [s], op="sigmoid").output
    y3 = g.add("lp_normalize", [cat], axis=1).output
    g.outputs = [y1, y2, y3]
    return g


def test_float_layers_run_like_the_executor():
    g = _float_graph()
    model = lower_v3(g)
    assert [l.type.name for l in model.layers] == [
        "FullyConnected", "AveragePool2d", "ResizeNearestNeighbor", "TensorflowFlatten", "Add",
        "GlobalAveragePool2d", "Concatenation", "Softmax", "Logistic", "L2Normalization"]
    model = read_v3(write_v3(model))
    for seed in range(3):
        x = np.random.default_rng(seed).normal(size=(1, 16)).astype(np.float32)
        for got, want in zip(run_v3(model, [x]), run_graph(g, x), strict=True):
            assert_allclose(got, want.reshape(-1), rtol=2e-6, atol=2e-6)


def test_unexpressible_ops_are_all_named_at_once():
    g = Graph()
    x = g.input("x", TensorType((1, 8)))
    h = g.add("matmul", [x, g.const(np.ones((8, 8), np.float32))], name="fc").output
    e = g.add("unary", [h], op="exp", name="exp1").output
    m = g.add("reshape", [e], shape=(1, 2, 2, 2)).output
    mp = g.add("reduce_window2d", [m], op="max", kernel=(2, 2), strides=(2, 2), name="maxpool").output
    k = g.add("clamp", [mp], min=-1.0, max=1.0, name="clip").output
    g.outputs = [k]
    with pytest.raises(KpucError) as err:
        lower_v3(g)
    msg = str(err.value)
    assert msg.startswith("kmodel v3 cannot express 3 op(s)") and msg.endswith("Try --kmodel-version 4")
    assert "unary 'exp1'" in msg and "reduce_window2d 'maxpool'" in msg and "clamp 'clip'" in msg
    assert "\n" not in msg


def test_the_first_layer_must_be_one_the_sdk_can_start():
    g = Graph()
    x = g.input("x", TensorType((1, 8)))
    g.outputs = [g.add("softmax", [x], axis=1).output]
    with pytest.raises(KpucError, match="first layer is Softmax.*K210Conv or a FullyConnected.*--kmodel-version 4"):
        lower_v3(g)


# ---- KPU argument words -------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", REAL_V3, ids=lambda p: p.name)
def test_kpu_words_are_nncase_s(path):
    """Every K210Conv of nncase's real files (42 layers) is rebuilt word for word from its parameters."""
    model = read_v3(path.read_bytes())
    convs = [l.body.args for l in model.layers if l.type == LayerType.K210Conv]
    assert convs
    for a in convs:
        ours = kpu_args(a.in_shape, a.o_ch_num + 1, a.kernel, depthwise=a.depthwise, pool_type=a.pool_type,
                        pad_value=a.pad_value, arg_x=a.arg_x, shr_x=a.shr_x, arg_w=a.arg_w, shr_w=a.shr_w,
                        arg_add=a.arg_add, src_row=a.image_src_addr, dst_row=a.image_dst_addr,
                        eight_bit=model.eight_bit)
        assert ours.to_words() == a.to_words()
