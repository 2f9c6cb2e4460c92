"""The multi-band model: a Blend of Sources made of factorized Components.

A component is an SED (one value per band) times a morphology (a 2-D array with peak 1 on
its own box inside the blend's frame). A source is one or two components (bulge and disk
for bright ones); the blend's model-space image is the sum of every component inserted at
its box, and its observed model is that image convolved band by band with the difference
kernels of the :class:`~cdeblend.observation.Observation`.

For fitting, the parameters of all components live in a few flat float64 buffers (the
"packed" layout of :class:`PackedComponents`); each component's ``sed`` and
``morphology`` are views into them, so that one Cython call can update every component
per iteration while the objects stay the user's view of the model.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import _adam_cy
from .apportion import FlatStack
from .box import Box, as_box, as_point, check_inside, check_peak_in_box, overlap_slices
from .box import grow as box_grow  # noqa: F401 (re-exported: the former home of the box helpers)
from .box import intersect as box_intersect  # noqa: F401
from .box import union as box_union

__all__ = [
    "Blend",
    "Component",
    "PackedComponents",
    "RadialMonotonicity",
    "Source",
    "radial_visiting_list",
]


# ----------------------------------------------------------------------------- monotonicity
@functools.lru_cache(maxsize=8)
def radial_visiting_list(half: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The weighted radial monotonicity operator (docs/spec/multi_band.md 3.7.1) as a visiting list.

    Parameters
    ----------
    half : int
        Half-size of the square grid of offsets, ``-half .. half`` on each axis.

    Returns
    -------
    dy, dx : numpy.ndarray
        int32 offsets from the centre, sorted by increasing distance (ties in row-major
        order); the centre comes first.
    weights : numpy.ndarray
        (n, 8) float64: per offset, the weights of its 8 neighbours in the order
        (-1,-1), (-1,0), (-1,1), (0,-1), (0,1), (1,-1), (1,0), (1,1). A neighbour gets the raw
        weight ``|cos(theta(p) - theta(n))|`` when it is strictly closer to the centre than
        the pixel (``theta = atan2(dy, dx)``, 0 at the centre), and the weights of a pixel
        are normalised to sum 1 (a pixel with a single closer neighbour gives it weight 1).

    The arrays are cached and read-only: blends of similar size share them.
    """
    half = int(half)
    if half < 1:
        raise ValueError(f"half must be >= 1, got {half}")
    ax = np.arange(-half, half + 1)
    dy, dx = (a.ravel() for a in np.meshgrid(ax, ax, indexing="ij"))
    r2 = dy * dy + dx * dx
    theta = np.arctan2(dy, dx)
    raw = np.zeros((dy.size, 8))
    closer = np.zeros((dy.size, 8), dtype=bool)
    k = 0
    for oy in (-1, 0, 1):
        for ox in (-1, 0, 1):
            if oy == 0 and ox == 0:
                continue
            ny, nx = dy + oy, dx + ox
            closer[:, k] = ny * ny + nx * nx < r2
            raw[:, k] = np.where(closer[:, k], np.abs(np.cos(theta - np.arctan2(ny, nx))), 0.0)
            k += 1
    # a lone closer neighbour gets weight 1 exactly (cos(pi/2) is not exactly 0 in floats)
    lone = closer.sum(axis=1) == 1
    raw[lone] = closer[lone]
    total = raw.sum(axis=1)
    weights = np.divide(raw, total[:, None], out=np.zeros_like(raw), where=total[:, None] > 0)
    order = np.argsort(r2, kind="stable")
    out = (
        np.ascontiguousarray(dy[order], dtype=np.int32),
        np.ascontiguousarray(dx[order], dtype=np.int32),
        np.ascontiguousarray(weights[order]),
    )
    for a in out:
        a.flags.writeable = False
    return out


class RadialMonotonicity:
    """The radial monotonicity operator, grown on demand to cover the largest morphology.

    Parameters
    ----------
    half : int
        Initial half-size of the offset grid (the pipeline uses a 101 x 101 table, half 50).
    min_gradient : float
        In [0, 1): each pixel is at most ``1 - min_gradient`` times the weighted mean of its
        closer neighbours (0, the pipeline: plain monotonicity; scarlet's ``min_gradient``).
        The neighbour weights are scaled by ``1 - min_gradient``.
    """

    def __init__(self, half: int = 50, min_gradient: float = 0.0) -> None:
        if not 0 <= min_gradient < 1:
            raise ValueError(f"min_gradient must be in [0, 1), got {min_gradient!r}")
        self.min_gradient = float(min_gradient)
        self.half = 0
        self.dy = self.dx = self.weights = None
        self._table = None
        self.ensure(half)

    def ensure(self, half: int) -> None:
        """Grow the grid (never shrink) so that it has at least this half-size."""
        if half > self.half:
            self.half = int(half)
            self.dy, self.dx, self.weights = radial_visiting_list(self.half)
            if self.min_gradient > 0:
                self.weights = self.weights * (1.0 - self.min_gradient)
            self._table = None

    @property
    def table(self) -> _adam_cy.MonotonicTable:
        """The operator in the grid layout of :func:`cdeblend._adam_cy.fit_step` (shared by
        every operator of this size: it is only read)."""
        if self._table is None:
            self._table = _monotonic_table(self.half, self.min_gradient)
        return self._table

    def ensure_covers(self, shape: tuple[int, int], peak: tuple[int, int]) -> None:
        """Make sure the grid covers an array of ``shape`` about any centre within 1 px of
        ``peak`` (the operator re-centres on the brightest pixel of the 3 x 3 window)."""
        h, w = shape
        py, px = peak
        self.ensure(max(py, px, h - 1 - py, w - 1 - px) + 1)

    def __call__(self, morph: np.ndarray, peak: tuple[int, int]) -> np.ndarray:
        """Project a copy of ``morph`` (h, w) onto radially monotonic arrays about ``peak``."""
        from . import _monotonic_cy

        out = np.array(morph, dtype=np.float64, order="C", copy=True)
        self.ensure_covers(out.shape, peak)
        _monotonic_cy.radial_project(
            out, int(peak[0]), int(peak[1]), self.dy, self.dx, self.weights
        )
        return out


@functools.lru_cache(maxsize=8)
def _monotonic_table(half: int, min_gradient: float = 0.0) -> _adam_cy.MonotonicTable:
    """The grid table of :func:`radial_visiting_list` ``(half)`` with the weights scaled by
    ``1 - min_gradient``, built once per size (the fit of every blend needs one; building
    it took a good part of a small blend's time)."""
    dy, dx, weights = radial_visiting_list(half)
    if min_gradient > 0:
        weights = weights * (1.0 - min_gradient)
    return _adam_cy.MonotonicTable(dy, dx, weights)


# ----------------------------------------------------------------------------- the model
def _real_array(value: object, name: str, copy: bool) -> np.ndarray:
    """``value`` as a C-contiguous float64 array (a copy with ``copy``); complex, string or
    object values are refused rather than cast."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return (np.array if copy else np.asarray)(arr, dtype=np.float64, order="C")


class Component:
    """One factorized component: ``sed (B,) x morphology (h, w)`` on ``box``.

    Parameters
    ----------
    sed : array_like
        (B,) model-space flux scale per band.
    morphology : array_like
        (h, w) non-negative morphology, peak-normalised during the fit.
    box : tuple of int
        ``(y0, x0, h, w)`` in the blend's frame.
    peak : tuple of int
        ``(y, x)`` of the source's peak in the blend's frame (inside ``box``).
    bg_thresh : float or None
        Noise threshold in units of the noise RMS per band (docs/spec/multi_band.md 3.7 step
        3); None means
        plain positivity and no box resizing.
    kind : str
        "extended", "bulge", "disk" or "psf" (how it was initialised).
    copy : bool
        Copy the morphology (False: keep a C-contiguous float64 array as it is, for callers
        that made it for this component).
    """

    def __init__(
        self,
        sed: np.ndarray,
        morphology: np.ndarray,
        box: Sequence[int],
        peak: Sequence[int],
        bg_thresh: float | None = None,
        kind: str = "extended",
        copy: bool = True,
    ) -> None:
        self.sed = _real_array(sed, "sed", copy=True)
        self.morphology = _real_array(morphology, "morphology", copy=copy)
        # the kernels index the morphology from its box and monotonicity walks out from the
        # peak: a non-empty box holding the peak, finite values
        self.box: Box = as_box(box, "box")
        self.peak = as_point(peak, "peak")
        check_peak_in_box(self.peak, self.box, "peak", "the component's box")
        self.bg_thresh = None if bg_thresh is None else float(bg_thresh)
        self.kind = kind
        if self.sed.ndim != 1 or self.sed.size == 0:
            raise ValueError(f"sed must be 1-D and non-empty, got shape {self.sed.shape}")
        if self.morphology.shape != tuple(self.box[2:]):
            raise ValueError(
                f"morphology has shape {self.morphology.shape}, its box needs {self.box[2:]}"
            )
        for what, arr in (("sed", self.sed), ("morphology", self.morphology)):
            # (C-contiguous float64 here: one kernel pass, not two numpy calls)
            if not _adam_cy.all_finite(arr.reshape(-1)):
                raise ValueError(f"{what} has NaN or infinite values")

    @property
    def local_peak(self) -> tuple[int, int]:
        """The peak in the component's own frame."""
        return (self.peak[0] - self.box[0], self.peak[1] - self.box[1])

    def model(self) -> np.ndarray:
        """The model-space image ``sed (x) morphology``, shape (B, h, w)."""
        return self.sed[:, None, None] * self.morphology[None]

    def __repr__(self) -> str:
        return f"Component(kind={self.kind!r}, box={self.box}, peak={self.peak})"


class Source:
    """One detected object: an ordered list of components sharing a peak.

    Parameters
    ----------
    components : list of Component
        Empty for a "null" source (nothing could be initialised).
    peak : tuple of int
        ``(y, x)`` in the blend's frame.
    index : int
        Row of the peak in the list passed to the deblender.
    """

    def __init__(self, components: list[Component], peak: Sequence[int], index: int = 0):
        self.components = list(components)
        self.peak = as_point(peak, "peak")
        self.index = int(index)

    @property
    def is_null(self) -> bool:
        """True when the source has no component."""
        return not self.components

    @property
    def box(self) -> Box:
        """Union of the component boxes (empty for a null source)."""
        box: Box = (self.peak[0], self.peak[1], 0, 0)
        for c in self.components:
            box = box_union(box, c.box)
        return box

    def model(self) -> np.ndarray:
        """Model-space image of the source on :attr:`box`, shape (B, h, w)."""
        box = self.box
        bands = self.components[0].sed.size if self.components else 0
        out = np.zeros((bands, box[2], box[3]))
        for c in self.components:
            sa, sb = overlap_slices(box, c.box)
            out[(slice(None),) + sa] += c.model()[(slice(None),) + sb]
        return out

    def __repr__(self) -> str:
        return f"Source(index={self.index}, peak={self.peak}, components={self.components})"


@dataclass
class PackedComponents:
    """Every component's parameters in flat buffers (the layout of ``_adam_cy``).

    Attributes
    ----------
    sed : numpy.ndarray
        (K, B) float64.
    morph : numpy.ndarray
        Flat float64; component k's morphology starts at ``comp[k, 4]``.
    comp : numpy.ndarray
        (K, 7) int64 rows ``y0, x0, h, w, offset, peak_y, peak_x`` (peak in local frame).
    bg_thresh : numpy.ndarray
        (K,) float64, -1 for components without a noise threshold.
    """

    sed: np.ndarray
    morph: np.ndarray
    comp: np.ndarray
    bg_thresh: np.ndarray

    @classmethod
    def from_components(
        cls, components: Sequence[Component], bands: int, bind: bool = True
    ) -> PackedComponents:
        """Pack the components; with ``bind`` their ``sed``/``morphology`` become views of
        the buffers."""
        K = len(components)
        # the tables from plain-int rows and the buffers in one copy each (a numpy call per
        # component held the GIL; a blend is packed a few times per deblend)
        rows = []
        off = 0
        for c in components:
            y0, x0, h, w = c.box
            py, px = c.local_peak
            rows.append((y0, x0, h, w, off, py, px))
            off += h * w
        comp = np.array(rows, dtype=np.int64).reshape(K, 7)
        sed = np.zeros((K, bands))
        if K:
            sed[...] = [c.sed for c in components]
        morph = np.zeros(off)
        if off:
            np.concatenate([np.ravel(c.morphology) for c in components], out=morph)
        thresh = np.array([-1.0 if c.bg_thresh is None else c.bg_thresh for c in components])
        packed = cls(sed, morph, comp, thresh.reshape(K))
        if bind:
            packed.bind(components)
        return packed

    def morph_view(self, k: int) -> np.ndarray:
        """Component k's morphology as an (h, w) view."""
        _, _, h, w, off, _, _ = self.comp[k]
        return self.morph[off : off + h * w].reshape(h, w)

    def morph_view_of(self, flat: np.ndarray, k: int) -> np.ndarray:
        """Component k's (h, w) view of another buffer in the morphology layout."""
        _, _, h, w, off, _, _ = self.comp[k]
        return flat[off : off + h * w].reshape(h, w)

    def bind(self, components: Sequence[Component]) -> None:
        """Point every component's ``sed`` and ``morphology`` at the packed buffers."""
        morph = self.morph
        # the rows as Python ints once (a numpy scalar per value held the GIL); like the
        # indexing it replaces, a shorter list binds the first rows
        for c, sed, (y0, x0, h, w, off, _, _) in zip(
            components, self.sed, self.comp.tolist(), strict=False
        ):
            c.sed = sed
            c.morphology = morph[off : off + h * w].reshape(h, w)
            c.box = (y0, x0, h, w)

    def morph_sums(self) -> np.ndarray:
        """(K,) sum of each component's morphology."""
        sizes = self.comp[:, 2] * self.comp[:, 3]
        sums = np.zeros(len(sizes))
        nonempty = sizes > 0
        if nonempty.any():
            sums[nonempty] = np.add.reduceat(self.morph, self.comp[nonempty, 4])
        return sums


def _is_pair(v: object) -> bool:
    return type(v) is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int


def _geometry_is_plain(sources: list, B: int, H: int, W: int) -> bool:
    """True when every source and component passes :meth:`Blend.check_geometry` as the
    package makes them (tuples of Python ints, float64 arrays), by plain comparisons (the
    checks with their conversions held the GIL for a few percent of a small blend's
    deblend); False sends the blend to the checks that name what is wrong."""
    for src in sources:
        if type(src) is not Source or not _is_pair(src.peak):
            return False
        if not (0 <= src.peak[0] < H and 0 <= src.peak[1] < W):
            return False
        for c in src.components:
            box, sed, morph = c.box, c.sed, c.morphology
            if type(c) is not Component or not _is_pair(c.peak) or type(box) is not tuple:
                return False
            if len(box) != 4 or not all(type(v) is int for v in box):
                return False
            (y0, x0, h, w), (py, px) = box, c.peak
            if not (0 <= y0 <= py < y0 + h <= H and 0 <= x0 <= px < x0 + w <= W):
                return False
            if type(sed) is not np.ndarray or type(morph) is not np.ndarray:
                return False
            if sed.shape != (B,) or morph.shape != (h, w):
                return False
    return True


class Blend:
    """Sources fitted jointly to one :class:`~cdeblend.observation.Observation`.

    Parameters
    ----------
    observation : Observation
        The data of the blend (its frame is the blend's frame).
    sources : list of Source
        In peak order.
    """

    def __init__(self, observation, sources: list[Source]) -> None:
        self.observation = observation
        self.sources = list(sources)
        self._packed: PackedComponents | None = None
        self._model: np.ndarray | None = None
        self._grad: np.ndarray | None = None
        self.check_geometry()

    # -- structure
    @property
    def components(self) -> list[Component]:
        """All components, sources in order, components in order."""
        return [c for s in self.sources for c in s.components]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, H, W) of the blend's frame."""
        return tuple(self.observation.shape)

    @property
    def box(self) -> Box:
        """The blend's frame as a box."""
        _, H, W = self.shape
        return (0, 0, H, W)

    def check_geometry(self) -> None:
        """Raise ``ValueError`` unless every source's peak and every component's box lie in
        the blend's frame, with one SED value per band and a morphology of its box's shape.

        The kernels that render, fit and convolve the model write at these boxes without
        bounds checks; this runs when the blend is made and whenever it is (re)packed.
        """
        B, H, W = self.shape
        if _geometry_is_plain(self.sources, B, H, W):
            return
        frame = (0, 0, H, W)
        for i, src in enumerate(self.sources):
            if not isinstance(src, Source):
                raise TypeError(f"sources[{i}] must be a Source, got {type(src).__name__}")
            check_peak_in_box(src.peak, frame, f"sources[{i}].peak", "the blend's frame")
            for k, c in enumerate(src.components):
                name = f"sources[{i}].components[{k}]"
                if not isinstance(c, Component):
                    raise TypeError(f"{name} must be a Component, got {type(c).__name__}")
                box = as_box(c.box, f"{name}.box")
                check_inside(box, frame, f"{name}.box", "the blend's frame")
                check_peak_in_box(as_point(c.peak, f"{name}.peak"), box, f"{name}.peak", "its box")
                if np.shape(c.sed) != (B,):
                    raise ValueError(
                        f"{name}.sed has shape {np.shape(c.sed)}, the blend has {B} bands"
                    )
                if np.shape(c.morphology) != box[2:]:
                    raise ValueError(
                        f"{name}.morphology has shape {np.shape(c.morphology)}, "
                        f"its box needs {box[2:]}"
                    )

    def pack(self) -> PackedComponents:
        """(Re)pack all components into flat buffers and bind them (see PackedComponents)."""
        self.check_geometry()
        self._packed = PackedComponents.from_components(self.components, self.shape[0])
        return self._packed

    def adopt(self, packed: PackedComponents) -> None:
        """Make ``packed`` (one row per component, in order) the blend's packed parameters
        and point the components' ``sed`` / ``morphology`` / ``box`` at its buffers (the
        fit's parameters become the blend's)."""
        components = self.components
        if len(packed.comp) != len(components):
            raise ValueError(
                f"packed holds {len(packed.comp)} components, the blend has {len(components)}"
            )
        packed.bind(components)
        self._packed = packed

    @property
    def packed(self) -> PackedComponents:
        """The packed parameters, packing on first use."""
        if self._packed is None or len(self._packed.comp) != len(self.components):
            self.pack()
        return self._packed

    # -- model, loss, gradients
    def model(self, out: np.ndarray | None = None) -> np.ndarray:
        """Model-space image of the whole blend, (B, H, W) in the observation's dtype."""
        p = self.packed
        if out is None:
            out = np.empty(self.shape, dtype=self.observation.dtype)
        _adam_cy.render(p.sed, p.morph, p.comp, out)
        return out

    def loss(self) -> float:
        """``0.5 * sum(weights * (images - conv(model))**2)``."""
        return float(self.observation.loss(self.model()))

    def loss_and_gradients(self) -> tuple[float, np.ndarray, np.ndarray]:
        """Loss and its gradients w.r.t. every SED and morphology.

        One forward and one adjoint convolution per band for the whole blend, whatever the
        number of components; the per-component reductions are done in Cython.

        Returns
        -------
        loss : float
        grad_sed : numpy.ndarray
            (K, B), components in the order of :attr:`components`.
        grad_morph : numpy.ndarray
            Flat, in the packed layout (``packed.comp[k, 4]`` is component k's offset).
        """
        p = self.packed
        model = self.model()
        grad = np.empty_like(model)
        loss = float(self.observation.loss_and_gradient(model, grad))
        grad_sed = np.zeros_like(p.sed)
        grad_morph = np.zeros_like(p.morph)
        _adam_cy.component_gradients(grad, p.sed, p.morph, p.comp, grad_sed, grad_morph)
        return loss, grad_sed, grad_morph

    def source_model(self, i: int, convolved: bool = True) -> tuple[np.ndarray, Box]:
        """Model of source ``i`` on its box, optionally convolved to the observed PSFs.

        Returns the (B, h, w) image and its box; the convolved model lives on the source's
        box grown by the PSF half-size and clipped to the blend (as in
        :meth:`convolved_sources`).
        """
        src = self.sources[i]
        B = self.shape[0]
        if src.is_null:
            return np.zeros((B, 0, 0), dtype=self.observation.dtype), (*src.peak, 0, 0)
        if not convolved:
            return src.model().astype(self.observation.dtype), src.box
        stack = self.convolved_sources([i])
        return stack.get(0), tuple(int(v) for v in stack.boxes[0])

    def convolved_sources(
        self, indices: Sequence[int] | None = None, packed: PackedComponents | None = None
    ) -> FlatStack:
        """The sources' models convolved to the observed PSFs, for re-apportioning.

        Each lies on its source's box grown by the kernel half-size and clipped to the
        blend (a null source: an empty box at its peak) and is exactly 0 wherever the true
        convolution is 0 (FFT round-off there would claim flux when apportioning; see
        :meth:`~cdeblend.convolution.Convolver.convolve_exact_into`). The models are
        rendered and convolved in a few Cython calls for all sources.

        Parameters
        ----------
        indices : sequence of int, optional
            Which sources, in this order (default: all).
        packed : PackedComponents, optional
            The components packed in order (default: packed here from their current
            arrays).

        Returns
        -------
        FlatStack
            One (B, h, w) row per source, in the observation's dtype.
        """
        obs = self.observation
        B = self.shape[0]
        idx = range(len(self.sources)) if indices is None else list(indices)
        # the components' current arrays (a caller may have replaced some), not re-bound
        if packed is None:
            self.check_geometry()
            packed = PackedComponents.from_components(self.components, B, bind=False)
        p = packed
        starts = np.cumsum([0] + [len(s.components) for s in self.sources])
        ranges = np.array([(starts[i], starts[i + 1]) for i in idx], dtype=np.int64)
        ranges = ranges.reshape(-1, 2)
        boxes = np.array([self.sources[i].box for i in idx], dtype=np.int64).reshape(-1, 4)
        sizes = B * boxes[:, 2] * boxes[:, 3]
        offsets = np.zeros(len(idx), dtype=np.int64)
        offsets[1:] = np.cumsum(sizes)[:-1]
        # the kernels write every value (np.empty: zero-filling hands the GIL over)
        models = np.empty(int(sizes.sum()))
        _adam_cy.render_sources(p.sed, p.morph, p.comp, ranges, boxes, models, offsets)
        grown = obs.convolver.grown_boxes(boxes)[1]
        empty = boxes[:, 2] * boxes[:, 3] == 0
        if empty.any():  # a null source: (y0, x0, 0, 0)
            grown[empty] = boxes[empty] * np.array([1, 1, 0, 0])
        gsizes = B * grown[:, 2] * grown[:, 3]
        goffsets = np.zeros(len(idx), dtype=np.int64)
        goffsets[1:] = np.cumsum(gsizes)[:-1]
        out = np.empty(int(gsizes.sum()), dtype=obs.dtype)
        obs.convolver.convolve_exact_into(models, boxes, offsets, out, goffsets)
        return FlatStack.of_clipped(out, grown, B)

    def __repr__(self) -> str:
        return f"Blend(shape={self.shape}, sources={len(self.sources)})"
