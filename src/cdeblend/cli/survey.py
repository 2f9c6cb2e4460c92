"""``cdeblend survey``: many patches of a manifest on a Dask cluster (see
:func:`cdeblend.survey.deblend_survey`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``cdeblend survey`` subcommand (see cdeblend/survey.py)."""
    survey = sub.add_parser(
        "survey",
        help="deblend many patches listed in a manifest on a Dask cluster",
        description="Deblend every patch a manifest (CSV or JSON) lists, one task per patch on "
        "a dask.distributed cluster: each task reads its patch, deblends it the way "
        "`cdeblend deblend` does (threads inside) and writes OUT/<name>/catalog.fits and "
        "models.fits; OUT/summary.csv gets one row per patch. Patches finished by an earlier "
        "run are skipped; a failed patch is reported and the others go on (exit status 1). "
        "Manifest columns: name, and the options of `cdeblend deblend` (images, variance or "
        "invvar, psfs, bands, peaks, deblender, fit_isolated, ...); several values in a CSV "
        "cell are separated by spaces; relative paths are relative to the manifest.",
    )
    survey.add_argument("manifest", help="CSV or JSON file listing the patches")
    survey.add_argument("--out", required=True, help="output folder")
    where = survey.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running dask scheduler")
    where.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes of a local cluster (default: the cores)",
    )
    survey.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads per patch (default: the cores shared by the workers)",
    )
    survey.add_argument("--quiet", action="store_true", help="no line per finished patch")
    survey.set_defaults(func=run_survey)


def run_survey(args: argparse.Namespace) -> int:
    from ..survey import deblend_survey

    rows = deblend_survey(
        args.manifest,
        args.out,
        scheduler=args.scheduler,
        workers=args.workers,
        threads=args.threads,
        progress=not args.quiet,
    )
    failed = [r["name"] for r in rows if r["status"] == "failed"]
    print(
        f"{len(rows) - len(failed)} of {len(rows)} patches finished; summary in "
        f"{Path(args.out).resolve() / 'summary.csv'}"
    )
    if failed:
        print(
            f"cdeblend survey: {len(failed)} patch(es) failed: {', '.join(failed[:20])}"
            f"{' ...' if len(failed) > 20 else ''}",
            file=sys.stderr,
        )
        return 1
    return 0
