"""Reading a FITS file of unknown origin safely: its bytes are read only from a regular
file, and only after its headers were checked to tile the file exactly (no HDU declares
more data than the file holds), before astropy sees it."""

from __future__ import annotations

import stat
from pathlib import Path

__all__ = ["read_bounded"]


#: FITS block size in bytes: a FITS file is a whole number of these.
_BLOCK = 2880


#: The reader scans at most this many HDUs, and this many header blocks per HDU, before
#: handing the file to astropy (a model file has 8 HDUs of one or two header blocks): a
#: crafted header cannot make it loop or allocate without bound.
_MAX_HDUS = 64


_MAX_HEADER_BLOCKS = 64


def read_bounded(path: Path) -> bytes:
    """The bytes of the regular file ``path``, after checking that its FITS headers declare
    no more data than it holds (:func:`_scan_layout`)."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ValueError(f"{path}: not a readable FITS file: {exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(
            f"{path}: not a regular file; a model file is read from a regular "
            "file only (devices, pipes and directories are refused)"
        )
    size = info.st_size
    if size == 0 or size % _BLOCK:
        raise ValueError(
            f"{path}: not a readable FITS file (truncated or damaged?): its "
            f"{size} bytes are not a whole number of {_BLOCK}-byte blocks"
        )
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
            raise ValueError(
                f"{path}: model file is truncated or damaged: HDU {n_hdu} "
                f"declares {nbytes} bytes of data, the file ends before them"
            )
        n_hdu += 1


def _header_cards(data: bytes, pos: int, n_hdu: int, path: Path) -> tuple[dict[str, str], int]:
    """The value strings of the size keywords of the header starting at ``pos``, and the
    position after its END card's block."""
    first = (b"SIMPLE  =",) if n_hdu == 0 else (b"XTENSION=",)
    if not data[pos : pos + 9].startswith(first):
        where = "" if n_hdu == 0 else f" (HDU {n_hdu})"
        raise ValueError(
            f"{path}: not a readable FITS file (truncated or damaged?): no "
            f"{first[0][:8].decode().strip()} card{where}"
        )
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
            if card[8:10] == b"= " and (
                key in ("BITPIX", "NAXIS", "PCOUNT", "GCOUNT") or key.startswith("NAXIS")
            ):
                cards[key] = card[10:].split(b"/")[0].decode("ascii", "replace").strip()
    raise ValueError(
        f"{path}: not a readable FITS file (truncated or damaged?): header of "
        f"HDU {n_hdu} has no END card within {_MAX_HEADER_BLOCKS} blocks"
    )


def _data_bytes(cards: dict[str, str], n_hdu: int, path: Path) -> int:
    """Bytes of data a header declares (``|BITPIX| / 8 * GCOUNT * (PCOUNT + prod NAXISn)``),
    computed in Python integers (no overflow)."""

    def value(key: str, default: int | None = None) -> int:
        if key not in cards and default is not None:
            return default
        try:
            return int(cards[key])
        except (KeyError, ValueError):
            raise ValueError(
                f"{path}: not a readable FITS file (truncated or damaged?): HDU "
                f"{n_hdu} has no integer {key}"
            ) from None

    bitpix, naxis = value("BITPIX"), value("NAXIS")
    if bitpix not in (8, 16, 32, 64, -32, -64) or not 0 <= naxis <= 999:
        raise ValueError(
            f"{path}: not a readable FITS file (damaged?): HDU {n_hdu} has "
            f"BITPIX = {bitpix}, NAXIS = {naxis}"
        )
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
        raise ValueError(
            f"{path}: model file is damaged: HDU {n_hdu} has PCOUNT = {pcount}, GCOUNT = {gcount}"
        )
    return abs(bitpix) // 8 * gcount * (pcount + n)
