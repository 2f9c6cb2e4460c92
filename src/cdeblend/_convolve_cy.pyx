# cython: language_level=3
"""Direct (real-space) multi-band convolution and the fused weighted residual.

These kernels trust their inputs: ``cdeblend.observation`` checks shapes, dtypes and
contiguity before calling them. Every loop runs without the GIL.

Convolution convention (the "same-size" linear convolution of the spec, zero outside the
arrays): with the kernel centre at ``(ry, rx) = (kh // 2, kw // 2)``,

    out[b, y, x] += sum_{ky, kx} K[b, ky, kx] * src[b', y - oy - (ky - ry), x - ox - (kx - rx)]

where ``(oy, ox)`` is the position of the source grid's origin in the output grid and ``b'`` is
``b`` (or 0 when the source has a single plane that is shared by every band). The adjoint of
this operation is the same call with the kernel flipped in y and x and the offsets negated.
"""

cimport cython
from cython cimport floating


@cython.boundscheck(False)
@cython.wraparound(False)
def convolve_direct(
    const floating[:, :, ::1] src,
    const floating[:, :, ::1] kernel,
    floating[:, :, ::1] out,
    Py_ssize_t oy=0,
    Py_ssize_t ox=0,
):
    """Accumulate the direct convolution of ``src`` with ``kernel`` into ``out``.

    Parameters
    ----------
    src : (Bs, h, w) array
        Input planes, ``Bs`` equal to the number of bands or 1 (shared by all bands).
    kernel : (B, kh, kw) array
        Odd-sized kernels, one per band.
    out : (B, H, W) array
        Accumulated in place (the caller zeroes it when needed).
    oy, ox : int
        Position of ``src[:, 0, 0]`` in the grid of ``out``.
    """
    cdef Py_ssize_t nb = out.shape[0], H = out.shape[1], W = out.shape[2]
    cdef Py_ssize_t h = src.shape[1], w = src.shape[2]
    cdef Py_ssize_t kh = kernel.shape[1], kw = kernel.shape[2]
    cdef Py_ssize_t ry = kh // 2, rx = kw // 2
    cdef bint shared = src.shape[0] == 1
    cdef Py_ssize_t b, bs, y, yin, ky, kx, sx, x, xlo, xhi
    cdef floating v
    with nogil:
        for b in range(nb):
            bs = 0 if shared else b
            for y in range(H):
                for ky in range(kh):
                    # source row that tap row ky brings to output row y
                    yin = y - oy - (ky - ry)
                    if yin < 0 or yin >= h:
                        continue
                    for kx in range(kw):
                        v = kernel[b, ky, kx]
                        if v == 0:
                            continue
                        # source column = x - sx; keep both x and x - sx in range
                        sx = ox + kx - rx
                        xlo = sx if sx > 0 else 0
                        xhi = sx + w if sx + w < W else W
                        for x in range(xlo, xhi):
                            out[b, y, x] += v * src[bs, yin, x - sx]


@cython.boundscheck(False)
@cython.wraparound(False)
def weighted_residual(
    const floating[:, :, ::1] model_conv,
    const floating[:, :, ::1] images,
    const floating[:, :, ::1] weights,
    floating[:, :, ::1] residual,
    bint store=True,
):
    """Return ``0.5 * sum(w * (images - model_conv)^2)`` and store ``w * (model_conv - images)``.

    ``model_conv`` and ``residual`` may be larger than ``images`` (e.g. zero-padded FFT
    buffers): only their ``[:, :H, :W]`` corner is used. The sum is accumulated in double precision in a fixed order (deterministic). With
    ``store=False`` the residual array is left untouched (loss only).
    """
    cdef Py_ssize_t nb = images.shape[0], H = images.shape[1], W = images.shape[2]
    cdef Py_ssize_t b, y, x
    cdef double total = 0.0, row
    cdef floating d, r
    with nogil:
        for b in range(nb):
            for y in range(H):
                row = 0.0
                for x in range(W):
                    d = model_conv[b, y, x] - images[b, y, x]
                    r = weights[b, y, x] * d
                    if store:
                        residual[b, y, x] = r
                    row += <double>d * <double>r
                total += row
    return 0.5 * total
