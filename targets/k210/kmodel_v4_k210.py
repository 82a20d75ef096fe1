"""kmodel v4 node bodies of the K210 target: the NHWC cpu_* ops and the KPU ops (kmodel-v4.md §8.22-§8.27,
§10.2)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from targets.k210.kmodel_v4_ops import ReduceWindow2D
from targets.k210.kmodel_v4_records import (
    I32,
    PADDING,
    RANGE,
    SHAPE,
    VALUE_RANGE,
    MemoryRange,
    Padding,
    ValueRange,
    _conv_weights,
    _f,
    body,
)
from targets.k210.kpu import ActTable, BatchNorm, KpuArgs, weights_count
from targets.k210.records import Array, Reader, Record, Writer, align_up


@body(0x1001, "cpu_conv2d")
@dataclass(eq=False)
class CpuConv2D:
    """§8.22: float32 conv, NHWC, weights [oc][kh][kw][ic]."""
    input: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    in_shape: tuple = _f(SHAPE)
    out_channels: int = _f(I32)
    padding_h: Padding = _f(PADDING)
    padding_w: Padding = _f(PADDING)
    filter_h: int = _f(I32)
    filter_w: int = _f(I32)
    stride_h: int = _f(I32)
    stride_w: int = _f(I32)
    dilation_h: int = _f(I32)
    dilation_w: int = _f(I32)
    fused_activation: ValueRange = _f(VALUE_RANGE)
    weights: np.ndarray = _f(Array("<f4", _conv_weights("out_channels", lambda v: v["in_shape"][3])))
    bias: np.ndarray = _f(Array("<f4", lambda v: v["out_channels"]))


@body(0x1002, "cpu_depthwise_conv2d")
@dataclass(eq=False)
class CpuDepthwiseConv2D:
    """§8.23: float32 depthwise conv, NHWC, weights [c][kh][kw]."""
    input: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    in_shape: tuple = _f(SHAPE)
    padding_h: Padding = _f(PADDING)
    padding_w: Padding = _f(PADDING)
    filter_h: int = _f(I32)
    filter_w: int = _f(I32)
    stride_h: int = _f(I32)
    stride_w: int = _f(I32)
    dilation_h: int = _f(I32)
    dilation_w: int = _f(I32)
    fused_activation: ValueRange = _f(VALUE_RANGE)
    weights: np.ndarray = _f(Array("<f4", lambda v: v["in_shape"][3] * v["filter_h"] * v["filter_w"]))
    bias: np.ndarray = _f(Array("<f4", lambda v: v["in_shape"][3]))


@body(0x1003, "cpu_reduce_window2d")
@dataclass(eq=False)
class CpuReduceWindow2D(ReduceWindow2D):
    """§8.24: the reduce_window2d body, NHWC."""


@body(0x1004, "cpu_quantized_conv2d")
@dataclass(eq=False)
class CpuQuantizedConv2D:
    """§8.25: u8 conv, NHWC; offsets are subtracted; weights before bias."""
    input: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    in_shape: tuple = _f(SHAPE)
    out_channels: int = _f(I32)
    padding_h: Padding = _f(PADDING)
    padding_w: Padding = _f(PADDING)
    filter_h: int = _f(I32)
    filter_w: int = _f(I32)
    stride_h: int = _f(I32)
    stride_w: int = _f(I32)
    dilation_h: int = _f(I32)
    dilation_w: int = _f(I32)
    input_offset: int = _f(I32)
    filter_offset: int = _f(I32)
    output_mul: int = _f(I32)
    output_shift: int = _f(I32)
    output_offset: int = _f(I32)
    weights: np.ndarray = _f(Array("u1", _conv_weights("out_channels", lambda v: v["in_shape"][3])))
    bias: np.ndarray = _f(Array("<i4", lambda v: v["out_channels"]))


@body(0x1005, "cpu_quantized_depthwise_conv2d")
@dataclass(eq=False)
class CpuQuantizedDepthwiseConv2D:
    """§8.26: u8 depthwise conv, NHWC; offsets are subtracted."""
    input: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    in_shape: tuple = _f(SHAPE)
    padding_h: Padding = _f(PADDING)
    padding_w: Padding = _f(PADDING)
    filter_h: int = _f(I32)
    filter_w: int = _f(I32)
    stride_h: int = _f(I32)
    stride_w: int = _f(I32)
    dilation_h: int = _f(I32)
    dilation_w: int = _f(I32)
    input_offset: int = _f(I32)
    filter_offset: int = _f(I32)
    output_mul: int = _f(I32)
    output_shift: int = _f(I32)
    output_offset: int = _f(I32)
    weights: np.ndarray = _f(Array("u1", lambda v: v["in_shape"][3] * v["filter_h"] * v["filter_w"]))
    bias: np.ndarray = _f(Array("<i4", lambda v: v["in_shape"][3]))


@body(0x2001, "kpu_upload")
@dataclass(eq=False)
class KpuUpload:
    """§8.27: dense NCHW u8 in main memory -> KPU RAM layout."""
    input: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    in_shape: tuple = _f(SHAPE)


@body(0x2002, "kpu_conv2d")
@dataclass(eq=False)
class KpuConv2D:
    """One KPU layer (§10.2): argument words, batch-norm and activation tables, weights; every bit is
    decoded by targets/k210/kpu.py's field tables (lossless, reserved bits included). In the file the three
    table "addresses" (bwsx_base_addr, active_addr, para_start_addr) are the number of zero bytes skipped
    before each table so that it starts at a 256-aligned file offset; the writer recomputes them.

    Real files vs spec §10.4: the uninitialised top 4 bits of activation words are not only 0xC (MSVC) or
    0: ulffd_landmark.kmodel has 0xB in segment 4 of its first five layers. ActTable.reserved_act keeps
    them, so such files still round-trip."""
    main_mem_output: MemoryRange  # all zero (size 0) when the layer has no main-memory copy
    batches: int
    reserved0: int
    layer: KpuArgs
    batch_norm: BatchNorm
    activation: ActTable
    weights: np.ndarray  # u8 OIHW ([OC, 1, k, k] for depthwise)

    TABLE_ALIGN = 256  # beta1+; alpha builds used 8 / 256 / 128 (§15)
    HEAD = Record("KpuConv2DHead", "<iI", "batches reserved0")  # after main_mem_output; reserved0 kept as read

    @property
    def in_shape(self) -> tuple:
        return (self.batches, *self.layer.in_shape)

    @property
    def out_shape(self) -> tuple:
        return (self.batches, *self.layer.out_shape)

    @classmethod
    def read(cls, r: Reader, done: dict) -> KpuConv2D:
        main_mem_output = RANGE.read(r)
        head = cls.HEAD.read(r)
        layer = KpuArgs.from_words(r.array("<u8", 12))
        r.read(layer.bwsx_base_addr)
        batch_norm = BatchNorm.from_words(r.array("<u8", layer.o_ch_num + 1))
        r.read(layer.active_addr)
        activation = ActTable.from_words(r.array("<u8", 18))
        r.read(layer.para_start_addr)
        weights = r.array("u1", weights_count(layer)).reshape(layer.weights_shape)
        return cls(main_mem_output, head.batches, head.reserved0, layer, batch_norm, activation, weights)

    def write(self, w: Writer):
        RANGE.write(w, self.main_mem_output)
        self.HEAD.write(w, self)
        layer_at = w.pos
        w.write(bytes(8 * 12))  # placeholder: the skip counts are known once the tables are placed
        gaps = {}
        for name, table, dtype in (("bwsx_base_addr", self.batch_norm.to_words(), "<u8"),
                                   ("active_addr", self.activation.to_words(), "<u8"),
                                   ("para_start_addr", self.weights.reshape(-1), "u1")):
            gaps[name] = align_up(w.pos, self.TABLE_ALIGN) - w.pos
            w.align(self.TABLE_ALIGN)
            w.array(table, dtype)
        words = self.layer.replace(**gaps).to_words()
        w.buf[layer_at:layer_at + 96] = np.array(words, "<u8").tobytes()

