"""Benchmark: time `kpuc compile` (with calibration) and `kpuc infer` per sample, and their peak memory.

    .venv/bin/python bench/bench_compile.py [--versions 3 4] [--repeat 1]

Runs the real command line in child processes (so peak RSS is the child's own), on the sample model,
mobilenet_v1_0.25_128 and ulffd_landmark (the golden's own compile command). A benchmark, not a test:
nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KPUC_SHARED", ROOT.parent / "shared"))
KPUC = [sys.executable, "-c", "import cli; cli.main()"]

MODELS = {
    "digits_cnn": (ROOT / "models/digits_cnn.onnx", ROOT / "models/digits", []),
    "mobilenet_v1_0.25_128": (SHARED / "models/tflite-ops/mobilenet_v1_0.25_128.tflite",
                              SHARED / "golden/ulffd_landmark-v4/dataset",
                              ["--input-mean", "0.5", "--input-std", "0.5"]),
    "ulffd_landmark": (SHARED / "golden/ulffd_landmark-v4/ulffd_landmark.tflite",
                       SHARED / "golden/ulffd_landmark-v4/dataset", ["--input-mean", "0.5", "--input-std", "1"]),
}


def run(args: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process running kpuc."""
    start = time.perf_counter()
    proc = subprocess.Popen(KPUC + args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"kpuc {' '.join(args)} failed: {proc.stderr.read().decode().strip()}")
    return seconds, usage.ru_maxrss * 1024  # Linux reports KiB


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--versions", nargs="+", type=int, default=[3, 4])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    a = ap.parse_args()
    print(f"{'model':24} {'v':>2} {'compile s':>10} {'compile MiB':>12} {'infer s/sample':>15} "
          f"{'infer MiB':>10} {'kmodel B':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in a.models:
            model, dataset, extra = MODELS[name]
            samples = sorted(p for p in dataset.iterdir() if p.is_file())
            for version in a.versions:
                out = tmp / f"{name}.v{version}.kmodel"
                try:
                    c_s, c_rss = run(["compile", str(model), str(out), "--kmodel-version", str(version),
                                      "--dataset", str(dataset), *extra])
                except SystemExit as e:
                    print(f"{name:24} {version:>2} {str(e)[:80]}")
                    continue
                outdir = tmp / "out"
                shutil.rmtree(outdir, ignore_errors=True)
                i_s, i_rss = run(["infer", str(out), str(outdir), "--dataset", str(dataset)])
                print(f"{name:24} {version:>2} {c_s:10.2f} {c_rss / 2**20:12.1f} {i_s / len(samples):15.3f} "
                      f"{i_rss / 2**20:10.1f} {out.stat().st_size:10,}")


if __name__ == "__main__":
    main()
