# Non-negative least squares on a sparse Gram matrix, for the large overlap groups of
# cdeblend.spectra.fit_seds: minimise x^T G x - 2 x^T r subject to x >= 0 for a symmetric
# positive-definite G given in CSR form (both triangles and the diagonal stored).
#
# The dense active-set method of _nnls.pxi adds one index per passive solve and costs about
# n^3; here the passive set is found by cheap sweeps and corrected a block at a time:
#
# 1. projected coordinate descent (Gauss-Seidel, x_k <- max(0, x_k + g_k / G_kk), the
#    gradient g = r - G x updated over the column of k only): O(nnz(G)) per sweep, it finds
#    most of the active set in a few sweeps but converges slowly on ill-conditioned G;
# 2. the exact minimiser z of the problem restricted to the passive set P = {x > 0}
#    (G_PP z = r_P by an envelope (profile) Cholesky factor in the caller's row order, which
#    a bandwidth-reducing ordering makes cheap: O(sum of squared envelope widths));
# 3. z > 0 everywhere: x = z is the answer when no index at 0 has a positive gradient beyond
#    its round-off (the KKT test of _nnls.pxi, same tolerance); else the step towards z is
#    cut where the first index reaches 0 (Lawson-Hanson's feasibility step).
#
# Every step keeps x feasible and does not raise the objective, and the answer is accepted
# only by the KKT test on an exact passive solve, so it is the unique minimiser up to the
# round-off of that solve (as the dense method's). Included by _convolve_cy.pyx.

from libc.math cimport fabs, isfinite, sqrt

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
    cdef Py_ssize_t q, it, jmax, jprev = -1
    cdef double est = 0.0, zmax, ztx
    for it in range(5):
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
    cdef Py_ssize_t s, k, t
    cdef double dk, xk, d
    for s in range(count):
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
    cdef Py_ssize_t n = g.n, i, t, p, q, rnd, qmin
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
    for rnd in range(maxround):
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
    pattern (see the comment at the top of ``_sparse_nnls.pxi`` for the method).

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
    try:
        r = rhs
    except (TypeError, ValueError) as exc:
        raise ValueError(f"rhs must be a C-contiguous (B, n) float64 array: {exc}") from None
    try:
        o = out
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"out must be a writable C-contiguous (B, n) float64 array: {exc}") from None
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
