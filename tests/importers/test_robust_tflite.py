"""Damaged TFLite files made by patching fields of a real one in place (found through the
flatbuffer tables): each crash class must end in one KpucError naming what is wrong."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import tflite

from compiler.errors import KpucError, MalformedModel, UnsupportedOps
from compiler.importers import import_model
from compiler.importers.limits import ENV, TooLarge

ROOT = Path(__file__).resolve().parents[2]
SEED = Path(os.environ.get("KPUC_SHARED") or ROOT.parent / "shared") / "models" / "tflite-ops" / "conv.float32.tflite"
pytestmark = pytest.mark.skipif(not SEED.is_file(), reason="../shared/models/tflite-ops not present")
# conv.float32.tflite: tensors 0 bias [16], 1 weights [16,3,3,8], 2 input [1,32,32,8], 3 output; one CONV_2D


def _subgraph(buf: bytes):
    return tflite.Model.GetRootAsModel(buf, 0).Subgraphs(0)


def _vector_pos(table, slot: int) -> int:
    """Absolute byte position of the first element of the vector in field `slot` of `table`."""
    o = table._tab.Offset(4 + 2 * slot)
    assert o, "field absent"
    return table._tab.Vector(o)


def _field_pos(table, slot: int) -> int:
    o = table._tab.Offset(4 + 2 * slot)
    assert o, "field absent"
    return table._tab.Pos + o


def _patched(tmp_path, edit) -> Path:
    buf = bytearray(SEED.read_bytes())
    edit(buf, _subgraph(bytes(buf)))
    path = tmp_path / "bad.tflite"
    path.write_bytes(bytes(buf))
    return path


def test_the_seed_imports(tmp_path):
    assert import_model(SEED).outputs[0].shape == (1, 16, 32, 32)


def test_negative_input_dimension(tmp_path):
    def edit(buf, sg):
        struct.pack_into("<i", buf, _vector_pos(sg.Tensors(2), 0) + 4, -32)
    with pytest.raises(MalformedModel, match="negative dimension"):
        import_model(_patched(tmp_path, edit))


def test_huge_input_is_refused_by_the_element_limit(tmp_path):
    def edit(buf, sg):
        struct.pack_into("<i", buf, _vector_pos(sg.Tensors(2), 0) + 4, 1 << 30)
    with pytest.raises(TooLarge, match="tensor 'input'.*over kpuc's limit"):
        import_model(_patched(tmp_path, edit))


def test_unknown_tensor_type(tmp_path):
    seed = SEED.with_name("conv.uint8.tflite")  # its tensors store a type field (float32 is the absent default)
    buf = bytearray(seed.read_bytes())
    sg = _subgraph(bytes(buf))
    k = next(i for i in range(sg.TensorsLength()) if sg.Tensors(i).Type() == tflite.TensorType.UINT8)
    buf[_field_pos(sg.Tensors(k), 1)] = 99
    path = tmp_path / "bad.tflite"
    path.write_bytes(bytes(buf))
    with pytest.raises(KpucError, match="tflite_type_99"):
        import_model(path)


def test_nan_weights(tmp_path):
    def edit(buf, sg):
        model = tflite.Model.GetRootAsModel(bytes(buf), 0)
        data = model.Buffers(sg.Tensors(1).Buffer())
        struct.pack_into("<I", buf, _vector_pos(data, 0) + 8, 0x7FC00000)
    with pytest.raises(MalformedModel, match="Variable/read.*NaN"):
        import_model(_patched(tmp_path, edit))


def test_required_input_left_out(tmp_path):
    def edit(buf, sg):
        struct.pack_into("<i", buf, _vector_pos(sg.Operators(0), 1) + 4, -1)  # the weights
    with pytest.raises(UnsupportedOps, match="CONV_2D 'output'"):
        import_model(_patched(tmp_path, edit))


def test_operator_reading_a_missing_tensor(tmp_path):
    def edit(buf, sg):
        struct.pack_into("<i", buf, _vector_pos(sg.Operators(0), 1), 1000)
    with pytest.raises(MalformedModel, match="refers to a tensor that does not exist"):
        import_model(_patched(tmp_path, edit))


def test_control_characters_in_names_are_escaped(tmp_path):
    def edit(buf, sg):
        k = bytes(buf).index(b"Variable/read")
        buf[k:k + 3] = b"\n\x1b["
        struct.pack_into("<i", buf, _vector_pos(sg.Operators(0), 1) + 4, -1)
    with pytest.raises(UnsupportedOps) as e:
        import_model(_patched(tmp_path, edit))
    assert "\n" not in str(e.value) and "\x1b" not in str(e.value)


def test_truncated_files(tmp_path):
    data = SEED.read_bytes()
    for n in (0, 7, 8, 100, len(data) // 2):
        path = tmp_path / f"t{n}.tflite"
        path.write_bytes(data[:n])
        with pytest.raises(KpucError):
            import_model(path)


def test_element_limit_is_configurable(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(32 * 32 * 8 - 1))
    with pytest.raises(TooLarge, match="input"):
        import_model(SEED)
    monkeypatch.setenv(ENV, str(1 << 20))
    assert import_model(SEED).inputs[0].shape == (1, 8, 32, 32)


def test_random_byte_damage_never_escapes_as_another_exception(tmp_path):
    """A small seeded sweep: whatever a flipped byte does, the importer answers with a KpucError or a graph."""
    data = SEED.read_bytes()
    rng = np.random.default_rng(7)
    for k in range(40):
        b = bytearray(data)
        for pos in rng.integers(0, len(b), size=3):
            b[pos] = int(rng.integers(0, 256))
        path = tmp_path / f"r{k}.tflite"
        path.write_bytes(bytes(b))
        try:
            import_model(path)
        except KpucError:
            pass
