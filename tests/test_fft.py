"""The C FFT core (_fft.c) through its Cython wrappers, against numpy references.

The references are the obvious ones: numpy.fft for the transforms and a direct sum over the
kernel taps for the convolutions.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdeblend import _adam_cy
from cdeblend import _convolve_cy as C

SMOOTH = [
    1,
    2,
    3,
    4,
    5,
    6,
    8,
    9,
    10,
    12,
    15,
    16,
    18,
    20,
    25,
    27,
    30,
    32,
    36,
    40,
    45,
    48,
    50,
    54,
    60,
    64,
    75,
    81,
    96,
    100,
    125,
    128,
    243,
    256,
    1024,
]
TOL = {np.float32: 2e-6, np.float64: 1e-13}


def direct_conv(src: np.ndarray, kernel: np.ndarray, oy: int, ox: int, gh: int, gw: int):
    """src placed at (oy, ox) of a zero (gh, gw) frame, convolved with the centred kernel
    (zero outside), by summing over the taps."""
    h, w = src.shape
    kh, kw = kernel.shape
    frame = np.zeros((gh + kh, gw + kw))
    frame[kh // 2 + oy : kh // 2 + oy + h, kw // 2 + ox : kw // 2 + ox + w] = src
    out = np.zeros((gh, gw))
    for dy in range(kh):
        for dx in range(kw):
            # out[y, x] += K[dy, dx] * frame_src[y - (dy - ry), x - (dx - rx)]
            out += (
                kernel[dy, dx]
                * frame[kh - 1 - dy : kh - 1 - dy + gh, kw - 1 - dx : kw - 1 - dx + gw]
            )
    return out


def test_fast_len_is_the_next_5_smooth_number():
    def smooth(n):
        for p in (2, 3, 5):
            while n % p == 0:
                n //= p
        return n == 1

    for n in range(1, 2000):
        m = C.fast_len(n)
        assert m >= n and smooth(m)
        assert not any(smooth(k) for k in range(n, m))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SMOOTH)
def test_fft_along_axis0_matches_numpy(n, dtype):
    rng = np.random.default_rng(n)
    work = C.FFTWork(n, 8, 8, dtype == np.float64)
    for V in (1, 5, 16, 33, 300):  # 300 columns: the cache-strip path for long transforms
        x = rng.normal(size=(n, V)) + 1j * rng.normal(size=(n, V))
        re = np.ascontiguousarray(x.real, dtype=dtype)
        im = np.ascontiguousarray(x.imag, dtype=dtype)
        ref = np.fft.fft(re.astype(np.float64) + 1j * im, axis=0)
        C.fft_cols(work, 0, re, im)
        err = np.abs(re + 1j * im - ref).max() / np.abs(ref).max()
        assert err < TOL[dtype], (n, V, err)


def test_fft_rejects_lengths_with_other_factors():
    with pytest.raises(ValueError, match="2\\^a 3\\^b 5\\^c"):
        C.FFTWork(14, 8, 8, False)
    with pytest.raises(ValueError):
        C.FFTWork(8, 8, 9, False)  # wider than the grid


def test_kernel_spectrum_is_the_dft_of_the_wrapped_kernel():
    rng = np.random.default_rng(3)
    k = rng.normal(size=(3, 7, 9))
    for n0, n1 in ((12, 15), (5, 4), (16, 10)):  # the last two fold taps over
        fk = C.kernel_spectrum(k, n0, n1)
        for b in range(3):
            pad = np.zeros((n0, n1))
            for y in range(7):
                for x in range(9):
                    pad[(y - 3) % n0, (x - 4) % n1] += k[b, y, x]
            f = np.fft.fft2(pad)
            np.testing.assert_allclose(fk[b, 0], f.real.T, atol=1e-12)
            np.testing.assert_allclose(fk[b, 1], f.imag.T, atol=1e-12)


def test_kernel_spectrum_of_taps_at_both_row_ends_matches_numpy():
    """The first pass runs only on the columns the wrapped taps reach (both ends of the
    rows): odd and even band counts, 1-pixel and wide kernels, grids just wider than the
    kernel and much wider, against numpy's DFT; float32 is the float64 result rounded."""
    rng = np.random.default_rng(11)
    for nb, kh, kw, n0, n1 in (
        (5, 41, 41, 60, 45),
        (4, 3, 5, 9, 6),
        (1, 1, 1, 5, 8),
        (3, 5, 3, 30, 4),
        (2, 7, 11, 8, 12),
    ):
        k = rng.normal(size=(nb, kh, kw))
        fk = C.kernel_spectrum(k, n0, n1)
        pad = np.zeros((nb, n0, n1))
        for y in range(kh):
            for x in range(kw):
                pad[:, (y - kh // 2) % n0, (x - kw // 2) % n1] += k[:, y, x]
        f = np.fft.fft2(pad)
        scale = np.abs(f).max()
        np.testing.assert_allclose(fk[:, 0], f.real.transpose(0, 2, 1), atol=1e-12 * scale)
        np.testing.assert_allclose(fk[:, 1], f.imag.transpose(0, 2, 1), atol=1e-12 * scale)
        f32 = C.kernel_spectrum(k, n0, n1, np.float32)
        np.testing.assert_array_equal(f32, fk.astype(np.float32))


@settings(max_examples=150, deadline=None)
@given(
    nb=st.integers(1, 6),
    shared=st.booleans(),
    h=st.integers(1, 30),
    w=st.integers(1, 30),
    ry=st.integers(0, 7),
    rx=st.integers(0, 7),
    grown=st.booleans(),
    adjoint=st.booleans(),
    double=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_conv_cube_matches_the_direct_sum(nb, shared, h, w, ry, rx, grown, adjoint, double, seed):
    """Same-size (and grown-box) convolution of every band, two bands per transform or one
    plane with every kernel, and the adjoint (flipped kernels)."""
    rng = np.random.default_rng(seed)
    dtype = np.float64 if double else np.float32
    oy, ox = (ry, rx) if grown else (0, 0)
    gh, gw = h + 2 * oy, w + 2 * ox
    n0, n1 = C.fast_len(gh + ry), C.fast_len(gw + rx)
    kern = rng.normal(size=(nb, 2 * ry + 1, 2 * rx + 1))
    src = rng.normal(size=(1 if shared else nb, h, w)).astype(dtype)
    fk = C.kernel_spectrum(kern, n0, n1).astype(dtype)
    work = C.FFTWork(n0, n1, gw, double)
    out = np.full((nb, gh, gw), np.nan, dtype)
    C.conv_cube(work, src, oy, ox, fk, out, adjoint)
    for b in range(nb):
        k = kern[b, ::-1, ::-1] if adjoint else kern[b]
        ref = direct_conv(src[0 if shared else b].astype(np.float64), k, oy, ox, gh, gw)
        scale = max(np.abs(ref).max(), 1e-300)
        assert np.abs(out[b] - ref).max() / scale < 50 * TOL[dtype]


@settings(max_examples=40, deadline=None)
@given(nb=st.integers(1, 6), K=st.integers(1, 6), double=st.booleans(), seed=st.integers(0, 999))
def test_conv_planes_equals_conv_cube_plane_by_plane(nb, K, double, seed):
    rng = np.random.default_rng(seed)
    dtype = np.float64 if double else np.float32
    kh, kw = 2 * int(rng.integers(0, 5)) + 1, 2 * int(rng.integers(0, 5)) + 1
    shapes = [(int(rng.integers(1, 15)), int(rng.integers(1, 15))) for _ in range(K)]
    gh = max(s[0] for s in shapes) + kh - 1
    gw = max(s[1] for s in shapes) + kw - 1
    n0, n1 = C.fast_len(gh + kh // 2), C.fast_len(gw + kw // 2)
    fk = C.kernel_spectrum(rng.normal(size=(nb, kh, kw)), n0, n1).astype(dtype)
    work = C.FFTWork(n0, n1, gw, double)
    srcs = [rng.normal(size=s).astype(dtype) for s in shapes]
    src_table, out_table, o, oo = [], [], 0, 0
    for h, w in shapes:
        src_table.append((o, h, w, kh // 2, kw // 2))
        out_table.append((oo, h + kh - 1, w + kw - 1))
        o += h * w
        oo += nb * (h + kh - 1) * (w + kw - 1)
    out = np.zeros(oo, dtype)
    C.conv_planes(
        work,
        np.concatenate([s.ravel() for s in srcs]),
        np.array(src_table, np.intp),
        fk,
        out,
        np.array(out_table, np.intp),
    )
    for i, (h, w) in enumerate(shapes):
        ref = np.empty((nb, h + kh - 1, w + kw - 1), dtype)
        C.conv_cube(work, srcs[i][None], kh // 2, kw // 2, fk, ref, False)
        got = out[out_table[i][0] : out_table[i][0] + ref.size].reshape(ref.shape)
        np.testing.assert_allclose(got, ref, rtol=0, atol=20 * TOL[dtype] * np.abs(ref).max())


def test_conv_checks_its_arguments():
    work = C.FFTWork(16, 16, 12, False)
    fk = C.kernel_spectrum(np.ones((2, 3, 3)), 16, 16).astype(np.float32)
    src = np.ones((2, 10, 10), np.float32)
    out = np.empty((2, 10, 10), np.float32)
    with pytest.raises(TypeError, match="precision"):
        C.conv_cube(
            work, src.astype(np.float64), 0, 0, fk.astype(np.float64), out.astype(np.float64), False
        )
    with pytest.raises(ValueError, match="does not fit"):
        C.conv_cube(work, src, 0, 5, fk, out, False)  # 5 + 10 columns > width 12
    with pytest.raises(ValueError, match="kernel transforms"):
        C.conv_cube(work, src, 0, 0, fk[:1], out, False)
    with pytest.raises(ValueError, match="planes"):
        C.conv_cube(work, np.ones((3, 10, 10), np.float32), 0, 0, fk, out, False)
    with pytest.raises(ValueError, match="plane 0"):
        C.conv_planes(
            work,
            np.ones(10, np.float32),
            np.array([[0, 4, 4, 0, 0]], np.intp),
            fk,
            np.zeros(100, np.float32),
            np.array([[0, 6, 6]], np.intp),
        )


def _half_width_reference(plane, kernel_grid, adjoint):
    """Circular convolution of the plane (zero padded to the grid) with the grid's kernel
    (the conjugate spectrum for the adjoint), by numpy's complex FFT, cropped to the plane."""
    n0, n1 = kernel_grid.shape
    h, w = plane.shape
    pad = np.zeros((n0, n1))
    pad[:h, :w] = plane
    f = np.fft.fft2(kernel_grid)
    return np.fft.ifft2(np.fft.fft2(pad) * (np.conj(f) if adjoint else f)).real[:h, :w]


@settings(max_examples=120, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    grow0=st.integers(0, 12),
    grow1=st.integers(0, 12),
    adjoint=st.booleans(),
    double=st.booleans(),
    parts=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_half_width_real_convolution_matches_numpy(
    h, w, grow0, grow1, adjoint, double, parts, seed
):
    """The fit's lone band (an odd band count's last one) convolved through a complex
    transform of half the grid width (even and odd columns packed): numpy's full complex
    convolution on random planes and kernels, small, non-square and odd-sized planes on
    even grid widths; and the same bits however the phases are split (the threads)."""
    rng = np.random.default_rng(seed)
    dtype = np.float64 if double else np.float32
    n0 = C.fast_len(h + grow0)
    n1 = C.fast_len(w + grow1)
    while n1 % 2:
        n1 = C.fast_len(n1 + 1)
    plane = rng.normal(size=(h, w)).astype(dtype)
    kernel_grid = rng.normal(size=(n0, n1))
    f = np.fft.fft2(kernel_grid)
    fk = np.stack([f.real.T, f.imag.T]).astype(dtype)
    out = _adam_cy.real_convolve(plane, fk, n0, n1, adjoint, parts)
    ref = _half_width_reference(plane.astype(np.float64), kernel_grid, adjoint)
    err = np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-300)
    assert err < 50 * TOL[dtype], err
    np.testing.assert_array_equal(out, _adam_cy.real_convolve(plane, fk, n0, n1, adjoint, 1))


def test_half_width_real_convolution_checks_its_arguments():
    fk = np.zeros((2, 6, 4))
    with pytest.raises(ValueError, match="does not fit"):
        _adam_cy.real_convolve(np.zeros((3, 3)), np.zeros((2, 5, 4)), 4, 5)
    with pytest.raises(ValueError, match="fk must have shape"):
        _adam_cy.real_convolve(np.zeros((3, 3)), fk[:, :4], 4, 6)
    with pytest.raises(TypeError, match="plane"):
        _adam_cy.real_convolve(np.zeros((3, 3), np.int64), fk, 4, 6)
    with pytest.raises(ValueError, match="parts"):
        _adam_cy.real_convolve(np.zeros((3, 3)), fk, 4, 6, False, 0)
