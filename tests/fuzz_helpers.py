"""Shared strategies and checks of the fuzz tests (tests/test_fuzz_*.py).

The strategies draw small blends and then damage them the way real inputs are damaged:
other dtypes (float32, ints), byte-swapped or non-contiguous arrays, NaN and infinite pixels,
zero and negative variance, degenerate PSFs. :func:`outcome` runs an entry point and
accepts either a result or a ``ValueError``/``TypeError`` (whose message is kept); any other
exception propagates and fails the test.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import event, settings
from hypothesis import strategies as st

#: Settings of every fuzz test: few examples (the suite must stay fast); the deadline and
#: the health checks are those of the suite's Hypothesis profile (tests/conftest.py, loaded
#: before this module). ``CDEBLEND_FUZZ_EXAMPLES=2000`` runs a longer, randomised hunt.
_HUNT = int(os.environ.get("CDEBLEND_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_HUNT or 100, derandomize=not _HUNT)

LAYOUTS = (
    "plain",
    "float32",
    "int32",
    "int64",
    "swapped",
    "swapped32",
    "strided",
    "fortran",
    "float16",
    "readonly",
    "list",
    "bool",
)
GOOD_LAYOUTS = tuple(x for x in LAYOUTS if x != "bool")


def relayout(a: np.ndarray, layout: str) -> np.ndarray:
    """``a`` (float64) in another dtype or memory layout, same values where representable."""
    if layout == "plain":
        return a
    if layout == "float32":
        with np.errstate(over="ignore"):  # 1e60 becomes inf: a case of its own
            return a.astype(np.float32)
    if layout in ("int32", "int64"):
        return np.round(a).astype(layout)
    if layout == "swapped":
        return a.astype(">f8")
    if layout == "swapped32":
        with np.errstate(over="ignore"):
            return a.astype(">f4")
    if layout == "strided":  # every other element of a larger array
        big = np.zeros(tuple(2 * n for n in a.shape), dtype=a.dtype)
        view = big[tuple(slice(None, None, 2) for _ in a.shape)]
        view[...] = a
        return view
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "float16":
        with np.errstate(over="ignore"):
            return a.astype(np.float16)
    if layout == "readonly":
        out = a.copy()
        out.flags.writeable = False
        return out
    if layout == "list":  # nested Python lists
        return a.tolist()
    if layout == "bool":  # not a numeric image: must be rejected with a TypeError
        return a > 0
    raise AssertionError(layout)


def gaussian_psf(size: int, sigma: float) -> np.ndarray:
    """Unit-sum circular Gaussian sampled on an odd ``size`` x ``size`` grid."""
    u = np.arange(size) - size // 2
    g = np.exp(-0.5 * (u[:, None] ** 2 + u[None, :] ** 2) / sigma**2)
    return g / g.sum()


@st.composite
def psf_images(draw, allow_bad: bool = True) -> np.ndarray:
    """One 2-D PSF: a Gaussian (odd size), or a degenerate one when ``allow_bad``."""
    kinds = ["gauss"] * 4 + (
        ["delta", "zeros", "negative", "even", "unnormalised", "nan"] if allow_bad else []
    )
    kind = draw(st.sampled_from(kinds))
    size = draw(st.sampled_from([3, 5, 7, 9, 11]))
    sigma = draw(st.floats(1.0, 2.5))
    if kind == "gauss":
        return gaussian_psf(size, sigma)
    if kind == "delta":
        p = np.zeros((size, size))
        p[size // 2, size // 2] = 1.0
        return p
    if kind == "zeros":
        return np.zeros((size, size))
    if kind == "negative":  # unit sum with negative wings
        p = 2.0 * gaussian_psf(size, sigma) - gaussian_psf(size, 2 * sigma)
        return p / p.sum()
    if kind == "even":
        return gaussian_psf(size + 1, sigma)
    if kind == "unnormalised":
        return 3.0 * gaussian_psf(size, sigma)
    p = gaussian_psf(size, sigma)
    p[0, 0] = np.nan
    return p


@st.composite
def scenes(draw, bands: int | None = None, max_size: int = 28, min_size: int = 1):
    """A small scene: ``(images (B,H,W), variance, peaks (N,2), truth-free)`` in float64.

    Sources are Gaussian blobs at the peaks (which may sit on edges and corners) on noise.
    """
    B = draw(st.integers(1, 3)) if bands is None else bands
    H = draw(st.integers(min_size, max_size))
    W = draw(st.integers(min_size, max_size))
    n = draw(st.integers(1, 4))
    ys = draw(
        st.lists(
            st.sampled_from(sorted({0, H - 1, H // 2, max(H // 3, 0)})) | st.integers(0, H - 1),
            min_size=n,
            max_size=n,
        )
    )
    xs = draw(
        st.lists(
            st.sampled_from(sorted({0, W - 1, W // 2, max(W // 3, 0)})) | st.integers(0, W - 1),
            min_size=n,
            max_size=n,
        )
    )
    peaks = np.array(list(zip(ys, xs, strict=True)), dtype=np.int64)
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    images = rng.normal(0.0, 1.0, (B, H, W))
    for y, x in peaks:
        amp = rng.uniform(5, 200) * rng.uniform(0.5, 1.5, B)
        blob = np.exp(-0.5 * ((yy - y) ** 2 + (xx - x) ** 2) / rng.uniform(1.0, 3.0) ** 2)
        images += amp[:, None, None] * blob[None]
    variance = np.ones((B, H, W)) + 0.01 * np.maximum(images, 0)
    return images, variance, peaks


def damage(draw, images: np.ndarray, variance: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Optionally put NaN/inf pixels, zero or negative variance into copies of the inputs."""
    kind = draw(
        st.sampled_from(
            ["none"] * 4
            + [
                "nan_image",
                "inf_image",
                "zero_var",
                "neg_var",
                "nan_var",
                "all_zero_var",
                "huge",
                "tiny",
                "zero_image",
                "negative_image",
            ]
        )
    )
    images, variance = images.copy(), variance.copy()
    idx = tuple(draw(st.integers(0, n - 1)) for n in images.shape)
    if kind == "nan_image":
        images[idx] = np.nan
    elif kind == "inf_image":
        images[idx] = np.inf
    elif kind == "zero_var":
        variance[idx] = 0.0
    elif kind == "neg_var":
        variance[idx] = -1.0
    elif kind == "nan_var":
        variance[idx] = np.nan
    elif kind == "all_zero_var":
        variance[...] = 0.0
    elif kind == "huge":
        images *= 1e30
        variance *= 1e60
    elif kind == "zero_image":
        images[...] = 0.0
    elif kind == "negative_image":
        images = -np.abs(images)
    elif kind == "tiny":
        images *= 1e-30
        variance *= 1e-60
    return images, variance, kind


#: Damage with values that an integer layout cannot hold (NaN, inf, huge or tiny values).
NOT_INTEGER = ("huge", "tiny", "nan_image", "inf_image", "nan_var")


def damaged_scene(draw, allow_bad: bool = True, **scene_options):
    """A :func:`scenes` scene, damaged by :func:`damage` when ``allow_bad``: ``(images,
    variance, peaks, kind)`` (kind ``"none"``: undamaged)."""
    images, variance, peaks = draw(scenes(**scene_options))
    if not allow_bad:
        return images, variance, peaks, "none"
    images, variance, kind = damage(draw, images, variance)
    return images, variance, peaks, kind


def layout_for(draw, kind: str, allow_bad: bool = True) -> str:
    """A layout of :data:`LAYOUTS` (``GOOD_LAYOUTS`` unless ``allow_bad``) for data damaged
    by ``kind``: "plain" instead of an integer layout when the damage has no integer
    representation."""
    layout = draw(st.sampled_from(LAYOUTS if allow_bad else GOOD_LAYOUTS))
    if layout in ("int32", "int64", "bool") and kind in NOT_INTEGER:
        layout = "plain"
    return layout


PEAK_KINDS = (
    "int",
    "int",
    "float",
    "outside",
    "empty",
    "swapped",
    "duplicate",
    "nan",
    "three_columns",
    "list",
)
BAD_PEAKS = ("outside", "empty", "nan", "three_columns")


def vary_peaks(peaks: np.ndarray, how: str, shape: tuple[int, int]):
    """The scene's peaks in another form (``BAD_PEAKS`` forms must be rejected)."""
    if how == "float":
        return peaks + 0.3
    if how == "outside":
        return np.vstack([peaks, [[shape[0], 0]]])
    if how == "empty":
        return np.zeros((0, 2))
    if how == "swapped":
        return peaks.astype(">i8")
    if how == "duplicate":
        return np.vstack([peaks, peaks[:1]])
    if how == "nan":
        return np.vstack([peaks, [[np.nan, 0.0]]])
    if how == "three_columns":
        return np.hstack([peaks, peaks[:, :1]])
    if how == "list":
        return [tuple(p) for p in peaks.tolist()]
    return peaks


def outcome(fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    """Run ``fn``; return ``(result, None)`` or ``(None, error)`` for ValueError/TypeError.

    A ValueError/TypeError must say something (a message naming the problem); every other
    exception type is a bug and propagates.
    """
    try:
        result = fn()
    except (ValueError, TypeError) as exc:
        assert str(exc), f"{type(exc).__name__} without a message"
        event(f"rejected: {str(exc)[:40]}")
        return None, exc
    event("accepted")
    return result, None


def assert_finite(name: str, a: Any) -> None:
    arr = np.asarray(a)
    assert np.all(np.isfinite(arr)), f"{name} has non-finite values"
