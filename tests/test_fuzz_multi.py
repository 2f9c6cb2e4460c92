"""Fuzzing the multi-band entry points: Observation(...) and Deblender.deblend.

Random small blends in random dtypes and layouts, with NaN/inf pixels, zero or negative
variance, degenerate PSFs and peaks on edges and corners, must give either a clear
ValueError/TypeError or a valid result: finite loss, models and conserved fluxes, and the
conserved children adding up to the image wherever the models claim flux.
"""

from __future__ import annotations

import numpy as np
from footprint_reference import result_footprint
from fuzz_helpers import (
    BAD_PEAKS,
    FUZZ,
    PEAK_KINDS,
    assert_finite,
    damaged_scene,
    layout_for,
    outcome,
    psf_images,
    relayout,
    vary_peaks,
)
from hypothesis import given
from hypothesis import strategies as st

from cdeblend import DeblendConfig, Deblender, Observation

#: Short fits: the fuzz tests look for crashes and broken invariants, not converged models.
FAST = DeblendConfig(max_iter=15, min_iter=2)


@st.composite
def observations(draw, allow_bad: bool = True):
    images, variance, peaks, kind = damaged_scene(draw, allow_bad)
    B = images.shape[0]
    psf = draw(psf_images(allow_bad=allow_bad))
    psfs = np.repeat(psf[None], B, axis=0)
    layout = layout_for(draw, kind, allow_bad)
    sigma = draw(st.sampled_from([0.8, 0.5, None]))
    return (
        relayout(images, layout),
        relayout(variance, layout),
        relayout(psfs, draw(st.sampled_from(["plain", "float32", "swapped", "strided"]))),
        peaks,
        sigma,
        kind,
    )


def _check_observation(obs: Observation, images, variance) -> None:
    B, H, W = np.shape(images)
    assert obs.shape == (B, H, W)
    assert obs.dtype in (np.float32, np.float64)
    for name in ("images", "variance", "weights", "diff_kernels", "noise_rms"):
        arr = getattr(obs, name)
        assert arr.flags.c_contiguous and arr.dtype.isnative, name
    assert_finite("weights", obs.weights)
    assert_finite("images", obs.images)
    assert np.all(obs.weights >= 0)
    # the forward and adjoint convolutions of the observation are adjoint (a random pair)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, H, W)).astype(obs.dtype)
    y = rng.normal(size=(B, H, W)).astype(obs.dtype)
    lhs = float(np.sum(obs.convolve(x).astype(np.float64) * y))
    rhs = float(np.sum(x.astype(np.float64) * obs.convolve_adjoint(y)))
    tol = 1e-3 if obs.dtype == np.float32 else 1e-9
    assert abs(lhs - rhs) <= tol * (1 + abs(lhs)) * np.sqrt(B * H * W)


@FUZZ
@given(observations())
def test_fuzz_observation(case):
    images, variance, psfs, _, sigma, _ = case
    obs, err = outcome(lambda: Observation(images, variance, psfs, model_psf_sigma=sigma))
    if err is None:
        _check_observation(obs, images, variance)


@FUZZ
@given(observations(), st.data())
def test_fuzz_deblend(case, data):
    images, variance, psfs, peaks, sigma, _ = case
    obs, err = outcome(lambda: Observation(images, variance, psfs, model_psf_sigma=sigma))
    if err is not None:
        return
    how = data.draw(st.sampled_from(PEAK_KINDS))
    peaks = vary_peaks(peaks, how, obs.shape[1:])
    res, err = outcome(lambda: Deblender(FAST).deblend(obs, peaks))
    if err is not None:
        assert how in BAD_PEAKS, f"unexpected rejection: {err}"
        return
    assert how not in BAD_PEAKS
    _check_result(res, obs, len(peaks))


def _check_result(res, obs: Observation, n_peaks: int) -> None:
    assert len(res.blend.sources) == n_peaks
    assert np.isfinite(res.loss)
    models = res.models()
    assert models.shape == (n_peaks,) + obs.shape
    assert_finite("models", models)
    assert_finite("fluxes", res.fluxes)
    cons = res.conserved_images()
    assert_finite("conserved images", cons)
    assert_finite("conserved fluxes", res.conserved_fluxes)
    # conservation: where some model is positive, the pixel has weight and lies on the
    # children's footprint, the children add up to the image
    claimed = (
        (np.maximum(models.astype(np.float64), 0).sum(axis=0) > 0)
        & (obs.weights > 0)
        & result_footprint(res)[None]
    )
    total = cons.astype(np.float64).sum(axis=0)
    image = obs.images.astype(np.float64)
    scale = np.abs(image).max() + 1e-300
    tol = 1e-5 if obs.dtype == np.float32 else 1e-10
    assert np.all(np.abs(total - image)[claimed] <= tol * scale)
    # and nothing is given where the image has no weight or no model claims the pixel
    assert np.all(total[~claimed] == 0)


@FUZZ
@given(observations(allow_bad=False), st.sampled_from([np.float32, np.float64]))
def test_fuzz_deblend_valid_inputs_always_succeed(case, dtype):
    """Clean inputs (Gaussian PSFs, positive variance, peaks inside) never raise."""
    images, variance, psfs, peaks, sigma, _ = case
    sigma = None if sigma is None else 0.5  # narrower than every drawn PSF (sigma >= 1)
    obs = Observation(images, variance, psfs, model_psf_sigma=sigma, dtype=dtype)
    res = Deblender(FAST).deblend(obs, peaks)
    _check_result(res, obs, len(peaks))


@FUZZ
@given(observations(allow_bad=False), st.data())
def test_fuzz_observation_optional_arguments(case, data):
    """weights, mask, noise_rms and bands in good and bad forms."""
    images, variance, psfs, _, sigma, _ = case
    B, H, W = np.shape(images)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    kw = {}
    wkind = data.draw(st.sampled_from(["none", "good", "negative", "nan", "shape", "zeros"]))
    if wkind != "none":
        w = rng.uniform(0, 2, (B, H, W))
        if wkind == "negative":
            w.flat[0] = -1
        elif wkind == "nan":
            w.flat[0] = np.nan
        elif wkind == "shape":
            w = w[:, :, :-1] if W > 1 else w[:, :, :0]
        elif wkind == "zeros":
            w[:] = 0
        kw["weights"] = relayout(w, data.draw(st.sampled_from(["plain", "float32", "swapped"])))
    mkind = data.draw(st.sampled_from(["none", "2d", "3d", "int", "shape"]))
    if mkind != "none":
        m = rng.random((B, H, W)) < 0.3
        kw["mask"] = {"2d": m[0], "3d": m, "int": m.astype(int), "shape": m[0].T}[mkind]
        if mkind == "shape" and H == W:
            kw["mask"] = m[0, :, :0]
    nkind = data.draw(st.sampled_from(["none", "good", "negative", "nan", "shape"]))
    if nkind != "none":
        n = rng.uniform(0.5, 2, B)
        kw["noise_rms"] = {
            "good": n,
            "negative": -n,
            "nan": n * np.nan,
            "shape": np.append(n, 1.0),
        }[nkind]
    bkind = data.draw(st.sampled_from(["none", "good", "duplicate", "short", "string"]))
    if bkind != "none":
        kw["bands"] = {
            "good": [f"b{i}" for i in range(B)],
            "duplicate": ["g"] * B,
            "short": ["g"] * (B - 1),
            "string": "grizy"[:B],
        }[bkind]
    bad = (
        wkind in ("negative", "nan", "shape")
        or mkind == "shape"  # an integer mask is bit planes, non-zero = no data
        or nkind in ("negative", "nan", "shape")
        or (bkind == "duplicate" and B > 1)
        or bkind == "short"
    )
    obs, err = outcome(lambda: Observation(images, variance, psfs, model_psf_sigma=None, **kw))
    if err is not None:
        assert bad, f"unexpected rejection: {err}"
        return
    assert not bad, f"accepted bad input: {wkind}, {mkind}, {nkind}, {bkind}"
    _check_observation(obs, images, variance)
    if mkind in ("2d", "3d", "int"):
        assert np.all(obs.weights[np.broadcast_to(kw["mask"] != 0, (B, H, W))] == 0)
    res = Deblender(FAST).deblend(obs, case[3])
    _check_result(res, obs, len(case[3]))


@st.composite
def configs(draw):
    """DeblendConfig variants that reach the rarely used code paths."""
    return DeblendConfig(
        max_iter=draw(st.sampled_from([0, 1, 7, 15])),
        min_iter=draw(st.sampled_from([0, 2])),
        e_rel=draw(st.sampled_from([0.0, 1e-3, 0.5])),
        resize=draw(st.sampled_from([None, 1, 3])),
        optimizer=draw(st.sampled_from(["amsgrad", "adam"])),
        min_snr=draw(st.sampled_from([0.0, 5.0, 50.0])),
        max_components=draw(st.sampled_from([0, 1, 2])),
        initial_bg_thresh=draw(st.sampled_from([0.0, 1.0, 5.0])),
        init_thresh_units=draw(st.sampled_from(["image", "detection"])),
        residual_init=draw(st.booleans()),
        set_spectra=draw(st.booleans()),
        weighted_sed_fit=draw(st.booleans()),
        sed_solver=draw(st.sampled_from(["nnls", "lstsq"])),
        bg_thresh=draw(st.sampled_from([None, 0.0, 1.0, 10.0])),
        component_padding=draw(st.sampled_from([0, 5])),
        monotonicity_size=draw(st.sampled_from([3, 101])),
        psf_fallback_bg_thresh=draw(st.sampled_from([None, 0.25])),
        center_flip_quirk=draw(st.booleans()),
        keep_best=draw(st.booleans()),
        rescue_faint=draw(st.booleans()),
        rescue_snr=draw(st.sampled_from([0.0, 10.0])),
    )


@FUZZ
@given(observations(allow_bad=False), configs())
def test_fuzz_deblend_configurations(case, config):
    """Every configuration deblends clean inputs into a valid, conserving result."""
    images, variance, psfs, peaks, sigma, _ = case
    obs = Observation(images, variance, psfs, model_psf_sigma=None if sigma is None else 0.5)
    res = Deblender(config).deblend(obs, peaks)
    assert res.iterations <= config.max_iter
    _check_result(res, obs, len(peaks))
