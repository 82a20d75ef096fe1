"""kmodel v4: reader/writer round trips on the real files, decoded facts from the spec, property round trips,
the interpreter against nncase's golden outputs (bit for bit) and per-op checks against literal ports of
nncase v0.2.0-beta4's C kernel loops."""
from __future__ import annotations

import dataclasses
import glob
import os
import struct

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from compiler.errors import KpucError, MalformedModel
from shared_data import SHARED, needs_shared, require
from targets.k210 import kmodel_v4 as k4
from targets.k210.interpreter_v4 import OPS, Memory, mul_and_carry_shift, run_nnil, run_v4
from targets.k210.kpu import ActTable, BatchNorm, KpuArgs

GOLDEN = f"{SHARED}/golden"
FILES = {
    "iris": f"{GOLDEN}/iris-v4/iris.kmodel",
    "yolo": f"{GOLDEN}/yolo20-v4/yolo.kmodel",
    "ulffd": f"{GOLDEN}/ulffd_landmark-v4/ulffd_landmark.kmodel",
    "mask": f"{SHARED}/kmodels/sdk_mask_detect.v4.kmodel",
}


def load(name: str) -> bytes:
    """The real file `name`; the calling test is skipped when the reference set lacks it."""
    require(FILES[name])
    with open(FILES[name], "rb") as f:
        return f.read()


# ---------------------------------------------------------------- reader / writer on real files
@pytest.mark.parametrize("name,tail_missing", [("iris", 0), ("yolo", 0), ("ulffd", 0), ("mask", 4)])
def test_real_files_round_trip(name, tail_missing):
    data = load(name)
    model = k4.read_v4(data)
    assert model.tail_missing == tail_missing  # sdk_mask_detect ends 4 bytes before its last body_size
    assert k4.write_v4(model) == data


def test_iris_decodes_as_the_spec_says():
    m = k4.read_v4(load("iris"))  # kmodel-v4.md §16.3
    assert (m.target, len(m.constants), m.main_mem, m.reserved0) == (1, 280, 216, 0x176)
    assert m.inputs == [k4.MemoryRange(k4.MEM_MAIN, k4.DT_FLOAT32, 0, 16)] and m.input_shapes == [(1, 1, 1, 4)]
    assert m.outputs == [k4.MemoryRange(k4.MEM_MAIN, k4.DT_FLOAT32, 40, 12)]
    assert [n.name for n in m.nodes] == ["transpose", "matmul", "transpose", "matmul"]
    t, mm = m.nodes[0].body, m.nodes[1].body
    assert (t.in_shape, t.perm) == ((1, 1, 10, 4), (0, 1, 3, 2))
    assert (mm.a_rows, mm.a_cols, mm.b_cols) == (1, 4, 10) and mm.fused_activation == (0.0, k4.FLT_MAX)
    assert abs(mm.bias[0] + 2.31938) < 1e-5


def test_yolo_kpu_layers_decode():
    data = load("yolo")
    m = k4.read_v4(data)
    assert [n.name for n in m.nodes] == ["kpu_conv2d"] * 16 + ["dequantize"]
    first, second = m.nodes[0].body, m.nodes[1].body
    # §10.2 worked example: body at 224, BN table at 512, activation at 768, 432 weight bytes at 1024.
    assert (first.layer.bwsx_base_addr, first.layer.active_addr, first.layer.para_start_addr) == (168, 128, 112)
    assert first.weights.shape == (16, 3, 3, 3) and len(m.nodes[0].raw) == 1232
    assert first.in_shape == (1, 3, 240, 320) and first.out_shape == (1, 16, 120, 160)
    # §16.2: pad_value = zp_in, arg_x = -zp_w, arg_w = -zp_in, arg_add = 9·zp_w·zp_in.
    a = second.layer
    assert (a.pad_value, a.arg_x, a.arg_w, a.arg_add) == (12, -130, -12, 14040)


def test_describe_histograms_and_memory():
    d = k4.describe_v4(k4.read_v4(load("ulffd")))  # §16.2
    assert d["ops"] == {"kpu_conv2d": 43, "dequantize": 15, "concat": 6, "quantize": 3, "quantized_binary": 3,
                        "kpu_upload": 10, "transpose": 9, "memory_copy": 9, "pad": 1}
    assert d["header"]["main_mem"] == 460800 and d["memory"]["main"]["used"] <= 460800
    assert d["memory"]["const"] == {"size": 24, "used": 17}  # three 1-byte constants at 0, 8, 16
    assert d["inputs"][0] == {"memory": "kpu", "dtype": "uint8", "start": 0, "size": 230400, "shape": [1, 3, 240, 320]}
    row = d["nodes"][48]
    assert (row["op"], row["in_shape"], row["out_shape"]) == ("pad", [1, 128, 15, 20], [1, 128, 16, 20])
    kpu = d["nodes"][0]
    assert kpu["kpu"] == {"filter": 3, "depthwise": False, "pool": "left_top_2_s2", "weights_bytes": 432}


def test_refuses_other_files():
    with pytest.raises(MalformedModel, match="not a kmodel v4"):
        k4.read_v4(b"\x03\x00\x00\x00" + bytes(60))
    with pytest.raises(MalformedModel):
        k4.read_v4(load("iris")[:500])  # cut inside the bodies


# ---------------------------------------------------------------- property round trips
def model_of(*bodies, constants=b"", main_mem=4096) -> k4.KModelV4:
    return k4.KModelV4([], [], [], constants, main_mem, [k4.Node(b.opcode, b) for b in bodies])


def same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return struct.pack("<f", a) == struct.pack("<f", b)
    return a == b


u32 = st.integers(0, 2**32 - 1)
i32 = st.integers(-2**31, 2**31 - 1)
f32 = st.floats(width=32, allow_nan=False)
ranges = st.builds(k4.MemoryRange, st.integers(0, 2), st.integers(0, 1), u32, u32)
shapes = st.tuples(*[st.integers(1, 4)] * 4)


def f32_arrays(n):
    return st.lists(f32, min_size=n, max_size=n).map(lambda v: np.array(v, np.float32))



@st.composite
def conv2d_bodies(draw):
    groups, oc_per, ic_per, fh, fw = (draw(st.integers(1, 3)) for _ in range(5))
    shape = (1, groups * ic_per, draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    n_w = groups * oc_per * ic_per * fh * fw
    return k4.Conv2D(draw(ranges), draw(ranges), shape, groups, groups * oc_per,
                     k4.Padding(draw(i32), draw(i32)), k4.Padding(draw(i32), draw(i32)), fh, fw,
                     draw(i32), draw(i32), draw(i32), draw(i32), k4.ValueRange(draw(f32), draw(f32)),
                     draw(f32_arrays(n_w)), draw(f32_arrays(groups * oc_per)))


@st.composite
def kpu_bodies(draw):
    words = draw(st.lists(st.integers(0, 2**64 - 1), min_size=12, max_size=12))
    args = KpuArgs.from_words(words).replace(kernel_type=draw(st.integers(0, 1)), i_ch_num=draw(st.integers(0, 5)),
                                             o_ch_num=draw(st.integers(0, 5)))
    bn = BatchNorm.from_words(np.array(draw(st.lists(st.integers(0, 2**64 - 1), min_size=args.o_ch_num + 1,
                                                     max_size=args.o_ch_num + 1)), np.uint64))
    act = ActTable.from_words(np.array(draw(st.lists(st.integers(0, 2**64 - 1), min_size=18, max_size=18)), np.uint64))
    w = np.array(draw(st.lists(st.integers(0, 255), min_size=int(np.prod(args.weights_shape)),
                               max_size=int(np.prod(args.weights_shape)))), np.uint8).reshape(args.weights_shape)
    return k4.KpuConv2D(draw(ranges), draw(i32), draw(u32), args, bn, act, w)


bodies = st.one_of(
    st.builds(k4.Binary, ranges, ranges, ranges, st.integers(0, 5), shapes, shapes, shapes,
              st.builds(k4.ValueRange, f32, f32)),
    st.integers(1, 4).flatmap(lambda n: st.builds(
        k4.Concat, ranges, u32, u32, st.just(n), st.lists(ranges, min_size=n, max_size=n).map(tuple),
        st.lists(i32, min_size=n, max_size=n).map(lambda v: np.array(v, np.int32)))),
    st.builds(k4.Pad, ranges, ranges, shapes, st.tuples(*[st.builds(k4.Padding, i32, i32)] * 4),
              st.builds(k4.Scalar, u32, st.binary(min_size=4, max_size=4))),
    st.builds(k4.ResizeImage, ranges, ranges, shapes, i32, i32, st.integers(0, 1), st.booleans()),
    st.builds(k4.Softmax, ranges, ranges, i32, i32, f32),
    st.builds(k4.NnilUnaryMethod, ranges, ranges, st.binary(max_size=30).map(lambda p: p + bytes(-len(p) % 8))),
    conv2d_bodies(), kpu_bodies(),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(bodies, min_size=1, max_size=4), st.binary(max_size=40))
def test_write_then_read_gives_the_same_bodies(body_list, constants):
    constants += bytes(-len(constants) % 8)
    model = model_of(*body_list, constants=constants)
    data = k4.write_v4(model)
    back = k4.read_v4(data)
    assert back.constants == constants and k4.write_v4(back) == data
    for a, b in zip(model.nodes, back.nodes):
        if isinstance(a.body, k4.KpuConv2D):  # the three table skips are recomputed by the writer
            assert b.body.layer == a.body.layer.replace(bwsx_base_addr=b.body.layer.bwsx_base_addr,
                                                        active_addr=b.body.layer.active_addr,
                                                        para_start_addr=b.body.layer.para_start_addr)
            assert same((a.body.main_mem_output, a.body.batches, a.body.reserved0, a.body.weights),
                        (b.body.main_mem_output, b.body.batches, b.body.reserved0, b.body.weights))
            assert np.array_equal(a.body.batch_norm.to_words(), b.body.batch_norm.to_words())
            assert np.array_equal(a.body.activation.to_words(), b.body.activation.to_words())
        else:
            assert same(a.body, b.body)


def test_kpu_tables_land_on_256_byte_boundaries():
    data = load("ulffd")
    model = k4.read_v4(data)
    pos = model.bodies_start()
    for n in model.nodes:
        if isinstance(n.body, k4.KpuConv2D):
            a = n.body.layer
            bn_at = pos + 120 + a.bwsx_base_addr
            act_at = bn_at + 8 * (a.o_ch_num + 1) + a.active_addr
            w_at = act_at + 144 + a.para_start_addr
            assert bn_at % 256 == act_at % 256 == w_at % 256 == 0
        pos += len(n.raw)


# ---------------------------------------------------------------- golden outputs (bit for bit)
def golden_outputs(folder: str, stem: str) -> list[np.ndarray]:
    return [np.fromfile(p, np.float32) for p in sorted(glob.glob(f"{GOLDEN}/{folder}/expected/{stem}.out*.bin"))]


@pytest.mark.slow
@pytest.mark.parametrize("folder,name", [("yolo20-v4", "yolo"), ("ulffd_landmark-v4", "ulffd")])
def test_golden_dog_bit_exact(folder, name):
    require(f"{GOLDEN}/{folder}/inputs/dog_rgb_chw_320x240.u8", f"{GOLDEN}/{folder}/expected")
    image = np.fromfile(f"{GOLDEN}/{folder}/inputs/dog_rgb_chw_320x240.u8", np.uint8).reshape(1, 3, 240, 320)
    got = run_v4(k4.read_v4(load(name)), [image])
    want = golden_outputs(folder, "dog")
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@needs_shared("golden/iris-v4/inputs", "golden/iris-v4/expected")
def test_golden_iris():
    model = k4.read_v4(load("iris"))
    for path in sorted(glob.glob(f"{GOLDEN}/iris-v4/inputs/*.f32")):
        (got,) = run_v4(model, [np.fromfile(path, np.float32)])
        (want,) = golden_outputs("iris-v4", os.path.basename(path)[len("iris_"):-len(".f32")])
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_mask_detect_runs_deterministically():
    model = k4.read_v4(load("mask"))
    x = np.random.default_rng(0).integers(0, 256, (1, 1, 32, 32), dtype=np.uint8)
    (a,), (b,) = run_v4(model, [x]), run_v4(model, [x])
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3,) and np.all((a >= 0) & (a <= 1)) and abs(float(a.sum()) - 1) < 1e-5  # a softmax
    with pytest.raises(KpucError, match="needs 1024"):
        run_v4(model, [x[..., :16]])


# ---------------------------------------------------------------- single ops vs nncase's kernel loops
F32 = np.float32
RNG = np.random.default_rng(0)


def R(start: int, size: int, dt: int = k4.DT_FLOAT32, mem: int = k4.MEM_MAIN) -> k4.MemoryRange:
    return k4.MemoryRange(mem, dt, start, size)


def run_op(body, init=(), constants=b"", main_mem=8192) -> Memory:
    """Round-trip one body through the writer and reader, then run it on fresh pools seeded with `init`."""
    model = k4.read_v4(k4.write_v4(model_of(body, constants=constants, main_mem=main_mem)))
    mem = Memory(model)
    for start, arr in init:
        mem.put(R(start, 0), np.ascontiguousarray(arr))
    OPS[model.nodes[0].opcode](model.nodes[0].body, mem)
    return mem


def out_size(in_size, k, s, d, pad):
    return (in_size + pad[0] + pad[1] - ((k - 1) * d + 1) + s) // s


def ref_conv(x, w, bias, groups, pads, strides, dils, act=(-k4.FLT_MAX, k4.FLT_MAX), taps_first=False,
             quant=None):
    """Literal port of neutral::conv2d / quantized_conv2d (and cpu::conv2d's tap order when taps_first)."""
    n, c, h, wd = x.shape
    oc, gic, kh, kw = w.shape
    goc = oc // groups
    oh, ow = (out_size(h, kh, strides[0], dils[0], pads[0]), out_size(wd, kw, strides[1], dils[1], pads[1]))
    taps = [(ic, ky, kx) for ky in range(kh) for kx in range(kw) for ic in range(gic)] if taps_first else \
        [(ic, ky, kx) for ic in range(gic) for ky in range(kh) for kx in range(kw)]
    out = np.zeros((n, oc, oh, ow), np.uint8 if quant else F32)
    for b, o, oy, ox in np.ndindex(n, oc, oh, ow):
        g = o // goc
        v = int(bias[o]) if quant else F32(bias[o])
        for ic, ky, kx in taps:
            iy, ix = oy * strides[0] - pads[0][0] + ky * dils[0], ox * strides[1] - pads[1][0] + kx * dils[1]
            if 0 <= iy < h and 0 <= ix < wd:
                xv, wv = x[b, g * gic + ic, iy, ix], w[o, ic, ky, kx]
                v = v + (int(xv) + quant[0]) * (int(wv) + quant[1]) if quant else F32(v + xv * wv)
        if quant:
            t, s = v * quant[2], quant[3]
            t = (t + (1 << (s - 1))) >> s if s else t
            out[b, o, oy, ox] = min(max(np.int64(t).astype(np.int32) + quant[4], 0), 255)
        else:
            out[b, o, oy, ox] = act[0] if v < act[0] else act[1] if act[1] < v else v
    return out


CONV_CASES = [  # groups, oc, ic, (kh, kw), strides, dilations, pads
    (1, 3, 2, (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1))),
    (2, 4, 4, (3, 2), (2, 1), (1, 2), ((1, 2), (0, 1))),
    (3, 3, 3, (3, 3), (2, 2), (2, 1), ((2, 0), (1, 1))),  # depthwise
    (1, 2, 3, (1, 1), (1, 1), (1, 1), ((0, 0), (0, 0))),
]


@pytest.mark.parametrize("groups,oc,ic,k,strides,dils,pads", CONV_CASES)
def test_conv2d_matches_kernel_loops(groups, oc, ic, k, strides, dils, pads):
    x = RNG.standard_normal((1, ic, 5, 6)).astype(F32)
    w = RNG.standard_normal((oc, ic // groups, *k)).astype(F32)
    bias = RNG.standard_normal(oc).astype(F32)
    act = (-0.5, 1.0)
    want = ref_conv(x, w, bias, groups, pads, strides, dils, act)
    body = k4.Conv2D(R(0, x.nbytes), R(1024, want.nbytes), x.shape, groups, oc, k4.Padding(*pads[0]),
                     k4.Padding(*pads[1]), *k, *strides, *dils, k4.ValueRange(*act), w.reshape(-1), bias)
    np.testing.assert_array_equal(run_op(body, [(0, x)]).get(body.output, shape=want.shape), want)

    xq = RNG.integers(0, 256, x.shape, dtype=np.uint8)
    wq = RNG.integers(0, 256, w.shape, dtype=np.uint8)
    bq = RNG.integers(-5000, 5000, oc).astype(np.int32)
    quant = (-120, -131, 1_500_000_000, 38, 100)  # input_offset, filter_offset, output_mul, output_shift, output_offset
    want = ref_conv(xq, wq, bq, groups, pads, strides, dils, quant=quant)
    body = k4.QuantizedConv2D(R(0, xq.nbytes, 1), R(1024, want.nbytes, 1), x.shape, groups, oc, k4.Padding(*pads[0]),
                              k4.Padding(*pads[1]), *k, *strides, *dils, *quant, bq, wq.reshape(-1))
    np.testing.assert_array_equal(run_op(body, [(0, xq)]).get(body.output, shape=want.shape), want)


def test_cpu_convs_are_nhwc_with_tap_major_order():
    x = RNG.standard_normal((1, 4, 5, 3)).astype(F32)  # NHWC
    w = RNG.standard_normal((2, 3, 3, 3)).astype(F32)  # [oc][kh][kw][ic]
    bias = RNG.standard_normal(2).astype(F32)
    pads, strides, dils = ((1, 0), (1, 1)), (1, 2), (1, 1)
    want = ref_conv(x.transpose(0, 3, 1, 2), w.transpose(0, 3, 1, 2), bias, 1, pads, strides, dils,
                    taps_first=True).transpose(0, 2, 3, 1)
    body = k4.CpuConv2D(R(0, x.nbytes), R(1024, want.nbytes), x.shape, 2, k4.Padding(*pads[0]),
                        k4.Padding(*pads[1]), 3, 3, *strides, *dils, k4.FULL_RANGE, w.reshape(-1), bias)
    np.testing.assert_array_equal(run_op(body, [(0, x)]).get(body.output, shape=want.shape), want)

    xq = RNG.integers(0, 256, (1, 4, 5, 3), dtype=np.uint8)
    wq = RNG.integers(0, 256, (3, 3, 3), dtype=np.uint8)  # depthwise [c][kh][kw]
    bq = RNG.integers(-500, 500, 3).astype(np.int32)
    # cpu_quantized_* subtract the offsets: pass the negated offsets to the (adding) reference.
    want = ref_conv(xq.transpose(0, 3, 1, 2), wq[:, None], bq, 3, pads, strides, dils,
                    quant=(-120, -131, 1 << 30, 36, 7)).transpose(0, 2, 3, 1)
    body = k4.CpuQuantizedDepthwiseConv2D(R(0, xq.nbytes, 1), R(1024, want.nbytes, 1), xq.shape,
                                          k4.Padding(*pads[0]), k4.Padding(*pads[1]), 3, 3, *strides, *dils,
                                          120, 131, 1 << 30, 36, 7, wq.reshape(-1), bq)
    np.testing.assert_array_equal(run_op(body, [(0, xq)]).get(body.output, shape=want.shape), want)


def test_cpu_float_depthwise_quantized_conv_and_pool():
    x = RNG.standard_normal((1, 4, 5, 3)).astype(F32)  # NHWC
    w = RNG.standard_normal((3, 2, 3)).astype(F32)  # [c][kh][kw]
    bias = RNG.standard_normal(3).astype(F32)
    pads, strides, dils = ((0, 1), (1, 1)), (2, 1), (1, 1)
    want = ref_conv(x.transpose(0, 3, 1, 2), w[:, None], bias, 3, pads, strides, dils,
                    taps_first=True).transpose(0, 2, 3, 1)
    body = k4.CpuDepthwiseConv2D(R(0, x.nbytes), R(1024, want.nbytes), x.shape, k4.Padding(*pads[0]),
                                 k4.Padding(*pads[1]), 2, 3, *strides, *dils, k4.FULL_RANGE, w.reshape(-1), bias)
    np.testing.assert_array_equal(run_op(body, [(0, x)]).get(body.output, shape=want.shape), want)

    xq = RNG.integers(0, 256, (1, 4, 5, 3), dtype=np.uint8)
    wq = RNG.integers(0, 256, (2, 2, 3, 3), dtype=np.uint8)  # [oc][kh][kw][ic]
    bq = RNG.integers(-500, 500, 2).astype(np.int32)
    want = ref_conv(xq.transpose(0, 3, 1, 2), wq.transpose(0, 3, 1, 2), bq, 1, pads, strides, dils,
                    quant=(-3, -200, 1 << 29, 35, 40)).transpose(0, 2, 3, 1)
    body = k4.CpuQuantizedConv2D(R(0, xq.nbytes, 1), R(1024, want.nbytes, 1), xq.shape, 2, k4.Padding(*pads[0]),
                                 k4.Padding(*pads[1]), 2, 3, *strides, *dils, 3, 200, 1 << 29, 35, 40,
                                 wq.reshape(-1), bq)
    np.testing.assert_array_equal(run_op(body, [(0, xq)]).get(body.output, shape=want.shape), want)

    nchw = k4.ReduceWindow2D(R(0, x.nbytes), R(1024, 0), 0, (1, 3, 4, 5), k4.Padding(1, 1), k4.Padding(0, 1),
                             3, 2, 2, 2, 1, 1, 0.0, k4.FULL_RANGE)
    want = run_op(nchw, [(0, np.ascontiguousarray(x.transpose(0, 3, 1, 2)))]).get(R(1024, 4 * 3 * 2 * 3), F32)
    nhwc = k4.CpuReduceWindow2D(*(getattr(nchw, f.name) for f in dataclasses.fields(nchw)))
    nhwc.in_shape = x.shape
    got = run_op(nhwc, [(0, x)]).get(R(1024, 4 * 3 * 2 * 3), F32).reshape(1, 2, 3, 3)
    np.testing.assert_array_equal(got, want.reshape(1, 3, 2, 3).transpose(0, 2, 3, 1))


def test_unknown_opcode_round_trips_but_does_not_run():
    model = model_of(k4.RawBody(0x99, b"\x01" * 12))
    data = k4.write_v4(model)
    back = k4.read_v4(data)
    assert isinstance(back.nodes[0].body, k4.RawBody) and k4.write_v4(back) == data
    with pytest.raises(KpucError, match="unknown opcode 0x99"):
        run_v4(back, [])


def test_conv2d_transpose_scatters_in_kernel_order_and_ignores_bias():
    x = RNG.standard_normal((1, 2, 3, 4)).astype(F32)
    w = RNG.standard_normal((2, 2, 3, 3)).astype(F32)
    out_shape, (sh, sw), (ph, pw) = (1, 2, 7, 8), (2, 2), (1, 0)
    want = np.zeros(out_shape, F32)
    for ic, iy, ix, oc, ky, kx in np.ndindex(2, 3, 4, 2, 3, 3):  # the kernel's loop nest
        oy, ox = iy * sh - ph + ky, ix * sw - pw + kx
        if 0 <= oy < 7 and 0 <= ox < 8:
            want[0, oc, oy, ox] = F32(want[0, oc, oy, ox] + x[0, ic, iy, ix] * w[oc, ic, ky, kx])
    body = k4.Conv2DTranspose(R(0, x.nbytes), R(1024, want.nbytes), x.shape, out_shape, 1, k4.Padding(ph, 1),
                              k4.Padding(pw, 1), 3, 3, sh, sw, 1, 1, k4.FULL_RANGE, w.reshape(-1),
                              np.full(2, 100, F32))
    np.testing.assert_array_equal(run_op(body, [(0, x)]).get(body.output, shape=out_shape), want)


@pytest.mark.parametrize("reduce_op", [0, 1, 2, 3])
def test_reduce_window2d_skips_padding_taps(reduce_op):
    x = RNG.standard_normal((1, 2, 5, 6)).astype(F32)
    init = {0: 0.0, 1: k4.FLT_MAX, 2: -k4.FLT_MAX, 3: 0.0}[reduce_op]
    pads, k, s = ((1, 1), (0, 1)), (3, 2), (2, 2)
    oh, ow = out_size(5, 3, 2, 1, pads[0]), out_size(6, 2, 2, 1, pads[1])
    want = np.zeros((1, 2, oh, ow), F32)
    for c, oy, ox in np.ndindex(2, oh, ow):
        v, n = F32(init), 0
        for ky, kx in np.ndindex(*k):
            iy, ix = oy * s[0] - pads[0][0] + ky, ox * s[1] - pads[1][0] + kx
            if 0 <= iy < 5 and 0 <= ix < 6:
                t = x[0, c, iy, ix]
                v = {0: F32(v + t), 3: F32(v + t), 1: min(v, t), 2: max(v, t)}[reduce_op]
                n += 1
        want[0, c, oy, ox] = min(max(F32(v / F32(n)) if reduce_op == 0 else v, F32(-1)), F32(1))
    body = k4.ReduceWindow2D(R(0, x.nbytes), R(1024, want.nbytes), reduce_op, x.shape, k4.Padding(*pads[0]),
                             k4.Padding(*pads[1]), *k, *s, 1, 1, init, k4.ValueRange(-1.0, 1.0))
    np.testing.assert_array_equal(run_op(body, [(0, x)]).get(body.output, shape=want.shape), want)


def test_matmuls():
    a, b = RNG.standard_normal((3, 5)).astype(F32), RNG.standard_normal((5, 4)).astype(F32)
    bias = RNG.standard_normal(4).astype(F32)
    want = np.empty((3, 4), F32)
    for r, c in np.ndindex(3, 4):
        v = bias[c]
        for i in range(5):
            v = F32(v + a[r, i] * b[i, c])
        want[r, c] = max(v, F32(0))
    body = k4.MatMul(R(0, a.nbytes), R(256, b.nbytes), R(512, 48), 3, 5, 4, k4.ValueRange(0.0, k4.FLT_MAX), bias)
    np.testing.assert_array_equal(run_op(body, [(0, a), (256, b)]).get(body.output, shape=(3, 4)), want)

    aq, bq = RNG.integers(0, 256, (3, 5), dtype=np.uint8), RNG.integers(0, 256, (5, 4), dtype=np.uint8)
    biq = RNG.integers(-1000, 1000, 4).astype(np.int32)
    acc = (aq.astype(np.int64) - 128) @ (bq.astype(np.int64) - 100) + biq
    want = np.clip(((acc * 1_000_000_000 + (1 << 39)) >> 40) + 128, 0, 255).astype(np.uint8)
    body = k4.QuantizedMatMul(R(0, 15, 1), R(256, 20, 1), R(512, 12, 1), 3, 5, 4, -128, -100, 1_000_000_000, 40,
                              128, biq)
    np.testing.assert_array_equal(run_op(body, [(0, aq), (256, bq)]).get(body.output, shape=(3, 4)), want)


def test_mul_and_carry_shift_hand_worked():
    # round half toward +inf, i32 wrap of the result, shift taken as uint8 (beta4's 64-bit rounding constant)
    assert mul_and_carry_shift(np.array([100, -5, 7, 2**31 - 1]), 3, 1).tolist() == [150, -7, 11, -1073741825]
    assert mul_and_carry_shift(np.array([-5]), 1, 1).tolist() == [-2]
    assert mul_and_carry_shift(np.array([7]), 1 << 30, 32).tolist() == [2]
    assert mul_and_carry_shift(np.array([2**31 - 1]), 2**31 - 1, 0).tolist() == [1]
    assert mul_and_carry_shift(np.array([3]), 1, 256 + 1).tolist() == [2]


def test_binary_broadcast_rule_and_min_max():
    a = RNG.standard_normal((1, 2, 3, 4)).astype(F32)
    b = RNG.standard_normal((1, 2, 2, 1)).astype(F32)  # extent 2 < 3: row 2 reads row 0 (not numpy broadcasting)
    bb = b[:, :, [0, 1, 0]][..., [0, 0, 0, 0]]
    for op_code, fn in [(0, np.add), (3, np.divide), (4, np.minimum), (5, np.maximum)]:
        body = k4.Binary(R(0, a.nbytes), R(256, b.nbytes), R(512, a.nbytes), op_code, a.shape, b.shape, a.shape,
                         k4.FULL_RANGE)
        np.testing.assert_array_equal(run_op(body, [(0, a), (256, b)]).get(body.output, shape=a.shape), fn(a, bb))


def test_quantize_and_dequantize():
    x = np.array([0.25, 1.25, 2.25, -0.75, 254.25, 300, -3, 0.2], F32)
    body = k4.Quantize(R(0, x.nbytes), R(64, 8, 1), k4.QuantParam(10, 2.0))
    # x·2 + 10 = 10.5, 12.5, 14.5, 8.5, 518.5, 610, 4, 10.4: roundf goes half away from zero.
    assert run_op(body, [(0, x)]).get(body.output).tolist() == [11, 13, 15, 9, 255, 255, 4, 10]
    q = np.array([0, 10, 255], np.uint8)
    body = k4.Dequantize(R(0, 3, 1), R(64, 12), k4.QuantParam(10, 4.0))
    np.testing.assert_array_equal(run_op(body, [(0, q)]).get(body.output), np.array([-2.5, 0, 61.25], F32))


def test_quantized_binary_hand_worked():
    a = np.array([2, 30], np.uint8)
    const = np.array([3], np.uint8).tobytes() + bytes(7)
    # a' = a - 10; b' = mcs(b, 2, 1) = b; div: (a' + b'/2) / b' in C: (-8 + 1) / 3 = -2, (20 + 1) / 3 = 7
    body = k4.QuantizedBinary(R(0, 2, 1), R(0, 1, 1, k4.MEM_CONST), R(64, 2, 1), 3, (1, 1, 1, 2), (1, 1, 1, 1),
                              (1, 1, 1, 2), -10, 1, 0, 0, 2, 1, 10, 1, 0)
    assert run_op(body, [(0, a)], constants=const).get(body.output).tolist() == [8, 17]


def test_data_movement_ops():
    x = np.arange(6, dtype=np.uint8).reshape(1, 1, 2, 3)
    pads = (k4.Padding(0, 0), k4.Padding(0, 0), k4.Padding(1, -1), k4.Padding(-1, 2))  # negative = crop
    body = k4.Pad(R(0, 6, 1), R(64, 8, 1), x.shape, pads, k4.Scalar(0, b"\x07\x00\x00\x00"))
    assert run_op(body, [(0, x)]).get(body.output).reshape(2, 4).tolist() == [[7, 7, 7, 7], [1, 2, 7, 7]]

    x = np.arange(5, dtype=F32).reshape(1, 1, 1, 5)
    body = k4.StridedSlice(R(0, 20), R(64, 8), x.shape, (0, 0, 0, 3), (1, 1, 1, -1), (1, 1, 1, -2), 0, 0, 0, 0, 0)
    assert run_op(body, [(0, x)]).get(body.output).tolist() == [3.0, 1.0]

    x = np.arange(24, dtype=np.uint8).reshape(1, 2, 3, 4)
    body = k4.Transpose(R(0, 24, 1), R(64, 24, 1), x.shape, (0, 2, 3, 1))
    np.testing.assert_array_equal(run_op(body, [(0, x)]).get(body.output, shape=(1, 3, 4, 2)), x.transpose(0, 2, 3, 1))

    a, b = np.arange(8, dtype=F32).reshape(2, 4), np.arange(10, 14, dtype=F32).reshape(2, 2)
    body = k4.Concat(R(64, 48), 8, 2, 2, (R(0, 32), R(32, 16)), np.array([2, 1], np.int32))
    want = np.concatenate([a, b], axis=1)
    np.testing.assert_array_equal(run_op(body, [(0, a), (32, b)]).get(body.output, shape=(2, 6)), want)

    body = k4.MemoryCopy(R(0, 6, 1), R(64, 6, 1))  # copies floor(6/4) words: the last 2 bytes stay put
    mem = run_op(body, [(0, np.arange(1, 7, dtype=np.uint8)), (64, np.full(6, 9, np.uint8))])
    assert mem.get(body.output).tolist() == [1, 2, 3, 4, 9, 9]

    table = np.arange(256, dtype=np.uint8)[::-1].tobytes()
    body = k4.TableLookup1D(R(0, 3, 1), R(0, 256, 1, k4.MEM_CONST), R(64, 3, 1))
    got = run_op(body, [(0, np.array([0, 5, 255], np.uint8))], constants=table).get(body.output)
    assert got.tolist() == [255, 250, 0]


@pytest.mark.parametrize("reduce_op", [0, 1, 2, 3])
def test_reduce_accumulates_in_nchw_order(reduce_op):
    x = (RNG.standard_normal((1, 3, 4, 5)) * 1000).astype(F32)
    init = {0: 0.0, 1: k4.FLT_MAX, 2: -k4.FLT_MAX, 3: 0.0}[reduce_op]
    want = np.full((1, 3, 1, 1), F32(init), F32)
    for c, y, xx in np.ndindex(3, 4, 5):
        t = x[0, c, y, xx]
        want[0, c, 0, 0] = {0: F32(want[0, c, 0, 0] + t), 3: F32(want[0, c, 0, 0] + t),
                            1: min(want[0, c, 0, 0], t), 2: max(want[0, c, 0, 0], t)}[reduce_op]
    if reduce_op == 0:
        want *= F32(3) / F32(60)
    body = k4.Reduce(R(0, x.nbytes), R(512, 12), reduce_op, x.shape, (1, 3, 1, 1), init)
    np.testing.assert_array_equal(run_op(body, [(0, x)]).get(body.output, shape=want.shape), want)


@pytest.mark.parametrize("mode,align,dtype",
                         [(0, False, F32), (0, True, F32), (0, False, np.uint8), (1, False, np.uint8)])
def test_resize_image(mode, align, dtype):
    h, w, oh, ow = 3, 5, 7, 4
    x = (RNG.standard_normal((1, 2, h, w)) * 50 + 100).astype(dtype)
    sy, sx = F32(h) / F32(oh), F32(w) / F32(ow)
    if align:
        sy, sx = F32(h - 1) / F32(oh - 1), F32(w - 1) / F32(ow - 1)
    want = np.zeros((1, 2, oh, ow), dtype)
    for c, oy, ox in np.ndindex(2, oh, ow):
        fy, fx = F32(oy * sy), F32(ox * sx)
        if mode == 1:
            want[0, c, oy, ox] = x[0, c, min(int(np.floor(fy)), h - 1), min(int(np.floor(fx)), w - 1)]
            continue
        y0, x0 = int(np.floor(fy)), int(np.floor(fx))
        y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
        dy, dx = F32(fy - F32(y0)), F32(fx - F32(x0))
        def v(yy, xx, c=c):
            return F32(x[0, c, yy, xx])
        r = F32(F32(F32(v(y0, x0) * F32(F32(1 - dy) * F32(1 - dx))) + F32(v(y1, x0) * F32(dy * F32(1 - dx))))
                + F32(v(y0, x1) * F32(F32(1 - dy) * dx))) + F32(v(y1, x1) * F32(dy * dx))
        want[0, c, oy, ox] = r if dtype is F32 else int(r)
    dt = k4.DT_FLOAT32 if dtype is F32 else k4.DT_UINT8
    body = k4.ResizeImage(R(0, x.nbytes, dt), R(1024, want.nbytes, dt), x.shape, oh, ow, mode, align)
    np.testing.assert_array_equal(run_op(body, [(0, x)]).get(body.output, shape=want.shape), want)


def test_softmax_and_unary():
    x = RNG.standard_normal((2, 5)).astype(F32)
    body = k4.Softmax(R(0, 40), R(64, 40), 5, 2, 1.5)
    got = run_op(body, [(0, x)]).get(body.output, shape=(2, 5))
    e = np.exp((x - x.max(axis=1, keepdims=True)) * F32(1.5))
    np.testing.assert_allclose(got, e / e.sum(axis=1, keepdims=True), rtol=1e-6)
    x = np.array([-2.5, -0.5, 0.25, 4.0], F32)
    exact = {0: np.abs(x), 1: np.ceil(x), 4: np.floor(x), 6: -x, 9: x * x}
    for code, want in exact.items():
        np.testing.assert_array_equal(run_op(k4.Unary(R(0, 16), R(64, 16), code), [(0, x)]).get(R(64, 16)), want)
    got = run_op(k4.Unary(R(0, 16), R(64, 16), 7), [(0, np.abs(x))]).get(R(64, 16))
    np.testing.assert_array_equal(got, F32(1) / np.sqrt(np.abs(x)))
    for code, fn in {2: np.cos, 3: np.exp, 5: np.log, 8: np.sin}.items():  # libm functions: within 1 ulp
        got = run_op(k4.Unary(R(0, 16), R(64, 16), code), [(0, np.abs(x))]).get(R(64, 16))
        np.testing.assert_array_max_ulp(got, fn(np.abs(x).astype(np.float64)).astype(F32), maxulp=1)


def test_nnil_programs():
    x = np.linspace(-4, 4, 9, dtype=F32)
    one = b"\x06" + struct.pack("<f", 1.0)
    silu = b"\x03\x01\x26\x23" + one + b"\x40\x43\xa0"  # lda_0 dup neg exp ldc_r4 1 add div ret (§9)
    def expf(v):  # libm's expf, to float32 rounding
        return np.exp(v.astype(np.float64)).astype(F32)

    np.testing.assert_array_equal(run_nnil(silu, x), x / (F32(1) + expf(-x)))
    clamp = b"\x03\x04" + one + b"\x80\xa0"  # clamp(x, 0, 1)
    np.testing.assert_array_equal(run_nnil(clamp, x), np.clip(x, 0, 1))
    assert run_nnil(b"\x03\x00\x00", x) is None  # no ret: the output is left as it was
    with pytest.raises(MalformedModel, match="invalid NNIL opcode"):
        run_nnil(b"\x03\x07\xa0", x)
    with pytest.raises(MalformedModel, match="underflow"):
        run_nnil(b"\x40\xa0", x)
    body = k4.NnilUnaryMethod(R(0, 36), R(64, 36), silu)  # through the op, with the body's padding as nops
    got = run_op(body, [(0, x)]).get(body.output)
    np.testing.assert_array_equal(got, x / (F32(1) + expf(-x)))


# ---------------------------------------------------------------- KPU plumbing
def identity_kpu_layer(c, h, w, batches, src_row, dst_row, pool_type=0, main_out=k4.NO_RANGE):
    """A depthwise 1x1 layer whose output equals its input: weight 1, BN ·1, activation v -> v."""
    s = {0: 1, 1: 2}[pool_type]
    args = KpuArgs(depth_wise_layer=1, image_src_addr=src_row, image_dst_addr=dst_row, i_ch_num=c - 1,
                   o_ch_num=c - 1, o_ch_num_coef=c - 1, i_row_wid=w - 1, i_col_high=h - 1, o_row_wid=w // s - 1,
                   o_col_high=h // s - 1, pool_type=pool_type)
    bn = BatchNorm(np.ones(c, np.int64), np.zeros(c, np.int64), np.zeros(c, np.int64))
    x_start = np.array([-2**35, 0] + [2**35 - 1] * 14, np.int64)
    act = ActTable(x_start, np.array([0, 1] + [0] * 14, np.int64), np.zeros(16, np.int64), np.zeros(16, np.int64))
    return k4.KpuConv2D(main_out, batches, 0, args, bn, act, np.ones((c, 1, 1, 1), np.uint8))


def test_kpu_upload_layout_and_batched_layer():
    n, c, h, w = 2, 3, 4, 20  # W = 20: two channels per 64-byte row, 32 bytes apart
    x = RNG.integers(0, 256, (n, c, h, w), dtype=np.uint8)
    up = k4.KpuUpload(R(0, x.nbytes, 1), R(640, 2 * 512, 1, k4.MEM_KPU), x.shape)
    layer = identity_kpu_layer(c, h, w, n, 10, 40, pool_type=1, main_out=R(1024, n * c * 2 * 10, 1))
    model = model_of(up, layer, main_mem=2048)
    mem = Memory(k4.read_v4(k4.write_v4(model)))
    mem.put(R(0, 0), x)
    for node in model.nodes:
        OPS[node.opcode](node.body, mem)
    ram = mem.pools[k4.MEM_KPU]
    # batch 1 (512 bytes per batch), channel 1, row 2, column 5: 640 + 512 + 0·256 + 1·32 + 2·64 + 5
    assert ram[640 + 512 + 32 + 128 + 5] == x[1, 1, 2, 5]
    assert ram[640 + 256 + 64 + 7] == x[0, 2, 1, 7]  # channel 2 starts the second row group
    pooled = x.reshape(n, c, 2, 2, 10, 2).max(axis=(3, 5))  # max_2_s2
    np.testing.assert_array_equal(mem.get(layer.main_mem_output, shape=pooled.shape), pooled)
    assert ram[40 * 64 + 16 + 64 + 3] == pooled[0, 1, 1, 3]  # output map at image_dst_addr; W = 10: pitch 16
