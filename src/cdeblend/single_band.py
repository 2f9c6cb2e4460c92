"""The single-band (SDSS-like, meas_deblender "baseline") deblender.

One parent (a footprint with its peaks) at a time: every peak gets a template, either the
PSF (when a PSF fit describes it well) or its 180-degree symmetric template, optionally
ramped at the footprint edge, median smoothed and made monotonic; the image is then split
among the children in proportion to their templates, and the pixels that no template
claims (the stray flux) are handed out by a rule or left unassigned.

The steps follow ``docs/spec/single_band.md`` (the [dev] behaviours). The heavy
loops live in :mod:`cdeblend._symmetric_cy`, :mod:`cdeblend._monotonic_cy` and
:mod:`cdeblend._apportion_cy`; this module validates every input before calling them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.linalg import lapack

from . import _apportion_cy, _linalg_cy, _monotonic_cy, _symmetric_cy
from ._validate import (
    as_float_array,
    as_no_data_mask,
    as_peaks,
    check_psf,
    check_same_shape,
    clear_no_data,
    no_data_pixels,
)
from .peaks import subpixel_centers

__all__ = [
    "DEFAULT_MASK_BITS",
    "Child",
    "SingleBandConfig",
    "SingleBandDeblender",
    "SingleBandResult",
    "psf_fwhm_from_moments",
]

#: Bit numbers of the mask planes the deblender reads or writes (LSST afw's usual layout).
DEFAULT_MASK_BITS: Mapping[str, int] = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
    "NOT_DEBLENDED": 9,
}

_EDGE_CHOICES = ("ramp", "clip", "noclip")
_STRAY_RULES = ("trim", "r-to-peak", "r-to-footprint", "nearest-footprint")
_POINT_RULES = ("necessary", "always", "never")
#: A failed least-squares fit's chi^2 (rank-deficient or too few rows).
_BAD_CHISQ = 1e30
#: Most degenerate templates removed from one parent.
_MAX_DEGENERATE_REMOVALS = 50
#: Ramp trigger: an edge pixel at or above this many sigma1.
_RAMP_SIGMA = 3.0
# The default footprint of SingleBandDeblender.deblend: deblend_image's detection defaults
# (matched-filter S/N threshold, growth in pixels, minimum area), so that one call and the
# whole-image path deblend the same parent.
DETECT_NSIGMA = 5.0
DETECT_GROW = 2
DETECT_MIN_AREA = 3


@dataclass(frozen=True)
class SingleBandConfig:
    """Settings of :class:`SingleBandDeblender`.

    The defaults are the LSST task's except ``weight_templates=True`` (templates scaled by a
    joint least-squares fit to the image), ``stray_flux_rule="r-to-peak"`` (stray flux goes
    to the children instead of being trimmed away; both measured on simulated LSST-like
    blends, see the README's Defaults) and the footprint of a call without one
    (``footprint_nsigma=None``: the detection footprint of
    :func:`~cdeblend.detection.deblend_image`). :meth:`lsst` gives the LSST task's settings.

    Parameters
    ----------
    fit_psfs : bool
        Fit a PSF (with centroid, linear background and neighbours) to every peak and use
        the PSF as its template when the fit is good (docs/spec/single_band.md 3.1).
    subpixel_centers : bool
        Start the PSF fits of a call without ``centers`` at each peak's sub-pixel centre,
        the vertex of a parabola through the image's 3 pixels along each axis
        (:func:`cdeblend.peaks.subpixel_centers`), instead of the integer peak (True;
        :meth:`lsst` uses the peak). Integer catalog peaks are up to half a pixel off
        the source's centre; on the simulated single-band sets the sub-pixel start
        improved the median flux error in every blendedness bin (README, "Defaults").
    psf_chisq1, psf_chisq2, psf_chisq2b : float
        chi^2/dof cuts of the unshifted fit, the fit with derivative terms, and the refit at
        the shifted centre. Setting all three to 0 forces symmetric templates.
    tiny_footprint_size : int
        A PSF-fit stamp whose shorter side is <= max(this, 2) skips the peak.
    edge_handling : {"ramp", "clip", "noclip"}
        "ramp": extend templates that are cut off at the footprint edge with a PSF-shaped
        ramp (3.3); "clip": leave them truncated; "noclip": patch pixels whose mirror falls
        outside the parent box when the template touches EDGE-masked pixels (3.2).
    median_smooth_template : bool
        Median filter each template's interior (3.4).
    median_filter_halfsize : int
        Half size h of the (2h+1)^2 median box.
    monotonic_template : bool
        Apply the shadow-casting monotonic projection (3.5).
    clip_footprint_to_nonzero : bool
        Trim template footprints to their non-zero spans (3.6).
    weight_templates : bool
        Scale templates by a least-squares fit to the image (3.7).
    min_template_weight : float
        Floor of those least-squares weights (0.1). The unconstrained fit gives a template
        that its neighbours' templates can stand in for a weight near or below 0, and its
        child then gets no flux: 22 of 861 sources with S/N >= 20 were lost that way on a
        harder simulated set. With the floor no bright source was lost on any set, and the
        median flux error was the same or better (README, "Defaults").
    remove_degenerate_templates : bool
        Drop one of each pair of templates whose cosine exceeds ``max_temp_dot_prod`` (3.8).
    max_temp_dot_prod : float
        Cosine above which two templates are degenerate.
    assign_stray_flux : bool
        Give flux in pixels that no template claims to children by ``stray_flux_rule``.
    stray_flux_rule : {"trim", "r-to-peak", "r-to-footprint", "nearest-footprint"}
        How stray flux is shared; "trim" gives none and shrinks the final footprint.
    stray_flux_to_point_sources : {"necessary", "always", "never"}
        Whether PSF-template children take stray flux.
    clip_stray_flux_fraction : float
        Stray shares strictly below this fraction of the eligible sum are dropped.
    get_template_sum : bool
        Return the sum of the templates on the parent box.
    max_number_of_peaks : int
        Deblend only the first this many peaks (<= 0: all).
    max_footprint_area : int
        Skip parents with more pixels (<= 0: off).
    max_footprint_size : int
        Skip parents whose box side is longer (<= 0: off).
    min_footprint_axis_ratio : float
        Skip parents whose second-moment minor/major axis ratio is smaller (<= 0: off).
    mask_limits : mapping of str to float
        Skip a parent when the fraction of its pixels with this plane set exceeds the limit.
    mask_planes : tuple of str
        Planes left out when estimating sigma1 from the variance.
    no_data_mask_planes : tuple of str
        Planes of an integer mask whose pixels have no data (see the notes of
        :meth:`SingleBandDeblender.deblend`); pixels without data from any cause also count
        as these planes for ``mask_limits``.
    not_deblended_mask : str or None
        Plane set on skipped parents in the caller's mask (None: do not touch the mask).
    propagate_all_peaks : bool
        Give skipped peaks an all-zero child instead of none.
    catch_failures : bool
        Turn an exception during deblending into the parent flag ``failed``.
    keep_stages : bool
        Keep the intermediate templates (``Child.stages``).
    deblend_single_peak : bool
        Deblend parents with one peak (the library behaviour). By default (the task's) they
        are left alone: no children and no flags.
    footprint_nsigma : float or None
        The footprint of a :meth:`SingleBandDeblender.deblend` call without one. None (the
        default): the detection footprints of :func:`~cdeblend.detection.deblend_image`
        (matched-filter S/N 5, grown by 2 pixels) that hold a peak, merged, and a small disc
        for a peak in none of them. A number: the pixels above it times sqrt(variance)
        connected to a peak (0 keeps every positive pixel: a fractal of noise on a noisy
        image).
    mask_bits : mapping of str to int
        Bit number of each mask plane.

    Notes
    -----
    In :func:`~cdeblend.deblend_catalog` the :class:`~cdeblend.CatalogConfig` rules of the
    same names win (one set of skip rules): there ``max_number_of_peaks``,
    ``max_footprint_area``, ``max_footprint_size``, ``mask_limits`` and ``catch_failures``
    are switched off here and the catalog's apply.
    """

    fit_psfs: bool = True
    subpixel_centers: bool = True
    psf_chisq1: float = 1.5
    psf_chisq2: float = 1.5
    psf_chisq2b: float = 1.5
    tiny_footprint_size: int = 2
    edge_handling: str = "ramp"
    median_smooth_template: bool = True
    median_filter_halfsize: int = 2
    monotonic_template: bool = True
    clip_footprint_to_nonzero: bool = True
    weight_templates: bool = True
    min_template_weight: float = 0.1
    remove_degenerate_templates: bool = False
    max_temp_dot_prod: float = 0.5
    assign_stray_flux: bool = True
    stray_flux_rule: str = "r-to-peak"
    stray_flux_to_point_sources: str = "necessary"
    clip_stray_flux_fraction: float = 0.001
    get_template_sum: bool = False
    max_number_of_peaks: int = 0
    max_footprint_area: int = 10000
    max_footprint_size: int = 0
    min_footprint_axis_ratio: float = 0.0
    mask_limits: Mapping[str, float] = field(default_factory=lambda: {"NO_DATA": 0.25})
    mask_planes: tuple[str, ...] = ("SAT", "INTRP", "NO_DATA")
    no_data_mask_planes: tuple[str, ...] = ("NO_DATA",)
    not_deblended_mask: str | None = "NOT_DEBLENDED"
    propagate_all_peaks: bool = False
    catch_failures: bool = True
    keep_stages: bool = False
    deblend_single_peak: bool = False
    footprint_nsigma: float | None = None
    mask_bits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_MASK_BITS))

    @classmethod
    def lsst(cls, **overrides) -> SingleBandConfig:
        """The LSST task's settings (``weight_templates=False``, ``stray_flux_rule="trim"``,
        ``subpixel_centers=False``);
        ``overrides`` replace single fields."""
        return cls(
            **{
                "weight_templates": False,
                "stray_flux_rule": "trim",
                "subpixel_centers": False,
                **overrides,
            }
        )

    def __post_init__(self) -> None:
        if self.footprint_nsigma is not None and not np.isfinite(self.footprint_nsigma):
            raise ValueError(
                f"footprint_nsigma must be a finite number or None, got {self.footprint_nsigma!r}"
            )
        if self.edge_handling not in _EDGE_CHOICES:
            raise ValueError(
                f"edge_handling must be one of {_EDGE_CHOICES}, got {self.edge_handling!r}"
            )
        if self.stray_flux_rule not in _STRAY_RULES:
            raise ValueError(
                f"stray_flux_rule must be one of {_STRAY_RULES}, got {self.stray_flux_rule!r}"
            )
        if self.stray_flux_to_point_sources not in _POINT_RULES:
            raise ValueError(
                f"stray_flux_to_point_sources must be one of {_POINT_RULES}, "
                f"got {self.stray_flux_to_point_sources!r}"
            )
        if not (np.isfinite(self.min_template_weight) and self.min_template_weight >= 0):
            raise ValueError(
                f"min_template_weight must be finite and >= 0, got {self.min_template_weight!r}"
            )
        if self.median_filter_halfsize < 0:
            raise ValueError("median_filter_halfsize must be >= 0")
        if self.tiny_footprint_size < 0:
            raise ValueError("tiny_footprint_size must be >= 0")
        planes = set(self.mask_planes) | set(self.mask_limits) | set(self.no_data_mask_planes)
        if self.not_deblended_mask is not None:
            planes.add(self.not_deblended_mask)
        unknown = sorted(p for p in planes if p not in self.mask_bits)
        if unknown:
            raise ValueError(f"mask planes {unknown} have no bit in mask_bits")
        # Freeze the mappings so that the config stays immutable.
        object.__setattr__(self, "mask_limits", dict(self.mask_limits))
        object.__setattr__(self, "mask_bits", dict(self.mask_bits))
        object.__setattr__(self, "mask_planes", tuple(self.mask_planes))
        object.__setattr__(self, "no_data_mask_planes", tuple(self.no_data_mask_planes))

    def no_data_bits(self) -> int:
        """The bits of ``no_data_mask_planes`` in an integer mask."""
        bits = 0
        for p in self.no_data_mask_planes:
            bits |= 1 << self.mask_bits[p]
        return bits


@dataclass
class Child:
    """One deblended child (a peak that received a template).

    Attributes
    ----------
    index : int
        Row of its peak in the ``peaks`` given to :meth:`SingleBandDeblender.deblend`.
    peak : tuple of int
        (y, x) of the peak in the image frame.
    box : tuple of int
        (y0, x0, h, w) of ``conserved`` in the image frame.
    conserved : numpy.ndarray
        The child's share of the image (portion + stray flux), 0 off the parent footprint.
    template : numpy.ndarray
        Final template on ``template_box`` (0 off ``template_footprint``).
    template_box : tuple of int
        (y0, x0, h, w) of the template in the image frame.
    template_footprint : numpy.ndarray
        bool mask of the template's footprint on ``template_box``.
    template_kind : str
        "psf", "symmetric" or "monotonic" (a symmetric template made monotonic).
    flux : float
        Sum of ``conserved``.
    flags : frozenset of str
        ``deblended_as_psf``, ``psf_fit_with_decenter``, ``ramped``, ``has_stray_flux``...
        and, with ``propagate_all_peaks``, the skip reason of a skipped peak.
    weight : float
        Template weight (1 unless template weighting is on).
    psf_flux : float or None
        Flux of the chosen PSF fit (None without a fit record).
    psf_center : tuple of float or None
        (y, x) of the chosen PSF fit.
    psf_fit : dict
        chi^2 and dof of fits 1, 2 and 2b, when they ran.
    stages : dict
        Intermediate templates ``name -> (box, values)`` when ``keep_stages`` is on.
    flux_err : float
        Standard deviation of ``flux`` from the variance: ``sqrt(sum_p s(p)^2 V(p))`` with
        ``s`` the child's share of each pixel (shares held fixed; pixels without data
        excluded). See :mod:`cdeblend.metrics`.
    template_flux_err : float
        Standard deviation of the template's flux (its sum) when the templates' amplitudes
        are fitted jointly to the image by weighted least squares with their shapes held
        (NaN when the data do not constrain it).
    """

    index: int
    peak: tuple[int, int]
    box: tuple[int, int, int, int]
    conserved: np.ndarray
    template: np.ndarray
    template_box: tuple[int, int, int, int]
    template_footprint: np.ndarray
    template_kind: str
    flux: float
    flags: frozenset[str]
    weight: float = 1.0
    psf_flux: float | None = None
    psf_center: tuple[float, float] | None = None
    psf_fit: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, Any] = field(default_factory=dict)
    flux_err: float = float("nan")
    template_flux_err: float = float("nan")


@dataclass
class SingleBandResult:
    """The deblended parent.

    Attributes
    ----------
    children : list of Child
        One per peak that yielded a child, in peak order.
    stray_flux : float
        Flux inside the footprint that no child received (the sum of ``unassigned``).
    shape : tuple of int
        (H, W) of the image.
    footprint_box : tuple of int
        (y0, x0, h, w) of the parent footprint's bounding box.
    footprint : numpy.ndarray
        bool parent footprint on ``footprint_box``.
    final_footprint : numpy.ndarray
        The footprint after trimming (equal to ``footprint`` unless the "trim" rule shrank it).
    unassigned : numpy.ndarray
        image - sum of the conserved images, on ``footprint_box`` (0 off the footprint).
    n_peaks : int
        Number of peaks given.
    flags : frozenset of str
        Parent flags: ``too_many_peaks``, ``parent_too_big``, ``masked``, ``failed``,
        ``skipped``.
    peak_flags : list of frozenset of str
        Flags of every peak, children or not (skip reasons included).
    template_sum : numpy.ndarray or None
        Sum of the clipped templates on ``footprint_box`` (with ``get_template_sum``).
    error : str or None
        The message of a caught exception when the parent ``failed``.
    dtype : numpy.dtype
        dtype of the conserved images.
    """

    children: list[Child]
    stray_flux: float
    shape: tuple[int, int]
    footprint_box: tuple[int, int, int, int]
    footprint: np.ndarray
    final_footprint: np.ndarray
    unassigned: np.ndarray
    n_peaks: int
    flags: frozenset[str]
    peak_flags: list[frozenset[str]]
    template_sum: np.ndarray | None = None
    error: str | None = None
    dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float64))

    @property
    def n_child(self) -> int:
        """Number of children."""
        return len(self.children)

    def conserved_images(self) -> np.ndarray:
        """(N_peaks, H, W) dense conserved images; row i is peak i (zeros without a child)."""
        out = np.zeros((self.n_peaks,) + tuple(self.shape), dtype=self.dtype)
        for c in self.children:
            _paste(out[c.index], c.conserved, c.box)
        return out

    @property
    def flux_err(self) -> np.ndarray:
        """(N_peaks,) :attr:`Child.flux_err` of each peak's child (NaN without a child)."""
        out = np.full(self.n_peaks, np.nan)
        for c in self.children:
            out[c.index] = c.flux_err
        return out

    @property
    def template_flux_err(self) -> np.ndarray:
        """(N_peaks,) :attr:`Child.template_flux_err` of each peak's child (NaN without)."""
        out = np.full(self.n_peaks, np.nan)
        for c in self.children:
            out[c.index] = c.template_flux_err
        return out

    def templates(self) -> np.ndarray:
        """(N_peaks, H, W) dense final templates (the parts inside the image)."""
        out = np.zeros((self.n_peaks,) + tuple(self.shape), dtype=np.float64)
        for c in self.children:
            _paste(out[c.index], c.template, c.template_box)
        return out


def _paste(dst: np.ndarray, src: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """Add ``src`` (on ``box``) into ``dst``, skipping the part outside ``dst``."""
    y0, x0, h, w = box
    H, W = dst.shape
    ya, yb, xa, xb = max(y0, 0), min(y0 + h, H), max(x0, 0), min(x0 + w, W)
    if ya < yb and xa < xb:
        dst[ya:yb, xa:xb] += src[ya - y0 : yb - y0, xa - x0 : xb - x0]


# ----------------------------------------------------------------------------------- PSF
def _lanczos5(t: np.ndarray) -> np.ndarray:
    """Lanczos-5 kernel."""
    out = np.sinc(t) * np.sinc(t / 5.0)
    out[np.abs(t) >= 5.0] = 0.0
    return out


def _lanczos_taps(d: float) -> np.ndarray:
    """The 13 taps ``lanczos5(o - d)``, ``o = -6..6``, of a shift by ``d`` (|d| < 1)."""
    # Offsets -6..6 cover |o - d| < 5; 13 taps are cheaper in plain Python than in numpy.
    taps = np.zeros(13)
    for k in range(13):
        t = k - 6 - d
        if t == 0:
            taps[k] = 1.0
        elif abs(t) < 5:
            a, b = math.pi * t, math.pi * t / 5
            taps[k] = (math.sin(a) / a) * (math.sin(b) / b)
    return taps


def _banded_shift(img: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
    """``L @ img`` (axis 0) or ``img @ L.T`` (axis 1) for the banded Lanczos matrix ``L`` of
    ``taps``: ``out[i] = sum_o taps[o + 6] img[i - o]`` (zero beyond the image).

    Thirteen whole-array multiply-adds instead of a matrix product: no BLAS call (a threaded
    BLAS wakes its threads for products of PSF-sized matrices, once per peak) and
    ``13 n`` instead of ``n^2`` operations per output pixel row.
    """
    src = img if axis == 0 else img.T
    n = src.shape[0]
    out = np.zeros(src.shape)
    for o in range(-6, 7):
        t = taps[o + 6]
        if t == 0 or abs(o) >= n:
            continue
        if o >= 0:
            out[o:] += t * src[: n - o]
        else:
            out[: n + o] += t * src[-o:]
    return out if axis == 0 else out.T


def _shift_image(img: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """``img`` moved by (dy, dx) pixels with a separable Lanczos-5 kernel, renormalised.

    ``g[i, j] = sum_kl Ly[i, k] f[k, l] Lx[j, l]`` with ``L[i, k] = lanczos5(i - k - d)``
    (zeros beyond the image), applied one axis at a time (:func:`_banded_shift`).
    """
    out = img if dy == 0 else _banded_shift(img, _lanczos_taps(dy), 0)
    out = out if dx == 0 else _banded_shift(out, _lanczos_taps(dx), 1)
    s = out.sum()
    return out / s if s != 0 else out


def _round_half_away(v: float) -> int:
    """Round half away from zero (C ``lround``)."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


class _PSF:
    """PSF images at sub-pixel positions, from a fixed array or a callable."""

    def __init__(self, psf: np.ndarray | Callable, fallback_yx: Callable[[], tuple]) -> None:
        self.fixed = None if callable(psf) else psf
        self.func = psf if callable(psf) else None
        self.fallback = fallback_yx
        self._cache: dict[tuple[float, float], np.ndarray] = {}

    def image(self, cy: float, cx: float) -> tuple[np.ndarray, int, int]:
        """(values, y0, x0): the PSF centred on (cy, cx), its box centred on the nearest pixel."""
        if self.fixed is None:
            try:
                arr, origin = self.func(cy, cx)
                arr = np.asarray(arr, dtype=np.float64)
            except Exception:
                # A PSF model that fails at this position: take its image at the peaks' mean,
                # with the box centred on the pixel nearest to (cy, cx).
                arr, _ = self.func(*self.fallback())
                arr = np.asarray(arr, dtype=np.float64)
                origin = (
                    _round_half_away(cy) - arr.shape[0] // 2,
                    _round_half_away(cx) - arr.shape[1] // 2,
                )
            return arr, int(origin[0]), int(origin[1])
        iy, ix = _round_half_away(cy), _round_half_away(cx)
        dy, dx = cy - iy, cx - ix
        key = (dy, dx)
        arr = self._cache.get(key)
        if arr is None:
            arr = self.fixed if (dy == 0 and dx == 0) else _shift_image(self.fixed, dy, dx)
            self._cache[key] = arr
        ph, pw = arr.shape
        return arr, iy - ph // 2, ix - pw // 2


def psf_fwhm_from_moments(psf: np.ndarray, max_iter: int = 50) -> float:
    """FWHM ``2.35 (det M)^(1/4)`` from the adaptive (Gaussian-weighted) second moments M.

    The weight's covariance is iterated to twice the weighted moments, whose fixed point is
    the covariance of a Gaussian PSF. Returns NaN when the iteration breaks down.
    """
    psf = np.asarray(psf, dtype=np.float64)
    s = psf.sum()
    if not s > 0:
        return float("nan")
    # The Gaussian weight ignores the far wings: cut the image to 2.5x a rough FWHM (from the
    # area above half the maximum) around its maximum, which makes large PSF images cheap.
    iy, ix = np.unravel_index(int(np.argmax(psf)), psf.shape)
    rough = 2.0 * math.sqrt(np.count_nonzero(psf >= 0.5 * psf[iy, ix]) / math.pi)
    r = int(math.ceil(2.5 * rough)) + 2
    psf = psf[max(iy - r, 0) : iy + r + 1, max(ix - r, 0) : ix + r + 1]
    s = psf.sum()
    if not s > 0:
        return float("nan")
    psf = np.ascontiguousarray(psf)
    mom = np.empty(6)
    # Start from the unweighted centroid and a 2-pixel-variance weight.
    _symmetric_cy.gaussian_moments(psf, 0.0, 0.0, 0.0, 0.0, 0.0, mom)
    cy, cx = mom[1] / mom[0], mom[2] / mom[0]
    myy, mxy, mxx = 2.0, 0.0, 2.0
    for _ in range(max_iter):
        det = myy * mxx - mxy * mxy
        if not det > 0:
            return float("nan")
        iyy, ixy, ixx = mxx / det, -mxy / det, myy / det
        _symmetric_cy.gaussian_moments(psf, cy, cx, iyy, ixy, ixx, mom)
        fs = mom[0]
        if not fs > 0:
            return float("nan")
        ey, ex = mom[1] / fs, mom[2] / fs
        # Second moments about the updated centre.
        wyy = mom[3] / fs - ey * ey
        wxy = mom[4] / fs - ey * ex
        wxx = mom[5] / fs - ex * ex
        cy, cx = cy + ey, cx + ex
        # Deweight: for a Gaussian PSF of covariance C the weighted moments are
        # (C^-1 + M^-1)^-1, so C = (W^-1 - M^-1)^-1, which converges in a few steps.
        # Fall back to the plain fixed-point step M = 2 W when that is not positive.
        wdet = wyy * wxx - wxy * wxy
        if wdet > 0:
            ayy, axy, axx = wxx / wdet - iyy, -wxy / wdet - ixy, wyy / wdet - ixx
            adet = ayy * axx - axy * axy
        else:
            adet = ayy = 0.0
        if adet > 0 and ayy > 0:
            nyy, nxy, nxx = axx / adet, -axy / adet, ayy / adet
        else:
            nyy, nxy, nxx = 2 * wyy, 2 * wxy, 2 * wxx
        done = (
            abs(nyy - myy) <= 1e-6 * abs(myy)
            and abs(nxx - mxx) <= 1e-6 * abs(mxx)
            and abs(nxy - mxy) <= 1e-6 * (abs(myy) + abs(mxx))
        )
        myy, mxy, mxx = nyy, nxy, nxx
        if done:
            break
    det = myy * mxx - mxy * mxy
    if not det > 0:
        return float("nan")
    return float(2.35 * det**0.25)


# ------------------------------------------------------------------------------ templates
class _Template:
    """A template on a box of the working frame (values 0 off the footprint)."""

    __slots__ = ("box", "values", "fp", "kind", "weight", "monotonic")

    def __init__(
        self, box: tuple[int, int, int, int], values: np.ndarray, fp: np.ndarray, kind: str
    ) -> None:
        self.box = box
        self.values = values
        self.fp = fp
        self.kind = kind
        self.weight = 1.0
        self.monotonic = False

    def crop(self, ymin: int, xmin: int, ymax: int, xmax: int) -> None:
        """Cut the box to rows ymin..ymax and columns xmin..xmax (box coordinates)."""
        y0, x0, _, _ = self.box
        self.values = np.ascontiguousarray(self.values[ymin : ymax + 1, xmin : xmax + 1])
        self.fp = np.ascontiguousarray(self.fp[ymin : ymax + 1, xmin : xmax + 1])
        self.box = (y0 + ymin, x0 + xmin, ymax - ymin + 1, xmax - xmin + 1)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]):
    """Intersection of two boxes as (y0, y1, x0, x1) (exclusive ends), or None."""
    y0, x0 = max(a[0], b[0]), max(a[1], b[1])
    y1, x1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    if y0 >= y1 or x0 >= x1:
        return None
    return y0, y1, x0, x1


def _on_box(arr: np.ndarray, arr_box, box) -> np.ndarray:
    """``arr`` (on ``arr_box``) cut or zero-padded to ``box``."""
    out = np.zeros((box[2], box[3]), dtype=arr.dtype)
    ov = _overlap(arr_box, box)
    if ov is not None:
        y0, y1, x0, x1 = ov
        out[y0 - box[0] : y1 - box[0], x0 - box[1] : x1 - box[1]] = arr[
            y0 - arr_box[0] : y1 - arr_box[0], x0 - arr_box[1] : x1 - arr_box[1]
        ]
    return out


class _Frame:
    """The working frame: the parent's box grown by ``grow`` pixels (zero-padded)."""

    def __init__(self, image, variance, mask, fp_full, pbox, grow):
        H, W = image.shape
        py0, px0, ph, pw = pbox
        self.y0, self.x0 = py0 - grow, px0 - grow
        self.h, self.w = ph + 2 * grow, pw + 2 * grow
        self.box = (self.y0, self.x0, self.h, self.w)
        full = (0, 0, H, W)
        self.image = _on_box(np.asarray(image, dtype=np.float64), full, self.box)
        self.variance = _on_box(np.asarray(variance, dtype=np.float64), full, self.box)
        self.mask = None if mask is None else _on_box(mask, full, self.box)
        self.fp = _on_box(fp_full.view(np.uint8), full, self.box)
        inimg = np.zeros((self.h, self.w), dtype=np.uint8)
        ov = _overlap(full, self.box)
        inimg[ov[0] - self.y0 : ov[1] - self.y0, ov[2] - self.x0 : ov[3] - self.x0] = 1
        self.inimg = inimg
        # The parent box in frame coordinates.
        self.pbox = (grow, grow, ph, pw)


# ------------------------------------------------------------------------------- deblender
class SingleBandDeblender:
    """SDSS-like single-band deblender (meas_deblender "baseline").

    Parameters
    ----------
    config : SingleBandConfig, optional
        Settings; see :class:`SingleBandConfig` (``SingleBandConfig.lsst()`` for the LSST
        task's).

    Examples
    --------
    >>> deb = SingleBandDeblender()
    >>> res = deb.deblend(image, variance, psf, peaks)  # doctest: +SKIP
    >>> [c.flux for c in res.children], res.stray_flux  # doctest: +SKIP

    On the footprint, ``res.conserved_images().sum(axis=0)`` plus ``res.unassigned`` (placed
    at ``res.footprint_box``) equals the image.
    """

    def __init__(self, config: SingleBandConfig | None = None) -> None:
        self.config = SingleBandConfig() if config is None else config
        if not isinstance(self.config, SingleBandConfig):
            raise TypeError(f"config must be a SingleBandConfig, got {type(self.config).__name__}")

    # ------------------------------------------------------------------ validation
    def _validate(self, image, variance, psf, peaks, footprint, mask, centers):
        image = as_float_array(image, "image", 2, finite=False)
        variance = as_float_array(variance, "variance", 2, finite=False)
        check_same_shape(image, "image", variance, "variance")
        mask, no_data = split_mask(mask, image.shape, self.config)
        no_data = no_data_pixels(image, variance, no_data)
        image, variance = clear_no_data(image, variance, no_data)
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
            fp = self._default_footprint(image, variance, pk, psf_arr)
        else:
            fp = np.asarray(footprint)
            check_same_shape(image, "image", fp, "footprint")
            if fp.dtype == bool:
                fp = np.ascontiguousarray(fp)
            elif fp.dtype.kind in "iu":
                labels = np.unique(fp[pk[:, 0], pk[:, 1]])
                labels = labels[labels != 0]
                fp = np.isin(fp, labels)
            else:
                raise TypeError(
                    f"footprint must be a bool mask or an integer label image, got dtype {fp.dtype}"
                )
        if not fp.any():
            raise ValueError("footprint is empty: no pixel belongs to the parent")
        inside = fp[pk[:, 0], pk[:, 1]]
        if not np.all(inside):
            i = int(np.flatnonzero(~inside)[0])
            raise ValueError(
                f"peaks[{i}] = (y={pk[i, 0]}, x={pk[i, 1]}) lies outside the footprint"
            )
        return image, variance, psf_arr, pk, cen, fp, mask, (no_data if no_data.any() else None)

    def _default_footprint(self, image, variance, pk, psf):
        """The parent footprint when the caller gives none.

        By default (``footprint_nsigma=None``) the footprints that :func:`deblend_image`
        detects (matched-filter S/N above ``DETECT_NSIGMA``, grown by ``DETECT_GROW``
        pixels) that hold a peak, merged; a peak in none of them gets a small disc of its
        own, as there. With a number, the pixels above ``footprint_nsigma * sqrt(variance)``
        connected to a peak (0 takes every positive pixel: on a noisy image a fractal of
        noise, and an error when a peak sits on a negative pixel).
        """
        if self.config.footprint_nsigma is None:
            from .detection import detect

            fwhm = (
                psf_fwhm_from_moments(psf)
                if not callable(psf)
                else _callable_fwhm(psf, image.shape)
            )
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
        thr = self.config.footprint_nsigma * np.sqrt(variance)
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

    # ------------------------------------------------------------------ public entry
    def deblend(
        self,
        image: np.ndarray,
        variance: np.ndarray,
        psf: np.ndarray | Callable,
        peaks: np.ndarray,
        footprint: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        *,
        centers: np.ndarray | None = None,
        sigma1: float | None = None,
        psf_fwhm: float | None = None,
    ) -> SingleBandResult:
        """Deblend one parent.

        Parameters
        ----------
        image : numpy.ndarray
            (H, W) float32 or float64 background-subtracted image.
        variance : numpy.ndarray
            (H, W) variance; pixels where it is not finite and positive have no data.
        psf : numpy.ndarray or callable
            (h, w) odd-sized unit-sum PSF image (shifted to sub-pixel centres with
            Lanczos-5), or ``psf(y, x) -> (image, (y0, x0))``.
        peaks : numpy.ndarray
            (N, 2) integer (y, x) peaks, brightest first.
        footprint : numpy.ndarray, optional
            (H, W) bool parent footprint, or an integer label image (the parent is the union
            of the labels under the peaks). Default: the detection footprints of
            :func:`~cdeblend.detection.deblend_image` that hold a peak (see
            ``SingleBandConfig.footprint_nsigma``).
        mask : numpy.ndarray, optional
            (H, W) bool (True = no data) or integer mask planes (bits from
            ``config.mask_bits``; ``config.no_data_mask_planes`` mark pixels without data).
            The ``not_deblended_mask`` bit is set in an integer mask, in place, on skipped
            parents.
        centers : numpy.ndarray, optional
            (N, 2) float (y, x) positions for the PSF fits (default: the peaks, refined to
            sub-pixel centres with ``config.subpixel_centers``).
        sigma1 : float, optional
            Background noise; default sqrt of the median variance over unmasked pixels.
        psf_fwhm : float, optional
            PSF FWHM in pixels; default from the PSF's adaptive second moments.

        Returns
        -------
        SingleBandResult

        Notes
        -----
        No data (the package's one rule): a pixel with a non-finite value, a variance that
        is not finite and positive, or a no-data mask is read as value 0 and variance 0. It
        has no weight in the PSF fits, gives no flux to any child (its conserved value is
        0), is left out of sigma1 and of the default footprint, and counts as
        ``no_data_mask_planes`` for ``mask_limits`` (a parent over the limit is skipped with
        the flag ``masked``). It is never an error.
        """
        cfg = self.config
        image, variance, psf_arr, pk, cen, fp, mask, no_data = self._validate(
            image, variance, psf, peaks, footprint, mask, centers
        )
        if sigma1 is None:
            sigma1 = estimate_sigma1(variance, mask, cfg)
        return self._deblend_checked(
            image, variance, psf_arr, pk, fp, mask, sigma1, psf_fwhm, cen, no_data
        )

    def _deblend_checked(
        self, image, variance, psf, pk, fp, mask, sigma1, psf_fwhm, cen=None, no_data=None
    ):
        """Deblend inputs that were already validated (``deblend_image`` checks them once)."""
        ys, xs = np.nonzero(fp)
        pbox = (
            int(ys.min()),
            int(xs.min()),
            int(ys.max() - ys.min() + 1),
            int(xs.max() - xs.min() + 1),
        )
        fwhm = psf_fwhm
        if fwhm is None:
            if callable(psf):
                cy, cx = float(ys.mean()), float(xs.mean())
                img_c, _, _ = _PSF(psf, lambda: (cy, cx)).image(cy, cx)
                fwhm = psf_fwhm_from_moments(img_c)
            else:
                fwhm = psf_fwhm_from_moments(psf)
        if cen is None:
            cen = pk.astype(np.float64)
            if self.config.subpixel_centers:
                cen = subpixel_centers(image, pk)
        fp_box = np.ascontiguousarray(fp[pbox[0] : pbox[0] + pbox[2], pbox[1] : pbox[1] + pbox[3]])
        run = _Run(
            self.config, image, variance, mask, fp, fp_box, pbox, psf, pk, cen, float(sigma1), fwhm
        )
        run.no_data = no_data
        return run.execute()


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


def _callable_fwhm(psf: Callable, shape: tuple[int, int]) -> float:
    """FWHM (pixels) of a callable PSF evaluated at the middle of an image of ``shape``."""
    cy, cx = (shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0
    img, _, _ = _PSF(psf, lambda: (cy, cx)).image(cy, cx)
    return psf_fwhm_from_moments(img)


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


class _Run:
    """The state of one parent being deblended."""

    def __init__(self, cfg, image, variance, mask, fp, fp_box, pbox, psf, pk, cen, sigma1, fwhm):
        self.cfg = cfg
        self.image = image
        self.variance = variance
        self.mask = mask
        self.fp = fp
        self.fp_box = fp_box
        self.pbox = pbox
        self.psf_in = psf
        self.pk = pk
        self.cen = cen
        self.sigma1 = sigma1
        self.fwhm = fwhm
        self.N = len(pk)
        self.no_data: np.ndarray | None = None  # (H, W) bool pixels without data
        self.flags: set[str] = set()
        self.peak_flags: list[set[str]] = [set() for _ in range(self.N)]
        self.skipped = np.zeros(self.N, dtype=bool)
        self.templates: list[_Template | None] = [None] * self.N
        self.fits: list[dict[str, Any]] = [{} for _ in range(self.N)]
        self.stages: list[dict[str, Any]] = [{} for _ in range(self.N)]

    # -------------------------------------------------------------- results
    def _empty_result(self, error: str | None = None) -> SingleBandResult:
        fpb = self.fp_box.astype(bool)
        unassigned = np.where(fpb, self.image[self._pslice()], 0).astype(self.image.dtype)
        return SingleBandResult(
            children=[],
            stray_flux=float(unassigned.sum(dtype=np.float64)),
            shape=self.image.shape,
            footprint_box=self.pbox,
            footprint=fpb,
            final_footprint=fpb.copy(),
            unassigned=unassigned,
            n_peaks=self.N,
            flags=frozenset(self.flags),
            peak_flags=[frozenset(f) for f in self.peak_flags],
            error=error,
            dtype=self.image.dtype,
        )

    def _pslice(self):
        y0, x0, h, w = self.pbox
        return slice(y0, y0 + h), slice(x0, x0 + w)

    def _skip_parent(self, why: str) -> SingleBandResult:
        self.flags.update((why, "skipped"))
        cfg = self.cfg
        if self.mask is not None and cfg.not_deblended_mask is not None:
            bit = self.mask.dtype.type(1 << cfg.mask_bits[cfg.not_deblended_mask])
            self.mask[self.fp] |= bit
        return self._empty_result()

    # -------------------------------------------------------------- driver
    def execute(self) -> SingleBandResult:
        cfg = self.cfg
        if self.N < 2 and not cfg.deblend_single_peak:
            return self._empty_result()
        area = int(self.fp_box.sum())
        if (
            (cfg.max_footprint_area > 0 and area > cfg.max_footprint_area)
            or (
                cfg.max_footprint_size > 0
                and max(self.pbox[2], self.pbox[3]) > cfg.max_footprint_size
            )
            or (
                cfg.min_footprint_axis_ratio > 0
                and _axis_ratio(self.fp_box) < cfg.min_footprint_axis_ratio
            )
        ):
            return self._skip_parent("parent_too_big")
        if self._over_mask_limits():
            return self._skip_parent("masked")
        if not (self.fwhm > 0) or not math.isfinite(self.fwhm):
            if not cfg.catch_failures:
                raise ValueError(f"psf_fwhm must be finite and > 0, got {self.fwhm}")
            self.flags.add("failed")
            return self._empty_result(error=f"invalid PSF FWHM {self.fwhm}")
        if cfg.max_number_of_peaks > 0 and self.N > cfg.max_number_of_peaks:
            self.flags.add("too_many_peaks")
            self.skipped[cfg.max_number_of_peaks :] = True
        if not cfg.catch_failures:
            return self._steps()
        try:
            return self._steps()
        except Exception as exc:  # failure isolation: flag the parent and keep going
            self.flags.add("failed")
            self.templates = [None] * self.N
            return self._empty_result(error=f"{type(exc).__name__}: {exc}")

    def _over_mask_limits(self) -> bool:
        """Whether a ``mask_limits`` plane covers too much of the footprint (pixels without
        data count as the ``no_data_mask_planes``)."""
        cfg = self.cfg
        if self.mask is None and self.no_data is None:
            return False
        n = int(np.count_nonzero(self.fp))
        for plane, limit in cfg.mask_limits.items():
            bit = 1 << cfg.mask_bits[plane]
            hit = np.zeros(n, dtype=bool) if self.mask is None else (self.mask[self.fp] & bit) != 0
            if self.no_data is not None and plane in cfg.no_data_mask_planes:
                hit |= self.no_data[self.fp]
            if np.count_nonzero(hit) / n > limit:
                return True
        return False

    def _steps(self) -> SingleBandResult:
        cfg = self.cfg
        f = self.fwhm
        self.ramp_s = int((1.5 * f + 0.5) / 2) * 2 + 1
        grow = self.ramp_s if cfg.edge_handling == "ramp" else 0
        fr = _Frame(self.image, self.variance, self.mask, self.fp, self.pbox, grow)
        self.frame = fr
        # Peaks and centres in frame coordinates.
        self.fpk = self.pk - np.array([fr.y0, fr.x0])
        self.fcen = self.cen - np.array([fr.y0, fr.x0])
        cen = self.cen
        self.psf = _PSF(self.psf_in, lambda: (float(cen[:, 0].mean()), float(cen[:, 1].mean())))
        active = ~self.skipped  # peaks taking part in the steps
        self.is_psf = np.zeros(self.N, dtype=bool)
        if cfg.fit_psfs:
            for i in np.flatnonzero(active):
                self._fit_psf(i)
        for i in np.flatnonzero(~self.skipped & ~self.is_psf):
            t = self._symmetric(i)
            if t is None:
                continue
            if cfg.keep_stages:
                self._keep(i, "symmetric", t)
            if cfg.edge_handling == "ramp":
                t = self._ramp(i, t)
                if cfg.keep_stages:
                    self._keep(i, "ramped", t)
            if cfg.median_smooth_template:
                self._median(t)
                if cfg.keep_stages:
                    self._keep(i, "median", t)
            if cfg.monotonic_template:
                self._monotonic(i, t)
                if cfg.keep_stages:
                    self._keep(i, "monotonic", t)
            if cfg.clip_footprint_to_nonzero:
                self._clip(t)
            self.templates[i] = t
        if cfg.weight_templates:
            self._weight()
        if cfg.remove_degenerate_templates:
            removals = 0
            while removals < _MAX_DEGENERATE_REMOVALS and self._remove_degenerate():
                removals += 1
                if removals < _MAX_DEGENERATE_REMOVALS and cfg.weight_templates:
                    self._weight()
        return self._apportion()

    def _keep(self, i: int, name: str, t: _Template) -> None:
        fr = self.frame
        box = (t.box[0] + fr.y0, t.box[1] + fr.x0, t.box[2], t.box[3])
        self.stages[i][name] = (box, t.values.copy(), t.fp.astype(bool))

    def _skip(self, i: int, why: str) -> None:
        self.peak_flags[i].add(why)
        self.skipped[i] = True

    # -------------------------------------------------------------- 3.1 PSF fit
    def _psf_clipped(self, cy: float, cx: float):
        """PSF at (cy, cx) in frame coords: (values, box), box clipped to the parent box."""
        fr = self.frame
        arr, y0, x0 = self.psf.image(cy + fr.y0, cx + fr.x0)
        box = (y0 - fr.y0, x0 - fr.x0, arr.shape[0], arr.shape[1])
        return arr, box, _overlap(box, fr.pbox)

    def _fit_psf(self, i: int) -> None:
        cfg = self.cfg
        fr = self.frame
        f = self.fwhm
        cy, cx = float(self.fcen[i, 0]), float(self.fcen[i, 1])
        R0, R1 = math.ceil(f), math.ceil(1.5 * f)
        psf0, box0, clip0 = self._psf_clipped(cy, cx)
        R2 = R1 + min(psf0.shape) / 2
        iy, ix = int(cy), int(cx)
        if clip0 is None or not (clip0[0] <= iy < clip0[1] and clip0[2] <= ix < clip0[3]):
            self._skip(i, "out_of_bounds")
            return
        pb = fr.pbox
        sy0 = max(math.floor(cy - R1), pb[0])
        sy1 = min(math.ceil(cy + R1), pb[0] + pb[2] - 1)
        sx0 = max(math.floor(cx - R1), pb[1])
        sx1 = min(math.ceil(cx + R1), pb[1] + pb[3] - 1)
        if sy1 < sy0 or sx1 < sx0:
            self._skip(i, "out_of_bounds")
            return
        if min(sy1 - sy0 + 1, sx1 - sx0 + 1) <= max(cfg.tiny_footprint_size, 2):
            self._skip(i, "tiny_footprint")
            return
        sh, sw = sy1 - sy0 + 1, sx1 - sx0 + 1
        stamp = (sy0, sx0, sh, sw)
        # The PSF on the stamp grown by one pixel (for the central differences), 0 outside
        # its box clipped to the parent box.
        y0c, y1c, x0c, x1c = clip0
        psig = _on_box(psf0, box0, (sy0 - 1, sx0 - 1, sh + 2, sw + 2))
        if y0c > sy0 - 1 or y1c < sy1 + 2 or x0c > sx0 - 1 or x1c < sx1 + 2:
            gy = np.arange(sy0 - 1, sy1 + 2)[:, None]
            gx = np.arange(sx0 - 1, sx1 + 2)[None, :]
            psig *= (gy >= y0c) & (gy < y1c) & (gx >= x0c) & (gx < x1c)
        # Neighbour columns: other peaks within R2 whose PSF box overlaps the stamp.
        neigh = []
        for j in range(self.N):
            if j == i:
                continue
            cjy, cjx = float(self.fcen[j, 0]), float(self.fcen[j, 1])
            if (cjy - cy) ** 2 + (cjx - cx) ** 2 > R2 * R2:
                continue
            arr, bx, _ = self._psf_clipped(cjy, cjx)
            if _overlap(bx, stamp) is None:
                continue
            neigh.append(_on_box(arr, bx, stamp))
        K = len(neigh)
        nb = np.stack(neigh) if K else np.zeros((0, sh, sw))
        Aw = np.empty((sh * sw, 6 + K))
        bw = np.empty(sh * sw)
        rw = np.empty(sh * sw)
        pix = np.empty((sh * sw, 2), dtype=np.int64)
        m = _symmetric_cy.psf_fit_rows(
            fr.image,
            fr.variance,
            fr.fp,
            sy0,
            sx0,
            cy,
            cx,
            float(R0),
            float(R1),
            psig,
            y0c,
            y1c,
            x0c,
            x1c,
            nb,
            Aw,
            bw,
            rw,
            pix,
        )
        if m == 0:
            self._skip(i, "no_valid_pixels")
            return
        Aw, bw, rw, pix = Aw[:m], bw[:m], rw[:m], pix[:m]
        sum_rw = float(rw.sum())
        n1 = 4 + K
        n2 = n1 + 2
        try:
            a1, chi1 = _lstsq(Aw[:, :n1], bw)
            a2, chi2 = _lstsq(Aw, bw)
        except np.linalg.LinAlgError:
            self.peak_flags[i].add("psf_fit_failed")
            return
        dof1, dof2 = sum_rw - n1, sum_rw - n2
        if dof1 <= 0 or dof2 <= 0:
            self.peak_flags[i].add("psf_fit_bad_dof")
            return
        q1, q2 = chi1 / dof1, chi2 / dof2
        ispsf1 = q1 < cfg.psf_chisq1
        ispsf2 = q2 < cfg.psf_chisq2
        rec: dict[str, Any] = {
            "chisq1": chi1,
            "dof1": dof1,
            "chisq2": chi2,
            "dof2": dof2,
            "n_neighbours": K,
        }
        shifted = None
        if ispsf2:
            with np.errstate(divide="ignore", invalid="ignore"):  # a zero PSF amplitude
                ddx, ddy = -a2[n1] / a2[0], -a2[n1 + 1] / a2[0]  # is rejected just below
            if abs(ddx) >= 1 or abs(ddy) >= 1 or not (math.isfinite(ddx) and math.isfinite(ddy)):
                ispsf2 = False
                self.peak_flags[i].add("psf_fit_big_decenter")
            else:
                ny, nx = cy + ddy, cx + ddx
                psf_b, box_b, clip_b = self._psf_clipped(ny, nx)
                iny, inx = int(ny), int(nx)
                if clip_b is None or not (
                    clip_b[0] <= iny < clip_b[1] and clip_b[2] <= inx < clip_b[3]
                ):
                    ispsf2 = False
                else:
                    Ab = Aw[:, :n1].copy()
                    # Column 0 becomes the shifted PSF (0 outside its clipped box).
                    py_, px_ = pix[:, 0], pix[:, 1]
                    inside = (py_ >= clip_b[0]) & (py_ < clip_b[1])
                    inside &= (px_ >= clip_b[2]) & (px_ < clip_b[3])
                    col = np.zeros(m)
                    col[inside] = psf_b[py_[inside] - box_b[0], px_[inside] - box_b[1]]
                    Ab[:, 0] = col * Aw[:, 1]
                    try:
                        ab, chib = _lstsq(Ab, bw)
                    except np.linalg.LinAlgError:
                        self.peak_flags[i].add("psf_fit_failed")
                        return
                    qb = chib / (sum_rw - n1)
                    rec.update(chisq2b=chib, dof2b=sum_rw - n1)
                    ispsf2 = qb < cfg.psf_chisq2b
                    q2 = qb
                    a2 = ab
                    shifted = (ny, nx)
        if shifted is not None and ((ispsf1 and ispsf2 and q2 < q1) or (ispsf2 and not ispsf1)):
            center, flux = shifted, float(a2[0])
            self.peak_flags[i].add("psf_fit_with_decenter")
        else:
            center, flux = (cy, cx), float(a1[0])
        rec.update(q1=q1, q2=q2, best="2b" if center != (cy, cx) else "1")
        self.fits[i] = {
            "psf_flux": flux,
            "psf_center": (center[0] + fr.y0, center[1] + fr.x0),
            **rec,
        }
        if not ((ispsf1 or ispsf2) and flux > 0):
            return
        # The PSF template: flux x PSF on P within the PSF box, clipped to non-zero.
        arr, box, clip = self._psf_clipped(*center)
        if clip is None:
            return
        y0, y1, x0, x1 = clip
        vals = np.maximum(arr[y0 - box[0] : y1 - box[0], x0 - box[1] : x1 - box[1]] * flux, 0.0)
        tfp = np.ascontiguousarray(fr.fp[y0:y1, x0:x1])
        vals = np.ascontiguousarray(vals * tfp)
        t = _Template((y0, x0, y1 - y0, x1 - x0), vals, tfp, "psf")
        self._clip(t)
        self.templates[i] = t
        self.is_psf[i] = True
        self.peak_flags[i].add("deblended_as_psf")

    # -------------------------------------------------------------- 3.2 symmetric
    def _symmetric(self, i: int) -> _Template | None:
        fr = self.frame
        py, px = int(self.fpk[i, 0]), int(self.fpk[i, 1])
        pb = fr.pbox
        y0 = max(pb[0], 2 * py - (pb[0] + pb[2] - 1))
        y1 = min(pb[0] + pb[2] - 1, 2 * py - pb[0])
        x0 = max(pb[1], 2 * px - (pb[1] + pb[3] - 1))
        x1 = min(pb[1] + pb[3] - 1, 2 * px - pb[1])
        if y1 < y0 or x1 < x0 or not fr.fp[py, px]:
            self._skip(i, "failed_symmetric_template")
            return None
        h, w = y1 - y0 + 1, x1 - x0 + 1
        vals = np.empty((h, w), dtype=np.float64)
        sym = np.empty((h, w), dtype=np.uint8)
        bbox = np.empty(4, dtype=np.int64)
        n = _symmetric_cy.symmetric_template(fr.image, fr.fp, py, px, y0, x0, vals, sym, bbox)
        if n == 0:
            self._skip(i, "failed_symmetric_template")
            return None
        t = _Template((y0, x0, h, w), vals, sym, "symmetric")
        t.crop(*(int(v) for v in bbox))
        if self.cfg.edge_handling == "noclip" and fr.mask is not None:
            self._patch(i, t)
        return t

    def _patch(self, i: int, t: _Template) -> None:
        """ "noclip": add parent pixels whose mirror is off the parent box (EDGE present)."""
        fr = self.frame
        edge_bit = 1 << self.cfg.mask_bits["EDGE"]
        y0, x0, h, w = t.box
        msub = fr.mask[y0 : y0 + h, x0 : x0 + w]
        if not np.any((msub & edge_bit)[t.fp != 0]):
            return
        self.peak_flags[i].add("patched")
        py, px = int(self.fpk[i, 0]), int(self.fpk[i, 1])
        pb = fr.pbox
        sl = (slice(pb[0], pb[0] + pb[2]), slice(pb[1], pb[1] + pb[3]))
        yy, xx = np.mgrid[sl]
        my, mx = 2 * py - yy, 2 * px - xx
        off = (my < pb[0]) | (my >= pb[0] + pb[2]) | (mx < pb[1]) | (mx >= pb[1] + pb[3])
        add = off & (fr.fp[sl] != 0)
        if not add.any():
            return
        ay, ax = np.nonzero(add)
        ay, ax = ay + pb[0], ax + pb[1]
        ny0, nx0 = min(y0, int(ay.min())), min(x0, int(ax.min()))
        ny1, nx1 = max(y0 + h, int(ay.max()) + 1), max(x0 + w, int(ax.max()) + 1)
        nbox = (ny0, nx0, ny1 - ny0, nx1 - nx0)
        vals = _on_box(t.values, t.box, nbox)
        tfp = _on_box(t.fp, t.box, nbox)
        vals[ay - ny0, ax - nx0] = np.maximum(fr.image[ay, ax], 0.0)
        tfp[ay - ny0, ax - nx0] = 1
        t.box, t.values, t.fp = nbox, vals, tfp

    # -------------------------------------------------------------- 3.3 ramp
    def _ramp(self, i: int, t: _Template) -> _Template:
        fr = self.frame
        if _symmetric_cy.edge_max(t.values, t.fp) < _RAMP_SIGMA * self.sigma1:
            return t
        s = self.ramp_s
        if not hasattr(self, "_psf_hat"):
            self._prepare_ramp()
        by0, bx0 = t.box[0] - s, t.box[1] - s
        bh, bw = t.box[2] + 2 * s, t.box[3] + 2 * s
        bbox = (by0, bx0, bh, bw)
        ramp = np.zeros((bh, bw), dtype=np.float64)
        _symmetric_cy.ramp_image(t.values, t.fp, self._psf_hat, s, s, ramp)
        pdil = _on_box(self._pdil, (0, 0, fr.h, fr.w), bbox)
        inimg = _on_box(fr.inimg, (0, 0, fr.h, fr.w), bbox)
        img = _on_box(fr.image, (0, 0, fr.h, fr.w), bbox)
        J = np.where((pdil != 0) & (inimg != 0), img, 0.0)
        J = np.where(J == 0, ramp, J)
        py, px = int(self.fpk[i, 0]) - by0, int(self.fpk[i, 1]) - bx0
        vals = np.empty((bh, bw), dtype=np.float64)
        sym = np.empty((bh, bw), dtype=np.uint8)
        bb = np.empty(4, dtype=np.int64)
        _symmetric_cy.symmetric_template(np.ascontiguousarray(J), pdil, py, px, 0, 0, vals, sym, bb)
        sym &= inimg
        vals *= sym
        if not sym.any():
            return t
        ys, xs = np.nonzero(sym)
        nt = _Template(bbox, vals, sym, t.kind)
        nt.crop(int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max()))
        self.peak_flags[i].add("ramped")
        return nt

    def _prepare_ramp(self) -> None:
        fr = self.frame
        s = self.ramp_s
        # The normalised PSF cut to offsets within [-s, s], at the parent box's centre.
        py0, px0, ph, pw = self.pbox
        cy, cx = int((py0 + py0 + ph - 1) / 2), int((px0 + px0 + pw - 1) / 2)
        arr, _, _ = self.psf.image(float(cy), float(cx))
        hh, hw = arr.shape[0] // 2, arr.shape[1] // 2
        ry, rx = min(hh, s), min(hw, s)
        hat = np.array(arr[hh - ry : hh + ry + 1, hw - rx : hw + rx + 1], dtype=np.float64)
        mx = hat.max()
        self._psf_hat = np.ascontiguousarray(hat / mx if mx > 0 else hat)
        self._pdil = np.empty((fr.h, fr.w), dtype=np.uint8)
        prefix = np.empty((fr.h, fr.w + 1), dtype=np.int32)
        _symmetric_cy.dilate_disc(fr.fp, s, self._pdil, prefix)

    # -------------------------------------------------------------- 3.4-3.6
    def _median(self, t: _Template) -> None:
        hsz = self.cfg.median_filter_halfsize
        if hsz == 0 or t.box[2] < 2 * hsz + 1 or t.box[3] < 2 * hsz + 1:
            return
        out = np.empty_like(t.values)
        work = np.empty((2 * hsz + 1) ** 2, dtype=np.float64)
        _symmetric_cy.median_smooth(t.values, hsz, out, work, t.fp)
        out *= t.fp
        t.values = out

    def _monotonic(self, i: int, t: _Template) -> None:
        py, px = int(self.fpk[i, 0]) - t.box[0], int(self.fpk[i, 1]) - t.box[1]
        scratch = np.empty_like(t.values)
        _monotonic_cy.shadow_monotonic(t.values, py, px, scratch)
        t.monotonic = True

    def _clip(self, t: _Template) -> None:
        bb = np.empty(4, dtype=np.int64)
        n = _symmetric_cy.clip_to_nonzero(t.values, t.fp, bb)
        if n > 0:
            t.crop(*(int(v) for v in bb))
        else:
            t.values[:] = 0.0

    # -------------------------------------------------------------- 3.7-3.8
    def _active(self) -> list[int]:
        return [i for i in range(self.N) if self.templates[i] is not None and not self.skipped[i]]

    def _weight(self) -> None:
        fr = self.frame
        act = self._active()
        if not act:
            return
        pmask = fr.fp != 0
        cols = []
        for i in act:
            t = self.templates[i]
            cols.append(_on_box(t.values, t.box, (0, 0, fr.h, fr.w))[pmask])
        A = np.stack(cols, axis=1)
        w, *_ = np.linalg.lstsq(A, fr.image[pmask], rcond=-1)
        # a weight at or below 0 would leave its child without flux (config docstring)
        w = np.maximum(w, self.cfg.min_template_weight)
        for k, i in enumerate(act):
            t = self.templates[i]
            t.values = np.ascontiguousarray(t.values * w[k])
            t.weight *= float(w[k])

    def _remove_degenerate(self) -> bool:
        act = self._active()
        n = len(act)
        if n < 2:
            return False
        T = [self.templates[i] for i in act]
        D = np.zeros((n, n))
        for a in range(n):
            for b in range(a, n):
                ov = _overlap(T[a].box, T[b].box)
                if ov is None:
                    continue
                y0, y1, x0, x1 = ov
                ta, tb = T[a], T[b]
                sa = (slice(y0 - ta.box[0], y1 - ta.box[0]), slice(x0 - ta.box[1], x1 - ta.box[1]))
                sb = (slice(y0 - tb.box[0], y1 - tb.box[0]), slice(x0 - tb.box[1], x1 - tb.box[1]))
                both = (ta.fp[sa] != 0) & (tb.fp[sb] != 0)
                D[a, b] = D[b, a] = float(np.sum(ta.values[sa] * tb.values[sb] * both))
        for a in range(n):
            best, bestc = -1, -np.inf
            for b in range(a):
                prod = D[a, a] * D[b, b]
                c = D[a, b] / math.sqrt(prod) if prod > 0 else 0.0
                if c > self.cfg.max_temp_dot_prod and c > bestc:
                    best, bestc = b, c
            if best < 0:
                continue
            i, j = act[a], act[best]
            pi, pj = self.is_psf[i], self.is_psf[j]
            if pi != pj:
                drop = i if pi else j
            else:
                mi = T[a].values.max() if T[a].values.size else -np.inf
                mj = T[best].values.max() if T[best].values.size else -np.inf
                drop = j if mi >= mj else i
            self._skip(drop, "degenerate")
            self.templates[drop] = None
            return True
        return False

    # -------------------------------------------------------------- 3.9 apportion
    def _apportion(self) -> SingleBandResult:
        cfg = self.cfg
        fr = self.frame
        act = self._active()
        pb = fr.pbox
        # Work on the parent box only: templates outside P never receive flux.
        pimg = np.ascontiguousarray(fr.image[pb[0] : pb[0] + pb[2], pb[1] : pb[1] + pb[3]])
        pmask = np.ascontiguousarray(self.fp_box.view(np.uint8))
        boxes = np.array(
            [
                (t.box[0] - pb[0], t.box[1] - pb[1], t.box[2], t.box[3])
                for t in (self.templates[i] for i in act)
            ],
            dtype=np.int64,
        ).reshape(-1, 4)
        vals = [self.templates[i].values for i in act]
        flat = np.concatenate([v.ravel() for v in vals]) if vals else np.zeros(0)
        offsets = np.zeros(len(act) + 1, dtype=np.int64)
        if vals:
            offsets[1:] = np.cumsum([v.size for v in vals])
        tsum = np.zeros((1,) + pimg.shape, dtype=np.float64)
        _apportion_cy.template_sum(flat, offsets, boxes, pmask, tsum)
        portion = np.empty_like(flat)
        _apportion_cy.apportion(pimg[None], tsum, flat, offsets, boxes, pmask, portion)
        tsum2 = tsum[0]
        unclaimed = (pmask != 0) & (tsum2 == 0)
        unassigned = np.where(unclaimed, pimg, 0.0)
        final_fp = self.fp_box.astype(bool)
        stray_vals = None
        cy = cx = None
        rule = cfg.stray_flux_rule
        if cfg.assign_stray_flux and rule != "trim" and act:
            cand = unclaimed & (pimg > 0)
            cy, cx = np.nonzero(cand)
            if cy.size:
                stray_vals = self._stray(
                    act, boxes, cy.astype(np.int64), cx.astype(np.int64), pimg[cy, cx]
                )
                given = stray_vals.sum(axis=0) > 0
                unassigned[cy[given], cx[given]] = 0.0
        elif rule == "trim" and cfg.assign_stray_flux:
            final_fp = final_fp & ~unclaimed
        children: list[Child] = []
        dtype = self.image.dtype
        cons_err, tmpl_err = self._flux_errors(act, boxes, flat, pmask, pimg, stray_vals, cy, cx)
        for k, i in enumerate(act):
            t = self.templates[i]
            b = boxes[k]
            por = portion[offsets[k] : offsets[k + 1]].reshape(int(b[2]), int(b[3]))
            ov = _overlap(tuple(int(v) for v in b), (0, 0, pb[2], pb[3]))
            sflags = set(self.peak_flags[i])
            if ov is not None:
                cbox = (ov[0], ov[2], ov[1] - ov[0], ov[3] - ov[2])
            else:
                cbox = None
            sy = sx = sv = None
            if stray_vals is not None:
                got = stray_vals[k] > 0
                if got.any():
                    sy, sx, sv = cy[got], cx[got], stray_vals[k][got]
                    sflags.add("has_stray_flux")
                    y0, y1 = int(sy.min()), int(sy.max()) + 1
                    x0, x1 = int(sx.min()), int(sx.max()) + 1
                    if cbox is not None:
                        y0, x0 = min(y0, cbox[0]), min(x0, cbox[1])
                        y1, x1 = max(y1, cbox[0] + cbox[2]), max(x1, cbox[1] + cbox[3])
                    cbox = (y0, x0, y1 - y0, x1 - x0)
            if cbox is None:
                cbox = (int(self.fpk[i, 0]) - pb[0], int(self.fpk[i, 1]) - pb[1], 1, 1)
            cons = _on_box(por, tuple(int(v) for v in b), cbox)
            if sv is not None:
                cons[sy - cbox[0], sx - cbox[1]] += sv
            children.append(self._child(i, t, cons.astype(dtype, copy=False), cbox, sflags))
            children[-1].flux_err = float(cons_err[k])
            children[-1].template_flux_err = float(tmpl_err[k])
        if cfg.propagate_all_peaks:
            for i in range(self.N):
                if self.templates[i] is None or self.skipped[i]:
                    cons = np.zeros((pb[2], pb[3]), dtype=dtype)
                    children.append(self._zero_child(i, cons))
                    children[-1].flux_err = 0.0
            children.sort(key=lambda c: c.index)
        tsum_out = tsum2 if cfg.get_template_sum else None
        unassigned = unassigned.astype(dtype, copy=False)
        return SingleBandResult(
            children=children,
            stray_flux=float(unassigned.sum(dtype=np.float64)),
            shape=self.image.shape,
            footprint_box=self.pbox,
            footprint=self.fp_box.astype(bool),
            final_footprint=final_fp,
            unassigned=unassigned,
            n_peaks=self.N,
            flags=frozenset(self.flags),
            peak_flags=[frozenset(f) for f in self.peak_flags],
            template_sum=tsum_out,
            dtype=dtype,
        )

    def _flux_errors(self, act, boxes, flat, pmask, pimg, stray_vals, cy, cx):
        """(n_active,) standard deviations of the children's conserved fluxes and of their
        templates' fluxes (see :class:`Child`), from the variance on the parent box."""
        from .apportion import FlatStack
        from .metrics import conserved_flux_errors, fisher_flux_errors

        pb = self.frame.pbox
        sl = (slice(pb[0], pb[0] + pb[2]), slice(pb[1], pb[1] + pb[3]))
        var = np.asarray(self.frame.variance[sl], dtype=np.float64)
        good = np.isfinite(var) & (var > 0) & (pmask != 0)
        if self.frame.mask is not None:
            good &= ~np.asarray(self.frame.mask[sl], dtype=bool)
        var = np.where(good, var, 0.0)
        n = len(act)
        if n == 0:
            return np.zeros(0), np.zeros(0)
        flat = np.ascontiguousarray(flat, dtype=np.float64)
        stack = FlatStack(flat, boxes, 1)
        cons2 = conserved_flux_errors(stack, var[None], pmask)[:, 0] ** 2
        if stray_vals is not None and cy is not None and cy.size:
            # a stray pixel's share is the part of its value the child received
            share = stray_vals / np.where(pimg[cy, cx] != 0, pimg[cy, cx], 1.0)[None]
            cons2 += (share**2 * var[cy, cx][None]).sum(axis=1)
        ivar = np.divide(1.0, var, out=np.zeros_like(var), where=var > 0)
        tmpl = fisher_flux_errors(stack, ivar[None], stack.sums()[:, 0], np.arange(n), n)
        return np.sqrt(cons2), tmpl[:, 0]

    def _stray(self, act, boxes, cy, cx, values) -> np.ndarray:
        """(n_active, n_candidates) stray values given to each active child."""
        cfg = self.cfg
        pb = self.frame.pbox
        n = len(act)
        is_psf = np.ascontiguousarray(self.is_psf[act].astype(np.uint8))
        contrib = np.zeros((n, cy.size), dtype=np.float64)
        rule = cfg.stray_flux_rule
        mode = _POINT_RULES.index(cfg.stray_flux_to_point_sources)
        if rule == "r-to-peak":
            peaks = np.ascontiguousarray(self.fpk[act] - np.array([pb[0], pb[1]]), dtype=np.int64)
            _apportion_cy.r_to_peak(cy, cx, peaks, contrib)
        elif rule == "r-to-footprint":
            for k, i in enumerate(act):
                fpk = self._fp_on_parent(self.templates[i], boxes[k])
                if not fpk.any():
                    contrib[k] = 1.0 / (1.0 + 1e12)
                    continue
                d = ndimage.distance_transform_edt(~fpk)
                d2 = np.rint(d[cy, cx] ** 2)
                contrib[k] = 1.0 / (1.0 + d2)
        else:  # nearest-footprint
            use_psf = mode == 1
            near = self._nearest(act, boxes, cy, cx, use_psf)
            if near is None and mode == 0:
                near = self._nearest(act, boxes, cy, cx, True)
            if near is not None:
                ok = near >= 0
                contrib[near[ok], np.flatnonzero(ok)] = 1.0
        out = np.empty_like(contrib)
        _apportion_cy.assign_stray(
            np.ascontiguousarray(values, dtype=np.float64),
            contrib,
            is_psf,
            mode,
            float(cfg.clip_stray_flux_fraction),
            out,
        )
        return out

    def _fp_on_parent(self, t: _Template, box) -> np.ndarray:
        pb = self.frame.pbox
        fpk = _on_box(t.fp, tuple(int(v) for v in box), (0, 0, pb[2], pb[3])) != 0
        return fpk & (self.fp_box != 0)

    def _nearest(self, act, boxes, cy, cx, use_psf: bool) -> np.ndarray | None:
        """Index (into ``act``) of the L1-nearest entered footprint at each candidate."""
        pb = self.frame.pbox
        H, W = pb[2], pb[3]
        index = np.full((H, W), -1, dtype=np.int64)
        dist = np.full((H, W), H + W, dtype=np.int64)
        entered = False
        for k, i in enumerate(act):
            if self.is_psf[i] and not use_psf:
                continue
            fpk = self._fp_on_parent(self.templates[i], boxes[k])
            if fpk.any():
                entered = True
                index[fpk] = k
                dist[fpk] = 0
        if not entered:
            return None
        _apportion_cy.nearest_footprint(index, dist)
        return index[cy, cx]

    # -------------------------------------------------------------- children
    def _child(self, i, t, cons, cbox, flags) -> Child:
        fr = self.frame
        oy, ox = self.pbox[0], self.pbox[1]
        box = (int(cbox[0] + oy), int(cbox[1] + ox), int(cbox[2]), int(cbox[3]))
        tbox = (int(t.box[0] + fr.y0), int(t.box[1] + fr.x0), int(t.box[2]), int(t.box[3]))
        kind = "psf" if t.kind == "psf" else ("monotonic" if t.monotonic else "symmetric")
        fit = self.fits[i]
        return Child(
            index=int(i),
            peak=(int(self.pk[i, 0]), int(self.pk[i, 1])),
            box=box,
            conserved=cons,
            template=t.values,
            template_box=tbox,
            template_footprint=t.fp.astype(bool),
            template_kind=kind,
            flux=float(cons.sum(dtype=np.float64)),
            flags=frozenset(flags),
            weight=t.weight,
            psf_flux=fit.get("psf_flux"),
            psf_center=fit.get("psf_center"),
            psf_fit={k: v for k, v in fit.items() if k not in ("psf_flux", "psf_center")},
            stages=self.stages[i],
        )

    def _zero_child(self, i, cons) -> Child:
        box = tuple(int(v) for v in self.pbox)
        return Child(
            index=int(i),
            peak=(int(self.pk[i, 0]), int(self.pk[i, 1])),
            box=box,
            conserved=cons,
            template=np.zeros((0, 0)),
            template_box=(box[0], box[1], 0, 0),
            template_footprint=np.zeros((0, 0), dtype=bool),
            template_kind="none",
            flux=0.0,
            flags=frozenset(self.peak_flags[i] | {"skipped"}),
            stages=self.stages[i],
        )


# ---------------------------------------------------------------------------- helpers
#: Least-squares problems of at least this many matrix entries are reduced to their triangular
#: factor before LAPACK (see :func:`_lstsq`). OpenBLAS runs the level-2 calls of smaller ones
#: (below 2304 x 4 = 9216 entries) on one thread anyway; they keep LAPACK's own path.
_QR_FIRST = 4096


@functools.lru_cache(maxsize=256)
def _gelsd_work(m: int, n: int) -> tuple[int, int]:
    """LAPACK dgelsd workspace sizes for an (m, n) problem with one right-hand side."""
    work, iwork, info = lapack.dgelsd_lwork(m, n, 1)
    if info != 0:
        raise np.linalg.LinAlgError(f"dgelsd_lwork failed (info={info})")
    return int(work), int(iwork)


def _lstsq(A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """Minimum-norm least squares; chi^2 = 1e30 when rank-deficient or rows <= columns.

    This is numpy's ``lstsq(A, b, rcond=-1)`` (SVD, LAPACK dgelsd, singular values counted
    above machine epsilon times the largest) called through scipy's thin LAPACK wrapper,
    which costs a third less per call on these small systems. A large tall ``A`` is first
    reduced to its triangular factor ``R`` (``A = QR``, the step dgelsd itself starts with)
    by single-threaded Householder reflections, so that dgelsd only sees the ``n x n``
    problem, and the residual is summed without BLAS: a threaded BLAS woke its threads for
    the ``m x n`` problem of every peak and made crowded parents 10-30 times slower.
    """
    m, n = A.shape
    if m == 0 or n == 0:
        return np.zeros(n), _BAD_CHISQ
    if m > n and m * n >= _QR_FIRST:  # the same minimum-norm solution and singular values
        A = np.ascontiguousarray(A, dtype=np.float64)
        b = np.ascontiguousarray(b, dtype=np.float64)
        R, c = np.empty((n, n)), np.empty(n)
        _linalg_cy.householder_reduce(A, b, R, c)
        sol, rank = _gelsd(R, c)
        return sol, (_BAD_CHISQ if rank < n else _linalg_cy.residual_ss(A, b, sol))
    sol, rank = _gelsd(A, b)
    if rank < n or m <= n:
        return sol, _BAD_CHISQ
    res = b - A @ sol
    return sol, float(res @ res)


def _gelsd(A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int]:
    """LAPACK dgelsd (rcond = eps) of a small system: the solution and the rank."""
    m, n = A.shape
    lwork, liwork = _gelsd_work(m, n)
    if m < n:  # LAPACK wants the right-hand side padded to max(m, n) rows
        b = np.concatenate([b, np.zeros(n - m)])
    x, _, rank, info = lapack.dgelsd(A, b, lwork, liwork, -1.0)
    if info != 0:
        raise np.linalg.LinAlgError(f"SVD did not converge in the PSF fit (info={info})")
    return x[:n].copy(), int(rank)


def _axis_ratio(fp: np.ndarray) -> float:
    """Minor/major axis ratio of a footprint's unweighted second moments."""
    ys, xs = np.nonzero(fp)
    if ys.size < 2:
        return 1.0
    c = np.cov(np.stack([ys, xs]).astype(np.float64), bias=True)
    ev = np.linalg.eigvalsh(c)
    if ev[1] <= 0:
        return 1.0
    return float(math.sqrt(max(ev[0], 0.0) / ev[1]))
