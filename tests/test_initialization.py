"""Initialization against a plain numpy/pure-Python re-implementation of spec 2.1-2.3."""

from collections import deque
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdeblend import DeblendConfig, Observation
from cdeblend.box import centered, clip_slices
from cdeblend.initialization import chi2_coadd, initialize_blend, peak_snr

DATA = Path(__file__).parent / "data" / "hsc_cosmos_35.npz"


def load_real():
    with np.load(DATA) as d:
        obs = Observation(d["images"], d["variance"], d["psfs"])
        cat = d["catalog"]
    return obs, np.stack([cat["y"], cat["x"]], axis=1).astype(int)


def bfs_mask(vals, start):
    """Pixels reachable from start through 4-neighbours with 0 < v(q) <= v(p)."""
    H, W = vals.shape
    acc = np.zeros((H, W), dtype=bool)
    acc[start] = True
    todo = deque([start])
    while todo:
        y, x = todo.popleft()
        for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= yy < H and 0 <= xx < W and not acc[yy, xx]:
                if 0 < vals[yy, xx] <= vals[y, x]:
                    acc[yy, xx] = True
                    todo.append((yy, xx))
    return acc


def reference_single(obs, peak, t0, padding=2):
    """Morphology, box and SED of one peak without the bulge/disk split (None: PSF)."""
    B, H, W = obs.shape
    D = np.tensordot(1 / obs.noise_rms.astype(np.float64) ** 2, obs.images.astype(np.float64), 1)
    py, px = peak
    sym = np.zeros((H, W))
    for y in range(H):
        for x in range(W):
            ry, rx = 2 * py - y, 2 * px - x
            if 0 <= ry < H and 0 <= rx < W:
                sym[y, x] = min(D[y, x], D[ry, rx])
    ya, xa = max(py - 1, 0), max(px - 1, 0)
    win = sym[ya : py + 2, xa : px + 2]
    iy, ix = np.unravel_index(int(np.argmax(win)), win.shape)
    start = (ya + iy, xa + ix)
    acc = bfs_mask(sym, start)
    morph = np.where(acc, sym, 0.0)
    if acc.sum() == 1 and morph[start] == 0:
        return None
    morph[morph <= t0] = 0
    if not np.any(morph > 0):
        return None
    ys, xs = np.nonzero(morph)
    y0, y1 = ys.min() - 2 * padding, ys.max() + 1 + 2 * padding
    x0, x1 = xs.min() - 2 * padding, xs.max() + 1 + 2 * padding
    y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, H), min(x1, W)
    morph = morph[y0:y1, x0:x1]
    C = obs.convolve(np.repeat(D[None], B, axis=0).astype(obs.dtype)).astype(np.float64)
    sed = np.maximum(obs.images[:, py, px] / C[:, py, px], 0) * morph.max()
    return morph / morph.max(), (y0, x0, y1 - y0, x1 - x0), sed


def test_chi2_coadd_and_snr_formulas():
    obs, peaks = load_real()
    D = chi2_coadd(obs)
    ref = sum(obs.images[b].astype(np.float64) / obs.noise_rms[b] ** 2 for b in range(5))
    np.testing.assert_allclose(D, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    # S/N of a point source: sum(I P) / sqrt(sum(P^2 V)) with the PSF centred on the peak
    py, px = peaks[0]
    num = den = 0.0
    r = obs.psfs.shape[1] // 2
    for b in range(5):
        for y in range(obs.shape[1]):
            for x in range(obs.shape[2]):
                dy, dx = y - py + r, x - px + r
                if 0 <= dy < obs.psfs.shape[1] and 0 <= dx < obs.psfs.shape[2]:
                    p = float(obs.psfs[b, dy, dx])
                    num += float(obs.images[b, y, x]) * p
                    den += p * p * float(obs.variance[b, y, x])
    assert peak_snr(obs, (int(py), int(px))) == pytest.approx(num / np.sqrt(den), rel=1e-6)


def test_single_components_match_reference():
    obs, peaks = load_real()
    config = DeblendConfig(max_components=1, set_spectra=False, init_thresh_units="image")
    blend, info = initialize_blend(obs, peaks, config)
    t0 = float(np.mean(obs.noise_rms))
    for src, peak in zip(blend.sources, peaks, strict=True):
        ref = reference_single(obs, tuple(peak), t0)
        assert ref is not None
        morph, box, sed = ref
        (comp,) = src.components
        assert comp.kind == "extended"
        assert comp.box == box
        np.testing.assert_allclose(comp.morphology, morph, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(comp.sed, sed, rtol=2e-4)
        assert comp.bg_thresh == config.bg_thresh


def test_bulge_disk_split_of_bright_sources():
    obs, peaks = load_real()
    single, info = initialize_blend(obs, peaks, DeblendConfig(max_components=1, set_spectra=False))
    split, _ = initialize_blend(obs, peaks, DeblendConfig(set_spectra=False))
    n_split = 0
    for s1, s2, snr in zip(single.sources, split.sources, info["snr"], strict=True):
        if np.floor(snr) / 50 < 2:
            assert [c.kind for c in s2.components] == ["extended"]
            continue
        n_split += 1
        bulge, disk = s2.components
        assert (bulge.kind, disk.kind) == ("bulge", "disk")
        m = s1.components[0].morphology
        assert bulge.box == disk.box == s1.components[0].box
        np.testing.assert_allclose(bulge.morphology, np.maximum(m - 0.25, 0) / 0.75, atol=1e-12)
        np.testing.assert_allclose(disk.morphology, np.minimum(m, 0.25) / 0.25, atol=1e-12)
    assert n_split >= 2


def test_psf_fallback_is_cropped_correctly_at_the_low_edge():
    rng = np.random.default_rng(5)
    B, H, W = 2, 30, 30
    ax = np.arange(13) - 6
    psf = np.exp(-0.5 * (ax[:, None] ** 2 + ax[None] ** 2) / 2.0**2)
    psf = np.repeat((psf / psf.sum())[None], B, axis=0)
    images = rng.normal(0, 0.1, size=(B, H, W))
    images[:, :4, :5] = -1.0  # nothing extended can start from a negative peak
    images[:, 20, 20] = 5.0
    obs = Observation(images, np.full((B, H, W), 0.01), psf)
    blend, _ = initialize_blend(obs, np.array([[1, 2], [20, 20]]), DeblendConfig(set_spectra=False))
    (comp,) = blend.sources[0].components
    assert comp.kind == "psf"
    P = obs.model_psf
    assert comp.box == (0, 0, 9, 10)
    np.testing.assert_allclose(comp.morphology, P[6:, 5:] / P.max(), rtol=1e-12)
    assert comp.local_peak == (1, 2) and comp.morphology[1, 2] == 1.0
    assert np.all(comp.sed >= 0)
    assert comp.bg_thresh == 1.0  # the configured threshold (the reference uses 0.25 here)


def test_residual_init_starts_faint_neighbours_from_their_own_light():
    with np.load(Path(__file__).parent / "data" / "sim_lsst_blend_0008.npz") as d:
        obs = Observation(d["images"], d["variance"], d["psfs"])
        peaks = np.stack([d["catalog"]["y"], d["catalog"]["x"]], axis=1).astype(int)
    plain, _ = initialize_blend(obs, peaks, DeblendConfig(set_spectra=False, max_components=1))
    resid, _ = initialize_blend(
        obs, peaks, DeblendConfig(set_spectra=False, max_components=1, residual_init=True)
    )
    D = chi2_coadd(obs)
    brightest = int(np.argmax(D[peaks[:, 0], peaks[:, 1]]))
    a, b = plain.sources[brightest].components[0], resid.sources[brightest].components[0]
    assert a.box == b.box
    np.testing.assert_array_equal(a.morphology, b.morphology)
    y0, x0, h, w = a.box
    changed = 0
    for i, (py, px) in enumerate(peaks):
        if i == brightest or not (y0 <= py < y0 + h and x0 <= px < x0 + w):
            continue
        if a.morphology[py - y0, px - x0] == 0:
            continue  # outside the brighter source's mask: initialised as before
        p, r = plain.sources[i].components[0], resid.sources[i].components[0]
        assert r.kind == "psf" or r.morphology.sum() < p.morphology.sum()
        changed += 1
    assert changed >= 1


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**16), quirk=st.booleans())
def test_flood_fill_starts_on_the_brightest_symmetric_neighbour(seed, quirk):
    """The start pixel of a peak's monotonic mask against the obvious Python loop: the
    first maximum, in raster order, of min(D[y, x], D[mirror]) over the 3 x 3 window."""
    from cdeblend import _monotonic_cy

    rng = np.random.default_rng(seed)
    H, W = int(rng.integers(1, 9)), int(rng.integers(1, 9))
    D = np.round(rng.normal(size=(H, W)), 1)  # rounded: ties happen
    py, px = int(rng.integers(0, H)), int(rng.integers(0, W))
    my, mx = (H - 1, W - 1) if quirk else (2 * py, 2 * px)
    best, start = -np.inf, (py, px)
    for y in range(max(py - 1, 0), min(py + 2, H)):
        for x in range(max(px - 1, 0), min(px + 2, W)):
            ry, rx = my - y, mx - x
            v = min(D[y, x], D[ry, rx]) if 0 <= ry < H and 0 <= rx < W else 0.0
            if v > best:
                best, start = v, (y, x)
    assert _monotonic_cy.brightest_symmetric_neighbour(D, py, px, my, mx) == start


# ------------------------------------------------------------------------------------------
# The kernels of the initialisation (_initialization_cy) against the numpy code they replace.
# Most are bit for bit: they sum in numpy's own (pairwise) order. Sizes above the GIL
# threshold (_shared/gil.pxd: 32768 operations) take the other branch of each kernel.


def _numpy_snr(images, variance, psfs, peak):
    """peak_snr as numpy computed it."""
    sl_img, sl_psf = clip_slices(centered(peak, psfs.shape[1:]), images.shape[1:])
    P = np.asarray(psfs[(slice(None),) + sl_psf], dtype=np.float64)
    num = float(np.sum(images[(slice(None),) + sl_img] * P))
    den = float(np.sum(P * P * variance[(slice(None),) + sl_img]))
    return num / np.sqrt(den) if den > 0 else 0.0


def _numpy_conv_at(plane, kernels, y, x):
    """conv(plane, kernels[b]) at (y, x) as numpy computed it (zero outside the plane)."""
    kernels = np.asarray(kernels, dtype=np.float64)
    _, kh, kw = kernels.shape
    ry, rx = kh // 2, kw // 2
    H, W = plane.shape
    ya, yb = max(y - ry, 0), min(y + ry + 1, H)
    xa, xb = max(x - rx, 0), min(x + rx + 1, W)
    k = kernels[:, ::-1, ::-1][:, ya - (y - ry) : yb - (y - ry), xa - (x - rx) : xb - (x - rx)]
    return np.sum(plane[ya:yb, xa:xb] * k, axis=(1, 2))


def _random_cube(rng, B, H, W, dtype):
    return rng.normal(size=(B, H, W)).astype(dtype)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    B=st.integers(1, 6),
    H=st.integers(1, 40),
    W=st.integers(1, 40),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_detection_coadd_matches_numpy(seed, B, H, W, dtype):
    from cdeblend import _initialization_cy

    rng = np.random.default_rng(seed)
    images = _random_cube(rng, B, H, W, dtype)
    noise = rng.uniform(0.1, 3.0, size=B)
    noise[rng.random(B) < 0.2] = 0.0  # no weight
    ref = np.zeros((H, W))
    for b in range(B):
        if noise[b] > 0:
            ref = ref + (1.0 / noise[b] ** 2) * images[b].astype(np.float64)
    scale = sum(
        np.abs(images[b]).astype(np.float64) / noise[b] ** 2 for b in range(B) if noise[b] > 0
    )
    D = _initialization_cy.detection_coadd(images, noise)
    assert D.dtype == np.float64 and D.shape == (H, W)
    # the same sum in the same order (a fused multiply-add may round differently)
    np.testing.assert_allclose(D, ref, rtol=0, atol=1e-15 * (np.max(scale, initial=0) + 1e-300))
    obs = SimpleNamespace(images=images, noise_rms=noise.astype(dtype))
    np.testing.assert_array_equal(
        chi2_coadd(obs),
        _initialization_cy.detection_coadd(images, noise.astype(dtype).astype(np.float64)),
    )


def test_detection_coadd_of_a_large_image_matches_numpy():
    from cdeblend import _initialization_cy

    rng = np.random.default_rng(3)
    images = _random_cube(rng, 5, 120, 90, np.float32)  # 54000 operations: GIL released
    noise = np.array([1.0, 0.5, 2.0, 0.0, 0.7])
    inv = np.divide(1.0, noise**2, out=np.zeros(5), where=noise > 0)
    np.testing.assert_allclose(
        _initialization_cy.detection_coadd(images, noise),
        np.tensordot(inv, images.astype(np.float64), axes=1),
        rtol=1e-12,
        atol=1e-12,
    )


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    B=st.integers(1, 6),
    H=st.integers(1, 30),
    W=st.integers(1, 30),
    ph=st.integers(1, 23),
    pw=st.integers(1, 23),
    n=st.integers(0, 8),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_peak_snrs_match_numpy_bit_for_bit(seed, B, H, W, ph, pw, n, dtype):
    from cdeblend import _initialization_cy

    rng = np.random.default_rng(seed)
    images = _random_cube(rng, B, H, W, dtype)
    variance = rng.uniform(0, 2, size=(B, H, W)).astype(dtype)
    variance[:, rng.random((H, W)) < 0.1] = 0
    psfs = rng.random((B, ph, pw)).astype(dtype)  # any size, even ones too
    peaks = np.stack([rng.integers(0, H, n), rng.integers(0, W, n)], axis=1).astype(np.intp)
    snr = _initialization_cy.peak_snrs(images, variance, psfs, peaks)
    ref = [_numpy_snr(images, variance, psfs, tuple(p)) for p in peaks]
    np.testing.assert_array_equal(snr, np.array(ref, dtype=np.float64).reshape(n))
    if n:
        obs = SimpleNamespace(images=images, variance=variance, psfs=psfs)
        assert peak_snr(obs, tuple(peaks[0])) == ref[0]


def test_peak_snrs_of_many_peaks_match_numpy():
    from cdeblend import _initialization_cy

    obs, peaks = load_real()  # 35 peaks x 5 bands x 41 x 41 PSFs: the GIL is released
    snr = _initialization_cy.peak_snrs(obs.images, obs.variance, obs.psfs, peaks.astype(np.intp))
    ref = [_numpy_snr(obs.images, obs.variance, obs.psfs, tuple(p)) for p in peaks]
    np.testing.assert_array_equal(snr, ref)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    B=st.integers(1, 6),
    H=st.integers(1, 30),
    W=st.integers(1, 30),
    kh=st.integers(0, 10),
    kw=st.integers(0, 10),
    n=st.integers(0, 6),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_conv_at_and_peak_seds_match_numpy_bit_for_bit(seed, B, H, W, kh, kw, n, dtype):
    from cdeblend import _initialization_cy

    rng = np.random.default_rng(seed)
    kernels = rng.normal(size=(B, 2 * kh + 1, 2 * kw + 1)).astype(dtype)
    D = rng.normal(size=(H, W))
    D[rng.random((H, W)) < 0.3] = 0  # some convolutions are exactly 0
    images = _random_cube(rng, B, H, W, dtype)
    peaks = np.stack([rng.integers(0, H, n), rng.integers(0, W, n)], axis=1).astype(np.intp)
    for y, x in peaks:
        np.testing.assert_array_equal(
            _initialization_cy.conv_at(D, kernels, y, x), _numpy_conv_at(D, kernels, y, x)
        )
    scale = rng.uniform(0.5, 2.0, size=n)
    scale[rng.random(n) < 0.3] = 0  # skipped
    sed = _initialization_cy.peak_seds(images, D, kernels, peaks, scale)
    assert sed.shape == (n, B)
    for i, (y, x) in enumerate(peaks):
        if scale[i] == 0:
            np.testing.assert_array_equal(sed[i], 0)
            continue
        c = _numpy_conv_at(D, kernels, y, x)
        with np.errstate(all="ignore"):
            r = np.divide(images[:, y, x].astype(np.float64), c, out=np.zeros(B), where=c != 0)
        r = np.where(np.isfinite(r) & (r > 0), r, 0.0)
        np.testing.assert_array_equal(sed[i], r * scale[i])


def _numpy_extended(D, peak, t0, padding, quirk):
    """The extended morphology of a peak with numpy and a Python flood fill: (morph, box,
    peak value) or None, and the accepted values (for ``residual_init``)."""
    H, W = D.shape
    py, px = peak
    my, mx = (H - 1, W - 1) if quirk and peak == (H // 2, W // 2) else (2 * py, 2 * px)
    sym = np.zeros((H, W))
    for y in range(H):
        for x in range(W):
            if 0 <= my - y < H and 0 <= mx - x < W:
                sym[y, x] = min(D[y, x], D[my - y, mx - x])
    ya, xa = max(py - 1, 0), max(px - 1, 0)
    win = sym[ya : py + 2, xa : px + 2]
    iy, ix = np.unravel_index(int(np.argmax(win)), win.shape)
    acc = bfs_mask(sym, (ya + iy, xa + ix))
    raw = np.where(acc, sym, 0.0)
    kept = acc & (sym > t0) if t0 > 0 else acc
    if not np.any(kept) or not np.max(sym[kept]) > 0:
        return None, raw
    ys, xs = np.nonzero(kept)
    grow = 2 * padding if t0 > 0 else padding
    y0, x0 = max(ys.min() - grow, 0), max(xs.min() - grow, 0)
    y1, x1 = min(ys.max() + 1 + grow, H), min(xs.max() + 1 + grow, W)
    mxv = np.max(sym[kept])
    morph = np.where(kept, sym, 0.0)[y0:y1, x0:x1] / mxv
    return (morph, (y0, x0, y1 - y0, x1 - x0), mxv), raw


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    H=st.integers(1, 16),
    W=st.integers(1, 16),
    t0=st.sampled_from([0.0, 0.3, 1.0]),
    padding=st.integers(0, 3),
    quirk=st.booleans(),
    residual=st.booleans(),
)
def test_extended_morphology_matches_numpy(seed, H, W, t0, padding, quirk, residual):
    from cdeblend import _initialization_cy

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    cy, cx = rng.uniform(0, H), rng.uniform(0, W)
    D = 3 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8) + rng.normal(0, 0.3, (H, W))
    D = np.round(D, 1)  # ties on purpose
    peak = (int(rng.integers(0, H)), int(rng.integers(0, W)))
    accepted, queue, values = _initialization_cy.mask_buffers(H, W)
    claimed = covered = None
    if residual:
        claimed = rng.uniform(0, 1, (H, W))
        covered = (rng.random((H, W)) < 0.5).astype(np.uint8)
        claimed0, covered0 = claimed.copy(), covered.copy()
    out = _initialization_cy.extended_morphology(
        D, peak[0], peak[1], quirk, t0, padding, accepted, queue, values, claimed, covered
    )
    ref, raw = _numpy_extended(D, peak, t0, padding, quirk)
    if ref is None:
        assert out is None
    else:
        morph, box, mxv = out
        assert box == ref[1] and mxv == ref[2]
        np.testing.assert_array_equal(morph, ref[0])
    # the buffers are left zeroed for the next peak
    assert not accepted.any() and not values.any()
    if residual:
        np.testing.assert_array_equal(claimed, claimed0 + np.maximum(raw, 0))
        np.testing.assert_array_equal(covered, covered0 | (raw > 0))


def test_extended_morphology_of_a_large_image_matches_numpy():
    from cdeblend import _initialization_cy

    H, W = 190, 180  # the flood fill may visit 34200 pixels: the GIL is released
    yy, xx = np.mgrid[:H, :W]
    D = 50 * np.exp(-((yy - 95) ** 2 + (xx - 88) ** 2) / 2000)
    accepted, queue, values = _initialization_cy.mask_buffers(H, W)
    morph, box, mxv = _initialization_cy.extended_morphology(
        D, 95, 88, False, 1.0, 2, accepted, queue, values
    )
    ref, _ = _numpy_extended(D, (95, 88), 1.0, 2, False)
    assert box == ref[1] and mxv == ref[2]
    assert morph.size + np.count_nonzero(morph) > 32768  # and so is the copy
    np.testing.assert_array_equal(morph, ref[0])
    assert not accepted.any() and not values.any()


def test_large_stamps_match_numpy():
    """The branches that release the GIL, on stamps above the threshold."""
    from cdeblend import _initialization_cy

    rng = np.random.default_rng(11)
    kernels = rng.normal(size=(6, 81, 81)).astype(np.float32)
    D = rng.normal(size=(90, 100))
    np.testing.assert_array_equal(
        _initialization_cy.conv_at(D, kernels, 45, 50), _numpy_conv_at(D, kernels, 45, 50)
    )
    obs, peaks = load_real()  # 35 peaks x 5 bands x 41 x 41 kernels
    Dr = chi2_coadd(obs)
    kern = obs.diff_kernels
    sed = _initialization_cy.peak_seds(
        obs.images, Dr, kern, peaks.astype(np.intp), np.ones(len(peaks))
    )
    for i, (y, x) in enumerate(peaks):
        c = _numpy_conv_at(Dr, kern, y, x)
        r = np.divide(obs.images[:, y, x].astype(np.float64), c, out=np.zeros(len(c)), where=c != 0)
        np.testing.assert_array_equal(sed[i], np.where(np.isfinite(r) & (r > 0), r, 0.0))
    P = rng.random((131, 131)) + 0.01
    images = rng.normal(size=(3, 150, 140))
    morph, box, psed = _initialization_cy.psf_component(P, images, 70, 60, np.ones(3))
    sl_img, sl_psf = clip_slices(centered((70, 60), P.shape), (150, 140))
    np.testing.assert_array_equal(morph, P[sl_psf] / P[sl_psf].max())
    np.testing.assert_array_equal(psed, np.maximum(images[:, 70, 60], 0) * P[sl_psf].max())
    m = rng.random((120, 100))
    bulge, disk = _initialization_cy.bulge_disk(m, 0.25)
    np.testing.assert_array_equal(bulge, np.maximum(m - 0.25, 0) / np.maximum(m - 0.25, 0).max())
    np.testing.assert_array_equal(disk, np.minimum(m, 0.25) / np.minimum(m, 0.25).max())


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    B=st.integers(1, 6),
    H=st.integers(1, 25),
    W=st.integers(1, 25),
    h=st.integers(1, 17),
    w=st.integers(1, 17),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_psf_component_matches_numpy(seed, B, H, W, h, w, dtype):
    from cdeblend import _initialization_cy

    rng = np.random.default_rng(seed)
    P = rng.random((h, w)) + 0.01
    images = _random_cube(rng, B, H, W, dtype)
    psf_peak = rng.normal(0.5, 0.5, size=B)
    psf_peak[rng.random(B) < 0.2] = 0
    peak = (int(rng.integers(0, H)), int(rng.integers(0, W)))
    morph, box, sed = _initialization_cy.psf_component(P, images, peak[0], peak[1], psf_peak)
    # the numpy code it replaces
    sl_img, sl_psf = clip_slices(centered(peak, P.shape), (H, W))
    ref = P[sl_psf].copy()
    ref_sed = np.array(
        [
            max(0.0, float(images[b, peak[0], peak[1]]) / psf_peak[b]) if psf_peak[b] > 0 else 0.0
            for b in range(B)
        ]
    )
    mx = ref.max()
    assert box == (sl_img[0].start, sl_img[1].start) + ref.shape
    np.testing.assert_array_equal(morph, ref / mx)
    np.testing.assert_array_equal(sed, ref_sed * mx)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    f=st.floats(0.05, 0.95),
    top=st.sampled_from([0.04, 1.0]),
)
def test_bulge_disk_matches_numpy(seed, h, w, f, top):
    from cdeblend import _initialization_cy

    rng = np.random.default_rng(seed)
    morph = rng.uniform(0, top, size=(h, w))  # top < f: no bulge
    morph[rng.random((h, w)) < 0.3] = 0
    parts = _initialization_cy.bulge_disk(morph, f)
    disk = np.minimum(morph, f)
    bulge = np.maximum(morph - f, 0)
    if not (bulge.max() > 0 and disk.max() > 0):
        assert parts is None
        return
    np.testing.assert_array_equal(parts[0], bulge / bulge.max())
    np.testing.assert_array_equal(parts[1], disk / disk.max())


def test_mask_buffers_are_zeroed():
    from cdeblend import _initialization_cy

    for H, W in ((0, 5), (3, 4), (200, 170)):
        accepted, queue, values = _initialization_cy.mask_buffers(H, W)
        assert accepted.shape == values.shape == (H, W) and queue.shape == (H * W,)
        assert accepted.dtype == np.uint8 and queue.dtype == np.int64
        assert not accepted.any() and not values.any()


def test_init_kernels_reject_bad_shapes():
    from cdeblend import _initialization_cy, _monotonic_cy

    img = np.zeros((2, 5, 6))
    peaks = np.array([[1, 1]], dtype=np.intp)
    with pytest.raises(ValueError, match="noise"):
        _initialization_cy.detection_coadd(img, np.ones(3))
    with pytest.raises(ValueError, match="variance"):
        _initialization_cy.peak_snrs(img, np.zeros((2, 5, 5)), np.ones((2, 3, 3)), peaks)
    with pytest.raises(ValueError, match="psfs"):
        _initialization_cy.peak_snrs(img, img, np.ones((3, 3, 3)), peaks)
    with pytest.raises(ValueError, match="peaks"):
        _initialization_cy.peak_snrs(
            img, img, np.ones((2, 3, 3)), np.array([[5, 0]], dtype=np.intp)
        )
    with pytest.raises(ValueError, match="kernels"):
        _initialization_cy.conv_at(np.zeros((5, 6)), np.ones((2, 2, 3)), 1, 1)
    with pytest.raises(ValueError, match="D"):
        _initialization_cy.peak_seds(img, np.zeros((5, 5)), np.ones((2, 3, 3)), peaks, np.ones(1))
    with pytest.raises(ValueError, match="scale"):
        _initialization_cy.peak_seds(img, np.zeros((5, 6)), np.ones((2, 3, 3)), peaks, np.ones(2))
    accepted, queue, values = _initialization_cy.mask_buffers(5, 6)
    D = np.zeros((5, 6))
    with pytest.raises(ValueError, match="accepted"):
        _initialization_cy.extended_morphology(D, 1, 1, False, 0.0, 1, accepted[:4], queue, values)
    with pytest.raises(ValueError, match="queue"):
        _initialization_cy.extended_morphology(D, 1, 1, False, 0.0, 1, accepted, queue[:10], values)
    with pytest.raises(ValueError, match="peak"):
        _initialization_cy.extended_morphology(D, 5, 1, False, 0.0, 1, accepted, queue, values)
    with pytest.raises(ValueError, match="covered"):
        _initialization_cy.extended_morphology(
            D, 1, 1, False, 0.0, 1, accepted, queue, values, np.zeros((5, 6))
        )
    with pytest.raises(ValueError, match="psf_peak"):
        _initialization_cy.psf_component(np.ones((3, 3)), img, 1, 1, np.ones(3))
    with pytest.raises(ValueError, match="queue"):
        _monotonic_cy.monotonic_mask(D, 0, 0, 0, 0, True, accepted, queue[:3], values)
    with pytest.raises(ValueError, match="start"):
        _monotonic_cy.monotonic_mask(D, 0, 9, 0, 0, True, accepted, queue, values)
