"""What the multi-band deblender returns: :class:`DeblendResult`, the fitted blend and its
per-source products (models, flux re-apportioned children, fluxes, uncertainties, metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .apportion import FlatStack, apportion_checked, model_footprint
from .blend import Blend, PackedComponents, overlap_slices
from .deblend_config import DeblendConfig, check_conserved_thresh

__all__ = ["DeblendResult"]


@dataclass
class DeblendResult:
    """What :meth:`Deblender.deblend` returns.

    Attributes
    ----------
    blend : Blend
        The fitted model: ``blend.sources[i].components`` with ``.sed``, ``.morphology``,
        ``.box``; source i belongs to peak i.
    loss : float
        ``0.5 * sum(weights * (images - conv(model))**2)`` of the final model.
    loss_history : numpy.ndarray
        The loss before each iteration's update (the first entry is the initial model's).
    iterations : int
        Number of iterations run.
    converged : bool
        Whether the relative change of the loss fell below ``e_rel``.
    snr : numpy.ndarray
        (N,) detection S/N of each peak (point-source matched filter over all bands).
    timing : dict
        Seconds spent in ``init`` and ``fit``.
    spectrum_init : bool
        Whether the joint least-squares SED fit of the initialization ran.
    rescued : int
        Number of point components added to under-fitted sources (``rescue_faint``).
    fallback : bool
        The fit raised and this is the fallback model (``DeblendConfig.fallback``): one
        PSF-shaped component per peak, SEDs by non-negative least squares.
    error : str
        ``"ExceptionName: message"`` of what the fit raised ("" when it did not).
    added : numpy.ndarray or None
        (N,) bool: sources added after detection (:meth:`Deblender.add_source`, or residual
        peaks with ``DeblendConfig.residual_sources``); None when there are none.
    conserved_thresh : float
        The children's footprint threshold (``DeblendConfig.conserved_thresh``): the
        conserved children share the image where the total convolved model reaches this
        many times the noise RMS in at least one band (:attr:`footprint`).
    """

    blend: Blend
    loss: float
    loss_history: np.ndarray
    iterations: int
    converged: bool
    snr: np.ndarray
    timing: dict = field(default_factory=dict)
    spectrum_init: bool = False
    rescued: int = 0
    fallback: bool = False
    error: str = ""
    _conv: FlatStack | None = field(default=None, repr=False)
    _snapshot: PackedComponents | None = field(default=None, repr=False)
    _conserved: FlatStack | None = field(default=None, repr=False, init=False)
    added: np.ndarray | None = None
    conserved_thresh: float = DeblendConfig.conserved_thresh
    _footprint: np.ndarray | None = field(default=None, repr=False, init=False)

    def __setattr__(self, name: str, value) -> None:
        # the products trust the threshold: checked whoever sets it, and the children and
        # their footprint made with the old one are dropped
        if name == "conserved_thresh":
            value = check_conserved_thresh(value)
            object.__setattr__(self, "_footprint", None)
            object.__setattr__(self, "_conserved", None)
        object.__setattr__(self, name, value)

    # -- per-source products
    def _packed_now(self) -> PackedComponents:
        """The components packed once for the products (not re-bound)."""
        if self._snapshot is None:
            self.blend.check_geometry()  # the user may have edited boxes since the fit
            self._snapshot = PackedComponents.from_components(
                self.blend.components, self.blend.shape[0], bind=False
            )
        return self._snapshot

    def _convolved_stack(self) -> FlatStack:
        if self._conv is None:
            self._conv = self.blend.convolved_sources(packed=self._packed_now())
        return self._conv

    def _dense(self, stack: FlatStack) -> np.ndarray:
        B, H, W = self.blend.shape
        out = np.zeros((len(stack), B, H, W), dtype=self.blend.observation.dtype)
        for i in range(len(stack)):
            box = tuple(int(v) for v in stack.boxes[i])
            if box[2] * box[3] == 0:
                continue
            sa, sb = overlap_slices((0, 0, H, W), box)
            out[(i, slice(None)) + sa] = stack.get(i)[(slice(None),) + sb]
        return out

    def models(self) -> np.ndarray:
        """(N, B, H, W) each source's model convolved to the observed PSFs."""
        return self._dense(self._convolved_stack())

    @property
    def footprint(self) -> np.ndarray:
        """(H, W) bool, the children's footprint: the pixels where, in at least one band
        with data, the total convolved model is positive and reaches
        ``conserved_thresh * sqrt(variance)`` (:func:`cdeblend.apportion.model_footprint`).
        The conserved children share the image there and nowhere else."""
        if self._footprint is None:
            obs = self.blend.observation
            self._footprint = model_footprint(
                self._convolved_stack(), obs.variance, float(self.conserved_thresh), obs.weights
            )
        return self._footprint

    def conserved(self) -> FlatStack:
        """Flux re-apportioned children in the flat layout (one row per source).

        ``image * max(0, m_i) / sum_j max(0, m_j)`` on the :attr:`footprint`, 0 elsewhere,
        with ``m_i`` the convolved model of source i; pixels of zero weight count as 0 in
        the image.
        """
        if self._conserved is None:
            obs = self.blend.observation
            # the observation's images are finite where the weight is non-zero: no checks
            image = np.where(obs.weights > 0, obs.images, 0).astype(obs.dtype, copy=False)
            mask = np.ascontiguousarray(self.footprint, dtype=np.uint8)
            self._conserved, _ = apportion_checked(image, self._convolved_stack(), mask)
        return self._conserved

    def conserved_images(self) -> np.ndarray:
        """(N, B, H, W) flux re-apportioned children; they add up to the image on the
        :attr:`footprint` (where the total convolved model is significant)."""
        return self._dense(self.conserved())

    @property
    def fluxes(self) -> np.ndarray:
        """(N, B) model flux of each source (sum of its model-space model per band)."""
        B = self.blend.shape[0]
        sources = self.blend.sources
        out = np.zeros((len(sources), B))
        if not any(src.components for src in sources):
            return out
        p = self._packed_now()
        owner = np.repeat(np.arange(len(sources)), [len(src.components) for src in sources])
        np.add.at(out, owner, p.sed * p.morph_sums()[:, None])
        return out

    @property
    def conserved_fluxes(self) -> np.ndarray:
        """(N, B) flux of each conserved (re-apportioned) child."""
        return self.conserved().sums()

    # -- uncertainties and metrics (cdeblend.metrics)
    @property
    def conserved_flux_err(self) -> np.ndarray:
        """(N, B) standard deviation of :attr:`conserved_fluxes` from the variance plane.

        ``sqrt(sum_p s_i(p)^2 V(p))`` over the :attr:`footprint`, with ``s_i`` the child's
        share of pixel ``p`` (the shares held fixed; pixels without data excluded); see
        :mod:`cdeblend.metrics`.
        """
        from .metrics import conserved_flux_errors, variance_plane

        return conserved_flux_errors(
            self._convolved_stack(), variance_plane(self.blend.observation), self.footprint
        )

    @property
    def flux_err(self) -> np.ndarray:
        """(N, B) standard deviation of :attr:`fluxes` from the SED fit's Fisher matrix with
        the morphologies held (NaN for a flux the data do not constrain)."""
        from .metrics import model_flux_errors

        return model_flux_errors(self)

    @property
    def deblend_flux_err(self) -> np.ndarray:
        """(N, B) deblending uncertainty of the fluxes: the neighbours' light in the child's
        share of the pixels, ``sum_p s_i (M - m_i)`` with the convolved models (0 for an
        isolated source); see :func:`cdeblend.metrics.deblend_flux_errors`."""
        from .metrics import deblend_flux_errors

        return deblend_flux_errors(
            self._convolved_stack(), self.blend.observation.weights > 0, self.footprint
        )

    @property
    def conserved_flux_total_err(self) -> np.ndarray:
        """(N, B) :attr:`conserved_flux_err` and :attr:`deblend_flux_err` in quadrature: the
        error to compare a conserved flux with the truth (``docs/trust.md``)."""
        return np.hypot(self.conserved_flux_err, self.deblend_flux_err)

    @property
    def flux_total_err(self) -> np.ndarray:
        """(N, B) error of the model flux against the truth: :attr:`flux_err`,
        :attr:`deblend_flux_err` and the model's misfit in quadrature (``docs/trust.md``).

        The misfit is the conserved minus the model flux (the child's share of the
        residual); its square less the conserved flux's noise variance (what the noise
        alone puts into it, floored at 0) is the model's own error: the wings and
        structure a smooth monotonic morphology does not follow."""
        misfit2 = (self.conserved_fluxes - self.fluxes) ** 2 - self.conserved_flux_err**2
        return np.sqrt(self.flux_err**2 + self.deblend_flux_err**2 + np.maximum(misfit2, 0.0))

    def add_source(
        self, peak, sed=None, config: DeblendConfig | None = None, max_iter: int | None = None
    ) -> DeblendResult:
        """Add a source at ``peak`` (optionally with its (B,) model flux ``sed``) and
        continue the fit with ``config`` (default: the defaults); see
        :meth:`cdeblend.Deblender.add_source`."""
        from .incremental import add_sources  # it builds results: imported on use

        return add_sources(self, peak, sed, config, max_iter)

    def metrics(self):
        """The deblending metrics (blendedness, flux overlap, chi^2, coverage, ...) of the
        fitted blend: a :class:`cdeblend.metrics.BlendMetrics`."""
        from .metrics import blend_metrics

        return blend_metrics(self)
