"""Fuzzing the single-band entry points: SingleBandDeblender.deblend, detect, deblend_image.

Each call gets a damaged small image (dtypes, layouts, NaN/inf, zero or negative variance,
degenerate PSFs, peaks on edges and corners, empty and one-pixel footprints) and must either
raise a clear ValueError/TypeError or return children whose conserved images, with the
unassigned (stray) flux, add up to the image on the footprint.
"""

from __future__ import annotations

import numpy as np
from fuzz_helpers import (
    BAD_PEAKS,
    FUZZ,
    PEAK_KINDS,
    assert_finite,
    damaged_scene,
    layout_for,
    outcome,
    psf_images,
    relayout,
    vary_peaks,
)
from hypothesis import given
from hypothesis import strategies as st

from cdeblend import SingleBandDeblender, deblend_image, detect


@st.composite
def single_band_cases(draw, allow_bad: bool = True):
    images, variance, peaks, kind = damaged_scene(draw, allow_bad, bands=1)
    layout = layout_for(draw, kind, allow_bad)
    psf = draw(psf_images(allow_bad=allow_bad))
    return (
        relayout(images[0], layout),
        relayout(variance[0], layout),
        relayout(psf, draw(st.sampled_from(["plain", "float32", "swapped", "strided"]))),
        peaks,
        kind,
    )


@st.composite
def footprints(draw, shape, peaks):
    """None (default footprint), the whole image, one pixel, empty, or a random mask that
    contains the peaks, as bool or int labels."""
    H, W = shape
    kind = draw(st.sampled_from(["none", "full", "one_pixel", "empty", "random", "labels"]))
    if kind == "none":
        return None, kind
    fp = np.zeros((H, W), dtype=bool)
    if kind == "full":
        fp[:] = True
    elif kind == "one_pixel":
        fp[peaks[0, 0], peaks[0, 1]] = True
    elif kind in ("random", "labels"):
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        fp = rng.random((H, W)) < 0.6
        fp[peaks[:, 0], peaks[:, 1]] = True
    if kind == "labels":
        return fp.astype(np.int32) * 3, kind
    return fp, kind


def _as_read(image, variance) -> np.ndarray:
    """The image as the deblender reads it: pixels without data (non-finite value, variance
    not finite and positive) are 0 (the package's no-data rule)."""
    img = np.asarray(image, dtype=np.float64)
    var = np.asarray(variance, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(img) & (var > 0) & (var < np.inf), img, 0.0)


def _check_single(res, image, variance, n_peaks: int) -> None:
    assert res.n_peaks == n_peaks
    assert np.isfinite(res.stray_flux)
    img = _as_read(image, variance)
    H, W = img.shape
    cons = res.conserved_images()
    assert cons.shape == (n_peaks, H, W)
    assert_finite("conserved images", cons)
    for c in res.children:
        assert np.isfinite(c.flux)
        assert_finite("template", c.template)
    if "skipped" in res.flags or "failed" in res.flags:
        return
    # children + unassigned = image on the (final) footprint; nothing off it
    y0, x0, h, w = res.footprint_box
    fp = np.zeros((H, W), dtype=bool)
    fp[y0 : y0 + h, x0 : x0 + w] = res.final_footprint
    unassigned = np.zeros((H, W))
    unassigned[y0 : y0 + h, x0 : x0 + w] = res.unassigned
    total = cons.astype(np.float64).sum(axis=0) + unassigned
    scale = np.abs(img).max() + 1e-300
    tol = 1e-5 if res.dtype == np.float32 else 1e-9
    assert np.all(np.abs(total - img)[fp] <= tol * scale)
    assert np.all(cons.sum(axis=0)[~fp] == 0)


@FUZZ
@given(single_band_cases(), st.data())
def test_fuzz_single_band_deblend(case, data):
    image, variance, psf, peaks, _ = case
    fp, fp_kind = data.draw(footprints(np.shape(image), peaks))
    how = data.draw(st.sampled_from(PEAK_KINDS))
    peaks = vary_peaks(peaks, how, np.shape(image))
    res, err = outcome(
        lambda: SingleBandDeblender().deblend(image, variance, psf, peaks, footprint=fp)
    )
    if err is None:
        assert how not in BAD_PEAKS
        assert fp_kind != "empty"
        _check_single(res, image, variance, len(peaks))


@FUZZ
@given(single_band_cases(allow_bad=False))
def test_fuzz_single_band_valid_inputs_succeed(case):
    image, variance, psf, peaks, _ = case
    fp = np.ones(np.shape(image), dtype=bool)
    res = SingleBandDeblender().deblend(image, variance, psf, peaks, footprint=fp)
    _check_single(res, image, variance, len(peaks))


@FUZZ
@given(single_band_cases(), st.booleans())
def test_fuzz_detect(case, give_peaks):
    image, variance, psf, peaks, _ = case
    parents, err = outcome(
        lambda: detect(image, variance, psf, peaks=peaks if give_peaks else None)
    )
    if err is not None:
        return
    H, W = np.shape(image)
    seen = []
    for p in parents:
        y0, x0, h, w = p.box
        assert 0 <= y0 and 0 <= x0 and y0 + h <= H and x0 + w <= W
        assert p.footprint.shape == (h, w) and p.footprint.any()
        assert len(p.peaks) >= 1
        inside = p.footprint[p.peaks[:, 0] - y0, p.peaks[:, 1] - x0]
        assert np.all(inside)
        seen.extend(p.peak_index.tolist())
    assert len(seen) == len(set(seen))  # a peak belongs to at most one parent


@FUZZ
@given(single_band_cases())
def test_fuzz_deblend_image(case):
    image, variance, psf, peaks, _ = case
    results, err = outcome(lambda: deblend_image(image, variance, psf, peaks=peaks))
    if err is not None:
        return
    H, W = np.shape(image)
    img = _as_read(image, variance)
    for pr in results:
        cons = pr.conserved_images((H, W))
        assert_finite("conserved images", cons)
        res = pr.result
        if res.flags or not res.children:
            continue
        # children + stray flux = image on this parent's footprint
        oy, ox = pr.origin
        y0, x0, h, w = res.footprint_box
        fp = np.zeros((H, W), dtype=bool)
        fp[oy + y0 : oy + y0 + h, ox + x0 : ox + x0 + w] = res.final_footprint
        un = np.zeros((H, W))
        un[oy + y0 : oy + y0 + h, ox + x0 : ox + x0 + w] = res.unassigned
        total = cons.astype(np.float64).sum(axis=0) + un
        tol = 1e-5 if res.dtype == np.float32 else 1e-9
        assert np.all(np.abs(total - img)[fp] <= tol * (np.abs(img).max() + 1e-300))
