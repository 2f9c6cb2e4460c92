"""Reading images, variance maps, PSFs and peak lists from FITS (and text) files.

Used by the ``cdeblend`` command; needs astropy (``pip install cdeblend[io]``).

Images may come as one file per band (a 2-D image in the primary or first image HDU), as a
multi-extension file with one 2-D HDU per band, or as a cube (B, H, W) in one HDU; the band
order is the order of the files, then of the HDUs. A band's name is read from the header
keywords ``BAND`` or ``FILTER`` when present. Pixel positions are 0-based (y = row, x =
column), as in numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "gaussian_psfs",
    "psf_problems",
    "read_conv_kernel",
    "read_flux_unit",
    "read_image_stack",
    "read_peak_table",
    "read_peaks",
    "read_wcs",
    "variance_from_inverse",
]


def _fits() -> Any:
    try:
        from astropy.io import fits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("reading FITS files needs astropy: pip install 'cdeblend[io]'") from err
    return fits


def read_image_stack(
    paths: Sequence[str | Path], name: str = "images"
) -> tuple[np.ndarray, list[str | None]]:
    """Read a (B, H, W) stack from one or more FITS files.

    Parameters
    ----------
    paths : sequence of path
        FITS files; every image HDU with 2-D data is one band, every 3-D HDU several.
    name : str
        What is being read, for error messages.

    Returns
    -------
    stack : numpy.ndarray
        (B, H, W) native-endian float array (float32 stays float32, else float64).
    bands : list of str or None
        The band name of each plane from ``BAND``/``FILTER`` keywords (None where absent).
    """
    fits = _fits()
    planes: list[np.ndarray] = []
    bands: list[str | None] = []
    if not paths:
        raise ValueError(f"{name}: no file given")
    for path in paths:
        try:
            hdul = fits.open(path, memmap=False)
        except FileNotFoundError:
            raise ValueError(f"{name}: file not found: {path}") from None
        except OSError as err:
            raise ValueError(f"{name}: {path} is not a readable FITS file ({err})") from None
        with hdul:
            found = 0
            for hdu in hdul:
                if not getattr(hdu, "is_image", False) or hdu.data is None:
                    continue
                data = np.asarray(hdu.data)
                if data.ndim == 2:
                    data = data[None]
                if data.ndim != 3:
                    raise ValueError(
                        f"{name}: {path} HDU {hdu.name!r} has {data.ndim} dimensions; "
                        "expected a 2-D image or a (bands, y, x) cube"
                    )
                band = hdu.header.get("BAND", hdu.header.get("FILTER"))
                for plane in data:
                    planes.append(plane)
                    bands.append(None if band is None or data.shape[0] > 1 else str(band))
                found += 1
            if found == 0:
                raise ValueError(f"{name}: {path} has no image data")
    shapes = {p.shape for p in planes}
    if len(shapes) != 1:
        raise ValueError(f"{name}: the planes have different shapes {sorted(shapes)}")
    stack = np.stack(planes)
    dtype = np.float32 if stack.dtype == np.float32 else np.float64
    return np.ascontiguousarray(stack, dtype=np.dtype(dtype).newbyteorder("=")), bands


def _image_headers(paths: Sequence[str | Path]) -> list[Any]:
    """The headers of the image HDUs of ``paths``, in band order."""
    fits = _fits()
    headers = []
    for path in paths:
        with fits.open(path, memmap=False) as hdul:
            headers += [
                h.header.copy()
                for h in hdul
                if getattr(h, "is_image", False) and h.header.get("NAXIS", 0) >= 2
            ]
    return headers


def read_wcs(paths: Sequence[str | Path]) -> Any:
    """The celestial WCS of the first image HDU of ``paths`` that has one, else None.

    The catalog's pixel positions are 0-based, as astropy's ``pixel_to_world_values``.
    Non-standard header cards (common in archive images) are tolerated silently.
    """
    import warnings

    from astropy.wcs import WCS, FITSFixedWarning

    for header in _image_headers(paths):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            try:
                wcs = WCS(header)
            except Exception:  # a broken WCS is no WCS: the catalog has no RA/Dec then
                continue
        if wcs.has_celestial:
            return wcs.celestial
    return None


def read_flux_unit(paths: Sequence[str | Path]) -> str | None:
    """The ``BUNIT`` of the first image HDU of ``paths`` that has one, else None."""
    for header in _image_headers(paths):
        unit = header.get("BUNIT")
        if unit and str(unit).strip():
            return str(unit).strip()
    return None


def variance_from_inverse(invvar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Variance and a no-data mask from an inverse-variance map.

    Pixels with inverse variance <= 0 or non-finite get variance 0 and are masked (zero
    weight); the rest get ``1 / invvar``.
    """
    invvar = np.asarray(invvar)
    good = np.isfinite(invvar) & (invvar > 0)
    variance = np.zeros_like(invvar)
    variance[good] = 1.0 / invvar[good]
    return variance, ~good


def read_peaks(path: str | Path) -> np.ndarray:
    """Read a peak list as an (N, 2) float array of (y, x), 0-based.

    See :func:`read_peak_table` for the accepted formats and column names.
    """
    return read_peak_table(path)[0]


#: Accepted (x, y) column pairs of a peak list, in order of preference, with the position
#: of the first pixel's centre (0 for 0-based, 1 for SExtractor's 1-based FITS convention)
#: and where the names come from.
PEAK_COLUMNS: tuple[tuple[str, str, int, str], ...] = (
    ("x", "y", 0, "0-based"),
    ("x_peak", "y_peak", 0, "photutils find_peaks, 0-based"),
    ("xcentroid", "ycentroid", 0, "photutils, 0-based"),
    ("x_centroid", "y_centroid", 0, "0-based"),
    ("xpeak", "ypeak", 0, "sep, 0-based"),
    ("x_image", "y_image", 1, "SExtractor, 1-based"),
    ("xwin_image", "ywin_image", 1, "SExtractor, 1-based"),
    ("xpeak_image", "ypeak_image", 1, "SExtractor, 1-based"),
)


def _pick_columns(names: Sequence[str], path: Path) -> tuple[str, str, int, str]:
    """The first pair of :data:`PEAK_COLUMNS` present in ``names`` (any case)."""
    lower = {n.lower(): n for n in names}
    for cx, cy, origin, what in PEAK_COLUMNS:
        if cx in lower and cy in lower:
            return lower[cx], lower[cy], origin, what
    accepted = ", ".join(f"{a}/{b}" for a, b, _, _ in PEAK_COLUMNS)
    raise ValueError(
        f"peaks: {path} has no x, y column pair I know (columns: {list(names)}); "
        f"accepted pairs (any case): {accepted}"
    )


def _sextractor_header(lines: list[str]) -> dict[str, int] | None:
    """Column name -> 0-based index from a SExtractor ASCII_HEAD header, or None."""
    cols: dict[str, int] = {}
    for line in lines:
        if not line.startswith("#"):
            break
        parts = line[1:].split()
        if len(parts) >= 2 and parts[0].isdigit():
            cols[parts[1]] = int(parts[0]) - 1
    return cols or None


def _read_text_table(path: Path) -> tuple[dict[str, np.ndarray | None], bool]:
    """Columns of a SExtractor ASCII_HEAD, CSV or whitespace text table.

    Returns the columns by name and whether the table had named columns (a text file
    without a header gives columns ``x``, ``y`` from its first two columns).
    """
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"peaks: {path} is empty")
    sex = _sextractor_header(lines)
    if sex is not None:
        rows = [ln.split() for ln in lines if not ln.startswith("#")]
        index = sex
    else:
        body = [ln for ln in lines if not ln.lstrip().startswith("#")]
        if not body:
            raise ValueError(f"peaks: {path} has no rows")
        delim = "," if "," in body[0] else None
        first = [t.strip().strip('"') for t in body[0].split(delim)]
        try:
            [float(t) for t in first]
            named = False
        except ValueError:
            named = True
        if named:
            index = {n: i for i, n in enumerate(first)}
            rows = [ln.split(delim) for ln in body[1:]]
        else:
            index = {"x": 0, "y": 1}
            rows = [ln.split(delim) for ln in body]
    columns: dict[str, np.ndarray | None] = {}
    for name, i in index.items():
        try:
            columns[name] = np.array([float(r[i]) for r in rows])
        except (ValueError, IndexError):
            columns[name] = None  # text or missing: only the position columns must be numbers
    return columns, sex is not None or named


def read_peak_table(path: str | Path) -> tuple[np.ndarray, str]:
    """Read a peak list and say which columns were used.

    Accepted: a FITS binary table, a SExtractor ``ASCII_HEAD`` catalog (``#   2 X_IMAGE
    ...`` header lines), a CSV or whitespace text file with a header line, or a text file
    of two columns x, y without a header. Column pairs are looked up in the order of
    :data:`PEAK_COLUMNS` (any case): ``x``/``y``, photutils' ``x_peak``/``y_peak`` and
    ``xcentroid``/``ycentroid``, sep's ``xpeak``/``ypeak`` (all 0-based), and SExtractor's
    ``X_IMAGE``/``Y_IMAGE``, ``XWIN_IMAGE``/``YWIN_IMAGE``, ``XPEAK_IMAGE``/``YPEAK_IMAGE``
    (1-based: the first pixel's centre is 1, so 1 is subtracted).

    Returns
    -------
    peaks : numpy.ndarray
        (N, 2) float64 (y, x), 0-based (x = column, y = row).
    used : str
        Which columns were read, e.g. ``"X_IMAGE, Y_IMAGE (SExtractor, 1-based; converted
        to 0-based)"``.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"peaks: file not found: {path}")
    with open(path, "rb") as f:
        is_fits = f.read(6) == b"SIMPLE"
    if is_fits:
        fits = _fits()
        with fits.open(path, memmap=False) as hdul:
            table = next((h.data for h in hdul if isinstance(h, fits.BinTableHDU)), None)
            if table is None:
                raise ValueError(f"peaks: {path} has no binary table")
            names = list(table.columns.names)
            cx, cy, origin, what = _pick_columns(names, path)
            x = np.asarray(table[cx], dtype=np.float64)
            y = np.asarray(table[cy], dtype=np.float64)
    else:
        columns, named = _read_text_table(path)
        cx, cy, origin, what = _pick_columns(list(columns), path)
        if not named:
            what = "the first two columns, read as x, y (0-based); no header line"
        x, y = columns[cx], columns[cy]
        if x is None or y is None:
            raise ValueError(
                f"peaks: {path} has a row that is not two numbers x, y (columns {cx}, {cy})"
            )
    if x.ndim != 1 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(f"peaks: {path} columns {cx}, {cy} must hold finite numbers")
    used = f"{cx}, {cy} ({what}" + ("; converted to 0-based)" if origin else ")")
    return np.stack([y - origin, x - origin], axis=1), used


# ------------------------------------------------------------------------------------------
# PSFs and detection filters
# ------------------------------------------------------------------------------------------


def read_conv_kernel(path: str | Path) -> np.ndarray:
    """A detection filter kernel from a SExtractor ``.conv`` file (or a FITS image).

    A ``.conv`` file has a header line ``CONV NORM`` (or ``CONV NONORM``), comment lines
    starting with ``#`` and rows of numbers, one row of the kernel per line (e.g.
    SExtractor's ``default.conv``: a 3 x 3 kernel ``1 2 1 / 2 4 2 / 1 2 1``). The kernel is
    returned as written; :func:`cdeblend.detect` normalises it to unit sum (for detection
    the scale does not matter). A ``.fits``/``.fit`` file is read as an image.

    Raises
    ------
    ValueError
        Naming ``filter_kernel``: no rows of numbers, rows of different lengths, even sides,
        non-finite values or a sum that is not positive.
    """
    path = Path(path)
    if path.suffix.lower() in (".fits", ".fit", ".fts"):
        kernel, _ = read_image_stack([path], "filter_kernel")
        if kernel.shape[0] != 1:
            raise ValueError(f"filter_kernel: {path} holds {kernel.shape[0]} images, not one")
        kernel = np.asarray(kernel[0], dtype=np.float64)
    else:
        kernel = _conv_rows(path)
    if kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError(f"filter_kernel: {path} has even sides {kernel.shape}; odd sides needed")
    if not np.all(np.isfinite(kernel)) or not kernel.sum() > 0:
        raise ValueError(f"filter_kernel: {path} must be finite with a positive sum")
    return kernel


def _conv_rows(path: Path) -> np.ndarray:
    """The rows of numbers of a SExtractor ``.conv`` text file as a 2-D array."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text or text.upper().startswith("CONV"):
            continue  # blank, comment or the CONV NORM / CONV NONORM header
        try:
            rows.append([float(v) for v in text.split()])
        except ValueError:
            raise ValueError(
                f"filter_kernel: line {number} of {path} is not a row of numbers: {line!r}"
            ) from None
    if not rows:
        raise ValueError(f"filter_kernel: {path} holds no rows of numbers")
    if len({len(r) for r in rows}) != 1:
        raise ValueError(f"filter_kernel: the rows of {path} have different lengths")
    return np.array(rows, dtype=np.float64)


def gaussian_psfs(fwhm: Sequence[float], n_bands: int) -> np.ndarray:
    """Pixel-integrated circular Gaussian PSFs from FWHMs in pixels.

    Parameters
    ----------
    fwhm : sequence of float
        One FWHM for every band, or one per band (pixels, > 0).
    n_bands : int
        Number of bands.

    Returns
    -------
    numpy.ndarray
        (B, s, s) unit-sum PSFs, ``s`` odd and at least 8 sigma of the widest one.
    """
    from .observation import integrated_gaussian_psf

    f = np.asarray(fwhm, dtype=np.float64).ravel()
    if f.size == 1:
        f = np.repeat(f, n_bands)
    if f.size != n_bands:
        raise ValueError(f"psf_fwhm: {f.size} value(s) for {n_bands} band(s); give 1 or {n_bands}")
    if not np.all(np.isfinite(f) & (f > 0)):
        raise ValueError(f"psf_fwhm must be finite and > 0 pixels, got {f.tolist()}")
    sigma = f / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    size = 2 * int(np.ceil(4.0 * sigma.max())) + 1
    return np.stack([integrated_gaussian_psf(float(s), max(size, 5)) for s in sigma])


def psf_problems(psf: np.ndarray) -> list[str]:
    """Problems of one (h, w) PSF image that make models worse, in words (empty if none).

    - *not normalised*: its sum differs from 1 by more than 1 % (PSF models cut to a stamp
      commonly miss a few 0.1 % in their wings; those are rescaled without a warning);
    - *negative lobes*: negative pixels holding more than 1 % of the positive flux, or a
      pixel below -1 % of the peak (real PSF models have ~1e-5 of noise-like negatives);
    - *holes*: zero or non-finite pixels surrounded by the PSF's core (pixels above 0.1 %
      of the peak), e.g. masked cosmic rays; the deblender's models then show a
      checkerboard. Zeros outside the core (a PSF image cut to a circle) are fine.
    """
    from scipy import ndimage

    p = np.asarray(psf, dtype=np.float64)
    problems = []
    finite = np.isfinite(p)
    q = np.where(finite, p, 0.0)
    peak = q.max()
    if not peak > 0:
        return ["it has no positive pixel"]
    total = q.sum()
    if abs(total - 1.0) > 1e-2:
        problems.append(f"it is not normalised (sum {total:.4g}; it is rescaled to 1)")
    neg = -q[q < 0].sum()
    pos = q[q > 0].sum()
    if neg > 0.01 * pos or q.min() < -0.01 * peak:
        problems.append(
            f"it has negative lobes ({neg / pos:.2%} of its flux; lowest pixel "
            f"{q.min() / peak:.2%} of the peak)"
        )
    core = q > 1e-3 * peak
    holes = ndimage.binary_fill_holes(core) & ~core & ((q == 0) | ~finite)
    if holes.any():
        problems.append(
            f"it has {int(holes.sum())} hole(s) (zero or NaN pixels inside its core); "
            "models will show a checkerboard: interpolate over them"
        )
    elif not finite.all():
        problems.append(f"it has {int((~finite).sum())} NaN/inf pixel(s) (set to 0)")
    return problems
