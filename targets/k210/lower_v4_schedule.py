"""Node order for a small file: put CPU bodies where the KPU layers' alignment gaps would be.

A kpu_conv2d body starts its batch-norm table at the next 256-aligned file offset (kmodel-v4.md §10.2), so
between two KPU layers up to G bytes of other bodies cost nothing: they only shrink the next layer's
first gap. G is known in advance: the previous layer ends `align8(weights)` bytes after a 256-aligned
offset and the next one has a 120-byte fixed part, so G = -(align8(W) + 120) mod 256 (before the first
layer, the same from the start of the bodies). Bodies beyond G push the layer's tables one or more
256-byte blocks further. The v0.2 runtime runs nodes in file order, so any order that respects the data
dependencies computes the same thing; this one moves CPU steps between the gaps ("slots") of the KPU
layers, never across a producer or a consumer, until no move makes the file smaller. KPU layers keep
their order and `kpu_upload`s stay where they are (moving one would lengthen a KPU RAM lifetime).
"""
from __future__ import annotations

import dataclasses

from targets.k210 import kmodel_v4 as k4
from targets.k210.bits import Writer, align_up

KPU_TABLES_AT = 120          # bytes of a kpu_conv2d body before its first (256-aligned) table


def body_size(body) -> int:
    """Bytes of a non-KPU body in the file, padding included (independent of the ranges' values)."""
    dummy = dataclasses.replace(body, **{f.name: _dummy(getattr(body, f.name)) for f in dataclasses.fields(body)})
    w = Writer()
    k4.write_body(dummy, w)
    return align_up(w.pos, 8)


def _dummy(value):
    from targets.k210.lower_v4_core import Buffer
    if isinstance(value, Buffer):
        return k4.NO_RANGE
    if isinstance(value, tuple) and value and all(isinstance(v, Buffer) for v in value):
        return (k4.NO_RANGE,) * len(value)
    return value


def _dependencies(steps) -> list[set[int]]:
    """For each step, the earlier steps that write bytes it reads (views compare byte ranges of a root)."""
    writers: dict = {}
    for i, s in enumerate(steps):
        for b in s.writes:
            writers.setdefault(b.root, []).append((i, b.root_offset, b.size))
    deps = []
    for i, s in enumerate(steps):
        d = set()
        for b in s.reads:
            lo, hi = b.root_offset, b.root_offset + b.size
            d.update(j for j, o, n in writers.get(b.root, ()) if j != i and o < hi and lo < o + n)
        deps.append(d)
    return deps


def _overflow(c: int, free: int | None) -> int:
    """Extra file bytes of `c` body bytes in a slot with `free` gap bytes (None: after the last layer)."""
    if free is None:
        return c
    return 0 if c <= free else align_up(c - free, 256)


def order_for_kpu_alignment(steps: list, bodies_start: int) -> list:
    """The steps reordered as described in the module docstring (unchanged without KPU layers)."""
    is_kpu = [s.body.opcode == k4.KpuConv2D.opcode for s in steps]
    layers = [i for i, k in enumerate(is_kpu) if k]
    if not layers:
        return steps
    number = {i: n for n, i in enumerate(layers)}
    free = [(-(bodies_start + KPU_TABLES_AT)) % 256]
    free += [(-(align_up(steps[i].body.weights.size, 8) + KPU_TABLES_AT)) % 256 for i in layers[:-1]]
    free.append(None)                                    # the tail, after the last layer
    size = {i: body_size(s.body) for i, s in enumerate(steps) if not is_kpu[i]}
    slot, k = {}, 0
    for i in range(len(steps)):
        if is_kpu[i]:
            k += 1
        else:
            slot[i] = k
    deps = _dependencies(steps)
    users: list[set[int]] = [set() for _ in steps]
    for i, d in enumerate(deps):
        for j in d:
            users[j].add(i)
    fill = [0] * len(free)
    for i, t in slot.items():
        fill[t] += size[i]

    def where(j: int) -> int:            # the slot a step sits in; a layer sits between its two slots
        return slot[j] if j in slot else number[j]

    movable = [i for i in slot if steps[i].body.opcode != k4.KpuUpload.opcode]
    changed = True
    while changed:
        changed = False
        for i in movable:
            lo = max((where(p) + (1 if is_kpu[p] else 0) for p in deps[i]), default=0)
            hi = min((where(u) for u in users[i]), default=len(free) - 1)
            here, n = slot[i], size[i]
            leave = _overflow(fill[here] - n, free[here]) - _overflow(fill[here], free[here])
            best = None
            for t in range(lo, hi + 1):
                if t == here:
                    continue
                gain = leave + _overflow(fill[t] + n, free[t]) - _overflow(fill[t], free[t])
                if gain < 0 and (best is None or (gain, abs(t - here)) < best[0]):
                    best = ((gain, abs(t - here)), t)
            if best is not None:
                t = best[1]
                fill[here] -= n
                fill[t] += n
                slot[i] = t
                changed = True
    order = []
    for t in range(len(free)):
        order += [steps[i] for i in sorted(i for i in slot if slot[i] == t)]
        if t < len(layers):
            order.append(steps[layers[t]])
    return order
