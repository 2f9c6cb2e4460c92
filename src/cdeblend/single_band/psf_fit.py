"""The PSF fit of each peak (docs/spec/single_band.md 3.1).

A PSF with a linear background, its two derivatives and the PSFs of the nearby peaks is fitted
to a stamp around the peak by weighted least squares: fit 1 without the derivative terms, fit
2 with them, and fit 2b at the centre that fit 2's derivatives point to. A peak whose best fit
is good enough (chi^2/dof below the config's cuts) with positive flux takes ``flux x PSF`` as
its template.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .. import _symmetric_cy
from .config import SingleBandConfig
from .frame import Box, Frame, Template, on_box, overlap
from .lstsq import lstsq
from .psf import PsfImages
from .templates import clip_to_nonzero

__all__ = ["PsfFit", "PsfFitter"]


@dataclass
class PsfFit:
    """The outcome of one peak's PSF fit.

    Attributes
    ----------
    skip : str or None
        Why the peak is skipped (it gets no template at all), or None.
    flags : set of str
        Peak flags the fit raised (``deblended_as_psf``, ``psf_fit_with_decenter``...).
    record : dict
        ``psf_flux``, ``psf_center`` (image frame), chi^2 and dof of each fit ({} without a
        fit).
    template : Template or None
        The PSF template, when the fit is good.
    snr : float
        S/N of the chosen fit's flux, ``flux sqrt(sum PSF^2) / sigma1`` (NaN without a fit).
    """

    skip: str | None = None
    flags: set[str] = field(default_factory=set)
    record: dict[str, Any] = field(default_factory=dict)
    template: Template | None = None
    snr: float = float("nan")


class _FitFailed(Exception):
    """A least-squares fit of the peak failed (the SVD did not converge)."""


def _solve(A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    """:func:`~cdeblend.single_band.lstsq.lstsq`, its ``LinAlgError`` as :class:`_FitFailed`."""
    try:
        return lstsq(A, b)
    except np.linalg.LinAlgError:
        raise _FitFailed from None


class _Rows(NamedTuple):
    """The weighted design matrix of one stamp's valid pixels (columns: PSF, linear
    background, neighbours, then the two derivatives), its right-hand side, the sum of the
    pixel weights (the fits' dof before the parameters), the pixels (frame coordinates) and
    the number of neighbour columns."""

    A: np.ndarray
    b: np.ndarray
    sum_w: float
    pix: np.ndarray
    n_neighbours: int


class PsfFitter:
    """Fits the PSF to the peaks of one parent.

    Parameters
    ----------
    cfg : SingleBandConfig
        The settings (``psf_chisq*``, ``tiny_footprint_size``).
    frame : Frame
        The working frame.
    psf : PsfImages
        The PSF at any position (image frame).
    centers : numpy.ndarray
        (N, 2) float (y, x) fit positions of every peak, frame coordinates.
    fwhm : float
        PSF FWHM in pixels (sets the stamp and fit radii).
    sigma1 : float
        Background noise (for :meth:`flux_snr`).
    """

    def __init__(
        self,
        cfg: SingleBandConfig,
        frame: Frame,
        psf: PsfImages,
        centers: np.ndarray,
        fwhm: float,
        sigma1: float = float("nan"),
    ) -> None:
        self.cfg = cfg
        self.frame = frame
        self.psf = psf
        self.centers = centers
        self.fwhm = fwhm
        self.sigma1 = sigma1

    def clipped(self, cy: float, cx: float) -> tuple[np.ndarray, Box, tuple | None]:
        """PSF at (cy, cx) in frame coords: (values, box, box clipped to the parent box as
        (y0, y1, x0, x1) or None)."""
        fr = self.frame
        arr, y0, x0 = self.psf.image(cy + fr.y0, cx + fr.x0)
        box = (y0 - fr.y0, x0 - fr.x0, arr.shape[0], arr.shape[1])
        return arr, box, overlap(box, fr.pbox)

    def fit(self, i: int) -> PsfFit:
        """Fit peak ``i``: the skip reason, flags, fit record and PSF template."""
        out = PsfFit()
        cy, cx = float(self.centers[i, 0]), float(self.centers[i, 1])
        psf0, box0, clip0 = self.clipped(cy, cx)
        stamp = self._stamp(cy, cx, clip0, out)
        if stamp is None:
            return out
        rows = self._rows(i, cy, cx, psf0, box0, clip0, stamp)
        if rows is None:
            out.skip = "no_valid_pixels"
            return out
        try:
            chosen = self._fit_rows(rows, cy, cx, out)
        except _FitFailed:
            out.flags.add("psf_fit_failed")
            return out
        if chosen is None:
            return out
        center, flux, good = chosen
        out.snr = self.flux_snr(center, flux)
        if not (good and flux > 0):
            return out
        out.template = self._template(center, flux)
        if out.template is not None:
            out.flags.add("deblended_as_psf")
        return out

    def fit_without(self, i: int, model: np.ndarray, own: Template) -> PsfFit | None:
        """Peak ``i``'s fit to the image minus the other templates: ``model`` (their sum
        with peak i's, frame-sized) less ``own`` (peak i's template); None when the peak
        is skipped or has no fit."""
        fr = self.frame
        rest = copy.copy(fr)
        rest.image = fr.image - (model - on_box(own.values, own.box, (0, 0, fr.h, fr.w)))
        fitter = PsfFitter(self.cfg, rest, self.psf, self.centers, self.fwhm, self.sigma1)
        fit = fitter.fit(i)
        return fit if fit.skip is None and fit.record else None

    def _stamp(self, cy: float, cx: float, clip0, out: PsfFit) -> Box | None:
        """The fit stamp (the peak's R1 box cut to the parent box), or None with
        ``out.skip`` set."""
        iy, ix = int(cy), int(cx)
        if clip0 is None or not (clip0[0] <= iy < clip0[1] and clip0[2] <= ix < clip0[3]):
            out.skip = "out_of_bounds"
            return None
        R1 = math.ceil(1.5 * self.fwhm)
        pb = self.frame.pbox
        sy0 = max(math.floor(cy - R1), pb[0])
        sy1 = min(math.ceil(cy + R1), pb[0] + pb[2] - 1)
        sx0 = max(math.floor(cx - R1), pb[1])
        sx1 = min(math.ceil(cx + R1), pb[1] + pb[3] - 1)
        if sy1 < sy0 or sx1 < sx0:
            out.skip = "out_of_bounds"
            return None
        if min(sy1 - sy0 + 1, sx1 - sx0 + 1) <= max(self.cfg.tiny_footprint_size, 2):
            out.skip = "tiny_footprint"
            return None
        return (sy0, sx0, sy1 - sy0 + 1, sx1 - sx0 + 1)

    def _rows(self, i, cy, cx, psf0, box0, clip0, stamp: Box) -> _Rows | None:
        """The fit's rows on the stamp's valid pixels (None when there are none)."""
        fr = self.frame
        sy0, sx0, sh, sw = stamp
        sy1, sx1 = sy0 + sh - 1, sx0 + sw - 1
        # The PSF on the stamp grown by one pixel (for the central differences), 0 outside
        # its box clipped to the parent box.
        y0c, y1c, x0c, x1c = clip0
        psig = on_box(psf0, box0, (sy0 - 1, sx0 - 1, sh + 2, sw + 2))
        if y0c > sy0 - 1 or y1c < sy1 + 2 or x0c > sx0 - 1 or x1c < sx1 + 2:
            gy = np.arange(sy0 - 1, sy1 + 2)[:, None]
            gx = np.arange(sx0 - 1, sx1 + 2)[None, :]
            psig *= (gy >= y0c) & (gy < y1c) & (gx >= x0c) & (gx < x1c)
        R0, R1 = math.ceil(self.fwhm), math.ceil(1.5 * self.fwhm)
        nb = self._neighbours(i, cy, cx, R1 + min(psf0.shape) / 2, stamp)
        K = nb.shape[0]
        Aw = np.empty((sh * sw, 6 + K))
        bw = np.empty(sh * sw)
        rw = np.empty(sh * sw)
        pix = np.empty((sh * sw, 2), dtype=np.int64)
        m = _symmetric_cy.psf_fit_rows(
            fr.image,
            fr.variance,
            fr.fp,
            sy0,
            sx0,
            cy,
            cx,
            float(R0),
            float(R1),
            psig,
            y0c,
            y1c,
            x0c,
            x1c,
            nb,
            Aw,
            bw,
            rw,
            pix,
        )
        if m == 0:
            return None
        return _Rows(Aw[:m], bw[:m], float(rw[:m].sum()), pix[:m], K)

    def _neighbours(self, i: int, cy: float, cx: float, r2: float, stamp: Box) -> np.ndarray:
        """(K, h, w) PSFs on the stamp of the other peaks within ``r2`` whose PSF box
        overlaps the stamp."""
        neigh = []
        for j in range(len(self.centers)):
            if j == i:
                continue
            cjy, cjx = float(self.centers[j, 0]), float(self.centers[j, 1])
            if (cjy - cy) ** 2 + (cjx - cx) ** 2 > r2 * r2:
                continue
            arr, bx, _ = self.clipped(cjy, cjx)
            if overlap(bx, stamp) is None:
                continue
            neigh.append(on_box(arr, bx, stamp))
        return np.stack(neigh) if neigh else np.zeros((0, stamp[2], stamp[3]))

    def _fit_rows(self, rows: _Rows, cy: float, cx: float, out: PsfFit):
        """Fits 1, 2 and 2b; sets ``out.record`` and returns (centre, flux, good), or None
        (with a flag) when the fits have no degrees of freedom."""
        cfg = self.cfg
        n1 = 4 + rows.n_neighbours
        n2 = n1 + 2
        a1, chi1 = _solve(rows.A[:, :n1], rows.b)
        a2, chi2 = _solve(rows.A, rows.b)
        dof1, dof2 = rows.sum_w - n1, rows.sum_w - n2
        if dof1 <= 0 or dof2 <= 0:
            out.flags.add("psf_fit_bad_dof")
            return None
        q1, q2 = chi1 / dof1, chi2 / dof2
        ispsf1 = q1 < cfg.psf_chisq1
        ispsf2 = q2 < cfg.psf_chisq2
        rec: dict[str, Any] = {
            "chisq1": chi1,
            "dof1": dof1,
            "chisq2": chi2,
            "dof2": dof2,
            "n_neighbours": rows.n_neighbours,
        }
        shifted = None
        if ispsf2:
            shift = _decenter(a2, n1)
            if shift is None:
                ispsf2 = False
                out.flags.add("psf_fit_big_decenter")
            else:
                ny, nx = cy + shift[0], cx + shift[1]
                refit = self._refit_at(rows, n1, ny, nx)
                if refit is None:
                    ispsf2 = False
                else:
                    a2, chib = refit
                    q2 = chib / (rows.sum_w - n1)
                    rec.update(chisq2b=chib, dof2b=rows.sum_w - n1)
                    ispsf2 = q2 < cfg.psf_chisq2b
                    shifted = (ny, nx)
        if shifted is not None and ((ispsf1 and ispsf2 and q2 < q1) or (ispsf2 and not ispsf1)):
            center, flux = shifted, float(a2[0])
            out.flags.add("psf_fit_with_decenter")
        else:
            center, flux = (cy, cx), float(a1[0])
        rec.update(q1=q1, q2=q2, best="2b" if center != (cy, cx) else "1")
        fr = self.frame
        out.record = {"psf_flux": flux, "psf_center": (center[0] + fr.y0, center[1] + fr.x0), **rec}
        return center, flux, (ispsf1 or ispsf2)

    def _refit_at(self, rows: _Rows, n1: int, ny: float, nx: float):
        """Fit 2b: fit 1 with the PSF moved to (ny, nx); (coefficients, chi^2), or None when
        the new centre leaves the PSF's clipped box."""
        psf_b, box_b, clip_b = self.clipped(ny, nx)
        iny, inx = int(ny), int(nx)
        if clip_b is None or not (clip_b[0] <= iny < clip_b[1] and clip_b[2] <= inx < clip_b[3]):
            return None
        Ab = rows.A[:, :n1].copy()
        # Column 0 becomes the shifted PSF (0 outside its clipped box).
        py_, px_ = rows.pix[:, 0], rows.pix[:, 1]
        inside = (py_ >= clip_b[0]) & (py_ < clip_b[1])
        inside &= (px_ >= clip_b[2]) & (px_ < clip_b[3])
        col = np.zeros(len(rows.b))
        col[inside] = psf_b[py_[inside] - box_b[0], px_[inside] - box_b[1]]
        Ab[:, 0] = col * rows.A[:, 1]
        return _solve(Ab, rows.b)

    def flux_snr(self, center: tuple[float, float], flux: float) -> float:
        """S/N of a PSF flux at ``center`` (frame coordinates) on a background of noise
        ``sigma1``: ``flux sqrt(sum PSF^2) / sigma1``."""
        arr, _, _ = self.clipped(*center)
        return float(flux * math.sqrt(float(np.sum(np.square(arr)))) / self.sigma1)

    def psf_template(self, fit: PsfFit) -> Template | None:
        """The PSF template of a fit's chosen centre and flux, whatever its chi^2 (None
        when the flux is not positive or the PSF misses the parent box)."""
        if not fit.record or not fit.record["psf_flux"] > 0:
            return None
        cy, cx = fit.record["psf_center"]
        fr = self.frame
        return self._template((cy - fr.y0, cx - fr.x0), float(fit.record["psf_flux"]))

    def _template(self, center: tuple[float, float], flux: float) -> Template | None:
        """flux x PSF on the parent footprint within the PSF box, clipped to non-zero."""
        fr = self.frame
        arr, box, clip = self.clipped(*center)
        if clip is None:
            return None
        y0, y1, x0, x1 = clip
        vals = np.maximum(arr[y0 - box[0] : y1 - box[0], x0 - box[1] : x1 - box[1]] * flux, 0.0)
        tfp = np.ascontiguousarray(fr.fp[y0:y1, x0:x1])
        vals = np.ascontiguousarray(vals * tfp)
        t = Template((y0, x0, y1 - y0, x1 - x0), vals, tfp, "psf")
        clip_to_nonzero(t)
        return t


def _decenter(a2: np.ndarray, n1: int) -> tuple[float, float] | None:
    """(dy, dx) of fit 2's centre from its derivative terms; None beyond a pixel (or not
    finite)."""
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero PSF amplitude
        ddx, ddy = -a2[n1] / a2[0], -a2[n1 + 1] / a2[0]  # is rejected just below
    if abs(ddx) >= 1 or abs(ddy) >= 1 or not (math.isfinite(ddx) and math.isfinite(ddy)):
        return None
    return ddy, ddx
