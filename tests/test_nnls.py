"""The Cython NNLS on the normal equations (``nnls_gram``) against scipy's NNLS and its
fallbacks, and the SEDs of ``fit_seds(solver="nnls")`` against the scipy path."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import solve_triangular
from scipy.optimize import nnls

import cdeblend
from cdeblend import _spectra_cy, spectra
from cdeblend.initialization import initialize_blend

nnls_gram = _spectra_cy.nnls_gram
EPS = np.finfo(np.float64).eps
DATA = Path(__file__).parent / "data"


def scipy_reference(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """The scipy path: NNLS of ``||R x - R^-T r||`` with ``G = R^T R``."""
    root = np.linalg.cholesky(gram).T
    d = solve_triangular(root, rhs, trans="T")
    return nnls(root, d, maxiter=50 * len(rhs))[0]


def random_problem(
    rng: np.random.Generator, n: int, extra: int, mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """``G = A^T A``, ``r = A^T d`` for a random tall ``A`` (scaled columns) and data ``d``."""
    a = rng.normal(size=(n + extra, n)) * rng.uniform(0.1, 10.0, size=n)
    if mode == "none":  # positive truth, little noise: no constraint active
        truth, noise = rng.uniform(0.5, 2.0, size=n), 1e-3
    elif mode == "many":  # negative truth: most constraints active
        truth, noise = -rng.uniform(0.0, 1.0, size=n), 0.1
    else:
        truth, noise = rng.normal(size=n), 1.0
    d = a @ truth + noise * rng.normal(size=n + extra)
    return a.T @ a, a.T @ d


def solve(gram: np.ndarray, rhs: np.ndarray, **kw) -> tuple[np.ndarray, np.ndarray]:
    out = np.full(rhs.shape, np.nan)
    status = nnls_gram(np.ascontiguousarray(gram), np.ascontiguousarray(rhs), out, **kw)
    return out, status


def assert_kkt(gram: np.ndarray, rhs: np.ndarray, x: np.ndarray) -> None:
    """x >= 0, the gradient r - G x is ~0 where x > 0 and <= ~0 where x = 0."""
    grad = rhs - gram @ x
    slack = 1e-9 * (np.abs(rhs) + np.abs(gram) @ np.abs(x)).max()
    assert np.all(x >= 0)
    assert np.all(grad <= slack)
    assert np.all(np.abs(grad[x > 0]) <= slack)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 30),
    extra=st.integers(1, 20),
    bands=st.integers(1, 3),
    mode=st.sampled_from(["none", "many", "mixed"]),
)
def test_matches_scipy_nnls_on_the_cholesky_factor(seed, n, extra, bands, mode):
    rng = np.random.default_rng(seed)
    problems = [random_problem(rng, n, extra, mode) for _ in range(bands)]
    gram = np.array([g for g, _ in problems])
    rhs = np.array([r for _, r in problems])
    got, status = solve(gram, rhs)
    assert status.shape == (bands,) and np.all(status == 0)  # PD and well conditioned
    for b in range(bands):
        ref = scipy_reference(gram[b], rhs[b])
        scale = np.abs(ref).max(initial=0.0)
        # the minimiser is unique: equal up to the round-off of the conditioning
        tol = scale * max(1e-10, 100 * EPS * np.linalg.cond(gram[b]))
        np.testing.assert_allclose(got[b], ref, rtol=0, atol=tol)
        assert_kkt(gram[b], rhs[b], got[b])
        if mode == "many":
            assert np.count_nonzero(got[b]) <= n
    # every band is solved alone as in the batch (same code, same order)
    for b in range(bands):
        alone, _ = solve(gram[b : b + 1], rhs[b : b + 1])
        np.testing.assert_array_equal(alone[0], got[b])


def test_all_active_and_none_active():
    rng = np.random.default_rng(5)
    gram, rhs = random_problem(rng, 12, 8, "none")
    x, status = solve(gram[None], rhs[None])
    assert status[0] == 0 and np.all(x > 0)
    np.testing.assert_allclose(x[0], np.linalg.solve(gram, rhs), rtol=1e-10)
    x, status = solve(gram[None], -np.abs(rhs)[None])  # r <= 0: x = 0 is optimal
    assert status[0] == 0
    np.testing.assert_array_equal(x, 0.0)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_scale_invariant(scale):
    rng = np.random.default_rng(8)
    gram, rhs = random_problem(rng, 15, 5, "mixed")
    x, _ = solve(gram[None], rhs[None])
    xr, status_r = solve(gram[None], scale * rhs[None])
    xg, status_g = solve(scale * gram[None], rhs[None])
    assert status_r[0] == 0 and status_g[0] == 0
    np.testing.assert_allclose(xr / scale, x, rtol=1e-12, atol=1e-12 * x.max())
    np.testing.assert_allclose(xg * scale, x, rtol=1e-12, atol=1e-12 * x.max())


def test_single_component_is_the_clipped_ratio():
    gram = np.array([[[2.0]], [[2.0]], [[0.0]], [[-1.0]], [[4.0]]])
    rhs = np.array([[3.0], [-3.0], [1.0], [1.0], [np.nan]])
    x, status = solve(gram, rhs)
    np.testing.assert_array_equal(status, 0)
    np.testing.assert_array_equal(x[:4, 0], [1.5, 0.0, 0.0, 0.0])
    assert np.isnan(x[4, 0])  # as max(nan, 0.0) in the scipy path
    for b in range(4):
        np.testing.assert_array_equal(
            spectra._nnls_solve(gram[b], rhs[b]), spectra._nnls_scipy(gram[b], rhs[b])
        )


def test_degenerate_and_ill_conditioned_take_the_fallback():
    rng = np.random.default_rng(3)
    a = rng.random((20, 3))
    cases = {
        "singular": np.column_stack([a[:, 0], a[:, 1], a[:, 0]]),  # identical components
        "ill-conditioned": np.column_stack([a[:, :2], a[:, 0] + 1e-9 * a[:, 2]]),
    }
    d = a @ np.array([1.0, 2.0, 1.0]) + 0.01 * rng.normal(size=20)
    for name, design in cases.items():
        gram, rhs = design.T @ design, design.T @ d
        _, status = solve(gram[None], rhs[None])
        assert status[0] == 1, name
        x = spectra._nnls_solve(gram, rhs)
        np.testing.assert_array_equal(x, spectra._nnls_scipy(gram, rhs))
        ref, _ = nnls(design, d)
        np.testing.assert_allclose(design @ x, design @ ref, rtol=1e-6, atol=1e-8)
    indefinite = np.array([[1.0, 2.0], [2.0, 1.0]])
    assert solve(indefinite[None], np.ones((1, 2)))[1][0] == 1
    good, r = random_problem(rng, 4, 3, "mixed")
    for bad_g, bad_r in [
        (good, np.where(np.arange(4) == 1, np.nan, r)),
        (np.where(np.eye(4) > 0, np.inf, good), r),
    ]:
        assert solve(bad_g[None], bad_r[None])[1][0] == 1


def test_iteration_cap_falls_back_to_scipy(monkeypatch):
    rng = np.random.default_rng(4)
    gram, rhs = random_problem(rng, 10, 4, "mixed")
    _, status = solve(gram[None], rhs[None], maxiter=1)
    assert status[0] == 2
    # a batch where every band hits the cap: the result is still the scipy path's
    calls = []

    def capped(g, r, out):
        calls.append(len(g))
        return nnls_gram(g, r, out, maxiter=1)

    monkeypatch.setattr(spectra, "nnls_gram", capped)
    gram2, rhs2 = random_problem(rng, 10, 4, "mixed")
    got = spectra._nnls_solve_bands(np.array([gram, gram2]), np.array([rhs, rhs2]))
    assert calls == [2]
    np.testing.assert_array_equal(got[0], spectra._nnls_scipy(gram, rhs))
    np.testing.assert_array_equal(got[1], spectra._nnls_scipy(gram2, rhs2))


def test_mixed_batch_only_falls_back_where_needed():
    rng = np.random.default_rng(9)
    good, r = random_problem(rng, 3, 5, "mixed")
    singular = np.ones((3, 3))
    gram = np.array([good, singular, good])
    rhs = np.array([r, np.ones(3), -r])
    _, status = solve(gram, rhs)
    np.testing.assert_array_equal(status, [0, 1, 0])
    got = spectra._nnls_solve_bands(gram, rhs)
    for b in range(3):
        np.testing.assert_allclose(
            got[b], spectra._nnls_scipy(gram[b], rhs[b]), rtol=1e-10, atol=1e-12
        )


def test_arguments_are_validated():
    g, r, out = np.eye(3)[None].copy(), np.ones((1, 3)), np.empty((1, 3))
    with pytest.raises(ValueError, match="gram must have shape"):
        nnls_gram(np.ones((1, 3, 2)), r, out)
    with pytest.raises(ValueError, match="gram must be"):
        nnls_gram(np.eye(3), r, out)
    with pytest.raises(ValueError, match="gram must be"):
        nnls_gram(g.astype(np.float32), r, out)
    with pytest.raises(ValueError, match="rhs must have shape"):
        nnls_gram(g, np.ones((2, 3)), out)
    with pytest.raises(ValueError, match="rhs must be"):
        nnls_gram(g, np.ones((3, 2)).T, out)  # not C-contiguous
    with pytest.raises(ValueError, match="out must have shape"):
        nnls_gram(g, r, np.empty((1, 4)))
    read_only = np.empty((1, 3))
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="out must be"):
        nnls_gram(g, r, read_only)
    assert nnls_gram(np.empty((2, 0, 0)), np.empty((2, 0)), np.empty((2, 0))).tolist() == [0, 0]
    np.testing.assert_array_equal(nnls_gram(g, r, out), [0])
    np.testing.assert_array_equal(out, 1.0)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("flip", [False, True])
def test_fit_seds_unchanged_on_the_bundled_blend(monkeypatch, weighted, flip):
    demo = cdeblend.load_hsc_cosmos()
    obs = cdeblend.Observation(demo.images, demo.variance, demo.psfs)
    blend, _ = initialize_blend(obs, demo.peaks, cdeblend.DeblendConfig())
    morphs = [c.morphology for c in blend.components]
    boxes = [c.box for c in blend.components]
    if flip:  # data upside down: the morphologies no longer fit, many SEDs hit 0
        obs = cdeblend.Observation(demo.images[:, ::-1], demo.variance[:, ::-1], demo.psfs)
    got = spectra.fit_seds(obs, morphs, boxes, weighted=weighted, solver="nnls")
    assert np.array_equal(
        got, spectra.fit_seds(obs, morphs, boxes, weighted=weighted, solver="nnls")
    )  # deterministic

    def scipy_only(g, r, out):  # every band through the scipy path, as before nnls_gram
        return np.ones(len(g), dtype=np.intc)

    monkeypatch.setattr(spectra, "nnls_gram", scipy_only)
    ref = spectra.fit_seds(obs, morphs, boxes, weighted=weighted, solver="nnls")
    assert np.all(ref > 0) != flip and np.count_nonzero(ref) > 0
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10 * np.abs(ref).max())


# ------------------------------------------------------------------------------------------
# The sparse solver of large overlap groups (nnls_sparse)
# ------------------------------------------------------------------------------------------

nnls_sparse = _spectra_cy.nnls_sparse


def sparse_design(rng: np.random.Generator, n: int, size: int, mode: str) -> np.ndarray:
    """A (size^2, n) design of ``n`` positive "morphologies" on random boxes of a
    ``size x size`` frame (each overlaps only its neighbours); in pairs on one box, the second
    correlated with the first (a bulge and its disk), as the components of the sims."""
    a = np.zeros((size, size, n))
    for k in range(n):
        if k % 2 and mode == "pairs":  # same box as k - 1, a correlated profile
            a[..., k] = a[..., k - 1] ** 2 + 0.3 * rng.random((size, size)) * (a[..., k - 1] > 0)
            continue
        h, w = rng.integers(3, 9, size=2)
        y0, x0 = rng.integers(0, size - h), rng.integers(0, size - w)
        a[y0 : y0 + h, x0 : x0 + w, k] = rng.random((h, w)) + 0.1
    return a.reshape(size * size, n) * rng.uniform(0.1, 10.0, size=n)


def as_csr(gram: np.ndarray):
    """CSR arrays (intp pattern of the nonzeros of every band, (B, nnz) values)."""
    pattern = np.any(gram != 0, axis=0)
    rows, cols = np.nonzero(pattern)
    indptr = np.zeros(pattern.shape[0] + 1, dtype=np.intp)
    np.cumsum(pattern.sum(axis=1), out=indptr[1:])
    return indptr, cols.astype(np.intp), np.ascontiguousarray(gram[:, rows, cols])


def solve_sparse(gram: np.ndarray, rhs: np.ndarray, **kw) -> tuple[np.ndarray, np.ndarray]:
    indptr, indices, data = as_csr(gram)
    out = np.full(rhs.shape, np.nan)
    return out, nnls_sparse(indptr, indices, data, np.ascontiguousarray(rhs), out, **kw)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 120),
    mode=st.sampled_from(["single", "pairs"]),
    truth=st.sampled_from(["positive", "mixed", "negative"]),
)
def test_sparse_matches_scipy_nnls_on_the_design(seed, n, mode, truth):
    rng = np.random.default_rng(seed)
    size = int(np.ceil(np.sqrt(n))) * 4 + 8
    a = sparse_design(rng, n, size, mode)
    signs = {"positive": 1.0, "negative": -1.0, "mixed": rng.choice([-1.0, 1.0], n)}[truth]
    d = a @ (signs * rng.uniform(0.2, 2.0, n)) + rng.normal(size=a.shape[0])
    gram, rhs = a.T @ a, a.T @ d
    got, status = solve_sparse(gram[None], rhs[None])
    cond = np.linalg.cond(gram)
    if not np.isfinite(cond) or 1e3 * EPS * n * cond > 1:
        return  # (nearly) singular draws: the dense path's business, tested below
    assert status[0] == 0
    ref = nnls(a, d, maxiter=50 * n)[0]  # independent: the design matrix itself
    scale = np.abs(ref).max(initial=0.0)
    tol = scale * max(1e-10, 100 * EPS * cond)
    np.testing.assert_allclose(got[0], ref, rtol=0, atol=tol)
    assert_kkt(gram, rhs, got[0])
    dense, dense_status = solve(gram[None], rhs[None])
    if dense_status[0] == 0:  # the dense active set: the same minimiser
        np.testing.assert_allclose(got[0], dense[0], rtol=0, atol=tol)


def test_sparse_bands_are_solved_alone_and_the_order_does_not_matter():
    rng = np.random.default_rng(21)
    gram, rhs = [], []
    for _ in range(3):
        a = sparse_design(rng, 80, 44, "pairs")
        d = a @ rng.normal(size=80) + rng.normal(size=a.shape[0])
        gram.append(a.T @ a)
        rhs.append(a.T @ d)
    gram, rhs = np.array(gram), np.array(rhs)
    got, status = solve_sparse(gram, rhs)
    np.testing.assert_array_equal(status, 0)
    for b in range(3):
        alone, _ = solve_sparse(gram[b : b + 1], rhs[b : b + 1])
        np.testing.assert_array_equal(alone[0], got[b])
    perm = rng.permutation(80)
    shuffled, _ = solve_sparse(gram[:, perm][:, :, perm], rhs[:, perm])
    scale = np.abs(got).max()
    np.testing.assert_allclose(shuffled[:, np.argsort(perm)], got, rtol=0, atol=1e-10 * scale)


def test_sparse_matches_dense_on_a_real_group():
    """An overlap group of 223 components of a simulated 400 x 400 scene (5 bands, PSFs of
    2.5-4 px, Sersic galaxies): the Gram matrices the SED fit builds."""
    z = np.load(DATA / "sed_group_scaling_c.npz")
    ik, il = z["ik"].astype(np.intp), z["il"].astype(np.intp)
    products, rhs = z["products"], z["rhs"]
    n = rhs.shape[1]
    got = spectra._nnls_solve_sparse(ik, il, products, rhs)
    gram = spectra._dense_gram(ik, il, products, n)
    dense = spectra._nnls_solve_bands(gram, rhs)
    for b in range(len(rhs)):
        ref = scipy_reference(gram[b], rhs[b])
        tol = np.abs(ref).max() * 100 * EPS * np.linalg.cond(gram[b])
        np.testing.assert_allclose(got[b], ref, rtol=0, atol=tol)
        np.testing.assert_allclose(got[b], dense[b], rtol=0, atol=tol)
        assert_kkt(gram[b], rhs[b], got[b])
        assert 0 < np.count_nonzero(got[b]) < n  # constraints active and not


def test_sparse_leaves_degenerate_systems_to_the_dense_path(monkeypatch):
    rng = np.random.default_rng(13)
    a = sparse_design(rng, 70, 40, "single")
    d = a @ rng.normal(size=70) + rng.normal(size=a.shape[0])
    cases = {
        "duplicate": np.column_stack([a, a[:, 3]]),  # singular
        "nearly": np.column_stack([a, a[:, 3] + 1e-9 * a[:, 4]]),  # ill-conditioned
        "empty": np.column_stack([a, np.zeros(a.shape[0])]),  # zero diagonal
    }
    for name, design in cases.items():
        gram, rhs = design.T @ design, design.T @ d
        _, status = solve_sparse(gram[None], rhs[None])
        assert status[0] == 1, name
    gram, rhs = a.T @ a, a.T @ d
    x, status = solve_sparse(gram[None], rhs[None], maxround=0)
    assert status[0] == 2
    bad = gram.copy()
    bad[2, 2] = np.nan
    assert solve_sparse(bad[None], rhs[None])[1][0] == 1
    # the spectra wrapper sends exactly those bands to the dense path
    ik, il = np.nonzero(np.triu(gram != 0))
    products = np.stack([gram[ik, il], 2.0 * gram[ik, il]], axis=1)
    both = np.stack([rhs, rhs])
    ref = spectra._nnls_solve_bands(spectra._dense_gram(ik, il, products, 70), both)
    calls = []
    real = nnls_sparse

    def second_band_capped(indptr, indices, data, r, out):
        status = real(indptr, indices, data, r, out)
        calls.append(status.tolist())
        status[1] = 2
        return status

    monkeypatch.setattr(spectra, "nnls_sparse", second_band_capped)
    with cdeblend.thread_limit(1):  # one call for both bands (with threads: one per band)
        got = spectra._nnls_solve_sparse(ik, il, products, both)
    assert calls == [[0, 0]]
    np.testing.assert_array_equal(got[1], ref[1])  # the dense path's own answer
    np.testing.assert_allclose(got[0], ref[0], rtol=0, atol=1e-9 * np.abs(ref[0]).max())


def test_sparse_arguments_are_validated():
    indptr, indices = np.array([0, 1, 2], dtype=np.intp), np.array([0, 1], dtype=np.intp)
    data, r, out = np.ones((1, 2)), np.ones((1, 2)), np.empty((1, 2))
    with pytest.raises(ValueError, match="indptr must be a 1-D intp"):
        nnls_sparse(indptr.astype(np.int32), indices, data, r, out)
    with pytest.raises(ValueError, match="indices must be a 1-D intp"):
        nnls_sparse(indptr, indices[None], data, r, out)
    with pytest.raises(ValueError, match="indptr must run"):
        nnls_sparse(np.array([0, 1, 3], dtype=np.intp), indices, data, r, out)
    with pytest.raises(ValueError, match="non-decreasing"):
        nnls_sparse(
            np.array([0, 2, 1, 2], dtype=np.intp), indices, data, np.ones((1, 3)), np.empty((1, 3))
        )
    with pytest.raises(ValueError, match="outside"):
        nnls_sparse(indptr, np.array([0, 2], dtype=np.intp), data, r, out)
    with pytest.raises(ValueError, match="data must have shape"):
        nnls_sparse(indptr, indices, np.ones((1, 3)), r, out)
    with pytest.raises(ValueError, match="data must be"):
        nnls_sparse(indptr, indices, data.astype(np.float32), r, out)
    with pytest.raises(ValueError, match="rhs must have shape"):
        nnls_sparse(indptr, indices, data, np.ones((2, 2)), out)
    with pytest.raises(ValueError, match="out must have shape"):
        nnls_sparse(indptr, indices, data, r, np.empty((1, 3)))
    read_only = np.empty((1, 2))
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="out must be"):
        nnls_sparse(indptr, indices, data, r, read_only)
    np.testing.assert_array_equal(nnls_sparse(indptr, indices, data, r, out), [0])
    np.testing.assert_array_equal(out, 1.0)  # G = I


def test_sparse_duplicates_share_one_sed():
    """Identical components (two peaks on one pixel) make G singular: they are solved as one
    and split equally; the objective is the dense (eigen) path's minimum."""
    rng = np.random.default_rng(31)
    a = sparse_design(rng, 90, 48, "single")
    design = np.column_stack([a, a[:, 10], a[:, 40], a[:, 40]])  # 10 twice, 40 three times
    d = a @ rng.uniform(0.5, 2.0, size=90) + rng.normal(size=a.shape[0])
    gram, rhs = design.T @ design, design.T @ d
    ik, il = np.nonzero(np.triu(gram != 0))
    got = spectra._nnls_solve_sparse(ik, il, gram[ik, il][:, None], rhs[None])[0]
    rep = spectra._duplicates(ik, il, gram[ik, il][:, None], 93)
    np.testing.assert_array_equal(rep[[10, 90, 40, 91, 92]], [10, 10, 40, 40, 40])
    assert np.all(np.delete(rep, [90, 91, 92]) == np.arange(90))
    assert got[10] == got[90] and got[40] == got[91] == got[92]
    merged = got[:90].copy()
    merged[10] += got[90]
    merged[40] += got[91] + got[92]
    ref = nnls(a, d, maxiter=5000)[0]  # the unique minimiser without the copies
    np.testing.assert_allclose(merged, ref, rtol=0, atol=1e-9 * ref.max())
    dense = spectra._nnls_solve_bands(gram[None], rhs[None])[0]

    def objective(x):
        return x @ gram @ x - 2 * rhs @ x

    assert objective(got) == pytest.approx(objective(dense), rel=1e-10)


def test_sparse_bands_on_threads_match_one_thread():
    """The SED fit's sparse solve with its bands on threads gives the one-thread results bit
    for bit (each band is solved alone)."""
    rng = np.random.default_rng(11)
    a = sparse_design(rng, 90, 60, "single")
    grams, rhss = [], []
    for _ in range(5):
        scaled = a * rng.uniform(0.5, 2.0, size=a.shape[1])
        d = scaled @ rng.normal(size=90) + rng.normal(size=a.shape[0])
        grams.append(scaled.T @ scaled)
        rhss.append(scaled.T @ d)
    ik, il = np.nonzero(np.triu(np.any(np.array(grams) != 0, axis=0)))
    products = np.stack([g[ik, il] for g in grams], axis=1)
    rhs = np.array(rhss)
    with cdeblend.thread_limit(1):
        one = spectra._nnls_solve_sparse(ik, il, products, rhs)
    with cdeblend.thread_limit(3):
        three = spectra._nnls_solve_sparse(ik, il, products, rhs)
    np.testing.assert_array_equal(three, one)
    ref = spectra._nnls_solve_bands(spectra._dense_gram(ik, il, products, 90), rhs)
    np.testing.assert_allclose(one, ref, rtol=0, atol=1e-8 * np.abs(ref).max())
