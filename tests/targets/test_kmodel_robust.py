"""Damaged kmodels fail with one KpucError naming the layer / node and the field, never a crash or a huge
allocation (issue "Every bad input"). One test per crash class, the damage made with the codec on a golden
or freshly written file, then a seeded mutation loop over small real files."""
import dataclasses
import tracemalloc

import numpy as np
import pytest

from compiler.errors import KpucError
from shared_data import GOLDEN, KMODELS, needs
from targets.k210 import kmodel_v4 as k4
from targets.k210.interpreter_v3 import run_v3
from targets.k210.interpreter_v4 import run_v4
from targets.k210.kmodel import describe_kmodel, kmodel_inputs, read_kmodel, run_kmodel
from targets.k210.kmodel_v3 import (
    FIXED_BODIES,
    V3_HEADER,
    V3_LAYER_HEADER,
    V3_OUTPUT,
    FullyConnectedBody,
    KModelV3,
    LayerType,
    V3Layer,
    read_v3,
    write_v3,
)

IRIS_V3 = GOLDEN / "iris-v3/iris.kmodel"
IRIS_V4 = GOLDEN / "iris-v4/iris.kmodel"
MASK_V4 = KMODELS / "sdk_mask_detect.v4.kmodel"
MNIST_V3 = KMODELS / "maixpy_mnist.v3.kmodel"
pytestmark = needs(IRIS_V3, IRIS_V4, MASK_V4, MNIST_V3)


def patch(data: bytes, offset: int, record, **changes) -> bytes:
    """`data` with the record at `offset` decoded, changed and encoded back (the damage goes through the codec)."""
    old = record.unpack(data, offset)
    new = old._replace(**changes) if hasattr(old, "_replace") else dataclasses.replace(old, **changes)
    packed = record.pack(new)
    return data[:offset] + packed + data[offset + len(packed):]


def refused(data: bytes, match: str) -> None:
    with pytest.raises(KpucError, match=match):
        read_kmodel(data)


# ---------------------------------------------------------------- v3: header, tables, regions, windows
def test_v3_zero_layers():  # the SDK's kpu_run_kmodel starts at layer 0
    refused(patch(IRIS_V3.read_bytes(), 0, V3_HEADER, layers_length=0), "no layers")


def test_v3_main_memory_beyond_any_k210():
    refused(patch(IRIS_V3.read_bytes(), 0, V3_HEADER, main_mem_usage=0xFFFFFFFF), "main_mem_usage is 4294967295")


def test_v3_counts_beyond_the_file():
    refused(patch(IRIS_V3.read_bytes(), 0, V3_HEADER, output_count=0x7FFFFFFF), "truncated file")
    refused(patch(IRIS_V3.read_bytes(), 0, V3_HEADER, layers_length=1 << 20), "truncated file")


def test_v3_body_size_beyond_the_file():
    data = IRIS_V3.read_bytes()
    first_layer = V3_HEADER.size + V3_OUTPUT.size * V3_HEADER.unpack(data).output_count
    refused(patch(data, first_layer, V3_LAYER_HEADER, body_size=0x7FFFFFFF),
            r"layer 0: body \[52, 2147483699\) runs past the end")


def test_v3_fully_connected_weights_beyond_the_file():
    data = IRIS_V3.read_bytes()
    h = V3_HEADER.unpack(data)
    start = V3_HEADER.size + V3_OUTPUT.size * h.output_count + V3_LAYER_HEADER.size * h.layers_length
    assert read_v3(data).layers[0].type == LayerType.FullyConnected
    refused(patch(data, start, FullyConnectedBody.HEAD, in_channels=1 << 30), "truncated file")


def _v3(layers, main_mem_usage=1024) -> bytes:
    header = V3_HEADER.make(version=3, flags=1, arch=0, max_start_address=32768, main_mem_usage=main_mem_usage)
    fc = FullyConnectedBody(0, 0, 16, 0, np.eye(4, dtype=np.float32), np.zeros(4, np.float32))
    layers = [V3Layer(LayerType.FullyConnected, fc)] + [V3Layer(t, FIXED_BODIES[t].make(**f)) for t, f in layers]
    return write_v3(KModelV3(header, [V3_OUTPUT.make(address=16, size=16)], layers))


def test_v3_region_outside_main_memory():
    data = _v3([(LayerType.Dequantize, dict(main_mem_in_address=0, main_mem_out_address=1000, count=16))])
    refused(data, r"layer 1 \(Dequantize\): output bytes 1000..1064 outside the 1024-byte main memory")


def test_v3_kpu_region_outside_kpu_ram():
    data = _v3([(LayerType.K210Upload, dict(main_mem_in_address=0, kpu_mem_out_address=32767, width=64, height=4,
                                            channels=1))])
    refused(data, r"layer 1 \(K210Upload\): output KPU rows 32767..32771 outside")


@pytest.mark.parametrize("field", ["stride_width", "kernel_height"])
def test_v3_pool_window_zero(field):
    pool = dict(main_mem_in_address=0, main_mem_out_address=64, in_width=2, in_height=2, in_channels=1, out_width=1,
                out_height=1, out_channels=1, kernel_width=2, kernel_height=2, stride_width=2, stride_height=2)
    refused(_v3([(LayerType.QuantizedMaxPool2d, {**pool, field: 0})]), f"QuantizedMaxPool2d.*{field} is 0")


def test_v3_interpreter_checks_too():
    model = read_v3(patch(IRIS_V3.read_bytes(), 0, V3_HEADER, main_mem_usage=0xFFFFFFFF))
    with pytest.raises(KpucError, match="main_mem_usage"):
        run_v3(model, [np.zeros(4, np.float32)])


# ---------------------------------------------------------------- v4: header, ranges, bodies
def test_v4_main_memory_beyond_any_k210():
    refused(patch(IRIS_V4.read_bytes(), 0, k4.HEADER, main_mem=0xFFFFFF00), "main_mem is 4294967040")


def test_v4_counts_beyond_the_file():
    refused(patch(IRIS_V4.read_bytes(), 0, k4.HEADER, nodes=0x7FFFFFFF), "truncated file")
    refused(patch(IRIS_V4.read_bytes(), 0, k4.HEADER, constants=0x7FFFFFFF), "truncated file")


def test_v4_zero_nodes_is_legal_but_zero_layers_v3_is_not():
    # kpuc compiles a bare reshape of the input to a v4 file without nodes (the output aliases the input)
    rng = k4.MemoryRange(k4.MEM_MAIN, k4.DT_FLOAT32, 0, 16)
    data = k4.write_v4(k4.KModelV4([rng], [(1, 1, 1, 4)], [rng], b"", 16, []))
    (out,) = run_kmodel(read_kmodel(data), [np.arange(4, dtype=np.float32)])
    np.testing.assert_array_equal(out, np.arange(4, dtype=np.float32))


@pytest.mark.parametrize("field,value,match", [
    ("datatype", 7, "input 0: datatype 7 is neither"),
    ("memory_type", 9, "input 0: memory type 9"),
    ("start", 0xFFFFFF00, r"input 0: range 4294967040\.\..* outside the main pool"),
])
def test_v4_input_range_damage(field, value, match):
    refused(patch(IRIS_V4.read_bytes(), k4.HEADER.size, k4.RANGE, **{field: value}), match)


def _v4(body, main_mem=4096) -> bytes:
    rng = k4.MemoryRange(k4.MEM_MAIN, k4.DT_FLOAT32, 0, 64)
    return k4.write_v4(k4.KModelV4([rng], [(1, 1, 4, 4)], [rng], b"", main_mem, [k4.Node(body.opcode, body)]))


R_IN = k4.MemoryRange(k4.MEM_MAIN, k4.DT_FLOAT32, 0, 64)
R_OUT = k4.MemoryRange(k4.MEM_MAIN, k4.DT_FLOAT32, 64, 64)
NO_PAD = k4.Padding(0, 0)


def _pool(**changes):
    b = k4.ReduceWindow2D(R_IN, R_OUT, 2, (1, 1, 4, 4), NO_PAD, NO_PAD, 2, 2, 2, 2, 1, 1, 0.0, k4.FULL_RANGE)
    return dataclasses.replace(b, **changes)


@pytest.mark.parametrize("body,match", [
    (k4.Transpose(R_IN, R_OUT, (1, 1, 4, 4), (0, 1, 2, 4)), r"node 0 \(transpose\): perm \(0, 1, 2, 4\)"),
    (k4.StridedSlice(R_IN, R_OUT, (1, 1, 4, 4), (0, 0, 0, 0), (1, 1, 4, 4), (1, 1, 0, 1), 0, 0, 0, 0, 0),
     r"node 0 \(strided_slice\): strides .* zero stride"),
    (_pool(stride_h=0), r"node 0 \(reduce_window2d\): stride_h is 0"),
    (_pool(filter_w=-3), r"node 0 \(reduce_window2d\): filter_w is -3"),
    (_pool(filter_h=4096, filter_w=4096), "more than 1048576 taps"),
    (_pool(reduce_op=11), r"reduce_op 11 is not one of"),
    (k4.Unary(R_IN, R_OUT, 42), r"node 0 \(unary\): unary_op 42"),
    (k4.Pad(R_IN, R_OUT, (1, 1, 4, 4), (NO_PAD, NO_PAD, k4.Padding(0, 1 << 30), NO_PAD), k4.Scalar(0, bytes(4))),
     r"node 0 \(pad\): output shape \(1, 1, 1073741828, 4\) has .* more than the 4096 bytes"),
    (k4.Binary(R_IN, R_IN, R_OUT, 0, (1, 0, 4, 4), (1, 1, 4, 4), (1, 1, 4, 4), k4.FULL_RANGE),
     r"node 0 \(binary\): in_a_shape \(1, 0, 4, 4\) has an extent below 1"),
    (k4.MemoryCopy(R_IN, k4.MemoryRange(k4.MEM_CONST, k4.DT_FLOAT32, 0, 64)), r"output: range 0..64 outside the const"),
])
def test_v4_node_damage(body, match):
    data = _v4(body)
    refused(data, match)
    with pytest.raises(KpucError, match=match):     # the interpreter refuses it on its own too
        run_v4(k4.read_v4(data), [np.zeros((1, 1, 4, 4), np.float32)])


def test_v4_conv_groups_zero_is_a_parse_error():
    conv = k4.Conv2D(R_IN, R_OUT, (1, 1, 4, 4), 1, 1, NO_PAD, NO_PAD, 1, 1, 1, 1, 1, 1, k4.FULL_RANGE,
                     np.ones(1, np.float32), np.zeros(1, np.float32))
    data = _v4(conv)
    groups_at = k4.read_v4(data).bodies_start() + 2 * k4.RANGE.size + k4.SHAPE.size   # input, output, in_shape
    assert k4.I32.unpack(data, groups_at) == 1
    refused(data[:groups_at] + k4.I32.pack(0) + data[groups_at + 4:], r"node 0 \(conv2d\): groups is 0")


def test_v4_kpu_batches_zero():
    model = k4.read_v4(MASK_V4.read_bytes())
    first = model.nodes[0]
    assert isinstance(first.body, k4.KpuConv2D)
    model.nodes[0] = k4.Node(first.opcode, dataclasses.replace(first.body, batches=0))
    refused(k4.write_v4(model), r"node 0 \(kpu_conv2d\)")


def test_kpu_output_shape_must_be_the_pooled_input():
    # checked before the convolution runs: a damaged width would otherwise cost seconds of KPU simulation first
    model = k4.read_v4(MASK_V4.read_bytes())
    first = model.nodes[0].body
    model.nodes[0] = k4.Node(model.nodes[0].opcode, dataclasses.replace(first, layer=first.layer.replace(
        i_row_wid=1023)))
    refused(k4.write_v4(model), r"node 0 \(kpu_conv2d\): KPU layer: input \(1, 32, 1024\) with pool type 0 gives")
    v3 = read_v3(MNIST_V3.read_bytes())
    conv = v3.layers[0].body
    v3.layers[0] = V3Layer(LayerType.K210Conv, dataclasses.replace(conv, args=conv.args.replace(pool_type=12)))
    refused(write_v3(v3), r"layer 0 \(K210Conv\): KPU pool_type 12 does not exist")


# ---------------------------------------------------------------- seeded mutations of real files
def _mutate(rng: np.random.Generator, data: bytes) -> bytes:
    """Flip bits or zero / max out a 32-bit word, mostly in the headers and tables at the front."""
    out = bytearray(data)
    for _ in range(rng.integers(1, 4)):
        front = min(len(out) - 4, 1024)
        at = int(rng.integers(0, front) if rng.random() < 0.8 else rng.integers(0, len(out) - 4))
        kind = rng.integers(0, 3)
        if kind == 0:
            out[at] ^= 1 << int(rng.integers(0, 8))
        else:
            out[at:at + 4] = (b"\x00" if kind == 1 else b"\xff") * 4
    return bytes(out)


def _exercise(data: bytes) -> None:
    k = read_kmodel(data)
    describe_kmodel(k)
    inputs = [np.zeros(shape, dtype) for shape, dtype in kmodel_inputs(k)]
    with np.errstate(all="ignore"):
        run_kmodel(k, inputs)


@pytest.mark.parametrize("path", [IRIS_V3, IRIS_V4, MASK_V4, MNIST_V3], ids=lambda p: p.name)
def test_mutated_files_raise_only_kpuc_errors(path):
    rng = np.random.default_rng(int.from_bytes(path.name.encode()[:4], "little"))
    golden = path.read_bytes()
    failures, refused_count = [], 0
    tracemalloc.start()
    try:
        for case in range(80):
            data = _mutate(rng, golden)
            tracemalloc.reset_peak()
            try:
                _exercise(data)
            except KpucError:
                refused_count += 1
            except Exception as e:  # noqa: BLE001  (the point of the test: anything else is a bug)
                failures.append(f"case {case}: {type(e).__name__}: {e}")
            peak = tracemalloc.get_traced_memory()[1]
            if peak > 256 << 20:
                failures.append(f"case {case}: peak allocation {peak >> 20} MiB")
    finally:
        tracemalloc.stop()
    assert not failures, "\n".join(failures[:10])
    assert refused_count > 0   # the mutations do reach the checks
