"""kmodel v4 interpreter: runs a `KModelV4` with the semantics of nncase v0.2.0-beta4's runtime.

Reference: the runtime's PC build (src/runtime/**, src/common/include/kernels/**), with the K210 ops run
by the software KPU (`NNCASE_TARGET_K210_SIMULATOR`); that is what produced the golden outputs.
Memory is three byte pools (kmodel-v4.md §6.1): the constants blob, `main_mem` bytes of main memory and
2 MiB of KPU RAM. Every op reads its operands out of the pools and writes its result back, so in-place
reuse of buffers behaves as on the device.

Bit-exactness: float32 ops compute in float32 in nncase's accumulation order (loops over kernel taps,
vectorized over pixels and channels), integer ops in int64 with nncase's rounding helpers. The C library
functions of `unary`/NNIL/`softmax` (expf, logf, sinf, cosf) are evaluated in float64 and rounded to
float32: numpy's own float32 ufuncs disagree with glibc's on ~10-40 % of random inputs, this on ~0.1-1 %
(measured); an exact match would need the reference build's libm.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from compiler.errors import KpucError, MalformedModel
from compiler.quantization import c_div, mul_and_carry_shift, round_half_away_from_zero
from targets.k210 import kmodel_v4 as k4
from targets.k210.kpu import run_kpu_layer
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


def libm_f32(fn):
    """A float32 C library function (expf, logf, ...) as float64 evaluation rounded to float32."""
    return lambda x: fn(np.asarray(x, np.float64)).astype(F32)


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


# ---------------------------------------------------------------- elementwise and data movement
BINARY_F32 = {0: np.add, 1: np.subtract, 2: np.multiply, 3: np.divide, 4: std_min, 5: std_max}


@op(k4.Binary)
def binary(b: k4.Binary, mem: Memory):
    """float32 a op b, broadcast by the get_reduced_offset rule, then the fused clamp."""
    fn = BINARY_F32[b.binary_op]
    if tuple(b.in_a_shape) == tuple(b.in_b_shape):  # flat loop over in_a_shape (no broadcast)
        n = int(np.prod(b.in_a_shape))
        x, y = mem.get(b.input_a, F32, count=n), mem.get(b.input_b, F32, count=n)
    else:
        x = broadcast_gather(mem.get(b.input_a, F32, count=int(np.prod(b.in_a_shape))), b.in_a_shape, b.out_shape)
        y = broadcast_gather(mem.get(b.input_b, F32, count=int(np.prod(b.in_b_shape))), b.in_b_shape, b.out_shape)
    with np.errstate(all="ignore"):
        mem.put(b.output, clamp(fn(x, y).astype(F32), b.fused_activation))


@op(k4.QuantizedBinary)
def quantized_binary(b: k4.QuantizedBinary, mem: Memory):
    """u8: rescale each operand, op in i32 (div rounds: (a + b/2) / b), rescale, clamp."""
    na, nb = int(np.prod(b.in_a_shape)), int(np.prod(b.in_b_shape))
    x, y = mem.get(b.input_a, np.uint8, count=na), mem.get(b.input_b, np.uint8, count=nb)
    if tuple(b.in_a_shape) != tuple(b.in_b_shape):
        x, y = broadcast_gather(x, b.in_a_shape, b.out_shape), broadcast_gather(y, b.in_b_shape, b.out_shape)
    x = mul_and_carry_shift(x.astype(np.int64) + b.input_a_offset, b.input_a_mul, b.input_a_shift).astype(np.int64)
    y = mul_and_carry_shift(y.astype(np.int64) + b.input_b_offset, b.input_b_mul, b.input_b_shift).astype(np.int64)
    r = {0: lambda: x + y, 1: lambda: x - y, 2: lambda: x * y, 3: lambda: c_div(x + c_div(y, 2), y),
         4: lambda: np.minimum(x, y), 5: lambda: np.maximum(x, y)}[b.binary_op]()
    out = mul_and_carry_shift(r.astype(np.int32), b.output_mul, b.output_shift).astype(np.int64) + b.output_offset
    mem.put(b.output, np.clip(out, 0, 255).astype(np.uint8))


UNARY_F32 = {0: np.abs, 1: np.ceil, 2: libm_f32(np.cos), 3: libm_f32(np.exp), 4: np.floor, 5: libm_f32(np.log),
             6: np.negative, 7: lambda x: F32(1) / np.sqrt(x), 8: libm_f32(np.sin), 9: np.square}


@op(k4.Unary)
def unary(b: k4.Unary, mem: Memory):
    """float32 elementwise function over input.size / 4 values."""
    with np.errstate(all="ignore"):
        mem.put(b.output, UNARY_F32[b.unary_op](mem.get(b.input, F32)).astype(F32))


@op(k4.Quantize)
def quantize(b: k4.Quantize, mem: Memory):
    """f32 -> u8, host build: (int32)roundf(x·scale + zero_point) in f32, clamped to u8.

    The float -> int32 cast of a NaN or out-of-range value gives INT_MIN on x86 (cvttss2si), which the
    clamp turns into 0 (the RISC-V build rounds pairs to even instead, §8.7)."""
    x = mem.get(b.input, F32)
    with np.errstate(all="ignore"):
        t = round_half_away_from_zero(x * F32(b.quant_param.scale) + F32(b.quant_param.zero_point))
        t = np.where((t >= -2.0**31) & (t < 2.0**31), t, -2.0**31)
    mem.put(b.output, np.clip(t, 0, 255).astype(np.uint8))


@op(k4.Dequantize)
def dequantize(b: k4.Dequantize, mem: Memory):
    """u8 -> f32, host build: (q − zero_point)·(1/scale), 1/scale computed once in f32."""
    q = mem.get(b.input, np.uint8).astype(np.int64) - b.quant_param.zero_point
    with np.errstate(all="ignore"):
        mem.put(b.output, q.astype(F32) * (F32(1) / F32(b.quant_param.scale)))


@op(k4.TableLookup1D)
def table_lookup1d(b: k4.TableLookup1D, mem: Memory):
    """out[i] = table[in[i]] over input.size bytes."""
    if b.input.datatype != k4.DT_UINT8:
        raise MalformedModel("table_lookup1d input is not uint8")
    mem.put(b.output, mem.get(b.table, np.uint8, count=256)[mem.get(b.input, np.uint8)])


@op(k4.MemoryCopy)
def memory_copy(b: k4.MemoryCopy, mem: Memory):
    """The kernel views both ranges as float: floor(size/4) words, a u8 tail of 1-3 bytes is not copied."""
    mem.put(b.output, mem.get(b.input, np.uint8, count=b.input.size // 4 * 4))


@op(k4.Concat)
def concat(b: k4.Concat, mem: Memory):
    """Byte copy: for each outer index, each input contributes inner_size·dims[i] bytes."""
    parts = [mem.get(r, np.uint8, count=b.outer_size * b.inner_size * int(d)).reshape(b.outer_size, -1)
             for r, d in zip(b.inputs, b.dims)]
    mem.put(b.output, np.concatenate(parts, axis=1))


def _elem_dtype(r: k4.MemoryRange) -> np.dtype:
    """Element type of the byte-moving kernels (pad, transpose, strided_slice): size from the datatype."""
    if r.datatype not in k4.DTYPES:
        raise MalformedModel(f"datatype {r.datatype} is neither float32 nor uint8")
    return np.dtype({k4.DT_FLOAT32: "<u4", k4.DT_UINT8: "u1"}[r.datatype])


@op(k4.Pad)
def pad(b: k4.Pad, mem: Memory):
    """Pad or crop (negative paddings); the element size comes from input.datatype."""
    dt = _elem_dtype(b.input)
    x = mem.get(b.input, dt, shape=b.in_shape, count=int(np.prod(b.in_shape)))
    out_shape = [s + p.before + p.after for s, p in zip(b.in_shape, b.paddings)]
    value = np.frombuffer(b.pad_value.storage[:dt.itemsize], dt)[0]  # datatype word ignored (§8.6)
    out = np.full(out_shape, value, dt)
    src = tuple(slice(max(0, -p.before), s - max(0, -p.after)) for s, p in zip(b.in_shape, b.paddings))
    dst = tuple(slice(max(0, p.before), o - max(0, p.after)) for o, p in zip(out_shape, b.paddings))
    out[dst] = x[src]
    mem.put(b.output, out)


@op(k4.Transpose)
def transpose(b: k4.Transpose, mem: Memory):
    """4-D transpose; the element size comes from input.datatype."""
    dt = _elem_dtype(b.input)
    x = mem.get(b.input, dt, shape=b.in_shape, count=int(np.prod(b.in_shape)))
    mem.put(b.output, np.ascontiguousarray(x.transpose(b.perm)))


@op(k4.StridedSlice)
def strided_slice(b: k4.StridedSlice, mem: Memory):
    """The kernel loops d = begin; stride > 0 ? d < end : d > end; the masks are unused."""
    dt = _elem_dtype(b.input)
    x = mem.get(b.input, dt, shape=b.in_shape, count=int(np.prod(b.in_shape)))
    idx = [np.arange(s, e, st) for s, e, st in zip(b.begin, b.end, b.strides)]  # the kernel's loops, masks unused
    mem.put(b.output, x[np.ix_(*idx)])


@op(k4.ResizeImage)
def resize_image(b: k4.ResizeImage, mem: Memory):
    """Nearest or bilinear (f32 math, no half-pixel centres); u8 results truncate."""
    n, c, h, w = b.in_shape
    dt = F32 if b.input.datatype == k4.DT_FLOAT32 else np.uint8
    x = mem.get(b.input, dt, shape=b.in_shape, count=n * c * h * w)
    sy, sx = F32(h) / F32(b.out_h), F32(w) / F32(b.out_w)
    oy, ox = np.arange(b.out_h, dtype=F32), np.arange(b.out_w, dtype=F32)
    if b.mode == 1:  # nearest: min(floor(o·scale), size − 1)
        iy = np.minimum(np.floor(oy * sy).astype(np.int64), h - 1)
        ix = np.minimum(np.floor(ox * sx).astype(np.int64), w - 1)
        mem.put(b.output, x[:, :, iy][:, :, :, ix])
        return
    if b.align_corners and b.out_h > 1:
        sy = F32(h - 1) / F32(b.out_h - 1)
    if b.align_corners and b.out_w > 1:
        sx = F32(w - 1) / F32(b.out_w - 1)
    fy, fx = oy * sy, ox * sx
    y0, x0 = np.floor(fy).astype(np.int64), np.floor(fx).astype(np.int64)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    dy, dx = (fy - y0.astype(F32))[:, None], (fx - x0.astype(F32))[None, :]
    one = F32(1)
    a0, a1, a2, a3 = (one - dy) * (one - dx), dy * (one - dx), (one - dy) * dx, dy * dx
    xf = x.astype(F32)
    v = lambda ys, xs: xf[:, :, ys][:, :, :, xs]
    out = v(y0, x0) * a0 + v(y1, x0) * a1 + v(y0, x1) * a2 + v(y1, x1) * a3
    mem.put(b.output, out.astype(F32) if dt is F32 else np.trunc(out).astype(np.uint8))  # T(...) truncates


@op(k4.Softmax)
def softmax(b: k4.Softmax, mem: Memory):
    """Per row: m = max, e = expf((x − m)·beta), sequential f32 sum, e / sum."""
    x = mem.get(b.input, F32, count=b.outer_size * b.inner_size).reshape(b.outer_size, b.inner_size)
    with np.errstate(all="ignore"):
        e = libm_f32(np.exp)((x - x.max(axis=1, keepdims=True)) * F32(b.beta))
        total = np.cumsum(e, axis=1, dtype=F32)[:, -1:]  # sequential f32 sum, like the kernel's loop
        mem.put(b.output, e / total)


@op(k4.Reduce)
def reduce(b: k4.Reduce, mem: Memory):
    """Fold every input into the output it maps to (get_reduced_offset), in NCHW order."""
    x = mem.get(b.input, F32, shape=b.in_shape, count=int(np.prod(b.in_shape)))
    out = np.full(int(np.prod(b.out_shape)), F32(b.init_value), F32)
    coords = np.indices(b.in_shape).reshape(4, -1)
    reduced = [np.where(c >= o, 0, c) for c, o in zip(coords, b.out_shape)]
    target = np.ravel_multi_index(reduced, b.out_shape)
    # ufunc.at is unbuffered and goes in input (NCHW) order: the kernel's sequential f32 accumulation.
    # fmin/fmax skip a NaN input, as out = std::min(out, in) does.
    ufunc = {0: np.add, 1: np.fmin, 2: np.fmax, 3: np.add}[b.reduce_op]
    ufunc.at(out, target, x.reshape(-1))
    if b.reduce_op == 0:  # mean: times (float)out_count / in_count, the counts from the range sizes
        out *= F32(b.output.size // 4) / F32(b.input.size // 4)
    mem.put(b.output, out)


def _reduce_window_nchw(x: np.ndarray, b) -> np.ndarray:
    n, c, h, w = x.shape
    oh, ow = out_hw((h, w), b)
    acc = np.full((n, c, oh, ow), F32(b.init_value), F32)
    count = np.zeros((oh, ow), np.int32)
    fold = {0: np.add, 1: lambda v, t: std_min(v, t), 2: lambda v, t: std_max(v, t), 3: np.add}[b.reduce_op]
    for _, _, oys, oxs, iys, ixs in window_taps((h, w), (oh, ow), b):
        acc[:, :, oys, oxs] = fold(acc[:, :, oys, oxs], x[:, :, iys, ixs])
        count[oys, oxs] += 1
    if b.reduce_op == 0:
        with np.errstate(all="ignore"):
            acc = (acc / count.astype(F32)).astype(F32)
    return clamp(acc, b.fused_activation)


@op(k4.ReduceWindow2D)
def reduce_window2d(b: k4.ReduceWindow2D, mem: Memory):
    """NCHW pooling over the valid taps; mean divides by the number of valid taps."""
    x = mem.get(b.input, F32, shape=b.in_shape, count=int(np.prod(b.in_shape)))
    mem.put(b.output, _reduce_window_nchw(x, b))


@op(k4.CpuReduceWindow2D)
def cpu_reduce_window2d(b: k4.CpuReduceWindow2D, mem: Memory):
    """NHWC reduce_window2d (mean, min, max)."""
    if b.reduce_op == 3:
        raise MalformedModel("cpu_reduce_window2d does not support sum")  # the runtime returns an error
    x = mem.get(b.input, F32, shape=b.in_shape, count=int(np.prod(b.in_shape)))
    mem.put(b.output, _reduce_window_nchw(x.transpose(0, 3, 1, 2), b).transpose(0, 2, 3, 1))


# ---------------------------------------------------------------- convolutions and matmul
def _conv_f32(x: np.ndarray, w: np.ndarray, bias: np.ndarray, b, groups: int, taps_first: bool) -> np.ndarray:
    """Float conv, NCHW, grouped OIHW weights; per output: bias, then += x·w over the valid taps in
    (ic, ky, kx) order (neutral conv2d) or (ky, kx, ic) order (`taps_first`, cpu_conv2d). Padding taps
    are skipped, not multiplied by zero."""
    n, c, h, wd = x.shape
    oc, gic = w.shape[0], c // groups
    goc = oc // groups
    oh, ow = out_hw((h, wd), b)
    xg = x.reshape(n, groups, gic, h, wd)
    wg = w.reshape(groups, goc, gic, b.filter_h, b.filter_w)
    acc = np.empty((n, groups, goc, oh, ow), F32)
    acc[...] = bias.reshape(1, groups, goc, 1, 1)
    taps = list(window_taps((h, wd), (oh, ow), b))
    order = [(t, ic) for t in taps for ic in range(gic)] if taps_first else \
        [(t, ic) for ic in range(gic) for t in taps]
    for (ky, kx, oys, oxs, iys, ixs), ic in order:
        acc[..., oys, oxs] += xg[:, :, None, ic, iys, ixs] * wg[None, :, :, ic, ky, kx, None, None]
    return clamp(acc.reshape(n, oc, oh, ow), b.fused_activation)


def _conv_int(x: np.ndarray, w: np.ndarray, bias: np.ndarray, b, groups: int, x_add: int, w_add: int):
    """Quantized conv: i32 bias + Σ (x + x_add)·(w + w_add) over the valid taps, then
    mul_and_carry_shift + output_offset, clamped to u8. The tap sums run in float64 BLAS: exact, every
    partial sum is an integer below 2^53."""
    n, c, h, wd = x.shape
    oc, gic = w.shape[0], c // groups
    goc = oc // groups
    oh, ow = out_hw((h, wd), b)
    xg = (x.astype(np.float64) + x_add).reshape(n, groups, gic, h, wd)
    wg = (w.astype(np.float64) + w_add).reshape(groups, goc, gic, b.filter_h, b.filter_w)
    acc = np.zeros((n, groups, goc, oh, ow), np.float64)
    for ky, kx, oys, oxs, iys, ixs in window_taps((h, wd), (oh, ow), b):
        xt = xg[:, :, :, iys, ixs]
        prod = np.matmul(wg[None, :, :, :, ky, kx], xt.reshape(*xt.shape[:3], -1))
        acc[..., oys, oxs] += prod.reshape(n, groups, goc, *xt.shape[-2:])
    acc = acc.astype(np.int64).reshape(n, oc, oh, ow) + bias.astype(np.int64)[None, :, None, None]
    y = mul_and_carry_shift(acc.astype(np.int32), b.output_mul, b.output_shift).astype(np.int64)
    return np.clip(y + b.output_offset, 0, 255).astype(np.uint8)


def _input(mem: Memory, b, dtype, shape) -> np.ndarray:
    return mem.get(b.input, dtype, shape=shape, count=int(np.prod(shape)))


@op(k4.Conv2D)
def conv2d(b: k4.Conv2D, mem: Memory):
    """float32 grouped conv, NCHW."""
    w = b.weights.reshape(b.out_channels, b.in_shape[1] // b.groups, b.filter_h, b.filter_w)
    mem.put(b.output, _conv_f32(_input(mem, b, F32, b.in_shape), w, b.bias, b, b.groups, taps_first=False))


@op(k4.QuantizedConv2D)
def quantized_conv2d(b: k4.QuantizedConv2D, mem: Memory):
    """u8 grouped conv, NCHW, offsets added."""
    w = b.weights.reshape(b.out_channels, b.in_shape[1] // b.groups, b.filter_h, b.filter_w)
    x = _input(mem, b, np.uint8, b.in_shape)
    mem.put(b.output, _conv_int(x, w, b.bias, b, b.groups, b.input_offset, b.filter_offset))


def _nhwc(fn, b, mem: Memory, dtype):
    """Run an NCHW conv core on an NHWC body (cpu_* ops) and store the result NHWC."""
    x = _input(mem, b, dtype, b.in_shape).transpose(0, 3, 1, 2)
    mem.put(b.output, np.ascontiguousarray(fn(np.ascontiguousarray(x)).transpose(0, 2, 3, 1)))


@op(k4.CpuConv2D)
def cpu_conv2d(b: k4.CpuConv2D, mem: Memory):
    """float32 conv, NHWC; per output the taps run ky, kx, ic."""
    w = b.weights.reshape(b.out_channels, b.filter_h, b.filter_w, b.in_shape[3]).transpose(0, 3, 1, 2)
    _nhwc(lambda x: _conv_f32(x, w, b.bias, b, 1, taps_first=True), b, mem, F32)


@op(k4.CpuDepthwiseConv2D)
def cpu_depthwise_conv2d(b: k4.CpuDepthwiseConv2D, mem: Memory):
    """float32 depthwise conv, NHWC."""
    c = b.in_shape[3]
    w = b.weights.reshape(c, 1, b.filter_h, b.filter_w)
    _nhwc(lambda x: _conv_f32(x, w, b.bias, b, c, taps_first=True), b, mem, F32)


@op(k4.CpuQuantizedConv2D)
def cpu_quantized_conv2d(b: k4.CpuQuantizedConv2D, mem: Memory):
    """u8 conv, NHWC; the offsets are *subtracted* here (cpu_kernels.h), unlike quantized_conv2d."""
    w = b.weights.reshape(b.out_channels, b.filter_h, b.filter_w, b.in_shape[3]).transpose(0, 3, 1, 2)
    _nhwc(lambda x: _conv_int(x, w, b.bias, b, 1, -b.input_offset, -b.filter_offset), b, mem, np.uint8)


@op(k4.CpuQuantizedDepthwiseConv2D)
def cpu_quantized_depthwise_conv2d(b: k4.CpuQuantizedDepthwiseConv2D, mem: Memory):
    """u8 depthwise conv, NHWC; offsets subtracted."""
    c = b.in_shape[3]
    w = b.weights.reshape(c, 1, b.filter_h, b.filter_w)
    _nhwc(lambda x: _conv_int(x, w, b.bias, b, c, -b.input_offset, -b.filter_offset), b, mem, np.uint8)


@op(k4.Conv2DTranspose)
def conv2d_transpose(b: k4.Conv2DTranspose, mem: Memory):
    """Scatter form: out[oc][iy·s − pad + ky·d][...] += x·w. Per output element the kernel adds in
    (ic, iy, ix) order, i.e. for a fixed ic in descending (ky, kx); bias is read but never added (§8.20)."""
    n, c, h, w = b.in_shape
    oc, oh, ow = b.out_shape[1:]
    gic, goc = c // b.groups, oc // b.groups
    x = _input(mem, b, F32, b.in_shape).reshape(n, b.groups, gic, h, w)
    wt = b.weights.reshape(b.groups, goc, gic, b.filter_h, b.filter_w)
    out = np.zeros((n, b.groups, goc, oh, ow), F32)
    for ic in range(gic):
        for ky in reversed(range(b.filter_h)):
            ys = tap_slices(oh, h, ky, b.stride_h, b.dilation_h, b.padding_h.before)
            for kx in reversed(range(b.filter_w)):
                xs = tap_slices(ow, w, kx, b.stride_w, b.dilation_w, b.padding_w.before)
                if ys and xs:
                    out[..., ys[1], xs[1]] += x[:, :, None, ic, ys[0], xs[0]] * wt[None, :, :, ic, ky, kx, None, None]
    out = out.reshape(n, oc, oh, ow)
    if tuple(b.fused_activation) != tuple(k4.FULL_RANGE):
        out = clamp(out, b.fused_activation)
    mem.put(b.output, out)


@op(k4.MatMul)
def matmul(b: k4.MatMul, mem: Memory):
    """float32 matmul + bias, fused clamp."""
    a = mem.get(b.input_a, F32, shape=(b.a_rows, b.a_cols), count=b.a_rows * b.a_cols)
    m = mem.get(b.input_b, F32, shape=(b.a_cols, b.b_cols), count=b.a_cols * b.b_cols)
    acc = np.empty((b.a_rows, b.b_cols), F32)
    acc[...] = b.bias[None, :]
    for i in range(b.a_cols):  # f32 accumulation from the bias in increasing i, like the kernel
        acc += a[:, i:i + 1] * m[i:i + 1, :]
    mem.put(b.output, clamp(acc, b.fused_activation))


@op(k4.QuantizedMatMul)
def quantized_matmul(b: k4.QuantizedMatMul, mem: Memory):
    """u8 matmul: i32 bias + Σ (a + a_off)(b + b_off), rescaled and clamped."""
    a = mem.get(b.input_a, np.uint8, shape=(b.a_rows, b.a_cols), count=b.a_rows * b.a_cols).astype(np.int64)
    m = mem.get(b.input_b, np.uint8, shape=(b.a_cols, b.b_cols), count=b.a_cols * b.b_cols).astype(np.int64)
    acc = (a + b.input_a_offset) @ (m + b.input_b_offset) + b.bias.astype(np.int64)[None, :]
    y = mul_and_carry_shift(acc.astype(np.int32), b.output_mul, b.output_shift).astype(np.int64)
    mem.put(b.output, np.clip(y + b.output_offset, 0, 255).astype(np.uint8))


# ---------------------------------------------------------------- NNIL (kmodel-v4.md §9)
NNIL_UNARY = {0x20 + code: fn for code, fn in UNARY_F32.items()}  # abs ceil cos exp floor log neg rsqrt sin square
NNIL_BINARY = {0x40: np.add, 0x41: np.subtract, 0x42: np.multiply, 0x43: np.divide, 0x44: std_min, 0x45: std_max}
NNIL_STACK = 64


def run_nnil(program: bytes, x: np.ndarray) -> np.ndarray | None:
    """Evaluate an NNIL program for every element at once (the bytecode has no branches, so running it
    on whole arrays is the per-element loop of the kernel). None if the program never reaches `ret`."""
    stack: list[np.ndarray] = []

    def pop():
        if not stack:
            raise MalformedModel("NNIL stack underflow")
        return stack.pop()

    def push(v):
        if len(stack) == NNIL_STACK:
            raise MalformedModel("NNIL stack overflow")
        stack.append(np.asarray(v, F32))

    pc = 0
    with np.errstate(all="ignore"):
        while pc < len(program):
            code, pc = program[pc], pc + 1
            if code == 0x00:
                continue
            elif code == 0x01:
                push(stack[-1] if stack else pop())
            elif code == 0x02:
                pop()
            elif code == 0x03:
                push(x)
            elif code in (0x04, 0x05):
                push(np.full(x.shape, F32(code - 0x04)))
            elif code == 0x06:
                if pc + 4 > len(program):
                    raise MalformedModel("NNIL ldc_r4 operand runs past the program")
                push(np.full(x.shape, np.frombuffer(program[pc:pc + 4], "<f4")[0]))
                pc += 4
            elif code in NNIL_UNARY:
                push(NNIL_UNARY[code](pop()))
            elif code in NNIL_BINARY:
                rhs = pop()
                push(NNIL_BINARY[code](pop(), rhs))
            elif code == 0x80:  # clamp: pop high, pop low, pop v -> std::clamp(v, low, high)
                high, low = pop(), pop()
                v = pop()
                push(np.where(v < low, low, np.where(high < v, high, v)))
            elif code == 0xA0:
                return pop()
            else:
                raise MalformedModel(f"invalid NNIL opcode 0x{code:02x} at byte {pc - 1}")
    return None


@op(k4.NnilUnaryMethod)
def nnil_unary_method(b: k4.NnilUnaryMethod, mem: Memory):
    """Run the NNIL program on every float32 element of the input."""
    out = run_nnil(b.body, mem.get(b.input, F32))
    if out is not None:  # no `ret`: the kernel leaves the output unwritten
        mem.put(b.output, out.astype(F32))


# ---------------------------------------------------------------- KPU (kmodel-v4.md §10)
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


@op(k4.KpuUpload)
def kpu_upload(b: k4.KpuUpload, mem: Memory):
    """Dense NCHW u8 from main memory into KPU RAM layout."""
    kpu_write(mem, b.output.start, _input(mem, b, np.uint8, b.in_shape))


@op(k4.KpuConv2D)
def kpu_conv2d(b: k4.KpuConv2D, mem: Memory):
    """The simulator path: download the input map, run the layer per batch (targets/k210/kpu.py), store
    the result into KPU RAM at image_dst_addr and, when present, densely into main_mem_output."""
    args = b.layer
    x = kpu_read(mem, 64 * args.image_src_addr, b.in_shape)
    out = np.stack([run_kpu_layer(args, x[i], b.weights, b.batch_norm, b.activation) for i in range(b.batches)])
    kpu_write(mem, 64 * args.image_dst_addr, out)
    if b.main_mem_output.size:
        mem.put(b.main_mem_output, out)  # all N·C·H·W bytes, as the simulator's std::copy does


# ---------------------------------------------------------------- the run loop
def feed(mem: Memory, r: k4.MemoryRange, shape, x) -> None:
    """Write one model input like `ncc infer`: a main range gets the bytes, a kpu range the KPU layout."""
    x = np.asarray(x)
    want = int(np.prod(shape)) if r.memory_type == k4.MEM_KPU else r.size // k4.DTYPES[r.datatype].itemsize
    if x.size != want:
        raise KpucError(f"model input {tuple(shape)} needs {want} {k4.DTYPES[r.datatype].name} values, "
                        f"got {x.size}")
    x = x.astype(k4.DTYPES[r.datatype]).reshape(-1)
    if r.memory_type == k4.MEM_KPU:
        if r.datatype != k4.DT_UINT8:
            raise MalformedModel("a KPU input must be uint8")
        kpu_write(mem, r.start, x.reshape(shape))
    else:
        mem.put(r, x)


def run_v4(model: k4.KModelV4, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Run every node in file order; returns each output range as a flat float32 array, in output order.

    float32 outputs come back as stored; uint8 outputs (ncc infer writes their raw bytes) as float32
    copies of the u8 codes."""
    if len(inputs) != len(model.inputs):
        raise KpucError(f"the model has {len(model.inputs)} input(s), got {len(inputs)}")
    mem = Memory(model)
    for r, shape, x in zip(model.inputs, model.input_shapes, inputs):
        feed(mem, r, shape, x)
    for i, node in enumerate(model.nodes):
        fn = OPS.get(node.opcode)
        if fn is None:
            raise KpucError(f"node {i}: unknown opcode 0x{node.opcode:x}")
        try:
            fn(node.body, mem)
        except KpucError as e:
            raise type(e)(f"node {i} ({node.name}): {e}") from e
        except (ValueError, IndexError, KeyError) as e:
            raise MalformedModel(f"node {i} ({node.name}): {e}") from e
    return [mem.get(r).astype(F32) for r in model.outputs]
