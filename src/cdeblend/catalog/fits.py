"""Catalog FITS files: :func:`write_catalog` and :func:`read_catalog`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .table import COLUMN_DESCRIPTIONS

__all__ = ["read_catalog", "write_catalog"]


def write_catalog(path: str | Path, catalog: Any, overwrite: bool = True) -> None:
    """Write a catalog (astropy Table or structured array) as a FITS binary table.

    Units go to ``TUNITn``; each column's description to the comment of its ``TTYPEn``
    card (and, with the units, to astropy's header block that :func:`read_catalog` reads
    back). Needs astropy (``pip install cdeblend[io]``).
    """
    try:
        from astropy.io import fits
        from astropy.table import Table
    except ImportError as exc:  # pragma: no cover - exercised only without astropy
        raise ImportError("writing a catalog needs astropy: pip install cdeblend[io]") from exc
    table = catalog if isinstance(catalog, Table) else Table(np.asarray(catalog))
    table.write(Path(path), format="fits", overwrite=overwrite)
    # the descriptions also as the TTYPEn comments, for readers other than astropy
    with fits.open(Path(path), mode="update") as hdul:
        header = hdul[1].header
        for i, name in enumerate(table.colnames, start=1):
            text = table[name].description or COLUMN_DESCRIPTIONS.get(name, "")
            # room on the card: 80 - "TTYPEn  = " - the quoted name (>= 20 wide) - " / "
            room = 80 - 10 - max(max(len(name), 8) + 2, 20) - 3
            if text and room > 8:
                short = text if len(text) <= room else text[: room - 3] + "..."
                header.comments[f"TTYPE{i}"] = short


def read_catalog(path: str | Path) -> Any:
    """Read a catalog written by :func:`write_catalog` as an astropy Table."""
    try:
        from astropy.table import Table
    except ImportError as exc:  # pragma: no cover - exercised only without astropy
        raise ImportError("reading a catalog needs astropy: pip install cdeblend[io]") from exc
    table = Table.read(Path(path), format="fits")
    table.convert_bytestring_to_unicode()  # FITS strings come back as bytes
    return table
