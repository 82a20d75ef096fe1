"""kmodel v4 (nncase v0.2.x) reader, writer and describer.

Layout (spec kmodel-v4.md §2): header, input ranges, input shapes, output ranges, constants blob,
node headers (opcode, body_size), then the node bodies back to back, each zero-padded to a multiple
of 8 bytes of absolute file offset. Every body is one dataclass below whose fields, in declaration
order, are the serialization order; each field carries its codec, so `read_v4` and `write_v4` are
derived from the same description (STYLE §5 "Binary writers mirror readers").

Round trip: `write_v4(read_v4(b)) == b` for every real v4 file. What makes that hold:
- header `reserved0` is garbage in real files (never initialised by nncase): kept on read and written
  back; a model built from scratch carries 0.
- nncase seeks instead of writing the last body's padding, so real files may end up to 7 bytes
  before `bodies_start + Σ body_size` (sdk_mask_detect.v4: 4 bytes). `KModelV4.tail_missing`
  records that and the writer drops the same bytes; a new model writes its full padding (0).
- body padding and the KPU table gaps are zero in every real file and are regenerated, not kept.
- kpu_conv2d tables are written 256-aligned as beta1+ does; alpha-era files (8-aligned batch-norm
  tables, spec §15) therefore do not round-trip byte for byte.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field, fields
from typing import Any, Callable, NamedTuple

import numpy as np

from compiler.errors import MalformedModel
from targets.k210.bits import Reader, Writer, align_up
from targets.k210.kpu import POOL_TYPES, ActTable, BatchNorm, KpuArgs, weights_count
from targets.k210.kpu_layout import KPU_RAM_BYTES, kpu_rows

IDENTIFIER = 0x4B4D444C  # 'KMDL' as a C multi-char constant: bytes "LDMK" on disk (§3)
VERSION = 4
MEM_CONST, MEM_MAIN, MEM_KPU = 0, 1, 2
DT_FLOAT32, DT_UINT8 = 0, 1
DTYPES = {DT_FLOAT32: np.dtype("<f4"), DT_UINT8: np.dtype("u1")}
MEMORY_NAMES = {MEM_CONST: "const", MEM_MAIN: "main", MEM_KPU: "kpu"}
FLT_MAX = float(np.finfo(np.float32).max)


# ---------------------------------------------------------------- small records (§4)
class MemoryRange(NamedTuple):
    """memory_range (§4.1): pool, datatype, byte offset in the pool, exact byte size."""
    memory_type: int
    datatype: int
    start: int
    size: int


class Padding(NamedTuple):
    """padding (§4.2): elements before and after along one axis (negative crops)."""
    before: int
    after: int


class ValueRange(NamedTuple):
    """value_range<float> (§4.2): the fused clamp [min, max]."""
    min: float
    max: float


class QuantParam(NamedTuple):
    """quant_param_t (§4.2): q = round(x·scale + zero_point)."""
    zero_point: int
    scale: float  # steps per real unit (the inverse of TFLite's scale)


class Scalar(NamedTuple):
    """scalar (§4.2): a datatype word and 4 bytes of storage."""
    datatype: int
    storage: bytes  # 4 bytes, value in the first 1 or 4 of them


NO_RANGE = MemoryRange(MEM_CONST, DT_FLOAT32, 0, 0)
FULL_RANGE = ValueRange(-FLT_MAX, FLT_MAX)


@dataclass(frozen=True)
class Codec:
    """A fixed-size record: struct format plus the conversions to and from its Python value."""
    fmt: str
    load: Callable[[tuple], Any] = lambda t: t[0]
    dump: Callable[[Any], tuple] = lambda v: (v,)

    def read(self, r: Reader, _fields=None):
        return self.load(struct.unpack(self.fmt, r.read(struct.calcsize(self.fmt))))

    def write(self, w: Writer, value):
        w.write(struct.pack(self.fmt, *self.dump(value)))


@dataclass(frozen=True)
class Array:
    """A variable-length array whose element count follows from the fields read before it."""
    dtype: str
    count: Callable[[dict], int]

    def read(self, r: Reader, done: dict) -> np.ndarray:
        return r.array(self.dtype, int(self.count(done)))

    def write(self, w: Writer, value):
        w.array(value, self.dtype)


@dataclass(frozen=True)
class ListOf:
    """`count(fields read so far)` records of one codec, as a tuple."""
    codec: Codec
    count: Callable[[dict], int]

    def read(self, r: Reader, done: dict) -> tuple:
        return tuple(self.codec.read(r) for _ in range(int(self.count(done))))

    def write(self, w: Writer, value):
        for v in value:
            self.codec.write(w, v)


class _Rest:
    """All remaining bytes of the body, padding included (nnil_unary_method's program, §8.21)."""

    def read(self, r: Reader, done: dict) -> bytes:
        return r.read(max(0, done["_body_end"] - r.pos))

    def write(self, w: Writer, value: bytes):
        w.write(bytes(value))


U32 = Codec("<I")
I32 = Codec("<i")
F32 = Codec("<f")
RANGE = Codec("<4I", lambda t: MemoryRange(*t), tuple)
SHAPE = Codec("<4i", tuple, tuple)
PADDING = Codec("<2i", lambda t: Padding(*t), tuple)
PADDINGS = Codec("<8i", lambda t: tuple(Padding(*t[i:i + 2]) for i in range(0, 8, 2)),
                 lambda v: tuple(x for p in v for x in p))
VALUE_RANGE = Codec("<2f", lambda t: ValueRange(*t), tuple)
QUANT = Codec("<if", lambda t: QuantParam(*t), tuple)
SCALAR = Codec("<I4s", lambda t: Scalar(*t), tuple)
BOOL_PADDED = Codec("<?3x")  # resize_image.align_corners: C++ bool + 3 bytes of struct padding (§8.11)
REST = _Rest()

HEADER = Codec("<10I", tuple, tuple)  # identifier version flags target constants main_mem nodes inputs outputs reserved0
NODE_HEADER = Codec("<2I", tuple, tuple)  # opcode body_size


def _f(codec) -> Any:
    return field(metadata={"codec": codec})


def _conv_weights(oc: str, ic: Callable[[dict], int]) -> Callable[[dict], int]:
    return lambda v: v[oc] * ic(v) * v["filter_h"] * v["filter_w"]


# ---------------------------------------------------------------- node bodies (§8, §10.2)
BODIES: dict[int, type] = {}
OPCODE_NAMES: dict[int, str] = {}


def body(opcode: int, name: str):
    """Register a body dataclass under its runtime_opcode (runtime_op.def)."""
    def register(cls):
        cls.opcode, cls.op_name = opcode, name
        BODIES[opcode], OPCODE_NAMES[opcode] = cls, name
        return cls
    return register


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
    weights: np.ndarray = _f(Array("<f4", _conv_weights("out_channels", lambda v: v["in_shape"][1] // v["groups"])))
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
    weights: np.ndarray = _f(Array("u1", _conv_weights("out_channels", lambda v: v["in_shape"][1] // v["groups"])))


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
    weights: np.ndarray = _f(Array("<f4", lambda v: v["out_shape"][1] * (v["in_shape"][1] // v["groups"])
                                   * v["filter_h"] * v["filter_w"]))
    bias: np.ndarray = _f(Array("<f4", lambda v: v["out_shape"][1]))  # present but ignored by the runtime


@body(0x14, "nnil_unary_method")
@dataclass(eq=False)
class NnilUnaryMethod:
    """§8.21: float32 elementwise NNIL program (§9)."""
    input: MemoryRange = _f(RANGE)
    output: MemoryRange = _f(RANGE)
    body: bytes = _f(REST)  # NNIL program, the body's zero padding included (0x00 = nop)


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

    @property
    def in_shape(self) -> tuple:
        return (self.batches, *self.layer.in_shape)

    @property
    def out_shape(self) -> tuple:
        return (self.batches, *self.layer.out_shape)

    @classmethod
    def read(cls, r: Reader, done: dict) -> "KpuConv2D":
        main_mem_output = RANGE.read(r)
        batches, reserved0 = struct.unpack("<iI", r.read(8))
        layer = KpuArgs.from_words(r.array("<u8", 12))
        r.read(layer.bwsx_base_addr)
        batch_norm = BatchNorm.from_words(r.array("<u8", layer.o_ch_num + 1))
        r.read(layer.active_addr)
        activation = ActTable.from_words(r.array("<u8", 18))
        r.read(layer.para_start_addr)
        weights = r.array("u1", weights_count(layer)).reshape(layer.weights_shape)
        return cls(main_mem_output, batches, reserved0, layer, batch_norm, activation, weights)

    def write(self, w: Writer):
        RANGE.write(w, self.main_mem_output)
        w.write(struct.pack("<iI", self.batches, self.reserved0))
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


def read_body(cls, r: Reader, body_end: int):
    """Decode one node body starting at r.pos (generic: the dataclass fields in order)."""
    done = {"_body_end": body_end}
    if hasattr(cls, "read"):
        return cls.read(r, done)
    for f in fields(cls):
        done[f.name] = f.metadata["codec"].read(r, done)
    del done["_body_end"]
    return cls(**done)


def write_body(b, w: Writer):
    """Encode one node body at w.pos (the mirror of read_body); padding is the caller's job."""
    if hasattr(b, "write"):
        return b.write(w)
    for f in fields(b):
        f.metadata["codec"].write(w, getattr(b, f.name))


# ---------------------------------------------------------------- the model (§2, §3)
@dataclass(eq=False)
class RawBody:
    """The bytes of a body whose opcode this reader does not know (kept so the file still round-trips)."""
    opcode: int
    data: bytes
    op_name = "unknown"

    def write(self, w: Writer):
        w.write(self.data)


@dataclass(eq=False)
class Node:
    """One node: its runtime_opcode and its decoded body (section 7 / 8)."""
    opcode: int
    body: Any
    raw: bytes = b""  # the body's bytes as read (empty for nodes built in memory)

    @property
    def name(self) -> str:
        return OPCODE_NAMES.get(self.opcode, f"unknown_0x{self.opcode:x}")


@dataclass(eq=False)
class KModelV4:
    """A whole kmodel v4 file; the header's counts and sizes are derived from the lists on write."""
    inputs: list[MemoryRange]
    input_shapes: list[tuple]
    outputs: list[MemoryRange]
    constants: bytes
    main_mem: int
    nodes: list[Node]
    target: int = 1  # nncase v0.2 always writes 1 (K210), also for -t cpu
    flags: int = 0
    reserved0: int = 0  # uninitialised garbage in nncase's files; kept for the round trip
    tail_missing: int = 0  # bytes of the last body's padding that the file omits (nncase seeks, see module doc)

    def bodies_start(self) -> int:
        """File offset of the first node body."""
        return 40 + 16 * (2 * len(self.inputs) + len(self.outputs)) + len(self.constants) + 8 * len(self.nodes)


def read_v4(data: bytes) -> KModelV4:
    """Parse a kmodel v4 file (kmodel-v4.md §2-§10)."""
    data = bytes(data)
    r = Reader(data)
    ident, version, flags, target, n_const, main_mem, n_nodes, n_in, n_out, reserved0 = HEADER.read(r)
    if ident != IDENTIFIER or version != VERSION:
        raise MalformedModel(f"not a kmodel v4: identifier 0x{ident:08x}, version {version} "
                             f"(want 0x{IDENTIFIER:08x} 'LDMK', version 4)")
    if target not in (0, 1):
        raise MalformedModel(f"kmodel v4: model target {target} (the runtime accepts 0 = CPU, 1 = K210)")
    inputs = [RANGE.read(r) for _ in range(n_in)]
    input_shapes = [SHAPE.read(r) for _ in range(n_in)]
    outputs = [RANGE.read(r) for _ in range(n_out)]
    constants = r.read(n_const)
    headers = [NODE_HEADER.read(r) for _ in range(n_nodes)]
    nodes, pos = [], r.pos
    for i, (opcode, body_size) in enumerate(headers):
        end = pos + body_size
        if end > len(data) + 7 * (i == n_nodes - 1):  # only the last body may lack (up to 7 bytes of) padding
            raise MalformedModel(f"kmodel v4: node {i} ({OPCODE_NAMES.get(opcode, hex(opcode))}) body of "
                                 f"{body_size} bytes at offset {pos} does not fit the {len(data)}-byte file")
        r.pos = pos
        cls = BODIES.get(opcode)
        try:
            b = read_body(cls, r, min(end, len(data))) if cls else RawBody(opcode, r.read(min(end, len(data)) - pos))
        except MalformedModel as e:
            raise MalformedModel(f"kmodel v4: node {i} ({OPCODE_NAMES[opcode]}): {e}") from None
        if r.pos > end:
            raise MalformedModel(f"kmodel v4: node {i} ({OPCODE_NAMES[opcode]}) needs {r.pos - pos} bytes, "
                                 f"its body_size is {body_size}")
        nodes.append(Node(opcode, b, data[pos:min(end, len(data))]))
        pos = end
    return KModelV4(inputs, input_shapes, outputs, constants, main_mem, nodes, target, flags, reserved0,
                    tail_missing=max(0, pos - len(data)))


def write_v4(model: KModelV4) -> bytes:
    """Serialize a model; the mirror of read_v4 (see the module doc for the round-trip rules)."""
    start = model.bodies_start()
    w = Writer()
    w.write(bytes(start))  # header and tables are written once the body sizes are known
    sizes = []
    for n in model.nodes:
        at = w.pos
        write_body(n.body, w)
        w.align(8)
        sizes.append(w.pos - at)
    head = Writer()
    HEADER.write(head, (IDENTIFIER, VERSION, model.flags, model.target, len(model.constants), model.main_mem,
                        len(model.nodes), len(model.inputs), len(model.outputs), model.reserved0))
    for rng in model.inputs:
        RANGE.write(head, rng)
    for shape in model.input_shapes:
        SHAPE.write(head, tuple(shape))
    for rng in model.outputs:
        RANGE.write(head, rng)
    head.write(model.constants)
    for n, size in zip(model.nodes, sizes):
        NODE_HEADER.write(head, (n.opcode, size))
    assert head.pos == start
    w.buf[:start] = head.buf
    out = w.getvalue()
    return out[:len(out) - model.tail_missing] if model.tail_missing else out


# ---------------------------------------------------------------- inspect
def kpu_bytes(shape) -> int:
    """Bytes an NCHW u8 map occupies in KPU RAM (§10.1)."""
    n, c, h, w = shape
    return n * 64 * kpu_rows(c, h, w)


def windowed_size(size: int, filt: int, stride: int, dilation: int, pad: Padding) -> int:
    """Output extent of a window op (kernels/kernel_utils.h get_windowed_output_size, C division)."""
    return (size + pad.before + pad.after - ((filt - 1) * dilation + 1) + stride) // stride


def node_ranges(b) -> tuple[list[MemoryRange], list[MemoryRange]]:
    """(inputs, outputs) memory ranges a node reads and writes."""
    if isinstance(b, KpuConv2D):
        src = MemoryRange(MEM_KPU, DT_UINT8, 64 * b.layer.image_src_addr, kpu_bytes(b.in_shape))
        dst = MemoryRange(MEM_KPU, DT_UINT8, 64 * b.layer.image_dst_addr, kpu_bytes(b.out_shape))
        return [src], [dst] + ([b.main_mem_output] if b.main_mem_output.size else [])
    if isinstance(b, RawBody):
        return [], []
    ins, outs = [], []
    for f in fields(b):
        v = getattr(b, f.name)
        if f.name == "inputs":
            ins += list(v)
        elif isinstance(v, MemoryRange):
            (outs if f.name == "output" else ins).append(v)
    return ins, outs


def node_shapes(b) -> tuple[tuple | None, tuple | None]:
    """(input shape, output shape) where the body states or implies them (NCHW; cpu_* ops NHWC)."""
    if isinstance(b, (MatMul, QuantizedMatMul)):
        return (b.a_rows, b.a_cols), (b.a_rows, b.b_cols)
    in_shape = getattr(b, "in_shape", None) or getattr(b, "in_a_shape", None)
    out_shape = getattr(b, "out_shape", None)
    if out_shape is not None or in_shape is None:
        return in_shape, out_shape
    n, c, h, w = in_shape
    if isinstance(b, (Conv2D, QuantizedConv2D, ReduceWindow2D)):
        oh = windowed_size(h, b.filter_h, b.stride_h, b.dilation_h, b.padding_h)
        ow = windowed_size(w, b.filter_w, b.stride_w, b.dilation_w, b.padding_w)
        if isinstance(b, CpuReduceWindow2D):  # NHWC
            oh = windowed_size(c, b.filter_h, b.stride_h, b.dilation_h, b.padding_h)
            ow = windowed_size(h, b.filter_w, b.stride_w, b.dilation_w, b.padding_w)
            return in_shape, (n, oh, ow, w)
        return in_shape, (n, getattr(b, "out_channels", c), oh, ow)
    if isinstance(b, Pad):
        return in_shape, tuple(s + p.before + p.after for s, p in zip(in_shape, b.paddings))
    if isinstance(b, Transpose):
        return in_shape, tuple(in_shape[p] for p in b.perm)
    if isinstance(b, ResizeImage):
        return in_shape, (n, c, b.out_h, b.out_w)
    if isinstance(b, StridedSlice):
        return in_shape, tuple(len(range(s, e, st)) for s, e, st in zip(b.begin, b.end, b.strides))
    if isinstance(b, KpuUpload):
        return in_shape, in_shape
    return in_shape, None


def _range_dict(r: MemoryRange) -> dict:
    return {"memory": MEMORY_NAMES.get(r.memory_type, str(r.memory_type)),
            "dtype": {DT_FLOAT32: "float32", DT_UINT8: "uint8"}.get(r.datatype, str(r.datatype)),
            "start": r.start, "size": r.size}


def describe_v4(model: KModelV4) -> dict:
    """Everything `kpuc inspect` shows: header, inputs/outputs, one row per node, the memory map."""
    rows, used = [], {MEM_CONST: 0, MEM_MAIN: 0, MEM_KPU: 0}
    everything = [*model.inputs, *model.outputs]
    for i, n in enumerate(model.nodes):
        ins, outs = node_ranges(n.body)
        in_shape, out_shape = node_shapes(n.body)
        row = {"index": i, "opcode": n.opcode, "op": n.name, "inputs": [_range_dict(r) for r in ins],
               "outputs": [_range_dict(r) for r in outs],
               "in_shape": list(in_shape) if in_shape else None, "out_shape": list(out_shape) if out_shape else None}
        if isinstance(n.body, KpuConv2D):
            row["kpu"] = {"filter": n.body.layer.kernel, "depthwise": n.body.layer.depthwise,
                          "pool": POOL_TYPES.get(n.body.layer.pool_type, ("?",))[0],
                          "weights_bytes": int(n.body.weights.size)}
        rows.append(row)
        everything += ins + outs
    for r in everything:
        if r.memory_type in used:
            used[r.memory_type] = max(used[r.memory_type], r.start + r.size)
    return {
        "format": "kmodel", "version": VERSION,
        "header": {"flags": model.flags, "target": model.target, "constants": len(model.constants),
                   "main_mem": model.main_mem, "nodes": len(model.nodes), "inputs": len(model.inputs),
                   "outputs": len(model.outputs), "reserved0": model.reserved0},
        "inputs": [{**_range_dict(r), "shape": list(s)} for r, s in zip(model.inputs, model.input_shapes)],
        "outputs": [_range_dict(r) for r in model.outputs],
        "nodes": rows,
        "ops": {name: sum(n.name == name for n in model.nodes) for name in dict.fromkeys(n.name for n in model.nodes)},
        "memory": {"const": {"size": len(model.constants), "used": used[MEM_CONST]},
                   "main": {"size": model.main_mem, "used": used[MEM_MAIN]},
                   "kpu": {"size": KPU_RAM_BYTES, "used": used[MEM_KPU]}},
    }
