"""Do better peak positions improve the fluxes? Per set and blendedness bin.

The simulated catalogs give integer peaks: the true centre plus a centroid jitter (0.25 px
on the shared-like sets, 0.4 px on the harder ones), rounded. This script measures, with the
figures of ``bench/accuracy.py`` (conserved median |dF/F| of entries with band S/N >= 10,
overall and per blendedness bin, all entries, and S/N >= 20 sources keeping < 5% of their
flux):

Multi band (``DeblendConfig()``), the peaks handed to the deblender:
  - ``catalog``: the catalog's peaks (what the defaults get);
  - ``refined``: :func:`cdeblend.peaks.refine_peaks` on the chi^2 detection image (a move of
    at most 1 px, each step rising by more than ``--k`` times the noise of a difference of
    two pixels, ``sqrt(2 sum_b 1/sigma_b^2)``);
  - ``refined, S/N >= 100``: the same for the peaks whose matched-filter S/N
    (:func:`cdeblend.initialization.peak_snr`) is at least 100, the others as given;
  - ``truth``: the pixel of the true centre (an oracle no user has: the most any peak
    refinement could give).

Single band (the one call ``SingleBandDeblender().deblend``), where the PSF fits start:
  - ``subpixel_centers=False``: at the integer peaks;
  - ``defaults``: at :func:`cdeblend.peaks.subpixel_centers` of the image.

Sets are read from ``--sets-dir`` (default ``../simsets``, made by ``bench/accuracy.py
--make``) and the shared ones from ``--data`` (default ``../shared/data`` relative to the
repository root). Tune on the ``*_tune`` sets; the ``*_heldout`` ones confirm a choice.

Usage::

    python bench/peak_centres.py [--data PATH] [--sets-dir DIR] [--n 300] [--sets a,b,...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402  (this folder's bench/accuracy.py: set loading and the table)

from cdeblend import DeblendConfig, Deblender, Observation, SingleBandConfig  # noqa: E402
from cdeblend.initialization import chi2_coadd, peak_snr  # noqa: E402
from cdeblend.peaks import refine_peaks  # noqa: E402

TUNE = "hard_lsst_tune,hard_hsc_tune,lsst_tune,hsc_tune,hard_single_tune,single_tune"


def truth_peaks(data: dict) -> np.ndarray:
    """The pixels of the true centres (the oracle)."""
    return np.floor(np.stack([data["true_y"], data["true_x"]], axis=1) + 0.5).astype(np.int64)


def refined_peaks(data: dict, k: float, min_snr: float = 0.0) -> np.ndarray:
    """The catalog's peaks refined on the chi^2 detection image with a noise threshold
    (only those with matched-filter S/N >= ``min_snr``)."""
    obs = Observation(data["images"], data["variance"], data["psfs"])
    noise = np.asarray(obs.noise_rms, dtype=np.float64)
    sigma_d = float(np.sqrt(np.sum(1.0 / noise[noise > 0] ** 2)))
    peaks = accuracy.peaks_of(data)
    refined = refine_peaks(chi2_coadd(obs), peaks, 1, k * np.sqrt(2) * sigma_d)
    if min_snr > 0:
        snr = np.array([peak_snr(obs, (int(y), int(x))) for y, x in peaks])
        refined = np.where((snr >= min_snr)[:, None], refined, peaks)
    return refined


def multi_band_with(peak_fn):
    """accuracy.multi_band with other peaks (rows stay aligned with the catalog)."""

    def run(data: dict, config: DeblendConfig) -> np.ndarray:
        obs = Observation(data["images"], data["variance"], data["psfs"])
        return Deblender(config).deblend(obs, peak_fn(data)).conserved_images()

    return run


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(accuracy.DEFAULT_DATA), help="the shared data folder")
    ap.add_argument("--sets-dir", default=str(accuracy.DEFAULT_SETS), help="the made sets")
    ap.add_argument("--n", type=int, default=300, help="blends per set (first n)")
    ap.add_argument("--sets", default=TUNE)
    ap.add_argument("--k", type=float, default=2.0, help="refine_peaks threshold (noise units)")
    args = ap.parse_args(argv)
    data = Path(args.data)
    sys.path.insert(0, str(data))
    import metrics  # the data folder's metrics.py

    print("conserved children, median |dF/F| (entries); 'lost': truth S/N >= 20 keeping < 5%")
    for name in args.sets.split(","):
        folder = accuracy.ensure_set(name, Path(args.sets_dir), args.n, False, "", data)
        if folder is None:
            continue
        if "single" in name:
            rows = [
                (
                    "subpixel_centers=False",
                    accuracy.single_band,
                    SingleBandConfig(subpixel_centers=False),
                ),
                ("defaults", accuracy.single_band, SingleBandConfig()),
            ]
        else:
            cfg = DeblendConfig()
            rows = [
                ("catalog peaks", multi_band_with(accuracy.peaks_of), cfg),
                (
                    f"refined (k={args.k:g})",
                    multi_band_with(lambda d: refined_peaks(d, args.k)),
                    cfg,
                ),
                (
                    f"refined S/N>=100 (k={args.k:g})",
                    multi_band_with(lambda d: refined_peaks(d, args.k, 100.0)),
                    cfg,
                ),
                ("truth pixels (oracle)", multi_band_with(truth_peaks), cfg),
            ]
        table = [
            (label, *accuracy.evaluate(folder, args.n, run, c, metrics)) for label, run, c in rows
        ]
        accuracy.report(name, table, lite_all_entries="single" in name)


if __name__ == "__main__":
    main()
