# cython: language_level=3
"""Pixel loops of detection (cdeblend.detection).

- ``merge_tree``: the peaks of every footprint of a detection image and, for each peak that
  is not its footprint's brightest, the saddle at which its region joins a brighter peak's
  region, with both regions' pixel counts and sums there (the component tree that
  SExtractor's multi-threshold deblending samples at DEBLEND_NTHRESH levels, computed at
  every pixel value by one union-find pass).
- ``keep_along_tree``: a peak is kept when it and every peak it merged into are kept.

See docs in ``cdeblend.detection.find_peaks`` for how the numbers are used.
"""

from libc.stdint cimport int32_t, int64_t, uint8_t

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
