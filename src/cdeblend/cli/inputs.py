"""Inputs of the ``cdeblend`` commands: the image, noise and PSF options and their readers,
the background subtraction and the noise estimate."""

from __future__ import annotations

import argparse
import logging
import warnings
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger("cdeblend.cli")


def read_inputs(
    args: argparse.Namespace,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str]]:
    """Images, variance, no-data mask and band names from the command's FITS arguments."""
    with warnings.catch_warnings():
        # astropy warns about non-standard header cards (e.g. ESO's "ESO-LOG" lines) that do
        # not affect the data
        warnings.filterwarnings("ignore", message=".*header keyword is invalid.*")
        return _read_input_files(args)


def _read_input_files(
    args: argparse.Namespace,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str]]:
    """:func:`read_inputs` without the warnings filter."""
    from ..fits_io import read_image_stack, variance_from_inverse

    images, header_bands = read_image_stack(args.images, "images")
    mask = None
    if getattr(args, "variance", None):
        variance, _ = read_image_stack(args.variance, "variance")
    elif getattr(args, "invvar", None):
        invvar, _ = read_image_stack(args.invvar, "invvar")
        variance, mask = variance_from_inverse(invvar)
    elif getattr(args, "rms", None):
        rms, _ = read_image_stack(args.rms, "rms")
        with np.errstate(divide="ignore", invalid="ignore"):
            variance, mask = variance_from_inverse(np.where(rms > 0, 1.0 / rms**2, 0.0))
    else:
        variance = None
    if variance is not None and variance.shape != images.shape:
        raise ValueError(f"variance has shape {variance.shape}, the images {images.shape}")
    if args.bands:
        bands = list(args.bands)
    elif all(b is not None for b in header_bands) and len(set(header_bands)) == len(header_bands):
        bands = [str(b) for b in header_bands]
    else:
        bands = [str(i) for i in range(images.shape[0])]
    if len(bands) != images.shape[0]:
        raise ValueError(f"--bands names {len(bands)} bands, the images have {images.shape[0]}")
    return images, variance, mask, bands


def _read_psfs(paths: Sequence[str], n_bands: int) -> np.ndarray:
    """PSF images from files, checked (warnings for problems) and normalised to unit sum."""
    from ..fits_io import read_image_stack

    psfs, _ = read_image_stack(paths, "psfs")
    if psfs.shape[0] == 1 and n_bands > 1:
        logger.info("one PSF image for %d bands: using it for every band", n_bands)
        psfs = np.repeat(psfs, n_bands, axis=0)
    if psfs.shape[0] != n_bands:
        raise ValueError(f"psfs: {psfs.shape[0]} PSF image(s) for {n_bands} band(s)")
    return _checked_psfs(psfs)


def _checked_psfs(psfs: np.ndarray) -> np.ndarray:
    """Warn about PSF problems (:func:`cdeblend.fits_io.psf_problems`), zero non-finite
    pixels and normalise every PSF to unit sum."""
    from ..fits_io import psf_problems

    for b, psf in enumerate(psfs):
        for problem in psf_problems(psf):
            logger.warning("psfs[%d]: %s", b, problem)
    psfs = np.where(np.isfinite(psfs), psfs, 0.0)
    sums = psfs.reshape(len(psfs), -1).sum(axis=1)
    if np.any(sums <= 0):
        raise ValueError("psfs: a PSF image has a non-positive sum")
    if np.any(np.abs(sums - 1) > 1e-3):
        logger.info(
            "normalising the PSF images to unit sum (sums %s)", ", ".join(f"{v:.4g}" for v in sums)
        )
    return psfs / sums[:, None, None]


def psfs_from_args(args: argparse.Namespace, n_bands: int) -> np.ndarray:
    """PSFs from ``--psfs`` files or Gaussians of ``--psf-fwhm`` pixels."""
    from ..fits_io import gaussian_psfs

    if args.psfs:
        return _read_psfs(args.psfs, n_bands)
    psfs = gaussian_psfs(args.psf_fwhm, n_bands)
    logger.info(
        "PSF: circular Gaussian(s) of FWHM %s px",
        ", ".join(f"{f:g}" for f in np.broadcast_to(args.psf_fwhm, (n_bands,))),
    )
    return psfs


def subtract_background(images: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    """``--background auto``: subtract a mesh estimate per band; otherwise warn when the sky
    looks unsubtracted."""
    from ..background import estimate_background, looks_unsubtracted

    if args.background == "auto":
        out = np.empty_like(images)
        for b, img in enumerate(images):
            bkg = estimate_background(img, mesh=args.background_mesh)
            out[b] = img - bkg.background
            logger.info(
                "band %d: subtracted a %d px mesh background (median %.4g, range %.4g .. "
                "%.4g; noise %.4g)",
                b,
                args.background_mesh,
                float(np.median(bkg.background)),
                float(bkg.background.min()),
                float(bkg.background.max()),
                bkg.median_rms,
            )
        return out
    for b, img in enumerate(images):
        flag, level = looks_unsubtracted(img)
        if flag:
            logger.warning(
                "band %d looks not sky-subtracted: its sigma-clipped median is %.1f times its "
                "noise; use --background auto (or subtract the sky first)",
                b,
                level,
            )
    return images


def noise_variance(images: np.ndarray, bands: Sequence[str]) -> np.ndarray:
    """A constant variance per band: the square of the sigma-clipped (3 sigma, iterated)
    standard deviation of its pixels. It holds the sky noise only (no source Poisson term)."""
    from ..background import clipped_stats

    sig = np.array([clipped_stats(img)[2] for img in images])
    if not np.all(np.isfinite(sig) & (sig > 0)):
        raise ValueError(
            "images: cannot estimate the noise of a band (no finite pixel or a constant "
            "image); give --variance, --invvar or --rms"
        )
    logger.info(
        "no variance given: per-band noise from sigma-clipped pixels (3 sigma): %s",
        ", ".join(f"{b} {s:.4g}" for b, s in zip(bands, sig, strict=True)),
    )
    return np.broadcast_to((sig**2)[:, None, None], images.shape).astype(images.dtype)


def add_background_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--background",
        choices=["none", "auto"],
        default="none",
        help="auto: subtract a mesh background per band (SExtractor-like: "
        "sigma-clipped mode per --background-mesh mesh, 3 x 3 median filter, "
        "bilinear; see cdeblend.background). none (default): the images are "
        "sky-subtracted; a warning says when they do not look it",
    )
    parser.add_argument(
        "--background-mesh",
        type=int,
        default=64,
        help="mesh size in pixels for --background auto (default: %(default)s)",
    )


def add_image_args(parser: argparse.ArgumentParser, noise_required: bool = True) -> None:
    parser.add_argument(
        "--images",
        nargs="+",
        required=True,
        help="image FITS file(s): one per band, multi-extension, or a cube",
    )
    noise = parser.add_mutually_exclusive_group(required=noise_required)
    noise.add_argument(
        "--variance",
        nargs="+",
        help="variance FITS file(s), like --images; <= 0 or NaN means no data",
    )
    noise.add_argument(
        "--invvar", nargs="+", help="inverse-variance FITS file(s); <= 0 means no data"
    )
    noise.add_argument(
        "--rms",
        nargs="+",
        help="noise (standard deviation) FITS file(s), e.g. SExtractor's "
        "BACKGROUND_RMS; <= 0 means no data. Without --variance, --invvar or "
        "--rms, a constant noise per band is estimated from the sigma-clipped "
        "pixels (logged)",
    )
    parser.add_argument(
        "--bands",
        nargs="+",
        help="band names (default: BAND/FILTER header keywords, else 0, 1, ...)",
    )


def add_psf_args(deb: argparse.ArgumentParser) -> None:
    """``--psfs`` or ``--psf-fwhm`` (one of them is required)."""
    psf = deb.add_mutually_exclusive_group(required=True)
    psf.add_argument(
        "--psfs",
        nargs="+",
        help="PSF image(s), odd-sized, one per band (files, extensions or a cube; "
        "one image is used for every band). Warns about PSFs that are not "
        "normalised (they are rescaled), have negative lobes or holes",
    )
    psf.add_argument(
        "--psf-fwhm",
        nargs="+",
        type=float,
        metavar="FWHM",
        help="circular Gaussian PSF(s) of this FWHM in pixels: one value for every "
        "band or one per band",
    )
