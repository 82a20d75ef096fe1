"""The host C library's float32 functions, bit for bit, vectorized: what the K210 runtimes built for a PC
(../shared/oracle) and nncase's software KPU path compute.

`expf` follows glibc's algorithm (glibc >= 2.28, sysdeps/ieee754/flt-32/e_expf.c, the method of
Szabolcs Nagy's optimized-routines): x·N/ln2 = k + r with N = 32, exp(x) = 2^(k/N) · p(r) evaluated in
double with a 32-entry table of 2^(i/N) and a degree-3 polynomial, then rounded once to float. Rounding a
correctly rounded double exp instead differs from it on about 0.06% of inputs; this differs on none
(tests/targets/test_libm.py compares it with the C library's expf).
"""
from __future__ import annotations

import numpy as np

_N = 32
# 2^(i/N) with i·2^52/N taken out of its bits, so adding k << (52 - 5) scales it by 2^(k div N).
_TABLE = np.array([np.float64(2.0 ** (i / _N)).view(np.uint64) - np.uint64(i << 47) for i in range(_N)], np.uint64)
_POLY = (float.fromhex("0x1.c6af84b912394p-5") / _N**3, float.fromhex("0x1.ebfce50fac4f3p-3") / _N**2,
         float.fromhex("0x1.62e42ff0c52d6p-1") / _N)
_INV_LN2_N = float.fromhex("0x1.71547652b82fep+0") * _N
_SHIFT = float.fromhex("0x1.8p+52")            # adding it rounds z to an integer kept in the low bits
_OVERFLOW = np.float32(float.fromhex("0x1.62e42ep6"))     # above: +inf
_UNDERFLOW = np.float32(-float.fromhex("0x1.9fe368p6"))   # below: +0


def expf(x) -> np.ndarray:
    """glibc's expf of a float32 array, as a float32 array."""
    x = np.asarray(x, np.float32)
    z = _INV_LN2_N * x.astype(np.float64)
    with np.errstate(all="ignore"):
        kd = z + _SHIFT
        ki = kd.view(np.uint64)
        r = z - (kd - _SHIFT)
        s = (_TABLE[ki % np.uint64(_N)] + (ki << np.uint64(47))).view(np.float64)
        y = ((_POLY[0] * r + _POLY[1]) * (r * r) + (_POLY[2] * r + 1.0)) * s
        out = y.astype(np.float32)
    out = np.where(x > _OVERFLOW, np.float32(np.inf), out)
    out = np.where(x < _UNDERFLOW, np.float32(0.0), out)
    return np.where(np.isnan(x), x, out).astype(np.float32)
