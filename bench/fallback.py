"""How good is the fallback model of a parent whose fit raised?

Runs the multi-band deblender on every simulated blend of ``sim_lsst/`` and ``sim_hsc/``
(default ``../shared/data`` relative to the repository root; see its README.md) twice: the
normal fit, and the fallback a failing fit gets (:func:`cdeblend.fallback.fallback_result`:
a PSF component per peak, SEDs by non-negative least squares, the image re-apportioned).
Prints, per dataset and mode, the flux errors against the truth for entries with band
S/N >= 10 (median and 90th percentile of ``|dF/F|`` of the conserved and the model fluxes),
the share of the blend's image flux that the children receive (the rest is unassigned), and
the CPU time per blend.

    python bench/fallback.py [--data DIR] [--limit N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from cdeblend import DeblendConfig, Deblender, Observation
from cdeblend.fallback import fallback_result


def load(path: Path):
    d = np.load(path)
    peaks = np.c_[np.round(d["catalog"]["y"]), np.round(d["catalog"]["x"])].astype(np.int64)
    obs = Observation(d["images"], d["variance"], d["psfs"])
    true_images = d["true_images"].astype(np.float64)
    snr = np.sqrt(np.sum(true_images**2 / d["variance"][None], axis=(2, 3)))
    return obs, peaks, d["true_flux"], snr


def run(obs, peaks, mode: str):
    cfg = DeblendConfig()
    t0 = time.process_time()
    if mode == "fit":
        res = Deblender(cfg).deblend(obs, peaks)
    else:
        res = fallback_result(obs, peaks, cfg, RuntimeError("bench"))
    fluxes = (res.conserved_fluxes, res.fluxes)
    return fluxes, time.process_time() - t0


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=root.parent / "shared" / "data")
    ap.add_argument("--limit", type=int, default=0, help="at most this many blends per set")
    args = ap.parse_args()
    print(
        "| data | mode | entries | conserved median / p90 abs(dF/F) | model median / p90 "
        "| image flux to children | CPU s / blend |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in ("sim_lsst", "sim_hsc"):
        files = sorted((args.data / name).glob("*.npz"))
        if args.limit:
            files = files[: args.limit]
        if not files:
            print(f"| {name} | no files in {args.data / name} | | | | | |")
            continue
        blends = [load(f) for f in files]
        for mode in ("fit", "fallback"):
            err_c, err_m, claimed, total, cpu = [], [], 0.0, 0.0, 0.0
            for obs, peaks, true_flux, snr in blends:
                (cons, model), dt = run(obs, peaks, mode)
                cpu += dt
                keep = snr >= 10
                err_c.append(np.abs(cons / true_flux - 1)[keep])
                err_m.append(np.abs(model / true_flux - 1)[keep])
                image = np.where(obs.weights > 0, obs.images, 0)
                claimed += float(cons.sum())
                total += float(image.sum())
            ec, em = np.concatenate(err_c), np.concatenate(err_m)
            print(
                f"| {name} | {mode} | {ec.size} | {np.median(ec):.3f} / "
                f"{np.percentile(ec, 90):.3f} | {np.median(em):.3f} / "
                f"{np.percentile(em, 90):.3f} | {claimed / total:.1%} | "
                f"{cpu / len(blends):.3f} |"
            )


if __name__ == "__main__":
    main()
