"""Output helpers of the ``cdeblend`` command: tables on the terminal and in CSV files,
arrays placed in a frame, optional matplotlib and tqdm."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in header]] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for k, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


def fmt(value: object) -> str:
    if isinstance(value, float | np.floating):
        return f"{value:.6g}"
    return str(value)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows([[fmt(v) for v in row] for row in rows])


def flag_items(flags: object) -> list[tuple[str, bool]]:
    """(name, value) pairs of a flags object: a dict, a dataclass or a set of names."""
    if isinstance(flags, dict):
        return [(str(k), bool(v)) for k, v in flags.items()]
    if isinstance(flags, set | frozenset | list | tuple):
        return [(str(k), True) for k in flags]
    if hasattr(flags, "__dataclass_fields__"):
        return [(k, bool(getattr(flags, k))) for k in flags.__dataclass_fields__]
    return []


def with_progress(items: Sequence, desc: str, enabled: bool) -> Sequence:
    """``items`` wrapped in a tqdm bar when tqdm is installed and ``enabled``."""
    if not enabled or len(items) < 2:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit="parent" if desc != "show" else "source")
