"""Flux uncertainties and the deblending metrics of a fitted blend.

Two kinds of flux error, per child and band:

* the **conserved** flux ``F_i = sum_p s_i(p) I(p)``, with the child's share
  ``s_i = max(0, T_i) / sum_j max(0, T_j)`` of each pixel, has the variance
  ``sum_p s_i(p)^2 V(p)`` when the shares are held fixed (pixels without data, weight 0,
  count neither in the flux nor in its variance);
* the **model** flux, linear in the SEDs when the morphologies are held, has the variance
  ``g^T F^-1 g`` from the Fisher matrix ``F_kl = sum_p C_k(p) C_l(p) / V(p)`` of the
  components' PSF-convolved unit-SED morphologies ``C_k`` (one matrix per band) and
  ``g_k`` the morphology sums of the source's components.

Both are the statistical (noise) errors only: the error of the shares or of the
morphologies themselves (deblending error) is on top; ``bench/flux_errors.py`` measures
both on simulations.

The metrics follow the LSST pipeline's definitions (scarlet lite's ``setDeblenderMetrics``:
model space, per band), see :func:`blend_metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _adam_cy, _apportion_cy
from .apportion import FlatStack
from .box import overlapping_pairs
from .source_metrics import boxes_inside, chi_image, per_source_metrics, per_source_metrics_numpy

__all__ = [
    "CATALOG_COLUMNS",
    "BlendMetrics",
    "blend_metrics",
    "conserved_flux_errors",
    "deblend_flux_errors",
    "fisher_flux_errors",
    "model_flux_errors",
    "variance_plane",
]

#: Unit and description of the catalog columns this module fills (name -> (unit, text)).
CATALOG_COLUMNS: dict[str, tuple[str, str]] = {
    "flux_conserved_err": (
        "image",
        "Standard deviation of flux_conserved from the variance plane and the child's share "
        "of each pixel (shares held fixed; noise only); 0 in a band where the child has no "
        "share of any pixel (its flux there is 0 by construction: see flux_model_err); a "
        "parent's: of its footprint flux",
    ),
    "flux_model_err": (
        "image",
        "Standard deviation of flux_model from the SED fit's Fisher matrix with the "
        "morphologies held (noise only); NaN when the flux is unconstrained",
    ),
    "flux_deblend_err": (
        "image",
        "Deblending uncertainty of the child's fluxes (multi band): the neighbours' convolved "
        "model flux in the child's share of the pixels; add it in quadrature to "
        "flux_conserved_err (and, with flux_conserved - flux_model, to flux_model_err) "
        "for the error against the truth (docs/trust.md)",
    ),
    "flux_wing": (
        "image",
        "Single band: the child's estimated light outside its parent's footprint (and its "
        "pixels without data), which flux_conserved misses; add it in quadrature to "
        "flux_conserved_err and flux_deblend_err for the error against the truth "
        "(docs/trust.md); NaN for multi band",
    ),
    "deblend_blendedness": (
        "",
        "Bosch et al. 2018 blendedness 1 - sum(m^2) / sum(m M) of the child's model m and "
        "the sum M of its parent's models (model space, per band; NaN for zero model flux)",
    ),
    "deblend_fluxOverlap": (
        "image",
        "Model flux of the neighbours inside the child's model footprint (per band)",
    ),
    "deblend_fluxOverlapFraction": (
        "",
        "deblend_fluxOverlap / the child's model flux (per band; NaN for zero model flux)",
    ),
    "deblend_maxOverlap": (
        "image",
        "Largest neighbours' model value in one pixel of the child's model footprint",
    ),
    "deblend_dataCoverage": (
        "",
        "Fraction of the child's PSF-convolved model footprint with data (non-zero weight)",
    ),
    "deblend_edgePixels": (
        "",
        "The child's model has flux on the edge of its parent's box",
    ),
    "deblend_zeroFlux": (
        "",
        "No conserved flux was given to the child in this band",
    ),
    "chi2_reduced": (
        "",
        "sum(w (image - model)^2) / number of data values, over the child's convolved model "
        "footprint (children) or the parent's data (parents); no parameter is subtracted",
    ),
    "deblend_runtime": ("ms", "Wall-clock time of the parent's deblend (init + fit)"),
}


def variance_plane(observation) -> np.ndarray:
    """(B, H, W) float64 variance of the pixels with data, 0 elsewhere.

    A pixel has data when its weight is positive; its variance is the observation's
    ``variance`` there (non-finite values count as no data).
    """
    var = np.asarray(observation.variance, dtype=np.float64)
    good = (np.asarray(observation.weights) > 0) & np.isfinite(var)
    return np.where(good, var, 0.0)


def _footprint_u8(mask: np.ndarray | None, H: int, W: int) -> np.ndarray:
    """The kernels' (H, W) uint8 footprint: ``mask != 0``, or every pixel for None."""
    if mask is None:
        return np.ones((H, W), dtype=np.uint8)
    return np.ascontiguousarray(np.asarray(mask) != 0, dtype=np.uint8)


def conserved_flux_errors(
    templates: FlatStack, variance: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """Standard deviation of each child's conserved flux, per band.

    Parameters
    ----------
    templates : FlatStack
        The children's templates (negative values count as 0), as given to
        :func:`cdeblend.apportion_flux`.
    variance : numpy.ndarray
        (B, H, W) variance of the image, 0 where there is no data.
    mask : numpy.ndarray, optional
        (H, W) parent footprint; pixels outside it go to no child.

    Returns
    -------
    numpy.ndarray
        (N, B) ``sqrt(sum_p (max(0, T_i) / sum_j max(0, T_j))^2 V)``.
    """
    var = np.ascontiguousarray(variance, dtype=np.float64)
    if var.ndim == 2:
        var = var[None]
    B, H, W = var.shape
    if B != templates.bands:
        raise ValueError(f"variance has {B} bands, templates have {templates.bands}")
    mask_u8 = _footprint_u8(mask, H, W)
    flat = np.ascontiguousarray(templates.flat, dtype=np.float64)
    tsum = np.zeros((B, H, W))
    _apportion_cy.template_sum(flat, templates.offsets, templates.boxes, mask_u8, tsum)
    # var * t^2 / s^2 is the apportioning kernel run on t^2 and s^2 (t > 0 iff t^2 > 0)
    clipped2 = np.square(np.maximum(flat, 0.0))
    out = np.empty_like(flat)
    _apportion_cy.apportion(
        var, np.square(tsum), clipped2, templates.offsets, templates.boxes, mask_u8, out
    )
    return np.sqrt(FlatStack.like(out, templates).sums())


def deblend_flux_errors(
    templates: FlatStack, has_data: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """Deblending uncertainty of each child's flux: the neighbours' light in its share.

    ``sum_p s_i(p) (S(p) - T_i(p))`` with ``T_i = max(0, T_i)``, ``S = sum_j T_j`` and
    ``s_i = T_i / S`` the share the conserved flux takes of pixel ``p``: the flux of the
    other children's templates that the child's share draws from the pixels it shares
    with them. If a share is wrong by a fraction of itself, the conserved flux is wrong by
    about this much; an isolated child has 0. ``docs/trust.md`` shows, on simulations with
    truth and without a free coefficient, that the noise error and this one added in
    quadrature give pulls of width about 1 in every blendedness bin.

    Parameters
    ----------
    templates : FlatStack
        The children's templates (negative values count as 0), as given to
        :func:`cdeblend.apportion_flux`.
    has_data : numpy.ndarray
        (B, H, W) or (H, W) bool, the pixels with data (the others give flux to no child).
    mask : numpy.ndarray, optional
        (H, W) parent footprint; pixels outside it go to no child.

    Returns
    -------
    numpy.ndarray
        (N, B) ``sum_p T_i (S - T_i) / S`` over the pixels with data.
    """
    data = np.asarray(has_data)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or data.shape[0] != templates.bands:
        raise ValueError(
            f"has_data must be (B, H, W) with B = {templates.bands} bands, got {data.shape}"
        )
    B, H, W = data.shape
    mask_u8 = _footprint_u8(mask, H, W)
    data = np.ascontiguousarray(data != 0, dtype=np.float64)
    flat = np.ascontiguousarray(templates.flat, dtype=np.float64)
    tsum = np.zeros((B, H, W))
    _apportion_cy.template_sum(flat, templates.offsets, templates.boxes, mask_u8, tsum)
    # T (S - T) / S = T - T^2 / S: the apportioning kernel (image * T / S) run with the
    # image S and with the image 1 and templates T^2, both only where there are data
    own = np.empty_like(flat)
    _apportion_cy.apportion(
        data * tsum, tsum, flat, templates.offsets, templates.boxes, mask_u8, own
    )
    squared = np.empty_like(flat)
    _apportion_cy.apportion(
        data,
        tsum,
        np.square(np.maximum(flat, 0.0)),
        templates.offsets,
        templates.boxes,
        mask_u8,
        squared,
    )
    sums = FlatStack.like(own - squared, templates).sums()
    # round-off can leave -1e-13 where a child is alone
    return np.maximum(sums, 0.0)


def _noise_and_deblend_errors(
    templates: FlatStack,
    variance: np.ndarray,
    has_data: np.ndarray,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``conserved_flux_errors(templates, variance, mask)`` and
    ``deblend_flux_errors(templates, has_data, mask)`` with the templates' sum and their
    clipped squares computed once: the same operations on the same values, so the same
    numbers (tested), with a third fewer numpy calls holding the GIL per parent."""
    var = np.ascontiguousarray(variance, dtype=np.float64)
    B, H, W = var.shape
    if B != templates.bands:
        raise ValueError(f"variance has {B} bands, templates have {templates.bands}")
    data = np.asarray(has_data)
    if data.shape != (B, H, W):
        raise ValueError(f"has_data must be (B, H, W) = {(B, H, W)}, got {data.shape}")
    mask_u8 = _footprint_u8(mask, H, W)
    flat = np.ascontiguousarray(templates.flat, dtype=np.float64)
    offsets, boxes = templates.offsets, templates.boxes
    tsum = np.zeros((B, H, W))
    _apportion_cy.template_sum(flat, offsets, boxes, mask_u8, tsum)
    clipped2 = np.square(np.maximum(flat, 0.0))
    out = np.empty_like(flat)
    _apportion_cy.apportion(var, np.square(tsum), clipped2, offsets, boxes, mask_u8, out)
    noise = np.sqrt(FlatStack.like(out, templates).sums())
    data = np.ascontiguousarray(data != 0, dtype=np.float64)
    own = np.empty_like(flat)
    _apportion_cy.apportion(data * tsum, tsum, flat, offsets, boxes, mask_u8, own)
    squared = np.empty_like(flat)
    _apportion_cy.apportion(data, tsum, clipped2, offsets, boxes, mask_u8, squared)
    deblend = np.maximum(FlatStack.like(own - squared, templates).sums(), 0.0)
    return noise, deblend


def result_errors_and_metrics(result) -> tuple[BlendMetrics, np.ndarray, np.ndarray, np.ndarray]:
    """A :class:`~cdeblend.DeblendResult`'s ``metrics()``, ``flux_err``,
    ``conserved_flux_err`` and ``deblend_flux_err`` in one call (the catalog's summary of a
    parent), sharing the variance plane, the pixels with data and the templates' sum that
    each of them would compute again: the same numbers."""
    obs = result.blend.observation
    has_data = np.asarray(obs.weights) > 0
    var = variance_plane(obs)
    metrics = blend_metrics(result, has_data)
    flux_err = model_flux_errors(result, var)
    noise, deblend = _noise_and_deblend_errors(
        result._convolved_stack(), var, has_data, result.footprint
    )
    return metrics, flux_err, noise, deblend


def fisher_matrices(shapes: FlatStack, ivar: np.ndarray) -> np.ndarray:
    """(B, K, K) Fisher matrices ``sum_p C_k C_l ivar`` of linear amplitudes of the shapes.

    Parameters
    ----------
    shapes : FlatStack
        (B, h, w) shape ``C_k`` of each amplitude in the image frame.
    ivar : numpy.ndarray
        (B, H, W) inverse variance (0 without data).
    """
    K, B = len(shapes), shapes.bands
    F = np.zeros((B, K, K))
    # one kernel call for every overlapping pair (it sums in the order of the einsum of
    # each pair's shared pixels it replaces, see _apportion_cy.fisher_pairs): a loop of
    # small numpy calls here held the GIL for a third of a parent's summary
    _apportion_cy.fisher_pairs(
        np.ascontiguousarray(shapes.flat),
        shapes.offsets,
        np.ascontiguousarray(shapes.boxes, dtype=np.int64),
        overlapping_pairs(shapes.boxes),
        np.ascontiguousarray(ivar, dtype=np.float64),
        F,
    )
    return F


def fisher_flux_errors(
    shapes: FlatStack, ivar: np.ndarray, gain: np.ndarray, owner: np.ndarray, n: int
) -> np.ndarray:
    """Standard deviation of linear fluxes ``f_i = sum_{owner[k] = i} gain_k a_k``.

    The amplitudes ``a_k`` of ``shapes`` are fitted jointly by weighted least squares (per
    band); the flux variance is ``g_i^T F^-1 g_i``. A flux that depends on an amplitude the
    data do not constrain (no overlap with data, or degenerate with others) is NaN.

    Parameters
    ----------
    shapes : FlatStack
        K shapes (B, h, w) in the image frame.
    ivar : numpy.ndarray
        (B, H, W) inverse variance, 0 without data.
    gain : numpy.ndarray
        (K,) flux per unit amplitude of each shape (its model-space sum).
    owner : numpy.ndarray
        (K,) index of the flux each amplitude belongs to.
    n : int
        Number of fluxes.

    Returns
    -------
    numpy.ndarray
        (n, B); 0 for a flux with no amplitude.
    """
    B = shapes.bands
    K = len(shapes)
    out = np.zeros((n, B))
    if K == 0:
        return out
    F = fisher_matrices(shapes, ivar)
    G = np.zeros((n, K))
    G[owner, np.arange(K)] = gain
    d = np.sqrt(np.diagonal(F, axis1=1, axis2=2))  # (B, K)
    if (d > 0).all():
        # the usual case, every amplitude with data in every band: one batched
        # eigendecomposition and product (the same LAPACK and BLAS calls per band as the
        # loop below, with fewer numpy calls that hold the GIL)
        Gl = G / d[:, None, :]
        w, V = np.linalg.eigh(F / (d[:, :, None] * d[:, None, :]))
        proj = Gl @ V
        return _flux_sigma_bands(w, proj, Gl)
    for b in range(B):
        live = d[b] > 0
        # scale to unit diagonal before inverting (the amplitudes differ by decades); one
        # eigendecomposition gives the pseudo-inverse and the null space
        Fl = F[b][np.ix_(live, live)] / np.outer(d[b, live], d[b, live])
        Gl = G[:, live] / d[b, live]
        w, V = np.linalg.eigh(Fl)
        # a component without data leaves its fluxes unconstrained
        out[:, b] = _flux_sigma(w, Gl @ V, Gl, (G[:, ~live] != 0).any(axis=1))
    return out


def _flux_sigma(w: np.ndarray, proj: np.ndarray, Gl: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """(n,) flux standard deviations of one band from the eigenvalues ``w`` of the scaled
    Fisher matrix, the fluxes' scaled gradients ``Gl`` and their projections ``proj`` on
    the eigenvectors; NaN where ``dead`` or where a gradient has a null-space part."""
    keep = w > 1e-10 * max(w.max(initial=0.0), 1e-300)
    var = (proj[:, keep] ** 2 / w[keep]).sum(axis=1)
    dead = dead | (np.abs(proj[:, ~keep]).max(axis=1, initial=0.0) > 1e-8 * np.abs(Gl).sum(axis=1))
    return np.where(dead, np.nan, np.sqrt(var))


def _flux_sigma_bands(w: np.ndarray, proj: np.ndarray, Gl: np.ndarray) -> np.ndarray:
    """(n, B) :func:`_flux_sigma` of every band (``w`` (B, K), ``proj`` and ``Gl`` (B, n, K))
    with no flux marked dead beforehand. When every band keeps every eigenvalue (the usual
    case) no flux is NaN and all bands go in two numpy calls. :func:`_flux_sigma` sums an
    (n, K) array in Fortran order (what ``proj[:, keep]`` gives), which numpy sums over K
    one term after the other; the terms here lie in that order too (each band's (n, K)
    block is a transposed (K, n) one), so the sums are the same to the bit (a C-ordered
    array would be summed pairwise, which rounds differently)."""
    top = np.maximum(w.max(axis=1, initial=0.0), 1e-300)
    keep = w > 1e-10 * top[:, None]
    if not keep.all():
        dead = np.zeros(proj.shape[1], dtype=bool)
        return np.stack([_flux_sigma(w[b], proj[b], Gl[b], dead) for b in range(len(w))], axis=1)
    # with every eigenvalue kept no gradient has a null-space part: none is NaN
    B, n, K = proj.shape
    terms = np.empty((B, K, n)).transpose(0, 2, 1)  # (B, n, K), each band Fortran-ordered
    np.divide(proj**2, w[:, None, :], out=terms)
    return np.sqrt(terms.sum(axis=2)).T


def _grown_boxes(boxes: np.ndarray, convolver) -> np.ndarray:
    """(K, 4) ``convolver.grown_box(box)[1]`` of every non-empty box, ``(y0, x0, 0, 0)`` of
    an empty one: the box clipped to the frame, grown by the kernel half-size, clipped
    again (box.clip's arithmetic, for all boxes at once)."""
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    grown = convolver.grown_boxes(boxes)[1]
    empty = boxes[:, 2] * boxes[:, 3] == 0
    if empty.any():
        grown[empty] = boxes[empty] * np.array([1, 1, 0, 0])
    return grown


def _component_shapes(blend, packed) -> tuple[FlatStack, np.ndarray]:
    """Each component's morphology (unit SED) convolved to every band's PSF, and its sum.

    Returns the (B, gh, gw) shapes on the grown boxes (batched FFT: round-off off the support)
    and the (K,) morphology sums.
    """
    obs = blend.observation
    B = blend.shape[0]
    K = len(packed.comp)
    boxes = packed.comp[:, :4]
    flat = packed.morph
    # the (h, w) views of the packed morphologies (morph_view's, without a call per view)
    morphs = [flat[o : o + h * w].reshape(h, w) for _, _, h, w, o, _, _ in packed.comp.tolist()]
    grown = _grown_boxes(packed.comp[:, :4], obs.convolver)
    gsizes = B * grown[:, 2] * grown[:, 3]
    goffsets = np.zeros(K, dtype=np.intp)
    goffsets[1:] = np.cumsum(gsizes)[:-1]
    # the batched FFT of the 2-D morphologies: its round-off outside the true support only
    # adds terms ~1e-7 of the Fisher sums
    out = np.zeros(int(gsizes.sum()), dtype=obs.dtype)
    obs.convolver.convolve_morphs_into(morphs, boxes, out, goffsets)
    sums = np.array([m.sum() for m in morphs]).reshape(K)
    return FlatStack.of_clipped(out, grown, B), sums


def model_flux_errors(result, var: np.ndarray | None = None) -> np.ndarray:
    """(N, B) standard deviation of each source's model flux (:attr:`DeblendResult.fluxes`)
    from the SED fit's Fisher matrix with the morphologies held (``var``: the observation's
    :func:`variance_plane` when the caller has it)."""
    blend = result.blend
    B = blend.shape[0]
    n = len(blend.sources)
    packed = result._packed_now()
    if len(packed.comp) == 0:
        return np.zeros((n, B))
    shapes, sums = _component_shapes(blend, packed)
    if var is None:
        var = variance_plane(blend.observation)
    ivar = np.divide(1.0, var, out=np.zeros_like(var), where=var > 0)
    owner = np.repeat(np.arange(n), [len(s.components) for s in blend.sources])
    return fisher_flux_errors(shapes, ivar, sums, owner, n)


# ----------------------------------------------------------------------------- metrics
@dataclass
class BlendMetrics:
    """The deblending metrics of one fitted blend (rows in source order).

    Per child (``(N, B)`` unless noted), in model space as the LSST pipeline:

    Attributes
    ----------
    blendedness : numpy.ndarray
        ``1 - sum(m_i^2) / sum(m_i M)`` with ``M`` the sum of all sources' models
        (Bosch et al. 2018); NaN for a source without model flux.
    flux_overlap : numpy.ndarray
        ``sum((M - m_i) * fp_i)``, ``fp_i`` the pixels where ``m_i > 0`` in any band.
    flux_overlap_fraction : numpy.ndarray
        ``flux_overlap / sum(m_i)`` (NaN where the model flux is 0).
    max_overlap : numpy.ndarray
        ``max((M - m_i) * fp_i)`` (0 for an empty footprint).
    chi2_reduced : numpy.ndarray
        (N,) ``sum(w r^2) / n`` over the data values (weight > 0) of the pixels where the
        source's convolved model is positive in any band, ``r = image - conv(M)``; NaN
        without data.
    data_coverage : numpy.ndarray
        Fraction of those pixels with data, per band (NaN for an empty footprint).
    edge_pixels : numpy.ndarray
        (N,) bool: the model is positive on the blend's outer rows or columns.
    zero_flux : numpy.ndarray
        (N, B) bool: the conserved flux is 0.
    parent_chi2_reduced : float
        ``2 loss / n`` over every data value of the blend.
    runtime : float
        Seconds spent initialising and fitting (0 when unknown).
    iterations : int
    converged : bool
    """

    blendedness: np.ndarray
    flux_overlap: np.ndarray
    flux_overlap_fraction: np.ndarray
    max_overlap: np.ndarray
    chi2_reduced: np.ndarray
    data_coverage: np.ndarray
    edge_pixels: np.ndarray
    zero_flux: np.ndarray
    parent_chi2_reduced: float
    runtime: float
    iterations: int
    converged: bool


def _source_models(blend, packed) -> FlatStack:
    """Each source's model-space model on its box (float64)."""
    B = blend.shape[0]
    # the tables from plain-int rows (a numpy call per step held the GIL)
    rows, a = [], 0
    for s in blend.sources:
        rows.append((a, a + len(s.components)))
        a += len(s.components)
    ranges = np.array(rows, dtype=np.int64).reshape(-1, 2)
    boxes = np.array([s.box for s in blend.sources], dtype=np.int64).reshape(-1, 4)
    # the sources' boxes hold their components', inside the blend (checked when packed)
    stack = FlatStack.of_clipped(np.empty(int((B * boxes[:, 2] * boxes[:, 3]).sum())), boxes, B)
    _adam_cy.render_sources(
        packed.sed, packed.morph, packed.comp, ranges, boxes, stack.flat, stack.offsets[:-1].copy()
    )
    return stack


def blend_metrics(result, has_data: np.ndarray | None = None) -> BlendMetrics:
    """The metrics of :class:`BlendMetrics` for a :class:`~cdeblend.DeblendResult`
    (``has_data``: the observation's ``weights > 0`` when the caller has it)."""
    blend = result.blend
    obs = blend.observation
    B, H, W = blend.shape
    packed = result._packed_now()
    models = _source_models(blend, packed)
    total = np.zeros((B, H, W))
    _adam_cy.render(packed.sed, packed.morph, packed.comp, total)
    weights = np.asarray(obs.weights)
    if has_data is None:
        has_data = weights > 0
    conv = result._convolved_stack()
    inside = boxes_inside(models, conv, H, W)
    chi = chi_image(conv, np.asarray(obs.images), weights, inside)

    per_source = per_source_metrics if inside else per_source_metrics_numpy
    blendedness, overlap, fraction, max_overlap, chi2, coverage, edge = per_source(
        models, total, conv, has_data, chi
    )
    cons = result.conserved_fluxes
    ndata = int(has_data.sum())
    timing = getattr(result, "timing", {}) or {}
    return BlendMetrics(
        blendedness=blendedness,
        flux_overlap=overlap,
        flux_overlap_fraction=fraction,
        max_overlap=max_overlap,
        chi2_reduced=chi2,
        data_coverage=coverage,
        edge_pixels=edge,
        zero_flux=np.asarray(cons == 0),
        parent_chi2_reduced=float(chi.sum() / ndata) if ndata else float("nan"),
        runtime=float(sum(timing.values())),
        iterations=int(result.iterations),
        converged=bool(result.converged),
    )
