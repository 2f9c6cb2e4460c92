"""How much a scene's stopping point depends on round-off: the same scene, nudged.

A float32 fit's discrete decisions (the best iterate, the stopping test over a window of a
loss that oscillates by a few per cent at the end, box growth) make its iteration count
sensitive to the last bit of the input. This script deblends a scene of the shared scaling
recipe (``make_scaling_blends.py`` in the shared data folder, ``--data``, default
``../shared/data`` relative to the repository root; scenes generated once into ``--cache``
as ``bench/scaling.py`` does) as given and with about 1 % of its pixels moved by one unit in
the last place (float32), for ``--seeds`` nudges, each in its own process with
``CDEBLEND_NUM_THREADS=--threads``, and prints per copy the iterations, wall and CPU seconds
of the whole deblend, the median flux error against the truth and the final loss, then the
median and range. A time quoted for one scene is one draw of this spread.

    python bench/stopping_spread.py [--data DIR] [--cache DIR] [--scene c] [--seeds 8]
                                    [--threads 2] [--config JSON]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scaling  # noqa: E402

#: scene: (name in bench/scaling.py, seed); e is its crowded 2000 x 2000 scene
SCENES = {"c": ("c", 103), "d": ("d", 104), "e": ("e", 2026)}


def nudged(images: np.ndarray, seed: int) -> np.ndarray:
    """``images`` in float32 with ~1 % of the pixels moved one ulp up or down (seed 0: as
    given)."""
    out = np.asarray(images, dtype=np.float32).copy()
    if seed == 0:
        return out
    rng = np.random.default_rng(seed)
    pick = rng.random(out.shape) < 0.01
    toward = np.where(rng.random(out.shape) < 0.5, np.float32(np.inf), np.float32(-np.inf))
    out[pick] = np.nextafter(out[pick], toward[pick])
    return out


def child(path: Path, seed: int, config: str) -> None:
    with np.load(path) as d:
        cat = d["catalog"]
        peaks = np.stack([cat["y"], cat["x"]], axis=1).round().astype(np.intp)
        out = scaling.run_one(
            nudged(d["images"], seed),
            d["variance"],
            d["psfs"],
            peaks,
            d["true_flux"],
            "float32",
            json.loads(config),
        )
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=scaling.default_data())
    ap.add_argument("--cache", type=Path, default=Path("/tmp/cdeblend_scaling"))
    ap.add_argument("--scene", default="c", choices=sorted(SCENES))
    ap.add_argument("--seeds", type=int, default=8, help="nudged copies besides the scene")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--config", default="{}", help="DeblendConfig overrides as JSON")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    name, seed = SCENES[args.scene]
    path = scaling.scene_path(args.cache, name, seed)
    if not path.exists():
        path = scaling.make_scene_file(args.data, args.cache, name, seed)
    if args.child is not None:
        child(path, args.child, args.config)
        return
    env = dict(os.environ, CDEBLEND_NUM_THREADS=args.threads)
    print(f"scene {args.scene} ({path.name}), {args.threads} threads, config {args.config}")
    print(f"{'nudge':>6} {'iter':>5} {'wall s':>7} {'CPU s':>6} {'|dF/F|':>7} {'loss':>11}")
    rows = []
    for s in range(args.seeds + 1):
        cmd = [sys.executable, __file__, "--scene", args.scene, "--cache", str(args.cache)]
        cmd += ["--data", str(args.data), "--config", args.config, "--child", str(s)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(r)
        label = "none" if s == 0 else str(s)
        print(
            f"{label:>6} {r['iterations']:5d} {r['wall']:7.2f} {r['cpu']:6.2f} "
            f"{r['flux_err']:7.4f} {r['loss']:11.0f}"
        )
    for key, fmt in (("iterations", ".0f"), ("wall", ".2f"), ("flux_err", ".4f"), ("loss", ".0f")):
        v = np.array([r[key] for r in rows], dtype=float)
        print(f"{key}: median {np.median(v):{fmt}}, range {v.min():{fmt}}-{v.max():{fmt}}")


if __name__ == "__main__":
    main()
