"""Detection completeness and purity on the simulations, and counts on the real images.

Runs :func:`cdeblend.detect` (no peaks given: footprints and peaks are detected) on

- ``sim_lsst``, ``sim_hsc``, ``sim_single`` (40 blends each) and ``field_lsst_512.npz``: the
  detected peaks are matched one to one (closest pairs first) to the true centres
  (``true_x``, ``true_y``) within ``--match`` PSF FWHM (from the first band's PSF moments).
  *Completeness*: the fraction of catalog sources (matched-filter S/N >= 5) matched;
  *purity*: the fraction of detections matched to a true source, catalog or undetected (a
  detection of a real source below S/N 5 is not spurious); *pairs*: completeness of the
  catalog sources with another catalog source closer than 2 FWHM (a close pair must stay
  two detections); *pk/par*: peaks per parent, mean and max.
- the real images of ``real/fits`` (no truth): parents, peaks and the most peaks in one
  parent. HSC and HST cutouts: the noise is a sigma-clipped standard deviation per band,
  the background a sigma-clipped median, the PSF the published one. The ESO EMMI image is
  not sky-subtracted: a 64 px mesh background (sigma-clipped medians, 3 x 3 median-filtered,
  linearly interpolated, as SExtractor's ``BACK_SIZE 64``) is subtracted and its ``rms.fits``
  is the noise; it is run at the settings of its SExtractor catalog (``DETECT_THRESH 1.5``,
  ``DETECT_MINAREA 5``, ``default.conv`` filter, no growing), whose 65 objects (without
  deblending) are the reference for the parents.

Two settings per set: ``psf`` (matched filter with the PSF, nsigma 5, what deblend_image and
the recommended API call do) and ``raw`` (the unfiltered S/N image, nsigma 5: what
``deblend_catalog`` calls without peaks).

    python bench/detection.py [--data PATH] [--label after] [--png /tmp/det]

``--data`` defaults to ``../shared/data`` relative to the repository root. Run it with an
older checkout's interpreter to get the "before" rows (the script then uses only the
arguments that version of ``detect`` knows, and says so). ``--png DIR`` draws the real
images with their footprints and peaks.
"""

from __future__ import annotations

import argparse
import inspect
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

import cdeblend as cdb
from cdeblend.single_band import psf_fwhm_from_moments

DETECT_ARGS = set(inspect.signature(cdb.detect).parameters)
NEW_API = "kernel" in DETECT_ARGS


def default_data() -> Path:
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def call_detect(images, variance, **kw):
    """cdeblend.detect with the arguments this version knows (older ones lack the filter)."""
    if not NEW_API and "kernel" in kw:
        kw.pop("kernel")
        kw.pop("filter_type", None)
    return cdb.detect(images, variance, **{k: v for k, v in kw.items() if k in DETECT_ARGS})


def match(det_xy: np.ndarray, true_xy: np.ndarray, radius: float) -> np.ndarray:
    """(n_true,) index of the detection matched to each true source (-1: none), one to one,
    minimising the summed distance among pairs closer than ``radius``."""
    out = np.full(len(true_xy), -1)
    if len(det_xy) == 0 or len(true_xy) == 0:
        return out
    d = np.hypot(*(true_xy[:, None, :] - det_xy[None, :, :]).transpose(2, 0, 1))
    cost = np.where(d <= radius, d, 1e6)
    rows, cols = linear_sum_assignment(cost)
    ok = cost[rows, cols] <= radius
    out[rows[ok]] = cols[ok]
    return out


def evaluate(d: dict, parents, fwhm: float, radius_fwhm: float) -> dict:
    """Counts of one blend: matched catalog sources, detections, pair completeness."""
    pk = np.concatenate([p.peaks for p in parents]) if parents else np.zeros((0, 2))
    det_xy = pk[:, ::-1].astype(float)
    cat_xy = np.stack([d["true_x"], d["true_y"]], axis=1)
    und_xy = np.stack([d["undetected_true_x"], d["undetected_true_y"]], axis=1).reshape(-1, 2)
    all_xy = np.concatenate([cat_xy, und_xy])
    m_all = match(det_xy, all_xy, radius_fwhm * fwhm)
    m_cat = m_all[: len(cat_xy)]
    dd = np.hypot(*(cat_xy[:, None, :] - cat_xy[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(dd, np.inf)
    close = dd.min(axis=1) < 2 * fwhm if len(cat_xy) > 1 else np.zeros(len(cat_xy), bool)
    npk = [len(p.peaks) for p in parents]
    return {
        "n_true": len(cat_xy),
        "n_found": int((m_cat >= 0).sum()),
        "n_det": len(det_xy),
        "n_pure": int((m_all >= 0).sum()),
        "n_pair": int(close.sum()),
        "n_pair_found": int((close & (m_cat >= 0)).sum()),
        "n_par": len(parents),
        "max_pk": max(npk) if npk else 0,
    }


def field_as_blend(d: dict) -> dict:
    return d


def load_set(path: Path) -> list[dict]:
    files = [path] if path.suffix == ".npz" else sorted(path.glob("*.npz"))
    out = []
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            keep = [k for k in z.files if "true_images" not in k and "flat" not in k]
            out.append({k: z[k] for k in keep})
    return out


def run_sims(data: Path, settings: dict, radius_fwhm: float) -> list[str]:
    rows = []
    for name in ("sim_lsst", "sim_hsc", "sim_single", "field_lsst_512.npz"):
        blends = load_set(data / name)
        for sname, kw in settings.items():
            tot: dict = {}
            t0 = time.process_time()
            for d in blends:
                images = d["images"].astype(np.float64)
                variance = d["variance"].astype(np.float64)
                psfs = d["psfs"].astype(np.float64)
                fwhm = psf_fwhm_from_moments(psfs.mean(axis=0))
                k = dict(kw)
                if k.pop("use_psf", False):
                    k["psf"] = psfs
                parents = call_detect(images, variance, **k)
                r = evaluate(d, parents, fwhm, radius_fwhm)
                for key, v in r.items():
                    tot[key] = max(tot.get(key, 0), v) if key == "max_pk" else tot.get(key, 0) + v
            cpu = time.process_time() - t0
            rows.append(
                f"{name:20s} {sname:5s} {tot['n_true']:5d} {tot['n_found'] / tot['n_true']:7.3f} "
                f"{tot['n_pure'] / max(tot['n_det'], 1):7.3f} {tot['n_det']:5d} "
                f"{tot['n_pair_found']:4d}/{tot['n_pair']:<4d} "
                f"{tot['n_pair_found'] / max(tot['n_pair'], 1):6.3f} "
                f"{tot['n_det'] / max(tot['n_par'], 1):6.2f} {tot['max_pk']:4d} {cpu:6.2f}"
            )
            print(rows[-1], flush=True)
    return rows


def sigma_clipped(x: np.ndarray, n: float = 3.0, iters: int = 10) -> tuple[float, float]:
    """Median and standard deviation of ``x`` after iterative n-sigma clipping."""
    x = x[np.isfinite(x)].ravel()
    for _ in range(iters):
        med, std = np.median(x), x.std()
        keep = np.abs(x - med) <= n * std
        if keep.all():
            break
        x = x[keep]
    return float(np.median(x)), float(x.std())


def mesh_background(img: np.ndarray, box: int = 64) -> np.ndarray:
    """SExtractor-like background: sigma-clipped medians on a ``box`` mesh, 3 x 3
    median-filtered, interpolated linearly to every pixel."""
    H, W = img.shape
    ny, nx = max(H // box, 1), max(W // box, 1)
    mesh = np.empty((ny, nx))
    for i in range(ny):
        for j in range(nx):
            mesh[i, j] = sigma_clipped(img[i * box : (i + 1) * box, j * box : (j + 1) * box])[0]
    mesh = ndimage.median_filter(mesh, size=3, mode="nearest")
    yc = (np.arange(ny) + 0.5) * H / ny - 0.5
    xc = (np.arange(nx) + 0.5) * W / nx - 0.5
    fy = np.interp(np.arange(H), yc, np.arange(ny))
    fx = np.interp(np.arange(W), xc, np.arange(nx))
    gy, gx = np.meshgrid(fy, fx, indexing="ij")
    return ndimage.map_coordinates(mesh, [gy, gx], order=1, mode="nearest")


def read_fits(path: Path) -> np.ndarray:
    from astropy.io import fits

    with fits.open(path) as h:
        return np.asarray(h[0].data, dtype=np.float64)


def real_cases(data: Path) -> list[tuple[str, np.ndarray, np.ndarray, dict, str]]:
    """(name, images, variance, detect kwargs, reference) of each real image."""
    hsc = data / "real" / "fits" / "hsc_scarlet"
    cases = []
    for name, psfname, ref in (
        ("hsc_ra=150.24071_dec=2.06514.fits", "psf_hsc_ra=150.24071_dec=2.06514.fits", "1 spiral"),
        ("Cut_HSC.fits", "PSF_HSC.fits", "3-4 galaxies"),
        ("Cut_HSC1.fits", "PSF_HSC.fits", "3-4 galaxies"),
        ("Cut_HST.fits", "PSF_HST.fits", "clumpy galaxies"),
    ):
        img = read_fits(hsc / name)
        img = img[None] if img.ndim == 2 else img
        psf = read_fits(hsc / psfname)
        psf = psf[None] if psf.ndim == 2 else psf
        psf = psf / psf.sum(axis=(1, 2), keepdims=True)
        var = np.empty_like(img)
        for b in range(len(img)):
            med, std = sigma_clipped(img[b])
            img[b] -= med
            var[b] = std * std
        cases.append((name, img, var, {"psf": psf.mean(axis=0)}, ref))
        if name == "Cut_HST.fits" and NEW_API:
            # drizzled: its noise is correlated, the filtered noise twice the variance's
            kw = {"psf": psf.mean(axis=0), "measure_noise": True}
            cases.append(("Cut_HST.fits measure_noise", img, var, kw, ref))
    emmi = data / "real" / "fits" / "sep_emmi"
    img = read_fits(emmi / "image.fits")
    rms = read_fits(emmi / "rms.fits")
    img = img - mesh_background(img)
    conv = np.loadtxt(emmi / "default.conv", skiprows=1, comments="#")
    sex = {"nsigma": 1.5, "min_area": 5, "grow": 0, "kernel": conv, "filter_type": "conv"}
    cases.append(("sep_emmi image.fits (SExtractor)", img, rms * rms, sex, "65 parents"))
    raw = {"nsigma": 1.5, "min_area": 5, "grow": 0}
    cases.append(("sep_emmi unfiltered 1.5 sigma", img, rms * rms, raw, "-"))
    # the call of the issue: a global median background, unfiltered, grown footprints
    glob = read_fits(emmi / "image.fits")
    glob -= np.median(glob)
    issue = {"nsigma": 1.5, "min_area": 5}
    cases.append(("sep_emmi median bkg, unfilt., grow 2", glob, rms * rms, issue, "-"))
    return cases


def sextractor_xy(data: Path) -> np.ndarray:
    """(65, 2) x, y (0-based) of the objects of the EMMI image's SExtractor catalog."""
    cat = np.loadtxt(data / "real" / "fits" / "sep_emmi" / "image.cat", comments="#")
    return cat[:, 1:3] - 1.0


def sextractor_match(parents, xy: np.ndarray, radius: float = 3.0) -> str:
    """How many SExtractor objects have a peak within ``radius`` px, and how many peaks
    match none."""
    pk = np.concatenate([p.peaks for p in parents])[:, ::-1].astype(float)
    m = match(pk, xy, radius)
    n = int((m >= 0).sum())
    return f"{n}/{len(xy)} SExtractor objects matched, {len(pk) - n} peaks unmatched"


def run_real(data: Path, png: Path | None) -> list[str]:
    rows = []
    for name, img, var, kw, ref in real_cases(data):
        k = dict(kw)
        if "psf" in k:
            k.update(nsigma=5.0)
        t0 = time.process_time()
        parents = call_detect(img, var, **k)
        cpu = time.process_time() - t0
        npk = [len(p.peaks) for p in parents]
        if name.startswith("sep_emmi"):
            ref = f"{ref}; {sextractor_match(parents, sextractor_xy(data))}"
        rows.append(
            f"{name:34s} {len(parents):7d} {sum(npk):7d} {max(npk) if npk else 0:6d} "
            f"{cpu:6.2f}  {ref}"
        )
        print(rows[-1], flush=True)
        if png is not None:
            draw(png, name, img, parents)
    return rows


def draw(folder: Path, name: str, img: np.ndarray, parents) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    im = img.sum(axis=0) if img.ndim == 3 else img
    lo, hi = np.percentile(im, [5, 99.7])
    fig, ax = plt.subplots(figsize=(7, 7))
    ax.imshow(np.arcsinh((im - lo) / max(hi - lo, 1e-12) * 10), origin="lower", cmap="gray")
    lab = np.zeros(im.shape, int)
    for p in parents:
        lab[p.full_footprint(im.shape)] = p.id
    ax.contour(lab > 0, levels=[0.5], colors="c", linewidths=0.6)
    for p in parents:
        ax.plot(p.peaks[:, 1], p.peaks[:, 0], "r+", ms=8)
    ax.set_title(f"{name}: {len(parents)} parents, {sum(len(p.peaks) for p in parents)} peaks")
    fig.savefig(folder / (name.replace(" ", "_").replace("=", "_") + ".png"), dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--label", default="after" if NEW_API else "before")
    ap.add_argument("--match", type=float, default=1.0, help="match radius in PSF FWHM")
    ap.add_argument("--png", type=Path, default=None)
    ap.add_argument("--skip-sims", action="store_true")
    args = ap.parse_args()
    print(f"cdeblend {cdb.__file__} ({args.label}; new detect API: {NEW_API})")
    settings = {"psf": {"use_psf": True, "nsigma": 5.0}, "raw": {"nsigma": 5.0}}
    if not args.skip_sims:
        print(
            f"{'set':20s} {'mode':5s} {'ntrue':>5s} {'compl':>7s} {'purity':>7s} {'ndet':>5s} "
            f"{'pairs <2FWHM':>11s} {'pairC':>6s} {'pk/par':>6s} {'max':>4s} {'cpu_s':>6s}"
        )
        run_sims(args.data, settings, args.match)
    print(f"\n{'real image':34s} {'parents':>7s} {'peaks':>7s} {'maxpk':>6s} {'cpu_s':>6s}  expect")
    run_real(args.data, args.png)


if __name__ == "__main__":
    main()
