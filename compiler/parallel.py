"""A small thread pool for the compile's big numpy work (bias correction's KPU layers, GPTQ Gram matrices).

numpy releases the GIL inside its array loops, einsum and BLAS calls, so two threads keep both cores of a
K210 developer's laptop-class machine busy on maps of a few hundred kilobytes and more. Only work whose result
does not depend on the schedule goes here: each task writes its own slice of an output, or returns an exact
integer sum that the caller adds up in task order, so the kmodel bytes are the same with any thread count.
One thread (the calling one) unless KPUC_THREADS says more.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_pool: ThreadPoolExecutor | None = None
M_ARENA_MAX = -8            # glibc mallopt parameter


def _one_malloc_arena() -> None:
    """glibc gives each new thread its own malloc arena, and memory one arena frees is not reused by another:
    with big numpy temporaries on both threads the peak RSS grew by half (ulffd_landmark 173 -> 267 MiB).
    One arena keeps it where one thread has it; the big allocations hardly contend for its lock."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(1))
    except (OSError, AttributeError):       # not glibc: nothing to do
        pass


def workers() -> int:
    """Threads to use: $KPUC_THREADS, else 1. Measured on the 2-core bench machine with one other busy
    process (bench/bench_compile.py, best of 3): ulffd_landmark 6.08 s with one thread, 6.30 s with two,
    mobilenet 1.22 s / 1.33 s (its maps are small: the GIL between numpy calls dominates), so two threads
    are opt-in (KPUC_THREADS=2) until an idle machine shows them winning."""
    try:
        wanted = int(os.environ.get("KPUC_THREADS", "1"))
    except ValueError:
        wanted = 1
    return max(1, wanted)


def parallel_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """[fn(item) for item in items], the calls spread over the pool; results in item order."""
    global _pool
    items = list(items)
    count = workers()
    if count < 2 or len(items) < 2:
        return [fn(item) for item in items]
    if _pool is None or _pool._max_workers != count:
        _one_malloc_arena()
        _pool = ThreadPoolExecutor(count, thread_name_prefix="kpuc")
    return list(_pool.map(fn, items))


__all__ = ["parallel_map", "workers"]
