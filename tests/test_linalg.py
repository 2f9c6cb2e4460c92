"""The BLAS-free kernels of ``cdeblend._linalg_cy`` against numpy, and the single-band
least-squares and PSF shift built on them against their matrix definitions."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdeblend import _linalg_cy
from cdeblend.single_band.lstsq import BAD_CHISQ, QR_FIRST, lstsq
from cdeblend.single_band.psf import lanczos5, shift_image


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 60), n=st.integers(1, 12))
def test_householder_reduce_matches_the_normal_equations(seed, m, n):
    rng = np.random.default_rng(seed)
    m = max(m, n)
    a = rng.normal(size=(m, n)) * rng.uniform(0.1, 10.0, size=n)
    if seed % 3 == 0:
        a[:, 0] = 0.0  # a zero column: no reflection
    b = rng.normal(size=m)
    r, c = np.full((n, n), np.nan), np.full(n, np.nan)
    _linalg_cy.householder_reduce(a, b, r, c)
    assert np.all(np.tril(r, -1) == 0)
    scale = np.abs(a).max() ** 2 * m
    # A = QR with Q orthonormal: R^T R = A^T A and R^T c = A^T b
    np.testing.assert_allclose(r.T @ r, a.T @ a, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(r.T @ c, a.T @ b, rtol=0, atol=1e-12 * scale)
    # and R is numpy's up to the signs of its rows
    ref = np.linalg.qr(a, mode="r")
    np.testing.assert_allclose(np.abs(r), np.abs(ref), rtol=0, atol=1e-12 * np.abs(ref).max())


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 50), n=st.integers(1, 10))
def test_residual_ss_matches_numpy(seed, m, n):
    rng = np.random.default_rng(seed)
    a, b, x = rng.normal(size=(m, n)), rng.normal(size=m), rng.normal(size=n)
    assert _linalg_cy.residual_ss(a, b, x) == pytest.approx(np.sum((b - a @ x) ** 2), rel=1e-12)


def test_kernels_check_shapes():
    a, b = np.ones((3, 4)), np.ones(3)
    with pytest.raises(ValueError, match="m >= n"):
        _linalg_cy.householder_reduce(a, b, np.empty((4, 4)), np.empty(4))
    with pytest.raises(ValueError, match="b must be"):
        _linalg_cy.householder_reduce(a.T.copy(), b, np.empty((3, 3)), np.empty(2))
    with pytest.raises(ValueError, match="b must be"):
        _linalg_cy.residual_ss(a, np.ones(4), np.ones(4))


@pytest.mark.parametrize("m,n", [(600, 9), (3000, 12), (400, 40)])
def test_large_lstsq_is_numpys(m, n):
    """The reduced path (m n >= QR_FIRST) gives numpy's lstsq and its chi^2."""
    assert m * n >= QR_FIRST
    rng = np.random.default_rng(m + n)
    a = rng.normal(size=(m, n)) * rng.uniform(0.01, 100.0, size=n)
    b = a @ rng.normal(size=n) + rng.normal(size=m)
    sol, chi2 = lstsq(a[:, :], b)
    ref, res, rank, sv = np.linalg.lstsq(a, b, rcond=-1)
    cond = sv[0] / sv[-1]
    np.testing.assert_allclose(
        sol, ref, rtol=0, atol=1e3 * np.finfo(float).eps * cond * np.abs(ref).max()
    )
    assert chi2 == pytest.approx(float(res[0]), rel=1e-10)
    # a non-contiguous view (the deblender passes column slices) is the same problem
    wide = np.hstack([a, rng.normal(size=(m, 3))])
    np.testing.assert_array_equal(lstsq(wide[:, :n], b)[0], sol)
    # a zero column: a rank below n is reported as before
    dup = np.hstack([a, a[:, :1]])
    dup[:, -1] = 0.0
    assert lstsq(dup, b)[1] == BAD_CHISQ


def test_shift_image_is_the_banded_matrix_product():
    rng = np.random.default_rng(4)
    for h, w, dy, dx in [
        (41, 41, 0.3, -0.45),
        (9, 30, -0.9, 0.2),
        (5, 5, 0.5, 0.5),
        (61, 17, 0.0, 0.7),
    ]:
        img = rng.random((h, w))
        ly = lanczos5(np.subtract.outer(np.arange(h), np.arange(h)) - dy)
        lx = lanczos5(np.subtract.outer(np.arange(w), np.arange(w)) - dx)
        ref = ly @ img @ lx.T
        np.testing.assert_allclose(
            shift_image(img, dy, dx), ref / ref.sum(), rtol=0, atol=1e-14 * np.abs(ref).max()
        )
