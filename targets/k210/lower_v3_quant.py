"""kmodel v3 emitters of the quantized CPU layers: Quantize, Dequantize, Requantize tables and the quantized
add, with the searches for the SDK parameters that match the IR (lower_v3.py has the overview)."""
from __future__ import annotations

import numpy as np

from compiler.ir import Node, QuantParam
from compiler.quantization import F32, QuantParamU8, dequantize_u8, quantize_u8, round_half_away_from_zero
from targets.k210.kernels import K210_KERNELS
from targets.k210.kmodel_v3 import FullyConnectedBody, LayerType
from targets.k210.kpu import carry_shift
from targets.k210.lower_v3_core import EXACT_DEQUANTIZE_MAX, Lowering, Ref, Unexpressible, fixed, lowers


# ---------------------------------------------------------------- quantized CPU layers
def _u8_param(scale: float, zero_point: int) -> QuantParamU8:
    return QuantParamU8.from_ir(QuantParam(scale, zero_point))


def _near(value, k: int) -> np.ndarray:
    """float32 values within k ulps of `value`, nearest first."""
    v = F32(value)
    steps = np.array([0] + [s * i for i in range(1, k + 1) for s in (1, -1)], np.int64)
    bits = np.array([v], F32).view(np.int32).astype(np.int64) + steps * (1 if v >= 0 else -1)
    return bits.astype(np.int32).view(F32)


def quantize_params(scale: float, zero_point: int) -> tuple[float, float, int]:
    """(scale, bias) of a v3 Quantize for the IR's quantize_u8, and how many boundary samples disagree.

    The SDK computes roundf((x − bias)·(1.0f/scale)); the IR roundf(x·S + zp). The scale is the float32
    whose reciprocal is S exactly, so with zp = 0 (bias 0) both are the same product. With zp ≠ 0 the
    two formulas round differently near the half-way points: the bias is picked among nearby floats to
    agree at every float32 within 16 ulps of each of the 256 rounding boundaries."""
    q = _u8_param(scale, zero_point)
    s_u8 = F32(q.scale)
    sc = next((c for c in _near(F32(1) / s_u8, 64) if F32(1) / c == s_u8), F32(1) / s_u8)
    if zero_point == 0:
        return float(sc), 0.0, 0 if F32(1) / sc == s_u8 else -1
    edges = (np.arange(256) + 0.5 - zero_point) / np.float64(s_u8)
    xs = np.concatenate([_near(e, 16) for e in edges])
    want = quantize_u8(xs, q)
    inv = F32(1) / sc
    best = None
    for b in _near(F32(-zero_point * np.float64(sc)), 8):
        with np.errstate(all="ignore"):
            got = np.clip(round_half_away_from_zero((xs - b) * inv), 0, 255)
        bad = int((got != want).sum())
        if best is None or bad < best[1]:
            best = (float(b), bad)
    return float(sc), best[0], best[1]


def dequantize_params(scale: float, zero_point: int) -> tuple[float, float, int, float]:
    """(scale, bias) of a v3 Dequantize (SDK: q·scale + bias) for the IR's (q − zp)·d, d = 1/(1/scale) in
    float32; also how many of the 256 codes still differ and by how much at most. Exact when zp = 0; else
    the best pair near (d, −zp·d) over all 256 codes (an exact pair rarely exists)."""
    q = _u8_param(scale, zero_point)
    codes = np.arange(256)
    want = dequantize_u8(codes, q)
    d = F32(1) / F32(q.scale)
    if zero_point == 0:
        return float(d), 0.0, 0, 0.0
    best = None
    for sc in _near(d, 4):
        for b in _near(F32(-zero_point * np.float64(sc)), 4):
            got = codes.astype(F32) * sc + b
            bad, err = int((got != want).sum()), float(np.abs(got.astype(np.float64) - want).max())
            if best is None or (bad, err) < best[2:]:
                best = (float(sc), float(b), bad, err)
    return best


@lowers("quantize_u8")
def quantize(ctx: Lowering, node: Node) -> None:
    """f32 -> u8 -> Quantize (§8.6); the input's quantize is the kmodel's input contract instead."""
    x, y = node.inputs[0], node.output
    sc, bias, bad = quantize_params(node.attrs["scale"], node.attrs["zero_point"])
    if bad:
        ctx.inexact.append(f"Quantize '{node.name}': {bad if bad > 0 else 'some'} float32 inputs next to a rounding "
                           f"boundary get another code than quantize_u8 (zero point {node.attrs['zero_point']})")
    _emit_quantize(ctx, node.name, ctx.main(x), ctx.main(y), y.type.size, sc, bias)


@lowers("quantize_v3")
def quantize_v3(ctx: Lowering, node: Node) -> None:
    """The SDK's own Quantize (device_semantics): its (scale, bias) are the layer's."""
    _emit_quantize(ctx, node.name, ctx.main(node.inputs[0]), ctx.main(node.output), node.output.type.size,
                   node.attrs["scale"], node.attrs["bias"])


def _emit_quantize(ctx: Lowering, name: str, rx: Ref, ry: Ref, count: int, sc: float, bias: float) -> None:
    ctx.emit(name, LayerType.Quantize, [rx], [ry], fixed(
        LayerType.Quantize, flags=0, main_mem_in_address=rx, mem_out_address=ry, count=count, scale=sc, bias=bias))


@lowers("dequantize_u8")
def dequantize(ctx: Lowering, node: Node) -> None:
    """u8 -> f32 -> Dequantize (§8.7): exact when the zero point is 0, else the nearest (scale, bias), or for
    small tensors Dequantize(1, −zp) + a diagonal FullyConnected, which is exact."""
    x, y = node.inputs[0], node.output
    sc, bias, bad, err = dequantize_params(node.attrs["scale"], node.attrs["zero_point"])
    n = y.type.size
    if bad and n <= EXACT_DEQUANTIZE_MAX:
        # Dequantize(1, −zp) gives q − zp exactly; a diagonal FullyConnected multiplies each by d once
        # (the other products are zeros, which add exactly): the IR's (q − zp)·d, bit for bit.
        d = F32(1) / F32(_u8_param(node.attrs["scale"], node.attrs["zero_point"]).scale)
        rx, mid, ry = ctx.main(x), ctx.scratch(f"{node.name}@centred", 4 * n), ctx.main(y)
        ctx.emit(node.name, LayerType.Dequantize, [rx], [mid], fixed(
            LayerType.Dequantize, flags=1, main_mem_in_address=rx, main_mem_out_address=mid, count=n,
            scale=1.0, bias=-float(node.attrs["zero_point"])))
        weights, zeros = np.diag(np.full(n, d, F32)), np.zeros(n, F32)
        ctx.emit(f"{node.name}/scale", LayerType.FullyConnected, [mid], [ry], lambda addr: FullyConnectedBody(
            0, addr(mid), addr(ry), 0, weights, zeros))
        return
    if bad:
        zp = node.attrs["zero_point"]
        ctx.inexact.append(f"Dequantize '{node.name}': {bad} of 256 codes differ from dequantize_u8 by up to "
                           f"{err:.3g} (the SDK computes q·scale + bias, the IR (q − {zp})·scale)")
    rx, ry = ctx.main(x), ctx.main(y)
    ctx.emit(node.name, LayerType.Dequantize, [rx], [ry], fixed(
        LayerType.Dequantize, flags=1, main_mem_in_address=rx, main_mem_out_address=ry, count=y.type.size,
        scale=sc, bias=bias))


@lowers("dequantize_v3")
def dequantize_v3(ctx: Lowering, node: Node) -> None:
    """The SDK's own Dequantize (device_semantics): q·scale + bias with the node's (scale, bias)."""
    rx, ry = ctx.main(node.inputs[0]), ctx.main(node.output)
    ctx.emit(node.name, LayerType.Dequantize, [rx], [ry], fixed(
        LayerType.Dequantize, flags=1, main_mem_in_address=rx, main_mem_out_address=ry, count=node.output.type.size,
        scale=node.attrs["scale"], bias=node.attrs["bias"]))


def _table_layer(ctx: Lowering, node: Node, table: np.ndarray) -> None:
    x, y = node.inputs[0], node.output
    rx, ry = ctx.main(x), ctx.main(y)
    ctx.emit(node.name, LayerType.Requantize, [rx], [ry], fixed(
        LayerType.Requantize, flags=1, main_mem_in_address=rx, main_mem_out_address=ry, count=y.type.size,
        table=np.asarray(table, np.uint8).tobytes()))


@lowers("requantize_u8")
def requantize(ctx: Lowering, node: Node) -> None:
    """u8 -> u8 through new quantization -> Requantize with the kernel's own 256-entry table (§8.8)."""
    _table_layer(ctx, node, K210_KERNELS["requantize_u8"](np.arange(256, dtype=np.uint8), **node.attrs))


@lowers("table_lookup1d")
def table_lookup1d(ctx: Lowering, node: Node) -> None:
    """table[x] is what Requantize computes (§8.8), whatever function the table holds."""
    table = node.inputs[1]
    if not table.is_constant:
        raise Unexpressible("the lookup table is computed at run time")
    _table_layer(ctx, node, table.data)


def _sdk_quantized_add(a, b, p: dict) -> np.ndarray:
    """kpu.c's QuantizedAdd on int64 arrays (kmodel-v3.md §8.2)."""
    va = (a + p["in_a_offset"]) * p["in_a_mul"]
    vb = (b + p["in_b_offset"]) * p["in_b_mul"]
    if p["in_a_shift"] == p["in_b_shift"]:
        v = (va + vb) >> p["in_a_shift"]
    else:
        v = (va >> p["in_a_shift"]) + (vb >> p["in_b_shift"])
    return np.clip(carry_shift(v * p["out_mul"], p["out_shift"]) + p["out_offset"], 0, 255)


def _float_add(ga, gb, qa: QuantParam, qb: QuantParam, qy: QuantParam) -> tuple[np.ndarray, list]:
    """Codes of the SDK's Dequantize, Dequantize, Add, Quantize on int64 code arrays, and those params."""
    da, db = (dequantize_params(q.scale, q.zero_point)[:2] for q in (qa, qb))
    sc, bias, _ = quantize_params(qy.scale, qy.zero_point)
    total = (ga.astype(F32) * F32(da[0]) + F32(da[1])) + (gb.astype(F32) * F32(db[0]) + F32(db[1]))
    with np.errstate(all="ignore"):
        codes = np.clip(round_half_away_from_zero((total - F32(bias)) * (F32(1) / F32(sc))), 0, 255)
    return codes.astype(np.int64), [da, db, (sc, bias)]


def sdk_add_form(node: Node) -> tuple[str, object, int, int] | None:
    """How v3 adds two same-shape u8 maps (a quantized_binary add), None if it cannot: (form, params,
    mismatches of that form, mismatches of QuantizedAdd) over the 65536 input pairs against the IR kernel.
    form "QuantizedAdd": params are the SDK layer's fields; "float" (Dequantize ×2 + Add + Quantize): params
    are [(scale, bias) of each Dequantize, (scale, bias) of the Quantize]. The float form is taken when it
    disagrees less often: QuantizedAdd shifts the operand sum down (floor) where the IR rounds each operand,
    and the SDK's carry shift rounds negative values one step too far (kpu.md §5.6)."""
    a, b = node.inputs
    at, y = node.attrs, node.output
    if at["op"] != "add" or a.shape != b.shape or a.is_constant or b.is_constant:
        return None
    p = {"in_a_offset": at["input_a_offset"], "in_a_mul": at["input_a_mul"], "in_a_shift": at["input_a_shift"],
         "in_b_offset": at["input_b_offset"], "in_b_mul": at["input_b_mul"], "in_b_shift": at["input_b_shift"],
         "out_offset": at["output_offset"], "out_mul": at["output_mul"], "out_shift": at["output_shift"]}
    ga, gb = (g.reshape(-1).astype(np.int64) for g in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))
    want = K210_KERNELS["quantized_binary"](ga.astype(np.uint8), gb.astype(np.uint8), **at).astype(np.int64)
    bad_int = int((_sdk_quantized_add(ga, gb, p) != want).sum())
    if a.quant and b.quant and y.quant:
        float_codes, float_params = _float_add(ga, gb, a.quant, b.quant, y.quant)
        bad_float = int((float_codes != want).sum())
        if bad_float < bad_int:
            return "float", float_params, bad_float, bad_int
    return "QuantizedAdd", p, bad_int, bad_int


@lowers("quantized_binary")
def quantized_binary(ctx: Lowering, node: Node) -> None:
    """u8 add of two same-shape maps: QuantizedAdd (§8.2), or Dequantize ×2 + Add + Quantize, whichever
    agrees with the IR kernel on more of the 65536 input pairs (sdk_add_form, checked exhaustively); the
    float path typically disagrees 20× less often."""
    a, b = node.inputs
    y = node.output
    form = sdk_add_form(node)
    if form is None:
        raise Unexpressible(f"quantized {node.attrs['op']} of {a.shape} and {b.shape} (v3 has the add of two "
                            "same-shape maps)")
    kind, params, bad, bad_int = form
    n, ra, rb, ry = y.type.size, ctx.main(a), ctx.main(b), ctx.main(y)
    if kind == "float":
        da, db, (sc, bias) = params
        fa, fb, total = (ctx.scratch(f"{node.name}@{k}", 4 * n) for k in ("a", "b", "sum"))
        for r, f, (sc_in, b_in), k in ((ra, fa, da, "a"), (rb, fb, db, "b")):
            ctx.emit(f"{node.name}/dequantize_{k}", LayerType.Dequantize, [r], [f], fixed(
                LayerType.Dequantize, flags=1, main_mem_in_address=r, main_mem_out_address=f, count=n,
                scale=sc_in, bias=b_in))
        ctx.emit(f"{node.name}/add", LayerType.Add, [fa, fb], [total], fixed(
            LayerType.Add, flags=1, main_mem_in_a_address=fa, main_mem_in_b_address=fb, main_mem_out_address=total,
            count=n))
        _emit_quantize(ctx, node.name, total, ry, n, sc, bias)
    else:
        _emit_quantized_add(ctx, node.name, ra, rb, ry, n, params)
    if bad:
        form_name = "Dequantize+Add+Quantize" if kind == "float" else "QuantizedAdd"
        ctx.inexact.append(f"quantized add '{node.name}' as {form_name}: {bad} of 65536 input pairs give another "
                           f"code than quantized_binary (QuantizedAdd: {bad_int})")


@lowers("quantized_add_v3")
def quantized_add_v3(ctx: Lowering, node: Node) -> None:
    """The SDK's own QuantizedAdd (device_semantics): the node's fields are the layer's."""
    a, b = node.inputs
    _emit_quantized_add(ctx, node.name, ctx.main(a), ctx.main(b), ctx.main(node.output), node.output.type.size,
                        node.attrs)


def _emit_quantized_add(ctx: Lowering, name: str, ra: Ref, rb: Ref, ry: Ref, n: int, params: dict) -> None:
    ctx.emit(name, LayerType.QuantizedAdd, [ra, rb], [ry], fixed(
        LayerType.QuantizedAdd, flags=1, main_mem_in_a_address=ra, main_mem_in_b_address=rb,
        main_mem_out_address=ry, count=n, **params))
