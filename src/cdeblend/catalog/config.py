"""The catalog's settings, its flags and its one set of skip rules."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..observation import MODEL_PSF_SIGMA

__all__ = [
    "ERROR_WIDTH",
    "FLAGS",
    "CatalogConfig",
    "catalog_single_band_config",
    "skip_reason",
]

#: Longest exception class name stored in the ``error`` column (as the reference).
ERROR_WIDTH = 25


FLAGS = (
    "skipped",
    "skipped_isolated",
    "skipped_parent_too_big",
    "skipped_masked",
    "skipped_too_many_peaks",
    "failed",
)


@dataclass(frozen=True)
class CatalogConfig:
    """Settings of :func:`deblend_catalog` (pipeline defaults of docs/spec/multi_band.md section 6).

    Attributes
    ----------
    deblender : str
        ``"auto"`` (single band when the image has one band, multi band otherwise),
        ``"multi"`` or ``"single"``.
    skip_isolated : bool
        Do not fit parents with a single peak (flag ``skipped_isolated``); the pipeline's
        ``processSingles = False``.
    max_number_of_peaks : int
        Skip parents with more peaks (600; <= 0 turns the rule off).
    max_footprint_area : int
        Skip parents whose bounding-box area is larger (2,000,000; <= 0 off).
    max_footprint_size : int
        Skip parents whose box height or width is larger (0 = off).

        These skip rules, ``max_masked_fraction`` and ``catch_failures`` win over the
        ``SingleBandConfig`` fields of the same names (and its ``mask_limits``): in the
        catalog the single-band deblender runs with those switched off.
    max_area_times_peaks : float
        Skip parents whose box area times peak count is larger (1e9; <= 0 off).
    max_masked_fraction : float
        Skip parents whose footprint has a larger fraction of masked pixels (1.0 = off).
    catch_failures : bool
        Flag a parent whose deblender raises and go on; False re-raises.
    persist_models : bool
        Keep the multi-band models in the returned :class:`~cdeblend.ModelData`.
    persist_isolated : bool
        Also keep isolated (single-peak, not fitted) parents in the model data, as
        ``BlendData(isolated=True)`` with their footprint (the pipeline's
        ``persistIsolated``; multi-band runs only).
    store_footprints : bool
        Keep each parent's footprint with its stored model.
    model_psf_sigma : float
        Model PSF width used when the observation does not carry a model PSF.
    footprint_snr : float
        :func:`parents_from_peaks`: per-pixel S/N of the inverse-variance coadd above which
        a pixel belongs to a footprint.
    footprint_grow : int
        :func:`parents_from_peaks`: footprints are dilated by a disc of this radius.
    detection : dict or None
        Keyword arguments of :func:`cdeblend.detect` when the parents are detected (no peaks
        or parents given), e.g. ``{"nsigma": 1.5, "min_area": 5, "min_contrast": 0.005}``;
        the frame's PSFs are its matched filter unless the dict sets ``psf``.
    multi_band : object or None
        ``DeblendConfig`` handed to the multi-band deblender (None = its defaults).
    single_band : object or None
        ``SingleBandConfig`` handed to the single-band deblender (None = its defaults).
    metrics : bool
        Fill the multi-band children's flux-error and metric columns (True; on the
        simulations they cost about a quarter of a small blend's fit). False leaves them
        NaN (the parents' footprint flux errors are always filled).
    """

    deblender: str = "auto"
    skip_isolated: bool = True
    max_number_of_peaks: int = 600
    max_footprint_area: int = 2_000_000
    max_footprint_size: int = 0
    max_area_times_peaks: float = 1e9
    max_masked_fraction: float = 1.0
    catch_failures: bool = True
    persist_models: bool = True
    persist_isolated: bool = True
    store_footprints: bool = True
    model_psf_sigma: float = MODEL_PSF_SIGMA
    footprint_snr: float = 3.0
    footprint_grow: int = 2
    detection: Any = None
    multi_band: Any = None
    single_band: Any = None
    metrics: bool = True

    def __post_init__(self) -> None:
        if self.deblender not in ("auto", "multi", "single"):
            raise ValueError(
                f"deblender must be 'auto', 'multi' or 'single', got {self.deblender!r}"
            )
        if not 0.0 <= self.max_masked_fraction <= 1.0:
            raise ValueError(
                f"max_masked_fraction must be in [0, 1], got {self.max_masked_fraction}"
            )
        if self.footprint_grow < 0:
            raise ValueError(f"footprint_grow must be >= 0, got {self.footprint_grow}")
        if not self.model_psf_sigma > 0:
            raise ValueError(f"model_psf_sigma must be > 0, got {self.model_psf_sigma}")


def skip_reason(n_peaks: int, box: tuple, masked_fraction: float, cfg: CatalogConfig) -> str:
    area = box[2] * box[3]
    if n_peaks == 1 and cfg.skip_isolated:
        return "skipped_isolated"
    if (
        (cfg.max_footprint_area > 0 and area > cfg.max_footprint_area)
        or (cfg.max_footprint_size > 0 and max(box[2], box[3]) > cfg.max_footprint_size)
        or (cfg.max_area_times_peaks > 0 and area * n_peaks > cfg.max_area_times_peaks)
    ):
        return "skipped_parent_too_big"
    if masked_fraction > cfg.max_masked_fraction:
        return "skipped_masked"
    if cfg.max_number_of_peaks > 0 and n_peaks > cfg.max_number_of_peaks:
        return "skipped_too_many_peaks"
    return ""


#: The single-band settings that the catalog's own skip rules replace (see CatalogConfig).
_CATALOG_RULES = {
    "max_footprint_area": 0,
    "max_footprint_size": 0,
    "max_number_of_peaks": 0,
    "mask_limits": {},
    "catch_failures": False,
}

_single_configs: dict[int, tuple[Any, Any]] = {}


def catalog_single_band_config(cfg: Any) -> Any:
    """``cfg`` with the skip rules that :class:`CatalogConfig` also defines switched off:
    in the catalog its rules, applied before any parent is deblended, are the only ones (one
    set of skip rules), and a failure reaches the catalog's ``catch_failures``. Made once
    per config (validating a config per parent would cost as much as the factory)."""
    hit = _single_configs.get(id(cfg))
    if hit is None or hit[0] is not cfg:
        if len(_single_configs) > 32:
            _single_configs.clear()
        hit = (cfg, dataclasses.replace(cfg, **_CATALOG_RULES))
        _single_configs[id(cfg)] = hit
    return hit[1]
