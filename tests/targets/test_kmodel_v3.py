"""kmodel v3: sniffing, reading and writing the real files byte for byte, describe, and the SDK interpreter."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from compiler.errors import KpucError
from shared_data import GOLDEN, SHARED, file_params, glob_params, needs_shared, require
from targets.k210.interpreter_v3 import run_v3
from targets.k210.kmodel import sniff, unswap_words
from targets.k210.kmodel_v3 import (
    FIXED_BODIES,
    V3_HEADER,
    V3_OUTPUT,
    ChannelwiseDequantizeBody,
    ConcatenationBody,
    FullyConnectedBody,
    K210ConvBody,
    KModelV3,
    LayerType,
    RawBody,
    V3Layer,
    describe_v3,
    read_v3,
    write_v3,
)
from targets.k210.kpu import ActTable, BatchNorm, KpuArgs

V3_FILES = [SHARED / "golden/iris-v3/iris.kmodel", SHARED / "golden/yolo20-v3/yolo.kmodel",
            SHARED / "kmodels/maixpy_mnist.v3.kmodel", SHARED / "kmodels/maixpy_facedetect.v3.kmodel"]


def _v4_id(p: Path) -> str:
    return f"{p.parent.name}/{p.name}"


V4_FILES = (glob_params(GOLDEN, "*-v4/*.kmodel", ids=_v4_id)
            + file_params([SHARED / "kmodels/sdk_mask_detect.v4.kmodel"], ids=_v4_id))


@pytest.fixture(scope="module")
def files():
    require(*V3_FILES)
    return {p.name: p.read_bytes() for p in V3_FILES}


# ---- sniff --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", file_params(V3_FILES))
def test_sniff_v3(path):
    assert sniff(path.read_bytes()) == 3


@pytest.mark.parametrize("path", V4_FILES)
def test_sniff_v4(path):
    assert sniff(path.read_bytes()) == 4


@pytest.mark.parametrize("name, words", [
    ("maixpy_facedetect.v3-byteswapped.kmodel", ["byte-swapped", "MaixPy", "swap it back"]),
    ("nncase1_mnist.v5.kmodel", ["v5", "nncase 1.x"]),
    ("k230_face_detection.v6.kmodel", ["v6", "K230"]),
])
def test_sniff_refuses_other_formats_in_one_line(name, words):
    require(SHARED / "kmodels" / name)
    with pytest.raises(KpucError) as err:
        sniff((SHARED / "kmodels" / name).read_bytes())
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n" + bytes(32), b"TFL3" + bytes(60)])
def test_sniff_not_a_kmodel(data):
    with pytest.raises(KpucError, match="not a kmodel"):
        sniff(data)


@needs_shared("kmodels/maixpy_facedetect.v3-byteswapped.kmodel", "kmodels/maixpy_facedetect.v3.kmodel")
def test_unswapped_maixpy_image_is_the_plain_v3_file():
    swapped = (SHARED / "kmodels/maixpy_facedetect.v3-byteswapped.kmodel").read_bytes()
    assert unswap_words(swapped) == (SHARED / "kmodels/maixpy_facedetect.v3.kmodel").read_bytes()


# ---- read / write -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [p.name for p in V3_FILES])
def test_real_files_round_trip_byte_for_byte(files, name):
    # Nothing is excluded: all padding in these files is zero and no reserved bit is set. iris and yolo
    # lack the last body's 4 tail-padding bytes, which `tail_padding=False` reproduces.
    data = files[name]
    model = read_v3(data)
    assert write_v3(model) == data
    assert model.tail_padding == (name not in ("iris.kmodel", "yolo.kmodel"))
    pos = 28 + 8 * (len(model.outputs) + len(model.layers))
    for layer in model.layers:
        assert layer.raw == data[pos:pos + layer.body_size]
        pos += layer.body_size


def test_new_models_get_the_final_padding(files):
    model = read_v3(files["iris.kmodel"])
    model.tail_padding = True
    assert write_v3(model) == files["iris.kmodel"] + bytes(4)
    assert write_v3(read_v3(write_v3(model))) == files["iris.kmodel"] + bytes(4)


def test_yolo_structure(files):
    model = read_v3(files["yolo.kmodel"])
    assert [l.type for l in model.layers] == [LayerType.K210Conv] * 16 + [LayerType.ChannelwiseDequantize]
    assert [(o.address, o.size) for o in model.outputs] == [(8752, 35000)]
    conv15 = model.layers[15].body
    assert conv15.flags == 1 and conv15.args.out_shape == (125, 7, 10) and conv15.weights.shape == (125, 512, 1, 1)
    assert conv15.offsets == (0x139FA8, 0x13A080, 0x149A80, 0x149F00)    # kmodel-v3.md §13.2
    assert model.layers[0].body.weights.reshape(-1)[:12].tolist() == [48, 56, 23, 54, 46, 63, 57, 51, 32, 237, 255, 210]
    assert (model.layers[0].body.bn.norm_mul[0], model.layers[0].body.bn.norm_add[0]) == (15992, 27311)
    cdq = model.layers[16].body
    assert (cdq.channels, cdq.channel_size) == (125, 70)
    assert np.float32(cdq.scale[0]) == np.float32(0.0134877) or abs(cdq.scale[0] - 0.0134877) < 1e-7


def test_describe_yolo(files):
    d = describe_v3(read_v3(files["yolo.kmodel"]))
    assert d["version"] == 3 and d["header"]["layers_length"] == 17 and d["weights_bits"] == 8
    assert d["memory"]["main_mem_usage"] == 43752 and d["memory"]["kpu_max_start_address"] == 0
    first = d["layers"][0]
    assert first["type"] == "K210Conv" and first["inputs"][0] == {
        "mem": "kpu", "address": 29168, "size": 3600, "dtype": "uint8", "shape": (3, 240, 320)}
    assert d["layers"][15]["outputs"][1] == {"mem": "main", "address": 0, "size": 8750, "dtype": "uint8",
                                             "shape": (125, 7, 10)}
    assert d["layers"][16]["outputs"][0]["size"] == 35000


def test_describe_every_real_file(files):
    for name, data in files.items():
        d = describe_v3(read_v3(data))
        assert d["memory"]["main_bytes_touched"] <= d["memory"]["main_mem_usage"], name
        lo = d["memory"]["kpu_rows_touched"]
        assert lo is None or lo[0] >= d["memory"]["kpu_max_start_address"], name


# ---- read(write(x)) == x on synthetic models ----------------------------------------------------------------

def _u32():
    return st.integers(0, 2**32 - 1)


@st.composite
def fixed_bodies(draw):
    ltype = draw(st.sampled_from(sorted(FIXED_BODIES)))
    rec = FIXED_BODIES[ltype]
    strategy = {"I": _u32(), "i": st.integers(-2**31, 2**31 - 1), "f": st.floats(width=32, allow_nan=False),
                "s": st.binary(min_size=256, max_size=256)}
    return ltype, rec.type(**{name: draw(strategy[code]) for name, code in zip(rec.fields, _expand(rec.struct.format))})


def _expand(fmt: str) -> str:
    out, count = "", ""
    for ch in fmt.lstrip("<"):
        if ch.isdigit():
            count += ch
        elif ch == "s":
            out, count = out + "s", ""
        else:
            out, count = out + ch * int(count or 1), ""
    return out


@st.composite
def variable_bodies(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["concat", "fc", "cdq", "conv"]))
    if kind == "concat":
        return LayerType.QuantizedConcatenation, ConcatenationBody(
            draw(_u32()), draw(_u32()), draw(st.lists(st.tuples(_u32(), _u32()), max_size=4)))
    if kind == "fc":
        ic, oc = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        return LayerType.FullyConnected, FullyConnectedBody(
            draw(_u32()), draw(_u32()), draw(_u32()), draw(st.integers(0, 2)),
            rng.standard_normal((oc, ic)).astype(np.float32), rng.standard_normal(oc).astype(np.float32))
    if kind == "cdq":
        c = draw(st.integers(1, 5))
        return LayerType.ChannelwiseDequantize, ChannelwiseDequantizeBody(
            draw(_u32()), draw(_u32()), draw(_u32()), draw(_u32()),
            rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32))
    words = [int(v) for v in rng.integers(0, 2**63, 12, dtype=np.uint64)]
    args = KpuArgs.from_words(words).replace(
        kernel_type=draw(st.integers(0, 1)), depth_wise_layer=draw(st.integers(0, 1)),
        i_ch_num=draw(st.integers(0, 5)), o_ch_num=draw(st.integers(0, 5)))
    oc = args.o_ch_num + 1
    return LayerType.K210Conv, K210ConvBody(
        draw(_u32()), draw(_u32()), args, rng.integers(0, 256, args.weights_shape, dtype=np.uint8),
        BatchNorm.from_words(rng.integers(0, 2**63, oc, dtype=np.uint64)),
        ActTable.from_words(rng.integers(0, 2**63, 18, dtype=np.uint64)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(fixed_bodies(), variable_bodies(),
                          st.binary(min_size=8, max_size=40).map(lambda b: (3, RawBody(b)))), min_size=1, max_size=6),
       st.lists(st.tuples(_u32(), _u32()), max_size=3), st.booleans())
def test_write_read_round_trip(layers, outputs, tail_padding):
    header = V3_HEADER.make(version=3, flags=1, arch=0, max_start_address=1234, main_mem_usage=5678)
    model = KModelV3(header, [V3_OUTPUT.make(address=a, size=s) for a, s in outputs],
                     [V3Layer(t, b) for t, b in layers], tail_padding)
    data = write_v3(model)
    back = read_v3(data)
    assert write_v3(back) == data
    assert back.header == dataclasses.replace(header, layers_length=len(layers), output_count=len(outputs))
    assert [(o.address, o.size) for o in back.outputs] == outputs
    for (ltype, body), layer in zip(layers, back.layers):
        assert layer.type == ltype
        if ltype in FIXED_BODIES:
            assert layer.body == body
        elif isinstance(body, K210ConvBody):
            assert layer.body.args == body.args and np.array_equal(layer.body.weights, body.weights)
            assert np.array_equal(layer.body.bn.to_words(), body.bn.to_words())
            assert np.array_equal(layer.body.act.to_words(), body.act.to_words())
        elif isinstance(body, RawBody):
            assert layer.body.data[:len(body.data)] == body.data


# ---- the interpreter ----------------------------------------------------------------------------------------

@pytest.mark.slow
@needs_shared("golden/yolo20-v3/inputs/dog_rgb_chw_320x240.u8", "golden/yolo20-v3/expected/dog.out0.bin")
def test_yolo_reproduces_golden_output_bit_for_bit(files):
    model = read_v3(files["yolo.kmodel"])
    image = np.fromfile(SHARED / "golden/yolo20-v3/inputs/dog_rgb_chw_320x240.u8", np.uint8)
    expected = np.fromfile(SHARED / "golden/yolo20-v3/expected/dog.out0.bin", np.float32)
    (out,) = run_v3(model, [image])
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("sample", glob_params(GOLDEN / "iris-v3/inputs", "*", ids=lambda p: p.name))
def test_iris_matches_golden(files, sample):
    sample = sample.name
    x = np.fromfile(SHARED / "golden/iris-v3/inputs" / sample, np.float32)
    expected = np.fromfile(SHARED / "golden/iris-v3/expected" / (sample[len("iris_"):-4] + ".out0.bin"), np.float32)
    (out,) = run_v3(read_v3(files["iris.kmodel"]), [x])
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out, expected)     # in fact bit-exact: f32 products summed in the SDK's order


def test_iris_setosa_anchor(files):
    # golden/README.md: setosa sample -> logits ≈ 18.588, 5.554, -2.229
    (out,) = run_v3(read_v3(files["iris.kmodel"]), [np.array([5.1, 3.5, 1.4, 0.2], np.float32)])
    np.testing.assert_allclose(out, [18.588, 5.554, -2.229], atol=1e-3)


@pytest.mark.parametrize("name, out_size", [("maixpy_mnist.v3.kmodel", 10), ("maixpy_facedetect.v3.kmodel", 9000)])
def test_maixpy_models_run(files, name, out_size):
    model = read_v3(files[name])
    shape = model.layers[0].body.args.in_shape
    x = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    (out,) = run_v3(model, [x])
    assert out.shape == (out_size,) and np.isfinite(out).all()
    if name.startswith("maixpy_mnist"):
        assert abs(out.sum() - 1) < 1e-5 and (out >= 0).all()     # ends in Softmax
    assert np.array_equal(run_v3(model, [x])[0], out)


def test_input_checks(files):
    with pytest.raises(KpucError, match="uint8"):
        run_v3(read_v3(files["yolo.kmodel"]), [np.zeros((3, 240, 320), np.float32)])
    with pytest.raises(KpucError, match=r"float32\[4\]"):
        run_v3(read_v3(files["iris.kmodel"]), [np.zeros(5, np.float32)])


# ---- CPU layers on small synthetic models (SDK kpu.c semantics) --------------------------------------------
# Each model starts with a FullyConnected (the SDK feeds float inputs only to that) that copies or mixes
# the input into main memory; Quantize / Dequantize with scale 1, bias 0 move between f32 and u8.

F32 = np.float32


def _fixed(ltype, **fields):
    return ltype, FIXED_BODIES[ltype].make(**fields)


def _fc(weights, in_addr=0, out_addr=256, act=0, bias=None):
    weights = np.asarray(weights, F32)
    bias = np.zeros(len(weights), F32) if bias is None else np.asarray(bias, F32)
    return LayerType.FullyConnected, FullyConnectedBody(0, in_addr, out_addr, act, weights, bias)


def _quantize(src, dst, count, scale=1.0, bias=0.0):
    return _fixed(LayerType.Quantize, main_mem_in_address=src, mem_out_address=dst, count=count, scale=scale, bias=bias)


def _dequantize(src, dst, count):
    return _fixed(LayerType.Dequantize, flags=1, main_mem_in_address=src, main_mem_out_address=dst, count=count,
                  scale=1.0, bias=0.0)


def _run(x, layers, out_addr, out_count, main_mem_usage=4096):
    header = V3_HEADER.make(version=3, flags=1, arch=0, max_start_address=32768, main_mem_usage=main_mem_usage)
    model = KModelV3(header, [V3_OUTPUT.make(address=out_addr, size=4 * out_count)], [V3Layer(t, b) for t, b in layers])
    model = read_v3(write_v3(model))          # run what the writer produced
    (out,) = run_v3(model, [np.asarray(x, F32)])
    return out


def test_add():
    x = np.arange(6, dtype=F32) - 2.5
    fc = _fc(np.vstack([np.eye(6), 2 * np.eye(6)]))        # a = x at 256, b = 2x at 280
    add = _fixed(LayerType.Add, main_mem_in_a_address=256, main_mem_in_b_address=280, main_mem_out_address=512, count=6)
    np.testing.assert_array_equal(_run(x, [fc, add], 512, 6), 3 * x)


def _carry_shift(v, s):      # kpu.c kpu_carry_shift, for the hand expectations
    if s == 0:
        return v
    v >>= s - 1
    return ((v >> 1) - 1 if v < 0 else (v >> 1) + 1) if v & 1 else v >> 1


@pytest.mark.parametrize("b_shift", [1, 2])
def test_quantized_add(b_shift):
    x = np.arange(16, dtype=F32) * 7 % 50
    p = dict(in_a_offset=-3, in_a_mul=5, in_a_shift=1, in_b_offset=2, in_b_mul=3, in_b_shift=b_shift,
             out_offset=4, out_mul=7, out_shift=3)
    layers = [_fc(np.eye(16)), _quantize(256, 512, 16), _quantize(256, 528, 16, scale=0.5),
              _fixed(LayerType.QuantizedAdd, main_mem_in_a_address=512, main_mem_in_b_address=528,
                     main_mem_out_address=544, count=13, **p),
              _dequantize(544, 1024, 16)]
    expected = []
    for a, b in zip(x.astype(int), 2 * x.astype(int)):
        A, B = (a + p["in_a_offset"]) * p["in_a_mul"], (b + p["in_b_offset"]) * p["in_b_mul"]
        v = (A + B) >> 1 if b_shift == 1 else (A >> 1) + (B >> b_shift)
        expected.append(min(max(_carry_shift(v * p["out_mul"], p["out_shift"]) + p["out_offset"], 0), 255))
    # count 13 still writes 16 bytes: the SDK works in groups of 8 (kmodel-v3.md §8.2)
    np.testing.assert_array_equal(_run(x, layers, 1024, 16), expected)


def test_global_average_pool():
    x = np.array([1, 2, 4, -1, 0.5, 0.25], F32)
    gap = _fixed(LayerType.GlobalAveragePool2d, flags=1, main_mem_in_address=256, main_mem_out_address=512,
                 kernel_size=3, channels=2)
    np.testing.assert_array_equal(_run(x, [_fc(np.eye(6)), gap], 512, 2), [F32(7) / F32(3), F32(-0.25) / F32(3)])


POOL = dict(in_width=4, in_height=4, in_channels=1, out_width=2, out_height=2, out_channels=1, kernel_width=3,
            kernel_height=3, stride_width=2, stride_height=2, padding_width=1, padding_height=1)


def _windows(img):
    """Valid taps of each output of a 3x3 stride-2 pad-1 pool over 4x4 (brute force)."""
    return [[[img[y, x] for y in range(2 * oy - 1, 2 * oy + 2) for x in range(2 * ox - 1, 2 * ox + 2)
              if 0 <= y < 4 and 0 <= x < 4] for ox in range(2)] for oy in range(2)]


def test_quantized_max_pool():
    x = np.array([3, 9, 1, 0, 4, 2, 8, 7, 5, 6, 12, 11, 10, 15, 14, 13], F32)
    layers = [_fc(np.eye(16)), _quantize(256, 512, 16),
              _fixed(LayerType.QuantizedMaxPool2d, flags=1, main_mem_in_address=512, main_mem_out_address=528, **POOL),
              _dequantize(528, 1024, 4)]
    expected = [[max(w) for w in row] for row in _windows(x.reshape(4, 4))]
    np.testing.assert_array_equal(_run(x, layers, 1024, 4), np.ravel(expected))


def test_average_pool_divides_by_valid_taps_and_ignores_act():
    x = np.arange(16, dtype=F32) - 3
    layers = [_fc(np.eye(16)), _fixed(LayerType.AveragePool2d, flags=1, main_mem_in_address=256,
                                      main_mem_out_address=512, act=1, **POOL)]
    expected = [[F32(sum(w)) / F32(len(w)) for w in row] for row in _windows(x.reshape(4, 4))]
    np.testing.assert_array_equal(_run(x, layers, 512, 4), np.ravel(expected))


def test_quantize_rounds_half_away_from_zero():
    x = np.array([0.5, 1.5, 2.5, -0.4, -0.6, 254.5, 300, 3.4999, 127.5, 7], F32)
    layers = [_fc(np.eye(10)), _quantize(256, 512, 10), _dequantize(512, 1024, 10)]
    np.testing.assert_array_equal(_run(x, layers, 1024, 10), [1, 2, 3, 0, 0, 255, 255, 3, 128, 7])
    # scale 0.5, bias -1: q = roundf((x + 1) / 0.5)
    layers = [_fc(np.eye(10)), _quantize(256, 512, 10, scale=0.5, bias=-1.0), _dequantize(512, 1024, 10)]
    np.testing.assert_array_equal(_run(x, layers, 1024, 10), [3, 5, 7, 1, 1, 255, 255, 9, 255, 16])


def test_requantize_and_dequantize():
    x = np.array([0, 1, 2, 200], F32)
    table = bytes(255 - i for i in range(256))
    layers = [_fc(np.eye(4)), _quantize(256, 512, 4),
              _fixed(LayerType.Requantize, flags=1, main_mem_in_address=512, main_mem_out_address=520, count=4,
                     table=table),
              _fixed(LayerType.Dequantize, flags=1, main_mem_in_address=520, main_mem_out_address=1024, count=4,
                     scale=0.5, bias=-2.0)]
    np.testing.assert_array_equal(_run(x, layers, 1024, 4), (255 - x) * 0.5 - 2)


def test_channelwise_dequantize():
    x = np.array([1, 2, 3, 4, 5, 6], F32)
    cdq = LayerType.ChannelwiseDequantize, ChannelwiseDequantizeBody(
        1, 512, 1024, 3, np.array([0.5, 2], F32), np.array([1, -1], F32))
    layers = [_fc(np.eye(6)), _quantize(256, 512, 6), cdq]
    np.testing.assert_array_equal(_run(x, layers, 1024, 6), [1.5, 2, 2.5, 7, 9, 11])


@pytest.mark.parametrize("ltype, x, expected", [
    (LayerType.L2Normalization, [3, 4], [0.6, 0.8]),
    (LayerType.Softmax, [1, 2, 3], np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum()),
    (LayerType.Softmax, [-5, -7], np.exp([0, -2]) / np.exp([0, -2]).sum()),
    (LayerType.Logistic, [0, 2, -3], 1 / (1 + np.exp(-np.array([0, 2, -3])))),
])
def test_unary_float_layers(ltype, x, expected):
    n = len(x)
    layer = _fixed(ltype, flags=1, main_mem_in_address=256, main_mem_out_address=512, channels=n)
    np.testing.assert_allclose(_run(x, [_fc(np.eye(n)), layer], 512, n), expected, rtol=1e-6, atol=1e-7)


def test_concatenation_copies_ranges_in_order():
    x = np.arange(6, dtype=F32)
    concat = LayerType.Concatenation, ConcatenationBody(1, 512, [(256 + 12, 12), (256, 8), (256 + 20, 4)])
    np.testing.assert_array_equal(_run(x, [_fc(np.eye(6)), concat], 512, 6), [3, 4, 5, 0, 1, 5])


def test_fully_connected_relu6_and_bias():
    x = np.array([1, -2, 3], F32)
    w = np.array([[1, 1, 1], [2, 0, 1], [-1, 0, 0], [0.5, 0.5, 0.5]], F32)
    out = _run(x, [_fc(w, out_addr=64, act=2, bias=[0, 0.5, 0, -1])], 64, 4)
    np.testing.assert_array_equal(out, np.clip(w @ x + [0, 0.5, 0, -1], 0, 6))


def test_tensorflow_flatten_is_chw_to_hwc():
    x = np.arange(12, dtype=F32)
    flat = _fixed(LayerType.TensorflowFlatten, flags=1, main_mem_in_address=256, main_mem_out_address=512,
                  width=3, height=2, channels=2)
    np.testing.assert_array_equal(_run(x, [_fc(np.eye(12)), flat], 512, 12),
                                  x.reshape(2, 2, 3).transpose(1, 2, 0).ravel())


@pytest.mark.parametrize("quantized", [False, True])
def test_resize_nearest_neighbor(quantized):
    x = np.arange(6, dtype=F32)
    fields = dict(main_mem_in_address=512 if quantized else 256, main_mem_out_address=1024 if quantized else 512,
                  in_width=3, in_height=2, in_channels=1, out_width=5, out_height=4, align_corners=1)
    ys, xs = [int(np.floor(o * 2 / 4)) for o in range(4)], [int(np.floor(o * 3 / 5)) for o in range(5)]
    expected = x.reshape(2, 3)[ys][:, xs].ravel()
    if quantized:
        layers = [_fc(np.eye(6)), _quantize(256, 512, 6),
                  _fixed(LayerType.QuantizedResizeNearestNeighbor, **fields), _dequantize(1024, 2048, 20)]
        np.testing.assert_array_equal(_run(x, layers, 2048, 20), expected)
    else:
        np.testing.assert_array_equal(_run(x, [_fc(np.eye(6)), _fixed(LayerType.ResizeNearestNeighbor, **fields)],
                                           512, 20), expected)


def _identity_conv(c, src_row, dst_row, main_out=None):
    """A 1x1 KPU conv on a 4x4 map whose output equals its input (weights = I, BN = 1, act = identity)."""
    args = KpuArgs(i_ch_num=c - 1, o_ch_num=c - 1, o_ch_num_coef=c - 1, i_row_wid=3, i_col_high=3, o_row_wid=3,
                   o_col_high=3, image_src_addr=src_row, image_dst_addr=dst_row, load_para=1, load_coor=1,
                   load_act=1, para_size=c * c, channel_switch_addr=4, row_switch_addr=1, coef_group=4,
                   wb_channel_switch_addr=4, wb_row_switch_addr=1, wb_group=4, dma_burst_size=15,
                   channel_byte_num=15, dma_total_byte=16 * c - 1)
    bn = BatchNorm(np.ones(c, np.int64), np.zeros(c, np.int64), np.zeros(c, np.int64))
    # v > 0 takes segment 1: (v - 0)·1 >> 0 = v; v = 0 stays in segment 0: 0
    act = ActTable(np.array([-(1 << 35), 0] + [(1 << 35) - 1] * 14), np.array([0, 1] + [0] * 14),
                   np.zeros(16, np.int64), np.zeros(16, np.int64))
    weights = np.eye(c, dtype=np.uint8).reshape(c, c, 1, 1)
    return LayerType.K210Conv, K210ConvBody(int(main_out is not None), main_out or 0, args, weights, bn, act)


def test_kpu_fully_connected_pattern_add_padding_conv_remove_padding():
    # nncase's FullyConnected-on-KPU lowering (kmodel-v3.md §11): only pixel (0,0) of each 4x4 plane matters
    x = np.array([5, 0, 200, 17, 255, 1], F32)
    layers = [_fc(np.eye(6)), _quantize(256, 512, 6),
              _fixed(LayerType.K210AddPadding, main_mem_in_address=512, kpu_mem_out_address=100, channels=6),
              _identity_conv(6, 100, 200, main_out=600),
              _fixed(LayerType.K210RemovePadding, flags=1, main_mem_in_address=600, main_mem_out_address=704,
                     channels=6),
              _dequantize(704, 1024, 6)]
    np.testing.assert_array_equal(_run(x, layers, 1024, 6), x)


def test_upload_then_conv_with_main_memory_output():
    x = (np.arange(32, dtype=F32) * 37) % 256
    layers = [_fc(np.eye(32), out_addr=128), _quantize(128, 512, 32),
              _fixed(LayerType.K210Upload, main_mem_in_address=512, kpu_mem_out_address=7, width=4, height=4,
                     channels=2),
              _identity_conv(2, 7, 300, main_out=600), _dequantize(600, 1024, 32)]
    np.testing.assert_array_equal(_run(x, layers, 1024, 32), x)
