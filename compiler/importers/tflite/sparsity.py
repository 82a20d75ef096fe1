"""Sparse TFLite constants (the `sparsity` field, read by DENSIFY in newer MediaPipe models) made dense.

The format (TFLite schema, SparsityParameters): the tensor is walked in `traversal_order`, a permutation
of its dims followed by block dims (block dim j splits original dim `block_map[j]` into blocks of its
dense size). Each walked dim is DENSE (every index, `dense_size` of them) or SPARSE_CSR (per parent
position, the children `array_indices[array_segments[p]:array_segments[p + 1]]`). The buffer holds the
values of the leaves in walking order. The walk is done one level at a time over arrays of positions,
so nothing loops per element.
"""
from __future__ import annotations

import numpy as np

from compiler.errors import MalformedModel

DENSE, SPARSE_CSR = 0, 1


def _index_vector(table, type_code: int) -> np.ndarray:
    """A SparseIndexVector union (Int32Vector, Uint16Vector or Uint8Vector) as an int64 array."""
    import tflite
    cls = {1: tflite.Int32Vector, 2: tflite.Uint16Vector, 3: tflite.Uint8Vector}.get(type_code)
    if cls is None or table is None:
        raise MalformedModel(f"sparse index vector of unknown type {type_code}")
    vec = cls()
    vec.Init(table.Bytes, table.Pos)
    values = vec.ValuesAsNumpy()
    return np.asarray(values if isinstance(values, np.ndarray) else [], np.int64)


def _walk(sparsity) -> tuple[list[np.ndarray], list[int]]:
    """Per walked dim, each leaf's index along it; and each walked dim's size (dense_size or max + 1)."""
    ids, coords, sizes = np.zeros(1, np.int64), [], []
    for level in range(sparsity.DimMetadataLength()):
        meta = sparsity.DimMetadata(level)
        if meta.Format() == DENSE:
            n = int(meta.DenseSize())
            counts = np.full(len(ids), n, np.int64)
            children = (ids[:, None] * n + np.arange(n)).reshape(-1)
            index = np.tile(np.arange(n, dtype=np.int64), len(ids))
        elif meta.Format() == SPARSE_CSR:
            segments = _index_vector(meta.ArraySegments(), meta.ArraySegmentsType())
            indices = _index_vector(meta.ArrayIndices(), meta.ArrayIndicesType())
            if len(ids) and (ids.max() + 1 >= len(segments) or segments[-1] > len(indices)
                             or np.any(np.diff(segments) < 0)):
                raise MalformedModel(f"sparse dim {level}: array_segments do not fit its parents or indices")
            counts = segments[ids + 1] - segments[ids]
            starts = np.repeat(segments[ids] - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
            children = starts + np.arange(int(counts.sum()), dtype=np.int64)
            index = indices[children]
            n = int(index.max()) + 1 if index.size else 0
        else:
            raise MalformedModel(f"sparse dim {level} has unknown format {meta.Format()}")
        coords = [np.repeat(c, counts) for c in coords] + [index]
        ids, sizes = children, sizes + [n]
    return coords, sizes


def densify(values: np.ndarray, sparsity, shape: tuple[int, ...], name: str) -> np.ndarray:
    """The dense array of `shape` that the sparse `values` and their SparsityParameters describe."""
    rank = len(shape)
    order = [int(d) for d in sparsity.TraversalOrderAsNumpy()] if sparsity.TraversalOrderLength() else list(range(rank))
    block_map = [int(d) for d in sparsity.BlockMapAsNumpy()] if sparsity.BlockMapLength() else []
    if sorted(order) != list(range(rank + len(block_map))) or sparsity.DimMetadataLength() != len(order):
        raise MalformedModel(f"tensor '{name}': sparsity traversal order {order} does not fit rank {rank} "
                             f"with {len(block_map)} block dim(s)")
    coords, sizes = _walk(sparsity)
    if coords and len(coords[0]) != values.size:
        raise MalformedModel(f"tensor '{name}': its sparsity describes {len(coords[0])} values, the buffer has {values.size}")
    full = [np.zeros(values.size, np.int64) for _ in range(rank)]
    for level, dim in enumerate(order):
        if dim < rank:
            full[dim] = full[dim] + coords[level] * _block_size(dim, block_map, order, sizes, rank)
        else:
            full[block_map[dim - rank]] = full[block_map[dim - rank]] + coords[level]
    if any(np.any(c >= s) for c, s in zip(full, shape)):
        raise MalformedModel(f"tensor '{name}': a sparse index lies outside its shape {list(shape)}")
    dense = np.zeros(shape, values.dtype)
    dense[tuple(full)] = values
    return dense


def _block_size(dim: int, block_map: list[int], order: list[int], sizes: list[int], rank: int) -> int:
    """How many elements of original dim `dim` one index of its walked dim stands for."""
    if dim not in block_map:
        return 1
    return sizes[order.index(rank + block_map.index(dim))]
