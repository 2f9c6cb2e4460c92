"""PSF images for the single-band deblender: sub-pixel shifts, callable PSF models, FWHM.

A fixed PSF image is moved to a peak's sub-pixel centre with a separable Lanczos-5 kernel
(:func:`shift_image`); a callable ``psf(y, x) -> (image, (y0, x0))`` is evaluated there
(:class:`PsfImages`). :func:`psf_fwhm_from_moments` gives the FWHM from adaptive moments.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .. import _symmetric_cy

__all__ = [
    "PsfImages",
    "banded_shift",
    "callable_fwhm",
    "lanczos5",
    "lanczos_taps",
    "psf_fwhm_at",
    "psf_fwhm_from_moments",
    "round_half_away",
    "shift_image",
]


def lanczos5(t: np.ndarray) -> np.ndarray:
    """Lanczos-5 kernel."""
    out = np.sinc(t) * np.sinc(t / 5.0)
    out[np.abs(t) >= 5.0] = 0.0
    return out


def lanczos_taps(d: float) -> np.ndarray:
    """The 13 taps ``lanczos5(o - d)``, ``o = -6..6``, of a shift by ``d`` (|d| < 1)."""
    # Offsets -6..6 cover |o - d| < 5; 13 taps are cheaper in plain Python than in numpy.
    taps = np.zeros(13)
    for k in range(13):
        t = k - 6 - d
        if t == 0:
            taps[k] = 1.0
        elif abs(t) < 5:
            a, b = math.pi * t, math.pi * t / 5
            taps[k] = (math.sin(a) / a) * (math.sin(b) / b)
    return taps


def banded_shift(img: np.ndarray, taps: np.ndarray, axis: int) -> np.ndarray:
    """``L @ img`` (axis 0) or ``img @ L.T`` (axis 1) for the banded Lanczos matrix ``L`` of
    ``taps``: ``out[i] = sum_o taps[o + 6] img[i - o]`` (zero beyond the image).

    Thirteen whole-array multiply-adds instead of a matrix product: no BLAS call (a threaded
    BLAS wakes its threads for products of PSF-sized matrices, once per peak) and
    ``13 n`` instead of ``n^2`` operations per output pixel row.
    """
    src = img if axis == 0 else img.T
    n = src.shape[0]
    out = np.zeros(src.shape)
    for o in range(-6, 7):
        t = taps[o + 6]
        if t == 0 or abs(o) >= n:
            continue
        if o >= 0:
            out[o:] += t * src[: n - o]
        else:
            out[: n + o] += t * src[-o:]
    return out if axis == 0 else out.T


def shift_image(img: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """``img`` moved by (dy, dx) pixels with a separable Lanczos-5 kernel, renormalised.

    ``g[i, j] = sum_kl Ly[i, k] f[k, l] Lx[j, l]`` with ``L[i, k] = lanczos5(i - k - d)``
    (zeros beyond the image), applied one axis at a time (:func:`banded_shift`).
    """
    out = img if dy == 0 else banded_shift(img, lanczos_taps(dy), 0)
    out = out if dx == 0 else banded_shift(out, lanczos_taps(dx), 1)
    s = out.sum()
    return out / s if s != 0 else out


def round_half_away(v: float) -> int:
    """Round half away from zero (C ``lround``)."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


class PsfImages:
    """PSF images at sub-pixel positions, from a fixed array or a callable."""

    def __init__(self, psf: np.ndarray | Callable, fallback_yx: Callable[[], tuple]) -> None:
        self.fixed = None if callable(psf) else psf
        self.func = psf if callable(psf) else None
        self.fallback = fallback_yx
        self._cache: dict[tuple[float, float], np.ndarray] = {}

    def image(self, cy: float, cx: float) -> tuple[np.ndarray, int, int]:
        """(values, y0, x0): the PSF centred on (cy, cx), its box centred on the nearest pixel."""
        if self.fixed is None:
            try:
                arr, origin = self.func(cy, cx)
                arr = np.asarray(arr, dtype=np.float64)
            except Exception:
                # A PSF model that fails at this position: take its image at the peaks' mean,
                # with the box centred on the pixel nearest to (cy, cx).
                arr, _ = self.func(*self.fallback())
                arr = np.asarray(arr, dtype=np.float64)
                origin = (
                    round_half_away(cy) - arr.shape[0] // 2,
                    round_half_away(cx) - arr.shape[1] // 2,
                )
            return arr, int(origin[0]), int(origin[1])
        iy, ix = round_half_away(cy), round_half_away(cx)
        dy, dx = cy - iy, cx - ix
        key = (dy, dx)
        arr = self._cache.get(key)
        if arr is None:
            arr = self.fixed if (dy == 0 and dx == 0) else shift_image(self.fixed, dy, dx)
            self._cache[key] = arr
        ph, pw = arr.shape
        return arr, iy - ph // 2, ix - pw // 2


def psf_fwhm_from_moments(psf: np.ndarray, max_iter: int = 50) -> float:
    """FWHM ``2.35 (det M)^(1/4)`` from the adaptive (Gaussian-weighted) second moments M.

    The weight's covariance is iterated to twice the weighted moments, whose fixed point is
    the covariance of a Gaussian PSF. Returns NaN when the iteration breaks down.
    """
    psf = np.asarray(psf, dtype=np.float64)
    s = psf.sum()
    if not s > 0:
        return float("nan")
    # The Gaussian weight ignores the far wings: cut the image to 2.5x a rough FWHM (from the
    # area above half the maximum) around its maximum, which makes large PSF images cheap.
    iy, ix = np.unravel_index(int(np.argmax(psf)), psf.shape)
    rough = 2.0 * math.sqrt(np.count_nonzero(psf >= 0.5 * psf[iy, ix]) / math.pi)
    r = int(math.ceil(2.5 * rough)) + 2
    psf = psf[max(iy - r, 0) : iy + r + 1, max(ix - r, 0) : ix + r + 1]
    s = psf.sum()
    if not s > 0:
        return float("nan")
    psf = np.ascontiguousarray(psf)
    mom = np.empty(6)
    # Start from the unweighted centroid and a 2-pixel-variance weight.
    _symmetric_cy.gaussian_moments(psf, 0.0, 0.0, 0.0, 0.0, 0.0, mom)
    cy, cx = mom[1] / mom[0], mom[2] / mom[0]
    myy, mxy, mxx = 2.0, 0.0, 2.0
    for _ in range(max_iter):
        det = myy * mxx - mxy * mxy
        if not det > 0:
            return float("nan")
        iyy, ixy, ixx = mxx / det, -mxy / det, myy / det
        _symmetric_cy.gaussian_moments(psf, cy, cx, iyy, ixy, ixx, mom)
        fs = mom[0]
        if not fs > 0:
            return float("nan")
        ey, ex = mom[1] / fs, mom[2] / fs
        # Second moments about the updated centre.
        wyy = mom[3] / fs - ey * ey
        wxy = mom[4] / fs - ey * ex
        wxx = mom[5] / fs - ex * ex
        cy, cx = cy + ey, cx + ex
        # Deweight: for a Gaussian PSF of covariance C the weighted moments are
        # (C^-1 + M^-1)^-1, so C = (W^-1 - M^-1)^-1, which converges in a few steps.
        # Fall back to the plain fixed-point step M = 2 W when that is not positive.
        wdet = wyy * wxx - wxy * wxy
        if wdet > 0:
            ayy, axy, axx = wxx / wdet - iyy, -wxy / wdet - ixy, wyy / wdet - ixx
            adet = ayy * axx - axy * axy
        else:
            adet = ayy = 0.0
        if adet > 0 and ayy > 0:
            nyy, nxy, nxx = axx / adet, -axy / adet, ayy / adet
        else:
            nyy, nxy, nxx = 2 * wyy, 2 * wxy, 2 * wxx
        done = (
            abs(nyy - myy) <= 1e-6 * abs(myy)
            and abs(nxx - mxx) <= 1e-6 * abs(mxx)
            and abs(nxy - mxy) <= 1e-6 * (abs(myy) + abs(mxx))
        )
        myy, mxy, mxx = nyy, nxy, nxx
        if done:
            break
    det = myy * mxx - mxy * mxy
    if not det > 0:
        return float("nan")
    return float(2.35 * det**0.25)


def psf_fwhm_at(psf: Callable, cy: float, cx: float) -> float:
    """FWHM (pixels) of a callable PSF evaluated at (cy, cx)."""
    img, _, _ = PsfImages(psf, lambda: (cy, cx)).image(cy, cx)
    return psf_fwhm_from_moments(img)


def callable_fwhm(psf: Callable, shape: tuple[int, int]) -> float:
    """FWHM (pixels) of a callable PSF evaluated at the middle of an image of ``shape``."""
    return psf_fwhm_at(psf, (shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0)
