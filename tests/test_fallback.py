"""A model for every peak: the fallback of a multi-band fit that raises.

The fit is made to raise by monkeypatching it; the fallback must keep one child per peak,
recover the SEDs of an image that is exactly a sum of PSFs (non-negative least squares), and
re-apportion the image so that the children add up to it wherever a model claims a pixel.
Degenerate inputs (two peaks on one pixel, scarlet #282; a peak on pixels without data) get
a model for every peak with or without a failure.
"""

from __future__ import annotations

import numpy as np
import pytest
from footprint_reference import result_footprint
from fuzz_helpers import FUZZ, scenes
from hypothesis import given, settings
from hypothesis import strategies as st

from cdeblend import CatalogConfig, DeblendConfig, Deblender, Observation, deblend_catalog
from cdeblend import deblender as deblender_module
from cdeblend.fallback import fallback_result, psf_sources
from cdeblend.observation import integrated_gaussian_psf

PEAKS = np.array([(10, 9), (12, 20), (24, 14)])


def scene(nb: int = 3, seed: int = 1, noise: float = 0.1):
    """Three Gaussian sources on noise: (images, variance, psfs)."""
    rng = np.random.default_rng(seed)
    H, W = 34, 30
    yy, xx = np.mgrid[:H, :W]
    images = np.zeros((nb, H, W))
    for k, (y, x) in enumerate(PEAKS):
        prof = np.exp(-0.5 * ((yy - y) ** 2 + (xx - x) ** 2) / 2.0**2)
        sed = 20.0 * (1.0 + 0.4 * np.cos(np.arange(nb) + k))
        images += sed[:, None, None] * prof[None]
    images += rng.normal(0, noise, images.shape)
    variance = np.full(images.shape, noise**2)
    psfs = np.stack([integrated_gaussian_psf(1.0 + 0.15 * b, 11) for b in range(nb)])
    return images, variance, psfs


def force_failure(monkeypatch, exc=None):
    """Make the fit raise ``exc`` (default: LinAlgError, as scarlet's on singular SEDs)."""
    exc = np.linalg.LinAlgError("Singular matrix") if exc is None else exc

    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(deblender_module, "fit_blend", boom)


def assert_conserved(res) -> None:
    """Children add up to the image (zero where the weight is zero) wherever the models'
    clipped sum is positive on the children's footprint, and get nothing elsewhere."""
    obs = res.blend.observation
    image = np.where(obs.weights > 0, obs.images, 0.0)
    cons = res.conserved_images()
    models = np.maximum(res.models(), 0).sum(axis=0)
    claimed = (models > 0) & result_footprint(res)[None]
    total = cons.sum(axis=0)
    assert np.all(np.isfinite(cons))
    np.testing.assert_allclose(total[claimed], image[claimed], rtol=1e-12, atol=1e-12)
    assert np.all(total[~claimed] == 0)
    # and so the conserved fluxes add up to the claimed image flux, band by band
    np.testing.assert_allclose(
        res.conserved_fluxes.sum(axis=0), np.where(claimed, image, 0).sum(axis=(1, 2)), rtol=1e-12
    )


def test_a_failing_fit_gets_a_fallback(monkeypatch):
    images, variance, psfs = scene()
    obs = Observation(images, variance, psfs)
    force_failure(monkeypatch)
    res = Deblender().deblend(obs, PEAKS)
    assert res.fallback and res.error == "LinAlgError: Singular matrix"
    assert (res.iterations, res.converged) == (0, False)
    assert len(res.blend.sources) == len(PEAKS)
    for i, src in enumerate(res.blend.sources):
        assert src.index == i and tuple(src.peak) == tuple(PEAKS[i])
        (comp,) = src.components
        assert comp.kind == "psf" and np.all(comp.sed >= 0)
    # bright sources: every child gets a positive flux in every band
    assert np.all(res.fluxes > 0) and np.all(res.conserved_fluxes > 0)
    assert_conserved(res)
    assert np.isfinite(res.loss) and res.loss == pytest.approx(res.blend.loss())


def test_fallback_off_reraises(monkeypatch):
    images, variance, psfs = scene()
    force_failure(monkeypatch, RuntimeError("no"))
    with pytest.raises(RuntimeError, match="no"):
        Deblender(DeblendConfig(fallback=False)).deblend(Observation(images, variance, psfs), PEAKS)


def test_fallback_seds_recover_an_exact_sum_of_psfs():
    """An image that is exactly sum_i s_i (x) PSF at peak i: NNLS finds the s_i (one of them
    zero in a band, where a non-negative fit must stop at 0)."""
    nb, H, W = 3, 34, 30
    psfs = np.stack([integrated_gaussian_psf(1.0 + 0.15 * b, 11) for b in range(nb)])
    zeros = np.zeros((nb, H, W))
    obs0 = Observation(zeros, np.ones_like(zeros), psfs)
    from cdeblend import Blend

    truth = np.array([[30.0, 10.0, 5.0], [0.0, 12.0, 40.0], [7.0, 7.0, 7.0]])
    blend = Blend(obs0, psf_sources(obs0, PEAKS, None))
    for src, sed in zip(blend.sources, truth, strict=True):
        src.components[0].sed[:] = sed
    images = obs0.convolve(blend.model())
    obs = Observation(images, np.ones_like(images), psfs)
    res = fallback_result(obs, PEAKS, DeblendConfig(), ValueError("test"))
    seds = np.array([s.components[0].sed for s in res.blend.sources])
    np.testing.assert_allclose(seds, truth, rtol=1e-8, atol=1e-8)
    assert res.loss == pytest.approx(0.0, abs=1e-12)
    assert res.error == "ValueError: test"
    assert_conserved(res)


@pytest.mark.parametrize("forced", [False, True])
def test_two_peaks_on_one_pixel(monkeypatch, forced):
    """scarlet #282: a model for each of two identical peaks, the image still shared out."""
    images, variance, psfs = scene()
    peaks = np.vstack([PEAKS, PEAKS[1:2]])
    if forced:
        force_failure(monkeypatch)
    res = Deblender(DeblendConfig(max_iter=30)).deblend(Observation(images, variance, psfs), peaks)
    assert res.fallback == forced
    assert len(res.blend.sources) == len(peaks)
    assert [s.index for s in res.blend.sources] == list(range(len(peaks)))
    assert np.all(np.isfinite(res.fluxes)) and np.all(np.isfinite(res.conserved_fluxes))
    assert_conserved(res)


@pytest.mark.parametrize("forced", [False, True])
def test_peak_on_pixels_without_data(monkeypatch, forced):
    """A peak whose neighbourhood has NaN images and zero weight: it still gets a child (with
    no flux from the pixels without data), and the others share out the rest."""
    images, variance, psfs = scene()
    hole = (slice(20, 29), slice(9, 19))  # around PEAKS[2]
    images[:, hole[0], hole[1]] = np.nan
    variance[:, hole[0], hole[1]] = 0.0
    if forced:
        force_failure(monkeypatch)
    obs = Observation(images, variance, psfs)
    res = Deblender(DeblendConfig(max_iter=30)).deblend(obs, PEAKS)
    assert res.fallback == forced
    assert len(res.blend.sources) == len(PEAKS)
    cons = res.conserved_images()
    assert np.all(cons[:, :, hole[0], hole[1]] == 0)
    assert_conserved(res)


def test_catalog_keeps_a_child_per_peak_of_a_failed_fit(monkeypatch, caplog):
    images, variance, psfs = scene()
    force_failure(monkeypatch)
    cfg = CatalogConfig(catch_failures=False, skip_isolated=False)
    with caplog.at_level("WARNING", logger="cdeblend.catalog"):
        cat, md = deblend_catalog(
            images,
            peaks=PEAKS,
            variance=variance,
            psf=psfs,
            config=cfg,
            executor="serial",
            progress=False,
        )
    assert "LinAlgError: Singular matrix" in caplog.text  # the whole error text is logged
    parents = cat[cat["is_parent"]]
    kids = cat[~cat["is_parent"]]
    assert len(kids) == len(PEAKS) == parents["n_peaks"].sum()
    assert np.all(parents["fallback"]) and np.all(kids["fallback"])
    assert np.all(parents["error"] == "LinAlgError") and not np.any(parents["failed"])
    assert sorted(map(tuple, np.c_[kids["peak_y"], kids["peak_x"]])) == sorted(map(tuple, PEAKS))
    for p in parents:
        mine = kids[kids["parent_id"] == p["id"]]
        np.testing.assert_allclose(
            mine["flux_conserved"].sum(axis=0) + p["flux_unassigned"],
            p["flux_footprint"],
            rtol=1e-12,
        )
    # the fallback models are persisted like fitted ones
    assert sum(len(b.sources) for b in md.blends.values()) == len(PEAKS)
    assert all(b.fallback for b in md.blends.values())


def test_catalog_without_failure_has_no_fallback():
    images, variance, psfs = scene()
    cfg = CatalogConfig(skip_isolated=False, multi_band=DeblendConfig(max_iter=20))
    cat, _ = deblend_catalog(
        images,
        peaks=PEAKS,
        variance=variance,
        psf=psfs,
        config=cfg,
        executor="serial",
        progress=False,
    )
    assert not np.any(cat["fallback"]) and np.all(cat["error"] == "")


@settings(FUZZ, max_examples=FUZZ.max_examples // 2)
@given(scenes(max_size=24, min_size=3), st.sampled_from(["none", "duplicate", "hole", "band"]))
def test_fuzz_fallback_keeps_every_peak_and_conserves(scene_, damage):
    """Random scenes, degenerate peaks and pixels without data, the fit forced to fail."""
    images, variance, peaks = scene_
    images, variance = images.copy(), variance.copy()
    if damage == "duplicate":  # every peak twice
        peaks = np.vstack([peaks, peaks])
    elif damage == "hole":  # no data around the first peak
        y, x = peaks[0]
        sl = (slice(None), slice(max(y - 2, 0), y + 3), slice(max(x - 2, 0), x + 3))
        images[sl], variance[sl] = np.nan, 0.0
    elif damage == "band" and len(images) > 1:  # a band without data on every peak
        images[0, peaks[:, 0], peaks[:, 1]] = np.nan
        variance[0, peaks[:, 0], peaks[:, 1]] = 0.0
    psfs = np.stack([integrated_gaussian_psf(1.2, 9)] * len(images))
    if np.any(np.all(variance <= 0, axis=(1, 2))):
        # a band without a single pixel with data has no noise level to estimate: the
        # Observation says so (a catalog passes the whole image's noise level instead)
        with pytest.raises(ValueError, match="has no pixel with data"):
            Observation(images, variance, psfs)
        return
    obs = Observation(images, variance, psfs)
    res = fallback_result(obs, peaks, DeblendConfig(), RuntimeError("forced"))
    assert res.fallback and len(res.blend.sources) == len(peaks)
    assert [tuple(s.peak) for s in res.blend.sources] == [tuple(p) for p in peaks]
    seds = np.array([s.components[0].sed for s in res.blend.sources])
    assert np.all(seds >= 0) and np.all(np.isfinite(seds))
    assert np.all(np.isfinite(res.fluxes)) and np.isfinite(res.loss)
    assert_conserved(res)
