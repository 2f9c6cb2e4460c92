"""Settings of the multi-band deblender (:class:`DeblendConfig`).

Kept apart from the deblender so that the modules it drives (:mod:`cdeblend.initialization`,
:mod:`cdeblend.fit`, :mod:`cdeblend.incremental`, :mod:`cdeblend.fallback`) can take their
settings from here without importing the deblender that imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .observation import MODEL_PSF_SIGMA

__all__ = ["CONSERVED_THRESH", "OPTIMIZERS", "DeblendConfig", "check_conserved_thresh"]

#: Default of ``DeblendConfig.conserved_thresh`` (noise RMS units), shared with the stored
#: models (:class:`cdeblend.ModelData`).
CONSERVED_THRESH = 0.03


def _real_number(name: str, value: Any) -> float:
    """``value`` as a float, or a TypeError naming ``name`` (str, bytes, bool, None, arrays
    and other non-numbers)."""
    if isinstance(value, (str, bytes, bool, np.bool_)) or value is None or np.ndim(value) != 0:
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None


def check_conserved_thresh(value: Any) -> float:
    """``value`` as a children's footprint threshold (``conserved_thresh``): a finite
    number >= 0 (TypeError for what is not a number, ValueError for the rest)."""
    thresh = _real_number("conserved_thresh", value)
    if not (np.isfinite(thresh) and thresh >= 0):
        raise ValueError(f"conserved_thresh must be a finite number >= 0, got {value!r}")
    return thresh


#: Names of the fit's optimizers (``DeblendConfig.optimizer``).
OPTIMIZERS = ("amsgrad", "adam")

#: The settings that name one of a few choices, and their choices.
_CHOICES = {
    "sed_solver": ("nnls", "lstsq"),
    "symmetry_center": ("peak", "subpixel"),
    "rescue_lost_sed": ("fit", "peak", "shoulder"),
    "rescue_shape": ("initial", "psf"),
    "init_thresh_units": ("image", "detection"),
    "convergence": ("settled", "lowest"),
}


@dataclass(frozen=True)
class DeblendConfig:
    """Settings of the multi-band deblender.

    The defaults are the LSST pipeline's settings (section 6 of the specification) with
    corrections that measured better on simulated blends (see the README's Defaults):
    non-negative initial SEDs (``sed_solver``), the best iterate is returned
    (``keep_best``), detected sources are kept alive (``rescue_faint``), the initial trim is
    in the detection image's units (``init_thresh_units``), the fit stops when its lowest
    loss has settled over a window of two box resizes (``e_rel``, ``converge_window``,
    ``convergence``) and returns the best iterate, the conserved children share only the
    pixels where the model is significant (``conserved_thresh``), and PSF-shaped fallback
    components are cropped and normalised correctly and use ``bg_thresh``.
    :meth:`reference` follows the reference (its loss on the bundled HSC blend, 9011 after
    48 iterations, is reproduced).

    Fit
    ---
    max_iter : int
        Maximum number of iterations (300). 0 skips the fit (the initial model is returned).
    e_rel : float
        Convergence tolerance per iteration (3e-4; the reference's 1e-3). With
        ``peak_carry`` the loss falls below the old default's final loss in a third of the
        iterations and then oscillates by 1-5 %: 1e-4 never stopped on a 2000 x 2000 scene.
    min_iter : int
        No convergence test before this many iterations (5).
    converge_window : int
        Stop when, over the last ``converge_window`` iterations (6, two box resizes), the
        lowest loss so far improved by less than ``converge_window * e_rel`` of itself
        (:func:`cdeblend._adam_cy.settled`, tested inside the fit kernel; see
        ``convergence`` for the last loss). 0: the reference's test,
        ``|L[-1] - L[-2]| < e_rel * |L[-1]|``, which stops on the first flat step of the
        fast descent. A window equal to the ``resize`` period compares the lowest losses of
        consecutive resize cycles, and a resize that throws the loss back each cycle can
        keep them equal mid-descent (a bundled harder LSST-like blend stops after 9
        iterations at 2.6 times the loss it reaches with a window of 3;
        tests/test_disk_split_window.py); two periods avoid that.
    convergence : str
        What the windowed test asks of the last loss. "lowest" (default): nothing; only the
        lowest loss counts, and the best iterate is returned. "settled": the last loss must
        also be within the tolerance of the lowest (the default before, with a window of
        3), as it must with ``keep_best=False`` (the last iterate is returned, and it
        should not be an oscillation's high point); a window of 0 is the reference's
        one-step test either way. With the peak carry the loss ends in an
        oscillation of 1-5 % with spikes of up to twice the loss (scene c of the reference's
        scaling recipe), and "settled" stops wherever the oscillation happens to touch
        the lowest loss: 52-137 iterations on copies of scene c that differ by one float32
        unit in the last place on 1 % of the pixels; "lowest" with a window of 6 stops
        them after 58-62 (bench/stopping_spread.py). On the simulated sets the change is
        inside the bootstrap interval of the paired difference in every set and bin, and
        loses fewer bright sources (bench/multi_band_paired.py; the README's Defaults).
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
    peak_carry : float
        When a morphology's step raised its peak to p > 1, multiply the SED by
        ``min(p, 1 + peak_carry)`` before the peak normalisation divides the morphology by
        p, so that the model keeps (up to that cap) what the step gave it (``inf``, the
        default: no cap; 0, the reference: the SED is left alone and the model loses the
        factor).
        The initial morphologies are the observed, PSF-convolved profiles: their light must
        concentrate, the fit raises their peaks, and with the reference's normalisation the
        SED must make up for the lost factor at its own step (1 % of its mean per
        iteration). A peak that fell is renormalised as in the reference either way.
        Without a cap a bright source's SED runs ahead of its fainter neighbours' and more
        of them fade away (bench/fit_speed.py).
    floor : float
        Minimum SED value and minimum morphology value at the peak (1e-20).

    Initialization
    --------------
    min_snr : float
        Sources with S/N >= 2 * min_snr get a bulge and a disk component (50).
    max_components : int
        At most this many components per source (2).
    disk_percentile : float
        Bulge/disk split level, percent of the peak (25). The disk starts as
        ``min(morph, level)``, flat at its maximum wherever the initial morphology is above
        the level: at 25 % that plateau holds another source's peak for 36 % of the disks
        of close pairs (68 of 187 on hard_lsst_tune), at 50 % for 9 % (17 of 188), and the
        disk takes that neighbour's light from the first iteration. 50 with
        ``converge_window=10`` (and the "settled" test) improved every bin of the four
        tuning sets and the isolated bin of the four held-out ones, but not their
        blend >= 0.3 bins nor lsst_heldout and hsc_heldout overall
        (bench/morph_constraints.py; not the default).
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
    symmetry_center : str
        Centre of the symmetry: "peak" (default), the peak pixel, or "subpixel", the
        half-pixel grid point nearest the peak's sub-pixel centre in the chi^2 detection
        image (:func:`cdeblend.peaks.subpixel_centers`): a peak pixel is up to half a pixel
        off the true centre, and symmetry about the wrong pixel removes real light.
    min_gradient : float
        In [0, 1): the radial monotonicity makes each morphology pixel at most
        ``1 - min_gradient`` times the weighted mean of its closer neighbours (0, the
        reference: plain monotonicity, which lets a bright source's profile stay flat over a
        fainter neighbour's peak and take its light; scarlet's ``min_gradient``). 0.1
        helped the harder LSST-like set but not the others (README's Defaults).
    symmetry : float
        Strength in [0, 1] of the partial 180-degree symmetry prox applied to every
        morphology after the monotonicity (0, none, as the reference). Each pixel
        whose mirror about the centre (``symmetry_center``) lies in the box moves this
        fraction of the way to the minimum of itself and its mirror
        (:func:`cdeblend._symmetry_cy.symmetrize`): radial monotonicity alone lets a bright
        source stay flat over a fainter neighbour's peak on its wing and take its light; a
        galaxy has about as much light there as at the mirror position, where no neighbour
        is. The result is monotonic only approximately. Not the default: see the README's
        Defaults (0.25 with ``symmetry_center="subpixel"`` and ``rescue_dead_level=5``
        improved every tuning set overall, but the constrained fit ends 21 % above
        scarlet lite's loss on the bundled real HSC blend, and the simulated galaxies are
        exactly symmetric); full strength (1) hurt isolated sources.
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
    rescue_shape : str
        Morphology a dead source restarts with: "initial" (default), its initial
        morphology, or "psf", the model PSF (a faint source on a bright neighbour's wing
        has a broad, flat initial morphology made mostly of the neighbour's light; "psf"
        measured worse on hard_lsst_tune: 0.0901 and 8 lost against 0.0873 and 5).
    rescue_dead_level : float or None
        The level, in noise RMS at the peak, below which (in every band) a source of the
        initial joint SED fit counts as left dead and is restarted as above (None, the
        default: the noise threshold ``bg_thresh``). A source that the joint fit left
        barely above the noise (its broad initial morphology on a neighbour's wing explains
        little) was then usually erased by the fit.
    rescue_lost : bool
        After the fit, repair the detected sources it left without light (True; see
        :mod:`cdeblend.lost`): a source of peak S/N >= ``rescue_lost_snr`` that holds less
        than ``rescue_lost_fraction`` of the convolved model at its own peak (its child's
        share of the image there) restarts as a point source, and the other sources'
        components whose boxes hold its peak lose their shoulder there (each pixel near it
        becomes the minimum of itself and its mirror about the component's sub-pixel centre:
        radial monotonicity let the bright neighbour stay flat over the faint peak and take
        its light). No iterations are added. A repair that leaves a touched neighbour with
        less than ``rescue_lost_fraction`` of its flux, or the source with less than it had,
        is not kept; refused for a neighbour, it is tried again without touching that
        neighbour (up to three attempts: lost 3 -> 1 on the tuning sets, 4 -> 1 held out).
        On the tuning sets (``bench/morph_constraints.py``) it lowered the lost
        S/N >= 20 sources from 21 to 7 and every blendedness bin's median |dF/F|. The share
        was first taken in the model frame, where a bright star's narrow model does not
        reach a galaxy 3 px away; taken through the observed PSF it finds the galaxies under
        a star's wing too (lost 4 -> 3 on the tuning sets, 9 -> 4 held out).
    rescue_lost_snr : float
        Minimum matched-filter S/N at the peak of a source to repair (20).
    rescue_lost_fraction : float
        A source holding less than this fraction of the convolved model (all bands) at its
        own peak counts as lost (0.25).
    rescue_lost_sed : str
        SED of the restarted point source: "peak" (default), the image at its peak minus
        every other model there (the neighbours without their shoulders), then the touched
        neighbours' SEDs fitted (NNLS) to the images minus every other component; "fit",
        its SED and the touched neighbours' fitted jointly; "shoulder", the "peak" point
        source while the neighbours keep their SEDs (they only lose the shoulder).
    shape_prior : bool
        Before that repair, fit each lost source's neighbourhood with Gaussians centred on
        the peaks, and when the fit left a lost source with less than ``shape_prior_gate``
        of its Gaussian flux, fit the blend again from the deblender's start with those
        sources' SEDs scaled to their Gaussian fluxes, and keep that fit when the rule
        below prefers it (False; :mod:`cdeblend.shape_prior`). It can mend the large
        galaxy that the fit hands to a compact neighbour 3-4 px away, a split the images
        alone do not rule out, but the Gaussians also inflate faint sources on a bright
        neighbour's wing, and it fires on a fifth of the harder LSST-like blends: off by
        default (README.md, "What is still lost"). When the second fit is kept the
        result's iterations, loss history and convergence are the second fit's.
    shape_prior_gate : float
        The fraction of its Gaussian flux below which a lost source counts as starved (0.2).
    shape_prior_radius : int
        Half-size in pixels of the window fitted around a lost source (20).
    shape_prior_gaussians : int
        Gaussians per source in that fit, sharing its peak as centre (2; one Gaussian
        balloons faint sources).
    shape_prior_compactness, shape_prior_revival, shape_prior_loss : float
        The second fit is kept when its loss is at most ``shape_prior_loss`` (1, >= 0)
        times sqrt(N/2) above the first's (N: the pixel values with data), and either the
        windows' light, weighted by the squared distance from each source's own peak, is
        below ``shape_prior_compactness`` (0.97, in (0, 1]) times the first fit's, or a
        starved source's model flux grew by more than ``shape_prior_revival`` (10, >= 1)
        times; else the first fit is kept (:func:`cdeblend.shape_prior.prefer_second`).

    Children
    --------
    conserved_thresh : float
        The conserved (flux re-apportioned) children share the image only on the pixels
        where, in at least one band, the total convolved model reaches ``conserved_thresh``
        times the noise RMS ``sqrt(variance)`` (0.03): the children's footprint, the same in
        every band. 0 shares every pixel where the total model is positive (scarlet lite's
        rule, :meth:`reference`). The convolved models keep the observed PSF's faint wings
        over the whole blend; where they predict a few hundredths of the noise a child takes
        its share of the pixel's noise but almost none of its own light. On the tuning sets
        (``bench/conserved_footprint.py``) the footprint lowered the median |dF/F| of every
        set by 10-20 % (noise) for a flux bias of -0.5 to -1 % (the truncated wings);
        0.02-0.05 measured alike.

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
    e_rel: float = 3e-4
    min_iter: int = 5
    converge_window: int = 6
    convergence: str = "lowest"
    resize: int | None = 3
    optimizer: str = "amsgrad"
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    morph_step: float = 0.01
    sed_step: float = 0.01
    sed_min_step: float = 0.1
    peak_carry: float = float("inf")
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
    model_psf_sigma: float | None = MODEL_PSF_SIGMA
    bg_thresh: float | None = 1.0
    component_padding: int = 5
    monotonicity_size: int = 101
    min_gradient: float = 0.0
    symmetry: float = 0.0
    symmetry_center: str = "peak"
    psf_fallback_bg_thresh: float | None = None
    center_flip_quirk: bool = False
    keep_best: bool = True
    rescue_faint: bool = True
    rescue_snr: float = 10.0
    rescue_fraction: float = 0.5
    rescue_rounds: int = 2
    rescue_init_level: float = 5.0
    rescue_dead_level: float | None = None
    rescue_shape: str = "initial"
    rescue_lost: bool = True
    rescue_lost_snr: float = 20.0
    rescue_lost_fraction: float = 0.25
    rescue_lost_sed: str = "peak"
    shape_prior: bool = False
    shape_prior_gate: float = 0.2
    shape_prior_radius: int = 20
    shape_prior_gaussians: int = 2
    shape_prior_compactness: float = 0.97
    shape_prior_revival: float = 10.0
    shape_prior_loss: float = 1.0
    conserved_thresh: float = CONSERVED_THRESH
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
        clipped at 0, the last iterate returned, no rescue of faint or lost sources, no
        symmetry prox, no peak carry, and children sharing every pixel where the model is
        positive: it reproduces the reference's loss on the bundled
        HSC blend (9011 after 48 iterations). ``overrides`` replace single fields.
        """
        settings = dict(
            e_rel=1e-3,
            converge_window=0,
            convergence="settled",
            init_thresh_units="image",
            sed_solver="lstsq",
            keep_best=False,
            rescue_faint=False,
            symmetry=0.0,
            symmetry_center="peak",
            rescue_dead_level=None,
            rescue_lost=False,
            shape_prior=False,
            peak_carry=0.0,
            conserved_thresh=0.0,
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
            "shape_prior_radius",
        ):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
        if self.resize is not None and (
            not isinstance(self.resize, (int, np.integer)) or self.resize < 1
        ):
            raise ValueError(f"resize must be a positive integer or None, got {self.resize!r}")
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
            "rescue_lost_snr",
            "rescue_lost_fraction",
        ):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not self.peak_carry >= 0:  # inf allowed (no cap); NaN fails here
            raise ValueError(f"peak_carry must be >= 0, got {self.peak_carry!r}")
        if not (np.isfinite(self.min_gradient) and 0 <= self.min_gradient < 1):
            raise ValueError(f"min_gradient must be in [0, 1), got {self.min_gradient!r}")
        if not (np.isfinite(self.symmetry) and 0 <= self.symmetry <= 1):
            raise ValueError(f"symmetry must be in [0, 1], got {self.symmetry!r}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ValueError(f"b1 and b2 must be in [0, 1), got {self.b1!r}, {self.b2!r}")
        check_conserved_thresh(self.conserved_thresh)
        if not (np.isfinite(self.shape_prior_gate) and 0 <= self.shape_prior_gate <= 1):
            raise ValueError(f"shape_prior_gate must be in [0, 1], got {self.shape_prior_gate!r}")
        if not self.shape_prior_radius >= 1:
            raise ValueError(f"shape_prior_radius must be >= 1, got {self.shape_prior_radius!r}")
        self._check_shape_prior_choice()
        g = self.shape_prior_gaussians
        if isinstance(g, bool) or not isinstance(g, (int, np.integer)) or not 1 <= g <= 4:
            raise ValueError(f"shape_prior_gaussians must be an integer in [1, 4], got {g!r}")
        if not self.rescue_lost_fraction <= 1:
            raise ValueError(
                f"rescue_lost_fraction must be in [0, 1], got {self.rescue_lost_fraction!r}"
            )
        self._check_choices()
        if not 0 < self.disk_percentile < 100:
            raise ValueError(f"disk_percentile must be in (0, 100), got {self.disk_percentile}")
        if self.model_psf_sigma is not None and not self.model_psf_sigma > 0:
            raise ValueError(f"model_psf_sigma must be > 0 or None, got {self.model_psf_sigma!r}")
        for name in ("bg_thresh", "psf_fallback_bg_thresh", "rescue_dead_level"):
            v = getattr(self, name)
            if v is not None and not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be >= 0 or None, got {v!r}")
        self._check_residual_options()
        if self.monotonicity_size < 3 or self.monotonicity_size % 2 == 0:
            raise ValueError(
                f"monotonicity_size must be odd and >= 3, got {self.monotonicity_size}"
            )

    def _check_shape_prior_choice(self) -> None:
        """The bounds of the shape prior's choice of fit: a loss margin >= 0, a compactness
        factor in (0, 1] (above 1 a less compact fit would count as more compact) and a
        revival factor >= 1 (below 1 a shrinking source would count as revived)."""
        loss = _real_number("shape_prior_loss", self.shape_prior_loss)
        if not (np.isfinite(loss) and loss >= 0):
            raise ValueError(f"shape_prior_loss must be a finite number >= 0, got {loss!r}")
        compact = _real_number("shape_prior_compactness", self.shape_prior_compactness)
        if not 0 < compact <= 1:
            raise ValueError(f"shape_prior_compactness must be in (0, 1], got {compact!r}")
        revival = _real_number("shape_prior_revival", self.shape_prior_revival)
        if not (np.isfinite(revival) and revival >= 1):
            raise ValueError(f"shape_prior_revival must be a finite number >= 1, got {revival!r}")

    def _check_choices(self) -> None:
        """Validate the settings that name one of a few choices."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {sorted(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        for name, options in _CHOICES.items():
            value = getattr(self, name)
            if value not in options:
                *rest, last = (repr(o) for o in options)
                raise ValueError(f"{name} must be {', '.join(rest)} or {last}, got {value!r}")

    def _check_residual_options(self) -> None:
        """Validate the residual-source settings."""
        for name in ("residual_snr", "residual_min_distance", "residual_model_ratio"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        v = self.residual_max_sources
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"residual_max_sources must be a non-negative integer, got {v!r}")
