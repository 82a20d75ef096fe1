"""Imports every kernel family so that KERNELS is complete."""
from compiler.kernels import conv, elementwise, logic, pool, resize, shape  # noqa: F401

__all__ = ["conv", "elementwise", "logic", "pool", "resize", "shape"]
