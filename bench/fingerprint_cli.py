"""Fingerprint of detection and of the ``cdeblend`` command, beside bench/fingerprint.py.

bench/fingerprint.py covers the deblenders and the catalog driver with given peaks; this
script covers what it does not: :func:`cdeblend.detection_image` (every filter, float32 and
float64 and mixed), :func:`cdeblend.detect` (several settings, given peaks with orphans),
the catalog's :func:`parents_from_peaks`, the initializer's chi^2 coadd,
:func:`cdeblend.deblend_image`, and the command's runs (``demo``, ``deblend`` with detection
and with a peak list, ``show``): their exit status, messages (timings and progress bars
left out), catalog columns, model files (checksum cards blanked) and the SHA-256 of every
table and picture. It reads the 512 x 512 field, ``sim_single`` and the real FITS images of
``../shared/data`` (``--data DIR``) and needs astropy and matplotlib.

    python bench/fingerprint_cli.py --out before.npz
    ... change the code ...
    python bench/fingerprint_cli.py --out after.npz --compare before.npz
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import sys
import tempfile
from pathlib import Path

import numpy as np

# the same comparison as bench/fingerprint.py (this folder is on sys.path when run as a script)
from fingerprint import compare, without_checksums

import cdeblend as cdb
from cdeblend.catalog import parents_from_peaks

CONV = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], float)


def _parents(out: dict, prefix: str, parents) -> None:
    out[f"{prefix}/n"] = np.array([len(parents)])
    for k, p in enumerate(parents):
        out[f"{prefix}/{k}/id"] = np.array([p.id])
        out[f"{prefix}/{k}/box"] = np.asarray(p.box)
        out[f"{prefix}/{k}/footprint"] = np.asarray(p.footprint)
        out[f"{prefix}/{k}/peaks"] = np.asarray(p.peaks)


def _images(out: dict, name: str, images, variance, psf) -> None:
    """Every detection image of one scene, and detect's parents with several settings."""
    for dtype in (np.float64, np.float32):
        a, v, t = images.astype(dtype), variance.astype(dtype), np.dtype(dtype).name
        out[f"image/{name}/{t}/none"] = cdb.detection_image(a, v)
        out[f"image/{name}/{t}/psf"] = cdb.detection_image(a, v, psf)
        out[f"image/{name}/{t}/fwhm"] = cdb.detection_image(a, v, psf_fwhm=3.0)
        out[f"image/{name}/{t}/fwhm_conv"] = cdb.detection_image(
            a, v, psf_fwhm=3.0, filter_type="conv"
        )
        out[f"image/{name}/{t}/kernel_conv"] = cdb.detection_image(
            a, v, kernel=CONV, filter_type="conv"
        )
    out[f"image/{name}/mixed"] = cdb.detection_image(images.astype(np.float32), variance)
    _parents(out, f"detect/{name}/default", cdb.detect(images, variance, psf))
    _parents(out, f"detect/{name}/no_filter", cdb.detect(images, variance))
    _parents(
        out, f"detect/{name}/fwhm", cdb.detect(images, variance, psf_fwhm=3.0, peak_filter=None)
    )
    sextractor = dict(nsigma=1.5, min_area=5, kernel=CONV, filter_type="conv", grow=0)
    _parents(out, f"detect/{name}/sextractor", cdb.detect(images, variance, **sextractor))
    _parents(out, f"detect/{name}/noise", cdb.detect(images, variance, psf, measure_noise=True))
    _parents(
        out,
        f"detect/{name}/footprint_contrast",
        cdb.detect(images, variance, psf, contrast_reference="footprint"),
    )


def library(data: Path) -> dict[str, np.ndarray]:
    """Detection, grouping and whole-image deblending through the public API."""
    from cdeblend import initialization

    out: dict[str, np.ndarray] = {}
    blend = cdb.load_hsc_cosmos()
    obs = cdb.Observation(blend.images, blend.variance, blend.psfs, bands=blend.bands)
    f = np.load(data / "field_lsst_512.npz")
    peaks = np.stack([f["catalog"]["y"], f["catalog"]["x"]], 1).astype(float)
    _images(out, "hsc", blend.images, blend.variance, blend.psfs)
    _images(out, "field", f["images"], f["variance"], f["psfs"])
    orphans = np.vstack([blend.peaks, [[1, 1], [2, 2], [50, 3]]])
    _parents(out, "detect/hsc/given", cdb.detect(obs, peaks=orphans))
    _parents(out, "detect/field/given", cdb.detect(f["images"], f["variance"], peaks=peaks))
    _parents(out, "group/field", parents_from_peaks(f["images"], f["variance"], peaks))
    field32 = f["images"].astype(np.float32)
    _parents(out, "group/field32", parents_from_peaks(field32, f["variance"], peaks))
    _parents(out, "group/hsc", parents_from_peaks(blend.images, blend.variance, blend.peaks))
    chi2 = getattr(initialization, "chi2_coadd", None) or initialization.detection_image
    out["initialization/chi2_coadd"] = chi2(obs)
    s = np.load(data / "sim_single" / "blend_0000.npz")
    for k, r in enumerate(cdb.deblend_image(s["images"][0], s["variance"][0], s["psfs"][0])):
        out[f"deblend_image/{k}"] = r.conserved_images(s["images"][0].shape)
    return out


def _steady(text: str) -> str:
    """The command's messages without what changes from run to run (times, progress bars)."""
    keep = []
    for line in text.splitlines():
        if "%|" in line or "ms" in line or "written to" in line or " s" in line[-12:]:
            continue
        keep.append(line)
    return "\n".join(keep)


def _run(out: dict, name: str, argv: list[str], folder: Path) -> None:
    from astropy.table import Table

    from cdeblend.cli import main

    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        status = main(argv)
    out[f"cli/{name}/status"] = np.array([status])
    out[f"cli/{name}/messages"] = np.array([_steady(so.getvalue() + se.getvalue())])
    for path in sorted(folder.iterdir()):
        if path.name == "catalog.fits":
            table = Table.read(path)
            for col in table.colnames:
                if col != "deblend_runtime":  # wall-clock time
                    out[f"cli/{name}/catalog/{col}"] = np.asarray(table[col])
        elif path.suffix == ".fits":
            out[f"cli/{name}/{path.name}"] = without_checksums(path)
        elif path.suffix in (".png", ".csv") and path.name != "multi_band_summary.csv":
            digest = hashlib.sha256(path.read_bytes()).hexdigest()  # the summary holds a time
            out[f"cli/{name}/{path.name}"] = np.array([digest])


def command(data: Path) -> dict[str, np.ndarray]:
    """The ``cdeblend`` command's runs on the bundled blend and the real FITS images."""
    out: dict[str, np.ndarray] = {}
    emmi, hsc = data / "real" / "fits" / "sep_emmi", data / "real" / "fits" / "hsc_scarlet"
    emmi_args = ["--images", str(emmi / "image.fits"), "--rms", str(emmi / "rms.fits")]
    emmi_args += ["--psf-fwhm", "3.5", "--background", "auto", "--executor", "serial"]
    hsc_args = ["--images", str(hsc / "Cut_HSC.fits")]
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        _run(out, "demo", ["demo", "--out", str(t / "demo"), "--bands", "r"], t / "demo")
        sextractor = ["--nsigma", "1.5", "--min-area", "5", "--filter", "conv", "--grow", "0"]
        sextractor += ["--filter-kernel", str(emmi / "default.conv"), "--max-plots", "2"]
        _run(out, "emmi", ["deblend", *emmi_args, *sextractor, "--out", str(t / "e")], t / "e")
        psfs = ["--psfs", str(hsc / "PSF_HSC.fits"), "--max-plots", "2", "--executor", "serial"]
        _run(out, "hsc", ["deblend", *hsc_args, *psfs, "--out", str(t / "h")], t / "h")
        show = ["show", "--models", str(t / "h" / "models.fits"), "--parent", "1"]
        _run(out, "show", [*show, *hsc_args, "--out", str(t / "s")], t / "s")
        peaks = ["--peaks", str(emmi / "image.cat"), "--no-plots"]
        _run(out, "peaks", ["deblend", *emmi_args, *peaks, "--out", str(t / "p")], t / "p")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--data", type=Path, default=root.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--compare", type=Path)
    args = parser.parse_args(argv)
    result = library(args.data) | command(args.data)
    np.savez_compressed(args.out, **result)
    print(f"{len(result)} arrays written to {args.out}")
    return 0 if args.compare is None else int(compare(result, args.compare) > 0)


if __name__ == "__main__":
    sys.exit(main())
