# cython: language_level=3
"""Multi-band convolution (direct loop and FFT) and the fused weighted residual.

These kernels trust their inputs: ``cdeblend.observation`` checks shapes, dtypes and
contiguity before calling them. Every loop runs without the GIL. The FFT convolutions call
the C core ``_fft.c`` (see ``_fft.h``) through an :class:`FFTWork` that holds one grid's
plans and buffers (one per thread).

Convolution convention (the "same-size" linear convolution of the spec, zero outside the
arrays): with the kernel centre at ``(ry, rx) = (kh // 2, kw // 2)``,

    out[b, y, x] += sum_{ky, kx} K[b, ky, kx] * src[b', y - oy - (ky - ry), x - ox - (kx - rx)]

where ``(oy, ox)`` is the position of the source grid's origin in the output grid and ``b'`` is
``b`` (or 0 when the source has a single plane that is shared by every band). The adjoint of
this operation is the same call with the kernel flipped in y and x and the offsets negated.
"""

from libc.math cimport log2
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free, malloc
from cython.parallel cimport prange, threadid

from ._fft cimport (cd_conv, cd_conv_free, cd_conv_init, cd_fast_len, cd_fft_cols_d,
                    cd_fft_cols_f, cd_mul2_d, cd_mul2_f, cd_mul_d, cd_mul_f, cd_plan,
                    cd_fwd2d_wrapped_d, cd_spectrum_d)
from ._shared.fused cimport real
from ._shared.gil cimport _release_gil

import numpy as np

cdef extern from *:
    """
    #ifdef _OPENMP
    #define CD_OPENMP 1
    #else
    #define CD_OPENMP 0
    #endif
    """
    const int CD_OPENMP

#: Whether the kernels were built with OpenMP (else conv_exact runs on one thread).
OPENMP = bool(CD_OPENMP)


def convolve_direct(
    const real[:, :, ::1] src,
    const real[:, :, ::1] kernel,
    real[:, :, ::1] out,
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
    if _release_gil(<double>out.shape[0] * out.shape[1] * out.shape[2] * kernel.shape[1]
                    * kernel.shape[2]):
        with nogil:
            _direct_conv(src, kernel, out, oy, ox)
    else:
        _direct_conv(src, kernel, out, oy, ox)


def weighted_residual(
    const real[:, :, ::1] model_conv,
    const real[:, :, ::1] images,
    const real[:, :, ::1] weights,
    real[:, :, ::1] residual,
    bint store=True,
):
    """Return ``0.5 * sum(w * (images - model_conv)^2)`` and store ``w * (model_conv - images)``.

    ``model_conv`` and ``residual`` may be larger than ``images`` (e.g. zero-padded FFT
    buffers): only their ``[:, :H, :W]`` corner is used. The sum is accumulated in double
    precision in a fixed order (deterministic). With ``store=False`` the residual array is
    left untouched (loss only).
    """
    cdef double total
    if _release_gil(<double>images.shape[0] * images.shape[1] * images.shape[2]):
        with nogil:
            total = _weighted_residual(model_conv, images, weights, residual, store)
    else:
        total = _weighted_residual(model_conv, images, weights, residual, store)
    return total


# ------------------------------------------------------------------------------------------
# The kernels (also cimported by _adam_cy through _convolve_cy.pxd)
# ------------------------------------------------------------------------------------------

cdef int _direct_conv(const real[:, :, ::1] src, const real[:, :, ::1] kernel,
                      real[:, :, ::1] out, Py_ssize_t oy, Py_ssize_t ox) except -1 nogil:
    """Accumulate into ``out`` (B, H, W) the convolution of ``src`` (B or 1, h, w), placed at
    ``(oy, ox)`` of out's grid, with the centred kernels (B, kh, kw) (see convolve_direct)."""
    cdef Py_ssize_t nb = out.shape[0], H = out.shape[1], W = out.shape[2]
    cdef Py_ssize_t h = src.shape[1], w = src.shape[2]
    cdef Py_ssize_t kh = kernel.shape[1], kw = kernel.shape[2]
    cdef Py_ssize_t ry = kh // 2, rx = kw // 2
    cdef bint shared = src.shape[0] == 1
    cdef Py_ssize_t b, bs, y, yin, ky, kx, sx, x, xlo, xhi
    cdef real v
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


cdef double _weighted_residual(const real[:, :, ::1] model_conv,
                               const real[:, :, ::1] images,
                               const real[:, :, ::1] weights,
                               real[:, :, ::1] residual, bint store) except? -1 nogil:
    """``0.5 * sum(w * (images - model_conv)^2)``, and ``residual = w * (model_conv -
    images)`` when ``store`` (on the images' ``[:, :H, :W]``; the other arrays may be
    larger). Accumulated in double in a fixed order (deterministic)."""
    cdef Py_ssize_t nb = images.shape[0], H = images.shape[1], W = images.shape[2]
    cdef Py_ssize_t b, y, x
    cdef double total = 0.0
    cdef const real* mc
    cdef const real* im
    cdef const real* wt
    cdef real* rs
    for b in range(nb):
        for y in range(H):
            mc = &model_conv[b, y, 0]
            im = &images[b, y, 0]
            wt = &weights[b, y, 0]
            if store:
                rs = &residual[b, y, 0]
                for x in range(W):
                    rs[x] = wt[x] * (mc[x] - im[x])
            total += _row_wsq(mc, im, wt, W)
    return 0.5 * total


# the FFT core in one precision or the other
cdef inline void _mul(cd_conv* c, const real* f, int conj) noexcept nogil:
    if real is float:
        cd_mul_f(c, f, conj)
    else:
        cd_mul_d(c, f, conj)


cdef inline void _mul2(cd_conv* c, const real* fa, const real* fb,
                       int conj) noexcept nogil:
    if real is float:
        cd_mul2_f(c, fa, fb, conj)
    else:
        cd_mul2_d(c, fa, fb, conj)


cdef int _fft_cube(cd_conv* c, const real[:, :, ::1] src, int oy, int ox,
                   const real[:, :, :, ::1] fk, real[:, :, ::1] out,
                   int conj) except -1 nogil:
    """FFT convolution of ``src`` (B or 1, h, w) placed at ``(oy, ox)`` of the grid with
    every band's kernel (transforms ``fk``, conjugated with ``conj``), the grid's ``[0, gh)
    x [0, gw)`` corner into ``out`` (B, gh, gw): two bands per transform, or one plane
    transformed once and two kernels per inverse transform."""
    cdef Py_ssize_t nb = out.shape[0], gh = out.shape[1], gw = out.shape[2]
    cdef Py_ssize_t h = src.shape[1], w = src.shape[2], b = 0
    cdef const real* s1
    cdef const real* f1
    cdef real* o1
    if src.shape[0] == 1:
        _fwd(c, &src[0, 0, 0], w, h, w, oy, ox, <const real*>NULL, 0, 0, 0, 0, 0)
        while b < nb:
            if b + 1 < nb:
                _mul2(c, &fk[b, 0, 0, 0], &fk[b + 1, 0, 0, 0], conj)
                _inv(c, &out[b, 0, 0], gw, gh, gw, &out[b + 1, 0, 0], gw, gh, gw)
            else:
                _mul(c, &fk[b, 0, 0, 0], conj)
                _inv(c, &out[b, 0, 0], gw, gh, gw, <real*>NULL, 0, 0, 0)
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


# ------------------------------------------------------------------------------------------
# FFT convolution (the C core in _fft.c)
# ------------------------------------------------------------------------------------------

def fast_len(Py_ssize_t n):
    """Smallest ``2^a 3^b 5^c >= n``: the grid sizes the FFT core supports."""
    if n > (1 << 30):
        raise ValueError(f"FFT length {n} is too large")
    return cd_fast_len(<int>max(n, 1))


cdef class FFTWork:
    """Plans and work buffers of FFT convolutions on one ``(n0, n1)`` grid.

    Inputs and outputs span at most ``width`` columns of the grid; ``double`` selects the
    precision. The buffers are reused by every call, so one FFTWork must not be used by two
    threads at once.
    """

    cdef cd_conv c
    cdef readonly int n0, n1, width
    cdef readonly bint double

    def __cinit__(self, int n0, int n1, int width, bint double):
        if n0 < 1 or n1 < 1 or width < 1 or width > n1:
            raise ValueError(f"bad FFT grid ({n0}, {n1}) for width {width}")
        st = cd_conv_init(&self.c, n0, n1, width, double)
        if st == -1:
            raise ValueError(f"FFT grid ({n0}, {n1}) must have sizes 2^a 3^b 5^c")
        if st != 0:
            raise MemoryError(f"no memory for FFT buffers on a ({n0}, {n1}) grid")
        self.n0, self.n1, self.width, self.double = n0, n1, width, double

    def __dealloc__(self):
        cd_conv_free(&self.c)


cdef inline double _fft_work(FFTWork work, double transforms) noexcept:
    """Elementary operations of that many 2-D transforms on the work's grid (for the GIL
    rule of _shared/gil.pxd)."""
    cdef double n = <double>work.n0 * work.n1
    return 5.0 * transforms * n * log2(n + 1.0)


cdef int _check_work(FFTWork work, bint is_double, object fk, Py_ssize_t nb) except -1:
    if work.double != is_double:
        raise TypeError("the FFT work buffers and the arrays differ in precision")
    if fk.shape[0] != nb or fk.shape[1] != 2 or fk.shape[2] != work.n1 or fk.shape[3] != work.n0:
        raise ValueError(f"kernel transforms of shape {tuple(fk.shape)} do not match "
                         f"{nb} bands on the ({work.n0}, {work.n1}) grid")
    return 0


cdef int _kernel_spectrum(cd_conv* c, const double[:, :, ::1] kernels,
                          const Py_ssize_t[::1] iy, const Py_ssize_t[::1] ix,
                          double[:, :, ::1] planes, double[:, :, ::1] spec,
                          real[:, :, :, ::1] o) except -1 nogil:
    cdef Py_ssize_t nb = kernels.shape[0], kh = kernels.shape[1], kw = kernels.shape[2]
    cdef Py_ssize_t n0 = planes.shape[1], n1 = planes.shape[2]
    cdef Py_ssize_t b, y, x, c2, kx, ky, mx, my
    cdef double zr, zi, ur, ui
    # the taps wrap to columns [0, kw - kw // 2) and [n1 - kw // 2, n1): only those columns
    # need the first pass (the whole width when they fold over a narrower grid)
    cdef int wl = <int>(kw - kw // 2), wr = <int>(kw // 2)
    # ``planes`` is zero on entry; each pair's taps are cleared after its transform, so
    # only the taps are written (not the whole grid)
    for b in range(0, nb, 2):
        for c2 in range(2):
            if b + c2 < nb:
                for y in range(kh):
                    for x in range(kw):
                        planes[c2, iy[y], ix[x]] += kernels[b + c2, y, x]
        cd_fwd2d_wrapped_d(c, &planes[0, 0, 0], &planes[1, 0, 0], n1, wl, wr)
        for c2 in range(2):
            for y in range(kh):
                for x in range(kw):
                    planes[c2, iy[y], ix[x]] = 0.0
        cd_spectrum_d(c, &spec[0, 0, 0])
        # Z = A + i B with A, B the transforms of real planes: A(k) = (Z(k) +
        # conj Z(-k)) / 2, B(k) = (Z(k) - conj Z(-k)) / 2i
        for kx in range(n1):
            mx = n1 - kx if kx else 0
            for ky in range(n0):
                my = n0 - ky if ky else 0  # (n0 - ky) % n0, without a division per value
                zr = spec[0, kx, ky]
                zi = spec[1, kx, ky]
                ur = spec[0, mx, my]
                ui = spec[1, mx, my]
                o[b, 0, kx, ky] = <real>(0.5 * (zr + ur))
                o[b, 1, kx, ky] = <real>(0.5 * (zi - ui))
                if b + 1 < nb:
                    o[b + 1, 0, kx, ky] = <real>(0.5 * (zi + ui))
                    o[b + 1, 1, kx, ky] = <real>(-0.5 * (zr - ur))
    return 0


def kernel_spectrum(const double[:, :, ::1] kernels, int n0, int n1, dtype=np.float64):
    """Transforms ``(B, 2, n1, n0)`` (real and imaginary planes, kx major) of the kernels
    wrapped with their centre pixel at index (0, 0) of the ``(n0, n1)`` grid (taps beyond
    the grid fold over): two kernels per complex transform in double precision, separated
    by the symmetry of real inputs and stored in ``dtype`` (float64 or float32; rounded
    once, without a double-precision copy of the whole result)."""
    cdef Py_ssize_t nb = kernels.shape[0], kh = kernels.shape[1], kw = kernels.shape[2]
    cdef FFTWork work = FFTWork(n0, n1, n1, True)
    if np.dtype(dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    out = np.empty((nb, 2, n1, n0), dtype=dtype)
    planes_arr = np.zeros((2, n0, n1), dtype=np.float64)
    spec_arr = np.empty((2, n1, n0), dtype=np.float64)
    # wrapped positions of the taps: C remainders (cdivision) keep the sign, shift first
    iy_arr = (np.arange(kh) - kh // 2) % n0
    ix_arr = (np.arange(kw) - kw // 2) % n1
    cdef Py_ssize_t[::1] iy = iy_arr.astype(np.intp)
    cdef Py_ssize_t[::1] ix = ix_arr.astype(np.intp)
    cdef double[:, :, ::1] planes = planes_arr
    cdef double[:, :, ::1] spec = spec_arr
    cdef bint release = _release_gil(_fft_work(work, (nb + 1) // 2))
    if out.dtype == np.float64:
        _spectrum_into[double](&work.c, kernels, iy, ix, planes, spec, out, release)
    else:
        _spectrum_into[float](&work.c, kernels, iy, ix, planes, spec, out, release)
    return out


cdef int _spectrum_into(cd_conv* c, const double[:, :, ::1] kernels, const Py_ssize_t[::1] iy,
                        const Py_ssize_t[::1] ix, double[:, :, ::1] planes,
                        double[:, :, ::1] spec, real[:, :, :, ::1] o,
                        bint release) except -1:
    if release:
        with nogil:
            _kernel_spectrum(c, kernels, iy, ix, planes, spec, o)
    else:
        _kernel_spectrum(c, kernels, iy, ix, planes, spec, o)
    return 0


def conv_cube(FFTWork work, const real[:, :, ::1] src, int oy, int ox,
              const real[:, :, :, ::1] fk, real[:, :, ::1] out, bint adjoint):
    """Convolve ``src`` (Bs, h, w), placed at ``(oy, ox)`` of the grid, with every band's
    kernel (transforms ``fk`` from :func:`kernel_spectrum`; ``adjoint``: their conjugates,
    the flipped kernels) and write the grid's ``[0, gh) x [0, gw)`` corner to ``out``
    (B, gh, gw). ``Bs`` is the number of bands (band b with kernel b, two bands per
    transform) or 1 (one plane with every kernel). ``out`` must not overlap ``src``."""
    cdef Py_ssize_t nb = out.shape[0], gh = out.shape[1], gw = out.shape[2]
    cdef Py_ssize_t ns = src.shape[0], h = src.shape[1], w = src.shape[2]
    cdef int conj = 1 if adjoint else 0
    _check_work(work, real is double, fk, nb)
    if ns != nb and ns != 1:
        raise ValueError(f"src has {ns} planes, expected {nb} or 1")
    if (oy < 0 or ox < 0 or oy + h > work.n0 or ox + w > work.width or gh > work.n0
            or gw > work.width or h == 0 or w == 0 or gh == 0 or gw == 0):
        raise ValueError(f"src {(h, w)} at {(oy, ox)} or output {(gh, gw)} does not fit the "
                         f"({work.n0}, {work.n1}) grid of width {work.width}")
    if _release_gil(_fft_work(work, nb + (1 if ns == 1 else 0))):
        with nogil:
            _fft_cube(&work.c, src, oy, ox, fk, out, conj)
    else:
        _fft_cube(&work.c, src, oy, ox, fk, out, conj)
    return out


def conv_planes(FFTWork work, const real[::1] src, const Py_ssize_t[:, ::1] src_table,
                const real[:, :, :, ::1] fk, real[::1] out,
                const Py_ssize_t[:, ::1] out_table):
    """Convolve many planes with every band's kernel, two planes per transform.

    Plane k is ``src[o:o + h * w]`` as (h, w) with ``(o, h, w, oy, ox) = src_table[k]``,
    placed at ``(oy, ox)`` of the grid; its B convolved planes, the grid's ``[0, gh) x
    [0, gw)`` corner with ``(o', gh, gw) = out_table[k]``, go to ``out[o':]`` as (B, gh, gw).
    """
    cdef Py_ssize_t nb = fk.shape[0], K = src_table.shape[0], i
    _check_work(work, real is double, fk, nb)
    if out_table.shape[0] != K or src_table.shape[1] != 5 or out_table.shape[1] != 3:
        raise ValueError("src_table must be (K, 5) and out_table (K, 3)")
    for i in range(K):
        o, h, w, oy, ox = (src_table[i, j] for j in range(5))
        oo, gh, gw = (out_table[i, j] for j in range(3))
        if (h < 1 or w < 1 or oy < 0 or ox < 0 or oy + h > work.n0 or ox + w > work.width
                or gh < 1 or gw < 1 or gh > work.n0 or gw > work.width or o < 0
                or o + h * w > src.shape[0] or oo < 0 or oo + nb * gh * gw > out.shape[0]):
            raise ValueError(f"plane {i} does not fit the grid or the buffers")
    if _release_gil(_fft_work(work, K * (1 + nb) / 2.0)):
        with nogil:
            _conv_planes(&work.c, src, src_table, fk, out, out_table)
    else:
        _conv_planes(&work.c, src, src_table, fk, out, out_table)
    return out


cdef int _conv_planes(cd_conv* c, const real[::1] src,
                      const Py_ssize_t[:, ::1] src_table,
                      const real[:, :, :, ::1] fk, real[::1] out,
                      const Py_ssize_t[:, ::1] out_table) except -1 nogil:
    cdef Py_ssize_t nb = fk.shape[0], K = src_table.shape[0], k, b, oa, ob, sa, sb
    cdef Py_ssize_t ha, wa, hb, wb, gha, gwa, ghb, gwb
    k = 0
    while k < K:
        sa = src_table[k, 0]
        ha = src_table[k, 1]
        wa = src_table[k, 2]
        oa = out_table[k, 0]
        gha = out_table[k, 1]
        gwa = out_table[k, 2]
        if k + 1 < K:
            sb = src_table[k + 1, 0]
            hb = src_table[k + 1, 1]
            wb = src_table[k + 1, 2]
            ob = out_table[k + 1, 0]
            ghb = out_table[k + 1, 1]
            gwb = out_table[k + 1, 2]
            _fwd(c, &src[sa], wa, ha, wa, src_table[k, 3], src_table[k, 4],
                 &src[sb], wb, hb, wb, src_table[k + 1, 3], src_table[k + 1, 4])
            for b in range(nb):
                _mul(c, &fk[b, 0, 0, 0], 0)
                _inv(c, &out[oa + b * gha * gwa], gwa, gha, gwa,
                     &out[ob + b * ghb * gwb], gwb, ghb, gwb)
            k += 2
        else:
            _fwd(c, &src[sa], wa, ha, wa, src_table[k, 3], src_table[k, 4],
                 <const real*>NULL, 0, 0, 0, 0, 0)
            b = 0
            while b < nb:
                if b + 1 < nb:
                    _mul2(c, &fk[b, 0, 0, 0], &fk[b + 1, 0, 0, 0], 0)
                    _inv(c, &out[oa + b * gha * gwa], gwa, gha, gwa,
                         &out[oa + (b + 1) * gha * gwa], gwa, gha, gwa)
                else:
                    _mul(c, &fk[b, 0, 0, 0], 0)
                    _inv(c, &out[oa + b * gha * gwa], gwa, gha, gwa, <real*>NULL,
                         0, 0, 0)
                b += 2
            k += 1
    return 0


def fft_cols(FFTWork work, int axis_len, real[:, ::1] re, real[:, ::1] im):
    """In-place forward DFT along axis 0 of the (n, V) complex array ``re + i im``, with
    ``n`` the grid's ``n0`` (``axis_len == 0``) or ``n1`` (1). For tests of the core."""
    cdef const cd_plan* p = &work.c.p0 if axis_len == 0 else &work.c.p1
    cdef int n = work.n0 if axis_len == 0 else work.n1
    if re.shape[0] != n or im.shape[0] != n or re.shape[1] != im.shape[1]:
        raise ValueError("re and im must be (n, V) arrays of the plan's length")
    if real is double and not work.double or real is float and work.double:
        raise TypeError("precision mismatch")
    with nogil:
        if real is float:
            cd_fft_cols_f(&work.c, p, re.shape[1], re.shape[1], &re[0, 0], &im[0, 0])
        else:
            cd_fft_cols_d(&work.c, p, re.shape[1], re.shape[1], &re[0, 0], &im[0, 0])


# ------------------------------------------------------------------------------------------
# The products' exact convolutions: many FFT grids in one call, the items on threads
# ------------------------------------------------------------------------------------------

#: Below this many grid values times bands (summed over the items) a call of conv_exact
#: stays on one thread: starting and joining the threads would cost more than they save
#: (the threshold of the fit's iterations, _adam_cy._PARALLEL_WORK).
cdef double _EXACT_PARALLEL_WORK = 5.0 * 128 * 128


def exact_parallel_work(work=None):
    """The threshold above (set it if given; for tests, which need small cases on both
    paths). Returns the previous value."""
    global _EXACT_PARALLEL_WORK
    old = _EXACT_PARALLEL_WORK
    if work is not None:
        _EXACT_PARALLEL_WORK = work
    return old


#: Simulated allocation failures (for tests of the fallbacks): the threads from these
#: indices on get no work buffers (before the threads start) or no FFT plans (in the loop).
cdef int _FAIL_BUFFERS = 1 << 30
cdef int _FAIL_PLANS = 1 << 30


def exact_memory_faults(buffers=None, plans=None):
    """Simulate running out of memory in :func:`conv_exact` from thread ``buffers`` on (its
    work buffers) or ``plans`` on (its FFT plans); -1 restores normal allocation. For tests.
    Returns the previous ``(buffers, plans)`` (-1: none)."""
    global _FAIL_BUFFERS, _FAIL_PLANS
    old = tuple(-1 if v == 1 << 30 else v for v in (_FAIL_BUFFERS, _FAIL_PLANS))
    if buffers is not None:
        _FAIL_BUFFERS = 1 << 30 if buffers < 0 else buffers
    if plans is not None:
        _FAIL_PLANS = 1 << 30 if plans < 0 else plans
    return old


ctypedef struct _ExactThread:
    cd_conv c        # FFT plans and buffers of grid ``grid`` (none while grid is -1)
    Py_ssize_t grid
    double* tmp      # the item's double-precision convolution, (B, gh, gw)
    int* pre         # prefix counts of the support cut, (gh + 1) x (gw + 1)


def conv_exact(const double[::1] src, const Py_ssize_t[:, ::1] table,
               const Py_ssize_t[:, ::1] grids, tuple spectra, real[::1] out, int ry, int rx,
               bint support, int num_threads=1):
    """Convolve multi-band planes band by band in double precision, for the products of a
    fit (the per-source models that share the flux), the items on up to ``num_threads``
    threads.

    Item k, ``(o, h, w, oy, ox, o', gh, gw, g) = table[k]``, is ``src[o:o + B * h * w]`` as
    (B, h, w), placed at ``(oy, ox)`` of FFT grid ``g``: ``(n0, n1, width) = grids[g]``,
    inputs and outputs at most ``width`` columns wide, the kernels' transforms on it
    ``spectra[g]`` (:func:`kernel_spectrum`, float64). The grid's ``[0, gh) x [0, gw)``
    corner of its convolution goes to ``out[o':]`` as (B, gh, gw) in out's precision. With
    ``support`` each band is cut to the support of the true convolution for kernels without
    zero taps: pixels within ``ry`` rows and ``rx`` columns of a non-zero input pixel (FFT
    round-off elsewhere would claim flux).

    Each item is computed by one thread with its own FFT buffers, by the same operations
    as on one thread: the results do not depend on the thread count. Threads take items in
    the table's order, one at a time (put the large grids first). A call with less work than
    :func:`exact_parallel_work`, or built without OpenMP, stays on one thread; so does every
    thread for which the work buffers cannot be allocated. Returns the threads used.
    """
    cdef Py_ssize_t K = table.shape[0], G = grids.shape[0], nb = 0, k, g
    cdef Py_ssize_t tmp_size = 0, pre_size = 0
    cdef double work = 0.0, flops = 0.0, n
    cdef int nt, nalloc, t
    cdef const double** fks
    cdef _ExactThread* th
    cdef char* failed
    cdef const double[:, :, :, ::1] fk
    if table.shape[1] != 9 or grids.shape[1] != 3:
        raise ValueError("table must be (K, 9) and grids (G, 3)")
    if len(spectra) != G:
        raise ValueError(f"got {len(spectra)} spectra for {G} grids")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    for g in range(G):
        n0, n1, width = grids[g, 0], grids[g, 1], grids[g, 2]
        if (n0 < 1 or n1 < 1 or n0 > (1 << 30) or n1 > (1 << 30) or cd_fast_len(n0) != n0
                or cd_fast_len(n1) != n1 or width < 1 or width > n1):
            raise ValueError(f"bad FFT grid {g}: ({n0}, {n1}) for width {width}")
        fk = spectra[g]
        if g == 0:
            nb = fk.shape[0]
        if (nb < 1 or fk.shape[0] != nb or fk.shape[1] != 2 or fk.shape[2] != n1
                or fk.shape[3] != n0):
            raise ValueError(f"kernel transforms of shape {tuple(fk.shape)} do not match "
                             f"{nb} bands on the ({n0}, {n1}) grid")
    for k in range(K):
        o, h, w, oy, ox, oo, gh, gw, g = (table[k, j] for j in range(9))
        if (g < 0 or g >= G or h < 1 or w < 1 or oy < 0 or ox < 0 or oy + h > gh
                or ox + w > gw or gh > grids[g, 0] or gw > grids[g, 2] or o < 0
                or o + nb * h * w > src.shape[0] or oo < 0 or oo + nb * gh * gw > out.shape[0]):
            raise ValueError(f"item {k} does not fit its grid or the buffers")
        tmp_size = max(tmp_size, nb * gh * gw)
        pre_size = max(pre_size, (gh + 1) * (gw + 1))
        n = <double>grids[g, 0] * grids[g, 1]
        work += n * nb
        flops += 5.0 * nb * n * log2(n + 1.0)  # as _fft_work, for the GIL rule
    if K == 0:
        return 1
    nt = num_threads if CD_OPENMP and work >= _EXACT_PARALLEL_WORK else 1
    nt = <int>min(nt, K)
    nalloc = nt
    fks = <const double**>malloc(G * sizeof(double*))
    failed = <char*>calloc(K, sizeof(char))
    th = <_ExactThread*>calloc(nalloc, sizeof(_ExactThread))
    try:
        if fks == NULL or failed == NULL or th == NULL:
            raise MemoryError()
        for t in range(nalloc):
            th[t].grid = -1
        for g in range(G):
            fk = spectra[g]
            fks[g] = &fk[0, 0, 0, 0]
        # each thread's buffers; a thread without them is not started
        for t in range(nalloc):
            th[t].tmp = <double*>malloc(tmp_size * sizeof(double))
            th[t].pre = <int*>malloc(pre_size * sizeof(int))
            if th[t].tmp == NULL or th[t].pre == NULL or t >= _FAIL_BUFFERS:
                if t == 0:
                    raise MemoryError()
                nt = t
                break
        if nt > 1 or _release_gil(flops):
            with nogil:
                _exact_items(th, nt, src, table, grids, fks, nb, out, ry, rx, support, failed)
        else:
            _exact_items(th, nt, src, table, grids, fks, nb, out, ry, rx, support, failed)
        # the items whose thread could not get FFT buffers, on the calling thread
        for k in range(K):
            if failed[k] and _exact_item(th, 0, src, table, grids, fks, nb, out, ry, rx,
                                         support, k) != 0:
                g = table[k, 8]
                raise MemoryError(f"no memory for FFT buffers on the ({grids[g, 0]}, "
                                  f"{grids[g, 1]}) grid")
    finally:
        if th != NULL:
            for t in range(nalloc):
                _exact_thread_free(&th[t])
        free(th)
        free(failed)
        free(fks)
    return nt


cdef void _exact_thread_free(_ExactThread* t) noexcept nogil:
    if t.grid >= 0:
        cd_conv_free(&t.c)
    t.grid = -1
    free(t.tmp)
    free(t.pre)
    t.tmp = NULL
    t.pre = NULL


cdef void _exact_items(_ExactThread* th, int nt, const double[::1] src,
                       const Py_ssize_t[:, ::1] table, const Py_ssize_t[:, ::1] grids,
                       const double** fks, Py_ssize_t nb, real[::1] out, int ry, int rx,
                       bint support, char* failed) noexcept nogil:
    """:func:`_exact_item` of every item, thread t with ``th[t]`` (``failed[k]`` set when
    the thread had no memory for item k's grid)."""
    cdef Py_ssize_t K = table.shape[0], k
    if nt <= 1:
        for k in range(K):
            failed[k] = _exact_item(th, 0, src, table, grids, fks, nb, out, ry, rx, support,
                                    k) != 0
        return
    # one item at a time: their costs vary with their grids
    for k in prange(K, num_threads=nt, schedule="dynamic", chunksize=1):
        failed[k] = _exact_item(th, threadid(), src, table, grids, fks, nb, out, ry, rx,
                                support, k) != 0


cdef int _exact_item(_ExactThread* th, int tid, const double[::1] src,
                     const Py_ssize_t[:, ::1] table, const Py_ssize_t[:, ::1] grids,
                     const double** fks, Py_ssize_t nb, real[::1] out, int ry, int rx,
                     bint support, Py_ssize_t k) noexcept nogil:
    """Item ``k`` of :func:`conv_exact` with thread ``tid``'s buffers ``th[tid]``, its FFT
    plans made for the item's grid if they are another's; -1 (nothing written) when out of
    memory."""
    cdef _ExactThread* t = &th[tid]
    cdef Py_ssize_t g = table[k, 8]
    if t.grid != g:
        if t.grid >= 0:
            cd_conv_free(&t.c)
            t.grid = -1
        if tid >= _FAIL_PLANS or cd_conv_init(&t.c, <int>grids[g, 0], <int>grids[g, 1],
                                              <int>grids[g, 2], 1) != 0:
            return -1
        t.grid = g
    _exact_one(&t.c, src, table, k, fks[g], nb, out, ry, rx, support, t.tmp, t.pre)
    return 0


cdef void _exact_one(cd_conv* c, const double[::1] src, const Py_ssize_t[:, ::1] table,
                     Py_ssize_t k, const double* fk, Py_ssize_t nb, real[::1] out, int ry,
                     int rx, bint support, double* tmp, int* pre) noexcept nogil:
    """Item ``k`` of :func:`conv_exact` on ``c``'s grid (kernel transforms ``fk``, band b's
    at ``fk + b * 2 * n1 * n0``), through the work buffers ``tmp`` and ``pre``."""
    cdef Py_ssize_t o = table[k, 0], h = table[k, 1], w = table[k, 2]
    cdef Py_ssize_t oy = table[k, 3], ox = table[k, 4]
    cdef Py_ssize_t oo = table[k, 5], gh = table[k, 6], gw = table[k, 7]
    cdef Py_ssize_t fstride = 2 * <Py_ssize_t>c.n1 * c.n0, b, y, x, ya, yb, xa, xb
    cdef const double* s1
    cdef const double* f1
    cdef double* t1
    cdef int cnt
    b = 0
    while b < nb:  # two bands per transform
        s1 = &src[o + (b + 1) * h * w] if b + 1 < nb else NULL
        f1 = fk + (b + 1) * fstride if b + 1 < nb else NULL
        t1 = tmp + (b + 1) * gh * gw if b + 1 < nb else NULL
        _fwd(c, &src[o + b * h * w], w, h, w, oy, ox, s1, w, h, w, oy, ox)
        _pair_mul(c, fk + b * fstride, f1, 0)
        _inv(c, tmp + b * gh * gw, gw, gh, gw, t1, gw, gh, gw)
        b += 2
    for b in range(nb):
        if support:
            # prefix counts of the non-zero input pixels on the output grid
            for x in range(gw + 1):
                pre[x] = 0
            for y in range(gh):
                cnt = 0
                pre[(y + 1) * (gw + 1)] = 0
                for x in range(gw):
                    if (oy <= y < oy + h and ox <= x < ox + w
                            and src[o + (b * h + y - oy) * w + x - ox] != 0):
                        cnt += 1
                    pre[(y + 1) * (gw + 1) + x + 1] = pre[y * (gw + 1) + x + 1] + cnt
        for y in range(gh):
            ya = y - ry if y > ry else 0
            yb = y + ry + 1 if y + ry + 1 < gh else gh
            for x in range(gw):
                if support:
                    xa = x - rx if x > rx else 0
                    xb = x + rx + 1 if x + rx + 1 < gw else gw
                    if (pre[yb * (gw + 1) + xb] - pre[ya * (gw + 1) + xb]
                            - pre[yb * (gw + 1) + xa] + pre[ya * (gw + 1) + xa]) == 0:
                        out[oo + (b * gh + y) * gw + x] = 0
                        continue
                out[oo + (b * gh + y) * gw + x] = <real>tmp[(b * gh + y) * gw + x]


# ------------------------------------------------------------------------------------------
# Box geometry of the batched convolutions
# ------------------------------------------------------------------------------------------

cdef inline void _clip_row(int64_t y0, int64_t x0, int64_t h, int64_t w, int64_t H, int64_t W,
                           int64_t* out) noexcept nogil:
    """``cdeblend.box.clip`` of one box into ``out[0:4]``."""
    cdef int64_t ya = y0 if y0 > 0 else 0
    cdef int64_t xa = x0 if x0 > 0 else 0
    cdef int64_t yb = y0 + h if y0 + h < H else H
    cdef int64_t xb = x0 + w if x0 + w < W else W
    out[0] = ya
    out[1] = xa
    out[2] = yb - ya if yb > ya else 0
    out[3] = xb - xa if xb > xa else 0


def grown_boxes(const int64_t[:, ::1] boxes, int64_t H, int64_t W, int64_t ry, int64_t rx,
                int64_t[:, ::1] clipped, int64_t[:, ::1] grown):
    """Every box clipped to the ``(H, W)`` frame, and that grown by ``(ry, rx)`` and clipped
    again (``Convolver.grown_box`` of each row; (K, 4) int64 rows ``y0, x0, h, w``).

    One call for all the boxes of a batched convolution: the per-box Python arithmetic it
    replaces held the GIL for longer than many of the small blends' FFTs took.
    """
    cdef Py_ssize_t k, n = boxes.shape[0]
    if boxes.shape[1] != 4 or clipped.shape[0] != n or grown.shape[0] != n:
        raise ValueError("boxes, clipped and grown must be (K, 4) arrays of one K")
    if clipped.shape[1] != 4 or grown.shape[1] != 4:
        raise ValueError("boxes, clipped and grown must be (K, 4) arrays of one K")
    for k in range(n):
        _clip_row(boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3], H, W, &clipped[k, 0])
        _clip_row(clipped[k, 0] - ry, clipped[k, 1] - rx, clipped[k, 2] + 2 * ry,
                  clipped[k, 3] + 2 * rx, H, W, &grown[k, 0])
