"""Least-squares SED fit against a dense numpy lstsq reference, recovery and memory bounds."""

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import convolve2d

import cdeblend.box
from cdeblend import Observation, fit_seds
from cdeblend.spectra import overlapping_pairs


def gaussian_psfs(bands, size=11):
    y = np.arange(size) - size // 2
    out = []
    for b in range(bands):
        s = 1.4 + 0.3 * b
        p = np.exp(-0.5 * (y[:, None] ** 2 + y[None, :] ** 2) / s**2)
        out.append(p / p.sum())
    return np.array(out)


def make_obs(rng, bands, h, w, dtype=np.float64, size=11):
    images = rng.normal(size=(bands, h, w))
    variance = rng.uniform(0.2, 3.0, size=(bands, h, w))
    return Observation(images, variance, gaussian_psfs(bands, size), dtype=dtype)


def random_components(rng, k, h, w, max_size=9):
    morphs, boxes = [], []
    for _ in range(k):
        bh, bw = rng.integers(1, max_size + 1, size=2)
        y0 = int(rng.integers(-2, h - 1))
        x0 = int(rng.integers(-2, w - 1))
        morphs.append(rng.random((bh, bw)))
        boxes.append((y0, x0, int(bh), int(bw)))
    return morphs, boxes


def dense_reference(obs, morphs, boxes, weighted=False):
    """The reference algorithm: the full (B, K, H*W) design matrix and numpy lstsq per band."""
    nb, h, w = obs.shape
    a = np.zeros((nb, len(morphs), h * w))
    for k, (m, (y0, x0, bh, bw)) in enumerate(zip(morphs, boxes, strict=True)):
        frame = np.zeros((h, w))
        for yy in range(bh):
            for xx in range(bw):
                if 0 <= y0 + yy < h and 0 <= x0 + xx < w:
                    frame[y0 + yy, x0 + xx] = m[yy, xx]
        for b in range(nb):
            a[b, k] = convolve2d(frame, obs.diff_kernels[b].astype(float), mode="same").ravel()
    seds = np.zeros((len(morphs), nb))
    for b in range(nb):
        d = obs.images[b].astype(float).ravel()
        ab = a[b].T
        if weighted:
            sw = np.sqrt(obs.weights[b].astype(float).ravel())
            ab, d = ab * sw[:, None], d * sw
        seds[:, b] = np.linalg.lstsq(ab, d, rcond=None)[0]
    return np.maximum(seds, 0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 7), weighted=st.booleans())
def test_matches_dense_lstsq(seed, k, weighted):
    rng = np.random.default_rng(seed)
    obs = make_obs(rng, 3, 26, 31)
    morphs, boxes = random_components(rng, k, 26, 31)
    got = fit_seds(obs, morphs, boxes, weighted=weighted)
    expect = dense_reference(obs, morphs, boxes, weighted=weighted)
    assert got.shape == (k, 3)
    np.testing.assert_allclose(got, expect, rtol=1e-7, atol=1e-9 * np.abs(expect).max(initial=1))


def test_rank_deficient_gives_min_norm_solution():
    rng = np.random.default_rng(1)
    obs = make_obs(rng, 2, 20, 20)
    m = rng.random((6, 6))
    morphs = [m, m.copy(), rng.random((4, 5))]
    boxes = [(5, 6, 6, 6), (5, 6, 6, 6), (12, 1, 4, 5)]
    # add a bright source so the identical pair has positive SEDs
    obs.images[:, 5:11, 6:12] += 50 * m
    got = fit_seds(obs, morphs, boxes)
    expect = dense_reference(obs, morphs, boxes)
    np.testing.assert_allclose(got, expect, rtol=1e-7)
    np.testing.assert_allclose(got[0], got[1], rtol=1e-9)  # min norm: split equally
    assert np.all(got[0] > 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_noise_free_recovery(dtype):
    # spec 7.11: data made from known SEDs and the true morphologies
    rng = np.random.default_rng(2)
    nb, h, w = 4, 40, 44
    yy, xx = np.mgrid[:13, :13] - 6
    morphs, boxes, seds = [], [], []
    for _ in range(5):
        s = rng.uniform(1.0, 2.5)
        morphs.append(np.exp(-0.5 * (yy**2 + (xx / 1.3) ** 2) / s**2))
        boxes.append((int(rng.integers(0, h - 13)), int(rng.integers(0, w - 13)), 13, 13))
        seds.append(rng.uniform(1, 100, size=nb))
    seds = np.array(seds)
    model = np.zeros((nb, h, w))
    for m, (y0, x0, bh, bw), s in zip(morphs, boxes, seds, strict=True):
        model[:, y0 : y0 + bh, x0 : x0 + bw] += s[:, None, None] * m
    proto = make_obs(rng, nb, h, w)
    images = np.array([convolve2d(model[b], proto.diff_kernels[b], mode="same") for b in range(nb)])
    obs = Observation(images.astype(dtype), np.ones((nb, h, w)), gaussian_psfs(nb))
    got = fit_seds(obs, [m.astype(dtype) for m in morphs], boxes)
    rtol = 1e-9 if dtype == np.float64 else 2e-3
    np.testing.assert_allclose(got, seds, rtol=rtol)
    # weighting does not change an exact fit
    np.testing.assert_allclose(fit_seds(obs, morphs, boxes, weighted=True), seds, rtol=rtol)


def test_fixed_model_is_subtracted():
    rng = np.random.default_rng(3)
    obs = make_obs(rng, 2, 18, 18)
    morphs, boxes = random_components(rng, 3, 18, 18)
    fixed = rng.random(obs.shape)
    got = fit_seds(obs, morphs, boxes, fixed_model=fixed)
    shifted = Observation(
        obs.images - obs.convolve(fixed), obs.variance, obs.psfs, dtype=np.float64
    )
    np.testing.assert_allclose(got, dense_reference(shifted, morphs, boxes), rtol=1e-7)


def test_overlapping_pairs_against_brute_force():
    rng = np.random.default_rng(4)
    boxes = np.column_stack(
        [
            rng.integers(0, 100, 80),
            rng.integers(0, 100, 80),
            rng.integers(0, 20, 80),
            rng.integers(0, 20, 80),
        ]
    )
    got = {tuple(p) for p in overlapping_pairs(boxes)}
    expect = set()
    for k in range(80):
        for j in range(k, 80):
            a, b = boxes[k], boxes[j]
            if max(a[0], b[0]) < min(a[0] + a[2], b[0] + b[2]) and max(a[1], b[1]) < min(
                a[1] + a[3], b[1] + b[3]
            ):
                expect.add((k, j))
    assert got == expect
    assert len(overlapping_pairs(boxes)) == len(expect)  # no duplicates


def test_validation():
    rng = np.random.default_rng(5)
    obs = make_obs(rng, 2, 10, 10)
    with pytest.raises(ValueError, match="morphologies has 1 entries but boxes has 2"):
        fit_seds(obs, [np.ones((2, 2))], [(0, 0, 2, 2), (1, 1, 2, 2)])
    with pytest.raises(ValueError, match=r"morphologies\[0\] has shape \(2, 3\)"):
        fit_seds(obs, [np.ones((2, 3))], [(0, 0, 2, 2)])
    with pytest.raises(ValueError, match=r"morphologies\[0\] must hold finite"):
        fit_seds(obs, [np.full((2, 2), np.nan)], [(0, 0, 2, 2)])
    with pytest.raises(TypeError, match="observation must be an Observation"):
        fit_seds(obs.images, [np.ones((2, 2))], [(0, 0, 2, 2)])
    # a component entirely outside the frame and an empty list
    np.testing.assert_array_equal(fit_seds(obs, [np.ones((2, 2))], [(50, 50, 2, 2)]), 0)
    assert fit_seds(obs, [], []).shape == (0, 2)


def test_memory_stays_far_below_the_dense_design_matrix():
    rng = np.random.default_rng(6)
    nb, h, w, k = 3, 300, 300, 60
    obs = Observation(
        rng.normal(size=(nb, h, w)).astype(np.float32),
        np.ones((nb, h, w), np.float32),
        gaussian_psfs(nb, size=21),
    )
    morphs, boxes = random_components(rng, k, h, w, max_size=15)
    morphs = [m.astype(np.float32) for m in morphs]
    fit_seds(obs, morphs, boxes)  # warm caches
    tracemalloc.start()
    fit_seds(obs, morphs, boxes)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    dense = nb * k * h * w * 4  # the reference's float32 design matrix alone: 65 MB
    assert peak < dense / 20


def test_deterministic_and_block_independent():
    rng = np.random.default_rng(7)
    obs = make_obs(rng, 2, 60, 60, dtype=np.float32)
    # two far-apart groups: each group's SEDs must not depend on the other group
    morphs = [rng.random((5, 5)).astype(np.float32) for _ in range(4)]
    boxes = [(2, 2, 5, 5), (5, 4, 5, 5), (48, 50, 5, 5), (50, 52, 5, 5)]
    first = fit_seds(obs, morphs, boxes)
    np.testing.assert_array_equal(first, fit_seds(obs, morphs, boxes))
    alone = fit_seds(obs, morphs[:2], boxes[:2])
    np.testing.assert_array_equal(first[:2], alone)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 6), weighted=st.booleans())
def test_nnls_matches_dense_nnls(seed, k, weighted):
    from scipy.optimize import nnls

    rng = np.random.default_rng(seed)
    obs = make_obs(rng, 2, 22, 25)
    morphs, boxes = random_components(rng, k, 22, 25)
    # the data are pure noise: many unconstrained SEDs are negative, so constraints bind
    got = fit_seds(obs, morphs, boxes, weighted=weighted, solver="nnls")
    nb, h, w = obs.shape
    for b in range(nb):
        cols = []
        for m, (y0, x0, bh, bw) in zip(morphs, boxes, strict=True):
            frame = np.zeros((h, w))
            for yy in range(bh):
                for xx in range(bw):
                    if 0 <= y0 + yy < h and 0 <= x0 + xx < w:
                        frame[y0 + yy, x0 + xx] = m[yy, xx]
            cols.append(convolve2d(frame, obs.diff_kernels[b], mode="same").ravel())
        a = np.array(cols).T
        d = obs.images[b].ravel()
        if weighted:
            sw = np.sqrt(obs.weights[b].ravel())
            a, d = a * sw[:, None], d * sw
        if np.linalg.matrix_rank(a) < a.shape[1]:
            continue  # NNLS is not unique (e.g. a component outside the frame)
        expect = nnls(a, d)[0]
        np.testing.assert_allclose(got[:, b], expect, rtol=1e-6, atol=1e-9 * (1 + expect.max()))
    with pytest.raises(ValueError, match="solver must be"):
        fit_seds(obs, morphs, boxes, solver="svd")


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 30))
def test_cholesky_kernel_matches_numpy(seed, n):
    from cdeblend._spectra_cy import cholesky_upper

    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n + 3, n))
    gram = a.T @ a
    rhs = rng.normal(size=(n, 2))
    root = np.empty((n, n))
    y = rhs.copy()
    inv_norm = cholesky_upper(gram, root, y)
    ref = np.linalg.cholesky(gram).T  # upper factor, G = R^T R
    np.testing.assert_allclose(root, ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())
    np.testing.assert_allclose(y, np.linalg.solve(ref.T, rhs), rtol=1e-7, atol=1e-9)
    inv = np.linalg.inv(ref)
    # ||R^-1||_F^2, whose inverse the solver uses as a lower bound of the smallest eigenvalue
    assert inv_norm == pytest.approx(np.sum(inv * inv), rel=1e-7)


def test_cholesky_kernel_rejects_singular_and_solver_falls_back():
    from cdeblend._spectra_cy import cholesky_upper

    from cdeblend.spectra import _nnls_solve

    assert (
        cholesky_upper(np.array([[1.0, 1.0], [1.0, 1.0]]), np.empty((2, 2)), np.ones((2, 1))) == -1
    )
    rng = np.random.default_rng(3)
    a = rng.random((20, 2))
    design = np.column_stack([a[:, 0], a[:, 1], a[:, 0]])  # components 0 and 2 identical
    d = design @ np.array([1.0, 2.0, 1.0]) + 0.01 * rng.normal(size=20)
    x = _nnls_solve(design.T @ design, design.T @ d)
    assert np.all(x >= 0)
    # the fit is as good as the dense NNLS of the design matrix (the split between the
    # identical components is not unique, the model is)
    from scipy.optimize import nnls

    ref, _ = nnls(design, d)
    np.testing.assert_allclose(design @ x, design @ ref, rtol=1e-8, atol=1e-10)


def test_overlapping_pairs_sweep_and_dense_paths_agree():
    from cdeblend import spectra

    rng = np.random.default_rng(11)
    n = cdeblend.box._DENSE_PAIRS + 40  # the sweep path
    boxes = np.column_stack(
        [
            rng.integers(0, 300, n),
            rng.integers(0, 300, n),
            rng.integers(0, 30, n),
            rng.integers(0, 30, n),
        ]
    )
    sweep = {tuple(p) for p in overlapping_pairs(boxes)}
    dense = set()
    for k in range(n):
        for j in range(k, n):
            a, b = boxes[k], boxes[j]
            if max(a[0], b[0]) < min(a[0] + a[2], b[0] + b[2]) and max(a[1], b[1]) < min(
                a[1] + a[3], b[1] + b[3]
            ):
                dense.add((k, j))
    assert sweep == dense
    # grouping: union-find and scipy's connected components give the same partition
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.array(sorted(sweep))
    ng, labels = spectra._groups(pairs, n)
    ref_ng, ref = connected_components(
        coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n)), directed=False
    )
    assert ng == ref_ng
    assert len({(a, b) for a, b in zip(labels, ref, strict=True)}) == ng
    # groups are numbered in the order of their smallest member
    first = [int(np.flatnonzero(labels == g).min()) for g in range(ng)]
    assert first == sorted(first)


@pytest.mark.parametrize("weighted", [False, True])
def test_large_group_sparse_solver_matches_dense_and_design_nnls(monkeypatch, weighted):
    """A group above the sparse threshold: the sparse solver gives the SEDs of the dense
    active set and of scipy's NNLS on the full design matrix."""
    from scipy.optimize import nnls

    from cdeblend import spectra

    rng = np.random.default_rng(17)
    h = w = 48
    obs = make_obs(rng, 2, h, w)
    k = spectra._SPARSE_NNLS + 26
    morphs, boxes = [], []
    for i in range(k):  # a chain of overlapping boxes covering the frame: one group
        y0, x0 = 3 + (i * 5) % 40, 3 + (i * 7) % 40
        morphs.append(rng.random((6, 6)) + 0.05)
        boxes.append((y0, x0, 6, 6))
    grown = np.array([obs.convolver.grown_box(b)[1] for b in boxes])
    ngroups, _ = spectra._groups(spectra.overlapping_pairs(grown), k)
    assert ngroups == 1
    truth = rng.uniform(-1.0, 3.0, size=(k, 2))  # some SEDs would be negative
    nb = obs.shape[0]
    design = np.zeros((nb, h * w, k))
    for i, (m, (y0, x0, bh, bw)) in enumerate(zip(morphs, boxes, strict=True)):
        frame = np.zeros((h, w))
        frame[y0 : y0 + bh, x0 : x0 + bw] = m
        for b in range(nb):
            design[b, :, i] = convolve2d(frame, obs.diff_kernels[b], mode="same").ravel()
    images = np.einsum("bpk,kb->bp", design, truth).reshape(nb, h, w)
    images += 0.1 * rng.normal(size=images.shape)
    obs = Observation(images, obs.variance, gaussian_psfs(nb))
    got = fit_seds(obs, morphs, boxes, weighted=weighted, solver="nnls")
    for b in range(nb):
        a, d = design[b], images[b].ravel()
        if weighted:
            sw = np.sqrt(obs.weights[b].ravel())
            a, d = a * sw[:, None], d * sw
        expect = nnls(a, d, maxiter=50 * k)[0]
        tol = 1e3 * np.finfo(float).eps * np.linalg.cond(a) ** 2 * expect.max()
        np.testing.assert_allclose(got[:, b], expect, rtol=0, atol=max(tol, 1e-9))
        assert 0 < np.count_nonzero(got[:, b]) < k
    monkeypatch.setattr(spectra, "_SPARSE_NNLS", 10**9)  # the dense active set
    dense = fit_seds(obs, morphs, boxes, weighted=weighted, solver="nnls")
    np.testing.assert_allclose(got, dense, rtol=0, atol=1e-10 * np.abs(dense).max())


@pytest.mark.parametrize("weighted", [False, True])
def test_threads_give_the_one_thread_seds_bit_for_bit(monkeypatch, weighted):
    """The SED fit's convolutions, Gram products and sparse solve run in parts on threads;
    every part is computed alone, so the SEDs are those of one thread bit for bit."""
    import cdeblend
    from cdeblend import _convolve_cy, convolution, spectra

    rng = np.random.default_rng(23)
    h = w = 64
    obs = make_obs(rng, 3, h, w, np.float32, size=21)
    morphs, boxes = [], []
    for i in range(spectra._SPARSE_NNLS + 40):  # one overlap group of equal boxes
        y0, x0 = (i * 5) % 52, (i * 11) % 52
        morphs.append(rng.random((12, 12)) + 0.05)
        boxes.append((y0, x0, 12, 12))
    # small parts, so that this small blend takes every threaded path
    monkeypatch.setattr(spectra, "_MIN_PART_ROWS", 8)
    monkeypatch.setattr(convolution, "_MIN_PART", 8)
    calls = {"planes": 0, "gram": 0}
    real_planes, real_gram = _convolve_cy.conv_planes, spectra._gram_rows

    def planes(*args):
        calls["planes"] += 1
        return real_planes(*args)

    def gram(*args):
        calls["gram"] += 1
        return real_gram(*args)

    monkeypatch.setattr(convolution, "conv_planes", planes)
    monkeypatch.setattr(spectra, "_gram_rows", gram)
    with cdeblend.thread_limit(1):
        one = fit_seds(obs, morphs, boxes, weighted=weighted, solver="nnls")
    single = dict(calls)
    with cdeblend.thread_limit(2):
        two = fit_seds(obs, morphs, boxes, weighted=weighted, solver="nnls")
    assert calls["planes"] > 2 * single["planes"] and calls["gram"] > 2 * single["gram"]
    np.testing.assert_array_equal(two, one)
    assert np.all(one >= 0) and np.any(one > 0)


def _swept_pairs_reference(boxes: np.ndarray) -> np.ndarray:
    """The sweep in numpy, box by box (what cdeblend.box._swept_pairs did in Python)."""
    nonempty = np.flatnonzero((boxes[:, 2] > 0) & (boxes[:, 3] > 0))
    order = nonempty[np.argsort(boxes[nonempty, 0], kind="stable")]
    y0 = boxes[order, 0]
    y1 = y0 + boxes[order, 2]
    x0 = boxes[order, 1]
    x1 = x0 + boxes[order, 3]
    out = [np.zeros((0, 2), dtype=np.int64)]
    for i in range(order.size):
        j = np.arange(i, int(np.searchsorted(y0, y1[i], side="left")))
        hit = j[(x0[j] < x1[i]) & (x0[i] < x1[j])]
        a, b = order[i], order[hit]
        out.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    return np.concatenate(out)


def test_swept_pairs_kernel_matches_the_numpy_sweep_in_order():
    """The Cython sweep returns the numpy sweep's pairs in the same order (the SED fit's
    Gram rows and sparse systems follow that order), ties in y0 and empty boxes included;
    unsorted tops are rejected."""
    from cdeblend._spectra_cy import swept_pairs

    rng = np.random.default_rng(5)
    for n, span, size in ((1, 10, 5), (200, 300, 40), (500, 100, 12), (300, 2000, 3)):
        boxes = np.column_stack(
            [
                rng.integers(-5, span, n),
                rng.integers(-5, span, n),
                rng.integers(0, size, n),
                rng.integers(0, size, n),
            ]
        ).astype(np.int64)
        got = cdeblend.box._swept_pairs(boxes)
        ref = _swept_pairs_reference(boxes)
        assert got.dtype == np.int64 and got.shape == ref.shape
        np.testing.assert_array_equal(got, ref)
    with pytest.raises(ValueError, match="sorted"):
        swept_pairs(
            *(np.array(v, dtype=np.int64) for v in ([0, 1], [3, 1], [4, 2], [0, 0], [1, 1]))
        )


def test_rcm_order_matches_scipy_reverse_cuthill_mckee():
    """Our reverse Cuthill-McKee order (the sparse SED solve's row order, so its round-off)
    equals scipy's on random symmetric patterns: repeated entries, missing diagonals,
    disconnected parts, isolated nodes and ties in degree."""
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    from cdeblend.spectra import _rcm_order

    rng = np.random.default_rng(8)
    for _ in range(150):
        n = int(rng.integers(1, 120))
        p = int(rng.integers(0, 3 * n + 1))
        a, b = rng.integers(0, n, p), rng.integers(0, n, p)
        on = np.flatnonzero(rng.random(n) < 0.8)
        ik = np.concatenate([np.minimum(a, b), on])
        il = np.concatenate([np.maximum(a, b), on])
        off = ik != il
        rows, cols = np.concatenate([ik, il[off]]), np.concatenate([il, ik[off]])
        pattern = csr_array((np.ones(rows.size), (rows, cols)), shape=(n, n))
        ref = reverse_cuthill_mckee(pattern, symmetric_mode=True)
        got = _rcm_order(rows, cols, n)
        np.testing.assert_array_equal(got, ref)
        assert np.array_equal(np.sort(got), np.arange(n))


def test_cuthill_mckee_rejects_bad_tables():
    from cdeblend._spectra_cy import cuthill_mckee

    ptr, ind = np.array([0, 1, 2], dtype=np.intp), np.array([0, 1], dtype=np.intp)
    seeds, degree = np.arange(2, dtype=np.intp), np.ones(2, dtype=np.int64)
    assert cuthill_mckee(ptr, ind, seeds, degree).tolist() == [0, 1]
    with pytest.raises(ValueError, match="indices"):
        cuthill_mckee(ptr, np.array([0, 5], dtype=np.intp), seeds, degree)
    with pytest.raises(ValueError, match="seeds"):
        cuthill_mckee(ptr, ind, np.array([0, 2], dtype=np.intp), degree)
    with pytest.raises(ValueError, match="indptr"):
        cuthill_mckee(ptr[:2], ind, seeds, degree)
