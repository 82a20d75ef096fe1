"""The zoo's photos (bench/zoo/images.json) and the scoring of bench/accuracy.py."""
from __future__ import annotations

import hashlib
import re
import sys

import numpy as np
import pytest

from shared_data import ROOT

sys.path[:0] = [str(ROOT / "bench" / "zoo"), str(ROOT / "bench")]
from images import image_path, load_images  # noqa: E402

IMAGES = load_images()


def test_photos_split_once_into_20_calibration_and_at_least_20_judged():
    roles = [i["role"] for i in IMAGES]
    assert roles.count("calibration") == 20 and roles.count("judged") >= 20
    assert len({i["sha256"] for i in IMAGES}) == len({i["name"] for i in IMAGES}) == len(IMAGES)
    for i in IMAGES:
        assert i["license"] and re.fullmatch(r"[0-9a-f]{40}", i["source"]["commit"])
        assert re.fullmatch(r"[0-9a-f]{64}", i["sha256"]) and i["size"] > 0


def test_both_halves_hold_faces_and_other_scenes():
    for role in ("calibration", "judged"):
        repos = {i["source"]["repo"] for i in IMAGES if i["role"] == role}
        assert len(repos) >= 2, role


@pytest.mark.parametrize("entry", IMAGES, ids=lambda i: i["name"])
def test_cached_photo_matches(entry):
    path = image_path(entry)
    if not path.exists():
        pytest.skip(f"{path} not fetched (bench/zoo/images.py --mirror DIR)")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]


def test_score_takes_each_images_worst_output():
    import accuracy
    ref = [[np.array([1.0, 0.0]), np.array([0.0, 2.0, 0.0])], [np.array([0.9, 1.0]), np.array([1.0, 1.0, 1.0])]]
    got = [[np.array([1.0, 1.0]), np.array([0.0, 3.0, 0.0])], [np.array([1.0, 0.9]), np.array([1.0, 1.0, 1.0])]]
    res = accuracy.score(got, ref, classifier=True)
    image1 = 1.8 / 1.81                 # output 0 of image 1; its output 1 agrees exactly
    assert res["worst"] == pytest.approx(1 / np.sqrt(2)) and res["mean"] == pytest.approx((1 / np.sqrt(2) + image1) / 2)
    assert res["top1"] == 0.5          # image 1's top class moves from 1 to 0
    assert accuracy.cosine(np.zeros(3), np.zeros(3)) == 1.0


def test_manifest_range_maps_to_kpuc_mean_and_std():
    import accuracy
    for low, high in ((-1, 1), (0, 1), (0, 255), (-0.5, 0.5)):
        mean, std = accuracy._range_to_mean_std((low, high))
        assert (0 - mean) / std == pytest.approx(low) and (1 - mean) / std == pytest.approx(high)
