"""Faint peaks on a bright neighbour's wing (``SingleBandConfig.faint_psf_snr``).

Their PSF fit fails its chi^2 cuts because of the neighbour, not because they are extended,
and their symmetric template is then mostly the neighbour's light; such a peak takes its PSF
template instead. That template's weight is floored so that it holds at least
``faint_psf_flux_floor`` (0.7) times what the floored symmetric template would have held; with
``faint_psf_flux_floor=0`` the peak gets the symmetric template back when the joint weight
fit floors the PSF template at ``min_template_weight`` (README, "Defaults"). Steps of
:class:`~cdeblend.single_band.deblender.ParentRun`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .frame import Template
from .templates import sum_templates

if TYPE_CHECKING:
    from .deblender import ParentRun

__all__ = ["swap_faint_templates", "symmetric_floors", "weight_keeping_faint"]


def swap_faint_templates(run: ParentRun) -> dict[int, Template]:
    """Give the PSF template to the faint peaks whose symmetric template holds more
    than ``faint_psf_ratio`` times their PSF-fit flux (see
    ``SingleBandConfig.faint_psf_snr``); returns their symmetric templates by peak.

    A peak's fit is its first one when that failed the chi^2 cuts at S/N below
    ``faint_psf_snr`` (``faint_fits``), else a fit to the image minus the other
    templates (its first fit also took a neighbour's wing for its own light)."""
    cfg = run.cfg
    swapped: dict[int, Template] = {}
    if not (cfg.fit_psfs and cfg.faint_psf_snr > 0):
        return swapped
    act = run.active()
    model = sum_templates([run.templates[i] for i in act], run.frame.image.shape)
    for i in act:
        if run.is_psf[i]:
            continue
        t = run.templates[i]
        fit = run.faint_fits.get(i) or run.fitter.fit_without(i, model, t)
        if fit is not None and not fit.snr < cfg.faint_psf_snr:
            fit = None
        if fit is None or not float(t.values.sum()) > cfg.faint_psf_ratio * fit.record["psf_flux"]:
            continue
        psf_t = run.fitter.psf_template(fit)
        if psf_t is None:
            continue
        swapped[i] = t
        run.templates[i] = psf_t
        run.is_psf[i] = True
        run.peak_flags[i].add("faint_psf")
        # the child's PSF-fit record is the fit its template comes from
        run.first_fits[i] = run.fits[i]
        run.fits[i] = fit.record
    return swapped


def symmetric_floors(run: ParentRun, swapped: dict[int, Template]) -> dict[int, float]:
    """The weight floor of each swapped peak's PSF template: ``faint_psf_flux_floor``
    times ``min_template_weight`` times its symmetric template's flux over its PSF
    template's, so that at 1 the PSF template holds at least what the floored symmetric
    template would.

    Beside a much brighter galaxy the joint fit floors the symmetric template of a
    galaxy of S/N 20-100 (the neighbour's template stands in for it) and the floor then
    keeps it about its flux; its PSF fit, which the neighbour's PSF and the background
    also take light from, can hold a quarter of that or less, and the joint fit scales
    that PSF template further down (``SingleBandConfig.faint_psf_flux_floor``)."""
    floor = run.cfg.faint_psf_flux_floor * run.cfg.min_template_weight
    out: dict[int, float] = {}
    for i, sym in swapped.items():
        psf_flux = float(run.templates[i].values.sum())
        if psf_flux > 0:
            out[i] = floor * float(sym.values.sum()) / psf_flux
    return out


def weight_keeping_faint(run: ParentRun, swapped: dict[int, Template]) -> None:
    """``run.weight()``; a swapped faint peak whose PSF template the fit floors at
    ``min_template_weight`` gets its symmetric template back (its PSF-fit flux was a
    neighbour's wing, not its light) and the weights are refitted. With
    ``faint_psf_flux_floor`` the PSF templates are floored by :func:`symmetric_floors`
    instead and stay."""
    if run.cfg.faint_psf_flux_floor > 0:
        run.weight(symmetric_floors(run, swapped))
        return
    before = {i: (run.templates[i].values, run.templates[i].weight) for i in run.active()}
    run.weight()
    floor = run.cfg.min_template_weight
    back = [i for i in swapped if run.templates[i].weight <= floor * (1 + 1e-9)]
    if not back:
        return
    for i, (values, weight) in before.items():
        run.templates[i].values, run.templates[i].weight = values, weight
    for i in back:
        run.templates[i] = swapped[i]
        run.is_psf[i] = False
        run.peak_flags[i].discard("faint_psf")
        run.fits[i] = run.first_fits.pop(i)
    run.weight()
