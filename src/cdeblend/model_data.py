"""Persisted multi-band models: the names of :mod:`cdeblend.io`, where they live now.

Kept so that ``from cdeblend.model_data import ...`` (the package's modules and users' code)
goes on working: the data classes are in :mod:`cdeblend.io.model_data`, writing and reading
model files in :mod:`cdeblend.io.model_file` and the file layout in :mod:`cdeblend.io.schema`.
"""

from .io.model_data import BlendData, ComponentData, ModelData, SourceData
from .io.model_file import load_models, save_models
from .io.schema import MAX_BLEND_PIXELS, SCHEMA_NAME, SCHEMA_VERSION

__all__ = [
    "MAX_BLEND_PIXELS",
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "BlendData",
    "ComponentData",
    "ModelData",
    "SourceData",
    "load_models",
    "save_models",
]
