"""Detection: a chi^2-style detection image, footprints above a threshold, peaks, parents.

Works for one band (H, W) or several (B, H, W). A *parent* is one footprint (a connected set
of pixels above the threshold, grown by a few pixels) with the peaks inside it; each parent
is deblended on its own. Users with their own peak list can group it into parents with
:func:`group_peaks` (or ``detect(..., peaks=...)``), and deblend a whole single-band image
with :func:`deblend_image`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal

from . import _symmetric_cy
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
    "find_peaks",
    "group_peaks",
]


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
) -> np.ndarray:
    """Signal-to-noise detection image, combining the bands by inverse variance.

    ``S = sum_b I_b / V_b / sqrt(sum_b 1 / V_b)``: the S/N per pixel of a flat-spectrum
    source. With a PSF P the image is matched-filtered,
    ``S = (sum_b I_b / V_b) * P / sqrt((sum_b 1 / V_b) * P^2)`` (``*``: correlation), the
    S/N of a point source centred on each pixel.

    Parameters
    ----------
    images, variance : numpy.ndarray
        (B, H, W) or (H, W).
    psf : numpy.ndarray, optional
        PSF image for the matched filter: one (h, w) image, or (B, h, w) whose mean is used.
    psf_fwhm : float, optional
        Without ``psf``: matched-filter with a circular Gaussian of this FWHM (pixels)
        instead, which is separable and so much cheaper.

    Returns
    -------
    numpy.ndarray
        (H, W) float64 detection image in units of sigma.
    """
    images, variance = _as_stack(images, variance)
    # pixels without data (variance 0) weigh nothing; where no band has data S = 0
    ivar = np.divide(1.0, variance, out=np.zeros_like(variance), where=variance > 0)
    num = np.sum(images * ivar, axis=0)
    den = np.sum(ivar, axis=0)
    if psf is None and psf_fwhm is None:
        return np.divide(num, np.sqrt(den), out=np.zeros_like(num), where=den > 0)
    if psf is None:
        if not (np.isfinite(psf_fwhm) and psf_fwhm > 0):
            raise ValueError(f"psf_fwhm must be finite and > 0, got {psf_fwhm}")
        # Gaussian P of width s: P^2 = G(s / sqrt 2) / (4 pi s^2), G unit-sum.
        s = psf_fwhm / 2.3548
        tmp = np.empty_like(num)
        num_f, den_f = np.empty_like(num), np.empty_like(den)
        _symmetric_cy.separable_smooth(num, _gauss_kernel(s), tmp, num_f)
        _symmetric_cy.separable_smooth(den, _gauss_kernel(s / np.sqrt(2)), tmp, den_f)
        num, den = num_f, den_f / (4 * np.pi * s * s)
        return num / np.sqrt(np.maximum(den, np.finfo(np.float64).tiny))
    p = as_float_array(psf, "psf", (2, 3), dtype=np.float64)
    check_psf(p, "psf")
    if p.ndim == 3:
        p = p.mean(axis=0)
    # Crop the kernel to where it holds essentially all of the flux, then correlate both
    # images in one batched FFT (direct correlation with a 41 x 41 PSF costs ~10x more).
    p = _crop_kernel(p)
    k = p[::-1, ::-1]
    both = signal.fftconvolve(np.stack([num, den]), np.stack([k, k * k]), mode="same", axes=(1, 2))
    num, den = both[0], np.maximum(both[1], np.finfo(np.float64).tiny)
    return num / np.sqrt(den)


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
        _symmetric_cy.dilate_disc(above.view(np.uint8), grow, out, prefix)
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
    min_separation: int = 2,
    min_contrast: float = 0.0,
) -> np.ndarray:
    """Local maxima of ``detection`` inside footprints, brightest first.

    A peak is a pixel above ``nsigma`` that is the maximum of the
    (2 min_separation + 1)^2 box around it; ties on a plateau keep the first pixel in
    raster order.

    With ``min_contrast > 0`` a peak that is not the brightest of its footprint must also
    stand out from the brightest: along the straight line to the nearest brighter peak of the
    same footprint, the detection image must dip to at most ``(1 - min_contrast)`` times the
    peak's value. This drops noise bumps on the profile of a bright galaxy, which barely dip
    towards it, while close pairs of real sources, separated by a valley, stay.

    Returns
    -------
    numpy.ndarray
        (K, 2) int64 (y, x), sorted by decreasing detection value.
    """
    size = 2 * int(min_separation) + 1
    mx = ndimage.maximum_filter(detection, size=size, mode="constant", cval=-np.inf)
    cand = (detection == mx) & (detection > nsigma) & (labels > 0)
    ys, xs = np.nonzero(cand)
    # Drop plateau duplicates: a later pixel within the separation of an earlier equal one.
    keep = np.ones(ys.size, dtype=bool)
    if ys.size > 1:
        order = np.lexsort((xs, ys))
        taken = np.zeros(detection.shape, dtype=bool)
        r = int(min_separation)
        for k in order:
            y, x = ys[k], xs[k]
            if taken[max(y - r, 0) : y + r + 1, max(x - r, 0) : x + r + 1].any():
                keep[k] = False
            else:
                taken[y, x] = True
    ys, xs = ys[keep], xs[keep]
    order = np.lexsort((xs, ys, -detection[ys, xs]))
    peaks = np.stack([ys[order], xs[order]], axis=1).astype(np.int64)
    if min_contrast > 0 and len(peaks) > 1:
        peaks = peaks[_contrast_mask(detection, labels, peaks, float(min_contrast))]
    return peaks


def _contrast_mask(
    detection: np.ndarray, labels: np.ndarray, peaks: np.ndarray, min_contrast: float
) -> np.ndarray:
    """Which peaks (sorted brightest first) pass the ``min_contrast`` rule of find_peaks."""
    keep = np.ones(len(peaks), dtype=bool)
    lab = labels[peaks[:, 0], peaks[:, 1]]
    for i in range(1, len(peaks)):
        brighter = np.flatnonzero((lab[:i] == lab[i]) & keep[:i])
        if brighter.size == 0:
            continue
        d2 = ((peaks[brighter] - peaks[i]) ** 2).sum(axis=1)
        j = brighter[int(np.argmin(d2))]
        n = int(np.max(np.abs(peaks[j] - peaks[i]))) + 1
        line_y = np.rint(np.linspace(peaks[i, 0], peaks[j, 0], n)).astype(np.int64)
        line_x = np.rint(np.linspace(peaks[i, 1], peaks[j, 1], n)).astype(np.int64)
        dip = float(detection[line_y, line_x].min())
        keep[i] = dip <= (1.0 - min_contrast) * float(detection[peaks[i, 0], peaks[i, 1]])
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
    min_separation: int = 2,
    peaks: np.ndarray | None = None,
    orphans: str = "own",
    psf_fwhm: float | None = None,
    min_contrast: float = 0.0,
) -> list[Parent]:
    """Find parents (footprints with their peaks) in one or several bands.

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
        Threshold of the detection image, for footprints and peaks.
    grow : int
        Footprints are grown by this many pixels.
    min_area : int
        Footprints with fewer pixels above threshold are dropped.
    min_separation : int
        Minimum distance (Chebyshev, pixels) between detected peaks.
    peaks : numpy.ndarray, optional
        (N, 2) (y, x) peaks to use instead of detecting them; they are grouped by footprint.
    orphans : {"own", "drop", "raise"}
        What to do with given peaks outside every footprint (see :func:`group_peaks`).
    psf_fwhm : float, optional
        Without ``psf``: matched-filter with a Gaussian of this FWHM (see
        :func:`detection_image`).
    min_contrast : float
        Drop detected peaks that do not stand out from a brighter neighbour by this fraction
        of their value (see :func:`find_peaks`); 0 keeps every local maximum.

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
    det = detection_image(images, variance, psf, psf_fwhm)
    labels, _ = find_footprints(det, nsigma=nsigma, grow=grow, min_area=min_area)
    if peaks is None:
        pk = find_peaks(det, labels, nsigma=nsigma, min_separation=min_separation,
                        min_contrast=min_contrast)
        if pk.size == 0:
            return []
        return group_peaks(pk, labels, orphans="drop")
    return group_peaks(peaks, labels, orphans=orphans, orphan_radius=grow)


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
    min_separation: int = 2,
    matched_filter: bool = True,
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
    nsigma, grow, min_area, min_separation : see :func:`detect`.
    matched_filter : bool
        Detect on the image matched-filtered with a Gaussian of the PSF's FWHM (more
        sensitive to faint sources than the unfiltered image).

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
