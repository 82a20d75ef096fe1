"""Elementwise arithmetic: binary ops broadcast like numpy in the file's own layout, unary ops map 1:1."""
from __future__ import annotations

from compiler.importers.tflite.context import TFLiteContext, converter
from compiler.importers.tflite.reader import OpInfo

BINARY = {"ADD": "add", "SUB": "sub", "MUL": "mul", "DIV": "div", "MAXIMUM": "max", "MINIMUM": "min",
          "POW": "pow", "SQUARED_DIFFERENCE": "squared_difference"}
UNARY = {"ABS": "abs", "CEIL": "ceil", "COS": "cos", "EXP": "exp", "FLOOR": "floor", "LOG": "log", "NEG": "neg",
         "ROUND": "round", "RSQRT": "rsqrt", "SIN": "sin", "SQRT": "sqrt", "SQUARE": "square", "SIGN": "sign"}


@converter(*BINARY)
def binary(ctx: TFLiteContext, op: OpInfo):
    a, b = ctx.input(op, 0), ctx.input(op, 1)
    ctx.set_output(op, 0, ctx.emit(op, "binary", [a, b], op=BINARY[op.op_type]))


@converter(*UNARY)
def unary(ctx: TFLiteContext, op: OpInfo):
    ctx.set_output(op, 0, ctx.emit(op, "unary", [ctx.input(op, 0)], op=UNARY[op.op_type]))
