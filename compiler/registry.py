"""One decorator factory for every op-keyed table (kernels, op definitions, converters, lowerings).

`register = registrar(TABLE)` gives a decorator `@register(*keys)` that files the function under each
key and returns it unchanged, so one function may serve several keys (torch.fx's converter registry).
A key registered twice with different functions is a programming error: the second import would
silently win, so it raises instead. `store` replaces the plain `table[key] = fn` for tables that keep
more than one entry per key (the ONNX converters are kept per opset).
"""
from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any


def registrar(table: MutableMapping, store: Callable[..., None] | None = None) -> Callable:
    """A decorator factory `register(*keys, **options)` filling `table` (via `store(table, key, fn,
    **options)` when given)."""
    def register(*keys, **options) -> Callable[[Any], Any]:
        def decorate(fn):
            for key in keys:
                if store is not None:
                    store(table, key, fn, **options)
                    continue
                if options:
                    raise TypeError(f"unexpected registration options {sorted(options)}")
                if table.get(key, fn) is not fn:
                    raise ValueError(f"{key!r} is registered twice ({table[key]!r} and {fn!r})")
                table[key] = fn
            return fn
        return decorate
    return register
