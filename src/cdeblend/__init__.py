"""cdeblend: fast deblending of astronomical images.

Two deblenders in one package: the SDSS-like single-band deblender (symmetric, PSF and
monotonic templates with flux re-apportioning) and the multi-band scarlet-lite deblender
(SED x morphology components fitted with proximal ADAM). See the README for a tour.
"""

from .apportion import FlatStack, apportion_flux
from .blend import Blend, Component, Source
from .deblender import DeblendConfig, Deblender, DeblendResult
from .observation import Observation
from .spectra import fit_seds

__version__ = "0.1.0"

__all__ = [
    "Blend",
    "Component",
    "DeblendConfig",
    "DeblendResult",
    "Deblender",
    "FlatStack",
    "Observation",
    "Source",
    "__version__",
    "apportion_flux",
    "fit_seds",
]
