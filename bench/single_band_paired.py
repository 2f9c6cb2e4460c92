"""Two single-band settings on the same blends: median |dF/F| per blendedness bin, the paired
difference with a bootstrap interval, and the sources with truth S/N >= 20 that keep little
of their flux.

Each set's first ``--n`` blends go through ``SingleBandDeblender(config).deblend`` (the one
call, as in ``bench/accuracy.py``) with settings A and B. The figures are the data folder's
``metrics.py`` ones (conserved children; S/N >= 10 overall and per bin, then all entries).
The interval is the 2.5-97.5 percentile of B - A over ``--boot`` resamplings of whole
blends (the entries of one blend move together), so that a difference inside it is noise.
'kept < x' counts the sources with truth S/N >= 20 whose child keeps less than x of their
true flux ('lost' is x = 5%, as in ``bench/accuracy.py``).

Sets are read from ``--sets-dir`` (default ``../simsets``, made by ``bench/accuracy.py
--make``); ``sim_single`` from ``--data`` (default ``../shared/data`` relative to the
repository root).

Usage::

    python bench/single_band_paired.py --a '{"faint_psf_flux_floor": 0}' --b '{}' \\
        [--sets single_tune,hard_single_tune] [--n 300] [--boot 400]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402  (the sibling bench script: loading, the one call)

from cdeblend import SingleBandConfig  # noqa: E402

#: (label, blendedness range or None, S/N cut)
BINS = [
    ("S/N>=10 all", None, 10.0),
    ("  blend<0.05", (0.0, 0.05), 10.0),
    ("  0.05-0.3", (0.05, 0.3), 10.0),
    ("  >=0.3", (0.3, np.inf), 10.0),
    ("all entries", None, -np.inf),
]
KEPT = (0.05, 0.2, 0.35)


def run_set(folder: Path, n: int, configs, metrics, run=accuracy.single_band):
    """Per entry (|dF/F|, blendedness, S/N) for each config, the entries' blend numbers,
    and per config the kept fractions of the sources with truth S/N >= 20 (``run``: the
    one call of ``bench/accuracy.py`` that gives a blend's (K, B, H, W) conserved
    children)."""
    entries = [[] for _ in configs]
    kept = [[] for _ in configs]
    blend = []
    for b, f in enumerate(sorted(folder.glob("*.npz"))[:n]):
        data = accuracy.load(f)
        for k, cfg in enumerate(configs):
            rows, bright = blend_figures(data, run(data, cfg), f.name, metrics)
            entries[k].extend(rows)
            kept[k].extend(bright)
            if k == 0:
                blend.extend([b] * len(rows))
    return [np.array(e) for e in entries], [np.array(x) for x in kept], np.array(blend)


def blend_figures(data: dict, conserved: np.ndarray, name: str, metrics) -> tuple[list, np.ndarray]:
    """One blend's entries (|dF/F|, blendedness, S/N), a source and band each, from the
    data folder's ``metrics.py``, and the kept fractions of its sources of truth S/N >= 20
    (NaN for a source of no true flux)."""
    true = data["true_flux"].sum(axis=1)
    frac = np.divide(
        conserved.sum(axis=(1, 2, 3)), true, out=np.full(len(true), np.nan), where=true > 0
    )
    rows = [
        (abs(r["conserved_dF/F"]), r["blendedness"], r.get("band_snr", np.inf))
        for r in metrics.evaluate_pair(data, {"conserved": conserved}, name)
    ]
    return rows, frac[data["snr"] >= 20]


def in_bin(e: np.ndarray, rows: np.ndarray, lohi, cut: float) -> np.ndarray:
    """The rows of ``rows`` in the bin."""
    m = e[rows, 2] >= cut
    if lohi is not None:
        m &= (e[rows, 1] >= lohi[0]) & (e[rows, 1] < lohi[1])
    return rows[m]


def report(name: str, entries, kept, blend, boot: int, seed: int = 1) -> None:
    """Print one set's table."""
    a, b = entries
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(blend == k) for k in range(int(blend.max()) + 1)]
    samples = [
        np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))])
        for _ in range(boot)
    ]
    print(f"\n{name}")
    print(f"  {'bin':12s} {'n':>5s} {'A':>7s} {'B':>7s} {'B-A':>8s}  95% interval of B-A")
    for label, lohi, cut in BINS:
        rows = in_bin(a, np.arange(len(a)), lohi, cut)
        ma, mb = np.median(a[rows, 0]), np.median(b[rows, 0])
        diffs = []
        for s in samples:
            r = in_bin(a, s, lohi, cut)
            diffs.append(np.median(b[r, 0]) - np.median(a[r, 0]))
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        print(
            f"  {label:12s} {len(rows):5d} {ma:7.4f} {mb:7.4f} {mb - ma:+8.4f}"
            f"  [{lo:+.4f}, {hi:+.4f}]"
        )
    for lab, k in zip("AB", kept, strict=True):
        counts = " ".join(f"kept<{x:g}: {int(np.sum(k < x))}" for x in KEPT)
        print(f"  {lab}: truth S/N >= 20: {len(k)}; {counts}")


def paired_main(argv, config_class, run, default_sets: str, description: str) -> None:
    """The command line of a paired comparison: settings A and B of ``config_class`` (JSON
    keywords), each set's first ``--n`` blends through ``run`` (a one call of
    ``bench/accuracy.py``), one table per set."""
    name = config_class.__name__
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--a", default="{}", help=f"{name} keywords of A (JSON)")
    ap.add_argument("--b", default="{}", help=f"{name} keywords of B (JSON)")
    ap.add_argument("--data", default=str(accuracy.DEFAULT_DATA), help="the shared data folder")
    ap.add_argument(
        "--sets-dir", default=str(accuracy.DEFAULT_SETS), help="folder of the made sets"
    )
    ap.add_argument("--sets", default=default_sets)
    ap.add_argument("--n", type=int, default=300, help="blends per set (first n)")
    ap.add_argument("--boot", type=int, default=400, help="bootstrap resamplings")
    args = ap.parse_args(argv)
    data = Path(args.data)
    sys.path.insert(0, str(data))
    import metrics  # the data folder's metrics.py

    kw_a, kw_b = json.loads(args.a), json.loads(args.b)
    configs = [config_class(**kw_a), config_class(**kw_b)]
    print(f"A = {name}(**{kw_a}); B = {name}(**{kw_b})")
    print("median |dF/F| of the conserved children (data folder's metrics.py)")
    for set_name in args.sets.split(","):
        if set_name in accuracy.SHARED:
            folder = data / set_name
        else:
            folder = Path(args.sets_dir) / set_name
        if not any(folder.glob("*.npz")):
            print(f"# {set_name}: no blends in {folder}", file=sys.stderr)
            continue
        entries, kept, blend = run_set(folder, args.n, configs, metrics, run)
        report(set_name, entries, kept, blend, args.boot)


def main(argv=None) -> None:
    sets = "single_tune,hard_single_tune"
    paired_main(argv, SingleBandConfig, accuracy.single_band, sets, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
