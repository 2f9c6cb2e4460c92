# cython: language_level=3
"""The partial symmetry prox of the multi-band fit's morphologies.

``symmetrize`` is the Python face of ``_symmetrize`` (defined in ``_symmetry_cy.pxd`` and
inlined into the prox chain of ``_adam_cy``), for tests and for use outside the fit.

Why: radial monotonicity alone lets a bright source's morphology stay flat over a fainter
neighbour's peak on its wing (a monotonic profile may plateau), so the bright source takes
the faint one's light and the faint one is lost. A galaxy is close to 180-degree symmetric
about its centre: at the faint neighbour's position it has about as much light as at the
mirror position, where no neighbour is. Pulling each morphology towards the minimum of
itself and its mirror image (the SDSS deblender's symmetric template, docs/spec/single_band.md
3.2) removes such bumps; ``strength`` < 1 keeps part of the free shape for galaxies that are
not symmetric.
"""


def symmetrize(double[:, ::1] morph, Py_ssize_t py, Py_ssize_t px, double strength):
    """Pull ``morph`` towards its 180-degree symmetric minimum about (py, px), in place.

    Parameters
    ----------
    morph : numpy.ndarray
        (h, w) float64, C-contiguous; modified in place.
    py, px : int
        The peak, inside the array.
    strength : float
        In [0, 1]: each pixel q whose mirror ``2 p - q`` is inside the array becomes
        ``(1 - strength) m[q] + strength min(m[q], m[2 p - q])``; the others are unchanged.
    """
    cdef Py_ssize_t h = morph.shape[0], w = morph.shape[1]
    if not (0 <= py < h and 0 <= px < w):
        raise ValueError(f"the peak ({py}, {px}) must lie inside the (h, w) = ({h}, {w}) array")
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must be in [0, 1], got {strength!r}")
    if h * w == 0:
        return
    with nogil:
        _symmetrize(&morph[0, 0], h, w, py, px, strength)
