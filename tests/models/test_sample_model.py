"""The bundled sample model (models/digits_cnn.onnx), its sample images and the script that makes them.

Needs onnxruntime (the `test` extra) and scikit-learn (the `models` extra). The two tests that train
(about two CPU-minutes together, measured with BLAS threads on 2 cores) are marked slow.
"""
from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
ONNX_PATH = MODELS / "digits_cnn.onnx"
DIGITS_DIR = MODELS / "digits"
NAME = re.compile(r"digit(\d)_(\d+)\.png")


def _load_script():
    spec = importlib.util.spec_from_file_location("make_digits_cnn", MODELS / "make_digits_cnn.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return _load_script()


@pytest.fixture(scope="module")
def data(script):
    return script.load_data()


@pytest.fixture(scope="module")
def trained(script, data):
    return script.train(data=data)


def _session() -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(ONNX_PATH), opts, providers=["CPUExecutionProvider"])


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "L" and img.size == (16, 16), f"{path.name}: {img.mode} {img.size}"
        pixels = np.asarray(img, dtype=np.float32)
    return (pixels / 255.0).reshape(1, 1, 16, 16)


def test_sample_images_are_classified():
    files = sorted(DIGITS_DIR.iterdir())
    assert len(files) == 20
    assert all(NAME.fullmatch(p.name) for p in files), "models/digits must hold only digit<label>_<index>.png"
    sess = _session()
    labels = [int(NAME.fullmatch(p.name).group(1)) for p in files]
    assert sorted(set(labels)) == list(range(10))
    preds = [int(sess.run(["logits"], {"input": _read_png(p)})[0].argmax()) for p in files]
    accuracy = np.mean(np.array(preds) == np.array(labels))
    assert accuracy >= 0.9, f"accuracy {accuracy:.2f} on {len(files)} sample images, predictions {preds}"


def test_model_interface():
    model = onnx.load(str(ONNX_PATH))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 13)]
    assert model.producer_name == "kpuc models/make_digits_cnn.py"
    dims = lambda v: [d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert [(v.name, dims(v)) for v in model.graph.input] == [("input", [1, 1, 16, 16])]
    assert [(v.name, dims(v)) for v in model.graph.output] == [("logits", [1, 10])]
    assert [(n.name, n.op_type) for n in model.graph.node] == [
        ("conv1", "Conv"), ("relu1", "Relu"), ("pool1", "MaxPool"),
        ("conv2", "Conv"), ("relu2", "Relu"), ("pool2", "MaxPool"),
        ("conv3", "Conv"), ("relu3", "Relu"), ("gap", "GlobalAveragePool"),
        ("flatten", "Flatten"), ("fc", "Gemm")]
    assert all(t.data_type == onnx.TensorProto.FLOAT for t in model.graph.initializer)


def test_sample_images_are_the_model_inputs(script, data):
    """Each PNG decodes (/255) to exactly the tensor the script feeds the model for that test image."""
    u8, test_idx = data[4], data[6]
    for path in sorted(DIGITS_DIR.iterdir()):
        label, index = map(int, NAME.fullmatch(path.name).groups())
        assert index in test_idx, f"{path.name} is not from the test split"
        assert data[5][index] == label
        np.testing.assert_array_equal(_read_png(path)[0], script.to_input(u8[[index]])[0])


def test_onnx_matches_numpy_forward_on_test_split(script, data):
    x_test, y_test = data[2], data[3]
    params = script.load_onnx_params(ONNX_PATH)
    np_logits = script.predict(params, x_test)
    sess = _session()
    ort_logits = np.concatenate([sess.run(["logits"], {"input": x_test[i:i + 1]})[0] for i in range(len(x_test))])
    np.testing.assert_allclose(ort_logits, np_logits, rtol=0, atol=1e-4)
    ort_acc = np.mean(ort_logits.argmax(1) == y_test)
    assert np.array_equal(ort_logits.argmax(1), np_logits.argmax(1))
    assert ort_acc >= 0.95, f"test accuracy {ort_acc:.4f}"


def test_export_is_byte_identical(script):
    """Exporting the committed weights again gives the committed file, byte for byte."""
    params = script.load_onnx_params(ONNX_PATH)
    assert script.to_onnx(params).SerializeToString(deterministic=True) == ONNX_PATH.read_bytes()


@pytest.mark.slow
def test_training_is_deterministic(script, data, trained):
    again = script.train(data=data)
    assert list(again) == list(trained)
    for name in trained:
        assert again[name].dtype == np.float32
        np.testing.assert_array_equal(again[name], trained[name], err_msg=name)


@pytest.mark.slow
def test_committed_weights_come_from_the_script(script, data, trained):
    """The committed model is what the script trains (not a stale one).

    On the machine that made it the weights are bit-identical. Another CPU's BLAS kernels round
    differently and training is chaotic, so across machines only the behaviour is compared.
    """
    committed = script.load_onnx_params(ONNX_PATH)
    assert {k: v.shape for k, v in committed.items()} == {k: v.shape for k, v in trained.items()}
    x_test, y_test = data[2], data[3]
    pred_committed = script.predict(committed, x_test).argmax(1)
    pred_trained = script.predict(trained, x_test).argmax(1)
    agreement = np.mean(pred_committed == pred_trained)
    acc_committed, acc_trained = np.mean(pred_committed == y_test), np.mean(pred_trained == y_test)
    assert agreement >= 0.97, f"retrained model agrees with the committed one on {agreement:.3f} of the test split"
    assert abs(acc_committed - acc_trained) <= 0.02, (acc_committed, acc_trained)
