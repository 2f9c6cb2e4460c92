"""Incremental deblending: add a source to a fitted or reloaded blend and continue the fit."""

import numpy as np
import pytest
from footprint_reference import result_footprint

import cdeblend
from cdeblend import DeblendConfig, Deblender, ModelData, Observation
from cdeblend.deblender import fit_blend
from cdeblend.incremental import _copy_blend, residual_peaks, residual_snr_image
from cdeblend.observation import integrated_gaussian_psf

# a faint galaxy at the top right of the bundled HSC blend that is not in its 7 peaks: the
# residual of the fit peaks there at S/N ~ 30, over 10 px from every peak
MISSED = (13, 44)


@pytest.fixture(scope="module")
def hsc():
    demo = cdeblend.load_hsc_cosmos()
    obs = Observation(demo.images, demo.variance, demo.psfs)
    return obs, demo.peaks, Deblender().deblend(obs, demo.peaks)


def continued_without(result, config):
    """The same fit continued from the same parameters without a new source."""
    blend = _copy_blend(result.blend, config.bg_thresh)
    return fit_blend(blend, config)[0]


def test_adding_the_missed_neighbour_lowers_the_loss(hsc):
    obs, peaks, res = hsc
    assert min(np.hypot(*(np.array(MISSED) - peaks).T)) > 10
    new = res.add_source(MISSED)
    assert len(new.blend.sources) == len(peaks) + 1
    assert new.added.tolist() == [False] * len(peaks) + [True]
    # lower than the fit it continues and than continuing it without the source
    assert new.loss < res.loss - 500
    assert new.loss < continued_without(res, DeblendConfig()) - 500
    # the loss reported is the loss of the returned model
    conv = obs.convolve(new.blend.model()).astype(np.float64)
    direct = 0.5 * np.sum(obs.weights * (obs.images - conv) ** 2)
    assert new.loss == pytest.approx(direct, rel=1e-4)
    # the new source gets flux in every band; the result it came from is untouched
    assert np.all(new.fluxes[-1] > 0) and np.all(new.conserved_fluxes[-1] > 0)
    assert len(res.blend.sources) == len(peaks) and res.added is None
    assert res.loss == pytest.approx(res.blend.loss(), rel=1e-4)


def test_continuing_starts_from_the_fitted_parameters(hsc):
    """Not a refit from scratch: the first loss of the continued fit is the fitted model's
    plus the new point source's (far below a fresh fit's first loss), and the bright
    sources' fluxes move by a few percent at most."""
    obs, peaks, res = hsc
    new = res.add_source(MISSED)
    first = new.loss_history[res.iterations]
    assert first < res.loss  # the point source's amplitude alone already helps
    assert first < 0.5 * res.loss_history[0]
    bright = res.fluxes.sum(axis=1) > 0.2 * res.fluxes.sum(axis=1).max()
    rel = np.abs(new.fluxes[:-1][bright] / res.fluxes[bright] - 1)
    assert np.all(rel < 0.05)
    # re-apportioned: the conserved images still add up to the image under the model, on
    # the children's footprint
    cons = new.conserved_images().sum(axis=0)
    total = new.models().sum(axis=0)
    on = (total > 0) & result_footprint(new)[None]
    np.testing.assert_allclose(
        cons[on], np.where(obs.weights > 0, obs.images, 0)[on], rtol=1e-4, atol=1e-3
    )


def test_add_source_to_a_reloaded_blend(hsc, tmp_path):
    obs, peaks, res = hsc
    md = ModelData(obs.bands, integrated_gaussian_psf(0.8), obs.psfs)
    md.blends[7] = ModelData.from_blend(res, 7, (0, 0), bands=obs.bands)
    path = tmp_path / "m.fits"
    cdeblend.save_models(path, md)
    loaded = cdeblend.load_models(path)
    rebuilt = loaded.rebuild(obs, 7, DeblendConfig())
    new = Deblender().add_source(rebuilt, MISSED)
    assert new.loss < rebuilt.blend.loss() - 500
    assert new.added[-1] and not new.added[:-1].any()


def test_given_sed_is_the_new_sources_initial_flux(hsc):
    obs, peaks, res = hsc
    sed = np.full(obs.shape[0], 3.0)
    new = res.add_source(MISSED, sed=sed, max_iter=0)
    np.testing.assert_allclose(new.fluxes[-1], sed, rtol=1e-9)
    assert new.iterations == res.iterations


def test_add_source_rejects_bad_input(hsc):
    _, _, res = hsc
    with pytest.raises(ValueError, match="peaks"):
        res.add_source((500, 3))
    with pytest.raises(ValueError, match="seds must have shape"):
        res.add_source(MISSED, sed=[1.0, 2.0])
    with pytest.raises(ValueError, match="finite and non-negative"):
        res.add_source(MISSED, sed=[1.0, np.nan, 1, 1, 1])
    with pytest.raises(ValueError, match="max_iter"):
        res.add_source(MISSED, max_iter=-1)
    with pytest.raises(ValueError, match="residual_snr"):
        DeblendConfig(residual_snr=-1)


# ---------------------------------------------------------------- residual sources
def test_residual_snr_image_matches_a_direct_point_source_fit(hsc):
    """At a pixel, the S/N is the weighted least-squares point source amplitude over its
    error, computed here by brute force on the PSF stamp."""
    obs, _, res = hsc
    s = residual_snr_image(res)
    conv = obs.convolve(res.blend.model()).astype(np.float64)
    r = obs.images.astype(np.float64) - conv
    w = obs.weights.astype(np.float64)
    B, H, W = obs.shape
    hp = obs.psfs.shape[1] // 2
    for y, x in (MISSED, (30, 20), (2, 3)):
        num = den = 0.0
        for b in range(B):
            P = np.zeros((H, W))
            ya, yb, xa, xb = max(y - hp, 0), min(y + hp + 1, H), max(x - hp, 0), min(x + hp + 1, W)
            P[ya:yb, xa:xb] = obs.psfs[b][ya - y + hp : yb - y + hp, xa - x + hp : xb - x + hp]
            num += np.sum(w[b] * r[b] * P)
            den += np.sum(w[b] * P * P)
        assert s[y, x] == pytest.approx(num / np.sqrt(den), rel=1e-6, abs=1e-6)


def test_residual_option_finds_and_flags_the_missed_neighbour():
    demo = cdeblend.load_hsc_cosmos()
    obs = Observation(demo.images, demo.variance, demo.psfs)
    plain = Deblender().deblend(obs, demo.peaks)
    cfg = DeblendConfig(residual_sources=True, residual_snr=20, residual_max_sources=1)
    res = Deblender(cfg).deblend(obs, demo.peaks)
    assert res.added is not None and res.added.sum() == 1
    # the residual's peak moves by a pixel with the fit it is the residual of
    assert np.hypot(*np.subtract(res.blend.sources[-1].peak, MISSED)) <= 1.5
    assert res.loss < plain.loss
    # the default is off
    assert plain.added is None and len(plain.blend.sources) == len(demo.peaks)


def test_residual_peaks_on_a_known_missed_star():
    """Two stars, one given: the other is found at its position, and noise alone gives no
    peak above S/N 5 (a 40 x 40 frame has ~1600 pixels: a 5-sigma fluke is unlikely)."""
    rng = np.random.default_rng(5)
    B, H, W = 2, 40, 40
    psf = integrated_gaussian_psf(1.5, 15)
    psfs = np.stack([psf, psf])
    scene = np.zeros((B, H, W))
    for (y, x), f in (((12, 12), 2000.0), ((28, 27), 150.0)):
        scene[:, y - 7 : y + 8, x - 7 : x + 8] += f * psf
    var = np.ones((B, H, W))
    images = scene + rng.normal(size=scene.shape)
    obs = Observation(images.astype(np.float32), var.astype(np.float32), psfs)
    res = Deblender(DeblendConfig(max_iter=50)).deblend(obs, [(12, 12)])
    # the model explains almost none of the missed star's light: it passes model_ratio 1
    peaks, snrs = residual_peaks(res, snr=5, model_ratio=1.0)
    assert len(peaks) >= 1
    assert np.hypot(*(peaks[0] - (28, 27))) <= 1 and snrs[0] > 20
    both = res.add_source(peaks[0])
    assert len(residual_peaks(both, snr=5)[0]) == 0


def test_image_peak_rule_drops_residuals_of_truncated_wings():
    """A model with one side of its wings cut leaves a significant residual beside a
    bright star, where the image itself has no peak: dropped by ``image_peak``, unlike the
    missed star, which has a peak of its own."""
    from cdeblend import DeblendResult

    rng = np.random.default_rng(6)
    B, H, W = 2, 40, 40
    psf = integrated_gaussian_psf(2.0, 21)
    scene = np.zeros((B, H, W))
    for (y, x), f in (((14, 14), 20000.0), ((29, 28), 300.0)):
        scene[:, y - 10 : y + 11, x - 10 : x + 11] += f * psf
    images = scene + rng.normal(size=scene.shape)
    obs = Observation(
        images.astype(np.float32), np.ones((B, H, W), np.float32), np.stack([psf] * 2)
    )
    res = Deblender(DeblendConfig(max_iter=50)).deblend(obs, [(14, 14)])
    blend = _copy_blend(res.blend, None)
    for c in blend.components:  # cut the model's right-hand side beyond 1 px of its peak
        c.morphology[:, c.local_peak[1] + 2 :] = 0
    cut = DeblendResult(blend, blend.loss(), np.zeros(0), 0, True, res.snr)
    loose, _ = residual_peaks(cut, snr=5, min_distance=2, max_sources=20)
    strict, _ = residual_peaks(cut, snr=5, min_distance=2, max_sources=20, image_peak=True)
    near_star = lambda p: np.hypot(*(np.asarray(p) - (14, 14)).T) < 8  # noqa: E731
    assert near_star(loose).any()  # the ring is significant
    assert not near_star(strict).any()
    assert any(np.hypot(*(p - (29, 28))) <= 1 for p in strict)


def test_adding_a_source_keeps_the_results_childrens_footprint(hsc):
    """Without a config the continued fit keeps the threshold the result was made with (a
    reference() result shares every positive pixel), not the defaults'."""
    obs, peaks, _ = hsc
    ref = Deblender(DeblendConfig.reference(max_iter=10)).deblend(obs, peaks)
    assert ref.add_source(MISSED, max_iter=5).conserved_thresh == 0.0
    assert ref.add_source(MISSED, config=DeblendConfig(), max_iter=5).conserved_thresh == 0.03
