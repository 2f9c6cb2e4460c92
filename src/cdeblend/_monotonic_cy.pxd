# The monotonic projections that other kernels call without Python (see _monotonic_cy.pyx):
# the radial projection of the fit's ADAM step (_adam_cy) and the monotonic-mask flood fill
# of the initialization (_initialization_cy). Calls across modules go through function
# pointers; each of these does a whole morphology per call, so that costs nothing measurable.
# ``_mm_value`` (a pixel's symmetrised value, called per visited pixel of the flood fill) stays
# ``inline`` and is defined here, so that every module that calls it inlines it.

from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t

from ._shared.fused cimport real


# The radial operator on a grid table (built from a visiting list by _table_from_list): for
# every offset (dy, dx) of the square grid of half-size ``half`` (index ``(dy + half) *
# (2 half + 1) + dx + half``) the count (at most 4) of its strictly closer neighbours with
# non-zero weight, their neighbour codes and their weights.
cdef struct RadialTable:
    Py_ssize_t half
    Py_ssize_t side
    uint8_t* cnt     # (side * side,)
    int8_t* code     # (side * side, 4) neighbour codes k (offset (_NOY[k], _NOX[k]))
    double* nw       # (side * side, 4)


cdef int _table_from_list(RadialTable* t, const int32_t* vdy, const int32_t* vdx,
                          const double* vw, Py_ssize_t nvisit) noexcept nogil
cdef void _table_free(RadialTable* t) noexcept nogil
cdef void _radial_project_table(double* m, Py_ssize_t h, Py_ssize_t w, Py_ssize_t cy,
                                Py_ssize_t cx, const RadialTable* t) noexcept nogil

cdef Py_ssize_t _flood_fill(const real[:, ::1] image, Py_ssize_t sy, Py_ssize_t sx,
                            Py_ssize_t my, Py_ssize_t mx, bint symmetric,
                            uint8_t[:, ::1] accepted, int64_t[::1] queue, real[:, ::1] out,
                            Py_ssize_t* bounds) except -1 nogil


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
