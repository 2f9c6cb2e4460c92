"""Time of the products' exact convolutions and of the conserved-flux step on one thread
count and another.

Deblends one scene of the shared scaling recipe (``bench/scaling.py``'s scenes, generated
once into ``--cache`` from ``make_scaling_blends.py`` in the shared data folder, ``--data``,
default ``../shared/data`` relative to the repository root) with the default
:class:`cdeblend.DeblendConfig`, then, for each ``--threads`` count (``thread_limit``), times
``--repeat`` runs of

* ``exact``: :meth:`cdeblend.convolution.Convolver.convolve_exact_into` on the models of
  all sources (the call ``Blend.convolved_sources`` makes; kernel transforms cached),
* ``sources``: ``Blend.convolved_sources`` (render the models, then the above),
* ``conserved``: the conserved fluxes from the fitted components (``sources``, then the
  re-apportioning), as ``DeblendResult.conserved_fluxes`` computes them after a fit, and
* ``cold``: the same with the double-precision kernel transforms of the sources' FFT
  grids dropped from the cache first (a deblend's one call: it makes them),

and prints the best and median wall-clock and CPU (``time.process_time``, all threads)
milliseconds, the median CPU milliseconds of the calling thread alone (``main``,
``time.thread_time``: its share of the work; on a loaded machine, where other processes
take the second core and the wall time says little, ``main`` of one thread over ``main``
of several estimates the speed-up), the threads ``conv_exact`` used, and whether the
convolved models and the conserved fluxes are bit-identical to those of the first count.

    python bench/conv_exact.py [--scene c] [--threads 1,2] [--repeat 20] [--data PATH]
                               [--cache DIR]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scaling  # noqa: E402

import cdeblend  # noqa: E402
from cdeblend import _threads, convolution  # noqa: E402


def load_scene(data: Path, cache: Path, name: str):
    path = scaling.make_scene_file(data, cache, name, scaling.SCENES[name][2])
    f = np.load(path)
    peaks = np.stack([f["catalog"]["y"], f["catalog"]["x"]], axis=1).astype(float)
    return f["images"], f["variance"], f["psfs"], peaks


def capture_exact_call(result) -> tuple:
    """The arguments of the ``convolve_exact_into`` call of ``convolved_sources``."""
    seen = []
    conv = result.blend.observation.convolver
    inner = conv.convolve_exact_into

    def spy(*args):
        seen.append(args)
        return inner(*args)

    conv.convolve_exact_into = spy
    try:
        result.blend.convolved_sources(packed=result._packed_now())
    finally:
        del conv.convolve_exact_into
    return seen[0]


def drop_exact_spectra(conv) -> None:
    """Forget the double-precision kernel transforms (a float32 convolver's exact ones)."""
    cache = conv.cache
    with cache.lock:
        for key in [k for k in cache.entries if k[2] and conv.dtype != np.float64]:
            cache.nbytes -= cache.entries.pop(key).nbytes


def timed(fn, repeat: int) -> tuple[list[float], list[float], list[float]]:
    """Wall, CPU (all threads) and calling-thread CPU seconds of ``repeat`` calls."""
    walls, cpus, mains = [], [], []
    for _ in range(repeat):
        w, c, m = time.perf_counter(), time.process_time(), time.thread_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
        mains.append(time.thread_time() - m)
    return walls, cpus, mains


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scene", default="c", choices=["a", "b", "c", "d"])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--data", type=Path, default=scaling.default_data())
    ap.add_argument("--cache", type=Path, default=Path("/tmp/cdeblend_scaling"))
    args = ap.parse_args()
    counts = [int(t) for t in args.threads.split(",")]

    images, variance, psfs, peaks = load_scene(args.data, args.cache, args.scene)
    obs = cdeblend.Observation(images, variance, psfs)
    result = cdeblend.Deblender(cdeblend.DeblendConfig()).deblend(obs, peaks)
    conv = obs.convolver
    models, boxes, offsets, out, out_offsets = capture_exact_call(result)
    used: list = []
    # the module that calls conv_exact (convolution itself before the threaded version)
    caller = (
        convolution
        if hasattr(convolution, "conv_exact")
        else importlib.import_module("cdeblend._exact")
    )
    inner = caller.conv_exact

    def counting(*a):
        r = inner(*a)
        used.append(r if isinstance(r, int) else 1)  # (a build whose call returns out: 1)
        return r

    caller.conv_exact = counting

    def exact():
        conv.convolve_exact_into(models, boxes, offsets, out, out_offsets)

    def sources():
        result._conv = None
        result.blend.convolved_sources(packed=result._packed_now())

    def conserved():
        result._conv = result._conserved = None
        return result.conserved_fluxes

    def cold():
        drop_exact_spectra(conv)
        conserved()

    steps = {"exact": exact, "sources": sources, "conserved": conserved, "cold": cold}
    print(
        f"cdeblend {cdeblend.__version__}, scene {args.scene} ({images.shape[0]} bands, "
        f"{images.shape[1]} x {images.shape[2]}, {len(peaks)} sources, {len(boxes)} models), "
        f"{args.repeat} runs each; ms; CPU: time.process_time (all threads)"
    )
    head = (
        f"{'step':>10} {'thr':>3} {'used':>4} {'wall best':>9} {'wall med':>8} "
        f"{'CPU best':>8} {'CPU med':>7} {'main med':>8}  identical"
    )
    print(head)
    print("-" * len(head))
    first: dict = {}
    for n in counts:
        with _threads.thread_limit(n) if n <= _threads.num_threads() else _limit(n):
            for name, fn in steps.items():
                used.clear()
                fn()  # warm: buffers, and the caches the step keeps
                used.clear()
                walls, cpus, mains = timed(fn, args.repeat)
                same = ""
                if name in ("exact", "conserved"):
                    value = out.copy() if name == "exact" else conserved().copy()
                    if name not in first:
                        first[name] = value
                    same = "yes" if value.tobytes() == first[name].tobytes() else "NO"
                print(
                    f"{name:>10} {n:>3} {max(used, default=0):>4} {1e3 * min(walls):9.1f} "
                    f"{1e3 * statistics.median(walls):8.1f} {1e3 * min(cpus):8.1f} "
                    f"{1e3 * statistics.median(cpus):7.1f} "
                    f"{1e3 * statistics.median(mains):8.1f}  {same}"
                )


class _limit:
    """``set_num_threads(n)`` for the block (a count above the default one)."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        _threads.set_num_threads(self.n)

    def __exit__(self, *exc):
        _threads.set_num_threads(None)


if __name__ == "__main__":
    main()
