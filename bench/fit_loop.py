"""CPU time of the multi-band fit loop (``fit_blend``) and how often it calls its kernel.

The fit's iterations run in :meth:`cdeblend._adam_cy.FitKernel.iterate` without the GIL; this
table shows what the Python side around it costs: per blend, the fit's CPU seconds
(``time.process_time``; the minimum and median over ``--repeats`` fits of a freshly
initialised blend, so that a loaded machine shows through the median, not the minimum),
the iterations, the CPU milliseconds per iteration, the number of ``FitKernel.iterate``
calls (counted in one extra fit) and the final loss.

Blends: the bundled HSC blend (``cdeblend.datasets``) and scenes of the shared scaling
recipe (``bench/scaling.py``'s scenes; ``make_scaling_blends.py`` in ``--data``, default
``../shared/data`` relative to the repository root; generated once into ``--cache``), with
the true positions as peaks and the default :class:`cdeblend.DeblendConfig`.

    python bench/fit_loop.py [--scenes a,b,c] [--repeats 5] [--data PATH] [--cache DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scaling  # noqa: E402

import cdeblend  # noqa: E402
from cdeblend import _adam_cy, deblender  # noqa: E402
from cdeblend.datasets import load_hsc_cosmos  # noqa: E402
from cdeblend.initialization import initialize_blend  # noqa: E402


def bundled() -> tuple[cdeblend.Observation, np.ndarray]:
    """The bundled HSC blend's observation (model PSF 0.8 px) and peaks."""
    d = load_hsc_cosmos()
    obs = cdeblend.Observation(d.images, d.variance, d.psfs, model_psf_sigma=0.8)
    return obs, d.peaks


def scene(data: Path, cache: Path, name: str) -> tuple[cdeblend.Observation, np.ndarray]:
    """A scene of the scaling recipe and its true positions."""
    path = scaling.make_scene_file(data, cache, name, scaling.SCENES[name][2])
    with np.load(path) as d:
        obs = cdeblend.Observation(d["images"], d["variance"], d["psfs"])
        cat = d["catalog"]
    peaks = np.stack([cat["y"], cat["x"]], axis=1).round().astype(np.int64)
    return obs, peaks


class _CountingKernel(_adam_cy.FitKernel):
    """The fit kernel, counting its ``iterate`` calls."""

    calls = 0

    def iterate(self, *args):
        type(self).calls += 1
        return super().iterate(*args)


def kernel_calls(obs, peaks, config) -> int:
    """Number of ``FitKernel.iterate`` calls of one fit."""
    plain = _adam_cy.FitKernel
    _CountingKernel.calls = 0
    _adam_cy.FitKernel = _CountingKernel
    try:
        blend, _ = initialize_blend(obs, peaks, config)
        deblender.fit_blend(blend, config)
    finally:
        _adam_cy.FitKernel = plain
    return _CountingKernel.calls


def time_fit(obs, peaks, config, repeats: int) -> tuple[list[float], int, float]:
    """CPU seconds of ``repeats`` fits (each of a freshly initialised blend), the
    iterations and the loss of the last."""
    times = []
    for _ in range(repeats):
        blend, _ = initialize_blend(obs, peaks, config)
        c = time.process_time()
        loss, _, it, _ = deblender.fit_blend(blend, config)
        times.append(time.process_time() - c)
    return times, it, loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", default="a,b,c", help="comma list of scaling scenes (a-d)")
    ap.add_argument("--repeats", type=int, default=5, help="fits per blend")
    ap.add_argument(
        "--data",
        type=Path,
        default=scaling.default_data(),
        help="folder of make_scaling_blends.py (default ../shared/data)",
    )
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path("/tmp/cdeblend_scaling"),
        help="where the generated scenes are kept",
    )
    args = ap.parse_args()
    config = cdeblend.DeblendConfig()
    blends = [("bundled HSC", bundled)]
    for name in filter(None, args.scenes.split(",")):
        size, n, _ = scaling.SCENES[name]
        blends.append(
            (f"{name} {size}x{size}/{n}", lambda name=name: scene(args.data, args.cache, name))
        )
    print(
        f"cdeblend {cdeblend.__version__}, default DeblendConfig, fit_blend only; CPU seconds "
        f"(time.process_time), min and median of {args.repeats} fits"
    )
    head = (
        f"{'blend':>18} {'iter':>5} {'calls':>5} {'min s':>8} {'median s':>8} "
        f"{'ms/it':>7} {'loss':>14}"
    )
    print(head)
    print("-" * len(head))
    for label, load in blends:
        obs, peaks = load()
        times, it, loss = time_fit(obs, peaks, config, args.repeats)
        calls = kernel_calls(obs, peaks, config)
        best, med = min(times), float(np.median(times))
        print(
            f"{label:>18} {it:>5} {calls:>5} {best:>8.4f} {med:>8.4f} "
            f"{1e3 * best / max(it, 1):>7.3f} {loss:>14.6g}",
            flush=True,
        )


if __name__ == "__main__":
    main()
