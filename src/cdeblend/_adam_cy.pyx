# cython: language_level=3
"""One proximal ADAM iteration for every component of a blend, fused with the prox chain.

Layout (built and validated by :mod:`cdeblend.blend`): K factorized components, B bands.

* ``sed`` and its ADAM state ``sed_m``, ``sed_v``, ``sed_vhat``: (K, B) float64.
* ``morph`` and its ADAM state: one flat float64 buffer each; component k's (h, w)
  morphology starts at ``comp[k, 4]`` in C order.
* ``comp`` (K, 7) int64: ``y0, x0, h, w, offset, peak_y, peak_x`` with the box origin in
  the blend frame and the peak in the component's local frame.
* ``grad`` (B, H, W): dL/dM, the gradient of the loss w.r.t. the blend's model-space image
  (one forward and one adjoint convolution per band, done by the Observation).

All components read the same ``grad`` (Jacobi style: no re-rendering between components),
so their order does not matter. Nothing here allocates Python objects or holds the GIL.
"""

from libc.math cimport isfinite, pow, sqrt
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport free, malloc

ctypedef fused real:
    float
    double

include "_monotonic_radial.pxi"

#: ADAM variants (spec 3.5); AMSGrad is the pipeline default.
AMSGRAD = 0
ADAM = 1


cdef inline void _gradients(const real[:, :, ::1] grad, const double* s, const double* m,
                            Py_ssize_t B, Py_ssize_t y0, Py_ssize_t x0, Py_ssize_t h,
                            Py_ssize_t w, double* gs, double* gm) noexcept nogil:
    """gs[b] = sum_p G[b, p] m[p];  gm[p] = sum_b s[b] G[b, p] over the component's box.

    The sums over pixels run row by row in four interleaved partial sums (a fixed order:
    deterministic, and without the single add chain that bounded the loop by the adder's
    latency); the per-pixel update is a separate, vectorisable loop."""
    cdef Py_ssize_t b, y, x, i
    cdef double sb, s0, s1, s2, s3
    cdef const real* g
    cdef const double* mr
    cdef double* gr
    for i in range(h * w):
        gm[i] = 0.0
    for b in range(B):
        s0 = s1 = s2 = s3 = 0.0
        sb = s[b]
        for y in range(h):
            g = &grad[b, y0 + y, x0]
            mr = m + y * w
            gr = gm + y * w
            x = 0
            while x + 4 <= w:
                s0 += <double>g[x] * mr[x]
                s1 += <double>g[x + 1] * mr[x + 1]
                s2 += <double>g[x + 2] * mr[x + 2]
                s3 += <double>g[x + 3] * mr[x + 3]
                x += 4
            while x < w:
                s0 += <double>g[x] * mr[x]
                x += 1
            for x in range(w):
                gr[x] += sb * <double>g[x]
        gs[b] = (s0 + s1) + (s2 + s3)


def component_gradients(const real[:, :, ::1] grad, const double[:, ::1] sed,
                        const double[::1] morph, const int64_t[:, ::1] comp,
                        double[:, ::1] grad_sed, double[::1] grad_morph):
    """Gradients of the loss w.r.t. every SED and morphology from the model gradient ``grad``.

    ``grad_sed`` has the shape of ``sed``; ``grad_morph`` the layout of ``morph``.
    """
    cdef Py_ssize_t K = comp.shape[0], B = sed.shape[1], k, off
    with nogil:
        for k in range(K):
            off = comp[k, 4]
            _gradients(grad, &sed[k, 0], &morph[off], B, comp[k, 0], comp[k, 1], comp[k, 2],
                       comp[k, 3], &grad_sed[k, 0], &grad_morph[off])


def render(const double[:, ::1] sed, const double[::1] morph, const int64_t[:, ::1] comp,
           real[:, :, ::1] model, Py_ssize_t H=-1, Py_ssize_t W=-1):
    """model = sum_k sed_k (x) morph_k, each inserted at its box (model is overwritten).

    With ``H, W`` >= 0 only the ``[:, :H, :W]`` corner of ``model`` is written (e.g. the
    frame inside a zero-padded FFT buffer)."""
    if H < 0 or H > model.shape[1]:
        H = model.shape[1]
    if W < 0 or W > model.shape[2]:
        W = model.shape[2]
    with nogil:
        _render(sed, morph, comp, model, H, W)


cdef void _render(const double[:, ::1] sed, const double[::1] morph,
                  const int64_t[:, ::1] comp, real[:, :, ::1] model, Py_ssize_t H,
                  Py_ssize_t W) noexcept nogil:
    cdef Py_ssize_t K = comp.shape[0], B = model.shape[0]
    cdef Py_ssize_t k, b, y, x, off, y0, x0, h, w
    cdef double s
    for b in range(B):
        for y in range(H):
            for x in range(W):
                model[b, y, x] = 0
    for k in range(K):
        y0 = comp[k, 0]
        x0 = comp[k, 1]
        h = comp[k, 2]
        w = comp[k, 3]
        off = comp[k, 4]
        for b in range(B):
            s = sed[k, b]
            for y in range(h):
                for x in range(w):
                    model[b, y0 + y, x0 + x] += <real>(s * morph[off + y * w + x])


cdef inline double _adam_delta(double g, double* m1, double* v, double* vhat, double b1,
                               double b2, double eps, double c1, double c2,
                               int variant) noexcept nogil:
    """Update the moments in place and return phi / psi (the direction before the step)."""
    m1[0] = (1 - b1) * g + b1 * m1[0]
    v[0] = (1 - b2) * g * g + b2 * v[0]
    if variant == 0:
        if v[0] > vhat[0]:
            vhat[0] = v[0]
        return m1[0] / sqrt(vhat[0] if vhat[0] > eps else eps)
    return (m1[0] / c1) / (sqrt(v[0] / c2) + eps)


cdef inline void _amsgrad_run(double* x, double* m1,
                              double* v, double* vhat,
                              const double* g, Py_ssize_t n, double step,
                              double b1, double b2, double eps) noexcept nogil:
    """The AMSGrad branch of :func:`_adam_delta` over a contiguous run (same arithmetic,
    written without pointers to scalars so that the compiler can vectorise it)."""
    cdef Py_ssize_t i
    cdef double gi, mi, vi, hi
    for i in range(n):
        gi = g[i]
        mi = (1 - b1) * gi + b1 * m1[i]
        vi = (1 - b2) * gi * gi + b2 * v[i]
        hi = vhat[i]
        hi = vi if vi > hi else hi
        m1[i] = mi
        v[i] = vi
        vhat[i] = hi
        x[i] -= step * (mi / sqrt(hi if hi > eps else eps))


def adam_prox_step(const real[:, :, ::1] grad,
                   double[:, ::1] sed, double[:, ::1] sed_m, double[:, ::1] sed_v,
                   double[:, ::1] sed_vhat,
                   double[::1] morph, double[::1] morph_m, double[::1] morph_v,
                   double[::1] morph_vhat,
                   const int64_t[:, ::1] comp, const double[::1] bg_thresh,
                   const double[::1] bg_rms, const double[::1] sed_min_step,
                   double sed_step, double morph_step, Py_ssize_t it, double b1, double b2, double eps,
                   double floor, int variant, bint monotonic,
                   const int32_t[::1] vdy, const int32_t[::1] vdx, const double[:, ::1] vw,
                   bint want_bounds, int64_t[:, ::1] bounds):
    """One proximal ADAM iteration of every component (spec 3.3-3.7), in place.

    For each component: SED gradient with the current morphology, morphology gradient with
    the SED before its update; SED step ``max(sed_min_step[b], sed_step * mean(sed))``, morphology
    step ``morph_step``, both divided by 10 when ``it == 0``; SED prox (floor, non-finite ->
    floor); morphology prox: radial monotonicity about the peak (if ``monotonic``), noise
    threshold ``sed[b] * m < bg_rms[b] * bg_thresh[k]`` in all bands -> 0 (plain positivity when
    ``bg_thresh[k] < 0``), non-finite -> 0, peak pixel at least ``floor``, peak-normalise.

    With ``want_bounds``, ``bounds[k] = (y0, x0, y1, x1)`` (local, inclusive) of the pixels
    where ``any_b sed[b] * m >= bg_rms[b] * bg_thresh[k]`` after the update, or all -1 if none
    (components without a threshold get -2: they never resize).
    """
    cdef RadialTable table
    cdef int status
    table.cnt = NULL
    if monotonic:
        with nogil:
            status = _table_from_list(&table, &vdy[0], &vdx[0], &vw[0, 0], vdy.shape[0])
        if status != 0:
            raise MemoryError()
    try:
        _prox_step(grad, sed, sed_m, sed_v, sed_vhat, morph, morph_m, morph_v, morph_vhat, comp,
                   bg_thresh, bg_rms, sed_min_step, sed_step, morph_step, it, b1, b2, eps,
                   floor, variant, monotonic, &table, want_bounds, bounds)
    finally:
        if monotonic:
            _table_free(&table)


cdef class MonotonicTable:
    """The radial monotonicity operator of a visiting list in the grid layout used by
    :func:`fit_step` (built once per list; see ``_monotonic_radial.pxi``)."""

    cdef RadialTable table
    cdef readonly Py_ssize_t half

    def __cinit__(self, const int32_t[::1] vdy, const int32_t[::1] vdx,
                  const double[:, ::1] vw):
        self.table.cnt = NULL
        if vdy.shape[0] == 0 or vdx.shape[0] != vdy.shape[0] or vw.shape[0] != vdy.shape[0] \
                or vw.shape[1] != 8:
            raise ValueError("vdy, vdx and vw must be a non-empty visiting list")
        if _table_from_list(&self.table, &vdy[0], &vdx[0], &vw[0, 0], vdy.shape[0]) != 0:
            raise MemoryError()
        self.half = self.table.half

    def __dealloc__(self):
        _table_free(&self.table)


def fit_step(const real[:, :, ::1] grad,
             double[:, ::1] sed, double[:, :, ::1] sed_state,
             double[:, ::1] morph_all,
             const int64_t[:, ::1] comp, const double[::1] bg_thresh,
             const double[::1] bg_rms, const double[::1] sed_min_step,
             double sed_step, double morph_step, Py_ssize_t it, double b1, double b2,
             double eps, double floor, int variant, MonotonicTable table,
             bint want_bounds, int64_t[:, ::1] bounds):
    """:func:`adam_prox_step` for the fitter: the SED moments as one (3, K, B) array, the
    morphology and its three moments as the rows of one (4, N) array, and a prebuilt
    :class:`MonotonicTable` (None: no monotonicity). ``grad`` may be a strided view (e.g. the
    corner of an FFT buffer)."""
    cdef RadialTable* t = NULL
    if table is not None:
        t = &table.table
    _prox_step(grad, sed, sed_state[0], sed_state[1], sed_state[2], morph_all[0],
               morph_all[1], morph_all[2], morph_all[3], comp, bg_thresh, bg_rms,
               sed_min_step, sed_step, morph_step, it, b1, b2, eps, floor, variant,
               table is not None, t, want_bounds, bounds)


cdef int _prox_step(const real[:, :, ::1] grad,
                    double[:, ::1] sed, double[:, ::1] sed_m, double[:, ::1] sed_v,
                    double[:, ::1] sed_vhat,
                    double[::1] morph, double[::1] morph_m, double[::1] morph_v,
                    double[::1] morph_vhat,
                    const int64_t[:, ::1] comp, const double[::1] bg_thresh,
                    const double[::1] bg_rms, const double[::1] sed_min_step,
                    double sed_step, double morph_step, Py_ssize_t it, double b1, double b2,
                    double eps, double floor, int variant, bint monotonic,
                    const RadialTable* table, bint want_bounds,
                    int64_t[:, ::1] bounds) except -1:
    cdef Py_ssize_t K = comp.shape[0], B = sed.shape[1]
    cdef Py_ssize_t k, b, i, y, x, off, y0, x0, h, w, py, px, maxhw = 1, pk
    cdef Py_ssize_t ly0, lx0, ly1, lx1
    cdef double t = <double>(it + 1), c1, c2, mean_s, step, damp, thr, mx, v, inv
    cdef double* gs
    cdef double* gm
    cdef double* s_old
    cdef double* tb
    cdef double* sk
    cdef bint keep
    for k in range(K):
        if comp[k, 2] * comp[k, 3] > maxhw:
            maxhw = comp[k, 2] * comp[k, 3]
    gs = <double*>malloc((3 * B + maxhw) * sizeof(double))
    if gs == NULL:
        raise MemoryError()
    s_old = gs + B
    tb = gs + 2 * B
    gm = gs + 3 * B
    c1 = 1 - pow(b1, t)
    c2 = 1 - pow(b2, t)
    damp = 0.1 if it == 0 else 1.0
    with nogil:
        for k in range(K):
            y0 = comp[k, 0]
            x0 = comp[k, 1]
            h = comp[k, 2]
            w = comp[k, 3]
            off = comp[k, 4]
            py = comp[k, 5]
            px = comp[k, 6]
            for b in range(B):
                s_old[b] = sed[k, b]
            _gradients(grad, s_old, &morph[off], B, y0, x0, h, w, gs, gm)

            # --- SED: ADAM step, then floor
            mean_s = 0.0
            for b in range(B):
                mean_s += s_old[b]
            mean_s /= B
            for b in range(B):
                step = sed_min_step[b]
                if sed_step * mean_s > step:
                    step = sed_step * mean_s
                v = sed[k, b] - damp * step * _adam_delta(
                    gs[b], &sed_m[k, b], &sed_v[k, b], &sed_vhat[k, b], b1, b2, eps, c1, c2,
                    variant)
                if not isfinite(v) or v < floor:
                    v = floor
                sed[k, b] = v

            # --- morphology: ADAM step
            step = damp * morph_step
            if variant == 0:
                _amsgrad_run(&morph[off], &morph_m[off], &morph_v[off], &morph_vhat[off], gm,
                             h * w, step, b1, b2, eps)
            else:
                for i in range(h * w):
                    morph[off + i] -= step * _adam_delta(
                        gm[i], &morph_m[off + i], &morph_v[off + i], &morph_vhat[off + i],
                        b1, b2, eps, c1, c2, variant)

            # --- morphology prox chain
            if monotonic:
                _radial_project_table(&morph[off], h, w, py, px, table)
            thr = bg_thresh[k]
            for b in range(B):
                tb[b] = bg_rms[b] * thr
            sk = &sed[k, 0]
            mx = 0.0  # the maximum, found in the same pass
            for i in range(h * w):
                v = morph[off + i]
                if not isfinite(v):
                    v = 0.0
                elif thr >= 0:
                    keep = False
                    for b in range(B):
                        if sk[b] * v >= tb[b]:
                            keep = True
                            break
                    if not keep:
                        v = 0.0
                elif v < 0:
                    v = 0.0
                morph[off + i] = v
                if v > mx:
                    mx = v
            pk = off + py * w + px
            if morph[pk] < floor:
                morph[pk] = floor
                if floor > mx:
                    mx = floor
            if mx > 0:
                inv = 1.0 / mx
                for i in range(h * w):
                    morph[off + i] *= inv

            # --- significant pixels, for box resizing
            if want_bounds:
                if thr < 0:
                    bounds[k, 0] = bounds[k, 1] = bounds[k, 2] = bounds[k, 3] = -2
                    continue
                ly0 = h
                lx0 = w
                ly1 = -1
                lx1 = -1
                for y in range(h):
                    for x in range(w):
                        v = morph[off + y * w + x]
                        keep = False
                        for b in range(B):
                            if sed[k, b] * v >= tb[b]:
                                keep = True
                                break
                        if keep:
                            if y < ly0:
                                ly0 = y
                            if y > ly1:
                                ly1 = y
                            if x < lx0:
                                lx0 = x
                            if x > lx1:
                                lx1 = x
                if ly1 < 0:
                    bounds[k, 0] = bounds[k, 1] = bounds[k, 2] = bounds[k, 3] = -1
                else:
                    bounds[k, 0] = ly0
                    bounds[k, 1] = lx0
                    bounds[k, 2] = ly1
                    bounds[k, 3] = lx1
    free(gs)
    return 0


def copy_overlap(const double[::1] src, const int64_t[:, ::1] src_comp, double[::1] dst,
                 const int64_t[:, ::1] dst_comp, const int64_t[::1] mapping):
    """Re-grid flat per-component arrays onto new boxes (box resizing, spec 3.9).

    Component j of the destination layout takes, on the overlap of its box and the box of
    source component ``mapping[j]``, that component's values; nothing is copied when
    ``mapping[j] < 0``. ``dst`` must be zero on entry (new pixels stay 0).
    """
    cdef Py_ssize_t K = dst_comp.shape[0], j, k, y, x, ya, yb, xa, xb
    cdef Py_ssize_t sy0, sx0, sw, soff, dy0, dx0, dw, doff
    with nogil:
        for j in range(K):
            k = mapping[j]
            if k < 0:
                continue
            sy0 = src_comp[k, 0]
            sx0 = src_comp[k, 1]
            sw = src_comp[k, 3]
            soff = src_comp[k, 4]
            dy0 = dst_comp[j, 0]
            dx0 = dst_comp[j, 1]
            dw = dst_comp[j, 3]
            doff = dst_comp[j, 4]
            ya = sy0 if sy0 > dy0 else dy0
            yb = sy0 + src_comp[k, 2]
            if dy0 + dst_comp[j, 2] < yb:
                yb = dy0 + dst_comp[j, 2]
            xa = sx0 if sx0 > dx0 else dx0
            xb = sx0 + sw
            if dx0 + dw < xb:
                xb = dx0 + dw
            for y in range(ya, yb):
                for x in range(xa, xb):
                    dst[doff + (y - dy0) * dw + (x - dx0)] = src[soff + (y - sy0) * sw + (x - sx0)]


def copy_overlap_rows(const double[:, ::1] src, const int64_t[:, ::1] src_comp,
                      double[:, ::1] dst, const int64_t[:, ::1] dst_comp,
                      const int64_t[::1] mapping):
    """:func:`copy_overlap` applied to every row of ``src`` -> ``dst`` (e.g. a morphology
    and its ADAM moments stacked as the rows of one array), in one call."""
    cdef Py_ssize_t r
    for r in range(src.shape[0]):
        copy_overlap(src[r], src_comp, dst[r], dst_comp, mapping)


def resized_table(const int64_t[:, ::1] comp, const int64_t[:, ::1] bounds,
                  const int64_t[:, ::1] peaks, Py_ssize_t pad, Py_ssize_t H, Py_ssize_t W,
                  int64_t[:, ::1] out):
    """New component table after box resizing (spec 3.9), or -1 when no box changes.

    Component k's new box spans its significant pixels ``bounds[k]`` (local, inclusive, as
    written by :func:`adam_prox_step`) plus ``pad`` on every side, clipped to the
    ``(H, W)`` frame; with no significant pixel (-1) it is the peak grown by ``pad``;
    components without a threshold (-2) keep their box. ``peaks`` (K, 2) are in the frame.
    ``out`` (K, 7) receives the full table (boxes, offsets, local peaks); returns its total
    number of pixels.
    """
    cdef Py_ssize_t K = comp.shape[0], k, y0, x0, y1, x1, off = 0
    cdef bint changed = False
    with nogil:
        for k in range(K):
            if bounds[k, 0] == -2:
                y0 = comp[k, 0]
                x0 = comp[k, 1]
                y1 = y0 + comp[k, 2]
                x1 = x0 + comp[k, 3]
            else:
                if bounds[k, 0] == -1:
                    y0 = peaks[k, 0]
                    x0 = peaks[k, 1]
                    y1 = y0
                    x1 = x0
                else:
                    y0 = comp[k, 0] + bounds[k, 0]
                    x0 = comp[k, 1] + bounds[k, 1]
                    y1 = comp[k, 0] + bounds[k, 2]
                    x1 = comp[k, 1] + bounds[k, 3]
                y0 = y0 - pad if y0 - pad > 0 else 0
                x0 = x0 - pad if x0 - pad > 0 else 0
                y1 = y1 + pad + 1 if y1 + pad + 1 < H else H
                x1 = x1 + pad + 1 if x1 + pad + 1 < W else W
            out[k, 0] = y0
            out[k, 1] = x0
            out[k, 2] = y1 - y0
            out[k, 3] = x1 - x0
            out[k, 4] = off
            out[k, 5] = peaks[k, 0] - y0
            out[k, 6] = peaks[k, 1] - x0
            off += (y1 - y0) * (x1 - x0)
            if (y0 != comp[k, 0] or x0 != comp[k, 1] or y1 - y0 != comp[k, 2]
                    or x1 - x0 != comp[k, 3]):
                changed = True
    return off if changed else -1


cdef class FitKernel:
    """The per-iteration kernels of the fitter with their buffers bound once.

    Binding the ~15 arrays of :func:`fit_step` costs more per call than the arithmetic of a
    small blend; here they are bound by :meth:`bind` (after every re-pack) and
    :meth:`render` / :meth:`step` only take the model or gradient buffer.
    """

    cdef double[:, ::1] sed
    cdef double[:, :, ::1] sed_state
    cdef double[:, ::1] morph_all
    cdef int64_t[:, ::1] comp
    cdef double[::1] bg_thresh
    cdef double[::1] bg_rms
    cdef double[::1] min_step
    cdef int64_t[:, ::1] bounds
    cdef MonotonicTable table
    cdef double sed_step, morph_step, b1, b2, eps, floor
    cdef int variant

    def __init__(self, double[::1] bg_rms, double[::1] min_step, double sed_step,
                 double morph_step, double b1, double b2, double eps, double floor,
                 int variant):
        self.bg_rms = bg_rms
        self.min_step = min_step
        self.sed_step = sed_step
        self.morph_step = morph_step
        self.b1 = b1
        self.b2 = b2
        self.eps = eps
        self.floor = floor
        self.variant = variant

    def bind(self, double[:, ::1] sed, double[:, :, ::1] sed_state, double[:, ::1] morph_all,
             int64_t[:, ::1] comp, double[::1] bg_thresh, MonotonicTable table,
             int64_t[:, ::1] bounds):
        """Bind the parameters (layouts as in :func:`fit_step`); ``table`` None: no
        monotonicity."""
        if (sed_state.shape[0] != 3 or sed_state.shape[1] != sed.shape[0]
                or sed_state.shape[2] != sed.shape[1] or morph_all.shape[0] != 4
                or comp.shape[0] != sed.shape[0] or bg_thresh.shape[0] != sed.shape[0]
                or bounds.shape[0] != sed.shape[0] or self.bg_rms.shape[0] != sed.shape[1]):
            raise ValueError("inconsistent fit buffers")
        self.sed = sed
        self.sed_state = sed_state
        self.morph_all = morph_all
        self.comp = comp
        self.bg_thresh = bg_thresh
        self.table = table
        self.bounds = bounds

    def render(self, real[:, :, ::1] model, Py_ssize_t H, Py_ssize_t W):
        """:func:`render` of the bound parameters into ``model[:, :H, :W]``."""
        if H < 0 or H > model.shape[1]:
            H = model.shape[1]
        if W < 0 or W > model.shape[2]:
            W = model.shape[2]
        with nogil:
            _render(self.sed, self.morph_all[0], self.comp, model, H, W)

    def step(self, const real[:, :, ::1] grad, Py_ssize_t it, bint want_bounds):
        """:func:`fit_step` of the bound parameters (bounds into the bound ``bounds``)."""
        cdef RadialTable* t = NULL
        if self.table is not None:
            t = &self.table.table
        _prox_step(grad, self.sed, self.sed_state[0], self.sed_state[1], self.sed_state[2],
                   self.morph_all[0], self.morph_all[1], self.morph_all[2], self.morph_all[3],
                   self.comp, self.bg_thresh, self.bg_rms, self.min_step, self.sed_step,
                   self.morph_step, it, self.b1, self.b2, self.eps, self.floor, self.variant,
                   self.table is not None, t, want_bounds, self.bounds)


def monotonic_reach(const int64_t[:, ::1] comp):
    """Largest distance (pixels, Chebyshev) from a component's peak to its box edge, plus 1
    (the operator re-centres up to 1 px away): the half-size the monotonicity table needs."""
    cdef Py_ssize_t K = comp.shape[0], k, need = 0, d
    with nogil:
        for k in range(K):
            d = comp[k, 5]
            if comp[k, 6] > d:
                d = comp[k, 6]
            if comp[k, 2] - 1 - comp[k, 5] > d:
                d = comp[k, 2] - 1 - comp[k, 5]
            if comp[k, 3] - 1 - comp[k, 6] > d:
                d = comp[k, 3] - 1 - comp[k, 6]
            if d + 1 > need:
                need = d + 1
    return need
