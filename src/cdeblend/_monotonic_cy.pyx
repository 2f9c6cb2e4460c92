# cython: language_level=3
"""Monotonic projections, written once for both deblenders.

- The single-band deblender's "shadow casting" projection of a template
  (docs/spec/single_band.md 3.5, meas_deblender ``makeMonotonic``): :func:`shadow_monotonic`.
- The multi-band deblender's weighted radial monotonicity prox (scarlet lite):
  :func:`radial_project`, and through ``_monotonic_cy.pxd`` the table-driven projection that
  the fit's ADAM step (``_adam_cy``) calls per component without Python.
- The monotonic-mask flood fill that initialises morphologies (:func:`monotonic_mask`,
  :func:`brightest_symmetric_neighbour`), also cimported by ``_initialization_cy``.

Inputs are trusted: the Python modules (and the callers through the ``.pxd``) check them.
"""

from libc.math cimport INFINITY
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from ._shared.fused cimport real
from ._shared.gil cimport _release_gil


# ------------------------------------------------------------------------------------------
# Single band: shadow casting
# ------------------------------------------------------------------------------------------

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
    cdef Py_ssize_t c, L, i
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


# ------------------------------------------------------------------------------------------
# Multi band: the weighted radial projection, and the monotonic-mask flood fill
# ------------------------------------------------------------------------------------------

# The radial operator is described by a "visiting list": every offset (dy, dx) of a square
# grid sorted by increasing distance from the centre (stable, so ties keep row-major order),
# with, per offset, the 8 normalised weights of its neighbours (dy + oy, dx + ox) in the
# order o = (-1,-1), (-1,0), (-1,1), (0,-1), (0,1), (1,-1), (1,0), (1,1). Only neighbours
# strictly closer to the centre have non-zero weight, so pixels at equal distance never
# depend on each other and any order among them gives the same result.
#
# The projection itself runs on a *grid table*: for every offset (dy, dx) of the square grid
# of half-size ``half`` (index ``(dy + half) * (2 half + 1) + dx + half``) the count (at most
# 4) of its strictly closer neighbours with non-zero weight and, in the visiting list's
# neighbour order, their offsets and weights. Only these are read per pixel (instead of 8
# weights and 8 bounds tests), and the pixels are visited ring by ring in the component's
# own box instead of walking the whole distance-sorted list (which mostly falls outside
# an off-centre box). The result is bit-identical: every pixel still takes
# ``min(value, sum of weight * final value of its closer neighbours)`` with the sum in the
# same order, and a pixel's closer neighbours always come earlier in the ring order (they
# lie in an inner Chebyshev ring or nearer the axis on the same side of the same ring).
# The table's layout is the struct RadialTable of _monotonic_cy.pxd.

# neighbour k of the visiting list's order: (-1,-1), (-1,0), (-1,1), (0,-1), (0,1), (1,-1), ...
cdef Py_ssize_t[8] _NOY
cdef Py_ssize_t[8] _NOX
_NOY[:] = [-1, -1, -1, 0, 0, 1, 1, 1]
_NOX[:] = [-1, 0, 1, -1, 1, -1, 0, 1]


cdef int _table_from_list(RadialTable* t, const int32_t* vdy, const int32_t* vdx,
                          const double* vw, Py_ssize_t nvisit) noexcept nogil:
    """Fill ``t`` (allocating its arrays) from a visiting list; returns -1 when out of memory."""
    cdef Py_ssize_t i, k, g, c, half = 0, n
    for i in range(nvisit):
        if vdy[i] > half:
            half = vdy[i]
        if -vdy[i] > half:
            half = -vdy[i]
        if vdx[i] > half:
            half = vdx[i]
        if -vdx[i] > half:
            half = -vdx[i]
    t.half = half
    t.side = 2 * half + 1
    n = t.side * t.side
    t.cnt = <uint8_t*>malloc(n * sizeof(uint8_t))
    t.code = <int8_t*>malloc(4 * n * sizeof(int8_t))
    t.nw = <double*>malloc(4 * n * sizeof(double))
    if t.cnt == NULL or t.code == NULL or t.nw == NULL:
        _table_free(t)
        return -1
    for g in range(n):
        t.cnt[g] = 0
    for i in range(nvisit):
        g = (vdy[i] + half) * t.side + vdx[i] + half
        c = 0
        for k in range(8):
            if vw[8 * i + k] != 0.0 and c < 4:
                t.code[4 * g + c] = <int8_t>k
                t.nw[4 * g + c] = vw[8 * i + k]
                c += 1
        t.cnt[g] = <uint8_t>c
    return 0


cdef void _table_free(RadialTable* t) noexcept nogil:
    free(t.cnt)
    free(t.code)
    free(t.nw)
    t.cnt = NULL
    t.code = NULL
    t.nw = NULL


cdef inline void _radial_pixel(double* m, Py_ssize_t h, Py_ssize_t w, Py_ssize_t y,
                               Py_ssize_t x, Py_ssize_t g, const RadialTable* t,
                               const Py_ssize_t* delta) noexcept nogil:
    """m[y, x] = min(m[y, x], weighted sum of its closer neighbours) (table entry g).

    ``delta[k]`` is the flat offset of neighbour code k; pixels off the array's edge skip the
    bounds tests of their neighbours."""
    cdef Py_ssize_t j, yy, xx, c = t.cnt[g], p = y * w + x
    cdef double ref = 0.0
    cdef const int8_t* code = t.code + 4 * g
    cdef const double* nw = t.nw + 4 * g
    if 0 < y < h - 1 and 0 < x < w - 1:
        for j in range(c):
            ref += nw[j] * m[p + delta[code[j]]]
    else:
        for j in range(c):
            yy = y + _NOY[code[j]]
            xx = x + _NOX[code[j]]
            if 0 <= yy < h and 0 <= xx < w:
                ref += nw[j] * m[p + delta[code[j]]]
    if ref < m[p]:
        m[p] = ref


cdef void _radial_project_table(double* m, Py_ssize_t h, Py_ssize_t w,
                                Py_ssize_t cy, Py_ssize_t cx,
                                const RadialTable* t) noexcept nogil:
    """Project the (h, w) morphology ``m`` (C order) onto radially monotonic arrays about
    (cy, cx), in place. The centre is first moved to the brightest pixel of its 3 x 3
    neighbourhood (first maximum in row-major order). Neighbours outside the array count as 0.
    The table must cover every pixel of the array about the moved centre (the caller sizes
    it); pixels beyond the table are left unchanged."""
    cdef Py_ssize_t y, x, ya, yb, xa, xb, r, rmax, s, j, side = t.side, half = t.half
    cdef Py_ssize_t up, down, back, fwd
    cdef Py_ssize_t c0 = half * side + half  # table index of offset (0, 0)
    cdef double best
    cdef bint top, bottom, left, right
    cdef Py_ssize_t[8] delta
    for j in range(8):
        delta[j] = _NOY[j] * w + _NOX[j]
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
    rmax = cy
    if h - 1 - cy > rmax:
        rmax = h - 1 - cy
    if cx > rmax:
        rmax = cx
    if w - 1 - cx > rmax:
        rmax = w - 1 - cx
    if rmax > half:
        rmax = half
    for r in range(1, rmax + 1):
        top = cy - r >= 0
        bottom = cy + r < h
        left = cx - r >= 0
        right = cx + r < w
        # the four sides without their corners: per side, the pixel on the axis (s = 0),
        # then the chains s = 1, 2, ..., r - 1 on either side of it (each pixel depends on
        # the previous one of its chain and on the inner ring only)
        up = cy if cy < r - 1 else r - 1              # chain lengths, clipped to the box
        down = h - 1 - cy if h - 1 - cy < r - 1 else r - 1
        back = cx if cx < r - 1 else r - 1
        fwd = w - 1 - cx if w - 1 - cx < r - 1 else r - 1
        if right:
            for s in range(down + 1):
                _radial_pixel(m, h, w, cy + s, cx + r, c0 + s * side + r, t, delta)
            for s in range(1, up + 1):
                _radial_pixel(m, h, w, cy - s, cx + r, c0 - s * side + r, t, delta)
        if left:
            for s in range(down + 1):
                _radial_pixel(m, h, w, cy + s, cx - r, c0 + s * side - r, t, delta)
            for s in range(1, up + 1):
                _radial_pixel(m, h, w, cy - s, cx - r, c0 - s * side - r, t, delta)
        if bottom:
            for s in range(fwd + 1):
                _radial_pixel(m, h, w, cy + r, cx + s, c0 + r * side + s, t, delta)
            for s in range(1, back + 1):
                _radial_pixel(m, h, w, cy + r, cx - s, c0 + r * side - s, t, delta)
        if top:
            for s in range(fwd + 1):
                _radial_pixel(m, h, w, cy - r, cx + s, c0 - r * side + s, t, delta)
            for s in range(1, back + 1):
                _radial_pixel(m, h, w, cy - r, cx - s, c0 - r * side - s, t, delta)
        # the corners last (their closer neighbours include both adjacent sides)
        if bottom and right:
            _radial_pixel(m, h, w, cy + r, cx + r, c0 + r * side + r, t, delta)
        if bottom and left:
            _radial_pixel(m, h, w, cy + r, cx - r, c0 + r * side - r, t, delta)
        if top and right:
            _radial_pixel(m, h, w, cy - r, cx + r, c0 - r * side + r, t, delta)
        if top and left:
            _radial_pixel(m, h, w, cy - r, cx - r, c0 - r * side - r, t, delta)


def radial_project(double[:, ::1] morph, Py_ssize_t cy, Py_ssize_t cx,
                   const int32_t[::1] vdy, const int32_t[::1] vdx, const double[:, ::1] vw):
    """Weighted radial monotonic projection of ``morph`` about (cy, cx), in place.

    ``vdy``, ``vdx``, ``vw`` are the visiting list built by
    :func:`cdeblend.blend.radial_visiting_list`; it must cover every pixel of ``morph``
    relative to any centre within one pixel of (cy, cx).
    """
    cdef Py_ssize_t h = morph.shape[0], w = morph.shape[1]
    cdef RadialTable t
    cdef int status
    with nogil:
        status = _table_from_list(&t, &vdy[0], &vdx[0], &vw[0, 0], vdy.shape[0])
        if status == 0:
            _radial_project_table(&morph[0, 0], h, w, cy, cx, &t)
            _table_free(&t)
    if status != 0:
        raise MemoryError()


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

    The GIL is released when the fill may visit many pixels (H * W, see ``_shared/gil.pxd``).

    Returns
    -------
    n, y0, x0, y1, x1
        Number of accepted pixels and their bounds (inclusive).
    """
    cdef Py_ssize_t H = image.shape[0], W = image.shape[1], n
    cdef Py_ssize_t[4] bounds
    if accepted.shape[0] != H or accepted.shape[1] != W:
        raise ValueError(f"accepted must have shape ({H}, {W}), got "
                         f"({accepted.shape[0]}, {accepted.shape[1]})")
    if out.shape[0] != H or out.shape[1] != W:
        raise ValueError(f"out must have shape ({H}, {W}), got ({out.shape[0]}, {out.shape[1]})")
    if queue.shape[0] < H * W:
        raise ValueError(f"queue must hold at least {H * W} entries, got {queue.shape[0]}")
    if not (0 <= sy < H and 0 <= sx < W):
        raise ValueError(f"start ({sy}, {sx}) is outside the image of shape ({H}, {W})")
    if _release_gil(<double>H * W):
        with nogil:
            n = _flood_fill(image, sy, sx, my, mx, symmetric, accepted, queue, out, bounds)
    else:
        n = _flood_fill(image, sy, sx, my, mx, symmetric, accepted, queue, out, bounds)
    return n, bounds[0], bounds[1], bounds[2], bounds[3]


def brightest_symmetric_neighbour(const real[:, ::1] image, Py_ssize_t py, Py_ssize_t px,
                                  Py_ssize_t my, Py_ssize_t mx):
    """The pixel of the 3 x 3 neighbourhood of (py, px) (inside the image) whose
    symmetrised value ``min(image[y, x], image[my - y, mx - x])`` (0 without a mirror pixel)
    is largest; the first in raster order on ties. The flood fill of a peak starts there."""
    cdef Py_ssize_t H = image.shape[0], W = image.shape[1], y, x, by = py, bx = px
    cdef double best = -INFINITY, v
    if not (0 <= py < H and 0 <= px < W):
        raise ValueError(f"peak ({py}, {px}) is outside the image of shape ({H}, {W})")
    for y in range(max(py - 1, 0), min(py + 2, H)):
        for x in range(max(px - 1, 0), min(px + 2, W)):
            v = _mm_value(image, y, x, my, mx, True, H, W)
            if v > best:
                best = v
                by = y
                bx = x
    return by, bx


cdef Py_ssize_t _flood_fill(const real[:, ::1] image, Py_ssize_t sy, Py_ssize_t sx,
                            Py_ssize_t my, Py_ssize_t mx, bint symmetric,
                            uint8_t[:, ::1] accepted, int64_t[::1] queue, real[:, ::1] out,
                            Py_ssize_t* bounds) except -1 nogil:
    """The flood fill of :func:`monotonic_mask` on arguments the caller checked; returns the
    number of accepted pixels and stores their bounds (y0, x0, y1, x1, inclusive)."""
    cdef Py_ssize_t H = image.shape[0], W = image.shape[1]
    cdef Py_ssize_t head = 0, tail = 0, p, y, x, qy, qx, d, y0, x0, y1, x1
    cdef double vp, vq
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
    bounds[0] = y0
    bounds[1] = x0
    bounds[2] = y1
    bounds[3] = x1
    return tail
