# Pixel loops of the catalog driver (cdeblend.catalog) and of cdeblend.model_data.
#
# - ``parent_arrays``: a parent's contiguous images, variance and weights, in one pass.
# - ``parent_stats``: every parent's footprint pixel counts, flux per band and centroid.
# - ``component_moments``: a component's flux-weighted zeroth and first moments.
#
# They replace runs of short numpy calls in the Python glue around the fits: numpy releases
# the GIL for any operation on more than ~500 elements, so each of those calls handed the GIL
# to the other worker thread for microseconds of work (see _shared/gil.pxd). Included from
# _symmetric_cy.pyx after _gil.pxi; its own fused types, as `real` is declared after the
# include.

from libc.math cimport NAN


cdef inline tuple _shape3(const Py_ssize_t* shape):
    return (shape[0], shape[1], shape[2])


cdef int _parent_arrays_loop(const real[:, :, :] images, const real[:, :, :] variance,
                             const other_real[:, :, :] source, bint inverse,
                             const uint8_t[:, :] footprint, const uint8_t[:, :] mask,
                             bint has_mask, real[:, :, ::1] images_out,
                             real[:, :, ::1] variance_out,
                             real[:, :, ::1] weights_out) except -1 nogil:
    cdef Py_ssize_t B = images.shape[0], h = images.shape[1], w = images.shape[2], b, i, j
    cdef other_real s, f, m
    for b in range(B):
        for i in range(h):
            for j in range(w):
                images_out[b, i, j] = images[b, i, j]
                variance_out[b, i, j] = variance[b, i, j]
                s = source[b, i, j]
                if inverse:
                    s = (<other_real>1 / s) if s > 0 else 0
                # multiplied (not branched) in the source's precision, then cast: the
                # arithmetic of numpy's where(v > 0, 1 / v, 0) * footprint * ~mask
                f = 1 if footprint[i, j] else 0
                m = 0 if has_mask and mask[i, j] else 1
                weights_out[b, i, j] = <real>(s * f * m)
    return 0


def parent_arrays(const real[:, :, :] images not None,
                  const real[:, :, :] variance not None,
                  const other_real[:, :, :] source not None, bint inverse,
                  const uint8_t[:, :] footprint not None, const uint8_t[:, :] mask,
                  real[:, :, ::1] images_out not None,
                  real[:, :, ::1] variance_out not None,
                  real[:, :, ::1] weights_out not None):
    """Fill a parent's contiguous images, variance and weights in one pass.

    ``images_out`` and ``variance_out`` receive copies of ``images`` and ``variance`` (any
    strides, e.g. the parent's box cut out of the whole image). ``weights_out`` receives
    ``w * footprint * (1 - mask)`` computed in the precision of ``source`` and cast, with
    ``w = 1 / source`` where ``source > 0`` and 0 elsewhere when ``inverse`` (``source`` is
    the variance), else ``w = source`` (user weights): bit for bit numpy's
    ``(np.where(v > 0, 1 / v, 0) * footprint * ~mask).astype(images.dtype)``.

    Parameters
    ----------
    images, variance : numpy.ndarray
        (B, h, w) float32 or float64, both of one dtype.
    source : numpy.ndarray
        (B, h, w) float32 or float64: the variance or the weights.
    inverse : bool
        Whether the weights are the inverse of ``source``.
    footprint : numpy.ndarray
        (h, w) uint8, non-zero inside the parent's footprint.
    mask : numpy.ndarray or None
        (h, w) uint8, non-zero = masked (zero weight).
    images_out, variance_out, weights_out : numpy.ndarray
        (B, h, w) C-contiguous, of the images' dtype.
    """
    cdef Py_ssize_t B = images.shape[0], h = images.shape[1], w = images.shape[2]
    cdef tuple want = (B, h, w)
    cdef bint has_mask = mask is not None
    for name, shape in (("variance", _shape3(variance.shape)), ("source", _shape3(source.shape)),
                        ("images_out", _shape3(images_out.shape)),
                        ("variance_out", _shape3(variance_out.shape)),
                        ("weights_out", _shape3(weights_out.shape))):
        if shape != want:
            raise ValueError(f"{name} has shape {shape}, images {want}")
    if footprint.shape[0] != h or footprint.shape[1] != w:
        raise ValueError(
            f"footprint has shape {(footprint.shape[0], footprint.shape[1])}, needs {(h, w)}")
    if has_mask and (mask.shape[0] != h or mask.shape[1] != w):
        raise ValueError(f"mask has shape {(mask.shape[0], mask.shape[1])}, needs {(h, w)}")
    # three values written per pixel and band
    if _release_gil(3.0 * B * h * w):
        with nogil:
            _parent_arrays_loop(images, variance, source, inverse, footprint, mask, has_mask,
                                images_out, variance_out, weights_out)
    else:
        _parent_arrays_loop(images, variance, source, inverse, footprint, mask, has_mask,
                            images_out, variance_out, weights_out)


cdef int _parent_stats_loop(const real[:, :, ::1] images, const int64_t[:, ::1] boxes,
                            const uint8_t[::1] footprints, const uint8_t[:, ::1] mask,
                            bint has_mask, double[:, ::1] flux, double[:, ::1] centroid,
                            int64_t[:, ::1] counts, double[::1] row) except -1 nogil:
    cdef Py_ssize_t P = boxes.shape[0], B = images.shape[0], p, b, i, j, y, x
    cdef Py_ssize_t y0, x0, h, w, off = 0
    cdef int64_t n_fp, n_masked
    cdef real s
    cdef double pos, tot, sy, sx, rtot, rx
    for p in range(P):
        y0 = boxes[p, 0]
        x0 = boxes[p, 1]
        h = boxes[p, 2]
        w = boxes[p, 3]
        n_fp = n_masked = 0
        tot = sy = sx = 0.0
        for b in range(B):
            flux[p, b] = 0.0
        for i in range(h):
            y = y0 + i
            rtot = rx = 0.0
            for b in range(B):
                row[b] = 0.0
            for j in range(w):
                if not footprints[off + i * w + j]:
                    continue
                x = x0 + j
                n_fp += 1
                if has_mask and mask[y, x]:
                    n_masked += 1
                # the band sum in the image precision, band after band (numpy's sum(0))
                s = images[0, y, x]
                row[0] += s
                for b in range(1, B):
                    s = s + images[b, y, x]
                    row[b] += images[b, y, x]
                pos = s if s > 0 else 0.0
                rtot += pos
                rx += x * pos
            # summed in double, row by row, in a fixed order
            for b in range(B):
                flux[p, b] += row[b]
            tot += rtot
            sy += y * rtot
            sx += rx
        off += h * w
        counts[p, 0] = n_fp
        counts[p, 1] = n_masked
        if tot > 0:
            centroid[p, 0] = sy / tot
            centroid[p, 1] = sx / tot
        else:
            centroid[p, 0] = NAN
            centroid[p, 1] = NAN
    return 0


def parent_stats(const real[:, :, ::1] images not None, const int64_t[:, ::1] boxes not None,
                 const uint8_t[::1] footprints not None, const uint8_t[:, ::1] mask,
                 double[:, ::1] flux not None, double[:, ::1] centroid not None,
                 int64_t[:, ::1] counts not None):
    """Footprint statistics of every parent of an image, in one call.

    For parent ``p`` with box ``boxes[p] = (y0, x0, h, w)`` and footprint the next ``h * w``
    values of ``footprints`` (C order; the footprints of all parents, concatenated):

    - ``flux[p, b]``: the sum of band ``b`` over the footprint, in double;
    - ``centroid[p]``: the (y, x) centroid, in the image frame, of the positive part of the
      band-summed image (bands summed in the image precision) over the footprint; NaN when
      nothing there is positive;
    - ``counts[p]``: the number of footprint pixels and of those that are masked.

    Parameters
    ----------
    images : numpy.ndarray
        (B, H, W) float32 or float64.
    boxes : numpy.ndarray
        (P, 4) int64 ``(y0, x0, h, w)``, inside the image.
    footprints : numpy.ndarray
        (sum of h * w,) uint8, non-zero inside a footprint.
    mask : numpy.ndarray or None
        (H, W) uint8, non-zero = masked.
    flux : numpy.ndarray
        (P, B) float64 output.
    centroid, counts : numpy.ndarray
        (P, 2) float64 and int64 outputs.
    """
    cdef Py_ssize_t B = images.shape[0], H = images.shape[1], W = images.shape[2]
    cdef Py_ssize_t P = boxes.shape[0], p, total = 0
    cdef int64_t y0, x0, h, w
    cdef bint has_mask = mask is not None
    if boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (P, 4), got {(P, boxes.shape[1])}")
    for p in range(P):
        y0, x0, h, w = boxes[p, 0], boxes[p, 1], boxes[p, 2], boxes[p, 3]
        if h <= 0 or w <= 0 or y0 < 0 or x0 < 0 or y0 + h > H or x0 + w > W:
            raise ValueError(f"boxes[{p}] = {(y0, x0, h, w)} is not inside the image {(H, W)}")
        total += h * w
    if footprints.shape[0] != total:
        raise ValueError(f"footprints has {footprints.shape[0]} values, the boxes need {total}")
    if has_mask and (mask.shape[0] != H or mask.shape[1] != W):
        raise ValueError(f"mask has shape {(mask.shape[0], mask.shape[1])}, needs {(H, W)}")
    if flux.shape[0] != P or flux.shape[1] != B:
        raise ValueError(f"flux has shape {(flux.shape[0], flux.shape[1])}, needs {(P, B)}")
    if centroid.shape[0] != P or centroid.shape[1] != 2:
        raise ValueError(
            f"centroid has shape {(centroid.shape[0], centroid.shape[1])}, needs {(P, 2)}")
    if counts.shape[0] != P or counts.shape[1] != 2:
        raise ValueError(f"counts has shape {(counts.shape[0], counts.shape[1])}, needs {(P, 2)}")
    if B == 0:
        raise ValueError("images has no band")
    cdef double[::1] row = np.empty(B, dtype=np.float64)
    if _release_gil(<double>total * B):
        with nogil:
            _parent_stats_loop(images, boxes, footprints, mask, has_mask, flux, centroid,
                               counts, row)
    else:
        _parent_stats_loop(images, boxes, footprints, mask, has_mask, flux, centroid, counts,
                           row)


cdef int _component_moments_loop(const other_real[::1] sed, const real[:, ::1] morphology,
                                 Py_ssize_t y0, Py_ssize_t x0, double[3] out) except -1 nogil:
    cdef Py_ssize_t h = morphology.shape[0], w = morphology.shape[1], i, j
    cdef double wsed = 0.0, m, tot = 0.0, sy = 0.0, sx = 0.0, rtot, rx
    for i in range(sed.shape[0]):
        wsed += sed[i]
    for i in range(h):
        rtot = rx = 0.0
        for j in range(w):
            m = morphology[i, j]
            rtot += m
            rx += (x0 + j) * m
        tot += rtot
        sy += (y0 + i) * rtot
        sx += rx
    out[0] = wsed * tot
    out[1] = wsed * sy
    out[2] = wsed * sx
    return 0


def component_moments(const other_real[::1] sed not None,
                      const real[:, ::1] morphology not None, Py_ssize_t y0,
                      Py_ssize_t x0):
    """Flux-weighted moments of a component ``sed x morphology`` placed at (y0, x0).

    Returns ``(F, F * <y>, F * <x>)`` with ``F = sum(sed) * sum(morphology)`` and ``<y>``,
    ``<x>`` the morphology's centroid in the frame of (y0, x0) (summed in double): the sums
    of all bands' model over a component, from which a source's centroid follows.

    Parameters
    ----------
    sed : numpy.ndarray
        (B,) float32 or float64.
    morphology : numpy.ndarray
        (h, w) float32 or float64, C-contiguous.
    y0, x0 : int
        Position of the morphology's first pixel.
    """
    cdef double[3] out
    if _release_gil(<double>morphology.shape[0] * morphology.shape[1]):
        with nogil:
            _component_moments_loop(sed, morphology, y0, x0, out)
    else:
        _component_moments_loop(sed, morphology, y0, x0, out)
    return out[0], out[1], out[2]


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
