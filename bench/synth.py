"""Seeded synthetic multi-band blends for the scaling and memory benchmarks.

Galaxies are elliptical Sersic-like profiles (index 1-4, drawn on a 3x oversampled grid and
binned) with a per-source SED; a fraction are point sources. Each band's image is the sum of
the sources convolved with that band's Moffat PSF (FFT, exact linear convolution on a padded
frame so that light falling off the edge is lost, as in real data), plus Gaussian noise of a
per-band sky variance. The truth (each source's PSF-convolved image inside the frame) is
kept only as per-band fluxes and, optionally, images on boxes, so a 1000 x 1000 scene with 600
sources does not need a dense (N, B, H, W) cube.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft

BANDS = ("g", "r", "i", "z", "y")


def moffat_psf(fwhm: float, beta: float = 3.5, size: int = 25) -> np.ndarray:
    """Unit-sum circular Moffat profile on an odd ``size`` x ``size`` grid (3x oversampled)."""
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    os = 3
    u = (np.arange(size * os) - (size * os - 1) / 2.0) / os
    r2 = u[:, None] ** 2 + u[None, :] ** 2
    fine = (1.0 + r2 / alpha**2) ** (-beta)
    psf = fine.reshape(size, os, size, os).sum(axis=(1, 3))
    return psf / psf.sum()


@dataclass
class Scene:
    """A synthetic blend and its truth."""

    images: np.ndarray  # (B, H, W) float32
    variance: np.ndarray  # (B, H, W) float32
    psfs: np.ndarray  # (B, h, w) float32
    peaks: np.ndarray  # (N, 2) int (y, x), detected positions (true centre rounded)
    true_flux: np.ndarray  # (N, B) flux of each source inside the frame
    bands: tuple[str, ...] = BANDS


def _sersic_stamp(
    rng: np.random.Generator,
    size: int,
    cy: float,
    cx: float,
    re: float,
    n: float,
    q: float,
    theta: float,
) -> np.ndarray:
    """Unit-flux Sersic-like profile (exp(-b_n (r/re)^(1/n))) on a size x size stamp."""
    os = 3
    u = (np.arange(size * os) + 0.5) / os
    yy, xx = u[:, None] - cy, u[None, :] - cx
    c, s = np.cos(theta), np.sin(theta)
    xr = c * xx + s * yy
    yr = (-s * xx + c * yy) / q
    r = np.sqrt(xr**2 + yr**2)
    bn = 2.0 * n - 1.0 / 3.0
    fine = np.exp(-bn * ((r / re) ** (1.0 / n) - 1.0))
    img = fine.reshape(size, os, size, os).sum(axis=(1, 3))
    return img / img.sum()


def make_scene(
    height: int,
    width: int,
    n_sources: int,
    seed: int = 0,
    star_frac: float = 0.15,
    mag_range: tuple[float, float] = (19.0, 24.0),
) -> Scene:
    """Draw one blend.

    Parameters
    ----------
    height, width : int
        Frame size.
    n_sources : int
        Number of sources; positions are uniform with a 6 px margin, at least 3 px apart.
    seed : int
        Seed of ``numpy.random.default_rng``: the same arguments give identical arrays.
    """
    rng = np.random.default_rng(seed)
    nb = len(BANDS)
    fwhms = np.linspace(3.4, 2.8, nb)  # pixels; seeing improves to the red
    psfs = np.stack([moffat_psf(f) for f in fwhms])
    sky_var = np.linspace(40.0, 120.0, nb)
    # positions: rejection sampling, min separation 3 px
    pos: list[tuple[float, float]] = []
    margin = 6
    tries = 0
    while len(pos) < n_sources and tries < 100 * n_sources:
        tries += 1
        y = rng.uniform(margin, height - margin)
        x = rng.uniform(margin, width - margin)
        if all((y - a) ** 2 + (x - b) ** 2 >= 9.0 for a, b in pos):
            pos.append((y, x))
    n = len(pos)
    scene = np.zeros((nb, height, width))
    true_flux = np.zeros((n, nb))
    ph, pw = psfs.shape[1:]
    for i, (y, x) in enumerate(pos):
        mag = rng.uniform(*mag_range)
        flux = 10 ** (-0.4 * (mag - 31.4))  # nJy, zeropoint 31.4
        star = rng.random() < star_frac
        # SED: a smooth power law in band index with scatter (normalised to mean 1)
        tilt = rng.normal(0.0, 0.25)
        sed = np.exp(tilt * (np.arange(nb) - 2)) * np.exp(rng.normal(0, 0.05, nb))
        sed /= sed.mean()
        if star:
            size = 1
            stamp = np.ones((1, 1))
            y0, x0 = int(round(y)), int(round(x))
        else:
            re = rng.lognormal(np.log(2.0), 0.4)
            size = int(min(2 * int(6 * re) + 1, 61))
            y0, x0 = int(round(y)) - size // 2, int(round(x)) - size // 2
            stamp = _sersic_stamp(
                rng,
                size,
                y - y0,
                x - x0,
                re,
                rng.uniform(1.0, 4.0),
                rng.uniform(0.4, 1.0),
                rng.uniform(0, np.pi),
            )
        # insert the clipped stamp and convolve the source alone for its in-frame flux
        ya, yb = max(y0, 0), min(y0 + size, height)
        xa, xb = max(x0, 0), min(x0 + size, width)
        part = stamp[ya - y0 : yb - y0, xa - x0 : xb - x0]
        # flux inside the frame after the PSF: convolve the stamp on a padded local grid
        gh, gw = part.shape[0] + ph - 1, part.shape[1] + pw - 1
        conv = scipy.fft.irfft2(
            scipy.fft.rfft2(part, s=(gh, gw))[None] * scipy.fft.rfft2(psfs, s=(gh, gw)), s=(gh, gw)
        )
        gy0, gx0 = ya - ph // 2, xa - pw // 2
        cya, cyb = max(gy0, 0), min(gy0 + gh, height)
        cxa, cxb = max(gx0, 0), min(gx0 + gw, width)
        inside = conv[:, cya - gy0 : cyb - gy0, cxa - gx0 : cxb - gx0]
        true_flux[i] = flux * sed * inside.sum(axis=(1, 2))
        scene[:, cya:cyb, cxa:cxb] += (flux * sed)[:, None, None] * inside
    variance = sky_var[:, None, None] + np.maximum(scene, 0) / 10.0
    noise = rng.normal(size=scene.shape) * np.sqrt(variance)
    images = (scene + noise).astype(np.float32)
    peaks = np.array([(int(round(y)), int(round(x))) for y, x in pos], dtype=np.int64)
    peaks[:, 0] = np.clip(peaks[:, 0], 0, height - 1)
    peaks[:, 1] = np.clip(peaks[:, 1], 0, width - 1)
    return Scene(images, variance.astype(np.float32), psfs.astype(np.float32), peaks, true_flux)
