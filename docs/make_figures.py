"""Regenerate the figures and the numbers of ``docs/overview.md``.

Run from the repository root::

    python docs/make_figures.py --out docs/images

Everything comes from the HSC COSMOS blend bundled with cdeblend
(:func:`cdeblend.load_hsc_cosmos`). The figures are written as small PNG files with
matplotlib's Agg backend, and the numbers quoted in the tutorial (fluxes, template kinds,
PSF-fit chi^2, iterations, losses, times) are printed as markdown tables to paste into it.
Apart from the wall-clock times, two runs print the same text and write the same PNG files.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.colors import AsinhNorm  # noqa: E402

import cdeblend as cdb  # noqa: E402
from cdeblend import display  # noqa: E402
from cdeblend.lost import lost_sources  # noqa: E402

DPI = 80
# PNG metadata without the matplotlib version, so that the files depend only on the pixels.
SAVE = {"dpi": DPI, "metadata": {"Software": None}}
BAND = "r"  # the single-band part of the tutorial works on the r band


# ---------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------


def _save(fig, out: Path, name: str, written: list[str]) -> None:
    fig.savefig(out / name, **SAVE)
    plt.close(fig)
    written.append(name)


def _label_peaks(ax, peaks: np.ndarray, offset: tuple[int, int] = (0, 0), only=None) -> None:
    """Number the peaks in white with a dark outline (readable on bright cores too)."""
    stroke = [patheffects.withStroke(linewidth=2.5, foreground="black")]
    for k, (py, px) in enumerate(np.asarray(peaks)):
        if only is not None and k not in only:
            continue
        ax.text(
            px - offset[1],
            py - offset[0],
            str(k),
            color="white",
            fontsize=9,
            ha="center",
            va="center",
            path_effects=stroke,
            clip_on=True,
        )


def _window(peak: Sequence[int], shape: tuple[int, int], half: int) -> tuple[slice, slice]:
    """A (2 half + 1)^2 window centred on ``peak``, shifted to stay inside ``shape``."""
    out = []
    for c, n in zip(peak, shape, strict=True):
        lo = int(min(max(c - half, 0), max(n - 2 * half - 1, 0)))
        out.append(slice(lo, min(lo + 2 * half + 1, n)))
    return out[0], out[1]


def _dense(box: Sequence[int], values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Paste ``values`` given on ``box`` = (y0, x0, h, w) into a zero (H, W) image."""
    out = np.zeros(shape)
    y0, x0, h, w = box
    ya, yb, xa, xb = max(y0, 0), min(y0 + h, shape[0]), max(x0, 0), min(x0 + w, shape[1])
    out[ya:yb, xa:xb] = values[ya - y0 : yb - y0, xa - x0 : xb - x0]
    return out


def _grey_panels(
    panels: Sequence[np.ndarray],
    titles: Sequence[str],
    peaks: np.ndarray | None = None,
    offset: tuple[int, int] = (0, 0),
    vmax: float | None = None,
    linear_width: float | None = None,
    suptitle: str | None = None,
    size: float = 2.6,
):
    """Single-band panels on one asinh scale (symmetric about 0, so residuals show both signs).

    ``vmax`` defaults to the largest |value| of the first panel (the image), so that a
    template and the image it came from are compared on the same scale; the scale is
    linear up to ``linear_width`` (default ``vmax / 50``) and logarithmic beyond.
    """
    vmax = float(np.max(np.abs(panels[0]))) if vmax is None else vmax
    linear_width = vmax / 50 if linear_width is None else linear_width
    norm = AsinhNorm(linear_width=linear_width, vmin=-vmax, vmax=vmax)
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size + 0.45))
    for ax, panel, title in zip(np.atleast_1d(axes), panels, titles, strict=True):
        ax.imshow(panel, origin="lower", cmap="RdGy_r", norm=norm, interpolation="nearest")
        if peaks is not None:
            _label_peaks(ax, peaks, offset)
            ax.set_xlim(-0.5, panel.shape[1] - 0.5)
            ax.set_ylim(-0.5, panel.shape[0] - 0.5)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def _best_time(fn: Callable[[], object], repeat: int) -> float:
    """Shortest wall-clock time of ``fn`` in ms over ``repeat`` calls, after a warm-up call.

    The shortest time is the least disturbed by other work on the machine.
    """
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.min(times))


def _expect(condition: bool, message: str) -> None:
    """Stop when the deblender no longer does what the tutorial's text says it does."""
    if not condition:
        raise RuntimeError(f"the tutorial's story no longer holds: {message}")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# the blend
# ---------------------------------------------------------------------------------------


def blend_figures(blend: cdb.DemoBlend, out: Path, written: list[str]) -> None:
    """Colour image with numbered peaks, and the r-band image."""
    fig = display.plot_blend(blend.images, peaks=None, title="HSC COSMOS blend (g, r, i)")
    _label_peaks(fig.axes[0], blend.peaks)
    _save(fig, out, "blend_color.png", written)

    r = blend.band_index(BAND)
    noise = float(np.sqrt(np.median(blend.variance[r])))
    fig = _grey_panels(
        [blend.images[r]], ["r band"], peaks=blend.peaks, size=4.0, linear_width=noise
    )
    _save(fig, out, "blend_r.png", written)


# ---------------------------------------------------------------------------------------
# single band
# ---------------------------------------------------------------------------------------


def single_band(
    blend: cdb.DemoBlend, out: Path, written: list[str], timing: bool = True
) -> tuple[list[str], list]:
    """Single-band figures (templates, PSF template, children); returns (text, timing rows)."""
    r = blend.band_index(BAND)
    image, variance, psf = blend.images[r], blend.variance[r], blend.psfs[r]
    shape = image.shape
    peaks = blend.peaks
    noise = float(np.sqrt(np.median(variance)))  # linear part of the stretch: +-1 sigma

    # The walk-through follows the LSST task's settings on the footprint of every positive
    # pixel connected to a peak (the code blocks of docs/overview.md run the same); the
    # defaults, SingleBandConfig(), differ and are compared in the last table.
    deblender = cdb.SingleBandDeblender(_walkthrough_config(keep_stages=True))
    res = deblender.deblend(image, variance, psf, peaks)
    children = {c.index: c for c in res.children}
    # The same run without the monotonic projection: the LSST overview's templates.
    plain_config = _walkthrough_config(monotonic_template=False, keep_stages=True)
    plain = cdb.SingleBandDeblender(plain_config)
    res_plain = plain.deblend(image, variance, psf, peaks)
    children_plain = {c.index: c for c in res_plain.children}

    def stage(child, name: str) -> np.ndarray:
        box, values = child.stages[name][:2]
        return _dense(box, values, shape)

    # --- source 0: the symmetric template and the residual -------------------------------
    c0 = children[0]
    sym0 = stage(c0, "symmetric")
    ys, xs = _window(c0.peak, shape, 13)
    off = (ys.start, xs.start)
    fig = _grey_panels(
        [image[ys, xs], sym0[ys, xs], (image - sym0)[ys, xs], res.templates()[0][ys, xs]],
        ["r image", "symmetric template", "image - symmetric", "final template"],
        peaks=peaks,
        offset=off,
        linear_width=noise,
        suptitle="source 0",
    )
    _save(fig, out, "template0.png", written)

    # --- sources 2 and 3: symmetric and final templates, with and without monotonicity ---
    for k, half in ((2, 11), (3, 14)):
        ck, cp = children[k], children_plain[k]
        ys, xs = _window(ck.peak, shape, half)
        off = (ys.start, xs.start)
        sym = stage(ck, "symmetric")
        no_mono = res_plain.templates()[k]
        final = res.templates()[k]
        _expect(
            ck.template_kind == "monotonic" and cp.template_kind == "symmetric",
            f"source {k} should have a monotonic (default) and a symmetric template",
        )
        # Scale on the source's own peak so that its faint template is visible.
        vmax = float(sym.max())
        fig = _grey_panels(
            [image[ys, xs], sym[ys, xs], no_mono[ys, xs], final[ys, xs]],
            ["r image", "symmetric template", "+ ramp, median (no monotonic)", "final (monotonic)"],
            peaks=peaks,
            offset=off,
            vmax=vmax,
            linear_width=noise,
            suptitle=f"source {k}",
        )
        _save(fig, out, f"template{k}.png", written)

    # --- a PSF template for a faint peak ---------------------------------------------------
    k_psf = 6
    cpsf = children[k_psf]
    _expect(cpsf.template_kind == "psf", f"source {k_psf} should get a PSF template")
    ys, xs = _window(cpsf.peak, shape, 8)
    off = (ys.start, xs.start)
    tpsf = res.templates()[k_psf]
    child = res.conserved_images()[k_psf]
    fig = _grey_panels(
        [image[ys, xs], tpsf[ys, xs], (image - tpsf)[ys, xs], child[ys, xs]],
        ["r image", "PSF template", "image - PSF template", "child (re-apportioned)"],
        peaks=peaks,
        offset=off,
        vmax=float(tpsf.max()) * 1.5,
        linear_width=noise,
        suptitle=f"source {k_psf}",
    )
    _save(fig, out, f"psf_template{k_psf}.png", written)

    # --- re-apportioned children 0-3 -----------------------------------------------------
    conserved = res.conserved_images()
    templates = res.templates()
    conserved_plain = res_plain.conserved_images()
    for k in range(4):
        ys, xs = _window(children[k].peak, shape, 13)
        off = (ys.start, xs.start)
        vmax = float(max(templates[k].max(), conserved[k].max()))
        fig = _grey_panels(
            [image[ys, xs], templates[k][ys, xs], conserved[k][ys, xs], conserved_plain[k][ys, xs]],
            ["r image", "template", "child (monotonic)", "child (no monotonic)"],
            peaks=peaks,
            offset=off,
            vmax=vmax,
            linear_width=noise,
            suptitle=f"source {k}",
        )
        _save(fig, out, f"single_child{k}.png", written)

    # --- numbers -----------------------------------------------------------------------------
    res_def = cdb.SingleBandDeblender(cdb.SingleBandConfig()).deblend(image, variance, psf, peaks)
    children_def = {c.index: c for c in res_def.children}
    rows = []
    for k in range(len(peaks)):
        c, cp, cd = children.get(k), children_plain.get(k), children_def.get(k)
        q = c.psf_fit if c is not None else {}
        rows.append(
            [
                k,
                f"({peaks[k][0]}, {peaks[k][1]})",
                c.template_kind if c else "-",
                f"{c.flux:.1f}" if c else "-",
                ", ".join(sorted(c.flags)) if c else "-",
                f"{q['q1']:.2f}" if "q1" in q else "-",
                f"{q['q2']:.2f}" if "q2" in q else "-",
                cp.template_kind if cp else "-",
                f"{cp.flux:.1f}" if cp else "-",
                f"{cd.flux:.1f}" if cd else "-",
            ]
        )
    header = [
        "source",
        "peak (y, x)",
        "template",
        "flux",
        "flags",
        "chi2/dof fit 1",
        "chi2/dof fit 2",
        "template (no monotonic)",
        "flux (no monotonic)",
        "flux (SingleBandConfig())",
    ]
    fp_flux = float(np.sum(image[_footprint_slices(res)][res.footprint]))
    fp_flux_def = float(np.sum(image[_footprint_slices(res_def)][res_def.footprint]))
    halo = _flux_beyond(conserved[HALO_SOURCE], peaks[HALO_SOURCE])
    # Light centroid of source 0 (11 x 11 box on its peak) against its integer peak.
    py, px = peaks[0]
    cut = image[py - 5 : py + 6, px - 5 : px + 6]
    yy, xx = np.mgrid[py - 5 : py + 6, px - 5 : px + 6]
    cy, cx = float((cut * yy).sum() / cut.sum()), float((cut * xx).sum() / cut.sum())
    lines = [
        f"### single band ({BAND} band, SingleBandConfig.lsst(footprint_nsigma=0.0), the same "
        "with monotonic_template=False, and SingleBandConfig())",
        "",
        f"source 0: peak pixel (y, x) = ({py}, {px}), light centroid ({cy:.2f}, {cx:.2f})",
        f"source {HALO_SOURCE}: child flux beyond {HALO_RADIUS} px of its peak {halo:.1f} "
        f"of {conserved[HALO_SOURCE].sum():.1f}",
        "",
        _table(header, rows),
        "",
        _table(
            ["run", "children", "sum of children", "stray flux", "footprint flux"],
            [
                [
                    "lsst(footprint_nsigma=0.0)",
                    len(res.children),
                    f"{sum(c.flux for c in res.children):.1f}",
                    f"{res.stray_flux:.2f}",
                    f"{fp_flux:.1f}",
                ],
                [
                    "the same, no monotonic",
                    len(res_plain.children),
                    f"{sum(c.flux for c in res_plain.children):.1f}",
                    f"{res_plain.stray_flux:.2f}",
                    f"{fp_flux:.1f}",
                ],
                [
                    "SingleBandConfig() (defaults)",
                    len(res_def.children),
                    f"{sum(c.flux for c in res_def.children):.1f}",
                    f"{res_def.stray_flux:.2f}",
                    f"{fp_flux_def:.1f}",
                ],
            ],
        ),
    ]
    if not timing:
        return lines, []
    times = []
    for name, config in (
        ("lsst(footprint_nsigma=0.0)", _walkthrough_config()),
        ("SingleBandConfig()", cdb.SingleBandConfig()),
    ):
        fast = cdb.SingleBandDeblender(config)
        ms = _best_time(lambda fast=fast: fast.deblend(image, variance, psf, peaks), repeat=21)
        times.append([f"single band, {name}", f"{ms:.1f}"])
    return lines, times


def _walkthrough_config(**overrides) -> cdb.SingleBandConfig:
    """The single-band walk-through's settings: the LSST task's, footprint above 0 sigma."""
    return cdb.SingleBandConfig.lsst(footprint_nsigma=0.0, **overrides)


HALO_SOURCE, HALO_RADIUS = 2, 5  # how far source 2's child reaches (section 4 and 7)


def _flux_beyond(child: np.ndarray, peak: Sequence[int], radius: float = HALO_RADIUS) -> float:
    """Flux of a (H, W) child farther than ``radius`` pixels from ``peak``."""
    yy, xx = np.indices(child.shape)
    return float(child[np.hypot(yy - peak[0], xx - peak[1]) > radius].sum())


def _footprint_slices(res) -> tuple[slice, slice]:
    y0, x0, h, w = res.footprint_box
    return slice(y0, y0 + h), slice(x0, x0 + w)


# ---------------------------------------------------------------------------------------
# multi band
# ---------------------------------------------------------------------------------------

# The runs compared in the tutorial: name -> DeblendConfig keywords.
# Runs of hundreds of iterations take round-off-dependent paths once the loss is flat (see
# docs/precision.md): their rows, and every number computed from them, are marked with
# MACHINE_MARK in the printed tables and the tutorial, and tests/test_docs.py compares them
# with a tolerance instead of verbatim. The defaults' fit (50 iterations) is not marked: on
# the image with the last bit of 5 pixel values changed, for 8 choices of the 5 pixels, it
# stopped at the same iteration with the same printed numbers, and its fluxes moved by less
# than 1e-4 (the reference's, compared verbatim too, by 2.4e-4); the long fit stopped after
# 222 or 248 iterations.
EARLIER = "earlier defaults: peak_carry=0, e_rel=1e-4"
LONG = 'e_rel=1e-5, max_iter=1000, convergence="settled"'
MACHINE_DEPENDENT = (EARLIER, LONG)
MACHINE_MARK = " (*)"
RUNS = {
    "defaults": cdb.DeblendConfig(),
    "reference (LSST pipeline)": cdb.DeblendConfig.reference(),
    # what the reference's fit would return with keep_best (its lowest loss)
    "reference, keep_best=True": cdb.DeblendConfig.reference(keep_best=True),
    # the defaults with the reference's one-step convergence test: the old early stop
    "e_rel=1e-3, converge_window=0": cdb.DeblendConfig(e_rel=1e-3, converge_window=0),
    "e_rel=1e-3": cdb.DeblendConfig(e_rel=1e-3),
    # a long fit: the "settled" test waits for the last loss to come back to the lowest
    LONG: cdb.DeblendConfig(e_rel=1e-5, max_iter=1000, convergence="settled"),
    # the multi-band defaults before the peak carry (rescue_lost repairs nothing here)
    EARLIER: cdb.DeblendConfig(
        peak_carry=0.0, e_rel=1e-4, rescue_lost=False, convergence="settled", converge_window=3
    ),
    # the defaults before the "lowest" test (the last loss had to settle too)
    'convergence="settled", converge_window=3': cdb.DeblendConfig(
        convergence="settled", converge_window=3
    ),
}
# The defaults again on the image with 5 pixel values moved by one unit in the last place:
# a round-off-sized change of the input, to show how much the stop depends on round-off.
PERTURBED = "defaults, last bit of 5 pixels changed"


def _nudged(images: np.ndarray, n: int = 5, seed: int = 1) -> np.ndarray:
    """A copy of ``images`` with ``n`` random pixel values moved to the next float up."""
    out = images.copy()
    flat = out.reshape(-1)
    idx = np.random.default_rng(seed).choice(flat.size, n, replace=False)
    flat[idx] = np.nextafter(flat[idx], np.inf)
    return out


def multi_band(
    blend: cdb.DemoBlend, out: Path, written: list[str], timing: bool = True
) -> tuple[list[str], list]:
    """Multi-band figures (source panels, loss); returns (text, timing rows)."""
    obs = cdb.Observation(blend.images, blend.variance, blend.psfs, bands=blend.bands)
    results = {
        name: cdb.Deblender(config).deblend(obs, blend.peaks) for name, config in RUNS.items()
    }
    nudged = cdb.Observation(_nudged(blend.images), blend.variance, blend.psfs, bands=blend.bands)
    results[PERTURBED] = cdb.Deblender(RUNS["defaults"]).deblend(nudged, blend.peaks)
    res = results["defaults"]
    models = res.models()
    total = models.sum(axis=0)
    conserved = res.conserved_images()
    shape = blend.images.shape[1:]

    # --- per-source panels: observation / model / residual / re-apportioned ------------------
    for k in range(4):
        ys, xs = _window(blend.peaks[k], shape, 12)
        sl = (slice(None), ys, xs)
        fig = display.plot_source_panels(
            blend.images[sl],
            models[k][sl],
            total[sl],
            conserved[k][sl],
            peak=None,
            title=f"source {k}",
        )
        _label_peaks(fig.axes[0], blend.peaks, (ys.start, xs.start), only=[k])
        _save(fig, out, f"multi_source{k}.png", written)

    # --- loss per iteration ----------------------------------------------------------------
    fig = display.plot_loss(res.loss_history, title="loss per iteration (defaults)")
    _save(fig, out, "multi_loss.png", written)

    long = results[LONG]
    n_data = int(np.count_nonzero(np.asarray(obs.weights) > 0))
    fig, ax = plt.subplots(figsize=(5.5, 3.3))
    ax.plot(results[EARLIER].loss_history, lw=1, color="C2", label=EARLIER)
    ax.plot(long.loss_history, lw=1, color="0.2", label=LONG)
    ax.plot(res.loss_history, lw=1.5, color="C3", label="defaults (e_rel=3e-4, lowest loss over 6)")
    ref = results["reference (LSST pipeline)"]
    ax.plot(ref.loss_history, lw=1.5, color="C0", label="reference (LSST pipeline)")
    ax.axhline(n_data / 2, color="k", ls=":", lw=1, label="pixels / 2 (noise-only residual)")
    ax.set_yscale("log")
    ax.set_ylim(0.9 * n_data / 2, 3e4)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.set_title("loss per iteration: short and long fits", fontsize=10)
    fig.tight_layout()
    _save(fig, out, "multi_loss_long.png", written)

    # --- numbers -----------------------------------------------------------------------------
    bands = list(blend.bands)
    comp = [len(s.components) for s in res.blend.sources]
    model_rows = [[k, comp[k]] + [f"{v:.1f}" for v in res.fluxes[k]] for k in range(len(comp))]
    cons_rows = [[k] + [f"{v:.1f}" for v in res.conserved_fluxes[k]] for k in range(len(comp))]
    run_rows = []
    for name, r in results.items():
        label = name + (MACHINE_MARK if name in MACHINE_DEPENDENT else "")
        run_rows.append(
            [
                label,
                r.iterations,
                "yes" if r.converged else "no",
                r.rescued,
                f"{r.loss:.0f}",
                f"{2 * r.loss / n_data:.3f}",
                " / ".join(f"{v:.1f}" for v in r.fluxes[:4, bands.index(BAND)]),
                " / ".join(f"{v:.1f}" for v in r.conserved_fluxes[:4, bands.index(BAND)]),
            ]
        )
    # How far the short fit is from the long one, per source (largest over the bands).
    d_model = np.max(np.abs(res.fluxes / long.fluxes - 1), axis=1)
    d_cons = np.max(np.abs(res.conserved_fluxes / long.conserved_fluxes - 1), axis=1)
    change_rows = [
        [k, f"{100 * d_model[k]:.1f}%", f"{100 * d_cons[k]:.1f}%"] for k in range(len(comp))
    ]
    h = res.loss_history
    lines = [
        "### multi band (DeblendConfig(), bands " + "".join(bands) + ")",
        "",
        _table(["source", "components"] + [f"model {b}" for b in bands], model_rows),
        "",
        _table(["source"] + [f"re-apportioned {b}" for b in bands], cons_rows),
        "",
        "image flux per band: "
        + ", ".join(
            f"{b} {v:.1f}" for b, v in zip(bands, blend.images.sum(axis=(1, 2)), strict=True)
        ),
        _loss_line("defaults", res),
        "loss at iterations 0, 10, 20, 30, 40, 100, 200: "
        + ", ".join(f"{h[i]:.0f}" for i in (0, 10, 20, 30, 40, 100, 200) if i < len(h)),
        _loss_line("reference (LSST pipeline)", results["reference (LSST pipeline)"]),
        f"pixel values with weight > 0 (all bands): {n_data}",
        f"source {HALO_SOURCE}, r-band child flux beyond {HALO_RADIUS} px of its peak: "
        f"{_flux_beyond(conserved[HALO_SOURCE, bands.index(BAND)], blend.peaks[HALO_SOURCE]):.1f}"
        f" of {conserved[HALO_SOURCE, bands.index(BAND)].sum():.1f}",
        "",
        "### convergence: the same blend fitted with different stopping rules",
        "",
        _table(
            [
                "run",
                "iterations",
                "converged",
                "rescued",
                "loss",
                "2 loss / pixels",
                f"model flux {BAND}, sources 0-3",
                f"re-apportioned {BAND}, sources 0-3",
            ],
            run_rows,
        ),
        "",
        "peak S/N (matched filter, all bands): " + ", ".join(f"{v:.0f}" for v in res.snr),
        _lost_line(results, RUNS["defaults"]),
        "",
        f"largest change over the bands, defaults vs {LONG}:",
        "",
        _table(["source" + MACHINE_MARK, "model flux", "re-apportioned flux"], change_rows),
        "",
        f"rows and tables marked{MACHINE_MARK} depend on the machine's round-off: fits of "
        "hundreds of iterations",
    ]
    times = []
    for name, config in RUNS.items() if timing else ():
        deb = cdb.Deblender(config)
        repeat = 3 if config.max_iter > 300 else 7
        ms = _best_time(lambda deb=deb: deb.deblend(obs, blend.peaks), repeat=repeat)
        times.append([f"multi band, {name}", f"{ms:.0f}"])
    return lines, times


def _lost_line(results: dict, config: cdb.DeblendConfig) -> str:
    """Which sources rescue_lost's test finds lost at the end of each run."""
    lost = {
        name: lost_sources(r.blend, r.snr, config.rescue_lost_snr, config.rescue_lost_fraction)[0]
        for name, r in results.items()
    }
    found = "; ".join(f"{name}: {v}" for name, v in lost.items() if len(v)) or "none"
    return (
        f"sources of peak S/N >= {config.rescue_lost_snr:g} holding < "
        f"{100 * config.rescue_lost_fraction:g} % of the model at their peak, after each run: "
        + found
    )


def _loss_line(name: str, fit) -> str:
    """Iterations, final loss and where the lowest loss of the history was."""
    h = fit.loss_history
    return (
        f"{name}: {fit.iterations} iterations, converged {fit.converged}, loss "
        f"{fit.loss:.1f}, lowest loss in the history {h.min():.1f} at iteration "
        f"{int(h.argmin())}"
    )


# ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> list[str]:
    """Write every figure into ``--out`` and print the tutorial's numbers.

    Returns the names of the PNG files written.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images", help="output folder (%(default)s)")
    parser.add_argument("--no-timing", action="store_true", help="skip the timing runs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    blend = cdb.load_hsc_cosmos()
    written: list[str] = []
    blend_figures(blend, out, written)
    timing = not args.no_timing
    single_lines, single_timing = single_band(blend, out, written, timing)
    multi_lines, multi_timing = multi_band(blend, out, written, timing)
    print("\n".join(single_lines + [""] + multi_lines))
    if timing:
        print()
        print("### wall-clock times (best of repeated runs; machine-dependent)")
        print()
        print(_table(["run", "time (ms)"], single_timing + multi_timing))
    print()
    print(f"{len(written)} figures written to {out}: {', '.join(written)}")
    return written


if __name__ == "__main__":
    main()
