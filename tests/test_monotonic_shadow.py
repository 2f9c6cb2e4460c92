"""The shadow-casting monotonic projection (spec 3.5) against a slow pure-Python version."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cdeblend import _monotonic_cy


def round_half_away(v):
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def shadow_pairs(L):
    """(x, y, vertical) of ring L, walked as the spec says."""
    x, y = L, -L
    out = []
    for dx, dy in ((0, 1), (-1, 0), (0, -1), (1, 0)):
        for _ in range(2 * L):
            out.append((x, y, dx == 0))
            x, y = x + dx, y + dy
    return out


def targets(x, y, vertical):
    """The pixels (x, y) shadows, relative to the peak."""
    A = 0.3
    if vertical:
        sig = 1 if x > 0 else -1
        t = y / x
    else:
        sig = 1 if y > 0 else -1
        t = x / y
    lo = t - A
    hi = lo + 2 * A
    out = []
    for k in range(1, 6):
        for m in range(round_half_away(k * lo), round_half_away(k * hi) + 1):
            out.append((x + sig * k, y + sig * m) if vertical else (x + sig * m, y + sig * k))
    return out


def slow_monotonic(T, py, px):
    """Spec 3.5, literally: rings in chunks of 5, each chunk reading a snapshot."""
    T = T.copy()
    h, w = T.shape
    DW = max(px, w - px)
    DH = max(py, h - py)
    V = T.copy()
    c = 0
    while 5 * c < max(DW, DH):
        for L in range(5 * c, 5 * c + 5):
            if L == 0:
                continue
            for x, y, vert in shadow_pairs(L):
                sy, sx = py + y, px + x
                if not (0 <= sy < h and 0 <= sx < w):
                    continue
                for qx, qy in targets(x, y, vert):
                    ty, tx = py + qy, px + qx
                    if 0 <= ty < h and 0 <= tx < w:
                        T[ty, tx] = min(T[ty, tx], V[sy, sx])
        V = T.copy()
        c += 1
    return T


def run(T, py, px):
    out = np.ascontiguousarray(T, dtype=np.float64).copy()
    _monotonic_cy.shadow_monotonic(out, py, px, np.empty_like(out))
    return out


def test_ring_walk_and_corner_rounding():
    # Ring 1: 8 pixels, the corners (1, -1) and (-1, 1) vertical, (1, 1), (-1, -1) horizontal.
    ring = shadow_pairs(1)
    assert len(ring) == 8
    assert (1, -1, True) in ring and (-1, 1, True) in ring
    assert (1, 1, False) in ring and (-1, -1, False) in ring
    # The spec's example: t = 1, k = 5 gives 5 * hi = 6.4999999999999991 -> 6, not 7.
    lo = 1.0 - 0.3
    assert 5 * (lo + 2 * 0.3) < 6.5
    assert round_half_away(5 * (lo + 2 * 0.3)) == 6
    # So from the corner (L, L) = (3, 3) the k = 5 targets reach x offsets up to 6, not 7.
    tg = [q for q in targets(3, 3, False) if q[1] == 8]
    assert max(q[0] for q in tg) == 3 + 6


@settings(max_examples=120, deadline=None)
@given(
    st.integers(1, 30),
    st.integers(1, 30),
    st.integers(-3, 33),
    st.integers(-3, 33),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
def test_matches_slow_reference_exactly(h, w, py, px, seed, with_zeros):
    rng = np.random.default_rng(seed)
    T = rng.random((h, w)) * 10
    if with_zeros:
        T[rng.random((h, w)) < 0.2] = 0.0
    out = run(T, py, px)
    ref = slow_monotonic(T, py, px)
    assert np.array_equal(out, ref)


def test_invariants_on_noisy_template():
    rng = np.random.default_rng(3)
    h, w, py, px = 41, 37, 20, 15
    yy, xx = np.mgrid[:h, :w]
    T = np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / 40.0) * 100 + rng.normal(0, 3, (h, w))
    T = np.maximum(T, 0)
    out = run(T, py, px)
    assert np.all(out <= T)
    assert out[py, px] == T[py, px]
    # Every shadow pair respects T_out(q) <= T_in(p).
    for L in range(1, max(h, w)):
        for x, y, vert in shadow_pairs(L):
            sy, sx = py + y, px + x
            if not (0 <= sy < h and 0 <= sx < w):
                continue
            for qx, qy in targets(x, y, vert):
                ty, tx = py + qy, px + qx
                if 0 <= ty < h and 0 <= tx < w:
                    assert out[ty, tx] <= T[sy, sx]


def test_radially_decreasing_template_is_unchanged():
    h, w, py, px = 33, 45, 16, 20
    yy, xx = np.mgrid[:h, :w]
    T = np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * 4.0**2))
    out = run(T, py, px)
    assert np.array_equal(out, T)


def test_zero_pixel_casts_zero_wedge():
    h, w, py, px = 21, 21, 10, 10
    T = np.ones((h, w))
    T[10, 13] = 0.0  # three pixels right of the peak
    out = run(T, py, px)
    # The pixels straight outwards along the row are in its shadow.
    assert np.all(out[10, 14:] == 0)
    # Pixels closer to the peak are untouched.
    assert np.all(out[10, 10:13] == 1)
