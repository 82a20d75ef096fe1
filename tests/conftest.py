"""Suite-wide checks.

Every kmodel the suite writes is also run in the oracle: after a test that used `tmp_path` passes, each
`*.kmodel` under it that kpuc reads as a one-input v3/v4 file runs in ../shared/oracle's runtime (v3run,
v4run: the SDK's and nncase's own runtime code) and in kpuc's interpreter on one deterministic random input
of the file's dtype and shape; a differing float32 value, or a file the oracle refuses, fails the test.
Files kpuc itself refuses (tests of malformed input) are left alone. Nothing happens when the oracle is
absent. Each distinct file is run once per session.
"""
from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

import pytest

from compiler.errors import KpucError
from oracle_run import compare_with_oracle, oracle_program
from targets.k210.kmodel import kmodel_inputs, read_kmodel

_verdicts: dict[bytes, str | None] = {}   # sha256 of a file -> what was wrong with it, or None
_ran = {"files": 0, "seconds": 0.0}       # files run in both runtimes, and the time it took


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield   # re-raises when the test failed: then there is nothing to add
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if tmp_path is not None:
        problems = [p for f in sorted(Path(tmp_path).rglob("*.kmodel")) if (p := _oracle_verdict(f))]
        if problems:
            pytest.fail("kmodel(s) written by this test run differently in the oracle runtime:\n"
                        + "\n".join(problems), pytrace=False)
    return result


def pytest_terminal_summary(terminalreporter):
    """One line: how many written kmodels went through the oracle, how long it took, how many differed."""
    if _ran["files"]:
        differing = sum(1 for v in _verdicts.values() if v)
        terminalreporter.write_line(f"oracle check: {_ran['files']} kmodel file(s) written by the tests run in the "
                                    f"oracle runtime and in kpuc ({_ran['seconds']:.1f} s), {differing} differing")


def _oracle_verdict(path: Path) -> str | None:
    """None when the file runs identically in the oracle and in kpuc (or cannot be checked), else why not."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).digest()
    if digest not in _verdicts:
        _verdicts[digest] = _compare(data, int.from_bytes(digest[:4], "little"))
    verdict = _verdicts[digest]
    return None if verdict is None else f"{path.name}: {verdict}"


def _compare(data: bytes, seed: int) -> str | None:
    try:
        kmodel = read_kmodel(data)
        if len(kmodel_inputs(kmodel)) != 1:
            return None
    except KpucError:
        return None   # not a kmodel kpuc runs: a test of bad input
    program = oracle_program(kmodel.version)
    if program is None:
        return None
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kpuc-oracle-") as workdir:
        try:
            result = compare_with_oracle(data, Path(workdir), seed, program)
        except (AssertionError, KpucError) as e:
            return f"{type(e).__name__}: {e}"
        finally:
            _ran["files"] += 1
            _ran["seconds"] += time.perf_counter() - start
    if result.differing:
        return f"{result.differing} of {result.values} float32 values differ ({result.detail})"
    return None
