"""kmodel v4 node bodies of the target-neutral ops (kmodel-v4.md §8.1-§8.21, opcodes 0x00-0x14).

Each body is a dataclass whose fields, in declaration order, are its bytes in the file; the codec of each
field (kmodel_v4_records.py) reads and writes it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from targets.k210.kmodel_v4_records import (
    BOOL_PADDED,
    F32,
    I32,
    PADDING,
    PADDINGS,
    QUANT,
    RANGE,
    REST,
    SCALAR,
    SHAPE,
    U32,
    VALUE_RANGE,
    MemoryRange,
    Padding,
    QuantParam,
    Scalar,
    ValueRange,
    _conv_weights,
    _f,
    body,
    per_group,
)
from targets.k210.records import Array, ListOf


def _group_in_channels(v: dict) -> int:
    return per_group(v["in_shape"][1], v["groups"])


@body(0x00, "binary")
@dataclass(eq=False)
class Binary:
    """§8.1: float32 a op b with nncase broadcasting, then the fused clamp."""
    input_a: MemoryRange = _f(RANGE)
    input_b: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    binary_op: int = _f(U32)  # 0 add, 1 sub, 2 mul, 3 div, 4 min, 5 max
    in_a_shape: tuple = _f(SHAPE)
    in_b_shape: tuple = _f(SHAPE)
    out_shape: tuple = _f(SHAPE)
    fused_activation: ValueRange = _f(VALUE_RANGE)


@body(0x01, "concat")
@dataclass(eq=False)
class Concat:
    """§8.2: byte concatenation; inner_size is in bytes, dims[i] the inputs' extents on the axis."""
    output: MemoryRange = _f(RANGE)
    inner_size: int = _f(U32)  # bytes, not elements
    outer_size: int = _f(U32)
    inputs_count: int = _f(U32)
    inputs: tuple = _f(ListOf(RANGE, lambda v: v["inputs_count"]))
    dims: np.ndarray = _f(Array("<i4", lambda v: v["inputs_count"]))


@body(0x02, "conv2d")
@dataclass(eq=False)
class Conv2D:
    """§8.3: float32 grouped conv, NCHW; weights OIHW per group, then bias."""
    input: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    in_shape: tuple = _f(SHAPE)
    groups: int = _f(I32)
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
    weights: np.ndarray = _f(Array("<f4", _conv_weights("out_channels", _group_in_channels)))
    bias: np.ndarray = _f(Array("<f4", lambda v: v["out_channels"]))


@body(0x03, "dequantize")
@dataclass(eq=False)
class Dequantize:
    """§8.4: u8 -> f32."""
    input: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    quant_param: QuantParam = _f(QUANT)


@body(0x04, "matmul")
@dataclass(eq=False)
class MatMul:
    """§8.5: float32 [a_rows, a_cols] x [a_cols, b_cols] + bias."""
    input_a: MemoryRange = _f(RANGE)
    input_b: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    a_rows: int = _f(I32)
    a_cols: int = _f(I32)
    b_cols: int = _f(I32)
    fused_activation: ValueRange = _f(VALUE_RANGE)
    bias: np.ndarray = _f(Array("<f4", lambda v: v["b_cols"]))


@body(0x05, "pad")
@dataclass(eq=False)
class Pad:
    """§8.6: pad or crop a 1- or 4-byte tensor."""
    input: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    in_shape: tuple = _f(SHAPE)
    paddings: tuple = _f(PADDINGS)  # 4 x Padding, negative = crop
    pad_value: Scalar = _f(SCALAR)  # ncc v0.2 always writes {0, 0}


@body(0x06, "quantize")
@dataclass(eq=False)
class Quantize:
    """§8.7: f32 -> u8."""
    input: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    quant_param: QuantParam = _f(QUANT)


@body(0x07, "reduce")
@dataclass(eq=False)
class Reduce:
    """§8.8: reduce over the axes where out_shape is 1 (keep-dims), float32."""
    input: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    reduce_op: int = _f(U32)  # 0 mean, 1 min, 2 max, 3 sum
    in_shape: tuple = _f(SHAPE)
    out_shape: tuple = _f(SHAPE)
    init_value: float = _f(F32)


@body(0x08, "reduce_window2d")
@dataclass(eq=False)
class ReduceWindow2D:
    """§8.9: float32 pooling, NCHW; padding taps are skipped."""
    input: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    reduce_op: int = _f(U32)
    in_shape: tuple = _f(SHAPE)
    padding_h: Padding = _f(PADDING)
    padding_w: Padding = _f(PADDING)
    filter_h: int = _f(I32)
    filter_w: int = _f(I32)
    stride_h: int = _f(I32)
    stride_w: int = _f(I32)
    dilation_h: int = _f(I32)
    dilation_w: int = _f(I32)
    init_value: float = _f(F32)
    fused_activation: ValueRange = _f(VALUE_RANGE)


@body(0x09, "memory_copy")
@dataclass(eq=False)
class MemoryCopy:
    """§8.10: copies floor(input.size / 4) 4-byte words."""
    input: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)


@body(0x0A, "resize_image")
@dataclass(eq=False)
class ResizeImage:
    """§8.11: bilinear or nearest resize, f32 or u8, NCHW."""
    input: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    in_shape: tuple = _f(SHAPE)
    out_h: int = _f(I32)
    out_w: int = _f(I32)
    mode: int = _f(U32)  # 0 bilinear, 1 nearest_neighbor
    align_corners: bool = _f(BOOL_PADDED)


@body(0x0B, "softmax")
@dataclass(eq=False)
class Softmax:
    """§8.12: softmax over rows of inner_size (never emitted by ncc v0.2)."""
    input: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    inner_size: int = _f(I32)
    outer_size: int = _f(I32)
    beta: float = _f(F32)


@body(0x0C, "transpose")
@dataclass(eq=False)
class Transpose:
    """§8.13: 4-D transpose of a 1- or 4-byte tensor."""
    input: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    in_shape: tuple = _f(SHAPE)
    perm: tuple = _f(SHAPE)


@body(0x0D, "strided_slice")
@dataclass(eq=False)
class StridedSlice:
    """§8.14: strided slice with normalised begin/end; the masks are not used."""
    input: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    in_shape: tuple = _f(SHAPE)
    begin: tuple = _f(SHAPE)
    end: tuple = _f(SHAPE)
    strides: tuple = _f(SHAPE)
    begin_mask: int = _f(I32)  # the five masks are not used by the runtime
    end_mask: int = _f(I32)
    ellipsis_mask: int = _f(I32)
    new_axis_mask: int = _f(I32)
    shrink_axis_mask: int = _f(I32)


@body(0x0E, "unary")
@dataclass(eq=False)
class Unary:
    """§8.15: float32 unary function."""
    input: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    unary_op: int = _f(U32)  # 0 abs 1 ceil 2 cos 3 exp 4 floor 5 log 6 neg 7 rsqrt 8 sin 9 square


@body(0x0F, "quantized_conv2d")
@dataclass(eq=False)
class QuantizedConv2D:
    """§8.16: u8 grouped conv, NCHW; offsets are added; bias before weights."""
    input: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    in_shape: tuple = _f(SHAPE)
    groups: int = _f(I32)
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
    bias: np.ndarray = _f(Array("<i4", lambda v: v["out_channels"]))  # bias before weights here
    weights: np.ndarray = _f(Array("u1", _conv_weights("out_channels", _group_in_channels)))


@body(0x10, "quantized_matmul")
@dataclass(eq=False)
class QuantizedMatMul:
    """§8.17: u8 matmul with i32 bias."""
    input_a: MemoryRange = _f(RANGE)
    input_b: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    a_rows: int = _f(I32)
    a_cols: int = _f(I32)
    b_cols: int = _f(I32)
    input_a_offset: int = _f(I32)
    input_b_offset: int = _f(I32)
    output_mul: int = _f(I32)
    output_shift: int = _f(I32)
    output_offset: int = _f(I32)
    bias: np.ndarray = _f(Array("<i4", lambda v: v["b_cols"]))


@body(0x11, "quantized_binary")
@dataclass(eq=False)
class QuantizedBinary:
    """§8.18: u8 elementwise op with per-operand rescaling."""
    input_a: MemoryRange = _f(RANGE)
    input_b: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    binary_op: int = _f(U32)
    in_a_shape: tuple = _f(SHAPE)
    in_b_shape: tuple = _f(SHAPE)
    out_shape: tuple = _f(SHAPE)
    input_a_offset: int = _f(I32)
    input_a_mul: int = _f(I32)
    input_a_shift: int = _f(I32)
    input_b_offset: int = _f(I32)
    input_b_mul: int = _f(I32)
    input_b_shift: int = _f(I32)
    output_offset: int = _f(I32)  # before output_mul/output_shift in the file
    output_mul: int = _f(I32)
    output_shift: int = _f(I32)


@body(0x12, "table_lookup1d")
@dataclass(eq=False)
class TableLookup1D:
    """§8.19: out[i] = table[in[i]] (u8)."""
    input: MemoryRange = _f(RANGE)
    table: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)


@body(0x13, "conv2d_transpose")
@dataclass(eq=False)
class Conv2DTranspose:
    """§8.20: float32 transposed conv; the bias is stored but ignored by the runtime."""
    input: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    in_shape: tuple = _f(SHAPE)
    out_shape: tuple = _f(SHAPE)
    groups: int = _f(I32)
    padding_h: Padding = _f(PADDING)
    padding_w: Padding = _f(PADDING)
    filter_h: int = _f(I32)
    filter_w: int = _f(I32)
    stride_h: int = _f(I32)
    stride_w: int = _f(I32)
    dilation_h: int = _f(I32)
    dilation_w: int = _f(I32)
    fused_activation: ValueRange = _f(VALUE_RANGE)
    weights: np.ndarray = _f(Array("<f4", lambda v: v["out_shape"][1] * (per_group(v["in_shape"][1], v["groups"]))
                                   * v["filter_h"] * v["filter_w"]))
    bias: np.ndarray = _f(Array("<f4", lambda v: v["out_shape"][1]))  # present but ignored by the runtime


@body(0x14, "nnil_unary_method")
@dataclass(eq=False)
class NnilUnaryMethod:
    """§8.21: float32 elementwise NNIL program (§9)."""
    input: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    body: bytes = _f(REST)  # NNIL program, the body's zero padding included (0x00 = nop)

