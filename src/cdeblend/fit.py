"""The multi-band fit: proximal ADAM on every component of a blend, until it converges.

:func:`fit_blend` runs :class:`Fitter` (docs/spec/multi_band.md 3.3-3.10) on an initialised
:class:`~cdeblend.blend.Blend`, with the rescue rounds of ``DeblendConfig.rescue_faint``.
:class:`Fitter` is the Python face of the Cython :class:`~cdeblend._adam_cy.FitKernel`: it
owns the packed parameters, their ADAM moments, the buffers and the monotonicity operator,
and hands the iterations themselves (render, convolutions, loss, gradient, update, box
resizing, best iterate, convergence test) to the kernel, which runs them without the GIL and
returns only on convergence, at the iteration limit or when a new layout needs more room.
"""

from __future__ import annotations

import numpy as np

from . import _adam_cy
from .blend import Blend, Component, PackedComponents, RadialMonotonicity
from .box import centered, clip_slices
from .deblend_config import DeblendConfig
from .initialization import model_psf_array

__all__ = ["Fitter", "fit_blend"]

#: The kernel's optimizer of each ``DeblendConfig.optimizer``.
_OPTIMIZERS = {"amsgrad": _adam_cy.AMSGRAD, "adam": _adam_cy.ADAM}


def _source_sums(values: np.ndarray, sources: list) -> dict[int, float]:
    """``{id(source): values[its components].sum()}`` with the components in source order.

    A source's one or two values are added in Python as numpy's sum adds them (from its
    identity +0.0, which turns a -0.0 into 0.0), more through numpy: a numpy call per
    source held the GIL."""
    out: dict[int, float] = {}
    vals = values.tolist()
    a = 0
    for s in sources:
        n = len(s.components)
        if n == 0:
            out[id(s)] = 0.0
        elif n == 1:
            out[id(s)] = 0.0 + vals[a]
        elif n == 2:
            out[id(s)] = 0.0 + vals[a] + vals[a + 1]
        else:
            out[id(s)] = float(values[a : a + n].sum())
        a += n
    return out


class Fitter:
    """Proximal ADAM on every component of a blend (docs/spec/multi_band.md 3.3-3.10).

    Holds the packed parameters (:attr:`packed`, handed to the blend by :meth:`bind` when a
    run ends), their ADAM moments, the monotonicity operator and the Cython
    :class:`~cdeblend._adam_cy.FitKernel`, which runs the iterations themselves (render,
    convolutions, loss, gradient, update, box resizing, best iterate, convergence) without
    the GIL. The morphologies and their three ADAM moments are the rows of two (4, cap)
    buffers, one in use, the other receiving them when boxes are resized; Python only runs
    when a new layout needs bigger buffers or a bigger monotonicity table, and when
    components are added.
    """

    def __init__(self, blend: Blend, config: DeblendConfig) -> None:
        self.blend = blend
        self.config = config
        obs = blend.observation
        self.obs = obs
        packed = blend.pack()
        self._components = blend.components
        self._peaks = np.array([c.peak for c in self._components], dtype=np.int64).reshape(-1, 2)
        # SED moments as one (3, K, B) array
        self.sed_state = np.zeros((3,) + packed.sed.shape)
        self._new_buffers(packed.morph.size)
        self.morph_all[0] = packed.morph
        self.packed = PackedComponents(packed.sed, self.morph_all[0], packed.comp, packed.bg_thresh)
        self.mono = RadialMonotonicity((config.monotonicity_size - 1) // 2, config.min_gradient)
        self._cover()
        self.noise = np.ascontiguousarray(obs.noise_rms, dtype=np.float64)
        self.min_step = self.noise * config.sed_min_step
        self.model = np.empty(blend.shape, dtype=obs.dtype)
        self.it = 0
        self.best: tuple | None = None  # (loss, sed, morph, comp, bg_thresh) of the best iterate
        self._best_bufs: tuple | None = None
        self._hist = np.zeros(max(config.max_iter, 1))  # loss of iteration i at index i
        self._shift_cache: np.ndarray | None = None  # (K, 2) symmetry-centre shifts
        self.kernel = self._make_kernel()

    def _make_kernel(self) -> _adam_cy.FitKernel:
        """The Cython fit kernel with the blend's data bound: images, weights and the
        convolution (kernel transforms on the FFT grid, or the direct loop's kernels)."""
        config, obs = self.config, self.obs
        kernel = _adam_cy.FitKernel(
            self.noise,
            self.min_step,
            config.sed_step,
            config.morph_step,
            config.b1,
            config.b2,
            config.eps,
            config.floor,
            _OPTIMIZERS[config.optimizer],
            config.peak_carry,
        )
        B, H, W = self.blend.shape
        conv = obs.convolver
        n0, n1 = conv.fft_shape(H, W)
        fk = None if conv.pick_mode("auto", B, H, W) == "real" else conv.kernel_spectrum(n0, n1)
        kernel.set_data(
            np.ascontiguousarray(obs.images),
            obs.weights,
            obs.diff_kernels,
            conv.adjoint_kernels,
            fk,
            n0,
            n1,
            self._hist,
        )
        return kernel

    def _new_buffers(self, size: int) -> None:
        """Two zeroed (4, cap) morphology buffers for a layout of ``size`` pixels, with room
        for boxes to grow (the kernel re-grids between them without coming back here)."""
        cap = max(2 * size, 256)
        self._mbuf = [np.zeros((4, cap)), np.zeros((4, cap))]
        self._cur, self._size = 0, size

    @property
    def morph_all(self) -> np.ndarray:
        """The morphologies and their ADAM moments, (4, size): the rows of the buffer in use."""
        return self._mbuf[self._cur][:, : self._size]

    @property
    def history(self) -> np.ndarray:
        """The loss before each iteration's update so far."""
        return self._hist[: self.it]

    def _cover(self) -> None:
        """Grow the monotonicity operator to cover every box about its peak (+1 px), with a
        quarter more room when it must grow: the operator of a larger table is the same on
        the smaller boxes (tests/test_adam.py), and each growth is a return of the
        kernel to Python (16 of them on a 2000 x 2000 blend without the room)."""
        comp = self.packed.comp
        if len(comp):
            reach = _adam_cy.monotonic_reach(comp)
            if reach > self.mono.half:
                self.mono.ensure(reach + reach // 4)

    def repack(self, new_boxes: np.ndarray | None = None) -> None:
        """Re-pack after boxes changed (``new_boxes``: (K, 4) for the current components) or
        components were added to the sources; morphologies and ADAM moments are kept on the
        overlap of old and new boxes (new pixels and new components start at 0, new
        components with their own SED and morphology). Components are re-bound to the
        buffers by :meth:`bind` (at the end of the fit), not here."""
        old = self.packed
        comps = self.blend.components
        K, B = len(comps), old.sed.shape[1]
        same = len(comps) == len(self._components) and all(
            a is b for a, b in zip(comps, self._components, strict=True)
        )
        if same:
            mapping = np.arange(K, dtype=np.int64)
            boxes = old.comp[:, :4] if new_boxes is None else new_boxes
        else:
            old_index = {id(c): k for k, c in enumerate(self._components)}
            mapping = np.array([old_index.get(id(c), -1) for c in comps], dtype=np.int64)
            boxes = np.array(
                [old.comp[k, :4] if k >= 0 else c.box for k, c in zip(mapping, comps, strict=True)],
                dtype=np.int64,
            )
            self._peaks = np.array([c.peak for c in comps], dtype=np.int64).reshape(-1, 2)
        comp = np.zeros((K, 7), dtype=np.int64)
        comp[:, :4] = boxes
        sizes = comp[:, 2] * comp[:, 3]
        comp[1:, 4] = np.cumsum(sizes)[:-1]
        comp[:, 5:] = self._peaks - comp[:, :2]
        self._regrid(comp, int(sizes.sum()), mapping)
        if same:
            return
        kept = mapping >= 0
        sed = np.zeros((K, B))
        sed[kept] = old.sed[mapping[kept]]
        sed_state = np.zeros((3, K, B))
        sed_state[:, kept] = self.sed_state[:, mapping[kept]]
        thresh = np.array([-1.0 if c.bg_thresh is None else c.bg_thresh for c in comps])
        packed = PackedComponents(sed, self.morph_all[0], comp, thresh)
        for j in np.flatnonzero(~kept):  # added components bring their own parameters
            sed[j] = comps[j].sed
            packed.morph_view(j)[...] = comps[j].morphology
        self.packed = packed
        self.sed_state = sed_state
        self._components = comps

    def _regrid(
        self, comp: np.ndarray, size: int, mapping: np.ndarray, reuse: bool = False
    ) -> None:
        """Move the morphologies and their moments onto the table ``comp`` (same SEDs), in
        new buffers with room for it (``reuse``: in the other buffer when it has room)."""
        old = self.packed
        rows = self.morph_all
        if reuse and size <= self._mbuf[0].shape[1]:
            # the kernel's layout fits (only the monotonicity table had to grow): re-grid
            # into the other buffer as the kernel does, rather than fault in the pages of
            # two new ones (on a 2000 x 2000 blend 15 of 17 returns, ~0.15 s each)
            self._cur, self._size = 1 - self._cur, size
            self._mbuf[self._cur][:, :size] = 0.0
        else:
            self._new_buffers(size)
        dst = self.morph_all
        for r in range(4):
            _adam_cy.copy_overlap(np.ascontiguousarray(rows[r]), old.comp, dst[r], comp, mapping)
        self.packed = PackedComponents(old.sed, dst[0], comp, old.bg_thresh)
        self._cover()

    def bind(self) -> None:
        """Hand the packed parameters to the blend: its components' ``sed`` / ``morphology``
        / ``box`` then point at the packed buffers."""
        self.blend.adopt(self.packed)

    def _bind(self, p: PackedComponents, bounds: np.ndarray, new_comp: np.ndarray) -> None:
        """Point the fit kernel at the packed parameters and the current morphology buffer."""
        self.kernel.bind(
            p.sed,
            self.sed_state,
            self._mbuf[self._cur],
            p.comp,
            p.bg_thresh,
            self.mono.table,
            bounds,
            self._peaks,
            new_comp,
            self._mbuf[1 - self._cur],
            0,
            self._size,
        )
        self.kernel.set_symmetry(self._symmetry(p.comp))

    def _symmetry(self, comp: np.ndarray) -> np.ndarray | None:
        """Each component's symmetry prox (``DeblendConfig.symmetry``): (K, 3) rows of the
        strength and the shifts of the doubled centre (``2 peak + shift``); None when the
        strength is 0.

        Every component gets the configured strength: on the tuning sets, applying it only
        to components whose box holds another source's peak was worse (hard_lsst_tune
        0.1006 against 0.0952 at strength 1). With ``symmetry_center="subpixel"`` the
        centre is the half-pixel grid point nearest the peak's sub-pixel centre in the
        detection image (:func:`cdeblend.peaks.subpixel_centers`).
        """
        s = self.config.symmetry
        if s <= 0 or len(comp) == 0:
            return None
        out = np.zeros((len(comp), 3))
        out[:, 0] = s
        shifts = self._symmetry_shifts()
        if shifts is not None:
            out[:, 1:] = shifts
        return out

    def _symmetry_shifts(self) -> np.ndarray | None:
        """(K, 2) shifts in {-1, 0, 1} of the components' doubled symmetry centres, or None
        (the peak pixels)."""
        if self.config.symmetry_center != "subpixel":
            return None
        if self._shift_cache is None or len(self._shift_cache) != len(self._peaks):
            from .initialization import chi2_coadd
            from .peaks import subpixel_centers

            D = chi2_coadd(self.obs)
            centres = subpixel_centers(D, self._peaks)
            self._shift_cache = np.clip(np.rint(2 * (centres - self._peaks)), -1, 1)
        return self._shift_cache

    def run(self, max_iter: int) -> bool:
        """Iterate until convergence (at least ``min_iter`` iterations from now) or until
        the blend's iteration count reaches ``max_iter``; returns whether it converged."""
        cfg = self.config
        start = self.it
        if max_iter > self._hist.size:
            self._hist = np.concatenate([self._hist, np.zeros(max_iter - self._hist.size)])
            self.kernel.set_history(self._hist)
        K = len(self._components)
        bounds = np.empty((K, 4), dtype=np.int64)
        new_comp = np.empty((K, 7), dtype=np.int64)
        identity = np.arange(K, dtype=np.int64)
        kernel, bound, converged = self.kernel, None, False
        while self.it < max_iter:
            p = self.packed
            if p is not bound:  # first iteration and after Python re-packed
                self._bind(p, bounds, new_comp)
                bound = p
            best = self._best_buffers(p) if cfg.keep_best else (None, None, None)
            b = self.best
            status, self.it, size, improved, best_loss, best_size = kernel.iterate(
                self.it,
                start,
                max_iter,
                cfg.min_iter,
                cfg.e_rel,
                cfg.resize or 0,
                cfg.component_padding,
                *best,
                b is not None,
                b[0] if b is not None else 0.0,
                cfg.converge_window,
                # without the best iterate the last one is returned: it must be settled
                cfg.convergence == "settled" or not cfg.keep_best,
            )
            # the kernel may have re-gridded into the other buffer (p.comp updated in place)
            if kernel.current != 0 or kernel.size != self._size:
                self._cur = (self._cur + kernel.current) % 2
                self._size = kernel.size
                p = PackedComponents(p.sed, self.morph_all[0], p.comp, p.bg_thresh)
                self.packed = bound = p
                self._bind(p, bounds, new_comp)
            if improved:
                self.best = (best_loss, best[0], best[1][:best_size], best[2], p.bg_thresh)
            if status & _adam_cy.RESIZED:  # the new layout needs room: Python makes it
                self._regrid(new_comp.copy(), size, identity, reuse=True)
            if status & _adam_cy.CONVERGED:
                converged = True
                break
        self.bind()
        return converged

    def _best_buffers(self, p: PackedComponents) -> tuple:
        """Buffers for the kernel's copy of the best iterate: reused while they fit, new
        ones once the stored best lives in them and a bigger layout needs more room."""
        cap = self._mbuf[0].shape[1]
        bufs = self._best_bufs
        if bufs is None or bufs[0].shape != p.sed.shape or bufs[1].size < cap:
            bufs = self._best_bufs = (
                np.empty_like(p.sed),
                np.empty(cap),
                np.empty((len(p.comp), 7), dtype=np.int64),
            )
        return bufs

    def final_loss(self) -> float:
        """Loss of the current parameters."""
        p = self.packed
        _adam_cy.render(p.sed, p.morph, p.comp, self.model)
        return float(self.obs.loss(self.model))

    def restore_best(self, loss: float) -> float:
        """Go back to the best iterate seen if its loss is below ``loss`` (the current
        parameters'); returns the loss of the parameters kept."""
        if self.best is None or not self.best[0] < loss:
            return loss
        best, sed, morph, comp, thresh = self.best
        self.packed = PackedComponents(sed, morph, comp, thresh)
        self.bind()
        return best

    def resume_from_best(self) -> None:
        """Continue from the best iterate seen if it is better than the current parameters:
        its SEDs and morphologies go back into the fit's buffers, the ADAM moments stay
        (moved onto the best iterate's boxes where they overlap), so that a rescue looks at
        the best model and the fit goes on from it. The convergence test stops wherever
        the late oscillation of the loss happens to be, up to a few % above the best."""
        if self.best is None:
            return
        loss, sed, morph, comp, _ = self.best
        if not loss < self.final_loss():
            return
        size = int(np.sum(comp[:, 2] * comp[:, 3]))
        # into the other buffer when it has room: new buffers would add a layout's worth of
        # memory at the peak (about 200 MB on a 2000 x 2000 scene)
        self._regrid(comp.copy(), size, np.arange(len(comp), dtype=np.int64), reuse=True)
        self.morph_all[0] = morph
        self.packed.sed[...] = sed
        self.bind()

    def rescue(self) -> int:
        """Give under-fitted sources a point-like component (see DeblendConfig.rescue_faint).

        A source is under-fitted when the residual ``images - conv(model)`` at its peak has a
        point-source S/N of at least ``rescue_snr`` and a point-source flux above
        ``rescue_fraction`` times the source's model flux. Returns how many were rescued.
        """
        cfg = self.config
        obs = self.obs
        p = self.packed
        sources = [src for src in self.blend.sources if not src.is_null]
        if not sources:
            return 0
        _adam_cy.render(p.sed, p.morph, p.comp, self.model)
        conv = obs.convolve(self.model)
        # weighted least-squares amplitude of a point source in the residual images - conv
        # at every peak, per band (one Cython call, on the PSF stamps only)
        rp, pp = obs.point_products(conv, [s.peak for s in sources])
        amp = np.divide(rp, pp, out=np.zeros_like(rp), where=pp > 0)
        num, den = rp.sum(axis=1), pp.sum(axis=1)
        snr = np.divide(num, np.sqrt(den), out=np.zeros_like(num), where=den > 0)
        # each source's model flux from the packed parameters (components in source order)
        comp_flux = p.sed.sum(axis=1) * p.morph_sums()
        flux = _source_sums(comp_flux, self.blend.sources)
        model_psf = model_psf_array(obs)
        added = 0
        for i, src in enumerate(sources):
            if (
                snr[i] < cfg.rescue_snr
                or np.sum(np.maximum(amp[i], 0)) <= cfg.rescue_fraction * flux[id(src)]
            ):
                continue
            sl_img, sl_psf = clip_slices(centered(src.peak, model_psf.shape), conv.shape[1:])
            morph = model_psf[sl_psf] / model_psf.max()
            box = (sl_img[0].start, sl_img[1].start, morph.shape[0], morph.shape[1])
            sed = np.maximum(amp[i], cfg.floor) * model_psf.max()
            src.components.append(Component(sed, morph, box, src.peak, cfg.bg_thresh, "psf"))
            added += 1
        if added:
            self.repack()
            self.best = None  # earlier iterates lack the new components
        return added


def fit_blend(
    blend: Blend, config: DeblendConfig, stats: dict | None = None
) -> tuple[float, np.ndarray, int, bool]:
    """Proximal ADAM fit of every component of ``blend`` (docs/spec/multi_band.md 3.3-3.10), in
    place.

    With ``config.rescue_faint``, sources left under-fitted at convergence get a point-like
    component and the fit continues (at most ``config.rescue_rounds`` times). ``stats``, if
    given, receives ``rescued``: the number of components so added.

    Returns
    -------
    loss : float
        Loss of the final parameters.
    history : numpy.ndarray
        Loss before each iteration's update.
    iterations : int
    converged : bool
    """
    fitter = Fitter(blend, config)
    converged = fitter.run(config.max_iter)
    rescued = 0
    if config.rescue_faint and config.max_iter > 0:
        for _ in range(config.rescue_rounds):
            if fitter.it >= config.max_iter:
                break
            if config.keep_best:
                fitter.resume_from_best()
            added = fitter.rescue()
            if not added:
                break
            rescued += added
            converged = fitter.run(config.max_iter)
    if stats is not None:
        stats["rescued"] = rescued
    loss = fitter.final_loss()
    if config.keep_best:
        loss = fitter.restore_best(loss)
    return loss, fitter.history.copy(), fitter.it, converged
