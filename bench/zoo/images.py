"""The zoo's photos (bench/zoo/images.json) for calibrating and judging image models.

    python bench/zoo/images.py --mirror DIR        # into $KPUC_ZOO/images/{calibration,judged}/

48 publicly released photos (faces, people, animals, objects) from the GitHub repositories of three zoo
models' authors, each pinned by commit and sha256. `role` splits them once, for every model alike: 20
calibrate, 28 are judged and never used for a choice (bench/accuracy.py).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fetch import FetchError, _from_mirror, cache_dir  # noqa: E402

IMAGES = HERE / "images.json"


def load_images(path: Path = IMAGES) -> list[dict]:
    return json.loads(path.read_text())["images"]


def image_path(entry: dict, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "images" / entry["role"] / entry["name"]


def image_folder(role: str, cache: Path | None = None) -> Path:
    """The folder of one role's photos, after `fetch_images`."""
    return (cache or cache_dir()) / "images" / role


def fetch_images(mirror: Path | None, cache: Path | None = None) -> int:
    """Bring every photo into the cache, verified by sha256; returns how many were fetched."""
    fetched = 0
    for entry in load_images():
        target = image_path(entry, cache)
        if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == entry["sha256"]:
            continue
        data = _from_mirror(entry["source"], mirror)
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise FetchError(f"{entry['name']}: sha256 differs from bench/zoo/images.json")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(target)
        fetched += 1
    return fetched


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mirror", type=Path, help="folder holding local copies of the GitHub sources")
    args = ap.parse_args(argv)
    try:
        n = fetch_images(args.mirror)
    except FetchError as e:
        print(f"images: {e}", file=sys.stderr)
        return 1
    print(f"{n} fetched, {len(load_images()) - n} cached, in {cache_dir() / 'images'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
