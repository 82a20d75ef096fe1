"""The same inputs give a byte-identical kmodel, whatever the interpreter's hash seed.

Two separate processes with different PYTHONHASHSEED values compile the sample model: set and dict
iteration over strings changes between them, so any order that leaks into the file shows up here.
"""
import os
import subprocess
import sys

import pytest

from shared_data import DIGITS, DIGITS_DATA, ROOT


def compile_in_process(output, version: int, hash_seed: str) -> bytes:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    r = subprocess.run([sys.executable, "-c", "import cli; cli.main()", "compile", str(DIGITS), str(output),
                        "--dataset", str(DIGITS_DATA), "--kmodel-version", str(version)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    assert r.returncode == 0, r.stderr
    return output.read_bytes()


@pytest.mark.parametrize("version", [3, 4])
def test_sample_model_compiles_to_the_same_bytes_under_two_hash_seeds(version, tmp_path):
    first = compile_in_process(tmp_path / "seed1.kmodel", version, "1")
    second = compile_in_process(tmp_path / "seed12345.kmodel", version, "12345")
    assert first[:4] == (b"LDMK" if version == 4 else (3).to_bytes(4, "little"))
    assert first == second
