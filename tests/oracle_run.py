"""Run one kmodel in the oracle runtime (../shared/oracle: v3run / v4run, nncase's and the SDK's own runtime
code built for the host) and in kpuc's interpreter on the same input bytes, and count the float32 values
that differ. Shared by the oracle property test and the suite-wide check in tests/conftest.py.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared_data import ORACLE
from targets.k210.kmodel import kmodel_inputs, read_kmodel, run_kmodel


def oracle_program(version: int) -> Path | None:
    """The runtime for kmodel `version`, or None when the reference set lacks it (or it cannot run)."""
    program = ORACLE / f"v{version}run"
    return program if program.is_file() and os.access(program, os.X_OK) else None


def random_input(shape, dtype: str, seed: int) -> np.ndarray:
    """A deterministic input of the kmodel's own dtype: all 256 codes for uint8, N(0, 1) for float32."""
    rng = np.random.default_rng(seed)
    if dtype == "uint8":
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype(np.float32)


@dataclass(frozen=True)
class Comparison:
    values: int           # float32 values compared
    differing: int        # values whose bits differ (any NaN equals any NaN)
    detail: str           # the first differences, for the failure message


def differing(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Mask of the float32 values whose bit patterns differ; two NaNs count as equal (payloads aside)."""
    got, want = np.asarray(got, "<f4"), np.asarray(want, "<f4")
    both_nan = np.isnan(got) & np.isnan(want)
    return (got.view("<u4") != want.view("<u4")) & ~both_nan


def compare_with_oracle(kmodel: bytes, workdir: Path, seed: int, program: Path | None = None,
                        x: np.ndarray | None = None) -> Comparison:
    """Run `kmodel` (v3 or v4) on one input (`x`, or a deterministic random one) in the oracle and in kpuc's
    interpreter.

    Raises AssertionError when the oracle refuses to run the file or the output counts disagree."""
    k = read_kmodel(kmodel)
    program = program or oracle_program(k.version)
    assert program is not None, f"no oracle runtime for kmodel v{k.version}"
    ((shape, dtype),) = kmodel_inputs(k)
    x = random_input(shape, dtype, seed) if x is None else np.asarray(x, dtype).reshape(shape)
    workdir.mkdir(parents=True, exist_ok=True)
    model_path, input_path, prefix = workdir / "kmodel.bin", workdir / "input.bin", workdir / "oracle"
    model_path.write_bytes(kmodel)
    input_path.write_bytes(x.tobytes())
    r = subprocess.run([program, model_path, prefix, input_path], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{program.name} exit {r.returncode}: {r.stderr.strip() or r.stdout.strip()}"
    got = run_kmodel(k, [x])
    want = [np.fromfile(workdir / f"oracle.out{i}.bin", "<f4") for i in range(len(got))]
    assert not (workdir / f"oracle.out{len(got)}.bin").exists(), "the oracle wrote more outputs than kpuc"
    values = bad = 0
    lines = []
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.size == w.size, f"output {i}: kpuc gives {g.size} values, the oracle {w.size}"
        mask = differing(g, w)
        values, bad = values + w.size, bad + int(mask.sum())
        for j in np.flatnonzero(mask)[:5]:
            lines.append(f"out{i}[{j}]: kpuc {g[j]!r} oracle {w[j]!r}")
    return Comparison(values, bad, "; ".join(lines))
