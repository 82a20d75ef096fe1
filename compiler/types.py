"""The static type of a tensor: shape and dtype. Its own module so the op table (compiler.ops) and
the graph (compiler.ir) both use it without importing each other both ways."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TensorType:
    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype).name)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def rank(self) -> int:
        return len(self.shape)

    def __str__(self):
        return f"{self.dtype}[{','.join(map(str, self.shape))}]"
