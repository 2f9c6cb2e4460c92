"""Model files: :func:`save_models` writes a :class:`~cdeblend.ModelData` as one FITS file,
:func:`load_models` reads one back with every check a file of unknown origin needs (layout
in :mod:`cdeblend.io.schema`)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..box import MAX_COORD
from .fits_scan import read_bounded
from .model_data import BlendData, ComponentData, ModelData, SourceData
from .schema import MAX_BLEND_PIXELS, SCHEMA_NAME, SCHEMA_VERSION

__all__ = ["load_models", "save_models"]


_IO_HINT = "saving and loading models needs astropy: pip install cdeblend[io]"


def _import_fits() -> Any:
    try:
        from astropy.io import fits
    except ImportError as exc:  # pragma: no cover - exercised only without astropy
        raise ImportError(_IO_HINT) from exc
    return fits


def _native(a: np.ndarray, dtype: np.dtype | str | None = None) -> np.ndarray:
    a = np.asarray(a)
    dt = np.dtype(dtype) if dtype is not None else a.dtype
    return np.ascontiguousarray(a, dtype=dt.newbyteorder("="))


def save_models(path: str | Path, model_data: ModelData, overwrite: bool = True) -> None:
    """Write ``model_data`` to one FITS file (layout in :mod:`cdeblend.io.schema`).

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
    sed_dtype, mor_dtype = _common_dtypes(comp_arrays)
    b_rows, s_rows, c_cols, images = _table_rows(blends, comp_arrays, nb, sed_dtype, mor_dtype)
    counts = (len(blends), len(s_rows["ID"]), len(c_cols["MORPH_OFFSET"]))
    hdus = fits.HDUList(
        [
            _primary_hdu(fits, md, sed_dtype, mor_dtype, counts),
            *_table_hdus(fits, b_rows, s_rows, c_cols, nb, sed_dtype),
            fits.ImageHDU(images["MORPHS"], name="MORPHS"),
            fits.ImageHDU(images["FOOTPRINTS"], name="FOOTPRINTS"),
            fits.ImageHDU(np.ascontiguousarray(md.model_psf), name="MODEL_PSF"),
            fits.ImageHDU(np.ascontiguousarray(md.psfs), name="PSFS"),
        ]
    )
    hdus.writeto(Path(path), overwrite=overwrite, checksum=True)


#: Integer columns of the BLENDS table, in file order (LOSS and the flags follow).
_BLEND_INT_COLUMNS = (
    "PARENT_ID",
    "Y0",
    "X0",
    "HEIGHT",
    "WIDTH",
    "SRC_START",
    "N_SOURCES",
    "FP_OFFSET",
    "ITERATIONS",
)
_BLEND_FLAGS = ("CONVERGED", "ISOLATED", "FALLBACK")
_SOURCE_COLUMNS = ("ID", "PEAK_ID", "COMP_START", "N_COMPS")


def _common_dtypes(comp_arrays: list[dict[str, np.ndarray]]) -> tuple[np.dtype, np.dtype]:
    """The one dtype of every SED and the one of every morphology (their common result
    type; float32 when there is none): TypeError unless float32 or float64."""
    sed_list = [a["seds"] for a in comp_arrays if len(a["seds"])]
    mor_list = [a["morph_flat"] for a in comp_arrays if len(a["morph_flat"])]
    sed_dtype = np.result_type(*sed_list) if sed_list else np.dtype(np.float32)
    mor_dtype = np.result_type(*mor_list) if mor_list else np.dtype(np.float32)
    for dt, what in ((sed_dtype, "SEDs"), (mor_dtype, "morphologies")):
        if dt.kind != "f":
            raise TypeError(f"{what} must be floating point, got {dt}")
    if sed_dtype not in (np.float32, np.float64):
        raise TypeError(f"SEDs must be float32 or float64, got {sed_dtype}")
    if mor_dtype not in (np.float32, np.float64):
        raise TypeError(f"morphologies must be float32 or float64, got {mor_dtype}")
    return sed_dtype, mor_dtype


def _table_rows(
    blends: list[BlendData],
    comp_arrays: list[dict[str, np.ndarray]],
    nb: int,
    sed_dtype: np.dtype,
    mor_dtype: np.dtype,
) -> tuple[dict[str, list], dict[str, list], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The BLENDS and SOURCES rows (lists per column), the COMPONENTS columns and the MORPHS
    and FOOTPRINTS images, with every offset the running sum the reader checks."""
    b_rows: dict[str, list] = {k: [] for k in (*_BLEND_INT_COLUMNS, "LOSS", *_BLEND_FLAGS)}
    s_rows: dict[str, list] = {k: [] for k in _SOURCE_COLUMNS}
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
    c_cols = {
        "Y0": boxes[:, 0],
        "X0": boxes[:, 1],
        "HEIGHT": boxes[:, 2],
        "WIDTH": boxes[:, 3],
        "PEAK_Y": peaks[:, 0],
        "PEAK_X": peaks[:, 1],
        "SED": np.concatenate(c_seds) if c_seds else np.zeros((0, nb), sed_dtype),
        "MORPH_OFFSET": np.concatenate(c_moff).astype(i64) if c_moff else np.zeros(0, i64),
    }
    images = {
        "MORPHS": np.concatenate(morphs) if morphs else np.zeros(0, mor_dtype),
        "FOOTPRINTS": np.concatenate(footprints) if footprints else np.zeros(0, np.uint8),
    }
    return b_rows, s_rows, c_cols, images


def _primary_hdu(
    fits: Any, md: ModelData, sed_dtype: np.dtype, mor_dtype: np.dtype, counts: tuple
) -> Any:
    """The primary HDU: schema, bands, dtypes, model PSF sigma and the tables' row counts."""
    primary = fits.PrimaryHDU()
    h = primary.header
    h["SCHEMA"] = (SCHEMA_NAME, "cdeblend persisted multi-band models")
    h["SCHVER"] = (SCHEMA_VERSION, "schema version")
    h["NBANDS"] = len(md.bands)
    for i, band in enumerate(md.bands):
        h[f"BAND{i + 1}"] = band
    if md.model_psf_sigma is not None:
        h["MPSFSIG"] = (md.model_psf_sigma, "sigma of the Gaussian model PSF (pixels)")
    h["CONSTHR"] = (md.conserved_thresh, "children's footprint threshold (noise RMS)")
    h["SEDTYPE"] = sed_dtype.name
    h["MORTYPE"] = mor_dtype.name
    h["NBLENDS"], h["NSOURCES"], h["NCOMPS"] = counts
    return primary


def _table_hdus(
    fits: Any,
    b_rows: dict[str, list],
    s_rows: dict[str, list],
    c_cols: dict[str, np.ndarray],
    nb: int,
    sed_dtype: np.dtype,
) -> list[Any]:
    """The BLENDS, SOURCES and COMPONENTS tables (integers as int64)."""

    def icol(name: str, values: Any) -> Any:
        return fits.Column(name=name, format="K", array=np.asarray(values, dtype=np.int64))

    bcols = [icol(k, b_rows[k]) for k in _BLEND_INT_COLUMNS]
    bcols.append(fits.Column(name="LOSS", format="D", array=np.asarray(b_rows["LOSS"], float)))
    for name in _BLEND_FLAGS:
        bcols.append(fits.Column(name=name, format="L", array=np.asarray(b_rows[name], bool)))
    scols = [icol(k, s_rows[k]) for k in _SOURCE_COLUMNS]
    sed_fmt = f"{nb}{'E' if sed_dtype == np.float32 else 'D'}"
    ccols = [
        fits.Column(name="SED", format=sed_fmt, array=v) if k == "SED" else icol(k, v)
        for k, v in c_cols.items()
    ]
    return [
        fits.BinTableHDU.from_columns(bcols, name="BLENDS"),
        fits.BinTableHDU.from_columns(scols, name="SOURCES"),
        fits.BinTableHDU.from_columns(ccols, name="COMPONENTS"),
    ]


_REQUIRED_HDUS = ("BLENDS", "SOURCES", "COMPONENTS", "MORPHS", "FOOTPRINTS", "MODEL_PSF", "PSFS")


#: Most bands a model file may declare.
_MAX_BANDS = 1024


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
    data = read_bounded(path)
    with warnings.catch_warnings():
        # astropy only warns about a short file; here it is an error
        warnings.simplefilter("error", AstropyUserWarning)
        warnings.simplefilter("error", fits.verify.VerifyWarning)
        try:
            hdul = fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=False, checksum=True)
        except (OSError, ValueError, AstropyUserWarning, fits.verify.VerifyWarning) as exc:
            raise ValueError(
                f"{path}: not a readable FITS file (truncated or damaged?): {exc}"
            ) from exc
        with hdul:
            return _read_hdus(hdul, path, AstropyUserWarning)


def _header_int(h: Any, key: str, path: Path, low: int, high: int | None = None) -> int:
    """Integer keyword ``key`` of header ``h`` in ``[low, high]``."""
    v = h[key]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{path}: model file is damaged: {key} = {v!r} is not an integer")
    if v < low or (high is not None and v > high):
        raise ValueError(
            f"{path}: model file is damaged: {key} = {v} is out of range "
            f"[{low}, {high if high is not None else 'inf'}]"
        )
    return int(v)


def _header_dtype(h: Any, key: str, path: Path) -> np.dtype:
    """The float dtype named by keyword ``key`` (float32 or float64 only)."""
    v = h[key]
    if v not in _FLOAT_NAMES:
        raise ValueError(
            f"{path}: model file is damaged: {key} = {v!r}; the format stores "
            f"{' or '.join(_FLOAT_NAMES)}"
        )
    return np.dtype(v)


def _check_float(a: np.ndarray | None, want: np.dtype, what: str, path: Path) -> None:
    """Raise unless ``a`` (data as stored, any byte order) has the float type ``want``."""
    if a is not None and (a.dtype.kind != "f" or a.dtype.itemsize != want.itemsize):
        raise ValueError(
            f"{path}: model file is damaged: {what} are stored as {a.dtype.name}, the "
            f"header declares {want.name}"
        )


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
        # files written before the children's footprint shared every pixel a model reached
        thresh = h.get("CONSTHR", 0.0)
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
        raise ValueError(
            f"{path}: model file is damaged: FOOTPRINTS are stored as "
            f"{fp_data.dtype}, the format stores uint8"
        )
    model_psf, psfs = _native(model_psf), _native(psfs)
    morph_flat = _native(np.zeros(0, mor_dtype) if morph_data is None else morph_data).ravel()
    fp_flat = _native(np.zeros(0, np.uint8) if fp_data is None else fp_data).ravel()
    if psfs.ndim != 3 or psfs.shape[0] != nb or model_psf.ndim != 2:
        raise ValueError(f"{path}: PSF HDUs have shapes {psfs.shape}, {model_psf.shape}")
    if np.any(fp_flat > 1):
        raise ValueError(
            f"{path}: model file is damaged: FOOTPRINTS hold values other than 0 and 1"
        )
    bi, si, ci = tables
    _check_layout(bi, si, ci, counts, morph_flat.size, fp_flat.size, path)
    _check_values(ci, morph_flat, path)
    try:
        blends = _build_blends(bi, si, ci, morph_flat, fp_flat, bands)
        return ModelData(
            bands=bands,
            model_psf=model_psf,
            psfs=psfs,
            blends=blends,
            model_psf_sigma=None if sigma is None else float(sigma),
            schema_version=version,
            conserved_thresh=thresh,
        )
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: model file is damaged: {exc}") from exc


_INT_COLUMNS = {
    "BLENDS": (
        "PARENT_ID",
        "Y0",
        "X0",
        "HEIGHT",
        "WIDTH",
        "SRC_START",
        "N_SOURCES",
        "FP_OFFSET",
        "ITERATIONS",
    ),
    "SOURCES": ("ID", "PEAK_ID", "COMP_START", "N_COMPS"),
    "COMPONENTS": ("Y0", "X0", "HEIGHT", "WIDTH", "PEAK_Y", "PEAK_X", "MORPH_OFFSET"),
}


def _read_tables(
    bt: Any, st: Any, ct: Any, counts: tuple[int, ...], nb: int, sed_dtype: np.dtype, path: Path
) -> tuple[dict, dict, dict]:
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
            raise ValueError(
                f"{path}: model file is damaged: column {name} of {table} is "
                f"{a.dtype.name}, the format stores {np.dtype(dtype).name}"
            )
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
    bi["FALLBACK"] = (
        col(bt, "BLENDS", "FALLBACK", "b", bool) if has_fallback else np.zeros(counts[0], bool)
    )
    if ct is None:
        ci["SED"] = np.zeros((0, nb), sed_dtype)
    else:
        _check_float(ct["SED"], sed_dtype, "SEDs (column SED)", path)
        seds = _native(ct["SED"])
        if seds.size != counts[2] * nb:
            raise ValueError(
                f"{path}: model file is damaged: column SED holds {seds.size} "
                f"values, {counts[2]} components of {nb} bands need "
                f"{counts[2] * nb}"
            )
        ci["SED"] = seds.reshape(-1, nb)
    return bi, si, ci


def _first(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad)[0])


def _check_boxes(t: dict, table: str, path: Path) -> None:
    """Sizes >= 1 and every value bounded (so that no product or sum below overflows)."""
    vals = np.stack([t["Y0"], t["X0"], t["HEIGHT"], t["WIDTH"]], axis=1)
    bad = np.any(np.abs(vals) > MAX_COORD, axis=1) | (t["HEIGHT"] < 1) | (t["WIDTH"] < 1)
    if np.any(bad):
        r = _first(bad)
        raise ValueError(
            f"{path}: model file is damaged: {table} row {r} has the box "
            f"{tuple(vals[r].tolist())} (sizes must be 1 to {MAX_COORD})"
        )


def _check_runs(
    start: np.ndarray, count: np.ndarray, total: int, what: str, of: str, path: Path
) -> None:
    """``start`` must be the running sum of ``count`` (>= 0), ending at ``total``."""
    if np.any(count < 0) or np.any(count > total):
        r = _first((count < 0) | (count > total))
        raise ValueError(f"{path}: model file is damaged: {of} row {r} has {count[r]} {what}")
    want = np.concatenate([[0], np.cumsum(count)])
    if want[-1] != total or not np.array_equal(start, want[:-1]):
        raise ValueError(
            f"{path}: model file is damaged: the {what} of the {of} rows are not "
            f"the consecutive runs the format stores ({total} in all)"
        )


def _check_layout(
    bi: dict, si: dict, ci: dict, counts: tuple[int, ...], n_morph: int, n_fp: int, path: Path
) -> None:
    """Geometry, offsets and ids of the tables, checked as whole columns."""
    _check_boxes(bi, "BLENDS", path)
    big = bi["HEIGHT"] * bi["WIDTH"] > MAX_BLEND_PIXELS  # sides are bounded: no overflow
    if np.any(big):
        r = _first(big)
        raise ValueError(
            f"{path}: model file is damaged: BLENDS row {r} has a box of "
            f"{bi['HEIGHT'][r]} x {bi['WIDTH'][r]} pixels (at most "
            f"{MAX_BLEND_PIXELS} pixels)"
        )
    _check_boxes(ci, "COMPONENTS", path)
    py, px = ci["PEAK_Y"], ci["PEAK_X"]
    outside = (
        (py < ci["Y0"])
        | (py >= ci["Y0"] + ci["HEIGHT"])
        | (px < ci["X0"])
        | (px >= ci["X0"] + ci["WIDTH"])
    )
    if np.any(outside):
        r = _first(outside)
        box = tuple(int(ci[k][r]) for k in ("Y0", "X0", "HEIGHT", "WIDTH"))
        raise ValueError(
            f"{path}: model file is damaged: COMPONENTS row {r} has its peak "
            f"{(int(py[r]), int(px[r]))} outside its box {box}"
        )
    _check_runs(bi["SRC_START"], bi["N_SOURCES"], counts[1], "sources", "BLENDS", path)
    _check_runs(si["COMP_START"], si["N_COMPS"], counts[2], "components", "SOURCES", path)
    # pixel counts: each side is bounded, so one box's area fits an int64; a box larger than
    # the whole buffer is refused before summing
    area = ci["HEIGHT"] * ci["WIDTH"]
    _check_runs(ci["MORPH_OFFSET"], area, n_morph, "morphology values", "COMPONENTS", path)
    has_fp = bi["FP_OFFSET"] != -1
    if np.any(bi["FP_OFFSET"] < -1):
        r = _first(bi["FP_OFFSET"] < -1)
        raise ValueError(
            f"{path}: model file is damaged: BLENDS row {r} has FP_OFFSET {bi['FP_OFFSET'][r]}"
        )
    fp_area = (bi["HEIGHT"] * bi["WIDTH"])[has_fp]
    _check_runs(bi["FP_OFFSET"][has_fp], fp_area, n_fp, "footprint values", "BLENDS", path)
    pid = bi["PARENT_ID"]
    uniq, n = np.unique(pid, return_counts=True)
    if np.any(n > 1):
        raise ValueError(
            f"{path}: model file is damaged: parent id {uniq[_first(n > 1)]} "
            f"appears {n[_first(n > 1)]} times in BLENDS"
        )


def _check_values(ci: dict, morph_flat: np.ndarray, path: Path) -> None:
    """Finite SEDs and morphologies (named by their COMPONENTS row)."""
    bad = ~np.all(np.isfinite(ci["SED"]), axis=1)
    if np.any(bad):
        raise ValueError(
            f"{path}: model file is damaged: COMPONENTS row {_first(bad)} has a NaN or infinite SED"
        )
    bad_px = ~np.isfinite(morph_flat)
    if np.any(bad_px):
        r = int(np.searchsorted(ci["MORPH_OFFSET"], _first(bad_px), side="right")) - 1
        raise ValueError(
            f"{path}: model file is damaged: COMPONENTS row {r} has a NaN or "
            "infinite morphology value"
        )


def _build_blends(
    bi: dict,
    si: dict,
    ci: dict,
    morph_flat: np.ndarray,
    fp_flat: np.ndarray,
    bands: tuple[str, ...],
) -> dict[int, BlendData]:
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
                comps.append(
                    ComponentData(
                        (int(ci["Y0"][c]), int(ci["X0"][c]), h_, w_),
                        (int(ci["PEAK_Y"][c]), int(ci["PEAK_X"][c])),
                        ci["SED"][c].copy(),
                        morph_flat[off : off + h_ * w_].reshape(h_, w_).copy(),
                    )
                )
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
