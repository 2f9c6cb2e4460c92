"""The working frame of one parent and the templates on it.

Every step works in the frame's coordinates: the parent's bounding box grown by the ramp's
reach, zero-padded where it leaves the image. Boxes are ``(y0, x0, height, width)`` tuples.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Box", "Frame", "Template", "on_box", "overlap", "paste"]

Box = tuple[int, int, int, int]


def overlap(a: Box, b: Box) -> tuple[int, int, int, int] | None:
    """Intersection of two boxes as (y0, y1, x0, x1) (exclusive ends), or None."""
    y0, x0 = max(a[0], b[0]), max(a[1], b[1])
    y1, x1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    if y0 >= y1 or x0 >= x1:
        return None
    return y0, y1, x0, x1


def on_box(arr: np.ndarray, arr_box: Box, box: Box) -> np.ndarray:
    """``arr`` (on ``arr_box``) cut or zero-padded to ``box``, in its own dtype."""
    out = np.zeros((box[2], box[3]), dtype=arr.dtype)
    ov = overlap(arr_box, box)
    if ov is not None:
        y0, y1, x0, x1 = ov
        out[y0 - box[0] : y1 - box[0], x0 - box[1] : x1 - box[1]] = arr[
            y0 - arr_box[0] : y1 - arr_box[0], x0 - arr_box[1] : x1 - arr_box[1]
        ]
    return out


def paste(dst: np.ndarray, src: np.ndarray, box: Box) -> None:
    """Add ``src`` (on ``box``) into ``dst``, skipping the part outside ``dst``."""
    y0, x0, h, w = box
    H, W = dst.shape
    ya, yb, xa, xb = max(y0, 0), min(y0 + h, H), max(x0, 0), min(x0 + w, W)
    if ya < yb and xa < xb:
        dst[ya:yb, xa:xb] += src[ya - y0 : yb - y0, xa - x0 : xb - x0]


class Frame:
    """The working frame: the parent's box grown by ``grow`` pixels (zero-padded).

    Attributes
    ----------
    y0, x0, h, w : int
        The frame's box in the image.
    image, variance : numpy.ndarray
        float64 cut-outs (0 outside the image).
    mask : numpy.ndarray or None
        The integer mask planes cut out.
    fp : numpy.ndarray
        uint8 parent footprint.
    inimg : numpy.ndarray
        uint8, 1 on the pixels inside the image.
    pbox : tuple of int
        The parent box in frame coordinates.
    """

    def __init__(self, image, variance, mask, fp_full, pbox, grow):
        H, W = image.shape
        py0, px0, ph, pw = pbox
        self.y0, self.x0 = py0 - grow, px0 - grow
        self.h, self.w = ph + 2 * grow, pw + 2 * grow
        self.box = (self.y0, self.x0, self.h, self.w)
        full = (0, 0, H, W)
        self.image = on_box(np.asarray(image, dtype=np.float64), full, self.box)
        self.variance = on_box(np.asarray(variance, dtype=np.float64), full, self.box)
        self.mask = None if mask is None else on_box(mask, full, self.box)
        self.fp = on_box(fp_full.view(np.uint8), full, self.box)
        inimg = np.zeros((self.h, self.w), dtype=np.uint8)
        ov = overlap(full, self.box)
        inimg[ov[0] - self.y0 : ov[1] - self.y0, ov[2] - self.x0 : ov[3] - self.x0] = 1
        self.inimg = inimg
        # The parent box in frame coordinates.
        self.pbox = (grow, grow, ph, pw)


class Template:
    """A template on a box of the working frame (values 0 off the footprint)."""

    __slots__ = ("box", "values", "fp", "kind", "weight", "monotonic")

    def __init__(self, box: Box, values: np.ndarray, fp: np.ndarray, kind: str) -> None:
        self.box = box
        self.values = values
        self.fp = fp
        self.kind = kind
        self.weight = 1.0
        self.monotonic = False

    def covers(self, y: int, x: int) -> bool:
        """Whether the frame pixel (y, x) is in the template's footprint."""
        i, j = y - self.box[0], x - self.box[1]
        return 0 <= i < self.box[2] and 0 <= j < self.box[3] and bool(self.fp[i, j])

    def crop(self, ymin: int, xmin: int, ymax: int, xmax: int) -> None:
        """Cut the box to rows ymin..ymax and columns xmin..xmax (box coordinates)."""
        y0, x0, _, _ = self.box
        self.values = np.ascontiguousarray(self.values[ymin : ymax + 1, xmin : xmax + 1])
        self.fp = np.ascontiguousarray(self.fp[ymin : ymax + 1, xmin : xmax + 1])
        self.box = (y0 + ymin, x0 + xmin, ymax - ymin + 1, xmax - xmin + 1)
