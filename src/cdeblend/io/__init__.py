"""Files: persisted multi-band models (data classes, their FITS file and its schema).

* :mod:`~cdeblend.io.model_data` - :class:`ModelData` and the blend, source and component
  data it holds; rebuild, restart and re-apportion a stored blend.
* :mod:`~cdeblend.io.model_file` - :func:`save_models` and :func:`load_models`.
* :mod:`~cdeblend.io.schema` - the file's layout, schema name, version and limits.
* :mod:`~cdeblend.io.fits_scan` - the bounded read of a FITS file of unknown origin.
"""

from .model_data import BlendData, ComponentData, ModelData, SourceData
from .model_file import load_models, save_models
from .schema import MAX_BLEND_PIXELS, SCHEMA_NAME, SCHEMA_VERSION

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
