"""The K210 KPU layer, bit for bit: argument words, parameter tables and the integer pipeline.

One KPU layer = 12 u64 argument words (kpu.md §3) + a batch-norm table (one u64 per output channel, §4.1) +
an 18-word activation table (§4.2) + weights (§4.3). `kpu_conv2d` computes
    conv (stride 1, "same", pad_value border) -> arg_x/arg_w/arg_add offsets and shifts -> batch norm
    -> 16-segment activation -> pool -> u8
in int64 numpy. The normative arithmetic is nncase v0.2.0-beta4's software KPU (kmodel-v4.md §10.5, which is
what produced the golden outputs): segment test `bn > x_start` (strict), nncase's "banker" carry shift,
max pools count out-of-map taps as 0, mean pools replicate the edge and divide by filter². (Checked against
the v0.2.0-beta4 tag itself: k210_kernels.h from before alpha1, 2019-07, still rounds half up and omits y_add.)
`kpu_conv2d_reference` is the same thing written as plain loops over Python ints, for the tests only.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from compiler.errors import KpucError, MalformedModel
from targets.k210.bits import BitTable, pack_bits, pack_bits_array, unpack_bits, unpack_bits_array

# The 12 argument words in FIFO / file order (kpu.md §3). Every bit is named so that decode -> encode is
# lossless; `reserved_*` bits are undocumented and 0 in every known file.
ARG_WORDS: tuple[tuple[str, BitTable], ...] = (
    ("interrupt_enabe", (("int_en", 0, 1), ("ram_flag", 1, 1), ("full_add", 2, 1), ("depth_wise_layer", 3, 1),
                         ("reserved_interrupt_enabe", 4, 60))),
    ("image_addr", (("image_src_addr", 0, 15), ("reserved_image_addr_0", 15, 17), ("image_dst_addr", 32, 15),
                    ("reserved_image_addr_1", 47, 17))),
    ("image_channel_num", (("i_ch_num", 0, 10), ("reserved_image_channel_num_0", 10, 22), ("o_ch_num", 32, 10),
                           ("reserved_image_channel_num_1", 42, 6), ("o_ch_num_coef", 48, 10),
                           ("reserved_image_channel_num_2", 58, 6))),
    ("image_size", (("i_row_wid", 0, 10), ("i_col_high", 10, 9), ("reserved_image_size_0", 19, 13),
                    ("o_row_wid", 32, 10), ("o_col_high", 42, 9), ("reserved_image_size_1", 51, 13))),
    ("kernel_pool_type_cfg", (("kernel_type", 0, 3), ("pad_type", 3, 1), ("pool_type", 4, 4), ("first_stride", 8, 1),
                              ("bypass_conv", 9, 1), ("load_para", 10, 1), ("reserved_kernel_pool_type_cfg", 11, 5),
                              ("dma_burst_size", 16, 8), ("pad_value", 24, 8), ("bwsx_base_addr", 32, 32))),
    ("kernel_load_cfg", (("load_coor", 0, 1), ("load_time", 1, 6), ("reserved_kernel_load_cfg", 7, 8),
                         ("para_size", 15, 17), ("para_start_addr", 32, 32))),
    ("kernel_offset", (("coef_column_offset", 0, 4), ("coef_row_offset", 4, 12), ("reserved_kernel_offset", 16, 48))),
    ("kernel_calc_type_cfg", (("channel_switch_addr", 0, 15), ("reserved_kernel_calc_type_cfg", 15, 1),
                              ("row_switch_addr", 16, 4), ("coef_size", 20, 8), ("coef_group", 28, 3),
                              ("load_act", 31, 1), ("active_addr", 32, 32))),
    ("write_back_cfg", (("wb_channel_switch_addr", 0, 15), ("reserved_write_back_cfg_0", 15, 1),
                        ("wb_row_switch_addr", 16, 4), ("wb_group", 20, 3), ("reserved_write_back_cfg_1", 23, 41))),
    ("conv_value", (("shr_w", 0, 4), ("shr_x", 4, 4), ("arg_w", 8, 24), ("arg_x", 32, 24),
                    ("reserved_conv_value", 56, 8))),
    ("conv_value2", (("arg_add", 0, 40), ("reserved_conv_value2", 40, 24))),
    ("dma_parameter", (("send_data_out", 0, 1), ("reserved_dma_parameter", 1, 15), ("channel_byte_num", 16, 16),
                       ("dma_total_byte", 32, 32))),
)
ARG_SIGNED = frozenset({"arg_w", "arg_x", "arg_add"})

BN_WORD: BitTable = (("norm_mul", 0, 24), ("norm_add", 24, 32), ("norm_shift", 56, 4), ("reserved_bn", 60, 4))
BN_SIGNED = frozenset({"norm_mul", "norm_add"})
ACT_SEGMENT_WORD: BitTable = (("shift_number", 0, 8), ("y_mul", 8, 16), ("x_start", 24, 36), ("reserved_act", 60, 4))
ACT_SIGNED = frozenset({"y_mul", "x_start"})

# pool_type -> (name, filter, stride) (kpu.md §6; 6 and 7 exist only in later nncase).
POOL_TYPES = {
    0: ("bypass", 1, 1), 1: ("max_2_s2", 2, 2), 2: ("mean_2_s2", 2, 2), 3: ("max_4_s4", 4, 4),
    4: ("mean_4_s4", 4, 4), 5: ("left_top_2_s2", 2, 2), 6: ("right_top_2_s2", 2, 2), 7: ("left_top_4_s4", 4, 4),
    8: ("mean_2_s1", 2, 1), 9: ("max_2_s1", 2, 1),
}
_SELECT_OFFSET = {"left_top_2_s2": (0, 0), "right_top_2_s2": (0, 1), "left_top_4_s4": (0, 0)}
SELECT_POOLS = tuple(_SELECT_OFFSET)    # keep one pixel of each window (always inside the map), compute nothing


class _KpuArgsMethods:
    """Derived views of the 12 words (shapes, kernel, counts)."""

    @classmethod
    def from_words(cls, words) -> KpuArgs:
        """Decode 12 u64 words."""
        if len(words) != len(ARG_WORDS):
            raise MalformedModel(f"a KPU layer has {len(ARG_WORDS)} argument words, got {len(words)}")
        fields = {}
        for (_, table), word in zip(ARG_WORDS, words):
            fields.update(unpack_bits(table, int(word), ARG_SIGNED))
        return cls(**fields)

    def to_words(self) -> tuple[int, ...]:
        """Encode back into 12 u64 words."""
        return tuple(pack_bits(table, self, ARG_SIGNED) for _, table in ARG_WORDS)

    def replace(self, **changes) -> KpuArgs:
        return dataclasses.replace(self, **changes)

    @property
    def depthwise(self) -> bool:
        return bool(self.depth_wise_layer)

    @property
    def kernel(self) -> int:
        if self.kernel_type not in (0, 1):
            raise MalformedModel(f"KPU kernel_type {self.kernel_type} (only 0 = 1x1 and 1 = 3x3 exist)")
        return 3 if self.kernel_type == 1 else 1

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return self.i_ch_num + 1, self.i_col_high + 1, self.i_row_wid + 1

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return self.o_ch_num + 1, self.o_col_high + 1, self.o_row_wid + 1

    @property
    def weights_shape(self) -> tuple[int, int, int, int]:
        """OIHW; depthwise layers have one input channel per output channel."""
        ic, oc, k = self.i_ch_num + 1, self.o_ch_num + 1, self.kernel
        return oc, 1 if self.depthwise else ic, k, k


KpuArgs = dataclasses.make_dataclass(
    "KpuArgs", [(name, int, dataclasses.field(default=0)) for _, table in ARG_WORDS for name, _, _ in table],
    bases=(_KpuArgsMethods,), frozen=True)
KpuArgs.__doc__ = "The 12 KPU argument words, one attribute per bit field (kpu.md §3); arg_* sign-extended."


@dataclass(eq=False)
class BatchNorm:
    """The batch-norm table (kpu.md §4.1): int64 arrays of length OC."""
    norm_mul: np.ndarray
    norm_add: np.ndarray
    norm_shift: np.ndarray
    reserved_bn: np.ndarray | None = None

    @classmethod
    def from_words(cls, words) -> BatchNorm:
        return cls(**unpack_bits_array(BN_WORD, words, BN_SIGNED))

    def to_words(self) -> np.ndarray:
        fields = dict(vars(self))
        if fields["reserved_bn"] is None:
            fields["reserved_bn"] = np.zeros_like(self.norm_mul)
        return pack_bits_array(BN_WORD, fields, BN_SIGNED)


@dataclass(eq=False)
class ActTable:
    """The activation table (kpu.md §4.2): 16 segments of x_start (s36), y_mul (s16), shift_number, y_add (u8)."""
    x_start: np.ndarray
    y_mul: np.ndarray
    shift_number: np.ndarray
    y_add: np.ndarray
    reserved_act: np.ndarray | None = None

    @classmethod
    def from_words(cls, words) -> ActTable:
        words = np.asarray(words, np.uint64)
        if len(words) != 18:
            raise MalformedModel(f"a KPU activation table has 18 words, got {len(words)}")
        y_add = np.frombuffer(words[16:].astype("<u8").tobytes(), np.uint8).astype(np.int64)
        return cls(**unpack_bits_array(ACT_SEGMENT_WORD, words[:16], ACT_SIGNED), y_add=y_add)

    def to_words(self) -> np.ndarray:
        fields = {k: v for k, v in vars(self).items() if k != "y_add"}
        if fields["reserved_act"] is None:
            fields["reserved_act"] = np.zeros(16, np.int64)
        y_add = np.asarray(self.y_add, np.int64)
        if y_add.min() < 0 or y_add.max() > 255:
            raise MalformedModel("activation y_add values must be u8")
        bias = np.frombuffer(y_add.astype(np.uint8).tobytes(), "<u8").astype(np.uint64)
        return np.concatenate([pack_bits_array(ACT_SEGMENT_WORD, fields, ACT_SIGNED), bias])


def weights_count(args) -> int:
    """Number of weights of a layer: OC·IC·k² (normal) or C·k² (depthwise)."""
    return int(np.prod(args.weights_shape))


def decode_weights(data: bytes, args, eight_bit: bool = True) -> np.ndarray:
    """Weights as OIHW u8 (8-bit mode) or u16 (16-bit mode, little-endian) (kpu.md §4.3)."""
    dtype = np.dtype("u1" if eight_bit else "<u2")
    n = weights_count(args)
    if len(data) < n * dtype.itemsize:
        raise MalformedModel(f"KPU layer needs {n * dtype.itemsize} weight bytes, found {len(data)}")
    return np.frombuffer(data, dtype, n).astype(dtype.newbyteorder("=")).reshape(args.weights_shape)


# ---- integer helpers ---------------------------------------------------------------------------------------

def carry_shift(t, s):
    """The SDK's `kpu_carry_shift` (QuantizedAdd; nncase v0.1's activation): q = t >> (s-1), then round the
    last bit away from zero (half-up for t >= 0; for t < 0 it is not symmetric: t=-1, s=1 gives -2)."""
    t, s = np.asarray(t, np.int64), np.asarray(s, np.int64)
    q = t >> np.maximum(s - 1, 0)
    r = np.where(q & 1 == 1, np.where(q < 0, (q >> 1) - 1, (q >> 1) + 1), q >> 1)
    return np.where(s > 0, r, t)


def carry_shift_banker(t, s):
    """nncase v0.2's `carry_shift<int64, true>` (kmodel-v4.md §10.5): q = t >> s, f = low s bits,
    h = 2^(s-1); f < h: q; f > h: q + sign(t); f == h: q + sign(t) if q is odd else q.
    Round-half-to-even for t >= 0; for t < 0 it is *not* (t=-1, s=2 gives -2), reproduced literally.
    Exact for every s in 0..255 (nncase computes h in 32-bit int, so it only defines s <= 31)."""
    t = np.asarray(t, np.int64)
    s = np.broadcast_to(np.asarray(s, np.int64), t.shape)
    sc = np.clip(s, 1, 62)
    q = t >> sc
    f = t - (q << sc)
    h = np.int64(1) << (sc - 1)
    sign = np.where(t < 0, -1, 1)
    r = np.where((f > h) | ((f == h) & (q & 1 == 1)), q + sign, q)
    r = np.where(s == 0, t, r)
    if (s > 62).any():
        # 2^s > |t| for int64 t: only the sign and the ±2^62 ties matter (f = t or t + 2^s, h = 2^(s-1)).
        big63 = np.where(t < 0, np.where(t < -(1 << 62), -1, -2), np.where(t > (1 << 62), 1, 0))
        big = np.where(t < 0, -2, 0)
        r = np.where(s == 63, big63, np.where(s > 63, big, r))
    return r


# ---- the pipeline, one stage per function -----------------------------------------------------------------

def conv_acc(x: np.ndarray, w: np.ndarray, *, depthwise: bool, pad_value: int,
             arg_x: int, shr_x: int, arg_w: int, shr_w: int, arg_add: int) -> np.ndarray:
    """int64 [OC, H, W]: S_xw + ((arg_x·S_x) >> shr_x) + ((arg_w·S_w) >> shr_w) + arg_add·N (kpu.md §5.1);
    for a batch `x` [B, IC, H, W] the layer on every sample, int64 [B, OC, H, W].

    Stride 1, "same": 3x3 reads a one-pixel ring of `pad_value`. The tap sums run in float BLAS, exact
    because every partial sum is an integer below the float's 2^24 or 2^53 (at most 1024·9·255·65535
    ≈ 1.5e11): float32 when the largest possible sum of this layer stays below 2^24, else float64.
    Exact sums have no order, so a batch gives each sample the very integers it gives alone."""
    if x.ndim == 3:
        return conv_acc(x[None], w, depthwise=depthwise, pad_value=pad_value, arg_x=arg_x, shr_x=shr_x,
                        arg_w=arg_w, shr_w=shr_w, arg_add=arg_add)[0]
    b, ic, h, wd = x.shape
    oc, k = w.shape[0], w.shape[-1]
    p = k // 2
    w64 = np.asarray(w, np.int64)
    if shr_x == 0 and shr_w == 0 and (k == 1 or pad_value == -arg_w) and arg_add == k * k * arg_x * arg_w:
        centered = _centered_conv_acc(x, w64, depthwise, arg_x, arg_w)
        if centered is not None:
            return centered
    taps = (1 if depthwise else ic) * k * k
    biggest = max(int(np.max(x, initial=0)), pad_value if k > 1 else 0) * int(np.abs(w64).reshape(oc, -1).sum(1).max())
    ftype = np.float32 if biggest < 1 << 24 and 255 * taps < 1 << 24 else np.float64
    xf = np.asarray(x, ftype)
    if p:
        xf = np.pad(xf, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=ftype(pad_value))
    wf = w64.astype(ftype)
    if depthwise:
        s_xw = np.zeros((b, oc, h, wd), ftype)
        s_x = np.zeros((b, ic, h, wd), ftype)
        for ky in range(k):
            for kx in range(k):
                tap = xf[:, :, ky:ky + h, kx:kx + wd]
                s_xw += wf[:, 0, ky, kx][:, None, None] * tap
                s_x += tap
        s_xw = s_xw.astype(np.int64)
    else:
        cols = _im2col(xf, k, h, wd)
        s_xw = (wf.transpose(0, 2, 3, 1).reshape(oc, -1) @ cols).reshape(oc, b, h, wd).astype(np.int64)
        s_xw = s_xw.transpose(1, 0, 2, 3)
        s_x = (np.ones(cols.shape[0], ftype) @ cols).reshape(b, 1, h, wd)
    s_x = s_x.astype(np.int64)
    s_w = w64.reshape(oc, -1).sum(axis=1)[:, None, None]
    n = 1 if depthwise else ic
    s_xw += (np.int64(arg_x) * s_x) >> shr_x
    s_xw += ((np.int64(arg_w) * s_w) >> shr_w) + np.int64(arg_add) * n
    return s_xw


def _im2col(xf: np.ndarray, k: int, h: int, wd: int) -> np.ndarray:
    """The padded maps `xf` (b, ic, ·, ·) as im2col columns ordered (sample, y, x), rows ordered (ky, kx, ic)
    to match weights transposed to (oc, ky, kx, ic)."""
    b, ic = xf.shape[:2]
    if k == 1:
        return (xf[0] if b == 1 else xf.transpose(1, 0, 2, 3)).reshape(ic, b * h * wd)
    cols = np.empty((k, k, ic, b, h, wd), xf.dtype)
    for ky in range(k):
        for kx in range(k):
            cols[ky, kx] = xf[:, :, ky:ky + h, kx:kx + wd].transpose(1, 0, 2, 3)
    return cols.reshape(k * k * ic, b * h * wd)


def _centered_conv_acc(x: np.ndarray, w64: np.ndarray, depthwise: bool, arg_x: int, arg_w: int) -> np.ndarray | None:
    """conv_acc of the layers nncase's quantizer makes (shifts 0, pad_value = -arg_w, arg_add = k²·arg_x·arg_w):
    then acc = Σ over the taps of (x + arg_w)·(w + arg_x), the border reading x + arg_w = 0, so one conv of
    the centred codes with zero padding gives it, without S_x, S_w and the int64 sums. Exact in float32
    or float64 as conv_acc is; None if even float64 could not hold every partial sum (the general path)."""
    b, ic, h, wd = x.shape
    oc, k = w64.shape[0], w64.shape[-1]
    p = k // 2
    wc = w64 + arg_x
    x_lo, x_hi = int(np.min(x, initial=0)) + arg_w, int(np.max(x, initial=0)) + arg_w
    biggest = max(abs(x_lo), abs(x_hi)) * int(np.abs(wc).reshape(oc, -1).sum(1).max())
    if biggest >= 1 << 53:
        return None
    ftype = np.float32 if biggest < 1 << 24 else np.float64
    xf = np.asarray(x, ftype)
    xf += ftype(arg_w)                         # exact: small integers
    if p:
        xf = np.pad(xf, ((0, 0), (0, 0), (p, p), (p, p)))
    wf = wc.astype(ftype)
    if depthwise:
        acc = np.zeros((b, oc, h, wd), ftype)
        prod = np.empty_like(acc)
        for ky in range(k):
            for kx in range(k):
                np.multiply(xf[:, :, ky:ky + h, kx:kx + wd], wf[:, 0, ky, kx][:, None, None], out=prod)
                acc += prod
        return acc.astype(np.int64)
    cols = _im2col(xf, k, h, wd)
    acc = (wf.transpose(0, 2, 3, 1).reshape(oc, -1) @ cols).reshape(oc, b, h, wd).astype(np.int64)
    return acc.transpose(1, 0, 2, 3)


_CHUNK_VALUES = 1 << 16


def batch_norm(acc: np.ndarray, bn: BatchNorm, channel_axis: int = 0) -> np.ndarray:
    """((acc·norm_mul) >> norm_shift) + norm_add per output channel (kpu.md §5.2; the channels along
    `channel_axis`), int64."""
    per_channel = (None,) * channel_axis + (slice(None),) + (None,) * (acc.ndim - 1 - channel_axis)
    mul, shift, add = (np.asarray(a, np.int64)[per_channel] for a in (bn.norm_mul, bn.norm_shift, bn.norm_add))
    return ((acc * mul) >> shift) + add


def activate(v: np.ndarray, act: ActTable) -> np.ndarray:
    """The 16-segment activation (kpu.md §5.3 with v0.2's choices) -> uint8.

    Segment = the highest index i with v > x_start[i]. If none qualifies (v <= every x_start; unreachable
    with nncase's segment 0 at -2^35) nncase dereferences past its table; we use segment 0."""
    xs, ym, sh, ya = (np.asarray(a, np.int64) for a in (act.x_start, act.y_mul, act.shift_number, act.y_add))
    if v.size == 0 or not (np.diff(xs) >= 0).all():
        return _activate_any_table(v, xs, ym, sh, ya)
    # Real tables are sorted and a layer's values reach a few segments, which mostly share one shift (a
    # segment with y_mul 0 gives t = 0 whatever its shift): then the shift is a scalar and the segment a few
    # comparisons, far fewer passes over the values than the general form.
    lo, hi = (max(int(np.searchsorted(xs, b, side="left")) - 1, 0) for b in (v.min(), v.max()))
    shifts = {int(sh[i]) for i in range(lo, hi + 1) if ym[i] != 0}
    if len(shifts) > 1 or max(shifts, default=0) > 62:
        return _activate_any_table(v, xs, ym, sh, ya)
    shift = shifts.pop() if shifts else 0
    if lo == hi:
        t = v - xs[lo]
        t *= ym[lo]
        y = _banker_scalar(t, shift)
        y += ya[lo]
    else:
        seg = np.zeros(v.shape, np.uint8)        # the segment, counted from lo (one byte a value: fewer bytes to move)
        above = np.empty(v.shape, bool)
        for i in range(lo + 1, hi + 1):
            np.greater(v, xs[i], out=above)
            seg += above
        del above
        seg = seg.astype(np.intp)
        t = v - np.take(xs[lo:hi + 1], seg)
        t *= np.take(ym[lo:hi + 1], seg)
        y = _banker_scalar(t, shift)
        y += np.take(ya[lo:hi + 1], seg)
    np.clip(y, 0, 255, out=y)
    return y.astype(np.uint8)


def _activate_any_table(v, xs, ym, sh, ya) -> np.ndarray:
    """`activate` for any table (unsorted x_start, per-segment shifts, shifts past 62)."""
    seg = np.zeros(v.shape, np.intp)
    for i in range(16):
        seg[v > xs[i]] = i
    t = (v - xs[seg]) * ym[seg]
    used = np.bincount(seg.ravel(), minlength=16) > 0
    if (sh[used] <= 62).all():
        odd = np.minimum(sh, 1)        # shift 0 passes t through: no half, no odd-bit carry
        half = (odd << np.maximum(sh - 1, 0)) - odd
        y = _banker_shift(t, sh[seg], half[seg], odd[seg])
    else:
        y = carry_shift_banker(t, sh[seg])
    y += ya[seg]
    np.clip(y, 0, 255, out=y)
    return y.astype(np.uint8)


def _banker_scalar(t: np.ndarray, s: int) -> np.ndarray:
    """`_banker_shift` with one shift 0..62 for all values; the sign is applied as (c ^ m) - m, m = t >> 63.
    Overwrites t."""
    if s == 0:
        return t
    q = t >> s
    f = t & ((1 << s) - 1)
    f += (1 << (s - 1)) - 1
    f += q & 1
    f >>= s
    t >>= 63
    f ^= t
    f -= t
    f += q
    return f


def _banker_shift(t: np.ndarray, s: np.ndarray, half_m1: np.ndarray, odd: np.ndarray) -> np.ndarray:
    """`carry_shift_banker` for shifts 0..62 in fewer passes. With q = t >> s, f the low s bits and
    h = 2^(s-1), the carry c = [f > h or (f == h and q odd)] is (f + h - 1 + (q & 1)) >> s, and nncase adds
    sign(t)·c. The caller gives half_m1 = h - 1 and odd = 1, or 0 and 0 where s = 0 (then c = 0).
    Overwrites t."""
    q = t >> s
    f = t - (q << s)
    f += half_m1
    q_odd = q & odd
    f += q_odd
    f >>= s
    t >>= 63
    t |= 1
    f *= t
    f += q
    return f


def pool(y: np.ndarray, pool_type: int) -> np.ndarray:
    """Pooling / down-sampling of a u8 [C, H, W] map (kmodel-v4.md §10.5 step 4); output H div s × W div s."""
    if pool_type not in POOL_TYPES:
        raise MalformedModel(f"KPU pool_type {pool_type} does not exist (0..9)")
    name, f, s = POOL_TYPES[pool_type]
    c, h, w = y.shape
    oh, ow = h // s, w // s
    if name == "bypass":
        return y.copy()
    if name in _SELECT_OFFSET:
        dy, dx = _SELECT_OFFSET[name]
        yp = np.pad(y, ((0, 0), (0, s), (0, s)))      # out-of-map taps read 0 (never happens for these sizes)
        return yp[:, dy:dy + oh * s:s, dx:dx + ow * s:s].copy()
    if name.startswith("max"):
        yp = np.pad(y, ((0, 0), (0, f), (0, f)))      # taps outside the map count as 0
        out = np.zeros((c, oh, ow), np.uint8)
        for ky in range(f):
            for kx in range(f):
                np.maximum(out, yp[:, ky:ky + oh * s:s, kx:kx + ow * s:s], out=out)
        return out
    yp = np.pad(y, ((0, 0), (0, f), (0, f)), mode="edge").astype(np.int64)   # mean: replicate the edge
    total = sum(yp[:, ky:ky + oh * s:s, kx:kx + ow * s:s] for ky in range(f) for kx in range(f))
    return (total // (f * f)).astype(np.uint8)


def kpu_conv2d(x: np.ndarray, w: np.ndarray, bn: BatchNorm, act: ActTable, *, depthwise: bool = False,
               pad_value: int = 0, arg_x: int = 0, shr_x: int = 0, arg_w: int = 0, shr_w: int = 0,
               arg_add: int = 0, pool_type: int = 0) -> np.ndarray:
    """One KPU layer on a dense u8 [IC, H, W] input with OIHW weights -> u8 [OC, H/s, W/s]."""
    if w.ndim != 4 or w.shape[-1] not in (1, 3) or w.shape[-2] != w.shape[-1]:
        raise KpucError(f"KPU weights must be OIHW with a 1x1 or 3x3 kernel, got {w.shape}")
    if depthwise and (w.shape[1] != 1 or w.shape[0] != x.shape[0]):
        raise KpucError(f"depthwise KPU weights must be [C,1,k,k] with C = {x.shape[0]}, got {w.shape}")
    if not depthwise and w.shape[1] != x.shape[0]:
        raise KpucError(f"KPU weights {w.shape} do not match {x.shape[0]} input channels")
    acc = conv_acc(x, w, depthwise=depthwise, pad_value=pad_value, arg_x=arg_x, shr_x=shr_x,
                   arg_w=arg_w, shr_w=shr_w, arg_add=arg_add)
    # Batch norm and activation a few channels at a time: their int64 temporaries stay small (peak RSS).
    y = np.empty(acc.shape, np.uint8)
    step = max(1, _CHUNK_VALUES // max(1, acc[0].size))
    for c in range(0, acc.shape[0], step):
        part = slice(c, c + step)
        y[part] = activate(batch_norm(acc[part], BatchNorm(bn.norm_mul[part], bn.norm_add[part], bn.norm_shift[part])),
                           act)
    return pool(y, pool_type)


def run_kpu_layer(args, x: np.ndarray, w: np.ndarray, bn: BatchNorm, act: ActTable) -> np.ndarray:
    """`kpu_conv2d` with every setting taken from the decoded argument words; checks the output shape."""
    if tuple(x.shape) != args.in_shape:
        raise KpucError(f"KPU layer expects input {args.in_shape}, got {tuple(x.shape)}")
    out = kpu_conv2d(x, w, bn, act, depthwise=args.depthwise, pad_value=args.pad_value, arg_x=args.arg_x,
                     shr_x=args.shr_x, arg_w=args.arg_w, shr_w=args.shr_w, arg_add=args.arg_add,
                     pool_type=args.pool_type)
    if out.shape != args.out_shape:
        raise MalformedModel(f"KPU layer: pool type {args.pool_type} gives {out.shape}, "
                             f"the argument words say {args.out_shape}")
    return out


# ---- slow scalar reference (tests only) --------------------------------------------------------------------

def kpu_conv2d_reference(x, w, bn, act, *, depthwise=False, pad_value=0, arg_x=0, shr_x=0, arg_w=0, shr_w=0,
                         arg_add=0, pool_type=0) -> np.ndarray:
    """`kpu_conv2d` written from the spec text as nested loops over Python ints. Slow; tests only.

    `i64` wraps like nncase's int64_t products do; that only matters outside the hardware's s36 range
    (kpu.md §5.1-5.2), which the property tests still visit with full-width fields."""
    x, w = np.asarray(x).tolist(), np.asarray(w).tolist()
    ic, h, wd = len(x), len(x[0]), len(x[0][0])
    oc, k = len(w), len(w[0][0])
    p = k // 2
    mul, add, shift = (list(map(int, a)) for a in (bn.norm_mul, bn.norm_add, bn.norm_shift))
    xs, ym, sh, ya = (list(map(int, a)) for a in (act.x_start, act.y_mul, act.shift_number, act.y_add))

    def i64(v):
        return (v + (1 << 63)) % (1 << 64) - (1 << 63)

    def banker(t, s):
        if s == 0:
            return t
        q, f, half = t >> s, t - ((t >> s) << s), 1 << (s - 1)
        sign = -1 if t < 0 else 1
        if f < half:
            return q
        if f > half:
            return q + sign
        return q + sign if q % 2 else q

    act_out = [[[0] * wd for _ in range(h)] for _ in range(oc)]
    for o in range(oc):
        channels = [o] if depthwise else list(range(ic))
        for y in range(h):
            for xx in range(wd):
                s_xw = s_x = s_w = 0
                for j, i in enumerate(channels):
                    for ky in range(k):
                        for kx in range(k):
                            yy, xi = y + ky - p, xx + kx - p
                            xv = x[i][yy][xi] if 0 <= yy < h and 0 <= xi < wd else pad_value
                            wv = w[o][0 if depthwise else j][ky][kx]
                            s_xw, s_x, s_w = s_xw + xv * wv, s_x + xv, s_w + wv
                acc = s_xw + ((arg_x * s_x) >> shr_x) + ((arg_w * s_w) >> shr_w) + arg_add * len(channels)
                v = i64((i64(acc * mul[o]) >> shift[o]) + add[o])
                seg = max([i for i in range(16) if v > xs[i]], default=0)
                out = i64(banker(i64(i64(v - xs[seg]) * ym[seg]), sh[seg]) + ya[seg])
                act_out[o][y][xx] = min(max(out, 0), 255)

    name, f, s = POOL_TYPES[pool_type]
    result = [[[0] * (wd // s) for _ in range(h // s)] for _ in range(oc)]
    for o in range(oc):
        for oy in range(h // s):
            for ox in range(wd // s):
                if name == "bypass":
                    val = act_out[o][oy][ox]
                elif name in _SELECT_OFFSET:
                    dy, dx = _SELECT_OFFSET[name]
                    yy, xi = oy * s + dy, ox * s + dx
                    val = act_out[o][yy][xi] if yy < h and xi < wd else 0
                elif name.startswith("max"):
                    val = max(act_out[o][oy * s + ky][ox * s + kx] if oy * s + ky < h and ox * s + kx < wd else 0
                              for ky in range(f) for kx in range(f))
                else:
                    val = sum(act_out[o][min(oy * s + ky, h - 1)][min(ox * s + kx, wd - 1)]
                              for ky in range(f) for kx in range(f)) // (f * f)
                result[o][oy][ox] = val
    return np.array(result, np.uint8).reshape(oc, h // s, wd // s)
