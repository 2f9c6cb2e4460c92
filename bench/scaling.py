"""How the multi-band deblender scales with the size of a blend.

Synthetic 5-band blends (bench/synth.py, seeded) of growing size are deblended with the
default :class:`cdeblend.DeblendConfig`, each size in a fresh subprocess so that its peak
resident memory (``ru_maxrss``) is its own. Per size the table gives

* ``init``/``fit``: seconds of the initialization and of the fit, ``iter`` iterations,
* ``ms/it``: fit time per iteration,
* ``floor``: milliseconds of one ``Observation.loss_and_gradient`` on the blend box (the
  forward and adjoint FFT convolutions every iteration needs), measured in the same process,
  and ``it/floor`` the ratio of the two,
* ``cons``: seconds to make the conserved (re-apportioned) children,
* ``RSS``: peak resident memory of the process (MB), ``traced``: the peak of numpy/Python
  allocations seen by tracemalloc in a second, separate run (MB),
* ``|dF/F|``: median over sources and bands of the conserved flux error against the truth.

    python bench/scaling.py [--sizes 60:5,150:25,400:120,1000:600] [--seed 1]
                            [--dtype float32|float64]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import synth  # noqa: E402

import cdeblend  # noqa: E402

DEFAULT_SIZES = "60:5,150:25,400:120,1000:600"


def run_one(size: int, n_sources: int, seed: int, traced: bool,
            dtype: str = "float32") -> dict:
    """Deblend one synthetic blend in this process and return its measurements."""
    scene = synth.make_scene(size, size, n_sources, seed=seed)
    if traced:
        tracemalloc.start()
    t0 = time.perf_counter()
    obs = cdeblend.Observation(scene.images, scene.variance, scene.psfs, bands=scene.bands,
                               dtype=np.dtype(dtype))
    result = cdeblend.Deblender().deblend(obs, scene.peaks)
    t1 = time.perf_counter()
    fluxes = result.conserved_fluxes
    t2 = time.perf_counter()
    out = {"size": size, "n": len(scene.peaks)}
    if traced:
        out["traced_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        return out
    # the FFT floor: the fused forward + adjoint convolution of one iteration, warm buffers
    model = result.blend.model()
    grad = np.empty_like(model)
    obs.loss_and_gradient(model, grad)
    reps = max(3, int(0.5 / max(result.timing["fit"] / max(result.iterations, 1), 1e-4)))
    reps = min(reps, 200)
    tf = time.perf_counter()
    for _ in range(reps):
        obs.loss_and_gradient(model, grad)
    floor = (time.perf_counter() - tf) / reps
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(fluxes / scene.true_flux - 1.0)
    rel = rel[np.isfinite(rel)]
    out.update(
        init=result.timing["init"], fit=result.timing["fit"], total=t1 - t0,
        iterations=int(result.iterations), conserve=t2 - t1, floor=floor,
        components=len(result.blend.components),
        rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        flux_err=float(np.median(rel)), loss=float(result.loss),
    )
    return out


def _child(size: int, n: int, seed: int, traced: bool, dtype: str) -> dict:
    cmd = [sys.executable, __file__, "--one", f"{size}:{n}", "--seed", str(seed),
           "--dtype", dtype]
    if traced:
        cmd.append("--traced")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help="comma list of SIZE:N_SOURCES")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                    help="working precision of the Observation")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        size, n = (int(v) for v in args.one.split(":"))
        print(json.dumps(run_one(size, n, args.seed, args.traced, args.dtype)))
        return
    print(f"cdeblend {cdeblend.__version__}, default DeblendConfig, synthetic 5-band blends "
          f"(bench/synth.py, seed {args.seed}), {args.dtype}, one fresh process per size")
    head = (f"{'size':>9} {'N':>4} {'K':>5} {'init s':>7} {'fit s':>7} {'iter':>5} {'ms/it':>7} "
            f"{'floor ms':>8} {'it/floor':>8} {'cons s':>7} {'total s':>8} {'RSS MB':>7} "
            f"{'traced MB':>9} {'|dF/F|':>7}")
    print(head)
    print("-" * len(head))
    for item in args.sizes.split(","):
        size, n = (int(v) for v in item.split(":"))
        r = _child(size, n, args.seed, False, args.dtype)
        tr = _child(size, n, args.seed, True, args.dtype)
        per_it = r["fit"] / max(r["iterations"], 1)
        print(f"{size:>4}x{size:<4} {r['n']:>4} {r['components']:>5} {r['init']:>7.2f} "
              f"{r['fit']:>7.2f} {r['iterations']:>5} {1e3 * per_it:>7.2f} "
              f"{1e3 * r['floor']:>8.2f} {per_it / r['floor']:>8.2f} {r['conserve']:>7.2f} "
              f"{r['total'] + r['conserve']:>8.2f} {r['rss_mb']:>7.0f} {tr['traced_mb']:>9.0f} "
              f"{r['flux_err']:>7.4f}", flush=True)


if __name__ == "__main__":
    main()
