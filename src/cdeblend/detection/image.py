"""The detection image: the bands' inverse-variance coadd as a signal-to-noise image,
unfiltered, matched-filtered or smoothed (SExtractor's ``FILTER Y``), and its noise."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .. import _detection_cy
from .._validate import as_float_array, check_psf, check_same_shape, clear_no_data, no_data_pixels


def _as_stack(images, variance, keep_float32: bool = False):
    """Validated (B, H, W) images and variance (a single band gets B = 1); pixels without
    data (see ``_validate.no_data_pixels``) get value 0 and variance 0.

    float64, or with ``keep_float32`` float32 when both arrays are (for the S/N kernel,
    which reads either and computes in double: the same values at half the memory).
    """
    dtype = np.float64
    if keep_float32 and np.asarray(images).dtype == np.asarray(variance).dtype == np.float32:
        dtype = np.float32
    images = as_float_array(images, "images", (2, 3), dtype=dtype, finite=False)
    variance = as_float_array(variance, "variance", (2, 3), dtype=dtype, finite=False)
    check_same_shape(images, "images", variance, "variance")
    images, variance = clear_no_data(images, variance, no_data_pixels(images, variance))
    if images.ndim == 2:
        images, variance = images[None], variance[None]
    return images, variance


def detection_image(
    images: np.ndarray,
    variance: np.ndarray,
    psf: np.ndarray | None = None,
    psf_fwhm: float | None = None,
    kernel: np.ndarray | None = None,
    filter_type: str = "matched",
) -> np.ndarray:
    """Signal-to-noise detection image, combining the bands by inverse variance.

    ``S = sum_b I_b / V_b / sqrt(sum_b 1 / V_b)``: the S/N per pixel of a flat-spectrum
    source. With a filter P (the PSF, a Gaussian of the PSF's FWHM or a given kernel) and
    ``filter_type="matched"`` the image is matched-filtered,
    ``S = (sum_b I_b / V_b) * P / sqrt((sum_b 1 / V_b) * P^2)`` (``*``: correlation), the
    S/N of a point source centred on each pixel. With ``filter_type="conv"`` it is
    smoothed as SExtractor and sep's ``filter_type="conv"`` do,
    ``S = (sum_b I_b / V_b) * p / sqrt((sum_b 1 / V_b) * p)`` with ``p = P / sum(P)``: the
    filtered image in units of the *unfiltered* pixel noise, so that a threshold of 1.5
    means SExtractor's ``DETECT_THRESH 1.5`` with ``FILTER Y``. Its own noise is then
    ``sqrt(sum p^2)`` (see :func:`filter_noise`), not 1.

    Parameters
    ----------
    images, variance : numpy.ndarray
        (B, H, W) or (H, W).
    psf : numpy.ndarray, optional
        PSF image for the filter: one (h, w) image, or (B, h, w) whose mean is used.
    psf_fwhm : float, optional
        Without ``psf``: filter with a circular Gaussian of this FWHM (pixels) instead,
        which is separable and so much cheaper.
    kernel : numpy.ndarray, optional
        Without ``psf`` and ``psf_fwhm``: filter with this (h, w) kernel of odd sides and
        positive sum (e.g. SExtractor's ``default.conv``; it is normalised here).
    filter_type : {"matched", "conv"}
        How the filtered image is scaled (see above).

    Returns
    -------
    numpy.ndarray
        (H, W) float64 detection image in units of sigma.
    """
    return detection_image_and_sums(images, variance, psf, psf_fwhm, kernel, filter_type)[0]


def detection_image_and_sums(
    images, variance, psf=None, psf_fwhm=None, kernel=None, filter_type: str = "matched"
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """:func:`detection_image` and the coadd's two sums (:func:`coadd`) it was filtered from,
    for a second filter of the same sums (None: the image is unfiltered).

    The unfiltered image is the S/N kernel's (``_detection_cy.snr_coadd``: one pass in
    double, no (B, H, W) temporaries); it equals ``num / sqrt(den)`` of :func:`coadd` to the
    bit (both add the bands in order, in double).
    """
    if filter_type not in ("matched", "conv"):
        raise ValueError(f"filter_type must be 'matched' or 'conv', got {filter_type!r}")
    if psf is None and psf_fwhm is None and kernel is None:
        images, variance = _as_stack(images, variance, keep_float32=True)
        out = np.empty(images.shape[1:])
        _detection_cy.snr_coadd(images, variance, out)
        return out, None
    num, den = coadd(images, variance)
    return filter_coadd(num, den, psf, psf_fwhm, kernel, filter_type), (num, den)


def coadd(images, variance) -> tuple[np.ndarray, np.ndarray]:
    """``sum_b I_b / V_b`` and ``sum_b 1 / V_b`` of validated images."""
    images, variance = _as_stack(images, variance)
    # pixels without data (variance 0) weigh nothing; where no band has data S = 0
    ivar = np.divide(1.0, variance, out=np.zeros_like(variance), where=variance > 0)
    return np.sum(images * ivar, axis=0), np.sum(ivar, axis=0)


def filter_coadd(num, den, psf, psf_fwhm, kernel, filter_type) -> np.ndarray:
    """:func:`detection_image` from the coadd's two sums, with a filter (``psf``, ``psf_fwhm``
    or ``kernel``)."""
    conv = filter_type == "conv"
    tiny = np.finfo(np.float64).tiny
    if psf is None and psf_fwhm is not None:
        if not (np.isfinite(psf_fwhm) and psf_fwhm > 0):
            raise ValueError(f"psf_fwhm must be finite and > 0, got {psf_fwhm}")
        # Gaussian P of width s: P^2 = G(s / sqrt 2) / (4 pi s^2), G unit-sum.
        s = psf_fwhm / 2.3548
        tmp = np.empty_like(num)
        num_f, den_f = np.empty_like(num), np.empty_like(den)
        _detection_cy.separable_smooth(num, _gauss_kernel(s), tmp, num_f)
        if conv:
            _detection_cy.separable_smooth(den, _gauss_kernel(s), tmp, den_f)
            return num_f / np.sqrt(np.maximum(den_f, tiny))
        _detection_cy.separable_smooth(den, _gauss_kernel(s / np.sqrt(2)), tmp, den_f)
        num, den = num_f, den_f / (4 * np.pi * s * s)
        return num / np.sqrt(np.maximum(den, tiny))
    if psf is not None:
        p = as_float_array(psf, "psf", (2, 3), dtype=np.float64)
        check_psf(p, "psf")
        if p.ndim == 3:
            p = p.mean(axis=0)
        # Crop the kernel to where it holds essentially all of the flux, then correlate
        # both images in one batched FFT (direct correlation with a 41 x 41 PSF costs ~10x
        # more).
        p = _crop_kernel(p)
    else:
        p = check_kernel(kernel)
    k = p[::-1, ::-1] / p.sum()
    k2 = k if conv else k * k
    if k.size <= 25:
        # a small kernel (SExtractor's 3 x 3): direct correlation beats the FFT
        num_f = ndimage.correlate(num, p / p.sum(), mode="constant")
        den_f = ndimage.correlate(den, k2[::-1, ::-1], mode="constant")
    else:
        from scipy import signal  # imported when needed: it alone takes ~1 s to import

        both = signal.fftconvolve(np.stack([num, den]), np.stack([k, k2]), mode="same", axes=(1, 2))
        num_f, den_f = both[0], both[1]
    return num_f / np.sqrt(np.maximum(den_f, tiny))


def check_kernel(kernel) -> np.ndarray:
    """A user's filter kernel as float64 (h, w), odd sides, finite, positive sum."""
    k = as_float_array(kernel, "kernel", 2, dtype=np.float64)
    if k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
        raise ValueError(f"kernel must have odd sides, got shape {k.shape}")
    if not k.sum() > 0:
        raise ValueError(f"kernel must have a positive sum, got {k.sum()}")
    return k


def filter_noise(
    psf: np.ndarray | None = None,
    psf_fwhm: float | None = None,
    kernel: np.ndarray | None = None,
    filter_type: str = "matched",
) -> float:
    """Noise RMS of :func:`detection_image` with these filter settings, for white noise.

    1 for the unfiltered and the matched-filtered images; ``sqrt(sum p^2)`` for
    ``filter_type="conv"`` with the unit-sum filter p (``1 / (2 sqrt(pi) s)`` for a Gaussian
    of width s), which is how much smoothing lowers the noise of an image kept in the units
    of the unfiltered one.
    """
    if filter_type != "conv" or (psf is None and psf_fwhm is None and kernel is None):
        return 1.0
    if psf is None and psf_fwhm is not None:
        return float(1.0 / (2.0 * np.sqrt(np.pi) * (psf_fwhm / 2.3548)))
    p = np.asarray(psf if psf is not None else kernel, dtype=np.float64)
    if p.ndim == 3:
        p = p.mean(axis=0)
    p = p / p.sum()
    return float(np.sqrt((p * p).sum()))


def _gauss_kernel(sigma: float, truncate: float = 3.5) -> np.ndarray:
    """Unit-sum sampled Gaussian of width ``sigma``, cut at ``truncate`` sigma (as scipy's)."""
    r = max(int(truncate * sigma + 0.5), 0)
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _crop_kernel(p: np.ndarray, keep: float = 0.999) -> np.ndarray:
    """The smallest centred odd square of ``p`` holding ``keep`` of its absolute sum."""
    h, w = p.shape
    cy, cx = h // 2, w // 2
    total = np.abs(p).sum()
    for r in range(1, max(cy, cx) + 1):
        sub = p[max(cy - r, 0) : cy + r + 1, max(cx - r, 0) : cx + r + 1]
        if np.abs(sub).sum() >= keep * total:
            return sub
    return p
