"""compiler/blas.py: the compile's BLAS thread limit, read back through threadpoolctl (not kpuc's code)."""
from __future__ import annotations

import numpy as np
import pytest

from compiler.blas import blas_threads


def _openblas_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    # numpy's own OpenBLAS: after other tests, scipy's may be loaded too (it is not the one kpuc limits)
    pools = [p for p in threadpoolctl.threadpool_info()
             if p["internal_api"] == "openblas" and "numpy" in p["filepath"]]
    if not pools:
        pytest.skip("numpy is not linked with OpenBLAS here")
    return pools[0]["num_threads"]


def test_one_thread_inside_and_the_count_restored_after(monkeypatch):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = _openblas_threads()
    with blas_threads(1):
        assert _openblas_threads() == 1
        a = np.arange(16.0).reshape(4, 4)
        assert np.array_equal(a @ a.T, np.einsum("ij,kj->ik", a, a))
    assert _openblas_threads() == before


def test_an_explicit_environment_setting_wins(monkeypatch):
    before = _openblas_threads()
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", str(before))
    with blas_threads(1):
        assert _openblas_threads() == before


@pytest.mark.parametrize("d", [1, 7, 300])
def test_in_place_inverse_cholesky_is_numpys_bit_for_bit(d):
    """inv_cholesky_upper makes numpy's own LAPACK calls on its own buffers: the very bits of
    np.linalg.cholesky(np.linalg.inv(a)), transposed."""
    from compiler.blas import inv_cholesky_upper
    rng = np.random.default_rng(d)
    x = rng.integers(-255, 256, (d, d + 5)).astype(np.float64)
    a = x @ x.T + np.eye(d)
    want = np.linalg.cholesky(np.linalg.inv(a)).T
    got = inv_cholesky_upper(a.copy())
    assert np.array_equal(got, want)
    with blas_threads(1):
        assert np.array_equal(inv_cholesky_upper(a.copy()), np.linalg.cholesky(np.linalg.inv(a)).T)


def test_a_singular_matrix_is_refused_as_numpy_refuses_it():
    from compiler.blas import inv_cholesky_upper
    with pytest.raises(np.linalg.LinAlgError):
        inv_cholesky_upper(np.zeros((4, 4)))
