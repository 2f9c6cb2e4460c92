# The convolution kernels that the fit loop (_adam_cy's FitKernel) calls without Python, once
# or twice per iteration each; defined in _convolve_cy.pyx. Each does a whole image per call,
# so the call through a function pointer (how Cython calls across modules) costs nothing
# measurable.

from ._fft cimport (cd_conv, cd_fwd2d_d, cd_fwd2d_f, cd_inv2d_d, cd_inv2d_f, cd_pair_mul_d,
                    cd_pair_mul_f)
from ._shared.fused cimport real


cdef int _direct_conv(const real[:, :, ::1] src, const real[:, :, ::1] kernel,
                      real[:, :, ::1] out, Py_ssize_t oy, Py_ssize_t ox) except -1 nogil

cdef double _weighted_residual(const real[:, :, ::1] model_conv,
                               const real[:, :, ::1] images,
                               const real[:, :, ::1] weights,
                               real[:, :, ::1] residual, bint store) except? -1 nogil

cdef int _fft_cube(cd_conv* c, const real[:, :, ::1] src, int oy, int ox,
                   const real[:, :, :, ::1] fk, real[:, :, ::1] out,
                   int conj) except -1 nogil


# Small helpers inlined where they are called (per pixel, or per transform of one band):
# their bodies live here so that _adam_cy's threaded iteration inlines them too.
cdef inline double _wsq(real d, real w) noexcept nogil:
    """d * (w * d) with the product w * d rounded to the working precision first (the
    stored residual), then the multiplication in double."""
    cdef real r = w * d
    return <double>d * <double>r


cdef inline double _row_wsq(const real* mc, const real* im, const real* wt,
                            Py_ssize_t W) noexcept nogil:
    """``sum_x _wsq(mc[x] - im[x], wt[x])`` over one row, in four interleaved partial sums:
    a fixed order (deterministic) that the compiler can vectorise."""
    cdef double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
    cdef Py_ssize_t x = 0
    while x + 4 <= W:
        s0 += _wsq(mc[x] - im[x], wt[x])
        s1 += _wsq(mc[x + 1] - im[x + 1], wt[x + 1])
        s2 += _wsq(mc[x + 2] - im[x + 2], wt[x + 2])
        s3 += _wsq(mc[x + 3] - im[x + 3], wt[x + 3])
        x += 4
    while x < W:
        s0 += _wsq(mc[x] - im[x], wt[x])
        x += 1
    return (s0 + s1) + (s2 + s3)


# the FFT core in one precision or the other
cdef inline void _fwd(cd_conv* c, const real* a, Py_ssize_t lda, int ha, int wa, int oya,
                      int oxa, const real* b, Py_ssize_t ldb, int hb, int wb, int oyb,
                      int oxb) noexcept nogil:
    if real is float:
        cd_fwd2d_f(c, a, lda, ha, wa, oya, oxa, b, ldb, hb, wb, oyb, oxb)
    else:
        cd_fwd2d_d(c, a, lda, ha, wa, oya, oxa, b, ldb, hb, wb, oyb, oxb)


cdef inline void _inv(cd_conv* c, real* a, Py_ssize_t lda, int ha, int wa, real* b,
                      Py_ssize_t ldb, int hb, int wb) noexcept nogil:
    if real is float:
        cd_inv2d_f(c, a, lda, ha, wa, b, ldb, hb, wb, 0)
    else:
        cd_inv2d_d(c, a, lda, ha, wa, b, ldb, hb, wb, 0)


cdef inline void _pair_mul(cd_conv* c, const real* fa, const real* fb,
                           int conj) noexcept nogil:
    if real is float:
        cd_pair_mul_f(c, fa, fb, conj)
    else:
        cd_pair_mul_d(c, fa, fb, conj)
