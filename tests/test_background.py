"""The mesh background estimate recovers a known sky under sources and noise."""

from __future__ import annotations

import numpy as np
import pytest

from cdeblend.background import clipped_stats, estimate_background, looks_unsubtracted


def _scene(rng, sky, shape=(256, 320), n_sources=40, noise=5.0):
    """``sky`` plus Gaussian sources (1.5-3 px, up to 300 sigma peak) plus white noise."""
    H, W = shape
    yy, xx = np.mgrid[:H, :W]
    img = sky.copy()
    for _ in range(n_sources):
        y, x = rng.uniform(0, H), rng.uniform(0, W)
        s = rng.uniform(1.5, 3.0)
        img += rng.uniform(5, 300) * noise * np.exp(-0.5 * ((yy - y) ** 2 + (xx - x) ** 2) / s**2)
    return img + rng.normal(0, noise, size=shape)


@pytest.mark.parametrize("mesh", [32, 64])
def test_plane_under_sources_is_recovered(mesh):
    rng = np.random.default_rng(3)
    H, W = 256, 320
    yy, xx = np.mgrid[:H, :W]
    sky = 1000.0 + 0.1 * yy - 0.06 * xx  # a tilted sky: 5 and 4 noise units across
    img = _scene(rng, sky)
    bkg = estimate_background(img, mesh=mesh)
    err = bkg.background - sky
    # A mesh holds ~mesh^2 pixels: the clipped mode is good to a few % of the noise; the
    # sources bias it up by less than the noise (they are ~1 % of the pixels).
    assert np.median(np.abs(err)) < 0.5
    assert np.max(np.abs(err)) < 2.5  # half the noise, also in the extrapolated corners
    # faint source wings that survive clipping widen the distribution by up to ~10 %
    assert abs(bkg.median_rms - 5.0) < 0.75
    # after subtraction the image looks subtracted; before, it does not
    assert looks_unsubtracted(img)[0] and not looks_unsubtracted(img - bkg.background)[0]


def test_smooth_gradient_and_flat_sky():
    rng = np.random.default_rng(5)
    H, W = 200, 200
    yy, xx = np.mgrid[:H, :W]
    sky = 50.0 + 20.0 * np.sin(xx / 120.0) + 0.1 * yy  # curved, slow compared with a mesh
    img = _scene(rng, sky, shape=(H, W), noise=2.0)
    bkg = estimate_background(img, mesh=40)
    assert np.max(np.abs(bkg.background - sky)) < 1.5
    flat = estimate_background(rng.normal(7.0, 1.0, size=(100, 130)), mesh=64)
    assert flat.mesh_background.shape == (2, 2)  # 100/64 and 130/64 round to 2
    np.testing.assert_allclose(flat.background, 7.0, atol=0.1)


def test_no_data_pixels_and_masks_are_ignored():
    rng = np.random.default_rng(8)
    img = rng.normal(10.0, 1.0, size=(128, 128))
    img[:, :20] = np.nan  # a dead column block
    mask = np.zeros(img.shape, bool)
    img[60:70, 60:70] = 1e6  # a saturated blob, masked
    mask[60:70, 60:70] = True
    bkg = estimate_background(img, mesh=32, mask=mask)
    assert np.all(np.isfinite(bkg.background))
    np.testing.assert_allclose(bkg.background, 10.0, atol=0.3)
    with pytest.raises(ValueError, match="usable"):
        estimate_background(np.full((10, 10), np.nan))
    with pytest.raises(ValueError, match="mesh"):
        estimate_background(img, mesh=1)


def test_clipped_stats_against_plain_numpy():
    rng = np.random.default_rng(1)
    clean = rng.normal(3.0, 2.0, size=20000)
    values = np.concatenate([clean, np.full(200, 1e4), [np.nan, np.inf]])
    mean, med, std = clipped_stats(values)
    # the outliers are removed; the kept values are (nearly) the clean Gaussian
    assert abs(mean - clean.mean()) < 0.05 and abs(med - np.median(clean)) < 0.05
    assert abs(std - clean.std()) < 0.1
    assert np.isnan(clipped_stats(np.full(5, np.nan))[0])
