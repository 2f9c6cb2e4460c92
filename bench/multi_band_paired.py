"""Two multi-band settings on the same blends: median |dF/F| per blendedness bin, the paired
difference with a bootstrap interval, and the sources with truth S/N >= 20 that keep little
of their flux.

The multi-band twin of ``bench/single_band_paired.py`` (same figures, same bootstrap over
whole blends): each set's first ``--n`` blends go through ``Deblender(config).deblend``
(the one call of ``bench/accuracy.py``) with settings A and B. A difference inside the
interval is noise.

Sets are read from ``--sets-dir`` (default ``/work/simsets``, made by ``bench/accuracy.py
--make``); ``sim_lsst`` and ``sim_hsc`` from ``--data`` (default ``../shared/data``
relative to the repository root).

Usage::

    python bench/multi_band_paired.py --a '{}' --b '{"converge_window": 10}' \\
        [--sets lsst_tune,hard_lsst_tune] [--n 300] [--boot 400]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402  (the sibling bench script: loading, the one call)
from single_band_paired import report, run_set  # noqa: E402

from cdeblend import DeblendConfig  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", default="{}", help="DeblendConfig keywords of A (JSON)")
    ap.add_argument("--b", default="{}", help="DeblendConfig keywords of B (JSON)")
    ap.add_argument("--data", default=str(accuracy.DEFAULT_DATA), help="the shared data folder")
    ap.add_argument("--sets-dir", default="/work/simsets", help="folder of the made sets")
    ap.add_argument("--sets", default="hard_lsst_tune,hard_hsc_tune,lsst_tune,hsc_tune")
    ap.add_argument("--n", type=int, default=300, help="blends per set (first n)")
    ap.add_argument("--boot", type=int, default=400, help="bootstrap resamplings")
    args = ap.parse_args(argv)
    data = Path(args.data)
    sys.path.insert(0, str(data))
    import metrics  # the data folder's metrics.py

    kw_a, kw_b = json.loads(args.a), json.loads(args.b)
    configs = [DeblendConfig(**kw_a), DeblendConfig(**kw_b)]
    print(f"A = DeblendConfig(**{kw_a}); B = DeblendConfig(**{kw_b})")
    print("median |dF/F| of the conserved children (data folder's metrics.py)")
    for name in args.sets.split(","):
        folder = data / name if name in accuracy.SHARED else Path(args.sets_dir) / name
        if not any(folder.glob("*.npz")):
            print(f"# {name}: no blends in {folder}", file=sys.stderr)
            continue
        entries, kept, blend = run_set(folder, args.n, configs, metrics, accuracy.multi_band)
        report(name, entries, kept, blend, args.boot)


if __name__ == "__main__":
    main()
