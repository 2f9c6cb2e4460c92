"""Deblend a whole image: parents, skip rules, flags, failure isolation, executors, catalog.

:func:`deblend_catalog` takes a full image (an Observation, or arrays), cuts it into parents
(a footprint on a box plus its peaks), runs one deblender per parent on a pool of workers and
returns a catalog (one row per parent and per child) and the :class:`~cdeblend.ModelData` of
the multi-band fits.

Per parent, in this order (spec 5.2 and 5.4; the first rule that applies wins):

=========================  ===============================================================
flag                       when
=========================  ===============================================================
``skipped_isolated``       one peak and ``CatalogConfig.skip_isolated`` (the pipeline's
                           ``processSingles = False``): not fitted, kept as itself
``skipped_parent_too_big`` bounding-box area > ``max_footprint_area``, or
                           max(height, width) > ``max_footprint_size``, or
                           area x peaks > ``max_area_times_peaks`` (non-positive = off)
``skipped_masked``         masked fraction of the footprint > ``max_masked_fraction``
``skipped_too_many_peaks`` peaks > ``max_number_of_peaks`` (<= 0 = off); the whole parent
                           is skipped, not truncated
``failed``                 the deblender raised; ``error`` holds the exception class name
                           (25 characters at most). Logged on the ``cdeblend.catalog``
                           logger; every other parent is kept.
=========================  ===============================================================

``fallback`` (parents and their children): the multi-band fit raised and the parent got its
fallback model instead (:mod:`cdeblend.fallback`: a PSF model per peak, SEDs by
non-negative least squares, the image re-apportioned among them), so it still has a child
per peak; ``error`` holds the exception class name.

Any of the ``skipped_*`` flags also sets ``skipped``.

These are the catalog's only skip rules: ``SingleBandConfig`` defines rules of the same names
(``max_footprint_area``, ``max_footprint_size``, ``max_number_of_peaks``, ``mask_limits``,
``catch_failures``), and in :func:`deblend_catalog` the :class:`CatalogConfig` ones win: the
package's single-band deblender runs with its own copies switched off. A deblender that
still skips a parent by a rule of its own (``min_footprint_axis_ratio``, or any rule of a
deblender from ``deblender_factory``) or fails on it reports that in its result's flags,
and they reach the catalog unchanged: ``parent_too_big`` sets ``skipped_parent_too_big``,
``masked`` sets ``skipped_masked``, ``failed`` sets ``failed`` (``error``: the exception
class), and every parent flag it reported is in ``deblender_flags``.

No data (the package's one rule, see the notes of :class:`~cdeblend.Observation`): a pixel
with a non-finite value, a variance that is not finite and positive, or a set ``mask`` has
value 0 and weight 0 in its band; it gives no flux to any child and counts in
``masked_fraction`` (the share of a footprint's pixels without data in any band).

(LSST names: ``deblend_skipped``,
``deblend_skipped_isolatedParent``, ``deblend_skipped_parentTooBig``,
``deblend_skipped_masked``, ``deblend_skipped_tooManyPeaks``, ``deblend_failed``,
``deblend_error``; ``converged`` is the negation of the reference's
``deblend_blendConvergenceFailedFlag``.)

Catalog columns (``B`` = number of bands; children repeat their parent's fit columns):

``id, parent_id`` (-1 for a parent), ``is_parent``, ``n_peaks``, ``n_children``,
``n_components``, ``peak_id`` (index in the parent's peak list; -1 for a parent),
``peak_y, peak_x`` (image frame; a parent's first peak), ``centroid_y, centroid_x``
(flux-weighted: a child's model, a parent's positive footprint image), ``box_y0, box_x0,
box_height, box_width`` (the parent's box; -1 for children), ``flux_model (B,)`` (model
flux; for the single-band deblender the template's sum), ``flux_conserved (B,)``
(re-apportioned image; for a lone source, an isolated parent or one peak that got no child,
its footprint flux: a lone child owns all of its footprint), ``flux_footprint (B,)`` (a
parent's image summed over its footprint; NaN for children), ``flux_unassigned (B,)``
(footprint flux no child received; parents), ``masked_fraction``, ``deblender``
(``multi``, ``single`` or ``none``), ``iterations``, ``loss``, ``converged``, the flags
above, ``zero_flux`` (a child with no conserved flux), ``child_flags`` (the single-band
deblender's per-child flags, comma separated), ``deblender_flags`` (a parent's flags as its
deblender reported them) and, when a WCS is given, ``ra, dec`` (degrees, of the centroid).
Every column carries a unit (pixel positions ``pix``, fluxes the ``flux_unit`` given,
coordinates ``deg``) where it has one and a description (:data:`COLUMN_DESCRIPTIONS`); both
are written to and read back from FITS.

Rows are sorted by ``id``: the parents (their own ids, increasing), then the children,
numbered after the largest parent id in parent order (a parent's children are consecutive
rows). Results are the same whatever the executor, and bit-identical between executors
(except ``deblend_runtime``, a wall-clock time).

Uncertainties and metrics (units and descriptions in :data:`cdeblend.metrics.CATALOG_COLUMNS`):
``flux_conserved_err (B,)`` (a child's from the variance and its pixel shares; a parent's:
of ``flux_footprint``, fitted or not), ``flux_model_err (B,)`` (Fisher error of the SEDs
with the morphologies held; the single-band template amplitude's; NaN for parents), and per
child, in model space as the LSST pipeline, ``deblend_blendedness``,
``deblend_fluxOverlap``, ``deblend_fluxOverlapFraction``, ``deblend_maxOverlap``,
``deblend_dataCoverage``, ``deblend_zeroFlux`` (all (B,)), ``deblend_edgePixels``;
``chi2_reduced`` (a child's over its convolved footprint, a parent's over its data) and
``deblend_runtime`` (ms, parents and their children). The multi-band metrics are NaN for
the single-band deblender, which has no model. A source the multi-band deblender added from
the fit's residual (``DeblendConfig.residual_sources``) is a child with ``peak_id`` -1, its
own peak and ``child_flags`` ``added``.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ._validate import (
    as_float_array,
    as_no_data_mask,
    as_peaks,
    check_psf,
    check_same_shape,
    clear_no_data,
    no_data_pixels,
)
from .metrics import CATALOG_COLUMNS
from .model_data import BlendData, ModelData, SourceData
from .observation import integrated_gaussian_psf

__all__ = [
    "CatalogConfig",
    "CatalogParent",
    "ParentLike",
    "deblend_catalog",
    "parents_from_peaks",
    "read_catalog",
    "write_catalog",
]

logger = logging.getLogger("cdeblend.catalog")

#: Longest exception class name stored in the ``error`` column (as the reference).
ERROR_WIDTH = 25

_FLAGS = (
    "skipped",
    "skipped_isolated",
    "skipped_parent_too_big",
    "skipped_masked",
    "skipped_too_many_peaks",
    "failed",
)


@dataclass(frozen=True)
class CatalogConfig:
    """Settings of :func:`deblend_catalog` (pipeline defaults of spec section 6).

    Attributes
    ----------
    deblender : str
        ``"auto"`` (single band when the image has one band, multi band otherwise),
        ``"multi"`` or ``"single"``.
    skip_isolated : bool
        Do not fit parents with a single peak (flag ``skipped_isolated``); the pipeline's
        ``processSingles = False``.
    max_number_of_peaks : int
        Skip parents with more peaks (600; <= 0 turns the rule off).
    max_footprint_area : int
        Skip parents whose bounding-box area is larger (2,000,000; <= 0 off).
    max_footprint_size : int
        Skip parents whose box height or width is larger (0 = off).

        These skip rules, ``max_masked_fraction`` and ``catch_failures`` win over the
        ``SingleBandConfig`` fields of the same names (and its ``mask_limits``): in the
        catalog the single-band deblender runs with those switched off.
    max_area_times_peaks : float
        Skip parents whose box area times peak count is larger (1e9; <= 0 off).
    max_masked_fraction : float
        Skip parents whose footprint has a larger fraction of masked pixels (1.0 = off).
    catch_failures : bool
        Flag a parent whose deblender raises and go on; False re-raises.
    persist_models : bool
        Keep the multi-band models in the returned :class:`~cdeblend.ModelData`.
    persist_isolated : bool
        Also keep isolated (single-peak, not fitted) parents in the model data, as
        ``BlendData(isolated=True)`` with their footprint (the pipeline's
        ``persistIsolated``; multi-band runs only).
    store_footprints : bool
        Keep each parent's footprint with its stored model.
    model_psf_sigma : float
        Model PSF width used when the observation does not carry a model PSF.
    footprint_snr : float
        :func:`parents_from_peaks`: per-pixel S/N of the inverse-variance coadd above which
        a pixel belongs to a footprint.
    footprint_grow : int
        :func:`parents_from_peaks`: footprints are dilated by a disc of this radius.
    detection : dict or None
        Keyword arguments of :func:`cdeblend.detect` when the parents are detected (no peaks
        or parents given), e.g. ``{"nsigma": 1.5, "min_area": 5, "min_contrast": 0.005}``;
        the frame's PSFs are its matched filter unless the dict sets ``psf``.
    multi_band : object or None
        ``DeblendConfig`` handed to the multi-band deblender (None = its defaults).
    single_band : object or None
        ``SingleBandConfig`` handed to the single-band deblender (None = its defaults).
    metrics : bool
        Fill the multi-band children's flux-error and metric columns (True; on the
        simulations they cost about a quarter of a small blend's fit). False leaves them
        NaN (the parents' footprint flux errors are always filled).
    """

    deblender: str = "auto"
    skip_isolated: bool = True
    max_number_of_peaks: int = 600
    max_footprint_area: int = 2_000_000
    max_footprint_size: int = 0
    max_area_times_peaks: float = 1e9
    max_masked_fraction: float = 1.0
    catch_failures: bool = True
    persist_models: bool = True
    persist_isolated: bool = True
    store_footprints: bool = True
    model_psf_sigma: float = 0.8
    footprint_snr: float = 3.0
    footprint_grow: int = 2
    detection: Any = None
    multi_band: Any = None
    single_band: Any = None
    metrics: bool = True

    def __post_init__(self) -> None:
        if self.deblender not in ("auto", "multi", "single"):
            raise ValueError(
                f"deblender must be 'auto', 'multi' or 'single', got {self.deblender!r}"
            )
        if not 0.0 <= self.max_masked_fraction <= 1.0:
            raise ValueError(
                f"max_masked_fraction must be in [0, 1], got {self.max_masked_fraction}"
            )
        if self.footprint_grow < 0:
            raise ValueError(f"footprint_grow must be >= 0, got {self.footprint_grow}")
        if not self.model_psf_sigma > 0:
            raise ValueError(f"model_psf_sigma must be > 0, got {self.model_psf_sigma}")


class ParentLike(Protocol):
    """What :func:`deblend_catalog` needs of a parent (``detect`` returns such objects)."""

    id: int
    box: Sequence[int]  # (y0, x0, h, w) in the image frame
    footprint: np.ndarray | None  # (h, w) bool on the box; None = the whole box
    peaks: np.ndarray  # (N, 2) (y, x) in the image frame


@dataclass
class CatalogParent:
    """A minimal parent: id, box ``(y0, x0, h, w)``, footprint on the box, peaks (image frame)."""

    id: int
    box: tuple[int, int, int, int]
    footprint: np.ndarray | None
    peaks: np.ndarray


# ------------------------------------------------------------------------------------------
# the full image
# ------------------------------------------------------------------------------------------


@dataclass
class _Frame:
    images: np.ndarray  # (B, H, W)
    variance: np.ndarray  # (B, H, W)
    psfs: np.ndarray  # (B, hp, wp)
    bands: tuple[str, ...]
    weights: np.ndarray | None  # (B, H, W)
    mask: np.ndarray | None  # (H, W) bool, True = masked
    model_psf: np.ndarray  # (hm, wm)
    model_psf_sigma: float


def _as_frame(
    obs: Any,
    variance: Any,
    psf: Any,
    mask: Any,
    bands: Sequence[str] | None,
    config: CatalogConfig,
) -> _Frame:
    if isinstance(obs, (np.ndarray, list, tuple)):
        images = as_float_array(obs, "image", (2, 3), finite=False)
        if variance is None or psf is None:
            raise ValueError("variance and psf are required when an image array is passed")
        weights = None
        sigma = config.model_psf_sigma
        model_psf = None
    elif hasattr(obs, "images"):
        images = as_float_array(obs.images, "observation.images", (2, 3), finite=False)
        variance = obs.variance if variance is None else variance
        psf = getattr(obs, "psfs", None) if psf is None else psf
        if psf is None:
            raise ValueError("the observation has no psfs")
        w = getattr(obs, "weights", None)
        weights = None if w is None else as_float_array(w, "observation.weights", (2, 3))
        mask = getattr(obs, "mask", None) if mask is None else mask
        bands = getattr(obs, "bands", None) if bands is None else bands
        sigma = getattr(obs, "model_psf_sigma", config.model_psf_sigma)
        model_psf = getattr(obs, "model_psf", None)
    else:
        raise TypeError(
            "observation_or_image must be an Observation (with .images, .variance, .psfs) or "
            f"an image array, got {type(obs).__name__}"
        )
    if images.ndim == 2:
        images = images[None]
    nb = images.shape[0]
    var = as_float_array(variance, "variance", (2, 3), dtype=images.dtype, finite=False)
    var = var.reshape(images.shape) if var.size == images.size else var
    check_same_shape(images, "images", var, "variance")
    psfs = as_float_array(psf, "psf", (2, 3), dtype=images.dtype)
    if psfs.ndim == 2:
        psfs = psfs[None]
    if psfs.shape[0] != nb:
        raise ValueError(f"psf has {psfs.shape[0]} band(s), the images {nb}")
    check_psf(psfs, "psf")
    if weights is not None:
        weights = weights.reshape(images.shape) if weights.size == images.size else weights
        check_same_shape(images, "images", weights, "observation.weights")
        if np.any(weights < 0):
            raise ValueError("observation.weights has negative values; weights must be >= 0")
    # the package's one no-data rule: value 0, variance 0 and weight 0 in the band(s) where
    # a pixel has no data; the (H, W) mask marks pixels without data in any band
    bad = no_data_pixels(images, var, as_no_data_mask(mask, "mask", images.shape))
    images, var = clear_no_data(images, var, bad)
    if weights is not None and bad.any():
        weights = np.where(bad, weights.dtype.type(0), weights)
    mask2 = None if mask is None and not bad.any() else bad.any(axis=0)
    if bands is None:
        bands = tuple(str(b) for b in range(nb))
    bands = tuple(str(b) for b in bands)
    if len(bands) != nb:
        raise ValueError(f"bands has {len(bands)} names, the images {nb} bands")
    if model_psf is None:
        # PSF-matched data (sigma None) have no model PSF: a unit kernel stands for it
        model_psf = np.ones((1, 1)) if sigma is None else integrated_gaussian_psf(sigma)
    model_psf = np.asarray(model_psf)
    model_psf = model_psf.reshape(model_psf.shape[-2:])
    return _Frame(images, var, psfs, bands, weights, mask2, model_psf, sigma)


# ------------------------------------------------------------------------------------------
# parents
# ------------------------------------------------------------------------------------------


def parents_from_peaks(
    images: np.ndarray,
    variance: np.ndarray,
    peaks: Any,
    snr: float = 3.0,
    grow: int = 2,
) -> list[CatalogParent]:
    """Group a flat peak list into parents.

    A footprint is a connected (8-neighbour) region of pixels whose S/N in the
    inverse-variance coadd ``sum_b I_b / V_b / sqrt(sum_b 1 / V_b)`` is at least ``snr``,
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
    from . import _symmetric_cy

    img = as_float_array(images, "images", (2, 3), finite=False)
    var = as_float_array(variance, "variance", (2, 3), dtype=img.dtype, finite=False)
    check_same_shape(img, "images", var, "variance")
    img, var = clear_no_data(img, var, no_data_pixels(img, var))  # no data: S/N 0
    if img.ndim == 2:
        img, var = img[None], var[None]
    pk = as_peaks(peaks, img.shape[1:])
    sn = np.empty(img.shape[1:])
    _symmetric_cy.snr_coadd(img, var, sn)
    on = np.ascontiguousarray(sn >= snr)
    on[pk[:, 0], pk[:, 1]] = True
    if grow > 0:
        grown = np.empty(on.shape, dtype=np.uint8)
        prefix = np.empty((on.shape[0], on.shape[1] + 1), dtype=np.int32)
        _symmetric_cy.dilate_disc(on.view(np.uint8), int(grow), grown, prefix)
        on = grown.view(bool)
    labels = np.empty(on.shape, dtype=np.int32)
    boxes = _symmetric_cy.label_footprints(on.view(np.uint8), labels)
    peak_label = labels[pk[:, 0], pk[:, 1]]
    parents = []
    # group the peaks by footprint in one sort (stable: each parent keeps input order)
    order = np.argsort(peak_label, kind="stable")
    starts = np.searchsorted(peak_label[order], np.arange(1, len(boxes) + 2))
    for lab in np.unique(peak_label).tolist():  # labels are raster ordered
        y0, x0, h, w = boxes[lab - 1].tolist()
        parents.append(
            CatalogParent(
                id=len(parents) + 1,
                box=(y0, x0, h, w),
                footprint=labels[y0:y0 + h, x0:x0 + w] == lab,
                peaks=pk[order[starts[lab - 1]:starts[lab]]],
            )
        )
    return parents


@dataclass
class _Task:
    """One parent cut out of the full image (views; copied only to send to a cluster)."""

    index: int
    parent_id: int
    kind: str
    box: tuple[int, int, int, int]
    footprint: np.ndarray  # (h, w) bool
    peaks: np.ndarray  # (N, 2) local
    images: np.ndarray
    variance: np.ndarray
    weights: np.ndarray | None
    mask: np.ndarray | None
    psfs: np.ndarray
    bands: tuple[str, ...]
    model_psf_sigma: float | None
    noise_rms: np.ndarray | None = None  # the whole image's, as in the pipeline
    # the package's Observation of the image (PSFs, kernels, their transforms), shared by the
    # parents' observations; None with a user's observation factory
    template: Any = None


@dataclass
class _Outcome:
    """What a worker sends back for one parent."""

    index: int
    failed: bool = False
    error: str = ""
    fallback: bool = False
    iterations: int = -1
    loss: float = float("nan")
    converged: bool = False
    peak_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    peaks: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    centroids: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    flux_model: np.ndarray | None = None
    flux_conserved: np.ndarray | None = None
    n_components: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    child_flags: list[str] = field(default_factory=list)
    blend_data: BlendData | None = None
    skip_reason: str = ""  # a catalog skip flag from the deblender's own skip decision
    parent_flags: str = ""  # the deblender's parent flags, as it reported them
    # uncertainties and metrics (cdeblend.metrics); None = not available (NaN columns)
    flux_model_err: np.ndarray | None = None
    flux_conserved_err: np.ndarray | None = None
    metrics: dict[str, np.ndarray] | None = None
    chi2_reduced: float = float("nan")
    runtime: float = float("nan")


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


def _check_parents(
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
            if (fp.shape != (h, w) or pk.dtype.kind not in "iuf" or pk.ndim != 2
                    or pk.shape[1] != 2 or pk.shape[0] == 0
                    or (pks and pk.dtype != pks[0].dtype)):
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
    return [(pid, b, fp, local[a:e]) for pid, b, fp, a, e in
            zip(ids, boxes, fps, [0, *ends[:-1]], ends, strict=True)]


def _skip_reason(n_peaks: int, box: tuple, masked_fraction: float, cfg: CatalogConfig) -> str:
    area = box[2] * box[3]
    if n_peaks == 1 and cfg.skip_isolated:
        return "skipped_isolated"
    if (
        (cfg.max_footprint_area > 0 and area > cfg.max_footprint_area)
        or (cfg.max_footprint_size > 0 and max(box[2], box[3]) > cfg.max_footprint_size)
        or (cfg.max_area_times_peaks > 0 and area * n_peaks > cfg.max_area_times_peaks)
    ):
        return "skipped_parent_too_big"
    if masked_fraction > cfg.max_masked_fraction:
        return "skipped_masked"
    if cfg.max_number_of_peaks > 0 and n_peaks > cfg.max_number_of_peaks:
        return "skipped_too_many_peaks"
    return ""


# ------------------------------------------------------------------------------------------
# one parent (runs on a worker)
# ------------------------------------------------------------------------------------------


def default_deblender_factory(kind: str, config: CatalogConfig) -> Any:
    """The package's deblender for ``kind`` (``"multi"`` or ``"single"``), a new one per call."""
    import cdeblend

    if kind == "multi":
        cfg = config.multi_band if config.multi_band is not None else _default_config(kind)
        return cdeblend.Deblender(cfg)
    cfg = config.single_band if config.single_band is not None else _default_config(kind)
    return cdeblend.SingleBandDeblender(_catalog_single_band_config(cfg))


#: The single-band settings that the catalog's own skip rules replace (see CatalogConfig).
_CATALOG_RULES = {"max_footprint_area": 0, "max_footprint_size": 0, "max_number_of_peaks": 0,
                  "mask_limits": {}, "catch_failures": False}
_single_configs: dict[int, tuple[Any, Any]] = {}


def _catalog_single_band_config(cfg: Any) -> Any:
    """``cfg`` with the skip rules that :class:`CatalogConfig` also defines switched off:
    in the catalog its rules, applied before any parent is deblended, are the only ones (one
    set of skip rules), and a failure reaches the catalog's ``catch_failures``. Made once
    per config (validating a config per parent would cost as much as the factory)."""
    hit = _single_configs.get(id(cfg))
    if hit is None or hit[0] is not cfg:
        if len(_single_configs) > 32:
            _single_configs.clear()
        hit = (cfg, dataclasses.replace(cfg, **_CATALOG_RULES))
        _single_configs[id(cfg)] = hit
    return hit[1]


@functools.cache
def _default_config(kind: str) -> Any:
    """The default ``DeblendConfig`` or ``SingleBandConfig``, made once: they are frozen, and
    validating a new one for every parent costs as much as the rest of the factory."""
    import cdeblend

    return cdeblend.DeblendConfig() if kind == "multi" else cdeblend.SingleBandConfig()


def _default_observation_factory(*args: Any, **kwargs: Any) -> Any:
    import cdeblend

    return cdeblend.Observation(*args, **kwargs)


def _flag_names(flags: Any) -> str:
    if flags is None:
        return ""
    if isinstance(flags, str):
        return flags
    if isinstance(flags, dict):
        names = [str(k) for k, v in flags.items() if v]
    elif isinstance(flags, (set, frozenset, list, tuple)):
        names = [str(k) for k in flags]
    else:
        return str(flags)
    return ",".join(sorted(names))


def _centroid(img: np.ndarray, y0: int, x0: int) -> tuple[float, float]:
    """Flux-weighted centroid of the positive part of a (h, w) image placed at (y0, x0)."""
    pos = np.maximum(np.asarray(img, dtype=np.float64), 0.0)
    tot = pos.sum()
    if not tot > 0:
        return float("nan"), float("nan")
    ys = y0 + np.arange(pos.shape[0])
    xs = x0 + np.arange(pos.shape[1])
    return float(ys @ pos.sum(axis=1) / tot), float(pos.sum(axis=0) @ xs / tot)


def _summarize_multi(res: Any, task: _Task, cfg: CatalogConfig) -> _Outcome:
    y0, x0, h, w = task.box
    sources = list(res.blend.sources)
    n = len(sources)
    nb = len(task.bands)
    bd = ModelData.from_blend(
        res,
        task.parent_id,
        (y0, x0),
        shape=(h, w),
        bands=task.bands,
        footprint=task.footprint.copy() if cfg.store_footprints else None,
    )
    # a source's peak is its peak_id when it carries one, else its position in the list
    peak_id = np.array([s.peak_id for s in bd.sources], dtype=np.int64)
    fallback = bool(getattr(res, "fallback", False))
    if fallback:
        logger.warning("fit of parent %s failed (%s); kept its fallback model", task.parent_id,
                       getattr(res, "error", ""))
    peaks, peak_id, flags = _added_sources(res, sources, task.peaks, peak_id)
    extra = _multi_errors_and_metrics(res, n, nb) if cfg.metrics else {}
    return _Outcome(
        index=task.index,
        fallback=fallback,
        error=str(getattr(res, "error", "")).split(":")[0][:ERROR_WIDTH] if fallback else "",
        iterations=int(getattr(res, "iterations", -1)),
        loss=float(getattr(res, "loss", np.nan)),
        converged=bool(getattr(res, "converged", False)),
        peak_id=peak_id,
        peaks=peaks + (y0, x0),
        centroids=bd.centroids(),
        flux_model=np.asarray(res.fluxes, dtype=np.float64).reshape(n, nb),
        flux_conserved=np.asarray(res.conserved_fluxes, dtype=np.float64).reshape(n, nb),
        n_components=np.array([len(s.components) for s in sources], dtype=np.int64),
        child_flags=flags,
        blend_data=bd if cfg.persist_models else None,
        **extra,
    )


def _added_sources(res: Any, sources: list, peaks: np.ndarray,
                   peak_id: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Local peaks, peak ids and child flags of a result's sources: a source added after
    detection (``DeblendResult.added``, e.g. from the residual) has its own peak, peak id
    -1 and the flag ``added``."""
    added = getattr(res, "added", None)
    added = np.zeros(len(sources), bool) if added is None else np.asarray(added, bool)
    if not added.any():
        return peaks[peak_id], peak_id, [""] * len(sources)
    local = peaks[np.where(added, 0, peak_id)]
    local[added] = [sources[i].peak for i in np.flatnonzero(added)]
    return local, np.where(added, -1, peak_id), ["added" if a else "" for a in added]


def _multi_errors_and_metrics(res: Any, n: int, nb: int) -> dict[str, Any]:
    """The flux errors and metrics of a multi-band result, as :class:`_Outcome` fields
    (none for a result of another deblender that lacks them)."""
    if not hasattr(res, "metrics"):
        return {}
    m = res.metrics()
    return dict(
        flux_model_err=np.asarray(res.flux_err, dtype=np.float64).reshape(n, nb),
        flux_conserved_err=np.asarray(res.conserved_flux_err, dtype=np.float64).reshape(n, nb),
        metrics={
            "deblend_blendedness": m.blendedness,
            "deblend_fluxOverlap": m.flux_overlap,
            "deblend_fluxOverlapFraction": m.flux_overlap_fraction,
            "deblend_maxOverlap": m.max_overlap,
            "deblend_dataCoverage": m.data_coverage,
            "deblend_edgePixels": m.edge_pixels,
            "deblend_zeroFlux": m.zero_flux,
            "chi2_reduced": m.chi2_reduced,
        },
        chi2_reduced=m.parent_chi2_reduced,
        runtime=1e3 * m.runtime,
    )


#: The single-band deblender's parent flags that skip a parent, as catalog flags.
_SINGLE_SKIPS = {"parent_too_big": "skipped_parent_too_big", "masked": "skipped_masked"}


def _single_flags(res: Any, task: _Task) -> _Outcome | None:
    """The outcome of a parent that the single-band deblender skipped or on which it failed
    (its own flags, as the catalog's), else None."""
    flags = getattr(res, "flags", None) or frozenset()
    names = _flag_names(flags)
    if "failed" in flags:
        error = str(getattr(res, "error", "") or "failed")
        name = error.split(":", 1)[0][:ERROR_WIDTH]
        logger.warning("deblending parent %s failed: %s", task.parent_id, error)
        return _Outcome(index=task.index, failed=True, error=name, parent_flags=names)
    for flag, reason in _SINGLE_SKIPS.items():
        if flag in flags:
            return _Outcome(index=task.index, skip_reason=reason, parent_flags=names)
    return None


def _summarize_single(res: Any, task: _Task) -> _Outcome:
    y0, x0, h, w = task.box
    flagged = _single_flags(res, task)
    if flagged is not None:
        return flagged
    children = list(res.children)
    n = len(children)
    dense = None
    peaks, peak_id, cents = [], [], []
    f_model = np.full((n, 1), np.nan)
    f_cons = np.zeros((n, 1))
    e_model = np.array([getattr(ch, "template_flux_err", np.nan) for ch in children],
                       dtype=np.float64).reshape(n, 1)
    e_cons = np.array([getattr(ch, "flux_err", np.nan) for ch in children],
                      dtype=np.float64).reshape(n, 1)
    for i, ch in enumerate(children):
        py, px = (int(v) for v in ch.peak)
        match = np.flatnonzero((task.peaks[:, 0] == py) & (task.peaks[:, 1] == px))
        peak_id.append(int(match[0]) if len(match) else -1)
        peaks.append((py + y0, px + x0))
        cons = getattr(ch, "conserved", None)
        cbox = getattr(ch, "box", None)
        cons = None if cons is None else np.asarray(cons)
        if cons is not None and cbox is not None and cons.shape == tuple(cbox[2:]):
            img, by, bx = cons, int(cbox[0]), int(cbox[1])
        else:  # fall back on the dense children
            if dense is None:
                dense = np.asarray(res.conserved_images())
            img, by, bx = dense[i], 0, 0
        f_cons[i, 0] = float(np.sum(img, dtype=np.float64))
        cents.append(_centroid(img, by + y0, bx + x0))
        tmpl = getattr(ch, "template", None)
        if tmpl is not None:
            f_model[i, 0] = float(np.sum(np.asarray(tmpl), dtype=np.float64))
    return _Outcome(
        index=task.index,
        iterations=0,
        loss=float("nan"),
        converged=True,
        peak_id=np.array(peak_id, dtype=np.int64),
        peaks=np.array(peaks, dtype=np.int64).reshape(-1, 2),
        centroids=np.array(cents, dtype=np.float64).reshape(-1, 2),
        flux_model=f_model,
        flux_conserved=f_cons,
        n_components=np.ones(n, dtype=np.int64),
        child_flags=[_flag_names(getattr(ch, "flags", None)) for ch in children],
        parent_flags=_flag_names(getattr(res, "flags", None)),
        flux_model_err=e_model,
        flux_conserved_err=e_cons,
        metrics={"deblend_zeroFlux": f_cons == 0},
    )


def _parent_arrays(task: _Task) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A parent's C-contiguous images, variance and weights, in one kernel pass.

    The weights are the inverse variance where the variance is positive (or the
    observation's weights), times the footprint, in the images' dtype; pixels without data
    have variance 0 (and weight 0) in their band already (:func:`_as_frame`). One
    call instead of a few numpy calls, each of which would hand the GIL to the other
    workers for a few microseconds (see ``_gil.pxi``).
    """
    from . import _symmetric_cy

    out = np.empty((3, *task.images.shape), dtype=task.images.dtype)
    source, inverse = (task.variance, True) if task.weights is None else (task.weights, False)
    _symmetric_cy.parent_arrays(task.images, task.variance, source, inverse,
                                task.footprint.view(np.uint8), None, out[0], out[1], out[2])
    return out[0], out[1], out[2]


def _deblend_task(
    task: _Task,
    factory: Callable[[str, CatalogConfig], Any],
    obs_factory: Callable[..., Any],
    cfg: CatalogConfig,
) -> _Outcome:
    """Deblend one parent; a failure becomes a flagged outcome (or is re-raised)."""
    try:
        deb = factory(task.kind, cfg)
        fp = task.footprint
        if task.kind == "multi":
            images, variance, weights = _parent_arrays(task)
            if task.template is not None:  # the image was validated once: no checks here
                obs = task.template._on_arrays(images, variance, weights,
                                               noise_rms=task.template.noise_rms)
            else:
                extra = {} if task.noise_rms is None else {"noise_rms": task.noise_rms}
                obs = obs_factory(
                    task.images,
                    task.variance,
                    task.psfs,
                    bands=task.bands,
                    weights=weights,
                    model_psf_sigma=task.model_psf_sigma,
                    **extra,
                )
            return _summarize_multi(deb.deblend(obs, task.peaks), task, cfg)
        res = deb.deblend(
            task.images[0], task.variance[0], task.psfs[0], task.peaks, footprint=fp,
            mask=task.mask,
        )
        return _summarize_single(res, task)
    except Exception as exc:
        if not cfg.catch_failures:
            raise
        name = type(exc).__name__[:ERROR_WIDTH]
        logger.warning("deblending parent %s failed: %s: %s", task.parent_id, name, exc)
        logger.debug("traceback of parent %s", task.parent_id, exc_info=True)
        return _Outcome(index=task.index, failed=True, error=name)


# ------------------------------------------------------------------------------------------
# executors
# ------------------------------------------------------------------------------------------


def _progress_bar(total: int, enabled: bool) -> Any:
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc="deblend", unit="parent")
        except ImportError:
            logger.debug("tqdm is not installed (pip install cdeblend[progress]); no progress bar")

    class _NoBar:
        def update(self, n: int = 1) -> None:
            pass

        def close(self) -> None:
            pass

    return _NoBar()


def _usable_cpus() -> int:
    """Cores this process may run on (its affinity mask where the OS reports one)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def _is_client(executor: Any) -> bool:
    return hasattr(executor, "submit") and hasattr(executor, "gather") and hasattr(
        executor, "scheduler_info"
    )


def _materialize(task: _Task) -> _Task:
    # send only the cut-out to a remote worker, not the whole image behind the views
    def cp(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.ascontiguousarray(a).copy()

    return _Task(
        task.index, task.parent_id, task.kind, task.box, cp(task.footprint), cp(task.peaks),
        cp(task.images), cp(task.variance), cp(task.weights), cp(task.mask), task.psfs,
        task.bands, task.model_psf_sigma, task.noise_rms, task.template,
    )


def _largest_first(tasks: list[_Task]) -> list[int]:
    """Task indices, most expensive first (box area x peaks; ties keep parent order).

    A pool finishes no earlier than its longest task: started last, one big parent would
    leave the other workers idle at the end (a field's largest parent is often a large
    share of the total), so the big ones are submitted first. Results are assembled by
    index, so the order does not change them.
    """
    cost = [-(t.box[2] * t.box[3]) * max(len(t.peaks), 1) for t in tasks]
    return sorted(range(len(tasks)), key=cost.__getitem__)


def _run_tasks(
    tasks: list[_Task], fn: Callable[[_Task], _Outcome], executor: Any, max_workers: int | None,
    progress: bool,
) -> list[_Outcome]:
    out: list[_Outcome | None] = [None] * len(tasks)
    bar = _progress_bar(len(tasks), progress and len(tasks) > 0)
    try:
        if not tasks:
            return []
        if executor == "serial":
            for k, t in enumerate(tasks):
                out[k] = fn(t)
                bar.update(1)
        elif executor == "threads" or isinstance(executor, cf.Executor):
            own = executor == "threads"
            # one thread per usable core: more only queue up for the GIL between kernels
            pool = (cf.ThreadPoolExecutor(max_workers=max_workers or _usable_cpus()) if own
                    else executor)
            futs: dict[cf.Future, int] = {}
            try:
                for k in _largest_first(tasks):
                    futs[pool.submit(fn, tasks[k])] = k
                for f in cf.as_completed(futs):
                    out[futs[f]] = f.result()
                    bar.update(1)
            except BaseException:
                for f in futs:
                    f.cancel()
                raise
            finally:
                if own:
                    pool.shutdown(wait=True)
        elif executor == "dask" or _is_client(executor):
            client = executor if _is_client(executor) else _current_client()
            if client is None:
                import dask
                from dask import delayed

                res = dask.compute(
                    *[delayed(fn, pure=False)(t) for t in tasks],
                    scheduler="threads",
                    num_workers=max_workers,
                )
                out = list(res)
                bar.update(len(tasks))
            else:
                from distributed import as_completed

                order = _largest_first(tasks)
                futs = [client.submit(fn, _materialize(tasks[k]), pure=False) for k in order]
                index = {f.key: k for k, f in zip(order, futs, strict=True)}
                for f in as_completed(futs):
                    out[index[f.key]] = f.result()
                    bar.update(1)
        else:  # pragma: no cover - rejected by _check_executor
            raise ValueError(f"unknown executor {executor!r}")
    finally:
        bar.close()
    return out  # type: ignore[return-value]


def _current_client() -> Any:
    try:
        from distributed import get_client
    except ImportError:
        try:
            import dask  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                "executor='dask' needs dask: pip install cdeblend[dask]"
            ) from exc
        return None
    try:
        return get_client()
    except ValueError:  # no client running: the threaded dask scheduler
        return None


def _check_executor(executor: Any, max_workers: int | None) -> None:
    if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
        raise ValueError(f"max_workers must be a positive integer or None, got {max_workers!r}")
    if isinstance(executor, str):
        if executor not in ("serial", "threads", "dask"):
            raise ValueError(
                f"executor must be 'serial', 'threads', 'dask', a concurrent.futures Executor "
                f"or a distributed.Client, got {executor!r}"
            )
        return
    if not (isinstance(executor, cf.Executor) or _is_client(executor)):
        raise TypeError(
            "executor must be 'serial', 'threads', 'dask', a concurrent.futures Executor or a "
            f"distributed.Client, got {type(executor).__name__}"
        )


# ------------------------------------------------------------------------------------------
# catalog
# ------------------------------------------------------------------------------------------


def _catalog_dtype(nb: int, flag_width: int, parent_flag_width: int = 1) -> np.dtype:
    return np.dtype(
        [
            ("id", "i8"),
            ("parent_id", "i8"),
            ("is_parent", "?"),
            ("n_peaks", "i4"),
            ("n_children", "i4"),
            ("n_components", "i4"),
            ("peak_id", "i4"),
            ("peak_y", "i8"),
            ("peak_x", "i8"),
            ("centroid_y", "f8"),
            ("centroid_x", "f8"),
            ("box_y0", "i8"),
            ("box_x0", "i8"),
            ("box_height", "i8"),
            ("box_width", "i8"),
            ("flux_model", "f8", (nb,)),
            ("flux_conserved", "f8", (nb,)),
            ("flux_footprint", "f8", (nb,)),
            ("flux_unassigned", "f8", (nb,)),
            ("flux_conserved_err", "f8", (nb,)),
            ("flux_model_err", "f8", (nb,)),
            ("masked_fraction", "f8"),
            ("deblender", "U6"),
            ("iterations", "i4"),
            ("loss", "f8"),
            ("converged", "?"),
            *[(f, "?") for f in _FLAGS],
            ("error", f"U{ERROR_WIDTH}"),
            ("fallback", "?"),
            ("zero_flux", "?"),
            ("child_flags", f"U{max(flag_width, 1)}"),
            ("deblender_flags", f"U{max(parent_flag_width, 1)}"),
            *[(name, "f8", (nb,)) for name in _BAND_METRICS],
            ("deblend_zeroFlux", "?", (nb,)),
            ("deblend_edgePixels", "?"),
            ("chi2_reduced", "f8"),
            ("deblend_runtime", "f8"),
        ]
    )


#: Per-band float metrics of the children (cdeblend.metrics), NaN where not computed.
_BAND_METRICS = (
    "deblend_blendedness",
    "deblend_fluxOverlap",
    "deblend_fluxOverlapFraction",
    "deblend_maxOverlap",
    "deblend_dataCoverage",
)


@dataclass
class _ParentStats:
    """Footprint statistics of every parent (:func:`_parent_stats`)."""

    flux: np.ndarray  # (P, B) each band summed over the footprint
    centroid: np.ndarray  # (P, 2) (y, x) of the positive band-summed image, NaN if none
    masked_fraction: np.ndarray  # (P,) masked share of the footprint's pixels
    flux_err: np.ndarray | None = None  # (P, B) standard deviation of ``flux``


def _parent_stats(frame: _Frame, boxes: np.ndarray, footprints: list[np.ndarray]) -> _ParentStats:
    """Footprint flux, centroid and masked fraction of every parent, in one kernel call.

    One pass over the parents' pixels instead of a few numpy calls per parent; the flux is
    summed in double, row by row (numpy sums pairwise: the last bits may differ).
    """
    from . import _symmetric_cy

    P, nb = len(footprints), frame.images.shape[0]
    flux = np.empty((P, nb))
    centroid = np.empty((P, 2))
    counts = np.empty((P, 2), dtype=np.int64)
    flat = np.concatenate([fp.reshape(-1) for fp in footprints]) if P else np.zeros(0, bool)
    mask = None if frame.mask is None else np.ascontiguousarray(frame.mask).view(np.uint8)
    _symmetric_cy.parent_stats(frame.images, boxes, flat.view(np.uint8), mask, flux, centroid,
                               counts)
    # the division of Python's float(masked) / max(pixels, 1), in bulk
    return _ParentStats(flux, centroid, counts[:, 1] / np.maximum(counts[:, 0], 1))


def _footprint_flux_err(frame: _Frame, boxes: np.ndarray,
                        footprints: list[np.ndarray]) -> np.ndarray:
    """(P, B) standard deviation of each parent's footprint flux: the variance summed over
    its unmasked footprint pixels (non-finite or negative variance counts as no data)."""
    nb = frame.images.shape[0]
    out = np.zeros((len(footprints), nb))
    for k, fp in enumerate(footprints):
        y0, x0, h, w = (int(v) for v in boxes[k])
        var = np.asarray(frame.variance[:, y0:y0 + h, x0:x0 + w], dtype=np.float64)
        keep = np.asarray(fp, dtype=bool).reshape(h, w)
        if frame.mask is not None:
            keep = keep & ~np.asarray(frame.mask[y0:y0 + h, x0:x0 + w], dtype=bool)
        good = keep[None] & np.isfinite(var) & (var >= 0)
        out[k] = np.sqrt(np.where(good, var, 0.0).sum(axis=(1, 2)))
    return out


def _assemble(
    checked: list[tuple[Any, tuple, np.ndarray, np.ndarray]],
    ids: list[int],
    boxes: np.ndarray,
    stats: _ParentStats,
    reasons: list[str],
    outcomes: dict[int, _Outcome],
    kind: str,
    nb: int,
) -> np.ndarray:
    """The catalog rows: each parent followed by its children, in parent order.

    Filled column by column, one numpy call per column rather than per row and column;
    children are numbered after the largest parent id.
    """
    P = len(checked)
    fitted = [k for k in range(P) if not reasons[k]]
    done = [k for k in fitted if not outcomes[k].failed]
    failed = [k for k in fitted if outcomes[k].failed]
    outs = [outcomes[k] for k in done]
    n_kids = np.zeros(P, dtype=np.int64)
    n_kids[done] = [len(o.peak_id) for o in outs]
    flag_width = max([len(s) for o in outs for s in o.child_flags] + [1])
    ran = sorted(outcomes)  # the parents a deblender saw (it may have skipped some itself)
    pflags = [outcomes[k].parent_flags for k in ran]
    prow = np.arange(P) + np.cumsum(n_kids) - n_kids  # row of each parent
    cat = np.zeros(P + int(n_kids.sum()),
                   dtype=_catalog_dtype(nb, flag_width, max([len(f) for f in pflags] + [1])))

    def fill(rows: Any, **columns: Any) -> None:
        for name, values in columns.items():
            cat[name][rows] = values

    first = np.array([c[3][0] for c in checked], dtype=np.int64).reshape(-1, 2) + boxes[:, :2]
    fill(
        prow, id=ids, parent_id=-1, is_parent=True, n_peaks=[len(c[3]) for c in checked],
        peak_id=-1, peak_y=first[:, 0], peak_x=first[:, 1], centroid_y=stats.centroid[:, 0],
        centroid_x=stats.centroid[:, 1], box_y0=boxes[:, 0], box_x0=boxes[:, 1],
        box_height=boxes[:, 2], box_width=boxes[:, 3], flux_model=np.nan,
        flux_conserved=np.nan, flux_footprint=stats.flux, flux_unassigned=np.nan,
        masked_fraction=stats.masked_fraction, deblender="none", iterations=-1, loss=np.nan,
        skipped=[bool(r) for r in reasons],
        flux_conserved_err=np.nan if stats.flux_err is None else stats.flux_err,
        flux_model_err=np.nan, chi2_reduced=np.nan, deblend_runtime=np.nan,
        **{name: np.nan for name in _BAND_METRICS},
    )
    for flag in (f for f in _FLAGS if f.startswith("skipped_")):
        fill(prow, **{flag: [r == flag for r in reasons]})
    fill(prow[ran], deblender=kind, deblender_flags=pflags)
    fill(prow[failed], failed=True, error=[outcomes[k].error for k in failed])
    # a lone source (isolated, or one peak and no child) owns all of its footprint's flux
    lone = [k for k in range(P) if reasons[k] == "skipped_isolated"]
    fill(prow[lone], flux_conserved=stats.flux[lone], flux_unassigned=0.0)
    if not outs:
        return cat
    # per-parent sums of the children, each as before (bit-identical)
    f_cons = np.array([o.flux_conserved.sum(axis=0) for o in outs]).reshape(-1, nb)
    fill(
        prow[done], n_children=n_kids[done],
        n_components=[int(o.n_components.sum()) for o in outs],
        iterations=[o.iterations for o in outs], loss=[o.loss for o in outs],
        converged=[o.converged for o in outs],
        fallback=[o.fallback for o in outs], error=[o.error for o in outs],
        flux_model=np.array([o.flux_model.sum(axis=0) for o in outs]).reshape(-1, nb),
        flux_conserved=f_cons, flux_unassigned=stats.flux[done] - f_cons,
        chi2_reduced=[o.chi2_reduced for o in outs], deblend_runtime=[o.runtime for o in outs],
    )
    lone = [k for k in done if n_kids[k] == 0 and len(checked[k][3]) == 1
            and not outcomes[k].parent_flags]
    fill(prow[lone], flux_conserved=stats.flux[lone], flux_unassigned=0.0)

    # the children: every row that is not a parent's, in parent order
    kid = np.ones(len(cat), dtype=bool)
    kid[prow] = False
    krow = np.flatnonzero(kid)
    n = n_kids[done]
    next_id = (max(ids) if ids else 0) + 1
    peaks = np.concatenate([o.peaks for o in outs])
    cents = np.concatenate([o.centroids for o in outs])
    cons = np.concatenate([o.flux_conserved for o in outs])
    fill(
        krow, id=np.arange(next_id, next_id + len(krow)),
        parent_id=np.repeat(np.array(ids, dtype=np.int64)[done], n), n_peaks=1,
        n_components=np.concatenate([o.n_components for o in outs]),
        peak_id=np.concatenate([o.peak_id for o in outs]), peak_y=peaks[:, 0],
        peak_x=peaks[:, 1], centroid_y=cents[:, 0], centroid_x=cents[:, 1], box_y0=-1,
        box_x0=-1, box_height=-1, box_width=-1,
        flux_model=np.concatenate([o.flux_model for o in outs]), flux_conserved=cons,
        flux_footprint=np.nan, flux_unassigned=np.nan,
        masked_fraction=np.repeat(stats.masked_fraction[done], n), deblender=kind,
        iterations=np.repeat([o.iterations for o in outs], n),
        loss=np.repeat([o.loss for o in outs], n),
        converged=np.repeat([o.converged for o in outs], n),
        fallback=np.repeat([o.fallback for o in outs], n),
        zero_flux=np.all(cons == 0, axis=1),
        child_flags=[s for o in outs for s in o.child_flags],
        deblend_runtime=np.repeat([o.runtime for o in outs], n),
    )
    _fill_child_errors_and_metrics(cat, krow, outs, nb)
    return cat


def _fill_child_errors_and_metrics(cat: np.ndarray, krow: np.ndarray, outs: list[_Outcome],
                                   nb: int) -> None:
    """The children's flux errors and metrics columns (NaN where a deblender has none)."""
    def stacked(get: Callable[[_Outcome, int], Any], shape: tuple, fill: Any) -> np.ndarray:
        parts = []
        for o in outs:
            n = len(o.peak_id)
            v = get(o, n)
            parts.append(np.full((n, *shape), fill) if v is None else
                         np.asarray(v).reshape(n, *shape))
        return np.concatenate(parts) if parts else np.zeros((0, *shape))

    cat["flux_conserved_err"][krow] = stacked(lambda o, n: o.flux_conserved_err, (nb,), np.nan)
    cat["flux_model_err"][krow] = stacked(lambda o, n: o.flux_model_err, (nb,), np.nan)
    def metric(name: str) -> Callable[[_Outcome, int], Any]:
        return lambda o, n: None if o.metrics is None else o.metrics.get(name)

    for name in _BAND_METRICS:
        cat[name][krow] = stacked(metric(name), (nb,), np.nan)
    cat["deblend_zeroFlux"][krow] = stacked(metric("deblend_zeroFlux"), (nb,), False)
    cat["deblend_edgePixels"][krow] = stacked(metric("deblend_edgePixels"), (), False)
    cat["chi2_reduced"][krow] = stacked(metric("chi2_reduced"), (), np.nan)


def _collect_models(
    model: ModelData,
    checked: list[tuple[Any, tuple, np.ndarray, np.ndarray]],
    reasons: list[str],
    outcomes: dict[int, _Outcome],
    next_id: int,
    kind: str,
    cfg: CatalogConfig,
) -> None:
    """Put the fitted (and isolated) parents' models in ``model.blends``, in parent order,
    with the children's catalog ids (numbered from ``next_id`` as by :func:`_assemble`)."""
    persist_isolated = kind == "multi" and cfg.persist_models and cfg.persist_isolated
    for k, (pid, box, fp, _) in enumerate(checked):
        if reasons[k] == "skipped_isolated" and persist_isolated:
            model.blends[int(pid)] = BlendData(
                parent_id=int(pid),
                box=box,
                bands=model.bands,
                sources=[SourceData(int(pid), 0, [])],
                footprint=fp.copy(),
                isolated=True,
            )
        if reasons[k] or outcomes[k].failed:
            continue
        o = outcomes[k]
        n = len(o.peak_id)
        if o.blend_data is not None:
            for s, cid in zip(o.blend_data.sources, range(next_id, next_id + n), strict=True):
                s.id = cid
            model.blends[int(pid)] = o.blend_data
        next_id += n


def deblend_catalog(
    observation_or_image: Any,
    peaks: Any = None,
    parents: Sequence[ParentLike] | None = None,
    config: CatalogConfig | None = None,
    executor: Any = "threads",
    progress: bool = True,
    max_workers: int | None = None,
    *,
    variance: Any = None,
    psf: Any = None,
    mask: Any = None,
    bands: Sequence[str] | None = None,
    deblender_factory: Callable[[str, CatalogConfig], Any] | None = None,
    observation_factory: Callable[..., Any] | None = None,
    wcs: Any = None,
    flux_unit: Any = None,
) -> tuple[Any, ModelData]:
    """Deblend every parent of an image and build the catalog and the model data.

    Parameters
    ----------
    observation_or_image : Observation or numpy.ndarray
        The full image: an Observation (``.images``, ``.variance``, ``.psfs`` and optionally
        ``.weights``, ``.mask``, ``.bands``, ``.model_psf``), or a (B, H, W) / (H, W) array
        with ``variance`` and ``psf`` given as keywords.
    peaks : array_like, optional
        (N, 2) (y, x) flat peak list; grouped into parents by :func:`parents_from_peaks`.
    parents : sequence, optional
        Parents with ``.id``, ``.box`` (y0, x0, h, w), ``.footprint`` ((h, w) bool or None)
        and ``.peaks`` ((N, 2) (y, x) in the image frame). Without peaks or parents,
        ``cdeblend.detect(images, variance)`` finds them.
    config : CatalogConfig, optional
        Skip rules, deblender choice and their configurations.
    executor : str, concurrent.futures.Executor or distributed.Client
        ``"serial"``, ``"threads"`` (default: a pool of one thread per usable core, which
        also computes the image's noise level and the shared PSF kernels while the parents
        are found; the fits run without the GIL), ``"dask"`` (the running distributed
        client, else dask's threaded scheduler), an Executor, or a Client. Parents are
        submitted largest first. On 2 cores bench/threads.py measured 1.6-1.7x over serial
        with threads and 1.4x with a warm
        ``ProcessPoolExecutor(mp_context=multiprocessing.get_context("spawn"))``, with
        identical results (a process pool costs about a second to start).
    progress : bool
        Show a tqdm progress bar when tqdm is installed.
    max_workers : int, optional
        Threads for ``"threads"`` (default: the cores this process may use) and for
        ``"dask"`` without a client (default: dask's).
    variance, psf : array_like, optional
        (B, H, W) variance and (B, hp, wp) PSFs when an image array is passed (or to override
        the observation's).
    mask : array_like, optional
        (H, W) or (B, H, W) no-data mask: bool (True = no data) or integer (non-zero = no
        data). Pixels without data (also non-finite values and variance that is not finite
        and positive) have zero weight, give no flux to any child and count in
        ``masked_fraction`` (``skipped_masked``). Default: the observation's ``mask``.
    bands : sequence of str, optional
        Band names (default: the observation's, else "0", "1", ...).
    deblender_factory : callable, optional
        ``factory(kind, config) -> deblender``, called once per parent with ``kind`` in
        ``{"multi", "single"}``; default: ``cdeblend.Deblender`` / ``SingleBandDeblender``.
    observation_factory : callable, optional
        Builds the multi-band deblender's observation of a parent:
        ``factory(images, variance, psfs, bands=, weights=, model_psf_sigma=)``; default
        ``cdeblend.Observation``.
    wcs : astropy.wcs.WCS, optional
        The images' WCS (0-based pixels, as the catalog's): adds ``ra`` and ``dec`` columns
        (degrees) at each row's centroid.
    flux_unit : str or astropy.units.Unit, optional
        The images' unit (e.g. a FITS ``BUNIT``), given to the flux columns.

    Returns
    -------
    catalog : astropy.table.Table or numpy.ndarray
        One row per parent, then one per child, sorted by id (a structured array
        when astropy is not installed). Columns in the module docstring.
    model_data : ModelData
        The multi-band models of the fitted parents (empty for the single-band deblender).
    """
    cfg = CatalogConfig() if config is None else config
    if not isinstance(cfg, CatalogConfig):
        raise TypeError(f"config must be a CatalogConfig, got {type(cfg).__name__}")
    _check_executor(executor, max_workers)
    celestial = _celestial(wcs)
    if peaks is not None and parents is not None:
        raise ValueError("give either peaks or parents, not both")
    frame = _as_frame(observation_or_image, variance, psf, mask, bands, cfg)
    nb, H, W = frame.images.shape
    kind = {"auto": "single" if nb == 1 else "multi"}.get(cfg.deblender, cfg.deblender)
    if kind == "single" and nb != 1:
        raise ValueError(f"the single-band deblender needs one band, the images have {nb}")

    # The noise level that sets the fit's thresholds is the whole image's (spec 5.1), not
    # each parent's cut-out's; only the package's own Observation takes it. It (a pass over
    # every pixel of the variance) and the shared template observation do not depend on the
    # parents: with its own thread pool the catalog computes them in the pool while this
    # thread finds the parents (the same results, sooner).
    own_pool = (cf.ThreadPoolExecutor(max_workers=max_workers or _usable_cpus())
                if executor == "threads" else None)
    try:
        table, model = _deblend_frame(observation_or_image, frame, kind, peaks, parents, cfg,
                                      executor, own_pool, progress, max_workers,
                                      deblender_factory, observation_factory)
        return _describe(table, flux_unit, celestial), model
    finally:
        if own_pool is not None:
            own_pool.shutdown(wait=True)


def _later(pool: cf.Executor | None, fn: Callable[..., Any], *args: Any) -> cf.Future:
    """``fn(*args)`` submitted to ``pool``, or run now (a done future) without one."""
    if pool is not None:
        return pool.submit(fn, *args)
    fut: cf.Future = cf.Future()
    try:
        fut.set_result(fn(*args))
    except Exception as exc:
        fut.set_exception(exc)
    return fut


def _deblend_frame(observation_or_image: Any, frame: _Frame, kind: str, peaks: Any,
                   parents: Any, cfg: CatalogConfig, executor: Any,
                   own_pool: cf.Executor | None, progress: bool, max_workers: int | None,
                   deblender_factory: Callable | None,
                   observation_factory: Callable | None) -> tuple[Any, ModelData]:
    """:func:`deblend_catalog` after the image checks (see there)."""
    nb, H, W = frame.images.shape
    # one job (noise level, then the template): with this thread busy finding the parents,
    # one core is free
    shared_future = None
    if kind == "multi" and observation_factory is None:
        shared_future = _later(own_pool, _shared_setup, frame,
                               getattr(observation_or_image, "noise_rms", None))
    if parents is None:
        if peaks is not None:
            parents = parents_from_peaks(
                frame.images, frame.variance, peaks, cfg.footprint_snr, cfg.footprint_grow
            )
        else:
            try:
                from .detection import detect
            except ImportError as exc:  # pragma: no cover - detection ships with the package
                raise ImportError("no peaks or parents given and cdeblend.detect is missing") from (
                    exc
                )
            options = {"psf": frame.psfs, **(cfg.detection or {})}
            parents = detect(frame.images, frame.variance, **options)
    checked = _check_parents(parents, (H, W))
    # parent rows in increasing id (a stable sort: detection's ids are in order already)
    checked = sorted(checked, key=lambda c: int(c[0]))
    ids = [int(c[0]) for c in checked]
    if len(set(ids)) != len(ids):
        raise ValueError("parent ids must be unique")

    factory = default_deblender_factory if deblender_factory is None else deblender_factory
    obs_factory = (
        _default_observation_factory if observation_factory is None else observation_factory
    )

    noise_rms = template = None
    if shared_future is not None:
        noise_rms, template = shared_future.result()
        if not checked:
            template = None

    # every parent's footprint flux, centroid and masked fraction in one pass over the image
    boxes = np.array([c[1] for c in checked], dtype=np.int64).reshape(-1, 4)
    stats = _parent_stats(frame, boxes, [c[2] for c in checked])
    stats.flux_err = _footprint_flux_err(frame, boxes, [c[2] for c in checked])
    masked = stats.masked_fraction.tolist()
    tasks: list[_Task] = []
    reasons: list[str] = []
    for k, (pid, box, fp, local) in enumerate(checked):
        reason = _skip_reason(len(local), box, masked[k], cfg)
        reasons.append(reason)
        if reason:
            continue
        y0, x0, h, w = box
        sl = (slice(y0, y0 + h), slice(x0, x0 + w))
        tasks.append(
            _Task(
                index=k,
                parent_id=int(pid),
                kind=kind,
                box=box,
                footprint=fp,
                peaks=local,
                images=frame.images[(slice(None), *sl)],
                variance=frame.variance[(slice(None), *sl)],
                weights=None if frame.weights is None else frame.weights[(slice(None), *sl)],
                mask=None if frame.mask is None else frame.mask[sl],
                psfs=frame.psfs,
                bands=frame.bands,
                model_psf_sigma=frame.model_psf_sigma,
                noise_rms=noise_rms,
            )
        )
    for t in tasks:
        t.template = template
    if tasks and deblender_factory is None:
        _require_default_deblender(kind)
    if tasks and kind == "multi" and observation_factory is None:
        _require_default_deblender("observation")

    fn = functools.partial(_deblend_task, factory=factory, obs_factory=obs_factory, cfg=cfg)
    pool = own_pool if own_pool is not None else executor
    outcomes = {o.index: o for o in _run_tasks(tasks, fn, pool, max_workers, progress)}
    for k, o in outcomes.items():  # the deblender's own skips reach the catalog's flags
        if o.skip_reason:
            reasons[k] = o.skip_reason
    cat = _assemble(checked, ids, boxes, stats, reasons, outcomes, kind, nb)
    cat = cat[np.argsort(cat["id"], kind="stable")]  # parents, then children: ids sorted
    model = ModelData(bands=frame.bands, model_psf=frame.model_psf, psfs=frame.psfs,
                      model_psf_sigma=frame.model_psf_sigma)
    _collect_models(model, checked, reasons, outcomes, (max(ids) if ids else 0) + 1, kind,
                    cfg)
    return _to_table(cat, frame.bands), model


def _shared_setup(frame: _Frame, noise_rms: Any) -> tuple[np.ndarray, Any]:
    """The image's noise RMS per band (the observation's, else the mean of
    ``sqrt(variance)`` over the finite pixels) and the template observation sharing the PSFs'
    kernels with every parent."""
    from ._symmetric_cy import mean_sqrt

    if noise_rms is None:
        # the noise of the pixels with data (a no-data pixel's variance 0 is not noise)
        var = frame.variance
        if frame.mask is not None:
            var = np.where(var > 0, var, var.dtype.type(np.nan))
        noise_rms = [mean_sqrt(v)[0] for v in var]
        empty = [frame.bands[b] for b, n in enumerate(noise_rms) if not np.isfinite(n)]
        if empty:
            raise ValueError(f"band(s) {empty} have no pixel with data (every value non-finite, "
                             "masked or of variance <= 0): drop them")
    noise_rms = np.asarray(noise_rms, dtype=np.float64)
    return noise_rms, _template_observation(frame, noise_rms)


def _template_observation(frame: _Frame, noise_rms: np.ndarray) -> Any:
    """The package's Observation of the image's PSFs and noise (on one pixel): the parents'
    observations share its kernels and their transforms."""
    import cdeblend

    pixel = (slice(None), slice(0, 1), slice(0, 1))
    return cdeblend.Observation(
        frame.images[pixel].copy(), frame.variance[pixel].copy(), frame.psfs,
        bands=frame.bands, model_psf_sigma=frame.model_psf_sigma, noise_rms=noise_rms,
    )


def _require_default_deblender(kind: str) -> None:
    import cdeblend

    names = {
        "multi": ("Deblender", "DeblendConfig"),
        "single": ("SingleBandDeblender", "SingleBandConfig"),
        "observation": ("Observation",),
    }[kind]
    missing = [n for n in names if not hasattr(cdeblend, n)]
    if missing:
        raise RuntimeError(
            f"cdeblend.{missing[0]} is not available in this build; pass deblender_factory= "
            "and observation_factory= to deblend_catalog"
        )


def _to_table(cat: np.ndarray, bands: tuple[str, ...]) -> Any:
    try:
        from astropy.table import Table
    except ImportError:
        return cat
    table = Table(cat)
    table.meta["BANDS"] = ",".join(bands)
    return table


#: Description of every catalog column (see the module docstring).
COLUMN_DESCRIPTIONS: dict[str, str] = {
    "id": "Source id: parents first (their own ids), children after the largest parent id",
    "parent_id": "Id of the parent of a child; -1 for a parent",
    "is_parent": "True for a parent (a footprint with its peaks), False for a child",
    "n_peaks": "Number of peaks in the parent (1 for a child)",
    "n_children": "Number of children the deblender returned for the parent",
    "n_components": "Number of model components (multi-band sources)",
    "peak_id": "Index of the child's peak in its parent's peak list; -1 for a parent",
    "peak_y": "Peak row, 0-based (a parent's first peak)",
    "peak_x": "Peak column, 0-based (a parent's first peak)",
    "centroid_y": "Flux-weighted row, 0-based (child: model; parent: footprint image)",
    "centroid_x": "Flux-weighted column, 0-based (child: model; parent: footprint image)",
    "ra": "Right ascension of the centroid (ICRS or the WCS's frame)",
    "dec": "Declination of the centroid (ICRS or the WCS's frame)",
    "box_y0": "First row of the parent's bounding box; -1 for a child",
    "box_x0": "First column of the parent's bounding box; -1 for a child",
    "box_height": "Rows of the parent's bounding box; -1 for a child",
    "box_width": "Columns of the parent's bounding box; -1 for a child",
    "flux_model": "Model flux per band (single band: the template's sum)",
    "flux_conserved": "Flux per band of the image re-apportioned by the models (a lone "
    "source: its footprint flux)",
    "flux_footprint": "Parent's image summed over its footprint per band; NaN for a child",
    "flux_unassigned": "Parent's footprint flux no child received, per band",
    "masked_fraction": "Share of the parent footprint's pixels without data in any band",
    "deblender": "Deblender that ran on the parent: multi, single or none",
    "iterations": "Fit iterations of the multi-band deblender (-1: not fitted)",
    "loss": "Final loss 0.5 * chi^2 of the multi-band fit",
    "converged": "The multi-band fit converged",
    "skipped": "The parent was not deblended (one of the skipped_* flags is set)",
    "skipped_isolated": "Skipped: a single peak (CatalogConfig.skip_isolated)",
    "skipped_parent_too_big": "Skipped: the parent is too big",
    "skipped_masked": "Skipped: too much of the footprint has no data",
    "skipped_too_many_peaks": "Skipped: the parent has too many peaks",
    "failed": "The deblender failed on the parent",
    "error": "Exception class of a failed parent",
    "zero_flux": "A child that received no conserved flux",
    "child_flags": "Single-band deblender's flags of the child, comma separated",
    "deblender_flags": "The parent's flags as its deblender reported them, comma separated",
    "fallback": "The multi-band fit raised and the parent got the fallback model (a PSF "
    "model per peak); error holds the exception class",
    **{name: text for name, (_, text) in CATALOG_COLUMNS.items()},
}
_PIXEL_COLUMNS = ("peak_y", "peak_x", "centroid_y", "centroid_x", "box_y0", "box_x0",
                  "box_height", "box_width")


def _celestial(wcs: Any) -> Any:
    """The celestial part of an astropy WCS (None for None); ValueError without one."""
    if wcs is None:
        return None
    if not hasattr(wcs, "all_pix2world") or not hasattr(wcs, "celestial"):
        raise TypeError(f"wcs must be an astropy.wcs.WCS, got {type(wcs).__name__}")
    if not getattr(wcs, "has_celestial", False):
        raise ValueError("wcs has no celestial (RA/Dec) axes")
    return wcs.celestial


def _describe(table: Any, flux_unit: Any, celestial: Any) -> Any:
    """Units and descriptions on every column of a catalog table, and ``ra``/``dec``
    (degrees) at the centroids when a celestial WCS is given."""
    if isinstance(table, np.ndarray):
        if celestial is not None:
            raise ImportError("RA/Dec columns need astropy: pip install cdeblend[io]")
        return table
    import astropy.units as u

    if celestial is not None:
        x = np.asarray(table["centroid_x"], dtype=np.float64)
        y = np.asarray(table["centroid_y"], dtype=np.float64)
        world = celestial.all_pix2world(np.stack([x, y], axis=1), 0)
        at = table.colnames.index("centroid_x") + 1
        table.add_columns([world[:, celestial.wcs.lng], world[:, celestial.wcs.lat]],
                          indexes=[at, at], names=["ra", "dec"])
    unit = None if flux_unit is None else u.Unit(flux_unit, parse_strict="silent")
    for name in table.colnames:
        col = table[name]
        col.description = COLUMN_DESCRIPTIONS.get(name, col.description)
        if name in _PIXEL_COLUMNS:
            col.unit = u.pix
        elif name in ("ra", "dec"):
            col.unit = u.deg
        elif name.startswith("flux_") and unit is not None:
            col.unit = unit
        elif name in CATALOG_COLUMNS:
            kind = CATALOG_COLUMNS[name][0]
            if kind == "image" and unit is not None:
                col.unit = unit
            elif kind not in ("", "image"):
                col.unit = u.Unit(kind)
    return table


def write_catalog(path: str | Path, catalog: Any, overwrite: bool = True) -> None:
    """Write a catalog (astropy Table or structured array) as a FITS binary table.

    Units go to ``TUNITn``; each column's description to the comment of its ``TTYPEn``
    card (and, with the units, to astropy's header block that :func:`read_catalog` reads
    back). Needs astropy (``pip install cdeblend[io]``).
    """
    try:
        from astropy.io import fits
        from astropy.table import Table
    except ImportError as exc:  # pragma: no cover - exercised only without astropy
        raise ImportError("writing a catalog needs astropy: pip install cdeblend[io]") from exc
    table = catalog if isinstance(catalog, Table) else Table(np.asarray(catalog))
    table.write(Path(path), format="fits", overwrite=overwrite)
    # the descriptions also as the TTYPEn comments, for readers other than astropy
    with fits.open(Path(path), mode="update") as hdul:
        header = hdul[1].header
        for i, name in enumerate(table.colnames, start=1):
            text = table[name].description or COLUMN_DESCRIPTIONS.get(name, "")
            # room on the card: 80 - "TTYPEn  = " - the quoted name (>= 20 wide) - " / "
            room = 80 - 10 - max(max(len(name), 8) + 2, 20) - 3
            if text and room > 8:
                short = text if len(text) <= room else text[: room - 3] + "..."
                header.comments[f"TTYPE{i}"] = short


def read_catalog(path: str | Path) -> Any:
    """Read a catalog written by :func:`write_catalog` as an astropy Table."""
    try:
        from astropy.table import Table
    except ImportError as exc:  # pragma: no cover - exercised only without astropy
        raise ImportError("reading a catalog needs astropy: pip install cdeblend[io]") from exc
    table = Table.read(Path(path), format="fits")
    table.convert_bytestring_to_unicode()  # FITS strings come back as bytes
    return table
