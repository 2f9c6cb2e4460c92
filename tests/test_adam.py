"""The fused proximal ADAM kernel against a plain numpy reference of spec 3.3-3.7 and 3.9."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_monotonic_radial import reference_project

from cdeblend import _adam_cy
from cdeblend.blend import Component, PackedComponents, RadialMonotonicity

B1, B2, EPS, FLOOR = 0.9, 0.999, 1e-8, 1e-20


def random_components(rng, B, H, W, K):
    comps = []
    for _ in range(K):
        h, w = int(rng.integers(1, H + 1)), int(rng.integers(1, W + 1))
        y0, x0 = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        py, px = y0 + int(rng.integers(0, h)), x0 + int(rng.integers(0, w))
        morph = rng.random((h, w))
        morph /= morph.max()
        thresh = None if rng.random() < 0.3 else float(rng.uniform(0, 2))
        comps.append(Component(rng.uniform(0.5, 3, B), morph, (y0, x0, h, w), (py, px), thresh))
    return comps


def reference_copies(comps: list, n_bands: int) -> tuple[list, list]:
    """Copies of ``comps`` and zero ADAM moments (SED, morphology) per component, for
    :func:`reference_step`."""
    ref_comps = [
        Component(c.sed.copy(), c.morphology.copy(), c.box, c.peak, c.bg_thresh) for c in comps
    ]
    zeros = np.zeros
    state = [
        (
            {"m": zeros(n_bands), "v": zeros(n_bands), "vhat": zeros(n_bands)},
            {"m": zeros(c.box[2:]), "v": zeros(c.box[2:]), "vhat": zeros(c.box[2:])},
        )
        for c in comps
    ]
    return ref_comps, state


def reference_step(
    grad,
    comps,
    state,
    bg_rms,
    min_step,
    sed_step,
    morph_step,
    it,
    variant,
    symmetry=None,
    carry=0.0,
):
    """One iteration on plain per-component arrays; returns new seds, morphs and bounds
    (``symmetry``: each component's (strength, dy, dx) row, see
    test_morph_constraints.reference_symmetrize; ``carry``: the cap of the peak factor
    moved into the SED)."""
    out = []
    t = it + 1
    damp = 0.1 if it == 0 else 1.0
    for k, c in enumerate(comps):
        y0, x0, h, w = c.box
        s, m = c.sed.copy(), c.morphology.copy()
        G = grad[:, y0 : y0 + h, x0 : x0 + w].astype(np.float64)
        gs = (G * m).sum(axis=(1, 2))
        gm = (s[:, None, None] * G).sum(axis=0)
        new = []
        for x, g, step, st_ in (
            (s, gs, np.maximum(min_step, sed_step * s.mean()), state[k][0]),
            (m, gm, morph_step, state[k][1]),
        ):
            st_["m"] = (1 - B1) * g + B1 * st_["m"]
            st_["v"] = (1 - B2) * g * g + B2 * st_["v"]
            if variant == 0:
                st_["vhat"] = np.maximum(st_["vhat"], st_["v"])
                d = st_["m"] / np.sqrt(np.maximum(st_["vhat"], EPS))
            else:
                d = (st_["m"] / (1 - B1**t)) / (np.sqrt(st_["v"] / (1 - B2**t)) + EPS)
            new.append(x - damp * step * d)
        s_new, m_new = new
        s_new = np.where(np.isfinite(s_new) & (s_new >= FLOOR), s_new, FLOOR)
        py, px = c.local_peak
        m_new = reference_project(m_new, py, px)
        if symmetry is not None:
            from test_morph_constraints import reference_symmetrize

            strength, sy, sx = symmetry[k]
            cy, cx = py + sy / 2, px + sx / 2
            if strength > 0 and 0 <= cy <= h - 1 and 0 <= cx <= w - 1:
                m_new = reference_symmetrize(m_new, cy, cx, strength)
        if c.bg_thresh is not None:
            tb = bg_rms * c.bg_thresh
            below = np.all(s_new[:, None, None] * m_new[None] < tb[:, None, None], axis=0)
            m_new[below] = 0
        else:
            m_new[m_new < 0] = 0
        m_new[py, px] = max(m_new[py, px], FLOOR)
        peak = m_new.max()
        m_new /= peak
        if carry > 0 and peak > 1:  # a raised peak's factor moves into the SED
            s_new = s_new * min(peak, 1 + carry)
        if c.bg_thresh is None:
            bounds = (-2, -2, -2, -2)
        else:
            sig = np.any(s_new[:, None, None] * m_new[None] >= tb[:, None, None], axis=0)
            ys, xs = np.nonzero(sig)
            bounds = (ys.min(), xs.min(), ys.max(), xs.max()) if ys.size else (-1, -1, -1, -1)
        out.append((s_new, m_new, bounds))
    return out


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 4),
    st.integers(0, 2**32 - 1),
    st.sampled_from([0, 1]),
    st.sampled_from([np.float32, np.float64]),
    st.sampled_from([0.0, 0.003, 0.05, np.inf]),
)
def test_adam_prox_step_matches_reference(B, seed, variant, dtype, carry):
    rng = np.random.default_rng(seed)
    H, W, K = 12, 10, int(rng.integers(1, 5))
    comps = random_components(rng, B, H, W, K)
    packed = PackedComponents.from_components(comps, B)
    ref_comps, state = reference_copies(comps, B)
    sm, sv, svh = (np.zeros_like(packed.sed) for _ in range(3))
    mm, mv, mvh = (np.zeros_like(packed.morph) for _ in range(3))
    bg_rms = rng.uniform(0.05, 0.5, B)
    min_step = bg_rms / 10
    op = RadialMonotonicity(half=20)
    bounds = np.zeros((K, 4), dtype=np.int64)
    for it in range(3):  # a few iterations so that the moments and the /10 rule matter
        grad = rng.normal(size=(B, H, W)).astype(dtype)
        ref = reference_step(
            grad, ref_comps, state, bg_rms, min_step, 0.03, 0.01, it, variant, carry=carry
        )
        _adam_cy.adam_prox_step(
            grad,
            packed.sed,
            sm,
            sv,
            svh,
            packed.morph,
            mm,
            mv,
            mvh,
            packed.comp,
            packed.bg_thresh,
            bg_rms,
            min_step,
            0.03,
            0.01,
            it,
            B1,
            B2,
            EPS,
            FLOOR,
            variant,
            True,
            op.dy,
            op.dx,
            op.weights,
            True,
            bounds,
            carry=carry,
        )
        for k, (s_new, m_new, bnd) in enumerate(ref):
            np.testing.assert_allclose(comps[k].sed, s_new, rtol=1e-12, atol=1e-300)
            np.testing.assert_allclose(comps[k].morphology, m_new, rtol=1e-10, atol=1e-14)
            assert tuple(bounds[k]) == bnd
            ref_comps[k].sed, ref_comps[k].morphology = s_new, m_new


def test_render_and_component_gradients_match_numpy():
    rng = np.random.default_rng(1)
    B, H, W = 3, 15, 11
    comps = random_components(rng, B, H, W, 4)
    packed = PackedComponents.from_components(comps, B)
    model = np.full((B, H, W), 7.0)  # render overwrites
    _adam_cy.render(packed.sed, packed.morph, packed.comp, model)
    ref = np.zeros((B, H, W))
    for c in comps:
        y0, x0, h, w = c.box
        ref[:, y0 : y0 + h, x0 : x0 + w] += c.sed[:, None, None] * c.morphology
    np.testing.assert_allclose(model, ref, rtol=1e-14)
    grad = rng.normal(size=(B, H, W))
    gs, gm = np.zeros_like(packed.sed), np.zeros_like(packed.morph)
    _adam_cy.component_gradients(grad, packed.sed, packed.morph, packed.comp, gs, gm)
    for k, c in enumerate(comps):
        y0, x0, h, w = c.box
        G = grad[:, y0 : y0 + h, x0 : x0 + w]
        np.testing.assert_allclose(gs[k], (G * c.morphology).sum(axis=(1, 2)), rtol=1e-12)
        off = packed.comp[k, 4]
        np.testing.assert_allclose(
            gm[off : off + h * w].reshape(h, w), (c.sed[:, None, None] * G).sum(axis=0), rtol=1e-12
        )


def test_components_are_views_of_the_packed_buffers():
    rng = np.random.default_rng(2)
    comps = random_components(rng, 2, 8, 8, 3)
    packed = PackedComponents.from_components(comps, 2)
    packed.sed[1, 0] = 42.0
    packed.morph[packed.comp[2, 4]] = -5.0
    assert comps[1].sed[0] == 42.0
    assert comps[2].morphology.ravel()[0] == -5.0


def test_component_rejects_mismatched_morphology():
    with pytest.raises(ValueError, match="morphology has shape"):
        Component(np.ones(2), np.ones((3, 3)), (0, 0, 3, 4), (1, 1))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_copy_overlap_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    K = int(rng.integers(1, 5))
    old = random_components(rng, 1, 14, 12, K)
    packed = PackedComponents.from_components(old, 1)
    new_comp = np.zeros((K + 1, 7), dtype=np.int64)
    mapping = np.zeros(K + 1, dtype=np.int64)
    off = 0
    for j in range(K + 1):
        h, w = int(rng.integers(1, 15)), int(rng.integers(1, 13))
        y0, x0 = int(rng.integers(-3, 10)), int(rng.integers(-3, 9))
        new_comp[j, :5] = (y0, x0, h, w, off)
        mapping[j] = int(rng.integers(-1, K))
        off += h * w
    dst = np.zeros(off)
    _adam_cy.copy_overlap(packed.morph, packed.comp, dst, new_comp, mapping)
    for j in range(K + 1):
        y0, x0, h, w, o = new_comp[j, :5]
        ref = np.zeros((h, w))
        k = mapping[j]
        if k >= 0:
            src = old[k].morphology
            sy, sx = old[k].box[:2]
            for yy in range(h):
                for xx in range(w):
                    ys, xs = y0 + yy - sy, x0 + xx - sx
                    if 0 <= ys < src.shape[0] and 0 <= xs < src.shape[1]:
                        ref[yy, xx] = src[ys, xs]
        np.testing.assert_array_equal(dst[o : o + h * w].reshape(h, w), ref)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([np.float32, np.float64]))
def test_fit_kernel_equals_adam_prox_step(seed, dtype):
    """The fitter's bound kernel (stacked buffers, prebuilt table) gives adam_prox_step's
    result bit for bit, and renders what render() renders into a padded buffer's corner."""
    rng = np.random.default_rng(seed)
    B, H, W, K = 3, 13, 11, int(rng.integers(1, 5))
    comps = random_components(rng, B, H, W, K)
    a = PackedComponents.from_components(comps, B)
    sed_b = a.sed.copy()
    sed_state = np.zeros((3,) + a.sed.shape)
    morph_all = np.zeros((4, a.morph.size))
    morph_all[0] = a.morph
    sm, sv, svh = (np.zeros_like(a.sed) for _ in range(3))
    mm, mv, mvh = (np.zeros_like(a.morph) for _ in range(3))
    bg_rms = rng.uniform(0.05, 0.5, B)
    op = RadialMonotonicity(half=20)
    b_ref, b_new = (np.zeros((K, 4), dtype=np.int64) for _ in range(2))
    carry = (0.0, 0.02, np.inf)[seed % 3]
    kern = _adam_cy.FitKernel(bg_rms, bg_rms / 10, 0.03, 0.01, B1, B2, EPS, FLOOR, 0, carry)
    kern.bind(sed_b, sed_state, morph_all, a.comp, a.bg_thresh, op.table, b_new)
    for it in range(3):
        grad = rng.normal(size=(B, H, W)).astype(dtype)
        padded = np.zeros((B, H + 4, W + 3), dtype=dtype)  # the gradient may be a bigger buffer
        padded[:, :H, :W] = grad
        _adam_cy.adam_prox_step(
            grad,
            a.sed,
            sm,
            sv,
            svh,
            a.morph,
            mm,
            mv,
            mvh,
            a.comp,
            a.bg_thresh,
            bg_rms,
            bg_rms / 10,
            0.03,
            0.01,
            it,
            B1,
            B2,
            EPS,
            FLOOR,
            0,
            True,
            op.dy,
            op.dx,
            op.weights,
            True,
            b_ref,
            carry=carry,
        )
        kern.step(padded, it, True)
        assert np.array_equal(sed_b, a.sed) and np.array_equal(morph_all[0], a.morph)
        assert np.array_equal(morph_all[1:], np.stack([mm, mv, mvh]))
        assert np.array_equal(sed_state, np.stack([sm, sv, svh]))
        assert np.array_equal(b_new, b_ref)
    model = np.full((B, H + 2, W + 5), 9.0, dtype=dtype)
    kern.render(model, H, W)
    ref = np.zeros((B, H, W), dtype=dtype)
    _adam_cy.render(a.sed, a.morph, a.comp, ref)
    assert np.array_equal(model[:, :H, :W], ref)
    assert np.all(model[:, H:] == 9.0) and np.all(model[:, :, W:] == 9.0)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_resized_table_and_reach_match_numpy(seed):
    rng = np.random.default_rng(seed)
    H, W, K, pad = 20, 17, int(rng.integers(1, 6)), int(rng.integers(0, 4))
    packed = PackedComponents.from_components(random_components(rng, 1, H, W, K), 1)
    comp = packed.comp
    peaks = comp[:, :2] + comp[:, 5:]
    bounds = np.zeros((K, 4), dtype=np.int64)
    for k in range(K):
        kind = rng.integers(0, 3)
        if kind == 0:
            bounds[k] = -2
        elif kind == 1:
            bounds[k] = -1
        else:
            y = np.sort(rng.integers(0, comp[k, 2], 2))
            x = np.sort(rng.integers(0, comp[k, 3], 2))
            bounds[k] = (y[0], x[0], y[1], x[1])
    out = np.zeros_like(comp)
    size = _adam_cy.resized_table(comp, bounds, peaks, pad, H, W, out)
    ref = comp.copy()
    for k in range(K):
        if bounds[k, 0] == -2:
            continue
        if bounds[k, 0] == -1:
            y0, x0, y1, x1 = peaks[k, 0], peaks[k, 1], peaks[k, 0], peaks[k, 1]
        else:
            y0, x0 = comp[k, 0] + bounds[k, 0], comp[k, 1] + bounds[k, 1]
            y1, x1 = comp[k, 0] + bounds[k, 2], comp[k, 1] + bounds[k, 3]
        y0, x0 = max(y0 - pad, 0), max(x0 - pad, 0)
        y1, x1 = min(y1 + pad + 1, H), min(x1 + pad + 1, W)
        ref[k, :4] = (y0, x0, y1 - y0, x1 - x0)
    changed = np.any(ref[:, :4] != comp[:, :4])
    sizes = ref[:, 2] * ref[:, 3]
    assert size == (int(sizes.sum()) if changed else -1)
    if changed:
        ref[:, 4] = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        ref[:, 5:] = peaks - ref[:, :2]
        assert np.array_equal(out, ref)
    reach = max(max(c[5], c[6], c[2] - 1 - c[5], c[3] - 1 - c[6]) for c in comp) + 1
    assert _adam_cy.monotonic_reach(comp) == reach
    # and re-gridding every row at once equals copy_overlap row by row
    if changed:
        src = rng.random((4, packed.morph.size))
        dst = np.zeros((4, size))
        _adam_cy.copy_overlap_rows(src, comp, dst, out, np.arange(K, dtype=np.int64))
        for r in range(4):
            one = np.zeros(size)
            _adam_cy.copy_overlap(src[r], comp, one, out, np.arange(K, dtype=np.int64))
            assert np.array_equal(dst[r], one)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_point_source_products_match_numpy(seed):
    """The rescue's per-peak point-source products against numpy on PSF stamps cut to the
    frame (peaks on edges and corners included)."""
    from cdeblend.box import centered, clip_slices

    rng = np.random.default_rng(seed)
    B, H, W = int(rng.integers(1, 4)), int(rng.integers(1, 25)), int(rng.integers(1, 25))
    hp, wp = 2 * int(rng.integers(0, 6)) + 1, 2 * int(rng.integers(0, 6)) + 1
    weights = rng.uniform(0, 2, (B, H, W)).astype(np.float32)
    images = rng.normal(size=(B, H, W)).astype(np.float32)
    conv = rng.normal(size=(B, H, W)).astype(np.float32)
    resid = images.astype(np.float64) - conv
    psfs = rng.random((B, hp, wp))
    peaks = np.stack([rng.integers(0, H, 5), rng.integers(0, W, 5)], axis=1).astype(np.int64)
    pp, rp = np.empty((5, B)), np.empty((5, B))
    _adam_cy.point_source_products(weights, images, conv, psfs, peaks, pp, rp)
    for i, (y, x) in enumerate(peaks):
        sl_img, sl_psf = clip_slices(centered((int(y), int(x)), (hp, wp)), (H, W))
        sl_img, sl_psf = (slice(None),) + sl_img, (slice(None),) + sl_psf
        np.testing.assert_allclose(
            pp[i], np.sum(weights[sl_img] * psfs[sl_psf] ** 2, axis=(1, 2)), rtol=1e-12
        )
        np.testing.assert_allclose(
            rp[i],
            np.sum(weights[sl_img] * resid[sl_img] * psfs[sl_psf], axis=(1, 2)),
            rtol=1e-12,
            atol=1e-12,
        )
    with pytest.raises(ValueError, match="outside"):
        _adam_cy.point_source_products(
            weights, images, conv, psfs, np.array([[H, 0]]), pp[:1], rp[:1]
        )


def _passes(sed: np.ndarray, thresholds: np.ndarray, v: float) -> bool:
    """The prox chain's noise test of one pixel, band by band (as rounded products)."""
    return any(float(s) * v >= float(t) for s, t in zip(sed, thresholds, strict=True))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_keep_cut_is_the_band_by_band_noise_test(seed):
    """The one-comparison threshold (``v >= cut``) keeps exactly the pixels the band-by-band
    test keeps, on the values next to every quotient and on under- and overflowing
    products (SEDs and thresholds over the whole double range, zeros included)."""
    rng = np.random.default_rng(seed)
    for trial in range(300):
        B = int(rng.integers(1, 6))
        span = (-320, 300) if trial % 2 else (-25, 5)
        sed = 10.0 ** rng.uniform(*span, B)
        sed[rng.random(B) < 0.15] = 0.0
        thresholds = 10.0 ** rng.uniform(-320, 300, B) * rng.choice([0.0, 1.0, 1.0], B)
        cut = _adam_cy.keep_cut(sed, thresholds)
        values = [0.0, -0.0, 5e-324, -5e-324, 1e308, -1e308, *rng.normal(size=10)]
        with np.errstate(over="ignore"):
            starts = [t / s if s > 0 else 1.0 for s, t in zip(sed, thresholds, strict=True)]
            for x in [*starts, cut]:
                x = float(np.clip(x, -1.7e308, 1.7e308))
                for _ in range(4):
                    x = np.nextafter(x, -np.inf)
                for _ in range(9):
                    values.append(x)
                    x = np.nextafter(x, np.inf)
            for v in values:
                assert (v >= cut) == _passes(sed, thresholds, v), (sed, thresholds, v, cut)


def test_keep_cut_without_a_cut_and_bad_input():
    assert np.isnan(_adam_cy.keep_cut(np.array([1.0, -1.0]), np.array([1.0, 1.0])))
    assert np.isnan(_adam_cy.keep_cut(np.array([1.0]), np.array([np.inf])))
    assert _adam_cy.keep_cut(np.array([0.0]), np.array([0.0])) == -np.inf
    assert _adam_cy.keep_cut(np.array([0.0]), np.array([1.0])) == np.inf
    assert _adam_cy.keep_cut(np.array([2.0, 4.0]), np.array([1.0, 1.0])) == 0.25
    with pytest.raises(ValueError, match="sed and thresholds"):
        _adam_cy.keep_cut(np.array([1.0]), np.array([1.0, 2.0]))


@pytest.mark.parametrize("seed", [0, 1])
def test_a_larger_monotonicity_table_gives_the_same_step(seed):
    """The fitter grows its monotonicity table with room to spare: the step with any table
    that covers the boxes is the same bit for bit as with the smallest one."""
    from cdeblend.blend import _monotonic_table

    rng = np.random.default_rng(seed)
    B, H, W, K = 3, 60, 60, 6
    for _ in range(20):
        comp = np.zeros((K, 7), np.int64)
        off = 0
        for k in range(K):
            h, w = (int(v) for v in rng.integers(3, 30, 2))
            y0, x0 = int(rng.integers(0, H - h)), int(rng.integers(0, W - w))
            comp[k] = (y0, x0, h, w, off, rng.integers(0, h), rng.integers(0, w))
            off += h * w
        reach = _adam_cy.monotonic_reach(comp)
        grad = rng.normal(size=(B, H, W)).astype(np.float32)
        sed0, morph0 = rng.random((K, B)), rng.random(off) ** 3
        outs = []
        for half in (reach, reach + 1, reach + reach // 4 + 7):
            sed, morph = sed0.copy(), np.zeros((4, off))
            morph[0] = morph0
            state, bounds = np.zeros((3, K, B)), np.empty((K, 4), np.int64)
            _adam_cy.fit_step(grad, sed, state, morph, comp, np.full(K, 0.5), np.ones(B),
                              np.full(B, 1e-3), 0.1, 0.1, 3, 0.9, 0.999, 1e-8, 1e-20, 0,
                              _monotonic_table(int(half)), True, bounds)  # fmt: skip
            outs.append((sed, morph, bounds))
        for out in outs[1:]:
            for a, b in zip(out, outs[0], strict=True):
                np.testing.assert_array_equal(a, b)
