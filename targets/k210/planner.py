"""Memory planning: buffer lifetimes over a schedule, and an offset for every buffer in its pool.

A schedule is an ordered list of `Step`s (a kmodel layer, or a pseudo step such as the graph input),
each reading and writing named `Buffer`s. A buffer lives from the first step that touches it to the
last one, both included, so a step's outputs never share memory with its inputs (no layer of either
kmodel runtime works in place); buffers in `keep` (graph outputs) live to the end. Two buffers
*conflict* when their lifetimes intersect; a plan gives conflicting buffers disjoint address ranges.

Pools are format-neutral: `Pool(name, capacity, align, unit, strategy)`. kmodel v3 uses main memory
in bytes (8-aligned, kmodel-v3.md §9.1) and KPU RAM in 64-byte rows (32768, §9.2).

Strategies:
- `nncase_main` / `nncase_kpu` replay nncase v0.1's online allocators exactly (kmodel-v3.md §12), so
  files match nncase's address choices. `nncase_kpu_from_end` is the KPU allocator of the nncase v0.1
  that made MaixPy's v3 files (mnist, facedetect): it always cuts from the end, where rc5 (yolo)
  alternates ends. Their first-fit choices fragment: nncase failed on models whose live data fitted.
  When a replay does not fit the capacity, the offline planner takes over.
- `offline` sees every lifetime up front. It tries several placement orders (by size, lifetime, start
  time, area, conflict weight) with best-fit and first-fit gaps and keeps the lowest high-water mark.
  If none fits the capacity, an exact search runs: every feasible placement can be "dropped" until each
  buffer rests at 0 or on the end of a conflicting buffer, and placing buffers in order of address
  enumerates exactly those placements, so the search finds a placement whenever one exists (within its
  node budget). A plan is refused only when the live data at some step exceeds the capacity (the error
  names that step, what it needs and what is free) or, for pathological fragmentation, when the search
  budget runs out (said so in the error).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from compiler.errors import DoesNotFit, KpucError

STRATEGIES = ("offline", "nncase_main", "nncase_kpu", "nncase_kpu_from_end")
SEARCH_BUDGET = 200_000    # nodes of the exact search before it gives up


@dataclass(frozen=True)
class Pool:
    """A memory: `capacity` in units (None = grows as needed), offsets and sizes in multiples of `align`."""
    name: str
    capacity: int | None = None
    align: int = 1
    unit: str = "bytes"
    strategy: str = "offline"
    label: str = ""          # for messages ("main memory", "KPU RAM")

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown allocation strategy {self.strategy!r} (one of {STRATEGIES})")

    def rounded(self, size: int) -> int:
        return max(-(-size // self.align) * self.align, self.align)

    @property
    def title(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class Buffer:
    """A tensor to place: `size` in its pool's units (rounded up to the pool's alignment by the planner)."""
    name: str
    pool: str
    size: int


@dataclass(frozen=True)
class Step:
    """One scheduled operation: a layer name and the buffers it reads and writes, in operand order."""
    name: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Allocation:
    buffer: Buffer
    offset: int
    size: int          # rounded to the pool's alignment
    first: int         # step index where the buffer becomes live
    last: int          # last step index where it is live (len(steps) for kept buffers)

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass
class PoolPlan:
    pool: Pool
    used: int                    # high-water mark: max offset + size over the pool's allocations
    live_peak: int               # max over steps of the live data (a lower bound for `used`)
    peak_step: str | None        # the step where the live data peaks
    strategy: str                # the strategy whose placement was kept
    lowest: int | None = None    # lowest offset allocated (nncase's `max_start_address` for KPU RAM)


@dataclass
class Plan:
    allocations: dict[str, Allocation]
    pools: dict[str, PoolPlan]

    def offset(self, buffer: str) -> int:
        return self.allocations[buffer].offset


# ---------------------------------------------------------------- lifetimes
def lifetimes(steps: list[Step], buffers: dict[str, Buffer], keep: Iterable[str] = ()) -> dict[str, tuple[int, int]]:
    """(first, last) step index of every buffer touched by the schedule; kept buffers last to len(steps)."""
    span: dict[str, list[int]] = {}
    for i, s in enumerate(steps):
        for b in s.writes + s.reads:
            if b not in buffers:
                raise KpucError(f"step '{s.name}' uses an undeclared buffer '{b}'")
            span.setdefault(b, [i, i])[1] = i
    for b in keep:
        if b in span:
            span[b][1] = len(steps)
    return {b: (f, l) for b, (f, l) in span.items()}


def _load(first: np.ndarray, last: np.ndarray, sizes: np.ndarray, n_steps: int) -> np.ndarray:
    """Live data at each step index 0..n_steps (inclusive, for kept buffers)."""
    delta = np.zeros(n_steps + 2, np.int64)
    np.add.at(delta, first, sizes)
    np.add.at(delta, last + 1, -sizes)
    return np.cumsum(delta)[:n_steps + 1]


# ---------------------------------------------------------------- nncase v0.1's allocators (kmodel-v3.md §12)
class _NncaseArena:
    """A list of [start, size, used] blocks; picks the free block with the highest index that fits."""

    def __init__(self, capacity: int | None, ping_pong: bool):
        self.blocks: list[list] = [] if capacity is None else [[0, capacity, False]]
        self.grows, self.ping_pong, self.from_end = capacity is None, ping_pong, True
        self.max_end, self.lowest = 0, None

    def alloc(self, n: int) -> int | None:
        fits = [i for i, (_, size, used) in enumerate(self.blocks) if not used and size >= n]
        if not fits:
            if not self.grows:
                return None
            if self.blocks and not self.blocks[-1][2]:
                self.blocks[-1][1] = n            # enlarge the free last block
            else:
                self.blocks.append([self.max_end, n, False])
            self.max_end = self.blocks[-1][0] + n
            fits = [len(self.blocks) - 1]
        i = fits[-1]
        start, size, _ = self.blocks[i]
        if size == n:
            self.blocks[i][2] = True
        elif not self.ping_pong or self.from_end:
            self.blocks[i:i + 1] = [[start, size - n, False], [start + size - n, n, True]]
            start += size - n
        else:
            self.blocks[i:i + 1] = [[start, n, True], [start + n, size - n, False]]
        if self.ping_pong and size != n:
            self.from_end = not self.from_end
        self.lowest = start if self.lowest is None else min(self.lowest, start)
        return start

    def free(self, start: int) -> None:
        i = next(k for k, b in enumerate(self.blocks) if b[0] == start and b[2])
        self.blocks[i][2] = False
        if i + 1 < len(self.blocks) and not self.blocks[i + 1][2]:
            self.blocks[i][1] += self.blocks.pop(i + 1)[1]
        if i > 0 and not self.blocks[i - 1][2]:
            self.blocks[i - 1][1] += self.blocks.pop(i)[1]


def _replay_nncase(pool: Pool, steps: list[Step], names: list[str], sizes: dict[str, int],
                   life: dict[str, tuple[int, int]]) -> dict[str, int] | None:
    """Offsets as nncase v0.1 would choose them, or None if its allocator runs out of room."""
    kpu = pool.strategy.startswith("nncase_kpu")
    arena = _NncaseArena(pool.capacity if kpu else None, ping_pong=pool.strategy == "nncase_kpu")
    mine = set(names)
    offsets: dict[str, int] = {}
    for i, s in enumerate(steps):
        # A buffer first seen as an input (a graph input) exists before the step; then the outputs.
        for b in dict.fromkeys(s.reads + s.writes):
            if b in mine and b not in offsets:
                offsets[b] = arena.alloc(sizes[b])
                if offsets[b] is None:
                    return None
        for b in dict.fromkeys(s.reads + s.writes):
            if b in mine and life[b][1] == i:
                arena.free(offsets[b])
    return offsets


# ---------------------------------------------------------------- the offline planner
class _Problem:
    """Buffers of one pool as arrays: sizes, lifetimes and the conflict matrix."""

    def __init__(self, names: list[str], sizes: dict[str, int], life: dict[str, tuple[int, int]]):
        self.names = names
        self.size = np.array([sizes[b] for b in names], np.int64)
        self.first = np.array([life[b][0] for b in names], np.int64)
        self.last = np.array([life[b][1] for b in names], np.int64)
        self.conflict = (self.first[:, None] <= self.last[None, :]) & (self.first[None, :] <= self.last[:, None])
        np.fill_diagonal(self.conflict, False)

    def orders(self) -> list[list[int]]:
        """Candidate placement orders, each a deterministic permutation (ties broken by index)."""
        n, idx = len(self.names), np.arange(len(self.names))
        length = self.last - self.first + 1
        weight = self.conflict.astype(np.int64) @ self.size + self.size
        keys = [(-self.size, self.first), (-length, -self.size), (self.first, -self.size),
                (-self.size * length, self.first), (-weight, -self.size)]
        seen, out = set(), []
        for primary, secondary in keys:
            order = tuple(np.lexsort((idx, secondary, primary)).tolist())
            if order not in seen and n:
                seen.add(order)
                out.append(list(order))
        return out or [[]]

    def place(self, order: list[int], best_fit: bool) -> np.ndarray:
        """Greedy: each buffer goes into the best-fitting (or lowest) gap between its placed conflicts."""
        offset = np.full(len(self.names), -1, np.int64)
        for b in order:
            others = np.flatnonzero(self.conflict[b] & (offset >= 0))
            ranges = sorted(zip(offset[others].tolist(), (offset[others] + self.size[others]).tolist()))
            size, cursor, best = int(self.size[b]), 0, None
            for lo, hi in ranges:
                gap = lo - cursor
                if gap >= size and (best is None or (best_fit and gap < best[0])):
                    best = (gap, cursor)
                    if not best_fit:
                        break
                cursor = max(cursor, hi)
            offset[b] = best[1] if best is not None else cursor
        return offset

    def search(self, capacity: int, budget: int = SEARCH_BUDGET) -> np.ndarray | None:
        """Exact search for a placement below `capacity`, in order of address (see the module docstring)."""
        n = len(self.names)
        offset = np.full(n, -1, np.int64)
        n_steps = int(self.last.max()) + 1 if n else 0
        live = np.zeros((n, n_steps + 1), bool)
        for b in range(n):
            live[b, self.first[b]:self.last[b] + 1] = True
        # Buffers with the same size and lifetime are interchangeable: only the first unplaced one branches.
        kind = {}
        twin = [kind.setdefault((int(self.size[b]), int(self.first[b]), int(self.last[b])), b) for b in range(n)]
        order = sorted(range(n), key=lambda b: (-int(self.size[b]), b))
        nodes = 0

        def feasible_bound(lo: int) -> bool:
            # At every step, the unplaced live buffers must fit above `lo` beside what is placed above `lo`.
            unplaced = offset < 0
            above = np.where(unplaced, 0, np.clip(offset + self.size - np.maximum(offset, lo), 0, None))
            need = (self.size * unplaced) @ live + above @ live
            return bool((need <= capacity - lo).all())

        def dfs(lo: int, prev: int) -> bool:
            nonlocal nodes
            if (offset >= 0).all():
                return True
            nodes += 1
            if nodes > budget or not feasible_bound(lo):
                return False
            tried_kinds = set()
            for b in order:
                if offset[b] >= 0 or twin[b] in tried_kinds:
                    continue
                tried_kinds.add(twin[b])
                others = np.flatnonzero(self.conflict[b] & (offset >= 0))
                ends = offset[others] + self.size[others]
                size = int(self.size[b])
                for o in sorted({0, *ends.tolist()}):
                    if o < lo or (o == lo and b < prev) or o + size > capacity:
                        continue
                    if ((o < ends) & (offset[others] < o + size)).any():
                        continue
                    offset[b] = o
                    if dfs(o, b):
                        return True
                    offset[b] = -1
                    if nodes > budget:
                        return False
            return False

        found = dfs(0, -1)
        return offset.copy() if found else None


def _offline(problem: _Problem, capacity: int | None) -> tuple[np.ndarray | None, str]:
    best, how = None, ""
    for k, order in enumerate(problem.orders()):
        for best_fit in (True, False):
            off = problem.place(order, best_fit)
            used = int((off + problem.size).max(initial=0))
            if best is None or used < best[0]:
                best, how = (used, off), f"offline (order {k}, {'best' if best_fit else 'first'} fit)"
    if capacity is None or best[0] <= capacity:
        return best[1], how
    found = problem.search(capacity)
    return (found, "offline (exact search)") if found is not None else (None, "")


# ---------------------------------------------------------------- entry point
def plan_memory(steps: list[Step], buffers: Iterable[Buffer], pools: Iterable[Pool],
                keep: Iterable[str] = ()) -> Plan:
    """Place every buffer the schedule touches; raises KpucError naming the step where a pool overflows."""
    steps, pools = list(steps), {p.name: p for p in pools}
    buffers = {b.name: b for b in buffers}
    life = lifetimes(steps, buffers, keep)
    allocations: dict[str, Allocation] = {}
    reports: dict[str, PoolPlan] = {}
    for pool in pools.values():
        names = [b for b in life if buffers[b].pool == pool.name]   # in order of first use
        sizes = {b: pool.rounded(buffers[b].size) for b in names}
        problem = _Problem(names, sizes, life)
        load = _load(problem.first, problem.last, problem.size, len(steps))
        peak_at = int(np.argmax(load)) if len(load) else 0
        live_peak = int(load[peak_at]) if len(load) else 0
        peak_step = steps[min(peak_at, len(steps) - 1)].name if names else None
        if pool.capacity is not None and live_peak > pool.capacity:
            t = int(np.argmax(load > pool.capacity))
            raise DoesNotFit(_overflow_message(pool, steps, buffers, names, sizes, life, load),
                             step=steps[min(t, len(steps) - 1)].name)
        offsets, how = None, ""
        if pool.strategy != "offline":
            replay = _replay_nncase(pool, steps, names, sizes, life)
            if replay is not None and (pool.capacity is None
                                       or max((replay[b] + sizes[b] for b in names), default=0) <= pool.capacity):
                offsets, how = np.array([replay[b] for b in names], np.int64), pool.strategy
        if offsets is None:
            offsets, how = _offline(problem, pool.capacity)
        if offsets is None:
            raise DoesNotFit(
                f"{pool.title}: could not place {len(names)} buffers in {pool.capacity} {pool.unit} although the "
                f"live data never exceeds {live_peak} {pool.unit} (peak at '{peak_step}'); the exact search gave up "
                f"after {SEARCH_BUDGET} nodes", step=peak_step)
        for b, o in zip(names, offsets.tolist()):
            allocations[b] = Allocation(buffers[b], o, sizes[b], *life[b])
        used = int((offsets + problem.size).max(initial=0))
        reports[pool.name] = PoolPlan(pool, used, live_peak, peak_step, how,
                                      int(offsets.min()) if len(offsets) else None)
    missing = [b for b in life if buffers[b].pool not in pools]
    if missing:
        raise KpucError(f"buffers {missing} belong to no declared pool ({sorted(pools)})")
    return Plan(allocations, reports)


def _overflow_message(pool: Pool, steps, buffers, names, sizes, life, load) -> str:
    """Which step overflows, what it writes, what stays live across it, and what is left free."""
    t = int(np.argmax(load > pool.capacity))
    step = steps[min(t, len(steps) - 1)]
    live = [b for b in names if life[b][0] <= t <= life[b][1]]
    new = [b for b in live if b in step.writes]
    held = [b for b in live if b not in new]
    need, held_size = sum(sizes[b] for b in new), sum(sizes[b] for b in held)
    u = pool.unit

    def listing(bs):
        top = sorted(bs, key=lambda b: -sizes[b])[:4]
        more = f", +{len(bs) - 4} more" if len(bs) > 4 else ""
        return ", ".join(f"'{b}' {sizes[b]}" for b in top) + more

    return (f"{pool.title} overflows at '{step.name}': it writes {need} {u} ({listing(new) or 'nothing new'}) while "
            f"{held_size} {u} stay live ({listing(held) or 'nothing'}), leaving {pool.capacity - held_size} of "
            f"{pool.capacity} {u} free; the live data there is {int(load[t])} {u}, {int(load[t]) - pool.capacity} "
            f"{u} too many")
