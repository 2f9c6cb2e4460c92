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

__all__ = ["read_flux_unit", "read_image_stack", "read_peaks", "read_wcs",
           "variance_from_inverse"]


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
            headers += [h.header.copy() for h in hdul
                        if getattr(h, "is_image", False) and h.header.get("NAXIS", 0) >= 2]
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

    A FITS table or a CSV/whitespace text file with columns named ``x`` and ``y`` (any
    case); a text file without a header is read as two columns x, y.
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
            names = {n.lower(): n for n in table.columns.names}
            if "x" not in names or "y" not in names:
                raise ValueError(f"peaks: {path} needs columns x and y, has {list(names)}")
            x = np.asarray(table[names["x"]], dtype=np.float64)
            y = np.asarray(table[names["y"]], dtype=np.float64)
    else:
        text = path.read_text().strip().splitlines()
        if not text:
            raise ValueError(f"peaks: {path} is empty")
        delim = "," if "," in text[0] else None
        first = [t.strip().lower() for t in text[0].split(delim)]
        if "x" in first and "y" in first:
            rows = [line.split(delim) for line in text[1:] if line.strip()]
            ix, iy = first.index("x"), first.index("y")
        else:
            rows = [line.split(delim) for line in text if line.strip()]
            ix, iy = 0, 1
        try:
            x = np.array([float(r[ix]) for r in rows])
            y = np.array([float(r[iy]) for r in rows])
        except (ValueError, IndexError):
            raise ValueError(f"peaks: {path} has a row that is not two numbers x, y") from None
    return np.stack([y, x], axis=1)
