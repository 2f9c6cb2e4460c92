"""The catalog driver: :func:`deblend_catalog` checks the image, finds and checks the
parents, applies the skip rules, runs one task per parent and assembles the catalog and the
model data."""

from __future__ import annotations

import concurrent.futures as cf
import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..deblend_config import CONSERVED_THRESH
from ..model_data import BlendData, ModelData, SourceData
from .config import CatalogConfig, skip_reason
from .executors import check_executor, run_tasks, submit_or_run, usable_cpus
from .frame import Frame, as_frame
from .parents import (
    Parent,
    check_parents,
    footprint_flux_err,
    frame_parents_from_peaks,
    parent_stats,
)
from .table import assemble, celestial_wcs, describe_columns, to_table
from .tasks import Outcome, Task
from .worker import deblend_task, default_deblender_factory, default_observation_factory

__all__ = ["deblend_catalog"]


def deblend_catalog(
    observation_or_image: Any,
    peaks: Any = None,
    parents: Sequence[Parent] | None = None,
    config: CatalogConfig | None = None,
    executor: Any = "threads",
    progress: bool = True,
    max_workers: int | None = None,
    *,
    variance: Any = None,
    psf: Any = None,
    mask: Any = None,
    bands: Sequence[str] | None = None,
    deblender_factory: Callable[[str, CatalogConfig], Any] | None = None,
    observation_factory: Callable[..., Any] | None = None,
    wcs: Any = None,
    flux_unit: Any = None,
) -> tuple[Any, ModelData]:
    """Deblend every parent of an image and build the catalog and the model data.

    Parameters
    ----------
    observation_or_image : Observation or numpy.ndarray
        The full image: an Observation (``.images``, ``.variance``, ``.psfs`` and optionally
        ``.weights``, ``.mask``, ``.bands``, ``.model_psf``), or a (B, H, W) / (H, W) array
        with ``variance`` and ``psf`` given as keywords.
    peaks : array_like, optional
        (N, 2) (y, x) flat peak list; grouped into parents by :func:`parents_from_peaks`.
    parents : sequence, optional
        Parents with ``.id``, ``.box`` (y0, x0, h, w), ``.footprint`` ((h, w) bool or None)
        and ``.peaks`` ((N, 2) (y, x) in the image frame). Without peaks or parents,
        ``cdeblend.detect(images, variance)`` finds them.
    config : CatalogConfig, optional
        Skip rules, deblender choice and their configurations.
    executor : str, concurrent.futures.Executor or distributed.Client
        ``"serial"``, ``"threads"`` (default: a pool of one thread per usable core, which
        also computes the image's noise level and the shared PSF kernels while the parents
        are found; the fits run without the GIL), ``"dask"`` (the running distributed
        client, else dask's threaded scheduler), an Executor, or a Client. Parents are
        submitted largest first. On 2 cores bench/threads.py measured 1.58-1.72x (median
        1.63x) over serial with threads and 1.4x with a warm
        ``ProcessPoolExecutor(mp_context=multiprocessing.get_context("spawn"))``, with
        identical results (a process pool costs about a second to start).
    progress : bool
        Show a tqdm progress bar when tqdm is installed.
    max_workers : int, optional
        Threads for ``"threads"`` (default: the cores this process may use) and for
        ``"dask"`` without a client (default: dask's).
    variance, psf : array_like, optional
        (B, H, W) variance and (B, hp, wp) PSFs when an image array is passed (or to override
        the observation's).
    mask : array_like, optional
        (H, W) or (B, H, W) no-data mask: bool (True = no data) or integer (non-zero = no
        data). Pixels without data (also non-finite values and variance that is not finite
        and positive) have zero weight, give no flux to any child and count in
        ``masked_fraction`` (``skipped_masked``). Default: the observation's ``mask``.
    bands : sequence of str, optional
        Band names (default: the observation's, else "0", "1", ...).
    deblender_factory : callable, optional
        ``factory(kind, config) -> deblender``, called once per parent with ``kind`` in
        ``{"multi", "single"}``; default: ``cdeblend.Deblender`` / ``SingleBandDeblender``.
        The model file stores ``config.multi_band``'s children's footprint threshold
        (``conserved_thresh``): a multi-band factory should fit with it, or the stored
        models re-apportion on another footprint than the catalog's.
    observation_factory : callable, optional
        Builds the multi-band deblender's observation of a parent:
        ``factory(images, variance, psfs, bands=, weights=, model_psf_sigma=)``; default
        ``cdeblend.Observation``.
    wcs : astropy.wcs.WCS, optional
        The images' WCS (0-based pixels, as the catalog's): adds ``ra`` and ``dec`` columns
        (degrees) at each row's centroid.
    flux_unit : str or astropy.units.Unit, optional
        The images' unit (e.g. a FITS ``BUNIT``), given to the flux columns.

    Returns
    -------
    catalog : astropy.table.Table or numpy.ndarray
        One row per parent, then one per child, sorted by id (a structured array
        when astropy is not installed). Columns in the module docstring.
    model_data : ModelData
        The multi-band models of the fitted parents (empty for the single-band deblender).
    """
    cfg = CatalogConfig() if config is None else config
    if not isinstance(cfg, CatalogConfig):
        raise TypeError(f"config must be a CatalogConfig, got {type(cfg).__name__}")
    check_executor(executor, max_workers)
    celestial = celestial_wcs(wcs)
    if peaks is not None and parents is not None:
        raise ValueError("give either peaks or parents, not both")
    frame = as_frame(observation_or_image, variance, psf, mask, bands, cfg)
    nb, H, W = frame.images.shape
    kind = {"auto": "single" if nb == 1 else "multi"}.get(cfg.deblender, cfg.deblender)
    if kind == "single" and nb != 1:
        raise ValueError(f"the single-band deblender needs one band, the images have {nb}")

    # The noise level that sets the fit's thresholds is the whole image's
    # (docs/spec/multi_band.md 5.1), not
    # each parent's cut-out's; only the package's own Observation takes it. It (a pass over
    # every pixel of the variance) and the shared template observation do not depend on the
    # parents: with its own thread pool the catalog computes them in the pool while this
    # thread finds the parents (the same results, sooner).
    own_pool = (
        cf.ThreadPoolExecutor(max_workers=max_workers or usable_cpus())
        if executor == "threads"
        else None
    )
    try:
        table, model = _deblend_frame(
            observation_or_image,
            frame,
            kind,
            peaks,
            parents,
            cfg,
            executor,
            own_pool,
            progress,
            max_workers,
            deblender_factory,
            observation_factory,
        )
        return describe_columns(table, flux_unit, celestial), model
    finally:
        if own_pool is not None:
            own_pool.shutdown(wait=True)


def _deblend_frame(
    observation_or_image: Any,
    frame: Frame,
    kind: str,
    peaks: Any,
    parents: Any,
    cfg: CatalogConfig,
    executor: Any,
    own_pool: cf.Executor | None,
    progress: bool,
    max_workers: int | None,
    deblender_factory: Callable | None,
    observation_factory: Callable | None,
) -> tuple[Any, ModelData]:
    """:func:`deblend_catalog` after the image checks (see there)."""
    # one job (noise level, then the template): with this thread busy finding the parents,
    # one core is free
    shared_future = None
    if kind == "multi" and observation_factory is None:
        shared_future = submit_or_run(
            own_pool, _shared_setup, frame, getattr(observation_or_image, "noise_rms", None)
        )
    found = _find_parents(frame, peaks, parents, cfg)
    checked = _checked_parents(found, frame.images.shape[1:])
    ids = [int(c[0]) for c in checked]
    factory = default_deblender_factory if deblender_factory is None else deblender_factory
    obs_factory = (
        default_observation_factory if observation_factory is None else observation_factory
    )

    noise_rms = template = None
    if shared_future is not None:
        noise_rms, template = shared_future.result()
        if not checked:
            template = None

    # every parent's footprint flux, centroid and masked fraction in one pass over the image
    boxes = np.array([c[1] for c in checked], dtype=np.int64).reshape(-1, 4)
    footprints = [c[2] for c in checked]
    stats = parent_stats(frame, boxes, footprints)
    # only the catalog needs the footprints' flux errors: with the catalog's own pool they
    # are computed by the first free worker (queued before the parents, largest first)
    # instead of here, while the second core waits for the first parent
    flux_err = submit_or_run(own_pool, footprint_flux_err, frame, boxes, footprints)
    tasks, reasons = _make_tasks(checked, stats.masked_fraction.tolist(), frame, kind, cfg)
    for t in tasks:
        t.noise_rms = noise_rms
        t.template = template
    if tasks and deblender_factory is None:
        _require_default_deblender(kind)
    if tasks and kind == "multi" and observation_factory is None:
        _require_default_deblender("observation")

    fn = functools.partial(deblend_task, factory=factory, obs_factory=obs_factory, cfg=cfg)
    pool = own_pool if own_pool is not None else executor
    outcomes = {o.index: o for o in run_tasks(tasks, fn, pool, max_workers, progress)}
    stats.flux_err = flux_err.result()
    for k, o in outcomes.items():  # the deblender's own skips reach the catalog's flags
        if o.skip_reason:
            reasons[k] = o.skip_reason
    cat = assemble(checked, ids, boxes, stats, reasons, outcomes, kind, frame.images.shape[0])
    cat = cat[np.argsort(cat["id"], kind="stable")]  # parents, then children: ids sorted
    model = ModelData(
        bands=frame.bands,
        model_psf=frame.model_psf,
        psfs=frame.psfs,
        model_psf_sigma=frame.model_psf_sigma,
        conserved_thresh=getattr(cfg.multi_band, "conserved_thresh", CONSERVED_THRESH),
    )
    _collect_models(model, checked, reasons, outcomes, (max(ids) if ids else 0) + 1, kind, cfg)
    return to_table(cat, frame.bands), model


def _find_parents(frame: Frame, peaks: Any, parents: Any, cfg: CatalogConfig) -> Any:
    """The parents given, else those of the peaks given, else the detected ones."""
    if parents is not None:
        return parents
    if peaks is not None:
        return frame_parents_from_peaks(
            frame.images, frame.variance, peaks, cfg.footprint_snr, cfg.footprint_grow
        )
    try:
        from ..detection import detect
    except ImportError as exc:  # pragma: no cover - detection ships with the package
        raise ImportError("no peaks or parents given and cdeblend.detect is missing") from exc
    options = {"psf": frame.psfs, **(cfg.detection or {})}
    return detect(frame.images, frame.variance, **options)


def _checked_parents(
    parents: Any, shape: tuple[int, int]
) -> list[tuple[Any, tuple, np.ndarray, np.ndarray]]:
    """The parents checked (:func:`~cdeblend.catalog.parents.check_parents`), in increasing
    id; ValueError when two share an id."""
    checked = check_parents(parents, shape)
    # parent rows in increasing id (a stable sort: detection's ids are in order already)
    checked = sorted(checked, key=lambda c: int(c[0]))
    ids = [int(c[0]) for c in checked]
    if len(set(ids)) != len(ids):
        raise ValueError("parent ids must be unique")
    return checked


def _make_tasks(
    checked: list[tuple[Any, tuple, np.ndarray, np.ndarray]],
    masked: list[float],
    frame: Frame,
    kind: str,
    cfg: CatalogConfig,
) -> tuple[list[Task], list[str]]:
    """A task per parent that no skip rule applies to (views into the frame), and every
    parent's skip flag (``""`` for a task)."""
    tasks: list[Task] = []
    reasons: list[str] = []
    for k, (pid, box, fp, local) in enumerate(checked):
        reason = skip_reason(len(local), box, masked[k], cfg)
        reasons.append(reason)
        if reason:
            continue
        y0, x0, h, w = box
        sl = (slice(y0, y0 + h), slice(x0, x0 + w))
        tasks.append(
            Task(
                index=k,
                parent_id=int(pid),
                kind=kind,
                box=box,
                footprint=fp,
                peaks=local,
                images=frame.images[(slice(None), *sl)],
                variance=frame.variance[(slice(None), *sl)],
                weights=None if frame.weights is None else frame.weights[(slice(None), *sl)],
                mask=None if frame.mask is None else frame.mask[sl],
                psfs=frame.psfs,
                bands=frame.bands,
                model_psf_sigma=frame.model_psf_sigma,
            )
        )
    return tasks, reasons


def _collect_models(
    model: ModelData,
    checked: list[tuple[Any, tuple, np.ndarray, np.ndarray]],
    reasons: list[str],
    outcomes: dict[int, Outcome],
    next_id: int,
    kind: str,
    cfg: CatalogConfig,
) -> None:
    """Put the fitted (and isolated) parents' models in ``model.blends``, in parent order,
    with the children's catalog ids (numbered from ``next_id`` as by :func:`assemble`)."""
    persist_isolated = kind == "multi" and cfg.persist_models and cfg.persist_isolated
    for k, (pid, box, fp, _) in enumerate(checked):
        if reasons[k] == "skipped_isolated" and persist_isolated:
            model.blends[int(pid)] = BlendData(
                parent_id=int(pid),
                box=box,
                bands=model.bands,
                sources=[SourceData(int(pid), 0, [])],
                footprint=fp.copy(),
                isolated=True,
            )
        if reasons[k] or outcomes[k].failed:
            continue
        o = outcomes[k]
        n = len(o.peak_id)
        if o.blend_data is not None:
            for s, cid in zip(o.blend_data.sources, range(next_id, next_id + n), strict=True):
                s.id = cid
            model.blends[int(pid)] = o.blend_data
        next_id += n


def _shared_setup(frame: Frame, noise_rms: Any) -> tuple[np.ndarray, Any]:
    """The image's noise RMS per band (the observation's, else the mean of
    ``sqrt(variance)`` over the finite pixels) and the template observation sharing the PSFs'
    kernels with every parent."""
    from .._detection_cy import mean_sqrt

    if noise_rms is None:
        # the noise of the pixels with data (a no-data pixel's variance 0 is not noise)
        var = frame.variance
        if frame.mask is not None:
            var = np.where(var > 0, var, var.dtype.type(np.nan))
        noise_rms = [mean_sqrt(v)[0] for v in var]
        empty = [frame.bands[b] for b, n in enumerate(noise_rms) if not np.isfinite(n)]
        if empty:
            raise ValueError(
                f"band(s) {empty} have no pixel with data (every value non-finite, "
                "masked or of variance <= 0): drop them"
            )
    noise_rms = np.asarray(noise_rms, dtype=np.float64)
    return noise_rms, _template_observation(frame, noise_rms)


def _template_observation(frame: Frame, noise_rms: np.ndarray) -> Any:
    """The package's Observation of the image's PSFs and noise (on one pixel): the parents'
    observations share its kernels and their transforms."""
    import cdeblend

    pixel = (slice(None), slice(0, 1), slice(0, 1))
    return cdeblend.Observation(
        frame.images[pixel].copy(),
        frame.variance[pixel].copy(),
        frame.psfs,
        bands=frame.bands,
        model_psf_sigma=frame.model_psf_sigma,
        noise_rms=noise_rms,
    )


def _require_default_deblender(kind: str) -> None:
    import cdeblend

    names = {
        "multi": ("Deblender", "DeblendConfig"),
        "single": ("SingleBandDeblender", "SingleBandConfig"),
        "observation": ("Observation",),
    }[kind]
    missing = [n for n in names if not hasattr(cdeblend, n)]
    if missing:
        raise RuntimeError(
            f"cdeblend.{missing[0]} is not available in this build; pass deblender_factory= "
            "and observation_factory= to deblend_catalog"
        )
