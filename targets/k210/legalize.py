"""KPU legalization of the float graph: decide what runs on the KPU and reshape what almost fits.

The passes run in this order, to a fixpoint (nncase v0.2's K210 float legalization, kmodel-v4.md §12):
convs too wide for one KPU layer split by output channels, geometry next (transposed convs, strides,
dilation, padding), then conv2d / matmul become kpu_conv2d with their activations, then pools and
stride-2/4 slices are fused into the KPU pool type. Every step keeps the float function, so the result
still runs on the executor and can be calibrated.
Whatever stays a conv2d / matmul / conv2d_transpose carries `meta["why_not_kpu"]`.
"""
from __future__ import annotations

from collections.abc import Callable

from compiler.ir import Graph
from passes.manager import run_to_fixpoint
from targets.k210.constraints import why_not_kpu
from targets.k210.passes.conv2d_to_kpu_conv2d import conv2d_to_kpu_conv2d
from targets.k210.passes.conv2d_transpose_to_kpu_conv2d import conv2d_transpose_to_kpu_conv2d
from targets.k210.passes.decompose_conv2d_dilation import decompose_conv2d_dilation
from targets.k210.passes.decompose_conv2d_stride import decompose_conv2d_stride
from targets.k210.passes.fuse_kpu_pool import fuse_kpu_pool
from targets.k210.passes.insert_pad_crop_for_kpu_conv2d import insert_pad_crop_for_kpu_conv2d
from targets.k210.passes.matmul_to_kpu_conv2d import matmul_to_kpu_conv2d
from targets.k210.passes.split_wide_conv2d import split_wide_conv2d

LEGALIZE_K210 = [
    split_wide_conv2d,
    conv2d_transpose_to_kpu_conv2d,
    decompose_conv2d_stride,
    decompose_conv2d_dilation,
    insert_pad_crop_for_kpu_conv2d,
    conv2d_to_kpu_conv2d,
    matmul_to_kpu_conv2d,
    fuse_kpu_pool,
]

CPU_FALLBACK_OPS = ("conv2d", "conv2d_transpose", "matmul")


def legalize_k210(graph: Graph, *, lint: bool = False, dump: Callable[[Graph, str], None] | None = None) -> bool:
    """Run LEGALIZE_K210 to a fixpoint; every conv-like node left on the CPU gets meta["why_not_kpu"]."""
    changed = run_to_fixpoint(graph, LEGALIZE_K210, lint=lint, dump=dump)
    for node in graph.nodes_of(*CPU_FALLBACK_OPS):
        node.meta["why_not_kpu"] = why_not_kpu(node) or "no K210 legalization rule matched it"
    return changed


def cpu_fallbacks(graph: Graph) -> list[tuple[str, str, str]]:
    """(node name, op, reason) for every conv-like node the legalization left on the CPU, in graph order."""
    return [(n.name, n.op, n.meta.get("why_not_kpu", "not legalized yet")) for n in graph.nodes_of(*CPU_FALLBACK_OPS)]
