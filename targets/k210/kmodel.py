"""Tell kmodel formats apart by their first bytes, and refuse the ones kpuc does not target in one line.

v3 (nncase v0.1, K210 SDK): the first u32 is 3 (kmodel-v3.md §3). v4 (nncase v0.2): the u32 'KMDL'
(bytes "LDMK") followed by version 4 (kmodel-v4.md §3). The same magic with version 5 is nncase 1.x and
with version 6 is nncase 2.x for the K230; both carry a module table ("stackvm", ...) we do not read.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from compiler.errors import KpucError

KMDL_MAGIC = 0x4B4D444C     # 'KMDL' as a C multi-char constant, bytes "LDMK" on disk


def sniff(data: bytes) -> int:
    """The kmodel version kpuc can read (3 or 4); anything else raises KpucError naming what the file is."""
    if len(data) < 8:
        raise KpucError(f"not a kmodel: {len(data)} bytes is too short for any kmodel header")
    first, second = struct.unpack_from("<2I", data)
    if first == 3:
        return 3
    if first == KMDL_MAGIC:
        if second == 4:
            return 4
        if second == 5:
            raise KpucError("a kmodel v5 (nncase 1.x, module-based format); kpuc reads only v3 and v4 "
                            "(nncase v0.1/v0.2, K210)")
        if second == 6:
            raise KpucError("a kmodel v6 (nncase 2.x for the K230); kpuc reads only v3 and v4 "
                            "(nncase v0.1/v0.2, K210)")
        raise KpucError(f"a kmodel with the 'KMDL' magic but unknown version {second}; kpuc reads only v3 and v4")
    if struct.unpack_from(">I", data)[0] == 3 and len(data) % 4 == 0:
        raise KpucError("a kmodel v3 with every 32-bit word byte-swapped (MaixPy flash image); swap it back "
                        "(reverse the bytes of each 4-byte word, targets.k210.kmodel.unswap_words) and retry")
    raise KpucError(f"not a kmodel: first word 0x{first:08x} is neither 3 (v3) nor 'KMDL' (v4)")


def unswap_words(data: bytes) -> bytes:
    """Reverse the bytes of every 32-bit word (undoes MaixPy's byte-swapped flash images)."""
    if len(data) % 4:
        raise KpucError(f"cannot word-swap {len(data)} bytes: not a multiple of 4")
    return np.frombuffer(data, ">u4").astype("<u4").tobytes()


# ---------------------------------------------------------------- one door for both versions
@dataclass(frozen=True)
class KModel:
    """A parsed kmodel of either version: `model` is a KModelV3 or a KModelV4."""
    version: int
    model: object


def read_kmodel(data: bytes) -> KModel:
    """Sniff, parse and check a v3 or v4 file against its memory pools; anything else raises a one-line KpucError."""
    version = sniff(data)
    if version == 3:
        from targets.k210.kmodel_v3 import read_v3
        from targets.k210.kmodel_v3_check import check_v3
        model = read_v3(data)
        check_v3(model)
        return KModel(3, model)
    from targets.k210.kmodel_v4 import read_v4
    from targets.k210.kmodel_v4_check import check_v4
    model = read_v4(data)
    check_v4(model)
    return KModel(4, model)


def describe_kmodel(k: KModel) -> dict:
    """The JSON-friendly summary `kpuc inspect` prints."""
    if k.version == 3:
        from targets.k210.kmodel_v3 import describe_v3
        return describe_v3(k.model)
    from targets.k210.kmodel_v4 import describe_v4
    return describe_v4(k.model)


def kmodel_inputs(k: KModel) -> list[tuple[tuple[int, ...], str]]:
    """(shape, dtype) of each input as the runtime takes it (NCHW; uint8 for a KPU input)."""
    if k.version == 3:
        from targets.k210.kmodel_v3 import LayerType
        first = k.model.layers[0]
        if first.type == LayerType.K210Conv:
            return [((1, *first.body.args.in_shape), "uint8")]
        if first.type == LayerType.FullyConnected:
            return [((1, first.body.in_channels), "float32")]
        raise KpucError(f"layer 0 is {first.type_name}; the SDK only starts a v3 model at a K210Conv or a "
                        "FullyConnected")
    from targets.k210.kmodel_v4 import DTYPES
    return [(tuple(shape), DTYPES[r.datatype].name) for r, shape in zip(k.model.inputs, k.model.input_shapes)]


def run_kmodel(k: KModel, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Execute the file as the K210 runtime would; outputs as flat float32 arrays, in output order."""
    if k.version == 3:
        from targets.k210.interpreter_v3 import run_v3
        return run_v3(k.model, inputs)
    from targets.k210.interpreter_v4 import run_v4
    return run_v4(k.model, inputs)
