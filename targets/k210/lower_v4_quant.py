"""kmodel v4 emitters for the uint8 and KPU ops (kmodel-v4.md §8.4, §8.7, §8.16-§8.19, §10)."""
from __future__ import annotations

from compiler.ir import Node, Value
from targets.k210 import kmodel_v4 as k4
from targets.k210.lower_v4 import Lowering, emitter


def input_buffer(ctx: Lowering, v: Value) -> None:
    """A model input lives in main memory."""
    ctx.output(v)
