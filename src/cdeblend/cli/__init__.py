"""The ``cdeblend`` command.

- ``cdeblend demo``: deblend the bundled HSC COSMOS blend with both deblenders and write
  tables (CSV) and, when matplotlib is installed, pictures (PNG) into a folder
  (:mod:`cdeblend.cli.demo`).
- ``cdeblend deblend``: deblend every parent of FITS images (one file per band, a
  multi-extension file or a cube), writing the catalog, the model file and pictures
  (:mod:`cdeblend.cli.deblend`; its detection in :mod:`cdeblend.cli.detect`, its inputs in
  :mod:`cdeblend.cli.inputs`, its pictures in :mod:`cdeblend.cli.pictures`).
- ``cdeblend show``: per-source panels of one parent from a model file and the images
  (:mod:`cdeblend.cli.show`).
- ``cdeblend survey``: many patches on a Dask cluster (:mod:`cdeblend.cli.survey`).

Each command's module holds its options (``add_parser``) and its entry point (``run_*``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import deblend, demo, show, survey
from .deblend import EXIT_NOTHING_DEBLENDED, choose_model_psf_sigma, run_deblend
from .detect import DETECTION_OPTIONS, FILTERS, SEXTRACTOR_RECIPE

__all__ = [
    "DETECTION_OPTIONS",
    "EXIT_NOTHING_DEBLENDED",
    "FILTERS",
    "SEXTRACTOR_RECIPE",
    "build_parser",
    "choose_model_psf_sigma",
    "main",
    "run_deblend",
]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cdeblend`` command."""
    parser = argparse.ArgumentParser(
        prog="cdeblend",
        description="Deblend astronomical images (single-band SDSS-like and multi-band "
        "scarlet lite deblenders).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo.add_parser(sub)
    deblend.add_parser(sub)
    show.add_parser(sub)
    survey.add_parser(sub)
    return parser


def _setup_logging(quiet: bool) -> None:
    """Messages of the ``cdeblend`` loggers on stderr: INFO and up, WARNING with --quiet."""
    log = logging.getLogger("cdeblend")
    for handler in list(log.handlers):
        if getattr(handler, "_cdeblend_cli", False):
            log.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("cdeblend: %(levelname)s: %(message)s"))
    handler._cdeblend_cli = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cdeblend`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _setup_logging(getattr(args, "quiet", False))
    try:
        return int(args.func(args))
    except (ValueError, TypeError, OSError, ImportError, KeyError) as err:
        print(f"cdeblend {args.command}: error: {err}", file=sys.stderr)
        return 1
