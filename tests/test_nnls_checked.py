"""The checked NNLS (cdeblend._nnls): the optimality test by hand, the solver against a
brute-force enumeration of supports, scipy's answer kept bit for bit where it is optimal,
and a singular Gram matrix of duplicated components (docs/precision.md)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.optimize import nnls
from test_nnls import sparse_design

from cdeblend import _nnls, spectra


def brute_nnls(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
    """The smallest squared residual over x >= 0 and a minimiser, by trying every support:
    the unconstrained least squares on each subset of columns, kept when non-negative."""
    n = a.shape[1]
    best = (float(b @ b), np.zeros(n))
    for k in range(1, n + 1):
        for support in itertools.combinations(range(n), k):
            xs = np.linalg.lstsq(a[:, support], b, rcond=None)[0]
            if np.all(xs >= 0):
                x = np.zeros(n)
                x[list(support)] = xs
                r = float(np.sum((a @ x - b) ** 2))
                if r < best[0]:
                    best = (r, x)
    return best


def test_optimality_by_hand():
    """a = I: the minimiser of ||x - b|| over x >= 0 is max(b, 0)."""
    a = np.eye(3)
    b = np.array([2.0, -1.0, 0.5])
    assert _nnls.is_nnls_optimal(a, b, np.array([2.0, 0.0, 0.5]))
    assert not _nnls.is_nnls_optimal(a, b, np.array([1.0, 0.0, 0.5]))  # free, gradient -1
    assert not _nnls.is_nnls_optimal(a, b, np.array([2.0, 0.0, 0.0]))  # at 0, gradient -0.5
    assert not _nnls.is_nnls_optimal(a, b, np.array([2.0, -0.1, 0.5]))  # infeasible
    assert not _nnls.is_nnls_optimal(a, b, np.array([2.0, 0.0, np.nan]))


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force(seed):
    """Random small problems, half of them with a duplicated column (rank deficient), some
    with fewer rows than columns: the residual is the enumeration's, and the answer passes
    the optimality test."""
    rng = np.random.default_rng(seed)
    for _ in range(40):
        m, n = int(rng.integers(2, 9)), int(rng.integers(2, 7))
        a = rng.normal(size=(m, n))
        if rng.random() < 0.5:
            a[:, int(rng.integers(1, n))] = a[:, 0]
        b = rng.normal(size=m)
        x = _nnls.nnls_checked(a, b)
        best, _ = brute_nnls(a, b)
        assert np.all(x >= 0)
        assert np.sum((a @ x - b) ** 2) == pytest.approx(best, rel=1e-9, abs=1e-12)
        assert _nnls.is_nnls_optimal(a, b, x)


def test_keeps_scipys_optimal_answer():
    """Where scipy's NNLS is optimal the result is scipy's, bit for bit: the check changes
    nothing there."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        a = rng.normal(size=(30, 8))
        b = rng.normal(size=30)
        x = nnls(a, b, maxiter=400)[0]
        assert _nnls.is_nnls_optimal(a, b, x)
        np.testing.assert_array_equal(_nnls.nnls_checked(a, b, maxiter=400), x)


def test_bvls_taken_when_scipy_is_not_optimal(monkeypatch):
    """A wrong first answer (scipy's, replaced here by a non-optimal point) is not returned:
    the BVLS answer, with the enumeration's residual, is."""
    import scipy.optimize

    rng = np.random.default_rng(9)
    a = rng.normal(size=(12, 5))
    b = rng.normal(size=12)
    monkeypatch.setattr(scipy.optimize, "nnls", lambda a, b, maxiter=None: (np.ones(5), 0.0))
    x = _nnls.nnls_checked(a, b)
    assert np.sum((a @ x - b) ** 2) == pytest.approx(brute_nnls(a, b)[0], rel=1e-9)


def test_singular_gram_of_duplicated_components():
    """Columns repeated (two or three peaks on one pixel) make the Gram matrix singular and
    send a band to the eigen path of ``_nnls_scipy``: its objective is the minimum of the
    problem without the copies (the copies' SEDs add up to the one SED). With seed 31, scipy
    1.17's NNLS on the eigen-reduced problem stopped 0.15 above that minimum, at a point
    whose free gradient was 0.23, on an OpenBLAS Haswell kernel."""
    for seed in (31, 32, 33):
        rng = np.random.default_rng(seed)
        a = sparse_design(rng, 90, 48, "single")
        design = np.column_stack([a, a[:, 10], a[:, 40], a[:, 40]])
        d = a @ rng.uniform(0.5, 2.0, size=90) + rng.normal(size=a.shape[0])
        gram, rhs = design.T @ design, design.T @ d
        x = spectra._nnls_scipy(gram, rhs)
        ref = nnls(a, d, maxiter=5000)[0]
        assert np.all(x >= 0)
        objective = x @ gram @ x - 2 * rhs @ x
        reference = ref @ (a.T @ a) @ ref - 2 * (a.T @ d) @ ref
        assert objective == pytest.approx(reference, rel=1e-10)
