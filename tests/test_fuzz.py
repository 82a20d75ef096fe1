"""A small seeded fuzz budget in the suite: mutated ONNX and TFLite models through the CLI must
never end in an internal error, a hang or a crash (bench/fuzz.py runs the long campaigns)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import fuzz  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("fmt,cases", [("onnx", 14), ("tflite", 8)])
def test_fuzz_budget_has_no_internal_errors(fmt, cases):
    if not fuzz.seed_files(fmt):
        pytest.skip(f"no {fmt} seed models")
    res = fuzz.campaign(fmt, cases, seed=20261206, timeout=20, mem_gib=3, quiet=True)
    counts = res["counts"]
    assert sum(counts.values()) == cases
    bad = {k: v for k, v in res["examples"].items() if not k.startswith("oom")}
    assert counts["internal"] == counts["hang"] == counts["crash"] == 0, bad


def test_mutators_are_deterministic_and_change_the_bytes():
    import random
    seeds = fuzz.built_onnx_seeds()
    a = [fuzz.make_case("onnx", seeds, random.Random(f"7:{k}")) for k in range(10)]
    b = [fuzz.make_case("onnx", seeds, random.Random(f"7:{k}")) for k in range(10)]
    assert a == b
    originals = dict(seeds)
    assert sum(data != originals[name] for name, data, _ in a) >= 8


def test_classifies_an_internal_error_with_its_site(monkeypatch):
    import cli
    monkeypatch.setattr(cli, "cli", _Boom())
    r = fuzz.run_case(["info", "x.onnx"], timeout=20, mem_bytes=2 << 30)
    assert r.outcome == "internal" and "ZeroDivisionError at" in r.detail


class _Boom:
    """Stands in for the click group: fails like a kpuc bug would."""

    def main(self, **kwargs):
        return 1 // 0
