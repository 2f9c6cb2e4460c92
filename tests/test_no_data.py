"""The one no-data rule, in every entry point.

A pixel with a non-finite value, a variance that is not finite and positive (zero inverse
variance), or a set mask (bool True, or a non-zero / selected integer bit) has no data: it
weighs nothing in any fit, gives no flux to any child (its conserved value is 0) and counts
in ``masked_fraction``. The tests check that every way of saying "no data" gives the same
result, that the value under a no-data pixel never matters, that flux is still conserved on
the pixels with data, and the cases of issue 15 that used to fail (NaN rows, zero inverse
variance, single band with ``--peaks``), from the API and from the command line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cdeblend
from cdeblend import (
    CatalogConfig,
    Deblender,
    Observation,
    SingleBandConfig,
    SingleBandDeblender,
    deblend_catalog,
    deblend_image,
    load_hsc_cosmos,
)
from cdeblend._validate import as_no_data_mask, no_data_pixels
from cdeblend.catalog import parents_from_peaks

DATA = Path(__file__).parent / "data"
NO_DATA_BIT = 1 << 8  # SingleBandConfig's default no_data_mask_planes: ("NO_DATA",)


def emmi():
    """A 64 x 64 crop of the public ESO EMMI image (background subtracted) and its variance."""
    fits = pytest.importorskip("astropy.io.fits")
    with fits.open(DATA / "emmi_crop.fits") as hdul:
        image = hdul[0].data.astype(np.float64) - hdul[0].header["BKG"]
        variance = hdul["RMS"].data.astype(np.float64) ** 2
    return image, variance


def gaussian_psf(sigma: float = 1.3, half: int = 8) -> np.ndarray:
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    p = np.exp(-0.5 * (x * x + y * y) / sigma**2)
    return p / p.sum()


def no_data_rows(shape: tuple[int, ...], rows: slice) -> np.ndarray:
    bad = np.zeros(shape[-2:], dtype=bool)
    bad[rows] = True
    return bad


def spellings(image, variance, bad):
    """Every way of saying that the pixels ``bad`` ((H, W) bool) have no data, as
    ``(name, image, variance, mask)``; each has garbage or NaN under the bad pixels."""
    rng = np.random.default_rng(5)
    full = np.broadcast_to(bad, image.shape)
    garbage = image.copy()
    garbage[full] = rng.normal(0, 1e6, size=int(full.sum()))  # never read
    out = []
    for name, value in (("nan image", np.nan), ("inf image", -np.inf)):
        img = image.copy()
        img[full] = value
        out.append((name, img, variance, None))
    for name, value in (
        ("zero variance", 0.0),
        ("negative variance", -1.0),
        ("nan variance", np.nan),
        ("inf variance", np.inf),
    ):
        var = variance.copy()
        var[full] = value
        out.append((name, garbage, var, None))
    out.append(("bool mask", garbage, variance, bad.copy()))
    out.append(("integer mask", garbage, variance, bad.astype(np.int32) * NO_DATA_BIT))
    return out


# ------------------------------------------------------------------------------------------
# _validate: the one conversion
# ------------------------------------------------------------------------------------------


def test_as_no_data_mask_conventions():
    m = np.array([[0, 1], [2, 256]], dtype=np.int32)
    np.testing.assert_array_equal(as_no_data_mask(m, "mask", (2, 2)), [[0, 1], [1, 1]])
    np.testing.assert_array_equal(
        as_no_data_mask(m, "mask", (2, 2), bad_bits=256), [[0, 0], [0, 1]]
    )
    # bits the type lacks select nothing; the sign bit of a signed mask is a bit like others
    small = np.array([[0, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(as_no_data_mask(small, "mask", (1, 2), bad_bits=256), [[0, 0]])
    signed = np.array([[-(2**31), 1]], dtype=np.int32)
    np.testing.assert_array_equal(
        as_no_data_mask(signed, "mask", (1, 2), bad_bits=1 << 31), [[1, 0]]
    )
    b = np.array([[True, False], [False, False]])
    got = as_no_data_mask(b, "mask", (3, 2, 2))
    np.testing.assert_array_equal(got, b)
    assert got is not b  # a copy
    assert as_no_data_mask(None, "mask", (2, 2)) is None
    with pytest.raises(TypeError, match="mask must be bool"):
        as_no_data_mask(np.zeros((2, 2)), "mask", (2, 2))
    with pytest.raises(ValueError, match="mask has shape"):
        as_no_data_mask(np.zeros((3, 3), bool), "mask", (2, 2))
    img = np.array([[1.0, np.nan], [1.0, 1.0]])
    var = np.array([[1.0, 1.0], [0.0, np.inf]])
    np.testing.assert_array_equal(no_data_pixels(img, var), [[0, 1], [1, 1]])
    np.testing.assert_array_equal(no_data_pixels(img, None, b), [[1, 1], [0, 0]])


# ------------------------------------------------------------------------------------------
# single band
# ------------------------------------------------------------------------------------------


def test_single_band_every_spelling_of_no_data_gives_the_same_children():
    image, variance = emmi()
    psf = gaussian_psf()
    parents = cdeblend.detect(image, variance, nsigma=5)
    parent = max(parents, key=lambda p: len(p.peaks))
    assert len(parent.peaks) >= 2
    fp = parent.full_footprint(image.shape)
    # no data on two rows through the parent (not on a peak)
    ys = np.flatnonzero(fp.any(axis=1))
    row = int(ys[len(ys) // 2])
    if row in parent.peaks[:, 0]:
        row += 1
    bad = no_data_rows(image.shape, slice(row, row + 2))
    cfg = SingleBandConfig(catch_failures=False, mask_limits={})  # a small parent: no limit
    results = {}
    for name, img, var, mask in spellings(image, variance, bad):
        res = SingleBandDeblender(cfg).deblend(img, var, psf, parent.peaks, fp, mask=mask)
        assert not res.flags, name
        results[name] = res
    ref = results["nan image"]
    assert ref.n_child >= 2
    cons = ref.conserved_images()
    # no flux to any child at a pixel without data
    assert np.all(cons[:, bad] == 0)
    # children + unassigned = the image on the footprint, read as 0 where there is no data
    read = np.where(bad, 0.0, image)
    total = cons.sum(axis=0)
    y0, x0, h, w = ref.footprint_box
    total[y0 : y0 + h, x0 : x0 + w] += ref.unassigned
    final = np.zeros(image.shape, bool)
    final[y0 : y0 + h, x0 : x0 + w] = ref.final_footprint
    np.testing.assert_allclose(total[final], read[final], rtol=0, atol=1e-9 * np.abs(image).max())
    for name, res in results.items():
        np.testing.assert_array_equal(res.conserved_images(), cons, err_msg=name)
        np.testing.assert_array_equal(res.templates(), ref.templates(), err_msg=name)
    # the data pixels matter: the same parent without the no-data rows differs
    clean = SingleBandDeblender(cfg).deblend(image, variance, psf, parent.peaks, fp)
    assert not np.array_equal(clean.conserved_images(), cons)


def test_single_band_mask_limit_counts_no_data():
    image, variance = emmi()
    psf = gaussian_psf()
    parent = max(cdeblend.detect(image, variance, nsigma=5), key=lambda p: len(p.peaks))
    fp = parent.full_footprint(image.shape)
    # 30 % of the footprint without data (NaN), the default limit is 25 % of NO_DATA
    ys, xs = np.nonzero(
        fp
        & ~np.isin(
            np.arange(image.size).reshape(image.shape),
            np.ravel_multi_index(parent.peaks.T, image.shape),
        )
    )
    n = int(np.ceil(0.3 * fp.sum()))
    img = image.copy()
    img[ys[:n], xs[:n]] = np.nan
    res = SingleBandDeblender().deblend(img, variance, psf, parent.peaks, fp)
    assert {"masked", "skipped"} <= res.flags and res.children == []
    # an integer mask gets NOT_DEBLENDED on the skipped parent; bool masks have no planes
    mask = np.zeros(image.shape, np.int32)
    res = SingleBandDeblender().deblend(img, variance, psf, parent.peaks, fp, mask=mask)
    assert "masked" in res.flags and np.all(mask[fp] & (1 << 9))
    # 20 % stays under the limit
    img = image.copy()
    m = int(0.2 * fp.sum())
    img[ys[:m], xs[:m]] = np.nan
    assert "masked" not in SingleBandDeblender().deblend(img, variance, psf, parent.peaks, fp).flags


def test_single_band_integer_mask_too_narrow_for_its_planes():
    image, variance = emmi()
    with pytest.raises(TypeError, match="mask of dtype uint8 cannot hold"):
        deblend_image(image, variance, gaussian_psf(), mask=np.zeros(image.shape, np.uint8))


def test_deblend_image_with_zero_inverse_variance_rows():
    image, variance = emmi()
    psf = gaussian_psf()
    bad = no_data_rows(image.shape, slice(30, 33))
    results = {}
    for name, img, var, mask in spellings(image, variance, bad):
        results[name] = deblend_image(img, var, psf, mask=mask)
    ref = results["zero variance"]
    assert len(ref) >= 3 and not any("failed" in r.result.flags for r in ref)
    for name, res in results.items():
        assert [tuple(r.parent.box) for r in res] == [tuple(r.parent.box) for r in ref], name
        for a, b in zip(res, ref, strict=True):
            np.testing.assert_array_equal(
                a.conserved_images(image.shape), b.conserved_images(image.shape), err_msg=name
            )
    for r in ref:
        assert np.all(r.conserved_images(image.shape)[:, bad] == 0)
    # detection finds nothing on the rows without data
    for r in ref:
        assert not np.any(r.parent.full_footprint(image.shape) & bad & (image == 0))


def test_single_band_catalog_with_peaks_and_zero_inverse_variance():
    """Issue 15: every parent failed with 'mask must be an integer bit-plane array'."""
    image, variance = emmi()
    psf = gaussian_psf()
    peaks = np.concatenate([p.peaks for p in cdeblend.detect(image, variance, nsigma=5)])
    bad = no_data_rows(image.shape, slice(30, 33))
    var = variance.copy()
    var[bad] = 0.0
    cats = {}
    for name, kw in (
        ("variance", {"variance": var}),
        ("mask", {"variance": variance, "mask": bad}),
    ):
        cat, _ = deblend_catalog(
            image,
            peaks=peaks,
            psf=psf,
            executor="serial",
            progress=False,
            config=CatalogConfig(catch_failures=False),
            **kw,
        )
        cats[name] = cat
        par = cat[cat["is_parent"]]
        assert not np.any(par["failed"]) and np.any(par["n_children"] > 0), name
    for col in ("flux_conserved", "flux_footprint", "masked_fraction", "n_children"):
        np.testing.assert_array_equal(cats["variance"][col], cats["mask"][col])
    cat = cats["mask"]
    parents = parents_from_peaks(np.where(bad, 0.0, image), var, peaks)
    for p in parents:
        row = cat[cat["id"] == p.id][0]
        y0, x0, h, w = p.box
        nd = bad[y0 : y0 + h, x0 : x0 + w] & p.footprint
        assert row["masked_fraction"] == nd.sum() / p.footprint.sum()
        # the footprint flux leaves out the pixels without data
        cut = np.where(bad, 0.0, image)[y0 : y0 + h, x0 : x0 + w]
        np.testing.assert_allclose(row["flux_footprint"][0], cut[p.footprint].sum(), rtol=1e-12)


# ------------------------------------------------------------------------------------------
# multi band
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hsc():
    b = load_hsc_cosmos()
    return (
        np.asarray(b.images, np.float64),
        np.asarray(b.variance, np.float64),
        np.asarray(b.psfs, np.float64),
        np.asarray(b.peaks),
    )


def test_observation_and_deblender_every_spelling_is_the_same(hsc):
    images, variance, psfs, peaks = hsc
    bad = no_data_rows(images.shape, slice(20, 22))
    assert not np.any(np.isin(peaks[:, 0], [20, 21]))
    results = {}
    for name, img, var, mask in spellings(images, variance, bad):
        obs = (
            Observation(img, var, psfs) if mask is None else Observation(img, var, psfs, mask=mask)
        )
        assert np.all(obs.weights[:, bad] == 0) and np.all(obs.images[:, bad] == 0), name
        assert np.all(obs.variance[:, bad] == 0), name
        results[name] = Deblender().deblend(obs, peaks)
    ref = results["bool mask"]
    cons = ref.conserved_images()
    assert np.all(cons[:, :, bad] == 0)  # no flux to any child without data
    for name, res in results.items():
        assert res.loss == ref.loss, name
        np.testing.assert_array_equal(res.conserved_images(), cons, err_msg=name)
    # the noise level is that of the pixels with data
    obs = Observation(images, np.where(bad, 0.0, variance), psfs)
    np.testing.assert_allclose(obs.noise_rms, np.sqrt(variance[:, ~bad]).mean(axis=1), rtol=1e-12)


def test_multi_band_nan_in_one_band_keeps_the_others(hsc):
    images, variance, psfs, peaks = hsc
    img = images.copy()
    img[1, 5:7, :] = np.nan
    obs = Observation(img, variance, psfs)
    assert np.all(obs.weights[1, 5:7] == 0)
    np.testing.assert_array_equal(obs.weights[[0, 2, 3, 4], 5:7], 1 / variance[[0, 2, 3, 4], 5:7])
    cat, _ = deblend_catalog(
        img,
        peaks=peaks,
        variance=variance,
        psf=psfs,
        executor="serial",
        progress=False,
        config=CatalogConfig(catch_failures=False),
    )
    par = cat[cat["is_parent"]]
    assert not np.any(par["failed"]) and par["n_children"].sum() == len(peaks)
    # a pixel without data in any band counts in the masked fraction
    assert np.all(par["masked_fraction"] > 0)


def test_multi_band_catalog_nan_rows_with_and_without_mask(hsc):
    """Issue 15: NaN pixels raised 'mask them instead' even when a mask was passed."""
    images, variance, psfs, peaks = hsc
    bad = no_data_rows(images.shape, slice(20, 22))
    cats = {}
    for name, img, var, mask in spellings(images, variance, bad):
        cat, _ = deblend_catalog(
            img,
            peaks=peaks,
            variance=var,
            psf=psfs,
            mask=mask,
            executor="serial",
            progress=False,
            config=CatalogConfig(catch_failures=False),
        )
        cats[name] = cat
    ref = cats["nan image"]
    for name, cat in cats.items():
        for col in ("flux_conserved", "flux_footprint", "loss", "masked_fraction"):
            np.testing.assert_array_equal(cat[col], ref[col], err_msg=f"{name}: {col}")
    par = ref[ref["is_parent"]][0]
    assert not par["failed"] and par["masked_fraction"] > 0
    # conservation on the pixels with data: children + unassigned = footprint flux
    kids = ref[~ref["is_parent"]]
    np.testing.assert_allclose(
        kids["flux_conserved"].sum(axis=0) + par["flux_unassigned"],
        par["flux_footprint"],
        rtol=1e-9,
    )
    (p,) = parents_from_peaks(np.where(bad, 0, images), np.where(bad, 0, variance), peaks)
    y0, x0, h, w = p.box
    cut = np.where(bad, 0, images)[:, y0 : y0 + h, x0 : x0 + w]
    np.testing.assert_allclose(par["flux_footprint"], cut[:, p.footprint].sum(axis=1), rtol=1e-12)
    # over the masked limit: skipped with its flag
    cat, _ = deblend_catalog(
        images,
        peaks=peaks,
        variance=variance,
        psf=psfs,
        mask=bad,
        executor="serial",
        progress=False,
        config=CatalogConfig(max_masked_fraction=0.01),
    )
    par = cat[cat["is_parent"]][0]
    assert par["skipped"] and par["skipped_masked"] and par["n_children"] == 0


def test_apportion_flux_mask_is_no_data():
    stack = cdeblend.FlatStack.from_arrays(
        [np.ones((1, 3, 3)), np.ones((1, 3, 3))], [(0, 0, 3, 3), (0, 1, 3, 3)]
    )
    image = np.arange(1.0, 17.0).reshape(4, 4)
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = True
    cons, _ = cdeblend.apportion_flux(image, stack, mask=mask)
    nan = image.copy()
    nan[1, 1] = np.nan
    cons2, _ = cdeblend.apportion_flux(nan, stack)
    np.testing.assert_array_equal(cons.flat, cons2.flat)
    assert cons.get(0)[0, 1, 1] == 0 and cons.get(1)[0, 1, 0] == 0
    # both children share (1, 2): half each, as a hand computation says
    assert cons.get(0)[0, 1, 2] == cons.get(1)[0, 1, 1] == image[1, 2] / 2


# ------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------


def write_fits(path, data):
    fits = pytest.importorskip("astropy.io.fits")
    fits.PrimaryHDU(np.asarray(data, dtype=np.float32)).writeto(path)
    return str(path)


def run_cli(args):
    from cdeblend.cli import main

    return main([*args, "--quiet", "--no-plots", "--executor", "serial"])


def test_cli_single_band_zero_invvar_with_peaks(tmp_path, capsys):
    pytest.importorskip("astropy")
    from cdeblend import read_catalog

    image, variance = emmi()
    invvar = 1 / variance
    invvar[39:41] = 0.0  # '<= 0 means no data', through the largest parent
    peaks = np.concatenate([p.peaks for p in cdeblend.detect(image, variance, nsigma=5)])
    (tmp_path / "peaks.csv").write_text("x,y\n" + "".join(f"{x},{y}\n" for y, x in peaks))
    args = [
        "deblend",
        "--images",
        write_fits(tmp_path / "img.fits", image),
        "--invvar",
        write_fits(tmp_path / "ivar.fits", invvar),
        "--psfs",
        write_fits(tmp_path / "psf.fits", gaussian_psf()),
    ]
    for extra, out in (([], "a"), (["--peaks", str(tmp_path / "peaks.csv")], "b")):
        assert run_cli([*args, *extra, "--out", str(tmp_path / out)]) == 0
        assert "error" not in capsys.readouterr().err
        cat = read_catalog(tmp_path / out / "catalog.fits")
        par = cat[cat["is_parent"]]
        assert not np.any(par["failed"]) and np.any(par["n_children"] > 0)
        assert np.any(par["masked_fraction"] > 0)


def test_cli_nan_rows_single_and_multi_band(tmp_path, hsc, capsys):
    pytest.importorskip("astropy")
    from cdeblend import read_catalog

    image, variance = emmi()
    img = image.copy()
    img[30:33] = np.nan
    args = [
        "deblend",
        "--images",
        write_fits(tmp_path / "img.fits", img),
        "--variance",
        write_fits(tmp_path / "var.fits", variance),
        "--psfs",
        write_fits(tmp_path / "psf.fits", gaussian_psf()),
        "--out",
        str(tmp_path / "single"),
    ]
    assert run_cli(args) == 0
    cat = read_catalog(tmp_path / "single" / "catalog.fits")
    assert not np.any(cat["failed"]) and np.any(cat["n_children"] > 0)

    images, variance, psfs, peaks = hsc
    imgs = images.copy()
    imgs[:, 20:22] = np.nan
    invvar = 1 / variance
    invvar[2, 30:32] = 0
    psf_files = [write_fits(tmp_path / f"psf{b}.fits", psfs[b]) for b in range(len(psfs))]
    (tmp_path / "peaks.csv").write_text("x,y\n" + "".join(f"{x},{y}\n" for y, x in peaks))
    args = [
        "deblend",
        "--images",
        write_fits(tmp_path / "cube.fits", imgs),
        "--invvar",
        write_fits(tmp_path / "ivar.fits", invvar),
        "--psfs",
        *psf_files,
        "--peaks",
        str(tmp_path / "peaks.csv"),
        "--out",
        str(tmp_path / "multi"),
    ]
    assert run_cli(args) == 0, capsys.readouterr().err
    cat = read_catalog(tmp_path / "multi" / "catalog.fits")
    par = cat[cat["is_parent"]]
    assert not np.any(par["failed"]) and par["n_children"].sum() == len(peaks)


def test_a_band_without_any_data_is_a_clear_error(hsc):
    images, variance, psfs, peaks = hsc
    img = images.copy()
    img[3] = np.nan  # the whole z band
    with pytest.raises(ValueError, match=r"band\(s\) \['3'\] have no pixel with data"):
        deblend_catalog(img, peaks=peaks, variance=variance, psf=psfs, progress=False)
    with pytest.raises(ValueError, match=r"variance\[3\] has no pixel with data"):
        Observation(img, variance, psfs)
