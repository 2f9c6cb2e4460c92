"""Initial morphologies and SEDs of a multi-band blend (scarlet lite's chi^2 initializer).

Per peak (spec 2.2): the chi^2 detection image is made 180 degree symmetric about the peak,
the pixels reachable from the peak by non-increasing positive paths form the morphology
(the monotonic mask, a Cython flood fill that only touches the pixels it accepts, so the
cost per peak is the size of the source, not of the blend), the morphology is trimmed at
the noise level and boxed, and the SED is the ratio of the image to the convolved detection
image at the peak. Peaks that give nothing get a PSF-shaped component. Bright sources are
split into a bulge and a disk. Finally all SEDs are fitted jointly by least squares.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import _monotonic_cy
from .blend import Blend, Box, Component, Source, box_grow, box_intersect

if TYPE_CHECKING:  # pragma: no cover
    from .deblender import DeblendConfig

__all__ = ["detection_image", "initialize_blend", "peak_snr"]


def detection_image(observation) -> np.ndarray:
    """The chi^2 (inverse-variance, "Kaiser") coadd ``sum_b images_b / noise_rms_b**2``."""
    images = np.asarray(observation.images, dtype=np.float64)
    noise = np.asarray(observation.noise_rms, dtype=np.float64)
    inv = np.divide(1.0, noise**2, out=np.zeros_like(noise), where=noise > 0)
    return np.tensordot(inv, images, axes=1)


def _conv_at(plane: np.ndarray, kernels: np.ndarray, y: int, x: int) -> np.ndarray:
    """``conv(plane, kernels[b])`` at one pixel for every band (zero outside the plane)."""
    _, kh, kw = kernels.shape
    ry, rx = kh // 2, kw // 2
    H, W = plane.shape
    ya, yb = max(y - ry, 0), min(y + ry + 1, H)
    xa, xb = max(x - rx, 0), min(x + rx + 1, W)
    flipped = kernels[:, ::-1, ::-1]
    k = flipped[:, ya - (y - ry) : yb - (y - ry), xa - (x - rx) : xb - (x - rx)]
    return np.sum(plane[ya:yb, xa:xb] * k, axis=(1, 2))


def _centered_overlap(shape: tuple[int, int], size: tuple[int, int], y: int, x: int):
    """Slices of an image of ``shape`` and of a centred ``size`` stamp placed at (y, x)."""
    H, W = shape
    h, w = size
    ry, rx = h // 2, w // 2
    ya, yb = max(y - ry, 0), min(y - ry + h, H)
    xa, xb = max(x - rx, 0), min(x - rx + w, W)
    img = (slice(ya, yb), slice(xa, xb))
    stamp = (slice(ya - (y - ry), yb - (y - ry)), slice(xa - (x - rx), xb - (x - rx)))
    return img, stamp


def peak_snr(observation, peak: tuple[int, int]) -> float:
    """Matched-filter S/N of a point source at ``peak`` over all bands (spec 2.2 step 1)."""
    psfs = observation.psfs
    sl_img, sl_psf = _centered_overlap(observation.shape[1:], psfs.shape[1:], *peak)
    P = np.asarray(psfs[(slice(None),) + sl_psf], dtype=np.float64)
    num = float(np.sum(observation.images[(slice(None),) + sl_img] * P))
    den = float(np.sum(P * P * observation.variance[(slice(None),) + sl_img]))
    return num / np.sqrt(den) if den > 0 else 0.0


class _MaskWorkspace:
    """Buffers of the monotonic-mask flood fill, allocated once per blend and reset
    through the list of accepted pixels after each peak."""

    def __init__(self, shape: tuple[int, int]) -> None:
        H, W = shape
        self.accepted = np.zeros((H, W), dtype=np.uint8)
        self.values = np.zeros((H, W), dtype=np.float64)
        self.queue = np.zeros(H * W, dtype=np.int64)

    def run(self, D, start, mirror, symmetric=True):
        n, y0, x0, y1, x1 = _monotonic_cy.monotonic_mask(
            D, start[0], start[1], mirror[0], mirror[1], symmetric, self.accepted, self.queue,
            self.values,
        )
        box: Box = (y0, x0, y1 - y0 + 1, x1 - x0 + 1)
        morph = self.values[y0 : y1 + 1, x0 : x1 + 1].copy()
        idx = self.queue[:n]
        self.accepted.ravel()[idx] = 0
        self.values.ravel()[idx] = 0
        return n, morph, box


def _extended_morphology(D, peak, t0, padding, ws, center_flip_quirk):
    """Symmetric + monotonic-mask morphology of one peak (spec 2.2 steps 2-6).

    Returns ``((morph, box) or None, (accepted values, their box))``: None when nothing
    extended is left; the second item is the monotonic mask's values before the trim.
    """
    H, W = D.shape
    py, px = peak
    if center_flip_quirk and (py, px) == (H // 2, W // 2):
        mirror = (H - 1, W - 1)  # the reference flips the whole array about its middle
    else:
        mirror = (2 * py, 2 * px)
    # start on the brightest symmetrised pixel of the 3 x 3 neighbourhood (first maximum)
    start = _monotonic_cy.brightest_symmetric_neighbour(D, py, px, *mirror)
    n, morph, box = ws.run(D, start, mirror)
    raw = (morph.copy(), box)
    if n == 1 and morph.max() == 0:
        return None, raw
    if t0 > 0:
        morph[morph <= t0] = 0
        ys, xs = np.nonzero(morph > t0)
        if ys.size == 0:
            return None, raw
        tight = (box[0] + ys.min(), box[1] + xs.min(), ys.max() - ys.min() + 1,
                 xs.max() - xs.min() + 1)
        new_box = box_grow(tight, padding)
    else:
        new_box = box
    if not morph.max() > 0:
        return None, raw
    new_box = box_intersect(box_grow(new_box, padding), (0, 0, H, W))
    out = np.zeros(new_box[2:], dtype=np.float64)
    # copy the part of the accepted pixels that lies inside the final box
    ya, yb = max(box[0], new_box[0]), min(box[0] + box[2], new_box[0] + new_box[2])
    xa, xb = max(box[1], new_box[1]), min(box[1] + box[3], new_box[1] + new_box[3])
    out[ya - new_box[0] : yb - new_box[0], xa - new_box[1] : xb - new_box[1]] = morph[
        ya - box[0] : yb - box[0], xa - box[1] : xb - box[1]
    ]
    return (out, new_box), raw


def _model_psf(observation) -> np.ndarray:
    """The model PSF as a 2-D float64 array (a single pixel for PSF-matched data)."""
    if observation.model_psf is None:
        return np.ones((1, 1))
    P = np.asarray(observation.model_psf, dtype=np.float64)
    return P.reshape(P.shape[-2:])


def _psf_component(observation, peak, psf_peak, bg_thresh) -> Component:
    """Component shaped like the model PSF at ``peak``, cropped to the blend (spec 2.2.8)."""
    _, H, W = observation.shape
    P = _model_psf(observation)
    sl_img, sl_psf = _centered_overlap((H, W), P.shape, *peak)
    morph = P[sl_psf].copy()
    box = (sl_img[0].start, sl_img[1].start, morph.shape[0], morph.shape[1])
    images = observation.images
    sed = np.array([max(0.0, float(images[b, peak[0], peak[1]]) / psf_peak[b])
                    if psf_peak[b] > 0 else 0.0 for b in range(images.shape[0])])
    # normalise at creation so that the first prox (peak -> 1) does not rescale the model
    mx = morph.max()
    sed *= mx
    morph /= mx
    return Component(sed, morph, box, peak, bg_thresh, kind="psf")


def _fit_all_seds(blend: Blend, observation, config: DeblendConfig) -> bool:
    """Joint least-squares SEDs of all components (non-negative, see ``sed_solver``)."""
    from . import spectra

    comps = blend.components
    try:
        seds = np.asarray(spectra.fit_seds(observation, [c.morphology for c in comps],
                                           [c.box for c in comps],
                                           weighted=config.weighted_sed_fit,
                                           solver=config.sed_solver))
    except np.linalg.LinAlgError:
        return False
    if not np.all(np.isfinite(seds)):
        return False
    for c, s in zip(comps, seds, strict=True):
        c.sed = np.ascontiguousarray(np.maximum(s, 0), dtype=np.float64)
    return True


def initialize_blend(observation, peaks: np.ndarray, config: DeblendConfig) -> tuple[Blend, dict]:
    """Initial sources of a blend (spec 2.1-2.4).

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
    from . import spectra

    B, H, W = observation.shape
    D = detection_image(observation)
    noise = np.asarray(observation.noise_rms, dtype=np.float64)
    if config.init_thresh_units == "detection":
        t0 = float(np.sqrt(np.sum(1.0 / noise[noise > 0] ** 2))) * config.initial_bg_thresh
    else:  # the reference: image units, although D is not
        t0 = float(np.mean(noise)) * config.initial_bg_thresh
    kernels = np.asarray(observation.diff_kernels, dtype=np.float64)
    model_psf = _model_psf(observation)
    # conv_b(P_model) at its centre: the model-space peak of a unit point source, observed
    psf_peak = _conv_at(model_psf, kernels, model_psf.shape[0] // 2, model_psf.shape[1] // 2)
    psf_thresh = (config.bg_thresh if config.psf_fallback_bg_thresh is None
                  else config.psf_fallback_bg_thresh)
    ws = _MaskWorkspace((H, W))
    images = observation.images
    sources = []
    snrs = np.zeros(len(peaks))
    # Extended morphologies, brightest peaks first. With ``residual_init`` a peak that lies
    # inside the monotonic mask of a brighter one is initialised from the detection image
    # minus what the brighter ones claimed (their symmetric masks), so that a faint source on
    # a bright neighbour's wing starts from its own light, not from a symmetrised piece of
    # the neighbour (off by default: it did not improve the simulations).
    exts: list = [None] * len(peaks)
    claimed = covered = None
    order = np.argsort(-D[peaks[:, 0], peaks[:, 1]], kind="stable")
    for i in order:
        peak = (int(peaks[i, 0]), int(peaks[i, 1]))
        D_use = D
        if config.residual_init and covered is not None and covered[peak]:
            D_use = np.ascontiguousarray(D - claimed)
        exts[i], (raw, rbox) = _extended_morphology(D_use, peak, t0, config.init_padding, ws,
                                                    config.center_flip_quirk)
        if config.residual_init:
            if claimed is None:
                claimed = np.zeros((H, W))
                covered = np.zeros((H, W), dtype=bool)
            sl = (slice(rbox[0], rbox[0] + rbox[2]), slice(rbox[1], rbox[1] + rbox[3]))
            claimed[sl] += np.maximum(raw, 0)
            covered[sl] |= raw > 0
    for i, (py, px) in enumerate(peaks):
        peak = (int(py), int(px))
        snr = peak_snr(observation, peak)
        snrs[i] = snr
        score = np.floor(snr) / config.min_snr if config.min_snr > 0 else np.inf
        ext = exts[i]
        if ext is None:
            psf = _psf_component(observation, peak, psf_peak, psf_thresh)
            psf.init_sed = psf.sed.copy()
            src = Source([psf], peak, i)
            src.single = psf
            sources.append(src)
            continue
        morph, box = ext
        c = _conv_at(D, kernels, *peak)
        sed = np.divide(np.asarray(images[:, peak[0], peak[1]], dtype=np.float64), c,
                        out=np.zeros(B), where=c != 0)
        sed = np.where(np.isfinite(sed) & (sed > 0), sed, 0.0)
        mx = morph.max()
        sed *= mx
        morph /= mx
        single = Component(sed, morph, box, peak, config.bg_thresh, kind="extended")
        single.init_sed = sed.copy()
        comps = [single]
        if score >= 2 and config.max_components >= 2:
            f = config.disk_percentile / 100.0
            disk = np.minimum(morph, f)
            bulge = np.maximum(morph - f, 0)
            if bulge.max() > 0 and disk.max() > 0:
                bulge /= bulge.max()
                disk /= disk.max()
                # SEDs below: from the joint fit, or (if it does not run) from a fit of
                # these two morphologies alone
                comps = [Component(sed, bulge, box, peak, config.bg_thresh, "bulge"),
                         Component(sed, disk, box, peak, config.bg_thresh, "disk")]
        src = Source(comps, peak, i)
        src.single = single  # kept for the rescue below
        sources.append(src)
    blend = Blend(observation, sources)
    ran = False
    cutoff = config.max_spectrum_cutoff
    if config.set_spectra and (cutoff <= 0 or len(peaks) * H * W < cutoff):
        ran = _fit_all_seds(blend, observation, config)
    if not ran:
        # the reference's per-source bulge/disk SEDs (neighbours ignored); the joint fit
        # replaces them, so they are only computed when it does not run
        for src in blend.sources:
            if len(src.components) != 2:
                continue
            bulge, disk = src.components
            try:
                seds = np.asarray(spectra.fit_seds(observation, [bulge.morphology,
                                                                 disk.morphology],
                                                   [bulge.box, disk.box],
                                                   solver=config.sed_solver))
            except np.linalg.LinAlgError:
                seds = None
            if seds is None or not np.all(np.isfinite(seds)):
                src.components = [src.single]
                continue
            bulge.sed, disk.sed = (np.maximum(x, 0.0) for x in seds)
    if ran and config.rescue_faint:
        # A detected source whose fitted SEDs put even its peak below the noise threshold
        # in every band would be erased by the first prox and lost for good (the joint
        # fit can hand its light to brighter neighbours whose initial models overlap it):
        # restart it as its single initial component with its peak-ratio SED.
        thresh = noise * (config.bg_thresh or 0.0)
        for src in blend.sources:
            single = getattr(src, "single", None)
            if single is None or any(np.any(c.sed > thresh) for c in src.components):
                continue
            src.components = [single]
            single.sed = single.init_sed.copy()
    for src in blend.sources:
        if hasattr(src, "single"):
            del src.single
        for c in src.components:
            if hasattr(c, "init_sed"):
                del c.init_sed
    for c in blend.components:
        c.sed = np.where(np.isfinite(c.sed) & (c.sed >= config.floor), c.sed, config.floor)
    return blend, {"snr": snrs, "spectrum_init": ran}
