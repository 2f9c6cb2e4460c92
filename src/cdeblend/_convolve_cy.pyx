# cython: language_level=3
"""Direct (real-space) multi-band convolution and the fused weighted residual.

These kernels trust their inputs: ``cdeblend.observation`` checks shapes, dtypes and
contiguity before calling them. Every loop runs without the GIL.

Convolution convention (the "same-size" linear convolution of the spec, zero outside the
arrays): with the kernel centre at ``(ry, rx) = (kh // 2, kw // 2)``,

    out[b, y, x] += sum_{ky, kx} K[b, ky, kx] * src[b', y - oy - (ky - ry), x - ox - (kx - rx)]

where ``(oy, ox)`` is the position of the source grid's origin in the output grid and ``b'`` is
``b`` (or 0 when the source has a single plane that is shared by every band). The adjoint of
this operation is the same call with the kernel flipped in y and x and the offsets negated.
"""

cimport cython
from libc.math cimport INFINITY, sqrt
from libc.stdlib cimport free, malloc
from cython cimport floating


@cython.boundscheck(False)
@cython.wraparound(False)
def convolve_direct(
    const floating[:, :, ::1] src,
    const floating[:, :, ::1] kernel,
    floating[:, :, ::1] out,
    Py_ssize_t oy=0,
    Py_ssize_t ox=0,
):
    """Accumulate the direct convolution of ``src`` with ``kernel`` into ``out``.

    Parameters
    ----------
    src : (Bs, h, w) array
        Input planes, ``Bs`` equal to the number of bands or 1 (shared by all bands).
    kernel : (B, kh, kw) array
        Odd-sized kernels, one per band.
    out : (B, H, W) array
        Accumulated in place (the caller zeroes it when needed).
    oy, ox : int
        Position of ``src[:, 0, 0]`` in the grid of ``out``.
    """
    cdef Py_ssize_t nb = out.shape[0], H = out.shape[1], W = out.shape[2]
    cdef Py_ssize_t h = src.shape[1], w = src.shape[2]
    cdef Py_ssize_t kh = kernel.shape[1], kw = kernel.shape[2]
    cdef Py_ssize_t ry = kh // 2, rx = kw // 2
    cdef bint shared = src.shape[0] == 1
    cdef Py_ssize_t b, bs, y, yin, ky, kx, sx, x, xlo, xhi
    cdef floating v
    with nogil:
        for b in range(nb):
            bs = 0 if shared else b
            for y in range(H):
                for ky in range(kh):
                    # source row that tap row ky brings to output row y
                    yin = y - oy - (ky - ry)
                    if yin < 0 or yin >= h:
                        continue
                    for kx in range(kw):
                        v = kernel[b, ky, kx]
                        if v == 0:
                            continue
                        # source column = x - sx; keep both x and x - sx in range
                        sx = ox + kx - rx
                        xlo = sx if sx > 0 else 0
                        xhi = sx + w if sx + w < W else W
                        for x in range(xlo, xhi):
                            out[b, y, x] += v * src[bs, yin, x - sx]


cdef inline double _wsq(floating d, floating w) noexcept nogil:
    """d * (w * d) with the product w * d rounded to the working precision first (the
    stored residual), then the multiplication in double."""
    cdef floating r = w * d
    return <double>d * <double>r


@cython.boundscheck(False)
@cython.wraparound(False)
def weighted_residual(
    const floating[:, :, ::1] model_conv,
    const floating[:, :, ::1] images,
    const floating[:, :, ::1] weights,
    floating[:, :, ::1] residual,
    bint store=True,
):
    """Return ``0.5 * sum(w * (images - model_conv)^2)`` and store ``w * (model_conv - images)``.

    ``model_conv`` and ``residual`` may be larger than ``images`` (e.g. zero-padded FFT
    buffers): only their ``[:, :H, :W]`` corner is used. The sum is accumulated in double precision in a fixed order (deterministic). With
    ``store=False`` the residual array is left untouched (loss only).
    """
    cdef Py_ssize_t nb = images.shape[0], H = images.shape[1], W = images.shape[2]
    cdef Py_ssize_t b, y, x
    cdef double total = 0.0, s0, s1, s2, s3
    cdef floating d, r
    cdef const floating* mc
    cdef const floating* im
    cdef const floating* wt
    cdef floating* rs
    with nogil:
        for b in range(nb):
            for y in range(H):
                mc = &model_conv[b, y, 0]
                im = &images[b, y, 0]
                wt = &weights[b, y, 0]
                rs = &residual[b, y, 0]
                if store:
                    for x in range(W):
                        rs[x] = wt[x] * (mc[x] - im[x])
                # four interleaved partial sums per row: a fixed order (deterministic) that
                # the compiler can vectorise
                s0 = s1 = s2 = s3 = 0.0
                x = 0
                while x + 4 <= W:
                    s0 += _wsq(mc[x] - im[x], wt[x])
                    s1 += _wsq(mc[x + 1] - im[x + 1], wt[x + 1])
                    s2 += _wsq(mc[x + 2] - im[x + 2], wt[x + 2])
                    s3 += _wsq(mc[x + 3] - im[x + 3], wt[x + 3])
                    x += 4
                while x < W:
                    s0 += _wsq(mc[x] - im[x], wt[x])
                    x += 1
                total += (s0 + s1) + (s2 + s3)
    return 0.5 * total


cdef inline double _dot(const floating* a, const floating* b, Py_ssize_t n) noexcept nogil:
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


@cython.boundscheck(False)
@cython.wraparound(False)
def gram_pairs(
    const floating[::1] flat,
    const Py_ssize_t[::1] offsets,
    const Py_ssize_t[:, ::1] boxes,
    const Py_ssize_t[:, ::1] pairs,
    const floating[:, :, ::1] weights,
    bint weighted,
    double[:, ::1] out,
):
    """Per-band inner products of pairs of arrays over the overlap of their boxes.

    Array k is ``flat[offsets[k]:].reshape(B, h_k, w_k)`` on ``boxes[k] = (y0, x0, h, w)`` (frame
    coordinates). For pair p = (k, l), ``out[p, b] = sum c_k[b] c_l[b] (w[b])`` over the common
    pixels, accumulated in double precision (row sums first, then rows in order).
    ``weights`` (B, H, W) is read only when ``weighted``.
    """
    cdef Py_ssize_t nb = out.shape[1], npairs = pairs.shape[0]
    cdef Py_ssize_t p, k, l, b, y, x, ya, yb, xa, xb, hk, wk, hl, wl
    cdef Py_ssize_t ok, ol, rk, rl
    cdef double acc, row
    with nogil:
        for p in range(npairs):
            k = pairs[p, 0]
            l = pairs[p, 1]
            ya = max(boxes[k, 0], boxes[l, 0])
            xa = max(boxes[k, 1], boxes[l, 1])
            yb = min(boxes[k, 0] + boxes[k, 2], boxes[l, 0] + boxes[l, 2])
            xb = min(boxes[k, 1] + boxes[k, 3], boxes[l, 1] + boxes[l, 3])
            hk = boxes[k, 2]
            wk = boxes[k, 3]
            hl = boxes[l, 2]
            wl = boxes[l, 3]
            for b in range(nb):
                acc = 0.0
                for y in range(ya, yb):
                    rk = offsets[k] + (b * hk + y - boxes[k, 0]) * wk - boxes[k, 1]
                    rl = offsets[l] + (b * hl + y - boxes[l, 0]) * wl - boxes[l, 1]
                    if weighted:
                        row = 0.0
                        for x in range(xa, xb):
                            row += <double>flat[rk + x] * flat[rl + x] * weights[b, y, x]
                    else:
                        row = _dot(&flat[rk + xa], &flat[rl + xa], xb - xa)
                    acc += row
                out[p, b] = acc


@cython.boundscheck(False)
@cython.wraparound(False)
def data_products(
    const floating[::1] flat,
    const Py_ssize_t[::1] offsets,
    const Py_ssize_t[:, ::1] boxes,
    const floating[:, :, ::1] data,
    const floating[:, :, ::1] weights,
    bint weighted,
    double[:, ::1] out,
):
    """``out[k, b] = sum c_k[b] data[b] (w[b])`` over box k (inside the frame), in double."""
    cdef Py_ssize_t nb = out.shape[1], nk = out.shape[0]
    cdef Py_ssize_t k, b, y, x, y0, x0, h, w, r
    cdef double acc, row
    with nogil:
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


@cython.boundscheck(False)
@cython.wraparound(False)
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
    cdef Py_ssize_t n = gram.shape[0], m = rhs.shape[1], i, j, k, c
    cdef double acc, d, total = 0.0
    cdef double* col
    with nogil:
        for i in range(n):
            for j in range(n):
                root[i, j] = 0.0
        for j in range(n):
            # row j of R: R[j, j] = sqrt(G[j, j] - sum_k R[k, j]^2), R[j, i] for i > j
            acc = gram[j, j]
            for k in range(j):
                acc -= root[k, j] * root[k, j]
            if not acc > 0:
                total = -1.0
                break
            d = sqrt(acc)
            root[j, j] = d
            for i in range(j + 1, n):
                acc = gram[j, i]
                for k in range(j):
                    acc -= root[k, j] * root[k, i]
                root[j, i] = acc / d
    if total < 0:
        return -1.0
    with nogil:
        for c in range(m):  # solve R^T y = rhs[:, c]
            for i in range(n):
                acc = rhs[i, c]
                for k in range(i):
                    acc -= root[k, i] * rhs[k, c]
                rhs[i, c] = acc / root[i, i]
        # ||R^-1||_F^2 column by column: R x = e_j
        col = <double*>malloc(n * sizeof(double))
        if col != NULL:
            for j in range(n):
                for i in range(j, -1, -1):
                    acc = 1.0 if i == j else 0.0
                    for k in range(i + 1, j + 1):
                        acc -= root[i, k] * col[k]
                    col[i] = acc / root[i, i]
                    total += col[i] * col[i]
            free(col)
        else:
            total = INFINITY
    return total
