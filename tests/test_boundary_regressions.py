"""Regression tests of the boundary bugs the fuzz tests found (one hand-made case each)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cdeblend import DeblendConfig, Deblender, FlatStack, Observation, apportion_flux
from cdeblend.catalog.executors import _largest_first


def _gauss(size: int, sigma: float) -> np.ndarray:
    u = np.arange(size) - size // 2
    g = np.exp(-0.5 * (u[:, None] ** 2 + u[None, :] ** 2) / sigma**2)
    return g / g.sum()


def test_read_only_images_are_deblended():
    # Observation.loss handed the (read-only) images to a kernel as a writable buffer
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:15, :16]
    blob = 50 * np.exp(-0.5 * ((yy - 7) ** 2 + (xx - 8) ** 2) / 2.0**2)
    images = np.stack([blob, 2 * blob]) + rng.normal(size=(2, 15, 16))
    variance = np.ones_like(images)
    for a in (images, variance):
        a.flags.writeable = False
    psfs = np.stack([_gauss(7, 1.5)] * 2)
    obs = Observation(images, variance, psfs)
    res = Deblender(DeblendConfig(max_iter=10)).deblend(obs, [[7, 8]])
    assert np.isfinite(res.loss) and res.loss < 0.5 * np.sum(images**2)
    assert not images.flags.writeable  # the caller's array is untouched
    # the same numbers as with writable inputs
    ref = Deblender(DeblendConfig(max_iter=10)).deblend(
        Observation(images.copy(), variance.copy(), psfs), [[7, 8]]
    )
    assert res.loss == ref.loss


def test_flatstack_accepts_empty_boxes():
    # a null source has a (B, 0, 0) model: reshape(-1, 0, 0) raised an unclear ValueError
    a = np.ones((2, 3, 2))
    stack = FlatStack.from_arrays([np.zeros((2, 0, 0)), a], [(1, 1, 0, 0), (0, 0, 3, 2)])
    assert stack.get(0).shape == (2, 0, 0)
    np.testing.assert_array_equal(stack.get(1), a)
    image = np.arange(2 * 4 * 4, dtype=np.float64).reshape(2, 4, 4)
    cons, _ = apportion_flux(image, stack)
    assert cons.get(0).size == 0
    np.testing.assert_array_equal(cons.get(1), image[:, :3, :2])  # sole claimant
    with pytest.raises(ValueError, match="array 0 has shape"):
        FlatStack.from_arrays([np.zeros((2, 1, 0))], [(0, 0, 0, 0)])


def test_apportion_flux_validates_the_image():
    stack = FlatStack.from_arrays([np.ones((1, 2, 2))], [(0, 0, 2, 2)])
    with pytest.raises(TypeError, match="image must be a real numeric array"):
        apportion_flux(np.ones((2, 2), dtype=bool), stack)
    bad = np.ones((2, 2))
    bad[1, 1] = np.nan
    # a NaN pixel has no data: it gives no flux (conserved 0), inside the footprint or not
    cons, _ = apportion_flux(bad, stack)
    np.testing.assert_array_equal(cons.get(0)[0], [[1, 1], [1, 0]])
    footprint = np.ones((2, 2), dtype=bool)
    footprint[1, 1] = False
    cons, _ = apportion_flux(bad, stack, footprint)
    np.testing.assert_array_equal(cons.get(0)[0], [[1, 1], [1, 0]])
    with pytest.raises(TypeError, match="templates must be a FlatStack"):
        apportion_flux(bad, [np.ones((2, 2))])
    # byte-swapped, non-contiguous images give the same numbers
    img = np.arange(4.0).reshape(2, 2)
    swapped = np.zeros((4, 4), dtype=">f8")[::2, ::2]
    swapped[...] = img
    np.testing.assert_array_equal(
        apportion_flux(swapped, stack)[0].flat, apportion_flux(img, stack)[0].flat
    )


def test_largest_parents_are_submitted_first():
    def task(h, w, n):
        return SimpleNamespace(box=(0, 0, h, w), peaks=np.zeros((n, 2)))

    tasks = [task(5, 5, 1), task(20, 20, 3), task(10, 10, 1), task(20, 20, 3), task(1, 1, 0)]
    # cost = area x peaks: 25, 1200, 100, 1200, 1 -> ties keep parent order
    assert _largest_first(tasks) == [1, 3, 2, 0, 4]


def test_a_spawned_process_pool_gives_the_serial_catalog():
    """deblend_catalog with a ProcessPoolExecutor: tasks and results survive pickling, and
    the catalog and models are identical to the serial run."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from cdeblend import deblend_catalog

    rng = np.random.default_rng(5)
    B, H, W = 2, 48, 48
    yy, xx = np.mgrid[:H, :W]
    peaks = np.array([[10, 10], [13, 12], [35, 30], [30, 36], [38, 8]])
    images = rng.normal(size=(B, H, W))
    for y, x in peaks:
        amp = rng.uniform(50, 150, B)
        images += amp[:, None, None] * np.exp(-0.5 * ((yy - y) ** 2 + (xx - x) ** 2) / 4.0)
    variance = np.ones_like(images)
    psfs = np.stack([_gauss(9, 1.6)] * B)
    kw = dict(peaks=peaks, variance=variance, psf=psfs, progress=False)
    ref, ref_md = deblend_catalog(images, executor="serial", **kw)
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
        cat, md = deblend_catalog(images, executor=pool, **kw)
    assert int(np.sum(~np.asarray(ref["is_parent"]))) >= 4  # children were made
    names = getattr(ref, "colnames", None) or ref.dtype.names  # Table or structured array
    for name in names:
        if name == "deblend_runtime":  # wall-clock time: never the same twice
            continue
        np.testing.assert_array_equal(np.asarray(cat[name]), np.asarray(ref[name]))
    assert sorted(md.blends) == sorted(ref_md.blends)
    for pid, blend in ref_md.blends.items():
        for s, t in zip(blend.sources, md.blends[pid].sources, strict=True):
            for c, d in zip(s.components, t.components, strict=True):
                np.testing.assert_array_equal(c.morphology, d.morphology)
                np.testing.assert_array_equal(c.sed, d.sed)
