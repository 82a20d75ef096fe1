"""The KPU RAM feature-map layout: dense C×H×W u8 <-> 64-byte rows (kmodel-v3.md §9.2, kmodel-v4.md §10.1).

The layout depends on the width alone:  W ≤ 16: 4 channels share a row, 16 bytes apart;  17 ≤ W ≤ 32:
2 channels, 32 bytes apart;  W ≥ 33: one channel per row group, ceil(W/64) rows per image line.
Byte of (c, y, x) = (c div g)·row_len·H·64 + (c mod g)·pitch + y·row_len·64 + x.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from compiler.errors import KpucError

KPU_RAM_BYTES = 2 * 1024 * 1024          # kpu.md §1
KPU_ROW_BYTES = 64
KPU_RAM_ROWS = KPU_RAM_BYTES // KPU_ROW_BYTES


class RowLayout(NamedTuple):
    groups: int      # channels per 64-byte row (`coef_group` / `wb_group`)
    row_len: int     # 64-byte rows per image line (`row_switch_addr`)
    pitch: int       # bytes between the channels that share a row


def row_layout(width: int) -> RowLayout:
    """The row layout the KPU uses for a map of this width."""
    if width <= 16:
        return RowLayout(4, 1, 16)
    if width <= 32:
        return RowLayout(2, 1, 32)
    return RowLayout(1, -(-width // 64), 64)


def kpu_rows(channels: int, height: int, width: int) -> int:
    """Size of a C×H×W map in 64-byte rows: row_len·H·ceil(C/g)."""
    g, row_len, _ = row_layout(width)
    return row_len * height * -(-channels // g)


def channel_switch_rows(height: int, width: int) -> int:
    """Rows from one channel group to the next (`channel_switch_addr`): row_len·H."""
    return row_layout(width).row_len * height


def byte_offsets(channels: int, height: int, width: int) -> np.ndarray:
    """int64 [C, H, W]: the byte of each element, relative to the map's first row."""
    g, row_len, pitch = row_layout(width)
    c = np.arange(channels, dtype=np.int64)[:, None, None]
    y = np.arange(height, dtype=np.int64)[None, :, None]
    x = np.arange(width, dtype=np.int64)[None, None, :]
    return (c // g) * (row_len * height * 64) + (c % g) * pitch + y * (row_len * 64) + x


def _span(ram: np.ndarray, row: int, shape) -> tuple[int, int]:
    start, size = row * KPU_ROW_BYTES, kpu_rows(*shape) * KPU_ROW_BYTES
    if row < 0 or start + size > len(ram):
        raise KpucError(f"KPU map {tuple(shape)} at row {row} ({size // 64} rows) exceeds KPU RAM "
                        f"({len(ram) // 64} rows)")
    return start, size


def upload(ram: np.ndarray, row: int, x: np.ndarray) -> None:
    """Write a dense u8 C×H×W map into KPU RAM at `row`; bytes outside the map's elements are untouched."""
    x = np.asarray(x, np.uint8)
    start, _ = _span(ram, row, x.shape)
    if x.shape[2] % 64 == 0:     # the layout is dense C×H×W (kmodel-v3.md §9.2)
        ram[start:start + x.size] = x.reshape(-1)
    else:
        ram[start + byte_offsets(*x.shape)] = x


def download(ram: np.ndarray, row: int, shape) -> np.ndarray:
    """Read a dense u8 C×H×W map from KPU RAM at `row`."""
    start, _ = _span(ram, row, shape)
    if shape[2] % 64 == 0:
        return ram[start:start + int(np.prod(shape))].reshape(shape).copy()
    return ram[start + byte_offsets(*shape)]


def to_rows(x: np.ndarray) -> bytes:
    """The map as it sits in KPU RAM (don't-care bytes zero), kpu_rows(...)·64 bytes."""
    ram = np.zeros(kpu_rows(*x.shape) * KPU_ROW_BYTES, np.uint8)
    upload(ram, 0, x)
    return ram.tobytes()


def from_rows(data: bytes, shape) -> np.ndarray:
    """Inverse of `to_rows`."""
    return download(np.frombuffer(data, np.uint8), 0, shape)
