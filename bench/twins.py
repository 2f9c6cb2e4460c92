"""The four bright galaxies the defaults lose, one field at a time: which of the corrections
that ``DeblendConfig()`` adds to the ``reference()`` preset loses them.

Each of the four (a large galaxy 3-4 px from a brighter compact source; the README's "What
is still lost") is deblended with the defaults, with the defaults and one field set to the
preset's value, with the preset, with the preset and NNLS SEDs, and with scarlet lite itself
when ``lsst.scarlet.lite`` is installed (``bench/against_lite.py``). The figure is the
fraction of the galaxy's true flux (all bands) that its conserved child keeps; below 5 % it
counts as lost.

Sets are read from ``--sets-dir`` (default ``../simsets``, made by ``bench/accuracy.py
--make``).

Usage::

    python bench/twins.py [--sets-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

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
]
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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sets-dir", default=str(accuracy.DEFAULT_SETS), help="folder of the made sets"
    )
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


if __name__ == "__main__":
    main()
