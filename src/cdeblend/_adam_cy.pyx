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

from libc.float cimport DBL_MAX
from libc.math cimport INFINITY, NAN, fabs, isfinite, nextafter, pow, sqrt
from libc.string cimport memcpy
from libc.stdint cimport INT64_MAX, int32_t, int64_t, uint64_t
from libc.stdlib cimport free, malloc

from ._convolve_cy cimport _direct_conv, _weighted_residual
from ._fft cimport cd_conv, cd_conv_free, cd_conv_init
from ._monotonic_cy cimport (RadialTable, _radial_project_table, _table_free,
                             _table_from_list)
from ._shared.fused cimport real
from ._shared.gil cimport _release_gil
from ._symmetry_cy cimport _symmetrize

import numpy as np

#: ADAM variants (docs/spec/multi_band.md 3.5); AMSGrad is the pipeline default.
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
    if _release_gil(<double>model.shape[0] * (H * W + morph.shape[0])):
        with nogil:
            _render(sed, morph, comp, model, H, W)
    else:
        _render(sed, morph, comp, model, H, W)


cdef int _render(const double[:, ::1] sed, const double[::1] morph,
                 const int64_t[:, ::1] comp, real[:, :, ::1] model, Py_ssize_t H,
                 Py_ssize_t W) except -1 nogil:
    _render_bands(sed, morph, comp, model, H, W, 0, model.shape[0])
    return 0


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
                   double sed_step, double morph_step, Py_ssize_t it, double b1, double b2,
                   double eps,
                   double floor, int variant, bint monotonic,
                   const int32_t[::1] vdy, const int32_t[::1] vdx, const double[:, ::1] vw,
                   bint want_bounds, int64_t[:, ::1] bounds,
                   const double[:, ::1] symmetry=None, double carry=0.0):
    """One proximal ADAM iteration of every component (docs/spec/multi_band.md 3.3-3.7), in place.

    For each component: SED gradient with the current morphology, morphology gradient with
    the SED before its update; SED step ``max(sed_min_step[b], sed_step * mean(sed))``, morphology
    step ``morph_step``, both divided by 10 when ``it == 0``; SED prox (floor, non-finite ->
    floor); morphology prox: radial monotonicity about the peak (if ``monotonic``), the
    partial symmetry of :func:`cdeblend._symmetry_cy.symmetrize` with strength
    ``symmetry[k, 0]`` about the doubled centre ``2 peak + symmetry[k, 1:]`` ((K, 3)
    float64, the shifts in {-1, 0, 1}; None: none), noise threshold
    ``sed[b] * m < bg_rms[b] * bg_thresh[k]`` in all bands -> 0 (plain positivity when
    ``bg_thresh[k] < 0``), non-finite -> 0, peak pixel at least ``floor``, peak-normalise;
    with ``carry`` > 0, when the maximum p before the normalisation is above 1, the SED is
    multiplied by ``min(p, 1 + carry)`` (``DeblendConfig.peak_carry``).

    With ``want_bounds``, ``bounds[k] = (y0, x0, y1, x1)`` (local, inclusive) of the pixels
    where ``any_b sed[b] * m >= bg_rms[b] * bg_thresh[k]`` after the update (with the
    carried SED), or all -1 if none (components without a threshold get -2: they never
    resize).
    """
    cdef RadialTable table
    cdef int status
    table.cnt = NULL
    _check_symmetry(symmetry, comp.shape[0])
    if monotonic:
        with nogil:
            status = _table_from_list(&table, &vdy[0], &vdx[0], &vw[0, 0], vdy.shape[0])
        if status != 0:
            raise MemoryError()
    try:
        _prox_step(grad, sed, sed_m, sed_v, sed_vhat, morph, morph_m, morph_v, morph_vhat, comp,
                   bg_thresh, bg_rms, sed_min_step, sed_step, morph_step, it, b1, b2, eps,
                   floor, carry, variant, monotonic, &table, want_bounds, bounds,
                   _symmetry_ptr(symmetry))
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
             bint want_bounds, int64_t[:, ::1] bounds,
             const double[:, ::1] symmetry=None, double carry=0.0):
    """:func:`adam_prox_step` for the fitter: the SED moments as one (3, K, B) array, the
    morphology and its three moments as the rows of one (4, N) array, and a prebuilt
    :class:`MonotonicTable` (None: no monotonicity). ``grad`` may be a strided view (e.g. the
    corner of an FFT buffer)."""
    cdef RadialTable* t = NULL
    _check_symmetry(symmetry, comp.shape[0])
    if table is not None:
        t = &table.table
    _prox_step(grad, sed, sed_state[0], sed_state[1], sed_state[2], morph_all[0],
               morph_all[1], morph_all[2], morph_all[3], comp, bg_thresh, bg_rms,
               sed_min_step, sed_step, morph_step, it, b1, b2, eps, floor, carry, variant,
               table is not None, t, want_bounds, bounds, _symmetry_ptr(symmetry))


cdef _check_symmetry(const double[:, ::1] symmetry, Py_ssize_t K):
    """Raise unless ``symmetry`` is None or (K, 3) rows (strength in [0, 1], doubled-centre
    shifts in {-1, 0, 1})."""
    cdef Py_ssize_t k, a
    if symmetry is None:
        return
    if symmetry.shape[0] != K or symmetry.shape[1] != 3:
        raise ValueError(f"symmetry must hold one (strength, dy, dx) row per component "
                         f"({K}), got shape ({symmetry.shape[0]}, {symmetry.shape[1]})")
    for k in range(K):
        if not 0 <= symmetry[k, 0] <= 1:
            raise ValueError(f"symmetry strengths must be in [0, 1], got {symmetry[k, 0]!r}")
        for a in range(1, 3):
            if symmetry[k, a] not in (-1.0, 0.0, 1.0):
                raise ValueError(f"symmetry shifts must be -1, 0 or 1, got {symmetry[k, a]!r}")


cdef inline const double* _symmetry_ptr(const double[:, ::1] symmetry) noexcept nogil:
    """The rows' data, or NULL (no symmetry) for None or no components."""
    if symmetry is None or symmetry.shape[0] == 0:
        return NULL
    return &symmetry[0, 0]


cdef Py_ssize_t _scratch_size(const int64_t[:, ::1] comp, Py_ssize_t B) noexcept nogil:
    """Doubles of work space :func:`_prox_core` needs: 3 B + the largest box."""
    cdef Py_ssize_t k, maxhw = 1
    for k in range(comp.shape[0]):
        if comp[k, 2] * comp[k, 3] > maxhw:
            maxhw = comp[k, 2] * comp[k, 3]
    return 3 * B + maxhw


cdef int _prox_step(const real[:, :, ::1] grad,
                    double[:, ::1] sed, double[:, ::1] sed_m, double[:, ::1] sed_v,
                    double[:, ::1] sed_vhat,
                    double[::1] morph, double[::1] morph_m, double[::1] morph_v,
                    double[::1] morph_vhat,
                    const int64_t[:, ::1] comp, const double[::1] bg_thresh,
                    const double[::1] bg_rms, const double[::1] sed_min_step,
                    double sed_step, double morph_step, Py_ssize_t it, double b1, double b2,
                    double eps, double floor, double carry, int variant, bint monotonic,
                    const RadialTable* table, bint want_bounds,
                    int64_t[:, ::1] bounds, const double* symmetry) except -1:
    """:func:`_prox_core` with its work space allocated here."""
    cdef double* scratch = <double*>malloc(_scratch_size(comp, sed.shape[1]) * sizeof(double))
    if scratch == NULL:
        raise MemoryError()
    try:
        # per pixel: the gradient over the bands, the update, the prox chain
        if _release_gil(20.0 * sed.shape[1] * morph.shape[0]):
            with nogil:
                _prox_core(grad, sed, sed_m, sed_v, sed_vhat, morph, morph_m, morph_v,
                           morph_vhat, comp, bg_thresh, bg_rms, sed_min_step, sed_step,
                           morph_step, it, b1, b2, eps, floor, carry, variant, monotonic, table,
                           want_bounds, bounds, scratch, symmetry)
        else:
            _prox_core(grad, sed, sed_m, sed_v, sed_vhat, morph, morph_m, morph_v, morph_vhat,
                       comp, bg_thresh, bg_rms, sed_min_step, sed_step, morph_step, it, b1, b2,
                       eps, floor, carry, variant, monotonic, table, want_bounds, bounds, scratch,
                       symmetry)
    finally:
        free(scratch)
    return 0


cdef int _prox_core(const real[:, :, ::1] grad,
                    double[:, ::1] sed, double[:, ::1] sed_m, double[:, ::1] sed_v,
                    double[:, ::1] sed_vhat,
                    double[::1] morph, double[::1] morph_m, double[::1] morph_v,
                    double[::1] morph_vhat,
                    const int64_t[:, ::1] comp, const double[::1] bg_thresh,
                    const double[::1] bg_rms, const double[::1] sed_min_step,
                    double sed_step, double morph_step, Py_ssize_t it, double b1, double b2,
                    double eps, double floor, double carry, int variant, bint monotonic,
                    const RadialTable* table, bint want_bounds,
                    int64_t[:, ::1] bounds,
                    double* gs, const double* symmetry) except -1 nogil:
    """One proximal ADAM iteration of every component (see :func:`adam_prox_step`);
    ``gs``: work space of :func:`_scratch_size` doubles."""
    cdef Py_ssize_t k
    cdef double t = <double>(it + 1)
    cdef double c1 = 1 - pow(b1, t), c2 = 1 - pow(b2, t)
    cdef double damp = 0.1 if it == 0 else 1.0
    for k in range(comp.shape[0]):
        _prox_one(k, grad, sed, sed_m, sed_v, sed_vhat, morph, morph_m, morph_v, morph_vhat,
                  comp, bg_thresh, bg_rms, sed_min_step, sed_step, morph_step, b1, b2, eps,
                  c1, c2, damp, floor, carry, variant, monotonic, table, want_bounds, bounds, gs,
                  NULL if symmetry == NULL else symmetry + 3 * k)
    return 0


cdef inline int64_t _order_key(double v) noexcept nogil:
    """An integer that orders finite doubles as their values (both zeros map to 0)."""
    cdef int64_t u
    memcpy(&u, &v, sizeof(double))
    return -(u & INT64_MAX) if u < 0 else u


cdef inline double _from_key(int64_t key) noexcept nogil:
    """The double of :func:`_order_key` ``key`` (+0.0 for 0)."""
    cdef uint64_t u = (<uint64_t>(-key) | (<uint64_t>1 << 63)) if key < 0 else <uint64_t>key
    cdef double v
    memcpy(&v, &u, sizeof(double))
    return v


cdef double _band_cut(double s, double t) noexcept nogil:
    """The least finite ``v`` with ``s * v >= t`` as computed (rounded): ``-inf`` when every
    finite ``v`` passes, ``+inf`` when none does, NaN when ``s < 0`` or ``s``, ``t`` are not
    finite. For ``s >= 0`` the rounded product is monotone in ``v``, so the passing values
    are exactly those ``>=`` this cut."""
    cdef double c, lo
    cdef int64_t a, z, mid
    cdef int _step
    if not (isfinite(s) and isfinite(t)) or s < 0:
        return NAN
    if s * -DBL_MAX >= t:
        return -INFINITY
    if not s * DBL_MAX >= t:
        return INFINITY
    # s > 0 here: start at the quotient and walk a few values to the least passing one
    c = t / s
    c = DBL_MAX if c > DBL_MAX else (-DBL_MAX if c < -DBL_MAX else c)
    if s * c >= t:
        for _step in range(8):
            lo = nextafter(c, -INFINITY)
            if not s * lo >= t:
                return c
            c = lo
    else:
        for _step in range(8):
            c = nextafter(c, INFINITY)
            if s * c >= t:
                return c
    # bisection on the ordered values (-DBL_MAX fails, DBL_MAX passes), on one side of zero
    # so that the keys' difference fits
    a = _order_key(-DBL_MAX)
    z = _order_key(DBL_MAX)
    if s * 0.0 >= t:
        z = 0
    else:
        a = 0
    while z - a > 1:
        mid = a + (z - a) // 2
        if s * _from_key(mid) >= t:
            z = mid
        else:
            a = mid
    return _from_key(z)


cdef double _keep_cut(const double* sk, const double* tb, Py_ssize_t B) noexcept nogil:
    """The noise threshold of the prox chain as one comparison: a finite ``v`` passes
    (``sk[b] * v >= tb[b]`` in some band) exactly when ``v >=`` the least
    :func:`_band_cut`; NaN when a band has no cut (then test band by band)."""
    cdef double cut = INFINITY, c
    cdef Py_ssize_t b
    for b in range(B):
        c = _band_cut(sk[b], tb[b])
        if c != c:
            return c
        if c < cut:
            cut = c
    return cut


def keep_cut(const double[::1] sed, const double[::1] thresholds):
    """:func:`_keep_cut` of one component's ``sed`` and per-band ``thresholds`` (for tests)."""
    if sed.shape[0] != thresholds.shape[0] or sed.shape[0] == 0:
        raise ValueError("sed and thresholds must be non-empty and of one length")
    return _keep_cut(&sed[0], &thresholds[0], sed.shape[0])


cdef inline bint _significant(double v, const double* sk, const double* tb, Py_ssize_t B,
                              double cut) noexcept nogil:
    """``sk[b] * v >= tb[b]`` in some band, by the cut of :func:`_keep_cut` if it has one."""
    cdef Py_ssize_t b
    if cut == cut:
        return v >= cut
    for b in range(B):
        if sk[b] * v >= tb[b]:
            return True
    return False


cdef void _prox_one(Py_ssize_t k, const real[:, :, ::1] grad,
                    double[:, ::1] sed, double[:, ::1] sed_m, double[:, ::1] sed_v,
                    double[:, ::1] sed_vhat,
                    double[::1] morph, double[::1] morph_m, double[::1] morph_v,
                    double[::1] morph_vhat,
                    const int64_t[:, ::1] comp, const double[::1] bg_thresh,
                    const double[::1] bg_rms, const double[::1] sed_min_step,
                    double sed_step, double morph_step, double b1, double b2, double eps,
                    double c1, double c2, double damp, double floor, double carry, int variant,
                    bint monotonic, const RadialTable* table, bint want_bounds,
                    int64_t[:, ::1] bounds, double* gs, const double* symmetry) noexcept nogil:
    """Component k's step of :func:`_prox_core` (``c1``, ``c2``: the bias corrections of the
    iteration, ``damp`` its step factor). It writes only component k's parameters, moments
    and bounds and its work space ``gs``: components may run on different threads."""
    cdef Py_ssize_t B = sed.shape[1]
    cdef Py_ssize_t b, i, y, x, off, y0, x0, h, w, py, px, pk
    cdef Py_ssize_t ly0, lx0, ly1, lx1, cy2, cx2
    cdef double mean_s, step, thr, mx, v, inv, cut
    cdef double* gm = gs + 3 * B
    cdef double* s_old = gs + B
    cdef double* tb = gs + 2 * B
    cdef double* sk
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
    if symmetry != NULL and symmetry[0] > 0:
        # the doubled centre, clipped to the box (a shift past its edge is dropped)
        cy2 = 2 * py + <Py_ssize_t>symmetry[1]
        cx2 = 2 * px + <Py_ssize_t>symmetry[2]
        if 0 <= cy2 <= 2 * (h - 1) and 0 <= cx2 <= 2 * (w - 1):
            _symmetrize(&morph[off], h, w, cy2, cx2, symmetry[0])
    thr = bg_thresh[k]
    for b in range(B):
        tb[b] = bg_rms[b] * thr
    sk = &sed[k, 0]
    cut = _keep_cut(sk, tb, B) if thr >= 0 else NAN
    mx = 0.0  # the maximum, found in the same pass
    if cut == cut:  # the threshold as one comparison (the same pixels pass)
        for i in range(h * w):
            v = morph[off + i]
            if not (isfinite(v) and v >= cut):
                v = 0.0
            morph[off + i] = v
            if v > mx:
                mx = v
    else:
        for i in range(h * w):
            v = morph[off + i]
            if not isfinite(v):
                v = 0.0
            elif thr >= 0:
                if not _significant(v, sk, tb, B, cut):
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
        if carry > 0 and mx > 1:
            # a step that raised the peak moves that factor (up to 1 + carry) into the SED,
            # which the normalisation would take from the model: a morphology whose light
            # must concentrate (the initial ones are the observed, PSF-convolved profiles)
            # raises its peak, and the SED follows at once rather than at its own step of
            # 1 % of its mean per iteration. A peak that fell is renormalised as in the
            # reference (the SED is kept): carrying that too, or carrying without a cap,
            # let a bright neighbour's growth fade fainter components away (tuning sets,
            # lost sources; bench/fit_speed.py)
            if mx > 1 + carry:
                mx = 1 + carry
            for b in range(B):
                sed[k, b] *= mx
            if thr >= 0:  # the bounds below test the new SED
                cut = _keep_cut(sk, tb, B)

    # --- significant pixels, for box resizing
    if want_bounds:
        if thr < 0:
            bounds[k, 0] = bounds[k, 1] = bounds[k, 2] = bounds[k, 3] = -2
            return
        ly0 = h
        lx0 = w
        ly1 = -1
        lx1 = -1
        for y in range(h):
            for x in range(w):
                v = morph[off + y * w + x]
                if _significant(v, sk, tb, B, cut):
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


def copy_overlap(const double[::1] src, const int64_t[:, ::1] src_comp, double[::1] dst,
                 const int64_t[:, ::1] dst_comp, const int64_t[::1] mapping):
    """Re-grid flat per-component arrays onto new boxes (box resizing, docs/spec/multi_band.md 3.9).

    Component j of the destination layout takes, on the overlap of its box and the box of
    source component ``mapping[j]``, that component's values; nothing is copied when
    ``mapping[j] < 0``. ``dst`` must be zero on entry (new pixels stay 0).
    """
    if _release_gil(<double>dst.shape[0]):
        with nogil:
            _copy_overlap(src, src_comp, dst, dst_comp, mapping)
    else:
        _copy_overlap(src, src_comp, dst, dst_comp, mapping)


cdef int _copy_overlap(const double[::1] src, const int64_t[:, ::1] src_comp,
                       double[::1] dst, const int64_t[:, ::1] dst_comp,
                       const int64_t[::1] mapping) noexcept nogil:
    cdef Py_ssize_t K = dst_comp.shape[0], j, k, y, x, ya, yb, xa, xb
    cdef Py_ssize_t sy0, sx0, sw, soff, dy0, dx0, dw, doff
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
    return 0


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
    """New component table after box resizing (docs/spec/multi_band.md 3.9), or -1 when no box
    changes.

    Component k's new box spans its significant pixels ``bounds[k]`` (local, inclusive, as
    written by :func:`adam_prox_step`) plus ``pad`` on every side, clipped to the
    ``(H, W)`` frame; with no significant pixel (-1) it is the peak grown by ``pad``;
    components without a threshold (-2) keep their box. ``peaks`` (K, 2) are in the frame.
    ``out`` (K, 7) receives the full table (boxes, offsets, local peaks); returns its total
    number of pixels.
    """
    return _resized_table(comp, bounds, peaks, pad, H, W, out)


cdef Py_ssize_t _resized_table(const int64_t[:, ::1] comp, const int64_t[:, ::1] bounds,
                               const int64_t[:, ::1] peaks, Py_ssize_t pad, Py_ssize_t H,
                               Py_ssize_t W, int64_t[:, ::1] out) except -2 nogil:
    cdef Py_ssize_t K = comp.shape[0], k, y0, x0, y1, x1, off = 0
    cdef bint changed = False
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


def settled(const double[::1] history, Py_ssize_t window, double e_rel, bint last=True,
            Py_ssize_t start=0):
    """Whether the lowest loss of ``history`` improved by less than ``e_rel`` per iteration
    over the last ``window`` iterations (the fit's windowed convergence test).

    With ``best`` the running minimum of the history: ``best[-window - 1] - best[-1]`` and
    (with ``last``) ``history[-1] - best[-1]`` are both below
    ``window * e_rel * |best[-1]|``. The
    reference's one-step test stops on the first nearly flat step of proximal ADAM's fast
    descent (a box resize, the prox trimming a component), and later the loss jumps by a
    percent between iterations so that the test may never pass; the running minimum over a
    window sees neither. A second condition keeps the fit going while the loss is up on a
    jump (after a resize it can stay above the best for a few iterations and then fall
    below it). Without ``last`` (``DeblendConfig.convergence`` "lowest") the second
    condition is dropped once an iterate after ``start`` (where this run of the fit began)
    has a lower loss than ``history[start]``: the oscillation where a fit with the peak
    carry ends then cannot keep it going, and the best iterate is the one returned; before
    that (the first steps can raise the loss above the start's for longer than a window)
    both conditions hold. False while the history is shorter than ``window + 1`` or holds
    a NaN.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not 0 <= start < max(history.shape[0], 1):
        raise ValueError(f"start must index the history, got {start}")
    return _stop(history, history.shape[0], window, e_rel, last, start)


cdef bint _stop(const double[::1] hist, Py_ssize_t n, Py_ssize_t w, double e_rel,
                bint last, Py_ssize_t start) noexcept nogil:
    """:func:`settled` of ``hist[:n]``."""
    if _settled(hist, n, w, e_rel, True):
        return True
    return not last and _fell(hist, n, start) and _settled(hist, n, w, e_rel, False)


cdef bint _fell(const double[::1] hist, Py_ssize_t n, Py_ssize_t start) noexcept nogil:
    """Whether some loss of ``hist[start + 1:n]`` is below ``hist[start]``."""
    cdef Py_ssize_t i
    for i in range(start + 1, n):
        if hist[i] < hist[start]:
            return True
    return False


cdef bint _settled(const double[::1] hist, Py_ssize_t n, Py_ssize_t w,
                   double e_rel, bint last) noexcept nogil:
    """The running-minimum conditions of :func:`settled` on ``hist[:n]``."""
    cdef Py_ssize_t i
    cdef double old, new, tol
    if n < w + 1:
        return False
    for i in range(n):  # a NaN makes the running minimum NaN from there on: no test passes
        if hist[i] != hist[i]:
            return False
    old = hist[0]
    for i in range(1, n - w):
        if hist[i] < old:
            old = hist[i]
    new = old
    for i in range(n - w, n):
        if hist[i] < new:
            new = hist[i]
    tol = <double>w * e_rel * fabs(new)
    return old - new < tol and (not last or hist[n - 1] - new < tol)


# --- One iteration on several threads (OpenMP through cython.parallel; serial without it).
#
# The loss and its gradient split by band: each band's model, convolution, residual and
# adjoint convolution need only that band, so a job takes a pair of bands (two real planes
# per complex transform, as _fft_cube) with its own FFT buffers. The components' steps then
# split by component: each reads the shared gradient and writes only its own parameters.
# The loss is summed row by row into a buffer and added up afterwards in the serial order, so
# every result is the same for any number of threads.

from cython.parallel cimport prange, threadid
from libc.string cimport memset

from ._convolve_cy cimport _fwd, _inv, _pair_mul, _row_wsq
from ._fft cimport cd_conv1_part_d, cd_conv1_part_f, cd_rconv1_part_d, cd_rconv1_part_f
from libc.stdlib cimport calloc, realloc

from . import _threads

cdef extern from *:
    """
    #ifdef _OPENMP
    #define CD_OPENMP 1
    #else
    #define CD_OPENMP 0
    #endif
    """
    const int CD_OPENMP

#: Whether the kernel was built with OpenMP (else every fit runs on one thread).
OPENMP = bool(CD_OPENMP)

#: Below this many FFT grid values times bands an iteration stays on one thread (the
#: threads' start and join would cost more than they save).
cdef double _PARALLEL_WORK = 5.0 * 128 * 128

#: From this FFT grid size (values) on, an odd band's transforms are shared by the threads
#: phase by phase (16 waits per iteration: worth it once half a transform takes longer).
#: With the lone band on the half-width grid, 2 threads of a loaded 2-core machine ran
#: scene c of bench/scaling.py (a 432^2 grid) faster with that band on one thread (10.3
#: against 10.9 ms per iteration, CPU 17.2 against 20.0 ms) and scene d (1024^2) faster
#: split (86.7 against 93.4 ms): bench/odd_band.py's fits, thresholds set by hand.
cdef double _SPLIT_GRID = 640.0 * 640


#: Whether an odd band count's last band goes through the half-width transform (for tests
#: and benchmarks, which compare the two ways).
cdef bint _HALF_BAND = True


def half_band(enabled=None):
    """Whether fits made from now on convolve an odd band count's last band through a
    complex transform of half the grid width (set it if given; for tests and benchmarks).
    Returns the previous setting."""
    global _HALF_BAND
    old = bool(_HALF_BAND)
    if enabled is not None:
        _HALF_BAND = bool(enabled)
    return old


def parallel_thresholds(work=None, split=None):
    """The two size thresholds above (set the given ones; for tests, which need small
    blends on every path). Returns the previous ``(work, split)``."""
    global _PARALLEL_WORK, _SPLIT_GRID
    old = (_PARALLEL_WORK, _SPLIT_GRID)
    if work is not None:
        _PARALLEL_WORK = work
    if split is not None:
        _SPLIT_GRID = split
    return old


cdef void _render_bands(const double[:, ::1] sed, const double[::1] morph,
                        const int64_t[:, ::1] comp, real[:, :, ::1] model, Py_ssize_t H,
                        Py_ssize_t W, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    """:func:`_render` of bands ``b0 <= b < b1`` only (the same sums in the same order)."""
    cdef Py_ssize_t K = comp.shape[0], k, b, y, x, off, y0, x0, h, w
    cdef double s
    for b in range(b0, b1):
        for y in range(H):
            for x in range(W):
                model[b, y, x] = 0
    for k in range(K):
        y0 = comp[k, 0]
        x0 = comp[k, 1]
        h = comp[k, 2]
        w = comp[k, 3]
        off = comp[k, 4]
        for b in range(b0, b1):
            s = sed[k, b]
            for y in range(h):
                for x in range(w):
                    model[b, y0 + y, x0 + x] += <real>(s * morph[off + y * w + x])


cdef void _render_rows(const double[:, ::1] sed, const double[::1] morph,
                       const int64_t[:, ::1] comp, real[:, :, ::1] model, Py_ssize_t W,
                       Py_ssize_t b, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """Rows ``r0 <= y < r1`` of band ``b`` of :func:`_render_bands` (the same sums in the
    same order: each pixel adds the components in their order), so that threads can share
    one band's render."""
    cdef Py_ssize_t K = comp.shape[0], k, y, x, off, y0, x0, w, ya, yb
    cdef double s
    for y in range(r0, r1):
        for x in range(W):
            model[b, y, x] = 0
    for k in range(K):
        y0 = comp[k, 0]
        x0 = comp[k, 1]
        w = comp[k, 3]
        off = comp[k, 4]
        ya = y0 if y0 > r0 else r0
        yb = y0 + comp[k, 2] if y0 + comp[k, 2] < r1 else r1
        s = sed[k, b]
        for y in range(ya, yb):
            for x in range(w):
                model[b, y, x0 + x] += <real>(s * morph[off + (y - y0) * w + x])


cdef inline void _chunk(Py_ssize_t n, int p, int nt, Py_ssize_t* lo,
                        Py_ssize_t* hi) noexcept nogil:
    """Part ``p`` of ``nt`` of ``[0, n)``: ``[lo, hi)``, whole cache lines of doubles."""
    cdef Py_ssize_t chunk = (((n + nt - 1) // nt) + 7) & ~(<Py_ssize_t>7)
    lo[0] = p * chunk if p * chunk < n else n
    hi[0] = lo[0] + chunk if lo[0] + chunk < n else n


cdef void _copy_threads(double* dst, const double* src, Py_ssize_t n,
                        int nt) noexcept nogil:
    """``dst[:n] = src[:n]`` in ``nt`` parts on as many threads (a copy of the morphologies
    of a large blend is a pass over tens of MB: serial, the other threads would wait)."""
    cdef int p
    cdef Py_ssize_t lo, hi
    if nt <= 1:
        memcpy(dst, src, n * sizeof(double))
        return
    for p in prange(nt, num_threads=nt, schedule="static", chunksize=1):
        _chunk(n, p, nt, &lo, &hi)
        if hi > lo:
            memcpy(dst + lo, src + lo, (hi - lo) * sizeof(double))


cdef void _regrid_row(const double[:, ::1] m, Py_ssize_t size, const int64_t[:, ::1] comp,
                      double[:, ::1] dst, Py_ssize_t n, const int64_t[:, ::1] new_comp,
                      const int64_t[::1] mapping, Py_ssize_t r) noexcept nogil:
    """Row ``r`` (the morphology or one of its moments) of the kernel's re-gridding: zero
    ``dst[r, :n]``, then :func:`_copy_overlap` onto the new table."""
    memset(&dst[r, 0], 0, n * sizeof(double))
    _copy_overlap(m[r, :size], comp, dst[r, :n], new_comp, mapping)


cdef void _residual_rows(const real[:, :, ::1] model_conv,
                         const real[:, :, ::1] images, const real[:, :, ::1] weights,
                         real[:, :, ::1] residual, Py_ssize_t b0, Py_ssize_t b1,
                         double* rows, Py_ssize_t y0=0, Py_ssize_t y1=-1) noexcept nogil:
    """:func:`_weighted_residual` (with ``store``) of bands ``b0 <= b < b1`` (rows ``y0 <= y
    < y1``, default all), each row's sum of ``w d^2`` into ``rows[b * H + y]`` (the same
    partial sums). ``residual`` may be ``model_conv`` (each row is read before it is
    overwritten)."""
    cdef Py_ssize_t H = images.shape[1], W = images.shape[2], b, y, x
    cdef const real* mc
    cdef const real* im
    cdef const real* wt
    cdef real* rs
    if y1 < 0:
        y1 = H
    for b in range(b0, b1):
        for y in range(y0, y1):
            mc = &model_conv[b, y, 0]
            im = &images[b, y, 0]
            wt = &weights[b, y, 0]
            rs = &residual[b, y, 0]
            rows[b * H + y] = _row_wsq(mc, im, wt, W)
            for x in range(W):
                rs[x] = wt[x] * (mc[x] - im[x])


cdef void _band_job(cd_conv* c, cd_conv* half, Py_ssize_t b, const double[:, ::1] sed,
                    const double[::1] morph, const int64_t[:, ::1] comp,
                    const real[:, :, ::1] img, const real[:, :, ::1] wgt,
                    real[:, :, ::1] mdl, real[:, :, ::1] cnv,
                    real[:, :, ::1] res, real[:, :, ::1] grd,
                    const real[:, :, :, ::1] fk, double* rows) noexcept nogil:
    """Bands ``b`` and ``b + 1`` (if any) of one iteration's loss and gradient: render,
    convolve, weighted residual, adjoint convolution (as :func:`_fft_cube` pairs them). A
    band on its own goes through the half-width grid ``half`` when there is one
    (:func:`_single_band_threads` on one thread: the same results)."""
    cdef Py_ssize_t B = img.shape[0], H = img.shape[1], W = img.shape[2]
    cdef bint two = b + 1 < B
    _render_bands(sed, morph, comp, mdl, H, W, b, b + 2 if two else b + 1)
    if not two and half != NULL:
        _single_band_threads(c, half, 1, b, img, wgt, mdl, cnv, res, grd, fk, rows, 0)
        return
    _fwd(c, &mdl[b, 0, 0], W, H, W, 0, 0, &mdl[b + 1, 0, 0] if two else NULL, W, H, W, 0, 0)
    _pair_mul(c, &fk[b, 0, 0, 0], &fk[b + 1, 0, 0, 0] if two else NULL, 0)
    _inv(c, &cnv[b, 0, 0], W, H, W, &cnv[b + 1, 0, 0] if two else NULL, W, H, W)
    _residual_rows(cnv, img, wgt, res, b, b + 2 if two else b + 1, rows)
    _fwd(c, &res[b, 0, 0], W, H, W, 0, 0, &res[b + 1, 0, 0] if two else NULL, W, H, W, 0, 0)
    _pair_mul(c, &fk[b, 0, 0, 0], &fk[b + 1, 0, 0, 0] if two else NULL, 1)
    _inv(c, &grd[b, 0, 0], W, H, W, &grd[b + 1, 0, 0] if two else NULL, W, H, W)


cdef inline void _conv1_part(cd_conv* c, cd_conv* half, cd_conv* s, int phase, int p,
                             int P, const real* a, Py_ssize_t lda, int h, int w,
                             const real* f, int conj, real* out,
                             Py_ssize_t ldo) noexcept nogil:
    """Part ``p`` of ``P`` of one phase of a real plane's convolution: on the half-width
    grid ``half`` (``cd_rconv1_part``) when there is one, else on ``c``'s grid."""
    if half != NULL:
        if real is float:
            cd_rconv1_part_f(half, s, phase, p, P, a, lda, h, w, f, conj, out, ldo)
        else:
            cd_rconv1_part_d(half, s, phase, p, P, a, lda, h, w, f, conj, out, ldo)
    elif real is float:
        cd_conv1_part_f(c, s, phase, p, P, a, lda, h, w, f, conj, out, ldo)
    else:
        cd_conv1_part_d(c, s, phase, p, P, a, lda, h, w, f, conj, out, ldo)


cdef void _single_band_part(cd_conv* convs, cd_conv* half, cd_conv* s, int phase, int p,
                            int nt, Py_ssize_t b, const real[:, :, ::1] img,
                            const real[:, :, ::1] wgt, real[:, :, ::1] cnv,
                            real[:, :, ::1] res, real[:, :, ::1] grd,
                            const real[:, :, :, ::1] fk, real[:, :, ::1] mdl,
                            double* rows) noexcept nogil:
    """Part ``p`` of ``nt`` of phase ``phase`` (0-15) of :func:`_single_band_threads`."""
    cdef int H = img.shape[1], W = img.shape[2], lo, hi, chunk
    cdef int last = 7
    if phase <= last:  # the model's convolution, then the residual of its rows
        _conv1_part(&convs[0], half, s, phase, p, nt, &mdl[b, 0, 0], W, H, W,
                    &fk[b, 0, 0, 0], 0, &cnv[b, 0, 0], W)
        if phase == last:  # the rows this thread just wrote (cd_conv1_part's split)
            chunk = (((H + nt - 1) // nt) + 7) & ~7
            lo = min(p * chunk, H)
            hi = min(lo + chunk, H)
            _residual_rows(cnv, img, wgt, res, b, b + 1, rows, lo, hi)
    else:  # the adjoint convolution of the residual
        _conv1_part(&convs[0], half, s, phase - last - 1, p, nt, &res[b, 0, 0], W, H, W,
                    &fk[b, 0, 0, 0], 1, &grd[b, 0, 0], W)


cdef void _single_band_threads(cd_conv* convs, cd_conv* half, int nt, Py_ssize_t b,
                               const real[:, :, ::1] img, const real[:, :, ::1] wgt,
                               real[:, :, ::1] mdl, real[:, :, ::1] cnv,
                               real[:, :, ::1] res, real[:, :, ::1] grd,
                               const real[:, :, :, ::1] fk, double* rows,
                               bint threads=1) noexcept nogil:
    """:func:`_band_job` of one band (already rendered) with each transform shared by
    ``nt`` threads, phase by phase (``cd_conv1_part``, or ``cd_rconv1_part`` on the
    half-width grid ``half`` if not NULL): the band left over when the pairs of bands do
    not split evenly over the threads. Without ``threads`` the calling thread runs it alone
    (``nt`` 1, its buffers ``convs[0]``), by the same operations."""
    cdef int phase, p
    if not threads:
        for phase in range(16):
            _single_band_part(convs, half, &convs[0], phase, 0, 1, b, img, wgt, cnv, res, grd,
                              fk, mdl, rows)
        return
    for phase in range(16):
        for p in prange(nt, num_threads=nt, schedule="static", chunksize=1):
            _single_band_part(convs, half, &convs[threadid()], phase, p, nt, b, img, wgt, cnv,
                              res, grd, fk, mdl, rows)


cdef double _loss_and_gradient(cd_conv* convs, cd_conv* half, int nt,
                               const double[:, ::1] sed,
                               const double[::1] morph, const int64_t[:, ::1] comp,
                               const real[:, :, ::1] img, const real[:, :, ::1] wgt,
                               real[:, :, ::1] mdl, real[:, :, ::1] cnv,
                               real[:, :, ::1] res, real[:, :, ::1] grd,
                               const real[:, :, :, ::1] fk, double* rows) noexcept nogil:
    """The loss of the rendered parameters and its gradient ``grd`` w.r.t. the model, the
    band pairs on ``nt`` threads (thread t uses ``convs[t]``; ``rows``: B H doubles; an
    odd band count's last band on the half-width grid ``half`` if not NULL)."""
    cdef Py_ssize_t B = img.shape[0], H = img.shape[1], jobs = (B + 1) // 2, j, i, lo, hi
    cdef int p
    cdef double total = 0.0
    if nt > 1 and B % 2 == 1 and <double>convs[0].n0 * convs[0].n1 >= _SPLIT_GRID:
        # the pairs side by side, then the odd band's transforms shared by the threads
        if B > 1:
            for j in prange(B // 2, num_threads=nt, schedule="static", chunksize=1):
                _band_job(&convs[threadid()], half, 2 * j, sed, morph, comp, img, wgt, mdl, cnv,
                          res, grd, fk, rows)
        for p in prange(nt, num_threads=nt, schedule="static", chunksize=1):
            _chunk(H, p, nt, &lo, &hi)
            _render_rows(sed, morph, comp, mdl, img.shape[2], B - 1, lo, hi)
        _single_band_threads(convs, half, nt, B - 1, img, wgt, mdl, cnv, res, grd, fk, rows)
    elif nt > 1 and jobs > 1:
        for j in prange(jobs, num_threads=nt, schedule="static", chunksize=1):
            _band_job(&convs[threadid()], half, 2 * j, sed, morph, comp, img, wgt, mdl, cnv, res,
                      grd, fk, rows)
    else:
        for j in range(jobs):
            _band_job(&convs[0], half, 2 * j, sed, morph, comp, img, wgt, mdl, cnv, res, grd, fk,
                      rows)
    for i in range(B * H):  # the order of _weighted_residual's running sum
        total += rows[i]
    return 0.5 * total


cdef void _prox_threads(int nt, const real[:, :, ::1] grad,
                        double[:, ::1] sed, double[:, ::1] sed_m, double[:, ::1] sed_v,
                        double[:, ::1] sed_vhat,
                        double[::1] morph, double[::1] morph_m, double[::1] morph_v,
                        double[::1] morph_vhat,
                        const int64_t[:, ::1] comp, const double[::1] bg_thresh,
                        const double[::1] bg_rms, const double[::1] sed_min_step,
                        double sed_step, double morph_step, Py_ssize_t it, double b1,
                        double b2, double eps, double floor, double carry, int variant,
                        bint monotonic,
                        const RadialTable* table, bint want_bounds,
                        int64_t[:, ::1] bounds, double* scratch,
                        Py_ssize_t per_thread, const double* symmetry) noexcept nogil:
    """:func:`_prox_core` with the components on ``nt`` threads (thread t's work space at
    ``scratch + t * per_thread``); components are handed out a few at a time, as their
    sizes vary."""
    cdef Py_ssize_t k
    cdef double t = <double>(it + 1)
    cdef double c1 = 1 - pow(b1, t), c2 = 1 - pow(b2, t)
    cdef double damp = 0.1 if it == 0 else 1.0
    for k in prange(comp.shape[0], num_threads=nt, schedule="dynamic", chunksize=4):
        _prox_one(k, grad, sed, sed_m, sed_v, sed_vhat, morph, morph_m, morph_v, morph_vhat,
                  comp, bg_thresh, bg_rms, sed_min_step, sed_step, morph_step, b1, b2, eps,
                  c1, c2, damp, floor, carry, variant, monotonic, table, want_bounds, bounds,
                  scratch + threadid() * per_thread,
                  NULL if symmetry == NULL else symmetry + 3 * k)


cdef enum:
    _RESIZED = 1
    _CONVERGED = 2

#: Status bits of :meth:`FitKernel.iterate`.
RESIZED = _RESIZED
CONVERGED = _CONVERGED


cdef struct IterState:
    Py_ssize_t it, start, max_iter, min_iter, window, resize, pad, new_size, best_size
    double e_rel, best_loss
    bint keep_best, has_best, improved, last
    int status


cdef class FitKernel:
    """The fitter's per-iteration work with its buffers bound once.

    :meth:`set_data` takes the blend's images, weights and convolution (kernel transforms on
    an FFT grid, or the direct loop's kernels); :meth:`bind` the parameters. The
    morphologies and their three ADAM moments are the rows of a (4, cap) buffer, the first
    ``size`` columns in use in the layout of the component table; a second buffer of the
    same capacity takes them when boxes are resized. :meth:`iterate` then runs whole
    iterations (render, convolution, weighted residual, adjoint convolution, proximal ADAM
    step, box bounds and re-gridding, loss history, best iterate, convergence test) in one
    call without the GIL, returning only when the fit converges, reaches its iteration limit
    or needs a bigger buffer or monotonicity table. :meth:`render` and :meth:`step` are the
    single steps, for tests (they use the first buffer).
    """

    cdef double[:, ::1] sed
    cdef double[:, :, ::1] sed_state
    cdef double[:, ::1] mbuf0
    cdef double[:, ::1] mbuf1
    cdef readonly int current
    cdef readonly Py_ssize_t size
    cdef readonly Py_ssize_t regrids
    cdef int64_t[:, ::1] comp
    cdef double[::1] bg_thresh
    cdef double[::1] bg_rms
    cdef double[::1] min_step
    cdef int64_t[:, ::1] bounds
    cdef int64_t[:, ::1] peaks
    cdef int64_t[:, ::1] new_comp
    cdef int64_t[::1] identity
    cdef MonotonicTable table
    cdef double sed_step, morph_step, b1, b2, eps, floor, carry
    cdef int variant
    # data (set_data): one precision is used, the other views stay empty
    cdef bint has_data, dbl, use_fft
    # FFT buffers of each thread (convs[0] for one thread), the loss's row sums, the step's
    # work space of each thread (per_thread doubles each) and the threads of this iterate()
    cdef cd_conv* convs
    cdef int nconv
    # an odd band count's last band: the (n0, n1 / 2) grid of its half-width transforms
    # (NULL: it goes through the full grid, as when n1 is odd)
    cdef cd_conv* half
    cdef double* rows
    cdef double* tscratch
    cdef Py_ssize_t tscratch_size
    cdef int nt, img_width
    #: Threads of :meth:`iterate` (0: :func:`cdeblend._threads.num_threads` at each call).
    cdef public int num_threads
    # strength of each component's partial symmetry prox (set_symmetry; None: none)
    cdef double[:, ::1] symmetry
    cdef float[:, :, ::1] img_f, wgt_f, mdl_f, cnv_f, res_f, grd_f, ker_f, gker_f
    cdef float[:, :, :, ::1] fk_f
    cdef double[:, :, ::1] img_d, wgt_d, mdl_d, cnv_d, res_d, grd_d, ker_d, gker_d
    cdef double[:, :, :, ::1] fk_d
    cdef double[::1] hist
    cdef double* scratch
    cdef Py_ssize_t scratch_size

    def __init__(self, double[::1] bg_rms, double[::1] min_step, double sed_step,
                 double morph_step, double b1, double b2, double eps, double floor,
                 int variant, double carry=0.0):
        if not carry >= 0:
            raise ValueError(f"carry must be >= 0, got {carry!r}")
        self.carry = carry
        self.bg_rms = bg_rms
        self.min_step = min_step
        self.sed_step = sed_step
        self.morph_step = morph_step
        self.b1 = b1
        self.b2 = b2
        self.eps = eps
        self.floor = floor
        self.variant = variant

    def __dealloc__(self):
        cdef int i
        for i in range(self.nconv):
            cd_conv_free(&self.convs[i])
        free(self.convs)
        if self.half != NULL:
            cd_conv_free(self.half)
            free(self.half)
        free(self.scratch)
        free(self.rows)
        free(self.tscratch)

    def set_data(self, images, weights, kernels, grad_kernels, fk, int n0, int n1,
                 double[::1] history):
        """Bind the blend's data: ``images`` and ``weights`` (B, H, W) of one precision;
        ``fk`` (B, 2, n1, n0), the kernel transforms on the ``(n0, n1)`` FFT grid, or None
        for the direct loop with ``kernels`` and ``grad_kernels`` (the flipped ones);
        ``history`` receives the loss of iteration ``it`` at index ``it``."""
        if self.has_data:
            raise ValueError("set_data was already called")
        dtype = images.dtype
        if dtype not in (np.float32, np.float64) or weights.dtype != dtype:
            raise TypeError("images and weights must both be float32 or float64")
        if images.ndim != 3 or weights.shape != images.shape:
            raise ValueError("images and weights must be (B, H, W) arrays of one shape")
        if images.shape[0] != self.bg_rms.shape[0]:
            raise ValueError("images and bg_rms differ in the number of bands")
        B, H, W = images.shape
        if fk is not None:
            # model and gradient share a buffer, as do the convolved model and the residual:
            # a band's model is read (transformed) before its gradient is written, its
            # convolution before its residual (_band_job), and the next render comes after
            # the step has read the gradient
            work = [np.empty((B, H, W), dtype) for _ in range(2)]
            work = [work[0], work[1], work[1], work[0]]
        else:
            work = [np.empty((B, H, W), dtype) for _ in range(4)]
        self.dbl = dtype == np.float64
        self.use_fft = fk is not None
        if self.use_fft:
            if fk.dtype != dtype or fk.shape != (B, 2, n1, n0) or n0 < H or n1 < W:
                raise ValueError("kernel transforms do not match the images")
            self.convs = <cd_conv*>calloc(1, sizeof(cd_conv))
            self.rows = <double*>malloc(B * H * sizeof(double))
            if self.convs == NULL or self.rows == NULL:
                raise MemoryError()
            st = cd_conv_init(&self.convs[0], n0, n1, W, self.dbl)
            if st != 0:
                raise (ValueError if st == -1 else MemoryError)(
                    f"cannot make FFT buffers for the ({n0}, {n1}) grid")
            self.nconv = 1
            self.img_width = W
            if _HALF_BAND and B % 2 == 1 and n1 % 2 == 0:
                self._init_half(n0, n1 // 2, (W + 1) // 2)
        else:
            if (kernels.dtype != dtype or grad_kernels.dtype != dtype
                    or kernels.shape[0] != B or grad_kernels.shape != kernels.shape):
                raise ValueError("kernels do not match the images")
        if self.dbl:
            self.img_d, self.wgt_d = images, weights
            self.mdl_d, self.cnv_d, self.res_d, self.grd_d = work
            if self.use_fft:
                self.fk_d = fk
            else:
                self.ker_d, self.gker_d = kernels, grad_kernels
        else:
            self.img_f, self.wgt_f = images, weights
            self.mdl_f, self.cnv_f, self.res_f, self.grd_f = work
            if self.use_fft:
                self.fk_f = fk
            else:
                self.ker_f, self.gker_f = kernels, grad_kernels
        self.hist = history
        # work space of the step for any box inside the frame (boxes change in the loop)
        self.scratch_size = 3 * B + H * W
        self.scratch = <double*>malloc(self.scratch_size * sizeof(double))
        if self.scratch == NULL:
            self.scratch_size = 0
            raise MemoryError()
        self.has_data = True

    @property
    def threads(self):
        """The threads the last :meth:`iterate` ran on."""
        return max(self.nt, 1)

    def set_history(self, double[::1] history):
        """Replace the loss-history buffer (a longer copy)."""
        self.hist = history

    def bind(self, double[:, ::1] sed, double[:, :, ::1] sed_state, double[:, ::1] morph0,
             int64_t[:, ::1] comp, double[::1] bg_thresh, MonotonicTable table,
             int64_t[:, ::1] bounds, int64_t[:, ::1] peaks=None,
             int64_t[:, ::1] new_comp=None, double[:, ::1] morph1=None,
             int current=0, Py_ssize_t size=-1):
        """Bind the parameters: ``sed`` (K, B), ``sed_state`` (3, K, B), the morphology
        buffers ``morph0`` and ``morph1`` (4, cap) of which ``current`` holds the first
        ``size`` columns in the layout of ``comp`` (K, 7) (default: morph0, all columns),
        ``table`` (None: no monotonicity). :meth:`iterate` also needs ``peaks`` (K, 2;
        frame), ``new_comp`` (K, 7; receives a resized table) and ``morph1``; it updates
        ``comp`` in place when it re-grids."""
        cdef Py_ssize_t K = sed.shape[0], k, cap = morph0.shape[1]
        if size < 0:
            size = cap
        if (sed_state.shape[0] != 3 or sed_state.shape[1] != K
                or sed_state.shape[2] != sed.shape[1] or morph0.shape[0] != 4
                or comp.shape[0] != K or bg_thresh.shape[0] != K
                or bounds.shape[0] != K or self.bg_rms.shape[0] != sed.shape[1]):
            raise ValueError("inconsistent fit buffers")
        if morph1 is not None and (morph1.shape[0] != 4 or morph1.shape[1] != cap):
            raise ValueError("the two morphology buffers must have one shape")
        if not 0 <= size <= cap or current not in (0, 1) or (current == 1 and morph1 is None):
            raise ValueError("bad current buffer or size")
        if peaks is not None and (peaks.shape[0] != K or peaks.shape[1] != 2):
            raise ValueError("peaks must be (K, 2)")
        if new_comp is not None and (new_comp.shape[0] != K or new_comp.shape[1] != 7):
            raise ValueError("new_comp must be (K, 7)")
        for k in range(K):  # the table must lie inside the used columns
            if comp[k, 2] < 0 or comp[k, 3] < 0 or comp[k, 4] < 0 or (
                    comp[k, 4] + comp[k, 2] * comp[k, 3] > size):
                raise ValueError("component table does not fit the morphology buffer")
        if self.has_data and _scratch_size(comp, sed.shape[1]) > self.scratch_size:
            raise ValueError("a component box is larger than the frame")
        self.sed = sed
        self.sed_state = sed_state
        self.mbuf0 = morph0
        self.mbuf1 = morph1
        self.current = current
        self.size = size
        self.comp = comp
        self.bg_thresh = bg_thresh
        self.table = table
        self.bounds = bounds
        if self.symmetry is not None and self.symmetry.shape[0] != K:
            self.symmetry = None  # set for another component table: set_symmetry again
        self.peaks = peaks
        self.new_comp = new_comp
        self.identity = np.arange(K, dtype=np.int64)
        if not self.has_data:  # render() / step() without set_data
            k = _scratch_size(comp, sed.shape[1])
            if k > self.scratch_size:
                free(self.scratch)
                self.scratch = <double*>malloc(k * sizeof(double))
                self.scratch_size = k if self.scratch != NULL else 0
                if self.scratch == NULL:
                    raise MemoryError()

    def render(self, real[:, :, ::1] model, Py_ssize_t H, Py_ssize_t W):
        """:func:`render` of the bound parameters into ``model[:, :H, :W]``."""
        if H < 0 or H > model.shape[1]:
            H = model.shape[1]
        if W < 0 or W > model.shape[2]:
            W = model.shape[2]
        cdef double[:, ::1] m = self.mbuf0 if self.current == 0 else self.mbuf1
        if _release_gil(<double>model.shape[0] * (H * W + self.size)):
            with nogil:
                _render(self.sed, m[0, :self.size], self.comp, model, H, W)
        else:
            _render(self.sed, m[0, :self.size], self.comp, model, H, W)

    def set_symmetry(self, double[:, ::1] symmetry):
        """Each bound component's partial symmetry prox: (K, 3) rows (strength in [0, 1],
        shifts in {-1, 0, 1} of the doubled centre ``2 peak``), kept by reference; None:
        none. Set it again when :meth:`bind` changes the number of components."""
        if symmetry is not None:
            _check_symmetry(symmetry, self.comp.shape[0] if self.comp is not None else 0)
        self.symmetry = symmetry

    def step(self, const real[:, :, ::1] grad, Py_ssize_t it, bint want_bounds):
        """:func:`fit_step` of the bound parameters (bounds into the bound ``bounds``)."""
        cdef RadialTable* t = NULL
        cdef double[:, ::1] m = self.mbuf0 if self.current == 0 else self.mbuf1
        cdef Py_ssize_t n = self.size
        if self.table is not None:
            t = &self.table.table
        _prox_step(grad, self.sed, self.sed_state[0], self.sed_state[1], self.sed_state[2],
                   m[0, :n], m[1, :n], m[2, :n], m[3, :n],
                   self.comp, self.bg_thresh, self.bg_rms, self.min_step, self.sed_step,
                   self.morph_step, it, self.b1, self.b2, self.eps, self.floor, self.carry,
                   self.variant,
                   self.table is not None, t, want_bounds, self.bounds,
                   _symmetry_ptr(self.symmetry))

    def iterate(self, Py_ssize_t it, Py_ssize_t start, Py_ssize_t max_iter,
                Py_ssize_t min_iter, double e_rel, Py_ssize_t resize, Py_ssize_t pad,
                double[:, ::1] best_sed, double[::1] best_morph, int64_t[:, ::1] best_comp,
                bint has_best, double best_loss, Py_ssize_t window=0, bint last=True):
        """Run iterations ``it, it + 1, ...`` without the GIL (docs/spec/multi_band.md 3.3-3.10).

        Each iteration renders the model, takes the loss and its gradient (forward
        convolution, weighted residual, adjoint convolution), stores the loss in the history
        at index ``it``, keeps a copy of the parameters in ``best_sed`` / ``best_morph`` /
        ``best_comp`` (their table) when the loss beats ``best_loss`` (or there is no best
        yet; None: no best-keeping), steps every component, and every ``resize`` iterations
        (0: never) resizes the boxes (padding ``pad``): the morphologies and their moments
        move to the other buffer in the new layout and ``comp`` is updated in place. It
        stops after the convergence test passes (once ``it > start + min_iter``), at
        ``max_iter``, or when the new layout does not fit the buffers or the monotonicity
        table (the table then waits in ``new_comp``). The test is :func:`settled` on the
        history with ``window`` > 0 (and ``last``); with ``window`` 0 the reference's
        ``|L[it] - L[it - 1]| < e_rel |L[it]|``.

        Returns
        -------
        tuple
            ``(status, it, new_size, improved, best_loss, best_size)``: status bits
            :data:`RESIZED` (a new layout of ``new_size`` pixels in ``new_comp`` for the
            caller to make room for) and :data:`CONVERGED`, the next iteration index,
            whether and to what the best loss improved and the best layout's size. The
            current buffer and size are the attributes ``current`` and ``size``.
        """
        if not self.has_data:
            raise ValueError("set_data was not called")
        if self.peaks is None or self.new_comp is None or self.mbuf1 is None:
            raise ValueError("bind() needs peaks, new_comp and morph1 for iterate()")
        if max_iter > self.hist.shape[0]:
            raise ValueError("the history buffer is shorter than max_iter")
        cdef bint keep = best_sed is not None and best_morph is not None
        if keep and (best_comp is None or best_sed.shape[0] != self.sed.shape[0]
                     or best_sed.shape[1] != self.sed.shape[1]
                     or best_morph.shape[0] < self.mbuf0.shape[1]
                     or best_comp.shape[0] != self.comp.shape[0] or best_comp.shape[1] != 7):
            raise ValueError("best_sed, best_morph and best_comp must hold the parameters")
        cdef IterState st
        st.it = it
        st.start = start
        st.max_iter = max_iter
        st.min_iter = min_iter
        st.window = window if window > 0 else 0
        st.resize = resize
        st.pad = pad
        st.new_size = -1
        st.best_size = -1
        st.e_rel = e_rel
        st.last = last
        st.best_loss = best_loss
        st.keep_best = keep
        st.has_best = has_best
        st.improved = False
        st.status = 0
        self._prepare_threads(self.num_threads if self.num_threads > 0
                              else _threads.num_threads())
        with nogil:
            if self.dbl:
                self._iterate(self.img_d, self.wgt_d, self.mdl_d, self.cnv_d, self.res_d,
                              self.grd_d, self.fk_d, self.ker_d, self.gker_d, best_sed,
                              best_morph, best_comp, &st)
            else:
                self._iterate(self.img_f, self.wgt_f, self.mdl_f, self.cnv_f, self.res_f,
                              self.grd_f, self.fk_f, self.ker_f, self.gker_f, best_sed,
                              best_morph, best_comp, &st)
        return st.status, st.it, st.new_size, st.improved, st.best_loss, st.best_size

    cdef int _init_half(self, int n0, int m, int width) except -1:
        """The half-width grid of the lone band (none if out of memory: the full grid then
        serves, as it does for an odd grid width)."""
        self.half = <cd_conv*>calloc(1, sizeof(cd_conv))
        if self.half != NULL and cd_conv_init(self.half, n0, m, width, self.dbl) != 0:
            cd_conv_free(self.half)
            free(self.half)
            self.half = NULL
        return 0

    cdef int _prepare_threads(self, int nt) except -1:
        """Set the threads of the next iterations to ``nt`` (1 without OpenMP or for a
        small blend) and give each its FFT buffers (fewer threads if memory runs out)."""
        cdef cd_conv* grown
        cdef Py_ssize_t B = self.bg_rms.shape[0]
        cdef double work
        if self.use_fft:
            work = <double>B * self.convs[0].n0 * self.convs[0].n1
        else:
            work = <double>B * self.scratch_size
        if not CD_OPENMP or work < _PARALLEL_WORK or nt < 1:
            nt = 1
        if self.use_fft and nt > self.nconv:
            grown = <cd_conv*>realloc(self.convs, nt * sizeof(cd_conv))
            if grown != NULL:
                self.convs = grown
                while self.nconv < nt:
                    if cd_conv_init(&self.convs[self.nconv], self.convs[0].n0,
                                    self.convs[0].n1, self.img_width,
                                    self.dbl) != 0:
                        break
                    self.nconv += 1
            nt = self.nconv
        self.nt = nt
        return 0

    cdef Py_ssize_t _thread_scratch(self, Py_ssize_t B) noexcept nogil:
        """Doubles of each thread's work space for the step (whole cache lines), grown to
        the current boxes; 0 for one thread (or no memory: the step then runs serially)."""
        cdef Py_ssize_t per
        cdef double* grown
        if self.nt <= 1:
            return 0
        per = (_scratch_size(self.comp, B) + 7) & ~(<Py_ssize_t>7)
        if per * self.nt > self.tscratch_size:
            grown = <double*>realloc(self.tscratch, per * self.nt * sizeof(double))
            if grown == NULL:
                return 0
            self.tscratch = grown
            self.tscratch_size = per * self.nt
        return per

    cdef int _iterate(self, real[:, :, ::1] img, real[:, :, ::1] wgt, real[:, :, ::1] mdl,
                      real[:, :, ::1] cnv, real[:, :, ::1] res, real[:, :, ::1] grd,
                      real[:, :, :, ::1] fk, real[:, :, ::1] ker, real[:, :, ::1] gker,
                      double[:, ::1] best_sed, double[::1] best_morph,
                      int64_t[:, ::1] best_comp, IterState* st) except -1 nogil:
        cdef Py_ssize_t H = img.shape[1], W = img.shape[2], K = self.comp.shape[0]
        cdef Py_ssize_t B = img.shape[0], n, k, b, r, cap = self.mbuf0.shape[1], per
        cdef double loss
        cdef bint do_resize
        cdef int status
        cdef double[:, ::1] m
        cdef double[:, ::1] dst
        cdef RadialTable* t = NULL
        if self.table is not None:
            t = &self.table.table
        while st.it < st.max_iter:
            m = self.mbuf0 if self.current == 0 else self.mbuf1
            if self.use_fft:
                loss = _loss_and_gradient(self.convs, self.half, self.nt, self.sed,
                                          m[0, :self.size], self.comp, img, wgt, mdl, cnv,
                                          res, grd, fk, self.rows)
            else:
                _render(self.sed, m[0, :self.size], self.comp, mdl, H, W)
                cnv[...] = 0
                _direct_conv(mdl, ker, cnv, 0, 0)
                loss = _weighted_residual(cnv, img, wgt, res, True)
                grd[...] = 0
                _direct_conv(res, gker, grd, 0, 0)
            self.hist[st.it] = loss
            if st.keep_best and (not st.has_best or loss < st.best_loss):
                # the parameters that gave this loss, before the step, with their layout
                for k in range(K):
                    for b in range(B):
                        best_sed[k, b] = self.sed[k, b]
                    for b in range(7):
                        best_comp[k, b] = self.comp[k, b]
                if self.size > 0:
                    _copy_threads(&best_morph[0], &m[0, 0], self.size, self.nt)
                st.best_size = self.size
                st.best_loss = loss
                st.has_best = True
                st.improved = True
            do_resize = st.resize > 0 and st.it > 0 and st.it % st.resize == 0
            n = self.size
            per = self._thread_scratch(B)
            if per > 0:
                _prox_threads(self.nt, grd, self.sed, self.sed_state[0], self.sed_state[1],
                              self.sed_state[2], m[0, :n], m[1, :n], m[2, :n], m[3, :n],
                              self.comp, self.bg_thresh, self.bg_rms, self.min_step,
                              self.sed_step, self.morph_step, st.it, self.b1, self.b2,
                              self.eps, self.floor, self.carry, self.variant, t != NULL, t,
                              do_resize, self.bounds, self.tscratch, per,
                              _symmetry_ptr(self.symmetry))
            else:
                _prox_core(grd, self.sed, self.sed_state[0], self.sed_state[1],
                           self.sed_state[2], m[0, :n], m[1, :n], m[2, :n], m[3, :n],
                           self.comp, self.bg_thresh, self.bg_rms, self.min_step,
                           self.sed_step, self.morph_step, st.it, self.b1, self.b2, self.eps,
                           self.floor, self.carry, self.variant, t != NULL, t, do_resize,
                           self.bounds, self.scratch, _symmetry_ptr(self.symmetry))
            status = 0
            if do_resize:
                n = _resized_table(self.comp, self.bounds, self.peaks, st.pad, H, W,
                                   self.new_comp)
                if n >= 0:
                    if n > cap or (t != NULL and _monotonic_reach(self.new_comp) > t.half):
                        st.new_size = n  # the caller makes room
                        status |= _RESIZED
                    else:  # re-grid into the other buffer
                        dst = self.mbuf1 if self.current == 0 else self.mbuf0
                        if self.nt > 1:  # the four rows side by side
                            for r in prange(4, num_threads=self.nt, schedule="static",
                                            chunksize=1):
                                _regrid_row(m, self.size, self.comp, dst, n, self.new_comp,
                                            self.identity, r)
                        else:
                            for r in range(4):
                                _regrid_row(m, self.size, self.comp, dst, n, self.new_comp,
                                            self.identity, r)
                        for k in range(K):
                            for b in range(7):
                                self.comp[k, b] = self.new_comp[k, b]
                        self.current = 1 - self.current
                        self.size = n
                        self.regrids += 1
            st.it += 1
            if st.it > st.start + st.min_iter and st.it >= 2:
                if st.window > 0:
                    if _stop(self.hist, st.it, st.window, st.e_rel, st.last, st.start):
                        status |= _CONVERGED
                elif fabs(self.hist[st.it - 1] - self.hist[st.it - 2]) < (
                        st.e_rel * fabs(self.hist[st.it - 1])):
                    status |= _CONVERGED
            if status:
                st.status = status
                return 0
        st.status = 0
        return 0


def monotonic_reach(const int64_t[:, ::1] comp):
    """Largest distance (pixels, Chebyshev) from a component's peak to its box edge, plus 1
    (the operator re-centres up to 1 px away): the half-size the monotonicity table needs."""
    return _monotonic_reach(comp)


cdef Py_ssize_t _monotonic_reach(const int64_t[:, ::1] comp) except -1 nogil:
    cdef Py_ssize_t K = comp.shape[0], k, need = 0, d
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


def render_sources(const double[:, ::1] sed, const double[::1] morph,
                   const int64_t[:, ::1] comp, const int64_t[:, ::1] ranges,
                   const int64_t[:, ::1] boxes, double[::1] out, const int64_t[::1] offsets):
    """Each source's model on its own box, summed in double.

    Source s is the sum of components ``ranges[s, 0] .. ranges[s, 1] - 1`` (rows of the
    packed ``sed``, ``morph``, ``comp``), written as (B, h, w) with ``(y0, x0, h, w) =
    boxes[s]`` (every component box inside it) from ``out[offsets[s]]`` on, zeroed first.
    """
    cdef Py_ssize_t S = ranges.shape[0], B = sed.shape[1], s, k, o, h, w
    for s in range(S):
        h, w, o = boxes[s, 2], boxes[s, 3], offsets[s]
        if o < 0 or o + B * h * w > out.shape[0] or ranges[s, 0] < 0 or (
                ranges[s, 1] > comp.shape[0]):
            raise ValueError(f"source {s} does not fit the buffers")
        for k in range(ranges[s, 0], ranges[s, 1]):
            if (comp[k, 0] < boxes[s, 0] or comp[k, 1] < boxes[s, 1]
                    or comp[k, 0] + comp[k, 2] > boxes[s, 0] + h
                    or comp[k, 1] + comp[k, 3] > boxes[s, 1] + w
                    or comp[k, 4] + comp[k, 2] * comp[k, 3] > morph.shape[0]):
                raise ValueError(f"component {k} lies outside source {s}'s box")
    if _release_gil(<double>out.shape[0] + B * morph.shape[0]):
        with nogil:
            _render_sources(sed, morph, comp, ranges, boxes, out, offsets)
    else:
        _render_sources(sed, morph, comp, ranges, boxes, out, offsets)
    return out


cdef int _render_sources(const double[:, ::1] sed, const double[::1] morph,
                         const int64_t[:, ::1] comp, const int64_t[:, ::1] ranges,
                         const int64_t[:, ::1] boxes, double[::1] out,
                         const int64_t[::1] offsets) except -1 nogil:
    cdef Py_ssize_t S = ranges.shape[0], B = sed.shape[1], s, k, b, y, x, o, h, w, off
    cdef Py_ssize_t cy, cx, ch, cw
    cdef double v
    for s in range(S):
        h = boxes[s, 2]
        w = boxes[s, 3]
        o = offsets[s]
        for y in range(B * h * w):
            out[o + y] = 0.0
        for k in range(ranges[s, 0], ranges[s, 1]):
            cy = comp[k, 0] - boxes[s, 0]
            cx = comp[k, 1] - boxes[s, 1]
            ch = comp[k, 2]
            cw = comp[k, 3]
            off = comp[k, 4]
            for b in range(B):
                v = sed[k, b]
                for y in range(ch):
                    for x in range(cw):
                        out[o + (b * h + cy + y) * w + cx + x] += v * morph[off + y * cw + x]
    return 0


def point_source_products(const real[:, :, ::1] weights, const real[:, :, ::1] images,
                          const real[:, :, ::1] model_conv, const double[:, :, ::1] psfs,
                          const int64_t[:, ::1] peaks, double[:, ::1] pp, double[:, ::1] rp):
    """Weighted least-squares products of a point source at each peak, per band.

    With the PSF ``P_b`` centred on peak i and cut to the frame and the residual
    ``r = images - model_conv`` (in double), ``pp[i, b] = sum w_b P_b^2`` and
    ``rp[i, b] = sum w_b r_b P_b``. The amplitude of a point source there is ``rp / pp``,
    its S/N ``sum_b rp / sqrt(sum_b pp)``. Summed in double, row by row, on the stamps only.
    """
    cdef Py_ssize_t B = weights.shape[0], H = weights.shape[1], W = weights.shape[2]
    cdef Py_ssize_t N = peaks.shape[0], hp = psfs.shape[1], wp = psfs.shape[2], i
    if (images.shape[0] != B or images.shape[1] != H or images.shape[2] != W
            or model_conv.shape[0] != B or model_conv.shape[1] != H
            or model_conv.shape[2] != W or psfs.shape[0] != B):
        raise ValueError("weights, images, model_conv and psfs must have the same bands and "
                         "frame")
    if peaks.shape[1] != 2 or pp.shape[0] != N or rp.shape[0] != N or pp.shape[1] != B or (
            rp.shape[1] != B):
        raise ValueError("peaks must be (N, 2) and pp, rp (N, B)")
    for i in range(N):
        if not (0 <= peaks[i, 0] < H and 0 <= peaks[i, 1] < W):
            raise ValueError(f"peaks[{i}] lies outside the frame")
    if _release_gil(4.0 * N * B * hp * wp):
        with nogil:
            _point_source_products(weights, images, model_conv, psfs, peaks, pp, rp)
    else:
        _point_source_products(weights, images, model_conv, psfs, peaks, pp, rp)


cdef int _point_source_products(const real[:, :, ::1] weights, const real[:, :, ::1] images,
                                const real[:, :, ::1] model_conv, const double[:, :, ::1] psfs,
                                const int64_t[:, ::1] peaks, double[:, ::1] pp,
                                double[:, ::1] rp) except -1 nogil:
    cdef Py_ssize_t B = weights.shape[0], H = weights.shape[1], W = weights.shape[2]
    cdef Py_ssize_t hp = psfs.shape[1], wp = psfs.shape[2], i, b, y, x, ya, yb, xa, xb, oy, ox
    cdef double p, w, a, c
    for i in range(peaks.shape[0]):
        # the stamp's pixel (y - oy, x - ox) lies on image pixel (y, x)
        oy = peaks[i, 0] - hp // 2
        ox = peaks[i, 1] - wp // 2
        ya = oy if oy > 0 else 0
        yb = oy + hp if oy + hp < H else H
        xa = ox if ox > 0 else 0
        xb = ox + wp if ox + wp < W else W
        for b in range(B):
            a = 0.0
            c = 0.0
            for y in range(ya, yb):
                for x in range(xa, xb):
                    p = psfs[b, y - oy, x - ox]
                    w = weights[b, y, x]
                    a += w * p * p
                    c += w * (<double>images[b, y, x] - <double>model_conv[b, y, x]) * p
            pp[i, b] = a
            rp[i, b] = c
    return 0


def all_finite(const double[::1] values):
    """Whether every value is finite (``numpy.isfinite(values).all()`` in one pass, without
    the temporary array; a component checks its SED and morphology when it is made)."""
    cdef Py_ssize_t i, n = values.shape[0]
    cdef bint ok = True
    if _release_gil(n):
        with nogil:
            for i in range(n):
                if not isfinite(values[i]):
                    ok = False
                    break
    else:
        for i in range(n):
            if not isfinite(values[i]):
                ok = False
                break
    return ok


def real_convolve(plane, fk, int n0, int n1, bint conj=False, int parts=1):
    """One real plane (h, w) convolved with one kernel transform ``fk`` (2, n1, n0) of the
    full (n0, n1) grid, ``n1`` even, as the fit convolves an odd band count's last band: a
    complex transform of half the width (``cd_rconv1_part``), each phase run in ``parts``
    parts one after another (as that many threads split it). For tests."""
    cdef cd_conv half
    cdef int phase, p, h, w
    cdef float[:, ::1] af, of
    cdef float[:, :, ::1] ff
    cdef double[:, ::1] ad, od
    cdef double[:, :, ::1] fd
    plane = np.asarray(plane)
    if plane.dtype not in (np.float32, np.float64) or plane.ndim != 2:
        raise TypeError("plane must be a 2-D float32 or float64 array")
    h, w = plane.shape
    if n1 % 2 or n1 < 2 or n0 < h or n1 < w or h < 1 or w < 1:
        raise ValueError(f"plane {plane.shape} does not fit the ({n0}, {n1}) grid")
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    fk = np.ascontiguousarray(fk, dtype=plane.dtype)
    if fk.shape != (2, n1, n0):
        raise ValueError(f"fk must have shape (2, {n1}, {n0}), got {fk.shape}")
    plane = np.ascontiguousarray(plane)
    out = np.empty_like(plane)
    dbl = plane.dtype == np.float64
    st = cd_conv_init(&half, n0, n1 // 2, (w + 1) // 2, dbl)
    if st != 0:
        raise (ValueError if st == -1 else MemoryError)(f"no half grid for ({n0}, {n1})")
    try:
        if dbl:
            ad, od, fd = plane, out, fk
            for phase in range(8):
                for p in range(parts):
                    cd_rconv1_part_d(&half, &half, phase, p, parts, &ad[0, 0], w, h, w,
                                     &fd[0, 0, 0], conj, &od[0, 0], w)
        else:
            af, of, ff = plane, out, fk
            for phase in range(8):
                for p in range(parts):
                    cd_rconv1_part_f(&half, &half, phase, p, parts, &af[0, 0], w, h, w,
                                     &ff[0, 0, 0], conj, &of[0, 0], w)
    finally:
        cd_conv_free(&half)
    return out
