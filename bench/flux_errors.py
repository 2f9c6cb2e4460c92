"""Pulls of the flux uncertainties on the simulations, per blendedness bin.

For every detected source and band of ``sim_lsst`` and ``sim_hsc`` (multi-band deblender,
default settings) and ``sim_single`` (single-band deblender), the pull
``(F - F_true) / sigma`` of

* ``cons|noise``: the conserved flux against the noiseless scene re-apportioned with the same
  shares (``sum_p s_i(p) (sum_j t_j + undetected)(p)``). Its only difference from the
  conserved flux is the noise, so this checks the error formula itself;
* ``cons|true``: the conserved flux against the source's true flux (deblending error, the
  undetected neighbours' light and the lost wings on top of the noise);
* ``model|noise``: the model flux (``DeblendResult.fluxes``, the single-band template sum)
  against the same deblender's model flux on the noiseless scene, with the Fisher error of
  the SEDs (template amplitudes) with the morphologies held (``flux_err``): checks whether
  that error describes the model flux's noise;
* ``model|true``: the model flux against the true flux, same error;
* ``model|noise*``, ``model|true*``: the same with the conserved flux's error instead (the
  error of the image summed with the model's shares: what a free-form morphology, which
  follows the noise pixel by pixel, leaves of the SED's optimal weighting);
* ``cons|true+``, ``model|true+`` (multi band): against the true flux with the total errors
  ``conserved_flux_total_err`` (noise and the deblending term ``deblend_flux_err`` in
  quadrature) and ``flux_total_err`` (Fisher error, deblending term and the model's misfit
  ``conserved - model`` in quadrature): the errors to use against the truth;
* single band, ``cons|true+``: the conserved flux against the true flux with
  ``Child.flux_total_err`` (noise, deblending term and the estimated light outside the
  footprint ``Child.wing_flux`` in quadrature); ``cons+wing|true+``: ``flux + wing_flux``
  with the same error. A second table compares ``wing_flux`` with the source's true light
  outside the footprint (and its pixels without data).

The single-band deblender is called as a user would (bench/accuracy.py does the same): one
call with the blend's peaks and the default footprint.

Entries with band S/N >= ``--snr`` (default 20) are binned by the truth blendedness
``1 - sum(t_i^2) / sum(t_i T)`` (``T`` the noiseless scene including undetected sources):
``< 0.05`` (isolated), ``0.05-0.3``, ``>= 0.3``. Columns: n, robust std of the pull
(1.4826 MAD; 1 when the errors are right), median pull, and ``extra``: the fractional
error ``e`` that, added in quadrature (``sigma^2 + (e F_true)^2``), brings the robust std of
the pull to 1 (0 when the noise explains the scatter): the deblending error in units of
the flux.

Reads the shared simulations (``sim_*``) from ``--data`` (default ``../shared/data``
relative to the repository root) and the other sets from ``--sets-dir`` (default
``../simsets``, made by bench/accuracy.py with fresh seeds: ``*_tune`` 20xx to choose,
``*_heldout`` 21xx held out). Usage::

    python bench/flux_errors.py [--data PATH] [--sets sim_lsst,sim_hsc,sim_single] [--snr 20]
    python bench/flux_errors.py --sets lsst_heldout,hsc_heldout --limit 100
    python bench/flux_errors.py --sets single_tune,hard_single_tune --limit 300
"""

from __future__ import annotations

import argparse
import glob
import os
import time
from pathlib import Path

import numpy as np

from cdeblend import (
    DeblendConfig,
    Deblender,
    Observation,
    SingleBandConfig,
    SingleBandDeblender,
    apportion_flux,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_SETS = Path(__file__).resolve().parents[2] / "simsets"
SHARED = ("sim_lsst", "sim_hsc", "sim_single")
BINS = ((0.0, 0.05, "<0.05"), (0.05, 0.3, "0.05-0.3"), (0.3, np.inf, ">=0.3"))


def robust_std(x: np.ndarray) -> float:
    """1.4826 times the median absolute deviation from the median."""
    x = np.asarray(x)
    if x.size == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


def extra_error(f: np.ndarray, truth: np.ndarray, sigma: np.ndarray) -> float:
    """Fractional error added in quadrature that makes the pulls' robust std 1."""

    def width(e: float) -> float:
        return robust_std((f - truth) / np.sqrt(sigma**2 + (e * truth) ** 2))

    if f.size == 0:
        return float("nan")
    if width(0.0) <= 1.0:
        return 0.0
    lo, hi = 0.0, 1.0
    if width(hi) > 1.0:
        return float("inf")
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if width(mid) > 1.0 else (lo, mid)
    return hi


def truth_arrays(data: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, B) true flux, blendedness and band S/N, and the noiseless scene (B, H, W)."""
    t = data["true_images"].astype(np.float64)
    scene = t.sum(axis=0) + data["undetected_true_images"].astype(np.float64).sum(axis=0)
    cross = np.einsum("nbij,bij->nb", t, scene)
    own = np.einsum("nbij,nbij->nb", t, t)
    blendedness = 1.0 - np.divide(own, cross, out=np.zeros_like(own), where=cross > 0)
    var = data["variance"].astype(np.float64)
    snr = np.sqrt(
        np.einsum("nbij,bij->nb", t * t, np.divide(1.0, var, where=var > 0, out=np.zeros_like(var)))
    )
    return blendedness, snr, scene


def run_multi(path: str) -> dict:
    with np.load(path, allow_pickle=False) as d:
        data = {k: d[k] for k in d.files}
    obs = Observation(data["images"], data["variance"], data["psfs"])
    cat = data["catalog"]
    peaks = np.stack([cat["y"], cat["x"]], axis=1)
    res = Deblender(DeblendConfig()).deblend(obs, peaks)
    blendedness, snr, scene = truth_arrays(data)
    image = np.where(obs.weights > 0, scene, 0.0).astype(obs.dtype)
    # the same shares on the same pixels: the children's footprint
    noiseless, _ = apportion_flux(image, res._convolved_stack(), res.footprint)
    # the same fit of the noiseless scene: the model flux's truth for its noise alone
    obs0 = Observation(scene.astype(np.float32), data["variance"], data["psfs"])
    model0 = Deblender(DeblendConfig()).deblend(obs0, peaks).fluxes
    return dict(
        model_noiseless=model0,
        cons=res.conserved_fluxes,
        cons_err=res.conserved_flux_err,
        cons_noiseless=noiseless.sums(),
        model=res.fluxes,
        model_err=res.flux_err,
        cons_tot=res.conserved_flux_total_err,
        model_tot=res.flux_total_err,
        true=data["true_flux"],
        blendedness=blendedness,
        snr=snr,
    )


def run_single(path: str) -> dict:
    """One single-band blend, deblended as a user would: one call with the default
    footprint (the detection footprints holding a peak, merged), as bench/accuracy.py."""
    with np.load(path, allow_pickle=False) as d:
        data = {k: d[k] for k in d.files}
    cat = data["catalog"]
    peaks = np.stack([cat["y"], cat["x"]], axis=1).astype(np.int64)
    img, var = data["images"][0].astype(np.float64), data["variance"][0].astype(np.float64)
    psf = data["psfs"][0].astype(np.float64)
    res = SingleBandDeblender(SingleBandConfig()).deblend(img, var, psf, peaks)
    blendedness, snr, scene = truth_arrays(data)
    # the model flux's truth for its noise alone: the same call on the noiseless scene
    # (its own footprint: the noiseless scene's detection footprint is larger)
    res0 = SingleBandDeblender(SingleBandConfig()).deblend(scene[0], var, psf, peaks)
    n = len(peaks)
    keys = ("cons", "cons_err", "cons_noiseless", "model", "model_err", "model_noiseless")
    keys += ("cons_tot", "wing", "wing_true", "cons_wing", "deblend_err")
    out = {k: np.full((n, 1), np.nan) for k in keys}
    for ch in res0.children:
        out["model_noiseless"][ch.index] = float(np.sum(ch.template))
    fp = np.zeros(img.shape, bool)
    y0, x0, h, w = res.footprint_box
    fp[y0 : y0 + h, x0 : x0 + w] = res.footprint
    fp &= var > 0
    true = data["true_images"][:, 0].astype(np.float64)
    for ch in res.children:
        i = ch.index
        out["cons"][i] = ch.flux
        out["cons_err"][i] = ch.flux_err
        out["cons_tot"][i] = ch.flux_total_err
        out["wing"][i] = ch.wing_flux
        out["deblend_err"][i] = ch.deblend_flux_err
        out["cons_wing"][i] = ch.flux + ch.wing_flux
        # the source's light that the footprint (with data) misses
        out["wing_true"][i] = float(true[i][~fp].sum())
        out["model"][i] = float(np.sum(ch.template))
        out["model_err"][i] = ch.template_flux_err
        # the same shares applied to the noiseless scene: share = conserved / image
        y0, x0, h, w = ch.box
        sl = (slice(y0, y0 + h), slice(x0, x0 + w))
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(img[sl] != 0, ch.conserved / img[sl], 0.0)
        out["cons_noiseless"][i] = float(np.sum(share * scene[0][sl]))
    out.update(true=data["true_flux"], blendedness=blendedness, snr=snr)
    out["is_star"] = data["is_star"][:, None].astype(float)
    return out


def wing_table(cat: dict, good: np.ndarray) -> None:
    """Single band: the terms of ``Child.flux_total_err`` (median share of its variance and
    median size over the noise error) per blendedness bin; then the estimated wing light
    (``Child.wing_flux``) against the true light outside the footprint, stars and galaxies
    apart."""
    print(
        f"{'terms':<12} {'blendedness':<11} {'n':>5} {'deb^2/tot^2':>12} {'wing^2/tot^2':>13}"
        f" {'deb/noise':>10} {'wing/noise':>11}  (median)"
    )
    for lo, hi, label in BINS:
        sel = good & (cat["blendedness"] >= lo) & (cat["blendedness"] < hi)
        sel &= np.isfinite(cat["cons_tot"]) & (cat["cons_tot"] > 0)
        tot2, noise = cat["cons_tot"][sel] ** 2, cat["cons_err"][sel]
        deb, wing = cat["deblend_err"][sel], np.abs(cat["wing"][sel])
        med = [np.median(v) if v.size else np.nan for v in (deb**2 / tot2, wing**2 / tot2)]
        med += [np.median(v) if v.size else np.nan for v in (deb / noise, wing / noise)]
        print(
            f"{'':<12} {label:<11} {sel.sum():>5} {med[0]:>12.2f} {med[1]:>13.2f}"
            f" {med[2]:>10.2f} {med[3]:>11.2f}"
        )
    print(f"{'wing':<12} {'blendedness':<11} {'n':>5} {'lost %':>7} {'est/true':>9}  (median)")
    for star, kind in ((1.0, "stars"), (0.0, "galaxies")):
        for lo, hi, label in BINS:
            sel = good & (cat["blendedness"] >= lo) & (cat["blendedness"] < hi)
            sel &= (cat["is_star"] == star) & np.isfinite(cat["wing"]) & (cat["wing_true"] > 0)
            lost = np.median(cat["wing_true"][sel] / cat["true"][sel]) if sel.any() else np.nan
            ratio = np.median(cat["wing"][sel] / cat["wing_true"][sel]) if sel.any() else np.nan
            print(f"{kind:<12} {label:<11} {sel.sum():>5} {100 * lost:>7.2f} {ratio:>9.2f}")


def table(rows: list[dict], snr_min: float, title: str) -> None:
    cat = {k: np.concatenate([r[k] for r in rows]).ravel() for k in rows[0]}
    good = cat["snr"] >= snr_min
    print(f"\n{title}: entries (source x band) with band S/N >= {snr_min:g}")
    print(f"{'pull':<15} {'blendedness':<11} {'n':>5} {'rstd':>6} {'median':>7} {'extra':>7}")
    kinds = (
        ("cons|noise", "cons", "cons_noiseless", "cons_err"),
        ("cons|true", "cons", "true", "cons_err"),
        ("model|noise", "model", "model_noiseless", "model_err"),
        ("model|true", "model", "true", "model_err"),
        ("model|noise*", "model", "model_noiseless", "cons_err"),
        ("model|true*", "model", "true", "cons_err"),
        ("cons|true+", "cons", "true", "cons_tot"),
        ("model|true+", "model", "true", "model_tot"),
        ("cons+wing|true+", "cons_wing", "true", "cons_tot"),
    )
    for name, f, t, s in (k for k in kinds if k[1] in cat and k[3] in cat):
        for lo, hi, label in BINS:
            sel = good & (cat["blendedness"] >= lo) & (cat["blendedness"] < hi)
            sel &= np.isfinite(cat[f]) & np.isfinite(cat[s]) & (cat[s] > 0)
            fv, tv, sv = cat[f][sel], cat[t][sel], cat[s][sel]
            pull = (fv - tv) / sv
            extra = extra_error(fv, cat["true"][sel], sv) if t == "true" else float("nan")
            print(
                f"{name:<15} {label:<11} {sel.sum():>5} {robust_std(pull):>6.2f} "
                f"{np.median(pull) if pull.size else np.nan:>7.2f} {extra:>7.3f}"
            )
    if "wing" in cat:
        wing_table(cat, good)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--sets", default="sim_lsst,sim_hsc,sim_single")
    ap.add_argument("--snr", type=float, default=20.0)
    ap.add_argument("--limit", type=int, default=0, help="blends per set (0: all)")
    ap.add_argument(
        "--sets-dir",
        type=Path,
        default=DEFAULT_SETS,
        help="folder of the sets made by bench/accuracy.py (every set but the shared sim_*)",
    )
    args = ap.parse_args()
    for name in args.sets.split(","):
        root = args.data if name in SHARED else args.sets_dir
        files = sorted(glob.glob(os.path.join(root, name, "*.npz")))
        if args.limit:
            files = files[: args.limit]
        run = run_single if "single" in name else run_multi
        t0 = time.perf_counter()
        rows = [run(f) for f in files]
        table(
            rows,
            args.snr,
            f"{name} ({len(files)} blends, {time.perf_counter() - t0:.0f} s wall, loaded machine)",
        )


if __name__ == "__main__":
    main()
