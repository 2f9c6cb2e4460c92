"""Stray-flux kernels (_apportion_cy) against plain numpy / pure-Python references."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cdeblend import _apportion_cy


def slow_chamfer(index, dist):
    """The spec's two-pass chamfer, literally."""
    index, dist = index.copy(), dist.copy()
    H, W = dist.shape
    for y in range(H):
        for x in range(W):
            for ny, nx in ((y - 1, x), (y, x - 1)):
                if ny >= 0 and nx >= 0 and dist[ny, nx] + 1 < dist[y, x]:
                    dist[y, x] = dist[ny, nx] + 1
                    index[y, x] = index[ny, nx]
    for y in range(H - 1, -1, -1):
        for x in range(W - 1, -1, -1):
            for ny, nx in ((y + 1, x), (y, x + 1)):
                if ny < H and nx < W and dist[ny, nx] + 1 < dist[y, x]:
                    dist[y, x] = dist[ny, nx] + 1
                    index[y, x] = index[ny, nx]
    return index, dist


def ref_assign(values, contrib, is_psf, mode, clip):
    N, n = contrib.shape
    out = np.zeros((N, n))
    for k in range(n):
        elig = np.ones(N, bool) if mode == 1 else ~is_psf.astype(bool)
        c = contrib[:, k]
        if c[elig].sum() == 0 and mode == 0:
            elig = np.ones(N, bool)
        thr = clip * c[elig].sum()
        keep = elig & (c > 0) & ~(c < thr)
        tot = c[keep].sum()
        if tot > 0:
            out[keep, k] = values[k] * c[keep] / tot
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_nearest_footprint_matches_reference(H, W, n, seed):
    rng = np.random.default_rng(seed)
    index = np.full((H, W), -1, dtype=np.int64)
    dist = np.full((H, W), H + W, dtype=np.int64)
    fps = [rng.random((H, W)) < 0.1 for _ in range(n)]
    for k, fp in enumerate(fps):
        index[fp] = k  # later templates win on shared pixels
        dist[fp] = 0
    if not (index >= 0).any():
        return
    ref_i, ref_d = slow_chamfer(index, dist)
    _apportion_cy.nearest_footprint(index, dist)
    assert np.array_equal(index, ref_i)
    assert np.array_equal(dist, ref_d)
    # The distance is the exact L1 distance to the nearest footprint pixel, and the index
    # names a footprint at that distance.
    yy, xx = np.mgrid[:H, :W]
    any_fp = np.zeros((H, W), bool)
    for fp in fps:
        any_fp |= fp
    fy, fx = np.nonzero(any_fp)
    for y in range(H):
        for x in range(W):
            d = np.min(np.abs(fy - y) + np.abs(fx - x))
            assert dist[y, x] == d
            gy, gx = np.nonzero(fps[index[y, x]])
            assert np.min(np.abs(gy - y) + np.abs(gx - x)) == d


def test_r_to_peak():
    ys = np.array([0, 3, 5], dtype=np.int64)
    xs = np.array([0, 4, 1], dtype=np.int64)
    peaks = np.array([[0, 0], [2, 2]], dtype=np.int64)
    c = np.empty((2, 3))
    _apportion_cy.r_to_peak(ys, xs, peaks, c)
    ref = 1.0 / (1.0 + (ys[None] - peaks[:, :1]) ** 2 + (xs[None] - peaks[:, 1:]) ** 2)
    assert np.array_equal(c, ref)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(0, 20),
    st.sampled_from([0, 1, 2]),
    st.sampled_from([0.0, 0.001, 0.2]),
    st.integers(0, 2**32 - 1),
)
def test_assign_stray_matches_reference(N, n, mode, clip, seed):
    rng = np.random.default_rng(seed)
    values = rng.random(n) * 5
    contrib = rng.random((N, n))
    contrib[rng.random((N, n)) < 0.3] = 0.0
    is_psf = (rng.random(N) < 0.4).astype(np.uint8)
    out = np.empty((N, n))
    left = _apportion_cy.assign_stray(values, contrib, is_psf, mode, clip, out)
    ref = ref_assign(values, contrib, is_psf, mode, clip)
    np.testing.assert_allclose(out, ref, rtol=1e-14, atol=0)
    got = ref.sum(axis=0) > 0
    assert left == int(np.count_nonzero(~got))
    # What is given adds up to the pixel's value.
    np.testing.assert_allclose(out.sum(axis=0)[got], values[got], rtol=1e-12)
