"""The catalog table: its dtype, its assembly from the outcomes (column by column), its
column descriptions and units, and the RA/Dec columns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..metrics import CATALOG_COLUMNS
from .config import ERROR_WIDTH, FLAGS
from .parents import ParentStats
from .tasks import Outcome

__all__ = ["COLUMN_DESCRIPTIONS", "assemble", "celestial_wcs", "describe_columns", "to_table"]


def _catalog_dtype(nb: int, flag_width: int, parent_flag_width: int = 1) -> np.dtype:
    return np.dtype(
        [
            ("id", "i8"),
            ("parent_id", "i8"),
            ("is_parent", "?"),
            ("n_peaks", "i4"),
            ("n_children", "i4"),
            ("n_components", "i4"),
            ("peak_id", "i4"),
            ("peak_y", "i8"),
            ("peak_x", "i8"),
            ("centroid_y", "f8"),
            ("centroid_x", "f8"),
            ("box_y0", "i8"),
            ("box_x0", "i8"),
            ("box_height", "i8"),
            ("box_width", "i8"),
            ("flux_model", "f8", (nb,)),
            ("flux_conserved", "f8", (nb,)),
            ("flux_footprint", "f8", (nb,)),
            ("flux_unassigned", "f8", (nb,)),
            ("flux_conserved_err", "f8", (nb,)),
            ("flux_model_err", "f8", (nb,)),
            ("masked_fraction", "f8"),
            ("deblender", "U6"),
            ("iterations", "i4"),
            ("loss", "f8"),
            ("converged", "?"),
            *[(f, "?") for f in FLAGS],
            ("error", f"U{ERROR_WIDTH}"),
            ("fallback", "?"),
            ("zero_flux", "?"),
            ("child_flags", f"U{max(flag_width, 1)}"),
            ("deblender_flags", f"U{max(parent_flag_width, 1)}"),
            *[(name, "f8", (nb,)) for name in _BAND_METRICS],
            ("deblend_zeroFlux", "?", (nb,)),
            ("deblend_edgePixels", "?"),
            ("chi2_reduced", "f8"),
            ("deblend_runtime", "f8"),
        ]
    )


#: Per-band float metrics of the children (cdeblend.metrics), NaN where not computed.
_BAND_METRICS = (
    "deblend_blendedness",
    "deblend_fluxOverlap",
    "deblend_fluxOverlapFraction",
    "deblend_maxOverlap",
    "deblend_dataCoverage",
    "flux_deblend_err",
    "flux_wing",
)


def assemble(
    checked: list[tuple[Any, tuple, np.ndarray, np.ndarray]],
    ids: list[int],
    boxes: np.ndarray,
    stats: ParentStats,
    reasons: list[str],
    outcomes: dict[int, Outcome],
    kind: str,
    nb: int,
) -> np.ndarray:
    """The catalog rows: each parent followed by its children, in parent order.

    Filled column by column, one numpy call per column rather than per row and column;
    children are numbered after the largest parent id.

    Parameters
    ----------
    checked : list of tuple
        ``(id, (y0, x0, h, w), footprint, local peaks)`` per parent, in parent order.
    ids : list of int
        The parents' ids.
    boxes : numpy.ndarray
        (P, 4) the parents' boxes.
    stats : ParentStats
        The parents' footprint statistics.
    reasons : list of str
        Per parent, its skip flag or ``""`` when it was deblended.
    outcomes : dict
        Parent index -> :class:`~cdeblend.catalog.tasks.Outcome` of every deblended parent.
    kind : str
        ``"multi"`` or ``"single"``.
    nb : int
        Number of bands.

    Returns
    -------
    numpy.ndarray
        The structured catalog array.
    """
    P = len(checked)
    fitted = [k for k in range(P) if not reasons[k]]
    done = [k for k in fitted if not outcomes[k].failed]
    failed = [k for k in fitted if outcomes[k].failed]
    outs = [outcomes[k] for k in done]
    n_kids = np.zeros(P, dtype=np.int64)
    n_kids[done] = [len(o.peak_id) for o in outs]
    flag_width = max([len(s) for o in outs for s in o.child_flags] + [1])
    ran = sorted(outcomes)  # the parents a deblender saw (it may have skipped some itself)
    pflags = [outcomes[k].parent_flags for k in ran]
    prow = np.arange(P) + np.cumsum(n_kids) - n_kids  # row of each parent
    cat = np.zeros(
        P + int(n_kids.sum()),
        dtype=_catalog_dtype(nb, flag_width, max([len(f) for f in pflags] + [1])),
    )
    _fill_parents(cat, prow, checked, ids, boxes, stats, reasons)
    _fill(cat, prow[ran], deblender=kind, deblender_flags=pflags)
    _fill(cat, prow[failed], failed=True, error=[outcomes[k].error for k in failed])
    # a lone source (isolated, or one peak and no child) owns all of its footprint's flux
    lone = [k for k in range(P) if reasons[k] == "skipped_isolated"]
    _fill(cat, prow[lone], flux_conserved=stats.flux[lone], flux_unassigned=0.0)
    if not outs:
        return cat
    _fill_fitted_parents(cat, prow[done], outs, n_kids[done], stats.flux[done], nb)
    lone = [
        k
        for k in done
        if n_kids[k] == 0 and len(checked[k][3]) == 1 and not outcomes[k].parent_flags
    ]
    _fill(cat, prow[lone], flux_conserved=stats.flux[lone], flux_unassigned=0.0)
    # the children: every row that is not a parent's, in parent order
    kid = np.ones(len(cat), dtype=bool)
    kid[prow] = False
    krow = np.flatnonzero(kid)
    parent_ids = np.array(ids, dtype=np.int64)[done]
    next_id = (max(ids) if ids else 0) + 1
    _fill_children(cat, krow, outs, parent_ids, stats.masked_fraction[done], next_id, kind)
    _fill_child_errors_and_metrics(cat, krow, outs, nb)
    return cat


def _fill(cat: np.ndarray, rows: Any, **columns: Any) -> None:
    """``cat[name][rows] = values`` for every column given."""
    for name, values in columns.items():
        cat[name][rows] = values


def _fill_parents(
    cat: np.ndarray,
    prow: np.ndarray,
    checked: list[tuple[Any, tuple, np.ndarray, np.ndarray]],
    ids: list[int],
    boxes: np.ndarray,
    stats: ParentStats,
    reasons: list[str],
) -> None:
    """Every parent row's columns as if it had not been deblended, and its skip flags."""
    first = np.array([c[3][0] for c in checked], dtype=np.int64).reshape(-1, 2) + boxes[:, :2]
    _fill(
        cat,
        prow,
        id=ids,
        parent_id=-1,
        is_parent=True,
        n_peaks=[len(c[3]) for c in checked],
        peak_id=-1,
        peak_y=first[:, 0],
        peak_x=first[:, 1],
        centroid_y=stats.centroid[:, 0],
        centroid_x=stats.centroid[:, 1],
        box_y0=boxes[:, 0],
        box_x0=boxes[:, 1],
        box_height=boxes[:, 2],
        box_width=boxes[:, 3],
        flux_model=np.nan,
        flux_conserved=np.nan,
        flux_footprint=stats.flux,
        flux_unassigned=np.nan,
        masked_fraction=stats.masked_fraction,
        deblender="none",
        iterations=-1,
        loss=np.nan,
        skipped=[bool(r) for r in reasons],
        flux_conserved_err=np.nan if stats.flux_err is None else stats.flux_err,
        flux_model_err=np.nan,
        chi2_reduced=np.nan,
        deblend_runtime=np.nan,
        **{name: np.nan for name in _BAND_METRICS},
    )
    for flag in (f for f in FLAGS if f.startswith("skipped_")):
        _fill(cat, prow, **{flag: [r == flag for r in reasons]})


def _fill_fitted_parents(
    cat: np.ndarray,
    rows: np.ndarray,
    outs: list[Outcome],
    n_kids: np.ndarray,
    footprint_flux: np.ndarray,
    nb: int,
) -> None:
    """The fit columns of the parents a deblender returned children for (``outs``)."""
    # per-parent sums of the children, each as before (bit-identical)
    f_cons = np.array([o.flux_conserved.sum(axis=0) for o in outs]).reshape(-1, nb)
    _fill(
        cat,
        rows,
        n_children=n_kids,
        n_components=[int(o.n_components.sum()) for o in outs],
        iterations=[o.iterations for o in outs],
        loss=[o.loss for o in outs],
        converged=[o.converged for o in outs],
        fallback=[o.fallback for o in outs],
        error=[o.error for o in outs],
        flux_model=np.array([o.flux_model.sum(axis=0) for o in outs]).reshape(-1, nb),
        flux_conserved=f_cons,
        flux_unassigned=footprint_flux - f_cons,
        chi2_reduced=[o.chi2_reduced for o in outs],
        deblend_runtime=[o.runtime for o in outs],
    )


def _fill_children(
    cat: np.ndarray,
    krow: np.ndarray,
    outs: list[Outcome],
    parent_ids: np.ndarray,
    masked_fraction: np.ndarray,
    next_id: int,
    kind: str,
) -> None:
    """The children's rows (``krow``, in parent order) of the parents of ``outs``, numbered
    from ``next_id``; their parents' ids and masked fractions are ``parent_ids`` and
    ``masked_fraction``."""
    n = np.array([len(o.peak_id) for o in outs], dtype=np.int64)
    peaks = np.concatenate([o.peaks for o in outs])
    cents = np.concatenate([o.centroids for o in outs])
    cons = np.concatenate([o.flux_conserved for o in outs])
    _fill(
        cat,
        krow,
        id=np.arange(next_id, next_id + len(krow)),
        parent_id=np.repeat(parent_ids, n),
        n_peaks=1,
        n_components=np.concatenate([o.n_components for o in outs]),
        peak_id=np.concatenate([o.peak_id for o in outs]),
        peak_y=peaks[:, 0],
        peak_x=peaks[:, 1],
        centroid_y=cents[:, 0],
        centroid_x=cents[:, 1],
        box_y0=-1,
        box_x0=-1,
        box_height=-1,
        box_width=-1,
        flux_model=np.concatenate([o.flux_model for o in outs]),
        flux_conserved=cons,
        flux_footprint=np.nan,
        flux_unassigned=np.nan,
        masked_fraction=np.repeat(masked_fraction, n),
        deblender=kind,
        iterations=np.repeat([o.iterations for o in outs], n),
        loss=np.repeat([o.loss for o in outs], n),
        converged=np.repeat([o.converged for o in outs], n),
        fallback=np.repeat([o.fallback for o in outs], n),
        zero_flux=np.all(cons == 0, axis=1),
        child_flags=[s for o in outs for s in o.child_flags],
        deblend_runtime=np.repeat([o.runtime for o in outs], n),
    )


def _fill_child_errors_and_metrics(
    cat: np.ndarray, krow: np.ndarray, outs: list[Outcome], nb: int
) -> None:
    """The children's flux errors and metrics columns (NaN where a deblender has none)."""

    def stacked(get: Callable[[Outcome, int], Any], shape: tuple, fill: Any) -> np.ndarray:
        parts = []
        for o in outs:
            n = len(o.peak_id)
            v = get(o, n)
            parts.append(
                np.full((n, *shape), fill) if v is None else np.asarray(v).reshape(n, *shape)
            )
        return np.concatenate(parts) if parts else np.zeros((0, *shape))

    cat["flux_conserved_err"][krow] = stacked(lambda o, n: o.flux_conserved_err, (nb,), np.nan)
    cat["flux_model_err"][krow] = stacked(lambda o, n: o.flux_model_err, (nb,), np.nan)

    def metric(name: str) -> Callable[[Outcome, int], Any]:
        return lambda o, n: None if o.metrics is None else o.metrics.get(name)

    for name in _BAND_METRICS:
        cat[name][krow] = stacked(metric(name), (nb,), np.nan)
    cat["deblend_zeroFlux"][krow] = stacked(metric("deblend_zeroFlux"), (nb,), False)
    cat["deblend_edgePixels"][krow] = stacked(metric("deblend_edgePixels"), (), False)
    cat["chi2_reduced"][krow] = stacked(metric("chi2_reduced"), (), np.nan)


def to_table(cat: np.ndarray, bands: tuple[str, ...]) -> Any:
    try:
        from astropy.table import Table
    except ImportError:
        return cat
    table = Table(cat)
    table.meta["BANDS"] = ",".join(bands)
    return table


#: Description of every catalog column (see the module docstring).
COLUMN_DESCRIPTIONS: dict[str, str] = {
    "id": "Source id: parents first (their own ids), children after the largest parent id",
    "parent_id": "Id of the parent of a child; -1 for a parent",
    "is_parent": "True for a parent (a footprint with its peaks), False for a child",
    "n_peaks": "Number of peaks in the parent (1 for a child)",
    "n_children": "Number of children the deblender returned for the parent",
    "n_components": "Number of model components (multi-band sources)",
    "peak_id": "Index of the child's peak in its parent's peak list; -1 for a parent",
    "peak_y": "Peak row, 0-based (a parent's first peak)",
    "peak_x": "Peak column, 0-based (a parent's first peak)",
    "centroid_y": "Flux-weighted row, 0-based (child: model; parent: footprint image)",
    "centroid_x": "Flux-weighted column, 0-based (child: model; parent: footprint image)",
    "ra": "Right ascension of the centroid (ICRS or the WCS's frame)",
    "dec": "Declination of the centroid (ICRS or the WCS's frame)",
    "box_y0": "First row of the parent's bounding box; -1 for a child",
    "box_x0": "First column of the parent's bounding box; -1 for a child",
    "box_height": "Rows of the parent's bounding box; -1 for a child",
    "box_width": "Columns of the parent's bounding box; -1 for a child",
    "flux_model": "Model flux per band (single band: the template's sum)",
    "flux_conserved": "Flux per band of the image re-apportioned by the models (a lone "
    "source: its footprint flux)",
    "flux_footprint": "Parent's image summed over its footprint per band; NaN for a child",
    "flux_unassigned": (
        "Parent's footprint flux no child received (multi band: outside the children's "
        "footprint, DeblendConfig.conserved_thresh), per band"
    ),
    "masked_fraction": "Share of the parent footprint's pixels without data in any band",
    "deblender": "Deblender that ran on the parent: multi, single or none",
    "iterations": "Fit iterations of the multi-band deblender (-1: not fitted)",
    "loss": "Final loss 0.5 * chi^2 of the multi-band fit",
    "converged": "The multi-band fit converged",
    "skipped": "The parent was not deblended (one of the skipped_* flags is set)",
    "skipped_isolated": "Skipped: a single peak (CatalogConfig.skip_isolated)",
    "skipped_parent_too_big": "Skipped: the parent is too big",
    "skipped_masked": "Skipped: too much of the footprint has no data",
    "skipped_too_many_peaks": "Skipped: the parent has too many peaks",
    "failed": "The deblender failed on the parent",
    "error": "Exception class of a failed parent",
    "zero_flux": "A child that received no conserved flux",
    "child_flags": "Single-band deblender's flags of the child, comma separated",
    "deblender_flags": "The parent's flags as its deblender reported them, comma separated",
    "fallback": "The multi-band fit raised and the parent got the fallback model (a PSF "
    "model per peak); error holds the exception class",
    **{name: text for name, (_, text) in CATALOG_COLUMNS.items()},
}

_PIXEL_COLUMNS = (
    "peak_y",
    "peak_x",
    "centroid_y",
    "centroid_x",
    "box_y0",
    "box_x0",
    "box_height",
    "box_width",
)


def celestial_wcs(wcs: Any) -> Any:
    """The celestial part of an astropy WCS (None for None); ValueError without one."""
    if wcs is None:
        return None
    if not hasattr(wcs, "all_pix2world") or not hasattr(wcs, "celestial"):
        raise TypeError(f"wcs must be an astropy.wcs.WCS, got {type(wcs).__name__}")
    if not getattr(wcs, "has_celestial", False):
        raise ValueError("wcs has no celestial (RA/Dec) axes")
    return wcs.celestial


def describe_columns(table: Any, flux_unit: Any, celestial: Any) -> Any:
    """Units and descriptions on every column of a catalog table, and ``ra``/``dec``
    (degrees) at the centroids when a celestial WCS is given."""
    if isinstance(table, np.ndarray):
        if celestial is not None:
            raise ImportError("RA/Dec columns need astropy: pip install cdeblend[io]")
        return table
    import astropy.units as u

    if celestial is not None:
        x = np.asarray(table["centroid_x"], dtype=np.float64)
        y = np.asarray(table["centroid_y"], dtype=np.float64)
        world = celestial.all_pix2world(np.stack([x, y], axis=1), 0)
        at = table.colnames.index("centroid_x") + 1
        table.add_columns(
            [world[:, celestial.wcs.lng], world[:, celestial.wcs.lat]],
            indexes=[at, at],
            names=["ra", "dec"],
        )
    unit = None if flux_unit is None else u.Unit(flux_unit, parse_strict="silent")
    for name in table.colnames:
        col = table[name]
        col.description = COLUMN_DESCRIPTIONS.get(name, col.description)
        if name in _PIXEL_COLUMNS:
            col.unit = u.pix
        elif name in ("ra", "dec"):
            col.unit = u.deg
        elif name.startswith("flux_") and unit is not None:
            col.unit = unit
        elif name in CATALOG_COLUMNS:
            kind = CATALOG_COLUMNS[name][0]
            if kind == "image" and unit is not None:
                col.unit = unit
            elif kind not in ("", "image"):
                col.unit = u.Unit(kind)
    return table
