"""The host C library's float32 functions, bit for bit, vectorized: what the K210 runtimes built for a PC
(../shared/oracle) and nncase's software KPU path compute.

`expf` follows glibc's algorithm (glibc >= 2.28, sysdeps/ieee754/flt-32/e_expf.c, the method of
Szabolcs Nagy's optimized-routines): x·N/ln2 = k + r with N = 32, exp(x) = 2^(k/N) · p(r) evaluated in
double with a 32-entry table of 2^(i/N) and a degree-3 polynomial, then rounded once to float. Rounding a
correctly rounded double exp instead differs from it on about 0.06% of inputs; this differs on none
(tests/targets/test_libm.py compares it with the C library's expf).

`logf`, `sinf` and `cosf` follow glibc's algorithms of the same family (e_logf.c, s_sinf.c, s_cosf.c) with
the multiply-adds fused as in glibc's FMA builds, which x86-64 glibc (and so the oracle runtimes) selects
on CPUs with FMA. Rounding a float64 evaluation instead differs on ~0.03% (logf) to ~1% (sinf, cosf) of
inputs; unfused reduction differs next to multiples of pi/2.
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


# ---------------------------------------------------------------- fused multiply-add
# The x86-64 glibc picks its FMA builds of logf/sinf/cosf (the same C compiled with -mfma, so the compiler
# contracts a*b + c into one fused operation) on CPUs that have FMA, and the oracle runtimes run there.
def _split(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Veltkamp: a = hi + lo, each with at most 26 significant bits (so hi*hi' etc. are exact)."""
    t = a * 134217729.0                      # 2^27 + 1
    hi = t - (t - a)
    return hi, a - hi


def fma(a, b, c) -> np.ndarray:
    """a*b + c in float64 with one rounding (up to a double rounding of the exact sum in rare ties):
    the exact product as p + e (Dekker), then p + c as s + t (Knuth), then s + (t + e)."""
    a, b, c = (np.asarray(v, np.float64) for v in (a, b, c))
    with np.errstate(all="ignore"):
        p = a * b
        (ah, al), (bh, bl) = _split(a), _split(b)
        e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
        s = p + c
        bv = s - p
        t = (p - (s - bv)) + (c - bv)
        out = s + (t + e)
    return np.where(np.isfinite(out), out, p + c)


# ---------------------------------------------------------------- logf
# glibc >= 2.27 sysdeps/ieee754/flt-32/e_logf.c: x = 2^k z with z in [0x3f330000, 2·that), z/c - 1 = r for
# the c of z's 1/16 subinterval, log(x) = k·ln2 + log(c) + log1p(r), log1p by a degree-4 polynomial.
_LOGF_TABLE = np.array([  # (1/c, log c)
    ("0x1.661ec79f8f3bep+0", "-0x1.57bf7808caadep-2"), ("0x1.571ed4aaf883dp+0", "-0x1.2bef0a7c06ddbp-2"),
    ("0x1.49539f0f010bp+0", "-0x1.01eae7f513a67p-2"), ("0x1.3c995b0b80385p+0", "-0x1.b31d8a68224e9p-3"),
    ("0x1.30d190c8864a5p+0", "-0x1.6574f0ac07758p-3"), ("0x1.25e227b0b8eap+0", "-0x1.1aa2bc79c81p-3"),
    ("0x1.1bb4a4a1a343fp+0", "-0x1.a4e76ce8c0e5ep-4"), ("0x1.12358f08ae5bap+0", "-0x1.1973c5a611cccp-4"),
    ("0x1.0953f419900a7p+0", "-0x1.252f438e10c1ep-5"), ("0x1p+0", "0x0p+0"),
    ("0x1.e608cfd9a47acp-1", "0x1.aa5aa5df25984p-5"), ("0x1.ca4b31f026aap-1", "0x1.c5e53aa362eb4p-4"),
    ("0x1.b2036576afce6p-1", "0x1.526e57720db08p-3"), ("0x1.9c2d163a1aa2dp-1", "0x1.bc2860d22477p-3"),
    ("0x1.886e6037841edp-1", "0x1.1058bc8a07ee1p-2"), ("0x1.767dcf5534862p-1", "0x1.4043057b6ee09p-2"),
])
_LOGF_INVC, _LOGF_LOGC = (np.array([float.fromhex(h) for h in col]) for col in _LOGF_TABLE.T)
_LOGF_POLY = tuple(float.fromhex(h) for h in ("-0x1.00ea348b88334p-2", "0x1.5575b0be00b6ap-2",
                                              "-0x1.ffffef20a4123p-2"))
_LN2 = float.fromhex("0x1.62e42fefa39efp-1")
_LOGF_OFF = np.uint32(0x3F330000)


def logf(x) -> np.ndarray:
    """glibc's logf of a float32 array, as a float32 array."""
    x = np.asarray(x, np.float32)
    ix = x.view(np.uint32)
    with np.errstate(all="ignore"):
        subnormal = (ix > 0) & (ix < 0x00800000)
        ix = np.where(subnormal, (x * np.float32(2.0**23)).view(np.uint32) - np.uint32(23 << 23), ix)
        tmp = ix - _LOGF_OFF
        i = (tmp >> np.uint32(19)) % np.uint32(16)
        k = tmp.view(np.int32) >> np.int32(23)
        z = (ix - (tmp & np.uint32(0x1FF << 23))).view(np.float32).astype(np.float64)
        r = fma(z, _LOGF_INVC[i], -1.0)
        y0 = fma(k.astype(np.float64), _LN2, _LOGF_LOGC[i])
        r2 = r * r
        y = fma(_LOGF_POLY[1], r, _LOGF_POLY[2])
        y = fma(_LOGF_POLY[0], r2, y)
        out = fma(y, r2, y0 + r).astype(np.float32)
    out = np.where(x == 0, np.float32(-np.inf), out)          # log(±0) = -inf
    out = np.where(x == np.inf, x, out)
    return np.where((x < 0) | np.isnan(x), np.float32(np.nan), out).astype(np.float32)


# ---------------------------------------------------------------- sinf, cosf
# glibc >= 2.28 sysdeps/ieee754/flt-32/s_sinf.c, s_cosf.c, s_sincosf.h: reduce x to r in [-pi/4, pi/4] and a
# quadrant n (one multiply-subtract below 120, a 4/pi fixed-point product above), then a sine or cosine
# polynomial in double by the parity of n, its sign by the quadrant.
_SIGN = np.array([1.0, -1.0, -1.0, 1.0])
_HPI_INV = float.fromhex("0x1.45F306DC9C883p+23")   # 2/pi · 2^24: the quadrant lands in bits 24..31
_HPI = float.fromhex("0x1.921FB54442D18p0")
_PI63 = float.fromhex("0x1.921FB54442D18p-62")      # 2pi · 2^-64
_COS_POLY = np.array([[float.fromhex(h) for h in ("0x1p0", "-0x1.ffffffd0c621cp-2", "0x1.55553e1068f19p-5",
                                                  "-0x1.6c087e89a359dp-10", "0x1.99343027bf8c3p-16")]])
_COS_POLY = np.concatenate([_COS_POLY, -_COS_POLY])  # the second table computes -cos (quadrants 2 and 3)
_SIN_POLY = tuple(float.fromhex(h) for h in ("-0x1.555545995a603p-3", "0x1.1107605230bc4p-7",
                                             "-0x1.994eb3774cf24p-13"))
_INV_PIO4 = np.array([  # 4/pi to 192 bits, 8 new bits per entry
    0xa2, 0xa2f9, 0xa2f983, 0xa2f9836e, 0xf9836e4e, 0x836e4e44, 0x6e4e4415, 0x4e441529,
    0x441529fc, 0x1529fc27, 0x29fc2757, 0xfc2757d1, 0x2757d1f5, 0x57d1f534, 0xd1f534dd, 0xf534ddc0,
    0x34ddc0db, 0xddc0db62, 0xc0db6295, 0xdb629599, 0x6295993c, 0x95993c43, 0x993c4390, 0x3c439041], np.uint64)
_TOP12_PIO4, _TOP12_TINY, _TOP12_120, _TOP12_INF = 0x3F4, 0x398, 0x42F, 0x7F8


def _reduce_fast(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """r = x - n·pi/2 with n from (int32)(x·2/pi·2^24) + 2^23 >> 24; the subtraction fused (FMA build)."""
    n = (np.trunc(x * _HPI_INV).astype(np.int64).astype(np.int32) + np.int32(0x800000)) >> np.int32(24)
    return fma(-n.astype(np.float64), _HPI, x), n.astype(np.int64)


def _reduce_large(xi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|x| >= 120 from its bits: a 32x96-bit product with 4/pi gives n and r as 2.62 fixed point."""
    arr = ((xi >> np.uint32(26)) & np.uint32(15)).astype(np.int64)
    shift = ((xi >> np.uint32(23)) & np.uint32(7)).astype(np.uint64)
    m = (((xi & np.uint32(0xFFFFFF)) | np.uint32(0x800000)).astype(np.uint64) << shift)
    res0 = (m * _INV_PIO4[arr]) & np.uint64(0xFFFFFFFF)           # a 32-bit product in C
    res1, res2 = m * _INV_PIO4[arr + 4], m * _INV_PIO4[arr + 8]
    res0 = ((res2 >> np.uint64(32)) | (res0 << np.uint64(32))) + res1
    n = (res0 + np.uint64(1 << 61)) >> np.uint64(62)
    res0 = res0 - (n << np.uint64(62))
    return res0.view(np.int64).astype(np.float64) * _PI63, n.astype(np.int64)


def _sincos_poly(x: np.ndarray, x2: np.ndarray, table: np.ndarray, odd: np.ndarray) -> np.ndarray:
    """sinf_poly: the sine polynomial for an even quadrant, the (signed) cosine one for an odd."""
    x3 = x * x2
    s1 = fma(x2, _SIN_POLY[2], _SIN_POLY[1])
    sin = fma(x3 * x2, s1, fma(x3, _SIN_POLY[0], x))
    c = _COS_POLY[table]
    x4 = x2 * x2
    c2 = fma(x2, c[..., 4], c[..., 3])
    c1 = fma(x2, c[..., 1], c[..., 0])
    cos = fma(x4 * x2, c2, fma(x4, c[..., 2], c1))
    return np.where(odd, cos, sin)


def _sinf_cosf(y, cosine: bool) -> np.ndarray:
    y = np.asarray(y, np.float32)
    bits = y.view(np.uint32)
    top12 = (bits >> np.uint32(20)) & np.uint32(0x7FF)
    x = y.astype(np.float64)
    with np.errstate(all="ignore"):
        small = _sincos_poly(x, x * x, np.zeros(x.shape, np.intp), np.full(x.shape, cosine))
        r, n = _reduce_fast(x)
        rl, nl = _reduce_large(bits)
        large = top12 >= _TOP12_120
        quadrant = np.where(large, nl + (bits >> np.uint32(31)), n)   # large: the sign joins the quadrant
        r, n = np.where(large, rl, r), np.where(large, nl, n)
        reduced = _sincos_poly(r * _SIGN[quadrant & 3], r * r, ((quadrant & 2) >> 1).astype(np.intp),
                               ((n & 1) == 1) ^ cosine)
        out = np.where(top12 < _TOP12_PIO4, small, reduced).astype(np.float32)
    tiny = np.float32(1.0) if cosine else y
    out = np.where(top12 < _TOP12_TINY, tiny, out)
    return np.where(top12 >= _TOP12_INF, np.float32(np.nan), out).astype(np.float32)


def sinf(x) -> np.ndarray:
    """glibc's sinf of a float32 array, as a float32 array."""
    return _sinf_cosf(x, cosine=False)


def cosf(x) -> np.ndarray:
    """glibc's cosf of a float32 array, as a float32 array."""
    return _sinf_cosf(x, cosine=True)
