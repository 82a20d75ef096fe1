"""kmodel v4 emitters for the uint8 and KPU ops (kmodel-v4.md §8.4, §8.7, §8.16-§8.19, §10).

The quantizer (targets/k210/quantize.py) leaves every integer already computed in the IR: quant params
as attrs, KPU tables and quantized weights as constants (targets/k210/ops.py), so these
emitters only move numbers into bodies. What they decide is where KPU maps live (§6.2, §10.6):
- a uint8 model input read only by KPU layers is itself a `kpu` input (the host uploads it);
- a KPU layer reads its input from KPU RAM: the map a previous layer left there, or one `kpu_upload`
  per value from main memory;
- a KPU layer's result stays in KPU RAM and, when any reader is not a KPU layer (or it is a model
  output), is also written densely to main memory by the same layer (`main_mem_output`), instead of a
  separate download;
- a stride slice between a KPU layer and 1x1 layers becomes their pool (`plan_kpu_subsampling`).
And which runtime op computes a 256-entry function of the codes: a `quantized_binary` when one provably
gives the same table (no 256-byte constant), else `table_lookup1d`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from compiler.errors import KpucError
from compiler.ir import Node, QuantParam, Value
from compiler.quantization import QuantParamU8, mul_and_carry_shift
from targets.k210 import kmodel_v4 as k4
from targets.k210.kernels import POOL_TYPE_OF, kpu_tables, requantize
from targets.k210.kpu import KpuArgs
from targets.k210.kpu_layout import row_layout
from targets.k210.lower_v4_core import Buffer, Lowering, emitter, shape4
from targets.k210.lower_v4_math import BINARY_CODES

KPU_LAYER_OPS = ("kpu_conv2d_q",)
WEIGHT_LOAD_BYTES = 30 * 1024          # ncc splits a layer's weights into loads of at most 30 KiB (§10.3)


def _u8_param(scale: float, zero_point: int) -> k4.QuantParam:
    """The IR's (real step, zero point) as the file's quant_param_t (levels per unit, float32)."""
    q = QuantParamU8.from_ir(QuantParam(scale, zero_point))
    return k4.QuantParam(q.zero_point, q.scale)


def _const(node: Node, v: Value, what: str) -> np.ndarray:
    if not v.is_constant:
        raise KpucError(f"{node.name}: the {what} must be a constant (it goes into the body)")
    return v.data


# ---------------------------------------------------------------- where values live
def _kpu_only(ctx: Lowering, v: Value) -> bool:
    """Whether only KPU layers read `v` (as their input map) on the k210 target."""
    users = v.user_nodes()
    return (ctx.target == "k210" and v.dtype == "uint8" and v.type.rank == 4 and bool(users)
            and all(u.op in KPU_LAYER_OPS and u.inputs[0] is v for u in users) and v not in ctx.graph.outputs)


def input_buffer(ctx: Lowering, v: Value) -> None:
    """Where the host writes model input `v` (§5.1):
    - a float input that the graph only quantizes (one quantize_u8, or several alike) becomes a uint8 input
      holding the codes, unless input_type is "float" (ncc's --input-type default/uint8); the quantize is
      not emitted;
    - a uint8 input read only by KPU layers lives in KPU RAM (the host writes the KPU layout), any other
      in main memory."""
    users = v.user_nodes()
    quantizes = (v.dtype == "float32" and bool(users) and v not in ctx.graph.outputs
                 and all(u.op == "quantize_u8" and u.attrs == users[0].attrs for u in users))
    if ctx.input_type == "uint8" and not quantizes and v.dtype != "uint8":
        raise KpucError(f"input %{v.name}: --input-type uint8 needs a model whose input is quantized first")
    if quantizes and ctx.input_type != "float":
        codes = [u.output for u in users]
        kpu = all(_kpu_only(ctx, c) for c in codes)
        buf = ctx.new_buffer(v.name, v.shape, "uint8", k4.MEM_KPU if kpu else k4.MEM_MAIN)
        for u, c in zip(users, codes):
            ctx.absorbed.add(u)
            (ctx.kpu if kpu else ctx.main)[c] = buf
    else:
        buf = ctx.output(v, k4.MEM_KPU if _kpu_only(ctx, v) else k4.MEM_MAIN)
    ctx.inputs[v] = buf


def kpu_input(ctx: Lowering, v: Value) -> Buffer:
    """The KPU map of `v`: where a layer left it, else uploaded once from main memory (§8.27)."""
    if v not in ctx.kpu:
        src = ctx.buffer(v)
        dst = ctx.new_buffer(f"{v.name}/kpu", v.shape, "uint8", k4.MEM_KPU)
        ctx.emit(k4.KpuUpload(src, dst, shape4(v.shape)))
        ctx.kpu[v] = dst
    return ctx.kpu[v]


def _needs_main_copy(ctx: Lowering, v: Value) -> bool:
    """Whether some reader of a KPU layer's result needs it in main memory (a CPU op, a model output)."""
    def on_kpu(u: Node) -> bool:
        return (u.op in KPU_LAYER_OPS and u.inputs[0] is v) or u in ctx.subsampled_by
    return v in ctx.graph.outputs or not all(on_kpu(u) for u in v.user_nodes())


SUBSAMPLE_POOLS = {2: "left_top_2_s2", 4: "left_top_4_s4"}


def plan_kpu_subsampling(ctx: Lowering) -> None:
    """Decide, before lowering, which stride-s slices of a KPU map become the pool of the 1x1 layers
    that read them (as ncc moves a stride past a pointwise conv into its `left_top` pool, §12).

    kpu_conv2d_q(..) -> strided_slice(step s on H, W from 0) -> kpu_conv2d_q(1x1, bypass)
        ==>   kpu_conv2d_q(..) -> kpu_conv2d_q(1x1, pool left_top_s_s)
    Exact: a 1x1 layer computes each pixel from that pixel alone, so subsampling before it or after it
    gives the same codes. Only when H and W are multiples of s (the pool keeps H div s, the slice
    ceil(H / s)), every reader is such a layer (not depthwise: the KPU does not pool those) and the
    slice is no model output. Saves the download, the slice and the upload.
    """
    if ctx.target != "k210":
        return
    for sl in ctx.graph.nodes_of("strided_slice"):
        src, out = sl.inputs[0], sl.output
        a = sl.attrs
        if src.producer.op not in KPU_LAYER_OPS or src.type.rank != 4 or out in ctx.graph.outputs:
            continue
        n, c, h, w = src.shape
        step = a["strides"][2]
        if (tuple(a["begin"]) != (0, 0, 0, 0) or tuple(a["strides"]) != (1, 1, step, step)
                or step not in SUBSAMPLE_POOLS or h % step or w % step or out.shape != (n, c, h // step, w // step)):
            continue
        readers = out.user_nodes()
        if readers and all(u.op in KPU_LAYER_OPS and u.inputs[0] is out and u.inputs[1].shape[-1] == 1
                           and not u.attrs["depthwise"] and u.attrs["pool"] == "bypass"
                           and out not in u.inputs[1:] for u in readers):
            ctx.absorbed.add(sl)
            ctx.subsampled_by[sl] = src
            for u in readers:
                ctx.subsample[u] = (src, SUBSAMPLE_POOLS[step])


# ---------------------------------------------------------------- the KPU layer (§10.2-§10.4)
def layer_args(in_shape, out_shape, k: int, depthwise: bool, pool: str, attrs: dict, main_output: bool) -> KpuArgs:
    """The 12 argument words as ncc fills them (§10.3); the image addresses and the three table skips
    are filled in once the buffers are placed and the body is written."""
    _, ic, h, w = in_shape
    _, oc, oh, ow = out_shape
    lin, lout = row_layout(w), row_layout(ow)
    if depthwise:
        per, para_size, loads = oc, oc * k * k, 1
    else:
        per = min(oc, WEIGHT_LOAD_BYTES // (k * k * ic))
        para_size, loads = k * k * ic * per, -(-oc // per)
    return KpuArgs(
        depth_wise_layer=int(depthwise), i_ch_num=ic - 1, o_ch_num=oc - 1, o_ch_num_coef=per - 1,
        i_row_wid=w - 1, i_col_high=h - 1, o_row_wid=ow - 1, o_col_high=oh - 1,
        kernel_type=int(k == 3), pool_type=POOL_TYPE_OF[pool], load_para=1, dma_burst_size=15,
        pad_value=attrs["pad_value"], load_coor=1, load_time=loads - 1, para_size=para_size,
        channel_switch_addr=lin.row_len * h, row_switch_addr=lin.row_len, coef_group=lin.groups, load_act=1,
        wb_channel_switch_addr=lout.row_len * oh, wb_row_switch_addr=lout.row_len, wb_group=lout.groups,
        shr_w=attrs["shr_w"], shr_x=attrs["shr_x"], arg_w=attrs["arg_w"],
        arg_x=attrs["arg_x"], arg_add=attrs["arg_add"], send_data_out=int(main_output),
        # a 16-bit field: ncc's bitfield keeps the low bits of a map over 64 Ki pixels; the v4 runtime never
        # uses it (send_data_out forced 0 on the chip, kmodel-v4.md §10.5)
        channel_byte_num=(ow * oh - 1) & 0xFFFF, dma_total_byte=ow * oh * oc - 1)


@emitter("kpu_conv2d_q")
def kpu_conv2d_q(ctx: Lowering, node: Node) -> None:
    x, w, bn, act = node.inputs
    weights = _const(node, w, "weights").astype(np.uint8)
    batch_norm, table = kpu_tables(_const(node, bn, "batch-norm table"), _const(node, act, "activation table"))
    a = node.attrs
    pool = a["pool"]
    if node in ctx.subsample:                     # read the full map, subsample with the pool
        x, pool = ctx.subsample[node]
    src = kpu_input(ctx, x)
    out = node.output
    dst = ctx.output(out, k4.MEM_KPU)
    main = ctx.output(out) if _needs_main_copy(ctx, out) else None
    args = layer_args(shape4(x.shape), shape4(out.shape), w.shape[-1], a["depthwise"], pool, a,
                      main is not None)

    def finish(body: k4.KpuConv2D) -> k4.KpuConv2D:
        return dataclasses.replace(
            body, main_mem_output=main.range() if main is not None else k4.NO_RANGE,
            layer=body.layer.replace(image_src_addr=src.range().start // 64, image_dst_addr=dst.range().start // 64))

    body = k4.KpuConv2D(k4.NO_RANGE, x.shape[0], 0, args, batch_norm, table, weights)
    ctx.emit(body, reads=(src,), writes=(dst,) + ((main,) if main is not None else ()), finish=finish)


# ---------------------------------------------------------------- uint8 CPU ops
@emitter("quantize_u8", "quantize")
def quantize(ctx: Lowering, node: Node) -> None:
    """f32 -> u8 (§8.7). (The generic `quantize` op rounds ties to even; the runtime rounds them away
    from zero, as quantize_u8 does.)"""
    a = node.attrs
    if node.op == "quantize" and a["axis"] is None and a["dtype"] == "int8" and _int8_held_as_uint8(ctx, node.output):
        # v4 has no int8 tensor: the codes + 128 as uint8 (zero point + 128; the clamp [-128, 127] becomes
        # [0, 255]), which every user, a dequantize, takes back exactly (a TFLite fake-quant of the input)
        out = ctx.new_buffer(node.output.name, node.output.shape, "uint8")
        ctx.main[node.output] = out
        ctx.emit(k4.Quantize(ctx.buffer(node.inputs[0]), out, _u8_param(a["scale"], a["zero_point"] + 128)))
        return
    if node.op == "quantize" and (a["axis"] is not None or a["dtype"] != "uint8"):
        raise KpucError(f"{node.name}: the runtime quantizes per tensor to uint8 only")
    ctx.emit(k4.Quantize(ctx.buffer(node.inputs[0]), ctx.output(node.output), _u8_param(a["scale"], a["zero_point"])))


def _int8_held_as_uint8(ctx: Lowering, v: Value) -> bool:
    """Whether int8 codes `v` can live as uint8 codes + 128: only per-tensor dequantizes read them."""
    users = v.user_nodes()
    return (v not in ctx.graph.outputs and bool(users)
            and all(u.op == "dequantize" and u.attrs["axis"] is None for u in users))


@emitter("dequantize_u8", "dequantize")
def dequantize(ctx: Lowering, node: Node) -> None:
    """u8 -> f32 (§8.4)."""
    a = node.attrs
    x = node.inputs[0]
    shift = 128 if x.dtype == "int8" and x.producer.op == "quantize" and x in ctx.main else 0  # int8 as uint8 + 128
    if node.op == "dequantize" and a["axis"] is not None or (x.dtype != "uint8" and not shift):
        raise KpucError(f"{node.name}: the runtime dequantizes uint8 per tensor only")
    ctx.emit(k4.Dequantize(ctx.buffer(x), ctx.output(node.output), _u8_param(a["scale"], a["zero_point"] + shift)))


def _binary_for_table(table: np.ndarray, zp_in: int, ratio: float, zp_out: int) -> dict | None:
    """quantized_binary attrs computing out = table[x] for all 256 codes, or None.

    Tried: x' = x - zp_in (real 0 is code zp_in), combined with b' = 0 (operand b is x with multiplier 0) by
    add (a rescale) or max / min (a ReLU or its mirror), then rescaled by ratio = in step / out step as mul·2^-shift and offset by zp_out;
    every candidate is checked on all 256 codes, so the result is the table exactly or nothing."""
    x = np.arange(256, dtype=np.int64) - zp_in
    for op, fn in (("add", lambda v: v), ("max", lambda v: np.maximum(v, 0)), ("min", lambda v: np.minimum(v, 0))):
        r = fn(x)
        for shift in range(8, 40):
            mul = int(round(ratio * 2.0 ** shift))
            if not 0 < abs(mul) < 2 ** 31:
                continue
            if np.array_equal(np.clip(mul_and_carry_shift(r, mul, shift).astype(np.int64) + zp_out, 0, 255), table):
                return dict(op=op, input_a_offset=-zp_in, input_a_mul=1, input_a_shift=0, input_b_offset=0,
                            input_b_mul=0, input_b_shift=0, output_mul=mul, output_shift=shift, output_offset=zp_out)
    return None


@emitter("table_lookup1d", "requantize_u8")
def table_lookup1d(ctx: Lowering, node: Node) -> None:
    """out = table[in] (§8.19); a requantization is the 256-entry table of its own function. When a
    quantized_binary against the input's zero point reproduces the table exactly (a rescale, a ReLU), that
    is emitted instead: no 256-byte constant (§8.18)."""
    x = node.inputs[0]
    if node.op == "requantize_u8":
        a = node.attrs
        table = requantize(np.arange(256), **a).astype(np.uint8)
        quant = (a["in_zero_point"], a["in_scale"] / a["scale"], a["zero_point"])
    else:
        table = node.inputs[1].data if node.inputs[1].is_constant else None
        qi, qo = x.quant, node.output.quant
        quant = (qi.zero_point, qi.scale / qo.scale, qo.zero_point) if (
            table is not None and qi is not None and qo is not None and qi.axis is None and qo.axis is None) else None
    attrs = _binary_for_table(np.asarray(table, np.int64), *quant) if quant is not None else None
    if attrs is not None:                 # operand b is x again, multiplied by 0: no constant needed
        out, src = node.output, ctx.buffer(x)
        ctx.emit(k4.QuantizedBinary(
            src, src, ctx.output(out), BINARY_CODES[attrs["op"]], shape4(x.shape), shape4(x.shape), shape4(out.shape),
            attrs["input_a_offset"], attrs["input_a_mul"], attrs["input_a_shift"],
            attrs["input_b_offset"], attrs["input_b_mul"], attrs["input_b_shift"], attrs["output_offset"],
            attrs["output_mul"], attrs["output_shift"]))
        return
    tbuf = ctx.const(table, f"{node.name}/table") if node.op == "requantize_u8" else ctx.buffer(node.inputs[1])
    ctx.emit(k4.TableLookup1D(ctx.buffer(x), tbuf, ctx.output(node.output)))


@emitter("quantized_conv2d")
def quantized_conv2d(ctx: Lowering, node: Node) -> None:
    x, w, b = node.inputs
    a = node.attrs
    (ph, pw), (sh, sw), (dh, dw) = a["padding"], a["strides"], a["dilations"]
    oc, _, kh, kw = w.shape
    ctx.emit(k4.QuantizedConv2D(
        ctx.buffer(x), ctx.output(node.output), shape4(x.shape), a["groups"], oc, k4.Padding(*ph),
        k4.Padding(*pw), kh, kw, sh, sw, dh, dw, a["input_offset"], a["filter_offset"], a["output_mul"],
        a["output_shift"], a["output_offset"], _const(node, b, "bias").astype(np.int32).reshape(-1),
        _const(node, w, "weights").astype(np.uint8).reshape(-1)))


@emitter("quantized_matmul")
def quantized_matmul(ctx: Lowering, node: Node) -> None:
    """u8 [M,K]·[K,N] (§8.17); a constant B goes into the blob as it is (no run-time transpose)."""
    a_, b, bias = node.inputs
    a = node.attrs
    (m, k), n = a_.shape, b.shape[1]
    ctx.emit(k4.QuantizedMatMul(
        ctx.buffer(a_), ctx.buffer(b), ctx.output(node.output), m, k, n, a["input_a_offset"], a["input_b_offset"],
        a["output_mul"], a["output_shift"], a["output_offset"], _const(node, bias, "bias").astype(np.int32).reshape(-1)))


@emitter("quantized_binary")
def quantized_binary(ctx: Lowering, node: Node) -> None:
    """u8 a op b with per-operand rescaling (§8.18); a constant operand is a u8 constant in the blob."""
    x, y = node.inputs
    a, out = node.attrs, node.output
    ctx.emit(k4.QuantizedBinary(
        ctx.buffer(x), ctx.buffer(y), ctx.output(out), BINARY_CODES[a["op"]], shape4(x.shape), shape4(y.shape),
        shape4(out.shape), a["input_a_offset"], a["input_a_mul"], a["input_a_shift"], a["input_b_offset"],
        a["input_b_mul"], a["input_b_shift"], a["output_offset"], a["output_mul"], a["output_shift"]))
