"""Peak refinement: move catalog peaks onto the local maximum of a detection image.

Catalog positions handed to a deblender are often a pixel or so off the source's centre
(a centroid from another image, rounded; astrometric jitter). The deblenders grow each
source's morphology from its peak pixel (monotonic from it, symmetric about it), so a peak
one pixel off the maximum gives a lopsided model whose flux is wrong.
:func:`refine_peaks` moves every peak uphill on a detection image, by at most ``max_shift``
pixels, onto a local maximum, never onto another peak's pixel; a peak on a slope with no
maximum within reach (a faint source on a bright neighbour's wing) stays where it is.
:func:`subpixel_centers` gives the sub-pixel centre of a peak from its 3 x 3 neighbourhood.

On the simulated sets of ``bench/accuracy.py`` neither moving the multi-band peaks (on the
chi^2 detection image, raw or PSF-filtered, with or without a noise threshold) nor
handing the deblender the true centres' pixels improved every blendedness bin: a galaxy's
core is flat and noisy at the pixel level, so the local maximum is often not the centre's
pixel. Single-band PSF fits started at :func:`subpixel_centers` improved every bin, so
``SingleBandConfig.subpixel_centers`` is on by default; :func:`refine_peaks` is offered
for users' own catalogs, off everywhere by default.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validate import as_float_array, as_peaks

__all__ = ["refine_peaks", "subpixel_centers"]

# the 8 neighbours of a pixel, in a fixed order (ties: the first one wins)
_STEPS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def _value(image: np.ndarray, y: int, x: int) -> float:
    """The image at (y, x); -inf outside it or on no-data (NaN) pixels."""
    H, W = image.shape
    if 0 <= y < H and 0 <= x < W:
        v = image[y, x]
        return float(v) if v == v else -np.inf
    return -np.inf


def _climb(
    image: np.ndarray, start: tuple[int, int], max_shift: int, taken: set, min_rise: float
) -> tuple:
    """Steepest ascent from ``start`` over free pixels within ``max_shift`` (Chebyshev) of
    it, each step rising by more than ``min_rise``; the pixel where no step does, or
    ``start`` when the climb leaves the reach first."""
    y, x = start
    v = _value(image, y, x)
    if v == -np.inf:  # no data under the peak: nothing to climb from
        return start
    while True:
        best = None
        for dy, dx in _STEPS:
            ny, nx = y + dy, x + dx
            nv = _value(image, ny, nx)
            if nv - v > min_rise and (best is None or nv > best[0]):
                best = (nv, ny, nx)
        if best is None:  # a local maximum
            return (y, x)
        v, y, x = best
        if max(abs(y - start[0]), abs(x - start[1])) > max_shift or (y, x) in taken:
            return start


def refine_peaks(image: Any, peaks: Any, max_shift: int = 1, min_rise: float = 0.0) -> np.ndarray:
    """Move every peak onto the local maximum of ``image`` that it climbs to.

    From each peak, steepest ascent over the 8-connected neighbours (strictly higher
    pixels only) until a local maximum. The peak moves there when that maximum lies
    within ``max_shift`` pixels (Chebyshev distance) of the peak, every step stayed within
    that reach, and no other peak holds that pixel; otherwise it stays. Among equally high
    neighbours the first in row-major order (top-left first) is taken. Peaks are refined
    in order, each against the other peaks' current positions (the earlier ones already
    refined), so refined peaks remain distinct when the given ones are.

    Parameters
    ----------
    image : array_like
        (H, W) detection image (e.g. :func:`cdeblend.initialization.detection_image`, or
        an image smoothed by the PSF). NaN marks no-data pixels, which are never
        climbed onto; a peak on one stays.
    peaks : array_like
        (N, 2) (y, x) peaks inside the image; float positions are rounded to the nearest
        pixel.
    max_shift : int
        Largest move in pixels along either axis (1); 0 returns the rounded peaks.
    min_rise : float
        Every step must rise by more than this (0: any rise). A multiple of the noise of
        the difference of two pixels keeps peaks from following the noise.

    Returns
    -------
    numpy.ndarray
        (N, 2) int64 refined (y, x) peaks, in the order given.

    Raises
    ------
    TypeError
        If ``max_shift`` is not an integer, or ``image`` or ``peaks`` are not numeric.
    ValueError
        If ``image`` is not 2-D, ``max_shift`` is negative, ``min_rise`` is negative or
        not finite, or a peak lies outside the image.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((5, 5)); img[2, 3] = 1.0; img[2, 2] = 0.5
    >>> refine_peaks(img, [[2, 2]]).tolist()
    [[2, 3]]
    """
    if isinstance(max_shift, bool) or not isinstance(max_shift, (int, np.integer)):
        raise TypeError(f"max_shift must be an int, got {type(max_shift).__name__}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if not (np.isfinite(min_rise) and min_rise >= 0):
        raise ValueError(f"min_rise must be finite and >= 0, got {min_rise!r}")
    img = as_float_array(image, "image", 2, dtype=np.float64, finite=False)
    out = as_peaks(peaks, img.shape, "peaks")
    if max_shift == 0:
        return out
    current = [(int(y), int(x)) for y, x in out.tolist()]
    for i, start in enumerate(current):
        taken = set(current[:i]) | set(current[i + 1 :])
        current[i] = _climb(img, start, int(max_shift), taken, float(min_rise))
    return np.array(current, dtype=np.int64).reshape(-1, 2)


def subpixel_centers(image: Any, peaks: Any) -> np.ndarray:
    """Sub-pixel centres of ``peaks``: the vertex of a parabola through the 3 pixels along
    each axis, clipped to half a pixel.

    Per axis, ``offset = (v[-1] - v[+1]) / (2 (v[-1] - 2 v[0] + v[+1]))`` when the
    curvature ``v[-1] - 2 v[0] + v[+1]`` is negative (a maximum), else 0; a neighbour
    outside the image or on no data (NaN) gives offset 0 along that axis.

    Parameters
    ----------
    image : array_like
        (H, W) detection image.
    peaks : array_like
        (N, 2) (y, x) peaks inside the image (rounded to the nearest pixel).

    Returns
    -------
    numpy.ndarray
        (N, 2) float64 (y, x) centres, each within 0.5 pixel of its peak.
    """
    img = as_float_array(image, "image", 2, dtype=np.float64, finite=False)
    pk = as_peaks(peaks, img.shape, "peaks")
    out = pk.astype(np.float64)
    for i, (y, x) in enumerate(pk.tolist()):
        for axis, (dy, dx) in enumerate(((1, 0), (0, 1))):
            lo = _value(img, y - dy, x - dx)
            mid = _value(img, y, x)
            hi = _value(img, y + dy, x + dx)
            if not np.isfinite([lo, mid, hi]).all():
                continue
            curv = lo - 2.0 * mid + hi
            if curv < 0:
                out[i, axis] += float(np.clip(0.5 * (lo - hi) / curv, -0.5, 0.5))
    return out
