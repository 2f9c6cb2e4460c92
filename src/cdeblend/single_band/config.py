"""Settings of the single-band deblender: :class:`SingleBandConfig` and its presets.

Also the names the settings choose from (mask planes, edge handling, stray-flux rules), which
the step modules read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "DEFAULT_MASK_BITS",
    "EDGE_CHOICES",
    "POINT_RULES",
    "SMALL_PSF_FWHM",
    "STRAY_RULES",
    "SingleBandConfig",
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


#: Values of ``SingleBandConfig.edge_handling``.
EDGE_CHOICES = ("ramp", "clip", "noclip")
#: Values of ``SingleBandConfig.stray_flux_rule``.
STRAY_RULES = ("trim", "r-to-peak", "r-to-footprint", "nearest-footprint")
#: Values of ``SingleBandConfig.stray_flux_to_point_sources`` (their index is the kernel's mode).
POINT_RULES = ("necessary", "always", "never")
#: PSF FWHM (pixels) below which the default median filter is 3 x 3 instead of 5 x 5.
SMALL_PSF_FWHM = 3.0


@dataclass(frozen=True)
class SingleBandConfig:
    """Settings of :class:`SingleBandDeblender`.

    The defaults are the LSST task's except ``weight_templates=True`` (templates scaled by a
    joint least-squares fit to the image, its pixels weighted by their inverse variance),
    ``stray_flux_rule="r-to-peak"`` (stray flux goes to the children instead of being
    trimmed away), ``subpixel_centers=True``, ``faint_psf_snr=20`` (faint peaks on a
    neighbour's wing take the PSF template, holding at least 0.7 times what their floored
    symmetric template held: ``faint_psf_flux_floor=0.7``), ``subtract_psf_templates=True``
    (symmetric
    templates made without the point sources; all measured on simulated LSST-like blends,
    see the README's Defaults) and the footprint of a call without one
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
    half_pixel_symmetry : bool
        Mirror each symmetric template about the point nearest the peak's centre among the
        pixel and the half-way points between pixels (True; :meth:`lsst`: the peak pixel).
        The centre is the sub-pixel one (``subpixel_centers`` or ``centers=``); a bright
        star 0.4 px off its peak pixel mirrored about that pixel gets a flat core, which
        the template weights then inflate into a halo (README, "Defaults").
    psf_chisq1, psf_chisq2, psf_chisq2b : float
        chi^2/dof cuts of the unshifted fit, the fit with derivative terms, and the refit at
        the shifted centre. Setting all three to 0 forces symmetric templates.
    tiny_footprint_size : int
        A PSF-fit stamp whose shorter side is <= max(this, 2) skips the peak.
    edge_handling : {"ramp", "clip", "noclip"}
        "ramp": extend templates that are cut off at the footprint edge with a PSF-shaped
        ramp (3.3); "clip": leave them truncated; "noclip": patch pixels whose mirror falls
        outside the parent box when the template touches EDGE-masked pixels (3.2).
    subtract_psf_templates : bool
        Make the symmetric templates from the image minus the PSF templates (True;
        :meth:`lsst` uses the image). A point source whose mirror image about a neighbour
        lands on another source is otherwise part of that neighbour's symmetric template
        (the minimum of two bright pixels), and the joint weights then floor its own PSF
        template: on the simulated single-band tuning sets, sources with S/N >= 20 kept
        down to 6% of their flux that way. Subtracting them improved the median flux
        error over all entries and in the blended bins (README, "Defaults").
    median_smooth_template : bool
        Median filter each template's interior (3.4).
    median_filter_halfsize : int or None
        Half size h of the (2h+1)^2 median box. None (default): the task's 2, or 1 when the
        PSF's FWHM is below ``SMALL_PSF_FWHM`` (3) pixels (:meth:`lsst`: 2). A 5 x 5 median
        is wider than 1.7 FWHM of such a PSF and flattens a star's core (a bright star of
        the real EMMI image, FWHM about 2 px: its template's core fell to a sixth and the
        template weights then inflated it 7.7-fold into a halo); every simulated set
        has FWHM >= 3.1 pixels and keeps 2.
    monotonic_template : bool
        Apply the shadow-casting monotonic projection (3.5).
    clip_footprint_to_nonzero : bool
        Trim template footprints to their non-zero spans (3.6).
    weight_templates : bool
        Scale templates by a least-squares fit to the image (3.7).
    weight_by_variance : bool
        Weight that fit's pixels by their inverse variance (True; :meth:`lsst` fits with
        equal weights, as the LSST task does when it weights templates).
    min_template_weight : float
        Floor of those least-squares weights (0.1). The unconstrained fit gives a template
        that its neighbours' templates can stand in for a weight near or below 0, and its
        child then gets no flux: 22 of 861 sources with S/N >= 20 were lost that way on a
        harder simulated set. With the floor no bright source was lost on any set, and the
        median flux error was the same or better (README, "Defaults").
    faint_psf_snr : float
        A peak without a PSF template takes one when its PSF fit's flux has S/N below
        this (``flux sqrt(sum PSF^2) / sigma1``) and its symmetric template holds more
        than ``faint_psf_ratio`` times that flux: a faint peak's symmetric template is
        mostly its neighbours' light (a peak between two bright sources gets both), and
        its PSF fit fails the chi^2 cuts because of the neighbours, not because the source
        is extended. The fit is the peak's first one when that failed the cuts at such a
        S/N, else a fit to the image minus the other templates (the first fit also took a
        neighbour's wing for the peak's light). The weight of such a PSF template is
        floored by ``faint_psf_flux_floor``. Its child has the flag
        ``faint_psf``. 20 by default (30 lost bright sources on the tuning sets); 0 turns
        the rule off (:meth:`lsst`). On the simulated single-band tuning sets the median
        flux error improved over all entries and in every blendedness bin (README,
        "Defaults").
    faint_psf_ratio : float
        See ``faint_psf_snr`` (5).
    faint_psf_flux_floor : float
        Floor of the weight of a PSF template given by ``faint_psf_snr``: the template
        holds at least this times ``min_template_weight`` times the flux of the symmetric
        template it replaced (at 1, what that symmetric template kept when the joint fit
        floored it); the PSF template then stays. 0 gives the plain
        ``min_template_weight`` floor and, when the fit floors the PSF template there, the
        symmetric template back (:meth:`lsst`: 0). A galaxy of S/N 20-100 beside a much
        brighter one can pass the faint-peak rule: its PSF fit, which the neighbour's PSF
        and the background also take light from, holds a quarter of its flux or less, and
        the joint fit scales that template down further while it floors the symmetric one
        (the neighbour's template stands in for it). On the simulated single-band tuning
        sets, sources with S/N >= 20 keeping < 20% of their flux: 14 at 0, 11 at 0.5, 7 at
        0.7 (the default), 6 at 1 (5 without the faint-peak rule); the swapped sources
        below S/N 10 kept their median error at 0.7 (0.66 against 0.63 at 0, 0.95 at 1,
        1.36 without the rule), and the median flux errors of all sources moved within
        their bootstrap noise in every bin. Held out, the one lost S/N >= 20 source was
        kept (README, "Defaults").
    remove_degenerate_templates : bool
        Drop one of each pair of templates whose cosine exceeds ``max_temp_dot_prod`` (3.8).
    max_temp_dot_prod : float
        Cosine above which two templates are degenerate.
    assign_stray_flux : bool
        Give flux in pixels that no template claims to children by ``stray_flux_rule``.
    stray_flux_rule : {"trim", "r-to-peak", "r-to-footprint", "nearest-footprint"}
        How stray flux is shared; "trim" gives none and shrinks the final footprint.
    stray_flux_negative : bool
        Also hand out the negative unclaimed pixels, so that the children add up to the
        whole footprint and a conserved flux does not keep only the positive noise around
        it (on ``sim_single`` the positive-only rule biases the conserved fluxes up by about
        1 sigma of their noise). Off by default (the LSST rule, positive pixels only): that
        upward noise happens to offset the light lost outside the footprint, and measured
        slightly better against the truth on the simulated sets (median |dF/F| 0.0735
        against 0.0743 on ``single_tune``, 0.0738 against 0.0757 held out; README).
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
    half_pixel_symmetry: bool = True
    psf_chisq1: float = 1.5
    psf_chisq2: float = 1.5
    psf_chisq2b: float = 1.5
    tiny_footprint_size: int = 2
    edge_handling: str = "ramp"
    subtract_psf_templates: bool = True
    median_smooth_template: bool = True
    median_filter_halfsize: int | None = None
    monotonic_template: bool = True
    clip_footprint_to_nonzero: bool = True
    weight_templates: bool = True
    weight_by_variance: bool = True
    min_template_weight: float = 0.1
    faint_psf_snr: float = 20.0
    faint_psf_ratio: float = 5.0
    faint_psf_flux_floor: float = 0.7
    remove_degenerate_templates: bool = False
    max_temp_dot_prod: float = 0.5
    assign_stray_flux: bool = True
    stray_flux_rule: str = "r-to-peak"
    stray_flux_negative: bool = False
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
        ``subpixel_centers=False``, ``half_pixel_symmetry=False``,
        ``median_filter_halfsize=2``, ``faint_psf_snr=0``, ``faint_psf_flux_floor=0``,
        ``weight_by_variance=False``, ``subtract_psf_templates=False``); ``overrides``
        replace single fields."""
        return cls(
            **{
                "weight_templates": False,
                "weight_by_variance": False,
                "stray_flux_rule": "trim",
                "subpixel_centers": False,
                "half_pixel_symmetry": False,
                "median_filter_halfsize": 2,
                "faint_psf_snr": 0.0,
                "faint_psf_flux_floor": 0.0,
                "subtract_psf_templates": False,
                **overrides,
            }
        )

    def median_halfsize(self, fwhm: float) -> int:
        """The median filter's half size for a PSF of ``fwhm`` pixels
        (``median_filter_halfsize``, or when None 1 below ``SMALL_PSF_FWHM``, else 2)."""
        if self.median_filter_halfsize is not None:
            return self.median_filter_halfsize
        return 1 if fwhm < SMALL_PSF_FWHM else 2

    def __post_init__(self) -> None:
        if self.footprint_nsigma is not None and not np.isfinite(self.footprint_nsigma):
            raise ValueError(
                f"footprint_nsigma must be a finite number or None, got {self.footprint_nsigma!r}"
            )
        if self.edge_handling not in EDGE_CHOICES:
            raise ValueError(
                f"edge_handling must be one of {EDGE_CHOICES}, got {self.edge_handling!r}"
            )
        if self.stray_flux_rule not in STRAY_RULES:
            raise ValueError(
                f"stray_flux_rule must be one of {STRAY_RULES}, got {self.stray_flux_rule!r}"
            )
        if self.stray_flux_to_point_sources not in POINT_RULES:
            raise ValueError(
                f"stray_flux_to_point_sources must be one of {POINT_RULES}, "
                f"got {self.stray_flux_to_point_sources!r}"
            )
        if not (np.isfinite(self.min_template_weight) and self.min_template_weight >= 0):
            raise ValueError(
                f"min_template_weight must be finite and >= 0, got {self.min_template_weight!r}"
            )
        for name in ("faint_psf_snr", "faint_psf_ratio", "faint_psf_flux_floor"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {v!r}")
        h = self.median_filter_halfsize
        if h is not None and (isinstance(h, bool) or not isinstance(h, int) or h < 0):
            raise ValueError(f"median_filter_halfsize must be an int >= 0 or None, got {h!r}")
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
