"""kmodel v4 interpreter, shared part: the memory pools, the op registry and the numeric helpers.

The interpreter runs a `KModelV4` with the semantics of nncase v0.2.0-beta4's runtime.

Reference: the runtime's PC build (src/runtime/**, src/common/include/kernels/**), with the K210 ops run
by the software KPU (`NNCASE_TARGET_K210_SIMULATOR`); that is what produced the golden outputs.
Memory is three byte pools (kmodel-v4.md §6.1): the constants blob, `main_mem` bytes of main memory and
2 MiB of KPU RAM. Every op reads its operands out of the pools and writes its result back, so in-place
reuse of buffers behaves as on the device.

Bit-exactness: float32 ops compute in float32 in nncase's accumulation order (loops over kernel taps,
vectorized over pixels and channels), integer ops in int64 with nncase's rounding helpers. The C library
functions of `unary`/NNIL (expf, logf, sinf, cosf) are glibc's own algorithms (targets/k210/libm.py,
bit-exact; rounding a float64 evaluation instead disagrees with glibc on ~0.1 % of inputs).

The ops are in interpreter_v4_ops.py (elementwise, data movement, reductions, NNIL) and
interpreter_v4_conv.py (convolutions, matmul, KPU); interpreter_v4.py holds the run loop.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compiler.errors import MalformedModel
from targets.k210 import kmodel_v4 as k4
from targets.k210.kpu_layout import byte_offsets, kpu_rows

F32 = np.float32
OPS: dict[int, Callable] = {}


def op(*classes):
    """Register the function that executes the bodies of these classes."""
    def register(fn):
        for cls in classes:
            OPS[cls.opcode] = fn
        return fn
    return register


class Memory:
    """The const, main and KPU pools as numpy u8 arrays; ranges resolve to pool slices."""

    def __init__(self, model: k4.KModelV4):
        self.pools = {k4.MEM_CONST: np.frombuffer(model.constants, np.uint8),
                      k4.MEM_MAIN: np.zeros(model.main_mem, np.uint8),
                      k4.MEM_KPU: np.zeros(k4.KPU_RAM_BYTES, np.uint8)}

    def span(self, r: k4.MemoryRange, size: int | None = None) -> np.ndarray:
        pool = self.pools.get(r.memory_type)
        size = r.size if size is None else size
        if pool is None or r.start + size > len(pool):
            name = k4.MEMORY_NAMES.get(r.memory_type, f"memory type {r.memory_type}")
            raise MalformedModel(f"range {r.start}..{r.start + size} outside the {name} pool "
                                 f"({0 if pool is None else len(pool)} bytes)")
        return pool[r.start:r.start + size]

    def get(self, r: k4.MemoryRange, dtype=None, shape=None, count=None) -> np.ndarray:
        """A copy of the range as `dtype` (default: the range's own datatype), optionally reshaped."""
        dt = np.dtype(dtype or k4.DTYPES[r.datatype])
        n = r.size // dt.itemsize if count is None else count
        a = self.span(r, n * dt.itemsize).view(dt).copy()
        return a.reshape(shape) if shape is not None else a

    def put(self, r: k4.MemoryRange, value: np.ndarray):
        """Write `value`'s bytes at the range's start (nncase kernels write what they compute)."""
        b = np.ascontiguousarray(value).view(np.uint8).reshape(-1)
        if r.memory_type == k4.MEM_CONST:
            raise MalformedModel(f"write into the constants pool at {r.start}")
        self.span(r, b.size)[:] = b


# ---------------------------------------------------------------- numeric helpers (kmodel-v4.md §11)
def clamp(v: np.ndarray, act: k4.ValueRange) -> np.ndarray:
    """std::clamp(v, min, max) in float32 (NaN passes through)."""
    lo, hi = F32(act.min), F32(act.max)
    return np.where(v < lo, lo, np.where(hi < v, hi, v)).astype(F32)


def std_min(a, b):
    """std::min(a, b): b < a ? b : a (a NaN in b is ignored)."""
    return np.where(b < a, b, a)


def std_max(a, b):
    """std::max(a, b): a < b ? b : a."""
    return np.where(a < b, b, a)


def broadcast_gather(a: np.ndarray, shape, out_shape) -> np.ndarray:
    """Operand `a` read at every output coordinate; a coordinate >= the operand's extent reads index 0
    (kernels/kernel_utils.h get_reduced_offset: nncase's only broadcast rule)."""
    idx = [np.where(np.arange(o) >= s, 0, np.arange(o)) for s, o in zip(shape, out_shape)]
    return a.reshape(shape)[np.ix_(*idx)]


def tap_slices(in_size: int, out_size: int, k: int, stride: int, dilation: int, before: int):
    """(output slice, input slice) of the outputs whose tap k lands inside the input, or None."""
    off = k * dilation - before  # input index = o·stride + off
    lo = max(0, -(off // stride) if off < 0 else 0)
    hi = min(out_size - 1, (in_size - 1 - off) // stride) if in_size - 1 - off >= 0 else -1
    if lo > hi:
        return None
    start = lo * stride + off
    return slice(lo, hi + 1), slice(start, start + (hi - lo) * stride + 1, stride)


def window_taps(in_hw, out_hw, b):
    """Every (ky, kx, out_y, out_x, in_y, in_x) slice set of a window op with body `b`, in ky, kx order."""
    for ky in range(b.filter_h):
        ys = tap_slices(in_hw[0], out_hw[0], ky, b.stride_h, b.dilation_h, b.padding_h.before)
        for kx in range(b.filter_w):
            xs = tap_slices(in_hw[1], out_hw[1], kx, b.stride_w, b.dilation_w, b.padding_w.before)
            if ys and xs:
                yield ky, kx, ys[0], xs[0], ys[1], xs[1]


def out_hw(in_hw, b) -> tuple[int, int]:
    """Output height and width of a window op (conv / pool body `b`)."""
    return (k4.windowed_size(in_hw[0], b.filter_h, b.stride_h, b.dilation_h, b.padding_h),
            k4.windowed_size(in_hw[1], b.filter_w, b.stride_w, b.dilation_w, b.padding_w))


def elem_dtype(r: k4.MemoryRange) -> np.dtype:
    """Element type of the byte-moving kernels (pad, transpose, strided_slice): size from the datatype."""
    if r.datatype not in k4.DTYPES:
        raise MalformedModel(f"datatype {r.datatype} is neither float32 nor uint8")
    return np.dtype({k4.DT_FLOAT32: "<u4", k4.DT_UINT8: "u1"}[r.datatype])


def input_tensor(mem: Memory, b, dtype, shape) -> np.ndarray:
    return mem.get(b.input, dtype, shape=shape, count=int(np.prod(shape)))


def kpu_write(mem: Memory, start: int, x: np.ndarray):
    """Store a dense u8 NCHW tensor into KPU RAM at byte `start`, batch after batch (§10.1)."""
    n, c, h, w = x.shape
    per_batch = 64 * kpu_rows(c, h, w)
    ram = mem.pools[k4.MEM_KPU]
    if start < 0 or start + n * per_batch > len(ram):
        raise MalformedModel(f"KPU map {x.shape} at byte {start} runs past the 2 MiB KPU RAM")
    offsets = byte_offsets(c, h, w)
    for i in range(n):
        ram[start + i * per_batch + offsets] = x[i]


def kpu_read(mem: Memory, start: int, shape) -> np.ndarray:
    """Inverse of kpu_write: a dense u8 NCHW tensor read out of KPU RAM."""
    n, c, h, w = shape
    per_batch = 64 * kpu_rows(c, h, w)
    ram = mem.pools[k4.MEM_KPU]
    if start < 0 or start + n * per_batch > len(ram):
        raise MalformedModel(f"KPU map {tuple(shape)} at byte {start} runs past the 2 MiB KPU RAM")
    offsets = byte_offsets(c, h, w)
    return np.stack([ram[start + i * per_batch + offsets] for i in range(n)])

