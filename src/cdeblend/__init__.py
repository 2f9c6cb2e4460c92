"""cdeblend: fast deblending of astronomical images.

Two deblenders in one package: the SDSS-like single-band deblender (symmetric, PSF and
monotonic templates with flux re-apportioning) and the multi-band scarlet-lite deblender
(SED x morphology components fitted with proximal ADAM). See the README for a tour.
"""

from .apportion import FlatStack, apportion_flux
from .observation import Observation

__version__ = "0.1.0"

__all__ = [
    "FlatStack",
    "Observation",
    "__version__",
    "apportion_flux",
]
