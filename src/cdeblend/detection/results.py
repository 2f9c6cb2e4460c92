"""Deblending a whole single-band image: its parents detected (or given) and deblended one
by one (:func:`deblend_image`), each result a :class:`ParentResult`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .._validate import as_float_array, check_psf
from .parents import Parent
from .peaks import MIN_SEPARATION
from .pipeline import detect


@dataclass
class ParentResult:
    """A deblended parent of a whole image.

    Attributes
    ----------
    parent : Parent
        The parent that was deblended.
    result : SingleBandResult
        Its result, in the frame of the cut-out at ``origin``.
    origin : tuple of int
        (y0, x0) of the cut-out in the image frame.
    """

    parent: Parent
    result: object
    origin: tuple[int, int]

    def conserved_images(self, shape: tuple[int, int]) -> np.ndarray:
        """(K, H, W) conserved images of this parent's peaks in the full image frame.

        A parent with one peak that was not deblended gives the image on its footprint.
        """
        res = self.result
        out = np.zeros((len(self.parent.peaks),) + tuple(shape), dtype=res.dtype)
        oy, ox = self.origin
        for c in res.children:
            y0, x0, h, w = c.box
            out[c.index, oy + y0 : oy + y0 + h, ox + x0 : ox + x0 + w] += c.conserved
        if not res.children and len(self.parent.peaks) == 1 and not res.flags:
            y0, x0, h, w = res.footprint_box
            fp = res.footprint
            out[0, oy + y0 : oy + y0 + h, ox + x0 : ox + x0 + w] = np.where(fp, res.unassigned, 0)
        return out


def deblend_image(
    image: np.ndarray,
    variance: np.ndarray,
    psf: np.ndarray | Callable,
    config=None,
    peaks: np.ndarray | None = None,
    parents: list[Parent] | None = None,
    mask: np.ndarray | None = None,
    nsigma: float = 5.0,
    grow: int = 2,
    min_area: int = 3,
    min_separation: float = MIN_SEPARATION,
    matched_filter: bool = True,
    **detect_options,
) -> list[ParentResult]:
    """Detect (or take) the parents of a single-band image and deblend each one.

    Parameters
    ----------
    image, variance : numpy.ndarray
        (H, W) image and its variance. Pixels without data (non-finite value, variance not
        finite and positive, or masked) are read as 0 and take no part (see
        :meth:`SingleBandDeblender.deblend`).
    psf : numpy.ndarray
        (h, w) odd, unit-sum PSF.
    config : SingleBandConfig, optional
        Deblender settings.
    peaks : numpy.ndarray, optional
        (N, 2) (y, x) peaks to use (grouped into the detected footprints; peaks in no
        footprint get a small one of their own).
    parents : list of Parent, optional
        Ready-made parents (skips detection).
    mask : numpy.ndarray, optional
        (H, W) bool (True = no data) or integer mask planes (see
        :meth:`SingleBandDeblender.deblend`).
    nsigma, grow, min_area, min_separation : see :func:`detect` (``min_separation`` in
        units of the PSF FWHM).
    matched_filter : bool
        Detect on the image matched-filtered with a Gaussian of the PSF's FWHM (more
        sensitive to faint sources than the unfiltered image).
    **detect_options
        Further :func:`detect` arguments (``min_contrast``, ``peak_significance``,
        ``peak_filter``, ...).

    Returns
    -------
    list of ParentResult
        One per parent. ``sum(r.conserved_images(shape) ...)`` plus the stray flux gives the
        image on every footprint.
    """
    from ..single_band import (
        SingleBandConfig,
        SingleBandDeblender,
        checked_image,
        estimate_sigma1,
        psf_fwhm_from_moments,
    )

    cfg = SingleBandConfig() if config is None else config
    image, variance, mask, no_data = checked_image(cfg, image, variance, mask)
    no_data = no_data if no_data.any() else None
    if callable(psf):
        raise TypeError("deblend_image needs a PSF image; use SingleBandDeblender for a callable")
    psf = as_float_array(psf, "psf", 2, dtype=np.float64)
    check_psf(psf, "psf")
    fwhm = psf_fwhm_from_moments(psf)
    if parents is None:
        parents = detect(
            image,
            variance,
            nsigma=nsigma,
            grow=grow,
            min_area=min_area,
            min_separation=min_separation,
            peaks=peaks,
            psf_fwhm=fwhm if (matched_filter and np.isfinite(fwhm) and fwhm > 0) else None,
            **detect_options,
        )
    deb = SingleBandDeblender(cfg)
    sigma1 = estimate_sigma1(variance, mask, cfg)
    # Cut-outs reach beyond the footprint by the ramp's reach (the ramp reads the image there).
    margin = int((1.5 * fwhm + 0.5) / 2) * 2 + 2 if np.isfinite(fwhm) else 0
    H, W = image.shape
    out = []
    for p in parents:
        y0, x0, h, w = p.box
        ya, xa = max(y0 - margin, 0), max(x0 - margin, 0)
        yb, xb = min(y0 + h + margin, H), min(x0 + w + margin, W)
        fp = np.zeros((yb - ya, xb - xa), dtype=bool)
        fp[y0 - ya : y0 - ya + h, x0 - xa : x0 - xa + w] = p.footprint
        sub_mask = None if mask is None else mask[ya:yb, xa:xb]
        sub_no_data = None if no_data is None else no_data[ya:yb, xa:xb]
        # The image, variance and PSF were checked above, the footprint and peaks are ours.
        res = deb._deblend_checked(
            image[ya:yb, xa:xb],
            variance[ya:yb, xa:xb],
            psf,
            np.ascontiguousarray(p.peaks - np.array([ya, xa]), dtype=np.int64),
            fp,
            sub_mask,
            sigma1,
            fwhm,
            no_data=sub_no_data,
        )
        out.append(ParentResult(p, res, (ya, xa)))
    return out
