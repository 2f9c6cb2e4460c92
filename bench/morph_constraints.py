"""The multi-band morphology constraints of ``DeblendConfig`` (``symmetry``,
``symmetry_center``, ``rescue_dead_level``, ``min_gradient``) and the repair of lost sources
(``rescue_lost``, ``rescue_lost_sed``, ``rescue_lost_fraction``) per set and blendedness bin.

For each set and each configuration: the median |dF/F| of the conserved children for entries
with band S/N >= 10 (the data folder's ``metrics.py``), overall and per blendedness bin, and
the number of sources of truth S/N >= 20 that keep < 5% of their flux ("lost"), with the
lost ones listed (file, source, S/N, kept fraction) under ``--list-lost``.

The made sets are read from ``--sets-dir`` (default ``../simsets``; see
``bench/accuracy.py`` for how they are made), the shared ``sim_*`` sets from ``--data``
(default ``../shared/data`` relative to the repository root).

Usage::

    python bench/morph_constraints.py [--sets a,b] [--n 300] [--configs defaults,bold]
    python bench/morph_constraints.py --configs "defaults,disk_percentile=50;converge_window=10"
"""

from __future__ import annotations

import ast
import sys
import time
from pathlib import Path

import numpy as np
from accuracy import BINS, load, multi_band, set_parser

from cdeblend import DeblendConfig

TUNE = "hard_lsst_tune,hard_hsc_tune,lsst_tune,hsc_tune"
#: the configurations of the README's table (name: DeblendConfig fields)
CONFIGS = {
    "defaults": {},
    "symmetry=1": {"symmetry": 1.0},
    "symmetry=0.5": {"symmetry": 0.5},
    "symmetry=0.25": {"symmetry": 0.25},
    "symmetry=0.25,subpixel": {"symmetry": 0.25, "symmetry_center": "subpixel"},
    "symmetry=0.5,subpixel": {"symmetry": 0.5, "symmetry_center": "subpixel"},
    "bold": {"symmetry": 0.25, "symmetry_center": "subpixel", "rescue_dead_level": 5.0},
    "rescue_dead_level=5": {"rescue_dead_level": 5.0},
    "min_gradient=0.1": {"min_gradient": 0.1},
    "residual_init": {"residual_init": True},
    "rescue_shape=psf": {"rescue_shape": "psf"},
    "rescue_lost": {"rescue_lost": True},
    "lost_fit": {"rescue_lost": True, "rescue_lost_sed": "fit"},
    "lost_shoulder": {"rescue_lost": True, "rescue_lost_sed": "shoulder"},
    "lost_f0.1": {"rescue_lost": True, "rescue_lost_fraction": 0.1},
    "lost_f0.4": {"rescue_lost": True, "rescue_lost_fraction": 0.4},
    "carry+lost": {"peak_carry": float("inf"), "e_rel": 3e-4, "rescue_lost": True},
    "carry": {"peak_carry": float("inf"), "e_rel": 3e-4},
    # the fit's convergence window spanning several box resizes (resize=3) and the
    # bulge/disk split at half the peak instead of a quarter (issue 10's study)
    "window=10": {"converge_window": 10},
    "disk_percentile=50": {"disk_percentile": 50.0},
    "disk50+window10": {"disk_percentile": 50.0, "converge_window": 10},
    "bold+lost": {
        "symmetry": 0.25,
        "symmetry_center": "subpixel",
        "rescue_dead_level": 5.0,
        "rescue_lost": True,
    },
}


def parse_config(label: str) -> dict:
    """The DeblendConfig fields of a configuration: a name of CONFIGS, or fields given as
    ``key=value`` pairs joined by ``;`` (values read as Python literals, e.g.
    ``disk_percentile=50;converge_window=10``)."""
    if label in CONFIGS:
        return CONFIGS[label]
    fields = {}
    for item in filter(None, label.split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"unknown configuration {label!r}: a name of CONFIGS or key=value;...")
        try:
            fields[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            fields[key.strip()] = value.strip()  # a bare string such as subpixel
    return fields


def run_set(folder: Path, n: int, config: DeblendConfig, metrics) -> tuple[dict, list, int]:
    """Summary of the first ``n`` blends, the lost sources and the number of S/N >= 20 ones."""
    records, lost, bright = [], [], 0
    for f in sorted(folder.glob("*.npz"))[:n]:
        data = load(f)
        conserved = multi_band(data, config)
        kept = conserved.sum(axis=(1, 2, 3)) / data["true_flux"].sum(axis=1)
        b = data["snr"] >= 20
        bright += int(b.sum())
        lost += [
            (f.name, int(i), float(data["snr"][i]), float(kept[i]))
            for i in np.where(b & (kept < 0.05))[0]
        ]
        records.extend(metrics.evaluate_pair(data, {"conserved": conserved}, f.name))
    return metrics.summarize(records)["conserved"], lost, bright


def row(summary: dict) -> str:
    """``all (bin / bin / bin)`` medians."""

    def med(key: str) -> str:
        s = summary.get("snr>=10|" + key, {})
        return f"{s['median_abs_dF']:.4f}" if s.get("n") else "-"

    return f"{med('all')} ({' / '.join(med(b) for b in BINS)})"


def main(argv=None) -> None:
    ap = set_parser(__doc__.splitlines()[0], TUNE)
    ap.add_argument(
        "--configs",
        default="defaults,bold",
        help=f"comma-separated: of {', '.join(CONFIGS)}, or DeblendConfig fields as k=v;k=v",
    )
    ap.add_argument("--list-lost", action="store_true")
    args = ap.parse_args(argv)
    data = Path(args.data)
    sys.path.insert(0, str(data))
    import metrics  # the data folder's metrics.py

    print("median |dF/F| at S/N >= 10: all (blend < 0.05 / 0.05-0.3 / >= 0.3); lost S/N >= 20")
    for name in args.sets.split(","):
        folder = data / name if name.startswith("sim_") else Path(args.sets_dir) / name
        print(f"\n{name}")
        for label in args.configs.split(","):
            t = time.process_time()
            summary, lost, bright = run_set(
                folder, args.n, DeblendConfig(**parse_config(label)), metrics
            )
            cpu = time.process_time() - t
            print(f"  {label:24s} {row(summary):40s} lost {len(lost)}/{bright}  cpu {cpu:.0f} s")
            if args.list_lost:
                for item in lost:
                    print("     ", item)


if __name__ == "__main__":
    main()
