"""The fit loop's windowed convergence test, run inside the kernel (FitKernel.iterate)."""

from pathlib import Path

import numpy as np
import pytest

from cdeblend import DeblendConfig, Deblender, Observation, _adam_cy

DATA = Path(__file__).parent / "data" / "hsc_cosmos_35.npz"


def settled_reference(
    history: np.ndarray, window: int, e_rel: float, last: bool = True, start: int = 0
) -> bool:
    """The windowed test in numpy: the running minimum improved by less than
    ``window * e_rel`` of itself over the last ``window`` iterations, and the last loss is
    within that of it; without ``last`` the second condition is dropped once a loss after
    ``start`` fell below the loss at ``start``."""
    h = np.asarray(history, dtype=np.float64)
    if h.size < window + 1:
        return False
    run = np.minimum.accumulate(h)
    old, new = run[-window - 1], run[-1]
    tol = window * e_rel * abs(new)
    fell = bool(np.any(h[start + 1 :] < h[start]))
    return bool(old - new < tol and (h[-1] - new < tol or (not last and fell)))


def random_history(rng: np.random.Generator) -> np.ndarray:
    """A loss history that descends, jumps and flattens, sometimes with NaN or inf."""
    n = int(rng.integers(0, 12))
    steps = rng.choice([0.0, 1e-6, 1e-3, 0.05], size=n) * rng.choice([-1.0, 1.0], size=n)
    h = 1000.0 * np.cumprod(1.0 + steps)
    if n and rng.random() < 0.1:
        h[rng.integers(n)] = rng.choice([np.nan, np.inf])
    return h


@pytest.mark.parametrize("last", [True, False])
def test_settled_matches_the_numpy_reference_on_random_histories(last):
    rng = np.random.default_rng(11)
    outcomes = set()
    for _ in range(3000):
        h = random_history(rng)
        window = int(rng.integers(1, 5))
        e_rel = float(rng.choice([0.0, 1e-6, 1e-4, 1e-3, 1e-2]))
        start = int(rng.integers(0, max(h.size, 1)))
        expect = settled_reference(h, window, e_rel, last, start)
        got = _adam_cy.settled(h, window, e_rel, last, start)
        assert got == expect, (h, window, e_rel, start)
        outcomes.add(expect)
    assert outcomes == {True, False}  # both branches were exercised


def test_without_the_last_loss_a_raised_end_still_settles():
    # the lowest loss (90) has not moved over the last 3 iterations, but the last loss
    # (95) is 5 % above it: "settled" keeps going, "lowest" stops
    h = np.array([200.0, 120.0, 90.0, 97.0, 93.0, 95.0])
    assert not _adam_cy.settled(h, 3, 1e-3)
    assert _adam_cy.settled(h, 3, 1e-3, False)
    # ... but not while no loss after the start (index 2) fell below the start's
    assert not _adam_cy.settled(h, 3, 1e-3, False, start=2)


def test_settled_rejects_a_start_outside_the_history():
    with pytest.raises(ValueError, match="start"):
        _adam_cy.settled(np.ones(5), 2, 1e-3, False, start=5)


def test_settled_rejects_an_empty_window():
    with pytest.raises(ValueError, match="window"):
        _adam_cy.settled(np.ones(5), 0, 1e-3)


def load_real():
    with np.load(DATA) as d:
        images, variance, psfs, cat = d["images"], d["variance"], d["psfs"], d["catalog"]
    return Observation(images, variance, psfs), np.stack([cat["y"], cat["x"]], axis=1)


class _CountingKernel(_adam_cy.FitKernel):
    """The fit kernel, counting its ``iterate`` calls."""

    calls = 0

    def iterate(self, *args):
        type(self).calls += 1
        return super().iterate(*args)


@pytest.mark.parametrize(
    "e_rel, convergence, window",
    [(1e-3, "settled", 3), (1e-4, "settled", 3), (1e-4, "lowest", 3), (1e-4, "lowest", 6)],
)
def test_the_fit_stops_where_the_windowed_test_first_passes(
    monkeypatch, e_rel, convergence, window
):
    """The kernel stops on the first iteration whose history passes the numpy reference
    (the test runs from ``min_iter`` iterations on), in a few calls, not one per iteration,
    and returns the best iterate it saw."""
    obs, peaks = load_real()
    config = DeblendConfig(
        e_rel=e_rel, rescue_faint=False, convergence=convergence, converge_window=window
    )
    last = convergence == "settled"
    monkeypatch.setattr(_CountingKernel, "calls", 0)
    monkeypatch.setattr(_adam_cy, "FitKernel", _CountingKernel)
    res = Deblender(config).deblend(obs, peaks)
    h, w = res.loss_history, config.converge_window
    assert res.converged and res.iterations == len(h) < config.max_iter
    tested = range(config.min_iter + 1, len(h) + 1)
    passed = [n for n in tested if settled_reference(h[:n], w, e_rel, last)]
    assert passed and passed[0] == len(h)
    # boxes are resized every 3 iterations; the kernel re-grids without returning unless a
    # new layout needs bigger buffers, so most iterations run inside one call
    assert _CountingKernel.calls < len(h) / 3
    # keep_best: the returned model is the best iterate; its loss, recomputed, is the
    # history's minimum unless the last parameters were better still
    assert res.loss <= h.min()
    recomputed = obs.loss(res.blend.model())
    assert recomputed == pytest.approx(res.loss, rel=1e-9)


def test_without_the_best_iterate_lowest_waits_for_a_settled_last_loss():
    # keep_best=False returns the last iterate, so "lowest" then stops where "settled" does
    obs, peaks = load_real()
    runs = [
        Deblender(DeblendConfig(keep_best=False, convergence=c, rescue_faint=False)).deblend(
            obs, peaks
        )
        for c in ("lowest", "settled")
    ]
    assert np.array_equal(runs[0].loss_history, runs[1].loss_history)
    h, w = runs[0].loss_history, DeblendConfig().converge_window
    assert settled_reference(h, w, DeblendConfig().e_rel, last=True)
    with pytest.raises(ValueError, match="convergence"):
        DeblendConfig(convergence="last")


def test_source_sums_equal_numpys_per_source_sums():
    # fit._source_sums (one or two values added in Python) against numpy's sum of each
    # source's slice, to the bit: random magnitudes over decades, -0.0 and 0 to 5 components
    from types import SimpleNamespace

    from cdeblend.fit import _source_sums

    rng = np.random.default_rng(4)
    for _ in range(200):
        counts = rng.integers(0, 6, rng.integers(1, 12))
        values = rng.normal(size=counts.sum()) * 10.0 ** rng.integers(-8, 8, counts.sum())
        if values.size:
            values[rng.integers(values.size)] = -0.0
        sources = [SimpleNamespace(components=[None] * int(n)) for n in counts]
        got = _source_sums(values, sources)
        starts = np.concatenate([[0], np.cumsum(counts)])
        for k, s in enumerate(sources):
            want = float(values[starts[k] : starts[k + 1]].sum())
            assert np.array_equal(got[id(s)], want) and np.signbit(got[id(s)]) == np.signbit(want)


def test_resume_from_best_puts_the_best_iterate_back_into_the_fit():
    """After a stop above the best loss, the rescue and the rest of the fit start from the
    best iterate: its loss, recomputed, is the stored best, the blend's components show it,
    the ADAM moments are kept, and the fit goes on from there."""
    from cdeblend.fit import Fitter
    from cdeblend.initialization import initialize_blend

    obs, peaks = load_real()
    config = DeblendConfig(rescue_faint=False, e_rel=0.0)  # never converges: we stop it
    blend, _ = initialize_blend(obs, peaks, config)
    fitter = Fitter(blend, config)
    for n in range(20, config.max_iter):  # stop on an iterate above the best one
        fitter.run(n)
        if fitter.final_loss() > 1.001 * fitter.best[0]:
            break
    best_loss = fitter.best[0]
    assert best_loss < fitter.final_loss()
    moments = fitter.morph_all[1:].copy()
    same_boxes = np.array_equal(fitter.best[3], fitter.packed.comp)
    fitter.resume_from_best()
    # the kernel sums the loss in its own order: round-off of ~1e-8 (float32 images)
    assert fitter.final_loss() == pytest.approx(best_loss, rel=1e-6)
    assert obs.loss(blend.model()) == pytest.approx(best_loss, rel=1e-6)
    # the moments stay (moved onto the best iterate's boxes; here they are the same boxes)
    assert same_boxes and np.array_equal(fitter.morph_all[1:], moments)
    start = fitter.it
    fitter.run(start + 6)
    assert fitter.it == start + 6 and np.all(np.isfinite(fitter.history[start:]))
    assert fitter.history[start] == pytest.approx(best_loss, rel=1e-6)
