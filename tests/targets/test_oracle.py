"""kpuc's kmodels in nncase's own runtimes: the oracle programs (../shared/oracle: v4run is nncase
v0.2.0-beta4's runtime, v3run the K210 SDK's v3 loader, both built for the host) run the files `kpuc compile`
writes, and `kpuc infer` on the same files and the same input bytes must give the same float32 values,
all of them (0 differing values). This, not the comparison with kpuc's own quantized executor, is what
backs the claim that kpuc's interpreter is bit-exact with nncase's runtimes on kpuc's files.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compiler.datasets import iter_dataset, list_files
from shared_data import DIGITS, DIGITS_DATA, GOLDEN, ORACLE, ROOT, require
from targets.k210.kmodel import kmodel_inputs, read_kmodel

IRIS_INPUTS = GOLDEN / "iris-v4" / "inputs"
CASES = {
    # name: (model, compile options, input files: None = a few sample images as `kpuc infer` decodes them)
    "iris-float": (GOLDEN / "iris-v4" / "iris.tflite", ["--inference-type", "float"], IRIS_INPUTS),
    "digits": (DIGITS, ["--dataset", str(DIGITS_DATA)], None),
}
IMAGES = 4   # sample images per digits case


def kpuc(*args):
    r = subprocess.run([sys.executable, "-c", "import cli; cli.main()", *map(str, args)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    return r


def oracle(version: int) -> Path:
    """The runtime for kmodel `version`; skips (naming it) when the reference set lacks it."""
    program = ORACLE / f"v{version}run"
    require(program)
    if not os.access(program, os.X_OK):
        pytest.skip(f"{program} is not executable")
    return program


def raw_inputs(kmodel: bytes, source: Path | None, folder: Path) -> list[Path]:
    """The input files both runtimes read: raw bytes of input 0 in the kmodel's own dtype."""
    folder.mkdir()
    if source is not None:
        files = sorted(source.glob("*.f32"))
        for f in files:
            (folder / f"{f.stem}.bin").write_bytes(f.read_bytes())
    else:
        ((shape, dtype),) = kmodel_inputs(read_kmodel(kmodel))
        picked = list_files(DIGITS_DATA)[::len(list_files(DIGITS_DATA)) // IMAGES][:IMAGES]
        for f in picked:
            (sample,) = iter_dataset(f, shape, dtype=dtype)
            (folder / f"{f.stem}.bin").write_bytes(np.ascontiguousarray(sample.data).tobytes())
    written = sorted(folder.iterdir())
    assert written
    return written


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("name", sorted(CASES))
def test_kpuc_infer_equals_the_oracle_runtime(name, version, tmp_path):
    program = oracle(version)
    model, options, source = CASES[name]
    require(model, *([source] if source else []))
    kmodel = tmp_path / f"{name}.v{version}.kmodel"
    kpuc("compile", model, kmodel, "--kmodel-version", version, *options)
    data = kmodel.read_bytes()
    ((shape, dtype),) = kmodel_inputs(read_kmodel(data))

    # the oracle reads the file's input as kpuc does (v3run shows an FC input as 4-D NCHW: same size)
    probe = subprocess.run([program, kmodel, tmp_path / "probe"], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    m = re.search(r"input: dtype=(\w+) shape=\[([\d,]+)\]", probe.stdout)
    assert m, probe.stdout
    assert (m[1], np.prod([int(d) for d in m[2].split(",")])) == (dtype, np.prod(shape))

    inputs = raw_inputs(data, source, tmp_path / "inputs")
    kpuc("infer", kmodel, tmp_path / "kpuc", "--dataset", tmp_path / "inputs", "--dataset-format", "raw")
    compared = 0
    for f in inputs:
        assert f.stat().st_size == np.prod(shape) * np.dtype(dtype).itemsize
        prefix = tmp_path / "oracle" / f.stem
        prefix.parent.mkdir(exist_ok=True)
        r = subprocess.run([program, kmodel, prefix, f], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        want = sorted(prefix.parent.glob(f"{f.stem}.out*.bin"))
        got = sorted((tmp_path / "kpuc").glob(f"{f.stem}.out*.bin"))
        assert [p.name for p in got] == [p.name for p in want] and want
        for g, w in zip(got, want):
            np.testing.assert_array_equal(np.fromfile(g, "<f4"), np.fromfile(w, "<f4"),
                                          err_msg=f"{name} v{version} {f.stem} {w.name}")
            compared += w.stat().st_size // 4
    assert compared > 0
    print(f"\n{name} v{version}: {len(inputs)} input(s), {compared} float32 values, 0 differing")
