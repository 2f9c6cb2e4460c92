"""Sky background and noise estimates for images that were not sky-subtracted.

:func:`estimate_background` follows SExtractor (Bertin & Arnouts 1996) and photutils'
``Background2D``:

1. the image is cut into a grid of meshes of about ``mesh`` x ``mesh`` pixels (the grid
   divides the image evenly, so edge meshes are not slivers);
2. in each mesh the pixel values are sigma-clipped about their median (``nsigma`` x the
   standard deviation, repeated until no pixel is removed) and the background is the mode
   estimate ``2.5 median - 1.5 mean`` when the clipped distribution is only mildly skewed
   (``|mean - median| < 0.3 std``), else the clipped median (SExtractor's rule: the mode
   is biased little by faint sources, the median is safer in crowded meshes); the mesh's
   noise is the clipped standard deviation;
3. meshes with too few usable pixels (no-data: NaN, or masked) take the median of the usable
   ones;
4. the mesh grid is median-filtered over ``filter_size`` x ``filter_size`` meshes (a bright
   star or galaxy that biases one mesh is replaced by its neighbours);
5. the mesh values, placed at the mesh centres, are interpolated bilinearly to every pixel
   and extrapolated linearly over the half mesh beyond the outermost centres, so a plane
   is reproduced exactly. (SExtractor uses a bicubic spline; on grids of a few noisy meshes
   its extrapolation to the image edges amplified the mesh noise several-fold in
   ``tests/test_background.py``-like scenes: up to 5 sigma at the corners against 1 sigma.)

:func:`clipped_stats` is the sigma clipping of step 2, also used by the ``cdeblend`` command
to estimate a per-band noise level when no variance is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.interpolate import RegularGridInterpolator

__all__ = ["Background", "clipped_stats", "estimate_background", "looks_unsubtracted"]


def clipped_stats(
    values: np.ndarray, nsigma: float = 3.0, maxiters: int = 20
) -> tuple[float, float, float]:
    """Mean, median and standard deviation of ``values`` after iterative sigma clipping.

    Non-finite values are ignored. Each pass keeps the values within ``nsigma`` standard
    deviations of the median of the values kept so far; it stops when nothing changes or
    after ``maxiters`` passes.

    Parameters
    ----------
    values : numpy.ndarray
        Any shape; flattened.
    nsigma : float
        Clipping threshold in standard deviations (> 0).
    maxiters : int
        Largest number of clipping passes.

    Returns
    -------
    tuple of float
        ``(mean, median, std)`` of the kept values; NaNs when no value is finite.
    """
    if not nsigma > 0:
        raise ValueError(f"nsigma must be > 0, got {nsigma}")
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    for _ in range(int(maxiters)):
        med = np.median(v)
        std = v.std()
        keep = np.abs(v - med) <= nsigma * std
        if keep.all() or keep.sum() < 3:
            break
        v = v[keep]
    return float(v.mean()), float(np.median(v)), float(v.std())


@dataclass
class Background:
    """A background estimate of one image.

    Attributes
    ----------
    background : numpy.ndarray
        (H, W) background level at every pixel.
    rms : numpy.ndarray
        (H, W) background noise (standard deviation) at every pixel.
    mesh_background, mesh_rms : numpy.ndarray
        (ny, nx) values of the meshes after filtering (before interpolation).
    """

    background: np.ndarray
    rms: np.ndarray
    mesh_background: np.ndarray
    mesh_rms: np.ndarray

    @property
    def median_rms(self) -> float:
        """Median of the meshes' noise: one noise level for the image."""
        return float(np.median(self.mesh_rms))


def _edges(n: int, mesh: int) -> np.ndarray:
    """Mesh edges along an axis of ``n`` pixels: about ``mesh`` wide, dividing ``n`` evenly."""
    count = max(int(round(n / mesh)), 1)
    return np.linspace(0, n, count + 1).round().astype(np.int64)


def _mesh_value(pixels: np.ndarray, nsigma: float) -> tuple[float, float]:
    """SExtractor's background (mode or median) and noise of one mesh's pixels."""
    mean, med, std = clipped_stats(pixels, nsigma)
    if std > 0 and abs(mean - med) < 0.3 * std:
        return 2.5 * med - 1.5 * mean, std
    return med, std


def _median_filter(grid: np.ndarray, size: int) -> np.ndarray:
    """Median filter of the mesh grid, padded by odd reflection (``2 edge - inner``).

    Odd reflection continues a gradient across the edge, so a plane stays a plane; padding
    with the edge values would pull the corner meshes of a tilted sky towards the inside.
    """
    r = size // 2
    pads = []
    for n in grid.shape:
        pads.append((min(r, n - 1), min(r, n - 1)))
    padded = np.pad(grid, pads, mode="reflect", reflect_type="odd") if max(grid.shape) > 1 else grid
    padded = np.pad(padded, [(r - a, r - b) for a, b in pads], mode="edge")
    out = ndimage.median_filter(padded, size=size, mode="nearest")
    return out[r : r + grid.shape[0], r : r + grid.shape[1]]


def _interpolate(mesh: np.ndarray, cy: np.ndarray, cx: np.ndarray, shape: tuple) -> np.ndarray:
    """Interpolate mesh values at centres (cy, cx) to every pixel of ``shape``."""
    # an axis with one mesh is constant along it: give it two equal nodes
    if len(cy) == 1:
        mesh, cy = np.vstack([mesh, mesh]), np.array([cy[0] - 1.0, cy[0] + 1.0])
    if len(cx) == 1:
        mesh, cx = np.hstack([mesh, mesh]), np.array([cx[0] - 1.0, cx[0] + 1.0])
    interp = RegularGridInterpolator(
        (cy, cx), mesh, method="linear", bounds_error=False, fill_value=None
    )
    yy, xx = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    points = np.stack([yy.ravel(), xx.ravel()], axis=1).astype(np.float64)
    return interp(points).reshape(shape)


def estimate_background(
    image: np.ndarray,
    mesh: int = 64,
    filter_size: int = 3,
    nsigma: float = 3.0,
    mask: np.ndarray | None = None,
    min_fraction: float = 0.5,
) -> Background:
    """Estimate a smooth sky background and its noise (see the module docstring).

    Parameters
    ----------
    image : numpy.ndarray
        (H, W) image; non-finite pixels are no-data.
    mesh : int
        Mesh size in pixels (SExtractor's ``BACK_SIZE``; default 64 as there).
    filter_size : int
        Median filter over the mesh grid, in meshes (``BACK_FILTERSIZE``; 1 = none).
    nsigma : float
        Sigma-clipping threshold within a mesh.
    mask : numpy.ndarray, optional
        (H, W) bool, True = no-data (e.g. known sources or bad pixels).
    min_fraction : float
        A mesh with a smaller fraction of usable pixels takes the median of the others.

    Returns
    -------
    Background
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D (H, W), got shape {img.shape}")
    if int(mesh) < 2:
        raise ValueError(f"mesh must be >= 2 pixels, got {mesh}")
    if int(filter_size) < 1:
        raise ValueError(f"filter_size must be >= 1, got {filter_size}")
    good = np.isfinite(img)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != img.shape:
            raise ValueError(f"mask has shape {mask.shape}, the image {img.shape}")
        good &= ~mask.astype(bool)
    if not good.any():
        raise ValueError("image has no usable pixel (all non-finite or masked)")
    ey, ex = _edges(img.shape[0], int(mesh)), _edges(img.shape[1], int(mesh))
    ny, nx = len(ey) - 1, len(ex) - 1
    back = np.full((ny, nx), np.nan)
    rms = np.full((ny, nx), np.nan)
    for i in range(ny):
        for j in range(nx):
            sl = (slice(ey[i], ey[i + 1]), slice(ex[j], ex[j + 1]))
            ok = good[sl]
            if ok.mean() >= min_fraction:
                back[i, j], rms[i, j] = _mesh_value(img[sl][ok], nsigma)
    bad = ~np.isfinite(back)
    if bad.all():
        raise ValueError(
            f"no mesh has {min_fraction:.0%} usable pixels; use a larger mesh or fewer masks"
        )
    back[bad] = np.median(back[~bad])
    rms[bad] = np.median(rms[~bad])
    if filter_size > 1:
        back = _median_filter(back, int(filter_size))
        rms = _median_filter(rms, int(filter_size))
    cy = 0.5 * (ey[:-1] + ey[1:]) - 0.5
    cx = 0.5 * (ex[:-1] + ex[1:]) - 0.5
    return Background(
        background=_interpolate(back, cy, cx, img.shape),
        rms=np.maximum(_interpolate(rms, cy, cx, img.shape), 0.0),
        mesh_background=back,
        mesh_rms=rms,
    )


def looks_unsubtracted(image: np.ndarray, threshold: float = 3.0) -> tuple[bool, float]:
    """Whether an image's sky looks not subtracted: its clipped median, in noise units.

    The sigma-clipped median of a sky-subtracted image is close to 0 (faint sources and wings
    move it by a fraction of the noise); a sky level left in moves it by many times the noise.

    Returns
    -------
    tuple
        ``(flag, level)``: ``level`` = clipped median / clipped standard deviation, and
        ``flag`` = ``|level| > threshold``.
    """
    _, med, std = clipped_stats(image)
    if not (np.isfinite(med) and std > 0):
        return False, float("nan")
    level = med / std
    return bool(abs(level) > threshold), float(level)
