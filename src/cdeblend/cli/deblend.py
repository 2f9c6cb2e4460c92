"""``cdeblend deblend``: deblend every parent of FITS images (one file per band, a
multi-extension file or a cube), writing the catalog, the model file and pictures.

:func:`run_deblend` is the command's entry point (``cdeblend survey`` runs it per patch)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from ..observation import MODEL_PSF_SIGMA
from .detect import SEXTRACTOR_RECIPE, add_detection_args, detect_parents, warn_one_big_parent
from .inputs import (
    add_background_args,
    add_image_args,
    add_psf_args,
    noise_variance,
    psfs_from_args,
    read_inputs,
    subtract_background,
)
from .pictures import draw_run
from .tables import have_matplotlib

logger = logging.getLogger("cdeblend.cli")

#: Exit status when nothing could be deblended because of the input (all parents skipped or
#: failed, or nothing detected).
EXIT_NOTHING_DEBLENDED = 3


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``cdeblend deblend`` subcommand."""
    deb = sub.add_parser(
        "deblend",
        help="deblend every parent of FITS images; write catalog, models and pictures",
        description="Detect parents (or group the given peaks into parents), deblend each on "
        "a pool of workers and write catalog.fits, models.fits and PNG pictures into --out. "
        "Images: one FITS file per band, a multi-extension file or a (bands, y, x) cube. "
        "Pixel positions are 0-based (x = column, y = row). SExtractor's detection settings "
        f"are {SEXTRACTOR_RECIPE} (its rms map with --rms, its BACK_SIZE with "
        "--background auto --background-mesh BACK_SIZE).",
    )
    add_image_args(deb, noise_required=False)
    add_psf_args(deb)
    deb.add_argument(
        "--model-psf-sigma",
        type=float,
        default=None,
        help="multi band: width (pixels) of the model PSF the sources are made "
        "at; default 0.8, or narrower than the sharpest band's PSF when that is "
        "narrower (logged)",
    )
    add_background_args(deb)
    add_detection_args(deb)
    _add_run_args(deb)
    deb.set_defaults(func=run_deblend)


def _add_run_args(deb: argparse.ArgumentParser) -> None:
    """Peaks, deblender, workers and output options."""
    deb.add_argument(
        "--peaks",
        help="peak list (x, y): FITS table, CSV or text with a header, or a "
        "SExtractor ASCII_HEAD catalog. Columns x/y, photutils x_peak/y_peak or "
        "xcentroid/ycentroid, sep xpeak/ypeak (0-based), SExtractor "
        "X_IMAGE/Y_IMAGE, XWIN_IMAGE/YWIN_IMAGE (1-based, converted); the "
        "columns used are logged",
    )
    deb.add_argument(
        "--deblender",
        choices=["auto", "multi", "single"],
        default="auto",
        help="auto: single band for one band, multi band otherwise",
    )
    deb.add_argument(
        "--executor",
        choices=["serial", "threads", "dask"],
        default="threads",
        help="how parents are spread over workers (default: %(default)s)",
    )
    deb.add_argument("--workers", type=int, default=None, help="number of workers")
    deb.add_argument(
        "--fit-isolated", action="store_true", help="also fit parents with a single peak"
    )
    deb.add_argument(
        "--max-plots",
        type=int,
        default=10,
        help="parents to draw panels for, brightest first (default: %(default)s)",
    )
    deb.add_argument("--out", default="cdeblend-out", help="output folder (default: %(default)s)")
    deb.add_argument("--no-plots", action="store_true", help="write no pictures")
    deb.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars and no INFO messages (warnings still show)",
    )


def run_deblend(args: argparse.Namespace) -> int:
    """Run ``cdeblend deblend`` with parsed ``args``; returns the exit status.

    The command's entry point, also called per patch by :func:`cdeblend.survey.run_patch`.
    """
    from ..catalog import CatalogConfig, deblend_catalog, write_catalog
    from ..fits_io import read_flux_unit, read_wcs
    from ..model_data import save_models

    images, variance, mask, bands = read_inputs(args)
    images = subtract_background(images, args)
    if variance is None:
        variance = noise_variance(images, bands)
    psfs = psfs_from_args(args, images.shape[0])
    kind = (
        args.deblender
        if args.deblender != "auto"
        else ("single" if images.shape[0] == 1 else "multi")
    )
    config = CatalogConfig(
        deblender=args.deblender,
        skip_isolated=not args.fit_isolated,
        model_psf_sigma=_model_psf_sigma(args, psfs, kind),
    )
    parents = _parents(args, images, variance, psfs, config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    catalog, model_data = deblend_catalog(
        images,
        parents=parents,
        config=config,
        executor=args.executor,
        progress=not args.quiet,
        max_workers=args.workers,
        variance=variance,
        psf=psfs,
        mask=mask,
        bands=bands,
        wcs=read_wcs(args.images),
        flux_unit=read_flux_unit(args.images),  # RA/Dec, units
    )
    elapsed = time.perf_counter() - start
    write_catalog(out / "catalog.fits", catalog)
    save_models(out / "models.fits", model_data)
    counts = _summary(catalog)
    logger.info("%s", _summary_line(counts, elapsed))
    if not args.no_plots and have_matplotlib():
        draw_run(images, variance, psfs, mask, catalog, model_data, kind, out, args, parents)
    print(f"catalog, models{'' if args.no_plots else ' and pictures'} written to {out.resolve()}")
    problem = _nothing_deblended(counts)
    if problem:
        logger.error("%s", problem)
        return EXIT_NOTHING_DEBLENDED
    return 0


def _model_psf_sigma(args: argparse.Namespace, psfs: np.ndarray, kind: str) -> float:
    """``--model-psf-sigma``, else :func:`choose_model_psf_sigma` (logged when not 0.8)."""
    sigma = args.model_psf_sigma
    if sigma is None:
        sigma = choose_model_psf_sigma(psfs)
        if kind == "multi" and sigma != MODEL_PSF_SIGMA:
            logger.info(
                "model PSF sigma %.2f px: the default 0.8 px is wider than the "
                "sharpest band's PSF (set it with --model-psf-sigma)",
                sigma,
            )
    return sigma


def _parents(
    args: argparse.Namespace,
    images: np.ndarray,
    variance: np.ndarray,
    psfs: np.ndarray,
    config: object,
) -> list:
    """The ``--peaks`` grouped into parents, or the parents detected."""
    from ..catalog import parents_from_peaks
    from ..fits_io import read_peak_table

    if args.peaks:
        peaks, used = read_peak_table(args.peaks)
        logger.info("peaks: %d from %s, columns %s", len(peaks), args.peaks, used)
        # grouped here as deblend_catalog would (same rule and settings), to keep the
        # footprints for the pictures
        return parents_from_peaks(
            images, variance, peaks, config.footprint_snr, config.footprint_grow
        )
    parents = detect_parents(images, variance, psfs, args)
    warn_one_big_parent(parents, images.shape[1:], args.background)
    return parents


def choose_model_psf_sigma(psfs: np.ndarray, default: float = MODEL_PSF_SIGMA) -> float:
    """The model PSF width: ``default`` unless a band's PSF is narrower, then narrower still.

    The multi-band fit convolves models made at the model PSF with difference kernels to
    each band's PSF, so the model PSF must be narrower than the sharpest band
    (docs/spec/multi_band.md 1.3; else
    :class:`cdeblend.Observation` refuses it). Widths are compared by the noise-equivalent
    area ``1 / sum(p^2)``; the narrower choice is the sigma of an integrated Gaussian with
    70 % of the sharpest band's equivalent sigma, rounded down to 0.05 px (as the
    observation's own suggestion), and at least 0.05 px.
    """
    from ..observation import effective_area, integrated_gaussian_psf

    area = float(np.min(effective_area(psfs)))
    if area >= float(effective_area(integrated_gaussian_psf(default))) * (1 - 1e-3):
        return float(default)
    sig_obs = np.sqrt(max(area / (4 * np.pi) - 1 / 12, 0.0))
    sigma = max(np.floor(0.7 * sig_obs * 20) / 20, 0.05)
    while sigma > 0.05 and float(effective_area(integrated_gaussian_psf(sigma))) > area:
        sigma -= 0.05
    return float(round(sigma, 2))


def _summary(catalog: object) -> dict[str, object]:
    """Counts of a catalog: parents, children, skipped by reason, failed, not converged."""
    parent = np.asarray(catalog["is_parent"], dtype=bool)
    col = {
        name: np.asarray(catalog[name], dtype=bool)[parent]
        for name in (
            "skipped",
            "failed",
            "converged",
            "skipped_isolated",
            "skipped_parent_too_big",
            "skipped_masked",
            "skipped_too_many_peaks",
        )
    }
    fitted = ~col["skipped"] & ~col["failed"]
    return {
        "parents": int(parent.sum()),
        "children": int((~parent).sum()),
        "skipped": {
            reason[8:]: int(col[reason].sum())
            for reason in (
                "skipped_isolated",
                "skipped_parent_too_big",
                "skipped_masked",
                "skipped_too_many_peaks",
            )
            if col[reason].any()
        },
        "failed": int(col["failed"].sum()),
        "fitted": int(fitted.sum()),
        "not_converged": int((fitted & ~col["converged"]).sum()),
    }


def _summary_line(counts: dict, elapsed: float) -> str:
    skipped = ", ".join(f"{n} {why}" for why, n in counts["skipped"].items()) or "none"
    return (
        f"{counts['parents']} parents, {counts['children']} children; skipped: {skipped}; "
        f"{counts['failed']} failed; {counts['not_converged']} not converged; "
        f"{elapsed:.2f} s"
    )


def _nothing_deblended(counts: dict) -> str:
    """Why nothing could be deblended (empty if something was, or nothing needed to be)."""
    if counts["parents"] == 0:
        return (
            "nothing was detected: check the images, the noise (--variance/--invvar/"
            "--rms) and --nsigma"
        )
    needing = counts["parents"] - counts["skipped"].get("isolated", 0)
    if needing > 0 and counts["fitted"] == 0:
        return (
            "no parent could be deblended (every blended parent was skipped or failed; "
            "see the summary above)"
        )
    return ""
