"""Imports every kernel family so that KERNELS is complete."""
