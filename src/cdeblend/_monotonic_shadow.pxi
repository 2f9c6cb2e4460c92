# Single-band "shadow casting" monotonic projection (docs/spec/single_band.md 3.5,
# meas_deblender makeMonotonic).
#
# Included by _monotonic_cy.pyx, which provides the cimports (int64_t, uint8_t).

from libc.string cimport memcpy

cdef enum:
    SHADOW_CHUNK = 5

# Half-slope of the shadow cone.
cdef double SHADOW_SLOPE = 0.3


cdef inline Py_ssize_t _shadow_round(double v) noexcept nogil:
    """Round half away from zero (C ``lround``), without a libm call.

    ``v - trunc(v)`` is exact in floating point, so comparing it with 0.5 decides exactly.
    """
    cdef Py_ssize_t t = <Py_ssize_t>v
    cdef double f = v - <double>t
    if f >= 0.5:
        return t + 1
    if f <= -0.5:
        return t - 1
    return t


cdef inline void _shadow_cast(double[:, ::1] t, const double[:, ::1] v, Py_ssize_t py,
                              Py_ssize_t px, Py_ssize_t x, Py_ssize_t y,
                              bint vertical) noexcept nogil:
    """Lower the wedge of targets shadowed by the pixel at offset (x, y) from the peak."""
    cdef Py_ssize_t h = t.shape[0], w = t.shape[1]
    cdef Py_ssize_t sy = py + y, sx = px + x
    cdef Py_ssize_t k, m, mlo, mhi, qy, qx, sig
    cdef double tt, lo, hi, val
    if sy < 0 or sy >= h or sx < 0 or sx >= w:
        return
    val = v[sy, sx]
    if vertical:
        sig = 1 if x > 0 else -1
        tt = <double>y / <double>x
    else:
        sig = 1 if y > 0 else -1
        tt = <double>x / <double>y
    # hi is lo + 2A (not t + A): the reference's rounding depends on this order.
    lo = tt - SHADOW_SLOPE
    hi = lo + 2 * SHADOW_SLOPE
    for k in range(1, SHADOW_CHUNK + 1):
        mlo = _shadow_round(k * lo)
        mhi = _shadow_round(k * hi)
        for m in range(mlo, mhi + 1):
            if vertical:
                qx = sx + sig * k
                qy = sy + sig * m
            else:
                qx = sx + sig * m
                qy = sy + sig * k
            if qy < 0 or qy >= h or qx < 0 or qx >= w:
                continue
            if val < t[qy, qx]:
                t[qy, qx] = val


def shadow_monotonic(double[:, ::1] template, Py_ssize_t py, Py_ssize_t px,
                     double[:, ::1] snapshot):
    """Project ``template`` in place so that no pixel exceeds the pixels shadowing it.

    (py, px) is the peak in box coordinates (it may lie outside the box). Rings around the
    peak are handled in chunks of 5; in a chunk every update reads the snapshot taken at the
    chunk's start, so the visiting order inside a chunk does not matter. ``snapshot`` is
    scratch space of the template's shape.
    """
    cdef Py_ssize_t h = template.shape[0], w = template.shape[1]
    cdef Py_ssize_t dw = max(px, w - px), dh = max(py, h - py), dmax = max(dw, dh)
    cdef Py_ssize_t c, L, i, x, y
    cdef size_t nbytes = h * w * sizeof(double)
    if h == 0 or w == 0:
        return
    with nogil:
        memcpy(&snapshot[0, 0], &template[0, 0], nbytes)
        c = 0
        while SHADOW_CHUNK * c < dmax:
            for L in range(max(SHADOW_CHUNK * c, 1), SHADOW_CHUNK * c + SHADOW_CHUNK):
                # Leg 1: x = L, y = -L .. L-1 (vertical side).
                for i in range(2 * L):
                    _shadow_cast(template, snapshot, py, px, L, -L + i, True)
                # Leg 2: y = L, x = L .. -L+1 (horizontal side).
                for i in range(2 * L):
                    _shadow_cast(template, snapshot, py, px, L - i, L, False)
                # Leg 3: x = -L, y = L .. -L+1 (vertical side).
                for i in range(2 * L):
                    _shadow_cast(template, snapshot, py, px, -L, L - i, True)
                # Leg 4: y = -L, x = -L .. L-1 (horizontal side).
                for i in range(2 * L):
                    _shadow_cast(template, snapshot, py, px, -L + i, -L, False)
            memcpy(&snapshot[0, 0], &template[0, 0], nbytes)
            c += 1
