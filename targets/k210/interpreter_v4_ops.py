"""kmodel v4 interpreter: elementwise ops, data movement, reductions and NNIL (kmodel-v4.md §8, §9)."""
from __future__ import annotations

import numpy as np

from compiler.errors import MalformedModel
from compiler.quantization import c_div, mul_and_carry_shift, round_half_away_from_zero
from targets.k210 import kmodel_v4 as k4
from targets.k210.interpreter_v4_base import (
    F32,
    Memory,
    broadcast_gather,
    clamp,
    elem_dtype,
    op,
    out_hw,
    std_max,
    std_min,
    window_taps,
)
from targets.k210.libm import cosf, expf, logf, sinf

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


UNARY_F32 = {0: np.abs, 1: np.ceil, 2: cosf, 3: expf, 4: np.floor, 5: logf,
             6: np.negative, 7: lambda x: F32(1) / np.sqrt(x), 8: sinf, 9: np.square}


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


@op(k4.Pad)
def pad(b: k4.Pad, mem: Memory):
    """Pad or crop (negative paddings); the element size comes from input.datatype."""
    dt = elem_dtype(b.input)
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
    dt = elem_dtype(b.input)
    x = mem.get(b.input, dt, shape=b.in_shape, count=int(np.prod(b.in_shape)))
    mem.put(b.output, np.ascontiguousarray(x.transpose(b.perm)))


@op(k4.StridedSlice)
def strided_slice(b: k4.StridedSlice, mem: Memory):
    """The kernel loops d = begin; stride > 0 ? d < end : d > end; the masks are unused."""
    dt = elem_dtype(b.input)
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

    def v(ys, xs):
        return xf[:, :, ys][:, :, :, xs]
    out = v(y0, x0) * a0 + v(y1, x0) * a1 + v(y0, x1) * a2 + v(y1, x1) * a3
    mem.put(b.output, out.astype(F32) if dt is F32 else np.trunc(out).astype(np.uint8))  # T(...) truncates


@op(k4.Softmax)
def softmax(b: k4.Softmax, mem: Memory):
    """Per row: m = max, e = expf((x − m)·beta), sequential f32 sum, e / sum."""
    x = mem.get(b.input, F32, count=b.outer_size * b.inner_size).reshape(b.outer_size, b.inner_size)
    with np.errstate(all="ignore"):
        e = expf((x - x.max(axis=1, keepdims=True)) * F32(b.beta))
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
