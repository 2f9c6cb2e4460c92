"""Initial morphologies and SEDs of a multi-band blend (scarlet lite's chi^2 initializer).

Per peak (docs/spec/multi_band.md 2.2): the chi^2 detection image is made 180 degree symmetric
about the peak,
the pixels reachable from the peak by non-increasing positive paths form the morphology
(the monotonic mask, a Cython flood fill that only touches the pixels it accepts, so the
cost per peak is the size of the source, not of the blend), the morphology is trimmed at
the noise level and boxed, and the SED is the ratio of the image to the convolved detection
image at the peak. Peaks that give nothing get a PSF-shaped component. Bright sources are
split into a bulge and a disk. Finally all SEDs are fitted jointly by least squares.

The work on stamps runs in the Cython kernels of ``_initialization_cy``, which keep the GIL
for small blends (numpy handed it over for every call on a stamp: two threads initialising
small blends ran slower than one) and release it for big ones.
"""

from __future__ import annotations

import numpy as np

from . import _initialization_cy
from .blend import Blend, Box, Component, Source
from .deblend_config import DeblendConfig

__all__ = [
    "chi2_coadd",
    "initialize_blend",
    "model_psf_array",
    "peak_snr",
]


def chi2_coadd(observation) -> np.ndarray:
    """The chi^2 (inverse-variance, "Kaiser") coadd ``sum_b images_b / noise_rms_b**2``.

    The initializer's image, not :func:`cdeblend.detection_image`: each band weighs by its
    one noise level (not per pixel), and the sum stays in image units over variance (it is
    not divided by ``sqrt(sum_b 1 / noise_rms_b**2)`` into S/N, nor filtered).

    Parameters
    ----------
    observation : Observation
        The blend's data.

    Returns
    -------
    numpy.ndarray
        (H, W) float64, the bands added in order (bands with zero noise get no weight).
    """
    noise = np.asarray(observation.noise_rms, dtype=np.float64)
    return _initialization_cy.detection_coadd(np.ascontiguousarray(observation.images), noise)


def _peak_snrs(observation, peaks: np.ndarray) -> np.ndarray:
    """:func:`peak_snr` of every row of ``peaks`` ((N, 2) intp), in one kernel call."""
    return _initialization_cy.peak_snrs(
        np.ascontiguousarray(observation.images),
        np.ascontiguousarray(observation.variance),
        np.ascontiguousarray(observation.psfs),
        peaks,
    )


def peak_snr(observation, peak: tuple[int, int]) -> float:
    """Matched-filter S/N of a point source at ``peak`` over all bands (docs/spec/multi_band.md
    2.2 step 1).

    Parameters
    ----------
    observation : Observation
        The blend's data.
    peak : tuple of int
        (y, x) inside the blend.

    Returns
    -------
    float
        ``sum(I P) / sqrt(sum(P^2 V))`` over the overlap of the image and the PSFs centred
        on the peak, all bands together (0 when the denominator is not positive).
    """
    peaks = np.array([[peak[0], peak[1]]], dtype=np.intp)
    return float(_peak_snrs(observation, peaks)[0])


class _MaskWorkspace:
    """Buffers of the monotonic-mask flood fill, allocated once per blend; the kernels
    leave them zeroed (they reset them through the list of accepted pixels)."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.accepted, self.queue, self.values = _initialization_cy.mask_buffers(*shape)


def _extended_morphology(
    D: np.ndarray,
    peak: tuple[int, int],
    t0: float,
    padding: int,
    ws: _MaskWorkspace,
    center_flip_quirk: bool,
    claimed: np.ndarray | None = None,
    covered: np.ndarray | None = None,
) -> tuple[np.ndarray, Box, float] | None:
    """Symmetric + monotonic-mask morphology of one peak (docs/spec/multi_band.md 2.2 steps 2-6).

    Parameters
    ----------
    D : numpy.ndarray
        (H, W) float64 C-contiguous detection image.
    peak : tuple of int
        (y, x).
    t0 : float
        Trim threshold (no trim when <= 0).
    padding : int
        Padding of the box (twice around the trimmed pixels).
    ws : _MaskWorkspace
        The blend's flood-fill buffers.
    center_flip_quirk : bool
        Symmetrise the central peak about the middle of the array (the reference).
    claimed, covered : numpy.ndarray, optional
        (H, W) float64 and uint8 (``residual_init``): the peak's positive accepted values are
        added to ``claimed`` and mark ``covered``.

    Returns
    -------
    None or (morph, box, peak_value)
        None when nothing extended is left; else the peak-normalised morphology, its box and
        the value it was divided by.
    """
    return _initialization_cy.extended_morphology(
        D,
        peak[0],
        peak[1],
        center_flip_quirk,
        t0,
        padding,
        ws.accepted,
        ws.queue,
        ws.values,
        claimed,
        covered,
    )


def model_psf_array(observation) -> np.ndarray:
    """The model PSF as a 2-D float64 array (a single pixel for PSF-matched data)."""
    if observation.model_psf is None:
        return np.ones((1, 1))
    P = np.asarray(observation.model_psf, dtype=np.float64)
    return P.reshape(P.shape[-2:])


def _fit_all_seds(blend: Blend, observation, config: DeblendConfig) -> bool:
    """Joint least-squares SEDs of all components (non-negative, see ``sed_solver``)."""
    from . import spectra

    comps = blend.components
    try:
        # the morphologies were just made here (finite, on their boxes): no checks
        seds = np.asarray(
            spectra.fit_seds_checked(
                observation,
                [c.morphology for c in comps],
                [c.box for c in comps],
                config.weighted_sed_fit,
                observation.images,
                config.sed_solver,
            )
        )
    except np.linalg.LinAlgError:
        return False
    if not np.all(np.isfinite(seds)):
        return False
    for c, s in zip(comps, seds, strict=True):
        c.sed = np.ascontiguousarray(np.maximum(s, 0), dtype=np.float64)
    return True


def _revive_dead_sources(
    blend: Blend, observation, singles: list, init_seds: list, config: DeblendConfig
) -> int:
    """Restart the sources that the joint SED fit left below the noise threshold.

    A detected source whose fitted SEDs put even its peak below the noise threshold in
    every band would be erased by the first prox and lost for good: the joint fit hands its
    light to brighter neighbours whose initial models overlap it. It restarts as its single
    initial component, at most ``config.rescue_init_level`` times the noise RMS at its peak
    (its peak-ratio colours), and the other sources' SEDs are fitted again to the images
    minus the restarted ones. Restarting at the full peak-ratio SED instead double-counts
    the light the neighbours already hold (the peak of a faint source on a neighbour's wing
    is mostly the neighbour, and its monotonic initial morphology is a broad plateau over
    that wing): on harder LSST-like blends that start raised the initial loss by up to 2x,
    the fit then stopped early on the slow stretch after the first big drop, and the fluxes
    of every blendedness bin got worse (see the README's Defaults).

    Returns the number of sources restarted.
    """
    from . import spectra

    noise = np.asarray(observation.noise_rms, dtype=np.float64)
    comps = blend.components
    level = config.bg_thresh if config.rescue_dead_level is None else config.rescue_dead_level
    thresh = noise * (level or 0.0)
    above = np.any(np.array([c.sed for c in comps]) > thresh, axis=1).tolist()
    dead, k = [], 0
    for src, single, sed in zip(blend.sources, singles, init_seds, strict=True):
        nc = len(src.components)
        if not any(above[k : k + nc]):
            sed = np.maximum(np.asarray(sed, dtype=np.float64), 0.0)
            level = np.max(np.divide(sed, noise, out=np.zeros_like(sed), where=noise > 0))
            if level > config.rescue_init_level:
                sed = sed * (config.rescue_init_level / level)
            single.sed = sed
            if config.rescue_shape == "psf" and single.kind != "psf":
                single = _point_like(observation, single)
            src.components = [single]
            dead.append(src)
        k += nc
    if not dead:
        return 0
    revived = {id(src) for src in dead}
    others = [c for src in blend.sources if id(src) not in revived for c in src.components]
    if not others:
        return len(dead)
    B, H, W = observation.shape
    fixed = np.zeros((B, H, W), dtype=observation.dtype)
    for src in dead:
        c = src.components[0]
        y0, x0, h, w = c.box
        fixed[:, y0 : y0 + h, x0 : x0 + w] += c.sed[:, None, None] * c.morphology[None]
    data = observation.images - observation.convolve(fixed)
    try:
        seds = np.asarray(
            spectra.fit_seds_checked(
                observation,
                [c.morphology for c in others],
                [c.box for c in others],
                config.weighted_sed_fit,
                data,
                config.sed_solver,
            )
        )
    except np.linalg.LinAlgError:
        return len(dead)  # keep the first joint fit's SEDs
    if np.all(np.isfinite(seds)):
        for c, s in zip(others, seds, strict=True):
            c.sed = np.ascontiguousarray(np.maximum(s, 0), dtype=np.float64)
    return len(dead)


def _point_like(observation, single: Component) -> Component:
    """``single`` restarted with the model PSF's shape (peak-normalised, so the same SED
    gives the same peak level) instead of its initial morphology (``rescue_shape="psf"``)."""
    model_psf = model_psf_array(observation)
    kernels = np.ascontiguousarray(observation.diff_kernels)
    psf_peak = _initialization_cy.conv_at(
        model_psf, kernels, model_psf.shape[0] // 2, model_psf.shape[1] // 2
    )
    morph, box, _ = _initialization_cy.psf_component(
        model_psf, np.ascontiguousarray(observation.images), *single.peak, psf_peak
    )
    return Component(single.sed, morph, box, single.peak, single.bg_thresh, kind="extended")


def initialize_blend(observation, peaks: np.ndarray, config: DeblendConfig) -> tuple[Blend, dict]:
    """Initial sources of a blend (docs/spec/multi_band.md 2.1-2.4).

    Parameters
    ----------
    observation : Observation
        The blend's data.
    peaks : numpy.ndarray
        (N, 2) int (y, x), validated by the caller.
    config : DeblendConfig
        Thresholds, paddings and the component rules.

    Returns
    -------
    blend : Blend
        One source per peak, with initial SEDs (jointly fitted when ``config.set_spectra``).
    info : dict
        ``snr`` (N,), ``spectrum_init`` (bool: the joint SED fit ran).
    """
    B, H, W = observation.shape
    D = chi2_coadd(observation)
    peak_arr = np.ascontiguousarray(peaks, dtype=np.intp).reshape(-1, 2)
    peak_list = [(int(y), int(x)) for y, x in peak_arr.tolist()]
    exts = _extended_morphologies(D, peak_list, _trim_level(observation, config), config)
    snrs = _peak_snrs(observation, peak_arr)
    blend, singles, init_seds = _initial_sources(observation, D, peak_arr, exts, snrs, config)
    ran = False
    cutoff = config.max_spectrum_cutoff
    if config.set_spectra and (cutoff <= 0 or len(peak_list) * H * W < cutoff):
        ran = _fit_all_seds(blend, observation, config)
    if not ran:
        _fit_bulge_disk_seds(blend, observation, singles, config)
    if ran and config.rescue_faint and blend.components:
        _revive_dead_sources(blend, observation, singles, init_seds, config)
    _floor_seds(blend, config)
    return blend, {"snr": snrs, "spectrum_init": ran}


def _trim_level(observation, config: DeblendConfig) -> float:
    """Level at which the initial morphologies are trimmed (``init_thresh_units``)."""
    noise = np.asarray(observation.noise_rms, dtype=np.float64)
    if config.init_thresh_units == "detection":
        return float(np.sqrt(np.sum(1.0 / noise[noise > 0] ** 2))) * config.initial_bg_thresh
    # the reference: image units, although the detection image is not
    return float(noise.sum()) / noise.size * config.initial_bg_thresh  # np.mean(noise)


def _extended_morphologies(
    D: np.ndarray, peak_list: list, t0: float, config: DeblendConfig
) -> list:
    """Each peak's extended morphology ``(morph, box, scale)`` or None, brightest first.

    With ``residual_init`` a peak that lies inside the monotonic mask of a brighter one is
    initialised from the detection image minus what the brighter ones claimed (their
    symmetric masks), so that a faint source on a bright neighbour's wing starts from its
    own light, not from a symmetrised piece of the neighbour (off by default: it did not
    improve the simulations).
    """
    ws = _MaskWorkspace(D.shape)
    exts: list = [None] * len(peak_list)
    claimed = covered = None
    if config.residual_init:
        claimed = np.zeros(D.shape)
        covered = np.zeros(D.shape, dtype=np.uint8)
    # brightest first, ties in peak order, NaN last: np.argsort(-D[peaks], kind="stable"),
    # in Python because numpy's fancy indexing and argsort hand the GIL over even when tiny
    dp = [float(D[peak]) for peak in peak_list]
    for i in sorted(range(len(dp)), key=lambda j: (dp[j] != dp[j], -dp[j])):
        peak = peak_list[i]
        D_use = D
        if covered is not None and covered[peak]:
            D_use = D - claimed
        exts[i] = _extended_morphology(
            D_use, peak, t0, config.init_padding, ws, config.center_flip_quirk, claimed, covered
        )
    return exts


def _split_flags(snrs: np.ndarray, n: int, config: DeblendConfig) -> list:
    """Whether each source is split into a bulge and a disk (``min_snr``, ``max_components``)."""
    if config.max_components < 2:
        return [False] * n
    if config.min_snr > 0:
        return (np.floor(snrs) / config.min_snr >= 2).tolist()
    return [True] * n


def _initial_sources(
    observation,
    D: np.ndarray,
    peak_arr: np.ndarray,
    exts: list,
    snrs: np.ndarray,
    config: DeblendConfig,
) -> tuple[Blend, list, list]:
    """The blend of one source per peak: a PSF-shaped component where the peak gave no
    extended morphology, else the extended one (split into a bulge and a disk for bright
    sources). Also returns per source its single component (kept for the rescue) and that
    component's initial SED (never modified)."""
    images = np.ascontiguousarray(observation.images)
    kernels = np.ascontiguousarray(observation.diff_kernels)
    model_psf = model_psf_array(observation)
    # conv_b(P_model) at its centre: the model-space peak of a unit point source, observed
    psf_peak = _initialization_cy.conv_at(
        model_psf, kernels, model_psf.shape[0] // 2, model_psf.shape[1] // 2
    )
    psf_thresh = (
        config.bg_thresh if config.psf_fallback_bg_thresh is None else config.psf_fallback_bg_thresh
    )
    bg = config.bg_thresh
    # SEDs of the extended ones: the ratio of the image to the convolved detection image at
    # the peak, times the morphology's maximum (it is peak-normalised)
    scale = np.array([0.0 if e is None else e[2] for e in exts])
    seds = _initialization_cy.peak_seds(images, D, kernels, peak_arr, scale)
    split = _split_flags(snrs, len(exts), config)
    f = config.disk_percentile / 100.0
    sources, singles, init_seds = [], [], []
    for i, (y, x) in enumerate(peak_arr.tolist()):
        peak, ext = (int(y), int(x)), exts[i]
        if ext is None:
            morph, box, sed = _initialization_cy.psf_component(
                model_psf, images, peak[0], peak[1], psf_peak
            )
            single = Component(sed, morph, box, peak, psf_thresh, kind="psf", copy=False)
            comps = [single]
        else:
            morph, box, _ = ext
            sed = seds[i]
            single = Component(sed, morph, box, peak, bg, kind="extended", copy=False)
            comps = [single]
            parts = _initialization_cy.bulge_disk(morph, f) if split[i] else None
            if parts is not None:
                # SEDs later: from the joint fit, or (if it does not run) from a fit of
                # these two morphologies alone
                comps = [
                    Component(sed, parts[0], box, peak, bg, "bulge", copy=False),
                    Component(sed, parts[1], box, peak, bg, "disk", copy=False),
                ]
        sources.append(Source(comps, peak, i))
        singles.append(single)
        init_seds.append(sed)
    return Blend(observation, sources), singles, init_seds


def _fit_bulge_disk_seds(blend: Blend, observation, singles: list, config: DeblendConfig) -> None:
    """The reference's per-source bulge/disk SEDs (neighbours ignored), used when the joint
    fit does not run; a source whose fit fails keeps its single component."""
    from . import spectra

    for src, single in zip(blend.sources, singles, strict=True):
        if len(src.components) != 2:
            continue
        bulge, disk = src.components
        try:
            fitted = np.asarray(
                spectra.fit_seds(
                    observation,
                    [bulge.morphology, disk.morphology],
                    [bulge.box, disk.box],
                    solver=config.sed_solver,
                )
            )
        except np.linalg.LinAlgError:
            fitted = None
        if fitted is None or not np.all(np.isfinite(fitted)):
            src.components = [single]
            continue
        bulge.sed, disk.sed = (np.maximum(x, 0.0) for x in fitted)


def _floor_seds(blend: Blend, config: DeblendConfig) -> None:
    """Raise every SED value below ``floor`` (or not finite) to ``floor``."""
    comps = blend.components
    if comps:
        # all SEDs at once; each component gets its row
        S = np.array([c.sed for c in comps], dtype=np.float64)
        S = np.where(np.isfinite(S) & (S >= config.floor), S, config.floor)
        for c, s in zip(comps, S, strict=True):
            c.sed = s
