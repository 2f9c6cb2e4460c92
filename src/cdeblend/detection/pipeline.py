"""Detection from images to parents (:func:`detect`): the detection image, its footprints,
the peaks of each, and the checks of the input (unsubtracted sky, correlated noise)."""

from __future__ import annotations

import logging

import numpy as np

from .image import check_kernel, detection_image_and_sums, filter_coadd, filter_noise
from .parents import Parent, find_footprints, group_peaks
from .peaks import (
    CONTRAST_REFERENCE,
    MIN_CONTRAST,
    MIN_SEPARATION,
    PEAK_FILTER,
    PEAK_NSIGMA,
    PEAK_SIGNIFICANCE,
    find_peaks,
)

logger = logging.getLogger("cdeblend.detection")

# An image with more than this fraction of its pixels above the threshold is almost surely not
# background-subtracted (a galaxy filling a sky-subtracted cutout stays near 0.6).
CROWDED_FRACTION = 0.9


#: Pixels an image needs before most of it above threshold means an unsubtracted sky.
MIN_FIELD_PIXELS = 4096


# Fewest pixels outside the footprints to measure the detection image's noise from.
MIN_NOISE_PIXELS = 1000


def detect(
    images,
    variance: np.ndarray | None = None,
    psf: np.ndarray | None = None,
    nsigma: float = 5.0,
    grow: int = 2,
    min_area: int = 3,
    min_separation: float = MIN_SEPARATION,
    peaks: np.ndarray | None = None,
    orphans: str = "own",
    psf_fwhm: float | None = None,
    min_contrast: float = MIN_CONTRAST,
    peak_significance: float = PEAK_SIGNIFICANCE,
    kernel: np.ndarray | None = None,
    filter_type: str = "matched",
    contrast_reference: str = CONTRAST_REFERENCE,
    peak_filter: float | None = PEAK_FILTER,
    peak_nsigma: float = PEAK_NSIGMA,
    measure_noise: bool = False,
) -> list[Parent]:
    """Find parents (footprints with their peaks) in one or several bands.

    The detection image (:func:`detection_image`) is thresholded at ``nsigma`` into
    footprints (:func:`find_footprints`) and the peaks of each are culled by
    :func:`find_peaks` so that a parent holds the objects it blends and not the pieces of
    one (a spiral's arms and knots, noise on a bright profile, a star's halo).

    SExtractor's ``DETECT_THRESH 1.5, DETECT_MINAREA 5, FILTER Y`` with ``default.conv`` and
    ``DEBLEND_MINCONT 0.005`` are ``nsigma=1.5, min_area=5, kernel=conv, filter_type="conv",
    min_contrast=0.005, grow=0``; sep's default matched filter is ``filter_type="matched"``.

    Parameters
    ----------
    images : numpy.ndarray or Observation
        (B, H, W) or (H, W) images, or an object with ``images``, ``variance`` (and
        optionally ``psfs``) attributes.
    variance : numpy.ndarray
        Same shape as ``images``. Pixels whose value is not finite or whose variance is not
        finite and positive have no data: they add nothing to the detection image.
    psf : numpy.ndarray, optional
        PSF for a matched-filter detection image (see :func:`detection_image`).
    nsigma : float
        Threshold of the detection image, for footprints and peaks, in units of its pixel
        noise (of the unfiltered image with ``filter_type="conv"``).
    grow : int
        Footprints are grown by this many pixels.
    min_area : int
        Footprints with fewer pixels above threshold are dropped, and so are peaks whose
        region above their saddle is smaller.
    min_separation : float
        Minimum distance between the peaks of a parent in units of the PSF FWHM (from
        ``psf`` or ``psf_fwhm``; without either, of the filter ``kernel``'s FWHM, and in
        pixels when there is no filter either). Default %(MIN_SEPARATION)s.
    peaks : numpy.ndarray, optional
        (N, 2) (y, x) peaks to use instead of detecting them; they are grouped by footprint.
    orphans : {"own", "drop", "raise"}
        What to do with given peaks outside every footprint (see :func:`group_peaks`).
    psf_fwhm : float, optional
        Without ``psf``: filter with a Gaussian of this FWHM (see :func:`detection_image`).
    min_contrast : float
        A peak other than a footprint's brightest needs more than this fraction of the
        reference flux above its saddle (see :func:`find_peaks`); 0 turns the test off.
        Default %(MIN_CONTRAST)s.
    peak_significance : float
        A peak other than a footprint's brightest must rise this many noise sigma above its
        saddle (see :func:`find_peaks`). Default %(PEAK_SIGNIFICANCE)s.
    kernel : numpy.ndarray, optional
        Filter kernel when neither ``psf`` nor ``psf_fwhm`` is given (e.g. SExtractor's
        ``default.conv``).
    filter_type : {"matched", "conv"}
        Matched filter (threshold in S/N of the filtered image) or SExtractor's smoothing
        (threshold in the unfiltered pixel noise); see :func:`detection_image`.
    contrast_reference : {"footprint", "neighbour"}
        What ``min_contrast`` is a fraction of (see :func:`find_peaks`). Default
        %(CONTRAST_REFERENCE)r.
    peak_filter : float or None
        With a PSF (``psf`` or ``psf_fwhm``) and no ``kernel``, the peaks are found on the
        image smoothed by a Gaussian of this many PSF FWHM (``filter_type="conv"``) rather
        than on the detection image: the matched filter blurs pairs closer than about
        1.2 FWHM into one peak, a narrower filter keeps them apart while the footprints keep
        the matched filter's depth. None: on the detection image. Default
        %(PEAK_FILTER)s.
    peak_nsigma : float
        Peaks must reach this many noise sigma of the image they are found on (they lie in
        a footprint, so near a detection above ``nsigma``). Default %(PEAK_NSIGMA)s.
    measure_noise : bool
        Measure the noise of the detection image (and of the peak image) as the robust
        standard deviation (1.4826 MAD) of its pixels outside the footprints, and rescale
        to it, instead of trusting ``variance``: for images whose noise is correlated
        (drizzled, warped or resampled coadds), where the filtered noise is larger than
        the pixel variance says. Needs at least %(MIN_NOISE_PIXELS)s pixels outside the
        footprints (otherwise ``variance`` is used, logged); a cutout filled by its
        galaxy has too few.

    Returns
    -------
    list of Parent
    """
    if variance is None:
        obs = images
        try:
            images, variance = obs.images, obs.variance
        except AttributeError:
            raise TypeError(
                "detect needs variance, or an Observation-like first argument"
            ) from None
        if psf is None:
            psf = getattr(obs, "psfs", None)
    if kernel is not None:
        kernel = check_kernel(kernel)
    det, sums = detection_image_and_sums(images, variance, psf, psf_fwhm, kernel, filter_type)
    _warn_if_unsubtracted(det, nsigma)
    labels, _ = find_footprints(det, nsigma=nsigma, grow=grow, min_area=min_area)
    det_noise = filter_noise(psf, psf_fwhm, kernel, filter_type)
    if measure_noise:
        measured = _outside_noise(det, labels)
        if measured is not None:
            # in the units the threshold is given in (the unfiltered noise for "conv")
            det = det * (det_noise / measured)
            labels, _ = find_footprints(det, nsigma=nsigma, grow=grow, min_area=min_area)
    if peaks is None:
        scale = _separation_unit(psf, psf_fwhm, kernel)
        image, noise = det, det_noise
        if peak_filter is not None and kernel is None and (psf is not None or psf_fwhm):
            if not (np.isfinite(peak_filter) and peak_filter > 0):
                raise ValueError(f"peak_filter must be finite and > 0 or None, got {peak_filter}")
            width = float(peak_filter) * scale
            image = filter_coadd(*sums, None, width, None, "conv")
            noise = filter_noise(psf_fwhm=width, filter_type="conv")
            if measure_noise:
                noise = _outside_noise(image, labels) or noise
        pk = find_peaks(
            image,
            labels,
            nsigma=float(peak_nsigma) * noise,
            min_separation=float(min_separation) * scale,
            min_contrast=min_contrast,
            peak_significance=peak_significance,
            min_area=min_area,
            noise=noise,
            contrast_reference=contrast_reference,
        )
        if pk.size == 0:
            return []
        return group_peaks(pk, labels, orphans="drop")
    return group_peaks(peaks, labels, orphans=orphans, orphan_radius=grow)


detect.__doc__ = detect.__doc__ % {
    "MIN_SEPARATION": MIN_SEPARATION,
    "MIN_CONTRAST": MIN_CONTRAST,
    "PEAK_SIGNIFICANCE": PEAK_SIGNIFICANCE,
    "CONTRAST_REFERENCE": CONTRAST_REFERENCE,
    "PEAK_FILTER": PEAK_FILTER,
    "PEAK_NSIGMA": PEAK_NSIGMA,
    "MIN_NOISE_PIXELS": MIN_NOISE_PIXELS,
}


def _outside_noise(image: np.ndarray, labels: np.ndarray) -> float | None:
    """1.4826 MAD of ``image`` outside the footprints, or None (logged) with too few pixels."""
    out = image[(labels == 0) & np.isfinite(image)]
    if out.size < MIN_NOISE_PIXELS:
        logger.info(
            "measure_noise: %d pixels outside the footprints (< %d); using the variance",
            out.size,
            MIN_NOISE_PIXELS,
        )
        return None
    mad = float(np.median(np.abs(out - np.median(out))))
    return 1.4826 * mad if mad > 0 else None


def _warn_if_unsubtracted(det: np.ndarray, nsigma: float) -> None:
    """Log a warning when nearly every pixel of a field is above the threshold.

    A small cutout (under ``MIN_FIELD_PIXELS``) that one galaxy fills is above threshold
    almost everywhere with a perfectly subtracted sky, so only fields are checked.
    """
    frac = float(np.mean(det > nsigma)) if det.size else 0.0
    if frac > CROWDED_FRACTION and det.size >= MIN_FIELD_PIXELS:
        logger.warning(
            "%.0f%% of the pixels are above the detection threshold (%g sigma): the image "
            "looks not background-subtracted (or the variance is too small); subtract the "
            "background or raise nsigma",
            100 * frac,
            nsigma,
        )


def _separation_unit(psf, psf_fwhm, kernel) -> float:
    """Pixels per unit of ``min_separation``: the FWHM of the PSF, else of the kernel, else 1."""
    from ..single_band import psf_fwhm_from_moments

    if psf is None and psf_fwhm is not None:
        return float(psf_fwhm)
    p = psf if psf is not None else kernel
    if p is None:
        return 1.0
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 3:
        p = p.mean(axis=0)
    fwhm = psf_fwhm_from_moments(p)
    return float(fwhm) if np.isfinite(fwhm) and fwhm > 0 else 1.0
