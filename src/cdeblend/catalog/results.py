"""A deblender's result as the catalog's :class:`~cdeblend.catalog.tasks.Outcome`: one
summary for the multi-band deblender, one for the single-band deblender."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..model_data import ModelData
from .config import ERROR_WIDTH, CatalogConfig
from .tasks import Outcome, Task

__all__ = ["summarize_multi", "summarize_single"]

#: One logger for the whole catalog driver (its name is documented: ``cdeblend.catalog``),
#: whichever of its modules logs.
logger = logging.getLogger("cdeblend.catalog")


def _flag_names(flags: Any) -> str:
    if flags is None:
        return ""
    if isinstance(flags, str):
        return flags
    if isinstance(flags, dict):
        names = [str(k) for k, v in flags.items() if v]
    elif isinstance(flags, (set, frozenset, list, tuple)):
        names = [str(k) for k in flags]
    else:
        return str(flags)
    return ",".join(sorted(names))


def _centroid(img: np.ndarray, y0: int, x0: int) -> tuple[float, float]:
    """Flux-weighted centroid of the positive part of a (h, w) image placed at (y0, x0)."""
    pos = np.maximum(np.asarray(img, dtype=np.float64), 0.0)
    tot = pos.sum()
    if not tot > 0:
        return float("nan"), float("nan")
    ys = y0 + np.arange(pos.shape[0])
    xs = x0 + np.arange(pos.shape[1])
    return float(ys @ pos.sum(axis=1) / tot), float(pos.sum(axis=0) @ xs / tot)


def summarize_multi(res: Any, task: Task, cfg: CatalogConfig) -> Outcome:
    y0, x0, h, w = task.box
    sources = list(res.blend.sources)
    n = len(sources)
    nb = len(task.bands)
    bd = ModelData.from_blend(
        res,
        task.parent_id,
        (y0, x0),
        shape=(h, w),
        bands=task.bands,
        footprint=task.footprint.copy() if cfg.store_footprints else None,
    )
    # a source's peak is its peak_id when it carries one, else its position in the list
    peak_id = np.array([s.peak_id for s in bd.sources], dtype=np.int64)
    fallback = bool(getattr(res, "fallback", False))
    if fallback:
        logger.warning(
            "fit of parent %s failed (%s); kept its fallback model",
            task.parent_id,
            getattr(res, "error", ""),
        )
    peaks, peak_id, flags = _added_sources(res, sources, task.peaks, peak_id)
    extra = _multi_errors_and_metrics(res, n, nb) if cfg.metrics else {}
    return Outcome(
        index=task.index,
        fallback=fallback,
        error=str(getattr(res, "error", "")).split(":")[0][:ERROR_WIDTH] if fallback else "",
        iterations=int(getattr(res, "iterations", -1)),
        loss=float(getattr(res, "loss", np.nan)),
        converged=bool(getattr(res, "converged", False)),
        peak_id=peak_id,
        peaks=peaks + (y0, x0),
        centroids=bd.centroids(),
        flux_model=np.asarray(res.fluxes, dtype=np.float64).reshape(n, nb),
        flux_conserved=np.asarray(res.conserved_fluxes, dtype=np.float64).reshape(n, nb),
        n_components=np.array([len(s.components) for s in sources], dtype=np.int64),
        child_flags=flags,
        blend_data=bd if cfg.persist_models else None,
        **extra,
    )


def _added_sources(
    res: Any, sources: list, peaks: np.ndarray, peak_id: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Local peaks, peak ids and child flags of a result's sources: a source added after
    detection (``DeblendResult.added``, e.g. from the residual) has its own peak, peak id
    -1 and the flag ``added``."""
    added = getattr(res, "added", None)
    added = np.zeros(len(sources), bool) if added is None else np.asarray(added, bool)
    if not added.any():
        return peaks[peak_id], peak_id, [""] * len(sources)
    local = peaks[np.where(added, 0, peak_id)]
    local[added] = [sources[i].peak for i in np.flatnonzero(added)]
    return local, np.where(added, -1, peak_id), ["added" if a else "" for a in added]


def _multi_errors_and_metrics(res: Any, n: int, nb: int) -> dict[str, Any]:
    """The flux errors and metrics of a multi-band result, as :class:`Outcome` fields
    (none for a result of another deblender that lacks them)."""
    if not hasattr(res, "metrics"):
        return {}
    from ..deblend_result import DeblendResult
    from ..metrics import result_errors_and_metrics

    if type(res) is DeblendResult:  # one call sharing what the four would each compute
        m, flux_err, conserved_err, deblend_err = result_errors_and_metrics(res)
    else:
        m, flux_err = res.metrics(), res.flux_err
        conserved_err, deblend_err = res.conserved_flux_err, res.deblend_flux_err
    return dict(
        flux_model_err=np.asarray(flux_err, dtype=np.float64).reshape(n, nb),
        flux_conserved_err=np.asarray(conserved_err, dtype=np.float64).reshape(n, nb),
        metrics={
            "deblend_blendedness": m.blendedness,
            "deblend_fluxOverlap": m.flux_overlap,
            "deblend_fluxOverlapFraction": m.flux_overlap_fraction,
            "deblend_maxOverlap": m.max_overlap,
            "deblend_dataCoverage": m.data_coverage,
            "flux_deblend_err": np.asarray(deblend_err, np.float64).reshape(n, nb),
            "deblend_edgePixels": m.edge_pixels,
            "deblend_zeroFlux": m.zero_flux,
            "chi2_reduced": m.chi2_reduced,
        },
        chi2_reduced=m.parent_chi2_reduced,
        runtime=1e3 * m.runtime,
    )


#: The single-band deblender's parent flags that skip a parent, as catalog flags.
_SINGLE_SKIPS = {"parent_too_big": "skipped_parent_too_big", "masked": "skipped_masked"}


def _single_flags(res: Any, task: Task) -> Outcome | None:
    """The outcome of a parent that the single-band deblender skipped or on which it failed
    (its own flags, as the catalog's), else None."""
    flags = getattr(res, "flags", None) or frozenset()
    names = _flag_names(flags)
    if "failed" in flags:
        error = str(getattr(res, "error", "") or "failed")
        name = error.split(":", 1)[0][:ERROR_WIDTH]
        logger.warning("deblending parent %s failed: %s", task.parent_id, error)
        return Outcome(index=task.index, failed=True, error=name, parent_flags=names)
    for flag, reason in _SINGLE_SKIPS.items():
        if flag in flags:
            return Outcome(index=task.index, skip_reason=reason, parent_flags=names)
    return None


def summarize_single(res: Any, task: Task) -> Outcome:
    y0, x0, h, w = task.box
    flagged = _single_flags(res, task)
    if flagged is not None:
        return flagged
    children = list(res.children)
    n = len(children)
    dense = None
    peaks, peak_id, cents = [], [], []
    f_model = np.full((n, 1), np.nan)
    f_cons = np.zeros((n, 1))
    e_model = np.array(
        [getattr(ch, "template_flux_err", np.nan) for ch in children], dtype=np.float64
    ).reshape(n, 1)
    e_cons = np.array(
        [getattr(ch, "flux_err", np.nan) for ch in children], dtype=np.float64
    ).reshape(n, 1)
    for i, ch in enumerate(children):
        py, px = (int(v) for v in ch.peak)
        match = np.flatnonzero((task.peaks[:, 0] == py) & (task.peaks[:, 1] == px))
        peak_id.append(int(match[0]) if len(match) else -1)
        peaks.append((py + y0, px + x0))
        cons = getattr(ch, "conserved", None)
        cbox = getattr(ch, "box", None)
        cons = None if cons is None else np.asarray(cons)
        if cons is not None and cbox is not None and cons.shape == tuple(cbox[2:]):
            img, by, bx = cons, int(cbox[0]), int(cbox[1])
        else:  # fall back on the dense children
            if dense is None:
                dense = np.asarray(res.conserved_images())
            img, by, bx = dense[i], 0, 0
        f_cons[i, 0] = float(np.sum(img, dtype=np.float64))
        cents.append(_centroid(img, by + y0, bx + x0))
        tmpl = getattr(ch, "template", None)
        if tmpl is not None:
            f_model[i, 0] = float(np.sum(np.asarray(tmpl), dtype=np.float64))
    return Outcome(
        index=task.index,
        iterations=0,
        loss=float("nan"),
        converged=True,
        peak_id=np.array(peak_id, dtype=np.int64),
        peaks=np.array(peaks, dtype=np.int64).reshape(-1, 2),
        centroids=np.array(cents, dtype=np.float64).reshape(-1, 2),
        flux_model=f_model,
        flux_conserved=f_cons,
        n_components=np.ones(n, dtype=np.int64),
        child_flags=[_flag_names(getattr(ch, "flags", None)) for ch in children],
        parent_flags=_flag_names(getattr(res, "flags", None)),
        flux_model_err=e_model,
        flux_conserved_err=e_cons,
        metrics={
            "deblend_zeroFlux": f_cons == 0,
            "flux_deblend_err": np.array(
                [getattr(ch, "deblend_flux_err", np.nan) for ch in children], np.float64
            ).reshape(n, 1),
            "flux_wing": np.array(
                [getattr(ch, "wing_flux", np.nan) for ch in children], np.float64
            ).reshape(n, 1),
        },
    )
