"""Benchmark the per-iteration convolution work of the multi-band fit.

Times ``Observation.loss_and_gradient`` (forward convolution, weighted residual and loss,
adjoint convolution: the work of one fit iteration) on the real HSC blend with cdeblend's
FFT core (``_fft.c``) in float32 and float64 and with the direct Cython loop, and compares
with a reference-style FFT convolution (padding ``next_fast_len(size + kernel + 3)``,
centred, ``scipy.fft.rfft2``). Then times one 6-band same-size convolution on grids from
36 x 36 to 2025 x 2025 with the core, with ``scipy.fft`` and (when installed) ``ducc0``,
each on the same grid and with its zero padding exploited the same way (so the rows
compare the FFT libraries). Also prints how much of each difference kernel lies beyond a
given radius (why kernels are not cropped by default).

Also times ``loss_and_gradient`` over the simulated blends (``sim_lsst/``, ``sim_hsc/``).

Run: ``python bench/convolve.py [--data DIR]`` (DIR holds ``real/hsc_cosmos_35.npz`` and the
``sim_*`` folders; default ``../shared/data`` next to the repository).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import scipy.fft

from cdeblend import Observation
from cdeblend.convolution import Convolver

try:  # only for comparison
    import ducc0.fft as ducc_fft
except ImportError:  # pragma: no cover - optional
    ducc_fft = None


def best_time(fn, number: int = 200, repeat: int = 7) -> float:
    """Best mean wall time of ``fn`` over ``repeat`` runs of ``number`` calls (seconds)."""
    for _ in range(min(20, number)):  # warm up (few calls for the slow, large grids)
        fn()
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


class ReferenceStyleFFT:
    """The reference recipe: centred padding to next_fast_len(size + kernel + 3), rfft2."""

    def __init__(self, kernels: np.ndarray, shape: tuple[int, int]) -> None:
        kh, kw = kernels.shape[1:]
        self.shape = shape
        self.fft_shape = tuple(
            scipy.fft.next_fast_len(s + k + 3, real=True)
            for s, k in zip(shape, (kh, kw), strict=True)
        )
        self.fk = scipy.fft.rfft2(scipy.fft.ifftshift(self._pad(kernels), axes=(-2, -1)))

    def _pad(self, a: np.ndarray) -> np.ndarray:
        pads = [(0, 0)]
        for size, n in zip(a.shape[1:], self.fft_shape, strict=True):
            d = n - size
            pads.append(((d + 1) // 2, d - (d + 1) // 2))
        return np.pad(a, pads)

    def convolve(self, x: np.ndarray, fk: np.ndarray) -> np.ndarray:
        f = scipy.fft.rfft2(scipy.fft.ifftshift(self._pad(x), axes=(-2, -1)))
        full = scipy.fft.fftshift(scipy.fft.irfft2(f * fk, s=self.fft_shape), axes=(-2, -1))
        h, w = self.shape
        y0 = (self.fft_shape[0] - h + 1) // 2
        x0 = (self.fft_shape[1] - w + 1) // 2
        return full[:, y0 : y0 + h, x0 : x0 + w]

    def loss_and_gradient(self, obs: Observation, model: np.ndarray) -> tuple[float, np.ndarray]:
        conv = self.convolve(model, self.fk)
        resid = obs.weights * (conv - obs.images)
        loss = 0.5 * float(np.sum(resid * (conv - obs.images), dtype=np.float64))
        return loss, self.convolve(resid, np.conj(self.fk))


def library_convolution(lib, kernels: np.ndarray, n0: int, n1: int, h: int, w: int):
    """Same-size convolution of (B, h, w) float32 planes on the (n0, n1) grid with a library's
    real FFTs: a real transform along y of the w non-zero columns, a complex one along x,
    and back (the split cdeblend's engine also uses), kernel transforms precomputed."""
    nb, kh, kw = kernels.shape
    pad = np.zeros((nb, n0, n1))
    for b in range(nb):
        for y in range(kh):
            for x in range(kw):
                pad[b, (y - kh // 2) % n0, (x - kw // 2) % n1] += kernels[b, y, x]
    fk = np.fft.fft(np.fft.rfft(pad, axis=1), axis=2).astype(np.complex64)
    grid = np.zeros((nb, n0, w), np.float32)
    if lib == "ducc0":
        half = np.zeros((nb, n0 // 2 + 1, n1), np.complex64)
        full = np.empty((nb, n0, w), np.float32)

        def conv(x: np.ndarray) -> np.ndarray:
            grid[:, :h] = x
            ducc_fft.r2c(grid, axes=(1,), out=half[:, :, :w], nthreads=1)
            ducc_fft.c2c(half, axes=(2,), out=half, nthreads=1)
            np.multiply(half, fk, out=half)
            ducc_fft.c2c(half, axes=(2,), forward=False, inorm=2, out=half, nthreads=1)
            ducc_fft.c2r(
                half[:, :, :w],
                axes=(1,),
                lastsize=n0,
                forward=False,
                inorm=2,
                out=full,
                nthreads=1,
                allow_overwriting_input=True,
            )
            half[:, :, w:] = 0
            return full[:, :h]

        return conv

    def conv(x: np.ndarray) -> np.ndarray:  # scipy: its n= argument pads implicitly
        spec = scipy.fft.fft(scipy.fft.rfft(x, n=n0, axis=1), n=n1, axis=2)
        back = scipy.fft.ifft(spec * fk, axis=2)[:, :, :w]
        return scipy.fft.irfft(back, n=n0, axis=1)[:, :h]

    return conv


def main() -> None:
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default)
    args = parser.parse_args()
    path = args.data / "real" / "hsc_cosmos_35.npz"
    print(f"data: {path}")
    with np.load(path) as d:
        images, variance, psfs = d["images"], d["variance"], d["psfs"]
    print(f"blend {images.shape}, PSFs {psfs.shape}\n")

    rows = []
    for dtype in (np.float32, np.float64):
        obs = Observation(images, variance, psfs, dtype=dtype)
        model = np.ascontiguousarray(np.abs(obs.images) * 0.5)
        grad = np.empty_like(model)
        loss = obs.loss_and_gradient(model, grad, mode="fft")
        t_lg = best_time(lambda o=obs, m=model, g=grad: o.loss_and_gradient(m, g, mode="fft"))
        t_l = best_time(lambda o=obs, m=model: o.loss(m, mode="fft"))
        t_c = best_time(lambda o=obs, m=model, g=grad: o.convolve(m, out=g, mode="fft"))
        rows.append(("cdeblend fft (C core)", np.dtype(dtype).name, t_lg, t_l, t_c, loss))

    obs = Observation(images, variance, psfs)
    model = np.ascontiguousarray(np.abs(obs.images) * 0.5)
    grad = np.empty_like(model)
    loss = obs.loss_and_gradient(model, grad, mode="real")
    t_lg = best_time(lambda: obs.loss_and_gradient(model, grad, mode="real"), 5, 3)
    t_c = best_time(lambda: obs.convolve(model, out=grad, mode="real"), 5, 3)
    rows.append(("cdeblend direct (Cython)", "float32", t_lg, np.nan, t_c, loss))

    ref = ReferenceStyleFFT(obs.diff_kernels, images.shape[1:])
    loss = ref.loss_and_gradient(obs, model)[0]
    t_lg = best_time(lambda: ref.loss_and_gradient(obs, model))
    t_c = best_time(lambda: ref.convolve(model, ref.fk))
    rows.append(("reference-style fft (scipy)", "float32", t_lg, np.nan, t_c, loss))

    print(f"{'method':30s} {'dtype':8s} {'loss+grad':>10s} {'loss':>9s} {'convolve':>9s}  loss")
    for name, dt, t_lg, t_l, t_c, loss in rows:
        print(
            f"{name:30s} {dt:8s} {t_lg * 1e6:8.1f}us {t_l * 1e6:7.1f}us {t_c * 1e6:7.1f}us"
            f"  {loss:.9g}"
        )
    n0, n1 = obs.convolver.fft_shape(*images.shape[1:])
    print(f"\nFFT grid: cdeblend {n0}x{n1}, reference-style {ref.fft_shape[0]}x{ref.fft_shape[1]}")

    print("\nloss_and_gradient (float32, auto mode) over the simulated blends:")
    print(
        f"{'dataset':10s} {'blends':>6s} {'median shape':>16s} {'PSF':>7s} {'median':>9s} "
        f"{'max':>9s}"
    )
    for name in ("sim_lsst", "sim_hsc"):
        times, shapes, psf_shape = [], [], None
        for f in sorted((args.data / name).glob("*.npz")):
            with np.load(f) as d:
                o = Observation(d["images"], d["variance"], d["psfs"])
            m = np.ascontiguousarray(np.abs(o.images))
            g = np.empty_like(m)
            times.append(best_time(lambda o=o, m=m, g=g: o.loss_and_gradient(m, g), 50, 3))
            shapes.append(o.shape)
            psf_shape = o.psfs.shape[1:]
        if times:
            med = tuple(int(v) for v in np.median(np.array(shapes), axis=0))
            print(
                f"{name:10s} {len(times):6d} {str(med):>16s} {str(psf_shape):>7s} "
                f"{np.median(times) * 1e6:7.1f}us {np.max(times) * 1e6:7.1f}us"
            )

    print("\nOne 6-band same-size convolution (float32, kernels 41 x 41), microseconds:")
    libs = ["cdeblend", "scipy"] + (["ducc0"] if ducc_fft is not None else [])
    print(
        f"{'image':>11s} {'grid':>11s} "
        + " ".join(f"{lib:>9s}" for lib in libs)
        + "  max |difference| / max"
    )
    rng = np.random.default_rng(0)
    kern6 = rng.random((6, 41, 41))
    psf6 = np.repeat(psfs[:1], 6, axis=0) if psfs.shape[1] == 41 else None
    for size in (16, 40, 100, 400, 1000, 2000):
        x = rng.random((6, size, size)).astype(np.float32)
        img = np.zeros((6, size, size), np.float32)
        o = Observation(img, np.ones_like(img), psf6 if psf6 is not None else psfs[:1].repeat(6, 0))
        o.convolver = Convolver(kern6.astype(np.float32), o.shape[1:])
        n0, n1 = o.convolver.fft_shape(size, size)
        out = np.empty_like(x)
        times, results = [], []
        n = max(3, int(2e6 / (n0 * n1)))
        for lib in libs:
            if lib == "cdeblend":
                fn = lambda o=o, x=x, out=out: o.convolve(x, out=out, mode="fft")  # noqa: E731
            else:
                fn = library_convolution(lib, kern6, n0, n1, size, size)
            results.append(np.array(fn(x) if lib != "cdeblend" else fn(), dtype=np.float64))
            times.append(
                best_time(lambda fn=fn, x=x, lib=lib: fn(x) if lib != "cdeblend" else fn(), n, 3)
            )
        diff = max(float(np.abs(r - results[0]).max()) for r in results[1:])
        print(
            f"{size:>5d}x{size:<5d} {n0:>5d}x{n1:<5d} "
            + " ".join(f"{t * 1e6:9.1f}" for t in times)
            + f"  {diff / np.abs(results[0]).max():.1e}"
        )

    print("\nL1 fraction of each band's difference kernel outside radius r (Chebyshev):")
    kern = Observation(images, variance, psfs, dtype=np.float64).diff_kernels
    r0 = kern.shape[1] // 2
    yy, xx = np.mgrid[-r0 : r0 + 1, -r0 : r0 + 1]
    cheb = np.maximum(np.abs(yy), np.abs(xx))
    total = np.abs(kern).sum(axis=(1, 2))
    for r in (8, 12, 15, 18):
        frac = np.abs(kern * (cheb > r)).sum(axis=(1, 2)) / total
        print(f"  r={r:2d}: " + " ".join(f"{f:.3f}" for f in frac))


if __name__ == "__main__":
    main()
