"""The single-band (SDSS-like, meas_deblender "baseline") deblender.

One parent (a footprint with its peaks) at a time: every peak gets a template, either the
PSF (when a PSF fit describes it well) or its 180-degree symmetric template, optionally
ramped at the footprint edge, median smoothed and made monotonic; the image is then split
among the children in proportion to their templates, and the pixels that no template
claims (the stray flux) are handed out by a rule or left unassigned.

The steps follow ``docs/spec/single_band.md`` (the [dev] behaviours). The modules, by job:

- :mod:`.config`: :class:`SingleBandConfig` and the names its settings choose from;
- :mod:`.deblender`: :class:`SingleBandDeblender` and the run of one parent (the skip
  rules, then one method per step);
- :mod:`.inputs`: the checks of every input, the default footprint, sigma1;
- :mod:`.frame`: the working frame, templates and boxes;
- :mod:`.psf` (PSF images, FWHM), :mod:`.psf_fit` (3.1) and :mod:`.lstsq` (its solver);
- :mod:`.faint`: PSF templates for faint peaks on a neighbour's wing;
- :mod:`.templates`: symmetric templates, ramp, median, monotonic, clip (3.2-3.6);
- :mod:`.weights`: template weights and degenerate templates (3.7-3.8);
- :mod:`.portions` (the image split, 3.9) and :mod:`.stray` (stray flux);
- :mod:`.wings`: each child's light outside the footprint and its total flux error;
- :mod:`.results`: :class:`Child` and :class:`SingleBandResult`.

The heavy loops live in :mod:`cdeblend._symmetric_cy`, :mod:`cdeblend._monotonic_cy` and
:mod:`cdeblend._apportion_cy`; :mod:`.inputs` validates every input before they run.
"""

from .config import DEFAULT_MASK_BITS, SingleBandConfig
from .deblender import SingleBandDeblender
from .inputs import DETECT_GROW as DETECT_GROW
from .inputs import DETECT_MIN_AREA as DETECT_MIN_AREA
from .inputs import DETECT_NSIGMA as DETECT_NSIGMA
from .inputs import checked_image as checked_image
from .inputs import estimate_sigma1 as estimate_sigma1
from .inputs import split_mask as split_mask
from .psf import psf_fwhm_from_moments
from .results import Child, SingleBandResult

__all__ = [
    "DEFAULT_MASK_BITS",
    "Child",
    "SingleBandConfig",
    "SingleBandDeblender",
    "SingleBandResult",
    "psf_fwhm_from_moments",
]
