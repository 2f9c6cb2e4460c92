"""The per-source deblending metrics of :func:`cdeblend.metrics.blend_metrics` (blendedness,
flux overlap, coverage, chi^2, ...): one kernel pass over every source
(``_apportion_cy.source_metrics`` and ``blend_chi``), and the numpy loop it replaced, kept
for boxes outside the image and as the kernels' reference (``tests/test_metrics_kernels.py``).
The kernels add in numpy's order, so both give bit-identical metrics."""

from __future__ import annotations

import numpy as np

from . import _apportion_cy
from .apportion import FlatStack
from .box import clip_slices

__all__ = ["boxes_inside", "chi_image", "per_source_metrics", "per_source_metrics_numpy"]


def chi_image(conv: FlatStack, images: np.ndarray, weights: np.ndarray, inside: bool) -> np.ndarray:
    """(B, H, W) ``w (image - M)^2`` where ``w > 0`` (else 0), ``M`` the convolved blend
    model: the sum of the sources' convolved models (made for the conserved images anyway).

    One kernel pass when the boxes lie inside the image and the images and weights share a
    float dtype (bit-identical to the numpy calls of the other case, which hand the GIL to
    the other workers once per source)."""
    B, H, W = images.shape
    conv_total = np.zeros((B, H, W))
    if inside and images.dtype == weights.dtype and images.dtype in (np.float32, np.float64):
        chi = np.empty((B, H, W))
        _apportion_cy.blend_chi(
            np.ascontiguousarray(conv.flat),
            conv.offsets,
            np.ascontiguousarray(conv.boxes, dtype=np.int64),
            np.ascontiguousarray(images),
            np.ascontiguousarray(weights),
            conv_total,
            chi,
        )
        return chi
    for i in range(len(conv)):
        fr, bx = clip_slices(conv.boxes[i], (H, W))
        conv_total[(slice(None),) + fr] += conv.get(i)[(slice(None),) + bx]
    w = np.asarray(weights, dtype=np.float64)
    return np.where(w > 0, w * (np.asarray(images, np.float64) - conv_total) ** 2, 0.0)


def boxes_inside(models: FlatStack, conv: FlatStack, H: int, W: int) -> bool:
    """Whether every box of both stacks lies inside the (H, W) image (the kernel's case)."""
    boxes = np.concatenate([models.boxes, conv.boxes]).reshape(-1, 4)
    return bool(
        ((boxes[:, :2] >= 0) & (boxes[:, 0] + boxes[:, 2] <= H)[:, None]).all()
        and (boxes[:, 1] + boxes[:, 3] <= W).all()
    )


def per_source_metrics(
    models: FlatStack, total: np.ndarray, conv: FlatStack, has_data: np.ndarray, chi: np.ndarray
) -> tuple[np.ndarray, ...]:
    """The per-source metrics of :func:`blend_metrics` from one kernel pass (boxes inside
    the image): bit-identical to :func:`per_source_metrics_numpy`, without its ~40 small numpy
    calls per source, which held the GIL between the fits of a thread pool."""
    n, B = len(models), total.shape[0]
    size = max(
        int((B * models.boxes[:, 2] * models.boxes[:, 3]).max(initial=0)),
        int((B * conv.boxes[:, 2] * conv.boxes[:, 3]).max(initial=0)),
    )
    sums = np.zeros((n, 4 * B))
    max_overlap = np.zeros((n, B))
    flags = np.zeros((n, 2), dtype=np.uint8)
    counts = np.zeros((n, 1 + B), dtype=np.int64)
    chi_sum = np.zeros(n)
    _apportion_cy.source_metrics(
        np.ascontiguousarray(models.flat, dtype=np.float64),
        models.offsets,
        np.ascontiguousarray(models.boxes, dtype=np.int64),
        total,
        np.ascontiguousarray(conv.flat),
        conv.offsets,
        np.ascontiguousarray(conv.boxes, dtype=np.int64),
        np.ascontiguousarray(has_data, dtype=np.uint8),
        np.ascontiguousarray(chi, dtype=np.float64),
        sums,
        max_overlap,
        flags,
        counts,
        chi_sum,
        np.empty(max(size, 1)),
        np.empty(max(size, 1), dtype=np.uint8),
    )
    overlap, flux, cross, squares = (sums[:, k * B : (k + 1) * B] for k in range(4))
    overlap = np.where(flags[:, :1] != 0, overlap, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        blendedness = np.where(cross > 0, 1.0 - squares / cross, np.nan)
        fraction = np.where(flux > 0, overlap / flux, np.nan)
        npix, ndata = counts[:, :1], counts[:, 1:]
        coverage = np.where(npix > 0, ndata / npix, np.nan)
        total_data = ndata.sum(axis=1)
        chi2 = np.where((npix[:, 0] > 0) & (total_data > 0), chi_sum / total_data, np.nan)
    return blendedness, overlap, fraction, max_overlap, chi2, coverage, flags[:, 1] != 0


def per_source_metrics_numpy(
    models: FlatStack, total: np.ndarray, conv: FlatStack, has_data: np.ndarray, chi: np.ndarray
) -> tuple[np.ndarray, ...]:
    """The per-source metrics of :func:`blend_metrics` by numpy, source by source (any
    boxes; the reference of :func:`per_source_metrics`)."""
    n, (B, H, W) = len(models), total.shape
    blendedness = np.full((n, B), np.nan)
    overlap = np.zeros((n, B))
    fraction = np.full((n, B), np.nan)
    max_overlap = np.zeros((n, B))
    chi2 = np.full(n, np.nan)
    coverage = np.full((n, B), np.nan)
    edge = np.zeros(n, dtype=bool)
    for i in range(n):
        fr, bx = clip_slices(models.boxes[i], (H, W))
        m = models.get(i)[(slice(None),) + bx]
        M = total[(slice(None),) + fr]
        fp = (m > 0).any(axis=0)
        neighbours = (M - m) * fp
        flux = m.sum(axis=(1, 2))
        if fp.any():
            overlap[i] = neighbours.sum(axis=(1, 2))
            max_overlap[i] = neighbours.max(axis=(1, 2))
            rows, cols = np.nonzero(fp)
            edge[i] = bool(
                rows.min() + fr[0].start == 0
                or rows.max() + fr[0].start == H - 1
                or cols.min() + fr[1].start == 0
                or cols.max() + fr[1].start == W - 1
            )
        cross = (m * M).sum(axis=(1, 2))
        ok = cross > 0
        blendedness[i, ok] = 1.0 - (m * m).sum(axis=(1, 2))[ok] / cross[ok]
        fraction[i, flux > 0] = overlap[i, flux > 0] / flux[flux > 0]
        # the data-side metrics on the convolved model's footprint
        gfr, gbx = clip_slices(conv.boxes[i], (H, W))
        cfp = (conv.get(i)[(slice(None),) + gbx] > 0).any(axis=0)
        npix = int(cfp.sum())
        if npix:
            data = has_data[(slice(None),) + gfr][:, cfp]
            coverage[i] = data.mean(axis=1)
            if data.any():
                chi2[i] = chi[(slice(None),) + gfr][:, cfp].sum() / data.sum()
    return blendedness, overlap, fraction, max_overlap, chi2, coverage, edge
