"""Least-squares SEDs of components with fixed morphologies, bounded in memory.

With the morphologies ``m_k`` fixed, the SEDs solve, band by band, the linear least-squares
problem ``min_s || sum_k s_k conv_b(m_k) - d_b ||^2``. The reference builds the design matrix
``A_b = [vec(conv_b(m_k))]`` over every pixel of the blend, i.e. ``B x K x H x W`` numbers, which
explodes for large blends. Here the same minimum-norm solution comes from the normal equations
``G_b s_b = r_b`` with

* ``c_{k,b} = conv_b(m_k)`` computed only on ``m_k``'s box grown by the kernel half-size,
* ``G_b[k, l] = <c_{k,b}, c_{l,b}>`` summed over the overlap of the two grown boxes (zero when
  they do not overlap; overlapping pairs are found by a sweep over the sorted boxes),
* ``r_b[k] = <c_{k,b}, d_b>`` over the grown box of ``k``,

accumulated in float64, and a symmetric eigen-decomposition pseudo-inverse of each connected
block of ``G_b``, which reproduces the minimum-norm solution of ``numpy.linalg.lstsq`` when
components are degenerate (identical morphologies, PSF components on top of each other).
Memory is ``O(sum_k B x grown area + nnz(G))`` instead of ``O(B K H W)``.

With ``solver="nnls"`` each block is solved non-negatively: by the dense active set
(``nnls_gram``, cost about cubic in the block size) up to ``_SPARSE_NNLS`` components, above
by the sparse solver of ``_spectra_cy`` (coordinate descent and exact passive solves on
envelope Cholesky factors, about linear in the block size for components that overlap only
their neighbours); both return the unique minimiser up to round-off.

The convolutions, the products and the sparse solver's bands run on the fit's threads
(:func:`cdeblend._threads.num_threads`), in parts that are each computed alone: the SEDs do
not depend on the thread count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np

from ._nnls import nnls_checked
from ._spectra_cy import (
    cholesky_upper,
    connected_groups,
    cuthill_mckee,
    data_products,
    gram_pairs,
    nnls_gram,
    nnls_sparse,
)
from ._threads import num_threads
from .box import as_box, overlapping_pairs
from .observation import Observation

__all__ = ["fit_seds", "fit_seds_checked", "overlapping_pairs"]

#: Overlap groups with more components than this are solved by the sparse NNLS
#: (``nnls_sparse``, cost about linear in the group size) instead of the dense active set
#: (``nnls_gram``, cost about cubic); both return the unique minimiser up to round-off. Below
#: it the dense method is as fast, and small blends keep their bit-for-bit results.
_SPARSE_NNLS = 64
#: Fewest Gram pairs or components that the SED fit's products hand to a thread of their own.
_MIN_PART_ROWS = 256


def _in_parts(fn: Callable[[int, int], object], n: int) -> None:
    """``fn(a, b)`` over rows ``[a, b)`` of ``[0, n)``, in parts on the fit's threads
    (:func:`cdeblend._threads.num_threads`; a few parts per thread, as rows differ in cost).
    Every row is computed alone by the same call, so the results do not depend on the
    count."""
    nt = num_threads()
    if nt <= 1 or n < _MIN_PART_ROWS * 2:
        fn(0, n)
        return
    step = max(-(-n // (4 * nt)), _MIN_PART_ROWS)
    with ThreadPoolExecutor(nt) as pool:
        list(pool.map(lambda a: fn(a, min(a + step, n)), range(0, n, step)))


def _gram_rows(flat, offsets, grown, pairs, weights, weighted, out, a: int, b: int) -> None:
    """``gram_pairs`` of pairs ``[a, b)`` (their rows of ``out``)."""
    gram_pairs(flat, offsets, grown, pairs[a:b], weights, weighted, out[a:b])


def _data_rows(flat, offsets, grown, data, weights, weighted, out, a: int, b: int) -> None:
    """``data_products`` of components ``[a, b)`` (their rows of ``out``)."""
    data_products(flat, offsets[a:b], grown[a:b], data, weights, weighted, out[a:b])


def _groups(pairs: np.ndarray, n: int) -> tuple[int, np.ndarray]:
    """Connected components of the overlap graph: (number of groups, (n,) labels), groups
    numbered in the order of their first member."""
    labels = np.empty(n, dtype=np.int32)
    count = connected_groups(np.ascontiguousarray(pairs, dtype=np.intp).reshape(-1, 2), n, labels)
    return int(count), labels


def _min_norm_solve(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Minimum-norm solution of ``gram x = rhs`` for a symmetric positive semi-definite matrix.

    Eigenvalues below ``eps * n * max_eigenvalue`` are treated as zero (the floating-point noise
    of forming the normal equations), which mirrors the SVD cut-off of ``numpy.linalg.lstsq``.
    """
    vals, vecs = np.linalg.eigh(gram)
    top = vals.max(initial=0.0)
    if top <= 0:
        return np.zeros_like(rhs)
    keep = vals > np.finfo(np.float64).eps * gram.shape[0] * top
    proj = vecs[:, keep].T @ rhs
    return vecs[:, keep] @ (proj / vals[keep])


def _nnls_solve(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Non-negative minimiser of ``x^T G x - 2 x^T r`` (i.e. of ``||A x - d||^2``).

    One system of :func:`_nnls_solve_bands`.
    """
    gram = np.ascontiguousarray(gram, dtype=np.float64)
    rhs = np.ascontiguousarray(rhs, dtype=np.float64)
    return _nnls_solve_bands(gram[None], rhs[None])[0]


def _nnls_solve_bands(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """:func:`_nnls_scipy` of every band at once: ``gram`` (B, n, n), ``rhs`` (B, n) float64,
    C-contiguous; returns the (B, n) solutions.

    The bands :func:`_nnls_scipy` would solve on a Cholesky factor are solved in one Cython
    call (``nnls_gram``: the same active-set method on the normal equations, without scipy's
    Python overhead per system, which dominated). Their minimiser is unique (``G`` positive
    definite), so the answers agree up to round-off. The others (not positive definite,
    ill-conditioned, or the iteration cap reached) go through :func:`_nnls_scipy`.
    """
    out = np.empty(rhs.shape)
    status = nnls_gram(gram, rhs, out)
    if status.any():
        for b in np.flatnonzero(status):
            out[b] = _nnls_scipy(gram[b], rhs[b])
    return out


def _dense_gram(ik: np.ndarray, il: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """The (B, n, n) Gram matrices with ``values[p]`` (B,) at ``(ik[p], il[p])`` and its
    mirror, zero elsewhere."""
    gram = np.zeros((values.shape[1], n, n))
    gram[:, ik, il] = values.T
    gram[:, il, ik] = values.T
    return gram


def _sparse_gram(
    ik: np.ndarray, il: np.ndarray, values: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The Gram matrices of :func:`_dense_gram` in CSR form, rows and columns in reverse
    Cuthill-McKee order (which keeps the envelope of the factors of ``nnls_sparse`` narrow).

    Returns
    -------
    perm : (n,) intp
        Row ``q`` of the reordered matrix is row ``perm[q]`` of the original one.
    indptr, indices : intp arrays
        The common CSR pattern (both triangles, the diagonal, sorted columns).
    data : (B, nnz) float64
        The values of every band.
    """
    off = ik != il
    rows = np.concatenate([ik, il[off]])
    cols = np.concatenate([il, ik[off]])
    vals = np.concatenate([values, values[off]])
    perm = _rcm_order(rows, cols, n)
    inverse = np.empty(n, dtype=np.intp)
    inverse[perm] = np.arange(n)
    rows, cols = inverse[rows], inverse[cols]
    order = np.lexsort((cols, rows))
    indptr = np.zeros(n + 1, dtype=np.intp)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    data = np.ascontiguousarray(vals[order].T, dtype=np.float64)
    return perm, indptr, np.ascontiguousarray(cols[order], dtype=np.intp), data


def _rcm_order(rows: np.ndarray, cols: np.ndarray, n: int) -> np.ndarray:
    """Reverse Cuthill-McKee order of the symmetric pattern with entries ``(rows, cols)``
    (both triangles; repeats count once), as ``scipy.sparse.csgraph.reverse_cuthill_mckee``
    orders it (tests/test_spectra.py): seeds of lowest degree first (a row's entries, plus
    one for its diagonal), in ``np.argsort`` order of the int64 degrees. Ours, in Cython:
    scipy.sparse.csgraph alone took ~0.1 s to import."""
    keys = np.unique(np.asarray(rows, dtype=np.int64) * n + np.asarray(cols, dtype=np.int64))
    r, c = keys // n, keys % n
    indptr = np.zeros(n + 1, dtype=np.intp)
    np.cumsum(np.bincount(r, minlength=n), out=indptr[1:])
    degree = np.diff(indptr).astype(np.int64)
    degree[r[r == c]] += 1
    seeds = np.argsort(degree).astype(np.intp)
    order = cuthill_mckee(indptr, np.ascontiguousarray(c, dtype=np.intp), seeds, degree)
    return np.ascontiguousarray(order[::-1])


def _nnls_solve_sparse(
    ik: np.ndarray, il: np.ndarray, values: np.ndarray, rhs: np.ndarray
) -> np.ndarray:
    """:func:`_nnls_solve_bands` of a large group from its pairs' products (P, B) and the
    right-hand sides (B, n): the sparse solver, and the dense path for any band it leaves
    (not positive definite, ill-conditioned or its round cap reached).

    Components whose convolved models are identical (two peaks on one pixel give identical
    components) make ``G`` singular, which would send the whole group to the dense path's
    eigen-decomposition (18 s for 1149 components). They are solved as one component and
    share its SED equally: the minimum-norm split of a minimiser that is not unique (the
    dense path may split it otherwise; the fitted model is the same).
    """
    n = rhs.shape[1]
    rep = _duplicates(ik, il, values, n)
    if np.all(rep == np.arange(n)):
        return _nnls_solve_sparse_unique(ik, il, values, rhs)
    keep = rep == np.arange(n)
    local = np.full(n, -1, dtype=np.intp)
    local[keep] = np.arange(np.count_nonzero(keep))
    sel = keep[ik] & keep[il]
    reduced = _nnls_solve_sparse_unique(
        local[ik[sel]], local[il[sel]], values[sel], np.ascontiguousarray(rhs[:, keep])
    )
    counts = np.bincount(rep, minlength=n)
    return reduced[:, local[rep]] / counts[rep]


def _duplicates(ik: np.ndarray, il: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Per component, the smallest index of the components whose convolved models equal its
    own up to round-off in every band: ``||c_k - c_l||^2 = G_kk + G_ll - 2 G_kl`` at most
    ``64 eps (G_kk + G_ll)`` (its own index when there is none)."""
    diag = np.zeros((n, values.shape[1]))
    on = ik == il
    diag[ik[on]] = values[on]
    a, b, v = ik[~on], il[~on], values[~on]
    total = diag[a] + diag[b]
    same = np.all((total - 2.0 * v <= 64 * np.finfo(np.float64).eps * total) & (total > 0), axis=1)
    if not same.any():
        return np.arange(n)
    count, labels = _groups(np.stack([a[same], b[same]], axis=1), n)
    first = np.full(count, n)
    np.minimum.at(first, labels, np.arange(n))
    return first[labels]


def _nnls_solve_sparse_unique(
    ik: np.ndarray, il: np.ndarray, values: np.ndarray, rhs: np.ndarray
) -> np.ndarray:
    """:func:`_nnls_solve_sparse` without the duplicate test."""
    n = rhs.shape[1]
    perm, indptr, indices, data = _sparse_gram(ik, il, values, n)
    solved = np.empty(rhs.shape)
    status = _nnls_sparse_bands(indptr, indices, data, np.ascontiguousarray(rhs[:, perm]), solved)
    out = np.empty(rhs.shape)
    out[:, perm] = solved
    bad = np.flatnonzero(status)
    if bad.size:
        gram = _dense_gram(ik, il, values[:, bad], n)
        out[bad] = _nnls_solve_bands(gram, np.ascontiguousarray(rhs[bad]))
    return out


def _nnls_sparse_bands(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, rhs: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """``nnls_sparse`` with the bands on the fit's threads (:func:`cdeblend._threads.
    num_threads`): each band's system is solved alone, so the results are the same for any
    count (``nnls_sparse`` releases the GIL)."""
    nb = data.shape[0]
    nt = min(num_threads(), nb)
    if nt <= 1:
        return nnls_sparse(indptr, indices, data, rhs, out)
    status = np.zeros(nb, dtype=np.intc)

    def solve(b: int) -> None:
        sl = slice(b, b + 1)
        status[b] = nnls_sparse(indptr, indices, data[sl], rhs[sl], out[sl])[0]

    with ThreadPoolExecutor(nt) as pool:
        list(pool.map(solve, range(nb)))
    return status


def _nnls_scipy(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Non-negative minimiser of ``x^T G x - 2 x^T r`` by scipy's NNLS, its optimality checked
    (:func:`cdeblend._nnls.nnls_checked`; the reference path).

    With a Cholesky factor ``G = R^T R`` (single-threaded Cython), ``||R x - R^-T r||^2`` is
    the same objective up to a constant, so scipy's active-set NNLS runs on a matrix of at
    most ``n x n``. When ``G`` is
    singular or so ill-conditioned that the eigenvalue cut of :func:`_min_norm_solve` could
    matter (smallest eigenvalue not clearly above ``eps * n * trace(G)``), the eigen
    decomposition is used instead: ``A' = L^1/2 V^T``, ``d' = L^-1/2 V^T r`` over the kept
    eigenvalues (``r`` lies in the range of ``G``). The Cholesky factor costs a fraction of
    the eigen decomposition, which (in a threaded LAPACK on a busy machine) dominated the
    initialization of large blends.
    """
    n = gram.shape[0]
    if n == 1:  # one component: the clipped ratio
        g = float(gram[0, 0])
        return np.array([max(float(rhs[0]) / g, 0.0)]) if g > 0 else np.zeros(1)
    cut = np.finfo(np.float64).eps * n * float(np.trace(gram))
    root = np.empty((n, n))
    d = np.array(rhs, dtype=np.float64).reshape(n, 1)
    inv_norm = cholesky_upper(np.ascontiguousarray(gram, dtype=np.float64), root, d)
    # ||R^-1||_F^-2 is a lower bound of the smallest eigenvalue
    if 0 <= inv_norm and inv_norm * cut < 1.0:
        return nnls_checked(root, d[:, 0], maxiter=50 * n)
    vals, vecs = np.linalg.eigh(gram)
    top = vals.max(initial=0.0)
    if top <= 0:
        return np.zeros_like(rhs)
    keep = vals > np.finfo(np.float64).eps * n * top
    root = np.sqrt(vals[keep])
    a = root[:, None] * vecs[:, keep].T
    d = (vecs[:, keep].T @ rhs) / root
    return nnls_checked(a, d, maxiter=50 * n)


def fit_seds(
    observation: Observation,
    morphologies: Sequence[Any],
    boxes: Sequence[Any],
    weighted: bool = False,
    fixed_model: Any = None,
    solver: str = "lstsq",
) -> np.ndarray:
    """Least-squares SEDs of components with fixed morphologies (non-negative).

    Parameters
    ----------
    observation : Observation
        The blend; its images are the data and its difference kernels the convolution.
    morphologies : sequence of (h_k, w_k) array_like
        Morphology of each component in the model frame.
    boxes : sequence of (y0, x0, h, w)
        Box of each morphology in the observation's frame (parts outside the frame are
        ignored).
    weighted : bool
        Weight the fit by ``observation.weights`` (the reference fit is unweighted).
    fixed_model : (B, H, W) array_like, optional
        Model-frame flux of components whose SEDs are not fitted; its convolution is
        subtracted from the data first.
    solver : {"lstsq", "nnls"}
        ``"lstsq"`` (reference): minimum-norm least squares, then negative values set to 0.
        ``"nnls"``: non-negative least squares on the same normal equations (a clipped
        component no longer leaves its neighbours fitted to a model that does not exist).

    Returns
    -------
    numpy.ndarray
        ``(K, B)`` float64 SEDs, ``>= 0``.

    Raises
    ------
    ValueError
        If the numbers of morphologies and boxes differ, a morphology's shape differs from its
        box, or a morphology holds NaN or infinite values.
    """
    if solver not in ("lstsq", "nnls"):
        raise ValueError(f"solver must be 'lstsq' or 'nnls', got {solver!r}")
    if not isinstance(observation, Observation):
        raise TypeError(f"observation must be an Observation, got {type(observation).__name__}")
    if len(morphologies) != len(boxes):
        raise ValueError(f"morphologies has {len(morphologies)} entries but boxes has {len(boxes)}")
    nb = observation.shape[0]
    if len(morphologies) == 0:
        return np.zeros((0, nb))
    data = observation.images
    if fixed_model is not None:
        data = data - observation.convolve(fixed_model)

    box_list = [as_box(b, f"boxes[{k}]", allow_empty=True) for k, b in enumerate(boxes)]
    morphs = []
    for k, (m, box) in enumerate(zip(morphologies, box_list, strict=True)):
        arr = np.asarray(m)
        if arr.ndim != 2 or arr.shape != box[2:]:
            raise ValueError(
                f"morphologies[{k}] has shape {arr.shape} but boxes[{k}] has size {box[2:]}"
            )
        if arr.dtype.kind not in "iuf" or not np.all(np.isfinite(arr)):
            raise ValueError(f"morphologies[{k}] must hold finite real numbers")
        morphs.append(arr)
    return fit_seds_checked(observation, morphs, box_list, weighted, data, solver)


def fit_seds_checked(
    observation: Observation,
    morphs: Sequence[np.ndarray],
    box_list: Sequence[tuple[int, int, int, int]],
    weighted: bool,
    data: np.ndarray,
    solver: str,
) -> np.ndarray:
    """:func:`fit_seds` of checked inputs: finite 2-D morphologies of their boxes' shapes,
    boxes as int tuples, ``data`` the images (minus any fixed model)."""
    nb = observation.shape[0]
    nk = len(morphs)
    if nk == 0:
        return np.zeros((0, nb))
    dtype = observation.dtype
    # grown boxes first (pure box arithmetic), so one flat buffer holds every convolved model
    clipped, g = observation.convolver.grown_boxes(box_list)
    nonempty = (clipped[:, 2] > 0) & (clipped[:, 3] > 0)
    grown = np.where(nonempty[:, None], g, 0).astype(np.intp)
    sizes = nb * grown[:, 2] * grown[:, 3]
    offsets = np.zeros(nk, dtype=np.intp)
    offsets[1:] = np.cumsum(sizes)[:-1]
    # every non-empty grown box is written (np.empty: zero-filling hands the GIL over)
    flat = np.empty(int(sizes.sum()), dtype=dtype)
    # batched by FFT grid (each grid's kernel transform is computed once)
    observation.convolver.convolve_morphs_into(morphs, box_list, flat, offsets)

    pairs = np.ascontiguousarray(overlapping_pairs(grown), dtype=np.intp)
    weights = observation.weights
    products = np.zeros((len(pairs), nb))
    _in_parts(
        partial(_gram_rows, flat, offsets, grown, pairs, weights, weighted, products), len(pairs)
    )
    rhs = np.zeros((nk, nb))
    data = np.ascontiguousarray(data, dtype=dtype)
    _in_parts(partial(_data_rows, flat, offsets, grown, data, weights, weighted, rhs), nk)
    del flat

    # G is block diagonal over the connected groups of overlapping boxes: solve each alone
    seds = np.zeros((nk, nb))
    if len(pairs):
        ngroups, labels = _groups(pairs, nk)
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(ngroups + 1))
        pair_group = labels[pairs[:, 0]]
        pair_order = np.argsort(pair_group, kind="stable")
        pair_bounds = np.searchsorted(pair_group[pair_order], np.arange(ngroups + 1))
        local = np.empty(nk, dtype=np.intp)
        for g in range(ngroups):
            members = order[bounds[g] : bounds[g + 1]]
            local[members] = np.arange(members.size)
            sel = pair_order[pair_bounds[g] : pair_bounds[g + 1]]
            ik, il = local[pairs[sel, 0]], local[pairs[sel, 1]]
            group_rhs = np.ascontiguousarray(rhs[members].T)
            if solver == "nnls" and members.size > _SPARSE_NNLS:
                seds[members] = _nnls_solve_sparse(ik, il, products[sel], group_rhs).T
                continue
            gram = _dense_gram(ik, il, products[sel], members.size)
            if solver == "nnls":  # every band in one call
                seds[members] = _nnls_solve_bands(gram, group_rhs).T
            else:
                for b in range(nb):
                    seds[members, b] = _min_norm_solve(gram[b], rhs[members, b])
    return np.maximum(seds, 0.0)
