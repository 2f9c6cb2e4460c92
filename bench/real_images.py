"""``cdeblend deblend`` on the real public images, as a user would run it.

Reads ``../shared/data/real/fits`` (relative to the repository root; ``--data`` to change
it; its README gives the provenance): three HSC COSMOS cutouts (5 bands, PSF files), an HST
cutout (1 band, PSF file) and an ESO EMMI image (1 band, not sky-subtracted, with
SExtractor's catalog and noise map). Every run gets only the images, a PSF (file or
``--psf-fwhm``) and, for the EMMI image, ``--background auto``; no variance (the command
estimates a per-band noise) except in the runs that pass EMMI's ``rms.fits``. The EMMI PSF
FWHM, 2.5 px, is twice the half-light radius of the stars in its SExtractor catalog
(``FLUX_RADIUS`` 1.2-1.4 px; a Gaussian's FWHM is twice its half-light radius).

EMMI runs: ``emmi`` (image and PSF only), ``emmi_rms`` (with SExtractor's rms map),
``emmi_cat`` (that catalog's ``X_IMAGE``/``Y_IMAGE`` as the peaks), ``emmi_sex`` (the
settings of that catalog from ``default.sex``: ``DETECT_THRESH 1.5``, ``DETECT_MINAREA 5``,
``FILTER Y`` with ``default.conv``, no footprint growth, its rms map: ``--nsigma 1.5
--min-area 5 --filter conv --filter-kernel default.conv --grow 0 --rms rms.fits``) and
``emmi_sex_g2`` (the same with the default footprint growth of 2 px). ``hst_noise`` is the
HST cutout with ``--measure-noise`` (its drizzled noise is correlated: the filtered noise is
larger than the pixel variance says). SExtractor's catalog
has 65 objects (no deblending, ``DEBLEND_MINCONT 1.0``); for the EMMI runs the column
``sex<3px`` counts how many of them have a deblended source's peak within 3 px.

Prints one row per run: exit status, parents, sources (children plus single-peak parents),
children, skipped (other than isolated), failed, not converged, whether the catalog has
RA/Dec, units on its position columns, its flux unit (BUNIT; ``-`` when the FITS has none),
``flux_conserved_err``, and the wall and CPU time of the command (including Python start-up,
imports); with ``--plots`` each image is run a second time with pictures and that wall time
is printed too. Times were measured on a shared machine: compare them with care.

    python bench/real_images.py [--data DIR] [--out DIR] [--plots] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: Objects in SExtractor's catalog of the EMMI image (image.cat).
SEXTRACTOR_OBJECTS = 65
#: Distance (pixels) within which a SExtractor object counts as found.
MATCH_RADIUS = 3.0


def sextractor_settings(emmi: Path) -> list[str]:
    """The command options of default.sex (without --grow): rms map, mesh background,
    1.5 sigma, 5 px, filtered with default.conv, and the stars' PSF."""
    return [
        "--rms",
        str(emmi / "rms.fits"),
        "--background",
        "auto",
        "--nsigma",
        "1.5",
        "--min-area",
        "5",
        "--filter",
        "conv",
        "--filter-kernel",
        str(emmi / "default.conv"),
        "--psf-fwhm",
        "2.5",
    ]


def default_data() -> Path:
    """``../shared/data/real/fits`` of the repository root (or of a folder above it, for a
    git worktree kept below the main checkout's parent)."""
    for base in ROOT.parents:
        candidate = base / "shared" / "data" / "real" / "fits"
        if candidate.is_dir():
            return candidate
    return ROOT.parent / "shared" / "data" / "real" / "fits"


def runs(data: Path) -> list[tuple[str, list[str]]]:
    """(name, command arguments) of every run."""
    hsc = data / "hsc_scarlet"
    emmi = data / "sep_emmi"
    spiral = "hsc_ra=150.24071_dec=2.06514.fits"
    return [
        ("hsc_cut", ["--images", str(hsc / "Cut_HSC.fits"), "--psfs", str(hsc / "PSF_HSC.fits")]),
        (
            "hsc_cut1",
            ["--images", str(hsc / "Cut_HSC1.fits"), "--psfs", str(hsc / "PSF_HSC.fits")],
        ),
        (
            "hsc_spiral",
            ["--images", str(hsc / spiral), "--psfs", str(hsc / f"psf_{spiral}")],
        ),
        ("hst", ["--images", str(hsc / "Cut_HST.fits"), "--psfs", str(hsc / "PSF_HST.fits")]),
        (
            "hst_noise",
            [
                "--images",
                str(hsc / "Cut_HST.fits"),
                "--psfs",
                str(hsc / "PSF_HST.fits"),
                "--measure-noise",
            ],
        ),
        (
            "emmi",
            ["--images", str(emmi / "image.fits"), "--psf-fwhm", "2.5", "--background", "auto"],
        ),
        (
            "emmi_rms",
            [
                "--images",
                str(emmi / "image.fits"),
                "--rms",
                str(emmi / "rms.fits"),
                "--psf-fwhm",
                "2.5",
                "--background",
                "auto",
            ],
        ),
        (
            "emmi_cat",
            [
                "--images",
                str(emmi / "image.fits"),
                "--psf-fwhm",
                "2.5",
                "--background",
                "auto",
                "--peaks",
                str(emmi / "image.cat"),
            ],
        ),
        (
            "emmi_sex",
            [
                "--images",
                str(emmi / "image.fits"),
                *sextractor_settings(emmi),
                "--grow",
                "0",
            ],
        ),
        ("emmi_sex_g2", ["--images", str(emmi / "image.fits"), *sextractor_settings(emmi)]),
    ]


def count(catalog_path: Path) -> dict[str, object]:
    """Parents, sources, children, skipped, failed, not converged and the science columns
    (RA/Dec, units, flux errors) of a catalog."""
    from cdeblend import read_catalog

    cat = read_catalog(catalog_path)
    parent = np.asarray(cat["is_parent"], dtype=bool)
    skipped = np.asarray(cat["skipped"], dtype=bool) & parent
    failed = np.asarray(cat["failed"], dtype=bool) & parent
    fitted = parent & ~skipped & ~failed
    kids = int((~parent).sum())
    single = parent & (np.asarray(cat["n_peaks"]) == 1) & (np.asarray(cat["n_children"]) == 0)
    source = ~parent | single
    names = cat.colnames
    pix_units = all(str(cat[c].unit) == "pix" for c in ("peak_x", "peak_y"))
    flux_unit = cat["flux_conserved"].unit
    return {
        "parents": int(parent.sum()),
        "sources": int(source.sum()),
        "children": kids,
        "skipped": int((skipped & ~np.asarray(cat["skipped_isolated"], dtype=bool)).sum()),
        "failed": int(failed.sum()),
        "not_conv": int((fitted & ~np.asarray(cat["converged"], dtype=bool)).sum()),
        "radec": "yes" if {"ra", "dec"} <= set(names) else "no",
        "units": "yes" if pix_units and all(cat[c].description for c in names) else "no",
        "flux_unit": str(flux_unit) if flux_unit is not None else "-",
        "flux_err": "yes" if "flux_conserved_err" in names else "no",
        "peaks_xy": np.column_stack(
            [np.asarray(cat["peak_x"])[source], np.asarray(cat["peak_y"])[source]]
        ),
    }


def sextractor_matches(peaks_xy: np.ndarray, catalog: Path) -> int:
    """How many objects of a SExtractor catalog (1-based ``X_IMAGE``, ``Y_IMAGE`` in its
    columns 2 and 3) have a peak of ``peaks_xy`` (0-based x, y) within MATCH_RADIUS."""
    sex = np.loadtxt(catalog, comments="#", usecols=(1, 2)) - 1.0
    if len(peaks_xy) == 0:
        return 0
    d2 = ((sex[:, None, :] - peaks_xy[None, :, :]) ** 2).sum(axis=2)
    return int((d2.min(axis=1) <= MATCH_RADIUS**2).sum())


def run_command(args: list[str], folder: Path, plots: bool) -> tuple[int, float, float, str]:
    """Run the command in a fresh Python: exit status, wall and CPU time (s), stderr."""
    cmd = [sys.executable, "-m", "cdeblend.cli", "deblend", *args, "--out", str(folder)]
    cmd += ["--quiet"] if plots else ["--quiet", "--no-plots"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return res.returncode, wall, cpu, res.stderr


def run_one(name: str, args: list[str], out: Path, plots: bool, data: Path) -> dict[str, object]:
    """One image without pictures (and, with ``plots``, again with them): counts, times."""
    folder = out / name
    status, wall, cpu, stderr = run_command(args, folder, plots=False)
    row: dict[str, object] = {"image": name, "exit": status, "wall_s": wall, "cpu_s": cpu}
    cat = folder / "catalog.fits"
    if cat.exists():
        row.update(count(cat))
        if name.startswith("emmi"):
            found = sextractor_matches(row["peaks_xy"], data / "sep_emmi" / "image.cat")
            row["sex<3px"] = f"{found}/{SEXTRACTOR_OBJECTS}"
    if plots:
        status_p, wall_p, _, stderr_p = run_command(args, folder, plots=True)
        row["plots_wall_s"] = wall_p
        row["exit"] = f"{status}/{status_p}"
        stderr += stderr_p
    warnings = [
        ln for ln in stderr.splitlines() if "WARNING" in ln or "ERROR" in ln or "error" in ln
    ]
    row["messages"] = warnings
    return row


def print_table(rows: list[dict[str, object]], plots: bool) -> None:
    cols = [
        "image",
        "exit",
        "parents",
        "sources",
        "children",
        "skipped",
        "failed",
        "not_conv",
        "radec",
        "units",
        "flux_unit",
        "flux_err",
        "sex<3px",
        "wall_s",
        "cpu_s",
    ] + (["plots_wall_s"] if plots else [])
    cells = [cols] + [
        [
            f"{r.get(c, '-'):.1f}" if isinstance(r.get(c), float) else str(r.get(c, "-"))
            for c in cols
        ]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    for k, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data",
        default=str(default_data()),
        help="folder of the real FITS images (default: ../shared/data/real/fits)",
    )
    parser.add_argument("--out", default="real-images-out", help="output folder of the runs")
    plots = parser.add_mutually_exclusive_group()
    plots.add_argument(
        "--plots",
        action="store_true",
        help="run every image a second time with pictures (field.png, panels) and time it",
    )
    plots.add_argument("--no-plots", action="store_true", help="no pictures (the default)")
    parser.add_argument("--only", nargs="+", help="run only these names")
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    rows = []
    for name, cmd in runs(data):
        if args.only and name not in args.only:
            continue
        rows.append(run_one(name, cmd, out, args.plots, data))
    print_table(rows, args.plots)
    print(
        "\nSExtractor's catalog of the EMMI image (1.5 sigma, 5 px, filtered, no deblending):"
        f" {SEXTRACTOR_OBJECTS} objects; sex<3px: how many have a source peak within"
        f" {MATCH_RADIUS:g} px"
    )
    for r in rows:
        for msg in r["messages"]:
            print(f"{r['image']}: {msg}")
    print(f"\noutputs (catalog.fits, models.fits, field.png, panels) in {out.resolve()}")


if __name__ == "__main__":
    main()
