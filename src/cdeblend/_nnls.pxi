# Non-negative least squares on the normal equations, for cdeblend.spectra.fit_seds: minimise
# x^T G x - 2 x^T r subject to x >= 0 for a symmetric positive-definite G, by the active-set
# method of Lawson and Hanson applied to the normal equations (Bro & De Jong 1997, "A fast
# non-negativity-constrained least squares algorithm"). The passive subsystem is solved by a
# Cholesky factor of G restricted to the passive set; the factor is kept in the order the
# indices entered the set, so adding an index appends one row (what a fresh factorisation
# would compute) and dropping indices recomputes only the rows after the first one dropped.
# Included by _convolve_cy.pyx.

from libc.float cimport DBL_EPSILON
from libc.math cimport fabs, isfinite, sqrt

import numpy as np

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
    try:
        r = rhs
    except (TypeError, ValueError) as exc:
        raise ValueError(f"rhs must be a C-contiguous (B, n) float64 array: {exc}") from None
    try:
        o = out
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"out must be a writable C-contiguous (B, n) float64 array: {exc}") from None
    cdef Py_ssize_t nb = g.shape[0], n = g.shape[1], b, cap
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
