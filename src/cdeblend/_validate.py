"""Input validation shared by every public entry point.

Every array a user hands to cdeblend passes through these helpers once, at the boundary, so
that the Cython kernels behind them can trust shapes, dtypes, contiguity and finiteness.
Each helper raises a ``TypeError`` or ``ValueError`` that names the offending argument.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "as_float_array",
    "as_no_data_mask",
    "as_peaks",
    "check_psf",
    "check_same_shape",
    "clear_no_data",
    "no_data_pixels",
]

#: Relative tolerance on the sum of a PSF image (PSFs must be normalised to unit sum).
PSF_SUM_RTOL = 1e-3


def as_float_array(
    value: Any,
    name: str,
    ndim: int | tuple[int, ...],
    dtype: type | np.dtype | None = None,
    finite: bool = True,
    allow_empty: bool = False,
) -> np.ndarray:
    """Return ``value`` as a C-contiguous, native-endian float array.

    Parameters
    ----------
    value : array_like
        The user's array.
    name : str
        Argument name used in error messages.
    ndim : int or tuple of int
        Allowed number(s) of dimensions.
    dtype : dtype, optional
        Output dtype. By default float32 inputs stay float32 and everything else becomes
        float64.
    finite : bool
        Reject NaN and infinite values (for arrays where they cannot mean "no data", such
        as PSFs; images and variance are read with ``finite=False``).
    allow_empty : bool
        Accept arrays with a zero-length axis.

    Returns
    -------
    numpy.ndarray
        A contiguous copy or view of ``value``.

    Raises
    ------
    TypeError
        If ``value`` is not numeric (strings, objects, complex numbers, booleans).
    ValueError
        On a wrong number of dimensions, an empty array or non-finite values.
    """
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    ndims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if arr.ndim not in ndims:
        want = " or ".join(str(n) for n in ndims)
        raise ValueError(f"{name} must have {want} dimensions, got shape {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if dtype is None:
        dtype = np.float32 if arr.dtype == np.float32 else np.float64
    out = np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("="))
    if finite and not np.all(np.isfinite(out)):
        bad = int(np.count_nonzero(~np.isfinite(out)))
        # (images and variance are read with finite=False: there a NaN means no data)
        raise ValueError(f"{name} has {bad} NaN or infinite value(s); it must be finite")
    return out


def check_same_shape(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"{b_name} has shape {b.shape} but {a_name} has shape {a.shape}")


def as_no_data_mask(
    mask: Any,
    name: str,
    shape: tuple[int, ...],
    bad_bits: int | None = None,
) -> np.ndarray | None:
    """Return a user's mask as a bool array, True = no data (the package's one convention).

    Parameters
    ----------
    mask : array_like or None
        ``bool`` (True = bad pixel) or integer bit planes. Integer masks mark a pixel bad
        where any of ``bad_bits`` is set, or, without ``bad_bits``, where the value is
        non-zero.
    name : str
        Argument name used in error messages.
    shape : tuple of int
        (H, W) or (B, H, W) of the images; the mask may have either shape.
    bad_bits : int, optional
        Bit selection of an integer mask (e.g. ``1 << 8`` for an LSST ``NO_DATA`` plane).

    Returns
    -------
    numpy.ndarray or None
        A new bool array of the mask's shape (None for no mask).

    Raises
    ------
    TypeError
        If the mask is neither bool nor integer.
    ValueError
        If its shape is neither (H, W) nor (B, H, W).
    """
    if mask is None:
        return None
    arr = np.asarray(mask)
    if arr.dtype.kind not in "biu":
        raise TypeError(
            f"{name} must be bool (True = bad pixel) or integer bit planes (non-zero = bad), "
            f"got dtype {arr.dtype}"
        )
    shapes = {tuple(shape[-2:]), tuple(shape)}
    if arr.shape not in shapes:
        want = " or ".join(str(s) for s in sorted(shapes, key=len))
        raise ValueError(f"{name} has shape {arr.shape}, the images need {want}")
    if arr.dtype.kind == "b":
        return arr.copy()
    if bad_bits is None:
        return arr != 0
    # as unsigned bits of the same width: the selection may hold bits the type lacks (a
    # uint8 mask has no bit 8) or its sign bit
    bits = arr.view(f"u{arr.dtype.itemsize}")
    return (bits & bits.dtype.type(bad_bits & ((1 << 8 * arr.dtype.itemsize) - 1))) != 0


def no_data_pixels(
    images: np.ndarray, variance: np.ndarray | None = None, mask: np.ndarray | None = None
) -> np.ndarray:
    """The no-data pixels: a non-finite value, a non-finite or non-positive variance (zero
    inverse variance) or a set mask.

    Parameters
    ----------
    images : numpy.ndarray
        (H, W) or (B, H, W), any float values.
    variance : numpy.ndarray, optional
        Same shape as ``images``.
    mask : numpy.ndarray, optional
        bool, True = bad (from :func:`as_no_data_mask`), (H, W) or of the images' shape.

    Returns
    -------
    numpy.ndarray
        bool array of the images' shape.
    """
    bad = ~np.isfinite(images)
    if variance is not None:
        with np.errstate(invalid="ignore"):
            # NaN > 0 is False: NaN, -inf and <= 0 are no data; +inf (zero weight) too
            bad |= ~((variance > 0) & (variance < np.inf))
    if mask is not None:
        bad |= np.broadcast_to(mask, bad.shape)
    return bad


def clear_no_data(
    images: np.ndarray, variance: np.ndarray | None, no_data: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Images and variance with value 0 and variance 0 at the ``no_data`` pixels.

    The arrays are returned unchanged (the same objects) when no pixel lacks data, so that
    clean data take exactly the path they took before; otherwise copies are changed, never
    the caller's arrays. A zero variance is the package's mark of a pixel without data:
    zero weight in every fit and no contribution to noise or S/N sums.
    """
    if not no_data.any():
        return images, variance
    images = np.where(no_data, images.dtype.type(0), images)
    if variance is not None:
        variance = np.where(no_data, variance.dtype.type(0), variance)
    return images, variance


def check_psf(psf: np.ndarray, name: str = "psf", rtol: float = PSF_SUM_RTOL) -> None:
    """Check that a PSF image (or a stack of them) is odd-sized, finite and unit-sum.

    Parameters
    ----------
    psf : numpy.ndarray
        A (h, w) PSF or a (B, h, w) stack, already converted by :func:`as_float_array`.
    name : str
        Argument name used in error messages.
    rtol : float
        Allowed relative deviation of each PSF's sum from 1.
    """
    h, w = psf.shape[-2:]
    if h % 2 == 0 or w % 2 == 0:
        raise ValueError(f"{name} must have odd height and width (centred PSF), got {h} x {w}")
    sums = psf.reshape(-1, h * w).sum(axis=1)
    for i, s in enumerate(np.atleast_1d(sums)):
        if not abs(s - 1.0) <= rtol:
            where = f"{name}[{i}]" if psf.ndim == 3 else name
            raise ValueError(f"{where} must be normalised to unit sum, its sum is {s:.6g}")


def as_peaks(peaks: Any, shape: tuple[int, int], name: str = "peaks") -> np.ndarray:
    """Return peaks as an (N, 2) int64 array of (y, x) pixels inside an image of ``shape``.

    Float positions are rounded half away from zero, as the C ``lround`` the reference uses.

    Raises
    ------
    TypeError
        If the peaks are not numeric.
    ValueError
        If the list is empty, has the wrong shape, holds non-finite values, or a peak falls
        outside the image.
    """
    arr = np.asarray(peaks)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a numeric (N, 2) array of (y, x), got dtype {arr.dtype}")
    if arr.ndim == 1 and arr.size == 2:
        arr = arr.reshape(1, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2) holding (y, x), got {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: at least one peak is needed")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds NaN or infinite positions")
    if arr.dtype.kind == "f":
        arr = np.sign(arr) * np.floor(np.abs(arr) + 0.5)
    out = arr.astype(np.int64)
    h, w = shape
    outside = (out[:, 0] < 0) | (out[:, 0] >= h) | (out[:, 1] < 0) | (out[:, 1] >= w)
    if np.any(outside):
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"{name}[{i}] = (y={out[i, 0]}, x={out[i, 1]}) lies outside the image of shape {shape}"
        )
    return out
