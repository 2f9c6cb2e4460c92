"""Template kernels (_symmetric_cy) against plain numpy references."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cdeblend import _detection_cy, _symmetric_cy


# ------------------------------------------------------------------ references
def ref_symmetric(image, fp, cy2, cx2, y0, x0, h, w):
    """Mirror about (cy2 / 2, cx2 / 2): a pixel (even) or a half-way point (odd)."""
    T = np.zeros((h, w))
    S = np.zeros((h, w), dtype=bool)
    H, W = image.shape
    for i in range(h):
        for j in range(w):
            y, x = y0 + i, x0 + j
            my, mx = cy2 - y, cx2 - x
            if 0 <= y < H and 0 <= x < W and 0 <= my < H and 0 <= mx < W:
                if fp[y, x] and fp[my, mx]:
                    S[i, j] = True
                    T[i, j] = max(0.0, min(image[y, x], image[my, mx]))
    return T, S


def is_edge(fp, i, j):
    h, w = fp.shape
    for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        a, b = i + di, j + dj
        if not (0 <= a < h and 0 <= b < w) or not fp[a, b]:
            return True
    return False


def ref_median(T, half, where):
    h, w = T.shape
    out = T.copy()
    n = 2 * half + 1
    if h >= n and w >= n:
        for i in range(half, h - half):
            for j in range(half, w - half):
                if where[i, j]:
                    out[i, j] = np.median(T[i - half : i + half + 1, j - half : j + half + 1])
    return out


def ref_clip(T, fp):
    fp = fp.copy()
    h, w = T.shape
    for i in range(h):
        j = 0
        while j < w:
            if not fp[i, j]:
                j += 1
                continue
            s = j
            while j < w and fp[i, j]:
                j += 1
            nz = [k for k in range(s, j) if T[i, k] != 0]
            for k in range(s, j):
                if not nz or k < nz[0] or k > nz[-1]:
                    fp[i, k] = False
    return fp


# ------------------------------------------------------------------ tests
@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 20),
    st.integers(1, 20),
    st.integers(0, 2**32 - 1),
    st.sampled_from([np.float32, np.float64]),
)
def test_symmetric_matches_reference(H, W, seed, dtype):
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(H, W)).astype(dtype)
    fp = (rng.random((H, W)) < 0.7).astype(np.uint8)
    # Twice the centre: a pixel (even) or a point half-way between pixels (odd).
    cy2, cx2 = int(rng.integers(-1, 2 * H)), int(rng.integers(-1, 2 * W))
    y0, x0 = int(rng.integers(-2, H)), int(rng.integers(-2, W))
    h, w = int(rng.integers(1, H + 3)), int(rng.integers(1, W + 3))
    T = np.empty((h, w))
    S = np.empty((h, w), dtype=np.uint8)
    bbox = np.empty(4, dtype=np.int64)
    n = _symmetric_cy.symmetric_template(image, fp, cy2, cx2, y0, x0, T, S, bbox)
    rT, rS = ref_symmetric(image.astype(np.float64), fp, cy2, cx2, y0, x0, h, w)
    assert np.array_equal(S.astype(bool), rS)
    assert np.array_equal(T, rT)
    assert n == rS.sum()
    if n:
        ys, xs = np.nonzero(rS)
        assert tuple(bbox) == (ys.min(), xs.min(), ys.max(), xs.max())


def test_symmetric_template_is_symmetric():
    rng = np.random.default_rng(0)
    image = rng.normal(5, 2, size=(30, 30))
    fp = (rng.random((30, 30)) < 0.9).astype(np.uint8)
    py, px = 14, 17
    fp[py, px] = 1
    T = np.empty((30, 30))
    S = np.empty((30, 30), dtype=np.uint8)
    _symmetric_cy.symmetric_template(image, fp, 2 * py, 2 * px, 0, 0, T, S, np.empty(4, np.int64))
    for y in range(30):
        for x in range(30):
            my, mx = 2 * py - y, 2 * px - x
            if S[y, x]:
                assert 0 <= my < 30 and 0 <= mx < 30 and S[my, mx]
                assert T[y, x] == T[my, mx]
    assert np.all(T >= 0)
    assert np.all(T[S == 0] == 0)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 15), st.integers(1, 15), st.integers(0, 2**32 - 1))
def test_edge_max_and_ramp_match_reference(h, w, seed):
    rng = np.random.default_rng(seed)
    T = rng.random((h, w)) * 10
    fp = (rng.random((h, w)) < 0.7).astype(np.uint8)
    ph, pw = 2 * int(rng.integers(0, 4)) + 1, 2 * int(rng.integers(0, 4)) + 1
    psf_hat = rng.random((ph, pw))
    s = 3
    R = np.zeros((h + 2 * s, w + 2 * s))
    _symmetric_cy.ramp_image(T, fp, psf_hat, s, s, R)
    ref = np.zeros_like(R)
    emax = -np.inf
    for i in range(h):
        for j in range(w):
            if fp[i, j] and is_edge(fp, i, j):
                emax = max(emax, T[i, j])
                for a in range(ph):
                    for b in range(pw):
                        y, x = s + i + a - ph // 2, s + j + b - pw // 2
                        if 0 <= y < R.shape[0] and 0 <= x < R.shape[1]:
                            ref[y, x] = max(ref[y, x], T[i, j] * psf_hat[a, b])
    assert np.array_equal(R, ref)
    assert _symmetric_cy.edge_max(T, fp) == emax


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 14), st.integers(1, 14), st.integers(0, 3), st.integers(0, 2**32 - 1))
def test_median_matches_numpy(h, w, half, seed):
    rng = np.random.default_rng(seed)
    T = rng.normal(size=(h, w))
    T[rng.random((h, w)) < 0.3] = 0.0  # ties and zeros
    where = (rng.random((h, w)) < 0.7).astype(np.uint8)
    for mask in (np.ones((h, w), np.uint8), where):
        out = np.empty_like(T)
        _symmetric_cy.median_smooth(T, half, out, np.empty((2 * half + 1) ** 2), mask)
        assert np.array_equal(out, ref_median(T, half, mask))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_clip_to_nonzero_matches_reference(h, w, seed):
    rng = np.random.default_rng(seed)
    T = rng.normal(size=(h, w))
    T[rng.random((h, w)) < 0.5] = 0.0
    fp = (rng.random((h, w)) < 0.7).astype(np.uint8)
    ref = ref_clip(T, fp.astype(bool))
    bbox = np.empty(4, dtype=np.int64)
    n = _symmetric_cy.clip_to_nonzero(T, fp, bbox)
    assert np.array_equal(fp.astype(bool), ref)
    assert n == ref.sum()
    if n:
        ys, xs = np.nonzero(ref)
        assert tuple(bbox) == (ys.min(), xs.min(), ys.max(), xs.max())


def test_clip_to_nonzero_reference_fixture():
    # Spec 3.6: a 13x13 footprint over an image that is 20 on the central 11x11 box, one
    # internal 0 and one negated row, clips to exactly the 11x11 box.
    T = np.zeros((13, 13))
    T[1:12, 1:12] = 20.0
    T[6, 6] = 0.0
    T[3, 1:12] *= -1
    fp = np.ones((13, 13), dtype=np.uint8)
    bbox = np.empty(4, dtype=np.int64)
    n = _symmetric_cy.clip_to_nonzero(T, fp, bbox)
    assert n == 121
    assert tuple(bbox) == (1, 1, 11, 11)
    assert fp[1:12, 1:12].all() and fp.sum() == 121


def ref_psf_rows(image, variance, fp, sy0, sx0, cy, cx, r0, r1, psig, clip, neigh):
    """Plain numpy version of the PSF-fit design rows (spec 3.1)."""
    K, sh, sw = neigh.shape
    y0c, y1c, x0c, x1c = clip
    rows, data, radial, pix = [], [], [], []
    for i in range(sh):
        for j in range(sw):
            y, x = sy0 + i, sx0 + j
            r2 = (x - cx) ** 2 + (y - cy) ** 2
            if not (fp[y, x] and r2 <= r1 * r1 and variance[y, x] > 0):
                continue
            r = np.sqrt(r2)
            rw = 1.0 if r1 <= r0 else min(max(1 - (r - r0) / (r1 - r0), 0.0), 1.0)
            w = np.sqrt(rw / variance[y, x])
            ddx = (
                0.5 * (psig[i + 1, j + 2] - psig[i + 1, j])
                if (y0c <= y < y1c and x0c < x < x1c - 1)
                else 0.0
            )
            ddy = (
                0.5 * (psig[i + 2, j + 1] - psig[i, j + 1])
                if (x0c <= x < x1c and y0c < y < y1c - 1)
                else 0.0
            )
            row = [psig[i + 1, j + 1], 1.0, x - cx, y - cy, *neigh[:, i, j], ddx, ddy]
            rows.append(np.array(row) * w)
            data.append(image[y, x] * w)
            radial.append(rw)
            pix.append((y, x))
    return np.array(rows).reshape(-1, 6 + K), np.array(data), np.array(radial), np.array(pix)


@settings(max_examples=60, deadline=None)
@given(st.integers(3, 12), st.integers(3, 12), st.integers(0, 3), st.integers(0, 2**32 - 1))
def test_psf_fit_rows_match_reference(sh, sw, K, seed):
    rng = np.random.default_rng(seed)
    H, W = sh + 6, sw + 6
    image = rng.normal(size=(H, W))
    variance = rng.uniform(0.5, 2, (H, W))
    variance[rng.random((H, W)) < 0.1] = 0.0  # pixels without data are left out
    fp = (rng.random((H, W)) < 0.8).astype(np.uint8)
    sy0, sx0 = 3, 3
    cy, cx = sy0 + sh / 2 + rng.uniform(-1, 1), sx0 + sw / 2 + rng.uniform(-1, 1)
    r0 = float(rng.integers(1, 4))
    r1 = r0 + float(rng.integers(0, 4))
    psig = rng.random((sh + 2, sw + 2))
    clip = (
        sy0 + int(rng.integers(-1, 3)),
        sy0 + sh - int(rng.integers(-1, 3)),
        sx0 + int(rng.integers(-1, 3)),
        sx0 + sw - int(rng.integers(-1, 3)),
    )
    neigh = rng.random((K, sh, sw))
    A = np.empty((sh * sw, 6 + K))
    b = np.empty(sh * sw)
    rw = np.empty(sh * sw)
    pix = np.empty((sh * sw, 2), dtype=np.int64)
    m = _symmetric_cy.psf_fit_rows(
        image, variance, fp, sy0, sx0, cy, cx, r0, r1, psig, *clip, neigh, A, b, rw, pix
    )
    rA, rb, rrw, rpix = ref_psf_rows(
        image, variance, fp, sy0, sx0, cy, cx, r0, r1, psig, clip, neigh
    )
    assert m == len(rb)
    np.testing.assert_allclose(A[:m], rA, rtol=1e-13, atol=0)
    np.testing.assert_allclose(b[:m], rb, rtol=1e-13, atol=0)
    np.testing.assert_allclose(rw[:m], rrw, rtol=1e-13, atol=0)
    if m:
        assert np.array_equal(pix[:m], rpix)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.integers(0, 10), st.integers(0, 2**32 - 1))
def test_dilate_disc_matches_scipy(H, W, r, seed):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    # from sparse (the disc-painting path) to dense (the row-scan path)
    mask = rng.random((H, W)) < rng.random() ** 3
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    ref = ndimage.binary_dilation(mask, structure=(yy * yy + xx * xx) <= r * r)
    out = np.empty((H, W), np.uint8)
    _detection_cy.dilate_disc(mask.view(np.uint8), r, out, np.empty((H, W + 1), np.int32))
    assert np.array_equal(out.astype(bool), ref)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 25), st.integers(1, 25), st.integers(0, 2**32 - 1))
def test_gaussian_moments_match_numpy(h, w, seed):
    rng = np.random.default_rng(seed)
    img = rng.random((h, w))
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    iyy, ixx = rng.uniform(0.05, 1, 2)
    ixy = rng.uniform(-0.5, 0.5) * np.sqrt(iyy * ixx)
    out = np.empty(6)
    _symmetric_cy.gaussian_moments(img, cy, cx, iyy, ixy, ixx, out)
    dy, dx = np.mgrid[:h, :w].astype(float)
    dy -= cy
    dx -= cx
    f = img * np.exp(-0.5 * (iyy * dy**2 + 2 * ixy * dy * dx + ixx * dx**2))
    ref = [
        f.sum(),
        (f * dy).sum(),
        (f * dx).sum(),
        (f * dy**2).sum(),
        (f * dx * dy).sum(),
        (f * dx**2).sum(),
    ]
    np.testing.assert_allclose(out, ref, rtol=1e-11, atol=1e-14)
