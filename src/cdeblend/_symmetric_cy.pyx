# cython: language_level=3
"""Template kernels of the single-band deblender.

- ``symmetric_template``: the 180-degree symmetric template of a peak
  (docs/spec/single_band.md 3.2), about a pixel or a point half-way between pixels.
- ``edge_max`` and ``ramp_image``: the edge test and the PSF-shaped ramp of
  docs/spec/single_band.md 3.3.
- ``median_smooth``: the (2h+1)^2 median filter of a template's interior
  (docs/spec/single_band.md 3.4).
- ``clip_to_nonzero``: trim each footprint span to its non-zero part (docs/spec/single_band.md 3.6).
- ``psf_fit_rows`` and ``gaussian_moments``: the design rows of a peak's PSF fit and the
  Gaussian-weighted moments of its stamp.

All arrays are C-contiguous and were checked by ``cdeblend.single_band``; the loops run
without the GIL and allocate nothing.
"""

from libc.math cimport INFINITY, exp, sqrt
from libc.stdint cimport int64_t, uint8_t

from ._shared.fused cimport real


def symmetric_template(const real[:, ::1] image, const uint8_t[:, ::1] footprint,
                       Py_ssize_t cy2, Py_ssize_t cx2, Py_ssize_t y0, Py_ssize_t x0,
                       double[:, ::1] template, uint8_t[:, ::1] sym,
                       int64_t[::1] bbox):
    """Fill the template symmetric about the centre c = (cy2 / 2, cx2 / 2) on the box at
    (y0, x0).

    ``cy2, cx2`` are twice the centre, so that the centre is a pixel (even values: the
    peak p, c2 = 2p) or lies half-way between two pixels (odd values). ``template`` and
    ``sym`` cover the box ``(y0, x0, h, w)`` in the frame of ``image``. A pixel q of the box
    is in the symmetric footprint when q and its mirror c2 - q are both in ``footprint``; its
    value is ``max(0, min(I(q), I(c2 - q)))``, and 0 elsewhere.
    ``bbox`` receives (ymin, xmin, ymax, xmax) of the symmetric footprint in box
    coordinates (inclusive). Returns the number of its pixels.
    """
    cdef Py_ssize_t H = image.shape[0], W = image.shape[1]
    cdef Py_ssize_t h = template.shape[0], w = template.shape[1]
    cdef Py_ssize_t i, j, y, x, my, mx
    cdef Py_ssize_t n = 0, ymin = h, xmin = w, ymax = -1, xmax = -1
    cdef double a, b
    with nogil:
        for i in range(h):
            y = y0 + i
            my = cy2 - y
            for j in range(w):
                x = x0 + j
                mx = cx2 - x
                template[i, j] = 0.0
                sym[i, j] = 0
                if (y < 0 or y >= H or x < 0 or x >= W or my < 0 or my >= H
                        or mx < 0 or mx >= W):
                    continue
                if not (footprint[y, x] and footprint[my, mx]):
                    continue
                a = image[y, x]
                b = image[my, mx]
                if b < a:
                    a = b
                template[i, j] = a if a > 0 else 0.0
                sym[i, j] = 1
                n += 1
                if i < ymin:
                    ymin = i
                if i > ymax:
                    ymax = i
                if j < xmin:
                    xmin = j
                if j > xmax:
                    xmax = j
    bbox[0] = ymin
    bbox[1] = xmin
    bbox[2] = ymax
    bbox[3] = xmax
    return n


cdef inline bint _is_edge(const uint8_t[:, ::1] fp, Py_ssize_t i, Py_ssize_t j,
                          Py_ssize_t h, Py_ssize_t w) noexcept nogil:
    """A footprint pixel with at least one 4-neighbour outside the footprint."""
    if i == 0 or j == 0 or i == h - 1 or j == w - 1:
        return True
    return not (fp[i - 1, j] and fp[i + 1, j] and fp[i, j - 1] and fp[i, j + 1])


def edge_max(const double[:, ::1] template, const uint8_t[:, ::1] fp):
    """Largest template value on the edge pixels of ``fp`` (-inf when there are none)."""
    cdef Py_ssize_t h = template.shape[0], w = template.shape[1], i, j
    cdef double m = -INFINITY
    with nogil:
        for i in range(h):
            for j in range(w):
                if fp[i, j] and _is_edge(fp, i, j, h, w):
                    if template[i, j] > m:
                        m = template[i, j]
    return m


def ramp_image(const double[:, ::1] template, const uint8_t[:, ::1] fp,
               const double[:, ::1] psf_hat, Py_ssize_t oy, Py_ssize_t ox,
               double[:, ::1] ramp):
    """Cast a PSF-shaped ramp from every edge pixel of ``fp``: ``R(e+d) = max(R, T(e) psf(d))``.

    ``psf_hat`` is centred on its middle pixel; the template box sits at (oy, ox) inside
    the box of ``ramp``. Offsets that land outside ``ramp`` are skipped.
    """
    cdef Py_ssize_t h = template.shape[0], w = template.shape[1]
    cdef Py_ssize_t ph = psf_hat.shape[0], pw = psf_hat.shape[1]
    cdef Py_ssize_t rh = ramp.shape[0], rw = ramp.shape[1]
    cdef Py_ssize_t cy = ph // 2, cx = pw // 2
    cdef Py_ssize_t i, j, a, b, y, x
    cdef double t, v
    with nogil:
        for i in range(h):
            for j in range(w):
                if not (fp[i, j] and _is_edge(fp, i, j, h, w)):
                    continue
                t = template[i, j]
                for a in range(ph):
                    y = oy + i + a - cy
                    if y < 0 or y >= rh:
                        continue
                    for b in range(pw):
                        x = ox + j + b - cx
                        if x < 0 or x >= rw:
                            continue
                        v = t * psf_hat[a, b]
                        if v > ramp[y, x]:
                            ramp[y, x] = v


cdef inline void _replace(double* s, Py_ssize_t n, double old, double new) noexcept nogil:
    """Replace one occurrence of ``old`` by ``new`` in the sorted s[0:n], keeping it sorted."""
    cdef Py_ssize_t p = 0
    while s[p] != old:
        p += 1
    if new > old:
        while p + 1 < n and s[p + 1] < new:
            s[p] = s[p + 1]
            p += 1
    else:
        while p > 0 and s[p - 1] > new:
            s[p] = s[p - 1]
            p -= 1
    s[p] = new


def median_smooth(const double[:, ::1] template, Py_ssize_t half, double[:, ::1] out,
                  double[::1] work, const uint8_t[:, ::1] where):
    """Median of the (2 half + 1)^2 window on the interior; margins copied unchanged.

    Only pixels with ``where`` set are written (the others keep the input value): the
    deblender zeroes every pixel off the template footprint afterwards. The window slides
    along each row as a sorted array: each step swaps the leaving column's values for the
    entering column's, so the median is read off the middle. ``work`` is scratch space of at
    least (2 half + 1)^2 values. Values must be finite.
    """
    cdef Py_ssize_t h = template.shape[0], w = template.shape[1]
    cdef Py_ssize_t i, j, a, b, n, k, size = 2 * half + 1, mid = size * size // 2
    cdef double* s = &work[0]
    cdef double v
    cdef bint any_here
    with nogil:
        for i in range(h):
            for j in range(w):
                out[i, j] = template[i, j]
        if h >= size and w >= size:
            for i in range(half, h - half):
                any_here = False
                for j in range(half, w - half):
                    if where[i, j]:
                        any_here = True
                        break
                if not any_here:
                    continue
                # The row's first window, sorted by insertion.
                n = 0
                for a in range(i - half, i + half + 1):
                    for b in range(size):
                        v = template[a, b]
                        k = n
                        while k > 0 and s[k - 1] > v:
                            s[k] = s[k - 1]
                            k -= 1
                        s[k] = v
                        n += 1
                for j in range(half, w - half):
                    if j > half:
                        for a in range(i - half, i + half + 1):
                            _replace(s, n, template[a, j - half - 1], template[a, j + half])
                    if where[i, j]:
                        out[i, j] = s[mid]


def clip_to_nonzero(const double[:, ::1] template, uint8_t[:, ::1] fp, int64_t[::1] bbox):
    """Keep, in each footprint span (row run), the pixels from its first to last non-zero.

    Spans without a non-zero value are dropped; spans are never merged. ``bbox`` receives
    the (ymin, xmin, ymax, xmax) of what is left (inclusive). Returns its pixel count.
    """
    cdef Py_ssize_t h = template.shape[0], w = template.shape[1]
    cdef Py_ssize_t i, j, s, e, first, last, k
    cdef Py_ssize_t n = 0, ymin = h, xmin = w, ymax = -1, xmax = -1
    with nogil:
        for i in range(h):
            j = 0
            while j < w:
                if not fp[i, j]:
                    j += 1
                    continue
                s = j
                while j < w and fp[i, j]:
                    j += 1
                e = j  # span is [s, e)
                first = -1
                last = -1
                for k in range(s, e):
                    if template[i, k] != 0:
                        if first < 0:
                            first = k
                        last = k
                for k in range(s, e):
                    if first < 0 or k < first or k > last:
                        fp[i, k] = 0
                if first >= 0:
                    n += last - first + 1
                    if i < ymin:
                        ymin = i
                    if i > ymax:
                        ymax = i
                    if first < xmin:
                        xmin = first
                    if last > xmax:
                        xmax = last
    bbox[0] = ymin
    bbox[1] = xmin
    bbox[2] = ymax
    bbox[3] = xmax
    return n


def psf_fit_rows(const double[:, ::1] image, const double[:, ::1] variance,
                 const uint8_t[:, ::1] fp, Py_ssize_t sy0, Py_ssize_t sx0,
                 double cy, double cx, double r0, double r1,
                 const double[:, ::1] psf_grown, Py_ssize_t y0c, Py_ssize_t y1c,
                 Py_ssize_t x0c, Py_ssize_t x1c, const double[:, :, ::1] neighbours,
                 double[:, ::1] design, double[::1] data, double[::1] radial,
                 int64_t[:, ::1] pixels):
    """Weighted rows of the PSF-fit design matrix (docs/spec/single_band.md 3.1), one per valid
    stamp pixel.

    The stamp is ``neighbours.shape[1:]`` pixels at (sy0, sx0) in the frame of ``image``.
    A pixel is valid when it is in ``fp``, within ``r1`` of (cy, cx) and has variance > 0.
    Its row is ``w * [psf, 1, x - cx, y - cy, neighbours..., d/dx psf, d/dy psf]`` with
    ``w = sqrt(rw / variance)`` and the radial weight rw (1 inside r0, falling linearly to 0
    at r1); ``data`` gets ``w * image``, ``radial`` rw and ``pixels`` (y, x). ``psf_grown``
    is the PSF on the stamp grown by one pixel, 0 outside its box clipped to the parent box
    [y0c, y1c) x [x0c, x1c); a derivative is 0 unless the pixel is strictly inside that box
    along its axis (and inside it along the other). Returns the number of rows.
    """
    cdef Py_ssize_t K = neighbours.shape[0], sh = neighbours.shape[1], sw = neighbours.shape[2]
    cdef Py_ssize_t i, j, k, y, x, n = 0
    cdef double dy, dx, r2, r, rw, wt, v, ddx, ddy
    with nogil:
        for i in range(sh):
            y = sy0 + i
            dy = <double>y - cy
            for j in range(sw):
                x = sx0 + j
                dx = <double>x - cx
                r2 = dx * dx + dy * dy
                v = variance[y, x]
                if not (fp[y, x] != 0 and r2 <= r1 * r1 and v > 0):
                    continue
                r = sqrt(r2)
                if r1 > r0:
                    rw = 1.0 - (r - r0) / (r1 - r0)
                    if rw < 0.0:
                        rw = 0.0
                    if rw > 1.0:
                        rw = 1.0
                else:
                    rw = 1.0
                wt = sqrt(rw / v)
                design[n, 0] = psf_grown[i + 1, j + 1] * wt
                design[n, 1] = wt
                design[n, 2] = dx * wt
                design[n, 3] = dy * wt
                for k in range(K):
                    design[n, 4 + k] = neighbours[k, i, j] * wt
                ddx = 0.0
                ddy = 0.0
                if y >= y0c and y < y1c and x > x0c and x < x1c - 1:
                    ddx = 0.5 * (psf_grown[i + 1, j + 2] - psf_grown[i + 1, j])
                if x >= x0c and x < x1c and y > y0c and y < y1c - 1:
                    ddy = 0.5 * (psf_grown[i + 2, j + 1] - psf_grown[i, j + 1])
                design[n, 4 + K] = ddx * wt
                design[n, 5 + K] = ddy * wt
                data[n] = image[y, x] * wt
                radial[n] = rw
                pixels[n, 0] = y
                pixels[n, 1] = x
                n += 1
    return n


def gaussian_moments(const double[:, ::1] image, double cy, double cx, double iyy,
                     double ixy, double ixx, double[::1] out):
    """Moments of ``image * exp(-(d^T M^-1 d) / 2)``, d = (y - cy, x - cx), M^-1 = [[iyy, ixy],
    [ixy, ixx]]: ``out`` = (sum, sum dy, sum dx, sum dy^2, sum dx dy, sum dx^2)."""
    cdef Py_ssize_t h = image.shape[0], w = image.shape[1], i, j
    cdef double s0 = 0, sy = 0, sx = 0, syy = 0, sxy = 0, sxx = 0, dy, dx, f
    with nogil:
        for i in range(h):
            dy = i - cy
            for j in range(w):
                dx = j - cx
                f = image[i, j] * exp(-0.5 * (iyy * dy * dy + 2 * ixy * dy * dx + ixx * dx * dx))
                s0 += f
                sy += f * dy
                sx += f * dx
                syy += f * dy * dy
                sxy += f * dx * dy
                sxx += f * dx * dx
    out[0] = s0
    out[1] = sy
    out[2] = sx
    out[3] = syy
    out[4] = sxy
    out[5] = sxx
