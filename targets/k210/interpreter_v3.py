"""Run a kmodel v3 file the way the K210 SDK's `kpu.c` does, with the bit-exact KPU simulator for K210Conv.

State: a main-memory buffer of `main_mem_usage` bytes and the 2 MiB KPU RAM. Layers run in table order
(`ai_step`); each CPU layer is one function below, registered in `RUN_V3`, following the SDK's C code
operation by operation in IEEE single precision (sums in the SDK's order via `np.add.accumulate`, which is
sequential, so results match the C code bit for bit wherever the libm functions do). The input goes where
`kpu_run_kmodel` puts it: into KPU RAM when layer 0 is a K210Conv (u8 C×H×W), into main memory when it is a
FullyConnected (f32). Outputs are the output table's byte ranges read as float32, as `kpu_get_output` hands
them out.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compiler.errors import KpucError, MalformedModel
from targets.k210 import kpu_layout
from targets.k210.kmodel_v3 import KModelV3, LayerType, V3Layer
from targets.k210.kmodel_v3_check import check_v3
from targets.k210.kpu import carry_shift, run_kpu_layer
from targets.k210.libm import expf

F32 = np.float32
FLT_MIN = np.finfo(np.float32).tiny
# QuantizedAdd and the KPU output DMA move whole 8-byte groups, writing up to 7 bytes past a tensor
# (kmodel-v3.md §9.1); the extra bytes give them room at the end of the buffer.
MAIN_SLACK = 8


class Machine:
    """Main memory and KPU RAM of one run."""

    def __init__(self, model: KModelV3):
        self.model = model
        self.main = np.zeros(model.header.main_mem_usage + MAIN_SLACK, np.uint8)
        self.kpu = np.zeros(kpu_layout.KPU_RAM_BYTES, np.uint8)

    def _span(self, address: int, nbytes: int) -> slice:
        if address < 0 or address + nbytes > len(self.main):
            raise MalformedModel(f"main-memory access [{address}, {address + nbytes}) is outside the "
                                 f"{self.model.header.main_mem_usage}-byte buffer")
        return slice(address, address + nbytes)

    def load(self, address: int, dtype, count: int) -> np.ndarray:
        """A copy of `count` items of `dtype` at byte `address`."""
        dt = np.dtype(dtype)
        return self.main[self._span(address, dt.itemsize * count)].copy().view(dt)

    def store(self, address: int, values: np.ndarray) -> None:
        raw = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
        self.main[self._span(address, raw.size)] = raw


RUN_V3: dict[LayerType, Callable[[Machine, object], None]] = {}


def runs(*types: LayerType):
    """Register a function as the runner of each layer type in `types`."""
    def register(fn):
        for t in types:
            RUN_V3[t] = fn
        return fn
    return register


def _seq_sum(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """f32 sum in index order, like a C loop `sum += x[i]` starting from 0 (accumulate is sequential)."""
    if x.shape[axis] == 0:
        return np.zeros(np.delete(x.shape, axis), F32)
    return np.take(np.add.accumulate(x.astype(F32), axis=axis, dtype=F32), -1, axis=axis)


def _activation(x: np.ndarray, act: int) -> np.ndarray:
    """The SDK's `kpu_float_activation`: 0 linear, 1 relu, 2 relu6."""
    if act == 1:
        return np.maximum(x, F32(0))
    if act == 2:
        return np.minimum(np.maximum(x, F32(0)), F32(6))
    return x


def _taps(h: int, w: int, b):
    """Yield (valid mask [oh, ow], in_y, in_x) for each kernel tap in (ky, kx) order, SDK pool windows."""
    oy = np.arange(b.out_height)[:, None] * b.stride_height - b.padding_height
    ox = np.arange(b.out_width)[None, :] * b.stride_width - b.padding_width
    for ky in range(b.kernel_height):
        for kx in range(b.kernel_width):
            iy, ix = oy + ky, ox + kx
            valid = (iy >= 0) & (iy < h) & (ix >= 0) & (ix < w)
            yield valid, np.clip(iy, 0, h - 1), np.clip(ix, 0, w - 1)


def _pool_input(m: Machine, b, dtype) -> np.ndarray:
    return m.load(b.main_mem_in_address, dtype, b.in_channels * b.in_height * b.in_width).reshape(
        b.in_channels, b.in_height, b.in_width)[:b.out_channels]


@runs(LayerType.Add)
def add(m: Machine, b) -> None:
    m.store(b.main_mem_out_address, m.load(b.main_mem_in_a_address, F32, b.count)
            + m.load(b.main_mem_in_b_address, F32, b.count))


@runs(LayerType.QuantizedAdd)
def quantized_add(m: Machine, b) -> None:
    # The SDK works on 8 elements per iteration: it reads and writes roundup(count, 8) bytes.
    n = -(-b.count // 8) * 8
    a = (m.load(b.main_mem_in_a_address, np.uint8, n).astype(np.int64) + b.in_a_offset) * b.in_a_mul
    c = (m.load(b.main_mem_in_b_address, np.uint8, n).astype(np.int64) + b.in_b_offset) * b.in_b_mul
    v = (a + c) >> b.in_a_shift if b.in_a_shift == b.in_b_shift else (a >> b.in_a_shift) + (c >> b.in_b_shift)
    v = carry_shift(v * b.out_mul, b.out_shift) + b.out_offset
    m.store(b.main_mem_out_address, np.clip(v, 0, 255).astype(np.uint8))


@runs(LayerType.GlobalAveragePool2d)
def global_average_pool2d(m: Machine, b) -> None:
    x = m.load(b.main_mem_in_address, F32, b.channels * b.kernel_size).reshape(b.channels, b.kernel_size)
    m.store(b.main_mem_out_address, _seq_sum(x, 1) / F32(b.kernel_size))


@runs(LayerType.QuantizedMaxPool2d)
def quantized_max_pool2d(m: Machine, b) -> None:
    x = _pool_input(m, b, np.uint8)
    out = np.zeros((b.out_channels, b.out_height, b.out_width), np.uint8)   # max starts from 0
    for valid, iy, ix in _taps(b.in_height, b.in_width, b):
        out = np.maximum(out, np.where(valid, x[:, iy, ix], 0).astype(np.uint8))
    m.store(b.main_mem_out_address, out)


@runs(LayerType.AveragePool2d)
def average_pool2d(m: Machine, b) -> None:
    # The SDK ignores `act` here (kmodel-v3.md §8.4).
    x = _pool_input(m, b, F32)
    total = np.zeros((b.out_channels, b.out_height, b.out_width), F32)
    count = np.zeros((b.out_height, b.out_width), F32)
    for valid, iy, ix in _taps(b.in_height, b.in_width, b):
        total = total + np.where(valid, x[:, iy, ix], F32(0))
        count = count + valid.astype(F32)
    m.store(b.main_mem_out_address, (total / count).astype(F32))


@runs(LayerType.MaxPool2d)
def max_pool2d(m: Machine, b) -> None:
    # No SDK handler exists (it asserts); kpuc runs it as max over the valid taps, then `act`.
    x = _pool_input(m, b, F32)
    out = np.full((b.out_channels, b.out_height, b.out_width), -np.inf, F32)
    for valid, iy, ix in _taps(b.in_height, b.in_width, b):
        out = np.maximum(out, np.where(valid, x[:, iy, ix], F32(-np.inf)))
    m.store(b.main_mem_out_address, _activation(out, b.act))


@runs(LayerType.Quantize)
def quantize(m: Machine, b) -> None:
    v = (m.load(b.main_mem_in_address, F32, b.count) - F32(b.bias)) * (F32(1) / F32(b.scale))
    v = np.nan_to_num(v.astype(np.float64))
    q = np.sign(v) * np.floor(np.abs(v) + 0.5)          # roundf: half away from zero
    m.store(b.mem_out_address, np.clip(q, 0, 255).astype(np.uint8))


@runs(LayerType.Dequantize)
def dequantize(m: Machine, b) -> None:
    m.store(b.main_mem_out_address, m.load(b.main_mem_in_address, np.uint8, b.count).astype(F32) * F32(b.scale)
            + F32(b.bias))


@runs(LayerType.ChannelwiseDequantize)
def channelwise_dequantize(m: Machine, b) -> None:
    x = m.load(b.main_mem_in_address, np.uint8, b.channels * b.channel_size).reshape(b.channels, b.channel_size)
    m.store(b.main_mem_out_address, x.astype(F32) * b.scale.astype(F32)[:, None] + b.bias.astype(F32)[:, None])


@runs(LayerType.Requantize)
def requantize(m: Machine, b) -> None:
    table = np.frombuffer(b.table, np.uint8)
    m.store(b.main_mem_out_address, table[m.load(b.main_mem_in_address, np.uint8, b.count)])


@runs(LayerType.L2Normalization)
def l2_normalization(m: Machine, b) -> None:
    x = m.load(b.main_mem_in_address, F32, b.channels)
    s = max(_seq_sum(x * x), F32(1e-10))
    m.store(b.main_mem_out_address, x * (F32(1) / np.sqrt(F32(s))))


@runs(LayerType.Softmax)
def softmax(m: Machine, b) -> None:
    x = m.load(b.main_mem_in_address, F32, b.channels)
    e = expf(x - np.fmax.reduce(x, initial=FLT_MIN))   # the SDK seeds fmaxf with FLT_MIN
    m.store(b.main_mem_out_address, e / _seq_sum(e))


@runs(LayerType.Logistic)
def logistic(m: Machine, b) -> None:
    x = m.load(b.main_mem_in_address, F32, b.channels)
    m.store(b.main_mem_out_address, F32(1) / (F32(1) + expf(-x)))


@runs(LayerType.Concatenation, LayerType.QuantizedConcatenation)
def concatenation(m: Machine, b) -> None:
    parts = [m.load(start, np.uint8, size) for start, size in b.inputs]
    if parts:
        m.store(b.main_mem_out_address, np.concatenate(parts))


@runs(LayerType.FullyConnected)
def fully_connected(m: Machine, b) -> None:
    x = m.load(b.main_mem_in_address, F32, b.in_channels)
    products = x[None, :] * b.weights.astype(F32)           # f32 products, summed in `ic` order like the SDK
    m.store(b.main_mem_out_address, _activation(_seq_sum(products, 1) + b.bias.astype(F32), b.act))


@runs(LayerType.TensorflowFlatten)
def tensorflow_flatten(m: Machine, b) -> None:
    x = m.load(b.main_mem_in_address, F32, b.channels * b.height * b.width).reshape(b.channels, b.height, b.width)
    m.store(b.main_mem_out_address, x.transpose(1, 2, 0))


def _resize_nearest_neighbor(m: Machine, b, dtype) -> None:
    x = m.load(b.main_mem_in_address, dtype, b.in_channels * b.in_height * b.in_width).reshape(
        b.in_channels, b.in_height, b.in_width)

    def source(out_len, in_len):   # min(floorf(o · ((float)in / out)), in - 1), in f32; align_corners ignored
        scale = F32(in_len) / F32(out_len)
        return np.minimum(np.floor(np.arange(out_len, dtype=F32) * scale), F32(in_len - 1)).astype(np.intp)

    m.store(b.main_mem_out_address, x[:, source(b.out_height, b.in_height)][:, :, source(b.out_width, b.in_width)])


@runs(LayerType.ResizeNearestNeighbor)
def resize_nearest_neighbor(m: Machine, b) -> None:
    _resize_nearest_neighbor(m, b, F32)


@runs(LayerType.QuantizedResizeNearestNeighbor)
def quantized_resize_nearest_neighbor(m: Machine, b) -> None:
    _resize_nearest_neighbor(m, b, np.uint8)


@runs(LayerType.K210Conv)
def k210_conv(m: Machine, b) -> None:
    a = b.args
    x = kpu_layout.download(m.kpu, a.image_src_addr, a.in_shape)
    y = run_kpu_layer(a, x, b.weights, b.bn, b.act)
    kpu_layout.upload(m.kpu, a.image_dst_addr, y)
    if b.flags & 1:   # KLF_MAIN_MEM_OUT: the DMA also delivers the dense C×H×W bytes to main memory
        m.store(b.main_mem_out_address, y)


@runs(LayerType.K210AddPadding)
def k210_add_padding(m: Machine, b) -> None:
    # Pixel (0,0) of each channel of a 4×4×C KPU map; the other 15 pixels keep whatever KPU RAM held.
    c = np.arange(b.channels)
    rows = kpu_layout.kpu_rows(b.channels, 4, 4)
    if b.kpu_mem_out_address + rows > kpu_layout.KPU_RAM_ROWS:
        raise MalformedModel(f"K210AddPadding writes past KPU RAM (row {b.kpu_mem_out_address} + {rows})")
    m.kpu[b.kpu_mem_out_address * 64 + (c // 4) * 256 + (c % 4) * 16] = m.load(b.main_mem_in_address, np.uint8, b.channels)


@runs(LayerType.K210RemovePadding)
def k210_remove_padding(m: Machine, b) -> None:
    m.store(b.main_mem_out_address, m.load(b.main_mem_in_address, np.uint8, 16 * b.channels)[::16])


@runs(LayerType.K210Upload)
def k210_upload(m: Machine, b) -> None:
    x = m.load(b.main_mem_in_address, np.uint8, b.channels * b.height * b.width).reshape(b.channels, b.height, b.width)
    kpu_layout.upload(m.kpu, b.kpu_mem_out_address, x)


def _feed_input(m: Machine, first: V3Layer, inputs: list[np.ndarray]) -> None:
    """Place the input where `kpu_run_kmodel` does (kmodel-v3.md §10)."""
    if len(inputs) != 1:
        raise KpucError(f"a kmodel v3 has exactly one input, got {len(inputs)}")
    x = np.asarray(inputs[0])
    if first.type == LayerType.K210Conv:
        shape = first.body.args.in_shape
        if x.dtype != np.uint8 or x.size != int(np.prod(shape)):
            raise KpucError(f"input must be uint8 C×H×W {shape} (layer 0 is a K210Conv), got {x.dtype} {x.shape}")
        kpu_layout.upload(m.kpu, first.body.args.image_src_addr, x.reshape(shape))
    elif first.type == LayerType.FullyConnected:
        n = first.body.in_channels
        if x.dtype != np.float32 or x.size != n:
            raise KpucError(f"input must be float32[{n}] (layer 0 is a FullyConnected), got {x.dtype} {x.shape}")
        m.store(first.body.main_mem_in_address, x.reshape(-1))
    else:
        raise KpucError(f"layer 0 is {first.type_name}; the SDK only starts a v3 model at a K210Conv or a "
                        "FullyConnected")


def run_v3(model: KModelV3, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Execute a v3 model; returns each output-table entry as a flat float32 array."""
    check_v3(model)   # every region inside the buffers before they are allocated
    m = Machine(model)
    _feed_input(m, model.layers[0], inputs)
    for i, layer in enumerate(model.layers):
        runner = RUN_V3.get(layer.type)
        if runner is None:
            raise KpucError(f"layer {i}: {layer.type_name} has no SDK runtime handler")
        try:
            runner(m, layer.body)
        except (KpucError, ValueError, IndexError) as e:
            error = MalformedModel if isinstance(e, (MalformedModel, ValueError, IndexError)) else KpucError
            raise error(f"layer {i} ({layer.type_name}): {e}") from e
    return [m.load(o.address, np.uint8, o.size)[:o.size // 4 * 4].view(np.float32).copy() for o in model.outputs]
