"""Data bundled with cdeblend: a real HSC COSMOS blend for the demo, tests and tutorial."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import numpy as np

__all__ = ["DemoBlend", "load_hsc_cosmos"]


@dataclass(frozen=True)
class DemoBlend:
    """A multi-band blend with its detected peaks.

    Attributes
    ----------
    images, variance : numpy.ndarray
        (B, H, W) float32 background-subtracted images and their variance.
    psfs : numpy.ndarray
        (B, h, w) float64 PSF images, each odd-sized and of unit sum.
    mask : numpy.ndarray
        (B, H, W) int32 HSC mask bit planes.
    bands : tuple of str
        Band names, blue to red.
    peaks : numpy.ndarray
        (N, 2) int64 peak positions (y, x), brightest first as detected.
    """

    images: np.ndarray
    variance: np.ndarray
    psfs: np.ndarray
    mask: np.ndarray
    bands: tuple[str, ...]
    peaks: np.ndarray

    def band_index(self, band: str) -> int:
        """Index of ``band`` in :attr:`bands` (``ValueError`` if absent)."""
        if band not in self.bands:
            raise ValueError(f"band {band!r} is not one of {self.bands}")
        return self.bands.index(band)


def load_hsc_cosmos() -> DemoBlend:
    """Load the bundled HSC COSMOS blend "hsc_cosmos_35" (5 bands grizy, 58 x 48, 7 peaks).

    The data are a copy of the demo blend of the public scarlet repositories, made from the
    Hyper Suprime-Cam Subaru Strategic Program public data release (Aihara et al. 2018).
    """
    ref = resources.files("cdeblend") / "data" / "hsc_cosmos_35.npz"
    with resources.as_file(ref) as path, np.load(path) as data:
        catalog = data["catalog"]
        peaks = np.stack([catalog["y"], catalog["x"]], axis=1).round().astype(np.int64)
        return DemoBlend(
            images=np.array(data["images"]),
            variance=np.array(data["variance"]),
            psfs=np.array(data["psfs"]),
            mask=np.array(data["mask"]),
            bands=tuple(str(b) for b in data["filters"]),
            peaks=peaks,
        )
