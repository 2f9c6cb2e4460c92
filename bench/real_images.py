"""``cdeblend deblend`` on the real public images, as a user would run it.

Reads ``../shared/data/real/fits`` (relative to the repository root; ``--data`` to change
it; its README gives the provenance): three HSC COSMOS cutouts (5 bands, PSF files), an HST
cutout (1 band, PSF file) and an ESO EMMI image (1 band, not sky-subtracted, with
SExtractor's catalog and noise map). Every run gets only the images, a PSF (file or
``--psf-fwhm``) and, for the EMMI image, ``--background auto``; no variance (the command
estimates a per-band noise) except in the run that passes EMMI's ``rms.fits``. The EMMI PSF
FWHM, 2.5 px, is twice the half-light radius of the stars in its SExtractor catalog
(``FLUX_RADIUS`` 1.2-1.4 px; a Gaussian's FWHM is twice its half-light radius). One run
uses the detection settings of that catalog (``DETECT_THRESH 1.5``, ``DETECT_MINAREA 5``,
filtered), whose 65 objects are printed for comparison; another takes that catalog's
``X_IMAGE``/``Y_IMAGE`` as the peaks.

Prints one row per run: exit status, parents, sources (children plus single-peak parents),
children, skipped, failed, not converged, the wall and CPU time of the command (including
Python start-up, imports and the pictures), and the output folder. Times were measured on
a shared machine: compare them with care.

    python bench/real_images.py [--data DIR] [--out DIR] [--no-plots] [--only NAME ...]
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
                "--psf-fwhm",
                "2.5",
                "--background",
                "auto",
                "--nsigma",
                "1.5",
                "--min-area",
                "5",
            ],
        ),
    ]


def count(catalog_path: Path) -> dict[str, int]:
    """Parents, sources, children, skipped, failed and not converged of a catalog."""
    from cdeblend import read_catalog

    cat = read_catalog(catalog_path)
    parent = np.asarray(cat["is_parent"], dtype=bool)
    skipped = np.asarray(cat["skipped"], dtype=bool) & parent
    failed = np.asarray(cat["failed"], dtype=bool) & parent
    fitted = parent & ~skipped & ~failed
    kids = int((~parent).sum())
    singles = int(
        (parent & (np.asarray(cat["n_peaks"]) == 1) & (np.asarray(cat["n_children"]) == 0)).sum()
    )
    return {
        "parents": int(parent.sum()),
        "sources": kids + singles,
        "children": kids,
        "skipped": int((skipped & ~np.asarray(cat["skipped_isolated"], dtype=bool)).sum()),
        "failed": int(failed.sum()),
        "not_conv": int((fitted & ~np.asarray(cat["converged"], dtype=bool)).sum()),
    }


def run_one(name: str, args: list[str], out: Path, plots: bool) -> dict[str, object]:
    """Run the command in a fresh Python; its exit status, wall and CPU time, counts."""
    folder = out / name
    cmd = [sys.executable, "-m", "cdeblend.cli", "deblend", *args, "--out", str(folder)]
    cmd += ["--quiet"] if plots else ["--quiet", "--no-plots"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    row: dict[str, object] = {"image": name, "exit": res.returncode, "wall_s": wall, "cpu_s": cpu}
    cat = folder / "catalog.fits"
    if cat.exists():
        row.update(count(cat))
    warnings = [
        ln for ln in res.stderr.splitlines() if "WARNING" in ln or "ERROR" in ln or "error" in ln
    ]
    row["messages"] = warnings
    return row


def print_table(rows: list[dict[str, object]]) -> None:
    cols = [
        "image",
        "exit",
        "parents",
        "sources",
        "children",
        "skipped",
        "failed",
        "not_conv",
        "wall_s",
        "cpu_s",
    ]
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
    parser.add_argument("--no-plots", action="store_true", help="write no pictures")
    parser.add_argument("--only", nargs="+", help="run only these names")
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    rows = []
    for name, cmd in runs(data):
        if args.only and name not in args.only:
            continue
        rows.append(run_one(name, cmd, out, not args.no_plots))
    print_table(rows)
    print(
        "\nSExtractor's catalog of the EMMI image (1.5 sigma, 5 px, filtered, no deblending):"
        " 65 objects"
    )
    for r in rows:
        for msg in r["messages"]:
            print(f"{r['image']}: {msg}")
    print(f"\noutputs (catalog.fits, models.fits, field.png, panels) in {out.resolve()}")


if __name__ == "__main__":
    main()
