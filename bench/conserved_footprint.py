"""The children's footprint (``DeblendConfig.conserved_thresh``) per set and blendedness bin.

Each blend is fitted once with the defaults; its conserved children are then re-apportioned
with each threshold (the footprint keeps the pixels where the total convolved model reaches
``thresh * sqrt(variance)`` in some band; 0 is scarlet lite's rule, every positive pixel).
For each set and threshold: the median |dF/F| of the conserved children for entries with
band S/N >= 10 (the data folder's ``metrics.py``), overall and per blendedness bin, the
median signed dF/F (the bias the truncated wings give), the footprint's share of the blend
box and the number of sources of truth S/N >= 20 that keep < 5% of their flux.

The made sets are read from ``--sets-dir`` (default ``../simsets``; see
``bench/accuracy.py`` for how they are made), the shared ``sim_*`` sets from ``--data``
(default ``../shared/data`` relative to the repository root).

Usage::

    python bench/conserved_footprint.py [--sets a,b] [--n 300] [--thresh 0,0.01,0.03]
        [--workers 2]
"""

from __future__ import annotations

import dataclasses
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from accuracy import BINS, load, peaks_of, set_parser

from cdeblend import DeblendConfig, Deblender, Observation

TUNE = "hard_lsst_tune,hard_hsc_tune,lsst_tune,hsc_tune,sim_lsst,sim_hsc"
THRESH = "0,0.01,0.02,0.03,0.05,0.1"


def one_blend(path: Path, data_dir: str, thresholds: list[float]) -> tuple[list, list, list]:
    """Per threshold: the blend's metric records, its kept fractions of the S/N >= 20
    sources and the footprint's share of the box."""
    sys.path.insert(0, data_dir)
    import metrics  # the data folder's metrics.py

    data = load(path)
    obs = Observation(data["images"], data["variance"], data["psfs"])
    fitted = Deblender(DeblendConfig()).deblend(obs, peaks_of(data))
    bright = data["snr"] >= 20
    records, kept, area = [], [], []
    for t in thresholds:
        res = dataclasses.replace(fitted, conserved_thresh=t)
        conserved = res.conserved_images()
        frac = conserved.sum(axis=(1, 2, 3)) / data["true_flux"].sum(axis=1)
        records.append(metrics.evaluate_pair(data, {"conserved": conserved}, path.name))
        kept.append(frac[bright])
        area.append(float(res.footprint.mean()))
    return records, kept, area


def summary(records: list[dict]) -> tuple[list[float], float]:
    """Median |dF/F| overall and per bin at band S/N >= 10, and the median signed dF/F."""
    d = np.array([r["conserved_dF/F"] for r in records])
    snr = np.array([r["band_snr"] for r in records])
    blend = np.array([r["blendedness"] for r in records])
    good = (snr >= 10) & np.isfinite(d)
    edges = [(0.0, 0.05), (0.05, 0.3), (0.3, np.inf)]
    meds = [float(np.median(np.abs(d[good])))]
    for lo, hi in edges:
        sel = good & (blend >= lo) & (blend < hi)
        meds.append(float(np.median(np.abs(d[sel]))) if sel.any() else float("nan"))
    return meds, float(np.median(d[good]))


def main(argv=None) -> None:
    ap = set_parser(__doc__.splitlines()[0], TUNE)
    ap.add_argument("--thresh", default=THRESH, help="thresholds, comma separated")
    ap.add_argument("--workers", type=int, default=2, help="processes")
    args = ap.parse_args(argv)
    thresholds = [float(t) for t in args.thresh.split(",")]
    data_dir = str(Path(args.data).resolve())
    print("median |dF/F| at S/N >= 10: all (" + " / ".join(BINS) + "); median dF/F; ", end="")
    print("footprint share of the box; lost S/N >= 20 (keep < 5%)")
    with ProcessPoolExecutor(args.workers) as pool:
        for name in args.sets.split(","):
            folder = Path(args.data, name) if name.startswith("sim_") else Path(args.sets_dir, name)
            files = sorted(folder.glob("*.npz"))[: args.n]
            if not files:
                print(f"\n{name}: no blends in {folder}")
                continue
            n = len(files)
            out = list(pool.map(one_blend, files, [data_dir] * n, [thresholds] * n))
            print(f"\n{name} ({n} blends)")
            for k, t in enumerate(thresholds):
                meds, bias = summary([r for recs, _, _ in out for r in recs[k]])
                kept = np.concatenate([kp[k] for _, kp, _ in out])
                area = np.mean([a[k] for _, _, a in out])
                bins = " / ".join(f"{m:.4f}" for m in meds[1:])
                print(
                    f"  thresh {t:<5g} {meds[0]:.4f} ({bins})  bias {bias:+.4f}  "
                    f"footprint {area:.2f}  lost {int(np.sum(kept < 0.05))}/{kept.size}"
                )


if __name__ == "__main__":
    main()
