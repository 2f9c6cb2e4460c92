"""Multi-band observations: images, weights, PSFs and the model-to-data convolution.

An :class:`Observation` holds one blend (or a whole coadd that is later cut into blends): the
images, their variance and weights, one observed PSF per band, the narrow Gaussian *model PSF*
in which morphologies are fitted, and the per-band *difference kernels* that take a model from
the model PSF to the observed seeing. It also owns the convolution engine used by the fit:

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

All boxes are ``(y0, x0, height, width)`` in the frame of this observation's arrays.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.fft
import scipy.signal
from scipy.special import erfc

from ._convolve_cy import (
    FFTWork,
    conv_cube,
    conv_exact,
    conv_planes,
    convolve_direct,
    fast_len,
    kernel_spectrum,
    weighted_residual,
)
from ._detection_cy import mean_sqrt
from ._validate import (
    as_float_array,
    as_no_data_mask,
    check_psf,
    check_same_shape,
    clear_no_data,
    no_data_pixels,
)

__all__ = [
    "Observation",
    "difference_kernels",
    "integrated_gaussian_psf",
]

#: Width of the model-PSF grid (the reference always uses 15 x 15).
MODEL_PSF_SIZE = 15
#: Extra FFT padding used when computing the difference kernels (reference value).
KERNEL_FFT_PADDING = 3
#: Cost-model constants (seconds), measured with float32 data on an x86-64 core (see
#: bench/convolve.py): one multiply-add of the direct loop, one ``n log2 n`` unit of the 2-D
#: FFT of one real plane, and the fixed overhead of one FFT convolution; ``_ROW_COST`` is the
#: set-up of one contiguous run of the direct loop (one source row times one kernel tap).
#: Only their ratios matter.
_DIRECT_COST = 0.17e-9
_ROW_COST = 3.5e-9
_FFT_COST = 0.14e-9
_FFT_OVERHEAD = 20e-6
#: At most this many FFT grids keep their kernel transforms (LRU), within a byte budget (the
#: newest entry is always kept). A blend's SED fit and products use a grid per box size, so
#: a catalog meets many small grids; the bytes, not the count, bound the cache.
_KERNEL_CACHE_SIZE = 1024
_KERNEL_CACHE_BYTES = 128 * 2**20
#: At most this many FFT grids keep work buffers per thread (LRU).
_BUFFER_CACHE_SIZE = 6

Box = tuple[int, int, int, int]


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


def _effective_area(psf: np.ndarray) -> np.ndarray:
    """Noise-equivalent area ``1 / sum(p^2)`` (pixels) of unit-sum PSF(s): small = narrow.

    Unlike second moments it is dominated by the core, so extended wings of real PSFs do not
    hide a core narrower than the model PSF.
    """
    p = np.asarray(psf, dtype=np.float64)
    p = p / p.sum(axis=(-2, -1), keepdims=True)
    return 1.0 / np.sum(p * p, axis=(-2, -1))


def _pairs_within(n: int, lo: int, m: int, r: int) -> int:
    """Number of pairs (a, b), ``0 <= a < n``, ``lo <= b < lo + m``, with ``|a - b| <= r``:
    ``sum_b (min(n, b + r + 1) - max(0, b - r))`` in closed form (``[lo, lo + m)`` inside
    ``[0, n)``)."""

    def above(c: int) -> int:  # sum over b of max(0, b - c)
        first = max(lo, c + 1)
        last = lo + m - 1
        k = last - first + 1
        return k * (first + last - 2 * c) // 2 if k > 0 else 0

    total = m * (r + 1) + (lo + lo + m - 1) * m // 2  # sum of (b + r + 1)
    return total - above(n - r - 1) - above(r)


def _as_box(box: Any, name: str = "box") -> Box:
    """Return ``box`` as a ``(y0, x0, h, w)`` tuple of ints (tuples or Box-like objects)."""
    if hasattr(box, "origin") and hasattr(box, "shape"):
        values = (*box.origin, *box.shape)
    else:
        values = tuple(box)
    if len(values) != 4:
        raise ValueError(f"{name} must be (y0, x0, height, width), got {box!r}")
    try:
        out = tuple(int(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must hold integers (y0, x0, height, width), got {box!r}") from exc
    if out[2] < 0 or out[3] < 0:
        raise ValueError(f"{name} has a negative size: {box!r}")
    return out  # type: ignore[return-value]


def _clip_box(box: Box, shape: tuple[int, int]) -> Box:
    """Intersection of ``box`` with the frame ``[0, H) x [0, W)`` (empty -> zero size)."""
    y0, x0, h, w = box
    ya, xa = max(y0, 0), max(x0, 0)
    yb, xb = min(y0 + h, shape[0]), min(x0 + w, shape[1])
    return (ya, xa, max(yb - ya, 0), max(xb - xa, 0))


class _KernelCache:
    """Kernel transforms per FFT grid, shared by an observation and its cut-outs.

    Entry ``(n0, n1, exact)`` is :func:`~cdeblend._convolve_cy.kernel_spectrum` of the
    difference kernels on that grid, in the kernels' dtype (``exact``: float64). The adjoint
    multiplies by their conjugates, so it needs no entry of its own.
    """

    def __init__(self, kernels: np.ndarray) -> None:
        self.kernels = kernels
        self.lock = threading.Lock()
        self.entries: OrderedDict[tuple[int, int, bool], np.ndarray] = OrderedDict()
        self.nbytes = 0

    def get(self, n0: int, n1: int, exact: bool = False) -> np.ndarray:
        """Return the (B, 2, n1, n0) transforms on the ``(n0, n1)`` grid, computing them once
        (in double precision, stored in the kernels' dtype or, with ``exact``, float64)."""
        key = (n0, n1, exact or self.kernels.dtype == np.float64)
        with self.lock:
            hit = self.entries.get(key)
            if hit is not None:
                self.entries.move_to_end(key)
                return hit
        value = kernel_spectrum(
            np.ascontiguousarray(self.kernels, dtype=np.float64),
            n0,
            n1,
            np.float64 if key[2] else self.kernels.dtype,
        )
        with self.lock:
            if key not in self.entries:
                self.entries[key] = value
                self.nbytes += value.nbytes
            while len(self.entries) > 1 and (
                len(self.entries) > _KERNEL_CACHE_SIZE or self.nbytes > _KERNEL_CACHE_BYTES
            ):
                _, old = self.entries.popitem(last=False)
                self.nbytes -= old.nbytes
        return value


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
        model_psf_sigma: float | None = 0.8,
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

        if weights is None:
            with np.errstate(divide="ignore", invalid="ignore"):
                weights = 1.0 / variance
            weights[~np.isfinite(weights)] = 0
        else:
            weights = as_float_array(weights, "weights", 3, dtype=dtype, finite=False)
            check_same_shape(images, "images", weights, "weights")
            if not np.all(np.isfinite(weights)):
                raise ValueError("weights has NaN or infinite values; use 0 for unusable pixels")
            if np.any(weights < 0):
                raise ValueError("weights has negative values; weights must be >= 0")
            weights = weights.copy()  # never modify the caller's array
            weights[no_data] = 0

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
        else:
            noise = as_float_array(noise_rms, "noise_rms", 1, dtype=np.float64)
            if noise.shape != (nb,):
                raise ValueError(f"noise_rms must have shape ({nb},), got {noise.shape}")
            if np.any(noise < 0):
                raise ValueError("noise_rms must be >= 0")

        if model_psf_sigma is None:
            model_psf = None
            kernels = np.ones((nb, 1, 1), dtype=np.float64)
        else:
            sigma = float(model_psf_sigma)
            if not (math.isfinite(sigma) and sigma > 0):
                raise ValueError(
                    f"model_psf_sigma must be a positive number, got {model_psf_sigma}"
                )
            model_psf = integrated_gaussian_psf(sigma)
            self._check_widths(psfs, model_psf, sigma)
            kernels = difference_kernels(psfs, model_psf)

        self.images = images
        self.variance = variance
        self.weights = np.ascontiguousarray(weights, dtype=dtype)
        self.psfs = psfs.astype(dtype)
        self.model_psf = None if model_psf is None else model_psf.astype(dtype)
        self.model_psf_sigma = None if model_psf is None else sigma
        self.noise_rms = noise.astype(dtype)
        self.origin = (0, 0)
        self._setup_kernels(kernels.astype(dtype), None)

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

    def _check_widths(self, psfs: np.ndarray, model_psf: np.ndarray, sigma: float) -> None:
        """Reject observed PSFs narrower than the model PSF (the fit could not represent them)."""
        area_obs = _effective_area(psfs)
        area_model = float(_effective_area(model_psf))
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

    def _setup_kernels(self, kernels: np.ndarray, cache: _KernelCache | None) -> None:
        self.diff_kernels = np.ascontiguousarray(kernels)
        self._grad_kernels = np.ascontiguousarray(kernels[:, ::-1, ::-1])
        self._kernel_cache = cache if cache is not None else _KernelCache(self.diff_kernels)
        self._local = threading.local()
        self._modes: dict[tuple, str] = {}

    def _on_arrays(
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
        new.diff_kernels = self.diff_kernels
        new._grad_kernels = self._grad_kernels
        new._kernel_cache = self._kernel_cache
        new._local = threading.local()
        new._modes = self._modes  # keyed by shapes only: valid for any frame
        return new

    def __getstate__(self) -> dict:
        # thread-local buffers and the cache's lock do not pickle (process pools, dask);
        # the kernel transforms are recomputed on the other side when needed
        state = self.__dict__.copy()
        del state["_local"]
        state["_kernel_cache"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._kernel_cache = _KernelCache(self.diff_kernels)
        self._local = threading.local()

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
    def kernel_radius(self) -> tuple[int, int]:
        """Half-size ``(ry, rx)`` of the difference kernels."""
        return self.diff_kernels.shape[1] // 2, self.diff_kernels.shape[2] // 2

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
        y0, x0, h, w = _as_box(box)
        _, height, width = self.shape
        if h == 0 or w == 0 or y0 < 0 or x0 < 0 or y0 + h > height or x0 + w > width:
            raise ValueError(
                f"box {(y0, x0, h, w)} must be non-empty and inside the image of shape "
                f"({height}, {width})"
            )
        sl = (slice(None), slice(y0, y0 + h), slice(x0, x0 + w))
        return self._on_arrays(
            self.images[sl].copy(),
            self.variance[sl].copy(),
            self.weights[sl].copy(),
            origin=(self.origin[0] + y0, self.origin[1] + x0),
        )

    # ------------------------------------------------------------------ convolution engine
    def _fft_shape(self, h: int, w: int) -> tuple[int, int]:
        # n >= size + kernel half-size is enough for an alias-free same-size convolution
        ry, rx = self.kernel_radius
        return fast_len(h + ry), fast_len(w + rx)

    def _pick_mode(
        self, mode: str, nb_in: int, h: int, w: int, src: tuple[int, int] | None = None
    ) -> str:
        """Resolve ``mode`` for an ``(h, w)`` output grid (source ``src``, default the same)."""
        if mode != "auto":
            if mode not in ("fft", "real"):
                raise ValueError(f"mode must be 'auto', 'fft' or 'real', got {mode!r}")
            return mode
        key = (nb_in, h, w, src)
        picked = self._modes.get(key)
        if picked is None:
            picked = self._modes[key] = self._cheaper_mode(nb_in, h, w, src)
        return picked

    def _cheaper_mode(self, nb_in: int, h: int, w: int, src: tuple[int, int] | None) -> str:
        nb, kh, kw = self.diff_kernels.shape
        if kh * kw == 1:
            return "real"
        # multiply-adds of the direct loop: for each tap, the overlap of the shifted source
        # with the output grid (the source sits centred in the output for convolve_box)
        sh, sw = src if src is not None else (h, w)
        taps_y = _pairs_within(h, (h - sh) // 2, sh, kh // 2)
        taps_x = _pairs_within(w, (w - sw) // 2, sw, kw // 2)
        direct = nb * taps_y * (_DIRECT_COST * taps_x + _ROW_COST * kw)
        n0, n1 = self._fft_shape(h, w)
        n = n0 * n1
        fft = _FFT_OVERHEAD + _FFT_COST * (nb_in + nb) * n * math.log2(n)
        return "real" if direct < fft else "fft"

    def _work(self, n0: int, n1: int, width: int, double: bool | None = None) -> FFTWork:
        """This thread's FFT plans and buffers for the ``(n0, n1)`` grid, for inputs and
        outputs up to ``width`` columns (a cached one at least as wide is reused), in the
        working precision (or double with ``double=True``)."""
        if double is None:
            double = self.dtype == np.float64
        cache = getattr(self._local, "work", None)
        if cache is None:
            cache = self._local.work = OrderedDict()
        key = (n0, n1, double)
        work = cache.get(key)
        if work is None or work.width < width:
            work = cache[key] = FFTWork(n0, n1, width, double)
            while len(cache) > _BUFFER_CACHE_SIZE:
                cache.popitem(last=False)
        cache.move_to_end(key)
        return work

    def _buffers(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Two work arrays of ``shape`` and the working dtype, per thread (reused)."""
        cache = getattr(self._local, "arrays", None)
        if cache is None:
            cache = self._local.arrays = OrderedDict()
        pair = cache.get(shape)
        if pair is None:
            pair = cache[shape] = (np.empty(shape, self.dtype), np.empty(shape, self.dtype))
            while len(cache) > _BUFFER_CACHE_SIZE:
                cache.popitem(last=False)
        cache.move_to_end(shape)
        return pair

    def _conv_same(self, x: np.ndarray, out: np.ndarray, adjoint: bool) -> None:
        """FFT same-size convolution of the C-contiguous ``x`` (B or 1, h, w) into ``out``."""
        _, h, w = x.shape
        n0, n1 = self._fft_shape(h, w)
        conv_cube(self._work(n0, n1, w), x, 0, 0, self._kernel_cache.get(n0, n1), out, adjoint)

    def _check_model(self, model: Any, name: str, allow_2d: bool = False) -> np.ndarray:
        arr = np.asarray(model)
        nb = self.shape[0]
        if arr.ndim == 2 and allow_2d:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[0] not in ((nb, 1) if allow_2d else (nb,)):
            raise ValueError(f"{name} must have shape ({nb}, h, w), got {np.shape(model)}")
        if arr.dtype != self.dtype or not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr, dtype=self.dtype)
        return arr

    def _check_out(self, out: np.ndarray | None, shape: tuple[int, ...], name: str) -> np.ndarray:
        if out is None:
            return np.empty(shape, dtype=self.dtype)
        if not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != self.dtype:
            raise ValueError(f"{name} must be a {self.dtype.name} array of shape {shape}")
        if not out.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
        return out

    def _convolve(self, model: Any, out: Any, adjoint: bool, mode: str, name: str) -> np.ndarray:
        x = self._check_model(model, name, allow_2d=not adjoint)
        nb_in, h, w = x.shape
        out = self._check_out(out, (self.shape[0], h, w), "out")
        if self._pick_mode(mode, nb_in, h, w) == "real":
            if np.may_share_memory(x, out):  # the direct loop accumulates into out
                x = x.copy()
            out.fill(0)
            convolve_direct(x, self._grad_kernels if adjoint else self.diff_kernels, out, 0, 0)
        else:
            if np.may_share_memory(x, out):
                x = x.copy()
            self._conv_same(x, out, adjoint)
        return out

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
        return self._convolve(model, out, False, mode, "model")

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
        return self._convolve(residual, out, True, mode, "residual")

    def loss(self, model: Any, mode: str = "auto") -> float:
        """Return ``0.5 * sum(weights * (images - convolve(model))^2)`` (float64 accumulation)."""
        x = self._check_model(model, "model")
        if x.shape != self.shape:
            raise ValueError(f"model must have shape {self.shape}, got {x.shape}")
        _, h, w = self.shape
        conv, _ = self._buffers(self.shape)
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
        x = self._check_model(model, "model")
        if x.shape != self.shape:
            raise ValueError(f"model must have shape {self.shape}, got {x.shape}")
        grad_out = self._check_out(grad_out, self.shape, "grad_out")
        conv, resid = self._buffers(self.shape)
        self.convolve(x, out=conv, mode=mode)
        loss = weighted_residual(conv, self.images, self.weights, resid, True)
        self.convolve_adjoint(resid, out=grad_out, mode=mode)
        return float(loss)

    def _box_source(self, array: Any, box: Any) -> tuple[np.ndarray, Box, Box]:
        """Check ``array`` on ``box`` and cut it to the frame.

        Returns the part of ``array`` inside the frame (B or 1, ch, cw), that part's box, and
        the box the convolution covers: it grown by the kernel half-size, clipped again.
        """
        y0, x0, h, w = _as_box(box)
        arr = self._check_model(array, "array", allow_2d=True)
        if arr.shape[1:] != (h, w):
            raise ValueError(f"array has shape {np.shape(array)} but box has size ({h}, {w})")
        (cy0, cx0, ch, cw), grown = self._grown_box((y0, x0, h, w))
        src = arr[:, cy0 - y0 : cy0 - y0 + ch, cx0 - x0 : cx0 - x0 + cw]
        return src, (cy0, cx0, ch, cw), grown

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
        src, (cy0, cx0, ch, cw), grown = self._box_source(array, box)
        gy0, gx0, gh, gw = grown
        nb = self.shape[0]
        if ch == 0 or cw == 0 or gh == 0 or gw == 0:
            return np.zeros((nb, gh, gw), dtype=self.dtype), grown
        if self._pick_mode(mode, src.shape[0], gh, gw, (ch, cw)) == "real":
            # the direct loop only visits taps x source pixels: cost ~ B * taps * h * w
            out = np.zeros((nb, gh, gw), dtype=self.dtype)
            convolve_direct(np.ascontiguousarray(src), self.diff_kernels, out, cy0 - gy0, cx0 - gx0)
            return out, grown
        n0, n1 = self._fft_shape(gh, gw)
        out = np.empty((nb, gh, gw), dtype=self.dtype)
        conv_cube(
            self._work(n0, n1, gw),
            np.ascontiguousarray(src),
            cy0 - gy0,
            cx0 - gx0,
            self._kernel_cache.get(n0, n1),
            out,
            False,
        )
        return out, grown

    def _grown_box(self, box: Box) -> tuple[Box, Box]:
        """``box`` clipped to the frame, and that grown by the kernel half-size and clipped."""
        _, height, width = self.shape
        ry, rx = self.kernel_radius
        cy0, cx0, ch, cw = _clip_box(box, (height, width))
        grown = _clip_box((cy0 - ry, cx0 - rx, ch + 2 * ry, cw + 2 * rx), (height, width))
        return (cy0, cx0, ch, cw), grown

    def _convolve_boxes(
        self, arrays: Sequence[Any], boxes: Sequence[Any]
    ) -> list[tuple[np.ndarray, Box]]:
        """:meth:`convolve_box` of many 2-D morphologies (mode "auto"), batched (see
        :meth:`_convolve_morphs_into`); each result equals :meth:`convolve_box`'s up to
        floating-point round-off."""
        nb = self.shape[0]
        box_list = [_as_box(b) for b in boxes]
        grown = [self._grown_box(b)[1] for b in box_list]  # empty sources give zeros
        sizes = np.array([nb * g[2] * g[3] for g in grown], dtype=np.intp)
        offsets = np.zeros(len(sizes), dtype=np.intp)
        offsets[1:] = np.cumsum(sizes)[:-1]
        flat = np.zeros(int(sizes.sum()), dtype=self.dtype)
        self._convolve_morphs_into(arrays, box_list, flat, offsets)
        return [
            (flat[o : o + n].reshape(nb, g[2], g[3]), g)
            for o, n, g in zip(offsets, sizes, grown, strict=True)
        ]

    def _convolve_morphs_into(
        self, arrays: Sequence[Any], boxes: Sequence[Box], flat: np.ndarray, offsets: np.ndarray
    ) -> None:
        """Convolve 2-D morphologies, each on its box, with every band's kernel into
        ``flat``: morphology k's (B, gh, gw) convolution on its grown box (see
        :meth:`_grown_box`) starts at ``offsets[k]``; an empty grown box writes nothing.

        Morphologies whose grown boxes share an FFT grid (any grid at least half the frame's
        counts as the frame's; a larger grid is still alias-free) go to one
        :func:`~cdeblend._convolve_cy.conv_planes` call, two morphologies per transform and
        the GIL released throughout; small cases take the direct loop.
        """
        _, height, width = self.shape
        frame_grid = self._fft_shape(height, width)
        grids: dict[tuple[int, int], list] = {}
        for k, (array, box) in enumerate(zip(arrays, boxes, strict=True)):
            y0, x0, h, w = box
            arr = self._check_model(array, "array", allow_2d=True)
            if arr.shape[0] != 1 or arr.shape[1:] != (h, w):
                raise ValueError(f"array {k} has shape {np.shape(array)} but its box is ({h}, {w})")
            (cy0, cx0, ch, cw), (gy0, gx0, gh, gw) = self._grown_box(box)
            if ch == 0 or cw == 0 or gh == 0 or gw == 0:
                continue  # nothing of it in the frame: its convolution is 0
            if self._pick_mode("auto", 1, gh, gw, (ch, cw)) == "real":
                conv, _ = self.convolve_box(arr, box, mode="real")
                flat[offsets[k] : offsets[k] + conv.size] = conv.ravel()
                continue
            src = arr[0, cy0 - y0 : cy0 - y0 + ch, cx0 - x0 : cx0 - x0 + cw]
            grid = self._fft_shape(gh, gw)
            if 2 * grid[0] * grid[1] >= frame_grid[0] * frame_grid[1]:
                grid = frame_grid  # nearly the frame's: share the frame's grid (fewer calls)
            grids.setdefault(grid, []).append((k, src, cy0 - gy0, cx0 - gx0, gh, gw))
        for (n0, n1), items in grids.items():
            src_table = np.empty((len(items), 5), dtype=np.intp)
            out_table = np.empty((len(items), 3), dtype=np.intp)
            o = 0
            for j, (k, src, oy, ox, gh, gw) in enumerate(items):
                src_table[j] = (o, src.shape[0], src.shape[1], oy, ox)
                out_table[j] = (offsets[k], gh, gw)
                o += src.size
            planes = np.empty(o, dtype=self.dtype)
            for j, item in enumerate(items):
                src = item[1]
                planes[src_table[j, 0] : src_table[j, 0] + src.size].reshape(src.shape)[...] = src
            work = self._work(n0, n1, int(out_table[:, 2].max()))
            conv_planes(work, planes, src_table, self._kernel_cache.get(n0, n1), flat, out_table)

    def _convolve_box_exact(self, array: Any, box: Any) -> tuple[np.ndarray, Box]:
        """:meth:`convolve_box` for the products of a fit: exactly 0 wherever the true
        convolution is 0 (one item of :meth:`_convolve_exact_into`)."""
        src, clipped, grown = self._box_source(array, box)
        nb = self.shape[0]
        model = np.ascontiguousarray(np.broadcast_to(src, (nb,) + src.shape[1:]), dtype=np.float64)
        out = np.zeros(nb * grown[2] * grown[3], dtype=self.dtype)
        self._convolve_exact_into(
            model.ravel(), [clipped], np.zeros(1, np.intp), out, np.zeros(1, np.intp)
        )
        return out.reshape(nb, grown[2], grown[3]), grown

    def _convolve_exact_into(
        self,
        models: np.ndarray,
        boxes: Sequence[Box],
        offsets: np.ndarray,
        out: np.ndarray,
        out_offsets: np.ndarray,
    ) -> None:
        """Convolve per-source (B, h, w) models for the products of a fit: exactly 0
        wherever the true convolution is 0.

        Model k is ``models[offsets[k]:]`` (float64, C order) on ``boxes[k]``, which lies
        inside the frame; its convolution on the grown box (:meth:`_grown_box`) goes to
        ``out[out_offsets[k]:]`` (B, gh, gw) in the working precision (empty boxes write
        nothing). FFT round-off would leave tiny non-zero values over the whole grown box,
        and there they would claim flux when it is re-apportioned; the direct loop has no
        such noise but costs ``B x taps x pixels``. So the FFT runs in double precision (its
        round-off is ~1e-16 of the peak, below float32 resolution), and the result is cut to
        the support of the true convolution: the model's non-zero pixels dilated by the
        kernel's non-zero taps. Small cases, where the direct loop is cheaper, use it.
        Models sharing an FFT grid go to one Cython call, without the GIL.
        """
        nb, height, width = self.shape
        ry, rx = self.kernel_radius
        frame_grid = self._fft_shape(height, width)
        taps = self.diff_kernels != 0
        grids: dict[tuple[int, int], list] = {}
        for k, box in enumerate(boxes):
            (cy0, cx0, ch, cw), (gy0, gx0, gh, gw) = self._grown_box(box)
            if ch == 0 or cw == 0 or gh == 0 or gw == 0:
                continue
            model = models[offsets[k] : offsets[k] + nb * ch * cw].reshape(nb, ch, cw)
            dst = out[out_offsets[k] : out_offsets[k] + nb * gh * gw].reshape(nb, gh, gw)
            if self._pick_mode("auto", nb, gh, gw, (ch, cw)) == "real":
                dst[...] = 0
                convolve_direct(
                    model.astype(self.dtype), self.diff_kernels, dst, cy0 - gy0, cx0 - gx0
                )
                continue
            grid = self._fft_shape(gh, gw)
            if 2 * grid[0] * grid[1] >= frame_grid[0] * frame_grid[1]:
                grid = frame_grid  # nearly the frame's: share the frame's grid (fewer calls)
            grids.setdefault(grid, []).append((k, cy0 - gy0, cx0 - gx0, ch, cw, gh, gw))
        for (n0, n1), items in grids.items():
            src_table = np.array(
                [(offsets[k], ch, cw, oy, ox) for k, oy, ox, ch, cw, _, _ in items], dtype=np.intp
            )
            out_table = np.array(
                [(out_offsets[k], gh, gw) for k, *_, gh, gw in items], dtype=np.intp
            )
            work = self._work(n0, n1, int(out_table[:, 2].max()), double=True)
            conv_exact(
                work,
                models,
                src_table,
                self._kernel_cache.get(n0, n1, exact=True),
                out,
                out_table,
                ry,
                rx,
                bool(taps.all()),
            )
            if taps.all():
                continue
            for k, oy, ox, ch, cw, gh, gw in items:  # general kernels: count the pairs
                ind = np.zeros((nb, gh, gw))  # (non-zero pixel, non-zero tap) that overlap
                ind[:, oy : oy + ch, ox : ox + cw] = (
                    models[offsets[k] : offsets[k] + nb * ch * cw].reshape(nb, ch, cw) != 0
                )
                support = np.stack(
                    [
                        scipy.signal.fftconvolve(ind[b], taps[b].astype(np.float64), mode="same")
                        > 0.5
                        for b in range(nb)
                    ]
                )
                out[out_offsets[k] : out_offsets[k] + nb * gh * gw] *= support.ravel()
