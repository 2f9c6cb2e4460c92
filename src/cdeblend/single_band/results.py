"""What the single-band deblender returns: :class:`Child` and :class:`SingleBandResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .frame import Box, Template, paste

__all__ = ["Child", "SingleBandResult", "skipped_child", "template_child"]


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
        Template weight (1 unless template weighting is on), already applied to
        ``template``.
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
    deblend_flux_err : float
        Deblending uncertainty of ``flux``: the other templates' flux in the child's share
        of the pixels they share, ``sum_p s (T - t)`` (0 for a lone template; stray pixels
        not counted); see :func:`cdeblend.metrics.deblend_flux_errors`.
    wing_flux : float
        Estimated light of the source outside the parent footprint (and in its pixels
        without data), which ``flux`` does not hold: ``flux`` times the PSF's light outside
        over its light inside, the PSF placed at the PSF fit's centre of a PSF template or,
        for any other template, at every template pixel weighted by the template (see
        :mod:`cdeblend.single_band.wings`). ``flux + wing_flux`` estimates the total flux
        (docs/trust.md: it removes the median bias, but does not lower the median error
        on every simulated set, so ``flux`` stays the catalog's flux).
    flux_total_err : float
        Uncertainty of ``flux`` against the source's total flux:
        ``sqrt(flux_err^2 + deblend_flux_err^2 + wing_flux^2)``, the noise, the deblending
        uncertainty and the lost wings (counted at their full size), with no coefficient
        fitted; its pulls on simulations are in docs/trust.md. Use it, not ``flux_err``,
        when comparing fluxes with other catalogs or truth.
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
    deblend_flux_err: float = float("nan")
    wing_flux: float = float("nan")
    flux_total_err: float = float("nan")


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
            paste(out[c.index], c.conserved, c.box)
        return out

    @property
    def flux_err(self) -> np.ndarray:
        """(N_peaks,) :attr:`Child.flux_err` of each peak's child (NaN without a child)."""
        out = np.full(self.n_peaks, np.nan)
        for c in self.children:
            out[c.index] = c.flux_err
        return out

    @property
    def deblend_flux_err(self) -> np.ndarray:
        """(N_peaks,) :attr:`Child.deblend_flux_err` of each peak's child (NaN without)."""
        out = np.full(self.n_peaks, np.nan)
        for c in self.children:
            out[c.index] = c.deblend_flux_err
        return out

    @property
    def wing_flux(self) -> np.ndarray:
        """(N_peaks,) :attr:`Child.wing_flux` of each peak's child (NaN without)."""
        out = np.full(self.n_peaks, np.nan)
        for c in self.children:
            out[c.index] = c.wing_flux
        return out

    @property
    def flux_total_err(self) -> np.ndarray:
        """(N_peaks,) :attr:`Child.flux_total_err` of each peak's child (NaN without)."""
        out = np.full(self.n_peaks, np.nan)
        for c in self.children:
            out[c.index] = c.flux_total_err
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
            paste(out[c.index], c.template, c.template_box)
        return out


def template_child(
    index: int,
    peak: tuple[int, int],
    box: Box,
    conserved: np.ndarray,
    t: Template,
    template_box: Box,
    flags: set[str],
    fit: dict[str, Any],
    stages: dict[str, Any],
) -> Child:
    """The child of a peak with template ``t`` (boxes in the image frame; ``fit`` the PSF
    fit record, {} without one)."""
    kind = "psf" if t.kind == "psf" else ("monotonic" if t.monotonic else "symmetric")
    return Child(
        index=index,
        peak=peak,
        box=box,
        conserved=conserved,
        template=t.values,
        template_box=template_box,
        template_footprint=t.fp.astype(bool),
        template_kind=kind,
        flux=float(conserved.sum(dtype=np.float64)),
        flags=frozenset(flags),
        weight=t.weight,
        psf_flux=fit.get("psf_flux"),
        psf_center=fit.get("psf_center"),
        psf_fit={k: v for k, v in fit.items() if k not in ("psf_flux", "psf_center")},
        stages=stages,
    )


def skipped_child(
    index: int,
    peak: tuple[int, int],
    box: Box,
    conserved: np.ndarray,
    flags: set[str],
    stages: dict[str, Any],
) -> Child:
    """The all-zero child of a skipped peak (``propagate_all_peaks``), on the parent ``box``."""
    return Child(
        index=index,
        peak=peak,
        box=box,
        conserved=conserved,
        template=np.zeros((0, 0)),
        template_box=(box[0], box[1], 0, 0),
        template_footprint=np.zeros((0, 0), dtype=bool),
        template_kind="none",
        flux=0.0,
        flags=frozenset(flags | {"skipped"}),
        stages=stages,
    )
