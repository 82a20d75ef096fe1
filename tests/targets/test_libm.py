"""targets/k210/libm.py against the C library it reproduces: this machine's glibc expf, logf, sinf and cosf,
called through ctypes on the same float32 values (glibc >= 2.28 has the algorithms; the oracle runtimes are
linked with it, and on a CPU with FMA both use glibc's FMA builds)."""
from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import pytest

from targets.k210.libm import cosf, expf, logf, sinf


def _c_function(name: str = "expf"):
    library = ctypes.util.find_library("m")
    if library is None:
        pytest.skip("no C math library to compare with")
    fn = getattr(ctypes.CDLL(library), name)
    fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
    return np.vectorize(lambda v: fn(float(v)), otypes=[np.float32])


_c_expf = _c_function


def test_expf_equals_the_c_library_bit_for_bit():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-110, 95, 60_000), rng.uniform(-20, 20, 40_000), rng.standard_normal(20_000),
                        [0.0, -0.0, 88.72283, 88.72284, -103.97207, -103.97208, 1e-30, -1e-30, np.inf, -np.inf]])
    x = x.astype(np.float32)
    with np.errstate(over="ignore"):
        want = _c_expf()(x)
    got = expf(x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert np.isnan(expf(np.float32(np.nan)))


def test_expf_is_not_just_a_rounded_double_exp():
    """The reason it exists: rounding a (nearly) correctly rounded double differs from glibc on some inputs."""
    x = np.random.default_rng(1).uniform(-20, 20, 200_000).astype(np.float32)
    rounded = np.exp(x.astype(np.float64)).astype(np.float32)
    assert (rounded != expf(x)).any()


def _assert_bit_exact(got: np.ndarray, want: np.ndarray):
    """Equal bits everywhere, except that any NaN equals any NaN (the sign of an invalid-operation NaN)."""
    assert got.dtype == np.float32
    differ = (got.view(np.uint32) != want.view(np.uint32)) & ~(np.isnan(got) & np.isnan(want))
    assert not differ.any(), f"{differ.sum()} differ, e.g. x={np.flatnonzero(differ)[:5]}"


def _f32(*parts) -> np.ndarray:
    """The parts as one float32 array (each cast on its own, so NaN bit patterns are never widened)."""
    return np.concatenate([np.asarray(p).astype(np.float32) for p in parts])


def _random_bits(rng, n: int) -> np.ndarray:
    """Every kind of float32: subnormals, huge values, infinities, NaNs, both signs."""
    return rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)


def test_logf_equals_the_c_library_bit_for_bit():
    rng = np.random.default_rng(2)
    x = _f32(rng.uniform(0, 4, 60_000), np.exp(rng.uniform(-100, 88, 60_000)), _random_bits(rng, 30_000),
             [0.0, -0.0, 1.0, -1.0, 1e-45, 1e-40, np.finfo(np.float32).max, np.inf, -np.inf, np.nan])
    with np.errstate(all="ignore"):
        _assert_bit_exact(logf(x), _c_function("logf")(x))


def _near_quadrant_multiples(count: int) -> np.ndarray:
    """float32 values within a few thousand ulps of k·pi/2: where the reduction cancels most bits."""
    base = np.float32(np.arange(1, count + 1) * np.pi / 2).view(np.int32)
    return (base[:, None] + np.arange(-400, 400)[None, :]).astype(np.int32).view(np.float32).ravel()


@pytest.mark.parametrize("name", ["sinf", "cosf"])
def test_sinf_cosf_equal_the_c_library_bit_for_bit(name):
    rng = np.random.default_rng(3)
    near = _near_quadrant_multiples(80)
    x = _f32(rng.uniform(-8, 8, 40_000), rng.uniform(-200, 200, 40_000), np.exp(rng.uniform(-20, 88, 20_000)),
             _random_bits(rng, 20_000), near, -near, [0.0, -0.0, 1e-45, 0.785, 120.0, np.inf, np.nan])
    with np.errstate(all="ignore"):
        _assert_bit_exact({"sinf": sinf, "cosf": cosf}[name](x), _c_function(name)(x))


def test_the_quadrant_reduction_is_fused_like_glibcs_fma_build(monkeypatch):
    """Why libm.fma exists: an unfused x - n·pi/2 differs from the C library next to multiples of pi/2."""
    from targets.k210 import libm
    x = _near_quadrant_multiples(80)
    want = _c_function("sinf")(x)
    monkeypatch.setattr(libm, "fma", lambda a, b, c: np.asarray(a, np.float64) * b + c)
    if not (libm.sinf(x) != want).any():
        pytest.skip("this C library is not the FMA build (no FMA on this CPU?)")
    monkeypatch.undo()
    _assert_bit_exact(libm.sinf(x), want)
