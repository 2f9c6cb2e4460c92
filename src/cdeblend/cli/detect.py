"""Detection for ``cdeblend deblend``: the command's detection options, the call to
:func:`cdeblend.detect` and the warnings about what it found."""

from __future__ import annotations

import argparse
import inspect
import logging
from collections.abc import Sequence

import numpy as np

logger = logging.getLogger("cdeblend.cli")

#: ``cdeblend deblend`` detection options -> keyword of :func:`cdeblend.detect`. Options the
#: user did not give are not passed (the library's defaults apply); options that this build's
#: ``detect`` does not take are reported and ignored.
DETECTION_OPTIONS = {
    "nsigma": "nsigma",
    "min_area": "min_area",
    "min_contrast": "min_contrast",
    "peak_significance": "peak_significance",
    "min_separation": "min_separation",
    "grow": "grow",
    "measure_noise": "measure_noise",
}


#: ``--filter`` choices -> (filter the detection image?, :func:`cdeblend.detect`'s
#: ``filter_type``). "psf" is the historic name of "matched".
FILTERS = {
    "psf": (True, "matched"),
    "matched": (True, "matched"),
    "conv": (True, "conv"),
    "none": (False, "matched"),
}


#: The ``cdeblend deblend`` options that reproduce SExtractor's detection settings, shown in
#: the help (``DETECT_THRESH``, ``DETECT_MINAREA``, ``FILTER Y`` with ``FILTER_NAME``; its
#: footprints are not grown).
SEXTRACTOR_RECIPE = (
    "--nsigma DETECT_THRESH --min-area DETECT_MINAREA --filter conv "
    "--filter-kernel FILTER_NAME --grow 0"
)


def detect_parents(
    images: np.ndarray, variance: np.ndarray, psfs: np.ndarray, args: argparse.Namespace
) -> list:
    """Parents from :func:`cdeblend.detect` with the command's detection options."""
    from ..detection import detect

    accepted = inspect.signature(detect).parameters
    kwargs = {}
    for option, keyword in DETECTION_OPTIONS.items():
        value = getattr(args, option, None)
        if value is None:
            continue
        if keyword not in accepted:
            logger.warning(
                "--%s is not supported by this build's detection; ignored", option.replace("_", "-")
            )
            continue
        kwargs[keyword] = value
    filtered, filter_type = FILTERS[args.filter]
    kernel = _filter_kernel(args)
    psf = psfs if filtered and kernel is None else None
    if kernel is not None:
        kwargs["kernel"] = kernel
    if filtered:
        kwargs["filter_type"] = filter_type
    parents = detect(images, variance, psf=psf, **kwargs)
    shown = ", ".join(f"{k}={v}" for k, v in kwargs.items() if k != "kernel") or "the defaults"
    if not filtered:
        how = "no filter"
    else:
        what = f"{kernel.shape[0]} x {kernel.shape[1]} kernel" if kernel is not None else "PSF"
        how = f"{'smoothed by the' if filter_type == 'conv' else 'matched filter of the'} {what}"
    logger.info(
        "detection (%s; %s): %d parents with %d peaks",
        shown,
        how,
        len(parents),
        sum(len(p.peaks) for p in parents),
    )
    return parents


def _filter_kernel(args: argparse.Namespace) -> np.ndarray | None:
    """The ``--filter-kernel`` file's kernel (None without one); refused with --filter none."""
    from ..fits_io import read_conv_kernel

    path = getattr(args, "filter_kernel", None)
    if path is None:
        return None
    if args.filter == "none":
        raise ValueError(
            "--filter-kernel needs a filter: --filter conv (SExtractor-like) or "
            "--filter matched, not --filter none"
        )
    return read_conv_kernel(path)


def warn_one_big_parent(parents: Sequence, shape: tuple[int, int], background: str) -> None:
    """An unsubtracted sky shows as one parent covering most of the image."""
    if not parents or background == "auto" or shape[0] * shape[1] < 10_000:
        return
    biggest = max(parents, key=lambda p: int(np.count_nonzero(p.footprint)))
    share = np.count_nonzero(biggest.footprint) / (shape[0] * shape[1])
    if share > 0.5:
        logger.warning(
            "parent %s covers %.0f%% of the image with %d peaks: if the sky was not "
            "subtracted, use --background auto",
            biggest.id,
            100 * share,
            len(biggest.peaks),
        )


def add_detection_args(deb: argparse.ArgumentParser) -> None:
    """The ``detection`` option group of ``cdeblend deblend``."""
    det = deb.add_argument_group(
        "detection", "used when no --peaks are given; unset options keep cdeblend.detect's defaults"
    )
    _add_threshold_args(det)
    _add_filter_args(det)


def _add_threshold_args(det: argparse._ArgumentGroup) -> None:
    """Thresholds of footprints and peaks, the peaks' separation, the footprints' growth."""
    det.add_argument(
        "--nsigma",
        type=float,
        default=None,
        help="detection threshold in noise units: of the detection image with "
        "--filter psf/matched/none, of the unfiltered pixels with --filter conv "
        "(SExtractor's DETECT_THRESH)",
    )
    det.add_argument(
        "--min-area",
        type=int,
        default=None,
        help="minimum footprint area in pixels above the threshold (SExtractor's DETECT_MINAREA)",
    )
    det.add_argument(
        "--min-contrast",
        type=float,
        default=None,
        help="a peak other than its footprint's brightest needs more than this "
        "fraction of its brighter neighbour's flux above their saddle (like "
        "SExtractor's DEBLEND_MINCONT; 0 turns the test off)",
    )
    det.add_argument(
        "--peak-significance",
        type=float,
        default=None,
        help="a peak other than its footprint's brightest must rise this many "
        "noise sigma above the saddle to its brighter neighbour (like the LSST "
        "peak significance)",
    )
    det.add_argument(
        "--min-separation",
        type=float,
        default=None,
        help="minimum distance between the peaks of a parent in units of the PSF "
        "FWHM (of the --filter-kernel's FWHM when one is given)",
    )
    det.add_argument(
        "--grow",
        type=int,
        default=None,
        help="grow footprints by this many pixels (cdeblend.detect's default 2; "
        "SExtractor does not grow them: --grow 0)",
    )


def _add_filter_args(det: argparse._ArgumentGroup) -> None:
    """The detection filter and the noise measurement."""
    det.add_argument(
        "--filter",
        choices=list(FILTERS),
        default="psf",
        help="detection filter. psf (default; same as matched): matched filter, "
        "threshold in S/N of the filtered image; conv: smoothed as SExtractor's "
        "FILTER Y and sep's filter_type='conv', threshold in the noise of the "
        "unfiltered pixels; none: unfiltered. The filter is the PSF, or "
        "--filter-kernel",
    )
    det.add_argument(
        "--filter-kernel",
        metavar="FILE",
        default=None,
        help="filter kernel instead of the PSF: a SExtractor .conv file (a "
        "'CONV NORM' line, '#' comments, rows of numbers, e.g. default.conv) or "
        "a FITS image, odd sides",
    )
    det.add_argument(
        "--measure-noise",
        action="store_true",
        default=None,
        help="measure the detection image's noise outside the footprints instead "
        "of trusting the variance (correlated noise of drizzled or resampled "
        "coadds)",
    )
