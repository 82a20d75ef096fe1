"""kmodel v4 (nncase v0.2.x) vocabulary: pools, datatypes, the small records of §4 and the body registry.

The node bodies (kmodel_v4_ops.py: neutral ops; kmodel_v4_k210.py: cpu_* and KPU ops) are dataclasses whose
fields, in declaration order, are the serialization order; each field carries its codec from records.py, so
the reader and the writer are derived from the same description (STYLE "Binary writers mirror readers").
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from compiler.errors import MalformedModel
from targets.k210.records import Record, Rest, Struct, codec_field

IDENTIFIER = 0x4B4D444C  # 'KMDL' as a C multi-char constant: bytes "LDMK" on disk (§3)
VERSION = 4
MEM_CONST, MEM_MAIN, MEM_KPU = 0, 1, 2
DT_FLOAT32, DT_UINT8 = 0, 1
DTYPES = {DT_FLOAT32: np.dtype("<f4"), DT_UINT8: np.dtype("u1")}
MEMORY_NAMES = {MEM_CONST: "const", MEM_MAIN: "main", MEM_KPU: "kpu"}
FLT_MAX = float(np.finfo(np.float32).max)

# ---------------------------------------------------------------- small records (§4)
class MemoryRange(NamedTuple):
    """memory_range (§4.1): pool, datatype, byte offset in the pool, exact byte size."""
    memory_type: int
    datatype: int
    start: int
    size: int


class Padding(NamedTuple):
    """padding (§4.2): elements before and after along one axis (negative crops)."""
    before: int
    after: int


class ValueRange(NamedTuple):
    """value_range<float> (§4.2): the fused clamp [min, max]."""
    min: float
    max: float


class QuantParam(NamedTuple):
    """quant_param_t (§4.2): q = round(x·scale + zero_point)."""
    zero_point: int
    scale: float  # steps per real unit (the inverse of TFLite's scale)


class Scalar(NamedTuple):
    """scalar (§4.2): a datatype word and 4 bytes of storage."""
    datatype: int
    storage: bytes  # 4 bytes, value in the first 1 or 4 of them


NO_RANGE = MemoryRange(MEM_CONST, DT_FLOAT32, 0, 0)
FULL_RANGE = ValueRange(-FLT_MAX, FLT_MAX)

# ---------------------------------------------------------------- codecs of the fields (records.py)
U32 = Struct("<I")
I32 = Struct("<i")
F32 = Struct("<f")
RANGE = Record("MemoryRange", "<4I", "memory_type datatype start size", MemoryRange)
SHAPE = Struct("<4i", tuple, tuple)
PADDING = Record("Padding", "<2i", "before after", Padding)
PADDINGS = Struct("<8i", lambda t: tuple(Padding(*t[i:i + 2]) for i in range(0, 8, 2)),
                  lambda v: tuple(x for p in v for x in p))
VALUE_RANGE = Record("ValueRange", "<2f", "min max", ValueRange)
QUANT = Record("QuantParam", "<if", "zero_point scale", QuantParam)
SCALAR = Record("Scalar", "<I4s", "datatype storage", Scalar)
BOOL_PADDED = Struct("<?3x")  # resize_image.align_corners: C++ bool + 3 bytes of struct padding (§8.11)
REST = Rest()

# reserved0: never initialised by nncase (garbage in real files), kept on read and written back
HEADER = Record("V4Header", "<10I", "identifier version flags target constants main_mem nodes inputs outputs reserved0")
NODE_HEADER = Record("V4NodeHeader", "<2I", "opcode body_size")

_f = codec_field


def per_group(channels: int, groups: int) -> int:
    """Input channels per group; a group count below 1 is a damaged body, not a division by zero."""
    if groups < 1:
        raise MalformedModel(f"groups is {groups}, must be >= 1")
    return channels // groups


def _conv_weights(oc: str, ic: Callable[[dict], int]) -> Callable[[dict], int]:
    return lambda v: v[oc] * ic(v) * v["filter_h"] * v["filter_w"]


# ---------------------------------------------------------------- the body registry (runtime_op.def)
BODIES: dict[int, type] = {}
OPCODE_NAMES: dict[int, str] = {}


def body(opcode: int, name: str):
    """Register a body dataclass under its runtime_opcode (runtime_op.def)."""
    def register(cls):
        cls.opcode, cls.op_name = opcode, name
        BODIES[opcode], OPCODE_NAMES[opcode] = cls, name
        return cls
    return register
