"""Datasets for a model with two inputs: a sub-folder per input, or an .npz per sample; `kpuc infer`
against onnxruntime, and `kpuc check` no longer refusing the model for its inputs."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compiler.datasets import iter_feeds, load_feeds
from compiler.errors import KpucError
from compiler.importers import import_model

A, B = (1, 3, 8, 8), (1, 3, 8, 8)


def _two_input_model(path):
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Mul", ["a", "b"], ["m"]),
             helper.make_node("Conv", ["m", "w"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("a", TensorProto.FLOAT, A),
                                             helper.make_tensor_value_info("b", TensorProto.FLOAT, B)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, (1, 4, 8, 8))],
                              [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


@pytest.fixture
def model(tmp_path):
    return _two_input_model(tmp_path / "two.onnx")


def _samples(n=3):
    rng = np.random.default_rng(1)
    return [{"a": rng.uniform(0, 1, A).astype(np.float32), "b": rng.uniform(0, 1, B).astype(np.float32)}
            for _ in range(n)]


def test_folder_per_input_and_npz_give_the_same_feeds(tmp_path, model):
    inputs = import_model(model).inputs
    samples = _samples()
    for k, s in enumerate(samples):
        for name, a in s.items():
            (tmp_path / "folders" / name).mkdir(parents=True, exist_ok=True)
            np.save(tmp_path / "folders" / name / f"{k}.npy", a)
        (tmp_path / "npz").mkdir(exist_ok=True)
        np.savez(tmp_path / "npz" / f"{k}.npz", **s)
    for layout in ("folders", "npz"):
        got = load_feeds(tmp_path / layout, inputs, format="raw")
        assert len(got) == 3
        for g, s in zip(got, samples):
            assert set(g) == {"a", "b"}
            np.testing.assert_array_equal(g["a"], s["a"])
            np.testing.assert_array_equal(g["b"], s["b"])


def test_flat_folder_for_two_inputs_is_refused_with_the_layouts(tmp_path, model):
    (tmp_path / "d").mkdir()
    np.save(tmp_path / "d" / "0.npy", np.zeros(A, np.float32))
    with pytest.raises(KpucError, match="sub-folder per input name or one .npz per sample"):
        list(iter_feeds(tmp_path / "d", import_model(model).inputs, format="raw"))


def test_npz_missing_an_input_names_it(tmp_path, model):
    np.savez(tmp_path / "s.npz", a=np.zeros(A, np.float32))
    with pytest.raises(KpucError, match="no array for input"):
        list(iter_feeds(tmp_path / "s.npz", import_model(model).inputs, format="raw"))


def test_infer_two_inputs_matches_onnxruntime(tmp_path, model):
    import onnxruntime as ort

    from cli import main
    samples = _samples(2)
    (tmp_path / "npz").mkdir()
    for k, s in enumerate(samples):
        np.savez(tmp_path / "npz" / f"s{k}.npz", **s)
    with pytest.raises(SystemExit) as e:
        main(["infer", str(model), str(tmp_path / "out"), "--dataset", str(tmp_path / "npz"), "--dataset-format", "raw"])
    assert e.value.code == 0
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for k, s in enumerate(samples):
        (expected,) = sess.run(None, s)
        got = np.fromfile(tmp_path / "out" / f"s{k}.out0.bin", "<f4").reshape(expected.shape)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_check_and_compile_calibrate_two_inputs(tmp_path, model):
    from compiler.pipeline import CompileOptions, compile_model
    from targets import get_target
    from targets.k210.check import CheckOptions, check_model
    (tmp_path / "cal").mkdir()
    for k, s in enumerate(_samples(2)):
        np.savez(tmp_path / "cal" / f"s{k}.npz", **s)
    doc = check_model(model, CheckOptions(versions=(4,))).doc
    assert "one input" not in str(doc)
    result = compile_model(model, CompileOptions(dataset=str(tmp_path / "cal"), dataset_format="raw"), get_target("k210"))
    assert result.kmodel[:4] == b"LDMK"
