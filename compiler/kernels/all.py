"""Imports every kernel family so that KERNELS is complete."""
from compiler.kernels import conv, elementwise, pool, resize, shape  # noqa: F401
from compiler.kernels import kpu  # noqa: F401  (the float KPU layer)

__all__ = ["conv", "elementwise", "pool", "resize", "shape"]
