"""cdeblend: fast deblending of astronomical images.

Two deblenders in one package: the SDSS-like single-band deblender (symmetric, PSF and
monotonic templates with flux re-apportioning) and the multi-band scarlet-lite deblender
(SED x morphology components fitted with proximal ADAM). See the README for a tour.
"""

from .apportion import FlatStack, apportion_flux
from .catalog import CatalogConfig, deblend_catalog, read_catalog, write_catalog
from .model_data import (
    BlendData,
    ComponentData,
    ModelData,
    SourceData,
    load_models,
    save_models,
)

__version__ = "0.1.0"

__all__ = [
    "BlendData",
    "CatalogConfig",
    "ComponentData",
    "FlatStack",
    "ModelData",
    "SourceData",
    "__version__",
    "apportion_flux",
    "deblend_catalog",
    "load_models",
    "read_catalog",
    "save_models",
    "write_catalog",
]
