# The partial 180-degree symmetry prox of the fit's morphologies (see _symmetry_cy.pyx),
# inlined into _adam_cy's prox chain (it runs once per component and iteration, inside the
# threaded loop); its body lives here so that every module that calls it inlines it.


cdef inline void _symmetrize(double* m, Py_ssize_t h, Py_ssize_t w, Py_ssize_t cy2,
                             Py_ssize_t cx2, double strength) noexcept nogil:
    """Pull the (h, w) morphology ``m`` (C order) towards its 180-degree symmetric minimum
    about the centre (cy2 / 2, cx2 / 2) (doubled coordinates: a pixel centre or a half-pixel
    position), in place: every pixel q whose mirror q' = (cy2, cx2) - q lies in the box
    becomes ``(1 - strength) m[q] + strength min(m[q], m[q'])``. Pixels whose mirror falls
    outside the box are left as they are (the box may be cut by the image edge)."""
    cdef Py_ssize_t y, x, i, j, my, mx, ylo, yhi, xlo, xhi
    cdef double a, b, s
    if strength <= 0:
        return
    # the rows and columns whose mirrors are inside the box
    ylo = cy2 - (h - 1)
    if ylo < 0:
        ylo = 0
    yhi = cy2
    if yhi > h - 1:
        yhi = h - 1
    xlo = cx2 - (w - 1)
    if xlo < 0:
        xlo = 0
    xhi = cx2
    if xhi > w - 1:
        xhi = w - 1
    # each pair once: q before its mirror in C order (a pixel centre is its own mirror)
    for y in range(ylo, yhi + 1):
        my = cy2 - y
        if my < y:
            break
        for x in range(xlo, xhi + 1):
            mx = cx2 - x
            i = y * w + x
            j = my * w + mx
            if j <= i:
                continue
            a = m[i]
            b = m[j]
            s = a if a < b else b
            m[i] = a + strength * (s - a)
            m[j] = b + strength * (s - b)
