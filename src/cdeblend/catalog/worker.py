"""One parent on a worker: the default deblender and observation factories and
:func:`deblend_task`, which turns a task into an outcome (a failure into a flagged one)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from .config import ERROR_WIDTH, CatalogConfig, catalog_single_band_config
from .results import summarize_multi, summarize_single
from .tasks import Outcome, Task

__all__ = ["deblend_task", "default_deblender_factory", "default_observation_factory"]

#: One logger for the whole catalog driver (its name is documented: ``cdeblend.catalog``),
#: whichever of its modules logs.
logger = logging.getLogger("cdeblend.catalog")


def default_deblender_factory(kind: str, config: CatalogConfig) -> Any:
    """The package's deblender for ``kind`` (``"multi"`` or ``"single"``), a new one per call."""
    import cdeblend

    if kind == "multi":
        cfg = config.multi_band if config.multi_band is not None else _default_config(kind)
        return cdeblend.Deblender(cfg)
    cfg = config.single_band if config.single_band is not None else _default_config(kind)
    return cdeblend.SingleBandDeblender(catalog_single_band_config(cfg))


@functools.cache
def _default_config(kind: str) -> Any:
    """The default ``DeblendConfig`` or ``SingleBandConfig``, made once: they are frozen, and
    validating a new one for every parent costs as much as the rest of the factory."""
    import cdeblend

    return cdeblend.DeblendConfig() if kind == "multi" else cdeblend.SingleBandConfig()


def default_observation_factory(*args: Any, **kwargs: Any) -> Any:
    import cdeblend

    return cdeblend.Observation(*args, **kwargs)


def _parent_arrays(task: Task) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A parent's C-contiguous images, variance and weights, in one kernel pass.

    The weights are the inverse variance where the variance is positive (or the
    observation's weights), times the footprint, in the images' dtype; pixels without data
    have variance 0 (and weight 0) in their band already (:func:`as_frame`). One
    call instead of a few numpy calls, each of which would hand the GIL to the other
    workers for a few microseconds (see ``_shared/gil.pxd``).
    """
    from .. import _catalog_cy

    out = np.empty((3, *task.images.shape), dtype=task.images.dtype)
    source, inverse = (task.variance, True) if task.weights is None else (task.weights, False)
    _catalog_cy.parent_arrays(
        task.images,
        task.variance,
        source,
        inverse,
        task.footprint.view(np.uint8),
        None,
        out[0],
        out[1],
        out[2],
    )
    return out[0], out[1], out[2]


def deblend_task(
    task: Task,
    factory: Callable[[str, CatalogConfig], Any],
    obs_factory: Callable[..., Any],
    cfg: CatalogConfig,
) -> Outcome:
    """Deblend one parent; a failure becomes a flagged outcome (or is re-raised)."""
    try:
        deb = factory(task.kind, cfg)
        fp = task.footprint
        if task.kind == "multi":
            images, variance, weights = _parent_arrays(task)
            if task.template is not None:  # the image was validated once: no checks here
                obs = task.template.with_arrays(
                    images, variance, weights, noise_rms=task.template.noise_rms
                )
            else:
                extra = {} if task.noise_rms is None else {"noise_rms": task.noise_rms}
                obs = obs_factory(
                    task.images,
                    task.variance,
                    task.psfs,
                    bands=task.bands,
                    weights=weights,
                    model_psf_sigma=task.model_psf_sigma,
                    **extra,
                )
            return summarize_multi(deb.deblend(obs, task.peaks), task, cfg)
        res = deb.deblend(
            task.images[0],
            task.variance[0],
            task.psfs[0],
            task.peaks,
            footprint=fp,
            mask=task.mask,
        )
        return summarize_single(res, task)
    except Exception as exc:
        if not cfg.catch_failures:
            raise
        name = type(exc).__name__[:ERROR_WIDTH]
        logger.warning("deblending parent %s failed: %s: %s", task.parent_id, name, exc)
        logger.debug("traceback of parent %s", task.parent_id, exc_info=True)
        return Outcome(index=task.index, failed=True, error=name)
