"""The multi-band deblender: initialization, proximal ADAM fit, flux re-apportioning.

``Deblender(DeblendConfig()).deblend(observation, peaks)`` runs scarlet lite's algorithm on
one blend: chi^2 initialization of one source per peak (:mod:`cdeblend.initialization`),
a joint least-squares SED fit, then proximal ADAM on every SED and morphology with the prox
chain (radial monotonicity, noise threshold, positivity, peak normalisation) until the loss
stops changing, with the component boxes resized every few iterations. Per iteration the
blend's model is convolved once per band (forward and adjoint) by the Observation and every
component is updated by one Cython call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import _adam_cy
from .apportion import FlatStack, _apportion
from .blend import (
    Blend,
    Component,
    PackedComponents,
    RadialMonotonicity,
    overlap_slices,
)
from .initialization import _centered_overlap, _model_psf, initialize_blend

__all__ = ["DeblendConfig", "DeblendResult", "Deblender"]

_OPTIMIZERS = {"amsgrad": _adam_cy.AMSGRAD, "adam": _adam_cy.ADAM}


@dataclass(frozen=True)
class DeblendConfig:
    """Settings of the multi-band deblender.

    The defaults are the LSST pipeline's settings (section 6 of the specification) with
    corrections that measured better on simulated blends (see the README's Defaults):
    non-negative initial SEDs (``sed_solver``), the best iterate is returned
    (``keep_best``), detected sources are kept alive (``rescue_faint``), the initial trim is
    in the detection image's units (``init_thresh_units``), the fit converges on the lowest
    loss over a window (``e_rel=1e-4``, ``converge_window``), and PSF-shaped fallback
    components are cropped and normalised correctly and use ``bg_thresh``.
    :meth:`reference` follows the reference (its loss on the bundled HSC blend, 9011 after
    48 iterations, is reproduced).

    Fit
    ---
    max_iter : int
        Maximum number of iterations (300). 0 skips the fit (the initial model is returned).
    e_rel : float
        Convergence tolerance per iteration (1e-4; the reference's 1e-3).
    min_iter : int
        No convergence test before this many iterations (5).
    converge_window : int
        Stop when, over the last ``converge_window`` iterations (3), the lowest loss so far
        improved by less than ``converge_window * e_rel`` of itself and the last loss is
        within that of it. 0: the reference's test, ``|L[-1] - L[-2]| < e_rel * |L[-1]|``,
        which stops on the first flat step of the fast descent.
    resize : int or None
        Resize the component boxes every this many iterations (3); None never resizes.
    optimizer : str
        "amsgrad" (default, proximal AMSGrad without bias correction) or "adam".
    b1, b2, eps : float
        ADAM moment decay rates and the floor of the second moment (0.9, 0.999, 1e-8).
    morph_step : float
        Step of the (peak-normalised) morphologies (0.01).
    sed_step : float
        SED step as a fraction of the SED's mean (0.01) ...
    sed_min_step : float
        ... but at least this fraction of the band's noise RMS (0.1).
    floor : float
        Minimum SED value and minimum morphology value at the peak (1e-20).

    Initialization
    --------------
    min_snr : float
        Sources with S/N >= 2 * min_snr get a bulge and a disk component (50).
    max_components : int
        At most this many components per source (2).
    disk_percentile : float
        Bulge/disk split level, percent of the peak (25).
    initial_bg_thresh : float
        Trim the initial morphologies at this many times the mean noise RMS (1.0).
    init_thresh_units : str
        Units of the trim threshold: "image" (the reference: ``initial_bg_thresh`` times the
        mean noise RMS of the images, although the chi^2 detection image is in other units)
        or "detection" (the default: ``initial_bg_thresh`` times the noise RMS of the
        detection image, ``sqrt(sum_b 1 / noise_rms_b**2)``; "image" makes the trim level
        depend on the flux units, about 40 sigma of the detection image for nJy data).
    init_padding : int
        Margin around the initial morphology, applied twice as in the reference (2).
    residual_init : bool
        Initialise a peak that lies in the monotonic mask of a brighter one from the
        detection image minus the brighter ones' masks (False; the reference uses the full
        detection image for every peak).
    set_spectra : bool
        Fit all initial SEDs jointly by least squares (True).
    max_spectrum_cutoff : int
        Skip the joint SED fit when ``n_peaks * H * W`` reaches this; 0 always fits (the
        reference uses 1,000,000 to bound its dense solver's memory; the fit here works on
        the components' boxes and does not need the cut).
    weighted_sed_fit : bool
        Weight the SED fit by the inverse variance (False, as the reference).
    sed_solver : str
        Solver of :func:`cdeblend.spectra.fit_seds`: "nnls" (default), non-negative least
        squares; "lstsq", the reference's unconstrained minimum-norm least squares with
        negative values clipped to 0 afterwards (clipping leaves the neighbours' SEDs fitted
        for a model that no longer exists; NNLS gives better fluxes on the simulations).

    Model
    -----
    model_psf_sigma : float or None
        Sigma (pixels) of the Gaussian model-frame PSF (0.8) used when the deblender builds
        the Observation itself (:meth:`Deblender.deblend_arrays`, catalog-level drivers);
        an Observation passed to :meth:`Deblender.deblend` keeps its own model PSF.
    bg_thresh : float or None
        Noise threshold of the morphologies in units of each band's noise RMS (1.0); None
        disables thresholding (plain positivity) and box resizing.
    component_padding : int
        Margin kept around significant pixels when boxes are resized (5).
    monotonicity_size : int
        Initial side of the monotonicity table (101); it grows when a box needs more.
    psf_fallback_bg_thresh : float or None
        Threshold of PSF-shaped fallback components; None uses ``bg_thresh``. The reference
        always uses 0.25 here (its quirk; set 0.25 to reproduce it).
    center_flip_quirk : bool
        Reproduce the reference's symmetrisation of a peak at exactly (H//2, W//2) about the
        array's middle instead of the peak (False).
    keep_best : bool
        Return the iterate with the lowest loss (True). The loss of proximal ADAM is not
        monotone (box resizing and the prox make it jump by a few percent between
        iterations), so the last iterate is often not the best one the fit visited; the
        reference returns the last (False).
    rescue_faint : bool
        Keep every detected source alive (True): a source whose initial morphology is empty,
        or whose fitted SED is zero in every band, is re-initialised as a point source with
        the flux its peak pixel implies; and when the fit has converged, a source whose
        peak still shows a significant point-like residual (S/N >= ``rescue_snr``, flux
        above ``rescue_fraction`` times the source's model flux) gets a PSF-shaped
        component and the fit continues (at most ``rescue_rounds`` times). The reference
        loses such sources (faint ones next to a brighter neighbour).
    rescue_snr, rescue_fraction : float
        Thresholds of that test (10 and 0.5).
    rescue_rounds : int
        Maximum number of rescue rounds (2).
    rescue_init_level : float
        A source that the initial joint SED fit leaves below the noise threshold restarts
        with its peak-ratio SED capped at this many noise RMS at its peak (5), and the other
        sources' SEDs are fitted again without it (``rescue_faint``).

    Failure
    -------
    fallback : bool
        When the initialization or the fit raises, return a fallback model instead (True):
        a PSF-shaped component per peak with SEDs fitted by non-negative least squares
        (:mod:`cdeblend.fallback`), flagged ``DeblendResult.fallback`` with the error text
        in ``DeblendResult.error``. False re-raises.

    Residual sources
    ----------------
    residual_sources : bool
        After the fit, turn significant point-like residuals away from every source into
        new sources and continue the fit (False). They come after the detected sources and
        are marked in :attr:`DeblendResult.added`; see :mod:`cdeblend.incremental`.
    residual_snr : float
        Minimum matched-filter S/N of a residual peak (5).
    residual_min_distance : float
        Minimum distance in pixels of a residual peak from every source's peak (4).
    residual_max_sources : int
        At most this many residual sources per blend (5).
    residual_model_ratio : float
        Keep a residual peak only where the residual's matched-filter flux is at least this
        times the model's (1.0): residuals of a detected galaxy's mis-modelled wings lie on
        its model, a missed source mostly beside it.
    residual_image_peak : bool
        Keep a residual peak only within 1 px of a local maximum of the image's own
        matched filter (True): a missed source with a peak of its own. On the simulations
        this keeps 30 of 33 recovered missed neighbours and drops all 59 residuals of
        detected galaxies' mis-modelled wings (bench/residual_sources.py); False also
        finds neighbours without a peak of their own, at the price of such splits.
    """

    max_iter: int = 300
    e_rel: float = 1e-4
    min_iter: int = 5
    converge_window: int = 3
    resize: int | None = 3
    optimizer: str = "amsgrad"
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    morph_step: float = 0.01
    sed_step: float = 0.01
    sed_min_step: float = 0.1
    floor: float = 1e-20
    min_snr: float = 50.0
    max_components: int = 2
    disk_percentile: float = 25.0
    initial_bg_thresh: float = 1.0
    init_thresh_units: str = "detection"
    init_padding: int = 2
    residual_init: bool = False
    set_spectra: bool = True
    max_spectrum_cutoff: int = 0
    weighted_sed_fit: bool = False
    sed_solver: str = "nnls"
    model_psf_sigma: float | None = 0.8
    bg_thresh: float | None = 1.0
    component_padding: int = 5
    monotonicity_size: int = 101
    psf_fallback_bg_thresh: float | None = None
    center_flip_quirk: bool = False
    keep_best: bool = True
    rescue_faint: bool = True
    rescue_snr: float = 10.0
    rescue_fraction: float = 0.5
    rescue_rounds: int = 2
    rescue_init_level: float = 5.0
    fallback: bool = True
    residual_sources: bool = False
    residual_snr: float = 5.0
    residual_min_distance: float = 4.0
    residual_max_sources: int = 5
    residual_model_ratio: float = 1.0
    residual_image_peak: bool = True

    @classmethod
    def reference(cls, **overrides) -> DeblendConfig:
        """The LSST pipeline's scarlet lite settings, without the corrections.

        ``e_rel=1e-3``, the initial trim in image units, unconstrained least-squares SEDs
        clipped at 0, the last iterate returned and no rescue of faint sources: it
        reproduces the reference's loss on the bundled HSC blend (9011 after 48
        iterations). ``overrides`` replace single fields.
        """
        settings = dict(
            e_rel=1e-3,
            converge_window=0,
            init_thresh_units="image",
            sed_solver="lstsq",
            keep_best=False,
            rescue_faint=False,
        )
        settings.update(overrides)
        return cls(**settings)

    def __post_init__(self) -> None:
        for name in (
            "max_iter",
            "min_iter",
            "converge_window",
            "max_components",
            "init_padding",
            "component_padding",
            "rescue_rounds",
            "max_spectrum_cutoff",
            "monotonicity_size",
        ):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        if self.resize is not None and (
            not isinstance(self.resize, (int, np.integer)) or self.resize < 1
        ):
            raise ValueError(f"resize must be a positive integer or None, got {self.resize!r}")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {sorted(_OPTIMIZERS)}, got {self.optimizer!r}"
            )
        for name in (
            "e_rel",
            "morph_step",
            "sed_step",
            "sed_min_step",
            "floor",
            "eps",
            "min_snr",
            "initial_bg_thresh",
            "rescue_snr",
            "rescue_fraction",
            "rescue_init_level",
        ):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ValueError(f"b1 and b2 must be in [0, 1), got {self.b1!r}, {self.b2!r}")
        if self.sed_solver not in ("nnls", "lstsq"):
            raise ValueError(f"sed_solver must be 'nnls' or 'lstsq', got {self.sed_solver!r}")
        if self.init_thresh_units not in ("image", "detection"):
            raise ValueError(
                f"init_thresh_units must be 'image' or 'detection', got {self.init_thresh_units!r}"
            )
        if not 0 < self.disk_percentile < 100:
            raise ValueError(f"disk_percentile must be in (0, 100), got {self.disk_percentile}")
        if self.model_psf_sigma is not None and not self.model_psf_sigma > 0:
            raise ValueError(f"model_psf_sigma must be > 0 or None, got {self.model_psf_sigma!r}")
        for name in ("bg_thresh", "psf_fallback_bg_thresh"):
            v = getattr(self, name)
            if v is not None and not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be >= 0 or None, got {v!r}")
        self._check_residual_options()
        if self.monotonicity_size < 3 or self.monotonicity_size % 2 == 0:
            raise ValueError(
                f"monotonicity_size must be odd and >= 3, got {self.monotonicity_size}"
            )

    def _check_residual_options(self) -> None:
        """Validate the residual-source settings."""
        for name in ("residual_snr", "residual_min_distance", "residual_model_ratio"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        v = self.residual_max_sources
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"residual_max_sources must be a non-negative integer, got {v!r}")


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
    _conserved: FlatStack | None = field(default=None, repr=False)
    added: np.ndarray | None = None

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

    def conserved(self) -> FlatStack:
        """Flux re-apportioned children in the flat layout (one row per source).

        ``image * max(0, m_i) / sum_j max(0, m_j)`` with ``m_i`` the convolved model of
        source i; pixels of zero weight count as 0 in the image.
        """
        if self._conserved is None:
            obs = self.blend.observation
            # the observation's images are finite where the weight is non-zero: no checks
            image = np.where(obs.weights > 0, obs.images, 0).astype(obs.dtype, copy=False)
            self._conserved, _ = _apportion(image, self._convolved_stack())
        return self._conserved

    def conserved_images(self) -> np.ndarray:
        """(N, B, H, W) flux re-apportioned children; they add up to the image wherever the
        total convolved model is positive."""
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
        np.add.at(out, owner, p.sed * _morph_sums(p)[:, None])
        return out

    @property
    def conserved_fluxes(self) -> np.ndarray:
        """(N, B) flux of each conserved (re-apportioned) child."""
        return self.conserved().sums()

    # -- uncertainties and metrics (cdeblend.metrics)
    @property
    def conserved_flux_err(self) -> np.ndarray:
        """(N, B) standard deviation of :attr:`conserved_fluxes` from the variance plane.

        ``sqrt(sum_p s_i(p)^2 V(p))`` with ``s_i`` the child's share of pixel ``p`` (the
        shares held fixed; pixels without data excluded); see :mod:`cdeblend.metrics`.
        """
        from .metrics import conserved_flux_errors, variance_plane

        return conserved_flux_errors(
            self._convolved_stack(), variance_plane(self.blend.observation)
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

        return deblend_flux_errors(self._convolved_stack(), self.blend.observation.weights > 0)

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
        continue the fit; see :meth:`Deblender.add_source`."""
        return Deblender(config).add_source(self, peak, sed, max_iter)

    def metrics(self):
        """The deblending metrics (blendedness, flux overlap, chi^2, coverage, ...) of the
        fitted blend: a :class:`cdeblend.metrics.BlendMetrics`."""
        from .metrics import blend_metrics

        return blend_metrics(self)


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
            loss, history, it, converged = fit_blend(blend, self.config, stats)
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
        )
        if self.config.residual_sources:
            result = self._with_residual_sources(result)
        return result

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


# ----------------------------------------------------------------------------- the fit
class _Fitter:
    """Proximal ADAM on every component of a blend (docs/spec/multi_band.md 3.3-3.10).

    Holds the packed parameters' ADAM moments, the monotonicity operator and the Cython
    :class:`~cdeblend._adam_cy.FitKernel`, which runs the iterations themselves (render,
    convolutions, loss, gradient, update, box resizing, best iterate, convergence) without
    the GIL. The morphologies and their three ADAM moments are the rows of two (4, cap)
    buffers, one in use, the other receiving them when boxes are resized; Python only runs
    when a new layout needs bigger buffers or a bigger monotonicity table, and when
    components are added.
    """

    def __init__(self, blend: Blend, config: DeblendConfig) -> None:
        self.blend = blend
        self.config = config
        obs = blend.observation
        self.obs = obs
        packed = blend.pack()
        self._components = blend.components
        self._peaks = np.array([c.peak for c in self._components], dtype=np.int64).reshape(-1, 2)
        # SED moments as one (3, K, B) array
        self.sed_state = np.zeros((3,) + packed.sed.shape)
        self._new_buffers(packed.morph.size)
        self.morph_all[0] = packed.morph
        self.blend._packed = PackedComponents(
            packed.sed, self.morph_all[0], packed.comp, packed.bg_thresh
        )
        self.mono = RadialMonotonicity((config.monotonicity_size - 1) // 2)
        self._cover()
        self.noise = np.ascontiguousarray(obs.noise_rms, dtype=np.float64)
        self.min_step = self.noise * config.sed_min_step
        self.model = np.empty(blend.shape, dtype=obs.dtype)
        self.it = 0
        self.best: tuple | None = None  # (loss, sed, morph, comp, bg_thresh) of the best iterate
        self._best_bufs: tuple | None = None
        self._hist = np.zeros(max(config.max_iter, 1))  # loss of iteration i at index i
        self.kernel = _adam_cy.FitKernel(
            self.noise,
            self.min_step,
            config.sed_step,
            config.morph_step,
            config.b1,
            config.b2,
            config.eps,
            config.floor,
            _OPTIMIZERS[config.optimizer],
        )
        B, H, W = blend.shape
        n0, n1 = obs._fft_shape(H, W)
        fk = None if obs._pick_mode("auto", B, H, W) == "real" else obs._kernel_cache.get(n0, n1)
        self.kernel.set_data(
            np.ascontiguousarray(obs.images),
            obs.weights,
            obs.diff_kernels,
            obs._grad_kernels,
            fk,
            n0,
            n1,
            self._hist,
        )

    def _new_buffers(self, size: int) -> None:
        """Two zeroed (4, cap) morphology buffers for a layout of ``size`` pixels, with room
        for boxes to grow (the kernel re-grids between them without coming back here)."""
        cap = max(2 * size, 256)
        self._mbuf = [np.zeros((4, cap)), np.zeros((4, cap))]
        self._cur, self._size = 0, size

    @property
    def morph_all(self) -> np.ndarray:
        """The morphologies and their ADAM moments, (4, size): the rows of the buffer in use."""
        return self._mbuf[self._cur][:, : self._size]

    @property
    def history(self) -> np.ndarray:
        """The loss before each iteration's update so far."""
        return self._hist[: self.it]

    def _cover(self) -> None:
        """Grow the monotonicity operator to cover every box about its peak (+1 px)."""
        comp = self.blend._packed.comp
        if len(comp):
            self.mono.ensure(_adam_cy.monotonic_reach(comp))

    def repack(self, new_boxes: np.ndarray | None = None) -> None:
        """Re-pack after boxes changed (``new_boxes``: (K, 4) for the current components) or
        components were added to the sources; morphologies and ADAM moments are kept on the
        overlap of old and new boxes (new pixels and new components start at 0, new
        components with their own SED and morphology). Components are re-bound to the
        buffers by :meth:`bind` (at the end of the fit), not here."""
        old = self.blend._packed
        comps = self.blend.components
        K, B = len(comps), old.sed.shape[1]
        same = len(comps) == len(self._components) and all(
            a is b for a, b in zip(comps, self._components, strict=True)
        )
        if same:
            mapping = np.arange(K, dtype=np.int64)
            boxes = old.comp[:, :4] if new_boxes is None else new_boxes
        else:
            old_index = {id(c): k for k, c in enumerate(self._components)}
            mapping = np.array([old_index.get(id(c), -1) for c in comps], dtype=np.int64)
            boxes = np.array(
                [old.comp[k, :4] if k >= 0 else c.box for k, c in zip(mapping, comps, strict=True)],
                dtype=np.int64,
            )
            self._peaks = np.array([c.peak for c in comps], dtype=np.int64).reshape(-1, 2)
        comp = np.zeros((K, 7), dtype=np.int64)
        comp[:, :4] = boxes
        sizes = comp[:, 2] * comp[:, 3]
        comp[1:, 4] = np.cumsum(sizes)[:-1]
        comp[:, 5:] = self._peaks - comp[:, :2]
        self._regrid(comp, int(sizes.sum()), mapping)
        if same:
            return
        kept = mapping >= 0
        sed = np.zeros((K, B))
        sed[kept] = old.sed[mapping[kept]]
        sed_state = np.zeros((3, K, B))
        sed_state[:, kept] = self.sed_state[:, mapping[kept]]
        thresh = np.array([-1.0 if c.bg_thresh is None else c.bg_thresh for c in comps])
        packed = PackedComponents(sed, self.morph_all[0], comp, thresh)
        for j in np.flatnonzero(~kept):  # added components bring their own parameters
            sed[j] = comps[j].sed
            packed.morph_view(j)[...] = comps[j].morphology
        self.blend._packed = packed
        self.sed_state = sed_state
        self._components = comps

    def _regrid(self, comp: np.ndarray, size: int, mapping: np.ndarray) -> None:
        """Move the morphologies and their moments onto the table ``comp`` (same SEDs), in
        new buffers with room for it."""
        old = self.blend._packed
        rows = self.morph_all
        self._new_buffers(size)
        dst = self.morph_all
        for r in range(4):
            _adam_cy.copy_overlap(np.ascontiguousarray(rows[r]), old.comp, dst[r], comp, mapping)
        self.blend._packed = PackedComponents(old.sed, dst[0], comp, old.bg_thresh)
        self._cover()

    def bind(self) -> None:
        """Point the components' ``sed``/``morphology``/``box`` at the packed buffers."""
        self.blend._packed.bind(self._components)

    def _bind(self, p: PackedComponents, bounds: np.ndarray, new_comp: np.ndarray) -> None:
        """Point the fit kernel at the packed parameters and the current morphology buffer."""
        self.kernel.bind(
            p.sed,
            self.sed_state,
            self._mbuf[self._cur],
            p.comp,
            p.bg_thresh,
            self.mono.table,
            bounds,
            self._peaks,
            new_comp,
            self._mbuf[1 - self._cur],
            0,
            self._size,
        )

    def run(self, max_iter: int) -> bool:
        """Iterate until convergence (at least ``min_iter`` iterations from now) or until
        the blend's iteration count reaches ``max_iter``; returns whether it converged."""
        cfg = self.config
        start = self.it
        if max_iter > self._hist.size:
            self._hist = np.concatenate([self._hist, np.zeros(max_iter - self._hist.size)])
            self.kernel.set_history(self._hist)
        K = len(self._components)
        bounds = np.empty((K, 4), dtype=np.int64)
        new_comp = np.empty((K, 7), dtype=np.int64)
        identity = np.arange(K, dtype=np.int64)
        kernel, bound, converged = self.kernel, None, False
        while self.it < max_iter:
            p = self.blend._packed
            if p is not bound:  # first iteration and after Python re-packed
                self._bind(p, bounds, new_comp)
                bound = p
            best = self._best_buffers(p) if cfg.keep_best else (None, None, None)
            b = self.best
            # windowed test: one iteration per call, the test below (the kernel's is off)
            stop, e_rel = (
                (min(max_iter, self.it + 1), 0.0) if cfg.converge_window else (max_iter, cfg.e_rel)
            )
            status, self.it, size, improved, best_loss, best_size = kernel.iterate(
                self.it,
                start,
                stop,
                cfg.min_iter,
                e_rel,
                cfg.resize or 0,
                cfg.component_padding,
                *best,
                b is not None,
                b[0] if b is not None else 0.0,
            )
            if cfg.converge_window and self.it > start + cfg.min_iter and self._settled():
                status |= _adam_cy.CONVERGED
            # the kernel may have re-gridded into the other buffer (p.comp updated in place)
            if kernel.current != 0 or kernel.size != self._size:
                self._cur = (self._cur + kernel.current) % 2
                self._size = kernel.size
                p = PackedComponents(p.sed, self.morph_all[0], p.comp, p.bg_thresh)
                self.blend._packed = bound = p
                self._bind(p, bounds, new_comp)
            if improved:
                self.best = (best_loss, best[0], best[1][:best_size], best[2], p.bg_thresh)
            if status & _adam_cy.RESIZED:  # the new layout needs room: Python makes it
                self._regrid(new_comp.copy(), size, identity)
            if status & _adam_cy.CONVERGED:
                converged = True
                break
        self.bind()
        return converged

    def _settled(self) -> bool:
        """Whether the lowest loss so far improved by less than ``e_rel`` per iteration
        over the last ``converge_window`` iterations.

        The reference stops after one iteration with ``|L[-1] - L[-2]| < e_rel |L[-1]|``.
        The loss of proximal ADAM is not monotone: during the fast descent it often takes a
        nearly flat step (a box resize, the prox trimming a component) and the one-step
        test stops the fit far from the minimum (the bundled HSC blend with the initial trim
        in detection units: loss 56,441 after 8 iterations, 8,258 when the fit goes on),
        while later the loss jumps by a percent between iterations and the test may never
        pass. The running minimum over a window sees neither.
        """
        w = self.config.converge_window
        h = self._hist[: self.it]
        if h.size < w + 1:
            return False
        run = np.minimum.accumulate(h)
        old, new = run[-w - 1], run[-1]
        tol = w * self.config.e_rel * abs(new)
        # the best has stalled, and not because the loss is up on a jump (after a box resize
        # the loss can stay above the best for a few iterations and then fall below it)
        return bool(old - new < tol and h[-1] - new < tol)

    def _best_buffers(self, p: PackedComponents) -> tuple:
        """Buffers for the kernel's copy of the best iterate: reused while they fit, new
        ones once the stored best lives in them and a bigger layout needs more room."""
        cap = self._mbuf[0].shape[1]
        bufs = self._best_bufs
        if bufs is None or bufs[0].shape != p.sed.shape or bufs[1].size < cap:
            bufs = self._best_bufs = (
                np.empty_like(p.sed),
                np.empty(cap),
                np.empty((len(p.comp), 7), dtype=np.int64),
            )
        return bufs

    def final_loss(self) -> float:
        """Loss of the current parameters."""
        p = self.blend._packed
        _adam_cy.render(p.sed, p.morph, p.comp, self.model)
        return float(self.obs.loss(self.model))

    def restore_best(self, loss: float) -> float:
        """Go back to the best iterate seen if its loss is below ``loss`` (the current
        parameters'); returns the loss of the parameters kept."""
        if self.best is None or not self.best[0] < loss:
            return loss
        best, sed, morph, comp, thresh = self.best
        self.blend._packed = PackedComponents(sed, morph, comp, thresh)
        self.bind()
        return best

    def rescue(self) -> int:
        """Give under-fitted sources a point-like component (see DeblendConfig.rescue_faint).

        A source is under-fitted when the residual ``images - conv(model)`` at its peak has a
        point-source S/N of at least ``rescue_snr`` and a point-source flux above
        ``rescue_fraction`` times the source's model flux. Returns how many were rescued.
        """
        cfg = self.config
        obs = self.obs
        p = self.blend._packed
        sources = [src for src in self.blend.sources if not src.is_null]
        if not sources:
            return 0
        _adam_cy.render(p.sed, p.morph, p.comp, self.model)
        conv = obs.convolve(self.model)
        B = conv.shape[0]
        # weighted least-squares amplitude of a point source in the residual images - conv
        # at every peak, per band (one Cython call, on the PSF stamps only)
        pp, rp = np.empty((len(sources), B)), np.empty((len(sources), B))
        _adam_cy.point_source_products(
            obs.weights,
            obs.images,
            conv,
            np.ascontiguousarray(obs.psfs, dtype=np.float64),
            np.array([s.peak for s in sources], dtype=np.int64),
            pp,
            rp,
        )
        amp = np.divide(rp, pp, out=np.zeros_like(rp), where=pp > 0)
        num, den = rp.sum(axis=1), pp.sum(axis=1)
        snr = np.divide(num, np.sqrt(den), out=np.zeros_like(num), where=den > 0)
        # each source's model flux from the packed parameters (components in source order)
        comp_flux = p.sed.sum(axis=1) * _morph_sums(p)
        starts = np.cumsum([0] + [len(s.components) for s in self.blend.sources])
        flux = {
            id(s): float(comp_flux[starts[k] : starts[k + 1]].sum())
            for k, s in enumerate(self.blend.sources)
        }
        model_psf = _model_psf(obs)
        added = 0
        for i, src in enumerate(sources):
            if (
                snr[i] < cfg.rescue_snr
                or np.sum(np.maximum(amp[i], 0)) <= cfg.rescue_fraction * flux[id(src)]
            ):
                continue
            sl_img, sl_psf = _centered_overlap(conv.shape[1:], model_psf.shape, *src.peak)
            morph = model_psf[sl_psf] / model_psf.max()
            box = (sl_img[0].start, sl_img[1].start, morph.shape[0], morph.shape[1])
            sed = np.maximum(amp[i], cfg.floor) * model_psf.max()
            src.components.append(Component(sed, morph, box, src.peak, cfg.bg_thresh, "psf"))
            added += 1
        if added:
            self.repack()
            self.best = None  # earlier iterates lack the new components
        return added


def _morph_sums(p: PackedComponents) -> np.ndarray:
    """(K,) sum of each packed component's morphology."""
    sizes = p.comp[:, 2] * p.comp[:, 3]
    sums = np.zeros(len(sizes))
    nonempty = sizes > 0
    if nonempty.any():
        sums[nonempty] = np.add.reduceat(p.morph, p.comp[nonempty, 4])
    return sums


def fit_blend(
    blend: Blend, config: DeblendConfig, stats: dict | None = None
) -> tuple[float, np.ndarray, int, bool]:
    """Proximal ADAM fit of every component of ``blend`` (docs/spec/multi_band.md 3.3-3.10), in
    place.

    With ``config.rescue_faint``, sources left under-fitted at convergence get a point-like
    component and the fit continues (at most ``config.rescue_rounds`` times). ``stats``, if
    given, receives ``rescued``: the number of components so added.

    Returns
    -------
    loss : float
        Loss of the final parameters.
    history : numpy.ndarray
        Loss before each iteration's update.
    iterations : int
    converged : bool
    """
    fitter = _Fitter(blend, config)
    converged = fitter.run(config.max_iter)
    rescued = 0
    if config.rescue_faint and config.max_iter > 0:
        for _ in range(config.rescue_rounds):
            added = fitter.rescue() if fitter.it < config.max_iter else 0
            if not added:
                break
            rescued += added
            converged = fitter.run(config.max_iter)
    if stats is not None:
        stats["rescued"] = rescued
    loss = fitter.final_loss()
    if config.keep_best:
        loss = fitter.restore_best(loss)
    return loss, fitter.history.copy(), fitter.it, converged
