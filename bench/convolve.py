"""Benchmark the per-iteration convolution work of the multi-band fit.

Times ``Observation.loss_and_gradient`` (forward convolution, weighted residual and loss,
adjoint convolution: the one call per fit iteration) on the real HSC blend, for both FFT
back-ends (ducc0 when installed, scipy's pocketfft otherwise), float32 and float64, and the
direct Cython loop, and compares with a reference-style FFT convolution (padding
``next_fast_len(size + kernel + 3)``, centred, ``scipy.fft.rfft2``). Also prints how much of
each difference kernel lies beyond a given radius (why kernels are not cropped by default).

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
from cdeblend import observation as obs_module


def best_time(fn, number: int = 200, repeat: int = 7) -> float:
    """Best mean wall time of ``fn`` over ``repeat`` runs of ``number`` calls (seconds)."""
    for _ in range(20):
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
        return full[:, y0:y0 + h, x0:x0 + w]

    def loss_and_gradient(self, obs: Observation, model: np.ndarray) -> tuple[float, np.ndarray]:
        conv = self.convolve(model, self.fk)
        resid = obs.weights * (conv - obs.images)
        loss = 0.5 * float(np.sum(resid * (conv - obs.images), dtype=np.float64))
        return loss, self.convolve(resid, np.conj(self.fk))


def main() -> None:
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default)
    args = parser.parse_args()
    path = args.data / "real" / "hsc_cosmos_35.npz"
    print(f"data: {path}")
    with np.load(path) as d:
        images, variance, psfs = d["images"], d["variance"], d["psfs"]
    print(f"blend {images.shape}, PSFs {psfs.shape}, ducc0 installed: "
          f"{obs_module._ducc_fft is not None}\n")

    backends = ["ducc0", "scipy"] if obs_module._ducc_fft is not None else ["scipy"]
    saved = obs_module._ducc_fft
    rows = []
    for backend in backends:
        obs_module._ducc_fft = saved if backend == "ducc0" else None
        for dtype in (np.float32, np.float64):
            obs = Observation(images, variance, psfs, dtype=dtype)
            model = np.ascontiguousarray(np.abs(obs.images) * 0.5)
            grad = np.empty_like(model)
            loss = obs.loss_and_gradient(model, grad, mode="fft")
            t_lg = best_time(lambda o=obs, m=model, g=grad: o.loss_and_gradient(m, g, mode="fft"))
            t_l = best_time(lambda o=obs, m=model: o.loss(m, mode="fft"))
            t_c = best_time(lambda o=obs, m=model, g=grad: o.convolve(m, out=g, mode="fft"))
            rows.append((f"cdeblend fft ({backend})", np.dtype(dtype).name, t_lg, t_l, t_c, loss))
    obs_module._ducc_fft = saved

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
        print(f"{name:30s} {dt:8s} {t_lg * 1e6:8.1f}us {t_l * 1e6:7.1f}us {t_c * 1e6:7.1f}us"
              f"  {loss:.9g}")
    n0, n1 = obs._fft_shape(*images.shape[1:])
    print(f"\nFFT grid: cdeblend {n0}x{n1}, reference-style {ref.fft_shape[0]}x{ref.fft_shape[1]}")

    print("\nloss_and_gradient (float32, auto mode) over the simulated blends:")
    print(f"{'dataset':10s} {'blends':>6s} {'median shape':>16s} {'PSF':>7s} {'median':>9s} "
          f"{'max':>9s}")
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
            print(f"{name:10s} {len(times):6d} {str(med):>16s} {str(psf_shape):>7s} "
                  f"{np.median(times) * 1e6:7.1f}us {np.max(times) * 1e6:7.1f}us")

    print("\nL1 fraction of each band's difference kernel outside radius r (Chebyshev):")
    kern = Observation(images, variance, psfs, dtype=np.float64).diff_kernels
    r0 = kern.shape[1] // 2
    yy, xx = np.mgrid[-r0:r0 + 1, -r0:r0 + 1]
    cheb = np.maximum(np.abs(yy), np.abs(xx))
    total = np.abs(kern).sum(axis=(1, 2))
    for r in (8, 12, 15, 18):
        frac = np.abs(kern * (cheb > r)).sum(axis=(1, 2)) / total
        print(f"  r={r:2d}: " + " ".join(f"{f:.3f}" for f in frac))


if __name__ == "__main__":
    main()
