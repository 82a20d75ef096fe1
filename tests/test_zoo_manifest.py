"""The real-model zoo's manifest (bench/zoo/manifest.json) is complete and its cached files match it."""
from __future__ import annotations

import hashlib
import json
import re
import sys

import pytest

from shared_data import ROOT

sys.path.insert(0, str(ROOT / "bench" / "zoo"))
from fetch import cache_dir, check_model_bytes, model_path  # noqa: E402

ENTRIES = json.loads((ROOT / "bench" / "zoo" / "manifest.json").read_text())["models"]


def test_manifest_lists_enough_distinct_models():
    assert len(ENTRIES) >= 40
    assert len({e["name"] for e in ENTRIES}) == len(ENTRIES)
    assert len({e["sha256"] for e in ENTRIES}) == len(ENTRIES)
    assert {e["format"] for e in ENTRIES} == {"tflite", "onnx"}


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["name"])
def test_entry_is_complete(entry):
    assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
    assert 0 < entry["size"] <= 50 * 2**20
    assert entry["license"] and entry["task"] and len(entry["input"]["range"]) == 2
    source = entry["source"]
    if source["kind"] == "pypi":
        assert source["file"] and source["member"].endswith("." + entry["format"])
    else:
        assert re.fullmatch(r"[0-9a-f]{40}", source["commit"]) and source["path"].endswith("." + entry["format"])


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e["name"])
def test_cached_file_matches_manifest(entry):
    path = model_path(entry)
    if not path.exists():
        pytest.skip(f"{path} not fetched (bench/zoo/fetch.py; cache {cache_dir()})")
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert check_model_bytes(data, entry["format"]) is None


def test_an_lfs_pointer_is_not_a_model():
    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 123\n"
    assert "LFS" in check_model_bytes(pointer, "tflite")
    assert check_model_bytes(b"\0\0\0\0TFL3", "tflite") is None
    assert check_model_bytes(b"garbage", "tflite") is not None
