#!/usr/bin/env python3
"""Benchmark: `kpuc infer` beside the reference runtimes (../shared/oracle: v4run is nncase v0.2's runtime,
v3run the K210 SDK's v3 loader) on the same kmodels and inputs, in one run, as ratios.

    .venv/bin/python bench/bench_infer.py [--repeat 3] [--samples 20] [--kmodel FILE ...]

For each kmodel (default: the golden yolo20 v3 and v4; input 0 must be uint8 [1,3,H,W]):
  single shot   one sample, the whole process each (kpuc's start-up included), median of --repeat runs;
  amortized     --samples samples: one `kpuc infer` process over all of them, against one runtime process
                per sample (the runtimes take one input each), per sample;
  peak RSS      of the kpuc process (ru_maxrss) and of one runtime process.
Runs alternate kpuc / runtime so that load on the machine hits both alike. Also checks that the outputs
are identical (kpuc infer is bit-exact with these runtimes). A benchmark: nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KPUC_SHARED") or ROOT.parent / "shared")
KPUC = [sys.executable, str(ROOT / "cli.py")]
IMAGES = SHARED / "golden/ulffd_landmark-v4/dataset"


def timed(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode().strip()}")
    return seconds, usage.ru_maxrss * 1024


def input_shape(runtime: Path, kmodel: Path) -> tuple[int, ...]:
    out = subprocess.run([runtime, kmodel, "/dev/null"], capture_output=True, text=True, check=True).stdout
    dtype, shape = out.split("dtype=")[1].split(" shape=")
    if dtype != "uint8":
        raise SystemExit(f"{kmodel}: input is {dtype}; this benchmark feeds uint8 images")
    return tuple(int(d) for d in shape.strip().strip("[]").split(","))


def make_inputs(shape: tuple[int, ...], folder: Path, n: int) -> list[Path]:
    """n raw uint8 CHW inputs: the golden dog image when it fits, then the dataset photos resized."""
    from PIL import Image
    _, c, h, w = shape
    folder.mkdir()
    files = []
    dog = SHARED / "golden/yolo20-v4/inputs/dog_rgb_chw_320x240.u8"
    if dog.is_file() and dog.stat().st_size == c * h * w:
        files.append(dog.read_bytes())
    for jpg in sorted(IMAGES.glob("*.jpg")):
        if len(files) == n:
            break
        img = Image.open(jpg).convert("RGB" if c == 3 else "L").resize((w, h))
        files.append(np.ascontiguousarray(np.asarray(img, np.uint8).reshape(h, w, c).transpose(2, 0, 1)).tobytes())
    rng = np.random.default_rng(0)
    while len(files) < n:
        files.append(rng.integers(0, 256, c * h * w, dtype=np.uint8).tobytes())
    paths = []
    for i, data in enumerate(files):
        (folder / f"s{i:02d}.bin").write_bytes(data)
        paths.append(folder / f"s{i:02d}.bin")
    return paths


def bench(kmodel: Path, runtime: Path, repeat: int, samples: int, tmp: Path) -> dict:
    inputs = make_inputs(input_shape(runtime, kmodel), tmp / "in", samples)
    one = tmp / "one"
    one.mkdir()
    (one / inputs[0].name).write_bytes(inputs[0].read_bytes())
    infer = [*KPUC, "infer", str(kmodel), "--dataset-format", "raw", "--dataset"]
    k_one, o_one, k_rss = [], [], 0
    for _ in range(repeat):
        s, rss = timed([*infer, str(one), str(tmp / "k1")])
        k_one.append(s)
        k_rss = max(k_rss, rss)
        s, o_rss = timed([str(runtime), str(kmodel), str(tmp / "o1"), str(inputs[0])])
        o_one.append(s)
    k_all, rss = timed([*infer, str(tmp / "in"), str(tmp / "kall")])
    k_rss = max(k_rss, rss)
    (tmp / "oall").mkdir()
    o_all = sum(timed([str(runtime), str(kmodel), str(tmp / "oall" / f.stem), str(f)])[0] for f in inputs)
    differing = 0
    for f in inputs:
        for want in sorted((tmp / "oall").glob(f"{f.stem}.out*.bin")):
            got = tmp / "kall" / want.name
            differing += int((np.fromfile(got, "<f4") != np.fromfile(want, "<f4")).sum()) if got.is_file() else -1
    return {"kpuc_one": statistics.median(k_one), "oracle_one": statistics.median(o_one),
            "kpuc_per": k_all / samples, "oracle_per": o_all / samples, "kpuc_rss": k_rss, "oracle_rss": o_rss,
            "differing": differing}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--kmodel", nargs="+", type=Path,
                    default=[SHARED / "golden/yolo20-v3/yolo.kmodel", SHARED / "golden/yolo20-v4/yolo.kmodel"])
    a = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'kmodel':34} {'single shot s (kpuc/runtime)':>30} {'per sample s, ' + str(a.samples) + ' samples':>28} "
          f"{'peak MiB (kpuc/runtime)':>24} {'differing':>9}")
    for kmodel in a.kmodel:
        version = 3 if kmodel.read_bytes()[:4] == (3).to_bytes(4, "little") else 4
        runtime = SHARED / "oracle" / f"v{version}run"
        if not runtime.is_file():
            print(f"{kmodel}: no {runtime}")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            r = bench(kmodel, runtime, a.repeat, a.samples, Path(tmp))
        name = f"{kmodel.parent.name}/{kmodel.name}"
        print(f"{name:34} {r['kpuc_one']:8.3f} /{r['oracle_one']:6.3f} = {r['kpuc_one'] / r['oracle_one']:5.2f}x "
              f"{r['kpuc_per']:8.3f} /{r['oracle_per']:6.3f} = {r['kpuc_per'] / r['oracle_per']:5.2f}x "
              f"{r['kpuc_rss'] / 2**20:10.0f} /{r['oracle_rss'] / 2**20:4.0f}      {r['differing']:>9}")


if __name__ == "__main__":
    main()
