"""Fewer fit iterations (``DeblendConfig.peak_carry``, ``e_rel``): iterations and accuracy.

For each set and each configuration: the median |dF/F| of the conserved children for entries
with band S/N >= 10 (the data folder's ``metrics.py``), overall and per blendedness bin, the
number of sources of truth S/N >= 20 that keep < 5% of their flux ("lost"), the mean number
of fit iterations and the mean final loss relative to the defaults' (blend by blend), and
CPU seconds. ``--scene PATH`` instead prints one scaling scene's (``bench/scaling.py``'s
cache) iterations, loss, median |dF/F| against the truth and CPU seconds per configuration,
with the loss every 10 iterations.

The made sets are read from ``--sets-dir`` (default ``../simsets``; see
``bench/accuracy.py`` for how they are made), the shared ``sim_*`` sets from ``--data``
(default ``../shared/data`` relative to the repository root).

Usage::

    python bench/fit_speed.py [--sets a,b] [--n 300] [--configs defaults,carry=0.01]
    python bench/fit_speed.py --scene /tmp/cdeblend_scaling/scaling_c_400x400_120src_seed103.npz
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from accuracy import load, peaks_of, set_parser
from morph_constraints import TUNE, row

from cdeblend import DeblendConfig, Deblender, Observation

#: the configurations compared (name: DeblendConfig fields)
CONFIGS = {
    "defaults": {},
    "e_rel=3e-4": {"e_rel": 3e-4},
    "carry=inf": {"peak_carry": float("inf")},
    "carry=0.01": {"peak_carry": 0.01},
    "carry=0.02": {"peak_carry": 0.02},
    "carry=0.005": {"peak_carry": 0.005},
    "carry=inf+e_rel=3e-4": {"peak_carry": float("inf"), "e_rel": 3e-4},
    "carry=0.01+e_rel=3e-4": {"peak_carry": 0.01, "e_rel": 3e-4},
    "carry=0.02+e_rel=3e-4": {"peak_carry": 0.02, "e_rel": 3e-4},
    "shape_prior": {"shape_prior": True},
}


def run_set(folder: Path, n: int, config: DeblendConfig, metrics) -> dict:
    """Accuracy summary, lost sources, iterations and losses of the first ``n`` blends."""
    records, lost, bright, iters, losses = [], 0, 0, [], []
    for f in sorted(folder.glob("*.npz"))[:n]:
        data = load(f)
        obs = Observation(data["images"], data["variance"], data["psfs"])
        res = Deblender(config).deblend(obs, peaks_of(data))
        conserved = res.conserved_images()
        iters.append(res.iterations)
        losses.append(res.loss)
        kept = conserved.sum(axis=(1, 2, 3)) / data["true_flux"].sum(axis=1)
        b = data["snr"] >= 20
        bright += int(b.sum())
        lost += int(np.sum(b & (kept < 0.05)))
        records.extend(metrics.evaluate_pair(data, {"conserved": conserved}, f.name))
    return {
        "summary": metrics.summarize(records)["conserved"],
        "lost": lost,
        "bright": bright,
        "iters": np.array(iters),
        "losses": np.array(losses),
    }


def scene(path: str, labels: list[str]) -> None:
    """Iterations, loss, flux error and CPU seconds of each configuration on one scene."""
    with np.load(path) as d:
        cat = d["catalog"]
        peaks = np.stack([cat["y"], cat["x"]], axis=1).round().astype(np.intp)
        obs = Observation(d["images"], d["variance"], d["psfs"], dtype=np.float32)
        true_flux = d["true_flux"]
    print(f"{Path(path).name}: CPU seconds of the whole deblend (process_time)")
    for label in labels:
        t = time.process_time()
        r = Deblender(DeblendConfig(**CONFIGS[label])).deblend(obs, peaks)
        cpu = time.process_time() - t
        rel = np.abs(r.conserved_fluxes / true_flux - 1)
        err = np.median(rel[np.isfinite(rel)])
        print(f"  {label:18s} it {r.iterations:4d}  loss {r.loss:14,.0f}  |dF/F| {err:.4f}")
        print(f"  {'':18s} cpu {cpu:.2f} s")
        h = r.loss_history
        marks = list(range(0, len(h), 10)) + [len(h) - 1]
        print("     loss/1e3 at it:", " ".join(f"{i}:{h[i] / 1e3:.0f}" for i in marks))


def main(argv=None) -> None:
    ap = set_parser(__doc__.splitlines()[0], TUNE)
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)}")
    ap.add_argument("--scene", help="a scaling scene (.npz of bench/scaling.py's cache)")
    args = ap.parse_args(argv)
    labels = args.configs.split(",")
    if args.scene:
        scene(args.scene, labels)
        return
    data = Path(args.data)
    sys.path.insert(0, str(data))
    import metrics  # the data folder's metrics.py

    print(
        "median |dF/F| at S/N >= 10: all (blend < 0.05 / 0.05-0.3 / >= 0.3); lost S/N >= 20;"
        " mean iterations; mean loss / the first configuration's; CPU seconds"
    )
    for name in args.sets.split(","):
        folder = data / name if name.startswith("sim_") else Path(args.sets_dir) / name
        print(f"\n{name}", flush=True)
        base = None
        for label in labels:
            t = time.process_time()
            r = run_set(folder, args.n, DeblendConfig(**CONFIGS[label]), metrics)
            cpu = time.process_time() - t
            if base is None:
                base = r["losses"]
            ratio = np.mean(r["losses"] / base)
            print(
                f"  {label:18s} {row(r['summary']):40s} lost {r['lost']}/{r['bright']}"
                f"  it {r['iters'].mean():5.1f}  loss x {ratio:.4f}  cpu {cpu:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()
