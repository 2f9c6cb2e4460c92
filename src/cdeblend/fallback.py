"""A model for every peak when the multi-band fit raises.

A fit can fail on inputs that pass validation: two peaks on one pixel make the joint SED fit
singular (scarlet #282), a peak on pixels without data gives a source nothing to fit. Rather
than lose the parent, :meth:`~cdeblend.Deblender.deblend` then builds this fallback: one
PSF-shaped component per peak (the model PSF centred on the peak, cut to the blend), its SED
fitted by non-negative least squares to the image band by band (the components' convolved
models as the columns, weighted by the inverse variance), and the image re-apportioned among
these models as after a fit, so that the children add up to the image on the children's
footprint (``DeblendConfig.conserved_thresh``). The result is flagged ``fallback`` and keeps
the text of the error.

Nothing here shares code with the fit that failed beyond the model classes: the design
matrix is dense on the pixels the models touch and solved by ``scipy.optimize.nnls``, which
handles identical and all-zero columns (a peak on a masked region gets a zero SED).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ._nnls import nnls_checked
from .blend import Blend, Component, Source
from .box import centered, clip_slices
from .deblend_result import DeblendResult
from .initialization import model_psf_array

__all__ = ["fallback_result"]


def psf_sources(observation: Any, peaks: np.ndarray, bg_thresh: float | None) -> list[Source]:
    """One source per peak, each a single PSF-shaped component with a zero SED.

    The morphology is the model PSF centred on the peak, cut to the blend's frame and
    normalised to 1 at the peak (the model PSF's maximum is its centre).
    """
    B, H, W = observation.shape
    psf = model_psf_array(observation)
    sources = []
    for i, (py, px) in enumerate(np.asarray(peaks, dtype=np.int64).tolist()):
        sl_img, sl_psf = clip_slices(centered((py, px), psf.shape), (H, W))
        morph = psf[sl_psf]
        morph = morph / morph.max()
        box = (sl_img[0].start, sl_img[1].start, morph.shape[0], morph.shape[1])
        comp = Component(np.zeros(B), morph, box, (py, px), bg_thresh, kind="psf")
        sources.append(Source([comp], (py, px), index=i))
    return sources


def fit_seds_nnls(blend: Blend) -> np.ndarray:
    """(N, B) non-negative SEDs of single-component sources, fitted band by band.

    Minimises ``sum_p w_b(p) (image_b(p) - sum_i s_ib m_ib(p))**2`` with ``m_ib`` source i's
    unit-SED model convolved to band b's PSF, over the pixels some model touches (elsewhere
    the SEDs change nothing). The design matrix holds those pixels only, one band at a time.
    """
    B, H, W = blend.shape
    obs = blend.observation
    n = len(blend.sources)
    for src in blend.sources:
        src.components[0].sed[:] = 1.0
    stack = blend.convolved_sources()
    boxes = [tuple(int(v) for v in stack.boxes[i]) for i in range(n)]
    row = np.full((H, W), -1, dtype=np.int64)  # row of the design matrix of each pixel
    for y0, x0, h, w in boxes:
        row[y0 : y0 + h, x0 : x0 + w] = 0
    touched = row >= 0
    row[touched] = np.arange(int(touched.sum()))
    weights = np.asarray(obs.weights, dtype=np.float64)[:, touched]
    # pixels without data (zero weight) may hold anything, NaN included: they carry no weight
    image = np.where(weights > 0, np.asarray(obs.images, dtype=np.float64)[:, touched], 0.0)
    root = np.sqrt(weights)
    seds = np.zeros((n, B))
    for b in range(B):
        A = np.zeros((image.shape[1], n))
        for i, (y0, x0, h, w) in enumerate(boxes):
            A[row[y0 : y0 + h, x0 : x0 + w].ravel(), i] = stack.get(i)[b].ravel()
        A *= root[b][:, None]
        if np.any(A != 0):
            seds[:, b] = nnls_checked(A, image[b] * root[b], maxiter=50 * max(n, 1))
    return seds


def fallback_result(observation: Any, peaks: np.ndarray, config: Any, error: BaseException) -> Any:
    """The fallback :class:`~cdeblend.DeblendResult` of a blend whose fit raised ``error``.

    Parameters
    ----------
    observation : Observation
        The blend's data.
    peaks : numpy.ndarray
        (N, 2) int64 peaks inside the frame (already validated).
    config : DeblendConfig
        Gives the components' ``bg_thresh``.
    error : BaseException
        What the fit raised; its text is kept in ``result.error``.

    Returns
    -------
    DeblendResult
        ``fallback = True``, ``iterations = 0``, ``converged = False``, one source per peak.
    """
    t0 = time.perf_counter()
    blend = Blend(observation, psf_sources(observation, peaks, config.bg_thresh))
    seds = fit_seds_nnls(blend)
    for src, sed in zip(blend.sources, seds, strict=True):
        src.components[0].sed[:] = sed
    blend.pack()
    loss = blend.loss()
    return DeblendResult(
        blend,
        loss,
        np.array([loss]),
        0,
        False,
        np.full(len(blend.sources), np.nan),
        {"init": 0.0, "fit": time.perf_counter() - t0},
        fallback=True,
        error=f"{type(error).__name__}: {error}",
        conserved_thresh=config.conserved_thresh,
    )
