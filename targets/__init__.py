"""Targets: what a model becomes after the target-neutral passes. One target today, the K210
(`targets/k210`), with its KPU ("k210") or without it ("cpu", kmodel v4 neutral ops only)."""
from __future__ import annotations

from compiler.errors import KpucError

TARGET_NAMES = ("k210", "cpu")


def get_target(name: str):
    """The target object compiler.pipeline drives (targets/k210/target.py's K210)."""
    if name not in TARGET_NAMES:
        raise KpucError(f"unknown target '{name}' (k210 or cpu)")
    from targets.k210.target import K210
    return K210(name)
