"""Reduce* ops: axes as an attribute (older opsets) or an input (ReduceSum from 13, the rest from 18)."""
from __future__ import annotations

from compiler.importers.onnx.context import converter, normalize_axis

REDUCE = {"ReduceMax": "max", "ReduceMean": "mean", "ReduceMin": "min", "ReduceSum": "sum",
          "ReduceProd": "prod", "ReduceL1": "l1", "ReduceL2": "l2", "ReduceSumSquare": "sum_square",
          "ReduceLogSumExp": "log_sum_exp", "ReduceLogSum": "sum"}  # ReduceLogSum = log(sum)


def _reduce(ctx, x, axes, keepdims, noop_with_empty_axes):
    """Reduce over `axes` (all axes when empty, unless noop_with_empty_axes makes it an identity)."""
    rank = x.type.rank
    if axes is None or len(axes) == 0:
        if noop_with_empty_axes:
            return x
        axes = range(rank)
    axes = tuple(sorted(dict.fromkeys(normalize_axis(a, rank) for a in axes)))
    y = ctx.add("reduce", [x], op=REDUCE[ctx.op_type], axes=axes, keepdims=bool(keepdims))
    return ctx.unary("log", y) if ctx.op_type == "ReduceLogSum" else y


@converter(*REDUCE)
def reduce_v1(ctx, x, *, axes=None, keepdims=1):
    return _reduce(ctx, x, axes, keepdims, False)


@converter("ReduceSum", since=13)
def reduce_sum_v13(ctx, x, axes=None, *, keepdims=1, noop_with_empty_axes=0):
    return _reduce(ctx, x, ctx.data(axes, "axes"), keepdims, noop_with_empty_axes)


@converter(*(op for op in REDUCE if op != "ReduceSum"), since=18)
def reduce_v18(ctx, x, axes=None, *, keepdims=1, noop_with_empty_axes=0):
    return _reduce(ctx, x, ctx.data(axes, "axes"), keepdims, noop_with_empty_axes)


@converter("ArgMax", "ArgMin")
def arg_reduce(ctx, x, *, axis=0, keepdims=1, select_last_index=0):
    return ctx.add("arg_reduce", [x], op="max" if ctx.op_type == "ArgMax" else "min",
                   axis=normalize_axis(axis, x.type.rank), keepdims=bool(keepdims),
                   select_last_index=bool(select_last_index))
