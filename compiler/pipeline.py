"""The compilation pipeline: pass groups as data, run top to bottom (nncase's target pipeline).

GENERIC holds the target-independent rewrites, in the order one round runs them; the group is run
until a whole round changes nothing.
"""
from __future__ import annotations

from typing import Callable

from compiler.ir import Graph
from passes.batch_norm_to_mul_add import batch_norm_to_mul_add
from passes.eliminate_identity import eliminate_identity
from passes.fold_batch_norm_into_conv2d import fold_batch_norm_into_conv2d
from passes.fold_constants import fold_constants
from passes.fold_pad_into_conv2d import fold_pad_into_conv2d
from passes.fold_reshapes import fold_reshapes
from passes.fold_transposes import fold_transposes
from passes.fuse_clamp import fuse_clamp
from passes.fuse_leaky_relu import fuse_leaky_relu
from passes.manager import run_to_fixpoint
from targets.k210 import legalize as k210

GENERIC = [
    fold_constants,               # weights computed at run time become constants the others can read
    eliminate_identity,           # no-op nodes out of the way of the fusions
    fold_transposes,              # TFLite NHWC<->NCHW pairs cancel; producer and consumer become adjacent
    fold_reshapes,                # squeeze/flatten chains and size-1 transposes become one reshape or none
    fuse_leaky_relu,              # max(x, a*x) -> leaky_relu before anything fuses the max or the mul
    fold_batch_norm_into_conv2d,  # before fuse_clamp: a batch norm cannot fold through a fused clamp
    batch_norm_to_mul_add,        # only the batch norms no conv absorbed
    fold_pad_into_conv2d,         # after fold_transposes: a TFLite PAD sits between NHWC transposes
    fuse_clamp,                   # last: ReLU/ReLU6 into the producer once it is settled
]


def optimize_generic(graph: Graph, *, lint: bool = False,
                     dump: Callable[[Graph, str], None] | None = None) -> Graph:
    """Run GENERIC to a fixpoint, sweep dead nodes and validate; returns the same (mutated) graph."""
    run_to_fixpoint(graph, GENERIC, lint=lint, dump=dump)
    graph.eliminate_dead_code()
    graph.validate()
    return graph


# K210 KPU legalization, in float; the target owns the order (targets/k210/legalize.py).
LEGALIZE_K210 = k210.LEGALIZE_K210


def legalize_k210(graph: Graph, *, lint: bool = False, dump: Callable[[Graph, str], None] | None = None) -> Graph:
    """Run LEGALIZE_K210 to a fixpoint after GENERIC; CPU fallbacks get meta["why_not_kpu"]. Returns the graph."""
    k210.legalize_k210(graph, lint=lint, dump=dump)
    graph.validate()
    return graph
