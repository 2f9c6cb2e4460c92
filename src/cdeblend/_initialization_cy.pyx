# cython: language_level=3
"""Kernels of the multi-band initialisation (:mod:`cdeblend.initialization`).

The chi^2 detection coadd, the matched-filter S/N and the SED ratio at the peaks, the trimmed
and boxed monotonic-mask morphology of a peak (the flood fill of ``_monotonic_cy``, cimported),
the PSF-shaped fallback and the bulge/disk split.

Each replaces a handful of numpy calls on stamps of a few hundred to a few thousand elements.
numpy releases the GIL for every such call, and on a thread pool of small blends the
hand-overs cost more than the work (see ``_shared/gil.pxd``); these kernels keep the GIL for
small work and release it for large work (big blends), computing the same thing either way.
Sums that the numpy code did with ``np.sum`` are done in numpy's own pairwise order
(``_np_sum``), so they give the same bits. Outputs are allocated with ``np.empty`` and zeroed
here: ``np.zeros`` releases the GIL for every allocation above 1 KiB (calloc).

PSFs and kernels are typed (``other_real``) independently of the images (``real``) and of the
float64 detection image.
"""

from libc.math cimport INFINITY, isfinite, sqrt
from libc.stdint cimport int64_t, uint8_t
from libc.string cimport memset

from ._monotonic_cy cimport _flood_fill, _mm_value
from ._shared.fused cimport other_real, real
from ._shared.gil cimport _release_gil

import numpy as np


# ------------------------------------------------------------------------------- helpers
cdef double _pairwise(const double[::1] a, Py_ssize_t i0, Py_ssize_t n) except? -1 nogil:
    """numpy's pairwise summation of ``a[i0:i0 + n]`` (``pairwise_sum`` of numpy's
    loops_utils: blocks of at most 128 summed with 8 interleaved accumulators)."""
    cdef double r0, r1, r2, r3, r4, r5, r6, r7, res
    cdef Py_ssize_t i, n2
    if n < 8:
        res = -0.0
        for i in range(i0, i0 + n):
            res += a[i]
        return res
    if n <= 128:
        r0 = a[i0]
        r1 = a[i0 + 1]
        r2 = a[i0 + 2]
        r3 = a[i0 + 3]
        r4 = a[i0 + 4]
        r5 = a[i0 + 5]
        r6 = a[i0 + 6]
        r7 = a[i0 + 7]
        i = 8
        while i < n - n % 8:
            r0 += a[i0 + i]
            r1 += a[i0 + i + 1]
            r2 += a[i0 + i + 2]
            r3 += a[i0 + i + 3]
            r4 += a[i0 + i + 4]
            r5 += a[i0 + i + 5]
            r6 += a[i0 + i + 6]
            r7 += a[i0 + i + 7]
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            res += a[i0 + i]
            i += 1
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return _pairwise(a, i0, n2) + _pairwise(a, i0 + n2, n - n2)


cdef inline double _np_sum(const double[::1] a, Py_ssize_t n) except? -1 nogil:
    """``np.sum(a[:n])`` bit for bit: the reduction adds the pairwise sum to its identity."""
    return 0.0 + _pairwise(a, 0, n)


cdef inline void _span(Py_ssize_t c, Py_ssize_t size, Py_ssize_t n, Py_ssize_t* lo,
                       Py_ssize_t* hi) noexcept nogil:
    """Rows (or columns) ``[lo, hi)`` of an axis of length n covered by a centred stamp of
    ``size`` placed at c (the stamp's row ``r`` lies on ``c - size // 2 + r``)."""
    cdef Py_ssize_t a = c - size // 2
    lo[0] = a if a > 0 else 0
    hi[0] = a + size if a + size < n else n


cdef inline Py_ssize_t _span_len(Py_ssize_t c, Py_ssize_t size, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t lo, hi
    _span(c, size, n, &lo, &hi)
    return hi - lo if hi > lo else 0


cdef int _check_peaks(const Py_ssize_t[:, ::1] peaks, Py_ssize_t H, Py_ssize_t W) except -1:
    """ValueError unless ``peaks`` is (N, 2) with every (y, x) inside an (H, W) image."""
    cdef Py_ssize_t i
    if peaks.shape[1] != 2:
        raise ValueError(f"peaks must have shape (N, 2), got ({peaks.shape[0]}, "
                         f"{peaks.shape[1]})")
    for i in range(peaks.shape[0]):
        if not (0 <= peaks[i, 0] < H and 0 <= peaks[i, 1] < W):
            raise ValueError(f"peaks[{i}] = ({peaks[i, 0]}, {peaks[i, 1]}) is outside the "
                             f"image of shape ({H}, {W})")
    return 0


# ------------------------------------------------------------------------ detection image
def detection_coadd(const real[:, :, ::1] images, const double[::1] noise):
    """The chi^2 coadd ``D[y, x] = sum_b images[b, y, x] / noise[b]**2`` in float64.

    Parameters
    ----------
    images : (B, H, W) float32 or float64 array
    noise : (B,) float64 array
        Noise RMS per band; bands with ``noise <= 0`` get no weight.

    Returns
    -------
    numpy.ndarray
        (H, W) float64: ``0 + w_0 images_0 + w_1 images_1 + ...`` with
        ``w_b = 1 / (noise_b * noise_b)``, the bands added in order.
    """
    cdef Py_ssize_t nb = images.shape[0], H = images.shape[1], W = images.shape[2], b
    if noise.shape[0] != nb:
        raise ValueError(f"noise must have shape ({nb},), got ({noise.shape[0]},)")
    inv = np.empty(nb)
    out = np.empty((H, W))
    cdef double[::1] inv_v = inv
    cdef double[:, ::1] D = out
    for b in range(nb):
        inv_v[b] = 1.0 / (noise[b] * noise[b]) if noise[b] > 0 else 0.0
    if _release_gil(<double>nb * H * W):
        with nogil:
            _detection_coadd(images, inv_v, D)
    else:
        _detection_coadd(images, inv_v, D)
    return out


cdef int _detection_coadd(const real[:, :, ::1] images, const double[::1] inv,
                          double[:, ::1] D) except -1 nogil:
    cdef Py_ssize_t nb = images.shape[0], H = images.shape[1], W = images.shape[2]
    cdef Py_ssize_t b, y, x
    cdef double w
    for y in range(H):  # row by row: the output row stays in cache across the bands
        for x in range(W):
            D[y, x] = 0.0
        for b in range(nb):
            w = inv[b]
            for x in range(W):
                D[y, x] += w * <double>images[b, y, x]
    return 0


# -------------------------------------------------------------------- S/N and SED ratio
def peak_snrs(const real[:, :, ::1] images, const real[:, :, ::1] variance,
              const other_real[:, :, ::1] psfs, const Py_ssize_t[:, ::1] peaks):
    """Matched-filter S/N of a point source at each peak over all bands.

    ``sum(I P) / sqrt(sum(P^2 V))`` over the overlap of the image and the PSFs centred on
    the peak (0 when the denominator is not positive), each sum over (band, row, column) in
    numpy's order, so the result equals the numpy expression bit for bit.

    Parameters
    ----------
    images, variance : (B, H, W) arrays of one dtype
    psfs : (B, ph, pw) array
    peaks : (N, 2) intp array
        (y, x) inside the image.

    Returns
    -------
    numpy.ndarray
        (N,) float64.
    """
    cdef Py_ssize_t nb = images.shape[0], H = images.shape[1], W = images.shape[2]
    cdef Py_ssize_t ph = psfs.shape[1], pw = psfs.shape[2], i
    cdef double work = 0.0
    if variance.shape[0] != nb or variance.shape[1] != H or variance.shape[2] != W:
        raise ValueError(f"variance must have the shape of images ({nb}, {H}, {W}), got "
                         f"({variance.shape[0]}, {variance.shape[1]}, {variance.shape[2]})")
    if psfs.shape[0] != nb:
        raise ValueError(f"psfs must have {nb} bands, got {psfs.shape[0]}")
    _check_peaks(peaks, H, W)
    snr = np.empty(peaks.shape[0])
    scratch = np.empty(nb * ph * pw)
    cdef double[::1] snr_v = snr, scratch_v = scratch
    for i in range(peaks.shape[0]):
        work += (2.0 * nb * _span_len(peaks[i, 0], ph, H)) * _span_len(peaks[i, 1], pw, W)
    if _release_gil(work):
        with nogil:
            _peak_snrs(images, variance, psfs, peaks, scratch_v, snr_v)
    else:
        _peak_snrs(images, variance, psfs, peaks, scratch_v, snr_v)
    return snr


cdef int _peak_snrs(const real[:, :, ::1] images, const real[:, :, ::1] variance,
                    const other_real[:, :, ::1] psfs, const Py_ssize_t[:, ::1] peaks,
                    double[::1] scratch, double[::1] snr) except -1 nogil:
    cdef Py_ssize_t nb = images.shape[0], H = images.shape[1], W = images.shape[2]
    cdef Py_ssize_t ph = psfs.shape[1], pw = psfs.shape[2]
    cdef Py_ssize_t i, b, y, x, k, py, px, oy, ox, ya, yb, xa, xb
    cdef double num, den, p
    for i in range(peaks.shape[0]):
        py = peaks[i, 0]
        px = peaks[i, 1]
        _span(py, ph, H, &ya, &yb)
        _span(px, pw, W, &xa, &xb)
        oy = ph // 2 - py  # PSF row of image row y: y + oy
        ox = pw // 2 - px
        # the products of the numpy expression, then its pairwise sum
        k = 0
        for b in range(nb):
            for y in range(ya, yb):
                for x in range(xa, xb):
                    scratch[k] = <double>images[b, y, x] * <double>psfs[b, y + oy, x + ox]
                    k += 1
        num = _np_sum(scratch, k)
        k = 0
        for b in range(nb):
            for y in range(ya, yb):
                for x in range(xa, xb):
                    p = psfs[b, y + oy, x + ox]
                    scratch[k] = p * p * <double>variance[b, y, x]
                    k += 1
        den = _np_sum(scratch, k)
        snr[i] = num / sqrt(den) if den > 0 else 0.0
    return 0


def conv_at(const double[:, ::1] plane, const other_real[:, :, ::1] kernels, Py_ssize_t y,
            Py_ssize_t x):
    """``convolve(plane, kernels[b])[y, x]`` for every band (zero outside the plane).

    Each value is the numpy sum, over the pixels of the plane under the centred kernel in
    row-major order, of ``plane * flipped kernel`` (bit for bit).

    Parameters
    ----------
    plane : (H, W) float64 array
    kernels : (B, kh, kw) array, odd sizes
    y, x : int
        Inside the plane.

    Returns
    -------
    numpy.ndarray
        (B,) float64.
    """
    cdef Py_ssize_t H = plane.shape[0], W = plane.shape[1]
    if kernels.shape[1] % 2 == 0 or kernels.shape[2] % 2 == 0:
        raise ValueError(f"kernels must have odd sizes, got ({kernels.shape[1]}, "
                         f"{kernels.shape[2]})")
    if not (0 <= y < H and 0 <= x < W):
        raise ValueError(f"({y}, {x}) is outside the plane of shape ({H}, {W})")
    out = np.empty(kernels.shape[0])
    scratch = np.empty(kernels.shape[1] * kernels.shape[2])
    cdef double[::1] out_v = out, scratch_v = scratch
    if _release_gil(<double>kernels.shape[0] * _span_len(y, kernels.shape[1], H)
                    * _span_len(x, kernels.shape[2], W)):
        with nogil:
            _conv_at(plane, kernels, y, x, scratch_v, out_v)
    else:
        _conv_at(plane, kernels, y, x, scratch_v, out_v)
    return out


cdef int _conv_at(const double[:, ::1] plane, const other_real[:, :, ::1] kernels, Py_ssize_t y,
                  Py_ssize_t x, double[::1] scratch, double[::1] out) except -1 nogil:
    """``out[b]``: the convolution of ``plane`` with ``kernels[b]`` at (y, x) (see conv_at)."""
    cdef Py_ssize_t H = plane.shape[0], W = plane.shape[1]
    cdef Py_ssize_t kh = kernels.shape[1], kw = kernels.shape[2]
    cdef Py_ssize_t b, yy, xx, k, ya, yb, xa, xb
    cdef Py_ssize_t oy = y + kh // 2, ox = x + kw // 2  # kernel row of plane row yy: oy - yy
    _span(y, kh, H, &ya, &yb)
    _span(x, kw, W, &xa, &xb)
    for b in range(kernels.shape[0]):
        k = 0
        for yy in range(ya, yb):
            for xx in range(xa, xb):
                scratch[k] = plane[yy, xx] * <double>kernels[b, oy - yy, ox - xx]
                k += 1
        out[b] = _np_sum(scratch, k)
    return 0


def peak_seds(const real[:, :, ::1] images, const double[:, ::1] D,
              const other_real[:, :, ::1] kernels, const Py_ssize_t[:, ::1] peaks,
              const double[::1] scale):
    """Initial SEDs of extended components: the ratio of the image to the convolved
    detection image at each peak, ``images[b, y, x] / conv(D, kernels[b])[y, x]`` (0 where
    the convolution is 0 or the ratio is not finite and positive), times ``scale[i]``.

    Parameters
    ----------
    images : (B, H, W) array
    D : (H, W) float64 array
        The detection image.
    kernels : (B, kh, kw) array, odd sizes
        The difference kernels.
    peaks : (N, 2) intp array
        (y, x) inside the image.
    scale : (N,) float64 array
        Factor per peak (the morphology's maximum); rows with ``scale == 0`` are skipped
        and left 0.

    Returns
    -------
    numpy.ndarray
        (N, B) float64.
    """
    cdef Py_ssize_t nb = images.shape[0], H = images.shape[1], W = images.shape[2]
    cdef Py_ssize_t kh = kernels.shape[1], kw = kernels.shape[2], i
    cdef double work = 0.0
    if D.shape[0] != H or D.shape[1] != W:
        raise ValueError(f"D must have shape ({H}, {W}), got ({D.shape[0]}, {D.shape[1]})")
    if kernels.shape[0] != nb:
        raise ValueError(f"kernels must have {nb} bands, got {kernels.shape[0]}")
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernels must have odd sizes, got ({kh}, {kw})")
    _check_peaks(peaks, H, W)
    if scale.shape[0] != peaks.shape[0]:
        raise ValueError(f"scale must have shape ({peaks.shape[0]},), got ({scale.shape[0]},)")
    sed = np.empty((peaks.shape[0], nb))
    conv = np.empty(nb)
    scratch = np.empty(kh * kw)
    cdef double[:, ::1] sed_v = sed
    cdef double[::1] conv_v = conv, scratch_v = scratch
    for i in range(peaks.shape[0]):
        if scale[i] != 0:
            work += (<double>nb * _span_len(peaks[i, 0], kh, H)) * _span_len(peaks[i, 1], kw, W)
    if _release_gil(work):
        with nogil:
            _peak_seds(images, D, kernels, peaks, scale, scratch_v, conv_v, sed_v)
    else:
        _peak_seds(images, D, kernels, peaks, scale, scratch_v, conv_v, sed_v)
    return sed


cdef int _peak_seds(const real[:, :, ::1] images, const double[:, ::1] D,
                    const other_real[:, :, ::1] kernels, const Py_ssize_t[:, ::1] peaks,
                    const double[::1] scale, double[::1] scratch, double[::1] conv,
                    double[:, ::1] sed) except -1 nogil:
    cdef Py_ssize_t i, b, py, px
    cdef double r
    for i in range(peaks.shape[0]):
        if scale[i] == 0:
            for b in range(images.shape[0]):
                sed[i, b] = 0.0
            continue
        py = peaks[i, 0]
        px = peaks[i, 1]
        _conv_at(D, kernels, py, px, scratch, conv)
        for b in range(images.shape[0]):
            r = <double>images[b, py, px] / conv[b] if conv[b] != 0 else 0.0
            if not (isfinite(r) and r > 0):
                r = 0.0
            sed[i, b] = r * scale[i]
    return 0


# ------------------------------------------------------------------ extended morphology
def mask_buffers(Py_ssize_t H, Py_ssize_t W):
    """The flood fill's buffers for an (H, W) image: ``accepted`` (uint8, zero), ``queue``
    (int64, H * W, uninitialised) and ``values`` (float64, zero)."""
    if H < 0 or W < 0:
        raise ValueError(f"H and W must be >= 0, got ({H}, {W})")
    accepted = np.empty((H, W), dtype=np.uint8)
    queue = np.empty(H * W, dtype=np.int64)
    values = np.empty((H, W))
    cdef uint8_t[:, ::1] acc_v = accepted
    cdef double[:, ::1] val_v = values
    if H * W == 0:
        return accepted, queue, values
    if _release_gil(<double>H * W):
        with nogil:
            memset(&acc_v[0, 0], 0, H * W * sizeof(uint8_t))
            memset(&val_v[0, 0], 0, H * W * sizeof(double))
    else:
        memset(&acc_v[0, 0], 0, H * W * sizeof(uint8_t))
        memset(&val_v[0, 0], 0, H * W * sizeof(double))
    return accepted, queue, values


def extended_morphology(const double[:, ::1] D, Py_ssize_t py, Py_ssize_t px,
                        bint center_flip, double t0, Py_ssize_t padding,
                        uint8_t[:, ::1] accepted, int64_t[::1] queue, double[:, ::1] values,
                        double[:, ::1] claimed=None, uint8_t[:, ::1] covered=None):
    """Trimmed, boxed and peak-normalised monotonic-mask morphology of the peak (py, px).

    The detection image is symmetrised about the peak (about the image's middle instead
    when ``center_flip`` and the peak is the central pixel: the reference's quirk); the
    flood fill (see :func:`monotonic_mask`) starts on the brightest symmetrised pixel of
    the peak's 3 x 3 neighbourhood. With ``t0 > 0`` the accepted values ``<= t0`` are
    dropped and the box is the bounds of the others grown by ``2 * padding``; otherwise the
    box is the bounds of all accepted pixels grown by ``padding``; either way clipped to the
    image. The morphology is the kept values on that box (0 elsewhere) divided by their
    maximum. The inputs are taken to be finite.

    ``accepted``, ``queue`` and ``values`` are the flood fill's buffers (zero on entry, and
    reset on exit). With ``claimed`` (float64) and ``covered`` (uint8), both (H, W), every
    accepted pixel of positive value ``v`` adds ``v`` to ``claimed`` and sets ``covered``
    (``residual_init``), whether or not a morphology is returned.

    Returns
    -------
    None or (morph, box, peak)
        None when no kept value is positive; else the (h, w) float64 morphology, its box
        ``(y0, x0, h, w)`` and the maximum it was divided by.
    """
    cdef Py_ssize_t H = D.shape[0], W = D.shape[1], n
    cdef Py_ssize_t[4] box = [0, 0, 0, 0]
    cdef double peak = 0.0
    cdef bint residual = claimed is not None
    cdef double[:, ::1] out = None
    if accepted.shape[0] != H or accepted.shape[1] != W:
        raise ValueError(f"accepted must have shape ({H}, {W}), got "
                         f"({accepted.shape[0]}, {accepted.shape[1]})")
    if values.shape[0] != H or values.shape[1] != W:
        raise ValueError(f"values must have shape ({H}, {W}), got "
                         f"({values.shape[0]}, {values.shape[1]})")
    if queue.shape[0] < H * W:
        raise ValueError(f"queue must hold at least {H * W} entries, got {queue.shape[0]}")
    if not (0 <= py < H and 0 <= px < W):
        raise ValueError(f"peak ({py}, {px}) is outside the image of shape ({H}, {W})")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if residual != (covered is not None):
        raise ValueError("claimed and covered must be given together")
    if residual and (claimed.shape[0] != H or claimed.shape[1] != W):
        raise ValueError(f"claimed must have shape ({H}, {W}), got "
                         f"({claimed.shape[0]}, {claimed.shape[1]})")
    if residual and (covered.shape[0] != H or covered.shape[1] != W):
        raise ValueError(f"covered must have shape ({H}, {W}), got "
                         f"({covered.shape[0]}, {covered.shape[1]})")
    # the fill may visit every pixel; what follows visits the n accepted ones
    if _release_gil(<double>H * W):
        with nogil:
            n = _mask_and_box(D, py, px, center_flip, t0, padding, accepted, queue, values,
                              box, &peak)
    else:
        n = _mask_and_box(D, py, px, center_flip, t0, padding, accepted, queue, values, box,
                          &peak)
    morph = None
    if peak > 0:
        morph = np.empty((box[2], box[3]))
        out = morph
    if _release_gil(<double>n + box[2] * box[3]):
        with nogil:
            _mask_store(n, t0, peak, box, accepted, queue, values, out, claimed, covered)
    else:
        _mask_store(n, t0, peak, box, accepted, queue, values, out, claimed, covered)
    if morph is None:
        return None
    return morph, (box[0], box[1], box[2], box[3]), peak


cdef Py_ssize_t _mask_and_box(const double[:, ::1] D, Py_ssize_t py, Py_ssize_t px,
                              bint center_flip, double t0, Py_ssize_t padding,
                              uint8_t[:, ::1] accepted, int64_t[::1] queue,
                              double[:, ::1] values, Py_ssize_t* box,
                              double* peak) except -1 nogil:
    """Flood fill of the peak (see extended_morphology); returns the number of accepted
    pixels and sets ``peak`` (the maximum kept value, -inf when none is kept) and ``box``
    (y0, x0, h, w; set only when ``peak > 0``)."""
    cdef Py_ssize_t H = D.shape[0], W = D.shape[1]
    cdef Py_ssize_t my, mx, sy = py, sx = px, y, x, j, q, n, grow, y0, x0, y1, x1, a, b
    cdef Py_ssize_t[4] bounds
    cdef double best = -INFINITY, v
    cdef bint trim = t0 > 0
    if center_flip and py == H // 2 and px == W // 2:
        my = H - 1  # the reference flips the whole array about its middle
        mx = W - 1
    else:
        my = 2 * py
        mx = 2 * px
    # start on the brightest symmetrised pixel of the 3 x 3 neighbourhood (first maximum)
    for y in range(py - 1 if py > 0 else 0, py + 2 if py + 2 < H else H):
        for x in range(px - 1 if px > 0 else 0, px + 2 if px + 2 < W else W):
            v = _mm_value(D, y, x, my, mx, True, H, W)
            if v > best:
                best = v
                sy = y
                sx = x
    n = _flood_fill(D, sy, sx, my, mx, True, accepted, queue, values, bounds)
    # the kept pixels: their maximum and (when trimmed) their bounds
    best = -INFINITY
    if trim:
        y0 = H
        x0 = W
        y1 = x1 = -1
    else:
        y0, x0, y1, x1 = bounds[0], bounds[1], bounds[2], bounds[3]
    for j in range(n):
        q = queue[j]
        y = q // W
        x = q - y * W
        v = values[y, x]
        if trim:
            if not v > t0:
                continue
            if y < y0:
                y0 = y
            if y > y1:
                y1 = y
            if x < x0:
                x0 = x
            if x > x1:
                x1 = x
        if v > best:
            best = v
    peak[0] = best
    if best > 0:
        # trimmed: the reference grows the tight box twice
        grow = 2 * padding if trim else padding
        a = y0 - grow if y0 - grow > 0 else 0
        b = y1 + 1 + grow if y1 + 1 + grow < H else H
        box[0] = a
        box[2] = b - a
        a = x0 - grow if x0 - grow > 0 else 0
        b = x1 + 1 + grow if x1 + 1 + grow < W else W
        box[1] = a
        box[3] = b - a
    return n


cdef int _mask_store(Py_ssize_t n, double t0, double peak, const Py_ssize_t* box,
                     uint8_t[:, ::1] accepted, const int64_t[::1] queue,
                     double[:, ::1] values, double[:, ::1] out, double[:, ::1] claimed,
                     uint8_t[:, ::1] covered) except -1 nogil:
    """Write the kept values / peak into ``out`` (on ``box``, zero elsewhere; skipped when
    ``out`` is None), add the positive accepted values to ``claimed`` (when given) and reset
    the buffers."""
    cdef Py_ssize_t W = values.shape[1], j, q, y, x
    cdef bint store = out is not None, residual = claimed is not None, trim = t0 > 0
    cdef double v
    if store:
        for y in range(out.shape[0]):
            for x in range(out.shape[1]):
                out[y, x] = 0.0
    for j in range(n):
        q = queue[j]
        y = q // W
        x = q - y * W
        v = values[y, x]
        if residual and v > 0:
            claimed[y, x] += v
            covered[y, x] = 1
        if store and (v > t0 or not trim):
            out[y - box[0], x - box[1]] = v / peak
        accepted[y, x] = 0
        values[y, x] = 0.0
    return 0


# ------------------------------------------------------------------ PSF and bulge/disk
def psf_component(const double[:, ::1] psf, const real[:, :, ::1] images, Py_ssize_t py,
                  Py_ssize_t px, const double[::1] psf_peak):
    """The PSF-shaped fallback component of the peak (py, px).

    Parameters
    ----------
    psf : (h, w) float64 array
        The model PSF (its pixel ``(h // 2, w // 2)`` goes on the peak).
    images : (B, H, W) array
    py, px : int
        The peak, inside the image.
    psf_peak : (B,) float64 array
        Observed peak of a unit model-space point source per band.

    Returns
    -------
    morph : numpy.ndarray
        The cropped PSF divided by its maximum.
    box : tuple of int
        ``(y0, x0, h, w)`` of the crop.
    sed : numpy.ndarray
        (B,) ``max(images[b, py, px] / psf_peak[b], 0)`` (0 where ``psf_peak[b] <= 0``) times
        the crop's maximum.
    """
    cdef Py_ssize_t nb = images.shape[0], H = images.shape[1], W = images.shape[2]
    cdef Py_ssize_t ya, yb, xa, xb
    if psf_peak.shape[0] != nb:
        raise ValueError(f"psf_peak must have shape ({nb},), got ({psf_peak.shape[0]},)")
    if not (0 <= py < H and 0 <= px < W):
        raise ValueError(f"peak ({py}, {px}) is outside the image of shape ({H}, {W})")
    _span(py, psf.shape[0], H, &ya, &yb)
    _span(px, psf.shape[1], W, &xa, &xb)
    morph = np.empty((yb - ya, xb - xa))
    sed = np.empty(nb)
    cdef double[:, ::1] morph_v = morph
    cdef double[::1] sed_v = sed
    if _release_gil(2.0 * (yb - ya) * (xb - xa)):
        with nogil:
            _psf_component(psf, images, py, px, psf_peak, ya, xa, morph_v, sed_v)
    else:
        _psf_component(psf, images, py, px, psf_peak, ya, xa, morph_v, sed_v)
    return morph, (ya, xa, yb - ya, xb - xa), sed


cdef int _psf_component(const double[:, ::1] psf, const real[:, :, ::1] images, Py_ssize_t py,
                        Py_ssize_t px, const double[::1] psf_peak, Py_ssize_t ya,
                        Py_ssize_t xa, double[:, ::1] morph, double[::1] sed) except -1 nogil:
    cdef Py_ssize_t h = morph.shape[0], w = morph.shape[1], b, y, x
    cdef Py_ssize_t oy = ya - py + psf.shape[0] // 2, ox = xa - px + psf.shape[1] // 2
    cdef double mx = -INFINITY, r
    for y in range(h):
        for x in range(w):
            morph[y, x] = psf[y + oy, x + ox]
            if morph[y, x] > mx:
                mx = morph[y, x]
    for b in range(sed.shape[0]):
        r = 0.0
        if psf_peak[b] > 0:
            r = <double>images[b, py, px] / psf_peak[b]
            if not r > 0:  # max(0, r), NaN included
                r = 0.0
        sed[b] = r * mx
    for y in range(h):
        for x in range(w):
            morph[y, x] = morph[y, x] / mx
    return 0


def bulge_disk(const double[:, ::1] morph, double f):
    """Split a morphology at the level ``f`` into a bulge ``max(morph - f, 0)`` and a disk
    ``min(morph, f)``, each divided by its maximum.

    Returns
    -------
    None or (bulge, disk)
        None when either maximum is not positive. The input is taken to be finite.
    """
    cdef Py_ssize_t h = morph.shape[0], w = morph.shape[1]
    cdef double bmax = -INFINITY, dmax = -INFINITY
    cdef bint release = _release_gil(3.0 * h * w)
    if release:
        with nogil:
            _bulge_disk_max(morph, f, &bmax, &dmax)
    else:
        _bulge_disk_max(morph, f, &bmax, &dmax)
    if not (bmax > 0 and dmax > 0):
        return None
    bulge = np.empty((h, w))
    disk = np.empty((h, w))
    cdef double[:, ::1] bulge_v = bulge, disk_v = disk
    if release:
        with nogil:
            _bulge_disk(morph, f, bmax, dmax, bulge_v, disk_v)
    else:
        _bulge_disk(morph, f, bmax, dmax, bulge_v, disk_v)
    return bulge, disk


cdef inline double _bulge(double m, double f) noexcept nogil:
    """``np.maximum(m - f, 0)`` (its choice on ties included)."""
    return m - f if m - f >= 0 else 0.0


cdef inline double _disk(double m, double f) noexcept nogil:
    """``np.minimum(m, f)``."""
    return m if m <= f else f


cdef int _bulge_disk_max(const double[:, ::1] morph, double f, double* bmax,
                         double* dmax) except -1 nogil:
    cdef Py_ssize_t y, x
    for y in range(morph.shape[0]):
        for x in range(morph.shape[1]):
            if _bulge(morph[y, x], f) > bmax[0]:
                bmax[0] = _bulge(morph[y, x], f)
            if _disk(morph[y, x], f) > dmax[0]:
                dmax[0] = _disk(morph[y, x], f)
    return 0


cdef int _bulge_disk(const double[:, ::1] morph, double f, double bmax, double dmax,
                     double[:, ::1] bulge, double[:, ::1] disk) except -1 nogil:
    cdef Py_ssize_t y, x
    for y in range(morph.shape[0]):
        for x in range(morph.shape[1]):
            bulge[y, x] = _bulge(morph[y, x], f) / bmax
            disk[y, x] = _disk(morph[y, x], f) / dmax
    return 0


# ------------------------------------------------------------------------ lost sources
def mirror_min(const double[:, ::1] morph, Py_ssize_t py, Py_ssize_t px, Py_ssize_t sy,
               Py_ssize_t sx, Py_ssize_t y0, Py_ssize_t x0, Py_ssize_t y1, Py_ssize_t x1):
    """A copy of ``morph`` whose pixels in rows ``[y0, y1)`` and columns ``[x0, x1)`` (inside
    the array) are the minimum of themselves and their mirror ``(2 py + sy - y,
    2 px + sx - x)``; a mirror outside the array counts as 0 (``cdeblend.lost.mirror_min``).

    One pass instead of the index grids and fancy indexing of the numpy version (a dozen
    calls per touched neighbour of a lost source, each holding the GIL)."""
    cdef Py_ssize_t h = morph.shape[0], w = morph.shape[1], y, x, my, mx
    cdef double v, m
    if not (0 <= y0 <= y1 <= h and 0 <= x0 <= x1 <= w):
        raise ValueError(f"region rows [{y0}, {y1}) and columns [{x0}, {x1}) are not inside "
                         f"the ({h}, {w}) morphology")
    out_arr = np.array(morph, dtype=np.float64, copy=True, order="C")
    cdef double[:, ::1] out = out_arr
    with nogil:
        for y in range(y0, y1):
            my = 2 * py + sy - y
            for x in range(x0, x1):
                mx = 2 * px + sx - x
                m = morph[my, mx] if (0 <= my < h and 0 <= mx < w) else 0.0
                v = morph[y, x]
                # numpy.minimum's choice (the first when not greater)
                out[y, x] = v if v <= m else m
    return out_arr
