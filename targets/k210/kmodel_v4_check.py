"""Check a parsed kmodel v4 against its own memory pools before anything runs or is allocated.

The reader (kmodel_v4.py) only checks what parsing needs: every count against the bytes left in the file.
A damaged file can still parse into a model whose ranges point past the pools, whose shapes ask for
gigabytes, or whose fields make no sense (stride 0, perm index 4, datatype 7). `check_v4` finds those
first, so `kpuc inspect` / `infer` answer with one KpucError naming the node and the field instead of a
ZeroDivisionError or a 50 GiB allocation. The pools are the ones the runtime has (kmodel-v4.md §6.1): the
constants blob, `main_mem` bytes of main memory and the 2 MiB KPU RAM.
"""
from __future__ import annotations

import math

from compiler.errors import MalformedModel
from targets.k210 import kmodel_v4 as k4
from targets.k210.kmodel_limits import MAIN_MEMORY_LIMIT_BYTES, MAX_WINDOW_TAPS, check_kpu_args
from targets.k210.kpu_layout import KPU_RAM_BYTES

ENUMS = {"binary_op": range(6), "unary_op": range(10), "reduce_op": range(4), "mode": range(2)}
WINDOW_OPS = (k4.Conv2D, k4.QuantizedConv2D, k4.ReduceWindow2D, k4.Conv2DTranspose, k4.CpuConv2D,
              k4.CpuDepthwiseConv2D, k4.CpuQuantizedConv2D, k4.CpuQuantizedDepthwiseConv2D)


def pool_sizes(model: k4.KModelV4) -> dict[int, int]:
    """Bytes of each memory pool the runtime allocates for this model."""
    return {k4.MEM_CONST: len(model.constants), k4.MEM_MAIN: model.main_mem, k4.MEM_KPU: KPU_RAM_BYTES}


def check_range(r: k4.MemoryRange, pools: dict[int, int], what: str = "") -> None:
    """A range must name a pool and a datatype the runtime knows and lie inside the pool."""
    what = f"{what}: " if what else ""
    if r.memory_type not in pools:
        raise MalformedModel(f"{what}memory type {r.memory_type} (0 const, 1 main, 2 kpu)")
    if r.datatype not in k4.DTYPES:
        raise MalformedModel(f"{what}datatype {r.datatype} is neither 0 (float32) nor 1 (uint8)")
    pool = pools[r.memory_type]
    if r.start + r.size > pool:
        raise MalformedModel(f"{what}range {r.start}..{r.start + r.size} outside the "
                             f"{k4.MEMORY_NAMES[r.memory_type]} pool ({pool} bytes)")


def check_shape(shape, limit: int, what: str, min_dim: int = 1) -> None:
    """Every extent at least `min_dim` and the element count within `limit` (the bytes of the pool behind it)."""
    if any(d < min_dim for d in shape):
        raise MalformedModel(f"{what} {tuple(shape)} has an extent below {min_dim}")
    if math.prod(shape) > limit:
        raise MalformedModel(f"{what} {tuple(shape)} has {math.prod(shape)} elements, more than the "
                             f"{limit} bytes of its memory pool")


def _check_fields(b) -> None:
    """The op-specific fields that would crash, hang or over-allocate the interpreter."""
    for name, allowed in ENUMS.items():
        if hasattr(b, name) and getattr(b, name) not in allowed:
            raise MalformedModel(f"{name} {getattr(b, name)} is not one of {list(allowed)}")
    if hasattr(b, "groups"):
        channels = b.in_shape[1]
        if b.groups < 1 or channels % b.groups:
            raise MalformedModel(f"groups {b.groups} does not divide the {channels} input channels")
    if isinstance(b, WINDOW_OPS):
        for axis in "hw":
            for field in ("filter", "stride", "dilation"):
                if getattr(b, f"{field}_{axis}") < 1:
                    raise MalformedModel(f"{field}_{axis} is {getattr(b, f'{field}_{axis}')}, must be >= 1")
        if b.filter_h * b.filter_w > MAX_WINDOW_TAPS:
            raise MalformedModel(f"a {b.filter_h}x{b.filter_w} window has more than {MAX_WINDOW_TAPS} taps")
    if isinstance(b, k4.Transpose) and sorted(b.perm) != [0, 1, 2, 3]:
        raise MalformedModel(f"perm {tuple(b.perm)} is not a permutation of the 4 axes")
    if isinstance(b, k4.StridedSlice) and 0 in b.strides:
        raise MalformedModel(f"strides {tuple(b.strides)} has a zero stride")
    if isinstance(b, k4.KpuConv2D):
        if b.batches < 1:
            raise MalformedModel(f"batches is {b.batches}, must be >= 1")
        check_kpu_args(b.layer)
    if isinstance(b, k4.Concat) and any(d < 0 for d in b.dims):
        raise MalformedModel(f"concat dims {list(b.dims)} has a negative extent")


def _check_shapes(b, pools: dict[int, int]) -> None:
    """Stated and implied shapes: positive extents, element counts within the pools of their ranges."""
    ins, outs = k4.node_ranges(b)
    in_limit = max((pools[r.memory_type] for r in ins), default=0)
    out_limit = max((pools[r.memory_type] for r in outs), default=0)
    for name in ("in_shape", "in_a_shape", "in_b_shape"):
        if hasattr(b, name):
            check_shape(getattr(b, name), in_limit, name)
    if isinstance(b, (k4.MatMul, k4.QuantizedMatMul)):
        check_shape((b.a_rows, b.a_cols), in_limit, "matmul input a")
        check_shape((b.a_cols, b.b_cols), in_limit, "matmul input b")
    if isinstance(b, k4.Softmax):
        check_shape((b.outer_size, b.inner_size), in_limit, "softmax outer/inner size")
    if isinstance(b, k4.ResizeImage):
        check_shape((b.out_h, b.out_w), out_limit, "resize output size")
    _, out_shape = k4.node_shapes(b)
    if out_shape is not None:
        check_shape(out_shape, out_limit, "output shape", min_dim=0 if isinstance(b, k4.Pad) else 1)


def check_node(b, pools: dict[int, int]) -> None:
    """Every range, enum, window and shape of one node body; raises MalformedModel naming the field."""
    if isinstance(b, k4.RawBody):
        return
    ins, outs = k4.node_ranges(b)
    for role, ranges in (("input", ins), ("output", outs)):
        for r in ranges:
            check_range(r, pools, role)
    _check_fields(b)
    _check_shapes(b, pools)


def check_v4(model: k4.KModelV4) -> None:
    """Raise MalformedModel on the first range, shape or field of `model` the runtime could not honour."""
    if model.main_mem > MAIN_MEMORY_LIMIT_BYTES:
        raise MalformedModel(f"kmodel v4: main_mem is {model.main_mem} bytes, more than the "
                             f"{MAIN_MEMORY_LIMIT_BYTES} any K210 kmodel can use")
    pools = pool_sizes(model)
    for i, (r, shape) in enumerate(zip(model.inputs, model.input_shapes)):
        try:
            check_range(r, pools)
            check_shape(shape, pools[r.memory_type], "shape")
        except MalformedModel as e:
            raise MalformedModel(f"kmodel v4: input {i}: {e}") from None
    for i, r in enumerate(model.outputs):
        try:
            check_range(r, pools)
        except MalformedModel as e:
            raise MalformedModel(f"kmodel v4: output {i}: {e}") from None
    for i, node in enumerate(model.nodes):
        try:
            check_node(node.body, pools)
        except MalformedModel as e:
            raise MalformedModel(f"kmodel v4: node {i} ({node.name}): {e}") from None
