"""Benchmark the catalog machinery on the 512 x 512 LSST-like field.

Runs :func:`cdeblend.deblend_catalog` with each executor and prints time, peak traced memory,
parents / children / skipped / failed counts and the flux error of the children against the
simulation truth; then times writing, reading and re-apportioning the model data.

The real multi-band deblender is used when the package has it (``cdeblend.Deblender``);
otherwise (before the deblender branches are merged) a *stand-in* that splits every
footprint among its peaks by nearest peak, with SED x morphology models, so the table then
measures the machinery (cut-outs, scheduling, rows, model data), not deblending quality.

    python bench/catalog.py [--data DIR] [--executors serial,threads,dask] [--workers 4]
        [--stand-in]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import cdeblend
from cdeblend import CatalogConfig, deblend_catalog, load_models, save_models


class StandInObservation:
    def __init__(self, images, variance, psfs, bands=None, weights=None, mask=None,
                 model_psf_sigma=0.8):
        self.images, self.variance, self.psfs, self.bands = images, variance, psfs, bands
        self.weights = weights


class StandInDeblender:
    """Nearest-peak split of the footprint; morphology = positive band-summed image."""

    def deblend(self, obs, peaks):
        img = np.asarray(obs.images, dtype=np.float64)
        valid = np.any(obs.weights > 0, axis=0)
        H, W = img.shape[1:]
        yy, xx = np.mgrid[:H, :W]
        d2 = np.stack([(yy - py) ** 2 + (xx - px) ** 2 for py, px in peaks])
        owner = np.argmin(d2, axis=0)
        sources, fluxes, cons = [], [], []
        for i in range(len(peaks)):
            cell = (owner == i) & valid
            ys, xs = np.nonzero(cell)
            if len(ys) == 0:
                ys, xs = np.array([peaks[i][0]]), np.array([peaks[i][1]])
            y0, x0 = ys.min(), xs.min()
            h, w = ys.max() - y0 + 1, xs.max() - x0 + 1
            sub = img[:, y0 : y0 + h, x0 : x0 + w] * cell[y0 : y0 + h, x0 : x0 + w]
            pos = np.maximum(sub.sum(0), 0)
            morph = pos / pos.max() if pos.max() > 0 else np.ones((h, w)) / (h * w)
            sed = sub.sum(axis=(1, 2)) / morph.sum()
            comp = SimpleNamespace(sed=sed, morphology=morph, box=(y0, x0, h, w),
                                   peak=tuple(peaks[i]))
            sources.append(SimpleNamespace(components=[comp], peak_id=i))
            fluxes.append(sed * morph.sum())
            cons.append(sub.sum(axis=(1, 2)))
        return SimpleNamespace(blend=SimpleNamespace(sources=sources), fluxes=np.array(fluxes),
                               conserved_fluxes=np.array(cons), loss=np.nan, iterations=1,
                               converged=True)


def flux_errors(cat, peaks, truth_flux, snr, min_snr=10.0):
    """Median |dF/F| of children (and isolated parents) matched to the truth by peak pixel."""
    where = {}
    for k, (y, x) in enumerate(peaks):
        where.setdefault((int(y), int(x)), []).append(k)
    errs = {"model": [], "conserved": []}
    for row in cat:
        isolated = row["is_parent"] and row["skipped_isolated"]
        if row["is_parent"] and not isolated:
            continue
        ks = where.get((int(row["peak_y"]), int(row["peak_x"])), [])
        if len(ks) != 1 or snr[ks[0]] < min_snr:
            continue
        t = truth_flux[ks[0]]
        cons = row["flux_footprint"] if isolated else row["flux_conserved"]
        model = row["flux_footprint"] if isolated else row["flux_model"]
        errs["conserved"].extend(np.abs(cons - t) / np.abs(t))
        errs["model"].extend(np.abs(model - t) / np.abs(t))
    return {k: float(np.median(v)) if v else float("nan") for k, v in errs.items()}


def main() -> None:
    here = Path(__file__).resolve()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=here.parents[2] / "shared" / "data")
    parser.add_argument("--executors", default="serial,threads,dask")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--stand-in", action="store_true", help="use the stand-in deblender")
    args = parser.parse_args()
    path = args.data / "field_lsst_512.npz"
    print(f"data: {path}")
    d = np.load(path)
    images, variance, psfs = d["images"], d["variance"], d["psfs"]
    peaks = np.c_[np.round(d["catalog"]["y"]), np.round(d["catalog"]["x"])].astype(int)
    real = not args.stand_in and all(hasattr(cdeblend, n) for n in ("Deblender", "Observation"))
    kw = {} if real else {"deblender_factory": lambda kind, cfg: StandInDeblender(),
                          "observation_factory": StandInObservation}
    which = "cdeblend.Deblender" if real else "stand-in (nearest-peak split)"
    print(f"deblender: {which}; image {images.shape}, {len(peaks)} peaks, "
          f"{args.workers} workers")
    obs = SimpleNamespace(images=images, variance=variance, psfs=psfs,
                          bands=tuple(d["filters"]))
    header = (f"{'executor':<9} {'time s':>8} {'peak MB':>8} {'parents':>7} {'children':>8} "
              f"{'skipped':>7} {'failed':>6} {'med|dF/F| cons':>14} {'med|dF/F| model':>15}")
    print(header)
    print("-" * len(header))
    # warm-up (imports, FFT plans), not timed
    deblend_catalog(obs, peaks=peaks, executor="serial", progress=False, **kw)
    md = None
    for ex in args.executors.split(","):
        cluster = client = None
        executor = ex
        if ex == "dask":
            import distributed

            cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=args.workers,
                                               processes=False, dashboard_address=None)
            client = executor = distributed.Client(cluster)
        tracemalloc.start()
        t0 = time.perf_counter()
        cat, md = deblend_catalog(obs, peaks=peaks, config=CatalogConfig(), executor=executor,
                                  progress=False, max_workers=args.workers, **kw)
        dt = time.perf_counter() - t0
        peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        if client is not None:
            client.close()
            cluster.close()
        par = cat[cat["is_parent"]]
        err = flux_errors(cat, peaks, d["true_flux"], d["snr"])
        print(f"{ex:<9} {dt:8.3f} {peak_mb:8.1f} {len(par):7d} {int((~cat['is_parent']).sum()):8d} "
              f"{int(par['skipped'].sum()):7d} {int(par['failed'].sum()):6d} "
              f"{err['conserved']:14.4f} {err['model']:15.4f}")
    if md is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "models.fits"
        t0 = time.perf_counter()
        save_models(f, md)
        t_save = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = load_models(f)
        t_load = time.perf_counter() - t0
        size = f.stat().st_size / 2**20
    t0 = time.perf_counter()
    n_sources = sum(md.conserved_images(obs, pid).shape[0] for pid in back.blends)
    t_re = time.perf_counter() - t0
    print()
    print(f"{'model data':<24} {'value':>10}")
    print(f"{'blends / sources':<24} {len(md.blends):>5} / {n_sources:<4}")
    print(f"{'file size MB':<24} {size:10.2f}")
    print(f"{'save s':<24} {t_save:10.3f}")
    print(f"{'load s':<24} {t_load:10.3f}")
    print(f"{'re-apportion all s':<24} {t_re:10.3f}")


if __name__ == "__main__":
    main()
