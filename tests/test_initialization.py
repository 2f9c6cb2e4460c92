"""Initialization against a plain numpy/pure-Python re-implementation of spec 2.1-2.3."""

from collections import deque
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdeblend import DeblendConfig, Observation
from cdeblend.initialization import detection_image, initialize_blend, peak_snr

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


def test_detection_image_and_snr_formulas():
    obs, peaks = load_real()
    D = detection_image(obs)
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
    config = DeblendConfig(max_components=1, set_spectra=False)
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
    resid, _ = initialize_blend(obs, peaks, DeblendConfig(set_spectra=False, max_components=1,
                                                          residual_init=True))
    D = detection_image(obs)
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
