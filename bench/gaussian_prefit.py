"""A prior on the shapes for the twin case (README.md, "What is still lost"): a Gaussian
pre-fit's fluxes as a second start, taken when the fit starved a bright source.

The free-form fit cannot tell "a compact galaxy plus a large disk 3-4 px away" from "a compact
galaxy with a broad halo plus a small bump" (``bench/truth_start.py``: both end at the same
loss). A parametric model can: one elliptical Gaussian (or two sharing a centre) per source,
fixed at its peak, cannot hold a neighbour's offset disk as well as the neighbour's own
Gaussian does. The pre-fit here:

- fits the chi^2 coadd of the bands (each band weighted by its one noise level, as the
  initializer's ``chi2_coadd``) with ``--per-source`` Gaussians per source, each convolved with
  a Gaussian of the coadd's mean PSF variance; amplitudes by NNLS at every step (variable
  projection), shapes (Cholesky factor, log diagonal) by L-BFGS-B with the analytic gradient,
  from two starts (every Gaussian 1 and 3 px; the peak's curvature and 3 times it), the lower
  objective kept;
- then, with the shapes fixed, each band's fluxes by NNLS with that band's PSF variance.

With ``gate`` < 0 every blend starts from the pre-fit fluxes. Otherwise setting B runs the
default deblender; when a source of peak S/N >= 20 ends with less than
``gate`` times its pre-fit flux, it runs again from the default initialization with each
source's SEDs scaled, band by band, to the pre-fit fluxes (fit and lost-source repair as in
``Deblender.deblend``), and that result is kept. The whole-blend prototype of the README's
study: the pre-fit runs on every blend (about 0.1-12 s a blend). The package's option,
``DeblendConfig(shape_prior=True)`` (:mod:`cdeblend.shape_prior`, whose Gaussians, objective
and SED scaling this script uses), fits only a window around each lost source and only
when the lost-source test flags one; measure it with ``bench/multi_band_paired.py --b
'{"shape_prior": true}'``.

Sets as in ``bench/multi_band_paired.py`` (``--sets-dir``, ``--data``).

Usage::

    python bench/gaussian_prefit.py --b '{"gate": 0.2}' [--sets hard_lsst_tune] [--n 150]
    python bench/gaussian_prefit.py --blends hard_lsst_heldout/blend_0275 --gate 0.2

The per-blend view prints the default fit, the prototype's second start and the package
option ``DeblendConfig(shape_prior=True)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import minimize, nnls

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402  (the sibling bench script: loading, the default folders)
from single_band_paired import paired_main  # noqa: E402
from truth_start import fit_steps  # noqa: E402  (the deblender's steps from a start)

from cdeblend import DeblendConfig, Deblender, Observation  # noqa: E402
from cdeblend.deblend_result import DeblendResult  # noqa: E402
from cdeblend.shape_prior import (  # noqa: E402  (the package's Gaussians, used here globally)
    _curvature_variance,
    _model_fluxes,
    _objective,
    _pixel_grid,
    _profiles,
    psf_variance,
    scale_seds,
)

#: a source of this peak S/N or more can trigger the second start (the lost test's level)
TRIGGER_SNR = 20.0
#: blends that took the second start, per (gate, per_source)
FIRED: dict = {}


def prefit_fluxes(
    observation: Observation, peaks: np.ndarray, per_source: int = 2, max_iter: int = 200
) -> np.ndarray:
    """(B, N) fluxes of the Gaussian pre-fit (module docstring)."""
    B, H, W = observation.shape
    grid = _pixel_grid((H, W))
    images = np.asarray(observation.images, dtype=np.float64).reshape(B, -1)
    weights = np.asarray(observation.weights, dtype=np.float64).reshape(B, -1)
    noise = np.asarray(observation.noise_rms, dtype=np.float64)
    band_w = np.where(noise > 0, 1.0 / np.maximum(noise, 1e-300) ** 2, 0.0)
    coadd = (images * band_w[:, None] * (weights > 0)).sum(axis=0)
    band_var = np.array([psf_variance(p) for p in observation.psfs])
    coadd_var = float((band_w * band_var).sum() / band_w.sum())
    n = len(peaks)
    centres = np.repeat(np.asarray(peaks, dtype=np.float64), per_source, axis=0)
    outer = np.tile(np.log(3.0) * np.arange(per_source), n)
    flat = np.log(1.0) if per_source > 1 else np.log(1.5)
    curv = np.repeat(
        [0.5 * np.log(_curvature_variance(coadd.reshape(H, W), p, coadd_var)) for p in peaks],
        per_source,
    )
    bounds = [(np.log(0.05), np.log(30.0)), (-20.0, 20.0), (np.log(0.05), np.log(30.0))]
    best = None
    for diag in (flat + outer, curv + outer):
        x0 = np.stack([diag, np.zeros_like(diag), diag], axis=1).ravel()
        fit = minimize(
            _objective,
            x0,
            args=(centres, grid, coadd_var, coadd, np.ones_like(coadd)),
            jac=True,
            method="L-BFGS-B",
            bounds=bounds * centres.shape[0],
            options={"maxiter": max_iter},
        )
        if best is None or fit.fun < best.fun:
            best = fit
    fluxes = np.zeros((B, centres.shape[0]))
    for b in range(B):
        sw = np.sqrt(weights[b])
        G = _profiles(best.x, centres, grid, band_var[b])[0].T * sw[:, None]
        fluxes[b], _ = nnls(G, images[b] * sw)
    return fluxes.reshape(B, n, per_source).sum(axis=2)


def deblend_from_fluxes(observation, peaks, config: DeblendConfig, fluxes) -> DeblendResult:
    """``Deblender.deblend``'s steps from the default start with each source's SEDs scaled,
    band by band, to ``fluxes`` (B, N) (scale factors clipped to [1e-3, 1e3])."""

    def scaled(blend) -> None:
        scale_seds(blend, dict(enumerate(fluxes.T)), config.floor)

    # the last step's state; the bench reads the conserved children only (no timings)
    *_, (blend, info, *fitted) = fit_steps(observation, peaks, config, scaled)
    return DeblendResult(blend, *fitted, info["snr"], conserved_thresh=config.conserved_thresh)


class PrefitConfig:
    """Setting of the paired bench: ``gate`` (0: the default deblender alone; < 0: the
    pre-fit start for every blend),
    ``per_source`` Gaussians, and DeblendConfig keywords."""

    def __init__(self, gate: float = 0.0, per_source: int = 2, **kwargs) -> None:
        self.gate = float(gate)
        self.per_source = int(per_source)
        self.config = DeblendConfig(**kwargs)


def deblend(observation, peaks, setting: PrefitConfig) -> DeblendResult:
    """The default deblender, then the pre-fit start when the gate fires (docstring)."""
    if setting.gate < 0:
        # the pre-fit start for every blend
        pre = prefit_fluxes(observation, peaks, setting.per_source)
        return deblend_from_fluxes(observation, peaks, setting.config, pre)
    result = Deblender(setting.config).deblend(observation, peaks)
    if setting.gate == 0 or result.fallback:
        return result
    pre = prefit_fluxes(observation, peaks, setting.per_source)
    total = pre.sum(axis=0)
    starved = (np.asarray(result.snr) >= TRIGGER_SNR) & (total > 0)
    starved &= _model_fluxes(result.blend).sum(axis=1) < setting.gate * total
    if not starved.any():
        return result
    key = (setting.gate, setting.per_source)
    FIRED[key] = FIRED.get(key, 0) + 1
    return deblend_from_fluxes(observation, peaks, setting.config, pre)


def _conserved(data: dict, setting: PrefitConfig) -> np.ndarray:
    obs = Observation(data["images"], data["variance"], data["psfs"])
    return deblend(obs, accuracy.peaks_of(data), setting).conserved_images()


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if "--blends" in argv:
        ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        ap.add_argument("--sets-dir", default=str(accuracy.DEFAULT_SETS))
        ap.add_argument("--blends", required=True, help="set/blend_NNNN, comma separated")
        ap.add_argument("--gate", type=float, default=0.2)
        ap.add_argument("--per-source", type=int, default=2)
        args = ap.parse_args(argv)
        for name in args.blends.split(","):
            data = accuracy.load(Path(args.sets_dir) / f"{name}.npz")
            truth = data["true_flux"].sum(axis=1)
            obs = Observation(data["images"], data["variance"], data["psfs"])
            pre = prefit_fluxes(obs, accuracy.peaks_of(data), args.per_source).sum(axis=0)
            print(f"{name}  truth S/N: {' '.join(f'{v:.0f}' for v in data['snr'])}")
            print(f"  pre-fit / truth:  {' '.join(f'{v:.2f}' for v in pre / truth)}")
            for gate in (0.0, args.gate):
                cons = _conserved(data, PrefitConfig(gate, args.per_source))
                kept = cons.sum(axis=(1, 2, 3)) / truth
                print(f"  gate {gate:.2f}, kept: {' '.join(f'{v:.2f}' for v in kept)}")
            option = Deblender(DeblendConfig(shape_prior=True)).deblend(
                obs, accuracy.peaks_of(data)
            )
            kept = option.conserved_images().sum(axis=(1, 2, 3)) / truth
            print(f"  DeblendConfig(shape_prior=True), kept: {' '.join(f'{v:.2f}' for v in kept)}")
        return
    paired_main(argv, PrefitConfig, _conserved, "hard_lsst_tune,lsst_tune", __doc__.splitlines()[0])
    for (gate, per_source), count in sorted(FIRED.items()):
        print(f"second start taken (gate {gate}, {per_source} per source): {count} blends")


if __name__ == "__main__":
    main()
