"""cdeblend: fast deblending of astronomical images.

Two deblenders in one package: the SDSS-like single-band deblender (symmetric, PSF and
monotonic templates with flux re-apportioning) and the multi-band scarlet-lite deblender
(SED x morphology components fitted with proximal ADAM), plus catalog-level deblending of
whole images and persisted models. See the README for a tour.

Importing the package is cheap: each public name is imported from its module the first time it
is used (PEP 562, like scikit-image's lazy loading), so ``import cdeblend`` does not pull in
scipy, astropy or the compiled kernels until they are needed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the eager imports, for type checkers and IDEs
    from ._threads import set_num_threads, thread_limit
    from .apportion import FlatStack, apportion_flux, model_footprint
    from .blend import Blend, Component, Source
    from .catalog import CatalogConfig, deblend_catalog, read_catalog, write_catalog
    from .datasets import DemoBlend, load_hsc_cosmos
    from .deblend_config import DeblendConfig
    from .deblend_result import DeblendResult
    from .deblender import Deblender
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
    from .model_data import (
        BlendData,
        ComponentData,
        ModelData,
        SourceData,
        load_models,
        save_models,
    )
    from .observation import Observation
    from .single_band import Child, SingleBandConfig, SingleBandDeblender, SingleBandResult
    from .spectra import fit_seds
    from .survey import deblend_survey

# The fit's threads (cdeblend._threads) wait for each other at every iteration. OpenMP's
# default lets a waiting thread spin, which on a busy machine (or under a pool of workers)
# burns the cores the other threads need; passive waiting sleeps instead. Only a default:
# it takes effect if no OpenMP runtime is loaded yet and the variable is not set.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

#: public name -> the module of the package that defines it
_EXPORTS = {
    "Blend": "blend",
    "BlendData": "model_data",
    "CatalogConfig": "catalog",
    "Child": "single_band",
    "Component": "blend",
    "ComponentData": "model_data",
    "DeblendConfig": "deblend_config",
    "DeblendResult": "deblend_result",
    "Deblender": "deblender",
    "DemoBlend": "datasets",
    "FlatStack": "apportion",
    "ModelData": "model_data",
    "Observation": "observation",
    "Parent": "detection",
    "ParentResult": "detection",
    "SingleBandConfig": "single_band",
    "SingleBandDeblender": "single_band",
    "SingleBandResult": "single_band",
    "Source": "blend",
    "SourceData": "model_data",
    "apportion_flux": "apportion",
    "model_footprint": "apportion",
    "deblend_catalog": "catalog",
    "deblend_image": "detection",
    "deblend_survey": "survey",
    "detect": "detection",
    "detection_image": "detection",
    "find_footprints": "detection",
    "find_peaks": "detection",
    "fit_seds": "spectra",
    "group_peaks": "detection",
    "load_hsc_cosmos": "datasets",
    "load_models": "model_data",
    "read_catalog": "catalog",
    "save_models": "model_data",
    "set_num_threads": "_threads",
    "thread_limit": "_threads",
    "write_catalog": "catalog",
}

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
    "model_footprint",
    "read_catalog",
    "save_models",
    "set_num_threads",
    "thread_limit",
    "write_catalog",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        # a public submodule (``cdeblend.display``...), as the eager imports used to bind
        if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return importlib.import_module(f".{name}", __name__)
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
