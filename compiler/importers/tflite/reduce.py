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


@converter("ARG_MAX", "ARG_MIN")
def arg_reduce(ctx: TFLiteContext, op: OpInfo):
    """The index of the largest / smallest value along one constant axis (dropped); int32 in the IR."""
    x = ctx.input(op, 0)
    axis = [int(a) for a in ctx.array(op, 1).reshape(-1)]
    rank = x.type.rank
    if len(axis) != 1 or not -rank <= axis[0] < rank:
        raise KpucError(f"{op.op_type} axis {axis} must be one axis of rank {rank}")
    y = ctx.emit(op, "arg_reduce", [x], op="max" if op.op_type == "ARG_MAX" else "min", axis=axis[0] % rank,
                 keepdims=False)
    ctx.set_output(op, 0, y)
