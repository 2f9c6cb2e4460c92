"""Thread scaling of catalog-level deblending on the 512 x 512 LSST-like field.

Runs :func:`cdeblend.deblend_catalog` on ``field_lsst_512.npz`` (138 peaks over a 6-band
image; parents are found from the flat peak list) with ``executor="serial"`` and with
``executor="threads"`` for each worker count, ``--repeat`` times each, the runs of the two
executors alternating (so that a slow spell of a shared machine hits both), after one
untimed warm-up. It prints the best and the median wall time, the CPU time of the process
(user + system: with the GIL released the CPU time exceeds the wall time), the speed-up
over serial from the best times and the median of the paired speed-ups (serial run / the
threaded run after it), and whether the catalogs are identical. For comparison it runs a warm
``concurrent.futures.ProcessPoolExecutor`` of the same size (deblend_catalog accepts any
Executor): processes share no GIL, so the gap between the two rows is the cost of the
Python work that holds the GIL. BLAS threads (numpy's eigh in the SED fit) also compete for
the cores: run with ``OPENBLAS_NUM_THREADS=1`` for a clean comparison. It also prints the
largest parents' share of the serial time, which bounds the speed-up (a pool cannot finish
before its longest task). With ``--no-metrics`` the catalog is made without the metric and
flux-error columns (``CatalogConfig(metrics=False)``): the speed-up of that run against the
default's shows how much the per-parent metrics (Python work under the GIL between the fits)
cost the pool.

    python bench/threads.py [--data DIR] [--workers 2] [--repeat 15] [--no-metrics]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import cdeblend
from cdeblend import CatalogConfig, deblend_catalog
from cdeblend.catalog import default_deblender_factory


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def main() -> None:
    here = Path(__file__).resolve()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=here.parents[2] / "shared" / "data")
    ap.add_argument("--workers", default="2", help="comma list of thread counts")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument(
        "--no-metrics",
        action="store_true",
        help="CatalogConfig(metrics=False): no metric or flux-error columns",
    )
    args = ap.parse_args()
    path = args.data / "field_lsst_512.npz"
    print(f"data: {path}")
    with np.load(path) as d:
        obs = SimpleNamespace(
            images=d["images"],
            variance=d["variance"],
            psfs=d["psfs"],
            bands=tuple(str(b) for b in d["filters"]),
        )
        peaks = np.c_[np.round(d["catalog"]["y"]), np.round(d["catalog"]["x"])].astype(int)
    print(
        f"cdeblend {cdeblend.__version__}; image {obs.images.shape}, {len(peaks)} peaks, "
        f"{os.cpu_count()} CPUs; {args.repeat} alternating runs per executor"
    )
    cfg = CatalogConfig(metrics=not args.no_metrics)
    print(f"metric columns: {'no' if args.no_metrics else 'yes'}")

    def once(executor, workers: int | None):
        c0, t0 = _cpu(), time.perf_counter()
        cat, _ = deblend_catalog(
            obs, peaks=peaks, config=cfg, executor=executor, progress=False, max_workers=workers
        )
        return time.perf_counter() - t0, _cpu() - c0, cat

    def same(cat, ref) -> bool:
        return all(
            np.array_equal(np.asarray(cat[n]), np.asarray(ref[n]), equal_nan=True)
            for n in ref.colnames
            # deblend_runtime is a wall-clock time, never the same twice
            if np.asarray(ref[n]).dtype.kind in "fiub" and n != "deblend_runtime"
        )

    deblend_catalog(obs, peaks=peaks, config=cfg, executor="serial", progress=False)
    head = (
        f"{'executor':<12} {'best s':>7} {'median s':>8} {'cpu s':>7} {'cpu/wall':>8} "
        f"{'speed-up':>8} {'paired':>7} same"
    )
    print(head)
    print("-" * len(head))
    workers = [int(v) for v in args.workers.split(",")]
    ser: list = []
    thr: dict[int, list] = {w: [] for w in workers}
    for _ in range(args.repeat):  # alternate: serial, threads x w, serial, ...
        for w in workers:
            ser.append(once("serial", None))
            thr[w].append(once("threads", w))
    ts = np.array([r[0] for r in ser])
    best_s = ser[int(np.argmin(ts))]
    print(
        f"{'serial':<12} {ts.min():7.3f} {np.median(ts):8.3f} {best_s[1]:7.3f} "
        f"{best_s[1] / best_s[0]:8.2f} {1.0:8.2f} {1.0:7.2f}"
    )
    cat_ser = best_s[2]
    for w in workers:
        tt = np.array([r[0] for r in thr[w]])
        best = thr[w][int(np.argmin(tt))]
        paired = np.median(ts[-len(tt) :] / tt)
        print(
            f"{'threads x' + str(w):<12} {tt.min():7.3f} {np.median(tt):8.3f} {best[1]:7.3f} "
            f"{best[1] / best[0]:8.2f} {ts.min() / tt.min():8.2f} {paired:7.2f} "
            f"{'yes' if all(same(r[2], cat_ser) for r in thr[w]) else 'NO'}"
        )

    def run(executor, workers: int | None):
        best = None
        for _ in range(args.repeat):
            dt, dc, cat = once(executor, workers)
            if best is None or dt < best[0]:
                best = (dt, dc, cat)
        return best

    # for comparison: a warm process pool (no GIL to share; tasks are pickled to it)
    import concurrent.futures as cf

    t_ser = ts.min()
    for w in workers:
        with cf.ProcessPoolExecutor(max_workers=w) as pool:
            deblend_catalog(obs, peaks=peaks, config=cfg, executor=pool, progress=False)
            t, c, cat = run(pool, None)
        print(
            f"{'processes x' + str(w):<12} {t:7.3f} {'':>8} {c:7.3f} {c / t:8.2f} "
            f"{t_ser / t:8.2f} {'':>7} {'yes' if same(cat, cat_ser) else 'NO'}"
            "  (cpu: parent process only)"
        )
    # the longest parents bound the speed-up: time each parent's deblend() serially
    times: list[float] = []

    class Timed:
        def __init__(self, deb):
            self.deb = deb

        def deblend(self, *a, **k):
            t0 = time.perf_counter()
            try:
                return self.deb.deblend(*a, **k)
            finally:
                times.append(time.perf_counter() - t0)

    deblend_catalog(
        obs,
        peaks=peaks,
        config=cfg,
        executor="serial",
        progress=False,
        deblender_factory=lambda kind, c: Timed(default_deblender_factory(kind, c)),
    )
    ts = np.sort(times)[::-1]
    total = ts.sum()
    print(
        f"\nserial per-parent deblend(): {len(ts)} parents, sum {total:.3f} s of "
        f"{t_ser:.3f} s wall; longest "
        + ", ".join(f"{t:.3f}" for t in ts[:5])
        + f" s ({100 * ts[0] / total:.0f}% of the sum)"
    )


if __name__ == "__main__":
    main()
