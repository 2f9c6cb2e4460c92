"""Detection: a chi^2-style detection image, footprints above a threshold, peaks, parents.

Works for one band (H, W) or several (B, H, W). A *parent* is one footprint (a connected set
of pixels above the threshold, grown by a few pixels) with the peaks inside it; each parent
is deblended on its own. Users with their own peak list can group it into parents with
:func:`group_peaks` (or ``detect(..., peaks=...)``), and deblend a whole single-band image
with :func:`deblend_image`.

The peaks of a footprint are the objects it blends, not the pieces of one: every local
maximum is a candidate, and one that is not its footprint's brightest is kept only if, at
its saddle (where its region joins a brighter peak's), it rises ``peak_significance`` noise
sigma above the saddle, holds more than ``min_contrast`` of the brighter region's flux above
the saddle (SExtractor's ``DEBLEND_MINCONT``, on every level instead of
``DEBLEND_NTHRESH``), and lies ``min_separation`` PSF FWHM from a brighter kept peak
(:func:`find_peaks`). The defaults below were chosen on the simulations and on real HSC,
HST and ESO images together (``bench/detection.py`` prints both).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal

from . import _detection_cy
from ._validate import (
    as_float_array,
    as_peaks,
    check_psf,
    check_same_shape,
    clear_no_data,
    no_data_pixels,
)

__all__ = [
    "Parent",
    "ParentResult",
    "deblend_image",
    "detect",
    "detection_image",
    "find_footprints",
    "filter_noise",
    "find_peaks",
    "group_peaks",
]

logger = logging.getLogger("cdeblend.detection")

# An image with more than this fraction of its pixels above the threshold is almost surely not
# background-subtracted (a galaxy filling a sky-subtracted cutout stays near 0.6).
CROWDED_FRACTION = 0.9
#: Pixels an image needs before most of it above threshold means an unsubtracted sky.
MIN_FIELD_PIXELS = 4096
# Fewest pixels outside the footprints to measure the detection image's noise from.
MIN_NOISE_PIXELS = 1000

# Defaults of the peak culling (see find_peaks), chosen on the simulations and the real images
# together: bench/detection.py prints what they give.
MIN_CONTRAST = 0.005
CONTRAST_REFERENCE = "neighbour"
PEAK_SIGNIFICANCE = 2.0
MIN_SEPARATION = 0.5
PEAK_FILTER = 0.5
PEAK_NSIGMA = 3.0


@dataclass
class Parent:
    """One parent: a footprint and the peaks inside it.

    Attributes
    ----------
    id : int
        1-based label of the parent (its value in the label image).
    box : tuple of int
        (y0, x0, h, w) of the footprint's bounding box in the image frame.
    footprint : numpy.ndarray
        bool (h, w) footprint on ``box``.
    peaks : numpy.ndarray
        (K, 2) int64 (y, x) peaks in the image frame, brightest first.
    peak_index : numpy.ndarray
        (K,) rows of these peaks in the caller's peak list (detected peaks: their order of
        detection over the whole image).
    """

    id: int
    box: tuple[int, int, int, int]
    footprint: np.ndarray
    peaks: np.ndarray
    peak_index: np.ndarray

    @property
    def area(self) -> int:
        """Number of footprint pixels."""
        return int(self.footprint.sum())

    def full_footprint(self, shape: tuple[int, int]) -> np.ndarray:
        """The footprint as an (H, W) bool mask of the whole image."""
        out = np.zeros(shape, dtype=bool)
        y0, x0, h, w = self.box
        out[y0 : y0 + h, x0 : x0 + w] = self.footprint
        return out


def _as_stack(images, variance):
    """Validated (B, H, W) images and variance (a single band gets B = 1); pixels without
    data (see ``_validate.no_data_pixels``) get value 0 and variance 0."""
    images = as_float_array(images, "images", (2, 3), dtype=np.float64, finite=False)
    variance = as_float_array(variance, "variance", (2, 3), dtype=np.float64, finite=False)
    check_same_shape(images, "images", variance, "variance")
    images, variance = clear_no_data(images, variance, no_data_pixels(images, variance))
    if images.ndim == 2:
        images, variance = images[None], variance[None]
    return images, variance


def detection_image(
    images: np.ndarray,
    variance: np.ndarray,
    psf: np.ndarray | None = None,
    psf_fwhm: float | None = None,
    kernel: np.ndarray | None = None,
    filter_type: str = "matched",
) -> np.ndarray:
    """Signal-to-noise detection image, combining the bands by inverse variance.

    ``S = sum_b I_b / V_b / sqrt(sum_b 1 / V_b)``: the S/N per pixel of a flat-spectrum
    source. With a filter P (the PSF, a Gaussian of the PSF's FWHM or a given kernel) and
    ``filter_type="matched"`` the image is matched-filtered,
    ``S = (sum_b I_b / V_b) * P / sqrt((sum_b 1 / V_b) * P^2)`` (``*``: correlation), the
    S/N of a point source centred on each pixel. With ``filter_type="conv"`` it is
    smoothed as SExtractor and sep's ``filter_type="conv"`` do,
    ``S = (sum_b I_b / V_b) * p / sqrt((sum_b 1 / V_b) * p)`` with ``p = P / sum(P)``: the
    filtered image in units of the *unfiltered* pixel noise, so that a threshold of 1.5
    means SExtractor's ``DETECT_THRESH 1.5`` with ``FILTER Y``. Its own noise is then
    ``sqrt(sum p^2)`` (see :func:`filter_noise`), not 1.

    Parameters
    ----------
    images, variance : numpy.ndarray
        (B, H, W) or (H, W).
    psf : numpy.ndarray, optional
        PSF image for the filter: one (h, w) image, or (B, h, w) whose mean is used.
    psf_fwhm : float, optional
        Without ``psf``: filter with a circular Gaussian of this FWHM (pixels) instead,
        which is separable and so much cheaper.
    kernel : numpy.ndarray, optional
        Without ``psf`` and ``psf_fwhm``: filter with this (h, w) kernel of odd sides and
        positive sum (e.g. SExtractor's ``default.conv``; it is normalised here).
    filter_type : {"matched", "conv"}
        How the filtered image is scaled (see above).

    Returns
    -------
    numpy.ndarray
        (H, W) float64 detection image in units of sigma.
    """
    if filter_type not in ("matched", "conv"):
        raise ValueError(f"filter_type must be 'matched' or 'conv', got {filter_type!r}")
    num, den = _coadd(images, variance)
    return _filtered(num, den, psf, psf_fwhm, kernel, filter_type)


def _coadd(images, variance) -> tuple[np.ndarray, np.ndarray]:
    """``sum_b I_b / V_b`` and ``sum_b 1 / V_b`` of validated images."""
    images, variance = _as_stack(images, variance)
    # pixels without data (variance 0) weigh nothing; where no band has data S = 0
    ivar = np.divide(1.0, variance, out=np.zeros_like(variance), where=variance > 0)
    return np.sum(images * ivar, axis=0), np.sum(ivar, axis=0)


def _filtered(num, den, psf, psf_fwhm, kernel, filter_type) -> np.ndarray:
    """:func:`detection_image` from the coadd's two sums."""
    conv = filter_type == "conv"
    tiny = np.finfo(np.float64).tiny
    if psf is None and psf_fwhm is None and kernel is None:
        return np.divide(num, np.sqrt(den), out=np.zeros_like(num), where=den > 0)
    if psf is None and psf_fwhm is not None:
        if not (np.isfinite(psf_fwhm) and psf_fwhm > 0):
            raise ValueError(f"psf_fwhm must be finite and > 0, got {psf_fwhm}")
        # Gaussian P of width s: P^2 = G(s / sqrt 2) / (4 pi s^2), G unit-sum.
        s = psf_fwhm / 2.3548
        tmp = np.empty_like(num)
        num_f, den_f = np.empty_like(num), np.empty_like(den)
        _detection_cy.separable_smooth(num, _gauss_kernel(s), tmp, num_f)
        if conv:
            _detection_cy.separable_smooth(den, _gauss_kernel(s), tmp, den_f)
            return num_f / np.sqrt(np.maximum(den_f, tiny))
        _detection_cy.separable_smooth(den, _gauss_kernel(s / np.sqrt(2)), tmp, den_f)
        num, den = num_f, den_f / (4 * np.pi * s * s)
        return num / np.sqrt(np.maximum(den, tiny))
    if psf is not None:
        p = as_float_array(psf, "psf", (2, 3), dtype=np.float64)
        check_psf(p, "psf")
        if p.ndim == 3:
            p = p.mean(axis=0)
        # Crop the kernel to where it holds essentially all of the flux, then correlate
        # both images in one batched FFT (direct correlation with a 41 x 41 PSF costs ~10x
        # more).
        p = _crop_kernel(p)
    else:
        p = _check_kernel(kernel)
    k = p[::-1, ::-1] / p.sum()
    k2 = k if conv else k * k
    if k.size <= 25:
        # a small kernel (SExtractor's 3 x 3): direct correlation beats the FFT
        num_f = ndimage.correlate(num, p / p.sum(), mode="constant")
        den_f = ndimage.correlate(den, k2[::-1, ::-1], mode="constant")
    else:
        both = signal.fftconvolve(np.stack([num, den]), np.stack([k, k2]), mode="same", axes=(1, 2))
        num_f, den_f = both[0], both[1]
    return num_f / np.sqrt(np.maximum(den_f, tiny))


def _check_kernel(kernel) -> np.ndarray:
    """A user's filter kernel as float64 (h, w), odd sides, finite, positive sum."""
    k = as_float_array(kernel, "kernel", 2, dtype=np.float64)
    if k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
        raise ValueError(f"kernel must have odd sides, got shape {k.shape}")
    if not k.sum() > 0:
        raise ValueError(f"kernel must have a positive sum, got {k.sum()}")
    return k


def filter_noise(
    psf: np.ndarray | None = None,
    psf_fwhm: float | None = None,
    kernel: np.ndarray | None = None,
    filter_type: str = "matched",
) -> float:
    """Noise RMS of :func:`detection_image` with these filter settings, for white noise.

    1 for the unfiltered and the matched-filtered images; ``sqrt(sum p^2)`` for
    ``filter_type="conv"`` with the unit-sum filter p (``1 / (2 sqrt(pi) s)`` for a Gaussian
    of width s), which is how much smoothing lowers the noise of an image kept in the units
    of the unfiltered one.
    """
    if filter_type != "conv" or (psf is None and psf_fwhm is None and kernel is None):
        return 1.0
    if psf is None and psf_fwhm is not None:
        return float(1.0 / (2.0 * np.sqrt(np.pi) * (psf_fwhm / 2.3548)))
    p = np.asarray(psf if psf is not None else kernel, dtype=np.float64)
    if p.ndim == 3:
        p = p.mean(axis=0)
    p = p / p.sum()
    return float(np.sqrt((p * p).sum()))


def _gauss_kernel(sigma: float, truncate: float = 3.5) -> np.ndarray:
    """Unit-sum sampled Gaussian of width ``sigma``, cut at ``truncate`` sigma (as scipy's)."""
    r = max(int(truncate * sigma + 0.5), 0)
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _crop_kernel(p: np.ndarray, keep: float = 0.999) -> np.ndarray:
    """The smallest centred odd square of ``p`` holding ``keep`` of its absolute sum."""
    h, w = p.shape
    cy, cx = h // 2, w // 2
    total = np.abs(p).sum()
    for r in range(1, max(cy, cx) + 1):
        sub = p[max(cy - r, 0) : cy + r + 1, max(cx - r, 0) : cx + r + 1]
        if np.abs(sub).sum() >= keep * total:
            return sub
    return p


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
        H, W = labels.shape
        r = int(orphan_radius)
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        disc = (yy * yy + xx * xx) <= r * r
        next_id = int(labels.max()) + 1
        taken = np.zeros(labels.shape, dtype=bool)
        for i in orphan_idx:
            y, x = pk[i]
            y0, x0 = max(y - r, 0), max(x - r, 0)
            y1, x1 = min(y + r + 1, H), min(x + r + 1, W)
            fp = disc[y0 - y + r : y1 - y + r, x0 - x + r : x1 - x + r].copy()
            fp &= labels[y0:y1, x0:x1] == 0
            fp &= ~taken[y0:y1, x0:x1]
            fp[y - y0, x - x0] = True
            if taken[y, x]:
                # Another orphan's disc holds this peak: join that parent.
                for p in parents[::-1]:
                    py0, px0, ph, pw = p.box
                    if (
                        py0 <= y < py0 + ph
                        and px0 <= x < px0 + pw
                        and p.footprint[y - py0, x - px0]
                    ):
                        p.peaks = np.vstack([p.peaks, pk[i : i + 1]])
                        p.peak_index = np.append(p.peak_index, i)
                        break
                continue
            taken[y0:y1, x0:x1] |= fp
            parents.append(
                Parent(next_id, (y0, x0, y1 - y0, x1 - x0), fp, pk[i : i + 1], np.array([i]))
            )
            next_id += 1
    return parents


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
        kernel = _check_kernel(kernel)
    if filter_type not in ("matched", "conv"):
        raise ValueError(f"filter_type must be 'matched' or 'conv', got {filter_type!r}")
    num, den = _coadd(images, variance)
    det = _filtered(num, den, psf, psf_fwhm, kernel, filter_type)
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
            image = _filtered(num, den, None, width, None, "conv")
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
    from .single_band import psf_fwhm_from_moments

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
    from .single_band import (
        SingleBandConfig,
        SingleBandDeblender,
        estimate_sigma1,
        psf_fwhm_from_moments,
        split_mask,
    )

    cfg = SingleBandConfig() if config is None else config
    image = as_float_array(image, "image", 2, finite=False)
    variance = as_float_array(variance, "variance", 2, finite=False)
    check_same_shape(image, "image", variance, "variance")
    mask, no_data = split_mask(mask, image.shape, cfg)
    no_data = no_data_pixels(image, variance, no_data)
    image, variance = clear_no_data(image, variance, no_data)
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
