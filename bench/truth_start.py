"""A failing blend's fit against the truth: is the wrong split a worse optimum the fit got
stuck in, or as good a fit of the data as the right one?

For each blend: the loss of the simulated scene itself (every source, detected or not;
``0.5 sum((image - truth)^2 / variance)``, about N/2 for N pixel values, with a standard
deviation of sqrt(N/2) over noise realisations), the loss and kept fractions of
``Deblender(config).deblend``, and the same fit started from the truth: each detected
source's initial morphology is its true image summed over the bands (peak-normalised at its
catalog peak, on the whole frame) and its SED the true flux per band. That start then goes
through the deblender's fit and lost-source repair unchanged (``fit_blend``,
``rescue_lost_sources``); both starts are shown after the fit and after the repair.
When the truth start ends at a clearly lower loss, the default
start is stuck in a worse optimum; when both end within about sqrt(N/2), the data do not
choose between the two splits and only a prior on the shapes can.

The blends are read from ``--sets-dir`` (default ``../simsets``, made by
``bench/accuracy.py``). The default list is the two lost sources of README.md, "What is
still lost: a large galaxy under a compact twin".

Usage::

    python bench/truth_start.py [--sets-dir DIR] [--blends set/blend_0275,...] [--config JSON]
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402  (the sibling bench script: loading, the default folders)

from cdeblend import DeblendConfig, Observation  # noqa: E402
from cdeblend.blend import Component  # noqa: E402
from cdeblend.deblend_result import DeblendResult  # noqa: E402
from cdeblend.fit import fit_blend  # noqa: E402
from cdeblend.initialization import initialize_blend  # noqa: E402
from cdeblend.lost import rescue_lost_sources  # noqa: E402

TWINS = "hard_lsst_heldout/blend_0275,hard_lsst_check/blend_0036"


def truth_loss(data: dict) -> float:
    """The loss of the simulated scene (detected and undetected sources)."""
    scene = data["true_images"].sum(axis=0)
    if data["undetected_true_images"].size:
        scene = scene + data["undetected_true_images"].sum(axis=0)
    return 0.5 * float(np.sum((data["images"] - scene) ** 2 / data["variance"]))


def fit_steps(obs: Observation, peaks: np.ndarray, config: DeblendConfig, start=None):
    """The deblender's steps (initialization, fit, lost-source repair), with ``start(blend)``
    changing the initial blend when given. Yields ``(blend, info, loss, history,
    iterations, converged)`` after the fit, and again after a kept repair; the blend is
    changed in place between the two."""
    blend, info = initialize_blend(obs, peaks, config)
    if start is not None:
        start(blend)
        blend.pack()
    loss, history, it, converged = fit_blend(blend, config, {})
    yield blend, info, loss, history, it, converged
    if config.rescue_lost and rescue_lost_sources(blend, info["snr"], config):
        yield blend, info, blend.loss(), history, it, converged


def _truth_start(blend, data: dict, bg_thresh) -> None:
    """Each detected source as one component: its true image summed over the bands
    (peak-normalised at its catalog peak, on the whole frame) times its true flux per band."""
    _, H, W = blend.shape
    for i, src in enumerate(blend.sources):
        morph = np.maximum(data["true_images"][i].sum(axis=0).astype(np.float64), 0.0)
        at_peak = morph[tuple(src.peak)]
        morph /= at_peak if at_peak > 0 else morph.max()
        sed = data["true_images"][i].sum(axis=(1, 2)) / morph.sum()
        src.components = [Component(sed, morph, (0, 0, H, W), src.peak, bg_thresh)]


def fit(obs: Observation, peaks: np.ndarray, config: DeblendConfig, data: dict | None):
    """The loss and the kept fractions after the fit and after the repair, from the
    deblender's own start, or from the truth when ``data`` is given (module docstring)."""
    start = None
    if data is not None:
        start = functools.partial(_truth_start, data=data, bg_thresh=config.bg_thresh)
    return [
        (loss, _conserved_fluxes(blend, info, loss, config))
        for blend, info, loss, *_ in fit_steps(obs, peaks, config, start)
    ]


def _conserved_fluxes(blend, info: dict, loss: float, config: DeblendConfig) -> np.ndarray:
    """(N,) each source's conserved flux (all bands) for the blend as it is now."""
    result = DeblendResult(
        blend, loss, np.zeros(0), 0, True, info["snr"], conserved_thresh=config.conserved_thresh
    )
    return result.conserved_images().sum(axis=(1, 2, 3))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets-dir", default=str(accuracy.DEFAULT_SETS), help="the made sets")
    ap.add_argument("--blends", default=TWINS, help="set/blend_NNNN, comma separated")
    ap.add_argument("--config", default="{}", help="DeblendConfig keywords (JSON)")
    args = ap.parse_args(argv)
    config = DeblendConfig(**json.loads(args.config))
    print(f"config: DeblendConfig(**{json.loads(args.config)})")
    for name in args.blends.split(","):
        data = accuracy.load(Path(args.sets_dir) / f"{name}.npz")
        obs = Observation(data["images"], data["variance"], data["psfs"])
        peaks = accuracy.peaks_of(data)
        half = data["images"].size / 2
        truth = data["true_flux"].sum(axis=1)
        print(f"\n{name}: N/2 = {half:.0f}, sqrt(N/2) = {np.sqrt(half):.0f}")
        print(f"  {'':22s} {'loss':>9s}  kept fraction of the true flux per source")
        print(f"  {'the simulated scene':22s} {truth_loss(data):9.1f}")
        for label, given in (("default start", None), ("truth start", data)):
            # one row after the fit, a second when a repair was kept
            steps = fit(obs, peaks, config, given)
            for step, (loss, fluxes) in zip(("fit", "+ repair"), steps, strict=False):
                fractions = " ".join(f"{v:.2f}" for v in fluxes / truth)
                print(f"  {label + ', ' + step:22s} {loss:9.1f}  {fractions}")
        print(f"  truth S/N: {' '.join(f'{v:.0f}' for v in data['snr'])}")


if __name__ == "__main__":
    main()
