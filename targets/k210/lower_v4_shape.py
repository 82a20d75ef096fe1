"""kmodel v4 emitters for data movement: reshape, transpose, slices, split, concat, pad, resize and the
space/batch/depth moves (kmodel-v4.md §8). All are byte moves, so they serve float32 and uint8 alike.

A reshape, a cast to the same type and a split into contiguous runs are views (no node); a concat along
an axis with only 1s before it is done in place (`plan_inplace_concats`); the space/batch/depth moves are
one 4-D transpose each.
"""
from __future__ import annotations

import struct

import numpy as np

from compiler.errors import KpucError
from compiler.ir import Node
from compiler.kernels.resize import _nearest_index, _source_coord
from targets.k210 import kmodel_v4 as k4
from targets.k210.lower_v4_core import Buffer, Lowering, emitter, shape4

F32 = np.float32


def _elems(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _drop_leading(shape, *per_dim, keep) -> tuple:
    """Beyond 4-D: drop the leading size-1 dims from `shape` and the per-dim lists, if each of those
    entries is `keep(list index, dim)` (untouched); else the op is not 4-D expressible."""
    k = len(shape) - 4
    if k <= 0:
        return (tuple(shape), *per_dim)
    if any(d != 1 for d in shape[:k]) or not all(keep(j, i) for j, lst in enumerate(per_dim) for i in range(k)
                                                  if lst is not None):
        raise KpucError(f"kmodel v4 shapes are at most 4-D, not {tuple(shape)}")
    return (tuple(shape[k:]), *(lst[k:] if lst is not None else None for lst in per_dim))


# ---------------------------------------------------------------- copies and pads other emitters share
def copy_to_main(ctx: Lowering, src: Buffer, shape, name: str) -> Buffer:
    """A main-memory copy of `src`: memory_copy moves whole 4-byte words only (§8.10), so a u8 tensor of
    another size is copied by a pad with no padding."""
    out = Buffer(name, k4.MEM_MAIN, src.datatype, src.size)
    ctx.emit(_copy_body(src, out, shape))
    return out


def pad_body(src: Buffer, dst: Buffer, in_shape, pads, value: float | int = 0) -> k4.Pad:
    """pad (§8.6) of a tensor of `in_shape` by (before, after) per dim (left-padded to 4-D). The value is
    written as the element type's bytes (ncc always wrote {0, 0}, which is what a 0 gives)."""
    in_shape, pads = _drop_leading(in_shape, tuple(tuple(p) for p in pads), keep=lambda j, i: pads[i] == (0, 0))
    pads = ((0, 0),) * (4 - len(pads)) + pads
    if src.datatype == k4.DT_FLOAT32:
        storage = struct.pack("<f", value)
    else:
        storage = bytes([int(value)]) + bytes(3)
    return k4.Pad(src, dst, shape4(in_shape), tuple(k4.Padding(*p) for p in pads),
                  k4.Scalar(src.datatype if value else 0, storage))


def _copy_body(src: Buffer, dst: Buffer, shape):
    """memory_copy moves whole 4-byte words (§8.10); other sizes are copied by a pad of nothing."""
    if src.size % 4 == 0:
        return k4.MemoryCopy(src, dst)
    return pad_body(src, dst, shape, ((0, 0),) * len(shape))


# ---------------------------------------------------------------- data movement
@emitter("reshape")
def reshape(ctx: Lowering, node: Node) -> None:
    """Same bytes, another shape: a view, no node (ncc emitted a memory_copy, §16.2)."""
    x = node.inputs[0]
    src = ctx.buffer(x)
    ctx.main[node.output] = ctx.view(node.output.name, src, 0, src.size)


@emitter("cast")
def cast(ctx: Lowering, node: Node) -> None:
    x = node.inputs[0]
    if x.dtype == "uint8" and node.attrs["dtype"] == "float32":
        # a uint8 picture cast to float (MoveNet's input): DEQUANTIZE with step 1 and zero point 0, exact (§8.4)
        ctx.emit(k4.Dequantize(ctx.buffer(x), ctx.output(node.output), k4.QuantParam(0, 1.0)))
        return
    if node.attrs["dtype"] != x.dtype:
        raise KpucError(f"{node.name}: the v0.2 runtime has no cast from {node.inputs[0].dtype} to {node.attrs['dtype']}")
    reshape(ctx, node)


@emitter("transpose")
def transpose(ctx: Lowering, node: Node) -> None:
    x = node.inputs[0]
    perm = tuple(node.attrs["perm"])
    shape, kept = _drop_leading(x.shape, perm, keep=lambda j, i: perm[i] == i)
    e = 4 - len(shape)
    perm = tuple(range(e)) + tuple(p - (len(perm) - len(kept)) + e for p in kept)
    ctx.emit(k4.Transpose(ctx.buffer(x), ctx.output(node.output), shape4(shape), perm))


def emit_slice(ctx: Lowering, src: Buffer, in_shape, begin, end, strides, out: Buffer) -> None:
    """strided_slice (§8.14): normalized begin/end, leading dims [0, 1) step 1, masks 0."""
    in_shape, begin, end, strides = _drop_leading(in_shape, tuple(begin), tuple(end), tuple(strides),
                                                  keep=lambda j, i: (begin[i], end[i], strides[i])[j] == (0, 1, 1)[j])
    e = 4 - len(in_shape)
    ctx.emit(k4.StridedSlice(src, out, shape4(in_shape), (0,) * e + tuple(begin), (1,) * e + tuple(end),
                             (1,) * e + tuple(strides), 0, 0, 0, 0, 0))


def contiguous_part(shape, axis: int, begin: int, length: int, itemsize: int) -> tuple[int, int] | None:
    """(byte offset, byte size) when taking [begin, begin+length) along `axis` is one contiguous run."""
    if _elems(shape[:axis]) != 1:
        return None
    inner = _elems(shape[axis + 1:]) * itemsize
    return begin * inner, length * inner


@emitter("strided_slice")
def strided_slice(ctx: Lowering, node: Node) -> None:
    x = node.inputs[0]
    a = node.attrs
    emit_slice(ctx, ctx.buffer(x), x.shape, a["begin"], a["end"], a["strides"], ctx.output(node.output))


@emitter("split")
def split(ctx: Lowering, node: Node) -> None:
    """Views when each piece is a contiguous run of the input, else one strided_slice per piece."""
    x = node.inputs[0]
    axis, src, start = node.attrs["axis"], ctx.buffer(x), 0
    itemsize = src.size // max(x.type.size, 1)
    for v, size in zip(node.outputs, node.attrs["sizes"]):
        part = contiguous_part(x.shape, axis, start, size, itemsize)
        if part is not None:
            ctx.main[v] = ctx.view(v.name, src, *part)
        else:
            begin = tuple(start if i == axis else 0 for i in range(x.type.rank))
            end = tuple(start + size if i == axis else d for i, d in enumerate(x.shape))
            emit_slice(ctx, src, x.shape, begin, end, (1,) * x.type.rank, ctx.output(v))
        start += size


def plan_inplace_concats(ctx: Lowering) -> None:
    """Decide, before lowering, which concat inputs are written straight into their slot of the output.

    A concat whose axis has nothing but 1s before it (outer_size 1) is its inputs' bytes back to back, so
    each input can be a view of the output: its producer writes there and the concat costs no copy and
    no second buffer. A value qualifies when an emitter will create it (not a constant or model input),
    it is not already promised to another concat, and it is the first of its occurrences; through a
    reshape that alone reads a value the promise moves to that value (a reshape is a view). Concats are
    visited last to first so that a concat feeding another is itself a slot of the outer one.
    """
    for node in reversed(ctx.graph.nodes_of("concat")):
        out, axis = node.output, node.attrs["axis"]
        if _elems(out.shape[:axis]) != 1 or out.dtype not in ("float32", "uint8"):
            continue
        buf = ctx.presets.get(out) or ctx.new_buffer(out.name, out.shape, out.dtype)
        ctx.presets[out] = buf
        itemsize, offset = buf.size // max(out.type.size, 1), 0
        for v in node.inputs:
            size = v.type.size * itemsize
            while v.producer.op == "reshape":
                src = v.producer.inputs[0]
                if len(src.users) != 1 or src in ctx.graph.outputs or src in ctx.presets:
                    break
                v = src
            if v.producer.op not in ("input", "constant") and v not in ctx.presets:
                ctx.presets[v] = ctx.view(v.name, buf, offset, size)
            offset += size


@emitter("concat")
def concat(ctx: Lowering, node: Node) -> None:
    """Byte concatenation (§8.2): inner_size in bytes, outer_size over the dims before the axis. When
    `plan_inplace_concats` gave the inputs views of the output, only the inputs that did not land in
    their slot are copied there."""
    out = node.output
    axis = node.attrs["axis"]
    buf = ctx.output(out)
    itemsize = buf.size // max(out.type.size, 1)
    inputs = tuple(ctx.buffer(v) for v in node.inputs)
    if _elems(out.shape[:axis]) == 1:
        offset = 0
        for v, src in zip(node.inputs, inputs):
            slot = ctx.view(f"{out.name}[{offset}]", buf, offset, src.size)
            if (src.root, src.root_offset) != (slot.root, slot.root_offset):
                ctx.emit(_copy_body(src, slot, v.shape))
            offset += src.size
        return
    ctx.emit(k4.Concat(buf, itemsize * _elems(out.shape[axis + 1:]), _elems(out.shape[:axis]), len(inputs), inputs,
                       np.array([v.shape[axis] for v in node.inputs], np.int32)))


@emitter("pad")
def pad(ctx: Lowering, node: Node) -> None:
    """Constant pads and crops (negative amounts, §8.6); the pad value is written (ncc always wrote 0)."""
    x = node.inputs[0]
    a = node.attrs
    if a["mode"] != "constant":
        raise KpucError(f"{node.name}: the runtime pads with a constant only, not '{a['mode']}'")
    ctx.emit(pad_body(ctx.buffer(x), ctx.output(node.output), x.shape, a["pads"], a["value"]))


def _runtime_coords(in_len: int, out_len: int, align_corners: bool) -> np.ndarray:
    """resize_image's source coordinate of every output index (§8.11): o·scale in float32."""
    scale = F32(in_len) / F32(out_len)
    if align_corners and out_len > 1:
        scale = F32(in_len - 1) / F32(out_len - 1)
    return np.arange(out_len, dtype=F32) * scale


def _resize_mode(a: dict, in_hw, out_hw) -> tuple[int, bool] | None:
    """(mode, align_corners) of a resize_image that picks exactly the IR resize's source pixels (nearest)
    or coordinates (bilinear, within float32 rounding), or None. Decided by comparing the index / coordinate
    arrays, so e.g. TFLite's half-pixel nearest upscale by an integer factor qualifies."""
    ctm = a["coordinate_transformation_mode"]
    ok = {}
    for align in (False, True):
        same = True
        for n, o in zip(in_hw, out_hw):
            ir = _source_coord(ctm, o, n)
            rt = _runtime_coords(n, o, align)
            if a["mode"] == "nearest":
                ir_idx = np.clip(_nearest_index(ir, a["nearest_mode"]), 0, n - 1)
                same &= bool(np.array_equal(ir_idx, np.minimum(np.floor(rt).astype(np.int64), n - 1)))
            else:
                same &= bool(np.allclose(np.clip(ir, 0, n - 1), np.clip(rt, 0, n - 1), rtol=0, atol=1e-5))
        ok[align] = same
    if a["mode"] == "nearest" and ok[False]:
        return 1, False                       # the runtime's nearest ignores align_corners
    if a["mode"] == "linear" and (ok[False] or ok[True]):
        return 0, not ok[False]
    return None


def _half_pixel_factors(a: dict, x, sizes) -> tuple[int, int] | None:
    """(f_h, f_w) when the resize is a float bilinear half-pixel upscale by whole factors, else None."""
    if a["mode"] != "linear" or a["coordinate_transformation_mode"] not in ("half_pixel", "pytorch_half_pixel"):
        return None
    (h, w), (oh, ow) = x.shape[2:], sizes[2:]
    if x.dtype != "float32" or oh % h or ow % w or min(oh, ow) < 2:
        return None
    return oh // h, ow // w


def _half_pixel_axis(ctx: Lowering, src: Buffer, shape, axis: int, factor: int, out: Buffer | None):
    """Upscale one axis (2 = H, 3 = W) of a float NCHW tensor by `factor` with half-pixel centres, using
    the runtime's bilinear resize_image that has none (§8.11). Source coordinate of output o is
    (o + 0.5)/f − 0.5 (clamped at 0); with the first row repeated in front (the clamp) that is
    o/f + (f + 1)/(2f), i.e. index 2o + f + 1 on a grid of step 1/(2f). So: slice the first row, concat
    it in front, resize_image (no align_corners) to 2f·(n + 1) rows, and take every second row from
    f + 1. For f = 2 every coordinate is a multiple of 1/4, exact in float32; the blend is the runtime's."""
    n = shape[axis]

    def at(length):
        return tuple(length if i == axis else d for i, d in enumerate(shape))

    edge = ctx.temp(f"edge{axis}", at(1))
    emit_slice(ctx, src, shape, (0,) * 4, at(1), (1,) * 4, edge)
    padded = ctx.temp(f"padded{axis}", at(n + 1))
    ctx.emit(k4.Concat(padded, 4 * _elems(shape[axis + 1:]), _elems(shape[:axis]), 2, (edge, src),
                       np.array([1, n], np.int32)))
    fine_shape = at(2 * factor * (n + 1))
    fine = ctx.temp(f"fine{axis}", fine_shape)
    ctx.emit(k4.ResizeImage(padded, fine, shape4(at(n + 1)), fine_shape[2], fine_shape[3], 0, False))
    out_shape = at(factor * n)
    out = out if out is not None else ctx.temp(f"half_pixel{axis}", out_shape)
    begin = tuple(factor + 1 if i == axis else 0 for i in range(4))
    end = tuple(factor + 1 + 2 * (factor * n - 1) + 1 if i == axis else d for i, d in enumerate(fine_shape))
    emit_slice(ctx, fine, fine_shape, begin, end, tuple(2 if i == axis else 1 for i in range(4)), out)
    return out, out_shape


def _resize_half_pixel(ctx: Lowering, node: Node, factors: tuple[int, int]) -> None:
    """A half-pixel bilinear upscale by whole factors: H, then W, each by `_half_pixel_axis`."""
    x = node.inputs[0]
    src, shape = ctx.buffer(x), x.shape
    axes = [(axis, f) for axis, f in zip((2, 3), factors) if f > 1]
    for k, (axis, f) in enumerate(axes):
        last = k == len(axes) - 1
        src, shape = _half_pixel_axis(ctx, src, shape, axis, f, ctx.output(node.output) if last else None)


@emitter("resize")
def resize(ctx: Lowering, node: Node) -> None:
    """resize_image (§8.11): nearest = floor(o·in/out), bilinear without half-pixel centres (plain or
    align_corners); a float bilinear half-pixel upscale by whole factors through a finer grid
    (`_half_pixel_axis`); H and W only."""
    x = node.inputs[0]
    a, sizes = node.attrs, tuple(node.attrs["sizes"])
    if x.type.rank != 4 or sizes[:2] != x.shape[:2]:
        raise KpucError(f"{node.name}: resize_image scales H and W of a 4-D tensor only")
    mode = _resize_mode(a, x.shape[2:], sizes[2:])
    factors = _half_pixel_factors(a, x, sizes) if mode is None else None
    if factors is not None and factors != (1, 1):
        _resize_half_pixel(ctx, node, factors)
        return
    if mode is None:
        raise KpucError(f"{node.name}: resize_image cannot sample like a {a['mode']} resize with "
                        f"{a['coordinate_transformation_mode']} coordinates "
                        f"({x.shape[2]}x{x.shape[3]} -> {sizes[2]}x{sizes[3]})")
    ctx.emit(k4.ResizeImage(ctx.buffer(x), ctx.output(node.output), shape4(x.shape), sizes[2], sizes[3], *mode))


@emitter("space_to_batch")
def space_to_batch(ctx: Lowering, node: Node) -> None:
    """pad, then one 4-D transpose: [N·C·H', bh, W', bw] -> [bh, bw, N·C·H', W'] (= [bh·bw·N, C, H', W'])."""
    x = node.inputs[0]
    (bh, bw), ((pt, pb), (pl, pr)) = node.attrs["block"], node.attrs["pads"]
    src = ctx.buffer(x)
    n, c, h, w = x.shape
    if pt or pb or pl or pr:
        padded = ctx.temp("padded", (n, c, h + pt + pb, w + pl + pr), x.dtype)
        ctx.emit(pad_body(src, padded, x.shape, ((0, 0), (0, 0), (pt, pb), (pl, pr))))
        src, h, w = padded, h + pt + pb, w + pl + pr
    ctx.emit(k4.Transpose(src, ctx.output(node.output), (n * c * (h // bh), bh, w // bw, bw), (1, 3, 0, 2)))


@emitter("batch_to_space")
def batch_to_space(ctx: Lowering, node: Node) -> None:
    """One 4-D transpose [bh, bw, N·C·H, W] -> [N·C·H, bh, W, bw] (= [N, C, H·bh, W·bw]), then the crop."""
    x = node.inputs[0]
    (bh, bw), ((ct, cb), (cl, cr)) = node.attrs["block"], node.attrs["crops"]
    bn, c, h, w = x.shape
    n = bn // (bh * bw)
    full = (n, c, h * bh, w * bw)
    cropped = bool(ct or cb or cl or cr)
    dst = ctx.temp("uncropped", full, x.dtype) if cropped else ctx.output(node.output)
    ctx.emit(k4.Transpose(ctx.buffer(x), dst, (bh, bw, n * c * h, w), (2, 0, 3, 1)))
    if cropped:
        emit_slice(ctx, dst, full, (0, 0, ct, cl), (n, c, h * bh - cb, w * bw - cr), (1, 1, 1, 1),
                   ctx.output(node.output))


@emitter("space_to_depth")
def space_to_depth(ctx: Lowering, node: Node) -> None:
    """N = 1: [C·H', b, W', b] -> [b, b, C·H', W'] (= [1, b·b·C, H', W'], channel (by·b + bx)·C + c)."""
    x = node.inputs[0]
    n, c, h, w = x.shape
    b = node.attrs["block"]
    if n != 1:
        raise KpucError(f"{node.name}: space_to_depth is lowered for batch 1 only")
    ctx.emit(k4.Transpose(ctx.buffer(x), ctx.output(node.output), (c * (h // b), b, w // b, b), (1, 3, 0, 2)))


@emitter("depth_to_space")
def depth_to_space(ctx: Lowering, node: Node) -> None:
    """N = 1, DCR: [b, b, C·H, W] -> [C·H, b, W, b] (= [1, C, H·b, W·b])."""
    x = node.inputs[0]
    n, c, h, w = x.shape
    b = node.attrs["block"]
    if n != 1 or node.attrs["mode"] != "DCR":
        raise KpucError(f"{node.name}: depth_to_space is lowered for batch 1, DCR only")
    ctx.emit(k4.Transpose(ctx.buffer(x), ctx.output(node.output), (b, b, (c // (b * b)) * h, w), (2, 0, 3, 1)))


@emitter("gather")
def gather(ctx: Lowering, node: Node) -> None:
    """Constant indices in arithmetic progression: a strided_slice; beyond 4-D (which strided_slice cannot
    hold) a view when they pick one contiguous run, as split does."""
    x, idx = node.inputs
    axis = node.attrs["axis"]
    if not idx.is_constant or idx.data.ndim > 1:
        raise KpucError(f"{node.name}: gather needs constant 0-/1-D indices")
    i = np.asarray(idx.data, np.int64).reshape(-1) % x.shape[axis]
    step = int(i[1] - i[0]) if i.size > 1 else 1
    if step == 0 or np.any(np.diff(i) != step):
        raise KpucError(f"{node.name}: gather indices {i.tolist()} are not an arithmetic progression")
    src = ctx.buffer(x)
    part = (contiguous_part(x.shape, axis, int(i[0]), i.size, src.size // max(x.type.size, 1))
            if step == 1 and x.type.rank > 4 else None)
    if part is not None:  # e.g. ShuffleNet's x[0] / x[1] halves of a 5-D channel shuffle: a view, no node
        ctx.main[node.output] = ctx.view(node.output.name, src, *part)
        return
    begin = tuple(int(i[0]) if d == axis else 0 for d in range(x.type.rank))
    end = tuple((int(i[-1]) + (1 if step > 0 else -1)) if d == axis else s for d, s in enumerate(x.shape))
    end = tuple(-1 if d == axis and e < 0 else e for d, e in enumerate(end))
    emit_slice(ctx, src, x.shape, begin, end, tuple(step if d == axis else 1 for d in range(x.type.rank)),
               ctx.output(node.output))
