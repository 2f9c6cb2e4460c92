"""A slow reference for the children's footprint (``DeblendResult.footprint``), shared by the
tests that check the conserved children against it.

A pixel is in the footprint when, in at least one band with data (finite, positive
variance), the sum of the sources' convolved models clipped at 0 is positive and at least
``thresh * sqrt(variance)``. The reference walks the pixels and bands one by one.
"""

from __future__ import annotations

import math

import numpy as np


def children_footprint(
    models: np.ndarray, variance: np.ndarray, thresh: float
) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) footprint of (N, B, H, W) ``models`` on (B, H, W) ``variance``, and the
    pixels whose total lies within round-off (1e-6 relative) of the threshold, where the
    compiled sum may fall on either side."""
    total = np.clip(np.asarray(models, dtype=np.float64), 0, None).sum(axis=0)
    B, H, W = total.shape
    inside = np.zeros((H, W), dtype=bool)
    edge = np.zeros((H, W), dtype=bool)
    for y in range(H):
        for x in range(W):
            for b in range(B):
                v = float(variance[b, y, x])
                if not (math.isfinite(v) and v > 0):
                    continue
                level = thresh * math.sqrt(v)
                t = float(total[b, y, x])
                if abs(t - level) <= 1e-6 * max(level, abs(t)):
                    edge[y, x] = True
                if t > 0 and t >= level:
                    inside[y, x] = True
    return inside, edge


def result_footprint(res) -> np.ndarray:
    """The reference footprint of a :class:`cdeblend.DeblendResult`, checked against the
    result's own (:attr:`~cdeblend.DeblendResult.footprint`) away from round-off edges;
    returns the result's."""
    obs = res.blend.observation
    variance = np.where(obs.weights > 0, obs.variance, 0)
    inside, edge = children_footprint(res.models(), variance, res.conserved_thresh)
    got = np.asarray(res.footprint)
    assert got.shape == inside.shape
    assert np.array_equal(got[~edge], inside[~edge])
    return got
