"""targets/k210/libm.py against the C library it reproduces: this machine's glibc expf, called through ctypes
on the same float32 values (glibc >= 2.28 has the algorithm; the oracle runtimes are linked with it)."""
from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import pytest

from targets.k210.libm import expf


def _c_expf():
    name = ctypes.util.find_library("m")
    if name is None:
        pytest.skip("no C math library to compare with")
    fn = ctypes.CDLL(name).expf
    fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
    return np.vectorize(lambda v: fn(float(v)), otypes=[np.float32])


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
