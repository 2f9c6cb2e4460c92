"""The FFT part of the products' exact convolutions (:meth:`Convolver.convolve_exact_into
<cdeblend.convolution.Convolver.convolve_exact_into>`): the models of many FFT grids in a
few calls of :func:`~cdeblend._convolve_cy.conv_exact`, on the available threads, and the
cut to the true support for kernels with zero taps."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._convolve_cy import conv_exact
from ._threads import num_threads

if TYPE_CHECKING:  # pragma: no cover
    from .convolution import Convolver

__all__ = ["convolve_exact_grids"]

#: The kernel transforms one call of ``conv_exact`` holds at most (bytes; a larger grid
#: goes alone): a big blend's sources have many box sizes, and the transforms of all their
#: grids would outgrow the kernel cache's budget (``convolution._KERNEL_CACHE_BYTES``).
_EXACT_BATCH_BYTES = 64 * 2**20


def convolve_exact_grids(
    conv: Convolver,
    grids: dict[tuple[int, int], list],
    models: np.ndarray,
    offsets: np.ndarray,
    out: np.ndarray,
    out_offsets: np.ndarray,
) -> None:
    """Convolve the models of :meth:`Convolver.convolve_exact_into` that go by FFT.

    ``grids`` maps each FFT grid ``(n0, n1)`` to its models, rows ``(offset, h, w, oy, ox,
    out_offset, gh, gw, k)``: model k, (B, h, w) at ``models[offset:]``, lies at ``(oy,
    ox)`` of its (gh, gw) grown box, whose convolution goes to ``out[out_offset:]``;
    ``offsets`` and ``out_offsets`` are the caller's, by k. The grids go largest first
    (the threads take the models in this order, so that a long one does not come last),
    in runs whose double-precision kernel transforms fit ``_EXACT_BATCH_BYTES``.
    """
    nb = conv.shape[0]
    taps = conv.kernels != 0
    all_taps = bool(taps.all())
    for batch in _batches(grids, nb):
        _conv_batch(conv, batch, grids, models, out, all_taps)
        if not all_taps:
            items = [
                (row[8], row[3], row[4], *row[1:3], *row[6:8]) for g in batch for row in grids[g]
            ]
            _cut_to_support(taps, models, offsets, out, out_offsets, items)


def _batches(grids: dict[tuple[int, int], list], nb: int) -> list[list[tuple[int, int]]]:
    """The grids, largest first, in runs whose transforms (``nb`` bands, float64) take at
    most ``_EXACT_BATCH_BYTES`` together (one grid at least)."""
    batches: list[list[tuple[int, int]]] = []
    size = _EXACT_BATCH_BYTES
    for n0, n1 in sorted(grids, key=lambda grid: -grid[0] * grid[1]):
        nbytes = nb * 2 * n0 * n1 * 8
        if size + nbytes > _EXACT_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append((n0, n1))
        size += nbytes
    return batches


def _conv_batch(
    conv: Convolver,
    batch: list[tuple[int, int]],
    grids: dict,
    models: np.ndarray,
    out: np.ndarray,
    all_taps: bool,
) -> int:
    """One ``conv_exact`` call for the models on the grids ``batch``, on this thread's
    share of the threads (:func:`cdeblend._threads.num_threads`); returns the threads it
    used."""
    rows, grid_rows = [], []
    for g, (n0, n1) in enumerate(batch):
        items = grids[n0, n1]
        grid_rows.append((n0, n1, max(item[7] for item in items)))
        rows.extend((*item[:8], g) for item in items)
    spectra = [conv.kernel_spectrum(n0, n1, exact=True) for n0, n1 in batch]
    ry, rx = conv.kernel_radius
    return conv_exact(
        models,
        np.array(rows, dtype=np.intp).reshape(-1, 9),
        np.array(grid_rows, dtype=np.intp).reshape(-1, 3),
        tuple(spectra),
        out,
        ry,
        rx,
        all_taps,
        num_threads(),
    )


def _cut_to_support(
    taps: np.ndarray,
    models: np.ndarray,
    offsets: np.ndarray,
    out: np.ndarray,
    out_offsets: np.ndarray,
    items: list,
) -> None:
    """Zero the FFT convolutions off the true support when some kernel taps (``taps``: (B,
    kh, kw) non-zero) are 0 (with all taps non-zero, ``conv_exact`` cuts them to the
    dilated box itself): count the overlapping (non-zero pixel, non-zero tap) pairs. Items
    ``(k, oy, ox, h, w, gh, gw)``."""
    from scipy.signal import fftconvolve  # only kernels with zero taps get here

    nb = taps.shape[0]
    for k, oy, ox, ch, cw, gh, gw in items:
        ind = np.zeros((nb, gh, gw))
        ind[:, oy : oy + ch, ox : ox + cw] = (
            models[offsets[k] : offsets[k] + nb * ch * cw].reshape(nb, ch, cw) != 0
        )
        support = np.stack(
            [fftconvolve(ind[b], taps[b].astype(np.float64), mode="same") > 0.5 for b in range(nb)]
        )
        out[out_offsets[k] : out_offsets[k] + nb * gh * gw] *= support.ravel()
