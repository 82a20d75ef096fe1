"""Data-aware rounding of a KPU layer's uint8 weights (GPTQ, Frantar et al. 2022 / OBQ's error feedback).

The grid stays nncase's (kmodel-v4.md §10.6): per-channel equalisation scales folded into the batch norm,
one weight scale and zero point for the layer; only *which* code each weight gets changes. Instead of
rounding each weight to its nearest code, the weights of an output channel are rounded one input tap at
a time and the rounding error of each tap is pushed onto the taps not yet rounded, weighted by the
inverse of the layer-input Gram matrix H = X Xᵀ (X = the layer's input patches on calibration data),
which lowers ||(W - W̃) X||² below nearest rounding's (on MobileNet v1 0.25 about +1 dB at the logits
on top of bias correction, bench/bench_mobilenet_ptq.py; ulffd_landmark's outputs +1.1-1.6 dB). H is damped (1% of its mean diagonal)
since 10 calibration images give few samples for the late, narrow layers.

Everything is float64 numpy and deterministic (fixed tap order).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from compiler.blas import inv_cholesky_upper
from compiler.parallel import parallel_map, workers
from compiler.quantization import QuantParamU8

DAMP = 0.01
# From this many input channels a dense 3x3 layer's H is cheaper from the input's self-correlations (shift_gram)
# than from its patches: 13 C×C products instead of one (9C)² (measured: 2.4 -> 1.25 s at C = 256, 8x10, 20 samples).
SHIFT_GRAM_MIN_CHANNELS = 64
# ... and from 16 channels on maps of 32x32 and more (measured, 20 samples, one thread: 0.22 -> 0.13 s at 32x66x64,
# a split MobileNet's dense copy of Conv2d_2_depthwise; 0.059 -> 0.043 s at 16x64x64; a tie at 32x16x16).
SHIFT_GRAM_MIN_CHANNELS_BIG_MAP, BIG_MAP_PIXELS = 16, 1024
# From this map size a depthwise layer's H is cheaper from correlation images (depthwise_gram) than from patches
# (measured, 20 samples: 0.58 -> 0.25 s at 32x120x160, 0.056 -> 0.049 s at 128x15x20; slower below 16x16).
DEPTHWISE_GRAM_MIN_PIXELS = 300


def kpu_patches(x: np.ndarray, k: int, depthwise: bool, rows: tuple[int, int] | None = None) -> np.ndarray:
    """Input patches of a stride-1 'same' KPU conv, `x` = [N, IC, H, W] real-centred input (padding 0),
    for the output rows `rows` (start, stop; all by default): dense -> [IC·k·k, N·R·W] (rows in OIHW weight
    order); depthwise -> [IC, k·k, N·R·W]."""
    n, c, h, w = x.shape
    r0, r1 = rows or (0, h)
    p = k // 2
    xp = np.pad(np.asarray(x[:, :, max(r0 - p, 0):r1 + p], np.float64),
                ((0, 0), (0, 0), (p - min(r0, p), p - min(h - r1, p)), (p, p)))
    win = sliding_window_view(xp, (k, k), axis=(2, 3))                        # [N, C, R, W, ky, kx]
    taps = win.transpose(1, 4, 5, 0, 2, 3).reshape(c, k * k, n * (r1 - r0) * w)   # one copy
    return taps if depthwise else taps.reshape(c * k * k, -1)


def gram(x: np.ndarray, k: int, depthwise: bool, *, chunk_bytes: int = 16 << 20) -> np.ndarray:
    """H = X Xᵀ of the patches: [D, D] dense, [C, k·k, k·k] depthwise (float64), summed over chunks of
    whole samples whose patches take about `chunk_bytes`, so a big map never holds all its patches at once.
    `x` holds integers (uint8 codes minus the zero point), so every partial sum is an integer below 2^53
    and H is exact whatever the chunking and the BLAS summation order (or shift_gram's route, taken for
    wide dense 3x3 layers)."""
    n, c, h, w = x.shape
    if k == 3 and not depthwise and c >= SHIFT_GRAM_MIN_CHANNELS:
        return shift_gram(x, k, depthwise, chunk_bytes=chunk_bytes)
    if k == 3 and not depthwise and c >= SHIFT_GRAM_MIN_CHANNELS_BIG_MAP and h * w >= BIG_MAP_PIXELS:
        # half the chunk: the patch route's peak memory (MobileNet's compile: 107 -> 95 MB, as fast)
        return shift_gram(x, k, depthwise, chunk_bytes=chunk_bytes // 2)
    if depthwise and k > 1 and h * w >= DEPTHWISE_GRAM_MIN_PIXELS:
        return depthwise_gram(x, k)
    per_sample = c * k * k * h * w * 8
    step = max(1, chunk_bytes // max(per_sample, 1))
    starts = list(range(0, n, step))

    def partial(share):             # one thread's chunks, summed (exact integers: any grouping gives the same H)
        total = 0.0
        for i in share:
            p = kpu_patches(x[i:i + step], k, depthwise)
            total = total + (np.matmul(p, p.transpose(0, 2, 1)) if depthwise else p @ p.T)
            del p                   # before the next chunk's patches exist
        return total
    shares = [starts[j::workers()] for j in range(min(workers(), len(starts)))]
    return sum(parallel_map(partial, shares))


def depthwise_gram(x: np.ndarray, k: int, *, chunk_bytes: int = 2 << 20) -> np.ndarray:
    """gram() of a depthwise layer, [C, k·k, k·k], from correlation images instead of patches: with the
    input zero-padded by 2p (p = k // 2), tap a reads the window W_a = the map shifted by a, so
    H[c, a, b] = Σ_{q in W_a} x[q]·x[q + d], d = b - a. C_d[c, q] = Σ_samples x[q]·x[q + d] is one product
    per offset (only the offsets d >= 0 in row-major order: H is symmetric), and each window sum is four
    reads of C_d's summed-area table. Integer inputs keep every sum exact, so H is the patches' H bit for
    bit: C_d in float32 while N·max|x|² < 2^24 (every partial sum an integer float32 holds), else float64;
    the tables in float64 (below 2^53). A few channels at a time (about `chunk_bytes` of padded input)."""
    n, c, h, w = x.shape
    p, q = k // 2, 2 * (k // 2)
    hp, wp = h + 2 * q, w + 2 * q
    biggest = max(abs(int(x.max())), abs(int(x.min()))) if x.size else 0
    ftype = np.float32 if n * biggest * biggest < 1 << 24 else np.float64
    offsets = [(dy, dx) for dy in range(k) for dx in range(-(k - 1), k) if dy > 0 or dx >= 0]
    taps = [(ay, ax) for ay in range(k) for ax in range(k)]
    out = np.zeros((c, k * k, k * k))
    step = max(1, chunk_bytes // (n * hp * wp * np.dtype(ftype).itemsize))

    def channels(c0):                                          # its own rows of `out`: any thread, any order
        xp = np.pad(np.asarray(x[:, c0:c0 + step], ftype), ((0, 0), (0, 0), (q, q), (q, q)))
        cc = xp.shape[1]
        for dy, dx in offsets:
            j0, j1 = max(0, -dx), wp - max(0, dx)             # columns where q and q + d are both in the grid
            table = np.zeros((cc, hp + 1, wp + 1))            # summed-area table of C_d
            table[:, 1:hp + 1 - dy, 1 + j0:1 + j1] = np.einsum("nchw,nchw->chw", xp[:, :, :hp - dy, j0:j1],
                                                                xp[:, :, dy:, j0 + dx:j1 + dx])
            table = table.cumsum(axis=1).cumsum(axis=2)
            for ia, (ay, ax) in enumerate(taps):
                by, bx = ay + dy, ax + dx
                if not (0 <= by < k and 0 <= bx < k):
                    continue
                ib = by * k + bx
                r0, s0 = ay + p, ax + p                       # W_a in padded coordinates
                v = table[:, r0 + h, s0 + w] - table[:, r0, s0 + w] - table[:, r0 + h, s0] + table[:, r0, s0]
                out[c0:c0 + cc, ia, ib] = v
                out[c0:c0 + cc, ib, ia] = v
    parallel_map(channels, range(0, c, step))
    return out


def shift_gram(x: np.ndarray, k: int, depthwise: bool, *, chunk_bytes: int = 16 << 20) -> np.ndarray:
    """gram() from the patches' translation structure: the patch rows of taps a and b hold the input at
    offsets a and b, so their product over the output pixels is the input's correlation with itself at
    d = b - a over the whole map, less the one map row (and column) that tap a never reads (inclusion-
    exclusion). Dense: 13 C×C products (the other 12 offsets are their transposes) instead of the
    (C·k²)² of the patches; integer inputs keep every sum exact, so H is identical."""
    n, c, h, w = x.shape
    p = k // 2
    q = 2 * p                                         # room for the largest offset d
    taps = [(ky - p, kx - p) for ky in range(k) for kx in range(k)]
    edge_row, edge_col = {1: 0, -1: h - 1}, {1: 0, -1: w - 1}    # what a tap at ±1 never reads
    # dense: one contiguous C×C block per tap pair (strided adds into [C, k², C, k²] cost more than the products)
    out = np.zeros((c, k * k, k * k) if depthwise else (k * k, k * k, c, c))

    def prod(a, b):
        """Σ over samples and pixels of a ⊗ b: [C, C] dense, [C] depthwise."""
        if depthwise:
            return np.einsum("ncyx,ncyx->c", a, b)
        return np.moveaxis(a, 1, 0).reshape(c, -1) @ np.moveaxis(b, 1, 0).reshape(c, -1).T

    def add(ia, ib, v):
        if depthwise:
            out[:, ia, ib] += v
        else:
            out[ia, ib] += v

    pairs: dict[tuple, list] = {}                     # offset d -> the tap pairs (a, b) with b - a = d
    for ia, a in enumerate(taps):
        for ib, b in enumerate(taps):
            pairs.setdefault((b[0] - a[0], b[1] - a[1]), []).append((ia, ib))
    step = max(1, chunk_bytes // (3 * 8 * c * (h + 2 * q) * (w + 2 * q)))    # the padded chunk + two flat copies
    for i in range(0, n, step):
        xp = np.pad(np.asarray(x[i:i + step], np.float64), ((0, 0), (0, 0), (q, q), (q, q)))
        x0 = xp[:, :, q:q + h, q:q + w]
        x0m = None if depthwise else np.moveaxis(x0, 1, 0).reshape(c, -1)

        def shifted(d, xp=xp):
            return xp[:, :, q + d[0]:q + d[0] + h, q + d[1]:q + d[1] + w]
        for d, members in pairs.items():
            if depthwise:
                corr = prod(x0, shifted(d))
            elif d >= (0, 0):
                corr = x0m @ np.moveaxis(shifted(d), 1, 0).reshape(c, -1).T
            else:
                continue                               # added as the transpose of -d below
            for ia, ib in members:
                add(ia, ib, corr)
            if not depthwise and d != (0, 0):
                for ia, ib in pairs[(-d[0], -d[1])]:
                    add(ia, ib, corr.T)
        for d, members in pairs.items():
            edges: dict[tuple, np.ndarray] = {}      # an edge product depends only on (row, column) for one offset
            sh = shifted(d)
            for ia, ib in members:
                ay, ax = taps[ia]
                u, v = edge_row.get(ay), edge_col.get(ax)
                terms = ([((u, None), -1)] if ay else []) + ([((None, v), -1)] if ax else []) + \
                    ([((u, v), 1)] if ay and ax else [])       # the row and the column tap a never reads
                for key, sign in terms:
                    if key not in edges:
                        rows = slice(None) if key[0] is None else slice(key[0], key[0] + 1)
                        cols = slice(None) if key[1] is None else slice(key[1], key[1] + 1)
                        edges[key] = prod(x0[:, :, rows, cols], sh[:, :, rows, cols])
                    add(ia, ib, edges[key] if sign > 0 else -edges[key])
    return out if depthwise else out.transpose(2, 0, 3, 1).reshape(c * k * k, c * k * k)


class GptqFactor(NamedTuple):
    """What GPTQ needs of a Gram matrix H, computed once per layer input: U upper with (damped H)⁻¹ = Uᵀ U
    ([1, D, D] shared by every row or [R, D, D] per row), and the taps whose input is all zero."""
    u: np.ndarray
    dead: np.ndarray       # bool [1, D] or [R, D]
    shared: bool


def gptq_factor(h: np.ndarray, *, damp: float = DAMP, overwrite: bool = False) -> GptqFactor:
    """The GptqFactor of `h` ([D, D] shared by every row, or [R, D, D] per row), damped by `damp` of its mean
    diagonal; a dead tap (zero diagonal) gets 1 so H stays invertible. `overwrite`: damp a float64 `h` in
    place instead of a copy (a 2304² H is 40 MiB)."""
    hs = np.asarray(h, np.float64) if overwrite else np.array(h, np.float64)
    del h
    shared = hs.ndim == 2
    hs = hs[None] if shared else hs
    diag = np.einsum("rii->ri", hs)
    dead = diag == 0
    idx = np.arange(hs.shape[1])
    hs[:, idx, idx] += damp * np.maximum(diag.mean(axis=1, keepdims=True), 1e-12) + dead
    # U upper with H⁻¹ = Uᵀ U (GPTQ: the Cholesky factor of the inverse, upper form)
    if shared:      # one big matrix: numpy's LAPACK calls, in place (compiler/blas.py)
        return GptqFactor(inv_cholesky_upper(hs[0])[None], dead, shared)
    return GptqFactor(np.linalg.cholesky(np.linalg.inv(hs)).transpose(0, 2, 1), dead, shared)


def gptq_round(w: np.ndarray, h: np.ndarray, wq: QuantParamU8, *, damp: float = DAMP) -> np.ndarray:
    """uint8 codes of `w` ([R, D] equalised weights, real value = (code - zp) / scale) minimising
    Σ_r (w_r - w̃_r)ᵀ H_r (w_r - w̃_r); `h` is [D, D] shared by every row or [R, D, D] per row."""
    return gptq_round_factored(w, gptq_factor(h, damp=damp), wq)


def gptq_round_factored(w: np.ndarray, factor: GptqFactor, wq: QuantParamU8) -> np.ndarray:
    """gptq_round with H given as its GptqFactor (shared by the layers that read one input)."""
    w = np.array(w, np.float64)
    u, dead = factor.u, factor.dead
    if factor.shared:
        # equal rows get equal codes (a row's rounding reads only the row and the shared factor): a split
        # layer's two output copies have the same weights, so each pair is rounded once
        first_of = {}                   # row bytes -> the first row holding them (cheaper than np.unique's sort)
        inverse = np.array([first_of.setdefault(row.tobytes(), r) for r, row in enumerate(w)])
        if len(first_of) < len(w):
            firsts = np.unique(inverse)
            codes = gptq_round_factored(w[firsts], factor, wq)
            return codes[np.searchsorted(firsts, inverse)]
        w[:, dead[0]] = 0.0
    else:
        w[dead] = 0.0
    zp, scale = wq.zero_point, float(wq.scale)
    # A row's taps before its first nonzero weight round to the zero point with no error, so nothing moves
    # until then (a split layer's dense copy of a depthwise conv: row o starts at its own channel, the loop
    # does about half the work). Rows sorted by that tap; step i updates only the rows started by then:
    # the same elementwise operations on every value, so the same codes.
    nonzero = w != 0
    starts = np.where(nonzero.any(axis=1), nonzero.argmax(axis=1), w.shape[1])
    order = np.argsort(starts, kind="stable")
    identity = bool(np.all(order[1:] > order[:-1]))
    w = w if identity else w[order]
    u = np.broadcast_to(u, (w.shape[0],) + u.shape[1:]) if factor.shared or identity else u[order]
    started = np.searchsorted(starts[order], np.arange(w.shape[1]), side="right")
    codes = np.full(w.shape, np.clip(np.floor(0.0 * scale + zp + 0.5), 0, 255), np.int64)
    step = np.empty(w.shape)            # the update's products, in one buffer: no allocation (page faults) per tap
    for i in range(w.shape[1]):
        r = started[i]
        col = w[:r, i]
        q = np.clip(np.floor(col * scale + zp + 0.5), 0, 255)
        codes[:r, i] = q
        err = (col - (q - zp) / scale) / u[:r, i, i]
        rest, products = w[:r, i + 1:], step[:r, i + 1:]
        np.multiply(err[:, None], u[:r, i, i + 1:], out=products)
        np.subtract(rest, products, out=rest)
    if identity:
        return codes.astype(np.uint8)
    out = np.empty(codes.shape, np.uint8)
    out[order] = codes
    return out


def round_kpu_weights(w_eq: np.ndarray, wq: QuantParamU8, x: np.ndarray, *, depthwise: bool,
                      damp: float = DAMP) -> np.ndarray:
    """uint8 OIHW codes for equalised float weights `w_eq` given the layer's real-centred inputs `x`
    ([N, IC, H, W], padding = 0)."""
    oc, _, k, _ = w_eq.shape
    h = gram(x, k, depthwise)
    return gptq_round(w_eq.reshape(oc, -1), h, wq, damp=damp).reshape(w_eq.shape)


__all__ = ["kpu_patches", "gram", "depthwise_gram", "shift_gram", "gptq_round", "gptq_factor", "gptq_round_factored", "GptqFactor",
           "round_kpu_weights"]
