"""Datasets for inference and calibration, with ncc's semantics.

- `image`: each file decoded with Pillow, resized (bilinear) to the model input's H x W, RGB (or
  grayscale for a 1-channel input), float in [0, 1], NCHW, then `(x - mean) / std`.
- `raw`: each file is exactly the input tensor as little-endian float32 (or the input's own dtype,
  uint8 for a uint8 kmodel); `.npy` files are read with numpy.
Files are taken from a directory recursively, in sorted order, so runs are reproducible.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compiler.errors import KpucError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass(frozen=True)
class Sample:
    path: Path
    stem: str          # relative path without suffix, '/'-separated: names the output files
    data: np.ndarray   # shaped like the model input


def list_files(dataset: str | Path) -> list[Path]:
    """Every file of a dataset (a file or a directory, recursively), sorted; hidden files ignored."""
    root = Path(dataset)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise KpucError(f"dataset {root}: no such file or directory")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise KpucError(f"dataset {root}: no files")
    return files


def load_image(path: Path, shape: tuple[int, ...], mean: float = 0.0, std: float = 1.0,
               dtype: str = "float32") -> np.ndarray:
    """Decode one image into an NCHW tensor of `shape` (N must be 1).

    A uint8 input (a quantized kmodel) takes the raw 0..255 pixels, as ncc did: no mean/std."""
    from PIL import Image, UnidentifiedImageError
    if len(shape) != 4 or shape[0] != 1 or shape[1] not in (1, 3):
        raise KpucError(f"image datasets need a 1x1xHxW or 1x3xHxW model input, this one is {list(shape)}; "
                        "use --dataset-format raw")
    _, c, h, w = shape
    try:
        with Image.open(path) as img:
            img = img.convert("L" if c == 1 else "RGB")
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.float32)
    except (UnidentifiedImageError, OSError) as e:
        raise KpucError(f"dataset file {path}: not a readable image ({e})") from None
    x = pixels[None, None] if c == 1 else pixels.transpose(2, 0, 1)[None]
    if dtype == "uint8":
        return x.astype(np.uint8)
    return ((x / 255.0 - mean) / std).astype(np.float32)


def load_raw(path: Path, shape: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    """A raw little-endian binary (or .npy) holding exactly one input tensor."""
    if path.suffix == ".npy":
        arr = np.load(path)
        if arr.size != int(np.prod(shape)):
            raise KpucError(f"dataset file {path}: {arr.size} values, the input needs {int(np.prod(shape))}")
        return arr.reshape(shape).astype(dtype)
    want = int(np.prod(shape)) * np.dtype(dtype).itemsize
    data = path.read_bytes()
    if len(data) != want:
        raise KpucError(f"dataset file {path}: {len(data)} bytes, the input {list(shape)} {dtype} needs {want}")
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).astype(dtype)


def iter_dataset(dataset: str | Path, shape: tuple[int, ...], *, format: str = "image", dtype: str = "float32",
                 mean: float = 0.0, std: float = 1.0) -> Iterator[Sample]:
    """Yield one Sample per dataset file, prepared for an input of `shape`."""
    if format not in ("image", "raw"):
        raise KpucError(f"unknown dataset format '{format}' (image or raw)")
    if std == 0:
        raise KpucError("--input-std must not be 0")
    root = Path(dataset)
    for path in list_files(root):
        rel = path.relative_to(root) if root.is_dir() else Path(path.name)
        stem = rel.with_suffix("").as_posix()
        if format == "image":
            data = load_image(path, shape, mean, std, dtype)
        else:
            data = load_raw(path, shape, dtype)
        yield Sample(path, stem, data)
