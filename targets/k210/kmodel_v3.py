"""kmodel v3 (nncase v0.1, K210 SDK `kpu.c`): read, write and describe (kmodel-v3.md).

File = 28-byte header, output table, layer header table (type, body_size), then the bodies back to back.
Each body is padded with zeros to an absolute multiple of 8, counted in its body_size. Every body layout
is described once below (a `Record` for fixed bodies, a small class with `read`/`write` side by side for
the variable ones) and both directions derive from it.

Round trip: `write_v3(read_v3(b)) == b` for nncase's files. The writer re-derives what is layout, not
content: body sizes, the K210Conv blob offsets (args at align 8, weights and BN at align 128, activation at
align 256 — kmodel-v3.md §8.16) and all padding (written as zeros). nncase does not write the last body's
tail padding; `KModelV3.tail_padding` remembers whether the file had it (new models get it, as the spec's
emitter checklist asks). Reserved bit fields of the KPU words and tables are kept and written back.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

import numpy as np

from compiler.errors import MalformedModel
from targets.k210.kpu import ActTable, BatchNorm, KpuArgs, decode_weights, weights_count
from targets.k210.kpu_layout import KPU_RAM_ROWS, kpu_rows
from targets.k210.records import Array, ListOf, Reader, Record, Struct, Writer, align_up


class LayerType(IntEnum):
    """v3 layer types (nncase `K210LayerType`, SDK `KL_*`; kmodel-v3.md §7)."""
    Invalid = 0
    Add = 1
    QuantizedAdd = 2
    GlobalMaxPool2d = 3
    QuantizedGlobalMaxPool2d = 4
    GlobalAveragePool2d = 5
    QuantizedGlobalAveragePool2d = 6
    MaxPool2d = 7
    QuantizedMaxPool2d = 8
    AveragePool2d = 9
    QuantizedAveragePool2d = 10
    Quantize = 11
    Dequantize = 12
    Requantize = 13
    L2Normalization = 14
    Softmax = 15
    Concatenation = 16
    QuantizedConcatenation = 17
    FullyConnected = 18
    QuantizedFullyConnected = 19
    TensorflowFlatten = 20
    QuantizedTensorflowFlatten = 21
    ResizeNearestNeighbor = 22
    QuantizedResizeNearestNeighbor = 23
    ChannelwiseDequantize = 24
    Logistic = 25
    K210Conv = 10240
    K210AddPadding = 10241
    K210RemovePadding = 10242
    K210Upload = 10243


V3_HEADER = Record("V3Header", "<7I", "version flags arch layers_length max_start_address main_mem_usage output_count")
V3_OUTPUT = Record("V3Output", "<2I", "address size")
V3_LAYER_HEADER = Record("V3LayerHeader", "<2I", "type body_size")
U32 = Struct("<I")
V3_RANGE = Record("V3Range", "<2I", "start size")   # one Concatenation input (§8.10)

_IO = "flags main_mem_in_address main_mem_out_address"
_POOL = f"{_IO} in_width in_height in_channels out_width out_height out_channels kernel_width kernel_height " \
        "stride_width stride_height padding_width padding_height"
_RESIZE = f"{_IO} in_width in_height in_channels out_width out_height align_corners"
_UNARY = Record("UnaryBody", "<4I", f"{_IO} channels")   # L2Normalization, Softmax, Logistic (§8.9)

# Fixed-size bodies (kmodel-v3.md §8), fields in file order.
FIXED_BODIES: dict[LayerType, Record] = {
    LayerType.Add: Record("AddBody", "<5I", "flags main_mem_in_a_address main_mem_in_b_address main_mem_out_address count"),
    LayerType.QuantizedAdd: Record(
        "QuantizedAddBody", "<5I9i", "flags main_mem_in_a_address main_mem_in_b_address main_mem_out_address count "
        "in_a_offset in_a_mul in_a_shift in_b_offset in_b_mul in_b_shift out_offset out_mul out_shift"),
    LayerType.GlobalAveragePool2d: Record("GlobalAveragePool2dBody", "<5I", f"{_IO} kernel_size channels"),
    LayerType.MaxPool2d: Record("MaxPool2dBody", "<16I", f"{_POOL} act"),
    LayerType.QuantizedMaxPool2d: Record("QuantizedMaxPool2dBody", "<15I", _POOL),
    LayerType.AveragePool2d: Record("AveragePool2dBody", "<16I", f"{_POOL} act"),
    LayerType.Quantize: Record("QuantizeBody", "<4I2f", "flags main_mem_in_address mem_out_address count scale bias"),
    LayerType.Dequantize: Record("DequantizeBody", "<4I2f", f"{_IO} count scale bias"),
    LayerType.Requantize: Record("RequantizeBody", "<4I256s", f"{_IO} count table"),
    LayerType.L2Normalization: _UNARY,
    LayerType.Softmax: _UNARY,
    LayerType.Logistic: _UNARY,
    LayerType.TensorflowFlatten: Record("TensorflowFlattenBody", "<6I", f"{_IO} width height channels"),
    LayerType.ResizeNearestNeighbor: Record("ResizeNearestNeighborBody", "<8Ii", _RESIZE),
    LayerType.QuantizedResizeNearestNeighbor: Record("QuantizedResizeNearestNeighborBody", "<8Ii", _RESIZE),
    LayerType.K210AddPadding: Record("K210AddPaddingBody", "<4I", "flags main_mem_in_address kpu_mem_out_address channels"),
    LayerType.K210RemovePadding: Record("K210RemovePaddingBody", "<4I", f"{_IO} channels"),
    LayerType.K210Upload: Record("K210UploadBody", "<6I", "flags main_mem_in_address kpu_mem_out_address width height channels"),
}


@dataclass(eq=False)
class ConcatenationBody:
    """Concatenation / QuantizedConcatenation (§8.10): memcpy each (start, size) range, in order, to the output."""
    flags: int
    main_mem_out_address: int
    inputs: list[tuple[int, int]]
    HEAD = Record("ConcatenationHead", "<3I", "flags main_mem_out_address input_count")
    INPUTS = ListOf(V3_RANGE, lambda head: head.input_count)

    @classmethod
    def read(cls, r: Reader, header=None) -> ConcatenationBody:
        head = cls.HEAD.read(r)
        inputs = [(i.start, i.size) for i in cls.INPUTS.read(r, head)]
        return cls(head.flags, head.main_mem_out_address, inputs)

    def write(self, w: Writer, header=None) -> None:
        self.HEAD.write(w, self.HEAD.make(flags=self.flags, main_mem_out_address=self.main_mem_out_address,
                                          input_count=len(self.inputs)))
        self.INPUTS.write(w, [V3_RANGE.make(start=s, size=n) for s, n in self.inputs])


@dataclass(eq=False)
class FullyConnectedBody:
    """FullyConnected (§8.11): f32 weights [OC, IC] row-major, then f32 bias [OC]; act 0/1/2 = linear/relu/relu6."""
    flags: int
    main_mem_in_address: int
    main_mem_out_address: int
    act: int
    weights: np.ndarray
    bias: np.ndarray
    HEAD = Record("FullyConnectedHead", "<6I", f"{_IO} in_channels out_channels act")
    WEIGHTS = Array("f4", lambda h: h.in_channels * h.out_channels)
    BIAS = Array("f4", lambda h: h.out_channels)

    @classmethod
    def read(cls, r: Reader, header=None) -> FullyConnectedBody:
        h = cls.HEAD.read(r)
        weights = cls.WEIGHTS.read(r, h).reshape(h.out_channels, h.in_channels)
        return cls(h.flags, h.main_mem_in_address, h.main_mem_out_address, h.act, weights, cls.BIAS.read(r, h))

    def write(self, w: Writer, header=None) -> None:
        oc, ic = self.weights.shape
        self.HEAD.write(w, self.HEAD.make(flags=self.flags, main_mem_in_address=self.main_mem_in_address,
                                          main_mem_out_address=self.main_mem_out_address, in_channels=ic,
                                          out_channels=oc, act=self.act))
        self.WEIGHTS.write(w, self.weights)
        self.BIAS.write(w, self.bias)

    @property
    def in_channels(self) -> int:
        return self.weights.shape[1]

    @property
    def out_channels(self) -> int:
        return self.weights.shape[0]


@dataclass(eq=False)
class ChannelwiseDequantizeBody:
    """ChannelwiseDequantize (§8.14): out[c, i] = in[c, i]·scale[c] + bias[c] over `channel_size` elements."""
    flags: int
    main_mem_in_address: int
    main_mem_out_address: int
    channel_size: int
    scale: np.ndarray
    bias: np.ndarray
    HEAD = Record("ChannelwiseDequantizeHead", "<5I", f"{_IO} channels channel_size")
    PARAMS = Array("f4", lambda h: 2 * h.channels)   # (scale, bias) pairs

    @classmethod
    def read(cls, r: Reader, header=None) -> ChannelwiseDequantizeBody:
        h = cls.HEAD.read(r)
        params = cls.PARAMS.read(r, h).reshape(h.channels, 2)
        return cls(h.flags, h.main_mem_in_address, h.main_mem_out_address, h.channel_size,
                   params[:, 0].copy(), params[:, 1].copy())

    def write(self, w: Writer, header=None) -> None:
        self.HEAD.write(w, self.HEAD.make(flags=self.flags, main_mem_in_address=self.main_mem_in_address,
                                          main_mem_out_address=self.main_mem_out_address,
                                          channels=len(self.scale), channel_size=self.channel_size))
        self.PARAMS.write(w, np.stack([self.scale, self.bias], axis=1))

    @property
    def channels(self) -> int:
        return len(self.scale)


@dataclass(eq=False)
class K210ConvBody:
    """K210Conv (§8.16): a 24-byte record, then at absolute alignments the 12 KPU words (8), the weights (128),
    the BN table (128) and the activation table (256). The four offsets are file offsets; the reader follows
    them (as the SDK does), the writer recomputes them for the canonical placement."""
    flags: int
    main_mem_out_address: int
    args: KpuArgs
    weights: np.ndarray          # OIHW, u8 (header flags bit 0) or u16
    bn: BatchNorm
    act: ActTable
    offsets: tuple[int, int, int, int] = (0, 0, 0, 0)   # layer, weights, bn, act as read; the writer ignores them
    HEAD = Record("K210ConvHead", "<6I", "flags main_mem_out_address layer_offset weights_offset bn_offset act_offset")

    @classmethod
    def read(cls, r: Reader, header) -> K210ConvBody:
        h = cls.HEAD.read(r)
        args = KpuArgs.from_words(Reader(r.data, h.layer_offset).array("<u8", 12))
        eight_bit = bool(header.flags & 1)
        n_bytes = weights_count(args) * (1 if eight_bit else 2)
        weights = decode_weights(Reader(r.data, h.weights_offset).read(n_bytes), args, eight_bit)
        bn = BatchNorm.from_words(Reader(r.data, h.bn_offset).array("<u8", args.o_ch_num + 1))
        act = ActTable.from_words(Reader(r.data, h.act_offset).array("<u8", 18))
        return cls(h.flags, h.main_mem_out_address, args, weights, bn, act,
                   (h.layer_offset, h.weights_offset, h.bn_offset, h.act_offset))

    def write(self, w: Writer, header) -> None:
        start = w.pos
        layer = align_up(start + self.HEAD.size, 8)
        weights = align_up(layer + 96, 128)
        bn = align_up(weights + self.weights.size * self.weights.itemsize, 128)
        act = align_up(bn + 8 * len(self.bn.norm_mul), 256)
        self.HEAD.write(w, self.HEAD.make(flags=self.flags, main_mem_out_address=self.main_mem_out_address,
                                          layer_offset=layer, weights_offset=weights, bn_offset=bn, act_offset=act))
        w.align(8)
        w.array(np.array(self.args.to_words(), np.uint64), "u8")
        w.align(128)
        w.array(self.weights, "u1" if header.flags & 1 else "u2")
        w.align(128)
        w.array(self.bn.to_words(), "u8")
        w.align(256)
        w.array(self.act.to_words(), "u8")


@dataclass(eq=False)
class RawBody:
    """A layer type without a known body layout (kmodel-v3.md §8.15): the bytes are kept as they are."""
    data: bytes

    @property
    def flags(self) -> int:
        return U32.unpack(self.data) if len(self.data) >= 4 else 0

    def write(self, w: Writer, header=None) -> None:
        w.write(self.data)


VARIABLE_BODIES = {
    LayerType.Concatenation: ConcatenationBody, LayerType.QuantizedConcatenation: ConcatenationBody,
    LayerType.FullyConnected: FullyConnectedBody, LayerType.ChannelwiseDequantize: ChannelwiseDequantizeBody,
    LayerType.K210Conv: K210ConvBody,
}
BODY_READERS = {**FIXED_BODIES, **VARIABLE_BODIES}


@dataclass(eq=False)
class V3Layer:
    """One layer: its type (a LayerType, or the raw int if unknown), body and the body bytes as read."""
    type: LayerType | int
    body: object
    body_size: int = 0
    raw: bytes = b""

    @property
    def flags(self) -> int:
        return self.body.flags

    @property
    def type_name(self) -> str:
        return self.type.name if isinstance(self.type, LayerType) else f"Unknown({self.type})"


@dataclass(eq=False)
class KModelV3:
    """A whole v3 file. `header.layers_length` / `output_count` are recomputed by the writer."""
    header: object
    outputs: list = field(default_factory=list)
    layers: list[V3Layer] = field(default_factory=list)
    tail_padding: bool = True

    @property
    def eight_bit(self) -> bool:
        return bool(self.header.flags & 1)


def read_v3(data: bytes) -> KModelV3:
    """Parse a kmodel v3 file (kmodel-v3.md §2-§8)."""
    data = bytes(data)
    r = Reader(data)
    header = V3_HEADER.read(r)
    if header.version != 3:
        raise MalformedModel(f"kmodel v3: version is {header.version}, expected 3")
    if header.arch != 0:
        raise MalformedModel(f"kmodel v3: arch {header.arch} (the SDK only runs arch 0, K210)")
    outputs = list(ListOf(V3_OUTPUT, lambda h: h.output_count).read(r, header))
    layer_headers = ListOf(V3_LAYER_HEADER, lambda h: h.layers_length).read(r, header)
    pos, layers = r.pos, []
    for i, lh in enumerate(layer_headers):
        end = pos + lh.body_size
        if pos > len(data) or (end > len(data) and i != len(layer_headers) - 1):
            raise MalformedModel(f"layer {i}: body [{pos}, {end}) runs past the end of the file ({len(data)} bytes)")
        ltype = LayerType(lh.type) if lh.type in LayerType._value2member_map_ else lh.type
        raw = data[pos:end]
        if ltype in BODY_READERS:
            br = Reader(data, pos)
            try:
                body = BODY_READERS[ltype].read(br, header)
            except MalformedModel as e:
                raise MalformedModel(f"layer {i} ({ltype.name}): {e}") from None
            if ltype != LayerType.K210Conv and br.pos > end:
                raise MalformedModel(f"layer {i} ({ltype.name}): body needs {br.pos - pos} bytes, "
                                     f"body_size is {lh.body_size}")
        else:
            body = RawBody(raw)
        layers.append(V3Layer(ltype, body, lh.body_size, raw))
        pos = end
    # nncase seeks past the last body's padding without writing it (kmodel-v3.md §6)
    return KModelV3(header, outputs, layers, tail_padding=len(data) >= pos)


def write_v3(model: KModelV3) -> bytes:
    """Serialize a v3 model: header, outputs, layer headers, then each body padded to an absolute multiple of 8."""
    header = dataclasses.replace(model.header, layers_length=len(model.layers), output_count=len(model.outputs))
    body_start = V3_HEADER.size + V3_OUTPUT.size * len(model.outputs) + V3_LAYER_HEADER.size * len(model.layers)
    w = Writer()
    w.write(bytes(body_start))
    sizes, payload_end = [], body_start
    for layer in model.layers:
        start = w.pos
        layer.body.write(w, header)
        payload_end = w.pos
        w.align(8)
        sizes.append(w.pos - start)
    table = V3_HEADER.pack(header) + b"".join(V3_OUTPUT.pack(o) for o in model.outputs) + b"".join(
        V3_LAYER_HEADER.pack(V3_LAYER_HEADER.make(type=int(l.type), body_size=s)) for l, s in zip(model.layers, sizes))
    out = bytearray(w.getvalue())
    out[:body_start] = table
    return bytes(out if model.tail_padding else out[:payload_end])


# ---- describe ----------------------------------------------------------------------------------------------

class Region(NamedTuple):
    """A tensor a layer reads or writes: main memory (bytes) or KPU RAM (64-byte rows)."""
    mem: str
    address: int
    size: int
    dtype: str
    shape: tuple[int, ...]


def _main(address, dtype, *shape) -> Region:
    return Region("main", address, math.prod(shape) * (4 if dtype == "float32" else 1), dtype, tuple(shape))


def _kpu(row, c, h, w) -> Region:
    return Region("kpu", row, kpu_rows(c, h, w), "uint8", (c, h, w))


def layer_io(layer: V3Layer) -> tuple[list[Region], list[Region]]:
    """What a layer reads and writes (kmodel-v3.md §8), for `describe_v3` and the interpreter's checks."""
    t, b = layer.type, layer.body
    f32, u8 = "float32", "uint8"
    if t in (LayerType.Add, LayerType.QuantizedAdd):
        dt = f32 if t == LayerType.Add else u8
        return ([_main(b.main_mem_in_a_address, dt, b.count), _main(b.main_mem_in_b_address, dt, b.count)],
                [_main(b.main_mem_out_address, dt, b.count)])
    if t == LayerType.GlobalAveragePool2d:
        return [_main(b.main_mem_in_address, f32, b.channels, b.kernel_size)], [_main(b.main_mem_out_address, f32, b.channels)]
    if t in (LayerType.MaxPool2d, LayerType.AveragePool2d, LayerType.QuantizedMaxPool2d):
        dt = u8 if t == LayerType.QuantizedMaxPool2d else f32
        return ([_main(b.main_mem_in_address, dt, b.in_channels, b.in_height, b.in_width)],
                [_main(b.main_mem_out_address, dt, b.out_channels, b.out_height, b.out_width)])
    if t == LayerType.Quantize:
        return [_main(b.main_mem_in_address, f32, b.count)], [_main(b.mem_out_address, u8, b.count)]
    if t == LayerType.Dequantize:
        return [_main(b.main_mem_in_address, u8, b.count)], [_main(b.main_mem_out_address, f32, b.count)]
    if t == LayerType.Requantize:
        return [_main(b.main_mem_in_address, u8, b.count)], [_main(b.main_mem_out_address, u8, b.count)]
    if t in (LayerType.L2Normalization, LayerType.Softmax, LayerType.Logistic):
        return [_main(b.main_mem_in_address, f32, b.channels)], [_main(b.main_mem_out_address, f32, b.channels)]
    if t in (LayerType.Concatenation, LayerType.QuantizedConcatenation):
        dt = f32 if t == LayerType.Concatenation else u8
        ins = [Region("main", s, n, dt, ()) for s, n in b.inputs]
        return ins, [Region("main", b.main_mem_out_address, sum(n for _, n in b.inputs), dt, ())]
    if t == LayerType.FullyConnected:
        return ([_main(b.main_mem_in_address, f32, b.in_channels)], [_main(b.main_mem_out_address, f32, b.out_channels)])
    if t == LayerType.TensorflowFlatten:
        return ([_main(b.main_mem_in_address, f32, b.channels, b.height, b.width)],
                [_main(b.main_mem_out_address, f32, b.height * b.width * b.channels)])
    if t in (LayerType.ResizeNearestNeighbor, LayerType.QuantizedResizeNearestNeighbor):
        dt = f32 if t == LayerType.ResizeNearestNeighbor else u8
        return ([_main(b.main_mem_in_address, dt, b.in_channels, b.in_height, b.in_width)],
                [_main(b.main_mem_out_address, dt, b.in_channels, b.out_height, b.out_width)])
    if t == LayerType.ChannelwiseDequantize:
        return ([_main(b.main_mem_in_address, u8, b.channels, b.channel_size)],
                [_main(b.main_mem_out_address, f32, b.channels, b.channel_size)])
    if t == LayerType.K210Conv:
        a = b.args
        outs = [_kpu(a.image_dst_addr, *a.out_shape)]
        if b.flags & 1:
            outs.append(_main(b.main_mem_out_address, u8, *a.out_shape))
        return [_kpu(a.image_src_addr, *a.in_shape)], outs
    if t == LayerType.K210AddPadding:
        return [_main(b.main_mem_in_address, u8, b.channels)], [_kpu(b.kpu_mem_out_address, b.channels, 4, 4)]
    if t == LayerType.K210RemovePadding:
        return ([_main(b.main_mem_in_address, u8, b.channels, 4, 4)], [_main(b.main_mem_out_address, u8, b.channels)])
    if t == LayerType.K210Upload:
        return ([_main(b.main_mem_in_address, u8, b.channels, b.height, b.width)],
                [_kpu(b.kpu_mem_out_address, b.channels, b.height, b.width)])
    return [], []


def describe_v3(model: KModelV3) -> dict:
    """A JSON-friendly summary for `kpuc inspect`: header, outputs, layer table and memory map."""
    rows, main_end, kpu_lo, kpu_hi = [], 0, KPU_RAM_ROWS, 0
    for i, layer in enumerate(model.layers):
        ins, outs = layer_io(layer)
        for reg in ins + outs:
            if reg.mem == "main":
                main_end = max(main_end, reg.address + reg.size)
            else:
                kpu_lo, kpu_hi = min(kpu_lo, reg.address), max(kpu_hi, reg.address + reg.size)
        entry = {"index": i, "type": layer.type_name, "flags": layer.flags, "body_size": layer.body_size,
                 "inputs": [r._asdict() for r in ins], "outputs": [r._asdict() for r in outs]}
        if layer.type == LayerType.K210Conv:
            a = layer.body.args
            entry["kpu"] = {"kernel": a.kernel, "depthwise": a.depthwise, "pool_type": a.pool_type,
                            "in_shape": a.in_shape, "out_shape": a.out_shape, "weight_loads": a.load_time + 1}
        rows.append(entry)
    h = model.header
    return {
        "version": 3,
        "header": {f: getattr(h, f) for f in V3_HEADER.fields},
        "weights_bits": 8 if model.eight_bit else 16,
        "outputs": [{"address": o.address, "size": o.size} for o in model.outputs],
        "layers": rows,
        "memory": {
            "main_mem_usage": h.main_mem_usage, "main_bytes_touched": main_end,
            "kpu_max_start_address": h.max_start_address,
            "kpu_rows_reserved": KPU_RAM_ROWS - h.max_start_address,
            "kpu_rows_touched": [kpu_lo, kpu_hi] if kpu_hi else None,
        },
    }
