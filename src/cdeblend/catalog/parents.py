"""Parents in the catalog: grouping a flat peak list into parents (of the one parent type,
:class:`cdeblend.Parent`, that detection makes too), checking the parents given, and the
footprint statistics of every parent (flux, centroid, masked fraction)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import as_float_array, as_peaks, check_same_shape
from ..detection import Parent, detection_image
from .frame import Frame

__all__ = [
    "CatalogParent",
    "ParentLike",
    "ParentStats",
    "check_parents",
    "footprint_flux_err",
    "parent_stats",
    "frame_parents_from_peaks",
    "parents_from_peaks",
]


#: The catalog's names of :class:`cdeblend.Parent`, kept for code written against them: the
#: catalog and detection share one parent type (``CatalogParent(id, box, footprint, peaks)``
#: still builds one). :func:`deblend_catalog` reads any object with ``id``, ``box``,
#: ``footprint`` (or None) and ``peaks``.
CatalogParent = Parent
ParentLike = Parent


def parents_from_peaks(
    images: np.ndarray,
    variance: np.ndarray,
    peaks: Any,
    snr: float = 3.0,
    grow: int = 2,
) -> list[Parent]:
    """Group a flat peak list into parents.

    A footprint is a connected (8-neighbour) region of pixels whose S/N in the unfiltered
    detection image (:func:`cdeblend.detection_image`, the inverse-variance coadd
    ``sum_b I_b / V_b / sqrt(sum_b 1 / V_b)``) is at least ``snr``,
    with every peak pixel switched on, dilated by a disc of radius ``grow``. Regions without
    a peak are dropped; parents are numbered 1, 2, ... in raster order of their first pixel
    and keep their peaks in input order.

    Parameters
    ----------
    images, variance : numpy.ndarray
        (B, H, W) or (H, W).
    peaks : array_like
        (N, 2) (y, x).
    snr : float
        Per-pixel detection threshold.
    grow : int
        Dilation radius in pixels.
    """
    img = as_float_array(images, "images", (2, 3), finite=False)
    # the variance in the images' precision (as the catalog reads both)
    var = as_float_array(variance, "variance", (2, 3), dtype=img.dtype, finite=False)
    check_same_shape(img, "images", var, "variance")
    pk = as_peaks(peaks, img.shape[-2:])
    sn = detection_image(img, var)  # unfiltered; pixels without data have S/N 0
    return _parents_of_snr_image(sn, pk, snr, grow)


def frame_parents_from_peaks(
    images: np.ndarray, variance: np.ndarray, peaks: Any, snr: float, grow: int
) -> list[Parent]:
    """:func:`parents_from_peaks` of a catalog's checked frame: C-contiguous (B, H, W)
    images and variance of one float dtype whose pixels without data are cleared (value and
    variance 0, as :func:`~cdeblend.catalog.frame.as_frame` leaves them). The S/N image is
    the kernel's alone: the checks and no-data pass of :func:`cdeblend.detection_image`
    would find nothing to clear (the same values), and they took half of the time before
    the first parent could start, while the other core waited."""
    from .. import _detection_cy

    pk = as_peaks(peaks, images.shape[-2:])
    sn = np.empty(images.shape[1:])
    # (as_frame's arrays are contiguous already: no copies)
    _detection_cy.snr_coadd(np.ascontiguousarray(images), np.ascontiguousarray(variance), sn)
    return _parents_of_snr_image(sn, pk, snr, grow)


def _parents_of_snr_image(sn: np.ndarray, pk: np.ndarray, snr: float, grow: int) -> list[Parent]:
    """The parents of :func:`parents_from_peaks` from the (H, W) S/N image and the checked
    (N, 2) peaks."""
    from .. import _detection_cy

    on = np.ascontiguousarray(sn >= snr)
    on[pk[:, 0], pk[:, 1]] = True
    if grow > 0:
        grown = np.empty(on.shape, dtype=np.uint8)
        prefix = np.empty((on.shape[0], on.shape[1] + 1), dtype=np.int32)
        _detection_cy.dilate_disc(on.view(np.uint8), int(grow), grown, prefix)
        on = grown.view(bool)
    labels = np.empty(on.shape, dtype=np.int32)
    boxes = _detection_cy.label_footprints(on.view(np.uint8), labels)
    peak_label = labels[pk[:, 0], pk[:, 1]]
    parents = []
    # group the peaks by footprint in one sort (stable: each parent keeps input order)
    order = np.argsort(peak_label, kind="stable")
    starts = np.searchsorted(peak_label[order], np.arange(1, len(boxes) + 2))
    for lab in np.unique(peak_label).tolist():  # labels are raster ordered
        y0, x0, h, w = boxes[lab - 1].tolist()
        rows = order[starts[lab - 1] : starts[lab]]
        parents.append(
            Parent(
                id=len(parents) + 1,
                box=(y0, x0, h, w),
                footprint=labels[y0 : y0 + h, x0 : x0 + w] == lab,
                peaks=pk[rows],
                peak_index=rows,
            )
        )
    return parents


def _check_parent(p: Any, i: int, shape: tuple[int, int]) -> tuple[Any, tuple, np.ndarray, Any]:
    for attr in ("id", "box", "peaks"):
        if not hasattr(p, attr):
            raise TypeError(f"parents[{i}] has no .{attr} (needs .id, .box, .footprint, .peaks)")
    y0, x0, h, w = (int(v) for v in p.box)
    if h <= 0 or w <= 0 or y0 < 0 or x0 < 0 or y0 + h > shape[0] or x0 + w > shape[1]:
        raise ValueError(f"parents[{i}] (id {p.id}) box {tuple(p.box)} is not inside the image")
    fp = getattr(p, "footprint", None)
    fp = np.ones((h, w), bool) if fp is None else np.asarray(fp, dtype=bool)
    if fp.shape != (h, w):
        raise ValueError(
            f"parents[{i}] (id {p.id}) footprint has shape {fp.shape}, its box needs {(h, w)}"
        )
    pk = as_peaks(p.peaks, shape, name=f"parents[{i}].peaks")
    local = pk - np.array([y0, x0])
    inside = (local[:, 0] >= 0) & (local[:, 0] < h) & (local[:, 1] >= 0) & (local[:, 1] < w)
    if not np.all(inside):
        j = int(np.flatnonzero(~inside)[0])
        raise ValueError(f"parents[{i}].peaks[{j}] = {tuple(pk[j])} lies outside its box")
    return p.id, (y0, x0, h, w), fp, local


def check_parents(
    parents: Sequence[Any], shape: tuple[int, int]
) -> list[tuple[Any, tuple, np.ndarray, np.ndarray]]:
    """:func:`_check_parent` of every parent, with the peak checks done once for all.

    A parent's peaks are a few values, so checking them parent by parent costs mostly numpy
    call overhead: :func:`_check_parents_at_once` reads them per parent and rounds, checks and moves
    them to their boxes as one array. When a parent is not as expected, the per-parent checks
    run instead and raise the error of the first bad parent.

    Returns
    -------
    list of tuple
        ``(id, (y0, x0, h, w), footprint, local peaks)`` per parent, as :func:`_check_parent`.
    """
    parents = list(parents)  # read twice when the per-parent checks are needed
    checked = _check_parents_at_once(parents, shape)
    if checked is None:
        checked = [_check_parent(p, i, shape) for i, p in enumerate(parents)]
    return checked


def _check_parents_at_once(
    parents: list[Any], shape: tuple[int, int]
) -> list[tuple[Any, tuple, np.ndarray, np.ndarray]] | None:
    """The result of :func:`_check_parent` for every parent, or None if one fails a check
    (or has peak lists of another dtype than the first parent's: rounded together, they
    would be rounded in another precision than by ``as_peaks``)."""
    H, W = shape
    ids, boxes, fps, pks = [], [], [], []
    try:
        for p in parents:
            y0, x0, h, w = map(int, p.box)
            if h <= 0 or w <= 0 or y0 < 0 or x0 < 0 or y0 + h > H or x0 + w > W:
                return None
            fp = getattr(p, "footprint", None)
            fp = np.ones((h, w), bool) if fp is None else np.asarray(fp, dtype=bool)
            pk = np.asarray(p.peaks)
            if pk.ndim == 1 and pk.size == 2:
                pk = pk.reshape(1, 2)
            if (
                fp.shape != (h, w)
                or pk.dtype.kind not in "iuf"
                or pk.ndim != 2
                or pk.shape[1] != 2
                or pk.shape[0] == 0
                or (pks and pk.dtype != pks[0].dtype)
            ):
                return None
            ids.append(p.id)
            boxes.append((y0, x0, h, w))
            fps.append(fp)
            pks.append(pk)
    except (AttributeError, TypeError, ValueError, OverflowError):
        return None
    if not pks:
        return []
    n = np.array([len(pk) for pk in pks])
    allpk = np.concatenate(pks)
    if allpk.dtype.kind == "f":  # as_peaks' rounding, half away from zero
        if not np.all(np.isfinite(allpk)):
            return None
        allpk = np.sign(allpk) * np.floor(np.abs(allpk) + 0.5)
    box = np.repeat(np.array(boxes, dtype=np.int64), n, axis=0)
    local = allpk.astype(np.int64) - box[:, :2]
    # inside its box means inside the image: the boxes were checked
    if np.any(local < 0) or np.any(local >= box[:, 2:]):
        return None
    ends = np.cumsum(n).tolist()
    return [
        (pid, b, fp, local[a:e])
        for pid, b, fp, a, e in zip(ids, boxes, fps, [0, *ends[:-1]], ends, strict=True)
    ]


@dataclass
class ParentStats:
    """Footprint statistics of every parent (:func:`parent_stats`)."""

    flux: np.ndarray  # (P, B) each band summed over the footprint
    centroid: np.ndarray  # (P, 2) (y, x) of the positive band-summed image, NaN if none
    masked_fraction: np.ndarray  # (P,) masked share of the footprint's pixels
    flux_err: np.ndarray | None = None  # (P, B) standard deviation of ``flux``


def parent_stats(frame: Frame, boxes: np.ndarray, footprints: list[np.ndarray]) -> ParentStats:
    """Footprint flux, centroid and masked fraction of every parent, in one kernel call.

    One pass over the parents' pixels instead of a few numpy calls per parent; the flux is
    summed in double, row by row (numpy sums pairwise: the last bits may differ).
    """
    from .. import _catalog_cy

    P, nb = len(footprints), frame.images.shape[0]
    flux = np.empty((P, nb))
    centroid = np.empty((P, 2))
    counts = np.empty((P, 2), dtype=np.int64)
    flat = np.concatenate([fp.reshape(-1) for fp in footprints]) if P else np.zeros(0, bool)
    mask = None if frame.mask is None else np.ascontiguousarray(frame.mask).view(np.uint8)
    _catalog_cy.parent_stats(frame.images, boxes, flat.view(np.uint8), mask, flux, centroid, counts)
    # the division of Python's float(masked) / max(pixels, 1), in bulk
    return ParentStats(flux, centroid, counts[:, 1] / np.maximum(counts[:, 0], 1))


def footprint_flux_err(frame: Frame, boxes: np.ndarray, footprints: list[np.ndarray]) -> np.ndarray:
    """(P, B) standard deviation of each parent's footprint flux: the variance summed over
    its unmasked footprint pixels (non-finite or negative variance counts as no data)."""
    nb = frame.images.shape[0]
    out = np.zeros((len(footprints), nb))
    for k, fp in enumerate(footprints):
        y0, x0, h, w = (int(v) for v in boxes[k])
        var = np.asarray(frame.variance[:, y0 : y0 + h, x0 : x0 + w], dtype=np.float64)
        keep = np.asarray(fp, dtype=bool).reshape(h, w)
        if frame.mask is not None:
            keep = keep & ~np.asarray(frame.mask[y0 : y0 + h, x0 : x0 + w], dtype=bool)
        good = keep[None] & np.isfinite(var) & (var >= 0)
        out[k] = np.sqrt(np.where(good, var, 0.0).sum(axis=(1, 2)))
    return out
