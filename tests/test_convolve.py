"""Convolution engine of Observation: FFT and direct modes against plain references."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdeblend import Observation
from cdeblend.convolution import Convolver


def reference_same_conv(x, kernel):
    """Slow, obvious same-size convolution, zero outside: out(p) = sum_k K(k) x(p - k)."""
    h, w = x.shape
    kh, kw = kernel.shape
    ry, rx = kh // 2, kw // 2
    out = np.zeros((h, w))
    for ky in range(kh):
        for kx in range(kw):
            dy, dx = ky - ry, kx - rx
            for y in range(h):
                ys = y - dy
                if 0 <= ys < h:
                    for xx in range(max(0, dx), min(w, w + dx)):
                        out[y, xx] += kernel[ky, kx] * x[ys, xx - dx]
    return out


def random_psfs(rng, bands, hp, wp):
    """Odd, unit-sum, broad PSFs (wider than the 0.8 px model PSF), not circular."""
    y = np.arange(hp) - hp // 2
    x = np.arange(wp) - wp // 2
    psfs = []
    for _ in range(bands):
        sy, sx = rng.uniform(1.3, 2.5, size=2)
        p = np.exp(-0.5 * ((y[:, None] / sy) ** 2 + (x[None, :] / sx) ** 2))
        p *= 1 + 0.05 * rng.random(p.shape)
        psfs.append(p / p.sum())
    return np.array(psfs)


def make_obs(rng, bands, h, w, hp, wp, dtype=np.float64):
    images = rng.normal(size=(bands, h, w))
    variance = rng.uniform(0.5, 2, size=(bands, h, w))
    return Observation(images, variance, random_psfs(rng, bands, hp, wp), dtype=dtype)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    bands=st.integers(1, 3),
    h=st.integers(1, 30),
    w=st.integers(1, 30),
    hp=st.sampled_from([9, 11, 15]),
    wp=st.sampled_from([9, 13]),
)
def test_fft_and_direct_match_reference(seed, bands, h, w, hp, wp):
    rng = np.random.default_rng(seed)
    obs = make_obs(rng, bands, 8, 8, hp, wp)
    x = rng.normal(size=(bands, h, w))
    expect = np.array([reference_same_conv(x[b], obs.diff_kernels[b]) for b in range(bands)])
    expect_adj = np.array(
        [reference_same_conv(x[b], obs.diff_kernels[b, ::-1, ::-1]) for b in range(bands)]
    )
    scale = np.abs(x).max()
    for mode in ("fft", "real"):
        np.testing.assert_allclose(obs.convolve(x, mode=mode), expect, atol=1e-12 * scale)
        np.testing.assert_allclose(
            obs.convolve_adjoint(x, mode=mode), expect_adj, atol=1e-12 * scale
        )


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), h=st.integers(1, 40), w=st.integers(1, 40))
def test_adjointness(seed, h, w):
    rng = np.random.default_rng(seed)
    obs = make_obs(rng, 2, 8, 8, 13, 11)
    x = rng.normal(size=(2, h, w))
    y = rng.normal(size=(2, h, w))
    for mode in ("fft", "real"):
        lhs = np.vdot(obs.convolve(x, mode=mode), y)
        rhs = np.vdot(x, obs.convolve_adjoint(y, mode=mode))
        assert abs(lhs - rhs) <= 1e-12 * np.sqrt(x.size * y.size)


def test_float32_modes_agree_and_single_plane_broadcast():
    rng = np.random.default_rng(3)
    obs = make_obs(rng, 3, 40, 33, 21, 21, dtype=np.float32)
    x = rng.random((3, 40, 33)).astype(np.float32)
    fft = obs.convolve(x, mode="fft")
    real = obs.convolve(x, mode="real")
    assert fft.dtype == np.float32
    np.testing.assert_allclose(fft, real, atol=2e-6 * np.abs(real).max())
    morph = rng.random((40, 33)).astype(np.float32)
    both = obs.convolve(morph)
    np.testing.assert_allclose(both, obs.convolve(np.stack([morph] * 3)), rtol=1e-5, atol=1e-6)


def test_out_buffers_and_errors():
    rng = np.random.default_rng(4)
    obs = make_obs(rng, 2, 10, 12, 9, 9)
    x = rng.normal(size=(2, 10, 12))
    out = np.empty_like(x)
    res = obs.convolve(x, out=out)
    assert res is out
    with pytest.raises(ValueError, match="out must be a float64 array"):
        obs.convolve(x, out=np.empty((2, 10, 11)))
    with pytest.raises(ValueError, match="model must have shape"):
        obs.convolve(rng.normal(size=(3, 10, 12)))
    with pytest.raises(ValueError, match="mode must be"):
        obs.convolve(x, mode="direct")
    with pytest.raises(ValueError, match="grad_out must be"):
        obs.loss_and_gradient(x, np.empty((2, 10, 12), dtype=np.float32))


def reference_loss_grad(obs, model):
    conv = np.array(
        [reference_same_conv(model[b], obs.diff_kernels[b]) for b in range(obs.shape[0])]
    )
    loss = 0.5 * np.sum(obs.weights * (obs.images - conv) ** 2)
    r = obs.weights * (conv - obs.images)
    grad = np.array(
        [reference_same_conv(r[b], obs.diff_kernels[b, ::-1, ::-1]) for b in range(obs.shape[0])]
    )
    return loss, grad


@pytest.mark.parametrize("mode", ["fft", "real", "auto"])
def test_loss_and_gradient_against_reference(mode):
    rng = np.random.default_rng(5)
    obs = make_obs(rng, 3, 17, 22, 11, 11)
    model = rng.random(obs.shape)
    grad = np.empty(obs.shape)
    loss = obs.loss_and_gradient(model, grad, mode=mode)
    ref_loss, ref_grad = reference_loss_grad(obs, model)
    assert isinstance(loss, float)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-12 * np.abs(ref_grad).max())
    np.testing.assert_allclose(obs.loss(model, mode=mode), ref_loss, rtol=1e-12)
    # repeated calls reuse buffers and give bit-identical results (determinism)
    grad2 = np.empty(obs.shape)
    assert obs.loss_and_gradient(model, grad2, mode=mode) == loss
    np.testing.assert_array_equal(grad, grad2)


def test_gradient_matches_finite_differences():
    rng = np.random.default_rng(6)
    obs = make_obs(rng, 2, 12, 10, 9, 9)
    model = rng.random(obs.shape)
    grad = np.empty(obs.shape)
    obs.loss_and_gradient(model, grad)
    eps = 1e-6
    for idx in [(0, 0, 0), (1, 5, 4), (0, 11, 9), (1, 3, 8)]:
        up, down = model.copy(), model.copy()
        up[idx] += eps
        down[idx] -= eps
        fd = (obs.loss(up) - obs.loss(down)) / (2 * eps)
        assert fd == pytest.approx(grad[idx], rel=1e-6, abs=1e-9)


def test_float32_loss_on_real_blend_matches_float64():
    from pathlib import Path

    with np.load(Path(__file__).parent / "data" / "hsc_cosmos_35.npz") as d:
        images, variance, psfs = d["images"], d["variance"], d["psfs"]
    obs32 = Observation(images, variance, psfs)
    obs64 = Observation(images, variance, psfs, dtype=np.float64)
    model = np.abs(obs32.images) * 0.5
    g32 = np.empty(obs32.shape, np.float32)
    g64 = np.empty(obs64.shape)
    l32 = obs32.loss_and_gradient(model, g32)
    l64 = obs64.loss_and_gradient(model.astype(np.float64), g64)
    assert l32 == pytest.approx(l64, rel=1e-5)
    np.testing.assert_allclose(g32, g64, atol=1e-5 * np.abs(g64).max())


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    y0=st.integers(-6, 25),
    x0=st.integers(-6, 25),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    planes=st.sampled_from([1, 2]),
    mode=st.sampled_from(["fft", "real"]),
)
def test_convolve_box_equals_full_frame(seed, y0, x0, h, w, planes, mode):
    rng = np.random.default_rng(seed)
    obs = make_obs(rng, 2, 24, 27, 9, 11)
    arr = rng.random((h, w)) if planes == 1 else rng.random((2, h, w))
    conv, grown = obs.convolve_box(arr, (y0, x0, h, w), mode=mode)
    # reference: insert into a zero frame (dropping what falls outside) and convolve it all
    frame = np.zeros(obs.shape)
    for yy in range(h):
        for xx in range(w):
            if 0 <= y0 + yy < 24 and 0 <= x0 + xx < 27:
                frame[:, y0 + yy, x0 + xx] = arr[..., yy, xx]
    full = np.array([reference_same_conv(frame[b], obs.diff_kernels[b]) for b in range(2)])
    gy0, gx0, gh, gw = grown
    assert conv.shape == (2, gh, gw)
    np.testing.assert_allclose(conv, full[:, gy0 : gy0 + gh, gx0 : gx0 + gw], atol=1e-12)
    # nothing is lost outside the grown box
    outside = full.copy()
    outside[:, gy0 : gy0 + gh, gx0 : gx0 + gw] = 0
    assert np.abs(outside).max(initial=0) < 1e-12


def test_fft_loss_gradient_and_box_against_reference():
    """The FFT engine (three bands: a packed pair and a lone band) on the fit's two calls."""
    rng = np.random.default_rng(8)
    obs = make_obs(rng, 3, 15, 19, 11, 9)
    model = rng.random(obs.shape)
    grad = np.empty(obs.shape)
    loss = obs.loss_and_gradient(model, grad, mode="fft")
    ref_loss, ref_grad = reference_loss_grad(obs, model)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-12 * np.abs(ref_grad).max())
    morph = rng.random((4, 6))
    conv, (gy0, gx0, gh, gw) = obs.convolve_box(morph, (3, 2, 4, 6), mode="fft")
    frame = np.zeros(obs.shape[1:])
    frame[3:7, 2:8] = morph
    full = np.array([reference_same_conv(frame, obs.diff_kernels[b]) for b in range(3)])
    np.testing.assert_allclose(conv, full[:, gy0 : gy0 + gh, gx0 : gx0 + gw], atol=1e-12)


def test_threads_share_an_observation():
    """Work buffers are per thread: concurrent fits on one Observation give the serial result."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(9)
    obs = make_obs(rng, 2, 30, 28, 11, 11, dtype=np.float32)
    models = [rng.random(obs.shape).astype(np.float32) for _ in range(8)]

    def run(m):
        g = np.empty(obs.shape, np.float32)
        losses = [obs.loss_and_gradient(m, g) for _ in range(20)]
        return losses[-1], g

    serial = [run(m) for m in models]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(run, models))
    for (l1, g1), (l2, g2) in zip(serial, threaded, strict=True):
        assert l1 == l2
        np.testing.assert_array_equal(g1, g2)


@pytest.mark.parametrize("mode", ["fft", "real"])
def test_in_place_convolution(mode):
    rng = np.random.default_rng(10)
    obs = make_obs(rng, 2, 12, 14, 9, 9)
    x = rng.random(obs.shape)
    expect = obs.convolve(x, mode=mode)
    obs.convolve(x, out=x, mode=mode)
    np.testing.assert_allclose(x, expect, rtol=1e-12, atol=1e-14)


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    y0=st.integers(-4, 20),
    x0=st.integers(-4, 20),
    dtype=st.sampled_from([np.float32, np.float64]),
    zero_taps=st.booleans(),
)
def test_exact_box_convolution_has_the_true_zeros(seed, y0, x0, dtype, zero_taps):
    """The products' FFT convolution: the full-frame reference values, and exactly 0 where
    no non-zero pixel meets a non-zero tap (sparse morphologies, kernels with zero taps)."""
    rng = np.random.default_rng(seed)
    obs = make_obs(rng, 2, 30, 33, 9, 11, dtype=dtype)
    if zero_taps:  # e.g. a kernel cut to a disc
        k = obs.diff_kernels.astype(np.float64)
        k[:, :2, :] = 0
        k[0, :, -3:] = 0
        obs.convolver = Convolver(k.astype(dtype), obs.shape[1:])
    obs.convolver.pick_mode = lambda *args, **kwargs: (
        "fft"
    )  # the small case would use the direct loop
    h, w = 12, 10
    arr = rng.random((2, h, w)) * (rng.random((h, w)) < 0.15)  # isolated pixels, zeros between
    conv, grown = obs.convolver.convolve_box_exact(arr.astype(dtype), (y0, x0, h, w))
    frame = np.zeros(obs.shape)
    for yy in range(h):
        for xx in range(w):
            if 0 <= y0 + yy < 30 and 0 <= x0 + xx < 33:
                frame[:, y0 + yy, x0 + xx] = arr[:, yy, xx]
    kern = obs.diff_kernels.astype(np.float64)
    full = np.array([reference_same_conv(frame[b], kern[b]) for b in range(2)])
    support = np.array(
        [reference_same_conv((frame[b] != 0) * 1.0, (kern[b] != 0) * 1.0) > 0.5 for b in range(2)]
    )
    gy0, gx0, gh, gw = grown
    sl = (slice(None), slice(gy0, gy0 + gh), slice(gx0, gx0 + gw))
    assert conv.dtype == dtype
    assert np.array_equal(conv == 0, ~support[sl] | (full[sl] == 0))
    tol = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(conv, full[sl], rtol=tol, atol=tol * np.abs(full).max())


def test_convolve_box_reuses_grid_buffers_without_stale_data():
    """Boxes of different shapes share FFT work buffers: a tall or wide box followed by a
    smaller one on the same grid must not see the earlier box's data."""
    rng = np.random.default_rng(21)
    obs = make_obs(rng, 2, 40, 44, 9, 9)
    boxes = [(0, 0, 40, 44), (4, 4, 29, 34), (0, 0, 40, 44), (2, 3, 33, 36), (4, 4, 29, 34)]
    grids = set()
    for y0, x0, h, w in boxes:
        arr = rng.random((h, w))
        conv, (gy0, gx0, gh, gw) = obs.convolve_box(arr, (y0, x0, h, w), mode="fft")
        grids.add(obs.convolver.fft_shape(gh, gw))
        frame = np.zeros(obs.shape[1:])
        frame[y0 : y0 + h, x0 : x0 + w] = arr
        full = np.array([reference_same_conv(frame, obs.diff_kernels[b]) for b in range(2)])
        np.testing.assert_allclose(conv, full[:, gy0 : gy0 + gh, gx0 : gx0 + gw], atol=1e-12)
    assert len(grids) == 1  # every box used the same FFT grid (and its buffers)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batched_box_convolutions_match_one_by_one(dtype):
    """The SED fit's batched convolutions equal convolve_box box by box (every path: shared
    grids, two planes per transform and a lone one, boxes partly outside the frame, empty
    boxes, small direct cases)."""
    rng = np.random.default_rng(5)
    obs = make_obs(rng, 3, 40, 37, 11, 9, dtype=dtype)
    arrays, boxes = [], []
    for _ in range(12):
        h, w = int(rng.integers(1, 30)), int(rng.integers(1, 30))
        arrays.append(rng.random((h, w)).astype(dtype))
        boxes.append((int(rng.integers(-5, 38)), int(rng.integers(-5, 35)), h, w))
    arrays.append(np.ones((3, 4), dtype=dtype))
    boxes.append((50, 50, 3, 4))  # outside the frame: empty result
    tol = 1e-12 if dtype == np.float64 else 2e-6
    for force_fft in (False, True):
        if force_fft:  # the cost model picks the direct loop for some of these small boxes
            obs.convolver.pick_mode = lambda mode, *args: "fft" if mode == "auto" else mode
        got = obs.convolver.convolve_boxes(arrays, boxes)
        for (conv, grown), a, box in zip(got, arrays, boxes, strict=True):
            ref, ref_grown = obs.convolve_box(a, box)
            assert grown == ref_grown and conv.dtype == dtype and conv.shape == ref.shape
            np.testing.assert_allclose(
                conv, ref, rtol=tol, atol=tol * max(np.abs(ref).max(initial=0), 1)
            )


def test_cost_model_pair_count_is_the_direct_loops_work():
    """The cost model's closed-form count of (output, source) pairs within the kernel
    radius along one axis, against the direct loop's per-tap overlaps."""
    from cdeblend.convolution import _pairs_within

    for n in range(1, 25):
        for m in range(0, n + 1):
            for lo in range(0, n - m + 1):
                for r in range(0, 20):
                    per_tap = sum(
                        max(min(n, lo + m + d) - max(0, lo + d), 0) for d in range(-r, r + 1)
                    )
                    assert _pairs_within(n, lo, m, r) == per_tap


@pytest.mark.parametrize("mode", ["fft", "real"])
def test_convolver_on_its_own_against_the_reference(mode):
    """A Convolver built from bare kernels (no Observation): the slow reference convolution,
    the adjoint identity <K x, r> = <x, K^T r>, and a convolver of another frame
    (on_frame) or unpickled gives the same values while sharing (or rebuilding) the cache."""
    import pickle

    rng = np.random.default_rng(8)
    kernels = rng.random((2, 7, 5))
    conv = Convolver(kernels, (17, 13))
    x = rng.random((2, 17, 13))
    r = rng.random((2, 17, 13))
    got = conv.convolve(x, mode=mode)
    ref = np.array([reference_same_conv(x[b], kernels[b]) for b in range(2)])
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    adj = conv.convolve(r, adjoint=True, mode=mode)
    assert np.isclose(np.sum(got * r), np.sum(x * adj), rtol=1e-12)
    other = conv.on_frame((9, 11))
    assert other.cache is conv.cache and other.modes is conv.modes and other.shape == (2, 9, 11)
    np.testing.assert_array_equal(other.convolve(x, mode=mode), got)
    again = pickle.loads(pickle.dumps(conv))
    assert again.cache is not conv.cache
    np.testing.assert_array_equal(again.convolve(x, mode=mode), got)
    with pytest.raises(ValueError, match="mode must be"):
        conv.convolve(x, mode="fast")


def test_grown_boxes_kernel_against_numpy_reference():
    """Convolver.grown_boxes (one Cython call for all boxes) against a slow numpy reference
    of box.clip's rule (the intersection with the frame, zero sizes when they do not
    overlap), the box clipped, then grown by the kernel half-size and clipped again; and
    row by row against Convolver.grown_box. Random boxes partly or wholly outside the
    frame, empty ones included."""
    rng = np.random.default_rng(11)
    for kh, kw, H, W in [(7, 5, 30, 40), (1, 1, 9, 4), (41, 41, 25, 60)]:
        conv = Convolver(np.ones((2, kh, kw), dtype=np.float32), (H, W))
        n = 300
        boxes = np.stack(
            [
                rng.integers(-50, H + 50, n),
                rng.integers(-50, W + 50, n),
                rng.integers(0, 40, n),
                rng.integers(0, 40, n),
            ],
            axis=1,
        ).astype(np.int64)

        def clip_ref(b, H=H, W=W):
            # pixel masks: the box's pixels inside the frame, their bounding box
            ys = np.arange(b[0], b[0] + b[2])
            xs = np.arange(b[1], b[1] + b[3])
            yin, xin = ys[(ys >= 0) & (ys < H)], xs[(xs >= 0) & (xs < W)]
            # without overlap the origin is the box's clamped at 0 (box.clip's convention)
            y0 = yin[0] if len(yin) else max(b[0], 0)
            x0 = xin[0] if len(xin) else max(b[1], 0)
            return np.array([y0, x0, len(yin), len(xin)])

        ry, rx = kh // 2, kw // 2
        want_c = np.array([clip_ref(b) for b in boxes])
        want_g = np.array([clip_ref(c + np.array([-ry, -rx, 2 * ry, 2 * rx])) for c in want_c])
        got_c, got_g = conv.grown_boxes(boxes)
        assert got_c.dtype == np.int64 and got_g.dtype == np.int64
        np.testing.assert_array_equal(got_c, want_c)
        np.testing.assert_array_equal(got_g, want_g)
        one_by_one = [conv.grown_box(tuple(b)) for b in boxes.tolist()]
        np.testing.assert_array_equal(got_c, [c for c, _ in one_by_one])
        np.testing.assert_array_equal(got_g, [g for _, g in one_by_one])
    # an empty list and a wrong shape
    c, g = conv.grown_boxes(np.zeros((0, 4), dtype=np.int64))
    assert c.shape == g.shape == (0, 4)
    from cdeblend._convolve_cy import grown_boxes

    with pytest.raises(ValueError, match="K, 4"):
        grown_boxes(
            np.zeros((3, 4), np.int64),
            5,
            5,
            1,
            1,
            np.zeros((2, 4), np.int64),
            np.zeros((3, 4), np.int64),
        )
