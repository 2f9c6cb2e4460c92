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
  parent that was not fitted, spec 5.2 ``persistIsolated``) has ``isolated = True`` and one
  source without components: its conserved image is the image inside the footprint. A
  ``fallback`` blend holds the fallback model of a fit that raised (:mod:`cdeblend.fallback`).
* :class:`ModelData` - ``bands``, the model PSF ``(hm, wm)`` and its ``model_psf_sigma``,
  the observed PSFs ``(B, hp, wp)`` and ``blends``: a dict ``parent_id -> BlendData``.

File layout (:func:`save_models` / :func:`load_models`, one FITS file, needs astropy:
``pip install cdeblend[io]``). All arrays are written with their own dtype, so a round trip is
bit-identical; integers are int64.

=====  ============  =================================================================
HDU    EXTNAME       content
=====  ============  =================================================================
0      PRIMARY       no data; header ``SCHEMA = 'cdeblend.model_data'``, ``SCHVER``
                     (int, :data:`SCHEMA_VERSION`), ``NBANDS``, ``BAND1..BANDn`` (names),
                     ``SEDTYPE`` / ``MORTYPE`` (dtype names of SEDs and morphologies),
                     ``MPSFSIG`` (model PSF sigma; absent for PSF-matched data),
                     ``NBLENDS``, ``NSOURCES``, ``NCOMPS`` (row counts, checked on read)
1      BLENDS        BinTable, one row per blend: ``PARENT_ID``, ``Y0``, ``X0``,
                     ``HEIGHT``, ``WIDTH``, ``SRC_START``, ``N_SOURCES`` (its rows in
                     SOURCES), ``FP_OFFSET`` (start of its footprint in FOOTPRINTS, -1 if
                     none), ``ITERATIONS``, ``LOSS``, ``CONVERGED``, ``ISOLATED``,
                     ``FALLBACK`` (optional: files without it read as False)
2      SOURCES       BinTable: ``ID``, ``PEAK_ID``, ``COMP_START``, ``N_COMPS``
3      COMPONENTS    BinTable: ``Y0``, ``X0``, ``HEIGHT``, ``WIDTH``, ``PEAK_Y``,
                     ``PEAK_X``, ``SED`` (B-vector), ``MORPH_OFFSET`` (start in MORPHS)
4      MORPHS        1-D image: every morphology, C order, concatenated
5      FOOTPRINTS    1-D uint8 image: every stored footprint (H*W values each)
6      MODEL_PSF     2-D image (hm, wm)
7      PSFS          3-D image (B, hp, wp)
=====  ============  =================================================================

Sources of a blend are consecutive rows of SOURCES, components of a source consecutive rows
of COMPONENTS, both in the in-memory order. A reader refuses (``ValueError``) a file that is
not FITS, a FITS file without the schema keywords, a newer schema version, a missing HDU or
row/size counts that do not add up (a truncated file). A model file may come from anywhere,
so the reader also refuses, naming the row or keyword, anything the kernels would trust:
a path that is not a regular file (``/dev/zero``, a pipe), HDUs declaring more data than the
file holds, box sides < 1 or values beyond :data:`~cdeblend._geometry.MAX_COORD`, blend
boxes of more than :data:`MAX_BLEND_PIXELS` pixels, a peak outside its component's box, NaN
or infinite SEDs, morphologies or PSFs, data whose dtype is not the one ``SEDTYPE`` /
``MORTYPE`` declare (nothing is cast), offsets that are not the running sums above, and a
parent id that appears twice. A component may stick out of its blend box (its model is
clipped there); :meth:`ModelData.rebuild` refuses to fit such a blend.
"""

from __future__ import annotations

import io
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._geometry import MAX_COORD, as_box, as_int, as_point, check_inside

__all__ = [
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "BlendData",
    "ComponentData",
    "ModelData",
    "SourceData",
    "load_models",
    "save_models",
]

#: Value of the ``SCHEMA`` keyword in the primary header of a model file.
SCHEMA_NAME = "cdeblend.model_data"
#: Newest schema version this module writes and reads.
SCHEMA_VERSION = 1

_IO_HINT = "saving and loading models needs astropy: pip install cdeblend[io]"


def _import_fits() -> Any:
    try:
        from astropy.io import fits
    except ImportError as exc:  # pragma: no cover - exercised only without astropy
        raise ImportError(_IO_HINT) from exc
    return fits


def _real_values(value: Any, name: str, ndim: int, finite: bool = True) -> np.ndarray:
    """``value`` as an array of real numbers (its own dtype) with ``ndim`` dimensions, with
    ``finite`` all finite."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if finite and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} has {int(np.count_nonzero(~np.isfinite(arr)))} NaN or "
                         "infinite value(s)")
    return arr


# ------------------------------------------------------------------------------------------
# data classes
# ------------------------------------------------------------------------------------------


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
                raise TypeError(f"components[{k}] of source {self.id} must be a ComponentData, "
                                f"got {type(c).__name__}")


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
                raise TypeError(f"sources[{i}] of blend {self.parent_id} must be a SourceData, "
                                f"got {type(s).__name__}")
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
        from ._symmetric_cy import component_moments

        # one kernel call per component (summed in double, row by row) rather than a
        # handful of numpy calls: this runs in the catalog's worker threads
        out = []
        for src in self.sources:
            tot = sy = sx = 0.0
            for c in src.components:
                t, y, x = component_moments(_as_kernel_array(c.sed),
                                            _as_kernel_array(c.morphology), c.box[0], c.box[1])
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
    y0, x0, h, w = (int(v) for v in box)
    fy, fx, fh, fw = (int(v) for v in frame)
    ya, yb = max(y0, fy), min(y0 + h, fy + fh)
    xa, xb = max(x0, fx), min(x0 + w, fx + fw)
    if ya >= yb or xa >= xb:
        return
    target[..., ya - fy : yb - fy, xa - fx : xb - fx] += values[
        ..., ya - y0 : yb - y0, xa - x0 : xb - x0
    ]


# ------------------------------------------------------------------------------------------
# ModelData
# ------------------------------------------------------------------------------------------


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
    """

    bands: tuple[str, ...]
    model_psf: np.ndarray
    psfs: np.ndarray
    blends: dict[int, BlendData] = field(default_factory=dict)
    model_psf_sigma: float | None = 0.8
    schema_version: int = SCHEMA_VERSION

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
                raise ValueError(f"model_psf_sigma must be > 0 or None, got "
                                 f"{self.model_psf_sigma}")
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
                tuple(np.shape(footprint)) if footprint is not None
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

        ``variance`` defaults to ones (re-apportioning needs no noise model) and pixels of zero
        weight receive no flux.
        """
        from .observation import Observation

        images = np.asarray(images)
        if images.ndim == 2:
            images = images[None]
        if variance is None:
            variance = np.ones(images.shape, dtype=images.dtype)
        return Observation(images, variance, self.psfs, bands=self.bands, weights=weights,
                           model_psf_sigma=self.model_psf_sigma)

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
            continue the fit (:meth:`restart`).

        Returns
        -------
        DeblendResult
            ``models()``, ``conserved_images()``, ``fluxes``, ... exactly as the in-memory
            result of the fit; ``loss``, ``iterations`` and ``converged`` are the stored ones.
        """
        from .blend import Blend, Component, Source
        from .deblender import DeblendResult
        from .observation import Observation

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
                check_inside(c.box, bd.box, f"component {k} of source {s.id}: box",
                             f"the box of blend {parent_id}")
        obs = observation.cutout(bd.box)
        if bd.footprint is not None:
            obs.weights *= bd.footprint  # the fit saw only the parent's footprint
        oy, ox = bd.box[:2]
        bg_thresh = None if config is None else config.bg_thresh
        sources = []
        for i, s in enumerate(bd.sources):
            comps = [
                Component(c.sed, c.morphology, (c.box[0] - oy, c.box[1] - ox, *c.box[2:]),
                          (c.peak[0] - oy, c.peak[1] - ox), bg_thresh=bg_thresh)
                for c in s.components
            ]
            peak = comps[0].peak if comps else (bd.box[2] // 2, bd.box[3] // 2)
            sources.append(Source(comps, peak, index=s.peak_id if s.peak_id >= 0 else i))
        blend = Blend(obs, sources)
        return DeblendResult(blend, bd.loss, np.zeros(0), bd.iterations, bd.converged,
                             np.full(len(sources), np.nan))

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
        from .deblender import DeblendConfig, DeblendResult, fit_blend

        config = DeblendConfig() if config is None else config
        result = self.rebuild(observation, parent_id, config)
        loss, history, iterations, converged = fit_blend(result.blend, config)
        return DeblendResult(result.blend, loss, history, iterations, converged, result.snr)

    def conserved_images(self, observation: Any, parent_id: int) -> np.ndarray:
        """Re-apportion an observed image among a parent's stored sources, without refitting.

        Each source's model is convolved to every band's PSF, clipped at 0, and the image
        inside the parent footprint (where the weights are positive) is split in proportion,
        exactly as the deblender's own :meth:`~cdeblend.DeblendResult.conserved_images`.

        Parameters
        ----------
        observation : Observation or numpy.ndarray
            The full image, in the frame the models were stored in.
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


# ------------------------------------------------------------------------------------------
# FITS persistence
# ------------------------------------------------------------------------------------------


def _native(a: np.ndarray, dtype: np.dtype | str | None = None) -> np.ndarray:
    a = np.asarray(a)
    dt = np.dtype(dtype) if dtype is not None else a.dtype
    return np.ascontiguousarray(a, dtype=dt.newbyteorder("="))


def save_models(path: str | Path, model_data: ModelData, overwrite: bool = True) -> None:
    """Write ``model_data`` to one FITS file (layout in the module docstring).

    Parameters
    ----------
    path : str or Path
        Output file.
    model_data : ModelData
        What to write. SEDs share one dtype and morphologies share one dtype (the common
        result type if they differ).
    overwrite : bool
        Replace an existing file.
    """
    fits = _import_fits()
    md = model_data
    nb = len(md.bands)
    blends = list(md.blends.values())
    comp_arrays = [b.to_arrays() for b in blends]
    for b in blends:
        if len(b.bands) != nb or b.bands != md.bands:
            raise ValueError(f"blend {b.parent_id} has bands {b.bands}, the model data {md.bands}")

    sed_list = [a["seds"] for a in comp_arrays if len(a["seds"])]
    mor_list = [a["morph_flat"] for a in comp_arrays if len(a["morph_flat"])]
    sed_dtype = np.result_type(*sed_list) if sed_list else np.dtype(np.float32)
    mor_dtype = np.result_type(*mor_list) if mor_list else np.dtype(np.float32)
    for dt, what in ((sed_dtype, "SEDs"), (mor_dtype, "morphologies")):
        if dt.kind != "f":
            raise TypeError(f"{what} must be floating point, got {dt}")

    # blends and sources tables
    b_rows = {k: [] for k in ("PARENT_ID", "Y0", "X0", "HEIGHT", "WIDTH", "SRC_START",
                              "N_SOURCES", "FP_OFFSET", "ITERATIONS", "LOSS", "CONVERGED",
                              "ISOLATED", "FALLBACK")}
    s_rows = {k: [] for k in ("ID", "PEAK_ID", "COMP_START", "N_COMPS")}
    c_boxes, c_peaks, c_seds, c_moff, morphs, footprints = [], [], [], [], [], []
    n_src = n_comp = n_morph = n_fp = 0
    for b, arr in zip(blends, comp_arrays, strict=True):
        b_rows["PARENT_ID"].append(b.parent_id)
        for k, v in zip(("Y0", "X0", "HEIGHT", "WIDTH"), b.box, strict=True):
            b_rows[k].append(v)
        b_rows["SRC_START"].append(n_src)
        b_rows["N_SOURCES"].append(len(b.sources))
        if b.footprint is None:
            b_rows["FP_OFFSET"].append(-1)
        else:
            b_rows["FP_OFFSET"].append(n_fp)
            footprints.append(b.footprint.astype(np.uint8).ravel())
            n_fp += b.footprint.size
        b_rows["ITERATIONS"].append(b.iterations)
        b_rows["LOSS"].append(b.loss)
        b_rows["CONVERGED"].append(b.converged)
        b_rows["ISOLATED"].append(b.isolated)
        b_rows["FALLBACK"].append(b.fallback)
        for s in b.sources:
            s_rows["ID"].append(s.id)
            s_rows["PEAK_ID"].append(s.peak_id)
            s_rows["COMP_START"].append(n_comp)
            s_rows["N_COMPS"].append(len(s.components))
            n_comp += len(s.components)
        n_src += len(b.sources)
        c_boxes.append(arr["boxes"])
        c_peaks.append(arr["peaks"])
        c_seds.append(arr["seds"].astype(sed_dtype))
        c_moff.append(arr["morph_offsets"][:-1] + n_morph)
        morphs.append(arr["morph_flat"].astype(mor_dtype))
        n_morph += arr["morph_flat"].size

    i64 = np.int64
    boxes = np.concatenate(c_boxes).astype(i64) if c_boxes else np.zeros((0, 4), i64)
    peaks = np.concatenate(c_peaks).astype(i64) if c_peaks else np.zeros((0, 2), i64)
    seds = np.concatenate(c_seds) if c_seds else np.zeros((0, nb), sed_dtype)
    moff = np.concatenate(c_moff).astype(i64) if c_moff else np.zeros(0, i64)
    morph_flat = np.concatenate(morphs) if morphs else np.zeros(0, mor_dtype)
    fp_flat = np.concatenate(footprints) if footprints else np.zeros(0, np.uint8)

    def icol(name: str, values: Any) -> Any:
        return fits.Column(name=name, format="K", array=np.asarray(values, dtype=i64))

    sed_fmt = f"{nb}{'E' if sed_dtype == np.float32 else 'D'}"
    if sed_dtype not in (np.float32, np.float64):
        raise TypeError(f"SEDs must be float32 or float64, got {sed_dtype}")
    if mor_dtype not in (np.float32, np.float64):
        raise TypeError(f"morphologies must be float32 or float64, got {mor_dtype}")

    primary = fits.PrimaryHDU()
    h = primary.header
    h["SCHEMA"] = (SCHEMA_NAME, "cdeblend persisted multi-band models")
    h["SCHVER"] = (SCHEMA_VERSION, "schema version")
    h["NBANDS"] = nb
    for i, band in enumerate(md.bands):
        h[f"BAND{i + 1}"] = band
    if md.model_psf_sigma is not None:
        h["MPSFSIG"] = (md.model_psf_sigma, "sigma of the Gaussian model PSF (pixels)")
    h["SEDTYPE"] = sed_dtype.name
    h["MORTYPE"] = mor_dtype.name
    h["NBLENDS"] = len(blends)
    h["NSOURCES"] = n_src
    h["NCOMPS"] = n_comp

    bcols = [icol(k, b_rows[k]) for k in ("PARENT_ID", "Y0", "X0", "HEIGHT", "WIDTH",
                                          "SRC_START", "N_SOURCES", "FP_OFFSET", "ITERATIONS")]
    bcols.append(fits.Column(name="LOSS", format="D", array=np.asarray(b_rows["LOSS"], float)))
    for name in ("CONVERGED", "ISOLATED", "FALLBACK"):
        bcols.append(fits.Column(name=name, format="L", array=np.asarray(b_rows[name], bool)))
    scols = [icol(k, s_rows[k]) for k in ("ID", "PEAK_ID", "COMP_START", "N_COMPS")]
    ccols = [
        icol("Y0", boxes[:, 0]), icol("X0", boxes[:, 1]),
        icol("HEIGHT", boxes[:, 2]), icol("WIDTH", boxes[:, 3]),
        icol("PEAK_Y", peaks[:, 0]), icol("PEAK_X", peaks[:, 1]),
        fits.Column(name="SED", format=sed_fmt, array=seds),
        icol("MORPH_OFFSET", moff),
    ]
    hdus = fits.HDUList([
        primary,
        fits.BinTableHDU.from_columns(bcols, name="BLENDS"),
        fits.BinTableHDU.from_columns(scols, name="SOURCES"),
        fits.BinTableHDU.from_columns(ccols, name="COMPONENTS"),
        fits.ImageHDU(morph_flat, name="MORPHS"),
        fits.ImageHDU(fp_flat, name="FOOTPRINTS"),
        fits.ImageHDU(np.ascontiguousarray(md.model_psf), name="MODEL_PSF"),
        fits.ImageHDU(np.ascontiguousarray(md.psfs), name="PSFS"),
    ])
    hdus.writeto(Path(path), overwrite=overwrite, checksum=True)


_REQUIRED_HDUS = ("BLENDS", "SOURCES", "COMPONENTS", "MORPHS", "FOOTPRINTS", "MODEL_PSF", "PSFS")

#: FITS block size in bytes: a FITS file is a whole number of these.
_BLOCK = 2880
#: The reader scans at most this many HDUs, and this many header blocks per HDU, before
#: handing the file to astropy (a model file has 8 HDUs of one or two header blocks): a
#: crafted header cannot make it loop or allocate without bound.
_MAX_HDUS = 64
_MAX_HEADER_BLOCKS = 64
#: Most bands a model file may declare.
_MAX_BANDS = 1024
#: Largest blend box (pixels) a model file may declare: 8192 x 8192, four times an LSST
#: patch's area. The dense products of a blend (``models()``, conserved images) are
#: allocated on its box, so a crafted box must not ask for terabytes.
MAX_BLEND_PIXELS = 1 << 26
_FLOAT_NAMES = ("float32", "float64")


def load_models(path: str | Path) -> ModelData:
    """Read a model file written by :func:`save_models`.

    The file must be a regular file; its size and every HDU's declared data size are checked
    against each other before anything is read into arrays, so that a device such as
    ``/dev/zero``, a truncated file or a header declaring huge arrays is refused at once.
    Then every value the deblender's kernels would trust is checked: boxes (sizes >= 1,
    bounded), peaks inside their component's box, finite SEDs, morphologies and PSFs, dtypes
    as declared by ``SEDTYPE`` / ``MORTYPE`` (nothing is cast), table offsets exactly as the
    writer lays them out, unique parent ids and, within a blend, unique source ids.
    (Components may stick out of their blend box, as the format allows; :meth:`ModelData.rebuild`
    refuses to fit such a blend.)

    Raises
    ------
    ValueError
        If the file is not a regular FITS file, is not a cdeblend model file, has a newer
        schema version, misses an HDU, is truncated / inconsistent, or holds a value above
        that is not allowed; the message names it.
    """
    fits = _import_fits()
    from astropy.utils.exceptions import AstropyUserWarning

    path = Path(path)
    data = _read_bounded(path)
    with warnings.catch_warnings():
        # astropy only warns about a short file; here it is an error
        warnings.simplefilter("error", AstropyUserWarning)
        warnings.simplefilter("error", fits.verify.VerifyWarning)
        try:
            hdul = fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=False,
                             checksum=True)
        except (OSError, ValueError, AstropyUserWarning, fits.verify.VerifyWarning) as exc:
            raise ValueError(
                f"{path}: not a readable FITS file (truncated or damaged?): {exc}"
            ) from exc
        with hdul:
            return _read_hdus(hdul, path, AstropyUserWarning)


def _read_bounded(path: Path) -> bytes:
    """The bytes of the regular file ``path``, after checking that its FITS headers declare
    no more data than it holds (:func:`_scan_layout`)."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ValueError(f"{path}: not a readable FITS file: {exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path}: not a regular file; a model file is read from a regular "
                         "file only (devices, pipes and directories are refused)")
    size = info.st_size
    if size == 0 or size % _BLOCK:
        raise ValueError(f"{path}: not a readable FITS file (truncated or damaged?): its "
                         f"{size} bytes are not a whole number of {_BLOCK}-byte blocks")
    try:
        with open(path, "rb") as f:
            data = f.read(size + 1)  # never more than the file said it holds (+1: growth)
    except OSError as exc:
        raise ValueError(f"{path}: not a readable FITS file: {exc}") from exc
    if len(data) != size:
        raise ValueError(f"{path}: the file changed size while it was read")
    _scan_layout(data, path)
    return data


def _scan_layout(data: bytes, path: Path) -> None:
    """Walk the HDUs of ``data`` by their headers' ``BITPIX``, ``NAXISn``, ``PCOUNT`` and
    ``GCOUNT`` and raise ``ValueError`` unless they tile the file exactly."""
    pos = n_hdu = 0
    while pos < len(data):
        if n_hdu == _MAX_HDUS:
            raise ValueError(f"{path}: more than {_MAX_HDUS} HDUs: not a cdeblend model file")
        cards, pos = _header_cards(data, pos, n_hdu, path)
        nbytes = _data_bytes(cards, n_hdu, path)
        pos += -(-nbytes // _BLOCK) * _BLOCK
        if pos > len(data):
            raise ValueError(f"{path}: model file is truncated or damaged: HDU {n_hdu} "
                             f"declares {nbytes} bytes of data, the file ends before them")
        n_hdu += 1


def _header_cards(data: bytes, pos: int, n_hdu: int, path: Path) -> tuple[dict[str, str], int]:
    """The value strings of the size keywords of the header starting at ``pos``, and the
    position after its END card's block."""
    first = (b"SIMPLE  =",) if n_hdu == 0 else (b"XTENSION=",)
    if not data[pos : pos + 9].startswith(first):
        where = "" if n_hdu == 0 else f" (HDU {n_hdu})"
        raise ValueError(f"{path}: not a readable FITS file (truncated or damaged?): no "
                         f"{first[0][:8].decode().strip()} card{where}")
    cards: dict[str, str] = {}
    for _ in range(_MAX_HEADER_BLOCKS):
        if pos + _BLOCK > len(data):
            break
        block = data[pos : pos + _BLOCK]
        pos += _BLOCK
        for k in range(0, _BLOCK, 80):
            card = block[k : k + 80]
            key = card[:8].decode("ascii", "replace").strip()
            if key == "END":
                return cards, pos
            if card[8:10] == b"= " and (key in ("BITPIX", "NAXIS", "PCOUNT", "GCOUNT")
                                        or key.startswith("NAXIS")):
                cards[key] = card[10:].split(b"/")[0].decode("ascii", "replace").strip()
    raise ValueError(f"{path}: not a readable FITS file (truncated or damaged?): header of "
                     f"HDU {n_hdu} has no END card within {_MAX_HEADER_BLOCKS} blocks")


def _data_bytes(cards: dict[str, str], n_hdu: int, path: Path) -> int:
    """Bytes of data a header declares (``|BITPIX| / 8 * GCOUNT * (PCOUNT + prod NAXISn)``),
    computed in Python integers (no overflow)."""
    def value(key: str, default: int | None = None) -> int:
        if key not in cards and default is not None:
            return default
        try:
            return int(cards[key])
        except (KeyError, ValueError):
            raise ValueError(f"{path}: not a readable FITS file (truncated or damaged?): HDU "
                             f"{n_hdu} has no integer {key}") from None

    bitpix, naxis = value("BITPIX"), value("NAXIS")
    if bitpix not in (8, 16, 32, 64, -32, -64) or not 0 <= naxis <= 999:
        raise ValueError(f"{path}: not a readable FITS file (damaged?): HDU {n_hdu} has "
                         f"BITPIX = {bitpix}, NAXIS = {naxis}")
    if naxis == 0:
        return 0
    n = 1
    for i in range(1, naxis + 1):
        v = value(f"NAXIS{i}")
        if v < 0:
            raise ValueError(f"{path}: model file is damaged: HDU {n_hdu} has NAXIS{i} = {v}")
        n *= v
    pcount, gcount = value("PCOUNT", 0), value("GCOUNT", 1)
    if pcount < 0 or gcount < 0:
        raise ValueError(f"{path}: model file is damaged: HDU {n_hdu} has PCOUNT = {pcount}, "
                         f"GCOUNT = {gcount}")
    return abs(bitpix) // 8 * gcount * (pcount + n)


def _header_int(h: Any, key: str, path: Path, low: int, high: int | None = None) -> int:
    """Integer keyword ``key`` of header ``h`` in ``[low, high]``."""
    v = h[key]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{path}: model file is damaged: {key} = {v!r} is not an integer")
    if v < low or (high is not None and v > high):
        raise ValueError(f"{path}: model file is damaged: {key} = {v} is out of range "
                         f"[{low}, {high if high is not None else 'inf'}]")
    return int(v)


def _header_dtype(h: Any, key: str, path: Path) -> np.dtype:
    """The float dtype named by keyword ``key`` (float32 or float64 only)."""
    v = h[key]
    if v not in _FLOAT_NAMES:
        raise ValueError(f"{path}: model file is damaged: {key} = {v!r}; the format stores "
                         f"{' or '.join(_FLOAT_NAMES)}")
    return np.dtype(v)


def _check_float(a: np.ndarray | None, want: np.dtype, what: str, path: Path) -> None:
    """Raise unless ``a`` (data as stored, any byte order) has the float type ``want``."""
    if a is not None and (a.dtype.kind != "f" or a.dtype.itemsize != want.itemsize):
        raise ValueError(f"{path}: model file is damaged: {what} are stored as {a.dtype.name}, the "
                         f"header declares {want.name}")


def _read_hdus(hdul: Any, path: Path, warn_cls: type) -> ModelData:
    h = hdul[0].header
    if h.get("SCHEMA") != SCHEMA_NAME:
        raise ValueError(
            f"{path}: not a cdeblend model file (primary header has SCHEMA="
            f"{h.get('SCHEMA')!r}, expected {SCHEMA_NAME!r})"
        )
    version = h.get("SCHVER")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"{path}: model file has no integer schema version SCHVER")
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"{path}: model file schema version {version} is newer than this cdeblend "
            f"supports ({SCHEMA_VERSION}); upgrade cdeblend"
        )
    names = [hdu.name for hdu in hdul]
    for name in _REQUIRED_HDUS:
        if name not in names:
            raise ValueError(f"{path}: model file has no {name} HDU (truncated or damaged?)")
    try:
        nb = _header_int(h, "NBANDS", path, 1, _MAX_BANDS)
        bands = tuple(str(h[f"BAND{i + 1}"]) for i in range(nb))
        sed_dtype = _header_dtype(h, "SEDTYPE", path)
        mor_dtype = _header_dtype(h, "MORTYPE", path)
        sigma = h.get("MPSFSIG")
        counts = tuple(_header_int(h, k, path, 0) for k in ("NBLENDS", "NSOURCES", "NCOMPS"))
        bt, st, ct = (hdul[n].data for n in ("BLENDS", "SOURCES", "COMPONENTS"))
        morph_data = hdul["MORPHS"].data
        fp_data = hdul["FOOTPRINTS"].data
        model_psf = hdul["MODEL_PSF"].data
        psfs = hdul["PSFS"].data
        tables = _read_tables(bt, st, ct, counts, nb, sed_dtype, path)
    except (KeyError, TypeError, OSError, IndexError, warn_cls) as exc:
        raise ValueError(f"{path}: model file is truncated or damaged: {exc}") from exc

    _check_float(morph_data, mor_dtype, "morphologies (MORPHS)", path)
    for a, what in ((model_psf, "MODEL_PSF"), (psfs, "PSFS")):
        if a is None or a.dtype.kind != "f":
            raise ValueError(f"{path}: model file is damaged: {what} is not a float image")
    if fp_data is not None and fp_data.dtype != np.uint8:
        raise ValueError(f"{path}: model file is damaged: FOOTPRINTS are stored as "
                         f"{fp_data.dtype}, the format stores uint8")
    model_psf, psfs = _native(model_psf), _native(psfs)
    morph_flat = _native(np.zeros(0, mor_dtype) if morph_data is None else morph_data).ravel()
    fp_flat = _native(np.zeros(0, np.uint8) if fp_data is None else fp_data).ravel()
    if psfs.ndim != 3 or psfs.shape[0] != nb or model_psf.ndim != 2:
        raise ValueError(f"{path}: PSF HDUs have shapes {psfs.shape}, {model_psf.shape}")
    if np.any(fp_flat > 1):
        raise ValueError(f"{path}: model file is damaged: FOOTPRINTS hold values other "
                         "than 0 and 1")
    bi, si, ci = tables
    _check_layout(bi, si, ci, counts, morph_flat.size, fp_flat.size, path)
    _check_values(ci, morph_flat, path)
    try:
        blends = _build_blends(bi, si, ci, morph_flat, fp_flat, bands)
        return ModelData(bands=bands, model_psf=model_psf, psfs=psfs, blends=blends,
                         model_psf_sigma=None if sigma is None else float(sigma),
                         schema_version=version)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: model file is damaged: {exc}") from exc


_INT_COLUMNS = {
    "BLENDS": ("PARENT_ID", "Y0", "X0", "HEIGHT", "WIDTH", "SRC_START", "N_SOURCES",
               "FP_OFFSET", "ITERATIONS"),
    "SOURCES": ("ID", "PEAK_ID", "COMP_START", "N_COMPS"),
    "COMPONENTS": ("Y0", "X0", "HEIGHT", "WIDTH", "PEAK_Y", "PEAK_X", "MORPH_OFFSET"),
}


def _read_tables(bt: Any, st: Any, ct: Any, counts: tuple[int, ...], nb: int,
                 sed_dtype: np.dtype, path: Path) -> tuple[dict, dict, dict]:
    """The three tables' columns as native arrays of their declared kinds (nothing cast)."""
    def nrows(t: Any) -> int:
        return 0 if t is None else len(t)

    got = (nrows(bt), nrows(st), nrows(ct))
    if got != counts:
        raise ValueError(
            f"{path}: model file is truncated or damaged: tables have {got} rows "
            f"(blends, sources, components), the header says {counts}"
        )

    def col(t: Any, table: str, name: str, kinds: str, dtype: Any) -> np.ndarray:
        if t is None:
            return np.zeros(0, dtype)
        a = t[name]
        if a.dtype.kind not in kinds:
            raise ValueError(f"{path}: model file is damaged: column {name} of {table} is "
                             f"{a.dtype.name}, the format stores {np.dtype(dtype).name}")
        return _native(a, dtype)

    out = []
    for t, table in ((bt, "BLENDS"), (st, "SOURCES"), (ct, "COMPONENTS")):
        out.append({k: col(t, table, k, "iu", np.int64) for k in _INT_COLUMNS[table]})
    bi, si, ci = out
    bi["LOSS"] = col(bt, "BLENDS", "LOSS", "f", np.float64)
    bi["CONVERGED"] = col(bt, "BLENDS", "CONVERGED", "b", bool)
    bi["ISOLATED"] = col(bt, "BLENDS", "ISOLATED", "b", bool)
    # added after the first files were written: absent means no fallback
    has_fallback = bt is not None and "FALLBACK" in bt.columns.names
    bi["FALLBACK"] = (col(bt, "BLENDS", "FALLBACK", "b", bool) if has_fallback
                      else np.zeros(counts[0], bool))
    if ct is None:
        ci["SED"] = np.zeros((0, nb), sed_dtype)
    else:
        _check_float(ct["SED"], sed_dtype, "SEDs (column SED)", path)
        seds = _native(ct["SED"])
        if seds.size != counts[2] * nb:
            raise ValueError(f"{path}: model file is damaged: column SED holds {seds.size} "
                             f"values, {counts[2]} components of {nb} bands need "
                             f"{counts[2] * nb}")
        ci["SED"] = seds.reshape(-1, nb)
    return bi, si, ci


def _first(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad)[0])


def _check_boxes(t: dict, table: str, path: Path) -> None:
    """Sizes >= 1 and every value bounded (so that no product or sum below overflows)."""
    vals = np.stack([t["Y0"], t["X0"], t["HEIGHT"], t["WIDTH"]], axis=1)
    bad = (np.any(np.abs(vals) > MAX_COORD, axis=1) | (t["HEIGHT"] < 1) | (t["WIDTH"] < 1))
    if np.any(bad):
        r = _first(bad)
        raise ValueError(f"{path}: model file is damaged: {table} row {r} has the box "
                         f"{tuple(vals[r].tolist())} (sizes must be 1 to {MAX_COORD})")


def _check_runs(start: np.ndarray, count: np.ndarray, total: int, what: str, of: str,
                path: Path) -> None:
    """``start`` must be the running sum of ``count`` (>= 0), ending at ``total``."""
    if np.any(count < 0) or np.any(count > total):
        r = _first((count < 0) | (count > total))
        raise ValueError(f"{path}: model file is damaged: {of} row {r} has {count[r]} {what}")
    want = np.concatenate([[0], np.cumsum(count)])
    if want[-1] != total or not np.array_equal(start, want[:-1]):
        raise ValueError(f"{path}: model file is damaged: the {what} of the {of} rows are not "
                         f"the consecutive runs the format stores ({total} in all)")


def _check_layout(bi: dict, si: dict, ci: dict, counts: tuple[int, ...], n_morph: int,
                  n_fp: int, path: Path) -> None:
    """Geometry, offsets and ids of the tables, checked as whole columns."""
    _check_boxes(bi, "BLENDS", path)
    big = bi["HEIGHT"] * bi["WIDTH"] > MAX_BLEND_PIXELS  # sides are bounded: no overflow
    if np.any(big):
        r = _first(big)
        raise ValueError(f"{path}: model file is damaged: BLENDS row {r} has a box of "
                         f"{bi['HEIGHT'][r]} x {bi['WIDTH'][r]} pixels (at most "
                         f"{MAX_BLEND_PIXELS} pixels)")
    _check_boxes(ci, "COMPONENTS", path)
    py, px = ci["PEAK_Y"], ci["PEAK_X"]
    outside = ((py < ci["Y0"]) | (py >= ci["Y0"] + ci["HEIGHT"]) | (px < ci["X0"])
               | (px >= ci["X0"] + ci["WIDTH"]))
    if np.any(outside):
        r = _first(outside)
        box = tuple(int(ci[k][r]) for k in ("Y0", "X0", "HEIGHT", "WIDTH"))
        raise ValueError(f"{path}: model file is damaged: COMPONENTS row {r} has its peak "
                         f"{(int(py[r]), int(px[r]))} outside its box {box}")
    _check_runs(bi["SRC_START"], bi["N_SOURCES"], counts[1], "sources", "BLENDS", path)
    _check_runs(si["COMP_START"], si["N_COMPS"], counts[2], "components", "SOURCES", path)
    # pixel counts: each side is bounded, so one box's area fits an int64; a box larger than
    # the whole buffer is refused before summing
    area = ci["HEIGHT"] * ci["WIDTH"]
    _check_runs(ci["MORPH_OFFSET"], area, n_morph, "morphology values", "COMPONENTS", path)
    has_fp = bi["FP_OFFSET"] != -1
    if np.any(bi["FP_OFFSET"] < -1):
        r = _first(bi["FP_OFFSET"] < -1)
        raise ValueError(f"{path}: model file is damaged: BLENDS row {r} has FP_OFFSET "
                         f"{bi['FP_OFFSET'][r]}")
    fp_area = (bi["HEIGHT"] * bi["WIDTH"])[has_fp]
    _check_runs(bi["FP_OFFSET"][has_fp], fp_area, n_fp, "footprint values", "BLENDS", path)
    pid = bi["PARENT_ID"]
    uniq, n = np.unique(pid, return_counts=True)
    if np.any(n > 1):
        raise ValueError(f"{path}: model file is damaged: parent id {uniq[_first(n > 1)]} "
                         f"appears {n[_first(n > 1)]} times in BLENDS")


def _check_values(ci: dict, morph_flat: np.ndarray, path: Path) -> None:
    """Finite SEDs and morphologies (named by their COMPONENTS row)."""
    bad = ~np.all(np.isfinite(ci["SED"]), axis=1)
    if np.any(bad):
        raise ValueError(f"{path}: model file is damaged: COMPONENTS row {_first(bad)} has a "
                         "NaN or infinite SED")
    bad_px = ~np.isfinite(morph_flat)
    if np.any(bad_px):
        r = int(np.searchsorted(ci["MORPH_OFFSET"], _first(bad_px), side="right")) - 1
        raise ValueError(f"{path}: model file is damaged: COMPONENTS row {r} has a NaN or "
                         "infinite morphology value")


def _build_blends(bi: dict, si: dict, ci: dict, morph_flat: np.ndarray, fp_flat: np.ndarray,
                  bands: tuple[str, ...]) -> dict[int, BlendData]:
    """The data classes of checked tables (their own checks run once more)."""
    blends: dict[int, BlendData] = {}
    for r in range(len(bi["PARENT_ID"])):
        H, W = int(bi["HEIGHT"][r]), int(bi["WIDTH"][r])
        fpo = int(bi["FP_OFFSET"][r])
        footprint = None
        if fpo >= 0:
            footprint = fp_flat[fpo : fpo + H * W].reshape(H, W).astype(bool)
        sources = []
        s0, ns = int(bi["SRC_START"][r]), int(bi["N_SOURCES"][r])
        for s in range(s0, s0 + ns):
            c0, nc = int(si["COMP_START"][s]), int(si["N_COMPS"][s])
            comps = []
            for c in range(c0, c0 + nc):
                h_, w_ = int(ci["HEIGHT"][c]), int(ci["WIDTH"][c])
                off = int(ci["MORPH_OFFSET"][c])
                comps.append(ComponentData(
                    (int(ci["Y0"][c]), int(ci["X0"][c]), h_, w_),
                    (int(ci["PEAK_Y"][c]), int(ci["PEAK_X"][c])),
                    ci["SED"][c].copy(),
                    morph_flat[off : off + h_ * w_].reshape(h_, w_).copy(),
                ))
            sources.append(SourceData(int(si["ID"][s]), int(si["PEAK_ID"][s]), comps))
        pid = int(bi["PARENT_ID"][r])
        blends[pid] = BlendData(
            parent_id=pid,
            box=(int(bi["Y0"][r]), int(bi["X0"][r]), H, W),
            bands=bands,
            sources=sources,
            footprint=footprint,
            iterations=int(bi["ITERATIONS"][r]),
            loss=float(bi["LOSS"][r]),
            converged=bool(bi["CONVERGED"][r]),
            isolated=bool(bi["ISOLATED"][r]),
            fallback=bool(bi["FALLBACK"][r]),
        )
    return blends
