"""How big a tensor an importer may create, checked before any array is allocated.

A K210 has 8 MiB of RAM, so real models stay far below the default (2^26 elements, 256 MiB of
float32); a damaged or hostile file claiming a 1e9-element input or a Tile by 16M must fail fast
instead of eating the host's memory. `KPUC_MAX_ELEMENTS` (or `kpuc --max-elements`) raises it.
"""
from __future__ import annotations

import math
import os

from compiler.errors import KpucError

DEFAULT_MAX_ELEMENTS = 1 << 26
ENV = "KPUC_MAX_ELEMENTS"


class TooLarge(KpucError):
    """A tensor would exceed the element limit."""


def max_elements() -> int:
    """The limit in force: $KPUC_MAX_ELEMENTS if set (a positive integer), else the default."""
    raw = os.environ.get(ENV)
    if not raw:
        return DEFAULT_MAX_ELEMENTS
    try:
        value = int(raw)
    except ValueError:
        raise KpucError(f"{ENV}={raw!r} is not an integer") from None
    if value < 1:
        raise KpucError(f"{ENV}={value} must be at least 1")
    return value


def check_elements(shape, what: str) -> int:
    """The element count of `shape`; raises TooLarge (naming `what`) past the limit or on a negative dim."""
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise KpucError(f"{what}: shape {dims} has a negative dimension")
    count = math.prod(dims)
    limit = max_elements()
    if count > limit:
        raise TooLarge(f"{what}: shape {dims} has {count:,} elements, over kpuc's limit of {limit:,} "
                       f"(set {ENV} to raise it)")
    return count


def check_padded_input(shape, padding, what: str) -> int:
    """A sliding window's input as its kernel pads it (N, C, H + top + bottom, W + left + right) must be
    under the limit too: a damaged pool or conv can ask for a window of millions with padding to match."""
    n, c, h, w = (int(d) for d in shape)
    (top, bottom), (left, right) = padding
    return check_elements((n, c, h + int(top) + int(bottom), w + int(left) + int(right)), f"{what} (padded input)")
