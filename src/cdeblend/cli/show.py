"""``cdeblend show``: per-source panels of one parent from a model file and the images."""

from __future__ import annotations

import argparse
from pathlib import Path

from .inputs import (
    add_background_args,
    add_image_args,
    noise_variance,
    read_inputs,
    subtract_background,
)
from .pictures import drawable, mask2d, show_parent
from .tables import have_matplotlib


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``cdeblend show`` subcommand."""
    show = sub.add_parser(
        "show",
        help="draw one parent's panels from a model file",
        description="Re-apportion the images with the stored models of one parent (no "
        "refitting) and draw, per source, the observation, model, residual and "
        "re-apportioned image.",
    )
    show.add_argument("--models", required=True, help="models.fits written by cdeblend deblend")
    show.add_argument("--parent", type=int, required=True, help="parent id")
    add_image_args(show, noise_required=False)
    show.add_argument("--out", default="cdeblend-show", help="output folder (default: %(default)s)")
    show.add_argument("--quiet", action="store_true", help="no progress bar")
    add_background_args(show)
    show.set_defaults(func=run_show)


def run_show(args: argparse.Namespace) -> int:
    from ..model_data import load_models

    if not have_matplotlib():
        raise ImportError("cdeblend show draws with matplotlib: pip install 'cdeblend[plot]'")
    model_data = load_models(args.models)
    images, variance, mask, bands = read_inputs(args)
    images = subtract_background(images, args)
    if variance is None:
        # the children's footprint is measured in noise units: the same estimate as
        # ``cdeblend deblend`` without a noise map, so that both re-apportion alike
        variance = noise_variance(images, bands)
    if images.shape[0] != len(model_data.bands):
        raise ValueError(
            f"the images have {images.shape[0]} bands, the models "
            f"{len(model_data.bands)} ({', '.join(model_data.bands)})"
        )
    if not model_data.blends:
        raise ValueError(
            f"{args.models} holds no models: it is from a single-band run (the single-band "
            "deblender's templates are not stored) or nothing was fitted. A single-band run "
            "draws its parents' panels itself: cdeblend deblend --max-plots N writes "
            "parent<id>_source<k>.png, brightest parents first"
        )
    if args.parent not in model_data.blends:
        known = sorted(model_data.blends)
        raise ValueError(
            f"parent {args.parent} is not in {args.models}; stored parents: "
            f"{known[:20]}{' ...' if len(known) > 20 else ''}"
        )
    blend = model_data.blends[args.parent]
    if blend.isolated or not blend.sources:
        raise ValueError(f"parent {args.parent} was not fitted (isolated): nothing to show")
    images, mask = drawable(images, mask)
    observation = model_data.observation(
        images,
        variance,
        weights=None if mask is None else (~mask2d(mask, images)).astype(images.dtype),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    show_parent(observation, model_data, args.parent, out, progress=not args.quiet)
    print(f"panels written to {out.resolve()}")
    return 0
