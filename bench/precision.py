"""float32 against float64: the multi-band deblender in both working precisions.

The Observation's dtype sets the precision of the images, weights, convolutions and
conserved children (float32 by default for float32 data); the fitted parameters, the ADAM
state, the loss sums and the SED fit's normal equations are float64 in both. This runs the
default :class:`cdeblend.DeblendConfig` on the bundled HSC COSMOS blend and on synthetic
blends (bench/synth.py, with truth) in both precisions and prints time, iterations, loss
and the differences of the conserved fluxes (and, for the synthetic blends, the flux error
against the truth). A third row per blend is float64 again on the image multiplied by
``1 + 1e-7 N(0, 1)`` (a change far below the noise, about float32's rounding): it shows how
much of the float32 difference is the fit's own sensitivity to its input.

    python bench/precision.py [--sizes 150:25,400:120] [--seed 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import synth  # noqa: E402

import cdeblend  # noqa: E402


def run(images, variance, psfs, peaks, bands, dtype):
    t0 = time.perf_counter()
    obs = cdeblend.Observation(images, variance, psfs, bands=bands, dtype=dtype)
    res = cdeblend.Deblender().deblend(obs, peaks)
    flux = res.conserved_fluxes
    return res, flux, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="150:25,400:120")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    cases = []
    demo = cdeblend.load_hsc_cosmos()
    cases.append(
        ("HSC COSMOS 58x48", demo.images, demo.variance, demo.psfs, demo.peaks, demo.bands, None)
    )
    for item in args.sizes.split(","):
        size, n = (int(v) for v in item.split(":"))
        s = synth.make_scene(size, size, n, seed=args.seed)
        cases.append(
            (
                f"synthetic {size}x{size}/{n}",
                s.images,
                s.variance,
                s.psfs,
                s.peaks,
                s.bands,
                s.true_flux,
            )
        )
    head = (
        f"{'blend':<22} {'dtype':<10} {'time s':>7} {'iter':>5} {'loss':>14} "
        f"{'rel dloss':>10} {'max|dF|/F':>10} {'med|dF|/F':>10} {'|dF/F| truth':>12}"
    )
    print(head)
    print("-" * len(head))
    for name, images, variance, psfs, peaks, bands, truth in cases:
        out = {}
        for dtype in (np.float64, np.float32):
            out[np.dtype(dtype).name] = run(images, variance, psfs, peaks, bands, dtype)
        rng = np.random.default_rng(0)
        nudged = images.astype(np.float64) * (1 + 1e-7 * rng.standard_normal(images.shape))
        out["f64 nudged"] = run(nudged, variance, psfs, peaks, bands, np.float64)
        ref_res, ref_flux, _ = out["float64"]
        for label, (res, flux, dt) in out.items():
            dl = abs(res.loss - ref_res.loss) / abs(ref_res.loss)
            # flux differences relative to each source's total flux (over bands)
            scale = np.abs(ref_flux).sum(axis=1, keepdims=True) / flux.shape[1] + 1e-300
            d = np.abs(flux - ref_flux) / scale
            terr = ""
            if truth is not None:
                with np.errstate(divide="ignore", invalid="ignore"):
                    rel = np.abs(flux / truth - 1)
                terr = f"{np.median(rel[np.isfinite(rel)]):12.5f}"
            print(
                f"{name:<22} {label:<10} {dt:7.3f} {res.iterations:5d} "
                f"{res.loss:14.6g} {dl:10.2e} {d.max():10.2e} {np.median(d):10.2e} {terr}"
            )


if __name__ == "__main__":
    main()
