"""kmodel v4 interpreter: the run loop. Runs a `KModelV4` with the semantics of nncase v0.2.0-beta4's runtime.

The semantics, pools, registry and helpers are described and kept in interpreter_v4_base.py; the ops are in
interpreter_v4_ops.py and interpreter_v4_conv.py (imported here so that `OPS` is complete).
"""
from __future__ import annotations

import numpy as np

from compiler.errors import KpucError, MalformedModel
from compiler.quantization import mul_and_carry_shift  # noqa: F401  (re-exported for the tests)
from targets.k210 import interpreter_v4_conv, interpreter_v4_ops, kmodel_v4 as k4  # noqa: F401  (fill OPS)
from targets.k210.interpreter_v4_base import F32, OPS, Memory, kpu_write
from targets.k210.interpreter_v4_ops import run_nnil  # noqa: F401  (re-exported)
from targets.k210.kmodel_v4_check import check_v4


# ---------------------------------------------------------------- the run loop
def feed(mem: Memory, r: k4.MemoryRange, shape, x) -> None:
    """Write one model input like `ncc infer`: a main range gets the bytes, a kpu range the KPU layout."""
    x = np.asarray(x)
    want = int(np.prod(shape)) if r.memory_type == k4.MEM_KPU else r.size // k4.DTYPES[r.datatype].itemsize
    if x.size != want:
        raise KpucError(f"model input {tuple(shape)} needs {want} {k4.DTYPES[r.datatype].name} values, "
                        f"got {x.size}")
    x = x.astype(k4.DTYPES[r.datatype]).reshape(-1)
    if r.memory_type == k4.MEM_KPU:
        if r.datatype != k4.DT_UINT8:
            raise MalformedModel("a KPU input must be uint8")
        kpu_write(mem, r.start, x.reshape(shape))
    else:
        mem.put(r, x)


def run_v4(model: k4.KModelV4, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Run every node in file order; returns each output range as a flat float32 array, in output order.

    float32 outputs come back as stored; uint8 outputs (ncc infer writes their raw bytes) as float32
    copies of the u8 codes."""
    if len(inputs) != len(model.inputs):
        raise KpucError(f"the model has {len(model.inputs)} input(s), got {len(inputs)}")
    check_v4(model)  # every range and shape inside the pools before they are allocated
    mem = Memory(model)
    for r, shape, x in zip(model.inputs, model.input_shapes, inputs):
        feed(mem, r, shape, x)
    for i, node in enumerate(model.nodes):
        fn = OPS.get(node.opcode)
        if fn is None:
            raise KpucError(f"node {i}: unknown opcode 0x{node.opcode:x}")
        try:
            fn(node.body, mem)
        except KpucError as e:
            raise type(e)(f"node {i} ({node.name}): {e}") from e
        except (ValueError, IndexError, KeyError) as e:
            raise MalformedModel(f"node {i} ({node.name}): {e}") from e
    return [mem.get(r).astype(F32) for r in model.outputs]
