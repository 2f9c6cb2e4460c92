# cython: language_level=3
"""Pixel loops of the catalog driver (:mod:`cdeblend.catalog`) and of the model files.

- ``parent_arrays``: a parent's contiguous images, variance and weights, in one pass.
- ``parent_stats``: every parent's footprint pixel counts, flux per band and centroid.
- ``component_moments``: a component's flux-weighted zeroth and first moments.

They replace runs of short numpy calls in the Python glue around the fits: numpy releases the
GIL for any operation on more than ~500 elements, so each of those calls handed the GIL to the
other worker thread for microseconds of work (see ``_shared/gil.pxd``). A source of weights
or an SED may have another precision (``other_real``) than the images (``real``).
"""

from libc.math cimport NAN
from libc.stdint cimport int64_t, uint8_t

from ._shared.fused cimport other_real, real
from ._shared.gil cimport _release_gil

import numpy as np


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
