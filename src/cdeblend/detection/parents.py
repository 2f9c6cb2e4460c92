"""Footprints and parents: the footprints of a detection image (:func:`find_footprints`),
the :class:`Parent` type (a footprint and its peaks) and the grouping of peaks into parents
(:func:`group_peaks`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .. import _detection_cy
from .._validate import as_peaks


@dataclass
class Parent:
    """One parent: a footprint and the peaks inside it, deblended on its own.

    The one parent type: :func:`detect` and :func:`group_peaks` make them, so does the
    catalog's :func:`cdeblend.catalog.parents_from_peaks`, and
    :func:`cdeblend.deblend_catalog` takes them (or any object with ``id``, ``box``,
    ``footprint`` and ``peaks``).

    Attributes
    ----------
    id : int
        Id of the parent (1-based; from detection, its value in the label image).
    box : tuple of int
        (y0, x0, h, w) of the footprint's bounding box in the image frame.
    footprint : numpy.ndarray or None
        bool (h, w) footprint on ``box``; None means the whole box.
    peaks : numpy.ndarray
        (K, 2) int64 (y, x) peaks in the image frame (detected peaks: brightest first;
        given peaks: in the caller's order).
    peak_index : numpy.ndarray or None
        (K,) rows of these peaks in the caller's peak list (detected peaks: their order of
        detection over the whole image); None when not known.
    """

    id: int
    box: tuple[int, int, int, int]
    footprint: np.ndarray | None
    peaks: np.ndarray
    peak_index: np.ndarray | None = None

    @property
    def area(self) -> int:
        """Number of footprint pixels."""
        if self.footprint is None:
            return int(self.box[2]) * int(self.box[3])
        return int(self.footprint.sum())

    def full_footprint(self, shape: tuple[int, int]) -> np.ndarray:
        """The footprint as an (H, W) bool mask of the whole image."""
        out = np.zeros(shape, dtype=bool)
        y0, x0, h, w = self.box
        out[y0 : y0 + h, x0 : x0 + w] = True if self.footprint is None else self.footprint
        return out


def find_footprints(
    detection: np.ndarray, nsigma: float = 5.0, grow: int = 2, min_area: int = 1
) -> tuple[np.ndarray, int]:
    """Label the footprints: pixels above ``nsigma``, grown by ``grow`` pixels, 8-connected.

    Growing is a dilation by a disc of radius ``grow``, so footprints closer than about
    2 ``grow`` merge. A footprint with fewer than ``min_area`` pixels above the threshold
    is dropped (a small bump merged into a larger footprint stays part of it).

    Returns
    -------
    labels : numpy.ndarray
        (H, W) int32 label image (0: background, 1..n the footprints, in raster order).
    n : int
        Number of footprints.
    """
    if grow < 0:
        raise ValueError(f"grow must be >= 0, got {grow}")
    above = np.ascontiguousarray(detection > nsigma)
    grown = above
    if grow > 0 and above.any():
        out = np.empty(above.shape, dtype=np.uint8)
        prefix = np.empty((above.shape[0], above.shape[1] + 1), dtype=np.int32)
        _detection_cy.dilate_disc(above.view(np.uint8), grow, out, prefix)
        grown = out.view(bool)
    labels, n = ndimage.label(grown, structure=np.ones((3, 3), dtype=bool))
    if n and min_area > 1:
        core = np.bincount(labels[above], minlength=n + 1)
        keep = core >= min_area
        keep[0] = False
        if not keep[1:].all():
            # Relabel the kept footprints 1..n' in their raster order.
            new_id = np.zeros(n + 1, dtype=np.int32)
            new_id[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
            labels = new_id[labels]
            n = int(keep.sum())
    return labels.astype(np.int32, copy=False), int(n)


def group_peaks(
    peaks: np.ndarray, labels: np.ndarray, orphans: str = "own", orphan_radius: int = 2
) -> list[Parent]:
    """Group peaks into parents by the footprint label under each one.

    Parameters
    ----------
    peaks : numpy.ndarray
        (N, 2) (y, x) peaks (e.g. a catalog's), in the caller's order (kept within a parent).
    labels : numpy.ndarray
        (H, W) integer label image of the footprints (0: background).
    orphans : {"own", "drop", "raise"}
        What to do with peaks on background pixels: give each a parent of its own (a disc
        of ``orphan_radius`` around it, minus other footprints), leave them out, or raise
        ``ValueError``.
    orphan_radius : int
        Radius of an orphan's own footprint.

    Returns
    -------
    list of Parent
        Parents holding at least one peak, by increasing label; orphans' parents last.
    """
    if orphans not in ("own", "drop", "raise"):
        raise ValueError(f"orphans must be 'own', 'drop' or 'raise', got {orphans!r}")
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise TypeError(
            f"labels must be a 2-D integer label image, got {labels.dtype} {labels.shape}"
        )
    pk = as_peaks(peaks, labels.shape, "peaks")
    lab_at = labels[pk[:, 0], pk[:, 1]]
    objs = ndimage.find_objects(labels)
    parents: list[Parent] = []
    for lab in np.unique(lab_at[lab_at > 0]):
        sl = objs[lab - 1]
        box = (sl[0].start, sl[1].start, sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
        idx = np.flatnonzero(lab_at == lab)
        parents.append(Parent(int(lab), box, labels[sl] == lab, pk[idx], idx))
    orphan_idx = np.flatnonzero(lab_at == 0)
    if orphan_idx.size and orphans == "raise":
        i = int(orphan_idx[0])
        raise ValueError(f"peaks[{i}] = (y={pk[i, 0]}, x={pk[i, 1]}) lies in no footprint")
    if orphans == "own":
        parents += _orphan_parents(pk, orphan_idx, labels, int(orphan_radius))
    return parents


def _orphan_parents(
    pk: np.ndarray, orphan_idx: np.ndarray, labels: np.ndarray, r: int
) -> list[Parent]:
    """A parent for each orphan peak (on background): a disc of radius ``r`` around it, minus
    the footprints and earlier orphans' discs; an orphan inside an earlier orphan's disc joins
    that parent. Ids continue after the largest label."""
    H, W = labels.shape
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = (yy * yy + xx * xx) <= r * r
    next_id = int(labels.max()) + 1
    taken = np.zeros(labels.shape, dtype=bool)
    own: list[Parent] = []
    for i in orphan_idx:
        y, x = pk[i]
        if taken[y, x]:
            # Another orphan's disc holds this peak: join that parent (only orphans' discs
            # are taken, and they hold no footprint pixel).
            for p in own[::-1]:
                py0, px0, ph, pw = p.box
                if py0 <= y < py0 + ph and px0 <= x < px0 + pw and p.footprint[y - py0, x - px0]:
                    p.peaks = np.vstack([p.peaks, pk[i : i + 1]])
                    p.peak_index = np.append(p.peak_index, i)
                    break
            continue
        y0, x0 = max(y - r, 0), max(x - r, 0)
        y1, x1 = min(y + r + 1, H), min(x + r + 1, W)
        fp = disc[y0 - y + r : y1 - y + r, x0 - x + r : x1 - x + r].copy()
        fp &= labels[y0:y1, x0:x1] == 0
        fp &= ~taken[y0:y1, x0:x1]
        fp[y - y0, x - x0] = True
        taken[y0:y1, x0:x1] |= fp
        own.append(Parent(next_id, (y0, x0, y1 - y0, x1 - x0), fp, pk[i : i + 1], np.array([i])))
        next_id += 1
    return own
