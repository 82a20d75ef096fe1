"""A progress bar on a terminal, silence in pipes and CI."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_enabled(stream=None) -> bool:
    """True only on an interactive terminal outside CI."""
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("CI")


def progress(items: Iterable[T], total: int | None = None, label: str = "", stream=None) -> Iterator[T]:
    """Yield `items`, drawing `label [#####.....] k/n` on stderr when it is a terminal."""
    stream = stream or sys.stderr
    if not progress_enabled(stream):
        yield from items
        return
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    width = 30
    for k, item in enumerate(items):
        yield item
        if total:
            done = width * (k + 1) // total
            stream.write(f"\r{label} [{'#' * done}{'.' * (width - done)}] {k + 1}/{total}")
        else:
            stream.write(f"\r{label} {k + 1}")
        stream.flush()
    stream.write("\n")
    stream.flush()
