"""numpy's own OpenBLAS, driven directly where numpy's wrappers cost too much: one BLAS thread for the
compile, and an in-place inverse-then-Cholesky for big symmetric matrices.

kpuc's matrix products are many and mid-sized (a conv's im2col, a GPTQ Gram matrix); OpenBLAS's worker
threads spin between them, and on a machine with other work they steal the CPU the main thread needs.
Measured on 2 cores under load (bench/bench_compile.py, mobilenet_v1_0.25_128): 36.8 s wall / 12.3 s CPU
with OpenBLAS's default 2 threads, 12.2 s / 4.3 s with one, the kmodel bytes identical (every
integer product kpuc sums in float64 is exact, and its float sums do not split the reduction axis across
threads). One thread also keeps the float results independent of the machine's core count.

numpy reads OPENBLAS_NUM_THREADS only when it loads OpenBLAS, so the count is set through the library's
own `*_set_num_threads` (found in the process's loaded libraries); an explicit OPENBLAS_NUM_THREADS
(or OMP_NUM_THREADS) in the environment wins. Where no OpenBLAS is found this does nothing.

`inv_cholesky_upper` makes the same two LAPACK calls as `np.linalg.cholesky(np.linalg.inv(a))` (dgesv
against the identity, then dpotrf 'L' on its result), so the bits are the same, but on `a`'s own buffer
and one more: numpy's gufuncs copy each operand and allocate each result, four 40 MiB matrices at once
for a 2304² GPTQ Hessian (the peak RSS of a ulffd_landmark compile).
"""
from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import numpy as np

PREFIXES = ("scipy_openblas", "openblas")      # numpy's wheels rename the symbols with this prefix
SUFFIXES = ("64_", "")                          # the 64-bit-integer builds add this suffix


@cache
def _libraries() -> tuple:
    """The OpenBLAS libraries loaded in this process (numpy's), as ctypes handles."""
    import numpy  # noqa: F401  (loads the library)
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    except OSError:
        return ()
    libs = []
    for path in paths:
        try:
            libs.append(ctypes.CDLL(path))
        except OSError:
            continue
    return tuple(libs)


def _symbol(*names: str):
    """(function, Fortran integer type) of the first of `names` an OpenBLAS here exports, or None. numpy's
    wheels rename OpenBLAS's symbols (scipy_dgesv_64_: `scipy_` prefix, 64-bit integers)."""
    for lib in _libraries():
        for name in names:
            fn = getattr(lib, name, None)
            if fn is not None:
                return fn, ctypes.c_int64 if "64_" in name else ctypes.c_int32
    return None


def _lapack(name: str):
    return _symbol(f"scipy_{name}_64_", f"{name}_64_", f"{name}_")


@cache
def _openblas() -> tuple | None:
    """(get_num_threads, set_num_threads) of the OpenBLAS numpy loaded, or None."""
    get, set_ = (_symbol(*(f"{p}_{name}{suffix}" for p in PREFIXES for suffix in SUFFIXES))
                 for name in ("get_num_threads", "set_num_threads"))
    if get is None or set_ is None:
        return None
    get[0].restype, set_[0].argtypes = ctypes.c_int, [ctypes.c_int]
    return get[0], set_[0]


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


def inv_cholesky_upper(a: np.ndarray) -> np.ndarray:
    """U upper with Uᵀ U = a⁻¹, a a symmetric positive definite float64 [D, D] matrix, bit for bit
    np.linalg.cholesky(np.linalg.inv(a)).T, computed in `a`'s buffer (overwritten) and one more."""
    gesv, potrf = _lapack("dgesv"), _lapack("dpotrf")
    if (gesv is None or potrf is None or gesv[1] is not potrf[1] or a.dtype != np.float64 or a.ndim != 2
            or not a.flags.c_contiguous or not a.flags.writeable or not np.array_equal(a, a.T)):
        return np.linalg.cholesky(np.linalg.inv(a)).T
    (gesv, int_t), (potrf, _) = gesv, potrf
    n = a.shape[0]
    # a symmetric: its C buffer is its own Fortran (column-major) layout, as numpy's copy would be
    b = np.eye(n)
    pivots = np.zeros(n, np.int64 if int_t is ctypes.c_int64 else np.int32)
    size, info = int_t(n), int_t(0)
    ptr = ctypes.POINTER(ctypes.c_double)
    gesv(ctypes.byref(size), ctypes.byref(size), a.ctypes.data_as(ptr), ctypes.byref(size),
         pivots.ctypes.data_as(ctypes.c_void_p), b.ctypes.data_as(ptr), ctypes.byref(size), ctypes.byref(info))
    if info.value:
        raise np.linalg.LinAlgError("Singular matrix")
    # b's buffer is a⁻¹ column-major, the very buffer numpy's cholesky would hand to dpotrf
    lower = ctypes.c_char(b"L")
    potrf(ctypes.byref(lower), ctypes.byref(size), b.ctypes.data_as(ptr), ctypes.byref(size), ctypes.byref(info),
          ctypes.c_size_t(1))
    if info.value:
        raise np.linalg.LinAlgError("Matrix is not positive definite")
    b[np.tri(n, n, -1, dtype=bool)] = 0.0       # read row-major, b holds Lᵀ = U over what dpotrf left
    return b


__all__ = ["blas_threads", "inv_cholesky_upper"]
