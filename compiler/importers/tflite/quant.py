"""QUANTIZE / DEQUANTIZE in a float graph.

DEQUANTIZE of a constant (fp16 or int8 weights) folds to a float32 constant; of an activation it is
the identity, since activations are already float. QUANTIZE of a float activation is the identity
and hands its output's quant params to the value (and to the graph input it comes from); a requantization (uint8 -> int8, rescale) keeps
its rounding and saturation as a quantize + dequantize pair.
"""
from __future__ import annotations

from compiler.importers.tflite.context import TO_NCHW, TFLiteContext, converter, permute_quant
from compiler.importers.tflite.reader import OpInfo


@converter("DEQUANTIZE")
def dequantize(ctx: TFLiteContext, op: OpInfo):
    x = ctx.input(op, 0)
    if x.is_constant:
        ctx.set_output(op, 0, ctx.const(x.data.astype("float32"), name=ctx.name(op)))
    else:
        ctx.alias(op, 0, x)


@converter("QUANTIZE")
def quantize(ctx: TFLiteContext, op: OpInfo):
    x, t = ctx.input(op, 0), ctx.tensor(op.outputs[0])
    q = t.quant
    if q is None or x.quant is None or x.quant == q:
        if x.quant is None:
            x.quant = q
            layout = x.producer  # a 4-D graph input reaches here through its NCHW -> NHWC transpose
            if layout.op == "transpose" and layout.inputs[0] in ctx.graph.inputs and layout.inputs[0].quant is None:
                layout.inputs[0].quant = permute_quant(q, TO_NCHW)
        ctx.alias(op, 0, x)
        return
    if q.axis is not None:  # per-channel activations do not occur in TFLite; keep the float value
        ctx.alias(op, 0, x)
        return
    dtype = t.dtype if t.dtype in ("uint8", "int8") else "uint8"
    y = ctx.add("quantize", [x], name=f"{t.name}/quantize", scale=q.scale, zero_point=q.zero_point, dtype=dtype)
    ctx.set_output(op, 0, ctx.add("dequantize", [y], name=t.name, scale=q.scale, zero_point=q.zero_point))
