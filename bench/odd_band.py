"""The lone band of an odd band count: full-grid transform against the half-width one.

With an odd number of bands the fit's last band has no partner for the two-real-planes-in-
one-complex-transform trick; ``_adam_cy.half_band`` decides whether it goes through a
complex transform of half the grid width (even and odd columns packed) or the full grid.
This script fits scenes of the shared scaling recipe (``make_scaling_blends.py`` in the
shared data folder, ``--data``, default ``../shared/data`` relative to the repository root;
the scenes are generated once into ``--cache``, as ``bench/scaling.py`` does) with a fixed
number of iterations (``min_iter = max_iter``, so that both ways do the same work) and
prints the fit's CPU and wall milliseconds per iteration for each way and thread count,
the best of ``--repeat`` runs, the two ways alternating (a slow spell of a shared machine
hits both). It also prints, at the default configuration, each way's iteration count, loss
and median flux error against the truth: in float32 a fit's discrete decisions make it
sensitive to round-off, so these may differ more than the round-off of the transforms.

    python bench/odd_band.py [--data DIR] [--cache DIR] [--scenes c,d] [--threads 1,2]
                             [--iters 30] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scaling  # noqa: E402

import cdeblend  # noqa: E402
from cdeblend import _adam_cy, _threads, deblender  # noqa: E402

SEEDS = {"a": 101, "b": 102, "c": 103, "d": 104}


def load(data: Path, cache: Path, name: str):
    path = scaling.make_scene_file(data, cache, name, SEEDS[name])
    with np.load(path) as d:
        cat = d["catalog"]
        peaks = np.stack([cat["y"], cat["x"]], axis=1).round().astype(np.intp)
        return d["images"], d["variance"], d["psfs"], peaks, d["true_flux"]


def fit_once(scene, half: bool, threads: int, config: dict):
    """One deblend; returns (fit CPU s, fit wall s, result)."""
    images, variance, psfs, peaks, _ = scene
    _adam_cy.half_band(half)
    fit = scaling._Timer(deblender, "fit_blend")
    _threads.set_num_threads(threads)
    try:
        obs = cdeblend.Observation(images, variance, psfs, dtype=np.float32)
        result = cdeblend.Deblender(cdeblend.DeblendConfig(**config)).deblend(obs, peaks)
    finally:
        _threads.set_num_threads(None)
        deblender.fit_blend = fit.inner
    return fit.cpu, fit.wall, result


def median_flux_error(result, true_flux) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(result.conserved_fluxes / true_flux - 1.0)
    return float(np.median(rel[np.isfinite(rel)]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=scaling.default_data())
    ap.add_argument("--cache", type=Path, default=Path("/tmp/cdeblend_scaling"))
    ap.add_argument("--scenes", default="c,d")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    fixed = {"min_iter": args.iters, "max_iter": args.iters}
    print(
        f"fit of {args.iters} iterations (min_iter = max_iter), float32, best of "
        f"{args.repeat}; ms per iteration of the fit (CPU: all threads)"
    )
    head = (
        f"{'scene':>5} {'thr':>3} {'full CPU':>8} {'half CPU':>8} {'full wall':>9} "
        f"{'half wall':>9} {'CPU saved':>9}"
    )
    print(head)
    print("-" * len(head))
    scenes = {}
    for name in args.scenes.split(","):
        scene = scenes[name] = load(args.data, args.cache, name)
        fit_once(scene, True, 1, {"min_iter": 2, "max_iter": 2})  # warm-up
        for nt in (int(t) for t in args.threads.split(",")):
            best = {False: [np.inf, np.inf], True: [np.inf, np.inf]}
            for _ in range(args.repeat):
                for half in (False, True):
                    cpu, wall, _ = fit_once(scene, half, nt, fixed)
                    best[half] = [min(best[half][0], cpu), min(best[half][1], wall)]
            f = {h: [1e3 * v / args.iters for v in best[h]] for h in best}
            saved = 1 - f[True][0] / f[False][0]
            print(
                f"{name:>5} {nt:>3} {f[False][0]:8.2f} {f[True][0]:8.2f} {f[False][1]:9.2f} "
                f"{f[True][1]:9.2f} {saved:9.1%}"
            )
    print()
    print("default configuration, one thread: iterations, loss, median |dF/F| against truth")
    head = f"{'scene':>5} {'way':>4} {'iter':>4} {'loss':>14} {'|dF/F|':>7}"
    print(head)
    print("-" * len(head))
    for name, scene in scenes.items():
        for half in (False, True):
            _, _, res = fit_once(scene, half, 1, {})
            way = "half" if half else "full"
            err = median_flux_error(res, scene[4])
            print(f"{name:>5} {way:>4} {res.iterations:4d} {res.loss:14.2f} {err:7.4f}")
    _adam_cy.half_band(True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
