"""What travels between the driver and the workers: a :class:`Task` (one parent cut out of
the image) and its :class:`Outcome` (what the deblender made of it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..model_data import BlendData

__all__ = ["Outcome", "Task"]


@dataclass
class Task:
    """One parent cut out of the full image (views; copied only to send to a cluster)."""

    index: int
    parent_id: int
    kind: str
    box: tuple[int, int, int, int]
    footprint: np.ndarray  # (h, w) bool
    peaks: np.ndarray  # (N, 2) local
    images: np.ndarray
    variance: np.ndarray
    weights: np.ndarray | None
    mask: np.ndarray | None
    psfs: np.ndarray
    bands: tuple[str, ...]
    model_psf_sigma: float | None
    noise_rms: np.ndarray | None = None  # the whole image's, as in the pipeline
    # the package's Observation of the image (PSFs, kernels, their transforms), shared by the
    # parents' observations; None with a user's observation factory
    template: Any = None


@dataclass
class Outcome:
    """What a worker sends back for one parent."""

    index: int
    failed: bool = False
    error: str = ""
    fallback: bool = False
    iterations: int = -1
    loss: float = float("nan")
    converged: bool = False
    peak_id: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    peaks: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    centroids: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    flux_model: np.ndarray | None = None
    flux_conserved: np.ndarray | None = None
    n_components: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    child_flags: list[str] = field(default_factory=list)
    blend_data: BlendData | None = None
    skip_reason: str = ""  # a catalog skip flag from the deblender's own skip decision
    parent_flags: str = ""  # the deblender's parent flags, as it reported them
    # uncertainties and metrics (cdeblend.metrics); None = not available (NaN columns)
    flux_model_err: np.ndarray | None = None
    flux_conserved_err: np.ndarray | None = None
    metrics: dict[str, np.ndarray] | None = None
    chi2_reduced: float = float("nan")
    runtime: float = float("nan")
