"""Template weights and degenerate templates (docs/spec/single_band.md 3.7-3.8)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .frame import Frame, Template, on_box, overlap

__all__ = ["degenerate_template", "template_dots", "weight_templates"]


def weight_templates(
    frame: Frame,
    templates: Sequence[Template],
    min_weight: float | np.ndarray,
    by_variance: bool = False,
) -> None:
    """Scale the templates by a joint least-squares fit to the image on the parent
    footprint, each weight floored at ``min_weight`` (in place; a number, or one floor
    per template).

    With ``by_variance`` each pixel's row is divided by its noise (pixels without a
    positive variance are left out), so that the fit is the maximum-likelihood one.
    """
    pmask = frame.fp != 0
    if by_variance:
        pmask = pmask & (frame.variance > 0)
    cols = []
    for t in templates:
        cols.append(on_box(t.values, t.box, (0, 0, frame.h, frame.w))[pmask])
    A = np.stack(cols, axis=1)
    b = frame.image[pmask]
    if by_variance:
        inv_sigma = 1.0 / np.sqrt(frame.variance[pmask])
        A = A * inv_sigma[:, None]
        b = b * inv_sigma
    w = np.zeros(len(templates))
    if b.size:
        w, *_ = np.linalg.lstsq(A, b, rcond=-1)
    # a weight at or below 0 would leave its child without flux (config docstring)
    w = np.maximum(w, min_weight)
    for k, t in enumerate(templates):
        t.values = np.ascontiguousarray(t.values * w[k])
        t.weight *= float(w[k])


def template_dots(templates: Sequence[Template]) -> np.ndarray:
    """(n, n) dot products of the templates on their common footprints."""
    n = len(templates)
    D = np.zeros((n, n))
    for a in range(n):
        for b in range(a, n):
            ov = overlap(templates[a].box, templates[b].box)
            if ov is None:
                continue
            y0, y1, x0, x1 = ov
            ta, tb = templates[a], templates[b]
            sa = (slice(y0 - ta.box[0], y1 - ta.box[0]), slice(x0 - ta.box[1], x1 - ta.box[1]))
            sb = (slice(y0 - tb.box[0], y1 - tb.box[0]), slice(x0 - tb.box[1], x1 - tb.box[1]))
            both = (ta.fp[sa] != 0) & (tb.fp[sb] != 0)
            D[a, b] = D[b, a] = float(np.sum(ta.values[sa] * tb.values[sb] * both))
    return D


def degenerate_template(
    templates: Sequence[Template], is_psf: Sequence[bool], max_dot: float
) -> int | None:
    """Position (in ``templates``) of the template to drop from the first degenerate pair
    (cosine above ``max_dot``), or None.

    The first template ``a`` (in order) with an earlier partner ``b`` of cosine above
    ``max_dot`` (the most similar one) decides: of a PSF and a non-PSF template the PSF
    goes, else the one with the lower maximum (``b`` on a tie).
    """
    n = len(templates)
    if n < 2:
        return None
    D = template_dots(templates)
    for a in range(n):
        best, bestc = -1, -np.inf
        for b in range(a):
            prod = D[a, a] * D[b, b]
            c = D[a, b] / math.sqrt(prod) if prod > 0 else 0.0
            if c > max_dot and c > bestc:
                best, bestc = b, c
        if best < 0:
            continue
        pa, pb = is_psf[a], is_psf[best]
        if pa != pb:
            return a if pa else best
        ma = templates[a].values.max() if templates[a].values.size else -np.inf
        mb = templates[best].values.max() if templates[best].values.size else -np.inf
        return best if ma >= mb else a
    return None
