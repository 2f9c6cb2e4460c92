"""The multi-band deblender: initialization, proximal ADAM fit, flux re-apportioning.

``Deblender(DeblendConfig()).deblend(observation, peaks)`` runs scarlet lite's algorithm on
one blend: chi^2 initialization of one source per peak (:mod:`cdeblend.initialization`),
a joint least-squares SED fit, then proximal ADAM on every SED and morphology with the prox
chain (radial monotonicity, noise threshold, positivity, peak normalisation) until the loss
stops changing, with the component boxes resized every few iterations
(:mod:`cdeblend.fit`). Per iteration the blend's model is convolved once per band (forward
and adjoint) and every component is updated, in one Cython call for many iterations.

The pieces live in their own modules: the settings in :mod:`cdeblend.deblend_config`, the
fit in :mod:`cdeblend.fit`, the result and its products in :mod:`cdeblend.deblend_result`;
``DeblendConfig``, ``DeblendResult`` and ``fit_blend`` are importable from here as well.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .deblend_config import DeblendConfig
from .deblend_result import DeblendResult
from .fit import fit_blend
from .initialization import initialize_blend
from .lost import rescue_lost_sources
from .shape_prior import prefer_second, scale_seds, starved_start

if TYPE_CHECKING:
    import numpy as np

    from .blend import Blend

__all__ = ["DeblendConfig", "DeblendResult", "Deblender"]


class Deblender:
    """The multi-band (scarlet lite) deblender.

    Parameters
    ----------
    config : DeblendConfig, optional
        Defaults to ``DeblendConfig()`` (``DeblendConfig.reference()``: the LSST
        pipeline's settings).
    """

    def __init__(self, config: DeblendConfig | None = None) -> None:
        if config is None:
            config = DeblendConfig()
        if not isinstance(config, DeblendConfig):
            raise TypeError(f"config must be a DeblendConfig, got {type(config).__name__}")
        self.config = config

    def deblend(self, observation, peaks) -> DeblendResult:
        """Deblend one blend.

        Parameters
        ----------
        observation : Observation
            Images, weights and PSFs of the blend (its frame is the blend's).
        peaks : array_like
            (N, 2) (y, x) positions of the sources, inside the image; float positions are
            rounded to the nearest pixel.

        Returns
        -------
        DeblendResult
        """
        from ._validate import as_peaks
        from .observation import Observation

        if not isinstance(observation, Observation):
            raise TypeError(
                f"observation must be a cdeblend.Observation, got {type(observation).__name__}"
            )
        _, H, W = observation.shape
        peaks = as_peaks(peaks, (H, W), "peaks")
        t0 = time.perf_counter()
        stats: dict = {}
        try:
            blend, info = initialize_blend(observation, peaks, self.config)
            t1 = time.perf_counter()
            fit = fit_blend(blend, self.config, stats)
            if self.config.shape_prior:
                blend, fit = self._shape_prior(observation, peaks, blend, info, fit, stats)
            loss, history, it, converged = fit
            if self.config.rescue_lost and rescue_lost_sources(blend, info["snr"], self.config):
                loss = blend.loss()
        except Exception as exc:  # the inputs were valid: keep a model for every peak
            if not self.config.fallback:
                raise
            from .fallback import fallback_result

            return fallback_result(observation, peaks, self.config, exc)
        t2 = time.perf_counter()
        result = DeblendResult(
            blend,
            loss,
            history,
            it,
            converged,
            info["snr"],
            {"init": t1 - t0, "fit": t2 - t1},
            info["spectrum_init"],
            stats.get("rescued", 0),
            conserved_thresh=self.config.conserved_thresh,
        )
        if self.config.residual_sources:
            result = self._with_residual_sources(result)
        return result

    def _shape_prior(
        self, observation, peaks: np.ndarray, blend: Blend, info: dict, fit: tuple, stats: dict
    ) -> tuple[Blend, tuple]:
        """The blend and fit (loss, history, iterations, converged) to keep: the fit again
        from the shape prior's start when a lost source is starved and
        :func:`cdeblend.shape_prior.prefer_second` prefers it, else the first.

        ``stats`` receives the kept fit's. With ``fallback`` (the default) an error in the
        second fit or the choice keeps the first fit: the option must not cost a valid one.
        """
        try:
            start, starved = starved_start(blend, info["snr"], self.config)
            if not start:
                return blend, fit
            second, _ = initialize_blend(observation, peaks, self.config)
            scale_seds(second, start, self.config.floor)
            second_stats: dict = {}
            second_fit = fit_blend(second, self.config, second_stats)
            losses = (fit[0], second_fit[0])
            keep = prefer_second(blend, second, losses, list(start), starved, self.config)
        except Exception:
            if not self.config.fallback:
                raise
            return blend, fit
        if not keep:
            return blend, fit
        # the result describes the fit that made its model: the second one
        stats.update(second_stats)
        return second, second_fit

    def _with_residual_sources(self, result: DeblendResult) -> DeblendResult:
        """Add the fit's significant residual peaks as sources and continue
        (``DeblendConfig.residual_sources``)."""
        from .incremental import add_residual_sources

        return add_residual_sources(result, self.config)

    def add_source(
        self, result: DeblendResult, peak, sed=None, max_iter: int | None = None
    ) -> DeblendResult:
        """Add one or more sources to a fitted or reloaded blend and continue its fit.

        The other sources start from their fitted SEDs and morphologies (nothing is
        re-initialised; the ADAM moments start afresh) and the flux is re-apportioned among
        all sources. ``result`` itself is not modified.

        Parameters
        ----------
        result : DeblendResult
            From :meth:`deblend` or :meth:`cdeblend.ModelData.rebuild` (pass the deblender's
            config to ``rebuild`` or this one's ``bg_thresh`` is used for the components).
        peak : array_like
            (y, x), or (M, 2) for several sources, in the blend's frame.
        sed : array_like, optional
            (B,) or (M, B) model flux per band; default: a point source's flux fitted to
            the residual at the peak.
        max_iter : int, optional
            Iterations of the continued fit (default: ``config.max_iter``).

        Returns
        -------
        DeblendResult
            With the new sources last, marked in ``added``.
        """
        from .incremental import add_sources

        return add_sources(result, peak, sed, self.config, max_iter)

    def deblend_arrays(
        self, images, variance, psfs, peaks, bands=None, weights=None, mask=None
    ) -> DeblendResult:
        """Build an :class:`~cdeblend.observation.Observation` with the configured model PSF
        and deblend it (arguments as for the Observation, plus the peaks)."""
        from .observation import Observation

        obs = Observation(
            images,
            variance,
            psfs,
            bands=bands,
            weights=weights,
            mask=mask,
            model_psf_sigma=self.config.model_psf_sigma,
        )
        return self.deblend(obs, peaks)
