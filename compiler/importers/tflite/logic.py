"""Comparison, logical and selection ops, and the floor division family, in the file's own layout.

They fold when their inputs are constant (the read loop); otherwise they run as IR ops with float
kernels, on the host: the K210 runtimes have none of them (targets/k210/ops.py HOST_ONLY). A float
FLOOR_DIV is TFLite's std::floor(a / b), i.e. div then floor, which kmodel v4 runs.
"""
from __future__ import annotations

from compiler.errors import KpucError
from compiler.importers.tflite.context import TFLiteContext, converter
from compiler.importers.tflite.reader import OpInfo

COMPARE = {"EQUAL": "equal", "NOT_EQUAL": "not_equal", "LESS": "less", "LESS_EQUAL": "less_equal",
           "GREATER": "greater", "GREATER_EQUAL": "greater_equal"}
LOGICAL = {"LOGICAL_AND": "and", "LOGICAL_OR": "or"}


@converter(*COMPARE)
def compare(ctx: TFLiteContext, op: OpInfo):
    y = ctx.add("compare", [ctx.input(op, 0), ctx.input(op, 1)], name=ctx.name(op), op=COMPARE[op.op_type])
    ctx.set_output(op, 0, y)


@converter(*LOGICAL)
def logical(ctx: TFLiteContext, op: OpInfo):
    y = ctx.add("logical", [ctx.input(op, 0), ctx.input(op, 1)], name=ctx.name(op), op=LOGICAL[op.op_type])
    ctx.set_output(op, 0, y)


@converter("LOGICAL_NOT")
def logical_not(ctx: TFLiteContext, op: OpInfo):
    ctx.set_output(op, 0, ctx.add("logical_not", [ctx.input(op, 0)], name=ctx.name(op)))


@converter("SELECT", "SELECT_V2")
def select(ctx: TFLiteContext, op: OpInfo):
    cond, x, y = (ctx.input(op, k) for k in range(3))
    if op.op_type == "SELECT" and cond.type.rank == 1 and x.type.rank > 1:
        # SELECT (v1) with a vector condition picks whole rows of x and y along dim 0
        cond = ctx.add("reshape", [cond], name=f"{ctx.name(op)}/cond", shape=cond.shape + (1,) * (x.type.rank - 1))
    if cond.dtype != "bool":
        raise KpucError(f"the condition is {cond.dtype}, not bool")
    ctx.set_output(op, 0, ctx.add("where", [cond, x, y], name=ctx.name(op)))


@converter("FLOOR_DIV")
def floor_div(ctx: TFLiteContext, op: OpInfo):
    a, b = ctx.input(op, 0), ctx.input(op, 1)
    if a.dtype == "float32":
        q = ctx.add("binary", [a, b], name=f"{ctx.name(op)}/div", op="div")
        ctx.set_output(op, 0, ctx.add("unary", [q], name=ctx.name(op), op="floor"))
    else:
        ctx.set_output(op, 0, ctx.add("floor_div", [a, b], name=ctx.name(op)))


@converter("FLOOR_MOD")
def floor_mod(ctx: TFLiteContext, op: OpInfo):
    ctx.set_output(op, 0, ctx.add("mod", [ctx.input(op, 0), ctx.input(op, 1)], name=ctx.name(op)))
