"""Missing data end to end: ``cdeblend deblend`` on real images with NaN rows or zero
inverse variance, single and multi band.

Reads the public images in ``../shared/data/real/fits/`` (see its README) by default:

- ``sep_emmi``: ESO EMMI, one band, with its rms map (variance = rms^2, or inverse variance
  1 / rms^2), not sky-subtracted: the median of the image is subtracted here, and the PSF is
  a Gaussian of FWHM 3 px (the SExtractor configuration's nominal 1.2" at 1"/px would be
  too narrow to sample: its moments FWHM is undefined and every blend fails);
- ``hsc_scarlet/Cut_HSC.fits``: HSC COSMOS, 5 bands, with its PSFs; no variance plane, so a
  per-band sigma-clipped background variance is written here.

Each runs three ways: as published (``clean``), with 5 % of the rows set to NaN in every band
(``nan rows``), and with 5 % of the rows given zero inverse variance (``zero invvar``). The
table has the exit status, parents, children, skipped and failed parents, the parents
with data missing from their footprint, and the time (one run each, wall clock, on a loaded
machine: the times are indicative only).

    python bench/no_data.py [--data DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import numpy as np

from cdeblend import read_catalog
from cdeblend.cli import main

ROOT = Path(__file__).resolve().parents[1]


def gaussian_psf(fwhm: float, half: int = 10) -> np.ndarray:
    """A unit-sum circular Gaussian PSF of FWHM ``fwhm`` pixels."""
    sigma = fwhm / 2.3548
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    psf = np.exp(-0.5 * (x * x + y * y) / sigma**2)
    return psf / psf.sum()


def clipped_variance(plane: np.ndarray) -> float:
    """Variance of a band's background: 3-sigma clipped, 5 iterations."""
    values = plane[np.isfinite(plane)].ravel()
    for _ in range(5):
        med, std = np.median(values), values.std()
        values = values[np.abs(values - med) < 3 * std]
    return float(values.var())


def load_sets(data: Path) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, object]]:
    """(name, images (B, H, W), variance, psfs (B, h, w), header) of each image set."""
    from astropy.io import fits

    emmi = data / "sep_emmi"
    with fits.open(emmi / "image.fits") as hdul:
        image = hdul[0].data.astype(np.float64)
    rms = fits.getdata(emmi / "rms.fits").astype(np.float64)
    image -= np.median(image)
    sets = [("emmi (1 band)", image[None], (rms**2)[None], gaussian_psf(3.0)[None], None)]
    hsc = data / "hsc_scarlet"
    with fits.open(hsc / "Cut_HSC.fits") as hdul:
        images = hdul[0].data.astype(np.float64)
        header = hdul[0].header.copy()
    psfs = fits.getdata(hsc / "PSF_HSC.fits").astype(np.float64)
    psfs /= psfs.sum(axis=(1, 2), keepdims=True)
    variance = np.stack([np.full(b.shape, clipped_variance(b)) for b in images])
    sets.append(("hsc cut (5 bands)", images, variance, psfs, header))
    return sets


def damaged(images, variance, how: str, rng) -> tuple[np.ndarray, np.ndarray]:
    """The images and inverse variance with 5 % of the rows without data."""
    images, invvar = images.copy(), 1.0 / variance
    rows = rng.choice(images.shape[1], size=max(1, images.shape[1] // 20), replace=False)
    if how == "nan rows":
        images[:, rows] = np.nan
    elif how == "zero invvar":
        invvar[:, rows] = 0.0
    return images, invvar


def run_cli(folder: Path, images, invvar, psfs, header) -> tuple[int, float, Path]:
    from astropy.io import fits

    fits.PrimaryHDU(images.astype(np.float32), header=header).writeto(folder / "img.fits")
    fits.PrimaryHDU(invvar.astype(np.float32)).writeto(folder / "ivar.fits")
    fits.PrimaryHDU(psfs).writeto(folder / "psf.fits")
    out = folder / "out"
    args = [
        "deblend",
        "--images",
        str(folder / "img.fits"),
        "--invvar",
        str(folder / "ivar.fits"),
        "--psfs",
        str(folder / "psf.fits"),
        "--out",
        str(out),
        "--no-plots",
        "--quiet",
        "--executor",
        "serial",
    ]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        status = main(args)
    return status, time.perf_counter() - start, out / "catalog.fits"


def main_bench() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT.parent / "shared" / "data" / "real" / "fits",
        help="folder of the real FITS images (default: %(default)s)",
    )
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    header = [
        "image",
        "variant",
        "exit",
        "parents",
        "children",
        "skipped",
        "failed",
        "with no data",
        "time s",
    ]
    rows = []
    for name, images, variance, psfs, hdr in load_sets(args.data):
        for how in ("clean", "nan rows", "zero invvar"):
            img, invvar = damaged(images, variance, how, rng)
            with tempfile.TemporaryDirectory() as tmp:
                status, elapsed, path = run_cli(Path(tmp), img, invvar, psfs, hdr)
                if status != 0:
                    rows.append([name, how, status] + ["-"] * 6)
                    continue
                cat = read_catalog(path)
            par = cat[cat["is_parent"]]
            rows.append(
                [
                    name,
                    how,
                    status,
                    len(par),
                    int((~cat["is_parent"]).sum()),
                    int(par["skipped"].sum()),
                    int(par["failed"].sum()),
                    int((par["masked_fraction"] > 0).sum()),
                    f"{elapsed:.2f}",
                ]
            )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for k, row in enumerate([header, *rows]):
        print("  ".join(str(v).rjust(w) for v, w in zip(row, widths, strict=True)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":
    main_bench()
