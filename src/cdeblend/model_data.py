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
  source without components: its conserved image is the image inside the footprint.
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
                     none), ``ITERATIONS``, ``LOSS``, ``CONVERGED``, ``ISOLATED``
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
row/size counts that do not add up (a truncated file).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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


def _box4(box: Sequence[int], name: str) -> tuple[int, int, int, int]:
    vals = tuple(int(v) for v in box)
    if len(vals) != 4:
        raise ValueError(f"{name} must be (y0, x0, height, width), got {box!r}")
    if vals[2] < 0 or vals[3] < 0:
        raise ValueError(f"{name} has a negative size: {vals}")
    return vals  # type: ignore[return-value]


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
        self.box = _box4(self.box, "box")
        self.peak = (int(self.peak[0]), int(self.peak[1]))
        self.sed = np.asarray(self.sed)
        self.morphology = np.asarray(self.morphology)
        if self.sed.ndim != 1:
            raise ValueError(f"sed must be 1-D (B,), got shape {self.sed.shape}")
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

    def __post_init__(self) -> None:
        self.box = _box4(self.box, "box")
        self.bands = tuple(str(b) for b in self.bands)
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
        if self.model_psf_sigma is not None:
            self.model_psf_sigma = float(self.model_psf_sigma)

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
                              "ISOLATED")}
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
    for name in ("CONVERGED", "ISOLATED"):
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


def load_models(path: str | Path) -> ModelData:
    """Read a model file written by :func:`save_models`.

    Raises
    ------
    ValueError
        If the file is not FITS, is not a cdeblend model file, has a newer schema version,
        misses an HDU, or is truncated / inconsistent.
    """
    fits = _import_fits()
    from astropy.utils.exceptions import AstropyUserWarning

    path = Path(path)
    with warnings.catch_warnings():
        # astropy only warns about a short file; here it is an error
        warnings.simplefilter("error", AstropyUserWarning)
        warnings.simplefilter("error", fits.verify.VerifyWarning)
        try:
            hdul = fits.open(path, memmap=False, lazy_load_hdus=False, checksum=True)
        except (OSError, ValueError, AstropyUserWarning, fits.verify.VerifyWarning) as exc:
            raise ValueError(
                f"{path}: not a readable FITS file (truncated or damaged?): {exc}"
            ) from exc
        with hdul:
            return _read_hdus(hdul, path, AstropyUserWarning)


def _read_hdus(hdul: Any, path: Path, warn_cls: type) -> ModelData:
    h = hdul[0].header
    if h.get("SCHEMA") != SCHEMA_NAME:
        raise ValueError(
            f"{path}: not a cdeblend model file (primary header has SCHEMA="
            f"{h.get('SCHEMA')!r}, expected {SCHEMA_NAME!r})"
        )
    version = h.get("SCHVER")
    if not isinstance(version, int):
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
        nb = int(h["NBANDS"])
        bands = tuple(str(h[f"BAND{i + 1}"]) for i in range(nb))
        sed_dtype = np.dtype(h["SEDTYPE"])
        mor_dtype = np.dtype(h["MORTYPE"])
        sigma = h.get("MPSFSIG")
        counts = (int(h["NBLENDS"]), int(h["NSOURCES"]), int(h["NCOMPS"]))
        bt, st, ct = (hdul[n].data for n in ("BLENDS", "SOURCES", "COMPONENTS"))
        morph_data = hdul["MORPHS"].data
        fp_data = hdul["FOOTPRINTS"].data
        model_psf = _native(hdul["MODEL_PSF"].data)
        psfs = _native(hdul["PSFS"].data)
    except (KeyError, TypeError, OSError, IndexError, warn_cls) as exc:
        raise ValueError(f"{path}: model file is truncated or damaged: {exc}") from exc

    def nrows(t: Any) -> int:
        return 0 if t is None else len(t)

    got = (nrows(bt), nrows(st), nrows(ct))
    if got != counts:
        raise ValueError(
            f"{path}: model file is truncated or damaged: tables have {got} rows "
            f"(blends, sources, components), the header says {counts}"
        )
    morph_flat = _native(np.zeros(0) if morph_data is None else morph_data, mor_dtype).ravel()
    fp_flat = _native(np.zeros(0) if fp_data is None else fp_data, np.uint8).ravel()
    if psfs.ndim != 3 or psfs.shape[0] != nb or model_psf.ndim != 2:
        raise ValueError(f"{path}: PSF HDUs have shapes {psfs.shape}, {model_psf.shape}")

    def col(t: Any, name: str, dtype: Any = np.int64) -> np.ndarray:
        if t is None:
            return np.zeros(0, dtype)
        return _native(t[name], dtype)

    ci = {k: col(ct, k) for k in ("Y0", "X0", "HEIGHT", "WIDTH", "PEAK_Y", "PEAK_X",
                                  "MORPH_OFFSET")}
    seds = col(ct, "SED", sed_dtype).reshape(-1, nb) if counts[2] else np.zeros((0, nb))
    need = ci["MORPH_OFFSET"] + ci["HEIGHT"] * ci["WIDTH"]
    if counts[2] and (need.max() > morph_flat.size or ci["MORPH_OFFSET"].min() < 0):
        raise ValueError(
            f"{path}: model file is truncated or damaged: components need {need.max()} "
            f"morphology values, MORPHS holds {morph_flat.size}"
        )
    si = {k: col(st, k) for k in ("ID", "PEAK_ID", "COMP_START", "N_COMPS")}
    bi = {k: col(bt, k) for k in ("PARENT_ID", "Y0", "X0", "HEIGHT", "WIDTH", "SRC_START",
                                  "N_SOURCES", "FP_OFFSET", "ITERATIONS")}
    loss = col(bt, "LOSS", np.float64)
    conv = col(bt, "CONVERGED", bool)
    isolated = col(bt, "ISOLATED", bool)

    blends: dict[int, BlendData] = {}
    for r in range(counts[0]):
        H, W = int(bi["HEIGHT"][r]), int(bi["WIDTH"][r])
        fpo = int(bi["FP_OFFSET"][r])
        footprint = None
        if fpo >= 0:
            if fpo + H * W > fp_flat.size:
                raise ValueError(f"{path}: model file is truncated: footprint of blend {r}")
            footprint = fp_flat[fpo : fpo + H * W].reshape(H, W).astype(bool)
        sources = []
        s0, ns = int(bi["SRC_START"][r]), int(bi["N_SOURCES"][r])
        if s0 < 0 or s0 + ns > counts[1]:
            raise ValueError(f"{path}: model file is damaged: sources of blend {r}")
        for s in range(s0, s0 + ns):
            c0, nc = int(si["COMP_START"][s]), int(si["N_COMPS"][s])
            if c0 < 0 or c0 + nc > counts[2]:
                raise ValueError(f"{path}: model file is damaged: components of source {s}")
            comps = []
            for c in range(c0, c0 + nc):
                h_, w_ = int(ci["HEIGHT"][c]), int(ci["WIDTH"][c])
                off = int(ci["MORPH_OFFSET"][c])
                comps.append(ComponentData(
                    (int(ci["Y0"][c]), int(ci["X0"][c]), h_, w_),
                    (int(ci["PEAK_Y"][c]), int(ci["PEAK_X"][c])),
                    seds[c].copy(),
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
            loss=float(loss[r]),
            converged=bool(conv[r]),
            isolated=bool(isolated[r]),
        )
    return ModelData(bands=bands, model_psf=model_psf, psfs=psfs, blends=blends,
                     model_psf_sigma=None if sigma is None else float(sigma),
                     schema_version=version)
