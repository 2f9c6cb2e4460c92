"""The catalog for science: flags of the single-band deblender, one set of skip rules, a
conserved flux for every source, sorted ids, units and descriptions, RA/Dec from a WCS."""

from __future__ import annotations

import numpy as np
import pytest

from cdeblend import (
    CatalogConfig,
    SingleBandConfig,
    SingleBandDeblender,
    deblend_catalog,
    read_catalog,
    single_band,
    write_catalog,
)
from cdeblend.catalog import COLUMN_DESCRIPTIONS, CatalogParent, parents_from_peaks

pytest.importorskip("astropy")

#: (y, x, flux): a close pair, a triple and two isolated sources, one band.
SOURCES = [
    (12, 12, 400.0),
    (12, 19, 250.0),
    (40, 14, 300.0),
    (45, 20, 200.0),
    (38, 22, 150.0),
    (15, 60, 500.0),
    (45, 64, 350.0),
]


def gaussian_psf(sigma: float = 1.2, size: int = 15) -> np.ndarray:
    y, x = np.mgrid[:size, :size] - size // 2
    p = np.exp(-0.5 * (x**2 + y**2) / sigma**2)
    return p / p.sum()


def scene(seed: int = 4):
    rng = np.random.default_rng(seed)
    H, W = 60, 84
    yy, xx = np.mgrid[:H, :W]
    image = np.zeros((H, W))
    for y, x, f in SOURCES:
        prof = np.exp(-0.5 * ((yy - y) ** 2 + (xx - x) ** 2) / 1.8**2)
        image += f * prof / prof.sum()
    variance = np.full((H, W), 0.04)
    image += rng.normal(0, 0.2, size=image.shape)
    peaks = np.array([(y, x) for y, x, _ in SOURCES])
    return image, variance, gaussian_psf(), peaks


def run(image, variance, psf, peaks, **kw):
    kw.setdefault("executor", "serial")
    return deblend_catalog(image, peaks=peaks, variance=variance, psf=psf, progress=False, **kw)


def parent_rows(cat):
    return cat[np.asarray(cat["is_parent"])]


def blended(cat):
    par = parent_rows(cat)
    return par[par["n_peaks"] > 1]


# ------------------------------------------------------------------------------------------
# the single-band deblender's flags and one set of skip rules
# ------------------------------------------------------------------------------------------


def test_single_band_too_big_parent_is_flagged_in_the_catalog():
    """Issue 15: such a parent showed skipped=False, failed=False, n_children=0."""
    image, variance, psf, peaks = scene()

    def factory(kind, config):
        assert kind == "single"
        return SingleBandDeblender(SingleBandConfig(max_footprint_area=10))

    cat, _ = run(image, variance, psf, peaks, deblender_factory=factory)
    rows = blended(cat)
    assert len(rows) == 2
    for row in rows:
        assert row["skipped"] and row["skipped_parent_too_big"] and not row["failed"]
        assert row["n_children"] == 0 and row["deblender"] == "single"
        assert set(row["deblender_flags"].split(",")) == {"parent_too_big", "skipped"}
    assert not np.any(cat["parent_id"] >= 0)  # no child rows


def test_single_band_failure_is_flagged_in_the_catalog(monkeypatch):
    image, variance, psf, peaks = scene()
    calls = []
    real = single_band.deblender.ParentRun.steps

    def steps(self):
        calls.append(1)
        if len(calls) == 1:
            raise FloatingPointError("injected")
        return real(self)

    monkeypatch.setattr(single_band.deblender.ParentRun, "steps", steps)
    # the deblender's own failure flag (it catches the exception)...
    cat, _ = run(
        image,
        variance,
        psf,
        peaks,
        deblender_factory=lambda kind, c: SingleBandDeblender(SingleBandConfig()),
    )
    rows = blended(cat)
    assert [bool(r["failed"]) for r in rows] == [True, False]
    assert rows[0]["error"] == "FloatingPointError" and rows[0]["n_children"] == 0
    assert "failed" in rows[0]["deblender_flags"] and not rows[0]["skipped"]
    assert rows[1]["n_children"] == rows[1]["n_peaks"]
    # ... and through the catalog's catch_failures with the package's deblender
    calls.clear()
    cat, _ = run(image, variance, psf, peaks)
    rows = blended(cat)
    assert [bool(r["failed"]) for r in rows] == [True, False]
    assert rows[0]["error"] == "FloatingPointError"
    calls.clear()
    with pytest.raises(FloatingPointError):
        run(image, variance, psf, peaks, config=CatalogConfig(catch_failures=False))


def test_catalog_skip_rules_win_over_the_single_band_ones():
    image, variance, psf, peaks = scene()
    # the catalog's rule skips, with its flag
    cat, _ = run(image, variance, psf, peaks, config=CatalogConfig(max_footprint_area=10))
    rows = blended(cat)
    assert np.all(rows["skipped_parent_too_big"]) and np.all(rows["deblender"] == "none")
    # the single-band config's copies of the catalog's rules are off in the catalog
    cfg = CatalogConfig(
        single_band=SingleBandConfig(
            max_footprint_area=10,
            max_number_of_peaks=1,
            max_footprint_size=2,
            mask_limits={"NO_DATA": 0.0},
        )
    )
    mask = np.zeros(image.shape, bool)
    mask[12, 15] = True  # no data inside the pair's footprint
    cat, _ = run(image, variance, psf, peaks, config=cfg, mask=mask)
    rows = blended(cat)
    assert not np.any(rows["skipped"]) and np.all(rows["n_children"] == rows["n_peaks"])
    assert rows[0]["masked_fraction"] > 0
    # the rules the catalog does not have still apply, and are flagged
    cfg = CatalogConfig(single_band=SingleBandConfig(min_footprint_axis_ratio=0.99))
    rows = blended(run(image, variance, psf, peaks, config=cfg)[0])
    assert np.all(rows["skipped_parent_too_big"]) and np.all(rows["deblender"] == "single")


# ------------------------------------------------------------------------------------------
# a row with a conserved flux for every source; sorted ids
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("skip_isolated", [True, False])
def test_every_source_has_a_conserved_flux(skip_isolated):
    image, variance, psf, peaks = scene()
    cat, _ = run(image, variance, psf, peaks, config=CatalogConfig(skip_isolated=skip_isolated))
    par = parent_rows(cat)
    lone = par[par["n_peaks"] == 1]
    assert len(lone) == 2
    # a lone source owns its whole footprint: conserved = footprint flux, nothing unassigned
    for row in lone:
        assert row["skipped_isolated"] == skip_isolated
        np.testing.assert_array_equal(row["flux_conserved"], row["flux_footprint"])
        assert np.all(row["flux_unassigned"] == 0)
    parents = {p.id: p for p in parents_from_peaks(image, variance, peaks)}
    for row in lone:
        p = parents[row["id"]]
        y0, x0, h, w = p.box
        want = image[y0 : y0 + h, x0 : x0 + w][p.footprint].sum()
        np.testing.assert_allclose(row["flux_conserved"][0], want, rtol=1e-12)
    # every peak is a source with a finite conserved flux: lone parents plus children
    kids = cat[~np.asarray(cat["is_parent"])]
    assert len(lone) + len(kids) == len(peaks)
    assert np.all(np.isfinite(lone["flux_conserved"])) and np.all(
        np.isfinite(kids["flux_conserved"])
    )


def test_parent_rows_come_in_increasing_id():
    image, variance, psf, peaks = scene()
    parents = parents_from_peaks(image, variance, peaks)
    shuffled = [
        CatalogParent(id=10 * (len(parents) - k), box=p.box, footprint=p.footprint, peaks=p.peaks)
        for k, p in enumerate(parents)
    ]
    # raster order, ids decreasing
    cat, _ = run(image, variance, psf, None, parents=shuffled)
    ids = list(parent_rows(cat)["id"])
    assert ids == sorted(ids) and len(ids) == len(parents)
    kids = cat[~np.asarray(cat["is_parent"])]
    assert list(kids["id"]) == list(range(max(ids) + 1, max(ids) + 1 + len(kids)))
    # the whole id column is sorted: the parents, then the children in parent order, each
    # parent's children consecutive
    assert list(cat["id"]) == sorted(cat["id"])
    assert list(cat["is_parent"]) == [True] * len(ids) + [False] * len(kids)
    order = [ids.index(pid) for pid in kids["parent_id"]]
    assert order == sorted(order)


# ------------------------------------------------------------------------------------------
# units, descriptions, FITS, RA/Dec
# ------------------------------------------------------------------------------------------


def simple_wcs(crpix, crval=(150.0, 2.0), scale=0.2 / 3600):
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = crpix
    w.wcs.crval = crval
    w.wcs.cdelt = [-scale, scale]
    return w


def test_units_descriptions_and_radec_survive_fits(tmp_path):
    import astropy.units as u

    image, variance, psf, peaks = scene()
    cat0, _ = run(image, variance, psf, peaks)
    # put the WCS reference pixel (1-based) on the first child's centroid: its RA/Dec must
    # be the reference value
    kid = cat0[~np.asarray(cat0["is_parent"])][0]
    wcs = simple_wcs([kid["centroid_x"] + 1, kid["centroid_y"] + 1])
    cat, _ = run(image, variance, psf, peaks, wcs=wcs, flux_unit="nJy")
    row = cat[cat["id"] == kid["id"]][0]
    np.testing.assert_allclose([row["ra"], row["dec"]], [150.0, 2.0], rtol=0, atol=1e-10)
    # one pixel east (x - 1 with cdelt1 < 0 is +RA): 0.2" / cos(dec) in RA
    other = cat[np.isfinite(cat["centroid_x"])]
    dx = other["centroid_x"] - kid["centroid_x"]
    dy = other["centroid_y"] - kid["centroid_y"]
    near = (np.abs(dx) < 20) & (np.abs(dy) < 20)
    ra_off = (other["ra"][near] - 150.0) * np.cos(np.radians(2.0)) * 3600
    dec_off = (other["dec"][near] - 2.0) * 3600
    np.testing.assert_allclose(ra_off, -0.2 * dx[near], atol=1e-4)  # TAN: flat to 1e-4"
    np.testing.assert_allclose(dec_off, 0.2 * dy[near], atol=1e-4)
    # the other columns did not change
    for name in cat0.colnames:
        np.testing.assert_array_equal(cat[name], cat0[name])
    # every column has a description; units where they apply
    assert set(cat.colnames) <= set(COLUMN_DESCRIPTIONS)
    for name in cat.colnames:
        assert cat[name].description == COLUMN_DESCRIPTIONS[name]
    assert cat["ra"].unit == u.deg and cat["dec"].unit == u.deg
    assert cat["centroid_x"].unit == u.pix and cat["box_height"].unit == u.pix
    for name in ("flux_model", "flux_conserved", "flux_footprint", "flux_unassigned"):
        assert cat[name].unit == u.nJy
    assert cat["id"].unit is None and cat["masked_fraction"].unit is None
    path = tmp_path / "cat.fits"
    write_catalog(path, cat)
    back = read_catalog(path)
    for name in cat.colnames:
        assert back[name].unit == cat[name].unit, name
        assert back[name].description == cat[name].description, name
    np.testing.assert_array_equal(back["ra"], cat["ra"])
    # the descriptions are also the TTYPEn comments, for other FITS readers
    from astropy.io import fits

    header = fits.getheader(path, 1)
    i = cat.colnames.index("flux_conserved") + 1
    assert header[f"TUNIT{i}"] == "nJy"
    assert COLUMN_DESCRIPTIONS["flux_conserved"].startswith(
        header.comments[f"TTYPE{i}"].rstrip(".")
    )


def test_wcs_argument_checks():
    from astropy.wcs import WCS

    image, variance, psf, peaks = scene()
    with pytest.raises(TypeError, match="wcs must be an astropy"):
        run(image, variance, psf, peaks, wcs="150 2")
    with pytest.raises(ValueError, match="no celestial"):
        run(image, variance, psf, peaks, wcs=WCS(naxis=2))


def test_cli_catalog_has_radec_and_units(tmp_path):
    fits = pytest.importorskip("astropy.io.fits")
    pytest.importorskip("matplotlib")
    from cdeblend.cli import main

    image, variance, psf, peaks = scene()
    header = simple_wcs([43.0, 31.0]).to_header()
    header["BUNIT"] = "nJy"
    fits.PrimaryHDU(image.astype(np.float32), header=header).writeto(tmp_path / "img.fits")
    fits.PrimaryHDU(variance.astype(np.float32)).writeto(tmp_path / "var.fits")
    fits.PrimaryHDU(psf).writeto(tmp_path / "psf.fits")
    args = [
        "deblend",
        "--images",
        str(tmp_path / "img.fits"),
        "--variance",
        str(tmp_path / "var.fits"),
        "--psfs",
        str(tmp_path / "psf.fits"),
        "--out",
        str(tmp_path / "out"),
        "--no-plots",
        "--quiet",
        "--executor",
        "serial",
    ]
    assert main(args) == 0
    cat = read_catalog(tmp_path / "out" / "catalog.fits")
    assert "ra" in cat.colnames and str(cat["flux_conserved"].unit) == "nJy"
    row = cat[np.isfinite(cat["centroid_x"])][0]
    want = simple_wcs([43.0, 31.0]).all_pix2world([[row["centroid_x"], row["centroid_y"]]], 0)
    np.testing.assert_allclose([row["ra"], row["dec"]], want[0], rtol=0, atol=1e-9)


def test_single_band_parent_flags_reach_the_catalog_unchanged():
    image, variance, psf, peaks = scene()

    def factory(kind, config):  # the deblender's own rule: deblend the first peak only
        return SingleBandDeblender(SingleBandConfig(max_number_of_peaks=1))

    cat, _ = run(image, variance, psf, peaks, deblender_factory=factory)
    for row in blended(cat):
        direct = SingleBandDeblender(SingleBandConfig(max_number_of_peaks=1))
        p = next(p for p in parents_from_peaks(image, variance, peaks) if p.id == row["id"])
        y0, x0, h, w = p.box
        fp = np.zeros(image.shape, bool)
        fp[y0 : y0 + h, x0 : x0 + w] = p.footprint
        res = direct.deblend(image, variance, psf, p.peaks, fp)
        assert row["deblender_flags"] == ",".join(sorted(res.flags)) == "too_many_peaks"
        assert not row["skipped"] and row["n_children"] == res.n_child == 1
