"""The multi-band monotonicity kernels against slow pure-Python references of the spec."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cdeblend import _monotonic_cy
from cdeblend.blend import RadialMonotonicity, radial_visiting_list

NEIGHBOURS = [(oy, ox) for oy in (-1, 0, 1) for ox in (-1, 0, 1) if (oy, ox) != (0, 0)]


def reference_weights(dy, dx):
    """Normalised neighbour weights of offset (dy, dx), straight from spec 3.7.1."""
    r = math.hypot(dy, dx)
    th = math.atan2(dy, dx)
    closer = [(oy, ox) for oy, ox in NEIGHBOURS if math.hypot(dy + oy, dx + ox) < r]
    if len(closer) == 1:
        return {closer[0]: 1.0}
    raw = {o: abs(math.cos(th - math.atan2(dy + o[0], dx + o[1]))) for o in closer}
    tot = sum(raw.values())
    return {o: v / tot for o, v in raw.items()} if tot > 0 else {}


def reference_project(m, cy, cx, g=0.0):
    """Radial monotonic projection of a copy of m about (cy, cx), pixel by pixel; with
    ``g`` (scarlet's minimum gradient) each pixel is capped at (1 - g) times the weighted
    mean of its closer neighbours."""
    m = np.array(m, dtype=np.float64)
    h, w = m.shape
    win = m[max(cy - 1, 0) : cy + 2, max(cx - 1, 0) : cx + 2]
    iy, ix = np.unravel_index(int(np.argmax(win)), win.shape)
    cy, cx = max(cy - 1, 0) + iy, max(cx - 1, 0) + ix
    pixels = sorted(
        ((y, x) for y in range(h) for x in range(w)),
        key=lambda p: (p[0] - cy) ** 2 + (p[1] - cx) ** 2,
    )
    for y, x in pixels:
        if (y, x) == (cy, cx):
            continue
        ref = 0.0
        for (oy, ox), wt in reference_weights(y - cy, x - cx).items():
            if 0 <= y + oy < h and 0 <= x + ox < w:
                ref += wt * m[y + oy, x + ox]
        m[y, x] = min(m[y, x], (1 - g) * ref)
    return m


def reference_mask(values, start):
    """Pixels reachable from start by 4-connected non-increasing positive paths (fixpoint)."""
    h, w = values.shape
    acc = np.zeros((h, w), dtype=bool)
    acc[start] = True
    changed = True
    while changed:
        changed = False
        for y in range(h):
            for x in range(w):
                if acc[y, x]:
                    continue
                for oy, ox in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                    yy, xx = y + oy, x + ox
                    if 0 <= yy < h and 0 <= xx < w and acc[yy, xx]:
                        if 0 < values[y, x] <= values[yy, xx]:
                            acc[y, x] = True
                            changed = True
                            break
    return acc


def test_weights_match_spec():
    dy, dx, wts = radial_visiting_list(6)
    assert (dy[0], dx[0]) == (0, 0)
    r2 = dy.astype(int) ** 2 + dx.astype(int) ** 2
    assert np.all(np.diff(r2) >= 0)
    assert len(set(zip(dy.tolist(), dx.tolist(), strict=True))) == 13 * 13
    for i in range(1, dy.size):
        ref = reference_weights(int(dy[i]), int(dx[i]))
        for k, o in enumerate(NEIGHBOURS):
            assert abs(wts[i, k] - ref.get(o, 0.0)) < 1e-14
        assert abs(wts[i].sum() - 1) < 1e-12
    # the hand-computed case of the spec: offset (1, 1) -> 1/3 on (0,0), (0,1), (1,0)
    i = int(np.flatnonzero((dy == 1) & (dx == 1))[0])
    np.testing.assert_allclose(wts[i], [1 / 3, 1 / 3, 0, 1 / 3, 0, 0, 0, 0], atol=1e-15)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 14), st.integers(1, 14), st.integers(0, 2**32 - 1))
def test_radial_project_matches_reference(h, w, seed):
    rng = np.random.default_rng(seed)
    m = rng.random((h, w)) * 2 - 0.3
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    op = RadialMonotonicity(half=2)  # grows on demand
    got = op(m, (cy, cx))
    np.testing.assert_allclose(got, reference_project(m, cy, cx), rtol=1e-13, atol=1e-15)


def test_radial_project_is_idempotent_and_monotone():
    rng = np.random.default_rng(3)
    m = rng.random((21, 17))
    op = RadialMonotonicity(half=50)
    once = op(m, (10, 8))
    np.testing.assert_array_equal(op(once, (10, 8)), once)
    assert np.all(once <= m + 1e-15)
    # every pixel <= the max of its neighbours that are closer to the (re-centred) peak
    cy, cx = np.unravel_index(np.argmax(m[9:12, 7:10]), (3, 3))
    cy, cx = cy + 9, cx + 7
    for y in range(21):
        for x in range(17):
            if (y, x) == (cy, cx):
                continue
            r = math.hypot(y - cy, x - cx)
            near = [
                once[y + oy, x + ox]
                for oy, ox in NEIGHBOURS
                if 0 <= y + oy < 21
                and 0 <= x + ox < 17
                and math.hypot(y + oy - cy, x + ox - cx) < r
            ]
            assert once[y, x] <= max(near) + 1e-15


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 12),
    st.integers(1, 12),
    st.integers(0, 2**32 - 1),
    st.booleans(),
    st.sampled_from([np.float32, np.float64]),
)
def test_monotonic_mask_matches_reference(H, W, seed, symmetric, dtype):
    rng = np.random.default_rng(seed)
    img = np.round(rng.normal(1.0, 1.0, size=(H, W)), 1).astype(dtype)  # ties on purpose
    sy, sx = int(rng.integers(0, H)), int(rng.integers(0, W))
    cy, cx = int(rng.integers(0, H)), int(rng.integers(0, W))
    my, mx = 2 * cy, 2 * cx
    if symmetric:
        vals = np.zeros((H, W), dtype=np.float64)
        for y in range(H):
            for x in range(W):
                ry, rx = my - y, mx - x
                if 0 <= ry < H and 0 <= rx < W:
                    vals[y, x] = min(img[y, x], img[ry, rx])
    else:
        vals = img.astype(np.float64)
    ref = reference_mask(vals, (sy, sx))
    acc = np.zeros((H, W), dtype=np.uint8)
    out = np.zeros((H, W), dtype=dtype)
    queue = np.zeros(H * W, dtype=np.int64)
    n, y0, x0, y1, x1 = _monotonic_cy.monotonic_mask(
        img, sy, sx, my, mx, symmetric, acc, queue, out
    )
    np.testing.assert_array_equal(acc.astype(bool), ref)
    assert n == ref.sum()
    np.testing.assert_array_equal(np.sort(queue[:n]), np.flatnonzero(ref))
    np.testing.assert_array_equal(out, np.where(ref, vals, 0).astype(dtype))
    ys, xs = np.nonzero(ref)
    assert (y0, x0, y1, x1) == (ys.min(), xs.min(), ys.max(), xs.max())
