"""The TFLite importer on the sample models: our float executor against LiteRT's reference kernels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_tflite_ops import litert

from compiler.errors import MalformedModel
from compiler.executor import run_graph
from compiler.importers import import_model, summarize_model
from compiler.ir import QuantParam
from shared_data import GOLDEN, MOBILENET, TFLITE_OPS, file_params, glob_params, needs

OPS_DIR = TFLITE_OPS
FLOAT_MODELS = glob_params(OPS_DIR, "*.float32.tflite") + file_params([MOBILENET, OPS_DIR / "mirror-pad.int32.tflite"])
QUANT_MODELS = glob_params(OPS_DIR, "*.uint8.tflite") + file_params([OPS_DIR / "mobilenet_v1_0.25_128_quant.tflite"])
MOBILENET_QUANT = OPS_DIR / "mobilenet_v1_0.25_128_quant.tflite"




def random_inputs(model: Path | bytes, seed: int = 0) -> list[np.ndarray]:
    """Seeded inputs in NHWC: standard normal floats, small ints for integer inputs."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    kw = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    it = Interpreter(**kw, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    rng = np.random.default_rng(seed)
    feeds = []
    for d in it.get_input_details():
        shape, dtype = tuple(d["shape"]), np.dtype(d["dtype"])
        if dtype.kind == "f":
            feeds.append(rng.standard_normal(shape).astype(dtype))
        elif dtype == np.uint8:
            feeds.append(rng.integers(0, 256, shape).astype(dtype))
        else:
            feeds.append(rng.integers(-8, 9, shape).astype(dtype))
    return feeds


def to_nchw(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


def to_nhwc(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def check_against_litert(path: Path, tol: float = 1e-5, seed: int = 0):
    """Import `path`, run both on the same random inputs and compare every output. An exception from
    LiteRT fails the test: a model the oracle cannot run is not a model checked (mark it xfail(strict=True)
    with the reason, per model, if that is ever expected)."""
    feeds = random_inputs(path, seed)
    expected = litert(path, feeds)
    graph = import_model(path)
    got = run_graph(graph, *[to_nchw(a) for a in feeds])
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        g = to_nhwc(g)
        assert g.shape == e.shape
        if e.dtype.kind in "iub":
            np.testing.assert_array_equal(g, e)
        else:
            np.testing.assert_allclose(g, e, rtol=tol, atol=tol)
    return graph


@pytest.mark.parametrize("path", FLOAT_MODELS)
def test_model_matches_litert(path):
    graph = check_against_litert(path)
    for v in graph.inputs + graph.outputs:  # 4-D graph inputs and outputs are NCHW
        assert v.dtype in ("float32", "int32")


@needs(MOBILENET, GOLDEN / "iris-v4" / "iris.tflite")
def test_layouts_of_graph_inputs_and_outputs():
    graph = import_model(OPS_DIR / "mobilenet_v1_0.25_128.tflite")
    assert [v.shape for v in graph.inputs] == [(1, 3, 128, 128)]
    assert [v.shape for v in graph.outputs] == [(1, 1001)]
    iris = import_model(GOLDEN / "iris-v4" / "iris.tflite")
    assert [v.shape for v in iris.inputs] == [(1, 4)]  # rank-2 inputs keep their layout


@needs(MOBILENET)
def test_names_come_from_tensor_names():
    graph = import_model(OPS_DIR / "mobilenet_v1_0.25_128.tflite")
    names = {n.name for n in graph.nodes}
    assert "MobilenetV1/MobilenetV1/Conv2d_0/Relu6" in names
    conv = graph.node("MobilenetV1/MobilenetV1/Conv2d_0/Relu6/conv2d")
    assert conv.op == "conv2d" and conv.attrs["strides"] == (2, 2)
    assert graph.node("MobilenetV1/MobilenetV1/Conv2d_0/Relu6").attrs == {"min": 0.0, "max": 6.0}


@pytest.mark.parametrize("path", QUANT_MODELS)
def test_quantized_model_imports_as_float_with_quant_params(path):
    graph = import_model(path)
    graph.validate()
    assert all(v.dtype == "float32" for v in graph.inputs + graph.outputs)
    assert all(isinstance(v.quant, QuantParam) for v in graph.inputs + graph.outputs)
    convs = graph.nodes_of("conv2d")
    assert convs
    for conv in convs:
        x, w, b = conv.inputs
        assert x.quant is not None and w.quant is not None and b.quant is not None
        assert w.dtype == b.dtype == "float32" and w.is_constant
        assert conv.users()[0].output.quant is not None or conv.output.quant is not None
    uint8_inputs = [d for d in summarize_model(path).inputs if d[2] == "uint8"]
    assert uint8_inputs


@pytest.mark.parametrize("path", QUANT_MODELS)
def test_quantized_model_is_close_to_litert(path):
    """The float graph of a uint8 model tracks the integer model: within one output step for one
    op, a few for MobileNet's 28 layers (float skips the rounding of every intermediate)."""
    feeds = random_inputs(path)
    expected = litert(path, feeds)[0]
    graph = import_model(path)
    qin, qout = graph.inputs[0].quant, graph.outputs[0].quant
    x = (to_nchw(feeds[0]).astype(np.float32) - qin.zero_point) * qin.scale
    got = to_nhwc(run_graph(graph, x)[0])
    want = (expected.astype(np.float32) - qout.zero_point) * qout.scale
    steps = 4 if "mobilenet" in path.name else 1
    np.testing.assert_allclose(got, want, atol=steps * qout.scale)
    assert got.argmax() == want.argmax()


@needs(MOBILENET, MOBILENET_QUANT)
def test_quantized_output_range_becomes_a_clamp():
    """uint8 MobileNet has no fused ReLU6: the [0, 6] output range alone applies it."""
    graph = import_model(OPS_DIR / "mobilenet_v1_0.25_128_quant.tflite")
    relu6 = graph.node("MobilenetV1/MobilenetV1/Conv2d_0/Relu6")
    assert relu6.op == "clamp" and relu6.inputs[0].producer.op == "conv2d"
    assert relu6.attrs["min"] == 0.0 and relu6.attrs["max"] == pytest.approx(6.0, abs=1e-3)
    float_graph = import_model(OPS_DIR / "mobilenet_v1_0.25_128.tflite")
    relu6_names = [n.name for n in float_graph.nodes_of("clamp")]
    assert len(relu6_names) == 27 and set(relu6_names) <= {n.name for n in graph.nodes_of("clamp")}


@needs(MOBILENET_QUANT)
def test_mobilenet_quant_weights_dequantized():
    graph = import_model(OPS_DIR / "mobilenet_v1_0.25_128_quant.tflite")
    first = graph.nodes_of("conv2d")[0]
    w = first.inputs[1]
    assert w.shape == (8, 3, 3, 3) and w.quant.axis is None
    levels = np.round(w.data / w.quant.scale + w.quant.zero_point)
    np.testing.assert_allclose(levels, w.data / w.quant.scale + w.quant.zero_point, atol=1e-3)
    assert levels.min() >= 0 and levels.max() <= 255


@needs(GOLDEN / "iris-v4")
def test_iris_golden():
    folder = GOLDEN / "iris-v4"
    graph = import_model(folder / "iris.tflite")
    inputs = sorted((folder / "inputs").glob("*.f32"))
    assert inputs
    for f in inputs:
        x = np.fromfile(f, dtype="<f4").reshape(1, 4)
        want = np.fromfile(folder / "expected" / (f.stem.removeprefix("iris_") + ".out0.bin"), dtype="<f4")
        got = run_graph(graph, x)[0]
        np.testing.assert_allclose(got.reshape(-1), want, rtol=1e-5, atol=1e-5)


@needs(GOLDEN / "ulffd_landmark-v4" / "ulffd_landmark.tflite")
def test_ulffd_landmark_matches_litert():
    path = GOLDEN / "ulffd_landmark-v4" / "ulffd_landmark.tflite"
    graph = check_against_litert(path)
    assert graph.inputs[0].shape[:2] == (1, 3)


@needs(MOBILENET)
def test_summary_of_mobilenet():
    s = summarize_model(OPS_DIR / "mobilenet_v1_0.25_128.tflite")
    assert s.format == "tflite"
    assert s.inputs == [("input", (1, 128, 128, 3), "float32")]
    assert s.outputs == [("MobilenetV1/Predictions/Reshape_1", (1, 1001), "float32")]
    assert list(s.op_histogram) == sorted(s.op_histogram)
    assert s.op_histogram == {"AVERAGE_POOL_2D": 1, "CONV_2D": 15, "DEPTHWISE_CONV_2D": 13, "RESHAPE": 1,
                              "SOFTMAX": 1}
    assert 400_000 < s.parameters < 600_000  # MobileNet v1 0.25: about 0.47 M parameters
    assert s.unsupported == []


@needs(MOBILENET)
def test_malformed_files(tmp_path):
    good = (OPS_DIR / "mobilenet_v1_0.25_128.tflite").read_bytes()
    cases = {"empty.tflite": b"", "text.tflite": b"this is not a flatbuffer at all",
             "wrong_id.tflite": good[:4] + b"ONNX" + good[8:], "truncated.tflite": good[:len(good) // 2],
             "short.tflite": good[:6]}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(MalformedModel, match=name):
            import_model(path)
        with pytest.raises(MalformedModel, match=name):
            summarize_model(path)
