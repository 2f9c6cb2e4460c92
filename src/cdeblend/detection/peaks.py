"""Peaks: the local maxima of a detection image that are objects, not pieces of one
(:func:`find_peaks`), and the defaults of their culling."""

from __future__ import annotations

import numpy as np

from .. import _detection_cy
from .._validate import as_float_array, check_same_shape

# Defaults of the peak culling (see find_peaks), chosen on the simulations and the real images
# together: bench/detection.py prints what they give.
MIN_CONTRAST = 0.005
CONTRAST_REFERENCE = "neighbour"
PEAK_SIGNIFICANCE = 2.0
MIN_SEPARATION = 0.5
PEAK_FILTER = 0.5
PEAK_NSIGMA = 3.0


def find_peaks(
    detection: np.ndarray,
    labels: np.ndarray,
    nsigma: float = 5.0,
    min_separation: float = 0.0,
    min_contrast: float = 0.0,
    peak_significance: float = 0.0,
    min_area: int = 1,
    noise: float = 1.0,
    contrast_reference: str = CONTRAST_REFERENCE,
) -> np.ndarray:
    """Peaks of ``detection`` inside footprints that are real objects, brightest first.

    Every local maximum (8-connected; a plateau is one maximum) of a footprint is a
    candidate. The brightest of a footprint is kept. Any other is kept when, at its
    *saddle* (the highest level at which its region, the connected pixels above that
    level, joins the region of a brighter peak within the footprint):

    - it rises above the saddle by ``peak_significance`` in noise units:
      ``(peak - saddle) / noise >= peak_significance`` (the peak significance of the LSST
      pipelines, measured from the saddle rather than from zero);
    - its region's flux above the saddle, ``sum(detection - saddle)`` over the region, is
      more than ``min_contrast`` times a reference: the footprint's flux above the
      threshold (``contrast_reference="footprint"``: SExtractor's ``DEBLEND_MINCONT`` with
      continuous levels instead of ``DEBLEND_NTHRESH`` of them) or the brighter region's
      flux above the saddle (``"neighbour"``);
    - its region has at least ``min_area`` pixels there (SExtractor's branches too);
    - its peak is above ``nsigma``;
    - and the peak it merged into is kept (a culled region takes the peaks that merged
      into it along: a galaxy's knots go with a galaxy that is itself culled).

    Kept peaks closer than ``min_separation`` pixels to a brighter kept peak of the same
    footprint are then dropped. With every criterion at 0 all local maxima above
    ``nsigma`` are returned.

    Parameters
    ----------
    detection : numpy.ndarray
        (H, W) detection image (e.g. :func:`detection_image`).
    labels : numpy.ndarray
        (H, W) integer footprint labels (0: background); peaks of different footprints
        never cull each other.
    nsigma : float
        Peaks must be above this value.
    min_separation : float
        Minimum Euclidean distance in pixels between peaks of a footprint.
    min_contrast : float
        Minimum flux fraction of a peak's region above its saddle (0 turns it off).
    peak_significance : float
        Minimum height of a peak above its saddle, in units of ``noise``.
    min_area : int
        Minimum number of pixels of a peak's region above its saddle.
    noise : float
        Noise RMS of ``detection`` (1 for an S/N image; see :func:`filter_noise`).
    contrast_reference : {"footprint", "neighbour"}
        What ``min_contrast`` is a fraction of. The default, ``"neighbour"``, keeps a faint
        galaxy beside a bright one in a large footprint of many objects, which the
        footprint's total would cull.

    Returns
    -------
    numpy.ndarray
        (K, 2) int64 (y, x), sorted by decreasing detection value.
    """
    if contrast_reference not in ("footprint", "neighbour"):
        raise ValueError(
            f"contrast_reference must be 'footprint' or 'neighbour', got {contrast_reference!r}"
        )
    for name, value in (
        ("min_separation", min_separation),
        ("min_contrast", min_contrast),
        ("peak_significance", peak_significance),
    ):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got {value}")
    if not (np.isfinite(noise) and noise > 0):
        raise ValueError(f"noise must be finite and > 0, got {noise}")
    det = as_float_array(detection, "detection", 2, dtype=np.float64, finite=False)
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise TypeError(
            f"labels must be a 2-D integer label image, got {labels.dtype} {labels.shape}"
        )
    check_same_shape(det, "detection", labels, "labels")
    lab = np.ascontiguousarray(labels, dtype=np.int32)
    tree = _merge_tree(det, lab)
    keep = _peak_tests(
        tree,
        det,
        lab,
        float(nsigma),
        float(min_contrast),
        float(peak_significance) * float(noise),
        int(min_area),
        contrast_reference,
    )
    peaks = tree["peak"][keep.view(bool)]
    if min_separation > 0 and len(peaks) > 1:
        peaks = peaks[_separation_mask(peaks, lab, float(min_separation))]
    return peaks.astype(np.int64, copy=False)


def _merge_tree(det: np.ndarray, labels: np.ndarray) -> dict:
    """:func:`_detection_cy.merge_tree` over every finite footprint pixel."""
    flat = det.ravel()
    idx = np.flatnonzero((labels.ravel() > 0) & np.isfinite(flat))
    # brightest first, ties in raster order (a plateau's first pixel is its peak): idx is
    # increasing, so a stable sort keeps ties in it
    order = idx[np.argsort(-flat[idx], kind="stable")].astype(np.int64)
    return _detection_cy.merge_tree(det, labels, order)


def _peak_tests(
    tree: dict,
    det: np.ndarray,
    labels: np.ndarray,
    nsigma: float,
    min_contrast: float,
    min_height: float,
    min_area: int,
    contrast_reference: str,
) -> np.ndarray:
    """uint8 (K,) which of the tree's peaks pass the tests of :func:`find_peaks`."""
    value, saddle, into = tree["value"], tree["saddle"], tree["into"]
    npix, flux = tree["npix"], tree["flux"]
    keep = value > nsigma
    m = into >= 0
    s = saddle[m]
    # a "peak" level with its saddle is a plateau's far corner, never an object
    keep[m] &= ((value[m] - s) >= min_height) & (value[m] > s)
    keep[m] &= npix[m, 0] >= min_area
    if min_contrast > 0:
        above = flux[m, 0] - npix[m, 0] * s
        if contrast_reference == "neighbour":
            ref = flux[m, 1] - npix[m, 1] * s
        else:
            # SExtractor's reference: the footprint's flux above the detection threshold
            on = (labels > 0) & (det > nsigma)
            total = np.bincount(labels[on], weights=det[on], minlength=int(labels.max()) + 1)
            pk = tree["peak"][m]
            ref = total[labels[pk[:, 0], pk[:, 1]]]
        keep[m] &= above > min_contrast * ref
    keep = keep.astype(np.uint8)
    _detection_cy.keep_along_tree(into, keep)
    return keep


def _separation_mask(peaks: np.ndarray, labels: np.ndarray, min_separation: float) -> np.ndarray:
    """Which peaks (brightest first) are at least ``min_separation`` from every brighter
    kept peak of their footprint."""
    keep = np.ones(len(peaks), dtype=bool)
    lab = labels[peaks[:, 0], peaks[:, 1]]
    r2 = min_separation * min_separation
    # footprint by footprint (a stable sort keeps each one's peaks brightest first)
    order = np.argsort(lab, kind="stable")
    bounds = np.flatnonzero(np.diff(lab[order])) + 1
    for group in np.split(order, bounds):
        if len(group) < 2:
            continue
        pk = peaks[group].astype(np.float64)
        ok = np.ones(len(group), dtype=bool)
        for i in range(1, len(group)):
            d2 = ((pk[:i][ok[:i]] - pk[i]) ** 2).sum(axis=1)
            ok[i] = bool(d2.min() >= r2)
        keep[group] = ok
    return keep
