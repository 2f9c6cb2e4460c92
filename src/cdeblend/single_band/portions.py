"""The image split among the children (docs/spec/single_band.md 3.9).

Each pixel of the parent footprint is shared among the templates in proportion to their
values there (:func:`apportion_templates`); a child's conserved image is its share plus the
stray flux it received (:func:`conserved_image`), with the standard deviations of the
children's fluxes from the variance (:func:`flux_errors`). Work is on the parent box only:
templates outside it never receive flux.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .. import _apportion_cy
from .frame import Box, Frame, Template, on_box, overlap
from .stray import Stray

__all__ = ["Portions", "apportion_templates", "conserved_image", "flux_errors"]


@dataclass
class Portions:
    """The parent box's image shared among the templates.

    Attributes
    ----------
    image : numpy.ndarray
        (h, w) float64 image on the parent box.
    mask : numpy.ndarray
        (h, w) uint8 parent footprint.
    boxes : numpy.ndarray
        (n, 4) int64 template boxes on the parent box.
    flat, offsets : numpy.ndarray
        The templates' values concatenated, template k at ``flat[offsets[k]:offsets[k+1]]``.
    template_sum : numpy.ndarray
        (h, w) sum of the templates.
    portion : numpy.ndarray
        Each template's share of the image, laid out as ``flat``.
    """

    image: np.ndarray
    mask: np.ndarray
    boxes: np.ndarray
    flat: np.ndarray
    offsets: np.ndarray
    template_sum: np.ndarray
    portion: np.ndarray

    def unclaimed(self) -> np.ndarray:
        """bool pixels of the footprint that no template claims."""
        return (self.mask != 0) & (self.template_sum == 0)

    def box(self, k: int) -> Box:
        """Template k's box as Python ints."""
        return tuple(int(v) for v in self.boxes[k])


def apportion_templates(
    frame: Frame, fp_box: np.ndarray, templates: Sequence[Template]
) -> Portions:
    """Share the image of the parent footprint ``fp_box`` among ``templates``."""
    pb = frame.pbox
    pimg = np.ascontiguousarray(frame.image[pb[0] : pb[0] + pb[2], pb[1] : pb[1] + pb[3]])
    pmask = np.ascontiguousarray(fp_box.view(np.uint8))
    boxes = np.array(
        [(t.box[0] - pb[0], t.box[1] - pb[1], t.box[2], t.box[3]) for t in templates],
        dtype=np.int64,
    ).reshape(-1, 4)
    vals = [t.values for t in templates]
    flat = np.concatenate([v.ravel() for v in vals]) if vals else np.zeros(0)
    offsets = np.zeros(len(templates) + 1, dtype=np.int64)
    if vals:
        offsets[1:] = np.cumsum([v.size for v in vals])
    tsum = np.zeros((1,) + pimg.shape, dtype=np.float64)
    _apportion_cy.template_sum(flat, offsets, boxes, pmask, tsum)
    portion = np.empty_like(flat)
    _apportion_cy.apportion(pimg[None], tsum, flat, offsets, boxes, pmask, portion)
    return Portions(pimg, pmask, boxes, flat, offsets, tsum[0], portion)


def conserved_image(
    parts: Portions, k: int, stray: Stray | None, peak: tuple[int, int]
) -> tuple[np.ndarray, Box, bool]:
    """Template k's child: (conserved image, its box, whether it has stray flux).

    The box covers the share on the parent box and the stray pixels received; a child with
    neither gets the 1 x 1 box of its ``peak`` (parent-box coordinates).
    """
    b = parts.box(k)
    por = parts.portion[parts.offsets[k] : parts.offsets[k + 1]].reshape(b[2], b[3])
    ov = overlap(b, (0, 0) + parts.mask.shape)
    cbox = None if ov is None else (ov[0], ov[2], ov[1] - ov[0], ov[3] - ov[2])
    sy = sx = sv = None
    if stray is not None:
        got = stray.shares[k] != 0  # negative stray pixels are given too
        if got.any():
            sy, sx, sv = stray.y[got], stray.x[got], stray.shares[k][got]
            y0, y1 = int(sy.min()), int(sy.max()) + 1
            x0, x1 = int(sx.min()), int(sx.max()) + 1
            if cbox is not None:
                y0, x0 = min(y0, cbox[0]), min(x0, cbox[1])
                y1, x1 = max(y1, cbox[0] + cbox[2]), max(x1, cbox[1] + cbox[3])
            cbox = (y0, x0, y1 - y0, x1 - x0)
    if cbox is None:
        cbox = (peak[0], peak[1], 1, 1)
    cons = on_box(por, b, cbox)
    if sv is not None:
        cons[sy - cbox[0], sx - cbox[1]] += sv
    return cons, cbox, sv is not None


def flux_errors(
    frame: Frame, parts: Portions, stray: Stray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n,) standard deviations of the children's conserved fluxes and of their templates'
    fluxes from the variance on the parent box, and the deblending uncertainties of the
    conserved fluxes (see :class:`~cdeblend.single_band.Child`)."""
    from ..apportion import FlatStack
    from ..metrics import conserved_flux_errors, deblend_flux_errors, fisher_flux_errors

    pb = frame.pbox
    sl = (slice(pb[0], pb[0] + pb[2]), slice(pb[1], pb[1] + pb[3]))
    var = np.asarray(frame.variance[sl], dtype=np.float64)
    good = np.isfinite(var) & (var > 0) & (parts.mask != 0)
    if frame.mask is not None:
        good &= ~np.asarray(frame.mask[sl], dtype=bool)
    var = np.where(good, var, 0.0)
    n = len(parts.boxes)
    if n == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    flat = np.ascontiguousarray(parts.flat, dtype=np.float64)
    stack = FlatStack(flat, parts.boxes, 1)
    cons2 = conserved_flux_errors(stack, var[None], parts.mask)[:, 0] ** 2
    if stray is not None:
        # a stray pixel's share is the part of its value the child received
        cy, cx, pimg = stray.y, stray.x, parts.image
        share = stray.shares / np.where(pimg[cy, cx] != 0, pimg[cy, cx], 1.0)[None]
        cons2 += (share**2 * var[cy, cx][None]).sum(axis=1)
    ivar = np.divide(1.0, var, out=np.zeros_like(var), where=var > 0)
    tmpl = fisher_flux_errors(stack, ivar[None], stack.sums()[:, 0], np.arange(n), n)
    deblend = deblend_flux_errors(stack, good[None], parts.mask)[:, 0]
    return np.sqrt(cons2), tmpl[:, 0], deblend
