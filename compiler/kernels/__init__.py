"""Float (and plain integer) kernels: one numpy function per IR op, registered in KERNELS.

A kernel takes numpy arrays positionally and the node's attrs as keywords and returns an array (or a
tuple of arrays for multi-output ops). No `Node` inside, so the kmodel interpreter reuses them.
Targets register the float kernels of their own ops here too (targets/k210/ops.py).
"""
from __future__ import annotations

from collections.abc import Callable

from compiler.registry import registrar

KERNELS: dict[str, Callable] = {}
kernel = registrar(KERNELS)   # @kernel(*ops): the kernel of each IR op in `ops`
