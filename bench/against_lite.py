"""cdeblend's defaults against scarlet lite itself, run on the same blends on this machine.

Issue 10 quotes scarlet lite's figures on blends made with other seeds; across the harder
LSST-like batches the median moves by about +-0.007 with the seed alone, so a quoted figure
places a deblender only roughly. This bench runs the reference implementation,
``lsst.scarlet.lite``, on every blend that cdeblend's defaults deblend, and prints the
paired table of ``bench/single_band_paired.py`` (the one ``bench/multi_band_paired.py``
prints; A = cdeblend ``DeblendConfig()``, B = scarlet lite): median |dF/F| of the conserved
children at S/N >= 10, overall and per blendedness bin, B - A with a bootstrap interval over
whole blends, and the sources of truth S/N >= 20 that keep < 5 / 20 / 35 % of their flux.
Both get the same integer peaks (``bench/accuracy.py``'s) and the whole blend stamp as the
parent footprint (the pipeline would also zero the weights outside the detection footprint).

scarlet lite is not on PyPI: install it from its repository (``lsst/scarlet_lite``, its C++
operators need pybind11) so that ``import lsst.scarlet.lite`` works. It runs with the LSST
pipeline's deblender settings (``ScarletDeblendTask``'s defaults, ``PIPELINE`` below):
a Gaussian model PSF of sigma 0.8 px, the factorized chi^2 initialization with minimum
S/N 50, background threshold 1 and a 101 x 101 monotonicity operator, the SEDs fitted once
before the fit, proximal ADAM with steps scaled by a tenth of the noise, at most 300
iterations, relative error 1e-3, at least 5 iterations, boxes resized every 3, then the
flux re-apportioned over each source's footprint. A blend where it raises (or moves a
source off its peak, which the pipeline also treats as a failure) gets no children (all
zero), as in the pipeline, and is counted as failed.

scarlet lite takes about 0.3 s of CPU per harder blend where cdeblend takes about 0.03 s,
so its per-entry figures are kept in ``--cache`` (default: ``lite_cache`` in ``--sets-dir``), one
``.npz`` per set, with a digest of the blend files it read and of the settings and
scarlet lite version it ran with; a cache that does not match them is run again. CPU
seconds are those of the deblending calls only (not loading or metrics).

Usage::

    python bench/against_lite.py [--sets hard_lsst_final,...] [--n 300] [--cache DIR]
"""

from __future__ import annotations

import argparse
import hashlib
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


def lite_run(scl):
    """The one call of scarlet lite (module ``scl``): ``run(data) -> (children, stats)``,
    the (N, B, H, W) conserved children in catalog order, its iterations and whether it
    failed (then every child is zero)."""
    # the pipeline builds one monotonicity operator and reuses it for every blend
    monotonicity = scl.operators.Monotonicity((PIPELINE["monotonicity_size"],) * 2)
    return partial(_lite_children, scl=scl, monotonicity=monotonicity)


def _lite_children(data: dict, scl, monotonicity) -> tuple[np.ndarray, dict]:
    n = len(data["catalog"])
    n_bands, height, width = data["images"].shape
    out = np.zeros((n, n_bands, height, width), np.float32)
    try:
        blend = _lite_fit(data, scl, monotonicity)
        blend.conserve_flux()
        frame = scl.Box((height, width))
        for k, source in enumerate(blend.sources):
            if source.is_null:
                continue
            full = scl.Image.from_box(frame, bands=blend.observation.bands, dtype=np.float32)
            source.flux_weighted_image.insert_into(full)
            out[k] = full.data
    except Exception as exc:  # the pipeline flags the parent and keeps no children
        out[:] = 0
        return out, {"iterations": 0, "failed": True, "error": repr(exc)}
    return out, {"iterations": int(blend.it), "failed": False}


def _lite_fit(data: dict, scl, monotonicity):
    """scarlet lite's blend after the pipeline's initialization and fit."""
    images = np.array(data["images"], np.float32)
    variance = np.array(data["variance"], np.float32)
    # no data: zero weight, as the pipeline does; a non-finite image value is also zeroed
    good = np.isfinite(variance) & (variance > 0) & np.isfinite(images)
    weights = np.where(good, 1 / np.where(good, variance, 1), 0).astype(np.float32)
    images[~np.isfinite(images)] = 0
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
    for source, peak in zip(sources, peaks, strict=True):
        if source.components and tuple(source.center) != tuple(peak):
            raise ValueError(f"source moved off its peak {tuple(peak)}: {source.center}")
    return blend


def blend_files(folder: Path, n: int) -> list[Path]:
    """The first ``n`` blends of a set, in the order every bench reads them."""
    return sorted(folder.glob("*.npz"))[:n]


def records(files: list[Path], run, metrics) -> dict:
    """Per entry (|dF/F|, blendedness, S/N) and its blend number, the kept fractions of the
    sources of truth S/N >= 20, and the run's CPU seconds (``run`` only), mean iterations,
    failed blends and first error."""
    entries, blend, kept, iterations, failed, error = [], [], [], [], 0, ""
    cpu = 0.0
    for b, f in enumerate(files):
        data = accuracy.load(f)
        t0 = time.process_time()
        conserved, stats = run(data)
        cpu += time.process_time() - t0
        iterations.append(stats["iterations"])
        failed += bool(stats["failed"])
        error = error or stats.get("error", "")
        rows, bright = paired.blend_figures(data, conserved, f.name, metrics)
        entries.extend(rows)
        kept.extend(bright)
        blend.extend([b] * len(rows))
    return {
        "entries": np.array(entries).reshape(-1, 3),
        "blend": np.array(blend, dtype=np.int64),
        "kept": np.array(kept),
        "cpu": cpu,
        "iterations": float(np.mean(iterations)),
        "failed": failed,
        "error": error,
    }


def cdeblend_run(data: dict) -> tuple[np.ndarray, dict]:
    """cdeblend's defaults, the one call of ``bench/accuracy.py`` (with its iterations and
    whether the fit fell back to PSF-shaped models)."""
    result = accuracy.multi_band_result(data, DeblendConfig())
    return result.conserved_images(), {"iterations": result.iterations, "failed": result.fallback}


def digest(files: list[Path], scl) -> str:
    """What scarlet lite's figures depend on: the blend files' bytes, the settings and its
    version."""
    h = hashlib.sha256(repr((PIPELINE, getattr(scl, "__version__", ""))).encode())
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def lite_records(name: str, files: list[Path], metrics, cache: Path) -> dict:
    """scarlet lite's records of a set, read from ``cache`` when its digest matches."""
    import lsst.scarlet.lite as scl

    key = digest(files, scl)
    path = cache / f"{name}_{len(files)}.npz"
    if path.exists():
        with np.load(path) as d:
            if "digest" in d.files and str(d["digest"]) == key:
                rec = {k: d[k] for k in d.files}
                rec["cached"] = True
                return rec
        print(f"# {path}: other blends or settings, run again", file=sys.stderr)
    rec = records(files, lite_run(scl), metrics)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, digest=key, **rec)
    return rec


def check_paired(a: dict, b: dict) -> None:
    """Raise unless A's and B's entries are the same entries (blend, blendedness, S/N: the
    truth's, so any misalignment shows) and the same bright sources."""
    same = (
        np.array_equal(a["blend"], b["blend"])
        and a["entries"].shape == b["entries"].shape
        and np.array_equal(a["entries"][:, 1:], b["entries"][:, 1:], equal_nan=True)
        and len(a["kept"]) == len(b["kept"])
    )
    if not same:
        raise RuntimeError("cdeblend's and scarlet lite's entries are not the same entries")


def finite_pairs(a: dict, b: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A's and B's entries and the blend numbers, without the entries where either |dF/F|
    is not finite (a source of zero true flux)."""
    ok = np.isfinite(a["entries"][:, 0]) & np.isfinite(b["entries"][:, 0])
    return a["entries"][ok], b["entries"][ok], a["blend"][ok]


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
        "--cache", default=None, help="folder of scarlet lite's figures (SETS_DIR/lite_cache)"
    )
    args = ap.parse_args(argv)
    data = Path(args.data)
    cache = Path(args.cache) if args.cache else Path(args.sets_dir) / "lite_cache"
    sys.path.insert(0, str(data))
    import metrics  # the data folder's metrics.py

    print("A = cdeblend DeblendConfig(); B = scarlet lite, the LSST pipeline's settings")
    print("median |dF/F| of the conserved children (data folder's metrics.py)")
    summary = []
    for name in args.sets.split(","):
        folder = accuracy.ensure_set(
            name, Path(args.sets_dir), args.n, make=False, sim_python="", data=data
        )
        files = blend_files(folder, args.n) if folder is not None else []
        if not files:
            print(f"# {name}: no blends", file=sys.stderr)
            continue
        a = records(files, cdeblend_run, metrics)
        b = lite_records(name, files, metrics, cache)
        check_paired(a, b)
        ea, eb, blend = finite_pairs(a, b)
        paired.report(name, [ea, eb], [a["kept"], b["kept"]], blend, args.boot)
        _print_run("A", a, "fell back to PSF-shaped models")
        _print_run("B", b, "failed (no children)")
        summary.append((name, {**a, "entries": ea}, {**b, "entries": eb}))
    _summary_table(summary)
    _tail_table(summary)


def _print_run(label: str, r: dict, failed: str) -> None:
    """One line of a run's cost and failures."""
    cached = " (cached)" if r.get("cached") else ""
    print(
        f"  {label}: CPU {float(r['cpu']):.1f} s{cached}, {float(r['iterations']):.1f}"
        f" iterations per blend, {int(r['failed'])} blends {failed}"
        + (f"; first error {r['error']}" if str(r["error"]) else "")
    )


def _median(r: dict, lohi) -> float:
    """Median |dF/F| of a run's entries at S/N >= 10 in a blendedness bin (None: all)."""
    e = r["entries"]
    rows = paired.in_bin(e, np.arange(len(e)), lohi, 10.0)
    return float(np.median(e[rows, 0])) if len(rows) else float("nan")


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
        ratio = m[0][0] / m[0][1] if m[0][1] > 0 else float("nan")
        lost = f"{int(np.sum(a['kept'] < 0.05))}|{int(np.sum(b['kept'] < 0.05))}"
        print(
            f"{name:20s} {cells[0]:>15s} ({ratio:.2f}) "
            + " ".join(f"{c:>15s}" for c in cells[1:])
            + f"  {lost} of {len(a['kept'])}"
        )


#: kept fractions that count as starved (below) and, inverted, as inflated (above)
TAIL = (0.05, 0.1, 0.2, 0.35, 0.5)


def _tail_table(summary: list) -> None:
    """The bright sources' tails over all the sets: how many of truth S/N >= 20 keep less
    than each fraction of ``TAIL`` of their flux, and how many more than its inverse.

    "Lost" (< 5 %) is one point of a continuous distribution; the whole tail shows whether a
    count there is a threshold's accident.
    """
    if not summary:
        return
    a = np.concatenate([r["kept"] for _, r, _ in summary])
    b = np.concatenate([r["kept"] for _, _, r in summary])
    print(f"\nsources of truth S/N >= 20 over the {len(summary)} sets ({len(a)}), A | B:")
    print("  kept below   " + "  ".join(f"{100 * t:>9.0f}%" for t in TAIL))
    print("  count        " + "  ".join(f"{_below(a, t):>4d}|{_below(b, t):<5d}" for t in TAIL))
    print("  kept above   " + "  ".join(f"{100 / t:>9.0f}%" for t in TAIL))
    print("  count        " + "  ".join(f"{_above(a, t):>4d}|{_above(b, t):<5d}" for t in TAIL))
    lost_a, lost_b = a < TAIL[0], b < TAIL[0]
    print(
        f"  lost (< {100 * TAIL[0]:.0f} %) by both: {int(np.sum(lost_a & lost_b))}; by A only:"
        f" {int(np.sum(lost_a & ~lost_b))} (B keeps a median {_median_pct(b[lost_a & ~lost_b])});"
        f" by B only: {int(np.sum(lost_b & ~lost_a))} (A keeps a median"
        f" {_median_pct(a[lost_b & ~lost_a])})"
    )


def _median_pct(kept: np.ndarray) -> str:
    return f"{100 * np.median(kept):.0f} %" if len(kept) else "-"


def _below(kept: np.ndarray, t: float) -> int:
    return int(np.sum(kept < t))  # NaN (no true flux) counts in neither tail


def _above(kept: np.ndarray, t: float) -> int:
    return int(np.sum(kept > 1 / t))


if __name__ == "__main__":
    main()
