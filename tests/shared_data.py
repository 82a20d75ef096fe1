"""Where the tests find their data: the repository (ROOT) and the reference set beside it.

The reference set (golden kmodels, sample TFLite models, oracle runtimes) is `../shared` next to the
repository, or `$KPUC_SHARED`. A clone without it still collects and runs: nothing here reads a file at
import time, and a test that needs a missing file is skipped with a reason naming that file.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("KPUC_SHARED", ROOT.parent / "shared"))
GOLDEN = SHARED / "golden"
TFLITE_OPS = SHARED / "models" / "tflite-ops"
KMODELS = SHARED / "kmodels"
ORACLE = SHARED / "oracle"

# The bundled sample model and its calibration images (always in the repository).
DIGITS = ROOT / "models" / "digits_cnn.onnx"
DIGITS_DATA = ROOT / "models" / "digits"
MOBILENET = TFLITE_OPS / "mobilenet_v1_0.25_128.tflite"


def _missing(paths) -> list[Path]:
    return [Path(p) for p in paths if not Path(p).exists()]


def _reason(missing: list[Path]) -> str:
    shown = ", ".join(str(p) for p in missing[:3]) + (" ..." if len(missing) > 3 else "")
    return f"reference data missing: {shown} (../shared next to the repository, or set KPUC_SHARED)"


def needs(*paths) -> pytest.MarkDecorator:
    """A skipif mark: the test runs only when every path exists; the reason names the missing ones."""
    missing = _missing(paths)
    return pytest.mark.skipif(bool(missing), reason=_reason(missing) if missing else "")


def needs_shared(*relative: str) -> pytest.MarkDecorator:
    """`needs` for paths relative to SHARED, e.g. needs_shared("golden/yolo20-v3/yolo.kmodel")."""
    return needs(*(SHARED / r for r in relative))


def require(*paths) -> None:
    """Skip the running test (or fixture) unless every path exists."""
    __tracebackhide__ = True  # the skip is reported at the caller's line, not here
    missing = _missing(paths)
    if missing:
        pytest.skip(_reason(missing))


def file_params(paths, ids=lambda p: Path(p).name) -> list:
    """Each path as one parameter, skipped (naming it) when the file is missing."""
    return [pytest.param(p, marks=needs(p), id=ids(p)) for p in paths]


def glob_params(folder: Path, pattern: str, keep=lambda p: True, ids=lambda p: p.name) -> list:
    """The sorted files of `folder` matching `pattern` (and `keep`) as parameters; when the folder is
    missing, a single parameter skipped with a reason naming it, so collection never fails."""
    if not folder.is_dir():
        return [pytest.param(folder / pattern, marks=needs(folder), id=f"missing-{folder.name}")]
    return [pytest.param(p, id=ids(p)) for p in sorted(folder.glob(pattern)) if keep(p)]
