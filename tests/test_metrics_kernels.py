"""The metrics kernels against slow numpy references, the loops they replaced, whose
summation order they follow (so the match is exact): ``_apportion_cy.fisher_pairs`` behind
:func:`cdeblend.metrics.fisher_matrices` and ``_apportion_cy.source_metrics`` behind
:func:`cdeblend.metrics.blend_metrics`."""

from __future__ import annotations

import numpy as np
import pytest

from cdeblend.apportion import FlatStack
from cdeblend.box import overlapping_pairs
from cdeblend.metrics import fisher_matrices


def _reference(shapes: FlatStack, ivar: np.ndarray) -> np.ndarray:
    """The per-pair numpy loop: einsum over the pixels two boxes and the image share."""
    K, B = len(shapes), shapes.bands
    _, H, W = ivar.shape
    F = np.zeros((B, K, K))
    boxes = shapes.boxes
    for k, l_ in overlapping_pairs(boxes).tolist():
        a, b = tuple(int(v) for v in boxes[k]), tuple(int(v) for v in boxes[l_])
        y0, x0 = max(a[0], b[0], 0), max(a[1], b[1], 0)
        y1, x1 = min(a[0] + a[2], b[0] + b[2], H), min(a[1] + a[3], b[1] + b[3], W)
        if y1 <= y0 or x1 <= x0:
            continue
        ck = shapes.get(k)[:, y0 - a[0] : y1 - a[0], x0 - a[1] : x1 - a[1]]
        cl = shapes.get(l_)[:, y0 - b[0] : y1 - b[0], x0 - b[1] : x1 - b[1]]
        v = np.einsum(
            "bij,bij,bij->b", ck.astype(np.float64), cl.astype(np.float64), ivar[:, y0:y1, x0:x1]
        )
        F[:, k, l_] = v
        F[:, l_, k] = v
    return F


def _random_stack(rng, K: int, B: int, H: int, W: int, dtype) -> FlatStack:
    # boxes that reach outside the image on every side, some spanning its whole width
    y0 = rng.integers(-8, H - 2, K)
    x0 = rng.integers(-8, W - 2, K)
    h = rng.integers(1, H + 10, K)
    w = rng.integers(1, W + 10, K)
    w[: K // 3] = W + 2 * 8
    x0[: K // 3] = -8
    boxes = np.stack([y0, x0, h, w], axis=1).astype(np.int64)
    flat = rng.normal(size=int((B * h * w).sum())).astype(dtype)
    return FlatStack(flat, boxes, B)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fisher_matrices_equal_the_einsum_loop(seed, dtype):
    rng = np.random.default_rng(seed)
    B, H, W = 3, int(rng.integers(5, 40)), int(rng.integers(5, 40))
    shapes = _random_stack(rng, int(rng.integers(1, 12)), B, H, W, dtype)
    ivar = rng.uniform(0, 2, size=(B, H, W))
    ivar[rng.random((B, H, W)) < 0.2] = 0.0  # pixels without data
    got = fisher_matrices(shapes, ivar)
    # the kernel adds in the einsum loop's order (bit-identical with numpy 2.4, which
    # bench/fingerprint.py checks); a tolerance keeps the test to the arithmetic, not to one
    # numpy version's summation order
    np.testing.assert_allclose(got, _reference(shapes, ivar), rtol=1e-12, atol=1e-12)
    # and it is a Gram matrix: symmetric
    np.testing.assert_array_equal(got, got.transpose(0, 2, 1))


def test_fisher_matrix_of_two_disjoint_shapes_is_diagonal():
    ivar = np.full((1, 10, 10), 4.0)
    boxes = np.array([[0, 0, 2, 2], [5, 5, 2, 2]], dtype=np.int64)
    shapes = FlatStack(np.ones(8), boxes, 1)
    # sum of 1 * 1 * 4 over the 4 pixels of each box; no shared pixel
    np.testing.assert_array_equal(fisher_matrices(shapes, ivar)[0], [[16.0, 0.0], [0.0, 16.0]])


@pytest.mark.parametrize("seed", range(3))
def test_fisher_matrices_of_large_boxes_equal_the_einsum_loop(seed):
    # more than numpy's 8192-value buffer per band: the sums are made in chunks
    rng = np.random.default_rng(100 + seed)
    B, H, W = 2, 150, 140
    shapes = _random_stack(rng, 4, B, H, W, np.float32)
    ivar = rng.uniform(0, 2, size=(B, H, W))
    np.testing.assert_allclose(
        fisher_matrices(shapes, ivar), _reference(shapes, ivar), rtol=1e-12, atol=1e-9
    )


def _inside_stack(rng, n: int, B: int, H: int, W: int, dtype) -> FlatStack:
    """Boxes inside the (H, W) image, some on its edges, values of both signs."""
    h = rng.integers(1, H + 1, n)
    w = rng.integers(1, W + 1, n)
    y0 = rng.integers(0, H - h + 1)
    x0 = rng.integers(0, W - w + 1)
    boxes = np.stack([y0, x0, h, w], axis=1).astype(np.int64)
    flat = rng.normal(size=int((B * h * w).sum())).astype(dtype)
    return FlatStack(flat, boxes, B)


@pytest.mark.parametrize("seed", range(8))
def test_source_metrics_kernel_equals_the_numpy_loop(seed):
    # _apportion_cy.source_metrics behind blend_metrics against the numpy loop it replaces
    from cdeblend.source_metrics import per_source_metrics, per_source_metrics_numpy

    rng = np.random.default_rng(200 + seed)
    B, H, W, n = int(rng.integers(1, 5)), int(rng.integers(3, 120)), int(rng.integers(3, 90)), 5
    models = _inside_stack(rng, n, B, H, W, np.float64)
    # an empty model footprint (no positive pixel) and an all-positive one
    models.get(0)[...] = -np.abs(models.get(0))
    models.get(1)[...] = np.abs(models.get(1))
    conv = _inside_stack(rng, n, B, H, W, np.float32)
    conv.get(2)[...] = -1.0  # an empty convolved footprint
    total = rng.normal(size=(B, H, W))
    has_data = rng.random((B, H, W)) > 0.3
    chi = np.where(has_data, rng.exponential(size=(B, H, W)), 0.0)
    got = per_source_metrics(models, total, conv, has_data, chi)
    want = per_source_metrics_numpy(models, total, conv, has_data, chi)
    for g, e in zip(got, want, strict=True):  # sums of both signs: an absolute floor
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blend_chi_kernel_equals_the_numpy_calls(seed, dtype):
    # _apportion_cy.blend_chi behind blend_metrics against the numpy path it replaces
    from cdeblend.source_metrics import chi_image

    rng = np.random.default_rng(300 + seed)
    B, H, W = int(rng.integers(1, 5)), int(rng.integers(3, 60)), int(rng.integers(3, 60))
    conv = _inside_stack(rng, 6, B, H, W, np.float32)
    images = rng.normal(size=(B, H, W)).astype(dtype)
    weights = rng.uniform(-0.5, 2.0, size=(B, H, W)).astype(dtype)  # <= 0: no data
    got = chi_image(conv, images, weights, inside=True)
    want = chi_image(conv, images, weights, inside=False)
    np.testing.assert_allclose(got, want, rtol=1e-5 if dtype == np.float32 else 1e-12)
    assert (got[weights <= 0] == 0).all() and (got >= 0).all()


def test_source_metrics_kernel_of_a_null_source():
    # a source without pixels (an empty box at its peak) has no flux, footprint or data
    from cdeblend.source_metrics import per_source_metrics, per_source_metrics_numpy

    rng = np.random.default_rng(7)
    B, H, W = 2, 20, 30
    boxes = np.array([[3, 4, 5, 6], [10, 10, 0, 0]], dtype=np.int64)
    models = FlatStack(np.abs(rng.normal(size=B * 30)), boxes, B)
    conv = FlatStack(np.abs(rng.normal(size=B * 30)).astype(np.float32), boxes, B)
    total = np.abs(rng.normal(size=(B, H, W)))
    has_data = np.ones((B, H, W), dtype=bool)
    chi = rng.exponential(size=(B, H, W))
    got = per_source_metrics(models, total, conv, has_data, chi)
    for g, e in zip(got, per_source_metrics_numpy(models, total, conv, has_data, chi), strict=True):
        np.testing.assert_array_equal(g, e)
    blendedness, overlap, fraction, max_overlap, chi2, coverage, edge = got
    assert np.isnan(blendedness[1]).all() and np.isnan(chi2[1]) and np.isnan(coverage[1]).all()
    assert (overlap[1] == 0).all() and not edge[1]
    # the data of the first source's footprint: every value, so coverage 1
    np.testing.assert_array_equal(coverage[0], 1.0)


def test_grown_boxes_equal_the_convolvers_one_by_one():
    # metrics._grown_boxes (all boxes at once) against Convolver.grown_box per box
    from cdeblend.convolution import Convolver
    from cdeblend.metrics import _grown_boxes

    rng = np.random.default_rng(5)
    conv = Convolver(np.ones((2, 7, 5), dtype=np.float32), (30, 40))
    boxes = np.stack(
        [
            rng.integers(-10, 35, 200),
            rng.integers(-10, 45, 200),
            rng.integers(0, 20, 200),  # some empty
            rng.integers(0, 20, 200),
        ],
        axis=1,
    ).astype(np.int64)
    want = [
        conv.grown_box(tuple(b))[1] if b[2] * b[3] else (b[0], b[1], 0, 0) for b in boxes.tolist()
    ]
    np.testing.assert_array_equal(_grown_boxes(boxes, conv), np.array(want, dtype=np.int64))


def test_flux_sigma_of_all_bands_equals_band_by_band():
    # metrics._flux_sigma_bands (every band in two numpy calls when every eigenvalue is
    # kept) against _flux_sigma band by band, to the bit; a band with a (near) zero
    # eigenvalue takes the band-by-band path and gives NaN where a gradient has a
    # null-space part
    from cdeblend.metrics import _flux_sigma, _flux_sigma_bands

    rng = np.random.default_rng(8)
    for _ in range(300):
        B, n, K = (int(v) for v in rng.integers(1, [8, 30, 200]))
        w = rng.random((B, K)) + 0.05
        proj, Gl = rng.normal(size=(2, B, n, K))
        if rng.random() < 0.3:
            w[rng.integers(B), rng.integers(K)] = 1e-14  # dropped: the band-by-band path
        want = np.stack(
            [_flux_sigma(w[b], proj[b], Gl[b], np.zeros(n, dtype=bool)) for b in range(B)],
            axis=1,
        )
        got = _flux_sigma_bands(w, proj, Gl)
        assert got.shape == (n, B)
        np.testing.assert_array_equal(got, want)
