# cython: language_level=3
"""Kernels of the SED fit (:mod:`cdeblend.spectra`).

- The normal equations: per-band inner products of pairs of models over the overlap of their
  boxes (:func:`gram_pairs`) and of each model with the data (:func:`data_products`), in
  double precision and a fixed order.
- :func:`cholesky_upper`: a small Cholesky factor and forward substitution.
- Non-negative least squares on the normal equations: the dense active-set method
  (:func:`nnls_gram`) and, for the large overlap groups, the sparse one (:func:`nnls_sparse`).
- :func:`connected_groups`: the overlap groups, solved one at a time.

The loops trust their inputs (``cdeblend.spectra`` builds them) and run single-threaded in a
fixed order (deterministic; a threaded LAPACK on a busy machine was what made the
initialization of large blends slow).
"""

from libc.float cimport DBL_EPSILON
from libc.math cimport INFINITY, fabs, isfinite, sqrt
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport free, malloc

from ._shared.fused cimport real
from ._shared.gil cimport _release_gil

import numpy as np


# ------------------------------------------------------------------------------------------
# The normal equations: Gram matrix, data products, Cholesky factor
# ------------------------------------------------------------------------------------------

cdef inline double _dot(const real* a, const real* b, Py_ssize_t n) noexcept nogil:
    """sum a[i] b[i] in double, in four interleaved partial sums (a fixed order, so the
    result is deterministic, and one the compiler can vectorise)."""
    cdef double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
    cdef Py_ssize_t i = 0
    while i + 4 <= n:
        s0 += <double>a[i] * <double>b[i]
        s1 += <double>a[i + 1] * <double>b[i + 1]
        s2 += <double>a[i + 2] * <double>b[i + 2]
        s3 += <double>a[i + 3] * <double>b[i + 3]
        i += 4
    while i < n:
        s0 += <double>a[i] * <double>b[i]
        i += 1
    return (s0 + s1) + (s2 + s3)


def gram_pairs(
    const real[::1] flat,
    const Py_ssize_t[::1] offsets,
    const Py_ssize_t[:, ::1] boxes,
    const Py_ssize_t[:, ::1] pairs,
    const real[:, :, ::1] weights,
    bint weighted,
    double[:, ::1] out,
):
    """Per-band inner products of pairs of arrays over the overlap of their boxes.

    Array k is ``flat[offsets[k]:].reshape(B, h_k, w_k)`` on ``boxes[k] = (y0, x0, h, w)`` (frame
    coordinates). For pair p = (k, l), ``out[p, b] = sum c_k[b] c_l[b] (w[b])`` over the common
    pixels, accumulated in double precision (row sums first, then rows in order).
    ``weights`` (B, H, W) is read only when ``weighted``.
    """
    # each array takes part in its pairs: the work is about (pairs / arrays) x the pixels
    cdef double work = <double>flat.shape[0] * pairs.shape[0] / max(boxes.shape[0], 1)
    if _release_gil(work):
        with nogil:
            _gram_pairs(flat, offsets, boxes, pairs, weights, weighted, out)
    else:
        _gram_pairs(flat, offsets, boxes, pairs, weights, weighted, out)


cdef int _gram_pairs(const real[::1] flat, const Py_ssize_t[::1] offsets,
                     const Py_ssize_t[:, ::1] boxes, const Py_ssize_t[:, ::1] pairs,
                     const real[:, :, ::1] weights, bint weighted,
                     double[:, ::1] out) except -1 nogil:
    cdef Py_ssize_t nb = out.shape[1], npairs = pairs.shape[0]
    cdef Py_ssize_t p, k, j, b, y, x, ya, yb, xa, xb, hk, wk, hl, wl
    cdef Py_ssize_t rk, rl
    cdef double acc, row
    for p in range(npairs):
        k = pairs[p, 0]
        j = pairs[p, 1]
        ya = max(boxes[k, 0], boxes[j, 0])
        xa = max(boxes[k, 1], boxes[j, 1])
        yb = min(boxes[k, 0] + boxes[k, 2], boxes[j, 0] + boxes[j, 2])
        xb = min(boxes[k, 1] + boxes[k, 3], boxes[j, 1] + boxes[j, 3])
        hk = boxes[k, 2]
        wk = boxes[k, 3]
        hl = boxes[j, 2]
        wl = boxes[j, 3]
        for b in range(nb):
            acc = 0.0
            for y in range(ya, yb):
                rk = offsets[k] + (b * hk + y - boxes[k, 0]) * wk - boxes[k, 1]
                rl = offsets[j] + (b * hl + y - boxes[j, 0]) * wl - boxes[j, 1]
                if weighted:
                    row = 0.0
                    for x in range(xa, xb):
                        row += <double>flat[rk + x] * flat[rl + x] * weights[b, y, x]
                else:
                    row = _dot(&flat[rk + xa], &flat[rl + xa], xb - xa)
                acc += row
            out[p, b] = acc
    return 0


def data_products(
    const real[::1] flat,
    const Py_ssize_t[::1] offsets,
    const Py_ssize_t[:, ::1] boxes,
    const real[:, :, ::1] data,
    const real[:, :, ::1] weights,
    bint weighted,
    double[:, ::1] out,
):
    """``out[k, b] = sum c_k[b] data[b] (w[b])`` over box k (inside the frame), in double."""
    if _release_gil(<double>flat.shape[0]):
        with nogil:
            _data_products(flat, offsets, boxes, data, weights, weighted, out)
    else:
        _data_products(flat, offsets, boxes, data, weights, weighted, out)


cdef int _data_products(const real[::1] flat, const Py_ssize_t[::1] offsets,
                        const Py_ssize_t[:, ::1] boxes, const real[:, :, ::1] data,
                        const real[:, :, ::1] weights, bint weighted,
                        double[:, ::1] out) except -1 nogil:
    cdef Py_ssize_t nb = out.shape[1], nk = out.shape[0]
    cdef Py_ssize_t k, b, y, x, y0, x0, h, w, r
    cdef double acc, row
    for k in range(nk):
        y0 = boxes[k, 0]
        x0 = boxes[k, 1]
        h = boxes[k, 2]
        w = boxes[k, 3]
        for b in range(nb):
            acc = 0.0
            for y in range(y0, y0 + h):
                r = offsets[k] + (b * h + y - y0) * w - x0
                if weighted:
                    row = 0.0
                    for x in range(x0, x0 + w):
                        row += <double>flat[r + x] * data[b, y, x] * weights[b, y, x]
                else:
                    row = _dot(&flat[r + x0], &data[b, y, x0], w)
                acc += row
            out[k, b] = acc
    return 0


def cholesky_upper(const double[:, ::1] gram, double[:, ::1] root, double[:, ::1] rhs):
    """Cholesky factor ``gram = R^T R`` (R upper triangular, written to ``root``), then
    ``rhs <- R^-T rhs`` (forward substitution, every column of ``rhs`` (n, m)).

    Single-threaded and in a fixed order (deterministic; a threaded LAPACK on a busy machine
    was what made the initialization of large blends slow).

    Returns
    -------
    float
        ``||R^-1||_F^2``, an upper bound of ``1 / lambda_min(gram)``, or -1 when ``gram`` is
        not positive definite (``root`` and ``rhs`` are then undefined).
    """
    cdef Py_ssize_t n = gram.shape[0], m = rhs.shape[1]
    cdef double total
    if _release_gil(<double>n * n * (n + m)):
        with nogil:
            total = _cholesky_upper(gram, root, rhs)
    else:
        total = _cholesky_upper(gram, root, rhs)
    return total


cdef double _cholesky_upper(const double[:, ::1] gram, double[:, ::1] root,
                            double[:, ::1] rhs) except? -2 nogil:
    cdef Py_ssize_t n = gram.shape[0], m = rhs.shape[1], i, j, k, c
    cdef double acc, d, total = 0.0
    cdef double* col
    for i in range(n):
        for j in range(n):
            root[i, j] = 0.0
    for j in range(n):
        # row j of R: R[j, j] = sqrt(G[j, j] - sum_k R[k, j]^2), R[j, i] for i > j
        acc = gram[j, j]
        for k in range(j):
            acc -= root[k, j] * root[k, j]
        if not acc > 0:
            return -1.0
        d = sqrt(acc)
        root[j, j] = d
        for i in range(j + 1, n):
            acc = gram[j, i]
            for k in range(j):
                acc -= root[k, j] * root[k, i]
            root[j, i] = acc / d
    for c in range(m):  # solve R^T y = rhs[:, c]
        for i in range(n):
            acc = rhs[i, c]
            for k in range(i):
                acc -= root[k, i] * rhs[k, c]
            rhs[i, c] = acc / root[i, i]
    # ||R^-1||_F^2 column by column: R x = e_j
    col = <double*>malloc(n * sizeof(double))
    if col == NULL:
        return INFINITY
    for j in range(n):
        for i in range(j, -1, -1):
            acc = 1.0 if i == j else 0.0
            for k in range(i + 1, j + 1):
                acc -= root[i, k] * col[k]
            col[i] = acc / root[i, i]
            total += col[i] * col[i]
    free(col)
    return total


# ------------------------------------------------------------------------------------------
# Dense NNLS (active set)
# ------------------------------------------------------------------------------------------

# Non-negative least squares on the normal equations, for cdeblend.spectra.fit_seds: minimise
# x^T G x - 2 x^T r subject to x >= 0 for a symmetric positive-definite G, by the active-set
# method of Lawson and Hanson applied to the normal equations (Bro & De Jong 1997, "A fast
# non-negativity-constrained least squares algorithm"). The passive subsystem is solved by a
# Cholesky factor of G restricted to the passive set; the factor is kept in the order the
# indices entered the set, so adding an index appends one row (what a fresh factorisation
# would compute) and dropping indices recomputes only the rows after the first one dropped.

# Status of one band's system (see nnls_gram)
cdef enum:
    _NNLS_OK = 0
    _NNLS_ILL = 1       # not finite, not positive definite or ill-conditioned: eigen path
    _NNLS_MAXITER = 2   # iteration cap reached: scipy's active set

# Index states of the active-set loop
cdef enum:
    _FREE = 0       # x_j = 0, may enter the passive set
    _PASSIVE = 1    # x_j > 0, solved for
    _SKIPPED = 2    # its passive solve was not positive (round-off): left out until x moves


cdef int _chol_row(const double[:, ::1] gram, const Py_ssize_t[::1] idx, Py_ssize_t q,
                   Py_ssize_t start, double[:, ::1] low) except -1 nogil:
    """Entries ``start .. q`` of row ``q`` of the lower factor ``L`` of ``G[idx][:, idx]``
    (``idx[:q + 1]``), rows ``< q`` and the entries ``< start`` of row ``q`` being done.

    Same operations in the same order as ``cholesky_upper`` (``L = R^T``), so the factor of
    the full matrix, hence the conditioning test, is bit for bit the one of the scipy path.
    Returns 1 when the pivot is not positive (not positive definite), else 0.
    """
    cdef Py_ssize_t i, k, iq = idx[q]
    cdef double acc
    for k in range(start, q):
        acc = gram[idx[k], iq]
        for i in range(k):
            acc -= low[k, i] * low[q, i]
        low[q, k] = acc / low[k, k]
    acc = gram[iq, iq]
    for i in range(q):
        acc -= low[q, i] * low[q, i]
    if not acc > 0:
        return 1
    low[q, q] = sqrt(acc)
    return 0


cdef inline int _forward(const double[::1] rhs, const Py_ssize_t[::1] idx, Py_ssize_t q,
                         const double[:, ::1] low, double[::1] y) except -1 nogil:
    """``y[q]`` of ``L y = r[idx]`` (``y[:q]`` done)."""
    cdef Py_ssize_t i
    cdef double acc = rhs[idx[q]]
    for i in range(q):
        acc -= low[q, i] * y[i]
    y[q] = acc / low[q, q]
    return 0


cdef int _backward(const double[:, ::1] low, const double[::1] y, Py_ssize_t p,
                   double[::1] z) except -1 nogil:
    """``z[:p] = L^-T y[:p]``, a row of ``L`` at a time (contiguous)."""
    cdef Py_ssize_t i, q
    cdef double zq
    for q in range(p):
        z[q] = y[q]
    for q in range(p - 1, -1, -1):
        zq = z[q] / low[q, q]
        z[q] = zq
        for i in range(q):
            z[i] -= low[q, i] * zq
    return 0


cdef int _active_set(const double[:, ::1] gram, const double[::1] rhs, double[::1] x,
                     double[:, ::1] low, double[::1] y, double[::1] z, double[::1] w,
                     double[::1] s, Py_ssize_t[::1] idx, Py_ssize_t[::1] state,
                     Py_ssize_t maxiter) except -1 nogil:
    """Lawson-Hanson on the normal equations from ``x = 0``; ``_NNLS_OK`` or
    ``_NNLS_MAXITER`` after ``maxiter`` passive solves (x is then not the solution)."""
    cdef Py_ssize_t n = gram.shape[0], p = 0, it = 0, best = -1, j, k, q, m, c, qmin
    cdef double tol = (n + 1) * DBL_EPSILON, t, xk, wmax, alpha, a
    for j in range(n):
        x[j] = 0.0
        state[j] = _FREE
    while True:
        # gradient w = r - G x, and s = |r| + sum |G x| bounds its round-off
        for j in range(n):
            w[j] = rhs[j]
            s[j] = fabs(rhs[j])
        for q in range(p):
            k = idx[q]
            xk = x[k]
            for j in range(n):
                t = gram[k, j] * xk
                w[j] -= t
                s[j] += fabs(t)
        # the free index of steepest descent whose passive solve keeps it positive
        while True:
            best = -1
            wmax = 0.0
            for j in range(n):
                if state[j] == _FREE and w[j] > tol * s[j] and w[j] > wmax:
                    best = j
                    wmax = w[j]
            if best < 0:
                return _NNLS_OK  # KKT: no descent direction left
            idx[p] = best
            if _chol_row(gram, idx, p, 0, low) == 0:
                _forward(rhs, idx, p, low, y)
                _backward(low, y, p + 1, z)
                if z[p] > 0:
                    break
            state[best] = _SKIPPED
        state[best] = _PASSIVE
        p += 1
        for j in range(n):
            if state[j] == _SKIPPED:
                state[j] = _FREE
        while True:  # z holds the passive solution: step towards it while it is infeasible
            it += 1
            if it > maxiter:
                return _NNLS_MAXITER
            alpha = 2.0
            qmin = -1
            for q in range(p):
                if z[q] <= 0:
                    xk = x[idx[q]]
                    a = xk / (xk - z[q])
                    if a < alpha:
                        alpha = a
                        qmin = q
            if qmin < 0:
                for q in range(p):
                    x[idx[q]] = z[q]
                break
            for q in range(p):
                k = idx[q]
                x[k] += alpha * (z[q] - x[k])
            x[idx[qmin]] = 0.0  # exactly on the bound it hit
            # drop the indices at 0; rows before the first dropped one stay valid
            c = -1
            m = 0
            for q in range(p):
                k = idx[q]
                if x[k] > 0:
                    if c >= 0:
                        idx[m] = k
                        for j in range(c):
                            low[m, j] = low[q, j]
                    m += 1
                else:
                    x[k] = 0.0
                    state[k] = _FREE
                    if c < 0:
                        c = q
            p = m
            for q in range(c, p):
                if _chol_row(gram, idx, q, c, low):
                    return _NNLS_MAXITER  # a principal submatrix of a PD matrix: round-off
                _forward(rhs, idx, q, low, y)
            _backward(low, y, p, z)


cdef int _nnls_system(const double[:, ::1] gram, const double[::1] rhs, double[::1] out,
                      double[:, ::1] low, double[::1] y, double[::1] z, double[::1] w,
                      double[::1] s, Py_ssize_t[::1] idx, Py_ssize_t[::1] state,
                      Py_ssize_t maxiter) except -1 nogil:
    """One band: the branches of ``spectra._nnls_solve`` that need no eigen-decomposition."""
    cdef Py_ssize_t n = gram.shape[0], i, j, k
    cdef double g, v, acc, trace = 0.0, total = 0.0, cut
    if n == 1:  # the clipped ratio, NaN kept as Python's max(v, 0.0) keeps it
        g = gram[0, 0]
        v = rhs[0] / g if g > 0 else 0.0
        out[0] = 0.0 if 0.0 > v else v
        return _NNLS_OK
    for i in range(n):
        if not isfinite(rhs[i]):
            return _NNLS_ILL
        for j in range(n):
            if not isfinite(gram[i, j]):
                return _NNLS_ILL
        trace += gram[i, i]
    # the conditioning test of the scipy path: ||R^-1||_F^-2 (a lower bound of the smallest
    # eigenvalue) clearly above eps * n * trace(G), with the operations of cholesky_upper
    cut = DBL_EPSILON * n * trace
    for i in range(n):
        idx[i] = i
        if _chol_row(gram, idx, i, 0, low):
            return _NNLS_ILL
    for j in range(n):  # L^T c = e_j (column j of R^-1), bottom up
        for i in range(j, -1, -1):
            acc = 1.0 if i == j else 0.0
            for k in range(i + 1, j + 1):
                acc -= low[k, i] * z[k]
            z[i] = acc / low[i, i]
            total += z[i] * z[i]
    if not (0 <= total and total * cut < 1.0):
        return _NNLS_ILL
    # the unconstrained minimiser is the answer when positive (no constraint active)
    for i in range(n):
        _forward(rhs, idx, i, low, y)
    _backward(low, y, n, z)
    for i in range(n):
        if not z[i] > 0:
            break
    else:
        for i in range(n):
            out[i] = z[i]
        return _NNLS_OK
    if _active_set(gram, rhs, out, low, y, z, w, s, idx, state, maxiter) != _NNLS_OK:
        return _NNLS_MAXITER
    return _NNLS_OK


cdef const double[:, ::1] _rhs_view(object rhs):
    """``rhs`` as a (B, n) float64 view of the NNLS entry points (ValueError naming it)."""
    try:
        return rhs
    except (TypeError, ValueError) as exc:
        raise ValueError(f"rhs must be a C-contiguous (B, n) float64 array: {exc}") from None


cdef double[:, ::1] _out_view(object out):
    """``out`` as a writable (B, n) float64 view (ValueError naming it)."""
    try:
        return out
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"out must be a writable C-contiguous (B, n) float64 array: {exc}") from None


def nnls_gram(gram, rhs, out, maxiter=None):
    """Non-negative minimisers of ``x^T G_b x - 2 x^T r_b`` for every band ``b``.

    For a well-conditioned positive-definite ``G_b`` (the Cholesky factor exists and passes
    the conditioning test of ``cdeblend.spectra``), the Lawson-Hanson active-set method on
    the normal equations, with Cholesky factors of the passive submatrices. Single-threaded,
    deterministic, without the GIL. The other bands are left to the caller (status).

    Parameters
    ----------
    gram : (B, n, n) float64 array, C-contiguous
        Symmetric matrices ``G_b`` (the upper triangle is read for the off-diagonal pivots).
    rhs : (B, n) float64 array, C-contiguous
        Right-hand sides ``r_b``.
    out : (B, n) float64 array, C-contiguous, writable
        Solutions of the bands whose status is 0 (the other rows are undefined).
    maxiter : int, optional
        Passive-set solves allowed per band; default ``50 * n`` (as the scipy path).

    Returns
    -------
    numpy.ndarray
        ``(B,)`` int status per band: 0 solved; 1 non-finite, not positive definite or
        ill-conditioned (use the eigen-decomposition path); 2 iteration cap reached (use
        scipy's NNLS). ``n == 1`` is always solved: ``max(r / g, 0)``, 0 when ``g <= 0``.

    Raises
    ------
    ValueError
        If an argument has the wrong type, dtype, layout or shape (named in the message).
    """
    cdef const double[:, :, ::1] g
    cdef const double[:, ::1] r
    cdef double[:, ::1] o
    try:
        g = gram
    except (TypeError, ValueError) as exc:
        raise ValueError(f"gram must be a C-contiguous (B, n, n) float64 array: {exc}") from None
    r = _rhs_view(rhs)
    o = _out_view(out)
    cdef Py_ssize_t nb = g.shape[0], n = g.shape[1], cap
    if g.shape[2] != n:
        raise ValueError(f"gram must have shape (B, n, n), got ({nb}, {n}, {g.shape[2]})")
    if r.shape[0] != nb or r.shape[1] != n:
        raise ValueError(f"rhs must have shape ({nb}, {n}) to match gram, "
                         f"got ({r.shape[0]}, {r.shape[1]})")
    if o.shape[0] != nb or o.shape[1] != n:
        raise ValueError(f"out must have shape ({nb}, {n}) to match gram, "
                         f"got ({o.shape[0]}, {o.shape[1]})")
    cap = 50 * n if maxiter is None else maxiter
    status = np.zeros(nb, dtype=np.intc)
    if n == 0:
        return status
    cdef int[::1] st = status
    # all the work space of every band, allocated once: L, then y, z, w, s; idx, state
    work_arr = np.empty((n + 4, n), dtype=np.float64)
    iwork_arr = np.empty((2, n), dtype=np.intp)
    cdef double[:, ::1] work = work_arr
    cdef Py_ssize_t[:, ::1] iwork = iwork_arr
    cdef double[:, ::1] low = work[:n]
    if _release_gil(<double>nb * n * n * n):
        with nogil:
            _nnls_bands(g, r, o, st, low, work, iwork, cap)
    else:
        _nnls_bands(g, r, o, st, low, work, iwork, cap)
    return status


cdef int _nnls_bands(const double[:, :, ::1] g, const double[:, ::1] r, double[:, ::1] o,
                     int[::1] st, double[:, ::1] low, double[:, ::1] work,
                     Py_ssize_t[:, ::1] iwork, Py_ssize_t cap) except -1 nogil:
    """:func:`_nnls_system` of every band with the shared work space."""
    cdef Py_ssize_t b, n = g.shape[1]
    for b in range(g.shape[0]):
        st[b] = _nnls_system(g[b], r[b], o[b], low, work[n], work[n + 1], work[n + 2],
                             work[n + 3], iwork[0], iwork[1], cap)
    return 0


# ------------------------------------------------------------------------------------------
# Sparse NNLS (coordinate descent + envelope Cholesky)
# ------------------------------------------------------------------------------------------

# Non-negative least squares on a sparse Gram matrix, for the large overlap groups of
# cdeblend.spectra.fit_seds: minimise x^T G x - 2 x^T r subject to x >= 0 for a symmetric
# positive-definite G given in CSR form (both triangles and the diagonal stored).
#
# The dense active-set method above adds one index per passive solve and costs about
# n^3; here the passive set is found by cheap sweeps and corrected a block at a time:
#
# 1. projected coordinate descent (Gauss-Seidel, x_k <- max(0, x_k + g_k / G_kk), the
#    gradient g = r - G x updated over the column of k only): O(nnz(G)) per sweep, it finds
#    most of the active set in a few sweeps but converges slowly on ill-conditioned G;
# 2. the exact minimiser z of the problem restricted to the passive set P = {x > 0}
#    (G_PP z = r_P by an envelope (profile) Cholesky factor in the caller's row order, which
#    a bandwidth-reducing ordering makes cheap: O(sum of squared envelope widths));
# 3. z > 0 everywhere: x = z is the answer when no index at 0 has a positive gradient beyond
#    its round-off (the KKT test of the dense method, same tolerance); else the step towards z is
#    cut where the first index reaches 0 (Lawson-Hanson's feasibility step).
#
# Every step keeps x feasible and does not raise the objective, and the answer is accepted
# only by the KKT test on an exact passive solve, so it is the unique minimiser up to the
# round-off of that solve (as the dense method's).

# Status of one band's system (as nnls_gram)
cdef enum:
    _SPARSE_OK = 0
    _SPARSE_ILL = 1      # not finite, not positive definite or ill-conditioned: dense path
    _SPARSE_MAXITER = 2  # round cap reached or a passive factor failed: dense path

#: Coordinate-descent sweeps before the first passive solve and between two of them (a sweep
#: costs about 1/(envelope width) of a factorisation, so sweeps are nearly free).
cdef enum:
    _SWEEPS_FIRST = 200
    _SWEEPS_BETWEEN = 40


cdef struct _Csr:
    const Py_ssize_t* indptr
    const Py_ssize_t* indices
    const double* data
    Py_ssize_t n


cdef inline Py_ssize_t _env(const Py_ssize_t* off, const Py_ssize_t* first, Py_ssize_t q,
                            Py_ssize_t c) noexcept nogil:
    """Flat index of entry ``(q, c)`` of the envelope factor (``first[q] <= c <= q``)."""
    return off[q] + c - first[q]


cdef int _env_cholesky(_Csr g, const Py_ssize_t* plist, Py_ssize_t p, Py_ssize_t* pos,
                       Py_ssize_t* first, Py_ssize_t* off, double* low) noexcept nogil:
    """Lower envelope Cholesky factor of ``G[plist][:, plist]`` (``plist`` increasing).

    ``pos[i]`` must be the position of ``i`` in ``plist`` or -1. Row ``q`` of the factor is
    stored from column ``first[q]`` (its first nonzero) to ``q`` at ``low[off[q]:]``. Returns
    1 when a pivot is not positive (not positive definite), else 0.
    """
    cdef Py_ssize_t q, i, t, j, c, k, k0, fq, total = 0
    cdef double acc
    for q in range(p):
        i = plist[q]
        fq = q
        for t in range(g.indptr[i], g.indptr[i + 1]):
            j = pos[g.indices[t]]
            if 0 <= j < fq:
                fq = j
        first[q] = fq
        off[q] = total
        total += q - fq + 1
        for c in range(fq, q + 1):
            low[off[q] + c - fq] = 0.0
        for t in range(g.indptr[i], g.indptr[i + 1]):
            j = pos[g.indices[t]]
            if 0 <= j <= q:
                low[off[q] + j - fq] = g.data[t]
        for c in range(fq, q):
            k0 = fq if fq > first[c] else first[c]
            acc = low[_env(off, first, q, c)]
            for k in range(k0, c):
                acc -= low[_env(off, first, q, k)] * low[_env(off, first, c, k)]
            low[_env(off, first, q, c)] = acc / low[_env(off, first, c, c)]
        acc = low[_env(off, first, q, q)]
        for k in range(fq, q):
            acc -= low[_env(off, first, q, k)] * low[_env(off, first, q, k)]
        if not acc > 0:
            return 1
        low[_env(off, first, q, q)] = sqrt(acc)
    return 0


cdef void _env_solve(const Py_ssize_t* first, const Py_ssize_t* off, const double* low,
                     Py_ssize_t p, double* v) noexcept nogil:
    """``v <- L^-T L^-1 v`` in place for the envelope factor ``L`` of :func:`_env_cholesky`."""
    cdef Py_ssize_t q, k
    cdef double acc
    for q in range(p):
        acc = v[q]
        for k in range(first[q], q):
            acc -= low[_env(off, first, q, k)] * v[k]
        v[q] = acc / low[_env(off, first, q, q)]
    for q in range(p - 1, -1, -1):
        v[q] /= low[_env(off, first, q, q)]
        acc = v[q]
        for k in range(first[q], q):
            v[k] -= low[_env(off, first, q, k)] * acc


cdef double _inv_norm1(const Py_ssize_t* first, const Py_ssize_t* off, const double* low,
                       Py_ssize_t p, double* v, double* u) noexcept nogil:
    """Hager's estimate (a lower bound, usually within a small factor) of ``||G^-1||_1`` from
    the factor of ``G``; ``||G^-1||_1 >= ||G^-1||_2 = 1 / lambda_min``."""
    cdef Py_ssize_t q, _it, jmax, jprev = -1
    cdef double est = 0.0, zmax, ztx
    for _it in range(5):
        for q in range(p):  # the trial vector: uniform, then the unit vector e_jprev
            v[q] = 1.0 / p if jprev < 0 else (1.0 if q == jprev else 0.0)
        _env_solve(first, off, low, p, v)
        est = 0.0
        for q in range(p):
            est += fabs(v[q])
            u[q] = 1.0 if v[q] >= 0 else -1.0
        _env_solve(first, off, low, p, u)  # G symmetric: G^-T = G^-1
        jmax = 0
        zmax = -1.0
        for q in range(p):
            if fabs(u[q]) > zmax:
                zmax = fabs(u[q])
                jmax = q
        if jprev < 0:
            ztx = 0.0
            for q in range(p):
                ztx += u[q] / p
        else:
            ztx = u[jprev]
        if zmax <= ztx or jmax == jprev:
            break
        jprev = jmax
    return est


cdef void _gradient(_Csr g, const double* rhs, const double* x, double* grad,
                    double* scale) noexcept nogil:
    """``grad = r - G x`` and ``scale = |r| + |G| |x|`` (the bound of its round-off)."""
    cdef Py_ssize_t i, t
    cdef double acc, s, v
    for i in range(g.n):
        acc = rhs[i]
        s = fabs(rhs[i])
        for t in range(g.indptr[i], g.indptr[i + 1]):
            v = g.data[t] * x[g.indices[t]]
            acc -= v
            s += fabs(v)
        grad[i] = acc
        scale[i] = s


cdef void _sweeps(_Csr g, const Py_ssize_t* diag, double* x, double* grad,
                  Py_ssize_t count) noexcept nogil:
    """Projected Gauss-Seidel sweeps in row order, ``grad = r - G x`` kept up to date."""
    cdef Py_ssize_t _s, k, t
    cdef double dk, xk, d
    for _s in range(count):
        for k in range(g.n):
            dk = g.data[diag[k]]
            xk = x[k] + grad[k] / dk
            if xk < 0:
                xk = 0.0
            d = xk - x[k]
            if d != 0:
                x[k] = xk
                # G symmetric: column k is row k
                for t in range(g.indptr[k], g.indptr[k + 1]):
                    grad[g.indices[t]] -= g.data[t] * d


cdef int _sparse_system(_Csr g, const double* rhs, double* x, Py_ssize_t maxround,
                        Py_ssize_t* diag, Py_ssize_t* plist, Py_ssize_t* pos,
                        Py_ssize_t* first, Py_ssize_t* off, double* low, double* z,
                        double* grad, double* scale) noexcept nogil:
    """One band: the status of ``nnls_sparse``; ``x`` the minimiser when ``_SPARSE_OK``."""
    cdef Py_ssize_t n = g.n, i, t, p, q, _rnd, qmin
    cdef double top = 0.0, row, tol = (n + 1) * DBL_EPSILON, alpha, a, xk
    cdef bint positive
    for i in range(n):
        if not isfinite(rhs[i]):
            return _SPARSE_ILL
        diag[i] = -1
        row = 0.0
        for t in range(g.indptr[i], g.indptr[i + 1]):
            if not isfinite(g.data[t]):
                return _SPARSE_ILL
            if g.indices[t] == i:
                diag[i] = t
            row += fabs(g.data[t])
        if diag[i] < 0 or not g.data[diag[i]] > 0:
            return _SPARSE_ILL  # zero (or negative) diagonal: the dense path decides
        if row > top:
            top = row  # Gershgorin: the largest eigenvalue is at most the largest row sum
    # factor of all of G: positive definite, and the smallest eigenvalue (1 / ||G^-1||_1,
    # estimated) clearly above eps * n * (largest eigenvalue), the cut below which the
    # eigen path of the dense solver treats eigenvalues as zero: none would be cut there, so
    # the minimiser is unique and both paths agree up to round-off. (The dense active set's
    # own test, against eps * n * trace(G), grows as n^2 and sent well-posed groups of a few
    # thousand components to the eigen path.)
    for i in range(n):
        plist[i] = i
        pos[i] = i
    if _env_cholesky(g, plist, n, pos, first, off, low):
        return _SPARSE_ILL
    if not _inv_norm1(first, off, low, n, z, grad) * DBL_EPSILON * n * top < 1.0:
        return _SPARSE_ILL
    # the unconstrained minimiser is the answer when positive (no constraint active)
    for i in range(n):
        z[i] = rhs[i]
    _env_solve(first, off, low, n, z)
    positive = True
    for i in range(n):
        if not z[i] > 0:
            positive = False
            break
    if positive:
        for i in range(n):
            x[i] = z[i]
        return _SPARSE_OK
    for i in range(n):
        x[i] = 0.0
        grad[i] = rhs[i]
    _sweeps(g, diag, x, grad, _SWEEPS_FIRST)
    for _rnd in range(maxround):
        p = 0
        for i in range(n):
            if x[i] > 0:
                pos[i] = p
                plist[p] = i
                p += 1
            else:
                pos[i] = -1
        if _env_cholesky(g, plist, p, pos, first, off, low):
            return _SPARSE_MAXITER  # a principal submatrix of a PD matrix: round-off
        for q in range(p):
            z[q] = rhs[plist[q]]
        _env_solve(first, off, low, p, z)
        alpha = 2.0
        qmin = -1
        for q in range(p):
            if not z[q] > 0:
                xk = x[plist[q]]
                a = xk / (xk - z[q])
                if a < alpha:
                    alpha = a
                    qmin = q
        if qmin < 0:  # the passive minimiser is feasible: optimal unless an index enters
            for q in range(p):
                x[plist[q]] = z[q]
            _gradient(g, rhs, x, grad, scale)
            positive = True
            for i in range(n):
                if pos[i] < 0 and grad[i] > tol * scale[i]:
                    positive = False
                    break
            if positive:
                return _SPARSE_OK
        else:  # step towards it until the first index reaches 0
            for q in range(p):
                i = plist[q]
                x[i] += alpha * (z[q] - x[i])
                if not x[i] > 0:
                    x[i] = 0.0
            x[plist[qmin]] = 0.0  # exactly on the bound it hit
            _gradient(g, rhs, x, grad, scale)
        _sweeps(g, diag, x, grad, _SWEEPS_BETWEEN)
    return _SPARSE_MAXITER


def nnls_sparse(indptr, indices, data, rhs, out, maxround=None):
    """Non-negative minimisers of ``x^T G_b x - 2 x^T r_b`` for sparse ``G_b`` sharing one
    pattern (see the comment at the top of the sparse NNLS section for the method).

    The cost per band is about ``rounds x sum_q w_q^2`` for the envelope widths ``w_q`` of
    ``G`` in the given row order (order the rows to reduce the bandwidth, e.g. by reverse
    Cuthill-McKee) plus ``O(nnz)`` per coordinate-descent sweep: about linear in ``n`` for
    the Gram matrices of components that overlap only their neighbours.

    Parameters
    ----------
    indptr : (n + 1,) intp array
        CSR row pointers of the common pattern.
    indices : (nnz,) intp array
        CSR column indices; the pattern must be symmetric and hold every diagonal entry.
    data : (B, nnz) float64 array, C-contiguous
        The values of ``G_b`` (symmetric).
    rhs : (B, n) float64 array, C-contiguous
        Right-hand sides ``r_b``.
    out : (B, n) float64 array, C-contiguous, writable
        Solutions of the bands whose status is 0 (the other rows are undefined).
    maxround : int, optional
        Passive solves allowed per band; default ``50 + n // 10``.

    Returns
    -------
    numpy.ndarray
        ``(B,)`` int status per band, as ``nnls_gram``: 0 solved; 1 non-finite, not
        positive definite (a zero diagonal included) or ill-conditioned; 2 round cap reached.

    Raises
    ------
    ValueError
        If an argument has the wrong type, dtype, layout or shape, or the pattern is not a
        valid CSR pattern of an ``n x n`` matrix (named in the message). A row without its
        diagonal entry gives status 1.
    """
    cdef const Py_ssize_t[::1] ip, ix
    cdef const double[:, ::1] d, r
    cdef double[:, ::1] o
    for name, value in (("indptr", indptr), ("indices", indices)):
        arr = np.asarray(value)
        if arr.ndim != 1 or arr.dtype != np.intp:
            raise ValueError(f"{name} must be a 1-D intp array, got {arr.dtype} {arr.shape}")
    try:
        ip = indptr
        ix = indices
    except (TypeError, ValueError) as exc:
        raise ValueError(f"indptr and indices must be C-contiguous intp arrays: {exc}") from None
    try:
        d = data
    except (TypeError, ValueError) as exc:
        raise ValueError(f"data must be a C-contiguous (B, nnz) float64 array: {exc}") from None
    r = _rhs_view(rhs)
    o = _out_view(out)
    cdef Py_ssize_t n = ip.shape[0] - 1, nnz = ix.shape[0], nb = d.shape[0], b, i, t
    if n < 0:
        raise ValueError("indptr must have n + 1 >= 1 entries")
    if ip[0] != 0 or ip[n] != nnz:
        raise ValueError(f"indptr must run from 0 to len(indices) = {nnz}")
    for i in range(n):
        if ip[i + 1] < ip[i]:
            raise ValueError("indptr must be non-decreasing")
    for t in range(nnz):
        if not 0 <= ix[t] < n:
            raise ValueError(f"indices[{t}] = {ix[t]} is outside 0..{n - 1}")
    if d.shape[1] != nnz:
        raise ValueError(f"data must have shape (B, {nnz}), got ({nb}, {d.shape[1]})")
    if r.shape[0] != nb or r.shape[1] != n:
        raise ValueError(f"rhs must have shape ({nb}, {n}), got ({r.shape[0]}, {r.shape[1]})")
    if o.shape[0] != nb or o.shape[1] != n:
        raise ValueError(f"out must have shape ({nb}, {n}), got ({o.shape[0]}, {o.shape[1]})")
    cap = 50 + n // 10 if maxround is None else int(maxround)
    status = np.zeros(nb, dtype=np.intc)
    if n == 0:
        return status
    cdef int[::1] st = status
    # work space shared by the bands; the envelope of a principal submatrix in the same
    # order is no wider than that of the whole matrix
    cdef Py_ssize_t envelope = 0, q, lo
    for q in range(n):
        lo = q
        for t in range(ip[q], ip[q + 1]):
            if ix[t] < lo:
                lo = ix[t]
        envelope += q - lo + 1
    iwork_arr = np.empty((5, n), dtype=np.intp)
    fwork_arr = np.empty((3, n), dtype=np.float64)
    low_arr = np.empty(envelope, dtype=np.float64)
    cdef Py_ssize_t[:, ::1] iw = iwork_arr
    cdef double[:, ::1] fw = fwork_arr
    cdef double[::1] low = low_arr
    cdef _Csr g
    cdef Py_ssize_t c_cap = cap
    g.indptr = &ip[0]
    g.indices = &ix[0] if nnz else NULL
    g.n = n
    with nogil:
        for b in range(nb):
            g.data = &d[b, 0] if nnz else NULL
            st[b] = _sparse_system(g, &r[b, 0], &o[b, 0], c_cap, &iw[0, 0], &iw[1, 0],
                                   &iw[2, 0], &iw[3, 0], &iw[4, 0], &low[0], &fw[0, 0],
                                   &fw[1, 0], &fw[2, 0])
    return status


# ------------------------------------------------------------------------------------------
# Overlap groups
# ------------------------------------------------------------------------------------------

def connected_groups(const Py_ssize_t[:, ::1] pairs, Py_ssize_t n, int32_t[::1] labels):
    """Connected components of the graph on ``n`` nodes with edges ``pairs`` (P, 2).

    ``labels[i]`` is the index of node i's component, components numbered in the order of
    their smallest node; returns their number. Union-find joining roots to the smaller one.
    """
    if labels.shape[0] != n:
        raise ValueError(f"labels must have {n} entries, got {labels.shape[0]}")
    if pairs.shape[0] and pairs.shape[1] != 2:
        raise ValueError("pairs must be (P, 2)")
    cdef Py_ssize_t p, a, b, i, count = 0
    for p in range(pairs.shape[0]):
        if not (0 <= pairs[p, 0] < n and 0 <= pairs[p, 1] < n):
            raise ValueError(f"pairs[{p}] names a node outside 0..{n - 1}")
    parent_arr = np.arange(n, dtype=np.intp)
    cdef Py_ssize_t[::1] parent = parent_arr
    for p in range(pairs.shape[0]):
        a = _root(parent, pairs[p, 0])
        b = _root(parent, pairs[p, 1])
        if a < b:
            parent[b] = a
        elif b < a:
            parent[a] = b
    # a root is the smallest node of its group: number the groups in that order
    for i in range(n):
        a = _root(parent, i)
        if a == i:
            labels[i] = count
            count += 1
        else:
            labels[i] = labels[a]
    return count


cdef inline Py_ssize_t _root(Py_ssize_t[::1] parent, Py_ssize_t i) noexcept:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def swept_pairs(const int64_t[::1] order, const int64_t[::1] y0, const int64_t[::1] y1,
                const int64_t[::1] x0, const int64_t[::1] x1):
    """The overlapping pairs of non-empty boxes sorted by their top edge ``y0`` (ascending):
    box i (``order[i]`` in the caller's numbering) spans rows ``[y0[i], y1[i])`` and columns
    ``[x0[i], x1[i])``. For each i, the boxes j >= i whose top edge is above box i's bottom
    edge are tested in order; the hits are ``(min, max)`` of their ``order`` numbers, as
    (P, 2) int64 rows in that order (:func:`cdeblend.box.overlapping_pairs`)."""
    cdef Py_ssize_t n = order.shape[0], i, j, p = 0
    if y0.shape[0] != n or y1.shape[0] != n or x0.shape[0] != n or x1.shape[0] != n:
        raise ValueError("order, y0, y1, x0 and x1 must have the same length")
    for i in range(1, n):
        if y0[i] < y0[i - 1]:
            raise ValueError("y0 must be sorted in ascending order")
    for i in range(n):  # first pass: count the hits
        j = i
        while j < n and y0[j] < y1[i]:
            if x0[j] < x1[i] and x0[i] < x1[j]:
                p += 1
            j += 1
    out_arr = np.empty((p, 2), dtype=np.int64)
    cdef int64_t[:, ::1] out = out_arr
    cdef int64_t a, b
    p = 0
    for i in range(n):
        a = order[i]
        j = i
        while j < n and y0[j] < y1[i]:
            if x0[j] < x1[i] and x0[i] < x1[j]:
                b = order[j]
                out[p, 0] = a if a < b else b
                out[p, 1] = b if a < b else a
                p += 1
            j += 1
    return out_arr


def cuthill_mckee(const Py_ssize_t[::1] indptr, const Py_ssize_t[::1] indices,
                  const Py_ssize_t[::1] seeds, const int64_t[::1] degree):
    """Cuthill-McKee order of the symmetric pattern ``(indptr, indices)`` (CSR, n rows):
    breadth-first from ``seeds[0]``, then from the first of ``seeds`` not yet reached (one
    seed per connected part); the neighbours each node reaches first are appended in order
    of ``degree``, ties in column order. Reversed, it is the reverse Cuthill-McKee order.

    Returns the (n,) intp order (entry q: the node placed q-th).
    """
    cdef Py_ssize_t n = seeds.shape[0], z, s, i, j, jj, a, b, head, start, count = 0
    cdef int64_t d
    if indptr.shape[0] != n + 1 or degree.shape[0] != n:
        raise ValueError(f"indptr must have {n + 1} entries and degree {n}")
    if n and (indptr[0] != 0 or indptr[n] != indices.shape[0]):
        raise ValueError("indptr does not span indices")
    for jj in range(indices.shape[0]):
        if not 0 <= indices[jj] < n:
            raise ValueError(f"indices[{jj}] = {indices[jj]} is outside 0..{n - 1}")
    for z in range(n):
        if not 0 <= seeds[z] < n:
            raise ValueError(f"seeds[{z}] = {seeds[z]} is outside 0..{n - 1}")
    order_arr = np.empty(n, dtype=np.intp)
    seen_arr = np.zeros(n, dtype=np.uint8)
    cdef Py_ssize_t[::1] order = order_arr
    cdef unsigned char[::1] seen = seen_arr
    for z in range(n):
        s = seeds[z]
        if seen[s]:
            continue
        seen[s] = 1
        order[count] = s
        count += 1
        head = count - 1
        while head < count:  # the queue is order[head:count]
            i = order[head]
            head += 1
            start = count
            for jj in range(indptr[i], indptr[i + 1]):
                j = indices[jj]
                if not seen[j]:
                    seen[j] = 1
                    order[count] = j
                    count += 1
            for a in range(start + 1, count):  # stable insertion sort by degree
                j = order[a]
                d = degree[j]
                b = a
                while b > start and degree[order[b - 1]] > d:
                    order[b] = order[b - 1]
                    b -= 1
                order[b] = j
        if count == n:
            break
    return order_arr
