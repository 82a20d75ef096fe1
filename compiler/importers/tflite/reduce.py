"""Reductions over constant axes (MEAN, SUM, REDUCE_*), in the file's own layout."""
from __future__ import annotations

from compiler.errors import KpucError
from compiler.importers.tflite.context import TFLiteContext, converter, option
from compiler.importers.tflite.reader import OpInfo

REDUCES = {"MEAN": "mean", "SUM": "sum", "REDUCE_MAX": "max", "REDUCE_MIN": "min", "REDUCE_PROD": "prod"}


@converter(*REDUCES)
def reduce(ctx: TFLiteContext, op: OpInfo):
    x = ctx.input(op, 0)
    rank = x.type.rank
    axes = [int(a) for a in ctx.array(op, 1).reshape(-1)]
    if any(not -rank <= a < rank for a in axes):
        raise KpucError(f"reduction axes {axes} out of range for rank {rank}")
    axes = tuple(sorted(dict.fromkeys(a % rank for a in axes)))
    y = ctx.emit(op, "reduce", [x], op=REDUCES[op.op_type], axes=axes, keepdims=bool(option(op, "KeepDims", False)))
    ctx.set_output(op, 0, y)
