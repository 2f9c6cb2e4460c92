# cython: language_level=3
"""Flux re-apportioning kernels (shared by the single-band and multi-band deblenders).

Templates (single band) or convolved source models (multi band) are passed in the "flat"
layout: row ``i`` holds the ``B * h_i * w_i`` values of its box ``boxes[i] = (y0, x0, h, w)``
in C order, rows concatenated, ``offsets[i]`` its start. Boxes are in the frame of the
image and may reach outside it; the outside part is ignored. Negative template values
count as zero, so that the children add up to the image wherever the templates' sum is
positive. Inputs are trusted: ``cdeblend.apportion`` validates them.
"""

from libc.stdint cimport int64_t, uint8_t

ctypedef fused real:
    float
    double


cdef inline void _clip_box(const int64_t[:, ::1] boxes, Py_ssize_t i, Py_ssize_t H,
                           Py_ssize_t W, Py_ssize_t* ya, Py_ssize_t* yb, Py_ssize_t* xa,
                           Py_ssize_t* xb) noexcept nogil:
    """Rows [ya, yb) and columns [xa, xb) of the image covered by box i."""
    ya[0] = max(boxes[i, 0], 0)
    yb[0] = min(boxes[i, 0] + boxes[i, 2], H)
    xa[0] = max(boxes[i, 1], 0)
    xb[0] = min(boxes[i, 1] + boxes[i, 3], W)


def template_sum(const real[::1] flat, const int64_t[::1] offsets,
                 const int64_t[:, ::1] boxes, const uint8_t[:, ::1] mask,
                 double[:, :, ::1] tsum):
    """Accumulate ``tsum[b, y, x] += max(0, T_i[b, y, x])`` over all templates, on ``mask``."""
    cdef Py_ssize_t B = tsum.shape[0], H = tsum.shape[1], W = tsum.shape[2]
    cdef Py_ssize_t n = boxes.shape[0]
    cdef Py_ssize_t i, b, y, x, ya, yb, xa, xb, h, w, base
    cdef double t
    with nogil:
        for i in range(n):
            _clip_box(boxes, i, H, W, &ya, &yb, &xa, &xb)
            h = boxes[i, 2]
            w = boxes[i, 3]
            for b in range(B):
                for y in range(ya, yb):
                    base = offsets[i] + (b * h + (y - boxes[i, 0])) * w - boxes[i, 1]
                    for x in range(xa, xb):
                        if mask[y, x]:
                            t = flat[base + x]
                            if t > 0:
                                tsum[b, y, x] += t


def apportion(const real[:, :, ::1] image, const double[:, :, ::1] tsum,
              const real[::1] flat, const int64_t[::1] offsets,
              const int64_t[:, ::1] boxes, const uint8_t[:, ::1] mask, real[::1] out):
    """``out_i = image * max(0, T_i) / tsum`` where ``mask`` and ``tsum > 0``, else 0.

    ``out`` has the layout of ``flat``; pixels of a box outside the image are set to 0.
    """
    cdef Py_ssize_t B = image.shape[0], H = image.shape[1], W = image.shape[2]
    cdef Py_ssize_t n = boxes.shape[0]
    cdef Py_ssize_t i, b, y, x, ya, yb, xa, xb, h, w, base, k
    cdef double t, s
    with nogil:
        for k in range(offsets[n]):
            out[k] = 0
        for i in range(n):
            _clip_box(boxes, i, H, W, &ya, &yb, &xa, &xb)
            h = boxes[i, 2]
            w = boxes[i, 3]
            for b in range(B):
                for y in range(ya, yb):
                    base = offsets[i] + (b * h + (y - boxes[i, 0])) * w - boxes[i, 1]
                    for x in range(xa, xb):
                        t = flat[base + x]
                        s = tsum[b, y, x]
                        if mask[y, x] and t > 0 and s > 0:
                            out[base + x] = <real>(image[b, y, x] * (t / s))
