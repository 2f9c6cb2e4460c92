# cython: language_level=3
"""Small dense linear algebra without BLAS, for loops over peaks.

A threaded BLAS (OpenBLAS at its default thread count) wakes its threads for every
level-2 or level-3 call above a small size: on a busy machine each of the thousands of
per-peak least-squares problems of the single-band deblender then cost 10-30 times its
single-threaded time. These kernels do the large part of such problems (the ``m x n``
reduction with ``m >> n``) in single-threaded loops, so that only an ``n x n`` problem is
left to LAPACK, below the sizes at which BLAS starts threads.

- ``householder_reduce``: ``A = Q R`` by Householder reflections (LAPACK's unblocked
  ``dgeqr2``), returning ``R`` and the first ``n`` entries of ``Q^T b``. The minimum-norm
  least-squares solution of ``R x = c`` is that of ``A x = b`` (``Q`` is orthonormal: the
  singular values, hence the rank, are the same), which is also how ``dgelsd`` itself
  starts on tall matrices.
- ``residual_ss``: ``sum (b - A x)^2``.

Both trust their inputs (shapes checked by the caller) and run without the GIL above the
usual work threshold.
"""

from libc.math cimport fabs, sqrt

from ._shared.gil cimport _release_gil

import numpy as np


def householder_reduce(const double[:, ::1] a, const double[::1] b, double[:, ::1] r,
                       double[::1] c):
    """``r`` (n, n) upper triangular and ``c`` (n,) with ``A = Q [R; 0]``, ``c = (Q^T b)[:n]``.

    ``a`` is (m, n) with ``m >= n``, ``b`` (m,); neither is modified.
    """
    cdef Py_ssize_t m = a.shape[0], n = a.shape[1]
    if m < n:
        raise ValueError(f"householder_reduce needs m >= n, got ({m}, {n})")
    if b.shape[0] != m or r.shape[0] != n or r.shape[1] != n or c.shape[0] != n:
        raise ValueError("householder_reduce: b must be (m,), r (n, n) and c (n,)")
    # columns contiguous (the reflections work down columns), b as column n
    work_arr = np.empty((n + 1, m), dtype=np.float64)
    cdef double[:, ::1] w = work_arr
    if _release_gil(<double>m * n * n):
        with nogil:
            _householder(a, b, w, r, c)
    else:
        _householder(a, b, w, r, c)


cdef int _householder(const double[:, ::1] a, const double[::1] b, double[:, ::1] w,
                      double[:, ::1] r, double[::1] c) except -1 nogil:
    cdef Py_ssize_t m = a.shape[0], n = a.shape[1], i, j, k
    cdef double alpha, scale, ss, xnorm, beta, tau, dot, v
    for i in range(m):
        for j in range(n):
            w[j, i] = a[i, j]
        w[n, i] = b[i]
    for j in range(n):
        # the reflection H = I - tau v v^T (v[j] = 1) that maps w[j, j:] to (beta, 0, ...)
        alpha = w[j, j]
        scale = 0.0
        for i in range(j + 1, m):
            if fabs(w[j, i]) > scale:
                scale = fabs(w[j, i])
        xnorm = 0.0
        if scale > 0:
            ss = 0.0
            for i in range(j + 1, m):
                v = w[j, i] / scale
                ss += v * v
            xnorm = scale * sqrt(ss)
        if xnorm == 0.0:
            continue  # already in triangular form: H = I (tau = 0)
        scale = fabs(alpha) if fabs(alpha) > xnorm else xnorm
        beta = scale * sqrt((alpha / scale) ** 2 + (xnorm / scale) ** 2)
        if alpha > 0:
            beta = -beta
        tau = (beta - alpha) / beta
        v = 1.0 / (alpha - beta)
        for i in range(j + 1, m):
            w[j, i] *= v
        w[j, j] = beta
        for k in range(j + 1, n + 1):  # apply H to the later columns and to b
            dot = w[k, j]
            for i in range(j + 1, m):
                dot += w[j, i] * w[k, i]
            dot *= tau
            w[k, j] -= dot
            for i in range(j + 1, m):
                w[k, i] -= dot * w[j, i]
    for j in range(n):
        for k in range(n):
            r[j, k] = w[k, j] if k >= j else 0.0
        c[j] = w[n, j]
    return 0


def residual_ss(const double[:, ::1] a, const double[::1] b, const double[::1] x):
    """``sum_i (b_i - sum_j A_ij x_j)^2`` accumulated in double, rows in order."""
    cdef Py_ssize_t m = a.shape[0], n = a.shape[1]
    cdef double total
    if b.shape[0] != m or x.shape[0] != n:
        raise ValueError("residual_ss: b must be (m,) and x (n,) for A (m, n)")
    if _release_gil(<double>m * n):
        with nogil:
            total = _residual_ss(a, b, x)
    else:
        total = _residual_ss(a, b, x)
    return total


cdef double _residual_ss(const double[:, ::1] a, const double[::1] b,
                         const double[::1] x) noexcept nogil:
    cdef Py_ssize_t i, j
    cdef double total = 0.0, res
    for i in range(a.shape[0]):
        res = b[i]
        for j in range(a.shape[1]):
            res -= a[i, j] * x[j]
        total += res * res
    return total
