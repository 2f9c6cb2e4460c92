"""Benchmark the memory-bounded least-squares SED fit (``cdeblend.fit_seds``).

Case 1 (large): a synthetic 6-band 1000 x 1000 blend with 600 components (boxes 9..81 px,
Moffat-like 41 x 41 PSFs), noise-free data made from known SEDs: prints wall time, peak
traced memory (tracemalloc: numpy buffers), the growth of the process's maximum RSS, and the
maximum relative SED error. The reference's dense design matrix for this case would need
``4 B K H W`` bytes (14.4 GB).

Case 2 (small): the same kind of blend at 160 x 160 with 40 components, against the dense
``numpy.linalg.lstsq`` reference (time, memory, largest difference).

Run: ``python bench/spectra.py [--size 1000] [--components 600]`` (synthetic; reads no data).
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np
from scipy.signal import fftconvolve

from cdeblend import Observation, fit_seds


def moffat_psfs(bands: int, size: int = 41) -> np.ndarray:
    y = np.arange(size) - size // 2
    r2 = y[:, None] ** 2 + y[None, :] ** 2
    out = []
    for b in range(bands):
        alpha = 2.2 + 0.15 * b
        p = (1 + r2 / alpha**2) ** -3.5
        out.append(p / p.sum())
    return np.array(out)


def make_blend(size: int, ncomp: int, bands: int, seed: int = 0):
    """Components with known SEDs and the noise-free observation they make."""
    rng = np.random.default_rng(seed)
    psfs = moffat_psfs(bands)
    proto = Observation(
        np.zeros((bands, 8, 8), np.float32), np.ones((bands, 8, 8), np.float32), psfs
    )
    morphs, boxes = [], []
    seds = rng.uniform(1, 100, size=(ncomp, bands))
    model = np.zeros((bands, size, size))
    for _ in range(ncomp):
        h = w = int(rng.integers(4, 41)) * 2 + 1
        y0, x0 = (int(v) for v in rng.integers(-h // 2, size - h // 2, size=2))
        yy, xx = np.mgrid[:h, :w] - h // 2
        s = h / rng.uniform(4, 8)
        q = rng.uniform(0.4, 1)
        m = np.exp(-0.5 * (yy**2 + (xx * q) ** 2) / s**2).astype(np.float32)
        morphs.append(m)
        boxes.append((y0, x0, h, w))
    for m, (y0, x0, h, w), s in zip(morphs, boxes, seds, strict=True):
        ya, xa = max(y0, 0), max(x0, 0)
        yb, xb = min(y0 + h, size), min(x0 + w, size)
        if yb > ya and xb > xa:
            model[:, ya:yb, xa:xb] += s[:, None, None] * m[ya - y0 : yb - y0, xa - x0 : xb - x0]
    images = np.array(
        [
            fftconvolve(model[b], proto.diff_kernels[b].astype(float), mode="same")
            for b in range(bands)
        ]
    ).astype(np.float32)
    obs = Observation(images, np.ones_like(images), psfs)
    # components entirely outside the frame have no data: their SED is 0 by construction
    inside = np.array(
        [
            min(y0 + h, size) > max(y0, 0) and min(x0 + w, size) > max(x0, 0)
            for (y0, x0, h, w) in boxes
        ]
    )
    return obs, morphs, boxes, seds * inside[:, None]


def dense_lstsq(obs: Observation, morphs, boxes) -> np.ndarray:
    nb, h, w = obs.shape
    a = np.zeros((nb, len(morphs), h * w), dtype=np.float32)
    for k, (m, box) in enumerate(zip(morphs, boxes, strict=True)):
        conv, (gy0, gx0, gh, gw) = obs.convolve_box(m, box)
        frame = np.zeros((nb, h, w), np.float32)
        frame[:, gy0 : gy0 + gh, gx0 : gx0 + gw] = conv
        a[:, k] = frame.reshape(nb, -1)
    seds = np.array(
        [np.linalg.lstsq(a[b].T, obs.images[b].ravel(), rcond=None)[0] for b in range(nb)]
    ).T
    return np.maximum(seds, 0)


def measure(fn):
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0
    return out, elapsed, peak / 2**20, rss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--components", type=int, default=600)
    parser.add_argument("--bands", type=int, default=6)
    args = parser.parse_args()

    print(f"{'case':34s} {'time':>8s} {'peak traced':>12s} {'max RSS +':>10s} {'max rel err':>12s}")
    rows = []
    obs, morphs, boxes, truth = make_blend(args.size, args.components, args.bands)
    dense_gb = 4 * args.bands * args.components * args.size**2 / 1e9
    seds, t, peak, rss = measure(lambda: fit_seds(obs, morphs, boxes))
    err = np.max(np.abs(seds - truth) / np.maximum(truth, 1e-30) * (truth > 0))
    rows.append((f"fit_seds {args.size}^2 K={args.components} B={args.bands}", t, peak, rss, err))
    print(f"{rows[-1][0]:34s} {t:7.2f}s {peak:9.1f} MB {rss:7.1f} MB {err:12.2e}")
    print(f"{'  (dense design matrix would be':34s} {dense_gb:.1f} GB)")

    small = make_blend(160, 40, args.bands, seed=1)
    obs_s, morphs_s, boxes_s, truth_s = small
    fast, t1, p1, _ = measure(lambda: fit_seds(obs_s, morphs_s, boxes_s))
    dense, t2, p2, _ = measure(lambda: dense_lstsq(obs_s, morphs_s, boxes_s))
    diff = np.max(np.abs(fast - dense)) / np.max(np.abs(dense))
    err = np.max(np.abs(fast - truth_s) / np.maximum(truth_s, 1e-30) * (truth_s > 0))
    print(f"{'fit_seds 160^2 K=40':34s} {t1:7.3f}s {p1:9.1f} MB {'':>10s} {err:12.2e}")
    print(
        f"{'dense lstsq 160^2 K=40':34s} {t2:7.3f}s {p2:9.1f} MB {'':>10s} "
        f"(max |diff| / max = {diff:.1e})"
    )


if __name__ == "__main__":
    main()
