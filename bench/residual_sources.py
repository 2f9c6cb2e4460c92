"""The residual-source option on the simulations: neighbours' flux error with and without.

The simulations hold sources below the detection threshold that are in the image but not
in the catalog. ``DeblendConfig(residual_sources=True)`` turns significant residual peaks
of the fit (matched-filter S/N >= ``residual_snr``, >= ``residual_min_distance`` px from
every source) into sources and continues the fit. For ``sim_lsst`` and ``sim_hsc`` this
prints, off and on:

* ``miss``: sources in the image with S/N >= 5 not in the catalog;
* added sources: how many, and whose light lies under each: mostly undetected sources'
  (``undet``), a detected source's (``split``: the fit missed part of it, e.g. its wings), or
  neither (``noise``);
* the detected sources' flux error against truth, median |dF/F| of the model flux and of
  the conserved flux (entries with band S/N >= 10), for all sources and for the
  *contaminated* ones: those for which the undetected sources' light makes up at least 2%
  of ``sum(t_i T) / sum(t_i^2)`` - 1 (the blendedness due to undetected sources);
* the summed final loss and the wall time;
* ``ctl``: the control, the option off but every blend where it would add sources
  continued (same settings) without them: adding continues the ADAM fit with fresh moments,
  which by itself moves converged models; ``ctl`` against ``on`` separates that from the
  effect of the new sources.

The undetected sources of the simulations are below S/N 5 by construction (the detection
threshold), so they are hard to find in the residual; the ``-drop`` rows therefore also
remove from each catalog (of 3 or more sources) its faintest source with S/N >= 15, a
missed neighbour that should be found, and count it with the undetected ones.

Reads ``--data`` (default ``../shared/data`` relative to the repository root). Usage::

    python bench/residual_sources.py [--data PATH] [--sets sim_lsst,sim_hsc] [--snr 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import time
from pathlib import Path

import numpy as np

from cdeblend import DeblendConfig, Deblender, DeblendResult, Observation
from cdeblend.deblender import fit_blend
from cdeblend.incremental import _copy_blend, residual_peaks

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def load(path: str, drop: bool = False) -> dict:
    """One blend; with ``drop``, the detected source of lowest S/N among those with S/N >=
    15 is moved to the undetected ones (a missed neighbour the option should find)."""
    with np.load(path, allow_pickle=False) as d:
        data = {k: d[k] for k in d.files}
    if not drop:
        return data
    snr = data["snr"]
    cand = np.flatnonzero(snr >= 15)
    if len(data["catalog"]) < 3 or not len(cand):
        return data
    i = int(cand[np.argmin(snr[cand])])
    keep = np.arange(len(snr)) != i
    for key in ("true_images", "true_x", "true_y", "true_flux", "snr", "catalog"):
        if key.startswith("true_") or key == "snr":
            und = "undetected_" + key
            data[und] = np.concatenate([data[und], data[key][i : i + 1]])
        data[key] = data[key][keep]
    return data


def contamination(data: dict) -> np.ndarray:
    """(N, B) undetected light under each detected source: sum(t_i U) / sum(t_i^2)."""
    t = data["true_images"].astype(np.float64)
    u = data["undetected_true_images"].astype(np.float64).sum(axis=0)
    own = np.einsum("nbij,nbij->nb", t, t)
    return np.divide(np.einsum("nbij,bij->nb", t, u), own, out=np.zeros_like(own), where=own > 0)


def band_snr(data: dict) -> np.ndarray:
    t = data["true_images"].astype(np.float64)
    var = data["variance"].astype(np.float64)
    ivar = np.divide(1.0, var, out=np.zeros_like(var), where=var > 0)
    return np.sqrt(np.einsum("nbij,bij->nb", t * t, ivar))


def classify(added_peaks: np.ndarray, data: dict) -> tuple[int, int, int]:
    """Whose light lies under each added peak: (undetected sources', a detected source's
    (the fit split it), noise), by the larger of the two truths' S/N there (sum over bands
    of truth / sigma at the pixel; "noise" when both are below 1)."""
    sigma = np.sqrt(data["variance"].astype(np.float64))
    det = data["true_images"].astype(np.float64).sum(axis=0) / sigma
    und = data["undetected_true_images"].astype(np.float64).sum(axis=0) / sigma
    counts = [0, 0, 0]
    for y, x in added_peaks:
        d, u = det[:, y, x].sum(), und[:, y, x].sum()
        counts[0 if u > d and u >= 1 else 1 if d >= 1 else 2] += 1
    return tuple(counts)


def continued_without_adding(res, config: DeblendConfig):
    """The control: where the option would add sources, continue the fit without them."""
    peaks, _ = residual_peaks(
        res,
        config.residual_snr,
        config.residual_min_distance,
        config.residual_max_sources,
        config.residual_model_ratio,
        config.residual_image_peak,
    )
    if not len(peaks):
        return res
    blend = _copy_blend(res.blend, config.bg_thresh)
    loss = fit_blend(blend, config)[0]
    return DeblendResult(blend, loss, res.loss_history, res.iterations, True, res.snr)


def run(files: list[str], config: DeblendConfig, drop: bool, control: bool = False) -> dict:
    rows = dict(model=[], cons=[], true=[], snr=[], cont=[])
    added = np.zeros(3, dtype=int)
    missed = 0
    loss = 0.0
    t0 = time.perf_counter()
    for f in files:
        data = load(f, drop)
        obs = Observation(data["images"], data["variance"], data["psfs"])
        cat = data["catalog"]
        peaks = np.stack([cat["y"], cat["x"]], axis=1)
        if control:
            plain = dataclasses.replace(config, residual_sources=False)
            res = continued_without_adding(Deblender(plain).deblend(obs, peaks), config)
        else:
            res = Deblender(config).deblend(obs, peaks)
        n = len(cat)
        loss += res.loss
        missed += int(np.sum(data["undetected_snr"] >= 5))
        if res.added is not None:
            added += classify(np.array([s.peak for s in res.blend.sources[n:]]), data)
        rows["model"].append(res.fluxes[:n])
        rows["cons"].append(res.conserved_fluxes[:n])
        rows["true"].append(data["true_flux"])
        rows["snr"].append(band_snr(data))
        rows["cont"].append(contamination(data))
    out = {k: np.concatenate(v).ravel() for k, v in rows.items()}
    out.update(added=added, missed=missed, loss=loss, time=time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--sets", default="sim_lsst,sim_hsc")
    ap.add_argument("--snr", type=float, default=5.0, help="residual_snr")
    args = ap.parse_args()
    print(
        "median |dF/F| of detected sources, entries with band S/N >= 10; contaminated: "
        "undetected light >= 2% of the source's (sum t_i U / sum t_i^2)"
    )
    print(
        f"{'set':<14} {'residual':<8} {'miss':>4} {'added':>5} {'undet':>5} {'split':>5} "
        f"{'noise':>5} "
        f"{'model':>7} {'cons':>7} {'n_cont':>6} {'model_c':>7} {'cons_c':>7} "
        f"{'loss':>10} {'time_s':>6}"
    )
    for name, drop in ((n, d) for n in args.sets.split(",") for d in (False, True)):
        files = sorted(glob.glob(os.path.join(args.data, name, "*.npz")))
        label = name + ("-drop" if drop else "")
        for mode in ("off", "on", "ctl"):
            cfg = DeblendConfig(residual_sources=mode == "on", residual_snr=args.snr)
            r = run(files, cfg, drop, control=mode == "ctl")
            good = r["snr"] >= 10
            cont = good & (r["cont"] >= 0.02)

            def med(kind: str, sel: np.ndarray, r: dict = r) -> float:
                return float(np.median(np.abs(r[kind][sel] / r["true"][sel] - 1)))

            a = r["added"]
            print(
                f"{label:<14} {mode:<8} {r['missed']:>4} {a.sum():>5} "
                f"{a[0]:>5} {a[1]:>5} {a[2]:>5} "
                f"{med('model', good):>7.4f} {med('cons', good):>7.4f} "
                f"{cont.sum():>6} {med('model', cont):>7.4f} {med('cons', cont):>7.4f} "
                f"{r['loss']:>10.0f} {r['time']:>6.1f}"
            )


if __name__ == "__main__":
    main()
