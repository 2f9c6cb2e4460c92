# The convolution kernels shared by _convolve_cy (Python-facing wrappers) and _adam_cy (the
# fit loop): the direct loop, the weighted residual and the FFT convolution of a cube. All
# run without the GIL on arguments the caller checked. Needs _fft.pxi.

from cython cimport floating


cdef int _direct_conv(const floating[:, :, ::1] src, const floating[:, :, ::1] kernel,
                      floating[:, :, ::1] out, Py_ssize_t oy, Py_ssize_t ox) except -1 nogil:
    """Accumulate into ``out`` (B, H, W) the convolution of ``src`` (B or 1, h, w), placed at
    ``(oy, ox)`` of out's grid, with the centred kernels (B, kh, kw) (see convolve_direct)."""
    cdef Py_ssize_t nb = out.shape[0], H = out.shape[1], W = out.shape[2]
    cdef Py_ssize_t h = src.shape[1], w = src.shape[2]
    cdef Py_ssize_t kh = kernel.shape[1], kw = kernel.shape[2]
    cdef Py_ssize_t ry = kh // 2, rx = kw // 2
    cdef bint shared = src.shape[0] == 1
    cdef Py_ssize_t b, bs, y, yin, ky, kx, sx, x, xlo, xhi
    cdef floating v
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
    return 0


cdef inline double _wsq(floating d, floating w) noexcept nogil:
    """d * (w * d) with the product w * d rounded to the working precision first (the
    stored residual), then the multiplication in double."""
    cdef floating r = w * d
    return <double>d * <double>r


cdef double _weighted_residual(const floating[:, :, ::1] model_conv,
                               const floating[:, :, ::1] images,
                               const floating[:, :, ::1] weights,
                               floating[:, :, ::1] residual, bint store) except? -1 nogil:
    """``0.5 * sum(w * (images - model_conv)^2)``, and ``residual = w * (model_conv -
    images)`` when ``store`` (on the images' ``[:, :H, :W]``; the other arrays may be
    larger). Accumulated in double in a fixed order (deterministic)."""
    cdef Py_ssize_t nb = images.shape[0], H = images.shape[1], W = images.shape[2]
    cdef Py_ssize_t b, y, x
    cdef double total = 0.0, s0, s1, s2, s3
    cdef const floating* mc
    cdef const floating* im
    cdef const floating* wt
    cdef floating* rs
    for b in range(nb):
        for y in range(H):
            mc = &model_conv[b, y, 0]
            im = &images[b, y, 0]
            wt = &weights[b, y, 0]
            if store:
                rs = &residual[b, y, 0]
                for x in range(W):
                    rs[x] = wt[x] * (mc[x] - im[x])
            # four interleaved partial sums per row: a fixed order (deterministic) that the
            # compiler can vectorise
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


# --- the FFT core in one precision or the other
cdef inline void _fwd(cd_conv* c, const floating* a, Py_ssize_t lda, int ha, int wa, int oya,
                      int oxa, const floating* b, Py_ssize_t ldb, int hb, int wb, int oyb,
                      int oxb) noexcept nogil:
    if floating is float:
        cd_fwd2d_f(c, a, lda, ha, wa, oya, oxa, b, ldb, hb, wb, oyb, oxb)
    else:
        cd_fwd2d_d(c, a, lda, ha, wa, oya, oxa, b, ldb, hb, wb, oyb, oxb)


cdef inline void _inv(cd_conv* c, floating* a, Py_ssize_t lda, int ha, int wa, floating* b,
                      Py_ssize_t ldb, int hb, int wb) noexcept nogil:
    if floating is float:
        cd_inv2d_f(c, a, lda, ha, wa, b, ldb, hb, wb, 0)
    else:
        cd_inv2d_d(c, a, lda, ha, wa, b, ldb, hb, wb, 0)


cdef inline void _pair_mul(cd_conv* c, const floating* fa, const floating* fb,
                           int conj) noexcept nogil:
    if floating is float:
        cd_pair_mul_f(c, fa, fb, conj)
    else:
        cd_pair_mul_d(c, fa, fb, conj)


cdef inline void _mul(cd_conv* c, const floating* f, int conj) noexcept nogil:
    if floating is float:
        cd_mul_f(c, f, conj)
    else:
        cd_mul_d(c, f, conj)


cdef inline void _mul2(cd_conv* c, const floating* fa, const floating* fb,
                       int conj) noexcept nogil:
    if floating is float:
        cd_mul2_f(c, fa, fb, conj)
    else:
        cd_mul2_d(c, fa, fb, conj)


cdef int _fft_cube(cd_conv* c, const floating[:, :, ::1] src, int oy, int ox,
                   const floating[:, :, :, ::1] fk, floating[:, :, ::1] out,
                   int conj) except -1 nogil:
    """FFT convolution of ``src`` (B or 1, h, w) placed at ``(oy, ox)`` of the grid with
    every band's kernel (transforms ``fk``, conjugated with ``conj``), the grid's ``[0, gh)
    x [0, gw)`` corner into ``out`` (B, gh, gw): two bands per transform, or one plane
    transformed once and two kernels per inverse transform."""
    cdef Py_ssize_t nb = out.shape[0], gh = out.shape[1], gw = out.shape[2]
    cdef Py_ssize_t h = src.shape[1], w = src.shape[2], b = 0
    cdef const floating* s1
    cdef const floating* f1
    cdef floating* o1
    if src.shape[0] == 1:
        _fwd(c, &src[0, 0, 0], w, h, w, oy, ox, <const floating*>NULL, 0, 0, 0, 0, 0)
        while b < nb:
            if b + 1 < nb:
                _mul2(c, &fk[b, 0, 0, 0], &fk[b + 1, 0, 0, 0], conj)
                _inv(c, &out[b, 0, 0], gw, gh, gw, &out[b + 1, 0, 0], gw, gh, gw)
            else:
                _mul(c, &fk[b, 0, 0, 0], conj)
                _inv(c, &out[b, 0, 0], gw, gh, gw, <floating*>NULL, 0, 0, 0)
            b += 2
        return 0
    while b < nb:
        s1 = &src[b + 1, 0, 0] if b + 1 < nb else NULL
        f1 = &fk[b + 1, 0, 0, 0] if b + 1 < nb else NULL
        o1 = &out[b + 1, 0, 0] if b + 1 < nb else NULL
        _fwd(c, &src[b, 0, 0], w, h, w, oy, ox, s1, w, h, w, oy, ox)
        _pair_mul(c, &fk[b, 0, 0, 0], f1, conj)
        _inv(c, &out[b, 0, 0], gw, gh, gw, o1, gw, gh, gw)
        b += 2
    return 0
