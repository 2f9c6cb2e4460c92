"""Repair of detected sources that the fit left without light (``DeblendConfig.rescue_lost``).

A faint source a few pixels from a much brighter one can end the fit with almost no flux:
the initial joint SED fit gives it 0 (the bright neighbour's initial morphology covers its
peak), and although the initial rescue restarts it, radial monotonicity lets the bright
neighbour's morphology stay flat over the faint peak (a shoulder) and the fit hands the
faint source's light to that shoulder. The post-convergence rescue of :mod:`cdeblend.fit`
looks at the residual, which the shoulder has already explained.

After the fit, a detected source (matched-filter S/N >= ``rescue_lost_snr``) that holds less
than ``rescue_lost_fraction`` of the convolved model at its own peak is restarted as a point
source.
The components of other sources whose boxes hold its peak lose their shoulder there: inside
the point source's box, each of their morphology pixels becomes the minimum of itself and
its mirror about the component's sub-pixel centre (0 where the mirror is outside its box),
which a galaxy's light satisfies (it is about as bright at the mirror position, where no
neighbour sits). The point source's SED and the touched neighbours' SEDs then come from the
images (``rescue_lost_sed``). A repair is kept only when it gives the source more flux than
it had and leaves no touched neighbour with less than ``rescue_lost_fraction`` of its flux;
refused for a neighbour, it is tried again without touching that neighbour (three attempts
at most). The brightest lost source is repaired first. The fit does not run again: no
iterations are added.
"""

from __future__ import annotations

import numpy as np

from . import _initialization_cy
from .blend import Blend, Component
from .box import overlap_slices

__all__ = ["convolved_at", "lost_sources", "mirror_min", "repair_order", "rescue_lost_sources"]


def mirror_min(
    morph: np.ndarray, peak: tuple[int, int], region: tuple, shift: tuple = (0, 0)
) -> np.ndarray:
    """``morph`` with the pixels of ``region`` replaced by ``min(morph, mirror)``.

    Parameters
    ----------
    morph : numpy.ndarray
        (h, w) morphology.
    peak : tuple of int
        Its peak in its own frame; the mirror of (y, x) is
        (2 py + sy - y, 2 px + sx - x), a centre half a pixel off the peak when a shift is
        not 0.
    region : tuple of int
        ``(y0, x0, h, w)`` in the morphology's frame (clipped to it).
    shift : tuple of int
        ``(sy, sx)``, each in {-1, 0, 1}: twice the symmetry centre's offset from the peak.

    Returns
    -------
    numpy.ndarray
        A new array; pixels whose mirror is outside the morphology become 0.
    """
    arr = np.ascontiguousarray(morph, dtype=np.float64)
    h, w = arr.shape
    y0, x0 = max(region[0], 0), max(region[1], 0)
    y1, x1 = min(region[0] + region[2], h), min(region[1] + region[3], w)
    if y1 <= y0 or x1 <= x0:
        return arr.copy()
    py, px = (int(v) for v in peak)
    sy, sx = (int(v) for v in shift)
    return _initialization_cy.mirror_min(arr, py, px, sy, sx, y0, x0, y1, x1)


def _point_sources(blend: Blend, indices: list) -> dict:
    """The point-source component (peak-ratio SED, model PSF shape) of each source of
    ``indices``, keyed by index."""
    from .initialization import model_psf_array

    if not indices:
        return {}
    obs = blend.observation
    model_psf = model_psf_array(obs)
    kernels = np.ascontiguousarray(obs.diff_kernels)
    psf_peak = _initialization_cy.conv_at(
        model_psf, kernels, model_psf.shape[0] // 2, model_psf.shape[1] // 2
    )
    images = np.ascontiguousarray(obs.images)
    out = {}
    for i in indices:
        peak = blend.sources[i].peak
        morph, box, sed = _initialization_cy.psf_component(model_psf, images, *peak, psf_peak)
        out[i] = Component(sed, morph, box, peak, None, kind="psf", copy=False)
    return out


def lost_sources(
    blend: Blend, snrs: np.ndarray, min_snr: float, fraction: float
) -> tuple[list, dict]:
    """Indices of the lost sources and their point-source components (keyed by index).

    A source is lost when its peak S/N is at least ``min_snr`` and it holds less than
    ``fraction`` of the blend's convolved model (all bands) at its own peak pixel: its share
    of the image there, what its re-apportioned child gets. The observed PSF matters: in the
    model frame a bright star 3 px away leaves a faint galaxy's peak to the galaxy alone,
    while in the image the star's wing holds almost all of it.
    """
    bright = [i for i in range(len(blend.sources)) if snrs[i] >= min_snr]
    if not bright:
        return [], {}
    total = blend.model()
    kernels = np.asarray(blend.observation.diff_kernels, dtype=np.float64)
    lost = []
    for i in bright:
        src = blend.sources[i]
        window = _window(total.shape[1:], src.peak, kernels.shape[1:])
        own = np.zeros((total.shape[0],) + _window_shape(window), dtype=np.float64)
        for c in src.components:
            _add_to_window(own, window, c)
        at_peak = convolved_at(own, kernels, src.peak, window)
        if at_peak < fraction * convolved_at(total, kernels, src.peak):
            lost.append(i)
    return lost, _point_sources(blend, lost)


def _window(shape: tuple, at: tuple, kernel_shape: tuple) -> tuple:
    """``(y0, y1, x0, x1)``: the pixels under a kernel centred on ``at``, inside ``shape``."""
    ry, rx = kernel_shape[0] // 2, kernel_shape[1] // 2
    y, x = at
    return max(y - ry, 0), min(y + ry + 1, shape[0]), max(x - rx, 0), min(x + rx + 1, shape[1])


def _window_shape(window: tuple) -> tuple:
    return window[1] - window[0], window[3] - window[2]


def _add_to_window(out: np.ndarray, window: tuple, c: Component) -> None:
    """Add component ``c``'s model (SED x morphology) where its box meets the window."""
    y0, y1, x0, x1 = window
    in_window, in_box = overlap_slices((y0, x0, y1 - y0, x1 - x0), c.box)
    out[(slice(None), *in_window)] += c.sed[:, None, None] * c.morphology[in_box][None]


def convolved_at(
    cube: np.ndarray, kernels: np.ndarray, at: tuple, window: tuple | None = None
) -> float:
    """``sum_b convolve(cube[b], kernels[b])[at]``: one pixel of the convolved model, summed
    over the bands (zero outside the frame).

    ``cube`` is the (B, H, W) frame, or only the ``window`` of it under the kernel centred on
    ``at`` (:func:`_window`); ``kernels`` (B, kh, kw) have odd sizes.
    """
    kh, kw = kernels.shape[1:]
    ry, rx = kh // 2, kw // 2
    y, x = at
    if window is None:
        window = _window(cube.shape[1:], at, (kh, kw))
        cube = cube[:, window[0] : window[1], window[2] : window[3]]
    y0, y1, x0, x1 = window
    # convolution: the pixel (y', x') takes the kernel's tap (y - y' + ry, x - x' + rx)
    flipped = kernels[:, ::-1, ::-1]
    taps = flipped[:, ry - y + y0 : ry - y + y1, rx - x + x0 : rx - x + x1]
    return float(np.sum(cube * taps, dtype=np.float64))


def _contains(box: tuple, peak: tuple) -> bool:
    return box[0] <= peak[0] < box[0] + box[2] and box[1] <= peak[1] < box[1] + box[3]


def rescue_lost_sources(blend: Blend, snrs: np.ndarray, config) -> int:
    """Restart the lost sources as point sources (see the module's docstring).

    Each lost source is repaired on its own, by decreasing S/N (:func:`repair_order`): its
    point source and the touched neighbours' components get SEDs from a joint NNLS fit to
    the images minus every other component. The repair is kept only when the point source
    gets flux and no touched neighbour source keeps less than ``rescue_lost_fraction`` of
    its flux (a repair that took a real neighbour's light would swap the two; a neighbour
    that had taken the lost source's light legitimately loses a good part of its flux). A
    repair refused for some neighbours is tried again without touching them
    (:data:`REPAIR_ATTEMPTS`).

    Parameters
    ----------
    blend : Blend
        The fitted blend, modified in place.
    snrs : numpy.ndarray
        (N,) matched-filter S/N at each source's peak.
    config : DeblendConfig
        ``rescue_lost_snr``, ``rescue_lost_fraction``, ``weighted_sed_fit``, ``bg_thresh``.

    Returns
    -------
    int
        The number of sources restarted.
    """
    lost, points = lost_sources(
        blend, np.asarray(snrs), config.rescue_lost_snr, config.rescue_lost_fraction
    )
    if not lost:
        return 0
    shifts = _center_shifts(blend)
    obs = blend.observation
    # images minus the convolved model, kept up to date by each repair: a repair then
    # convolves only the components it touches (one whole-frame convolution per repair took
    # 40 s on a 2000 x 2000 scene with 3000 sources)
    residual = np.ascontiguousarray(obs.images - obs.convolve(blend.model()), dtype=obs.dtype)
    order = repair_order(lost, np.asarray(snrs))
    restarted = sum(_repair_one(blend, i, points[i], shifts, residual, config) for i in order)
    if restarted:
        blend.pack()  # the components' arrays were replaced: re-bind the flat buffers
    return restarted


def _center_shifts(blend: Blend) -> np.ndarray:
    """(N, 2) twice each source's sub-pixel centre offset from its peak, in {-1, 0, 1}
    (:func:`cdeblend.peaks.subpixel_centers` of the chi^2 detection image): a catalog peak
    is up to a pixel off the true centre, and mirroring about the wrong pixel removes real
    light."""
    from .initialization import chi2_coadd
    from .peaks import subpixel_centers

    peaks = np.array([src.peak for src in blend.sources], dtype=np.intp).reshape(-1, 2)
    centres = subpixel_centers(chi2_coadd(blend.observation), peaks)
    return np.clip(np.rint(2 * (centres - peaks)), -1, 1).astype(np.intp)


def _touched(blend: Blend, i: int, point: Component, shifts: np.ndarray) -> dict:
    """The other sources' components whose boxes hold source ``i``'s peak, keyed (j, k),
    with their morphologies mirror-minimised inside the point source's box."""
    out = {}
    for j, src in enumerate(blend.sources):
        if j == i:
            continue
        for k, c in enumerate(src.components):
            if _contains(c.box, point.peak):
                region = (
                    point.box[0] - c.box[0],
                    point.box[1] - c.box[1],
                    point.box[2],
                    point.box[3],
                )
                out[(j, k)] = mirror_min(c.morphology, c.local_peak, region, shifts[j])
    return out


def repair_order(lost: list, snrs: np.ndarray) -> list:
    """The lost sources by decreasing S/N, the order of their repairs.

    A repair refits the touched neighbours' SEDs, and a neighbour that loses its shoulder
    under one lost source grows brighter everywhere else, under the next lost source's
    peak too: the first repair is the one made on the fitted model. The brightest lost
    source has the most light to give back and the clearest peak, so it goes first
    (catalog order left an S/N 34 source in lsst_tune with 3 % of its flux after a fainter
    one's repair; README.md, "Lost sources under a neighbour's wing").
    """
    return sorted(lost, key=lambda i: (-float(snrs[i]), i))


#: Attempts of one repair: each drops the touched neighbours the previous one starved.
REPAIR_ATTEMPTS = 3


def _repair_one(
    blend: Blend, i: int, point: Component, shifts: np.ndarray, residual: np.ndarray, config
) -> bool:
    """Repair lost source ``i`` (see :func:`rescue_lost_sources`); True when kept.

    A repair that would leave a touched neighbour with less than ``rescue_lost_fraction`` of
    its flux is tried again without touching that neighbour (its shoulder and SED kept), up
    to :data:`REPAIR_ATTEMPTS` times: a neighbour that is a real source keeps its light and
    the others still give the lost source its own. ``residual`` (images minus the convolved
    model) is updated in place when the repair is kept and left as it was otherwise."""
    touched = _touched(blend, i, point, shifts)
    for _ in range(REPAIR_ATTEMPTS):
        kept, starved = _attempt_repair(blend, i, point, touched, residual, config)
        if kept or not starved:
            return kept
        touched = {key: morph for key, morph in touched.items() if key[0] not in starved}
    return False


def _attempt_repair(
    blend: Blend, i: int, point: Component, touched: dict, residual: np.ndarray, config
) -> tuple[bool, set]:
    """One attempt of :func:`_repair_one` with the ``touched`` neighbours' components: whether
    it was kept, and the neighbour sources it would have left with too little flux."""
    keys = sorted(touched)
    morphs = [point.morphology] + [touched[key] for key in keys]
    boxes = [point.box] + [blend.sources[j].components[k].box for j, k in keys]
    obs = blend.observation
    removed = list(blend.sources[i].components) + [blend.sources[j].components[k] for j, k in keys]
    region = _grown_union(obs, [c.box for c in removed] + [point.box])
    saved = residual[region].copy()
    # the images minus every component that stays as it is
    for c in removed:
        _add_convolved(residual, obs, c.box, c.sed, c.morphology, 1.0)
    if config.rescue_lost_sed in ("peak", "shoulder"):
        seds = _peak_then_fit(obs, residual, point, keys, touched, blend, config)
    else:
        seds = _fit(obs, residual, morphs, boxes, config)
    seds, starved = _kept_seds(blend, i, point, keys, morphs, seds, config)
    if seds is None:
        residual[region] = saved
        return False, starved
    blend.sources[i].components = [
        Component(seds[0], point.morphology, point.box, point.peak, config.bg_thresh, "psf")
    ]
    for (j, k), morph, sed in zip(keys, morphs[1:], seds[1:], strict=True):
        c = blend.sources[j].components[k]
        c.morphology = np.ascontiguousarray(morph)
        c.sed = np.ascontiguousarray(sed)
    for c in blend.sources[i].components + [blend.sources[j].components[k] for j, k in keys]:
        _add_convolved(residual, obs, c.box, c.sed, c.morphology, -1.0)
    return True, set()


def _kept_seds(
    blend: Blend, i: int, point: Component, keys: list, morphs: list, seds, config
) -> tuple[np.ndarray | None, set]:
    """The repair's SEDs (clipped at 0) when it is kept, else None; and the touched
    neighbour sources it would leave with less than ``rescue_lost_fraction`` of their flux
    (which reject it). The point source must also get flux, more than source ``i`` had."""
    if seds is None or not np.any(seds[0] > 0):
        return None, set()
    seds = np.maximum(seds, 0.0)
    # the touched neighbours' fluxes before and after
    before: dict = {}
    after: dict = {}
    for (j, k), morph, sed in zip(keys, morphs[1:], seds[1:], strict=True):
        c = blend.sources[j].components[k]
        before[j] = before.get(j, 0.0) + float(c.sed.sum() * c.morphology.sum())
        after[j] = after.get(j, 0.0) + float(sed.sum() * morph.sum())
    # a neighbour left with less than that fraction of its flux would be lost in its turn
    starved = {j for j in before if after[j] < config.rescue_lost_fraction * before[j]}
    if starved:
        return None, starved
    old = sum(float(c.sed.sum() * c.morphology.sum()) for c in blend.sources[i].components)
    if float(seds[0].sum() * point.morphology.sum()) <= old:
        return None, set()
    return seds, set()


def _grown_union(obs, boxes: list) -> tuple:
    """The (B, y, x) slices of the union of ``boxes`` grown by the convolution kernel."""
    grown = obs.convolver.grown_boxes(boxes)[1]
    y0, x0 = grown[:, 0].min(), grown[:, 1].min()
    y1, x1 = (grown[:, 0] + grown[:, 2]).max(), (grown[:, 1] + grown[:, 3]).max()
    return (slice(None), slice(int(y0), int(y1)), slice(int(x0), int(x1)))


def _add_convolved(
    residual: np.ndarray, obs, box: tuple, sed: np.ndarray, morph: np.ndarray, sign: float
) -> None:
    """Add ``sign`` times the convolved ``sed (x) morph`` on ``box`` to ``residual``."""
    conv, (y0, x0, h, w) = obs.convolve_box(sed[:, None, None] * morph[None], box)
    residual[:, y0 : y0 + h, x0 : x0 + w] += sign * conv


def _fit(obs, data: np.ndarray, morphs: list, boxes: list, config) -> np.ndarray | None:
    """Joint NNLS SEDs of ``morphs`` on ``boxes`` to ``data``; None when it fails."""
    from . import spectra

    try:
        seds = np.asarray(
            spectra.fit_seds_checked(obs, morphs, boxes, config.weighted_sed_fit, data, "nnls")
        )
    except np.linalg.LinAlgError:
        return None
    return np.maximum(seds, 0.0) if np.all(np.isfinite(seds)) else None


def _peak_then_fit(obs, data, point, keys, touched, blend, config) -> np.ndarray | None:
    """``rescue_lost_sed="peak"``: the point source's SED from the image at its peak minus
    every other model there (the touched neighbours without their shoulders), then the
    touched neighbours' SEDs fitted with the point source fixed. ``data`` is the images
    minus every untouched component (restored on return). Rows as :func:`_fit`."""
    y, x = point.peak
    img = np.asarray(obs.images[:, y, x], dtype=np.float64)
    conv = img - np.asarray(data[:, y, x], dtype=np.float64)  # the untouched components
    for j, k in keys:
        c = blend.sources[j].components[k]
        conv += _convolved_at(obs, c.box, c.sed, touched[(j, k)], point.peak)
    # point.sed reproduces the image at the peak; scale it to the image minus the others
    ratio = np.divide(img - conv, img, out=np.zeros_like(img), where=img > 0)
    sed0 = np.maximum(point.sed * np.clip(ratio, 0.0, 1.0), 0.0)
    if config.rescue_lost_sed == "shoulder" or not keys:
        # the neighbours keep their SEDs and lose only their shoulders
        old = [blend.sources[j].components[k].sed for j, k in keys]
        return np.vstack([sed0[None], *[s[None] for s in old]])
    _add_convolved(data, obs, point.box, sed0, point.morphology, -1.0)
    morphs = [touched[key] for key in keys]
    boxes = [blend.sources[j].components[k].box for j, k in keys]
    seds = _fit(obs, data, morphs, boxes, config)
    _add_convolved(data, obs, point.box, sed0, point.morphology, 1.0)
    return None if seds is None else np.vstack([sed0[None], seds])


def _convolved_at(obs, box: tuple, sed: np.ndarray, morph: np.ndarray, at: tuple) -> np.ndarray:
    """(B,) the convolved ``sed (x) morph`` on ``box`` at the pixel ``at`` (0 outside)."""
    conv, (y0, x0, h, w) = obs.convolve_box(sed[:, None, None] * morph[None], box)
    y, x = at[0] - y0, at[1] - x0
    if 0 <= y < h and 0 <= x < w:
        return np.asarray(conv[:, y, x], dtype=np.float64)
    return np.zeros(len(sed))
