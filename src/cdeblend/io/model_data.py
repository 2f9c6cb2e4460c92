"""Persisted multi-band models: store, reload, rebuild and re-apportion without refitting.

A multi-band deblend leaves, for every parent, a list of sources; each source is a sum of
factorized components ``sed (B,) x morphology (h, w)`` on a box. That is all that is needed
to rebuild the model of any source in *model space* (the frame of the narrow model PSF) and,
with the difference kernels of an observation, to convolve it to the observed PSF of each
band and re-apportion an image among the children again, e.g. a re-processed coadd or a
band that was not fitted.

The classes here are plain data, so a model file can be read without the deblender;
:meth:`ModelData.rebuild` turns a stored blend back into the deblender's own
:class:`~cdeblend.Blend` on an observation, so that its models and re-apportioned children are
computed by exactly the code that computed them after the fit (bit-identical), and
:meth:`ModelData.restart` continues a fit from the stored parameters.

* :class:`ComponentData` - ``box (y0, x0, h, w)`` and ``peak (y, x)`` in the **full image
  frame**, ``sed (B,)`` and ``morphology (h, w)``.
* :class:`SourceData` - ``id``, ``peak_id`` (index of its peak in the parent's peak list)
  and its components.
* :class:`BlendData` - one parent: ``parent_id``, ``box (y0, x0, H, W)`` in the full image,
  ``bands``, ``sources``, the parent ``footprint`` (H, W) bool (or None = whole box) and fit
  metadata (``iterations``, ``loss``, ``converged``). An *isolated* blend (a single-peak
  parent that was not fitted, docs/spec/multi_band.md 5.2 ``persistIsolated``) has ``isolated =
  True`` and one
  source without components: its conserved image is the image inside the footprint. A
  ``fallback`` blend holds the fallback model of a fit that raised (:mod:`cdeblend.fallback`).
* :class:`ModelData` - ``bands``, the model PSF ``(hm, wm)`` and its ``model_psf_sigma``,
  the observed PSFs ``(B, hp, wp)`` and ``blends``: a dict ``parent_id -> BlendData``.

The file format is in :mod:`cdeblend.io.schema`, writing and reading in
:mod:`cdeblend.io.model_file`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..box import as_box, as_int, as_point, check_inside, overlap_slices
from ..deblend_config import CONSERVED_THRESH, check_conserved_thresh
from ..observation import MODEL_PSF_SIGMA
from .schema import SCHEMA_VERSION

__all__ = ["BlendData", "ComponentData", "ModelData", "SourceData"]


def _real_values(value: Any, name: str, ndim: int, finite: bool = True) -> np.ndarray:
    """``value`` as an array of real numbers (its own dtype) with ``ndim`` dimensions, with
    ``finite`` all finite."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if finite and not np.all(np.isfinite(arr)):
        raise ValueError(
            f"{name} has {int(np.count_nonzero(~np.isfinite(arr)))} NaN or infinite value(s)"
        )
    return arr


@dataclass(eq=False)
class ComponentData:
    """One factorized component ``sed x morphology``.

    Parameters
    ----------
    box : tuple of int
        ``(y0, x0, h, w)`` of the morphology in the full image frame.
    peak : tuple of int
        ``(y, x)`` in the full image frame.
    sed : numpy.ndarray
        (B,) spectrum: the component's flux per band in model space.
    morphology : numpy.ndarray
        (h, w) non-negative morphology.
    """

    box: tuple[int, int, int, int]
    peak: tuple[int, int]
    sed: np.ndarray
    morphology: np.ndarray

    def __post_init__(self) -> None:
        # plain data (what a deblender produced): only bounded integers and arrays of
        # numbers here; the reader of a model file and the rebuilt Blend check what their
        # kernels trust (peaks inside boxes, finite values)
        self.box = as_box(self.box, "box", allow_empty=True)
        self.peak = as_point(self.peak, "peak")
        self.sed = _real_values(self.sed, "sed", 1, finite=False)
        self.morphology = _real_values(self.morphology, "morphology", 2, finite=False)
        if self.morphology.shape != self.box[2:]:
            raise ValueError(
                f"morphology has shape {self.morphology.shape}, its box {self.box} needs "
                f"{self.box[2:]}"
            )

    def model(self) -> np.ndarray:
        """The (B, h, w) model ``sed[:, None, None] * morphology``."""
        return self.sed[:, None, None] * self.morphology[None]


@dataclass(eq=False)
class SourceData:
    """A source: its catalog id, the index of its peak in the parent, and its components."""

    id: int
    peak_id: int
    components: list[ComponentData] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.id = as_int(self.id, "id")
        self.peak_id = as_int(self.peak_id, "peak_id")
        self.components = list(self.components)
        for k, c in enumerate(self.components):
            if not isinstance(c, ComponentData):
                raise TypeError(
                    f"components[{k}] of source {self.id} must be a ComponentData, "
                    f"got {type(c).__name__}"
                )


@dataclass(eq=False)
class BlendData:
    """The stored model of one parent (blend).

    Parameters
    ----------
    parent_id : int
        Id of the parent in the catalog.
    box : tuple of int
        ``(y0, x0, H, W)`` of the blend in the full image.
    bands : tuple of str
        Band names (B).
    sources : list of SourceData
        In peak order.
    footprint : numpy.ndarray or None
        (H, W) bool parent footprint on ``box``; None means the whole box.
    iterations, loss, converged
        Fit metadata (-1, NaN, False when unknown).
    isolated : bool
        A parent kept as itself without a fit (one source, no components).
    fallback : bool
        The fit raised and the sources are its fallback model (a PSF per peak).
    """

    parent_id: int
    box: tuple[int, int, int, int]
    bands: tuple[str, ...]
    sources: list[SourceData] = field(default_factory=list)
    footprint: np.ndarray | None = None
    iterations: int = -1
    loss: float = float("nan")
    converged: bool = False
    isolated: bool = False
    fallback: bool = False

    def __post_init__(self) -> None:
        self.parent_id = as_int(self.parent_id, "parent_id")
        self.box = as_box(self.box, f"box of blend {self.parent_id}")
        self.bands = tuple(str(b) for b in self.bands)
        self.sources = list(self.sources)
        ids = set()
        for i, s in enumerate(self.sources):
            if not isinstance(s, SourceData):
                raise TypeError(
                    f"sources[{i}] of blend {self.parent_id} must be a SourceData, "
                    f"got {type(s).__name__}"
                )
            if s.id in ids:
                raise ValueError(f"blend {self.parent_id} has two sources with id {s.id}")
            ids.add(s.id)
            for k, c in enumerate(s.components):
                if c.sed.size != len(self.bands):
                    raise ValueError(
                        f"component {k} of source {s.id} in blend {self.parent_id} has "
                        f"{c.sed.size} SED values, the blend has {len(self.bands)} bands"
                    )
        if self.footprint is not None:
            self.footprint = np.asarray(self.footprint, dtype=bool)
            if self.footprint.shape != self.box[2:]:
                raise ValueError(
                    f"footprint has shape {self.footprint.shape}, the blend box {self.box} "
                    f"needs {self.box[2:]}"
                )

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the blend box."""
        return self.box[2], self.box[3]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat arrays of this blend's components (the FITS table layout).

        Returns
        -------
        dict
            ``source_index`` (K,) int64 (index of the component's source), ``boxes`` (K, 4)
            int64 in the full image frame, ``peaks`` (K, 2) int64, ``seds`` (K, B),
            ``morph_flat`` (all morphologies, C order), ``morph_offsets`` (K + 1,) int64.
        """
        comps = [(i, c) for i, s in enumerate(self.sources) for c in s.components]
        nb = len(self.bands)
        boxes = np.array([c.box for _, c in comps], dtype=np.int64).reshape(-1, 4)
        peaks = np.array([c.peak for _, c in comps], dtype=np.int64).reshape(-1, 2)
        src = np.array([i for i, _ in comps], dtype=np.int64)
        sed_dtype = np.result_type(*[c.sed for _, c in comps]) if comps else np.float32
        mor_dtype = np.result_type(*[c.morphology for _, c in comps]) if comps else np.float32
        seds = np.array([c.sed for _, c in comps], dtype=sed_dtype).reshape(-1, nb)
        sizes = boxes[:, 2] * boxes[:, 3]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        flat = (
            np.concatenate([c.morphology.astype(mor_dtype).ravel() for _, c in comps])
            if comps
            else np.zeros(0, dtype=mor_dtype)
        )
        return {
            "source_index": src,
            "boxes": boxes,
            "peaks": peaks,
            "seds": seds,
            "morph_flat": flat,
            "morph_offsets": offsets,
        }

    def models(self, dtype: type | np.dtype | None = None) -> np.ndarray:
        """Model-space models of the sources on the blend box, (N, B, H, W).

        Each source's model is ``sum_k sed_k x morph_k``; component pixels outside the blend
        box are dropped.
        """
        nb = len(self.bands)
        H, W = self.shape
        if dtype is None:
            arrs = [c.sed for s in self.sources for c in s.components]
            arrs += [c.morphology for s in self.sources for c in s.components]
            dtype = np.result_type(*arrs) if arrs else np.float64
        out = np.zeros((len(self.sources), nb, H, W), dtype=dtype)
        for i, src in enumerate(self.sources):
            for comp in src.components:
                _add_on_box(out[i], comp.model(), comp.box, self.box)
        return out

    def centroids(self) -> np.ndarray:
        """(N, 2) flux-weighted (y, x) centroid of each source's model in the full image frame.

        Computed from the components (sum over bands of the SED times the morphology's first
        moments); a unit-sum, centred PSF leaves a centroid unchanged. NaN for a source with
        no flux.
        """
        from .._catalog_cy import component_moments

        # one kernel call per component (summed in double, row by row) rather than a
        # handful of numpy calls: this runs in the catalog's worker threads
        out = []
        for src in self.sources:
            tot = sy = sx = 0.0
            for c in src.components:
                t, y, x = component_moments(
                    _as_kernel_array(c.sed), _as_kernel_array(c.morphology), c.box[0], c.box[1]
                )
                tot += t
                sy += y
                sx += x
            out.append((sy / tot, sx / tot) if tot != 0 else (np.nan, np.nan))
        return np.array(out, dtype=np.float64).reshape(-1, 2)


_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _as_kernel_array(a: Any) -> np.ndarray:
    """``a`` if a kernel takes it as is (float32 or float64, native, C-contiguous), else a
    float64 copy."""
    a = np.asarray(a)
    if a.dtype in _KERNEL_DTYPES and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, dtype=np.float64)


def _add_on_box(
    target: np.ndarray, values: np.ndarray, box: Sequence[int], frame: Sequence[int]
) -> None:
    """Add ``values`` (..., h, w) on ``box`` into ``target`` (..., H, W) on ``frame``.

    Both boxes are in the same (full image) frame; the part outside ``frame`` is dropped.
    """
    sa, sb = overlap_slices(tuple(int(v) for v in frame), tuple(int(v) for v in box))
    target[(..., *sa)] += values[(..., *sb)]


@dataclass(eq=False)
class ModelData:
    """All stored blends of a catalog plus the PSFs needed to rebuild them.

    Parameters
    ----------
    bands : tuple of str
        Band names (B).
    model_psf : numpy.ndarray
        (hm, wm) model-frame PSF.
    psfs : numpy.ndarray
        (B, hp, wp) observed PSFs the models were fitted with.
    blends : dict
        ``parent_id -> BlendData``.
    model_psf_sigma : float or None
        Sigma of the integrated Gaussian model PSF (None: PSF-matched data); with ``psfs``
        it rebuilds the same difference kernels as the fit used.
    schema_version : int
        Version of the persisted layout.
    conserved_thresh : float
        The children's footprint threshold the fit's children were made with
        (``DeblendConfig.conserved_thresh``); :meth:`rebuild` and :meth:`conserved_images`
        re-apportion with it. A file written before it was stored reads as 0, the rule
        those files were made with (every pixel a model reaches).
    """

    bands: tuple[str, ...]
    model_psf: np.ndarray
    psfs: np.ndarray
    blends: dict[int, BlendData] = field(default_factory=dict)
    model_psf_sigma: float | None = MODEL_PSF_SIGMA
    schema_version: int = SCHEMA_VERSION
    conserved_thresh: float = CONSERVED_THRESH

    def __post_init__(self) -> None:
        self.bands = tuple(str(b) for b in self.bands)
        self.model_psf = np.asarray(self.model_psf)
        if self.model_psf.ndim == 3 and self.model_psf.shape[0] == 1:
            self.model_psf = self.model_psf[0]
        if self.model_psf.ndim != 2:
            raise ValueError(f"model_psf must be (hm, wm), got shape {self.model_psf.shape}")
        self.psfs = np.asarray(self.psfs)
        if self.psfs.ndim != 3 or self.psfs.shape[0] != len(self.bands):
            raise ValueError(
                f"psfs must be (B, hp, wp) with B = {len(self.bands)} bands, got "
                f"shape {self.psfs.shape}"
            )
        _real_values(self.model_psf, "model_psf", 2)
        _real_values(self.psfs, "psfs", 3)
        if self.model_psf_sigma is not None:
            self.model_psf_sigma = float(self.model_psf_sigma)
            if not (np.isfinite(self.model_psf_sigma) and self.model_psf_sigma > 0):
                raise ValueError(f"model_psf_sigma must be > 0 or None, got {self.model_psf_sigma}")
        self.conserved_thresh = check_conserved_thresh(self.conserved_thresh)
        for pid, bd in self.blends.items():
            if not isinstance(bd, BlendData):
                raise TypeError(f"blends[{pid!r}] must be a BlendData, got {type(bd).__name__}")
            # a blend filed under another parent's id would be lost (or found as another)
            if bd.parent_id != pid:
                raise ValueError(f"blends[{pid!r}] holds the blend of parent {bd.parent_id}")
            if bd.bands != self.bands:
                raise ValueError(f"blend {pid} has bands {bd.bands}, the model data {self.bands}")

    def _blend(self, parent_id: int) -> BlendData:
        try:
            return self.blends[parent_id]
        except KeyError:
            raise KeyError(f"no stored model for parent {parent_id!r}") from None

    @staticmethod
    def from_blend(
        result: Any,
        parent_id: int,
        origin: Sequence[int],
        shape: Sequence[int] | None = None,
        bands: Sequence[str] | None = None,
        footprint: np.ndarray | None = None,
        source_ids: Sequence[int] | None = None,
    ) -> BlendData:
        """Build a :class:`BlendData` from a multi-band deblend result.

        Parameters
        ----------
        result : DeblendResult
            ``result.blend.sources[i].components[j]`` with ``.sed``, ``.morphology``,
            ``.box`` (y0, x0, h, w) and ``.peak`` (y, x) in the blend's frame;
            ``result.iterations``, ``result.loss``, ``result.converged``.
        parent_id : int
            The parent's id.
        origin : (int, int)
            (y0, x0) of the blend in the full image: added to every box and peak.
        shape : (int, int), optional
            (H, W) of the blend; read off ``footprint`` or the result when not given.
        bands : sequence of str, optional
            Band names; default ``result.blend.observation.bands``.
        footprint : numpy.ndarray, optional
            (H, W) bool parent footprint on the blend box.
        source_ids : sequence of int, optional
            Catalog ids of the sources (default 0..N-1).
        """
        blend = result.blend
        oy, ox = int(origin[0]), int(origin[1])
        if shape is None:
            shape = (
                tuple(np.shape(footprint))
                if footprint is not None
                else tuple(blend.observation.shape[1:])
            )
        sources = []
        for i, src in enumerate(blend.sources):
            comps = []
            for c in src.components:
                y0, x0, h, w = (int(v) for v in c.box)
                comps.append(
                    ComponentData(
                        (y0 + oy, x0 + ox, h, w),
                        (int(c.peak[0]) + oy, int(c.peak[1]) + ox),
                        np.array(c.sed, copy=True),
                        np.array(c.morphology, copy=True),
                    )
                )
            peak_id = int(getattr(src, "index", i))
            sid = i if source_ids is None else int(source_ids[i])
            sources.append(SourceData(sid, peak_id, comps))
        if bands is None:
            bands = blend.observation.bands
        return BlendData(
            parent_id=int(parent_id),
            box=(oy, ox, int(shape[0]), int(shape[1])),
            bands=tuple(bands),
            sources=sources,
            footprint=footprint,
            iterations=int(getattr(result, "iterations", -1)),
            loss=float(getattr(result, "loss", np.nan)),
            converged=bool(getattr(result, "converged", False)),
            fallback=bool(getattr(result, "fallback", False)),
        )

    def models(self, parent_id: int) -> np.ndarray:
        """Model-space models of a parent's sources, (N, B, H, W) on the blend box."""
        return self._blend(parent_id).models()

    def observation(self, images: Any, variance: Any = None, weights: Any = None) -> Any:
        """An :class:`~cdeblend.Observation` of full images with the stored PSFs.

        Pixels of zero weight receive no flux. ``variance`` defaults to ones; give the images'
        variance to re-apportion exactly as the fit did: the children's footprint
        (``DeblendConfig.conserved_thresh``) is measured in noise units, and with unit
        variance it holds nearly every pixel a model reaches.
        """
        from ..observation import Observation

        images = np.asarray(images)
        if images.ndim == 2:
            images = images[None]
        if variance is None:
            variance = np.ones(images.shape, dtype=images.dtype)
        return Observation(
            images,
            variance,
            self.psfs,
            bands=self.bands,
            weights=weights,
            model_psf_sigma=self.model_psf_sigma,
        )

    def rebuild(self, observation: Any, parent_id: int, config: Any = None) -> Any:
        """Rebuild one parent's fitted blend on an observation, without refitting.

        Parameters
        ----------
        observation : Observation or numpy.ndarray
            The full image the models were fitted on (or one taken later, e.g. a re-processed
            coadd), in the same pixel frame; an array is wrapped by :meth:`observation`.
        parent_id : int
            Which blend.
        config : DeblendConfig, optional
            Gives the components their noise threshold (``bg_thresh``), needed only to
            continue the fit (:meth:`restart`), and the children's footprint threshold
            (``conserved_thresh``; default the one stored with the models).

        Returns
        -------
        DeblendResult
            ``models()``, ``conserved_images()``, ``fluxes``, ... exactly as the in-memory
            result of the fit; ``loss``, ``iterations`` and ``converged`` are the stored ones.
        """
        from ..blend import Blend, Component, Source
        from ..deblend_result import DeblendResult
        from ..observation import Observation

        bd = self._blend(parent_id)
        if bd.isolated:
            raise ValueError(f"parent {parent_id} was not fitted (isolated): it has no model")
        if not isinstance(observation, Observation):
            observation = self.observation(observation)
        if observation.bands != self.bands:
            raise ValueError(
                f"the observation has bands {observation.bands}, the models {self.bands}"
            )
        # the fit renders every component into the blend box: none may stick out of it
        for s in bd.sources:
            for k, c in enumerate(s.components):
                check_inside(
                    c.box,
                    bd.box,
                    f"component {k} of source {s.id}: box",
                    f"the box of blend {parent_id}",
                )
        obs = observation.cutout(bd.box)
        if bd.footprint is not None:
            obs.weights *= bd.footprint  # the fit saw only the parent's footprint
        oy, ox = bd.box[:2]
        bg_thresh = None if config is None else config.bg_thresh
        sources = []
        for i, s in enumerate(bd.sources):
            comps = [
                Component(
                    c.sed,
                    c.morphology,
                    (c.box[0] - oy, c.box[1] - ox, *c.box[2:]),
                    (c.peak[0] - oy, c.peak[1] - ox),
                    bg_thresh=bg_thresh,
                )
                for c in s.components
            ]
            peak = comps[0].peak if comps else (bd.box[2] // 2, bd.box[3] // 2)
            sources.append(Source(comps, peak, index=s.peak_id if s.peak_id >= 0 else i))
        blend = Blend(obs, sources)
        fit = (bd.loss, np.zeros(0), bd.iterations, bd.converged, np.full(len(sources), np.nan))
        thresh = self.conserved_thresh if config is None else config.conserved_thresh
        return DeblendResult(blend, *fit, conserved_thresh=thresh)

    def restart(self, observation: Any, parent_id: int, config: Any = None) -> Any:
        """Continue the fit of a stored blend from its stored parameters (fresh ADAM state).

        Parameters
        ----------
        observation : Observation or numpy.ndarray
            The full image (as for :meth:`rebuild`); it should carry real variances.
        parent_id : int
            Which blend.
        config : DeblendConfig, optional
            Fit settings, e.g. ``DeblendConfig(max_iter=100, e_rel=1e-4, min_iter=10)``.

        Returns
        -------
        DeblendResult
            The refitted blend; ``loss_history`` covers the new iterations only.
        """
        from ..deblend_config import DeblendConfig
        from ..deblend_result import DeblendResult
        from ..fit import fit_blend

        if config is None:
            config = DeblendConfig(conserved_thresh=self.conserved_thresh)
        result = self.rebuild(observation, parent_id, config)
        fit = fit_blend(result.blend, config)  # loss, history, iterations, converged
        thresh = config.conserved_thresh
        return DeblendResult(result.blend, *fit, result.snr, conserved_thresh=thresh)

    def conserved_images(self, observation: Any, parent_id: int) -> np.ndarray:
        """Re-apportion an observed image among a parent's stored sources, without refitting.

        Each source's model is convolved to every band's PSF, clipped at 0, and the image
        inside the parent footprint (where the weights are positive) is split in proportion on
        the children's footprint (measured with the observation's variance), as the
        deblender's own :meth:`~cdeblend.DeblendResult.conserved_images`: exactly so for an
        :class:`~cdeblend.Observation` with the variance the fit saw.

        Parameters
        ----------
        observation : Observation or numpy.ndarray
            The full image, in the frame the models were stored in. A plain array gets unit
            variance (:meth:`observation`), and with it a footprint of nearly every pixel a
            model reaches.
        parent_id : int
            Which blend.

        Returns
        -------
        numpy.ndarray
            (N, B, H, W) conserved images on the blend box.
        """
        bd = self._blend(parent_id)
        if not bd.isolated:
            return self.rebuild(observation, parent_id).conserved_images()
        # not fitted: the one source is the parent itself
        images = observation if isinstance(observation, np.ndarray) else observation.images
        images = np.asarray(images)
        images = images[None] if images.ndim == 2 else images
        y0, x0, H, W = bd.box
        if y0 < 0 or x0 < 0 or y0 + H > images.shape[1] or x0 + W > images.shape[2]:
            raise ValueError(
                f"blend box {bd.box} of parent {parent_id} lies outside the observation's "
                f"images of shape {images.shape[1:]}"
            )
        cut = images[:, y0 : y0 + H, x0 : x0 + W]
        mask = np.ones((H, W), bool) if bd.footprint is None else bd.footprint
        weights = getattr(observation, "weights", None)
        if weights is not None:
            mask = mask & np.any(np.asarray(weights)[:, y0 : y0 + H, x0 : x0 + W] > 0, axis=0)
        return np.where(mask, cut, 0)[None]
