# cython: language_level=3
"""Pixel loops of detection (cdeblend.detection).

- ``merge_tree``: the peaks of every footprint of a detection image and, for each peak that
  is not its footprint's brightest, the saddle at which its region joins a brighter peak's
  region, with both regions' pixel counts and sums there (the component tree that
  SExtractor's multi-threshold deblending samples at DEBLEND_NTHRESH levels, computed at
  every pixel value by one union-find pass).
- ``keep_along_tree``: a peak is kept when it and every peak it merged into are kept.

See docs in ``cdeblend.detection.find_peaks`` for how the numbers are used. Also the loops
that make and cut detection images, for detection and for the catalog driver's parents:

- ``snr_coadd``: the S/N of the inverse-variance coadd of the bands;
- ``separable_smooth``: a separable smoothing (scipy's ``mode="constant"``);
- ``dilate_disc``: binary dilation by a disc (footprint growth);
- ``label_footprints``: 8-connected labels of a thresholded image and their boxes;
- ``mean_sqrt``: the noise RMS of a band, ``mean(sqrt(variance))`` over its finite pixels
  (also the observation's default ``noise_rms``).
"""

from libc.math cimport INFINITY, sqrt
from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.stdlib cimport free, malloc

from ._shared.fused cimport real
from ._shared.gil cimport _release_gil

import numpy as np


cdef inline Py_ssize_t _root(Py_ssize_t[::1] uf, Py_ssize_t k) noexcept nogil:
    """Root of peak k's set, halving the path on the way."""
    while uf[k] != k:
        uf[k] = uf[uf[k]]
        k = uf[k]
    return k


cdef Py_ssize_t _merge_tree_loop(const double[:, ::1] image, const int32_t[:, ::1] labels,
                                 const int64_t[::1] order, int64_t[:, ::1] owner,
                                 Py_ssize_t[::1] uf, int64_t[::1] peak_pix,
                                 double[::1] peak_val, int64_t[::1] npix, double[::1] flux,
                                 int64_t[::1] into, double[::1] saddle,
                                 int64_t[:, ::1] npix_at, double[:, ::1] flux_at,
                                 Py_ssize_t cap) except -4 nogil:
    """The union-find pass; returns the number of peaks, -1 when ``cap`` is too small, -3
    when a pixel comes twice."""
    cdef Py_ssize_t H = image.shape[0], W = image.shape[1], n = 0, t, p, y, x, dy, dx
    cdef Py_ssize_t yy, xx, r, win, nroots, i
    cdef Py_ssize_t roots[8]
    cdef double v
    cdef int32_t lab
    for t in range(order.shape[0]):
        p = order[t]
        y = p // W
        x = p - y * W
        if owner[y, x] >= 0:
            return -3  # a pixel listed twice would be its own neighbour
        v = image[y, x]
        lab = labels[y, x]
        # the distinct sets of the already visited (brighter or equal) 8-neighbours
        nroots = 0
        for dy in range(-1, 2):
            yy = y + dy
            if yy < 0 or yy >= H:
                continue
            for dx in range(-1, 2):
                xx = x + dx
                if (dy == 0 and dx == 0) or xx < 0 or xx >= W:
                    continue
                if owner[yy, xx] < 0 or labels[yy, xx] != lab:
                    continue
                r = _root(uf, owner[yy, xx])
                for i in range(nroots):
                    if roots[i] == r:
                        break
                else:
                    roots[nroots] = r
                    nroots += 1
        if nroots == 0:
            # no brighter neighbour: a new peak (peaks are numbered brightest first)
            if n >= cap:
                return -1
            uf[n] = n
            peak_pix[n] = p
            peak_val[n] = v
            npix[n] = 1
            flux[n] = v
            into[n] = -1
            owner[y, x] = n
            n += 1
            continue
        # the set whose peak is brightest wins: the lowest peak number
        win = roots[0]
        for i in range(1, nroots):
            if roots[i] < win:
                win = roots[i]
        # every other set meets the winner's at this pixel's level: record both regions as
        # they are just above the saddle, then join them
        for i in range(nroots):
            r = roots[i]
            if r == win:
                continue
            into[r] = win
            saddle[r] = v
            npix_at[r, 0] = npix[r]
            flux_at[r, 0] = flux[r]
            npix_at[r, 1] = npix[win]
            flux_at[r, 1] = flux[win]
        for i in range(nroots):
            r = roots[i]
            if r == win:
                continue
            uf[r] = win
            npix[win] += npix[r]
            flux[win] += flux[r]
        npix[win] += 1
        flux[win] += v
        owner[y, x] = win
    return n


def merge_tree(const double[:, ::1] image not None, const int32_t[:, ::1] labels not None,
               const int64_t[::1] order not None):
    """The peaks of a detection image's footprints and the saddles where they merge.

    Pixels are added in ``order`` (brightest first); a pixel none of whose 8-neighbours in
    the same footprint was added before starts a new peak, otherwise it joins its
    neighbours' regions, and when it touches several, every region but the one with the
    brightest peak merges into that one at this pixel's value: its *saddle*.

    Parameters
    ----------
    image : numpy.ndarray
        (H, W) float64 detection image.
    labels : numpy.ndarray
        (H, W) int32 footprint labels; regions never join across labels.
    order : numpy.ndarray
        (N,) int64 flat indices ``y * W + x`` of the pixels to visit, by non-increasing
        ``image`` value (ties in any fixed order, e.g. increasing index). Usually every pixel
        with a label > 0.

    Returns
    -------
    dict of numpy.ndarray
        For the K peaks (brightest first): ``peak`` (K, 2) int64 (y, x); ``value`` (K,);
        ``into`` (K,) int64, the peak it merged into (always a brighter one, -1 for the
        brightest of its footprint); ``saddle`` (K,) the value where it merged (NaN if it
        did not); ``npix`` and ``flux`` (K, 2): pixel count and sum of ``image`` of its own
        region (column 0) and of the brighter region (column 1) just before the merge (0
        if it did not merge); ``total_npix``, ``total_flux`` (K,): the final count and sum of
        a footprint's brightest peak's region (its whole visited footprint; 0 for others).
    """
    cdef Py_ssize_t H = image.shape[0], W = image.shape[1], N = order.shape[0], t
    if labels.shape[0] != H or labels.shape[1] != W:
        raise ValueError(
            f"labels has shape {(labels.shape[0], labels.shape[1])}, image {(H, W)}")
    for t in range(N):
        if order[t] < 0 or order[t] >= H * W:
            raise ValueError(f"order[{t}] = {order[t]} is outside the image ({H} x {W})")
    owner_arr = np.full((H, W), -1, dtype=np.int64)
    cdef int64_t[:, ::1] owner = owner_arr
    cdef Py_ssize_t cap = N if N > 0 else 1
    uf_arr = np.empty(cap, dtype=np.intp)
    peak_pix = np.empty(cap, dtype=np.int64)
    peak_val = np.empty(cap, dtype=np.float64)
    npix = np.empty(cap, dtype=np.int64)
    flux = np.empty(cap, dtype=np.float64)
    into = np.empty(cap, dtype=np.int64)
    saddle = np.full(cap, np.nan)
    npix_at = np.zeros((cap, 2), dtype=np.int64)
    flux_at = np.zeros((cap, 2), dtype=np.float64)
    cdef Py_ssize_t n
    cdef Py_ssize_t[::1] uf = uf_arr
    cdef int64_t[::1] pp = peak_pix, npv = npix, iv = into
    cdef double[::1] pv = peak_val, fv = flux, sv = saddle
    cdef int64_t[:, ::1] na = npix_at
    cdef double[:, ::1] fa = flux_at
    if _release_gil(9.0 * N):
        with nogil:
            n = _merge_tree_loop(image, labels, order, owner, uf, pp, pv, npv, fv, iv, sv,
                                 na, fa, cap)
    else:
        n = _merge_tree_loop(image, labels, order, owner, uf, pp, pv, npv, fv, iv, sv, na,
                             fa, cap)
    if n == -3:
        raise ValueError("order lists a pixel more than once")
    if n < 0:  # pragma: no cover - there are at most N peaks
        raise RuntimeError("merge_tree: more peaks than pixels")
    roots = into[:n] < 0
    return {
        "peak": np.stack([peak_pix[:n] // W, peak_pix[:n] % W], axis=1),
        "value": peak_val[:n],
        "into": into[:n],
        "saddle": saddle[:n],
        "npix": npix_at[:n],
        "flux": flux_at[:n],
        "total_npix": np.where(roots, npix[:n], 0),
        "total_flux": np.where(roots, flux[:n], 0.0),
    }


def keep_along_tree(const int64_t[::1] into not None, uint8_t[::1] keep not None):
    """Clear ``keep[k]`` when the peak ``into[k]`` that k merged into is not kept.

    ``into[k] < k`` (a peak merges into a brighter, earlier one) or -1; visiting the peaks
    in order makes a peak kept only when it and every peak on its path to its footprint's
    brightest are: a culled region takes the peaks that merged into it along.
    """
    cdef Py_ssize_t K = into.shape[0], k
    if keep.shape[0] != K:
        raise ValueError(f"keep has {keep.shape[0]} values, into {K}")
    for k in range(K):
        if into[k] >= k:
            raise ValueError(f"into[{k}] = {into[k]} must be < {k}")
    for k in range(K):
        if into[k] >= 0 and not keep[into[k]]:
            keep[k] = 0


# ------------------------------------------------------------------------------------------
# Detection images: S/N coadd, smoothing, noise RMS
# ------------------------------------------------------------------------------------------

def snr_coadd(const real[:, :, ::1] images, const real[:, :, ::1] variance,
              double[:, ::1] out):
    """Per-pixel S/N of the inverse-variance coadd, ``sum_b I_b / V_b / sqrt(sum_b 1 / V_b)``.

    Bands whose variance is not positive and finite carry no information at that pixel;
    a pixel without any gets 0. Accumulated in double, band by band over whole rows.
    """
    cdef Py_ssize_t B = images.shape[0], H = images.shape[1], W = images.shape[2], b, y, x
    cdef double v, ivar
    cdef double* num
    cdef double* den
    cdef const real* vr
    cdef const real* ir
    den = <double*>malloc(W * sizeof(double))
    if den == NULL:
        raise MemoryError()
    with nogil:
        for y in range(H):
            num = &out[y, 0]
            for x in range(W):
                num[x] = 0.0
                den[x] = 0.0
            for b in range(B):
                vr = &variance[b, y, 0]
                ir = &images[b, y, 0]
                for x in range(W):
                    v = vr[x]
                    ivar = 1.0 / v if (v > 0 and v < INFINITY) else 0.0
                    num[x] += ir[x] * ivar
                    den[x] += ivar
            for x in range(W):
                num[x] = num[x] / sqrt(den[x]) if den[x] > 0 else 0.0
    free(den)


def separable_smooth(const double[:, ::1] image, const double[::1] kernel,
                     double[:, ::1] tmp, double[:, ::1] out):
    """Correlate ``image`` with ``kernel`` (odd length, centred) along y, then along x.

    Pixels beyond the image count as 0 (scipy's ``mode="constant"``). ``tmp`` is scratch of
    the image's shape.
    """
    cdef Py_ssize_t H = image.shape[0], W = image.shape[1], r = kernel.shape[0] // 2
    cdef Py_ssize_t y, x, k, a, b
    cdef double acc
    with nogil:
        for y in range(H):
            a = r - y if y < r else 0
            b = H - 1 - y + r if y + r > H - 1 else 2 * r
            for x in range(W):
                acc = 0.0
                for k in range(a, b + 1):
                    acc = acc + kernel[k] * image[y + k - r, x]
                tmp[y, x] = acc
        for y in range(H):
            for x in range(W):
                a = r - x if x < r else 0
                b = W - 1 - x + r if x + r > W - 1 else 2 * r
                acc = 0.0
                for k in range(a, b + 1):
                    acc = acc + kernel[k] * tmp[y, x + k - r]
                out[y, x] = acc


def mean_sqrt(const real[:, ::1] variance):
    """Mean of ``sqrt(v)`` over the finite pixels of ``variance``, and their number.

    The noise RMS of a band (``(nan, 0)`` without finite pixels); summed in double, row by
    row, in a fixed order.
    """
    cdef Py_ssize_t H = variance.shape[0], W = variance.shape[1], y, x, n = 0
    cdef double total = 0.0, s0, s1, s2, s3
    cdef double* roots = <double*>malloc(max(W, 1) * sizeof(double))
    if roots == NULL:
        raise MemoryError()
    with nogil:
        for y in range(H):
            # the roots of a row first (vectorises: non-finite pixels give sqrt(0)) ...
            for x in range(W):
                roots[x] = sqrt(variance[y, x] if variance[y, x] - variance[y, x] == 0
                                else 0.0)
                n += variance[y, x] - variance[y, x] == 0
            # ... then their sum in four interleaved partial sums (a fixed order)
            s0 = s1 = s2 = s3 = 0.0
            x = 0
            while x + 4 <= W:
                s0 += roots[x]
                s1 += roots[x + 1]
                s2 += roots[x + 2]
                s3 += roots[x + 3]
                x += 4
            while x < W:
                s0 += roots[x]
                x += 1
            total += (s0 + s1) + (s2 + s3)
    free(roots)
    return (total / n if n else float("nan")), n


# ------------------------------------------------------------------------------------------
# Footprints: disc dilation, connected labels
# ------------------------------------------------------------------------------------------

def dilate_disc(const uint8_t[:, ::1] mask, Py_ssize_t radius, uint8_t[:, ::1] out,
                int32_t[:, ::1] prefix):
    """Binary dilation of ``mask`` by the disc of offsets with dy^2 + dx^2 <= radius^2.

    A sparse mask (a detection threshold sets a few percent of an image) is dilated by
    painting the disc around each set pixel; a dense one row by row: for each row offset dy
    the disc is a run of half-width floor(sqrt(radius^2 - dy^2)), and whether a run of an
    input row holds a set pixel is read off that row's prefix count in O(1). ``prefix`` is
    scratch of shape (H, W + 1). Both give the same result.
    """
    cdef Py_ssize_t H = mask.shape[0], W = mask.shape[1], y, x, dy, hw, n_set = 0
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if out.shape[0] != H or out.shape[1] != W or prefix.shape[0] != H or (
            prefix.shape[1] != W + 1):
        raise ValueError("out must have the mask's shape and prefix (H, W + 1)")
    # Half-width of the disc's run at each row offset, computed once.
    half_np = np.zeros(2 * radius + 1, dtype=np.int64)
    cdef int64_t[::1] half = half_np
    for dy in range(-radius, radius + 1):
        hw = 0
        while (hw + 1) * (hw + 1) + dy * dy <= radius * radius:
            hw += 1
        half[dy + radius] = hw
    with nogil:
        for y in range(H):
            for x in range(W):
                n_set += mask[y, x] != 0
        if n_set * (2 * radius + 1) < H * W:  # painting costs less than the row scans
            _paint_discs(mask, radius, half, out)
        else:
            _dilate_rows(mask, radius, half, out, prefix)


cdef void _paint_discs(const uint8_t[:, ::1] mask, Py_ssize_t radius, const int64_t[::1] half,
                       uint8_t[:, ::1] out) noexcept nogil:
    cdef Py_ssize_t H = mask.shape[0], W = mask.shape[1], y, x, dy, yy, a, b, xx
    for y in range(H):
        for x in range(W):
            out[y, x] = 0
    for y in range(H):
        for x in range(W):
            if mask[y, x] == 0:
                continue
            for dy in range(-radius, radius + 1):
                yy = y + dy
                if yy < 0 or yy >= H:
                    continue
                a = x - half[dy + radius]
                b = x + half[dy + radius] + 1
                if a < 0:
                    a = 0
                if b > W:
                    b = W
                for xx in range(a, b):
                    out[yy, xx] = 1


cdef void _dilate_rows(const uint8_t[:, ::1] mask, Py_ssize_t radius, const int64_t[::1] half,
                       uint8_t[:, ::1] out, int32_t[:, ::1] prefix) noexcept nogil:
    cdef Py_ssize_t H = mask.shape[0], W = mask.shape[1], y, x, dy, yy, hw, a, b
    cdef int32_t c
    cdef bint hit
    for y in range(H):
        c = 0
        prefix[y, 0] = 0
        for x in range(W):
            c += mask[y, x] != 0
            prefix[y, x + 1] = c
    for y in range(H):
        for x in range(W):
            hit = False
            for dy in range(-radius, radius + 1):
                yy = y + dy
                if yy < 0 or yy >= H:
                    continue
                hw = half[dy + radius]
                a = x - hw
                b = x + hw + 1
                if a < 0:
                    a = 0
                if b > W:
                    b = W
                if prefix[yy, b] - prefix[yy, a] > 0:
                    hit = True
                    break
            out[y, x] = hit


def label_footprints(const uint8_t[:, ::1] on not None, int32_t[:, ::1] labels not None):
    """8-connected labels of the set pixels of ``on``, and each label's bounding box.

    Labels are 1, 2, ... in the raster order of each region's first pixel (scipy's
    ``ndimage.label`` numbering); background pixels get 0. Returns ``boxes`` (n, 4) int64
    ``(y0, x0, h, w)`` of label ``k + 1`` in row k. Two passes with a union-find over
    provisional labels (a region's smallest provisional label is its first pixel's).
    """
    cdef Py_ssize_t H = on.shape[0], W = on.shape[1]
    if labels.shape[0] != H or labels.shape[1] != W:
        raise ValueError(f"labels must have the shape of on, {(H, W)}")
    # a pixel starts a provisional label only when its west and north neighbours are unset,
    # so a 2 x 2 block holds at most one such pixel
    cdef Py_ssize_t cap = ((H + 1) // 2) * ((W + 1) // 2) + 2
    parent_arr = np.empty(cap, dtype=np.intp)
    cdef Py_ssize_t[::1] parent = parent_arr
    cdef Py_ssize_t n
    n = _label_pass1(on, labels, parent)
    final_arr = np.empty(n + 1, dtype=np.intp)
    cdef Py_ssize_t[::1] final = final_arr
    cdef Py_ssize_t count = _label_resolve(parent, n, final)
    boxes_arr = np.empty((count, 4), dtype=np.int64)
    cdef int64_t[:, ::1] boxes = boxes_arr
    _label_pass2(labels, final, boxes)
    return boxes_arr


cdef inline Py_ssize_t _label_root(Py_ssize_t[::1] parent, Py_ssize_t i) noexcept nogil:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


cdef inline Py_ssize_t _label_join(Py_ssize_t[::1] parent, Py_ssize_t a,
                                   Py_ssize_t b) noexcept nogil:
    """Union of the sets of provisional labels a and b; returns the smaller root."""
    a = _label_root(parent, a)
    b = _label_root(parent, b)
    if a < b:
        parent[b] = a
        return a
    parent[a] = b
    return b


cdef Py_ssize_t _label_pass1(const uint8_t[:, ::1] on, int32_t[:, ::1] labels,
                             Py_ssize_t[::1] parent) except -1 nogil:
    """Provisional labels in raster order, joined through the already visited neighbours
    (west, north-west, north, north-east); returns their number."""
    cdef Py_ssize_t H = on.shape[0], W = on.shape[1], y, x, n = 0, lab, q
    for y in range(H):
        for x in range(W):
            if not on[y, x]:
                labels[y, x] = 0
                continue
            lab = 0
            if x > 0 and labels[y, x - 1]:
                lab = labels[y, x - 1]
            if y > 0:
                for q in range(x - 1 if x > 0 else 0, x + 2 if x + 2 <= W else W):
                    if labels[y - 1, q]:
                        lab = (labels[y - 1, q] if lab == 0
                               else _label_join(parent, lab, labels[y - 1, q]))
            if lab == 0:
                n += 1
                parent[n] = n
                lab = n
            labels[y, x] = <int32_t>lab
    return n


cdef Py_ssize_t _label_resolve(Py_ssize_t[::1] parent, Py_ssize_t n,
                               Py_ssize_t[::1] final) except -1 nogil:
    """Final label of every provisional label: roots numbered in increasing order."""
    cdef Py_ssize_t i, r, count = 0
    final[0] = 0
    for i in range(1, n + 1):
        r = _label_root(parent, i)
        if r == i:
            count += 1
            final[i] = count
        else:
            final[i] = final[r]
    return count


cdef int _label_pass2(int32_t[:, ::1] labels, const Py_ssize_t[::1] final,
                      int64_t[:, ::1] boxes) except -1 nogil:
    cdef Py_ssize_t H = labels.shape[0], W = labels.shape[1], y, x, k
    for k in range(boxes.shape[0]):
        boxes[k, 0] = H
        boxes[k, 1] = W
        boxes[k, 2] = -1
        boxes[k, 3] = -1
    for y in range(H):
        for x in range(W):
            if labels[y, x] == 0:
                continue
            k = final[labels[y, x]]
            labels[y, x] = <int32_t>k
            k -= 1
            if y < boxes[k, 0]:
                boxes[k, 0] = y
            if x < boxes[k, 1]:
                boxes[k, 1] = x
            if y > boxes[k, 2]:
                boxes[k, 2] = y
            if x > boxes[k, 3]:
                boxes[k, 3] = x
    for k in range(boxes.shape[0]):  # (y0, x0, y1, x1) inclusive -> (y0, x0, h, w)
        boxes[k, 2] = boxes[k, 2] - boxes[k, 0] + 1
        boxes[k, 3] = boxes[k, 3] - boxes[k, 1] + 1
    return 0
