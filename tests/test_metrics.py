"""Deblending metrics against slow dense numpy references; the convergence flag's sign."""

from pathlib import Path

import numpy as np
import pytest

from cdeblend import DeblendConfig, Deblender, Observation

DATA = Path(__file__).parent / "data"


def load(name):
    with np.load(DATA / name) as d:
        images, variance, psfs, cat = d["images"], d["variance"], d["psfs"], d["catalog"]
    return Observation(images, variance, psfs), np.stack([cat["y"], cat["x"]], axis=1)


@pytest.fixture(scope="module", params=["sim_lsst_blend_0008.npz", "hsc_cosmos_35.npz"])
def fitted(request):
    obs, peaks = load(request.param)
    if request.param.startswith("sim"):
        # some pixels without data, to exercise the coverage and the chi^2 counts
        var = obs.variance.copy()
        var[2, 30:40, 20:30] = np.inf
        var[:, :3, :] = np.inf
        obs = Observation(obs.images, var, obs.psfs)
    return Deblender(DeblendConfig(max_iter=40)).deblend(obs, peaks)


def dense_models(res):
    """(N, B, H, W) model-space source models, inserted by hand from the components."""
    B, H, W = res.blend.shape
    out = np.zeros((len(res.blend.sources), B, H, W))
    for i, src in enumerate(res.blend.sources):
        for c in src.components:
            y0, x0, h, w = c.box
            ya, xa, yb, xb = max(y0, 0), max(x0, 0), min(y0 + h, H), min(x0 + w, W)
            out[i, :, ya:yb, xa:xb] += (c.sed[:, None, None] * c.morphology[None])[
                :, ya - y0 : yb - y0, xa - x0 : xb - x0
            ]
    return out


def test_metrics_match_a_dense_reference(fitted):
    res = fitted
    m = res.metrics()
    models = dense_models(res)
    total = models.sum(axis=0)
    obs = res.blend.observation
    conv = res.models().astype(np.float64)  # convolved per source
    resid = obs.images.astype(np.float64) - obs.convolve(
        total.astype(obs.dtype), mode="real"
    ).astype(np.float64)
    w = obs.weights.astype(np.float64)
    data = w > 0
    for i in range(len(models)):
        mi = models[i]
        fp = (mi > 0).any(axis=0)
        neigh = (total - mi) * fp
        flux = mi.sum(axis=(1, 2))
        np.testing.assert_allclose(
            m.flux_overlap[i], neigh.sum(axis=(1, 2)), rtol=1e-9, atol=1e-9 * np.abs(total).sum()
        )
        np.testing.assert_allclose(m.max_overlap[i], neigh.max(axis=(1, 2)), rtol=1e-9)
        frac = neigh.sum(axis=(1, 2)) / flux
        np.testing.assert_allclose(m.flux_overlap_fraction[i], frac, rtol=1e-7, atol=1e-12)
        bl = 1 - (mi * mi).sum(axis=(1, 2)) / (mi * total).sum(axis=(1, 2))
        np.testing.assert_allclose(m.blendedness[i], bl, rtol=1e-7, atol=1e-12)
        ys, xs = np.nonzero(fp)
        H, W = fp.shape
        edge = ys.min() == 0 or xs.min() == 0 or ys.max() == H - 1 or xs.max() == W - 1
        assert m.edge_pixels[i] == edge
        cfp = (conv[i] > 0).any(axis=0)
        np.testing.assert_allclose(m.data_coverage[i], data[:, cfp].mean(axis=1))
        chi2 = (w * resid**2)[:, cfp].sum() / data[:, cfp].sum()
        assert m.chi2_reduced[i] == pytest.approx(chi2, rel=1e-4)
    assert m.parent_chi2_reduced == pytest.approx(2 * res.loss / data.sum(), rel=1e-4)
    np.testing.assert_array_equal(m.zero_flux, res.conserved_fluxes == 0)
    assert m.iterations == res.iterations
    assert m.runtime == pytest.approx(res.timing["init"] + res.timing["fit"])
    # blendedness is a fraction; an overlap-free source has 0
    assert np.all((m.blendedness >= -1e-12) & (m.blendedness <= 1))


def test_isolated_source_has_no_overlap():
    obs, peaks = load("sim_lsst_blend_0008.npz")
    res = Deblender(DeblendConfig(max_iter=10)).deblend(obs, peaks[:1])
    m = res.metrics()
    np.testing.assert_allclose(m.blendedness, 0, atol=1e-12)
    np.testing.assert_array_equal(m.flux_overlap, 0)
    np.testing.assert_array_equal(m.max_overlap, 0)


def test_converged_is_false_when_max_iter_stops_the_fit():
    obs, peaks = load("hsc_cosmos_35.npz")
    res = Deblender(DeblendConfig(max_iter=4, min_iter=1, rescue_faint=False)).deblend(obs, peaks)
    assert res.iterations == 4
    assert res.converged is False
    assert res.metrics().converged is False


def test_converged_is_true_when_e_rel_stops_the_fit():
    obs, peaks = load("hsc_cosmos_35.npz")
    res = Deblender(DeblendConfig(max_iter=300, e_rel=1e-2, rescue_faint=False)).deblend(obs, peaks)
    assert res.iterations < 300
    assert res.converged is True
    h = res.loss_history
    # the test that stopped it (DeblendConfig.converge_window): over the last w iterations
    # the lowest loss improved by less than w * e_rel of itself, and the last loss is
    # within that of it
    w = DeblendConfig().converge_window
    best = np.minimum.accumulate(h)
    assert best[-w - 1] - best[-1] < w * 1e-2 * best[-1]
    assert h[-1] - best[-1] < w * 1e-2 * best[-1]
    assert res.metrics().converged is True


def test_errors_and_metrics_in_one_call_equal_the_properties(fitted):
    # metrics.result_errors_and_metrics (the catalog's one call, sharing the variance plane,
    # the pixels with data and the templates' sum) gives the four products of the result's
    # own methods to the bit (the simulated blend has pixels without data)
    from dataclasses import fields, replace

    from cdeblend.metrics import result_errors_and_metrics

    res = fitted
    m, flux_err, conserved_err, deblend_err = result_errors_and_metrics(res)
    fresh = replace(res, _conv=None, _snapshot=None)  # the children and footprint: init=False
    want = fresh.metrics()
    for f in fields(want):
        np.testing.assert_array_equal(getattr(m, f.name), getattr(want, f.name))
    np.testing.assert_array_equal(flux_err, fresh.flux_err)
    np.testing.assert_array_equal(conserved_err, fresh.conserved_flux_err)
    np.testing.assert_array_equal(deblend_err, fresh.deblend_flux_err)
