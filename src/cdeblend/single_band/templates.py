"""The templates of peaks that are not PSF-like (docs/spec/single_band.md 3.2-3.6).

A peak's 180-degree symmetric template (:func:`symmetric_template`, patched at EDGE pixels
with ``edge_handling="noclip"``), extended with a PSF-shaped ramp where it is cut off at the
footprint edge (:class:`Ramp`), median smoothed (:func:`median_smooth`), made monotonic
(:func:`make_monotonic`) and trimmed to its non-zero span (:func:`clip_to_nonzero`). Peaks
are in frame coordinates; every function works on a :class:`~.frame.Template` in place or
returns a new one.
"""

from __future__ import annotations

import numpy as np

from .. import _detection_cy, _monotonic_cy, _symmetric_cy
from .frame import Box, Frame, Template, on_box, paste
from .psf import PsfImages

__all__ = [
    "RAMP_SIGMA",
    "Ramp",
    "clip_to_nonzero",
    "make_monotonic",
    "median_smooth",
    "patch_edges",
    "sum_templates",
    "symmetric_template",
    "symmetry_shift",
]

#: Ramp trigger: an edge pixel at or above this many sigma1.
RAMP_SIGMA = 3.0


# ------------------------------------------------------------------------ 3.2 symmetric
def symmetric_template(
    frame: Frame, py: int, px: int, half: tuple[int, int] = (0, 0)
) -> Template | None:
    """The template of the peak (py, px) on the parent box, symmetric about the peak shifted
    by ``half`` half-pixels per axis (each -1, 0 or 1; see :func:`symmetry_shift`), or None
    when it fails."""
    pb = frame.pbox
    cy2, cx2 = 2 * py + half[0], 2 * px + half[1]
    y0 = max(pb[0], cy2 - (pb[0] + pb[2] - 1))
    y1 = min(pb[0] + pb[2] - 1, cy2 - pb[0])
    x0 = max(pb[1], cx2 - (pb[1] + pb[3] - 1))
    x1 = min(pb[1] + pb[3] - 1, cx2 - pb[1])
    if y1 < y0 or x1 < x0 or not frame.fp[py, px]:
        return None
    h, w = y1 - y0 + 1, x1 - x0 + 1
    vals = np.empty((h, w), dtype=np.float64)
    sym = np.empty((h, w), dtype=np.uint8)
    bbox = np.empty(4, dtype=np.int64)
    n = _symmetric_cy.symmetric_template(frame.image, frame.fp, cy2, cx2, y0, x0, vals, sym, bbox)
    if n == 0:
        return None
    t = Template((y0, x0, h, w), vals, sym, "symmetric")
    t.crop(*(int(v) for v in bbox))
    return t


def symmetry_shift(offset: np.ndarray) -> tuple[int, int]:
    """Half-pixels (-1, 0 or 1 per axis) from the peak pixel to the symmetry centre nearest
    the sub-pixel ``offset`` (centre minus peak, each within half a pixel).

    A template can only be mirrored pixel onto pixel about a pixel or a point half-way
    between two pixels. A star centred 0.4 px off its peak pixel mirrored about that pixel
    pairs its bright neighbour pixel with a faint one and keeps the faint one's value: the
    template's core comes out flat and its least-squares weight large (README, "Defaults").
    """
    dy, dx = (int(np.clip(np.rint(2.0 * float(v)), -1, 1)) for v in offset)
    return dy, dx


def patch_edges(
    frame: Frame, t: Template, py: int, px: int, edge_bit: int, half: tuple[int, int] = (0, 0)
) -> bool:
    """ "noclip": add parent pixels whose mirror is off the parent box, when the template
    touches EDGE-masked pixels; returns whether it did (the peak is then ``patched``)."""
    y0, x0, h, w = t.box
    msub = frame.mask[y0 : y0 + h, x0 : x0 + w]
    if not np.any((msub & edge_bit)[t.fp != 0]):
        return False
    pb = frame.pbox
    sl = (slice(pb[0], pb[0] + pb[2]), slice(pb[1], pb[1] + pb[3]))
    yy, xx = np.mgrid[sl]
    my, mx = 2 * py + half[0] - yy, 2 * px + half[1] - xx
    off = (my < pb[0]) | (my >= pb[0] + pb[2]) | (mx < pb[1]) | (mx >= pb[1] + pb[3])
    add = off & (frame.fp[sl] != 0)
    if not add.any():
        return True
    ay, ax = np.nonzero(add)
    ay, ax = ay + pb[0], ax + pb[1]
    ny0, nx0 = min(y0, int(ay.min())), min(x0, int(ax.min()))
    ny1, nx1 = max(y0 + h, int(ay.max()) + 1), max(x0 + w, int(ax.max()) + 1)
    nbox = (ny0, nx0, ny1 - ny0, nx1 - nx0)
    vals = on_box(t.values, t.box, nbox)
    tfp = on_box(t.fp, t.box, nbox)
    vals[ay - ny0, ax - nx0] = np.maximum(frame.image[ay, ax], 0.0)
    tfp[ay - ny0, ax - nx0] = 1
    t.box, t.values, t.fp = nbox, vals, tfp
    return True


# ----------------------------------------------------------------------------- 3.3 ramp
class Ramp:
    """Extends templates cut off at the footprint edge with a PSF-shaped ramp.

    Parameters
    ----------
    frame : Frame
        The working frame (grown by ``s`` pixels around the parent box).
    psf : PsfImages
        The PSF, read once at the centre of ``pbox``.
    pbox : tuple of int
        The parent box in the image frame.
    s : int
        The ramp's reach in pixels.
    sigma1 : float
        Background noise: a template ramps when an edge pixel reaches ``RAMP_SIGMA`` sigma1.
    """

    def __init__(self, frame: Frame, psf: PsfImages, pbox: Box, s: int, sigma1: float) -> None:
        self.frame = frame
        self.psf = psf
        self.pbox = pbox
        self.s = s
        self.sigma1 = sigma1
        # The PSF cut-out and the dilated footprint, made on the first ramp.
        self.psf_hat: np.ndarray | None = None
        self.pdil: np.ndarray | None = None

    def _prepare(self) -> None:
        fr = self.frame
        s = self.s
        # The normalised PSF cut to offsets within [-s, s], at the parent box's centre.
        py0, px0, ph, pw = self.pbox
        cy, cx = int((py0 + py0 + ph - 1) / 2), int((px0 + px0 + pw - 1) / 2)
        arr, _, _ = self.psf.image(float(cy), float(cx))
        hh, hw = arr.shape[0] // 2, arr.shape[1] // 2
        ry, rx = min(hh, s), min(hw, s)
        hat = np.array(arr[hh - ry : hh + ry + 1, hw - rx : hw + rx + 1], dtype=np.float64)
        mx = hat.max()
        self.psf_hat = np.ascontiguousarray(hat / mx if mx > 0 else hat)
        self.pdil = np.empty((fr.h, fr.w), dtype=np.uint8)
        prefix = np.empty((fr.h, fr.w + 1), dtype=np.int32)
        _detection_cy.dilate_disc(fr.fp, s, self.pdil, prefix)

    def apply(
        self, t: Template, py: int, px: int, half: tuple[int, int] = (0, 0)
    ) -> Template | None:
        """The ramped template of the peak (py, px) (symmetric about the peak shifted by
        ``half`` half-pixels), or None when ``t`` needs no ramp."""
        fr = self.frame
        if _symmetric_cy.edge_max(t.values, t.fp) < RAMP_SIGMA * self.sigma1:
            return None
        s = self.s
        if self.psf_hat is None:
            self._prepare()
        by0, bx0 = t.box[0] - s, t.box[1] - s
        bh, bw = t.box[2] + 2 * s, t.box[3] + 2 * s
        bbox = (by0, bx0, bh, bw)
        ramp = np.zeros((bh, bw), dtype=np.float64)
        _symmetric_cy.ramp_image(t.values, t.fp, self.psf_hat, s, s, ramp)
        pdil = on_box(self.pdil, (0, 0, fr.h, fr.w), bbox)
        inimg = on_box(fr.inimg, (0, 0, fr.h, fr.w), bbox)
        img = on_box(fr.image, (0, 0, fr.h, fr.w), bbox)
        J = np.where((pdil != 0) & (inimg != 0), img, 0.0)
        J = np.where(J == 0, ramp, J)
        py, px = py - by0, px - bx0
        vals = np.empty((bh, bw), dtype=np.float64)
        sym = np.empty((bh, bw), dtype=np.uint8)
        bb = np.empty(4, dtype=np.int64)
        cy2, cx2 = 2 * py + half[0], 2 * px + half[1]
        J = np.ascontiguousarray(J)
        _symmetric_cy.symmetric_template(J, pdil, cy2, cx2, 0, 0, vals, sym, bb)
        sym &= inimg
        vals *= sym
        if not sym.any():
            return None
        ys, xs = np.nonzero(sym)
        nt = Template(bbox, vals, sym, t.kind)
        nt.crop(int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max()))
        return nt


# ---------------------------------------------------------------------------- 3.4-3.6
def median_smooth(t: Template, hsz: int) -> None:
    """Median filter the template's interior with a (2 hsz + 1)^2 box, in place."""
    if hsz == 0 or t.box[2] < 2 * hsz + 1 or t.box[3] < 2 * hsz + 1:
        return
    out = np.empty_like(t.values)
    work = np.empty((2 * hsz + 1) ** 2, dtype=np.float64)
    _symmetric_cy.median_smooth(t.values, hsz, out, work, t.fp)
    out *= t.fp
    t.values = out


def make_monotonic(t: Template, py: int, px: int) -> None:
    """The shadow-casting monotonic projection about the peak (py, px), in place."""
    py, px = py - t.box[0], px - t.box[1]
    scratch = np.empty_like(t.values)
    _monotonic_cy.shadow_monotonic(t.values, py, px, scratch)
    t.monotonic = True


def clip_to_nonzero(t: Template) -> None:
    """Cut the template's box to its non-zero span (an all-zero template stays, zeroed)."""
    bb = np.empty(4, dtype=np.int64)
    n = _symmetric_cy.clip_to_nonzero(t.values, t.fp, bb)
    if n > 0:
        t.crop(*(int(v) for v in bb))
    else:
        t.values[:] = 0.0


def sum_templates(templates: list[Template], shape: tuple[int, int]) -> np.ndarray:
    """The sum of ``templates`` on a frame of ``shape`` (float64)."""
    total = np.zeros(shape)
    for t in templates:
        paste(total, t.values, t.box)
    return total
