"""cdeblend.peaks: peak refinement and sub-pixel centres against hand-computed cases and
slow numpy references on random images."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdeblend import SingleBandConfig, SingleBandDeblender
from cdeblend.detection import deblend_image
from cdeblend.peaks import refine_peaks, subpixel_centers

DATA = Path(__file__).parent / "data"
# the 8 neighbours in the order the function breaks ties in (its docstring: the first wins)
STEPS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


# ---------------------------------------------------------------- refine_peaks by hand
def test_moves_to_the_neighbouring_maximum():
    img = np.zeros((5, 5))
    img[2, 3], img[2, 2] = 1.0, 0.5
    assert refine_peaks(img, [[2, 2]]).tolist() == [[2, 3]]
    # float peaks are rounded first; a peak on the maximum stays
    assert refine_peaks(img, [[2.4, 3.4]]).tolist() == [[2, 3]]


def test_steepest_neighbour_wins():
    img = np.zeros((5, 5))
    img[2, 2], img[1, 2], img[3, 3] = 1.0, 2.0, 3.0
    assert refine_peaks(img, [[2, 2]]).tolist() == [[3, 3]]


def test_a_slope_without_a_maximum_in_reach_keeps_the_peak():
    """A ridge along row 2 rising to the right: the climb leaves the reach before a
    maximum."""
    yy, xx = np.mgrid[0:5, 0:9].astype(float)
    img = xx - 0.1 * (yy - 2) ** 2
    assert refine_peaks(img, [[2, 3]], max_shift=1).tolist() == [[2, 3]]
    assert refine_peaks(img, [[2, 3]], max_shift=5).tolist() == [[2, 8]]


def test_two_steps_need_max_shift_two():
    img = np.zeros((7, 7))
    img[3, 1], img[3, 2], img[3, 3] = 1.0, 2.0, 3.0
    assert refine_peaks(img, [[3, 1]], max_shift=1).tolist() == [[3, 1]]
    assert refine_peaks(img, [[3, 1]], max_shift=2).tolist() == [[3, 3]]
    assert refine_peaks(img, [[3, 1]], max_shift=0).tolist() == [[3, 1]]


def test_never_onto_another_peak():
    img = np.zeros((5, 5))
    img[2, 3], img[2, 2] = 1.0, 0.5
    # the second peak holds the maximum: the first stays, the second stays on it
    assert refine_peaks(img, [[2, 2], [2, 3]]).tolist() == [[2, 2], [2, 3]]
    # two peaks climbing to one maximum: the first gets it, the second stays
    img[2, 4] = 0.5
    assert refine_peaks(img, [[2, 2], [2, 4]]).tolist() == [[2, 3], [2, 4]]


def test_min_rise_blocks_small_steps():
    img = np.zeros((5, 5))
    img[2, 3], img[2, 2] = 1.0, 0.5
    assert refine_peaks(img, [[2, 2]], min_rise=0.49).tolist() == [[2, 3]]
    assert refine_peaks(img, [[2, 2]], min_rise=0.5).tolist() == [[2, 2]]


def test_no_data_is_never_climbed():
    img = np.zeros((5, 5))
    img[2, 3], img[2, 2], img[1, 2] = np.nan, 0.5, 0.7
    assert refine_peaks(img, [[2, 2]]).tolist() == [[1, 2]]
    # a peak on no data stays
    assert refine_peaks(img, [[2, 3]]).tolist() == [[2, 3]]


def test_bad_arguments_are_named():
    img = np.zeros((4, 4))
    with pytest.raises(ValueError, match="max_shift"):
        refine_peaks(img, [[1, 1]], max_shift=-1)
    with pytest.raises(TypeError, match="max_shift"):
        refine_peaks(img, [[1, 1]], max_shift=1.5)
    with pytest.raises(ValueError, match="min_rise"):
        refine_peaks(img, [[1, 1]], min_rise=np.nan)
    with pytest.raises(ValueError, match="peaks"):
        refine_peaks(img, [[9, 1]])
    with pytest.raises(ValueError, match="image"):
        refine_peaks(np.zeros(4), [[1, 1]])


# ---------------------------------------------------------------- refine_peaks, reference
def uphill(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel its steepest strictly higher neighbour (numpy, vectorised): the value and
    the index into STEPS of the first largest, or -1 at a local maximum."""
    H, W = img.shape
    v = np.where(np.isnan(img), -np.inf, img)
    pad = np.pad(v, 1, constant_values=-np.inf)
    stack = np.stack([pad[1 + dy : 1 + dy + H, 1 + dx : 1 + dx + W] for dy, dx in STEPS])
    best = np.argmax(stack, axis=0)  # the first of equal values, as the STEPS order
    higher = np.take_along_axis(stack, best[None], 0)[0] > v
    return np.where(higher, best, -1)


def reference(img, peaks, max_shift):
    """Follow the uphill pointers from each peak (the other peaks' current pixels block)."""
    step = uphill(img)
    cur = [tuple(p) for p in peaks]
    for i, (y0, x0) in enumerate(cur):
        taken = set(cur[:i] + cur[i + 1 :])
        y, x, end = y0, x0, (y0, x0)
        if np.isnan(img[y, x]):  # a peak on no data stays
            continue
        while step[y, x] >= 0:
            dy, dx = STEPS[step[y, x]]
            y, x = y + dy, x + dx
            if max(abs(y - y0), abs(x - x0)) > max_shift or (y, x) in taken:
                break
        else:
            end = (y, x)
        cur[i] = end
    return np.array(cur)


@settings(max_examples=60)
@given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    n=st.integers(1, 6),
    max_shift=st.integers(0, 4),
    integer=st.booleans(),
)
def test_refine_peaks_matches_a_numpy_reference(seed, shape, n, max_shift, integer):
    rng = np.random.default_rng(seed)
    # small integers make ties (first neighbour in STEPS order wins) and plateaus common
    img = rng.integers(0, 4, shape).astype(float) if integer else rng.normal(size=shape)
    img[rng.random(shape) < 0.1] = np.nan
    flat = rng.choice(shape[0] * shape[1], size=min(n, shape[0] * shape[1]), replace=False)
    peaks = np.stack(np.unravel_index(flat, shape), axis=1)
    got = refine_peaks(img, peaks, max_shift)
    np.testing.assert_array_equal(got, reference(img, peaks, max_shift))
    # distinct peaks stay distinct, and none moves further than max_shift
    assert len({tuple(p) for p in got.tolist()}) == len(peaks)
    assert np.all(np.abs(got - peaks) <= max_shift)


# ---------------------------------------------------------------- subpixel_centers
def test_subpixel_vertex_of_a_quadratic_is_exact():
    yy, xx = np.mgrid[0:9, 0:9].astype(float)
    y0, x0 = 4.3, 3.8
    img = 10 - (yy - y0) ** 2 - 2 * (xx - x0) ** 2
    np.testing.assert_allclose(subpixel_centers(img, [[4, 4]]), [[y0, x0]], atol=1e-12)


def test_subpixel_offsets_are_clipped_to_half_a_pixel():
    # values 0, 3, 3.9 along x: the parabola's vertex is 0.93 px to the right, clipped
    img = np.zeros((3, 3))
    img[1] = [0.0, 3.0, 3.9]
    assert subpixel_centers(img, [[1, 1]]).tolist() == [[1.0, 1.5]]


def test_subpixel_leaves_an_axis_without_a_maximum_alone():
    img = np.zeros((3, 4))
    img[1] = [0.0, 3.0, 4.0, 3.5]
    img[0, 2], img[2, 2] = 1.0, 1.0
    # at (1, 2): y has a maximum (1, 4, 1) -> 0; x: 3, 4, 3.5 -> (3 - 3.5) / (2 (3 - 8 + 3.5))
    np.testing.assert_allclose(subpixel_centers(img, [[1, 2]]), [[1.0, 2 + 1 / 6]])
    # on the edge (no left neighbour) and at a minimum (curvature > 0): no offset
    assert subpixel_centers(img, [[1, 0]]).tolist() == [[1.0, 0.0]]
    img[1, 2] = -1.0
    assert subpixel_centers(img, [[1, 2]]).tolist() == [[1.0, 2.0]]
    # a NaN neighbour: no offset along that axis
    img[1, 2], img[1, 3] = 4.0, np.nan
    assert subpixel_centers(img, [[1, 2]]).tolist() == [[1.0, 2.0]]


@settings(max_examples=40)
@given(seed=st.integers(0, 2**31 - 1), shape=st.tuples(st.integers(1, 9), st.integers(1, 9)))
def test_subpixel_centers_match_a_numpy_reference(seed, shape):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=shape)
    peaks = np.stack(np.unravel_index(np.arange(img.size), shape), axis=1)  # every pixel
    v = np.pad(img, 1, constant_values=np.nan)
    H, W = shape
    mid = v[1:-1, 1:-1]
    want = peaks.astype(float)
    for axis, (lo, hi) in enumerate(
        ((v[:-2, 1:-1], v[2:, 1:-1]), (v[1:-1, :-2], v[1:-1, 2:]))  # y neighbours, x
    ):
        curv = lo - 2 * mid + hi
        with np.errstate(invalid="ignore", divide="ignore"):
            off = np.where(curv < 0, np.clip(0.5 * (lo - hi) / curv, -0.5, 0.5), 0.0)
        want[:, axis] += np.nan_to_num(off).ravel()
    np.testing.assert_allclose(subpixel_centers(img, peaks), want, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- single band
def load(name):
    with np.load(DATA / name) as d:
        peaks = np.stack([d["catalog"]["y"], d["catalog"]["x"]], axis=1).astype(np.int64)
        return d["images"][0], d["variance"][0], d["psfs"][0].astype(np.float64), peaks


@pytest.mark.parametrize("name", ["sim_single_blend_0002.npz", "hard_single_blend_0000.npz"])
def test_single_band_starts_psf_fits_at_subpixel_centres(name):
    """The default is the call with centers=subpixel_centers(image, peaks); the LSST preset
    the call with the integer peaks; deblend_image (which never takes centers) agrees."""
    image, variance, psf, peaks = load(name)
    deb = SingleBandDeblender()
    assert deb.config.subpixel_centers and not SingleBandConfig.lsst().subpixel_centers
    got = deb.deblend(image, variance, psf, peaks).conserved_images()
    given = deb.deblend(
        image, variance, psf, peaks, centers=subpixel_centers(image, peaks)
    ).conserved_images()
    np.testing.assert_array_equal(got, given)
    off = SingleBandDeblender(SingleBandConfig(subpixel_centers=False))
    np.testing.assert_array_equal(
        off.deblend(image, variance, psf, peaks).conserved_images(),
        off.deblend(image, variance, psf, peaks, centers=peaks * 1.0).conserved_images(),
    )
    parents = deblend_image(image, variance, psf, peaks=peaks)
    whole = np.zeros_like(got)
    for pr in parents:
        whole[pr.parent.peak_index] += pr.conserved_images(image.shape)
    if len(parents) == 1:  # the one call deblends that one parent
        np.testing.assert_allclose(got, whole, rtol=1e-6, atol=1e-6 * np.abs(image).max())
