# cython: language_level=3
"""Monotonic projections, written once for both deblenders.

- ``_monotonic_shadow.pxi``: the single-band deblender's "shadow casting" projection of a
  template (SDSS/meas_deblender ``makeMonotonic``).
- ``_monotonic_radial.pxi``: the multi-band deblender's weighted radial monotonicity prox
  (scarlet lite) and the monotonic-mask flood fill used to initialise morphologies.

The two live in separate include files so that each can be read on its own.
"""

from libc.stdint cimport int64_t, uint8_t

from ._shared.fused cimport other_real, real
from ._shared.gil cimport _release_gil

include "_monotonic_shadow.pxi"
include "_init_kernels.pxi"
include "_monotonic_radial.pxi"
