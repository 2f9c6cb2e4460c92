"""Deblend a whole image: parents, skip rules, flags, failure isolation, executors, catalog.

:func:`deblend_catalog` takes a full image (an Observation, or arrays), cuts it into parents
(a footprint on a box plus its peaks), runs one deblender per parent on a pool of workers and
returns a catalog (one row per parent and per child) and the :class:`~cdeblend.ModelData` of
the multi-band fits.

Per parent, in this order (docs/spec/multi_band.md 5.2 and 5.4; the first rule that applies wins):

=========================  ===============================================================
flag                       when
=========================  ===============================================================
``skipped_isolated``       one peak and ``CatalogConfig.skip_isolated`` (the pipeline's
                           ``processSingles = False``): not fitted, kept as itself
``skipped_parent_too_big`` bounding-box area > ``max_footprint_area``, or
                           max(height, width) > ``max_footprint_size``, or
                           area x peaks > ``max_area_times_peaks`` (non-positive = off)
``skipped_masked``         masked fraction of the footprint > ``max_masked_fraction``
``skipped_too_many_peaks`` peaks > ``max_number_of_peaks`` (<= 0 = off); the whole parent
                           is skipped, not truncated
``failed``                 the deblender raised; ``error`` holds the exception class name
                           (25 characters at most). Logged on the ``cdeblend.catalog``
                           logger; every other parent is kept.
=========================  ===============================================================

``fallback`` (parents and their children): the multi-band fit raised and the parent got its
fallback model instead (:mod:`cdeblend.fallback`: a PSF model per peak, SEDs by
non-negative least squares, the image re-apportioned among them), so it still has a child
per peak; ``error`` holds the exception class name.

Any of the ``skipped_*`` flags also sets ``skipped``.

These are the catalog's only skip rules: ``SingleBandConfig`` defines rules of the same names
(``max_footprint_area``, ``max_footprint_size``, ``max_number_of_peaks``, ``mask_limits``,
``catch_failures``), and in :func:`deblend_catalog` the :class:`CatalogConfig` ones win: the
package's single-band deblender runs with its own copies switched off. A deblender that
still skips a parent by a rule of its own (``min_footprint_axis_ratio``, or any rule of a
deblender from ``deblender_factory``) or fails on it reports that in its result's flags,
and they reach the catalog unchanged: ``parent_too_big`` sets ``skipped_parent_too_big``,
``masked`` sets ``skipped_masked``, ``failed`` sets ``failed`` (``error``: the exception
class), and every parent flag it reported is in ``deblender_flags``.

No data (the package's one rule, see the notes of :class:`~cdeblend.Observation`): a pixel
with a non-finite value, a variance that is not finite and positive, or a set ``mask`` has
value 0 and weight 0 in its band; it gives no flux to any child and counts in
``masked_fraction`` (the share of a footprint's pixels without data in any band).

(LSST names: ``deblend_skipped``,
``deblend_skipped_isolatedParent``, ``deblend_skipped_parentTooBig``,
``deblend_skipped_masked``, ``deblend_skipped_tooManyPeaks``, ``deblend_failed``,
``deblend_error``; ``converged`` is the negation of the reference's
``deblend_blendConvergenceFailedFlag``.)

Catalog columns (``B`` = number of bands; children repeat their parent's fit columns):

``id, parent_id`` (-1 for a parent), ``is_parent``, ``n_peaks``, ``n_children``,
``n_components``, ``peak_id`` (index in the parent's peak list; -1 for a parent),
``peak_y, peak_x`` (image frame; a parent's first peak), ``centroid_y, centroid_x``
(flux-weighted: a child's model, a parent's positive footprint image), ``box_y0, box_x0,
box_height, box_width`` (the parent's box; -1 for children), ``flux_model (B,)`` (model
flux; for the single-band deblender the template's sum), ``flux_conserved (B,)``
(re-apportioned image; for a lone source, an isolated parent or one peak that got no child,
its footprint flux: a lone child owns all of its footprint), ``flux_footprint (B,)`` (a
parent's image summed over its footprint; NaN for children), ``flux_unassigned (B,)``
(footprint flux no child received, the multi-band deblender's pixels outside the children's
footprint included; parents), ``masked_fraction``, ``deblender``
(``multi``, ``single`` or ``none``), ``iterations``, ``loss``, ``converged``, the flags
above, ``zero_flux`` (a child with no conserved flux), ``child_flags`` (the single-band
deblender's per-child flags, comma separated), ``deblender_flags`` (a parent's flags as its
deblender reported them) and, when a WCS is given, ``ra, dec`` (degrees, of the centroid).
Every column carries a unit (pixel positions ``pix``, fluxes the ``flux_unit`` given,
coordinates ``deg``) where it has one and a description (:data:`COLUMN_DESCRIPTIONS`); both
are written to and read back from FITS.

Rows are sorted by ``id``: the parents (their own ids, increasing), then the children,
numbered after the largest parent id in parent order (a parent's children are consecutive
rows). Results are the same whatever the executor, and bit-identical between executors
(except ``deblend_runtime``, a wall-clock time).

Uncertainties and metrics (units and descriptions in :data:`cdeblend.metrics.CATALOG_COLUMNS`):
``flux_conserved_err (B,)`` (a child's from the variance and its pixel shares, 0 in a band
where it has no share of any pixel; a parent's: of ``flux_footprint``, fitted or not),
``flux_model_err (B,)`` (Fisher error of the SEDs with the morphologies held; the
single-band template amplitude's; NaN for parents), and per child, in model space as the
LSST pipeline, ``deblend_blendedness``,
``deblend_fluxOverlap``, ``deblend_fluxOverlapFraction``, ``deblend_maxOverlap``,
``deblend_dataCoverage``, ``deblend_zeroFlux`` (all (B,)), ``deblend_edgePixels``;
``flux_deblend_err`` (B,) and, single band, ``flux_wing`` (B,) (the light outside the
footprint: add both in quadrature to ``flux_conserved_err`` against the truth);
``chi2_reduced`` (a child's over its convolved footprint, a parent's over its data) and
``deblend_runtime`` (ms, parents and their children). The multi-band metrics are NaN for
the single-band deblender, which has no model. A source the multi-band deblender added from
the fit's residual (``DeblendConfig.residual_sources``) is a child with ``peak_id`` -1, its
own peak and ``child_flags`` ``added``.
"""

from .config import ERROR_WIDTH, CatalogConfig
from .driver import deblend_catalog
from .fits import read_catalog, write_catalog
from .parents import CatalogParent, ParentLike, parents_from_peaks
from .table import COLUMN_DESCRIPTIONS
from .worker import default_deblender_factory

__all__ = [
    "COLUMN_DESCRIPTIONS",
    "ERROR_WIDTH",
    "CatalogConfig",
    "CatalogParent",
    "ParentLike",
    "deblend_catalog",
    "default_deblender_factory",
    "parents_from_peaks",
    "read_catalog",
    "write_catalog",
]
