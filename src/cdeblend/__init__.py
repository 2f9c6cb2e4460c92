"""cdeblend: fast deblending of astronomical images.

Two deblenders in one package: the SDSS-like single-band deblender (symmetric, PSF and
monotonic templates with flux re-apportioning) and the multi-band scarlet-lite deblender
(SED x morphology components fitted with proximal ADAM), plus catalog-level deblending of
whole images and persisted models. See the README for a tour.
"""

from .apportion import FlatStack, apportion_flux
from .blend import Blend, Component, Source
from .catalog import CatalogConfig, deblend_catalog, read_catalog, write_catalog
from .datasets import DemoBlend, load_hsc_cosmos
from .deblender import DeblendConfig, Deblender, DeblendResult
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
from .model_data import BlendData, ComponentData, ModelData, SourceData, load_models, save_models
from .observation import Observation
from .single_band import Child, SingleBandConfig, SingleBandDeblender, SingleBandResult
from .spectra import fit_seds
from .survey import deblend_survey

__version__ = "0.1.0"

__all__ = [
    "Blend",
    "BlendData",
    "CatalogConfig",
    "Child",
    "Component",
    "ComponentData",
    "DeblendConfig",
    "DeblendResult",
    "Deblender",
    "DemoBlend",
    "FlatStack",
    "ModelData",
    "Observation",
    "Parent",
    "ParentResult",
    "SingleBandConfig",
    "SingleBandDeblender",
    "SingleBandResult",
    "Source",
    "SourceData",
    "__version__",
    "apportion_flux",
    "deblend_catalog",
    "deblend_image",
    "deblend_survey",
    "detect",
    "detection_image",
    "find_footprints",
    "find_peaks",
    "fit_seds",
    "group_peaks",
    "load_hsc_cosmos",
    "load_models",
    "read_catalog",
    "save_models",
    "write_catalog",
]
