"""Multi-band observations: images, weights, PSFs and the model-to-data convolution.

An :class:`Observation` holds one blend (or a whole coadd that is later cut into blends): the
images, their variance and weights, one observed PSF per band, the narrow Gaussian *model PSF*
in which morphologies are fitted, and the per-band *difference kernels* that take a model from
the model PSF to the observed seeing. It also owns the convolution engine used by the fit:

* :meth:`Observation.convolve` and :meth:`Observation.convolve_adjoint`: "same-size" linear
  convolution with zero boundary (and its exact adjoint, the flipped kernel), by real FFTs over
  all bands at once or by a direct Cython loop for small kernels/images, picked by a cost model;
* :meth:`Observation.loss_and_gradient`: the loss of a model and its gradient with respect to
  the model, the one call per fit iteration; it allocates nothing once warmed up (buffers are
  cached per shape and per thread);
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

from ._convolve_cy import convolve_direct, weighted_residual
from ._validate import as_float_array, check_psf, check_same_shape

try:  # optional, faster FFTs with output buffers (same math as scipy's pocketfft)
    import ducc0.fft as _ducc_fft
except ImportError:  # pragma: no cover - depends on the environment
    _ducc_fft = None

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
#: bench/convolve.py): one multiply-add of the direct loop, one ``n log2 n`` unit of a real
#: 2-D FFT of one plane (ducc0; scipy's pocketfft takes about twice as long), and the fixed
#: overhead of one FFT convolution; ``_ROW_COST`` is the set-up of one contiguous run of the
#: direct loop (one source row times one kernel tap). Only their ratios matter.
_DIRECT_COST = 0.17e-9
_ROW_COST = 3.5e-9
_FFT_COST = 0.14e-9 if _ducc_fft is not None else 0.28e-9
_FFT_OVERHEAD = 20e-6
#: At most this many padded FFT shapes keep their kernel transforms (LRU), within a byte
#: budget (the newest entry is always kept).
_KERNEL_CACHE_SIZE = 32
_KERNEL_CACHE_BYTES = 128 * 2**20
#: At most this many image shapes keep work buffers per thread (LRU).
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
        math.sqrt(math.pi) / 2.0 * sigma
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
    """Kernels ``K_b`` with ``psfs[b] ~= K_b * model_psf`` (Fourier-space ratio, spec 1.4).

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
    return np.ascontiguousarray(kern[..., y0:y0 + hp, x0:x0 + wp])


def _effective_area(psf: np.ndarray) -> np.ndarray:
    """Noise-equivalent area ``1 / sum(p^2)`` (pixels) of unit-sum PSF(s): small = narrow.

    Unlike second moments it is dominated by the core, so extended wings of real PSFs do not
    hide a core narrower than the model PSF.
    """
    p = np.asarray(psf, dtype=np.float64)
    p = p / p.sum(axis=(-2, -1), keepdims=True)
    return 1.0 / np.sum(p * p, axis=(-2, -1))


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
    """Kernel transforms per padded FFT shape, shared by an observation and its cut-outs.

    The conjugate transform (for the adjoint) is made only when first asked for, so the SED fit,
    which only convolves forward on many box shapes, stores half as much.
    """

    def __init__(self, kernels: np.ndarray) -> None:
        self.kernels = kernels
        self.lock = threading.Lock()
        self.entries: OrderedDict[tuple[int, int, bool, bool], np.ndarray] = OrderedDict()
        self.nbytes = 0

    def get(self, n0: int, n1: int, adjoint: bool = False, exact: bool = False) -> np.ndarray:
        """Return ``F(K)`` (or ``conj(F(K))``) on the ``(n0, n1)`` grid, computing it once;
        ``exact``: in double precision whatever the kernels' dtype."""
        key = (n0, n1, adjoint, exact)
        with self.lock:
            hit = self.entries.get(key)
            if hit is not None:
                self.entries.move_to_end(key)
                return hit
        if adjoint:
            value = np.conj(self.get(n0, n1, False, exact))
        else:
            k = self.kernels.astype(np.float64) if exact else self.kernels
            nb, kh, kw = k.shape
            # Put the kernel centre at index 0, folding taps modulo n: exact for the same-size
            # convolution whenever n >= image size + kernel half-size (see _fft_shape).
            iy = (np.arange(kh) - kh // 2) % n0
            ix = (np.arange(kw) - kw // 2) % n1
            padded = np.zeros((nb, n0, n1), dtype=k.dtype)
            for b in range(nb):
                np.add.at(padded[b], (iy[:, None], ix[None, :]), k[b])
            value = _kernel_transform(padded)
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


class _Workspace:
    """Preallocated arrays for one input shape ``(nb_in, h, w)`` (one per thread and shape).

    The 2-D transform is split into a real transform along y over the ``w`` non-zero columns
    and a complex one along x, and the inverse ends with a real transform along y of those
    ``w`` columns only, so the zero padding is never transformed. ducc0 writes into these
    buffers; the scipy path allocates its outputs.
    """

    __slots__ = (
        "n0", "n1", "h", "w", "pad", "half", "spec_x", "spec_b", "full", "resid", "fk", "fk_conj"
    )

    def __init__(self, nb: int, nb_in: int, h: int, w: int, n0: int, n1: int, dtype: Any) -> None:
        ctype = np.complex64 if dtype == np.float32 else np.complex128
        self.n0, self.n1, self.h, self.w = n0, n1, h, w
        # FFT input, zero outside [:h, :w]: every user of this workspace writes only there
        self.pad = np.zeros((max(nb, nb_in), n0, n1), dtype=dtype)
        self.full = np.empty((nb, n0, n1), dtype=dtype)
        self.resid = None  # direct-mode residual, allocated on first use
        self.fk = self.fk_conj = None  # kernel transforms for this grid, fetched on first use
        if _ducc_fft is not None:
            m0 = n0 // 2 + 1
            self.half = np.zeros((max(nb, nb_in), m0, n1), dtype=ctype)  # zero beyond column w
            self.spec_b = np.empty((nb, m0, n1), dtype=ctype)
            self.spec_x = self.spec_b if nb_in == nb else np.empty((nb_in, m0, n1), dtype=ctype)
        else:
            self.half = None
            self.spec_x = None
            self.spec_b = np.empty((nb, n0 // 2 + 1, n1), dtype=ctype)


class Observation:
    """Multi-band images with their weights, PSFs and the convolution to the observed seeing.

    Parameters
    ----------
    images : (B, H, W) array_like
        Background-subtracted images.
    variance : (B, H, W) array_like
        Per-pixel variance, >= 0. Zero or non-finite variance means no information (weight 0).
    psfs : (B, hp, wp) array_like
        Observed PSF per band, odd-sized, each normalised to unit sum.
    bands : sequence of str, optional
        Band names, default ``("0", "1", ...)``.
    weights : (B, H, W) array_like, optional
        Finite, non-negative weights; default ``1 / variance`` (non-finite -> 0).
    mask : (B, H, W) or (H, W) bool array_like, optional
        True for BAD pixels, which get weight 0.
    model_psf_sigma : float or None
        Sigma (pixels) of the integrated circular Gaussian model PSF on a 15 x 15 grid. It must
        be narrower than every observed PSF. ``None``: the data are PSF-matched, models are not
        convolved (the difference kernels are unit 1 x 1 kernels).
    dtype : {None, numpy.float32, numpy.float64}
        Working precision; default float32 when ``images`` is float32, else float64.
    noise_rms : (B,) array_like, optional
        Per-band background RMS; default the mean over finite pixels of ``sqrt(variance)``.

    Attributes
    ----------
    images, variance, weights : (B, H, W) numpy.ndarray
        Images (non-finite pixels of zero weight set to 0), variance, weights.
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
        negative = variance < 0
        if np.any(negative):
            raise ValueError(
                f"variance has {int(np.count_nonzero(negative))} negative value(s); variance must "
                "be >= 0 (zero or non-finite variance gives the pixel zero weight)"
            )
        psfs = as_float_array(psfs, "psfs", 3, dtype=np.float64)
        if psfs.shape[0] != nb:
            raise ValueError(
                f"psfs has {psfs.shape[0]} band(s) but images has {nb} (one PSF per band)"
            )
        check_psf(psfs, "psfs")
        self.bands = self._check_bands(bands, nb)

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
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype != np.bool_:
                raise TypeError(
                    f"mask must be a boolean array (True = bad pixel), got {mask.dtype}"
                )
            if mask.shape not in ((nb, height, width), (height, width)):
                raise ValueError(
                    f"mask must have shape {(nb, height, width)} or {(height, width)}, "
                    f"got {mask.shape}"
                )
            weights[np.broadcast_to(mask, weights.shape)] = 0

        bad = ~np.isfinite(images)
        if np.any(bad):
            unmasked = bad & (weights != 0)
            if np.any(unmasked):
                b, y, x = (int(i[0]) for i in np.nonzero(unmasked))
                raise ValueError(
                    f"images has {int(np.count_nonzero(unmasked))} NaN or infinite pixel(s) with "
                    f"non-zero weight (first: band {b}, y={y}, x={x}); mask them or give them "
                    "zero variance/weight"
                )
            images = images.copy()  # never modify the caller's array
            images[bad] = 0

        if noise_rms is None:
            noise = np.empty(nb, dtype=np.float64)
            for b in range(nb):
                vb = variance[b][np.isfinite(variance[b])]
                if vb.size == 0:
                    raise ValueError(
                        f"variance[{b}] has no finite pixel; cannot estimate noise_rms"
                    )
                noise[b] = np.mean(np.sqrt(vb.astype(np.float64)))
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
        new = object.__new__(Observation)
        new.images = self.images[sl].copy()
        new.variance = self.variance[sl].copy()
        new.weights = self.weights[sl].copy()
        new.psfs = self.psfs
        new.bands = self.bands
        new.model_psf = self.model_psf
        new.model_psf_sigma = self.model_psf_sigma
        new.noise_rms = self.noise_rms
        new.origin = (self.origin[0] + y0, self.origin[1] + x0)
        new._setup_kernels(self.diff_kernels, self._kernel_cache)
        return new

    # ------------------------------------------------------------------ convolution engine
    def _fft_shape(self, h: int, w: int) -> tuple[int, int]:
        # n >= size + kernel half-size is enough for an alias-free same-size convolution
        ry, rx = self.kernel_radius
        return (
            scipy.fft.next_fast_len(h + ry, real=True),
            scipy.fft.next_fast_len(w + rx, real=True),
        )

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
        oy, ox = (h - sh) // 2, (w - sw) // 2
        taps_y = sum(
            max(min(h, oy + sh + d) - max(0, oy + d), 0) for d in range(-(kh // 2), kh // 2 + 1)
        )
        taps_x = sum(
            max(min(w, ox + sw + d) - max(0, ox + d), 0) for d in range(-(kw // 2), kw // 2 + 1)
        )
        direct = nb * taps_y * (_DIRECT_COST * taps_x + _ROW_COST * kw)
        n0, n1 = self._fft_shape(h, w)
        n = n0 * n1
        fft = _FFT_OVERHEAD + _FFT_COST * (nb_in + nb) * n * math.log2(n)
        return "real" if direct < fft else "fft"

    def _workspace(self, nb_in: int, h: int, w: int, grid: bool = False) -> _Workspace:
        """Work buffers for ``(nb_in, h, w)`` inputs, or with ``grid`` for the FFT grid
        ``(h, w) = (n0, n1)`` (the caller then sets ``ws.h, ws.w`` and clears stale data)."""
        cache = getattr(self._local, "ws", None)
        if cache is None:
            cache = self._local.ws = OrderedDict()
        key = (nb_in, h, w, grid)
        ws = cache.get(key)
        if ws is None:
            n0, n1 = (h, w) if grid else self._fft_shape(h, w)
            ws = _Workspace(self.shape[0], nb_in, h, w, n0, n1, self.dtype)
            cache[key] = ws
            while len(cache) > _BUFFER_CACHE_SIZE:
                cache.popitem(last=False)
        else:
            cache.move_to_end(key)
        return ws

    def _fft_full(self, ws: _Workspace, nb_in: int, adjoint: bool) -> np.ndarray:
        """Convolve the planes already written into ``ws.pad[:nb_in]``; return the full result.

        The ``[:, :h, :w]`` corner of the returned ``(B, n0, n1)`` array is the same-size
        convolution of the ``(h, w)`` input.
        """
        if adjoint:
            if ws.fk_conj is None:
                ws.fk_conj = self._kernel_cache.get(ws.n0, ws.n1, True)
            fk = ws.fk_conj
        else:
            if ws.fk is None:
                ws.fk = self._kernel_cache.get(ws.n0, ws.n1, False)
            fk = ws.fk
        return _real_conv_fft(ws.pad[:nb_in], fk, ws)

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
            ws = self._workspace(nb_in, h, w)
            ws.pad[:nb_in, :h, :w] = x
            out[...] = self._fft_full(ws, nb_in, adjoint)[:, :h, :w]
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
        if self._pick_mode(mode, self.shape[0], h, w) == "real":
            conv = self.convolve(x, mode="real")
        else:
            ws = self._workspace(self.shape[0], h, w)
            ws.pad[:, :h, :w] = x
            conv = self._fft_full(ws, self.shape[0], False)  # corner [:, :h, :w] is used
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
        nb, h, w = self.shape
        if self._pick_mode(mode, nb, h, w) == "real":
            conv = self.convolve(x, mode="real")
            ws = self._workspace(nb, h, w)
            if ws.resid is None:
                ws.resid = np.empty((nb, h, w), dtype=self.dtype)
            resid = ws.resid
            loss = weighted_residual(conv, self.images, self.weights, resid, True)
            grad_out.fill(0)
            convolve_direct(resid, self._grad_kernels, grad_out, 0, 0)
            return float(loss)
        ws = self._workspace(nb, h, w)
        ws.pad[:, :h, :w] = x
        full = self._fft_full(ws, nb, False)
        # the weighted residual goes straight into the zero-padded FFT input buffer
        loss = weighted_residual(full, self.images, self.weights, ws.pad, True)
        grad_out[...] = self._fft_full(ws, nb, True)[:, :h, :w]
        return float(loss)

    def _fit_engine(self) -> tuple[np.ndarray, Any]:
        """The per-iteration loss and gradient of the fit without copies or checks.

        Returns ``(model, step)``: render the blend's model-space image into the
        ``[:, :H, :W]`` corner of ``model`` (a C-contiguous (B, >= H, >= W) work buffer: the
        zero-padded FFT input, whose outside must stay untouched), then ``step()`` returns
        ``(loss, grad)`` with ``dL/dmodel`` in the ``[:, :H, :W]`` corner of the C-contiguous
        ``grad`` (a work buffer, valid until the next call). Same math and results as
        :meth:`loss_and_gradient`.
        """
        nb, h, w = self.shape
        if self._pick_mode("auto", nb, h, w) == "real":
            model = np.empty(self.shape, dtype=self.dtype)
            grad = np.empty_like(model)

            def step_real() -> tuple[float, np.ndarray]:
                return self.loss_and_gradient(model, grad, mode="real"), grad

            return model, step_real
        ws = self._workspace(nb, h, w)
        images, weights = self.images, self.weights
        pad = ws.pad

        def step_fft() -> tuple[float, np.ndarray]:
            full = self._fft_full(ws, nb, False)
            # the weighted residual goes straight into the zero-padded FFT input buffer
            loss = weighted_residual(full, images, weights, pad, True)
            return float(loss), self._fft_full(ws, nb, True)

        return pad[:nb], step_fft

    def _box_source(self, array: Any, box: Any) -> tuple[np.ndarray, Box, Box]:
        """Check ``array`` on ``box`` and cut it to the frame.

        Returns the part of ``array`` inside the frame (B or 1, ch, cw), that part's box, and
        the box the convolution covers: it grown by the kernel half-size, clipped again.
        """
        y0, x0, h, w = _as_box(box)
        arr = self._check_model(array, "array", allow_2d=True)
        if arr.shape[1:] != (h, w):
            raise ValueError(f"array has shape {np.shape(array)} but box has size ({h}, {w})")
        _, height, width = self.shape
        cy0, cx0, ch, cw = _clip_box((y0, x0, h, w), (height, width))
        ry, rx = self.kernel_radius
        grown = _clip_box((cy0 - ry, cx0 - rx, ch + 2 * ry, cw + 2 * rx), (height, width))
        src = arr[:, cy0 - y0:cy0 - y0 + ch, cx0 - x0:cx0 - x0 + cw]
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
        if gh == 0 or gw == 0:
            return np.zeros((nb, gh, gw), dtype=self.dtype), grown
        if self._pick_mode(mode, src.shape[0], gh, gw, (ch, cw)) == "real":
            # the direct loop only visits taps x source pixels: cost ~ B * taps * h * w
            out = np.zeros((nb, gh, gw), dtype=self.dtype)
            convolve_direct(np.ascontiguousarray(src), self.diff_kernels, out,
                            cy0 - gy0, cx0 - gx0)
            return out, grown
        nb_in = src.shape[0]
        # one workspace per FFT grid (many box shapes share one), re-targeted to this box
        n0, n1 = self._fft_shape(gh, gw)
        ws = self._workspace(nb_in, n0, n1, grid=True)
        ws.h, ws.w = gh, gw
        pad = ws.pad[:nb_in]
        pad[:, :, :gw] = 0  # whole columns: an earlier box on this grid may have been taller
        if ws.half is not None:
            ws.half[:nb_in, :, gw:] = 0  # the x transform reads every column
        pad[:, cy0 - gy0:cy0 - gy0 + ch, cx0 - gx0:cx0 - gx0 + cw] = src
        out = self._fft_full(ws, nb_in, False)[:, :gh, :gw].copy()
        return out, grown


    def _convolve_boxes(self, arrays: Sequence[Any], boxes: Sequence[Any],
                        chunk: int = 8) -> list[tuple[np.ndarray, Box]]:
        """:meth:`convolve_box` of many 2-D morphologies (mode "auto"), batched.

        Morphologies whose grown boxes share an FFT grid (any grid at least half the frame's
        counts as the frame's; a larger grid is still alias-free) are transformed together, a
        chunk at a time: one call per FFT stage for the whole chunk instead of one per morphology
        (the calls, not the arithmetic, dominated for the SED fit of small blends). Each
        result equals :meth:`convolve_box`'s up to floating-point round-off.
        """
        _, height, width = self.shape
        ry, rx = self.kernel_radius
        out: list = [None] * len(arrays)
        grids: dict[tuple[int, int], list] = {}
        frame_grid = self._fft_shape(height, width)
        for i, (array, box) in enumerate(zip(arrays, boxes, strict=True)):
            y0, x0, h, w = _as_box(box)
            arr = self._check_model(array, "array", allow_2d=True)
            cy0, cx0, ch, cw = _clip_box((y0, x0, h, w), (height, width))
            grown = _clip_box((cy0 - ry, cx0 - rx, ch + 2 * ry, cw + 2 * rx), (height, width))
            gy0, gx0, gh, gw = grown
            if (arr.shape[0] != 1 or arr.shape[1:] != (h, w) or gh == 0 or gw == 0
                    or self._pick_mode("auto", 1, gh, gw, (ch, cw)) == "real"):
                out[i] = self.convolve_box(array, box)
                continue
            src = arr[0, cy0 - y0:cy0 - y0 + ch, cx0 - x0:cx0 - x0 + cw]
            grid = self._fft_shape(gh, gw)
            if 2 * grid[0] * grid[1] >= frame_grid[0] * frame_grid[1]:
                grid = frame_grid  # nearly the frame's: share the frame's grid (fewer batches)
            grids.setdefault(grid, []).append((i, src, cy0 - gy0, cx0 - gx0, grown))
        for (n0, n1), items in grids.items():
            fk = self._kernel_cache.get(n0, n1, False)
            for start in range(0, len(items), chunk):
                part = items[start:start + chunk]
                k = len(part)
                wmax = max(it[4][3] for it in part)
                pad = np.zeros((k, n0, wmax), dtype=self.dtype)
                for j, (_, src, oy, ox, _) in enumerate(part):
                    pad[j, oy:oy + src.shape[0], ox:ox + src.shape[1]] = src
                full = _batched_conv_fft(pad, fk, n0, n1)  # (k, B, n0, wmax)
                for j, (i, _, _, _, grown) in enumerate(part):
                    out[i] = (np.ascontiguousarray(full[j, :, :grown[2], :grown[3]]), grown)
        return out

    def _convolve_box_exact(self, array: Any, box: Any) -> tuple[np.ndarray, Box]:
        """:meth:`convolve_box` for the products of a fit (the per-source convolved models
        that share the flux): exactly 0 wherever the true convolution is 0.

        FFT round-off would leave tiny non-zero values over the whole grown box, and there
        they would claim flux when it is re-apportioned; the direct loop has no such noise
        but costs ``B x taps x pixels``. Here the FFT runs in double precision (its
        round-off is ~1e-16 of the peak, below float32 resolution) and the result is cut to
        the support of the true convolution: the source's non-zero pixels dilated by the
        kernel's non-zero taps. Small cases, where the direct loop is cheaper, use it.
        """
        src, (cy0, cx0, ch, cw), grown = self._box_source(array, box)
        gy0, gx0, gh, gw = grown
        ry, rx = self.kernel_radius
        nb = self.shape[0]
        if gh == 0 or gw == 0 or self._pick_mode("auto", src.shape[0], gh, gw, (ch, cw)) == "real":
            return self.convolve_box(array, box, mode="real")
        nb_in = src.shape[0]
        oy, ox = cy0 - gy0, cx0 - gx0
        n0, n1 = self._fft_shape(gh, gw)
        ws = _Workspace(nb, nb_in, gh, gw, n0, n1, np.float64)
        ws.pad[:nb_in, oy:oy + ch, ox:ox + cw] = src
        full = _real_conv_fft(ws.pad[:nb_in], self._kernel_cache.get(n0, n1, False, True), ws)
        out = full[:, :gh, :gw].astype(self.dtype)
        # support of the true convolution, per band
        nonzero = np.zeros((nb_in, gh, gw), dtype=bool)
        nonzero[:, oy:oy + ch, ox:ox + cw] = src != 0
        taps = self.diff_kernels != 0
        if taps.all():
            support = _box_dilate(nonzero, ry, rx)
        else:  # general kernel: count overlapping (non-zero pixel, non-zero tap) pairs
            ind = nonzero.astype(np.float64)
            if nb_in == 1:
                ind = np.repeat(ind, nb, axis=0)
            support = np.stack([
                scipy.signal.fftconvolve(ind[b], taps[b].astype(np.float64), mode="same") > 0.5
                for b in range(nb)
            ])
        out *= support
        return out, grown


def _box_dilate(mask: np.ndarray, ry: int, rx: int) -> np.ndarray:
    """Pixels within ``ry`` rows and ``rx`` columns of a True pixel of ``mask`` (..., h, w)
    (the support of a convolution with a kernel that has no zero tap), via prefix counts."""
    out = mask
    for axis, r in ((-1, rx), (-2, ry)):
        n = out.shape[axis]
        c = np.cumsum(out, axis=axis, dtype=np.int32)
        c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
        hi = np.minimum(np.arange(n) + r + 1, n)
        lo = np.maximum(np.arange(n) - r, 0)
        out = (np.take(c, hi, axis=axis) - np.take(c, lo, axis=axis)) > 0
    return out


def _batched_conv_fft(pad: np.ndarray, fk: np.ndarray, n0: int, n1: int) -> np.ndarray:
    """Convolve each plane of ``pad`` (k, n0, w) (zero beyond its box) with every band's
    kernel (transform ``fk`` (B, n0 // 2 + 1, n1) in the layout of
    :func:`_kernel_transform`); returns (k, B, n0, w): the split transforms of
    :func:`_real_conv_fft`, batched over the planes."""
    k, _, w = pad.shape
    nb, m0, _ = fk.shape
    ctype = np.complex64 if pad.dtype == np.float32 else np.complex128
    if _ducc_fft is not None:
        half = np.zeros((k, m0, n1), dtype=ctype)
        _ducc_fft.r2c(pad, axes=(1,), out=half[:, :, :w], nthreads=1)
        _ducc_fft.c2c(half, axes=(2,), out=half, nthreads=1)
        spec = (half[:, None] * fk[None]).reshape(k * nb, m0, n1)
        _ducc_fft.c2c(spec, axes=(2,), forward=False, inorm=2, out=spec, nthreads=1)
        full = np.empty((k * nb, n0, w), dtype=pad.dtype)
        _ducc_fft.c2r(spec[:, :, :w], axes=(1,), lastsize=n0, forward=False, inorm=2,
                      out=full, nthreads=1, allow_overwriting_input=True)
        return full.reshape(k, nb, n0, w)
    half = scipy.fft.rfft(pad, n=n0, axis=1, workers=1)
    spec = scipy.fft.fft(half, n=n1, axis=2, workers=1, overwrite_x=True)
    spec = (spec[:, None] * fk[None]).astype(ctype, copy=False).reshape(k * nb, m0, n1)
    back = scipy.fft.ifft(spec, axis=2, workers=1)
    full = scipy.fft.irfft(back[:, :, :w], n=n0, axis=1, workers=1)
    return full.reshape(k, nb, n0, w)


def _kernel_transform(padded: np.ndarray) -> np.ndarray:
    """Transform of the wrapped kernels in the layout :func:`_real_conv_fft` multiplies with:
    a real transform along y (``n0 // 2 + 1`` rows) then a complex one along x."""
    if _ducc_fft is not None:
        half = _ducc_fft.r2c(padded, axes=(1,), nthreads=1)
        return _ducc_fft.c2c(half, axes=(2,), nthreads=1)
    return scipy.fft.fft(scipy.fft.rfft(padded, axis=1, workers=1), axis=2, workers=1)


def _real_conv_fft(pad: np.ndarray, fk: np.ndarray, ws: _Workspace) -> np.ndarray:
    """Circular convolution of the padded planes ``pad`` with the kernel transform ``fk``.

    Returns a C-contiguous ``(B, n0, n1)`` (ducc0: a workspace buffer) or ``(B, n0, w)``
    (scipy: a new array) result whose ``[:, :h, :w]`` corner is the same-size convolution.
    """
    if _ducc_fft is not None:
        nb_in, w = pad.shape[0], ws.w
        half = ws.half[:nb_in]
        _ducc_fft.r2c(pad[:, :, :w], axes=(1,), out=half[:, :, :w], nthreads=1)
        _ducc_fft.c2c(half, axes=(2,), out=ws.spec_x, nthreads=1)
        np.multiply(ws.spec_x, fk, out=ws.spec_b)
        _ducc_fft.c2c(ws.spec_b, axes=(2,), forward=False, inorm=2, out=ws.spec_b, nthreads=1)
        _ducc_fft.c2r(ws.spec_b[:, :, :w], axes=(1,), lastsize=ws.n0, forward=False, inorm=2,
                      out=ws.full[:, :, :w], nthreads=1, allow_overwriting_input=True)
        return ws.full
    # same split with scipy: its implicit zero padding (n=...) replaces the padded buffer
    half = scipy.fft.rfft(pad[:, : ws.h, : ws.w], n=ws.n0, axis=1, workers=1)
    spec = scipy.fft.fft(half, n=ws.n1, axis=2, workers=1, overwrite_x=True)
    np.multiply(spec, fk, out=ws.spec_b)
    back = scipy.fft.ifft(ws.spec_b, axis=2, workers=1)
    return scipy.fft.irfft(back[:, :, : ws.w], n=ws.n0, axis=1, workers=1)
