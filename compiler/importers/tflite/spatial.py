"""Padding and space/batch/depth moves: PAD family in place, the NHWC block moves wrapped to NCHW."""
from __future__ import annotations

from compiler.errors import KpucError
from compiler.importers.tflite.context import TFLiteContext, converter, option
from compiler.importers.tflite.reader import OpInfo

MIRROR_MODES = {0: "reflect", 1: "symmetric"}


def _pairs(ctx: TFLiteContext, op: OpInfo, k: int, rows: int) -> tuple[tuple[int, int], ...]:
    a = ctx.array(op, k)
    if a.shape != (rows, 2):
        raise KpucError(f"input {k} has shape {a.shape}, expected ({rows}, 2)")
    return tuple((int(p), int(q)) for p, q in a.tolist())


@converter("PAD", "PADV2", "MIRROR_PAD")
def pad(ctx: TFLiteContext, op: OpInfo):
    x = ctx.input(op, 0)
    pads = _pairs(ctx, op, 1, x.type.rank)
    attrs = {"mode": "constant", "value": 0.0}  # a quantized PAD fills the zero point, i.e. real 0
    if op.op_type == "PADV2" and ctx.has_input(op, 2):
        attrs["value"] = float(ctx.array(op, 2).reshape(-1)[0])
    if op.op_type == "MIRROR_PAD":
        attrs = {"mode": MIRROR_MODES[option(op, "Mode")]}
    ctx.set_output(op, 0, ctx.add("pad", [x], name=ctx.name(op), pads=pads, **attrs))


def _block(ctx: TFLiteContext, op: OpInfo) -> tuple[int, int]:
    block = [int(b) for b in ctx.array(op, 1).reshape(-1)]
    if len(block) != 2:
        raise KpucError(f"block shape {block}: only 2-D spatial blocks on 4-D tensors are supported")
    return tuple(block)


@converter("SPACE_TO_BATCH_ND")
def space_to_batch_nd(ctx: TFLiteContext, op: OpInfo):
    x = ctx.nchw(op, 0)
    y = ctx.add("space_to_batch", [x], name=ctx.name(op), block=_block(ctx, op), pads=_pairs(ctx, op, 2, 2))
    ctx.set_output(op, 0, y, nchw=True)


@converter("BATCH_TO_SPACE_ND")
def batch_to_space_nd(ctx: TFLiteContext, op: OpInfo):
    x = ctx.nchw(op, 0)
    y = ctx.add("batch_to_space", [x], name=ctx.name(op), block=_block(ctx, op), crops=_pairs(ctx, op, 2, 2))
    ctx.set_output(op, 0, y, nchw=True)


@converter("DEPTH_TO_SPACE")
def depth_to_space(ctx: TFLiteContext, op: OpInfo):
    # TF's NHWC channel order (block row, block column, channel) is ONNX's DCR.
    y = ctx.add("depth_to_space", [ctx.nchw(op, 0)], name=ctx.name(op), block=option(op, "BlockSize"), mode="DCR")
    ctx.set_output(op, 0, y, nchw=True)


@converter("SPACE_TO_DEPTH")
def space_to_depth(ctx: TFLiteContext, op: OpInfo):
    y = ctx.add("space_to_depth", [ctx.nchw(op, 0)], name=ctx.name(op), block=option(op, "BlockSize"))
    ctx.set_output(op, 0, y, nchw=True)
