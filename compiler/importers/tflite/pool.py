"""2-D pooling: AVERAGE_POOL_2D / MAX_POOL_2D as reduce_window2d on NCHW (padding never counted)."""
from __future__ import annotations

from compiler.importers.limits import check_padded_input
from compiler.importers.tflite.context import TFLiteContext, converter, option
from compiler.importers.tflite.conv import tf_padding
from compiler.importers.tflite.reader import OpInfo

POOLS = {"AVERAGE_POOL_2D": "mean", "MAX_POOL_2D": "max"}


@converter(*POOLS)
def pool_2d(ctx: TFLiteContext, op: OpInfo):
    x = ctx.nchw(op, 0)
    kernel = (option(op, "FilterHeight", 1), option(op, "FilterWidth", 1))
    strides = (option(op, "StrideH", 1), option(op, "StrideW", 1))
    attrs = {"count_include_pad": False} if POOLS[op.op_type] == "mean" else {}
    padding = tf_padding(option(op, "Padding"), x.shape[2:], kernel, strides)
    check_padded_input(x.shape, padding, f"{op.op_type} window {kernel}")
    y = ctx.emit(op, "reduce_window2d", [x], op=POOLS[op.op_type], kernel=kernel, strides=strides,
                 padding=padding, **attrs)
    ctx.set_output(op, 0, y, nchw=True)
