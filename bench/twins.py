"""The five bright galaxies the defaults lose, one field at a time: which of the corrections
that ``DeblendConfig()`` adds to the ``reference()`` preset loses them, and what their error
bars say.

Each of the five (a large galaxy 3-4 px from a compact source; the README's "What
is still lost") is deblended with the defaults, with the defaults and one field set to the
preset's value, with the preset, with the preset and NNLS SEDs, and with scarlet lite itself
when ``lsst.scarlet.lite`` is installed (``bench/against_lite.py``). The figure is the
fraction of the galaxy's true flux (all bands) that its conserved child keeps; below 5 % it
counts as lost. A second table gives the defaults' conserved flux error
(``conserved_flux_total_err``, all bands) of each against its true flux, and the pull.
With ``--cut-sets``, a third asks whether a cut on the child's flux S/N (conserved flux over
that error) at peaks of S/N >= 50 would single the lost ones out of those sets.

Sets are read from ``--sets-dir`` (default ``../simsets``, made by ``bench/accuracy.py
--make``).

Usage::

    python bench/twins.py [--sets-dir DIR] [--cut-sets hard_lsst_heldout,...]
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402  (the sibling bench script: loading, the one call)
import against_lite  # noqa: E402  (scarlet lite's one call)

from cdeblend import DeblendConfig  # noqa: E402

#: (set, blend number in the sorted file list, catalog row)
TWINS = [
    ("hard_lsst_heldout", 275, 1),
    ("hard_lsst_check", 36, 3),
    ("hard_lsst_fresh", 103, 1),
    ("hard_lsst_final6", 169, 5),
    ("hard_lsst_final8", 11, 0),
]
#: the child flux S/N cuts of the third table, at peaks of detection S/N >= CUT_PEAK_SNR
CUTS = (2.0, 3.0, 4.0)
CUT_PEAK_SNR = 50.0
#: the fields in which ``reference()`` differs from the defaults, compared one at a time
FIELDS = (
    "sed_solver",
    "peak_carry",
    "init_thresh_units",
    "converge_window",
    "convergence",
    "e_rel",
    "keep_best",
    "rescue_faint",
    "rescue_lost",
    "conserved_thresh",
)


def configurations() -> list[tuple[str, object]]:
    """(label, run) in the order of the table; ``run(data)`` gives the (N, B, H, W)
    conserved children."""
    reference = DeblendConfig.reference()
    configs = [("defaults", DeblendConfig())]
    for name in FIELDS:
        value = getattr(reference, name)
        configs.append((f"defaults, {name}={value!r}", DeblendConfig(**{name: value})))
    configs.append(("reference()", reference))
    configs.append(('reference(sed_solver="nnls")', DeblendConfig.reference(sed_solver="nnls")))
    rows = [(label, partial(accuracy.multi_band, config=c)) for label, c in configs]
    try:
        import lsst.scarlet.lite as scl
    except ImportError:
        print("# lsst.scarlet.lite not installed: no scarlet lite row", file=sys.stderr)
    else:
        lite = against_lite.lite_run(scl)
        rows.append(("scarlet lite", lambda data: lite(data)[0]))
    return rows


def kept(data: dict, row: int, run) -> float:
    """The fraction of source ``row``'s true flux its conserved child keeps."""
    return float(run(data)[row].sum() / data["true_flux"][row].sum())


def errors(data: dict, row: int) -> tuple[float, float, float]:
    """The defaults' kept fraction of source ``row``, its conserved flux error over its true
    flux, and the pull (conserved - true) / error, all bands summed."""
    result = accuracy.multi_band_result(data, DeblendConfig())
    flux = result.conserved_fluxes[row].sum()
    err = float(np.sqrt((result.conserved_flux_total_err[row] ** 2).sum()))
    true = data["true_flux"][row].sum()
    return flux / true, err / true, (flux - true) / err


def cut_table(folders: list[Path]) -> None:
    """Print how a child flux S/N cut at peaks of S/N >= ``CUT_PEAK_SNR`` picks the lost
    sources (truth S/N >= 20, kept < 5 %) out of the blends of ``folders``."""
    kept, child_snr, peak_snr, bright = [], [], [], []
    for folder in folders:
        for f in against_lite.blend_files(folder, 300):
            data = accuracy.load(f)
            result = accuracy.multi_band_result(data, DeblendConfig())
            flux = result.conserved_fluxes.sum(axis=1)
            err = np.sqrt((result.conserved_flux_total_err**2).sum(axis=1))
            true = data["true_flux"].sum(axis=1)
            kept.extend(np.divide(flux, true, out=np.full(len(true), np.nan), where=true > 0))
            child_snr.extend(np.divide(flux, err, out=np.zeros(len(err)), where=err > 0))
            peak_snr.extend(result.snr)
            bright.extend(data["snr"] >= 20)
    kept, child_snr, peak_snr = map(np.asarray, (kept, child_snr, peak_snr))
    lost = np.asarray(bright) & (kept < 0.05)
    peaks = peak_snr >= CUT_PEAK_SNR
    print(
        f"\nchild flux S/N cut at the {int(peaks.sum())} peaks of S/N >= {CUT_PEAK_SNR:g} of"
        f" {len(folders)} sets ({int((lost & peaks).sum())} of the lost sources among them)"
    )
    print(f"{'cut':>6s} {'flagged':>8s} {'within x2':>10s} {'lost flagged':>13s}")
    within = (kept >= 0.5) & (kept <= 2.0)
    for cut in CUTS:
        flagged = peaks & (child_snr < cut)
        share = 100 * np.sum(flagged & within) / max(int(flagged.sum()), 1)
        print(f"{cut:6.1f} {int(flagged.sum()):8d} {share:9.0f}% {int((flagged & lost).sum()):13d}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sets-dir", default=str(accuracy.DEFAULT_SETS), help="folder of the made sets"
    )
    ap.add_argument("--cut-sets", default="", help="sets for the flux S/N cut table")
    args = ap.parse_args(argv)
    blends = []
    for name, number, row in TWINS:
        files = sorted((Path(args.sets_dir) / name).glob("*.npz"))
        if len(files) <= number:
            sys.exit(
                f"{name}: blend {number} missing in {args.sets_dir} (bench/accuracy.py --make)"
            )
        blends.append((accuracy.load(files[number]), row))
    heads = [f"{name} {number}/{row}" for name, number, row in TWINS]
    print("kept fraction of the galaxy's true flux (%); < 5 % is lost")
    print(f"{'configuration':38s} " + " ".join(f"{h:>22s}" for h in heads))
    for label, run in configurations():
        cells = [100 * kept(data, row, run) for data, row in blends]
        print(f"{label:38s} " + " ".join(f"{c:22.2f}" for c in cells), flush=True)
    print("\nthe defaults' conserved flux, its error (conserved_flux_total_err) and the pull")
    print(f"{'':38s} " + " ".join(f"{h:>22s}" for h in heads))
    figures = [errors(data, row) for data, row in blends]
    for k, label in enumerate(("kept (%)", "error / true flux (%)", "pull (sigma)")):
        scale = 1.0 if k == 2 else 100.0
        print(f"{label:38s} " + " ".join(f"{scale * f[k]:22.1f}" for f in figures))
    if args.cut_sets:
        cut_table([Path(args.sets_dir) / name for name in args.cut_sets.split(",")])


if __name__ == "__main__":
    main()
