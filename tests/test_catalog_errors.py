"""The catalog's flux-error and metric columns with the real deblenders."""

from pathlib import Path

import numpy as np
import pytest

import cdeblend
from cdeblend import CatalogConfig, DeblendConfig, deblend_catalog
from cdeblend.catalog import parents_from_peaks
from cdeblend.metrics import CATALOG_COLUMNS

DATA = Path(__file__).parent / "data" / "sim_lsst_blend_0008.npz"


@pytest.fixture(scope="module")
def scene():
    with np.load(DATA) as d:
        images, variance, psfs, cat = d["images"], d["variance"], d["psfs"], d["catalog"]
    peaks = np.stack([cat["y"], cat["x"]], axis=1)
    return images, variance, psfs, peaks


def run(scene, **cfg):
    images, variance, psfs, peaks = scene
    cat, _ = deblend_catalog(
        images,
        peaks=peaks,
        variance=variance,
        psf=psfs,
        executor="serial",
        config=CatalogConfig(**cfg),
    )
    return np.asarray(cat)


def test_children_carry_errors_and_metrics(scene):
    cat = run(scene)
    kids = cat[~cat["is_parent"]]
    assert len(kids)
    # the noise error is positive exactly where the child has a share of some pixel; in a
    # band where its model is 0 (an SED clipped at 0) its conserved flux is 0 by
    # construction and the Fisher error of the model flux is the band's uncertainty
    has_share = kids["flux_conserved"] != 0
    assert np.all(has_share.any(axis=1))
    assert np.all((kids["flux_conserved_err"] > 0) == has_share)
    assert np.all(np.isfinite(kids["flux_model_err"]) & (kids["flux_model_err"] > 0))
    v = kids["deblend_dataCoverage"]
    assert np.all((v >= -1e-12) & (v <= 1))
    # blendedness is undefined (NaN) where the child's model is 0, where the zero-flux flag
    # is set too (the flag also covers a model whose footprint holds no data)
    v = kids["deblend_blendedness"]
    assert not np.any(np.isnan(v) & ~kids["deblend_zeroFlux"])
    assert np.all((v[~np.isnan(v)] >= -1e-12) & (v[~np.isnan(v)] <= 1))
    assert np.all(kids["deblend_fluxOverlap"] >= 0)
    assert np.all(np.isfinite(kids["chi2_reduced"]))
    parents = cat[cat["is_parent"] & (cat["n_children"] > 0)]
    assert np.all(parents["deblend_runtime"] > 0) and np.all(parents["chi2_reduced"] > 0)
    # every new column has a unit and a description
    for name in CATALOG_COLUMNS:
        assert name in cat.dtype.names


def test_parent_error_is_the_footprint_variance(scene):
    """Every parent, fitted or isolated: sqrt of the variance summed over its footprint."""
    images, variance, psfs, peaks = scene
    parents = parents_from_peaks(images, variance, peaks)
    cat, _ = deblend_catalog(
        images, parents=parents, variance=variance, psf=psfs, executor="serial"
    )
    rows = np.asarray(cat)[np.asarray(cat)["is_parent"]]
    assert rows["skipped_isolated"].any() and (rows["n_children"] > 0).any()
    for p, row in zip(parents, rows, strict=True):
        y0, x0, h, w = p.box
        fp = np.ones((h, w), bool) if p.footprint is None else p.footprint
        var = variance[:, y0 : y0 + h, x0 : x0 + w].astype(np.float64)
        np.testing.assert_allclose(
            row["flux_conserved_err"], np.sqrt((var * fp).sum(axis=(1, 2))), rtol=1e-12
        )


def test_converged_column_has_the_right_sign(scene):
    stopped = run(scene, multi_band=DeblendConfig(max_iter=3, min_iter=1, rescue_faint=False))
    fitted = stopped[stopped["is_parent"] & (stopped["n_children"] > 0)]
    assert len(fitted) and not fitted["converged"].any()
    assert np.all(fitted["iterations"] == 3)
    loose = run(scene, multi_band=DeblendConfig(e_rel=1e-2, rescue_faint=False))
    fitted = loose[loose["is_parent"] & (loose["n_children"] > 0)]
    assert fitted["converged"].all() and np.all(fitted["iterations"] < 300)
    kids = loose[~loose["is_parent"]]
    assert kids["converged"].all()  # children repeat their parent's flag


def test_residual_sources_become_flagged_children():
    demo = cdeblend.load_hsc_cosmos()
    cfg = CatalogConfig(
        multi_band=DeblendConfig(
            residual_sources=True,
            # the catalog's footprint leaves a residual of S/N 15-20 with the default fit
            residual_snr=12,
            residual_max_sources=1,
            residual_model_ratio=0.0,
            residual_image_peak=False,
        )
    )
    cat, models = deblend_catalog(
        demo.images,
        peaks=demo.peaks,
        variance=demo.variance,
        psf=demo.psfs,
        executor="serial",
        config=cfg,
    )
    cat = np.asarray(cat)
    kids = cat[~cat["is_parent"]]
    added = kids[kids["child_flags"] == "added"]
    assert len(added) == 1 and added["peak_id"][0] == -1
    assert not cat["failed"].any()
    # its own peak, in the image frame, away from every detected peak (the footprint found
    # by parents_from_peaks decides which residual is the most significant)
    pos = np.array([added["peak_y"][0], added["peak_x"][0]])
    assert np.min(np.hypot(*(np.asarray(demo.peaks) - pos).T)) >= 4
    assert len(kids) == len(demo.peaks) + 1
    assert sorted(kids["peak_id"][kids["peak_id"] >= 0]) == list(range(len(demo.peaks)))


def test_metrics_can_be_turned_off(scene):
    cat = run(scene, metrics=False)
    kids = cat[~cat["is_parent"]]
    assert np.isnan(kids["flux_model_err"]).all() and np.isnan(kids["chi2_reduced"]).all()
    assert np.all(cat[cat["is_parent"]]["flux_conserved_err"] > 0)
