"""Raw datasets reach a quantized input only as its codes: a lossy cast is refused, not wrapped silently."""
from __future__ import annotations

import numpy as np
import pytest

from compiler.datasets import iter_dataset
from compiler.errors import KpucError


def _first(path, dtype):
    return next(iter_dataset(path, (1, 2, 2), format="raw", dtype=dtype)).data


@pytest.mark.parametrize("values", [[-1.0, -0.5, 0.5, 1.0], [0.0, 1.5, 2.0, 3.0], [0.0, 1.0, 2.0, 300.0]])
def test_float_values_for_a_uint8_input_are_refused(tmp_path, values):
    path = tmp_path / "x.npy"
    np.save(path, np.array(values, np.float32))
    with pytest.raises(KpucError, match="float32 values for a uint8 input, not its codes.*--input-type float takes float"):
        _first(path, "uint8")


def test_whole_float_codes_and_integer_arrays_pass_unchanged(tmp_path):
    np.save(tmp_path / "a.npy", np.array([0.0, 7.0, 128.0, 255.0], np.float32))
    np.save(tmp_path / "b.npy", np.array([0, 7, 128, 255], np.int64))
    for name in ("a.npy", "b.npy"):
        got = _first(tmp_path / name, "uint8")
        assert got.dtype == np.uint8 and got.ravel().tolist() == [0, 7, 128, 255]


def test_int8_codes_out_of_range_are_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.array([0, 1, 2, 200], np.int32))
    with pytest.raises(KpucError, match="int8 codes -128..127"):
        _first(tmp_path / "x.npy", "int8")


def test_any_values_reach_a_float_input(tmp_path):
    np.save(tmp_path / "x.npy", np.array([0, 1, 2, 255], np.uint8))
    assert _first(tmp_path / "x.npy", "float32").dtype == np.float32
