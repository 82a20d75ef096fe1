"""Comparison, logical and selection ONNX ops (exported post-processing), and Mod.

They fold when their inputs are constant (OnnxContext.add); otherwise they run as IR ops with float
kernels, on the host: the K210 runtimes have none of them (targets/k210/ops.py HOST_ONLY).
"""
from __future__ import annotations

from compiler.importers.onnx.context import NotConvertible, converter

COMPARE = {"Equal": "equal", "Less": "less", "Greater": "greater", "LessOrEqual": "less_equal",
           "GreaterOrEqual": "greater_equal"}
LOGICAL = {"And": "and", "Or": "or", "Xor": "xor"}


def _same_dtype(a, b):
    if a.dtype != b.dtype:
        raise NotConvertible(f"inputs of {a.dtype} and {b.dtype} (ONNX requires one type)")


@converter(*COMPARE, since=7)
def compare(ctx, a, b):
    _same_dtype(a, b)
    return ctx.add("compare", [a, b], op=COMPARE[ctx.op_type])


@converter(*LOGICAL, since=7)
def logical(ctx, a, b):
    if a.dtype != "bool" or b.dtype != "bool":
        raise NotConvertible(f"{ctx.op_type} takes bool tensors, not {a.dtype} and {b.dtype}")
    return ctx.add("logical", [a, b], op=LOGICAL[ctx.op_type])


@converter("Not")
def logical_not(ctx, x):
    if x.dtype != "bool":
        raise NotConvertible(f"Not takes a bool tensor, not {x.dtype}")
    return ctx.add("logical_not", [x])


@converter("Where", since=9)
def where(ctx, cond, x, y):
    if cond.dtype != "bool":
        raise NotConvertible(f"Where's condition is {cond.dtype}, not bool")
    _same_dtype(x, y)
    return ctx.add("where", [cond, x, y])


@converter("Mod", since=10)
def mod(ctx, a, b, *, fmod=0):
    """fmod=0: the remainder has b's sign (integers only in ONNX); fmod=1: C fmod, a's sign."""
    _same_dtype(a, b)
    if fmod not in (0, 1):
        raise NotConvertible(f"fmod={fmod} (0 or 1)")
    return ctx.add("mod", [a, b], fmod=bool(fmod))
