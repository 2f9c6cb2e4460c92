"""cdeblend: fast deblending of astronomical images.

Two deblenders in one package: the SDSS-like single-band deblender (symmetric, PSF and
monotonic templates with flux re-apportioning) and the multi-band scarlet-lite deblender
(SED x morphology components fitted with proximal ADAM). See the README for a tour.
"""

from .apportion import FlatStack, apportion_flux
from .detection import (
    Parent,
    ParentResult,
    deblend_image,
    detect,
    detection_image,
    find_footprints,
    find_peaks,
    group_peaks,
)
from .single_band import Child, SingleBandConfig, SingleBandDeblender, SingleBandResult

__version__ = "0.1.0"

__all__ = [
    "Child",
    "FlatStack",
    "Parent",
    "ParentResult",
    "SingleBandConfig",
    "SingleBandDeblender",
    "SingleBandResult",
    "__version__",
    "apportion_flux",
    "deblend_image",
    "detect",
    "detection_image",
    "find_footprints",
    "find_peaks",
    "group_peaks",
]
