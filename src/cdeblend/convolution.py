"""The convolution engine: difference kernels applied to models, by FFT or by direct loops.

A :class:`Convolver` applies one set of per-band difference kernels (see
:func:`cdeblend.observation.difference_kernels`) on one frame of ``(H, W)`` pixels. Every
:class:`~cdeblend.observation.Observation` holds one (``observation.convolver``); the public
convolutions of the observation (:meth:`~cdeblend.observation.Observation.convolve`,
``convolve_adjoint``, ``convolve_box``, the loss and its gradient) are thin wrappers around
it, and the fit, the SED fit, the products and the metrics call it directly for the batched
forms. It owns:

* the kernel transforms per FFT grid (:class:`KernelCache`, shared by an observation and its
  cut-outs, bounded in entries and bytes);
* per-thread FFT plans and work buffers (:meth:`Convolver.work`, :meth:`Convolver.buffers`),
  so one convolver may serve several threads and, once warmed up, allocates nothing;
* the cost model that picks the package's FFT core (``_fft.c``, two bands per complex
  transform) or a direct Cython loop for small kernels or images
  (:meth:`Convolver.pick_mode`), its choices cached per shape;
* the convolutions: same size with zero boundary and its adjoint (the flipped kernels)
  (:meth:`Convolver.convolve`); one array on its box grown by the kernel half-size
  (:meth:`Convolver.convolve_box`); many 2-D morphologies in a few GIL-free calls
  (:meth:`Convolver.convolve_morphs_into`); and the products' double-precision convolutions
  cut to the true support (:meth:`Convolver.convolve_exact_into`).

All boxes are ``(y0, x0, height, width)`` (:mod:`cdeblend.box`) in the convolver's frame.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ._convolve_cy import (
    FFTWork,
    conv_cube,
    conv_planes,
    convolve_direct,
    fast_len,
    kernel_spectrum,
)
from ._convolve_cy import grown_boxes as _grown_boxes
from ._exact import convolve_exact_grids
from ._threads import num_threads
from .box import Box, as_box, clip

__all__ = ["Convolver", "KernelCache"]

#: Cost-model constants (seconds), measured with float32 data on an x86-64 core (see
#: bench/convolve.py): one multiply-add of the direct loop, one ``n log2 n`` unit of the 2-D
#: FFT of one real plane, and the fixed overhead of one FFT convolution; ``_ROW_COST`` is the
#: set-up of one contiguous run of the direct loop (one source row times one kernel tap).
#: Only their ratios matter.
_DIRECT_COST = 0.17e-9
_ROW_COST = 3.5e-9
_FFT_COST = 0.14e-9
_FFT_OVERHEAD = 20e-6
#: At most this many FFT grids keep their kernel transforms (LRU), within a byte budget (the
#: newest entry is always kept). A blend's SED fit and products use a grid per box size, so
#: a catalog meets many small grids; the bytes, not the count, bound the cache.
_KERNEL_CACHE_SIZE = 1024
_KERNEL_CACHE_BYTES = 128 * 2**20
#: Fewest morphologies of one FFT grid that :meth:`Convolver.convolve_morphs_into` hands to
#: a thread of its own.
_MIN_PART = 32
#: At most this many FFT grids keep work buffers per thread (LRU).
_BUFFER_CACHE_SIZE = 6


def _even_parts(items: list, parts: int) -> list[list]:
    """``items`` cut into at most ``parts`` runs of about equal length, each but the last of
    an even length (``conv_planes`` transforms planes two by two, so each run pairs its
    planes as the whole list does: the same results), at least ``_MIN_PART`` items each."""
    step = -(-len(items) // max(min(parts, len(items) // _MIN_PART), 1))
    step = max(step + step % 2, 2)
    return [items[i : i + step] for i in range(0, len(items), step)]


def _pairs_within(n: int, lo: int, m: int, r: int) -> int:
    """Number of pairs (a, b), ``0 <= a < n``, ``lo <= b < lo + m``, with ``|a - b| <= r``:
    ``sum_b (min(n, b + r + 1) - max(0, b - r))`` in closed form (``[lo, lo + m)`` inside
    ``[0, n)``)."""

    def above(c: int) -> int:  # sum over b of max(0, b - c)
        first = max(lo, c + 1)
        last = lo + m - 1
        k = last - first + 1
        return k * (first + last - 2 * c) // 2 if k > 0 else 0

    total = m * (r + 1) + (lo + lo + m - 1) * m // 2  # sum of (b + r + 1)
    return total - above(n - r - 1) - above(r)


class KernelCache:
    """Kernel transforms per FFT grid, shared by a convolver and those of its cut-outs.

    Entry ``(n0, n1, exact)`` is :func:`~cdeblend._convolve_cy.kernel_spectrum` of the
    difference kernels on that grid, in the kernels' dtype (``exact``: float64). The adjoint
    multiplies by their conjugates, so it needs no entry of its own.
    """

    def __init__(self, kernels: np.ndarray) -> None:
        self.kernels = kernels
        self.lock = threading.Lock()
        self.entries: OrderedDict[tuple[int, int, bool], np.ndarray] = OrderedDict()
        self.nbytes = 0

    def get(self, n0: int, n1: int, exact: bool = False) -> np.ndarray:
        """Return the (B, 2, n1, n0) transforms on the ``(n0, n1)`` grid, computing them once
        (in double precision, stored in the kernels' dtype or, with ``exact``, float64)."""
        key = (n0, n1, exact or self.kernels.dtype == np.float64)
        with self.lock:
            hit = self.entries.get(key)
            if hit is not None:
                self.entries.move_to_end(key)
                return hit
        value = kernel_spectrum(
            np.ascontiguousarray(self.kernels, dtype=np.float64),
            n0,
            n1,
            np.float64 if key[2] else self.kernels.dtype,
        )
        with self.lock:
            if key not in self.entries:
                self.entries[key] = value
                self.nbytes += value.nbytes
            while len(self.entries) > 1 and (
                len(self.entries) > _KERNEL_CACHE_SIZE or self.nbytes > _KERNEL_CACHE_BYTES
            ):
                _, old = self.entries.popitem(last=False)
                self.nbytes -= old.nbytes
        return value


class Convolver:
    """Per-band difference kernels applied on one ``(H, W)`` frame (same size, zero boundary).

    Parameters
    ----------
    kernels : (B, kh, kw) numpy.ndarray
        Odd-sized difference kernels, in the working dtype (float32 or float64): band ``b`` of
        a model is convolved with ``kernels[b]``.
    frame : (int, int)
        ``(H, W)`` of the frame the boxes refer to.

    Attributes
    ----------
    kernels, adjoint_kernels : (B, kh, kw) numpy.ndarray
        The kernels and their flips (the adjoint's kernels), C-contiguous.
    cache : KernelCache
        The kernel transforms per FFT grid (shared with :meth:`on_frame`'s convolvers).
    modes : dict
        The cost model's choices, keyed by shapes (shared likewise).
    shape : (int, int, int)
        ``(B, H, W)``.

    Notes
    -----
    The work buffers are per thread, so one convolver may serve several threads.
    """

    def __init__(self, kernels: np.ndarray, frame: tuple[int, int]) -> None:
        self.kernels = np.ascontiguousarray(kernels)
        self.adjoint_kernels = np.ascontiguousarray(self.kernels[:, ::-1, ::-1])
        self.cache = KernelCache(self.kernels)
        self.modes: dict[tuple, str] = {}
        self.shape = (self.kernels.shape[0], int(frame[0]), int(frame[1]))
        self._local = threading.local()

    def on_frame(self, frame: tuple[int, int]) -> Convolver:
        """A convolver of the same kernels on another ``(H, W)`` frame, sharing this one's
        kernel transforms and cost-model choices (keyed by shapes only: valid for any frame)
        but not its per-thread buffers."""
        new = object.__new__(Convolver)
        new.kernels = self.kernels
        new.adjoint_kernels = self.adjoint_kernels
        new.cache = self.cache
        new.modes = self.modes
        new.shape = (self.shape[0], int(frame[0]), int(frame[1]))
        new._local = threading.local()
        return new

    def __getstate__(self) -> dict:
        # thread-local buffers and the cache's lock do not pickle (process pools, dask);
        # the kernel transforms are recomputed on the other side when needed
        state = self.__dict__.copy()
        del state["_local"]
        state["cache"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.cache = KernelCache(self.kernels)
        self._local = threading.local()

    @property
    def dtype(self) -> np.dtype:
        """Working dtype (the kernels')."""
        return self.kernels.dtype

    @property
    def kernel_radius(self) -> tuple[int, int]:
        """Half-size ``(ry, rx)`` of the kernels."""
        return self.kernels.shape[1] // 2, self.kernels.shape[2] // 2

    # ------------------------------------------------------------------ grids and cost model
    def fft_shape(self, h: int, w: int) -> tuple[int, int]:
        """The FFT grid ``(n0, n1)`` of an alias-free same-size convolution of ``(h, w)``."""
        # n >= size + kernel half-size is enough for an alias-free same-size convolution
        ry, rx = self.kernel_radius
        return fast_len(h + ry), fast_len(w + rx)

    def kernel_spectrum(self, n0: int, n1: int, exact: bool = False) -> np.ndarray:
        """The kernels' transforms on the ``(n0, n1)`` grid (cached; see :class:`KernelCache`)."""
        return self.cache.get(n0, n1, exact)

    def pick_mode(
        self, mode: str, nb_in: int, h: int, w: int, src: tuple[int, int] | None = None
    ) -> str:
        """Resolve ``mode`` ("auto", "fft" or "real") for ``nb_in`` input planes and an
        ``(h, w)`` output grid (source ``src``, default the same): "auto" is the cheaper of
        the FFT and the direct loop by the cost model."""
        if mode != "auto":
            if mode not in ("fft", "real"):
                raise ValueError(f"mode must be 'auto', 'fft' or 'real', got {mode!r}")
            return mode
        key = (nb_in, h, w, src)
        picked = self.modes.get(key)
        if picked is None:
            picked = self.modes[key] = self._cheaper_mode(nb_in, h, w, src)
        return picked

    def _cheaper_mode(self, nb_in: int, h: int, w: int, src: tuple[int, int] | None) -> str:
        nb, kh, kw = self.kernels.shape
        if kh * kw == 1:
            return "real"
        # multiply-adds of the direct loop: for each tap, the overlap of the shifted source
        # with the output grid (the source sits centred in the output for convolve_box)
        sh, sw = src if src is not None else (h, w)
        taps_y = _pairs_within(h, (h - sh) // 2, sh, kh // 2)
        taps_x = _pairs_within(w, (w - sw) // 2, sw, kw // 2)
        direct = nb * taps_y * (_DIRECT_COST * taps_x + _ROW_COST * kw)
        n0, n1 = self.fft_shape(h, w)
        n = n0 * n1
        fft = _FFT_OVERHEAD + _FFT_COST * (nb_in + nb) * n * math.log2(n)
        return "real" if direct < fft else "fft"

    # ------------------------------------------------------------------ per-thread buffers
    def work(self, n0: int, n1: int, width: int, double: bool | None = None) -> FFTWork:
        """This thread's FFT plans and buffers for the ``(n0, n1)`` grid, for inputs and
        outputs up to ``width`` columns (a cached one at least as wide is reused), in the
        working precision (or double with ``double=True``)."""
        if double is None:
            double = self.dtype == np.float64
        cache = getattr(self._local, "work", None)
        if cache is None:
            cache = self._local.work = OrderedDict()
        key = (n0, n1, double)
        work = cache.get(key)
        if work is None or work.width < width:
            work = cache[key] = FFTWork(n0, n1, width, double)
            while len(cache) > _BUFFER_CACHE_SIZE:
                cache.popitem(last=False)
        cache.move_to_end(key)
        return work

    def buffers(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Two work arrays of ``shape`` and the working dtype, per thread (reused)."""
        cache = getattr(self._local, "arrays", None)
        if cache is None:
            cache = self._local.arrays = OrderedDict()
        pair = cache.get(shape)
        if pair is None:
            pair = cache[shape] = (np.empty(shape, self.dtype), np.empty(shape, self.dtype))
            while len(cache) > _BUFFER_CACHE_SIZE:
                cache.popitem(last=False)
        cache.move_to_end(shape)
        return pair

    # ------------------------------------------------------------------ checks
    def check_input(self, model: Any, name: str, allow_2d: bool = False) -> np.ndarray:
        """``model`` as a C-contiguous (B, h, w) array of the working dtype (with
        ``allow_2d``, a (h, w) or (1, h, w) one, convolved with every band's kernel)."""
        arr = np.asarray(model)
        nb = self.shape[0]
        if arr.ndim == 2 and allow_2d:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[0] not in ((nb, 1) if allow_2d else (nb,)):
            raise ValueError(f"{name} must have shape ({nb}, h, w), got {np.shape(model)}")
        if arr.dtype != self.dtype or not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr, dtype=self.dtype)
        return arr

    def check_output(self, out: np.ndarray | None, shape: tuple[int, ...], name: str) -> np.ndarray:
        """``out`` checked as a C-contiguous ``shape`` array of the working dtype (a new one
        when ``None``)."""
        if out is None:
            return np.empty(shape, dtype=self.dtype)
        if not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != self.dtype:
            raise ValueError(f"{name} must be a {self.dtype.name} array of shape {shape}")
        if not out.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")
        return out

    # ------------------------------------------------------------------ same-size convolution
    def convolve(
        self,
        model: Any,
        out: np.ndarray | None = None,
        adjoint: bool = False,
        mode: str = "auto",
        name: str = "model",
    ) -> np.ndarray:
        """Same-size convolution (zero boundary) of a (B, h, w) cube, or with ``adjoint`` its
        adjoint (the flipped kernels); a 2-D or single-plane model (not with ``adjoint``) is
        convolved with every band's kernel. ``name`` names ``model`` in error messages."""
        x = self.check_input(model, name, allow_2d=not adjoint)
        nb_in, h, w = x.shape
        out = self.check_output(out, (self.shape[0], h, w), "out")
        if self.pick_mode(mode, nb_in, h, w) == "real":
            if np.may_share_memory(x, out):  # the direct loop accumulates into out
                x = x.copy()
            out.fill(0)
            convolve_direct(x, self.adjoint_kernels if adjoint else self.kernels, out, 0, 0)
        else:
            if np.may_share_memory(x, out):
                x = x.copy()
            n0, n1 = self.fft_shape(h, w)
            conv_cube(self.work(n0, n1, w), x, 0, 0, self.kernel_spectrum(n0, n1), out, adjoint)
        return out

    # ------------------------------------------------------------------ convolution on boxes
    def grown_box(self, box: Box) -> tuple[Box, Box]:
        """``box`` clipped to the frame, and that grown by the kernel half-size and clipped."""
        _, height, width = self.shape
        ry, rx = self.kernel_radius
        cy0, cx0, ch, cw = clip(box, (height, width))
        grown = clip((cy0 - ry, cx0 - rx, ch + 2 * ry, cw + 2 * rx), (height, width))
        return (cy0, cx0, ch, cw), grown

    def grown_boxes(self, boxes: Any) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`grown_box` of every row of a (K, 4) array of boxes in one kernel call: the
        (K, 4) int64 clipped and grown boxes (a Python call per box held the GIL)."""
        b = np.ascontiguousarray(boxes, dtype=np.int64).reshape(-1, 4)
        _, height, width = self.shape
        ry, rx = self.kernel_radius
        clipped = np.empty_like(b)
        grown = np.empty_like(b)
        _grown_boxes(b, height, width, ry, rx, clipped, grown)
        return clipped, grown

    def _box_source(self, array: Any, box: Any) -> tuple[np.ndarray, Box, Box]:
        """Check ``array`` on ``box`` and cut it to the frame.

        Returns the part of ``array`` inside the frame (B or 1, ch, cw), that part's box, and
        the box the convolution covers: it grown by the kernel half-size, clipped again.
        """
        y0, x0, h, w = as_box(box, allow_empty=True)
        arr = self.check_input(array, "array", allow_2d=True)
        if arr.shape[1:] != (h, w):
            raise ValueError(f"array has shape {np.shape(array)} but box has size ({h}, {w})")
        (cy0, cx0, ch, cw), grown = self.grown_box((y0, x0, h, w))
        src = arr[:, cy0 - y0 : cy0 - y0 + ch, cx0 - x0 : cx0 - x0 + cw]
        return src, (cy0, cx0, ch, cw), grown

    def convolve_box(self, array: Any, box: Any, mode: str = "auto") -> tuple[np.ndarray, Box]:
        """Convolve an (h, w) or (B, h, w) array lying on ``box``, on that box grown by the
        kernel half-size (see :meth:`cdeblend.observation.Observation.convolve_box`)."""
        src, (cy0, cx0, ch, cw), grown = self._box_source(array, box)
        gy0, gx0, gh, gw = grown
        nb = self.shape[0]
        if ch == 0 or cw == 0 or gh == 0 or gw == 0:
            return np.zeros((nb, gh, gw), dtype=self.dtype), grown
        if self.pick_mode(mode, src.shape[0], gh, gw, (ch, cw)) == "real":
            # the direct loop only visits taps x source pixels: cost ~ B * taps * h * w
            out = np.zeros((nb, gh, gw), dtype=self.dtype)
            convolve_direct(np.ascontiguousarray(src), self.kernels, out, cy0 - gy0, cx0 - gx0)
            return out, grown
        n0, n1 = self.fft_shape(gh, gw)
        out = np.empty((nb, gh, gw), dtype=self.dtype)
        conv_cube(
            self.work(n0, n1, gw),
            np.ascontiguousarray(src),
            cy0 - gy0,
            cx0 - gx0,
            self.kernel_spectrum(n0, n1),
            out,
            False,
        )
        return out, grown

    def _shared_grid(self, gh: int, gw: int) -> tuple[int, int]:
        """The FFT grid of a grown box, or the frame's when that is at most twice as large
        (a larger grid is still alias-free; sharing it means fewer calls)."""
        _, height, width = self.shape
        frame_grid = self.fft_shape(height, width)
        grid = self.fft_shape(gh, gw)
        if 2 * grid[0] * grid[1] >= frame_grid[0] * frame_grid[1]:
            grid = frame_grid  # nearly the frame's: share the frame's grid (fewer calls)
        return grid

    def convolve_boxes(
        self, arrays: Sequence[Any], boxes: Sequence[Any]
    ) -> list[tuple[np.ndarray, Box]]:
        """:meth:`convolve_box` of many 2-D morphologies (mode "auto"), batched (see
        :meth:`convolve_morphs_into`); each result equals :meth:`convolve_box`'s up to
        floating-point round-off."""
        nb = self.shape[0]
        box_list = [as_box(b, allow_empty=True) for b in boxes]
        grown = [self.grown_box(b)[1] for b in box_list]  # empty sources give zeros
        sizes = np.array([nb * g[2] * g[3] for g in grown], dtype=np.intp)
        offsets = np.zeros(len(sizes), dtype=np.intp)
        offsets[1:] = np.cumsum(sizes)[:-1]
        flat = np.zeros(int(sizes.sum()), dtype=self.dtype)
        self.convolve_morphs_into(arrays, box_list, flat, offsets)
        return [
            (flat[o : o + n].reshape(nb, g[2], g[3]), g)
            for o, n, g in zip(offsets, sizes, grown, strict=True)
        ]

    def convolve_morphs_into(
        self, arrays: Sequence[Any], boxes: Sequence[Box], flat: np.ndarray, offsets: np.ndarray
    ) -> None:
        """Convolve 2-D morphologies, each on its box, with every band's kernel into
        ``flat``: morphology k's (B, gh, gw) convolution on its grown box (see
        :meth:`grown_box`) starts at ``offsets[k]``; an empty grown box writes nothing.

        Morphologies whose grown boxes share an FFT grid (any grid at least half the frame's
        counts as the frame's; a larger grid is still alias-free) go to one
        :func:`~cdeblend._convolve_cy.conv_planes` call, two morphologies per transform and
        the GIL released throughout; small cases take the direct loop.
        """
        if len(arrays) != len(boxes):
            raise ValueError(f"got {len(arrays)} arrays but {len(boxes)} boxes")
        # the box arithmetic at once, then plain ints: a Python or numpy call per
        # morphology held the GIL for longer than the batched FFTs took
        box_arr = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        clipped, grown = self.grown_boxes(box_arr)
        grids: dict[tuple[int, int], list] = {}
        plans: dict[tuple[int, int, int, int], tuple[int, int] | None] = {}
        rows = zip(arrays, box_arr.tolist(), clipped.tolist(), grown.tolist(), strict=True)
        for k, (array, (y0, x0, h, w), (cy0, cx0, ch, cw), (gy0, gx0, gh, gw)) in enumerate(rows):
            arr = array if isinstance(array, np.ndarray) else np.asarray(array)
            arr = arr[0] if arr.ndim == 3 and arr.shape[0] == 1 else arr
            if arr.shape != (h, w) or arr.dtype.kind not in "biuf":
                raise ValueError(
                    f"array {k} has shape {np.shape(array)} and dtype {arr.dtype}, its box is "
                    f"({h}, {w}): it must be a real (h, w) array"
                )
            if ch == 0 or cw == 0 or gh == 0 or gw == 0:
                continue  # nothing of it in the frame: its convolution is 0
            grid = self._grid_of(plans, 1, gh, gw, ch, cw)
            if grid is None:
                conv, _ = self.convolve_box(arr, (y0, x0, h, w), mode="real")
                flat[offsets[k] : offsets[k] + conv.size] = conv.ravel()
                continue
            sub = (slice(cy0 - y0, cy0 - y0 + ch), slice(cx0 - x0, cx0 - x0 + cw))
            src = arr if (ch, cw) == (h, w) else arr[sub]
            grids.setdefault(grid, []).append((k, src, cy0 - gy0, cx0 - gx0, gh, gw))
        jobs = [
            (n0, n1, part)
            for (n0, n1), items in grids.items()
            for part in _even_parts(items, num_threads())
        ]
        if len(jobs) > len(grids):  # the parts of each grid on the threads
            with ThreadPoolExecutor(num_threads()) as pool:
                list(pool.map(lambda job: self._convolve_planes(*job, flat, offsets), jobs))
            return
        for n0, n1, items in jobs:
            self._convolve_planes(n0, n1, items, flat, offsets)

    def _grid_of(self, plans: dict, nb_in: int, gh: int, gw: int, ch: int, cw: int) -> Any:
        """The FFT grid of a (ch, cw) source on a (gh, gw) grown box, None for the direct
        loop: the cost model's choice, looked up once per shape (``plans``, per call)."""
        if (gh, gw, ch, cw) not in plans:
            real = self.pick_mode("auto", nb_in, gh, gw, (ch, cw)) == "real"
            plans[gh, gw, ch, cw] = None if real else self._shared_grid(gh, gw)
        return plans[gh, gw, ch, cw]

    def _convolve_planes(
        self, n0: int, n1: int, items: list, flat: np.ndarray, offsets: np.ndarray
    ) -> None:
        """One :func:`~cdeblend._convolve_cy.conv_planes` call for the morphologies ``items``
        of :meth:`convolve_morphs_into` that share the ``(n0, n1)`` grid."""
        # the tables in plain ints, one array each (per-row numpy calls held the GIL)
        src_rows, out_rows, o = [], [], 0
        for k, src, oy, ox, gh, gw in items:
            h, w = src.shape
            src_rows.append((o, h, w, oy, ox))
            out_rows.append((int(offsets[k]), gh, gw))
            o += h * w
        src_table = np.array(src_rows, dtype=np.intp).reshape(-1, 5)
        out_table = np.array(out_rows, dtype=np.intp).reshape(-1, 3)
        # one copy (and cast to the working dtype) of every plane
        planes = np.concatenate([item[1].ravel() for item in items], dtype=self.dtype)
        work = self.work(n0, n1, max(row[2] for row in out_rows))
        conv_planes(work, planes, src_table, self.kernel_spectrum(n0, n1), flat, out_table)

    # ------------------------------------------------------------------ exact convolutions
    def convolve_box_exact(self, array: Any, box: Any) -> tuple[np.ndarray, Box]:
        """:meth:`convolve_box` for the products of a fit: exactly 0 wherever the true
        convolution is 0 (one item of :meth:`convolve_exact_into`)."""
        src, clipped, grown = self._box_source(array, box)
        nb = self.shape[0]
        model = np.ascontiguousarray(np.broadcast_to(src, (nb,) + src.shape[1:]), dtype=np.float64)
        out = np.zeros(nb * grown[2] * grown[3], dtype=self.dtype)
        self.convolve_exact_into(
            model.ravel(), [clipped], np.zeros(1, np.intp), out, np.zeros(1, np.intp)
        )
        return out.reshape(nb, grown[2], grown[3]), grown

    def convolve_exact_into(
        self,
        models: np.ndarray,
        boxes: Sequence[Box],
        offsets: np.ndarray,
        out: np.ndarray,
        out_offsets: np.ndarray,
    ) -> None:
        """Convolve per-source (B, h, w) models for the products of a fit: exactly 0
        wherever the true convolution is 0.

        Model k is ``models[offsets[k]:]`` (float64, C order) on ``boxes[k]``, which lies
        inside the frame; its convolution on the grown box (:meth:`grown_box`) goes to
        ``out[out_offsets[k]:]`` (B, gh, gw) in the working precision (empty boxes write
        nothing). FFT round-off would leave tiny non-zero values over the whole grown box,
        and there they would claim flux when it is re-apportioned; the direct loop has no
        such noise but costs ``B x taps x pixels``. So the FFT runs in double precision (its
        round-off is ~1e-16 of the peak, below float32 resolution), and the result is cut to
        the support of the true convolution: the model's non-zero pixels dilated by the
        kernel's non-zero taps. Small cases, where the direct loop is cheaper, use it.
        The others go to one Cython call for all their FFT grids (a few calls when the
        grids' kernel transforms would take much memory), without the GIL, the models on
        the available threads (:func:`cdeblend._threads.num_threads`; each model on one
        thread, with the same results for any count).
        """
        nb = self.shape[0]
        clipped, grown = self.grown_boxes(np.asarray(boxes, dtype=np.int64).reshape(-1, 4))
        offs = np.asarray(offsets).tolist()
        out_offs = np.asarray(out_offsets).tolist()
        grids: dict[tuple[int, int], list] = {}
        plans: dict[tuple[int, int, int, int], tuple[int, int] | None] = {}
        for k, ((cy0, cx0, ch, cw), (gy0, gx0, gh, gw)) in enumerate(
            zip(clipped.tolist(), grown.tolist(), strict=True)
        ):
            if ch == 0 or cw == 0 or gh == 0 or gw == 0:
                continue
            grid = self._grid_of(plans, nb, gh, gw, ch, cw)
            if grid is None:
                model = models[offs[k] : offs[k] + nb * ch * cw].reshape(nb, ch, cw)
                dst = out[out_offs[k] : out_offs[k] + nb * gh * gw].reshape(nb, gh, gw)
                dst[...] = 0
                convolve_direct(model.astype(self.dtype), self.kernels, dst, cy0 - gy0, cx0 - gx0)
                continue
            grids.setdefault(grid, []).append(
                (offs[k], ch, cw, cy0 - gy0, cx0 - gx0, out_offs[k], gh, gw, k)
            )
        convolve_exact_grids(self, grids, models, offsets, out, out_offsets)
