"""Run the compile on one BLAS thread.

kpuc's matrix products are many and mid-sized (a conv's im2col, a GPTQ Gram matrix); OpenBLAS's worker
threads spin between them, and on a machine with other work they steal the CPU the main thread needs.
Measured on 2 cores under load (bench/bench_compile.py, mobilenet_v1_0.25_128): 36.8 s wall / 12.3 s CPU
with OpenBLAS's default 2 threads, 12.2 s / 4.3 s with one, the kmodel bytes identical (every
integer product kpuc sums in float64 is exact, and its float sums do not split the reduction axis across
threads). One thread also keeps the float results independent of the machine's core count.

numpy reads OPENBLAS_NUM_THREADS only when it loads OpenBLAS, so the count is set through the library's
own `*_set_num_threads` (found in the process's loaded libraries); an explicit OPENBLAS_NUM_THREADS
(or OMP_NUM_THREADS) in the environment wins. Where no OpenBLAS is found this does nothing.
"""
from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

PREFIXES = ("scipy_openblas", "openblas")      # numpy's wheels rename the symbols with this prefix
SUFFIXES = ("64_", "")                          # the 64-bit-integer builds add this suffix


@cache
def _openblas() -> tuple | None:
    """(get_num_threads, set_num_threads) of the OpenBLAS numpy loaded, or None."""
    import numpy  # noqa: F401  (loads the library)
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in PREFIXES:
            for suffix in SUFFIXES:
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and set_ is not None:
                    get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
                    return get, set_
    return None


@contextmanager
def blas_threads(count: int = 1) -> Iterator[None]:
    """Limit OpenBLAS to `count` threads inside the block (restored after), unless the environment sets it."""
    fns = None if "OPENBLAS_NUM_THREADS" in os.environ or "OMP_NUM_THREADS" in os.environ else _openblas()
    if fns is None:
        yield
        return
    get, set_ = fns
    before = get()
    set_(count)
    try:
        yield
    finally:
        set_(before)


__all__ = ["blas_threads"]
