"""The single-band deblender's driver: :class:`SingleBandDeblender` and one parent's run.

:meth:`SingleBandDeblender.deblend` checks every input at the top (:mod:`.inputs`);
:class:`ParentRun` then applies the parent-level skip rules and runs one step after the
other, each a small method that calls the module doing the work: the PSF fits
(:mod:`.psf_fit`), the symmetric templates (:mod:`.templates`), their weights and the
removal of degenerate ones (:mod:`.weights`), the split of the image (:mod:`.portions`) and
of the stray flux (:mod:`.stray`), and the children (:mod:`.results`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..peaks import subpixel_centers
from .config import SingleBandConfig
from .faint import swap_faint_templates, weight_keeping_faint
from .frame import Frame, Template
from .inputs import check_inputs, estimate_sigma1
from .portions import Portions, apportion_templates, conserved_image, flux_errors
from .psf import PsfImages, psf_fwhm_at, psf_fwhm_from_moments
from .psf_fit import PsfFit, PsfFitter
from .results import Child, SingleBandResult, skipped_child, template_child
from .stray import Stray, hand_out_stray
from .templates import (
    Ramp,
    clip_to_nonzero,
    make_monotonic,
    median_smooth,
    patch_edges,
    sum_templates,
    symmetric_template,
    symmetry_shift,
)
from .weights import degenerate_template, weight_templates
from .wings import total_flux_error, wing_ratios

__all__ = ["MAX_DEGENERATE_REMOVALS", "ParentRun", "SingleBandDeblender", "axis_ratio"]

#: Most degenerate templates removed from one parent.
MAX_DEGENERATE_REMOVALS = 50


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
        x = check_inputs(cfg, image, variance, psf, peaks, footprint, mask, centers)
        if sigma1 is None:
            sigma1 = estimate_sigma1(x.variance, x.mask, cfg)
        return self._deblend_checked(
            x.image,
            x.variance,
            x.psf,
            x.peaks,
            x.footprint,
            x.mask,
            sigma1,
            psf_fwhm,
            x.centers,
            x.no_data,
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
                fwhm = psf_fwhm_at(psf, float(ys.mean()), float(xs.mean()))
            else:
                fwhm = psf_fwhm_from_moments(psf)
        if cen is None:
            cen = pk.astype(np.float64)
            if self.config.subpixel_centers:
                cen = subpixel_centers(image, pk)
        fp_box = np.ascontiguousarray(fp[pbox[0] : pbox[0] + pbox[2], pbox[1] : pbox[1] + pbox[3]])
        run = ParentRun(
            self.config, image, variance, mask, fp, fp_box, pbox, psf, pk, cen, float(sigma1), fwhm
        )
        run.no_data = no_data  # (H, W) bool pixels without data, or None
        return run.execute()


class ParentRun:
    """One parent being deblended: the skip rules, then one method per step.

    The parent (``fp``, ``pbox``, ``fp_box``) and its peaks (``pk``, ``cen``) are in the image
    frame; from :meth:`enter_frame` on, the steps work in the working frame (``frame``,
    ``fpk``, ``fcen``). ``templates[i]`` is peak i's template (None: no child) and
    ``peak_flags[i]`` its flags; ``skipped[i]`` marks a peak that takes no further part.
    """

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
        self.templates: list[Template | None] = [None] * self.N
        self.fits: list[dict[str, Any]] = [{} for _ in range(self.N)]
        self.stages: list[dict[str, Any]] = [{} for _ in range(self.N)]

    # -------------------------------------------------------------- driver
    def execute(self) -> SingleBandResult:
        """The parent-level rules (single peak, size, masks, PSF, peak count), then the
        steps; an exception in the steps flags the parent ``failed`` with
        ``catch_failures``."""
        cfg = self.cfg
        if self.N < 2 and not cfg.deblend_single_peak:
            return self.empty_result()
        why = self.skip_reason()
        if why is not None:
            return self.skip_parent(why)
        if not (self.fwhm > 0) or not math.isfinite(self.fwhm):
            if not cfg.catch_failures:
                raise ValueError(f"psf_fwhm must be finite and > 0, got {self.fwhm}")
            self.flags.add("failed")
            return self.empty_result(error=f"invalid PSF FWHM {self.fwhm}")
        if cfg.max_number_of_peaks > 0 and self.N > cfg.max_number_of_peaks:
            self.flags.add("too_many_peaks")
            self.skipped[cfg.max_number_of_peaks :] = True
        if not cfg.catch_failures:
            return self.steps()
        try:
            return self.steps()
        except Exception as exc:  # failure isolation: flag the parent and keep going
            self.flags.add("failed")
            self.templates = [None] * self.N
            return self.empty_result(error=f"{type(exc).__name__}: {exc}")

    def steps(self) -> SingleBandResult:
        """The deblending steps (docs/spec/single_band.md 3.1-3.9)."""
        cfg = self.cfg
        self.enter_frame()
        if cfg.fit_psfs:
            self.fit_psfs()
        self.build_templates()
        swapped = swap_faint_templates(self)
        if cfg.weight_templates:
            weight_keeping_faint(self, swapped)
        if cfg.remove_degenerate_templates:
            self.remove_degenerate()
        return self.apportion()

    # -------------------------------------------------------------- skip rules
    def skip_reason(self) -> str | None:
        """``parent_too_big`` or ``masked`` when a parent-level rule skips the parent."""
        cfg = self.cfg
        area = int(self.fp_box.sum())
        if (
            (cfg.max_footprint_area > 0 and area > cfg.max_footprint_area)
            or (
                cfg.max_footprint_size > 0
                and max(self.pbox[2], self.pbox[3]) > cfg.max_footprint_size
            )
            or (
                cfg.min_footprint_axis_ratio > 0
                and axis_ratio(self.fp_box) < cfg.min_footprint_axis_ratio
            )
        ):
            return "parent_too_big"
        if self.over_mask_limits():
            return "masked"
        return None

    def over_mask_limits(self) -> bool:
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

    def skip_parent(self, why: str) -> SingleBandResult:
        """The result of a skipped parent (its footprint marked in an integer mask)."""
        self.flags.update((why, "skipped"))
        cfg = self.cfg
        if self.mask is not None and cfg.not_deblended_mask is not None:
            bit = self.mask.dtype.type(1 << cfg.mask_bits[cfg.not_deblended_mask])
            self.mask[self.fp] |= bit
        return self.empty_result()

    def skip(self, i: int, why: str) -> None:
        """Skip peak ``i`` (no template) for the reason ``why``."""
        self.peak_flags[i].add(why)
        self.skipped[i] = True

    def active(self) -> list[int]:
        """The peaks that have a template and were not skipped."""
        return [i for i in range(self.N) if self.templates[i] is not None and not self.skipped[i]]

    # -------------------------------------------------------------- steps
    def enter_frame(self) -> None:
        """Cut the working frame (grown by the ramp's reach) and move the peaks into it."""
        cfg = self.cfg
        self.ramp_s = int((1.5 * self.fwhm + 0.5) / 2) * 2 + 1
        grow = self.ramp_s if cfg.edge_handling == "ramp" else 0
        fr = Frame(self.image, self.variance, self.mask, self.fp, self.pbox, grow)
        self.frame = fr
        # Peaks and centres in frame coordinates.
        self.fpk = self.pk - np.array([fr.y0, fr.x0])
        self.fcen = self.cen - np.array([fr.y0, fr.x0])
        cen = self.cen
        self.psf = PsfImages(
            self.psf_in, lambda: (float(cen[:, 0].mean()), float(cen[:, 1].mean()))
        )
        self.ramp = Ramp(fr, self.psf, self.pbox, self.ramp_s, self.sigma1)
        self.is_psf = np.zeros(self.N, dtype=bool)
        # Peaks whose PSF fit failed the chi^2 cuts at S/N < faint_psf_snr: their fits.
        self.faint_fits: dict[int, PsfFit] = {}
        # The first fit records of peaks given a faint peak's PSF template.
        self.first_fits: dict[int, dict[str, Any]] = {}

    def fit_psfs(self) -> None:
        """3.1: fit the PSF to every peak; a good fit gives the peak a PSF template."""
        self.fitter = PsfFitter(self.cfg, self.frame, self.psf, self.fcen, self.fwhm, self.sigma1)
        for i in np.flatnonzero(~self.skipped):
            self.take_psf_fit(i, self.fitter.fit(i))

    def take_psf_fit(self, i: int, fit: PsfFit) -> None:
        """Record peak ``i``'s PSF fit: skip, flags, fit record and PSF template."""
        if fit.skip is not None:
            self.skip(i, fit.skip)
        self.peak_flags[i] |= fit.flags
        if fit.record:
            self.fits[i] = fit.record
        if fit.template is not None:
            self.templates[i] = fit.template
            self.is_psf[i] = True
        elif fit.skip is None and fit.snr < self.cfg.faint_psf_snr and fit.record:
            self.faint_fits[i] = fit

    def build_templates(self) -> None:
        """3.2-3.6 for every peak without a PSF template; with ``subtract_psf_templates``
        they are made from the image minus the PSF templates."""
        fr = self.frame
        image = fr.image
        psf_peaks = np.flatnonzero(self.is_psf & ~self.skipped)
        if self.cfg.subtract_psf_templates and psf_peaks.size:
            fr.image = image - sum_templates([self.templates[i] for i in psf_peaks], image.shape)
        try:
            for i in np.flatnonzero(~self.skipped & ~self.is_psf):
                self.build_template(i)
        finally:
            fr.image = image

    def build_template(self, i: int) -> None:
        """3.2-3.6: peak ``i``'s symmetric template, ramped, smoothed, monotonic, clipped."""
        cfg = self.cfg
        fr = self.frame
        py, px = int(self.fpk[i, 0]), int(self.fpk[i, 1])
        half, t = self.symmetric(i)
        if t is None:
            self.skip(i, "failed_symmetric_template")
            return
        if cfg.edge_handling == "noclip" and fr.mask is not None:
            if patch_edges(fr, t, py, px, 1 << cfg.mask_bits["EDGE"], half):
                self.peak_flags[i].add("patched")
        self.keep(i, "symmetric", t)
        if cfg.edge_handling == "ramp":
            ramped = self.ramp.apply(t, py, px, half)
            if ramped is not None:
                t = ramped
                self.peak_flags[i].add("ramped")
            self.keep(i, "ramped", t)
        if cfg.median_smooth_template:
            median_smooth(t, cfg.median_halfsize(self.fwhm))
            self.keep(i, "median", t)
        if cfg.monotonic_template:
            make_monotonic(t, py, px)
            self.keep(i, "monotonic", t)
        if cfg.clip_footprint_to_nonzero:
            clip_to_nonzero(t)
        self.templates[i] = t

    def symmetric(self, i: int) -> tuple[tuple[int, int], Template | None]:
        """Peak ``i``'s symmetric template and its centre's shift in half-pixels: about the
        half-pixel point nearest its sub-pixel centre (``half_pixel_symmetry``) when that
        template holds the peak pixel, else about the peak pixel."""
        py, px = int(self.fpk[i, 0]), int(self.fpk[i, 1])
        if self.cfg.half_pixel_symmetry:
            half = symmetry_shift(self.fcen[i] - self.fpk[i])
            if half != (0, 0):
                t = symmetric_template(self.frame, py, px, half)
                if t is not None and t.covers(py, px):
                    return half, t
        return (0, 0), symmetric_template(self.frame, py, px)

    def keep(self, i: int, name: str, t: Template) -> None:
        """Keep a copy of peak ``i``'s template after stage ``name`` (``keep_stages``)."""
        if not self.cfg.keep_stages:
            return
        fr = self.frame
        box = (t.box[0] + fr.y0, t.box[1] + fr.x0, t.box[2], t.box[3])
        self.stages[i][name] = (box, t.values.copy(), t.fp.astype(bool))

    def weight(self, floors: dict[int, float] | None = None) -> None:
        """3.7: scale the templates by a least-squares fit to the image (each weight
        floored at ``min_template_weight``, or at ``floors[i]`` for peak i when higher)."""
        act = self.active()
        if act:
            templates = [self.templates[i] for i in act]
            floor = self.cfg.min_template_weight
            if floors:
                floor = np.array([max(floor, floors.get(i, floor)) for i in act])
            weight_templates(self.frame, templates, floor, self.cfg.weight_by_variance)

    def remove_degenerate(self) -> None:
        """3.8: drop degenerate templates one at a time, reweighting after each."""
        cfg = self.cfg
        removals = 0
        while removals < MAX_DEGENERATE_REMOVALS and self.drop_degenerate():
            removals += 1
            if removals < MAX_DEGENERATE_REMOVALS and cfg.weight_templates:
                self.weight()

    def drop_degenerate(self) -> bool:
        """Drop one template of the first degenerate pair; whether one was dropped."""
        act = self.active()
        templates = [self.templates[i] for i in act]
        k = degenerate_template(templates, self.is_psf[act], self.cfg.max_temp_dot_prod)
        if k is None:
            return False
        self.skip(act[k], "degenerate")
        self.templates[act[k]] = None
        return True

    def apportion(self) -> SingleBandResult:
        """3.9: split the image among the templates, hand out the stray flux, and make the
        children."""
        cfg = self.cfg
        act = self.active()
        templates = [self.templates[i] for i in act]
        parts = apportion_templates(self.frame, self.fp_box, templates)
        unclaimed = parts.unclaimed()
        unassigned = np.where(unclaimed, parts.image, 0.0)
        final_fp = self.fp_box.astype(bool)
        stray = None
        if cfg.assign_stray_flux and cfg.stray_flux_rule == "trim":
            final_fp = final_fp & ~unclaimed
        elif cfg.assign_stray_flux and act:
            pb = self.frame.pbox
            peaks = self.fpk[act] - np.array([pb[0], pb[1]])
            is_psf = self.is_psf[act]
            stray = hand_out_stray(
                cfg, parts.image, unclaimed, templates, parts.boxes, is_psf, peaks, self.fp_box
            )
            if stray is not None:
                given = (stray.shares != 0).any(axis=0)
                unassigned[stray.y[given], stray.x[given]] = 0.0
        children = self.children(act, parts, stray)
        return self.result(
            children, unassigned, final_fp, parts.template_sum if cfg.get_template_sum else None
        )

    # -------------------------------------------------------------- results
    def children(self, act: list[int], parts: Portions, stray: Stray | None) -> list[Child]:
        """The children of the active peaks (and, with ``propagate_all_peaks``, an empty one
        for every other peak), in peak order."""
        pb = self.frame.pbox
        dtype = self.image.dtype
        cons_err, tmpl_err, deblend_err = flux_errors(self.frame, parts, stray)
        wings = wing_ratios(
            self.frame, self.psf, [self.templates[i] for i in act], self.centers(act)
        )
        children: list[Child] = []
        for k, i in enumerate(act):
            peak = (int(self.fpk[i, 0]) - pb[0], int(self.fpk[i, 1]) - pb[1])
            cons, cbox, has_stray = conserved_image(parts, k, stray, peak)
            flags = set(self.peak_flags[i])
            if has_stray:
                flags.add("has_stray_flux")
            child = self.child(i, cons.astype(dtype, copy=False), cbox, flags)
            child.flux_err = float(cons_err[k])
            child.template_flux_err = float(tmpl_err[k])
            child.deblend_flux_err = float(deblend_err[k])
            child.wing_flux = child.flux * float(wings[k])
            child.flux_total_err = total_flux_error(
                child.flux_err, child.deblend_flux_err, child.wing_flux
            )
            children.append(child)
        if self.cfg.propagate_all_peaks:
            for i in range(self.N):
                if self.templates[i] is None or self.skipped[i]:
                    child = self.zero_child(i, np.zeros((pb[2], pb[3]), dtype=dtype))
                    child.flux_err = child.deblend_flux_err = 0.0
                    child.wing_flux = child.flux_total_err = 0.0
                    children.append(child)
            children.sort(key=lambda c: c.index)
        return children

    def centers(self, act: list[int]) -> list[tuple[float, float]]:
        """Image (y, x) of each active peak's light: its PSF fit's centre for a PSF
        template, the peak's centre otherwise (for :func:`.wings.wing_ratios`)."""
        out = []
        for i in act:
            c = self.fits[i].get("psf_center") if self.is_psf[i] else None
            out.append(tuple(self.cen[i]) if c is None else tuple(c))
        return out

    def child(self, i: int, cons: np.ndarray, cbox, flags: set[str]) -> Child:
        """Peak ``i``'s child with conserved image ``cons`` on ``cbox`` (parent box)."""
        fr = self.frame
        t = self.templates[i]
        oy, ox = self.pbox[0], self.pbox[1]
        box = (int(cbox[0] + oy), int(cbox[1] + ox), int(cbox[2]), int(cbox[3]))
        tbox = (int(t.box[0] + fr.y0), int(t.box[1] + fr.x0), int(t.box[2]), int(t.box[3]))
        peak = (int(self.pk[i, 0]), int(self.pk[i, 1]))
        return template_child(int(i), peak, box, cons, t, tbox, flags, self.fits[i], self.stages[i])

    def zero_child(self, i: int, cons: np.ndarray) -> Child:
        """The all-zero child of a skipped peak (``propagate_all_peaks``)."""
        peak = (int(self.pk[i, 0]), int(self.pk[i, 1]))
        box = tuple(int(v) for v in self.pbox)
        return skipped_child(int(i), peak, box, cons, self.peak_flags[i], self.stages[i])

    def result(
        self, children, unassigned, final_fp, template_sum=None, error=None
    ) -> SingleBandResult:
        """The deblended parent (``unassigned`` and ``final_fp`` on the parent box)."""
        dtype = self.image.dtype
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
            template_sum=template_sum,
            error=error,
            dtype=dtype,
        )

    def empty_result(self, error: str | None = None) -> SingleBandResult:
        """The result without children: the whole footprint unassigned."""
        fpb = self.fp_box.astype(bool)
        unassigned = np.where(fpb, self.image[self.pslice()], 0).astype(self.image.dtype)
        return self.result([], unassigned, fpb, error=error)

    def pslice(self) -> tuple[slice, slice]:
        """Slices of the parent box in the image."""
        y0, x0, h, w = self.pbox
        return slice(y0, y0 + h), slice(x0, x0 + w)


def axis_ratio(fp: np.ndarray) -> float:
    """Minor/major axis ratio of a footprint's unweighted second moments."""
    ys, xs = np.nonzero(fp)
    if ys.size < 2:
        return 1.0
    c = np.cov(np.stack([ys, xs]).astype(np.float64), bias=True)
    ev = np.linalg.eigvalsh(c)
    if ev[1] <= 0:
        return 1.0
    return float(math.sqrt(max(ev[0], 0.0) / ev[1]))
