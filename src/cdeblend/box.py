"""Boxes of pixels: the one box type of the package and its arithmetic.

A box is a ``(y0, x0, height, width)`` tuple of Python ints: the rectangle of pixels
``y0 <= y < y0 + height``, ``x0 <= x < x0 + width`` in the frame of some array (an image, a
blend's cut-out). A box with zero height or width is empty. Plain tuples (rather than a class
such as scarlet lite's ``bbox.Box``) keep boxes hashable, comparable, cheap to build in the
hot loops and directly usable as rows of the ``(N, 4)`` int64 arrays the Cython kernels
take; the operations below are the only place that does arithmetic on them.

Checking (every box that reaches a kernel passes through one of these first; the kernels
index their buffers without bounds checks, see ``src/cdeblend/meson.build``):
:func:`as_box`, :func:`as_boxes`, :func:`as_point`, :func:`check_inside`,
:func:`check_peak_in_box`. Each raises a ``ValueError`` (or a ``TypeError`` for non-integer
values) that names the offending argument.

Arithmetic: :func:`union`, :func:`intersect`, :func:`grow`, :func:`centered`,
:func:`clip`; slicing:
:func:`overlap_slices`, :func:`clip_slices`, :func:`place`; many boxes:
:func:`overlapping_pairs`.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "MAX_COORD",
    "Box",
    "as_box",
    "as_boxes",
    "as_int",
    "as_point",
    "centered",
    "check_inside",
    "check_peak_in_box",
    "clip",
    "clip_slices",
    "grow",
    "intersect",
    "overlap_slices",
    "overlapping_pairs",
    "place",
    "union",
]

#: Largest absolute box origin, box side or peak coordinate accepted (pixels). Far beyond any
#: image, and small enough that ``y0 + h`` and ``h * w`` cannot overflow an int64.
MAX_COORD = 1 << 31

#: ``(y0, x0, height, width)``.
Box = tuple[int, int, int, int]

#: Up to this many boxes, :func:`overlapping_pairs` runs one dense K x K test (cheaper than
#: the sweep's per-box Python loop).
_DENSE_PAIRS = 128

Slices = tuple[slice, slice]


# ---------------------------------------------------------------------------- checking
def as_int(value: Any, name: str) -> int:
    """``value`` as a Python int; integral floats are accepted, anything else is refused."""
    try:
        return operator.index(value)
    except TypeError:
        pass
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise TypeError(f"{name} must be an integer, got {value!r}")


def as_box(box: Any, name: str = "box", allow_empty: bool = False) -> Box:
    """Check a box and return it as a tuple of Python ints.

    Parameters
    ----------
    box : sequence of 4 integers, or an object with ``origin`` and ``shape``
        ``(y0, x0, height, width)`` (a box-like object, e.g. scarlet lite's ``Box``, gives
        ``(*origin, *shape)``).
    name : str
        The argument's name, for the error messages.
    allow_empty : bool
        Accept a zero height or width (sides must otherwise be >= 1).

    Returns
    -------
    tuple of int
        ``(y0, x0, height, width)``, every value bounded by :data:`MAX_COORD`.
    """
    if hasattr(box, "origin") and hasattr(box, "shape"):
        box = (*box.origin, *box.shape)
    try:
        vals = tuple(box)
    except TypeError:
        raise TypeError(f"{name} must be a sequence (y0, x0, height, width), got {box!r}") from None
    if len(vals) != 4:
        raise ValueError(f"{name} must be (y0, x0, height, width), got {box!r}")
    y0, x0, h, w = (as_int(v, name) for v in vals)
    low = 0 if allow_empty else 1
    if h < low or w < low:
        what = "a negative size" if min(h, w) < 0 else "an empty size"
        raise ValueError(f"{name} has {what}: {(y0, x0, h, w)}")
    if max(abs(y0), abs(x0), h, w) > MAX_COORD:
        raise ValueError(f"{name} {(y0, x0, h, w)} is out of range (|values| <= {MAX_COORD})")
    return (y0, x0, h, w)


def as_boxes(boxes: object, name: str = "boxes") -> np.ndarray:
    """(N, 4) int64 boxes; integer-valued input only (a float 2.5 is not a pixel)."""
    arr = np.asarray(boxes)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError(f"{name} must hold integers (y0, x0, h, w)")
        if arr.size and np.max(np.abs(arr)) > MAX_COORD:
            raise ValueError(f"{name} hold values out of range (|values| <= {MAX_COORD})")
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer (N, 4) array, got dtype {arr.dtype}")
    elif arr.dtype.kind == "u" and arr.size and np.max(arr) > MAX_COORD:
        raise ValueError(f"{name} hold values out of range (|values| <= {MAX_COORD})")
    if arr.size % 4:
        raise ValueError(f"{name} must have shape (N, 4), got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.int64).reshape(-1, 4)


def as_point(point: Any, name: str) -> tuple[int, int]:
    """``(y, x)`` as Python ints bounded by :data:`MAX_COORD`."""
    try:
        vals = tuple(point)
    except TypeError:
        raise TypeError(f"{name} must be a pair (y, x), got {point!r}") from None
    if len(vals) != 2:
        raise ValueError(f"{name} must be a pair (y, x), got {point!r}")
    y, x = (as_int(v, name) for v in vals)
    if max(abs(y), abs(x)) > MAX_COORD:
        raise ValueError(f"{name} {(y, x)} is out of range (|values| <= {MAX_COORD})")
    return (y, x)


def check_inside(box: Sequence[int], frame: Sequence[int], name: str, frame_name: str) -> None:
    """Raise ``ValueError`` unless ``box`` lies inside ``frame`` (both ``(y0, x0, h, w)``)."""
    y0, x0, h, w = box
    fy, fx, fh, fw = frame
    if y0 < fy or x0 < fx or y0 + h > fy + fh or x0 + w > fx + fw:
        raise ValueError(f"{name} {tuple(box)} lies outside {frame_name} {tuple(frame)}")


def check_peak_in_box(peak: Sequence[int], box: Sequence[int], name: str, box_name: str) -> None:
    """Raise ``ValueError`` unless the pixel ``peak`` lies inside ``box``."""
    py, px = peak
    y0, x0, h, w = box
    if not (y0 <= py < y0 + h and x0 <= px < x0 + w):
        raise ValueError(f"{name} {tuple(peak)} lies outside {box_name} {tuple(box)}")


# ---------------------------------------------------------------------------- arithmetic
def union(a: Box, b: Box) -> Box:
    """Smallest box containing boxes ``a`` and ``b`` (an empty box is ignored)."""
    if a[2] * a[3] == 0:
        return b
    if b[2] * b[3] == 0:
        return a
    y0, x0 = min(a[0], b[0]), min(a[1], b[1])
    y1, x1 = max(a[0] + a[2], b[0] + b[2]), max(a[1] + a[3], b[1] + b[3])
    return (y0, x0, y1 - y0, x1 - x0)


def intersect(a: Box, b: Box) -> Box:
    """Intersection of two boxes (zero height or width when they do not overlap)."""
    y0, x0 = max(a[0], b[0]), max(a[1], b[1])
    y1 = min(a[0] + a[2], b[0] + b[2])
    x1 = min(a[1] + a[3], b[1] + b[3])
    return (y0, x0, max(y1 - y0, 0), max(x1 - x0, 0))


def grow(a: Box, r: int | tuple[int, int]) -> Box:
    """Box ``a`` grown by ``r`` pixels on every side (``r = (ry, rx)``: per axis)."""
    ry, rx = (r, r) if np.ndim(r) == 0 else r
    return (a[0] - ry, a[1] - rx, a[2] + 2 * ry, a[3] + 2 * rx)


def centered(center: Sequence[int], size: Sequence[int]) -> Box:
    """The box of a ``size = (h, w)`` stamp whose pixel ``(h // 2, w // 2)`` lies on the
    pixel ``center = (y, x)`` (the centre of an odd-sized stamp)."""
    h, w = (int(v) for v in size)
    return (int(center[0]) - h // 2, int(center[1]) - w // 2, h, w)


def clip(box: Box, shape: tuple[int, int]) -> Box:
    """Intersection of ``box`` with the frame ``[0, H) x [0, W)`` of ``shape = (H, W)``
    (zero height or width when they do not overlap; the origin stays inside the frame's
    clamp of the box)."""
    y0, x0, h, w = box
    ya, xa = max(y0, 0), max(x0, 0)
    yb, xb = min(y0 + h, shape[0]), min(x0 + w, shape[1])
    return (ya, xa, max(yb - ya, 0), max(xb - xa, 0))


# ---------------------------------------------------------------------------- slicing
def overlap_slices(a: Box, b: Box) -> tuple[Slices, Slices]:
    """Slices of an array on box ``a`` and of one on box ``b`` that cover their intersection."""
    c = intersect(a, b)
    sa = (slice(c[0] - a[0], c[0] - a[0] + c[2]), slice(c[1] - a[1], c[1] - a[1] + c[3]))
    sb = (slice(c[0] - b[0], c[0] - b[0] + c[2]), slice(c[1] - b[1], c[1] - b[1] + c[3]))
    return sa, sb


def clip_slices(box: Sequence[int], shape: tuple[int, int]) -> tuple[Slices, Slices]:
    """Slices of the frame ``shape = (H, W)`` and of an array on ``box`` that cover the part
    of ``box`` inside the frame (empty slices when there is none)."""
    y0, x0, h, w = (int(v) for v in box)
    ya, xa = max(y0, 0), max(x0, 0)
    yb, xb = min(y0 + h, shape[0]), min(x0 + w, shape[1])
    yb, xb = max(yb, ya), max(xb, xa)
    return (slice(ya, yb), slice(xa, xb)), (slice(ya - y0, yb - y0), slice(xa - x0, xb - x0))


def place(array: Any, box: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
    """A zero float64 ``shape`` frame holding the (h, w) ``array`` that lies on ``box``
    (the part outside the frame is dropped)."""
    out = np.zeros(shape, dtype=np.float64)
    frame, own = clip_slices(box, shape)
    out[frame] = np.asarray(array)[own]
    return out


# ---------------------------------------------------------------------------- many boxes
def overlapping_pairs(boxes: np.ndarray) -> np.ndarray:
    """Index pairs ``(k, l)``, ``k <= l``, of boxes that share at least one pixel.

    Up to a few hundred boxes one vectorised all-pairs test is cheapest. Above, boxes are
    sorted by ``y0`` and swept: for each box only the boxes starting before its bottom edge
    are tested, so the cost follows the number of overlapping candidates rather than ``K^2``.

    Parameters
    ----------
    boxes : (K, 4) int array
        ``(y0, x0, h, w)`` per box.

    Returns
    -------
    numpy.ndarray
        ``(P, 2)`` int64 pairs including every ``(k, k)`` of a non-empty box.
    """
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    if len(boxes) <= _DENSE_PAIRS:
        # the all-pairs test in one kernel pass (as numpy, a dozen calls holding the GIL)
        from ._apportion_cy import dense_pairs

        return dense_pairs(boxes)
    return _swept_pairs(boxes)


def _swept_pairs(boxes: np.ndarray) -> np.ndarray:
    """:func:`overlapping_pairs` by a sweep over the boxes sorted by ``y0``."""
    nonempty = np.flatnonzero((boxes[:, 2] > 0) & (boxes[:, 3] > 0))
    order = nonempty[np.argsort(boxes[nonempty, 0], kind="stable")]
    y0 = boxes[order, 0]
    y1 = y0 + boxes[order, 2]
    x0 = boxes[order, 1]
    x1 = x0 + boxes[order, 3]
    # for each box, the later boxes (in y0 order) whose top edge is above its bottom edge,
    # in one Cython call (a Python loop over the boxes cost ~30 us per box)
    from ._spectra_cy import swept_pairs

    return swept_pairs(*(np.ascontiguousarray(a, dtype=np.int64) for a in (order, y0, y1, x0, x1)))
