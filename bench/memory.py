"""Resident memory over thousands of deblends of the same blend (no unbounded caches).

Deblends the bundled HSC COSMOS blend (:func:`cdeblend.load_hsc_cosmos`) ``--runs`` times in
one process, each time from scratch (a new Observation, the multi-band deblender, conserved
children and fluxes; then the single-band deblender on the i band), and prints the current
resident set size (``/proc/self/statm``) every ``--every`` runs. A third mode reuses one
Observation for every run, which exercises the per-observation caches (kernel transforms,
work buffers, mode choices). Growth is the RSS at the end minus the RSS after the first
``--every`` runs (allocator warm-up).

    python bench/memory.py [--runs 5000] [--every 500] [--modes multi,single,shared]
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import cdeblend

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    """Current resident set size of this process in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5000)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--modes", default="multi,single,shared")
    args = ap.parse_args()
    demo = cdeblend.load_hsc_cosmos()
    deb = cdeblend.Deblender()
    sb = cdeblend.SingleBandDeblender()
    ib = demo.band_index("i")
    shared = cdeblend.Observation(demo.images, demo.variance, demo.psfs, bands=demo.bands)

    def multi() -> float:
        obs = cdeblend.Observation(demo.images, demo.variance, demo.psfs, bands=demo.bands)
        res = deb.deblend(obs, demo.peaks)
        return float(res.conserved_fluxes.sum())

    def multi_shared() -> float:
        res = deb.deblend(shared, demo.peaks)
        return float(res.conserved_fluxes.sum())

    def single() -> float:
        res = sb.deblend(demo.images[ib], demo.variance[ib], demo.psfs[ib], demo.peaks)
        return float(sum(c.flux for c in res.children))

    runs = {"multi": multi, "single": single, "shared": multi_shared}
    print(
        f"bundled HSC COSMOS blend {demo.images.shape}, {len(demo.peaks)} peaks; "
        f"{args.runs} runs per mode in one process; RSS in MB"
    )
    for mode in args.modes.split(","):
        fn = runs[mode]
        fn()
        gc.collect()
        curve = [(0, rss_mb())]
        first = fn()
        t0 = time.perf_counter()
        for i in range(1, args.runs + 1):
            value = fn()
            if value != first:  # deterministic: every run gives the same numbers
                raise SystemExit(f"{mode}: run {i} gave {value!r}, the first gave {first!r}")
            if i % args.every == 0:
                curve.append((i, rss_mb()))
        dt = (time.perf_counter() - t0) / args.runs
        base = curve[1][1] if len(curve) > 1 else curve[0][1]
        growth = curve[-1][1] - base
        print(
            f"\n{mode}: {1e3 * dt:.2f} ms per run, growth after run {curve[1][0]}: "
            f"{growth:+.1f} MB ({'ok' if growth < 20 else 'GROWS'})"
        )
        print("  run  " + " ".join(f"{r:>7}" for r, _ in curve))
        print("  RSS  " + " ".join(f"{m:>7.1f}" for _, m in curve), flush=True)


if __name__ == "__main__":
    main()
