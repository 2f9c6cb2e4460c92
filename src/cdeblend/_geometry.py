"""Checks of the boxes and peaks that the Cython kernels trust.

The kernels index their buffers with box origins, sizes and peaks without bounds checks (see
``src/cdeblend/meson.build``), so every geometry that reaches them from a public constructor
or a file passes through these helpers first. Each raises a ``ValueError`` (or a
``TypeError`` for non-integer values) that names the offending argument.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["MAX_COORD", "as_box", "as_int", "as_point", "check_inside", "check_peak_in_box"]

#: Largest absolute box origin, box side or peak coordinate accepted (pixels). Far beyond any
#: image, and small enough that ``y0 + h`` and ``h * w`` cannot overflow an int64.
MAX_COORD = 1 << 31

Box = tuple[int, int, int, int]


def as_int(value: Any, name: str) -> int:
    """``value`` as a Python int; integral floats are accepted, anything else is refused."""
    try:
        return operator.index(value)
    except TypeError:
        pass
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    raise TypeError(f"{name} must be an integer, got {value!r}")


def as_box(box: Any, name: str, allow_empty: bool = False) -> Box:
    """``(y0, x0, h, w)`` as Python ints with sides >= 1 (>= 0 with ``allow_empty``), every
    value bounded by :data:`MAX_COORD`."""
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
