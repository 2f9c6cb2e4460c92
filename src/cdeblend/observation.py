"""Multi-band observations: images, weights, PSFs, the model PSF and the difference kernels.

An :class:`Observation` holds one blend (or a whole coadd that is later cut into blends): the
images, their variance and weights, one observed PSF per band, the narrow Gaussian *model PSF*
in which morphologies are fitted, and the per-band *difference kernels* that take a model from
the model PSF to the observed seeing. Its :class:`~cdeblend.convolution.Convolver`
(``observation.convolver``) applies those kernels; the observation's own methods are the
public face of it:

* :meth:`Observation.convolve` and :meth:`Observation.convolve_adjoint`: "same-size" linear
  convolution with zero boundary (and its exact adjoint, the flipped kernel), by the package's
  FFT core (``_fft.c``, two bands per complex transform) or by a direct Cython loop for small
  kernels/images, picked by a cost model;
* :meth:`Observation.loss_and_gradient`: the loss of a model and its gradient with respect to
  the model; it allocates nothing once warmed up (buffers are cached per shape and per
  thread). The fit itself runs the same math inside one Cython call per batch of iterations
  (:mod:`cdeblend._adam_cy`);
* :meth:`Observation.convolve_box`: convolve one morphology on its own box grown by the kernel
  half-size (used by the SED fit and rendering).

All boxes are ``(y0, x0, height, width)`` (:mod:`cdeblend.box`) in the frame of this
observation's arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.fft
from scipy.special import erfc

from ._adam_cy import point_source_products
from ._convolve_cy import weighted_residual
from ._detection_cy import mean_sqrt
from ._validate import (
    as_float_array,
    as_no_data_mask,
    check_psf,
    check_same_shape,
    clear_no_data,
    no_data_pixels,
)
from .box import Box, as_box
from .convolution import Convolver

__all__ = [
    "MODEL_PSF_SIGMA",
    "Observation",
    "difference_kernels",
    "effective_area",
    "integrated_gaussian_psf",
]

#: Sigma (pixels) of the Gaussian model-frame PSF of the multi-band model (the LSST
#: pipeline's 0.8): the one default every entry point uses.
MODEL_PSF_SIGMA = 0.8

#: Width of the model-PSF grid (the reference always uses 15 x 15).
MODEL_PSF_SIZE = 15
#: Extra FFT padding used when computing the difference kernels (reference value).
KERNEL_FFT_PADDING = 3


def integrated_gaussian_psf(
    sigma: float, size: int = MODEL_PSF_SIZE, dtype: Any = np.float64
) -> np.ndarray:
    """Circular Gaussian integrated over square pixels, normalised to unit sum.

    Parameters
    ----------
    sigma : float
        Gaussian standard deviation in pixels.
    size : int
        Odd width of the square grid (offsets ``-size//2 .. size//2``).
    dtype : dtype
        Output dtype.

    Returns
    -------
    numpy.ndarray
        ``(size, size)`` array.
    """
    u = np.arange(size, dtype=np.float64) - size // 2
    s2 = math.sqrt(2.0) * sigma
    g = (
        math.sqrt(math.pi)
        / 2.0
        * sigma
        * (erfc((np.abs(u) - 0.5) / s2) - erfc((np.abs(u) + 0.5) / s2))
    )
    psf = np.outer(g, g)
    return (psf / psf.sum()).astype(dtype)


def _centered_pad(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Zero-pad the last two axes of ``a`` to ``shape``, centred as in the spec (1.4)."""
    pads = [(0, 0)] * (a.ndim - 2)
    for size, n in zip(a.shape[-2:], shape, strict=True):
        d = n - size
        pads.append(((d + 1) // 2, d - (d + 1) // 2))
    return np.pad(a, pads)


def difference_kernels(
    psfs: np.ndarray, model_psf: np.ndarray, padding: int = KERNEL_FFT_PADDING
) -> np.ndarray:
    """Kernels ``K_b`` with ``psfs[b] ~= K_b * model_psf`` (Fourier-space ratio,
    docs/spec/multi_band.md 1.4).

    Parameters
    ----------
    psfs : (B, hp, wp) array
        Observed PSFs, odd-sized.
    model_psf : (hm, wm) array
        Model PSF.
    padding : int
        Extra FFT padding.

    Returns
    -------
    numpy.ndarray
        ``(B, hp, wp)`` float64 kernels (not re-normalised; they sum to ~1).
    """
    psfs = np.asarray(psfs, dtype=np.float64)
    model_psf = np.asarray(model_psf, dtype=np.float64)
    hp, wp = psfs.shape[-2:]
    shape = tuple(
        scipy.fft.next_fast_len(p + m + padding, real=True)
        for p, m in zip((hp, wp), model_psf.shape, strict=True)
    )
    axes = (-2, -1)
    f_obs = scipy.fft.rfft2(scipy.fft.ifftshift(_centered_pad(psfs, shape), axes=axes))
    f_mod = scipy.fft.rfft2(scipy.fft.ifftshift(_centered_pad(model_psf, shape), axes=axes))
    zero = f_mod == 0
    ratio = f_obs / np.where(zero, 1.0, f_mod)
    ratio[..., zero] = 0.0
    kern = scipy.fft.fftshift(scipy.fft.irfft2(ratio, s=shape), axes=axes)
    y0 = (shape[0] - hp + 1) // 2
    x0 = (shape[1] - wp + 1) // 2
    return np.ascontiguousarray(kern[..., y0 : y0 + hp, x0 : x0 + wp])


def effective_area(psf: np.ndarray) -> np.ndarray:
    """Noise-equivalent area ``1 / sum(p^2)`` (pixels) of unit-sum PSF(s): small = narrow.

    Unlike second moments it is dominated by the core, so extended wings of real PSFs do not
    hide a core narrower than the model PSF.
    """
    p = np.asarray(psf, dtype=np.float64)
    p = p / p.sum(axis=(-2, -1), keepdims=True)
    return 1.0 / np.sum(p * p, axis=(-2, -1))


class Observation:
    """Multi-band images with their weights, PSFs and the convolution to the observed seeing.

    Parameters
    ----------
    images : (B, H, W) array_like
        Background-subtracted images.
    variance : (B, H, W) array_like
        Per-pixel variance. A pixel whose variance is not finite and positive (zero inverse
        variance) has no data.
    psfs : (B, hp, wp) array_like
        Observed PSF per band, odd-sized, each normalised to unit sum.
    bands : sequence of str, optional
        Band names, default ``("0", "1", ...)``.
    weights : (B, H, W) array_like, optional
        Finite, non-negative weights; default ``1 / variance``.
    mask : (B, H, W) or (H, W) array_like, optional
        bool (True = bad pixel) or integer bit planes (non-zero = bad); bad pixels have no
        data.
    model_psf_sigma : float or None
        Sigma (pixels) of the integrated circular Gaussian model PSF on a 15 x 15 grid. It must
        be narrower than every observed PSF. ``None``: the data are PSF-matched, models are not
        convolved (the difference kernels are unit 1 x 1 kernels).
    dtype : {None, numpy.float32, numpy.float64}
        Working precision; default float32 when ``images`` is float32, else float64.
    noise_rms : (B,) array_like, optional
        Per-band background RMS; default the mean of ``sqrt(variance)`` over the pixels with
        data.

    Attributes
    ----------
    images, variance, weights : (B, H, W) numpy.ndarray
        Images, variance and weights; 0, 0 and 0 at the pixels without data.
    psfs : (B, hp, wp) numpy.ndarray
        Observed PSFs.
    bands : tuple of str
        Band names.
    model_psf : (hm, wm) numpy.ndarray or None
        Model PSF.
    model_psf_sigma : float or None
        Its sigma (None for PSF-matched data).
    noise_rms : (B,) numpy.ndarray
        Background RMS per band.
    diff_kernels : (B, hp, wp) numpy.ndarray
        Difference kernels ``K_b`` with ``psfs[b] ~= K_b * model_psf``.
    convolver : cdeblend.convolution.Convolver
        The convolution engine of those kernels on this observation's frame (kernel
        transforms, work buffers, cost model; shared transforms with cut-outs).
    shape : tuple of int
        ``(B, H, W)``.
    dtype : numpy.dtype
        Working dtype.
    origin : tuple of int
        Position of pixel (0, 0) in the frame this observation was cut from ((0, 0) unless it
        came from :meth:`cutout`).

    Notes
    -----
    No data (the package's one rule, :func:`cdeblend._validate.no_data_pixels`): a pixel
    with a non-finite value, a variance that is not finite and positive, or a set mask has
    weight 0 in every fit, gives no flux to any source (its conserved value is 0) and is
    left out of the noise estimate. It is never an error.

    The convolution methods reuse per-thread work buffers, so one Observation may serve several
    threads; cut-outs share the PSFs, kernels and cached kernel transforms of their parent.
    """

    def __init__(
        self,
        images: Any,
        variance: Any,
        psfs: Any,
        bands: Sequence[str] | None = None,
        weights: Any = None,
        mask: Any = None,
        model_psf_sigma: float | None = MODEL_PSF_SIGMA,
        dtype: Any = None,
        noise_rms: Any = None,
    ) -> None:
        if dtype is not None:
            dtype = np.dtype(dtype)
            if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
                raise TypeError(f"dtype must be numpy.float32 or numpy.float64, got {dtype}")
        images = as_float_array(images, "images", 3, dtype=dtype, finite=False)
        if not images.flags.writeable:
            # the kernels take the images as a (writable) typed memoryview even where they
            # only read them (Observation.loss passes them as an unused output buffer)
            images = images.copy()
        dtype = images.dtype
        nb, height, width = images.shape
        variance = as_float_array(variance, "variance", 3, dtype=dtype, finite=False)
        check_same_shape(images, "images", variance, "variance")
        psfs = as_float_array(psfs, "psfs", 3, dtype=np.float64)
        if psfs.shape[0] != nb:
            raise ValueError(
                f"psfs has {psfs.shape[0]} band(s) but images has {nb} (one PSF per band)"
            )
        check_psf(psfs, "psfs")
        self.bands = self._check_bands(bands, nb)
        # the package's one no-data rule (see _validate.no_data_pixels): value 0, variance 0
        # and weight 0 wherever a pixel has no data
        mask = as_no_data_mask(mask, "mask", (nb, height, width))
        no_data = no_data_pixels(images, variance, mask)
        images, variance = clear_no_data(images, variance, no_data)
        weights = self._check_weights(weights, images, variance, no_data)
        noise = self._check_noise_rms(noise_rms, variance, no_data)
        model_psf, sigma, kernels = self._model_psf_and_kernels(psfs, model_psf_sigma)

        self.images = images
        self.variance = variance
        self.weights = np.ascontiguousarray(weights, dtype=dtype)
        self.psfs = psfs.astype(dtype)
        self.model_psf = None if model_psf is None else model_psf.astype(dtype)
        self.model_psf_sigma = sigma
        self.noise_rms = noise.astype(dtype)
        self.origin = (0, 0)
        self.convolver = Convolver(kernels.astype(dtype), (height, width))

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _check_bands(bands: Sequence[str] | None, nb: int) -> tuple[str, ...]:
        if bands is None:
            return tuple(str(i) for i in range(nb))
        if isinstance(bands, str):
            if len(bands) != nb:
                raise ValueError(f"bands has {len(bands)} name(s) but images has {nb} band(s)")
            bands = list(bands)
        names = tuple(str(b) for b in bands)
        if len(names) != nb:
            raise ValueError(f"bands has {len(names)} name(s) but images has {nb} band(s)")
        if len(set(names)) != nb:
            raise ValueError(f"bands has duplicate names: {names}")
        return names

    @staticmethod
    def _check_weights(
        weights: Any, images: np.ndarray, variance: np.ndarray, no_data: np.ndarray
    ) -> np.ndarray:
        """The user's weights checked (0 without data), or ``1 / variance`` (0 where infinite)."""
        if weights is None:
            with np.errstate(divide="ignore", invalid="ignore"):
                weights = 1.0 / variance
            weights[~np.isfinite(weights)] = 0
            return weights
        weights = as_float_array(weights, "weights", 3, dtype=images.dtype, finite=False)
        check_same_shape(images, "images", weights, "weights")
        if not np.all(np.isfinite(weights)):
            raise ValueError("weights has NaN or infinite values; use 0 for unusable pixels")
        if np.any(weights < 0):
            raise ValueError("weights has negative values; weights must be >= 0")
        weights = weights.copy()  # never modify the caller's array
        weights[no_data] = 0
        return weights

    @staticmethod
    def _check_noise_rms(noise_rms: Any, variance: np.ndarray, no_data: np.ndarray) -> np.ndarray:
        """The user's per-band noise RMS checked, or the mean of ``sqrt(variance)`` over the
        pixels with data (float64)."""
        nb = variance.shape[0]
        if noise_rms is None:
            noise = np.empty(nb, dtype=np.float64)
            # the noise of the pixels with data (a no-data pixel's variance 0 is not noise)
            noisy = variance if not no_data.any() else np.where(no_data, np.nan, variance)
            for b in range(nb):
                noise[b], count = mean_sqrt(noisy[b])
                if count == 0:
                    raise ValueError(
                        f"variance[{b}] has no pixel with data; cannot estimate noise_rms"
                    )
            return noise
        noise = as_float_array(noise_rms, "noise_rms", 1, dtype=np.float64)
        if noise.shape != (nb,):
            raise ValueError(f"noise_rms must have shape ({nb},), got {noise.shape}")
        if np.any(noise < 0):
            raise ValueError("noise_rms must be >= 0")
        return noise

    def _model_psf_and_kernels(
        self, psfs: np.ndarray, model_psf_sigma: float | None
    ) -> tuple[np.ndarray | None, float | None, np.ndarray]:
        """The model PSF, its sigma and the float64 difference kernels (unit 1 x 1 kernels
        and no model PSF for PSF-matched data, ``model_psf_sigma=None``)."""
        if model_psf_sigma is None:
            return None, None, np.ones((psfs.shape[0], 1, 1), dtype=np.float64)
        sigma = float(model_psf_sigma)
        if not (math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"model_psf_sigma must be a positive number, got {model_psf_sigma}")
        model_psf = integrated_gaussian_psf(sigma)
        self._check_widths(psfs, model_psf, sigma)
        return model_psf, sigma, difference_kernels(psfs, model_psf)

    def _check_widths(self, psfs: np.ndarray, model_psf: np.ndarray, sigma: float) -> None:
        """Reject observed PSFs narrower than the model PSF (the fit could not represent them)."""
        area_obs = effective_area(psfs)
        area_model = float(effective_area(model_psf))
        narrow = np.flatnonzero(area_obs < area_model * (1 - 1e-3))  # equal PSFs are fine
        if narrow.size:
            b = int(narrow[np.argmin(area_obs[narrow])])
            # sigma of a pixel-integrated Gaussian with the same effective area, with a margin
            sig_obs = math.sqrt(max(area_obs[b] / (4 * math.pi) - 1 / 12, 0.0))
            suggest = math.floor(0.7 * sig_obs * 20) / 20
            raise ValueError(
                f"psfs[{b}] (band {self.bands[b]!r}) is narrower than the model PSF "
                f"(effective area {area_obs[b]:.3g} px^2 < {area_model:.3g} px^2 for "
                f"model_psf_sigma={sigma:g}): every model would collapse. Use a smaller "
                f"model_psf_sigma (about {suggest:g} or less)"
                + ("" if suggest > 0 else ", or model_psf_sigma=None for PSF-matched data")
            )

    def with_arrays(
        self,
        images: np.ndarray,
        variance: np.ndarray,
        weights: np.ndarray,
        noise_rms: np.ndarray | None = None,
        origin: tuple[int, int] = (0, 0),
    ) -> Observation:
        """A new Observation of other arrays sharing this one's bands, PSFs, model PSF,
        difference kernels, cached kernel transforms and convolution-mode choices.

        No checks: ``images``, ``variance`` and ``weights`` must be C-contiguous (B, h, w)
        arrays of this observation's dtype that the caller validated (finite images wherever
        the weight is non-zero, variance >= 0, finite weights >= 0), as the catalog driver
        does once for a whole image. ``noise_rms`` defaults to this observation's.
        """
        new = object.__new__(Observation)
        new.images = images
        new.variance = variance
        new.weights = weights
        new.psfs = self.psfs
        new.bands = self.bands
        new.model_psf = self.model_psf
        new.model_psf_sigma = self.model_psf_sigma
        new.noise_rms = self.noise_rms if noise_rms is None else noise_rms
        new.origin = origin
        new.convolver = self.convolver.on_frame(images.shape[1:])
        return new

    # ------------------------------------------------------------------ basic properties
    @property
    def shape(self) -> tuple[int, int, int]:
        """``(B, H, W)``."""
        return self.images.shape  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        """Working dtype (float32 or float64)."""
        return self.images.dtype

    @property
    def bbox(self) -> Box:
        """``(y0, x0, H, W)``: this observation's box in the frame it was cut from."""
        return (self.origin[0], self.origin[1], self.shape[1], self.shape[2])

    @property
    def diff_kernels(self) -> np.ndarray:
        """(B, hp, wp) difference kernels ``K_b`` with ``psfs[b] ~= K_b * model_psf``."""
        return self.convolver.kernels

    @property
    def kernel_radius(self) -> tuple[int, int]:
        """Half-size ``(ry, rx)`` of the difference kernels."""
        return self.convolver.kernel_radius

    def __repr__(self) -> str:
        b, h, w = self.shape
        return (
            f"Observation(bands={self.bands}, shape=({b}, {h}, {w}), psf={self.psfs.shape[1:]}, "
            f"dtype={self.dtype.name})"
        )

    def cutout(self, box: Any) -> Observation:
        """Return a new Observation on ``box`` (copies of the arrays, shared PSFs and kernels).

        The cut-out keeps this observation's ``noise_rms``, PSFs, difference kernels and cached
        kernel transforms, so cutting many blends from one coadd is cheap.

        Parameters
        ----------
        box : (y0, x0, height, width)
            Must lie inside this observation and be non-empty.
        """
        y0, x0, h, w = as_box(box, allow_empty=True)
        _, height, width = self.shape
        if h == 0 or w == 0 or y0 < 0 or x0 < 0 or y0 + h > height or x0 + w > width:
            raise ValueError(
                f"box {(y0, x0, h, w)} must be non-empty and inside the image of shape "
                f"({height}, {width})"
            )
        sl = (slice(None), slice(y0, y0 + h), slice(x0, x0 + w))
        return self.with_arrays(
            self.images[sl].copy(),
            self.variance[sl].copy(),
            self.weights[sl].copy(),
            origin=(self.origin[0] + y0, self.origin[1] + x0),
        )

    def point_products(self, model_conv: np.ndarray, peaks: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(rp, pp)``, (N, B): a point source's weighted least-squares products at each
        peak in the residual ``images - model_conv`` (:func:`cdeblend._adam_cy.
        point_source_products`): its amplitude is ``rp / pp``, its S/N
        ``sum_b rp / sqrt(sum_b pp)``."""
        peaks = np.ascontiguousarray(peaks, dtype=np.int64)
        pp = np.empty((len(peaks), self.images.shape[0]))
        rp = np.empty_like(pp)
        psfs = np.ascontiguousarray(self.psfs, dtype=np.float64)
        point_source_products(self.weights, self.images, model_conv, psfs, peaks, pp, rp)
        return rp, pp

    # ------------------------------------------------------------------ convolution
    def convolve(self, model: Any, out: np.ndarray | None = None, mode: str = "auto") -> np.ndarray:
        """Convolve a model-space cube to the observed seeing (same size, zero boundary).

        Parameters
        ----------
        model : (B, h, w) or (h, w) array_like
            Model in the model-PSF frame; a 2-D (or single-plane) input is convolved with every
            band's kernel. Any ``h, w`` (usually the observation's).
        out : (B, h, w) numpy.ndarray, optional
            Output buffer of the observation's dtype.
        mode : {"auto", "fft", "real"}
            FFT or direct convolution; "auto" picks the cheaper by a cost model.

        Returns
        -------
        numpy.ndarray
            ``(B, h, w)`` convolved model.
        """
        return self.convolver.convolve(model, out, False, mode, "model")

    def convolve_adjoint(
        self, residual: Any, out: np.ndarray | None = None, mode: str = "auto"
    ) -> np.ndarray:
        """Apply the adjoint of :meth:`convolve` (convolution with the flipped kernels).

        Parameters
        ----------
        residual : (B, h, w) array_like
            Data-space array (e.g. the weighted residual).
        out : (B, h, w) numpy.ndarray, optional
            Output buffer.
        mode : {"auto", "fft", "real"}
            As in :meth:`convolve`.
        """
        return self.convolver.convolve(residual, out, True, mode, "residual")

    def loss(self, model: Any, mode: str = "auto") -> float:
        """Return ``0.5 * sum(weights * (images - convolve(model))^2)`` (float64 accumulation)."""
        x = self.convolver.check_input(model, "model")
        if x.shape != self.shape:
            raise ValueError(f"model must have shape {self.shape}, got {x.shape}")
        conv, _ = self.convolver.buffers(self.shape)
        self.convolve(x, out=conv, mode=mode)
        return float(weighted_residual(conv, self.images, self.weights, self.images, False))

    def loss_and_gradient(self, model: Any, grad_out: np.ndarray, mode: str = "auto") -> float:
        """Loss of a model and its gradient with respect to the model (one fit iteration).

        Computes ``C = convolve(model)``, the loss ``0.5 * sum(w (images - C)^2)``, the weighted
        residual ``R = w (C - images)`` and ``grad_out[:] = convolve_adjoint(R)``. Work buffers
        are reused, so repeated calls with the same shape allocate no large arrays.

        Parameters
        ----------
        model : (B, H, W) numpy.ndarray
            The sum of all components in the model frame, of the observation's dtype.
        grad_out : (B, H, W) numpy.ndarray
            Receives ``dL/dmodel``.
        mode : {"auto", "fft", "real"}
            As in :meth:`convolve`.

        Returns
        -------
        float
            The loss.
        """
        x = self.convolver.check_input(model, "model")
        if x.shape != self.shape:
            raise ValueError(f"model must have shape {self.shape}, got {x.shape}")
        grad_out = self.convolver.check_output(grad_out, self.shape, "grad_out")
        conv, resid = self.convolver.buffers(self.shape)
        self.convolve(x, out=conv, mode=mode)
        loss = weighted_residual(conv, self.images, self.weights, resid, True)
        self.convolve_adjoint(resid, out=grad_out, mode=mode)
        return float(loss)

    def convolve_box(self, array: Any, box: Any, mode: str = "auto") -> tuple[np.ndarray, Box]:
        """Convolve a morphology (or cube) lying on ``box``, on that box grown by the kernel.

        The result equals the full-frame convolution of the array inserted into a zero frame,
        restricted to the grown box (which is clipped to the frame; pixels of ``array`` outside
        the frame are dropped first).

        Parameters
        ----------
        array : (h, w) or (B, h, w) array_like
            Values on ``box``; a 2-D morphology is convolved with every band's kernel.
        box : (y0, x0, h, w)
            Where ``array`` lies in this observation's frame.
        mode : {"auto", "fft", "real"}
            As in :meth:`convolve`.

        Returns
        -------
        conv : (B, h', w') numpy.ndarray
            Convolved array on ``grown_box``.
        grown_box : tuple of int
            ``(y0', x0', h', w')``: ``box`` clipped to the frame, grown by the kernel half-size
            and clipped again.
        """
        return self.convolver.convolve_box(array, box, mode)
