"""The ``cdeblend`` command.

- ``cdeblend demo``: deblend the bundled HSC COSMOS blend with both deblenders and write
  tables (CSV) and, when matplotlib is installed, pictures (PNG) into a folder.
- ``cdeblend deblend``: deblend every parent of FITS images (one file per band, a
  multi-extension file or a cube), writing the catalog, the model file and pictures.
- ``cdeblend show``: per-source panels of one parent from a model file and the images.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .model_data import ModelData
    from .observation import Observation

__all__ = ["main"]


def _place(array: np.ndarray, box: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
    """Put a (h, w) array that lives on ``box`` into a zero (H, W) frame (clipping)."""
    out = np.zeros(shape, dtype=np.float64)
    y0, x0, h, w = (int(v) for v in box)
    ya, yb = max(y0, 0), min(y0 + h, shape[0])
    xa, xb = max(x0, 0), min(x0 + w, shape[1])
    if ya < yb and xa < xb:
        out[ya:yb, xa:xb] = np.asarray(array)[ya - y0 : yb - y0, xa - x0 : xb - x0]
    return out


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in header]] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for k, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(value: object) -> str:
    if isinstance(value, float | np.floating):
        return f"{value:.6g}"
    return str(value)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[_fmt(v) for v in row] for row in rows])


def _demo_single_band(out: Path, bands: Sequence[str], plots: bool) -> None:
    from .datasets import load_hsc_cosmos
    from .single_band import SingleBandConfig, SingleBandDeblender

    blend = load_hsc_cosmos()
    deblender = SingleBandDeblender(SingleBandConfig())
    header = ["band", "child", "peak_y", "peak_x", "template_kind", "flux", "flags"]
    rows: list[list[object]] = []
    for band in bands:
        b = blend.band_index(band)
        image, variance, psf = blend.images[b], blend.variance[b], blend.psfs[b]
        start = time.perf_counter()
        result = deblender.deblend(image, variance, psf, blend.peaks)
        elapsed = time.perf_counter() - start
        conserved = result.conserved_images()
        for k, child in enumerate(result.children):
            flags = ";".join(sorted(name for name, on in _flag_items(child.flags) if on))
            rows.append([band, k, int(child.peak[0]), int(child.peak[1]),
                         child.template_kind, float(child.flux), flags])
            if plots:
                import matplotlib.pyplot as plt

                from .display import plot_single_band_child

                template = _place(child.template, child.template_box, image.shape)
                fig = plot_single_band_child(
                    image, template, conserved[k],
                    path=out / f"single_{band}_child{k}.png", peak=child.peak,
                    title=f"{band} band, child {k} ({child.template_kind} template)",
                    label=str(k),
                )
                plt.close(fig)
        print(f"single band {band}: {len(result.children)} children in {elapsed * 1e3:.1f} ms, "
              f"stray flux {result.stray_flux:.4g}")
    _write_csv(out / "single_band_fluxes.csv", header, rows)
    _print_table(header, rows)


def _flag_items(flags: object) -> list[tuple[str, bool]]:
    """(name, value) pairs of a flags object: a dict, a dataclass or a set of names."""
    if isinstance(flags, dict):
        return [(str(k), bool(v)) for k, v in flags.items()]
    if isinstance(flags, set | frozenset | list | tuple):
        return [(str(k), True) for k in flags]
    if hasattr(flags, "__dataclass_fields__"):
        return [(k, bool(getattr(flags, k))) for k in flags.__dataclass_fields__]
    return []


def _demo_multi_band(out: Path, plots: bool) -> None:
    from .datasets import load_hsc_cosmos
    from .deblender import DeblendConfig, Deblender
    from .observation import Observation

    blend = load_hsc_cosmos()
    obs = Observation(blend.images, blend.variance, blend.psfs, bands=blend.bands)
    start = time.perf_counter()
    result = Deblender(DeblendConfig()).deblend(obs, blend.peaks)
    elapsed = time.perf_counter() - start
    bands = list(blend.bands)
    header = (["source", "peak_y", "peak_x"] + [f"flux_{b}" for b in bands]
              + [f"conserved_flux_{b}" for b in bands])
    rows = []
    for k, peak in enumerate(blend.peaks):
        rows.append([k, int(peak[0]), int(peak[1])]
                    + [float(v) for v in result.fluxes[k]]
                    + [float(v) for v in result.conserved_fluxes[k]])
    _write_csv(out / "multi_band_fluxes.csv", header, rows)
    with open(out / "multi_band_summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["iterations", "loss", "converged", "time_ms"])
        writer.writerow([result.iterations, _fmt(float(result.loss)), bool(result.converged),
                         f"{elapsed * 1e3:.2f}"])
    print(f"multi band ({''.join(bands)}): {len(rows)} sources, {result.iterations} iterations, "
          f"loss {result.loss:.6g}, converged {bool(result.converged)}, {elapsed * 1e3:.1f} ms")
    _print_table(header, rows)
    if plots:
        import matplotlib.pyplot as plt

        from .display import plot_blend, plot_loss, plot_source_panels

        plt.close(plot_blend(blend.images, blend.peaks, path=out / "multi_blend.png"))
        plt.close(plot_loss(result.loss_history, path=out / "multi_loss.png"))
        models = result.models()
        total = models.sum(axis=0)
        conserved = result.conserved_images()
        for k in range(len(models)):
            fig = plot_source_panels(
                blend.images, models[k], total, conserved[k],
                path=out / f"multi_source{k}.png", peak=blend.peaks[k], title=f"source {k}",
                label=str(k),
            )
            plt.close(fig)


def _cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plots = not args.no_plots and _have_matplotlib()
    if not args.no_plots and not plots:
        print("matplotlib is not installed: writing tables only (pip install 'cdeblend[plot]')")
    if args.deblender in ("single", "both"):
        _demo_single_band(out, args.bands, plots)
    if args.deblender in ("multi", "both"):
        _demo_multi_band(out, plots)
    print(f"results written to {out.resolve()}")
    return 0


def _read_inputs(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, np.ndarray | None,
                                                       list[str]]:
    """Images, variance, no-data mask and band names from the command's FITS arguments."""
    from .fits_io import read_image_stack, variance_from_inverse

    images, header_bands = read_image_stack(args.images, "images")
    mask = None
    if getattr(args, "variance", None):
        variance, _ = read_image_stack(args.variance, "variance")
    elif getattr(args, "invvar", None):
        invvar, _ = read_image_stack(args.invvar, "invvar")
        variance, mask = variance_from_inverse(invvar)
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
    from .fits_io import read_image_stack

    psfs, _ = read_image_stack(paths, "psfs")
    if psfs.shape[0] != n_bands:
        raise ValueError(f"psfs: {psfs.shape[0]} PSF image(s) for {n_bands} band(s)")
    sums = psfs.reshape(n_bands, -1).sum(axis=1)
    if np.any(sums <= 0):
        raise ValueError("psfs: a PSF image has a non-positive sum")
    if np.any(np.abs(sums - 1) > 1e-3):
        print("note: normalising the PSF images to unit sum")
        psfs = psfs / sums[:, None, None]
    return psfs


def _field_model(model_data: ModelData, observation: Observation) -> np.ndarray:
    """The sum of every stored blend's models convolved to the observed PSFs."""
    total = np.zeros(observation.shape)
    for pid, blend in model_data.blends.items():
        if blend.isolated or not blend.sources:
            continue
        y0, x0, h, w = blend.box
        models = model_data.rebuild(observation, pid).models()
        total[:, y0 : y0 + h, x0 : x0 + w] += models.sum(axis=0)
    return total


def _cmd_deblend(args: argparse.Namespace) -> int:
    from .catalog import CatalogConfig, deblend_catalog, write_catalog
    from .fits_io import read_flux_unit, read_peaks, read_wcs
    from .model_data import save_models

    images, variance, mask, bands = _read_inputs(args)
    if variance is None:
        raise ValueError("give the noise as --variance or --invvar FITS files")
    psfs = _read_psfs(args.psfs, images.shape[0])
    peaks = read_peaks(args.peaks) if args.peaks else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = CatalogConfig(deblender=args.deblender, skip_isolated=not args.fit_isolated)
    start = time.perf_counter()
    catalog, model_data = deblend_catalog(
        images, peaks=peaks, config=config, executor=args.executor,
        progress=not args.quiet, max_workers=args.workers,
        variance=variance, psf=psfs, mask=mask, bands=bands,
        wcs=read_wcs(args.images), flux_unit=read_flux_unit(args.images),  # RA/Dec, units
    )
    elapsed = time.perf_counter() - start
    write_catalog(out / "catalog.fits", catalog)
    save_models(out / "models.fits", model_data)
    is_parent = np.asarray(catalog["is_parent"], dtype=bool)
    failed = int(np.count_nonzero(np.asarray(catalog["failed"])[is_parent]))
    skipped = int(np.count_nonzero(np.asarray(catalog["skipped"])[is_parent]))
    print(f"{int(is_parent.sum())} parents, {int((~is_parent).sum())} children "
          f"({skipped} parents skipped, {failed} failed) in {elapsed:.2f} s")
    if not args.no_plots and _have_matplotlib():
        import matplotlib.pyplot as plt

        from .display import lupton_rgb, plot_panels

        observation = model_data.observation(
            images, weights=None if mask is None else (~mask).astype(images.dtype))
        total = _field_model(model_data, observation)
        rgb = lupton_rgb(images)
        boxes = [b.box for b in model_data.blends.values()]
        fig = plot_panels([rgb, lupton_rgb(images - total)], ["image", "residual"],
                          panel_size=6.0)
        for ax in fig.axes:
            for y0, x0, h, w in boxes:
                ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), w, h, fill=False,
                                           edgecolor="yellow", linewidth=0.6))
        fig.savefig(out / "field.png", dpi=100)
        plt.close(fig)
        shown = 0
        for pid, blend in model_data.blends.items():
            if shown >= args.max_plots or blend.isolated or not blend.sources:
                continue
            _show_parent(observation, model_data, pid, out, quiet=True)
            shown += 1
    print(f"catalog, models and pictures written to {out.resolve()}")
    return 0


def _show_parent(observation: Observation, model_data: ModelData, pid: int, out: Path,
                 quiet: bool = False) -> None:
    """Write one PNG per source of parent ``pid`` (observation, model, residual, conserved)."""
    import matplotlib.pyplot as plt

    from .display import plot_source_panels

    blend = model_data.blends[pid]
    y0, x0, h, w = blend.box
    cut = observation.images[:, y0 : y0 + h, x0 : x0 + w]
    rebuilt = model_data.rebuild(observation, pid)
    models = rebuilt.models()
    conserved = rebuilt.conserved_images()
    total = models.sum(axis=0)
    rows = []
    for k, src in enumerate(blend.sources):
        peak = src.components[0].peak if src.components else (y0 + h // 2, x0 + w // 2)
        fig = plot_source_panels(
            cut, models[k], total, conserved[k], path=out / f"parent{pid}_source{k}.png",
            peak=(peak[0] - y0, peak[1] - x0), title=f"parent {pid}, source {k}",
            label=str(k),
        )
        plt.close(fig)
        rows.append([k, int(peak[0]), int(peak[1])]
                    + [float(v) for v in conserved[k].sum(axis=(1, 2))])
    if not quiet:
        header = ["source", "peak_y", "peak_x"] + [f"conserved_{b}" for b in model_data.bands]
        _print_table(header, rows)


def _cmd_show(args: argparse.Namespace) -> int:
    from .model_data import load_models

    if not _have_matplotlib():
        raise ImportError("cdeblend show draws with matplotlib: pip install 'cdeblend[plot]'")
    model_data = load_models(args.models)
    images, _, mask, _ = _read_inputs(args)
    if images.shape[0] != len(model_data.bands):
        raise ValueError(f"the images have {images.shape[0]} bands, the models "
                         f"{len(model_data.bands)} ({', '.join(model_data.bands)})")
    if args.parent not in model_data.blends:
        known = sorted(model_data.blends)
        raise ValueError(f"parent {args.parent} is not in {args.models}; stored parents: "
                         f"{known[:20]}{' ...' if len(known) > 20 else ''}")
    blend = model_data.blends[args.parent]
    if blend.isolated or not blend.sources:
        raise ValueError(f"parent {args.parent} was not fitted (isolated): nothing to show")
    observation = model_data.observation(
        images, weights=None if mask is None else (~mask).astype(images.dtype))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _show_parent(observation, model_data, args.parent, out)
    print(f"panels written to {out.resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cdeblend`` command."""
    parser = argparse.ArgumentParser(
        prog="cdeblend",
        description="Deblend astronomical images (single-band SDSS-like and multi-band "
        "scarlet lite deblenders).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="deblend the bundled HSC COSMOS blend and write tables and pictures",
        description="Deblend the bundled real HSC COSMOS blend (5 bands, 7 peaks): the "
        "single-band deblender on the r and i bands and the multi-band deblender on all "
        "bands. Writes CSV tables and, with matplotlib, PNG pictures into --out.",
    )
    demo.add_argument("--out", default="cdeblend-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--bands", nargs="+", default=["r", "i"],
                      help="bands for the single-band deblender (default: r i)")
    demo.add_argument("--deblender", choices=["single", "multi", "both"], default="both",
                      help="which deblender(s) to run (default: %(default)s)")
    demo.add_argument("--no-plots", action="store_true", help="write tables only")
    demo.set_defaults(func=_cmd_demo)

    deb = sub.add_parser(
        "deblend",
        help="deblend every parent of FITS images; write catalog, models and pictures",
        description="Detect parents (or group the given peaks into parents), deblend each on "
        "a pool of workers and write catalog.fits, models.fits and PNG pictures into --out. "
        "Images: one FITS file per band, a multi-extension file or a (bands, y, x) cube. "
        "Pixel positions are 0-based (x = column, y = row).",
    )
    _add_image_args(deb)
    deb.add_argument("--psfs", nargs="+", required=True,
                     help="PSF image(s), odd-sized, one per band (files, extensions or a cube)")
    deb.add_argument("--peaks", help="peak list: FITS table or CSV with columns x, y")
    deb.add_argument("--deblender", choices=["auto", "multi", "single"], default="auto",
                     help="auto: single band for one band, multi band otherwise")
    deb.add_argument("--executor", choices=["serial", "threads", "dask"], default="threads",
                     help="how parents are spread over workers (default: %(default)s)")
    deb.add_argument("--workers", type=int, default=None, help="number of workers")
    deb.add_argument("--fit-isolated", action="store_true",
                     help="also fit parents with a single peak")
    deb.add_argument("--max-plots", type=int, default=10,
                     help="parents to draw panels for (default: %(default)s)")
    deb.add_argument("--out", default="cdeblend-out", help="output folder (default: %(default)s)")
    deb.add_argument("--no-plots", action="store_true", help="write no pictures")
    deb.add_argument("--quiet", action="store_true", help="no progress bar")
    deb.set_defaults(func=_cmd_deblend)

    show = sub.add_parser(
        "show",
        help="draw one parent's panels from a model file",
        description="Re-apportion the images with the stored models of one parent (no "
        "refitting) and draw, per source, the observation, model, residual and "
        "re-apportioned image.",
    )
    show.add_argument("--models", required=True, help="models.fits written by cdeblend deblend")
    show.add_argument("--parent", type=int, required=True, help="parent id")
    _add_image_args(show, noise_required=False)
    show.add_argument("--out", default="cdeblend-show", help="output folder (default: %(default)s)")
    show.set_defaults(func=_cmd_show)
    _add_survey_parser(sub)
    return parser


def _add_image_args(parser: argparse.ArgumentParser, noise_required: bool = True) -> None:
    parser.add_argument("--images", nargs="+", required=True,
                        help="image FITS file(s): one per band, multi-extension, or a cube")
    noise = parser.add_mutually_exclusive_group(required=noise_required)
    noise.add_argument("--variance", nargs="+",
                       help="variance FITS file(s), like --images; <= 0 or NaN means no data")
    noise.add_argument("--invvar", nargs="+",
                       help="inverse-variance FITS file(s); <= 0 means no data")
    parser.add_argument("--bands", nargs="+",
                        help="band names (default: BAND/FILTER header keywords, else 0, 1, ...)")


def _add_survey_parser(sub: argparse._SubParsersAction) -> None:
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
    where.add_argument("--workers", type=int, default=None,
                       help="worker processes of a local cluster (default: the cores)")
    survey.add_argument("--threads", type=int, default=None,
                        help="threads per patch (default: the cores shared by the workers)")
    survey.add_argument("--quiet", action="store_true", help="no line per finished patch")
    survey.set_defaults(func=_cmd_survey)


def _cmd_survey(args: argparse.Namespace) -> int:
    from .survey import deblend_survey

    rows = deblend_survey(args.manifest, args.out, scheduler=args.scheduler,
                          workers=args.workers, threads=args.threads, progress=not args.quiet)
    failed = [r["name"] for r in rows if r["status"] == "failed"]
    print(f"{len(rows) - len(failed)} of {len(rows)} patches finished; summary in "
          f"{Path(args.out).resolve() / 'summary.csv'}")
    if failed:
        print(f"cdeblend survey: {len(failed)} patch(es) failed: {', '.join(failed[:20])}"
              f"{' ...' if len(failed) > 20 else ''}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cdeblend`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except (ValueError, TypeError, OSError, ImportError, KeyError) as err:
        print(f"cdeblend {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
