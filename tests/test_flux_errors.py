"""Flux uncertainties: hand-computed cases, dense numpy references, noise-realisation pulls."""

from pathlib import Path

import numpy as np
import pytest
from footprint_reference import result_footprint

from cdeblend import (
    DeblendConfig,
    Deblender,
    FlatStack,
    Observation,
    SingleBandDeblender,
    apportion_flux,
)
from cdeblend.metrics import conserved_flux_errors, fisher_flux_errors
from cdeblend.observation import integrated_gaussian_psf

DATA = Path(__file__).parent / "data"


def gaussian(shape, cy, cx, sigma):
    y, x = np.mgrid[: shape[0], : shape[1]]
    return np.exp(-0.5 * ((y - cy) ** 2 + (x - cx) ** 2) / sigma**2)


def one_source_scene(rng, B=3, H=31, W=29):
    psfs = np.stack([integrated_gaussian_psf(1.6 + 0.2 * b, 21) for b in range(B)])
    var = rng.uniform(0.5, 2.0, (B, H, W)).astype(np.float32)
    truth = np.stack([(40.0 + 10 * b) * gaussian((H, W), 15, 14, 2.5) for b in range(B)])
    images = (truth + rng.normal(size=(B, H, W)) * np.sqrt(var)).astype(np.float32)
    return images, var, psfs


def robust_std(x):
    return 1.4826 * np.median(np.abs(x - np.median(x)))


# ------------------------------------------------------------------ hand-computed cases
def test_one_source_alone_has_the_footprint_error():
    """A lone source owns every pixel its convolved model reaches on the children's
    footprint: its conserved flux is the image summed there, with variance the variance
    summed there (no-data pixels out)."""
    rng = np.random.default_rng(1)
    images, var, psfs = one_source_scene(rng)
    var[1, 3:6, 4:9] = np.inf  # no data: weight 0
    obs = Observation(images, var, psfs)
    res = Deblender(DeblendConfig(max_iter=30)).deblend(obs, [(15, 14)])
    support = (res.models()[0] > 0) & (obs.weights > 0) & result_footprint(res)[None]
    assert support.sum() < ((res.models()[0] > 0) & (obs.weights > 0)).sum()
    expected = np.sqrt(np.where(support, var.astype(np.float64), 0).sum(axis=(1, 2)))
    np.testing.assert_allclose(res.conserved_flux_err[0], expected, rtol=1e-6)
    # the flux is the image summed over the same pixels: the error describes this sum
    flux = np.where(support, images.astype(np.float64), 0).sum(axis=(1, 2))
    np.testing.assert_allclose(res.conserved_fluxes[0], flux, rtol=1e-5)


def test_single_band_errors_from_the_childrens_shares():
    """Each child's share of a pixel is its conserved value over the image value (stray
    flux included): sigma^2 = sum share^2 V. A lone isolated parent is not deblended (one
    peak), so two sources; the bright one's template error is checked by hand below."""
    rng = np.random.default_rng(2)
    H, W = 33, 45
    var = rng.uniform(0.5, 2.0, (H, W))
    psf = integrated_gaussian_psf(1.5, 15)
    img = (
        300 * gaussian((H, W), 16, 12, 2.0)
        + 200 * gaussian((H, W), 17, 32, 2.5)
        + rng.normal(size=(H, W)) * np.sqrt(var)
    )
    res = SingleBandDeblender().deblend(
        img, var, psf, [(16, 12), (17, 32)], footprint=np.ones((H, W), bool)
    )
    assert len(res.children) == 2
    templates = []
    for ch in res.children:
        y0, x0, h, w = ch.box
        share = ch.conserved / img[y0 : y0 + h, x0 : x0 + w]
        expected = np.sqrt(np.sum(share**2 * var[y0 : y0 + h, x0 : x0 + w]))
        assert ch.flux_err == pytest.approx(expected, rel=1e-9)
        t = np.zeros((H, W))
        ty0, tx0, th, tw = ch.template_box
        ya, xa = max(ty0, 0), max(tx0, 0)
        yb, xb = min(ty0 + th, H), min(tx0 + tw, W)
        t[ya:yb, xa:xb] = ch.template[ya - ty0 : yb - ty0, xa - tx0 : xb - tx0]
        templates.append((t, ch.template.sum()))
    # the templates' amplitudes fitted jointly: sigma_i^2 = (sum T_i)^2 (F^-1)_ii
    np.testing.assert_array_equal(res.flux_err, [c.flux_err for c in res.children])
    np.testing.assert_array_equal(
        res.template_flux_err, [c.template_flux_err for c in res.children]
    )
    F = np.array([[np.sum(ti * tj / var) for tj, _ in templates] for ti, _ in templates])
    cov = np.linalg.inv(F)
    for k, ch in enumerate(res.children):
        expected = abs(templates[k][1]) * np.sqrt(cov[k, k])
        assert ch.template_flux_err == pytest.approx(expected, rel=1e-8)


# --------------------------------------------------------------------- dense references
def dense_rows(stack, H, W):
    out = np.zeros((len(stack), stack.bands, H, W))
    for i in range(len(stack)):
        y0, x0, h, w = (int(v) for v in stack.boxes[i])
        ya, xa = max(y0, 0), max(x0, 0)
        yb, xb = min(y0 + h, H), min(x0 + w, W)
        out[i, :, ya:yb, xa:xb] = stack.get(i)[:, ya - y0 : yb - y0, xa - x0 : xa - x0 + xb - xa]
    return out


def random_stack(rng, n, B, H, W, inside=False):
    """Random shapes on random boxes (reaching out of the frame unless ``inside``)."""
    arrays, boxes = [], []
    for _ in range(n):
        h, w = rng.integers(3, 12, 2)
        if inside:
            y0, x0 = rng.integers(0, H - h + 1), rng.integers(0, W - w + 1)
        else:
            y0, x0 = rng.integers(-3, H - 2), rng.integers(-3, W - 2)
        a = rng.normal(size=(B, h, w)) + 0.5
        a[rng.random(a.shape) < 0.2] = 0
        arrays.append(a)
        boxes.append((y0, x0, h, w))
    return FlatStack.from_arrays(arrays, boxes)


@pytest.mark.parametrize("seed", range(5))
def test_conserved_errors_match_a_dense_reference(seed):
    rng = np.random.default_rng(seed)
    B, H, W = 2, 17, 19
    stack = random_stack(rng, 6, B, H, W)
    var = rng.uniform(0, 3, (B, H, W))
    var[rng.random(var.shape) < 0.1] = 0
    mask = rng.random((H, W)) < 0.9
    T = np.maximum(dense_rows(stack, H, W), 0)
    s = T.sum(axis=0)
    share = np.divide(T, s, out=np.zeros_like(T), where=s > 0) * mask
    expected = np.sqrt((share**2 * var).sum(axis=(2, 3)))
    np.testing.assert_allclose(conserved_flux_errors(stack, var, mask), expected, rtol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_fisher_errors_match_a_dense_reference(seed):
    rng = np.random.default_rng(10 + seed)
    B, H, W, K = 2, 15, 16, 5
    stack = random_stack(rng, K, B, H, W, inside=True)
    ivar = rng.uniform(0.2, 3, (B, H, W))
    gain = rng.uniform(0.5, 2, K)
    owner = np.array([0, 0, 1, 2, 2])
    A = dense_rows(stack, H, W)  # (K, B, H, W)
    got = fisher_flux_errors(stack, ivar, gain, owner, 3)
    for b in range(B):
        M = A[:, b].reshape(K, -1)
        F = (M * ivar[b].ravel()) @ M.T
        cov = np.linalg.inv(F)
        G = np.zeros((3, K))
        G[owner, np.arange(K)] = gain
        np.testing.assert_allclose(got[:, b], np.sqrt(np.diag(G @ cov @ G.T)), rtol=1e-8)


def test_fisher_error_of_an_unconstrained_flux_is_nan():
    stack = FlatStack.from_arrays(
        [np.ones((1, 3, 3)), np.ones((1, 3, 3))], [(0, 0, 3, 3), (5, 5, 3, 3)]
    )
    ivar = np.ones((1, 10, 10))
    ivar[0, 5:, 5:] = 0  # the second shape sees no data
    err = fisher_flux_errors(stack, ivar, np.ones(2), np.arange(2), 2)
    assert err[0, 0] == pytest.approx(1 / 3)  # 9 pixels of unit variance, unit gain
    assert np.isnan(err[1, 0])


def test_flux_err_of_a_fit_matches_the_dense_fisher():
    """DeblendResult.flux_err against the Fisher matrix built from dense convolutions."""
    with np.load(DATA / "sim_lsst_blend_0008.npz") as d:
        obs = Observation(d["images"], d["variance"], d["psfs"])
        peaks = np.stack([d["catalog"]["y"], d["catalog"]["x"]], axis=1)
    res = Deblender(DeblendConfig(max_iter=20)).deblend(obs, peaks)
    B, H, W = obs.shape
    comps = res.blend.components
    cols = []
    for c in comps:
        unit = np.zeros((B, H, W))
        y0, x0, h, w = c.box
        unit[:, y0 : y0 + h, x0 : x0 + w] = c.morphology
        cols.append(obs.convolve(unit.astype(obs.dtype), mode="real").astype(np.float64))
    cols = np.array(cols)
    ivar = np.where(obs.weights > 0, 1 / obs.variance.astype(np.float64), 0)
    owner = np.repeat(
        np.arange(len(res.blend.sources)), [len(s.components) for s in res.blend.sources]
    )
    G = np.zeros((len(res.blend.sources), len(comps)))
    G[owner, np.arange(len(comps))] = [c.morphology.sum() for c in comps]
    got = res.flux_err
    for b in range(B):
        M = cols[:, b].reshape(len(comps), -1)
        F = (M * ivar[b].ravel()) @ M.T
        expected = np.sqrt(np.diag(G @ np.linalg.pinv(F) @ G.T))
        np.testing.assert_allclose(got[:, b], expected, rtol=1e-4)


# -------------------------------------------------------------------- pulls on noise
def test_conserved_error_pulls_on_noise_realisations():
    """Fixed shares, many noise realisations of a known scene: the conserved fluxes scatter
    about the noiseless scene's by the predicted standard deviation. With n = 4000 the
    sample std has a relative standard error 1/sqrt(2 n) = 1.1 %: 5 % is over 4 sigma."""
    rng = np.random.default_rng(3)
    B, H, W, n = 2, 24, 30, 4000
    a = gaussian((H, W), 11, 10, 2.5)
    b = gaussian((H, W), 13, 17, 3.0)
    scene = np.stack([100 * a + 60 * b, 50 * a + 90 * b])
    var = rng.uniform(0.5, 4.0, (B, H, W))
    templates = FlatStack.from_arrays(
        [np.stack([a, a]) * 1.1, np.stack([b, b])], [(0, 0, H, W)] * 2
    )
    sigma = conserved_flux_errors(templates, var)
    truth = apportion_flux(scene, templates)[0].sums()
    noise = rng.normal(size=(n, B, H, W)) * np.sqrt(var)
    fluxes = np.array([apportion_flux(scene + e, templates)[0].sums() for e in noise])
    pulls = (fluxes - truth) / sigma
    np.testing.assert_allclose(pulls.std(axis=0), 1.0, atol=0.05)
    assert np.all(np.abs(pulls.mean(axis=0)) < 5 / np.sqrt(n))


def test_model_error_pulls_on_noise_realisations():
    """Amplitudes of fixed shapes fitted by weighted least squares to many noise
    realisations scatter by the Fisher prediction (same 5 % tolerance for n = 4000)."""
    rng = np.random.default_rng(4)
    H, W, n = 20, 22, 4000
    shapes = [
        gaussian((H, W), 9, 9, 2.0),
        gaussian((H, W), 11, 13, 2.5),
        gaussian((H, W), 10, 11, 4.0),
    ]
    stack = FlatStack.from_arrays([s[None] for s in shapes], [(0, 0, H, W)] * 3)
    var = rng.uniform(0.5, 2.0, (1, H, W))
    ivar = 1 / var
    gain = np.array([s.sum() for s in shapes])
    owner = np.array([0, 1, 1])  # source 1 is a bulge + disk
    sigma = fisher_flux_errors(stack, ivar, gain, owner, 2)[:, 0]
    A = np.array([s.ravel() for s in shapes]).T
    sw = np.sqrt(ivar.ravel())
    amp = np.array([1.0, 2.0, 0.5])
    model = A @ amp
    data = model + rng.normal(size=(n, H * W)) * np.sqrt(var.ravel())
    fit = np.linalg.lstsq(A * sw[:, None], (data * sw).T, rcond=None)[0].T
    flux = np.stack([fit[:, 0] * gain[0], fit[:, 1] * gain[1] + fit[:, 2] * gain[2]], axis=1)
    true = np.array([amp[0] * gain[0], amp[1] * gain[1] + amp[2] * gain[2]])
    pulls = (flux - true) / sigma
    np.testing.assert_allclose(pulls.std(axis=0), 1.0, atol=0.05)
    assert abs(robust_std(pulls[:, 0]) - 1) < 0.08  # MAD-based: ~1.7 % standard error


def test_conserved_errors_reject_mismatched_bands():
    stack = FlatStack.from_arrays([np.ones((2, 3, 3))], [(0, 0, 3, 3)])
    with pytest.raises(ValueError, match="variance has 3 bands"):
        conserved_flux_errors(stack, np.ones((3, 5, 5)))


def test_a_reloaded_blend_has_the_fits_errors_and_metrics():
    """ModelData round trip: the rebuilt result's errors and metrics are the fit's."""
    import cdeblend
    from cdeblend import ModelData

    demo = cdeblend.load_hsc_cosmos()
    obs = Observation(demo.images, demo.variance, demo.psfs)
    res = Deblender(DeblendConfig(max_iter=30)).deblend(obs, demo.peaks)
    md = ModelData(obs.bands, integrated_gaussian_psf(0.8), obs.psfs)
    md.blends[3] = ModelData.from_blend(res, 3, (0, 0), bands=obs.bands)
    back = md.rebuild(obs, 3)
    np.testing.assert_allclose(back.conserved_flux_err, res.conserved_flux_err, rtol=1e-6)
    np.testing.assert_allclose(back.flux_err, res.flux_err, rtol=1e-6)
    a, b = back.metrics(), res.metrics()
    np.testing.assert_allclose(a.blendedness, b.blendedness, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.chi2_reduced, b.chi2_reduced, rtol=1e-5)


# ----------------------------------------------------------- deblending uncertainty
def _dense_deblend_error(stack, has_data, mask, shape):
    """Slow reference: place every clipped template in the frame, then sum s_i (S - T_i)."""
    B, H, W = shape
    n = len(stack)
    dense = np.zeros((n, B, H, W))
    for i in range(n):
        y0, x0, h, w = (int(v) for v in stack.boxes[i])
        t = np.maximum(stack.get(i), 0.0)
        for y in range(h):
            for x in range(w):
                if 0 <= y0 + y < H and 0 <= x0 + x < W:
                    dense[i, :, y0 + y, x0 + x] = t[:, y, x]
    dense *= mask[None, None]
    total = dense.sum(axis=0)
    out = np.zeros((n, B))
    for i in range(n):
        with np.errstate(divide="ignore", invalid="ignore"):
            term = np.where(total > 0, dense[i] * (total - dense[i]) / total, 0.0)
        out[i] = np.where(has_data, term, 0.0).sum(axis=(1, 2))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_deblend_flux_errors_match_a_dense_reference(seed):
    """Random boxes (some reaching outside the frame), negative template values, pixels
    without data and a footprint mask: the kernel-based sum equals the dense one."""
    from cdeblend.metrics import deblend_flux_errors

    rng = np.random.default_rng(seed)
    B, H, W, n = int(rng.integers(1, 4)), 23, 19, int(rng.integers(1, 7))
    arrays, boxes = [], []
    for _ in range(n):
        h, w = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        y0, x0 = int(rng.integers(-4, H - 2)), int(rng.integers(-4, W - 2))
        arrays.append(rng.normal(0.5, 1.0, (B, h, w)))
        boxes.append((y0, x0, h, w))
    stack = FlatStack.from_arrays(arrays, boxes)
    has_data = rng.random((B, H, W)) > 0.2
    mask = rng.random((H, W)) > 0.1
    got = deblend_flux_errors(stack, has_data, mask)
    want = _dense_deblend_error(stack, has_data, mask, (B, H, W))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_deblend_flux_errors_by_hand():
    """Two one-pixel-overlap children: on the shared pixel (values 3 and 1, sum 4) the
    first takes 3/4 of it and draws 3/4 * 1 of the second's light, the second 1/4 * 3;
    an isolated third child draws nothing."""
    from cdeblend.metrics import deblend_flux_errors

    a = np.array([[[5.0, 3.0]]])  # (B=1, 1, 2) at columns 0-1
    b = np.array([[[1.0, 7.0]]])  # at columns 1-2
    c = np.array([[[2.0]]])  # alone at column 5
    stack = FlatStack.from_arrays([a, b, c], [(0, 0, 1, 2), (0, 1, 1, 2), (0, 5, 1, 1)])
    got = deblend_flux_errors(stack, np.ones((1, 1, 6), bool))
    np.testing.assert_allclose(got[:, 0], [0.75, 0.75, 0.0])
    # without data on the shared pixel nobody draws anything
    no_data = np.ones((1, 1, 6), bool)
    no_data[0, 0, 1] = False
    np.testing.assert_allclose(deblend_flux_errors(stack, no_data)[:, 0], [0, 0, 0])


def test_total_errors_combine_their_parts():
    """The totals are the parts in quadrature, and a lone source has no deblending error."""
    rng = np.random.default_rng(3)
    images, var, psfs = one_source_scene(rng)
    obs = Observation(images, var, psfs)
    res = Deblender(DeblendConfig(max_iter=30)).deblend(obs, [(15, 14)])
    np.testing.assert_allclose(res.deblend_flux_err, 0.0, atol=1e-9)
    np.testing.assert_allclose(res.conserved_flux_total_err, res.conserved_flux_err)
    misfit2 = (res.conserved_fluxes - res.fluxes) ** 2 - res.conserved_flux_err**2
    want = np.sqrt(res.flux_err**2 + np.maximum(misfit2, 0.0))
    np.testing.assert_allclose(res.flux_total_err, want)
    assert np.all(res.flux_total_err >= res.flux_err)
