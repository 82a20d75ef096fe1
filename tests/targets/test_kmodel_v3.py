"""kmodel v3: sniffing, reading and writing the real files byte for byte, describe, and the SDK interpreter."""
import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from compiler.errors import KpucError
from targets.k210.interpreter_v3 import run_v3
from targets.k210.kmodel import sniff, unswap_words
from targets.k210.kmodel_v3 import (FIXED_BODIES, V3_HEADER, V3_OUTPUT, ChannelwiseDequantizeBody, ConcatenationBody,
                                    FullyConnectedBody, K210ConvBody, KModelV3, LayerType, RawBody, V3Layer,
                                    describe_v3, read_v3, write_v3)
from targets.k210.kpu import ActTable, BatchNorm, KpuArgs

SHARED = Path("/work/shared")
V3_FILES = [SHARED / "golden/iris-v3/iris.kmodel", SHARED / "golden/yolo20-v3/yolo.kmodel",
            SHARED / "kmodels/maixpy_mnist.v3.kmodel", SHARED / "kmodels/maixpy_facedetect.v3.kmodel"]
V4_FILES = sorted(SHARED.glob("golden/*-v4/*.kmodel")) + [SHARED / "kmodels/sdk_mask_detect.v4.kmodel"]


@pytest.fixture(scope="module")
def files():
    return {p.name: p.read_bytes() for p in V3_FILES}


# ---- sniff --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", V3_FILES, ids=lambda p: p.name)
def test_sniff_v3(path):
    assert sniff(path.read_bytes()) == 3


@pytest.mark.parametrize("path", V4_FILES, ids=lambda p: p.parent.name + "/" + p.name)
def test_sniff_v4(path):
    assert sniff(path.read_bytes()) == 4


@pytest.mark.parametrize("name, words", [
    ("maixpy_facedetect.v3-byteswapped.kmodel", ["byte-swapped", "MaixPy", "swap it back"]),
    ("nncase1_mnist.v5.kmodel", ["v5", "nncase 1.x"]),
    ("k230_face_detection.v6.kmodel", ["v6", "K230"]),
])
def test_sniff_refuses_other_formats_in_one_line(name, words):
    with pytest.raises(KpucError) as err:
        sniff((SHARED / "kmodels" / name).read_bytes())
    message = str(err.value)
    assert "\n" not in message and all(w in message for w in words), message


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n" + bytes(32), b"TFL3" + bytes(60)])
def test_sniff_not_a_kmodel(data):
    with pytest.raises(KpucError, match="not a kmodel"):
        sniff(data)


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
    assert all(layer.raw == data[sum(l.body_size for l in model.layers[:i]) + 28 + 8 * (
        len(model.outputs) + len(model.layers)):][:layer.body_size] for i, layer in enumerate(model.layers))


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
def test_yolo_reproduces_golden_output_bit_for_bit(files):
    model = read_v3(files["yolo.kmodel"])
    image = np.fromfile(SHARED / "golden/yolo20-v3/inputs/dog_rgb_chw_320x240.u8", np.uint8)
    expected = np.fromfile(SHARED / "golden/yolo20-v3/expected/dog.out0.bin", np.float32)
    (out,) = run_v3(model, [image])
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("sample", sorted(os.listdir(SHARED / "golden/iris-v3/inputs")))
def test_iris_matches_golden(files, sample):
    x = np.fromfile(SHARED / "golden/iris-v3/inputs" / sample, np.float32)
    expected = np.fromfile(SHARED / "golden/iris-v3/expected" / (sample[len("iris_"):-4] + ".out0.bin"), np.float32)
    (out,) = run_v3(read_v3(files["iris.kmodel"]), [x])
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


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
