"""Catalog-level deblending of the 512 x 512 LSST-like field, with truth.

Reads ``../shared/data/field_lsst_512.npz`` (6 bands, 138 detected peaks as a flat list; see
``../shared/data/README.md``), writes it out as FITS files (image cube, variance cube, PSF
cube, peak CSV) and reads them back the way ``cdeblend deblend`` does, then runs
:func:`cdeblend.deblend_catalog` with the serial and the thread-pool executor and prints:

- time, peak traced memory (tracemalloc, numpy included) and the thread pool's speed-up;
- whether every detected truth source landed in exactly one parent;
- flux conservation: the children's conserved images, re-apportioned again from the saved
  model file, plus the stray (unassigned) flux add up to the image inside every footprint;
- the flux error of models and conserved images against the truth (``metrics.py``).

    python bench/catalog.py [--data DIR] [--workers 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

import cdeblend
from cdeblend import CatalogConfig, deblend_catalog, load_models, save_models
from cdeblend.fits_io import read_image_stack, read_peaks


def write_fits(data, folder: Path) -> None:
    from astropy.io import fits

    fits.PrimaryHDU(np.asarray(data["images"])).writeto(folder / "images.fits")
    fits.PrimaryHDU(np.asarray(data["variance"])).writeto(folder / "variance.fits")
    fits.PrimaryHDU(np.asarray(data["psfs"])).writeto(folder / "psfs.fits")
    cat = data["catalog"]
    rows = "".join(f"{x},{y}\n" for x, y in zip(cat["x"], cat["y"], strict=True))
    (folder / "peaks.csv").write_text("x,y\n" + rows)


def run(obs, peaks, executor, workers):
    start = time.perf_counter()
    cat, md = deblend_catalog(
        obs,
        peaks=peaks,
        executor=executor,
        max_workers=workers,
        progress=False,
        config=CatalogConfig(),
    )
    return time.perf_counter() - start, cat, md


def assignment(cat, peaks):
    """How many parents each catalog peak landed in (children rows and isolated parents)."""
    rows = cat[(~cat["is_parent"]) | (cat["is_parent"] & cat["skipped_isolated"])]
    got = {}
    for r in rows:
        key = (int(r["peak_y"]), int(r["peak_x"]))
        got[key] = got.get(key, 0) + 1
    return np.array([got.get((int(y), int(x)), 0) for y, x in np.round(peaks).astype(int)])


def per_source_images(obs, cat, md, peaks):
    """Conserved images and models in the metrics' boxes layout, rows in catalog order,
    re-apportioned from the stored models; and the worst conservation error per footprint."""
    B = obs.shape[0]
    index = {(int(y), int(x)): i for i, (y, x) in enumerate(np.round(peaks).astype(int))}
    cons = [None] * len(peaks)
    mods = [None] * len(peaks)
    worst = 0.0
    for pid, bd in md.blends.items():
        y0, x0, H, W = bd.box
        cut = obs.images[:, y0 : y0 + H, x0 : x0 + W].astype(np.float64)
        fp = np.ones((H, W), bool) if bd.footprint is None else bd.footprint
        conserved = md.conserved_images(obs, pid)
        if bd.isolated:
            models = conserved
        else:
            models = md.rebuild(obs, pid).models()
        prow = cat[cat["id"] == pid][0]
        # conservation: children + unassigned = image, inside the footprint
        unassigned = np.where(fp, cut, 0) - conserved.sum(axis=0)
        flux_unassigned = unassigned.sum(axis=(1, 2))
        worst = max(
            worst,
            float(
                np.max(np.abs(flux_unassigned - prow["flux_unassigned"]))
                / max(float(np.abs(prow["flux_footprint"]).max()), 1e-30)
            )
            if not bd.isolated
            else 0.0,
        )
        for k, src in enumerate(bd.sources):
            peak = src.components[0].peak if src.components else None
            if peak is None:  # isolated parent: its peak is the parent's
                peak = (int(prow["peak_y"]), int(prow["peak_x"]))
            i = index.get((int(peak[0]), int(peak[1])))
            if i is None:
                continue
            cons[i] = (conserved[k], (y0, x0, H, W))
            mods[i] = (models[k], (y0, x0, H, W))
    empty = (np.zeros((B, 1, 1)), (0, 0, 1, 1))
    out = {}
    for key, items in (("conserved", cons), ("model", mods)):
        items = [it if it is not None else empty for it in items]
        out[key + "_flat"] = np.concatenate([a.astype(np.float64).ravel() for a, _ in items])
        out[key + "_boxes"] = np.array([b for _, b in items], dtype=np.int64)
    return out, worst, sum(c is None for c in cons)


def main() -> int:
    here = Path(__file__).resolve()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=here.parents[2] / "shared" / "data")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="timing runs per executor (best)")
    args = parser.parse_args()
    path = args.data / "field_lsst_512.npz"
    if not path.exists():
        print(f"no field at {path} (give --data)", file=sys.stderr)
        return 1
    print(f"data: {path}")
    sys.path.insert(0, str(args.data))
    import metrics

    data = dict(np.load(path))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_fits(data, tmp)
        images, _ = read_image_stack([tmp / "images.fits"])
        variance, _ = read_image_stack([tmp / "variance.fits"])
        psfs, _ = read_image_stack([tmp / "psfs.fits"])
        peaks = read_peaks(tmp / "peaks.csv")
        bands = tuple(str(b) for b in data["filters"])
        obs = cdeblend.Observation(images, variance, psfs, bands=bands)

        rows = []
        results = {}
        for executor in ("serial", "threads"):
            times = []
            for _ in range(args.repeat):
                t, cat, md = run(obs, peaks, executor, args.workers)
                times.append(t)
            results[executor] = (cat, md)
            tracemalloc.start()
            run(obs, peaks, executor, args.workers)
            peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            rows.append((executor, min(times), peak_mb))
        cat, md = results["serial"]
        identical = all(
            np.array_equal(np.asarray(results["threads"][0][c]), np.asarray(cat[c]), equal_nan=True)
            for c in ("flux_conserved", "flux_model", "iterations")
        )
        save_models(tmp / "models.fits", md)
        md = load_models(tmp / "models.fits")

    par = cat[cat["is_parent"]]
    print(
        f"\n{len(par)} parents ({int(np.sum(par['n_peaks'] > 1))} blended, "
        f"{int(np.sum(par['skipped_isolated']))} isolated, {int(np.sum(par['failed']))} failed), "
        f"{int(np.sum(~cat['is_parent']))} children, {len(peaks)} peaks, "
        f"{int(np.sum(par['iterations'][par['n_peaks'] > 1]))} iterations in all"
    )
    print(f"\n{'executor':10s} {'time s':>8s} {'ms/parent':>10s} {'peak MB':>8s} {'speed-up':>9s}")
    for name, t, mb in rows:
        print(f"{name:10s} {t:8.3f} {1e3 * t / len(par):10.2f} {mb:8.1f} {rows[0][1] / t:9.2f}")
    print(f"threads give the serial rows bit for bit: {identical}")

    counts = assignment(cat, peaks)
    print(
        f"\npeaks in exactly one parent: {int(np.sum(counts == 1))} / {len(peaks)} "
        f"(none: {int(np.sum(counts == 0))}, several: {int(np.sum(counts > 1))})"
    )
    result, worst, missing = per_source_images(obs, cat, md, peaks)
    print(
        f"conservation, max |stray flux (re-apportioned from the model file) - catalog| / "
        f"footprint flux: {worst:.2e}; rows without an image: {missing}"
    )
    recs = metrics.evaluate_pair(data, result, "field")
    summary = metrics.summarize(recs)
    print("\nflux error against truth (metrics.py):")
    print(metrics.format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
