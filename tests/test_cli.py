"""The `kpuc` command as a user runs it: a subprocess, its exit status, stdout and stderr."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from shared_data import GOLDEN, ROOT, needs

SAMPLE = ROOT / "models" / "digits_cnn.onnx"
DIGITS = ROOT / "models" / "digits"
IRIS = GOLDEN / "iris-v4"


def kpuc(*args, cwd=None):
    return subprocess.run([sys.executable, "-c", "import cli; cli.main()", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or ROOT, timeout=300)


def one_line_error(r):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_info_on_the_sample():
    r = kpuc("info", SAMPLE)
    assert r.returncode == 0, r.stderr
    assert "Conv" in r.stdout and "parameters:" in r.stdout and "unsupported: none" in r.stdout
    doc = json.loads(kpuc("info", SAMPLE, "--json").stdout)
    assert doc["format"] == "onnx" and doc["ops"]["Conv"] >= 1 and doc["unsupported"] == []
    assert doc["parameters"] > 0 and doc["ir_inputs"][0]["shape"] == [1, 1, 16, 16]


def test_infer_on_the_sample_images_matches_onnxruntime(tmp_path):
    import onnxruntime as ort
    from PIL import Image
    r = kpuc("infer", SAMPLE, tmp_path / "out", "--dataset", DIGITS, "--dump-ir", tmp_path / "ir")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ir" / "ir_import.dot").read_text().startswith("digraph")
    session = ort.InferenceSession(str(SAMPLE), providers=["CPUExecutionProvider"])
    images = sorted(DIGITS.glob("*.png"))
    assert images
    correct = 0
    for image in images:
        x = np.asarray(Image.open(image).convert("L"), np.float32)[None, None] / 255
        want = session.run(None, {session.get_inputs()[0].name: x})[0]
        got = np.fromfile(tmp_path / "out" / f"{image.stem}.out0.bin", np.float32)
        np.testing.assert_allclose(got, want.ravel(), rtol=1e-4, atol=1e-5)
        correct += int(got.argmax()) == int(image.stem.split("_")[0].removeprefix("digit"))
    assert correct >= 0.9 * len(images)


@needs(IRIS)
def test_infer_raw_iris_matches_golden_logits(tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    for f in sorted((IRIS / "inputs").glob("*.f32")):
        (ds / f"{f.stem}.bin").write_bytes(f.read_bytes())
    r = kpuc("infer", IRIS / "iris.tflite", tmp_path / "out", "--dataset", ds, "--dataset-format", "raw")
    assert r.returncode == 0, r.stderr
    for f in sorted((IRIS / "inputs").glob("*.f32")):
        want = np.fromfile(IRIS / "expected" / f"{f.stem.removeprefix('iris_')}.out0.bin", np.float32)
        got = np.fromfile(tmp_path / "out" / f"{f.stem}.out0.bin", np.float32)
        assert np.abs(got - want).max() <= 1e-5


def unsupported_model(path: Path) -> Path:
    """A model with three ops kpuc cannot import, among supported ones."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    k = helper.make_tensor("k", TensorProto.INT64, [1], [2])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Hardmax", ["a"], ["b"], name="hardmax_1"),
        helper.make_node("TopK", ["b", "k"], ["c", "ci"], name="topk_1"),
        helper.make_node("Abs", ["c"], ["d"], name="abs"),
        helper.make_node("Einsum", ["d", "x"], ["y"], name="einsum_1", equation="ij,ij->ij"),
    ]
    graph = helper.make_graph(nodes, "bad", [x], [y], initializer=[k])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


def test_unsupported_ops_are_all_listed_in_one_line(tmp_path):
    model = unsupported_model(tmp_path / "bad.onnx")
    (tmp_path / "x.bin").write_bytes(np.zeros(4, np.float32).tobytes())
    for args in (("infer", model, tmp_path / "out", "--dataset", tmp_path / "x.bin", "--dataset-format", "raw"),
                 ("info", model)):
        line = one_line_error(kpuc(*args))
        for name in ("Hardmax", "TopK", "Einsum", "hardmax_1", "topk_1", "einsum_1"):
            assert name in line, line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # -v adds the traceback
    assert "Traceback" in kpuc("-v", "info", model).stderr


def test_malformed_and_missing_models_fail_in_one_line(tmp_path):
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"\x00\x01garbage" * 10)
    assert "broken.tflite" in one_line_error(kpuc("info", bad))
    truncated = tmp_path / "trunc.onnx"
    truncated.write_bytes(SAMPLE.read_bytes()[:100])
    assert "trunc.onnx" in one_line_error(kpuc("info", truncated))
    assert "no such model file" in one_line_error(kpuc("info", tmp_path / "none.onnx"))
    assert "digits_cnn.onnx" in one_line_error(kpuc("info", SAMPLE, "-i", "tflite"))  # wrong -i


def test_raw_dataset_of_the_wrong_size_names_the_file(tmp_path):
    (tmp_path / "short.bin").write_bytes(b"\0" * 12)
    line = one_line_error(kpuc("infer", SAMPLE, tmp_path / "out", "--dataset", tmp_path / "short.bin",
                               "--dataset-format", "raw"))
    assert "short.bin" in line and "1024" in line


def test_a_failed_compile_leaves_no_file_and_keeps_an_old_one(tmp_path):
    model = unsupported_model(tmp_path / "bad.onnx")
    out = tmp_path / "out.kmodel"
    line = one_line_error(kpuc("compile", model, out, "--inference-type", "float"))
    assert "TopK" in line and not out.exists()
    out.write_bytes(b"old")
    assert "--dataset" in one_line_error(kpuc("compile", SAMPLE, out))  # uint8 without calibration data
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx", "out.kmodel"]  # no temporary left


def test_compile_then_infer_the_sample_kmodel(tmp_path):
    out = tmp_path / "digits.kmodel"
    r = kpuc("compile", SAMPLE, out, "--dataset", DIGITS, "--kmodel-version", "3")
    assert r.returncode == 0, r.stderr
    assert "on the KPU" in r.stdout and out.stat().st_size > 0
    assert kpuc("infer", out, tmp_path / "o", "--dataset", DIGITS).returncode == 0
    images = sorted(DIGITS.glob("*.png"))
    correct = sum(int(np.fromfile(tmp_path / "o" / f"{p.stem}.out0.bin", np.float32).argmax())
                  == int(p.stem.split("_")[0].removeprefix("digit")) for p in images)
    assert correct >= 0.9 * len(images)


def _detector(tmp_path, spatial=(4, 4)):
    """Conv -> reshapes -> sigmoid -> NonMaxSuppression, input x [N, 3, *spatial] (symbolic dims allowed)."""
    rng = np.random.default_rng(0)
    init = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "b": np.zeros(4, np.float32),
            "box_shape": np.array([1, -1, 4], np.int64), "score_shape": np.array([1, 4, -1], np.int64),
            "max_out": np.array([5], np.int64), "iou": np.array([0.5], np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["feat"], pads=[1, 1, 1, 1]),
             helper.make_node("Reshape", ["feat", "box_shape"], ["boxes"]),
             helper.make_node("Reshape", ["feat", "score_shape"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["scores"]),
             helper.make_node("NonMaxSuppression", ["boxes", "scores", "max_out", "iou"], ["selected"])]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, *spatial])],
                              [helper.make_tensor_value_info("selected", TensorProto.INT64, None)],
                              [onnx.numpy_helper.from_array(a, n) for n, a in init.items()])
    path = tmp_path / "det.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return path


def test_info_and_check_suggest_the_cut_and_take_it(tmp_path):
    path = _detector(tmp_path)
    r = kpuc("info", path)
    assert r.returncode == 2 and "--output-tensors boxes,scores" in r.stdout, r.stdout
    doc = json.loads(kpuc("check", path, "--format", "json").stdout)
    assert doc["verdict"] == "unsupported" and "--output-tensors boxes,scores" in doc["unsupported"][0]["hint"]
    r = kpuc("info", path, "--output-tensors", "boxes,scores", "--json")
    assert r.returncode == 0, r.stderr
    assert [o["name"] for o in json.loads(r.stdout)["ir_outputs"]] == ["boxes", "scores"]
    r = kpuc("compile", path, tmp_path / "det.kmodel", "--inference-type", "float", "--output-tensors", "boxes,scores")
    assert r.returncode == 0, r.stderr
    assert "no tensor 'box'" in one_line_error(kpuc("info", path, "--output-tensors", "box"))


def test_symbolic_dims_are_pinned_on_the_command_line(tmp_path):
    path = _detector(tmp_path, spatial=("H", "W"))
    line = one_line_error(kpuc("info", path, "--output-tensors", "scores"))
    assert "'x' [N,3,H,W]: dim 2 (H), dim 3 (W)" in line and "--input-shape x=1,3,N,N" in line
    r = kpuc("info", path, "--output-tensors", "scores", "--input-shape", "x=1,3,8,6", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["ir_inputs"][0]["shape"] == [1, 3, 8, 6] and doc["ir_outputs"][0]["shape"] == [1, 4, 48]
    assert "--input-shape" in one_line_error(kpuc("info", path, "--input-shape", "x=1,3,8"))
    assert "--input-shape" in one_line_error(kpuc("info", path, "--input-shape", "x=1;3"))


def test_infer_takes_the_pin_and_the_cut_and_matches_onnxruntime(tmp_path):
    import onnxruntime as ort
    path = _detector(tmp_path, spatial=("H", "W"))
    x = np.random.default_rng(5).standard_normal((1, 3, 6, 5)).astype(np.float32)
    (tmp_path / "data").mkdir()
    x.tofile(tmp_path / "data" / "a.bin")
    r = kpuc("infer", path, tmp_path / "out", "--dataset", tmp_path / "data", "--dataset-format", "raw",
             "--input-shape", "x=1,3,6,5", "--output-tensors", "scores")
    assert r.returncode == 0, r.stderr
    model = onnx.load(str(path))
    model.graph.output.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, None))
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["scores"], {"x": x})[0]
    np.testing.assert_allclose(np.fromfile(tmp_path / "out" / "a.out0.bin", np.float32), want.ravel(), rtol=1e-5, atol=1e-6)


def test_compile_refuses_a_kmodel_over_the_firmware_budget(tmp_path):
    """A kmodel that does not fit --firmware's main memory is one error line, exit 2 and no file;
    --allow-over-budget writes it."""
    out = tmp_path / "d.kmodel"
    args = ["compile", str(ROOT / "models/digits_cnn.onnx"), str(out), "--dataset", str(ROOT / "models/digits"),
            "--firmware", "4096"]
    r = subprocess.run([sys.executable, "-c", "import cli; cli.main()", *args], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and not out.exists()
    assert r.stderr.count("\n") == 1 and "more than the custom budget of 4,096 B" in r.stderr
    r = subprocess.run([sys.executable, "-c", "import cli; cli.main()", *args, "--allow-over-budget"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0 and out.exists()
