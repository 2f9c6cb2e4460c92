"""How the multi-band deblender scales with the size and crowding of a blend.

By default the scenes of the shared scaling recipe (``make_scaling_blends.py`` in the shared
data folder, ``--data``, default ``../shared/data`` relative to the repository root): 5 bands,
Gaussian and Moffat PSFs of sigma 2.5-4 px on 41 x 41 stamps, Sersic bulges and disks with
r_e 1.5-8 px, 20 % stars, Gaussian noise,

* ``a`` 60 x 60 / 5, ``b`` 150 x 150 / 25, ``c`` 400 x 400 / 120, ``d`` 1000 x 1000 / 600
  sources (the recipe's own seeds), and
* ``e`` 2000 x 2000 / 3000 sources, the same recipe with ``--crowded-seed`` (crowded: the
  whole frame is one overlap group).

Scenes are generated once into ``--cache`` (only the arrays the bench reads are kept). Each
scene is deblended in a fresh subprocess (so that its peak resident memory, ``ru_maxrss``, is
its own) through the public API: ``Observation(images, variance, psfs)`` and
``Deblender().deblend`` with the default :class:`cdeblend.DeblendConfig` (or ``--config``,
overrides as JSON), the true positions as peaks. Per scene the table gives CPU seconds
(``time.process_time``, all threads of the process) of

* ``init`` (initialization, including ``SED``, the joint SED fit, whose convolutions,
  products and band solves run on the fit's threads; ``SED m`` and ``init m`` are their
  CPU seconds on the calling thread alone, as ``fit m`` below) and ``fit``, ``iter``
  iterations and ``ms/it`` the fit's CPU time per iteration,
* ``thr``: the threads of the fit (``--threads``, the environment variable
  ``CDEBLEND_NUM_THREADS`` of the child; default: the usable cores), ``fit w``: the fit's
  wall-clock seconds (with several threads its CPU time counts every thread), ``fit m``: the
  fit's CPU seconds on the calling thread alone (``time.thread_time``; the other threads
  wait without spinning, so on an idle machine the fit's wall time is this plus the time
  the calling thread waits for a slower one: on a loaded machine, where the wall time says
  little, ``fit s`` of one thread over ``fit m`` of several estimates the speed-up),
* ``floor``: milliseconds of one ``Observation.loss_and_gradient`` on the blend (the forward
  and adjoint FFT convolutions every iteration needs, one thread), and ``it/floor`` the
  ratio of ``ms/it`` to it,
* ``wall``: wall-clock seconds of the whole deblend (``Observation`` to the conserved
  fluxes; the imports come before), ``CPU``: its CPU seconds (all threads), ``RSS``: peak
  resident memory (MB); with ``--warm`` each child deblends its scene once untimed first,
  so the figures are those of a second call in one process,
* ``|dF/F|``: median over sources and bands of the conserved flux error against the truth,
  ``loss`` the final loss,

next to scarlet lite's figures where the issue quotes them. With several ``--threads`` counts
(e.g. ``1,2``) each scene runs once per count, and a last table gives the speed-up of the
fit and of the whole deblend (wall clock) over the first count, and whether the results
(iterations, loss, conserved fluxes) are identical. ``--synth SIZES`` runs the older
synthetic blends of ``bench/synth.py`` instead (``SIZE:N_SOURCES`` list, e.g.
``60:5,150:25,400:120,1000:600``).

``--sed-scaling 100,300,600,1000,3000`` only times the SED fit's non-negative solve on the
largest overlap group of crops of scene ``e`` (sparse solver against the dense active set).

    python bench/scaling.py [--scenes a,b,c,d,e] [--data PATH] [--cache DIR]
                            [--crowded-seed 2026] [--synth SIZES] [--dtype float32|float64]
                            [--threads 1,2] [--config '{"peak_carry": 0.01}'] [--warm]
    python bench/scaling.py --sed-scaling 100,300,600,1000,3000 [--dense-max 1100]
    python bench/scaling.py --single-band 400,800

``--single-band`` times the single-band deblender on one crowded parent (a synthetic star
field, see :func:`crowded_single_band`) with OpenBLAS at its default thread count and at 1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import synth  # noqa: E402

import cdeblend  # noqa: E402
from cdeblend import _threads, deblender, spectra  # noqa: E402

#: The recipe's scenes (size, sources, seed); ``e`` takes its seed from --crowded-seed.
SCENES = {
    "a": (60, 5, 101),
    "b": (150, 25, 102),
    "c": (400, 120, 103),
    "d": (1000, 600, 104),
    "e": (2000, 3000, None),
}

#: scarlet lite on the same scenes, as quoted in issue 11 (time, peak memory, loss).
SCARLET_LITE = {"c": "48 s, 1.67 GB, loss 755,484", "d": "> 16 GB before init ends"}


def default_data() -> Path:
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def scene_path(cache: Path, name: str, seed: int) -> Path:
    size, n, _ = SCENES[name]
    return cache / f"scaling_{name}_{size}x{size}_{n}src_seed{seed}.npz"


def make_scene_file(data: Path, cache: Path, name: str, seed: int) -> Path:
    """Generate one scene with the shared recipe (once) and keep the arrays read here."""
    path = scene_path(cache, name, seed)
    if path.exists():
        return path
    sys.path.insert(0, str(data))
    import make_scaling_blends as recipe

    size, n, _ = SCENES[name]
    d = recipe.make_case(size, n, seed)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: d[k] for k in ("images", "variance", "psfs", "catalog", "true_flux")})
    return path


class _Timer:
    """Wraps a function and sums the CPU and wall seconds of its calls."""

    def __init__(self, module, name: str):
        self.cpu = self.wall = self.main = 0.0
        self.module, self.name = module, name
        self.inner = getattr(module, name)
        setattr(module, name, self)

    def __call__(self, *args, **kwargs):
        c, w, t = time.process_time(), time.perf_counter(), time.thread_time()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.cpu += time.process_time() - c
            self.wall += time.perf_counter() - w
            self.main += time.thread_time() - t


def floor_seconds(obs, result) -> float:
    """CPU seconds of one forward + adjoint convolution of the blend's model (warm buffers)."""
    model = result.blend.model()
    grad = np.empty_like(model)
    obs.loss_and_gradient(model, grad)
    reps = 3
    while True:
        c = time.process_time()
        for _ in range(reps):
            obs.loss_and_gradient(model, grad)
        dt = time.process_time() - c
        if dt > 0.5 or reps >= 200:
            return dt / reps
        reps *= 4


def run_one(
    images, variance, psfs, peaks, true_flux, dtype: str, config: dict | None = None
) -> dict:
    """Deblend one scene in this process (``config``: DeblendConfig overrides) and return
    its measurements."""
    sed = _Timer(spectra, "fit_seds_checked")
    init = _Timer(deblender, "initialize_blend")
    fit = _Timer(deblender, "fit_blend")
    c0, w0 = time.process_time(), time.perf_counter()
    obs = cdeblend.Observation(images, variance, psfs, dtype=np.dtype(dtype))
    result = cdeblend.Deblender(cdeblend.DeblendConfig(**(config or {}))).deblend(obs, peaks)
    if result.fallback:
        # a fit that raised falls back to PSF models: its timings would mean nothing
        raise RuntimeError(f"the fit raised, fallback models returned: {result.error}")
    fluxes = result.conserved_fluxes
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(fluxes / true_flux - 1.0)
    rel = rel[np.isfinite(rel)]
    return {
        "n": len(peaks),
        "components": len(result.blend.components),
        "threads": _threads.num_threads(),
        "sed": sed.cpu,
        "sed_main": sed.main,
        "init": init.cpu,
        "init_main": init.main,
        "fit": fit.cpu,
        "fit_wall": fit.wall,
        "fit_main": fit.main,
        "fluxes_digest": float(
            np.nansum(fluxes * np.arange(1, fluxes.size + 1).reshape(fluxes.shape))
        ),
        "cpu": cpu,
        "wall": wall,
        "iterations": int(result.iterations),
        "floor": floor_seconds(obs, result),
        "rss_mb": rss,
        "flux_err": float(np.median(rel)),
        "loss": float(result.loss),
    }


def sed_scaling(path: Path, counts: list[int], dense_max: int) -> None:
    """CPU time of the SED fit's non-negative solve on the largest overlap group of crops of
    scene ``path`` holding about ``counts`` sources: the sparse solver against the dense
    active set (up to ``dense_max`` components) and their largest difference."""
    from cdeblend.initialization import initialize_blend

    groups = []
    sparse = spectra._nnls_solve_sparse

    def record(ik, il, values, rhs):
        c = time.process_time()
        out = sparse(ik, il, values, rhs)
        groups.append((time.process_time() - c, ik, il, values, rhs, out))
        return out

    spectra._nnls_solve_sparse = record
    with np.load(path) as d:
        images, variance, psfs, cat = d["images"], d["variance"], d["psfs"], d["catalog"]
    size = images.shape[1]
    total = len(cat)
    print(
        f"SED solve of the largest overlap group, crops of {path.name}, CPU seconds "
        f"(sparse: nnls_sparse; dense: the active set nnls_gram, up to {dense_max})"
    )
    head = (
        f"{'crop':>10} {'sources':>7} {'group K':>7} {'sparse s':>8} {'dense s':>8} "
        f"{'max|diff|/max':>13} {'dobj/|obj|':>10}"
    )
    print(head)
    print("-" * len(head))
    for n in counts:
        side = min(size, int(round(size * np.sqrt(n / total))))
        y0 = x0 = (size - side) // 2
        sl = (slice(None), slice(y0, y0 + side), slice(x0, x0 + side))
        inside = (
            (cat["y"] >= y0 + 0.5)
            & (cat["y"] < y0 + side - 0.5)
            & (cat["x"] >= x0 + 0.5)
            & (cat["x"] < x0 + side - 0.5)
        )
        peaks = np.stack([cat["y"][inside] - y0, cat["x"][inside] - x0], axis=1)
        peaks = peaks.round().astype(np.intp)
        obs = cdeblend.Observation(images[sl], variance[sl], psfs)
        groups.clear()
        initialize_blend(obs, peaks, cdeblend.DeblendConfig())
        if not groups:
            print(f"{side:>4}x{side:<5} {len(peaks):>7}   (no group above the sparse threshold)")
            continue
        dt, ik, il, values, rhs, out = max(groups, key=lambda g: g[4].shape[1])
        k = rhs.shape[1]
        dense_s = diff = dobj = float("nan")
        if k <= dense_max:
            gram = spectra._dense_gram(ik, il, values, k)
            c = time.process_time()
            ref = spectra._nnls_solve_bands(gram, rhs)
            dense_s = time.process_time() - c
            diff = float(np.abs(out - ref).max() / np.abs(ref).max())
            gram_out = np.einsum("bij,bj->bi", gram, out)
            gram_ref = np.einsum("bij,bj->bi", gram, ref)
            f_out = np.einsum("bi,bi->b", out, gram_out - 2 * rhs)
            f_ref = np.einsum("bi,bi->b", ref, gram_ref - 2 * rhs)
            dobj = float(np.max((f_out - f_ref) / np.abs(f_ref)))
        print(
            f"{side:>4}x{side:<5} {len(peaks):>7} {k:>7} {dt:>8.3f} {dense_s:>8.2f} {diff:>13.1e} "
            f"{dobj:>10.1e}",
            flush=True,
        )


def crowded_single_band(n_peaks: int, sigma: float, seed: int = 5) -> tuple:
    """A 400 x 400 one-band field of ``n_peaks`` Gaussian stars (PSF sigma ``sigma`` px, 41 x
    41), unit noise: one parent (the whole frame) whose PSF fits see many neighbours."""
    size, half = 400, 20
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    psf = np.exp(-(y**2 + x**2) / (2 * sigma**2))
    psf /= psf.sum()
    pos = rng.uniform(10, size - 10, size=(n_peaks, 2))
    flux = 10 ** rng.uniform(2.5, 4.5, n_peaks)
    image = rng.normal(size=(size, size))
    yy, xx = np.mgrid[0:size, 0:size]
    for (py, px), f in zip(pos, flux, strict=True):
        sl = (
            slice(max(int(py) - half, 0), int(py) + half + 1),
            slice(max(int(px) - half, 0), int(px) + half + 1),
        )
        r2 = (yy[sl] - py) ** 2 + (xx[sl] - px) ** 2
        image[sl] += f * np.exp(-r2 / (2 * sigma**2)) / (2 * np.pi * sigma**2)
    peaks = pos.round().astype(np.int64)
    peaks = peaks[np.argsort(-image[peaks[:, 0], peaks[:, 1]], kind="stable")]
    return image, np.ones_like(image), psf, peaks


def single_band_child(n_peaks: int, sigma: float) -> dict:
    from cdeblend.single_band import SingleBandConfig, SingleBandDeblender

    image, variance, psf, peaks = crowded_single_band(n_peaks, sigma)
    deb = SingleBandDeblender(SingleBandConfig(max_footprint_area=0))
    c, w = time.process_time(), time.perf_counter()
    result = deb.deblend(image, variance, psf, peaks, footprint=np.ones(image.shape, bool))
    return {
        "cpu": time.process_time() - c,
        "wall": time.perf_counter() - w,
        "children": len(result.children),
    }


def child(args) -> None:
    if args.one.startswith("single:"):
        n, sigma = args.one[7:].split(":")
        print(json.dumps(single_band_child(int(n), float(sigma))))
        return
    if args.one.startswith("synth:"):
        size, n = (int(v) for v in args.one[6:].split(":"))
        s = synth.make_scene(size, size, n, seed=args.seed)
        out = run_one(
            s.images, s.variance, s.psfs, s.peaks, s.true_flux, args.dtype, json.loads(args.config)
        )
    else:
        with np.load(args.one) as d:
            cat = d["catalog"]
            peaks = np.stack([cat["y"], cat["x"]], axis=1).round().astype(np.intp)
            for _ in range(2 if args.warm else 1):  # --warm: the second call is measured
                out = run_one(
                    d["images"],
                    d["variance"],
                    d["psfs"],
                    peaks,
                    d["true_flux"],
                    args.dtype,
                    json.loads(args.config),
                )
    print(json.dumps(out))


def spawn(target: str, args, threads: str | None = None) -> dict:
    env = dict(os.environ)
    if threads is not None:
        env["CDEBLEND_NUM_THREADS"] = threads
    cmd = [
        sys.executable,
        __file__,
        "--one",
        target,
        "--seed",
        str(args.seed),
        "--dtype",
        args.dtype,
        "--config",
        args.config,
    ] + (["--warm"] if args.warm else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", default="a,b,c,d", help="comma list of a, b, c, d, e")
    ap.add_argument(
        "--data",
        type=Path,
        default=default_data(),
        help="folder of make_scaling_blends.py (default ../shared/data)",
    )
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path("/tmp/cdeblend_scaling"),
        help="where the generated scenes are kept",
    )
    ap.add_argument("--crowded-seed", type=int, default=2026, help="seed of scene e")
    ap.add_argument("--synth", help="SIZE:N_SOURCES list of bench/synth.py blends instead")
    ap.add_argument("--seed", type=int, default=1, help="seed of the --synth blends")
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "float64"),
        help="working precision of the Observation",
    )
    ap.add_argument(
        "--sed-scaling",
        help="N1,N2,...: only time the SED solve on crops of "
        "scene e holding about that many sources",
    )
    ap.add_argument(
        "--dense-max",
        type=int,
        default=1100,
        help="largest group the dense solver is timed on (--sed-scaling)",
    )
    ap.add_argument(
        "--single-band",
        help="N1,N2,...: only time a crowded single-band parent "
        "of that many peaks with OpenBLAS at its default threads and at 1",
    )
    ap.add_argument(
        "--threads",
        help="N1,N2,...: run each scene with that many fit threads (default: the usable cores)",
    )
    ap.add_argument(
        "--config",
        default="{}",
        help="DeblendConfig overrides as JSON, e.g. '{\"peak_carry\": 0.01}' (default: none)",
    )
    ap.add_argument(
        "--warm",
        action="store_true",
        help="deblend each scene once untimed in its process first and report the second "
        "call (without the fresh process's one-time costs: first-touch memory, caches)",
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        child(args)
        return
    if args.single_band:
        print(
            "Single-band parent: 400 x 400 field of N Gaussian stars (PSF sigma 6 px), the "
            "whole frame one parent; CPU and wall seconds, OpenBLAS threads as given"
        )
        head = f"{'N':>5} {'BLAS threads':>12} {'CPU s':>7} {'wall s':>7} {'children':>8}"
        print(head)
        print("-" * len(head))
        for n in (int(v) for v in args.single_band.split(",")):
            for threads in ("default", "1"):
                env = dict(os.environ)
                env.pop("OPENBLAS_NUM_THREADS", None)
                if threads == "1":
                    env["OPENBLAS_NUM_THREADS"] = "1"
                cmd = [sys.executable, __file__, "--one", f"single:{n}:6.0"]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(
                    f"{n:>5} {threads:>12} {r['cpu']:>7.2f} {r['wall']:>7.2f} {r['children']:>8}",
                    flush=True,
                )
        return
    if args.sed_scaling:
        path = make_scene_file(args.data, args.cache, "e", args.crowded_seed)
        sed_scaling(path, [int(v) for v in args.sed_scaling.split(",")], args.dense_max)
        return
    if args.synth:
        targets = [(f"{item}", f"synth:{item}") for item in args.synth.split(",")]
        source = f"synthetic blends (bench/synth.py, seed {args.seed})"
    else:
        targets = []
        for name in args.scenes.split(","):
            seed = SCENES[name][2] if SCENES[name][2] is not None else args.crowded_seed
            targets.append((name, str(make_scene_file(args.data, args.cache, name, seed))))
        source = f"the shared scaling recipe (make_scaling_blends.py; e: seed {args.crowded_seed})"
    print(
        f"cdeblend {cdeblend.__version__}, DeblendConfig({args.config}), {source}, {args.dtype}, "
        "one fresh process per scene"
        + (" (each scene's second deblend in it, --warm)" if args.warm else "")
        + "; CPU seconds (time.process_time) unless marked wall; wall s and CPU s: the "
        "whole deblend (Observation to conserved fluxes)"
    )
    head = (
        f"{'scene':>14} {'N':>5} {'K':>5} {'thr':>3} {'SED s':>6} {'SED m':>6} {'init s':>7} "
        f"{'init m':>6} {'fit s':>7} "
        f"{'fit m':>6} {'fit w':>6} {'iter':>5} {'ms/it':>7} {'floor ms':>8} {'it/floor':>8} "
        f"{'wall s':>7} {'CPU s':>6} "
        f"{'RSS MB':>7} {'|dF/F|':>7} {'loss':>11}  scarlet lite (issue 11)"
    )
    print(head)
    print("-" * len(head))
    counts = args.threads.split(",") if args.threads else [None]
    runs: dict[str, list[dict]] = {}
    for name, target in targets:
        for threads in counts:
            r = spawn(target, args, threads)
            runs.setdefault(name, []).append(r)
            per_it = r["fit"] / max(r["iterations"], 1)
            label = name
            if not args.synth:
                size = SCENES[name][0]
                label = f"{name} {size}x{size}"
            print(
                f"{label:>14} {r['n']:>5} {r['components']:>5} {r['threads']:>3} "
                f"{r['sed']:>6.2f} {r['sed_main']:>6.2f} {r['init']:>7.2f} {r['init_main']:>6.2f} "
                f"{r['fit']:>7.2f} {r['fit_main']:>6.2f} "
                f"{r['fit_wall']:>6.2f} "
                f"{r['iterations']:>5} {1e3 * per_it:>7.1f} {1e3 * r['floor']:>8.1f} "
                f"{per_it / r['floor']:>8.2f} {r['wall']:>7.2f} {r['cpu']:>6.2f} "
                f"{r['rss_mb']:>7.0f} "
                f"{r['flux_err']:>7.4f} {r['loss']:>11.0f}  {SCARLET_LITE.get(name, '-')}",
                flush=True,
            )
    if len(counts) > 1:
        speedups(runs)


def speedups(runs: dict[str, list[dict]]) -> None:
    """The speed-up of each scene's runs over its first (fewest threads): of the fit's wall
    time, of the whole deblend's, and the estimate from CPU times (``fit s`` of the first
    over ``fit m``, see the module docstring)."""
    print()
    head = f"{'scene':>6} {'threads':>7} {'fit x':>6} {'wall x':>6} {'CPU est x':>9}  identical"
    print(head)
    print("-" * len(head))
    for name, rs in runs.items():
        base = rs[0]
        for r in rs[1:]:
            same = all(r[k] == base[k] for k in ("iterations", "loss", "fluxes_digest"))
            print(
                f"{name:>6} {base['threads']:>3}->{r['threads']:<3} "
                f"{base['fit_wall'] / r['fit_wall']:>6.2f} {base['wall'] / r['wall']:>6.2f} "
                f"{base['fit'] / r['fit_main']:>9.2f}  "
                f"{'yes' if same else 'NO'}"
            )


if __name__ == "__main__":
    main()
