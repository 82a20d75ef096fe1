"""Comparison, logical and selection kernels, and the floor division family (TFLite FLOOR_DIV/FLOOR_MOD,
ONNX Mod): numpy's own functions, whose semantics are the ones the formats specify."""
from __future__ import annotations

import numpy as np

from compiler.kernels import kernel

COMPARE = {"equal": np.equal, "not_equal": np.not_equal, "less": np.less, "less_equal": np.less_equal,
           "greater": np.greater, "greater_equal": np.greater_equal}
LOGICAL = {"and": np.logical_and, "or": np.logical_or, "xor": np.logical_xor}


@kernel("compare")
def compare(a, b, *, op):
    """Elementwise comparison with numpy broadcasting -> bool."""
    return np.asarray(COMPARE[op](a, b), dtype=bool)


@kernel("logical")
def logical(a, b, *, op):
    """Elementwise and / or / xor of bool tensors -> bool."""
    return np.asarray(LOGICAL[op](a, b), dtype=bool)


@kernel("logical_not")
def logical_not(x):
    return np.logical_not(x)


@kernel("where")
def where(cond, x, y):
    """x where cond holds, y elsewhere, all three broadcast together."""
    return np.where(np.asarray(cond, dtype=bool), x, y).astype(x.dtype, copy=False)


@kernel("floor_div")
def floor_div(a, b):
    """floor(a / b): float as TFLite's std::floor(a / b); integers exactly (numpy floor_divide)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if np.issubdtype(np.result_type(a, b), np.integer):
            return np.floor_divide(a, b).astype(a.dtype, copy=False)
        return np.floor(np.true_divide(a, b)).astype(a.dtype, copy=False)


@kernel("mod")
def mod(a, b, *, fmod=False):
    """The remainder with b's sign (TFLite FLOOR_MOD, ONNX Mod fmod=0), or a's sign (C fmod, ONNX fmod=1)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.fmod(a, b) if fmod else np.mod(a, b)).astype(a.dtype, copy=False)
