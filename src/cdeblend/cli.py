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
import inspect
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .box import place

if TYPE_CHECKING:  # pragma: no cover
    from .model_data import ModelData
    from .observation import Observation

__all__ = ["main"]

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

#: Exit status when nothing could be deblended because of the input (all parents skipped or
#: failed, or nothing detected).
EXIT_NOTHING_DEBLENDED = 3


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
            rows.append(
                [
                    band,
                    k,
                    int(child.peak[0]),
                    int(child.peak[1]),
                    child.template_kind,
                    float(child.flux),
                    flags,
                ]
            )
            if plots:
                import matplotlib.pyplot as plt

                from .display import plot_single_band_child

                template = place(child.template, child.template_box, image.shape)
                fig = plot_single_band_child(
                    image,
                    template,
                    conserved[k],
                    path=out / f"single_{band}_child{k}.png",
                    peak=child.peak,
                    title=f"{band} band, child {k} ({child.template_kind} template)",
                    label=str(k),
                )
                plt.close(fig)
        print(
            f"single band {band}: {len(result.children)} children in {elapsed * 1e3:.1f} ms, "
            f"stray flux {result.stray_flux:.4g}"
        )
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
    header = (
        ["source", "peak_y", "peak_x"]
        + [f"flux_{b}" for b in bands]
        + [f"conserved_flux_{b}" for b in bands]
    )
    rows = []
    for k, peak in enumerate(blend.peaks):
        rows.append(
            [k, int(peak[0]), int(peak[1])]
            + [float(v) for v in result.fluxes[k]]
            + [float(v) for v in result.conserved_fluxes[k]]
        )
    _write_csv(out / "multi_band_fluxes.csv", header, rows)
    with open(out / "multi_band_summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["iterations", "loss", "converged", "time_ms"])
        writer.writerow(
            [
                result.iterations,
                _fmt(float(result.loss)),
                bool(result.converged),
                f"{elapsed * 1e3:.2f}",
            ]
        )
    print(
        f"multi band ({''.join(bands)}): {len(rows)} sources, {result.iterations} iterations, "
        f"loss {result.loss:.6g}, converged {bool(result.converged)}, {elapsed * 1e3:.1f} ms"
    )
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
                blend.images,
                models[k],
                total,
                conserved[k],
                path=out / f"multi_source{k}.png",
                peak=blend.peaks[k],
                title=f"source {k}",
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


def _read_inputs(
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
    """:func:`_read_inputs` without the warnings filter."""
    from .fits_io import read_image_stack, variance_from_inverse

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
    from .fits_io import read_image_stack

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
    from .fits_io import psf_problems

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


def _psfs_from_args(args: argparse.Namespace, n_bands: int) -> np.ndarray:
    """PSFs from ``--psfs`` files or Gaussians of ``--psf-fwhm`` pixels."""
    from .fits_io import gaussian_psfs

    if args.psfs:
        return _read_psfs(args.psfs, n_bands)
    psfs = gaussian_psfs(args.psf_fwhm, n_bands)
    logger.info(
        "PSF: circular Gaussian(s) of FWHM %s px",
        ", ".join(f"{f:g}" for f in np.broadcast_to(args.psf_fwhm, (n_bands,))),
    )
    return psfs


def choose_model_psf_sigma(psfs: np.ndarray, default: float = 0.8) -> float:
    """The model PSF width: ``default`` unless a band's PSF is narrower, then narrower still.

    The multi-band fit convolves models made at the model PSF with difference kernels to
    each band's PSF, so the model PSF must be narrower than the sharpest band
    (docs/spec/multi_band.md 1.3; else
    :class:`cdeblend.Observation` refuses it). Widths are compared by the noise-equivalent
    area ``1 / sum(p^2)``; the narrower choice is the sigma of an integrated Gaussian with
    70 % of the sharpest band's equivalent sigma, rounded down to 0.05 px (as the
    observation's own suggestion), and at least 0.05 px.
    """
    from .observation import effective_area, integrated_gaussian_psf

    area = float(np.min(effective_area(psfs)))
    if area >= float(effective_area(integrated_gaussian_psf(default))) * (1 - 1e-3):
        return float(default)
    sig_obs = np.sqrt(max(area / (4 * np.pi) - 1 / 12, 0.0))
    sigma = max(np.floor(0.7 * sig_obs * 20) / 20, 0.05)
    while sigma > 0.05 and float(effective_area(integrated_gaussian_psf(sigma))) > area:
        sigma -= 0.05
    return float(round(sigma, 2))


def _subtract_background(images: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    """``--background auto``: subtract a mesh estimate per band; otherwise warn when the sky
    looks unsubtracted."""
    from .background import estimate_background, looks_unsubtracted

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


def _noise_variance(images: np.ndarray, bands: Sequence[str]) -> np.ndarray:
    """A constant variance per band: the square of the sigma-clipped (3 sigma, iterated)
    standard deviation of its pixels. It holds the sky noise only (no source Poisson term)."""
    from .background import clipped_stats

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


def _detect_parents(
    images: np.ndarray, variance: np.ndarray, psfs: np.ndarray, args: argparse.Namespace
) -> list:
    """Parents from :func:`cdeblend.detect` with the command's detection options."""
    from .detection import detect

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
    from .fits_io import read_conv_kernel

    path = getattr(args, "filter_kernel", None)
    if path is None:
        return None
    if args.filter == "none":
        raise ValueError(
            "--filter-kernel needs a filter: --filter conv (SExtractor-like) or "
            "--filter matched, not --filter none"
        )
    return read_conv_kernel(path)


def _warn_one_big_parent(parents: Sequence, shape: tuple[int, int], background: str) -> None:
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


def _cmd_deblend(args: argparse.Namespace) -> int:
    from .catalog import CatalogConfig, deblend_catalog, parents_from_peaks, write_catalog
    from .fits_io import read_flux_unit, read_peak_table, read_wcs
    from .model_data import save_models

    images, variance, mask, bands = _read_inputs(args)
    images = _subtract_background(images, args)
    if variance is None:
        variance = _noise_variance(images, bands)
    psfs = _psfs_from_args(args, images.shape[0])
    kind = (
        args.deblender
        if args.deblender != "auto"
        else ("single" if images.shape[0] == 1 else "multi")
    )
    sigma = args.model_psf_sigma
    if sigma is None:
        sigma = choose_model_psf_sigma(psfs)
        if kind == "multi" and sigma != 0.8:
            logger.info(
                "model PSF sigma %.2f px: the default 0.8 px is wider than the "
                "sharpest band's PSF (set it with --model-psf-sigma)",
                sigma,
            )
    config = CatalogConfig(
        deblender=args.deblender, skip_isolated=not args.fit_isolated, model_psf_sigma=sigma
    )
    if args.peaks:
        peaks, used = read_peak_table(args.peaks)
        logger.info("peaks: %d from %s, columns %s", len(peaks), args.peaks, used)
        # grouped here as deblend_catalog would (same rule and settings), to keep the
        # footprints for the pictures
        parents = parents_from_peaks(
            images, variance, peaks, config.footprint_snr, config.footprint_grow
        )
    else:
        parents = _detect_parents(images, variance, psfs, args)
        _warn_one_big_parent(parents, images.shape[1:], args.background)
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
    if not args.no_plots and _have_matplotlib():
        _draw_run(images, variance, psfs, mask, catalog, model_data, kind, out, args, parents)
    print(f"catalog, models{'' if args.no_plots else ' and pictures'} written to {out.resolve()}")
    problem = _nothing_deblended(counts)
    if problem:
        logger.error("%s", problem)
        return EXIT_NOTHING_DEBLENDED
    return 0


def _progress(items: Sequence, desc: str, enabled: bool) -> Sequence:
    """``items`` wrapped in a tqdm bar when tqdm is installed and ``enabled``."""
    if not enabled or len(items) < 2:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit="parent" if desc != "show" else "source")


def _plot_order(catalog: object, max_plots: int) -> list[int]:
    """Ids of the fitted parents with children, brightest (summed footprint flux) first,
    then largest; at most ``max_plots``."""
    parent = np.asarray(catalog["is_parent"], dtype=bool)
    ok = parent & (np.asarray(catalog["n_children"]) > 0)
    ids = np.asarray(catalog["id"])[ok]
    if ids.size == 0:
        return []
    flux = np.asarray(catalog["flux_footprint"], dtype=float).reshape(len(parent), -1)
    flux = np.nansum(flux[ok], axis=1)
    area = (np.asarray(catalog["box_height"]) * np.asarray(catalog["box_width"]))[ok]
    order = np.lexsort((-area, -flux))
    return [int(i) for i in ids[order][: max(int(max_plots), 0)]]


def _draw_run(
    images: np.ndarray,
    variance: np.ndarray,
    psfs: np.ndarray,
    mask: np.ndarray | None,
    catalog: object,
    model_data: ModelData,
    kind: str,
    out: Path,
    args: argparse.Namespace,
    parents: Sequence,
) -> None:
    """field.png and the panels of the ``--max-plots`` brightest parents."""
    import matplotlib.pyplot as plt

    from .display import plot_field

    images, mask = _drawable(images, mask)
    order = _plot_order(catalog, args.max_plots)
    if kind == "multi":
        observation = model_data.observation(
            images, weights=None if mask is None else (~_mask2d(mask, images)).astype(images.dtype)
        )
        total = _field_model(model_data, observation)
        for pid in _progress(order, "panels", not args.quiet):
            _show_parent(observation, model_data, pid, out, quiet=True)
    else:
        total, panels = _single_band_models(
            images[0], variance[0], psfs[0], mask, catalog, parents, set(order), not args.quiet
        )
        for pid in order:
            if pid in panels:
                _show_single_parent(images[0], total, panels[pid], pid, out)
    fig = plot_field(
        images,
        total[None] if total.ndim == 2 else total,
        catalog,
        unmodelled=_unmodelled(parents, catalog, images.shape[1:]),
        model_name="model" if kind == "multi" else "sum of templates",
    )
    fig.savefig(out / "field.png", dpi=100)
    plt.close(fig)


def _unmodelled(parents: Sequence, catalog: object, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: footprints of the parents without children (isolated, skipped, failed)."""
    with_kids = set(_child_ids(catalog))
    out = np.zeros(shape, dtype=bool)
    for p in parents:
        if int(p.id) not in with_kids:
            y0, x0, h, w = (int(v) for v in p.box)
            fp = np.ones((h, w), bool) if p.footprint is None else np.asarray(p.footprint, bool)
            out[y0 : y0 + h, x0 : x0 + w] |= fp
    return out


def _drawable(images: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Images with no-data pixels (NaN, inf) set to 0 and added to the (B, H, W) mask:
    matplotlib's stretches fail on non-finite values, and the re-apportioned pictures must
    give those pixels no weight."""
    bad = ~np.isfinite(images)
    if not bad.any():
        return images, mask
    mask = bad if mask is None else (bad | _mask2d(mask, images))
    return np.where(bad, 0.0, images), mask


def _mask2d(mask: np.ndarray, images: np.ndarray) -> np.ndarray:
    """A (B, H, W) or (H, W) no-data mask as (B, H, W) bool."""
    m = np.asarray(mask) != 0
    return np.broadcast_to(m, images.shape) if m.ndim == 2 else m


def _child_ids(catalog: object) -> dict[int, dict[int, int]]:
    """parent id -> {index of the peak in the parent's peak list: the child's catalog id}."""
    parent = np.asarray(catalog["is_parent"], dtype=bool)
    out: dict[int, dict[int, int]] = {}
    for pid, peak_id, cid in zip(
        np.asarray(catalog["parent_id"])[~parent],
        np.asarray(catalog["peak_id"])[~parent],
        np.asarray(catalog["id"])[~parent],
        strict=True,
    ):
        out.setdefault(int(pid), {})[int(peak_id)] = int(cid)
    return out


def _single_band_models(
    image: np.ndarray,
    variance: np.ndarray,
    psf: np.ndarray,
    mask: np.ndarray | None,
    catalog: object,
    parents: Sequence,
    keep: set[int],
    progress: bool,
) -> tuple[np.ndarray, dict]:
    """Re-run the single-band deblender on every deblended parent for the field's model and
    the panels of the parents in ``keep``: its templates are not stored, and it is fast.

    The same cut-out, footprint, peaks and settings as the catalog's run give the same
    templates.
    """
    from .single_band import SingleBandConfig, SingleBandDeblender

    deb = SingleBandDeblender(SingleBandConfig())
    total = np.zeros(image.shape)
    panels: dict[int, tuple] = {}
    kids = _child_ids(catalog)
    m2 = None if mask is None else np.any(np.asarray(mask).reshape(-1, *image.shape) != 0, 0)
    todo = [p for p in parents if int(p.id) in kids]
    for p in _progress(todo, "models", progress):
        pid = int(p.id)
        y0, x0, h, w = (int(v) for v in p.box)
        sl = (slice(y0, y0 + h), slice(x0, x0 + w))
        try:
            res = deb.deblend(
                image[sl],
                variance[sl],
                psf,
                np.asarray(p.peaks) - (y0, x0),
                footprint=p.footprint,
                mask=None if m2 is None else m2[sl],
            )
        except (ValueError, TypeError) as err:
            logger.warning("parent %s: not redrawn for the pictures (%s)", pid, err)
            continue
        tmpl = np.zeros((len(res.children), h, w))
        cons = np.zeros((len(res.children), h, w))
        for i, ch in enumerate(res.children):
            tmpl[i] = place(np.asarray(ch.template) * ch.weight, ch.template_box, (h, w))
            cons[i] = place(ch.conserved, ch.box, (h, w))
        total[sl] += tmpl.sum(axis=0)
        if pid in keep:
            labels = [str(kids[pid].get(int(c.index), "?")) for c in res.children]
            peaks_local = np.array([c.peak for c in res.children]).reshape(-1, 2)
            panels[pid] = ((y0, x0, h, w), tmpl, cons, peaks_local, labels)
    return total, panels


def _show_single_parent(
    image: np.ndarray, total: np.ndarray, panel: tuple, pid: int, out: Path
) -> None:
    """One PNG per child of a single-band parent: image, template, residual of all
    templates, conserved image."""
    import matplotlib.pyplot as plt

    from .display import plot_single_band_child

    (y0, x0, h, w), tmpl, cons, peaks, labels = panel
    cut = image[y0 : y0 + h, x0 : x0 + w]
    for k in range(len(tmpl)):
        fig = plot_single_band_child(
            cut,
            tmpl[k],
            cons[k],
            path=out / f"parent{pid}_source{k}.png",
            peak=peaks[k],
            title=f"parent {pid}, child {k} (catalog id {labels[k]})",
            label=labels[k],
            total_template=total[y0 : y0 + h, x0 : x0 + w],
            origin=(y0, x0),
        )
        plt.close(fig)


def _show_parent(
    observation: Observation,
    model_data: ModelData,
    pid: int,
    out: Path,
    quiet: bool = False,
    progress: bool = False,
) -> None:
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
    for k in _progress(range(len(blend.sources)), "show", progress):
        src = blend.sources[k]
        peak = src.components[0].peak if src.components else (y0 + h // 2, x0 + w // 2)
        fig = plot_source_panels(
            cut,
            models[k],
            total,
            conserved[k],
            path=out / f"parent{pid}_source{k}.png",
            peak=(peak[0] - y0, peak[1] - x0),
            title=f"parent {pid}, source {k} (catalog id {src.id})",
            label=str(src.id),
            origin=(y0, x0),
        )
        plt.close(fig)
        rows.append(
            [k, int(peak[0]), int(peak[1])] + [float(v) for v in conserved[k].sum(axis=(1, 2))]
        )
    if not quiet:
        header = ["source", "peak_y", "peak_x"] + [f"conserved_{b}" for b in model_data.bands]
        _print_table(header, rows)


def _cmd_show(args: argparse.Namespace) -> int:
    from .model_data import load_models

    if not _have_matplotlib():
        raise ImportError("cdeblend show draws with matplotlib: pip install 'cdeblend[plot]'")
    model_data = load_models(args.models)
    images, _, mask, _ = _read_inputs(args)
    images = _subtract_background(images, args)
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
    images, mask = _drawable(images, mask)
    observation = model_data.observation(
        images, weights=None if mask is None else (~_mask2d(mask, images)).astype(images.dtype)
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _show_parent(observation, model_data, args.parent, out, progress=not args.quiet)
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
    demo.add_argument(
        "--bands",
        nargs="+",
        default=["r", "i"],
        help="bands for the single-band deblender (default: r i)",
    )
    demo.add_argument(
        "--deblender",
        choices=["single", "multi", "both"],
        default="both",
        help="which deblender(s) to run (default: %(default)s)",
    )
    demo.add_argument("--no-plots", action="store_true", help="write tables only")
    demo.set_defaults(func=_cmd_demo)

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
    _add_image_args(deb, noise_required=False)
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
    deb.add_argument(
        "--model-psf-sigma",
        type=float,
        default=None,
        help="multi band: width (pixels) of the model PSF the sources are made "
        "at; default 0.8, or narrower than the sharpest band's PSF when that is "
        "narrower (logged)",
    )
    _add_background_args(deb)
    det = deb.add_argument_group(
        "detection", "used when no --peaks are given; unset options keep cdeblend.detect's defaults"
    )
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
    show.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_background_args(show)
    show.set_defaults(func=_cmd_show)
    _add_survey_parser(sub)
    return parser


def _add_background_args(parser: argparse.ArgumentParser) -> None:
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


def _add_image_args(parser: argparse.ArgumentParser, noise_required: bool = True) -> None:
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
    survey.set_defaults(func=_cmd_survey)


def _cmd_survey(args: argparse.Namespace) -> int:
    from .survey import deblend_survey

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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
