"""Blend, Source, Component: model rendering, loss and the analytic gradients."""

import numpy as np
import pytest

from cdeblend import Observation
from cdeblend.blend import (
    Blend,
    Component,
    PackedComponents,
    Source,
    box_intersect,
    box_union,
    overlap_slices,
)


def gaussian_psf(size, sigma):
    ax = np.arange(size) - size // 2
    g = np.exp(-0.5 * (ax[:, None] ** 2 + ax[None] ** 2) / sigma**2)
    return g / g.sum()


def small_blend(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    B, H, W = 3, 18, 16
    psfs = np.stack([gaussian_psf(11, s) for s in (1.4, 1.6, 1.9)])
    images = rng.normal(size=(B, H, W)) + 3
    variance = rng.uniform(0.5, 2.0, size=(B, H, W))
    obs = Observation(images.astype(dtype), variance.astype(dtype), psfs)
    comps = []
    for y0, x0, h, w in ((1, 2, 9, 8), (6, 5, 10, 9), (0, 0, 5, 4)):
        morph = rng.random((h, w))
        comps.append(
            Component(rng.uniform(0.5, 2, B), morph, (y0, x0, h, w), (y0 + h // 2, x0 + w // 2))
        )
    sources = [Source(comps[:2], comps[0].peak, 0), Source(comps[2:], comps[2].peak, 1)]
    return Blend(obs, sources), obs


def test_model_is_sum_of_components():
    blend, obs = small_blend()
    ref = np.zeros(obs.shape)
    for c in blend.components:
        y0, x0, h, w = c.box
        ref[:, y0 : y0 + h, x0 : x0 + w] += c.sed[:, None, None] * c.morphology
    np.testing.assert_allclose(blend.model(), ref, rtol=1e-14)
    img, box = blend.source_model(0, convolved=False)
    assert box == box_union(blend.components[0].box, blend.components[1].box)
    dense = np.zeros(obs.shape)
    dense[:, box[0] : box[0] + box[2], box[1] : box[1] + box[3]] = img
    ref0 = np.zeros(obs.shape)
    for c in blend.sources[0].components:
        y0, x0, h, w = c.box
        ref0[:, y0 : y0 + h, x0 : x0 + w] += c.model()
    np.testing.assert_allclose(dense, ref0, rtol=1e-14)


def test_loss_matches_direct_formula():
    blend, obs = small_blend()
    conv = obs.convolve(blend.model())
    ref = 0.5 * np.sum(obs.weights * (obs.images - conv) ** 2)
    assert blend.loss() == pytest.approx(ref, rel=1e-12)


def test_gradients_match_finite_differences():
    blend, obs = small_blend(seed=4)
    loss, gs, gm = blend.loss_and_gradients()
    assert loss == pytest.approx(blend.loss(), rel=1e-12)
    packed = blend.packed
    rng = np.random.default_rng(1)
    eps = 1e-6
    for k, c in enumerate(blend.components):
        for b in range(c.sed.size):
            old = c.sed[b]
            c.sed[b] = old + eps
            lp = blend.loss()
            c.sed[b] = old - eps
            lm = blend.loss()
            c.sed[b] = old
            assert (lp - lm) / (2 * eps) == pytest.approx(gs[k, b], rel=1e-6, abs=1e-6)
        h, w = c.morphology.shape
        for _ in range(6):
            y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
            old = c.morphology[y, x]
            c.morphology[y, x] = old + eps
            lp = blend.loss()
            c.morphology[y, x] = old - eps
            lm = blend.loss()
            c.morphology[y, x] = old
            fd = (lp - lm) / (2 * eps)
            assert fd == pytest.approx(gm[packed.comp[k, 4] + y * w + x], rel=1e-6, abs=1e-6)


def test_box_helpers():
    assert box_union((0, 0, 2, 2), (3, 4, 1, 1)) == (0, 0, 4, 5)
    assert box_intersect((0, 0, 2, 2), (3, 4, 1, 1))[2:] == (0, 0)
    assert box_intersect((0, 0, 5, 5), (3, -1, 4, 3)) == (3, 0, 2, 2)
    a = np.arange(25).reshape(5, 5)
    sa, sb = overlap_slices((0, 0, 5, 5), (3, -1, 4, 3))
    assert a[sa].shape == (2, 2) and sb == (slice(0, 2), slice(1, 3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("force_fft", [False, True])
def test_convolved_sources_match_source_by_source(dtype, force_fft):
    """The batched products (all sources rendered and convolved in a few Cython calls) equal
    each source's model convolved on its own, with a null source and a component replaced
    by a new array after packing (the products read the components' current arrays)."""
    from scipy.signal import convolve2d

    blend, obs = small_blend(seed=4, dtype=dtype)
    blend.sources.append(Source([], (3, 3), 2))  # a null source
    blend.pack()
    blend.components[1].morphology = blend.components[1].morphology * 2.0  # not a view
    if force_fft:
        obs.convolver.pick_mode = lambda mode, *args: "fft" if mode == "auto" else mode
    stack = blend.convolved_sources()
    assert stack.flat.dtype == dtype and len(stack) == 3
    assert tuple(stack.boxes[2]) == (3, 3, 0, 0)
    ry, rx = obs.kernel_radius
    for i in range(2):
        model = blend.sources[i].model()
        box = blend.sources[i].box
        frame = np.zeros(obs.shape)
        frame[:, box[0] : box[0] + box[2], box[1] : box[1] + box[3]] = model
        ref = np.stack(
            [
                convolve2d(frame[b], obs.diff_kernels[b].astype(np.float64), mode="same")
                for b in range(obs.shape[0])
            ]
        )
        gy0, gx0, gh, gw = stack.boxes[i]
        assert (gy0, gx0) == (max(box[0] - ry, 0), max(box[1] - rx, 0))
        got = stack.get(i)
        tol = 1e-12 if dtype == np.float64 else 2e-6
        np.testing.assert_allclose(
            got, ref[:, gy0 : gy0 + gh, gx0 : gx0 + gw], rtol=0, atol=tol * np.abs(ref).max()
        )
        # outside the grown box the true convolution is 0
        ref[:, gy0 : gy0 + gh, gx0 : gx0 + gw] = 0
        assert np.abs(ref).max() < 1e-12
        one, one_box = blend.source_model(i)
        assert one_box == tuple(int(v) for v in stack.boxes[i])
        np.testing.assert_array_equal(one, got)


def test_packed_morph_sums_match_each_components_sum():
    blend, _ = small_blend(seed=4)
    p = blend.pack()
    expect = [c.morphology.sum() for c in blend.components]
    np.testing.assert_allclose(p.morph_sums(), expect, rtol=1e-13)
    # a component whose box shrank to nothing (the fit's resize can do that) sums to 0
    comp = p.comp.copy()
    comp[1, 2:4] = 0
    comp[2, 4] = comp[1, 4]
    morph = np.concatenate([p.morph[: comp[1, 4]], p.morph[p.comp[2, 4] :]])
    shrunk = PackedComponents(p.sed, morph, comp, p.bg_thresh)
    np.testing.assert_allclose(shrunk.morph_sums(), [expect[0], 0.0, expect[2]], rtol=1e-13)


def test_adopt_makes_packed_parameters_the_blends():
    blend, _ = small_blend(seed=5)
    p = blend.pack()
    other = PackedComponents(p.sed * 2, p.morph * 3, p.comp.copy(), p.bg_thresh.copy())
    blend.adopt(other)
    assert blend.packed is other
    for k, c in enumerate(blend.components):
        assert np.shares_memory(c.sed, other.sed) and np.shares_memory(c.morphology, other.morph)
        np.testing.assert_array_equal(c.sed, 2 * p.sed[k])
        np.testing.assert_array_equal(c.morphology, 3 * p.morph_view(k))
    short = PackedComponents(p.sed[:2], p.morph, p.comp[:2], p.bg_thresh[:2])
    with pytest.raises(ValueError, match="packed holds 2 components, the blend has 3"):
        blend.adopt(short)


def test_plain_geometry_fast_path_agrees_with_the_checks():
    # _geometry_is_plain (plain comparisons for package-made blends) accepts exactly what
    # check_geometry's full checks accept for plain values, and hands anything else to them
    from cdeblend.blend import _geometry_is_plain

    blend, _ = small_blend()
    B, H, W = blend.shape
    assert _geometry_is_plain(blend.sources, B, H, W)
    blend.check_geometry()
    c = blend.sources[0].components[0]
    y0, x0, h, w = c.box
    good_box, good_peak = c.box, c.peak
    cases = [
        ("box", (y0, x0, h, W + 1)),  # outside the frame
        ("box", (-1, x0, h, w)),
        ("box", (y0, x0, 0, w)),  # empty
        ("peak", (y0 + h, x0)),  # outside its box
        ("box", (np.int64(y0), x0, h, w)),  # valid, but not a plain int: the full checks
    ]
    for attr, value in cases:
        setattr(c, attr, value)
        assert not _geometry_is_plain(blend.sources, B, H, W)
        if attr == "box" and isinstance(value[0], np.integer):
            blend.check_geometry()  # accepted by the full checks
        else:
            with pytest.raises(ValueError):
                blend.check_geometry()
        c.box, c.peak = good_box, good_peak
    c.sed = c.sed[:-1]  # wrong band count
    assert not _geometry_is_plain(blend.sources, B, H, W)
    with pytest.raises(ValueError, match="bands"):
        blend.check_geometry()


def test_all_finite_kernel_against_numpy():
    # _adam_cy.all_finite (a component's SED and morphology check) against
    # numpy.isfinite(...).all() on random values, above and below the GIL-release size,
    # with a NaN or an infinity somewhere; a component with one is refused
    from cdeblend._adam_cy import all_finite

    rng = np.random.default_rng(6)
    for n in [0, 1, 7, 300, 50_000]:
        for bad in [None, np.nan, np.inf, -np.inf]:
            a = rng.normal(size=n) * 1e300
            if bad is not None and n:
                a[rng.integers(n)] = bad
            assert all_finite(a) == bool(np.isfinite(a).all())
    morph = np.ones((3, 4))
    morph[1, 2] = np.nan
    with pytest.raises(ValueError, match="morphology has NaN"):
        Component(np.ones(2), morph, (0, 0, 3, 4), (1, 1))
    with pytest.raises(ValueError, match="sed has NaN"):
        Component(np.array([1.0, np.inf]), np.ones((3, 4)), (0, 0, 3, 4), (1, 1))
