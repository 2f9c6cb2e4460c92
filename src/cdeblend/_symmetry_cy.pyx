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
not symmetric. The centre may be a half-pixel position: the peak pixel is up to half a
pixel off a source's true centre, and symmetry about the wrong pixel removes real light.
"""


def symmetrize(double[:, ::1] morph, double cy, double cx, double strength):
    """Pull ``morph`` towards its 180-degree symmetric minimum about (cy, cx), in place.

    Parameters
    ----------
    morph : numpy.ndarray
        (h, w) float64, C-contiguous; modified in place.
    cy, cx : float
        The centre, a pixel centre or a half-pixel position (multiples of 0.5) inside the
        array.
    strength : float
        In [0, 1]: each pixel q whose mirror ``2 c - q`` is inside the array becomes
        ``(1 - strength) m[q] + strength min(m[q], m[2 c - q])``; the others are unchanged.
    """
    cdef Py_ssize_t h = morph.shape[0], w = morph.shape[1]
    if not (2 * cy == <Py_ssize_t>(2 * cy) and 2 * cx == <Py_ssize_t>(2 * cx)):
        raise ValueError(f"the centre ({cy}, {cx}) must be a multiple of 0.5")
    if not (0 <= cy <= h - 1 and 0 <= cx <= w - 1):
        raise ValueError(f"the centre ({cy}, {cx}) must lie inside the (h, w) = ({h}, {w}) array")
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must be in [0, 1], got {strength!r}")
    with nogil:
        _symmetrize(&morph[0, 0], h, w, <Py_ssize_t>(2 * cy), <Py_ssize_t>(2 * cx), strength)
