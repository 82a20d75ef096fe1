"""What the K210 KPU can run: named limits (each citing the spec) and predicates that say why not.

Every predicate returns a reason string, or None when the thing fits, so the legalization passes,
`kpuc check` and error messages share one source of truth (STYLE.md §5, "Hardware constraints").

Input size. The spec gives three different numbers (kpu.md §10): the argument fields allow
W <= 1024 and H <= 512; nncase's FAQ says <= 320x240 (WxH) "for full acceleration"; ncc v0.2
accepts 4 <= H_in <= 256 and 4 <= W_in <= 512 (kmodel-v4.md §10.3, nncase `kpu_utils.h`
`is_supported_in_shape`). The issue asked for "input <= 320x240": that is the FAQ's advice, not a
hardware limit, so kpuc uses ncc v0.2's enforced limits (the toolchain whose runtime kpuc targets);
a map larger than 320x240 but within 512x256 is placed on the KPU.
Weights need no check: nncase loads them in pieces of <= 30 KiB (kpu.md §10) and one output channel
of a 3x3 conv over 1024 channels is only 9 KiB.
"""
from __future__ import annotations

from compiler.ir import Node, TensorType
from targets.k210.kpu_layout import KPU_RAM_BYTES, KPU_RAM_ROWS, kpu_rows
from targets.k210.ops import KPU_ACTIVATIONS, KPU_POOLS

__all__ = ["KPU_RAM_BYTES", "KPU_RAM_ROWS", "MAX_CHANNELS", "MIN_IN_H", "MIN_IN_W", "MAX_IN_H", "MAX_IN_W",
           "MIN_OUT_H", "MIN_OUT_W", "KERNEL_SIZES", "TABLE_UNARY_OPS", "kpu_padding", "why_not_kpu",
           "why_not_kpu_conv", "why_not_kpu_layer", "activation_step", "kpu_pool_type", "why_not_kpu_pool",
           "kpu_geometry", "transpose_as_conv"]

# i_ch_num / o_ch_num are 10-bit fields holding count - 1 (kpu.md §3 word 2, §10).
MAX_CHANNELS = 1024
# Input map size ncc v0.2 accepts (kmodel-v4.md §10.3; kpu.md §10 "minimum size: input >= 4x4").
MIN_IN_H, MIN_IN_W = 4, 4
MAX_IN_H, MAX_IN_W = 256, 512
# The map a KPU layer writes, after pooling, is at least 4x4 (kpu.md §10 "output >= 4x4, nncase checks").
MIN_OUT_H, MIN_OUT_W = 4, 4
# Weights go to the KPU in loads of at most 30 KiB (8-bit; nncase's choice), whole output channels each, and
# load_time is a 6-bit count - 1: at most 64 loads (kpu.md §7.8, §10), e.g. not a 3x3 conv 512 -> 512.
WEIGHT_LOAD_BYTES, MAX_WEIGHT_LOADS = 30 * 1024, 64
# kernel_type: 0 = 1x1, 1 = 3x3; square, "same", stride 1 (kpu.md §10, kmodel-v4.md §10.3).
KERNEL_SIZES = (1, 3)
# Unary ops the 16-segment piecewise-linear activation table can approximate over a calibrated range
# (kpu.md §5.3: any function, 16 segments). Continuous ones only: a step (sign, floor, round) cannot be
# approximated by a continuous piecewise-linear table.
TABLE_UNARY_OPS = ("sigmoid", "tanh", "hard_swish", "softplus", "abs", "neg", "erf")


def kpu_padding(k: int) -> int:
    """The KPU's implicit ring: 0 for 1x1, 1 pixel of pad_value on every side for 3x3 (kpu.md §5.1)."""
    return k // 2


# ------------------------------------------------------------------ the KPU layer itself
def why_not_kpu_layer(in_shape, out_channels: int, kernel: int, *, depthwise: bool = False,
                      pool: str = "bypass") -> str | None:
    """Whether one KPU layer (stride-1 "same" conv + pool) on an NCHW input map fits the hardware."""
    n, c, h, w = in_shape
    s = KPU_POOLS[pool][1]
    if kernel not in KERNEL_SIZES:
        return f"the KPU filter is 1x1 or 3x3, not {kernel}x{kernel}"
    for what, count in (("input", c), ("output", out_channels)):
        if not 1 <= count <= MAX_CHANNELS:
            return f"{count} {what} channels (the KPU takes 1..{MAX_CHANNELS})"
    if not (MIN_IN_H <= h <= MAX_IN_H and MIN_IN_W <= w <= MAX_IN_W):
        return (f"input map {w}x{h} (WxH) is outside the KPU's {MIN_IN_W}..{MAX_IN_W} x "
                f"{MIN_IN_H}..{MAX_IN_H}")
    if h // s < MIN_OUT_H or w // s < MIN_OUT_W:
        return f"output map {w // s}x{h // s} after pool {pool} is smaller than {MIN_OUT_W}x{MIN_OUT_H}"
    if depthwise and pool != "bypass":
        return "the KPU does not pool a depthwise layer (kpu.md §6; nncase never fuses it)"
    rows = n * (kpu_rows(c, h, w) + kpu_rows(out_channels, h // s, w // s))
    if rows > KPU_RAM_ROWS:
        return f"input and output maps need {rows * 64} bytes of KPU RAM, more than {KPU_RAM_BYTES}"
    loads = 1 if depthwise else -(-out_channels // max(1, WEIGHT_LOAD_BYTES // (kernel * kernel * c)))
    if loads > MAX_WEIGHT_LOADS:
        return (f"its weights need {loads} loads of at most {WEIGHT_LOAD_BYTES // 1024} KiB, more than the "
                f"KPU's {MAX_WEIGHT_LOADS}")
    return None


# ------------------------------------------------------------------ convolutions before legalization
def kpu_geometry(size: int, k: int, pad: tuple[int, int], min_size: int = MIN_IN_H) -> tuple[int, int, int, int]:
    """(pad_before, pad_after, crop_before, crop_after) along one axis for a stride-1, dilation-1 conv.

    The KPU's output pixel j is centred on input j; conv2d's output i starts its window at i - pad[0].
    Missing padding becomes a crop of the output, extra padding an explicit pad of the input, and
    maps below the KPU's minimum are padded at the end with zeros (which read like the ring) and cropped.
    """
    p = kpu_padding(k)
    pb, pa = max(pad[0] - p, 0), max(pad[1] - p, 0)
    cb = max(p - pad[0], 0)
    pa += max(min_size - (size + pb + pa), 0)
    out = size + pad[0] + pad[1] - (k - 1)
    ca = size + pb + pa - cb - out
    return pb, pa, cb, ca


def why_not_kpu_conv(x: TensorType, w_shape, *, groups: int = 1, strides=(1, 1), padding=((0, 0), (0, 0)),
                     dilations=(1, 1)) -> str | None:
    """Why a conv2d of this geometry cannot be legalized onto the KPU (None: the passes can place it).

    Legalization turns strides into slices (or left_top pools), asymmetric/valid padding and small maps
    into pad + crop, and 3x3 dilation into space_to_batch + conv + batch_to_space; what is left to check
    is the map the KPU layer finally sees.
    """
    if x.dtype != "float32":
        return f"legalization runs on the float graph, this input is {x.dtype}"
    if len(x.shape) != 4:
        return f"a rank-{len(x.shape)} input"
    n, c, h, wd = x.shape
    o, cg, kh, kw = w_shape
    if kh != kw or kh not in KERNEL_SIZES:
        return f"the KPU filter is 1x1 or 3x3, not {kh}x{kw}"
    if groups != 1 and not (groups == c == o):
        return f"groups={groups} with {c} -> {o} channels (the KPU does groups=1 or depthwise with multiplier 1)"
    if any(s < 1 for s in strides):
        return f"strides {strides}"
    d = dilations if kh > 1 else (1, 1)
    if d != (1, 1):
        # space_to_batch: d*d batches of ceil((size + pads) / d) pixels, each a "same" 3x3 conv
        n *= d[0] * d[1]
        h, wd = (-(-(size + sum(pad)) // dd) for size, pad, dd in zip((h, wd), padding, d))
        padding = ((1, 1), (1, 1))
    geo = [kpu_geometry(size, kh, pad, least) for size, pad, least in zip((h, wd), padding, (MIN_IN_H, MIN_IN_W))]
    kpu_h, kpu_w = (size + g[0] + g[1] for size, g in zip((h, wd), geo))
    return why_not_kpu_layer((n, c, kpu_h, kpu_w), o, kh, depthwise=groups != 1)


def _why_not_conv2d(node: Node) -> str | None:
    x, w, b = node.inputs
    if not (w.is_constant and b.is_constant):
        return "its weights are computed at run time (KPU weights are constants in the kmodel)"
    return why_not_kpu_conv(x.type, w.shape, groups=node.attrs["groups"],
                            strides=node.attrs["strides"],
                            padding=node.attrs["padding"],
                            dilations=node.attrs["dilations"])


def transpose_as_conv(x: TensorType, w_shape, attrs) -> tuple[TensorType, tuple, dict]:
    """The stride-1 conv2d equivalent to a conv2d_transpose: (input type, OIHW weight shape, conv attrs).

    The input gets s-1 zeros after every pixel (H*s rows); the conv pads by d*(k-1) - pad, minus the
    s-1 trailing zeros already there, plus output_padding, and uses the flipped, transposed kernel.
    """
    n, c, h, wd = x.shape
    ci, og, kh, kw = w_shape
    g = attrs["groups"]
    s, d = attrs["strides"], attrs["dilations"]
    pad, op = attrs["padding"], attrs["output_padding"]
    padding = tuple((dd * (k - 1) - p[0], dd * (k - 1) - p[1] + o - (ss - 1))
                    for dd, k, p, o, ss in zip(d, (kh, kw), pad, op, s))
    return (TensorType((n, c, h * s[0], wd * s[1]), x.dtype), (og * g, ci // g, kh, kw),
            {"groups": g, "padding": padding, "dilations": tuple(d)})


def _why_not_conv2d_transpose(node: Node) -> str | None:
    x, w, b = node.inputs
    if not (w.is_constant and b.is_constant):
        return "its weights are computed at run time (KPU weights are constants in the kmodel)"
    xt, w_shape, attrs = transpose_as_conv(x.type, w.shape, node.attrs)
    return why_not_kpu_conv(xt, w_shape, **attrs)


def _why_not_matmul(node: Node) -> str | None:
    a, b = node.inputs
    if a.dtype != "float32":
        return f"legalization runs on the float graph, this input is {a.dtype}"
    if not b.is_constant or len(b.shape) != 2:
        return "B is not a constant matrix (the KPU needs the weights in the kmodel)"
    if len(a.shape) != 2:
        return f"A has rank {len(a.shape)} (only (M, K) @ (K, N) becomes a 1x1 KPU conv)"
    m, k = a.shape
    # M rows become M batches of a K-channel 4x4 map (the KPU minimum), cropped back to 1x1.
    return why_not_kpu_layer((m, k, MIN_IN_H, MIN_IN_W), b.shape[1], 1)


def _why_not_kpu_conv2d(node: Node) -> str | None:
    x, w, b = node.inputs
    if not (w.is_constant and b.is_constant):
        return "its weights are computed at run time (KPU weights are constants in the kmodel)"
    return why_not_kpu_layer(x.shape, w.shape[0], w.shape[-1], depthwise=node.attrs["depthwise"],
                             pool=node.attrs["pool"])


# ------------------------------------------------------------------ activations and pools
def activation_step(node: Node) -> tuple | None:
    """The KPU activation step (a `kpu_conv2d` `activation` entry) that `node` computes, or None."""
    # Any one-operand table-lookup op of the op table: the step is its attrs in definition order.
    if node.op not in KPU_ACTIVATIONS or (node.op == "unary" and node.attrs["op"] not in TABLE_UNARY_OPS):
        return None
    return (node.op, *(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
                       for v in node.attrs.values()))


def _pool(node: Node) -> tuple[str | None, str | None]:
    """(KPU pool type, None) for a reduce_window2d the KPU can compute, else (None, reason)."""
    a = node.attrs
    (h, w), (oh, ow) = node.inputs[0].shape[-2:], node.output.shape[-2:]
    k, s = tuple(a["kernel"]), tuple(a["strides"])
    pad = tuple(tuple(p) for p in a["padding"])
    if tuple(a["dilations"]) != (1, 1) or k[0] != k[1] or s[0] != s[1]:
        return None, f"pool window {k} stride {s} is not a square KPU pool"
    if (k[0], s[0]) in ((2, 2), (4, 4)):
        if pad != ((0, 0), (0, 0)) or (oh, ow) != (h // s[0], w // s[0]):
            return None, f"{a['op']} pool {k} s{s} with padding {pad} to {oh}x{ow} is not H div {s[0]}"
        return f"{a['op']}_{k[0]}_s{s[0]}", None
    if (k[0], s[0]) == (2, 1):
        # TF SAME 2x2/1 pads one after. max over the valid taps == the KPU's (out-of-map taps lose);
        # an edge-replicated mean /4 equals the mean over the valid taps ((a+a+c+c)/4 == (a+c)/2).
        if pad != ((0, 1), (0, 1)) or (a["op"] == "mean" and a["count_include_pad"]):
            return None, f"{a['op']} pool 2x2 s1 with padding {pad} is not TF SAME"
        return f"{a['op']}_2_s1", None
    return None, f"pool window {k} stride {s} has no KPU pool type (2x2/2, 4x4/4, 2x2/1)"


def kpu_pool_type(node: Node) -> str | None:
    """The KPU pool type a reduce_window2d maps onto (kpu.md §6), or None."""
    return _pool(node)[0] if node.op == "reduce_window2d" else None


def why_not_kpu_pool(node: Node) -> str | None:
    """Why a reduce_window2d cannot be fused into a KPU layer's pool."""
    return _pool(node)[1] if node.op == "reduce_window2d" else f"{node.op} is not a pool"


# ------------------------------------------------------------------ one entry point
def why_not_kpu(node: Node) -> str | None:
    """Why `node` cannot run on (or be fused into) a KPU layer, or None if legalization can place it."""
    if reason := node.meta.get("keep_float"):  # a compile option (e.g. --output-quantize-threshold) said so
        return reason
    if node.op == "conv2d":
        return _why_not_conv2d(node)
    if node.op == "kpu_conv2d":
        return _why_not_kpu_conv2d(node)
    if node.op == "conv2d_transpose":
        return _why_not_conv2d_transpose(node)
    if node.op == "matmul":
        return _why_not_matmul(node)
    if node.op == "reduce_window2d":
        return why_not_kpu_pool(node)
    if node.op == "prelu":
        return "PReLU has a slope per channel; the KPU has one activation table per layer (kpu.md §4.2)"
    if node.op in ("clamp", "leaky_relu", "unary", "hard_sigmoid"):
        if activation_step(node) is None:
            return f"unary {node.attrs['op']} is not continuous, a piecewise-linear table cannot follow it"
        return None
    return f"{node.op} has no KPU form"
