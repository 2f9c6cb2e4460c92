"""Benchmark the single-band deblender on the sim_single blends (40 one-band blends with truth).

For each blend: footprints are detected on the image (matched-filter S/N above ``--nsigma``,
grown by ``--grow`` pixels); the catalog's peaks (x, y columns) are grouped into parents by
footprint (a peak outside every footprint gets a small footprint of its own, so every catalog
row lands in a parent); every parent is deblended; a parent with a single peak gives that peak
the image on its footprint. The conserved images are compared with truth by the shared
``metrics.py`` (median |dF/F|, 90th percentile, fraction > 0.1; overall and for S/N >= 10).

    python bench/single_band.py [--data PATH] [--repeat 3] [--rules trim r-to-peak ...]

Prints a table per configuration: blends, sources, time per blend, pixels per second, peak
memory (tracemalloc) and the flux errors.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

import cdeblend as cdb
from cdeblend.single_band import psf_fwhm_from_moments


def default_data() -> Path:
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def load_blends(folder: Path) -> list[tuple[str, dict]]:
    out = []
    for f in sorted(folder.glob("*.npz")):
        with np.load(f, allow_pickle=False) as d:
            out.append((f.name, {k: d[k] for k in d.files}))
    return out


def naive_psf_weights(image, psf, peaks, footprint):
    """Baseline: templates = PSF at each peak scaled by the image value there."""
    H, W = image.shape
    ph, pw = psf.shape
    templates = np.zeros((len(peaks), H, W))
    for i, (y, x) in enumerate(peaks):
        big = np.zeros((H + ph, W + pw))
        big[y : y + ph, x : x + pw] = psf * max(image[y, x], 0) / psf.max()
        templates[i] = big[ph // 2 : ph // 2 + H, pw // 2 : pw // 2 + W]
    tsum = templates.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(tsum > 0, templates / tsum, 1.0 / len(peaks))
    return share * np.where(footprint, image, 0)


def run_blend(data: dict, cfg: cdb.SingleBandConfig, nsigma: float, grow: int):
    image = data["images"][0]
    variance = data["variance"][0]
    psf = data["psfs"][0].astype(np.float64)
    psf /= psf.sum()
    cat = data["catalog"]
    peaks = np.stack([cat["y"], cat["x"]], axis=1).round().astype(np.int64)
    H, W = image.shape
    results = cdb.deblend_image(
        image, variance, psf, config=cfg, peaks=peaks, nsigma=nsigma, grow=grow
    )
    conserved = np.zeros((len(peaks), 1, H, W), dtype=np.float32)
    n_failed = 0
    for pr in results:
        dense = pr.conserved_images((H, W))
        for k, row in enumerate(pr.parent.peak_index):
            conserved[row, 0] += dense[k]
        n_failed += "failed" in pr.result.flags
    return conserved, n_failed, results


def summarize(metrics, recs):
    s = metrics.summarize(recs)["conserved"]
    return s["all"], s["snr>=10|all"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--data", type=Path, default=None, help="folder holding sim_single/ and metrics.py"
    )
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats (best is kept)")
    ap.add_argument(
        "--nsigma", type=float, default=5.0, help="footprint threshold (matched-filter S/N)"
    )
    ap.add_argument("--grow", type=int, default=2, help="footprint growth in pixels")
    ap.add_argument(
        "--rules", nargs="*", default=None, help="stray-flux rules to compare (default: all four)"
    )
    ap.add_argument(
        "--baseline", action="store_true", help="also score the naive PSF-weight baseline"
    )
    args = ap.parse_args(argv)
    data_dir = args.data or default_data()
    sim = data_dir / "sim_single"
    print(f"data: looked in {sim}")
    if not sim.is_dir():
        sys.exit(f"no sim_single folder at {sim} (use --data)")
    sys.path.insert(0, str(data_dir))
    import metrics  # the shared metrics.py

    blends = load_blends(sim)
    n_src = sum(len(d["catalog"]) for _, d in blends)
    n_pix = sum(d["images"][0].size for _, d in blends)
    rules = args.rules or ["trim", "r-to-peak", "nearest-footprint", "r-to-footprint"]
    configs = [
        (
            f"default (stray={r})" if r == "trim" else f"stray={r}",
            cdb.SingleBandConfig(stray_flux_rule=r),
        )
        for r in rules
    ]
    configs += [
        ("weight_templates, stray=trim", cdb.SingleBandConfig(weight_templates=True)),
        (
            "weight_templates, stray=r-to-peak",
            cdb.SingleBandConfig(weight_templates=True, stray_flux_rule="r-to-peak"),
        ),
        (
            "weight_templates, no monotonic",
            cdb.SingleBandConfig(weight_templates=True, monotonic_template=False),
        ),
    ]
    header = (
        f"{'configuration':38s} {'blends':>6s} {'srcs':>5s} {'ms/blend':>9s} {'Mpix/s':>7s} "
        f"{'peakMB':>7s} {'fail':>4s} | {'med|dF/F|':>9s} {'p90':>6s} {'f>0.1':>6s} | "
        f"{'SNR>=10 med':>11s} {'p90':>6s} {'f>0.1':>6s} {'n':>4s}"
    )
    rows = []
    for name, cfg in configs:
        # Warm-up and accuracy pass.
        recs, n_failed = [], 0
        for fname, d in blends:
            conserved, nf, _ = run_blend(d, cfg, args.nsigma, args.grow)
            n_failed += nf
            recs.extend(metrics.evaluate_pair(d, {"conserved": conserved}, fname))
        # Timing: best of --repeat over the whole set.
        best = np.inf
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            for _, d in blends:
                run_blend(d, cfg, args.nsigma, args.grow)
            best = min(best, time.perf_counter() - t0)
        tracemalloc.start()
        for _, d in blends:
            run_blend(d, cfg, args.nsigma, args.grow)
        peak_mem = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        a, s = summarize(metrics, recs)
        rows.append(
            f"{name:38s} {len(blends):6d} {n_src:5d} {1e3 * best / len(blends):9.2f} "
            f"{n_pix / best / 1e6:7.2f} {peak_mem:7.2f} {n_failed:4d} | "
            f"{a['median_abs_dF']:9.3f} {a['p90_abs_dF']:6.3f} {a['frac_abs_dF_gt_0p1']:6.3f} | "
            f"{s['median_abs_dF']:11.3f} {s['p90_abs_dF']:6.3f} {s['frac_abs_dF_gt_0p1']:6.3f} "
            f"{s['n']:4d}"
        )
        print(rows[-1] if len(rows) > 1 else header + "\n" + rows[-1], flush=True)
    if args.baseline:
        recs = []
        for fname, d in blends:
            image = d["images"][0]
            cat = d["catalog"]
            peaks = np.stack([cat["y"], cat["x"]], axis=1).round().astype(np.int64)
            psf = d["psfs"][0].astype(np.float64)
            fwhm = psf_fwhm_from_moments(psf)
            parents = cdb.detect(
                image,
                d["variance"][0],
                nsigma=args.nsigma,
                grow=args.grow,
                peaks=peaks,
                psf_fwhm=fwhm,
            )
            fp = np.zeros(image.shape, bool)
            for p in parents:
                fp |= p.full_footprint(image.shape)
            cons = naive_psf_weights(image.astype(np.float64), psf, peaks, fp)[:, None]
            recs.extend(metrics.evaluate_pair(d, {"conserved": cons}, fname))
        a, s = summarize(metrics, recs)
        print(
            f"{'naive PSF-weight baseline':38s} {len(blends):6d} {n_src:5d} {'':9s} {'':7s} "
            f"{'':7s} {'':4s} | {a['median_abs_dF']:9.3f} {a['p90_abs_dF']:6.3f} "
            f"{a['frac_abs_dF_gt_0p1']:6.3f} | {s['median_abs_dF']:11.3f} {s['p90_abs_dF']:6.3f} "
            f"{s['frac_abs_dF_gt_0p1']:6.3f} {s['n']:4d}"
        )
    print(
        f"footprints: matched-filter S/N > {args.nsigma}, grown by {args.grow} px; "
        f"time = detection + deblending (best of {args.repeat}); memory = tracemalloc peak"
    )


if __name__ == "__main__":
    main()
