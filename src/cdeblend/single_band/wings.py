"""The light a child has outside its parent's footprint (its "wings"), and the total error.

A child's conserved flux sums the image over the parent footprint only; the source's light
outside it (and in pixels without data) is lost: on simulated LSST-like single-band blends
a median 1.3-1.7 % for isolated stars and 2.0-2.8 % for isolated galaxies, about twice the
noise error at S/N >= 20 (docs/trust.md). The estimate here has no free coefficient:

* a child with a PSF template is a point source at its PSF fit's centre ``c``: the PSF image
  ``P_c`` there puts ``sum_{p not in R} P_c(p) / sum_{p in R} P_c(p)`` of its light outside
  for every unit inside, ``R`` the footprint's pixels with data;
* any other child is taken as point sources distributed like its (non-negative) template
  ``T``: each pixel ``q`` of it keeps the fraction ``f(q) = sum_{p in R} P(p - q)`` of its
  light in ``R`` (``P`` the unit-sum PSF image, one per parent), and the child's light
  outside over its light inside is ``sum_q T(q) (1 - f(q)) / sum_q T(q) f(q)``. The
  template is already seen
  through the PSF, so this spreads its light once more than the truth, while it misses
  the intrinsic profile beyond the footprint; the two roughly cancel on the simulations
  (docs/trust.md gives the ratio of estimated to true wing light).

The child's ``wing_flux`` is its conserved flux times that ratio. The conserved flux misses
it, so ``flux_total_err`` counts it as an error of its full size next to the noise and the
deblending uncertainty (:func:`total_flux_error`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.signal import fftconvolve

from .frame import Box, Frame, Template, on_box
from .psf import PsfImages, round_half_away

__all__ = [
    "inside_fraction",
    "outside_ratio",
    "point_outside_ratio",
    "total_flux_error",
    "wing_ratios",
]


def point_outside_ratio(psf: np.ndarray, psf_origin: tuple[int, int], region: np.ndarray) -> float:
    """Light outside ``region`` over light inside it of a point source with image ``psf``.

    Parameters
    ----------
    psf : numpy.ndarray
        (h, w) PSF image centred on the point source (its total is the source's light).
    psf_origin : tuple of int
        (y0, x0) of ``psf`` in ``region``'s coordinates (it may reach out of ``region``).
    region : numpy.ndarray
        (H, W) bool, the pixels whose light is counted (footprint with data).

    Returns
    -------
    float
        ``sum_{p not in region} P(p) / sum_{p in region} P(p)``; 0 when no light falls
        inside (nothing to scale).
    """
    psf = np.asarray(psf, dtype=np.float64)
    box = (int(psf_origin[0]), int(psf_origin[1])) + psf.shape
    inside = float(np.sum(psf * on_box(region, (0, 0) + region.shape, box)))
    if not inside > 0:
        return 0.0
    return max(float(psf.sum()) - inside, 0.0) / inside


def inside_fraction(
    region: np.ndarray, psf: np.ndarray, center: tuple[int, int] | None = None
) -> np.ndarray:
    """The fraction of a point source's light that lands in ``region``, at every pixel.

    Parameters
    ----------
    region : numpy.ndarray
        (H, W) bool, the pixels whose light is counted.
    psf : numpy.ndarray
        (ph, pw) PSF image (its sum is the point source's light).
    center : tuple of int, optional
        (y, x) pixel of ``psf`` on which the point source sits; default ``(ph // 2, pw // 2)``.

    Returns
    -------
    numpy.ndarray
        (H, W) ``f(q) = sum_{p in region} P(p - q)``, 0 off ``region``'s reach.
    """
    psf = np.asarray(psf, dtype=np.float64)
    ph, pw = psf.shape
    cy, cx = (ph // 2, pw // 2) if center is None else (int(center[0]), int(center[1]))
    H, W = region.shape
    # the region zero-padded by the PSF's reach: f(q) = sum_a reg[q + a] P[a], a correlation
    # (the convolution with the flipped PSF) over the valid part
    reg = on_box(
        np.asarray(region, dtype=np.float64), (0, 0, H, W), (-cy, -cx, H + ph - 1, W + pw - 1)
    )
    return fftconvolve(reg, psf[::-1, ::-1], mode="valid")


def outside_ratio(template: np.ndarray, box: Box, fraction: np.ndarray, total: float) -> float:
    """Light outside a region over light inside it of point sources laid out as
    ``template``.

    Parameters
    ----------
    template : numpy.ndarray
        (h, w) non-negative weights of the point sources (negative values count as 0).
    box : tuple of int
        (y0, x0, h, w) of ``template`` in ``fraction``'s coordinates (inside its frame:
        ``fraction`` is 0 off it, so pixels there would count as keeping no light).
    fraction : numpy.ndarray
        (H, W) :func:`inside_fraction` of the region (pixels off it count as 0).
    total : float
        The PSF's sum (a point source's whole light).

    Returns
    -------
    float
        ``sum_q T(q) (total - f(q)) / sum_q T(q) f(q)``; 0 when no light falls inside.
    """
    t = np.maximum(np.asarray(template, dtype=np.float64), 0.0)
    f = on_box(fraction, (0, 0) + fraction.shape, tuple(int(v) for v in box))
    inside = float(np.sum(t * f))
    if not inside > 0:
        return 0.0
    return max(float(t.sum()) * total - inside, 0.0) / inside


def total_flux_error(noise: float, deblend: float, wing: float) -> float:
    """``sqrt(noise^2 + deblend^2 + wing^2)``: the error of a conserved flux against the
    source's total flux (NaN when a term is NaN)."""
    if not (math.isfinite(noise) and math.isfinite(deblend) and math.isfinite(wing)):
        return float("nan")
    return math.sqrt(noise * noise + deblend * deblend + wing * wing)


def wing_ratios(
    frame: Frame,
    psf: PsfImages,
    templates: Sequence[Template],
    centers: Sequence[tuple[float, float]],
) -> np.ndarray:
    """(n,) light outside the parent footprint (and its pixels without data) over light
    inside it, for each child.

    Parameters
    ----------
    frame : Frame
        The working frame (its footprint ``fp``; pixels with ``variance > 0`` have data).
    psf : PsfImages
        The PSF images.
    templates : sequence of Template
        The children's templates on the frame; a template of kind "psf" is a point source.
    centers : sequence of tuple of float
        (y, x) image coordinates of each child's PSF fit centre (used for PSF templates
        only: the others share one map of ``f``, see the module's docstring).

    Returns
    -------
    numpy.ndarray
        (n,) the ratios; a child's ``wing_flux`` is its conserved flux times its ratio.
    """
    region = (frame.fp != 0) & (frame.variance > 0)
    out = np.zeros(len(templates))
    fraction = None
    for k, (t, (cy, cx)) in enumerate(zip(templates, centers, strict=True)):
        if t.kind == "psf":
            arr, y0, x0 = psf.image(float(cy), float(cx))
            out[k] = point_outside_ratio(arr, (y0 - frame.y0, x0 - frame.x0), region)
            continue
        if fraction is None:
            # one map for the parent, with the PSF image as given (a PSF model: at the
            # peaks' mean centre): the PSF's change over a parent, or a sub-pixel shift,
            # barely moves the light of its wings
            if psf.fixed is not None:
                arr, center = psf.fixed, None
            else:
                my, mx = psf.fallback()
                arr, y0, x0 = psf.image(float(my), float(mx))
                center = (round_half_away(my) - y0, round_half_away(mx) - x0)
            total = float(np.sum(arr))
            fraction = inside_fraction(region, arr, center)
        out[k] = outside_ratio(t.values, t.box, fraction, total)
    return out
