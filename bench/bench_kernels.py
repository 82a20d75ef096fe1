"""Time the float reference conv2d kernels (a benchmark script, not a test).

    .venv/bin/python bench/bench_kernels.py [--repeat N]

Prints milliseconds per call (best and median of N) for a dense 3x3 conv and a depthwise 3x3 conv.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compiler.kernels.conv import conv2d  # noqa: E402


def bench(name: str, fn, repeat: int) -> None:
    fn()  # warm up (allocator, BLAS threads)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    print(f"{name:48s} best {min(times):8.2f} ms   median {statistics.median(times):8.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    same = dict(padding=((1, 1), (1, 1)))

    x = rng.standard_normal((1, 32, 112, 112)).astype(np.float32)
    w = rng.standard_normal((64, 32, 3, 3)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    bench("conv2d 1x32x112x112 -> 64, 3x3 pad 1", lambda: conv2d(x, w, b, **same), args.repeat)

    xd = rng.standard_normal((1, 64, 112, 112)).astype(np.float32)
    wd = rng.standard_normal((64, 1, 3, 3)).astype(np.float32)
    bd = rng.standard_normal(64).astype(np.float32)
    bench("depthwise conv2d 1x64x112x112, 3x3 pad 1", lambda: conv2d(xd, wd, bd, groups=64, **same), args.repeat)
    bench("depthwise conv2d 1x64x112x112, 3x3 stride 2",
          lambda: conv2d(xd, wd, bd, groups=64, strides=(2, 2), padding=((0, 1), (0, 1))), args.repeat)


if __name__ == "__main__":
    main()
