"""Accuracy of compiled kmodels against the framework, over the zoo's image models and the shared models.

    python bench/accuracy.py [--models NAME ...] [--jobs 2] [--nncase-python PY] [--write-docs]

Each model is compiled to kmodel v4 (`--input-type float`) by `kpuc compile` on 20 calibration photos and run by `kpuc infer`
on judged photos that no choice was made on (bench/zoo/images.json: 20 calibrate, 28 judged; fetch them
with bench/zoo/images.py). The reference is the framework itself (LiteRT, onnxruntime) on the same input
tensors. Per judged image the cosine similarity of every output with the framework's is taken and the
image scores its worst output; the table gives the worst and the mean over images, top-1 agreement for
classifiers, the file size, KPU RAM and main memory from `kpuc inspect`, and the compile's wall time.
mobilenet_v1_0.25_128 from ../shared uses issue 3's split instead: calibrated on the first 10 ulffd
images, judged on the other 10 and the dog. Models ending in host post-processing the v0.2 runtime has no
op for (CUTS: DeepLab's ArgMax, MoveNet's keypoint decoding) are compiled with --output-tensors at the
network's own outputs and judged there, marked "(cut)" in the table.

LiteRT runs its reference kernels (BUILTIN_REF) on float models. A model with integer weights (pre-quantized)
is judged against LiteRT as a user runs it, `Interpreter(path)` (optimized kernels with XNNPACK): on the 9 conv
layers checked (the first three of coral_mobilenet_v1_0.75_192_quant, coral_mobilenet_v2_1.0_224_quant,
coral_tf2_mobilenet_v2_ptq, tiny_resnet8_int8; each from its own input), XNNPACK's codes are the exactly
rounded requantization, round(acc * s_in * s_w / s_out) + zero point (an exact half to even), on every value,
while the reference kernels' fixed-point multiplier puts 0.1-0.5% of a conv's codes and 13-14% of a uint8
depthwise conv's one code off.
Through a network that compounds: on one judged photo coral_mobilenet_v1_0.75_192_quant's two LiteRT kernel
sets agree only to cosine 0.970, while kpuc's kmodel and XNNPACK agree to 0.999.
So each pre-quantized model also gets a row "LiteRT builtin": LiteRT's optimized builtin kernels without
XNNPACK (another kernel set LiteRT ships, integer fixed-point like the KPU), judged against the same XNNPACK
reference: how far a second integer runtime lands from XNNPACK on its own, since a one-code difference in an
early layer grows through the network whichever runtime makes it (no bound: kpuc is above it on 7 of 10).

Flag sets: `default` (no extra flags), `--target-cosine 0.99`, and `equalize` (`--equalize-layers`, off by
default: the totals count where it moves the default flow's worst cosine).
With --nncase-python (a Python with nncase 1.x installed: a comparison, never a kpuc dependency) nncase
compiles the same model on the same calibration tensors (PTQ, K210, uint8) and its simulator runs the
judged ones. Results go to $KPUC_ZOO/accuracy-results.json; --write-docs writes docs/accuracy.md.
A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT / "bench" / "zoo"
sys.path[:0] = [str(ROOT), str(ZOO), str(ROOT / "bench")]

from fetch import cache_dir, load_manifest, model_path  # noqa: E402
from images import image_folder  # noqa: E402
from reference import _onnx_session, _tflite_session, integer_weights  # noqa: E402

from compiler.datasets import list_files, load_image  # noqa: E402

NNCASE_ENV = "KPUC_NNCASE_PYTHON"
SHARED = ROOT.parent / "shared"
# What photos can stand in for: models whose input is a picture of the world (not audio, not a crop of a
# hand or an eye is still a picture, so landmark nets are judged too, as the issue asks).
IMAGE_TASKS = {"classification", "face detection", "face landmarks", "hand detection", "hand landmarks",
               "pose detection", "pose landmarks", "eye landmarks", "segmentation", "object detection",
               "OCR text detection", "OCR text direction", "visual wake words"}
CLASSIFIERS = {"classification", "visual wake words", "OCR text direction"}   # top-1 is meaningful
FLAG_SETS = {"default": [], "target 0.99": ["--target-cosine", "0.99"], "equalize": ["--equalize-layers"]}
# Models whose last ops are host post-processing the v0.2 runtime has no op for (ArgMax, GatherNd): as a
# K210 user would, they are compiled with --output-tensors at the network's own outputs, and judged there
# against the framework's same tensors (LiteRT keeps every tensor for this).
CUTS = {
    "coral_deeplabv3_mnv2_dm05_quant": ["logits/semantic/BiasAdd;logits/semantic/Conv2D;logits/semantic/biases1"],
    "coral_movenet_lightning_ptq": [
        "Sigmoid_1", "Sigmoid",
        "kpt_regress_0/conv2d_6/BiasAdd;kpt_regress_0/conv2d_6/Conv2D;conv2d_6/bias1",
        "kpt_offset_0/conv2d_7/BiasAdd;kpt_regress_0/conv2d_6/Conv2D;kpt_offset_0/conv2d_7/Conv2D;conv2d_7/bias1"],
}


# ------------------------------------------------------------------ cases
def _range_to_mean_std(value_range) -> tuple[float, float]:
    """kpuc's image datasets give (x - mean) / std with x in [0, 1]; the manifest gives the model's range."""
    low, high = value_range
    return -low / (high - low), 1.0 / (high - low)


def zoo_cases(names: list[str] | None) -> list[dict]:
    cases = []
    for e in load_manifest():
        if names and e["name"] not in names or not names and e["task"] not in IMAGE_TASKS:
            continue
        mean, std = _range_to_mean_std(e["input"]["range"])
        cases.append(dict(name=e["name"], path=str(model_path(e)), format=e["format"], task=e["task"],
                          mean=mean, std=std, input_shapes=e.get("input_shapes", {}),
                          output_tensors=CUTS.get(e["name"], []),
                          calibration=[str(p) for p in list_files(image_folder("calibration"))],
                          judged=[str(p) for p in list_files(image_folder("judged"))]))
    return cases


def shared_cases(names: list[str] | None) -> list[dict]:
    mobilenet = SHARED / "models" / "tflite-ops" / "mobilenet_v1_0.25_128.tflite"
    ulffd = SHARED / "golden" / "ulffd_landmark-v4"
    if names and "mobilenet_v1_0.25_128" not in names or not mobilenet.exists():
        return []
    photos = [str(p) for p in list_files(ulffd / "dataset")]
    return [dict(name="mobilenet_v1_0.25_128", path=str(mobilenet), format="tflite", task="classification",
                 mean=0.5, std=0.5, input_shapes={}, calibration=photos[:10],
                 judged=photos[10:] + [str(ulffd / "inputs" / "dog_rgb_chw_320x240.u8")])]


def load_photo(path: str, nchw: tuple[int, ...], mean: float, std: float) -> np.ndarray:
    """A photo as kpuc's image datasets decode it; the raw dog (CHW uint8 320x240) through the same resize."""
    if path.endswith(".u8"):
        from PIL import Image
        raw = np.fromfile(path, np.uint8).reshape(3, 240, 320).transpose(1, 2, 0)
        img = Image.fromarray(raw)
        tmp = Path(tempfile.mkdtemp(prefix="kpuc-acc-")) / "dog.png"
        img.save(tmp)
        path = str(tmp)
    return load_image(Path(path), nchw, mean, std)


# ------------------------------------------------------------------ running
def kpuc(*args) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), *map(str, args)]


def run(cmd: list[str], timeout: float) -> tuple[int, str, str, float]:
    start = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "", f"timeout after {timeout:.0f} s", time.monotonic() - start
    err = done.stderr.strip().splitlines()
    return done.returncode, done.stdout, (err[-1] if err else ""), time.monotonic() - start


def cosine(got: np.ndarray, want: np.ndarray) -> float:
    got, want = np.asarray(got, np.float64).ravel(), np.asarray(want, np.float64).ravel()
    denom = np.linalg.norm(got) * np.linalg.norm(want)
    return float(got @ want / denom) if denom else float(np.allclose(got, want))


def score(outputs: list[list[np.ndarray]], refs: list[list[np.ndarray]], classifier: bool) -> dict:
    """Worst / mean over images of each image's worst output cosine; top-1 agreement of output 0."""
    per_image = [min(cosine(g, w) for g, w in zip(got, ref)) for got, ref in zip(outputs, refs)]
    res = dict(worst=min(per_image), mean=float(np.mean(per_image)), images=len(per_image))
    if classifier:
        res["top1"] = float(np.mean([np.argmax(g[0]) == np.argmax(w[0]) for g, w in zip(outputs, refs)]))
    return res


class Model:
    """One model's framework session, input tensors and reference outputs."""

    def __init__(self, case: dict, work: Path):
        self.case, self.work = case, work
        shapes, path = case["input_shapes"], Path(case["path"])
        if case["format"] == "tflite":
            # A pre-quantized model is judged against LiteRT as a user runs it (Interpreter(path): XNNPACK),
            # which gives each layer's exact requantization; the reference kernels round the fixed-point
            # multiplier twice (module docstring).
            self.prequantized = integer_weights(path)
            kernels = "default" if self.prequantized else "reference"
            self.meta, self.run_framework = _tflite_session(path, shapes, case.get("output_tensors"), kernels)
        else:
            self.prequantized = False
            self.meta, self.run_framework = _onnx_session(path, shapes)
        if len(self.meta["inputs"]) != 1:
            raise ValueError(f"{len(self.meta['inputs'])} inputs: not an image model")
        info = self.meta["inputs"][0]
        s = info["shape"]
        # kpuc_transposes: kpuc's IR takes the framework's tensors transposed 0,3,1,2 (its TFLite importer's
        # NHWC -> NCHW); nhwc: the framework's picture is NHWC. Usually both (TFLite) or neither (ONNX), but an
        # ONNX model may take NHWC itself (tf2onnx's MTCNN) and a TFLite model NCHW (a PyTorch export).
        self.kpuc_transposes = self.meta["layout"] == "nhwc"
        channels_last = len(s) == 4 and s[3] in (1, 3) and s[1] not in (1, 3)
        channels_first = len(s) == 4 and s[1] in (1, 3) and s[3] not in (1, 3)
        self.nhwc = channels_last or (self.kpuc_transposes and not channels_first)
        nchw = (s[0], s[3], s[1], s[2]) if self.nhwc and len(s) == 4 else tuple(s)
        if len(nchw) != 4 or nchw[1] not in (1, 3) or min(nchw[2:]) < 16:
            raise ValueError(f"input {s} is not a picture")
        self.nchw = nchw
        self.calibration = [self.framework_input(load_photo(p, nchw, case["mean"], case["std"]))
                            for p in case["calibration"]]
        self.judged = [self.framework_input(load_photo(p, nchw, case["mean"], case["std"])) for p in case["judged"]]
        self.refs = [[self.dequantized(np.asarray(o), k) for k, o in enumerate(self.run_framework([x]))]
                     for x in self.judged]

    def other_kernels(self) -> dict:
        """A pre-quantized model's judged photos on LiteRT's optimized builtins without XNNPACK, scored against the
        XNNPACK reference: how far two of LiteRT's own kernel sets agree."""
        start = time.monotonic()
        _, run_builtin = _tflite_session(Path(self.case["path"]), self.case["input_shapes"],
                                         self.case.get("output_tensors"), "builtin")
        outputs = [[self.dequantized(np.asarray(o), k) for k, o in enumerate(run_builtin([x]))] for x in self.judged]
        return score(outputs, self.refs, self.case["task"] in CLASSIFIERS) | dict(
            seconds=round(time.monotonic() - start, 2))

    def framework_input(self, x: np.ndarray) -> np.ndarray:
        info = self.meta["inputs"][0]
        if self.nhwc:
            x = x.transpose(0, 2, 3, 1)
        if info["quant"]:
            scale, zero_point = info["quant"]
            lim = np.iinfo(info["dtype"])
            x = np.clip(np.round(x / scale) + zero_point, lim.min, lim.max)
        return np.ascontiguousarray(x.astype(info["dtype"]))

    def dequantized(self, out: np.ndarray, k: int) -> np.ndarray:
        quant = self.meta["outputs"][k]["quant"]
        return (out.astype(np.float64) - quant[1]) * quant[0] if quant else out.astype(np.float64)

    def kpuc_tensor(self, x: np.ndarray, ir_dtype: str) -> np.ndarray:
        """The framework's input as kpuc reads it: NCHW, dequantized unless kpuc's input is integer too."""
        info = self.meta["inputs"][0]
        if info["quant"] and ir_dtype == "float32":
            scale, zero_point = info["quant"]
            x = ((x.astype(np.float32) - zero_point) * scale).astype(np.float32)
        return x.transpose(0, 3, 1, 2) if self.kpuc_transposes else x

    def kpuc_order(self, out: np.ndarray) -> np.ndarray:
        """A framework output in kpuc's layout (NCHW for 4-D tensors of an NHWC model)."""
        return out.transpose(0, 3, 1, 2) if self.kpuc_transposes and out.ndim == 4 else out


def shape_options(case: dict) -> list[str]:
    cut = [a for a in ("--output-tensors", ",".join(case.get("output_tensors", []))) if case.get("output_tensors")]
    return cut + [a for name, dims in case["input_shapes"].items()
                  for a in ("--input-shape", f"{name}={','.join(map(str, dims))}")]


def compile_options(case: dict, **kw):
    """shape_options as the CompileOptions of an in-process compile (kmodel v4, float input, as run_kpuc)."""
    from compiler.pipeline import CompileOptions
    return CompileOptions(kmodel_version=4, input_type="float",
                          input_shapes=tuple((k, tuple(v)) for k, v in case["input_shapes"].items()),
                          output_tensors=tuple(case.get("output_tensors") or ()), **kw)


def run_kpuc(model: Model, flags: list[str], timeout: float) -> dict:
    case, work = model.case, model.work
    tag = "_".join(flags).replace("-", "") or "default"
    kmodel = work / f"{tag}.kmodel"
    # --input-type float: the kmodel quantizes its input itself, so it takes the very tensors the framework gets
    # --allow-over-budget: a model too big for the board (onnx_light_resnet50) is still judged for accuracy
    rc, _, err, seconds = run(kpuc("compile", case["path"], kmodel, "--kmodel-version", 4, "--input-type", "float",
                                   "--allow-over-budget",
                                   "--dataset", work / "calibration", "--dataset-format", "raw", *shape_options(case),
                                   *flags),
                              timeout)
    if rc != 0:
        return dict(error=f"compile: {err}", seconds=seconds)
    rc, out, err, _ = run(kpuc("inspect", "--json", kmodel), timeout)
    memory = json.loads(out)["memory"] if rc == 0 else {}
    outdir = work / f"{tag}.out"
    rc, _, err, _ = run(kpuc("infer", kmodel, outdir, "--dataset", work / "judged", "--dataset-format", "raw"), timeout)
    if rc != 0:
        return dict(error=f"infer: {err}", seconds=seconds)
    outputs = [[np.fromfile(outdir / f"{i:02d}.out{k}.bin", np.float32) for k in range(len(ref))]
               for i, ref in enumerate(model.refs)]
    refs = [[model.kpuc_order(r) for r in ref] for ref in model.refs]
    return score(outputs, refs, case["task"] in CLASSIFIERS) | dict(
        file=kmodel.stat().st_size, kpu_ram=memory.get("kpu", {}).get("used"),
        main_ram=memory.get("main", {}).get("used"), seconds=round(seconds, 2))


def run_nncase(model: Model, python: str, timeout: float) -> dict:
    if model.case.get("output_tensors"):
        return dict(error="not run: nncase 1.9 has no output cut (--output-tensors)")
    work = model.work
    def as_float(x):   # nncase takes float tensors in the framework's layout: a quantized input dequantized
        if not model.meta["inputs"][0]["quant"]:
            return x.astype(np.float32)
        x = model.kpuc_tensor(x, "float32")            # dequantized, in kpuc's layout: back to the model's own
        return x.transpose(0, 2, 3, 1) if model.kpuc_transposes else x
    for role, tensors in (("calibration", model.calibration), ("judged", model.judged)):
        np.save(work / f"nn_{role}.npy", np.stack([as_float(x) for x in tensors]))
    rc, out, err, seconds = run([python, str(Path(__file__).resolve()), "--nncase-child", model.case["path"],
                                 model.meta["layout"], str(work)], timeout)
    if rc != 0:
        return dict(error=f"nncase: {err or 'exit ' + str(rc)}")
    done = json.loads(out.strip().splitlines()[-1])
    got = np.load(work / "nn_outputs.npz")
    outputs = [[got[f"o{i}_{k}"] for k in range(len(ref))] for i, ref in enumerate(model.refs)]
    if any(g.size != r.size for o, ref in zip(outputs, model.refs) for g, r in zip(o, ref)):
        return dict(error="nncase: output sizes differ from the framework's")
    return score(outputs, model.refs, model.case["task"] in CLASSIFIERS) | dict(
        file=done["bytes"], seconds=round(done["seconds"], 2))


def nncase_child(model_file: str, layout: str, work: str) -> None:
    """Inside an nncase 1.x venv: PTQ-compile for the K210 on the calibration tensors, simulate the judged."""
    import nncase
    from bench_compile import nncase_compile
    work = Path(work)
    judged = np.load(work / "nn_judged.npy")
    kmodel, seconds = nncase_compile(model_file, np.load(work / "nn_calibration.npy"), layout.upper())
    sim = nncase.Simulator()
    sim.load_model(kmodel)
    outs = {}
    for i, x in enumerate(judged):
        sim.set_input_tensor(0, nncase.RuntimeTensor.from_numpy(np.ascontiguousarray(x)))
        sim.run()
        for k in range(sim.outputs_size):
            outs[f"o{i}_{k}"] = sim.get_output_tensor(k).to_numpy()
    np.savez(work / "nn_outputs.npz", **outs)
    print(json.dumps({"seconds": seconds, "bytes": len(kmodel)}))


def evaluate(case: dict, flag_sets: dict, nncase_python: str | None, timeout: float) -> dict:
    res = dict(name=case["name"], task=case["task"], **({"cut": True} if case.get("output_tensors") else {}))
    with tempfile.TemporaryDirectory(prefix=f"kpuc-acc-{case['name']}-") as tmp:
        work = Path(tmp)
        try:
            model = Model(case, work)
        except (Exception, SystemExit) as e:  # noqa: BLE001 - the framework cannot run it, or not a picture model
            return res | dict(skipped=f"{type(e).__name__}: {e}"[:200])
        rc, out, err, _ = run(kpuc("info", case["path"], "--json", *shape_options(case)), timeout)
        if rc != 0:
            return res | dict(skipped=f"kpuc info: {err}")
        ir_inputs = json.loads(out).get("ir_inputs") or [{}]
        ir_dtype = ir_inputs[0].get("dtype", "float32")
        for role, tensors in (("calibration", model.calibration), ("judged", model.judged)):
            (work / role).mkdir()
            for i, x in enumerate(tensors):
                np.save(work / role / f"{i:02d}.npy", model.kpuc_tensor(x, ir_dtype))
        if model.prequantized:
            res["litert_builtin"] = model.other_kernels()
        res["kpuc"] = {name: run_kpuc(model, flags, timeout) for name, flags in flag_sets.items()}
        if nncase_python:
            res["nncase"] = run_nncase(model, nncase_python, timeout)
    return res


# ------------------------------------------------------------------ report
def _kib(b) -> str:
    return f"{b / 1024:,.0f}" if b is not None else ""


def _cell(r: dict | None) -> list[str]:
    if not r:
        return ["-"] * 7
    if "error" in r:
        return [r["error"][:70], "", "", "", "", "", ""]
    top1 = f"{r['top1']:.0%}" if "top1" in r else ""
    return [f"{r['worst']:.4f}", f"{r['mean']:.4f}", top1, _kib(r.get("file")), _kib(r.get("kpu_ram")),
            f"{r['seconds']:.1f}", str(r["images"])]


def table(results: list[dict]) -> list[str]:
    head = ["model", "flow", "worst cos", "mean cos", "top-1", "file KiB", "KPU RAM KiB", "compile s", "images"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        if "skipped" in res:
            lines.append(f"| {res['name']} | skipped: {res['skipped'][:90]} |" + " |" * (len(head) - 2))
            continue
        flows = ([(f"kpuc {k}", v) for k, v in res["kpuc"].items()]
                 + ([("nncase 1.9", res["nncase"])] if "nncase" in res else [])
                 + ([("LiteRT builtin", res["litert_builtin"])] if "litert_builtin" in res else []))
        name = res["name"] + (" (cut)" if res.get("cut") else "")
        for flow, r in flows:
            lines.append("| " + " | ".join([name, flow, *_cell(r)]) + " |")
    return lines


def totals(results: list[dict]) -> list[str]:
    judged = [r for r in results if "kpuc" in r]
    lines = [f"- models judged: {len(judged)} ({len(results) - len(judged)} skipped: not runnable by the framework, "
             "or not a single picture input)"]
    default = [r for r in judged if "worst" in r["kpuc"].get("default", {})]
    if default:
        good = sum(r["kpuc"]["default"]["worst"] >= 0.98 for r in default)
        lines.append(f"- default flow: worst cosine ≥ 0.98 on {good}/{len(judged)} ({good / len(judged):.0%}); "
                     f"{len(judged) - len(default)} did not compile")
    tc = [r for r in judged if "worst" in r["kpuc"].get("target 0.99", {})]
    if tc:
        good = sum(r["kpuc"]["target 0.99"]["worst"] >= 0.99
                   and r["kpuc"]["target 0.99"]["file"] <= 2 * r["kpuc"].get("default", {}).get("file", 0)
                   for r in tc)
        lines.append(f"- --target-cosine 0.99: worst ≥ 0.99 with the file ≤ 2x default on {good}/{len(tc)} of the "
                     f"models it was run on ({len(judged) - len(tc)} not run or not compiled)")
    eq = [r for r in judged if "worst" in r["kpuc"].get("equalize", {}) and "worst" in r["kpuc"].get("default", {})]
    if eq:
        moved = [r["kpuc"]["equalize"]["worst"] - r["kpuc"]["default"]["worst"] for r in eq]
        lines.append(f"- --equalize-layers: worst cosine ≥ 0.98 on {sum(r['kpuc']['equalize']['worst'] >= 0.98 for r in eq)}"
                     f"/{len(eq)} of the models it was run on; worst cosine against the default flow's up by more than "
                     f"0.001 on {sum(m > 1e-3 for m in moved)}, down on {sum(m < -1e-3 for m in moved)}")
    pq = [r for r in judged if "litert_builtin" in r and "worst" in r["kpuc"].get("default", {})]
    if pq:
        lines.append(f"- pre-quantized models, worst cosine ≥ 0.98 against XNNPACK: kpuc's default flow on "
                     f"{sum(r['kpuc']['default']['worst'] >= 0.98 for r in pq)}/{len(pq)}, LiteRT's own builtin "
                     f"kernels on {sum(r['litert_builtin']['worst'] >= 0.98 for r in pq)}/{len(pq)}; kpuc's worst "
                     f"above LiteRT builtin's on {sum(r['kpuc']['default']['worst'] > r['litert_builtin']['worst'] for r in pq)}")
    nn = [r for r in judged if "worst" in r.get("nncase", {})]
    if any("nncase" in r for r in judged):
        lines.append(f"- nncase 1.9 compiled and ran {len(nn)}/{len(judged)}; worst cosine ≥ 0.98 on "
                     f"{sum(r['nncase']['worst'] >= 0.98 for r in nn)}")
    return lines


def write_docs(results: list[dict], path: Path) -> None:
    doc = __doc__.split("\n\n", 1)[1].split("A benchmark")[0].strip()
    text = ["# Accuracy of compiled kmodels", "", doc, "", "## Totals", "", *totals(results), "",
            "## Per model", "", *table(results), ""]
    path.write_text("\n".join(text).replace(str(cache_dir()), "$KPUC_ZOO"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", help="model names (default: every image model)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per step")
    ap.add_argument("--nncase-python", default=os.environ.get(NNCASE_ENV))
    ap.add_argument("--flows", nargs="*", choices=list(FLAG_SETS), help="default: all kpuc has")
    ap.add_argument("--fresh", action="store_true", help="forget the saved results (default: update them)")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--render-only", action="store_true", help="re-render the saved results")
    ap.add_argument("--nncase-child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.nncase_child:
        nncase_child(*a.nncase_child)
        return 0
    results_file = cache_dir() / "accuracy-results.json"
    if a.render_only:
        results = json.loads(results_file.read_text())
    else:
        helptext = run(kpuc("compile", "--help"), 60)[1]
        flag_sets = {k: v for k, v in FLAG_SETS.items()
                     if (not a.flows or k in a.flows) and all(f in helptext for f in v if f.startswith("--"))}
        cases = shared_cases(a.models) + zoo_cases(a.models)
        saved = {r["name"]: r for r in json.loads(results_file.read_text())} if results_file.exists() else {}
        if a.fresh:
            saved = {}
        lock = threading.Lock()

        def one(case: dict) -> dict:
            res = _logged(case, flag_sets, a)
            with lock:   # saved after every model, so an interrupted run keeps what it measured
                before = saved.get(res["name"], {})
                if "kpuc" in res and "kpuc" in before:   # flows not run this time keep their saved figures
                    res["kpuc"] = before["kpuc"] | res["kpuc"]
                if "nncase" in before and "nncase" not in res and "kpuc" in res:
                    res["nncase"] = before["nncase"]
                saved[res["name"]] = res
                results_file.parent.mkdir(parents=True, exist_ok=True)
                results_file.write_text(json.dumps(list(saved.values()), indent=1) + "\n")
            return res
        with ThreadPoolExecutor(a.jobs) as pool:
            list(pool.map(one, cases))
        order = {c["name"]: k for k, c in enumerate(cases)}
        results = sorted(saved.values(), key=lambda r: order.get(r["name"], len(order)))
    print("\n".join(table(results) + [""] + totals(results)))
    if a.write_docs:
        write_docs(results, ROOT / "docs" / "accuracy.md")
    return 0


def _logged(case: dict, flag_sets: dict, a) -> dict:
    start = time.monotonic()
    res = evaluate(case, flag_sets, a.nncase_python, a.timeout)
    print(f"{case['name']}: {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    return res


if __name__ == "__main__":
    sys.exit(main())
