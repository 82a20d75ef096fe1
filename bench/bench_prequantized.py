"""Pre-quantized zoo classifiers compiled WITHOUT --dataset (their own ranges): top-1 of the kmodel against the
float twin model (where the zoo has one) and against the quantized model in LiteRT, on 20 judged photos.

    python bench/bench_prequantized.py          # needs bench/zoo/fetch.py and images.py run first

A benchmark, not a test (issue 12: "a pre-quantized int8 classifier compiles without --dataset and agrees
with the float reference on top-1 for >= 95% of 20 images").
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "bench" / "zoo")]
import accuracy  # noqa: E402
from images import image_folder  # noqa: E402

from compiler.datasets import list_files  # noqa: E402

CASES = [("tiny_vww_96_int8", "tiny_vww_96_fp32"), ("tiny_resnet8_int8", "tiny_resnet8_fp32"),
         ("tfmicro_person_detect_int8", None), ("coral_mobilenet_v1_0.5_160_quant", None)]
KPUC = [sys.executable, str(ROOT / "cli.py")]


def model(name: str, judged: list[str], work: Path) -> accuracy.Model:
    case = accuracy.zoo_cases([name])[0] | dict(judged=judged, calibration=judged[:1])
    return accuracy.Model(case, work)


def top1(quantized: str, float_twin: str | None, judged: list[str], work: Path) -> str:
    mq = model(quantized, judged, work)
    mf = model(float_twin, judged, work) if float_twin else None
    kmodel = work / f"{quantized}.kmodel"
    subprocess.run([*KPUC, "compile", mq.case["path"], kmodel], check=True, capture_output=True)
    info = json.loads(subprocess.run([*KPUC, "info", mq.case["path"], "--json"], check=True, capture_output=True,
                                     text=True).stdout)
    ir_dtype = (info.get("ir_inputs") or [{}])[0].get("dtype", "float32")
    inputs = work / f"{quantized}.in"
    inputs.mkdir()
    for i, x in enumerate(mq.judged):
        np.save(inputs / f"{i:02d}.npy", mq.kpuc_tensor(x, ir_dtype))
    out = work / f"{quantized}.out"
    subprocess.run([*KPUC, "infer", kmodel, out, "--dataset", inputs, "--dataset-format", "raw"], check=True,
                   capture_output=True)
    got = [np.fromfile(out / f"{i:02d}.out0.bin", np.float32) for i in range(len(judged))]

    def agree(refs) -> float:
        return float(np.mean([np.argmax(g) == np.argmax(r[0]) for g, r in zip(got, refs)]))
    line = f"{quantized:36s} kmodel = LiteRT int8 {agree(mq.refs):5.0%}"
    if mf:
        line += f"   kmodel = float {float_twin} {agree(mf.refs):5.0%}"
    return line


def main() -> int:
    judged = [str(p) for p in list_files(image_folder("judged"))][:20]
    with tempfile.TemporaryDirectory() as tmp:
        for quantized, float_twin in CASES:
            print(top1(quantized, float_twin, judged, Path(tmp)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
