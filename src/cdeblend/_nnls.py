"""Non-negative least squares whose answer is checked: scipy's NNLS, then its optimality.

``scipy.optimize.nnls`` has been rewritten twice (scipy 1.12 and 1.15) and can return a
point that is not the minimiser, without a warning (docs/precision.md, "Non-negative least
squares"). :func:`nnls_checked` keeps scipy's answer whenever it satisfies the optimality
(Karush-Kuhn-Tucker) conditions, so results where scipy is right do not change; otherwise
it also runs scipy's bounded-variable least squares (BVLS) and returns whichever of the two
has the smaller residual.
"""

from __future__ import annotations

import numpy as np

__all__ = ["is_nnls_optimal", "nnls_checked"]

#: relative tolerance of the optimality test, in units of each gradient entry's magnitude
#: bound ``|A|^T (|A| |x| + |b|)``: round-off leaves about 1e-16 to 1e-15 of it, the
#: failure of tests/test_nnls_checked.py left 1e-2
KKT_RTOL = 1e-9


def is_nnls_optimal(a: np.ndarray, b: np.ndarray, x: np.ndarray, rtol: float = KKT_RTOL) -> bool:
    """Whether ``x`` minimises ``||a x - b||`` over ``x >= 0`` (the KKT conditions).

    With the gradient ``g = a^T (a x - b)``: ``g_i = 0`` where ``x_i > 0`` and ``g_i >= 0``
    where ``x_i = 0``, each to ``rtol`` times the magnitude bound of ``g_i``.
    """
    if np.any(x < 0) or not np.all(np.isfinite(x)):
        return False
    grad = a.T @ (a @ x - b)
    bound = np.abs(a).T @ (np.abs(a) @ x + np.abs(b))
    tol = rtol * np.maximum(bound, np.finfo(np.float64).tiny)
    free = x > 0
    return bool(np.all(np.abs(grad[free]) <= tol[free]) and np.all(grad[~free] >= -tol[~free]))


def nnls_checked(a: np.ndarray, b: np.ndarray, maxiter: int | None = None) -> np.ndarray:
    """The minimiser of ``||a x - b||`` over ``x >= 0``: scipy's NNLS, checked.

    Parameters
    ----------
    a : (m, n) float64 array
    b : (m,) float64 array
    maxiter : int, optional
        scipy's iteration cap (its default: ``3 n``).

    Returns
    -------
    (n,) float64 array
        scipy's NNLS answer when it is optimal (:func:`is_nnls_optimal`); otherwise that or
        the BVLS answer (clipped at 0), whichever leaves the smaller residual.
    """
    # imported here: scipy.optimize alone takes ~0.15 s to import, and a fresh process's
    # deblend reaches this only on rare paths
    from scipy.optimize import lsq_linear, nnls

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    x = nnls(a, b, maxiter=maxiter)[0]
    if is_nnls_optimal(a, b, x):
        return x
    other = np.maximum(lsq_linear(a, b, bounds=(0.0, np.inf), method="bvls", tol=1e-12).x, 0.0)
    if np.sum((a @ other - b) ** 2) < np.sum((a @ x - b) ** 2):
        return other
    return x
