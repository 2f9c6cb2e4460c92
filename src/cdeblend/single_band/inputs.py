"""The checks at the top of :meth:`SingleBandDeblender.deblend`: image, variance, mask, PSF,
peaks, centres and the parent footprint (given, or the detection footprint by default), and
the background noise sigma1.

Everything a caller passes is checked here once; the steps after it trust their inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from .._validate import (
    as_float_array,
    as_no_data_mask,
    as_peaks,
    check_psf,
    check_same_shape,
    clear_no_data,
    no_data_pixels,
)
from .config import SingleBandConfig
from .psf import callable_fwhm, psf_fwhm_from_moments

__all__ = [
    "DETECT_GROW",
    "DETECT_MIN_AREA",
    "DETECT_NSIGMA",
    "Inputs",
    "check_footprint",
    "check_inputs",
    "checked_image",
    "default_footprint",
    "estimate_sigma1",
    "split_mask",
]

# The default footprint of SingleBandDeblender.deblend: deblend_image's detection defaults
# (matched-filter S/N threshold, growth in pixels, minimum area), so that one call and the
# whole-image path deblend the same parent.
DETECT_NSIGMA = 5.0
DETECT_GROW = 2
DETECT_MIN_AREA = 3


class Inputs(NamedTuple):
    """One parent's checked inputs (see :meth:`SingleBandDeblender.deblend`)."""

    image: np.ndarray
    variance: np.ndarray
    psf: np.ndarray | Callable
    peaks: np.ndarray
    centers: np.ndarray
    footprint: np.ndarray
    mask: np.ndarray | None
    no_data: np.ndarray | None


def checked_image(cfg: SingleBandConfig, image, variance, mask) -> tuple:
    """``(image, variance, mask, no_data)``: the image and variance as float arrays of one
    shape, the mask's deblender planes (:func:`split_mask`) and the (H, W) bool pixels
    without data, whose value and variance are cleared to 0. The first checks of both
    single-band entry points (:meth:`SingleBandDeblender.deblend`, ``deblend_image``)."""
    image = as_float_array(image, "image", 2, finite=False)
    variance = as_float_array(variance, "variance", 2, finite=False)
    check_same_shape(image, "image", variance, "variance")
    mask, no_data = split_mask(mask, image.shape, cfg)
    no_data = no_data_pixels(image, variance, no_data)
    image, variance = clear_no_data(image, variance, no_data)
    return image, variance, mask, no_data


def check_inputs(
    cfg: SingleBandConfig, image, variance, psf, peaks, footprint, mask, centers
) -> Inputs:
    """Check the arguments of :meth:`SingleBandDeblender.deblend`; pixels without data are
    cleared (value and variance 0)."""
    image, variance, mask, no_data = checked_image(cfg, image, variance, mask)
    if callable(psf):
        psf_arr = psf
    else:
        psf_arr = as_float_array(psf, "psf", 2, dtype=np.float64)
        check_psf(psf_arr, "psf")
    pk = as_peaks(peaks, image.shape, "peaks")
    cen = None  # the default is made in _deblend_checked (shared with deblend_image)
    if centers is not None:
        cen = as_float_array(centers, "centers", 2, dtype=np.float64)
        if cen.shape != pk.shape:
            raise ValueError(f"centers has shape {cen.shape}, peaks have {pk.shape}")
    if footprint is None:
        fp = default_footprint(cfg, image, variance, pk, psf_arr)
    else:
        fp = check_footprint(footprint, image, pk)
    if not fp.any():
        raise ValueError("footprint is empty: no pixel belongs to the parent")
    inside = fp[pk[:, 0], pk[:, 1]]
    if not np.all(inside):
        i = int(np.flatnonzero(~inside)[0])
        raise ValueError(f"peaks[{i}] = (y={pk[i, 0]}, x={pk[i, 1]}) lies outside the footprint")
    return Inputs(image, variance, psf_arr, pk, cen, fp, mask, no_data if no_data.any() else None)


def check_footprint(footprint: Any, image: np.ndarray, pk: np.ndarray) -> np.ndarray:
    """A caller's footprint as a bool mask: a bool mask as is, an integer label image as the
    union of the labels under the peaks."""
    fp = np.asarray(footprint)
    check_same_shape(image, "image", fp, "footprint")
    if fp.dtype == bool:
        return np.ascontiguousarray(fp)
    if fp.dtype.kind in "iu":
        labels = np.unique(fp[pk[:, 0], pk[:, 1]])
        labels = labels[labels != 0]
        return np.isin(fp, labels)
    raise TypeError(
        f"footprint must be a bool mask or an integer label image, got dtype {fp.dtype}"
    )


def default_footprint(
    cfg: SingleBandConfig, image: np.ndarray, variance: np.ndarray, pk: np.ndarray, psf
) -> np.ndarray:
    """The parent footprint when the caller gives none.

    By default (``footprint_nsigma=None``) the footprints that
    :func:`~cdeblend.detection.deblend_image` detects (matched-filter S/N above
    ``DETECT_NSIGMA``, grown by ``DETECT_GROW`` pixels) that hold a peak, merged; a peak in
    none of them gets a small disc of its own, as there. With a number, the pixels above
    ``footprint_nsigma * sqrt(variance)`` connected to a peak (0 takes every positive pixel:
    on a noisy image a fractal of noise, and an error when a peak sits on a negative pixel).
    """
    if cfg.footprint_nsigma is None:
        return _detected_footprint(image, variance, pk, psf)
    thr = cfg.footprint_nsigma * np.sqrt(variance)
    above = image > thr
    labels, _ = ndimage.label(above, structure=np.ones((3, 3), dtype=bool))
    keep = np.unique(labels[pk[:, 0], pk[:, 1]])
    keep = keep[keep != 0]
    if keep.size == 0:
        raise ValueError(
            "footprint is empty: no peak lies on a pixel above the default threshold "
            "(pass footprint= explicitly)"
        )
    return np.isin(labels, keep)


def _detected_footprint(image, variance, pk, psf) -> np.ndarray:
    """The merged detection footprints holding the peaks (see :func:`default_footprint`)."""
    # Imported here: cdeblend.detection imports this package (deblend_image).
    from ..detection import detect

    fwhm = psf_fwhm_from_moments(psf) if not callable(psf) else callable_fwhm(psf, image.shape)
    parents = detect(
        image,
        variance,
        nsigma=DETECT_NSIGMA,
        grow=DETECT_GROW,
        min_area=DETECT_MIN_AREA,
        peaks=pk,
        psf_fwhm=fwhm if (np.isfinite(fwhm) and fwhm > 0) else None,
    )
    fp = np.zeros(image.shape, dtype=bool)
    for p in parents:
        y0, x0, h, w = p.box
        fp[y0 : y0 + h, x0 : x0 + w] |= p.footprint
    return fp


def split_mask(
    mask: Any, shape: tuple[int, int], config: SingleBandConfig
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """A user's mask as (integer bit planes or None, bool no-data pixels or None).

    A bool mask (True = no data) has no bit planes; an integer mask keeps its planes (read
    for ``mask_limits``, EDGE and sigma1, written for ``not_deblended_mask``) and marks no
    data where a ``config.no_data_mask_planes`` bit is set.
    """
    if mask is None:
        return None, None
    arr = np.asarray(mask)
    if arr.shape != tuple(shape):
        raise ValueError(f"mask has shape {arr.shape} but image has shape {tuple(shape)}")
    if arr.dtype.kind in "iu":
        # the planes it is read for (and written, NOT_DEBLENDED) must fit in its type
        width = 8 * arr.dtype.itemsize - (arr.dtype.kind == "i")
        top = max(config.mask_bits.values(), default=0)
        if top >= width:
            raise TypeError(
                f"mask of dtype {arr.dtype} cannot hold the mask planes' bits (up "
                f"to bit {top} in config.mask_bits): use int32, or a bool mask"
            )
    no_data = as_no_data_mask(arr, "mask", shape, bad_bits=config.no_data_bits())
    return (None if arr.dtype == np.bool_ else arr), no_data


def estimate_sigma1(
    variance: np.ndarray, mask: np.ndarray | None, config: SingleBandConfig | None = None
) -> float:
    """sqrt(median variance) over pixels with no ``mask_planes`` bit and variance > 0."""
    cfg = SingleBandConfig() if config is None else config
    good = np.isfinite(variance) & (variance > 0)
    if mask is not None:
        bits = 0
        for p in cfg.mask_planes:
            bits |= 1 << cfg.mask_bits[p]
        good &= (mask & bits) == 0
    if not good.any():
        return float("nan")
    return float(np.sqrt(np.median(variance[good])))
