"""Incremental deblending: add sources to a fitted blend and continue its fit.

:func:`add_sources` appends point-like sources (a peak, optionally an SED) to a fitted or
reloaded (:meth:`cdeblend.ModelData.rebuild`) blend and continues the proximal ADAM fit
from the current parameters: the other sources keep their SEDs and morphologies as the
starting point, nothing is re-initialised, and the flux is re-apportioned among all sources.

:func:`residual_peaks` finds significant point-like residuals of a fit, away from the
existing sources, in the matched-filter S/N image of the residual (the square root of the
chi^2 decrease a point source with one amplitude brings, sum over bands);
:func:`add_residual_sources` turns them into sources (``DeblendConfig.residual_sources``).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import scipy.ndimage
import scipy.signal

from . import _adam_cy
from ._validate import as_peaks
from .blend import Blend, Component, Source
from .box import centered, clip_slices
from .deblend_config import DeblendConfig
from .deblend_result import DeblendResult
from .fit import fit_blend
from .initialization import model_psf_array

__all__ = ["add_residual_sources", "add_sources", "residual_peaks", "residual_snr_image"]


def _copy_blend(blend: Blend, bg_thresh: float | None) -> Blend:
    """A copy of the blend's sources and components (the fitted result stays as it was);
    components without a noise threshold (a rebuild without config) get ``bg_thresh``."""
    sources = []
    for src in blend.sources:
        comps = [
            Component(
                c.sed.copy(),
                c.morphology.copy(),
                c.box,
                c.peak,
                c.bg_thresh if c.bg_thresh is not None else bg_thresh,
                c.kind,
            )
            for c in src.components
        ]
        sources.append(Source(comps, src.peak, src.index))
    return Blend(blend.observation, sources)


def _residual_convolved(blend: Blend) -> np.ndarray:
    """(B, H, W) PSF-convolved model of the blend, in the observation's dtype."""
    model = np.zeros(blend.shape, dtype=blend.observation.dtype)
    p = blend.packed
    _adam_cy.render(p.sed, p.morph, p.comp, model)
    return blend.observation.convolve(model)


def _point_amplitudes(blend: Blend, peaks: np.ndarray) -> np.ndarray:
    """(M, B) weighted least-squares flux of a point source at each peak in the residual."""
    rp, pp = blend.observation.point_products(_residual_convolved(blend), peaks)
    return np.divide(rp, pp, out=np.zeros_like(rp), where=pp > 0)


def _point_component(
    obs, peak: tuple[int, int], flux: np.ndarray, floor: float, bg_thresh: float | None
) -> Component:
    """A component shaped as the model PSF at ``peak`` with model flux ``flux`` (B,)."""
    model_psf = model_psf_array(obs)
    _, H, W = obs.shape
    sl_img, sl_psf = clip_slices(centered(peak, model_psf.shape), (H, W))
    morph = model_psf[sl_psf] / model_psf.max()
    box = (sl_img[0].start, sl_img[1].start, morph.shape[0], morph.shape[1])
    sed = np.maximum(np.asarray(flux, dtype=np.float64) / morph.sum(), floor)
    return Component(sed, morph, box, peak, bg_thresh, "psf")


def add_sources(result, peaks, seds=None, config=None, max_iter: int | None = None):
    """Add sources to a fitted blend and continue its fit.

    Parameters
    ----------
    result : DeblendResult
        A fit (:meth:`cdeblend.Deblender.deblend`) or a reloaded one
        (:meth:`cdeblend.ModelData.rebuild`); it is not modified.
    peaks : array_like
        (M, 2) (y, x) of the new sources in the blend's frame (a single (y, x) is accepted).
    seds : array_like, optional
        (M, B) model flux of each new source per band; default: the flux of a point source
        fitted to the residual at the peak (non-negative).
    config : DeblendConfig, optional
        Settings of the continued fit (default: the defaults).
    max_iter : int, optional
        Iterations of the continued fit (default ``config.max_iter``).

    Returns
    -------
    DeblendResult
        The new sources come last (``added`` marks them); ``loss_history`` is the old
        history followed by the continued fit's, ``iterations`` counts both.
    """
    if config is None:  # the defaults, with the children's footprint the result was made with
        config = DeblendConfig(conserved_thresh=result.conserved_thresh)
    if not isinstance(config, DeblendConfig):
        raise TypeError(f"config must be a DeblendConfig, got {type(config).__name__}")
    if max_iter is not None:
        if not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
            raise ValueError(f"max_iter must be a non-negative integer, got {max_iter!r}")
        config = dataclasses.replace(config, max_iter=int(max_iter))
    obs = result.blend.observation
    B, H, W = obs.shape
    peaks = as_peaks(peaks, (H, W), "peaks")
    blend = _copy_blend(result.blend, config.bg_thresh)
    if seds is None:
        fluxes = np.maximum(_point_amplitudes(blend, peaks), 0.0)
    else:
        fluxes = np.asarray(seds, dtype=np.float64)
        if fluxes.ndim == 1:
            fluxes = fluxes[None]
        if fluxes.shape != (len(peaks), B):
            raise ValueError(f"seds must have shape ({len(peaks)}, {B}), got {fluxes.shape}")
        if not np.all(np.isfinite(fluxes)) or np.any(fluxes < 0):
            raise ValueError("seds must be finite and non-negative")
    n_old = len(blend.sources)
    for k, (peak, flux) in enumerate(zip(peaks.tolist(), fluxes, strict=True)):
        comp = _point_component(obs, (peak[0], peak[1]), flux, config.floor, config.bg_thresh)
        blend.sources.append(Source([comp], comp.peak, index=n_old + k))
    t0 = time.perf_counter()
    stats: dict = {}
    loss, history, it, converged = fit_blend(blend, config, stats)
    t1 = time.perf_counter()
    old_added = getattr(result, "added", None)
    added = np.zeros(len(blend.sources), dtype=bool)
    if old_added is not None and len(old_added) == n_old:
        added[:n_old] = old_added
    added[n_old:] = True
    timing = dict(getattr(result, "timing", {}) or {})
    timing["add"] = timing.get("add", 0.0) + (t1 - t0)
    snr = np.concatenate(
        [np.asarray(result.snr, dtype=np.float64).reshape(-1), np.full(len(peaks), np.nan)]
    )
    return DeblendResult(
        blend,
        loss,
        np.concatenate([result.loss_history, history]),
        int(result.iterations) + it,
        converged,
        snr,
        timing,
        result.spectrum_init,
        int(result.rescued) + stats.get("rescued", 0),
        added=added,
        conserved_thresh=config.conserved_thresh,
    )


def _matched_filter(obs, planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sum_b P_b * (w_b x_b)`` and ``sum_b P_b^2 * w_b`` (``*``: correlation with band b's
    PSF), (H, W) each."""
    w = np.asarray(obs.weights, dtype=np.float64)
    psfs = np.asarray(obs.psfs, dtype=np.float64)
    num = np.zeros(obs.shape[1:])
    den = np.zeros(obs.shape[1:])
    for b in range(obs.shape[0]):
        p = psfs[b][::-1, ::-1]  # correlation = convolution with the flipped PSF
        num += scipy.signal.fftconvolve(w[b] * planes[b], p, mode="same")
        den += scipy.signal.fftconvolve(w[b], p * p, mode="same")
    return num, np.maximum(den, 0.0)


def _residual_filters(result) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matched filter of the residual and of the model, and the filter's variance."""
    obs = result.blend.observation
    conv = _residual_convolved(result.blend).astype(np.float64)
    w = np.asarray(obs.weights)
    r = np.where(w > 0, np.asarray(obs.images, dtype=np.float64) - conv, 0.0)
    num, den = _matched_filter(obs, r)
    num_model, _ = _matched_filter(obs, np.where(w > 0, conv, 0.0))
    return num, num_model, den


def _snr(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(
        num, np.sqrt(den), out=np.zeros_like(num), where=den > 1e-12 * max(den.max(), 1e-300)
    )


def residual_snr_image(result) -> np.ndarray:
    """(H, W) matched-filter S/N of a point source in the residual ``image - conv(model)``.

    ``sum_b (P_b * (w_b r_b)) / sqrt(sum_b (P_b^2 * w_b))`` with ``*`` the correlation with
    band b's PSF ``P_b``: the S/N of one point-source amplitude at each pixel (its square
    is the chi^2 decrease adding the point source brings).
    """
    num, _, den = _residual_filters(result)
    return _snr(num, den)


def residual_peaks(
    result,
    snr: float = 5.0,
    min_distance: float = 4.0,
    max_sources: int = 5,
    model_ratio: float = 0.0,
    image_peak: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Significant local maxima of :func:`residual_snr_image` away from every source.

    Parameters
    ----------
    result : DeblendResult
    snr : float
        Minimum matched-filter S/N.
    min_distance : float
        Minimum distance (pixels) to every existing source's peak and to each other.
    max_sources : int
        At most this many, the most significant first.
    model_ratio : float
        Keep a peak only where the residual's matched-filter flux is at least this times
        the model's (the model explains at most ``1 / (1 + model_ratio)`` of the light
        there): the residuals of a model that misses part of a detected galaxy (its
        wings, a spiral arm) lie on that galaxy's model, a missed source mostly beside it.
    image_peak : bool
        Keep a peak only within 1 px of a local maximum of the image's own matched filter:
        a missed source with a peak of its own, not a residual on a declining profile.

    Returns
    -------
    peaks : numpy.ndarray
        (M, 2) int64 (y, x).
    snrs : numpy.ndarray
        (M,) their S/N.
    """
    num, num_model, den = _residual_filters(result)
    s = _snr(num, den)
    is_max = (s == scipy.ndimage.maximum_filter(s, size=3, mode="nearest")) & (s >= snr)
    is_max &= num >= model_ratio * np.maximum(num_model, 0.0)
    if image_peak:
        # the image's matched filter is the residual's plus the model's (both linear)
        img = num + num_model
        own = img == scipy.ndimage.maximum_filter(img, size=3, mode="nearest")
        is_max &= scipy.ndimage.binary_dilation(own, np.ones((3, 3), bool))
    ys, xs = np.nonzero(is_max)
    order = np.argsort(-s[ys, xs], kind="stable")
    taken = [tuple(src.peak) for src in result.blend.sources]
    picked: list[tuple[int, int]] = []
    for y, x in zip(ys[order].tolist(), xs[order].tolist(), strict=True):
        if len(picked) >= max_sources:
            break
        if all((y - py) ** 2 + (x - px) ** 2 >= min_distance**2 for py, px in taken):
            picked.append((y, x))
            taken.append((y, x))
    peaks = np.array(picked, dtype=np.int64).reshape(-1, 2)
    return peaks, s[peaks[:, 0], peaks[:, 1]] if len(peaks) else np.zeros(0)


def add_residual_sources(result, config):
    """After a fit: add :func:`residual_peaks` (``config.residual_snr``,
    ``residual_min_distance``, ``residual_max_sources``, ``residual_model_ratio``,
    ``residual_image_peak``) as
    sources and continue the fit (``config.max_iter`` more iterations at most); the result
    as it was when none is found.
    The new sources are marked in ``result.added``."""
    peaks, _ = residual_peaks(
        result,
        config.residual_snr,
        config.residual_min_distance,
        config.residual_max_sources,
        config.residual_model_ratio,
        config.residual_image_peak,
    )
    if not len(peaks):
        return result
    return add_sources(result, peaks, config=config)
