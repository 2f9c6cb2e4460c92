"""The shared re-apportioning kernel against a plain numpy reference."""

import numpy as np
import pytest
from footprint_reference import children_footprint
from hypothesis import given, settings
from hypothesis import strategies as st

from cdeblend import FlatStack, apportion_flux, model_footprint


def reference_apportion(image, arrays, boxes, mask):
    """Slow, obvious re-apportioning on dense (N, B, H, W) arrays."""
    B, H, W = image.shape
    dense = np.zeros((len(arrays), B, H, W))
    for i, (a, (y0, x0, h, w)) in enumerate(zip(arrays, boxes, strict=True)):
        for yy in range(h):
            for xx in range(w):
                y, x = y0 + yy, x0 + xx
                if 0 <= y < H and 0 <= x < W and mask[y, x]:
                    dense[i, :, y, x] = np.maximum(a[:, yy, xx], 0)
    tsum = dense.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(tsum > 0, image * dense / tsum, 0.0)
    return out, tsum


def densify(stack, H, W):
    out = np.zeros((len(stack), stack.bands, H, W))
    for i in range(len(stack)):
        y0, x0, h, w = stack.boxes[i]
        a = stack.get(i)
        for yy in range(h):
            for xx in range(w):
                y, x = y0 + yy, x0 + xx
                if 0 <= y < H and 0 <= x < W:
                    out[i, :, y, x] = a[:, yy, xx]
    return out


@st.composite
def apportion_cases(draw):
    B = draw(st.integers(1, 3))
    H = draw(st.integers(1, 12))
    W = draw(st.integers(1, 12))
    n = draw(st.integers(0, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in range(n):
        h = int(rng.integers(1, H + 4))
        w = int(rng.integers(1, W + 4))
        boxes.append((int(rng.integers(-3, H)), int(rng.integers(-3, W)), h, w))
    arrays = [rng.normal(size=(B, b[2], b[3])) for b in boxes]
    image = rng.normal(size=(B, H, W))
    mask = rng.random((H, W)) < 0.8
    return image, arrays, boxes, mask


@settings(max_examples=150, deadline=None)
@given(apportion_cases(), st.sampled_from([np.float32, np.float64]))
def test_apportion_matches_reference(case, dtype):
    image, arrays, boxes, mask = case
    B, H, W = image.shape
    stack = FlatStack.from_arrays(arrays, np.asarray(boxes).reshape(-1, 4), dtype=dtype, bands=B)
    out, tsum = apportion_flux(image.astype(dtype), stack, mask)
    img_cast = image.astype(dtype).astype(np.float64)
    arr_cast = [a.astype(dtype).astype(np.float64) for a in arrays]
    ref, ref_tsum = reference_apportion(img_cast, arr_cast, boxes, mask)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(tsum, ref_tsum, rtol=1e-12, atol=1e-12)
    dense = densify(out, H, W)
    np.testing.assert_allclose(dense, ref, rtol=tol, atol=tol * np.abs(image).max())


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-6), (np.float64, 1e-12)])
def test_children_add_up_to_image(dtype, tol):
    rng = np.random.default_rng(1)
    image = rng.normal(10, 3, size=(2, 30, 40)).astype(dtype)
    boxes = [(0, 0, 20, 25), (10, 15, 20, 25), (-5, 30, 20, 20)]
    arrays = [rng.random((2, b[2], b[3])) for b in boxes]
    stack = FlatStack.from_arrays(arrays, boxes, dtype=dtype)
    out, tsum = apportion_flux(image, stack)
    total = densify(out, 30, 40).sum(axis=0)
    claimed = tsum > 0
    err = np.abs(total[claimed] - image[claimed]).max()
    assert err <= tol * np.abs(image).max()
    # Unclaimed pixels receive nothing.
    assert np.all(total[~claimed] == 0)


@settings(max_examples=100, deadline=None)
@given(apportion_cases(), st.sampled_from([0.0, 0.03, 0.5, 2.0]), st.booleans())
def test_model_footprint_matches_reference(case, thresh, holes):
    """The children's footprint against the pixel-by-pixel reference, with pixels without
    data (zero, negative or infinite variance) in some bands."""
    image, arrays, boxes, _ = case
    B, H, W = image.shape
    rng = np.random.default_rng(len(arrays) + H * W)
    variance = rng.uniform(0.01, 4.0, size=(B, H, W))
    if holes:
        variance[rng.random((B, H, W)) < 0.2] = rng.choice([0.0, -1.0, np.inf])
    stack = FlatStack.from_arrays(arrays, np.asarray(boxes).reshape(-1, 4), bands=B)
    got = model_footprint(stack, variance, thresh)
    inside, edge = children_footprint(densify(stack, H, W), variance, thresh)
    assert got.shape == (H, W) and got.dtype == bool
    assert np.array_equal(got[~edge], inside[~edge])


def test_model_footprint_thresholds_the_total_in_noise_units():
    """Hand-made case: two templates, two bands; a pixel is in where either band's total
    reaches ``thresh`` noise sigmas (band 1 has four times band 0's variance)."""
    a = np.zeros((2, 1, 4))
    a[0, 0] = [0.5, 0.2, 0.0, -1.0]  # band 0
    a[1, 0] = [0.0, 0.0, 0.9, 0.0]  # band 1
    b = np.zeros((2, 1, 4))
    b[0, 0] = [0.0, 0.1, 0.0, 0.0]
    stack = FlatStack.from_arrays([a, b], [(0, 0, 1, 4), (0, 0, 1, 4)])
    variance = np.stack([np.full((1, 4), 0.25), np.full((1, 4), 1.0)])  # sigma 0.5 and 1
    # totals in sigmas: band 0: 1.0, 0.6, 0, 0 (the -1 is clipped); band 1: 0, 0, 0.9, 0
    assert model_footprint(stack, variance, 0.0).tolist() == [[True, True, True, False]]
    assert model_footprint(stack, variance, 0.6).tolist() == [[True, True, True, False]]
    assert model_footprint(stack, variance, 0.7).tolist() == [[True, False, True, False]]
    assert model_footprint(stack, variance, 0.95).tolist() == [[True, False, False, False]]
    weights = np.ones_like(variance)
    weights[1, 0, 2] = 0.0  # no data in band 1 at the third pixel: band 0 has nothing there
    assert model_footprint(stack, variance, 0.0, weights).tolist() == [[True, True, False, False]]
    variance[0, 0, 0] = 0.0  # no data in band 0 at the first pixel: band 1 has nothing there
    assert model_footprint(stack, variance, 0.0).tolist() == [[False, True, True, False]]


def test_model_footprint_bad_input():
    stack = FlatStack.from_arrays([np.ones((2, 3, 3))], [(0, 0, 3, 3)])
    with pytest.raises(TypeError, match="templates"):
        model_footprint(np.ones((2, 3, 3)), np.ones((2, 3, 3)), 0.1)
    with pytest.raises(ValueError, match="variance"):
        model_footprint(stack, np.ones((3, 3, 3)), 0.1)
    for bad in (-0.1, np.nan, np.inf):
        with pytest.raises(ValueError, match="thresh"):
            model_footprint(stack, np.ones((2, 3, 3)), bad)
    with pytest.raises(ValueError, match="weights"):
        model_footprint(stack, np.ones((2, 3, 3)), 0.1, np.ones((2, 3, 4)))
    for bad in ("0.3", None, True):
        with pytest.raises(TypeError, match="thresh"):
            model_footprint(stack, np.ones((2, 3, 3)), bad)
    ints = FlatStack.from_arrays([np.ones((2, 3, 3))], [(0, 0, 3, 3)])
    ints.flat = ints.flat.astype(np.int64)
    with pytest.raises(TypeError, match="float32 or float64"):
        model_footprint(ints, np.ones((2, 3, 3)), 0.1)


def test_bad_input():
    stack = FlatStack.from_arrays([np.ones((3, 3))], [(0, 0, 3, 3)])
    with pytest.raises(ValueError, match="bands"):
        apportion_flux(np.ones((2, 5, 5)), stack)
    with pytest.raises(ValueError, match="mask"):
        apportion_flux(np.ones((5, 5)), stack, mask=np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="box needs"):
        FlatStack.from_arrays([np.ones((3, 4))], [(0, 0, 3, 3)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flat_stack_sums_equal_row_sums(dtype):
    """FlatStack.sums (one reduceat) against summing each row's planes, empty boxes too."""
    rng = np.random.default_rng(7)
    boxes = [(0, 0, 3, 4), (2, 1, 0, 5), (1, 1, 2, 2), (5, 5, 1, 0), (0, 2, 4, 1)]
    arrays = [rng.normal(size=(3, h, w)).astype(dtype) for _, _, h, w in boxes]
    stack = FlatStack.from_arrays(arrays, boxes, dtype=dtype)
    ref = np.array([a.sum(axis=(1, 2), dtype=np.float64) for a in arrays])
    got = stack.sums()
    assert got.shape == (5, 3) and got.dtype == np.float64
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    assert np.all(got[[1, 3]] == 0)


def test_unchecked_stack_constructors_equal_the_checked_one():
    # FlatStack.like (another stack's layout) and FlatStack.of_clipped (boxes the package
    # clipped itself) skip the range checks, not the layout: the same offsets and rows as
    # the checked constructor, and a buffer of the wrong size is refused
    rng = np.random.default_rng(2)
    boxes = np.array([[0, 0, 3, 4], [2, 1, 0, 5], [1, 2, 2, 2]], dtype=np.int64)
    B = 2
    flat = rng.random(int((B * boxes[:, 2] * boxes[:, 3]).sum()))
    ref = FlatStack(flat, boxes, B)
    for got in (FlatStack.of_clipped(flat, boxes, B), FlatStack.like(flat * 2, ref)):
        np.testing.assert_array_equal(got.offsets, ref.offsets)
        np.testing.assert_array_equal(got.boxes, ref.boxes)
        assert got.bands == B
        for i in range(len(boxes)):
            assert got.get(i).shape == ref.get(i).shape
    np.testing.assert_array_equal(FlatStack.like(flat * 2, ref).sums(), 2 * ref.sums())
    with pytest.raises(ValueError, match="flat"):
        FlatStack.of_clipped(flat[:-1], boxes, B)
    with pytest.raises(ValueError, match="flat"):
        FlatStack.like(flat[:-1], ref)


def test_plane_sums_kernel_equals_numpy_reduceat():
    # FlatStack.sums (the plane_sums kernel) against the numpy reduceat of the non-empty
    # planes it replaced, to the bit (signed zeros included): random stacks with empty,
    # single-pixel and large (pairwise-summed) planes, float32 and float64 buffers
    from cdeblend._apportion_cy import plane_sums

    rng = np.random.default_rng(9)
    for t in range(200):
        n, B = int(rng.integers(0, 8)), int(rng.integers(1, 7))
        boxes = np.zeros((n, 4), np.int64)
        boxes[:, 2:] = rng.integers(0, 40, (n, 2))
        if n and t % 4 == 0:
            boxes[0, 2:] = 1
        sizes = B * boxes[:, 2] * boxes[:, 3]
        flat = rng.normal(size=int(sizes.sum())) * 10.0 ** rng.integers(-5, 5, int(sizes.sum()))
        if flat.size:
            flat[rng.integers(flat.size)] = -0.0
        if t % 2:
            flat = flat.astype(np.float32)
        stack = FlatStack(flat, boxes, B)
        plane = boxes[:, 2] * boxes[:, 3]
        starts = (stack.offsets[:-1, None] + np.arange(B)[None] * plane[:, None]).ravel()
        want = np.zeros(n * B)
        keep = np.repeat(plane > 0, B)
        if keep.any():
            want[keep] = np.add.reduceat(flat.astype(np.float64), starts[keep])
        got = stack.sums()
        assert got.shape == (n, B)
        np.testing.assert_array_equal(got.ravel(), want)
        np.testing.assert_array_equal(np.signbit(got.ravel()), np.signbit(want))
    with pytest.raises(ValueError, match="does not fit"):
        plane_sums(np.zeros(5), np.zeros(1, np.int64), np.array([[0, 0, 2, 3]]), np.empty((1, 1)))
