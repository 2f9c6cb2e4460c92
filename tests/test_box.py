"""cdeblend.box: the box arithmetic against pixel sets (a box is the set of its pixels)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdeblend import box as bx


def _pixels(b) -> set[tuple[int, int]]:
    y0, x0, h, w = b
    return {(y, x) for y in range(y0, y0 + max(h, 0)) for x in range(x0, x0 + max(w, 0))}


boxes = st.tuples(st.integers(-8, 8), st.integers(-8, 8), st.integers(0, 7), st.integers(0, 7))


@settings(max_examples=200, deadline=None)
@given(a=boxes, b=boxes)
def test_intersect_union_and_slices_match_pixel_sets(a, b):
    c = bx.intersect(a, b)
    assert _pixels(c) == _pixels(a) & _pixels(b)
    u = bx.union(a, b)
    assert _pixels(u) >= _pixels(a) | _pixels(b)
    if _pixels(a) and _pixels(b):  # the smallest such box: each edge touches a or b
        ys = [p[0] for p in _pixels(a) | _pixels(b)]
        xs = [p[1] for p in _pixels(a) | _pixels(b)]
        assert u == (min(ys), min(xs), max(ys) - min(ys) + 1, max(xs) - min(xs) + 1)
    # overlap_slices: the same pixels read from arrays that hold their own coordinates
    ya, xa = np.mgrid[a[0] : a[0] + a[2], a[1] : a[1] + a[3]]
    yb, xb = np.mgrid[b[0] : b[0] + b[2], b[1] : b[1] + b[3]]
    sa, sb = bx.overlap_slices(a, b)
    assert np.array_equal(ya[sa], yb[sb]) and np.array_equal(xa[sa], xb[sb])
    assert ya[sa].size == len(_pixels(c))


@settings(max_examples=200, deadline=None)
@given(b=boxes, H=st.integers(1, 6), W=st.integers(1, 6))
def test_clip_clip_slices_and_place_match_the_frame(b, H, W):
    frame = (0, 0, H, W)
    assert _pixels(bx.clip(b, (H, W))) == _pixels(b) & _pixels(frame)
    rng = np.random.default_rng(abs(hash(b)) % 2**32)
    arr = rng.random((b[2], b[3]))
    expect = np.zeros((H, W))
    for y, x in _pixels(b) & _pixels(frame):
        expect[y, x] = arr[y - b[0], x - b[1]]
    assert np.array_equal(bx.place(arr, b, (H, W)), expect)
    fr, own = bx.clip_slices(b, (H, W))
    assert np.array_equal(expect[fr], arr[own])


def test_grow_centered_and_pairs_by_hand():
    assert bx.grow((2, 3, 4, 5), 1) == (1, 2, 6, 7)
    assert bx.grow((2, 3, 4, 5), (2, 1)) == (0, 2, 8, 7)
    assert bx.centered((10, 20), (5, 3)) == (8, 19, 5, 3)
    boxes_ = np.array([(0, 0, 2, 2), (1, 1, 2, 2), (5, 5, 1, 1), (0, 0, 0, 4)])
    assert {tuple(p) for p in bx.overlapping_pairs(boxes_)} == {(0, 0), (0, 1), (1, 1), (2, 2)}


def test_as_box_takes_box_like_objects_and_refuses_bad_values():
    class Like:
        origin = (1, 2)
        shape = (3, 4)

    assert bx.as_box(Like()) == (1, 2, 3, 4)
    assert bx.as_box((0, 0, 0, 3), allow_empty=True) == (0, 0, 0, 3)
    with pytest.raises(TypeError, match="box must be an integer"):
        bx.as_box((0, 2.5, 1, 1))
    with pytest.raises(ValueError, match="an empty size"):
        bx.as_box((0, 0, 0, 3))


def test_dense_pairs_kernel_against_numpy_reference():
    # the kernel behind overlapping_pairs' all-pairs path against the numpy all-pairs test
    # it replaced: the same pairs in the same (row-major, k <= l) order, empty boxes
    # (no pair, not even with themselves) and negative origins included
    from cdeblend._apportion_cy import dense_pairs

    rng = np.random.default_rng(3)
    for n in [0, 1, 2, 7, 60, bx._DENSE_PAIRS]:
        boxes = np.stack(
            [
                rng.integers(-10, 60, n),
                rng.integers(-10, 60, n),
                rng.integers(0, 25, n),
                rng.integers(0, 25, n),
            ],
            axis=1,
        ).astype(np.int64)
        y0, x0 = boxes[:, 0], boxes[:, 1]
        y1, x1 = y0 + boxes[:, 2], x0 + boxes[:, 3]
        hit = (np.maximum(y0[:, None], y0[None]) < np.minimum(y1[:, None], y1[None])) & (
            np.maximum(x0[:, None], x0[None]) < np.minimum(x1[:, None], x1[None])
        )
        k, j = np.nonzero(np.triu(hit))
        want = np.stack([k, j], axis=1).astype(np.int64)
        got = dense_pairs(boxes)
        assert got.dtype == np.int64 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(bx.overlapping_pairs(boxes), want)
    with pytest.raises(ValueError, match="K, 4"):
        dense_pairs(np.zeros((3, 3), dtype=np.int64))
