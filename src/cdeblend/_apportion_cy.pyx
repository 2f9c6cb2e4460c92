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

from ._shared.fused cimport other_real, real
from ._shared.gil cimport _release_gil

import numpy as np


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
    if _release_gil(<double>flat.shape[0]):
        with nogil:
            _template_sum(flat, offsets, boxes, mask, tsum)
    else:
        _template_sum(flat, offsets, boxes, mask, tsum)


cdef int _template_sum(const real[::1] flat, const int64_t[::1] offsets,
                       const int64_t[:, ::1] boxes, const uint8_t[:, ::1] mask,
                       double[:, :, ::1] tsum) except -1 nogil:
    cdef Py_ssize_t B = tsum.shape[0], H = tsum.shape[1], W = tsum.shape[2]
    cdef Py_ssize_t n = boxes.shape[0]
    cdef Py_ssize_t i, b, y, x, ya, yb, xa, xb, h, w, base
    cdef double t
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
    return 0


def apportion(const real[:, :, ::1] image, const double[:, :, ::1] tsum,
              const real[::1] flat, const int64_t[::1] offsets,
              const int64_t[:, ::1] boxes, const uint8_t[:, ::1] mask, real[::1] out):
    """``out_i = image * max(0, T_i) / tsum`` where ``mask`` and ``tsum > 0``, else 0.

    ``out`` has the layout of ``flat``; pixels of a box outside the image are set to 0.
    """
    if _release_gil(<double>flat.shape[0]):
        with nogil:
            _apportion(image, tsum, flat, offsets, boxes, mask, out)
    else:
        _apportion(image, tsum, flat, offsets, boxes, mask, out)


cdef int _apportion(const real[:, :, ::1] image, const double[:, :, ::1] tsum,
                    const real[::1] flat, const int64_t[::1] offsets,
                    const int64_t[:, ::1] boxes, const uint8_t[:, ::1] mask,
                    real[::1] out) except -1 nogil:
    cdef Py_ssize_t B = image.shape[0], H = image.shape[1], W = image.shape[2]
    cdef Py_ssize_t n = boxes.shape[0]
    cdef Py_ssize_t i, b, y, x, ya, yb, xa, xb, h, w, base, k
    cdef double t, s
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
    return 0


# --------------------------------------------------------------------------- stray flux
# Single-band stray flux (docs/spec/single_band.md 3.9): pixels of the parent that no template
# claims are handed
# to children by a contribution c_i(q) per candidate pixel q. Candidates are given as a list
# of pixels; contributions are an (N, n_candidates) array.

def r_to_peak(const int64_t[::1] ys, const int64_t[::1] xs, const int64_t[:, ::1] peaks,
              double[:, ::1] contrib):
    """``contrib[i, k] = 1 / (1 + (x_k - px_i)^2 + (y_k - py_i)^2)``."""
    cdef Py_ssize_t n = ys.shape[0], N = peaks.shape[0], i, k
    cdef double dy, dx
    with nogil:
        for i in range(N):
            for k in range(n):
                dy = <double>(ys[k] - peaks[i, 0])
                dx = <double>(xs[k] - peaks[i, 1])
                contrib[i, k] = 1.0 / (1.0 + dx * dx + dy * dy)


def nearest_footprint(int64_t[:, ::1] index, int64_t[:, ::1] dist):
    """Two-pass L1 chamfer transform, carrying the index of the nearest footprint along.

    On entry footprint pixels have ``dist`` 0 and their template's index, all others
    ``dist = H + W`` and index -1. Pass 1 scans forward trying (y-1, x) then (y, x-1); pass
    2 scans backward trying (y+1, x) then (y, x+1); a try costs 1 and only a strictly
    smaller distance replaces.
    """
    cdef Py_ssize_t H = dist.shape[0], W = dist.shape[1], y, x
    with nogil:
        for y in range(H):
            for x in range(W):
                if y > 0 and dist[y - 1, x] + 1 < dist[y, x]:
                    dist[y, x] = dist[y - 1, x] + 1
                    index[y, x] = index[y - 1, x]
                if x > 0 and dist[y, x - 1] + 1 < dist[y, x]:
                    dist[y, x] = dist[y, x - 1] + 1
                    index[y, x] = index[y, x - 1]
        for y in range(H - 1, -1, -1):
            for x in range(W - 1, -1, -1):
                if y < H - 1 and dist[y + 1, x] + 1 < dist[y, x]:
                    dist[y, x] = dist[y + 1, x] + 1
                    index[y, x] = index[y + 1, x]
                if x < W - 1 and dist[y, x + 1] + 1 < dist[y, x]:
                    dist[y, x] = dist[y, x + 1] + 1
                    index[y, x] = index[y, x + 1]


def assign_stray(const double[::1] values, const double[:, ::1] contrib,
                 const uint8_t[::1] is_psf, int point_mode, double clip,
                 double[:, ::1] out):
    """Split each candidate's value among children by their contributions.

    ``point_mode``: 0 "necessary" (point sources take part only where the others' sum is
    0), 1 "always", 2 "never". Shares below ``clip`` times the eligible sum (strict) are
    dropped and the rest renormalised; ``out[i, k]`` receives child i's stray value at
    candidate k (0 where it gets none). Returns the number of candidates left unassigned.
    """
    cdef Py_ssize_t n = values.shape[0], N = contrib.shape[0], i, k
    cdef Py_ssize_t unassigned = 0
    cdef double s, thr, tot, c
    cdef bint with_psf
    with nogil:
        for k in range(n):
            for i in range(N):
                out[i, k] = 0.0
            with_psf = point_mode == 1
            s = 0.0
            for i in range(N):
                if with_psf or not is_psf[i]:
                    s += contrib[i, k]
            if s == 0 and point_mode == 0:
                with_psf = True
                for i in range(N):
                    s += contrib[i, k]
            thr = clip * s
            tot = 0.0
            for i in range(N):
                c = contrib[i, k]
                if (with_psf or not is_psf[i]) and c > 0 and not (c < thr):
                    tot += c
            if tot <= 0:
                unassigned += 1
                continue
            for i in range(N):
                c = contrib[i, k]
                if (with_psf or not is_psf[i]) and c > 0 and not (c < thr):
                    out[i, k] = values[k] * (c / tot)
    return unassigned


cdef enum:
    # NPY_BUFSIZE: the values numpy's einsum sums in one inner loop (see fisher_pairs)
    _EINSUM_BUFFER = 8192


def fisher_pairs(const real[::1] flat, const int64_t[::1] offsets,
                 const int64_t[:, ::1] boxes, const int64_t[:, ::1] pairs,
                 const double[:, :, ::1] ivar, double[:, :, ::1] F):
    """Fill ``F[b, k, q] = F[b, q, k] = sum_p C_k C_q ivar`` for each pair ``(k, q)``.

    ``C_k`` are the (B, h, w) rows of the flat stack. The sum runs over the pixels the two
    boxes and the image share, in the order of numpy's
    ``einsum("bij,bij,bij->b", ck, cl, ivar_slice)`` on those pixels (a running sum per
    chunk of the pixels, the chunks' sums added in order: numpy's nditer buffer of 8192
    values holds whole rows of the image slice, or 8192 pixels when the rows span the
    image's width and are iterated as one), so that the Fisher matrices are bit-identical
    to that per-pair loop (``tests/test_metrics_kernels.py``). Pairs without a shared pixel
    are left untouched.
    """
    cdef double work = 0
    cdef Py_ssize_t p, k, q
    for p in range(pairs.shape[0]):
        k = pairs[p, 0]
        q = pairs[p, 1]
        work += <double>min(boxes[k, 2] * boxes[k, 3], boxes[q, 2] * boxes[q, 3])
    work *= ivar.shape[0]
    if _release_gil(work):
        with nogil:
            _fisher_pairs(flat, offsets, boxes, pairs, ivar, F)
    else:
        _fisher_pairs(flat, offsets, boxes, pairs, ivar, F)


cdef int _fisher_pairs(const real[::1] flat, const int64_t[::1] offsets,
                       const int64_t[:, ::1] boxes, const int64_t[:, ::1] pairs,
                       const double[:, :, ::1] ivar, double[:, :, ::1] F) except -1 nogil:
    cdef Py_ssize_t B = ivar.shape[0], H = ivar.shape[1], W = ivar.shape[2]
    cdef Py_ssize_t p, k, q, b, y, x, y0, y1, x0, x1, bk, bl, n, rows
    cdef bint contiguous
    cdef double total, acc
    for p in range(pairs.shape[0]):
        k = pairs[p, 0]
        q = pairs[p, 1]
        y0 = max(max(boxes[k, 0], boxes[q, 0]), 0)
        x0 = max(max(boxes[k, 1], boxes[q, 1]), 0)
        y1 = min(min(boxes[k, 0] + boxes[k, 2], boxes[q, 0] + boxes[q, 2]), H)
        x1 = min(min(boxes[k, 1] + boxes[k, 3], boxes[q, 1] + boxes[q, 3]), W)
        if y1 <= y0 or x1 <= x0:
            continue
        # numpy's einsum buffers at most _EINSUM_BUFFER values per inner loop: whole rows
        # of the slice, or plain chunks of the pixels when its rows are contiguous
        contiguous = x1 - x0 == W
        rows = max(_EINSUM_BUFFER // (x1 - x0), 1)
        for b in range(B):
            total = 0
            acc = 0
            n = 0
            for y in range(y0, y1):
                # row y of band b of each shape, minus its first column
                bk = offsets[k] + (b * boxes[k, 2] + y - boxes[k, 0]) * boxes[k, 3]
                bk -= boxes[k, 1]
                bl = offsets[q] + (b * boxes[q, 2] + y - boxes[q, 0]) * boxes[q, 3]
                bl -= boxes[q, 1]
                for x in range(x0, x1):
                    acc = acc + <double>flat[bk + x] * <double>flat[bl + x] * ivar[b, y, x]
                    n += 1
                    if contiguous and n == _EINSUM_BUFFER:
                        total = total + acc
                        acc = 0
                        n = 0
                if not contiguous and (y - y0 + 1) % rows == 0:
                    total = total + acc
                    acc = 0
            total = total + acc
            F[b, k, q] = total
            F[b, q, k] = total
    return 0


cdef double _pairwise_sum(const double* a, Py_ssize_t n) noexcept nogil:
    """numpy's pairwise summation of ``a[:n]`` (8 accumulators in blocks of up to 128),
    so that a sum here is bit-identical to numpy's ``sum`` of the same contiguous values."""
    cdef double res, r0, r1, r2, r3, r4, r5, r6, r7
    cdef Py_ssize_t i, n2
    if n < 8:
        res = 0.
        for i in range(n):
            res += a[i]
        return res
    if n <= 128:
        r0, r1, r2, r3 = a[0], a[1], a[2], a[3]
        r4, r5, r6, r7 = a[4], a[5], a[6], a[7]
        i = 8
        while i < n - (n % 8):
            r0 += a[i]
            r1 += a[i + 1]
            r2 += a[i + 2]
            r3 += a[i + 3]
            r4 += a[i + 4]
            r5 += a[i + 5]
            r6 += a[i + 6]
            r7 += a[i + 7]
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            res += a[i]
            i += 1
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return _pairwise_sum(a, n2) + _pairwise_sum(a + n2, n - n2)


def source_metrics(const double[::1] models, const int64_t[::1] moff,
                   const int64_t[:, ::1] mboxes, const double[:, :, ::1] total,
                   const real[::1] conv, const int64_t[::1] coff,
                   const int64_t[:, ::1] cboxes, const uint8_t[:, :, ::1] has_data,
                   const double[:, :, ::1] chi, double[:, ::1] sums,
                   double[:, ::1] max_overlap, uint8_t[:, ::1] flags,
                   int64_t[:, ::1] counts, double[::1] chi_sum,
                   double[::1] scratch, uint8_t[::1] fp):
    """The per-source sums of :func:`cdeblend.metrics.blend_metrics`, one pass per source.

    Boxes must lie inside the (B, H, W) image (the caller checks). For source i:
    ``sums[i]`` holds (4, B) rows: the neighbours' flux ``sum((M - m) * fp)``, the model
    flux ``sum(m)``, ``sum(m * M)`` and ``sum(m * m)``; ``max_overlap[i]`` the
    ``max((M - m) * fp)`` per band; ``flags[i]`` (footprint not empty, on the edge);
    ``counts[i]`` (pixels of the convolved footprint, then the data values per band) and
    ``chi_sum[i]`` the sum of ``chi`` over the data of the convolved footprint. Every float
    sum adds the values of numpy's arrays in numpy's pairwise order, so the metrics are
    bit-identical to the numpy loop (``tests/test_metrics_kernels.py``). ``scratch`` and
    ``fp`` are work space of at least ``B * h * w`` and ``h * w`` values of every box.
    """
    cdef double work = <double>models.shape[0] + <double>conv.shape[0]
    if _release_gil(work):
        with nogil:
            _source_metrics(models, moff, mboxes, total, conv, coff, cboxes, has_data, chi,
                            sums, max_overlap, flags, counts, chi_sum, scratch, fp)
    else:
        _source_metrics(models, moff, mboxes, total, conv, coff, cboxes, has_data, chi,
                        sums, max_overlap, flags, counts, chi_sum, scratch, fp)


cdef int _source_metrics(const double[::1] models, const int64_t[::1] moff,
                         const int64_t[:, ::1] mboxes, const double[:, :, ::1] total,
                         const real[::1] conv, const int64_t[::1] coff,
                         const int64_t[:, ::1] cboxes, const uint8_t[:, :, ::1] has_data,
                         const double[:, :, ::1] chi, double[:, ::1] sums,
                         double[:, ::1] max_overlap, uint8_t[:, ::1] flags,
                         int64_t[:, ::1] counts, double[::1] chi_sum,
                         double[::1] scratch, uint8_t[::1] fp) except -1 nogil:
    cdef Py_ssize_t B = total.shape[0], H = total.shape[1], W = total.shape[2]
    cdef Py_ssize_t i, b, y0, x0, h, w, hw, p, base, npix, nval, ymin, ymax, xmin, xmax
    cdef double v, top
    cdef bint anyfp
    for i in range(mboxes.shape[0]):
        y0, x0, h, w = mboxes[i, 0], mboxes[i, 1], mboxes[i, 2], mboxes[i, 3]
        hw = h * w
        # the model footprint: m > 0 in any band
        anyfp = False
        ymin, ymax, xmin, xmax = h, -1, w, -1
        for p in range(hw):
            fp[p] = 0
            for b in range(B):
                if models[moff[i] + b * hw + p] > 0:
                    fp[p] = 1
                    break
            if fp[p]:
                anyfp = True
                ymin = min(ymin, p // w)
                ymax = max(ymax, p // w)
                xmin = min(xmin, p % w)
                xmax = max(xmax, p % w)
        flags[i, 0] = anyfp
        flags[i, 1] = anyfp and (ymin + y0 == 0 or ymax + y0 == H - 1
                                 or xmin + x0 == 0 or xmax + x0 == W - 1)
        for b in range(B):
            base = moff[i] + b * hw
            # (M - m) * fp, as numpy multiplies by the footprint cast to 0.0 or 1.0
            top = 0
            for p in range(hw):
                v = (total[b, y0 + p // w, x0 + p % w] - models[base + p]) * (
                    1.0 if fp[p] else 0.0)
                scratch[p] = v
                if p == 0 or v > top:
                    top = v
            sums[i, b] = 0. + _pairwise_sum(&scratch[0], hw)
            max_overlap[i, b] = top if anyfp else 0.
            sums[i, B + b] = 0. + _pairwise_sum(&models[base], hw)
            for p in range(hw):
                scratch[p] = models[base + p] * total[b, y0 + p // w, x0 + p % w]
            sums[i, 2 * B + b] = 0. + _pairwise_sum(&scratch[0], hw)
            for p in range(hw):
                scratch[p] = models[base + p] * models[base + p]
            sums[i, 3 * B + b] = 0. + _pairwise_sum(&scratch[0], hw)
        # the convolved footprint: its pixels, data values and chi values (band-major)
        y0, x0, h, w = cboxes[i, 0], cboxes[i, 1], cboxes[i, 2], cboxes[i, 3]
        hw = h * w
        npix = 0
        for p in range(hw):
            fp[p] = 0
            for b in range(B):
                if conv[coff[i] + b * hw + p] > 0:
                    fp[p] = 1
                    npix += 1
                    break
        counts[i, 0] = npix
        nval = 0
        for b in range(B):
            counts[i, 1 + b] = 0
        # numpy's chi[:, fp] is laid out pixel by pixel, the bands of a pixel together,
        # and summed in that (memory) order
        for p in range(hw):
            if fp[p]:
                for b in range(B):
                    scratch[nval] = chi[b, y0 + p // w, x0 + p % w]
                    nval += 1
                    if has_data[b, y0 + p // w, x0 + p % w]:
                        counts[i, 1 + b] += 1
        chi_sum[i] = 0. + _pairwise_sum(&scratch[0], nval)
    return 0


def blend_chi(const real[::1] conv, const int64_t[::1] offsets, const int64_t[:, ::1] boxes,
              const other_real[:, :, ::1] images, const other_real[:, :, ::1] weights,
              double[:, :, ::1] total, double[:, :, ::1] chi):
    """``chi = w (image - M)^2`` where ``w > 0`` (else 0), ``M`` the sum of the rows.

    ``total`` (zeros on entry) receives ``M``, the rows added in order (boxes inside the
    image), as numpy's ``total[box] += row`` one row after the other; ``chi`` is computed
    as ``where(w > 0, w * (image - M) ** 2, 0)`` in float64, so both are bit-identical to
    those numpy calls.
    """
    if _release_gil(<double>conv.shape[0] + 2. * <double>chi.size):
        with nogil:
            _blend_chi(conv, offsets, boxes, images, weights, total, chi)
    else:
        _blend_chi(conv, offsets, boxes, images, weights, total, chi)


cdef int _blend_chi(const real[::1] conv, const int64_t[::1] offsets,
                    const int64_t[:, ::1] boxes, const other_real[:, :, ::1] images,
                    const other_real[:, :, ::1] weights, double[:, :, ::1] total,
                    double[:, :, ::1] chi) except -1 nogil:
    cdef Py_ssize_t B = chi.shape[0], H = chi.shape[1], W = chi.shape[2]
    cdef Py_ssize_t i, b, y, x, h, w, base
    cdef double d, wt
    for i in range(boxes.shape[0]):
        h = boxes[i, 2]
        w = boxes[i, 3]
        for b in range(B):
            for y in range(h):
                base = offsets[i] + (b * h + y) * w
                for x in range(w):
                    total[b, boxes[i, 0] + y, boxes[i, 1] + x] += <double>conv[base + x]
    for b in range(B):
        for y in range(H):
            for x in range(W):
                wt = <double>weights[b, y, x]
                d = <double>images[b, y, x] - total[b, y, x]
                chi[b, y, x] = wt * (d * d) if wt > 0 else 0.
    return 0


def dense_pairs(const int64_t[:, ::1] boxes):
    """(P, 2) int64 pairs ``(k, l)``, ``k <= l``, of the (K, 4) boxes ``y0, x0, h, w`` that
    share a pixel, in row-major order (``cdeblend.box.overlapping_pairs``' all-pairs test:
    ``np.nonzero(np.triu(hit))``), in one pass instead of a dozen numpy calls."""
    cdef Py_ssize_t n = boxes.shape[0], k, j, count = 0
    if boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (K, 4), got ({n}, {boxes.shape[1]})")
    out_arr = np.empty((n * (n + 1) // 2, 2), dtype=np.int64)
    cdef int64_t[:, ::1] out = out_arr
    with nogil:
        for k in range(n):
            for j in range(k, n):
                if (max(boxes[k, 0], boxes[j, 0])
                        < min(boxes[k, 0] + boxes[k, 2], boxes[j, 0] + boxes[j, 2])
                        and max(boxes[k, 1], boxes[j, 1])
                        < min(boxes[k, 1] + boxes[k, 3], boxes[j, 1] + boxes[j, 3])):
                    out[count, 0] = k
                    out[count, 1] = j
                    count += 1
    return out_arr[:count].copy()


def plane_sums(const real[::1] flat, const int64_t[::1] offsets,
               const int64_t[:, ::1] boxes, double[:, ::1] out):
    """``out[i, b]``: the sum of band ``b`` of row ``i`` of a flat stack (``FlatStack.sums``),
    0 for an empty box; each as ``numpy.add.reduceat`` sums a segment of the float64 buffer
    (its first value, plus the pairwise sum of the rest), so the same bits, in one call
    instead of the index arithmetic and boolean selections around the numpy call. A float32
    stack is read one plane at a time into a float64 scratch plane (casting the whole stack
    would fault in twice its bytes, 0.4 GB more on a 2000 x 2000 scene's models)."""
    cdef Py_ssize_t n = boxes.shape[0], B = out.shape[1], i, b, s, size, j, largest = 0
    cdef const double* plane
    cdef double[::1] scratch
    if out.shape[0] != n or boxes.shape[1] != 4 or offsets.shape[0] < n:
        raise ValueError("out must be (N, B), boxes (N, 4) and offsets (N,) or longer")
    for i in range(n):
        size = boxes[i, 2] * boxes[i, 3]
        if offsets[i] < 0 or size < 0 or offsets[i] + B * size > flat.shape[0]:
            raise ValueError(f"row {i} does not fit in flat")
        largest = max(largest, size)
    scratch = np.empty(largest if real is float else 0)
    with nogil:
        for i in range(n):
            size = boxes[i, 2] * boxes[i, 3]
            for b in range(B):
                if size == 0:
                    out[i, b] = 0.0
                    continue
                s = offsets[i] + b * size
                if real is double:
                    plane = &flat[s]
                else:
                    for j in range(size):
                        scratch[j] = flat[s + j]
                    plane = &scratch[0]
                out[i, b] = plane[0]
                if size > 1:
                    out[i, b] = plane[0] + _pairwise_sum(plane + 1, size - 1)
