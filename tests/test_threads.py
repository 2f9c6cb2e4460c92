"""One fit on several threads: the same arrays as on one, and how the count is chosen."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
from types import SimpleNamespace

import numpy as np
import pytest

import cdeblend
from cdeblend import _adam_cy, _threads
from cdeblend.catalog import executors


def gaussian_scene(bands: int, size: int, n: int, seed: int) -> tuple:
    """A ``bands`` x ``size`` x ``size`` blend of ``n`` Gaussian galaxies with random SEDs,
    per-band Gaussian PSFs of different widths, unit-variance noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    images = rng.normal(size=(bands, size, size))
    peaks = rng.integers(8, size - 8, size=(n, 2))
    for py, px in peaks:
        sed = rng.uniform(5, 40, bands)
        r2 = ((y - py) ** 2 + (x - px) ** 2) / rng.uniform(2, 6) ** 2
        images += sed[:, None, None] * np.exp(-0.5 * r2)[None]
    py, px = np.mgrid[-10:11, -10:11]
    sig = np.linspace(1.2, 2.0, bands)[:, None, None]
    psfs = np.exp(-0.5 * (py**2 + px**2)[None] / sig**2)
    psfs /= psfs.sum(axis=(1, 2), keepdims=True)
    return images, np.ones_like(images), psfs, peaks


class RecordingKernel(_adam_cy.FitKernel):
    """The fit kernel, remembering its instances (to read how many threads they ran on)."""

    made: list = []

    def __init__(self, *args):
        super().__init__(*args)
        RecordingKernel.made.append(self)


def fit(scene, dtype, threads, monkeypatch):
    RecordingKernel.made = []
    monkeypatch.setattr(_adam_cy, "FitKernel", RecordingKernel)
    images, variance, psfs, peaks = scene
    obs = cdeblend.Observation(images, variance, psfs, dtype=dtype)
    with _threads.thread_limit(threads):
        res = cdeblend.Deblender(cdeblend.DeblendConfig(max_iter=25)).deblend(obs, peaks)
    used = max(k.threads for k in RecordingKernel.made)
    return res, used


@pytest.mark.skipif(not _adam_cy.OPENMP, reason="the kernel was built without OpenMP")
# an odd band count leaves one band on its own: its transforms are shared by the threads
# (split) or run on one of them
@pytest.mark.parametrize(("bands", "split"), [(1, True), (4, True), (5, True), (5, False)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_two_threads_give_the_arrays_of_one(bands, split, dtype, monkeypatch):
    scene = gaussian_scene(bands, 130, 8, seed=bands)
    _threads.set_num_threads(2)
    # any blend goes parallel; the split from the smallest grid on, or never
    old = _adam_cy.parallel_thresholds(1.0, 1.0 if split else 1e30)
    try:
        one, used1 = fit(scene, dtype, 1, monkeypatch)
        two, used2 = fit(scene, dtype, 2, monkeypatch)
    finally:
        _threads.set_num_threads(None)
        _adam_cy.parallel_thresholds(*old)
    assert (used1, used2) == (1, 2)
    assert one.iterations == two.iterations
    assert one.loss == two.loss
    np.testing.assert_array_equal(one.blend.model(), two.blend.model())
    np.testing.assert_array_equal(one.conserved_fluxes, two.conserved_fluxes)
    for a, b in zip(one.blend.components, two.blend.components, strict=True):
        np.testing.assert_array_equal(a.sed, b.sed)
        np.testing.assert_array_equal(a.morphology, b.morphology)
        assert a.box == b.box


def test_a_small_blend_stays_on_one_thread(monkeypatch):
    scene = gaussian_scene(2, 40, 3, seed=1)
    _threads.set_num_threads(2)
    try:
        _, used = fit(scene, np.float32, 2, monkeypatch)
    finally:
        _threads.set_num_threads(None)
    assert used == 1


def test_thread_count_precedence(monkeypatch):
    monkeypatch.delenv("CDEBLEND_NUM_THREADS", raising=False)
    assert _threads.num_threads() == _threads.available_cores()
    monkeypatch.setenv("CDEBLEND_NUM_THREADS", "3")
    assert _threads.num_threads() == 3
    _threads.set_num_threads(5)
    try:
        assert _threads.num_threads() == 5
        with _threads.thread_limit(2) as n:
            assert n == 2 and _threads.num_threads() == 2
            with _threads.thread_limit(4) as inner:  # a limit never raises the count
                assert inner == 2
            assert _threads.num_threads() == 2
        assert _threads.num_threads() == 5
    finally:
        _threads.set_num_threads(None)
    assert _threads.num_threads() == 3


def test_a_limit_is_per_thread():
    with _threads.thread_limit(1), cf.ThreadPoolExecutor(1) as pool:
        other = pool.submit(_threads.num_threads).result()
        assert _threads.num_threads() == 1
    assert other == _threads.num_threads()


@pytest.mark.parametrize("bad", ["0", "-2", "two"])
def test_a_bad_environment_variable_is_named(bad, monkeypatch):
    monkeypatch.setenv("CDEBLEND_NUM_THREADS", bad)
    with pytest.raises(ValueError, match="CDEBLEND_NUM_THREADS"):
        _threads.num_threads()


def _child_threads() -> int:
    return _threads.num_threads()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_starts_at_one_thread():
    _threads.set_num_threads(2)
    try:
        with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("fork")) as pool:
            assert pool.submit(_child_threads).result() == 1
        assert _threads.num_threads() == 2
    finally:
        _threads.set_num_threads(None)


def test_bad_counts_are_rejected():
    with pytest.raises(ValueError, match="n must be >= 1"):
        _threads.set_num_threads(0)
    with pytest.raises(TypeError, match="n must be an int"):
        _threads.set_num_threads(2.0)
    with pytest.raises(TypeError, match="n must be an int"), _threads.thread_limit(True):
        pass


def tasks(n: int) -> list:
    return [SimpleNamespace(index=i, box=(0, 0, 4, 4), peaks=[(1, 1)]) for i in range(n)]


def test_pool_workers_share_the_cores(monkeypatch):
    monkeypatch.setattr(executors, "usable_cpus", lambda: 4)
    seen = []

    def task(t):
        seen.append(_threads.num_threads())
        return t.index

    _threads.set_num_threads(4)
    try:
        assert executors.run_tasks(tasks(3), task, "threads", 2, False) == [0, 1, 2]
        assert seen == [2, 2, 2]
        seen.clear()
        executors.run_tasks(tasks(1), task, "threads", None, False)  # one worker per core
        assert seen == [1]
        seen.clear()
        with cf.ThreadPoolExecutor(4) as pool:
            executors.run_tasks(tasks(1), task, pool, None, False)
        assert seen == [1]
        seen.clear()
        executors.run_tasks(tasks(1), task, "serial", None, False)  # one parent at a time: all
        assert seen == [4]
    finally:
        _threads.set_num_threads(None)


@pytest.mark.parametrize(("bands", "size"), [(1, 60), (3, 70), (5, 130)])
def test_the_half_width_lone_band_changes_a_fit_by_round_off_only(bands, size):
    """An odd band count's last band through the half-width transform or the full one: in
    double precision the same fit to round-off (same iterations, loss and models to ~1e-10;
    in single precision round-off can tip the fit's discrete decisions)."""
    images, variance, psfs, peaks = gaussian_scene(bands, size, 5, seed=bands + 10)
    out = []
    old = _adam_cy.half_band()
    try:
        for half in (False, True):
            _adam_cy.half_band(half)
            obs = cdeblend.Observation(images, variance, psfs, dtype=np.float64)
            config = cdeblend.DeblendConfig(max_iter=40)
            out.append(cdeblend.Deblender(config).deblend(obs, peaks))
    finally:
        _adam_cy.half_band(old)
    full, half = out
    assert full.iterations == half.iterations
    np.testing.assert_allclose(half.loss_history, full.loss_history, rtol=1e-10)
    scale = np.abs(full.blend.model()).max()
    np.testing.assert_allclose(half.blend.model(), full.blend.model(), atol=1e-9 * scale)
