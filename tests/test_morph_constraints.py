"""The morphology constraints of DeblendConfig against plain numpy references: the partial
symmetry prox (_symmetry_cy, and its use in the fit kernel) and the minimum gradient of the
radial monotonicity."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_adam import B1, B2, EPS, FLOOR, random_components, reference_copies, reference_step
from test_monotonic_radial import reference_project

from cdeblend import DeblendConfig, Observation, _adam_cy, _symmetry_cy
from cdeblend.blend import Blend, Component, PackedComponents, RadialMonotonicity, Source
from cdeblend.fit import Fitter
from cdeblend.initialization import initialize_blend, model_psf_array


def reference_symmetrize(m, cy, cx, strength):
    """Pixel by pixel: q with its mirror 2c - q in the array moves ``strength`` of the way to
    min(m[q], m[2c - q]); the others stay (c: a pixel or half-pixel position)."""
    out = m.copy()
    h, w = m.shape
    for y in range(h):
        for x in range(w):
            my, mx = int(2 * cy) - y, int(2 * cx) - x
            if 0 <= my < h and 0 <= mx < w:
                lo = min(m[y, x], m[my, mx])
                out[y, x] = m[y, x] + strength * (lo - m[y, x])
    return out


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 9),
    st.integers(1, 9),
    st.integers(0, 2**32 - 1),
    st.sampled_from([0.0, 0.3, 1.0, None]),
)
def test_symmetrize_matches_reference(h, w, seed, strength):
    rng = np.random.default_rng(seed)
    m = rng.random((h, w)) - 0.2  # negative values too: the prox runs before the threshold
    # pixel centres and half-pixel positions
    py, px = int(rng.integers(0, 2 * h - 1)) / 2, int(rng.integers(0, 2 * w - 1)) / 2
    s = float(rng.random()) if strength is None else strength
    ref = reference_symmetrize(m, py, px, s)
    _symmetry_cy.symmetrize(m, py, px, s)
    np.testing.assert_allclose(m, ref, rtol=0, atol=1e-15)


def test_full_strength_is_the_symmetric_minimum():
    """Hand-computed: about (1, 1) of a 3 x 4 array the last column has no mirror."""
    m = np.arange(12.0).reshape(3, 4)
    _symmetry_cy.symmetrize(m, 1, 1, 1.0)
    expected = np.array([[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 4.0, 7.0], [2.0, 1.0, 0.0, 11.0]])
    np.testing.assert_array_equal(m, expected)
    # a symmetric array is a fixed point
    s = np.add.outer([1.0, 3.0, 1.0], [2.0, 5.0, 2.0])
    t = s.copy()
    _symmetry_cy.symmetrize(t, 1, 1, 1.0)
    np.testing.assert_array_equal(t, s)


def test_symmetrize_rejects_bad_arguments():
    m = np.ones((3, 3))
    with pytest.raises(ValueError, match="centre"):
        _symmetry_cy.symmetrize(m, 3, 0, 0.5)
    with pytest.raises(ValueError, match="multiple of 0.5"):
        _symmetry_cy.symmetrize(m, 1.2, 0, 0.5)
    with pytest.raises(ValueError, match="strength"):
        _symmetry_cy.symmetrize(m, 1, 1, 1.5)
    with pytest.raises(ValueError, match="symmetry"):
        DeblendConfig(symmetry=-0.1)
    with pytest.raises(ValueError, match="symmetry"):
        DeblendConfig(symmetry=float("nan"))


def _random_rows(rng, K):
    """(K, 3) symmetry rows: strengths (some 0) and doubled-centre shifts in {-1, 0, 1}."""
    rows = np.zeros((K, 3))
    rows[:, 0] = rng.random(K) * (rng.random(K) > 0.3)
    rows[:, 1:] = rng.integers(-1, 2, (K, 2))
    return rows


def _step_args(rng, B, H, W, K):
    comps = random_components(rng, B, H, W, K)
    packed = PackedComponents.from_components(comps, B)
    state = [np.zeros_like(packed.sed) for _ in range(3)]
    mstate = [np.zeros_like(packed.morph) for _ in range(3)]
    return comps, packed, state, mstate


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0, 1]))
def test_adam_prox_step_with_symmetry_matches_reference(seed, variant):
    """Monotonicity, then the partial symmetry with each component's strength, then the
    threshold: the kernel against the numpy reference step."""
    rng = np.random.default_rng(seed)
    B, H, W, K = 3, 12, 10, int(rng.integers(1, 5))
    comps, packed, (sm, sv, svh), (mm, mv, mvh) = _step_args(rng, B, H, W, K)
    ref_comps, state = reference_copies(comps, B)
    strength = _random_rows(rng, K)
    bg_rms = rng.uniform(0.05, 0.5, B)
    op = RadialMonotonicity(half=20)
    bounds = np.zeros((K, 4), dtype=np.int64)
    for it in range(3):
        grad = rng.normal(size=(B, H, W))
        ref = reference_step(
            grad, ref_comps, state, bg_rms, bg_rms / 10, 0.03, 0.01, it, variant, strength
        )
        _adam_cy.adam_prox_step(
            grad, packed.sed, sm, sv, svh, packed.morph, mm, mv, mvh, packed.comp,
            packed.bg_thresh, bg_rms, bg_rms / 10, 0.03, 0.01, it, B1, B2, EPS, FLOOR,
            variant, True, op.dy, op.dx, op.weights, True, bounds, strength,
        )  # fmt: skip
        for k, (s_new, m_new, bnd) in enumerate(ref):
            np.testing.assert_allclose(comps[k].sed, s_new, rtol=1e-12, atol=1e-300)
            np.testing.assert_allclose(comps[k].morphology, m_new, rtol=1e-10, atol=1e-14)
            assert tuple(bounds[k]) == bnd
            ref_comps[k].sed, ref_comps[k].morphology = s_new, m_new


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_fit_kernel_symmetry_equals_adam_prox_step(seed):
    """The bound kernel with set_symmetry gives adam_prox_step's result bit for bit."""
    rng = np.random.default_rng(seed)
    B, H, W, K = 2, 11, 13, int(rng.integers(1, 5))
    comps, a, (sm, sv, svh), (mm, mv, mvh) = _step_args(rng, B, H, W, K)
    sed_b, sed_state = a.sed.copy(), np.zeros((3,) + a.sed.shape)
    morph_all = np.zeros((4, a.morph.size))
    morph_all[0] = a.morph
    strength = _random_rows(rng, K)
    bg_rms = rng.uniform(0.05, 0.5, B)
    op = RadialMonotonicity(half=20)
    b_ref, b_new = (np.zeros((K, 4), dtype=np.int64) for _ in range(2))
    kern = _adam_cy.FitKernel(bg_rms, bg_rms / 10, 0.03, 0.01, B1, B2, EPS, FLOOR, 0)
    kern.bind(sed_b, sed_state, morph_all, a.comp, a.bg_thresh, op.table, b_new)
    with pytest.raises(ValueError, match="one \\(strength, dy, dx\\) row per component"):
        kern.set_symmetry(np.zeros((K + 1, 3)))
    with pytest.raises(ValueError, match="shifts"):
        kern.set_symmetry(np.full((K, 3), 0.5))
    kern.set_symmetry(strength)
    # re-binding another table drops strengths of the wrong length (no stale reads)
    one = PackedComponents.from_components(comps[:1], B)
    if K > 1:
        kern.bind(one.sed, np.zeros((3, 1, B)), np.zeros((4, one.morph.size)), one.comp,
                  one.bg_thresh, op.table, np.zeros((1, 4), dtype=np.int64))  # fmt: skip
        kern.bind(sed_b, sed_state, morph_all, a.comp, a.bg_thresh, op.table, b_new)
        kern.step(np.zeros((B, H, W)), 0, False)  # runs without symmetry, no error
        sed_b[...] = a.sed
        morph_all[0] = a.morph
        sed_state[...] = 0
        kern.set_symmetry(strength)
    for it in range(3):
        grad = rng.normal(size=(B, H, W))
        _adam_cy.adam_prox_step(
            grad, a.sed, sm, sv, svh, a.morph, mm, mv, mvh, a.comp, a.bg_thresh, bg_rms,
            bg_rms / 10, 0.03, 0.01, it, B1, B2, EPS, FLOOR, 0, True, op.dy, op.dx,
            op.weights, True, b_ref, strength,
        )  # fmt: skip
        kern.step(grad, it, True)
        assert np.array_equal(sed_b, a.sed) and np.array_equal(morph_all[0], a.morph)
        assert np.array_equal(b_new, b_ref)


def _fitter(symmetry):
    """A fitter of two sources: a big box at (10, 10) holding the other's peak (10, 16)."""
    rng = np.random.default_rng(3)
    B, H, W = 2, 30, 40
    psf = np.zeros((B, 5, 5))
    psf[:, 2, 2] = 1.0
    obs = Observation(rng.normal(size=(B, H, W)), np.ones((B, H, W)), psf, model_psf_sigma=None)
    sources = []
    for peak, box in (((10, 10), (0, 0, 21, 21)), ((10, 16), (6, 12, 9, 9))):
        m = np.ones(box[2:])
        sources.append(Source([Component(np.ones(B), m, box, peak, 1.0)], peak, len(sources)))
    return Fitter(Blend(obs, sources), DeblendConfig(symmetry=symmetry))


def test_fitter_gives_every_component_the_strength():
    f = _fitter(0.7)
    np.testing.assert_array_equal(f._symmetry(f.packed.comp), [[0.7, 0, 0], [0.7, 0, 0]])
    assert _fitter(0.0)._symmetry(f.packed.comp) is None
    f.run(3)  # the kernel accepts them (one per component)


def reference_project_gradient(m, cy, cx, g):
    """test_monotonic_radial.reference_project with the minimum gradient ``g``."""
    return reference_project(m, cy, cx, g)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_min_gradient_projection_matches_reference(h, w, seed):
    """RadialMonotonicity(min_gradient) and the fit kernel's table (a zero-gradient step:
    the prox chain alone) against the numpy reference."""
    rng = np.random.default_rng(seed)
    g = float(rng.choice([0.0, 0.1, rng.uniform(0, 0.9)]))
    m = rng.random((h, w))
    py, px = int(rng.integers(0, h)), int(rng.integers(0, w))
    op = RadialMonotonicity(half=12, min_gradient=g)
    ref = reference_project_gradient(m, py, px, g)
    np.testing.assert_allclose(op(m, (py, px)), ref, rtol=1e-12, atol=1e-15)
    # the fit's step with a zero gradient and no threshold: project, clip, peak-normalise
    packed = PackedComponents.from_components(
        [Component(np.ones(1), m / m.max(), (0, 0, h, w), (py, px), None)], 1
    )
    sed_state = np.zeros((3, 1, 1))
    morph_all = np.zeros((4, packed.morph.size))
    morph_all[0] = packed.morph
    _adam_cy.fit_step(
        np.zeros((1, h, w)), packed.sed, sed_state, morph_all, packed.comp, packed.bg_thresh,
        np.ones(1), np.ones(1) / 10, 0.01, 0.01, 1, B1, B2, EPS, FLOOR, 0, op.table, False,
        np.zeros((1, 4), dtype=np.int64),
    )  # fmt: skip
    expected = reference_project_gradient(m / m.max(), py, px, g)
    expected = np.maximum(expected, 0)
    expected /= expected.max()
    np.testing.assert_allclose(morph_all[0].reshape(h, w), expected, rtol=1e-10, atol=1e-14)


def test_min_gradient_rejects_bad_values():
    with pytest.raises(ValueError, match="min_gradient"):
        RadialMonotonicity(4, min_gradient=1.0)
    with pytest.raises(ValueError, match="min_gradient"):
        DeblendConfig(min_gradient=-0.5)


def _blend_8():
    with np.load(Path(__file__).parent / "data" / "sim_lsst_blend_0008.npz") as d:
        obs = Observation(d["images"], d["variance"], d["psfs"])
        peaks = np.stack([d["catalog"]["y"], d["catalog"]["x"]], axis=1)
    return obs, peaks


@pytest.mark.parametrize("shape", ["initial", "psf"])
def test_rescue_dead_level_restarts_the_weak_sources(shape):
    """Sources that the joint SED fit leaves below ``rescue_dead_level`` noise RMS at the peak
    in every band restart as one component at most ``rescue_init_level`` noise RMS; the
    others keep their components."""
    obs, peaks = _blend_8()
    noise = obs.noise_rms
    plain, _ = initialize_blend(obs, peaks, DeblendConfig(rescue_faint=False))
    level = 5.0
    weak = [max(np.max(c.sed / noise) for c in s.components) < level for s in plain.sources]
    assert any(weak) and not all(weak)
    config = DeblendConfig(rescue_dead_level=level, rescue_shape=shape)
    blend, _ = initialize_blend(obs, peaks, config)
    for s, p, w in zip(blend.sources, plain.sources, weak, strict=True):
        if w:
            (c,) = s.components
            assert np.max(c.sed / noise) <= config.rescue_init_level * (1 + 1e-12)
            if shape == "psf":  # the model PSF's shape, peak-normalised, on the peak
                P = model_psf_array(obs)
                assert c.morphology[c.local_peak] == 1.0
                if c.morphology.shape == P.shape:  # not cut by the image edge
                    np.testing.assert_allclose(c.morphology, P / P.max(), rtol=1e-12)
        else:
            assert len(s.components) == len(p.components)


def test_reference_keeps_the_constraints_off():
    c = DeblendConfig.reference()
    assert (c.symmetry, c.rescue_dead_level, c.min_gradient) == (0.0, None, 0.0)
