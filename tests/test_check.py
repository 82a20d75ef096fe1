"""`kpuc check` against what `kpuc compile` and `kpuc inspect` really do.

The agreement test runs check and an independent compile_model (same calibration inputs) on every model
of ../shared/models/tflite-ops and the golden source models: fits vN <=> vN compiles, the same bytes, and
the KPU RAM / main memory check reports equal describe_kmodel's figures (what `kpuc inspect` prints).
A few models go through the real CLIs as subprocesses (check, compile with a raw dataset, inspect).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.errors import KpucError, UnsupportedOps
from compiler.pipeline import compile_model
from shared_data import ROOT, SHARED, TFLITE_OPS, needs
from targets import get_target
from targets.k210.check import CheckOptions, check_model, format_text, synthetic_samples
from targets.k210.kmodel import describe_kmodel, read_kmodel

OPS = TFLITE_OPS
GOLDEN_SOURCES = [SHARED / "golden/iris-v3/iris.tflite", SHARED / "golden/iris-v4/iris.tflite",
                  SHARED / "golden/ulffd_landmark-v4/ulffd_landmark.tflite"]
MODELS = sorted(OPS.glob("*.tflite")) + GOLDEN_SOURCES
SCHEMA = json.loads((ROOT / "docs" / "check-schema.json").read_text())
RNG = np.random.default_rng(0)

needs_models = needs(OPS, *GOLDEN_SOURCES)


def kpuc(*args, env=None):
    return subprocess.run([sys.executable, "-c", "import cli; cli.main()", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)


def inspect_figures(data: bytes) -> tuple[int, int]:
    """(KPU RAM, working main memory) as `kpuc inspect` shows them for a kmodel file."""
    d = describe_kmodel(read_kmodel(data))
    if d["version"] == 3:
        return d["memory"]["kpu_rows_reserved"] * 64, d["memory"]["main_mem_usage"]
    return d["memory"]["kpu"]["used"], d["memory"]["main"]["size"]


def validate(doc: dict) -> None:
    import jsonschema
    jsonschema.validate(json.loads(json.dumps(doc)), SCHEMA, cls=jsonschema.Draft202012Validator)


def test_schema_is_a_valid_json_schema():
    import jsonschema
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["properties"]["schema_version"]["const"] == 1


# ---------------------------------------------------------------- agreement with compile and inspect
AGREEMENT: dict[str, dict] = {}


def model_id(p: Path) -> str:
    return p.name if p.parent == OPS else f"{p.parent.name}/{p.name}"


@needs_models
@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS, ids=model_id)
def test_check_agrees_with_compile(model):
    result = check_model(model)
    doc = result.doc
    validate(doc)
    assert doc["verdict"] in ("fits", "does_not_fit")          # every model here imports
    assert [v["version"] for v in doc["versions"]] == [3, 4]
    for entry in doc["versions"]:
        version = entry["version"]
        opts = CheckOptions().compile_options(version)
        try:
            compiled = compile_model(model, opts, get_target("k210"), samples=result.samples)
        except UnsupportedOps:
            pytest.fail("check imported the model, compile says it has unsupported ops")
        except KpucError as e:
            assert not entry["fits"] and entry["status"] in ("cannot_express", "not_compiled"), entry
            assert str(e) in entry["error"]
            assert version not in result.kmodels
            continue
        assert entry["status"] in ("fits", "over_budget"), entry
        assert entry["fits"] == (entry["memory"]["main_memory_bytes"] <= doc["firmware"]["budget_bytes"])
        assert result.kmodels[version] == compiled.kmodel, "check lowered other bytes than compile"
        kpu, working = inspect_figures(compiled.kmodel)
        mem = entry["memory"]
        assert (mem["kpu_ram_bytes"], mem["working_memory_bytes"]) == (kpu, working)
        assert mem["kmodel_bytes"] == len(compiled.kmodel)
        assert mem["main_memory_bytes"] == working + len(compiled.kmodel)
    assert doc["exit_code"] == (0 if doc["fits_versions"] else 1)
    AGREEMENT[str(model)] = {v["version"]: v["status"] for v in doc["versions"]}


@needs_models
@pytest.mark.slow  # tallies the slow parametrized test above
def test_agreement_tally():
    """The counts the issue's closing note quotes (runs after the parametrized test above)."""
    if len(AGREEMENT) < len(MODELS):
        pytest.skip("run together with test_check_agrees_with_compile")
    fits3 = sum(s[3] == "fits" for s in AGREEMENT.values())
    fits4 = sum(s[4] == "fits" for s in AGREEMENT.values())
    print(f"\n{len(AGREEMENT)} models: {fits3} fit v3, {fits4} fit v4, "
          f"{sum(s[3] != 'fits' and s[4] != 'fits' for s in AGREEMENT.values())} fit neither")
    assert AGREEMENT[str(OPS / "mobilenet_v1_0.25_128.tflite")] == {3: "fits", 4: "fits"}
    assert AGREEMENT[str(GOLDEN_SOURCES[2])][4] == "fits"


CLI_MODELS = [OPS / "conv-stride.float32.tflite", OPS / "prelu.float32.tflite", OPS / "add.float32.tflite",
              SHARED / "golden/iris-v3/iris.tflite"]


@needs_models
@pytest.mark.slow
@pytest.mark.parametrize("model", CLI_MODELS, ids=model_id)
def test_cli_check_agrees_with_cli_compile_and_inspect(model, tmp_path):
    r = kpuc("check", model, "--format", "json")
    assert r.returncode in (0, 1), r.stderr
    doc = json.loads(r.stdout)
    validate(doc)
    assert r.returncode == doc["exit_code"]
    # the same synthetic inputs check calibrated on, as a raw dataset for `kpuc compile`
    from compiler.importers import import_model
    ds = tmp_path / "ds"
    ds.mkdir()
    inputs = import_model(model).inputs
    per_input = [synthetic_samples(v.shape) for v in inputs]
    for k, xs in enumerate(zip(*per_input)):
        if len(inputs) == 1:
            np.save(ds / f"{k}.npy", xs[0])
        else:   # several inputs: one .npz per sample keyed by input name (compiler/datasets.py)
            np.savez(ds / f"{k}.npz", **{v.name: x for v, x in zip(inputs, xs)})
    for entry in doc["versions"]:
        v = entry["version"]
        out = tmp_path / f"m.v{v}.kmodel"
        c = kpuc("compile", model, out, "--kmodel-version", v, "--dataset", ds, "--dataset-format", "raw")
        assert (c.returncode == 0) == (entry["status"] in ("fits", "over_budget")), (entry, c.stderr)
        if c.returncode:
            assert c.returncode == 2 and entry["error"].endswith(c.stderr.strip().removeprefix("kpuc: error: "))
            continue
        i = kpuc("inspect", out, "--json")
        assert i.returncode == 0, i.stderr
        m = json.loads(i.stdout)["memory"]
        kpu, working = ((m["kpu_rows_reserved"] * 64, m["main_mem_usage"]) if v == 3 else
                        (m["kpu"]["used"], m["main"]["size"]))
        assert entry["memory"]["kpu_ram_bytes"] == kpu
        assert entry["memory"]["working_memory_bytes"] == working
        assert entry["memory"]["kmodel_bytes"] == out.stat().st_size     # weights change, sizes do not


# ---------------------------------------------------------------- many problems, one run
def _onnx(tmp_path, nodes, inputs, outputs, inits=(), name="m.onnx"):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
                              [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def test_unsupported_ops_are_all_listed_like_compile_names_them(tmp_path):
    path = _onnx(tmp_path, [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("InstanceNormalization", ["c", "s", "b"], ["n"], name="inorm"),
        helper.make_node("LRN", ["n"], ["l"], name="lrn", size=3),
        helper.make_node("TopK", ["l", "k"], ["y", "idx"], name="topk", axis=1),
    ], [("x", [1, 3, 8, 8])], [("y", [1, 2, 8, 8])],
        [("w", RNG.standard_normal((4, 3, 3, 3))), ("s", np.ones(4)), ("b", np.zeros(4)), ("k", [2])])
    with pytest.raises(UnsupportedOps) as e:
        compile_model(path, CheckOptions().compile_options(4), get_target("k210"),
                      samples=synthetic_samples((1, 3, 8, 8)))
    result = check_model(path)
    doc = result.doc
    validate(doc)
    assert doc["verdict"] == "unsupported" and doc["exit_code"] == 1
    assert [(u["op"], u["node"]) for u in doc["unsupported"]] == [(p.op_type, p.node) for p in e.value.problems]
    assert {u["op"] for u in doc["unsupported"]} >= {"InstanceNormalization", "LRN", "TopK"}
    assert all(u["hint"] for u in doc["unsupported"])
    assert "BatchNormalization" in next(u["hint"] for u in doc["unsupported"] if u["op"] == "InstanceNormalization")
    assert len([p for p in doc["problems"] if p["kind"] == "unsupported"]) == len(doc["unsupported"])
    r = kpuc("check", path)
    assert r.returncode == 1, r.stderr
    for op in ("InstanceNormalization", "LRN", "TopK"):
        assert op in r.stdout
    assert "verdict: unsupported" in r.stdout


def test_a_model_with_several_problems_lists_all_of_them(tmp_path):
    """5x5 conv (CPU), PReLU (CPU), both beyond kmodel v3, and over a tiny memory budget: one run."""
    path = _onnx(tmp_path, [
        helper.make_node("Conv", ["x", "w5", "b5"], ["c5"], name="conv5x5", pads=[2, 2, 2, 2]),
        helper.make_node("PRelu", ["c5", "slope"], ["p"], name="prelu"),
        helper.make_node("Conv", ["p", "w3", "b3"], ["y"], name="conv3x3", pads=[1, 1, 1, 1]),
    ], [("x", [1, 3, 16, 16])], [("y", [1, 8, 16, 16])],
        [("w5", RNG.standard_normal((8, 3, 5, 5)) * 0.1), ("b5", np.zeros(8)),
         ("slope", np.full((8, 1, 1), 0.1)), ("w3", RNG.standard_normal((8, 8, 3, 3)) * 0.1), ("b3", np.zeros(8))])
    r = kpuc("check", path, "--firmware", "4096", "--format", "json")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    validate(doc)
    conv5 = next(row for row in doc["ops"] if row["op"] == "conv2d" and row["detail"].startswith("5x5"))
    prelu = next(row for row in doc["ops"] if row["op"] == "prelu")
    conv3 = next(row for row in doc["ops"] if row["op"] == "conv2d" and row["detail"].startswith("3x3"))
    assert conv5["placement"] == "cpu" and "two 3x3 convs would run on the KPU" in conv5["hint"]
    assert prelu["placement"] == "cpu" and "LeakyReLU would run on the KPU" in prelu["hint"]
    assert conv3["placement"] == "kpu" and conv3["kpu_ram_bytes"] > 0
    kinds = [p["kind"] for p in doc["problems"]]
    assert kinds.count("cpu_fallback") == 2
    v3 = next(v for v in doc["versions"] if v["version"] == 3)
    assert v3["status"] == "cannot_express" and {b["source"] for b in v3["blockers"]} >= {conv5["name"], prelu["name"]}
    assert doc["versions"][1]["status"] == "over_budget" and "memory" in kinds
    assert doc["kpu"]["total_macs"] == 8 * 16 * 16 * (3 * 25 + 8 * 9)
    assert doc["kpu"]["macs"] == 8 * 16 * 16 * 8 * 9
    text = kpuc("check", path, "--firmware", "4096")
    assert text.returncode == 1
    for needle in ("two 3x3 convs", "LeakyReLU", "kmodel v3 cannot express", "budget", "verdict: does not fit"):
        assert needle in text.stdout, needle


def test_placement_names_the_rewrites(tmp_path):
    """Stride 2 + SAME padding: stride decomposition and pad/crop; a MatMul becomes a 1x1 KPU conv."""
    doc = check_model(OPS / "conv-stride.float32.tflite").doc if OPS.is_dir() else None
    if doc:
        row = doc["ops"][0]
        assert row["placement"] == "kpu_after_rewrite"
        assert row["rewrites"] == ["stride decomposition", "pad/crop"]
    path = _onnx(tmp_path, [
        helper.make_node("MatMul", ["x", "w"], ["m"], name="fc"),
        helper.make_node("Add", ["m", "b"], ["a"], name="bias"),
        helper.make_node("Relu", ["a"], ["y"], name="relu"),
    ], [("x", [1, 64])], [("y", [1, 32])], [("w", RNG.standard_normal((64, 32))), ("b", np.ones(32))])
    doc = check_model(path, CheckOptions(output_quantize_threshold=0)).doc
    validate(doc)
    by_op = {row["op"]: row for row in doc["ops"]}
    assert by_op["matmul"]["placement"] == "kpu_after_rewrite"
    assert "MatMul as 1x1 conv" in by_op["matmul"]["rewrites"]
    fused = [row for row in doc["ops"] if row["placement"] == "kpu_fused"]
    assert fused and all(row["fused_into"] == by_op["matmul"]["name"] for row in fused)


def test_a_kpu_layer_the_quantizer_keeps_in_float_is_reported(tmp_path):
    w = RNG.standard_normal((8, 3, 3, 3))
    w[0, 0, 0, 0] = 100.0                           # weight span > --weights-quantize-threshold 64
    path = _onnx(tmp_path, [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                            helper.make_node("Relu", ["c"], ["y"], name="relu")],
                 [("x", [1, 3, 16, 16])], [("y", [1, 8, 16, 16])], [("w", w)])
    row = check_model(path).doc["ops"][0]
    assert row["placement"] == "cpu" and "weights_quantize_threshold" in row["reason"]
    assert "--weights-quantize-threshold" in row["hint"]
    assert check_model(path, CheckOptions(weights_quantize_threshold=1000)).doc["ops"][0]["placement"] == "kpu"


# ---------------------------------------------------------------- options, output, exit codes
@needs_models
def test_dataset_adds_the_sensitivity_report(tmp_path):
    model = OPS / "conv-stride.float32.tflite"
    ds = tmp_path / "ds"
    ds.mkdir()
    for k in range(3):
        np.save(ds / f"{k}.npy", RNG.random((1, 8, 32, 32), dtype=np.float32))
    doc = check_model(model, CheckOptions(dataset=str(ds), dataset_format="raw")).doc
    validate(doc)
    s = doc["sensitivity"]
    assert doc["calibration"]["source"] == "dataset" and doc["calibration"]["samples"] == 3
    assert s["samples"] == 3 and s["layers"] and s["worst"] in [x["value"] for x in s["layers"]]
    assert all(x["cosine"] is None or x["cosine"] > 0.9 for x in s["layers"])
    assert "quantization sensitivity" in format_text(doc)
    assert check_model(model).doc["sensitivity"] is None


@needs_models
def test_kmodel_version_and_firmware_options():
    model = OPS / "prelu.float32.tflite"           # v4 expresses PReLU, v3 has no layer for it
    assert kpuc("check", model, "--kmodel-version", "3").returncode == 1
    r = kpuc("check", model, "--kmodel-version", "4", "--format", "json")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["requested_versions"] == [4] and doc["fits_versions"] == [4]
    both = json.loads(kpuc("check", model, "--format", "json").stdout)
    assert both["verdict"] == "fits" and both["fits_versions"] == [4] and "not v3" in both["summary"]
    for name, budget in (("c-sdk", 6 << 20), ("maixpy-mini", int(3.5 * (1 << 20))), ("maixpy-full", 2 << 20),
                         ("12345", 12345)):
        doc = json.loads(kpuc("check", model, "--kmodel-version", "4", "--firmware", name, "--format", "json").stdout)
        assert doc["firmware"]["budget_bytes"] == budget
    assert "3-4 MiB documented, 3.5 MiB used" in check_model(model, CheckOptions(firmware="maixpy-mini")).doc[
        "firmware"]["note"]
    small = kpuc("check", model, "--kmodel-version", "4", "--firmware", "100")
    assert small.returncode == 1 and "budget" in small.stdout


def test_bad_input_and_usage_exit_2(tmp_path):
    missing = kpuc("check", tmp_path / "nope.tflite")
    assert missing.returncode == 2 and "no such model file" in missing.stderr
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"this is not a flatbuffer")
    malformed = kpuc("check", bad)
    assert malformed.returncode == 2 and "Traceback" not in malformed.stderr
    assert len(malformed.stderr.strip().splitlines()) == 1
    if OPS.is_dir():
        model = OPS / "conv.float32.tflite"
        assert kpuc("check", model, "--kmodel-version", "5").returncode == 2
        assert kpuc("check", model, "--firmware", "lots").returncode == 2
        assert kpuc("check", model, "--dataset", tmp_path / "no-such-dir").returncode == 2


@needs_models
def test_text_output_has_no_ansi_codes_off_a_tty_and_json_is_deterministic():
    model = OPS / "conv-stride.float32.tflite"
    r = kpuc("check", model)
    assert r.returncode == 0 and "\x1b[" not in r.stdout
    assert "KPU after stride decomposition + pad/crop" in r.stdout and "verdict: fits kmodel v3 and v4" in r.stdout
    doc = check_model(model).doc
    assert "\x1b[" in format_text(doc, color=True) and "\x1b[" not in format_text(doc)
    assert json.dumps(check_model(model).doc) == json.dumps(doc)
    assert kpuc("check", model, "--format", "json").stdout == kpuc("check", model, "--format", "json").stdout


@needs_models
@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_colour_only_on_a_tty_and_not_with_no_color():
    import pty
    model = OPS / "conv-stride.float32.tflite"

    def on_tty(env):
        leader, follower = pty.openpty()
        p = subprocess.Popen([sys.executable, "-c", "import cli; cli.main()", "check", str(model)], cwd=ROOT,
                             stdout=follower, stderr=subprocess.DEVNULL, env=env)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        p.wait(timeout=120)
        os.close(leader)
        return b"".join(chunks).decode()
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    assert "\x1b[" in on_tty(env)
    assert "\x1b[" not in on_tty({**env, "NO_COLOR": "1"})
