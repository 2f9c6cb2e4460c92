"""The small least-squares solver of the PSF fits (LAPACK dgelsd, as numpy's ``lstsq``)."""

from __future__ import annotations

import functools

import numpy as np
from scipy.linalg import lapack

from .. import _linalg_cy

__all__ = ["BAD_CHISQ", "QR_FIRST", "lstsq"]

#: A failed least-squares fit's chi^2 (rank-deficient or too few rows).
BAD_CHISQ = 1e30
#: Least-squares problems of at least this many matrix entries are reduced to their triangular
#: factor before LAPACK (see :func:`lstsq`). OpenBLAS runs the level-2 calls of smaller ones
#: (below 2304 x 4 = 9216 entries) on one thread anyway; they keep LAPACK's own path.
QR_FIRST = 4096


@functools.lru_cache(maxsize=256)
def _gelsd_work(m: int, n: int) -> tuple[int, int]:
    """LAPACK dgelsd workspace sizes for an (m, n) problem with one right-hand side."""
    work, iwork, info = lapack.dgelsd_lwork(m, n, 1)
    if info != 0:
        raise np.linalg.LinAlgError(f"dgelsd_lwork failed (info={info})")
    return int(work), int(iwork)


def lstsq(A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """Minimum-norm least squares; chi^2 = 1e30 when rank-deficient or rows <= columns.

    This is numpy's ``lstsq(A, b, rcond=-1)`` (SVD, LAPACK dgelsd, singular values counted
    above machine epsilon times the largest) called through scipy's thin LAPACK wrapper,
    which costs a third less per call on these small systems. A large tall ``A`` is first
    reduced to its triangular factor ``R`` (``A = QR``, the step dgelsd itself starts with)
    by single-threaded Householder reflections, so that dgelsd only sees the ``n x n``
    problem, and the residual is summed without BLAS: a threaded BLAS woke its threads for
    the ``m x n`` problem of every peak and made crowded parents 10-30 times slower.
    """
    m, n = A.shape
    if m == 0 or n == 0:
        return np.zeros(n), BAD_CHISQ
    if m > n and m * n >= QR_FIRST:  # the same minimum-norm solution and singular values
        A = np.ascontiguousarray(A, dtype=np.float64)
        b = np.ascontiguousarray(b, dtype=np.float64)
        R, c = np.empty((n, n)), np.empty(n)
        _linalg_cy.householder_reduce(A, b, R, c)
        sol, rank = _gelsd(R, c)
        return sol, (BAD_CHISQ if rank < n else _linalg_cy.residual_ss(A, b, sol))
    sol, rank = _gelsd(A, b)
    if rank < n or m <= n:
        return sol, BAD_CHISQ
    res = b - A @ sol
    return sol, float(res @ res)


def _gelsd(A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int]:
    """LAPACK dgelsd (rcond = eps) of a small system: the solution and the rank."""
    m, n = A.shape
    lwork, liwork = _gelsd_work(m, n)
    if m < n:  # LAPACK wants the right-hand side padded to max(m, n) rows
        b = np.concatenate([b, np.zeros(n - m)])
    x, _, rank, info = lapack.dgelsd(A, b, lwork, liwork, -1.0)
    if info != 0:
        raise np.linalg.LinAlgError(f"SVD did not converge in the PSF fit (info={info})")
    return x[:n].copy(), int(rank)
