"""cdeblend's defaults against scarlet lite itself, run on the same blends on this machine.

Issue 10 quotes scarlet lite's figures on blends made with other seeds; across the harder
LSST-like batches the median moves by about +-0.007 with the seed alone, so a quoted figure
places a deblender only roughly. This bench runs the reference implementation,
``lsst.scarlet.lite``, on every blend that cdeblend's defaults deblend, and prints the
paired table of ``bench/multi_band_paired.py`` (A = cdeblend ``DeblendConfig()``,
B = scarlet lite): median |dF/F| of the conserved children at S/N >= 10, overall and per
blendedness bin, B - A with a bootstrap interval over whole blends, and the sources of truth
S/N >= 20 that keep < 5 / 20 / 35 % of their flux.

scarlet lite is not on PyPI: install it from its repository (``lsst/scarlet_lite``, its C++
operators need pybind11) so that ``import lsst.scarlet.lite`` works. It runs with the LSST
pipeline's deblender settings (``ScarletDeblendTask``'s defaults, see ``lite_children``):
a Gaussian model PSF of sigma 0.8 px, the factorized chi^2 initialization with minimum
S/N 50, background threshold 1 and a 101 x 101 monotonicity operator, the SEDs fitted once
before the fit, proximal ADAM with steps scaled by a tenth of the noise, at most 300
iterations, relative error 1e-3, at least 5 iterations, boxes resized every 3, then the
flux re-apportioned over each source's footprint. A blend where it raises gets no children
(all zero), as in the pipeline, and is counted.

scarlet lite takes seconds per blend where cdeblend takes tens of milliseconds, so its
per-entry figures are kept in ``--cache`` (one ``.npz`` per set and count of blends) and
read back on the next run.

Usage::

    python bench/against_lite.py [--sets hard_lsst_final,...] [--n 300] [--cache DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402  (the sibling bench script: loading, the one call)
import single_band_paired as paired  # noqa: E402  (the paired table)

from cdeblend import DeblendConfig  # noqa: E402

#: ScarletDeblendTask's defaults (LSST pipeline), the settings scarlet lite runs with here
PIPELINE = dict(
    model_psf_sigma=0.8,
    min_snr=50.0,
    bg_thresh=1.0,
    monotonicity_size=101,
    max_iter=300,
    e_rel=1e-3,
    min_iter=5,
    resize=3,
    spectrum_cutoff=1_000_000,
)


def lite_children(data: dict, scl, monotonicity) -> tuple[np.ndarray, dict]:
    """(N, B, H, W) conserved children of one blend by scarlet lite (``scl``), in catalog
    order, and its iterations, loss and whether it raised (then every child is zero)."""
    n = len(data["catalog"])
    n_bands, height, width = data["images"].shape
    out = np.zeros((n, n_bands, height, width), np.float32)
    stats = {"iterations": 0, "loss": np.nan, "failed": False}
    try:
        blend = _lite_fit(data, scl, monotonicity)
    except Exception as exc:  # the pipeline flags the parent and keeps no children
        stats.update(failed=True, error=repr(exc))
        return out, stats
    stats.update(iterations=int(blend.it), loss=float(-blend.loss[-1]))
    blend.conserve_flux()
    frame = scl.Box((height, width))
    for k, source in enumerate(blend.sources):
        if source.is_null:
            continue
        full = scl.Image.from_box(frame, bands=blend.observation.bands, dtype=np.float32)
        source.flux_weighted_image.insert_into(full)
        out[k] = full.data
    return out, stats


def _lite_fit(data: dict, scl, monotonicity):
    """scarlet lite's blend after the pipeline's initialization and fit."""
    images = np.array(data["images"], np.float32)
    variance = np.array(data["variance"], np.float32)
    # no data: zero weight (and a zero image there, which then does not count)
    good = np.isfinite(variance) & (variance > 0) & np.isfinite(images)
    weights = np.where(good, 1 / np.where(good, variance, 1), 0).astype(np.float32)
    images[~good] = 0
    model_psf = scl.utils.integrated_circular_gaussian(sigma=PIPELINE["model_psf_sigma"])
    observation = scl.Observation(
        images=images,
        variance=variance,
        weights=weights,
        psfs=np.array(data["psfs"], np.float32),
        model_psf=model_psf[None],
        bands=tuple(f"b{b}" for b in range(images.shape[0])),
        convolution_mode="fft",
    )
    peaks = [np.array([int(y), int(x)]) for y, x in accuracy.peaks_of(data)]
    sources = scl.initialization.FactorizedInitialization(
        observation=observation,
        centers=peaks,
        min_snr=PIPELINE["min_snr"],
        monotonicity=monotonicity,
        bg_thresh=PIPELINE["bg_thresh"],
        initial_bg_thresh=PIPELINE["bg_thresh"],
    ).sources
    blend = scl.Blend(sources, observation)
    if len(peaks) * images.shape[1] * images.shape[2] < PIPELINE["spectrum_cutoff"]:
        blend.fit_spectra()
    blend.parameterize(
        partial(
            scl.component.default_adaprox_parameterization,
            noise_rms=observation.noise_rms / 10,
        )
    )
    blend.fit(
        max_iter=PIPELINE["max_iter"],
        e_rel=PIPELINE["e_rel"],
        min_iter=PIPELINE["min_iter"],
        resize=PIPELINE["resize"],
    )
    return blend


def records(folder: Path, n: int, run, metrics) -> dict:
    """Per entry (|dF/F|, blendedness, S/N) and its blend number, the kept fractions of the
    sources of truth S/N >= 20, and the run's CPU seconds, iterations and failed blends."""
    entries, blend, kept, iterations, failed = [], [], [], [], 0
    cpu = time.process_time()
    for b, f in enumerate(sorted(folder.glob("*.npz"))[:n]):
        data = accuracy.load(f)
        conserved, stats = run(data)
        iterations.append(stats["iterations"])
        failed += stats["failed"]
        frac = conserved.sum(axis=(1, 2, 3)) / data["true_flux"].sum(axis=1)
        kept.extend(frac[data["snr"] >= 20])
        for r in metrics.evaluate_pair(data, {"conserved": conserved}, f.name):
            entries.append((abs(r["conserved_dF/F"]), r["blendedness"], r.get("band_snr", np.inf)))
            blend.append(b)
    return {
        "entries": np.array(entries),
        "blend": np.array(blend),
        "kept": np.array(kept),
        "cpu": time.process_time() - cpu,
        "iterations": float(np.mean(iterations)),
        "failed": failed,
    }


def cdeblend_run(data: dict) -> tuple[np.ndarray, dict]:
    """cdeblend's defaults, the one call of ``bench/accuracy.py``."""
    obs = accuracy.Observation(data["images"], data["variance"], data["psfs"])
    result = accuracy.Deblender(DeblendConfig()).deblend(obs, accuracy.peaks_of(data))
    return result.conserved_images(), {"iterations": result.iterations, "failed": result.fallback}


def lite_records(folder: Path, n: int, metrics, cache: Path) -> dict:
    """scarlet lite's records of a set, read from ``cache`` when there."""
    path = cache / f"{folder.name}_{n}.npz"
    if path.exists():
        with np.load(path) as d:
            return {k: d[k] for k in d.files}
    import lsst.scarlet.lite as scl

    monotonicity = scl.operators.Monotonicity((PIPELINE["monotonicity_size"],) * 2)
    rec = records(folder, n, partial(lite_children, scl=scl, monotonicity=monotonicity), metrics)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **rec)
    return rec


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(accuracy.DEFAULT_DATA), help="the shared data folder")
    ap.add_argument(
        "--sets-dir", default=str(accuracy.DEFAULT_SETS), help="folder of the made sets"
    )
    ap.add_argument("--sets", default="sim_lsst,sim_hsc,hard_lsst_final,hard_hsc_final")
    ap.add_argument("--n", type=int, default=300, help="blends per set (first n)")
    ap.add_argument("--boot", type=int, default=400, help="bootstrap resamplings")
    ap.add_argument(
        "--cache",
        default=str(accuracy.DEFAULT_SETS / "lite_cache"),
        help="folder of scarlet lite's per-set figures",
    )
    args = ap.parse_args(argv)
    data = Path(args.data)
    sys.path.insert(0, str(data))
    import metrics  # the data folder's metrics.py

    print("A = cdeblend DeblendConfig(); B = scarlet lite, the LSST pipeline's settings")
    print("median |dF/F| of the conserved children (data folder's metrics.py)")
    summary = []
    for name in args.sets.split(","):
        folder = accuracy.ensure_set(name, Path(args.sets_dir), args.n, False, "", data)
        if folder is None:
            continue
        a = records(folder, args.n, cdeblend_run, metrics)
        b = lite_records(folder, args.n, metrics, Path(args.cache))
        paired.report(
            name, [a["entries"], b["entries"]], [a["kept"], b["kept"]], a["blend"], args.boot
        )
        for label, r in (("A", a), ("B", b)):
            print(
                f"  {label}: CPU {float(r['cpu']):.0f} s, {float(r['iterations']):.1f} iterations"
                f" per blend, {int(r['failed'])} blends failed"
            )
        summary.append((name, a, b))
    _summary_table(summary)


def _median(r: dict, lohi) -> float:
    """Median |dF/F| of a run's entries at S/N >= 10 in a blendedness bin (None: all)."""
    e = r["entries"]
    return float(np.median(e[paired.in_bin(e, np.arange(len(e)), lohi, 10.0), 0]))


def _summary_table(summary: list) -> None:
    """One line per set: cdeblend / scarlet lite medians at S/N >= 10 overall and per
    blendedness bin, the overall ratio, and the lost counts."""
    bins = [lohi for _, lohi, cut in paired.BINS if cut == 10.0]
    print("\nS/N >= 10, cdeblend / scarlet lite: all (ratio); blend < 0.05; 0.05-0.3; >= 0.3")
    head = ("all (ratio)", "< 0.05", "0.05-0.3", ">= 0.3")
    print(f"{'set':20s} {head[0]:>21s} " + " ".join(f"{h:>15s}" for h in head[1:]) + "  lost A|B")
    for name, a, b in summary:
        m = [(_median(a, lohi), _median(b, lohi)) for lohi in bins]
        cells = [f"{x:.4f}/{y:.4f}" for x, y in m]
        ratio = m[0][0] / m[0][1]
        lost = f"{int(np.sum(a['kept'] < 0.05))}|{int(np.sum(b['kept'] < 0.05))}"
        print(
            f"{name:20s} {cells[0]:>15s} ({ratio:.2f}) "
            + " ".join(f"{c:>15s}" for c in cells[1:])
            + f"  {lost} of {len(a['kept'])}"
        )


if __name__ == "__main__":
    main()
