# Multi-band (scarlet lite) monotonicity: the weighted radial projection used as a proximal
# operator on morphologies, and the monotonic-mask flood fill used to initialise them.
#
# Included by _monotonic_cy.pyx (public wrappers for tests and initialisation) and by
# _adam_cy.pyx (the fused ADAM + prox step calls ``_radial_project`` directly, without going
# through Python). The including module defines the fused type ``real`` and imports int64_t.
#
# The radial operator is described by a "visiting list": every offset (dy, dx) of a square
# grid sorted by increasing distance from the centre (stable, so ties keep row-major order),
# with, per offset, the 8 normalised weights of its neighbours (dy + oy, dx + ox) in the
# order o = (-1,-1), (-1,0), (-1,1), (0,-1), (0,1), (1,-1), (1,0), (1,1). Only neighbours
# strictly closer to the centre have non-zero weight, so pixels at equal distance never
# depend on each other and any order among them gives the same result.

from libc.math cimport INFINITY
from libc.stdint cimport int32_t


cdef inline void _radial_project(double* m, Py_ssize_t h, Py_ssize_t w,
                                 Py_ssize_t cy, Py_ssize_t cx,
                                 const int32_t* vdy, const int32_t* vdx,
                                 const double* vw, Py_ssize_t nvisit) noexcept nogil:
    """Project the (h, w) morphology ``m`` (C order) onto radially monotonic arrays about
    (cy, cx), in place. The centre is first moved to the brightest pixel of its 3 x 3
    neighbourhood (first maximum in row-major order). Neighbours outside the array count as 0.
    The visiting list must cover every pixel of the array (the caller sizes it)."""
    cdef Py_ssize_t y, x, yy, xx, i, k, oy, ox, ya, yb, xa, xb, count, total
    cdef double best, ref, v
    cdef const double* wt
    # re-centre on the brightest pixel of the 3 x 3 window (clipped to the array)
    ya = cy - 1 if cy > 0 else 0
    yb = cy + 2 if cy + 2 <= h else h
    xa = cx - 1 if cx > 0 else 0
    xb = cx + 2 if cx + 2 <= w else w
    best = -INFINITY
    for y in range(ya, yb):
        for x in range(xa, xb):
            if m[y * w + x] > best:
                best = m[y * w + x]
                cy = y
                cx = x
    total = h * w
    count = 1  # the centre is the first entry of the list and is left unchanged
    i = 1
    while count < total and i < nvisit:
        y = cy + vdy[i]
        x = cx + vdx[i]
        if 0 <= y < h and 0 <= x < w:
            count += 1
            wt = vw + 8 * i
            ref = 0.0
            k = 0
            for oy in range(-1, 2):
                for ox in range(-1, 2):
                    if oy == 0 and ox == 0:
                        continue
                    if wt[k] != 0.0:
                        yy = y + oy
                        xx = x + ox
                        if 0 <= yy < h and 0 <= xx < w:
                            ref += wt[k] * m[yy * w + xx]
                    k += 1
            v = m[y * w + x]
            if ref < v:
                m[y * w + x] = ref
        i += 1


def radial_project(double[:, ::1] morph, Py_ssize_t cy, Py_ssize_t cx,
                   const int32_t[::1] vdy, const int32_t[::1] vdx, const double[:, ::1] vw):
    """Weighted radial monotonic projection of ``morph`` about (cy, cx), in place.

    ``vdy``, ``vdx``, ``vw`` are the visiting list built by
    :func:`cdeblend.blend.radial_visiting_list`; it must cover every pixel of ``morph``
    relative to any centre within one pixel of (cy, cx).
    """
    cdef Py_ssize_t h = morph.shape[0], w = morph.shape[1]
    with nogil:
        _radial_project(&morph[0, 0], h, w, cy, cx, &vdy[0], &vdx[0], &vw[0, 0], vdy.shape[0])


def monotonic_mask(const real[:, ::1] image, Py_ssize_t sy, Py_ssize_t sx,
                   Py_ssize_t my, Py_ssize_t mx, bint symmetric,
                   uint8_t[:, ::1] accepted, int64_t[::1] queue, real[:, ::1] out):
    """Flood fill of the pixels reachable from (sy, sx) by 4-connected non-increasing paths.

    A neighbour q of an accepted pixel p is accepted when ``0 < v(q) <= v(p)``; the start
    pixel is accepted unconditionally. With ``symmetric`` the value of a pixel is
    ``v(y, x) = min(image[y, x], image[my - y, mx - x])``, and 0 where the mirror pixel lies
    outside the array (the 180 degree symmetrisation about ((my / 2), (mx / 2))), computed
    on the fly so that only the visited pixels cost anything; otherwise ``v = image``.

    ``accepted`` (uint8, zero on entry) marks the accepted pixels; ``out`` (zero on entry)
    receives their values; ``queue`` (at least H * W long) lists the accepted flat indices in
    visiting order. The caller resets ``accepted`` and ``out`` through ``queue[:n]``.

    Returns
    -------
    n, y0, x0, y1, x1
        Number of accepted pixels and their bounds (inclusive).
    """
    cdef Py_ssize_t H = image.shape[0], W = image.shape[1]
    cdef Py_ssize_t head = 0, tail = 0, p, y, x, qy, qx, d, y0, x0, y1, x1
    cdef double vp, vq
    with nogil:
        y0 = y1 = sy
        x0 = x1 = sx
        accepted[sy, sx] = 1
        out[sy, sx] = <real>_mm_value(image, sy, sx, my, mx, symmetric, H, W)
        queue[tail] = sy * W + sx
        tail += 1
        while head < tail:
            p = queue[head]
            head += 1
            y = p // W
            x = p - y * W
            vp = out[y, x]
            for d in range(4):
                qy = y
                qx = x
                if d == 0:
                    qy = y - 1
                elif d == 1:
                    qy = y + 1
                elif d == 2:
                    qx = x - 1
                else:
                    qx = x + 1
                if qy < 0 or qy >= H or qx < 0 or qx >= W or accepted[qy, qx]:
                    continue
                vq = _mm_value(image, qy, qx, my, mx, symmetric, H, W)
                if 0 < vq <= vp:
                    accepted[qy, qx] = 1
                    out[qy, qx] = <real>vq
                    queue[tail] = qy * W + qx
                    tail += 1
                    if qy < y0:
                        y0 = qy
                    if qy > y1:
                        y1 = qy
                    if qx < x0:
                        x0 = qx
                    if qx > x1:
                        x1 = qx
    return tail, y0, x0, y1, x1


cdef inline double _mm_value(const real[:, ::1] image, Py_ssize_t y, Py_ssize_t x,
                             Py_ssize_t my, Py_ssize_t mx, bint symmetric,
                             Py_ssize_t H, Py_ssize_t W) noexcept nogil:
    """Pixel value, optionally symmetrised (min with its mirror, 0 without one)."""
    cdef Py_ssize_t ry, rx
    cdef double a, b
    a = image[y, x]
    if not symmetric:
        return a
    ry = my - y
    rx = mx - x
    if ry < 0 or ry >= H or rx < 0 or rx >= W:
        return 0.0
    b = image[ry, rx]
    return a if a < b else b
