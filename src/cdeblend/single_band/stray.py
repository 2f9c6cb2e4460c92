"""Stray flux: the pixels of the footprint that no template claims (docs/spec/
single_band.md 3.9: the positive ones; all of them with ``stray_flux_negative``), handed to
the children by ``SingleBandConfig.stray_flux_rule``.

Coordinates are those of the parent box; templates are given with their boxes there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from .. import _apportion_cy
from .config import POINT_RULES, SingleBandConfig
from .frame import Template, on_box

__all__ = ["Stray", "footprint_on_parent", "hand_out_stray", "nearest_footprint", "stray_shares"]


class Stray(NamedTuple):
    """The stray pixels ``(y, x)`` and the ``(n_templates, n_pixels)`` values given to each
    template's child."""

    y: np.ndarray
    x: np.ndarray
    shares: np.ndarray


def hand_out_stray(
    cfg: SingleBandConfig,
    image: np.ndarray,
    unclaimed: np.ndarray,
    templates: Sequence[Template],
    boxes: np.ndarray,
    is_psf: np.ndarray,
    peaks: np.ndarray,
    fp_box: np.ndarray,
) -> Stray | None:
    """Share the ``unclaimed`` pixels of ``image`` (the positive ones only unless
    ``cfg.stray_flux_negative``; None when there are none).

    ``boxes`` (n, 4) are the templates' boxes, ``is_psf`` (n,) whether each is a PSF
    template, ``peaks`` (n, 2) their peaks and ``fp_box`` the footprint, all on the parent box.
    """
    cy, cx = np.nonzero(unclaimed & ((image != 0) if cfg.stray_flux_negative else (image > 0)))
    if not cy.size:
        return None
    shares = stray_shares(
        cfg,
        templates,
        boxes,
        is_psf,
        peaks,
        fp_box,
        cy.astype(np.int64),
        cx.astype(np.int64),
        image[cy, cx],
    )
    return Stray(cy, cx, shares)


def stray_shares(
    cfg: SingleBandConfig,
    templates: Sequence[Template],
    boxes: np.ndarray,
    is_psf: np.ndarray,
    peaks: np.ndarray,
    fp_box: np.ndarray,
    cy: np.ndarray,
    cx: np.ndarray,
    values: np.ndarray,
) -> np.ndarray:
    """(n_templates, n_candidates) stray values given to each template's child."""
    n = len(templates)
    is_psf8 = np.ascontiguousarray(is_psf.astype(np.uint8))
    contrib = np.zeros((n, cy.size), dtype=np.float64)
    rule = cfg.stray_flux_rule
    mode = POINT_RULES.index(cfg.stray_flux_to_point_sources)
    if rule == "r-to-peak":
        _apportion_cy.r_to_peak(cy, cx, np.ascontiguousarray(peaks, dtype=np.int64), contrib)
    elif rule == "r-to-footprint":
        for k, t in enumerate(templates):
            fpk = footprint_on_parent(t, boxes[k], fp_box)
            if not fpk.any():
                contrib[k] = 1.0 / (1.0 + 1e12)
                continue
            d = ndimage.distance_transform_edt(~fpk)
            d2 = np.rint(d[cy, cx] ** 2)
            contrib[k] = 1.0 / (1.0 + d2)
    else:  # nearest-footprint
        near = nearest_footprint(templates, boxes, is_psf, fp_box, cy, cx, mode == 1)
        if near is None and mode == 0:
            near = nearest_footprint(templates, boxes, is_psf, fp_box, cy, cx, True)
        if near is not None:
            ok = near >= 0
            contrib[near[ok], np.flatnonzero(ok)] = 1.0
    out = np.empty_like(contrib)
    _apportion_cy.assign_stray(
        np.ascontiguousarray(values, dtype=np.float64),
        contrib,
        is_psf8,
        mode,
        float(cfg.clip_stray_flux_fraction),
        out,
    )
    return out


def footprint_on_parent(t: Template, box, fp_box: np.ndarray) -> np.ndarray:
    """bool footprint of template ``t`` (on ``box``) within the parent footprint."""
    H, W = fp_box.shape
    fpk = on_box(t.fp, tuple(int(v) for v in box), (0, 0, H, W)) != 0
    return fpk & (fp_box != 0)


def nearest_footprint(
    templates: Sequence[Template],
    boxes: np.ndarray,
    is_psf: np.ndarray,
    fp_box: np.ndarray,
    cy: np.ndarray,
    cx: np.ndarray,
    use_psf: bool,
) -> np.ndarray | None:
    """Index (into ``templates``) of the L1-nearest entered footprint at each candidate
    (PSF templates' only with ``use_psf``); None when no footprint is entered."""
    H, W = fp_box.shape
    index = np.full((H, W), -1, dtype=np.int64)
    dist = np.full((H, W), H + W, dtype=np.int64)
    entered = False
    for k, t in enumerate(templates):
        if is_psf[k] and not use_psf:
            continue
        fpk = footprint_on_parent(t, boxes[k], fp_box)
        if fpk.any():
            entered = True
            index[fpk] = k
            dist[fpk] = 0
    if not entered:
        return None
    _apportion_cy.nearest_footprint(index, dist)
    return index[cy, cx]
