"""``cdeblend demo``: deblend the bundled HSC COSMOS blend with both deblenders and write
tables (CSV) and, when matplotlib is installed, pictures (PNG) into a folder."""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Sequence
from pathlib import Path

from ..box import place
from .tables import flag_items, fmt, have_matplotlib, print_table, write_csv


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``cdeblend demo`` subcommand."""
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
    demo.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plots = not args.no_plots and have_matplotlib()
    if not args.no_plots and not plots:
        print("matplotlib is not installed: writing tables only (pip install 'cdeblend[plot]')")
    if args.deblender in ("single", "both"):
        _demo_single_band(out, args.bands, plots)
    if args.deblender in ("multi", "both"):
        _demo_multi_band(out, plots)
    print(f"results written to {out.resolve()}")
    return 0


def _demo_single_band(out: Path, bands: Sequence[str], plots: bool) -> None:
    from ..datasets import load_hsc_cosmos
    from ..single_band import SingleBandConfig, SingleBandDeblender

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
            flags = ";".join(sorted(name for name, on in flag_items(child.flags) if on))
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

                from ..display import plot_single_band_child

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
    write_csv(out / "single_band_fluxes.csv", header, rows)
    print_table(header, rows)


def _demo_multi_band(out: Path, plots: bool) -> None:
    from ..datasets import load_hsc_cosmos
    from ..deblender import DeblendConfig, Deblender
    from ..observation import Observation

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
    write_csv(out / "multi_band_fluxes.csv", header, rows)
    with open(out / "multi_band_summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["iterations", "loss", "converged", "time_ms"])
        writer.writerow(
            [
                result.iterations,
                fmt(float(result.loss)),
                bool(result.converged),
                f"{elapsed * 1e3:.2f}",
            ]
        )
    print(
        f"multi band ({''.join(bands)}): {len(rows)} sources, {result.iterations} iterations, "
        f"loss {result.loss:.6g}, converged {bool(result.converged)}, {elapsed * 1e3:.1f} ms"
    )
    print_table(header, rows)
    if plots:
        import matplotlib.pyplot as plt

        from ..display import plot_blend, plot_loss, plot_source_panels

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
