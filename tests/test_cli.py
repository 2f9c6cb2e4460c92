"""The ``cdeblend`` command end to end: FITS in, catalog + models + pictures out."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

fits = pytest.importorskip("astropy.io.fits")
pytest.importorskip("matplotlib")

from cdeblend import load_models, read_catalog  # noqa: E402
from cdeblend.cli import main  # noqa: E402
from cdeblend.observation import integrated_gaussian_psf  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"
DATA = Path(__file__).parent / "data"


def write_scene(folder):
    """Three bands, two parents (a pair and a single source), written as FITS files."""
    rng = np.random.default_rng(11)
    H, W = 48, 64
    yy, xx = np.mgrid[:H, :W]
    sources = [(15, 16, (300, 500, 700)), (19, 22, (400, 300, 200)), (34, 48, (500, 500, 500))]
    sigmas = (1.6, 1.5, 1.4)
    images = np.zeros((3, H, W))
    for y, x, sed in sources:
        for b, s in enumerate(sigmas):
            prof = np.exp(-0.5 * ((yy - y) ** 2 + (xx - x) ** 2) / s**2)
            images[b] += sed[b] * prof / prof.sum()
    variance = np.full((3, H, W), 0.5)
    images += rng.normal(size=images.shape) * np.sqrt(variance)
    psfs = np.stack([integrated_gaussian_psf(s, 15) for s in sigmas])
    fits.PrimaryHDU(images.astype(np.float32)).writeto(folder / "cube.fits")
    hdus = [fits.PrimaryHDU()]
    for b, band in enumerate("gri"):
        hdus.append(
            fits.ImageHDU(
                (1 / variance[b]).astype(np.float32), header=fits.Header([("BAND", band)])
            )
        )
    fits.HDUList(hdus).writeto(folder / "invvar.fits")
    for b, band in enumerate("gri"):
        fits.PrimaryHDU(psfs[b] * 3.0).writeto(folder / f"psf_{band}.fits")  # not normalised
    (folder / "peaks.csv").write_text("x,y\n" + "".join(f"{x},{y}\n" for y, x, _ in sources))
    return images


def test_deblend_and_show(tmp_path, capsys):
    images = write_scene(tmp_path)
    out = tmp_path / "out"
    args = [
        "deblend",
        "--images",
        str(tmp_path / "cube.fits"),
        "--invvar",
        str(tmp_path / "invvar.fits"),
        "--psfs",
        *(str(tmp_path / f"psf_{b}.fits") for b in "gri"),
        "--bands",
        "g",
        "r",
        "i",
        "--peaks",
        str(tmp_path / "peaks.csv"),
        "--out",
        str(out),
        "--executor",
        "serial",
    ]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "not normalised (sum 3" in err and "normalising the PSF images" in err
    assert "INFO: 2 parents, 2 children; skipped: 1 isolated; 0 failed; 0 not converged" in err
    cat = read_catalog(out / "catalog.fits")
    parents = cat[cat["is_parent"]]
    children = cat[~cat["is_parent"]]
    assert len(children) == 2  # the pair; the single source is an isolated parent
    assert sorted(parents["n_peaks"]) == [1, 2] and not np.any(parents["failed"])
    pair = parents[parents["n_peaks"] == 2][0]
    # the children and the unassigned flux add up to the parent's flux in every band
    np.testing.assert_allclose(
        children["flux_conserved"].sum(0) + pair["flux_unassigned"],
        pair["flux_footprint"],
        rtol=1e-5,
    )
    models = load_models(out / "models.fits")
    assert models.bands == ("g", "r", "i")
    assert int(pair["id"]) in models.blends
    for name in ("field.png", f"parent{int(pair['id'])}_source0.png"):
        assert (out / name).read_bytes()[:8] == PNG

    show = tmp_path / "show"
    assert (
        main(
            [
                "show",
                "--models",
                str(out / "models.fits"),
                "--parent",
                str(int(pair["id"])),
                "--images",
                str(tmp_path / "cube.fits"),
                "--invvar",
                str(tmp_path / "invvar.fits"),
                "--out",
                str(show),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "conserved_g" in table
    pngs = sorted(p.name for p in show.glob("*.png"))
    assert len(pngs) == 2 and all((show / p).read_bytes()[:8] == PNG for p in pngs)
    # the re-apportioned fluxes shown equal the catalog's (same models, image and noise: the
    # children's footprint is measured in noise units)
    shown = [float(line.split()[3]) for line in table.splitlines()[2:4]]
    np.testing.assert_allclose(sorted(shown), sorted(children["flux_conserved"][:, 0]), rtol=1e-4)
    assert images.shape == (3, 48, 64)


def test_errors_are_plain_words(tmp_path, capsys):
    assert (
        main(
            [
                "deblend",
                "--images",
                str(tmp_path / "nope.fits"),
                "--variance",
                str(tmp_path / "nope.fits"),
                "--psfs",
                str(tmp_path / "p.fits"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "error" in err and "not found" in err and "Traceback" not in err
    write_scene(tmp_path)
    assert (
        main(
            [
                "show",
                "--models",
                str(tmp_path / "cube.fits"),
                "--parent",
                "1",
                "--images",
                str(tmp_path / "cube.fits"),
            ]
        )
        == 1
    )
    assert "not a cdeblend model file" in capsys.readouterr().err


def test_demo_writes_tables(tmp_path):
    assert main(["demo", "--out", str(tmp_path), "--no-plots"]) == 0
    with open(tmp_path / "multi_band_fluxes.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 and all(float(r["conserved_flux_i"]) > 0 for r in rows)
    with open(tmp_path / "single_band_fluxes.csv") as f:
        single = list(csv.DictReader(f))
    assert {r["band"] for r in single} == {"r", "i"}
    with open(tmp_path / "multi_band_summary.csv") as f:
        summary = next(csv.DictReader(f))
    # the tables are the public API's fit of the bundled blend, written with 6 significant
    # digits (so within 5e-6 relative)
    import cdeblend as cdb

    blend = cdb.load_hsc_cosmos()
    obs = cdb.Observation(blend.images, blend.variance, blend.psfs, bands=blend.bands)
    fit = cdb.Deblender(cdb.DeblendConfig()).deblend(obs, blend.peaks)
    assert int(summary["iterations"]) == fit.iterations
    assert float(summary["loss"]) == pytest.approx(fit.loss, rel=1e-5)
    i = list(blend.bands).index("i")
    got = [float(r["conserved_flux_i"]) for r in rows]
    np.testing.assert_allclose(got, fit.conserved_fluxes[:, i], rtol=1e-5)


def test_help_and_console_script():
    res = subprocess.run(
        [sys.executable, "-m", "cdeblend.cli", "--help"], capture_output=True, text=True, check=True
    )
    for sub in ("demo", "deblend", "show"):
        assert sub in res.stdout
    with pytest.raises(SystemExit) as exc:
        main(["deblend", "--help"])
    assert exc.value.code == 0


# ------------------------------------------------------------------------------------------
# real-data options: no variance, Gaussian PSFs, background, peak files, exit status
# ------------------------------------------------------------------------------------------


def write_single_band(folder, sky=0.0, noise=2.0, seed=4):
    """One band, 80 x 120: a bright pair, a faint pair and a single star, plus ``sky``."""
    rng = np.random.default_rng(seed)
    H, W = 80, 120
    yy, xx = np.mgrid[:H, :W]
    # (y, x, flux): the bright pair around x = 30, the faint pair around x = 90
    sources = [
        (40, 27, 20000.0),
        (43, 34, 12000.0),
        (35, 88, 3000.0),
        (39, 94, 2500.0),
        (65, 60, 4000.0),
    ]
    sigma = 1.7
    image = np.full((H, W), float(sky))
    for y, x, flux in sources:
        image += (
            flux
            * np.exp(-0.5 * ((yy - y) ** 2 + (xx - x) ** 2) / sigma**2)
            / (2 * np.pi * sigma**2)
        )
    image += rng.normal(0, noise, size=(H, W))
    fits.PrimaryHDU(image.astype(np.float32)).writeto(folder / "single.fits")
    return sources, sigma * 2.3548


def run(args, capsys):
    status = main(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_single_band_without_variance_with_background_and_gaussian_psf(tmp_path, capsys):
    sources, fwhm = write_single_band(tmp_path, sky=500.0)
    out = tmp_path / "out"
    base = [
        "deblend",
        "--images",
        str(tmp_path / "single.fits"),
        "--psf-fwhm",
        f"{fwhm:.3f}",
        "--executor",
        "serial",
        "--out",
        str(out),
        "--max-plots",
        "1",
    ]
    status, _, err = run(base + ["--background", "auto"], capsys)
    assert status == 0, err
    assert "no variance given" in err and "mesh background" in err
    # the estimated noise is the simulated 2.0 (sigma clipping of 9600 pixels: +-5 %)
    noise = float(err.split("sigma-clipped pixels (3 sigma): 0 ")[1].split()[0])
    assert abs(noise - 2.0) < 0.1
    cat = read_catalog(out / "catalog.fits")
    parents = cat[cat["is_parent"]]
    kids = cat[~cat["is_parent"]]
    assert len(parents) == 3 and not np.any(parents["failed"])
    # both pairs were deblended: one child near every blended source
    for y, x, _ in sources[:4]:
        d = np.hypot(kids["peak_y"] - y, kids["peak_x"] - x)
        assert d.min() <= 1.5
    # --max-plots 1 draws the brightest parent (the bright pair), with single-band panels
    bright = parents[np.argmax(np.asarray(parents["flux_footprint"]).ravel())]
    drawn = sorted(p.name for p in out.glob("parent*_source*.png"))
    assert drawn == [f"parent{int(bright['id'])}_source{k}.png" for k in range(2)]
    assert (out / "field.png").read_bytes()[:8] == PNG
    # show on a single-band run explains instead of listing no parents
    status, _, err = run(
        [
            "show",
            "--models",
            str(out / "models.fits"),
            "--parent",
            str(int(bright["id"])),
            "--images",
            str(tmp_path / "single.fits"),
        ],
        capsys,
    )
    assert status == 1 and "single-band run" in err and "stored parents: []" not in err


def test_unsubtracted_sky_warns(tmp_path, capsys):
    _, fwhm = write_single_band(tmp_path, sky=500.0)
    status, _, err = run(
        [
            "deblend",
            "--images",
            str(tmp_path / "single.fits"),
            "--psf-fwhm",
            f"{fwhm:.3f}",
            "--no-plots",
            "--executor",
            "serial",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert "looks not sky-subtracted" in err and "--background auto" in err


def test_nothing_detected_exits_non_zero(tmp_path, capsys):
    fits.PrimaryHDU(np.random.default_rng(0).normal(size=(40, 40))).writeto(tmp_path / "n.fits")
    status, _, err = run(
        [
            "deblend",
            "--images",
            str(tmp_path / "n.fits"),
            "--psf-fwhm",
            "3",
            "--nsigma",
            "50",
            "--no-plots",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert status == 3 and "nothing was detected" in err
    assert "INFO: 0 parents, 0 children" in err


def test_narrow_psf_chooses_a_narrower_model_psf(tmp_path, capsys):
    """An undersampled PSF (FWHM 1.1 px) is narrower than the default model PSF (0.8 px)."""
    from cdeblend import Observation
    from cdeblend.cli import choose_model_psf_sigma
    from cdeblend.fits_io import gaussian_psfs

    psfs = gaussian_psfs([1.1, 1.6, 2.5], 3)
    sigma = choose_model_psf_sigma(psfs)
    assert 0.05 <= sigma < 0.8
    Observation(np.zeros((3, 20, 20)), np.ones((3, 20, 20)), psfs, model_psf_sigma=sigma)
    with pytest.raises(ValueError, match="smaller model_psf_sigma"):
        Observation(np.zeros((3, 20, 20)), np.ones((3, 20, 20)), psfs, model_psf_sigma=0.8)
    assert choose_model_psf_sigma(gaussian_psfs([3.0], 1)) == 0.8  # wide PSFs keep the default
    # end to end: three bands with a 1.1 px PSF in the first, no variance
    images = write_scene(tmp_path)
    fits.PrimaryHDU(images.astype(np.float32)).writeto(tmp_path / "cube2.fits")
    status, _, err = run(
        [
            "deblend",
            "--images",
            str(tmp_path / "cube2.fits"),
            "--psf-fwhm",
            "1.1",
            "3.5",
            "3.3",
            "--peaks",
            str(tmp_path / "peaks.csv"),
            "--no-plots",
            "--executor",
            "serial",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert status == 0, err
    assert f"model PSF sigma {sigma:.2f} px" in err


def test_peak_files_with_common_column_names(tmp_path, capsys):
    from cdeblend.fits_io import read_peak_table

    sex, used = read_peak_table(DATA / "sextractor_ascii_head.cat")
    assert "X_IMAGE, Y_IMAGE" in used and "converted to 0-based" in used
    # the first row's X_IMAGE, Y_IMAGE = 165.1449, 24.0084 (1-based): (y, x) 0-based
    np.testing.assert_allclose(sex[0], [23.0084, 164.1449])
    assert len(sex) == 4
    (tmp_path / "phot.csv").write_text("id,x_peak,y_peak,peak_value\n1,16,15,3.0\n2,22,19,2\n")
    pk, used = read_peak_table(tmp_path / "phot.csv")
    np.testing.assert_array_equal(pk, [[15, 16], [19, 22]])
    assert used.startswith("x_peak, y_peak (photutils")
    cols = [
        fits.Column("xcentroid", "D", array=[16.2]),
        fits.Column("ycentroid", "D", array=[15.4]),
    ]
    fits.BinTableHDU.from_columns(cols).writeto(tmp_path / "c.fits")
    np.testing.assert_allclose(read_peak_table(tmp_path / "c.fits")[0], [[15.4, 16.2]])
    (tmp_path / "bad.csv").write_text("ra,dec\n1,2\n")
    with pytest.raises(ValueError, match="x_peak/y_peak"):
        read_peak_table(tmp_path / "bad.csv")
    # the CLI says which columns it used
    write_scene(tmp_path)
    (tmp_path / "sex.cat").write_text(
        "#   1 NUMBER   Running object number\n#   2 X_IMAGE  Object position along x [pixel]\n"
        "#   3 Y_IMAGE  Object position along y [pixel]\n"
        "1 17.0 16.0\n2 23.0 20.0\n3 49.0 35.0\n"
    )
    status, _, err = run(
        [
            "deblend",
            "--images",
            str(tmp_path / "cube.fits"),
            "--invvar",
            str(tmp_path / "invvar.fits"),
            "--psfs",
            *(str(tmp_path / f"psf_{b}.fits") for b in "gri"),
            "--peaks",
            str(tmp_path / "sex.cat"),
            "--no-plots",
            "--executor",
            "serial",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert status == 0, err
    assert "columns X_IMAGE, Y_IMAGE (SExtractor, 1-based; converted to 0-based)" in err
    kids = read_catalog(tmp_path / "o" / "catalog.fits")
    kids = kids[~kids["is_parent"]]
    # the same pixels as the 0-based peaks.csv of write_scene: (15, 16) and (19, 22)
    assert sorted(zip(kids["peak_y"].tolist(), kids["peak_x"].tolist(), strict=True)) == [
        (15, 16),
        (19, 22),
    ]


def test_psf_problems_are_reported():
    from cdeblend.fits_io import gaussian_psfs, psf_problems

    good = gaussian_psfs([3.0], 1)[0]
    assert psf_problems(good) == []
    holed = good.copy()
    c = holed.shape[0] // 2
    holed[c, c + 1] = 0.0
    holed[c + 1, c] = np.nan
    assert any("2 hole(s)" in p for p in psf_problems(holed))
    lobes = good - 0.05 * np.roll(good, 3, axis=1)
    assert any("negative lobes" in p for p in psf_problems(lobes))
    assert any("not normalised" in p for p in psf_problems(good * 1.2))
    # zeros outside the core (a PSF cut to a circle) are not holes
    yy, xx = np.mgrid[: good.shape[0], : good.shape[1]] - c
    cut = np.where(yy**2 + xx**2 <= c * c, good, 0.0)
    assert not any("hole" in p for p in psf_problems(cut / cut.sum()))


def test_field_picture_keeps_the_aspect(tmp_path):
    import matplotlib.pyplot as plt

    from cdeblend.display import plot_field

    cat = {
        "is_parent": np.array([True, False]),
        "id": np.array([1, 2]),
        "box_y0": np.array([2, -1]),
        "box_x0": np.array([3, -1]),
        "box_height": np.array([10, -1]),
        "box_width": np.array([20, -1]),
        "skipped": np.array([False, False]),
        "failed": np.array([False, False]),
        "n_children": np.array([1, 0]),
        "peak_y": np.array([5, 5]),
        "peak_x": np.array([8, 8]),
    }
    wide = np.random.default_rng(2).normal(size=(1, 100, 700))
    fig = plot_field(wide, np.zeros_like(wide), cat, path=tmp_path / "f.png")
    w, h = fig.get_size_inches()
    assert w > 2 * h  # a 700 x 100 field gives a wide figure (panels stacked)
    ax_img, ax_res = fig.axes[:2]
    assert ax_img.get_xlim() == (-0.5, 699.5) and ax_img.get_ylim() == (-0.5, 99.5)
    assert any(t.get_text() == "1" for t in ax_img.texts)
    # the residual keeps its sign: a negative residual maps below the colour of 0
    norm = ax_res.images[0].norm
    assert norm(-1.0) < norm(0.0) < norm(1.0)
    plt.close(fig)


def test_detection_options_reach_detect(tmp_path, capsys, monkeypatch):
    """Given options are passed to cdeblend.detect under their keywords; options that the
    build's detect does not take are reported, not silently dropped."""
    import cdeblend.detection

    seen = {}

    def fake_detect(images, variance, psf=None, nsigma=5.0, min_area=3, filter_type="matched"):
        seen.update(nsigma=nsigma, min_area=min_area, psf=psf, filter_type=filter_type)
        return []

    monkeypatch.setattr(cdeblend.detection, "detect", fake_detect)
    write_single_band(tmp_path)
    status, _, err = run(
        [
            "deblend",
            "--images",
            str(tmp_path / "single.fits"),
            "--psf-fwhm",
            "4",
            "--nsigma",
            "2.5",
            "--min-area",
            "7",
            "--min-contrast",
            "0.2",
            "--no-plots",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert seen["nsigma"] == 2.5 and seen["min_area"] == 7 and seen["psf"].shape[0] == 1
    assert "--min-contrast is not supported" in err
    assert status == 3  # the fake finds nothing
    status, _, err = run(
        [
            "deblend",
            "--images",
            str(tmp_path / "single.fits"),
            "--psf-fwhm",
            "4",
            "--filter",
            "none",
            "--no-plots",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert seen["psf"] is None and seen["nsigma"] == 5.0  # unset options keep the defaults


def test_every_detection_option_is_a_keyword_of_detect():
    """This build's detect takes every option the command offers (none is ignored)."""
    import inspect

    from cdeblend import detect
    from cdeblend.cli import DETECTION_OPTIONS, build_parser

    accepted = inspect.signature(detect).parameters
    assert all(k in accepted for k in DETECTION_OPTIONS.values())
    assert {"kernel", "filter_type"} <= set(accepted)
    helptext = build_parser()._subparsers._group_actions[0].choices["deblend"].format_help()
    for option in DETECTION_OPTIONS:
        assert "--" + option.replace("_", "-") in helptext


def test_read_conv_kernel_reads_sextractor_files(tmp_path):
    from cdeblend.fits_io import read_conv_kernel

    kernel = read_conv_kernel(DATA / "sextractor_default.conv")  # SExtractor's default.conv
    np.testing.assert_array_equal(kernel, [[1, 2, 1], [2, 4, 2], [1, 2, 1]])
    (tmp_path / "even.conv").write_text("CONV NORM\n1 1\n1 1\n")
    with pytest.raises(ValueError, match="filter_kernel.*even sides"):
        read_conv_kernel(tmp_path / "even.conv")
    (tmp_path / "ragged.conv").write_text("CONV NORM\n# c\n1 2 1\n2 4\n1 2 1\n")
    with pytest.raises(ValueError, match="filter_kernel.*different lengths"):
        read_conv_kernel(tmp_path / "ragged.conv")
    (tmp_path / "words.conv").write_text("CONV NORM\n1 2 one\n")
    with pytest.raises(ValueError, match="filter_kernel: line 2"):
        read_conv_kernel(tmp_path / "words.conv")


def test_sextractor_settings_from_the_command_line(tmp_path, capsys):
    """--filter conv --filter-kernel FILE --grow 0 gives the parents of cdeblend.detect with
    SExtractor's filter (kernel=conv, filter_type="conv") on the same pixels; a zero-rms row
    reaches the deblender as no-data."""
    import cdeblend

    sources, fwhm = write_single_band(tmp_path)
    image = fits.getdata(tmp_path / "single.fits").astype(np.float64)
    rms = np.full(image.shape, 2.0)
    rms[41] = 0.0  # "<= 0 means no data", through the bright pair
    fits.PrimaryHDU(rms.astype(np.float32)).writeto(tmp_path / "rms.fits")
    kernel = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=float)
    variance = np.where(rms > 0, rms**2, 0.0)
    expected = cdeblend.detect(
        image, variance, nsigma=1.5, min_area=5, grow=0, kernel=kernel, filter_type="conv"
    )
    status, _, err = run(
        [
            "deblend",
            "--images",
            str(tmp_path / "single.fits"),
            "--rms",
            str(tmp_path / "rms.fits"),
            "--psf-fwhm",
            f"{fwhm:.3f}",
            "--nsigma",
            "1.5",
            "--min-area",
            "5",
            "--filter",
            "conv",
            "--filter-kernel",
            str(DATA / "sextractor_default.conv"),
            "--grow",
            "0",
            "--executor",
            "serial",
            "--no-plots",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert status == 0, err
    assert "filter_type=conv" in err and "3 x 3 kernel" in err
    cat = read_catalog(tmp_path / "o" / "catalog.fits")
    par = cat[cat["is_parent"]]
    assert len(par) == len(expected)
    assert sorted(par["n_peaks"]) == sorted(len(p.peaks) for p in expected)
    assert not np.any(par["failed"])
    # the zero-rms row crosses the bright pair's footprint: masked there, not an error
    assert np.any(par["masked_fraction"] > 0)
    status, _, err = run(
        [
            "deblend",
            "--images",
            str(tmp_path / "single.fits"),
            "--psf-fwhm",
            "3",
            "--filter",
            "none",
            "--filter-kernel",
            str(DATA / "sextractor_default.conv"),
            "--out",
            str(tmp_path / "p"),
        ],
        capsys,
    )
    assert status == 1 and "--filter-kernel needs a filter" in err


def test_nan_rows_with_only_an_image_and_a_psf_fwhm(tmp_path, capsys):
    """A user's single-band image with NaN rows, an unsubtracted sky, no noise map: the
    rows are no-data (masked in the parents they cross), nothing fails, the pictures are
    drawn."""
    sources, fwhm = write_single_band(tmp_path, sky=300.0)
    image = fits.getdata(tmp_path / "single.fits").astype(np.float64)
    image[39:42] = np.nan  # through the bright pair at y = 40-43
    fits.PrimaryHDU(image).writeto(tmp_path / "nan.fits")
    status, _, err = run(
        [
            "deblend",
            "--images",
            str(tmp_path / "nan.fits"),
            "--psf-fwhm",
            f"{fwhm:.3f}",
            "--background",
            "auto",
            "--executor",
            "serial",
            "--max-plots",
            "1",
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert status == 0, err
    cat = read_catalog(tmp_path / "o" / "catalog.fits")
    par = cat[cat["is_parent"]]
    assert not np.any(par["failed"]) and np.any(par["n_children"] > 0)
    assert np.any(par["masked_fraction"] > 0)
    assert np.all(np.isfinite(np.asarray(cat["flux_conserved"], dtype=float)))
    assert (tmp_path / "o" / "field.png").read_bytes().startswith(PNG)


def test_panels_with_origin_are_in_image_pixels():
    import matplotlib.pyplot as plt

    from cdeblend.display import plot_single_band_child

    img = np.zeros((12, 20))
    fig = plot_single_band_child(img, img, img, peak=(3, 4), label="17", origin=(50, 100))
    for ax in fig.axes:
        assert ax.get_xlim() == (99.5, 119.5) and ax.get_ylim() == (49.5, 61.5)
        (text,) = ax.texts
        assert text.get_text() == "17" and text.get_position() == (104, 53)
    plt.close(fig)


def test_single_band_pictures_model_is_the_sum_of_the_templates():
    """The field's model in the single-band pictures is the sum of the children's final
    templates, which already carry their weights (weighted twice, bright stars showed deep
    negative residuals in the EMMI picture)."""
    from cdeblend import Parent, SingleBandConfig, SingleBandDeblender
    from cdeblend.box import place
    from cdeblend.cli.pictures import _single_band_models

    rng = np.random.default_rng(5)
    H, W = 40, 44
    y, x = np.mgrid[:H, :W]
    image = 300 * np.exp(-((y - 18) ** 2 + (x - 15) ** 2) / 8.0)
    image += 120 * np.exp(-((y - 22) ** 2 + (x - 25) ** 2) / 6.0)
    image += rng.normal(0, 1, (H, W))
    variance = np.ones((H, W))
    psf = np.exp(-((np.mgrid[:11, :11] - 5) ** 2).sum(axis=0) / 5.0)
    psf /= psf.sum()
    peaks = np.array([(18, 15), (22, 25)])
    footprint = image > 3
    parent = Parent(id=1, box=(0, 0, H, W), peaks=peaks, footprint=footprint)
    catalog = {
        "is_parent": np.array([True, False, False]),
        "parent_id": np.array([0, 1, 1]),
        "peak_id": np.array([-1, 0, 1]),
        "id": np.array([1, 2, 3]),
    }
    total, _ = _single_band_models(image, variance, psf, None, catalog, [parent], set(), False)
    res = SingleBandDeblender(SingleBandConfig()).deblend(
        image, variance, psf, peaks, footprint=footprint
    )
    assert any(c.weight != 1.0 for c in res.children)  # weighting is on and matters here
    want = sum(place(c.template, c.template_box, (H, W)) for c in res.children)
    np.testing.assert_array_equal(total, want)
