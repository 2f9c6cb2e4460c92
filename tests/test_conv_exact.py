"""The products' exact convolutions (``_convolve_cy.conv_exact``, ``convolve_exact_into``):
a slow per-tap reference, exact zeros off the true support, and the same bits on one thread
or two (each model on one thread with its own buffers), with or without memory for them."""

from __future__ import annotations

import numpy as np
import pytest
from cdeblend._convolve_cy import (
    OPENMP,
    conv_exact,
    exact_memory_faults,
    exact_parallel_work,
    fast_len,
    kernel_spectrum,
)

from cdeblend import _exact, _threads
from cdeblend.convolution import Convolver


def random_kernels(rng, bands: int, kh: int, kw: int, zero_taps: bool = False) -> np.ndarray:
    """Odd positive kernels (every tap non-zero unless ``zero_taps``: a few rows and
    columns cut, as a kernel cut to a disc)."""
    k = rng.uniform(0.1, 1.0, size=(bands, kh, kw))
    if zero_taps:
        k[:, :2, :] = 0
        k[0, :, -2:] = 0
    return k / k.sum(axis=(1, 2), keepdims=True)


def sparse_model(rng, bands: int, h: int, w: int) -> np.ndarray:
    """A (bands, h, w) model with many zeros (isolated pixels, an empty band when there are
    several), so that the support cut matters."""
    m = rng.random((bands, h, w)) * (rng.random((bands, h, w)) < 0.2)
    if bands > 1:
        m[rng.integers(bands)] = 0
    return m


def reference(model: np.ndarray, kernels: np.ndarray, oy: int, ox: int, gh: int, gw: int):
    """Same-size convolution of ``model`` placed at ``(oy, ox)`` of a zero (gh, gw) grid, one
    shifted copy per tap; and its support (the non-zero pixels dilated by the non-zero
    taps)."""
    nb, h, w = model.shape
    kh, kw = kernels.shape[1:]
    ry, rx = kh // 2, kw // 2
    pad = np.zeros((nb, gh + 2 * ry, gw + 2 * rx))
    pad[:, ry + oy : ry + oy + h, rx + ox : rx + ox + w] = model
    nz = (pad != 0).astype(float)
    conv = np.zeros((nb, gh, gw))
    hits = np.zeros((nb, gh, gw))
    for ky in range(kh):
        for kx in range(kw):
            # out[y, x] += K[ky, kx] * grid[y - (ky - ry), x - (kx - rx)]
            sl = (
                slice(None),
                slice(2 * ry - ky, 2 * ry - ky + gh),
                slice(2 * rx - kx, 2 * rx - kx + gw),
            )
            conv += kernels[:, ky, kx, None, None] * pad[sl]
            hits += (kernels[:, ky, kx] != 0)[:, None, None] * nz[sl]
    return conv, hits > 0


def make_items(rng, nb: int, ry: int, rx: int, grids: list[tuple[int, int]], per_grid: int):
    """Random items on the given FFT grids: the flat sources, the (K, 9) table, the (G, 3)
    grids, the models and their placements (for the reference)."""
    rows, models, grid_rows, o, oo = [], [], [], 0, 0
    for g, (n0, n1) in enumerate(grids):
        widest = 0
        for _ in range(per_grid):
            gh = int(rng.integers(max(n0 - ry - 6, 2 * ry + 1), n0 - ry + 1))
            gw = int(rng.integers(max(n1 - rx - 6, 2 * rx + 1), n1 - rx + 1))
            h = int(rng.integers(1, gh - 2 * ry + 1))
            w = int(rng.integers(1, gw - 2 * rx + 1))
            oy = int(rng.integers(0, gh - h + 1))
            ox = int(rng.integers(0, gw - w + 1))
            model = sparse_model(rng, nb, h, w)
            rows.append((o, h, w, oy, ox, oo, gh, gw, g))
            models.append((model, oy, ox, gh, gw))
            o += model.size
            oo += nb * gh * gw
            widest = max(widest, gw)
        grid_rows.append((n0, n1, widest))
    src = np.concatenate([m[0].ravel() for m in models])
    return (
        src,
        np.array(rows, dtype=np.intp),
        np.array(grid_rows, dtype=np.intp),
        models,
        oo,
    )


def run(src, table, grids, spectra, total, dtype, ry, rx, support, threads):
    out = np.full(total, np.nan, dtype=dtype)  # every item's block must be written
    used = conv_exact(src, table, grids, spectra, out, ry, rx, support, threads)
    return out, used


@pytest.fixture
def parallel_always():
    """Every call with two or more items goes parallel (the tests' inputs are small)."""
    old = exact_parallel_work(0.0)
    yield
    exact_parallel_work(old)


@pytest.fixture
def no_memory_faults():
    yield
    exact_memory_faults(-1, -1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("bands", "seed"), [(1, 0), (2, 1), (3, 2), (5, 3)])
def test_two_threads_give_the_bits_of_one_and_the_reference(bands, seed, dtype, parallel_always):
    rng = np.random.default_rng(seed)
    kernels = random_kernels(rng, bands, 7, 9)
    ry, rx = 3, 4
    grid_list = [(fast_len(n), fast_len(m)) for n, m in ((30, 34), (20, 18), (45, 27))]
    src, table, grids, models, total = make_items(rng, bands, ry, rx, grid_list, per_grid=4)
    spectra = tuple(kernel_spectrum(kernels, n0, n1) for n0, n1 in grid_list)
    one, used1 = run(src, table, grids, spectra, total, dtype, ry, rx, True, 1)
    two, used2 = run(src, table, grids, spectra, total, dtype, ry, rx, True, 2)
    assert used1 == 1
    assert used2 == (2 if OPENMP else 1)
    assert one.tobytes() == two.tobytes()
    tol = 1e-12 if dtype == np.float64 else 1e-6
    for (model, oy, ox, gh, gw), row in zip(models, table, strict=True):
        got = one[row[5] : row[5] + bands * gh * gw].reshape(bands, gh, gw)
        conv, support = reference(model, kernels, oy, ox, gh, gw)
        assert np.array_equal(got != 0, support & (conv != 0))
        np.testing.assert_allclose(got, conv, rtol=tol, atol=tol * max(np.abs(conv).max(), 1))


def one_grid(rng: np.random.Generator, kernels: np.ndarray, n: int) -> tuple:
    """Three random 2-band models on one (n, n) FFT grid (fast lengths) with its spectra:
    ``(src, table, grids, spectra, total)`` for :func:`run`."""
    grid = (fast_len(n), fast_len(n))
    src, table, grids, _, total = make_items(rng, 2, 2, 2, [grid], per_grid=3)
    return src, table, grids, (kernel_spectrum(kernels, *grid),), total


def test_without_the_cut_the_fft_values_stay(parallel_always):
    """``support=False`` keeps the FFT round-off off the support (tiny, not exact zeros)."""
    rng = np.random.default_rng(7)
    kernels = random_kernels(rng, 2, 5, 5)
    src, table, grids, spectra, total = one_grid(rng, kernels, 24)
    cut, _ = run(src, table, grids, spectra, total, np.float64, 2, 2, True, 2)
    raw, _ = run(src, table, grids, spectra, total, np.float64, 2, 2, False, 2)
    assert np.count_nonzero(raw) > np.count_nonzero(cut)
    np.testing.assert_allclose(raw, cut, atol=1e-14)


def test_small_work_stays_on_one_thread():
    rng = np.random.default_rng(3)
    kernels = random_kernels(rng, 2, 5, 5)
    src, table, grids, spectra, total = one_grid(rng, kernels, 16)
    _, used = run(src, table, grids, spectra, total, np.float32, 2, 2, True, 2)
    assert used == 1  # 3 x 2 x 16 x 16 grid values, far below the threshold
    src, table, grids, spectra, total = one_grid(rng, kernels, 128)
    _, used = run(src, table, grids, spectra, total, np.float32, 2, 2, True, 2)
    assert used == (2 if OPENMP else 1)
    _, used = run(src, table, grids, spectra, total, np.float32, 2, 2, True, 1)
    assert used == 1


@pytest.mark.skipif(not OPENMP, reason="built without OpenMP: one thread only")
def test_fewer_threads_when_memory_runs_out(parallel_always, no_memory_faults):
    rng = np.random.default_rng(11)
    kernels = random_kernels(rng, 3, 5, 7)
    grid_list = [(fast_len(26), fast_len(30)), (fast_len(20), fast_len(20))]
    src, table, grids, _, total = make_items(rng, 3, 2, 3, grid_list, per_grid=5)
    spectra = tuple(kernel_spectrum(kernels, n0, n1) for n0, n1 in grid_list)
    args = (src, table, grids, spectra, total, np.float32, 2, 3, True)
    expect, _ = run(*args, 1)
    # no work buffers for the second thread: it is not started
    exact_memory_faults(buffers=1)
    got, used = run(*args, 2)
    assert used == 1
    assert got.tobytes() == expect.tobytes()
    # no FFT plans for the second thread: its items are done again on the first
    exact_memory_faults(buffers=-1, plans=1)
    got, used = run(*args, 2)
    assert used == 2
    assert got.tobytes() == expect.tobytes()
    # no memory at all: a MemoryError, not a crash or missing values
    exact_memory_faults(plans=0)
    with pytest.raises(MemoryError, match="FFT buffers"):
        run(*args, 2)
    exact_memory_faults(buffers=0, plans=-1)
    with pytest.raises(MemoryError):
        run(*args, 2)


def test_bad_tables_are_rejected():
    rng = np.random.default_rng(5)
    kernels = random_kernels(rng, 2, 5, 5)
    n = fast_len(20)
    src, table, grids, _, total = make_items(rng, 2, 2, 2, [(n, n)], per_grid=2)
    spectra = (kernel_spectrum(kernels, n, n),)
    out = np.zeros(total)
    with pytest.raises(ValueError, match="table must be"):
        conv_exact(src, table[:, :8].copy(), grids, spectra, out, 2, 2, True)
    with pytest.raises(ValueError, match="spectra"):
        conv_exact(src, table, grids, spectra * 2, out, 2, 2, True)
    with pytest.raises(ValueError, match="do not match"):  # no bands
        conv_exact(src, table, grids, (spectra[0][:0],), out, 2, 2, True)
    bad = grids.copy()
    bad[0, :2] = 7  # not 2^a 3^b 5^c
    with pytest.raises(ValueError, match="bad FFT grid"):
        conv_exact(src, table, bad, spectra, out, 2, 2, True)
    with pytest.raises(ValueError, match="do not match"):
        conv_exact(
            src, table, grids, (kernel_spectrum(kernels, n, fast_len(n + 1)),), out, 2, 2, True
        )
    far = table.copy()
    far[1, 3] = far[1, 6]  # the model starts below its output grid
    with pytest.raises(ValueError, match="item 1"):
        conv_exact(src, far, grids, spectra, out, 2, 2, True)
    with pytest.raises(ValueError, match="item 0"):
        conv_exact(src[:1], table, grids, spectra, out, 2, 2, True)
    with pytest.raises(ValueError, match="num_threads"):
        conv_exact(src, table, grids, spectra, out, 2, 2, True, 0)


def box_models(rng, nb: int, frame: tuple[int, int], count: int):
    """Random boxes inside ``frame`` (some small, some nearly the frame) and sparse models
    on them, in convolve_exact_into's flat layout."""
    boxes, models = [], []
    for _ in range(count):
        h = int(rng.integers(1, frame[0]))
        w = int(rng.integers(1, frame[1]))
        boxes.append(
            (int(rng.integers(0, frame[0] - h + 1)), int(rng.integers(0, frame[1] - w + 1)), h, w)
        )
        models.append(sparse_model(rng, nb, h, w))
    sizes = [m.size for m in models]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    return np.concatenate([m.ravel() for m in models]), boxes, models, offsets


@pytest.mark.parametrize("zero_taps", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_convolve_exact_into_on_threads(zero_taps, dtype, parallel_always, monkeypatch):
    """Through the convolver (many box sizes: many FFT grids, in one call or, with a small
    byte budget, several): the bits of one thread, and the reference on each grown box."""
    rng = np.random.default_rng(2 + zero_taps)
    nb, frame = 3, (40, 44)
    kernels = random_kernels(rng, nb, 7, 5, zero_taps)
    conv = Convolver(kernels.astype(dtype), frame)
    conv.pick_mode = lambda *args, **kwargs: "fft"  # the small cases would use the direct loop
    flat, boxes, models, offsets = box_models(rng, nb, frame, 14)
    grown = [conv.grown_box(b)[1] for b in boxes]
    gsizes = [nb * g[2] * g[3] for g in grown]
    goffsets = np.concatenate([[0], np.cumsum(gsizes)[:-1]]).astype(np.intp)

    def convolve(threads: int) -> np.ndarray:
        out = np.full(int(sum(gsizes)), np.nan, dtype=dtype)
        with _threads.thread_limit(threads):
            conv.convolve_exact_into(flat, boxes, offsets, out, goffsets)
        return out

    _threads.set_num_threads(2)
    try:
        one = convolve(1)
        two = convolve(2)
        monkeypatch.setattr(_exact, "_EXACT_BATCH_BYTES", 1)  # one grid per call
        batched = convolve(2)
    finally:
        _threads.set_num_threads(None)
    assert one.tobytes() == two.tobytes() == batched.tobytes()
    tol = 1e-12 if dtype == np.float64 else 1e-6
    for model, box, g, o in zip(models, boxes, grown, goffsets, strict=True):
        ref, support = reference(model, kernels, box[0] - g[0], box[1] - g[1], g[2], g[3])
        got = one[o : o + nb * g[2] * g[3]].reshape(nb, g[2], g[3])
        assert np.array_equal(got != 0, support & (ref != 0))
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * max(np.abs(ref).max(), 1))
