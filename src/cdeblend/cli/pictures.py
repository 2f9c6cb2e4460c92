"""Pictures of a ``cdeblend deblend`` run: the field and the panels of the brightest parents
(multi band: rebuilt from the model file; single band: the templates re-run), and the
panels of one parent that ``cdeblend show`` draws."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..box import place
from .tables import print_table, with_progress

if TYPE_CHECKING:  # pragma: no cover
    from ..model_data import ModelData
    from ..observation import Observation

logger = logging.getLogger("cdeblend.cli")


def draw_run(
    images: np.ndarray,
    variance: np.ndarray,
    psfs: np.ndarray,
    mask: np.ndarray | None,
    catalog: object,
    model_data: ModelData,
    kind: str,
    out: Path,
    args: argparse.Namespace,
    parents: Sequence,
) -> None:
    """field.png and the panels of the ``--max-plots`` brightest parents."""
    import matplotlib.pyplot as plt

    from ..display import plot_field

    images, mask = drawable(images, mask)
    order = _plot_order(catalog, args.max_plots)
    if kind == "multi":
        # the variance: the children's footprint is measured in noise units
        observation = model_data.observation(
            images,
            variance,
            weights=None if mask is None else (~mask2d(mask, images)).astype(images.dtype),
        )
        total = _field_model(model_data, observation)
        for pid in with_progress(order, "panels", not args.quiet):
            show_parent(observation, model_data, pid, out, quiet=True)
    else:
        total, panels = _single_band_models(
            images[0], variance[0], psfs[0], mask, catalog, parents, set(order), not args.quiet
        )
        for pid in order:
            if pid in panels:
                _show_single_parent(images[0], total, panels[pid], pid, out)
    fig = plot_field(
        images,
        total[None] if total.ndim == 2 else total,
        catalog,
        unmodelled=_unmodelled(parents, catalog, images.shape[1:]),
        model_name="model" if kind == "multi" else "sum of templates",
    )
    fig.savefig(out / "field.png", dpi=100)
    plt.close(fig)


def _plot_order(catalog: object, max_plots: int) -> list[int]:
    """Ids of the fitted parents with children, brightest (summed footprint flux) first,
    then largest; at most ``max_plots``."""
    parent = np.asarray(catalog["is_parent"], dtype=bool)
    ok = parent & (np.asarray(catalog["n_children"]) > 0)
    ids = np.asarray(catalog["id"])[ok]
    if ids.size == 0:
        return []
    flux = np.asarray(catalog["flux_footprint"], dtype=float).reshape(len(parent), -1)
    flux = np.nansum(flux[ok], axis=1)
    area = (np.asarray(catalog["box_height"]) * np.asarray(catalog["box_width"]))[ok]
    order = np.lexsort((-area, -flux))
    return [int(i) for i in ids[order][: max(int(max_plots), 0)]]


def _field_model(model_data: ModelData, observation: Observation) -> np.ndarray:
    """The sum of every stored blend's models convolved to the observed PSFs."""
    total = np.zeros(observation.shape)
    for pid, blend in model_data.blends.items():
        if blend.isolated or not blend.sources:
            continue
        y0, x0, h, w = blend.box
        models = model_data.rebuild(observation, pid).models()
        total[:, y0 : y0 + h, x0 : x0 + w] += models.sum(axis=0)
    return total


def _unmodelled(parents: Sequence, catalog: object, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: footprints of the parents without children (isolated, skipped, failed)."""
    with_kids = set(_child_ids(catalog))
    out = np.zeros(shape, dtype=bool)
    for p in parents:
        if int(p.id) not in with_kids:
            y0, x0, h, w = (int(v) for v in p.box)
            fp = np.ones((h, w), bool) if p.footprint is None else np.asarray(p.footprint, bool)
            out[y0 : y0 + h, x0 : x0 + w] |= fp
    return out


def drawable(images: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Images with no-data pixels (NaN, inf) set to 0 and added to the (B, H, W) mask:
    matplotlib's stretches fail on non-finite values, and the re-apportioned pictures must
    give those pixels no weight."""
    bad = ~np.isfinite(images)
    if not bad.any():
        return images, mask
    mask = bad if mask is None else (bad | mask2d(mask, images))
    return np.where(bad, 0.0, images), mask


def mask2d(mask: np.ndarray, images: np.ndarray) -> np.ndarray:
    """A (B, H, W) or (H, W) no-data mask as (B, H, W) bool."""
    m = np.asarray(mask) != 0
    return np.broadcast_to(m, images.shape) if m.ndim == 2 else m


def _child_ids(catalog: object) -> dict[int, dict[int, int]]:
    """parent id -> {index of the peak in the parent's peak list: the child's catalog id}."""
    parent = np.asarray(catalog["is_parent"], dtype=bool)
    out: dict[int, dict[int, int]] = {}
    for pid, peak_id, cid in zip(
        np.asarray(catalog["parent_id"])[~parent],
        np.asarray(catalog["peak_id"])[~parent],
        np.asarray(catalog["id"])[~parent],
        strict=True,
    ):
        out.setdefault(int(pid), {})[int(peak_id)] = int(cid)
    return out


def _single_band_models(
    image: np.ndarray,
    variance: np.ndarray,
    psf: np.ndarray,
    mask: np.ndarray | None,
    catalog: object,
    parents: Sequence,
    keep: set[int],
    progress: bool,
) -> tuple[np.ndarray, dict]:
    """Re-run the single-band deblender on every deblended parent for the field's model and
    the panels of the parents in ``keep``: its templates are not stored, and it is fast.

    The same cut-out, footprint, peaks and settings as the catalog's run give the same
    templates.
    """
    from ..single_band import SingleBandConfig, SingleBandDeblender

    deb = SingleBandDeblender(SingleBandConfig())
    total = np.zeros(image.shape)
    panels: dict[int, tuple] = {}
    kids = _child_ids(catalog)
    m2 = None if mask is None else np.any(np.asarray(mask).reshape(-1, *image.shape) != 0, 0)
    todo = [p for p in parents if int(p.id) in kids]
    for p in with_progress(todo, "models", progress):
        pid = int(p.id)
        y0, x0, h, w = (int(v) for v in p.box)
        sl = (slice(y0, y0 + h), slice(x0, x0 + w))
        try:
            res = deb.deblend(
                image[sl],
                variance[sl],
                psf,
                np.asarray(p.peaks) - (y0, x0),
                footprint=p.footprint,
                mask=None if m2 is None else m2[sl],
            )
        except (ValueError, TypeError) as err:
            logger.warning("parent %s: not redrawn for the pictures (%s)", pid, err)
            continue
        tmpl = np.zeros((len(res.children), h, w))
        cons = np.zeros((len(res.children), h, w))
        for i, ch in enumerate(res.children):
            # the template is already scaled by its weight (single_band/weights.py)
            tmpl[i] = place(ch.template, ch.template_box, (h, w))
            cons[i] = place(ch.conserved, ch.box, (h, w))
        total[sl] += tmpl.sum(axis=0)
        if pid in keep:
            labels = [str(kids[pid].get(int(c.index), "?")) for c in res.children]
            peaks_local = np.array([c.peak for c in res.children]).reshape(-1, 2)
            panels[pid] = ((y0, x0, h, w), tmpl, cons, peaks_local, labels)
    return total, panels


def _show_single_parent(
    image: np.ndarray, total: np.ndarray, panel: tuple, pid: int, out: Path
) -> None:
    """One PNG per child of a single-band parent: image, template, residual of all
    templates, conserved image."""
    import matplotlib.pyplot as plt

    from ..display import plot_single_band_child

    (y0, x0, h, w), tmpl, cons, peaks, labels = panel
    cut = image[y0 : y0 + h, x0 : x0 + w]
    for k in range(len(tmpl)):
        fig = plot_single_band_child(
            cut,
            tmpl[k],
            cons[k],
            path=out / f"parent{pid}_source{k}.png",
            peak=peaks[k],
            title=f"parent {pid}, child {k} (catalog id {labels[k]})",
            label=labels[k],
            total_template=total[y0 : y0 + h, x0 : x0 + w],
            origin=(y0, x0),
        )
        plt.close(fig)


def show_parent(
    observation: Observation,
    model_data: ModelData,
    pid: int,
    out: Path,
    quiet: bool = False,
    progress: bool = False,
) -> None:
    """Write one PNG per source of parent ``pid`` (observation, model, residual, conserved)."""
    import matplotlib.pyplot as plt

    from ..display import plot_source_panels

    blend = model_data.blends[pid]
    y0, x0, h, w = blend.box
    cut = observation.images[:, y0 : y0 + h, x0 : x0 + w]
    rebuilt = model_data.rebuild(observation, pid)
    models = rebuilt.models()
    conserved = rebuilt.conserved_images()
    total = models.sum(axis=0)
    rows = []
    for k in with_progress(range(len(blend.sources)), "show", progress):
        src = blend.sources[k]
        peak = src.components[0].peak if src.components else (y0 + h // 2, x0 + w // 2)
        fig = plot_source_panels(
            cut,
            models[k],
            total,
            conserved[k],
            path=out / f"parent{pid}_source{k}.png",
            peak=(peak[0] - y0, peak[1] - x0),
            title=f"parent {pid}, source {k} (catalog id {src.id})",
            label=str(src.id),
            origin=(y0, x0),
        )
        plt.close(fig)
        rows.append(
            [k, int(peak[0]), int(peak[1])] + [float(v) for v in conserved[k].sum(axis=(1, 2))]
        )
    if not quiet:
        header = ["source", "peak_y", "peak_x"] + [f"conserved_{b}" for b in model_data.bands]
        print_table(header, rows)
