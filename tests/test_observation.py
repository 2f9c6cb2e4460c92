"""Observation: input validation, model PSF, difference kernels, cut-outs."""

from pathlib import Path

import numpy as np
import pytest

from cdeblend import Observation
from cdeblend.observation import difference_kernels, integrated_gaussian_psf

DATA = Path(__file__).parent / "data" / "hsc_cosmos_35.npz"


def gaussian_psf(sigma, size=21, sub=15):
    """Pixel-integrated Gaussian by brute-force sub-pixel sampling (independent of erfc)."""
    off = (np.arange(size * sub) + 0.5) / sub - size / 2
    g = np.exp(-0.5 * (off / sigma) ** 2).reshape(size, sub).sum(axis=1)
    p = np.outer(g, g)
    return p / p.sum()


def make_obs_inputs(bands=3, shape=(20, 24), sigmas=(1.6, 1.9, 2.2), seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(bands, *shape)).astype(dtype)
    variance = rng.uniform(0.5, 2.0, size=(bands, *shape)).astype(dtype)
    psfs = np.array([gaussian_psf(s) for s in sigmas[:bands]])
    return images, variance, psfs


def test_model_psf_matches_subpixel_integration():
    psf = integrated_gaussian_psf(0.8)
    assert psf.shape == (15, 15)
    np.testing.assert_allclose(psf.sum(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(psf, gaussian_psf(0.8, size=15, sub=201), atol=2e-6)
    assert 0.21 < psf[7, 7] < 0.23


def test_defaults_and_attributes():
    images, variance, psfs = make_obs_inputs()
    obs = Observation(images, variance, psfs)
    assert obs.shape == (3, 20, 24)
    assert obs.dtype == np.float32
    assert obs.bands == ("0", "1", "2")
    assert obs.model_psf.shape == (15, 15)
    assert obs.diff_kernels.shape == (3, 21, 21)
    np.testing.assert_allclose(obs.weights, 1 / variance, rtol=1e-6)
    np.testing.assert_allclose(obs.noise_rms, np.sqrt(variance).mean(axis=(1, 2)), rtol=1e-5)
    obs64 = Observation(images, variance, psfs, dtype=np.float64, bands=["g", "r", "i"])
    assert obs64.dtype == np.float64 and obs64.diff_kernels.dtype == np.float64
    assert obs64.bands == ("g", "r", "i")
    assert Observation(images.astype(np.float64), variance, psfs).dtype == np.float64


def test_difference_kernel_reproduces_observed_psf():
    # spec 7.6: K_b * P_model reproduces the observed PSF to ~1e-3 of its peak
    with np.load(DATA) as d:
        psfs = d["psfs"]
    model = integrated_gaussian_psf(0.8)
    kern = difference_kernels(psfs, model)
    hp = psfs.shape[1]
    for b in range(len(psfs)):
        full = np.zeros((hp + 14, hp + 14))
        # direct 2-D convolution of the kernel with the model PSF
        for dy in range(15):
            for dx in range(15):
                full[dy : dy + hp, dx : dx + hp] += model[dy, dx] * kern[b]
        rebuilt = full[7 : 7 + hp, 7 : 7 + hp]
        inner = slice(8, hp - 8)
        err = np.abs(rebuilt - psfs[b])[inner, inner].max()
        assert err < 1e-3 * psfs[b].max()


def test_pixels_without_data_get_zero_weight_and_value():
    # the one no-data rule: non-finite value, non-finite or non-positive variance, or a set
    # mask (bool True or a non-zero integer) -> value 0, variance 0, weight 0; never an error
    images, variance, psfs = make_obs_inputs()
    images[1, 3, 4] = np.nan
    images[2, 5, 6] = np.inf
    variance[0, 1, 1] = 0
    variance[0, 2, 2] = -1
    variance[1, 7, 7] = np.nan
    obs = Observation(images, variance, psfs)
    bad = [(1, 3, 4), (2, 5, 6), (0, 1, 1), (0, 2, 2), (1, 7, 7)]
    for b, y, x in bad:
        assert obs.images[b, y, x] == 0 and obs.variance[b, y, x] == 0
        assert obs.weights[b, y, x] == 0
    assert np.count_nonzero(obs.weights == 0) == len(bad)
    assert np.isnan(images[1, 3, 4])  # the caller's arrays are not modified
    assert variance[0, 2, 2] == -1
    # the noise level is the mean sqrt(variance) of the pixels with data only
    good = np.ones(images.shape, bool)
    for b, y, x in bad:
        good[b, y, x] = False
    for b in range(3):
        np.testing.assert_allclose(
            obs.noise_rms[b], np.sqrt(variance[b][good[b]]).mean(), rtol=1e-6
        )  # float32 data
    # masks: bool (True = bad) and integer bit planes (non-zero = bad) mean the same
    images, variance, psfs = make_obs_inputs()
    mask = np.zeros(images.shape[1:], dtype=bool)
    mask[3, 4] = True
    a = Observation(images, variance, psfs, mask=mask)
    b = Observation(images, variance, psfs, mask=mask.astype(np.uint16) << 8)
    np.testing.assert_array_equal(a.weights, b.weights)
    assert np.all(a.weights[:, 3, 4] == 0) and np.count_nonzero(a.weights == 0) == 3
    assert np.all(a.images[:, 3, 4] == 0)


def test_validation_errors():
    images, variance, psfs = make_obs_inputs()
    with pytest.raises(ValueError, match="variance has shape"):
        Observation(images, variance[:2], psfs)
    with pytest.raises(ValueError, match="psfs has 2 band"):
        Observation(images, variance, psfs[:2])
    with pytest.raises(ValueError, match="bands has 2 name"):
        Observation(images, variance, psfs, bands=("g", "r"))
    with pytest.raises(ValueError, match="duplicate"):
        Observation(images, variance, psfs, bands=("g", "r", "g"))
    with pytest.raises(ValueError, match="odd height and width"):
        even = psfs[:, :-1, :-1] / psfs[:, :-1, :-1].sum((1, 2))[:, None, None]
        Observation(images, variance, even)
    with pytest.raises(ValueError, match=r"psfs\[1\] must be normalised"):
        Observation(images, variance, psfs * np.array([1, 2, 1])[:, None, None])
    with pytest.raises(TypeError, match="mask must be bool"):
        Observation(images, variance, psfs, mask=np.zeros(images.shape, dtype=float))
    with pytest.raises(ValueError, match="mask has shape"):
        Observation(images, variance, psfs, mask=np.zeros((5, 5), dtype=bool))
    with pytest.raises(ValueError, match="weights has negative"):
        Observation(images, variance, psfs, weights=-np.ones_like(images))
    with pytest.raises(TypeError, match="dtype must be"):
        Observation(images, variance, psfs, dtype=np.int32)
    with pytest.raises(ValueError, match="images must have 3 dimensions"):
        Observation(images[0], variance[0], psfs)
    with pytest.raises(ValueError, match="noise_rms must have shape"):
        Observation(images, variance, psfs, noise_rms=[1.0, 2.0])
    with pytest.raises(ValueError, match="model_psf_sigma must be a positive"):
        Observation(images, variance, psfs, model_psf_sigma=-1)


def test_psf_narrower_than_model_is_rejected():
    images, variance, _ = make_obs_inputs()
    psfs = np.array([gaussian_psf(s) for s in (1.6, 0.6, 2.0)])
    with pytest.raises(ValueError, match=r"psfs\[1\] \(band 'r'\) is narrower.*model_psf_sigma"):
        Observation(images, variance, psfs, bands="gri")
    # a smaller model PSF accepts the same data
    obs = Observation(images, variance, psfs, model_psf_sigma=0.4)
    assert obs.diff_kernels.shape == (3, 21, 21)
    # identical observed and model PSF is fine (the kernel is a delta)
    same = np.stack([integrated_gaussian_psf(0.8)] * 3)
    obs = Observation(images, variance, same)
    np.testing.assert_allclose(obs.diff_kernels[:, 7, 7], 1.0, atol=1e-5)
    assert np.abs(obs.diff_kernels).sum() < 3 * (1 + 1e-4)


def test_user_weights_and_noise_rms():
    images, variance, psfs = make_obs_inputs()
    w = np.full(images.shape, 2.0)
    mask = np.zeros(images.shape, dtype=bool)
    mask[0, 1, 1] = True
    obs = Observation(images, variance, psfs, weights=w, mask=mask, noise_rms=[1, 2, 3])
    assert obs.weights[0, 1, 1] == 0 and obs.weights[1, 1, 1] == 2
    assert w[0, 1, 1] == 2  # caller's weights untouched
    np.testing.assert_array_equal(obs.noise_rms, [1, 2, 3])


def test_psf_matched_data_is_not_convolved():
    images, variance, psfs = make_obs_inputs()
    obs = Observation(images, variance, psfs, model_psf_sigma=None)
    assert obs.model_psf is None
    x = np.random.default_rng(1).normal(size=obs.shape).astype(np.float32)
    np.testing.assert_array_equal(obs.convolve(x), x)


def test_cutout_shares_kernels_and_noise():
    images, variance, psfs = make_obs_inputs(shape=(30, 40))
    obs = Observation(images, variance, psfs)
    cut = obs.cutout((5, 7, 12, 20))
    assert cut.shape == (3, 12, 20)
    assert cut.origin == (5, 7)
    np.testing.assert_array_equal(cut.images, obs.images[:, 5:17, 7:27])
    np.testing.assert_array_equal(cut.weights, obs.weights[:, 5:17, 7:27])
    assert cut.diff_kernels is obs.diff_kernels and cut.noise_rms is obs.noise_rms
    cut2 = cut.cutout((1, 2, 3, 4))
    assert cut2.origin == (6, 9)
    cut.weights[:] = 0  # a copy: the parent is untouched
    assert np.all(obs.weights > 0)
    with pytest.raises(ValueError, match="inside the image"):
        obs.cutout((25, 0, 10, 10))


def test_observation_pickles_and_shares_kernels():
    """An Observation survives pickling (process pools, dask) and convolves the same; one
    made from another's arrays shares its kernels and their transforms."""
    import pickle

    rng = np.random.default_rng(12)
    y = np.arange(11) - 5
    psf = np.exp(-0.5 * (y[:, None] ** 2 + y[None] ** 2) / 1.8**2)
    psfs = np.repeat((psf / psf.sum())[None], 2, axis=0)
    obs = Observation(rng.normal(size=(2, 20, 24)), np.ones((2, 20, 24)), psfs)
    model = rng.random(obs.shape)
    ref = obs.convolve(model)
    again = pickle.loads(pickle.dumps(obs))
    np.testing.assert_array_equal(again.convolve(model), ref)
    np.testing.assert_array_equal(again.diff_kernels, obs.diff_kernels)
    other = obs.with_arrays(
        obs.images[:, :10].copy(), obs.variance[:, :10].copy(), obs.weights[:, :10].copy()
    )
    assert other.diff_kernels is obs.diff_kernels and other.convolver.cache is obs.convolver.cache
    np.testing.assert_allclose(
        other.convolve(model[:, :10]),
        Observation(obs.images[:, :10], obs.variance[:, :10], psfs).convolve(model[:, :10]),
        rtol=1e-12,
        atol=1e-12,
    )


def test_boxes_are_checked_by_the_one_box_rule():
    """cutout, convolve_box and fit_seds take boxes through cdeblend.box.as_box: integral
    floats are whole pixels, a fractional or huge value is refused naming the argument
    (it was truncated before), empty boxes convolve to nothing."""
    from cdeblend import fit_seds

    obs = Observation(*make_obs_inputs(dtype=np.float64))
    assert obs.cutout((2.0, 3.0, 5.0, 6.0)).shape == (3, 5, 6)
    with pytest.raises(TypeError, match="box must be an integer"):
        obs.cutout((2, 3.5, 5, 6))
    with pytest.raises(TypeError, match="box must be an integer"):
        obs.convolve_box(np.ones((2, 2)), (0, 0.5, 2, 2))
    with pytest.raises(ValueError, match="out of range"):
        obs.convolve_box(np.ones((2, 2)), (2**40, 0, 2, 2))
    conv, grown = obs.convolve_box(np.ones((0, 2)), (4, 4, 0, 2))
    assert conv.shape == (3, grown[2], grown[3]) and not conv.any()
    with pytest.raises(TypeError, match=r"boxes\[1\] must be an integer"):
        fit_seds(obs, [np.ones((2, 2))] * 2, [(1, 1, 2, 2), (3, 3.25, 2, 2)])
    seds = fit_seds(obs, [np.ones((2, 2))], [(1.0, 1.0, 2.0, 2.0)])
    np.testing.assert_array_equal(seds, fit_seds(obs, [np.ones((2, 2))], [(1, 1, 2, 2)]))
