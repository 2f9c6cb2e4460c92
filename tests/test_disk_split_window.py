"""Two mechanisms behind flux errors on close LSST-like pairs (issue 10), each on a bundled
blend of the harder LSST-like tuning set (``bench/morph_constraints.py``; seed 2001):

- the windowed convergence test with ``converge_window`` equal to the box-resize period
  (``resize=3``) compares the lowest loss of one resize cycle with the previous one's, and a
  resize that throws the loss back each cycle keeps that minimum flat in the middle of the
  fast descent: the fit stops there;
- the bulge/disk split makes the disk ``min(morph, f)``, flat at its maximum wherever the
  initial morphology is above ``f`` of its peak; with ``f = 0.25`` that plateau often holds a
  close neighbour's peak, and the disk takes the neighbour's light from the first iteration.
"""

from pathlib import Path

import numpy as np

from cdeblend import DeblendConfig, Deblender, Observation
from cdeblend.initialization import initialize_blend

DATA = Path(__file__).parent / "data"


def load(name: str):
    with np.load(DATA / name) as d:
        obs = Observation(d["images"], d["variance"], d["psfs"])
        peaks = np.stack([d["catalog"]["y"], d["catalog"]["x"]], axis=1).astype(np.int64)
        return obs, peaks, d["true_flux"].astype(np.float64)


def test_a_window_of_one_resize_period_stops_inside_the_descent():
    """Blend 248: a bright (S/N 1233) galaxy with four faint neighbours. With the window of
    3 iterations the fit stops after the resize cycle whose lowest loss equals the last one,
    far above where it goes on to; a window over three resize cycles does not stop there
    and the bright source's model flux is closer to the truth (0.17 off against 0.25). The
    repair of lost sources after the fit is off: it changes the loss, not the stopping."""
    obs, peaks, true_flux = load("hard_lsst_blend_2001_0248.npz")
    short = Deblender(DeblendConfig(converge_window=3, rescue_lost=False)).deblend(obs, peaks)
    long = Deblender(DeblendConfig(converge_window=10, rescue_lost=False)).deblend(obs, peaks)
    assert short.converged and long.converged
    # the short window stopped on a plateau of the cycle minima, not at the end of the descent
    h = short.loss_history
    assert np.min(h[-3:]) > 0.999 * np.min(h[:-3])
    assert short.loss > 2 * long.loss and long.iterations > 3 * short.iterations
    # over all bands (the u band, S/N 60, is within 1 % either way: 0.384 and 0.387)
    err_short = abs(short.fluxes[0].sum() / true_flux[0].sum() - 1)
    err_long = abs(long.fluxes[0].sum() / true_flux[0].sum() - 1)
    assert err_long < 0.8 * err_short, (err_short, err_long)


def plateau_holds_a_peak(blend, peaks: np.ndarray) -> int:
    """Number of disk components whose plateau (the pixels at the disk's maximum) holds
    another source's peak."""
    n = 0
    for src in blend.sources:
        for comp in src.components:
            if comp.kind != "disk":
                continue
            y0, x0, h, w = comp.box
            plateau = comp.morphology >= comp.morphology.max()
            for py, px in peaks.tolist():
                if (py, px) == tuple(src.peak):
                    continue
                if 0 <= py - y0 < h and 0 <= px - x0 < w and plateau[py - y0, px - x0]:
                    n += 1
    return n


def test_a_disk_split_at_half_the_peak_leaves_the_neighbours_peaks_alone():
    """Blend 102: two bright galaxies (S/N 336 and 713) among eight faint peaks. Split at a
    quarter of the peak, the bright galaxies' disks start flat over neighbours' peaks and the
    brighter galaxy ends with about half its flux (the rest in its neighbours); split at half
    the peak no plateau holds a peak and the ten sources' conserved fluxes are closer to the
    truth in every band."""
    obs, peaks, true_flux = load("hard_lsst_blend_2001_0102.npz")
    # the repair of lost sources after the fit is off: it mends part of the quarter split's
    # damage afterwards, and this test is about the split
    quarter = DeblendConfig(disk_percentile=25.0, rescue_lost=False)
    half = DeblendConfig(disk_percentile=50.0, rescue_lost=False)
    covered_quarter = plateau_holds_a_peak(initialize_blend(obs, peaks, quarter)[0], peaks)
    covered_half = plateau_holds_a_peak(initialize_blend(obs, peaks, half)[0], peaks)
    assert covered_half < covered_quarter / 2, (covered_quarter, covered_half)
    err = {}
    for name, cfg in (("quarter", quarter), ("half", half)):
        flux = Deblender(cfg).deblend(obs, peaks).conserved_fluxes
        # the conserved children sum to the image: only the split among them differs
        err[name] = np.abs(flux - true_flux).sum(axis=0)
    assert np.all(err["half"] < 0.6 * err["quarter"]), err
