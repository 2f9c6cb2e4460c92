"""A shape prior for bright sources the fit starved: a local Gaussian pre-fit as a second start.

The free-form fit cannot always tell "a compact galaxy plus a large disk 3-4 px away" from
"a compact galaxy with a broad halo plus a small bump": both splits explain the images to
within the noise (README.md, "What is still lost: a large galaxy under a compact twin"),
and from the deblender's start the fit can hand the disk's light to its compact neighbour.
A parametric model tells them apart: Gaussians fixed at a source's peak cannot hold a
neighbour's disk centred a few pixels away as well as that neighbour's own Gaussians can.

With ``DeblendConfig(shape_prior=True)``, after the fit every source the lost-source test
flags (:func:`cdeblend.lost.lost_sources`: peak S/N >= ``rescue_lost_snr``, less than
``rescue_lost_fraction`` of the convolved model at its own peak) gets a local pre-fit: in
the window of half-size ``shape_prior_radius`` around its peak, the images minus the
convolved models of the sources whose peaks lie outside the window are fitted with
``shape_prior_gaussians`` elliptical Gaussians per source inside it, each centred on its
peak (:func:`gaussian_fluxes`). When the lost source's model holds less than
``shape_prior_gate`` times its pre-fit flux, the blend is fitted again from the
deblender's own initialization with the SEDs of the window's sources scaled, band by band,
to their pre-fit fluxes (:func:`starved_start`, :func:`scale_seds`).

The two fits of a twin end at about the same loss (within sqrt(N/2)), so a prior chooses
between them (:func:`prefer_second`): the second is kept when its loss is not higher by
more than that and it is the more compact explanation of the windows (their sources' light
closer to their own peaks, :func:`light_moment`) or it revived the starved source. The
choice matters: the Gaussians also give a faint source on a bright neighbour's wing many
times its flux (the neighbour's profile is not two Gaussians, and the faint source's
outer Gaussian takes up the difference), and a second fit from that start is worse.

It is off by default: on blends made after the choice was fixed it costs median flux
accuracy on some sets, and the one source of S/N >= 20 lost there it does not mend (its
Gaussians give the galaxy's light to the compact neighbour too); README.md.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from ._nnls import nnls_checked
from ._validate import as_float_array, as_peaks
from .box import grow, intersect, overlap_slices

__all__ = [
    "gaussian_fluxes",
    "gaussian_images",
    "light_moment",
    "prefer_second",
    "psf_variance",
    "scale_seds",
    "starved_start",
]

#: bounds of a Gaussian's log Cholesky diagonal, in log px (0.05 to 30 px)
_LOG_SIZE = (np.log(0.05), np.log(30.0))
#: bound of its Cholesky off-diagonal term, in px
_SHEAR = 20.0


def psf_variance(psf: np.ndarray) -> float:
    """Per-axis variance of a PSF image: the mean of its two second moments, in px^2.

    Negative pixels (noise, ringing) are clipped to 0 first.
    """
    p = np.maximum(as_float_array(psf, "psf", 2, dtype=np.float64), 0.0)
    total = p.sum()
    if not total > 0:
        raise ValueError("psf must have a positive sum")
    p = p / total
    yy, xx = np.indices(p.shape)
    cy, cx = (p * yy).sum(), (p * xx).sum()
    return 0.5 * float((p * (yy - cy) ** 2).sum() + (p * (xx - cx) ** 2).sum())


def _pixel_grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The flattened (y, x) pixel-centre coordinates of a ``shape`` image."""
    return tuple(g.ravel().astype(np.float64) for g in np.indices(shape))


def _covariances(params: np.ndarray, psf_var: float) -> tuple:
    """Each Gaussian's Cholesky entries ``(e^p0, p1, e^p2)`` of ``L = [[e^p0, 0], [p1, e^p2]]``
    and the covariance ``L L^T + psf_var I`` as ``(yy, yx, xx)``."""
    p = params.reshape(-1, 3)
    ea, b, ec = np.exp(p[:, 0]), p[:, 1], np.exp(p[:, 2])
    return ea, b, ec, ea * ea + psf_var, ea * b, b * b + ec * ec + psf_var


def _profiles(params: np.ndarray, centres: np.ndarray, grid: tuple, psf_var: float) -> tuple:
    """The Gaussians (M, P) on the flattened ``grid``, ``u = C^-1 d`` (two (M, P) arrays),
    the Cholesky entries and covariances, and the covariance determinants."""
    ea, b, ec, cyy, cyx, cxx = _covariances(params, psf_var)
    det = cyy * cxx - cyx * cyx
    dy = grid[0][None] - centres[:, :1]
    dx = grid[1][None] - centres[:, 1:]
    uy = (cxx[:, None] * dy - cyx[:, None] * dx) / det[:, None]
    ux = (cyy[:, None] * dx - cyx[:, None] * dy) / det[:, None]
    profiles = np.exp(-0.5 * (uy * dy + ux * dx)) / (2 * np.pi * np.sqrt(det))[:, None]
    return profiles, uy, ux, (ea, b, ec, cyy, cyx, cxx), det


def gaussian_images(
    params: np.ndarray, centres: np.ndarray, shape: tuple[int, int], psf_var: float
) -> np.ndarray:
    """(M, H, W) unit-flux elliptical Gaussians sampled at the pixel centres.

    Parameters
    ----------
    params : numpy.ndarray
        (M, 3): each Gaussian's ``(log a, b, log c)``, its intrinsic covariance being
        ``L L^T`` with ``L = [[a, 0], [b, c]]``.
    centres : numpy.ndarray
        (M, 2) (y, x) centres, in pixels.
    shape : tuple of int
        (H, W) of the images.
    psf_var : float
        Variance added on the diagonal (a Gaussian PSF's).
    """
    grid = _pixel_grid(shape)
    params = np.asarray(params, dtype=np.float64)
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    return _profiles(params, centres, grid, psf_var)[0].reshape((-1, *shape))


def _objective(params, centres, grid, psf_var, image, sqrt_w) -> tuple[float, np.ndarray]:
    """``0.5 sum(w (G a - image)^2)`` at the NNLS amplitudes ``a``, and its gradient.

    The amplitudes are optimal for every ``params`` (variable projection), so the gradient is
    that of the loss at fixed ``a`` (the envelope theorem): ``dG/dC = G (u u^T - C^-1) / 2``
    with ``u = C^-1 d``, chained through ``C = L L^T + psf_var I``.
    """
    G, uy, ux, (ea, b, ec, cyy, cyx, cxx), det = _profiles(params, centres, grid, psf_var)
    amp = nnls_checked((G * sqrt_w[None]).T, image * sqrt_w)
    r = (amp @ G - image) * sqrt_w
    w = G * (amp[:, None] * (r * sqrt_w)[None])
    gyy = 0.5 * (w * (uy * uy - (cxx / det)[:, None])).sum(axis=1)
    gyx = 0.5 * (w * (uy * ux + (cyx / det)[:, None])).sum(axis=1)
    gxx = 0.5 * (w * (ux * ux - (cyy / det)[:, None])).sum(axis=1)
    grad = np.empty((ea.size, 3))
    grad[:, 0] = 2 * ea * (gyy * ea + gyx * b)
    grad[:, 1] = 2 * (gyx * ea + gxx * b)
    grad[:, 2] = 2 * gxx * ec * ec
    return 0.5 * float(r @ r), grad.ravel()


def _curvature_variance(image: np.ndarray, peak: np.ndarray, psf_var: float) -> float:
    """The intrinsic variance a Gaussian needs to have ``image``'s Laplacian at ``peak``
    (``-2 I / lap I`` minus the PSF's), clipped to [0.3^2, 15^2] px^2."""
    H, W = image.shape
    y, x = int(peak[0]), int(peak[1])
    steps = ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1))
    near = [image[v, u] for v, u in steps if 0 <= v < H and 0 <= u < W]
    lap = 4 * (np.mean(near) - image[y, x]) if near else 0.0
    total = -2 * image[y, x] / lap if lap < 0 and image[y, x] > 0 else 2.25 + psf_var
    return min(max(total - psf_var, 0.09), 225.0)


def _coadd(images: np.ndarray, weights: np.ndarray, band_w: np.ndarray) -> tuple:
    """The bands' weighted mean image and each pixel's total weight (0 without data)."""
    w = band_w[:, None, None] * (weights > 0)
    total = w.sum(axis=0)
    mean = np.where(total > 0, (w * images).sum(axis=0) / np.where(total > 0, total, 1.0), 0.0)
    return mean, total / max(float(total.max()), 1e-300)


def _fit_shapes(coadd, pixel_w, grid, centres, psf_var, peaks, per_source, max_iter) -> np.ndarray:
    """The Gaussians' shape parameters fitted to the coadd from two starts (every Gaussian
    1 px and 3^k px; the peak's curvature times 3^k), the lower loss kept."""
    image, sqrt_w = coadd.ravel(), np.sqrt(pixel_w.ravel())
    outer = np.tile(np.log(3.0) * np.arange(per_source), len(peaks))
    flat = np.log(1.0) if per_source > 1 else np.log(1.5)
    curvature = [0.5 * np.log(_curvature_variance(coadd, p, psf_var)) for p in peaks]
    bounds = [_LOG_SIZE, (-_SHEAR, _SHEAR), _LOG_SIZE] * centres.shape[0]
    best = None
    for diag in (flat + outer, np.repeat(curvature, per_source) + outer):
        x0 = np.stack([diag, np.zeros_like(diag), diag], axis=1).ravel()
        fit = minimize(
            _objective,
            x0,
            args=(centres, grid, psf_var, image, sqrt_w),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            # a relative tolerance of 1e-6 on the loss, not scipy's 2e-9: on 100 harder
            # LSST-like blends it starved the same sources at half the cost; the fluxes
            # differ by 0.15 % (median), enough to move a close choice of fit (README.md,
            # "What is still lost": blend 275)
            options={"maxiter": max_iter, "ftol": 1e-6},
        )
        if best is None or fit.fun < best.fun:
            best = fit
    return best.x


def gaussian_fluxes(
    images: np.ndarray,
    weights: np.ndarray,
    psf_variances: np.ndarray,
    peaks: np.ndarray,
    per_source: int = 2,
    max_iter: int = 200,
) -> np.ndarray:
    """Each source's flux per band in a fit of elliptical Gaussians centred on the peaks.

    The shapes are fitted to the bands' mean image (each band weighted by its median
    pixel weight; pixels without data left out), each Gaussian convolved with a Gaussian PSF
    of the bands' weighted mean variance: amplitudes by non-negative least squares at every
    step, shapes by L-BFGS-B with the analytic gradient. With the shapes fixed, each band's
    amplitudes are then fitted to that band (its pixel weights, its PSF variance).

    Parameters
    ----------
    images, weights : numpy.ndarray
        (B, H, W) images and inverse-variance weights (0: no data).
    psf_variances : numpy.ndarray
        (B,) per-axis variance of each band's PSF (:func:`psf_variance`).
    peaks : numpy.ndarray
        (N, 2) integer (y, x) peaks inside the images.
    per_source : int
        Gaussians per source, sharing its centre (2).
    max_iter : int
        L-BFGS-B iterations per start (200).

    Returns
    -------
    numpy.ndarray
        (B, N) fluxes, >= 0.
    """
    images = as_float_array(images, "images", 3, dtype=np.float64, finite=False)
    weights = as_float_array(weights, "weights", 3, dtype=np.float64)
    if weights.shape != images.shape:
        raise ValueError(f"weights must have the images' shape {images.shape}")
    if (weights < 0).any():
        raise ValueError("weights must be >= 0")
    if not np.isfinite(images[weights > 0]).all():
        raise ValueError("images must be finite where the weight is positive")
    B, H, W = images.shape
    psf_variances = as_float_array(psf_variances, "psf_variances", 1, dtype=np.float64)
    if psf_variances.shape != (B,) or not (psf_variances > 0).all():
        raise ValueError(f"psf_variances must be {B} positive values")
    peaks = as_peaks(peaks, (H, W), "peaks")
    if isinstance(per_source, bool) or not isinstance(per_source, (int, np.integer)):
        raise TypeError("per_source must be an int")
    if per_source < 1 or max_iter < 1:
        raise ValueError("per_source and max_iter must be >= 1")
    images = np.where(weights > 0, images, 0.0)
    has_data = (weights > 0).reshape(B, -1).any(axis=1)
    band_w = np.array(
        [np.median(w[w > 0]) if h else 0.0 for w, h in zip(weights, has_data, strict=True)]
    )
    if len(peaks) == 0 or not has_data.any():
        return np.zeros((B, len(peaks)))
    coadd, pixel_w = _coadd(images, weights, band_w)
    psf_var = float((band_w * psf_variances).sum() / band_w.sum())
    centres = np.repeat(peaks.astype(np.float64), per_source, axis=0)
    grid = _pixel_grid((H, W))
    shapes = _fit_shapes(coadd, pixel_w, grid, centres, psf_var, peaks, per_source, max_iter)
    fluxes = np.zeros((B, centres.shape[0]))
    for b in np.flatnonzero(has_data):
        sw = np.sqrt(weights[b].ravel())
        G = _profiles(shapes, centres, grid, psf_variances[b])[0]
        fluxes[b] = nnls_checked((G * sw[None]).T, images[b].ravel() * sw)
    return fluxes.reshape(B, len(peaks), per_source).sum(axis=2)


def _model_fluxes(blend) -> np.ndarray:
    """(N, B) flux of each source's model."""
    B = blend.shape[0]
    fluxes = [
        sum((c.sed * c.morphology.sum() for c in src.components), np.zeros(B))
        for src in blend.sources
    ]
    return np.array(fluxes).reshape(len(blend.sources), B)


def _window_data(blend, group: list, window: tuple, total: np.ndarray) -> np.ndarray:
    """The images on the ``window`` box minus the convolved models of the sources not in
    ``group`` (``total``: the whole blend's convolved model)."""
    y0, x0, h, w = window
    frame = (slice(None), slice(y0, y0 + h), slice(x0, x0 + w))
    data = np.asarray(blend.observation.images[frame], dtype=np.float64) - total[frame]
    stack = blend.convolved_sources(group)
    for k in range(len(group)):
        in_window, in_box = overlap_slices(window, tuple(stack.boxes[k]))
        data[(slice(None), *in_window)] += stack.get(k)[(slice(None), *in_box)]
    return data


def starved_start(blend, snrs: np.ndarray, config) -> tuple[dict[int, np.ndarray], list[int]]:
    """Per-band start fluxes of the sources around each starved lost source (module
    docstring), and the starved sources; both empty when no lost source is starved.

    Parameters
    ----------
    blend : Blend
        The fitted blend.
    snrs : numpy.ndarray
        (N,) each source's matched-filter S/N at its peak.
    config : DeblendConfig
        ``rescue_lost_snr``, ``rescue_lost_fraction``, ``shape_prior_radius``,
        ``shape_prior_gaussians``, ``shape_prior_gate``.

    Returns
    -------
    start : dict
        Source index -> (B,) fluxes, for every source of a starved lost source's window
        (the brightest lost source's window first).
    starved : list of int
        The starved lost sources, in that order.
    """
    from .lost import lost_sources, repair_order

    lost, _ = lost_sources(blend, snrs, config.rescue_lost_snr, config.rescue_lost_fraction)
    if not lost:
        return {}, []
    obs = blend.observation
    _, H, W = blend.shape
    peaks = np.array([s.peak for s in blend.sources], dtype=np.intp)
    psf_var = np.array([psf_variance(p) for p in obs.psfs])
    total = np.asarray(obs.convolve(blend.model()), dtype=np.float64)
    model = _model_fluxes(blend).sum(axis=1)
    r = config.shape_prior_radius
    start: dict[int, np.ndarray] = {}
    starved: list[int] = []
    for i in repair_order(lost, snrs):
        if i in start:  # a brighter lost source's window held it: already has a start
            continue
        window = intersect(grow((*peaks[i], 1, 1), r), (0, 0, H, W))
        y0, x0, h, w = window
        inside = (peaks[:, 0] >= y0) & (peaks[:, 0] < y0 + h)
        inside &= (peaks[:, 1] >= x0) & (peaks[:, 1] < x0 + w)
        group = [int(j) for j in np.flatnonzero(inside)]
        data = _window_data(blend, group, window, total)
        weights = np.asarray(obs.weights[:, y0 : y0 + h, x0 : x0 + w], dtype=np.float64)
        local = peaks[group] - np.array([y0, x0])
        fluxes = gaussian_fluxes(data, weights, psf_var, local, config.shape_prior_gaussians)
        own = fluxes[:, group.index(i)].sum()
        if own > 0 and model[i] < config.shape_prior_gate * own:
            starved.append(i)
            for k, j in enumerate(group):
                start.setdefault(j, fluxes[:, k])
    return start, starved


def scale_seds(blend, fluxes: dict[int, np.ndarray], floor: float) -> None:
    """Scale, band by band, the SEDs of each source of ``fluxes`` so that its model holds
    those fluxes (scale factors clipped to [1e-3, 1e3]; SEDs kept >= ``floor``)."""
    now = _model_fluxes(blend)
    for i, target in fluxes.items():
        scale = np.where(now[i] > 0, target / np.maximum(now[i], 1e-300), 1.0)
        for c in blend.sources[i].components:
            c.sed = np.maximum(c.sed * np.clip(scale, 1e-3, 1e3), floor)
    blend.pack()


def light_moment(blend, sources: list[int]) -> float:
    """The light of ``sources`` weighted by the squared distance from each one's own peak.

    ``sum_i sum_p m_i(p) |p - peak_i|^2``, with ``m_i`` source ``i``'s model (all bands
    summed, model frame). It is not divided by the flux: a fit that moves light out of the
    sources also lowers it.

    Parameters
    ----------
    blend : Blend
        A fitted blend.
    sources : list of int
        The sources summed over.

    Returns
    -------
    float
        The moment, in flux units x px^2.
    """
    total = 0.0
    for i in sources:
        py, px = blend.sources[i].peak
        for c in blend.sources[i].components:
            y0, x0, h, w = c.box
            dy2 = (np.arange(y0, y0 + h, dtype=np.float64) - py) ** 2
            dx2 = (np.arange(x0, x0 + w, dtype=np.float64) - px) ** 2
            m = np.asarray(c.morphology, dtype=np.float64)
            r2 = dy2 @ m.sum(axis=1) + m.sum(axis=0) @ dx2
            total += float(np.sum(c.sed)) * float(r2)
    return total


def prefer_second(
    first, second, losses: tuple[float, float], window: list[int], starved: list[int], config
) -> bool:
    """Whether the second fit (from the shape prior's start) replaces the first.

    The two fits of a twin explain the images about equally well (module docstring), so a
    prior chooses among fits the data do not tell apart: the second is kept when its loss
    is at most ``shape_prior_loss`` sqrt(N/2) above the first's (N the pixel values with
    data; sqrt(N/2), the loss's spread over noise draws, is used as the scale of a
    difference in the loss too small to decide on, a heuristic, not a test) and it is
    either the more compact explanation of the windows, its :func:`light_moment` over their
    sources below ``shape_prior_compactness`` times the first's, or it revived a starved
    source, whose model flux grew by more than ``shape_prior_revival`` times.

    Parameters
    ----------
    first, second : Blend
        The fitted blends, same sources.
    losses : tuple of float
        Their losses, as their fits returned them.
    window : list of int
        The sources of the starved sources' windows (the keys of :func:`starved_start`).
    starved : list of int
        The starved sources.
    config : DeblendConfig
        ``shape_prior_loss``, ``shape_prior_compactness`` and ``shape_prior_revival``.

    Returns
    -------
    bool
        True to keep the second fit; False (the first) also when a loss is not finite.
    """
    n = int(np.count_nonzero(np.asarray(first.observation.weights) > 0))
    # written so that a NaN loss refuses the second fit
    if not losses[1] - losses[0] <= config.shape_prior_loss * np.sqrt(n / 2):
        return False
    m1, m2 = light_moment(first, window), light_moment(second, window)
    if m2 < config.shape_prior_compactness * m1:
        return True
    f1, f2 = _model_fluxes(first).sum(axis=1), _model_fluxes(second).sum(axis=1)
    return any(f2[i] > config.shape_prior_revival * f1[i] for i in starved)
