"""The ``cdeblend`` command end to end: FITS in, catalog + models + pictures out."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest

fits = pytest.importorskip("astropy.io.fits")
pytest.importorskip("matplotlib")

from cdeblend import load_models, read_catalog  # noqa: E402
from cdeblend.cli import main  # noqa: E402
from cdeblend.observation import integrated_gaussian_psf  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


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
        hdus.append(fits.ImageHDU((1 / variance[b]).astype(np.float32),
                                  header=fits.Header([("BAND", band)])))
    fits.HDUList(hdus).writeto(folder / "invvar.fits")
    for b, band in enumerate("gri"):
        fits.PrimaryHDU(psfs[b] * 3.0).writeto(folder / f"psf_{band}.fits")  # not normalised
    (folder / "peaks.csv").write_text("x,y\n" + "".join(f"{x},{y}\n" for y, x, _ in sources))
    return images


def test_deblend_and_show(tmp_path, capsys):
    images = write_scene(tmp_path)
    out = tmp_path / "out"
    args = ["deblend", "--images", str(tmp_path / "cube.fits"),
            "--invvar", str(tmp_path / "invvar.fits"),
            "--psfs", *(str(tmp_path / f"psf_{b}.fits") for b in "gri"),
            "--bands", "g", "r", "i", "--peaks", str(tmp_path / "peaks.csv"),
            "--out", str(out), "--quiet", "--executor", "serial"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "normalising the PSF images" in text
    cat = read_catalog(out / "catalog.fits")
    parents = cat[cat["is_parent"]]
    children = cat[~cat["is_parent"]]
    assert len(children) == 2  # the pair; the single source is an isolated parent
    assert sorted(parents["n_peaks"]) == [1, 2] and not np.any(parents["failed"])
    pair = parents[parents["n_peaks"] == 2][0]
    # the children and the unassigned flux add up to the parent's flux in every band
    np.testing.assert_allclose(children["flux_conserved"].sum(0) + pair["flux_unassigned"],
                               pair["flux_footprint"], rtol=1e-5)
    models = load_models(out / "models.fits")
    assert models.bands == ("g", "r", "i")
    assert int(pair["id"]) in models.blends
    for name in ("field.png", f"parent{int(pair['id'])}_source0.png"):
        assert (out / name).read_bytes()[:8] == PNG

    show = tmp_path / "show"
    assert main(["show", "--models", str(out / "models.fits"), "--parent", str(int(pair["id"])),
                 "--images", str(tmp_path / "cube.fits"), "--out", str(show)]) == 0
    table = capsys.readouterr().out
    assert "conserved_g" in table
    pngs = sorted(p.name for p in show.glob("*.png"))
    assert len(pngs) == 2 and all((show / p).read_bytes()[:8] == PNG for p in pngs)
    # the re-apportioned fluxes shown equal the catalog's (same models, same image)
    shown = [float(line.split()[3]) for line in table.splitlines()[2:4]]
    np.testing.assert_allclose(sorted(shown), sorted(children["flux_conserved"][:, 0]),
                               rtol=1e-4)
    assert images.shape == (3, 48, 64)


def test_errors_are_plain_words(tmp_path, capsys):
    assert main(["deblend", "--images", str(tmp_path / "nope.fits"), "--variance",
                 str(tmp_path / "nope.fits"), "--psfs", str(tmp_path / "p.fits")]) == 1
    err = capsys.readouterr().err
    assert "error" in err and "not found" in err and "Traceback" not in err
    write_scene(tmp_path)
    assert main(["show", "--models", str(tmp_path / "cube.fits"), "--parent", "1",
                 "--images", str(tmp_path / "cube.fits")]) == 1
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
    assert 1 <= int(summary["iterations"]) <= 300 and float(summary["loss"]) > 0


def test_help_and_console_script():
    res = subprocess.run([sys.executable, "-m", "cdeblend.cli", "--help"], capture_output=True,
                         text=True, check=True)
    for sub in ("demo", "deblend", "show"):
        assert sub in res.stdout
    with pytest.raises(SystemExit) as exc:
        main(["deblend", "--help"])
    assert exc.value.code == 0
