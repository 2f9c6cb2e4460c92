# The partial 180-degree symmetry prox of the fit's morphologies (see _symmetry_cy.pyx),
# inlined into _adam_cy's prox chain (it runs once per component and iteration, inside the
# threaded loop); its body lives here so that every module that calls it inlines it.


cdef inline void _symmetrize(double* m, Py_ssize_t h, Py_ssize_t w, Py_ssize_t py,
                             Py_ssize_t px, double strength) noexcept nogil:
    """Pull the (h, w) morphology ``m`` (C order) towards its 180-degree symmetric minimum
    about the peak (py, px), in place: every pixel q whose mirror q' = 2 p - q lies in the
    box becomes ``(1 - strength) m[q] + strength min(m[q], m[q'])``. Pixels whose mirror
    falls outside the box are left as they are (the box may be cut by the image edge)."""
    cdef Py_ssize_t y, x, i, j, ylo, yhi, xlo, xhi
    cdef double a, b, s
    if strength <= 0:
        return
    # the rows and columns whose mirrors are inside the box
    ylo = 2 * py - (h - 1)
    if ylo < 0:
        ylo = 0
    yhi = 2 * py
    if yhi > h - 1:
        yhi = h - 1
    xlo = 2 * px - (w - 1)
    if xlo < 0:
        xlo = 0
    xhi = 2 * px
    if xhi > w - 1:
        xhi = w - 1
    # each pair once: q before its mirror in C order (the peak is its own mirror)
    for y in range(ylo, py + 1):
        for x in range(xlo, xhi + 1):
            if y == py and x >= px:
                break
            i = y * w + x
            j = (2 * py - y) * w + (2 * px - x)
            a = m[i]
            b = m[j]
            s = a if a < b else b
            m[i] = a + strength * (s - a)
            m[j] = b + strength * (s - b)
