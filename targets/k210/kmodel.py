"""Tell kmodel formats apart by their first bytes, and refuse the ones kpuc does not target in one line.

v3 (nncase v0.1, K210 SDK): the first u32 is 3 (kmodel-v3.md §3). v4 (nncase v0.2): the u32 'KMDL'
(bytes "LDMK") followed by version 4 (kmodel-v4.md §3). The same magic with version 5 is nncase 1.x and
with version 6 is nncase 2.x for the K230; both carry a module table ("stackvm", ...) we do not read.
"""
from __future__ import annotations

import struct

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
