"""Datasets for inference and calibration, with ncc's semantics.

- `image`: each file decoded with Pillow, resized (bilinear) to the model input's H x W, RGB (or
  grayscale for a 1-channel input), float in [0, 1], NCHW, then `(x - mean) / std`.
- `raw`: each file is exactly the input tensor as little-endian float32 (or the input's own dtype,
  uint8 for a uint8 kmodel); `.npy` files are read with numpy.
Files are taken from a directory recursively, in sorted order, so runs are reproducible.

A model with several inputs takes one entry per input and sample (`iter_feeds`): either a sub-folder
per input, named like the input ('/' and ':' in the name may be written '_'), whose k-th files form
sample k; or one .npz per sample holding an array per input name. An .npz also feeds a single input.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
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


def as_input_dtype(arr: np.ndarray, dtype: str, where: str) -> np.ndarray:
    """`arr` as the input's dtype; refuses a cast that would change values (float values for a uint8 kmodel
    input are not its codes: numpy would wrap -0.5 to 0 and 300 to 44 without a word)."""
    target = np.dtype(dtype)
    if arr.dtype == target or target.kind == "f":
        return arr.astype(target)
    lim = np.iinfo(target)
    ok = arr.size == 0 or (np.all(np.isfinite(arr)) and arr.min() >= lim.min and arr.max() <= lim.max
                           and (arr.dtype.kind in "iub" or np.all(arr == np.round(arr))))
    if not ok:
        raise KpucError(f"{where}: {arr.dtype} values for a {dtype} input, not its codes (this quantized input takes "
                        f"{dtype} codes {lim.min}..{lim.max}: give those or an image dataset; a kmodel compiled "
                        "with --input-type float takes float values)")
    return arr.astype(target)


def load_raw(path: Path, shape: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    """A raw little-endian binary (or .npy) holding exactly one input tensor."""
    if path.suffix == ".npy":
        arr = np.load(path)
        if arr.size != int(np.prod(shape)):
            raise KpucError(f"dataset file {path}: {arr.size} values, the input needs {int(np.prod(shape))}")
        return as_input_dtype(arr.reshape(shape), dtype, f"dataset file {path}")
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


@dataclass(frozen=True)
class FeedSample:
    stem: str
    feeds: dict[str, np.ndarray]   # input name -> array shaped like that input


def _folder_name(name: str) -> str:
    return name.replace("/", "_").replace(":", "_")


def _input_folders(root: Path, names: list[str]) -> list[Path] | None:
    """The sub-folder of each input, or None when `root` is not laid out that way."""
    if not root.is_dir():
        return None
    folders = []
    for name in names:
        found = [root / n for n in dict.fromkeys((name, _folder_name(name))) if (root / n).is_dir()]
        if not found:
            return None
        folders.append(found[0])
    return folders


def _load_npz(path: Path, inputs) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        missing = [v.name for v in inputs if v.name not in npz.files]
        if missing:
            raise KpucError(f"dataset file {path}: no array for input(s) {', '.join(missing)} "
                            f"(it holds {', '.join(npz.files) or 'nothing'})")
        feeds = {}
        for v in inputs:
            a = npz[v.name]
            if a.size != int(np.prod(v.shape)):
                raise KpucError(f"dataset file {path}: '{v.name}' has {a.size} values, the input {list(v.shape)} "
                                f"needs {int(np.prod(v.shape))}")
            feeds[v.name] = as_input_dtype(a.reshape(v.shape), v.dtype, f"dataset file {path}, '{v.name}'")
        return feeds


def iter_feeds(dataset: str | Path, inputs: Sequence, *, format: str = "image", mean: float = 0.0,
               std: float = 1.0) -> Iterator[FeedSample]:
    """One FeedSample per sample for a model whose graph inputs are `inputs` (Values: name, shape, dtype).

    One input: every file (images, raw, .npy, or an .npz holding the input by name). Several inputs:
    a sub-folder per input name, or one .npz per sample (see the module docstring)."""
    if format not in ("image", "raw"):
        raise KpucError(f"unknown dataset format '{format}' (image or raw)")
    if std == 0:
        raise KpucError("--input-std must not be 0")
    root = Path(dataset)
    names = [v.name for v in inputs]
    folders = _input_folders(root, names) if len(inputs) > 1 else None
    if folders is not None:
        per_input = [list(iter_dataset(f, v.shape, format=format, dtype=v.dtype, mean=mean, std=std))
                     for f, v in zip(folders, inputs)]
        counts = {len(p) for p in per_input}
        if len(counts) != 1:
            raise KpucError(f"dataset {root}: the input folders hold different numbers of files "
                            + ", ".join(f"{f.name}: {len(p)}" for f, p in zip(folders, per_input)))
        for samples in zip(*per_input):
            yield FeedSample(samples[0].stem, {v.name: s.data for v, s in zip(inputs, samples)})
        return
    files = list_files(root)
    if len(inputs) > 1 and not all(p.suffix == ".npz" for p in files):
        raise KpucError(f"dataset {root}: the model has {len(inputs)} inputs ({', '.join(names)}); give a "
                        "sub-folder per input name or one .npz per sample keyed by input name")
    for path in files:
        stem = (path.relative_to(root) if root.is_dir() else Path(path.name)).with_suffix("").as_posix()
        if path.suffix == ".npz":
            yield FeedSample(stem, _load_npz(path, inputs))
        else:
            v = inputs[0]
            data = load_image(path, v.shape, mean, std, v.dtype) if format == "image" else load_raw(path, v.shape, v.dtype)
            yield FeedSample(stem, {v.name: data})


def count_samples(dataset: str | Path, inputs: Sequence) -> int:
    """How many samples iter_feeds yields (for progress bars)."""
    folders = _input_folders(Path(dataset), [v.name for v in inputs]) if len(inputs) > 1 else None
    return len(list_files(folders[0] if folders else dataset))


def load_feeds(dataset: str | Path, inputs: Sequence, **kw) -> list:
    """Calibration samples: the input array for a one-input model, else {input name: array} per sample."""
    samples = [s.feeds for s in iter_feeds(dataset, inputs, **kw)]
    return [s[inputs[0].name] for s in samples] if len(inputs) == 1 else samples
