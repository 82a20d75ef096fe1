"""The command line's one error path: usage mistakes, bad option values, unwritable outputs and
hostile names all give exactly one `kpuc: error:` line and exit 2; a killed compile leaves no
partial or temp file and never damages an existing output."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "models" / "digits_cnn.onnx"
KPUC = [sys.executable, "-c", "import cli; cli.main()"]


def kpuc(*args, env=None, timeout=120):
    return subprocess.run(KPUC + [str(a) for a in args], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env=env)


class Ran:
    """What an in-process `cli.main(argv)` left: exit status, stdout, stderr."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run(capsys, monkeypatch):
    """cli.main in this process (no interpreter start-up): for the checks that need no isolation."""
    import cli
    monkeypatch.chdir(ROOT)

    def go(*args):
        capsys.readouterr()
        cli.VERBOSE["on"] = False
        try:
            cli.main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            cli.VERBOSE["on"] = False
        out = capsys.readouterr()
        return Ran(code, out.out, out.err)
    return go


def one_error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("kpuc: error: "), r.stderr
    return lines[0]


def _relu_model(path, in_name="x", out_name="y", op="Relu"):
    g = helper.make_graph([helper.make_node(op, [in_name], [out_name], name=out_name)], "g",
                          [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    return path


@pytest.mark.parametrize("args,match", [
    (["info", "."], "is a directory"),
    (["compile", DIGITS, "."], "is a directory"),
    (["compile", DIGITS, "x.kmodel", "--bogus"], "No such option"),
    (["compile", DIGITS, "x.kmodel", "--kmodel-version", "5"], "'5' is not one of"),
    (["check", DIGITS, "--firmware", "lots"], "--firmware"),
    (["compile", DIGITS, "x.kmodel", "--input-std", "nan"], "not a finite number"),
    (["compile", DIGITS, "x.kmodel", "--input-mean", "inf"], "not a finite number"),
    (["compile", DIGITS, "x.kmodel", "--input-std", "0"], "must not be 0"),
    (["compile", DIGITS, "x.kmodel", "--weights-quantize-threshold", "nan"], "not a finite number"),
    (["check", DIGITS, "--weights-quantize-threshold", "-1"], "must be above 0"),
    (["compile", DIGITS, "x.kmodel", "--output-quantize-threshold", "-5"], "output-quantize-threshold"),
    (["compile", DIGITS, "x.kmodel", "--split-activations", "1000000"], "split-activations"),
    (["--max-elements", "0", "info", DIGITS], "max-elements"),
    (["nosuchcommand"], "No such command"),
])
def test_usage_errors_are_one_line(run, args, match):
    line = one_error_line(run(*args))
    assert match in line and "Usage:" not in line


def test_missing_and_read_only_output_folders(run, tmp_path, monkeypatch):
    line = one_error_line(run("compile", DIGITS, tmp_path / "no" / "such" / "x.kmodel", "--inference-type", "float"))
    assert "does not exist" in line
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):   # root writes anyway: let the access check see the mode bits, as for a user
            real = os.access
            monkeypatch.setattr(os, "access", lambda p, mode, *a, **k:
                                mode & os.W_OK == 0 and real(p, mode, *a, **k) if Path(p) == ro else real(p, mode, *a, **k))
        line = one_error_line(run("compile", DIGITS, ro / "x.kmodel", "--inference-type", "float"))
        assert "not writable" in line
    finally:
        ro.chmod(0o755)


def test_read_only_output_folder_through_write_atomic(tmp_path, monkeypatch):
    """The same refusal where the write happens (root ignores mode bits, so fake the access check)."""
    import cli
    from compiler.errors import KpucError
    monkeypatch.setattr(os, "access", lambda p, mode: False)
    with pytest.raises(KpucError, match="not writable"):
        cli.write_atomic(tmp_path / "x.bin", b"data")
    assert list(tmp_path.iterdir()) == []


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path):
    import cli
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    cli.write_atomic(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
    assert (target.stat().st_mode & 0o777) == 0o644


def test_control_characters_in_names_are_escaped(run, tmp_path):
    path = _relu_model(tmp_path / "m.onnx", out_name="y\n\x1b[31mred", op="NoSuchOp")
    r = run("info", path)
    line = one_error_line(r)
    assert "\\n" in line and "\\x1b" in line and "\x1b" not in r.stderr


def test_long_unsupported_list_is_cut_and_full_under_verbose(run, tmp_path):
    names = [f"t{k}" for k in range(60)]
    nodes = [helper.make_node("NoSuchOp", [a], [b], name=f"very_long_node_name_{k:03d}")
             for k, (a, b) in enumerate(zip(["x"] + names, names))]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info(names[-1], TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "many.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    line = one_error_line(run("compile", path, tmp_path / "o.kmodel", "--inference-type", "float"))
    assert len(line) < 500 and "… and " in line and "more" in line
    verbose = run("compile", path, tmp_path / "o.kmodel", "--inference-type", "float", "-v")
    assert verbose.returncode == 2 and "very_long_node_name_059" in verbose.stderr
    check = run("check", path, "--format", "json")
    assert "very_long_node_name_059" in check.stdout


def test_element_limit_flag_and_environment(run, tmp_path, monkeypatch):
    path = _relu_model(tmp_path / "m.onnx")
    monkeypatch.setenv("KPUC_MAX_ELEMENTS", "3")  # also restores the variable --max-elements sets
    assert "KPUC_MAX_ELEMENTS" in one_error_line(run("info", path))
    monkeypatch.setenv("KPUC_MAX_ELEMENTS", "4")
    assert run("info", path).returncode == 0
    assert "over kpuc's limit of 3" in one_error_line(run("--max-elements", "3", "info", path))


def test_check_on_a_billion_element_input_answers_fast(tmp_path):
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1000, 1000, 1000])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "big.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), path)
    start = time.monotonic()
    r = kpuc("check", path, timeout=60)
    assert time.monotonic() - start < 30
    assert r.returncode in (1, 2) and "limit" in (r.stderr + r.stdout)


def test_shared_fuzz_repro_onnx_files_answer_cleanly(run):
    """A sample of the fuzz-repro corpus (the full run is the scoreboard's `robust` group)."""
    fuzz = Path(os.environ.get("KPUC_SHARED") or ROOT.parent / "shared") / "fuzz-repro"
    files = sorted(fuzz.glob("onnx*.onnx"))[:12] + sorted(fuzz.glob("tflite*.tflite"))
    if not files:
        pytest.skip("../shared/fuzz-repro not present")
    for f in files:
        r = run("info", f)
        lines = r.stderr.strip().splitlines()
        assert r.returncode in (0, 1) or (r.returncode == 2 and len(lines) == 1), (f.name, r.stderr)


# ------------------------------------------------------------------ killed compiles
@pytest.mark.slow
def test_killed_compile_leaves_no_partial_or_temp_file(tmp_path):
    """SIGTERM, SIGINT and SIGKILL at seeded random moments of `kpuc compile` over an existing output."""
    reference = tmp_path / "reference.kmodel"
    assert kpuc("compile", DIGITS, reference, "--inference-type", "float").returncode == 0
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "model.kmodel"
    target.write_bytes(b"previous kmodel, must survive")
    rng = random.Random(20261206)
    signals = [signal.SIGTERM, signal.SIGINT, signal.SIGKILL]
    budget = time.monotonic() + 50
    runs = 0
    while runs < 21 and time.monotonic() < budget:
        sig = signals[runs % 3]
        p = subprocess.Popen(KPUC + ["compile", str(DIGITS), str(target), "--inference-type", "float"],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, 1.6))
        p.send_signal(sig)
        p.wait(timeout=60)
        runs += 1
        names = sorted(x.name for x in out_dir.iterdir())
        assert names == ["model.kmodel"], (sig, names)
        data = target.read_bytes()
        if data != b"previous kmodel, must survive":  # the compile finished before the signal
            assert data == reference.read_bytes()
            target.write_bytes(b"previous kmodel, must survive")
    assert runs >= 20


@pytest.mark.parametrize("command", ["check", "compile"])
def test_a_tensor_no_k210_can_hold_is_refused_before_calibration(run, tmp_path, command):
    """A fuzzed ConvTranspose stride (2 x 2^20) makes a 25M-value tensor: it once ran calibration for
    minutes (a fuzz hang), and a float compile wrote a kmodel no K210 can load. Both must refuse it as not
    fitting before any calibration, naming the tensor and the limit."""
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["c"], kernel_shape=[2, 2], strides=[2, 1 << 20]),
             helper.make_node("Sigmoid", ["c"], ["y"])]
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 1, 2, 2], [0.5] * 8)
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = tmp_path / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), model)
    if command == "check":
        r = run("check", model)
        assert r.returncode == 1 and "8,388,608 bytes of SRAM" in r.stdout and "tensor 'c'" in r.stdout
    else:
        r = run("compile", model, tmp_path / "big.kmodel", "--inference-type", "float")
        line = one_error_line(r)
        assert "tensor 'c'" in line and "8,388,608" in line
        assert not (tmp_path / "big.kmodel").exists()


def _save_onnx(path, nodes, inits, shape=(1, 2, 4, 4)):
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_a_bias_beyond_the_kpu_batch_norm_is_a_model_error(run, tmp_path):
    """A fuzzed bias of -2.8e38 once overflowed an int64 inside quantization (exit 3)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [2, 2, 3, 3], [0.1] * 36)
    b = helper.make_tensor("b", TensorProto.FLOAT, [2], [0.5, -2.8e38])
    model = _save_onnx(tmp_path / "bias.onnx", [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                                                helper.make_node("Relu", ["c"], ["y"])], [w, b], (1, 2, 8, 8))
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        np.save(data / f"s{i}.npy", np.random.default_rng(i).random((1, 2, 8, 8), np.float32))
    line = one_error_line(run("compile", model, tmp_path / "bias.kmodel", "--dataset", data, "--dataset-format", "raw"))
    assert "output channel 1" in line and "norm_add" in line
    r = run("check", model)
    assert r.returncode == 1 and "norm_add" in r.stdout


def test_an_empty_tensor_is_refused_for_the_k210(run, tmp_path):
    """A fuzzed Slice start made a (1, 2, 0, 8) tensor: kpuc wrote a kmodel its own reader refused, and the
    v3 lowering printed a numpy warning (three stderr lines)."""
    inits = [helper.make_tensor("st", TensorProto.INT64, [1], [1 << 39]), helper.make_tensor("en", TensorProto.INT64, [1], [9]),
             helper.make_tensor("ax", TensorProto.INT64, [1], [2])]
    model = _save_onnx(tmp_path / "empty.onnx", [helper.make_node("Slice", ["x", "st", "en", "ax"], ["y"])], inits)
    for version in ("3", "4"):
        line = one_error_line(run("compile", model, tmp_path / "e.kmodel", "--inference-type", "float",
                                  "--kmodel-version", version))
        assert "is empty (shape (1, 2, 0, 4))" in line
    r = run("check", model)
    assert r.returncode == 1 and "cannot hold an empty tensor" in r.stdout and not r.stderr
