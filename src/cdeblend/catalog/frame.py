"""The full image of a catalog run, checked once: :class:`Frame` and :func:`as_frame`.

Every parent is a view into the frame, so its checks (the package's one no-data rule among
them) run once per image, not once per parent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validate import (
    as_float_array,
    as_no_data_mask,
    check_psf,
    check_same_shape,
    clear_no_data,
    no_data_pixels,
)
from ..observation import integrated_gaussian_psf
from .config import CatalogConfig

__all__ = ["Frame", "as_frame"]


@dataclass
class Frame:
    images: np.ndarray  # (B, H, W)
    variance: np.ndarray  # (B, H, W)
    psfs: np.ndarray  # (B, hp, wp)
    bands: tuple[str, ...]
    weights: np.ndarray | None  # (B, H, W)
    mask: np.ndarray | None  # (H, W) bool, True = masked
    model_psf: np.ndarray  # (hm, wm)
    model_psf_sigma: float


def as_frame(
    obs: Any,
    variance: Any,
    psf: Any,
    mask: Any,
    bands: Sequence[str] | None,
    config: CatalogConfig,
) -> Frame:
    if isinstance(obs, (np.ndarray, list, tuple)):
        images = as_float_array(obs, "image", (2, 3), finite=False)
        if variance is None or psf is None:
            raise ValueError("variance and psf are required when an image array is passed")
        weights = None
        sigma = config.model_psf_sigma
        model_psf = None
    elif hasattr(obs, "images"):
        images = as_float_array(obs.images, "observation.images", (2, 3), finite=False)
        variance = obs.variance if variance is None else variance
        psf = getattr(obs, "psfs", None) if psf is None else psf
        if psf is None:
            raise ValueError("the observation has no psfs")
        w = getattr(obs, "weights", None)
        weights = None if w is None else as_float_array(w, "observation.weights", (2, 3))
        mask = getattr(obs, "mask", None) if mask is None else mask
        bands = getattr(obs, "bands", None) if bands is None else bands
        sigma = getattr(obs, "model_psf_sigma", config.model_psf_sigma)
        model_psf = getattr(obs, "model_psf", None)
    else:
        raise TypeError(
            "observation_or_image must be an Observation (with .images, .variance, .psfs) or "
            f"an image array, got {type(obs).__name__}"
        )
    if images.ndim == 2:
        images = images[None]
    nb = images.shape[0]
    var = as_float_array(variance, "variance", (2, 3), dtype=images.dtype, finite=False)
    var = var.reshape(images.shape) if var.size == images.size else var
    check_same_shape(images, "images", var, "variance")
    psfs = as_float_array(psf, "psf", (2, 3), dtype=images.dtype)
    if psfs.ndim == 2:
        psfs = psfs[None]
    if psfs.shape[0] != nb:
        raise ValueError(f"psf has {psfs.shape[0]} band(s), the images {nb}")
    check_psf(psfs, "psf")
    if weights is not None:
        weights = weights.reshape(images.shape) if weights.size == images.size else weights
        check_same_shape(images, "images", weights, "observation.weights")
        if np.any(weights < 0):
            raise ValueError("observation.weights has negative values; weights must be >= 0")
    # the package's one no-data rule: value 0, variance 0 and weight 0 in the band(s) where
    # a pixel has no data; the (H, W) mask marks pixels without data in any band
    bad = no_data_pixels(images, var, as_no_data_mask(mask, "mask", images.shape))
    images, var = clear_no_data(images, var, bad)
    if weights is not None and bad.any():
        weights = np.where(bad, weights.dtype.type(0), weights)
    mask2 = None if mask is None and not bad.any() else bad.any(axis=0)
    if bands is None:
        bands = tuple(str(b) for b in range(nb))
    bands = tuple(str(b) for b in bands)
    if len(bands) != nb:
        raise ValueError(f"bands has {len(bands)} names, the images {nb} bands")
    if model_psf is None:
        # PSF-matched data (sigma None) have no model PSF: a unit kernel stands for it
        model_psf = np.ones((1, 1)) if sigma is None else integrated_gaussian_psf(sigma)
    model_psf = np.asarray(model_psf)
    model_psf = model_psf.reshape(model_psf.shape[-2:])
    return Frame(images, var, psfs, bands, weights, mask2, model_psf, sigma)
