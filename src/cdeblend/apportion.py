"""Flux re-apportioning: split an observed image among children by their templates' shares.

Both deblenders end here. Each child ``i`` has a template ``T_i`` (a symmetric, PSF or
monotonic template in the single-band deblender; a source's model convolved to the observed
PSF in the multi-band one) on its own box. Its *conserved* image is

    conserved_i = image * max(0, T_i) / sum_j max(0, T_j)

wherever the sum is positive (and the pixel is in the parent footprint), so that the
children add up to the image exactly there, noise included. Pixels that no template claims
are the parent's *stray flux*; the single-band deblender can hand them out by a rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _apportion_cy
from ._validate import as_float_array, as_no_data_mask, clear_no_data, no_data_pixels
from .box import MAX_COORD, as_boxes, as_int

__all__ = ["FlatStack", "apportion_checked", "apportion_flux", "model_footprint"]


class FlatStack:
    """Per-child arrays of shape (B, h_i, w_i), each on its own box, stored in one buffer.

    Parameters
    ----------
    flat : numpy.ndarray
        1-D float32 or float64 buffer: row ``i`` is ``B * h_i * w_i`` values in C order.
    boxes : numpy.ndarray
        (N, 4) int64 ``(y0, x0, h, w)`` in the image frame.
    bands : int
        Number of bands B.
    """

    def __init__(self, flat: np.ndarray, boxes: np.ndarray, bands: int) -> None:
        self.flat = flat
        self.boxes = as_boxes(boxes)
        self.bands = as_int(bands, "bands")
        self.offsets = self._check()

    @classmethod
    def like(cls, flat: np.ndarray, layout: FlatStack) -> FlatStack:
        """A stack of ``flat`` (``layout.flat``'s size) in the checked layout of ``layout``
        (its boxes, bands and offsets), without checking them again: the products of a fit
        make several stacks per blend on one layout, and each check is a few numpy calls
        that hold the GIL."""
        if not isinstance(flat, np.ndarray) or flat.shape != layout.flat.shape:
            raise ValueError(
                f"flat must be an array of shape {layout.flat.shape}, got {np.shape(flat)}"
            )
        new = object.__new__(cls)
        new.flat, new.boxes, new.bands, new.offsets = (
            flat,
            layout.boxes,
            layout.bands,
            layout.offsets,
        )
        return new

    @classmethod
    def of_clipped(cls, flat: np.ndarray, boxes: np.ndarray, bands: int) -> FlatStack:
        """A stack of boxes the package clipped to a frame itself ((N, 4) int64, sizes >= 0,
        coordinates within the frame): only the buffer's size is checked (the range checks
        of the constructor are a few numpy calls that hold the GIL, per stack of a fit's
        products)."""
        sizes = bands * boxes[:, 2] * boxes[:, 3]
        offsets = np.zeros(len(boxes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        if not isinstance(flat, np.ndarray) or flat.ndim != 1 or flat.size != offsets[-1]:
            raise ValueError(f"flat must be 1-D with {offsets[-1]} values, got {np.shape(flat)}")
        new = object.__new__(cls)
        new.flat, new.boxes, new.bands, new.offsets = flat, boxes, bands, offsets
        return new

    def _check(self) -> np.ndarray:
        """Validate the layout (the kernels index ``flat`` with it unchecked); return the
        row offsets, (N + 1,) int64."""
        if not isinstance(self.flat, np.ndarray) or self.flat.ndim != 1:
            raise TypeError(
                f"flat must be a 1-D numpy array, got {type(self.flat).__name__} "
                f"of shape {np.shape(self.flat)}"
            )
        if self.bands < 1 or self.bands > MAX_COORD:
            raise ValueError(f"bands must be >= 1, got {self.bands}")
        boxes = self.boxes
        if boxes.dtype != np.int64 or boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(
                f"boxes must be an (N, 4) int64 array, got {boxes.dtype} of shape {boxes.shape}"
            )
        n = len(boxes)
        if n:
            # two reductions on the common path (this runs for every stack a fit makes)
            lo, hi = boxes.min(axis=0).tolist(), boxes.max(axis=0).tolist()
            if (
                min(lo[2:]) < 0
                or min(lo) < -MAX_COORD
                or max(hi) > MAX_COORD
                or self.bands * hi[2] * hi[3] * n > 2**62
            ):
                self._refuse(boxes)
        sizes = self.bands * boxes[:, 2] * boxes[:, 3]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        if offsets[-1] != self.flat.size:
            raise ValueError(f"flat buffer has {self.flat.size} values, boxes need {offsets[-1]}")
        return offsets

    def _refuse(self, boxes: np.ndarray) -> None:
        """Raise the ValueError naming the first bad box (negative size, out of range), or
        the total size when only that is too large (``B * h * w`` summed could wrap)."""
        for i, (y0, x0, h, w) in enumerate(boxes.tolist()):
            if h < 0 or w < 0:
                raise ValueError(f"boxes[{i}] = {(y0, x0, h, w)} has a negative size")
            if max(abs(y0), abs(x0), h, w) > MAX_COORD:
                raise ValueError(
                    f"boxes[{i}] = {(y0, x0, h, w)} is out of range (|values| <= {MAX_COORD})"
                )
        total = sum(self.bands * h * w for _, _, h, w in boxes.tolist())  # Python ints
        if total > 2**62:
            raise ValueError("boxes need more values than any buffer can hold")

    @classmethod
    def from_arrays(
        cls,
        arrays: Sequence[np.ndarray],
        boxes: Sequence[Sequence[int]] | np.ndarray,
        dtype: type | np.dtype = np.float64,
        bands: int | None = None,
    ) -> FlatStack:
        """Pack a list of (h, w) or (B, h, w) arrays with their boxes.

        ``bands`` is needed only for an empty list (it is read off the arrays otherwise).
        """
        boxes = as_boxes(boxes)
        if len(arrays) != len(boxes):
            raise ValueError(f"got {len(arrays)} arrays but {len(boxes)} boxes")
        if len(arrays) == 0:
            return cls(np.zeros(0, dtype=dtype), boxes, 1 if bands is None else bands)
        arrs = [np.asarray(a) for a in arrays]
        bands = 1 if arrs[0].ndim == 2 else arrs[0].shape[0]
        for i, (a, box) in enumerate(zip(arrs, boxes, strict=True)):
            want = (bands, int(box[2]), int(box[3]))
            # (not a.reshape(-1, h, w): that is ambiguous, and raises, for an empty box)
            got = a.shape if a.ndim == 3 else (1,) + a.shape if a.ndim == 2 else None
            if got != want:
                raise ValueError(f"array {i} has shape {a.shape}, its box needs {want}")
        flat = np.concatenate([a.astype(dtype, copy=False).ravel() for a in arrs])
        return cls(flat, boxes, bands)

    def __len__(self) -> int:
        return len(self.boxes)

    def get(self, i: int) -> np.ndarray:
        """Row ``i`` as a (B, h, w) view."""
        _, _, h, w = self.boxes[i]
        return self.flat[self.offsets[i] : self.offsets[i + 1]].reshape(self.bands, h, w)

    def sums(self) -> np.ndarray:
        """(N, B) float64 sum of every row per band (0 for empty boxes), in one call (each
        plane summed as ``numpy.add.reduceat`` sums a segment: the same bits)."""
        out = np.empty((len(self), self.bands))
        flat = self.flat
        if flat.dtype not in (np.float32, np.float64):
            flat = flat.astype(np.float64)
        _apportion_cy.plane_sums(
            # a float32 stack is summed plane by plane in float64 by the kernel, uncast
            np.ascontiguousarray(flat),
            self.offsets,
            np.ascontiguousarray(self.boxes, dtype=np.int64),
            out,
        )
        return out


def apportion_flux(
    image: np.ndarray,
    templates: FlatStack,
    footprint: np.ndarray | None = None,
    *,
    mask: np.ndarray | None = None,
) -> tuple[FlatStack, np.ndarray]:
    """Re-apportion ``image`` among the children whose templates are ``templates``.

    Parameters
    ----------
    image : numpy.ndarray
        (B, H, W) or (H, W) observed image, float32 or float64 (the templates' dtype).
    templates : FlatStack
        One (B, h, w) template per child, in the image frame. Negative values count as 0.
    footprint : numpy.ndarray, optional
        (H, W) bool: the parent footprint (True = inside). Pixels outside it go to no child.
    mask : numpy.ndarray, optional
        (H, W) or (B, H, W) no-data mask, the package's convention: bool (True = bad) or
        integer bit planes (non-zero = bad).

    Returns
    -------
    conserved : FlatStack
        The children's conserved images on the templates' boxes (0 outside the image).
    tsum : numpy.ndarray
        (B, H, W) float64 sum of the clipped templates inside the footprint.

    Notes
    -----
    A pixel without data (a non-finite value or a set ``mask``) gives no flux to any child:
    its conserved value is 0 in every child.
    """
    if not isinstance(templates, FlatStack):
        raise TypeError(f"templates must be a FlatStack, got {type(templates).__name__}")
    # its attributes are public: check the layout again before the kernels trust it
    templates.offsets = templates._check()
    dtype = templates.flat.dtype
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"templates must be float32 or float64, got {dtype}")
    img = as_float_array(image, "image", (2, 3), dtype=dtype, finite=False)
    if img.ndim == 2:
        img = img[None]
    if img.shape[0] != templates.bands:
        raise ValueError(f"image has {img.shape[0]} bands, templates have {templates.bands}")
    B, H, W = img.shape
    if footprint is None:
        mask_u8 = np.ones((H, W), dtype=np.uint8)
    else:
        footprint = np.asarray(footprint)
        if footprint.shape != (H, W):
            raise ValueError(f"footprint has shape {footprint.shape}, the image is {(H, W)}")
        mask_u8 = np.ascontiguousarray(footprint != 0, dtype=np.uint8)
    bad = as_no_data_mask(mask, "mask", (B, H, W))
    # a NaN or inf would spread to every child sharing the pixel: no data gives no flux
    img, _ = clear_no_data(img, None, no_data_pixels(img, None, bad))
    return apportion_checked(img, templates, mask_u8)


def apportion_checked(
    image: np.ndarray, templates: FlatStack, mask_u8: np.ndarray | None = None
) -> tuple[FlatStack, np.ndarray]:
    """:func:`apportion_flux` of a checked (B, H, W) image of the templates' dtype (finite
    inside the footprint), ``mask_u8`` (H, W) uint8 footprint or None for the whole image."""
    B, H, W = image.shape
    if mask_u8 is None:
        mask_u8 = np.ones((H, W), dtype=np.uint8)
    flat = np.ascontiguousarray(templates.flat)
    tsum = np.zeros((B, H, W), dtype=np.float64)
    _apportion_cy.template_sum(flat, templates.offsets, templates.boxes, mask_u8, tsum)
    out = np.empty_like(flat)
    _apportion_cy.apportion(image, tsum, flat, templates.offsets, templates.boxes, mask_u8, out)
    return FlatStack.like(out, templates), tsum


def model_footprint(
    templates: FlatStack,
    variance: np.ndarray,
    thresh: float,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """The pixels where the templates' sum is significant: the children's footprint.

    Parameters
    ----------
    templates : FlatStack
        One (B, h, w) template per child, in the image frame (negative values count as 0).
    variance : numpy.ndarray
        (B, H, W) variance of the image; a pixel whose variance is not finite and positive
        has no data.
    thresh : float
        In units of the noise RMS ``sqrt(variance)``; >= 0.
    weights : numpy.ndarray, optional
        (B, H, W) weights; a pixel of weight 0 has no data either.

    Returns
    -------
    numpy.ndarray
        (H, W) bool: True where, in at least one band with data, the sum of the clipped
        templates is positive and at least ``thresh * sqrt(variance)``.
    """
    if not isinstance(templates, FlatStack):
        raise TypeError(f"templates must be a FlatStack, got {type(templates).__name__}")
    if templates.flat.dtype not in (np.float32, np.float64):
        raise TypeError(f"templates must be float32 or float64, got {templates.flat.dtype}")
    if isinstance(thresh, (str, bytes, bool, np.bool_)) or not isinstance(
        thresh, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"thresh must be a number, got {type(thresh).__name__}")
    if not (np.isfinite(thresh) and thresh >= 0):
        raise ValueError(f"thresh must be a finite number >= 0, got {thresh!r}")
    var = np.asarray(variance)
    if var.ndim != 3 or var.shape[0] != templates.bands:
        raise ValueError(
            f"variance must be (B, H, W) with B = {templates.bands} bands, got {var.shape}"
        )
    if weights is not None and np.shape(weights) != var.shape:
        raise ValueError(f"weights have shape {np.shape(weights)}, the variance {var.shape}")
    templates.offsets = templates._check()
    B, H, W = var.shape
    tsum = np.zeros((B, H, W), dtype=np.float64)
    _apportion_cy.template_sum(
        np.ascontiguousarray(templates.flat),
        templates.offsets,
        templates.boxes,
        np.ones((H, W), dtype=np.uint8),
        tsum,
    )
    inside = np.zeros((H, W), dtype=bool)
    # band by band: the temporaries stay one plane (a 2000 x 2000 scene has 192 MB cubes)
    with np.errstate(invalid="ignore"):
        for b in range(B):
            vb = var[b].astype(np.float64)
            good = np.isfinite(vb) & (vb > 0) & (tsum[b] > 0)
            if weights is not None:
                good &= np.asarray(weights[b]) > 0
            level = thresh * np.sqrt(np.where(good, vb, 0.0))
            inside |= good & (tsum[b] >= level)
    return inside
