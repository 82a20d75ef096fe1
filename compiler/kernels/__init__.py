"""Float (and plain integer) kernels: one numpy function per IR op, registered in KERNELS.

A kernel takes numpy arrays positionally and the node's attrs as keywords and returns an array (or a
tuple of arrays for multi-output ops). No `Node` inside, so the kmodel interpreter reuses them.
"""
from __future__ import annotations

from typing import Callable

KERNELS: dict[str, Callable] = {}


def kernel(*ops: str):
    """Register `fn` as the kernel of each IR op in `ops`."""
    def register(fn):
        for op in ops:
            KERNELS[op] = fn
        return fn
    return register
