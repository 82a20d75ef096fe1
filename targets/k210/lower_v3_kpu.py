"""kmodel v3 emitters of the KPU layers: K210Conv, what fills its KPU RAM input (K210Upload,
K210AddPadding), and the nodes a K210Conv absorbs (lower_v3.py has the overview)."""
from __future__ import annotations

import numpy as np

from compiler.ir import Graph, Node
from targets.k210.kernels import POOL_TYPE_OF, kpu_tables
from targets.k210.kmodel_v3 import K210ConvBody, LayerType
from targets.k210.kpu import POOL_TYPES, KpuArgs
from targets.k210.kpu_layout import row_layout
from targets.k210.lower_v3_core import Lowering, Ref, Unexpressible, chw, fixed, lowers, sole_user
from targets.k210.lower_v3_quant import _emit_quantize, quantize_params

# ---------------------------------------------------------------- KPU layers
WEIGHT_LOAD_LIMIT = {True: 30 * 1024, False: 60 * 1024}      # bytes per weight load (kpu.md §7.8)


def kpu_args(in_shape, out_channels: int, kernel: int, *, depthwise: bool, pool_type: int, pad_value: int,
             arg_x: int, shr_x: int, arg_w: int, shr_w: int, arg_add: int, src_row: int, dst_row: int,
             eight_bit: bool = True) -> KpuArgs:
    """The 12 argument words of one KPU layer as nncase v0.1 fills them (kpu.md §3, §7.8).

    The three parameter addresses, int_en and send_data_out stay 0: the SDK fills them at run time."""
    c, h, w = in_shape
    _, f, s = POOL_TYPES[pool_type]
    oh, ow = h // s, w // s
    g_in, g_out = row_layout(w), row_layout(ow)
    weight_bytes = 1 if eight_bit else 2
    if depthwise:
        per_load, para_size, loads = c, c * kernel * kernel * weight_bytes, 1
    else:
        one_channel = kernel * kernel * c * weight_bytes
        per_load = min(out_channels, WEIGHT_LOAD_LIMIT[eight_bit] // one_channel)
        para_size, loads = one_channel * per_load, -(-out_channels // per_load)
    return KpuArgs(
        depth_wise_layer=int(depthwise), image_src_addr=src_row, image_dst_addr=dst_row,
        i_ch_num=c - 1, o_ch_num=out_channels - 1, o_ch_num_coef=per_load - 1,
        i_row_wid=w - 1, i_col_high=h - 1, o_row_wid=ow - 1, o_col_high=oh - 1,
        kernel_type=int(kernel == 3), pool_type=pool_type, load_para=1, dma_burst_size=15, pad_value=pad_value,
        load_coor=1, load_time=loads - 1, para_size=para_size,
        channel_switch_addr=g_in.row_len * h, row_switch_addr=g_in.row_len, coef_group=g_in.groups, load_act=1,
        wb_channel_switch_addr=g_out.row_len * oh, wb_row_switch_addr=g_out.row_len, wb_group=g_out.groups,
        shr_w=shr_w, shr_x=shr_x, arg_w=arg_w, arg_x=arg_x, arg_add=arg_add,
        channel_byte_num=ow * oh - 1, dma_total_byte=ow * oh * out_channels - 1)


@lowers("kpu_conv2d_q")
def kpu_conv2d_q(ctx: Lowering, node: Node) -> None:
    """One KPU layer -> K210Conv (§8.16), preceded by what puts its input into KPU RAM as nncase did:
    nothing (the model input, or another K210Conv's output), K210Upload from main memory (§8.19), or
    Quantize + K210AddPadding for a fully connected layer on a 4×4 map (§8.17, §11). The output also goes
    to main memory (flags = 1) when anything but a K210Conv reads it."""
    x, w, bn, act = node.inputs
    a, y = node.attrs, node.output
    if x.shape[0] != 1:
        raise Unexpressible(f"a batch of {x.shape[0]} maps (a v3 K210Conv runs one)")
    if not all(v.is_constant for v in (w, bn, act)):
        raise Unexpressible("KPU weights and tables must be constants")
    kx = _kpu_input(ctx, node)
    ky = ctx.kpu(y)
    to_main = y in ctx.graph.outputs or any(u.op != "kpu_conv2d_q" for u in y.user_nodes())
    my = ctx.main(y) if to_main else None
    table_bn, table_act = kpu_tables(bn.data, act.data)
    weights = np.ascontiguousarray(w.data, np.uint8)
    in_shape, out_c, k = chw(x), w.shape[0], w.shape[-1]
    fields = {f: int(a[f]) for f in ("pad_value", "arg_x", "shr_x", "arg_w", "shr_w", "arg_add")}
    pool_type = POOL_TYPE_OF[a["pool"]]

    def make(addr):
        args = kpu_args(in_shape, out_c, k, depthwise=bool(a["depthwise"]), pool_type=pool_type,
                        src_row=addr(kx), dst_row=addr(ky), eight_bit=ctx.eight_bit, **fields)
        return K210ConvBody(int(to_main), addr(my) if to_main else 0, args, weights, table_bn, table_act)
    ctx.emit(node.name, LayerType.K210Conv, [kx], [my, ky] if to_main else [ky], make)


def _kpu_input(ctx: Lowering, node: Node) -> Ref:
    """The KPU RAM copy of a K210Conv's input, emitting the layers that fill it."""
    x = node.inputs[0]
    if node in ctx.fc_inputs:
        src, quantize_node = ctx.fc_inputs[node]
        c = x.shape[1]
        if quantize_node is not None:
            qa = quantize_node.attrs
            sc, bias, bad = (qa["scale"], qa["bias"], 0) if quantize_node.op == "quantize_v3" else \
                quantize_params(qa["scale"], qa["zero_point"])
            if bad:
                ctx.inexact.append(f"Quantize '{quantize_node.name}': float32 inputs next to a rounding boundary "
                                   f"can get another code (zero point {quantize_node.attrs['zero_point']})")
            codes = ctx.scratch(f"{quantize_node.name}@1x1", c)
            _emit_quantize(ctx, quantize_node.name, ctx.main(src), codes, c, sc, bias)
        else:
            codes = ctx.main(src)
        kx = ctx.kpu(x)
        ctx.emit(f"{node.name}/add_padding", LayerType.K210AddPadding, [codes], [kx], fixed(
            LayerType.K210AddPadding, flags=0, main_mem_in_address=codes, kpu_mem_out_address=kx, channels=c))
        return kx
    if x is ctx.model_input or x.producer.op == "kpu_conv2d_q" or x in ctx.kpu_refs:
        return ctx.kpu(x)
    c, h, w = chw(x)
    rx, kx = ctx.main(x), ctx.kpu(x)
    ctx.emit(f"{node.name}/upload", LayerType.K210Upload, [rx], [kx], fixed(
        LayerType.K210Upload, flags=0, main_mem_in_address=rx, kpu_mem_out_address=kx, width=w, height=h, channels=c))
    return kx


def _claim_inputs(ctx: Lowering) -> None:
    """Before emitting: the nodes a K210Conv absorbs (nncase v0.1's patterns, §11).

    - quantize_u8 of the graph input read only by KPU layers: the kmodel takes the uint8 codes (the SDK
      loads layer 0's input straight into KPU RAM, §10);
    - pad [1,C,1,1] -> [1,C,4,4] (after or before its quantize_u8) feeding a 1×1 bypass layer whose
      every reader keeps pixel (0, 0): K210AddPadding writes only that pixel, and the layer's pixel (0, 0)
      depends on nothing else."""
    g = ctx.graph
    x = g.inputs[0]
    users = x.user_nodes()
    if x.dtype == "uint8" and users and all(u.op == "kpu_conv2d_q" for u in users):
        ctx.model_input = x
    elif len(users) == 1 and users[0].op == "quantize_u8" and x not in g.outputs:
        q = users[0]
        if q.output.user_nodes() and all(u.op == "kpu_conv2d_q" for u in q.output.user_nodes()) \
                and q.output not in g.outputs:
            ctx.model_input = q.output
            ctx.absorb(q, q.output.user_nodes()[0])
    for conv in g.nodes_of("kpu_conv2d_q"):
        if (m := _fc_input(g, conv)) is not None:
            pad_node, quantize_node = m
            ctx.fc_inputs[conv] = (pad_node.inputs[0], quantize_node)
            for n in (pad_node, quantize_node):
                if n is not None:
                    ctx.absorb(n, conv)


def _fc_input(g: Graph, conv: Node) -> tuple[Node, Node | None] | None:
    """(pad, quantize or None) if `conv` is a fully connected layer on a padded 1×1 map (see _claim_inputs)."""
    x, w = conv.inputs[0], conv.inputs[1]
    if w.shape[-1] != 1 or conv.attrs["pool"] != "bypass" or len(x.shape) != 4 \
            or x.shape[0] != 1 or x.shape[2:] != (4, 4) or sole_user(g, x) is not conv:
        return None
    quantize_node, p = None, x.producer
    if p.op in ("quantize_u8", "quantize_v3"):
        quantize_node, p = p, p.inputs[0].producer
        if sole_user(g, p.output) is not quantize_node:
            return None
    if p.op != "pad" or p.inputs[0].shape[2:] != (1, 1) or tuple(map(tuple, p.attrs["pads"][2:])) != ((0, 3), (0, 3)) \
            or any(tuple(q) != (0, 0) for q in p.attrs["pads"][:2]):
        return None
    readers = conv.output.user_nodes()
    if not readers or conv.output in g.outputs or any(
            r.op != "strided_slice" or tuple(r.attrs["begin"]) != (0, 0, 0, 0) or r.output.shape[2:] != (1, 1)
            or tuple(r.attrs["strides"])[1] != 1 for r in readers):
        return None
    return p, quantize_node
